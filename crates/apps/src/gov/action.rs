//! Governance actions: what an accepted proposal changes.
//!
//! Every action is checked for form when it is proposed, and applied to an
//! [`Overlay`] when the proposal is accepted; the overlay is written only if
//! every action succeeds and the result leaves every rule satisfiable, so a
//! proposal's actions apply all together or not at all.

use super::constitution::Constitution;
use super::overlay::Overlay;
use super::{state, Id};
use crate::genesis::Config;
use crate::keys;
use crate::registry::{self, check_data, Identity, Role, Status};
use comity_core::cbor;
use comity_core::crypto::{sha256, PublicKey};
use comity_core::network::{hexvec, NodeInfo};
use comity_core::Hash;
use comity_store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ACTION_NAMES: &[&str] = &[
    "member.add",
    "member.remove",
    "member.set_data",
    "user.add",
    "user.remove",
    "user.set_data",
    "node.trust",
    "node.retire",
    "identity.rotate_key",
    "constitution.set",
    "config.set",
    "protocol.switch",
    "network.open",
    "network.close",
];

/// A new member or user: its first key (whose SHA-256 becomes its id), its
/// display name and descriptive data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIdentity {
    /// SubjectPublicKeyInfo DER, hex.
    #[serde(with = "hexvec")]
    pub key: Vec<u8>,
    pub name: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub id: Id,
}

/// Replaces a member's or user's name and data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetData {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Trusts a node (pending, or not yet known) operated by `member`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustNode {
    #[serde(with = "hexvec")]
    pub key: Vec<u8>,
    pub member: Id,
    #[serde(default)]
    pub name: Option<String>,
    /// The node's data; `address` (host:port) is where its peers reach it.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    pub id: Id,
    #[serde(with = "hexvec")]
    pub key: Vec<u8>,
}

/// Fields left out keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_txs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tx_bytes: Option<u64>,
}

/// From ledger index `at` on, entries follow protocol `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSwitch {
    pub version: u64,
    pub at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "args")]
pub enum Action {
    #[serde(rename = "member.add")]
    MemberAdd(NewIdentity),
    #[serde(rename = "member.remove")]
    MemberRemove(Target),
    #[serde(rename = "member.set_data")]
    MemberSetData(SetData),
    #[serde(rename = "user.add")]
    UserAdd(NewIdentity),
    #[serde(rename = "user.remove")]
    UserRemove(Target),
    #[serde(rename = "user.set_data")]
    UserSetData(SetData),
    #[serde(rename = "node.trust")]
    NodeTrust(TrustNode),
    #[serde(rename = "node.retire")]
    NodeRetire(Target),
    #[serde(rename = "identity.rotate_key")]
    RotateKey(RotateKey),
    #[serde(rename = "constitution.set")]
    ConstitutionSet(Box<Constitution>),
    #[serde(rename = "config.set")]
    ConfigSet(ConfigChange),
    #[serde(rename = "protocol.switch")]
    ProtocolSwitch(ProtocolSwitch),
    #[serde(rename = "network.open")]
    NetworkOpen,
    #[serde(rename = "network.close")]
    NetworkClose,
}

