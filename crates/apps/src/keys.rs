//! Key layout of the state (in the state root) and aux (derived) tables.

use comity_core::Hash;

// State (committed to by the state root).
pub const NETWORK: &[u8] = b"net";
pub const CONFIG: &[u8] = b"cfg";
pub const NODES: &[u8] = b"nodes";

pub fn identity(id: &Hash) -> Vec<u8> {
    [b"id/".as_slice(), id].concat()
}

/// A kv key of `owner`: each identity writes and reads a key space of its own.
pub fn kv(owner: &Hash, key: &str) -> Vec<u8> {
    [b"kv/".as_slice(), owner, key.as_bytes()].concat()
}

// Aux (derived from the ledger, rebuilt by replay).
pub const EXEC: &[u8] = b"exec";

pub fn tx(id: &Hash) -> Vec<u8> {
    [b"tx/".as_slice(), id].concat()
}

pub fn nonce(signer: &Hash, nonce: &[u8]) -> Vec<u8> {
    [b"nonce/".as_slice(), signer, nonce].concat()
}

pub const NONCE_TIME_PREFIX: &[u8] = b"nt/";

/// Nonces ordered by creation time, for deterministic pruning.
pub fn nonce_time(created: u64, signer: &Hash, nonce: &[u8]) -> Vec<u8> {
    [NONCE_TIME_PREFIX, &created.to_be_bytes(), signer, nonce].concat()
}

fn kv_history_prefix(owner: &Hash, key: &str) -> Vec<u8> {
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    [
        b"kvh/".as_slice(),
        owner,
        &len.to_be_bytes(),
        key.as_bytes(),
    ]
    .concat()
}

pub fn kv_history(owner: &Hash, key: &str, index: u64) -> Vec<u8> {
    [kv_history_prefix(owner, key), index.to_be_bytes().to_vec()].concat()
}

/// Range bounds of one of `owner`'s keys' history from ledger index `from` on.
pub fn kv_history_range(owner: &Hash, key: &str, from: u64) -> (Vec<u8>, Vec<u8>) {
    let p = kv_history_prefix(owner, key);
    (
        [p.clone(), from.to_be_bytes().to_vec()].concat(),
        [p, vec![0xff; 9]].concat(),
    )
}

pub fn checkpoint(seq: u64) -> Vec<u8> {
    [b"cp/".as_slice(), &seq.to_be_bytes()].concat()
}

pub const CHECKPOINT_SIZE_PREFIX: &[u8] = b"cps/";

pub fn checkpoint_by_size(size: u64) -> Vec<u8> {
    [CHECKPOINT_SIZE_PREFIX, &size.to_be_bytes()].concat()
}

pub fn signature(seq: u64, node: &Hash) -> Vec<u8> {
    [b"sig/".as_slice(), &seq.to_be_bytes(), node].concat()
}

pub fn signature_range(seq: u64) -> (Vec<u8>, Vec<u8>) {
    (
        signature(seq, &[0; 32]),
        signature(seq, &[0xff; 32])
            .into_iter()
            .chain([0xff])
            .collect(),
    )
}

pub fn final_checkpoint(seq: u64) -> Vec<u8> {
    [b"fin/".as_slice(), &seq.to_be_bytes()].concat()
}

pub const LATEST_FINAL: &[u8] = b"fin_latest";

/// Set once nodes of a quorum of members signed roots this node did not compute.
pub const DIVERGED: &[u8] = b"diverged";

pub const PENDING_CHECKPOINT_PREFIX: &[u8] = b"cpp/";

/// A checkpoint marker applied whose state root is not computed yet.
pub fn pending_checkpoint(seq: u64) -> Vec<u8> {
    [PENDING_CHECKPOINT_PREFIX, &seq.to_be_bytes()].concat()
}

pub const NODE_SET_CHANGE_PREFIX: &[u8] = b"nsc/";

/// The node set that signs from tree size `size` on (a NodeSetChange body); genesis at 0.
pub fn node_set_change(size: u64) -> Vec<u8> {
    [NODE_SET_CHANGE_PREFIX, &size.to_be_bytes()].concat()
}

/// The signed recovery decision that made the node-set change at `size`.
pub fn recovery(size: u64) -> Vec<u8> {
    [b"nsr/".as_slice(), &size.to_be_bytes()].concat()
}

/// A node's endorsement (COSE_Signature) of the node-set change at `size`.
pub fn endorsement(size: u64, node: &Hash) -> Vec<u8> {
    [b"nse/".as_slice(), &size.to_be_bytes(), node].concat()
}

pub fn endorsement_range(size: u64) -> (Vec<u8>, Vec<u8>) {
    (endorsement(size, &[0; 32]), endorsement(size, &[0xff; 32]))
}

pub const EVIDENCE_PREFIX: &[u8] = b"evidence/";

