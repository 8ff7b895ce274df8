//! HTTP handlers. See docs/api.md and the OpenAPI document at /v1/openapi.json.

use crate::error::{ApiError, ApiResult};
use crate::ingress::{self, Admission};
use crate::server::ClientIdentity;
use crate::Shared;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use comity_apps::query::{self, SignedCheckpoint};
use comity_apps::{keys, registry};
use comity_core::checkpoint::Checkpoint;
use comity_core::entry::Outcome;
use comity_core::Hash;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub(crate) type S = State<Arc<Shared>>;

/// Largest request body read at all; transactions are further bounded by the ledger config.
const MAX_BODY: usize = comity_apps::genesis::MAX_TX_BYTES as usize;
/// How long a request body may take to arrive, so slow senders cannot hold
/// connections and buffers indefinitely; a large declared body (a peer's
/// Raft append, say) gets another second per [`BODY_BYTES_PER_SEC`].
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_BYTES_PER_SEC: u64 = 256 << 10;

/// The time a body of `declared` length (from `Content-Length`) may take.
fn body_deadline(declared: Option<u64>) -> Duration {
    BODY_TIMEOUT + Duration::from_secs(declared.unwrap_or(0) / BODY_BYTES_PER_SEC)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}
/// Most ledger entries served per page.
const MAX_PAGE: u64 = 1000;
/// A page of ledger entries stops growing past this many bytes (it always
/// holds at least one entry), so a request cannot make the node build a
/// reply as large as a thousand maximal transactions.
pub(crate) const MAX_PAGE_BYTES: usize = 4 << 20;

static OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/tx", post(submit))
        .route("/v1/tx/{id}", get(tx_status))
        .route("/v1/tx/{id}/receipt", get(tx_receipt))
        .route("/v1/ledger/receipt/{index}", get(ledger_receipt))
        .route("/v1/ledger/entries", get(entries))
        .route("/v1/ledger/size", get(size))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/proof/consistency", get(consistency))
        .route("/v1/evidence", get(evidence))
        .route("/v1/kv/{key}", get(kv_get))
        .route("/v1/kv/{key}/history", get(kv_history))
        .route("/v1/network/identity", get(identity))
        .route("/v1/network/nodes", get(trusted_nodes))
        .route("/v1/health", get(health))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/metrics", get(metrics))
        .merge(crate::gov_api::routes())
        .merge(crate::notary_api::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            linearizable,
        ))
        .merge(crate::peer_api::routes(shared.clone()))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// A node whose state diverged from the quorum's stops serving (but for its
/// health and metrics, which say why). Reads are served from this node's
/// state; `?linearizable=true` first waits until it reflects every write
/// committed before the request. That costs the leader a quorum round, so
/// only a registered member or user may ask for it.
async fn linearizable(
    State(shared): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if shared.diverged.load(std::sync::atomic::Ordering::SeqCst)
        && path != "/v1/health"
        && path != "/metrics"
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "diverged",
            "this node's state differs from what the other nodes signed; it stopped serving (see its log)",
        )
        .into_response();
    }
    let wanted = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "linearizable=true"));
    if wanted && req.method() == axum::http::Method::GET {
        let who = req.extensions().get::<ClientIdentity>().copied();
        let ready = match authorize(&shared, who.unwrap_or(ClientIdentity(None))) {
            Ok(_) => crate::peer_api::linearize(&shared).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            return e.into_response();
        }
    }
    next.run(req).await
}

pub(crate) fn parse_hash(s: &str) -> ApiResult<Hash> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("malformed", "expected 64 hex characters"))
}

/// `Path` whose rejection is a JSON error.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request("malformed", e.body_text()))
    }
}

/// `Query` whose rejection is a JSON error.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request("malformed", e.body_text()))
    }
}

