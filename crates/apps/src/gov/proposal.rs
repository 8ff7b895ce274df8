//! The proposal record: its actions, ballots and outcome.

use super::action::Action;
use super::Id;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalState {
    Open,
    Accepted,
    Rejected,
    Withdrawn,
    Expired,
    /// Accepted, but its actions could not apply; nothing was changed.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    Approve,
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    pub member: Id,
    pub vote: Vote,
    /// Ledger index of the ballot's transaction.
    pub index: u64,
}

/// When and where a proposal left the open state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Ledger index of the deciding transaction (for expiry: the next entry).
    pub index: u64,
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The id of the proposing transaction.
    pub id: Id,
    pub proposer: Id,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub description: String,
    /// Ledger index and time of the proposing transaction.
    pub index: u64,
    pub created: u64,
    /// Ledger time from which it is expired if still open.
    pub expires: u64,
    /// The constitution version that resolves it: the one in force when proposed.
    pub constitution: u64,
    pub state: ProposalState,
    pub ballots: Vec<Ballot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolution>,
}

/// Arguments of `gov.propose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeArgs {
    pub actions: Vec<Action>,
    #[serde(default)]
    pub description: String,
}

/// Arguments of `gov.vote`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteArgs {
    pub proposal: Id,
    pub vote: Vote,
}

/// Arguments of `gov.withdraw`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawArgs {
    pub proposal: Id,
}

/// Arguments of `gov.ack`: the digest of the constitution the member accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckArgs {
    pub constitution: Id,
}
