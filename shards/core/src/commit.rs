//! Which files are complete, failed, being committed or settled: the one completion
//! tracker and commit batcher, used by the local copy's owner shards (whose batches are
//! committed in place), by the client of a push (whose batches become `Commit` frames)
//! and of a pull (whose batches are committed locally).
//!
//! A file is moved as one or more runs (in the local copy, one per file: the owner's
//! assembly of its ranges). When its last run has ended and none failed, it is ready;
//! ready files are committed in batches, one batch in flight at a time, and each file
//! of the batch in flight is settled once: committed or failed. The work is over when no
//! file is unresolved.
//!
//! When a batch is taken is the caller's [`Batching`], chosen by measurement (20,000
//! files of 8 KiB on this VM's disk, durable; PERFORMANCE.md, "One commit tracker"):
//! - The local copy's durable commit blocks its owner shard's finalizer and syncs every
//!   filesystem and directory it touches whatever the batch's size, so it is
//!   [`Batching::Amortized`]: a batch waits for [`COMMIT_BATCH_FILES_MAX`] ready files,
//!   [`COMMIT_BATCH_BYTES_MAX`] bytes written since the last batch, or the end of the
//!   work (no unresolved file still moving, so nothing waits for a threshold it cannot
//!   reach). Taking a batch whenever none was in flight made 2,602 syncfs and 2,767
//!   directory syncs instead of 5 and 202, and took 1.20x the time.
//! - A remote commit is carried out by the receiver while data still moves, so the
//!   client's is [`Batching::Eager`]: a batch whenever none is in flight, holding every
//!   file that became ready meanwhile (group commit). Amortized batches there leave the
//!   whole commit to the end: a durable push took a median 2.12 s against 1.78 s
//!   (1.19x; three of seven rounds near 4 s).
//! - A local commit that is only renames (`--fsync never`) is eager too: files appear
//!   as they complete.

use crate::limits::{COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_FILES_MAX};
use crate::session::Failure;
use crate::wire::ITEMS_PER_FRAME_MAX;

// A batch of a push travels as one `Commit` frame.
const _: () = assert!(COMMIT_BATCH_FILES_MAX <= ITEMS_PER_FRAME_MAX);

#[derive(Debug, Default)]
pub struct Tracker {
    /// Runs of each file that have not ended yet.
    remaining: Vec<u32>,
    failed: Vec<bool>,
    /// Files of the batch in flight not yet settled.
    committing: Vec<bool>,
    ready: Vec<u32>,
    in_commit: usize,
    unresolved: u64,
    batching: Batching,
    /// Bytes of runs that ended since the last batch was taken.
    written_bytes: u64,
}

/// When a batch of ready files is taken (see the module's notes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Whenever none is in flight.
    #[default]
    Eager,
    /// When none is in flight and enough files or bytes are ready, or every unresolved
    /// file is.
    Amortized,
}

/// What a run's end meant for its file.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnded {
    /// Other runs of the file are still out, or it is now ready to commit.
    Progress,
    /// The file's first failed run: the file has failed (report it once).
    FileFailed,
    /// A later run of a file that had failed already.
    AlreadyFailed,
}

impl Tracker {
    /// Tracks `file_count` files, of which the ones named by `runs` (one item per run)
    /// are to move, batched as `batching` says.
    pub fn new(
        file_count: usize,
        runs: impl IntoIterator<Item = u32>,
        batching: Batching,
    ) -> Tracker {
        let mut remaining = vec![0u32; file_count];
        for f in runs {
            remaining[f as usize] += 1;
        }
        let unresolved = remaining.iter().filter(|&&n| n > 0).count() as u64;
        Tracker {
            remaining,
            failed: vec![false; file_count],
            committing: vec![false; file_count],
            ready: Vec::new(),
            in_commit: 0,
            unresolved,
            batching,
            written_bytes: 0,
        }
    }

    /// Files not yet committed or failed.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// Files of the batch in flight not yet settled.
    pub fn in_commit(&self) -> usize {
        self.in_commit
    }

    /// A run of `file` ended, having written `bytes` if `ok`. Errors if the file has no
    /// run out (a driver's bug).
    pub fn run_ended(&mut self, file: u32, ok: bool, bytes: u64) -> Result<RunEnded, Failure> {
        let i = file as usize;
        match self.remaining.get_mut(i) {
            Some(n) if *n > 0 => *n -= 1,
            _ => return Err(Failure::protocol(format!("no run of file {file} is out"))),
        }
        if self.failed[i] {
            return Ok(RunEnded::AlreadyFailed);
        }
        if !ok {
            self.failed[i] = true;
            self.unresolved -= 1;
            return Ok(RunEnded::FileFailed);
        }
        self.written_bytes = self.written_bytes.saturating_add(bytes);
        if self.remaining[i] == 0 {
            self.ready.push(file);
        }
        Ok(RunEnded::Progress)
    }

