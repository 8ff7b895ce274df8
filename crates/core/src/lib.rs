//! Comity's pure core: everything a client, a node and an offline auditor share.
//!
//! Nothing in this crate performs I/O, so an auditor can verify receipts and
//! replay proofs with this crate alone.

pub mod batch_verify;
pub mod cbor;
pub mod checkpoint;
pub mod crypto;
pub mod entry;
pub mod hash;
pub mod merkle;
pub mod network;
pub mod receipt;
pub mod recovery;
pub mod state;
pub mod tx;

pub use merkle::Hash;
