//! The tpc-xfer wire protocol, version 2: frames, their encoding, and the limits every
//! field is checked against before anything is allocated. Specified in docs/PROTOCOL.md.
//!
//! Frames travel on QUIC bidirectional streams. Each frame is `type: u8`, `len: u32`
//! (little endian, at most `FRAME_BYTES_MAX`), then `len` bytes of payload. A `Put` frame
//! (and a `Data` frame, the answer to a `Get`) is followed on its stream by each chunk it
//! names: a codec byte, the chunk's bytes (raw, or zstd frames after their length; see
//! `codec`), then the 32-byte BLAKE3 hash of the plain bytes. Those are not framed
//! because their length follows from the header, which keeps 4 MiB chunks out of frame
//! buffers; the hash comes after its chunk so the sender hashes as it reads, in one pass.
//!
//! Decoding never panics and never trusts a length: every count is checked against its
//! named limit and against the bytes actually present before a vector is reserved.

use std::ops::Range;

use crate::digest::ChunkHash;
use crate::filter::{PATTERN_BYTES_MAX, RULES_MAX};
use crate::limits::{FILE_SIZE_BYTES_MAX, PATH_BYTES_MAX, RANGE_CHUNKS, SHARDS_MAX};

/// ALPN of protocol version 6; a peer that speaks anything else fails the TLS handshake.
pub const ALPN: &[u8] = b"tpc-xfer/6";

/// Version carried in `Hello`; bumped on any incompatible change. Version 2 added the
/// per-chunk codec byte (zstd) and the run header's `codecs`; version 3 the TCP transport
/// (its stream multiplexer, `tpc_engine::tcp`) beside QUIC, with `Welcome`'s ports
/// naming both a UDP and a TCP port of each server shard; version 4 the `Unlisted` frame,
/// which tells a pulling client what the server's listing had to leave out; version 5 a
/// push's `--delete` (`Finish` carries its `DeleteRequest`, `Done` what it removed);
/// version 6 a pull's `--bwlimit` (`Hello`'s `rate`).
pub const PROTOCOL_VERSION: u16 = 6;

/// Bytes of a frame header: type (1) + payload length (4).
pub const FRAME_HEADER_BYTES: usize = 5;

/// Largest frame payload. Bounds what a peer can make us buffer for one frame. Senders
/// split a manifest with `entry_frames`, which keeps each `Entries` frame under it.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Entries in one `Entries` frame.
pub const ENTRIES_PER_FRAME_MAX: usize = 4096;

/// Entries in a whole manifest (one session). 16 Mi entries keeps the receiver's
/// per-entry state (a few hundred bytes each) within a few GiB; a larger tree goes in
/// more than one session.
pub const MANIFEST_ENTRIES_MAX: u64 = 16 * 1024 * 1024;

/// Encoded bytes of a whole manifest (all of its `Entries` frames). With
/// `MANIFEST_ENTRIES_MAX` it bounds what one peer's manifest makes the receiver hold:
/// 16 Mi entries with paths of about 100 bytes fit, 16 Mi entries of 4 KiB paths (or of
/// hashes) do not. A server also bounds all its sessions' manifests together
/// (`admission::MANIFEST_BYTES_HELD_MAX`).
pub const MANIFEST_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Chunk hashes an entry of the manifest may carry (64 Ki x 4 MiB = 256 GiB). Larger
/// files are announced without hashes, and the receiver asks for all of their chunks.
pub const ENTRY_HASHES_MAX: usize = 64 * 1024;

/// Items in one `Need` frame, and file indices in one `Commit` / `Committed` frame.
pub const ITEMS_PER_FRAME_MAX: usize = 16 * 1024;

/// Bytes of the human-readable message of an `Error` or `Failed` frame.
pub const MESSAGE_BYTES_MAX: usize = 1024;

/// Chunks one `Put` or `Get` may carry: one range, so that a stream's work is bounded.
pub const STREAM_CHUNKS_MAX: u32 = RANGE_CHUNKS as u32;

/// Frame type bytes. Gaps are reserved.
mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const ENTRIES: u8 = 3;
    pub const ENTRIES_END: u8 = 4;
    pub const NEED: u8 = 5;
    pub const NEED_END: u8 = 6;
    pub const PUT: u8 = 7;
    pub const GET: u8 = 8;
    pub const DATA: u8 = 9;
    pub const RANGE_OK: u8 = 10;
    pub const COMMIT: u8 = 11;
    pub const COMMITTED: u8 = 12;
    pub const FAILED: u8 = 13;
    pub const FINISH: u8 = 14;
    pub const DONE: u8 = 15;
    pub const ERROR: u8 = 16;
    pub const UNLISTED: u8 = 17;
}

/// A push's `--delete`, sent with `Finish` once every file went well on the client's
/// side: beneath each base, what the manifest does not hold is removed, less what the
/// rules protect (`tpc_core::prune`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// Entries removed at most (`--max-delete`); `u64::MAX` for no limit.
    pub max: u64,
    /// Directories, relative to the push's destination, whose extraneous entries go: the
    /// landing of each directory source.
    pub bases: Vec<Vec<u8>>,
    /// The client's filter rules in order, `true` for an include: what they exclude is
    /// neither sent nor deleted. Patterns as the user wrote them (UTF-8).
    pub rules: Vec<(bool, String)>,
}

/// Bases in a `DeleteRequest`: one per source of the push.
pub const DELETE_BASES_MAX: usize = 4096;

