//! The `node` application: nodes' checkpoint signatures, finality,
//! evidence of conflicting signatures, endorsements of node-set changes,
//! and join requests ([`crate::join`]).

use crate::executor::Ctx;
use crate::registry::{AuxRead, Role};
use crate::{codes, keys, Reject};
use comity_core::cbor::{self, MapView, Value};
use comity_core::checkpoint::{self, Checkpoint, CHECKPOINT_CONTENT_TYPE};
use comity_core::network::NodeSet;
use comity_core::Hash;
use comity_store::{StoreError, WriteBatch};
use std::collections::BTreeSet;

/// Arguments of `node.checkpoint`: the body the node computed and its COSE_Signature.
pub fn signature_args(body: &[u8], sig: &[u8]) -> Value {
    cbor::map([
        ("body", cbor::bytes(body.to_vec())),
        ("sig", cbor::bytes(sig.to_vec())),
    ])
}

/// A node signed a checkpoint whose body differs from the one this node
/// computed for the same sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub node: Hash,
    pub seq: u64,
    /// Nodes of a majority of members now signed that other body: this node,
    /// not the signer, is the one that differs.
    pub quorum: bool,
}

pub fn execute(
    ctx: &mut Ctx<'_, '_>,
    op: &str,
    args: &Value,
) -> Result<Result<(), Reject>, StoreError> {
    if ctx.role != Role::Node {
        return Ok(Err(Reject(codes::FORBIDDEN)));
    }
    if op == "join" {
        return crate::join::execute(ctx, args);
    }
    let Ok(m) = MapView::new(args) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    let (Ok(body), Ok(sig_bytes)) = (m.bytes("body"), m.bytes("sig")) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    match op {
        "checkpoint" => {}
        "endorse" => {
            return Ok(
                crate::node_set::endorse(ctx.batch, &ctx.signer, body, sig_bytes)?.map_err(Reject),
            )
        }
        _ => return Ok(Err(Reject(codes::UNKNOWN_OP))),
    }
    let Ok(cp) = Checkpoint::from_cbor(body) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    let Ok(sig) = checkpoint::parse_signature(sig_bytes) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    if cp.network_id != ctx.net {
        return Ok(Err(Reject(codes::WRONG_NETWORK)));
    }
    // Only a checkpoint this ledger has can be signed: its marker precedes
    // every honest signature of it, and apply completes it before checking
    // one. Its size is then this ledger's, not one the signer claims (an
    // early size would pick an old, smaller node set, whose few nodes could
    // then pass for a quorum that signed other roots).
    let local = ctx.batch.aux_get(&keys::checkpoint(cp.seq))?;
    let local_size = local
        .as_deref()
        .and_then(|b| Checkpoint::from_cbor(b).ok())
        .map(|c| c.size);
    if local_size != Some(cp.size) {
        return Ok(Err(Reject(codes::UNKNOWN_CHECKPOINT)));
    }
    // The signers of a checkpoint are the trusted set at its tree size.
    let set = crate::node_set::set_at(&*ctx.batch, cp.size)?;
    let Some(node) = set.get(&ctx.signer) else {
        return Ok(Err(Reject(codes::FORBIDDEN)));
    };
    let Ok(key) = node.public_key() else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    if checkpoint::signer(&sig).ok() != Some(ctx.signer)
        || checkpoint::verify(CHECKPOINT_CONTENT_TYPE, body, &sig, &key).is_err()
    {
        return Ok(Err(Reject(codes::BAD_SIGNATURE)));
    }
    let sig_key = keys::signature(cp.seq, &ctx.signer);
    if let Some(prev) = ctx.batch.aux_get(&sig_key)? {
        // Same node, same checkpoint: identical is a harmless resend; different is evidence.
        let prev_body = cbor::from_slice(&prev).ok().and_then(|v| {
            MapView::new(&v)
                .ok()
                .and_then(|m| m.bytes("body").ok().map(<[u8]>::to_vec))
        });
        if prev_body.as_deref() == Some(body) {
            return Ok(Ok(()));
        }
        ctx.batch.aux_put(
            &keys::evidence(&ctx.signer, cp.seq),
            &cbor::to_vec(Value::Array(vec![
                cbor::bytes(prev),
                cbor::bytes(cbor::to_vec(signature_args(body, sig_bytes)).expect("valid")),
            ]))
            .expect("valid"),
        )?;
        tracing::error!(node = %hex::encode(ctx.signer), seq = cp.seq, "node signed two different checkpoints for one sequence number; evidence kept");
        return Ok(Err(Reject(codes::CONFLICTING_SIGNATURE)));
    }
    ctx.batch.aux_put(
        &sig_key,
        &cbor::to_vec(signature_args(body, sig_bytes)).expect("valid"),
    )?;
    if local.as_deref() != Some(body) {
        // This node computed something else for the same checkpoint: the
        // signer is faulty, or, once a quorum signed the same, this node.
        let quorum = signing_members(ctx.batch, cp.seq, body, &set)? >= set.quorum();
        if quorum && diverged_at(&*ctx.batch)?.is_none() {
            // Remembered (the first), so that a restart does not serve this state again.
            ctx.batch.aux_put(keys::DIVERGED, &cp.seq.to_be_bytes())?;
        }
        ctx.divergence = Some(Divergence {
            node: ctx.signer,
            seq: cp.seq,
            quorum,
        });
    } else if ctx
        .batch
        .aux_get(&keys::final_checkpoint(cp.seq))?
        .is_none()
        && signing_members(ctx.batch, cp.seq, body, &set)? >= set.quorum()
    {
        ctx.batch.aux_put(&keys::final_checkpoint(cp.seq), &[])?;
        let latest = ctx
            .batch
            .aux_get(keys::LATEST_FINAL)?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes);
        if latest.is_none_or(|l| l < cp.seq) {
            ctx.batch
                .aux_put(keys::LATEST_FINAL, &cp.seq.to_be_bytes())?;
        }
    }
    Ok(Ok(()))
}

