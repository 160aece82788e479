//! The schedule of a remote session's data, without I/O: the chunks a receiver asked
//! for cut into runs (one stream each), queued on the shard of their range, claimed by
//! a shard's streams within a budget, and taken over by a shard whose queue ran dry from
//! a peer that still has runs queued. The client's data shards drive it
//! (`src/remote/client.rs`, `run_ranges`): they feed it what happened (a run finished, a
//! peer asked or answered) and do what it says (start this run, ask that peer).

use std::collections::VecDeque;

use crate::limits::{CHUNK_SIZE_BYTES, RANGE_CHUNKS};
use crate::plan::{owner, range_shard};

/// Chunks a client moves on one stream at most: a large file's ranges are cut into runs
/// of this many chunks, 16 MiB. Runs are what shards take over from each other, so a
/// shard whose queue ran dry while a slower peer still has runs queued takes the rest of
/// them over. With whole 64 MiB ranges, all of a 2 GiB file was in flight from the start
/// and nothing was left to take over: one core idled through the last tenth of a loopback
/// push (PERFORMANCE.md, "Runs taken over through the mesh").
pub const STREAM_RUN_CHUNKS: u32 = 4;

/// Bytes of the largest run.
pub const STREAM_RUN_BYTES_MAX: u64 = STREAM_RUN_CHUNKS as u64 * CHUNK_SIZE_BYTES;

/// How many flow windows' worth of runs a shard's streams may have claimed at once.
/// Enough to keep the window full while runs are opened and confirmed; more would only
/// hold runs in streams that wait for the window, where no idle peer can take them over
/// (a 2 GiB file's 16 streams of 16 MiB held 256 MiB per shard).
pub const CLAIMED_WINDOWS: u64 = 2;

/// Chunks `first .. first + count` of file `file`: what one stream moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunItem {
    pub file: u32,
    pub first: u32,
    pub count: u32,
}

/// The chunks asked for of one file, and its path (which decides its shards).
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    pub file: u32,
    pub path: &'a [u8],
    pub first: u32,
    pub count: u32,
}

/// Cuts what was asked for into runs of at most `STREAM_RUN_CHUNKS`, each queued on the
/// shard of its range, as in a local copy (`range_shard(owner(path), range)`).
pub fn cut_runs<'a>(
    asked: impl IntoIterator<Item = Asked<'a>>,
    shard_count: usize,
) -> Vec<Vec<RunItem>> {
    let mut queues = vec![Vec::new(); shard_count];
    for a in asked {
        let own = owner(a.path, shard_count);
        let end = a.first + a.count;
        let mut first = a.first;
        while first < end {
            let count = (end - first).min(STREAM_RUN_CHUNKS);
            let shard = range_shard(own, first / RANGE_CHUNKS as u32, shard_count);
            queues[shard.0 as usize].push(RunItem {
                file: a.file,
                first,
                count,
            });
            first += count;
        }
    }
    queues
}

/// The bytes of runs the streams of a connection whose flow window is `flow_window`
/// bytes may hold at once (`CLAIMED_WINDOWS`); unbounded without a connection.
pub fn claim_budget(flow_window: Option<u64>) -> u64 {
    flow_window.map_or(u64::MAX, |w| w.saturating_mul(CLAIMED_WINDOWS))
}

/// A run in a queue, with its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedRun {
    pub run: RunItem,
    pub bytes: u64,
}

/// One shard's runs not yet started, and the bytes of the runs its streams have claimed
/// and not finished.
#[derive(Debug, Default)]
pub struct RunQueue {
    runs: VecDeque<QueuedRun>,
    claimed_bytes: u64,
}

impl RunQueue {
    pub fn new(runs: impl IntoIterator<Item = QueuedRun>) -> RunQueue {
        RunQueue {
            runs: runs.into_iter().collect(),
            claimed_bytes: 0,
        }
    }

    /// Takes the run at the front for a stream, if the runs already claimed leave room
    /// for it within `budget` (`fits`). The stream calls `finish` with its bytes when
    /// the run is done, failed or not.
    pub fn claim(&mut self, budget: u64) -> Option<QueuedRun> {
        let next = *self.runs.front()?;
        if !self.fits(next.bytes, budget) {
            return None;
        }
        self.claimed_bytes += next.bytes;
        self.runs.pop_front()
    }

    /// A claimed run of `bytes` is done.
    pub fn finish(&mut self, bytes: u64) {
        assert!(
            bytes <= self.claimed_bytes,
            "finished more than was claimed"
        );
        self.claimed_bytes -= bytes;
    }

    /// Whether a run of `bytes` fits beside the claimed runs within `budget`. A run
    /// always fits when none is claimed, so a shard never stalls on a budget below one
    /// run.
    pub fn fits(&self, bytes: u64, budget: u64) -> bool {
        self.claimed_bytes == 0 || self.claimed_bytes.saturating_add(bytes) <= budget
    }

    /// A peer asks for a run: the one at the back, the last this shard would start.
    pub fn give(&mut self) -> Option<QueuedRun> {
        self.runs.pop_back()
    }

