//! Named limits: every size, count and length the engine accepts is bounded by one of these.
//!
//! Units come last in the name (`chunk_size_bytes`), as in TigerBeetle's style. Values were
//! chosen by measurement on the 2-core development VM (see PERFORMANCE.md).

/// Bytes hashed as one BLAKE3 chunk. A file no larger than this is a single chunk.
/// 4 MiB: large enough that per-chunk overhead (an io_uring round trip, a hash finalize)
/// is negligible, small enough that a few chunks in flight per shard stay cheap in memory.
pub const CHUNK_SIZE_BYTES: u64 = 4 * 1024 * 1024;

/// Chunks per range. A range is the unit that is partitioned across shards, so a file
/// larger than one range (64 MiB) is spread over every shard.
pub const RANGE_CHUNKS: u64 = 16;

/// Bytes per range.
pub const RANGE_SIZE_BYTES: u64 = CHUNK_SIZE_BYTES * RANGE_CHUNKS;

/// Largest file the planner accepts: 1 PiB keeps every chunk index inside a `u32`.
pub const FILE_SIZE_BYTES_MAX: u64 = 1 << 50;

/// Largest number of chunks one file can have (follows from the two limits above).
pub const FILE_CHUNKS_MAX: u64 = FILE_SIZE_BYTES_MAX / CHUNK_SIZE_BYTES;

/// Most shards (executors) the engine will start.
pub const SHARDS_MAX: usize = 1024;

/// Most files one job can hold; file ids are `u32`.
pub const JOB_FILES_MAX: usize = u32::MAX as usize;

/// Ranges a shard works on at once (each holds one chunk buffer at a time). Measured on
/// ext4: 16 beats both 2 (too little overlap) and 64 (io-wq workers fight over inode
/// allocation and directory locks).
pub const RANGES_IN_FLIGHT_PER_SHARD: usize = 16;

/// Files a durable commit batch holds at most, and how many ready files make one due
/// (see `commit`).
pub const COMMIT_BATCH_FILES_MAX: usize = 8192;

/// Bytes written since the last batch that make a durable commit batch due.
pub const COMMIT_BATCH_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Longest path, in bytes, accepted from a walk (Linux PATH_MAX).
pub const PATH_BYTES_MAX: usize = 4096;

/// Deepest directory nesting the walker descends into.
pub const TREE_DEPTH_MAX: usize = 1024;

/// Longest single name (path component), in bytes, accepted from a peer (Linux NAME_MAX).
pub const NAME_BYTES_MAX: usize = 255;
