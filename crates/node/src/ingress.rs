//! Admission of submitted transactions: every check that can be made before
//! ordering, so that bad input is refused with a precise error and never
//! reaches the ledger; and the waiters that answer once a transaction commits.

use crate::error::ApiError;
use crate::Shared;
use axum::http::StatusCode;
use comity_apps::executor::{within_window, Verified};
use comity_apps::join::MAX_JOIN_BYTES;
use comity_apps::replay_filter::RecentIds;
use comity_apps::{codes, keys, registry};
use comity_consensus::TxOutcome;
use comity_core::crypto::{CryptoError, PublicKey};
use comity_core::tx::{Tx, TxError};
use comity_core::Hash;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Answered with the outcome once applied, or why the transaction was not.
pub type Waiter = oneshot::Sender<Result<TxOutcome, ApiError>>;

struct Pending {
    waiters: Vec<Waiter>,
    nonce: Vec<u8>,
    /// Size of the transaction, counted in [`PendingSet::bytes`].
    len: usize,
    /// A `node.join`: counted in [`PendingSet::joins`].
    join: bool,
}

/// Most clients waiting at once for one transaction's outcome (each resubmits
/// the same bytes): beyond it they are answered `pending` at once.
const MAX_WAITERS: usize = 64;

/// Transactions accepted but not yet applied.
#[derive(Default)]
pub struct PendingSet {
    by_id: Mutex<HashMap<Hash, Pending>>,
    nonces: Mutex<HashSet<Vec<u8>>>,
    /// Transactions parsed and verified here, so apply may skip both.
    verified: Mutex<HashMap<Hash, Verified>>,
    /// Join requests queued, which count against the pending nodes' cap
    /// before they are applied: anyone may send one.
    joins: AtomicUsize,
    /// Bytes of the transactions queued.
    bytes: AtomicUsize,
}

/// Answered once the transaction is applied (or given up on).
pub type Answer = oneshot::Receiver<Result<TxOutcome, ApiError>>;

pub enum Admission {
    /// Already in the ledger.
    Known(u64),
    /// Queued (or joined an identical queued transaction): wait on this.
    Queued(Answer, bool),
}

