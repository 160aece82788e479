//! The fuzz targets' bodies (fuzz/src/lib.rs) in the ordinary test suite: each runs over
//! seeds made by the encoders, a fixed number of seeded mutations of them, and the
//! inputs saved under fuzz/regressions/<target>/ (crashes that coverage-guided runs
//! found, kept as regression tests). The long coverage-guided runs are cargo-fuzz's
//! (fuzz/README.md).

#[path = "../fuzz/src/lib.rs"]
mod targets;

use tpc_core::codec::{CODECS_SAME, CODECS_ZSTD, CODEC_RAW, CODEC_SAME, CODEC_ZSTD};
use tpc_core::wire::{
    DeleteRequest, DestKind, Entry, ErrorCode, Frame, NeedItem, Op, Run, Selection, WireKind,
};
use tpc_core::ChunkHash;

/// Mutations per seed: enough to reach every field's edge of a small frame, cheap
/// enough for every test run (well under a second in the suite's release build).
const MUTATIONS_PER_SEED: usize = 2_000;

/// Runs `body` over `seeds`, their mutations and the saved regressions of `target`;
/// returns how many saved regressions ran.
fn replay(target: &str, seeds: &[Vec<u8>], body: fn(&[u8])) -> usize {
    let mut rng = fastrand::Rng::with_seed(0x7c0_f022);
    for seed in seeds {
        body(seed);
        for _ in 0..MUTATIONS_PER_SEED {
            let mut m = seed.clone();
            for _ in 0..=rng.usize(..4) {
                match rng.u8(..5) {
                    0 if !m.is_empty() => {
                        let i = rng.usize(..m.len());
                        m[i] ^= 1 << rng.u8(..8);
                    }
                    1 if !m.is_empty() => {
                        let i = rng.usize(..m.len());
                        m[i] = [0, 0xff, 0x7f, 0x80][rng.usize(..4)];
                    }
                    2 => m.truncate(rng.usize(..=m.len())),
                    3 => {
                        let i = rng.usize(..=m.len());
                        m.insert(i, rng.u8(..));
                    }
                    _ => m.extend(std::iter::repeat_n(rng.u8(..), rng.usize(..64))),
                }
            }
            body(&m);
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut saved = 0;
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                body(&std::fs::read(e.unwrap().path()).unwrap());
                saved += 1;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", dir.display()),
    }
    saved
}

fn encoded(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            f.encode(&mut out);
            out
        })
        .collect()
}

#[test]
fn frames() {
    let file = Entry {
        kind: WireKind::File,
        path: b"d/x".to_vec(),
        size: 5,
        mode: 0o644,
        mtime: (-1, 999_999_999),
        target: vec![],
        hashes: vec![ChunkHash([7; 32])],
    };
    let link = Entry {
        kind: WireKind::Symlink,
        target: b"../t".to_vec(),
        hashes: vec![],
        ..file.clone()
    };
    let run = Run {
        session: 1,
        file: 2,
        path: b"p".to_vec(),
        size: 10,
        chunk_first: 0,
        chunk_count: 2,
        codecs: CODECS_ZSTD | CODECS_SAME,
    };
    let seeds = encoded(&[
        Frame::Hello {
            version: 3,
            op: Op::Push {
                dest: b"a/b".to_vec(),
                durable: true,
            },
        },
        Frame::Hello {
            version: 3,
            op: Op::Pull {
                src: b"s".to_vec(),
                select: Default::default(),
                rate: None,
            },
        },
        Frame::Hello {
            version: 5,
            op: Op::Pull {
                src: b"s/".to_vec(),
                select: Selection {
                    rules: vec![(true, "*/".into()), (false, "*.o".into())],
                    min_size: Some(10),
                    max_size: None,
                },
                rate: None,
            },
        },
        Frame::Finish { delete: None },
        Frame::Finish {
            delete: Some(DeleteRequest {
                max: 3,
                bases: vec![Vec::new(), b"src".to_vec()],
                rules: vec![(false, "cache/".into())],
            }),
        },
        Frame::Welcome {
            session: 9,
            shard_ports: vec![7440, 7441],
            dest: DestKind::Dir,
        },
        Frame::Entries(vec![file, link]),
        Frame::EntriesEnd { count: 2 },
        Frame::Need(vec![NeedItem {
            file: 2,
            chunk_first: 4,
            chunk_count: 3,
            have: vec![ChunkHash([1; 32])],
        }]),
        Frame::Put(run.clone()),
        Frame::Get(run),
        Frame::Data { chunk_count: 1 },
        Frame::Commit { files: vec![1, 2] },
        Frame::Committed { files: vec![3] },
        Frame::Failed {
            file: 4,
            code: ErrorCode::NoSpace,
            message: "disk full\u{7}".into(),
        },
        Frame::Done {
            files: 1,
            bytes: 2,
            deleted: 3,
            left: 4,
        },
        Frame::Error {
            code: ErrorCode::PathRefused,
            message: "no".into(),
        },
        Frame::Unlisted {
            code: ErrorCode::Io,
            message: "'d': Permission denied\n".into(),
        },
    ]);
    let saved = replay("frame", &seeds, targets::frame);
    assert!(
        saved >= 1,
        "fuzz/regressions/frame was not found: its inputs did not run"
    );
}

