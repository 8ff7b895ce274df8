//! The notary: document provenance. A document is registered by its digest
//! (the content never reaches the ledger), signed by its parties, amended,
//! expired or revoked, held, passed between custodians, arranged in
//! collections, and finally destroyed; every step is a signed transaction and
//! an event in the document's hash chain, and its current record is in the
//! state tree, so the whole story is provable offline. See docs/notary.md.
//!
//! Transactions (app `notary`): `register`, `amend`, `sign`, `expire`,
//! `revoke`, `hold.place`, `hold.lift`, `custody.offer`, `custody.accept`,
//! `destroy.approve`, `destroy`, `metadata.erase`, `collection.create`,
//! `collection.set_order`.

#[macro_use]
mod macros {
    /// Unwraps an application-level result, or records the refusal as the outcome.
    macro_rules! refuse {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(r) => return Ok(Err(r)),
            }
        };
    }
}

pub mod collection;
pub mod custody;
pub mod document;
pub mod event;
pub mod index;
pub mod lifecycle;
pub mod query;

use crate::executor::Ctx;
use crate::gov::Id;
use crate::registry::{self, Role};
use crate::{codes, keys, Reject};
use comity_core::cbor::{self, Value};
use comity_core::Hash;
use comity_store::StoreError;
use document::{Document, Status};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type AppResult = Result<Result<(), Reject>, StoreError>;

/// Every notary operation, for authorization and documentation.
pub const OPS: &[&str] = &[
    "register",
    "amend",
    "sign",
    "expire",
    "revoke",
    "hold.place",
    "hold.lift",
    "custody.offer",
    "custody.accept",
    "destroy.approve",
    "destroy",
    "metadata.erase",
    "collection.create",
    "collection.set_order",
];

/// Arguments naming one document, with an optional reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocArgs {
    pub document: Id,
    #[serde(default)]
    pub reason: String,
}

/// `sign`: the party signs this digest of this document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignArgs {
    pub document: Id,
    pub digest: Id,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftArgs {
    pub document: Id,
    pub hold: Id,
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferArgs {
    pub document: Id,
    pub to: Id,
    #[serde(default)]
    pub reason: String,
}

/// Decodes arguments and checks reasons' sizes; `None` is `bad_args`.
fn parse<T: DeserializeOwned>(args: &Value) -> Option<T> {
    let too_long = |v: &Value| {
        cbor::MapView::new(v)
            .ok()
            .and_then(|m| m.text("reason").ok())
            .is_some_and(|r| r.len() > document::MAX_REASON)
    };
    if too_long(args) {
        return None;
    }
    cbor::to_serde(args).ok()
}

/// Expands `$each!(handler)` for the handler of `$op`, else `$unknown`:
/// the one table of operations that apply and ingress share.
macro_rules! by_op {
    ($op:expr, $each:ident, $unknown:expr) => {
        match $op {
            "register" => $each!(register),
            "amend" => $each!(amend),
            "sign" => $each!(lifecycle::sign),
            "expire" => $each!(lifecycle::expire),
            "revoke" => $each!(lifecycle::revoke),
            "hold.place" => $each!(lifecycle::hold_place),
            "hold.lift" => $each!(lifecycle::hold_lift),
            "custody.offer" => $each!(custody::offer),
            "custody.accept" => $each!(custody::accept),
            "destroy.approve" => $each!(lifecycle::destroy_approve),
            "destroy" => $each!(lifecycle::destroy),
            "metadata.erase" => $each!(lifecycle::erase),
            "collection.create" => $each!(collection::create),
            "collection.set_order" => $each!(collection::set_order),
            _ => $unknown,
        }
    };
}

pub fn execute(ctx: &mut Ctx<'_, '_>, op: &str, args: &Value) -> AppResult {
    if !matches!(ctx.role, Role::User | Role::Member) {
        return Ok(Err(Reject(codes::FORBIDDEN)));
    }
    macro_rules! run {
        ($f:path) => {
            match parse(args) {
                Some(a) => $f(ctx, a),
                None => Ok(Err(Reject(codes::BAD_ARGS))),
            }
        };
    }
    by_op!(op, run, Ok(Err(Reject(codes::UNKNOWN_OP))))
}

/// Whether `args` have the shape `op` takes, as apply reads them: checked
/// at ingress, so that a malformed one is never queued or recorded.
pub fn check_args(op: &str, args: &Value) -> Result<(), &'static str> {
    fn parses<A: DeserializeOwned>(_: fn(&mut Ctx<'_, '_>, A) -> AppResult, args: &Value) -> bool {
        parse::<A>(args).is_some()
    }
    macro_rules! shape {
        ($f:path) => {
            if parses($f, args) {
                Ok(())
            } else {
                Err(codes::BAD_ARGS)
            }
        };
    }
    by_op!(op, shape, Err(codes::UNKNOWN_OP))
}

fn register(ctx: &mut Ctx<'_, '_>, a: document::RegisterArgs) -> AppResult {
    lifecycle::register(ctx, a, false)
}

fn amend(ctx: &mut Ctx<'_, '_>, a: document::RegisterArgs) -> AppResult {
    lifecycle::register(ctx, a, true)
}

