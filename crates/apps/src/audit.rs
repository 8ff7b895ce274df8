//! Auditor's replay: re-executes a ledger from genesis on scratch storage and
//! reports the first entry whose recomputed leaf, outcome, time or
//! checkpoint signature differs from what the ledger recorded.

use crate::{Command, Executor};
use comity_core::crypto::sha256;
use comity_core::entry::{EntryKind, Leaf, Record};
use comity_core::Hash;
use comity_store::{Store, StoreError};
use serde_bytes::ByteBuf;
use std::path::Path;

/// The first discrepancy found.
#[derive(Debug, thiserror::Error)]
#[error("ledger entry {index}: {message}")]
pub struct Discrepancy {
    pub index: u64,
    pub message: String,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub entries: u64,
    pub transactions: u64,
    pub rejected: u64,
    pub checkpoints: u64,
    pub checkpoint_signatures: u64,
    /// Members' disaster-recovery decisions (node set replaced).
    pub recoveries: u64,
    pub tx_root: Hash,
    pub last_state_root: Option<Hash>,
    pub network_id: Option<Hash>,
    /// Nodes caught signing two different checkpoints for one sequence
    /// number, as (node, sequence number): both signatures were verified on replay.
    pub evidence: Vec<(Hash, u64)>,
    /// Checkpoint signatures of a node over roots that replay does not
    /// reproduce and that no quorum shares, as (entry index, node, sequence
    /// number): a faulty node, not a faulty ledger.
    pub faulty_signatures: Vec<(u64, Hash, u64)>,
    /// Entries covered by the latest final checkpoint (signed by nodes of a
    /// quorum of members): the rest rest on the ledger copy alone.
    pub final_size: u64,
}

pub struct Audit {
    store: Store,
    executor: Executor,
    summary: Summary,
    /// Checked records waiting to be replayed together, and their bytes.
    pending: Vec<(u64, Record, Leaf, Command)>,
    pending_bytes: usize,
}

/// Most records replayed per storage commit.
const BATCH: usize = 256;
/// Most record bytes held for one storage commit (records may be large).
const BATCH_BYTES: usize = 64 << 20;

fn fail(index: u64, message: impl Into<String>) -> Discrepancy {
    Discrepancy {
        index,
        message: message.into(),
    }
}

/// Checks ledger record `index` (its encoding, position and body digest)
/// and gives the command that re-executes it: a one-transaction batch at the
/// recorded ledger time for a transaction, and so on.
pub fn replay_command(index: u64, raw: &[u8]) -> Result<(Record, Leaf, Command), Discrepancy> {
    let rec =
        Record::from_cbor(raw).map_err(|e| fail(index, format!("not a ledger record: {e}")))?;
    let leaf = Leaf::from_cbor(&rec.leaf)
        .map_err(|e| fail(index, format!("leaf does not decode: {e}")))?;
    if leaf.index != index {
        return Err(fail(index, format!("leaf says it is entry {}", leaf.index)));
    }
    if sha256(&rec.body) != leaf.digest {
        return Err(fail(
            index,
            "the body does not hash to the digest in the leaf",
        ));
    }
    let cmd = match leaf.kind {
        EntryKind::Genesis => Command::Genesis {
            doc: ByteBuf::from(rec.body.clone()),
        },
        EntryKind::Tx => Command::Batch {
            time: leaf.time,
            txs: vec![ByteBuf::from(rec.body.clone())],
        },
        EntryKind::Checkpoint => Command::Checkpoint { time: leaf.time },
        EntryKind::Recovery => Command::Recover {
            time: leaf.time,
            decision: ByteBuf::from(rec.body.clone()),
        },
    };
    Ok((rec, leaf, cmd))
}

/// Checks that re-executing record `index` (`rec`, whose leaf is `leaf`)
/// into `store` produced the same leaf there, and that no quorum signed a
/// checkpoint the replayed roots contradict. A lone node signing other
/// roots is that node's fault, which live apply also only reports.
pub fn check_replayed(
    store: &Store,
    index: u64,
    rec: &Record,
    leaf: &Leaf,
    out: &crate::executor::Output,
) -> Result<(), Discrepancy> {
    let produced = store.record(index).map_err(|_| {
        fail(
            index,
            "replay produced no entry here (a duplicate or misplaced entry)",
        )
    })?;
    let produced = Record::from_cbor(&produced).map_err(|e| fail(index, e.to_string()))?;
    if produced.leaf != rec.leaf {
        let mine = Leaf::from_cbor(&produced.leaf).map_err(|e| fail(index, e.to_string()))?;
        let what = if mine.outcome != leaf.outcome {
            format!(
                "recorded outcome `{}`, replay gives `{}`",
                leaf.outcome.code(),
                mine.outcome.code()
            )
        } else if mine.time != leaf.time {
            format!("recorded time {}, replay gives {}", leaf.time, mine.time)
        } else {
            "the recorded leaf differs from the replayed one".to_string()
        };
        return Err(fail(index, what));
    }
    if let Some(d) = out.divergences.iter().find(|d| d.quorum) {
        return Err(fail(
            index,
            format!(
                "node {} signed checkpoint {} over roots that replay does not reproduce",
                hex::encode(d.node),
                d.seq
            ),
        ));
    }
    Ok(())
}