#[test]
fn chunk_headers() {
    let mut seeds = Vec::new();
    for codec in [CODEC_RAW, CODEC_SAME, CODEC_ZSTD, 9] {
        for allowed in [0, CODECS_ZSTD, CODECS_SAME, 0xff] {
            // Plain length 4096, then a compressed length of 100.
            seeds.push(vec![codec, allowed, 0, 16, 0, 100, 0, 0, 0]);
        }
    }
    replay("chunk_header", &seeds, targets::chunk_header);
}

#[test]
fn zstd_chunks() {
    let plain: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut seeds = Vec::new();
    for kib in [8u16, 4, 0] {
        let mut s = kib.to_le_bytes().to_vec();
        s.extend(zstd::bulk::compress(&plain, 1).unwrap());
        seeds.push(s);
    }
    replay("zstd_chunk", &seeds, targets::zstd_chunk);
}

#[test]
fn trust_files() {
    let fp = "tpc1:".to_string() + &"a1".repeat(32);
    let seeds = vec![
        format!("{fp} laptop\n# a comment\n\n{fp}\n").into_bytes(),
        format!("host.example:7440 {fp}\n[::1]:7440 {fp}\n").into_bytes(),
        b"garbage line\n\xff\n".to_vec(),
    ];
    replay("trust_files", &seeds, targets::trust_files);
}

#[test]
fn relpaths() {
    let seeds: Vec<Vec<u8>> = [
        &b"a/b/c"[..],
        b"dir/file name\n-x",
        b"a/./b",
        b"a/../b",
        b"/etc/passwd",
        b"a//b",
        b"a/\0/b",
        b"\xff\xfe/\xc3\xa9",
        b"",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    replay("relpath", &seeds, targets::relpath);
}

#[test]
fn muxes() {
    // One multiplexer frame: kind, stream, value, payload.
    fn frame(kind: u8, id: u32, value: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(&value.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }
    // Hostile: a server (mode 0) and a client (mode 2) each fed a run of frames from the
    // peer (op 0 with argument 31: 256 bytes), between accepts, reads, writes, a stop,
    // a send of the queue and a close.
    let mut peer = Vec::new();
    for f in [
        frame(0, 1, 5, b"hello"),
        frame(0, 2, 3, b"abc"),
        frame(1, 1, 0, &[]),
        frame(3, 5, 9, &[]),
        frame(4, 1, 100, &[]),
        frame(5, 0, 1, &[]),
        frame(2, 7, 4, &[]),
        frame(6, 3, 4, b"bye!"),
    ] {
        peer.extend(f);
    }
    peer.resize(256, 0);
    let ops = [4u8, 4, 5, 13, 6, 14, 3, 7, 15, 23, 31, 0x7f];
    let mut seeds = Vec::new();
    for mode in [0u8, 2] {
        let mut s = vec![mode, 31 << 3];
        s.extend(&peer);
        s.extend(ops);
        seeds.push(s);
    }
    // A server fed DATA frames made by the target (op 2: stream 1, a 3-byte length):
    // sixteen of 256 KiB fill the stream's window, and a byte more breaks it.
    let mut s = vec![0u8];
    for _ in 0..16 {
        s.extend([2, 0, 0, 4]);
    }
    s.extend([2, 1, 0, 0, 5, 0xff, 2, 0, 0, 0x10]);
    seeds.push(s);
    // Honest pair (mode 1): the client opens, writes and finishes, bytes go across cut
    // in two, the server accepts, reads, answers and finishes, the client reads; then a
    // second stream is reset, and one stopped. Op: bit 0 the end, bits 1-3 the action
    // (0 open, 1 accept, 2 write, 3 read, 4 finish, 5 reset, 6 stop, 7 deliver + a
    // length byte), bits 4-7 an argument.
    seeds.push(vec![
        1, 0, 4, 0x14, 8, 14, 3, 14, 200, 3, 7, 7, 7, 5, 9, 15, 255, 6, 6, 6, 0, 4, 10, 14, 255, 3,
        7, 13, 1, 15, 255, 6, 14, 255, 15, 255,
    ]);
    replay("mux", &seeds, targets::mux);
}
