//! Ed25519 batch verification that decompresses each signer's public key
//! once, not once per batch: a network has few signers sending many
//! transactions, and a point decompression costs about a fifth of a batched
//! check per key.
//!
//! The rules are ed25519-zebra's (ZIP 215), so a batch accepts exactly what
//! its single verification accepts: the same point and scalar decodings,
//! `k = SHA-512(R ‖ A ‖ M)`, and the cofactored equation
//! `[8](Σ zᵢkᵢ·Aᵢ + Σ zᵢ·Rᵢ − (Σ zᵢsᵢ)·B) = 0` with fresh 128-bit random
//! weights `zᵢ`, which a forger cannot predict.

use crate::crypto::PublicKey;
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::RngCore;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::sync::Mutex;

/// Keys kept decompressed; past this the cache starts over.
const KEYS_KEPT: usize = 4096;

/// Checks batches of Ed25519 signatures, remembering the signers' points.
#[derive(Default)]
pub struct Ed25519Batch {
    points: Mutex<HashMap<[u8; 32], EdwardsPoint>>,
}

impl Ed25519Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// True only if every `(key, msg, sig)` is valid and every key is
    /// Ed25519. On false, check singly to find the bad ones.
    pub fn verify(&self, items: &[(&PublicKey, &[u8], &[u8])]) -> bool {
        let mut weights = vec![0u8; 16 * items.len()];
        if rand_core::OsRng.try_fill_bytes(&mut weights).is_err() {
            return false;
        }
        let mut b_coeff = Scalar::ZERO;
        let mut r_coeffs = Vec::with_capacity(items.len());
        let mut r_points = Vec::with_capacity(items.len());
        // Signatures by one key share its point: one term per key.
        let mut a_slot: HashMap<[u8; 32], usize> = HashMap::with_capacity(items.len());
        let mut a_coeffs: Vec<Scalar> = Vec::new();
        let mut a_points: Vec<EdwardsPoint> = Vec::new();
        let mut cache = self.points.lock().unwrap_or_else(|e| e.into_inner());
        for ((key, msg, sig), z) in items.iter().zip(weights.chunks_exact(16)) {
            let PublicKey::Ed25519(key) = key else {
                return false;
            };
            let a_bytes: [u8; 32] = (*key).into();
            let Ok(sig) = <&[u8; 64]>::try_from(*sig) else {
                return false;
            };
            let r_bytes: [u8; 32] = sig[..32].try_into().expect("32 of 64 bytes");
            let s_bytes: [u8; 32] = sig[32..].try_into().expect("32 of 64 bytes");
            let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
                return false;
            };
            let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
                return false;
            };
            let slot = match a_slot.get(&a_bytes) {
                Some(&i) => i,
                None => {
                    let a = match cache.get(&a_bytes) {
                        Some(a) => *a,
                        None => {
                            let Some(a) = CompressedEdwardsY(a_bytes).decompress() else {
                                return false;
                            };
                            if cache.len() >= KEYS_KEPT {
                                cache.clear();
                            }
                            cache.insert(a_bytes, a);
                            a
                        }
                    };
                    a_points.push(a);
                    a_coeffs.push(Scalar::ZERO);
                    a_slot.insert(a_bytes, a_points.len() - 1);
                    a_points.len() - 1
                }
            };
            let k = Scalar::from_hash(
                Sha512::new()
                    .chain_update(r_bytes)
                    .chain_update(a_bytes)
                    .chain_update(msg),
            );
            let z = Scalar::from(u128::from_le_bytes(z.try_into().expect("16 bytes")));
            b_coeff -= z * s;
            a_coeffs[slot] += z * k;
            r_coeffs.push(z);
            r_points.push(r);
        }
        drop(cache);
        let check = EdwardsPoint::vartime_multiscalar_mul(
            std::iter::once(&b_coeff).chain(&a_coeffs).chain(&r_coeffs),
            std::iter::once(&ED25519_BASEPOINT_POINT)
                .chain(&a_points)
                .chain(&r_points),
        );
        check.mul_by_cofactor().is_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Alg, SigningKey};

    struct Signed {
        key: PublicKey,
        msg: Vec<u8>,
        sig: Vec<u8>,
    }

    /// `n` signatures by `keys` signers, in turn.
    fn signed(n: usize, keys: usize) -> Vec<Signed> {
        let signers: Vec<SigningKey> = (0..keys)
            .map(|_| SigningKey::generate(Alg::EdDsa))
            .collect();
        (0..n)
            .map(|i| {
                let k = &signers[i % keys];
                let msg = format!("transaction {i}").into_bytes();
                Signed {
                    key: k.public(),
                    sig: k.sign(&msg),
                    msg,
                }
            })
            .collect()
    }

    fn items(s: &[Signed]) -> Vec<(&PublicKey, &[u8], &[u8])> {
        s.iter()
            .map(|x| (&x.key, x.msg.as_slice(), x.sig.as_slice()))
            .collect()
    }

    /// What single verification (ed25519-zebra) says of the whole batch.
    fn singly(s: &[Signed]) -> bool {
        s.iter().all(|x| x.key.verify(&x.msg, &x.sig).is_ok())
    }

    /// ℓ, the order of the Ed25519 base point, little-endian.
    const ELL: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    #[test]
    fn ell_is_the_group_order() {
        assert_eq!(Scalar::from_bytes_mod_order(ELL), Scalar::ZERO);
        let mut below = ELL;
        below[0] -= 1;
        assert_eq!(Scalar::from_bytes_mod_order(below), -Scalar::ONE);
    }

    #[test]
    fn agrees_with_single_verification() {
        let b = Ed25519Batch::new();
        for (n, keys) in [(1, 1), (2, 2), (17, 3), (64, 64), (40, 1)] {
            let good = signed(n, keys);
            // Twice: the second pass reads the keys from the cache.
            assert!(b.verify(&items(&good)));
            assert!(b.verify(&items(&good)));
            for i in [0, n / 2, n - 1] {
                type Spoil = fn(&mut Signed);
                let spoils: [Spoil; 5] = [
                    |x| x.msg.push(0),
                    |x| x.sig[3] ^= 1,
                    |x| x.sig[40] ^= 1,
                    |x| x.key = SigningKey::generate(Alg::EdDsa).public(),
                    // s + ℓ: the same point equation, but not canonical.
                    |x| {
                        let mut carry = 0u16;
                        for (j, l) in ELL.iter().enumerate() {
                            let v = x.sig[32 + j] as u16 + *l as u16 + carry;
                            x.sig[32 + j] = v as u8;
                            carry = v >> 8;
                        }
                    },
                ];
                for spoil in spoils {
                    let mut bad = signed(n, keys);
                    spoil(&mut bad[i]);
                    assert!(!singly(&bad));
                    assert!(!b.verify(&items(&bad)), "n={n} keys={keys} i={i}");
                }
            }
        }
    }

    #[test]
    fn refuses_other_algorithms_and_bad_lengths() {
        let b = Ed25519Batch::new();
        let p = SigningKey::generate(Alg::Es256);
        let sig = p.sign(b"m");
        let pk = p.public();
        assert!(!b.verify(&[(&pk, b"m", &sig)]));
        let mut good = signed(3, 2);
        good[1].sig.pop();
        assert!(!b.verify(&items(&good)));
    }

    #[test]
    fn a_key_that_is_not_a_point_is_refused() {
        let b = Ed25519Batch::new();
        let mut s = signed(4, 2);
        // y = 2 is not the y-coordinate of a curve point.
        let mut raw = [0u8; 32];
        raw[0] = 2;
        assert!(CompressedEdwardsY(raw).decompress().is_none());
        s[2].key = PublicKey::Ed25519(raw.into());
        assert!(!b.verify(&items(&s)));
    }
}
