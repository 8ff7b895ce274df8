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
pub mod join;
pub mod keys;
pub mod kv;
pub mod node;
pub mod node_set;
pub mod notary;
pub mod query;
pub mod recovery;
pub mod registry;
pub mod replay_filter;
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
    /// A `node.checkpoint` signature of a checkpoint this ledger does not
    /// have (its sequence number, or its size at that number).
    pub const UNKNOWN_CHECKPOINT: &str = "unknown_checkpoint";
    /// A node asked to join while the most requests allowed wait for a vote.
    pub const TOO_MANY_PENDING: &str = "too_many_pending_nodes";
    /// `gov.dismiss` of a node that is not waiting for a vote.
    pub const NOT_PENDING: &str = "not_pending";
    /// `gov.dismiss` by a member other than the one the request names.
    pub const NOT_OPERATOR: &str = "not_operator";
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

    // Notary (document provenance): one code per refused transition or actor.
    /// A signature by an identity that is not a signing party of the document.
    pub const NOT_A_PARTY: &str = "not_a_party";
    /// A signature whose digest is not the document's.
    pub const DIGEST_MISMATCH: &str = "digest_mismatch";
    /// Signing a document that is no longer a draft.
    pub const DOC_NOT_DRAFT: &str = "doc_not_draft";
    /// Amending or expiring a document that is not executed.
    pub const DOC_NOT_EXECUTED: &str = "doc_not_executed";
    /// Revoking a document that is no longer draft or executed, or the last
    /// signature of an amendment whose predecessor left force meanwhile.
    pub const DOC_NOT_IN_FORCE: &str = "doc_not_in_force";
    /// Approving or carrying out destruction of a document still draft or executed.
    pub const DOC_IN_FORCE: &str = "doc_in_force";
    /// Any change to a destroyed document.
    pub const DOC_DESTROYED: &str = "doc_destroyed";
    /// A legal hold keeps a document in force and its content undestroyed.
    pub const LEGAL_HOLD: &str = "legal_hold";
    /// Destruction before the retention period has ended in ledger time.
    pub const RETENTION_NOT_ENDED: &str = "retention_not_ended";
    /// Destruction with fewer approvals than the retention policy requires.
    pub const APPROVALS_MISSING: &str = "approvals_missing";
    /// Only the custodian may offer custody or destroy.
    pub const NOT_CUSTODIAN: &str = "not_custodian";
    /// A destruction approval by an identity the retention policy does not name.
    pub const NOT_APPROVER: &str = "not_approver";
    /// The actor may not do this to the document or collection (see docs/notary.md).
    pub const NOT_AUTHORIZED: &str = "not_authorized";
    /// Accepting custody that was offered to someone else.
    pub const NOT_OFFERED: &str = "not_offered";
    /// Accepting custody when none is offered.
    pub const NO_OFFER: &str = "no_offer";
    /// Lifting a hold that is not in place.
    pub const NO_SUCH_HOLD: &str = "no_such_hold";
    /// Lifting a hold placed by another member that is still active.
    pub const NOT_HOLD_PLACER: &str = "not_hold_placer";
    /// Placing a hold on a document that already has the most holds allowed.
    pub const TOO_MANY_HOLDS: &str = "too_many_holds";
    /// Registering a digest another identity registered, or amending with a
    /// digest already registered as another document.
    pub const DIGEST_REGISTERED: &str = "digest_registered";
    /// An amendment that does not name every signing party of the version it
    /// amends as a signing party.
    pub const SIGNERS_MISSING: &str = "signers_missing";
    /// Amending a document whose earlier amendment still awaits signatures.
    pub const AMENDMENT_PENDING: &str = "amendment_pending";
    /// Erasing personal data of a document that never had any.
    pub const NO_PERSONAL_DATA: &str = "no_personal_data";
    /// A party, approver or custody recipient that is not an active member or user.
    pub const UNKNOWN_IDENTITY: &str = "unknown_identity";
}

/// An application-level refusal, recorded as the leaf's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub &'static str);
