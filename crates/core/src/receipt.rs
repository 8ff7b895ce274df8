//! Receipts: offline proof that an entry is in the ledger.
//!
//! A receipt is a COSE_Sign (tag 98) whose payload is a checkpoint body and
//! whose signatures are the checkpoint signatures of a quorum of nodes. Its
//! unprotected header carries the RFC 9162 inclusion proof (label 396, as in
//! draft-ietf-cose-merkle-tree-proofs), the leaf, optionally the entry body,
//! and the chain of node-set changes since genesis. See docs/receipts.md.

use crate::cbor::{self, Value};
use crate::checkpoint::{self, Checkpoint, CHECKPOINT_CONTENT_TYPE, NODE_SET_CONTENT_TYPE};
use crate::crypto::{sha256, PublicKey};
use crate::entry::{EntryKind, Leaf};
use crate::merkle::{self, Hash};
use crate::network::{NetworkIdentity, NodeSet};
use crate::tx::Tx;
use coset::{
    CborSerializable, CoseSign, CoseSignBuilder, CoseSignature, HeaderBuilder, Label,
    TaggedCborSerializable,
};
use std::collections::BTreeSet;

/// COSE header label of verifiable data structure proofs.
pub const VDP_LABEL: i64 = 396;
/// Key of inclusion proofs inside the proofs map.
pub const INCLUSION_PROOFS: i64 = -1;
pub const LEAF_LABEL: &str = "comity.leaf";
pub const BODY_LABEL: &str = "comity.body";
pub const CHAIN_LABEL: &str = "comity.chain";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReceiptError {
    #[error("malformed receipt: {0}")]
    Malformed(String),
    #[error("receipt is for network {found}, expected {expected}")]
    WrongNetwork { found: String, expected: String },
    #[error("inclusion proof fails: {0}")]
    Inclusion(#[from] merkle::VerifyError),
    #[error("leaf says index {leaf}, proof is for index {proof}")]
    IndexMismatch { leaf: u64, proof: u64 },
    #[error("entry body does not match the digest in the leaf")]
    BodyMismatch,
    #[error("transaction signature does not verify with the key recorded in the leaf")]
    TxSignature,
    #[error("signature by unknown node {0}")]
    UnknownSigner(String),
    #[error("{0}")]
    Signature(#[from] checkpoint::SignatureError),
    #[error("not enough signatures: {got} of {needed} members required ({what})")]
    NoQuorum {
        got: usize,
        needed: usize,
        what: &'static str,
    },
    #[error("node-set chain: {0}")]
    Chain(String),
}

fn malformed(s: impl Into<String>) -> ReceiptError {
    ReceiptError::Malformed(s.into())
}

/// The parts of a receipt.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// Checkpoint body bytes (the COSE payload).
    pub checkpoint: Vec<u8>,
    pub signatures: Vec<CoseSignature>,
    pub index: u64,
    pub path: Vec<Hash>,
    pub leaf: Vec<u8>,
    pub body: Option<Vec<u8>>,
    /// Node-set changes since genesis, each a COSE_Sign endorsed by the previous set.
    pub chain: Vec<Vec<u8>>,
}

/// What a receipt proved.
#[derive(Clone, Debug)]
pub struct Verified {
    pub leaf: Leaf,
    pub checkpoint: Checkpoint,
    /// Nodes whose checkpoint signatures verified.
    pub signers: Vec<Hash>,
    /// Members those nodes belong to.
    pub members: usize,
    /// The transaction, when the receipt carries its body.
    pub tx: Option<Tx>,
}

impl Receipt {
    pub fn to_cose(&self) -> Vec<u8> {
        let mut size = self.index + 1;
        if let Ok(cp) = Checkpoint::from_cbor(&self.checkpoint) {
            size = cp.size;
        }
        let path = Value::Array(self.path.iter().map(|h| cbor::bytes(*h)).collect());
        let proof = cbor::to_vec(Value::Array(vec![
            cbor::uint(size),
            cbor::uint(self.index),
            path,
        ]))
        .expect("valid");
        let proofs = Value::Map(vec![(
            Value::Integer(INCLUSION_PROOFS.into()),
            Value::Array(vec![cbor::bytes(proof)]),
        )]);
        let mut h = HeaderBuilder::new()
            .value(VDP_LABEL, proofs)
            .text_value(LEAF_LABEL.into(), cbor::bytes(self.leaf.clone()))
            .text_value(
                CHAIN_LABEL.into(),
                Value::Array(self.chain.iter().map(|c| cbor::bytes(c.clone())).collect()),
            );
        if let Some(b) = &self.body {
            h = h.text_value(BODY_LABEL.into(), cbor::bytes(b.clone()));
        }
        let mut b = CoseSignBuilder::new()
            .protected(checkpoint::body_protected(CHECKPOINT_CONTENT_TYPE).header)
            .unprotected(h.build())
            .payload(self.checkpoint.clone());
        for s in &self.signatures {
            b = b.add_signature(s.clone());
        }
        b.build()
            .to_tagged_vec()
            .expect("encoding a COSE_Sign cannot fail")
    }

    pub fn from_cose(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let sign = CoseSign::from_tagged_slice(bytes)
            .or_else(|_| CoseSign::from_slice(bytes))
            .map_err(|e| malformed(format!("not a COSE_Sign: {e}")))?;
        check_protected(&sign, CHECKPOINT_CONTENT_TYPE)?;
        let rest = &sign.unprotected.rest;
        // Strict: an unknown or altered label is an error, never silently ignored.
        for (label, _) in rest {
            let known = match label {
                Label::Int(i) => *i == VDP_LABEL,
                Label::Text(t) => [LEAF_LABEL, BODY_LABEL, CHAIN_LABEL].contains(&t.as_str()),
            };
            if !known {
                return Err(malformed(format!(
                    "unknown unprotected header label {label:?}"
                )));
            }
        }
        if sign.unprotected
            != (coset::Header {
                rest: rest.clone(),
                ..Default::default()
            })
        {
            return Err(malformed("unexpected standard unprotected header fields"));
        }
        let find = |label: Label| rest.iter().find(|(l, _)| *l == label).map(|(_, v)| v);
        let text_bytes = |name: &str| -> Option<Result<Vec<u8>, ReceiptError>> {
            find(Label::Text(name.into())).map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(malformed(format!("{name} must be bytes"))),
            })
        };
        let proofs = find(Label::Int(VDP_LABEL))
            .ok_or_else(|| malformed("no inclusion proof (label 396)"))?;
        let proof_bytes = match proofs {
            Value::Map(m) => match m.as_slice() {
                [(Value::Integer(k), Value::Array(a))]
                    if i128::from(*k) == INCLUSION_PROOFS as i128 =>
                {
                    match a.as_slice() {
                        [Value::Bytes(b)] => b.clone(),
                        _ => return Err(malformed("expected exactly one inclusion proof")),
                    }
                }
                _ => return Err(malformed("proofs map must hold only inclusion proofs (-1)")),
            },
            _ => return Err(malformed("proofs must be a map")),
        };
        let proof =
            cbor::from_canonical_slice(&proof_bytes).map_err(|e| malformed(e.to_string()))?;
        let (index, path) = match proof {
            Value::Array(a) if a.len() == 3 => {
                let n = |v: &Value| v.as_integer().and_then(|i| u64::try_from(i).ok());
                let _size = n(&a[0]).ok_or_else(|| malformed("bad tree size"))?;
                let index = n(&a[1]).ok_or_else(|| malformed("bad leaf index"))?;
                let path = a[2]
                    .as_array()
                    .ok_or_else(|| malformed("bad path"))?
                    .iter()
                    .map(|h| match h {
                        Value::Bytes(b) => b
                            .as_slice()
                            .try_into()
                            .map_err(|_| malformed("path hash must be 32 bytes")),
                        _ => Err(malformed("path hash must be bytes")),
                    })
                    .collect::<Result<Vec<Hash>, _>>()?;
                (index, path)
            }
            _ => return Err(malformed("inclusion proof must be [size, index, path]")),
        };
        // The proof's own size must equal the checkpoint's; checked in verify via the payload.
        let size_in_proof = match cbor::from_slice(&proof_bytes) {
            Ok(Value::Array(a)) => a[0].as_integer().and_then(|i| u64::try_from(i).ok()),
            _ => None,
        };
        let checkpoint = sign
            .payload
            .clone()
            .ok_or_else(|| malformed("no checkpoint payload"))?;
        if let Ok(cp) = Checkpoint::from_cbor(&checkpoint) {
            if size_in_proof != Some(cp.size) {
                return Err(malformed(
                    "inclusion proof tree size differs from the checkpoint size",
                ));
            }
        }
        let chain = match find(Label::Text(CHAIN_LABEL.into())) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|c| match c {
                    Value::Bytes(b) => Ok(b.clone()),
                    _ => Err(malformed("chain items must be bytes")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(malformed("chain must be an array")),
            None => return Err(malformed("no node-set chain")),
        };
        Ok(Receipt {
            checkpoint,
            signatures: sign.signatures.clone(),
            index,
            path,
            leaf: text_bytes(LEAF_LABEL).ok_or_else(|| malformed("no leaf"))??,
            body: text_bytes(BODY_LABEL).transpose()?,
            chain,
        })
    }

    /// Verifies everything against the network identity alone.
    pub fn verify(&self, identity: &NetworkIdentity) -> Result<Verified, ReceiptError> {
        let cp = Checkpoint::from_cbor(&self.checkpoint)
            .map_err(|e| malformed(format!("checkpoint: {e}")))?;
        known_version(cp.version, "checkpoint")?;
        if cp.network_id != identity.network_id {
            return Err(ReceiptError::WrongNetwork {
                found: hex::encode(cp.network_id),
                expected: hex::encode(identity.network_id),
            });
        }
        let leaf_hash = merkle::leaf_hash(&self.leaf);
        merkle::verify_inclusion(&leaf_hash, self.index, cp.size, &self.path, &cp.tx_root)?;
        let leaf = Leaf::from_cbor(&self.leaf).map_err(|e| malformed(format!("leaf: {e}")))?;
        known_version(leaf.version, "leaf")?;
        if leaf.index != self.index {
            return Err(ReceiptError::IndexMismatch {
                leaf: leaf.index,
                proof: self.index,
            });
        }
        let mut tx = None;
        if let Some(body) = &self.body {
            if sha256(body) != leaf.digest {
                return Err(ReceiptError::BodyMismatch);
            }
            // A transaction refused before its signer was known (malformed,
            // wrong_network, unknown_signer) has no signer in its leaf: its
            // body is proved by the digest alone.
            if let (EntryKind::Tx, Some((signer, key))) = (leaf.kind, leaf.signer.as_ref()) {
                let parsed = Tx::parse(body).map_err(|e| malformed(format!("body: {e}")))?;
                let key = PublicKey::from_spki_der(key).map_err(|_| ReceiptError::TxSignature)?;
                if &parsed.kid != signer || parsed.verify(&key).is_err() {
                    return Err(ReceiptError::TxSignature);
                }
                tx = Some(parsed);
            }
        }
        let set = node_set_at(identity, &self.chain, cp.size)?;
        let (signers, members) = verify_quorum(
            CHECKPOINT_CONTENT_TYPE,
            &self.checkpoint,
            &self.signatures,
            &set,
            "checkpoint",
        )?;
        Ok(Verified {
            leaf,
            checkpoint: cp,
            signers,
            members,
            tx,
        })
    }
}

