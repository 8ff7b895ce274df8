//! Node configuration (TOML).

use comity_store::StoreOptions;
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
    /// Their bytes, in MiB: large transactions fill memory before the count.
    pub max_pending_mib: usize,
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
    /// The state database's block cache, in MiB.
    pub state_cache_mib: u64,
    /// The state tree's node cache, in MiB. A write reads the tree leaf it
    /// replaces; once the leaves outgrow this, those reads go to the database.
    pub tree_cache_mib: u64,
    /// Client and peer connections open at once; fewer if the open-file
    /// limit leaves less (see `fd_budget`). Past it, new ones are closed.
    pub max_connections: usize,
    /// Connections open at once from one IP address (IPv6: one /64).
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_max_txs: 2048,
            max_inflight_batches: 2,
            max_pending: 50_000,
            max_pending_mib: 512,
            commit_wait_ms: 30_000,
            batch_max_bytes: 4 << 20,
            max_clock_skew_ms: 30_000,
            raft_snapshot_every: 8192,
            state_cache_mib: StoreOptions::default().block_cache_bytes >> 20,
            tree_cache_mib: StoreOptions::default().node_cache_bytes >> 20,
            max_connections: 4096,
            max_connections_per_ip: 1024,
        }
    }
}

/// Largest `batch_max_bytes`. A follower receives up to 16 entries in one
/// append request (openraft's `max_payload_entries`), whose body must stay
/// under the peer limit (96 MiB); an entry holds at most this much, or one
/// transaction (at most 4 MiB) when that alone is more.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Smallest cache a node accepts: a smaller one only makes it slower.
pub const MIN_CACHE_MIB: u64 = 8;
/// Largest cache (1 TiB): a bound against typos, not a recommendation.
pub const MAX_CACHE_MIB: u64 = 1 << 20;

impl Limits {
    /// Refuses values the node cannot run with, naming the setting. The
    /// upper bounds are against typos (a huge value would overflow a size
    /// or wait forever), not recommendations.
    pub fn check(&self) -> anyhow::Result<()> {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        let n = |v: usize| v as u64;
        let ranges = [
            // Followers refuse entries of more.
            (
                "batch_max_txs",
                n(self.batch_max_txs),
                1,
                n(comity_apps::command::MAX_ENTRY_TXS),
            ),
            (
                "max_inflight_batches",
                n(self.max_inflight_batches),
                1,
                1024,
            ),
            ("max_pending", n(self.max_pending), 1, 1 << 30),
            // At least the largest transaction.
            ("max_pending_mib", n(self.max_pending_mib), 4, MAX_CACHE_MIB),
            // A follower must receive 16 entries in one request.
            (
                "batch_max_bytes",
                n(self.batch_max_bytes),
                1,
                n(MAX_BATCH_BYTES),
            ),
            ("raft_snapshot_every", self.raft_snapshot_every, 1, 1 << 32),
            ("max_connections", n(self.max_connections), 1, 1 << 24),
            (
                "max_connections_per_ip",
                n(self.max_connections_per_ip),
                1,
                1 << 24,
            ),
            // Zero would answer every submission `pending`, or refuse to
            // co-sign nearly every checkpoint.
            ("commit_wait_ms", self.commit_wait_ms, 1, DAY_MS),
            ("max_clock_skew_ms", self.max_clock_skew_ms, 1, DAY_MS),
            (
                "state_cache_mib",
                self.state_cache_mib,
                MIN_CACHE_MIB,
                MAX_CACHE_MIB,
            ),
            (
                "tree_cache_mib",
                self.tree_cache_mib,
                MIN_CACHE_MIB,
                MAX_CACHE_MIB,
            ),
        ];
        match ranges.iter().find(|(_, v, lo, hi)| !(lo..=hi).contains(&v)) {
            Some((name, v, lo, hi)) => {
                anyhow::bail!("limits.{name} must be between {lo} and {hi}; it is {v}")
            }
            None => Ok(()),
        }
    }

    /// The store's sizes these limits set.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            block_cache_bytes: self.state_cache_mib << 20,
            node_cache_bytes: self.tree_cache_mib << 20,
            ..StoreOptions::default()
        }
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
        let d = Limits::default;
        for (name, bad) in [
            (
                "max_inflight_batches",
                Limits {
                    max_inflight_batches: 0,
                    ..d()
                },
            ),
            (
                "max_clock_skew_ms",
                Limits {
                    max_clock_skew_ms: 0,
                    ..d()
                },
            ),
            (
                "batch_max_bytes",
                Limits {
                    batch_max_bytes: MAX_BATCH_BYTES + 1,
                    ..d()
                },
            ),
            (
                "max_pending_mib",
                Limits {
                    max_pending_mib: 3,
                    ..d()
                },
            ),
            (
                "max_pending_mib",
                Limits {
                    max_pending_mib: 1 << 44,
                    ..d()
                },
            ),
            (
                "commit_wait_ms",
                Limits {
                    commit_wait_ms: u64::MAX,
                    ..d()
                },
            ),
            (
                "max_inflight_batches",
                Limits {
                    max_inflight_batches: usize::MAX,
                    ..d()
                },
            ),
        ] {
            assert!(
                bad.check().unwrap_err().to_string().contains(name),
                "{name}"
            );
        }
        for (name, small, large) in [
            (
                "state_cache_mib",
                Limits {
                    state_cache_mib: MIN_CACHE_MIB - 1,
                    ..Limits::default()
                },
                Limits {
                    state_cache_mib: MAX_CACHE_MIB + 1,
                    ..Limits::default()
                },
            ),
            (
                "tree_cache_mib",
                Limits {
                    tree_cache_mib: 0,
                    ..Limits::default()
                },
                Limits {
                    tree_cache_mib: u64::MAX,
                    ..Limits::default()
                },
            ),
        ] {
            for l in [small, large] {
                assert!(l.check().unwrap_err().to_string().contains(name));
            }
        }
    }

    #[test]
    fn cache_limits_reach_the_store_in_bytes() {
        let l: Limits = toml::from_str("state_cache_mib = 1024\ntree_cache_mib = 64").unwrap();
        assert!(l.check().is_ok());
        let o = l.store_options();
        assert_eq!(o.block_cache_bytes, 1 << 30);
        assert_eq!(o.node_cache_bytes, 64 << 20);
        assert_eq!(o.roll_bytes, StoreOptions::default().roll_bytes);
        // Unset, they are the store's defaults.
        let d = Limits::default().store_options();
        assert_eq!(d, StoreOptions::default());
    }
}
