//! Signature algorithms, keys and identity ids.
//!
//! Ed25519 verification follows ZIP 215 so that every node agrees on
//! validity: single checks here use `ed25519-zebra`, batches
//! [`crate::batch_verify`] with the same rules. ES256 is supported for
//! enterprise keys and HSMs.

use crate::merkle::Hash;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Parsed keys remembered by [`PublicKey::from_spki_der`]; past this it starts over.
const KEYS_PARSED_KEPT: usize = 4096;

/// COSE algorithm identifiers (RFC 9053).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Alg {
    /// EdDSA over Ed25519, COSE alg -8.
    EdDsa,
    /// ECDSA P-256 with SHA-256, COSE alg -7.
    Es256,
}

impl Alg {
    pub fn cose_id(self) -> i64 {
        match self {
            Alg::EdDsa => -8,
            Alg::Es256 => -7,
        }
    }
    pub fn from_cose_id(id: i64) -> Option<Alg> {
        match id {
            -8 => Some(Alg::EdDsa),
            -7 => Some(Alg::Es256),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDsa => "EdDSA",
            Alg::Es256 => "ES256",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed public key: {0}")]
    BadPublicKey(String),
    #[error("malformed private key: {0}")]
    BadPrivateKey(String),
}

pub use crate::hash::sha256;

/// A verification key of a supported algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_zebra::VerificationKeyBytes),
    P256(p256::ecdsa::VerifyingKey),
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl PublicKey {
    pub fn alg(&self) -> Alg {
        match self {
            PublicKey::Ed25519(_) => Alg::EdDsa,
            PublicKey::P256(_) => Alg::Es256,
        }
    }

    /// X.509 SubjectPublicKeyInfo DER: the algorithm-independent form that ids are derived from.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => {
                let mut out = ED25519_SPKI_PREFIX.to_vec();
                out.extend_from_slice(k.as_ref());
                out
            }
            PublicKey::P256(k) => k
                .to_public_key_der()
                .expect("encoding a valid P-256 key cannot fail")
                .into_vec(),
        }
    }

    /// Parses and checks a key. Keys that passed lately are remembered, as
    /// every transaction's signer key is parsed again at admission and apply,
    /// and the curve checks cost as much as a fifth of a signature check.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        static PARSED: LazyLock<Mutex<HashMap<Vec<u8>, PublicKey>>> =
            LazyLock::new(Default::default);
        let lock = || PARSED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = lock().get(der) {
            return Ok(k.clone());
        }
        let key = Self::parse_spki_der(der)?;
        let mut parsed = lock();
        if parsed.len() >= KEYS_PARSED_KEPT {
            parsed.clear();
        }
        parsed.insert(der.to_vec(), key.clone());
        Ok(key)
    }

    /// Reads a key an operator supplies in any SPKI encoding its library
    /// accepts (a compressed P-256 point, say); it goes on in its one
    /// canonical encoding ([`PublicKey::to_spki_der`]), which is what the
    /// network accepts.
    pub fn from_any_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        Self::from_spki_der(der).or_else(|e| {
            p256::ecdsa::VerifyingKey::from_public_key_der(der)
                .map(PublicKey::P256)
                .map_err(|_| e)
        })
    }

    fn parse_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        if der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX {
            let raw: [u8; 32] = der[12..].try_into().expect("length checked");
            // A small-order key verifies forged signatures (ZIP 215 accepts
            // them): whoever registered it could deny any signature "by" it.
            let point = curve25519_dalek::edwards::CompressedEdwardsY(raw).decompress();
            if point.is_none_or(|p| p.is_small_order()) {
                return Err(CryptoError::BadPublicKey(
                    "not an Ed25519 public key of full order".into(),
                ));
            }
            return Ok(PublicKey::Ed25519(raw.into()));
        }
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .map(PublicKey::P256)
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?;
        // One key, one encoding: a compressed point would give the same key
        // another id (the hash of its bytes), so one keyholder two identities.
        if key.to_spki_der() != der {
            return Err(CryptoError::BadPublicKey(
                "not the canonical SubjectPublicKeyInfo (a P-256 point must be uncompressed)"
                    .into(),
            ));
        }
        Ok(key)
    }

    /// The id an identity gets when this is its first key.
    pub fn fingerprint(&self) -> Hash {
        sha256(&self.to_spki_der())
    }

    /// Verifies `sig` (raw Ed25519 or r‖s for ES256) over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        match self {
            PublicKey::Ed25519(k) => {
                let vk = ed25519_zebra::VerificationKey::try_from(*k)
                    .map_err(|_| CryptoError::BadSignature)?;
                let sig: [u8; 64] = sig.try_into().map_err(|_| CryptoError::BadSignature)?;
                vk.verify(&ed25519_zebra::Signature::from(sig), msg)
                    .map_err(|_| CryptoError::BadSignature)
            }
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| CryptoError::BadSignature)?;
                // Only low-S signatures, so a signature has a single valid form.
                if sig.normalize_s().is_some() {
                    return Err(CryptoError::BadSignature);
                }
                k.verify(msg, &sig).map_err(|_| CryptoError::BadSignature)
            }
        }
    }
}

