//! Response shapes of the node HTTP API (docs/api.md).

use crate::hexser::{hex32, hexlist, hexopt, hexvec, hexveclist};
use comity_core::checkpoint::Checkpoint;
use comity_core::Hash;
use serde::{Deserialize, Serialize};

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    /// Committed and applied; `outcome` is `ok`.
    Committed,
    /// Recorded in the ledger but rejected by the application; `outcome` is the error code.
    Rejected,
    /// Accepted, not yet committed.
    Pending,
    /// Never seen by this node (or a state this SDK does not know).
    #[serde(other)]
    Unknown,
}

impl TxState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Committed => "committed",
            TxState::Rejected => "rejected",
            TxState::Pending => "pending",
            TxState::Unknown => "unknown",
        }
    }

    /// Committed or rejected: it has a ledger position and will not change.
    pub fn is_final(self) -> bool {
        matches!(self, TxState::Committed | TxState::Rejected)
    }
}

impl std::fmt::Display for TxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/tx` and `GET /v1/tx/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxStatus {
    #[serde(with = "hex32")]
    pub id: Hash,
    pub status: TxState,
    /// Ledger position, once committed or rejected.
    #[serde(default)]
    pub index: Option<u64>,
    /// `ok` or the rejection code.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Ledger time (ms since the Unix epoch) of the entry.
    #[serde(default)]
    pub ledger_time: Option<u64>,
}

/// `GET /v1/checkpoint`: the latest final checkpoint with its signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    #[serde(with = "hex32")]
    pub network_id: Hash,
    pub seq: u64,
    pub size: u64,
    #[serde(with = "hex32")]
    pub tx_root: Hash,
    #[serde(with = "hex32")]
    pub state_root: Hash,
    pub time: u64,
    pub version: u64,
    /// Node ids whose signatures are in `signed`.
    #[serde(default, with = "hexlist")]
    pub signers: Vec<Hash>,
    /// COSE_Sign with the checkpoint as payload and the node signatures.
    #[serde(with = "hexvec")]
    pub signed: Vec<u8>,
    /// Node-set changes since genesis up to this size (COSE_Sign each,
    /// endorsed by the set before): what makes `signers` checkable.
    #[serde(default, with = "hexveclist")]
    pub chain: Vec<Vec<u8>>,
}

impl CheckpointInfo {
    /// The checkpoint body the JSON fields describe.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            network_id: self.network_id,
            seq: self.seq,
            size: self.size,
            tx_root: self.tx_root,
            state_root: self.state_root,
            time: self.time,
            version: self.version,
        }
    }
}

/// `GET /v1/proof/consistency`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    #[serde(with = "hex32")]
    pub from_root: Hash,
    #[serde(with = "hex32")]
    pub to_root: Hash,
    #[serde(with = "hexlist")]
    pub proof: Vec<Hash>,
}

/// `GET /v1/ledger/size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSize {
    pub size: u64,
    #[serde(with = "hex32")]
    pub tx_root: Hash,
}

/// `GET /v1/kv/{key}`: a read proved against a final checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRead {
    /// The identity whose key space was read.
    #[serde(with = "hex32")]
    pub owner: Hash,
    pub key: String,
    /// Value at the checkpoint, `None` when absent there (non-inclusion proof).
    #[serde(rename = "value_hex", with = "hexopt")]
    pub value: Option<Vec<u8>>,
    pub checkpoint: CheckpointInfo,
    /// The state-tree key the proof is about, as the node reports it (the
    /// verifier should derive it itself, e.g. with `comity_apps::keys::kv`
    /// from the owner and key it asked for).
    #[serde(rename = "state_key_hex", default, with = "hexopt")]
    pub state_key: Option<Vec<u8>>,
    /// Borsh-encoded `jmt::proof::SparseMerkleProof` against `checkpoint.state_root`
    /// (check with `comity_core::state::verify` or [`crate::verify::verify_kv_read`]).
    #[serde(with = "hexvec")]
    pub state_proof: Vec<u8>,
    /// Value after the newest applied entry (unproved, may be newer).
    #[serde(rename = "latest_value_hex", default, with = "hexopt")]
    pub latest_value: Option<Vec<u8>>,
}

/// One version of a key in `GET /v1/kv/{key}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvVersion {
    pub index: u64,
    #[serde(with = "hex32")]
    pub tx: Hash,
    /// `put` or `delete`.
    #[serde(default)]
    pub op: Option<String>,
    pub time: u64,
    /// `None` for a deletion.
    #[serde(rename = "value_hex", with = "hexopt")]
    pub value: Option<Vec<u8>>,
}