/// The request body, whose rejection (too large, unreadable, too slow) is a
/// JSON error.
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let deadline = body_deadline(content_length(req.headers()));
        match tokio::time::timeout(deadline, Bytes::from_request(req, state)).await {
            Ok(Ok(b)) => Ok(ApiBody(b)),
            Ok(Err(e)) => {
                let status = e.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "malformed"
                };
                Err(ApiError::new(status, code, e.body_text()))
            }
            Err(_) => Err(body_timeout()),
        }
    }
}

fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "timeout",
        format!(
            "the request body did not arrive in time ({} s, plus 1 s per {} KiB declared)",
            BODY_TIMEOUT.as_secs(),
            BODY_BYTES_PER_SEC >> 10
        ),
    )
}

/// Reads a body of at most `limit` bytes, refusing a larger declared length
/// without keeping any of it, so a client cannot make the node buffer more
/// than the ledger would accept.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<Bytes> {
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is {n} bytes; the limit is {limit}"),
        )
    };
    let declared = content_length(headers);
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // What arrives within a second of a body no larger than any route
        // reads is read and dropped (not kept), so a client that sends its
        // body at once is not cut off mid-write (a broken pipe instead of
        // this answer). A larger body, one that does not come, or one whose
        // client waits to be told (`Expect: 100-continue`, which reading
        // would answer) is not read.
        if n <= MAX_BODY as u64 && !headers.contains_key(header::EXPECT) {
            let mut body = body;
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        }
        return Err(too_large(n.to_string()));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(body_deadline(declared), limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(too_large("more than that".into()))
        }
        Ok(Err(e)) => Err(ApiError::bad_request("malformed", e.to_string())),
        Err(_) => Err(body_timeout()),
    }
}

#[derive(Deserialize)]
struct SubmitParams {
    wait: Option<bool>,
}

/// A recorded transaction's status (docs/api.md), written straight from a
/// struct: it answers every submission.
#[derive(Serialize)]
struct RecordedStatus<'a> {
    id: String,
    status: &'static str,
    index: u64,
    outcome: &'a str,
    ledger_time: u64,
}

impl<'a> RecordedStatus<'a> {
    fn new(id: &Hash, index: u64, outcome: &'a str, ledger_time: u64) -> RecordedStatus<'a> {
        RecordedStatus {
            id: hex::encode(id),
            status: if outcome == Outcome::Applied.code() {
                "committed"
            } else {
                "rejected"
            },
            index,
            outcome,
            ledger_time,
        }
    }
}

fn committed_status(shared: &Shared, id: &Hash, index: u64) -> ApiResult<Response> {
    let (_, leaf) = query::record(&shared.store, index)?;
    let status = RecordedStatus::new(id, index, leaf.outcome.code(), leaf.time);
    Ok(Json(status).into_response())
}

async fn submit(
    State(shared): S,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<SubmitParams>,
    body: Body,
) -> ApiResult<Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/cose") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the COSE_Sign1 transaction with Content-Type: application/cose",
        ));
    }
    let max_tx_bytes = shared.view.read().expect("view lock").config.max_tx_bytes;
    let limit = usize::try_from(max_tx_bytes).unwrap_or(MAX_BODY);
    let body = read_limited(&headers, body, limit.min(MAX_BODY)).await?;
    metrics::counter!("comity_tx_received_total").increment(1);
    let bytes = body.to_vec();
    let (id, admission) = ingress::admit(&shared, &bytes).await?;
    let rx = match admission {
        Admission::Known(index) => return committed_status(&shared, &id, index),
        Admission::Queued(rx, fresh) => {
            if fresh {
                ingress::hand_over(&shared, id, bytes)?;
            }
            rx
        }
    };
    let pending = || {
        (
            StatusCode::ACCEPTED,
            Json(json!({"id": hex::encode(id), "status": "pending"})),
        )
            .into_response()
    };
    if params.wait == Some(false) {
        return Ok(pending());
    }
    match tokio::time::timeout(Duration::from_millis(shared.limits.commit_wait_ms), rx).await {
        Ok(Ok(Ok(o))) => {
            Ok(Json(RecordedStatus::new(&id, o.index, &o.outcome, o.time)).into_response())
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) | Err(_) => Ok(pending()),
    }
}

