//! The executor end to end on a real store: genesis, transactions, a
//! checkpoint, its signature, a receipt that verifies offline, a state proof,
//! and a restart that recovers the same roots.

use comity_apps::genesis::node_info;
use comity_apps::{node, query, Command, Executor, Genesis, IdentitySpec};
use comity_core::cbor;
use comity_core::checkpoint::{self, CHECKPOINT_CONTENT_TYPE};
use comity_core::crypto::{Alg, SigningKey};
use comity_core::entry::Outcome;
use comity_core::network::{NetworkIdentity, NodeSet};
use comity_core::tx::{Tx, TxPayload};
use comity_store::Store;
use serde_bytes::ByteBuf;

const T0: u64 = 1_763_000_000_000;

struct Net {
    member: SigningKey,
    user: SigningKey,
    node: SigningKey,
    genesis: Vec<u8>,
    identity: NetworkIdentity,
}

fn network() -> Net {
    let member = SigningKey::generate(Alg::EdDsa);
    let user = SigningKey::generate(Alg::Es256);
    let node = SigningKey::generate(Alg::EdDsa);
    let nodes = NodeSet(vec![node_info(
        &node.public(),
        member.public().fingerprint(),
    )]);
    let g = Genesis::new(
        "test",
        T0,
        vec![IdentitySpec::new(member.public().to_spki_der(), "m")],
        vec![IdentitySpec::new(user.public().to_spki_der(), "u")],
        nodes.clone(),
    );
    let identity = NetworkIdentity {
        name: "test".into(),
        network_id: g.network_id(),
        nodes,
    };
    Net {
        member,
        user,
        node,
        genesis: g.to_cbor(),
        identity,
    }
}

fn tx(
    net: &Net,
    key: &SigningKey,
    app: &str,
    op: &str,
    args: cbor::Value,
    nonce: u8,
    created: u64,
) -> Vec<u8> {
    let p = TxPayload {
        net: net.identity.network_id,
        app: app.into(),
        op: op.into(),
        args,
        nonce: vec![nonce; 16],
        created,
    };
    Tx::sign(key, &key.public().fingerprint(), &p)
}

/// The node's signature over a checkpoint `body`, and the `node.checkpoint`
/// transaction that submits it.
fn checkpoint_signature(net: &Net, body: &[u8], nonce: u8, created: u64) -> (Vec<u8>, Vec<u8>) {
    let node_id = net.node.public().fingerprint();
    let sig = checkpoint::sign(CHECKPOINT_CONTENT_TYPE, body, &net.node, &node_id);
    let args = node::signature_args(body, &sig);
    let tx = tx(net, &net.node, "node", "checkpoint", args, nonce, created);
    (sig, tx)
}

fn put(k: &str, v: &[u8]) -> cbor::Value {
    cbor::map([("key", cbor::text(k)), ("value", cbor::bytes(v.to_vec()))])
}

fn apply(store: &Store, ex: &mut Executor, cmd: Command) -> comity_apps::executor::Output {
    let t = store.begin().unwrap();
    let out = ex.apply(&mut t.batch().unwrap(), &cmd, &|_| None).unwrap();
    t.commit(true).unwrap();
    out
}

fn batch(txs: Vec<Vec<u8>>, time: u64) -> Command {
    Command::Batch {
        time,
        txs: txs.into_iter().map(ByteBuf::from).collect(),
    }
}

/// A store in `dir` with the network's genesis applied.
fn started(dir: &std::path::Path, net: &Net) -> (Store, Executor) {
    let (store, _) = Store::open(dir, 1 << 20).unwrap();
    let mut ex = Executor::load(&store).unwrap();
    apply(
        &store,
        &mut ex,
        Command::Genesis {
            doc: ByteBuf::from(net.genesis.clone()),
        },
    );
    (store, ex)
}

/// The store in `dir` and its executor, as a node restarting finds them.
fn reopen(dir: &std::path::Path) -> (Store, Executor) {
    let (store, _) = Store::open(dir, 1 << 20).unwrap();
    let ex = Executor::load(&store).unwrap();
    (store, ex)
}

