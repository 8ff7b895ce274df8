//! The Comity node daemon.

pub mod api;
pub mod batcher;
pub mod config;
pub mod conn_gate;
pub mod cursor;
pub mod error;
pub mod fd_budget;
pub mod gov_api;
pub mod ingress;
pub mod join;
pub mod key_file;
pub mod notary_api;
mod owed;
pub mod peer_api;
pub mod reconcile;
pub mod server;
pub mod tls;
pub mod trusted_since;
pub mod verifier;
pub mod write_deadline;

use comity_apps::Command;
use comity_consensus::log_store::LogStore;
use comity_consensus::network::{raft_id, Peers, Trust};
use comity_consensus::state_machine::{Event, PeerSlot, SharedView, StateMachine};
use comity_consensus::{Raft, TxOutcome};
use comity_core::checkpoint::{self, CHECKPOINT_CONTENT_TYPE, NODE_SET_CONTENT_TYPE};
use comity_core::crypto::{sha256, SigningKey};
use comity_core::tx::{Tx, TxPayload};
use comity_core::Hash;
use comity_store::Store;
use config::{Limits, NodeConfig};
use ingress::PendingSet;
use openraft::BasicNode;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// State shared by the API handlers and background tasks.
pub struct Shared {
    pub store: Arc<Store>,
    /// Executor state as of the last apply (network id, config, ledger time).
    pub view: SharedView,
    pub raft: Raft,
    /// The Raft log, for its committed index.
    pub log: LogStore,
    pub node_id: u64,
    /// Calls to other nodes (forwarding, read index).
    pub peers: Peers,
    /// Whether a key fingerprint is a currently trusted node's.
    pub trust: Trust,
    /// The recovery decision this node restarts from, until it is applied.
    pub recovering: Option<Arc<Recovering>>,
    node_key: SigningKey,
    /// Seals the cursors of listings that filter what the caller may read.
    pub cursors: cursor::CursorSeal,
    /// Identity id of this node (SHA-256 of its key).
    pub node_identity: Hash,
    pub pending: Arc<PendingSet>,
    /// Batches the signature checks of submitted transactions.
    pub verifier: verifier::Verifier,
    /// Admitted transactions, with their ids, for the batcher.
    pub submit: mpsc::Sender<(Hash, Vec<u8>)>,
    pub limits: Limits,
    /// Set when another node signed a different checkpoint than ours.
    pub diverged: AtomicBool,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Bumped after every apply, for requests that wait for new state.
    pub applied: tokio::sync::watch::Sender<u64>,
    pub started: std::time::Instant,
}

impl Shared {
    /// A copy of the executor view.
    pub fn view(&self) -> comity_consensus::state_machine::ExecView {
        self.view.read().expect("view lock").clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Whether this node restarts from a recovery decision not yet applied:
    /// the decision must be the first entry, so nothing else is proposed.
    pub fn recovery_pending(&self) -> bool {
        self.recovering
            .as_ref()
            .is_some_and(|r| r.pending(&self.view.read().expect("view lock").nodes))
    }

    /// The current leader's id and peer address, if one is known.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node.addr))
    }
}

