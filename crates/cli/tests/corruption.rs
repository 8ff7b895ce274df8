//! A corrupt file is detected and named, never silently used: after a clean
//! stop (SIGTERM), damage to a ledger segment or to the Raft log makes
//! `comity up` refuse to start, naming the file; undoing the damage makes it
//! start again with the data intact; a torn Raft log tail is tolerated; a
//! damaged record length in the newest Raft log is not mistaken for a torn
//! tail (which, after a kill -9, silently lost every acknowledged write).

mod common;

use comity_client::{Hash, TxState};
use common::Network;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a refusing node may take to exit.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A record inside a file: where its 8-byte header starts, where its payload
/// starts and how long the payload is.
#[derive(Clone, Copy, Debug)]
struct Rec {
    header: usize,
    payload: usize,
    len: usize,
}

/// Bytes before the first record of a ledger segment.
const LEDGER_HEADER: usize = 24;
/// Bytes before the first record of a Raft log segment.
const RAFT_LOG_HEADER: usize = 28;

/// Records of a file laid out as `[u32 LE len][u32 crc][payload]...` from
/// `start` (the ledger segments and the Raft log segments both use this
/// framing, each after its header). Stops at the first thing that is
/// not a complete record (a segment trailer).
fn records(bytes: &[u8], start: usize) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut off = start;
    while off + 8 <= bytes.len() {
        if bytes[off..].starts_with(b"CMTYEND1") {
            break;
        }
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if off + 8 + len > bytes.len() {
            break;
        }
        out.push(Rec {
            header: off,
            payload: off + 8,
            len,
        });
        off += 8 + len;
    }
    out
}

/// The record whose bytes contain `offset` (or the last one before it).
fn record_at(recs: &[Rec], offset: usize) -> Rec {
    *recs
        .iter()
        .rev()
        .find(|r| r.header <= offset)
        .expect("a record at or before the offset")
}

fn flip(path: &Path, offset: usize) -> u8 {
    let mut b = std::fs::read(path).unwrap();
    let old = b[offset];
    b[offset] ^= 0xff;
    std::fs::write(path, &b).unwrap();
    old
}

fn restore(path: &Path, offset: usize, old: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] = old;
    std::fs::write(path, &b).unwrap();
}

/// Creates a network, commits `n` kv.put transactions and stops it cleanly.
async fn network_with_data(n: usize) -> (Network, Vec<(Hash, u64)>) {
    let mut net = Network::new();
    net.start().await;
    let acked = write(&net, "doc", n).await;
    let client = net.client_as("user0");
    // A final checkpoint covering the writes, so receipts exist before the stop.
    let last = acked.last().unwrap().0;
    client
        .wait_receipt(&last, Duration::from_millis(50), Duration::from_secs(20))
        .await
        .expect("receipt of the last write");
    stop(&mut net).await;
    (net, acked)
}

/// Commits `n` kv.put transactions `<prefix>/<i>` = `[i; 100]`.
async fn write(net: &Network, prefix: &str, n: usize) -> Vec<(Hash, u64)> {
    let client = net.client_as("user0");
    let signer = net.signer("user0");
    let mut acked = Vec::new();
    for i in 0..n {
        let s = client
            .submit(
                &signer.kv_put(&format!("{prefix}/{i}"), &[i as u8; 100]),
                true,
            )
            .await
            .expect("submit");
        assert_eq!(s.status, TxState::Committed, "{s:?}");
        acked.push((s.id, s.index.unwrap()));
    }
    acked
}

async fn stop(net: &mut Network) {
    let t = Instant::now();
    let status = net.stop(STOP_TIMEOUT).await;
    assert!(
        status.success(),
        "comity up exited with {status} after SIGTERM; stderr:\n{}",
        common::tail(&net.stderr_path, 20)
    );
    eprintln!("  stopped cleanly in {:.2} s", t.elapsed().as_secs_f64());
}

/// A transaction's status once final, polled briefly: a node just
/// restarted may still be re-applying its Raft log.
async fn final_status(client: &comity_client::Client, id: &Hash) -> comity_client::TxStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.tx_status(id).await.expect("tx status");
        if s.status.is_final() || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the node and checks every acknowledged transaction is still there.
