//! The data path of a remote transfer, on a shard: read a run of chunks through the
//! shard's driver (io_uring or portable), hash each with BLAKE3 and send it with its
//! hash; or receive a run, verify every chunk against its hash, and only then write it.

use std::time::Instant;

use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::wire::{run_bytes, ErrorCode};
use tpc_engine::quic::{RecvStream, SendStream};
use tpc_engine::rt::File;

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

fn io_failure(what: &str, e: impl std::fmt::Display, errno: Option<i32>) -> DataError {
    DataError::Local(Failure::new(
        errno.map_or(ErrorCode::Io, ErrorCode::for_errno),
        format!("{what}: {e}"),
    ))
}

/// The chunks of run `first .. first + count` of a file of `size` bytes, as (offset,
/// length), and the run's length. An empty file is one empty chunk: its hash still travels.
fn chunk_spans(
    size: u64,
    first: u32,
    count: u32,
) -> Result<(impl Iterator<Item = (u64, usize)>, u64), DataError> {
    let (start, len) = run_bytes(size, first, count).ok_or_else(|| {
        DataError::Local(Failure::new(
            ErrorCode::Protocol,
            "chunk run outside the file",
        ))
    })?;
    let spans = (0..len.div_ceil(CHUNK_SIZE_BYTES).max(1)).map(move |i| {
        let pos = start + i * CHUNK_SIZE_BYTES;
        (pos, (start + len - pos).min(CHUNK_SIZE_BYTES) as usize)
    });
    Ok((spans, len))
}

/// Bytes hashed and handed to QUIC at a time: small enough to stay in L2 between the two.
const HASH_PIECE_BYTES: usize = 256 * 1024;

/// Sends chunks `first .. first + count` of `file` (of `size` bytes): each chunk's bytes,
/// then its BLAKE3 hash. Returns the bytes sent. A file that is shorter than announced
/// (it changed since the manifest) fails with `Changed`.
pub async fn send_run(
    file: &File,
    what: &str,
    size: u64,
    first: u32,
    count: u32,
    send: &mut SendStream,
    ready: &mut Vec<Instant>,
) -> Result<u64, DataError> {
    let (spans, len) = chunk_spans(size, first, count)?;
    for (pos, n) in spans {
        let data = if n > 0 {
            let buf = file
                .read_at(pos, n)
                .await
                .map_err(|e| io_failure(what, &e, e.raw_os_error()))?;
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
        ready.push(Instant::now());
        let bytes: &[u8] = data.as_deref().unwrap_or(&[]);
        // Hash each piece just before QUIC copies it: it is read from cache once for
        // both, not twice from memory.
        let mut hasher = blake3::Hasher::new();
        for piece in bytes.chunks(HASH_PIECE_BYTES) {
            hasher.update(piece);
            send.write_all(piece).await.map_err(SessionError::from)?;
        }
        send.write_all(hasher.finalize().as_bytes())
            .await
            .map_err(SessionError::from)?;
    }
    Ok(len)
}

/// Receives chunks `first .. first + count` of a file of `size` bytes from `recv`,
/// verifies each against the hash that follows it, and writes it at its offset in
/// `file`. Nothing unverified is written. The run must be all the stream carries: its end
/// is read too. Returns the bytes written.
pub async fn receive_run(
    recv: &mut RecvStream,
    file: &File,
    what: &str,
    size: u64,
    first: u32,
    count: u32,
    written: &mut Vec<Instant>,
) -> Result<u64, DataError> {
    let (spans, len) = chunk_spans(size, first, count)?;
    for (pos, n) in spans {
        // One buffer per chunk, handed to the write: the drivers' write_at takes a Vec. It
        // is filled without zeroing it first, and hashed a window at a time while the
        // window is still in cache. (Stream frames are as small as the path MTU allows,
        // 1.2 KB on a standard link: too short for BLAKE3's SIMD path one by one.)
        let mut buf = Vec::with_capacity(n);
        let mut hasher = blake3::Hasher::new();
        let mut hashed = 0;
        while buf.len() < n {
            match recv
                .read_chunk(n - buf.len())
                .await
                .map_err(SessionError::from)?
            {
                Some(piece) => buf.extend_from_slice(&piece),
                None => return Err(DataError::Session(SessionError::Ended)),
            }
            while buf.len() - hashed >= HASH_PIECE_BYTES {
                hasher.update(&buf[hashed..hashed + HASH_PIECE_BYTES]);
                hashed += HASH_PIECE_BYTES;
            }
        }
        hasher.update(&buf[hashed..]);
        let mut hash = [0u8; 32];
        if !recv
            .read_exact(&mut hash)
            .await
            .map_err(SessionError::from)?
        {
            return Err(DataError::Session(SessionError::Ended));
        }
        if hasher.finalize().as_bytes() != &hash {
            return Err(DataError::Local(Failure::new(
                ErrorCode::HashMismatch,
                format!("{what}: chunk at offset {pos} does not match its BLAKE3 hash"),
            )));
        }
        if n > 0 {
            let wrote = file
                .write_at(buf, pos)
                .await
                .map_err(|e| io_failure(what, &e, e.raw_os_error()))?;
            if wrote != n {
                return Err(io_failure(what, "short write", None));
            }
        }
        written.push(Instant::now());
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
