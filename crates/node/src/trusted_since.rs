//! Nodes trusted since the state this node has applied.
//!
//! A node that was down while members trusted a new node does not know that
//! node when it comes back, and refuses its connections; yet the new node
//! may lead by then, and the returning node would never catch up. So when
//! this node refuses a peer, it asks the nodes of its Raft group for a
//! recent final checkpoint ahead of its state. It verifies the checkpoint
//! as a receipt verifier would, but from the node set it holds itself
//! rather than from genesis: the node-set changes since its own latest one
//! must each be endorsed by a quorum of the set before, and the checkpoint
//! signed by a quorum of the set they lead to. It accepts that set's nodes
//! until its own ledger reaches the checkpoint's size. A relay can leave
//! the latest changes out (and the signatures of nodes they added), so
//! the set may be an earlier one than the checkpoint's; but every node in
//! it was trusted by the network at some point since this node's state.

use crate::Shared;
use comity_consensus::network::{path, Bound, FinalCheckpoint};
use comity_core::network::NodeSet;
use comity_core::receipt::{node_set_since, verify_checkpoint_by};
use comity_core::Hash;
use comity_store::StoreError;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Least time between two rounds of asking: anyone may present an unknown
/// certificate, and each refusal asks for a round.
const GAP: Duration = Duration::from_secs(5);
/// How long one peer has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most an answer may be (its node-set chain holds a few KiB per
/// change): far less than any reply may, as a list of tiny items decodes to
/// many times its size.
const ANSWER: Bound = Bound {
    bytes: 16 << 20,
    items: None,
};

/// A node set learned from a verified checkpoint ahead of this node's state.
#[derive(Default)]
pub struct TrustedSince {
    learned: RwLock<Option<(u64, NodeSet)>>,
    wanted: Notify,
}

impl TrustedSince {
    /// Whether `fp` is a node of a set learned for a tree size beyond
    /// `applied()`, this node's ledger size.
    pub fn admits(&self, fp: &Hash, applied: impl FnOnce() -> Option<u64>) -> bool {
        let size = match &*self.learned.read().expect("learned lock") {
            Some((size, nodes)) if nodes.get(fp).is_some() => *size,
            _ => return false,
        };
        applied().is_some_and(|a| a < size)
    }

    /// Asks for a round of learning: a peer was refused.
    pub fn refused(&self) {
        self.wanted.notify_one();
    }

    /// The tree size of the set learned (0 if none).
    fn size(&self) -> u64 {
        self.learned
            .read()
            .expect("learned lock")
            .as_ref()
            .map_or(0, |(s, _)| *s)
    }

    /// Keeps `nodes` if `size` is beyond what was learned before.
    fn learn(&self, size: u64, nodes: NodeSet) -> bool {
        let mut learned = self.learned.write().expect("learned lock");
        if learned.as_ref().is_some_and(|(s, _)| *s >= size) {
            return false;
        }
        *learned = Some((size, nodes));
        true
    }
}

/// What this node's own state says.
struct Local {
    network_id: Hash,
    /// Its ledger size.
    len: u64,
    /// Its latest node-set change: the tree size it took effect at, and the set.
    since: u64,
    set: NodeSet,
}

impl Local {
    fn read(shared: &Shared) -> Result<Option<Local>, StoreError> {
        let Some(network_id) = shared.view().network_id else {
            return Ok(None); // no genesis yet: a joining node's set applies
        };
        let r = shared.store.read()?;
        let Some((change, _)) = comity_apps::node_set::changes(&r, 0, u64::MAX)?.pop() else {
            return Ok(None);
        };
        Ok(Some(Local {
            network_id,
            len: r.ledger_len()?,
            since: change.size,
            set: change.nodes,
        }))
    }

