//! Chunk planning and partitioning: which bytes form which chunk and range, and which
//! shard owns a file or works on a range. Pure functions, so every driver and every host
//! agrees on the same assignment.

use crate::limits::{CHUNK_SIZE_BYTES, FILE_SIZE_BYTES_MAX, RANGE_CHUNKS, SHARDS_MAX};

/// Index of a shard (one pinned executor per core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// Index of a file within one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// How one file of `size_bytes` is cut into chunks, runs and ranges: the one chunk
/// geometry of the local copy, the wire (runs of chunks a receiver asks for) and the
/// data streams.
///
/// Every file has at least one chunk, even an empty one (one empty chunk, whose hash
/// still travels and stands for the empty content), and so at least one range: the owner
/// still has to create, commit and time-stamp it, and that range is how the work is
/// scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    size_bytes: u64,
}

/// The bytes and chunks of one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpan {
    pub index: u32,
    pub first_chunk: u32,
    pub chunk_count: u32,
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileTooLarge {
    pub size_bytes: u64,
}

impl ChunkPlan {
    pub fn new(size_bytes: u64) -> Result<Self, FileTooLarge> {
        if size_bytes > FILE_SIZE_BYTES_MAX {
            return Err(FileTooLarge { size_bytes });
        }
        Ok(ChunkPlan { size_bytes })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Chunks in the file, at least one.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by FILE_SIZE_BYTES_MAX / CHUNK_SIZE_BYTES, which fits in u32.
        self.size_bytes.div_ceil(CHUNK_SIZE_BYTES).max(1) as u32
    }

    pub fn range_count(&self) -> u32 {
        (self.chunk_count() as u64).div_ceil(RANGE_CHUNKS) as u32
    }

    /// Offset and length in bytes of the run of `count` chunks from chunk `first`; `None`
    /// if the run is empty or does not lie inside the file (a peer's request checked).
    pub fn run(&self, first: u32, count: u32) -> Option<(u64, u64)> {
        let end_chunk = u64::from(first) + u64::from(count);
        if count == 0 || end_chunk > u64::from(self.chunk_count()) {
            return None;
        }
        let start = u64::from(first) * CHUNK_SIZE_BYTES;
        let end = (end_chunk * CHUNK_SIZE_BYTES).min(self.size_bytes);
        Some((start, end - start))
    }

    /// Offset and length of each chunk of the run `first .. first + count`, which must
    /// lie inside the file (see [`ChunkPlan::run`]).
    pub fn run_chunks(self, first: u32, count: u32) -> impl Iterator<Item = (u64, u64)> {
        assert!(self.run(first, count).is_some(), "run outside the plan");
        (first..first + count).map(move |i| self.chunk(i))
    }

    /// Offset and length of chunk `index`.
    pub fn chunk(&self, index: u32) -> (u64, u64) {
        assert!(index < self.chunk_count(), "chunk index out of plan");
        let offset = index as u64 * CHUNK_SIZE_BYTES;
        (offset, CHUNK_SIZE_BYTES.min(self.size_bytes - offset))
    }