/// What a client asks for in `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The client sends a tree into `dest` (relative to the server root).
    Push { dest: Vec<u8>, durable: bool },
    /// The client fetches `src` (relative to the server root), less what `select`
    /// leaves out, its data sent at most at `rate` bytes a second (`--bwlimit`).
    Pull {
        src: Vec<u8>,
        select: Selection,
        rate: Option<u64>,
    },
}

/// What a pull's server leaves out of its listing: the client's `--include`/`--exclude`
/// rules in order (`true` for an include, patterns as written, UTF-8) and size limits.
/// The default leaves out nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub rules: Vec<(bool, String)>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
}

impl Selection {
    /// The filter these rules and limits make; an error names a rule that does not
    /// compile.
    pub fn filter(&self) -> Result<crate::filter::Filter, crate::filter::FilterError> {
        rules_filter(&self.rules, self.min_size, self.max_size)
    }
}

/// A filter from rules as the wire carries them (`Selection`, `DeleteRequest`).
pub fn rules_filter(
    rules: &[(bool, String)],
    min_size: Option<u64>,
    max_size: Option<u64>,
) -> Result<crate::filter::Filter, crate::filter::FilterError> {
    use crate::filter::{Action, Filter};
    let mut filter = Filter::default();
    for (include, pattern) in rules {
        let action = if *include {
            Action::Include
        } else {
            Action::Exclude
        };
        filter.add(action, pattern)?;
    }
    filter.min_size = min_size;
    filter.max_size = max_size;
    Ok(filter)
}

/// What the destination of a push is on the server, so the client can apply the same
/// trailing-slash and into-a-directory rules as a local copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestKind {
    Missing = 0,
    Dir = 1,
    Other = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
}

/// One manifest entry. `path` is relative to the transfer's base and validated by the
/// receiver (`RelPath`); an empty path is the base itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: WireKind,
    pub path: Vec<u8>,
    pub size: u64,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub mtime: (i64, u32),
    /// Symlink target, stored as given and never resolved.
    pub target: Vec<u8>,
    /// Chunk hashes, when the sender has them: empty, or exactly one per chunk.
    pub hashes: Vec<ChunkHash>,
}

impl Entry {
    /// Bytes of this entry inside an `Entries` frame.
    pub fn encoded_bytes(&self) -> usize {
        1 + (4 + self.path.len())
            + 8
            + 4
            + 8
            + 4
            + (4 + self.target.len())
            + 4
            + 32 * self.hashes.len()
    }
}

/// Splits a manifest into the runs that each fit one `Entries` frame: at most
/// `ENTRIES_PER_FRAME_MAX` entries and `FRAME_BYTES_MAX` bytes (long paths or many hashes
/// fill a frame before the count does). Returns each run's bounds, so that a sender can
/// keep the manifest and encode one frame at a time.
pub fn entry_frames(entries: &[Entry]) -> Vec<Range<usize>> {
    frames_within(entries, ENTRIES_PER_FRAME_MAX, Entry::encoded_bytes)
}

/// Splits `items` into consecutive runs of at most `per_frame` items whose encodings
/// (`bytes` each, after a 4-byte count) fit `FRAME_BYTES_MAX`; returns their bounds.
fn frames_within<T>(
    items: &[T],
    per_frame: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 4);
    for (i, item) in items.iter().enumerate() {
        let n = bytes(item);
        if i > start && (i - start == per_frame || used + n > FRAME_BYTES_MAX) {
            out.push(start..i);
            (start, used) = (i, 4);
        }
        used += n;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

/// What a manifest being received has used of its limits, `Entries` frame by frame.
#[derive(Debug, Default)]
pub struct ManifestBudget {
    entries: u64,
    bytes: u64,
}

impl ManifestBudget {
    /// Encoded bytes of the manifest taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Counts one `Entries` frame against `MANIFEST_ENTRIES_MAX` and `MANIFEST_BYTES_MAX`.
    pub fn take(&mut self, batch: &[Entry]) -> Result<(), WireError> {
        let entries = self.entries + batch.len() as u64;
        if entries > MANIFEST_ENTRIES_MAX {
            return Err(WireError::Limit {
                field: "manifest entries",
                value: entries,
                max: MANIFEST_ENTRIES_MAX,
            });
        }
        let bytes = self.bytes + batch.iter().map(|e| e.encoded_bytes() as u64).sum::<u64>();
        if bytes > MANIFEST_BYTES_MAX {
            return Err(WireError::Limit {
                field: "manifest bytes",
                value: bytes,
                max: MANIFEST_BYTES_MAX,
            });
        }
        (self.entries, self.bytes) = (entries, bytes);
        Ok(())
    }
}

/// Chunk hashes one `NeedItem` may carry of what the receiver already has: 64 Ki chunks,
/// the first 256 GiB of a file (2 MiB of hashes). Past them the file is sent whole.
pub const NEED_HAVE_HASHES_MAX: usize = 64 * 1024;

/// A run of chunks of one file that the receiver asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedItem {
    pub file: u32,
    pub chunk_first: u32,
    pub chunk_count: u32,
    /// BLAKE3 hashes of the receiver's existing bytes at chunks `chunk_first ..
    /// chunk_first + have.len()` (the old version of the file, where one is in place):
    /// the sender sends `CODEC_SAME` for a chunk whose hash matches instead of its bytes.
    pub have: Vec<ChunkHash>,
}

impl NeedItem {
    /// Bytes of this item in a `Need` frame.
    pub fn encoded_bytes(&self) -> usize {
        16 + 32 * self.have.len()
    }
}

