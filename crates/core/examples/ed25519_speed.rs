//! What Ed25519 verification costs on this machine, one by one
//! (ed25519-zebra) and in batches of 2 to 64 as the node checks them
//! (`Ed25519Batch`, signers' keys already decompressed). Every node
//! verifies every transaction, so this bounds what a network can carry per
//! core. Prints the median of `ROUNDS` rounds, in µs per signature.
//!
//! `cargo run --release -p comity-core --example ed25519_speed`

use comity_core::batch_verify::Ed25519Batch;
use comity_core::crypto::{Alg, PublicKey, SigningKey};
use std::time::Instant;

const KEYS: usize = 64;
const ROUNDS: usize = 9;
/// Passes over the keys per round.
const PASSES: usize = 20;
/// About the size of a signed `kv.put`'s Sig_structure.
const MSG_BYTES: usize = 380;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let keys: Vec<SigningKey> = (0..KEYS)
        .map(|_| SigningKey::generate(Alg::EdDsa))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..KEYS).map(|i| vec![i as u8; MSG_BYTES]).collect();
    let sigs: Vec<Vec<u8>> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    let pubs: Vec<PublicKey> = keys.iter().map(SigningKey::public).collect();
    let items: Vec<_> = (0..KEYS)
        .map(|i| (&pubs[i], msgs[i].as_slice(), sigs[i].as_slice()))
        .collect();

    let time = |f: &dyn Fn()| {
        median(
            (0..ROUNDS)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..PASSES {
                        f();
                    }
                    t.elapsed().as_secs_f64() * 1e6 / (KEYS * PASSES) as f64
                })
                .collect(),
        )
    };
    let single = time(&|| {
        for (k, m, s) in &items {
            assert!(k.verify(m, s).is_ok());
        }
    });
    print!("one by one {single:.1} µs");
    let batch = Ed25519Batch::new();
    for b in [2, 8, 32, 64] {
        let per = time(&|| {
            for chunk in items.chunks(b) {
                assert!(batch.verify(chunk));
            }
        });
        print!(", batch of {b} {per:.1} µs");
    }
    println!(" per signature (median of {ROUNDS} rounds)");
}