async fn tx_status(State(shared): S, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    let id = parse_hash(&id)?;
    let r = shared.store.read()?;
    if let Some(index) = query::tx_index(&r, &id)? {
        return committed_status(&shared, &id, index);
    }
    let status = if shared.pending.contains(&id) {
        "pending"
    } else {
        "unknown"
    };
    Ok(Json(json!({"id": hex::encode(id), "status": status})).into_response())
}

#[derive(Deserialize)]
struct ReceiptParams {
    body: Option<bool>,
    /// Hold the request up to this long (max 10 s) until the receipt exists.
    wait_ms: Option<u64>,
}

impl ReceiptParams {
    /// Who asks for the transaction with the receipt, if the receipt is to
    /// carry it. A receipt without it proves only the leaf (digest,
    /// outcome, time) and is public; the transaction itself is shown to
    /// members and users only, as in the ledger entries.
    fn body(&self, shared: &Shared, who: ClientIdentity) -> ApiResult<Option<TxReader>> {
        if !self.body.unwrap_or(true) {
            return Ok(None);
        }
        TxReader::authorize(shared, who)
            .map(Some)
            .map_err(with_body_hint)
    }
}

fn with_body_hint(e: ApiError) -> ApiError {
    ApiError::new(
        e.status,
        e.code,
        format!(
            "{}; a receipt with body=false proves the entry without showing the transaction",
            e.message
        ),
    )
}

/// Refuses a receipt body the reader may not see.
fn check_body(shared: &Shared, reader: Option<TxReader>, index: u64) -> ApiResult<()> {
    match reader {
        Some(r) if !r.may_read(&shared.store, index)? => Err(with_body_hint(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this is another identity's notary or kv transaction: a document's parties read it through the notary API",
        ))),
        _ => Ok(()),
    }
}

/// Longest a receipt request may be held open.
const MAX_RECEIPT_WAIT: Duration = Duration::from_secs(10);
/// How often a held receipt request looks again without a new final checkpoint.
const RECEIPT_RECHECK: Duration = Duration::from_millis(250);

fn receipt_pending() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"code": "pending", "message": "no final checkpoint covers this entry yet; retry shortly"})),
    )
        .into_response()
}

fn receipt_response(shared: &Shared, index: u64, body: bool) -> ApiResult<Response> {
    match query::receipt(&shared.store, index, body)? {
        Some(r) => Ok(([(header::CONTENT_TYPE, "application/cose")], r.to_cose()).into_response()),
        None => Ok(receipt_pending()),
    }
}

async fn tx_receipt(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReceiptParams>,
) -> ApiResult<Response> {
    let reader = params.body(&shared, who)?;
    let body = reader.is_some();
    let id = parse_hash(&id)?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(params.wait_ms.unwrap_or(0)).min(MAX_RECEIPT_WAIT);
    let mut applied = shared.applied.subscribe();
    let mut index = None;
    // The latest final checkpoint when the receipt was last looked for, and when.
    let mut tried: Option<(Option<u64>, tokio::time::Instant)> = None;
    loop {
        let fin = {
            let r = shared.store.read()?;
            if index.is_none() {
                index = query::tx_index(&r, &id)?;
                match index {
                    Some(i) => check_body(&shared, reader, i)?,
                    None if !shared.pending.contains(&id) => {
                        return Err(ApiError::not_found("unknown transaction"))
                    }
                    None => {}
                }
            }
            query::latest_final_seq(&r)?
        };
        // Most applies finalize nothing: look again only when a checkpoint
        // became final, or now and then (a node-set change's endorsement can
        // complete a receipt without one).
        let now = tokio::time::Instant::now();
        if let Some(index) = index {
            if tried.is_none_or(|(f, at)| f != fin || now - at >= RECEIPT_RECHECK) {
                tried = Some((fin, now));
                if let Some(r) = query::receipt(&shared.store, index, body)? {
                    return Ok(
                        ([(header::CONTENT_TYPE, "application/cose")], r.to_cose()).into_response()
                    );
                }
            }
        }
        // Wait for the next apply (a checkpoint signature may make it
        // final), or give up: at the deadline, or when applying has stopped
        // (shutdown), which would otherwise wake this loop at once forever.
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Ok(receipt_pending()),
        }
    }
}

