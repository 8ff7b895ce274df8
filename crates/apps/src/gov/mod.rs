//! Governance: members propose lists of actions, vote on them with signed
//! ballots, and the constitution in force when a proposal was made decides
//! it the moment its outcome is certain. Every step is a ledger transaction.
//!
//! Transactions (app `gov`): `propose {actions, description}`,
//! `vote {proposal, vote}`, `withdraw {proposal}`, `ack {constitution}`,
//! and `dismiss {node}` (a join request, by its operator: `crate::join`).

pub mod action;
pub mod constitution;
pub mod overlay;
pub mod proposal;
pub mod query;
pub mod state;

use crate::executor::Ctx;
use crate::registry::{self, Role, Status};
use crate::{codes, keys, Reject};
use action::Action;
use comity_core::cbor::{self, Value};
use comity_core::Hash;
use comity_store::{StoreError, WriteBatch};
use constitution::{Tally, Verdict};
use proposal::{
    AckArgs, Ballot, Proposal, ProposalState, ProposeArgs, Resolution, Vote, VoteArgs, WithdrawArgs,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const MAX_ACTIONS: usize = 256;
pub const MAX_DESCRIPTION: usize = 4096;

/// An identity, proposal or document id: lowercase hex text in JSON, TOML,
/// transaction arguments and governance records, a 32-byte string in the
/// compact CBOR of notary records (`cbor::to_canonical_compact`), where it
/// is half the size. CBOR readers take either form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub Hash);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        // On the stack: `hex::encode` builds its string one char at a time.
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 digits for 32 bytes");
        s.serialize_str(std::str::from_utf8(&buf).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(IdVisitor)
        } else {
            d.deserialize_any(IdVisitor)
        }
    }
}

/// Reads an id from 64 hex digits or 32 bytes, without allocating.
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a 64-digit hex id or 32 bytes")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(s, &mut h)
            .map_err(|_| E::custom(format!("{s:?} is not a 64-digit hex id")))?;
        Ok(Id(h))
    }

    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Id, E> {
        match <Hash>::try_from(b) {
            Ok(h) => Ok(Id(h)),
            Err(_) => Err(E::invalid_length(b.len(), &self)),
        }
    }
}

/// Parses and checks `gov.propose` arguments; the error says what is wrong.
pub fn parse_proposal(args: &Value) -> Result<ProposeArgs, String> {
    let p: ProposeArgs = cbor::to_serde(args).map_err(|e| e.to_string())?;
    if p.actions.is_empty() || p.actions.len() > MAX_ACTIONS {
        return Err(format!("a proposal has 1 to {MAX_ACTIONS} actions"));
    }
    if p.description.len() > MAX_DESCRIPTION {
        return Err(format!("description longer than {MAX_DESCRIPTION} bytes"));
    }
    for (i, a) in p.actions.iter().enumerate() {
        a.check_form()
            .map_err(|e| format!("action {i} ({}): {e}", a.name()))?;
    }
    // A second constitution or key for the same subject would be recorded
    // without ever being in force (a key bound to the identity for good).
    let mut rotated = BTreeSet::new();
    let mut constitutions = 0;
    for a in &p.actions {
        match a {
            Action::ConstitutionSet(_) => constitutions += 1,
            Action::RotateKey(r) if !rotated.insert(r.id.0) => {
                return Err(format!(
                    "identity {} has its key rotated twice in one proposal",
                    hex::encode(r.id.0)
                ))
            }
            _ => {}
        }
    }
    if constitutions > 1 {
        return Err("a proposal sets the constitution at most once".into());
    }
    Ok(p)
}

type AppResult = Result<Result<(), Reject>, StoreError>;

pub fn execute(ctx: &mut Ctx<'_, '_>, op: &str, args: &Value) -> AppResult {
    match op {
        "propose" => match parse_proposal(args) {
            Ok(p) => propose(ctx, p),
            Err(_) => Ok(Err(Reject(codes::BAD_ARGS))),
        },
        "vote" => match cbor::to_serde(args) {
            Ok(v) => vote(ctx, v),
            Err(_) => Ok(Err(Reject(codes::BAD_ARGS))),
        },
        "withdraw" => match cbor::to_serde(args) {
            Ok(w) => withdraw(ctx, w),
            Err(_) => Ok(Err(Reject(codes::BAD_ARGS))),
        },
        "ack" => match cbor::to_serde(args) {
            Ok(a) => ack(ctx, a),
            Err(_) => Ok(Err(Reject(codes::BAD_ARGS))),
        },
        "dismiss" => crate::join::dismiss(ctx, args),
        _ => Ok(Err(Reject(codes::UNKNOWN_OP))),
    }
}

