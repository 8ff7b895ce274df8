//! The identity registry: members, users and nodes, with versioned keys.
//!
//! An identity's id is the SHA-256 of its first key and never changes; later
//! keys are appended with the ledger index from which they are valid, so a
//! historical transaction is checked with the key valid when it committed.

use crate::executor::Ctx;
use crate::{codes, keys, Reject};
use comity_core::cbor::{self, CborError, MapView, Value};
use comity_core::crypto::PublicKey;
use comity_core::Hash;
use comity_store::StoreError;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// `active` identities may transact; others are refused.
    pub status: String,
    pub name: String,
    /// (valid from ledger index, SubjectPublicKeyInfo DER), oldest first.
    pub keys: Vec<(u64, Vec<u8>)>,
}

impl Identity {
    pub fn new(role: Role, name: &str, key: Vec<u8>, since: u64) -> Self {
        Identity {
            role,
            status: "active".into(),
            name: name.into(),
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

    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    pub fn to_cbor(&self) -> Vec<u8> {
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
        cbor::to_vec(cbor::map([
            ("role", cbor::text(self.role.as_str())),
            ("status", cbor::text(&self.status)),
            ("name", cbor::text(&self.name)),
            ("keys", keys),
        ]))
        .expect("identity built from valid parts")
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
        Ok(Identity {
            role: Role::parse(m.text("role")?)
                .ok_or_else(|| CborError::Shape("bad role".into()))?,
            status: m.text("status")?.to_string(),
            name: m.text("name")?.to_string(),
            keys,
        })
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
        Some(b) => Identity::from_cbor(&b).map(Some).map_err(|e| {
            StoreError::StateTree(format!("identity record {}: {e}", hex::encode(id)))
        }),
        None => Ok(None),
    }
}

/// `identity.register`: an active member registers a new user.
/// (Governance replaces this with member votes.)
pub fn execute(
    ctx: &mut Ctx<'_, '_>,
    op: &str,
    args: &Value,
) -> Result<Result<(), Reject>, StoreError> {
    if ctx.role != Role::Member {
        return Ok(Err(Reject(codes::FORBIDDEN)));
    }
    if op != "register" {
        return Ok(Err(Reject(codes::UNKNOWN_OP)));
    }
    let Ok(m) = MapView::new(args) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    let (Ok(key), Ok(name), Ok(role)) = (m.bytes("key"), m.text("name"), m.text("role")) else {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    };
    if role != "user" || name.len() > 256 || PublicKey::from_spki_der(key).is_err() {
        return Ok(Err(Reject(codes::BAD_ARGS)));
    }
    let id = comity_core::crypto::sha256(key);
    if get(&*ctx.batch, &id)?.is_some() {
        return Ok(Err(Reject(codes::ALREADY_EXISTS)));
    }
    let ident = Identity::new(Role::User, name, key.to_vec(), ctx.index);
    ctx.batch.put(&keys::identity(&id), &ident.to_cbor())?;
    Ok(Ok(()))
}
