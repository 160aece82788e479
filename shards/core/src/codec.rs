//! Chunk codecs: which chunks are worth compressing with zstd, and the bounded encoding
//! and decoding of one chunk; and the codec that sends no bytes for a chunk the receiver
//! already has. Pure computation, no I/O: the data path on each shard calls
//! it between reading a chunk and sending it, and between receiving one and verifying it.
//!
//! "Only where it pays": a chunk is compressed when a small sample of it compresses well
//! (`SAMPLE_KEEP_PERMILLE`) and the path is slower than compressing would make it
//! (`pays`), and the result is kept only if it is clearly smaller than the chunk
//! (`KEEP_PERMILLE`). Random, encrypted or already-compressed data costs one sample per
//! 4 MiB chunk and is sent as it is; so is text on a path faster than zstd (loopback, a
//! LAN), where compressing would make the CPU the bottleneck.
//!
//! The receiver trusts nothing: the compressed length is bounded by the plain length
//! before anything is read, the output buffer is exactly the chunk's announced length
//! (so a decompression bomb fails instead of growing), and the BLAKE3 hash of the plain
//! bytes is checked afterwards as for a raw chunk.

use std::fmt;

/// Per-chunk codec byte on the wire: the chunk's bytes follow as they are.
pub const CODEC_RAW: u8 = 0;
/// Per-chunk codec byte on the wire: `len: u32`, then `len` bytes of zstd frames.
pub const CODEC_ZSTD: u8 = 1;
/// Per-chunk codec byte on the wire: no bytes at all. The receiver already has a chunk
/// with this hash at this offset of the file's old version, and takes it from there.
pub const CODEC_SAME: u8 = 2;

/// Bit of a run header's `codecs`: the run may carry zstd chunks. Raw is always allowed.
pub const CODECS_ZSTD: u8 = 1;
/// Bit of a run header's `codecs`: the run may carry `CODEC_SAME` chunks (the receiver
/// has an old version of the file to take them from).
pub const CODECS_SAME: u8 = 2;
/// Every codec bit this version knows; a header with any other bit set is refused.
pub const CODECS_KNOWN: u8 = CODECS_ZSTD | CODECS_SAME;

/// zstd level: its fastest standard level, because a transfer engine compresses to save
/// link time, not storage (benches/compression.rs measures it beside level 3).
pub const ZSTD_LEVEL: i32 = 1;

/// Plain bytes per zstd frame: a chunk is compressed as independent frames of this size,
/// so the data path can let its shard's other tasks run between frames instead of
/// holding the core for a whole 4 MiB chunk. At level 1 zstd's window is 512 KiB, so
/// 1 MiB frames lose almost nothing against one frame per chunk.
pub const FRAME_PLAIN_BYTES: usize = 1024 * 1024;

/// Bytes of each piece of the sample that decides whether a chunk is worth compressing.
const SAMPLE_PIECE_BYTES: usize = 8 * 1024;
/// Pieces in the sample, one from the middle of each quarter of the chunk: a chunk is
/// not judged by its first bytes, which in a binary file are often a header that
/// compresses well in front of data that does not.
const SAMPLE_PIECES: usize = 4;
/// A chunk is compressed only if its sample compressed to at most this many thousandths
/// of its size: below 10% saved, compression costs more CPU than the link time it saves.
const SAMPLE_KEEP_PERMILLE: usize = 900;
/// A compressed chunk is sent only if it is at most this many thousandths of the plain
/// chunk; otherwise the plain chunk goes (and the receiver decompresses nothing).
const KEEP_PERMILLE: usize = 950;

/// Weight of the newest measurement in the encoder's running estimate of its own speed.
const SPEED_EWMA_WEIGHT: f64 = 0.25;

/// Whether compressing pays on a path that sends `path_bytes_per_sec`, for an encoder
/// that compresses `zstd_bytes_per_sec` of plain bytes, on data that shrinks to `ratio`
/// of its size. Raw, a chunk of n bytes takes n / path on the wire; compressed, n / zstd
/// of the shard's CPU and then ratio x n / path on the wire. Counting the two in series
/// (the shard's core also drives its QUIC connection) it pays when
/// path < zstd x (1 - ratio): on a 1 Gbit/s WAN for text, not on loopback.
pub fn pays(path_bytes_per_sec: f64, zstd_bytes_per_sec: f64, ratio: f64) -> bool {
    path_bytes_per_sec < zstd_bytes_per_sec * (1.0 - ratio)
}

