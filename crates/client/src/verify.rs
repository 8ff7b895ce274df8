//! Offline checks of what a node returns, using only `comity_core`.

use crate::types::{CheckpointInfo, ConsistencyProof, KvRead};
use crate::ClientError;
use comity_core::merkle;
use comity_core::network::NetworkIdentity;
use comity_core::receipt::{self, Receipt, Verified};
use comity_core::Hash;

/// What a checkpoint's signatures proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// Nodes whose signatures verified.
    pub signers: Vec<Hash>,
    /// Distinct members those nodes belong to.
    pub members: usize,
    /// Members needed for a quorum.
    pub quorum: usize,
}

/// Checks that `info.signed` is a COSE_Sign over exactly the checkpoint the
/// JSON fields describe, on this network, signed by a quorum of members of
/// the node set at its size: the genesis set of `identity`, changed by
/// `info.chain`, each change endorsed by a quorum of the set before it.
pub fn verify_checkpoint(
    info: &CheckpointInfo,
    identity: &NetworkIdentity,
) -> Result<VerifiedCheckpoint, ClientError> {
    let mut set = None;
    let (cp, signers) = receipt::verify_checkpoint_by(&info.signed, &identity.network_id, |size| {
        let nodes = receipt::node_set_at(identity, &info.chain, size)?;
        set = Some(nodes.clone());
        Ok(nodes)
    })
    .map_err(|e| ClientError::Verify(e.to_string()))?;
    if cp.to_cbor() != info.checkpoint().to_cbor() {
        return Err(ClientError::Verify(
            "the signed checkpoint differs from the checkpoint fields the node reported".into(),
        ));
    }
    let nodes = set.expect("set by the check");
    let members = signers
        .iter()
        .filter_map(|id| nodes.get(id).map(|n| n.member))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(VerifiedCheckpoint {
        signers,
        members,
        quorum: nodes.quorum(),
    })
}

/// Checks a proved read: the checkpoint's quorum of signatures (see
/// [`verify_checkpoint`]) and that the state proof shows `r.value` (or its
/// absence) under `state_key` in the checkpoint's state root. `state_key` is
/// the application's state-tree key for the read (for kv: `comity_apps::keys::kv(owner, key)`),
/// derived by the caller rather than taken from the node.
pub fn verify_kv_read(
    r: &KvRead,
    identity: &NetworkIdentity,
    state_key: &[u8],
) -> Result<VerifiedCheckpoint, ClientError> {
    if let Some(k) = &r.state_key {
        if k.as_slice() != state_key {
            return Err(ClientError::Verify(format!(
                "the node proved state key {} but the read is for {}",
                hex::encode(k),
                hex::encode(state_key)
            )));
        }
    }
    let v = verify_checkpoint(&r.checkpoint, identity)?;
    comity_core::state::verify(
        &r.checkpoint.state_root,
        state_key,
        r.value.as_deref(),
        &r.state_proof,
    )
    .map_err(|e| ClientError::Verify(e.to_string()))?;
    Ok(v)
}

/// Checks an RFC 9162 consistency proof between two checkpoints the caller
/// already verified (e.g. with [`verify_checkpoint`]): the ledger `old`
/// signed is a prefix of the one `new` signed. The sizes and roots come from
/// the checkpoints, never from the node's answer, which only supplies the
/// proof's hashes.
pub fn verify_consistency(
    p: &ConsistencyProof,
    old: &CheckpointInfo,
    new: &CheckpointInfo,
) -> Result<(), ClientError> {
    if p.from != old.size || p.to != new.size {
        return Err(ClientError::Verify(format!(
            "consistency proof {}..{} is not between the checkpoints' sizes {} and {}",
            p.from, p.to, old.size, new.size
        )));
    }
    merkle::verify_consistency(old.size, new.size, &old.tx_root, &new.tx_root, &p.proof).map_err(
        |e| ClientError::Verify(format!("consistency proof {}..{}: {e}", old.size, new.size)),
    )
}

/// Parses and verifies receipt bytes against the network identity.
pub fn verify_receipt(bytes: &[u8], identity: &NetworkIdentity) -> Result<Verified, ClientError> {
    let r = Receipt::from_cose(bytes).map_err(|e| ClientError::Verify(e.to_string()))?;
    r.verify(identity)
        .map_err(|e| ClientError::Verify(e.to_string()))
}

