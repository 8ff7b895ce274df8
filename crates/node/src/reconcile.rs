//! The membership reconciler: on the leader, outside apply, drives
//! openraft's voters toward the trusted node set in state. It is idempotent,
//! so running it again after a crash or leader change simply continues.

use crate::Shared;
use comity_apps::{genesis::ADDRESS, registry};
use comity_consensus::network::raft_id;
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A learner further behind the leader's log than this is not made a voter
/// yet: the joint configuration would need it for every commit, and one
/// that never catches up (down, or at a wrong address) would halt writes.
const PROMOTE_LAG: u64 = 256;

/// Longest the reconciler waits on a membership change before it looks
/// again (the change itself goes on in Raft).
const CHANGE_WAIT: Duration = Duration::from_secs(60);

/// How often a learner that is not catching up is reported.
const REPORT_EVERY: Duration = Duration::from_secs(30);

pub async fn run(shared: Arc<Shared>) {
    let (mut behind_since, mut reported) = (None, None::<Instant>);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !shared.is_leader() {
            continue;
        }
        match step(&shared).await {
            Ok(behind) if !behind.is_empty() => {
                let since = *behind_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= REPORT_EVERY
                    && reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY)
                {
                    reported = Some(Instant::now());
                    tracing::warn!(
                        ?behind,
                        "trusted nodes are not caught up and stay learners (down, or a wrong address?)"
                    );
                }
            }
            Ok(_) => (behind_since, reported) = (None, None),
            Err(e) => tracing::warn!(error = %e, "membership reconciliation failed; retrying"),
        }
    }
}

/// One pass; returns the learners still too far behind to become voters.
async fn step(shared: &Shared) -> anyhow::Result<BTreeSet<u64>> {
    let view = shared.view();
    if view.network_id.is_none() || view.nodes.0.is_empty() {
        return Ok(BTreeSet::new());
    }
    // Until a recovery decision is applied, the state still names the lost
    // nodes; judged from the same view as the target, so the two agree.
    if shared
        .recovering
        .as_ref()
        .is_some_and(|r| r.pending(&view.nodes))
    {
        return Ok(BTreeSet::new());
    }
    let m = shared.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(BTreeSet::new()); // a change is in progress
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
    if target.is_empty() {
        return Ok(BTreeSet::new());
    }
    // A learner retired before it caught up leaves the group: changing the
    // voters would keep it, and its peers trust it while it is in the group.
    // (One not yet in the target may be trusted by an entry this leader has
    // not applied yet: only a retirement in state removes it.)
    let stale = retired_learners(
        shared,
        membership.learner_ids().filter(|id| !target.contains(id)),
    )?;
    if !stale.is_empty() {
        tracing::info!(?stale, "removing learners that are no longer trusted");
        change(shared, ChangeMembers::RemoveNodes(stale)).await?;
        return Ok(BTreeSet::new());
    }
    if target == voters {
        return Ok(BTreeSet::new());
    }
    let mut behind = BTreeSet::new();
    for (id, addr) in &want {
        if membership.get_node(id).is_none() {
            tracing::info!(node = id, %addr, "adding a newly trusted node as a learner");
            shared
                .raft
                .add_learner(*id, BasicNode::new(addr.clone()), false)
                .await?;
            behind.insert(*id);
        } else if !voters.contains(id) && lag(&m, *id) > PROMOTE_LAG {
            behind.insert(*id);
        }
    }
    // Nodes that left the trusted set leave the group meanwhile: a retired
    // node is trusted by its peers only while it is in it.
    let ready: BTreeSet<u64> = target.difference(&behind).copied().collect();
    if ready == voters {
        return Ok(behind);
    }
    tracing::info!(
        ?voters,
        target = ?ready,
        "changing the Raft voters to the trusted node set"
    );
    change(shared, ChangeMembers::ReplaceAllVoters(ready)).await?;
    Ok(behind)
}

/// The given learners whose node is retired in this node's state.
fn retired_learners(
    shared: &Shared,
    learners: impl Iterator<Item = u64>,
) -> anyhow::Result<BTreeSet<u64>> {
    let learners: BTreeSet<u64> = learners.collect();
    if learners.is_empty() {
        return Ok(learners);
    }
    let r = shared.store.read()?;
    let mut retired = BTreeSet::new();
    for (change, _) in comity_apps::node_set::changes(&r, 0, u64::MAX)? {
        for n in &change.nodes.0 {
            let id = raft_id(&n.id);
            if learners.contains(&id)
                && registry::get(&r, &n.id)?.is_some_and(|i| i.status == registry::Status::Retired)
            {
                retired.insert(id);
            }
        }
    }
    Ok(retired)
}

/// Asks Raft for a membership change and waits at most [`CHANGE_WAIT`] for
/// it to commit (it goes on in Raft meanwhile).
async fn change(shared: &Shared, changes: ChangeMembers<u64, BasicNode>) -> anyhow::Result<()> {
    match tokio::time::timeout(CHANGE_WAIT, shared.raft.change_membership(changes, false)).await {
        Ok(r) => r.map(|_| ()).map_err(Into::into),
        Err(_) => {
            tracing::warn!("the membership change has not committed within {CHANGE_WAIT:?}");
            Ok(())
        }
    }
}

/// How many entries the leader's log is ahead of what `id` has accepted
/// (`u64::MAX` while it has accepted nothing).
fn lag(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> u64 {
    match m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
    {
        Some(matched) => m.last_log_index.unwrap_or(0).saturating_sub(matched.index),
        None => u64::MAX,
    }
}
