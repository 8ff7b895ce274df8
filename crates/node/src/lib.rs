//! The Comity node daemon.

pub mod api;
pub mod batcher;
pub mod config;
pub mod error;
pub mod gov_api;
pub mod ingress;
pub mod notary_api;
pub mod server;
pub mod tls;

use comity_apps::Command;
use comity_consensus::log_store::LogStore;
use comity_consensus::network::NoPeers;
use comity_consensus::state_machine::{Event, SharedView, StateMachine};
use comity_consensus::Raft;
use comity_core::checkpoint::{self, CHECKPOINT_CONTENT_TYPE};
use comity_core::crypto::SigningKey;
use comity_core::tx::{Tx, TxPayload};
use comity_core::Hash;
use comity_store::Store;
use config::{Limits, NodeConfig};
use ingress::PendingSet;
use openraft::BasicNode;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// State shared by the API handlers and background tasks.
pub struct Shared {
    pub store: Arc<Store>,
    /// Executor state as of the last apply (network id, config, ledger time).
    pub view: SharedView,
    pub raft: Raft,
    pub node_id: u64,
    node_key: SigningKey,
    /// Identity id of this node (SHA-256 of its key).
    pub node_identity: Hash,
    pub pending: Arc<PendingSet>,
    pub submit: mpsc::Sender<Vec<u8>>,
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
        let key_pem = std::fs::read_to_string(&cfg.node_key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.node_key.display()))?;
        let node_key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.node_key.display()))?;
        let node_identity = node_key.public().fingerprint();
        let t0 = std::time::Instant::now();
        let data = cfg.data_dir.clone();
        let (store, report) = tokio::task::spawn_blocking(move || {
            Store::open(
                &data.join("ledger"),
                comity_store::segments::DEFAULT_ROLL_BYTES,
            )
        })
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
            "ledger verified"
        );
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                while let Some(store) = weak.upgrade() {
                    store.writeback();
                    drop(store);
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
            })?;
        let log = LogStore::open(&cfg.data_dir.join("raft"))?;
        let pending = Arc::new(PendingSet::default());
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let pv = pending.clone();
        let sm = StateMachine::new(
            store.clone(),
            ev_tx,
            Arc::new(move |id: &Hash| pv.take_verified(id)),
        )?;
        let view = sm.view();
        let raft_cfg = Arc::new(comity_consensus::raft_config("comity").validate()?);
        let raft = Raft::new(cfg.id, raft_cfg, NoPeers, log, sm).await?;
        if !raft.is_initialized().await? {
            let mut members = BTreeMap::new();
            members.insert(cfg.id, BasicNode::new(cfg.listen.to_string()));
            raft.initialize(members).await?;
        }
        let (submit, submit_rx) = mpsc::channel(65536);
        let shared = Arc::new(Shared {
            store,
            view,
            raft,
            node_id: cfg.id,
            node_key,
            node_identity,
            pending,
            submit,
            limits: cfg.limits.clone(),
            diverged: AtomicBool::new(false),
            metrics,
            applied: tokio::sync::watch::Sender::new(0),
            started: t0,
        });
        tokio::spawn(batcher::run(shared.clone(), submit_rx));
        tokio::spawn(batcher::checkpoints(shared.clone()));
        tokio::spawn(events(shared.clone(), ev_rx));
        if let Some(g) = cfg
            .genesis
            .as_ref()
            .filter(|_| shared.view().network_id.is_none())
        {
            let doc = std::fs::read(g).map_err(|e| anyhow::anyhow!("{}: {e}", g.display()))?;
            tokio::spawn(propose_genesis(shared.clone(), doc));
        }
        let tls = tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
        let (addr, server) = server::serve(shared.clone(), cfg.listen, tls).await?;
        tracing::info!(%addr, node = %hex::encode(node_identity), "node serving");
        Ok(Node {
            shared,
            addr,
            server,
        })
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
            Event::Checkpoint(cp) => {
                let body = cp.to_cbor();
                let sig = checkpoint::sign(
                    CHECKPOINT_CONTENT_TYPE,
                    &body,
                    &shared.node_key,
                    &shared.node_identity,
                );
                let payload = TxPayload {
                    net: cp.network_id,
                    app: "node".into(),
                    op: "checkpoint".into(),
                    args: comity_apps::node::signature_args(&body, &sig),
                    nonce: comity_core::crypto::random_nonce().to_vec(),
                    created: ingress::now_ms().max(cp.time),
                };
                let tx = Tx::sign(&shared.node_key, &shared.node_identity, &payload);
                if shared.submit.send(tx).await.is_err() {
                    return;
                }
            }
            Event::Divergence { node, seq } => {
                shared.diverged.store(true, Ordering::SeqCst);
                tracing::error!(
                    node = %hex::encode(node),
                    seq,
                    "DIVERGENCE: a node signed checkpoint {seq} with roots that differ from this node's; this node reports itself unhealthy"
                );
            }
        }
    }
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
