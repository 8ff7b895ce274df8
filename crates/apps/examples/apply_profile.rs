//! Profiling aid: applies pre-signed kv.put batches straight through the
//! executor and store (no HTTP, no Raft) and prints time per transaction.
//! `cargo run --release -p comity-apps --example apply_profile -- [txs] [batch] [checkpoint_every]`

use comity_apps::genesis::node_info;
use comity_apps::{Command, Executor, Genesis, IdentitySpec};
use comity_core::cbor;
use comity_core::crypto::{Alg, SigningKey};
use comity_core::network::NodeSet;
use comity_core::tx::{Tx, TxPayload};
use comity_store::Store;
use serde_bytes::ByteBuf;
use std::time::Instant;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
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
    let apply = |ex: &mut Executor, cmd: Command| {
        let t = store.begin().unwrap();
        ex.apply(&mut t.batch().unwrap(), &cmd, &|_| None).unwrap();
        t.commit(false).unwrap();
    };
    apply(
        &mut ex,
        Command::Genesis {
            doc: ByteBuf::from(g.to_cbor()),
        },
    );
    let txs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let u = &users[(i % 64) as usize];
            let p = TxPayload {
                net,
                app: "kv".into(),
                op: "put".into(),
                args: cbor::map([
                    ("key", cbor::text(format!("k{}", (i * 7919) % 1_000_000))),
                    ("value", cbor::bytes(vec![i as u8; 256])),
                ]),
                nonce: i.to_be_bytes().to_vec(),
                created: t0,
            };
            Tx::sign(u, &u.public().fingerprint(), &p)
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
        "{n} txs in batches of {batch}, checkpoint every {every}: {:.1} us/tx ({:.0} tx/s)",
        el.as_secs_f64() * 1e6 / n as f64,
        n as f64 / el.as_secs_f64()
    );
}