pub fn evidence(node: &Hash, seq: u64) -> Vec<u8> {
    [EVIDENCE_PREFIX, node, &seq.to_be_bytes()].concat()
}

/// Just past every evidence key: the prefix with its last byte raised.
pub fn evidence_end() -> Vec<u8> {
    let mut end = EVIDENCE_PREFIX.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

// Governance state (committed to by the state root).
pub const GOV_MEMBERS: &[u8] = b"gov/members";
pub const GOV_CONSTITUTION_VERSION: &[u8] = b"gov/cv";
pub const GOV_PROTOCOL: &[u8] = b"gov/protocol";
pub const GOV_OPEN: &[u8] = b"gov/open";
/// How many nodes asked to join and wait for a vote (see `join`).
pub const PENDING_NODES: &[u8] = b"gov/pending_nodes";

pub fn constitution(version: u64) -> Vec<u8> {
    [b"gov/c/".as_slice(), &version.to_be_bytes()].concat()
}

pub fn proposal(id: &Hash) -> Vec<u8> {
    [b"gov/p/".as_slice(), id].concat()
}

pub const PROPOSAL_EXPIRY_PREFIX: &[u8] = b"gov/exp/";

/// Open proposals ordered by expiry time, for deterministic expiry.
pub fn proposal_expiry(expires: u64, id: &Hash) -> Vec<u8> {
    [PROPOSAL_EXPIRY_PREFIX, &expires.to_be_bytes(), id].concat()
}

/// Which identity a key (by SHA-256 of its SPKI) belongs to; keys are never reused.
pub fn key_owner(fingerprint: &Hash) -> Vec<u8> {
    [b"idk/".as_slice(), fingerprint].concat()
}

// Governance indexes (aux).
pub const PROPOSAL_LIST_PREFIX: &[u8] = b"gpl/";

/// Proposals in ledger order.
pub fn proposal_list(index: u64, id: &Hash) -> Vec<u8> {
    [PROPOSAL_LIST_PREFIX, &index.to_be_bytes(), id].concat()
}

/// Ledger positions that changed a governed subject (identity, proposal, ...).
pub fn history(subject: &Hash, index: u64) -> Vec<u8> {
    [b"hist/".as_slice(), subject, &index.to_be_bytes()].concat()
}

/// Range bounds of `subject`'s history from ledger index `from` on.
pub fn history_range(subject: &Hash, from: u64) -> (Vec<u8>, Vec<u8>) {
    (history(subject, from), history(subject, u64::MAX))
}

// Notary state (committed to by the state root, so records and events are
// provable). The namespaces are two bytes so that a key's first four bytes,
// which the database's memtable compares in place before it reads the rest
// from elsewhere in memory, mostly tell two random ids apart: a lookup of a
// digest not yet registered (every registration makes one) costs about a
// third less than under a five-byte namespace.

/// The current record of a document, by id (derived from its digest, see
/// `notary::document::id_of`, so a lookup by digest is proved by the record's proof).
pub fn notary_doc(id: &Hash) -> Vec<u8> {
    [b"d/".as_slice(), id].concat()
}

/// Event `seq` (from 0) of a document's or collection's hash chain (aux).
pub fn notary_event(subject: &Hash, seq: u64) -> Vec<u8> {
    [b"e/".as_slice(), subject, &seq.to_be_bytes()].concat()
}

/// Range bounds of one subject's events, in order.
pub fn notary_event_range(subject: &Hash) -> (Vec<u8>, Vec<u8>) {
    (
        notary_event(subject, 0),
        [notary_event(subject, u64::MAX), vec![0]].concat(),
    )
}

pub fn notary_collection(id: &Hash) -> Vec<u8> {
    [b"c/".as_slice(), id].concat()
}

// Notary indexes (aux, rebuilt by replay). Each index key ends in
// `ledger index of registration (8 bytes BE) ‖ document id`, so a scan
// returns documents in registration order.

pub const NOTARY_PARTY_PREFIX: &[u8] = b"nx/p/";
pub const NOTARY_MATTER_PREFIX: &[u8] = b"nx/m/";
pub const NOTARY_STATUS_PREFIX: &[u8] = b"nx/s/";
/// By registration ledger time: `time (8 bytes BE) ‖ index ‖ id`.
pub const NOTARY_TIME_PREFIX: &[u8] = b"nx/t/";

/// `prefix ‖ sort ‖ index ‖ id`: one entry of a notary index.
pub fn notary_index(prefix: &[u8], sort: &[u8], index: u64, id: &Hash) -> Vec<u8> {
    [prefix, sort, &index.to_be_bytes(), id].concat()
}

/// Node-local personal data of a document: not in the ledger or the state
/// root (only its digest is), so erasing it breaks no proof.
pub fn notary_personal(id: &Hash) -> Vec<u8> {
    [b"nb/".as_slice(), id].concat()
}