async fn ledger_receipt(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(index): ApiPath<u64>,
    ApiQuery(params): ApiQuery<ReceiptParams>,
) -> ApiResult<Response> {
    // Walking every index would list who transacted when: unlike a receipt
    // asked for by transaction id (the id is the capability), this needs an
    // identity even without the body.
    let me = TxReader::authorize(&shared, who)?;
    let reader = params.body.unwrap_or(true).then_some(me);
    if index >= shared.store.read()?.ledger_len()? {
        return Err(ApiError::not_found("no ledger entry at that index"));
    }
    check_body(&shared, reader, index)?;
    receipt_response(&shared, index, reader.is_some())
}

pub(crate) fn checkpoint_json(cp: &SignedCheckpoint) -> Value {
    let c = &cp.checkpoint;
    json!({
        "network_id": hex::encode(c.network_id),
        "seq": c.seq,
        "size": c.size,
        "tx_root": hex::encode(c.tx_root),
        "state_root": hex::encode(c.state_root),
        "time": c.time,
        "version": c.version,
        "signers": cp.signers.iter().map(hex::encode).collect::<Vec<_>>(),
        "signed": hex::encode(query::checkpoint_cose(cp)),
        "chain": cp.chain.iter().flatten().map(hex::encode).collect::<Vec<_>>(),
    })
}

async fn checkpoint(State(shared): S) -> ApiResult<Json<Value>> {
    let r = shared.store.read()?;
    let cp =
        query::latest_final(&r)?.ok_or_else(|| ApiError::unavailable("no final checkpoint yet"))?;
    if cp.chain.is_none() {
        return Err(ApiError::unavailable(
            "the node set changed and the change is not yet endorsed; retry shortly",
        ));
    }
    Ok(Json(checkpoint_json(&cp)))
}

#[derive(Deserialize)]
struct EvidenceParams {
    /// Resume after this node id (hex) and sequence number, as `next` gave them.
    after_node: Option<String>,
    after_seq: Option<u64>,
    limit: Option<usize>,
}

/// Most evidence records in one answer.
const EVIDENCE_PAGE_MAX: usize = 1000;

