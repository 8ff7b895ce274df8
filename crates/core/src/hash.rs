//! SHA-256, the one hash of the ledger, the state tree and transaction ids.
//!
//! ring's implementation is used rather than the sha2 crate's: its assembly
//! picks the best code the CPU allows at run time (SHA extensions, AVX), and
//! on the 2-core test machine (AVX, no SHA extensions) it hashes the 80-byte
//! state-tree nodes about 1.4 times as fast. Outputs are plain SHA-256 either way.

use crate::merkle::Hash;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    to_hash(ring::digest::digest(&ring::digest::SHA256, data))
}

/// An incremental SHA-256, also the state tree's hasher (jmt's `SimpleHasher`).
#[derive(Clone)]
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn chain(mut self, data: &[u8]) -> Self {
        self.update(data);
        self
    }

    pub fn finish(self) -> Hash {
        to_hash(self.0.finish())
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl jmt::SimpleHasher for Sha256 {
    fn new() -> Self {
        Sha256::new()
    }

    fn update(&mut self, data: &[u8]) {
        Sha256::update(self, data);
    }

    fn finalize(self) -> [u8; 32] {
        self.finish()
    }
}

fn to_hash(d: ring::digest::Digest) -> Hash {
    d.as_ref().try_into().expect("SHA-256 output is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn agrees_with_the_sha2_crate() {
        for len in [0, 1, 55, 56, 63, 64, 65, 80, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let want: Hash = sha2::Sha256::digest(&data).into();
            assert_eq!(sha256(&data), want, "length {len}");
            let (a, b) = data.split_at(len / 3);
            assert_eq!(Sha256::new().chain(a).chain(b).finish(), want);
            assert_eq!(<Sha256 as jmt::SimpleHasher>::hash(&data), want);
        }
    }
}