/// Which chunks the sender compresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Chunks whose sample compresses well, on paths slower than compressing them would
    /// make up for (the default).
    #[default]
    Auto,
    /// None: every chunk goes raw.
    Never,
    /// Every chunk is tried, whatever its sample says (kept only if smaller).
    Always,
}

/// Why a compressed chunk was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The codec byte names no codec, or one the run header did not allow.
    Codec(u8),
    /// The compressed length is zero, or not smaller than the chunk.
    Length { compressed: u64, plain: u64 },
    /// The zstd frames are corrupt, ask for too large a window, or would decode to more
    /// than the chunk's length.
    Corrupt(String),
    /// The frames decoded to fewer bytes than the chunk's length.
    Short { got: usize, plain: usize },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Codec(c) => write!(f, "chunk codec {c} is unknown or not allowed here"),
            CodecError::Length { compressed, plain } => write!(
                f,
                "compressed chunk of {compressed} bytes for a chunk of {plain} bytes \
                 (must be at least 1 and smaller than the chunk)"
            ),
            CodecError::Corrupt(e) => write!(f, "compressed chunk does not decode: {e}"),
            CodecError::Short { got, plain } => {
                write!(
                    f,
                    "compressed chunk decoded to {got} bytes, expected {plain}"
                )
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// The header of one chunk in a data stream, before its bytes (none for `Same`); the
/// chunk's 32-byte BLAKE3 hash follows its bytes. The one encoding of it, for the sender
/// and the receiver (docs/PROTOCOL.md, data streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkHeader {
    /// The chunk's plain bytes follow.
    Raw,
    /// `compressed_len` bytes of zstd frames follow.
    Zstd { compressed_len: u32 },
    /// No bytes: the receiver's old version holds the chunk.
    Same,
}

/// Bytes of the longest chunk header (zstd: the codec byte and a `u32` length).
pub const CHUNK_HEADER_BYTES_MAX: usize = 5;

impl ChunkHeader {
    /// The header's bytes, in a buffer of which the first `len` are used.
    pub fn encode(self) -> ([u8; CHUNK_HEADER_BYTES_MAX], usize) {
        let mut out = [0u8; CHUNK_HEADER_BYTES_MAX];
        match self {
            ChunkHeader::Raw => (out, 1),
            ChunkHeader::Same => {
                out[0] = CODEC_SAME;
                (out, 1)
            }
            ChunkHeader::Zstd { compressed_len } => {
                out[0] = CODEC_ZSTD;
                out[1..].copy_from_slice(&compressed_len.to_le_bytes());
                (out, CHUNK_HEADER_BYTES_MAX)
            }
        }
    }

    /// Bytes of the header after its codec byte `codec` (to read before `decode`).
    pub fn rest_len(codec: u8) -> usize {
        if codec == CODEC_ZSTD {
            CHUNK_HEADER_BYTES_MAX - 1
        } else {
            0
        }
    }

    /// Decodes a header read from a peer, given its codec byte and the `rest_len` bytes
    /// after it: the codec must be one the run allows (`allowed`, its `codecs` bits), and
    /// a compressed length is checked against the chunk's `plain_len` before a byte of it
    /// is buffered.
    pub fn decode(
        codec: u8,
        rest: &[u8],
        allowed: u8,
        plain_len: u64,
    ) -> Result<ChunkHeader, CodecError> {
        check_codec(codec, allowed)?;
        match codec {
            CODEC_ZSTD => {
                let len: [u8; 4] = rest.try_into().map_err(|_| CodecError::Codec(codec))?;
                let compressed_len = u32::from_le_bytes(len);
                check_compressed_len(u64::from(compressed_len), plain_len)?;
                Ok(ChunkHeader::Zstd { compressed_len })
            }
            CODEC_SAME => Ok(ChunkHeader::Same),
            _ => Ok(ChunkHeader::Raw),
        }
    }
}

