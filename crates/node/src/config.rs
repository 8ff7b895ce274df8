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

/// Largest `batch_max_bytes`. A follower receives up to 16 entries in one
/// append request (openraft's `max_payload_entries`), whose body must stay
/// under the peer limit (96 MiB); an entry holds at most this much, or one
/// transaction (at most 4 MiB) when that alone is more.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

impl Limits {
    /// Refuses values the node cannot run with, naming the setting.
    pub fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("batch_max_txs", self.batch_max_txs as u64),
            ("max_inflight_batches", self.max_inflight_batches as u64),
            ("max_pending", self.max_pending as u64),
            ("batch_max_bytes", self.batch_max_bytes as u64),
            ("raft_snapshot_every", self.raft_snapshot_every),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            anyhow::bail!("limits.{name} must be at least 1");
        }
        if self.batch_max_bytes > MAX_BATCH_BYTES {
            anyhow::bail!(
                "limits.batch_max_bytes is at most {MAX_BATCH_BYTES} (a follower must receive 16 entries in one request)"
            );
        }
        Ok(())
    }
}

impl NodeConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.limits
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_node_cannot_run_with_are_refused() {
        assert!(Limits::default().check().is_ok());
        let zero = Limits {
            max_inflight_batches: 0,
            ..Limits::default()
        };
        assert!(zero
            .check()
            .unwrap_err()
            .to_string()
            .contains("max_inflight_batches"));
        let big = Limits {
            batch_max_bytes: MAX_BATCH_BYTES + 1,
            ..Limits::default()
        };
        assert!(big
            .check()
            .unwrap_err()
            .to_string()
            .contains("batch_max_bytes"));
    }
}
