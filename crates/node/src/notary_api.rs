//! Notary reads: documents by id or digest with state proofs, listings by
//! party, matter, status and time in pages, each document's hash-chained
//! events with their receipts, collections, and the node-local personal data
//! that a record commits to by digest. See docs/api.md ("Notary").

use crate::api::{authorize, parse_hash, read_limited, ApiPath, ApiQuery, S};
use crate::error::{ApiError, ApiResult};
use crate::gov_api::{proof_json, proved_json};
use crate::server::ClientIdentity;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use comity_apps::keys;
use comity_apps::notary::document::{self, Document, Status};
use comity_apps::notary::query::{self as nquery, Filter};
use comity_apps::notary::{collection, event};
use comity_apps::query;
use comity_core::crypto::sha256;
use comity_core::Hash;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const MAX_LIST: usize = 500;
/// Largest personal-data blob a node keeps for a document.
pub const MAX_PERSONAL: usize = 64 * 1024;
/// Personal-data writes at once: each holds the store's write lock, which
/// apply needs too, until it is fsynced.
static PERSONAL_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub fn routes() -> Router<Arc<crate::Shared>> {
    Router::new()
        .route("/v1/notary/documents", get(list))
        .route("/v1/notary/documents/{id}", get(document))
        .route("/v1/notary/documents/{id}/events", get(doc_events))
        .route(
            "/v1/notary/documents/{id}/personal",
            get(personal_get).put(personal_put),
        )
        .route("/v1/notary/digests/{digest}", get(by_digest))
        .route("/v1/notary/tx/{id}", get(of_tx))
        .route("/v1/notary/collections/{id}", get(collection))
        .route("/v1/notary/collections/{id}/events", get(collection_events))
}

fn doc_json(d: &Document) -> ApiResult<Value> {
    serde_json::to_value(d).map_err(ApiError::internal)
}

fn load(shared: &crate::Shared, id: &Hash) -> ApiResult<Option<Document>> {
    Ok(document::load(&shared.store.read()?, id)?)
}

/// A record is shown only to the identities it names or who acted on it
/// ([`Document::may_read`]): one party never sees what it is not party to,
/// nor learns that it exists (the answer is the same as for no record).
fn readable(d: Option<Document>, me: &Hash) -> ApiResult<Document> {
    d.filter(|d| d.may_read(me)).ok_or_else(|| {
        ApiError::not_found(
            "no document with that id is shown to you (a document is readable only by its registrant, custodian, parties and named approvers, and by those who acted on it)",
        )
    })
}

/// The record, proved against the latest final checkpoint.
fn proved(shared: &crate::Shared, d: &Document) -> ApiResult<Value> {
    Ok(json!({
        "document": doc_json(d)?,
        "proof": proof_json(shared, &keys::notary_doc(&d.id.0))?,
    }))
}

async fn document(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let d = readable(load(&shared, &parse_hash(&id)?)?, &me)?;
    Ok(Json(proved(&shared, &d)?))
}

/// Lookup by digest: the record's key follows from the digest
/// (`document::id_of`), so its proof is also the proof of the lookup.
async fn by_digest(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(digest): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let id = document::id_of(&parse_hash(&digest)?);
    // A record the caller may not read is not confirmed to exist either.
    let d = document::load(&shared.store.read()?, &id)?
        .filter(|d| d.may_read(&me))
        .ok_or_else(|| {
            ApiError::not_found("no document registered with that digest is shown to you")
        })?;
    Ok(Json(proved(&shared, &d)?))
}

/// Which document a notary transaction concerned (a duplicate registration
/// names the existing record).
async fn of_tx(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(tx): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let tx = parse_hash(&tx)?;
    let shown = match nquery::document_of_tx(&shared.store, &tx)? {
        Some(id)
            if document::load(&shared.store.read()?, &id)?.is_some_and(|d| d.may_read(&me)) =>
        {
            Some(id)
        }
        _ => None,
    };
    let id = shown.ok_or_else(|| {
        ApiError::not_found(
            "no applied notary transaction with that id concerns a document shown to you",
        )
    })?;
    Ok(Json(
        json!({"tx": hex::encode(tx), "document": hex::encode(id)}),
    ))
}

#[derive(Deserialize)]
struct ListParams {
    party: Option<String>,
    matter: Option<String>,
    status: Option<String>,
    from_time: Option<u64>,
    to_time: Option<u64>,
    after: Option<String>,
    limit: Option<usize>,
}

fn parse_status(s: &str) -> ApiResult<Status> {
    Status::parse(s).ok_or_else(|| {
        ApiError::bad_request(
            "malformed",
            "status is one of draft, executed, amended, expired, revoked, destroyed",
        )
    })
}

