//! An append-only Merkle tree over SHA-256 with the RFC 9162 shape and no domain prefixes: the tree CCF's
//! receipts fold. Proofs can be produced at any past size, which is what receipts for older signatures need.
//!
//! Layout: `levels[h][i - offsets[h]]` is the hash of the complete, aligned subtree over leaves
//! `[i·2^h, (i+1)·2^h)`. Those hashes never change once complete, so `append` is O(1) amortised and any root or
//! path combines O(log n) of them.
//!
//! A tree can start from a *frontier* (the maximal complete subtrees of its first `base` leaves, as a snapshot
//! records them): it then computes every root at sizes `>= base` and proofs for leaves `>= base`, exactly as the
//! full tree would, because every subtree those need that lies left of `base` is a frontier element.

use crate::hash::{sha256_pair, Digest};
use serde::{Deserialize, Serialize};

/// One step of an inclusion proof, from the leaf towards the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    /// True when the sibling is on the left: `acc = sha256(hash ‖ acc)`.
    pub left: bool,
    /// The sibling subtree's hash.
    pub hash: Digest,
}

/// Why a root or path cannot be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The requested tree size is 0 or larger than the tree.
    #[error("tree size {size} out of range (tree has {len} leaves)")]
    SizeOutOfRange {
        /// The requested size.
        size: u64,
        /// The number of leaves.
        len: u64,
    },
    /// The leaf lies before the frontier this tree started from.
    #[error("leaf {index} precedes this tree's base of {base} leaves (it started from a snapshot)")]
    BeforeBase {
        /// The requested index or size.
        index: u64,
        /// The number of leaves the tree started from.
        base: u64,
    },
    /// A frontier that does not match its size.
    #[error("a frontier of {size} leaves has {expected} subtrees, not {got}")]
    BadFrontier {
        /// The size.
        size: u64,
        /// Subtrees expected (set bits of the size).
        expected: u32,
        /// Subtrees given.
        got: usize,
    },
    /// The leaf index is not below the requested size.
    #[error("leaf index {index} not below tree size {size}")]
    IndexOutOfRange {
        /// The requested index.
        index: u64,
        /// The requested size.
        size: u64,
    },
}

/// The append-only tree.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
    /// Global index of `levels[h][0]` (all zero unless the tree started from a frontier).
    offsets: Vec<u64>,
    base: u64,
}

fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// A tree over `size` leaves of which only the frontier is known: `frontier[i]` is the root of the i-th
    /// maximal complete subtree from the left (one per set bit of `size`, largest first).
    pub fn from_frontier(size: u64, frontier: &[Digest]) -> Result<MerkleTree, MerkleError> {
        if frontier.len() != size.count_ones() as usize {
            return Err(MerkleError::BadFrontier {
                size,
                expected: size.count_ones(),
                got: frontier.len(),
            });
        }
        let height = (64 - size.leading_zeros()) as usize;
        let mut tree = MerkleTree {
            levels: vec![Vec::new(); height.max(1)],
            offsets: vec![0; height.max(1)],
            base: size,
        };
        let mut next = frontier.iter();
        for h in (0..height).rev() {
            if size >> h & 1 == 1 {
                tree.offsets[h] = (size >> h) - 1;
                tree.levels[h].push(*next.next().ok_or(MerkleError::BadFrontier {
                    size,
                    expected: size.count_ones(),
                    got: frontier.len(),
                })?);
            } else {
                tree.offsets[h] = size >> h;
            }
        }
        Ok(tree)
    }

    /// The frontier of the current tree (see [`MerkleTree::from_frontier`]).
    pub fn frontier(&self) -> Vec<Digest> {
        self.frontier_at(self.len()).unwrap_or_default()
    }

    /// The frontier of the tree over its first `size` leaves (complete subtrees never change, so it is still here).
    pub fn frontier_at(&self, size: u64) -> Result<Vec<Digest>, MerkleError> {
        if size > self.len() {
            return Err(MerkleError::SizeOutOfRange {
                size,
                len: self.len(),
            });
        }
        if size < self.base {
            return Err(MerkleError::BeforeBase {
                index: size,
                base: self.base,
            });
        }
        (0..64usize)
            .rev()
            .filter(|h| size >> h & 1 == 1)
            .map(|h| {
                self.node(h, (size >> h) - 1).ok_or(MerkleError::BeforeBase {
                    index: size,
                    base: self.base,
                })
            })
            .collect()
    }

    /// Number of leaves the tree started from (0 unless built from a frontier).
    pub fn base(&self) -> u64 {
        self.base
    }

    fn node(&self, h: usize, index: u64) -> Option<Digest> {
        let local = index.checked_sub(*self.offsets.get(h)?)?;
        self.levels.get(h)?.get(usize::try_from(local).ok()?).copied()
    }

    /// Appends a leaf digest (leaves are not re-hashed).
    pub fn append(&mut self, leaf: Digest) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
            self.offsets.push(0);
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        while (self.offsets[h] + self.levels[h].len() as u64).is_multiple_of(2) {
            let n = self.levels[h].len();
            let parent = sha256_pair(&self.levels[h][n - 2], &self.levels[h][n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
                self.offsets.push(0);
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        match (self.levels.first(), self.offsets.first()) {
            (Some(l), Some(o)) => o + l.len() as u64,
            _ => self.base,
        }
    }

    /// True when no leaf was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf at `index`.
    pub fn leaf(&self, index: u64) -> Option<Digest> {
        self.node(0, index)
    }

    /// The current root, None when empty.
    pub fn root(&self) -> Option<Digest> {
        self.root_at(self.len()).ok()
    }

    /// The root of the tree over the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Digest, MerkleError> {
        if size == 0 || size > self.len() {
            return Err(MerkleError::SizeOutOfRange {
                size,
                len: self.len(),
            });
        }
        if size < self.base {
            return Err(MerkleError::BeforeBase {
                index: size,
                base: self.base,
            });
        }
        self.subtree(0, size)
    }

    /// Inclusion proof of leaf `index` in the tree over the first `size` leaves, leaf to root.
    pub fn path(&self, index: u64, size: u64) -> Result<Vec<ProofStep>, MerkleError> {
        if size == 0 || size > self.len() {
            return Err(MerkleError::SizeOutOfRange {
                size,
                len: self.len(),
            });
        }
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        if index < self.base {
            return Err(MerkleError::BeforeBase {
                index,
                base: self.base,
            });
        }
        let mut steps = Vec::new();
        self.path_into(index, 0, size, &mut steps)?;
        steps.reverse();
        Ok(steps)
    }

    /// Forgets everything a tree built [`MerkleTree::from_frontier`] at `size` would not hold: afterwards the tree
    /// is exactly that tree plus the leaves appended past `size`, so roots at sizes `>= size` and proofs of leaves
    /// `>= size` are unchanged while memory no longer grows with the leaves before `size`. A `size` outside
    /// `base..=len` changes nothing.
    pub fn flush(&mut self, size: u64) {
        if size <= self.base || size > self.len() {
            return;
        }
        for (h, (level, offset)) in self.levels.iter_mut().zip(self.offsets.iter_mut()).enumerate() {
            // The frontier keeps the last complete node left of `size` at each level where `size` has a bit.
            let keep_from = (size >> h) - (size >> h & 1);
            let drop = keep_from.saturating_sub(*offset);
            let drop = usize::try_from(drop).unwrap_or(usize::MAX).min(level.len());
            level.drain(..drop);
            *offset += drop as u64;
        }
        self.base = size;
    }

    /// Drops every leaf at or after `size` (a rolled-back suffix); never below the base.
    pub fn truncate(&mut self, size: u64) {
        let size = size.max(self.base);
        for (h, level) in self.levels.iter_mut().enumerate() {
            let keep = (size >> h).saturating_sub(self.offsets[h]);
            level.truncate(keep as usize);
        }
        while self.levels.last().is_some_and(|l| l.is_empty()) && self.offsets.last() == Some(&0) {
            self.levels.pop();
            self.offsets.pop();
        }
    }

    // MTH over leaves [start, start + n); every left subtree in the RFC 9162 recursion is complete and aligned.
    fn subtree(&self, start: u64, n: u64) -> Result<Digest, MerkleError> {
        if n.is_power_of_two() {
            let h = n.trailing_zeros() as usize;
            return self.node(h, start >> h).ok_or(MerkleError::BeforeBase {
                index: start,
                base: self.base,
            });
        }
        let k = largest_power_of_two_below(n);
        Ok(sha256_pair(
            &self.subtree(start, k)?,
            &self.subtree(start + k, n - k)?,
        ))
    }

    // Pushes steps root-first (the caller reverses).
    fn path_into(
        &self,
        index: u64,
        start: u64,
        n: u64,
        steps: &mut Vec<ProofStep>,
    ) -> Result<(), MerkleError> {
        if n == 1 {
            return Ok(());
        }
        let k = largest_power_of_two_below(n);
        if index < start + k {
            steps.push(ProofStep {
                left: false,
                hash: self.subtree(start + k, n - k)?,
            });
            self.path_into(index, start, k, steps)
        } else {
            steps.push(ProofStep {
                left: true,
                hash: self.subtree(start, k)?,
            });
            self.path_into(index, start + k, n - k, steps)
        }
    }
}