    /// The next batch to commit, if none is in flight and one is due.
    pub fn take_batch(&mut self) -> Option<Vec<u32>> {
        if self.in_commit > 0 || self.ready.is_empty() {
            return None;
        }
        let due = self.batching == Batching::Eager
            || self.ready.len() >= COMMIT_BATCH_FILES_MAX
            || self.written_bytes >= COMMIT_BATCH_BYTES_MAX
            || self.ready.len() as u64 == self.unresolved;
        if !due {
            return None;
        }
        self.written_bytes = 0;
        let n = self.ready.len().min(COMMIT_BATCH_FILES_MAX);
        let batch: Vec<u32> = self.ready.drain(..n).collect();
        for &f in &batch {
            self.committing[f as usize] = true;
        }
        self.in_commit = batch.len();
        Some(batch)
    }

    /// True when the batch just taken is the last: every unresolved file is in it.
    pub fn last_batch_in_flight(&self) -> bool {
        self.in_commit > 0 && self.unresolved == self.in_commit as u64
    }

    /// One file of the batch in flight was committed or failed. An answer for a file
    /// not in flight, or a second answer, is the peer breaking the protocol.
    pub fn settle(&mut self, file: u32) -> Result<(), Failure> {
        match self.committing.get_mut(file as usize) {
            Some(c) if *c => *c = false,
            _ => {
                return Err(Failure::protocol(format!(
                    "answer for file {file}, which is not being committed"
                )))
            }
        }
        self.in_commit -= 1;
        self.unresolved -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_after_its_last_run_and_settles_once() {
        let mut t = Tracker::new(3, [0, 0, 2], Batching::Eager);
        assert_eq!(t.unresolved(), 2);
        assert_eq!(t.run_ended(0, true, 1), Ok(RunEnded::Progress));
        assert_eq!(t.take_batch(), None);
        assert_eq!(t.run_ended(2, true, 1), Ok(RunEnded::Progress));
        assert_eq!(t.take_batch(), Some(vec![2]));
        assert!(!t.last_batch_in_flight());
        assert_eq!(t.run_ended(0, true, 1), Ok(RunEnded::Progress));
        assert_eq!(t.take_batch(), None, "one batch in flight at a time");
        t.settle(2).unwrap();
        assert!(t.settle(2).is_err(), "a second answer");
        assert!(t.settle(1).is_err(), "never asked");
        assert_eq!(t.take_batch(), Some(vec![0]));
        assert!(t.last_batch_in_flight());
        t.settle(0).unwrap();
        assert_eq!(t.unresolved(), 0);
    }

    #[test]
    fn a_failed_run_fails_its_file_once_and_never_commits_it() {
        let mut t = Tracker::new(1, [0, 0], Batching::Amortized);
        assert_eq!(t.run_ended(0, false, 0), Ok(RunEnded::FileFailed));
        assert_eq!(t.run_ended(0, true, 1), Ok(RunEnded::AlreadyFailed));
        assert_eq!(t.take_batch(), None);
        assert_eq!(t.unresolved(), 0);
        assert!(t.run_ended(0, true, 1).is_err(), "more ends than runs");
        assert!(t.run_ended(7, true, 1).is_err(), "no such file");
    }

    #[test]
    fn amortized_batches_wait_for_a_threshold_or_the_end() {
        let files = COMMIT_BATCH_FILES_MAX + 3;
        let mut t = Tracker::new(files, 0..files as u32, Batching::Amortized);
        for f in 0..COMMIT_BATCH_FILES_MAX as u32 - 1 {
            t.run_ended(f, true, 1).unwrap();
            assert_eq!(t.take_batch(), None, "under every threshold");
        }
        t.run_ended(COMMIT_BATCH_FILES_MAX as u32 - 1, true, 1)
            .unwrap();
        let batch = t.take_batch().expect("enough files");
        assert_eq!(batch.len(), COMMIT_BATCH_FILES_MAX);
        for f in batch {
            t.settle(f).unwrap();
        }
        let big = COMMIT_BATCH_FILES_MAX as u32;
        t.run_ended(big, true, COMMIT_BATCH_BYTES_MAX).unwrap();
        assert_eq!(t.take_batch(), Some(vec![big]), "enough bytes");
        t.settle(big).unwrap();
        t.run_ended(big + 1, true, 1).unwrap();
        assert_eq!(t.take_batch(), None);
        t.run_ended(big + 2, false, 0).unwrap();
        assert_eq!(
            t.take_batch(),
            Some(vec![big + 1]),
            "nothing else can be ready"
        );
        assert!(t.last_batch_in_flight());
    }
}
