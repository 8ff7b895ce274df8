//! Ordering: the leader groups admitted transactions into Raft entries, and
//! appends checkpoint markers every N transactions or T milliseconds.

use crate::error::ApiError;
use crate::ingress::now_ms;
use crate::peer_api::Forwarded;
use crate::Shared;
use axum::http::StatusCode;
use comity_apps::{codes, Command};
use comity_consensus::network::path;
use comity_core::Hash;
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// Batches forwarded to the leader at once by a follower.
const FORWARDS_IN_FLIGHT: usize = 2;
/// How long a follower keeps trying to reach a leader for a batch.
const FORWARD_PATIENCE: Duration = Duration::from_secs(10);

/// An admitted transaction: its id and bytes.
type Queued = (Hash, Vec<u8>);

/// Collects admitted transactions into batches. The leader proposes them,
/// keeping a few proposals in flight so batching overlaps with the log
/// fsync; a follower forwards them to the leader.
pub async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Queued>) {
    let proposals = Arc::new(Semaphore::new(shared.limits.max_inflight_batches));
    let forwards = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    // A transaction that would have taken a batch past its byte limit
    // starts the next one.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(tx) => tx,
            None => match rx.recv().await {
                Some(tx) => tx,
                None => return,
            },
        };
        let sem = if shared.is_leader() {
            &proposals
        } else {
            &forwards
        };
        let t0 = Instant::now();
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        metrics::histogram!("comity_batch_wait_seconds").record(t0.elapsed().as_secs_f64());
        // Transactions verified together wake their handlers together, but
        // the handlers queue them one by one: letting them run first makes
        // one batch where there would be a batch of one and then the rest.
        tokio::task::yield_now().await;
        let (ids, txs, rest) = fill(
            first,
            shared.limits.batch_max_txs,
            shared.limits.batch_max_bytes,
            || rx.try_recv().ok(),
        );
        carried = rest;
        metrics::histogram!("comity_batch_txs").record(txs.len() as f64);
        let shared = shared.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let failed = order(&shared, txs).await;
            metrics::histogram!("comity_order_seconds").record(t0.elapsed().as_secs_f64());
            drop(permit);
            for (id, err) in ids.iter().zip(failed) {
                if let Some(e) = err {
                    shared.pending.resolve(id, Err(e));
                }
            }
        });
    }
}

/// A batch of at most `max_txs` transactions and `max_bytes` bytes (`first`
/// alone may be larger) from `first` and what `next` has ready, and the
/// transaction that would have gone past `max_bytes`, to start the next one.
fn fill(
    first: Queued,
    max_txs: usize,
    max_bytes: usize,
    mut next: impl FnMut() -> Option<Queued>,
) -> (Vec<Hash>, Vec<ByteBuf>, Option<Queued>) {
    let mut bytes = first.1.len();
    let mut ids = vec![first.0];
    let mut txs = vec![ByteBuf::from(first.1)];
    while txs.len() < max_txs {
        match next() {
            Some(tx) if bytes + tx.1.len() > max_bytes => return (ids, txs, Some(tx)),
            Some((id, t)) => {
                bytes += t.len();
                ids.push(id);
                txs.push(ByteBuf::from(t));
            }
            None => break,
        }
    }
    (ids, txs, None)
}

