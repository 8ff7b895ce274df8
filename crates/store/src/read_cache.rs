//! A bounded cache of the latest committed state values.
//!
//! Every transaction reads its signer's identity record, and most
//! application operations read records written long ago (a document, the
//! parties' identities); each such read otherwise searches the write-behind
//! layers and then the database's memtables and tables.
//!
//! Readers hold views of different ages, so an entry records the commit
//! sequence number of the view that filled it, and serves only views at least
//! that new. Correctness rests on two rules, both kept by the committer while
//! it holds the layers' write lock: a commit replaces the entry of every
//! state key it writes with the value it wrote (filled at its own number)
//! *before* its layer becomes visible, and only a view of the latest commit
//! may fill an entry. An entry present and filled at `f` thus means no
//! commit after `f` wrote its key, so its value is the value at every view
//! from `f` on. Writing through also serves the first read after a write,
//! such as a party signing a document just registered.

use quick_cache::unsync::Cache;
use quick_cache::Weighter;
use std::sync::Mutex;

/// Memory the cache may hold (keys and values, roughly).
const CAPACITY_BYTES: u64 = 16 << 20;

/// A value (or its absence) and the commit whose view read it.
type Entry = (Option<Vec<u8>>, u64);

#[derive(Clone)]
struct Size;

impl Weighter<Vec<u8>, Entry> for Size {
    fn weight(&self, key: &Vec<u8>, (value, _): &Entry) -> u64 {
        (key.len() + value.as_ref().map_or(0, Vec::len) + 64) as u64
    }
}

struct Inner {
    /// The latest commit: the only view allowed to fill.
    latest: u64,
    entries: Cache<Vec<u8>, Entry, Size>,
}

pub(crate) struct ReadCache(Mutex<Inner>);

impl ReadCache {
    pub fn new(latest: u64) -> Self {
        let entries = Cache::with_weighter(16_384, CAPACITY_BYTES, Size);
        Self(Mutex::new(Inner { latest, entries }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` as a view of commit `seq` sees it, if known.
    pub fn get(&self, key: &[u8], seq: u64) -> Option<Option<Vec<u8>>> {
        match self.lock().entries.get(key) {
            Some((value, filled)) if *filled <= seq => Some(value.clone()),
            _ => None,
        }
    }

    /// Records what a view of commit `seq` read, if that is the latest commit.
    pub fn fill(&self, key: &[u8], value: &Option<Vec<u8>>, seq: u64) {
        let mut c = self.lock();
        if c.latest == seq {
            c.entries.insert(key.to_vec(), (value.clone(), seq));
        }
    }

    /// Called by commit `seq` with its state writes, before they become visible.
    pub fn commit<'a>(
        &self,
        seq: u64,
        written: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    ) {
        let mut c = self.lock();
        for (k, v) in written {
            // Removed first: an insert the cache declines must not leave the old value.
            c.entries.remove(k.as_slice());
            c.entries.insert(k.clone(), (v.clone(), seq));
        }
        c.latest = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_views_at_least_as_new_as_the_filler_and_forgets_written_keys() {
        let c = ReadCache::new(1);
        let v = |s: &str| Some(s.as_bytes().to_vec());
        // Only the latest commit's views fill.
        c.fill(b"k", &v("old view"), 0);
        assert_eq!(c.get(b"k", 1), None);
        c.fill(b"k", &v("a"), 1);
        assert_eq!(c.get(b"k", 1), Some(v("a")));
        assert_eq!(
            c.get(b"k", 0),
            None,
            "an older view may not see a newer fill"
        );
        // A commit not writing k keeps it; views of it are served.
        let (other, k) = (b"other".to_vec(), b"k".to_vec());
        c.commit(2, [(&other, &v("x"))].into_iter());
        assert_eq!(c.get(b"k", 2), Some(v("a")));
        // A commit writing k holds its value for its own views and later ones
        // only, and a lagging view cannot put the old value back.
        c.commit(3, [(&k, &v("b"))].into_iter());
        assert_eq!(c.get(b"k", 3), Some(v("b")));
        assert_eq!(c.get(b"k", 2), None);
        c.fill(b"k", &v("a"), 2);
        assert_eq!(c.get(b"k", 3), Some(v("b")));
        // Absence is a value too.
        c.commit(4, [(&k, &None)].into_iter());
        assert_eq!(c.get(b"k", 4), Some(None));
        // A value too large to keep leaves no older one behind.
        let huge = Some(vec![0; CAPACITY_BYTES as usize + 1]);
        c.commit(5, [(&k, &huge)].into_iter());
        assert_eq!(c.get(b"k", 5), None);
    }
}
