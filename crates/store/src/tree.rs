//! The ledger's Merkle tree on disk: one append-only file of 32-byte hashes
//! per level (level 0 = leaf hashes, level k = complete subtrees of 2^k leaves).
//!
//! Proofs read O(log n) hashes from these files, so memory stays bounded by
//! the write buffers. The files are derived data: they are rebuilt from the
//! ledger segments at start-up and never need an fsync.

use comity_core::merkle::{self, Frontier, Hash, SubtreeSource};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Unflushed hashes per level before they are written out.
const FLUSH_AT: usize = 2048;

struct Level {
    file: File,
    path: PathBuf,
    flushed: u64,
    pending: Vec<Hash>,
}

pub struct TreeFiles {
    dir: PathBuf,
    levels: Vec<Level>,
    frontier: Frontier,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("tree file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tree subtree ({level}, {index}) is not stored")]
    Missing { level: u32, index: u64 },
    #[error("tree is full")]
    Full,
}

impl TreeFiles {
    /// Starts an empty tree in `dir`, deleting any previous level files.
    pub fn create(dir: &Path) -> Result<Self, TreeError> {
        let io = |source| TreeError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io)?;
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(TreeFiles {
            dir: dir.to_path_buf(),
            levels: Vec::new(),
            frontier: Frontier::new(),
        })
    }

    fn level(&mut self, k: u32) -> Result<&mut Level, TreeError> {
        while self.levels.len() <= k as usize {
            let path = self
                .dir
                .join(format!("level-{:02}.hashes", self.levels.len()));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| TreeError::Io {
                    path: path.clone(),
                    source,
                })?;
            self.levels.push(Level {
                file,
                path,
                flushed: 0,
                pending: Vec::new(),
            });
        }
        Ok(&mut self.levels[k as usize])
    }

    pub fn push(&mut self, leaf: Hash) -> Result<(), TreeError> {
        for (k, _index, hash) in self.frontier.push(leaf).map_err(|_| TreeError::Full)? {
            let level = self.level(k)?;
            level.pending.push(hash);
            if level.pending.len() >= FLUSH_AT {
                flush_level(level)?;
            }
        }
        Ok(())
    }

    /// Writes buffered hashes to the OS (no fsync: the tree is derived data).
    pub fn flush(&mut self) -> Result<(), TreeError> {
        self.levels.iter_mut().try_for_each(flush_level)
    }

    pub fn len(&self) -> u64 {
        self.frontier.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        merkle::root(self, size)
    }
}

fn flush_level(level: &mut Level) -> Result<(), TreeError> {
    if level.pending.is_empty() {
        return Ok(());
    }
    let bytes: Vec<u8> = level.pending.iter().flatten().copied().collect();
    (&level.file)
        .write_all(&bytes)
        .map_err(|source| TreeError::Io {
            path: level.path.clone(),
            source,
        })?;
    level.flushed += level.pending.len() as u64;
    level.pending.clear();
    Ok(())
}

impl SubtreeSource for TreeFiles {
    type Error = TreeError;

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, TreeError> {
        let missing = || TreeError::Missing { level, index };
        let l = self.levels.get(level as usize).ok_or_else(missing)?;
        if index >= l.flushed {
            let i = usize::try_from(index - l.flushed).map_err(|_| missing())?;
            return l.pending.get(i).copied().ok_or_else(missing);
        }
        let mut h = [0u8; 32];
        l.file
            .read_exact_at(&mut h, index * 32)
            .map_err(|source| TreeError::Io {
                path: l.path.clone(),
                source,
            })?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::merkle::{leaf_hash, MemTree};

    #[test]
    fn matches_memory_tree_and_serves_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TreeFiles::create(&dir.path().join("tree")).unwrap();
        let mut m = MemTree::new();
        for i in 0..5000u32 {
            let h = leaf_hash(&i.to_be_bytes());
            t.push(h).unwrap();
            m.push(h);
            if i % 997 == 0 {
                t.flush().unwrap();
            }
        }
        assert_eq!(t.root(), m.root());
        for size in [1u64, 2, 3, 1000, 2049, 4096, 5000] {
            assert_eq!(t.root_at(size).unwrap(), merkle::root(&m, size).unwrap());
            let p = merkle::inclusion_proof(&t, size - 1, size).unwrap();
            merkle::verify_inclusion(
                &leaf_hash(&((size - 1) as u32).to_be_bytes()),
                size - 1,
                size,
                &p,
                &t.root_at(size).unwrap(),
            )
            .unwrap();
        }
        let p = merkle::consistency_proof(&t, 1234, 5000).unwrap();
        merkle::verify_consistency(1234, 5000, &t.root_at(1234).unwrap(), &t.root(), &p).unwrap();
    }
}