/// A running node.
pub struct Node {
    pub shared: Arc<Shared>,
    pub addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Opens storage (verifying it), starts Raft, the API and background tasks.
    pub async fn start(
        cfg: NodeConfig,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> anyhow::Result<Node> {
        let key_pem = String::from_utf8(key_file::read_private(&cfg.node_key)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.node_key.display()))?;
        let node_key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.node_key.display()))?;
        let node_identity = node_key.public().fingerprint();
        let node_id = raft_id(&node_identity);
        let tls_cert = std::fs::read(&cfg.tls_cert)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.tls_cert.display()))?;
        let tls_key = key_file::read_private(&cfg.tls_key)?;
        tls::check_node_cert(&tls_cert, &node_identity)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.tls_cert.display()))?;
        let genesis = match &cfg.genesis {
            Some(g) => {
                let doc = std::fs::read(g).map_err(|e| anyhow::anyhow!("{}: {e}", g.display()))?;
                // One ledger entry, which followers take only this large.
                let max = comity_apps::genesis::MAX_TX_BYTES;
                if doc.len() as u64 > max {
                    anyhow::bail!("{}: a genesis document is at most {max} bytes", g.display());
                }
                let parsed = comity_apps::Genesis::from_cbor(&doc)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", g.display()))?;
                Some((doc, parsed))
            }
            None => None,
        };
        let fds = fd_budget::FdBudget::of_process(cfg.limits.max_connections)?;
        tracing::info!(
            open_files = fds.limit,
            database_files = fds.db_files,
            connections = fds.connections,
            "open-file limit shared out"
        );
        let t0 = std::time::Instant::now();
        let data = cfg.data_dir.clone();
        let opts = comity_store::StoreOptions {
            max_open_files: fds.db_files,
            ..cfg.limits.store_options()
        };
        let (store, report) =
            tokio::task::spawn_blocking(move || Store::open_with(&data.join("ledger"), &opts))
                .await??;
        if report.discarded_tail_bytes > 0 {
            tracing::warn!(
                bytes = report.discarded_tail_bytes,
                "discarded an unsynced ledger tail; it is rebuilt from the Raft log"
            );
        }
        tracing::info!(
            records = report.records,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            state_cache_mib = cfg.limits.state_cache_mib,
            tree_cache_mib = cfg.limits.tree_cache_mib,
            "ledger verified"
        );
        let diverged_at = comity_apps::node::diverged_at(&store.read()?)?;
        if let Some(seq) = diverged_at {
            tracing::error!(
                seq,
                "DIVERGENCE: nodes of a quorum of members signed checkpoint {seq} with roots that differ from this node's; this node reports itself unhealthy and serves no state (restore it from a healthy node's copy)"
            );
        }
        let store = Arc::new(store);
        let log = LogStore::open(&cfg.data_dir.join("raft"))?;
        let pending = Arc::new(PendingSet::default());
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let pv = pending.clone();
        let peer_slot = PeerSlot::default();
        let sm = StateMachine::new(
            store.clone(),
            ev_tx,
            Arc::new(move |id: &Hash| pv.take_verified(id)),
            peer_slot.clone(),
        )?;
        log.guard_purges(sm.purge_floor()).map_err(|e| {
            anyhow::anyhow!(
                "{e}; restore this node's data directory {} from a healthy node's copy (docs/operations.md, Backup)",
                cfg.data_dir.display()
            )
        })?;
        let view = sm.view();
        let recovery = match &cfg.recovery {
            Some(p) => {
                let signed =
                    std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                let (_, r) = comity_core::recovery::parse(&signed)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                // Once the decision is on the ledger, state governs the node set again.
                let applied = store.read()?.ledger_len()? > r.size;
                (!applied).then_some((signed, r))
            }
            None => None,
        };
        let joined = match &genesis {
            Some(_) => None,
            None => join::load(&cfg.data_dir)?,
        };
        if let (Some(j), Some(net)) = (&joined, view.read().expect("view lock").network_id) {
            if j.network_id != net {
                anyhow::bail!(
                    "this node's ledger is of network {}, but it joined network {} (join.json): a peer gave it another network's genesis; empty {} and join again",
                    hex::encode(net),
                    hex::encode(j.network_id),
                    cfg.data_dir.display()
                );
            }
        }
        let bootstrap = match &genesis {
            Some((_, g)) => Some(g.nodes.clone()),
            None => joined.as_ref().map(|j| j.nodes.clone()),
        };
        let recovering = recovery.as_ref().map(|(_, r)| {
            Arc::new(Recovering {
                nodes: r.nodes.clone(),
                applied: AtomicBool::new(false),
            })
        });
        let raft_members = RaftMembers::default();
        let since = Arc::new(trusted_since::TrustedSince::default());
        let trust = trust(
            &view,
            node_identity,
            store.clone(),
            raft_members.clone(),
            since.clone(),
            bootstrap,
            joined.map(|j| j.network_id),
            recovering.clone(),
        );
        let peers = Peers::new(&tls_cert, &tls_key, trust.clone(), cfg.peer_bind)?;
        let _ = peer_slot.set(peers.clone());
        let raft_cfg = Arc::new(
            comity_consensus::raft_config("comity", cfg.limits.raft_snapshot_every).validate()?,
        );
        let raft = Raft::new(node_id, raft_cfg, peers.clone(), log.clone(), sm).await?;
        tokio::spawn(follow_raft_members(raft.clone(), raft_members));
        if !raft.is_initialized().await? {
            match (&recovery, &genesis) {
                (Some((_, r)), _) => {
                    raft.initialize(recovery_members(r, &node_identity)?)
                        .await?
                }
                (None, Some((_, g))) => {
                    raft.initialize(genesis_members(g, &node_identity, &cfg)?)
                        .await?
                }
                (None, None) => {
                    tracing::info!("no genesis: waiting for the network to add this node")
                }
            }
        }
        // Room for every transaction the pending limit admits (and the
        // node's own signatures), so a full channel never refuses one.
        let (submit, submit_rx) = mpsc::channel(cfg.limits.max_pending.max(64 << 10) + 1024);
        let shared = Arc::new(Shared {
            store,
            view,
            raft,
            log,
            node_id,
            peers,
            trust,
            recovering,
            node_key,
            cursors: cursor::CursorSeal::new(&key_pem),
            node_identity,
            pending,
            verifier: verifier::Verifier::spawn()?,
            submit,
            limits: cfg.limits.clone(),
            diverged: AtomicBool::new(diverged_at.is_some()),
            metrics,
            applied: tokio::sync::watch::Sender::new(0),
            started: t0,
        });
        tokio::spawn(batcher::run(shared.clone(), submit_rx));
        tokio::spawn(batcher::checkpoints(shared.clone()));
        tokio::spawn(events(shared.clone(), ev_rx));
        tokio::spawn(reconcile::run(shared.clone()));
        tokio::spawn(owed::run(shared.clone()));
        tokio::spawn(trusted_since::run(shared.clone(), since));
        if let Some((doc, _)) = genesis.filter(|_| shared.view().network_id.is_none()) {
            tokio::spawn(propose_genesis(shared.clone(), doc));
        }
        if let Some((signed, r)) = recovery {
            tokio::spawn(propose_recovery(shared.clone(), signed, r.size));
        }
        let tls = tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
        let gate = conn_gate::ConnGate::new(fds.connections, cfg.limits.max_connections_per_ip);
        let (addr, server) = server::serve(shared.clone(), cfg.listen, tls, gate).await?;
        tracing::info!(%addr, node = %hex::encode(node_identity), "node serving");
        Ok(Node {
            shared,
            addr,
            server,
        })
    }

    /// Resolves once Raft has stopped for good (after a storage error), with
    /// why: the node then serves only stale reads, and should exit.
    pub async fn raft_stopped(&self) -> String {
        let mut rx = self.shared.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(e) = &m.running_state {
                    return e.to_string();
                }
                if m.state == openraft::ServerState::Shutdown {
                    return "Raft shut down".into();
                }
            }
            if rx.changed().await.is_err() {
                return "Raft's metrics closed".into();
            }
        }
    }

    /// Stops serving and shuts Raft down cleanly, making state durable.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.abort();
        self.shared
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.begin().and_then(|t| t.commit(true))).await??;
        Ok(())
    }
}

