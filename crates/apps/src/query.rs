//! Read-side queries: transaction status, receipts, checkpoints, proved reads.

use crate::registry::AuxRead;
use crate::{keys, node};
use comity_core::checkpoint::{self, Checkpoint};
use comity_core::entry::{EntryKind, Leaf, Record};
use comity_core::receipt::Receipt;
use comity_core::tx::Tx;
use comity_core::Hash;
use comity_store::{Reader, Store, StoreError};

fn be_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// Index entries one listing request reads at most: a filtered listing
/// ends its page early, with a cursor, rather than reading a whole index
/// for its matches.
pub const MAX_SCAN: usize = 4096;

/// Reads an index in key order, `read` giving the next entries from a start
/// key, and keeps what `keep` makes of each entry, until `limit` items or
/// [`MAX_SCAN`] entries. Returns the items and, unless the index was read
/// to its end, where the next page starts after: the last item's key for a
/// full page, else the last key read.
///
/// A full page has a next page only if `keep` would keep another entry,
/// or the scan's budget ran out first: a cursor present whenever any
/// entry followed would tell the caller of entries it may not read.
pub fn scan<T>(
    mut read: impl FnMut(&[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>,
    mut start: Vec<u8>,
    limit: usize,
    mut keep: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
) -> Result<(Vec<T>, Option<Vec<u8>>), StoreError> {
    let mut items = Vec::new();
    let mut scanned = 0;
    // Once the page is full: the key of its last item.
    let mut full: Option<Vec<u8>> = None;
    loop {
        let entries = read(&start)?;
        let Some((last, _)) = entries.last() else {
            return Ok((items, None));
        };
        for (k, v) in &entries {
            if let Some(item) = keep(k, v)? {
                if full.is_some() {
                    return Ok((items, full));
                }
                items.push(item);
                if items.len() >= limit {
                    full = Some(k.clone());
                }
            }
        }
        scanned += entries.len();
        if scanned >= MAX_SCAN {
            return Ok((items, Some(full.unwrap_or_else(|| last.clone()))));
        }
        start = [last.as_slice(), &[0]].concat();
    }
}

/// Ledger index of a committed transaction.
pub fn tx_index(r: &Reader<'_>, id: &Hash) -> Result<Option<u64>, StoreError> {
    Ok(r.aux_get(&keys::tx(id))?.as_deref().and_then(be_u64))
}

/// The record at `index`, decoded.
pub fn record(store: &Store, index: u64) -> Result<(Record, Leaf), StoreError> {
    decode_record(&store.record(index)?, index)
}

fn decode_record(raw: &[u8], index: u64) -> Result<(Record, Leaf), StoreError> {
    let bad = |e: comity_core::cbor::CborError| StoreError::BadRecord {
        index,
        message: e.to_string(),
    };
    let rec = Record::from_cbor(raw).map_err(bad)?;
    let leaf = Leaf::from_cbor(&rec.leaf).map_err(bad)?;
    Ok((rec, leaf))
}

/// Whether a user (not a member) may see record `rec`'s transaction.
/// Members audit the whole ledger; a user sees every entry except another
/// identity's notary and kv transactions: a document's parties read it
/// through the notary API (`Document::may_read`), and a kv key is its
/// writer's own. An entry whose body does not parse as a transaction is
/// withheld too.
pub fn user_may_read(rec: &Record, leaf: &Leaf, user: &Hash) -> bool {
    if leaf.kind != EntryKind::Tx || leaf.signer.as_ref().is_some_and(|(s, _)| s == user) {
        return true;
    }
    Tx::parse(&rec.body).is_ok_and(|tx| !matches!(tx.payload.app.as_str(), "notary" | "kv"))
}

/// Raw record `raw` at `index` as user `user` may see it: whole, or with
/// its transaction withheld (an empty body; the leaf's digest still commits
/// to it) where [`user_may_read`] says no.
pub fn user_view(raw: Vec<u8>, index: u64, user: &Hash) -> Result<Vec<u8>, StoreError> {
    let (rec, leaf) = decode_record(&raw, index)?;
    if user_may_read(&rec, &leaf, user) {
        return Ok(raw);
    }
    Ok(Record {
        leaf: rec.leaf,
        body: Vec::new(),
    }
    .to_cbor())
}

/// A checkpoint with the signatures that make it final.
pub struct SignedCheckpoint {
    pub body: Vec<u8>,
    pub checkpoint: Checkpoint,
    pub signatures: Vec<Vec<u8>>,
    pub signers: Vec<Hash>,
    /// Node-set changes up to its size, endorsed; `None` until every change is.
    pub chain: Option<Vec<Vec<u8>>>,
}

pub fn signed_checkpoint(r: &Reader<'_>, seq: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
    let Some(body) = r.aux_get(&keys::checkpoint(seq))? else {
        return Ok(None);
    };
    let checkpoint =
        Checkpoint::from_cbor(&body).map_err(|e| StoreError::StateTree(e.to_string()))?;
    let (from, to) = keys::signature_range(seq);
    let mut signatures = Vec::new();
    let mut signers = Vec::new();
    for (k, v) in r.aux_range(&from, &to, 1024)? {
        if node::stored_body(&v).as_deref() == Some(body.as_slice()) {
            if let Some(sig) = node::stored_sig(&v) {
                signatures.push(sig);
                signers.push(k[k.len() - 32..].try_into().expect("32-byte suffix"));
            }
        }
    }
    let chain = crate::node_set::chain(r, checkpoint.size)?;
    Ok(Some(SignedCheckpoint {
        body,
        checkpoint,
        signatures,
        signers,
        chain,
    }))
}

/// Two checkpoint signatures by one node for one sequence number over
/// different bodies: proof that the node misbehaved, which anyone can check
/// offline with the node's public key.
pub struct Evidence {
    pub node: Hash,
    pub seq: u64,
    /// The signature recorded first and the conflicting one, each as
    /// (checkpoint body, COSE_Signature).
    pub signatures: [(Vec<u8>, Vec<u8>); 2],
}

/// Evidence of misbehaviour kept by this node, by node id then sequence
/// number, starting after `after` (a node id and sequence number), at most `limit`.
pub fn evidence(
    r: &Reader<'_>,
    after: Option<(Hash, u64)>,
    limit: usize,
) -> Result<Vec<Evidence>, StoreError> {
    // Keys have one width, so the smallest key after one is that key and a 0.
    let from = match after {
        Some((node, seq)) => [keys::evidence(&node, seq), vec![0]].concat(),
        None => keys::EVIDENCE_PREFIX.to_vec(),
    };
    let bad =
        |k: &[u8]| StoreError::StateTree(format!("malformed evidence record {}", hex::encode(k)));
    let mut out = Vec::new();
    for (k, v) in r.aux_range(&from, &keys::evidence_end(), limit)? {
        let rest = &k[keys::EVIDENCE_PREFIX.len()..];
        let (Some(node), Some(seq)) = (
            rest.get(..32).and_then(|n| <Hash>::try_from(n).ok()),
            rest.get(32..).and_then(be_u64),
        ) else {
            return Err(bad(&k));
        };
        let pair = match comity_core::cbor::from_slice(&v) {
            Ok(comity_core::cbor::Value::Array(items)) if items.len() == 2 => items,
            _ => return Err(bad(&k)),
        };
        let signatures = pair
            .into_iter()
            .map(|item| {
                let stored = item.into_bytes().ok()?;
                Some((node::stored_body(&stored)?, node::stored_sig(&stored)?))
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(&k))?;
        out.push(Evidence {
            node,
            seq,
            signatures,
        });
    }
    Ok(out)
}

/// How many evidence records this node keeps, counting at most `cap`.
pub fn evidence_count(r: &Reader<'_>, cap: usize) -> Result<usize, StoreError> {
    Ok(
        r.aux_range(keys::EVIDENCE_PREFIX, &keys::evidence_end(), cap)?
            .len(),
    )
}

pub fn is_final(r: &Reader<'_>, seq: u64) -> Result<bool, StoreError> {
    Ok(r.aux_get(&keys::final_checkpoint(seq))?.is_some())
}

/// The sequence number of the latest final checkpoint. It only grows, and a
/// newly covered position always comes with a new one, so a receipt waiter
/// need only look again when it changes. State proofs are only made at it,
/// so the state tree prunes what it replaced.
pub fn latest_final_seq(r: &impl AuxRead) -> Result<Option<u64>, StoreError> {
    Ok(r.aux_get_one(keys::LATEST_FINAL)?
        .as_deref()
        .and_then(be_u64))
}

pub fn latest_final(r: &Reader<'_>) -> Result<Option<SignedCheckpoint>, StoreError> {
    match latest_final_seq(r)? {
        Some(seq) => signed_checkpoint(r, seq),
        None => Ok(None),
    }
}

/// The latest final checkpoint's body alone, for monitoring: without the
/// signatures and node-set chain a receipt needs.
pub fn latest_final_checkpoint(r: &impl AuxRead) -> Result<Option<Checkpoint>, StoreError> {
    let Some(seq) = latest_final_seq(r)? else {
        return Ok(None);
    };
    r.aux_get_one(&keys::checkpoint(seq))?
        .map(|body| Checkpoint::from_cbor(&body).map_err(|e| StoreError::StateTree(e.to_string())))
        .transpose()
}

/// The first final checkpoint covering ledger index `index`, if any yet.
pub fn covering_checkpoint(
    r: &Reader<'_>,
    index: u64,
) -> Result<Option<SignedCheckpoint>, StoreError> {
    let from = keys::checkpoint_by_size(index + 1);
    let to = [keys::CHECKPOINT_SIZE_PREFIX, &[0xff; 9]].concat();
    for (_, seq) in r.aux_range(&from, &to, 8)? {
        let Some(seq) = be_u64(&seq) else { continue };
        if is_final(r, seq)? {
            return signed_checkpoint(r, seq);
        }
    }
    Ok(None)
}

/// Builds the receipt of ledger position `index`, or `None` while no final checkpoint covers it.
pub fn receipt(store: &Store, index: u64, with_body: bool) -> Result<Option<Receipt>, StoreError> {
    let r = store.read()?;
    if index >= r.ledger_len()? {
        return Ok(None);
    }
    let Some(cp) = covering_checkpoint(&r, index)? else {
        return Ok(None);
    };
    let Some(chain) = cp.chain.clone() else {
        return Ok(None);
    };
    let (rec, _) = record(store, index)?;
    let path = store.inclusion_proof(index, cp.checkpoint.size)?;
    let signatures = cp
        .signatures
        .iter()
        .map(|s| checkpoint::parse_signature(s).map_err(|e| StoreError::StateTree(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(Some(Receipt {
        checkpoint: cp.body,
        signatures,
        index,
        path,
        leaf: rec.leaf,
        body: with_body.then_some(rec.body),
        chain,
    }))
}

/// The signed checkpoint alone as a COSE_Sign (a receipt without proof headers).
pub fn checkpoint_cose(cp: &SignedCheckpoint) -> Vec<u8> {
    checkpoint::signed_statement(
        checkpoint::CHECKPOINT_CONTENT_TYPE,
        &cp.body,
        &cp.signatures,
    )
}

/// `kv` value proved against the latest final checkpoint's state root.
pub struct ProvedValue {
    pub value: Option<Vec<u8>>,
    pub proof: Vec<u8>,
    pub checkpoint: SignedCheckpoint,
}

pub fn proved_state(store: &Store, key: &[u8]) -> Result<Option<ProvedValue>, StoreError> {
    let r = store.read()?;
    let Some(cp) = latest_final(&r)? else {
        return Ok(None);
    };
    let comity_store::state::StateProof { value, proof, root } =
        r.state_proof(key, cp.checkpoint.seq)?;
    if root != cp.checkpoint.state_root {
        return Err(StoreError::StateTree(format!(
            "state tree root at version {} differs from checkpoint state root",
            cp.checkpoint.seq
        )));
    }
    Ok(Some(ProvedValue {
        value,
        proof,
        checkpoint: cp,
    }))
}

/// Ledger indexes of writes to one of `owner`'s kv keys, oldest first, from index `from` on.
pub fn kv_history(
    r: &Reader<'_>,
    owner: &Hash,
    key: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let (from, to) = keys::kv_history_range(owner, key, from);
    Ok(r.aux_range(&from, &to, limit)?
        .into_iter()
        .filter_map(|(k, _)| be_u64(&k[k.len() - 8..]))
        .collect())
}

/// The genesis document bytes (ledger entry 0).
pub fn genesis_doc(store: &Store) -> Result<Vec<u8>, StoreError> {
    Ok(record(store, 0)?.0.body)
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    /// Pages of an index of keys 1..=n where `readable` entries are kept.
    fn pages(n: u8, readable: &[u8], limit: usize) -> Vec<(Vec<u8>, bool)> {
        let index: Vec<(Vec<u8>, Vec<u8>)> = (1..=n).map(|k| (vec![k], Vec::new())).collect();
        let read = |from: &[u8]| {
            Ok(index
                .iter()
                .filter(|(k, _)| k.as_slice() >= from)
                .take(3)
                .cloned()
                .collect())
        };
        let mut out = Vec::new();
        let mut start = vec![0];
        loop {
            let (items, next) = scan(read, start, limit, |k, _| {
                Ok(readable.contains(&k[0]).then(|| k[0]))
            })
            .unwrap();
            out.push((items, next.is_some()));
            match next {
                Some(k) => start = [k.as_slice(), &[0]].concat(),
                None => return out,
            }
        }
    }

    #[test]
    fn a_full_page_has_a_cursor_only_if_a_readable_entry_follows() {
        assert_eq!(
            pages(10, &[2, 4, 6, 8, 10], 2),
            [(vec![2, 4], true), (vec![6, 8], true), (vec![10], false)]
        );
        // Entries the reader may not read after its last one: no cursor
        // hints at them.
        assert_eq!(pages(9, &[2, 4], 2), [(vec![2, 4], false)]);
        assert_eq!(pages(4, &[2, 4], 2), [(vec![2, 4], false)]);
        assert_eq!(pages(3, &[], 2), [(vec![], false)]);
    }
}