#[test]
fn ledger_life_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let (store, mut ex) = started(dir.path(), &net);
    assert_eq!(ex.network_id(), Some(net.identity.network_id));

    let ok = tx(&net, &net.user, "kv", "put", put("a", b"1"), 1, T0 + 5);
    let replay_nonce = tx(&net, &net.user, "kv", "put", put("a", b"2"), 1, T0 + 6);
    let stale = tx(
        &net,
        &net.user,
        "kv",
        "put",
        put("b", b"x"),
        2,
        T0 - 3_600_000,
    );
    let stranger = SigningKey::generate(Alg::EdDsa);
    let unknown = tx(&net, &stranger, "kv", "put", put("c", b"x"), 3, T0);
    let missing = tx(
        &net,
        &net.member,
        "kv",
        "delete",
        cbor::map([("key", cbor::text("zz"))]),
        4,
        T0,
    );
    let user_registers = tx(
        &net,
        &net.user,
        "gov",
        "propose",
        cbor::map([("actions", cbor::Value::Array(vec![]))]),
        5,
        T0,
    );
    let out = apply(
        &store,
        &mut ex,
        batch(
            vec![
                ok.clone(),
                ok.clone(),
                replay_nonce,
                stale,
                unknown,
                missing,
                user_registers,
            ],
            T0 + 10,
        ),
    );
    let outcomes: Vec<_> = out
        .txs
        .iter()
        .map(|r| r.outcome.code().to_string())
        .collect();
    // The duplicate of `ok` is absorbed: identical bytes are one transaction.
    assert_eq!(
        outcomes,
        [
            "ok",
            "nonce_reused",
            "outside_window",
            "unknown_signer",
            "not_found",
            "forbidden"
        ]
    );
    assert_eq!(out.txs[0].index, 1);

    let mut out = apply(&store, &mut ex, Command::Checkpoint { time: T0 + 20 });
    let cp = out.checkpoints.pop().expect("checkpoint");
    assert_eq!(cp.seq, 1);
    assert_eq!(cp.size, 8);
    let body = cp.to_cbor();
    let node_id = net.node.public().fingerprint();
    let (sig, sig_tx) = checkpoint_signature(&net, &body, 9, T0 + 21);
    let out = apply(&store, &mut ex, batch(vec![sig_tx], T0 + 21));
    assert_eq!(out.txs[0].outcome, Outcome::Applied);
    assert!(out.divergences.is_empty());
    assert_eq!(
        query::evidence_count(&store.read().unwrap(), 10).unwrap(),
        0
    );

    // The node signs a different body for the same checkpoint: refused, and
    // both signatures are kept as evidence that verifies with its key alone.
    let mut forged = cp.clone();
    forged.state_root[0] ^= 1;
    let forged_body = forged.to_cbor();
    let (forged_sig, forged_tx) = checkpoint_signature(&net, &forged_body, 10, T0 + 22);
    let out = apply(&store, &mut ex, batch(vec![forged_tx], T0 + 22));
    assert_eq!(
        out.txs[0].outcome,
        Outcome::Rejected("conflicting_signature".into())
    );
    let ev = query::evidence(&store.read().unwrap(), None, 10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        query::evidence_count(&store.read().unwrap(), 10).unwrap(),
        1
    );
    assert_eq!((ev[0].node, ev[0].seq), (node_id, 1));
    assert_eq!(ev[0].signatures[0], (body.clone(), sig.clone()));
    assert_eq!(
        ev[0].signatures[1],
        (forged_body.clone(), forged_sig.clone())
    );
    for (b, s) in &ev[0].signatures {
        let s = checkpoint::parse_signature(s).unwrap();
        checkpoint::verify(CHECKPOINT_CONTENT_TYPE, b, &s, &net.node.public()).unwrap();
    }
    // An auditor replaying the ledger finds the same evidence on its own.
    let scratch = tempfile::tempdir().unwrap();
    let mut audit = comity_apps::audit::Audit::new(scratch.path()).unwrap();
    for i in 0..store.read().unwrap().ledger_len().unwrap() {
        audit.feed(i, &store.record(i).unwrap()).unwrap();
    }
    assert_eq!(audit.finish().unwrap().evidence, vec![(node_id, 1)]);
    // Paging past it finds nothing more.
    assert!(
        query::evidence(&store.read().unwrap(), Some((node_id, 1)), 10)
            .unwrap()
            .is_empty()
    );

    // A receipt for the kv.put verifies offline; a flipped bit anywhere fails.
    let receipt = query::receipt(&store, 1, true).unwrap().expect("receipt");
    let bytes = receipt.to_cose();
    let v = comity_core::receipt::Receipt::from_cose(&bytes)
        .unwrap()
        .verify(&net.identity)
        .unwrap();
    assert_eq!(v.leaf.index, 1);
    assert_eq!(v.tx.unwrap().payload.op, "put");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let res =
            comity_core::receipt::Receipt::from_cose(&b).and_then(|r| r.verify(&net.identity));
        assert!(res.is_err(), "bit flip at byte {i} was accepted");
    }
    // Receipts exist for rejected transactions too, and not beyond the checkpoint.
    assert!(query::receipt(&store, 5, false).unwrap().is_some());
    assert!(query::receipt(&store, 8, false).unwrap().is_none());

    // Proved read of the current value, in the writer's own key space.
    let user_a = comity_apps::keys::kv(&net.user.public().fingerprint(), "a");
    let pv = query::proved_state(&store, &user_a).unwrap().unwrap();
    assert_eq!(pv.value.as_deref(), Some(b"1".as_slice()));
    comity_core::state::verify(
        &pv.checkpoint.checkpoint.state_root,
        &user_a,
        Some(b"1"),
        &pv.proof,
    )
    .unwrap();
    assert!(comity_core::state::verify(
        &pv.checkpoint.checkpoint.state_root,
        &user_a,
        Some(b"2"),
        &pv.proof
    )
    .is_err());
    // Another identity's key of the same name is another key, absent here.
    let member_a = comity_apps::keys::kv(&net.member.public().fingerprint(), "a");
    let absent = query::proved_state(&store, &member_a).unwrap().unwrap();
    assert!(absent.value.is_none());
    comity_core::state::verify(
        &absent.checkpoint.checkpoint.state_root,
        &member_a,
        None::<&[u8]>,
        &absent.proof,
    )
    .unwrap();
    let cose = query::checkpoint_cose(&pv.checkpoint);
    comity_core::receipt::verify_signed_checkpoint(&cose, &net.identity, &[]).unwrap();

    // Reopen: same roots, same executor state.
    let root = store.tree_root_at(9).unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.discarded_tail_bytes, 0);
    assert_eq!(store.tree_root_at(9).unwrap(), root);
    let ex2 = Executor::load(&store).unwrap();
    assert_eq!(ex2.checkpoint_seq(), 1);
    assert_eq!(ex2.ledger_time(), ex.ledger_time());
}

