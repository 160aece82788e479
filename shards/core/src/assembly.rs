//! Owner-side assembly of a file from the ranges that shards report.
//!
//! The owner of a file learns, range by range, that its bytes were read, hashed (and, for
//! a copy, written). When the last range arrives it derives the file digest and the file is
//! ready to finalize. Reports are checked: a range that is out of bounds, reported twice or
//! with the wrong number of chunk hashes is a typed error — the same code will judge
//! reports that arrive from a remote peer.

use std::collections::HashMap;

use crate::digest::{ChunkHash, FileDigest};
use crate::plan::{ChunkPlan, FileId};

/// Files being assembled by one shard. `F` is what a failed range reports (the driver's
/// error type); the first failure of a file is kept and handed back when it completes.
pub struct Assembly<F> {
    pending: HashMap<FileId, Pending<F>>,
}

impl<F> Default for Assembly<F> {
    fn default() -> Self {
        Assembly {
            pending: HashMap::new(),
        }
    }
}

struct Pending<F> {
    plan: ChunkPlan,
    chunks: Vec<ChunkHash>,
    range_seen: Vec<bool>,
    ranges_left: u32,
    failure: Option<F>,
}

/// A file whose every range has been reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Completed<F> {
    Ok { file: FileId, digest: FileDigest },
    Failed { file: FileId, failure: F },
}

