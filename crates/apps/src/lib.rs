//! Deterministic apply logic shared by every node and by offline replay.
//!
//! Given the same ledger entries in the same order, [`Executor`] produces the
//! same leaves, state and roots on every machine: no clocks, no randomness,
//! no unordered iteration.

pub mod audit;
pub mod command;
pub mod executor;
pub mod genesis;
pub mod gov;
pub mod keys;
pub mod kv;
pub mod node;
pub mod node_set;
pub mod query;
pub mod recovery;
pub mod registry;
pub mod state_worker;

pub use command::Command;
pub use executor::{Executor, TxResult};
pub use genesis::{Config, Genesis, IdentitySpec};

/// Error codes recorded in the leaves of rejected transactions.
pub mod codes {
    pub const MALFORMED: &str = "malformed";
    pub const WRONG_NETWORK: &str = "wrong_network";
    pub const UNKNOWN_SIGNER: &str = "unknown_signer";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const OUTSIDE_WINDOW: &str = "outside_window";
    pub const NONCE_REUSED: &str = "nonce_reused";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNKNOWN_APP: &str = "unknown_app";
    pub const UNKNOWN_OP: &str = "unknown_op";
    pub const BAD_ARGS: &str = "bad_args";
    pub const NOT_FOUND: &str = "not_found";
    pub const ALREADY_EXISTS: &str = "already_exists";
    pub const CONFLICTING_SIGNATURE: &str = "conflicting_signature";
    /// The signer was removed or retired, or is a node not yet trusted.
    pub const INACTIVE: &str = "inactive_identity";
    /// An accepted member must acknowledge the constitution before anything else.
    pub const NOT_ACKNOWLEDGED: &str = "not_acknowledged";
    pub const NETWORK_CLOSED: &str = "network_closed";
    pub const PROPOSAL_CLOSED: &str = "proposal_closed";
    pub const PROPOSAL_EXPIRED: &str = "proposal_expired";
    pub const ALREADY_VOTED: &str = "already_voted";
    pub const NOT_PROPOSER: &str = "not_proposer";
    pub const ALREADY_ACTIVE: &str = "already_active";
    pub const STALE_CONSTITUTION: &str = "stale_constitution";
    /// A recovery decision for another ledger length or root than this one.
    pub const RECOVERY_MISMATCH: &str = "recovery_mismatch";
}

/// An application-level refusal, recorded as the leaf's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub &'static str);
