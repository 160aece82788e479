//! A hostile server against the real `tpc-xfer copy` client: it speaks the wire protocol
//! directly and answers a push with what no honest server sends (runs of files that do
//! not exist or are not files, empty or overlong runs, more runs than files, commits of
//! files never committed), and a pull with names that climb out, a file through a
//! symlink to the outside, chunks that do not match their hash or end early. The client
//! must stop with a typed exit code and a one-line reason, write nothing outside its
//! destination and leave nothing unverified, never panic or hang.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use tpc_core::codec::{CODEC_RAW, CODEC_ZSTD};
use tpc_core::wire::{DestKind, Entry, Frame, NeedItem, WireKind};
use tpc_engine::quic::{bind_socket, Endpoint};
use tpc_engine::transport::{Connection, RecvStream, SendStream};
use tpc_xfer::auth::{
    quic_server_config, quic_server_config_from, server_crypto, AuthorizedClients, Identity,
};
use tpc_xfer::remote::{read_frame, transport_config, write_frame};

/// What the fake server answers once it has read the client's manifest.
#[derive(Clone)]
enum Lie {
    /// These Need frames, then NeedEnd.
    Needs(Vec<Vec<NeedItem>>),
    /// An honest Need for every file, then `Committed` for a file the client never sent a
    /// Commit for.
    CommittedUnasked(u32),
    /// A second server shard whose port never answers, then an honest Need.
    DeadShard,
}

/// The fake server's start: a QUIC endpoint on `socket` with the server key in `state`,
/// its first connection, and that connection's control stream, read up to its Hello.
async fn accept_session(
    state: &Path,
    socket: std::net::UdpSocket,
) -> (Endpoint, Connection, SendStream, RecvStream) {
    let identity = Identity::load_or_create(state).unwrap();
    let authorized = AuthorizedClients::load(state).unwrap();
    let crypto = Arc::new(quic_server_config(&identity, authorized).unwrap());
    let make = move |_: SocketAddr| {
        let mut c = (*crypto).clone();
        c.transport_config(transport_config(1452, Default::default()));
        Arc::new(c)
    };
    let endpoint = Endpoint::new(socket, Some(Box::new(make))).unwrap();
    let conn = Connection::Quic(endpoint.accept().await.unwrap());
    let (send, mut recv) = conn.accept_bi().await.unwrap();
    let hello = read_frame(&mut recv).await.unwrap().unwrap();
    assert!(matches!(hello, Frame::Hello { .. }), "{hello:?}");
    (endpoint, conn, send, recv)
}

/// Serves one connection on 127.0.0.1 with the server key in `state`, answering the push
/// with `lie`, while the real client pushes `src`. Returns the client's output.
fn push_to_liar(state: &Path, client_state: &Path, src: &Path, lie: Lie) -> std::process::Output {
    let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    // Bound, so nothing else takes the port, and never read.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let shard_ports = match lie {
        Lie::DeadShard => vec![port, dead_port],
        _ => vec![port],
    };
    let state = state.to_path_buf();
    let server = spawn_shard(move || async move {
        let (endpoint, conn, mut send, mut recv) = accept_session(&state, socket).await;
        write_frame(
            &mut send,
            &Frame::Welcome {
                session: 7,
                shard_ports,
                dest: DestKind::Missing,
            },
        )
        .await
        .unwrap();
        let mut files = 0u32;
        loop {
            match read_frame(&mut recv).await.unwrap().unwrap() {
                Frame::Entries(e) => files += e.len() as u32,
                Frame::EntriesEnd { .. } => break,
                f => panic!("unexpected {f:?}"),
            }
        }
        let needs = match &lie {
            Lie::Needs(frames) => frames.clone(),
            // Entry 0 is the directory itself.
            Lie::CommittedUnasked(_) | Lie::DeadShard => vec![(1..files)
                .map(|file| NeedItem {
                    file,
                    chunk_first: 0,
                    chunk_count: 1,
                    have: Vec::new(),
                })
                .collect()],
        };
        for items in needs {
            write_frame(&mut send, &Frame::Need(items)).await.unwrap();
        }
        write_frame(&mut send, &Frame::NeedEnd).await.unwrap();
        if let Lie::CommittedUnasked(file) = lie {
            let _ = write_frame(&mut send, &Frame::Committed { files: vec![file] }).await;
        }
        // Until the client gives up on us.
        while let Ok(Some(_)) = read_frame(&mut recv).await {}
        conn.close(0, b"done");
        endpoint.shutdown();
        endpoint.wait_idle().await;
    });
    let out = copy(
        client_state,
        src,
        format!("tpc://127.0.0.1:{port}/dest"),
        // The liar is a QUIC server only, whatever transport the suite runs over.
        &["--accept-new", "--transport", "quic"],
    );
    // A server stuck waiting would hang here; the client's exit closed its connection.
    server.join().unwrap();
    drop(dead);
    out
}