/// Splits need items into the runs that each fit one `Need` frame: at most
/// `ITEMS_PER_FRAME_MAX` items and `FRAME_BYTES_MAX` bytes; returns their bounds.
pub fn need_frames(items: &[NeedItem]) -> Vec<Range<usize>> {
    frames_within(items, ITEMS_PER_FRAME_MAX, NeedItem::encoded_bytes)
}

/// Header of a data stream: a run of chunks of one file. After `Put` the chunks follow
/// from client to server; a `Get` asks the server for them, and it answers `Data` and
/// then the chunks. Each chunk travels as its codec byte, its bytes and then its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub session: u64,
    pub file: u32,
    /// Full path relative to the server root (the server checks it again).
    pub path: Vec<u8>,
    pub size: u64,
    pub chunk_first: u32,
    pub chunk_count: u32,
    /// Codecs the run's chunks may use besides raw (`codec::CODECS_*` bits): in a `Put`
    /// the ones the client will use, in a `Get` the ones it accepts.
    pub codecs: u8,
}

/// Why something failed, as seen by the peer. Stable numbers: they are on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A frame could not be decoded or broke a limit.
    Protocol = 1,
    /// `Hello` carried a version this peer does not speak.
    Version = 2,
    /// A path was absolute, had `..`, a NUL, or went through a symlink.
    PathRefused = 3,
    NotFound = 4,
    /// No space or quota left on the receiver.
    NoSpace = 5,
    /// The server is `--read-only`, or the destination is not writable.
    NotWritable = 6,
    Io = 7,
    /// A source file changed size while it was being sent.
    Changed = 8,
    /// Received bytes did not match their chunk hash.
    HashMismatch = 9,
    /// The server is shutting down or over a limit of its own.
    Busy = 10,
}

impl ErrorCode {
    /// The code with this number; also how a stream reset's application code is read.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Protocol,
            2 => Version,
            3 => PathRefused,
            4 => NotFound,
            5 => NoSpace,
            6 => NotWritable,
            7 => Io,
            8 => Changed,
            9 => HashMismatch,
            10 => Busy,
            _ => return None,
        })
    }

    /// Classifies an errno met while writing on the receiver.
    pub fn for_errno(errno: i32) -> ErrorCode {
        // The numbers differ by OS (ELOOP is 40 on Linux, 62 on macOS, 114 in Windows'
        // C runtime), so they come from libc, never from literals.
        match errno {
            libc::ENOSPC => ErrorCode::NoSpace,
            #[cfg(unix)]
            libc::EDQUOT => ErrorCode::NoSpace,
            libc::ENOENT => ErrorCode::NotFound,
            libc::EACCES | libc::EPERM | libc::EROFS => ErrorCode::NotWritable,
            libc::ELOOP | libc::EXDEV => ErrorCode::PathRefused,
            _ => ErrorCode::Io,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        op: Op,
    },
    Welcome {
        session: u64,
        /// UDP port of each server shard, in shard order; data connections go there.
        shard_ports: Vec<u16>,
        dest: DestKind,
    },
    Entries(Vec<Entry>),
    EntriesEnd {
        count: u64,
    },
    Need(Vec<NeedItem>),
    NeedEnd,
    Put(Run),
    Get(Run),
    /// Answer to `Get`: each chunk follows as its codec byte, its bytes, then its hash.
    Data {
        chunk_count: u32,
    },
    /// Answer to `Put`: written and every chunk verified.
    RangeOk,
    Commit {
        files: Vec<u32>,
    },
    /// These files are durable and in place.
    Committed {
        files: Vec<u32>,
    },
    /// One file failed; the session goes on.
    Failed {
        file: u32,
        code: ErrorCode,
        message: String,
    },
    /// The client's side is done; a push may ask for `--delete` with it.
    Finish {
        delete: Option<DeleteRequest>,
    },
    /// The session's end: a push's files put in place and bytes committed, and what its
    /// `--delete` removed and left (past `--max-delete`).
    Done {
        files: u64,
        bytes: u64,
        deleted: u64,
        left: u64,
    },
    /// The session or stream failed as a whole.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Pull: a part of the source the server could not list (an unreadable directory, a
    /// tree too deep), left out of the manifest; the session goes on. At most
    /// `UNLISTED_MAX` per session, between `Welcome` and `EntriesEnd`.
    Unlisted {
        code: ErrorCode,
        message: String,
    },
}

/// `Unlisted` frames in one pull session. A listing with more problems sends this many,
/// the last one counting the rest, so that a tree of unreadable directories cannot make
/// the client hold a message for each.
pub const UNLISTED_MAX: usize = 1024;

/// Why a frame was refused. Carries what was wrong, for the one-line error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended before a field did.
    Truncated {
        field: &'static str,
    },
    /// A length or count exceeded its named limit.
    Limit {
        field: &'static str,
        value: u64,
        max: u64,
    },
    UnknownFrame(u8),
    BadValue {
        field: &'static str,
        value: u64,
    },
    /// Bytes were left after the last field.
    Trailing {
        frame: u8,
        bytes: usize,
    },
    /// A frame arrived where the protocol does not allow it.
    Unexpected {
        expected: &'static str,
        got: u8,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated { field } => write!(f, "frame truncated in field {field}"),
            WireError::Limit { field, value, max } => {
                write!(f, "{field} is {value}, over the limit of {max}")
            }
            WireError::UnknownFrame(t) => write!(f, "unknown frame type {t}"),
            WireError::BadValue { field, value } => write!(f, "bad value {value} for {field}"),
            WireError::Trailing { frame, bytes } => {
                write!(f, "{bytes} stray bytes after frame type {frame}")
            }
            WireError::Unexpected { expected, got } => {
                write!(f, "expected {expected}, got frame type {got}")
            }
        }
    }
}

