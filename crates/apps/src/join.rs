//! `node.join`: a new node presents itself to the network before any vote.
//!
//! The request is signed by the key it carries, so it proves that its sender
//! holds the node's key; it names the member that operates the node and the
//! address its peers reach it at. It records the node as `pending`, which
//! members see (`/v1/gov/nodes`) and trust by a `node.trust` vote, which
//! also needs the operating member's approval; a pending node may do
//! nothing, not even ask again. Anyone who can reach a node may send a
//! request, so at most [`MAX_PENDING_NODES`] wait at a time, and one the
//! node would refuse is refused at submission, never recorded. The member a
//! request names may dismiss it alone (`gov.dismiss`), since trusting the
//! node would need that member's approval anyway; members may also dismiss
//! one by retiring the node by a vote.

use crate::executor::Ctx;
use crate::gov::overlay::Overlay;
use crate::gov::Id;
use crate::registry::{self, Identity, Role, StateRead, Status};
use crate::{codes, keys, Reject};
use comity_core::cbor::{self, MapView, Value};
use comity_core::crypto::{sha256, PublicKey};
use comity_core::tx::Tx;
use comity_core::Hash;
use comity_store::StoreError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most join requests waiting for a vote at once.
pub const MAX_PENDING_NODES: u64 = 64;

/// Largest join request: a key, a member, a name and an address fit well
/// inside; anyone may send one, so it may not be padded out.
pub const MAX_JOIN_BYTES: usize = 16 << 10;

/// Whether `tx` is a `node.join`.
pub fn is_join(tx: &Tx) -> bool {
    (tx.payload.app.as_str(), tx.payload.op.as_str()) == ("node", "join")
}

/// What a joining node asks for: the arguments of `node.join` (the SDK's
/// `Signer::node_join` writes them).
struct JoinRequest {
    /// The node's key (SubjectPublicKeyInfo DER); its hash is the node's id.
    key: Vec<u8>,
    /// The member that operates the node.
    member: Hash,
    name: String,
    /// Descriptive data; `address` (host:port) is where peers reach the node.
    data: BTreeMap<String, String>,
}

impl JoinRequest {
    fn from_args(args: &Value) -> Result<Self, String> {
        let m = MapView::new(args).map_err(|e| e.to_string())?;
        if m.0.len() != 4 {
            return Err("expected exactly key, member, name and data".into());
        }
        let req = JoinRequest {
            key: m.bytes("key").map_err(|e| e.to_string())?.to_vec(),
            member: m.hash("member").map_err(|e| e.to_string())?,
            name: m.text("name").map_err(|e| e.to_string())?.to_string(),
            data: cbor::to_serde(m.get("data").ok_or("missing data")?)
                .map_err(|e| format!("data: {e}"))?,
        };
        registry::check_data(&req.name, &req.data)?;
        crate::gov::action::check_key(&req.key)?;
        Ok(req)
    }
}

/// The identity a `node.join` transaction speaks for when its signer is not
/// registered: a pending node with the key the request carries, provided
/// that key hashes to the signer's id. The signature is then checked with
/// that key like any other.
pub fn unregistered_signer(tx: &Tx) -> Option<Arc<Identity>> {
    if !is_join(tx) {
        return None;
    }
    let key = MapView::new(&tx.payload.args).ok()?.bytes("key").ok()?;
    (sha256(key) == tx.kid && PublicKey::from_spki_der(key).is_ok()).then(|| {
        Arc::new(Identity::new(
            Role::Node,
            Status::Pending,
            "joining node",
            key.to_vec(),
            0,
        ))
    })
}

/// How many nodes wait for a vote.
pub fn pending_nodes(s: &impl StateRead) -> Result<u64, StoreError> {
    Ok(s.state(keys::PENDING_NODES)?
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes))
}

