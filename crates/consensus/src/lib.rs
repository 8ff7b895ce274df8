//! Comity's consensus layer: openraft with the Raft log as the write-ahead
//! log and the executor as the state machine.

// openraft's storage traits fix `StorageError` as the error type; it is large by design.
#![allow(clippy::result_large_err)]

mod crc_span;
pub mod log_store;
pub mod network;
pub mod state_machine;

use comity_apps::Command;
use openraft::{BasicNode, StorageError};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// What applying a client batch reports back, per transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOutcome {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    pub index: u64,
    /// `ok` or the rejection code.
    pub outcome: String,
    pub time: u64,
}

openraft::declare_raft_types!(
    /// Comity's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Vec<TxOutcome>,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;

pub(crate) fn storage_io(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

/// Raft settings for Comity: elections within a few seconds, snapshots
/// (durable state-machine points) every `snapshot_every` entries so the log
/// stays short.
pub fn raft_config(cluster: &str, snapshot_every: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_string(),
        // openraft also uses the heartbeat interval as the timeout of every
        // AppendEntries call, so it must exceed a loaded follower's answer
        // time (a busy machine, a slow fsync), not only a LAN's round trip;
        // a call that times out is retried at once (see `network::PeerError`).
        heartbeat_interval: 200,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // Entries are batches of up to a few MiB: bound what one RPC carries.
        max_payload_entries: 16,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Followers a little behind catch up from the log; further behind, by snapshot.
        max_in_snapshot_log_to_keep: snapshot_every,
        // Installing a snapshot replays the ledger records the follower lacks.
        install_snapshot_timeout: 600_000,
        purge_batch_size: (snapshot_every / 4).clamp(1, 256),
        ..Default::default()
    }
}