#[test]
fn the_client_refuses_a_server_that_lies_about_what_it_needs() {
    let s = Scratch::new("hostile-server");
    let (cs, ss) = keys(&s);
    // Entry 0 is the directory itself, entries 1 and 2 are one-chunk files.
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("a"), 1000, 1);
    random_file(&src.join("b"), 2000, 2);
    let item = |file, chunk_first, chunk_count| NeedItem {
        file,
        chunk_first,
        chunk_count,
        have: Vec::new(),
    };
    let lies = [
        (
            "a file index outside the manifest",
            Lie::Needs(vec![vec![item(99, 0, 1)]]),
        ),
        ("the directory entry", Lie::Needs(vec![vec![item(0, 0, 1)]])),
        ("an empty run", Lie::Needs(vec![vec![item(1, 0, 0)]])),
        (
            "a run past the last chunk",
            Lie::Needs(vec![vec![item(1, 0, 2)]]),
        ),
        (
            "a run far past the last chunk",
            Lie::Needs(vec![vec![item(1, u32::MAX, 1)]]),
        ),
        (
            "the same file twice",
            Lie::Needs(vec![vec![item(1, 0, 1)], vec![item(1, 0, 1)]]),
        ),
        (
            "more runs than files",
            Lie::Needs(vec![vec![item(1, 0, 1); 4], vec![item(2, 0, 1)]]),
        ),
        (
            "have hashes for chunks the file does not have",
            Lie::Needs(vec![vec![NeedItem {
                have: vec![tpc_core::ChunkHash([0; 32]); 65_536],
                ..item(1, 0, 65_536)
            }]]),
        ),
        ("a commit never asked for", Lie::CommittedUnasked(2)),
    ];
    for (what, lie) in lies {
        let out = push_to_liar(&ss, &cs, &with_slash_path(&src), lie);
        assert_eq!(code(&out), 10, "{what}: {}", stderr(&out));
        let reason = if what.starts_with("a commit") {
            "not being committed"
        } else {
            "asked for"
        };
        assert!(stderr(&out).contains(reason), "{what}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

fn with_slash_path(p: &Path) -> std::path::PathBuf {
    with_slash(p).into()
}

#[test]
fn a_server_shard_that_never_answers_ends_the_push_as_a_network_error() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("skipped: needs two client shards, this machine has one core");
        return;
    }
    let s = Scratch::new("hostile-server-dead-shard");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("a"), 1000, 1);
    // Client shard 1 dials the second port, which never answers: exit 8 after the connect
    // timeout, with shard 0's ranges (never answered either) abandoned, not waited for.
    let out = push_to_liar(&ss, &cs, &with_slash_path(&src), Lie::DeadShard);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("did not answer"), "{}", stderr(&out));
}