impl PendingSet {
    pub fn len(&self) -> usize {
        self.by_id.lock().expect("pending lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &Hash) -> bool {
        self.by_id.lock().expect("pending lock").contains_key(id)
    }

    /// The transactions waited for.
    pub fn ids(&self) -> Vec<Hash> {
        self.by_id
            .lock()
            .expect("pending lock")
            .keys()
            .copied()
            .collect()
    }

    pub fn joins(&self) -> usize {
        self.joins.load(Ordering::Relaxed)
    }

    pub fn take_verified(&self, id: &Hash) -> Option<Verified> {
        self.verified.lock().expect("verified lock").remove(id)
    }

    /// Answers everyone waiting for `id`.
    pub fn resolve(&self, id: &Hash, result: Result<TxOutcome, ApiError>) {
        let p = self.by_id.lock().expect("pending lock").remove(id);
        if let Some(p) = p {
            self.bytes.fetch_sub(p.len, Ordering::Relaxed);
            if p.join {
                self.joins.fetch_sub(1, Ordering::Relaxed);
            }
            self.nonces.lock().expect("nonce lock").remove(&p.nonce);
            self.verified.lock().expect("verified lock").remove(id);
            for w in p.waiters {
                let _ = w.send(result.clone());
            }
        }
    }
}

fn tx_error(e: TxError) -> ApiError {
    match e {
        TxError::Malformed(m) => ApiError::bad_request("malformed", m),
        TxError::UnsupportedAlg(m) => ApiError::bad_request(
            "unsupported_alg",
            format!("unsupported algorithm {m}; use EdDSA or ES256"),
        ),
        TxError::BadSignature(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not verify with the signer's registered key",
        ),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the ingress checks and queues the transaction for ordering. A
/// follower's forwarded transactions are checked again, their signatures
/// too: a faulty follower could otherwise put forgeries in the ledger,
/// rejected but naming their victim. Apply then skips the signatures
/// checked here, so this costs the leader nothing more.
pub async fn admit(shared: &Shared, bytes: &[u8]) -> Result<(Hash, Admission), ApiError> {
    match check(shared, bytes).await? {
        Check::Known(id, index) => Ok((id, Admission::Known(index))),
        Check::Passed(p) => queue(shared, p),
    }
}

/// What [`check`] found.
#[allow(clippy::large_enum_variant)] // made and consumed once per submission: a box would only add an allocation
pub enum Check {
    /// These bytes are already in the ledger, at this index.
    Known(Hash, u64),
    /// Every check passed: hand it to [`queue`].
    Passed(Passed),
}

/// A transaction that passed every ingress check.
pub struct Passed {
    tx: Tx,
    len: usize,
    /// The signer's key the signature was checked with.
    key: Vec<u8>,
    nonce_key: Vec<u8>,
    recent_ids: Arc<RecentIds>,
}

/// KiB of transactions checked at once. A transaction is decoded into a
/// tree many times its size, kept while its signature waits for the
/// verifier: many large ones at once could exhaust memory.
const CHECKING_KIB: u32 = 8 << 10;
static CHECKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CHECKING_KIB as usize);

/// Every check that can be made before ordering; queues nothing.
pub async fn check(shared: &Shared, bytes: &[u8]) -> Result<Check, ApiError> {
    let v = shared.view();
    let (max_bytes, window, net) = (v.config.max_tx_bytes, v.config.tx_window_ms, v.network_id);
    if bytes.len() as u64 > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "transaction is {} bytes; the limit is {max_bytes}",
                bytes.len()
            ),
        ));
    }
    let net = net.ok_or_else(|| ApiError::unavailable("the network has no genesis yet"))?;
    let kib = u32::try_from(bytes.len() >> 10).map_or(CHECKING_KIB, |k| (k + 1).min(CHECKING_KIB));
    let _checking = CHECKING
        .acquire_many(kib)
        .await
        .expect("the semaphore is never closed");
    let tx = Tx::parse(bytes).map_err(tx_error)?;
    // Anyone may send a join request: one too large is refused before any
    // lookup or signature check.
    if comity_apps::join::is_join(&tx) && bytes.len() > MAX_JOIN_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a join request is at most {MAX_JOIN_BYTES} bytes; this is {}",
                bytes.len()
            ),
        ));
    }
    if tx.payload.net != net {
        return Err(ApiError::bad_request(
            "wrong_network",
            format!(
                "transaction is for network {}, this is {}",
                hex::encode(tx.payload.net),
                hex::encode(net)
            ),
        ));
    }
    if let Some(index) = recorded(&v.recent_ids, &shared.store, &tx)? {
        return Ok(Check::Known(tx.id, index));
    }
    let reader = shared.store.read()?;
    let ident = registry::get_shared(&reader, &tx.kid)?
        .or_else(|| comity_apps::join::unregistered_signer(&tx))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "unknown_signer",
                format!(
                    "signer {} is not a registered identity",
                    hex::encode(tx.kid)
                ),
            )
        })?;
    let nonce_key = keys::nonce(&tx.kid, &tx.payload.nonce);
    let nonce_spent =
        v.spent_nonces.may_contain(&nonce_key) && reader.aux_get(&nonce_key)?.is_some();
    drop(reader);
    let key = PublicKey::from_spki_der(ident.current_key()).map_err(ApiError::internal)?;
    let good = key.alg() == tx.alg
        && shared
            .verifier
            .verify(key, tx.signed_data(), tx.signature().to_vec())
            .await;
    if !good {
        return Err(tx_error(TxError::BadSignature(CryptoError::BadSignature)));
    }
    // Only a signed transaction learns what its signer may not do.
    registry::authorize(&ident, &tx.payload.app, &tx.payload.op, v.open).map_err(|r| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            r.0,
            format!(
                "{} {} ({}) may not submit {}.{}",
                ident.role.as_str(),
                hex::encode(tx.kid),
                ident.status.as_str(),
                tx.payload.app,
                tx.payload.op
            ),
        )
    })?;
    match (tx.payload.app.as_str(), tx.payload.op.as_str()) {
        ("kv", op) => {
            comity_apps::kv::check_args(op, &tx.payload.args).map_err(|code| {
                ApiError::bad_request(code, format!("kv has put {{key, value}} and delete {{key}}, with a key of 1 to {} bytes and a value of at most {} bytes", comity_apps::kv::MAX_KEY_LEN, comity_apps::kv::MAX_VALUE_LEN))
            })?;
        }
        ("notary", op) => {
            comity_apps::notary::check_args(op, &tx.payload.args).map_err(|code| {
                ApiError::bad_request(
                    code,
                    format!("notary.{op}: arguments not of the shape docs/api.md gives"),
                )
            })?;
        }
        ("gov", "propose") => {
            comity_apps::gov::parse_proposal(&tx.payload.args)
                .map_err(|e| ApiError::bad_request("bad_args", format!("invalid proposal: {e}")))?;
        }
        ("node", "join") => {
            if let Err((code, why)) = comity_apps::join::admissible(&shared.store.read()?, &tx)? {
                let status = match code {
                    codes::BAD_ARGS => StatusCode::BAD_REQUEST,
                    codes::NOT_FOUND => StatusCode::NOT_FOUND,
                    codes::FORBIDDEN => StatusCode::FORBIDDEN,
                    _ => StatusCode::CONFLICT,
                };
                return Err(ApiError::new(
                    status,
                    code,
                    format!("join request refused: {why}"),
                ));
            }
        }
        _ => {}
    }
    let now = now_ms().max(v.ledger_time);
    if !within_window(tx.payload.created, now, window) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "outside_window",
            format!(
                "creation time {} is more than {window} ms from ledger time {now}",
                tx.payload.created
            ),
        ));
    }
    if nonce_spent {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nonce_reused",
            "this signer already used this nonce",
        ));
    }
    let key = ident.current_key().to_vec();
    Ok(Check::Passed(Passed {
        tx,
        len: bytes.len(),
        key,
        nonce_key,
        recent_ids: v.recent_ids,
    }))
}