/// A notary record (document, event, collection) in canonical CBOR, ids as
/// 32-byte strings: they are rewritten on every step of a document's life,
/// twice (state and state tree), and hex would make them half again as big.
pub fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    cbor::to_canonical_compact(t).expect("notary records serialize")
}

/// The documents a notary transaction's arguments name, the one it concerns
/// first: for `register` and `amend` the id of its digest (then an amended
/// predecessor), for collection operations none, otherwise its `document`.
/// Ids may be hex text or 32-byte strings, as the executor reads them.
pub fn documents_named(op: &str, args: &Value) -> Vec<Hash> {
    /// The arguments that name a document; the others are ignored.
    #[derive(Deserialize)]
    struct Names {
        document: Option<Id>,
        digest: Option<Id>,
        predecessor: Option<Id>,
    }
    let Ok(n) = cbor::to_serde::<Names>(args) else {
        return Vec::new();
    };
    let named = match op {
        "register" | "amend" => vec![n.digest.map(|d| Id(document::id_of(&d.0))), n.predecessor],
        _ if op.starts_with("collection.") => Vec::new(),
        _ => vec![n.document],
    };
    named.into_iter().flatten().map(|i| i.0).collect()
}

/// Document `id` as the signer may know it: to a user it does not name
/// (see [`Document::may_read`]) it is as if there were none, so that no
/// outcome tells a stranger that it exists or what state it is in. Members
/// read every transaction anyway, and may place holds on any document.
pub fn shown(ctx: &Ctx<'_, '_>, id: &Hash) -> Result<Option<Document>, StoreError> {
    Ok(document::load(&*ctx.batch, id)?
        .filter(|d| ctx.role == Role::Member || d.may_read(&ctx.signer)))
}

/// Whether `id` is an active member or user (a party, approver or custodian).
pub fn active_identity(ctx: &Ctx<'_, '_>, id: &Hash) -> Result<bool, StoreError> {
    Ok(registry::get_shared(&*ctx.batch, id)?
        .is_some_and(|i| i.is_active() && matches!(i.role, Role::Member | Role::User)))
}

/// Writes a record and moves its status index entry.
fn save(ctx: &mut Ctx<'_, '_>, d: &Document, old: Status) -> Result<(), StoreError> {
    ctx.batch.put(&keys::notary_doc(&d.id.0), &d.to_cbor())?;
    index::restatus(ctx.batch, d, old)
}

/// A document being changed by the current transaction.
pub struct Update {
    pub doc: Document,
    old: Status,
}

impl Update {
    /// Loads a document that is not destroyed.
    pub fn load(ctx: &Ctx<'_, '_>, id: &Hash) -> Result<Result<Update, Reject>, StoreError> {
        Ok(match Update::load_any(ctx, id)? {
            Ok(u) => u.doc.check_not_destroyed().map(|()| u),
            Err(r) => Err(r),
        })
    }

    /// A document read without regard to the signer (see [`shown`]).
    pub fn of(doc: Document) -> Update {
        Update {
            old: doc.status,
            doc,
        }
    }

    /// Loads a document whatever its status.
    pub fn load_any(ctx: &Ctx<'_, '_>, id: &Hash) -> Result<Result<Update, Reject>, StoreError> {
        Ok(shown(ctx, id)?
            .map(Update::of)
            .ok_or(Reject(codes::NOT_FOUND)))
    }

    /// Loads a document the signer manages (its custodian or a party).
    pub fn load_managed(
        ctx: &Ctx<'_, '_>,
        id: &Hash,
    ) -> Result<Result<Update, Reject>, StoreError> {
        Ok(match Update::load(ctx, id)? {
            Ok(u) if !u.doc.may_manage(&ctx.signer) => Err(Reject(codes::NOT_AUTHORIZED)),
            other => other,
        })
    }

    pub fn event(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        kind: &str,
        details: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let id = self.doc.id.0;
        event::append(ctx, &id, &mut self.doc.chain, kind, details)
    }

    pub fn save(&self, ctx: &mut Ctx<'_, '_>) -> Result<(), StoreError> {
        save(ctx, &self.doc, self.old)
    }

    /// Saves and reports success.
    pub fn done(self, ctx: &mut Ctx<'_, '_>) -> AppResult {
        self.save(ctx)?;
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_named_reads_ids_as_hex_or_bytes() {
        let (doc, digest, pred) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let hex_args = cbor::map([("document", cbor::text(hex::encode(doc)))]);
        let byte_args = cbor::map([("document", cbor::bytes(doc))]);
        assert_eq!(documents_named("sign", &hex_args), vec![doc]);
        assert_eq!(documents_named("sign", &byte_args), vec![doc]);
        let amend = cbor::map([
            ("digest", cbor::text(hex::encode(digest))),
            ("predecessor", cbor::bytes(pred)),
        ]);
        assert_eq!(
            documents_named("amend", &amend),
            vec![document::id_of(&digest), pred]
        );
        assert!(documents_named("collection.set_order", &hex_args).is_empty());
        let short = cbor::map([("document", cbor::bytes([1u8; 31]))]);
        assert!(documents_named("sign", &short).is_empty());
    }
}
