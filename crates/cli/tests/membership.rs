//! Joining and leaving by vote: a new node runs `comity node join`, stays
//! out until members trust it, then receives the ledger and becomes a Raft
//! voter; a retired node leaves the group. Receipts after each change carry
//! the node-set chain, endorsed by the previous set, and verify offline
//! against the genesis network identity alone. A node that fell behind the
//! leader's purged log catches up by snapshot.

mod common;

use comity_client::{Client, Hash, Health, Signer, TxState};
use comity_core::cbor;
use comity_core::receipt::Receipt;
use common::cluster::Cluster;
use serde_json::json;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

async fn commit(client: &Client, tx: Vec<u8>, what: &str) -> Hash {
    let s = client
        .submit(&tx, true)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(s.status, TxState::Committed, "{what}: {s:?}");
    assert_eq!(s.outcome.as_deref(), Some("ok"), "{what}: {s:?}");
    s.id
}

/// Proposes `actions` as member0 and approves as member1 (2 of 3 members).
async fn pass(c: &Cluster, client: &Client, actions: serde_json::Value, what: &str) {
    let (m0, m1): (Signer, Signer) = (c.signer("member0"), c.signer("member1"));
    let id = commit(
        client,
        m0.gov_propose(cbor::from_serde(&actions).unwrap(), what),
        what,
    )
    .await;
    commit(client, m1.gov_vote(&id, true), what).await;
    let p = client
        .gov_get(&["proposals", &hex::encode(id)], &[])
        .await
        .expect("proposal");
    assert_eq!(p["proposal"]["state"], "accepted", "{what}: {p}");
}

fn node_key(c: &Cluster, n: usize) -> comity_core::crypto::PublicKey {
    let key = std::fs::read_to_string(c.node_dir(n).join("node.key.pem")).unwrap();
    comity_core::crypto::SigningKey::from_pkcs8_pem(&key)
        .unwrap()
        .public()
}

