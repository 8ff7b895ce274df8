//! Profiling aid: applies pre-signed transaction batches straight through the
//! executor and store (no HTTP, no Raft) and prints time per transaction.
//! `cargo run --release -p comity-apps --example apply_profile -- [txs] [batch] [checkpoint_every] [notary]`
//! kv.put by default; with a fourth argument, the notary mix: 60% registrations of
//! two-party documents, 40% party signatures of earlier ones.

use comity_apps::genesis::node_info;
use comity_apps::{Command, Executor, Genesis, IdentitySpec};
use comity_core::cbor;
use comity_core::crypto::{Alg, SigningKey};
use comity_core::entry::Outcome;
use comity_core::network::NodeSet;
use comity_core::tx::{Tx, TxPayload};
use comity_store::Store;
use serde_bytes::ByteBuf;
use std::time::Instant;

fn main() {
    let notary = std::env::args().nth(4).is_some();
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .take(3)
        .map(|a| a.parse().expect("number"))
        .collect();
    let (n, batch, every) = (
        args.first().copied().unwrap_or(20_000),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(300),
    );
    let dir = tempfile::tempdir().unwrap();
    let member = SigningKey::generate(Alg::EdDsa);
    let users: Vec<SigningKey> = (0..64).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
    let node = SigningKey::generate(Alg::EdDsa);
    let t0 = 1_763_000_000_000;
    let g = Genesis::new(
        "p",
        t0,
        vec![IdentitySpec::new(member.public().to_spki_der(), "m")],
        users
            .iter()
            .enumerate()
            .map(|(i, u)| IdentitySpec::new(u.public().to_spki_der(), &format!("u{i}")))
            .collect(),
        NodeSet(vec![node_info(
            &node.public(),
            member.public().fingerprint(),
        )]),
    );
    let net = g.network_id();
    let (store, _) = Store::open(dir.path(), 64 << 20).unwrap();
    let mut ex = Executor::load(&store).unwrap();
    let refused = std::cell::Cell::new(0);
    let apply = |ex: &mut Executor, cmd: Command| {
        let t = store.begin().unwrap();
        let out = ex.apply(&mut t.batch().unwrap(), &cmd, &|_| None).unwrap();
        let bad = out.txs.iter().filter(|r| r.outcome != Outcome::Applied);
        refused.set(refused.get() + bad.count());
        t.commit(false).unwrap();
    };
    apply(
        &mut ex,
        Command::Genesis {
            doc: ByteBuf::from(g.to_cbor()),
        },
    );
    let mut unsigned = std::collections::VecDeque::new();
    let txs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let u = (i % 64) as usize;
            let (app, op, args, signer) = if !notary {
                let args = cbor::map([
                    ("key", cbor::text(format!("k{}", (i * 7919) % 1_000_000))),
                    ("value", cbor::bytes(vec![i as u8; 256])),
                ]);
                ("kv", "put", args, u)
            } else if i % 10 >= 6 && !unsigned.is_empty() {
                let (doc, digest, party): ([u8; 32], [u8; 32], usize) =
                    unsigned.pop_front().expect("not empty");
                let args = cbor::map([
                    ("document", cbor::text(hex::encode(doc))),
                    ("digest", cbor::text(hex::encode(digest))),
                ]);
                ("notary", "sign", args, party)
            } else {
                let digest = comity_core::crypto::sha256(&i.to_be_bytes());
                let other = (u + 1) % 64;
                let party = |k: usize, role: &str| {
                    cbor::map([
                        (
                            "id",
                            cbor::text(hex::encode(users[k].public().fingerprint())),
                        ),
                        ("role", cbor::text(role)),
                    ])
                };
                let args = cbor::map([
                    ("digest", cbor::text(hex::encode(digest))),
                    ("title", cbor::text("benchmark contract")),
                    ("type", cbor::text("contract")),
                    ("matter", cbor::text("BENCH-1")),
                    ("org", cbor::text("bench")),
                    (
                        "parties",
                        cbor::Value::Array(vec![party(u, "buyer"), party(other, "seller")]),
                    ),
                    (
                        "retention",
                        cbor::map([("period_ms", cbor::uint(0)), ("approvals", cbor::uint(1))]),
                    ),
                ]);
                let doc = comity_apps::notary::document::id_of(&digest);
                unsigned.push_back((doc, digest, u));
                unsigned.push_back((doc, digest, other));
                ("notary", "register", args, u)
            };
            let p = TxPayload {
                net,
                app: app.into(),
                op: op.into(),
                args,
                nonce: i.to_be_bytes().to_vec(),
                created: t0,
            };
            let key = &users[signer];
            Tx::sign(key, &key.public().fingerprint(), &p)
        })
        .collect();
    let start = Instant::now();
    let mut since = 0;
    for chunk in txs.chunks(batch as usize) {
        apply(
            &mut ex,
            Command::Batch {
                time: t0 + 1,
                txs: chunk.iter().cloned().map(ByteBuf::from).collect(),
            },
        );
        since += chunk.len() as u64;
        if since >= every {
            apply(&mut ex, Command::Checkpoint { time: t0 + 1 });
            since = 0;
        }
    }
    let el = start.elapsed();
    println!(
        "{n} {} txs in batches of {batch}, checkpoint every {every}: {:.1} us/tx ({:.0} tx/s)",
        if notary { "notary" } else { "kv.put" },
        el.as_secs_f64() * 1e6 / n as f64,
        n as f64 / el.as_secs_f64()
    );
    assert_eq!(refused.get(), 0, "transactions were refused");
}
