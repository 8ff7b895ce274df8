//! Hash-chained events: every change to a document or collection appends
//! one, naming the hash of the one before. The record keeps the count and the
//! head hash, and the record is proved against the state root, so a list of
//! events that omits, reorders or alters one cannot reach the proved head.

use super::encode;
use crate::executor::Ctx;
use crate::gov::state::decode;
use crate::gov::Id;
use crate::keys;
use comity_core::crypto::sha256;
use comity_core::Hash;
use comity_store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `prev` of a subject's first event.
pub const GENESIS_PREV: Hash = [0; 32];

/// What happened; the text is what the record and the API show.
pub mod kind {
    pub const REGISTERED: &str = "registered";
    pub const SIGNED: &str = "signed";
    pub const EXECUTED: &str = "executed";
    pub const AMENDMENT_PROPOSED: &str = "amendment_proposed";
    pub const AMENDED: &str = "amended";
    pub const EXPIRED: &str = "expired";
    pub const REVOKED: &str = "revoked";
    pub const HOLD_PLACED: &str = "hold_placed";
    pub const HOLD_LIFTED: &str = "hold_lifted";
    pub const CUSTODY_OFFERED: &str = "custody_offered";
    pub const CUSTODY_ACCEPTED: &str = "custody_accepted";
    pub const DESTRUCTION_APPROVED: &str = "destruction_approved";
    pub const DESTROYED: &str = "destroyed";
    pub const PERSONAL_DATA_ERASED: &str = "personal_data_erased";
    pub const COLLECTION_CREATED: &str = "collection_created";
    pub const ORDER_SET: &str = "order_set";
}

/// The notary operations that may produce an event of `kind`, so a verifier
/// can check each event against the transaction its receipt proves.
pub fn ops_for(kind: &str) -> &'static [&'static str] {
    match kind {
        kind::REGISTERED => &["register", "amend"],
        // A document without signing parties is executed when registered.
        kind::EXECUTED => &["sign", "register", "amend"],
        kind::SIGNED => &["sign"],
        kind::AMENDMENT_PROPOSED => &["amend"],
        // The last signature of an amendment supersedes the version it amends.
        kind::AMENDED => &["amend", "sign"],
        kind::EXPIRED => &["expire"],
        kind::REVOKED => &["revoke"],
        kind::HOLD_PLACED => &["hold.place"],
        kind::HOLD_LIFTED => &["hold.lift"],
        kind::CUSTODY_OFFERED => &["custody.offer"],
        kind::CUSTODY_ACCEPTED => &["custody.accept"],
        kind::DESTRUCTION_APPROVED => &["destroy.approve"],
        kind::DESTROYED => &["destroy"],
        kind::PERSONAL_DATA_ERASED => &["metadata.erase", "destroy"],
        kind::COLLECTION_CREATED => &["collection.create"],
        kind::ORDER_SET => &["collection.set_order"],
        _ => &[],
    }
}

/// One event, stored in state as canonical CBOR under
/// `keys::notary_event(subject, seq)`; its hash is SHA-256 of those bytes.
/// Fields are in canonical key order, so it encodes without sorting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The transaction that caused it.
    pub tx: Id,
    /// Position in the subject's chain, from 0.
    pub seq: u64,
    pub kind: String,
    /// Hash of event `seq - 1`, or zeros for the first.
    pub prev: Id,
    /// Ledger time of the transaction.
    pub time: u64,
    /// The transaction's signer.
    pub actor: Id,
    /// Ledger index of the transaction.
    pub index: u64,
    /// Particulars (party and role, reason, recipient, ...), as text.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// The document or collection.
    pub subject: Id,
}

impl Event {
    pub fn to_cbor(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn hash(&self) -> Hash {
        sha256(&self.to_cbor())
    }
}

/// The running end of a chain, kept in the subject's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// Hash of the last event (zeros when there is none).
    pub head: Id,
    /// Number of events.
    pub events: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            events: 0,
            head: Id(GENESIS_PREV),
        }
    }
}

/// Appends an event caused by the current transaction and advances `chain`.
pub fn append(
    ctx: &mut Ctx<'_, '_>,
    subject: &Hash,
    chain: &mut Chain,
    kind: &str,
    details: BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let e = Event {
        subject: Id(*subject),
        seq: chain.events,
        prev: chain.head,
        tx: Id(ctx.tx),
        index: ctx.index,
        time: ctx.time,
        actor: Id(ctx.signer),
        kind: kind.to_string(),
        details,
    };
    let bytes = e.to_cbor();
    // Events are kept beside the state, not in it: the record (in the state
    // tree) commits to all of them through `chain.head`, and each event's
    // transaction has its own receipt, so one state write per step suffices.
    ctx.batch
        .aux_put(&keys::notary_event(subject, e.seq), &bytes)?;
    chain.events += 1;
    chain.head = Id(sha256(&bytes));
    Ok(())
}

/// Details from `(name, value)` pairs, leaving out empty values.
pub fn details<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The stored bytes of a subject's events `from..`, at most `limit`, in order.
pub fn stored(
    r: &comity_store::Reader<'_>,
    subject: &Hash,
    from: u64,
    limit: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let (_, to) = keys::notary_event_range(subject);
    Ok(r.aux_range(&keys::notary_event(subject, from), &to, limit)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// One stored event, decoded.
pub fn load(
    s: &impl crate::registry::AuxRead,
    subject: &Hash,
    seq: u64,
) -> Result<Option<Event>, StoreError> {
    s.aux_get_one(&keys::notary_event(subject, seq))?
        .map(|b| decode("notary event", &b))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ciborium writes fields in declaration order: it agrees with the
    /// canonical encoding only if they are declared in canonical key order.
    #[test]
    fn fields_are_declared_in_canonical_key_order() {
        let e = Event {
            tx: Id([1; 32]),
            seq: 7,
            kind: kind::SIGNED.into(),
            prev: Id([2; 32]),
            time: 1_700_000_000_000,
            actor: Id([3; 32]),
            index: 42,
            details: details([("party", "p".into())]),
            subject: Id([4; 32]),
        };
        let mut in_declared_order = Vec::new();
        ciborium::into_writer(&e, &mut in_declared_order).unwrap();
        assert_eq!(in_declared_order, e.to_cbor());
    }
}
