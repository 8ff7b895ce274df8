//! Custody transfers between organizations: the custodian offers, the
//! recipient accepts. Both steps are events, so the chain of custody is part
//! of the document's history.

use super::document::Act;
use super::event::{details, kind};
use super::{active_identity, AppResult, DocArgs, OfferArgs, Update};
use crate::executor::Ctx;
use crate::gov::Id;
use crate::{codes, Reject};

/// The custodian offers custody to an active member or user; a new offer
/// replaces a pending one.
pub fn offer(ctx: &mut Ctx<'_, '_>, a: OfferArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    if u.doc.custodian.0 != ctx.signer {
        return Ok(Err(Reject(codes::NOT_CUSTODIAN)));
    }
    if a.to.0 == ctx.signer {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    if !active_identity(ctx, &a.to.0)? {
        return Ok(Err(Reject(codes::UNKNOWN_IDENTITY)));
    }
    u.doc.offer = Some(Act {
        by: Id(ctx.signer),
        to: Some(a.to),
        reason: a.reason.clone(),
        index: ctx.index,
        time: ctx.time,
    });
    u.event(
        ctx,
        kind::CUSTODY_OFFERED,
        details([("to", hex::encode(a.to.0)), ("reason", a.reason)]),
    )?;
    u.done(ctx)
}

/// The identity offered custody accepts it and becomes the custodian.
pub fn accept(ctx: &mut Ctx<'_, '_>, a: DocArgs) -> AppResult {
    let mut u = refuse!(Update::load(ctx, &a.document.0)?);
    let Some(offer) = u.doc.offer.take() else {
        return Ok(Err(Reject(codes::NO_OFFER)));
    };
    if offer.to.map(|t| t.0) != Some(ctx.signer) {
        return Ok(Err(Reject(codes::NOT_OFFERED)));
    }
    let from = u.doc.custodian;
    u.doc.custodian = Id(ctx.signer);
    u.event(
        ctx,
        kind::CUSTODY_ACCEPTED,
        details([("from", hex::encode(from.0)), ("reason", a.reason)]),
    )?;
    u.done(ctx)
}
