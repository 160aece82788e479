//! The data path of a remote transfer, on a shard: read a run of chunks through the
//! shard's driver (io_uring or portable), hash each with BLAKE3, skip it if the receiver
//! already has it or compress it where that pays, and send it with its hash; or receive a
//! run, decode every chunk (or take it from the old version of the file) and verify it
//! against its hash, and only then write it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use tpc_core::codec::{
    ChunkHeader, Compression, Decoder, Encoder, CHUNK_HEADER_BYTES_MAX, CODECS_SAME, CODECS_ZSTD,
    FRAME_PLAIN_BYTES,
};
use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::relpath::RelPath;
use tpc_core::window::STREAMS_IN_FLIGHT_MIN;
use tpc_core::wire::{ErrorCode, Run};
use tpc_core::{ChunkHash, ChunkPlan};
use tpc_engine::confine::{Access, Root};
use tpc_engine::direct::{self, aligned_buf, AlignedBuf, DirectFile, DirectReader, DIRECT_ALIGN};
use tpc_engine::os;
use tpc_engine::pace::Pacer;
use tpc_engine::rt::{File, ReadBuf};
use tpc_engine::transport::{RecvStream, SendStream};

use super::receiver::Failure;
use super::{expect_end, SessionError};

/// Why a run of chunks could not be moved.
#[derive(Debug)]
pub enum DataError {
    /// The peer or the connection failed.
    Session(SessionError),
    /// Local I/O failed, or data did not verify; sent to the peer as this failure.
    Local(Failure),
}

impl From<SessionError> for DataError {
    fn from(e: SessionError) -> Self {
        DataError::Session(e)
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::Session(e) => e.fmt(f),
            DataError::Local(x) => f.write_str(&x.message),
        }
    }
}

fn io_failure(what: &str, e: &std::io::Error) -> DataError {
    local_failure(what, e, os::errno(e))
}

fn local_failure(what: &str, e: impl std::fmt::Display, errno: Option<i32>) -> DataError {
    DataError::Local(Failure::new(
        errno.map_or(ErrorCode::Io, ErrorCode::for_errno),
        format!("{what}: {e}"),
    ))
}

/// The chunks of run `first .. first + count` of a file of `size` bytes, as (offset,
/// length), and the run's length, by the one chunk geometry (`ChunkPlan`).
fn chunk_spans(
    size: u64,
    first: u32,
    count: u32,
) -> Result<(impl Iterator<Item = (u64, usize)>, u64), DataError> {
    let outside = || {
        DataError::Local(Failure::new(
            ErrorCode::Protocol,
            "chunk run outside the file",
        ))
    };
    let plan = ChunkPlan::new(size).map_err(|_| outside())?;
    let (_, len) = plan.run(first, count).ok_or_else(outside)?;
    // A chunk is at most CHUNK_SIZE_BYTES: its length fits usize.
    let spans = (plan.run_chunks(first, count)).map(|(offset, n)| (offset, n as usize));
    Ok((spans, len))
}

/// Bytes hashed and handed to QUIC at a time: small enough to stay in L2 between the two.
pub const HASH_PIECE_BYTES: usize = 256 * 1024;

/// Chunks from this size up are read into a buffer of their own, handed to QUIC without
/// a copy, and count against the connection's staged chunks (`send_staged_chunks`).
/// Smaller ones (small files, tails) cost little memory, and their reads must not wait
/// for a permit or a thread: a push of 20,000 files of 8 KiB took 16% longer when they
/// did.
const STAGED_CHUNK_BYTES_MIN: usize = 1024 * 1024;

/// What compression and the receiver's old copies saved over some runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Savings {
    /// Chunks that travelled zstd-compressed, and the bytes that saved on the wire
    /// (plain minus compressed).
    pub compressed_chunks: u64,
    pub compressed_saved_bytes: u64,
    /// Chunks not sent at all because the receiver's old version of the file held them
    /// (`CODEC_SAME`), and their bytes.
    pub reused_chunks: u64,
    pub reused_bytes: u64,
}

impl Savings {
    pub fn add(&mut self, other: Savings) {
        self.compressed_chunks += other.compressed_chunks;
        self.compressed_saved_bytes += other.compressed_saved_bytes;
        self.reused_chunks += other.reused_chunks;
        self.reused_bytes += other.reused_bytes;
    }
}