/// A verifier vouches only for rules it knows: a leaf or checkpoint of a
/// later protocol version is refused, not read by this version's rules.
fn known_version(v: u64, what: &str) -> Result<(), ReceiptError> {
    if !(1..=crate::entry::PROTOCOL_VERSION).contains(&v) {
        return Err(malformed(format!(
            "{what} of protocol version {v}; this verifier knows 1 to {}",
            crate::entry::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

fn check_protected(sign: &CoseSign, ct: &str) -> Result<(), ReceiptError> {
    let expected = checkpoint::body_protected(ct)
        .header
        .to_vec()
        .expect("valid");
    let found = match &sign.protected.original_data {
        Some(b) => b.clone(),
        None => sign
            .protected
            .header
            .clone()
            .to_vec()
            .map_err(|e| malformed(e.to_string()))?,
    };
    if found != expected {
        return Err(malformed(format!(
            "protected header is not the {ct} header"
        )));
    }
    Ok(())
}

/// Verifies signatures over a statement and checks they come from a quorum of members of `set`.
pub fn verify_quorum(
    ct: &str,
    body: &[u8],
    sigs: &[CoseSignature],
    set: &NodeSet,
    what: &'static str,
) -> Result<(Vec<Hash>, usize), ReceiptError> {
    let mut nodes = Vec::new();
    let mut members = BTreeSet::new();
    for sig in sigs {
        let id = checkpoint::signer(sig)?;
        let node = set
            .get(&id)
            .ok_or_else(|| ReceiptError::UnknownSigner(hex::encode(id)))?;
        if nodes.contains(&id) {
            // Refused before its check: no statement needs two signatures
            // of one node, and each would cost a verification.
            return Err(malformed(format!(
                "node {} signed the {what} twice",
                hex::encode(id)
            )));
        }
        let key = node
            .public_key()
            .map_err(|e| ReceiptError::Chain(e.to_string()))?;
        if key.fingerprint() != node.id {
            return Err(ReceiptError::Chain(format!(
                "node {} is not the SHA-256 of its key",
                hex::encode(node.id)
            )));
        }
        checkpoint::verify(ct, body, sig, &key)?;
        nodes.push(id);
        members.insert(node.member);
    }
    if members.len() < set.quorum() {
        return Err(ReceiptError::NoQuorum {
            got: members.len(),
            needed: set.quorum(),
            what,
        });
    }
    Ok((nodes, members.len()))
}

/// A node-set change: from tree size `size` on, `nodes` sign checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSetChange {
    pub network_id: Hash,
    pub size: u64,
    pub nodes: NodeSet,
}

impl NodeSetChange {
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(cbor::map([
            ("net", cbor::bytes(self.network_id)),
            ("size", cbor::uint(self.size)),
            ("nodes", self.nodes.to_value()),
        ]))
        .expect("valid")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let v =
            cbor::from_canonical_slice(bytes).map_err(|e| ReceiptError::Chain(e.to_string()))?;
        let m = cbor::MapView::new(&v).map_err(|e| ReceiptError::Chain(e.to_string()))?;
        let err = |e: cbor::CborError| ReceiptError::Chain(e.to_string());
        Ok(NodeSetChange {
            network_id: m.hash("net").map_err(err)?,
            size: m.u64("size").map_err(err)?,
            nodes: NodeSet::from_value(m.req("nodes").map_err(err)?).map_err(err)?,
        })
    }
}

/// Walks the chain from the genesis set and returns the set that signs at `size`.
pub fn node_set_at(
    identity: &NetworkIdentity,
    chain: &[Vec<u8>],
    size: u64,
) -> Result<NodeSet, ReceiptError> {
    node_set_since(&identity.network_id, identity.nodes.clone(), 0, chain, size)
}

/// Walks the chain from `set`, the node set at tree size `since` (one a
/// verifier already holds), and returns the set that signs at `size`.
/// Changes at or before `since` are skipped: `set` already reflects them.
pub fn node_set_since(
    network_id: &Hash,
    mut set: NodeSet,
    since: u64,
    chain: &[Vec<u8>],
    size: u64,
) -> Result<NodeSet, ReceiptError> {
    let mut last = since;
    for (i, item) in chain.iter().enumerate() {
        let sign = CoseSign::from_tagged_slice(item)
            .or_else(|_| CoseSign::from_slice(item))
            .map_err(|e| ReceiptError::Chain(format!("change {i}: {e}")))?;
        if check_protected(&sign, crate::recovery::RECOVERY_CONTENT_TYPE).is_ok() {
            // Members restarted the network with a new node set after losing most nodes.
            let (_, r) = crate::recovery::parse(item)
                .map_err(|e| ReceiptError::Chain(format!("change {i}: {e}")))?;
            if since > 0 && r.change_size() <= since {
                continue;
            }
            let r = crate::recovery::verify(item, network_id, &set, last)
                .map_err(|e| ReceiptError::Chain(format!("change {i}: {e}")))?;
            if r.change_size() < last || r.change_size() > size {
                return Err(ReceiptError::Chain(format!("change {i} is out of order")));
            }
            last = r.change_size();
            set = r.nodes;
            continue;
        }
        check_protected(&sign, NODE_SET_CONTENT_TYPE)?;
        let body = sign
            .payload
            .as_deref()
            .ok_or_else(|| ReceiptError::Chain(format!("change {i}: no payload")))?;
        let change = NodeSetChange::from_cbor(body)?;
        if since > 0 && change.size <= since {
            continue;
        }
        if change.network_id != *network_id || change.size < last || change.size > size {
            return Err(ReceiptError::Chain(format!(
                "change {i} is for another network or out of order"
            )));
        }
        verify_quorum(
            NODE_SET_CONTENT_TYPE,
            body,
            &sign.signatures,
            &set,
            "node-set change",
        )?;
        last = change.size;
        set = change.nodes;
    }
    Ok(set)
}

/// Verifies a bare signed checkpoint (COSE_Sign without proof headers) against the network identity.
pub fn verify_signed_checkpoint(
    bytes: &[u8],
    identity: &NetworkIdentity,
    chain: &[Vec<u8>],
) -> Result<(Checkpoint, Vec<Hash>), ReceiptError> {
    verify_checkpoint_by(bytes, &identity.network_id, |size| {
        node_set_at(identity, chain, size)
    })
}

/// Verifies a bare signed checkpoint of network `network_id`: signed by a
/// quorum of the set `signers` gives for its tree size.
pub fn verify_checkpoint_by(
    bytes: &[u8],
    network_id: &Hash,
    signers: impl FnOnce(u64) -> Result<NodeSet, ReceiptError>,
) -> Result<(Checkpoint, Vec<Hash>), ReceiptError> {
    let sign = CoseSign::from_tagged_slice(bytes)
        .or_else(|_| CoseSign::from_slice(bytes))
        .map_err(|e| malformed(format!("not a COSE_Sign: {e}")))?;
    check_protected(&sign, CHECKPOINT_CONTENT_TYPE)?;
    if !sign.unprotected.is_empty() {
        return Err(malformed(
            "a signed checkpoint's unprotected header must be empty",
        ));
    }
    let body = sign
        .payload
        .as_deref()
        .ok_or_else(|| malformed("no checkpoint payload"))?;
    let cp = Checkpoint::from_cbor(body).map_err(|e| malformed(format!("checkpoint: {e}")))?;
    known_version(cp.version, "checkpoint")?;
    if cp.network_id != *network_id {
        return Err(ReceiptError::WrongNetwork {
            found: hex::encode(cp.network_id),
            expected: hex::encode(network_id),
        });
    }
    let set = signers(cp.size)?;
    let (signers, _) = verify_quorum(
        CHECKPOINT_CONTENT_TYPE,
        body,
        &sign.signatures,
        &set,
        "checkpoint",
    )?;
    Ok((cp, signers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Alg, SigningKey};
    use crate::network::NodeInfo;

    const NET: Hash = [5; 32];

    fn node(member: u8) -> (SigningKey, NodeInfo) {
        let key = SigningKey::generate(Alg::EdDsa);
        let info = NodeInfo {
            id: key.public().fingerprint(),
            member: [member; 32],
            key: key.public().to_spki_der(),
        };
        (key, info)
    }

    /// The change to `nodes` at `size`, endorsed by `by`.
    fn change(size: u64, nodes: &[&NodeInfo], by: &[&(SigningKey, NodeInfo)]) -> Vec<u8> {
        let body = NodeSetChange {
            network_id: NET,
            size,
            nodes: NodeSet(nodes.iter().map(|n| (*n).clone()).collect()),
        }
        .to_cbor();
        let sigs: Vec<Vec<u8>> = by
            .iter()
            .map(|(k, n)| checkpoint::sign(NODE_SET_CONTENT_TYPE, &body, k, &n.id))
            .collect();
        checkpoint::signed_statement(NODE_SET_CONTENT_TYPE, &body, &sigs)
    }

    #[test]
    fn a_chain_walked_from_a_later_set_skips_what_it_covers_and_answers_to_that_set() {
        let (a, b, c) = (node(1), node(2), node(3));
        let genesis = NodeSet(vec![a.1.clone()]);
        // {a} → {a, b} at 10 (a endorses), → {b, c} at 20 (a and b endorse).
        let c1 = change(10, &[&a.1, &b.1], &[&a]);
        let c2 = change(20, &[&b.1, &c.1], &[&a, &b]);
        let at10 = NodeSet(vec![a.1.clone(), b.1.clone()]);
        let want = NodeSet(vec![b.1.clone(), c.1.clone()]);
        let chain = vec![c1.clone(), c2.clone()];
        assert_eq!(
            node_set_since(&NET, genesis.clone(), 0, &chain, 30).unwrap(),
            want
        );
        assert_eq!(
            node_set_since(&NET, at10.clone(), 10, &chain, 30).unwrap(),
            want
        );
        assert_eq!(
            node_set_since(&NET, at10.clone(), 10, &chain[1..], 30).unwrap(),
            want
        );

        // a alone is a quorum of the genesis set, not of {a, b}: a change
        // it endorses alone passes from genesis, but not from the set at 10.
        let forged = change(20, &[&c.1], &[&a]);
        let forged_chain = vec![c1, forged];
        assert!(node_set_since(&NET, genesis, 0, &[forged_chain[1].clone()], 30).is_ok());
        assert!(matches!(
            node_set_since(&NET, at10.clone(), 10, &forged_chain, 30),
            Err(ReceiptError::NoQuorum {
                got: 1,
                needed: 2,
                ..
            })
        ));

        // Two endorsements by one node are refused outright.
        let twice = change(20, &[&b.1, &c.1], &[&a, &a]);
        let err = node_set_since(&NET, at10, 10, &[twice], 30).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