/// Gets a batch ordered: proposed here when leading, else forwarded to the
/// leader (retried while there is none: resubmitting is idempotent). Returns,
/// per transaction, why it failed, if it did; successes are answered by apply.
async fn order(shared: &Shared, txs: Vec<ByteBuf>) -> Vec<Option<ApiError>> {
    let n = txs.len();
    let deadline = Instant::now() + FORWARD_PATIENCE;
    let all = |e: String| vec![Some(ApiError::unavailable(e)); n];
    loop {
        let last_error = match shared.leader() {
            Some((id, _)) if id == shared.node_id && shared.recovery_pending() => {
                "the recovery decision is not applied yet".to_string()
            }
            Some((id, _)) if id == shared.node_id => {
                let res = shared
                    .raft
                    .client_write(Command::Batch {
                        time: now_ms(),
                        txs,
                    })
                    .await;
                return match res {
                    Ok(_) => vec![None; n],
                    Err(e) => {
                        tracing::warn!(error = %e, "batch not committed");
                        all(format!(
                            "the transaction may not have been committed ({e}); check its status"
                        ))
                    }
                };
            }
            Some((leader, addr)) => {
                let wait = Duration::from_millis(shared.limits.commit_wait_ms + 5_000);
                match shared
                    .peers
                    .call::<_, Vec<Forwarded>>(Some(leader), &addr, path::SUBMIT, &txs, wait)
                    .await
                {
                    Ok(replies) if replies.len() == n => {
                        return replies
                            .into_iter()
                            .map(|f| match f {
                                Forwarded::Committed => None,
                                Forwarded::Failed(code, msg) => {
                                    Some(ApiError::unavailable(format!("{code}: {msg}")))
                                }
                                Forwarded::Refused {
                                    status,
                                    code,
                                    message,
                                } => Some(leader_refusal(status, code, message)),
                            })
                            .collect();
                    }
                    Ok(_) => "the leader answered for a different number of transactions".into(),
                    Err(e) => e.to_string(),
                }
            }
            None => "no leader is known".to_string(),
        };
        if Instant::now() >= deadline {
            tracing::warn!(error = %last_error, "could not forward a batch to the leader");
            return all(format!(
                "could not reach the leader ({last_error}); the transaction may not have been committed: check its status"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refusals that only state ahead of this node's explains (what is spent or
/// exists stays so), which the client gets as the leader gave them; any
/// other may come from a leader still behind (newly elected, say), so it is
/// a retryable 503.
const FINAL_REFUSALS: [&str; 2] = [codes::NONCE_REUSED, codes::ALREADY_EXISTS];

/// What a client is told of a forwarded transaction the leader refused.
fn leader_refusal(status: u16, code: String, message: String) -> ApiError {
    match StatusCode::from_u16(status) {
        Ok(status) if FINAL_REFUSALS.contains(&code.as_str()) => {
            ApiError::new(status, code, message)
        }
        _ => ApiError::unavailable(format!("the leader refused it ({code}: {message})")),
    }
}

/// Proposes checkpoint markers while this node leads, and a `Flush` when a
/// checkpoint's state root is ready but no other entry arrives to record it.
pub async fn checkpoints(shared: Arc<Shared>) {
    let mut last = Instant::now();
    let mut waiting_since: Option<u64> = None;
    loop {
        let v = shared.view();
        let (due_txs, due_ms, uncovered) =
            (v.config.checkpoint_txs, v.config.checkpoint_ms, v.uncovered);
        // A leader with entries to cover wakes for the next marker on time:
        // receipts wait for it. Otherwise no marker falls due, and a nap
        // keeps an idle node or a follower from waking every millisecond.
        let period = Duration::from_millis(due_ms);
        let nap = Duration::from_millis((due_ms / 4).clamp(1, 50));
        let wait = if uncovered > 0 && shared.is_leader() {
            nap.min(period.saturating_sub(last.elapsed()))
        } else {
            nap
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        if !shared.is_leader() || shared.recovery_pending() {
            continue;
        }
        let after = shared.view();
        // Under load the next apply step records a finished root; when quiet, ask for it.
        if after.pending_checkpoints > 0 && waiting_since == Some(after.checkpoint_seq) {
            if let Err(e) = shared.raft.client_write(Command::Flush).await {
                tracing::warn!(error = %e, "flush not committed");
            }
        }
        waiting_since = (after.pending_checkpoints > 0).then_some(after.checkpoint_seq);
        // Deadlines run on ledger time; when nothing else moves it, an empty batch does.
        let idle = after.uncovered == 0;
        let due = idle
            .then(|| {
                shared
                    .store
                    .read()
                    .and_then(|r| comity_apps::gov::next_expiry(&r))
            })
            .and_then(Result::ok)
            .flatten();
        if due.is_some_and(|t| t <= now_ms() && t >= after.ledger_time) {
            let tick = Command::Batch {
                time: now_ms(),
                txs: Vec::new(),
            };
            if let Err(e) = shared.raft.client_write(tick).await {
                tracing::warn!(error = %e, "clock tick not committed");
            }
        }
        if uncovered > 0 && (uncovered >= due_txs || last.elapsed() >= period) {
            // Markers are T ms apart from proposal to proposal: timing from
            // the commit would stretch the interval by a commit under load.
            last = Instant::now();
            if let Err(e) = shared
                .raft
                .client_write(Command::Checkpoint { time: now_ms() })
                .await
            {
                tracing::warn!(error = %e, "checkpoint marker not committed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(i: u8, len: usize) -> Queued {
        ([i; 32], vec![i; len])
    }

    #[test]
    fn a_batch_stops_at_its_limits_and_carries_the_transaction_that_did_not_fit() {
        // Bytes: 40 + 30 + 30 fit in 100; the fourth (10) would not.
        let mut queue = vec![tx(1, 30), tx(2, 30), tx(3, 10), tx(4, 10)].into_iter();
        let (ids, txs, carried) = fill(tx(0, 40), 10, 100, || queue.next());
        assert_eq!(ids, vec![[0; 32], [1; 32], [2; 32]]);
        assert_eq!(txs.iter().map(|t| t.len()).sum::<usize>(), 100);
        assert_eq!(carried, Some(tx(3, 10)), "carried over, not dropped");
        // The carried one starts the next batch, and the rest follow.
        let (ids, _, carried) = fill(carried.unwrap(), 10, 100, || queue.next());
        assert_eq!(ids, vec![[3; 32], [4; 32]]);
        assert_eq!(carried, None);
        // The count limit ends a batch without taking the next one.
        let mut queue = (1..=5).map(|i| tx(i, 1));
        let (ids, _, carried) = fill(tx(0, 1), 3, 100, || queue.next());
        assert_eq!((ids.len(), carried), (3, None));
        assert_eq!(queue.next(), Some(tx(3, 1)), "left in the queue");
        // A first transaction over the byte limit still makes a batch of one.
        let mut queue = vec![tx(1, 1)].into_iter();
        let (ids, _, carried) = fill(tx(0, 500), 10, 100, || queue.next());
        assert_eq!((ids, carried), (vec![[0; 32]], Some(tx(1, 1))));
    }

    #[test]
    fn only_refusals_newer_state_explains_pass_through() {
        let e = leader_refusal(409, "nonce_reused".into(), "used".into());
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::CONFLICT, "nonce_reused")
        );
        // A leader behind this node (newly elected) may not know the signer yet.
        let e = leader_refusal(403, "unknown_signer".into(), "who?".into());
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
        );
        assert!(e.message.contains("unknown_signer: who?"), "{}", e.message);
        let e = leader_refusal(1000, "already_exists".into(), "x".into());
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "a bad status");
    }
}