async fn list(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let time = q.from_time.is_some() || q.to_time.is_some();
    let filter = match (&q.party, &q.matter, time) {
        (Some(p), None, false) => Filter::Party(parse_hash(p)?),
        (None, Some(m), false) => Filter::Matter(m.clone()),
        (None, None, _) => match status {
            Some(s) if !time => Filter::Status(s),
            _ => Filter::Time {
                from: q.from_time.unwrap_or(0),
                to: q.to_time.unwrap_or(u64::MAX),
            },
        },
        _ => {
            return Err(ApiError::bad_request(
                "malformed",
                "filter by one of party, matter or a time range (status may be added to any)",
            ))
        }
    };
    // A cursor serves only the listing it came from.
    let listing = serde_json::to_vec(&(
        hex::encode(me),
        &q.party,
        &q.matter,
        &q.status,
        q.from_time,
        q.to_time,
    ))
    .expect("encoding strings and numbers cannot fail");
    let after = q
        .after
        .as_deref()
        .map(|c| shared.cursors.open(&listing, c))
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let page = nquery::documents(
        &shared.store.read()?,
        &filter,
        status,
        &me,
        after.as_deref(),
        limit,
    )?;
    let items = page
        .items
        .iter()
        .map(doc_json)
        .collect::<ApiResult<Vec<_>>>()?;
    let next = page.next.map(|k| shared.cursors.seal(&listing, &k));
    Ok(Json(json!({"items": items, "next": next})))
}

#[derive(Deserialize)]
struct EventParams {
    from: Option<u64>,
    limit: Option<usize>,
}

/// Whether `me` may see the transaction at `index` whole: they signed it,
/// or may read every document it names (an amendment names its new version
/// too, which a reader of the old one need not be party to).
fn tx_shown(shared: &crate::Shared, index: u64, me: &Hash) -> ApiResult<bool> {
    let (rec, leaf) = query::record(&shared.store, index)?;
    if leaf.signer.as_ref().is_some_and(|(s, _)| s == me) {
        return Ok(true);
    }
    let Ok(tx) = comity_core::tx::Tx::parse(&rec.body) else {
        return Ok(false);
    };
    let r = shared.store.read()?;
    for id in comity_apps::notary::documents_named(&tx.payload.op, &tx.payload.args) {
        if !document::load(&r, &id)?.is_some_and(|d| d.may_read(me)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A subject's events from `from`, each with its hash, exact bytes and
/// receipt (with the transaction when [`tx_shown`] to `me`). Off the async
/// threads: each receipt reads records and proofs.
async fn events_json(
    shared: Arc<crate::Shared>,
    subject: Hash,
    q: EventParams,
    me: Hash,
) -> ApiResult<Json<Value>> {
    tokio::task::spawn_blocking(move || events_page(&shared, &subject, &q, &me).map(Json))
        .await
        .map_err(ApiError::internal)?
}

fn events_page(
    shared: &crate::Shared,
    subject: &Hash,
    q: &EventParams,
    me: &Hash,
) -> ApiResult<Value> {
    let limit = q.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    let stored = event::stored(&shared.store.read()?, subject, q.from.unwrap_or(0), limit)?;
    let (mut items, mut size) = (Vec::with_capacity(stored.len()), 0);
    for bytes in stored {
        // Each receipt may carry a transaction: a page ends early once it
        // holds as much as a ledger page (the next starts at the next `seq`).
        if size >= crate::api::MAX_PAGE_BYTES {
            break;
        }
        let e: event::Event = comity_core::cbor::from_slice(&bytes)
            .and_then(|v| comity_core::cbor::to_serde(&v))
            .map_err(ApiError::internal)?;
        let body = tx_shown(shared, e.index, me)?;
        let receipt =
            query::receipt(&shared.store, e.index, body)?.map(|r| hex::encode(r.to_cose()));
        size += 2 * bytes.len() + receipt.as_ref().map_or(0, String::len);
        items.push(json!({
            "hash": hex::encode(sha256(&bytes)),
            "event": e,
            "event_hex": hex::encode(&bytes),
            "receipt": receipt,
        }));
    }
    Ok(json!({"subject": hex::encode(subject), "items": items}))
}

async fn doc_events(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let d = readable(load(&shared, &parse_hash(&id)?)?, &me)?;
    events_json(shared, d.id.0, q, me).await
}

/// A collection is shown to its owner and to whoever may read all of its
/// documents (at most 256; an empty one only to its owner): it lists them
/// all. To anyone else it is as if there were none.
fn load_collection(
    shared: &crate::Shared,
    id: &str,
    me: &Hash,
) -> ApiResult<collection::Collection> {
    let r = shared.store.read()?;
    let c = collection::load(&r, &parse_hash(id)?)?;
    let shown = match &c {
        Some(c) => collection::readable_by(&r, c, me)?,
        None => false,
    };
    c.filter(|_| shown).ok_or_else(|| {
        ApiError::not_found(
            "no collection with that id is shown to you (a collection is readable only by its owner and by those who may read all of its documents)",
        )
    })
}

async fn collection(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let c = load_collection(&shared, &id, &me)?;
    let key = keys::notary_collection(&c.id.0);
    let mut proved = query::proved_state(&shared.store, &key)?;
    if let Some(p) = &proved {
        let then = p.value.as_deref();
        if !collection::proof_readable_by(&shared.store.read()?, &c, then, &me)? {
            proved = None;
        }
    }
    Ok(Json(json!({
        "collection": c,
        "proof": proved_json(&key, proved),
    })))
}

async fn collection_events(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Json<Value>> {
    let me = authorize(&shared, who)?;
    let c = load_collection(&shared, &id, &me)?;
    // Earlier orders may name documents taken out since, which a reader of
    // the current ones may not read.
    if c.owner.0 != me {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a collection's history is shown to its owner only: earlier orders may name documents you may not read",
        ));
    }
    events_json(shared, c.id.0, q, me).await
}

/// Personal data is for the people the record names: its registrant,
/// custodian and parties.
fn personal_reader(shared: &crate::Shared, who: ClientIdentity, id: &str) -> ApiResult<Document> {
    let me = authorize(shared, who)?;
    let d = readable(load(shared, &parse_hash(id)?)?, &me)?;
    if d.registrant.0 != me && d.custodian.0 != me && !d.is_party(&me) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "personal data is readable only by the document's registrant, custodian and parties",
        ));
    }
    Ok(d)
}

