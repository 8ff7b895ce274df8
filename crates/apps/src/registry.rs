//! The identity registry: members, users and nodes, with versioned keys.
//!
//! An identity's id is the SHA-256 of its first key and never changes; later
//! keys are appended with the ledger index from which they are valid, so a
//! historical transaction is checked with the key valid when it committed.

use crate::{codes, keys, Reject};
use comity_core::cbor::{self, CborError, MapView, Value};
use comity_core::Hash;
use comity_store::StoreError;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Member,
    User,
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::User => "user",
            Role::Node => "node",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "member" => Role::Member,
            "user" => Role::User,
            "node" => Role::Node,
            _ => return None,
        })
    }
}

/// Where an identity stands. Members start `accepted` and become `active`
/// once they acknowledge the constitution; nodes are `pending` until members
/// trust them; users are `active` from registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Active,
    Removed,
    Pending,
    Trusted,
    Retired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Active => "active",
            Status::Removed => "removed",
            Status::Pending => "pending",
            Status::Trusted => "trusted",
            Status::Retired => "retired",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "accepted" => Status::Accepted,
            "active" => Status::Active,
            "removed" => Status::Removed,
            "pending" => Status::Pending,
            "trusted" => Status::Trusted,
            "retired" => Status::Retired,
            _ => return None,
        })
    }
}

/// Most entries a record's descriptive data may hold, and their sizes.
pub const MAX_DATA_ENTRIES: usize = 16;
pub const MAX_DATA_KEY: usize = 64;
pub const MAX_DATA_VALUE: usize = 1024;
pub const MAX_NAME: usize = 256;

/// Checks a display name and descriptive data (organization, contact, ...).
pub fn check_data(name: &str, data: &BTreeMap<String, String>) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name must be 1 to {MAX_NAME} bytes"));
    }
    if data.len() > MAX_DATA_ENTRIES {
        return Err(format!("at most {MAX_DATA_ENTRIES} data entries"));
    }
    match data
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_DATA_KEY || v.len() > MAX_DATA_VALUE)
    {
        Some((k, _)) => Err(format!(
            "data entry {k:?}: keys are 1 to {MAX_DATA_KEY} bytes, values at most {MAX_DATA_VALUE}"
        )),
        None => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub status: Status,
    pub name: String,
    /// Descriptive data: organization, contact, and so on.
    pub data: BTreeMap<String, String>,
    /// For nodes: the member that operates it.
    pub operator: Option<Hash>,
    /// (valid from ledger index, SubjectPublicKeyInfo DER), oldest first.
    pub keys: Vec<(u64, Vec<u8>)>,
}

impl Identity {
    pub fn new(role: Role, status: Status, name: &str, key: Vec<u8>, since: u64) -> Self {
        Identity {
            role,
            status,
            name: name.into(),
            data: BTreeMap::new(),
            operator: None,
            keys: vec![(since, key)],
        }
    }

    pub fn id(&self) -> Hash {
        comity_core::crypto::sha256(&self.keys[0].1)
    }

    pub fn current_key(&self) -> &[u8] {
        &self
            .keys
            .last()
            .expect("an identity has at least one key")
            .1
    }

    /// Active users and members, and trusted nodes, may transact.
    pub fn is_active(&self) -> bool {
        matches!(self.status, Status::Active | Status::Trusted)
    }

    /// Whether it may sign anything at all (an accepted member may only acknowledge).
    pub fn may_sign(&self) -> bool {
        self.is_active() || self.status == Status::Accepted
    }

