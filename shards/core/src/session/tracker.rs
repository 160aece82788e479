//! Which files of a session are complete, failed, being committed or settled: the one
//! completion tracker and commit batcher of a remote session, used by the client of a
//! push (whose batches become `Commit` frames) and of a pull (whose batches are
//! committed locally).
//!
//! A file is moved as one or more runs. When its last run has ended and none failed, it
//! is ready; ready files are committed in batches, one batch in flight at a time, and
//! each file of the batch in flight is settled once: committed or failed. The session is
//! over when no file is unresolved.

use crate::session::Failure;
use crate::wire::ITEMS_PER_FRAME_MAX;

/// Files one commit batch holds at most: what one `Commit` frame may carry.
pub const COMMIT_FILES_MAX: usize = ITEMS_PER_FRAME_MAX;

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
    /// are to move.
    pub fn new(file_count: usize, runs: impl IntoIterator<Item = u32>) -> Tracker {
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

    /// A run of `file` ended. Errors if the file has no run out (a driver's bug).
    pub fn run_ended(&mut self, file: u32, ok: bool) -> Result<RunEnded, Failure> {
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
        if self.remaining[i] == 0 {
            self.ready.push(file);
        }
        Ok(RunEnded::Progress)
    }

    /// The next batch to commit, if none is in flight and some file is ready.
    pub fn take_batch(&mut self) -> Option<Vec<u32>> {
        if self.in_commit > 0 || self.ready.is_empty() {
            return None;
        }
        let n = self.ready.len().min(COMMIT_FILES_MAX);
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
        let mut t = Tracker::new(3, [0, 0, 2]);
        assert_eq!(t.unresolved(), 2);
        assert_eq!(t.run_ended(0, true), Ok(RunEnded::Progress));
        assert_eq!(t.take_batch(), None);
        assert_eq!(t.run_ended(2, true), Ok(RunEnded::Progress));
        assert_eq!(t.take_batch(), Some(vec![2]));
        assert!(!t.last_batch_in_flight());
        assert_eq!(t.run_ended(0, true), Ok(RunEnded::Progress));
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
        let mut t = Tracker::new(1, [0, 0]);
        assert_eq!(t.run_ended(0, false), Ok(RunEnded::FileFailed));
        assert_eq!(t.run_ended(0, true), Ok(RunEnded::AlreadyFailed));
        assert_eq!(t.take_batch(), None);
        assert_eq!(t.unresolved(), 0);
        assert!(t.run_ended(0, true).is_err(), "more ends than runs");
        assert!(t.run_ended(7, true).is_err(), "no such file");
    }
}
