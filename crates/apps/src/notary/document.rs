//! The document record and its lifecycle:
//!
//! ```text
//! draft ──(last signing party signs)──▶ executed ──┬─(amend)──▶ amended ─┐
//!   │                                              ├─(expire)─▶ expired ─┼─(destroy)─▶ destroyed
//!   └──────────────(revoke)────────────────────────┴─(revoke)─▶ revoked ─┘
//! ```
//!
//! A document with no signing party is executed when registered. Leaving
//! force (amended, expired, revoked) starts the retention period; a legal
//! hold blocks revocation and destruction while it stands.

use super::event::Chain;
use crate::gov::Id;
use crate::registry::StateRead;
use crate::{codes, keys, Reject};
use comity_core::hash::Sha256;
use comity_core::Hash;
use comity_store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const MAX_TEXT: usize = 256;
pub const MAX_KIND: usize = 64;
pub const MAX_REASON: usize = 1024;
pub const MAX_PARTIES: usize = 32;
pub const MAX_APPROVERS: usize = 32;
pub const MAX_APPROVALS: u64 = 16;
/// Holds standing on one document at once; each is rewritten with the record.
pub const MAX_HOLDS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Executed,
    Amended,
    Expired,
    Revoked,
    Destroyed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Draft,
        Status::Executed,
        Status::Amended,
        Status::Expired,
        Status::Revoked,
        Status::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Executed => "executed",
            Status::Amended => "amended",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
            Status::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The byte that orders the status index.
    pub fn index_byte(self) -> u8 {
        self as u8
    }

    /// Draft or executed: not yet retained for destruction.
    pub fn in_force(self) -> bool {
        matches!(self, Status::Draft | Status::Executed)
    }
}

/// A party to the document and its role (seller, buyer, witness, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// Identity id of the party.
    pub id: Id,
    pub role: String,
    /// Whether its signature is required for execution (default: yes).
    #[serde(default = "yes")]
    pub signs: bool,
}

fn yes() -> bool {
    true
}

/// How long the document is kept after it leaves force, and who must
/// approve its destruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Distinct approvals destruction needs (at least 1).
    pub approvals: u64,
    /// Who may approve; empty means the custodian at the time and the parties.
    #[serde(default)]
    pub approvers: Vec<Id>,
    /// Milliseconds of ledger time from leaving force until destruction is allowed.
    pub period_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub time: u64,
    pub index: u64,
    pub party: Id,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub by: Id,
    /// The id of the placing transaction.
    pub id: Id,
    pub time: u64,
    pub index: u64,
    pub reason: String,
}

/// An act by an identity at a ledger position, with its reason: a custody
/// offer, a destruction approval, the destruction itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    pub by: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Id>,
    pub time: u64,
    pub index: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The current record of a document, stored under `keys::notary_doc(id)`.
///
/// Fields are declared in canonical CBOR key order (shorter names first,
/// then bytewise), so the record, rewritten on every step of the
/// document's life, encodes in place without sorting; a test keeps it so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// `id_of(digest)`.
    pub id: Id,
    /// The owning organization.
    pub org: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub chain: Chain,
    /// Ledger time it left force (amended, expired, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<u64>,
    pub holds: Vec<Hold>,
    /// Origin: the ledger index of its registration.
    pub index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Act>,
    pub title: String,
    /// SHA-256 of the content, or of salt ‖ SHA-256(content) when `salted`.
    pub digest: Id,
    pub matter: String,
    pub salted: bool,
    pub status: Status,
    pub parties: Vec<Party>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed: Option<u64>,
    /// SHA-256 of the personal-data blob kept off the ledger, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal: Option<Id>,
    pub approvals: Vec<Act>,
    /// The identity holding custody (first the registrant).
    pub custodian: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<Act>,
    pub retention: Retention,
    /// The newer version: while this one is still executed, an amendment
    /// awaiting its parties' signatures (or one revoked unsigned); once this
    /// one is amended, the version that superseded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<Id>,
    /// Origin: the ledger time of its registration.
    pub registered: u64,
    /// Origin: who registered it.
    pub registrant: Id,
    pub signatures: Vec<Signature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<Id>,
    /// Ledger time from which it may be destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<u64>,
    pub personal_erased: bool,
}

/// Arguments of `notary.register` and `notary.amend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterArgs {
    pub digest: Id,
    #[serde(default)]
    pub salted: bool,
    pub title: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub matter: String,
    #[serde(default)]
    pub org: String,
    #[serde(default)]
    pub parties: Vec<Party>,
    pub retention: Retention,
    #[serde(default)]
    pub personal: Option<Id>,
    /// Required for `amend`, refused for `register`.
    #[serde(default)]
    pub predecessor: Option<Id>,
}