    pub fn to_value(&self) -> Value {
        let keys = Value::Array(
            self.keys
                .iter()
                .map(|(since, k)| {
                    cbor::map([
                        ("since", cbor::uint(*since)),
                        ("key", cbor::bytes(k.clone())),
                    ])
                })
                .collect(),
        );
        let data = Value::Map(
            self.data
                .iter()
                .map(|(k, v)| (cbor::text(k), cbor::text(v)))
                .collect(),
        );
        let mut m = vec![
            (cbor::text("role"), cbor::text(self.role.as_str())),
            (cbor::text("status"), cbor::text(self.status.as_str())),
            (cbor::text("name"), cbor::text(&self.name)),
            (cbor::text("data"), data),
            (cbor::text("keys"), keys),
        ];
        if let Some(op) = self.operator {
            m.push((cbor::text("operator"), cbor::bytes(op)));
        }
        Value::Map(m)
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(self.to_value()).expect("identity built from valid parts")
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CborError> {
        let v = cbor::from_slice(bytes)?;
        let m = MapView::new(&v)?;
        let keys = m
            .array("keys")?
            .iter()
            .map(|k| {
                let km = MapView::new(k)?;
                Ok((km.u64("since")?, km.bytes("key")?.to_vec()))
            })
            .collect::<Result<Vec<_>, CborError>>()?;
        if keys.is_empty() {
            return Err(CborError::Shape("identity without keys".into()));
        }
        let data = match m.get("data") {
            Some(d) => cbor::to_serde(d)?,
            None => BTreeMap::new(),
        };
        Ok(Identity {
            role: Role::parse(m.text("role")?)
                .ok_or_else(|| CborError::Shape("bad role".into()))?,
            status: Status::parse(m.text("status")?)
                .ok_or_else(|| CborError::Shape("bad status".into()))?,
            name: m.text("name")?.to_string(),
            data,
            operator: m.get("operator").map(|_| m.hash("operator")).transpose()?,
            keys,
        })
    }
}

/// Whether `ident` may sign anything at all for `app.op`: an active
/// identity, a retired node endorsing the change that retired it (the
/// previous set must endorse every node-set change), or a pending node
/// asking again (answered `already_exists`). Checked at ingress (for a
/// precise HTTP error) and again at apply (where it decides).
pub fn may_submit(ident: &Identity, app: &str, op: &str) -> bool {
    ident.may_sign()
        || matches!(
            (ident.role, ident.status, app, op),
            (Role::Node, Status::Retired, "node", "endorse")
                | (Role::Node, Status::Pending, "node", "join")
        )
}

pub fn authorize(ident: &Identity, app: &str, op: &str, open: bool) -> Result<(), Reject> {
    if !may_submit(ident, app, op) {
        return Err(Reject(codes::INACTIVE));
    }
    match (ident.role, app) {
        (Role::Member, "gov") if ident.is_active() || op == "ack" => Ok(()),
        (Role::Member, _) if !ident.is_active() => Err(Reject(codes::NOT_ACKNOWLEDGED)),
        (Role::Member, "kv") => Ok(()),
        (Role::Member, "notary") => Ok(()),
        (Role::User, "kv" | "notary") if open => Ok(()),
        (Role::User, "kv" | "notary") => Err(Reject(codes::NETWORK_CLOSED)),
        (Role::Node, "node") => Ok(()),
        (_, "gov" | "node" | "kv" | "notary") => Err(Reject(codes::FORBIDDEN)),
        _ => Err(Reject(codes::UNKNOWN_APP)),
    }
}

/// Ordered reads of node-local (aux) data, from a batch or a reader.
pub trait AuxRead {
    fn aux_scan(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<comity_store::state::KeyValue>, StoreError>;
    fn aux_get_one(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

impl AuxRead for comity_store::WriteBatch<'_> {
    fn aux_scan(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<comity_store::state::KeyValue>, StoreError> {
        self.aux_range(from, to, usize::MAX)
    }
    fn aux_get_one(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.aux_get(key)
    }
}

impl AuxRead for comity_store::Reader<'_> {
    fn aux_scan(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<comity_store::state::KeyValue>, StoreError> {
        self.aux_range(from, to, usize::MAX)
    }
    fn aux_get_one(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.aux_get(key)
    }
}

/// Read access shared by apply-time batches and read views.
pub trait StateRead {
    fn state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

impl StateRead for comity_store::WriteBatch<'_> {
    fn state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
}

impl StateRead for comity_store::Reader<'_> {
    fn state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
}

pub fn get(s: &impl StateRead, id: &Hash) -> Result<Option<Identity>, StoreError> {
    match s.state(&keys::identity(id))? {
        Some(b) => decode(id, &b).map(Some),
        None => Ok(None),
    }
}

fn decode(id: &Hash, b: &[u8]) -> Result<Identity, StoreError> {
    Identity::from_cbor(b)
        .map_err(|e| StoreError::StateTree(format!("identity record {}: {e}", hex::encode(id))))
}

/// Identity records decoded lately, by id, with the bytes they came from.
/// Admission and apply read the signer of every transaction (and a notary
/// registration its parties) while records rarely change; a hit needs the
/// very bytes just read, so it is never stale, and decoding is a pure
/// function of them, so sharing it across stores cannot change an outcome.
type Decoded = HashMap<Hash, (Vec<u8>, Arc<Identity>)>;
static DECODED: LazyLock<Mutex<Decoded>> = LazyLock::new(Default::default);
/// Entries kept before the cache starts afresh.
const DECODED_MAX: usize = 16_384;

/// [`get`] for the hot paths that only read: the record is still read from
/// `s` each time, but decoded once per version of its bytes.
pub fn get_shared(s: &impl StateRead, id: &Hash) -> Result<Option<Arc<Identity>>, StoreError> {
    let Some(b) = s.state(&keys::identity(id))? else {
        return Ok(None);
    };
    let lock = || DECODED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((bytes, ident)) = lock().get(id) {
        if *bytes == b {
            return Ok(Some(ident.clone()));
        }
    }
    let ident = Arc::new(decode(id, &b)?);
    let mut cache = lock();
    if cache.len() >= DECODED_MAX {
        cache.clear();
    }
    cache.insert(*id, (b, ident.clone()));
    Ok(Some(ident))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// One identity record, whose bytes the test changes.
    struct OneRecord(RefCell<Option<Vec<u8>>>);

    impl StateRead for OneRecord {
        fn state(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.borrow().clone())
        }
    }

    #[test]
    fn a_shared_identity_follows_every_change_of_its_record() {
        let id = [0x5a; 32];
        let mut ident = Identity::new(Role::User, Status::Active, "carol", vec![1; 44], 3);
        let s = OneRecord(RefCell::new(Some(ident.to_cbor())));
        assert_eq!(*get_shared(&s, &id).unwrap().unwrap(), ident);
        assert_eq!(*get_shared(&s, &id).unwrap().unwrap(), ident);
        ident.status = Status::Removed;
        ident.keys.push((9, vec![2; 44]));
        *s.0.borrow_mut() = Some(ident.to_cbor());
        let now = get_shared(&s, &id).unwrap().unwrap();
        assert_eq!(
            (now.status, now.current_key()),
            (Status::Removed, &[2; 44][..])
        );
        *s.0.borrow_mut() = None;
        assert!(get_shared(&s, &id).unwrap().is_none());
        *s.0.borrow_mut() = Some(b"not cbor".to_vec());
        assert!(get_shared(&s, &id).is_err());
    }
}
