//! The network identity: what an offline verifier trusts, and nothing more.

use crate::cbor::{self, CborError, MapView, Value};
use crate::crypto::PublicKey;
use crate::merkle::Hash;
use serde::{Deserialize, Serialize};

/// Hex encoding for hashes and keys in JSON documents.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}

/// Hex encoding for variable-length bytes in JSON documents.
pub mod hexvec {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A node that may sign checkpoints, and the member that operates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    #[serde(with = "hex32")]
    pub id: Hash,
    #[serde(with = "hex32")]
    pub member: Hash,
    /// SubjectPublicKeyInfo DER of the node's signing key.
    #[serde(with = "hexvec")]
    pub key: Vec<u8>,
}

impl NodeInfo {
    pub fn public_key(&self) -> Result<PublicKey, crate::crypto::CryptoError> {
        PublicKey::from_spki_der(&self.key)
    }

    pub fn to_value(&self) -> Value {
        cbor::map([
            ("id", cbor::bytes(self.id)),
            ("member", cbor::bytes(self.member)),
            ("key", cbor::bytes(self.key.clone())),
        ])
    }

    pub fn from_value(v: &Value) -> Result<Self, CborError> {
        let m = MapView::new(v)?;
        Ok(NodeInfo {
            id: m.hash("id")?,
            member: m.hash("member")?,
            key: m.bytes("key")?.to_vec(),
        })
    }
}

/// Signers of checkpoints at some tree size. Quorums count members, not nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSet(pub Vec<NodeInfo>);

impl NodeSet {
    pub fn get(&self, id: &Hash) -> Option<&NodeInfo> {
        self.0.iter().find(|n| &n.id == id)
    }

    /// Distinct members operating nodes of this set.
    pub fn members(&self) -> std::collections::BTreeSet<Hash> {
        self.0.iter().map(|n| n.member).collect()
    }

    /// Number of distinct members whose signatures make a quorum: a strict majority.
    pub fn quorum(&self) -> usize {
        self.members().len() / 2 + 1
    }

    pub fn to_value(&self) -> Value {
        Value::Array(self.0.iter().map(NodeInfo::to_value).collect())
    }

    pub fn from_value(v: &Value) -> Result<Self, CborError> {
        match v {
            Value::Array(a) => Ok(NodeSet(
                a.iter()
                    .map(NodeInfo::from_value)
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(CborError::Shape("node set must be an array".into())),
        }
    }
}

/// What an offline verifier needs: the genesis hash (= network id) and the genesis node set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdentity {
    pub name: String,
    /// SHA-256 of the genesis document; every transaction and checkpoint names it.
    #[serde(with = "hex32")]
    pub network_id: Hash,
    pub nodes: NodeSet,
}
