//! The commands carried by Raft log entries.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// One Raft entry's application payload. The leader fixes the ledger time, so
/// apply never reads a clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The genesis document; only valid as the first entry.
    Genesis { doc: ByteBuf },
    /// Signed transactions, in order, with the leader's time in ms.
    Batch { time: u64, txs: Vec<ByteBuf> },
    /// A checkpoint marker.
    Checkpoint { time: u64 },
    /// Completes checkpoints still waiting for their state root (no ledger entry).
    Flush,
    /// The members' signed recovery decision: the first entry of a network
    /// restarted from a surviving ledger copy with a new node set.
    Recover { time: u64, decision: ByteBuf },
}
