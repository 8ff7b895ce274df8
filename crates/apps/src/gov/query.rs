//! Read-side governance queries over a consistent view.

use super::proposal::{Proposal, ProposalState};
use crate::keys;
use crate::query::scan;
use crate::registry::{Identity, Role};
use comity_core::Hash;
use comity_store::{Reader, StoreError};

/// Identities of `role` in id order, after `after`, and the id the next
/// page starts after (`None` at the end; a page may end early, see
/// [`scan`]).
pub fn identities(
    r: &Reader<'_>,
    role: Role,
    after: Option<Hash>,
    limit: usize,
) -> Result<(Vec<Identity>, Option<Hash>), StoreError> {
    let start = match after {
        Some(id) => [keys::identity(&id), vec![0]].concat(),
        None => keys::identity(&[0; 32]),
    };
    // Identities of every role share one prefix.
    let to = [keys::identity(&[0xff; 32]), vec![0]].concat();
    let read = |s: &[u8]| r.range(s, &to, 256);
    let (items, last) = scan(read, start, limit, |k, v| {
        let ident = Identity::from_cbor(v).map_err(|e| {
            StoreError::StateTree(format!("identity {}: {e}", hex::encode(&k[3..])))
        })?;
        Ok((ident.role == role).then_some(ident))
    })?;
    Ok((items, last.map(|k| id_suffix(&k))))
}

/// Proposals in ledger order from position `from`, optionally in one state,
/// and the position the next page starts from (`None` at the end).
pub fn proposals(
    r: &Reader<'_>,
    state: Option<ProposalState>,
    from: u64,
    limit: usize,
) -> Result<(Vec<Proposal>, Option<u64>), StoreError> {
    let start = keys::proposal_list(from, &[0; 32]);
    let end = [keys::PROPOSAL_LIST_PREFIX, &[0xff; 41]].concat();
    let read = |s: &[u8]| r.aux_range(s, &end, 256);
    let (items, last) = scan(read, start, limit, |k, _| {
        Ok(super::load(r, &id_suffix(k))?.filter(|p| state.is_none_or(|s| s == p.state)))
    })?;
    let next = last.map(|k| {
        let at = k.len() - 40;
        u64::from_be_bytes(k[at..at + 8].try_into().expect("8-byte position")) + 1
    });
    Ok((items, next))
}

/// (ledger index, transaction id) of the entries that changed `subject`,
/// oldest first, from ledger index `from` on.
pub fn history(
    r: &Reader<'_>,
    subject: &Hash,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Hash)>, StoreError> {
    let (from, to) = keys::history_range(subject, from);
    Ok(r.aux_range(&from, &to, limit)?
        .into_iter()
        .filter_map(|(k, v)| {
            let index = u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?);
            Some((index, v.try_into().ok()?))
        })
        .collect())
}

/// The id that ends an index key.
fn id_suffix(k: &[u8]) -> Hash {
    k[k.len() - 32..].try_into().expect("32-byte suffix")
}