/// The record of node `id` once its join request has committed.
async fn wait_pending(client: &Client, id: &Hash) -> serde_json::Value {
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(v) = client.gov_get(&["identities", &hex::encode(id)], &[]).await {
            assert_eq!(v["identity"]["status"], "pending", "{v}");
            return v["identity"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the join request never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Members vote to trust node `new` (operated by member0); returns its id.
async fn trust(c: &Cluster, client: &Client, new: usize) -> Hash {
    let key = node_key(c, new);
    let member0 = c.signer("member0").id;
    pass(
        c,
        client,
        json!([{"action": "node.trust", "args": {
            "key": hex::encode(key.to_spki_der()),
            "member": hex::encode(member0),
            "name": format!("node{new}"),
            "data": {"address": format!("127.0.0.1:{}", c.base + new as u16)},
        }}]),
        &format!("trust node{new}"),
    )
    .await;
    key.fingerprint()
}

/// Waits until node `node` reads `value` under `owner`'s kv `key` (as a
/// member): it has caught up that far.
async fn wait_read(c: &Cluster, node: usize, owner: &Hash, key: &str, value: &[u8], what: &str) {
    let reader = c.client_as(node, "member0");
    let deadline = Instant::now() + LONG;
    while reader
        .kv_get(Some(owner), key)
        .await
        .ok()
        .and_then(|r| r.value)
        .as_deref()
        != Some(value)
    {
        assert!(
            Instant::now() < deadline,
            "node{node} {what}; its log:\n{}",
            c.log(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets several reconciler rounds (every 500 ms) pass, writes committing
/// all along.
async fn reconciler_rounds(c: &Cluster, client: &Client) {
    for k in 0..8 {
        commit(
            client,
            c.signer("user0").kv_put(&format!("k{k}"), b"x"),
            "a write",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// The voters a node reports (none while it has no leader).
async fn voters(client: &Client) -> Vec<u64> {
    let h: Option<Health> = client.health().await.ok();
    h.map(|h| h.members.iter().filter(|m| m.voter).map(|m| m.id).collect())
        .unwrap_or_default()
}

async fn wait_voters(client: &Client, n: usize, what: &str) {
    let deadline = Instant::now() + LONG;
    while voters(client).await.len() != n {
        assert!(
            Instant::now() < deadline,
            "{what}: the group never had {n} voters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A write whose receipt verifies offline against the genesis identity with
/// a chain of `chain` node-set changes.
async fn receipt_with_chain(c: &Cluster, client: &Client, key: &str, chain: usize) {
    let id = commit(client, c.signer("user0").kv_put(key, b"v"), key).await;
    let deadline = Instant::now() + LONG;
    let receipt = loop {
        if let Ok(Some(b)) = client.receipt(&id).await {
            break Receipt::from_cose(&b).expect("receipt parses");
        }
        assert!(Instant::now() < deadline, "no receipt for {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        receipt.chain.len(),
        chain,
        "{key}: node-set changes in the receipt"
    );
    let v = receipt
        .verify(&c.identity())
        .expect("receipt verifies against the genesis identity");
    assert_eq!(v.leaf.digest, id);
}

/// `comity doc …` as user0 against node 0; its standard output.
async fn doc_cli(c: &Cluster, args: &[&str]) -> String {
    let keys = c.data.join("keys");
    let (key, cert, url) = (
        keys.join("user0.key.pem"),
        keys.join("user0.cert.pem"),
        c.url(0),
    );
    let mut all = vec![
        "--key",
        key.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--node",
        &url,
        "doc",
    ];
    all.extend_from_slice(args);
    c.cli(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_by_vote_and_a_node_retires_by_vote() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut c = Cluster::start(3, false).await;
    let client = c.client_as(0, "member0");
    for k in 0..20 {
        commit(
            &client,
            c.signer("user0").kv_put(&format!("before/{k}"), b"x"),
            "history",
        )
        .await;
    }
    let deed = c.tmp.path().join("deed.txt");
    std::fs::write(&deed, b"a deed registered under the genesis node set").unwrap();
    let deed = deed.to_str().unwrap();
    let out = doc_cli(&c, &["register", deed, "--title", "Deed"]).await;
    let doc = out
        .lines()
        .find_map(|l| l.strip_prefix("document "))
        .unwrap_or_else(|| panic!("no document id in {out}"))
        .trim()
        .to_string();

    let new = c.join_new_node(0);
    let node_id = node_key(&c, new).fingerprint();
    let pending = wait_pending(&client, &node_id).await;
    assert_eq!(pending["operator"], hex::encode(c.signer("member0").id));
    assert_eq!(
        pending["data"]["address"],
        format!("127.0.0.1:{}", c.base + new as u16)
    );
    // A data directory that joined another network is refused, naming it
    // (the same key, another network's join.json).
    let other = c.tmp.path().join("joined-elsewhere");
    let mut joined = comity_node::join::load(&c.node_dir(new).join("data"))
        .unwrap()
        .expect("join.json");
    joined.network_id = [7; 32];
    comity_node::join::save(&other.join("data"), &joined).unwrap();
    let toml = other.join("node.toml");
    let (key, cert) = (
        c.node_dir(new).join("node.key.pem"),
        c.node_dir(new).join("tls.pem"),
    );
    std::fs::write(
        &toml,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"{}\"\nnode_key = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            other.join("data").display(),
            key.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let url0 = c.url(0);
    let args = [
        "node",
        "join",
        "--network",
        &url0,
        "--config",
        toml.to_str().unwrap(),
    ];
    let out = common::run_cli(&c.data, c.tmp.path(), &args, Duration::from_secs(60)).await;
    assert!(
        !out.status.success()
            && out.stderr.contains(&format!(
                "but this node joined network {}",
                hex::encode([7u8; 32])
            )),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let h: Health = client.health().await.expect("health");
    assert_eq!(h.join_requests, Some(1), "{h:?}");
    let status = c.cli(&["status"]).await;
    assert!(status.contains("1 node(s) asked to join"), "{status}");
    // Its governance history starts with the request.
    let history = c.cli(&["gov", "history", &hex::encode(node_id)]).await;
    assert!(history.contains("node.join"), "{history}");
    let listed = c.cli(&["gov", "list", "nodes"]).await;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&hex::encode(node_id)))
        .unwrap_or_else(|| panic!("the joining node is not listed:\n{listed}"));
    assert!(
        line.contains("pending") && line.contains(&format!("127.0.0.1:{}", c.base + new as u16)),
        "{line}"
    );
    assert_eq!(
        voters(&client).await.len(),
        3,
        "an untrusted node is not added"
    );
    // Members trust it from its request alone: no certificate passed around.
    let out = c
        .cli(&[
            "gov",
            "propose",
            "node.trust",
            "--id",
            &hex::encode(node_id),
        ])
        .await;
    let pid = out
        .lines()
        .find_map(|l| l.strip_prefix("proposal "))
        .unwrap_or_else(|| panic!("no proposal id in {out}"))
        .to_string();
    let key1 = c.data.join("keys").join("member1.key.pem");
    let out = c
        .cli(&[
            "gov",
            "vote",
            &pid,
            "approve",
            "--key",
            key1.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("state:       accepted"), "{out}");
    let h: Health = client.health().await.expect("health");
    assert_eq!(h.join_requests, Some(0), "{h:?}");
    wait_voters(&client, 4, "after node.trust").await;
    c.wait_healthy(new, LONG).await;
    eprintln!(
        "node3 joined and votes after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Join requests that would be refused never reach the ledger: from a
    // trusted node (409), or naming someone who is not a member (404).
    let net = c.identity().network_id;
    let node3 = Signer::from_pem_file(c.node_dir(new).join("node.key.pem"), net).unwrap();
    let stranger = Signer::new(
        comity_core::crypto::SigningKey::generate(comity_core::crypto::Alg::EdDsa),
        net,
    );
    let data = [("address".to_string(), "127.0.0.1:1".to_string())].into();
    for (signer, member, status, code) in [
        (&node3, c.signer("member0").id, 409, "already_exists"),
        (&stranger, c.signer("user0").id, 404, "not_found"),
    ] {
        let e = client
            .submit(&signer.node_join(&member, "again", &data), true)
            .await
            .expect_err("refused at ingress");
        assert_eq!((e.status(), e.code()), (Some(status), Some(code)), "{e}");
    }
    let stranger_record = client
        .gov_get(&["identities", &hex::encode(stranger.id)], &[])
        .await;
    assert_eq!(
        stranger_record.err().and_then(|e| e.status()),
        Some(404),
        "a refused request records nothing"
    );
    // A request naming member0 waits until member0 dismisses it alone.
    let unwanted = stranger.node_join(&c.signer("member0").id, "unwanted", &data);
    commit(&client, unwanted, "an unwanted join request").await;
    assert_eq!(client.health().await.unwrap().join_requests, Some(1));
    let out = c.cli(&["gov", "dismiss", &hex::encode(stranger.id)]).await;
    assert!(out.contains("is dismissed"), "{out}");
    let record = client
        .gov_get(&["identities", &hex::encode(stranger.id)], &[])
        .await
        .expect("the dismissed node's record");
    assert_eq!(record["identity"]["status"], "retired", "{record}");
    assert_eq!(client.health().await.unwrap().join_requests, Some(0));
    receipt_with_chain(&c, &client, "after/join", 1).await;
    // The new node has the whole ledger, from genesis.
    let early = c.client(new).ledger_receipt(0).await;
    assert!(
        matches!(early, Ok(Some(_))),
        "node3 serves the genesis receipt: {early:?}"
    );

    pass(
        &c,
        &client,
        json!([{"action": "node.retire", "args": {"id": hex::encode(node_id)}}]),
        "retire node3",
    )
    .await;
    wait_voters(&client, 3, "after node.retire").await;
    receipt_with_chain(&c, &client, "after/retire", 2).await;
    // Evidence for a document registered before both changes: its record is
    // proved at a checkpoint the new node set signed, so the bundle carries
    // the node-set chain up to that checkpoint, not its event's.
    let bundle = c.tmp.path().join("deed.evidence");
    let bundle = bundle.to_str().unwrap();
    doc_cli(&c, &["evidence", &doc, "-o", bundle]).await;
    let out = doc_cli(&c, &["verify-evidence", bundle, "--file", deed]).await;
    assert!(out.contains("VERIFIED"), "{out}");
    let out = c.ledger_verify(0).await;
    assert!(out.contains("OK"), "{out}");
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// Retiring the leader of two nodes: joint consensus needs the old set's
/// majority, here the retiring leader too, so the other node keeps accepting
/// its requests until it has left the Raft group (it refused them at once,
/// and the change and every later write waited for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_of_two_nodes_retires() {
    let _serial = common::serial().await;
    let c = Cluster::start(2, false).await;
    let client = c.client_as(0, "member0");
    commit(
        &client,
        c.signer("user0").kv_put("before", b"x"),
        "a write before",
    )
    .await;
    let leader = client.health().await.unwrap().leader.expect("a leader");
    let (gone, stays) = match (0..2)
        .position(|n| comity_consensus::network::raft_id(&node_key(&c, n).fingerprint()) == leader)
    {
        Some(n) => (n, 1 - n),
        None => panic!("leader {leader} is neither node"),
    };
    let client = c.client_as(stays, "member0");
    pass(
        &c,
        &client,
        json!([{"action": "node.retire",
                "args": {"id": hex::encode(node_key(&c, gone).fingerprint())}}]),
        "retire the leader",
    )
    .await;
    wait_voters(&client, 1, "after node.retire").await;
    commit(
        &client,
        c.signer("user0").kv_put("after", b"x"),
        "a write after",
    )
    .await;
}

/// A node joining a network whose leader was trusted after genesis catches
/// up from that leader: replaying from genesis, its applied node set lacks
/// the leader, so it goes by the set it joined with until it sees itself
/// trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_a_network_led_by_a_node_trusted_after_genesis() {
    let _serial = common::serial().await;
    let mut c = Cluster::start(1, false).await;
    let client = c.client_as(0, "member0");
    let user = c.signer("user0");
    commit(&client, user.kv_put("early", b"1"), "a write").await;
    // Many Raft entries between genesis and node1's trust: a joining node
    // applies genesis while the leader still sends it the rest.
    for k in 0..1000 {
        commit(&client, user.kv_put(&format!("k{k}"), b"x"), "a write").await;
    }
    // node1 joins, then node0, the genesis node, retires: node1 leads alone.
    let first = c.join_new_node(0);
    wait_pending(&client, &node_key(&c, first).fingerprint()).await;
    trust(&c, &client, first).await;
    wait_voters(&client, 2, "after trusting node1").await;
    let genesis_node = node_key(&c, 0).fingerprint();
    pass(
        &c,
        &client,
        json!([{"action": "node.retire", "args": {"id": hex::encode(genesis_node)}}]),
        "retire the genesis node",
    )
    .await;
    let client = c.client_as(first, "member0");
    wait_voters(&client, 1, "after retiring node0").await;

    let second = c.join_new_node(first);
    wait_pending(&client, &node_key(&c, second).fingerprint()).await;
    trust(&c, &client, second).await;
    wait_voters(&client, 2, "after trusting node2").await;
    c.wait_healthy(second, LONG).await;
    wait_read(&c, second, &user.id, "early", b"1", "did not catch up").await;

    // Its ledger is of another network than its join.json names (as if a
    // peer had given it another genesis): it refuses to start.
    c.stop(second).await;
    let path = c.node_dir(second).join("data").join("join.json");
    let mut join: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    join["network_id"] = json!(hex::encode([9u8; 32]));
    std::fs::write(&path, serde_json::to_vec(&join).unwrap()).unwrap();
    c.spawn(second);
    let status = c.wait_exit(second, LONG).await;
    let log = c.log(second);
    assert!(
        !status.success() && log.contains("but it joined network"),
        "{status}: {log}"
    );
}

/// A trusted node that does not catch up (here nothing answers at its
/// address) stays a learner: made a voter of a one-node group, it would be
/// needed for every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_that_is_not_caught_up_is_not_made_a_voter() {
    let _serial = common::serial().await;
    let mut c = Cluster::start(1, false).await;
    let client = c.client_as(0, "member0");
    let new = c.new_node("");
    let node_id = trust(&c, &client, new).await;
    reconciler_rounds(&c, &client).await;
    let h = client.health().await.expect("health");
    assert_eq!(voters(&client).await.len(), 1, "{:?}", h.members);
    assert_eq!(
        h.members.len(),
        2,
        "the new node is a learner: {:?}",
        h.members
    );
    // Retired before it ever caught up, it leaves the group: no change of
    // the voters would remove it, and its peers trust it while it is in it.
    pass(
        &c,
        &client,
        json!([{"action": "node.retire", "args": {"id": hex::encode(node_id)}}]),
        "retire the learner",
    )
    .await;
    let deadline = Instant::now() + LONG;
    loop {
        let h = client.health().await.expect("health");
        if h.members.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retired learner is still in the group: {:?}; the leader's log:\n{}",
            h.members,
            c.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A trusted node is recognised by its key, not its address: found at
/// another node's address (a wrong or hijacked address), it answers with
/// that node's key and is not taken for the node called, so it cannot
/// acknowledge writes it never received or be made a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_is_recognised_by_its_key_not_its_address() {
    let _serial = common::serial().await;
    let mut c = Cluster::start(3, false).await;
    let leader = c.wait_leader(&[], LONG).await;
    let client = c.client_as(leader, "member0");
    let new = c.new_node("");
    let elsewhere = (leader + 1) % 3;
    pass(
        &c,
        &client,
        json!([{"action": "node.trust", "args": {
            "key": hex::encode(node_key(&c, new).to_spki_der()),
            "member": hex::encode(c.signer("member0").id),
            "name": "at another node's address",
            "data": {"address": format!("127.0.0.1:{}", c.base + elsewhere as u16)},
        }}]),
        "trust a node at another node's address",
    )
    .await;
    reconciler_rounds(&c, &client).await;
    let h = client.health().await.expect("health");
    assert_eq!(h.members.len(), 4, "{:?}", h.members);
    assert_eq!(
        voters(&client).await.len(),
        3,
        "the node at another's address was taken for the node called: {:?}",
        h.members
    );
}

/// A follower that was down while the leader snapshotted and purged its log
/// installs a snapshot: it fetches the ledger records it lacks from its
/// peers, replays them, and then follows the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let _serial = common::serial().await;
    let mut c = Cluster::start_with_limits(3, false, "raft_snapshot_every = 32\n").await;
    let leader = c.wait_leader(&[], LONG).await;
    let behind = (leader + 1) % 3;
    let client = c.client_as(leader, "member0");
    let user = c.signer("user0");
    commit(&client, user.kv_put("early", b"1"), "before the stop").await;
    c.kill9(behind);
    // Each commit is at least one Raft entry: the leader snapshots and purges several times.
    for k in 0..150 {
        commit(
            &client,
            user.kv_put(&format!("while-down/{k}"), b"x"),
            "while a node is down",
        )
        .await;
    }
    c.spawn(behind);
    c.wait_healthy(behind, LONG).await;
    commit(&client, user.kv_put("after", b"2"), "after the restart").await;
    let reader = c.client_as(behind, "member0");
    let deadline = Instant::now() + LONG;
    loop {
        let read = reader.kv_get(Some(&user.id), "after").await;
        if read.as_ref().ok().and_then(|r| r.value.as_deref()) == Some(b"2".as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node{behind} did not catch up (read: {read:?}; its ledger: {:?}, the leader's: {:?}); its log:\n{}",
            reader.ledger_size().await,
            client.ledger_size().await,
            c.log(behind),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missed = reader
        .kv_get(Some(&user.id), "while-down/149")
        .await
        .unwrap();
    assert_eq!(missed.value.as_deref(), Some(b"x".as_slice()));
    let log = c.log(behind);
    assert!(
        log.contains("installed a snapshot"),
        "node{behind} caught up without a snapshot; its log:\n{log}"
    );
    // Its ledger, rebuilt from the peers' records, replays from genesis.
    c.ledger_verify(behind).await;

    // A new node joining now gets the whole ledger the same way, from genesis.
    let new = c.join_new_node(0);
    wait_pending(&client, &node_key(&c, new).fingerprint()).await;
    trust(&c, &client, new).await;
    wait_voters(&client, 4, "after node.trust").await;
    c.wait_healthy(new, LONG).await;
    wait_read(
        &c,
        new,
        &user.id,
        "early",
        b"1",
        "did not receive the ledger",
    )
    .await;
    let log = c.log(new);
    assert!(
        log.contains("installed a snapshot"),
        "node{new} joined without a snapshot; its log:\n{log}"
    );
}

/// Submits `tx` until it commits: while the group has no leader, a node
/// answers that it cannot take writes yet.
async fn commit_eventually(client: &Client, tx: Vec<u8>, what: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        match client.submit(&tx, true).await {
            Ok(s) if s.status == TxState::Committed => {
                assert_eq!(s.outcome.as_deref(), Some("ok"), "{what}: {s:?}");
                return;
            }
            Ok(s) => assert!(Instant::now() < deadline, "{what}: {s:?}"),
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node that was down while a new node was trusted comes back to find
/// that node leading. Its own state does not know the leader, so it first
/// learns the current node set from a final checkpoint another node of its
/// group relays (here the retired node0), verified like a receipt from the
/// node set it holds; it refused the leader for good before, and with the
/// only other voter down, the network took no more writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_node_follows_a_leader_trusted_while_it_was_down() {
    let _serial = common::serial().await;
    let mut c = Cluster::start(3, false).await;
    let user = c.signer("user0");
    let client = c.client_as(0, "member0");
    commit(&client, user.kv_put("before", b"1"), "a write").await;
    c.kill9(2);

    let new = c.join_new_node(0);
    wait_pending(&client, &node_key(&c, new).fingerprint()).await;
    trust(&c, &client, new).await;
    wait_voters(&client, 4, "after trusting node3").await;
    // node0 relays later, from what it holds when retired: a final
    // checkpoint whose chain carries node3's trust, endorsed.
    receipt_with_chain(&c, &client, "endorsed", 1).await;
    c.wait_healthy(new, LONG).await;
    let client = c.client_as(new, "member0");
    pass(
        &c,
        &client,
        json!([{"action": "node.retire",
                "args": {"id": hex::encode(node_key(&c, 0).fingerprint())}}]),
        "retire node0",
    )
    .await;
    wait_voters(&client, 3, "after retiring node0").await;
    commit(&client, user.kv_put("while-down", b"2"), "a write").await;

    // Of the group {node1, node2, node3}, only node3 now runs: it can lead
    // only with node2, which has never heard of it.
    c.kill9(1);
    c.spawn(2);
    commit_eventually(
        &client,
        user.kv_put("after", b"3"),
        "a write after node2 is back",
    )
    .await;
    wait_read(&c, 2, &user.id, "while-down", b"2", "did not catch up").await;
    wait_read(&c, 2, &user.id, "after", b"3", "did not catch up").await;
    assert!(
        c.log(2)
            .contains("learned the node set of a final checkpoint"),
        "node2 took node3 on a verified checkpoint; its log:\n{}",
        c.log(2)
    );
}
