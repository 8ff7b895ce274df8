//! "kill -9 loses nothing acknowledged": a node under write load is killed
//! with SIGKILL at a random moment, three times; after every restart each
//! transaction that was acknowledged as committed must still be committed at
//! the same ledger index, its receipt must verify offline against the network
//! identity, and the whole ledger must pass `comity ledger verify`.

mod common;

use comity_client::{Client, ClientError, Hash, TxState};
use comity_core::receipt::Receipt;
use common::{random_duration, Network};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 16;
const ROUNDS: usize = 3;
/// Kill early once this many transactions were acknowledged in a round, so
/// the checks after each restart stay fast on a fast machine.
const MAX_ACKS_PER_ROUND: u64 = 2000;

#[derive(Default)]
struct LoadStats {
    acked: Mutex<Vec<(Hash, u64)>>,
    ack_count: AtomicU64,
    errors: AtomicU64,
    not_committed: AtomicU64,
}

/// Runs `WRITERS` tasks submitting signed kv.put transactions until `stop`.
fn start_load(
    net: &Network,
    round: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = net.public_client();
    let signer = net.signer("user0");
    (0..WRITERS)
        .map(|w| {
            let (client, signer, stop, stats) =
                (client.clone(), signer.clone(), stop.clone(), stats.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = format!("r{round}/w{w}/{n}");
                    let tx = signer.kv_put(&key, format!("value {n}").as_bytes());
                    match client.submit(&tx, true).await {
                        Ok(s) if s.status == TxState::Committed => {
                            let index = s.index.expect("committed status carries an index");
                            assert_eq!(
                                s.id,
                                comity_client::tx_id(&tx),
                                "id is the hash of the bytes"
                            );
                            stats.acked.lock().unwrap().push((s.id, index));
                            stats.ack_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(s) => {
                            // pending (commit wait timed out) or rejected: not an acknowledgement.
                            assert_ne!(
                                s.status,
                                TxState::Rejected,
                                "kv.put {key} was rejected: {s:?}"
                            );
                            stats.not_committed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            // The node is being killed (or was): not acknowledged.
                            stats.errors.fetch_add(1, Ordering::SeqCst);
                            if !stop.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Every acknowledged transaction: committed at the same index, and a receipt
/// that verifies offline and names that index.
async fn check_acknowledged(net: &Network, acked: &HashMap<Hash, u64>) {
    let identity = Arc::new(net.identity());
    let client = net.public_client();
    let all: Vec<(Hash, u64)> = acked.iter().map(|(k, v)| (*k, *v)).collect();
    let waited_for_status = Arc::new(AtomicU64::new(0));
    let chunks = all.chunks(all.len().div_ceil(8).max(1));
    let mut tasks = Vec::new();
    for chunk in chunks {
        let chunk = chunk.to_vec();
        let (client, identity, waited) =
            (client.clone(), identity.clone(), waited_for_status.clone());
        tasks.push(tokio::spawn(async move {
            for (id, index) in chunk {
                check_one(&client, &identity, &id, index, &waited).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("checker task");
    }
    let waited = waited_for_status.load(Ordering::SeqCst);
    if waited > 0 {
        eprintln!(
            "note: {waited} acknowledged transactions were not yet visible right after the node reported healthy"
        );
    }
}

async fn check_one(
    client: &Client,
    identity: &comity_core::network::NetworkIdentity,
    id: &Hash,
    index: u64,
    waited: &AtomicU64,
) {
    let hid = hex::encode(id);
    // The status, polled briefly: a restarted node may still be re-applying its log.
    let deadline = Instant::now() + Duration::from_secs(20);
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
        "acknowledged tx {hid} (index {index}) is {:?} after restart",
        status
    );
    assert_eq!(
        status.index,
        Some(index),
        "acknowledged tx {hid} moved from index {index}"
    );
    let bytes = match client
        .wait_receipt(id, Duration::from_millis(100), Duration::from_secs(20))
        .await
    {
        Ok(b) => b,
        Err(ClientError::Api { status: 202, .. }) => {
            panic!("no receipt for acknowledged tx {hid} within 20 s")
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

async fn ledger_verify(net: &Network) -> String {
    let out = net
        .cli(&["ledger", "verify"], Duration::from_secs(120))
        .await;
    assert!(
        out.status.success(),
        "comity ledger verify failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_nothing_acknowledged() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut net = Network::new();
    net.start().await;
    eprintln!("network up in {:.1} s", t0.elapsed().as_secs_f64());

    let mut acked: HashMap<Hash, u64> = HashMap::new();
    for round in 0..ROUNDS {
        let tr = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let tasks = start_load(&net, round, stop.clone(), stats.clone());

        // Let the load run until something was acknowledged, then for a random while more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.ack_count.load(Ordering::SeqCst) < 20 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no transaction acknowledged within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kill_after = random_duration(Duration::from_millis(200), Duration::from_millis(2000));
        let t_load = Instant::now();
        while t_load.elapsed() < kill_after
            && stats.ack_count.load(Ordering::SeqCst) < MAX_ACKS_PER_ROUND
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        net.kill9();
        let killed_at = stats.ack_count.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("load task did not stop after the kill")
                .expect("load task panicked");
        }
        let new: Vec<(Hash, u64)> = std::mem::take(&mut *stats.acked.lock().unwrap());
        for (id, index) in &new {
            if let Some(prev) = acked.insert(*id, *index) {
                assert_eq!(
                    prev,
                    *index,
                    "tx {} acknowledged at two indexes",
                    hex::encode(id)
                );
            }
        }
        let mut indexes: Vec<u64> = acked.values().copied().collect();
        indexes.sort_unstable();
        assert!(
            indexes.windows(2).all(|w| w[0] != w[1]),
            "two acknowledged transactions share an index"
        );
        eprintln!(
            "round {round}: {} acknowledged ({} at the kill), {} failed requests, {} not committed in time; {} acknowledged in total",
            new.len(),
            killed_at,
            stats.errors.load(Ordering::SeqCst),
            stats.not_committed.load(Ordering::SeqCst),
            acked.len()
        );

        let tc = Instant::now();
        net.start().await;
        let restart = tc.elapsed();
        check_acknowledged(&net, &acked).await;
        let checked = tc.elapsed();
        let out = ledger_verify(&net).await;
        eprintln!(
            "round {round}: restart {:.1} s, {} statuses+receipts checked in {:.1} s, ledger verify {:.1} s (round {:.1} s)\n{}",
            restart.as_secs_f64(),
            acked.len(),
            (checked - restart).as_secs_f64(),
            (tc.elapsed() - checked).as_secs_f64(),
            tr.elapsed().as_secs_f64(),
            out.lines().take(3).collect::<Vec<_>>().join("\n")
        );
    }
    // The restarted node still takes writes.
    let s = net
        .public_client()
        .submit(&net.signer("user0").kv_put("after/crashes", b"ok"), true)
        .await
        .expect("write after the crashes");
    assert_eq!(s.status, TxState::Committed);
    eprintln!(
        "checked {} acknowledged transactions over {ROUNDS} kill -9 rounds in {:.1} s",
        acked.len(),
        t0.elapsed().as_secs_f64()
    );
}
