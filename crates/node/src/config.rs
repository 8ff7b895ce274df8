//! Node configuration (TOML).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// HTTPS address for clients and peers. Its Raft id comes from the node key.
    pub listen: SocketAddr,
    /// Data directory: Raft log, ledger, tree, state.
    pub data_dir: PathBuf,
    /// PKCS#8 PEM key this node signs checkpoints with (its identity).
    pub node_key: PathBuf,
    /// TLS certificate chain (PEM) and its key (PEM), served to clients and
    /// presented to peers. The certificate must be for the node key: peers
    /// recognise each other by it.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Genesis document (CBOR); required the first time a network starts.
    pub genesis: Option<PathBuf>,
    /// A members' signed recovery decision (`comity recovery`): this node is
    /// one of the new node set restarting the network from a surviving copy.
    #[serde(default)]
    pub recovery: Option<PathBuf>,
    /// Local address for connections to peers (on multi-homed hosts).
    #[serde(default)]
    pub peer_bind: Option<std::net::IpAddr>,
    #[serde(default)]
    pub limits: Limits,
}

/// Node-local limits (the ledger-wide ones live in the genesis config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most transactions in one Raft entry.
    pub batch_max_txs: usize,
    /// Raft writes in flight at once.
    pub max_inflight_batches: usize,
    /// Requests waiting for commit before new ones get 503.
    pub max_pending: usize,
    /// How long a submission waits for its commit before answering `pending`.
    pub commit_wait_ms: u64,
    /// Largest Raft entry, in bytes of transactions.
    pub batch_max_bytes: usize,
    /// This node refuses to co-sign a checkpoint whose ledger time is further
    /// than this from its own clock.
    pub max_clock_skew_ms: u64,
    /// Raft log entries between snapshots (durable points); the log keeps as
    /// many entries before the latest one. A follower further behind
    /// catches up by snapshot: it fetches and replays the ledger records it lacks.
    pub raft_snapshot_every: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_max_txs: 2048,
            max_inflight_batches: 2,
            max_pending: 50_000,
            commit_wait_ms: 30_000,
            batch_max_bytes: 4 << 20,
            max_clock_skew_ms: 30_000,
            raft_snapshot_every: 8192,
        }
    }
}

impl NodeConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}