/// A server of the previous protocol version (ALPN `tpc-xfer/3`), over QUIC and over
/// TCP: the client refuses it with exit 10 and says why, as an old client is refused by
/// a new server (`auth.rs`, `another_protocol_version_is_recognised_by_the_client`).
#[test]
fn a_server_of_another_protocol_version_is_exit_10_with_a_clear_message() {
    let s = Scratch::new("old-server");
    let (cs, ss) = keys(&s);
    let src = s.path("f");
    random_file(&src, 1000, 1);
    let identity = Identity::load_or_create(&ss).unwrap();
    let authorized = AuthorizedClients::load(&ss).unwrap();
    let mut old = (*server_crypto(&identity, authorized).unwrap()).clone();
    old.alpn_protocols = vec![b"tpc-xfer/3".to_vec()];
    let old = Arc::new(old);
    for transport in ["quic", "tcp"] {
        // A free UDP port whose TCP twin is free too: another test's connection may hold
        // the TCP one, so look again until both are ours.
        let (socket, port, listener) = (0..100)
            .find_map(|_| {
                let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
                let port = socket.local_addr().unwrap().port();
                let at = format!("127.0.0.1:{port}").parse().unwrap();
                let listener = tpc_engine::tcp::bind_listener(at).ok()?;
                Some((socket, port, listener))
            })
            .expect("a port free for both UDP and TCP");
        let old = old.clone();
        // The QUIC server lives until the client has exited, however slow its handshake.
        let client_exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exited = client_exited.clone();
        let server = spawn_shard(move || async move {
            if transport == "quic" {
                let crypto = Arc::new(quic_server_config_from(old).unwrap());
                let make = move |_: SocketAddr| {
                    let mut c = (*crypto).clone();
                    c.transport_config(transport_config(1452, Default::default()));
                    Arc::new(c)
                };
                let endpoint = Endpoint::new(socket, Some(Box::new(make))).unwrap();
                // The handshake fails inside the endpoint: nothing is ever accepted.
                while !exited.load(std::sync::atomic::Ordering::Relaxed) {
                    tpc_engine::rt::sleep(std::time::Duration::from_millis(20)).await;
                }
                endpoint.shutdown();
            } else {
                let listener = tpc_engine::rt::TcpListener::from_std(listener).unwrap();
                let sock = listener.accept().await.unwrap();
                let peer = "127.0.0.1:1".parse().unwrap();
                let refused = tpc_engine::tcp::Connection::accept(sock, old, peer).await;
                assert!(refused.is_err(), "an old server's handshake succeeded");
            }
        });
        let out = copy(
            &cs,
            &src,
            format!("tpc://127.0.0.1:{port}/f"),
            &["--accept-new", "--transport", transport],
        );
        client_exited.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
        assert_eq!(code(&out), 10, "{transport}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("speaks another version"),
            "{transport}: {}",
            stderr(&out)
        );
    }
}

/// How the fake server answers a pull's data streams.
#[derive(Clone, Copy)]
enum Data {
    /// Each chunk's bytes as announced, with a hash of other bytes.
    WrongHash,
    /// Fewer bytes than the run's chunks hold, then the end of the stream.
    Short,
    /// The bytes and their hash, honestly.
    Honest,
    /// Nothing at all: the stream is held open (and the connection answers keep-alives).
    Stall,
    /// The run's header, then one byte a second.
    Trickle,
    /// A zstd chunk of a few bytes that decodes to 1 MiB of zeros (a decompression
    /// bomb), with the hash of the honest bytes.
    Bomb,
    /// An `Error` frame whose message carries control characters and a forged line.
    Refuse,
    /// The connection closed with a reason that carries control characters and a forged
    /// line.
    Close,
}

