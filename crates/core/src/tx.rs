//! Signed transactions: COSE_Sign1 (RFC 9052) over a deterministic CBOR payload.
//!
//! The transaction id is the SHA-256 of the exact submitted bytes, so the same
//! bytes always name the same transaction.

use crate::cbor::{self, MapView, Value};
use crate::crypto::{sha256, Alg, CryptoError, PublicKey, SigningKey};
use crate::merkle::Hash;
use coset::{
    iana, AsCborValue, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable,
};

/// Upper bound on a nonce, which only needs to be unique per signer inside the time window.
pub const MAX_NONCE_LEN: usize = 32;
/// Upper bound on application and operation names.
pub const MAX_NAME_LEN: usize = 64;

/// What a client asks the ledger to do.
#[derive(Clone, Debug, PartialEq)]
pub struct TxPayload {
    /// Network id (the genesis hash): a transaction is valid on one network only.
    pub net: Hash,
    pub app: String,
    pub op: String,
    pub args: Value,
    pub nonce: Vec<u8>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created: u64,
}

impl TxPayload {
    /// The canonical bytes that get signed. Panics if `args` holds a map
    /// with a key twice, which no node would accept: a bug in the caller.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(cbor::map([
            ("net", cbor::bytes(self.net)),
            ("app", cbor::text(&self.app)),
            ("op", cbor::text(&self.op)),
            ("args", self.args.clone()),
            ("nonce", cbor::bytes(self.nonce.clone())),
            ("created", cbor::uint(self.created)),
        ]))
        .expect("payload built from valid parts")
    }

    fn from_cbor(bytes: &[u8]) -> Result<Self, TxError> {
        let v = cbor::from_canonical_slice(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        let m = MapView::new(&v).map_err(|e| TxError::Malformed(e.to_string()))?;
        if m.0.len() != 6 {
            return Err(TxError::Malformed(
                "payload must have exactly the fields net, app, op, args, nonce, created".into(),
            ));
        }
        let bad = |e: cbor::CborError| TxError::Malformed(e.to_string());
        let app = m.text("app").map_err(bad)?.to_string();
        let op = m.text("op").map_err(bad)?.to_string();
        if app.is_empty() || app.len() > MAX_NAME_LEN || op.is_empty() || op.len() > MAX_NAME_LEN {
            return Err(TxError::Malformed(
                "app and op must be 1 to 64 bytes".into(),
            ));
        }
        let nonce = m.bytes("nonce").map_err(bad)?.to_vec();
        if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
            return Err(TxError::Malformed("nonce must be 1 to 32 bytes".into()));
        }
        let (net, created) = (m.hash("net").map_err(bad)?, m.u64("created").map_err(bad)?);
        m.req("args").map_err(bad)?;
        // The arguments are moved out, not copied: they can be most of the payload.
        let Value::Map(entries) = v else {
            unreachable!("MapView checked that the payload is a map")
        };
        let args = entries
            .into_iter()
            .find_map(|(k, a)| matches!(&k, Value::Text(t) if t == "args").then_some(a))
            .expect("checked above");
        Ok(TxPayload {
            net,
            app,
            op,
            args,
            nonce,
            created,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TxError {
    #[error("malformed transaction: {0}")]
    Malformed(String),
    #[error("unsupported algorithm: {0} (EdDSA and ES256 are accepted)")]
    UnsupportedAlg(String),
    #[error("bad signature: {0}")]
    BadSignature(#[from] CryptoError),
}

/// A parsed (not yet verified) transaction.
#[derive(Clone, Debug)]
pub struct Tx {
    pub id: Hash,
    pub alg: Alg,
    /// Identity id of the signer.
    pub kid: Hash,
    pub payload: TxPayload,
    sign1: CoseSign1,
}

impl Tx {
    /// Decodes a tagged COSE_Sign1 with an embedded payload, in its one
    /// canonical encoding.
    pub fn parse(bytes: &[u8]) -> Result<Tx, TxError> {
        Tx::parse_with_id(bytes, sha256(bytes))
    }

    /// [`Tx::parse`] for a caller that already hashed `bytes` (`id` must be
    /// their SHA-256): without SHA-NI, hashing is a visible share of apply.
    pub fn parse_with_id(bytes: &[u8], id: Hash) -> Result<Tx, TxError> {
        debug_assert_eq!(id, sha256(bytes));
        // One transaction, one encoding: the id hashes these bytes, so nothing
        // outside the signature (unprotected headers, alternative encodings)
        // may vary. Checked in the pass that decodes them.
        let malformed =
            |e: &dyn std::fmt::Display| TxError::Malformed(format!("not a tagged COSE_Sign1: {e}"));
        let sign1 = match cbor::from_canonical_slice(bytes) {
            Ok(Value::Tag(CoseSign1::TAG, inner)) => {
                CoseSign1::from_cbor_value(*inner).map_err(|e| malformed(&e))?
            }
            Ok(_) => return Err(malformed(&"expected tag 18")),
            Err(cbor::CborError::Malformed(e)) => return Err(malformed(&e)),
            Err(_) => {
                return Err(TxError::Malformed(
                    "not in the canonical COSE_Sign1 encoding".into(),
                ))
            }
        };
        if !sign1.unprotected.is_empty() {
            return Err(TxError::Malformed(
                "the unprotected header must be empty".into(),
            ));
        }
        let alg = match &sign1.protected.header.alg {
            Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => Alg::from_cose_id(*a as i64)
                .ok_or_else(|| TxError::UnsupportedAlg(format!("{a:?}")))?,
            Some(other) => return Err(TxError::UnsupportedAlg(format!("{other:?}"))),
            None => return Err(TxError::Malformed("protected header has no alg".into())),
        };
        let kid: Hash = sign1
            .protected
            .header
            .key_id
            .as_slice()
            .try_into()
            .map_err(|_| {
                TxError::Malformed("protected header kid must be a 32-byte identity id".into())
            })?;
        // Exactly {1: alg, 4: kid}, canonically encoded: nothing else signed
        // (no `crit`, no other parameter) and no second encoding of these.
        let label = u8::try_from(-1 - alg.cose_id()).expect("small negative alg ids");
        let want = [&[0xa2, 0x01, 0x20 | label, 0x04, 0x58, 0x20][..], &kid].concat();
        if sign1.protected.original_data.as_deref() != Some(want.as_slice()) {
            return Err(TxError::Malformed(
                "the protected header must be exactly {alg, kid}, canonically encoded".into(),
            ));
        }
        let payload = match &sign1.payload {
            Some(p) => TxPayload::from_cbor(p)?,
            None => {
                return Err(TxError::Malformed(
                    "detached payloads are not accepted".into(),
                ))
            }
        };
        Ok(Tx {
            id,
            alg,
            kid,
            payload,
            sign1,
        })
    }

    /// Checks the signature with `key`, which must be of the header's algorithm.
    pub fn verify(&self, key: &PublicKey) -> Result<(), TxError> {
        if key.alg() != self.alg {
            return Err(TxError::BadSignature(CryptoError::BadSignature));
        }
        key.verify(&self.signed_data(), self.signature())
            .map_err(TxError::BadSignature)
    }

    /// The bytes the signature covers (RFC 9052 §4.4 Sig_structure, no
    /// external data), for batch verification. Written directly from the
    /// parsed header bytes: coset builds a CBOR value tree for it.
    pub fn signed_data(&self) -> Vec<u8> {
        let (Some(protected), Some(payload)) =
            (&self.sign1.protected.original_data, &self.sign1.payload)
        else {
            return self.sign1.tbs_data(b"");
        };
        const CONTEXT: &[u8] = b"Signature1";
        let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
        cbor::head(&mut out, 4, 4);
        cbor::head(&mut out, 3, CONTEXT.len() as u64);
        out.extend_from_slice(CONTEXT);
        for b in [protected.as_slice(), b"", payload.as_slice()] {
            cbor::head(&mut out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        out
    }

    pub fn signature(&self) -> &[u8] {
        &self.sign1.signature
    }

    /// Signs `payload` as identity `kid`, returning the exact transaction bytes.
    pub fn sign(key: &SigningKey, kid: &Hash, payload: &TxPayload) -> Vec<u8> {
        let alg = match key.alg() {
            Alg::EdDsa => iana::Algorithm::EdDSA,
            Alg::Es256 => iana::Algorithm::ES256,
        };
        let protected = HeaderBuilder::new()
            .algorithm(alg)
            .key_id(kid.to_vec())
            .build();
        CoseSign1Builder::new()
            .protected(protected)
            .payload(payload.to_cbor())
            .create_signature(b"", |data| key.sign(data))
            .build()
            .to_tagged_vec()
            .expect("encoding a COSE_Sign1 cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TxPayload {
        TxPayload {
            net: [7; 32],
            app: "kv".into(),
            op: "put".into(),
            args: cbor::map([("key", cbor::text("k")), ("value", cbor::bytes(vec![1, 2]))]),
            nonce: vec![1; 16],
            created: 1_700_000_000_000,
        }
    }

    #[test]
    fn sign_parse_verify() {
        for alg in [Alg::EdDsa, Alg::Es256] {
            let k = SigningKey::generate(alg);
            let kid = k.public().fingerprint();
            let bytes = Tx::sign(&k, &kid, &payload());
            let tx = Tx::parse(&bytes).unwrap();
            assert_eq!(tx.payload, payload());
            assert_eq!(tx.kid, kid);
            assert_eq!(tx.id, sha256(&bytes));
            tx.verify(&k.public()).unwrap();
            let other = SigningKey::generate(alg);
            assert!(tx.verify(&other.public()).is_err());
        }
    }

    #[test]
    fn signed_data_is_cosets_sig_structure() {
        let k = SigningKey::generate(Alg::EdDsa);
        let kid = k.public().fingerprint();
        // Values whose payloads need each length form of a byte string.
        for len in [0, 1, 30, 200, 300, 70_000] {
            let mut p = payload();
            p.args = cbor::map([
                ("key", cbor::text("k")),
                ("value", cbor::bytes(vec![9; len])),
            ]);
            let tx = Tx::parse(&Tx::sign(&k, &kid, &p)).unwrap();
            assert_eq!(
                tx.signed_data(),
                tx.sign1.tbs_data(b""),
                "value of {len} bytes"
            );
            assert!(k.public().verify(&tx.signed_data(), tx.signature()).is_ok());
        }
    }

    #[test]
    fn any_bit_flip_breaks_parse_or_signature() {
        let k = SigningKey::generate(Alg::EdDsa);
        let kid = k.public().fingerprint();
        let bytes = Tx::sign(&k, &kid, &payload());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(tx) = Tx::parse(&b) {
                    assert!(
                        tx.kid != kid || tx.verify(&k.public()).is_err(),
                        "flip {i}:{bit} accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn truncated_and_garbage_are_malformed() {
        let k = SigningKey::generate(Alg::EdDsa);
        let bytes = Tx::sign(&k, &[0; 32], &payload());
        for n in 0..bytes.len() {
            assert!(Tx::parse(&bytes[..n]).is_err());
        }
        assert!(matches!(
            Tx::parse(b"\xff\x00garbage"),
            Err(TxError::Malformed(_))
        ));
    }

    #[test]
    fn only_the_canonical_envelope_is_accepted() {
        use coset::CborSerializable;
        let k = SigningKey::generate(Alg::EdDsa);
        let bytes = Tx::sign(&k, &[0; 32], &payload());
        let mut sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
        // Same signature, untagged: a different byte string, so refused.
        assert!(Tx::parse(&sign1.clone().to_vec().unwrap()).is_err());
        // Same signature, with an unprotected header added: refused.
        sign1.unprotected.content_type = Some(coset::ContentType::Text("x".into()));
        assert!(Tx::parse(&sign1.to_tagged_vec().unwrap()).is_err());
    }

    /// The signer's own variants of the protected header (another parameter,
    /// `crit`, another encoding) are refused even with a valid signature.
    #[test]
    fn only_the_canonical_protected_header_is_accepted() {
        use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
        let k = SigningKey::generate(Alg::EdDsa);
        let kid = k.public().fingerprint();
        let signed = |h: coset::Header| {
            CoseSign1Builder::new()
                .protected(h)
                .payload(payload().to_cbor())
                .create_signature(b"", |m| k.sign(m))
                .build()
                .to_tagged_vec()
                .unwrap()
        };
        let base = || {
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(kid.to_vec())
        };
        Tx::parse(&signed(base().build())).expect("the canonical header");
        for h in [
            base().content_type("text/plain".into()).build(),
            base().add_critical(iana::HeaderParameter::Alg).build(),
        ] {
            assert!(matches!(
                Tx::parse(&signed(h)),
                Err(TxError::Malformed(m)) if m.contains("protected header")
            ));
        }
    }
}
