//! The ids of the transactions this node recorded, grouped by creation time,
//! so that "is this transaction already in the ledger?" (asked at admission
//! and again by every node at apply, and nearly always answered no) rarely
//! needs the database: that lookup searched the memtables for a key that is
//! not there, several times per transaction.
//!
//! A transaction's id fixes its bytes, hence its creation time. So the set
//! is exact for every creation time after `complete_after`: every id
//! recorded with such a time since the node started is noted here, under
//! its time, before its layer becomes visible; and no id with such a time
//! was recorded before the node started, because `complete_after` starts at
//! the largest creation time the store had recorded (kept in the executor's
//! saved state). Times at or before `complete_after` fall back to the
//! database, as do bytes that do not parse. Answers are therefore the same
//! as the database's on every node, whenever it started.
//!
//! Groups of creation times older than the transaction window are dropped
//! (raising `complete_after`): a transaction created then is refused as
//! outside the window, whose check comes from the database path. A memory
//! bound drops the oldest groups the same way.

use comity_core::Hash;
use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

/// Creation times per group: one second.
const GROUP_MS: u64 = 1000;

/// Most ids held (about 6 bytes each): 4M covers ten minutes at 6,000 tx/s.
const MAX_IDS: usize = 4 << 20;

pub struct RecentIds(RwLock<Inner>);

struct Inner {
    /// Ids created at or before this time may be recorded without being here;
    /// `u64::MAX` when the store does not say how far its records go.
    complete_after: u64,
    /// Creation-time group → the first four bytes of each id (ids are
    /// SHA-256, so a false match is about one in a million per lookup in a
    /// group of 4,000, and only costs the database lookup).
    groups: BTreeMap<u64, HashSet<u32>>,
    ids: usize,
}

fn fingerprint(id: &Hash) -> u32 {
    u32::from_le_bytes([id[0], id[1], id[2], id[3]])
}

impl RecentIds {
    /// `recorded_upto` is the largest creation time of any transaction the
    /// store has recorded (`None` if unknown: then every answer is "maybe").
    pub fn new(recorded_upto: Option<u64>) -> Self {
        RecentIds(RwLock::new(Inner {
            complete_after: recorded_upto.unwrap_or(u64::MAX),
            groups: BTreeMap::new(),
            ids: 0,
        }))
    }

    /// Whether a transaction with this id and creation time (`None`: its
    /// bytes do not parse) may have been recorded; false is certain.
    pub fn may_contain(&self, id: &Hash, created: Option<u64>) -> bool {
        let Some(created) = created else {
            return true;
        };
        let r = self.0.read().unwrap_or_else(|e| e.into_inner());
        created <= r.complete_after
            || r.groups
                .get(&(created / GROUP_MS))
                .is_some_and(|g| g.contains(&fingerprint(id)))
    }

    /// Notes a recorded transaction; must precede its layer's publication.
    pub fn note(&self, id: &Hash, created: u64) {
        let mut w = self.0.write().unwrap_or_else(|e| e.into_inner());
        if created <= w.complete_after {
            return;
        }
        if w.groups
            .entry(created / GROUP_MS)
            .or_default()
            .insert(fingerprint(id))
        {
            w.ids += 1;
        }
        while w.ids > MAX_IDS {
            let Some((&oldest, _)) = w.groups.first_key_value() else {
                break;
            };
            w.drop_through(oldest);
        }
    }

    /// Forgets creation times before `time` (older than the window).
    pub fn forget_before(&self, time: u64) {
        let mut w = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Whole groups only: the group holding `time` is kept.
        if let Some(last) = (time / GROUP_MS).checked_sub(1) {
            w.drop_through(last);
        }
    }
}

/// Knows nothing: every answer is "maybe".
impl Default for RecentIds {
    fn default() -> Self {
        RecentIds::new(None)
    }
}

impl std::fmt::Debug for RecentIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("RecentIds")
            .field("complete_after", &r.complete_after)
            .field("ids", &r.ids)
            .finish()
    }
}

impl Inner {
    /// Drops the groups up to and including `group` and stops answering for them.
    fn drop_through(&mut self, group: u64) {
        let kept = self.groups.split_off(&(group + 1));
        self.ids -= self.groups.values().map(HashSet::len).sum::<usize>();
        self.groups = kept;
        let end = (group + 1) * GROUP_MS - 1;
        self.complete_after = self.complete_after.max(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Hash {
        comity_core::crypto::sha256(&[n])
    }

    #[test]
    fn answers_no_only_for_times_it_covers_completely() {
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
        let unknown = RecentIds::new(None);
        unknown.note(&id(1), 7_500);
        assert!(unknown.may_contain(&id(4), Some(u64::MAX - 1)));
    }

    #[test]
    fn forgotten_times_fall_back_to_the_database() {
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
        assert_eq!(r.0.read().unwrap().ids, 1);
    }
}