/// Serves one pull on 127.0.0.1 with the server key in `state`: the manifest `entries`
/// (entry 0 is the source itself), then `data` on every data stream, while the real
/// client pulls into `dest`. Returns the client's output.
fn pull_from_liar(
    state: &Path,
    client_state: &Path,
    dest: &Path,
    entries: Vec<Entry>,
    data: Data,
) -> std::process::Output {
    let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let state = state.to_path_buf();
    let sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
    // Set once the client has exited: a client that fails early may leave its
    // connection to the idle timeout (10 s), which the server need not wait out.
    let client_exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exited = client_exited.clone();
    let server = spawn_shard(move || async move {
        let (endpoint, conn, mut send, mut recv) = accept_session(&state, socket).await;
        let welcome = Frame::Welcome {
            session: 7,
            shard_ports: vec![port],
            dest: DestKind::Dir,
        };
        write_frame(&mut send, &welcome).await.unwrap();
        let count = entries.len() as u64;
        write_frame(&mut send, &Frame::Entries(entries))
            .await
            .unwrap();
        write_frame(&mut send, &Frame::EntriesEnd { count })
            .await
            .unwrap();
        // Data streams until the client is done with us (its control stream ends).
        let control = async {
            while let Ok(Some(f)) = read_frame(&mut recv).await {
                if f == (Frame::Finish { delete: None }) {
                    let done = Frame::Done {
                        files: 0,
                        bytes: 0,
                        deleted: 0,
                        left: 0,
                    };
                    let _ = write_frame(&mut send, &done).await;
                    let _ = send.finish();
                }
            }
        };
        let streams = async {
            let mut held = Vec::new();
            while let Some((mut s, mut r)) = conn.accept_bi().await {
                let Ok(Some(Frame::Get(run))) = read_frame(&mut r).await else {
                    continue;
                };
                let header = Frame::Data {
                    chunk_count: run.chunk_count,
                };
                match data {
                    Data::Stall => {
                        held.push((s, r));
                        continue;
                    }
                    Data::Trickle => {
                        let trickle = async move {
                            let _ = write_frame(&mut s, &header).await;
                            while s.write_all(&[CODEC_RAW]).await.is_ok() {
                                tpc_engine::rt::sleep(std::time::Duration::from_secs(1)).await;
                            }
                            drop(r);
                        };
                        tpc_engine::rt::spawn_local(trickle).detach();
                        continue;
                    }
                    Data::Refuse => {
                        let error = Frame::Error {
                            code: tpc_core::wire::ErrorCode::Io,
                            message: FORGED.to_string(),
                        };
                        let _ = write_frame(&mut s, &error).await;
                        let _ = s.finish();
                        continue;
                    }
                    Data::Close => {
                        conn.close(77, FORGED.as_bytes());
                        continue;
                    }
                    _ => {}
                }
                let size = sizes.get(run.file as usize).copied().unwrap_or(0) as usize;
                let chunk = vec![b'x'; size];
                let body = match data {
                    Data::WrongHash => [&[CODEC_RAW][..], &chunk, &[0; 32]].concat(),
                    Data::Short => [&[CODEC_RAW][..], &chunk[..size / 2]].concat(),
                    Data::Honest => {
                        let hash = blake3::hash(&chunk);
                        [&[CODEC_RAW][..], &chunk, hash.as_bytes()].concat()
                    }
                    Data::Bomb => {
                        let frames = zstd::bulk::compress(&vec![0u8; 1 << 20], 19).unwrap();
                        let len = (frames.len() as u32).to_le_bytes();
                        let hash = blake3::hash(&chunk);
                        [&[CODEC_ZSTD][..], &len, &frames, hash.as_bytes()].concat()
                    }
                    Data::Stall | Data::Trickle | Data::Refuse | Data::Close => {
                        unreachable!("answered above")
                    }
                };
                let _ = write_frame(&mut s, &header).await;
                let _ = s.write_all(&body).await;
                let _ = s.finish();
            }
        };
        let gone = async {
            while !exited.load(std::sync::atomic::Ordering::Relaxed) {
                tpc_engine::rt::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        futures_lite::future::or(futures_lite::future::or(control, streams), gone).await;
        conn.close(0, b"done");
        endpoint.shutdown();
        // The client's connections are gone with it: their draining is not waited out.
        let _ =
            tpc_engine::rt::within(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    });
    let out = copy(
        client_state,
        format!("tpc://127.0.0.1:{port}/src/"),
        dest,
        // The liar is a QUIC server only, whatever transport the suite runs over. A
        // stalling liar is given up after 2 s without progress.
        &["--accept-new", "--transport", "quic", "--timeout", "2"],
    );
    client_exited.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
    out
}

/// Everything below `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_pulling_client_confines_and_verifies_what_a_lying_server_sends() {
    let s = Scratch::new("hostile-pull");
    let (cs, ss) = keys(&s);
    let outside = s.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let entry = |kind, path: &[u8], size| Entry {
        kind,
        path: path.to_vec(),
        size,
        mode: if kind == WireKind::Dir { 0o755 } else { 0o644 },
        mtime: (1_700_000_000, 0),
        target: Vec::new(),
        hashes: Vec::new(),
    };
    let top = entry(WireKind::Dir, b"", 0);
    let file = |path: &[u8]| entry(WireKind::File, path, 1000);
    // Names no honest server sends: the whole session is refused (exit 10).
    for name in [&b"../x"[..], b"/etc/x", b"a\0b"] {
        let dest = s.path("dest-names");
        let out = pull_from_liar(&ss, &cs, &dest, vec![top.clone(), file(name)], Data::Honest);
        let what = String::from_utf8_lossy(name);
        assert_eq!(code(&out), 10, "{what}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(tree(&dest).is_empty(), "{what}: wrote {:?}", tree(&dest));
    }
    // A symlink to the outside already in the destination (as an earlier pull of the
    // same lying server leaves it), then a file through it: refused where the path is
    // resolved beneath the destination, and nothing appears outside.
    let dest = s.path("dest-link");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("l")).unwrap();
    let out = pull_from_liar(
        &ss,
        &cs,
        &dest,
        vec![top.clone(), file(b"l/x")],
        Data::Honest,
    );
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(
        tree(&outside).is_empty(),
        "wrote outside: {:?}",
        tree(&outside)
    );
    // Data that does not match its hash, or ends early: the file fails, nothing of it
    // (not even a temporary file) stays, and the client says why.
    // A server that answers keep-alives but sends nothing, or a byte a second: the
    // client gives up after `--timeout` without progress (exit 8, "no progress") instead
    // of waiting for ever. Whatever the lie, nothing is left behind.
    for (what, data, code_want, says) in [
        ("a wrong hash", Data::WrongHash, 6, ""),
        ("a short run", Data::Short, 3, ""),
        ("a zstd bomb", Data::Bomb, 10, ""),
        ("a stall", Data::Stall, 8, "no progress"),
        ("a trickle", Data::Trickle, 8, "no progress"),
    ] {
        let dest = s.path(&format!("dest-{}", what.replace(' ', "-")));
        let out = pull_from_liar(&ss, &cs, &dest, vec![top.clone(), file(b"f")], data);
        let err = stderr(&out);
        assert_eq!(code(&out), code_want, "{what}: {err}");
        assert!(
            !err.contains("panicked") && err.contains(says),
            "{what}: {err}"
        );
        assert_eq!(
            tree(&dest),
            Vec::<String>::new(),
            "{what}: left {:?}",
            tree(&dest)
        );
    }
    // A peer's message and close reason, with a forged line and a terminal escape in
    // them: the client fails the pull and shows them escaped, on one line.
    for (what, data) in [("an error", Data::Refuse), ("a close", Data::Close)] {
        let dest = s.path(&format!("dest-{}", what.replace(' ', "-")));
        let out = pull_from_liar(&ss, &cs, &dest, vec![top.clone(), file(b"f")], data);
        let err = stderr(&out);
        assert_ne!(code(&out), 0, "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            err.contains("it broke"),
            "{what}: the message is not shown: {err}"
        );
        assert_forgery_escaped(&err, what);
    }
    // The same fake server, honest: the pull completes (the harness itself is sound).
    let dest = s.path("dest-honest");
    let out = pull_from_liar(&ss, &cs, &dest, vec![top, file(b"f")], Data::Honest);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), vec![b'x'; 1000]);
}
