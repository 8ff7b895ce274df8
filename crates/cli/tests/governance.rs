//! Governance end to end over HTTPS against a real `comity up` network with
//! three members: propose/vote/accept, reject, withdraw, expire, failing
//! actions, a constitution change that applies to the next proposal only,
//! every unauthorized path refused, the CLI, and an auditor's replay.

mod common;

use comity_client::{Client, Signer, TxState, TxStatus};
use comity_core::cbor;
use comity_core::crypto::{Alg, SigningKey};
use comity_core::Hash;
use common::Network;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Gov {
    net: Network,
    client: Client,
    m: Vec<Signer>,
    user: Signer,
}

impl Gov {
    async fn submit(&self, tx: Vec<u8>) -> Result<TxStatus, comity_client::ClientError> {
        self.client.submit(&tx, true).await
    }

    /// Submits and expects it committed with outcome `code`; returns the id.
    async fn expect(&self, tx: Vec<u8>, code: &str) -> Hash {
        let st = self.submit(tx).await.expect("submit");
        assert!(
            st.status == TxState::Committed || st.status == TxState::Rejected,
            "{st:?}"
        );
        assert_eq!(st.outcome.as_deref(), Some(code), "{st:?}");
        st.id
    }

    /// Submits and expects the node to refuse it at once.
    async fn refused(&self, tx: Vec<u8>, status: u16, code: &str) {
        let e = self.submit(tx).await.expect_err("refused at submission");
        assert_eq!((e.status(), e.code()), (Some(status), Some(code)), "{e}");
    }

    async fn propose(&self, who: usize, actions: Value) -> Hash {
        let tx = self.m[who].gov_propose(cbor::from_serde(&actions).unwrap(), "test");
        self.expect(tx, "ok").await
    }

    async fn state(&self, id: &Hash) -> Value {
        let v = self
            .client
            .gov_get(&["proposals", &hex::encode(id)], &[])
            .await
            .expect("proposal");
        v["proposal"].clone()
    }
}

