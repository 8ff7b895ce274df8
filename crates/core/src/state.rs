//! Proofs about application state against a checkpoint's state root.
//!
//! The state tree is a Jellyfish Merkle tree (jmt, SHA-256) keyed by
//! SHA-256 of the state key; proofs are jmt `SparseMerkleProof`s, borsh-encoded.

use crate::hash::Sha256;
use crate::merkle::Hash;
use jmt::proof::SparseMerkleProof;
use jmt::{KeyHash, RootHash};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateProofError {
    #[error("malformed state proof: {0}")]
    Malformed(String),
    #[error("state proof does not verify against the state root: {0}")]
    Invalid(String),
}

/// Checks that `key` has `value` (or is absent, for `None`) under `root`.
pub fn verify(
    root: &Hash,
    key: &[u8],
    value: Option<&[u8]>,
    proof: &[u8],
) -> Result<(), StateProofError> {
    let proof: SparseMerkleProof<Sha256> =
        borsh::from_slice(proof).map_err(|e| StateProofError::Malformed(e.to_string()))?;
    proof
        .verify(RootHash(*root), KeyHash::with::<Sha256>(key), value)
        .map_err(|e| StateProofError::Invalid(e.to_string()))
}
