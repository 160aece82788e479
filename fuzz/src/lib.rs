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

/// The TCP transport's stream multiplexer (`tpc_core::mux`), driven the way the engine's
/// `tcp.rs` drives it. The first byte picks the game:
/// - even: one end, client or server, takes the input's bytes as the peer's plaintext,
///   between operations of its own (open, accept, read, write, finish, reset, stop,
///   send, close). Whatever arrives, it never panics, holds at most `STREAMS_MAX` streams
///   of the peer's and a window of unread bytes on each, and queues answers only while
///   the peer reads them.
/// - odd: two honest ends, the input choosing each one's operations and how their bytes
///   are cut on the way (partial frames included). Neither ever sees a violation, and
///   every stream carries its bytes in order, ending where its writer finished.
pub fn mux(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        mux_hostile(mode & 2 != 0, rest);
    } else {
        mux_pair(rest);
    }
}

fn mux_hostile(client: bool, data: &[u8]) {
    use std::task::Poll;
    use tpc_core::mux::*;
    let mut m: Mux<()> = Mux::new(client);
    let mut ids: Vec<u32> = Vec::new();
    let mut app_frames = 0usize;
    let zeros = vec![0u8; DATA_FRAME_BYTES_MAX as usize];
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = usize::from(op >> 3);
        let pick = |ids: &[u32]| (!ids.is_empty()).then(|| ids[arg % ids.len()]);
        match op % 8 {
            0 | 1 => {
                let (chunk, tail) = rest.split_at(rest.len().min((arg + 1) * 8));
                rest = tail;
                if m.poll_receive(|| ()).is_ready() {
                    m.receive(chunk);
                }
            }
            2 => {
                // A DATA frame of the length the next three bytes give, its payload made
                // here: windows and frame limits are megabytes, beyond what an input
                // spells out byte by byte.
                let b = |i: usize| rest.get(i).copied().unwrap_or(0);
                let len = u32::from_le_bytes([b(0), b(1), b(2), 0]).min(DATA_FRAME_BYTES_MAX + 1);
                rest = rest.get(3..).unwrap_or_default();
                // On a stream the peer may open: even numbers are a server's.
                let id = arg as u32 * 2 + if client { 2 } else { 1 };
                let mut f = vec![0u8];
                f.extend_from_slice(&id.to_le_bytes());
                f.extend_from_slice(&len.to_le_bytes());
                f.resize(HEADER_BYTES + len as usize, 0);
                if m.poll_receive(|| ()).is_ready() {
                    m.receive(&f);
                }
            }
            3 => {
                if let Poll::Ready(Ok(id)) = m.poll_open(|| ()) {
                    ids.push(id);
                }
            }
            4 => {
                if let Poll::Ready(Some(id)) = m.poll_accept(|| ()) {
                    ids.push(id);
                }
            }
            5 => {
                if let Some(id) = pick(&ids) {
                    let _ = m.poll_read(id, || ());
                    app_frames += 1;
                }
            }
            6 => {
                if let Some(id) = pick(&ids) {
                    if let Poll::Ready(Ok(n)) = m.poll_room(id, (arg + 1) * 8192, || ()) {
                        m.send(id, &zeros[..n]);
                        app_frames += 1;
                    }
                }
            }
            _ => {
                app_frames += 1;
                match (arg % 5, pick(&ids)) {
                    (0, Some(id)) => {
                        let _ = m.finish(id);
                    }
                    (1, Some(id)) => m.reset(id, arg as u32),
                    (2, Some(id)) => m.stop(id, arg as u32),
                    (3, _) => m.take_frames(arg * 4096, |_| {}),
                    (4, _) => m.close(arg as u32, b"fuzz"),
                    _ => {}
                }
            }
        }
        let window = STREAM_WINDOW_BYTES as usize;
        assert!(m.stream_count() <= 2 * STREAMS_MAX as usize);
        assert!(m.most_unread_bytes() <= window, "{}", m.most_unread_bytes());
        assert!(
            m.buffered_bytes()
                <= m.stream_count() * window + HEADER_BYTES + DATA_FRAME_BYTES_MAX as usize,
            "buffered {} with {} streams",
            m.buffered_bytes(),
            m.stream_count()
        );
        // What the peer's bytes queue here waits for the peer to read it: one feed's
        // answers past the limit at most, beside what this end's own operations queued.
        let answers = 256 / HEADER_BYTES * HEADER_BYTES + 2 * CLOSE_REASON_BYTES_MAX as usize;
        assert!(
            m.queued_bytes()
                <= OUT_QUEUE_BYTES_MAX
                    + DATA_FRAME_BYTES_MAX as usize
                    + answers
                    + app_frames * (HEADER_BYTES + 16),
            "queued {}",
            m.queued_bytes()
        );
    }
}