#[test]
fn non_durable_tail_is_cut_back_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let (store, mut ex) = started(dir.path(), &net);
    let t = store.begin().unwrap();
    ex.apply(
        &mut t.batch().unwrap(),
        &batch(
            vec![tx(&net, &net.user, "kv", "put", put("a", b"1"), 1, T0)],
            T0,
        ),
        &|_| None,
    )
    .unwrap();
    t.commit(false).unwrap();
    drop(store);
    // The non-durable commit is not guaranteed to survive; if the database kept it, the
    // ledger agrees; if not, the ledger was cut back to the durable length.
    let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
    let r = store.read().unwrap();
    let len = r.ledger_len().unwrap();
    assert!(len == 1 || len == 2, "unexpected ledger length {len}");
}

/// A durable point between checkpoints (the node flushes every second, not
/// at checkpoints) must not lose the state changes the next state root needs.
#[test]
fn state_root_survives_a_restart_between_checkpoints() {
    let net = network();
    let run = |restart: bool| {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut ex) = started(dir.path(), &net);
        let put1 = tx(&net, &net.user, "kv", "put", put("a", b"1"), 1, T0);
        apply(&store, &mut ex, batch(vec![put1], T0 + 1));
        let (store, mut ex) = if restart {
            drop(store);
            reopen(dir.path())
        } else {
            (store, ex)
        };
        let put2 = tx(&net, &net.user, "kv", "put", put("b", b"2"), 2, T0);
        apply(&store, &mut ex, batch(vec![put2], T0 + 2));
        let cp = apply(&store, &mut ex, Command::Checkpoint { time: T0 + 3 })
            .checkpoints
            .pop()
            .unwrap();
        (cp.state_root, cp.tx_root, dir)
    };
    let (plain, plain_tx, _a) = run(false);
    let (restarted, restarted_tx, _b) = run(true);
    assert_eq!(plain_tx, restarted_tx);
    assert_eq!(
        plain, restarted,
        "state root differs after a restart between checkpoints"
    );
}