impl std::error::Error for WireError {}

impl Frame {
    /// Type byte of this frame.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Entries(_) => kind::ENTRIES,
            Frame::EntriesEnd { .. } => kind::ENTRIES_END,
            Frame::Need(_) => kind::NEED,
            Frame::NeedEnd => kind::NEED_END,
            Frame::Put(_) => kind::PUT,
            Frame::Get(_) => kind::GET,
            Frame::Data { .. } => kind::DATA,
            Frame::RangeOk => kind::RANGE_OK,
            Frame::Commit { .. } => kind::COMMIT,
            Frame::Committed { .. } => kind::COMMITTED,
            Frame::Failed { .. } => kind::FAILED,
            Frame::Finish { .. } => kind::FINISH,
            Frame::Done { .. } => kind::DONE,
            Frame::Error { .. } => kind::ERROR,
            Frame::Unlisted { .. } => kind::UNLISTED,
        }
    }

    /// Appends the encoded frame (header and payload) to `out`.
    ///
    /// Panics if the frame breaks a limit: we never send what we would refuse to receive,
    /// so that is a bug on this side.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.kind());
        out.extend_from_slice(&[0; 4]);
        let mut w = Writer(out);
        match self {
            Frame::Hello { version, op } => {
                w.u16(*version);
                match op {
                    Op::Push { dest, durable } => {
                        w.u8(0);
                        w.bytes(dest, PATH_BYTES_MAX);
                        w.u8(*durable as u8);
                    }
                    Op::Pull { src, select, rate } => {
                        w.u8(1);
                        w.bytes(src, PATH_BYTES_MAX);
                        w.rules(&select.rules);
                        w.u64(select.min_size.unwrap_or(0));
                        w.u64(select.max_size.unwrap_or(u64::MAX));
                        w.u64(rate.unwrap_or(0));
                    }
                }
            }
            Frame::Welcome {
                session,
                shard_ports,
                dest,
            } => {
                w.u64(*session);
                w.count(shard_ports.len(), SHARDS_MAX);
                for p in shard_ports {
                    w.u16(*p);
                }
                w.u8(*dest as u8);
            }
            Frame::Entries(entries) => {
                w.count(entries.len(), ENTRIES_PER_FRAME_MAX);
                for e in entries {
                    w.u8(e.kind as u8);
                    w.bytes(&e.path, PATH_BYTES_MAX);
                    w.u64(e.size);
                    w.u32(e.mode);
                    w.u64(e.mtime.0 as u64);
                    w.u32(e.mtime.1);
                    w.bytes(&e.target, PATH_BYTES_MAX);
                    w.hashes(&e.hashes, ENTRY_HASHES_MAX);
                }
            }
            Frame::EntriesEnd { count } => w.u64(*count),
            Frame::Need(items) => {
                w.count(items.len(), ITEMS_PER_FRAME_MAX);
                for i in items {
                    w.u32(i.file);
                    w.u32(i.chunk_first);
                    w.u32(i.chunk_count);
                    w.hashes(&i.have, NEED_HAVE_HASHES_MAX);
                }
            }
            Frame::NeedEnd | Frame::RangeOk => {}
            Frame::Finish { delete: None } => w.u8(0),
            Frame::Finish { delete: Some(d) } => {
                w.u8(1);
                w.u64(d.max);
                w.count(d.bases.len(), DELETE_BASES_MAX);
                for b in &d.bases {
                    w.bytes(b, PATH_BYTES_MAX);
                }
                w.rules(&d.rules);
            }
            Frame::Put(run) | Frame::Get(run) => {
                w.u64(run.session);
                w.u32(run.file);
                w.bytes(&run.path, PATH_BYTES_MAX);
                w.u64(run.size);
                w.u32(run.chunk_first);
                w.u32(run.chunk_count);
                w.u8(run.codecs);
            }
            Frame::Data { chunk_count } => w.u32(*chunk_count),
            Frame::Commit { files } | Frame::Committed { files } => {
                w.count(files.len(), ITEMS_PER_FRAME_MAX);
                for f in files {
                    w.u32(*f);
                }
            }
            Frame::Failed {
                file,
                code,
                message,
            } => {
                w.u32(*file);
                w.u16(*code as u16);
                w.message(message);
            }
            Frame::Done {
                files,
                bytes,
                deleted,
                left,
            } => {
                w.u64(*files);
                w.u64(*bytes);
                w.u64(*deleted);
                w.u64(*left);
            }
            Frame::Error { code, message } | Frame::Unlisted { code, message } => {
                w.u16(*code as u16);
                w.message(message);
            }
        }
        let len = out.len() - start - FRAME_HEADER_BYTES;
        assert!(len <= FRAME_BYTES_MAX, "encoded frame over FRAME_BYTES_MAX");
        out[start + 1..start + FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Reads a frame header: the type and the payload length, checked against
    /// `FRAME_BYTES_MAX` so the caller can size its buffer safely.
    pub fn header(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<(u8, usize), WireError> {
        let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(WireError::Limit {
                field: "frame length",
                value: len as u64,
                max: FRAME_BYTES_MAX as u64,
            });
        }
        Ok((bytes[0], len))
    }

    /// Decodes one frame's payload, given its type byte.
    pub fn decode(kind_byte: u8, payload: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader { buf: payload };
        let frame = match kind_byte {
            kind::HELLO => {
                let version = r.u16("version")?;
                let op = match r.u8("op")? {
                    0 => Op::Push {
                        dest: r.bytes("dest", PATH_BYTES_MAX)?,
                        durable: r.bool("durable")?,
                    },
                    1 => Op::Pull {
                        src: r.bytes("src", PATH_BYTES_MAX)?,
                        select: Selection {
                            rules: r.rules()?,
                            min_size: Some(r.u64("min size")?).filter(|&n| n > 0),
                            max_size: Some(r.u64("max size")?).filter(|&n| n < u64::MAX),
                        },
                        // 0: no limit. A limit below the floor is raised to it.
                        rate: Some(r.u64("rate")?)
                            .filter(|&n| n > 0)
                            .map(|n| n.max(crate::pace::RATE_MIN_BYTES_PER_SEC)),
                    },
                    v => {
                        return Err(WireError::BadValue {
                            field: "op",
                            value: v as u64,
                        })
                    }
                };
                Frame::Hello { version, op }
            }
            kind::WELCOME => {
                let session = r.u64("session")?;
                let n = r.count("shard_ports", SHARDS_MAX, 2)?;
                let mut shard_ports = Vec::with_capacity(n);
                for _ in 0..n {
                    shard_ports.push(r.u16("shard port")?);
                }
                if n == 0 {
                    return Err(WireError::BadValue {
                        field: "shard_ports",
                        value: 0,
                    });
                }
                let dest = match r.u8("dest")? {
                    0 => DestKind::Missing,
                    1 => DestKind::Dir,
                    2 => DestKind::Other,
                    v => {
                        return Err(WireError::BadValue {
                            field: "dest",
                            value: v as u64,
                        })
                    }
                };
                Frame::Welcome {
                    session,
                    shard_ports,
                    dest,
                }
            }
            kind::ENTRIES => {
                // Smallest possible entry: kind, two empty byte strings, size, mode,
                // mtime and an empty hash list.
                let n = r.count("entries", ENTRIES_PER_FRAME_MAX, 1 + 4 + 8 + 4 + 12 + 4 + 4)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = match r.u8("entry kind")? {
                        0 => WireKind::File,
                        1 => WireKind::Dir,
                        2 => WireKind::Symlink,
                        v => {
                            return Err(WireError::BadValue {
                                field: "entry kind",
                                value: v as u64,
                            })
                        }
                    };
                    let path = r.bytes("path", PATH_BYTES_MAX)?;
                    let size = r.u64("size")?;
                    if size > FILE_SIZE_BYTES_MAX {
                        return Err(WireError::Limit {
                            field: "size",
                            value: size,
                            max: FILE_SIZE_BYTES_MAX,
                        });
                    }
                    let mode = r.u32("mode")?;
                    if mode > 0o7777 {
                        return Err(WireError::BadValue {
                            field: "mode",
                            value: mode as u64,
                        });
                    }
                    let mtime = (r.u64("mtime")? as i64, r.u32("mtime ns")?);
                    if mtime.1 >= 1_000_000_000 {
                        return Err(WireError::BadValue {
                            field: "mtime ns",
                            value: mtime.1 as u64,
                        });
                    }
                    let target = r.bytes("target", PATH_BYTES_MAX)?;
                    let hashes = r.hashes("entry hashes", ENTRY_HASHES_MAX)?;
                    entries.push(Entry {
                        kind,
                        path,
                        size,
                        mode,
                        mtime,
                        target,
                        hashes,
                    });
                }
                Frame::Entries(entries)
            }
            kind::ENTRIES_END => {
                let count = r.u64("count")?;
                if count > MANIFEST_ENTRIES_MAX {
                    return Err(WireError::Limit {
                        field: "manifest entries",
                        value: count,
                        max: MANIFEST_ENTRIES_MAX,
                    });
                }
                Frame::EntriesEnd { count }
            }
            kind::NEED => {
                let n = r.count("need items", ITEMS_PER_FRAME_MAX, 16)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let item = NeedItem {
                        file: r.u32("file")?,
                        chunk_first: r.u32("chunk_first")?,
                        chunk_count: r.u32("chunk_count")?,
                        have: r.hashes("have", NEED_HAVE_HASHES_MAX)?,
                    };
                    if item.have.len() as u64 > u64::from(item.chunk_count) {
                        return Err(WireError::Limit {
                            field: "have hashes",
                            value: item.have.len() as u64,
                            max: u64::from(item.chunk_count),
                        });
                    }
                    items.push(item);
                }
                Frame::Need(items)
            }
            kind::NEED_END => Frame::NeedEnd,
            kind::PUT | kind::GET => {
                let run = Run {
                    session: r.u64("session")?,
                    file: r.u32("file")?,
                    path: r.bytes("path", PATH_BYTES_MAX)?,
                    size: r.size()?,
                    chunk_first: r.u32("chunk_first")?,
                    chunk_count: r.u32("chunk_count")?,
                    codecs: r.u8("codecs")?,
                };
                stream_chunks(run.chunk_count)?;
                if !crate::codec::codecs_valid(run.codecs) {
                    return Err(WireError::BadValue {
                        field: "codecs",
                        value: u64::from(run.codecs),
                    });
                }
                if kind_byte == kind::PUT {
                    Frame::Put(run)
                } else {
                    Frame::Get(run)
                }
            }
            kind::DATA => {
                let chunk_count = r.u32("chunk_count")?;
                stream_chunks(chunk_count)?;
                Frame::Data { chunk_count }
            }
            kind::RANGE_OK => Frame::RangeOk,
            kind::COMMIT | kind::COMMITTED => {
                let n = r.count("files", ITEMS_PER_FRAME_MAX, 4)?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(r.u32("file")?);
                }
                if kind_byte == kind::COMMIT {
                    Frame::Commit { files }
                } else {
                    Frame::Committed { files }
                }
            }
            kind::FAILED => Frame::Failed {
                file: r.u32("file")?,
                code: r.code()?,
                message: r.message()?,
            },
            kind::FINISH => Frame::Finish {
                delete: if r.bool("delete")? {
                    let max = r.u64("max delete")?;
                    let n = r.count("delete bases", DELETE_BASES_MAX, 4)?;
                    let mut bases = Vec::with_capacity(n);
                    for _ in 0..n {
                        bases.push(r.bytes("delete base", PATH_BYTES_MAX)?);
                    }
                    let rules = r.rules()?;
                    Some(DeleteRequest { max, bases, rules })
                } else {
                    None
                },
            },
            kind::DONE => Frame::Done {
                files: r.u64("files")?,
                bytes: r.u64("bytes")?,
                deleted: r.u64("deleted")?,
                left: r.u64("left")?,
            },
            kind::ERROR => Frame::Error {
                code: r.code()?,
                message: r.message()?,
            },
            kind::UNLISTED => Frame::Unlisted {
                code: r.code()?,
                message: r.message()?,
            },
            other => return Err(WireError::UnknownFrame(other)),
        };
        if !r.buf.is_empty() {
            return Err(WireError::Trailing {
                frame: kind_byte,
                bytes: r.buf.len(),
            });
        }
        Ok(frame)
    }
}

