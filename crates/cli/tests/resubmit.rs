//! A transaction resubmitted while its first copy commits is still answered.
//!
//! Admission first looks the bytes up in the ledger, then queues them with
//! their waiters. If the first copy is applied in between, that apply answers
//! the waiters it knows of, which do not yet include the resubmission's. This
//! test forces that interleaving on a real node, run in this process, by
//! splitting admission at that point: the resubmission must be answered with
//! the committed outcome at once, not left pending.

mod common;

use comity_client::Signer;
use comity_node::ingress::{self, Admission, Check};
use comity_node::{config::NodeConfig, Node};
use common::{free_port, run_cli};
use std::time::{Duration, Instant};

async fn start_node(data: &std::path::Path, scratch: &std::path::Path) -> Node {
    let port = free_port().to_string();
    let args = ["up", "--init-only", "--nodes", "1", "--port", &port];
    let out = run_cli(data, scratch, &args, Duration::from_secs(60)).await;
    assert!(out.status.success(), "up --init-only: {}", out.stderr);
    let cfg = NodeConfig::load(&data.join("node0").join("node.toml")).expect("node.toml");
    let node = Node::start(cfg, None).await.expect("node starts");
    let deadline = Instant::now() + common::START_TIMEOUT;
    while !(node.shared.is_leader() && node.shared.view().network_id.is_some()) {
        assert!(Instant::now() < deadline, "the node did not elect itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_checked_before_the_first_copy_applied_is_answered() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("comity-data");
    let node = start_node(&data, tmp.path()).await;
    let shared = node.shared.clone();
    let net = shared.view().network_id.expect("genesis applied");
    let signer =
        Signer::from_pem_file(data.join("keys").join("user0.key.pem"), net).expect("user key");
    let bytes = signer.kv_put("race", b"both copies get an answer");

    // The resubmission passes its checks while the ledger lacks the bytes.
    let Check::Passed(resubmission) = ingress::check(&shared, &bytes)
        .await
        .expect("the transaction is valid")
    else {
        panic!("a new transaction was reported as already recorded");
    };

    // The first copy is admitted, ordered and applied in the meantime.
    let (id, admission) = ingress::admit(&shared, &bytes)
        .await
        .expect("first copy admitted");
    let Admission::Queued(first, true) = admission else {
        panic!("the first copy was not queued as new");
    };
    shared
        .submit
        .send((id, bytes.clone()))
        .await
        .expect("batcher running");
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("first copy answered within 30 s")
        .expect("waiter kept")
        .expect("first copy committed");
    assert_eq!(first.outcome, "ok");
    assert!(shared.pending.is_empty(), "nothing is left pending");

    // Only now is the resubmission queued. It must not be ordered again and
    // must get the first copy's outcome without waiting for another apply.
    let (again_id, admission) = ingress::queue(&shared, resubmission).expect("queued");
    assert_eq!(again_id, id);
    let Admission::Queued(again, fresh) = admission else {
        panic!("queue never reports Known");
    };
    assert!(!fresh, "recorded bytes were queued for ordering again");
    let again = tokio::time::timeout(Duration::from_secs(2), again)
        .await
        .expect("the resubmission was left waiting")
        .expect("waiter kept")
        .expect("resubmission answered as committed");
    assert_eq!((again.index, again.time), (first.index, first.time));
    assert_eq!(again.outcome, "ok");
    assert!(
        shared.pending.is_empty(),
        "the resubmission left an entry pending"
    );

    node.shutdown().await.expect("clean shutdown");
}
