//! Sans-IO shard logic of tpc-xfer: chunk planning, partitioning, digests, file assembly,
//! commit batching, change detection, tree comparison, flow-window tuning, the remote
//! session's state machines and the TCP transport's stream multiplexer.
//!
//! Nothing in this crate opens a file, touches a socket or reads a clock. Drivers (the
//! glommio/io_uring driver in `shards/uring`, and later a portable one) feed it facts — a
//! range was hashed, a shard reported back, a file was written — and carry out what it
//! decides. That keeps the decisions deterministic and testable without any I/O.

pub mod admission;
pub mod assembly;
pub mod codec;
pub mod commit;
pub mod compare;
pub mod digest;
pub mod filter;
pub mod limits;
pub mod mux;
pub mod pace;
pub mod place;
pub mod plan;
pub mod prune;
pub mod relpath;
pub mod schedule;
pub mod session;
pub mod temp;
pub mod window;
pub mod wire;

pub use assembly::{Assembly, AssemblyError, Completed};
pub use commit::{Batching, Tracker};
pub use compare::{Change, CheckedEntry, Difference, EntryKind, EntryMeta, SkipPolicy};
pub use digest::{ChunkHash, FileDigest};
pub use plan::{ChunkPlan, FileId, RangeSpan, ShardId};
pub use relpath::{PathError, RelPath};
