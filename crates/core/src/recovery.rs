//! Disaster recovery. When most nodes are lost for good, Raft cannot commit
//! and governance cannot vote, so a majority of the members sign a decision
//! instead: continue the ledger from a surviving copy, with a new node set.
//!
//! The decision carries what an offline verifier needs to check it with the
//! network identity alone: the surviving copy's latest final checkpoint
//! (signed by the old node set, reached through the chain so far), the
//! active members' keys in that checkpoint's state with their state proof,
//! and the members' signatures. In a receipt's chain it stands where an
//! endorsed node-set change would: from `size + 1` on, `nodes` sign.

use crate::cbor::{self, MapView, Value};
use crate::checkpoint::{self, Checkpoint, CHECKPOINT_CONTENT_TYPE};
use crate::crypto::PublicKey;
use crate::merkle::Hash;
use crate::network::NodeSet;
use crate::receipt::{self, ReceiptError};
use coset::{CborSerializable, CoseSign, TaggedCborSerializable};
use std::collections::BTreeSet;

/// Content type of a recovery decision signed by members.
pub const RECOVERY_CONTENT_TYPE: &str = "application/comity-recovery+cbor";

/// State-tree key of the active members' current keys ([`MemberKeys`]).
pub const MEMBER_KEYS_STATE_KEY: &[u8] = b"gov/member_keys";

/// The active members and their current keys (SubjectPublicKeyInfo DER), by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberKeys(pub Vec<(Hash, Vec<u8>)>);

impl MemberKeys {
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(Value::Array(
            self.0
                .iter()
                .map(|(id, key)| Value::Array(vec![cbor::bytes(*id), cbor::bytes(key.clone())]))
                .collect(),
        ))
        .expect("valid")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let err = |m: &str| ReceiptError::Chain(format!("member keys: {m}"));
        let Value::Array(items) =
            cbor::from_canonical_slice(bytes).map_err(|e| err(&e.to_string()))?
        else {
            return Err(err("not an array"));
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                Value::Array(pair) => match pair.as_slice() {
                    [Value::Bytes(id), Value::Bytes(key)] => out.push((
                        id.as_slice()
                            .try_into()
                            .map_err(|_| err("id is not 32 bytes"))?,
                        key.clone(),
                    )),
                    _ => return Err(err("entry is not [id, key]")),
                },
                _ => return Err(err("entry is not an array")),
            }
        }
        Ok(MemberKeys(out))
    }
}

/// The members' decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub network_id: Hash,
    /// Length of the surviving ledger. The decision is recorded at this index
    /// and the new node set signs from tree size `size + 1`.
    pub size: u64,
    /// RFC 9162 root of the surviving ledger at `size`.
    pub tx_root: Hash,
    /// The surviving copy's latest final checkpoint, as a COSE_Sign.
    pub checkpoint: Vec<u8>,
    /// [`MemberKeys`] in that checkpoint's state, and its state proof.
    pub members: Vec<u8>,
    pub members_proof: Vec<u8>,
    /// The new node set, and where each of its nodes is reached (same order).
    pub nodes: NodeSet,
    pub addresses: Vec<String>,
    /// Why: recorded with the decision.
    pub reason: String,
}