/// The checkpoint whose roots, as nodes of a quorum of members signed
/// them, differ from this node's, if that was ever seen: this node's state
/// is wrong and it must not serve it.
pub fn diverged_at(r: &impl AuxRead) -> Result<Option<u64>, StoreError> {
    Ok(r.aux_get_one(keys::DIVERGED)?
        .and_then(|v| v.as_slice().try_into().ok())
        .map(u64::from_be_bytes))
}

/// The latest checkpoint, if it is not final and node `me`, a signer of it,
/// has not signed it: its signature is submitted once, when the checkpoint
/// is completed, and may be lost (a crash, an election, a refusal).
pub fn unsigned_latest(r: &impl AuxRead, me: &Hash) -> Result<Option<Checkpoint>, StoreError> {
    let seq = crate::executor::saved_checkpoint_seq(r)?;
    let Some(body) = r.aux_get_one(&keys::checkpoint(seq))? else {
        return Ok(None); // none yet, or its state root is still being computed
    };
    if r.aux_get_one(&keys::final_checkpoint(seq))?.is_some()
        || r.aux_get_one(&keys::signature(seq, me))?.is_some()
    {
        return Ok(None);
    }
    let cp = Checkpoint::from_cbor(&body)
        .map_err(|e| StoreError::StateTree(format!("checkpoint {seq}: {e}")))?;
    Ok(crate::node_set::set_at(r, cp.size)?
        .get(me)
        .is_some()
        .then_some(cp))
}

/// How many members' nodes of `set` signed `body` as checkpoint `seq`.
fn signing_members(
    batch: &WriteBatch<'_>,
    seq: u64,
    body: &[u8],
    set: &NodeSet,
) -> Result<usize, StoreError> {
    let (from, to) = keys::signature_range(seq);
    let members: BTreeSet<Hash> = batch
        .aux_range(&from, &to, usize::MAX)?
        .into_iter()
        .filter(|(_, v)| stored_body(v).as_deref() == Some(body))
        .filter_map(|(k, _)| {
            set.get(&k[k.len() - 32..].try_into().expect("32-byte suffix"))
                .map(|n| n.member)
        })
        .collect();
    Ok(members.len())
}

/// The checkpoint a `node.checkpoint` transaction signs, if it is one.
pub fn signed_seq(p: &comity_core::tx::TxPayload) -> Option<u64> {
    if p.app != "node" || p.op != "checkpoint" {
        return None;
    }
    let body = MapView::new(&p.args).ok()?.bytes("body").ok()?;
    Checkpoint::from_cbor(body).ok().map(|c| c.seq)
}

/// The body stored with a signature record.
pub fn stored_body(v: &[u8]) -> Option<Vec<u8>> {
    let v = cbor::from_slice(v).ok()?;
    MapView::new(&v)
        .ok()?
        .bytes("body")
        .ok()
        .map(<[u8]>::to_vec)
}

/// The COSE_Signature stored with a signature record.
pub fn stored_sig(v: &[u8]) -> Option<Vec<u8>> {
    let v = cbor::from_slice(v).ok()?;
    MapView::new(&v).ok()?.bytes("sig").ok().map(<[u8]>::to_vec)
}
