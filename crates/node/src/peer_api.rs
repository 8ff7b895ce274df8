//! The peer side of the HTTPS listener: Raft RPCs, transactions forwarded by
//! followers, and the read index. Only trusted nodes (by the key of their TLS
//! client certificate) may call these routes.

use crate::api::ApiBody;
use crate::error::{ApiError, ApiResult};
use crate::ingress::{self, Admission};
use crate::server::ClientIdentity;
use crate::Shared;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use comity_apps::command::MAX_ENTRY_TXS;
use comity_apps::query;
use comity_consensus::network::{
    array_len, path, raft_id, FinalCheckpoint, LedgerRequest, CONTENT_TYPE,
};
use comity_consensus::state_machine::{LEDGER_PAGE_BYTES, LEDGER_PAGE_RECORDS};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::Duration;

/// Largest peer message: an append request of 16 maximal Raft entries
/// (see `config::MAX_BATCH_BYTES`), with room to spare.
const MAX_PEER_BODY: usize = 96 << 20;
/// Largest snapshot accepted: one names a durable point in a few hundred bytes.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 20;
/// Largest batch a follower forwards (as many bytes as an entry may carry,
/// with room for their encoding): decoding a body costs a multiple of it.
const MAX_SUBMIT_BODY: usize = comity_apps::command::MAX_ENTRY_TX_BYTES + (1 << 20);
/// Largest body of the small requests (a vote, a page request, a read index).
const MAX_SMALL_BODY: usize = 64 << 10;
/// Most forwarded batches this node admits at once: decoding and checking
/// one takes a few times its body in memory. A follower retries when refused.
static SUBMITS_SERVED: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);
/// Most read-index calls this node serves at once: each makes the leader
/// send a heartbeat to every follower, so one faulty node could otherwise
/// open connections without end. Four followers asking their most (64
/// each, `READ_INDEX_CALLS`) fit.
static READ_INDEX_SERVED: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256);

type S = State<Arc<Shared>>;

/// What the leader says about each forwarded transaction.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    /// Committed (or already in the ledger); the forwarder answers from its own apply.
    Committed,
    /// Not committed: `(code, message)`.
    Failed(String, String),
    /// Refused at the leader's ingress, as it would have answered a client.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// The peer routes, behind a check of the caller's certificate that runs
/// before any body is read: only a trusted node may make this node buffer a
/// peer-sized body.
pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let small = || DefaultBodyLimit::max(MAX_SMALL_BODY);
    Router::new()
        .route(
            path::APPEND,
            post(append).layer(DefaultBodyLimit::max(MAX_PEER_BODY)),
        )
        .route(path::VOTE, post(vote).layer(small()))
        .route(
            path::SNAPSHOT,
            post(snapshot).layer(DefaultBodyLimit::max(
                MAX_SNAPSHOT_BYTES as usize + MAX_SMALL_BODY,
            )),
        )
        .route(path::LEDGER, post(ledger).layer(small()))
        .route(
            path::SUBMIT,
            post(submit).layer(DefaultBodyLimit::max(MAX_SUBMIT_BODY)),
        )
        .route(path::READ_INDEX, post(read_index).layer(small()))
        .route(path::CHECKPOINT, post(checkpoint).layer(small()))
        .route_layer(axum::middleware::from_fn_with_state(shared, peers_only))
}

async fn peers_only(
    State(shared): S,
    Extension(peer): Extension<ClientIdentity>,
    req: Request,
    next: Next,
) -> Response {
    match peer.0 {
        Some(fp) if (shared.trust)(&fp) => next.run(req).await,
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_peer",
            "peer routes need the TLS client certificate of a trusted node",
        )
        .into_response(),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    ciborium::from_reader(body).map_err(|e| ApiError::bad_request("malformed", e.to_string()))
}

fn reply<T: Serialize>(v: &T) -> Response {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encoding to memory");
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response()
}

/// A Raft message must come from the node it names (the leader or the
/// candidate): a trusted node may not speak for another.
fn from_sender(who: ClientIdentity, vote: &openraft::Vote<u64>) -> ApiResult<()> {
    let caller = who.0.map(|fp| raft_id(&fp));
    if caller.is_none() || vote.leader_id().voted_for() != caller {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_the_sender",
            "a Raft message must come from the node it names",
        ));
    }
    Ok(())
}

