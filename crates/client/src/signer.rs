//! Building and signing transactions.

use crate::ClientError;
use comity_core::cbor::{self, Value};
use comity_core::crypto::{random_nonce, SigningKey};
use comity_core::tx::{Tx, TxPayload};
use comity_core::Hash;
use std::path::Path;

/// Milliseconds since the Unix epoch, as transactions carry in `created`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Signs transactions as one identity on one network.
#[derive(Clone, Debug)]
pub struct Signer {
    pub key: SigningKey,
    /// Identity id put in the COSE `kid`.
    pub id: Hash,
    /// Network the transactions are bound to (its genesis hash).
    pub network_id: Hash,
}

impl Signer {
    /// A signer whose identity id is the fingerprint of `key` (the id an
    /// identity gets when `key` is its first key).
    pub fn new(key: SigningKey, network_id: Hash) -> Self {
        let id = key.public().fingerprint();
        Signer {
            key,
            id,
            network_id,
        }
    }

    /// Loads a PKCS#8 PEM private key (`comity keys new` writes these).
    pub fn from_pem_file(path: impl AsRef<Path>, network_id: Hash) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("cannot read key {}: {e}", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| ClientError::Config(format!("key {}: {e}", path.display())))?;
        Ok(Signer::new(key, network_id))
    }

    /// The payload of a fresh transaction: random nonce, created = now.
    pub fn payload(&self, app: &str, op: &str, args: Value) -> TxPayload {
        TxPayload {
            net: self.network_id,
            app: app.to_string(),
            op: op.to_string(),
            args,
            nonce: random_nonce().to_vec(),
            created: now_ms(),
        }
    }

    /// Signs `payload` as this identity (the payload's `net` is kept as is).
    pub fn sign(&self, payload: &TxPayload) -> Vec<u8> {
        Tx::sign(&self.key, &self.id, payload)
    }

    /// A signed transaction for `app.op(args)` with a fresh nonce, created now.
    /// Its id is the SHA-256 of the returned bytes ([`tx_id`]).
    pub fn tx(&self, app: &str, op: &str, args: Value) -> Vec<u8> {
        self.sign(&self.payload(app, op, args))
    }

    /// `kv.put {key, value}`.
    pub fn kv_put(&self, key: &str, value: &[u8]) -> Vec<u8> {
        self.tx(
            "kv",
            "put",
            cbor::map([("key", cbor::text(key)), ("value", cbor::bytes(value))]),
        )
    }

    /// `kv.delete {key}`.
    pub fn kv_delete(&self, key: &str) -> Vec<u8> {
        self.tx("kv", "delete", cbor::map([("key", cbor::text(key))]))
    }

    /// `gov.propose {actions, description}`. `actions` is the CBOR array of
    /// `{action, args}` maps described in docs/governance.md.
    pub fn gov_propose(&self, actions: Value, description: &str) -> Vec<u8> {
        self.tx(
            "gov",
            "propose",
            cbor::map([
                ("actions", actions),
                ("description", cbor::text(description)),
            ]),
        )
    }

    /// `gov.vote {proposal, vote}`: a signed ballot.
    pub fn gov_vote(&self, proposal: &Hash, approve: bool) -> Vec<u8> {
        self.tx(
            "gov",
            "vote",
            cbor::map([
                ("proposal", cbor::text(hex::encode(proposal))),
                (
                    "vote",
                    cbor::text(if approve { "approve" } else { "reject" }),
                ),
            ]),
        )
    }

    /// `gov.withdraw {proposal}`: only the proposer, only while it is open.
    pub fn gov_withdraw(&self, proposal: &Hash) -> Vec<u8> {
        self.tx(
            "gov",
            "withdraw",
            cbor::map([("proposal", cbor::text(hex::encode(proposal)))]),
        )
    }

    /// `gov.dismiss {node}`: the member a pending node's join request
    /// names as operator turns the request down, without a vote.
    pub fn gov_dismiss(&self, node: &Hash) -> Vec<u8> {
        self.tx(
            "gov",
            "dismiss",
            cbor::map([("node", cbor::text(hex::encode(node)))]),
        )
    }

    /// `gov.ack {constitution}`: a new member accepts the constitution with this digest.
    pub fn gov_ack(&self, constitution_digest: &Hash) -> Vec<u8> {
        self.tx(
            "gov",
            "ack",
            cbor::map([("constitution", cbor::text(hex::encode(constitution_digest)))]),
        )
    }

    /// `node.join`, signed by the joining node's own key: asks to be trusted
    /// as a node operated by `member`, reachable by peers at the `address`
    /// entry of `data`.
    pub fn node_join(
        &self,
        member: &Hash,
        name: &str,
        data: &std::collections::BTreeMap<String, String>,
    ) -> Vec<u8> {
        let data = Value::Map(
            data.iter()
                .map(|(k, v)| (cbor::text(k), cbor::text(v)))
                .collect(),
        );
        self.tx(
            "node",
            "join",
            cbor::map([
                ("key", cbor::bytes(self.key.public().to_spki_der())),
                ("member", cbor::bytes(*member)),
                ("name", cbor::text(name)),
                ("data", data),
            ]),
        )
    }

    /// `notary.<op>` with `args` given as JSON (ids and digests as hex text,
    /// as docs/api.md lists them); the JSON is converted to CBOR.
    pub fn notary(&self, op: &str, args: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        let args = cbor::from_serde(args)
            .map_err(|e| ClientError::Config(format!("notary.{op} arguments: {e}")))?;
        Ok(self.tx("notary", op, args))
    }

    /// `notary.register`: `args` as in docs/api.md (digest, title, parties, retention, ...).
    pub fn notary_register(&self, args: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        self.notary("register", args)
    }

    /// `notary.amend`: like register, with `predecessor` naming an executed document.
    pub fn notary_amend(&self, args: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        self.notary("amend", args)
    }

    /// `notary.sign`: this identity, a party, signs `digest` of `document`.
    pub fn notary_sign(&self, document: &Hash, digest: &Hash) -> Vec<u8> {
        self.notary_doc_op("sign", document, [("digest", hex::encode(digest))])
    }

    /// A notary op on one document with a reason: `expire`, `revoke`,
    /// `hold.place`, `custody.accept`, `destroy.approve`, `destroy`,
    /// `metadata.erase`.
    pub fn notary_act(&self, op: &str, document: &Hash, reason: &str) -> Vec<u8> {
        self.notary_doc_op(op, document, [("reason", reason.to_string())])
    }

    /// `notary.hold.lift`: `hold` is the id of the transaction that placed it.
    pub fn notary_hold_lift(&self, document: &Hash, hold: &Hash, reason: &str) -> Vec<u8> {
        self.notary_doc_op(
            "hold.lift",
            document,
            [("hold", hex::encode(hold)), ("reason", reason.to_string())],
        )
    }

    /// `notary.custody.offer` to identity `to`.
    pub fn notary_custody_offer(&self, document: &Hash, to: &Hash, reason: &str) -> Vec<u8> {
        self.notary_doc_op(
            "custody.offer",
            document,
            [("to", hex::encode(to)), ("reason", reason.to_string())],
        )
    }

    /// `notary.collection.create`.
    pub fn notary_collection_create(&self, name: &str, matter: &str) -> Vec<u8> {
        self.tx(
            "notary",
            "collection.create",
            cbor::map([("name", cbor::text(name)), ("matter", cbor::text(matter))]),
        )
    }

    /// `notary.collection.set_order`: the documents, in order.
    pub fn notary_collection_order(&self, collection: &Hash, documents: &[Hash]) -> Vec<u8> {
        let docs = documents
            .iter()
            .map(|d| cbor::text(hex::encode(d)))
            .collect();
        self.tx(
            "notary",
            "collection.set_order",
            cbor::map([
                ("collection", cbor::text(hex::encode(collection))),
                ("documents", Value::Array(docs)),
            ]),
        )
    }

    fn notary_doc_op<const N: usize>(
        &self,
        op: &str,
        document: &Hash,
        extra: [(&str, String); N],
    ) -> Vec<u8> {
        let mut m = vec![(cbor::text("document"), cbor::text(hex::encode(document)))];
        m.extend(
            extra
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (cbor::text(k), cbor::text(v))),
        );
        self.tx("notary", op, Value::Map(m))
    }
}