/// The state-tree worker computes the same roots as in-place computation,
/// including across a restart while a checkpoint still waits for its root.
#[test]
fn background_state_tree_gives_the_same_roots() {
    use comity_apps::state_worker::StateWorker;
    use std::sync::Arc;
    let net = network();
    let puts = |n: u8| -> Vec<Vec<u8>> {
        (0..20u8)
            .map(|i| {
                tx(
                    &net,
                    &net.user,
                    "kv",
                    "put",
                    put(&format!("k{n}-{i}"), &[n, i]),
                    n * 20 + i,
                    T0,
                )
            })
            .collect()
    };
    // Reference: no worker.
    let dir = tempfile::tempdir().unwrap();
    let (store, mut ex) = started(dir.path(), &net);
    let mut expected = Vec::new();
    for n in 0..4 {
        apply(&store, &mut ex, batch(puts(n), T0 + 1));
        expected.push(
            apply(&store, &mut ex, Command::Checkpoint { time: T0 + 2 })
                .checkpoints
                .pop()
                .unwrap(),
        );
    }

    // With a worker, restarting after the third marker while its root is pending.
    let dir = tempfile::tempdir().unwrap();
    let mut got = Vec::new();
    {
        let store = Arc::new(Store::open(dir.path(), 1 << 20).unwrap().0);
        let mut ex = Executor::load(&store).unwrap();
        ex.set_worker(StateWorker::spawn(store.clone()).unwrap());
        let step = |ex: &mut Executor, cmd: Command, durable: bool| {
            let t = store.begin().unwrap();
            let out = ex.apply(&mut t.batch().unwrap(), &cmd, &|_| None).unwrap();
            t.commit(durable).unwrap();
            ex.after_commit().unwrap();
            out
        };
        step(
            &mut ex,
            Command::Genesis {
                doc: ByteBuf::from(net.genesis.clone()),
            },
            true,
        );
        for n in 0..3 {
            got.extend(step(&mut ex, batch(puts(n), T0 + 1), false).checkpoints);
            got.extend(step(&mut ex, Command::Checkpoint { time: T0 + 2 }, true).checkpoints);
        }
        got.extend(step(&mut ex, Command::Flush, false).checkpoints);
        assert_eq!(ex.pending_checkpoints(), 0);
        // A marker whose root is still pending at a durable point, then a crash.
        step(&mut ex, batch(puts(3), T0 + 1), false);
        let t = store.begin().unwrap();
        ex.apply(
            &mut t.batch().unwrap(),
            &Command::Checkpoint { time: T0 + 2 },
            &|_| None,
        )
        .unwrap();
        t.commit(true).unwrap();
        assert_eq!(ex.pending_checkpoints(), 1);
    }
    let store = Arc::new(Store::open(dir.path(), 1 << 20).unwrap().0);
    let mut ex = Executor::load(&store).unwrap();
    assert_eq!(ex.pending_checkpoints(), 1);
    ex.set_worker(StateWorker::spawn(store.clone()).unwrap());
    ex.after_commit().unwrap();
    let t = store.begin().unwrap();
    got.extend(
        ex.apply(&mut t.batch().unwrap(), &Command::Flush, &|_| None)
            .unwrap()
            .checkpoints,
    );
    t.commit(false).unwrap();
    let roots = |v: &[comity_core::checkpoint::Checkpoint]| {
        v.iter()
            .map(|c| (c.seq, c.size, c.tx_root, c.state_root))
            .collect::<Vec<_>>()
    };
    assert_eq!(roots(&got), roots(&expected));
}

/// A batch's Ed25519 signatures are checked together; one bad signature
/// fails the batch check, and one-by-one checks then reject only it.
#[test]
fn one_bad_signature_in_a_batch_rejects_only_that_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let (store, mut ex) = started(dir.path(), &net);
    let good = |k: &str, n: u8| tx(&net, &net.member, "kv", "put", put(k, b"v"), n, T0 + 1);
    let mut forged = good("b", 2);
    let last = forged.len() - 1;
    forged[last] ^= 1; // the signature is the last field of the COSE_Sign1
    let out = apply(
        &store,
        &mut ex,
        batch(vec![good("a", 1), forged, good("c", 3)], T0 + 2),
    );
    let codes: Vec<_> = out
        .txs
        .iter()
        .map(|t| t.outcome.code().to_string())
        .collect();
    assert_eq!(codes, ["ok", "bad_signature", "ok"]);
    let out = apply(
        &store,
        &mut ex,
        batch(vec![good("d", 4), good("e", 5)], T0 + 3),
    );
    assert!(out.txs.iter().all(|t| t.outcome.code() == "ok"));
}