/// [`verify_receipt`] of the receipt of transaction `id`: a valid receipt
/// of another entry is no receipt of this one.
pub fn verify_receipt_for(
    bytes: &[u8],
    identity: &NetworkIdentity,
    id: &Hash,
) -> Result<Verified, ClientError> {
    let v = verify_receipt(bytes, identity)?;
    if v.leaf.kind != comity_core::entry::EntryKind::Tx
        || v.leaf.digest != *id
        || v.tx.as_ref().is_some_and(|t| t.id != *id)
    {
        return Err(ClientError::Verify(format!(
            "the receipt is of another entry (ledger index {}), not of transaction {}",
            v.leaf.index,
            hex::encode(id)
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::checkpoint::{self, body_protected, Checkpoint, CHECKPOINT_CONTENT_TYPE};
    use comity_core::crypto::{Alg, SigningKey};
    use comity_core::network::NodeInfo;
    use coset::{CoseSignBuilder, TaggedCborSerializable};

    fn setup(n: usize) -> (NetworkIdentity, Vec<(Hash, SigningKey)>) {
        let keys: Vec<_> = (0..n)
            .map(|_| {
                let k = SigningKey::generate(Alg::EdDsa);
                (k.public().fingerprint(), k)
            })
            .collect();
        let nodes = comity_core::network::NodeSet(
            keys.iter()
                .enumerate()
                .map(|(i, (id, k))| NodeInfo {
                    id: *id,
                    member: [i as u8; 32],
                    key: k.public().to_spki_der(),
                })
                .collect(),
        );
        (
            NetworkIdentity {
                name: "t".into(),
                network_id: [5; 32],
                nodes,
            },
            keys,
        )
    }

    fn info(ident: &NetworkIdentity, keys: &[(Hash, SigningKey)]) -> CheckpointInfo {
        let cp = Checkpoint {
            network_id: ident.network_id,
            seq: 1,
            size: 10,
            tx_root: [1; 32],
            state_root: [2; 32],
            time: 3,
            version: 1,
        };
        let mut info = CheckpointInfo {
            network_id: cp.network_id,
            seq: cp.seq,
            size: cp.size,
            tx_root: cp.tx_root,
            state_root: cp.state_root,
            time: cp.time,
            version: cp.version,
            signers: keys.iter().map(|(id, _)| *id).collect(),
            signed: Vec::new(),
            chain: Vec::new(),
        };
        sign_info(&mut info, keys);
        info
    }

    /// Signs `cp` (as its fields say) with `keys`, as a node answers it.
    fn sign_info(cp: &mut CheckpointInfo, keys: &[(Hash, SigningKey)]) {
        let body = cp.checkpoint().to_cbor();
        let mut b = CoseSignBuilder::new()
            .protected(body_protected(CHECKPOINT_CONTENT_TYPE).header)
            .payload(body.clone());
        for (id, k) in keys {
            let sig = checkpoint::sign(CHECKPOINT_CONTENT_TYPE, &body, k, id);
            b = b.add_signature(checkpoint::parse_signature(&sig).unwrap());
        }
        cp.signed = b.build().to_tagged_vec().unwrap();
    }

    /// The signed bytes are checked whole, headers too: a protected header
    /// other than the checkpoint's, or anything in the unprotected one, fails
    /// although the signatures (over a rebuilt header) would verify.
    #[test]
    fn a_checkpoint_with_altered_headers_fails() {
        let (ident, keys) = setup(3);
        let good = info(&ident, &keys[..2]);
        verify_checkpoint(&good, &ident).unwrap();
        let mut sign = coset::CoseSign::from_tagged_slice(&good.signed).unwrap();
        sign.protected.original_data = None;
        sign.protected.header.content_type = Some(coset::ContentType::Text("x".into()));
        let altered = CheckpointInfo {
            signed: sign.to_tagged_vec().unwrap(),
            ..good.clone()
        };
        assert!(verify_checkpoint(&altered, &ident).is_err());
        let mut sign = coset::CoseSign::from_tagged_slice(&good.signed).unwrap();
        sign.unprotected.key_id = b"x".to_vec();
        let altered = CheckpointInfo {
            signed: sign.to_tagged_vec().unwrap(),
            ..good
        };
        let e = verify_checkpoint(&altered, &ident).unwrap_err();
        assert!(e.to_string().contains("unprotected"), "{e}");
    }

    /// A checkpoint of a protocol version this verifier does not know is
    /// refused, however well signed: its rules are not this version's.
    #[test]
    fn a_checkpoint_of_an_unknown_protocol_version_fails() {
        let (ident, keys) = setup(3);
        let mut cp = info(&ident, &keys[..2]);
        cp.version = 2;
        sign_info(&mut cp, &keys[..2]);
        let e = verify_checkpoint(&cp, &ident).unwrap_err();
        assert!(e.to_string().contains("protocol version 2"), "{e}");
    }

    /// The proof is checked between the checkpoints' sizes and roots; the
    /// sizes and roots the node puts beside it count for nothing.
    #[test]
    fn consistency_is_checked_between_verified_checkpoints() {
        let (ident, _) = setup(0);
        let (a, b) = (merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b"));
        let at = |size: u64, tx_root: Hash| CheckpointInfo {
            size,
            tx_root,
            ..info(&ident, &[])
        };
        let (old, new) = (at(1, a), at(2, merkle::node_hash(&a, &b)));
        let mut p = ConsistencyProof {
            from: 1,
            to: 2,
            from_root: [9; 32],
            to_root: [9; 32],
            proof: vec![b],
        };
        verify_consistency(&p, &old, &new).unwrap();
        // Roots the checkpoints did not sign fail, whatever the node claims.
        let forged = at(2, merkle::node_hash(&a, &a));
        p.to_root = forged.tx_root;
        assert!(verify_consistency(&p, &old, &forged).is_err());
        // So does a proof between other sizes than the checkpoints'.
        p.to = 3;
        assert!(verify_consistency(&p, &old, &new).is_err());
    }

    #[test]
    fn kv_read_state_proofs() {
        use comity_core::hash::Sha256;
        use jmt::mock::MockTreeStore;
        use jmt::{JellyfishMerkleTree, KeyHash};
        let (ident, keys) = setup(3);
        let store = MockTreeStore::default();
        let tree = JellyfishMerkleTree::<_, Sha256>::new(&store);
        let kh = |k: &[u8]| KeyHash::with::<Sha256>(k);
        let (root, batch) = tree
            .put_value_set([(kh(b"kv/a"), Some(b"1".to_vec()))], 0)
            .unwrap();
        store.write_tree_update_batch(batch).unwrap();
        let proof_of = |k: &[u8]| {
            let (_, p) = tree.get_with_proof(kh(k), 0).unwrap();
            borsh::to_vec(&p).unwrap()
        };
        let mut cp = info(&ident, &keys[..2]);
        // Re-sign a checkpoint that commits to this state root.
        cp.state_root = root.0;
        sign_info(&mut cp, &keys[..2]);
        let read = |value: Option<&[u8]>, key: &[u8]| KvRead {
            owner: [7; 32],
            key: "a".into(),
            value: value.map(<[u8]>::to_vec),
            checkpoint: cp.clone(),
            state_key: Some(key.to_vec()),
            state_proof: proof_of(key),
            latest_value: None,
        };
        verify_kv_read(&read(Some(b"1"), b"kv/a"), &ident, b"kv/a").unwrap();
        // Absent key: non-inclusion proof.
        verify_kv_read(&read(None, b"kv/b"), &ident, b"kv/b").unwrap();
        // A lie about the value, or about absence, fails.
        assert!(verify_kv_read(&read(Some(b"2"), b"kv/a"), &ident, b"kv/a").is_err());
        assert!(verify_kv_read(&read(None, b"kv/a"), &ident, b"kv/a").is_err());
        // A proof about another key than the one asked for fails.
        let e = verify_kv_read(&read(Some(b"1"), b"kv/a"), &ident, b"kv/c").unwrap_err();
        assert!(e.to_string().contains("state key"), "{e}");
        let mut r = read(Some(b"1"), b"kv/a");
        r.state_key = None;
        r.state_proof = vec![1, 2, 3];
        assert!(verify_kv_read(&r, &ident, b"kv/a").is_err());
    }

    #[test]
    fn checkpoint_quorum() {
        let (ident, keys) = setup(3);
        let ok = info(&ident, &keys[..2]);
        let v = verify_checkpoint(&ok, &ident).unwrap();
        assert_eq!((v.members, v.quorum), (2, 2));
        let few = info(&ident, &keys[..1]);
        assert!(verify_checkpoint(&few, &ident).is_err());
        let mut lied = ok.clone();
        lied.size = 11;
        let e = verify_checkpoint(&lied, &ident).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
    }
}