/// Conflicting checkpoint signatures this node has kept: each pair proves,
/// with the signer's public key alone, that one node signed two different
/// checkpoints for one sequence number.
async fn evidence(
    State(shared): S,
    ApiQuery(q): ApiQuery<EvidenceParams>,
) -> ApiResult<Json<Value>> {
    let after = match (q.after_node, q.after_seq) {
        (Some(node), Some(seq)) => Some((parse_hash(&node)?, seq)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "bad_args",
                "give after_node and after_seq together",
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, EVIDENCE_PAGE_MAX);
    let found = query::evidence(&shared.store.read()?, after, limit)?;
    let next = found
        .last()
        .filter(|_| found.len() == limit)
        .map(|e| json!({"after_node": hex::encode(e.node), "after_seq": e.seq}));
    let items: Vec<Value> = found.iter().map(evidence_json).collect();
    Ok(Json(json!({"evidence": items, "next": next})))
}

/// One evidence record: both signatures in hex, with the signed bodies' fields for reading.
fn evidence_json(e: &query::Evidence) -> Value {
    let signature = |(body, sig): &(Vec<u8>, Vec<u8>)| {
        let cp = Checkpoint::from_cbor(body).ok();
        json!({
            "body": hex::encode(body),
            "signature": hex::encode(sig),
            "size": cp.as_ref().map(|c| c.size),
            "tx_root": cp.as_ref().map(|c| hex::encode(c.tx_root)),
            "state_root": cp.as_ref().map(|c| hex::encode(c.state_root)),
            "time": cp.as_ref().map(|c| c.time),
        })
    };
    json!({
        "node": hex::encode(e.node),
        "seq": e.seq,
        "signatures": e.signatures.iter().map(signature).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct Range {
    from: u64,
    to: u64,
}

async fn consistency(State(shared): S, ApiQuery(q): ApiQuery<Range>) -> ApiResult<Json<Value>> {
    let Range { from, to } = q;
    let len = shared.store.read()?.ledger_len()?;
    if from == 0 || from > to || to > len {
        return Err(ApiError::bad_request(
            "bad_range",
            format!("need 0 < from <= to <= {len}"),
        ));
    }
    let proof = shared.store.consistency_proof(from, to)?;
    Ok(Json(json!({
        "from": from,
        "to": to,
        "from_root": hex::encode(shared.store.tree_root_at(from)?),
        "to_root": hex::encode(shared.store.tree_root_at(to)?),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct Page {
    from: u64,
    count: Option<u64>,
}

/// Ledger records as a CBOR array, for auditors.
/// Whole ledger entries, transactions included: for members and users
/// (an auditor without an identity audits a copy of the ledger files).
async fn entries(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiQuery(q): ApiQuery<Page>,
) -> ApiResult<Response> {
    let reader = TxReader::authorize(&shared, who)?;
    let Page { from, count } = q;
    let len = shared.store.read()?.ledger_len()?;
    let count = count
        .unwrap_or(100)
        .min(MAX_PAGE)
        .min(len.saturating_sub(from));
    let store = shared.store.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, comity_store::StoreError> {
        let mut records = Vec::new();
        let mut n = 0;
        for i in from..from + count {
            if n > 0 && records.len() >= MAX_PAGE_BYTES {
                break;
            }
            records.extend(reader.view(store.record(i)?, i)?);
            n += 1;
        }
        Ok([cbor_array_header(n), records].concat())
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], body).into_response())
}

fn cbor_array_header(n: u64) -> Vec<u8> {
    match n {
        0..=23 => vec![0x80 | n as u8],
        24..=0xff => vec![0x98, n as u8],
        0x100..=0xffff => [vec![0x99], (n as u16).to_be_bytes().to_vec()].concat(),
        _ => [vec![0x9a], (n as u32).to_be_bytes().to_vec()].concat(),
    }
}

async fn size(State(shared): S) -> ApiResult<Json<Value>> {
    let len = shared.store.read()?.ledger_len()?;
    let root = if len == 0 {
        comity_core::merkle::empty_root()
    } else {
        shared.store.tree_root_at(len)?
    };
    Ok(Json(json!({"size": len, "tx_root": hex::encode(root)})))
}

/// Non-public reads need a client certificate of a current key of a member
/// (active, or accepted and about to acknowledge) or an active user.
pub(crate) fn authorize(shared: &Shared, who: ClientIdentity) -> ApiResult<Hash> {
    Ok(TxReader::authorize(shared, who)?.id)
}

/// [`authorize`], also telling whether the caller is a member.
pub(crate) fn authorize_member(shared: &Shared, who: ClientIdentity) -> ApiResult<(Hash, bool)> {
    let r = TxReader::authorize(shared, who)?;
    Ok((r.id, r.member))
}

/// A member or active user reading whole transactions (ledger entries,
/// receipts with their transaction).
#[derive(Clone, Copy)]
struct TxReader {
    id: Hash,
    member: bool,
}

impl TxReader {
    /// The caller, if its client certificate is the current key of a member
    /// or an active user.
    fn authorize(shared: &Shared, who: ClientIdentity) -> ApiResult<TxReader> {
        let (id, role) = authorize_role(shared, who)?;
        Ok(TxReader {
            id,
            member: role == registry::Role::Member,
        })
    }

    /// Members audit the whole ledger; users see all but other identities'
    /// notary and kv transactions ([`query::user_may_read`]).
    fn may_read(&self, store: &comity_store::Store, index: u64) -> ApiResult<bool> {
        if self.member {
            return Ok(true);
        }
        let (rec, leaf) = query::record(store, index)?;
        Ok(query::user_may_read(&rec, &leaf, &self.id))
    }

    /// Raw record `raw` at `index` as this reader may see it.
    fn view(&self, raw: Vec<u8>, index: u64) -> Result<Vec<u8>, comity_store::StoreError> {
        if self.member {
            Ok(raw)
        } else {
            query::user_view(raw, index, &self.id)
        }
    }
}

fn authorize_role(shared: &Shared, who: ClientIdentity) -> ApiResult<(Hash, registry::Role)> {
    let fp = who.0.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this read needs a TLS client certificate of a registered identity",
        )
    })?;
    let r = shared.store.read()?;
    // A rotated identity presents its new key, whose hash is not the identity id.
    let id = comity_apps::gov::state::key_owner(&r, &fp)?.unwrap_or(fp);
    match registry::get(&r, &id)? {
        Some(i)
            if i.may_sign()
                && comity_core::crypto::sha256(i.current_key()) == fp
                && matches!(i.role, registry::Role::Member | registry::Role::User) =>
        {
            Ok((id, i.role))
        }
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the client certificate is not the current key of a member or active user",
        )),
    }
}

fn hex_opt(v: Option<Vec<u8>>) -> Value {
    v.map(|b| Value::String(hex::encode(b)))
        .unwrap_or(Value::Null)
}

/// `?owner=` of a kv read.
#[derive(Deserialize)]
struct OwnerParam {
    owner: Option<String>,
}

/// Whose kv key space a read is about: the caller's own, or, for a member
/// (members audit), the identity named by `owner`.
fn kv_owner(shared: &Shared, who: ClientIdentity, owner: Option<&str>) -> ApiResult<Hash> {
    let (id, member) = authorize_member(shared, who)?;
    let Some(owner) = owner else {
        return Ok(id);
    };
    let owner = parse_hash(owner)?;
    if owner != id && !member {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a user reads its own kv keys only; members read any identity's",
        ));
    }
    Ok(owner)
}