/// Every check of `signer`'s request against state, and the pending
/// record it would write; on refusal the outcome code and why.
fn examine(
    s: &impl StateRead,
    signer: &Hash,
    args: &Value,
    index: u64,
) -> Result<Result<Identity, (&'static str, String)>, StoreError> {
    let req = match JoinRequest::from_args(args) {
        Ok(r) if sha256(&r.key) == *signer => r,
        Ok(_) => return Ok(Err((codes::BAD_ARGS, "key is not the signer's".into()))),
        Err(e) => return Ok(Err((codes::BAD_ARGS, e))),
    };
    if !registry::get(s, &req.member)?
        .is_some_and(|m| m.role == Role::Member && m.status == Status::Active)
    {
        let why = format!("{} is not an active member", hex::encode(req.member));
        return Ok(Err((codes::NOT_FOUND, why)));
    }
    if crate::gov::state::key_owner(s, signer)?.is_some_and(|owner| owner != *signer) {
        let why = "the key belongs to another identity".to_string();
        return Ok(Err((codes::FORBIDDEN, why)));
    }
    if let Some(i) = registry::get(s, signer)? {
        // Pending or trusted: nothing to ask (retired nodes and other roles
        // are refused before, as inactive or forbidden).
        let why = format!("already a {} {}", i.status.as_str(), i.role.as_str());
        return Ok(Err((codes::ALREADY_EXISTS, why)));
    }
    if pending_nodes(s)? >= MAX_PENDING_NODES {
        let why = format!("{MAX_PENDING_NODES} nodes already wait for a vote");
        return Ok(Err((codes::TOO_MANY_PENDING, why)));
    }
    Ok(Ok(Identity {
        data: req.data,
        operator: Some(req.member),
        ..Identity::new(Role::Node, Status::Pending, &req.name, req.key, index)
    }))
}

/// Whether a `node.join` transaction would be applied as of `s`: checked at
/// ingress, so that a refused request never reaches the ledger (its sender
/// need not be anyone yet). Apply checks again and decides.
pub fn admissible(
    s: &impl StateRead,
    tx: &Tx,
) -> Result<Result<(), (&'static str, String)>, StoreError> {
    Ok(examine(s, &tx.kid, &tx.payload.args, 0)?.map(|_| ()))
}

/// Records the signer's request as a pending node.
pub fn execute(ctx: &mut Ctx<'_, '_>, args: &Value) -> Result<Result<(), Reject>, StoreError> {
    let ident = match examine(&*ctx.batch, &ctx.signer, args, ctx.index)? {
        Ok(ident) => ident,
        Err((code, _)) => return Ok(Err(Reject(code))),
    };
    let waiting = pending_nodes(&*ctx.batch)?;
    ctx.batch
        .put(keys::PENDING_NODES, &(waiting + 1).to_be_bytes())?;
    ctx.batch.put(&keys::key_owner(&ctx.signer), &ctx.signer)?;
    ctx.batch
        .put(&keys::identity(&ctx.signer), &ident.to_cbor())?;
    // The node's governance history starts with its request.
    ctx.batch
        .aux_put(&keys::history(&ctx.signer, ctx.index), &ctx.tx)?;
    Ok(Ok(()))
}

/// Arguments of `gov.dismiss`: the pending node whose request is turned down.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DismissArgs {
    node: Id,
}

/// `gov.dismiss {node}`: the operating member named by a pending node's
/// request turns it down. The node is retired, as by a `node.retire` vote:
/// its key may not ask again, and an open `node.trust` for it fails.
pub fn dismiss(ctx: &mut Ctx<'_, '_>, args: &Value) -> Result<Result<(), Reject>, StoreError> {
    let Ok(DismissArgs { node: Id(node) }) = cbor::to_serde(args) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    let mut ident = match registry::get(&*ctx.batch, &node)? {
        Some(i) if i.role == Role::Node => i,
        _ => return Ok(Err(Reject(codes::NOT_FOUND))),
    };
    if ident.status != Status::Pending {
        return Ok(Err(Reject(codes::NOT_PENDING)));
    }
    if ident.operator != Some(ctx.signer) {
        return Ok(Err(Reject(codes::NOT_OPERATOR)));
    }
    ident.status = Status::Retired;
    let mut o = Overlay::new(ctx.batch);
    leave_pending(&mut o)?;
    crate::gov::state::put_identity(&mut o, &ident, false)?;
    let writes = o.into_writes();
    crate::gov::overlay::commit(ctx.batch, writes)?;
    ctx.batch
        .aux_put(&keys::history(&node, ctx.index), &ctx.tx)?;
    Ok(Ok(()))
}

/// One node fewer waits for a vote: it was trusted, retired or recovered.
pub(crate) fn leave_pending(o: &mut Overlay<'_, '_>) -> Result<(), StoreError> {
    let waiting = pending_nodes(o)?;
    o.put(
        keys::PENDING_NODES,
        &waiting.saturating_sub(1).to_be_bytes(),
    );
    Ok(())
}
