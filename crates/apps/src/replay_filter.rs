//! Filters in front of the two replay checks, "is this transaction already in
//! the ledger?" and "is this signer's nonce spent?". Both are asked at
//! admission and again by every node at apply, are nearly always answered
//! no, and each otherwise searched the database's memtables for a key that
//! is not there. A filter's "no" must be certain on every node, whenever it
//! started, or nodes would disagree; "maybe" asks the database.
//!
//! Both hold four-byte fingerprints, grouped by creation time, of what this
//! node recorded since it started, noted before the step's layer becomes
//! visible. What was recorded before it started is bounded by
//! `recorded_upto`, the largest creation time the store had recorded (kept
//! in the executor's saved state):
//!
//! - An id fixes the transaction's bytes and so its creation time: the
//!   filter answers for creation times after `recorded_upto`, from the one
//!   group of that time.
//! - A spent nonce stays in the database until pruning forgets spends
//!   created before the window. Once pruning has passed `recorded_upto`, every
//!   spend left is one this node noted, in a group not yet forgotten: the
//!   filter answers from all its groups. Spends left span about two windows
//!   of creation time, and a group is an eighth of the window wide (a minute
//!   at least), so a lookup searches some 17 groups whatever the window.
//!
//! Groups entirely before the pruning horizon are forgotten with the
//! database's nonces, and a memory bound forgets the oldest groups early;
//! either way, lookups of what was forgotten go to the database.

use comity_core::Hash;
use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hasher};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Creation times per group of ids: one second.
const ID_GROUP_MS: u64 = 1000;
/// Creation times per group of nonces: an eighth of the window, at least
/// this (a nonce lookup searches every group).
const MIN_NONCE_GROUP_MS: u64 = 60_000;
/// Most fingerprints each filter holds (about 6 bytes each): 4M covers ten
/// minutes at 6,000 transactions per second.
const MAX_ENTRIES: usize = 4 << 20;

/// Fingerprints grouped by creation time, for times after `complete_after`.
struct Groups {
    width: u64,
    /// Times at or before this may have been recorded without being here;
    /// `u64::MAX` when nothing is known.
    complete_after: u64,
    groups: BTreeMap<u64, HashSet<u32>>,
    entries: usize,
}

impl Groups {
    fn new(width: u64, recorded_upto: Option<u64>) -> Self {
        Groups {
            width,
            complete_after: recorded_upto.unwrap_or(u64::MAX),
            groups: BTreeMap::new(),
            entries: 0,
        }
    }

    fn note(&mut self, fp: u32, created: u64) {
        if created <= self.complete_after {
            return;
        }
        if self
            .groups
            .entry(created / self.width)
            .or_default()
            .insert(fp)
        {
            self.entries += 1;
        }
        while self.entries > MAX_ENTRIES {
            let Some((&oldest, _)) = self.groups.first_key_value() else {
                break;
            };
            self.drop_through(oldest);
        }
    }

    fn contains_at(&self, fp: u32, created: u64) -> bool {
        self.groups
            .get(&(created / self.width))
            .is_some_and(|g| g.contains(&fp))
    }

    fn contains_any(&self, fp: u32) -> bool {
        self.groups.values().any(|g| g.contains(&fp))
    }

    /// Forgets the groups wholly before `time`.
    fn forget_before(&mut self, time: u64) {
        if let Some(last) = (time / self.width).checked_sub(1) {
            self.drop_through(last);
        }
    }

    /// Drops the groups up to and including `group` and stops answering for them.
    fn drop_through(&mut self, group: u64) {
        let kept = self.groups.split_off(&(group + 1));
        self.entries -= self.groups.values().map(HashSet::len).sum::<usize>();
        self.groups = kept;
        let end = (group + 1) * self.width - 1;
        self.complete_after = self.complete_after.max(end);
    }
}

/// The ids of the transactions recorded since the node started.
pub struct RecentIds(RwLock<Groups>);

fn id_fingerprint(id: &Hash) -> u32 {
    // Ids are SHA-256: any four bytes are uniform.
    u32::from_le_bytes([id[0], id[1], id[2], id[3]])
}

impl RecentIds {
    /// `recorded_upto`: the largest creation time the store has recorded
    /// (`None` if unknown: then every answer is "maybe").
    pub fn new(recorded_upto: Option<u64>) -> Self {
        RecentIds(RwLock::new(Groups::new(ID_GROUP_MS, recorded_upto)))
    }

    /// Whether a transaction with this id and creation time (`None`: its
    /// bytes do not parse) may have been recorded; false is certain.
    pub fn may_contain(&self, id: &Hash, created: Option<u64>) -> bool {
        let Some(created) = created else {
            return true;
        };
        let g = read(&self.0);
        created <= g.complete_after || g.contains_at(id_fingerprint(id), created)
    }

    /// Notes a recorded transaction; must precede its layer's publication.
    pub fn note(&self, id: &Hash, created: u64) {
        write(&self.0).note(id_fingerprint(id), created);
    }

    /// Forgets creation times before `time` (outside the window).
    pub fn forget_before(&self, time: u64) {
        write(&self.0).forget_before(time);
    }
}

/// The nonces spent since the node started.
pub struct SpentNonces(RwLock<Nonces>);

struct Nonces {
    groups: Groups,
    /// Every spend created before this is pruned from the database.
    pruned_before: u64,
}

fn nonce_fingerprint(nonce_key: &[u8]) -> u32 {
    let mut h = DefaultHasher::new();
    h.write(nonce_key);
    h.finish() as u32
}