async fn append(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiBody(body): ApiBody,
) -> ApiResult<Response> {
    let t0 = std::time::Instant::now();
    let rpc: openraft::raft::AppendEntriesRequest<comity_consensus::TypeConfig> = decode(&body)?;
    from_sender(who, &rpc.vote)?;
    for e in &rpc.entries {
        if let openraft::EntryPayload::Normal(c) = &e.payload {
            c.check_shape().map_err(|m| {
                ApiError::bad_request("bad_entry", format!("entry {}: {m}", e.log_id.index))
            })?;
        }
    }
    let r = reply(&shared.raft.append_entries(rpc).await);
    metrics::histogram!("comity_append_serve_seconds").record(t0.elapsed().as_secs_f64());
    Ok(r)
}

async fn vote(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiBody(body): ApiBody,
) -> ApiResult<Response> {
    let rpc: openraft::raft::VoteRequest<u64> = decode(&body)?;
    from_sender(who, &rpc.vote)?;
    Ok(reply(&shared.raft.vote(rpc).await))
}

/// A snapshot from the leader: installing it replays the ledger records this
/// node lacks (fetched from peers), so the reply comes once that is done.
async fn snapshot(
    State(shared): S,
    Extension(who): Extension<ClientIdentity>,
    ApiBody(body): ApiBody,
) -> ApiResult<Response> {
    let rpc: openraft::raft::InstallSnapshotRequest<comity_consensus::TypeConfig> = decode(&body)?;
    from_sender(who, &rpc.vote)?;
    // A chunk far past the end would make the receiving buffer grow to its offset.
    let end = rpc.offset.saturating_add(rpc.data.len() as u64);
    if end > MAX_SNAPSHOT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a snapshot ends at byte {end}; at most {MAX_SNAPSHOT_BYTES} are accepted"),
        ));
    }
    Ok(reply(&shared.raft.install_snapshot(rpc).await))
}

/// Ledger records for a node catching up by snapshot: a bounded prefix of
/// the range asked for, as far as this node has them.
async fn ledger(State(shared): S, ApiBody(body): ApiBody) -> ApiResult<Response> {
    let req: LedgerRequest = decode(&body)?;
    let records = tokio::task::spawn_blocking(move || -> ApiResult<Vec<ByteBuf>> {
        let len = shared.store.read()?.ledger_len()?;
        let to = req
            .to
            .min(len)
            .min(req.from.saturating_add(LEDGER_PAGE_RECORDS));
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in req.from..to {
            let raw = shared.store.record(index)?;
            bytes += raw.len();
            out.push(ByteBuf::from(raw));
            if bytes >= LEDGER_PAGE_BYTES {
                break;
            }
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(reply(&records))
}

/// Final checkpoints looked at, newest first, for one whose node-set chain
/// is complete (a change is endorsed a few checkpoints after it applies).
const CHECKPOINTS_BACK: u64 = 1024;

/// The newest final checkpoint whose node-set chain is complete, if a
/// recent one is.
async fn checkpoint(State(shared): S) -> ApiResult<Response> {
    let cp = tokio::task::spawn_blocking(move || -> ApiResult<Option<FinalCheckpoint>> {
        let r = shared.store.read()?;
        let Some(latest) = query::latest_final_seq(&r)? else {
            return Ok(None);
        };
        for seq in (latest.saturating_sub(CHECKPOINTS_BACK)..=latest).rev() {
            let Some(cp) = query::signed_checkpoint(&r, seq)? else {
                continue;
            };
            if let (Some(chain), true) = (&cp.chain, query::is_final(&r, seq)?) {
                return Ok(Some(FinalCheckpoint {
                    size: cp.checkpoint.size,
                    signed: ByteBuf::from(query::checkpoint_cose(&cp)),
                    chain: chain.iter().cloned().map(ByteBuf::from).collect(),
                }));
            }
        }
        Ok(None)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(reply(&cp))
}

/// Admits forwarded transactions as if submitted here, and answers once each
/// is committed or has failed.
async fn submit(State(shared): S, ApiBody(body): ApiBody) -> ApiResult<Response> {
    if !shared.is_leader() {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_leader",
            "this node is not the leader",
        ));
    }
    let _serving = SUBMITS_SERVED
        .try_acquire()
        .map_err(|_| ApiError::unavailable("too many forwarded batches at once"))?;
    // Each element, were it empty, would still cost a buffer: the count is
    // checked before anything is decoded.
    if array_len(&body).is_none_or(|n| n > MAX_ENTRY_TXS as u64) {
        return Err(ApiError::bad_request(
            "malformed",
            format!("expected an array of at most {MAX_ENTRY_TXS} transactions"),
        ));
    }
    let txs: Vec<ByteBuf> = decode(&body)?;
    drop(body);
    // Checked side by side, so that their signatures are verified together,
    // then queued in their order (a client may send dependent ones).
    let mut checking = tokio::task::JoinSet::new();
    let n = txs.len();
    for (i, tx) in txs.into_iter().enumerate() {
        let shared = shared.clone();
        checking.spawn(async move {
            let bytes = tx.into_vec();
            let checked = ingress::check(&shared, &bytes).await;
            (i, bytes, checked)
        });
    }
    let mut checked: Vec<_> = (0..n).map(|_| None).collect();
    while let Some(done) = checking.join_next().await {
        let (i, bytes, c) = done.map_err(ApiError::internal)?;
        checked[i] = Some((bytes, c));
    }
    let waits: Vec<_> = checked
        .into_iter()
        .flatten()
        .map(|(bytes, c)| queue_forwarded(&shared, bytes, c))
        .collect();
    drop(_serving);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.limits.commit_wait_ms);
    let mut out = Vec::with_capacity(waits.len());
    for w in waits {
        out.push(match w {
            Err(f) => f,
            Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(_))) => Forwarded::Committed,
                Ok(Ok(Err(e))) => Forwarded::Failed(e.code.into_owned(), e.message),
                Ok(Err(_)) | Err(_) => Forwarded::Failed(
                    "pending".into(),
                    "not committed within the wait; check the transaction's status".into(),
                ),
            },
        });
    }
    Ok(reply(&out))
}

