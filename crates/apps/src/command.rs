//! The commands carried by Raft log entries.

use crate::genesis::MAX_TX_BYTES;
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

/// Most transactions one Raft entry carries (a node's `batch_max_txs` is
/// at most this): each becomes a permanent ledger record.
pub const MAX_ENTRY_TXS: usize = 1 << 16;

/// Most bytes of transactions one Raft entry carries: an honest leader's
/// batch holds at most 4 MiB (`batch_max_bytes`), or one transaction.
pub const MAX_ENTRY_TX_BYTES: usize = 2 * MAX_TX_BYTES as usize;

impl Command {
    /// Refuses a command no honest leader proposes and apply could not
    /// record: every transaction, decision and genesis document becomes one
    /// ledger record, which holds at most 16 MiB, so a larger one committed
    /// would stop apply on every node for good; and a batch of more or
    /// larger transactions than a leader ever batches would only fill the
    /// ledger. A follower checks the entries it is sent before they can
    /// count towards a commit.
    pub fn check_shape(&self) -> Result<(), String> {
        let fits = |what: &str, len: usize| {
            if len as u64 > MAX_TX_BYTES {
                Err(format!("{what} of {len} bytes, over {MAX_TX_BYTES}"))
            } else {
                Ok(())
            }
        };
        match self {
            Command::Batch { txs, .. } => {
                let bytes: usize = txs.iter().map(|t| t.len()).sum();
                if txs.len() > MAX_ENTRY_TXS || bytes > MAX_ENTRY_TX_BYTES {
                    return Err(format!(
                        "a batch of {} transactions and {bytes} bytes, over {MAX_ENTRY_TXS} or {MAX_ENTRY_TX_BYTES}",
                        txs.len()
                    ));
                }
                txs.iter().try_for_each(|t| fits("a transaction", t.len()))
            }
            Command::Genesis { doc } => fits("a genesis document", doc.len()),
            Command::Recover { decision, .. } => fits("a recovery decision", decision.len()),
            Command::Checkpoint { .. } | Command::Flush => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_too_large_to_record_is_refused() {
        let big = ByteBuf::from(vec![0u8; MAX_TX_BYTES as usize + 1]);
        let fine = ByteBuf::from(vec![0u8; MAX_TX_BYTES as usize]);
        let batch = |txs| Command::Batch { time: 1, txs };
        assert!(batch(vec![fine.clone(), fine.clone()])
            .check_shape()
            .is_ok());
        assert!(batch(vec![fine.clone(); 3]).check_shape().is_err());
        let tiny = ByteBuf::from(vec![0u8; 2]);
        assert!(batch(vec![tiny.clone(); MAX_ENTRY_TXS])
            .check_shape()
            .is_ok());
        assert!(batch(vec![tiny; MAX_ENTRY_TXS + 1]).check_shape().is_err());
        // Within the batch's total, but one transaction too large to record.
        assert!(batch(vec![big.clone()]).check_shape().is_err());
        let recover = |decision| Command::Recover { time: 1, decision };
        assert!(recover(fine.clone()).check_shape().is_ok());
        assert!(recover(big.clone()).check_shape().is_err());
        assert!(Command::Genesis { doc: big }.check_shape().is_err());
        assert!(Command::Genesis { doc: fine }.check_shape().is_ok());
    }
}