thread_local! {
    /// How fast zstd compresses on this shard's core, carried from one run's encoder to
    /// the next so that each run need not measure it again (shards are threads).
    static ZSTD_SPEED: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };

    /// Encoders this shard's finished runs left behind, for its next runs: a zstd
    /// context costs more to make than a small file costs to send (a push of 20,000
    /// files of 8 KiB spent 4% of its samples in `ZSTD_createCCtx`).
    static ENCODERS: std::cell::RefCell<Vec<Encoder>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encoders a shard keeps for reuse: one for each run of the usual number in flight, not
/// of the most there can be, since each holds its context's memory for the process's life.
const ENCODERS_KEPT_MAX: usize = STREAMS_IN_FLIGHT_MIN;

/// A run's encoder, given back to its shard's pool however the run ends: the bulk
/// compressor keeps nothing from one frame to the next, so a run that failed half way
/// leaves it as good as new.
struct PooledEncoder(Option<Encoder>);

impl PooledEncoder {
    fn take(mode: Compression) -> std::io::Result<PooledEncoder> {
        let kept = ENCODERS
            .with_borrow_mut(|v| v.pop())
            .filter(|e| e.mode() == mode);
        let enc = match kept {
            Some(e) => e,
            None => Encoder::new(mode)?,
        };
        Ok(PooledEncoder(Some(enc.with_speed(ZSTD_SPEED.get()))))
    }

    fn get(&mut self) -> &mut Encoder {
        self.0.as_mut().expect("an encoder until dropped")
    }
}

impl Drop for PooledEncoder {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            ENCODERS.with_borrow_mut(|v| {
                if v.len() < ENCODERS_KEPT_MAX {
                    v.push(e);
                }
            });
        }
    }
}

/// What one run did, for the transfer's summary.
#[derive(Debug, Default)]
pub struct RunLog {
    /// When each chunk was read off disk (sender) or verified and written (receiver).
    pub times: Vec<Instant>,
    pub saved: Savings,
    /// Where each chunk is also counted for a stall watchdog (`super::unless_stalled`).
    pub progress: Option<Progress>,
    /// `--bwlimit`: a sender books each piece on this schedule before sending it.
    pub pace: Option<Arc<Pacer>>,
}

impl RunLog {
    pub fn watched_by(progress: &Progress) -> RunLog {
        RunLog {
            progress: Some(progress.clone()),
            ..RunLog::default()
        }
    }

    /// The same, paced by `pace` (`--bwlimit`) if given.
    pub fn paced(self, pace: Option<Arc<Pacer>>) -> RunLog {
        RunLog { pace, ..self }
    }

    /// Waits until `bytes` of the data may be sent (`--bwlimit`). Each piece let go
    /// counts as progress for the stall watchdog: at a low limit, the chunks in flight
    /// share the rate and may each take longer than `--timeout` to complete.
    async fn pace(&self, bytes: usize) {
        if let Some(p) = &self.pace {
            p.take(bytes as u64).await;
            if let Some(progress) = &self.progress {
                progress.stir();
            }
        }
    }

    /// One chunk of `bytes` read to be sent (sender) or verified and written (receiver).
    fn chunk_done(&mut self, bytes: u64) {
        self.times.push(Instant::now());
        if let Some(p) = &self.progress {
            p.tick(bytes);
        }
    }
}

/// Chunks moved by a session's streams, on any shard, and their bytes: what tells a
/// slow transfer from a stalled one (`super::unless_stalled`), and what the client's
/// progress line shows. Keep-alives and idle streams do not count.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<[AtomicU64; 3]>);

/// Bytes a session's streams must receive, in all, to count as progress short of a whole
/// chunk (`Progress::received`): what the lowest `--bwlimit` moves in a second. A peer
/// that trickles a byte at a time gets nowhere near it within a `--timeout`.
const STIR_BYTES: u64 = tpc_core::pace::RATE_MIN_BYTES_PER_SEC;

impl Progress {
    pub fn tick(&self, bytes: u64) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
        self.0[1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Something moved, short of a whole chunk: a paced piece this end sent.
    pub fn stir(&self) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
    }