    /// Verifies `cp` from this node's set: its tree size and the node set
    /// the chain leads to there.
    fn verify(&self, cp: FinalCheckpoint) -> anyhow::Result<(u64, NodeSet)> {
        let chain: Vec<Vec<u8>> = cp.chain.into_iter().map(|c| c.into_vec()).collect();
        let mut signers = None;
        let (checkpoint, _) = verify_checkpoint_by(&cp.signed, &self.network_id, |size| {
            let set = node_set_since(&self.network_id, self.set.clone(), self.since, &chain, size)?;
            signers = Some(set.clone());
            Ok(set)
        })?;
        anyhow::ensure!(
            checkpoint.size == cp.size,
            "the checkpoint is of size {}, not {}",
            checkpoint.size,
            cp.size
        );
        Ok((checkpoint.size, signers.expect("set by the check")))
    }
}

/// Learns, each time a peer was refused while this node knows no leader
/// (at most every [`GAP`]).
pub(crate) async fn run(shared: Arc<Shared>, since: Arc<TrustedSince>) {
    loop {
        since.wanted.notified().await;
        // A node that follows a leader catches up from it: the refused
        // peer was no leader of its (perhaps a stranger's probe).
        if shared.raft.metrics().borrow().current_leader.is_none() {
            ask_peers(&shared, &since).await;
        }
        tokio::time::sleep(GAP).await;
    }
}

/// One round: every other node of the Raft group is asked.
async fn ask_peers(shared: &Arc<Shared>, since: &TrustedSince) {
    if shared.view().network_id.is_none() {
        return; // no genesis yet: a joining node's set applies
    }
    let peers: Vec<(u64, String)> = {
        let m = shared.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != shared.node_id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    for (id, addr) in peers {
        let answer = shared
            .peers
            .call_bounded::<_, Option<FinalCheckpoint>>(
                Some(id),
                &addr,
                path::CHECKPOINT,
                &(),
                TIMEOUT,
                ANSWER,
            )
            .await;
        let cp = match answer {
            Ok(Some(cp)) => cp,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "asking for a recent final checkpoint");
                continue;
            }
        };
        let s = shared.clone();
        let learned = since.size();
        let checked = tokio::task::spawn_blocking(move || {
            let local = match Local::read(&s) {
                Ok(Some(local)) => local,
                Ok(None) => return Ok(None),
                Err(e) => return Err(anyhow::Error::from(e)),
            };
            // Nothing this node's state or an earlier answer already covers.
            if cp.size <= local.len.max(learned) {
                return Ok(None);
            }
            local.verify(cp).map(Some)
        })
        .await;
        match checked {
            Ok(Ok(Some((size, nodes)))) => {
                let count = nodes.0.len();
                if since.learn(size, nodes) {
                    tracing::info!(
                        peer = id,
                        size,
                        nodes = count,
                        "learned the node set of a final checkpoint ahead of this node's state: its nodes are accepted as peers until this node gets there"
                    );
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(peer = id, error = %e, "a peer's recent final checkpoint does not verify")
            }
            Err(_) => return, // the runtime is shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::crypto::{Alg, SigningKey};
    use comity_core::network::NodeInfo;

    fn node() -> NodeInfo {
        let key = SigningKey::generate(Alg::EdDsa).public();
        NodeInfo {
            id: key.fingerprint(),
            member: [7; 32],
            key: key.to_spki_der(),
        }
    }

    #[test]
    fn a_learned_set_admits_its_nodes_only_while_this_nodes_state_is_behind() {
        let since = TrustedSince::default();
        let (a, b) = (node(), node());
        assert!(!since.admits(&a.id, || Some(0)), "nothing learned yet");
        assert!(since.learn(100, NodeSet(vec![a.clone()])));
        assert!(since.admits(&a.id, || Some(99)));
        assert!(!since.admits(&a.id, || Some(100)), "this node got there");
        assert!(!since.admits(&a.id, || None), "its size unreadable");
        assert!(!since.admits(&b.id, || Some(0)), "not in the set");
        assert!(!since.learn(100, NodeSet(vec![b.clone()])), "not beyond");
        assert!(!since.learn(50, NodeSet(vec![b.clone()])), "older");
        assert!(!since.admits(&b.id, || Some(0)));
        assert!(since.learn(200, NodeSet(vec![b.clone()])));
        assert!(since.admits(&b.id, || Some(150)));
        assert!(!since.admits(&a.id, || Some(0)), "a later set replaces it");
    }
}