async fn kv_get(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(params): ApiQuery<OwnerParam>,
) -> ApiResult<Json<Value>> {
    let owner = kv_owner(&shared, who, params.owner.as_deref())?;
    let skey = keys::kv(&owner, &key);
    let latest = shared.store.read()?.get(&skey)?;
    let proved = query::proved_state(&shared.store, &skey)?
        .ok_or_else(|| ApiError::unavailable("no final checkpoint yet"))?;
    Ok(Json(json!({
        "owner": hex::encode(owner),
        "key": key,
        "value_hex": hex_opt(proved.value),
        "checkpoint": checkpoint_json(&proved.checkpoint),
        "state_key_hex": hex::encode(&skey),
        "state_proof": hex::encode(&proved.proof),
        "latest_value_hex": hex_opt(latest),
    })))
}

/// Most versions in one page of a key's history.
const MAX_HISTORY: usize = 1000;

#[derive(Deserialize)]
struct HistoryParams {
    /// Ledger index of the last version of the previous page.
    after: Option<u64>,
    limit: Option<usize>,
    /// Whose key (see [`kv_owner`]).
    owner: Option<String>,
}

/// A key's versions, oldest first, a page at a time: a page ends after
/// `limit` versions or once its transactions pass [`MAX_PAGE_BYTES`], and `next`
/// is the `after` of the following page, `null` on the last one.
async fn kv_history(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> ApiResult<Json<Value>> {
    let owner = kv_owner(&shared, who, params.owner.as_deref())?;
    let limit = params.limit.unwrap_or(MAX_HISTORY).clamp(1, MAX_HISTORY);
    let from = match params.after {
        Some(i) => i.saturating_add(1),
        None => 0,
    };
    // One more than the page holds tells whether another page follows.
    let indexes = query::kv_history(&shared.store.read()?, &owner, &key, from, limit + 1)?;
    let mut versions = Vec::new();
    let (mut bytes, mut next) = (0, None);
    for (n, &index) in indexes.iter().enumerate() {
        if n == limit || (n > 0 && bytes >= MAX_PAGE_BYTES) {
            next = Some(indexes[n - 1]);
            break;
        }
        let (rec, leaf) = query::record(&shared.store, index)?;
        bytes += rec.body.len();
        let tx = comity_core::tx::Tx::parse(&rec.body).map_err(ApiError::internal)?;
        let value = comity_core::cbor::MapView::new(&tx.payload.args)
            .ok()
            .and_then(|m| m.bytes("value").ok().map(<[u8]>::to_vec));
        versions.push(json!({
            "index": index,
            "tx": hex::encode(leaf.digest),
            "op": tx.payload.op,
            "time": leaf.time,
            "signer": hex::encode(tx.kid),
            "value_hex": hex_opt(value),
        }));
    }
    Ok(Json(
        json!({"owner": hex::encode(owner), "key": key, "versions": versions, "next": next}),
    ))
}

async fn identity(State(shared): S) -> ApiResult<Json<Value>> {
    let id = crate::network_identity(&shared.store)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unavailable("the network has no genesis yet"))?;
    Ok(Json(serde_json::to_value(id).map_err(ApiError::internal)?))
}