/// Checks a run header's `codecs` bits.
pub fn codecs_valid(codecs: u8) -> bool {
    codecs & !CODECS_KNOWN == 0
}

/// Checks a chunk's codec byte against the codecs its run allows.
pub fn check_codec(codec: u8, allowed: u8) -> Result<(), CodecError> {
    match codec {
        CODEC_RAW => Ok(()),
        CODEC_ZSTD if allowed & CODECS_ZSTD != 0 => Ok(()),
        CODEC_SAME if allowed & CODECS_SAME != 0 => Ok(()),
        c => Err(CodecError::Codec(c)),
    }
}

/// Checks a compressed chunk's announced length before a byte of it is read.
pub fn check_compressed_len(compressed: u64, plain: u64) -> Result<(), CodecError> {
    if compressed == 0 || compressed >= plain {
        return Err(CodecError::Length { compressed, plain });
    }
    Ok(())
}

/// The sender's side: decides per chunk and compresses. One per data stream; it keeps a
/// zstd context so that its tables are set up once, not per chunk.
pub struct Encoder {
    mode: Compression,
    cctx: zstd::bulk::Compressor<'static>,
    sample: Vec<u8>,
    scratch: Vec<u8>,
    /// Plain bytes per second this encoder compresses, as measured by its caller (the
    /// core has no clock); `None` until the first measurement.
    speed: Option<f64>,
}

impl Encoder {
    pub fn new(mode: Compression) -> std::io::Result<Encoder> {
        Ok(Encoder {
            mode,
            cctx: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            sample: Vec::new(),
            scratch: Vec::new(),
            speed: None,
        })
    }

    /// The mode it was made for.
    pub fn mode(&self) -> Compression {
        self.mode
    }

    /// What the encoder knows of its own speed (bytes per second), to carry over to the
    /// next encoder on the same core.
    pub fn speed(&self) -> Option<f64> {
        self.speed
    }

    /// Starts from a speed measured earlier on the same core.
    pub fn with_speed(mut self, speed: Option<f64>) -> Encoder {
        self.speed = speed.filter(|s| s.is_finite() && *s > 0.0);
        self
    }

    /// Records that `plain_bytes` took `seconds` to compress.
    pub fn observe(&mut self, plain_bytes: usize, seconds: f64) {
        if plain_bytes == 0 || seconds.is_nan() || seconds <= 0.0 {
            return;
        }
        let now = plain_bytes as f64 / seconds;
        self.speed = Some(match self.speed {
            Some(old) => old + SPEED_EWMA_WEIGHT * (now - old),
            None => now,
        });
    }

    /// Whether `chunk` is worth an attempt on a path that sends `path_bytes_per_sec`
    /// (`None`: not known). Under `Auto`, only if its sample compresses well and
    /// compressing `pays` at the speed measured so far; with no measurement yet it is
    /// tried, which measures it.
    pub fn worth_trying(&mut self, chunk: &[u8], path_bytes_per_sec: Option<f64>) -> bool {
        match self.mode {
            Compression::Never => false,
            Compression::Always => !chunk.is_empty(),
            Compression::Auto => {
                if chunk.is_empty() {
                    return false;
                }
                if chunk.len() < SAMPLE_PIECE_BYTES * SAMPLE_PIECES {
                    // Small chunks are tried whole, as the attempt costs no more than a
                    // sample, where compressing could pay even if they shrank to nothing.
                    return self.pays_on(path_bytes_per_sec, 0.0);
                }
                self.sample.clear();
                let quarter = chunk.len() / SAMPLE_PIECES;
                for i in 0..SAMPLE_PIECES {
                    // quarter >= SAMPLE_PIECE_BYTES, so the piece stays in its quarter.
                    let at = i * quarter + (quarter - SAMPLE_PIECE_BYTES) / 2;
                    self.sample
                        .extend_from_slice(&chunk[at..at + SAMPLE_PIECE_BYTES]);
                }
                let bound = zstd::zstd_safe::compress_bound(self.sample.len());
                self.scratch.clear();
                self.scratch.reserve(bound);
                let Ok(n) = self
                    .cctx
                    .compress_to_buffer(&self.sample, &mut self.scratch)
                else {
                    return false;
                };
                if n * 1000 > self.sample.len() * SAMPLE_KEEP_PERMILLE {
                    return false;
                }
                self.pays_on(path_bytes_per_sec, n as f64 / self.sample.len() as f64)
            }
        }
    }