async fn start_and_check(net: &mut Network, acked: &[(Hash, u64)]) {
    let t = Instant::now();
    net.start().await;
    let client = net.client_as("user0");
    for (id, index) in acked {
        let s = final_status(&client, id).await;
        assert_eq!(s.status, TxState::Committed, "{s:?}");
        assert_eq!(s.index, Some(*index), "{s:?}");
    }
    let v = net
        .client_as("user0")
        .kv_get(None, "doc/0")
        .await
        .expect("kv get");
    assert_eq!(v.latest_value.as_deref(), Some(&[0u8; 100][..]));
    eprintln!(
        "  started and checked {} transactions in {:.2} s",
        acked.len(),
        t.elapsed().as_secs_f64()
    );
}

/// `comity ledger verify --dir COPY` against the network's identity.
async fn audit_copy(net: &Network, copy: &Path) -> common::CliOutput {
    let ident = net.data.join("network.json");
    let args = [
        "ledger",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--network-identity",
        ident.to_str().unwrap(),
    ];
    net.cli(&args, Duration::from_secs(60)).await
}

/// Starts the node expecting a refusal that names `file_part` and says "corrupt".
async fn expect_refusal(net: &mut Network, file_part: &str) {
    let t = Instant::now();
    let (status, stderr) = net
        .start_expect_exit(REFUSE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    let err_line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or_default();
    assert!(
        stderr.contains(file_part),
        "stderr does not name the file ({file_part}):\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("corrupt"),
        "stderr does not say corrupt:\n{stderr}"
    );
    eprintln!(
        "  refused in {:.2} s ({status}): {}",
        took.as_secs_f64(),
        err_line.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_ledger_segment_is_refused_and_named() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let (mut net, acked) = network_with_data(40).await;
    let seg = net.ledger_segment();
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes, LEDGER_HEADER);
    assert!(
        recs.len() > 40,
        "{} records in {}",
        recs.len(),
        seg.display()
    );
    let last = *recs.last().unwrap();
    assert_eq!(
        last.payload + last.len,
        bytes.len(),
        "the segment is unsealed: it ends with its last record"
    );

    // (a) a byte inside a record payload in the middle of the file.
    eprintln!(
        "(a) byte flipped in a record in the middle of {}",
        seg.display()
    );
    let mid = record_at(&recs, bytes.len() / 2);
    let at = mid.payload + mid.len / 2;
    let old = flip(&seg, at);
    expect_refusal(&mut net, "ledger-0000").await;
    restore(&seg, at, old);
    start_and_check(&mut net, &acked).await;
    stop(&mut net).await;

    // (b) a byte inside the last record (the file is unsealed: no trailer).
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes, LEDGER_HEADER);
    let last = *recs.last().unwrap();
    assert_eq!(last.payload + last.len, bytes.len(), "unsealed segment");
    let at = last.payload + last.len / 2;
    eprintln!(
        "(b) byte flipped in the last record (byte {at} of {})",
        bytes.len()
    );
    let old = flip(&seg, at);
    expect_refusal(&mut net, "ledger-0000").await;
    restore(&seg, at, old);
    start_and_check(&mut net, &acked).await;

    let out = net
        .cli(&["ledger", "verify"], Duration::from_secs(60))
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    stop(&mut net).await;

    // An auditor's copy of the files replays against the network identity;
    // a torn last record is reported, not silently left out.
    let copy = net.tmp.path().join("ledger-copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(seg.parent().unwrap()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let out = audit_copy(&net, &copy).await;
    assert!(
        out.status.success()
            && out.stdout.contains("genesis matches")
            && !out.stdout.contains("WARNING"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let last = copy.join(seg.file_name().unwrap());
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let out = audit_copy(&net, &copy).await;
    assert!(
        out.status.success() && out.stdout.contains("WARNING: the last ledger file ends in"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_raft_log_is_refused_and_torn_tail_is_not() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let (mut net, acked) = network_with_data(40).await;
    let logs = net.raft_logs();
    assert!(!logs.is_empty(), "no Raft log files");

    // (c) a byte inside a record payload in the middle of the Raft log.
    let wal = logs[0].clone();
    let bytes = std::fs::read(&wal).unwrap();
    let recs = records(&bytes, RAFT_LOG_HEADER);
    assert!(
        recs.len() >= 3,
        "{} records in {}",
        recs.len(),
        wal.display()
    );
    let mut mid = record_at(&recs, bytes.len() / 2);
    if mid.header == recs.last().unwrap().header {
        mid = recs[recs.len() / 2];
    }
    let at = mid.payload + mid.len / 2;
    eprintln!(
        "(c) byte flipped at {at} of {} bytes in {}",
        bytes.len(),
        wal.display()
    );
    let old = flip(&wal, at);
    expect_refusal(&mut net, "wal-").await;
    restore(&wal, at, old);
    start_and_check(&mut net, &acked).await;
    // More writes, so the newest Raft log file holds entries, not only its head.
    let mut acked = acked;
    acked.extend(write(&net, "more", 20).await);
    stop(&mut net).await;

    // (d) a torn tail: the last few bytes of the newest Raft log file missing.
    let newest = net.raft_logs().last().unwrap().clone();
    let len = std::fs::metadata(&newest).unwrap().len();
    eprintln!(
        "(d) {} cut from {len} to {} bytes",
        newest.display(),
        len - 3
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    start_and_check(&mut net, &acked).await;
    // And it keeps working.
    let s = net
        .client_as("user0")
        .submit(&net.signer("user0").kv_put("after/torn", b"x"), true)
        .await
        .expect("write after a torn tail");
    assert_eq!(s.status, TxState::Committed);
    let out = net
        .cli(&["ledger", "verify"], Duration::from_secs(60))
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    stop(&mut net).await;

    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

/// Damage to the length field of an early record of the (only, hence newest)
/// Raft log file is damage, not a torn tail: many records follow it. Here the
/// node is killed (-9) right after a burst of acknowledged writes, so the
/// ledger's unsynced tail must be rebuilt from the Raft log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_log_damaged_length_field_is_refused() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let client = net.client_as("user0");
    let signer = net.signer("user0");
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (client, signer) = (client.clone(), signer.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..12 {
                    let tx = signer.kv_put(&format!("burst/{w}/{i}"), b"v");
                    let s = client.submit(&tx, true).await.expect("submit");
                    assert_eq!(s.status, TxState::Committed, "{s:?}");
                    acked.push((s.id, s.index.unwrap()));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    net.kill9();

    let logs = net.raft_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let wal = logs[0].clone();
    let bytes = std::fs::read(&wal).unwrap();
    let recs = records(&bytes, RAFT_LOG_HEADER);
    assert!(
        recs.len() >= 6,
        "{} records in {}",
        recs.len(),
        wal.display()
    );
    let victim = 2;
    // The high byte of the little-endian length: the record now claims to be
    // gigabytes long.
    let at = recs[victim].header + 3;
    eprintln!(
        "length field of record {victim} of {} (byte {at} of {}) in {} damaged",
        recs.len(),
        bytes.len(),
        wal.display()
    );
    let old = flip(&wal, at);
    if let Err(e) = net.start_expect_exit(REFUSE_TIMEOUT).await {
        // Say what the node did with the damaged file, then fail.
        let log =
            std::fs::read_to_string(net.stderr_path.with_extension("out")).unwrap_or_default();
        let warn = log
            .lines()
            .find(|l| l.contains("torn"))
            .map(common::strip_ansi)
            .unwrap_or_else(|| "(no warning logged)".into());
        net.start().await;
        let client = net.client_as("user0");
        let mut lost = 0;
        for (id, index) in &acked {
            let s = client.tx_status(id).await.expect("tx status");
            if s.status != TxState::Committed || s.index != Some(*index) {
                lost += 1;
            }
        }
        panic!(
            "{e}\nThe node treated damaged record {victim} of {} in {} as a torn tail and cut \
             off everything from it (log: {warn}); after restart {lost} of {} acknowledged \
             transactions are not committed at their index any more",
            recs.len(),
            wal.display(),
            acked.len(),
        );
    }
    restore(&wal, at, old);
    start_and_check_burst(&mut net, &acked).await;
}

async fn start_and_check_burst(net: &mut Network, acked: &[(Hash, u64)]) {
    net.start().await;
    let client = net.client_as("user0");
    for (id, index) in acked {
        let s = final_status(&client, id).await;
        assert_eq!(s.status, TxState::Committed, "{s:?}");
        assert_eq!(s.index, Some(*index), "{s:?}");
    }
}