impl RegisterArgs {
    /// Checks sizes and consistency; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.title.is_empty() || self.title.len() > MAX_TEXT {
            return Err(format!("title must be 1 to {MAX_TEXT} bytes"));
        }
        if self.kind.len() > MAX_KIND {
            return Err(format!("type longer than {MAX_KIND} bytes"));
        }
        if self.matter.len() > MAX_TEXT || self.org.len() > MAX_TEXT {
            return Err(format!("matter and org are at most {MAX_TEXT} bytes"));
        }
        if self.parties.len() > MAX_PARTIES {
            return Err(format!("at most {MAX_PARTIES} parties"));
        }
        if let Some(p) = self
            .parties
            .iter()
            .find(|p| p.role.is_empty() || p.role.len() > MAX_KIND)
        {
            return Err(format!(
                "party {}: role must be 1 to {MAX_KIND} bytes",
                hex::encode(p.id.0)
            ));
        }
        if distinct(self.parties.iter().map(|p| p.id)) != self.parties.len() {
            return Err("a party is listed twice".into());
        }
        let r = &self.retention;
        if r.approvals == 0 || r.approvals > MAX_APPROVALS {
            return Err(format!("retention.approvals must be 1 to {MAX_APPROVALS}"));
        }
        if r.approvers.len() > MAX_APPROVERS
            || distinct(r.approvers.iter().copied()) != r.approvers.len()
        {
            return Err(format!(
                "retention.approvers: at most {MAX_APPROVERS}, each once"
            ));
        }
        if !r.approvers.is_empty() && r.approvals > r.approvers.len() as u64 {
            return Err("retention.approvals exceeds the number of approvers".into());
        }
        Ok(())
    }
}

fn distinct(ids: impl Iterator<Item = Id>) -> usize {
    ids.collect::<BTreeSet<_>>().len()
}

impl Document {
    /// A new record from validated arguments, registered by the current transaction.
    pub fn new(a: RegisterArgs, id: Hash, signer: Hash, index: u64, time: u64) -> Document {
        Document {
            id: Id(id),
            digest: a.digest,
            salted: a.salted,
            title: a.title,
            kind: a.kind,
            matter: a.matter,
            org: a.org,
            parties: a.parties,
            retention: a.retention,
            personal: a.personal,
            personal_erased: false,
            registrant: Id(signer),
            index,
            registered: time,
            status: Status::Draft,
            signatures: Vec::new(),
            executed: None,
            ended: None,
            retain_until: None,
            predecessor: a.predecessor,
            successor: None,
            custodian: Id(signer),
            offer: None,
            holds: Vec::new(),
            approvals: Vec::new(),
            destroyed: None,
            chain: Chain::default(),
        }
    }

    /// Whether `a` asks for exactly the terms this record was registered
    /// with (its digest aside, which names it): a registrant's retry.
    pub fn registered_with(&self, a: &RegisterArgs) -> bool {
        self.salted == a.salted
            && self.title == a.title
            && self.kind == a.kind
            && self.matter == a.matter
            && self.org == a.org
            && self.parties == a.parties
            && self.retention == a.retention
            && self.personal == a.personal
            && self.predecessor == a.predecessor
    }

    pub fn is_party(&self, who: &Hash) -> bool {
        self.parties.iter().any(|p| p.id.0 == *who)
    }

    pub fn party(&self, who: &Hash) -> Option<&Party> {
        self.parties.iter().find(|p| p.id.0 == *who)
    }

    pub fn has_signed(&self, who: &Hash) -> bool {
        self.signatures.iter().any(|s| s.party.0 == *who)
    }

    /// Every signing party has signed.
    pub fn fully_signed(&self) -> bool {
        self.parties
            .iter()
            .filter(|p| p.signs)
            .all(|p| self.has_signed(&p.id.0))
    }

    /// Who may read the record: the identities it names (registrant,
    /// custodian, parties, named destruction approvers) and those who acted
    /// on it (a legal hold, a custody offer). Nobody else learns of it.
    pub fn may_read(&self, who: &Hash) -> bool {
        self.registrant.0 == *who
            || self.custodian.0 == *who
            || self.is_party(who)
            || self.retention.approvers.iter().any(|a| a.0 == *who)
            || self.holds.iter().any(|h| h.by.0 == *who)
            || self
                .offer
                .as_ref()
                .is_some_and(|o| o.by.0 == *who || o.to.is_some_and(|t| t.0 == *who))
    }

    /// The custodian or a signing party (one the document binds): who may
    /// amend, expire or revoke. A party that does not sign (a witness, an
    /// observer) may read the record's personal data but not end its force.
    pub fn may_manage(&self, who: &Hash) -> bool {
        self.custodian.0 == *who || self.party(who).is_some_and(|p| p.signs)
    }

    /// Who may approve destruction: the named approvers, else the custodian
    /// and the signing parties.
    pub fn may_approve(&self, who: &Hash) -> bool {
        if self.retention.approvers.is_empty() {
            self.may_manage(who)
        } else {
            self.retention.approvers.iter().any(|a| a.0 == *who)
        }
    }

    /// Refuses any change once destroyed.
    pub fn check_not_destroyed(&self) -> Result<(), Reject> {
        if self.status == Status::Destroyed {
            return Err(Reject(codes::DOC_DESTROYED));
        }
        Ok(())
    }

