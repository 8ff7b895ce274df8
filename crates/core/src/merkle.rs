//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and verification.
//!
//! Roots and proofs are built from a [`SubtreeSource`] of full, aligned subtree hashes, so a
//! disk store answers any of them in O(log n) lookups instead of rehashing leaves.

use crate::hash::Sha256;
use thiserror::Error;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the domain prefix keeps a leaf from ever posing as an interior node.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new().chain(&[0]).chain(data).finish()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain(&[1]).chain(left).chain(right).finish()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    crate::hash::sha256(b"")
}

/// Storage of full, aligned subtree hashes: level 0 holds leaf hashes and level `k`, index `i`
/// the hash of leaves `[i << k, (i + 1) << k)`. Only subtrees complete within the tree's
/// current size are ever asked for.
pub trait SubtreeSource {
    type Error: std::fmt::Display;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError<E> {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("invalid consistency sizes: old {old}, new {new} (need 0 < old <= new)")]
    BadSizes { old: u64, new: u64 },
    #[error("subtree store: {0}")]
    Store(E),
}

/// Why a proof was rejected; the message is meant to be shown to an auditor as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("invalid consistency sizes: old {old}, new {new} (need 0 < old <= new)")]
    BadSizes { old: u64, new: u64 },
    #[error("proof has {got} hashes, expected {expected}")]
    WrongProofLength { got: usize, expected: usize },
    #[error("computed root {} does not match expected {}", hex::encode(.computed), hex::encode(.expected))]
    RootMismatch { computed: Hash, expected: Hash },
    #[error("computed old root {} does not match expected {}", hex::encode(.computed), hex::encode(.expected))]
    OldRootMismatch { computed: Hash, expected: Hash },
    #[error("computed new root {} does not match expected {}", hex::encode(.computed), hex::encode(.expected))]
    NewRootMismatch { computed: Hash, expected: Hash },
    #[error("trees of equal size {size} have different roots {} and {}", hex::encode(.old_root), hex::encode(.new_root))]
    EqualSizeRootsDiffer {
        size: u64,
        old_root: Hash,
        new_root: Hash,
    },
}

/// Largest power of two strictly below `n` (the RFC's `k`); requires `n >= 2`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)`: one full subtree per set bit of the length, folded from the
/// right. Callers only split at the RFC's `k`, which keeps every piece aligned.
fn range_hash<S: SubtreeSource>(s: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let (len, mut right_end, mut acc) = (end - start, end, None::<Hash>);
    for level in (0..64).filter(|l| len >> l & 1 == 1) {
        let lo = right_end - (1 << level);
        let h = s.subtree(level, lo >> level)?;
        acc = Some(acc.map_or(h, |r| node_hash(&h, &r)));
        right_end = lo;
    }
    Ok(acc.unwrap_or_else(empty_root))
}

/// MTH of the first `size` leaves.
pub fn root<S: SubtreeSource>(s: &S, size: u64) -> Result<Hash, S::Error> {
    range_hash(s, 0, size)
}