    /// `n` bytes of a chunk received: progress each time the session's streams have
    /// received another `STIR_BYTES` together.
    pub fn received(&self, n: u64) {
        let before = self.0[2].fetch_add(n, Ordering::Relaxed);
        if (before + n) / STIR_BYTES != before / STIR_BYTES {
            self.stir();
        }
    }

    /// Chunks moved so far, and pieces that stirred (`stir`): what the watchdog compares.
    pub fn seen(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }
}

fn protocol_failure(what: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Local(Failure::new(ErrorCode::Protocol, format!("{what}: {e}")))
}

/// Sends the chunks `run` names of `file`: each as its codec byte, its bytes (raw, or
/// zstd frames after their length where `compression` finds it pays and `run.codecs`
/// allows it; none at all where its hash matches `have`, the receiver's hash of its old
/// version at that chunk, counted from `run.chunk_first`), then the BLAKE3 hash of its
/// plain bytes. Returns the plain bytes covered. A file that is shorter than announced
/// (it changed since the manifest) fails with `Changed`.
pub async fn send_run(
    file: &File,
    what: &str,
    run: &Run,
    have: &[ChunkHash],
    compression: Compression,
    send: &mut SendStream,
    log: &mut RunLog,
) -> Result<u64, DataError> {
    let (spans, len) = chunk_spans(run.size, run.chunk_first, run.chunk_count)?;
    let compression = if run.codecs & CODECS_ZSTD == 0 {
        Compression::Never
    } else {
        compression
    };
    let have = if run.codecs & CODECS_SAME == 0 {
        &[][..]
    } else {
        have
    };
    let mut encoder = match compression {
        Compression::Never => None,
        mode => Some(PooledEncoder::take(mode).map_err(|e| local_failure("zstd", &e, None))?),
    };
    let mut frames = Vec::new();
    let mut direct = if direct::AVAILABLE && run.size >= DIRECT_FILE_BYTES_MIN {
        file.with_std(DirectReader::open)
    } else {
        None
    };
    // Bounds the large chunks this connection's senders hold read but not yet handed to
    // QUIC (`send_staged_chunks`).
    let staging = send.send_staging();
    for (index, (pos, n)) in spans.enumerate() {
        let large = n >= STAGED_CHUNK_BYTES_MIN;
        let _staged = match (&staging, large) {
            (Some(s), true) => Some(s.acquire().await),
            _ => None,
        };
        let data = if n > 0 {
            let buf = if large {
                read_large(file, &mut direct, pos, n).await
            } else {
                // Through the driver: on io_uring no thread handoff, and one small copy.
                file.read_at(pos, n)
                    .await
                    .map(ReadBuf::into_vec)
                    .map(Bytes::from)
            }
            .map_err(|e| io_failure(what, &e))?;
            if buf.len() != n {
                return Err(DataError::Local(Failure::new(
                    ErrorCode::Changed,
                    format!("{what}: file shrank while being sent"),
                )));
            }
            Some(buf)
        } else {
            None
        };
        log.chunk_done(n as u64);
        let bytes: &[u8] = data.as_deref().unwrap_or(&[]);
        // Where the receiver has an old version of this chunk, hash it first: if the
        // hashes match, only the codec byte and the hash travel.
        let known = match have.get(index) {
            Some(theirs) => {
                let ours = ChunkHash::of(bytes);
                if ours == *theirs {
                    let (header, len) = ChunkHeader::Same.encode();
                    log.pace(len + ours.0.len()).await;
                    send.write_all(&header[..len])
                        .await
                        .map_err(SessionError::from)?;
                    send.write_all(&ours.0).await.map_err(SessionError::from)?;
                    log.saved.add(Savings {
                        reused_chunks: 1,
                        reused_bytes: n as u64,
                        ..Savings::default()
                    });
                    continue;
                }
                Some(ours)
            }
            None => None,
        };
        let mut hasher = blake3::Hasher::new();
        // The path's rate is asked only where compression is on at all.
        let try_zstd = encoder
            .as_mut()
            .is_some_and(|e| e.get().worth_trying(bytes, send.send_rate_estimate()));
        if let Some(enc) = encoder
            .as_mut()
            .filter(|_| try_zstd)
            .map(PooledEncoder::get)
        {
            // Frame by frame, hashing each frame's plain bytes while they are in cache,
            // and letting the shard's other tasks (its QUIC driver above all) run in
            // between: a whole chunk would hold the core for milliseconds.
            frames.clear();
            let mut kept = true;
            for piece in bytes.chunks(FRAME_PLAIN_BYTES) {
                if known.is_none() {
                    hasher.update(piece);
                }
                let started = Instant::now();
                enc.compress_frame(piece, &mut frames)
                    .map_err(|e| local_failure("zstd", &e, None))?;
                enc.observe(piece.len(), started.elapsed().as_secs_f64());
                ZSTD_SPEED.set(enc.speed());
                if !Encoder::keep(frames.len(), n) {
                    kept = false;
                    break;
                }
                tpc_engine::rt::yield_now().await;
            }
            if kept {
                // Smaller than the chunk (`Encoder::keep`): its length fits a u32.
                let (header, len) = ChunkHeader::Zstd {
                    compressed_len: frames.len() as u32,
                }
                .encode();
                log.pace(len + frames.len() + 32).await;
                send.write_all(&header[..len])
                    .await
                    .map_err(SessionError::from)?;
                send.write_all(&frames).await.map_err(SessionError::from)?;
                let hash = known.unwrap_or_else(|| ChunkHash(*hasher.finalize().as_bytes()));
                send.write_all(&hash.0).await.map_err(SessionError::from)?;
                log.saved.add(Savings {
                    compressed_chunks: 1,
                    compressed_saved_bytes: (n - frames.len()) as u64,
                    ..Savings::default()
                });
                continue;
            }
            hasher = blake3::Hasher::new();
        }
        let (header, len) = ChunkHeader::Raw.encode();
        // The header and the hash after the bytes count against the limit too.
        log.pace(len + 32).await;
        send.write_all(&header[..len])
            .await
            .map_err(SessionError::from)?;
        // QUIC keeps slices of the chunk's own buffer until they are acknowledged: no
        // copy into its send buffer. Each piece is hashed just before it is handed over,
        // while it is in cache.
        if let Some(data) = &data {
            let mut at = 0;
            while at < data.len() {
                let end = (at + HASH_PIECE_BYTES).min(data.len());
                log.pace(end - at).await;
                if known.is_none() {
                    hasher.update(&data[at..end]);
                }
                send.write_bytes(data.slice(at..end))
                    .await
                    .map_err(SessionError::from)?;
                at = end;
            }
        }
        let hash = known.unwrap_or_else(|| ChunkHash(*hasher.finalize().as_bytes()));
        send.write_all(&hash.0).await.map_err(SessionError::from)?;
    }
    Ok(len)
}

