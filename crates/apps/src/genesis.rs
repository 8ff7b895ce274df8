//! The genesis document: the network's name, first identities, nodes and
//! configuration. Its SHA-256 is the network id.

use crate::gov::action::ConfigChange;
use crate::gov::constitution::Constitution;
use crate::registry::check_data;
use comity_core::cbor::{self, CborError, MapView, Value};
use comity_core::crypto::PublicKey;
use comity_core::network::{NodeInfo, NodeSet};
use std::collections::{BTreeMap, BTreeSet};

/// Tunables that every node must agree on, so they live in state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A checkpoint marker after this many client transactions...
    pub checkpoint_txs: u64,
    /// ...or after this many milliseconds with uncovered transactions. A
    /// receipt waits for the next marker, then for the nodes' signatures.
    pub checkpoint_ms: u64,
    /// Accepted distance between a transaction's creation time and ledger time.
    pub tx_window_ms: u64,
    /// Largest accepted transaction.
    pub max_tx_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            checkpoint_txs: 10_000,
            checkpoint_ms: 30,
            tx_window_ms: 10 * 60 * 1000,
            max_tx_bytes: 128 * 1024,
        }
    }
}

impl Config {
    pub fn to_value(&self) -> Value {
        cbor::map([
            ("checkpoint_txs", cbor::uint(self.checkpoint_txs)),
            ("checkpoint_ms", cbor::uint(self.checkpoint_ms)),
            ("tx_window_ms", cbor::uint(self.tx_window_ms)),
            ("max_tx_bytes", cbor::uint(self.max_tx_bytes)),
        ])
    }

    pub fn from_value(v: &Value) -> Result<Self, CborError> {
        let m = MapView::new(v)?;
        let c = Config {
            checkpoint_txs: m.u64("checkpoint_txs")?,
            checkpoint_ms: m.u64("checkpoint_ms")?,
            tx_window_ms: m.u64("tx_window_ms")?,
            max_tx_bytes: m.u64("max_tx_bytes")?,
        };
        c.check().map_err(CborError::Shape)?;
        Ok(c)
    }

    /// Bounds that keep a network usable: checkpoints happen, transactions fit.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.checkpoint_txs) {
            return Err("checkpoint_txs must be 1 to 1,000,000".into());
        }
        if !(1..=60_000).contains(&self.checkpoint_ms) {
            return Err("checkpoint_ms must be 1 to 60,000".into());
        }
        if !(1_000..=7 * 24 * 3600 * 1000).contains(&self.tx_window_ms) {
            return Err("tx_window_ms must be 1 second to 7 days".into());
        }
        if !(MIN_TX_BYTES..=MAX_TX_BYTES).contains(&self.max_tx_bytes) {
            return Err("max_tx_bytes must be 64 KiB to 4 MiB".into());
        }
        Ok(())
    }

    /// This configuration with `c`'s fields changed, if the result is valid.
    pub fn apply(&self, c: &ConfigChange) -> Result<Config, String> {
        let next = Config {
            checkpoint_txs: c.checkpoint_txs.unwrap_or(self.checkpoint_txs),
            checkpoint_ms: c.checkpoint_ms.unwrap_or(self.checkpoint_ms),
            tx_window_ms: c.tx_window_ms.unwrap_or(self.tx_window_ms),
            max_tx_bytes: c.max_tx_bytes.unwrap_or(self.max_tx_bytes),
        };
        next.check()?;
        Ok(next)
    }
}

/// An identity named in genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySpec {
    /// SubjectPublicKeyInfo DER.
    pub key: Vec<u8>,
    pub name: String,
    /// Organization, contact, ...
    pub data: BTreeMap<String, String>,
}

impl IdentitySpec {
    pub fn new(key: Vec<u8>, name: &str) -> Self {
        IdentitySpec {
            key,
            name: name.into(),
            data: BTreeMap::new(),
        }
    }

    fn to_value(&self) -> Value {
        cbor::map([
            ("key", cbor::bytes(self.key.clone())),
            ("name", cbor::text(&self.name)),
            ("data", cbor::from_serde(&self.data).expect("text map")),
        ])
    }