/// Folds an inclusion proof from `leaf` up to the root it implies.
pub fn fold_proof(leaf: &Digest, path: &[ProofStep]) -> Digest {
    path.iter().fold(*leaf, |acc, step| {
        if step.left {
            sha256_pair(&step.hash, &acc)
        } else {
            sha256_pair(&acc, &step.hash)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;

    // Independent RFC 9162 reference, written directly from the RFC's recursive definitions over a slice.
    fn naive_root(leaves: &[Digest]) -> Digest {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        let (l, r) = leaves.split_at(k);
        let mut buf = naive_root(l).to_vec();
        buf.extend_from_slice(&naive_root(r));
        sha256(&buf)
    }

    fn naive_path(m: usize, leaves: &[Digest]) -> Vec<(bool, Digest)> {
        if leaves.len() == 1 {
            return vec![];
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        let (l, r) = leaves.split_at(k);
        if m < k {
            let mut p = naive_path(m, l);
            p.push((false, naive_root(r)));
            p
        } else {
            let mut p = naive_path(m - k, r);
            p.push((true, naive_root(l)));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| sha256(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn matches_reference_for_every_index_and_size() {
        let all = leaves(70);
        let mut tree = MerkleTree::new();
        assert_eq!(tree.root(), None);
        for l in &all {
            tree.append(*l);
        }
        for size in 1..=70u64 {
            let root = tree.root_at(size).unwrap();
            assert_eq!(root, naive_root(&all[..size as usize]), "size {size}");
            for index in 0..size {
                let path = tree.path(index, size).unwrap();
                let expected: Vec<ProofStep> = naive_path(index as usize, &all[..size as usize])
                    .into_iter()
                    .map(|(left, hash)| ProofStep { left, hash })
                    .collect();
                assert_eq!(path, expected, "index {index} size {size}");
                assert_eq!(fold_proof(&all[index as usize], &path), root);
            }
        }
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut tree = MerkleTree::new();
        assert!(tree.root_at(1).is_err());
        tree.append([1; 32]);
        assert!(tree.path(1, 1).is_err());
        assert!(tree.path(0, 2).is_err());
        assert!(tree.root_at(0).is_err());
        assert_eq!(tree.path(0, 1).unwrap(), vec![]);
    }

    #[test]
    fn truncate_then_reappend() {
        let all = leaves(40);
        let mut tree = MerkleTree::new();
        for l in &all[..33] {
            tree.append(*l);
        }
        tree.truncate(17);
        assert_eq!(tree.len(), 17);
        assert_eq!(tree.root().unwrap(), naive_root(&all[..17]));
        for l in &all[17..] {
            tree.append(*l);
        }
        assert_eq!(tree.root().unwrap(), naive_root(&all));
        tree.truncate(0);
        assert!(tree.is_empty());
    }

    #[test]
    fn a_tree_from_a_frontier_matches_the_full_tree_past_its_base() {
        let all = leaves(80);
        let mut full = MerkleTree::new();
        all.iter().for_each(|l| full.append(*l));
        for base in [1u64, 2, 5, 8, 13, 32, 33, 47] {
            let mut prefix = MerkleTree::new();
            all[..base as usize].iter().for_each(|l| prefix.append(*l));
            let mut tree = MerkleTree::from_frontier(base, &prefix.frontier()).unwrap();
            assert_eq!(tree.len(), base);
            assert_eq!(
                tree.root().unwrap(),
                naive_root(&all[..base as usize]),
                "base {base}"
            );
            for l in &all[base as usize..] {
                tree.append(*l);
            }
            for size in base..=80 {
                assert_eq!(
                    tree.root_at(size).unwrap(),
                    full.root_at(size).unwrap(),
                    "base {base} size {size}"
                );
                for index in base..size {
                    assert_eq!(tree.path(index, size).unwrap(), full.path(index, size).unwrap());
                }
                if base > 1 {
                    assert!(tree.path(base - 2, size).is_err());
                }
            }
            assert_eq!(tree.frontier(), full.frontier());
            assert_eq!(
                tree.frontier_at(base + 1).unwrap(),
                full.frontier_at(base + 1).unwrap()
            );
            tree.truncate(base + 3);
            assert_eq!(tree.root().unwrap(), full.root_at((base + 3).min(80)).unwrap());
            tree.truncate(0);
            assert_eq!(tree.len(), base, "never below the base");
            assert_eq!(tree.root().unwrap(), naive_root(&all[..base as usize]));
        }
        assert!(MerkleTree::from_frontier(5, &[[0; 32]]).is_err());
        let empty = MerkleTree::from_frontier(0, &[]).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_flushed_tree_is_the_tree_from_its_frontier() {
        let all = leaves(90);
        let mut full = MerkleTree::new();
        all.iter().for_each(|l| full.append(*l));
        for flush in [1u64, 2, 3, 7, 8, 13, 32, 33, 47, 64, 65] {
            let mut tree = MerkleTree::new();
            all[..70].iter().for_each(|l| tree.append(*l));
            let before: usize = tree.levels.iter().map(Vec::len).sum();
            tree.flush(flush);
            let after: usize = tree.levels.iter().map(Vec::len).sum();
            assert!(
                after <= before - flush as usize + 64,
                "flush {flush}: {before} -> {after} nodes"
            );
            assert_eq!(tree.base(), flush);
            assert_eq!(tree.len(), 70);
            // Flushing again at or below the base changes nothing.
            tree.flush(flush);
            tree.flush(flush / 2);
            all[70..].iter().for_each(|l| tree.append(*l));
            for size in flush..=90 {
                assert_eq!(
                    tree.root_at(size).unwrap(),
                    full.root_at(size).unwrap(),
                    "flush {flush} size {size}"
                );
                for index in flush..size {
                    assert_eq!(tree.path(index, size).unwrap(), full.path(index, size).unwrap());
                }
                assert_eq!(tree.frontier_at(size).unwrap(), full.frontier_at(size).unwrap());
            }
            if flush > 1 {
                assert!(
                    tree.path(flush - 2, 90).is_err(),
                    "leaves before the flush are gone"
                );
            }
            tree.truncate(flush + 1);
            assert_eq!(tree.root().unwrap(), full.root_at(flush + 1).unwrap());
        }
        // Flushing a tree that started from a frontier, twice.
        let mut tree = MerkleTree::from_frontier(5, &full.frontier_at(5).unwrap()).unwrap();
        all[5..40].iter().for_each(|l| tree.append(*l));
        tree.flush(21);
        tree.flush(33);
        for size in 33..=40 {
            assert_eq!(tree.root_at(size).unwrap(), full.root_at(size).unwrap());
        }
        // Past the end: nothing happens.
        tree.flush(41);
        assert_eq!(tree.base(), 33);
    }

    #[test]
    fn tampered_proof_does_not_fold_to_root() {
        let all = leaves(13);
        let mut tree = MerkleTree::new();
        all.iter().for_each(|l| tree.append(*l));
        let mut path = tree.path(5, 13).unwrap();
        path[1].hash[0] ^= 1;
        assert_ne!(fold_proof(&all[5], &path), tree.root().unwrap());
    }
}
