//! Governance reads: members, users, nodes, proposals, the constitution, and
//! the history of each, with state proofs and receipts.

use crate::api::{
    authorize, authorize_member, checkpoint_json, parse_hash, ApiPath, ApiQuery, MAX_PAGE_BYTES, S,
};
use crate::error::{ApiError, ApiResult};
use crate::server::ClientIdentity;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use comity_apps::gov::proposal::ProposalState;
use comity_apps::gov::{self, state};
use comity_apps::registry::{self, Identity, Role};
use comity_apps::{keys, query};
use comity_core::Hash;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const MAX_LIST: usize = 500;

pub fn routes() -> Router<Arc<crate::Shared>> {
    Router::new()
        .route(
            "/v1/gov/members",
            get(|s, w, q| list(s, w, q, Role::Member)),
        )
        .route("/v1/gov/users", get(|s, w, q| list(s, w, q, Role::User)))
        .route("/v1/gov/nodes", get(|s, w, q| list(s, w, q, Role::Node)))
        .route("/v1/gov/identities/{id}", get(identity))
        .route("/v1/gov/proposals", get(proposals))
        .route("/v1/gov/proposals/{id}", get(proposal))
        .route("/v1/gov/constitution", get(constitution))
        .route("/v1/gov/history/{subject}", get(history))
}