fn add_user(k: &SigningKey, name: &str) -> Value {
    json!([{"action": "user.add", "args": {"key": hex::encode(k.public().to_spki_der()), "name": name}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_over_http() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let g = Gov {
        client: net.client_as("user0"),
        m: (0..3).map(|i| net.signer(&format!("member{i}"))).collect(),
        user: net.signer("user0"),
        net,
    };
    let t0 = Instant::now();

    // Genesis: three active members, the user, the node.
    let members = g.client.gov_get(&["members"], &[]).await.unwrap();
    let items = members["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|m| m["status"] == "active"));
    assert_eq!(
        items
            .iter()
            .filter(|m| m["data"]["org"].is_string())
            .count(),
        3
    );

    // Propose, vote, accept: the new user can then write.
    let alice = SigningKey::generate(Alg::EdDsa);
    let alice_s = Signer::new(alice.clone(), g.user.network_id);
    let p = g.propose(0, add_user(&alice, "alice")).await;
    assert_eq!(g.state(&p).await["state"], "open");
    g.refused(alice_s.kv_put("a", b"1"), 403, "unknown_signer")
        .await;
    g.expect(g.m[1].gov_vote(&p, true), "ok").await;
    assert_eq!(g.state(&p).await["state"], "accepted");
    g.expect(alice_s.kv_put("a", b"1"), "ok").await;
    // Users do not learn of one another: the user directory and other
    // users' records are for members; a user reads its own.
    let alice_id = hex::encode(alice.public().fingerprint());
    let e = g.client.gov_get(&["users"], &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = g
        .client
        .gov_get(&["identities", &alice_id], &[])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let me = hex::encode(g.user.id);
    assert!(g.client.gov_get(&["identities", &me], &[]).await.is_ok());
    let member = g.net.client_as("member0");
    let users = member.gov_get(&["users"], &[]).await.unwrap();
    assert_eq!(users["items"].as_array().unwrap().len(), 2, "{users}");
    assert!(member
        .gov_get(&["identities", &alice_id], &[])
        .await
        .is_ok());
    // A ballot on a decided proposal.
    g.expect(g.m[2].gov_vote(&p, true), "proposal_closed").await;

    // Propose, vote, reject.
    let bob = SigningKey::generate(Alg::EdDsa);
    let p = g.propose(0, add_user(&bob, "bob")).await;
    g.expect(g.m[1].gov_vote(&p, false), "ok").await;
    g.expect(g.m[1].gov_vote(&p, true), "already_voted").await;
    g.expect(g.m[2].gov_vote(&p, false), "ok").await;
    assert_eq!(g.state(&p).await["state"], "rejected");

    // Withdraw: not by another member, then by the proposer.
    let p = g.propose(0, add_user(&bob, "bob")).await;
    g.expect(g.m[1].gov_withdraw(&p), "not_proposer").await;
    g.expect(g.m[0].gov_withdraw(&p), "ok").await;
    assert_eq!(g.state(&p).await["state"], "withdrawn");

    // Actions that fail apply nothing.
    let mut bad = add_user(&bob, "bob");
    bad.as_array_mut()
        .unwrap()
        .push(json!({"action": "user.remove", "args": {"id": hex::encode([3u8; 32])}}));
    let p = g.propose(0, bad).await;
    g.expect(g.m[1].gov_vote(&p, true), "ok").await;
    let s = g.state(&p).await;
    assert_eq!(s["state"], "failed");
    assert!(s["resolved"]["reason"]
        .as_str()
        .unwrap()
        .contains("user.remove"));
    let bob_id = hex::encode(bob.public().fingerprint());
    let e = g
        .client
        .gov_get(&["identities", &bob_id], &[])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));

    // Unauthorized paths.
    let tx = g
        .user
        .gov_propose(cbor::from_serde(&add_user(&bob, "b")).unwrap(), "");
    g.refused(tx, 403, "forbidden").await;
    let open = g.propose(0, add_user(&bob, "bob")).await;
    g.refused(g.user.gov_vote(&open, true), 403, "forbidden")
        .await;
    let stranger = Signer::new(SigningKey::generate(Alg::EdDsa), g.user.network_id);
    g.refused(stranger.gov_vote(&open, true), 403, "unknown_signer")
        .await;
    let malformed =
        g.m[0].gov_propose(json_cbor(json!([{"action": "member.add", "args": {}}])), "");
    g.refused(malformed, 400, "bad_args").await;

    // Constitution change (unanimous): short expiry and member.remove by majority.
    let constitution = |expiry_ms: u64| {
        json!({"expiry_ms": expiry_ms, "default": {"approve": "majority"},
               "rules": {"constitution.set": {"approve": "unanimous"}}})
    };
    let c = constitution(1500);
    let cs = g
        .propose(0, json!([{"action": "constitution.set", "args": c}]))
        .await;
    g.expect(g.m[1].gov_vote(&cs, true), "ok").await;
    assert_eq!(g.state(&cs).await["state"], "open");
    g.expect(g.m[2].gov_vote(&cs, true), "ok").await;
    assert_eq!(g.state(&cs).await["state"], "accepted");
    // `open` was made under the old constitution: it keeps its week-long expiry.
    let new = g
        .propose(0, add_user(&SigningKey::generate(Alg::EdDsa), "c"))
        .await;
    let (old_exp, new_exp) = (
        g.state(&open).await["expires"].as_u64().unwrap()
            - g.state(&open).await["created"].as_u64().unwrap(),
        g.state(&new).await["expires"].as_u64().unwrap()
            - g.state(&new).await["created"].as_u64().unwrap(),
    );
    assert_eq!((old_exp, new_exp), (7 * 24 * 3600 * 1000, 1500));
    // Expiry in ledger time, driven by the idle leader's clock tick.
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.state(&new).await["state"] != "expired" {
        assert!(Instant::now() < deadline, "proposal did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.expect(g.m[1].gov_vote(&new, true), "proposal_expired")
        .await;
    // Back to a day: the steps below (CLI processes among them) need not
    // race a 1.5 s expiry.
    let cs = g
        .propose(
            0,
            json!([{"action": "constitution.set", "args": constitution(86_400_000)}]),
        )
        .await;
    g.expect(g.m[1].gov_vote(&cs, true), "ok").await;
    g.expect(g.m[2].gov_vote(&cs, true), "ok").await;
    assert_eq!(g.state(&cs).await["state"], "accepted");

    // A removed member: its ballots are refused at once.
    let m2_id = hex::encode(g.m[2].key.public().fingerprint());
    let rm = g
        .propose(
            0,
            json!([{"action": "member.remove", "args": {"id": m2_id}}]),
        )
        .await;
    g.expect(g.m[1].gov_vote(&rm, true), "ok").await;
    assert_eq!(g.state(&rm).await["state"], "accepted");
    g.refused(g.m[2].gov_vote(&open, true), 403, "inactive_identity")
        .await;

    // The CLI: vote as member1 on `open`, then read it back.
    let key1 = g.net.key_path("member1");
    let out = g
        .net
        .cli(
            &[
                "gov",
                "vote",
                &hex::encode(open),
                "approve",
                "--key",
                key1.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("state:       accepted"),
        "{}",
        out.stdout
    );
    let out = g
        .net
        .cli(&["gov", "list", "members"], Duration::from_secs(30))
        .await;
    assert!(out.stdout.contains("removed"), "{}", out.stdout);
    // History with receipts that verify offline.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = g
            .net
            .cli(
                &["gov", "history", &hex::encode(open)],
                Duration::from_secs(30),
            )
            .await;
        assert!(out.status.success(), "{}", out.stderr);
        assert!(!out.stdout.contains("INVALID"), "{}", out.stdout);
        if out.stdout.matches("receipt verified").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", out.stdout);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new member, added with the CLI, acknowledges the constitution with the CLI.
    let keys = g.net.key_path("dana").parent().unwrap().to_path_buf();
    let out = g
        .net
        .cli(
            &[
                "keys",
                "new",
                "--name",
                "dana",
                "--out",
                keys.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let dana_cert = g.net.cert_path("dana");
    let key0 = g.net.key_path("member0");
    let out = g
        .net
        .cli(
            &[
                "gov",
                "propose",
                "member.add",
                "--certificate",
                dana_cert.to_str().unwrap(),
                "--name",
                "Dana",
                "--info",
                "org=Bank D",
                "--key",
                key0.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    approve(&g.net, &proposal_id(&out.stdout), &key1).await;
    let dana_key = g.net.key_path("dana");
    let out = g
        .net
        .cli(
            &["gov", "ack", "--key", dana_key.to_str().unwrap()],
            Duration::from_secs(30),
        )
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let out = g
        .net
        .cli(&["gov", "list", "members"], Duration::from_secs(30))
        .await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("active") && l.contains("Dana")),
        "{}",
        out.stdout
    );

    // Dana's key is rotated by a vote; the CLI signs with the new key as
    // Dana's unchanged identity once told which (--identity).
    let dana_id = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&dana_key).unwrap())
        .unwrap()
        .public()
        .fingerprint();
    let dana_id = hex::encode(dana_id);
    let t = Duration::from_secs(30);
    let keys_dir = keys.to_str().unwrap();
    let out = g
        .net
        .cli(&["keys", "new", "--name", "dana2", "--out", keys_dir], t)
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let (dana2_key, dana2_cert) = (g.net.key_path("dana2"), g.net.cert_path("dana2"));
    let (dana_key, dana2_key) = (dana_key.to_str().unwrap(), dana2_key.to_str().unwrap());
    let out = g
        .net
        .cli(
            &[
                "gov",
                "propose",
                "identity.rotate_key",
                "--id",
                &dana_id,
                "--certificate",
                dana2_cert.to_str().unwrap(),
                "--key",
                key0.to_str().unwrap(),
            ],
            t,
        )
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // A majority is not enough for a member's key: its vote goes with it.
    let pid = proposal_id(&out.stdout);
    let args = [
        "gov",
        "vote",
        &pid,
        "approve",
        "--key",
        key1.to_str().unwrap(),
    ];
    let out = g.net.cli(&args, t).await;
    assert!(
        out.stdout.contains("state:       open"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let args = ["gov", "vote", &pid, "approve", "--key", dana_key];
    let out = g.net.cli(&args, t).await;
    assert!(
        out.status.success() && out.stdout.contains("cannot be read with this key any more"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let put = ["kv", "put", "rotated", "yes"];
    let out = g
        .net
        .cli(&[&["--key", dana2_key][..], &put].concat(), t)
        .await;
    assert!(out.stderr.contains("unknown_signer"), "{}", out.stderr);
    let out = g
        .net
        .cli(&[&["--key", dana_key][..], &put].concat(), t)
        .await;
    assert!(
        out.stderr.contains("bad_signature"),
        "old key: {}",
        out.stderr
    );
    let as_dana = ["--key", dana2_key, "--identity", &dana_id];
    let out = g.net.cli(&[&as_dana[..], &put].concat(), t).await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    // The auditor's replay reproduces every governance outcome and root.
    let out = g
        .net
        .cli(&["ledger", "verify"], Duration::from_secs(60))
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    eprintln!("governance over HTTP: {:.1} s", t0.elapsed().as_secs_f64());
    let mut net = g.net;
    net.stop(Duration::from_secs(20)).await;
}

/// `comity gov vote PID approve` with `key`, which must decide it.
async fn approve(net: &Network, pid: &str, key: &std::path::Path) {
    let args = [
        "gov",
        "vote",
        pid,
        "approve",
        "--key",
        key.to_str().unwrap(),
    ];
    let out = net.cli(&args, Duration::from_secs(30)).await;
    assert!(
        out.stdout.contains("state:       accepted"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// The proposal id `comity gov propose` printed.
fn proposal_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("proposal "))
        .unwrap_or_else(|| panic!("no proposal id in {stdout}"))
        .to_string()
}

fn json_cbor(v: Value) -> cbor::Value {
    cbor::from_serde(&v).unwrap()
}
