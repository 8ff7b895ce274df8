//! Signatures this node owes the ledger, submitted again when lost.
//!
//! A node submits its signature of a checkpoint, and its endorsement of a
//! node-set change, once, when it applies them, without waiting for the
//! outcome: a crash just after, a long election or a refusal by the leader
//! loses them. A lost endorsement would hold back every later receipt for
//! good, a lost signature the entries before the next checkpoint. So every
//! [`EVERY`] this task looks for what this node still owes and submits it
//! again: first one round after it saw it owed (a submission merely slower
//! than that is doubled, which apply takes as a resend), then at growing
//! gaps, so that one the leader keeps refusing costs little. It keeps
//! still while this node catches up (its store lacks what others applied),
//! has diverged or is not a trusted node.

use crate::{ingress, Shared};
use comity_core::checkpoint::Checkpoint;
use comity_core::receipt::NodeSetChange;
use comity_store::StoreError;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(10);
/// Most rounds between two submissions of one item.
const MAX_GAP: u32 = 32;
/// Raft entries committed but not yet applied beyond which this node is
/// catching up, not merely busy.
const CATCHING_UP: u64 = 64;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Owed {
    /// An endorsement of the node-set change at this tree size.
    Endorsement(u64),
    /// A signature of the checkpoint with this sequence number.
    Signature(u64),
}

/// When an item is next submitted.
struct Due {
    round: u32,
    gap: u32,
    /// False for a checkpoint whose time was out of this node's clock bound
    /// when it was first seen: not signed, as when it was applied.
    sign: bool,
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let me = shared.node_identity;
    let mut due: BTreeMap<Owed, Due> = BTreeMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u32.. {
        tick.tick().await;
        if shared.diverged.load(Ordering::SeqCst) || catching_up(&shared) {
            continue;
        }
        let s = shared.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let r = s.store.read()?;
            if comity_apps::node_set::set_at(&r, u64::MAX)?
                .get(&me)
                .is_none()
            {
                return Ok((Vec::new(), None)); // retired, or not trusted yet
            }
            Ok((
                comity_apps::node_set::unendorsed(&r, &me)?,
                comity_apps::node::unsigned_latest(&r, &me)?,
            ))
        })
        .await;
        let (changes, checkpoint) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "looking for signatures this node owes");
                continue;
            }
            Err(_) => return, // the runtime is shutting down
        };
        let mut still = BTreeMap::new();
        for change in changes {
            let key = Owed::Endorsement(change.size);
            let mut d = due.remove(&key).unwrap_or(Due::first(round, true));
            if d.round <= round {
                if !resubmit_endorsement(&shared, &change).await {
                    return;
                }
                d.advance(round);
            }
            still.insert(key, d);
        }
        if let Some(cp) = checkpoint {
            let key = Owed::Signature(cp.seq);
            let in_bound = crate::within_clock_bound(&shared, &cp, ingress::now_ms());
            let mut d = due.remove(&key).unwrap_or(Due::first(round, in_bound));
            if d.round <= round && d.sign {
                if !resubmit_signature(&shared, &cp).await {
                    return;
                }
                d.advance(round);
            }
            still.insert(key, d);
        }
        due = still;
    }
}

impl Due {
    /// An item first seen owed in `round` is due the round after.
    fn first(round: u32, sign: bool) -> Due {
        Due {
            round: round + 1,
            gap: 1,
            sign,
        }
    }

    /// Submitted in `round`: due again after a doubled gap.
    fn advance(&mut self, round: u32) {
        self.gap = (self.gap * 2).min(MAX_GAP);
        self.round = round + self.gap;
    }
}

async fn resubmit_endorsement(shared: &Shared, change: &NodeSetChange) -> bool {
    tracing::info!(
        size = change.size,
        "endorsing the node-set change again: the endorsement has not reached the ledger"
    );
    crate::endorse(shared, change).await
}

async fn resubmit_signature(shared: &Shared, cp: &Checkpoint) -> bool {
    tracing::info!(
        seq = cp.seq,
        "signing checkpoint {} again: the signature has not reached the ledger",
        cp.seq
    );
    crate::sign_checkpoint(shared, cp).await
}

/// Whether this node applies entries far behind what is committed (a
/// long catch-up), or installs a snapshot: its ledger then holds records
/// from peers that are checked only at the install's end, which it must
/// not sign for.
fn catching_up(shared: &Shared) -> bool {
    if comity_consensus::state_machine::installing(&shared.store).unwrap_or(true) {
        return true;
    }
    let applied = shared
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    shared
        .log
        .committed_index()
        .is_some_and(|c| c > applied + CATCHING_UP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owed_item_is_submitted_a_round_later_then_at_doubling_gaps() {
        let mut d = Due::first(5, true);
        let mut rounds = Vec::new();
        for round in 5..400 {
            if d.round <= round {
                rounds.push(round);
                d.advance(round);
            }
        }
        assert_eq!(&rounds[..7], &[6, 8, 12, 20, 36, 68, 100]);
        assert!(rounds.windows(2).all(|w| w[1] - w[0] <= MAX_GAP));
    }
}
