//! Nodes trusted since the state this node has applied.
//!
//! A node that was down while members trusted a new node does not know that
//! node when it comes back, and refuses its connections; yet the new node
//! may lead by then, and the returning node would never catch up. So when
//! this node refuses a peer, it asks the nodes of its Raft group for their
//! latest final checkpoint, verifies it and the node-set chain up to it
//! against the network identity, as an offline verifier checks a receipt,
//! and accepts that checkpoint's nodes until its own state reaches the
//! checkpoint's size. Whoever relays the checkpoint, only a quorum of
//! trusted nodes, endorsed change by change from genesis, can vouch for it.

use crate::Shared;
use comity_consensus::network::{path, FinalCheckpoint};
use comity_core::network::{NetworkIdentity, NodeSet};
use comity_core::receipt::{node_set_at, verify_signed_checkpoint};
use comity_core::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Least time between two rounds of asking: anyone may present an unknown
/// certificate, and each refusal asks for a round.
const GAP: Duration = Duration::from_secs(5);
/// How long one peer has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

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
        let learned = self.learned.read().expect("learned lock");
        match &*learned {
            Some((size, nodes)) if nodes.get(fp).is_some() => applied().is_some_and(|a| a < *size),
            _ => false,
        }
    }

    /// Asks for a round of learning: a peer was refused.
    pub fn refused(&self) {
        self.wanted.notify_one();
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

/// Verifies `cp` against `identity`: its size and the node set signing there.
fn verify(identity: &NetworkIdentity, cp: FinalCheckpoint) -> anyhow::Result<(u64, NodeSet)> {
    let chain: Vec<Vec<u8>> = cp.chain.into_iter().map(|c| c.into_vec()).collect();
    let (checkpoint, _) = verify_signed_checkpoint(&cp.signed, identity, &chain)?;
    let nodes = node_set_at(identity, &chain, checkpoint.size)?;
    Ok((checkpoint.size, nodes))
}

/// Learns, each time a peer was refused (at most every [`GAP`]).
pub(crate) async fn run(shared: Arc<Shared>, since: Arc<TrustedSince>) {
    loop {
        since.wanted.notified().await;
        ask_peers(&shared, &since).await;
        tokio::time::sleep(GAP).await;
    }
}

/// One round: every other node of the Raft group is asked.
async fn ask_peers(shared: &Arc<Shared>, since: &TrustedSince) {
    let s = shared.clone();
    let identity =
        match tokio::task::spawn_blocking(move || crate::network_identity(&s.store)).await {
            Ok(Ok(Some(identity))) => Arc::new(identity),
            _ => return, // no genesis yet: the joining node's set applies
        };
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
            .call::<_, Option<FinalCheckpoint>>(Some(id), &addr, path::CHECKPOINT, &(), TIMEOUT)
            .await;
        let cp = match answer {
            Ok(Some(cp)) => cp,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(peer = id, error = %e, "asking for the latest final checkpoint");
                continue;
            }
        };
        let identity = identity.clone();
        let checked = tokio::task::spawn_blocking(move || verify(&identity, cp)).await;
        match checked {
            Ok(Ok((size, nodes))) => {
                let applied = shared.store.read().and_then(|r| r.ledger_len()).ok();
                let count = nodes.0.len();
                if applied.is_some_and(|a| a < size) && since.learn(size, nodes) {
                    tracing::info!(
                        peer = id,
                        size,
                        nodes = count,
                        "learned the node set of a final checkpoint ahead of this node's state: its nodes are accepted as peers until this node gets there"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = id, error = %e, "a peer's latest final checkpoint does not verify")
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