/// The transaction id of signed bytes: their SHA-256.
pub fn tx_id(tx: &[u8]) -> Hash {
    comity_core::crypto::sha256(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::cbor::MapView;
    use comity_core::crypto::Alg;

    #[test]
    fn signed_tx_parses_and_verifies_with_core() {
        for alg in [Alg::EdDsa, Alg::Es256] {
            let key = SigningKey::generate(alg);
            let s = Signer::new(key.clone(), [9; 32]);
            assert_eq!(s.id, key.public().fingerprint());
            let before = now_ms();
            let bytes = s.kv_put("greeting", b"hello");
            let tx = Tx::parse(&bytes).unwrap();
            tx.verify(&key.public()).unwrap();
            assert_eq!(tx.id, tx_id(&bytes));
            assert_eq!(tx.kid, s.id);
            assert_eq!(tx.alg, alg);
            assert_eq!(tx.payload.net, [9; 32]);
            assert_eq!(
                (tx.payload.app.as_str(), tx.payload.op.as_str()),
                ("kv", "put")
            );
            assert_eq!(tx.payload.nonce.len(), 16);
            assert!(tx.payload.created >= before && tx.payload.created <= now_ms());
            let m = MapView::new(&tx.payload.args).unwrap();
            assert_eq!(m.text("key").unwrap(), "greeting");
            assert_eq!(m.bytes("value").unwrap(), b"hello");
        }
    }

    #[test]
    fn fresh_nonce_every_time() {
        let s = Signer::new(SigningKey::generate(Alg::EdDsa), [1; 32]);
        let a = Tx::parse(&s.kv_delete("k")).unwrap();
        let b = Tx::parse(&s.kv_delete("k")).unwrap();
        assert_ne!(a.payload.nonce, b.payload.nonce);
        assert_ne!(a.id, b.id);
        assert_eq!(a.payload.op, "delete");
    }

    #[test]
    fn ballot_shape() {
        let member = Signer::new(SigningKey::generate(Alg::EdDsa), [2; 32]);
        let tx = Tx::parse(&member.gov_vote(&[7; 32], false)).unwrap();
        tx.verify(&member.key.public()).unwrap();
        assert_eq!(
            (tx.payload.app.as_str(), tx.payload.op.as_str()),
            ("gov", "vote")
        );
        let m = MapView::new(&tx.payload.args).unwrap();
        assert_eq!(m.text("proposal").unwrap(), hex::encode([7; 32]));
        assert_eq!(m.text("vote").unwrap(), "reject");
    }

    #[test]
    fn notary_shapes() {
        let s = Signer::new(SigningKey::generate(Alg::EdDsa), [2; 32]);
        let tx = Tx::parse(&s.notary_sign(&[1; 32], &[2; 32])).unwrap();
        assert_eq!(
            (tx.payload.app.as_str(), tx.payload.op.as_str()),
            ("notary", "sign")
        );
        let m = MapView::new(&tx.payload.args).unwrap();
        assert_eq!(m.text("document").unwrap(), hex::encode([1; 32]));
        assert_eq!(m.text("digest").unwrap(), hex::encode([2; 32]));
        // An empty reason is left out rather than sent empty.
        let tx = Tx::parse(&s.notary_act("revoke", &[1; 32], "")).unwrap();
        assert_eq!(MapView::new(&tx.payload.args).unwrap().0.len(), 1);
        let args = serde_json::json!({"digest": hex::encode([3; 32]), "title": "t",
            "retention": {"period_ms": 5, "approvals": 1}});
        let tx = Tx::parse(&s.notary_register(&args).unwrap()).unwrap();
        let m = MapView::new(&tx.payload.args).unwrap();
        assert_eq!(m.text("title").unwrap(), "t");
        let r = MapView::new(m.req("retention").unwrap()).unwrap();
        assert_eq!(r.u64("period_ms").unwrap(), 5);
    }

    #[test]
    fn from_pem_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Alg::Es256);
        let path = dir.path().join("k.pem");
        std::fs::write(&path, key.to_pkcs8_pem()).unwrap();
        let s = Signer::from_pem_file(&path, [3; 32]).unwrap();
        assert_eq!(s.key.public(), key.public());
        assert_eq!(s.network_id, [3; 32]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            Signer::from_pem_file(&path, [3; 32]),
            Err(ClientError::Config(_))
        ));
    }
}