    fn from_value(v: &Value) -> Result<Self, CborError> {
        let m = MapView::new(v)?;
        let key = m.bytes("key")?.to_vec();
        PublicKey::from_spki_der(&key).map_err(|e| CborError::Shape(e.to_string()))?;
        let spec = IdentitySpec {
            key,
            name: m.text("name")?.to_string(),
            data: cbor::to_serde(m.req("data")?)?,
        };
        check_data(&spec.name, &spec.data).map_err(CborError::Shape)?;
        Ok(spec)
    }
}

/// A genesis node's name and data (its `address` is where peers reach it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    pub name: String,
    pub data: BTreeMap<String, String>,
}

/// The data key holding a node's peer address (`host:port`).
pub const ADDRESS: &str = "address";

/// Smallest `max_tx_bytes` a network may set: the nodes' own transactions
/// must always fit (an endorsement carries the whole node set, a join
/// request up to 16 KiB), or receipts would wait for good.
pub const MIN_TX_BYTES: u64 = 64 << 10;

/// Largest `max_tx_bytes` a network may set: what the HTTP API reads of a
/// body, and well inside a ledger record (16 MiB) with its outcome and proof.
pub const MAX_TX_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    pub name: String,
    /// Creation time (ms); the first ledger time.
    pub time: u64,
    pub members: Vec<IdentitySpec>,
    pub users: Vec<IdentitySpec>,
    pub nodes: NodeSet,
    /// Name and data of each node, in the order of `nodes`.
    pub node_meta: Vec<NodeMeta>,
    pub config: Config,
    pub constitution: Constitution,
    /// Whether users may transact from the start.
    pub open: bool,
}

impl Genesis {
    /// A genesis with default configuration and constitution, open to users.
    pub fn new(
        name: &str,
        time: u64,
        members: Vec<IdentitySpec>,
        users: Vec<IdentitySpec>,
        nodes: NodeSet,
    ) -> Genesis {
        let node_meta = (0..nodes.0.len())
            .map(|i| NodeMeta {
                name: format!("node{i}"),
                data: BTreeMap::new(),
            })
            .collect();
        Genesis {
            name: name.into(),
            time,
            members,
            users,
            nodes,
            node_meta,
            config: Config::default(),
            constitution: Constitution::default(),
            open: true,
        }
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        let list =
            |l: &[IdentitySpec]| Value::Array(l.iter().map(IdentitySpec::to_value).collect());
        cbor::to_vec(cbor::map([
            ("name", cbor::text(&self.name)),
            ("time", cbor::uint(self.time)),
            ("members", list(&self.members)),
            ("users", list(&self.users)),
            ("nodes", self.nodes_value()),
            ("config", self.config.to_value()),
            (
                "constitution",
                cbor::from_serde(&self.constitution).expect("constitution serializes"),
            ),
            ("open", Value::Bool(self.open)),
        ]))
        .expect("genesis built from valid parts")
    }

