//! The history of the trusted node set: which nodes sign checkpoints at each
//! tree size, and each change endorsed by a quorum of the set before it, so
//! a receipt can carry the chain from the genesis set to its signers.

use crate::keys;
use crate::registry::AuxRead;
use comity_core::checkpoint::{self, NODE_SET_CONTENT_TYPE};
use comity_core::network::NodeSet;
use comity_core::receipt::NodeSetChange;
use comity_core::Hash;
use comity_store::{StoreError, WriteBatch};
use std::collections::BTreeSet;

fn decode(v: &[u8]) -> Result<NodeSetChange, StoreError> {
    NodeSetChange::from_cbor(v).map_err(|e| StoreError::StateTree(format!("node-set history: {e}")))
}

/// Every recorded change with `from <= size <= to`, in order (genesis is size 0).
pub fn changes(
    r: &impl AuxRead,
    from: u64,
    to: u64,
) -> Result<Vec<(NodeSetChange, Vec<u8>)>, StoreError> {
    let end = keys::node_set_change(to.saturating_add(1));
    let end = if to == u64::MAX {
        [keys::NODE_SET_CHANGE_PREFIX, &[0xff; 9]].concat()
    } else {
        end
    };
    r.aux_scan(&keys::node_set_change(from), &end)?
        .into_iter()
        .map(|(_, v)| Ok((decode(&v)?, v)))
        .collect()
}

/// The set that signs checkpoints of tree size `size`.
pub fn set_at(r: &impl AuxRead, size: u64) -> Result<NodeSet, StoreError> {
    changes(r, 0, size)?
        .pop()
        .map(|(c, _)| c.nodes)
        .ok_or_else(|| StoreError::StateTree("no node set recorded at genesis".into()))
}

/// Records that `change.nodes` sign from `change.size` on.
pub fn record(batch: &mut WriteBatch<'_>, change: &NodeSetChange) -> Result<(), StoreError> {
    batch.aux_put(&keys::node_set_change(change.size), &change.to_cbor())
}

/// The endorsements (COSE_Signature bytes) recorded for the change at `size`, by node.
fn endorsements(r: &impl AuxRead, size: u64) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
    let (from, to) = keys::endorsement_range(size);
    let to = [to, vec![0xff]].concat();
    Ok(r.aux_scan(&from, &to)?
        .into_iter()
        .map(|(k, v)| (k[k.len() - 32..].try_into().expect("32-byte suffix"), v))
        .collect())
}

/// The chain a receipt for a checkpoint of tree size `size` carries: each
/// change after genesis up to `size` as a COSE_Sign with its endorsements.
/// `None` while some change lacks endorsements from a quorum of the set before it.
pub fn chain(r: &impl AuxRead, size: u64) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let all = changes(r, 0, size)?;
    let mut out = Vec::new();
    for pair in all.windows(2) {
        let ((prev, _), (_, body)) = (&pair[0], &pair[1]);
        if let Some(signed) = r.aux_get_one(&keys::recovery(pair[1].0.size))? {
            out.push(signed);
            continue;
        }
        let sigs = endorsements(r, pair[1].0.size)?;
        if endorsing_members(&prev.nodes, &sigs) < prev.nodes.quorum() {
            return Ok(None);
        }
        let sigs: Vec<Vec<u8>> = sigs.into_iter().map(|(_, s)| s).collect();
        out.push(checkpoint::signed_statement(
            NODE_SET_CONTENT_TYPE,
            body,
            &sigs,
        ));
    }
    Ok(Some(out))
}

/// How many members' nodes of `prev` are among the endorsers `sigs`.
fn endorsing_members(prev: &NodeSet, sigs: &[(Hash, Vec<u8>)]) -> usize {
    sigs.iter()
        .filter_map(|(n, _)| prev.get(n).map(|n| n.member))
        .collect::<BTreeSet<Hash>>()
        .len()
}

/// The changes node `me` was in the set before and has not endorsed, while
/// they still lack a quorum of endorsements. An endorsement is submitted
/// once, when the change is applied; if that one is lost (a crash, an
/// election, a refusal), every later receipt would wait for good.
pub fn unendorsed(r: &impl AuxRead, me: &Hash) -> Result<Vec<NodeSetChange>, StoreError> {
    let all = changes(r, 0, u64::MAX)?;
    let mut owed = Vec::new();
    for pair in all.windows(2) {
        let ((prev, _), (change, _)) = (&pair[0], &pair[1]);
        if prev.nodes.get(me).is_none() || r.aux_get_one(&keys::recovery(change.size))?.is_some() {
            continue;
        }
        let sigs = endorsements(r, change.size)?;
        if sigs.iter().all(|(n, _)| n != me)
            && endorsing_members(&prev.nodes, &sigs) < prev.nodes.quorum()
        {
            owed.push(change.clone());
        }
    }
    Ok(owed)
}

/// Checks and records a node's endorsement of the change whose body is `body`.
/// The signer must belong to the set before the change.
pub fn endorse(
    batch: &mut WriteBatch<'_>,
    signer: &Hash,
    body: &[u8],
    sig: &[u8],
) -> Result<Result<(), &'static str>, StoreError> {
    let Ok(change) = NodeSetChange::from_cbor(body) else {
        return Ok(Err(crate::codes::BAD_ARGS));
    };
    let local = batch.aux_get(&keys::node_set_change(change.size))?;
    if change.size == 0 || local.as_deref() != Some(body) {
        return Ok(Err(crate::codes::NOT_FOUND));
    }
    let prev = set_at(batch, change.size - 1)?;
    let Some(node) = prev.get(signer) else {
        return Ok(Err(crate::codes::FORBIDDEN));
    };
    let (Ok(s), Ok(key)) = (checkpoint::parse_signature(sig), node.public_key()) else {
        return Ok(Err(crate::codes::BAD_ARGS));
    };
    if checkpoint::signer(&s).ok() != Some(*signer)
        || checkpoint::verify(NODE_SET_CONTENT_TYPE, body, &s, &key).is_err()
    {
        return Ok(Err(crate::codes::BAD_SIGNATURE));
    }
    batch.aux_put(&keys::endorsement(change.size, signer), sig)?;
    Ok(Ok(()))
}