fn mux_pair(data: &[u8]) {
    use std::collections::HashMap;
    use std::task::Poll;
    use tpc_core::mux::*;

    /// What end `from` writes at `offset` of stream `id`.
    fn byte(from: usize, id: u32, offset: u64) -> u8 {
        (offset.wrapping_mul(31) ^ u64::from(id) ^ (from as u64 * 0x55)) as u8
    }
    #[derive(Default, Clone, Copy)]
    struct Half {
        sent: u64,
        finished: bool,
        reset: bool,
        got: u64,
        stopped: bool,
        ended: bool,
    }
    let mut ends: [Mux<()>; 2] = [Mux::new(true), Mux::new(false)];
    // Per end: its streams, and what it sent and received on each.
    let mut halves: [HashMap<u32, Half>; 2] = [HashMap::new(), HashMap::new()];
    let mut ids: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    // Bytes on the way from each end to the other.
    let mut wire: [Vec<u8>; 2] = [Vec::new(), Vec::new()];

    let deliver = |ends: &mut [Mux<()>; 2], wire: &mut [Vec<u8>; 2], from: usize, n: usize| {
        let to = 1 - from;
        ends[from].take_frames(usize::MAX, |f| wire[from].extend_from_slice(f));
        if ends[to].poll_receive(|| ()).is_pending() {
            return;
        }
        let n = n.min(wire[from].len());
        let chunk: Vec<u8> = wire[from].drain(..n).collect();
        assert!(
            ends[to].receive(&chunk),
            "an honest peer: {:?}",
            ends[to].lost()
        );
    };

    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let side = usize::from(op & 1);
        let arg = usize::from(op >> 4);
        let id = (!ids[side].is_empty()).then(|| ids[side][arg % ids[side].len()]);
        match (op >> 1) % 8 {
            0 => {
                if let Poll::Ready(r) = ends[side].poll_open(|| ()) {
                    let id = r.expect("an honest peer never runs out of streams here");
                    ids[side].push(id);
                    halves[side].insert(id, Half::default());
                }
            }
            1 => {
                if let Poll::Ready(Some(id)) = ends[side].poll_accept(|| ()) {
                    ids[side].push(id);
                    halves[side].insert(id, Half::default());
                }
            }
            2 => {
                let Some(id) = id else { continue };
                let h = halves[side][&id];
                if h.finished || h.reset {
                    continue;
                }
                let want = (arg + 1) * 3000;
                match ends[side].poll_room(id, want, || ()) {
                    Poll::Ready(Ok(n)) => {
                        let bytes: Vec<u8> = (h.sent..h.sent + n as u64)
                            .map(|o| byte(side, id, o))
                            .collect();
                        ends[side].send(id, &bytes);
                        halves[side].get_mut(&id).unwrap().sent += n as u64;
                    }
                    Poll::Ready(Err(StreamError::Stopped(_))) => {}
                    Poll::Ready(Err(e)) => panic!("write on {id}: {e:?}"),
                    Poll::Pending => {}
                }
            }
            3 => {
                let Some(id) = id else { continue };
                let h = halves[side][&id];
                if h.stopped || h.ended {
                    continue;
                }
                let peer = halves[1 - side].get(&id).copied().unwrap_or_default();
                match ends[side].poll_read(id, || ()) {
                    Poll::Ready(Ok(Some(b))) => {
                        for (i, &x) in b.iter().enumerate() {
                            assert_eq!(x, byte(1 - side, id, h.got + i as u64), "stream {id}");
                        }
                        halves[side].get_mut(&id).unwrap().got += b.len() as u64;
                    }
                    Poll::Ready(Ok(None)) => {
                        assert!(
                            peer.finished && h.got == peer.sent,
                            "stream {id} ended early"
                        );
                        halves[side].get_mut(&id).unwrap().ended = true;
                    }
                    Poll::Ready(Err(StreamError::Reset(_))) => {
                        assert!(peer.reset, "a reset nobody sent");
                        halves[side].get_mut(&id).unwrap().ended = true;
                    }
                    Poll::Ready(Err(e)) => panic!("read on {id}: {e:?}"),
                    Poll::Pending => {}
                }
            }
            4 => {
                let Some(id) = id else { continue };
                let h = halves[side].get_mut(&id).unwrap();
                if !h.finished && !h.reset && ends[side].finish(id).is_ok() {
                    h.finished = true;
                }
            }
            5 => {
                let Some(id) = id else { continue };
                let h = halves[side].get_mut(&id).unwrap();
                if !h.finished && !h.reset {
                    ends[side].reset(id, arg as u32);
                    h.reset = true;
                }
            }
            6 => {
                let Some(id) = id else { continue };
                ends[side].stop(id, arg as u32);
                halves[side].get_mut(&id).unwrap().stopped = true;
            }
            _ => {
                // Bytes cut anywhere, frames split across deliveries.
                let n = rest
                    .first()
                    .map_or(usize::MAX, |&b| (usize::from(b) + 1) * 37);
                rest = rest.get(1..).unwrap_or_default();
                deliver(&mut ends, &mut wire, side, n);
            }
        }
    }
    // Everything on the way arrives, and neither end saw anything wrong.
    for _ in 0..4 {
        deliver(&mut ends, &mut wire, 0, usize::MAX);
        deliver(&mut ends, &mut wire, 1, usize::MAX);
    }
    assert!(ends[0].lost().is_none() && ends[1].lost().is_none());
}