    /// `pays` at this encoder's measured speed; true while either speed is unknown, so
    /// that the first attempt measures the encoder.
    fn pays_on(&self, path_bytes_per_sec: Option<f64>, ratio: f64) -> bool {
        match (path_bytes_per_sec, self.speed) {
            (Some(path), Some(speed)) => pays(path, speed, ratio),
            _ => true,
        }
    }

    /// Compresses one frame's worth of `plain` (at most `FRAME_PLAIN_BYTES`) and appends
    /// it to `out`. The data path calls this once per frame of a chunk, letting its shard
    /// run other work in between.
    pub fn compress_frame(&mut self, plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        assert!(
            plain.len() <= FRAME_PLAIN_BYTES,
            "frame larger than FRAME_PLAIN_BYTES"
        );
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        self.scratch.clear();
        self.scratch.reserve(bound);
        let n = self.cctx.compress_to_buffer(plain, &mut self.scratch)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Whether `compressed` (all frames of a chunk of `plain_len` bytes) is small enough to
    /// send instead of the chunk.
    pub fn keep(compressed_len: usize, plain_len: usize) -> bool {
        compressed_len > 0 && compressed_len * 1000 <= plain_len * KEEP_PERMILLE
    }

    /// Compresses a whole chunk for a path of unknown speed; `Some(frames)` if it is
    /// worth sending compressed.
    pub fn compress_chunk(&mut self, chunk: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        if !self.worth_trying(chunk, None) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(chunk.len() / 2);
        for frame in chunk.chunks(FRAME_PLAIN_BYTES) {
            self.compress_frame(frame, &mut out)?;
            if !Self::keep(out.len(), chunk.len()) {
                // Already too large to keep, whatever the rest compresses to.
                return Ok(None);
            }
        }
        Ok(Self::keep(out.len(), chunk.len()).then_some(out))
    }
}

/// The receiver's side: decodes a compressed chunk into exactly its announced length.
pub struct Decoder {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl Decoder {
    pub fn new() -> std::io::Result<Decoder> {
        Ok(Decoder {
            dctx: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decodes `frames` into `out`, which ends up holding exactly `plain_len` bytes.
    /// zstd writes into a slice of exactly that length, so frames that would decode to
    /// more fail instead of growing the buffer. One-shot decoding writes straight into
    /// that slice and sets aside no window, so the window a frame declares costs nothing:
    /// a chunk never takes more than its plain and compressed bytes and one context.
    pub fn decompress(
        &mut self,
        frames: &[u8],
        plain_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        check_compressed_len(frames.len() as u64, plain_len as u64)?;
        out.clear();
        out.resize(plain_len, 0);
        self.decompress_into(frames, &mut out[..])
            .inspect_err(|_| out.clear())
    }

    /// Decodes `frames` into all of `out` (the chunk's plain length), as `decompress`
    /// does, for a caller that owns its buffer (an aligned one, for direct writes).
    pub fn decompress_into(&mut self, frames: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        let plain_len = out.len();
        check_compressed_len(frames.len() as u64, plain_len as u64)?;
        let got = self
            .dctx
            .decompress_to_buffer(frames, out)
            .map_err(|e| CodecError::Corrupt(e.to_string()))?;
        if got != plain_len {
            return Err(CodecError::Short {
                got,
                plain: plain_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_headers_round_trip_and_are_checked() {
        let all = CODECS_ZSTD | CODECS_SAME;
        for h in [
            ChunkHeader::Raw,
            ChunkHeader::Same,
            ChunkHeader::Zstd { compressed_len: 7 },
        ] {
            let (bytes, len) = h.encode();
            let rest = &bytes[1..len];
            assert_eq!(rest.len(), ChunkHeader::rest_len(bytes[0]));
            assert_eq!(ChunkHeader::decode(bytes[0], rest, all, 100), Ok(h));
        }
        // Not allowed by the run, unknown, or a compressed length that is no saving.
        assert!(ChunkHeader::decode(CODEC_SAME, &[], CODECS_ZSTD, 100).is_err());
        assert!(ChunkHeader::decode(9, &[], all, 100).is_err());
        let (bytes, _) = ChunkHeader::Zstd {
            compressed_len: 100,
        }
        .encode();
        assert!(ChunkHeader::decode(CODEC_ZSTD, &bytes[1..], all, 100).is_err());
        let (bytes, _) = ChunkHeader::Zstd { compressed_len: 0 }.encode();
        assert!(ChunkHeader::decode(CODEC_ZSTD, &bytes[1..], all, 100).is_err());
    }

    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let words = b"the quick brown fox jumps over the lazy dog while chunks fly by ";
        words.iter().copied().cycle().take(len).collect()
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        let mut xof = h.finalize_xof();
        out.resize(len, 0);
        xof.fill(&mut out);
        out
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let chunk = text(4 << 20);
        let mut enc = Encoder::new(Compression::Auto).unwrap();
        let frames = enc
            .compress_chunk(&chunk)
            .unwrap()
            .expect("text is worth it");
        assert!(frames.len() < chunk.len() / 10);
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        dec.decompress(&frames, chunk.len(), &mut out).unwrap();
        assert_eq!(out, chunk);
    }

    #[test]
    fn random_is_sent_raw_under_auto_and_always() {
        let chunk = random(4 << 20, 7);
        let mut auto = Encoder::new(Compression::Auto).unwrap();
        assert!(!auto.worth_trying(&chunk, None));
        assert_eq!(auto.compress_chunk(&chunk).unwrap(), None);
        let mut always = Encoder::new(Compression::Always).unwrap();
        assert!(always.worth_trying(&chunk, Some(1e12)));
        assert_eq!(
            always.compress_chunk(&chunk).unwrap(),
            None,
            "not smaller: raw"
        );
        let mut never = Encoder::new(Compression::Never).unwrap();
        assert_eq!(never.compress_chunk(&text(1 << 20)).unwrap(), None);
    }

    #[test]
    fn sample_sees_past_the_first_bytes() {
        // Random at the start, text after: three of the sample's four pieces are text.
        let mut chunk = random(1 << 20, 1);
        chunk.extend_from_slice(&text(3 << 20));
        let mut enc = Encoder::new(Compression::Auto).unwrap();
        assert!(enc.worth_trying(&chunk, None));
        assert!(enc.compress_chunk(&chunk).unwrap().is_some());
        // A text header in front of random data is not sampled at all.
        let mut chunk = text(64 << 10);
        chunk.extend_from_slice(&random((4 << 20) - (64 << 10), 2));
        assert!(!enc.worth_trying(&chunk, None));
    }

    #[test]
    fn auto_compresses_only_where_the_path_is_slower_than_zstd() {
        let chunk = text(4 << 20);
        let mut enc = Encoder::new(Compression::Auto).unwrap();
        // No speed measured yet: tried, whatever the path, so that it gets measured.
        assert!(enc.worth_trying(&chunk, Some(10e9)));
        enc.observe(4 << 20, 0.016); // 262 MB/s, as measured on the dev VM
                                     // A 1 Gbit/s WAN (125 MB/s) is slower than zstd here: compress.
        assert!(enc.worth_trying(&chunk, Some(125e6)));
        // Loopback or a 10 GbE LAN is faster: send raw, the CPU would be the bottleneck.
        assert!(!enc.worth_trying(&chunk, Some(1.2e9)));
        // Path unknown: compress.
        assert!(enc.worth_trying(&chunk, None));
        // `Always` ignores the path.
        let mut always = Encoder::new(Compression::Always)
            .unwrap()
            .with_speed(enc.speed());
        assert!(always.worth_trying(&chunk, Some(10e9)));
        // The estimate follows the encoder's measurements and survives a hand-over.
        let before = enc.speed().unwrap();
        enc.observe(4 << 20, 0.004);
        assert!(enc.speed().unwrap() > before);
        enc.observe(0, 1.0);
        enc.observe(10, 0.0);
        assert!(enc.speed().unwrap().is_finite());
        assert_eq!(
            Encoder::new(Compression::Auto)
                .unwrap()
                .with_speed(Some(f64::NAN))
                .speed(),
            None
        );
    }

    #[test]
    fn pays_weighs_the_saving_against_the_cpu() {
        assert!(pays(100e6, 250e6, 0.2));
        assert!(!pays(250e6, 250e6, 0.2));
        // Barely compressible data pays only on a much slower path.
        assert!(!pays(100e6, 250e6, 0.9));
        assert!(pays(20e6, 250e6, 0.9));
    }

    #[test]
    fn small_and_empty_chunks() {
        let mut enc = Encoder::new(Compression::Auto).unwrap();
        assert_eq!(enc.compress_chunk(&[]).unwrap(), None);
        let small = text(1000);
        let frames = enc
            .compress_chunk(&small)
            .unwrap()
            .expect("small text compresses");
        let mut out = Vec::new();
        Decoder::new()
            .unwrap()
            .decompress(&frames, small.len(), &mut out)
            .unwrap();
        assert_eq!(out, small);
    }

    #[test]
    fn bomb_fails_instead_of_growing() {
        // 64 MiB of zeros compress to a few KiB; announced as a 4 MiB chunk they must fail.
        let zeros = vec![0u8; 64 << 20];
        let frames = zstd::bulk::compress(&zeros, 1).unwrap();
        let mut out = Vec::new();
        let err = Decoder::new()
            .unwrap()
            .decompress(&frames, 4 << 20, &mut out)
            .unwrap_err();
        assert!(matches!(err, CodecError::Corrupt(_)), "{err:?}");
        assert!(
            out.capacity() <= 4 << 20,
            "buffer grew to {}",
            out.capacity()
        );
    }

    #[test]
    fn short_corrupt_and_bad_lengths_are_refused() {
        let chunk = text(1 << 20);
        let frames = zstd::bulk::compress(&chunk, 1).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        // Decodes to 1 MiB, announced as 2 MiB.
        assert_eq!(
            dec.decompress(&frames, 2 << 20, &mut out),
            Err(CodecError::Short {
                got: 1 << 20,
                plain: 2 << 20
            })
        );
        out.clear();
        let mut bad = frames.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad.truncate(mid + 1);
        assert!(dec.decompress(&bad, 1 << 20, &mut out).is_err());
        out.clear();
        assert!(matches!(
            dec.decompress(&[], 10, &mut out),
            Err(CodecError::Length { .. })
        ));
        assert!(matches!(
            dec.decompress(&frames, frames.len(), &mut out),
            Err(CodecError::Length { .. })
        ));
        assert!(check_codec(CODEC_ZSTD, 0).is_err());
        assert!(check_codec(7, CODECS_KNOWN).is_err());
        assert!(check_codec(CODEC_ZSTD, CODECS_ZSTD).is_ok());
        assert!(check_codec(CODEC_SAME, CODECS_ZSTD).is_err());
        assert!(check_codec(CODEC_SAME, CODECS_SAME).is_ok());
        assert!(codecs_valid(CODECS_ZSTD | CODECS_SAME) && !codecs_valid(4));
    }

    #[test]
    fn a_declared_huge_window_costs_nothing() {
        // Hand-made frame: magic, descriptor without content size or single segment, a
        // window of 2^30, and one RLE block of 1000 x 'a'.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3];
        let block = (1000u32 << 3) | (1 << 1) | 1;
        frame.extend_from_slice(&block.to_le_bytes()[..3]);
        frame.push(b'a');
        let mut out = Vec::new();
        Decoder::new()
            .unwrap()
            .decompress(&frame, 1000, &mut out)
            .unwrap();
        assert_eq!(out, vec![b'a'; 1000]);
        assert!(out.capacity() < 2000);
    }
}