async fn personal_get(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let d = personal_reader(&shared, who, &id)?;
    if d.personal_erased {
        return Err(ApiError::new(
            StatusCode::GONE,
            "erased",
            "the personal data of this document was erased",
        ));
    }
    let blob = shared
        .store
        .read()?
        .aux_get(&keys::notary_personal(&d.id.0))?
        .ok_or_else(|| ApiError::not_found("this node holds no personal data for the document"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], blob).into_response())
}

/// Stores the blob whose SHA-256 the record names. It lives beside the state
/// on this node only (not in the ledger, not in the state root), so
/// `notary.metadata.erase` can delete it without breaking any proof.
async fn personal_put(
    axum::extract::State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    // Who asks is checked before a byte of the body is read, and the body
    // (its arrival time too) is bounded by the blob's limit.
    let d = personal_reader(&shared, who, &id)?;
    let body = read_limited(&headers, body, MAX_PERSONAL).await?;
    let Some(expected) = d.personal else {
        return Err(ApiError::bad_request(
            "no_personal_data",
            "the record commits to no personal data",
        ));
    };
    if d.personal_erased {
        return Err(ApiError::new(
            StatusCode::GONE,
            "erased",
            "the personal data of this document was erased",
        ));
    }
    let digest = sha256(&body);
    if digest != expected.0 {
        return Err(ApiError::bad_request(
            "digest_mismatch",
            format!(
                "the blob has SHA-256 {}, the record commits to {}",
                hex::encode(digest),
                hex::encode(expected.0)
            ),
        ));
    }
    let store = shared.store.clone();
    let id = d.id.0;
    // Each write excludes apply until it is fsynced: few at a time, and
    // none for a blob already stored.
    let writing = PERSONAL_WRITES
        .acquire()
        .await
        .expect("the semaphore is never closed");
    // Held by the write itself, which goes on if the client goes away.
    let stored = tokio::task::spawn_blocking(move || -> Result<bool, comity_store::StoreError> {
        let _writing = writing;
        if store
            .read()?
            .aux_get(&keys::notary_personal(&id))?
            .as_deref()
            == Some(&body[..])
        {
            return Ok(true);
        }
        let t = store.begin()?;
        {
            let mut b = t.batch()?;
            // Checked again inside the write transaction, which excludes apply:
            // an erasure applied meanwhile must not be undone.
            if document::load(&b, &id)?.is_none_or(|d| d.personal_erased) {
                return Ok(false);
            }
            b.aux_put(&keys::notary_personal(&id), &body)?;
        }
        // Durable at once: the client is told it is stored.
        t.commit(true)?;
        Ok(true)
    })
    .await
    .map_err(ApiError::internal)??;
    if !stored {
        return Err(ApiError::new(
            StatusCode::GONE,
            "erased",
            "the personal data of this document was erased",
        ));
    }
    Ok(Json(
        json!({"document": hex::encode(d.id.0), "sha256": hex::encode(digest)}),
    ))
}
