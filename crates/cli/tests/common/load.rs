//! A steady load of signed `kv.put` transactions, and the check that every
//! acknowledged one is in the ledger where it was acknowledged, with a
//! receipt that verifies offline.

use comity_client::{Client, ClientError, Hash, Signer, TxState};
use comity_core::network::NetworkIdentity;
use comity_core::receipt::Receipt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct LoadStats {
    pub acked: Mutex<Vec<(Hash, u64)>>,
    pub ack_count: AtomicU64,
    pub errors: AtomicU64,
    pub not_committed: AtomicU64,
    /// When the last acknowledgement came (ms since the load started).
    pub last_ack_ms: AtomicU64,
}

/// Writers submitting until stopped; each waits for its answer before the next.
pub struct Load {
    pub stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub started: Instant,
}

impl Load {
    /// `writers` tasks spread over `clients`. A writer whose node fails moves
    /// on to the next node, as a client of a real network would.
    pub fn start(clients: Vec<Client>, signer: Signer, writers: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let started = Instant::now();
        let clients = Arc::new(clients);
        let tasks = (0..writers)
            .map(|w| {
                let (clients, signer, stop, stats) =
                    (clients.clone(), signer.clone(), stop.clone(), stats.clone());
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut c = w % clients.len();
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let key = format!("{tag}/w{w}/{n}");
                        let tx = signer.kv_put(&key, format!("value {n}").as_bytes());
                        let sent = clients[c].submit(&tx, true);
                        match tokio::time::timeout(Duration::from_secs(20), sent).await {
                            Ok(Ok(s)) if s.status == TxState::Committed => {
                                let index = s.index.expect("committed status carries an index");
                                assert_eq!(
                                    s.id,
                                    comity_client::tx_id(&tx),
                                    "id is the hash of the bytes"
                                );
                                stats.acked.lock().unwrap().push((s.id, index));
                                stats.ack_count.fetch_add(1, Ordering::SeqCst);
                                stats
                                    .last_ack_ms
                                    .store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                            }
                            Ok(Ok(s)) => {
                                // pending (commit wait timed out) or rejected: not an acknowledgement.
                                assert_ne!(
                                    s.status,
                                    TxState::Rejected,
                                    "kv.put {key} was rejected: {s:?}"
                                );
                                stats.not_committed.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Err(_)) | Err(_) => {
                                // The node is down, cut off or has no leader: not acknowledged.
                                stats.errors.fetch_add(1, Ordering::SeqCst);
                                c = (c + 1) % clients.len();
                                if !stop.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stats,
            stop,
            tasks,
            started,
        }
    }

    pub fn acked(&self) -> u64 {
        self.stats.ack_count.load(Ordering::SeqCst)
    }

    /// Waits until `n` more transactions than now are acknowledged.
    pub async fn wait_for_acks(&self, n: u64, timeout: Duration, what: &str) {
        let target = self.acked() + n;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {n} transactions acknowledged within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers and returns every acknowledged (id, index).
    pub async fn stop(self) -> Vec<(Hash, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("load task did not stop")
                .expect("load task panicked");
        }
        std::mem::take(&mut *self.stats.acked.lock().unwrap())
    }
}

/// Adds `new` acknowledgements to `all`, checking no id moved and no index is shared.
pub fn merge_acked(all: &mut HashMap<Hash, u64>, new: &[(Hash, u64)]) {
    for (id, index) in new {
        if let Some(prev) = all.insert(*id, *index) {
            assert_eq!(
                prev,
                *index,
                "tx {} acknowledged at two indexes",
                hex::encode(id)
            );
        }
    }
    let mut indexes: Vec<u64> = all.values().copied().collect();
    indexes.sort_unstable();
    assert!(
        indexes.windows(2).all(|w| w[0] != w[1]),
        "two acknowledged transactions share an index"
    );
}

/// Every acknowledged transaction is committed at its index on the node
/// behind `client`. Receipts are checked for every `receipt_every`-th one.
pub async fn check_acknowledged(
    client: &Client,
    identity: &NetworkIdentity,
    acked: &HashMap<Hash, u64>,
    receipt_every: usize,
) {
    let identity = Arc::new(identity.clone());
    let all: Vec<(Hash, u64)> = acked.iter().map(|(k, v)| (*k, *v)).collect();
    let waited = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, chunk) in all.chunks(all.len().div_ceil(8).max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let (client, identity, waited) = (client.clone(), identity.clone(), waited.clone());
        tasks.push(tokio::spawn(async move {
            for (i, (id, index)) in chunk.into_iter().enumerate() {
                let receipt = (c + i) % receipt_every.max(1) == 0;
                check_one(&client, &identity, &id, index, receipt, &waited).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("checker task");
    }
    let waited = waited.load(Ordering::SeqCst);
    if waited > 0 {
        eprintln!("note: {waited} acknowledged transactions were not yet visible at first look");
    }
}

async fn check_one(
    client: &Client,
    identity: &NetworkIdentity,
    id: &Hash,
    index: u64,
    with_receipt: bool,
    waited: &AtomicU64,
) {
    let hid = hex::encode(id);
    // The status, polled briefly: a restarted node may still be re-applying its log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = true;
    let status = loop {
        let s = client
            .tx_status(id)
            .await
            .unwrap_or_else(|e| panic!("status of acknowledged tx {hid}: {e}"));
        if s.status.is_final() || Instant::now() > deadline {
            break s;
        }
        if first {
            waited.fetch_add(1, Ordering::SeqCst);
            first = false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.status,
        TxState::Committed,
        "acknowledged tx {hid} (index {index}) is {status:?}"
    );
    assert_eq!(
        status.index,
        Some(index),
        "acknowledged tx {hid} moved from index {index}"
    );
    if !with_receipt {
        return;
    }
    let bytes = match client
        .wait_receipt(id, Duration::from_millis(100), Duration::from_secs(30))
        .await
    {
        Ok(b) => b,
        Err(ClientError::Api { status: 202, .. }) => {
            panic!("no receipt for acknowledged tx {hid} within 30 s")
        }
        Err(e) => panic!("receipt of acknowledged tx {hid}: {e}"),
    };
    let receipt = Receipt::from_cose(&bytes)
        .unwrap_or_else(|e| panic!("receipt of {hid} does not parse: {e}"));
    assert_eq!(
        receipt.index, index,
        "receipt of {hid} is for another index"
    );
    let v = receipt
        .verify(identity)
        .unwrap_or_else(|e| panic!("receipt of {hid} does not verify offline: {e}"));
    assert_eq!(
        v.leaf.index, index,
        "receipt leaf of {hid} has another index"
    );
    assert_eq!(
        &v.leaf.digest, id,
        "receipt leaf of {hid} commits to another body"
    );
    assert!(
        v.leaf.outcome == comity_core::entry::Outcome::Applied,
        "receipt leaf of {hid} is not applied: {:?}",
        v.leaf.outcome
    );
    assert!(
        v.tx.is_some(),
        "receipt of {hid} carries the transaction body"
    );
}