/// A private signing key.
#[derive(Clone)]
pub enum SigningKey {
    Ed25519(ed25519_zebra::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({})", self.alg().name())
    }
}

const ED25519_OID: &str = "1.3.101.112";

impl SigningKey {
    pub fn generate(alg: Alg) -> Self {
        let mut rng = rand_core::OsRng;
        match alg {
            Alg::EdDsa => SigningKey::Ed25519(ed25519_zebra::SigningKey::new(rng)),
            Alg::Es256 => SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Ed25519(_) => Alg::EdDsa,
            SigningKey::P256(_) => Alg::Es256,
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            SigningKey::Ed25519(k) => PublicKey::Ed25519(k.verification_key().into()),
            SigningKey::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            SigningKey::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(msg);
                let sig = sig.normalize_s().unwrap_or(sig);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// Parses a PKCS#8 (v1 or v2) PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        use pkcs8::der::Decode;
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem)
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))?;
        if label != "PRIVATE KEY" {
            return Err(CryptoError::BadPrivateKey(format!(
                "expected a PKCS#8 \"PRIVATE KEY\", found \"{label}\""
            )));
        }
        let info = pkcs8::PrivateKeyInfo::from_der(doc.as_bytes())
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))?;
        if info.algorithm.oid.to_string() == ED25519_OID {
            // The key is an OCTET STRING wrapping the 32-byte seed (RFC 8410).
            let pk = info.private_key;
            if pk.len() != 34 || pk[0] != 0x04 || pk[1] != 0x20 {
                return Err(CryptoError::BadPrivateKey("bad Ed25519 seed".into()));
            }
            let seed: [u8; 32] = pk[2..].try_into().expect("length checked");
            return Ok(SigningKey::Ed25519(seed.into()));
        }
        p256::SecretKey::from_pkcs8_der(doc.as_bytes())
            .map(|k| SigningKey::P256(k.into()))
            .map_err(|e| CryptoError::BadPrivateKey(format!("unsupported or malformed key: {e}")))
    }

    /// PKCS#8 v1 PEM encoding of the key (write it with mode 0600).
    pub fn to_pkcs8_pem(&self) -> String {
        use p256::pkcs8::EncodePrivateKey;
        let doc = match self {
            SigningKey::Ed25519(k) => {
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                der.extend_from_slice(k.as_bytes());
                pkcs8::SecretDocument::try_from(der.as_slice()).expect("valid DER")
            }
            SigningKey::P256(k) => p256::SecretKey::from(k)
                .to_pkcs8_der()
                .expect("encoding a valid P-256 key cannot fail"),
        };
        doc.to_pem("PRIVATE KEY", pkcs8::LineEnding::LF)
            .expect("PEM encoding cannot fail")
            .to_string()
    }
}