pub fn load(s: &impl registry::StateRead, id: &Hash) -> Result<Option<Proposal>, StoreError> {
    s.state(&keys::proposal(id))?
        .map(|b| state::decode("proposal", &b))
        .transpose()
}

fn store(batch: &mut WriteBatch<'_>, p: &Proposal) -> Result<(), StoreError> {
    batch.put(&keys::proposal(&p.id.0), &state::encode(p))
}

fn propose(ctx: &mut Ctx<'_, '_>, args: ProposeArgs) -> AppResult {
    let (version, c) = state::current_constitution(&*ctx.batch)?;
    let mut p = Proposal {
        id: Id(ctx.tx),
        proposer: Id(ctx.signer),
        actions: args.actions,
        description: args.description,
        index: ctx.index,
        created: ctx.time,
        expires: ctx.time.saturating_add(c.expiry_ms),
        constitution: version,
        state: ProposalState::Open,
        // Proposing counts as the proposer's approval.
        ballots: vec![Ballot {
            member: Id(ctx.signer),
            vote: Vote::Approve,
            index: ctx.index,
        }],
        resolved: None,
    };
    ctx.batch
        .put(&keys::proposal_expiry(p.expires, &ctx.tx), &[])?;
    ctx.batch
        .aux_put(&keys::proposal_list(ctx.index, &ctx.tx), &[])?;
    ctx.batch
        .aux_put(&keys::history(&ctx.tx, ctx.index), &ctx.tx)?;
    resolve(ctx.batch, &mut p, ctx.index, ctx.time, ctx.tx)?;
    store(ctx.batch, &p)?;
    Ok(Ok(()))
}

/// Loads an open proposal, or says why a ballot or withdrawal cannot apply.
fn open_proposal(ctx: &Ctx<'_, '_>, id: &Hash) -> Result<Result<Proposal, Reject>, StoreError> {
    Ok(match load(&*ctx.batch, id)? {
        None => Err(Reject(codes::NOT_FOUND)),
        Some(p) if p.state == ProposalState::Expired || ctx.time >= p.expires => {
            Err(Reject(codes::PROPOSAL_EXPIRED))
        }
        Some(p) if p.state != ProposalState::Open => Err(Reject(codes::PROPOSAL_CLOSED)),
        Some(p) => Ok(p),
    })
}

