//! The document lifecycle transactions: register, amend, sign, expire,
//! revoke, legal holds, destruction approvals and destruction, and erasure of
//! personal data. Each refusal has its own code (see `codes`).

use super::document::{self, Act, Document, Hold, Party, RegisterArgs, Signature, Status};
use super::event::{self, details, kind};
use super::{active_identity, index, save, AppResult, DocArgs, LiftArgs, SignArgs, Update};
use crate::executor::Ctx;
use crate::gov::Id;
use crate::registry::Role;
use crate::{codes, keys, Reject};

/// `register` (no predecessor) and `amend` (a new version of an executed
/// document). Registering a digest again with the same terms is an
/// idempotent no-op for its registrant (a retry) and refused otherwise
/// (`digest_registered`):
/// the existing record stands and no event is added.
///
/// An amendment is a draft that must name every signing party of the
/// version it amends as a signing party, so no party's signed agreement is
/// replaced without its signature. The amended version stays executed, with
/// the draft as its `successor`, until the draft is executed (see
/// [`supersede`]); meanwhile no other amendment of it is accepted.
pub fn register(ctx: &mut Ctx<'_, '_>, a: RegisterArgs, amend: bool) -> AppResult {
    if a.check().is_err() || a.predecessor.is_some() != amend {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    let id = document::id_of(&a.digest.0);
    // The predecessor first: only those who manage it learn anything more.
    let mut pred = match a.predecessor {
        None => None,
        Some(p) => Some(refuse!(Update::load_managed(ctx, &p.0)?)),
    };
    if let Some(existing) = document::load(&*ctx.batch, &id)? {
        // Other terms would get an applied receipt that contradicts the record.
        let retry = existing.registrant.0 == ctx.signer && existing.registered_with(&a);
        return Ok(if retry {
            Ok(())
        } else {
            Err(Reject(codes::DIGEST_REGISTERED))
        });
    }
    if let Some(u) = &pred {
        refuse!(check_amendable(ctx, &u.doc, &a)?);
    }
    for id in a
        .parties
        .iter()
        .map(|p| p.id)
        .chain(a.retention.approvers.iter().copied())
    {
        if !active_identity(ctx, &id.0)? {
            return Ok(Err(Reject(codes::UNKNOWN_IDENTITY)));
        }
    }
    let mut d = Document::new(a, id, ctx.signer, ctx.index, ctx.time);
    event::append(
        ctx,
        &id,
        &mut d.chain,
        kind::REGISTERED,
        details([
            ("digest", hex::encode(d.digest.0)),
            ("title", d.title.clone()),
            (
                "predecessor",
                d.predecessor.map(|p| hex::encode(p.0)).unwrap_or_default(),
            ),
        ]),
    )?;
    let executed = d.fully_signed();
    if executed {
        d.status = Status::Executed;
        d.executed = Some(ctx.time);
        event::append(ctx, &id, &mut d.chain, kind::EXECUTED, details([]))?;
    }
    if let Some(u) = &mut pred {
        u.doc.successor = Some(Id(id));
        if executed {
            u.doc.end(Status::Amended, ctx.time);
        }
        let what = if executed {
            kind::AMENDED
        } else {
            kind::AMENDMENT_PROPOSED
        };
        u.event(ctx, what, details([("successor", hex::encode(id))]))?;
    }
    index::add(ctx.batch, &d)?;
    if let Some(u) = pred {
        u.save(ctx)?;
    }
    // Last, so the transaction is noted as concerning the new version.
    save(ctx, &d, d.status)?;
    Ok(Ok(()))
}

/// Whether `a` may amend `pred` (which the signer manages).
fn check_amendable(
    ctx: &Ctx<'_, '_>,
    pred: &Document,
    a: &RegisterArgs,
) -> Result<Result<(), Reject>, comity_store::StoreError> {
    if pred.status != Status::Executed {
        return Ok(Err(Reject(codes::DOC_NOT_EXECUTED)));
    }
    if !pred.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    let signs = |p: &Party| a.parties.iter().any(|q| q.id == p.id && q.signs);
    if !pred.parties.iter().filter(|p| p.signs).all(signs) {
        return Ok(Err(Reject(codes::SIGNERS_MISSING)));
    }
    // A draft successor still awaiting signatures blocks another; one that
    // was revoked does not.
    if let Some(s) = pred.successor {
        if document::load(&*ctx.batch, &s.0)?.is_some_and(|s| s.status == Status::Draft) {
            return Ok(Err(Reject(codes::AMENDMENT_PENDING)));
        }
    }
    Ok(Ok(()))
}

/// The amendment `successor` was just executed: the version it amends
/// leaves force. Checked before anything is written: `Err`, refusing the
/// last signature, if a legal hold keeps that version in force, or if it
/// left force otherwise (revoked, expired) while the amendment waited.
fn supersede(
    ctx: &Ctx<'_, '_>,
    successor: &Document,
) -> Result<Result<Option<Update>, Reject>, comity_store::StoreError> {
    let Some(p) = successor.predecessor else {
        return Ok(Ok(None));
    };
    // Read without regard to the signer: the new version may name signing
    // parties the old one did not.
    let Some(doc) = document::load(&*ctx.batch, &p.0)? else {
        return Ok(Ok(None));
    };
    if doc.successor != Some(successor.id) {
        return Ok(Ok(None));
    }
    if doc.status != Status::Executed {
        return Ok(Err(Reject(codes::DOC_NOT_IN_FORCE)));
    }
    if !doc.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    Ok(Ok(Some(Update::of(doc))))
}

/// A party signs the digest. The last required signature executes the
/// document in the same transaction (and, for an amendment, supersedes the
/// version it amends); signing again is an idempotent no-op.
pub fn sign(ctx: &mut Ctx<'_, '_>, a: SignArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    if a.digest != u.doc.digest {
        return Ok(Err(Reject(codes::DIGEST_MISMATCH)));
    }
    let Some(party) = u.doc.party(&ctx.signer).filter(|p| p.signs).cloned() else {
        return Ok(Err(Reject(codes::NOT_A_PARTY)));
    };
    if u.doc.has_signed(&ctx.signer) {
        return Ok(Ok(()));
    }
    if u.doc.status != Status::Draft {
        return Ok(Err(Reject(codes::DOC_NOT_DRAFT)));
    }
    u.doc.signatures.push(Signature {
        party: Id(ctx.signer),
        index: ctx.index,
        time: ctx.time,
    });
    let executed = u.doc.fully_signed();
    let pred = match executed {
        true => refuse!(supersede(ctx, &u.doc)?),
        false => None,
    };
    u.event(
        ctx,
        kind::SIGNED,
        details([("party", hex::encode(ctx.signer)), ("role", party.role)]),
    )?;
    if executed {
        u.doc.status = Status::Executed;
        u.doc.executed = Some(ctx.time);
        u.event(ctx, kind::EXECUTED, details([]))?;
    }
    if let Some(mut p) = pred {
        p.doc.end(Status::Amended, ctx.time);
        let successor = hex::encode(u.doc.id.0);
        p.event(ctx, kind::AMENDED, details([("successor", successor)]))?;
        p.save(ctx)?;
    }
    u.done(ctx)
}

/// An executed document's term has ended (not while a legal hold stands).
pub fn expire(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load_managed(ctx, &a.document.0)?);
    if u.doc.status != Status::Executed {
        return Ok(Err(Reject(codes::DOC_NOT_EXECUTED)));
    }
    if !u.doc.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    u.doc.end(Status::Expired, ctx.time);
    u.event(ctx, kind::EXPIRED, details([("reason", a.reason)]))?;
    u.done(ctx)
}