impl<F> Completed<F> {
    /// The file that completed.
    pub fn file(&self) -> FileId {
        match self {
            Completed::Ok { file, .. } | Completed::Failed { file, .. } => *file,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AssemblyError {
    UnknownFile(FileId),
    AlreadyExpected(FileId),
    RangeOutOfBounds {
        file: FileId,
        range: u32,
        range_count: u32,
    },
    DuplicateRange {
        file: FileId,
        range: u32,
    },
    ChunkCountMismatch {
        file: FileId,
        range: u32,
        expected: u32,
        got: usize,
    },
}

impl std::fmt::Display for AssemblyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for AssemblyError {}

impl<F> Assembly<F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a file this shard owns, before any of its ranges can be reported.
    pub fn expect(&mut self, file: FileId, plan: ChunkPlan) -> Result<(), AssemblyError> {
        if self.pending.contains_key(&file) {
            return Err(AssemblyError::AlreadyExpected(file));
        }
        let zero = ChunkHash([0; 32]);
        self.pending.insert(
            file,
            Pending {
                plan,
                chunks: vec![zero; plan.chunk_count() as usize],
                range_seen: vec![false; plan.range_count() as usize],
                ranges_left: plan.range_count(),
                failure: None,
            },
        );
        Ok(())
    }

    /// Number of files still waiting for ranges.
    pub fn pending_files(&self) -> usize {
        self.pending.len()
    }

    /// A range finished: its chunk hashes, in order.
    pub fn range_done(
        &mut self,
        file: FileId,
        range: u32,
        hashes: &[ChunkHash],
    ) -> Result<Option<Completed<F>>, AssemblyError> {
        let pending = self.claim(file, range)?;
        let span = pending.plan.range(range);
        if hashes.len() != span.chunk_count as usize {
            // Undo the claim so that the error leaves the state as it was.
            pending.range_seen[range as usize] = false;
            pending.ranges_left += 1;
            return Err(AssemblyError::ChunkCountMismatch {
                file,
                range,
                expected: span.chunk_count,
                got: hashes.len(),
            });
        }
        let first = span.first_chunk as usize;
        pending.chunks[first..first + hashes.len()].copy_from_slice(hashes);
        Ok(self.complete_if_done(file))
    }

    /// A range failed; the file fails once all its ranges have reported.
    ///
    /// Waiting for the rest matters: other shards may still be writing into the temporary
    /// file, and the owner must not remove it under them.
    pub fn range_failed(
        &mut self,
        file: FileId,
        range: u32,
        failure: F,
    ) -> Result<Option<Completed<F>>, AssemblyError> {
        let pending = self.claim(file, range)?;
        pending.failure.get_or_insert(failure);
        Ok(self.complete_if_done(file))
    }

    fn claim(&mut self, file: FileId, range: u32) -> Result<&mut Pending<F>, AssemblyError> {
        let pending = self
            .pending
            .get_mut(&file)
            .ok_or(AssemblyError::UnknownFile(file))?;
        let range_count = pending.plan.range_count();
        if range >= range_count {
            return Err(AssemblyError::RangeOutOfBounds {
                file,
                range,
                range_count,
            });
        }
        if std::mem::replace(&mut pending.range_seen[range as usize], true) {
            return Err(AssemblyError::DuplicateRange { file, range });
        }
        pending.ranges_left -= 1;
        Ok(pending)
    }

    fn complete_if_done(&mut self, file: FileId) -> Option<Completed<F>> {
        if self.pending[&file].ranges_left > 0 {
            return None;
        }
        let done = self.pending.remove(&file).expect("present");
        assert!(
            done.range_seen.iter().all(|s| *s),
            "completed with a range unseen"
        );
        Some(match done.failure {
            Some(failure) => Completed::Failed { file, failure },
            None => Completed::Ok {
                file,
                digest: FileDigest::from_chunks(done.plan.size_bytes(), &done.chunks),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CHUNK_SIZE_BYTES, RANGE_SIZE_BYTES};

    fn hashes(n: u32, seed: u8) -> Vec<ChunkHash> {
        (0..n).map(|i| ChunkHash::of(&[seed, i as u8])).collect()
    }

    #[test]
    fn out_of_order_ranges_give_the_same_digest() {
        let plan = ChunkPlan::new(3 * RANGE_SIZE_BYTES + 5).unwrap();
        let all: Vec<Vec<ChunkHash>> = plan
            .ranges()
            .map(|r| hashes(r.chunk_count, r.index as u8))
            .collect();
        let flat: Vec<ChunkHash> = all.iter().flatten().copied().collect();
        let want = FileDigest::from_chunks(plan.size_bytes(), &flat);

        let mut a = Assembly::<String>::new();
        a.expect(FileId(7), plan).unwrap();
        for r in [3u32, 0, 2] {
            assert_eq!(a.range_done(FileId(7), r, &all[r as usize]).unwrap(), None);
        }
        let done = a.range_done(FileId(7), 1, &all[1]).unwrap();
        assert_eq!(
            done,
            Some(Completed::Ok {
                file: FileId(7),
                digest: want
            })
        );
        assert_eq!(a.pending_files(), 0);
    }

    #[test]
    fn hostile_reports_are_typed_errors_and_change_nothing() {
        let plan = ChunkPlan::new(CHUNK_SIZE_BYTES * 2).unwrap();
        let mut a = Assembly::<String>::new();
        a.expect(FileId(1), plan).unwrap();
        assert_eq!(
            a.expect(FileId(1), plan),
            Err(AssemblyError::AlreadyExpected(FileId(1)))
        );
        assert_eq!(
            a.range_done(FileId(2), 0, &[]),
            Err(AssemblyError::UnknownFile(FileId(2)))
        );
        assert!(matches!(
            a.range_done(FileId(1), 1, &[]),
            Err(AssemblyError::RangeOutOfBounds { .. })
        ));
        assert!(matches!(
            a.range_done(FileId(1), 0, &hashes(1, 0)),
            Err(AssemblyError::ChunkCountMismatch {
                expected: 2,
                got: 1,
                ..
            })
        ));
        // The failed report did not consume the range: a correct one still completes it.
        assert!(matches!(
            a.range_done(FileId(1), 0, &hashes(2, 0)),
            Ok(Some(Completed::Ok { .. }))
        ));
        assert_eq!(
            a.range_done(FileId(1), 0, &hashes(2, 0)),
            Err(AssemblyError::UnknownFile(FileId(1)))
        );
    }

    #[test]
    fn duplicate_range_is_refused() {
        let plan = ChunkPlan::new(2 * RANGE_SIZE_BYTES).unwrap();
        let mut a = Assembly::<String>::new();
        a.expect(FileId(0), plan).unwrap();
        a.range_done(FileId(0), 0, &hashes(16, 0)).unwrap();
        assert_eq!(
            a.range_done(FileId(0), 0, &hashes(16, 0)),
            Err(AssemblyError::DuplicateRange {
                file: FileId(0),
                range: 0
            })
        );
    }

    #[test]
    fn failure_waits_for_every_range() {
        let plan = ChunkPlan::new(2 * RANGE_SIZE_BYTES).unwrap();
        let mut a = Assembly::<String>::new();
        a.expect(FileId(0), plan).unwrap();
        assert_eq!(a.range_failed(FileId(0), 1, "EIO".into()).unwrap(), None);
        let done = a.range_done(FileId(0), 0, &hashes(16, 0)).unwrap();
        assert_eq!(
            done,
            Some(Completed::Failed {
                file: FileId(0),
                failure: "EIO".into()
            })
        );
    }

    #[test]
    fn empty_file_completes_with_its_single_range() {
        let mut a = Assembly::<String>::new();
        a.expect(FileId(0), ChunkPlan::new(0).unwrap()).unwrap();
        let empty = ChunkHash::of(&[]);
        let done = a.range_done(FileId(0), 0, &[empty]).unwrap();
        assert_eq!(
            done,
            Some(Completed::Ok {
                file: FileId(0),
                digest: FileDigest::from_chunks(0, &[empty])
            })
        );
    }
}