    /// Each node's signing info with its name and data.
    fn nodes_value(&self) -> Value {
        Value::Array(
            self.nodes
                .0
                .iter()
                .zip(&self.node_meta)
                .map(|(n, meta)| {
                    let Value::Map(mut m) = n.to_value() else {
                        unreachable!("node info is a map")
                    };
                    m.push((cbor::text("name"), cbor::text(&meta.name)));
                    m.push((
                        cbor::text("data"),
                        cbor::from_serde(&meta.data).expect("text map"),
                    ));
                    Value::Map(m)
                })
                .collect(),
        )
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CborError> {
        let v = cbor::from_canonical_slice(bytes)?;
        let m = MapView::new(&v)?;
        let list = |k: &str| -> Result<Vec<IdentitySpec>, CborError> {
            m.array(k)?.iter().map(IdentitySpec::from_value).collect()
        };
        let nodes = NodeSet::from_value(m.req("nodes")?)?;
        let node_meta = m
            .array("nodes")?
            .iter()
            .map(|v| {
                let n = MapView::new(v)?;
                let meta = NodeMeta {
                    name: n.text("name")?.to_string(),
                    data: cbor::to_serde(n.req("data")?)?,
                };
                check_data(&meta.name, &meta.data).map_err(CborError::Shape)?;
                Ok(meta)
            })
            .collect::<Result<Vec<_>, CborError>>()?;
        for n in &nodes.0 {
            let key = n
                .public_key()
                .map_err(|e| CborError::Shape(e.to_string()))?;
            if key.fingerprint() != n.id {
                return Err(CborError::Shape(
                    "node id must be the SHA-256 of its key".into(),
                ));
            }
        }
        let g = Genesis {
            name: m.text("name")?.to_string(),
            time: m.u64("time")?,
            members: list("members")?,
            users: list("users")?,
            nodes,
            node_meta,
            config: Config::from_value(m.req("config")?)?,
            constitution: cbor::to_serde(m.req("constitution")?)?,
            open: match m.req("open")? {
                Value::Bool(b) => *b,
                _ => return Err(CborError::Shape("`open` must be a boolean".into())),
            },
        };
        if g.nodes
            .0
            .iter()
            .map(|n| n.id)
            .collect::<BTreeSet<_>>()
            .len()
            != g.nodes.0.len()
        {
            return Err(CborError::Shape(
                "each genesis node needs its own key".into(),
            ));
        }
        if g.members.is_empty() || g.nodes.0.is_empty() {
            return Err(CborError::Shape(
                "genesis needs at least one member and one node".into(),
            ));
        }
        let member_ids: BTreeSet<_> = g.members.iter().map(|s| fingerprint(&s.key)).collect();
        let user_ids: BTreeSet<_> = g.users.iter().map(|s| fingerprint(&s.key)).collect();
        if member_ids.len() != g.members.len()
            || user_ids.len() != g.users.len()
            || !member_ids.is_disjoint(&user_ids)
            // A node with a member's or user's key would overwrite that identity.
            || g.nodes.0.iter().any(|n| member_ids.contains(&n.id) || user_ids.contains(&n.id))
        {
            return Err(CborError::Shape(
                "each genesis identity needs its own key".into(),
            ));
        }
        g.constitution
            .validate(&member_ids)
            .map_err(|e| CborError::Shape(format!("constitution: {e}")))?;
        if g.nodes.0.iter().any(|n| !member_ids.contains(&n.member)) {
            return Err(CborError::Shape(
                "every node must be operated by a genesis member".into(),
            ));
        }
        Ok(g)
    }

    pub fn network_id(&self) -> comity_core::Hash {
        comity_core::crypto::sha256(&self.to_cbor())
    }
}

fn fingerprint(spki: &[u8]) -> comity_core::Hash {
    comity_core::crypto::sha256(spki)
}

/// Convenience for building node entries.
pub fn node_info(key: &PublicKey, member: comity_core::Hash) -> NodeInfo {
    NodeInfo {
        id: key.fingerprint(),
        member,
        key: key.to_spki_der(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::crypto::{Alg, SigningKey};

    /// A node whose key is a member's or a user's would overwrite that
    /// identity at genesis (a member gone, perhaps the only one).
    #[test]
    fn a_node_may_not_share_a_members_or_users_key() {
        let (member, user, node) = (
            SigningKey::generate(Alg::EdDsa),
            SigningKey::generate(Alg::EdDsa),
            SigningKey::generate(Alg::EdDsa),
        );
        let m = member.public().fingerprint();
        let genesis = |node: &SigningKey| {
            Genesis::new(
                "g",
                1,
                vec![IdentitySpec::new(member.public().to_spki_der(), "m")],
                vec![IdentitySpec::new(user.public().to_spki_der(), "u")],
                NodeSet(vec![node_info(&node.public(), m)]),
            )
            .to_cbor()
        };
        Genesis::from_cbor(&genesis(&node)).expect("distinct keys");
        for shared in [&member, &user] {
            let e = Genesis::from_cbor(&genesis(shared)).unwrap_err();
            assert!(e.to_string().contains("its own key"), "{e}");
        }
    }
}
