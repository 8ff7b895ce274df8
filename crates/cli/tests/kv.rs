//! The kv application's key spaces over HTTPS against a real `comity up`
//! network: each identity writes and reads keys of its own, a user reads
//! neither another's keys nor its kv transactions in the raw ledger, and
//! members, who audit, read any identity's.

mod common;

use comity_client::{ClientError, TxState, TxStatus};
use common::{CliOutput, Network};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn committed(s: Result<TxStatus, ClientError>, what: &str) -> TxStatus {
    let s = s.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(s.status, TxState::Committed, "{what}: {s:?}");
    s
}

fn ok(out: CliOutput, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_has_a_key_space_of_its_own() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let bob = net.add_user("bob").await;
    let alice = net.signer("user0");
    let public = net.public_client();

    // One key name, two identities: two keys.
    let put = committed(
        public.submit(&alice.kv_put("terms", b"net 30"), true).await,
        "alice's put",
    );
    committed(
        public.submit(&bob.kv_put("terms", b"net 90"), true).await,
        "bob's put",
    );
    // Bob's delete removes his key; alice's stays.
    committed(
        public.submit(&bob.kv_delete("terms"), true).await,
        "bob's delete",
    );
    let again = public.submit(&bob.kv_delete("terms"), true).await.unwrap();
    assert_eq!(again.status, TxState::Rejected, "{again:?}");
    assert_eq!(again.outcome.as_deref(), Some("not_found"), "{again:?}");
    // Submitted from a file by the CLI, a rejection is a failure a script sees.
    let file = net.tmp.path().join("delete.cose");
    std::fs::write(&file, bob.kv_delete("terms")).unwrap();
    let out = net.cli(&["tx", "submit", file.to_str().unwrap()], T).await;
    assert!(
        !out.status.success() && out.stderr.contains("rejected: not_found"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // Each reads its own, proved against the network identity (the CLI
    // derives the state key from the reader's identity).
    let as_bob = |args: &[&str]| {
        let (key, cert) = (net.key_path("bob"), net.cert_path("bob"));
        let mut all = vec![
            "--key".to_string(),
            key.display().to_string(),
            "--cert".to_string(),
            cert.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    let out = ok(
        net.cli(&["kv", "get", "terms", "--verify"], T).await,
        "alice reads her key",
    );
    assert!(
        out.contains("net 30") && out.contains("verified: state proof"),
        "{out}"
    );
    let args = as_bob(&["kv", "get", "terms", "--verify"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(net.cli(&args, T).await, "bob reads his key");
    assert!(
        out.contains("is absent") && out.contains("verified: state proof"),
        "{out}"
    );
    let bob_client = net.client_as("bob");
    let history = bob_client.kv_history(None, "terms", None).await.unwrap();
    assert_eq!(history.owner, bob.id);
    let ops: Vec<_> = history.versions.iter().map(|v| v.op.as_deref()).collect();
    assert_eq!(ops, [Some("put"), Some("delete")]);

    // Bob may not read alice's key space, by API or CLI.
    let e = bob_client
        .kv_get(Some(&alice.id), "terms")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert_eq!(e.code(), Some("forbidden"), "{e}");
    let e = bob_client
        .kv_history(Some(&alice.id), "terms", None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let owner = hex::encode(alice.id);
    let args = as_bob(&["kv", "get", "terms", "--owner", &owner]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = net.cli(&args, T).await;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    // Nor alice's kv transaction in the raw ledger: its body is withheld.
    let index = put.index.expect("index");
    let seen = bob_client.entries(index, 1).await.unwrap();
    assert!(seen[0].body.is_empty(), "bob was shown alice's kv.put");
    let whole = net.client_as("user0").entries(index, 1).await.unwrap();
    assert!(!whole[0].body.is_empty(), "alice sees her own");
    assert_eq!(whole[0].leaf, seen[0].leaf, "the leaf is shown whole");

    // A member (an auditor) reads alice's key with --owner, proved.
    let (key, cert) = (net.key_path("member0"), net.cert_path("member0"));
    let out = ok(
        net.cli(
            &[
                "--key",
                key.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "kv",
                "get",
                "terms",
                "--owner",
                &owner,
                "--verify",
            ],
            T,
        )
        .await,
        "a member reads alice's key",
    );
    assert!(
        out.contains("net 30") && out.contains("verified: state proof"),
        "{out}"
    );
    let read = net
        .client_as("member0")
        .kv_get(Some(&alice.id), "terms")
        .await
        .unwrap();
    assert_eq!(read.owner, alice.id);
    net.stop(T).await;
}