/// The auditor's replay finds a record whose leaf differs from what
/// replaying it gives, and names its index, also when it is replayed in a
/// batch with the entries around it.
#[test]
fn replay_names_the_tampered_entry() {
    use comity_core::entry::{Leaf, Record};
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let (store, mut ex) = started(dir.path(), &net);
    let txs = (0..20)
        .map(|n| {
            tx(
                &net,
                &net.member,
                "kv",
                "put",
                put(&format!("k{n}"), b"v"),
                n,
                T0 + 1,
            )
        })
        .collect();
    apply(&store, &mut ex, batch(txs, T0 + 2));
    apply(&store, &mut ex, Command::Checkpoint { time: T0 + 3 });
    let len = store.read().unwrap().ledger_len().unwrap();
    let replay = |tamper: Option<u64>| {
        let scratch = tempfile::tempdir().unwrap();
        let mut audit = comity_apps::audit::Audit::new(scratch.path()).unwrap();
        for i in 0..len {
            let mut raw = store.record(i).unwrap();
            if Some(i) == tamper {
                let rec = Record::from_cbor(&raw).unwrap();
                let mut leaf = Leaf::from_cbor(&rec.leaf).unwrap();
                leaf.outcome = Outcome::Rejected("forbidden".into());
                raw = Record {
                    leaf: leaf.to_cbor(),
                    body: rec.body,
                }
                .to_cbor();
            }
            audit.feed(i, &raw)?;
        }
        audit.finish().map(|s| s.entries)
    };
    assert_eq!(replay(None).unwrap(), len);
    let e = replay(Some(7)).unwrap_err();
    assert_eq!(e.index, 7, "{e}");
    assert!(e.message.contains("recorded outcome `forbidden`"), "{e}");
}

/// Resubmitted bytes add no leaf whether or not the node restarted between
/// (the filter of recorded ids starts empty then, and must send the lookup to
/// the database), even for a transaction recorded as refused long before its
/// creation time came within the window.
#[test]
fn resubmitted_transactions_stay_idempotent_across_a_restart() {
    const WINDOW: u64 = 10 * 60 * 1000;
    let net = network();
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut ex) = started(dir.path(), &net);
        let ok = tx(&net, &net.user, "kv", "put", put("a", b"1"), 1, T0 + 5);
        let later = T0 + 2 * WINDOW;
        let early = tx(&net, &net.user, "kv", "put", put("b", b"2"), 2, later);
        let out = apply(
            &store,
            &mut ex,
            batch(vec![ok.clone(), early.clone()], T0 + 10),
        );
        assert_eq!(out.txs.len(), 2);
        assert!(matches!(out.txs[1].outcome, Outcome::Rejected(_)));
        let len = store.read().unwrap().ledger_len().unwrap();
        let (store, mut ex) = if restart {
            drop((ex, store));
            reopen(dir.path())
        } else {
            (store, ex)
        };
        let fresh = comity_core::crypto::sha256(b"never submitted");
        assert!(
            !ex.recent_ids().may_contain(&fresh, Some(T0 + 3 * WINDOW)),
            "ids created after everything recorded need no lookup"
        );
        let out = apply(&store, &mut ex, batch(vec![ok, early], later));
        assert!(out.txs.is_empty(), "restart {restart}: {:?}", out.txs);
        assert_eq!(store.read().unwrap().ledger_len().unwrap(), len);
    }
}

/// A nonce spent before a restart stays spent after it, once checkpoints
/// have pruned old nonces too (the spent-nonce filter starts empty then and
/// must leave the answer to the database).
#[test]
fn a_nonce_spent_before_a_restart_stays_spent() {
    let net = network();
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut ex) = started(dir.path(), &net);
        let first = tx(&net, &net.user, "kv", "put", put("a", b"1"), 7, T0 + 5);
        let out = apply(&store, &mut ex, batch(vec![first], T0 + 10));
        assert_eq!(out.txs[0].outcome, Outcome::Applied);
        let (store, mut ex) = if restart {
            drop((ex, store));
            reopen(dir.path())
        } else {
            (store, ex)
        };
        apply(&store, &mut ex, Command::Checkpoint { time: T0 + 20 });
        let again = tx(&net, &net.user, "kv", "put", put("a", b"2"), 7, T0 + 30);
        let out = apply(&store, &mut ex, batch(vec![again], T0 + 40));
        assert_eq!(
            out.txs[0].outcome,
            Outcome::Rejected("nonce_reused".into()),
            "restart {restart}"
        );
    }
}