/// A key must parse, which includes being in its one encoding (for P-256:
/// the uncompressed point): another encoding of a used key would hash to a
/// new id and slip past the rule that a key belongs to one identity for good.
pub(crate) fn check_key(key: &[u8]) -> Result<(), String> {
    PublicKey::from_spki_der(key)
        .map(|_| ())
        .map_err(|e| format!("key: {e}"))
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::MemberAdd(_) => "member.add",
            Action::MemberRemove(_) => "member.remove",
            Action::MemberSetData(_) => "member.set_data",
            Action::UserAdd(_) => "user.add",
            Action::UserRemove(_) => "user.remove",
            Action::UserSetData(_) => "user.set_data",
            Action::NodeTrust(_) => "node.trust",
            Action::NodeRetire(_) => "node.retire",
            Action::RotateKey(_) => "identity.rotate_key",
            Action::ConstitutionSet(_) => "constitution.set",
            Action::ConfigSet(_) => "config.set",
            Action::ProtocolSwitch(_) => "protocol.switch",
            Action::NetworkOpen => "network.open",
            Action::NetworkClose => "network.close",
        }
    }

    /// Checks what can be checked without state, when the proposal is submitted.
    pub fn check_form(&self) -> Result<(), String> {
        match self {
            Action::MemberAdd(n) | Action::UserAdd(n) => {
                check_key(&n.key)?;
                check_data(&n.name, &n.data)
            }
            Action::MemberSetData(s) | Action::UserSetData(s) => check_data(&s.name, &s.data),
            Action::NodeTrust(n) => {
                check_key(&n.key)?;
                check_data(n.name.as_deref().unwrap_or("node"), &n.data)
            }
            Action::RotateKey(r) => check_key(&r.key),
            Action::ConstitutionSet(c) => c.check_shape(),
            Action::ConfigSet(c) => {
                if *c == ConfigChange::default() {
                    return Err("config.set changes nothing".into());
                }
                Config::default().apply(c).map(|_| ())
            }
            Action::ProtocolSwitch(p) if p.version == 0 => Err("version must be positive".into()),
            _ => Ok(()),
        }
    }

    /// Applies the action to `o`; `index` is the ledger index of the deciding
    /// transaction. Returns the subjects whose history it extends.
    pub fn apply(
        &self,
        o: &mut Overlay<'_, '_>,
        index: u64,
    ) -> Result<Result<Vec<Hash>, String>, StoreError> {
        Ok(match self {
            Action::MemberAdd(n) => add_identity(o, Role::Member, n, index)?,
            Action::UserAdd(n) => add_identity(o, Role::User, n, index)?,
            Action::MemberRemove(t) => set_status(o, Role::Member, t.id.0, Status::Removed)?,
            Action::UserRemove(t) => set_status(o, Role::User, t.id.0, Status::Removed)?,
            Action::NodeRetire(t) => set_status(o, Role::Node, t.id.0, Status::Retired)?,
            Action::MemberSetData(s) => set_data(o, Role::Member, s)?,
            Action::UserSetData(s) => set_data(o, Role::User, s)?,
            Action::NodeTrust(n) => trust_node(o, n, index)?,
            Action::RotateKey(r) => rotate_key(o, r, index)?,
            Action::ConstitutionSet(c) => {
                let version = state::constitution_version(o)? + 1;
                o.put(&keys::constitution(version), &state::encode(&**c));
                o.put(keys::GOV_CONSTITUTION_VERSION, &version.to_be_bytes());
                Ok(vec![state::subject("constitution")])
            }
            Action::ConfigSet(c) => match state::config(o)?.apply(c) {
                Ok(cfg) => {
                    o.put(keys::CONFIG, &cbor::to_vec(cfg.to_value()).expect("valid"));
                    Ok(vec![state::subject("config")])
                }
                Err(e) => Err(e),
            },
            Action::ProtocolSwitch(p) => {
                let mut sched = state::protocol_schedule(o)?;
                // A switch not yet reached is replaced, so members can
                // postpone one, or cancel it by naming the version in force.
                sched.retain(|&(at, _)| at <= index);
                let (_, in_force) = *sched.last().expect("schedule starts at genesis");
                if p.version < in_force {
                    Err(format!("protocol is already at version {in_force}"))
                } else if p.version > in_force + 1 {
                    // A version no build knows would stop every node at `at`.
                    Err(format!(
                        "a switch names the next version, {}, not {}",
                        in_force + 1,
                        p.version
                    ))
                } else if p.at <= index {
                    Err(format!("ledger position {} has already passed", p.at))
                } else {
                    if p.version > in_force {
                        sched.push((p.at, p.version));
                    }
                    o.put(keys::GOV_PROTOCOL, &state::encode(&sched));
                    Ok(vec![state::subject("protocol")])
                }
            }
            Action::NetworkOpen | Action::NetworkClose => {
                o.put(
                    keys::GOV_OPEN,
                    &[u8::from(matches!(self, Action::NetworkOpen))],
                );
                Ok(vec![state::subject("network")])
            }
        })
    }
}

fn add_identity(
    o: &mut Overlay<'_, '_>,
    role: Role,
    n: &NewIdentity,
    index: u64,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let id = sha256(&n.key);
    if let Some(owner) = state::key_owner(o, &id)? {
        return Ok(Err(format!(
            "this key already belongs to identity {}",
            hex::encode(owner)
        )));
    }
    let status = match role {
        Role::Member => Status::Accepted,
        _ => Status::Active,
    };
    let mut ident = Identity::new(role, status, &n.name, n.key.clone(), index);
    ident.data = n.data.clone();
    state::put_identity(o, &ident, true)?;
    Ok(Ok(vec![id]))
}

fn load(o: &Overlay<'_, '_>, role: Role, id: Hash) -> Result<Result<Identity, String>, StoreError> {
    Ok(match registry::get(o, &id)? {
        Some(i) if i.role == role => Ok(i),
        Some(i) => Err(format!(
            "{} is a {}, not a {}",
            hex::encode(id),
            i.role.as_str(),
            role.as_str()
        )),
        None => Err(format!("no {} {}", role.as_str(), hex::encode(id))),
    })
}

