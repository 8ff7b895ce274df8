//! Typed access to governance state.

use super::constitution::Constitution;
use super::overlay::Overlay;
use crate::genesis::Config;
use crate::keys;
use crate::registry::{self, Identity, Role, StateRead, Status};
use comity_core::cbor;
use comity_core::crypto::sha256;
use comity_core::network::NodeSet;
use comity_core::Hash;
use comity_store::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;

/// The history subject of a network-wide setting (constitution, config, ...).
pub fn subject(name: &str) -> Hash {
    sha256(format!("comity.gov.{name}").as_bytes())
}

pub fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    cbor::to_canonical(t).expect("governance records serialize")
}

pub fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    cbor::from_slice_to(b).map_err(|e| StoreError::StateTree(format!("{what}: {e}")))
}

fn get<T: DeserializeOwned>(
    s: &impl StateRead,
    what: &str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    s.state(key)?.map(|b| decode(what, &b)).transpose()
}

pub fn constitution_version(s: &impl StateRead) -> Result<u64, StoreError> {
    Ok(s.state(keys::GOV_CONSTITUTION_VERSION)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// The constitution of a given version (versions start at 1, with genesis).
pub fn constitution(s: &impl StateRead, version: u64) -> Result<Constitution, StoreError> {
    get(s, "constitution", &keys::constitution(version))?
        .ok_or_else(|| StoreError::StateTree(format!("no constitution version {version}")))
}

pub fn current_constitution(s: &impl StateRead) -> Result<(u64, Constitution), StoreError> {
    let v = constitution_version(s)?;
    Ok((v, constitution(s, v)?))
}

/// The digest a member acknowledges: SHA-256 of the constitution's canonical CBOR.
pub fn constitution_digest(c: &Constitution) -> Hash {
    sha256(&encode(c))
}

pub fn config(s: &impl StateRead) -> Result<Config, StoreError> {
    let raw = s
        .state(keys::CONFIG)?
        .ok_or_else(|| StoreError::StateTree("no config".into()))?;
    let bad = |e: cbor::CborError| StoreError::StateTree(format!("config: {e}"));
    Config::from_value(&cbor::from_slice(&raw).map_err(bad)?).map_err(bad)
}

/// (from ledger index, protocol version), in order; the first is genesis.
pub fn protocol_schedule(s: &impl StateRead) -> Result<Vec<(u64, u64)>, StoreError> {
    Ok(get(s, "protocol schedule", keys::GOV_PROTOCOL)?.unwrap_or_else(|| vec![(0, 1)]))
}

/// Whether users may submit application transactions.
pub fn is_open(s: &impl StateRead) -> Result<bool, StoreError> {
    Ok(s.state(keys::GOV_OPEN)?.as_deref() != Some(&[0]))
}

pub fn node_set(s: &impl StateRead) -> Result<NodeSet, StoreError> {
    let raw = s
        .state(keys::NODES)?
        .ok_or_else(|| StoreError::StateTree("no node set".into()))?;
    let v = cbor::from_slice(&raw).map_err(|e| StoreError::StateTree(e.to_string()))?;
    NodeSet::from_value(&v).map_err(|e| StoreError::StateTree(e.to_string()))
}

pub fn key_owner(s: &impl StateRead, fingerprint: &Hash) -> Result<Option<Hash>, StoreError> {
    Ok(s.state(&keys::key_owner(fingerprint))?
        .and_then(|b| b.try_into().ok()))
}

/// Every member ever added, in order of addition.
pub fn member_ids(s: &impl StateRead) -> Result<Vec<Hash>, StoreError> {
    let ids: Vec<String> = get(s, "member list", keys::GOV_MEMBERS)?.unwrap_or_default();
    ids.iter()
        .map(|h| {
            let mut id = [0u8; 32];
            hex::decode_to_slice(h, &mut id)
                .map_err(|_| StoreError::StateTree("member list: bad id".into()))?;
            Ok(id)
        })
        .collect()
}

pub fn active_members(s: &impl StateRead) -> Result<BTreeSet<Hash>, StoreError> {
    let mut out = BTreeSet::new();
    for id in member_ids(s)? {
        if registry::get(s, &id)?.is_some_and(|m| m.status == Status::Active) {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Writes an identity; a new one also gets its key index (and a member its
/// place in the member list).
pub fn put_identity(
    o: &mut Overlay<'_, '_>,
    ident: &Identity,
    new: bool,
) -> Result<(), StoreError> {
    let id = ident.id();
    o.put(&keys::identity(&id), &ident.to_cbor());
    if new {
        o.put(&keys::key_owner(&id), &id);
        if ident.role == Role::Member {
            let mut ids: Vec<String> = member_ids(o)?.iter().map(hex::encode).collect();
            ids.push(hex::encode(id));
            o.put(keys::GOV_MEMBERS, &encode(&ids));
        }
    }
    Ok(())
}