/// Raising the transaction window does not lower the pruning horizon: a
/// transaction created before it stays outside the window. Otherwise a
/// spend could be accepted below what one node's spent-nonce filter took
/// as pruned, and a node restarted since would answer a reuse differently.
/// Outcomes are the same whether or not the node restarts in between.
#[test]
fn raising_the_window_keeps_nonce_outcomes_the_same_on_every_node() {
    const MIN: u64 = 60_000;
    let net = network();
    let user_put = |k: &str, v: &[u8], nonce: u8, minute: u64| {
        tx(
            &net,
            &net.user,
            "kv",
            "put",
            put(k, v),
            nonce,
            T0 + minute * MIN,
        )
    };
    let checkpoint_at = |store: &Store, ex: &mut Executor, minute: u64| {
        apply(
            store,
            ex,
            Command::Checkpoint {
                time: T0 + minute * MIN,
            },
        );
    };
    let mut runs = Vec::new();
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut ex) = started(dir.path(), &net);
        let mut outcomes = Vec::new();
        let mut run = |store: &Store, ex: &mut Executor, t: Vec<u8>, time: u64| {
            let out = apply(store, ex, batch(vec![t], time));
            outcomes.push(out.txs[0].outcome.clone());
        };
        // Ledger time 30 min in; a checkpoint prunes up to 20 min (10 min window).
        let spent = user_put("a", b"1", 7, 25);
        run(&store, &mut ex, spent, T0 + 26 * MIN);
        checkpoint_at(&store, &mut ex, 30);
        // The members raise the window to an hour.
        let actions =
            serde_json::json!([{"action": "config.set", "args": {"tx_window_ms": 60 * MIN}}]);
        let args = cbor::map([("actions", cbor::from_serde(&actions).unwrap())]);
        let propose = tx(&net, &net.member, "gov", "propose", args, 1, T0 + 30 * MIN);
        run(&store, &mut ex, propose, T0 + 31 * MIN);
        let (store, mut ex) = if restart {
            drop((ex, store));
            reopen(dir.path())
        } else {
            (store, ex)
        };
        // Created 21 min in: outside the old window, inside the new one.
        let mid = user_put("m", b"1", 10, 21);
        run(&store, &mut ex, mid, T0 + 32 * MIN);
        // Created 15 min in: inside the new window, before the horizon.
        let old = user_put("b", b"1", 8, 15);
        run(&store, &mut ex, old, T0 + 32 * MIN);
        // A spend after the horizon, then its nonce reused.
        let fresh = user_put("c", b"1", 9, 31);
        run(&store, &mut ex, fresh, T0 + 33 * MIN);
        checkpoint_at(&store, &mut ex, 34);
        let reuse = user_put("c", b"2", 9, 34);
        run(&store, &mut ex, reuse, T0 + 35 * MIN);
        runs.push(outcomes);
    }
    let code = |o: &Outcome| o.code().to_string();
    let first: Vec<_> = runs[0].iter().map(code).collect();
    assert_eq!(
        first,
        ["ok", "ok", "ok", "outside_window", "ok", "nonce_reused"],
        "outcomes without a restart"
    );
    assert_eq!(runs[0], runs[1], "a restarted node answers the same");
}

