//! Checkpoints: the roots every node signs at the same tree size.
//!
//! Nodes sign the COSE_Sign (RFC 9052 §4.1) `Sig_structure` of the checkpoint
//! body under a fixed body header, so their individual signatures assemble
//! directly into a multi-signed receipt.

use crate::cbor::{self, CborError, MapView};
use crate::crypto::{Alg, CryptoError, PublicKey, SigningKey};
use crate::merkle::Hash;
use coset::{
    iana, CborSerializable, CoseSignature, CoseSignatureBuilder, Header, HeaderBuilder,
    ProtectedHeader, SignatureContext,
};

/// COSE header label for the verifiable data structure (draft-ietf-cose-merkle-tree-proofs).
pub const VDS_LABEL: i64 = 395;
/// Verifiable data structure id of RFC 9162 SHA-256 trees.
pub const VDS_RFC9162_SHA256: i64 = 1;
/// Content type of a checkpoint body.
pub const CHECKPOINT_CONTENT_TYPE: &str = "application/comity-checkpoint+cbor";

/// The signed statement about the ledger at one tree size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub network_id: Hash,
    /// Checkpoint sequence number, from 1.
    pub seq: u64,
    /// Tree size covered (includes the checkpoint marker leaf).
    pub size: u64,
    pub tx_root: Hash,
    pub state_root: Hash,
    /// Ledger time of the marker.
    pub time: u64,
    pub version: u64,
}

impl Checkpoint {
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(cbor::map([
            ("net", cbor::bytes(self.network_id)),
            ("seq", cbor::uint(self.seq)),
            ("size", cbor::uint(self.size)),
            ("tx_root", cbor::bytes(self.tx_root)),
            ("state_root", cbor::bytes(self.state_root)),
            ("time", cbor::uint(self.time)),
            ("v", cbor::uint(self.version)),
        ]))
        .expect("checkpoint built from valid parts")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CborError> {
        let v = cbor::from_canonical_slice(bytes)?;
        let m = MapView::new(&v)?;
        if m.0.len() != 7 {
            return Err(CborError::Shape("unexpected fields in checkpoint".into()));
        }
        Ok(Checkpoint {
            network_id: m.hash("net")?,
            seq: m.u64("seq")?,
            size: m.u64("size")?,
            tx_root: m.hash("tx_root")?,
            state_root: m.hash("state_root")?,
            time: m.u64("time")?,
            version: m.u64("v")?,
        })
    }
}

/// Content type of a node-set change endorsed by the previous node set.
pub const NODE_SET_CONTENT_TYPE: &str = "application/comity-node-set+cbor";

/// The fixed protected header of every multi-signed statement of content type `ct`.
pub fn body_protected(ct: &str) -> ProtectedHeader {
    ProtectedHeader {
        original_data: None,
        header: HeaderBuilder::new()
            .content_type(ct.to_string())
            .value(VDS_LABEL, cbor::Value::Integer(VDS_RFC9162_SHA256.into()))
            .build(),
    }
}

fn signature_protected(alg: Alg, node: &Hash) -> Header {
    let a = match alg {
        Alg::EdDsa => iana::Algorithm::EdDSA,
        Alg::Es256 => iana::Algorithm::ES256,
    };
    HeaderBuilder::new()
        .algorithm(a)
        .key_id(node.to_vec())
        .build()
}

/// A node's signature over a statement (checkpoint or node-set change), as a COSE_Signature.
pub fn sign(ct: &str, body: &[u8], key: &SigningKey, node: &Hash) -> Vec<u8> {
    let protected = ProtectedHeader {
        original_data: None,
        header: signature_protected(key.alg(), node),
    };
    let tbs = coset::sig_structure_data(
        SignatureContext::CoseSignature,
        body_protected(ct),
        Some(protected.clone()),
        b"",
        body,
    );
    CoseSignatureBuilder::new()
        .protected(protected.header)
        .signature(key.sign(&tbs))
        .build()
        .to_vec()
        .expect("encoding a COSE_Signature cannot fail")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    #[error("malformed checkpoint signature: {0}")]
    Malformed(String),
    #[error("checkpoint signature by node {0}: {1}")]
    Invalid(String, CryptoError),
}

/// Returns the signing node id of a COSE_Signature without verifying it.
pub fn signer(sig: &CoseSignature) -> Result<Hash, SignatureError> {
    sig.protected
        .header
        .key_id
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Malformed("kid must be a 32-byte node id".into()))
}

pub fn parse_signature(bytes: &[u8]) -> Result<CoseSignature, SignatureError> {
    CoseSignature::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// Checks one node signature over a statement `body` of content type `ct`.
pub fn verify(
    ct: &str,
    body: &[u8],
    sig: &CoseSignature,
    key: &PublicKey,
) -> Result<(), SignatureError> {
    let node = signer(sig)?;
    let expected = signature_protected(key.alg(), &node);
    if sig.protected.header.alg != expected.alg {
        return Err(SignatureError::Invalid(
            hex::encode(node),
            CryptoError::BadSignature,
        ));
    }
    let tbs = coset::sig_structure_data(
        SignatureContext::CoseSignature,
        body_protected(ct),
        Some(sig.protected.clone()),
        b"",
        body,
    );
    key.verify(&tbs, &sig.signature)
        .map_err(|e| SignatureError::Invalid(hex::encode(node), e))
}

/// Assembles node signatures (COSE_Signature bytes) over `body` into a COSE_Sign.
/// Unparseable signatures are skipped; verification would reject them anyway.
pub fn signed_statement(ct: &str, body: &[u8], sigs: &[Vec<u8>]) -> Vec<u8> {
    use coset::TaggedCborSerializable;
    let mut b = coset::CoseSignBuilder::new()
        .protected(body_protected(ct).header)
        .payload(body.to_vec());
    for s in sigs {
        if let Ok(sig) = parse_signature(s) {
            b = b.add_signature(sig);
        }
    }
    b.build()
        .to_tagged_vec()
        .expect("encoding a COSE_Sign cannot fail")
}