/// Where these exact bytes are in the ledger, if they are.
fn recorded(
    recent: &RecentIds,
    store: &comity_store::Store,
    tx: &Tx,
) -> Result<Option<u64>, ApiError> {
    if !recent.may_contain(&tx.id, Some(tx.payload.created)) {
        return Ok(None);
    }
    Ok(comity_apps::query::tx_index(&store.read()?, &tx.id)?)
}

fn committed_outcome(shared: &Shared, id: &Hash, index: u64) -> Result<TxOutcome, ApiError> {
    let (_, leaf) = comity_apps::query::record(&shared.store, index)?;
    Ok(TxOutcome {
        id: id.to_vec(),
        index,
        outcome: leaf.outcome.code().to_string(),
        time: leaf.time,
    })
}

/// Hands a newly queued transaction to the batcher without waiting (a
/// handler awaiting a full channel could be dropped there, leaving the
/// transaction queued but never sent); if that cannot be done, the queued
/// entry is answered and removed.
pub fn hand_over(shared: &Shared, id: Hash, bytes: Vec<u8>) -> Result<(), ApiError> {
    use tokio::sync::mpsc::error::TrySendError;
    let why = match shared.submit.try_send((id, bytes)) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Full(_)) => "too many transactions waiting; retry shortly",
        Err(TrySendError::Closed(_)) => "node is shutting down",
    };
    shared.pending.resolve(&id, Err(ApiError::unavailable(why)));
    Err(ApiError::unavailable(why))
}

/// Queues a checked transaction for ordering, or joins the identical one
/// already queued.
pub fn queue(shared: &Shared, passed: Passed) -> Result<(Hash, Admission), ApiError> {
    let Passed {
        tx,
        len,
        key,
        nonce_key,
        recent_ids,
    } = passed;
    let p = &shared.pending;
    let (wtx, wrx) = oneshot::channel();
    {
        let mut by_id = p.by_id.lock().expect("pending lock");
        if let Some(existing) = by_id.get_mut(&tx.id) {
            // Waiters that went away are dropped; past the cap a resubmission
            // is told it is pending (its sender is dropped) instead of waiting.
            existing.waiters.retain(|w| !w.is_closed());
            if existing.waiters.len() < MAX_WAITERS {
                existing.waiters.push(wtx);
            }
            return Ok((tx.id, Admission::Queued(wrx, false)));
        }
        if by_id.len() >= shared.limits.max_pending
            || p.bytes.load(Ordering::Relaxed) + len > shared.limits.max_pending_mib << 20
        {
            return Err(ApiError::unavailable(
                "too many transactions waiting; retry shortly",
            ));
        }
        // Join requests are counted here, under the lock, so that concurrent
        // ones cannot all pass on the same count.
        let join = comity_apps::join::is_join(&tx);
        if join {
            use comity_apps::join::{pending_nodes, MAX_PENDING_NODES};
            let asking = pending_nodes(&shared.store.read()?)? + p.joins() as u64;
            if asking >= MAX_PENDING_NODES {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::TOO_MANY_PENDING,
                    format!("join request refused: {asking} nodes already wait for a vote or are asking"),
                ));
            }
        }
        if !p
            .nonces
            .lock()
            .expect("nonce lock")
            .insert(nonce_key.clone())
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "nonce_reused",
                "this signer already used this nonce",
            ));
        }
        if join {
            p.joins.fetch_add(1, Ordering::Relaxed);
        }
        p.bytes.fetch_add(len, Ordering::Relaxed);
        by_id.insert(
            tx.id,
            Pending {
                waiters: vec![wtx],
                nonce: nonce_key,
                len,
                join,
            },
        );
    }
    // The apply that records these bytes may have run since `check` looked,
    // and answered its waiters before this entry existed. Apply makes its
    // writes visible before it answers anyone, so looking once more after
    // the insert cannot miss it.
    let looked = recorded(&recent_ids, &shared.store, &tx).and_then(|found| {
        found
            .map(|index| committed_outcome(shared, &tx.id, index))
            .transpose()
    });
    match looked {
        Ok(None) => {}
        Ok(Some(outcome)) => {
            p.resolve(&tx.id, Ok(outcome));
            return Ok((tx.id, Admission::Queued(wrx, false)));
        }
        Err(e) => {
            p.resolve(&tx.id, Err(e.clone()));
            return Err(e);
        }
    }
    let id = tx.id;
    p.verified
        .lock()
        .expect("verified lock")
        .insert(id, Verified { tx, key });
    Ok((id, Admission::Queued(wrx, true)))
}