/// A draft or executed document is withdrawn from force, unless on hold.
pub fn revoke(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load_managed(ctx, &a.document.0)?);
    if !u.doc.status.in_force() {
        return Ok(Err(Reject(codes::DOC_NOT_IN_FORCE)));
    }
    if !u.doc.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    u.doc.end(Status::Revoked, ctx.time);
    u.event(ctx, kind::REVOKED, details([("reason", a.reason)]))?;
    u.done(ctx)
}

/// Members (the consortium's organizations) place legal holds; a hold is
/// lifted by the member that placed it, or by any member once that one is
/// no longer active, so no other organization can undo it.
fn hold_authority(ctx: &Ctx<'_, '_>) -> Result<(), Reject> {
    if ctx.role != Role::Member {
        return Err(Reject(codes::NOT_AUTHORIZED));
    }
    Ok(())
}

pub fn hold_place(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    if a.reason.is_empty() {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    refuse!(hold_authority(ctx));
    if u.doc.holds.len() >= document::MAX_HOLDS {
        return Ok(Err(Reject(codes::TOO_MANY_HOLDS)));
    }
    u.doc.holds.push(Hold {
        id: Id(ctx.tx),
        by: Id(ctx.signer),
        reason: a.reason.clone(),
        index: ctx.index,
        time: ctx.time,
    });
    u.event(
        ctx,
        kind::HOLD_PLACED,
        details([("hold", hex::encode(ctx.tx)), ("reason", a.reason)]),
    )?;
    u.done(ctx)
}

pub fn hold_lift(ctx: &mut Ctx<'_, '_>, a: LiftArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    refuse!(hold_authority(ctx));
    let Some(pos) = u.doc.holds.iter().position(|h| h.id == a.hold) else {
        return Ok(Err(Reject(codes::NO_SUCH_HOLD)));
    };
    let placer = u.doc.holds[pos].by.0;
    if placer != ctx.signer && active_identity(ctx, &placer)? {
        return Ok(Err(Reject(codes::NOT_HOLD_PLACER)));
    }
    u.doc.holds.remove(pos);
    u.event(
        ctx,
        kind::HOLD_LIFTED,
        details([("hold", hex::encode(a.hold.0)), ("reason", a.reason)]),
    )?;
    u.done(ctx)
}

/// One approval towards destruction; approving twice is an idempotent no-op.
pub fn destroy_approve(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    if u.doc.status.in_force() {
        return Ok(Err(Reject(codes::DOC_IN_FORCE)));
    }
    if !u.doc.may_approve(&ctx.signer) {
        return Ok(Err(Reject(codes::NOT_APPROVER)));
    }
    if u.doc.approvals.iter().any(|x| x.by.0 == ctx.signer) {
        return Ok(Ok(()));
    }
    u.doc.approvals.push(Act {
        by: Id(ctx.signer),
        to: None,
        reason: a.reason.clone(),
        index: ctx.index,
        time: ctx.time,
    });
    u.event(
        ctx,
        kind::DESTRUCTION_APPROVED,
        details([("reason", a.reason)]),
    )?;
    u.done(ctx)
}

/// The custodian destroys the content once retention has ended in ledger
/// time, no hold stands and enough approvals are recorded. The record, its
/// digest and its events stay: they prove what was destroyed, when and why.
pub fn destroy(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    if u.doc.custodian.0 != ctx.signer {
        return Ok(Err(Reject(codes::NOT_CUSTODIAN)));
    }
    if u.doc.status.in_force() {
        return Ok(Err(Reject(codes::DOC_IN_FORCE)));
    }
    if !u.doc.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    if u.doc.retain_until.is_some_and(|t| ctx.time < t) {
        return Ok(Err(Reject(codes::RETENTION_NOT_ENDED)));
    }
    // Only approvals by those who may approve now count: custody that
    // changed hands since must not carry a former custodian's approval
    // (with an accomplice as custodian, any count could be reached).
    let approvers: Vec<String> = u
        .doc
        .approvals
        .iter()
        .filter(|x| u.doc.may_approve(&x.by.0))
        .map(|x| hex::encode(x.by.0))
        .collect();
    if (approvers.len() as u64) < u.doc.retention.approvals {
        return Ok(Err(Reject(codes::APPROVALS_MISSING)));
    }
    if u.doc.personal.is_some() && !u.doc.personal_erased {
        erase_personal(ctx, &mut u)?;
    }
    u.doc.status = Status::Destroyed;
    u.doc.destroyed = Some(Act {
        by: Id(ctx.signer),
        to: None,
        reason: a.reason.clone(),
        index: ctx.index,
        time: ctx.time,
    });
    let approvers = approvers.join(",");
    u.event(
        ctx,
        kind::DESTROYED,
        details([("reason", a.reason), ("approvers", approvers)]),
    )?;
    u.done(ctx)
}

/// Erases the personal-data blob this node holds; the digest in the record
/// (and so every proof) is unchanged. Erasing twice is an idempotent no-op.
pub fn erase(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load_any(ctx, &a.document.0)?);
    if u.doc.custodian.0 != ctx.signer && u.doc.registrant.0 != ctx.signer {
        return Ok(Err(Reject(codes::NOT_AUTHORIZED)));
    }
    if u.doc.personal.is_none() {
        return Ok(Err(Reject(codes::NO_PERSONAL_DATA)));
    }
    if u.doc.personal_erased {
        return Ok(Ok(()));
    }
    // Personal data under a legal hold is evidence (GDPR art. 17(3)(e)).
    if !u.doc.holds.is_empty() {
        return Ok(Err(Reject(codes::LEGAL_HOLD)));
    }
    erase_personal(ctx, &mut u)?;
    u.done(ctx)
}

fn erase_personal(ctx: &mut Ctx<'_, '_>, u: &mut Update) -> Result<(), comity_store::StoreError> {
    ctx.batch.aux_delete(&keys::notary_personal(&u.doc.id.0))?;
    u.doc.personal_erased = true;
    u.event(ctx, kind::PERSONAL_DATA_ERASED, details([]))
}