/// Reads the `n` bytes of a large chunk at `pos` into a buffer of its own: directly where
/// the file has a direct-read handle, else through the page cache. A direct read that
/// fails for any reason turns `direct` off for the rest of the run and the chunk is read
/// through the page cache: filesystems that open with O_DIRECT and then refuse the read
/// (EINVAL on FUSE and some network filesystems) still work, and a real I/O error shows
/// again there.
async fn read_large(
    file: &File,
    direct: &mut Option<DirectReader>,
    pos: u64,
    n: usize,
) -> std::io::Result<Bytes> {
    if let Some(d) = direct {
        match d.read_at(pos, n).await {
            Ok(b) => return Ok(b),
            Err(_) => *direct = None,
        }
    }
    file.read_vec_at(pos, n).await.map(Bytes::from)
}

/// Reads the next `N` bytes of the stream; its end first is `Ended`.
async fn read_array<const N: usize>(recv: &mut RecvStream) -> Result<[u8; N], DataError> {
    let mut out = [0u8; N];
    if !recv
        .read_exact(&mut out)
        .await
        .map_err(SessionError::from)?
    {
        return Err(DataError::Session(SessionError::Ended));
    }
    Ok(out)
}

/// Reads exactly `n` bytes into `buf` (empty, with room for them), hashing them, if
/// asked, a window at a time while the window is still in cache. (Stream frames are as
/// small as the path MTU allows, 1.2 KB on a standard link: too short for BLAKE3's SIMD
/// path one by one.)
async fn read_exactly(
    recv: &mut RecvStream,
    n: usize,
    buf: &mut ChunkBuf,
    mut hasher: Option<&mut blake3::Hasher>,
    watched: Option<&Progress>,
) -> Result<(), DataError> {
    let mut hashed = 0;
    while buf.len() < n {
        let before = buf.len();
        match recv
            .read_chunk(n - buf.len())
            .await
            .map_err(SessionError::from)?
        {
            Some(piece) => buf.extend_from_slice(&piece),
            None => return Err(DataError::Session(SessionError::Ended)),
        }
        // A chunk that comes in slowly (a sender paced by `--bwlimit`) is progress
        // too, by whole `STIR_BYTES` across the session: a trickle is not.
        if let Some(p) = watched {
            p.received((buf.len() - before) as u64);
        }
        if let Some(h) = hasher.as_deref_mut() {
            while buf.len() - hashed >= HASH_PIECE_BYTES {
                h.update(&buf[hashed..hashed + HASH_PIECE_BYTES]);
                hashed += HASH_PIECE_BYTES;
            }
        }
    }
    if let Some(h) = hasher {
        h.update(&buf[hashed..]);
    }
    Ok(())
}

