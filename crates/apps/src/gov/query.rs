//! Read-side governance queries over a consistent view.

use super::proposal::{Proposal, ProposalState};
use crate::keys;
use crate::registry::{Identity, Role};
use comity_core::Hash;
use comity_store::{Reader, StoreError};

/// Identities of `role` in id order, starting after `after`.
pub fn identities(
    r: &Reader<'_>,
    role: Role,
    after: Option<Hash>,
    limit: usize,
) -> Result<Vec<Identity>, StoreError> {
    let mut from = match after {
        Some(id) => [keys::identity(&id), vec![0]].concat(),
        None => keys::identity(&[0; 32]),
    };
    let to = [keys::identity(&[0xff; 32]), vec![0]].concat();
    let mut out = Vec::new();
    // Identities of every role share one prefix; scan in pages.
    loop {
        let page = r.range(&from, &to, 256)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        from = [last.as_slice(), &[0]].concat();
        for (k, v) in &page {
            let ident = Identity::from_cbor(v).map_err(|e| {
                StoreError::StateTree(format!("identity {}: {e}", hex::encode(&k[3..])))
            })?;
            if ident.role == role {
                out.push(ident);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
}

/// Proposals in ledger order from position `from`, optionally in one state.
pub fn proposals(
    r: &Reader<'_>,
    state: Option<ProposalState>,
    from: u64,
    limit: usize,
) -> Result<Vec<Proposal>, StoreError> {
    let mut start = keys::proposal_list(from, &[0; 32]);
    let end = [keys::PROPOSAL_LIST_PREFIX, &[0xff; 41]].concat();
    let mut out = Vec::new();
    loop {
        let page = r.aux_range(&start, &end, 256)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        start = [last.as_slice(), &[0]].concat();
        for (k, _) in &page {
            let id: Hash = k[k.len() - 32..].try_into().expect("32-byte suffix");
            let Some(p) = super::load(r, &id)? else {
                continue;
            };
            if state.is_none_or(|s| s == p.state) {
                out.push(p);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
}

/// (ledger index, transaction id) of the entries that changed `subject`, oldest first.
pub fn history(
    r: &Reader<'_>,
    subject: &Hash,
    limit: usize,
) -> Result<Vec<(u64, Hash)>, StoreError> {
    let (from, to) = keys::history_range(subject);
    Ok(r.aux_range(&from, &to, limit)?
        .into_iter()
        .filter_map(|(k, v)| {
            let index = u64::from_be_bytes(k[k.len() - 8..].try_into().ok()?);
            Some((index, v.try_into().ok()?))
        })
        .collect())
}