fn nonce_group_ms(window_ms: u64) -> u64 {
    (window_ms / 8).max(MIN_NONCE_GROUP_MS)
}

impl SpentNonces {
    /// For a transaction window of `window_ms`; see [`RecentIds::new`].
    pub fn new(recorded_upto: Option<u64>, window_ms: u64) -> Self {
        SpentNonces(RwLock::new(Nonces {
            groups: Groups::new(nonce_group_ms(window_ms), recorded_upto),
            pruned_before: 0,
        }))
    }

    /// Whether its groups fit a window of `window_ms` (else make a new one:
    /// it starts knowing nothing, so it stays exact).
    pub fn fits(&self, window_ms: u64) -> bool {
        read(&self.0).groups.width == nonce_group_ms(window_ms)
    }

    /// Whether the nonce under `nonce_key` may be spent; false is certain.
    pub fn may_contain(&self, nonce_key: &[u8]) -> bool {
        let n = read(&self.0);
        n.pruned_before <= n.groups.complete_after
            || n.groups.contains_any(nonce_fingerprint(nonce_key))
    }

    /// Notes a spend created at `created`; must precede its layer's publication.
    pub fn note(&self, nonce_key: &[u8], created: u64) {
        write(&self.0)
            .groups
            .note(nonce_fingerprint(nonce_key), created);
    }

    /// The database no longer holds spends created before `horizon`.
    pub fn pruned_before(&self, horizon: u64) {
        let mut n = write(&self.0);
        n.pruned_before = n.pruned_before.max(horizon);
        n.groups.forget_before(horizon);
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Know nothing: every answer is "maybe".
impl Default for RecentIds {
    fn default() -> Self {
        RecentIds::new(None)
    }
}

impl Default for SpentNonces {
    fn default() -> Self {
        SpentNonces::new(None, 0)
    }
}

impl std::fmt::Debug for RecentIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = read(&self.0);
        f.debug_struct("RecentIds")
            .field("complete_after", &g.complete_after)
            .field("entries", &g.entries)
            .finish()
    }
}

impl std::fmt::Debug for SpentNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = read(&self.0);
        f.debug_struct("SpentNonces")
            .field("complete_after", &n.groups.complete_after)
            .field("pruned_before", &n.pruned_before)
            .field("entries", &n.groups.entries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Hash {
        comity_core::crypto::sha256(&[n])
    }

    #[test]
    fn ids_answer_no_only_for_times_they_cover_completely() {
        let r = RecentIds::new(Some(5_000));
        r.note(&id(1), 7_500);
        r.note(&id(2), 4_000); // before the store's records end: not kept
        assert!(r.may_contain(&id(1), Some(7_500)));
        assert!(!r.may_contain(&id(2), Some(7_500)));
        assert!(
            !r.may_contain(&id(1), Some(9_000)),
            "another time, another group"
        );
        // Times the store may hold, and unparsed bytes, always need the database.
        assert!(r.may_contain(&id(3), Some(5_000)));
        assert!(r.may_contain(&id(3), None));
        // Unknown store: never a certain no.
        let unknown = RecentIds::default();
        unknown.note(&id(1), 7_500);
        assert!(unknown.may_contain(&id(4), Some(u64::MAX - 1)));
    }

    #[test]
    fn forgotten_id_times_fall_back_to_the_database() {
        let r = RecentIds::new(Some(0));
        r.note(&id(1), 1_500);
        r.note(&id(2), 2_500);
        r.forget_before(2_200);
        assert!(r.may_contain(&id(9), Some(1_999)), "group 1 is forgotten");
        assert!(r.may_contain(&id(2), Some(2_500)));
        assert!(!r.may_contain(&id(9), Some(2_000)), "group 2 is kept");
        // A late note in a forgotten group is not kept: lookups there use the database.
        r.note(&id(3), 1_200);
        assert!(r.may_contain(&id(3), Some(1_200)));
        assert_eq!(read(&r.0).entries, 1);
    }

    #[test]
    fn nonces_answer_no_only_once_pruning_passed_what_the_store_held() {
        const MIN: u64 = 60_000;
        let n = SpentNonces::new(Some(10 * MIN), 0);
        n.note(b"nonce a", 11 * MIN);
        assert!(
            n.may_contain(b"nonce b"),
            "spends before the start may remain"
        );
        n.pruned_before(10 * MIN);
        assert!(
            n.may_contain(b"nonce b"),
            "one created at the bound may remain"
        );
        n.pruned_before(10 * MIN + 1);
        assert!(!n.may_contain(b"nonce b"));
        assert!(
            n.may_contain(b"nonce a"),
            "found whatever the new spend's time"
        );
        // Pruning past a group forgets it, as the database forgot its spends.
        n.pruned_before(12 * MIN);
        assert!(!n.may_contain(b"nonce a"));
        assert!(SpentNonces::default().may_contain(b"nonce b"));
    }

    #[test]
    fn nonce_groups_widen_with_the_window_so_lookups_stay_few() {
        const DAY: u64 = 24 * 3600 * 1000;
        let n = SpentNonces::new(Some(0), 7 * DAY);
        // Spends over two weeks of creation time, one a minute.
        for m in 0..(14 * DAY / 60_000) {
            n.note(&m.to_be_bytes(), 1 + m * 60_000);
        }
        assert!(read(&n.0).groups.groups.len() <= 17);
        assert!(n.fits(7 * DAY));
        assert!(!n.fits(DAY));
        assert!(SpentNonces::default().fits(60_000));
        assert!(!SpentNonces::new(Some(0), 0).fits(7 * DAY));
    }
}
