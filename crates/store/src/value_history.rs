//! The state tree's value table: every value the tree committed to, by key
//! hash and version, so a proof at a recent version can return the value it
//! proves. Keys put a key's newest version first (`key hash ‖ !version`), so
//! compaction, which reads keys in order, meets a key's newer values before
//! its older ones and can drop the older ones no proof can ask for any more
//! (see [`HistoryFilter`]). Without that the table kept every version of
//! every value for good.

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use jmt::{KeyHash, Version};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Name of the keyspace holding the values, newest version first.
pub(crate) const KEYSPACE: &str = "jmt_values_desc";

/// The keyspace of databases written before, oldest version first
/// (`key hash ‖ version`); converted when such a database is opened.
const LEGACY_KEYSPACE: &str = "jmt_values";

/// Entries copied per batch while converting the legacy keyspace.
const CONVERT_BATCH: usize = 10_000;

/// The key of `key_hash`'s value at `version`.
pub(crate) fn key(key_hash: &KeyHash, version: Version) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&key_hash.0);
    k.extend_from_slice(&(!version).to_be_bytes());
    k
}

/// Range `[from, to)` whose first entry is `key_hash`'s newest value at or
/// before `version`.
pub(crate) fn at_or_before(key_hash: &KeyHash, version: Version) -> (Vec<u8>, Vec<u8>) {
    let mut to = key(key_hash, 0);
    to.push(0);
    (key(key_hash, version), to)
}

/// The version a key of this table names, if it is one.
fn version_of(key: &[u8]) -> Option<(&[u8], Version)> {
    let (hash, version) = key.split_at_checked(32)?;
    Some((hash, !u64::from_be_bytes(version.try_into().ok()?)))
}

/// The oldest version a state proof may still be asked for, as of the last
/// durable write: nodes replaced before it are pruned, so no proof at an
/// older version can be made, and a crash cannot take the database back
/// past that write. Zero (nothing is dropped) until the first durable write
/// after opening.
#[derive(Clone, Default)]
pub(crate) struct Horizon(Arc<AtomicU64>);

impl Horizon {
    pub fn get(&self) -> Version {
        self.0.load(Ordering::Relaxed)
    }

    pub fn raise(&self, to: Version) {
        self.0.fetch_max(to, Ordering::Relaxed);
    }

    /// The compaction filter factory for [`KEYSPACE`].
    pub fn factory(&self) -> Arc<dyn Factory> {
        Arc::new(self.clone())
    }
}

impl Factory for Horizon {
    fn name(&self) -> &str {
        "comity-value-history"
    }

    fn make_filter(&self, _ctx: &Context) -> Box<dyn CompactionFilter> {
        Box::new(HistoryFilter {
            horizon: self.get(),
            key_hash: Vec::new(),
            covered: false,
        })
    }
}

/// Drops a value when a newer value of the same key, at or before the
/// horizon, was already met: every proof at or after the horizon reads that
/// newer value (or a later one) instead. Keys are written once, so dropping
/// without a tombstone can uncover nothing.
struct HistoryFilter {
    horizon: Version,
    key_hash: Vec<u8>,
    /// A value of `key_hash` at or before the horizon was kept.
    covered: bool,
}

impl CompactionFilter for HistoryFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _ctx: &Context) -> CompactionFilterResult {
        let Some((hash, version)) = version_of(item.key()) else {
            return Ok(Verdict::Keep);
        };
        if hash != self.key_hash.as_slice() {
            self.key_hash.clear();
            self.key_hash.extend_from_slice(hash);
            self.covered = false;
        }
        if self.covered {
            return Ok(Verdict::Destroy);
        }
        self.covered = version <= self.horizon;
        Ok(Verdict::Keep)
    }
}

/// Converts the values of a database written before this layout (oldest
/// version first) into [`KEYSPACE`], then deletes the old keyspace. Copying
/// is idempotent, and the old keyspace goes only once the copy is durable,
/// so a crash midway is finished by the next open. Returns the entries copied.
pub(crate) fn convert_legacy(
    db: &fjall::Database,
    into: &fjall::Keyspace,
) -> Result<u64, fjall::Error> {
    if !db.keyspace_exists(LEGACY_KEYSPACE) {
        return Ok(0);
    }
    let old = db.keyspace(LEGACY_KEYSPACE, fjall::KeyspaceCreateOptions::default)?;
    let mut copied = 0u64;
    let mut batch = db.batch();
    let mut in_batch = 0;
    for item in old.iter() {
        let (k, v) = item.into_inner()?;
        let Some((hash, version)) = k.split_at_checked(32).and_then(|(h, v)| {
            Some((
                KeyHash(h.try_into().ok()?),
                u64::from_be_bytes(v.try_into().ok()?),
            ))
        }) else {
            continue; // not a value key: nothing reads it
        };
        batch.insert(into, key(&hash, version), v);
        in_batch += 1;
        copied += 1;
        if in_batch == CONVERT_BATCH {
            std::mem::replace(&mut batch, db.batch()).commit()?;
            in_batch = 0;
        }
    }
    batch.commit()?;
    db.persist(fjall::PersistMode::SyncAll)?;
    db.delete_keyspace(old)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_orders_its_newest_version_first_and_reads_back() {
        let h = KeyHash([7; 32]);
        assert!(key(&h, 5) < key(&h, 4));
        assert!(key(&h, u64::MAX) < key(&h, 0));
        assert_eq!(version_of(&key(&h, 42)), Some((&[7u8; 32][..], 42)));
        let (from, to) = at_or_before(&h, 9);
        assert!(from <= key(&h, 9) && key(&h, 9) < to);
        assert!(key(&h, 0) < to && key(&h, 10) < from);
        assert!(key(&KeyHash([8; 32]), u64::MAX) >= to);
    }
}
