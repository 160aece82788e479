//! Which chunks of a push's planned files have arrived: what binds a data stream's run
//! and a `Commit` to the session that planned the file.
//!
//! The server plans a push (its `Need` answer says which chunks of which files it asks
//! for), data streams on any shard write runs of those chunks into the temporary files,
//! and the client's `Commit` asks for files to be renamed into place. Without this
//! record the server would commit whatever a temporary file held: a file whose runs
//! never came (a preallocated file of zeros), or one another stream wrote. So each run
//! claims its chunks before writing (a run must lie inside what the session asked for,
//! and no two runs may claim the same chunk), marks them arrived once written and
//! verified, or gives them back if it failed; a file may be committed only when every
//! chunk asked for has arrived.
//!
//! Memory is bounded by the plan: one entry per `Need` item, and at most one claim per
//! chunk asked for (a run claims at least one).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use crate::session::Failure;
use crate::wire::NeedItem;

#[derive(Debug, Default)]
pub struct Arrivals {
    files: HashMap<u32, FileArrivals>,
}

#[derive(Debug, Default)]
struct FileArrivals {
    /// Chunk ranges the plan asked for.
    asked: Vec<Range<u32>>,
    /// Claimed runs by first chunk: their end, and whether they arrived.
    claims: BTreeMap<u32, (u32, bool)>,
    asked_chunks: u64,
    arrived_chunks: u64,
}

impl Arrivals {
    /// What the plan asked for, for the files whose runs this record binds.
    pub fn new<'a>(needs: impl IntoIterator<Item = &'a NeedItem>) -> Arrivals {
        let mut files: HashMap<u32, FileArrivals> = HashMap::new();
        for n in needs {
            let f = files.entry(n.file).or_default();
            let end = n.chunk_first.saturating_add(n.chunk_count);
            f.asked.push(n.chunk_first..end);
            f.asked_chunks += u64::from(end - n.chunk_first);
        }
        Arrivals { files }
    }

    /// Whether `file`'s runs are bound here.
    pub fn tracks(&self, file: u32) -> bool {
        self.files.contains_key(&file)
    }

    /// A run of `count` chunks of `file` from `first` is about to be written: it must
    /// lie inside one range the plan asked for and overlap no other claim.
    pub fn claim(&mut self, file: u32, first: u32, count: u32) -> Result<(), Failure> {
        let f = self
            .files
            .get_mut(&file)
            .ok_or_else(|| Failure::protocol(format!("file {file} was not asked for")))?;
        let end = first
            .checked_add(count)
            .filter(|_| count > 0)
            .ok_or_else(|| Failure::protocol(format!("file {file}: an empty or endless run")))?;
        if !f.asked.iter().any(|a| a.start <= first && end <= a.end) {
            return Err(Failure::protocol(format!(
                "file {file}: chunks {first}..{end} were not asked for"
            )));
        }
        let before = f.claims.range(..end).next_back();
        if before.is_some_and(|(_, &(e, _))| e > first) {
            return Err(Failure::protocol(format!(
                "file {file}: chunks {first}..{end} are already being received"
            )));
        }
        f.claims.insert(first, (end, false));
        Ok(())
    }

    /// The claimed run from `first` was written and verified.
    pub fn arrived(&mut self, file: u32, first: u32) {
        if let Some(f) = self.files.get_mut(&file) {
            if let Some((end, done)) = f.claims.get_mut(&first) {
                if !*done {
                    *done = true;
                    f.arrived_chunks += u64::from(*end - first);
                }
            }
        }
    }

    /// The claimed run from `first` failed: its chunks may be claimed again.
    pub fn release(&mut self, file: u32, first: u32) {
        if let Some(f) = self.files.get_mut(&file) {
            if f.claims.get(&first).is_some_and(|&(_, done)| !done) {
                f.claims.remove(&first);
            }
        }
    }

    /// Whether every chunk of `file` the plan asked for has arrived.
    pub fn complete(&self, file: u32) -> bool {
        self.files
            .get(&file)
            .is_some_and(|f| f.arrived_chunks == f.asked_chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(file: u32, chunk_first: u32, chunk_count: u32) -> NeedItem {
        NeedItem {
            file,
            chunk_first,
            chunk_count,
            have: Vec::new(),
        }
    }

    #[test]
    fn a_file_is_complete_only_when_every_chunk_asked_for_arrived() {
        let needs = [need(0, 0, 4), need(0, 8, 2), need(1, 0, 1)];
        let mut a = Arrivals::new(&needs);
        assert!(!a.complete(0) && !a.complete(1), "nothing arrived yet");
        assert!(!a.complete(2) && !a.tracks(2), "never asked for");
        a.claim(0, 0, 2).unwrap();
        a.claim(0, 2, 2).unwrap();
        a.claim(0, 8, 2).unwrap();
        a.arrived(0, 0);
        a.arrived(0, 8);
        assert!(!a.complete(0), "chunks 2..4 claimed, not arrived");
        a.release(0, 2);
        a.claim(0, 2, 2).unwrap();
        a.arrived(0, 2);
        a.arrived(0, 2);
        assert!(a.complete(0), "the second report of a run counts once");
        assert!(!a.complete(1));
    }

    #[test]
    fn a_run_outside_the_plan_or_over_another_claim_is_refused() {
        let mut a = Arrivals::new(&[need(0, 0, 4), need(0, 8, 2)]);
        for (file, first, count) in [(1, 0, 1), (0, 3, 2), (0, 4, 1), (0, 9, 2), (0, 0, 0)] {
            assert!(
                a.claim(file, first, count).is_err(),
                "{file} {first} {count}"
            );
        }
        assert!(a.claim(0, u32::MAX, 2).is_err(), "an endless run");
        a.claim(0, 1, 2).unwrap();
        for (first, count) in [(0, 2), (2, 1), (1, 1), (0, 4)] {
            assert!(
                a.claim(0, first, count).is_err(),
                "{first} {count} overlaps 1..3"
            );
        }
        a.claim(0, 0, 1).unwrap();
        a.claim(0, 3, 1).unwrap();
        a.arrived(0, 1);
        a.release(0, 1);
        assert!(
            a.claim(0, 1, 2).is_err(),
            "an arrived run is not given back"
        );
    }
}