impl Recovery {
    /// The tree size from which `nodes` sign.
    pub fn change_size(&self) -> u64 {
        self.size + 1
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(cbor::map([
            ("net", cbor::bytes(self.network_id)),
            ("size", cbor::uint(self.size)),
            ("tx_root", cbor::bytes(self.tx_root)),
            ("checkpoint", cbor::bytes(self.checkpoint.clone())),
            ("members", cbor::bytes(self.members.clone())),
            ("members_proof", cbor::bytes(self.members_proof.clone())),
            ("nodes", self.nodes.to_value()),
            (
                "addresses",
                Value::Array(self.addresses.iter().map(cbor::text).collect()),
            ),
            ("reason", cbor::text(&self.reason)),
        ]))
        .expect("valid")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let err = |e: cbor::CborError| ReceiptError::Chain(format!("recovery: {e}"));
        let v = cbor::from_canonical_slice(bytes).map_err(err)?;
        let m = MapView::new(&v).map_err(err)?;
        let addresses = m
            .array("addresses")
            .map_err(err)?
            .iter()
            .map(|a| match a {
                Value::Text(t) => Ok(t.clone()),
                _ => Err(ReceiptError::Chain(
                    "recovery: addresses must be text".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let r = Recovery {
            network_id: m.hash("net").map_err(err)?,
            size: m.u64("size").map_err(err)?,
            tx_root: m.hash("tx_root").map_err(err)?,
            checkpoint: m.bytes("checkpoint").map_err(err)?.to_vec(),
            members: m.bytes("members").map_err(err)?.to_vec(),
            members_proof: m.bytes("members_proof").map_err(err)?.to_vec(),
            nodes: NodeSet::from_value(m.req("nodes").map_err(err)?).map_err(err)?,
            addresses,
            reason: m.text("reason").map_err(err)?.to_string(),
        };
        if r.addresses.len() != r.nodes.0.len() || r.nodes.0.is_empty() {
            return Err(ReceiptError::Chain(
                "recovery: one address per node, and at least one node".into(),
            ));
        }
        if r.size == u64::MAX {
            // Its change size would wrap round to 0.
            return Err(ReceiptError::Chain("recovery: size out of range".into()));
        }
        Ok(r)
    }
}

/// Parses a signed decision (COSE_Sign with the decision as payload).
pub fn parse(signed: &[u8]) -> Result<(CoseSign, Recovery), ReceiptError> {
    let sign = CoseSign::from_tagged_slice(signed)
        .or_else(|_| CoseSign::from_slice(signed))
        .map_err(|e| ReceiptError::Chain(format!("recovery is not a COSE_Sign: {e}")))?;
    let body = sign
        .payload
        .as_deref()
        .ok_or_else(|| ReceiptError::Chain("recovery has no payload".into()))?;
    let r = Recovery::from_cbor(body)?;
    Ok((sign, r))
}

/// The members' signatures on a decision (COSE_Signature bytes each).
pub fn signatures(sign: &CoseSign) -> Vec<Vec<u8>> {
    sign.signatures
        .iter()
        .filter_map(|s| s.clone().to_vec().ok())
        .collect()
}

/// Checks a signed decision against `set`, the node set in force from tree
/// size `since`: the surviving copy's checkpoint is final under `set` (so at
/// least `since` and at most the decision's size), the member keys are
/// proved in its state, and a majority of those members signed, among them
/// the operator of every node it names. Returns the decision.
pub fn verify(
    signed: &[u8],
    network_id: &Hash,
    set: &NodeSet,
    since: u64,
) -> Result<Recovery, ReceiptError> {
    let (sign, r) = parse(signed)?;
    if &r.network_id != network_id {
        return Err(ReceiptError::Chain(
            "recovery is for another network".into(),
        ));
    }
    let cp_sign = CoseSign::from_tagged_slice(&r.checkpoint)
        .or_else(|_| CoseSign::from_slice(&r.checkpoint))
        .map_err(|e| ReceiptError::Chain(format!("recovery checkpoint: {e}")))?;
    let cp_body = cp_sign
        .payload
        .as_deref()
        .ok_or_else(|| ReceiptError::Chain("recovery checkpoint has no payload".into()))?;
    let cp = Checkpoint::from_cbor(cp_body)
        .map_err(|e| ReceiptError::Chain(format!("recovery checkpoint: {e}")))?;
    if cp.network_id != *network_id || cp.size > r.size || cp.size < since {
        return Err(ReceiptError::Chain(
            "recovery checkpoint is for another network, or outside the span of its node set"
                .into(),
        ));
    }
    receipt::verify_quorum(
        CHECKPOINT_CONTENT_TYPE,
        cp_body,
        &cp_sign.signatures,
        set,
        "recovery checkpoint",
    )?;
    crate::state::verify(
        &cp.state_root,
        MEMBER_KEYS_STATE_KEY,
        Some(&r.members),
        &r.members_proof,
    )
    .map_err(|e| ReceiptError::Chain(format!("recovery member keys: {e}")))?;
    let members = MemberKeys::from_cbor(&r.members)?;
    let body = sign.payload.as_deref().expect("parsed above");
    let mut signed_by = BTreeSet::new();
    for sig in &sign.signatures {
        let id = checkpoint::signer(sig)?;
        let (_, key) = members.0.iter().find(|(m, _)| *m == id).ok_or_else(|| {
            ReceiptError::Chain(format!("recovery signed by non-member {}", hex::encode(id)))
        })?;
        let key = PublicKey::from_spki_der(key).map_err(|e| ReceiptError::Chain(e.to_string()))?;
        checkpoint::verify(RECOVERY_CONTENT_TYPE, body, sig, &key)?;
        signed_by.insert(id);
    }
    let needed = members.0.len() / 2 + 1;
    if signed_by.len() < needed {
        return Err(ReceiptError::NoQuorum {
            got: signed_by.len(),
            needed,
            what: "recovery (members)",
        });
    }
    // A node counts for its operator in every quorum after: no majority
    // may give a member a node it did not agree to run.
    if let Some(n) = r.nodes.0.iter().find(|n| !signed_by.contains(&n.member)) {
        return Err(ReceiptError::Chain(format!(
            "recovery names node {} for member {}, who did not sign it",
            hex::encode(n.id),
            hex::encode(n.member)
        )));
    }
    Ok(r)
}