/// A chunk's buffer at the receiver: aligned for direct writes where the run has a direct
/// handle, otherwise a plain `Vec`, which the ordinary write takes without a copy.
enum ChunkBuf {
    Plain(Vec<u8>),
    Aligned(AlignedBuf),
}

impl ChunkBuf {
    fn with_capacity(capacity: usize, aligned: bool) -> ChunkBuf {
        if aligned {
            ChunkBuf::Aligned(aligned_buf(capacity))
        } else {
            ChunkBuf::Plain(Vec::with_capacity(capacity))
        }
    }

    fn clear(&mut self) {
        match self {
            ChunkBuf::Plain(v) => v.clear(),
            ChunkBuf::Aligned(a) => a.clear(),
        }
    }

    fn reserve(&mut self, additional: usize) {
        match self {
            ChunkBuf::Plain(v) => v.reserve(additional),
            ChunkBuf::Aligned(a) => a.reserve(additional),
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        match self {
            ChunkBuf::Plain(v) => v.extend_from_slice(bytes),
            ChunkBuf::Aligned(a) => a.extend_from_slice(bytes),
        }
    }

    fn resize_zeroed(&mut self, len: usize) {
        match self {
            ChunkBuf::Plain(v) => v.resize(len, 0),
            ChunkBuf::Aligned(a) => a.resize(len, 0),
        }
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ChunkBuf::Plain(v) => v,
            ChunkBuf::Aligned(a) => a,
        }
    }
}

impl std::ops::DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            ChunkBuf::Plain(v) => v,
            ChunkBuf::Aligned(a) => a,
        }
    }
}

/// Files smaller than this are written through the page cache: direct I/O's fixed costs
/// (a second open, a device write the writer waits for) pay back only on a large copy
/// saved, and small files are bound by creating them, not by their bytes.
pub const DIRECT_FILE_BYTES_MIN: u64 = 1 << 20;

/// A direct-I/O handle on `rel` beneath `root`, a file of `size` bytes already open as
/// `file`, where the platform and the filesystem offer one and the file is large enough
/// (`DIRECT_FILE_BYTES_MIN`). It is opened by name (confined as every open is) and kept
/// only if it is the very file `file` is, so that no rename in between can send the data
/// elsewhere.
pub fn open_direct(
    root: &Root,
    rel: &RelPath,
    size: u64,
    file: &std::fs::File,
) -> Option<DirectFile> {
    if !direct::AVAILABLE || size < DIRECT_FILE_BYTES_MIN {
        return None;
    }
    let direct = root.open(rel, Access::WriteDirect).ok()?;
    os::same_file(file, &direct)
        .ok()?
        .then(|| DirectFile::from_std(direct))
}

// Chunk offsets are whole chunks, so every direct write starts on a block boundary: only
// a chunk's length can be unaligned, and that tail goes the ordinary way.
const _: () = assert!(CHUNK_SIZE_BYTES.is_multiple_of(DIRECT_ALIGN as u64));