/// Queues one checked forwarded transaction: what to wait on, or the answer now.
fn queue_forwarded(
    shared: &Shared,
    bytes: Vec<u8>,
    checked: Result<ingress::Check, ApiError>,
) -> Result<ingress::Answer, Forwarded> {
    let refused = |e: ApiError| Forwarded::Refused {
        status: e.status.as_u16(),
        code: e.code.into_owned(),
        message: e.message,
    };
    let passed = match checked.map_err(refused)? {
        ingress::Check::Known(..) => return Err(Forwarded::Committed),
        ingress::Check::Passed(p) => p,
    };
    match ingress::queue(shared, passed).map_err(refused)? {
        (_, Admission::Known(_)) => Err(Forwarded::Committed),
        (id, Admission::Queued(rx, fresh)) => {
            if fresh {
                ingress::hand_over(shared, id, bytes).map_err(refused)?;
            }
            Ok(rx)
        }
    }
}

/// The log index a linearizable read must wait for, confirmed by a quorum.
async fn read_index(State(shared): S) -> ApiResult<Response> {
    let _serving = READ_INDEX_SERVED
        .try_acquire()
        .map_err(|_| ApiError::unavailable("too many read-index calls at once"))?;
    let id =
        shared.raft.ensure_linearizable().await.map_err(|e| {
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", e.to_string())
        })?;
    Ok(reply(&id.map_or(0, |l| l.index)))
}

/// Most read-index calls to the leader in flight from this node: clients
/// cause them, and each may hold a connection (one request at a time on
/// HTTP/1.1), which would otherwise take any number of file descriptors
/// from the node's reserve. Raft's own calls are not bounded by this.
static READ_INDEX_CALLS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

/// Waits until this node has applied everything committed before the call,
/// as confirmed by the leader and a quorum: a read after this is linearizable.
pub async fn linearize(shared: &Shared) -> ApiResult<()> {
    let timeout = Duration::from_secs(5);
    let index =
        match shared.leader() {
            Some((id, _)) if id == shared.node_id => {
                shared.raft.ensure_linearizable().await.map_err(|e| {
                    ApiError::unavailable(format!("could not confirm leadership: {e}"))
                })?;
                return Ok(());
            }
            Some((leader, addr)) => {
                let _call = READ_INDEX_CALLS.try_acquire().map_err(|_| {
                    ApiError::unavailable("too many linearizable reads waiting for the leader")
                })?;
                shared
                    .peers
                    .call::<_, u64>(Some(leader), &addr, path::READ_INDEX, &(), timeout)
                    .await
                    .map_err(|e| ApiError::unavailable(format!("linearizable read: {e}")))?
            }
            None => {
                return Err(ApiError::unavailable(
                    "no leader: a linearizable read is not possible now",
                ))
            }
        };
    shared
        .raft
        .wait(Some(timeout))
        .applied_index_at_least(Some(index), "linearizable read")
        .await
        .map_err(|e| ApiError::unavailable(format!("this node is behind the leader: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raft_message_must_come_from_the_node_it_names() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let from_a = openraft::Vote::new(3, raft_id(&a));
        assert!(from_sender(ClientIdentity(Some(a)), &from_a).is_ok());
        let e = from_sender(ClientIdentity(Some(b)), &from_a).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::FORBIDDEN, "not_the_sender")
        );
        assert!(from_sender(ClientIdentity(None), &from_a).is_err());
    }
}
