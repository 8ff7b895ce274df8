//! Applying a disaster-recovery decision (see `comity_core::recovery`), and
//! keeping in state what such a decision is checked against: the active
//! members' keys.

use crate::gov::overlay::{self, Overlay};
use crate::registry::{self, Identity, Role, StateRead, Status};
use crate::{codes, gov, keys};
use comity_core::cbor;
use comity_core::checkpoint::Checkpoint;
use comity_core::network::NodeSet;
use comity_core::recovery::{self, MemberKeys, Recovery, MEMBER_KEYS_STATE_KEY};
use comity_core::Hash;
use comity_store::{StoreError, WriteBatch};

/// The active members and their current keys, by id.
pub fn member_keys(s: &impl StateRead) -> Result<MemberKeys, StoreError> {
    let mut out = Vec::new();
    for id in gov::state::active_members(s)? {
        if let Some(m) = registry::get(s, &id)? {
            out.push((id, m.current_key().to_vec()));
        }
    }
    Ok(MemberKeys(out))
}

/// Writes the active members' keys to state when they changed.
pub fn refresh_member_keys(batch: &mut WriteBatch<'_>) -> Result<(), StoreError> {
    let now = member_keys(&*batch)?.to_cbor();
    if batch.get(MEMBER_KEYS_STATE_KEY)?.as_deref() != Some(now.as_slice()) {
        batch.put(MEMBER_KEYS_STATE_KEY, &now)?;
    }
    Ok(())
}

/// Whether the new node set may be trusted by `s`'s rules, as a `node.trust`
/// vote would be: each operator an active member (and the member a pending
/// node asked to join for), no retired node back, no key that belongs to
/// another identity, no two nodes with one Raft id. On refusal, the code
/// and why.
pub fn check_new_nodes(
    s: &impl StateRead,
    nodes: &NodeSet,
) -> Result<Result<(), (&'static str, String)>, StoreError> {
    for (i, n) in nodes.0.iter().enumerate() {
        let id = hex::encode(n.id);
        if !registry::get(s, &n.member)?
            .is_some_and(|m| m.role == Role::Member && m.status == Status::Active)
        {
            let why = format!(
                "the operator {} of node {id} is not an active member",
                hex::encode(n.member)
            );
            return Ok(Err((codes::NOT_FOUND, why)));
        }
        match registry::get(s, &n.id)? {
            Some(i) if i.role != Role::Node => {
                return Ok(Err((
                    codes::ALREADY_EXISTS,
                    format!("{id} is a {}, not a node", i.role.as_str()),
                )));
            }
            Some(i) if i.status == Status::Retired => {
                return Ok(Err((
                    codes::INACTIVE,
                    format!("node {id} was retired; retired is final"),
                )));
            }
            Some(i) if i.operator.is_some_and(|op| op != n.member) => {
                return Ok(Err((
                    codes::FORBIDDEN,
                    format!("node {id} asked to join for another member"),
                )));
            }
            _ => {}
        }
        // Raft knows a node by the first 8 bytes of its id.
        if nodes
            .0
            .iter()
            .enumerate()
            .any(|(j, m)| j != i && m.id[..8] == n.id[..8])
        {
            let why = format!(
                "node {id} is named twice, or has the Raft id (first 8 bytes) of another of the set"
            );
            return Ok(Err((codes::ALREADY_EXISTS, why)));
        }
        if gov::state::key_owner(s, &n.id)?.is_some_and(|owner| owner != n.id) {
            let why = format!("the key of node {id} belongs to another identity");
            return Ok(Err((codes::FORBIDDEN, why)));
        }
    }
    Ok(Ok(()))
}

/// Checks a signed decision against this ledger (its network, its length and
/// root, a majority of its members) and installs the new node set: new nodes
/// trusted, the others retired. Returns the decision, or why it is refused.
pub fn enact(
    batch: &mut WriteBatch<'_>,
    net: &Hash,
    signed: &[u8],
    index: u64,
) -> Result<Result<Recovery, &'static str>, StoreError> {
    let Ok((_, r)) = recovery::parse(signed) else {
        return Ok(Err(codes::BAD_ARGS));
    };
    if r.size != index || r.tx_root != batch.tx_root() {
        return Ok(Err(codes::RECOVERY_MISMATCH));
    }
    let cp =
        coset_payload(&r.checkpoint).and_then(|b| Checkpoint::from_cbor(&b).ok().map(|c| (b, c)));
    let Some((cp_body, cp)) = cp else {
        return Ok(Err(codes::BAD_ARGS));
    };
    // Its state root proves the member keys that sign the decision, so it
    // must be a checkpoint this ledger computed, not one a quorum of node
    // keys signed over other roots, and the latest final one: an older one
    // could name members since outnumbered by members added after it.
    if batch.aux_get(&keys::checkpoint(cp.seq))?.as_deref() != Some(cp_body.as_slice())
        || crate::query::latest_final_seq(&*batch)? != Some(cp.seq)
    {
        tracing::error!(
            seq = cp.seq,
            "refusing a recovery decision: its checkpoint is not this ledger's latest final one"
        );
        return Ok(Err(codes::RECOVERY_MISMATCH));
    }
    let cp_size = cp.size;
    let set = crate::node_set::set_at(&*batch, cp_size)?;
    let since = crate::node_set::changes(&*batch, 0, cp_size)?
        .last()
        .map_or(0, |(c, _)| c.size);
    let r = match recovery::verify(signed, net, &set, since) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "refusing a recovery decision");
            return Ok(Err(codes::BAD_SIGNATURE));
        }
    };
    if let Err((code, why)) = check_new_nodes(&*batch, &r.nodes)? {
        tracing::error!(%why, "refusing a recovery decision");
        return Ok(Err(code));
    }
    let mut o = Overlay::new(batch);
    let before = gov::state::node_set(&o)?;
    for n in &before.0 {
        if r.nodes.get(&n.id).is_none() {
            if let Some(mut i) = registry::get(&o, &n.id)? {
                i.status = Status::Retired;
                gov::state::put_identity(&mut o, &i, false)?;
            }
        }
    }
    for (n, addr) in r.nodes.0.iter().zip(&r.addresses) {
        let (mut ident, new) = match registry::get(&o, &n.id)? {
            Some(i) => {
                if i.status == Status::Pending {
                    crate::join::leave_pending(&mut o)?;
                }
                (i, false)
            }
            None => {
                let name = format!("node {}", &hex::encode(n.id)[..12]);
                (
                    Identity::new(Role::Node, Status::Trusted, &name, n.key.clone(), index),
                    true,
                )
            }
        };
        ident.status = Status::Trusted;
        ident.operator = Some(n.member);
        ident
            .data
            .insert(crate::genesis::ADDRESS.into(), addr.clone());
        gov::state::put_identity(&mut o, &ident, new)?;
    }
    o.put(
        keys::NODES,
        &cbor::to_vec(r.nodes.to_value()).expect("valid"),
    );
    let writes = o.into_writes();
    overlay::commit(batch, writes)?;
    Ok(Ok(r))
}

fn coset_payload(sign: &[u8]) -> Option<Vec<u8>> {
    use coset::{CborSerializable, CoseSign, TaggedCborSerializable};
    CoseSign::from_tagged_slice(sign)
        .or_else(|_| CoseSign::from_slice(sign))
        .ok()?
        .payload
}
