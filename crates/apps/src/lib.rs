//! Deterministic apply logic shared by every node and by offline replay.
//!
//! Given the same ledger entries in the same order, [`Executor`] produces the
//! same leaves, state and roots on every machine: no clocks, no randomness,
//! no unordered iteration.

pub mod audit;
pub mod command;
pub mod executor;
pub mod genesis;
pub mod keys;
pub mod kv;
pub mod node;
pub mod query;
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
}

/// An application-level refusal, recorded as the leaf's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub &'static str);