fn stream_chunks(n: u32) -> Result<(), WireError> {
    if n > STREAM_CHUNKS_MAX {
        return Err(WireError::Limit {
            field: "chunk_count",
            value: n as u64,
            max: STREAM_CHUNKS_MAX as u64,
        });
    }
    Ok(())
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn rules(&mut self, rules: &[(bool, String)]) {
        self.count(rules.len(), RULES_MAX);
        for (include, pattern) in rules {
            self.u8(*include as u8);
            self.bytes(pattern.as_bytes(), PATTERN_BYTES_MAX);
        }
    }

    fn count(&mut self, n: usize, max: usize) {
        assert!(n <= max, "count {n} over its limit {max}");
        self.u32(n as u32);
    }
    fn bytes(&mut self, b: &[u8], max: usize) {
        self.count(b.len(), max);
        self.0.extend_from_slice(b);
    }
    fn hashes(&mut self, h: &[ChunkHash], max: usize) {
        self.count(h.len(), max);
        for x in h {
            self.0.extend_from_slice(&x.0);
        }
    }
    fn message(&mut self, m: &str) {
        // Messages are for humans: cut at a char boundary rather than refuse to send.
        self.bytes(message_prefix(m).as_bytes(), MESSAGE_BYTES_MAX);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadValue {
                field,
                value: v as u64,
            }),
        }
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn size(&mut self) -> Result<u64, WireError> {
        let size = self.u64("size")?;
        if size > FILE_SIZE_BYTES_MAX {
            return Err(WireError::Limit {
                field: "size",
                value: size,
                max: FILE_SIZE_BYTES_MAX,
            });
        }
        Ok(size)
    }
    /// A count, checked against its limit and against the bytes left (each item takes at
    /// least `item_bytes_min`), so a lying count cannot make us reserve memory.
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        item_bytes_min: usize,
    ) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(WireError::Limit {
                field,
                value: n as u64,
                max: max as u64,
            });
        }
        if n.saturating_mul(item_bytes_min) > self.buf.len() {
            return Err(WireError::Truncated { field });
        }
        Ok(n)
    }
    fn rules(&mut self) -> Result<Vec<(bool, String)>, WireError> {
        let n = self.count("rules", RULES_MAX, 5)?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let include = self.bool("rule action")?;
            let pattern = self.bytes("rule pattern", PATTERN_BYTES_MAX)?;
            let len = pattern.len() as u64;
            let pattern = String::from_utf8(pattern).map_err(|_| WireError::BadValue {
                field: "rule pattern (not UTF-8), length",
                value: len,
            })?;
            rules.push((include, pattern));
        }
        Ok(rules)
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
        let n = self.count(field, max, 1)?;
        Ok(self.take(n, field)?.to_vec())
    }
    fn hashes(&mut self, field: &'static str, max: usize) -> Result<Vec<ChunkHash>, WireError> {
        let n = self.count(field, max, 32)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.take(32, field)?;
            out.push(ChunkHash(b.try_into().expect("32 bytes")));
        }
        Ok(out)
    }
    fn code(&mut self) -> Result<ErrorCode, WireError> {
        let v = self.u16("error code")?;
        // An unknown code from a newer peer is still an error: report it as Io.
        Ok(ErrorCode::from_u16(v).unwrap_or(ErrorCode::Io))
    }
    /// A peer's human-readable message, with its control characters escaped here, at
    /// the one place every peer message passes: printed or logged anywhere, it cannot
    /// move the cursor, clear a screen or forge a line of its own (issue 25, finding 10).
    /// Escaping (and replacing bytes that are not UTF-8) can make a message up to four
    /// times longer; it is cut back to `MESSAGE_BYTES_MAX` at a char boundary, so that a
    /// decoded frame is one this side could send as it is (the `frame` fuzz target found
    /// a decoded `Error` that re-encoded shorter).
    fn message(&mut self) -> Result<String, WireError> {
        let b = self.bytes("message", MESSAGE_BYTES_MAX)?;
        let m = escape_controls(&String::from_utf8_lossy(&b));
        Ok(message_prefix(&m).to_string())
    }
}