/// The trusted node set now (the checkpoint signers and accepted peers):
/// what a joining node needs to recognise the others.
async fn trusted_nodes(State(shared): S) -> ApiResult<Json<Value>> {
    let view = shared.view();
    if view.network_id.is_none() {
        return Err(ApiError::unavailable("the network has no genesis yet"));
    }
    Ok(Json(json!({
        "network_id": view.network_id.map(hex::encode),
        "nodes": serde_json::to_value(&*view.nodes).map_err(ApiError::internal)?,
    })))
}

async fn health(State(shared): S) -> ApiResult<Response> {
    let m = shared.raft.metrics().borrow().clone();
    let r = shared.store.read()?;
    let diverged = shared.diverged.load(std::sync::atomic::Ordering::SeqCst);
    let view = shared.view();
    let (time, genesis) = (view.ledger_time, view.network_id.is_some());
    // A leader that has not heard from a quorum for a while may be cut off.
    let voters = m.membership_config.membership().voter_ids().count();
    let cut_off = m.current_leader == Some(m.id)
        && voters > 1
        && m.millis_since_quorum_ack.is_none_or(|ms| ms > 2_000);
    // Raft stopped for good (a storage error): the last metrics stay as they were.
    let stopped = m.running_state.is_err() || m.state == openraft::ServerState::Shutdown;
    let status = if stopped {
        "stopped"
    } else if diverged {
        "diverged"
    } else if !genesis || m.current_leader.is_none() {
        "starting"
    } else if cut_off {
        "no_quorum"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // How far receipts reach: the latest checkpoint a quorum has signed.
    let last_final = query::latest_final_checkpoint(&r)?;
    let last = m.last_log_index.unwrap_or(0);
    // On the leader: how far each follower's log is behind (entries).
    let followers: serde_json::Map<String, Value> = m
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != m.id)
        .map(|(id, matched)| {
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            (
                id.to_string(),
                json!({ "matched_index": matched.map(|l| l.index), "lag": lag }),
            )
        })
        .collect();
    let nodes: Vec<Value> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| {
            let voter = m
                .membership_config
                .membership()
                .get_joint_config()
                .iter()
                .any(|c| c.contains(id));
            json!({ "id": id, "address": n.addr, "voter": voter })
        })
        .collect();
    let body = json!({
        "status": status,
        "node_id": m.id,
        "node_identity": hex::encode(shared.node_identity),
        "role": format!("{:?}", m.state).to_lowercase(),
        "term": m.current_term,
        "leader": m.current_leader,
        "last_log_index": m.last_log_index,
        "commit_index": shared.log.committed_index(),
        "applied_index": m.last_applied.map(|l| l.index),
        "ledger_size": r.ledger_len()?,
        "ledger_time": time,
        "final_size": last_final.as_ref().map(|c| c.size),
        "final_time": last_final.as_ref().map(|c| c.time),
        "pending": shared.pending.len(),
        "evidence": query::evidence_count(&r, EVIDENCE_PAGE_MAX)?,
        "join_requests": comity_apps::join::pending_nodes(&r)?,
        "uptime_ms": shared.started.elapsed().as_millis() as u64,
        "followers": followers,
        "members": nodes,
    });
    Ok((code, Json(body)).into_response())
}

