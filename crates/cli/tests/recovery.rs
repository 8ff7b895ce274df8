//! Disaster recovery: two of three nodes are lost for good, so Raft cannot
//! commit and governance cannot vote. A majority of members sign a decision
//! to continue from the surviving copy with three new nodes; the new network
//! keeps every acknowledged transaction, records the decision on the ledger,
//! takes writes again, and its receipts verify offline against the original
//! network identity (genesis hash and genesis node set) alone. One of the
//! new nodes had asked to join before the loss: the decision trusts it and
//! frees its place among the pending requests.

mod common;

use comity_client::{Hash, TxState};
use comity_core::entry::{EntryKind, Leaf};
use comity_core::receipt::Receipt;
use common::cluster::Cluster;
use common::load::check_acknowledged;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_restart_a_network_that_lost_its_majority() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut c = Cluster::start(3, false).await;
    let user = c.signer("user0");
    let client = c.client(0);
    let mut acked: HashMap<Hash, u64> = HashMap::new();
    for k in 0..30 {
        let s = client
            .submit(&user.kv_put(&format!("before/{k}"), b"v"), true)
            .await
            .expect("write");
        assert_eq!(s.status, TxState::Committed);
        acked.insert(s.id, s.index.expect("index"));
    }
    // A node asks to join; its request commits, then it waits for a vote.
    let joiner = c.join_new_node(0);
    let joiner_id = node_id(&c, joiner);
    let deadline = Instant::now() + LONG;
    while client.health().await.ok().and_then(|h| h.join_requests) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the join request never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(identity_status(&client, &joiner_id).await, "pending");
    // Let the followers learn the last commit, then lose two nodes for good.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill9(1);
    c.kill9(2);
    c.kill9(joiner);
    let s = tokio::time::timeout(
        Duration::from_secs(3),
        client.submit(&user.kv_put("lost", b"x"), true),
    )
    .await;
    assert!(
        !matches!(s, Ok(Ok(ref st)) if st.status == TxState::Committed),
        "one node of three committed alone: {s:?}"
    );
    // Seeding copies the survivor's files: not while its node runs.
    let early = c.tmp.path().join("too-early");
    let survivor = c.node_dir(0).join("data");
    seed_refused(&c, &survivor, &early, "in use by a running node").await;
    c.stop(0).await;
    // A copy that recorded a divergence (nodes of a quorum signed other
    // roots than it computed) is refused, and what was copied removed.
    let diverged = c.tmp.path().join("diverged");
    let cp = std::process::Command::new("cp")
        .args(["-a", survivor.to_str().unwrap(), diverged.to_str().unwrap()])
        .status()
        .expect("cp");
    assert!(cp.success());
    {
        let (store, _) = comity_store::Store::open(
            &diverged.join("ledger"),
            comity_store::segments::DEFAULT_ROLL_BYTES,
        )
        .expect("the copy opens");
        let txn = store.begin().unwrap();
        txn.batch()
            .unwrap()
            .aux_put(comity_apps::keys::DIVERGED, &7u64.to_be_bytes())
            .unwrap();
        txn.commit(true).unwrap();
    }
    seed_refused(
        &c,
        &diverged,
        &early,
        "signed checkpoint 7 with other roots",
    )
    .await;

    let decision = c.tmp.path().join("decision.cbor");
    let extra = format!("recovery = \"{}\"\n", decision.display());
    // The new set: the node that asked to join, restarted to recover, and two more.
    let toml = c.node_dir(joiner).join("node.toml");
    let joiner_toml = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{extra}{joiner_toml}")).unwrap();
    std::fs::remove_dir_all(c.node_dir(joiner).join("data")).ok();
    let mut news = vec![joiner];
    news.extend((0..2).map(|_| c.new_node(&extra)));
    let mut toml = String::new();
    for (k, &i) in news.iter().enumerate() {
        let member = c.signer(&format!("member{k}")).id;
        toml += &format!(
            "[[nodes]]\nkey = \"{}\"\nmember = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
            c.node_dir(i).join("node.key.pem").display(),
            hex::encode(member),
            c.base + i as u16
        );
    }
    let nodes_toml = c.tmp.path().join("recovery-nodes.toml");
    std::fs::write(&nodes_toml, &toml).unwrap();
    let (survivor, decision_s) = (survivor.to_str().unwrap(), decision.to_str().unwrap());
    // The new set follows the rules of a node.trust vote: a user cannot
    // operate a node.
    let user_id = hex::encode(c.signer("user0").id);
    let by_user = c.tmp.path().join("by-user.toml");
    let first = toml.split("[[nodes]]").nth(1).unwrap();
    let member0 = hex::encode(c.signer("member0").id);
    std::fs::write(
        &by_user,
        format!("[[nodes]]{}", first.replace(&member0, &user_id)),
    )
    .unwrap();
    let args = [
        "recovery",
        "prepare",
        "--from",
        survivor,
        "--nodes",
        by_user.to_str().unwrap(),
        "--reason",
        "x",
        "-o",
        decision_s,
    ];
    let out = common::run_cli(&c.data, c.tmp.path(), &args, LONG).await;
    assert!(
        !out.status.success() && out.stderr.contains("is not an active member"),
        "{}",
        out.stderr
    );
    c.cli(&[
        "recovery",
        "prepare",
        "--from",
        survivor,
        "--nodes",
        nodes_toml.to_str().unwrap(),
        "--reason",
        "nodes 1 and 2 destroyed",
        "-o",
        decision_s,
    ])
    .await;
    sign_decision(&c, decision_s, "member0").await;
    sign_decision(&c, decision_s, "member1").await;
    // A majority signed, but member2 runs a node of the new set and has not.
    let shown = c.cli(&["recovery", "show", decision_s]).await;
    assert!(
        shown.contains("2 valid member signature(s) of 2 needed")
            && shown.contains(&format!(
                "operator  {}",
                hex::encode(c.signer("member2").id)
            ))
            && !shown.contains(": ready"),
        "{shown}"
    );
    sign_decision(&c, decision_s, "member2").await;
    let shown = c.cli(&["recovery", "show", decision_s]).await;
    assert_eq!(shown.matches("signed by").count(), 3, "{shown}");
    assert!(
        shown.contains("3 valid member signature(s) of 2 needed"),
        "{shown}"
    );
    assert!(shown.contains(": ready"), "{shown}");
    for &i in &news {
        let to = c.node_dir(i).join("data");
        c.cli(&[
            "recovery",
            "seed",
            "--from",
            survivor,
            "--to",
            to.to_str().unwrap(),
        ])
        .await;
    }
    for &i in &news {
        c.spawn(i);
    }
    for &i in &news {
        c.wait_healthy(i, LONG).await;
    }
    eprintln!(
        "recovered network up after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let identity = c.identity();
    let new_client = c.client(news[1]);
    check_acknowledged(&new_client, &identity, &acked, 3).await;
    let s = new_client
        .submit(&user.kv_put("after/recovery", b"v"), true)
        .await
        .expect("write after recovery");
    assert_eq!(s.status, TxState::Committed, "{s:?}");
    let deadline = Instant::now() + LONG;
    let receipt = loop {
        if let Ok(Some(b)) = new_client.receipt(&s.id).await {
            break Receipt::from_cose(&b).expect("receipt parses");
        }
        assert!(Instant::now() < deadline, "no receipt after recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        receipt.chain.len(),
        1,
        "the chain carries the recovery decision"
    );
    receipt
        .verify(&identity)
        .expect("a receipt after recovery verifies against the genesis identity");
    // The decision is itself an entry of the ledger.
    let entries = new_client.entries(0, 1000).await.expect("entries");
    let recoveries: Vec<_> = entries
        .iter()
        .filter_map(|r| Leaf::from_cbor(&r.leaf).ok())
        .filter(|l| l.kind == EntryKind::Recovery)
        .collect();
    assert_eq!(recoveries.len(), 1, "one recovery entry");
    assert!(recoveries[0].outcome == comity_core::entry::Outcome::Applied);
    // The decision trusted the node that had asked to join and freed its place.
    assert_eq!(identity_status(&new_client, &joiner_id).await, "trusted");
    let h = new_client.health().await.expect("health");
    assert_eq!(h.join_requests, Some(0), "{h:?}");
    let out = c.ledger_verify(news[0]).await;
    assert!(out.contains("OK"), "{out}");
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// `comity recovery sign decision` with `member`'s key.
async fn sign_decision(c: &Cluster, decision: &str, member: &str) {
    let key = c.data.join("keys").join(format!("{member}.key.pem"));
    c.cli(&["recovery", "sign", decision, "--key", key.to_str().unwrap()])
        .await;
}

/// `comity recovery seed --from from --to to` fails, saying `why`, and
/// leaves no copy.
async fn seed_refused(c: &Cluster, from: &Path, to: &Path, why: &str) {
    let args = [
        "recovery",
        "seed",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ];
    let out = common::run_cli(&c.data, c.tmp.path(), &args, LONG).await;
    assert!(
        !out.status.success() && out.stderr.contains(why),
        "{}",
        out.stderr
    );
    assert!(
        !to.join("ledger").exists() && !to.join("ledger.seeding").exists(),
        "no copy is left"
    );
}

fn node_id(c: &Cluster, n: usize) -> Hash {
    let key = std::fs::read_to_string(c.node_dir(n).join("node.key.pem")).unwrap();
    comity_core::crypto::SigningKey::from_pkcs8_pem(&key)
        .unwrap()
        .public()
        .fingerprint()
}

async fn identity_status(client: &comity_client::Client, id: &Hash) -> String {
    let v = client
        .gov_get(&["identities", &hex::encode(id)], &[])
        .await
        .expect("identity record");
    v["identity"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
