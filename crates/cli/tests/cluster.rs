//! A replicated network under a steady load of signed transactions: the
//! leader, a follower, and two nodes of five are killed with SIGKILL and
//! restarted; a leader is cut off from the others and healed; a node whose
//! connection places idle clients hold still takes its peers'. Afterwards
//! every acknowledged transaction must be committed at the index it was
//! acknowledged at, on every node, with receipts that verify offline against
//! the network identity, and every node's ledger must pass `comity ledger verify`.

mod common;

use comity_client::{Hash, TxState};
use common::cluster::Cluster;
use common::load::{check_acknowledged, merge_acked, Load};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WRITERS: usize = 12;
const LONG: Duration = Duration::from_secs(60);

/// Every node has every acknowledged transaction at its index (receipts
/// sampled), and its ledger verifies.
async fn check_all_nodes(c: &Cluster, acked: &HashMap<Hash, u64>) {
    let identity = c.identity();
    for i in 0..c.n {
        check_acknowledged(&c.client(i), &identity, acked, 25).await;
        let out = c.ledger_verify(i).await;
        assert!(out.contains("OK"), "node{i}: {out}");
    }
    eprintln!(
        "{} acknowledged transactions found on all {} nodes",
        acked.len(),
        c.n
    );
}

/// Kills the leader; returns (time until the others agree on a new leader,
/// time until the next acknowledged write), both from the kill.
async fn kill_leader(c: &mut Cluster, load: &Load) -> (usize, Duration, Duration) {
    let leader = c.wait_leader(&[], LONG).await;
    let t = Instant::now();
    c.kill9(leader);
    c.wait_leader(&[leader], LONG).await;
    let elected = t.elapsed();
    load.wait_for_acks(1, LONG, "after the leader was killed")
        .await;
    (leader, elected, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_lose_nothing_when_leader_and_follower_are_killed() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut c = Cluster::start(3, false).await;
    eprintln!("3 nodes up in {:.1} s", t0.elapsed().as_secs_f64());
    let load = Load::start(c.clients(), c.signer("user0"), WRITERS, "three");
    load.wait_for_acks(100, LONG, "initial load").await;

    let (old, elected, first_ack) = kill_leader(&mut c, &load).await;
    eprintln!(
        "FAILOVER (3 nodes): new leader agreed {} ms after kill -9 of the leader; first write acknowledged after {} ms",
        elected.as_millis(),
        first_ack.as_millis()
    );
    load.wait_for_acks(50, LONG, "with the old leader down")
        .await;
    c.spawn(old);
    c.wait_healthy(old, LONG).await;
    load.wait_for_acks(50, LONG, "after the old leader returned")
        .await;

    let leader = c.wait_leader(&[], LONG).await;
    let follower = (leader + 1) % 3;
    c.kill9(follower);
    load.wait_for_acks(100, LONG, "with a follower down").await;
    c.spawn(follower);
    c.wait_healthy(follower, LONG).await;
    load.wait_for_acks(50, LONG, "after the follower returned")
        .await;

    let mut acked = HashMap::new();
    merge_acked(&mut acked, &load.stop().await);
    check_all_nodes(&c, &acked).await;
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_keep_committing_with_two_killed() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut c = Cluster::start(5, false).await;
    eprintln!("5 nodes up in {:.1} s", t0.elapsed().as_secs_f64());
    let load = Load::start(c.clients(), c.signer("user0"), WRITERS, "five");
    load.wait_for_acks(100, LONG, "initial load").await;

    let (first, elected, first_ack) = kill_leader(&mut c, &load).await;
    eprintln!(
        "FAILOVER (5 nodes): new leader agreed {} ms after kill -9; first write after {} ms",
        elected.as_millis(),
        first_ack.as_millis()
    );
    let leader = c.wait_leader(&[first], LONG).await;
    let second = (0..5)
        .find(|i| *i != first && *i != leader)
        .expect("a follower");
    c.kill9(second);
    load.wait_for_acks(100, LONG, "with two of five nodes down")
        .await;

    c.spawn(first);
    c.spawn(second);
    c.wait_healthy(first, LONG).await;
    c.wait_healthy(second, LONG).await;
    load.wait_for_acks(50, LONG, "after both returned").await;

    let mut acked = HashMap::new();
    merge_acked(&mut acked, &load.stop().await);
    check_all_nodes(&c, &acked).await;
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// `?linearizable=true` while node `cut` is cut off and `leader` leads the
/// majority: the cut-off node refuses it (it cannot learn what was
/// committed) though it still serves its local state; the majority's
/// follower serves it, current; and it needs a registered identity.
async fn check_linearizable_reads(c: &Cluster, cut: usize, leader: usize) {
    let (cert, key) = c.identity_pem("user0");
    let user = common::http_client(&c.ca_pem(), Some((&cert, &key)));
    let anonymous = common::http_client(&c.ca_pem(), None);
    let get = |http: &reqwest::Client, i: usize, path: &str| {
        let req = http.get(format!("{}{path}", c.url(i)));
        async move {
            let r = tokio::time::timeout(Duration::from_secs(20), req.send())
                .await
                .expect("a linearizable read answers within its wait")
                .expect("the node answers");
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap_or_default())
                    .unwrap_or_default(),
            )
        }
    };
    let size = "/v1/ledger/size";
    let lin_size = "/v1/ledger/size?linearizable=true";
    // The cut-off node answers from its own state, but not linearizably.
    assert_eq!(get(&user, cut, size).await.0, 200);
    let (status, body) = get(&user, cut, lin_size).await;
    assert_eq!(
        status, 503,
        "a cut-off node served a linearizable read: {body}"
    );
    assert_eq!(body["code"], "not_ready", "{body}");
    // A write the majority acknowledged is seen by a linearizable read on
    // the majority's follower.
    let follower = (0..c.n)
        .find(|i| *i != cut && *i != leader)
        .expect("follower");
    let tx = c.signer("user0").kv_put("linearizable/k", b"current");
    let st = c.client(leader).submit(&tx, true).await.expect("submit");
    assert_eq!(st.status, TxState::Committed, "{st:?}");
    let (status, body) = get(&user, follower, "/v1/kv/linearizable%2Fk?linearizable=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["latest_value_hex"], hex::encode(b"current"), "{body}");
    // Public data stays public, but a linearizable read costs the leader a
    // quorum round: strangers may not ask for one.
    assert_eq!(get(&anonymous, leader, size).await.0, 200);
    let (status, body) = get(&anonymous, leader, lin_size).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert_eq!(get(&user, leader, lin_size).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_never_acknowledges_and_catches_up_when_healed() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut c = Cluster::start(3, true).await;
    let load = Load::start(c.clients(), c.signer("user0"), WRITERS, "cut");
    load.wait_for_acks(100, LONG, "initial load").await;

    let old = c.wait_leader(&[], LONG).await;
    c.isolate(old);
    let t = Instant::now();
    // The majority elects a leader of its own and keeps committing.
    let new = c.wait_leader(&[old], LONG).await;
    eprintln!(
        "PARTITION: the majority agreed on node{new} {} ms after node{old} was cut off",
        t.elapsed().as_millis()
    );
    load.wait_for_acks(100, LONG, "in the majority partition")
        .await;

    // Writes sent to the cut-off node are never acknowledged.
    let signer = c.signer("user0");
    let cut_client = c.client(old);
    let mut refused = Vec::new();
    for k in 0..5 {
        let tx = signer.kv_put(&format!("minority/{k}"), b"must not be acknowledged");
        let r = tokio::time::timeout(Duration::from_secs(3), cut_client.submit(&tx, true)).await;
        if let Ok(Ok(s)) = &r {
            assert_ne!(
                s.status,
                TxState::Committed,
                "a cut-off node acknowledged a write: {s:?}"
            );
        }
        refused.push(comity_client::tx_id(&tx));
    }
    // Its health says it cannot serve writes: 503 with the health document,
    // which `comity status` shows rather than calling the node down.
    let h = cut_client
        .health_report()
        .await
        .expect("the cut-off node answers");
    assert!(
        matches!(h.status.as_str(), "no_quorum" | "starting"),
        "{h:?}"
    );
    assert!(
        cut_client.health().await.is_err(),
        "health() is for ok only"
    );

    check_linearizable_reads(&c, old, new).await;

    c.heal();
    c.wait_healthy(old, LONG).await;
    load.wait_for_acks(100, LONG, "after healing").await;
    let mut acked = HashMap::new();
    merge_acked(&mut acked, &load.stop().await);
    for id in &refused {
        assert!(!acked.contains_key(id));
    }
    check_all_nodes(&c, &acked).await;
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// A node whose connection places are all taken by clients still takes its
/// peers' connections, through the places kept for them, and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_full_of_idle_clients_still_takes_its_peers() {
    let _serial = common::serial().await;
    let mut c = Cluster::start(3, true).await;
    // Node f has 8 places: 6 for anyone, 2 kept for peers.
    let f = 2;
    c.stop(f).await;
    let toml = c.node_dir(f).join("node.toml");
    let cfg = std::fs::read_to_string(&toml).unwrap();
    assert!(cfg.contains("max_connections = 4096\n"), "{cfg}");
    let cfg = cfg.replace("max_connections = 4096\n", "max_connections = 8\n");
    std::fs::write(&toml, cfg).unwrap();
    c.spawn(f);
    c.wait_healthy(f, LONG).await;
    let user = c.signer("user0");
    // Cut off, node f loses its peers' connections; clients that complete
    // their TLS handshakes and then idle take every ordinary place (each
    // for 30 s, the time a request's headers may take).
    c.isolate(f);
    let client = c.client(c.wait_leader(&[f], LONG).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connector = tokio_rustls::TlsConnector::from(common::tls_config(&c.ca_pem()));
    let mut idle = Vec::new();
    for _ in 0..12 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.base + f as u16))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await
        {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 6, "only {} idle clients got in", idle.len());
    for k in 0..20 {
        let s = client
            .submit(&user.kv_put(&format!("while-cut/{k}"), b"v"), true)
            .await
            .expect("write");
        assert_eq!(s.status, TxState::Committed, "{s:?}");
    }
    let healed = Instant::now();
    c.heal();
    // Well within the 30 s the idle clients hold their places, the leader
    // reaches the follower through the reserve and it catches up.
    loop {
        let l = c.wait_leader(&[f], LONG).await;
        // The healed node's higher term may depose the leader meanwhile.
        let followers = match c.client(l).health().await {
            Ok(h) if h.followers.len() == 2 && h.followers.values().all(|x| x.lag == 0) => break,
            Ok(h) => format!("{:?}", h.followers),
            Err(e) => e.to_string(),
        };
        assert!(
            healed.elapsed() < Duration::from_secs(20),
            "the follower did not catch up: {followers}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "caught up {:.1} s after the heal ({} idle clients had connected)",
        healed.elapsed().as_secs_f64(),
        idle.len()
    );
    drop(idle);
}