/// Writes the verified chunk in `buf` at `pos`, and hands back a buffer for the next:
/// a plain buffer through `file` as it is; an aligned one with its block-aligned part
/// through `direct`, the rest (a file's unaligned tail) through `file`. A filesystem that
/// refuses direct I/O (EINVAL) turns `direct` off for the rest of the run; the chunk then
/// goes the ordinary way.
async fn write_chunk(
    file: &File,
    direct: &mut Option<&DirectFile>,
    buf: ChunkBuf,
    pos: u64,
    what: &str,
) -> Result<ChunkBuf, DataError> {
    let mut buf = match buf {
        ChunkBuf::Plain(v) => {
            let capacity = v.capacity();
            write_plain(file, v, pos, what).await?;
            return Ok(ChunkBuf::Plain(Vec::with_capacity(capacity)));
        }
        ChunkBuf::Aligned(a) => a,
    };
    let n = buf.len();
    let mut done = 0;
    let aligned = n - n % DIRECT_ALIGN;
    if let Some(d) = direct.filter(|_| aligned > 0) {
        let (back, wrote) = d.write_at(buf, pos, aligned).await;
        buf = back;
        match wrote {
            Ok(w) => done = w,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = None,
            Err(e) => return Err(io_failure(what, &e)),
        }
    }
    if done < n {
        write_plain(file, buf[done..].to_vec(), pos + done as u64, what).await?;
    }
    Ok(ChunkBuf::Aligned(buf))
}

/// Writes all of `data` at `pos` through the file's ordinary handle.
async fn write_plain(file: &File, data: Vec<u8>, pos: u64, what: &str) -> Result<(), DataError> {
    let n = data.len();
    let wrote = file
        .write_at(data, pos)
        .await
        .map_err(|e| io_failure(what, &e))?;
    if wrote != n {
        let (errno, message) = file.with_std(|f| os::short_write(f, pos, wrote, n));
        return Err(local_failure(what, message, Some(errno)));
    }
    Ok(())
}