fn vote(ctx: &mut Ctx<'_, '_>, args: VoteArgs) -> AppResult {
    let mut p = match open_proposal(ctx, &args.proposal.0)? {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    if p.ballots.iter().any(|b| b.member.0 == ctx.signer) {
        return Ok(Err(Reject(codes::ALREADY_VOTED)));
    }
    p.ballots.push(Ballot {
        member: Id(ctx.signer),
        vote: args.vote,
        index: ctx.index,
    });
    ctx.batch
        .aux_put(&keys::history(&p.id.0, ctx.index), &ctx.tx)?;
    resolve(ctx.batch, &mut p, ctx.index, ctx.time, ctx.tx)?;
    store(ctx.batch, &p)?;
    Ok(Ok(()))
}

fn withdraw(ctx: &mut Ctx<'_, '_>, args: WithdrawArgs) -> AppResult {
    let mut p = match open_proposal(ctx, &args.proposal.0)? {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    if p.proposer.0 != ctx.signer {
        return Ok(Err(Reject(codes::NOT_PROPOSER)));
    }
    close(
        ctx.batch,
        &mut p,
        ProposalState::Withdrawn,
        ctx.index,
        ctx.time,
        None,
    )?;
    ctx.batch
        .aux_put(&keys::history(&p.id.0, ctx.index), &ctx.tx)?;
    store(ctx.batch, &p)?;
    Ok(Ok(()))
}

fn ack(ctx: &mut Ctx<'_, '_>, args: AckArgs) -> AppResult {
    let Some(mut member) = registry::get(&*ctx.batch, &ctx.signer)? else {
        return Ok(Err(Reject(codes::UNKNOWN_SIGNER)));
    };
    if member.role != Role::Member || member.status != Status::Accepted {
        return Ok(Err(Reject(codes::ALREADY_ACTIVE)));
    }
    let (_, c) = state::current_constitution(&*ctx.batch)?;
    if state::constitution_digest(&c) != args.constitution.0 {
        return Ok(Err(Reject(codes::STALE_CONSTITUTION)));
    }
    member.status = Status::Active;
    ctx.batch
        .put(&keys::identity(&ctx.signer), &member.to_cbor())?;
    ctx.batch
        .aux_put(&keys::history(&ctx.signer, ctx.index), &ctx.tx)?;
    Ok(Ok(()))
}

fn close(
    batch: &mut WriteBatch<'_>,
    p: &mut Proposal,
    to: ProposalState,
    index: u64,
    time: u64,
    reason: Option<String>,
) -> Result<(), StoreError> {
    p.state = to;
    p.resolved = Some(Resolution {
        index,
        time,
        reason,
    });
    batch.delete(&keys::proposal_expiry(p.expires, &p.id.0))
}

/// Counts the ballots under the proposal's constitution and, once decided,
/// closes it, applying its actions all together if it is accepted.
fn resolve(
    batch: &mut WriteBatch<'_>,
    p: &mut Proposal,
    index: u64,
    time: u64,
    tx: Hash,
) -> Result<(), StoreError> {
    let active = state::active_members(&*batch)?;
    let c = state::constitution(&*batch, p.constitution)?;
    let rule = c.rule_for(p.actions.iter().map(Action::name));
    let by = |v: Vote| -> BTreeSet<Hash> {
        p.ballots
            .iter()
            .filter(|b| b.vote == v)
            .map(|b| b.member.0)
            .collect()
    };
    let (approvals, rejections) = (by(Vote::Approve), by(Vote::Reject));
    let verdict = rule.evaluate(&Tally {
        active: &active,
        approvals: &approvals,
        rejections: &rejections,
    });
    // A node counts for its operator in every quorum, and a member's key
    // is its vote: no vote of others may give a member a node, or take its
    // key, without its approval. An accepted proposal waits for the
    // approval of each member concerned, and fails if one refused or
    // cannot vote.
    let mut unapproved: Vec<(Hash, &str)> = Vec::new();
    for a in &p.actions {
        let concerned = match a {
            Action::NodeTrust(n) => Some((n.member.0, "the operating member of a node to trust")),
            Action::RotateKey(r)
                if registry::get(&*batch, &r.id.0)?.is_some_and(|i| i.role == Role::Member) =>
            {
                Some((r.id.0, "the member whose key it rotates"))
            }
            _ => None,
        };
        unapproved.extend(concerned.filter(|(m, _)| !approvals.contains(m)));
    }
    let mut refusal = unapproved.iter().find_map(|(m, who)| {
        let why = if rejections.contains(m) {
            "rejected it"
        } else if !active.contains(m) {
            "is not an active member"
        } else {
            return None;
        };
        Some(format!("{who} ({}) {why}", hex::encode(m)))
    });
    // A new constitution is judged under the one it replaces: once another
    // was adopted, an older proposal would undo it under the older rules.
    let current = state::constitution_version(&*batch)?;
    if p.constitution != current
        && p.actions
            .iter()
            .any(|a| matches!(a, Action::ConstitutionSet(_)))
    {
        refusal = Some(format!(
            "it replaces constitution version {}, but version {current} was adopted since",
            p.constitution
        ));
    }
    match verdict {
        Verdict::Rejected => close(batch, p, ProposalState::Rejected, index, time, None),
        // It can no longer pass, however the others vote.
        _ if refusal.is_some() => close(batch, p, ProposalState::Failed, index, time, refusal),
        Verdict::Open => Ok(()),
        Verdict::Accepted if !unapproved.is_empty() => Ok(()),
        Verdict::Accepted => match enact(batch, &p.actions, index)? {
            Ok(subjects) => {
                for s in subjects {
                    batch.aux_put(&keys::history(&s, index), &tx)?;
                }
                close(batch, p, ProposalState::Accepted, index, time, None)
            }
            Err(why) => close(batch, p, ProposalState::Failed, index, time, Some(why)),
        },
    }
}

/// Applies every action, then checks the result is governable; writes
/// nothing unless all of it holds. Returns the subjects changed.
fn enact(
    batch: &mut WriteBatch<'_>,
    actions: &[Action],
    index: u64,
) -> Result<Result<BTreeSet<Hash>, String>, StoreError> {
    let mut o = overlay::Overlay::new(batch);
    let mut subjects = BTreeSet::new();
    for (i, a) in actions.iter().enumerate() {
        match a.apply(&mut o, index)? {
            Ok(s) => subjects.extend(s),
            Err(why) => return Ok(Err(format!("action {i} ({}): {why}", a.name()))),
        }
    }
    let active = state::active_members(&o)?;
    if active.is_empty() {
        return Ok(Err("it would leave no active member".into()));
    }
    let (_, c) = state::current_constitution(&o)?;
    let check = if actions
        .iter()
        .any(|a| matches!(a, Action::ConstitutionSet(_)))
    {
        c.validate(&active)
    } else {
        c.check_satisfiable(&active)
    };
    if let Err(why) = check {
        return Ok(Err(format!("it would break the constitution: {why}")));
    }
    let nodes = state::node_set(&o)?;
    if nodes.0.is_empty() {
        return Ok(Err("it would leave no trusted node".into()));
    }
    if let Some(n) = nodes.0.iter().find(|n| !active.contains(&n.member)) {
        return Ok(Err(format!(
            "node {} would be operated by {}, which is not an active member; retire the node first",
            hex::encode(n.id),
            hex::encode(n.member)
        )));
    }
    let writes = o.into_writes();
    overlay::commit(batch, writes)?;
    Ok(Ok(subjects))
}

/// Expires open proposals whose time has come; `index` is the next ledger
/// index. Returns the earliest deadline left, so callers can skip the scan
/// until then.
/// Deterministic from ledger content alone: every entry with time >= the deadline
/// sees the proposal expired, whether or not an idle tick got there first.
pub fn expire(batch: &mut WriteBatch<'_>, now: u64, index: u64) -> Result<Option<u64>, StoreError> {
    let to = [
        keys::PROPOSAL_EXPIRY_PREFIX,
        &now.saturating_add(1).to_be_bytes(),
    ]
    .concat();
    loop {
        let due = batch.range(keys::PROPOSAL_EXPIRY_PREFIX, &to, 64)?;
        if due.is_empty() {
            let rest = batch.range(keys::PROPOSAL_EXPIRY_PREFIX, &expiry_end(), 1)?;
            return Ok(rest.first().and_then(|(k, _)| expiry_of(k)));
        }
        for (k, _) in due {
            let id: Hash = k[k.len() - 32..].try_into().expect("32-byte suffix");
            match load(&*batch, &id)? {
                Some(mut p) if p.state == ProposalState::Open => {
                    // The deadline, not the clock that noticed it: a replay of the
                    // ledger (which has no record of idle clock ticks) must agree.
                    let at = p.expires;
                    close(batch, &mut p, ProposalState::Expired, index, at, None)?;
                    store(batch, &p)?;
                }
                _ => batch.delete(&k)?,
            }
        }
    }
}

/// Past every expiry key (prefix, 8-byte deadline, 32-byte proposal id).
fn expiry_end() -> Vec<u8> {
    [keys::PROPOSAL_EXPIRY_PREFIX, &[0xff; 41]].concat()
}

/// The deadline an expiry key names.
fn expiry_of(key: &[u8]) -> Option<u64> {
    let start = keys::PROPOSAL_EXPIRY_PREFIX.len();
    key.get(start..start + 8)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

/// The earliest expiry of an open proposal, so an idle leader can tick the ledger clock.
pub fn next_expiry(r: &comity_store::Reader<'_>) -> Result<Option<u64>, StoreError> {
    let first = r.range(keys::PROPOSAL_EXPIRY_PREFIX, &expiry_end(), 1)?;
    Ok(first.first().and_then(|(k, _)| expiry_of(k)))
}