    /// A run given by a peer, or one given back because the asker had gone.
    pub fn receive(&mut self, run: QueuedRun) {
        self.runs.push_back(run);
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// Whom a shard whose queue ran dry asks for runs: each peer in turn, once at a time,
/// until each has answered that it has none left.
#[derive(Debug)]
pub struct TakeOver {
    /// Peers that may still have runs to give, in the order they are asked.
    may_give: Vec<usize>,
    /// The peer asked, whose answer is awaited.
    asked: Option<usize>,
}

impl TakeOver {
    /// Take-over for `shard` of `shard_count`, starting with the next shard round.
    pub fn new(shard: usize, shard_count: usize) -> TakeOver {
        TakeOver {
            may_give: (1..shard_count)
                .map(|i| (shard + i) % shard_count)
                .collect(),
            asked: None,
        }
    }

    /// Asks nobody any more: a shard whose runs fail (its connection was lost, say)
    /// would fail the runs it took over too.
    pub fn stop(&mut self) {
        self.may_give.clear();
    }

    /// The peer to ask now, if `ready` (the queue is empty, a stream is free, and a
    /// whole run would fit) and no answer is awaited.
    pub fn ask(&mut self, ready: bool) -> Option<usize> {
        if !ready || self.asked.is_some() {
            return None;
        }
        let peer = *self.may_give.first()?;
        self.asked = Some(peer);
        Some(peer)
    }

    /// The ask could not be sent: that peer has stopped, and is not asked again.
    pub fn unreachable(&mut self) {
        if let Some(peer) = self.asked.take() {
            self.may_give.retain(|&p| p != peer);
        }
    }

    /// The peer asked answered with a run or none. A peer with nothing queued is not
    /// asked again: it can hold runs again only by being given some when it asks, and
    /// it starts those at once (a third shard's ask may come first: then this shard just
    /// misses it).
    pub fn answered(&mut self, given: Option<RunItem>) -> Option<RunItem> {
        let peer = self.asked.take();
        if given.is_none() {
            self.may_give.retain(|&p| Some(p) != peer);
        }
        given
    }

    /// An answer is awaited.
    pub fn waiting(&self) -> bool {
        self.asked.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(file: u32, bytes: u64) -> QueuedRun {
        QueuedRun {
            run: RunItem {
                file,
                first: 0,
                count: 1,
            },
            bytes,
        }
    }

    #[test]
    fn runs_tile_what_was_asked_on_the_shards_of_their_ranges() {
        let asked = [
            Asked {
                file: 0,
                path: b"big",
                first: 3,
                count: 40,
            },
            Asked {
                file: 1,
                path: b"small",
                first: 0,
                count: 1,
            },
        ];
        for shards in 1..=4 {
            let queues = cut_runs(asked, shards);
            let mut runs: Vec<RunItem> = queues.iter().flatten().copied().collect();
            runs.sort_by_key(|r| (r.file, r.first));
            let big: Vec<_> = runs.iter().filter(|r| r.file == 0).collect();
            assert_eq!(big.first().unwrap().first, 3);
            assert!(big
                .windows(2)
                .all(|w| w[0].first + w[0].count == w[1].first));
            assert_eq!(big.iter().map(|r| r.count).sum::<u32>(), 40);
            assert!(big.iter().all(|r| r.count <= STREAM_RUN_CHUNKS));
            // Each run is queued on the shard of the range its first chunk is in.
            for (s, queue) in queues.iter().enumerate() {
                for r in queue.iter().filter(|r| r.file == 0) {
                    let want =
                        range_shard(owner(b"big", shards), r.first / RANGE_CHUNKS as u32, shards);
                    assert_eq!(want.0 as usize, s);
                }
            }
        }
    }

    #[test]
    fn claims_stay_within_the_budget_but_one_run_always_goes() {
        let mut queue = RunQueue::new([q(0, 10), q(1, 10), q(2, 30)]);
        assert_eq!(
            queue.claim(5).map(|r| r.run.file),
            Some(0),
            "one run always"
        );
        assert_eq!(queue.claim(15), None);
        assert_eq!(queue.claim(20).map(|r| r.run.file), Some(1));
        queue.finish(10);
        assert_eq!(queue.claim(35), None, "10 claimed + 30 > 35");
        queue.finish(10);
        assert_eq!(queue.claim(0).map(|r| r.run.file), Some(2));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_peer_is_given_the_back_of_the_queue() {
        let mut queue = RunQueue::new([q(0, 1), q(1, 1), q(2, 1)]);
        assert_eq!(queue.give().map(|r| r.run.file), Some(2));
        queue.receive(q(7, 1));
        assert_eq!(queue.give().map(|r| r.run.file), Some(7));
        assert_eq!(queue.claim(u64::MAX).map(|r| r.run.file), Some(0));
    }

    #[test]
    fn take_over_asks_each_peer_until_each_has_none() {
        let mut t = TakeOver::new(1, 3);
        assert_eq!(t.ask(false), None);
        assert_eq!(t.ask(true), Some(2));
        assert_eq!(t.ask(true), None, "one ask at a time");
        let run = RunItem {
            file: 9,
            first: 0,
            count: 1,
        };
        assert_eq!(t.answered(Some(run)), Some(run));
        assert_eq!(t.ask(true), Some(2), "a peer that gave is asked again");
        assert_eq!(t.answered(None), None);
        assert_eq!(t.ask(true), Some(0));
        t.unreachable();
        assert_eq!(t.ask(true), None, "nobody left");
        assert!(!t.waiting());
        let mut t = TakeOver::new(0, 2);
        t.stop();
        assert_eq!(t.ask(true), None);
        assert_eq!(TakeOver::new(0, 1).ask(true), None);
    }
}