pub fn identity_json(i: &Identity) -> Value {
    json!({
        "id": hex::encode(i.id()),
        "role": i.role.as_str(),
        "status": i.status.as_str(),
        "name": i.name,
        "data": i.data,
        "operator": i.operator.map(hex::encode),
        "keys": i.keys.iter().map(|(since, k)| json!({
            "since": since,
            "key": hex::encode(k),
            "fingerprint": hex::encode(comity_core::crypto::sha256(k)),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiQuery(q): ApiQuery<ListParams>,
    role: Role,
) -> ApiResult<Json<Value>> {
    let (_, member) = authorize_member(&shared, who)?;
    // Users are the consortium's customers: one does not learn of another.
    if role == Role::User && !member {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the user directory is for members",
        ));
    }
    let after = q.after.as_deref().map(parse_hash).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let (items, next) = gov::query::identities(&shared.store.read()?, role, after, limit)?;
    let items: Vec<_> = items.iter().map(identity_json).collect();
    Ok(Json(
        json!({ "items": items, "next": next.map(hex::encode) }),
    ))
}

/// A state value proved against the latest final checkpoint.
pub(crate) fn proof_json(shared: &crate::Shared, key: &[u8]) -> ApiResult<Value> {
    Ok(proved_json(key, query::proved_state(&shared.store, key)?))
}

/// The JSON of `proved`, the value at `key`.
pub(crate) fn proved_json(key: &[u8], proved: Option<query::ProvedValue>) -> Value {
    match proved {
        Some(p) => json!({
            "checkpoint": checkpoint_json(&p.checkpoint),
            "state_key_hex": hex::encode(key),
            "value_hex": p.value.map(hex::encode),
            "state_proof": hex::encode(&p.proof),
        }),
        None => Value::Null,
    }
}

async fn identity(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (me, member) = authorize_member(&shared, who)?;
    let id = parse_hash(&id)?;
    // To a user, another user's record is as if there were none.
    let ident = registry::get(&shared.store.read()?, &id)?
        .filter(|i| member || i.role != Role::User || id == me)
        .ok_or_else(|| ApiError::not_found("no identity with that id"))?;
    Ok(Json(json!({
        "identity": identity_json(&ident),
        "proof": proof_json(&shared, &keys::identity(&id))?,
    })))
}

#[derive(Deserialize)]
struct ProposalParams {
    state: Option<String>,
    from: Option<u64>,
    limit: Option<usize>,
}

async fn proposals(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiQuery(q): ApiQuery<ProposalParams>,
) -> ApiResult<Json<Value>> {
    authorize(&shared, who)?;
    let st = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<ProposalState>(json!(s)).map_err(|_| {
                ApiError::bad_request(
                    "malformed",
                    "state is one of open, accepted, rejected, withdrawn, expired, failed",
                )
            })?,
        ),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let (items, next) =
        gov::query::proposals(&shared.store.read()?, st, q.from.unwrap_or(0), limit)?;
    Ok(Json(json!({ "items": items, "next": next })))
}

async fn proposal(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    authorize(&shared, who)?;
    let id = parse_hash(&id)?;
    let p = gov::load(&shared.store.read()?, &id)?
        .ok_or_else(|| ApiError::not_found("no proposal with that id"))?;
    Ok(Json(json!({
        "proposal": p,
        "proof": proof_json(&shared, &keys::proposal(&id))?,
    })))
}

async fn constitution(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
) -> ApiResult<Json<Value>> {
    authorize(&shared, who)?;
    let (version, c) = state::current_constitution(&shared.store.read()?)?;
    Ok(Json(json!({
        "version": version,
        "digest": hex::encode(state::constitution_digest(&c)),
        "constitution": c,
        "proof": proof_json(&shared, &keys::constitution(version))?,
    })))
}

/// `constitution`, `config`, `network`, `protocol`, or a 64-hex id.
fn subject(s: &str) -> ApiResult<Hash> {
    match s {
        "constitution" | "config" | "network" | "protocol" => Ok(state::subject(s)),
        _ => parse_hash(s),
    }
}

#[derive(Deserialize)]
struct HistoryParams {
    /// Ledger index of the last entry of the previous page.
    after: Option<u64>,
    limit: Option<usize>,
}

/// The entries that changed a subject, oldest first, a page at a time;
/// `next` is the `after` of the following page, `null` on the last one.
async fn history(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(s): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryParams>,
) -> ApiResult<Json<Value>> {
    authorize(&shared, who)?;
    let subject = subject(&s)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let from = q.after.map_or(0, |i| i.saturating_add(1));
    // Off the async threads: each item reads a record and builds a receipt.
    tokio::task::spawn_blocking(move || history_page(&shared, &subject, from, limit).map(Json))
        .await
        .map_err(ApiError::internal)?
}

/// A page of [`history`]: at most `limit` entries, ended early once it
/// holds [`MAX_PAGE_BYTES`] (proposals may be large).
fn history_page(
    shared: &crate::Shared,
    subject: &Hash,
    from: u64,
    limit: usize,
) -> ApiResult<Value> {
    // One more than the page holds tells whether another page follows.
    let mut entries = gov::query::history(&shared.store.read()?, subject, from, limit + 1)?;
    let mut next = (entries.len() > limit).then(|| entries[limit - 1].0);
    entries.truncate(limit);
    let (n, mut items, mut bytes) = (entries.len(), Vec::with_capacity(entries.len()), 0);
    for (k, (index, tx)) in entries.into_iter().enumerate() {
        let (rec, leaf) = query::record(&shared.store, index)?;
        let parsed = comity_core::tx::Tx::parse(&rec.body).ok();
        let receipt = query::receipt(&shared.store, index, true)?.map(|r| hex::encode(r.to_cose()));
        bytes += 2 * tx.len() + receipt.as_ref().map_or(0, String::len);
        items.push(json!({
            "index": index,
            "tx": hex::encode(tx),
            "time": leaf.time,
            "outcome": leaf.outcome.code(),
            "op": parsed.as_ref().map(|t| format!("{}.{}", t.payload.app, t.payload.op)),
            "signer": parsed.as_ref().map(|t| hex::encode(t.kid)),
            "receipt": receipt,
        }));
        if bytes >= MAX_PAGE_BYTES && k + 1 < n {
            next = Some(index);
            break;
        }
    }
    Ok(json!({ "subject": hex::encode(subject), "items": items, "next": next }))
}
