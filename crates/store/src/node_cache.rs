//! A bounded cache of state-tree nodes, by their encoded node key.
//!
//! Each state-tree version reads the nodes on the paths to the keys it
//! changes, and the upper levels of the tree are on every path; without the
//! cache each of those reads searched the write-behind layers and then the
//! database. A node key names a version, and nodes are never rewritten, so
//! an entry stays true for as long as the node exists: nothing needs the
//! care the state read cache takes over views of different ages. Commits
//! write their new nodes through (the next version reads them first) and
//! remove the nodes they prune; a version removes the nodes it replaces,
//! which only proofs at older versions still read. Reads fill it, even from
//! a step's own uncommitted nodes: the bytes under a node key are computed
//! once, from committed history, so no other bytes can ever be stored under
//! it.

use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// Memory the cache holds by default. The top four levels of a tree of a million
/// keys (4,369 internal nodes of up to 16 children) take a few MiB; the rest
/// holds leaves, about 150 bytes each as weighed below. A write reads the
/// leaf it replaces or splits, and a missed leaf is a database search: at
/// 32 MiB those searches took over a third of the state-tree thread once a
/// network held a few hundred thousand keys.
pub const DEFAULT_CAPACITY_BYTES: u64 = 128 << 20;

/// Bytes the cache weighs a typical leaf at, to size it at first.
const LEAF_BYTES: u64 = 150;

#[derive(Clone)]
struct Size;

impl Weighter<Vec<u8>, Vec<u8>> for Size {
    fn weight(&self, key: &Vec<u8>, value: &Vec<u8>) -> u64 {
        (key.len() + value.len() + 64) as u64
    }
}

pub(crate) struct NodeCache(Cache<Vec<u8>, Vec<u8>, Size>);

impl NodeCache {
    /// A cache holding at most `capacity_bytes` of nodes as weighed here.
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = usize::try_from(capacity_bytes / LEAF_BYTES).unwrap_or(usize::MAX);
        Self(Cache::with_weighter(entries.max(1), capacity_bytes, Size))
    }

    /// The encoded node stored under the encoded node key `key`, if cached.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    pub fn insert(&self, key: &[u8], node: &[u8]) {
        self.0.insert(key.to_vec(), node.to_vec());
    }

    /// Forgets a node the current tree no longer uses.
    pub fn remove(&self, key: &[u8]) {
        self.0.remove(key);
    }

    /// Applies a commit's node writes and deletions.
    pub fn commit<'a>(&self, changes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>) {
        for (k, v) in changes {
            match v {
                Some(node) => self.insert(k, node),
                None => self.remove(k),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_write_nodes_through_and_remove_pruned_ones() {
        let c = NodeCache::new(DEFAULT_CAPACITY_BYTES);
        let (a, b) = (b"node a".to_vec(), b"node b".to_vec());
        c.insert(&a, b"old a");
        c.commit([(&a, &None), (&b, &Some(b"bytes of b".to_vec()))].into_iter());
        assert_eq!(c.get(&a), None);
        assert_eq!(c.get(&b).as_deref(), Some(b"bytes of b".as_slice()));
    }
}