async fn metrics(State(shared): S) -> ApiResult<Response> {
    let r = shared.store.read()?;
    let len = r.ledger_len()?;
    metrics::gauge!("comity_ledger_size").set(len as f64);
    // Receipts exist only up to the latest final checkpoint: its size and
    // age show a backlog, or a quorum of signers gone, before clients do.
    if let Some(cp) = query::latest_final_checkpoint(&r)? {
        metrics::gauge!("comity_checkpoint_final_size").set(cp.size as f64);
        let age_ms = crate::ingress::now_ms().saturating_sub(cp.time);
        metrics::gauge!("comity_checkpoint_final_age_seconds").set(age_ms as f64 / 1000.0);
    }
    drop(r);
    metrics::gauge!("comity_pending_txs").set(shared.pending.len() as f64);
    let m = shared.raft.metrics().borrow().clone();
    metrics::gauge!("comity_raft_term").set(m.current_term as f64);
    metrics::gauge!("comity_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
    metrics::gauge!("comity_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("comity_raft_commit_index")
        .set(shared.log.committed_index().unwrap_or(0) as f64);
    metrics::gauge!("comity_raft_is_leader")
        .set(f64::from(u8::from(m.current_leader == Some(m.id))));
    for (id, matched) in m
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != m.id)
    {
        let lag = m
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(matched.map_or(0, |l| l.index));
        metrics::gauge!("comity_raft_follower_lag", "follower" => id.to_string()).set(lag as f64);
    }
    let text = shared
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// Every handler that reads a body answers a body it cannot take with
    /// a JSON error, as the other extractors do.
    #[tokio::test]
    async fn body_rejections_are_json_errors() {
        let app = Router::new()
            .route(
                "/",
                post(|ApiBody(b): ApiBody| async move { b.len().to_string() }),
            )
            .layer(DefaultBodyLimit::max(16));
        let call = |body: Vec<u8>| {
            let req = axum::http::Request::post("/")
                .body(Body::from(body))
                .unwrap();
            app.clone().oneshot(req)
        };
        let ok = call(vec![1; 16]).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let big = call(vec![1; 17]).await.unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = axum::body::to_bytes(big.into_body(), 1 << 16)
            .await
            .unwrap();
        let err: Value = serde_json::from_slice(&bytes).expect("a JSON error");
        assert_eq!(err["code"], "too_large");
        assert!(err["message"].is_string());
    }

    /// A body that never arrives.
    struct Stall;

    impl axum::body::HttpBody for Stall {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    /// A transaction body is refused from its announced length before any
    /// of it is read, cut off past the limit, and given up on when it stalls.
    #[tokio::test(start_paused = true)]
    async fn transaction_bodies_are_bounded_in_size_and_time() {
        // A large declared body (a peer's 96 MiB append) gets longer.
        assert_eq!(body_deadline(None), BODY_TIMEOUT);
        assert_eq!(
            body_deadline(Some(96 << 20)),
            BODY_TIMEOUT + Duration::from_secs(384)
        );
        let mut headers = HeaderMap::new();
        let e = read_limited(&headers, Body::new(Stall), 1024)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::REQUEST_TIMEOUT, "timeout")
        );
        headers.insert(header::CONTENT_LENGTH, "2048".parse().unwrap());
        let e = read_limited(&headers, Body::new(Stall), 1024)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        let e = read_limited(&HeaderMap::new(), Body::from(vec![0u8; 2048]), 1024)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, &*e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        let ok = read_limited(&HeaderMap::new(), Body::from(vec![0u8; 1024]), 1024).await;
        assert_eq!(ok.unwrap().len(), 1024);
    }
}
