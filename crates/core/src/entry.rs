//! Ledger leaves: what each position of the ledger commits to.
//!
//! A leaf commits to the *digest* of its entry's body (the signed transaction,
//! the genesis document or a checkpoint marker), never to the body itself, so a
//! private body can later be withheld or encrypted while every hash still checks.

use crate::cbor::{self, CborError, MapView};
use crate::crypto::PublicKey;
use crate::merkle::Hash;

/// Version of the apply rules and entry formats; every leaf carries it.
pub const PROTOCOL_VERSION: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The first entry: the genesis document that fixes the network id.
    Genesis,
    /// A signed client or node transaction.
    Tx,
    /// A checkpoint marker: the tree size at which every node signs the roots.
    Checkpoint,
    /// Members' disaster-recovery decision (a COSE_Sign): a new node set
    /// continues the ledger after most nodes were lost.
    Recovery,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Genesis => "genesis",
            EntryKind::Tx => "tx",
            EntryKind::Checkpoint => "checkpoint",
            EntryKind::Recovery => "recovery",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "genesis" => EntryKind::Genesis,
            "tx" => EntryKind::Tx,
            "checkpoint" => EntryKind::Checkpoint,
            "recovery" => EntryKind::Recovery,
            _ => return None,
        })
    }
}

/// Result of applying an entry. A rejected transaction is still a leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected(String),
}

impl Outcome {
    pub fn code(&self) -> &str {
        match self {
            Outcome::Applied => "ok",
            Outcome::Rejected(c) => c,
        }
    }
}

/// One ledger leaf. Its Merkle leaf hash is `SHA-256(0x00 ‖ to_cbor())`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub version: u64,
    pub index: u64,
    /// Ledger time in milliseconds since the Unix epoch, never decreasing.
    pub time: u64,
    pub kind: EntryKind,
    /// SHA-256 of the entry body.
    pub digest: Hash,
    pub outcome: Outcome,
    /// For transactions: the signer's identity id and the SubjectPublicKeyInfo
    /// of the key valid when it was committed, so the signature checks offline.
    pub signer: Option<(Hash, Vec<u8>)>,
}

impl Leaf {
    /// Written straight from the fields (in canonical key order) rather
    /// than through a [`cbor::Value`]: one leaf per transaction.
    pub fn to_cbor(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            v: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            key: Option<&'a serde_bytes::Bytes>,
            kind: &'a str,
            time: u64,
            index: u64,
            digest: &'a serde_bytes::Bytes,
            #[serde(skip_serializing_if = "Option::is_none")]
            signer: Option<&'a serde_bytes::Bytes>,
            outcome: &'a str,
        }
        let (signer, key) = match &self.signer {
            Some((id, key)) => (Some(id), Some(key)),
            None => (None, None),
        };
        cbor::to_canonical(&Wire {
            v: self.version,
            key: key.map(|k| serde_bytes::Bytes::new(k)),
            kind: self.kind.as_str(),
            time: self.time,
            index: self.index,
            digest: serde_bytes::Bytes::new(&self.digest),
            signer: signer.map(|s| serde_bytes::Bytes::new(s)),
            outcome: self.outcome.code(),
        })
        .expect("leaf built from valid parts")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Leaf, CborError> {
        let v = cbor::from_canonical_slice(bytes)?;
        let m = MapView::new(&v)?;
        let kind = EntryKind::parse(m.text("kind")?)
            .ok_or_else(|| CborError::Shape("unknown entry kind".into()))?;
        let outcome = match m.text("outcome")? {
            "ok" => Outcome::Applied,
            code => Outcome::Rejected(code.to_string()),
        };
        let signer = match m.get("signer") {
            Some(_) => {
                let key = m.bytes("key")?.to_vec();
                PublicKey::from_spki_der(&key).map_err(|e| CborError::Shape(e.to_string()))?;
                Some((m.hash("signer")?, key))
            }
            None => None,
        };
        if signer.is_some() && kind != EntryKind::Tx {
            return Err(CborError::Shape("only a tx leaf names a signer".into()));
        }
        let expected = 6 + if signer.is_some() { 2 } else { 0 };
        if m.0.len() != expected {
            return Err(CborError::Shape("unexpected fields in leaf".into()));
        }
        Ok(Leaf {
            version: m.u64("v")?,
            index: m.u64("index")?,
            time: m.u64("time")?,
            kind,
            digest: m.hash("digest")?,
            outcome,
            signer,
        })
    }
}

/// A ledger record as stored in segment files and served to auditors: the
/// leaf plus the body it commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub leaf: Vec<u8>,
    pub body: Vec<u8>,
}

impl Record {
    pub fn to_cbor(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            body: &'a serde_bytes::Bytes,
            leaf: &'a serde_bytes::Bytes,
        }
        cbor::to_canonical(&Wire {
            body: serde_bytes::Bytes::new(&self.body),
            leaf: serde_bytes::Bytes::new(&self.leaf),
        })
        .expect("record built from valid parts")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Record, CborError> {
        let v = cbor::from_canonical_slice(bytes)?;
        let m = MapView::new(&v)?;
        Ok(Record {
            leaf: m.bytes("leaf")?.to_vec(),
            body: m.bytes("body")?.to_vec(),
        })
    }
}