fn set_status(
    o: &mut Overlay<'_, '_>,
    role: Role,
    id: Hash,
    to: Status,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let mut ident = match load(o, role, id)? {
        Ok(i) => i,
        Err(e) => return Ok(Err(e)),
    };
    if ident.status == to {
        return Ok(Err(format!(
            "{} {} is already {}",
            role.as_str(),
            hex::encode(id),
            to.as_str()
        )));
    }
    if ident.status == Status::Pending {
        crate::join::leave_pending(o)?; // a join request dismissed
    }
    ident.status = to;
    state::put_identity(o, &ident, false)?;
    if role == Role::Node {
        let mut nodes = state::node_set(o)?;
        nodes.0.retain(|n| n.id != id);
        o.put(keys::NODES, &cbor::to_vec(nodes.to_value()).expect("valid"));
    }
    Ok(Ok(vec![id]))
}

fn set_data(
    o: &mut Overlay<'_, '_>,
    role: Role,
    s: &SetData,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let mut ident = match load(o, role, s.id.0)? {
        Ok(i) => i,
        Err(e) => return Ok(Err(e)),
    };
    if ident.status == Status::Removed {
        return Ok(Err(format!("{} was removed", hex::encode(s.id.0))));
    }
    ident.name = s.name.clone();
    ident.data = s.data.clone();
    state::put_identity(o, &ident, false)?;
    Ok(Ok(vec![s.id.0]))
}

fn trust_node(
    o: &mut Overlay<'_, '_>,
    n: &TrustNode,
    index: u64,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let id = sha256(&n.key);
    if let Some(owner) = state::key_owner(o, &id)?.filter(|owner| *owner != id) {
        return Ok(Err(format!(
            "this key already belongs to identity {}",
            hex::encode(owner)
        )));
    }
    match load(o, Role::Member, n.member.0)? {
        Ok(m) if m.status == Status::Active => {}
        Ok(_) => return Ok(Err("a node's operator must be an active member".into())),
        Err(e) => return Ok(Err(e)),
    }
    let mut ident = match registry::get(o, &id)? {
        Some(i) if i.role == Role::Node && i.status == Status::Pending => {
            crate::join::leave_pending(o)?;
            i
        }
        Some(i) if i.role == Role::Node => {
            return Ok(Err(format!(
                "node {} is {}, not pending",
                hex::encode(id),
                i.status.as_str()
            )))
        }
        Some(_) => return Ok(Err("this key belongs to another identity".into())),
        None => {
            let name = format!("node {}", &hex::encode(id)[..12]);
            Identity::new(Role::Node, Status::Pending, &name, n.key.clone(), index)
        }
    };
    if ident.operator.is_some_and(|op| op != n.member.0) {
        return Ok(Err("the node asked to join for another member".into()));
    }
    ident.status = Status::Trusted;
    ident.operator = Some(n.member.0);
    if let Some(name) = &n.name {
        ident.name = name.clone();
    }
    ident.data.extend(n.data.clone());
    if let Err(why) = check_data("node", &ident.data) {
        return Ok(Err(format!(
            "the join request's and the action's data together: {why}"
        )));
    }
    let mut nodes = state::node_set(o)?;
    // Raft knows a node by the first 8 bytes of its id: two alike would be
    // taken for one another (a key ground to match costs about 2^64 tries).
    if let Some(other) = nodes.0.iter().find(|m| m.id[..8] == id[..8]) {
        return Ok(Err(format!(
            "its Raft id (the id's first 8 bytes) is that of trusted node {}",
            hex::encode(other.id)
        )));
    }
    state::put_identity(o, &ident, true)?;
    nodes.0.push(NodeInfo {
        id,
        member: n.member.0,
        key: n.key.clone(),
    });
    o.put(keys::NODES, &cbor::to_vec(nodes.to_value()).expect("valid"));
    Ok(Ok(vec![id]))
}

fn rotate_key(
    o: &mut Overlay<'_, '_>,
    r: &RotateKey,
    index: u64,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let Some(mut ident) = registry::get(o, &r.id.0)? else {
        return Ok(Err(format!("no identity {}", hex::encode(r.id.0))));
    };
    if ident.role == Role::Node {
        // Receipts name a node by the hash of its key; a node with a new key joins anew.
        return Ok(Err(
            "a node changes its key by joining as a new node and retiring the old one".into(),
        ));
    }
    if !ident.may_sign() {
        return Ok(Err(format!(
            "identity {} is {}",
            hex::encode(r.id.0),
            ident.status.as_str()
        )));
    }
    let fp = sha256(&r.key);
    if let Some(owner) = state::key_owner(o, &fp)? {
        return Ok(Err(format!(
            "this key already belongs to identity {}",
            hex::encode(owner)
        )));
    }
    // Valid from the next entry: this one is still checked with the old key.
    ident.keys.push((index + 1, r.key.clone()));
    state::put_identity(o, &ident, false)?;
    o.put(&keys::key_owner(&fp), &r.id.0);
    Ok(Ok(vec![r.id.0]))
}