/// The longest prefix of `m` within `MESSAGE_BYTES_MAX` that ends at a char boundary.
fn message_prefix(m: &str) -> &str {
    let mut end = m.len().min(MESSAGE_BYTES_MAX);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    &m[..end]
}

/// `text` with every control character written out as `\xNN` (newline and tab too).
/// Backslashes are left as they are: a peer's paths arrive already quoted that way.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn peer_messages_arrive_with_control_characters_escaped() {
        let mut buf = Vec::new();
        Frame::Error {
            code: ErrorCode::Io,
            message: "bad\n\x1b[2Jline\\x0a".into(),
        }
        .encode(&mut buf);
        let (k, _) = Frame::header(buf[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
        match Frame::decode(k, &buf[FRAME_HEADER_BYTES..]).unwrap() {
            Frame::Error { message, .. } => {
                assert_eq!(message, "bad\\x0a\\x1b[2Jline\\x0a");
                assert!(!message.chars().any(char::is_control));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(escape_controls("plain text"), "plain text");
    }

    use super::*;

    #[test]
    fn a_manifest_budget_refuses_past_either_limit() {
        let e = |len: usize| Entry {
            kind: WireKind::File,
            path: vec![b'p'; len],
            size: 1,
            mode: 0o644,
            mtime: (0, 0),
            target: Vec::new(),
            hashes: Vec::new(),
        };
        let mut b = ManifestBudget::default();
        b.take(&[e(10), e(20)]).unwrap();
        assert_eq!(
            (b.entries, b.bytes),
            (2, (e(10).encoded_bytes() + e(20).encoded_bytes()) as u64)
        );
        // Just under the byte limit, then one byte-heavy frame too many.
        b.bytes = MANIFEST_BYTES_MAX - e(4000).encoded_bytes() as u64;
        b.take(&[e(4000)]).unwrap();
        assert!(matches!(
            b.take(&[e(1)]),
            Err(WireError::Limit {
                field: "manifest bytes",
                ..
            })
        ));
        // The entry count, whatever the bytes.
        let mut b = ManifestBudget {
            entries: MANIFEST_ENTRIES_MAX - 1,
            bytes: 0,
        };
        b.take(&[e(1)]).unwrap();
        assert!(matches!(
            b.take(&[e(1)]),
            Err(WireError::Limit {
                field: "manifest entries",
                ..
            })
        ));
        // A refused frame leaves the budget as it was.
        assert_eq!(b.entries, MANIFEST_ENTRIES_MAX);
    }

    #[test]
    fn long_paths_split_a_manifest_into_frames_that_encode() {
        let e = |i: usize, len: usize| Entry {
            kind: WireKind::File,
            path: vec![b'a' + (i % 26) as u8; len],
            size: 1,
            mode: 0o644,
            mtime: (0, 0),
            target: vec![b'b'; len / 2],
            hashes: Vec::new(),
        };
        // Long names: bytes bound the frame before the count does.
        let long: Vec<Entry> = (0..ENTRIES_PER_FRAME_MAX).map(|i| e(i, 4000)).collect();
        // Short names: the count bounds it.
        let short: Vec<Entry> = (0..ENTRIES_PER_FRAME_MAX * 2 + 1)
            .map(|i| e(i, 10))
            .collect();
        for (entries, frames_at_least) in [(&long, 2), (&short, 3)] {
            let frames: Vec<&[Entry]> = entry_frames(entries)
                .into_iter()
                .map(|r| &entries[r])
                .collect();
            assert!(frames.len() >= frames_at_least, "{} frames", frames.len());
            assert_eq!(frames.iter().map(|f| f.len()).sum::<usize>(), entries.len());
            for f in frames {
                let mut buf = Vec::new();
                Frame::Entries(f.to_vec()).encode(&mut buf);
                let (k, len) = Frame::header(buf[..5].try_into().unwrap()).unwrap();
                assert_eq!(len, buf.len() - 5);
                assert_eq!(
                    Frame::decode(k, &buf[5..]).unwrap(),
                    Frame::Entries(f.to_vec())
                );
            }
        }
        assert!(entry_frames(&[]).is_empty());
    }

    fn round_trip(f: Frame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (k, len) = Frame::header(buf[..5].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - 5);
        assert_eq!(Frame::decode(k, &buf[5..]).unwrap(), f);
        // Every strict prefix of the payload is refused, never a panic.
        for cut in 0..len {
            assert!(Frame::decode(k, &buf[5..5 + cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let h = ChunkHash([7; 32]);
        round_trip(Frame::Hello {
            version: 1,
            op: Op::Push {
                dest: b"a/b".to_vec(),
                durable: true,
            },
        });
        round_trip(Frame::Hello {
            version: 1,
            op: Op::Pull {
                src: vec![],
                select: Default::default(),
                rate: None,
            },
        });
        round_trip(Frame::Welcome {
            session: 9,
            shard_ports: vec![7440, 7441],
            dest: DestKind::Dir,
        });
        round_trip(Frame::Entries(vec![
            Entry {
                kind: WireKind::File,
                path: b"x\ny".to_vec(),
                size: 5,
                mode: 0o644,
                mtime: (-1, 999_999_999),
                target: vec![],
                hashes: vec![h],
            },
            Entry {
                kind: WireKind::Symlink,
                path: b"l".to_vec(),
                size: 0,
                mode: 0o777,
                mtime: (1, 0),
                target: b"../t".to_vec(),
                hashes: vec![],
            },
        ]));
        round_trip(Frame::EntriesEnd { count: 2 });
        round_trip(Frame::Need(vec![
            NeedItem {
                file: 1,
                chunk_first: 0,
                chunk_count: 3,
                have: vec![],
            },
            NeedItem {
                file: 2,
                chunk_first: 4,
                chunk_count: 3,
                have: vec![ChunkHash([1; 32]), ChunkHash([2; 32])],
            },
        ]));
        round_trip(Frame::Put(Run {
            session: 1,
            file: 2,
            path: b"p".to_vec(),
            size: 10,
            chunk_first: 0,
            chunk_count: 2,
            codecs: 0,
        }));
        round_trip(Frame::Get(Run {
            session: 1,
            file: 2,
            path: b"p".to_vec(),
            size: 10,
            chunk_first: 0,
            chunk_count: 1,
            codecs: crate::codec::CODECS_ZSTD,
        }));
        round_trip(Frame::Data { chunk_count: 1 });
        round_trip(Frame::Commit { files: vec![1, 2] });
        round_trip(Frame::Committed { files: vec![3] });
        round_trip(Frame::Failed {
            file: 4,
            code: ErrorCode::NoSpace,
            message: "disk full".into(),
        });
        round_trip(Frame::Done {
            files: 1,
            bytes: 2,
            deleted: 3,
            left: 4,
        });
        round_trip(Frame::Finish { delete: None });
        round_trip(Frame::Hello {
            version: PROTOCOL_VERSION,
            op: Op::Pull {
                src: b"d/".to_vec(),
                select: Selection {
                    rules: vec![(true, "*/".into()), (false, "*".into())],
                    min_size: Some(1),
                    max_size: Some(1 << 40),
                },
                rate: Some(25_000_000),
            },
        });
        round_trip(Frame::Finish {
            delete: Some(DeleteRequest {
                max: 7,
                bases: vec![Vec::new(), b"src".to_vec()],
                rules: vec![(false, "*.o".into()), (true, "keep/".into())],
            }),
        });
        round_trip(Frame::Error {
            code: ErrorCode::PathRefused,
            message: "no".into(),
        });
        round_trip(Frame::Unlisted {
            code: ErrorCode::Io,
            message: "'d': Permission denied".into(),
        });
    }

    #[test]
    fn lying_lengths_are_refused_before_allocation() {
        // A frame header claiming more than the limit.
        let mut h = [kind::ENTRIES, 0, 0, 0, 0];
        h[1..].copy_from_slice(&((FRAME_BYTES_MAX as u32) + 1).to_le_bytes());
        assert!(matches!(Frame::header(&h), Err(WireError::Limit { .. })));
        // An entry count within the limit but larger than the bytes present.
        let payload = 4000u32.to_le_bytes();
        assert_eq!(
            Frame::decode(kind::ENTRIES, &payload),
            Err(WireError::Truncated { field: "entries" })
        );
        // A count over its limit.
        let payload = ((ITEMS_PER_FRAME_MAX as u32) + 1).to_le_bytes();
        assert!(matches!(
            Frame::decode(kind::NEED, &payload),
            Err(WireError::Limit { .. })
        ));
        // A path longer than PATH_BYTES_MAX.
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&((PATH_BYTES_MAX as u32) + 1).to_le_bytes());
        assert!(matches!(
            Frame::decode(kind::PUT, &p),
            Err(WireError::Limit { .. })
        ));
    }

    #[test]
    fn bad_values_and_strays_are_refused() {
        assert_eq!(Frame::decode(200, &[]), Err(WireError::UnknownFrame(200)));
        assert!(matches!(
            Frame::decode(kind::FINISH, &[0, 1]),
            Err(WireError::Trailing { .. })
        ));
        let mut buf = Vec::new();
        Frame::Get(Run {
            session: 1,
            file: 0,
            path: vec![],
            size: 1,
            chunk_first: 0,
            chunk_count: 1,
            codecs: 0,
        })
        .encode(&mut buf);
        // The run ends: chunk_count (4), codecs (1). Patch chunk_count over the
        // per-stream limit.
        let n = buf.len();
        let mut over = buf.clone();
        over[n - 5..n - 1].copy_from_slice(&(STREAM_CHUNKS_MAX + 1).to_le_bytes());
        assert!(matches!(
            Frame::decode(kind::GET, &over[5..]),
            Err(WireError::Limit { .. })
        ));
        // A codec bit this version does not know.
        buf[n - 1] = 0x80;
        assert_eq!(
            Frame::decode(kind::GET, &buf[5..]),
            Err(WireError::BadValue {
                field: "codecs",
                value: 0x80
            })
        );
        // A need item with more have hashes than chunks.
        let mut need = Vec::new();
        Frame::Need(vec![NeedItem {
            file: 0,
            chunk_first: 0,
            chunk_count: 1,
            have: vec![ChunkHash([0; 32]); 2],
        }])
        .encode(&mut need);
        assert!(matches!(
            Frame::decode(kind::NEED, &need[5..]),
            Err(WireError::Limit { .. })
        ));
    }

    #[test]
    fn need_frames_fit_the_frame_limit() {
        let big = NeedItem {
            file: 0,
            chunk_first: 0,
            chunk_count: NEED_HAVE_HASHES_MAX as u32,
            have: vec![ChunkHash([9; 32]); NEED_HAVE_HASHES_MAX],
        };
        let items = vec![big; 5];
        let frames: Vec<&[NeedItem]> = need_frames(&items).into_iter().map(|r| &items[r]).collect();
        assert_eq!(frames.iter().map(|f| f.len()).sum::<usize>(), 5);
        for f in frames {
            let mut buf = Vec::new();
            Frame::Need(f.to_vec()).encode(&mut buf);
            assert!(buf.len() - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
        }
    }
}