/// One node signing other roots than this node computed is that node's
/// fault; only once nodes of a quorum of members signed the same other roots
/// is this node the one that differs (and stops serving).
#[test]
fn divergence_is_this_nodes_only_once_a_quorum_signed_other_roots() {
    let members: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
    let nodes: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
    let set = NodeSet(
        nodes
            .iter()
            .zip(&members)
            .map(|(n, m)| node_info(&n.public(), m.public().fingerprint()))
            .collect(),
    );
    let specs = members
        .iter()
        .map(|m| IdentitySpec::new(m.public().to_spki_der(), "m"))
        .collect();
    let g = Genesis::new("three", T0, specs, vec![], set.clone());
    let net = Net {
        member: members[0].clone(),
        user: members[1].clone(),
        node: nodes[0].clone(),
        genesis: g.to_cbor(),
        identity: NetworkIdentity {
            name: "three".into(),
            network_id: g.network_id(),
            nodes: set,
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, mut ex) = started(dir.path(), &net);
    let mut out = apply(&store, &mut ex, Command::Checkpoint { time: T0 + 10 });
    let cp = out.checkpoints.pop().expect("checkpoint");
    let mut other = cp.clone();
    other.state_root[0] ^= 1;
    let sign = |k: &SigningKey, body: &[u8], nonce: u8| {
        let sig = checkpoint::sign(CHECKPOINT_CONTENT_TYPE, body, k, &k.public().fingerprint());
        let args = node::signature_args(body, &sig);
        tx(&net, k, "node", "checkpoint", args, nonce, T0 + 11)
    };
    let (mine, theirs) = (cp.to_cbor(), other.to_cbor());

    let out = apply(
        &store,
        &mut ex,
        batch(vec![sign(&nodes[0], &mine, 1)], T0 + 11),
    );
    assert_eq!(out.txs[0].outcome, Outcome::Applied);
    assert!(out.divergences.is_empty());
    // Not final yet (one member of three): a node owes its signature until
    // one of its own, whatever the body, is applied.
    let owes = |store: &Store, k: &SigningKey| {
        node::unsigned_latest(&store.read().unwrap(), &k.public().fingerprint())
            .unwrap()
            .map(|c| c.seq)
    };
    assert_eq!(owes(&store, &nodes[0]), None);
    assert_eq!(owes(&store, &nodes[2]), Some(cp.seq));
    // A checkpoint this ledger does not have, or one claiming another size
    // (an early size's smaller node set would make two nodes a quorum), is
    // refused before it can count for anything.
    let mut unknown = other.clone();
    unknown.seq += 1;
    let mut resized = other.clone();
    resized.size = 1;
    let out = apply(
        &store,
        &mut ex,
        batch(
            vec![
                sign(&nodes[1], &unknown.to_cbor(), 20),
                sign(&nodes[1], &resized.to_cbor(), 21),
            ],
            T0 + 12,
        ),
    );
    for t in &out.txs {
        assert_eq!(t.outcome, Outcome::Rejected("unknown_checkpoint".into()));
    }
    assert!(out.divergences.is_empty());
    let out = apply(
        &store,
        &mut ex,
        batch(vec![sign(&nodes[1], &theirs, 2)], T0 + 12),
    );
    assert_eq!(out.divergences.len(), 1);
    let d = &out.divergences[0];
    assert_eq!((d.node, d.seq), (nodes[1].public().fingerprint(), cp.seq));
    assert_eq!(owes(&store, &nodes[1]), None);
    assert!(!d.quorum, "one node of three is not a quorum: {d:?}");
    // An auditor's replay names the faulty node and goes on.
    let audit = |store: &Store| {
        let scratch = tempfile::tempdir().unwrap();
        let mut a = comity_apps::audit::Audit::new(scratch.path()).unwrap();
        for i in 0..store.read().unwrap().ledger_len().unwrap() {
            a.feed(i, &store.record(i).unwrap())?;
        }
        a.finish()
    };
    let faulty_at = store.read().unwrap().ledger_len().unwrap() - 1;
    let summary = audit(&store).expect("a lone faulty signer does not fail the audit");
    assert_eq!(
        summary.faulty_signatures,
        vec![(faulty_at, nodes[1].public().fingerprint(), cp.seq)]
    );
    let out = apply(
        &store,
        &mut ex,
        batch(vec![sign(&nodes[2], &theirs, 3)], T0 + 13),
    );
    assert_eq!(out.divergences.len(), 1);
    let d = &out.divergences[0];
    assert!(d.quorum, "two members of three signed other roots: {d:?}");
    assert_eq!(owes(&store, &nodes[2]), None);
    // Remembered across restarts: this node must not serve its state again.
    assert_eq!(
        node::diverged_at(&store.read().unwrap()).unwrap(),
        Some(cp.seq)
    );
    // Once a quorum signed other roots, the replay is the one that differs.
    let e = audit(&store).expect_err("a quorum contradicts the replay");
    assert_eq!(e.index, faulty_at + 1, "{e}");
}

/// A recovery decision's checkpoint must be the latest final one this
/// ledger computed: its state root proves the member keys that sign the
/// decision, so a body the nodes signed over other values, or an older
/// checkpoint (fewer members), is refused even with a quorum's signatures
/// and a member key proof that checks.
#[test]
fn a_recovery_decision_names_a_checkpoint_this_ledger_computed() {
    use comity_core::recovery::{Recovery, MEMBER_KEYS_STATE_KEY, RECOVERY_CONTENT_TYPE};
    let net = network();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut ex) = started(dir.path(), &net);
    let mut out = apply(&store, &mut ex, Command::Checkpoint { time: T0 + 10 });
    let cp = out.checkpoints.pop().expect("checkpoint");
    let (_, sig_tx) = checkpoint_signature(&net, &cp.to_cbor(), 1, T0 + 11);
    let out = apply(&store, &mut ex, batch(vec![sig_tx], T0 + 11));
    assert_eq!(out.txs[0].outcome, Outcome::Applied);

    let member_id = net.member.public().fingerprint();
    let new_node = SigningKey::generate(Alg::EdDsa);
    // A decision over checkpoint `body`, signed by the node (the whole set)
    // and by the only member, naming a node `operator` runs.
    let decide = |body: &[u8], operator: comity_core::Hash, copies: usize| {
        let node_id = net.node.public().fingerprint();
        let cp_sig = checkpoint::sign(CHECKPOINT_CONTENT_TYPE, body, &net.node, &node_id);
        let proved = query::proved_state(&store, MEMBER_KEYS_STATE_KEY)
            .unwrap()
            .unwrap();
        let size = store.read().unwrap().ledger_len().unwrap();
        let d = Recovery {
            network_id: net.identity.network_id,
            size,
            tx_root: store.tree_root_at(size).unwrap(),
            checkpoint: checkpoint::signed_statement(CHECKPOINT_CONTENT_TYPE, body, &[cp_sig]),
            members: proved.value.expect("member keys"),
            members_proof: proved.proof,
            nodes: NodeSet(vec![node_info(&new_node.public(), operator); copies]),
            addresses: vec!["127.0.0.1:1".into(); copies],
            reason: "test".into(),
        };
        let body = d.to_cbor();
        let sig = checkpoint::sign(RECOVERY_CONTENT_TYPE, &body, &net.member, &member_id);
        Command::Recover {
            time: T0 + 20,
            decision: ByteBuf::from(checkpoint::signed_statement(
                RECOVERY_CONTENT_TYPE,
                &body,
                &[sig],
            )),
        }
    };
    // The same state root, but another transaction root than this ledger's.
    let mut other = cp.clone();
    other.tx_root[0] ^= 1;
    let out = apply(&store, &mut ex, decide(&other.to_cbor(), member_id, 1));
    assert_eq!(
        out.txs[0].outcome,
        Outcome::Rejected("recovery_mismatch".into())
    );
    // A later checkpoint becomes final: the older one may no longer be
    // named (members added since would not count).
    let mut out = apply(&store, &mut ex, Command::Checkpoint { time: T0 + 30 });
    let later = out.checkpoints.pop().expect("checkpoint");
    let (_, sig_tx) = checkpoint_signature(&net, &later.to_cbor(), 2, T0 + 31);
    let out = apply(&store, &mut ex, batch(vec![sig_tx], T0 + 31));
    assert_eq!(out.txs[0].outcome, Outcome::Applied);
    let out = apply(&store, &mut ex, decide(&cp.to_cbor(), member_id, 1));
    assert_eq!(
        out.txs[0].outcome,
        Outcome::Rejected("recovery_mismatch".into())
    );
    // A node given to a member that did not sign is refused: it would
    // count for that member in every quorum after.
    let out = apply(&store, &mut ex, decide(&later.to_cbor(), [7; 32], 1));
    assert_eq!(
        out.txs[0].outcome,
        Outcome::Rejected("bad_signature".into())
    );
    // A node named twice would be one Raft member counted twice.
    let out = apply(&store, &mut ex, decide(&later.to_cbor(), member_id, 2));
    assert_eq!(
        out.txs[0].outcome,
        Outcome::Rejected("already_exists".into())
    );
    let out = apply(&store, &mut ex, decide(&later.to_cbor(), member_id, 1));
    assert_eq!(out.txs[0].outcome, Outcome::Applied);
}
