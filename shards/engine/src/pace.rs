//! `--bwlimit` on the shards: one schedule (`tpc_core::pace`) shared by every shard and
//! connection of a transfer, booked with a compare-and-swap before each piece of data
//! is sent or copied, and waited on with the shard's timer, so the other tasks of the
//! shard run meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tpc_core::pace::Pace;

/// A transfer's rate limit.
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    epoch: Instant,
    /// When the data booked so far will have left, in ns from `epoch`.
    due: AtomicU64,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            pace: Pace::new(bytes_per_sec),
            epoch: Instant::now(),
            due: AtomicU64::new(0),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.pace.bytes_per_sec()
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut due = self.due.load(Ordering::Relaxed);
        let wait = loop {
            let (after, wait) = self.pace.book(due, now, bytes);
            match self
                .due
                .compare_exchange_weak(due, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break wait,
                Err(seen) => due = seen,
            }
        };
        if wait > 0 {
            crate::rt::sleep(Duration::from_nanos(wait)).await;
        }
    }
}