impl Record {
    /// The leaf bytes of an encoded record, without decoding the body: the fast
    /// path for start-up verification of large ledgers. Accepts exactly the
    /// canonical encoding `{"body": bstr, "leaf": bstr}` and nothing else.
    pub fn leaf_of(bytes: &[u8]) -> Option<&[u8]> {
        fn bstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
            let (&h, rest) = b.split_first()?;
            if h >> 5 != 2 {
                return None;
            }
            let (len, rest) = match h & 0x1f {
                n @ 0..=23 => (n as usize, rest),
                24 => (*rest.first()? as usize, &rest[1..]),
                25 => (
                    u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
                    &rest[2..],
                ),
                26 => (
                    u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
                    &rest[4..],
                ),
                _ => return None,
            };
            // Shortest form only, as deterministic encoding requires.
            let min = match h & 0x1f {
                24 => 24,
                25 => 0x100,
                26 => 0x1_0000,
                _ => 0,
            };
            if len < min {
                return None;
            }
            Some((rest.get(..len)?, &rest[len..]))
        }
        let rest = bytes.strip_prefix(b"\xa2\x64body")?;
        let (_, rest) = bstr(rest)?;
        let rest = rest.strip_prefix(b"\x64leaf")?;
        let (leaf, rest) = bstr(rest)?;
        rest.is_empty().then_some(leaf)
    }
}

/// Body of a checkpoint marker entry.
pub fn checkpoint_marker_body(seq: u64) -> Vec<u8> {
    cbor::to_vec(cbor::map([("checkpoint", cbor::uint(seq))])).expect("valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Alg, SigningKey};

    #[test]
    fn fast_leaf_extraction_matches_full_decoding() {
        for (leaf_len, body_len) in [(0, 0), (5, 23), (24, 24), (200, 255), (256, 70_000)] {
            let r = Record {
                leaf: vec![7; leaf_len],
                body: vec![9; body_len],
            };
            let bytes = r.to_cbor();
            assert_eq!(Record::leaf_of(&bytes), Some(r.leaf.as_slice()));
            assert!(Record::leaf_of(&bytes[..bytes.len() - 1]).is_none());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Record::leaf_of(&longer).is_none());
        }
        // Non-canonical length encodings are not accepted.
        assert!(Record::leaf_of(b"\xa2\x64body\x58\x00\x64leaf\x40").is_none());
    }

    #[test]
    fn leaf_round_trip() {
        let k = SigningKey::generate(Alg::Es256).public();
        let leaf = Leaf {
            version: PROTOCOL_VERSION,
            index: 42,
            time: 1,
            kind: EntryKind::Tx,
            digest: [3; 32],
            outcome: Outcome::Rejected("nonce_reused".into()),
            signer: Some((k.fingerprint(), k.to_spki_der())),
        };
        assert_eq!(Leaf::from_cbor(&leaf.to_cbor()).unwrap(), leaf);
        let plain = Leaf {
            signer: None,
            kind: EntryKind::Checkpoint,
            outcome: Outcome::Applied,
            ..leaf
        };
        assert_eq!(Leaf::from_cbor(&plain.to_cbor()).unwrap(), plain);
        let signed_checkpoint = Leaf {
            signer: leaf.signer.clone(),
            ..plain
        };
        assert!(Leaf::from_cbor(&signed_checkpoint.to_cbor()).is_err());
    }

    /// The ledger format is fixed: the field-by-field writers give the bytes
    /// of the generic encoder over the same map.
    #[test]
    fn writers_match_the_generic_encoder() {
        let k = SigningKey::generate(Alg::EdDsa).public();
        let signed = Leaf {
            version: PROTOCOL_VERSION,
            index: 1 << 40,
            time: 1_700_000_000_000,
            kind: EntryKind::Tx,
            digest: [5; 32],
            outcome: Outcome::Applied,
            signer: Some((k.fingerprint(), k.to_spki_der())),
        };
        let plain = Leaf {
            signer: None,
            index: 0,
            kind: EntryKind::Genesis,
            outcome: Outcome::Rejected("bad".into()),
            ..signed.clone()
        };
        for leaf in [signed, plain] {
            let mut m = vec![
                ("v", cbor::uint(leaf.version)),
                ("index", cbor::uint(leaf.index)),
                ("time", cbor::uint(leaf.time)),
                ("kind", cbor::text(leaf.kind.as_str())),
                ("digest", cbor::bytes(leaf.digest)),
                ("outcome", cbor::text(leaf.outcome.code())),
            ];
            if let Some((id, key)) = &leaf.signer {
                m.push(("signer", cbor::bytes(*id)));
                m.push(("key", cbor::bytes(key.clone())));
            }
            let m = m.into_iter().map(|(k, v)| (cbor::text(k), v)).collect();
            let want = cbor::to_vec(cbor::Value::Map(m)).unwrap();
            assert_eq!(leaf.to_cbor(), want);
            let record = Record {
                leaf: want,
                body: vec![1; 300],
            };
            let want = cbor::to_vec(cbor::map([
                ("leaf", cbor::bytes(record.leaf.clone())),
                ("body", cbor::bytes(record.body.clone())),
            ]))
            .unwrap();
            assert_eq!(record.to_cbor(), want);
        }
    }
}
