//! When to close a durability batch.
//!
//! Files are written under temporary names and renamed into place only once durable.
//! Making each file durable on its own (one fsync each) costs a journal commit per file;
//! instead a shard collects written files and makes them durable together (one `syncfs`),
//! then renames the whole batch. This module decides when a batch is full.

use crate::limits::{COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_FILES_MAX};

#[derive(Debug)]
pub struct CommitBatcher {
    files_max: usize,
    bytes_max: u64,
    files: usize,
    bytes: u64,
}

impl Default for CommitBatcher {
    fn default() -> Self {
        Self::new(COMMIT_BATCH_FILES_MAX, COMMIT_BATCH_BYTES_MAX)
    }
}

impl CommitBatcher {
    pub fn new(files_max: usize, bytes_max: u64) -> Self {
        assert!(
            files_max > 0 && bytes_max > 0,
            "batch limits must be positive"
        );
        CommitBatcher {
            files_max,
            bytes_max,
            files: 0,
            bytes: 0,
        }
    }

    /// Records a written file; returns true when the batch should be flushed now.
    pub fn push(&mut self, size_bytes: u64) -> bool {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size_bytes);
        self.files >= self.files_max || self.bytes >= self.bytes_max
    }

    /// The batch was flushed.
    pub fn reset(&mut self) {
        self.files = 0;
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.files == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_on_count_or_bytes() {
        let mut b = CommitBatcher::new(3, 100);
        assert!(b.is_empty());
        assert!(!b.push(10));
        assert!(!b.push(10));
        assert!(b.push(0));
        b.reset();
        assert!(b.is_empty());
        assert!(b.push(100));
        b.reset();
        assert!(b.push(u64::MAX));
        assert!(b.push(u64::MAX));
    }
}