/// Fills a fresh random nonce for a transaction.
pub fn random_nonce() -> [u8; 16] {
    use rand_core::RngCore;
    let mut n = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_signatures() {
        for alg in [Alg::EdDsa, Alg::Es256] {
            let k = SigningKey::generate(alg);
            let pem = k.to_pkcs8_pem();
            let k2 = SigningKey::from_pkcs8_pem(&pem).unwrap();
            assert_eq!(k.public(), k2.public());
            let sig = k2.sign(b"hello");
            k.public().verify(b"hello", &sig).unwrap();
            assert_eq!(
                k.public().verify(b"hellp", &sig),
                Err(CryptoError::BadSignature)
            );
            let spki = k.public().to_spki_der();
            assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), k.public());
            assert_eq!(k.public().fingerprint(), sha256(&spki));
        }
    }

    /// A P-256 key has one accepted encoding, so one id.
    #[test]
    fn a_compressed_p256_key_is_refused() {
        let PublicKey::P256(vk) = SigningKey::generate(Alg::Es256).public() else {
            unreachable!()
        };
        let der = PublicKey::P256(vk).to_spki_der();
        let point = vk.to_encoded_point(true);
        let compressed = [
            &[0x30, 0x39][..],
            &der[2..23],
            &[0x03, 0x22, 0x00],
            point.as_bytes(),
        ]
        .concat();
        assert!(
            p256::ecdsa::VerifyingKey::from_public_key_der(&compressed).is_ok(),
            "the test's encoding is a valid SPKI"
        );
        let e = PublicKey::from_spki_der(&compressed).unwrap_err();
        assert!(e.to_string().contains("canonical"), "{e}");
        assert!(PublicKey::from_spki_der(&der).is_ok());
        // An operator's compressed key is read, and goes on canonical.
        let k = PublicKey::from_any_spki_der(&compressed).unwrap();
        assert_eq!(k.to_spki_der(), der);
    }

    #[test]
    fn garbage_keys_are_errors() {
        assert!(SigningKey::from_pkcs8_pem("nope").is_err());
        assert!(PublicKey::from_spki_der(&[0x30, 0x00]).is_err());
        let k = SigningKey::generate(Alg::EdDsa).public();
        assert!(k.verify(b"m", &[0u8; 10]).is_err());
    }

    /// The identity point as a key, with R = identity and s = 0, "verifies"
    /// any message: such keys are refused where keys enter.
    #[test]
    fn small_order_ed25519_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let der = [ED25519_SPKI_PREFIX.as_slice(), &identity].concat();
        let e = PublicKey::from_spki_der(&der).unwrap_err();
        assert!(e.to_string().contains("full order"), "{e}");
        let good = SigningKey::generate(Alg::EdDsa).public().to_spki_der();
        assert!(PublicKey::from_spki_der(&good).is_ok());
        // Only keys that passed are remembered.
        assert!(PublicKey::from_spki_der(&der).is_err());
        assert!(PublicKey::from_spki_der(&good).is_ok());
    }

    /// The parsed-key cache answers each key's own bytes with that key.
    #[test]
    fn remembered_keys_are_the_keys_parsed() {
        let keys: Vec<Vec<u8>> = [Alg::EdDsa, Alg::EdDsa, Alg::Es256, Alg::Es256]
            .map(|a| SigningKey::generate(a).public().to_spki_der())
            .into();
        for _ in 0..2 {
            for k in &keys {
                let fresh = PublicKey::parse_spki_der(k).unwrap();
                assert_eq!(PublicKey::from_spki_der(k).unwrap(), fresh);
                assert_eq!(fresh.to_spki_der(), *k);
            }
        }
        // The same bytes with one more at the end are not a key.
        let longer = [keys[0].as_slice(), &[0]].concat();
        assert!(PublicKey::from_spki_der(&longer).is_err());
    }
}