/// A page of `GET /v1/kv/{key}/history`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvHistory {
    /// The identity whose key space was read.
    #[serde(with = "hex32")]
    pub owner: Hash,
    pub key: String,
    pub versions: Vec<KvVersion>,
    /// Where the next page starts (its `after`); `None` on the last page.
    #[serde(default)]
    pub next: Option<u64>,
}

/// `GET /v1/health`. Fields beyond `status` are optional so older or starting
/// nodes still parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default)]
    pub leader: Option<u64>,
    #[serde(default)]
    pub commit_index: Option<u64>,
    #[serde(default)]
    pub applied_index: Option<u64>,
    #[serde(default)]
    pub ledger_size: Option<u64>,
    #[serde(default)]
    pub ledger_time: Option<u64>,
    /// Tree size of the latest final checkpoint: receipts exist below it.
    #[serde(default)]
    pub final_size: Option<u64>,
    /// Ledger time of the latest final checkpoint (ms).
    #[serde(default)]
    pub final_time: Option<u64>,
    /// Nodes that asked to join and wait for a vote.
    #[serde(default)]
    pub join_requests: Option<u64>,
    #[serde(default)]
    pub node_id: Option<u64>,
    #[serde(default)]
    pub node_identity: Option<String>,
    #[serde(default)]
    pub last_log_index: Option<u64>,
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// Conflicting checkpoint signatures this node keeps (up to 1000; see `GET /v1/evidence`).
    #[serde(default)]
    pub evidence: Option<u64>,
    /// On the leader: each follower's replication, by Raft id.
    #[serde(default)]
    pub followers: std::collections::BTreeMap<String, FollowerLag>,
    /// The Raft group as this node knows it.
    #[serde(default)]
    pub members: Vec<RaftMember>,
}

/// A node of the Raft group: a voter, or a learner still catching up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    pub id: u64,
    pub address: String,
    pub voter: bool,
}

/// How far a follower's log is behind the leader's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerLag {
    pub matched_index: Option<u64>,
    pub lag: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_shapes() {
        let id = "ab".repeat(32);
        let s: TxStatus = serde_json::from_str(&format!(
            r#"{{"id":"{id}","status":"committed","index":1234,"outcome":"ok","ledger_time":1763712000123}}"#
        ))
        .unwrap();
        assert_eq!(s.status, TxState::Committed);
        assert_eq!(s.index, Some(1234));
        let s: TxStatus =
            serde_json::from_str(&format!(r#"{{"id":"{id}","status":"weird"}}"#)).unwrap();
        assert_eq!(s.status, TxState::Unknown);
        assert_eq!(s.index, None);

        let cp = format!(
            r#"{{"network_id":"{id}","seq":7,"size":1201,"tx_root":"{id}","state_root":"{id}",
            "time":1,"version":1,"signers":["{id}"],"signed":"d862"}}"#
        );
        let c: CheckpointInfo = serde_json::from_str(&cp).unwrap();
        assert_eq!(c.signers, vec![[0xab; 32]]);
        assert_eq!(c.signed, vec![0xd8, 0x62]);
        let kv: KvRead = serde_json::from_str(&format!(
            r#"{{"owner":"{id}","key":"k","value_hex":null,"checkpoint":{cp},"state_proof":"00","latest_value_hex":"6869"}}"#
        ))
        .unwrap();
        assert_eq!(kv.value, None);
        assert_eq!(kv.latest_value.as_deref(), Some(&b"hi"[..]));
        let h: KvHistory = serde_json::from_str(&format!(
            r#"{{"owner":"{id}","key":"k","versions":[{{"index":12,"tx":"{id}","time":5,"value_hex":"00"}},{{"index":13,"tx":"{id}","time":6,"value_hex":null}}]}}"#
        ))
        .unwrap();
        assert_eq!(h.versions[1].value, None);
        let health: Health = serde_json::from_str(
            r#"{"status":"ok","role":"leader","term":1,"leader":1,"commit_index":123,"applied_index":123,"ledger_size":456,"ledger_time":9}"#,
        )
        .unwrap();
        assert_eq!(health.ledger_size, Some(456));
    }
}

/// `GET /v1/network/nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedNodes {
    #[serde(with = "hex32")]
    pub network_id: Hash,
    pub nodes: comity_core::network::NodeSet,
}