    pub fn range(&self, index: u32) -> RangeSpan {
        assert!(index < self.range_count(), "range index out of plan");
        let first_chunk = index as u64 * RANGE_CHUNKS;
        let chunk_count = RANGE_CHUNKS
            .min(self.chunk_count() as u64 - first_chunk.min(self.chunk_count() as u64));
        let offset_bytes = (first_chunk * CHUNK_SIZE_BYTES).min(self.size_bytes);
        let end = ((first_chunk + chunk_count) * CHUNK_SIZE_BYTES).min(self.size_bytes);
        RangeSpan {
            index,
            first_chunk: first_chunk as u32,
            chunk_count: chunk_count as u32,
            offset_bytes,
            len_bytes: end - offset_bytes,
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = RangeSpan> + '_ {
        (0..self.range_count()).map(|i| self.range(i))
    }
}

/// The shard that owns (creates, finalizes, commits) the file at `relative_path`.
///
/// A hash of the path rather than of the content: the owner must be known before a byte is
/// read, and the same path must land on the same shard on both ends of a transfer.
pub fn owner(relative_path: &[u8], shard_count: usize) -> ShardId {
    assert!(
        shard_count > 0 && shard_count <= SHARDS_MAX,
        "shard count out of range"
    );
    let hash = blake3::hash(relative_path);
    let word = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
    ShardId((word % shard_count as u64) as u16)
}

/// The shard that reads, hashes and writes range `range_index` of a file owned by `owner`.
///
/// Ranges go round-robin starting at the owner instead of each being hashed on its own:
/// the start is already a hash of the path, and round-robin keeps a large file exactly
/// balanced (a 16-range file on 2 shards gets 8 + 8, where independent hashing often gives
/// 11 + 5 and leaves one core idle at the end). Range 0 always stays with the owner, so a
/// small file never crosses shards.
pub fn range_shard(owner: ShardId, range_index: u32, shard_count: usize) -> ShardId {
    assert!((owner.0 as usize) < shard_count, "owner out of range");
    ShardId(((owner.0 as u64 + range_index as u64) % shard_count as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RANGE_SIZE_BYTES;

    #[test]
    fn empty_file_is_one_empty_chunk_in_one_range() {
        let plan = ChunkPlan::new(0).unwrap();
        assert_eq!(plan.chunk_count(), 1);
        assert_eq!(plan.chunk(0), (0, 0));
        assert_eq!(plan.range_count(), 1);
        let r = plan.range(0);
        assert_eq!((r.chunk_count, r.len_bytes, r.offset_bytes), (1, 0, 0));
        assert_eq!(plan.run(0, 1), Some((0, 0)));
    }

    #[test]
    fn runs_stay_inside_the_file() {
        let c = CHUNK_SIZE_BYTES;
        let plan = |size| ChunkPlan::new(size).unwrap();
        assert_eq!(plan(c + 1).run(1, 1), Some((c, 1)));
        assert_eq!(plan(c + 1).run(0, 2), Some((0, c + 1)));
        assert_eq!(plan(c + 1).run(1, 2), None);
        assert_eq!(plan(c).run(0, 0), None);
        assert_eq!(plan(FILE_SIZE_BYTES_MAX).run(u32::MAX, u32::MAX), None);
        let chunks: Vec<_> = plan(2 * c + 5).run_chunks(1, 2).collect();
        assert_eq!(chunks, [(c, c), (2 * c, 5)]);
    }

    #[test]
    fn chunk_boundaries() {
        let one = ChunkPlan::new(CHUNK_SIZE_BYTES).unwrap();
        assert_eq!(one.chunk_count(), 1);
        let plus = ChunkPlan::new(CHUNK_SIZE_BYTES + 1).unwrap();
        assert_eq!(plus.chunk_count(), 2);
        assert_eq!(plus.chunk(1), (CHUNK_SIZE_BYTES, 1));
        assert_eq!(plus.range_count(), 1);
    }

    #[test]
    fn ranges_tile_the_file_exactly() {
        for size in [
            1,
            RANGE_SIZE_BYTES - 1,
            RANGE_SIZE_BYTES,
            RANGE_SIZE_BYTES + 1,
            1 << 30,
            (1 << 30) + 12345,
        ] {
            let plan = ChunkPlan::new(size).unwrap();
            let mut next_offset = 0;
            let mut next_chunk = 0;
            for r in plan.ranges() {
                assert_eq!(r.offset_bytes, next_offset);
                assert_eq!(r.first_chunk, next_chunk);
                next_offset += r.len_bytes;
                next_chunk += r.chunk_count;
            }
            assert_eq!(next_offset, size);
            assert_eq!(next_chunk, plan.chunk_count());
        }
    }

    #[test]
    fn too_large_is_refused() {
        assert!(ChunkPlan::new(FILE_SIZE_BYTES_MAX + 1).is_err());
        assert!(ChunkPlan::new(FILE_SIZE_BYTES_MAX).is_ok());
    }

    #[test]
    fn large_file_spreads_evenly_over_every_shard() {
        let plan = ChunkPlan::new(1 << 30).unwrap();
        for shards in 1..=8 {
            let own = owner(b"big.bin", shards);
            let mut per_shard = vec![0u32; shards];
            for r in plan.ranges() {
                per_shard[range_shard(own, r.index, shards).0 as usize] += 1;
            }
            let (min, max) = (
                per_shard.iter().min().unwrap(),
                per_shard.iter().max().unwrap(),
            );
            assert!(max - min <= 1, "{per_shard:?}");
            assert_eq!(range_shard(own, 0, shards), own);
        }
    }

    #[test]
    fn owner_is_deterministic_and_spreads_paths() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            let p = format!("dir{}/file{}", i % 200, i);
            let a = owner(p.as_bytes(), 4);
            assert_eq!(a, owner(p.as_bytes(), 4));
            counts[a.0 as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
