//! The fuzz targets' bodies: each takes arbitrary bytes, feeds them to a decoder that a
//! peer's bytes (or an edited trust file) reach, and checks what must hold for any input — no
//! panic, limits kept, and what decodes re-encodes to something that decodes the same.
//! cargo-fuzz drives them through `fuzz_targets/`; tests/fuzz_replay.rs runs them over
//! seeds, their mutations and the saved regressions in every test run.

use tpc_core::codec::{ChunkHeader, CHUNK_HEADER_BYTES_MAX};
use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::wire::{Frame, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};

/// A control frame: the header, then the payload decoded by its type. A frame that
/// decodes re-encodes (which panics if it breaks a limit: the decoder must not accept
/// what the encoder would refuse to send) to bytes that decode to the same frame.
pub fn frame(data: &[u8]) {
    let Some((header, payload)) = data.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return;
    };
    let Ok((kind, len)) = Frame::header(header) else {
        return;
    };
    assert!(len <= FRAME_BYTES_MAX, "the header check keeps the limit");
    let payload = &payload[..len.min(payload.len())];
    let Ok(frame) = Frame::decode(kind, payload) else {
        return;
    };
    let mut again = Vec::new();
    frame.encode(&mut again);
    let header: &[u8; FRAME_HEADER_BYTES] = again[..FRAME_HEADER_BYTES].try_into().unwrap();
    let (kind2, len2) = Frame::header(header).expect("an encoded header decodes");
    assert_eq!((kind2, len2), (kind, again.len() - FRAME_HEADER_BYTES));
    let decoded = Frame::decode(kind2, &again[FRAME_HEADER_BYTES..]).expect("re-encoded");
    assert_eq!(decoded, frame);
}

/// A data stream's per-chunk header: codec byte, the rest, and the run's allowed codecs
/// and chunk length taken from the input too. A compressed length that passes is never
/// zero and always below the chunk's plain length (what the receiver then buffers).
pub fn chunk_header(data: &[u8]) {
    let [codec, allowed, l0, l1, l2, rest @ ..] = data else {
        return;
    };
    let plain_len = u64::from(u32::from_le_bytes([*l0, *l1, *l2, 0])).min(CHUNK_SIZE_BYTES);
    let rest = &rest[..rest.len().min(ChunkHeader::rest_len(*codec))];
    if let Ok(ChunkHeader::Zstd { compressed_len }) =
        ChunkHeader::decode(*codec, rest, *allowed, plain_len)
    {
        assert!(compressed_len > 0 && u64::from(compressed_len) < plain_len);
    }
    assert!(ChunkHeader::rest_len(*codec) < CHUNK_HEADER_BYTES_MAX);
}

/// A compressed chunk: zstd frames decoded by the receiver's own `codec::Decoder` into a
/// buffer of the chunk's plain length (the first two bytes, in KiB). A decode that
/// succeeds filled the buffer exactly; any other outcome is a typed error, never a
/// panic or a write past the buffer.
pub fn zstd_chunk(data: &[u8]) {
    let [k0, k1, frames @ ..] = data else {
        return;
    };
    let plain_len = usize::from(u16::from_le_bytes([*k0, *k1]) % 4097) * 1024;
    let mut buf = vec![0u8; plain_len];
    let mut decoder = tpc_core::codec::Decoder::new().expect("a decoder");
    if decoder.decompress_into(frames, &mut buf).is_ok() {
        assert!(frames.len() < plain_len, "the length check let it through");
    }
}

/// The trust files an operator edits (authorized-clients, known-servers): any text
/// parses to a result or a typed error, never a panic.
pub fn trust_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz");
    let _ = tpc_xfer::auth::AuthorizedClients::parse(path, text);
    let _ = tpc_xfer::auth::KnownServers::parse(path, text);
}

/// A path from a peer's manifest, Put or Get: `RelPath::parse` accepts only plain names
/// joined by single slashes, within the limits, and what it accepts rebuilds from its
/// parent and name to the same bytes.
pub fn relpath(data: &[u8]) {
    use tpc_core::limits::{NAME_BYTES_MAX, PATH_BYTES_MAX, TREE_DEPTH_MAX};
    use tpc_core::relpath::RelPath;
    let Ok(path) = RelPath::parse(data) else {
        return;
    };
    assert_eq!(path.as_bytes(), data);
    assert!(data.len() <= PATH_BYTES_MAX && path.depth() <= TREE_DEPTH_MAX);
    for name in path.components() {
        assert!(!name.is_empty() && name != b"." && name != b"..");
        assert!(name.len() <= NAME_BYTES_MAX && !name.contains(&0) && !name.contains(&b'/'));
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        assert_eq!(
            parent.join(name).expect("a parsed path's name rejoins"),
            path
        );
    }
}