    /// Leaves force: records when, and from when it may be destroyed.
    pub fn end(&mut self, to: Status, time: u64) {
        self.status = to;
        self.ended = Some(time);
        self.retain_until = Some(time.saturating_add(self.retention.period_ms));
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        super::encode(self)
    }

    pub fn from_cbor(b: &[u8]) -> Result<Document, StoreError> {
        crate::gov::state::decode("notary document", b)
    }
}

pub fn load(s: &impl StateRead, id: &Hash) -> Result<Option<Document>, StoreError> {
    s.state(&keys::notary_doc(id))?
        .map(|b| Document::from_cbor(&b))
        .transpose()
}

/// A document's id: SHA-256 of a domain tag and the registered digest. A
/// digest names at most one document, and the record's key follows from the
/// digest, so the record's state proof also proves what the digest is
/// registered as (or, by its absence, that it is not), with no second key.
pub fn id_of(digest: &Hash) -> Hash {
    Sha256::new().chain(ID_DOMAIN).chain(digest).finish()
}

/// Domain separation of document ids from every other SHA-256 in Comity.
pub const ID_DOMAIN: &[u8] = b"comity.notary.document.v1\0";

/// The id of the document registered with `digest`, if any.
pub fn by_digest(s: &impl StateRead, digest: &Hash) -> Result<Option<Hash>, StoreError> {
    let id = id_of(digest);
    Ok(s.state(&keys::notary_doc(&id))?.map(|_| id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::cbor;

    /// Every optional part present, so each field's encoding is exercised.
    fn full() -> Document {
        let id = |b: u8| Id([b; 32]);
        let act = |b: u8, to: Option<Id>| Act {
            by: id(b),
            to,
            reason: format!("reason {b}"),
            index: u64::from(b) * 1000,
            time: u64::MAX - u64::from(b),
        };
        let args = RegisterArgs {
            digest: id(1),
            salted: true,
            title: "Supply agreement".into(),
            kind: "contract".into(),
            matter: "M-2026-7".into(),
            org: "Acme".into(),
            parties: vec![
                Party {
                    id: id(2),
                    role: "seller".into(),
                    signs: true,
                },
                Party {
                    id: id(3),
                    role: "witness".into(),
                    signs: false,
                },
            ],
            retention: Retention {
                period_ms: 86_400_000,
                approvals: 2,
                approvers: vec![id(4), id(5)],
            },
            personal: Some(id(6)),
            predecessor: Some(id(7)),
        };
        let mut d = Document::new(args, [8; 32], [9; 32], 42, 1_700_000_000_000);
        d.status = Status::Destroyed;
        d.signatures = vec![Signature {
            party: id(2),
            index: 43,
            time: 5,
        }];
        (d.executed, d.ended, d.retain_until) = (Some(1), Some(2), Some(3));
        d.successor = Some(id(10));
        d.offer = Some(act(11, Some(id(12))));
        d.holds = vec![Hold {
            id: id(13),
            by: id(14),
            reason: "audit".into(),
            index: 7,
            time: 8,
        }];
        d.approvals = vec![act(15, None), act(16, None)];
        d.destroyed = Some(act(17, None));
        d.personal_erased = true;
        d.chain.events = 9;
        d.chain.head = id(18);
        d
    }

    #[test]
    fn a_record_encodes_as_through_a_cbor_value_and_reads_back() {
        for d in [
            full(),
            Document::new(minimal_args(), [1; 32], [2; 32], 0, 0),
        ] {
            let direct = d.to_cbor();
            let via_value = cbor::to_vec(cbor::Value::serialized(&d).unwrap()).unwrap();
            assert_eq!(direct, via_value);
            assert_eq!(Document::from_cbor(&direct).unwrap(), d);
            // Ids are 32-byte strings; the hex form still reads back.
            let hex_ids = cbor::to_canonical(&d).unwrap();
            assert!(direct.len() < hex_ids.len());
            let id = [&[0x58, 32][..], &d.id.0].concat();
            assert!(direct.windows(34).any(|w| w == id));
            assert_eq!(Document::from_cbor(&hex_ids).unwrap(), d);
        }
    }

    /// ciborium writes fields in declaration order, so it agrees with the
    /// canonical encoding only if every nested struct declares its fields
    /// in canonical key order, which lets the encoder skip sorting.
    #[test]
    fn fields_are_declared_in_canonical_key_order() {
        let mut in_declared_order = Vec::new();
        ciborium::into_writer(&full(), &mut in_declared_order).unwrap();
        assert_eq!(in_declared_order, full().to_cbor());
    }

    fn minimal_args() -> RegisterArgs {
        RegisterArgs {
            digest: Id([1; 32]),
            salted: false,
            title: "t".into(),
            kind: String::new(),
            matter: String::new(),
            org: String::new(),
            parties: Vec::new(),
            retention: Retention {
                period_ms: 0,
                approvals: 1,
                approvers: Vec::new(),
            },
            personal: None,
            predecessor: None,
        }
    }
}