impl Audit {
    /// Starts a replay on empty scratch storage in `scratch`.
    pub fn new(scratch: &Path) -> Result<Self, StoreError> {
        let (store, _) = Store::open(scratch, comity_store::segments::DEFAULT_ROLL_BYTES)?;
        let executor = Executor::load(&store)?;
        Ok(Audit {
            store,
            executor,
            summary: Summary::default(),
            pending: Vec::new(),
            pending_bytes: 0,
        })
    }

    /// Takes the next record, which must be entry `index`. Records are
    /// checked on arrival and replayed in batches (one storage commit each,
    /// as a node applies a Raft entry batch); a discrepancy is reported with
    /// the index of the entry at fault, by this call or a later one, or by
    /// [`Audit::finish`].
    pub fn feed(&mut self, index: u64, raw: &[u8]) -> Result<(), Discrepancy> {
        let (rec, leaf, cmd) = replay_command(index, raw)?;
        self.pending_bytes += raw.len();
        self.pending.push((index, rec, leaf, cmd));
        if self.pending.len() >= BATCH || self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Replays the records taken so far in one commit and compares each result.
    fn flush(&mut self) -> Result<(), Discrepancy> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let Some((first, ..)) = pending.first() else {
            return Ok(());
        };
        let first = *first;
        let txn = self.store.begin().map_err(|e| fail(first, e.to_string()))?;
        let mut outs = Vec::with_capacity(pending.len());
        {
            let mut batch = txn.batch().map_err(|e| fail(first, e.to_string()))?;
            for (index, _, _, cmd) in &pending {
                outs.push(
                    self.executor
                        .apply(&mut batch, cmd, &|_| None)
                        .map_err(|e| fail(*index, format!("replay failed: {e}")))?,
                );
            }
        }
        // Scratch state: nothing needs to survive a crash of the audit.
        txn.commit(false).map_err(|e| fail(first, e.to_string()))?;
        for ((index, rec, leaf, _), out) in pending.into_iter().zip(outs) {
            self.check(index, &rec, &leaf, &out)?;
        }
        Ok(())
    }

    /// Compares what replaying entry `index` produced with the record.
    fn check(
        &mut self,
        index: u64,
        rec: &Record,
        leaf: &Leaf,
        out: &crate::executor::Output,
    ) -> Result<(), Discrepancy> {
        check_replayed(&self.store, index, rec, leaf, out)?;
        let s = &mut self.summary;
        for d in &out.divergences {
            s.faulty_signatures.push((index, d.node, d.seq));
        }
        s.entries += 1;
        match leaf.kind {
            EntryKind::Genesis => s.network_id = self.executor.network_id(),
            EntryKind::Tx => {
                let is_sig = comity_core::tx::Tx::parse(&rec.body)
                    .map(|t| t.payload.app == "node")
                    .unwrap_or(false);
                if is_sig && leaf.outcome == comity_core::entry::Outcome::Applied {
                    s.checkpoint_signatures += 1;
                } else {
                    s.transactions += 1;
                    if leaf.outcome != comity_core::entry::Outcome::Applied {
                        s.rejected += 1;
                    }
                }
            }
            EntryKind::Checkpoint => {
                s.checkpoints += 1;
                s.last_state_root = out.checkpoints.last().map(|c| c.state_root);
            }
            EntryKind::Recovery => s.recoveries += 1,
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Summary, Discrepancy> {
        self.flush()?;
        let at_end = |e: StoreError| fail(self.summary.entries, e.to_string());
        let (len, evidence, final_cp) = self
            .store
            .read()
            .and_then(|r| {
                Ok((
                    r.ledger_len()?,
                    crate::query::evidence(&r, None, usize::MAX)?,
                    crate::query::latest_final_checkpoint(&r)?,
                ))
            })
            .map_err(at_end)?;
        self.summary.final_size = final_cp.map_or(0, |c| c.size);
        self.summary.evidence = evidence.into_iter().map(|e| (e.node, e.seq)).collect();
        self.summary.tx_root = if len == 0 {
            comity_core::merkle::empty_root()
        } else {
            self.store
                .tree_root_at(len)
                .map_err(|e| fail(len, e.to_string()))?
        };
        Ok(self.summary)
    }
}
