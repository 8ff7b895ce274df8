//! Read-side notary queries over a consistent view: documents by party,
//! matter, status or registration time, in registration order, in pages.
//!
//! A page ends with a cursor: the hex of the last index key's suffix after
//! the filter's prefix. The next page starts just after it, so pages neither
//! skip nor repeat documents registered meanwhile.

use super::document::{self, Document, Status};
use super::index::matter_sort;
use crate::keys;
use comity_core::entry::Outcome;
use comity_core::tx::Tx;
use comity_core::Hash;
use comity_store::{Reader, Store, StoreError};

/// Which index a listing scans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Party(Hash),
    Matter(String),
    Status(Status),
    /// Registered at ledger time `from` (inclusive) to `to` (exclusive).
    Time {
        from: u64,
        to: u64,
    },
}

impl Filter {
    /// (key prefix a cursor is relative to, first key, end key (exclusive)).
    fn bounds(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let within = |p: &[u8], sort: &[u8]| {
            let prefix = [p, sort].concat();
            let end = [prefix.as_slice(), &[0xff; 41]].concat();
            (prefix.clone(), prefix, end)
        };
        match self {
            Filter::Party(id) => within(keys::NOTARY_PARTY_PREFIX, id),
            Filter::Matter(m) => within(keys::NOTARY_MATTER_PREFIX, &matter_sort(m)),
            Filter::Status(s) => within(keys::NOTARY_STATUS_PREFIX, &[s.index_byte()]),
            Filter::Time { from, to } => {
                let p = keys::NOTARY_TIME_PREFIX;
                (
                    p.to_vec(),
                    [p, &from.to_be_bytes()].concat(),
                    [p, &to.to_be_bytes()].concat(),
                )
            }
        }
    }
}

pub struct Page {
    pub items: Vec<Document>,
    /// The position to pass as `after` for the next page (the API seals
    /// it); `None` when this page is the last.
    pub next: Option<Vec<u8>>,
}

pub use crate::query::MAX_SCAN;

/// Documents matching `filter` (and `status`, if given) that `reader` may
/// read, after `cursor`. A page holds fewer than `limit` items, even none,
/// with a `next` cursor when `MAX_SCAN` entries were read first; `next` is
/// `None` only at the end.
pub fn documents(
    r: &Reader<'_>,
    filter: &Filter,
    status: Option<Status>,
    reader: &Hash,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Page, StoreError> {
    let (prefix, lo, hi) = filter.bounds();
    let start = match after {
        Some(c) => [&prefix[..], c, &[0]].concat().max(lo),
        None => lo,
    };
    let read = |s: &[u8]| r.aux_range(s, &hi, 256);
    let (items, last) = crate::query::scan(read, start, limit, |k, _| {
        let id: Hash = k[k.len() - 32..].try_into().expect("32-byte suffix");
        Ok(document::load(r, &id)?
            .filter(|d| status.is_none_or(|s| s == d.status) && d.may_read(reader)))
    })?;
    Ok(Page {
        items,
        next: last.map(|k| k[prefix.len()..].to_vec()),
    })
}

/// The document a notary transaction concerned, if it was applied: read
/// from the transaction itself in the ledger (see `documents_named`); a
/// duplicate registration names the existing record the same way.
pub fn document_of_tx(store: &Store, tx: &Hash) -> Result<Option<Hash>, StoreError> {
    let Some(index) = crate::query::tx_index(&store.read()?, tx)? else {
        return Ok(None);
    };
    let (record, leaf) = crate::query::record(store, index)?;
    if leaf.outcome != Outcome::Applied {
        return Ok(None);
    }
    Ok(match Tx::parse(&record.body) {
        Ok(t) if t.payload.app == "notary" => {
            super::documents_named(&t.payload.op, &t.payload.args)
                .first()
                .copied()
        }
        _ => None,
    })
}