/// A restart from a members' recovery decision: until the decision's node
/// set is the applied one, the state still names the lost nodes.
pub struct Recovering {
    nodes: comity_core::network::NodeSet,
    applied: AtomicBool,
}

impl Recovering {
    /// Whether the decision is still to be applied, judged from `applied`
    /// (a node set read from the executor view). Once it has been seen
    /// applied, later governance changes do not bring it back.
    pub fn pending(&self, applied: &comity_core::network::NodeSet) -> bool {
        if self.applied.load(Ordering::SeqCst) {
            return false;
        }
        if *applied == self.nodes {
            self.applied.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Accepts the nodes trusted by the applied state; before genesis is
/// applied, the genesis (or joined network's) node set; during a recovery,
/// until the decision is applied, only the decision's new node set.
///
/// A retired node is accepted as long as it is still in the Raft group
/// (`raft_members`): the change that removes it needs the old set's
/// majority, which may include the retiring node itself.
///
/// A joining node also accepts the set it joined with (less nodes retired
/// since) until its own trust is applied: replaying from genesis, its
/// applied set lacks the nodes trusted since, the leader perhaps among them.
/// Given another network's genesis than the one it joined, it accepts no
/// one (and refuses to start again).
///
/// A node whose state is behind also accepts the nodes of a later final
/// checkpoint it verified ([`trusted_since`]), and refusing a peer makes it
/// look for one.
#[allow(clippy::too_many_arguments)]
fn trust(
    view: &SharedView,
    me: Hash,
    store: Arc<Store>,
    raft_members: RaftMembers,
    since: Arc<trusted_since::TrustedSince>,
    bootstrap: Option<comity_core::network::NodeSet>,
    joined: Option<Hash>,
    recovering: Option<Arc<Recovering>>,
) -> Trust {
    let view = view.clone();
    let bootstrap = bootstrap.unwrap_or_default();
    Arc::new(move |fp: &Hash| {
        let (nodes, net) = {
            let v = view.read().expect("view lock");
            (v.nodes.clone(), v.network_id)
        };
        if let (Some(j), Some(n)) = (joined, net) {
            if j != n {
                tracing::error!(
                    joined = %hex::encode(j),
                    applied = %hex::encode(n),
                    "a peer gave this node another network's genesis than the one it joined: it accepts no peer"
                );
                return false;
            }
        }
        if let Some(r) = recovering.as_ref().filter(|r| r.pending(&nodes)) {
            return r.nodes.get(fp).is_some();
        }
        if nodes.0.is_empty() {
            return bootstrap.get(fp).is_some();
        }
        if nodes.get(fp).is_some() {
            return true;
        }
        // Only while joining: a node once trusted (retired since) or a node
        // retired meanwhile is not taken back on the old set's word.
        if nodes.get(&me).is_none()
            && bootstrap.get(fp).is_some()
            && store
                .read()
                .and_then(|r| {
                    let sets = comity_apps::node_set::changes(&r, 0, u64::MAX)?;
                    let was_trusted = sets.iter().any(|(c, _)| c.nodes.get(&me).is_some());
                    let retired = comity_apps::registry::get(&r, fp)?
                        .is_some_and(|i| i.status == comity_apps::registry::Status::Retired);
                    Ok(!was_trusted && !retired)
                })
                .unwrap_or(false)
        {
            return true;
        }
        // The Raft id is 64 bits of the key's hash: the whole key must have
        // been in a trusted node set of this network.
        let leaving = raft_members
            .read()
            .expect("members lock")
            .contains(&raft_id(fp));
        if leaving
            && store
                .read()
                .and_then(|r| comity_apps::node_set::changes(&r, 0, u64::MAX))
                .is_ok_and(|sets| sets.iter().any(|(c, _)| c.nodes.get(fp).is_some()))
        {
            return true;
        }
        if since.admits(fp, || store.read().and_then(|r| r.ledger_len()).ok()) {
            return true;
        }
        since.refused();
        false
    })
}

/// The ids of the Raft group's nodes (every configuration, learners too).
type RaftMembers = Arc<std::sync::RwLock<BTreeSet<u64>>>;

/// Keeps `members` equal to the Raft group's nodes as the group changes.
async fn follow_raft_members(raft: Raft, members: RaftMembers) {
    let mut metrics = raft.server_metrics();
    loop {
        let ids = metrics
            .borrow_and_update()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        *members.write().expect("members lock") = ids;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The Raft membership of a network restarted by recovery: the new node set.
fn recovery_members(
    r: &comity_core::recovery::Recovery,
    me: &Hash,
) -> anyhow::Result<BTreeMap<u64, BasicNode>> {
    if r.nodes.get(me).is_none() {
        anyhow::bail!(
            "this node's key {} is not in the recovery decision's node set",
            hex::encode(me)
        );
    }
    Ok(r.nodes
        .0
        .iter()
        .zip(&r.addresses)
        .map(|(n, a)| (raft_id(&n.id), BasicNode::new(a.clone())))
        .collect())
}

/// Records the recovery decision as the first entry of the restarted network.
async fn propose_recovery(shared: Arc<Shared>, decision: Vec<u8>, size: u64) {
    while shared.recovery_pending() {
        match shared.store.read().and_then(|r| r.ledger_len()) {
            Ok(len) if len != size => {
                tracing::error!(len, size, "RECOVERY IMPOSSIBLE: this node's ledger has {len} entries but the decision continues from {size}; seed it again from the surviving copy");
                return;
            }
            _ => {}
        }
        if shared.is_leader() {
            let cmd = Command::Recover {
                time: ingress::now_ms(),
                decision: ByteBuf::from(decision.clone()),
            };
            match shared.raft.client_write(cmd).await {
                Ok(r) if r.data.first().is_some_and(|o| o.outcome != "ok") => {
                    tracing::error!(outcome = %r.data[0].outcome, "RECOVERY REFUSED: the decision was recorded as rejected; this network takes no writes");
                    return;
                }
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "recovery not committed yet"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The first Raft membership: every genesis node, at its genesis address.
fn genesis_members(
    g: &comity_apps::Genesis,
    me: &Hash,
    cfg: &NodeConfig,
) -> anyhow::Result<BTreeMap<u64, BasicNode>> {
    if g.nodes.get(me).is_none() {
        anyhow::bail!(
            "this node's key {} is not a genesis node; a new node joins with `comity node join`",
            hex::encode(me)
        );
    }
    let mut members = BTreeMap::new();
    for (n, meta) in g.nodes.0.iter().zip(&g.node_meta) {
        let addr = match meta.data.get(comity_apps::genesis::ADDRESS) {
            Some(a) => a.clone(),
            None if g.nodes.0.len() == 1 => cfg.listen.to_string(),
            None => anyhow::bail!("genesis node {} has no address", meta.name),
        };
        members.insert(raft_id(&n.id), BasicNode::new(addr));
    }
    if members.len() != g.nodes.0.len() {
        anyhow::bail!("two genesis nodes have the same Raft id (first 8 bytes of their key hash)");
    }
    Ok(members)
}

async fn propose_genesis(shared: Arc<Shared>, doc: Vec<u8>) {
    loop {
        if shared.view().network_id.is_some() {
            return;
        }
        if shared.is_leader() {
            match shared
                .raft
                .client_write(Command::Genesis {
                    doc: ByteBuf::from(doc.clone()),
                })
                .await
            {
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "genesis not committed yet"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Answers the waiters whose transactions are in the ledger: a snapshot
/// install replays records without an outcome per waiter.
fn answer_from_ledger(shared: &Shared) -> Result<(), comity_store::StoreError> {
    let r = shared.store.read()?;
    for id in shared.pending.ids() {
        if let Some(index) = comity_apps::query::tx_index(&r, &id)? {
            let (_, leaf) = comity_apps::query::record(&shared.store, index)?;
            shared.pending.resolve(
                &id,
                Ok(TxOutcome {
                    id: id.to_vec(),
                    index,
                    outcome: leaf.outcome.code().to_string(),
                    time: leaf.time,
                }),
            );
        }
    }
    Ok(())
}

/// Acts on apply events: answers waiters, signs checkpoints, reports divergence.
async fn events(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Applied(outcomes) => {
                metrics::counter!("comity_tx_applied_total").increment(outcomes.len() as u64);
                let last = outcomes.last().map(|o| o.index).unwrap_or(0);
                for o in outcomes {
                    if let Ok(id) = <Hash>::try_from(o.id.as_slice()) {
                        shared.pending.resolve(&id, Ok(o));
                    }
                }
                shared.applied.send_replace(last);
            }
            Event::CaughtUp => {
                let s = shared.clone();
                let r = tokio::task::spawn_blocking(move || answer_from_ledger(&s)).await;
                if let Err(e) = r
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                {
                    tracing::warn!(error = %e, "answering waiters after a snapshot install");
                }
            }
            Event::Checkpoint(cp) => {
                if !co_sign(&shared, &cp).await {
                    return;
                }
            }
            Event::NodeSetChange { change, before } => {
                tracing::info!(
                    size = change.size,
                    nodes = change.nodes.0.len(),
                    "the trusted node set changed"
                );
                if before.get(&shared.node_identity).is_some() && !endorse(&shared, &change).await {
                    return;
                }
            }
            Event::Divergence(d) if d.quorum => {
                shared.diverged.store(true, Ordering::SeqCst);
                tracing::error!(
                    node = %hex::encode(d.node),
                    seq = d.seq,
                    "DIVERGENCE: nodes of a quorum of members signed checkpoint {} with roots that differ from this node's; this node reports itself unhealthy",
                    d.seq
                );
            }
            Event::Divergence(d) => tracing::error!(
                node = %hex::encode(d.node),
                seq = d.seq,
                "node {} signed checkpoint {} with roots that differ from this node's (no quorum did): that node may be faulty",
                hex::encode(d.node),
                d.seq
            ),
        }
    }
}

/// Signs checkpoint `cp` unless its ledger time is further from this
/// node's clock than the configured bound. False once the node is stopping.
async fn co_sign(shared: &Shared, cp: &checkpoint::Checkpoint) -> bool {
    if !within_clock_bound(shared, cp, ingress::now_ms()) {
        tracing::warn!(
            seq = cp.seq,
            skew_ms = cp.time.abs_diff(ingress::now_ms()),
            "not co-signing checkpoint {}: its ledger time is too far from this node's clock",
            cp.seq
        );
        return true;
    }
    sign_checkpoint(shared, cp).await
}

/// Whether checkpoint `cp`'s ledger time lies within this node's clock
/// bound of `clock_ms`, this node's clock when it first saw `cp`.
fn within_clock_bound(shared: &Shared, cp: &checkpoint::Checkpoint, clock_ms: u64) -> bool {
    cp.time.abs_diff(clock_ms) <= shared.limits.max_clock_skew_ms
}

/// Signs checkpoint `cp`. False once the node is stopping.
async fn sign_checkpoint(shared: &Shared, cp: &checkpoint::Checkpoint) -> bool {
    sign_and_submit(
        shared,
        CHECKPOINT_CONTENT_TYPE,
        "checkpoint",
        &cp.to_cbor(),
        cp.network_id,
        cp.time,
    )
    .await
}

/// Endorses a node-set change. False once the node is stopping.
async fn endorse(shared: &Shared, change: &comity_core::receipt::NodeSetChange) -> bool {
    sign_and_submit(
        shared,
        NODE_SET_CONTENT_TYPE,
        "endorse",
        &change.to_cbor(),
        change.network_id,
        0,
    )
    .await
}

/// Signs `body` as this node (a COSE_Signature with content type `ct`) and
/// submits it as a `node.<op>` transaction. False once the node is stopping.
async fn sign_and_submit(
    shared: &Shared,
    ct: &str,
    op: &str,
    body: &[u8],
    net: Hash,
    not_before: u64,
) -> bool {
    let sig = checkpoint::sign(ct, body, &shared.node_key, &shared.node_identity);
    let payload = TxPayload {
        net,
        app: "node".into(),
        op: op.into(),
        args: comity_apps::node::signature_args(body, &sig),
        nonce: comity_core::crypto::random_nonce().to_vec(),
        created: ingress::now_ms().max(not_before),
    };
    let tx = Tx::sign(&shared.node_key, &shared.node_identity, &payload);
    shared.submit.send((sha256(&tx), tx)).await.is_ok()
}

/// The network identity: the genesis hash and the genesis node set.
pub fn network_identity(
    store: &Store,
) -> anyhow::Result<Option<comity_core::network::NetworkIdentity>> {
    if store.read()?.ledger_len()? == 0 {
        return Ok(None);
    }
    let doc = comity_apps::query::genesis_doc(store)?;
    let g = comity_apps::Genesis::from_cbor(&doc)?;
    Ok(Some(comity_core::network::NetworkIdentity {
        name: g.name.clone(),
        network_id: g.network_id(),
        nodes: g.nodes,
    }))
}