/// RFC 9162 2.1.3.1 `PATH(index, D[size])`, deepest sibling first.
pub fn inclusion_proof<S: SubtreeSource>(
    s: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut lo, mut hi, mut path) = (0, size, Vec::new());
    while hi - lo > 1 {
        let mid = lo + split(hi - lo);
        if index < mid {
            path.push(range_hash(s, mid, hi).map_err(ProofError::Store)?);
            hi = mid;
        } else {
            path.push(range_hash(s, lo, mid).map_err(ProofError::Store)?);
            lo = mid;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 2.1.4.1 `PROOF(old, D[new])`; empty when `old == new`.
pub fn consistency_proof<S: SubtreeSource>(
    s: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    // `m` is how many old leaves lie in `[lo, hi)`; `whole` is the RFC's flag `b`, true while
    // the old tree is a prefix subtree whose root the verifier already has.
    let (mut lo, mut hi, mut m, mut whole, mut proof) = (0, new, old, true, Vec::new());
    while m < hi - lo {
        let mid = lo + split(hi - lo);
        if m <= mid - lo {
            proof.push(range_hash(s, mid, hi).map_err(ProofError::Store)?);
            hi = mid;
        } else {
            proof.push(range_hash(s, lo, mid).map_err(ProofError::Store)?);
            m -= mid - lo;
            lo = mid;
            whole = false;
        }
    }
    if !whole {
        proof.push(range_hash(s, lo, hi).map_err(ProofError::Store)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Walks the RFC 9162 verification loop from node `f` of a tree whose last node is `s`,
/// telling `visit` whether each successive proof hash sits left of the running hash.
/// Returns how many proof hashes the shape consumes, so lengths can be checked up front.
fn walk(mut f: u64, mut s: u64, mut visit: impl FnMut(bool)) -> usize {
    let mut steps = 0;
    while s > 0 {
        let left = f & 1 == 1 || f == s;
        visit(left);
        if left {
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        }
        f >>= 1;
        s >>= 1;
        steps += 1;
    }
    steps
}

fn check_len(got: usize, expected: usize) -> Result<(), VerifyError> {
    if got == expected {
        Ok(())
    } else {
        Err(VerifyError::WrongProofLength { got, expected })
    }
}

/// RFC 9162 2.1.3.2: checks that `leaf` sits at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    check_len(proof.len(), walk(index, size - 1, |_| {}))?;
    let (mut r, mut it) = (*leaf, proof.iter());
    walk(index, size - 1, |left| {
        if let Some(p) = it.next() {
            r = if left {
                node_hash(p, &r)
            } else {
                node_hash(&r, p)
            };
        }
    });
    if r == *root {
        Ok(())
    } else {
        Err(VerifyError::RootMismatch {
            computed: r,
            expected: *root,
        })
    }
}

/// RFC 9162 2.1.4.2: checks that the tree of size `old` is a prefix of the one of size `new`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old == 0 || old > new {
        return Err(VerifyError::BadSizes { old, new });
    }
    if old == new {
        check_len(proof.len(), 0)?;
        if old_root != new_root {
            return Err(VerifyError::EqualSizeRootsDiffer {
                size: old,
                old_root: *old_root,
                new_root: *new_root,
            });
        }
        return Ok(());
    }
    // A power-of-two old tree is a full subtree of the new one, so the RFC prepends its root
    // instead of sending it.
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let implied = old.is_power_of_two();
    let expected = 1 + walk(f, s, |_| {}) - usize::from(implied);
    check_len(proof.len(), expected)?;
    let mut path = implied.then_some(old_root).into_iter().chain(proof);
    let Some(&first) = path.next() else {
        return Err(VerifyError::WrongProofLength { got: 0, expected });
    };
    let (mut fr, mut sr) = (first, first);
    walk(f, s, |left| {
        if let Some(c) = path.next() {
            if left {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
            } else {
                sr = node_hash(&sr, c);
            }
        }
    });
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(VerifyError::NewRootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

/// A [`MemTree`] was asked for a subtree it does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("no complete subtree at level {level}, index {index}")]
pub struct MissingSubtree {
    pub level: u32,
    pub index: u64,
}

/// Every complete subtree in memory: the reference store for tests, offline auditors and replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemTree {
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash and every subtree it completes.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut h = leaf_hash;
        for level in 0.. {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(h);
            if row.len() % 2 == 1 {
                break;
            }
            h = node_hash(&row[row.len() - 2], &h);
        }
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn root(&self) -> Hash {
        root(self, self.len()).expect("MemTree holds every complete subtree")
    }

    /// `levels()[k][i]` is the hash of leaves `[i << k, (i + 1) << k)`.
    pub fn levels(&self) -> &[Vec<Hash>] {
        &self.levels
    }
}

impl SubtreeSource for MemTree {
    type Error = MissingSubtree;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, MissingSubtree> {
        let row = self.levels.get(level as usize);
        let i = usize::try_from(index).ok();
        row.zip(i)
            .and_then(|(row, i)| row.get(i).copied())
            .ok_or(MissingSubtree { level, index })
    }
}

/// A [`Frontier`] already holds `u64::MAX` leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("tree is full: it already holds u64::MAX leaves")]
pub struct TreeFull;

/// The tree's right edge: one complete subtree per set bit of the size, largest first.
/// Enough to append and compute the root without any store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the edge of the first `size` leaves from a store in O(log n) lookups.
    pub fn from_source<S: SubtreeSource>(s: &S, size: u64) -> Result<Self, S::Error> {
        let mut start = 0;
        let mut peaks = Vec::with_capacity(size.count_ones() as usize);
        for level in (0..64).rev().filter(|l| size >> l & 1 == 1) {
            peaks.push(s.subtree(level, start >> level)?);
            start += 1 << level;
        }
        Ok(Self { size, peaks })
    }

    /// Appends a leaf hash, returning every newly completed subtree as `(level, index, hash)`
    /// in increasing level (the leaf itself first), ready to append to per-level files.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<Vec<(u32, u64, Hash)>, TreeFull> {
        let size = self.size.checked_add(1).ok_or(TreeFull)?;
        let (mut h, mut done) = (leaf_hash, vec![(0, self.size, leaf_hash)]);
        for level in 1..64 {
            if self.size >> (level - 1) & 1 == 0 {
                break;
            }
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            done.push((level, (size >> level) - 1, h));
        }
        self.peaks.push(h);
        self.size = size;
        Ok(done)
    }

    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(last, |acc, p| node_hash(p, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Leaf `i` holds the single byte `i`, as in the KAT script.
    fn byte_tree(n: u8) -> MemTree {
        let mut t = MemTree::new();
        (0..n).for_each(|i| t.push(leaf_hash(&[i])));
        t
    }

    /// Leaf `i` holds `i` as 8 big-endian bytes, so all leaves differ.
    fn tree(n: u64) -> MemTree {
        let mut t = MemTree::new();
        (0..n).for_each(|i| t.push(leaf_hash(&i.to_be_bytes())));
        t
    }

    fn flip(mut x: Hash, bit: usize) -> Hash {
        x[bit / 8] ^= 1 << (bit % 8);
        x
    }

    fn k_of(n: u64) -> u64 {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// Root implied by an inclusion proof, straight from the recursive RFC 9162 PATH definition.
    fn ref_inclusion_root(m: u64, n: u64, leaf: Hash, proof: &[Hash]) -> Option<Hash> {
        if n == 1 {
            return proof.is_empty().then_some(leaf);
        }
        let (last, rest) = proof.split_last()?;
        let k = k_of(n);
        Some(if m < k {
            node_hash(&ref_inclusion_root(m, k, leaf, rest)?, last)
        } else {
            node_hash(last, &ref_inclusion_root(m - k, n - k, leaf, rest)?)
        })
    }

    fn ref_accepts_inclusion(leaf: Hash, m: u64, n: u64, proof: &[Hash], root: Hash) -> bool {
        m < n && ref_inclusion_root(m, n, leaf, proof) == Some(root)
    }

    /// (old root, new root) implied by a consistency proof, from the recursive SUBPROOF definition.
    fn ref_consistency(m: u64, n: u64, b: bool, old: Hash, proof: &[Hash]) -> Option<(Hash, Hash)> {
        if m == n {
            return match (b, proof) {
                (true, []) => Some((old, old)),
                (false, [x]) => Some((*x, *x)),
                _ => None,
            };
        }
        let (last, rest) = proof.split_last()?;
        let k = k_of(n);
        if m <= k {
            let (o, nw) = ref_consistency(m, k, b, old, rest)?;
            Some((o, node_hash(&nw, last)))
        } else {
            let (o, nw) = ref_consistency(m - k, n - k, false, old, rest)?;
            Some((node_hash(last, &o), node_hash(last, &nw)))
        }
    }

    fn ref_accepts_consistency(m: u64, n: u64, old: Hash, new: Hash, proof: &[Hash]) -> bool {
        0 < m && m <= n && ref_consistency(m, n, true, old, proof) == Some((old, new))
    }

    // Expected values come from an independent Python 3 (hashlib) implementation of the
    // recursive RFC 9162 MTH / PATH / PROOF definitions, with leaf i = bytes([i]).
    const KAT_ROOTS: [(u8, &str); 8] = [
        (
            0,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            1,
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        ),
        (
            2,
            "a20bf9a7cc2dc8a08f5f415a71b19f6ac427bab54d24eec868b5d3103449953a",
        ),
        (
            3,
            "3b6cccd7e3e023ff393006f030315ee7ad9eb111b022b41fba7e5b7a3973f688",
        ),
        (
            5,
            "b855b42d6c30f5b087e05266783fbd6e394f7b926013ccaa67700a8b0c5a596f",
        ),
        (
            7,
            "3560191803028444b232018ac047fdb561c09c23a7a6876c85e08b5e4d48e9f3",
        ),
        (
            8,
            "ef7f49b620f6c7ea9b963a214da34b5021c6ded8ed57734380a311ab726aa907",
        ),
        (
            13,
            "df5ee130e5a247600d190c31074458de3c0dc58f0b0d8a6a2b3dd4fd7e569501",
        ),
    ];
    const ROOT_4: &str = "9bcd51240af4005168f033121ba85be5a6ed4f0e6a5fac262066729b8fbfdecb";

    fn kat_root(n: u8) -> Hash {
        match n {
            4 => h(ROOT_4),
            _ => h(KAT_ROOTS.iter().find(|(s, _)| *s == n).unwrap().1),
        }
    }

    #[test]
    fn kat_roots() {
        assert_eq!(hex::encode(empty_root()), KAT_ROOTS[0].1);
        for n in (0..=13).filter(|n| *n == 4 || KAT_ROOTS.iter().any(|(s, _)| s == n)) {
            let t = byte_tree(n);
            assert_eq!(t.root(), kat_root(n), "size {n}");
            let mut f = Frontier::new();
            (0..n).for_each(|i| drop(f.push(leaf_hash(&[i])).unwrap()));
            assert_eq!(f.root(), kat_root(n), "frontier size {n}");
        }
    }

    #[test]
    fn kat_inclusion() {
        let cases: [(u8, u8, &[&str]); 3] = [
            (
                4,
                13,
                &[
                    "9f1afa4dc124cba73134e82ff50f17c8f7164257c79fed9a13f5943a6acb8e3d",
                    "bbb0feb32f648c73fe170518bcec1f675af1b780dc23d6fbf30b745c1ca5fa11",
                    "9bcd51240af4005168f033121ba85be5a6ed4f0e6a5fac262066729b8fbfdecb",
                    "cc7376d91fe7b67209b305915b21ab4a0f0070b40582c74ec402e8074912a51d",
                ],
            ),
            (
                12,
                13,
                &[
                    "4e2757c82865d7d2cc00fed50a28e94713285335d78cd6f31d3fe84f11ae0e66",
                    "ef7f49b620f6c7ea9b963a214da34b5021c6ded8ed57734380a311ab726aa907",
                ],
            ),
            (0, 1, &[]),
        ];
        let t = byte_tree(13);
        for (m, n, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(inclusion_proof(&t, m.into(), n.into()).unwrap(), want);
            let leaf = leaf_hash(&[m]);
            verify_inclusion(&leaf, m.into(), n.into(), &want, &kat_root(n)).unwrap();
        }
    }

    #[test]
    fn kat_consistency() {
        let cases: [(u8, u8, &[&str]); 3] = [
            (
                5,
                13,
                &[
                    "4f35212d12f9ad2036492c95f1fe79baf4ec7bd9bef3dffa7579f2293ff546a4",
                    "9f1afa4dc124cba73134e82ff50f17c8f7164257c79fed9a13f5943a6acb8e3d",
                    "bbb0feb32f648c73fe170518bcec1f675af1b780dc23d6fbf30b745c1ca5fa11",
                    "9bcd51240af4005168f033121ba85be5a6ed4f0e6a5fac262066729b8fbfdecb",
                    "cc7376d91fe7b67209b305915b21ab4a0f0070b40582c74ec402e8074912a51d",
                ],
            ),
            (
                4,
                13,
                &[
                    "c1fe42b33ebb8e8a7e4a90abc481c7434e2be02cff2f6a18d7ffab4f1e25891b",
                    "cc7376d91fe7b67209b305915b21ab4a0f0070b40582c74ec402e8074912a51d",
                ],
            ),
            (
                3,
                7,
                &[
                    "fcf0a6c700dd13e274b6fba8deea8dd9b26e4eedde3495717cac8408c9c5177f",
                    "583c7dfb7b3055d99465544032a571e10a134b1b6f769422bbb71fd7fa167a5d",
                    "a20bf9a7cc2dc8a08f5f415a71b19f6ac427bab54d24eec868b5d3103449953a",
                    "89c929834ed1459b07f65b5e1a2143a8cf5d8efdf30f49ffffa328bb1d9133bb",
                ],
            ),
        ];
        let t = byte_tree(13);
        for (m, n, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(consistency_proof(&t, m.into(), n.into()).unwrap(), want);
            verify_consistency(m.into(), n.into(), &kat_root(m), &kat_root(n), &want).unwrap();
        }
    }

    /// Every proof for every index / old size of small trees verifies and matches the RFC
    /// definitions; proptest below samples larger trees.
    #[test]
    fn exhaustive_small_trees() {
        let t = tree(70);
        for n in 1..=70 {
            let root_n = root(&t, n).unwrap();
            for m in 0..n {
                let p = inclusion_proof(&t, m, n).unwrap();
                let leaf = t.levels()[0][m as usize];
                verify_inclusion(&leaf, m, n, &p, &root_n).unwrap();
                assert!(ref_accepts_inclusion(leaf, m, n, &p, root_n));
                let old = root(&t, m + 1).unwrap();
                let c = consistency_proof(&t, m + 1, n).unwrap();
                verify_consistency(m + 1, n, &old, &root_n, &c).unwrap();
                assert!(ref_accepts_consistency(m + 1, n, old, root_n, &c));
            }
        }
    }

    proptest! {
        #[test]
        fn inclusion_verifies_and_binds(size in 1u64..=300, seed: u64, bit in 0usize..256) {
            let t = tree(size);
            let (index, root) = (seed % size, t.root());
            let leaf = t.levels()[0][index as usize];
            let proof = inclusion_proof(&t, index, size).unwrap();
            prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
            prop_assert!(ref_accepts_inclusion(leaf, index, size, &proof, root));
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(bad[i], bit);
                prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
            }
            prop_assert!(verify_inclusion(&flip(leaf, bit), index, size, &proof, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &flip(root, bit)).is_err());
            for i in [index.wrapping_sub(1), index + 1] {
                prop_assert!(verify_inclusion(&leaf, i, size, &proof, &root).is_err());
            }
            // A proof can also be valid for a neighbouring size when the tree shapes agree
            // (e.g. leaf 0 of sizes 3 and 4); RFC 9162 cannot tell those apart, so the only
            // correct demand is agreement with the recursive definition.
            for n in [size - 1, size + 1] {
                let ours = verify_inclusion(&leaf, index, n, &proof, &root).is_ok();
                prop_assert_eq!(ours, ref_accepts_inclusion(leaf, index, n, &proof, root));
            }
        }

        #[test]
        fn consistency_verifies_and_binds(new in 1u64..=300, seed: u64, bit in 0usize..256) {
            let t = tree(new);
            let old = 1 + seed % new;
            let (old_root, new_root) = (root(&t, old).unwrap(), t.root());
            let proof = consistency_proof(&t, old, new).unwrap();
            prop_assert_eq!(proof.is_empty(), old == new);
            prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));
            prop_assert!(ref_accepts_consistency(old, new, old_root, new_root, &proof));
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(bad[i], bit);
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            }
            let (bad_old, bad_new) = (flip(old_root, bit), flip(new_root, bit));
            prop_assert!(verify_consistency(old, new, &bad_old, &new_root, &proof).is_err());
            prop_assert!(verify_consistency(old, new, &old_root, &bad_new, &proof).is_err());
            for (m, n) in [(old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1)] {
                let ours = verify_consistency(m, n, &old_root, &new_root, &proof).is_ok();
                prop_assert_eq!(ours, ref_accepts_consistency(m, n, old_root, new_root, &proof));
            }
        }

        #[test]
        fn verify_never_panics(index: u64, size: u64, old: u64, n in 0usize..70, seed: u8) {
            let proof: Vec<Hash> = (0..n).map(|i| [seed ^ i as u8; 32]).collect();
            let x = [seed; 32];
            let _ = verify_inclusion(&x, index, size, &proof, &x);
            let _ = verify_inclusion(&x, index % size.max(1), size, &proof, &x);
            let _ = verify_consistency(old, size, &x, &x, &proof);
            let _ = verify_consistency(old % size.max(1) + 1, size, &x, &x, &proof);
        }
    }

    #[test]
    fn frontier_matches_memtree() {
        let (mut t, mut f) = (MemTree::new(), Frontier::new());
        let mut reported: Vec<Vec<Hash>> = Vec::new();
        assert_eq!(f.root(), t.root());
        for i in 0..1100u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            t.push(leaf);
            for (level, index, hash) in f.push(leaf).unwrap() {
                let row = level as usize;
                reported.resize(reported.len().max(row + 1), Vec::new());
                assert_eq!(
                    index,
                    reported[row].len() as u64,
                    "level {level} out of order"
                );
                reported[row].push(hash);
            }
            assert_eq!((f.len(), f.root()), (t.len(), t.root()), "size {}", i + 1);
            assert_eq!(Frontier::from_source(&t, t.len()).unwrap(), f);
        }
        assert_eq!(reported, t.levels());
    }

    /// 2^k identical leaves: a consistent store of any size, for sizes near `u64::MAX`.
    /// Counts lookups so the O(log n) promise is checked too.
    struct Uniform {
        levels: Vec<Hash>,
        calls: Cell<usize>,
    }

    impl Uniform {
        fn new() -> Self {
            let mut levels = vec![leaf_hash(b"x")];
            (1..64).for_each(|l| levels.push(node_hash(&levels[l - 1], &levels[l - 1])));
            Self {
                levels,
                calls: Cell::new(0),
            }
        }
        fn take_calls(&self) -> usize {
            self.calls.replace(0)
        }
    }

    impl SubtreeSource for Uniform {
        type Error = MissingSubtree;
        fn subtree(&self, level: u32, _index: u64) -> Result<Hash, MissingSubtree> {
            self.calls.set(self.calls.get() + 1);
            Ok(self.levels[level as usize])
        }
    }

    #[test]
    fn huge_trees_without_overflow() {
        let u = Uniform::new();
        let leaf = u.levels[0];
        for size in [
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            (1 << 63) + 1,
            (1 << 63) - 1,
        ] {
            u.take_calls();
            let r = root(&u, size).unwrap();
            assert!(u.take_calls() <= 64);
            for index in [0, size / 2, size - 2, size - 1] {
                let p = inclusion_proof(&u, index, size).unwrap();
                assert!(u.take_calls() <= 128, "inclusion {index}/{size}");
                verify_inclusion(&leaf, index, size, &p, &r).unwrap();
            }
            for old in [1, 2, 3, size / 2, size - 1, size] {
                let old_root = root(&u, old).unwrap();
                u.take_calls();
                let p = consistency_proof(&u, old, size).unwrap();
                assert!(u.take_calls() <= 192, "consistency {old}/{size}");
                verify_consistency(old, size, &old_root, &r, &p).unwrap();
            }
        }
        let mut f = Frontier::from_source(&u, u64::MAX - 1).unwrap();
        f.push(leaf).unwrap();
        assert_eq!((f.len(), f.root()), (u64::MAX, root(&u, u64::MAX).unwrap()));
        assert_eq!(f.push(leaf), Err(TreeFull));
        let max = u64::MAX;
        let err = verify_inclusion(&leaf, max, max, &[], &leaf).unwrap_err();
        assert_eq!(
            err,
            VerifyError::IndexOutOfRange {
                index: max,
                size: max
            }
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let t = tree(5);
        let r = t.root();
        let leaf = t.levels()[0][0];
        assert_eq!(
            inclusion_proof(&t, 0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            inclusion_proof(&t, 5, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            consistency_proof(&t, 0, 5),
            Err(ProofError::BadSizes { old: 0, new: 5 })
        );
        assert_eq!(
            consistency_proof(&t, 6, 5),
            Err(ProofError::BadSizes { old: 6, new: 5 })
        );
        assert_eq!(consistency_proof(&t, 5, 5), Ok(vec![]));
        assert_eq!(
            inclusion_proof(&t, 0, 9),
            Err(ProofError::Store(MissingSubtree { level: 0, index: 8 }))
        );
        assert!(matches!(
            verify_inclusion(&leaf, 0, 0, &[], &r),
            Err(VerifyError::IndexOutOfRange { .. })
        ));
        assert!(verify_inclusion(&leaf, 5, 5, &[], &r).is_err());
        assert!(verify_consistency(0, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(6, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(0, 0, &r, &r, &[]).is_err());
        verify_consistency(5, 5, &r, &r, &[]).unwrap();
        assert_eq!(
            verify_consistency(5, 5, &r, &r, &[r]),
            Err(VerifyError::WrongProofLength {
                got: 1,
                expected: 0
            })
        );
        assert!(matches!(
            verify_consistency(5, 5, &r, &leaf, &[]),
            Err(VerifyError::EqualSizeRootsDiffer { size: 5, .. })
        ));
    }

    /// Documents an RFC 9162 property the proptests allow for: the size-3 root is also what a
    /// size-4 path computes from leaf 0's size-3 proof, so the size is only bound via the root.
    #[test]
    fn neighbouring_size_can_share_a_proof() {
        let t = tree(3);
        let p = inclusion_proof(&t, 0, 3).unwrap();
        verify_inclusion(&t.levels()[0][0], 0, 4, &p, &t.root()).unwrap();
    }

    #[test]
    fn error_messages_are_precise() {
        let e = VerifyError::IndexOutOfRange { index: 5, size: 3 };
        assert_eq!(e.to_string(), "index 5 is not below tree size 3");
        let t = tree(3);
        let leaf = t.levels()[0][0];
        let p = inclusion_proof(&t, 0, 3).unwrap();
        let mut long = p.clone();
        long.push(leaf);
        let e = verify_inclusion(&leaf, 0, 3, &long, &t.root()).unwrap_err();
        assert_eq!(e.to_string(), "proof has 3 hashes, expected 2");
        let e = verify_inclusion(&leaf, 0, 3, &p, &[0; 32]).unwrap_err();
        let computed = hex::encode(t.root());
        let want = format!(
            "computed root {computed} does not match expected {}",
            "00".repeat(32)
        );
        assert_eq!(e.to_string(), want);
    }
}
