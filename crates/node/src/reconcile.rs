//! The membership reconciler: on the leader, outside apply, drives
//! openraft's voters toward the trusted node set in state. It is idempotent,
//! so running it again after a crash or leader change simply continues.

use crate::Shared;
use comity_apps::{genesis::ADDRESS, registry};
use comity_consensus::network::raft_id;
use openraft::BasicNode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest a new node may take to catch up as a learner before the leader retries.
const CATCH_UP: Duration = Duration::from_secs(120);

pub async fn run(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !shared.is_leader() {
            continue;
        }
        if let Err(e) = step(&shared).await {
            tracing::warn!(error = %e, "membership reconciliation failed; retrying");
        }
    }
}

async fn step(shared: &Shared) -> anyhow::Result<()> {
    let view = shared.view();
    if view.network_id.is_none() || view.nodes.0.is_empty() {
        return Ok(());
    }
    // Until a recovery decision is applied, the state still names the lost
    // nodes; judged from the same view as the target, so the two agree.
    if shared
        .recovering
        .as_ref()
        .is_some_and(|r| r.pending(&view.nodes))
    {
        return Ok(());
    }
    let m = shared.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(()); // a change is in progress
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    {
        let r = shared.store.read()?;
        for n in &view.nodes.0 {
            let id = raft_id(&n.id);
            let addr = match membership.get_node(&id) {
                Some(b) => Some(b.addr.clone()),
                None => registry::get(&r, &n.id)?.and_then(|i| i.data.get(ADDRESS).cloned()),
            };
            match addr {
                Some(a) => {
                    want.insert(id, a);
                }
                // Left out of the Raft group (but not blocking other changes).
                None => tracing::warn!(
                    node = %hex::encode(n.id),
                    "a trusted node has no `address` in its data; it cannot join the Raft group"
                ),
            }
        }
    }
    let target: BTreeSet<u64> = want.keys().copied().collect();
    if target == voters || target.is_empty() {
        return Ok(());
    }
    for (id, addr) in &want {
        if membership.get_node(id).is_some() {
            continue;
        }
        tracing::info!(node = id, %addr, "adding a newly trusted node as a learner");
        tokio::time::timeout(
            CATCH_UP,
            shared
                .raft
                .add_learner(*id, BasicNode::new(addr.clone()), true),
        )
        .await
        .map_err(|_| anyhow::anyhow!("node {id} did not catch up within {CATCH_UP:?}"))??;
    }
    tracing::info!(
        ?voters,
        ?target,
        "changing the Raft voters to the trusted node set"
    );
    shared.raft.change_membership(target, false).await?;
    Ok(())
}
