//! Ordering: the leader groups admitted transactions into Raft entries, and
//! appends checkpoint markers every N transactions or T milliseconds.

use crate::ingress::now_ms;
use crate::Shared;
use comity_apps::Command;
use comity_core::crypto::sha256;
use serde_bytes::ByteBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// Collects admitted transactions into batches and proposes them, keeping a
/// few proposals in flight so batching overlaps with the log fsync.
pub async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let inflight = Arc::new(Semaphore::new(shared.limits.max_inflight_batches));
    while let Some(first) = rx.recv().await {
        let permit = inflight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let mut txs = vec![ByteBuf::from(first)];
        while txs.len() < shared.limits.batch_max_txs {
            match rx.try_recv() {
                Ok(t) => txs.push(ByteBuf::from(t)),
                Err(_) => break,
            }
        }
        metrics::histogram!("comity_batch_txs").record(txs.len() as f64);
        let shared = shared.clone();
        tokio::spawn(async move {
            let ids: Vec<_> = txs.iter().map(|t| sha256(t)).collect();
            let res = shared
                .raft
                .client_write(Command::Batch {
                    time: now_ms(),
                    txs,
                })
                .await;
            drop(permit);
            if let Err(e) = res {
                tracing::warn!(error = %e, "batch not committed");
                for id in ids {
                    shared
                        .pending
                        .resolve(&id, Err(format!("the transaction may not have been committed ({e}); check GET /v1/tx/{}", hex::encode(id))));
                }
            }
        });
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
        tokio::time::sleep(Duration::from_millis((due_ms / 4).clamp(1, 50))).await;
        if !shared.is_leader() {
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
        if uncovered > 0
            && (uncovered >= due_txs || last.elapsed() >= Duration::from_millis(due_ms))
        {
            if let Err(e) = shared
                .raft
                .client_write(Command::Checkpoint { time: now_ms() })
                .await
            {
                tracing::warn!(error = %e, "checkpoint marker not committed");
            }
            last = Instant::now();
        }
    }
}
