//! "kill -9 loses nothing acknowledged": a node under write load is killed
//! with SIGKILL at a random moment, three times; after every restart each
//! transaction that was acknowledged as committed must still be committed at
//! the same ledger index, its receipt must verify offline against the network
//! identity, and the whole ledger must pass `comity ledger verify`.

mod common;

use comity_client::{Hash, TxState};
use common::load::{check_acknowledged, merge_acked, Load};
use common::{random_duration, Network};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WRITERS: usize = 16;
const ROUNDS: usize = 3;
/// Kill early once this many transactions were acknowledged in a round, so
/// the checks after each restart stay fast on a fast machine.
const MAX_ACKS_PER_ROUND: u64 = 2000;

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
        let load = Load::start(
            vec![net.client_as("user0")],
            net.signer("user0"),
            WRITERS,
            &format!("r{round}"),
        );
        // Let the load run until something was acknowledged, then for a random while more.
        load.wait_for_acks(20, Duration::from_secs(30), "before the kill")
            .await;
        let kill_after = random_duration(Duration::from_millis(200), Duration::from_millis(2000));
        let t_load = Instant::now();
        while t_load.elapsed() < kill_after && load.acked() < MAX_ACKS_PER_ROUND {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        net.kill9();
        let killed_at = load.acked();
        let stats = load.stats.clone();
        let new = load.stop().await;
        merge_acked(&mut acked, &new);
        eprintln!(
            "round {round}: {} acknowledged ({} at the kill), {} failed requests, {} not committed in time; {} acknowledged in total",
            new.len(),
            killed_at,
            stats.errors.load(std::sync::atomic::Ordering::SeqCst),
            stats.not_committed.load(std::sync::atomic::Ordering::SeqCst),
            acked.len()
        );

        let tc = Instant::now();
        net.start().await;
        let restart = tc.elapsed();
        check_acknowledged(&net.client_as("user0"), &net.identity(), &acked, 1).await;
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
        .client_as("user0")
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
