//! Signatures this node owes the ledger, submitted again when lost.
//!
//! A node submits its signature of a checkpoint, and its endorsement of a
//! node-set change, once, when it applies them, without waiting for the
//! outcome: a crash just after, a long election or a refusal by the leader
//! loses them. A lost endorsement would hold back every later receipt for
//! good, a lost signature the entries before the next checkpoint. So every
//! [`EVERY`] this task looks for what this node still owes and submits it
//! again, but only what it already owed a round earlier, so that a
//! submission still in flight is not doubled.

use crate::Shared;
use comity_store::StoreError;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(10);

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Owed {
    /// An endorsement of the node-set change at this tree size.
    Endorsement(u64),
    /// A signature of the checkpoint with this sequence number.
    Signature(u64),
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let me = shared.node_identity;
    let mut before = BTreeSet::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let r = s.store.read()?;
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
        let mut now = BTreeSet::new();
        for change in changes {
            let owed = Owed::Endorsement(change.size);
            if before.contains(&owed) {
                tracing::info!(
                    size = change.size,
                    "endorsing the node-set change again: the endorsement never reached the ledger"
                );
                if !crate::endorse(&shared, &change).await {
                    return;
                }
            }
            now.insert(owed);
        }
        if let Some(cp) = checkpoint {
            let owed = Owed::Signature(cp.seq);
            if before.contains(&owed) {
                tracing::info!(
                    seq = cp.seq,
                    "signing checkpoint {} again: the signature never reached the ledger",
                    cp.seq
                );
                if !crate::co_sign(&shared, &cp).await {
                    return;
                }
            }
            now.insert(owed);
        }
        before = now;
    }
}