/// Receives the chunks `run` names from `recv`, decodes each (refusing a codec the run
/// did not allow, and a compressed chunk that is not smaller than the chunk or does not
/// decode to exactly its length; taking a `CODEC_SAME` chunk from `old`, the old version
/// of the file), verifies it against the hash that follows it, and writes it at its
/// offset in `file` — through `direct`, a direct-I/O handle on the same file, where there
/// is one. Nothing unverified is written. The run must be all the stream carries: its end
/// is read too. Returns the bytes written.
pub async fn receive_run(
    recv: &mut RecvStream,
    file: &File,
    direct: Option<&DirectFile>,
    what: &str,
    run: &Run,
    old: Option<&File>,
    log: &mut RunLog,
) -> Result<u64, DataError> {
    let (spans, len) = chunk_spans(run.size, run.chunk_first, run.chunk_count)?;
    let mut direct = direct;
    let mut decoder: Option<Decoder> = None;
    let mut frames = ChunkBuf::Plain(Vec::new());
    // An aligned buffer, reused over the run, where it has a direct handle: each chunk is
    // written before the next is read.
    let mut buf = ChunkBuf::with_capacity(len.min(CHUNK_SIZE_BYTES) as usize, direct.is_some());
    for (pos, n) in spans {
        buf.clear();
        let mut hasher = blake3::Hasher::new();
        let [codec] = read_array::<1>(recv).await?;
        let mut rest = [0u8; CHUNK_HEADER_BYTES_MAX - 1];
        let rest = &mut rest[..ChunkHeader::rest_len(codec)];
        if !rest.is_empty() && !recv.read_exact(rest).await.map_err(SessionError::from)? {
            return Err(DataError::Session(SessionError::Ended));
        }
        // Bounded by the chunk's own length before a byte of it is buffered.
        let header = ChunkHeader::decode(codec, rest, run.codecs, n as u64)
            .map_err(|e| protocol_failure(what, e))?;
        let mut reused = false;
        match header {
            ChunkHeader::Zstd {
                compressed_len: zlen,
            } => {
                frames.clear();
                frames.reserve(zlen as usize);
                read_exactly(
                    recv,
                    zlen as usize,
                    &mut frames,
                    None,
                    log.progress.as_ref(),
                )
                .await?;
                let dec = match decoder.as_mut() {
                    Some(d) => d,
                    None => {
                        decoder.insert(Decoder::new().map_err(|e| local_failure("zstd", &e, None))?)
                    }
                };
                buf.resize_zeroed(n);
                dec.decompress_into(&frames, &mut buf[..])
                    .map_err(|e| protocol_failure(what, format!("chunk at offset {pos}: {e}")))?;
                for piece in buf.chunks(HASH_PIECE_BYTES) {
                    hasher.update(piece);
                }
                log.saved.add(Savings {
                    compressed_chunks: 1,
                    compressed_saved_bytes: u64::from(n as u32 - zlen),
                    ..Savings::default()
                });
            }
            ChunkHeader::Same => {
                // The sender says our old version holds this chunk: read it from there;
                // the hash check below holds it to what the sender has.
                let Some(old) = old else {
                    // Gone (or never there) since the receiver planned: a rerun plans
                    // again.
                    return Err(DataError::Local(Failure::new(
                        ErrorCode::Changed,
                        format!("{what}: chunk at offset {pos} sent as already here, but there is no old version to take it from"),
                    )));
                };
                if n > 0 {
                    let got = old
                        .read_at(pos, n)
                        .await
                        .map_err(|e| io_failure(what, &e))?;
                    buf.extend_from_slice(&got);
                }
                if buf.len() != n {
                    return Err(DataError::Local(Failure::new(
                        ErrorCode::Changed,
                        format!("{what}: the old version shrank during the transfer"),
                    )));
                }
                for piece in buf.chunks(HASH_PIECE_BYTES) {
                    hasher.update(piece);
                }
                reused = true;
            }
            ChunkHeader::Raw => {
                let watched = log.progress.as_ref();
                read_exactly(recv, n, &mut buf, Some(&mut hasher), watched).await?
            }
        }
        let hash = read_array::<32>(recv).await?;
        if hasher.finalize().as_bytes() != &hash {
            return Err(DataError::Local(if reused {
                Failure::new(
                    ErrorCode::Changed,
                    format!("{what}: the old version changed during the transfer (chunk at offset {pos})"),
                )
            } else {
                Failure::new(
                    ErrorCode::HashMismatch,
                    format!("{what}: chunk at offset {pos} does not match its BLAKE3 hash"),
                )
            }));
        }
        if reused {
            log.saved.add(Savings {
                reused_chunks: 1,
                reused_bytes: n as u64,
                ..Savings::default()
            });
        }
        if n > 0 {
            buf = write_chunk(file, &mut direct, buf, pos, what).await?;
        }
        log.chunk_done(n as u64);
    }
    expect_end(recv).await.map_err(|e| match e {
        SessionError::Trailing => DataError::Local(Failure::new(
            ErrorCode::Protocol,
            format!("{what}: bytes after the announced chunks"),
        )),
        e => DataError::Session(e),
    })?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_gives_its_encoder_back_and_the_next_run_of_its_mode_reuses_it() {
        // The pool is this thread's; empty it, whatever ran on the thread before.
        ENCODERS.with_borrow_mut(|v| v.clear());
        let kept = || ENCODERS.with_borrow(|v| v.len());
        let a = PooledEncoder::take(Compression::Auto).unwrap();
        let b = PooledEncoder::take(Compression::Auto).unwrap();
        drop(a);
        drop(b);
        assert_eq!(kept(), 2, "both runs' encoders kept");
        let c = PooledEncoder::take(Compression::Auto).unwrap();
        assert_eq!(kept(), 1, "one taken from the pool, none made");
        // An encoder for another mode is not handed out for this one.
        let mut d = PooledEncoder::take(Compression::Always).unwrap();
        assert_eq!(d.get().mode(), Compression::Always);
        assert_eq!(kept(), 0);
        drop(c);
        drop(d);
        // The pool is bounded however many runs end at once.
        let many: Vec<_> = (0..ENCODERS_KEPT_MAX + 3)
            .map(|_| PooledEncoder::take(Compression::Auto).unwrap())
            .collect();
        drop(many);
        assert_eq!(kept(), ENCODERS_KEPT_MAX);
    }
}
