//! Ordered collections of documents (a matter's file: pleadings, exhibits in
//! order). A collection has its own hash-chained events; every change of its
//! order is one.

use super::encode;
use super::event::{self, details, kind, Chain};
use super::{document, AppResult};
use crate::executor::Ctx;
use crate::gov::state::decode;
use crate::gov::Id;
use crate::registry::StateRead;
use crate::{codes, keys, Reject};
use comity_core::Hash;
use comity_store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const MAX_DOCUMENTS: usize = 256;

/// Stored under `keys::notary_collection(id)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// The id of the creating transaction.
    pub id: Id,
    pub name: String,
    pub matter: String,
    /// The creator, who alone may reorder it.
    pub owner: Id,
    pub index: u64,
    pub created: u64,
    /// Document ids, in order.
    pub documents: Vec<Id>,
    pub chain: Chain,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    pub name: String,
    #[serde(default)]
    pub matter: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderArgs {
    pub collection: Id,
    pub documents: Vec<Id>,
}

pub fn load(s: &impl StateRead, id: &Hash) -> Result<Option<Collection>, StoreError> {
    s.state(&keys::notary_collection(id))?
        .map(|b| from_state(&b))
        .transpose()
}

/// A collection as stored (a proved value, say).
pub fn from_state(b: &[u8]) -> Result<Collection, StoreError> {
    decode("notary collection", b)
}

/// Whether `who` may read `c`: its owner, and whoever may read every one
/// of its documents (an empty collection is its owner's alone).
pub fn readable_by(s: &impl StateRead, c: &Collection, who: &Hash) -> Result<bool, StoreError> {
    if c.owner.0 == *who {
        return Ok(true);
    }
    if c.documents.is_empty() {
        return Ok(false);
    }
    for d in &c.documents {
        if !document::load(s, &d.0)?.is_some_and(|d| d.may_read(who)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `who`, who may read `current`, may also be shown `proved`, the
/// collection a proof shows (as of the latest final checkpoint): an earlier
/// order may name documents taken out since, which only the owner, or a
/// reader of them all, may see.
pub fn proof_readable_by(
    s: &impl StateRead,
    current: &Collection,
    proved: Option<&[u8]>,
    who: &Hash,
) -> Result<bool, StoreError> {
    match proved {
        Some(b) if current.owner.0 != *who => readable_by(s, &from_state(b)?, who),
        _ => Ok(true),
    }
}

pub fn create(ctx: &mut Ctx<'_, '_>, a: CreateArgs) -> AppResult {
    let max = document::MAX_TEXT;
    if a.name.is_empty() || a.name.len() > max || a.matter.len() > max {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    let mut c = Collection {
        id: Id(ctx.tx),
        name: a.name,
        matter: a.matter,
        owner: Id(ctx.signer),
        index: ctx.index,
        created: ctx.time,
        documents: Vec::new(),
        chain: Chain::default(),
    };
    let id = ctx.tx;
    event::append(
        ctx,
        &id,
        &mut c.chain,
        kind::COLLECTION_CREATED,
        details([("name", c.name.clone()), ("matter", c.matter.clone())]),
    )?;
    ctx.batch.put(&keys::notary_collection(&id), &encode(&c))?;
    Ok(Ok(()))
}

/// Replaces the order; every document must exist, each at most once.
pub fn set_order(ctx: &mut Ctx<'_, '_>, a: OrderArgs) -> AppResult {
    if a.documents.len() > MAX_DOCUMENTS
        || a.documents.iter().collect::<BTreeSet<_>>().len() != a.documents.len()
    {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    let Some(mut c) = load(&*ctx.batch, &a.collection.0)? else {
        return Ok(Err(Reject(codes::NOT_FOUND)));
    };
    if c.owner.0 != ctx.signer {
        // Whoever may not read it is not told it exists.
        let code = if readable_by(&*ctx.batch, &c, &ctx.signer)? {
            codes::NOT_AUTHORIZED
        } else {
            codes::NOT_FOUND
        };
        return Ok(Err(Reject(code)));
    }
    for d in &a.documents {
        if super::shown(ctx, &d.0)?.is_none() {
            return Ok(Err(Reject(codes::NOT_FOUND)));
        }
    }
    let order = a
        .documents
        .iter()
        .map(|d| hex::encode(d.0))
        .collect::<Vec<_>>()
        .join(",");
    c.documents = a.documents;
    let id = c.id.0;
    event::append(
        ctx,
        &id,
        &mut c.chain,
        kind::ORDER_SET,
        details([
            ("documents", order),
            ("count", c.documents.len().to_string()),
        ]),
    )?;
    ctx.batch.put(&keys::notary_collection(&id), &encode(&c))?;
    Ok(Ok(()))
}
