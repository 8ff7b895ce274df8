//! Derived indexes behind the queries (aux, rebuilt by replay): by party, by
//! matter, by status and by registration time. Every key ends in the
//! registration's ledger index and the document id, so scans are in
//! registration order and pages resume after the last key seen.

use super::document::{Document, Status};
use crate::keys;
use comity_core::crypto::sha256;
use comity_store::{StoreError, WriteBatch};

/// The sort part of a matter key: its SHA-256, so any text fits a fixed width.
pub fn matter_sort(matter: &str) -> Vec<u8> {
    sha256(matter.as_bytes()).to_vec()
}

pub fn status_key(d: &Document, s: Status) -> Vec<u8> {
    keys::notary_index(
        keys::NOTARY_STATUS_PREFIX,
        &[s.index_byte()],
        d.index,
        &d.id.0,
    )
}

/// Indexes a newly registered document.
pub fn add(batch: &mut WriteBatch<'_>, d: &Document) -> Result<(), StoreError> {
    for p in &d.parties {
        batch.aux_put(
            &keys::notary_index(keys::NOTARY_PARTY_PREFIX, &p.id.0, d.index, &d.id.0),
            &[],
        )?;
    }
    if !d.matter.is_empty() {
        batch.aux_put(
            &keys::notary_index(
                keys::NOTARY_MATTER_PREFIX,
                &matter_sort(&d.matter),
                d.index,
                &d.id.0,
            ),
            &[],
        )?;
    }
    batch.aux_put(
        &keys::notary_index(
            keys::NOTARY_TIME_PREFIX,
            &d.registered.to_be_bytes(),
            d.index,
            &d.id.0,
        ),
        &[],
    )?;
    batch.aux_put(&status_key(d, d.status), &[])
}

/// Moves a document from its old status to its current one in the status index.
pub fn restatus(batch: &mut WriteBatch<'_>, d: &Document, old: Status) -> Result<(), StoreError> {
    if old != d.status {
        batch.aux_delete(&status_key(d, old))?;
        batch.aux_put(&status_key(d, d.status), &[])?;
    }
    Ok(())
}
