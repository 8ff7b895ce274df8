//! Comity storage: the permanent ledger, its Merkle tree on disk, and state.

pub mod dirs;
mod key_filter;
mod layers;
mod node_cache;
mod read_cache;
pub mod segments;
pub mod state;
pub mod tree;
mod value_history;

pub use segments::{LedgerFiles, OpenReport, SegmentError};
pub use state::{Commit, Reader, Store, StoreError, StoreOptions, Txn, WriteBatch};
