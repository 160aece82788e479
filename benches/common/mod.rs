//! Set-up shared by the engine benchmarks: scratch files, the drivers to compare, shard
//! threads that time their own work, and an authenticated QUIC client and server on
//! loopback, each on its own shard thread, as in a real transfer.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tpc_core::codec::{Compression, CODECS_SAME, CODECS_ZSTD};
use tpc_core::wire::Run;
use tpc_core::ChunkHash;
use tpc_engine::direct::DirectFile;
use tpc_engine::quic::{bind_socket, Endpoint};
use tpc_engine::rt::File;
use tpc_engine::rt::{self, Driver, IoChoice};
use tpc_engine::transport::{Connection, RecvStream, SendStream};
use tpc_xfer::auth::{
    quic_client_config, quic_server_config, AuthorizedClients, Identity, KnownServers, ServerTrust,
};
use tpc_xfer::remote::data::{receive_run, send_run, RunLog};
use tpc_xfer::remote::transport_config;

/// The drivers that run here: io_uring where this host allows it, and portable. Called
/// first by every benchmark, so it also sets the allocator up as tpc-xfer's `main` does.
pub fn drivers() -> Vec<Driver> {
    tpc_xfer::alloc::keep_freed_memory();
    let mut d = Vec::new();
    if let Ok((driver, None)) = rt::select(IoChoice::Uring) {
        d.push(driver);
    }
    d.push(Driver::Portable);
    d
}

/// A scratch directory under the system temp dir, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tpc-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file of `size` incompressible bytes (BLAKE3 XOF of a seed), read once so that the
/// benchmarks measure the engine, not the disk.
pub fn random_file(path: &Path, size: u64) {
    use std::io::{Read, Write};
    let mut xof = blake3::Hasher::new().update(b"tpc-bench").finalize_xof();
    let mut out = std::fs::File::create(path).expect("create");
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    out.sync_all().expect("sync");
    let mut sink = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut sink))
        .expect("read back");
}

/// `size` bytes of log-like text, deterministic: lines of timestamps, hosts, paths and
/// counters drawn from small vocabularies by a seeded generator, about as compressible
/// as a real service log (neither random nor one repeated line).
pub fn text_bytes(size: usize, seed: u64) -> Vec<u8> {
    use std::io::Write;
    const VERBS: [&str; 6] = [
        "verified", "written", "queued", "sent", "retried", "skipped",
    ];
    const DIRS: [&str; 5] = ["data", "logs", "scratch", "archive", "images"];
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift64*: fast and good enough to vary the fields.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = Vec::with_capacity(size + 256);
    let mut t = 1_763_700_000_000u64;
    while out.len() < size {
        t += next() % 5000;
        let r = next();
        let _ = writeln!(
            out,
            "{}.{:03} host-{:02} tpc-xfer[{}]: chunk {:06} of /{}/set-{}/part-{:04}.bin {} in {} us ({} bytes)",
            t / 1000,
            t % 1000,
            r % 24,
            1000 + (r >> 8) % 64,
            (r >> 16) % 100_000,
            DIRS[((r >> 20) % 5) as usize],
            (r >> 24) % 50,
            (r >> 32) % 2000,
            VERBS[((r >> 40) % 6) as usize],
            next() % 100_000,
            4_194_304 - (r >> 48) % 3 * 65_536,
        );
    }
    out.truncate(size);
    out
}

/// A file of `size` bytes of [`text_bytes`], read once so it sits in the page cache.
pub fn text_file(path: &Path, size: u64) {
    std::fs::write(path, text_bytes(size as usize, 7)).expect("write text");
}

/// Runs `iters` repetitions of `work` on a fresh shard of `driver` and returns the time
/// they took, measured on the shard (thread and executor start-up excluded): the shape
/// criterion's `iter_custom` wants.
pub fn timed_on<F, Fut>(driver: Driver, iters: u64, work: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    rt::run_thread(driver, move || async move {
        let start = Instant::now();
        for _ in 0..iters {
            work().await;
        }
        start.elapsed()
    })
    .expect("bench shard runs")
}

/// What the client of a [`QuicPair`] is asked to do; it answers with the time it took.
pub type Job = Box<dyn FnOnce(Connection) -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A QUIC server and client on loopback, each on its own shard thread of `driver`,
/// connected once. The server answers every stream with `serve`; the client runs each
/// [`Job`] given to `run` and reports how long it took.
pub struct QuicPair {
    /// Key pairs and known-servers of both ends, for the connection's lifetime.
    _keys: Scratch,
    jobs: async_channel::Sender<(Job, std::sync::mpsc::Sender<Duration>)>,
    client: Option<std::thread::JoinHandle<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl QuicPair {
    pub fn start<S, SFut>(driver: Driver, serve: S) -> QuicPair
    where
        S: Fn(SendStream, RecvStream) -> SFut + Send + Sync + 'static,
        SFut: Future<Output = ()> + 'static,
    {
        let keys = Scratch::new("quic-keys");
        let server_id = Identity::load_or_create(&keys.path("server")).expect("server key");
        let client_id = Identity::load_or_create(&keys.path("client")).expect("client key");
        std::fs::write(
            keys.path("server/authorized-clients"),
            format!("{}\n", client_id.fingerprint()),
        )
        .expect("authorize");
        let authorized = AuthorizedClients::load(&keys.path("server")).expect("authorized");
        let crypto = Arc::new(quic_server_config(&server_id, authorized).expect("server tls"));
        let socket = bind_socket("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr: SocketAddr = socket.local_addr().unwrap();
        // Loopback carries 64 KiB datagrams, as in a real transfer on this host.
        let udp_payload = 65507;
        let server = std::thread::spawn(move || {
            rt::run_here(driver, None, async move {
                let make = move |_: SocketAddr| {
                    let mut c = (*crypto).clone();
                    c.transport_config(transport_config(udp_payload, Default::default()));
                    Arc::new(c)
                };
                let endpoint = Endpoint::new(socket, Some(Box::new(make))).expect("endpoint");
                let serve = Rc::new(serve);
                let Some(conn) = endpoint.accept().await else {
                    return;
                };
                let conn = Connection::Quic(conn);
                while let Some((send, recv)) = conn.accept_bi().await {
                    let serve = serve.clone();
                    rt::spawn_local(async move { serve(send, recv).await }).detach();
                }
                endpoint.shutdown();
                endpoint.wait_idle().await;
            })
            .expect("server shard")
        });
        let known = KnownServers::load(&keys.path("client")).expect("known servers");
        let trust = ServerTrust::new(&known, &addr.to_string(), true).expect("trust");
        let mut config = quic_client_config(&client_id, trust).expect("client tls");
        config.transport_config(transport_config(udp_payload, Default::default()));
        let (jobs, job_rx) = async_channel::unbounded::<(Job, std::sync::mpsc::Sender<Duration>)>();
        let client = std::thread::spawn(move || {
            rt::run_here(driver, None, async move {
                let endpoint =
                    Endpoint::new(bind_socket("127.0.0.1:0".parse().unwrap()).unwrap(), None)
                        .expect("endpoint");
                let conn = endpoint
                    .connect(config, addr, "tpc-xfer")
                    .await
                    .map(Connection::Quic)
                    .expect("connect");
                while let Ok((job, done)) = job_rx.recv().await {
                    let start = Instant::now();
                    job(conn.clone()).await;
                    let _ = done.send(start.elapsed());
                }
                conn.close(0, b"done");
                endpoint.shutdown();
                endpoint.wait_idle().await;
            })
            .expect("client shard")
        });
        QuicPair {
            _keys: keys,
            jobs,
            client: Some(client),
            server: Some(server),
        }
    }

    /// Runs `job` on the client's connection; returns how long it took there.
    pub fn run(&self, job: Job) -> Duration {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs.send_blocking((job, tx)).expect("client running");
        rx.recv().expect("client answers")
    }
}

impl Drop for QuicPair {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// The run header a bench stream carries in place of a `Put` frame: first chunk, chunk
/// count, codecs (9 bytes).
fn bench_run(size: u64, first: u32, count: u32, codecs: u8) -> Run {
    Run {
        session: 0,
        file: 0,
        path: Vec::new(),
        size,
        chunk_first: first,
        chunk_count: count,
        codecs,
    }
}

/// The client side of one push of `src` (`size` bytes) as the product's data path does
/// it: runs of `chunks_per_stream` chunks over concurrent streams of one connection, each
/// read, hashed (and compressed, as `compression` decides) by `send_run`, each
/// acknowledged once the server has verified and written it.
pub fn push_runs(
    src: Arc<PathBuf>,
    size: u64,
    chunks_per_stream: u32,
    compression: Compression,
) -> Job {
    push_runs_over(
        src,
        size,
        chunks_per_stream,
        compression,
        Arc::new(Vec::new()),
    )
}

/// [`push_runs`] to a receiver whose old version of the file has the chunk hashes
/// `have` (from chunk 0): matching chunks go as `CODEC_SAME`, and the server (see
/// [`serve_run`]) takes them from its old copy.
pub fn push_runs_over(
    src: Arc<PathBuf>,
    size: u64,
    chunks_per_stream: u32,
    compression: Compression,
    have: Arc<Vec<ChunkHash>>,
) -> Job {
    Box::new(move |conn| {
        Box::pin(async move {
            let chunks = size.div_ceil(tpc_core::limits::CHUNK_SIZE_BYTES) as u32;
            let codecs = if compression == Compression::Never {
                0
            } else {
                CODECS_ZSTD
            } | if have.is_empty() { 0 } else { CODECS_SAME };
            let mut tasks = Vec::new();
            for first in (0..chunks).step_by(chunks_per_stream as usize) {
                let count = chunks_per_stream.min(chunks - first);
                let conn = conn.clone();
                let src = src.clone();
                let have = have.clone();
                tasks.push(rt::spawn_local(async move {
                    let file = File::open(&src).await.expect("source opens");
                    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
                    let mut header = [0u8; 9];
                    header[..4].copy_from_slice(&first.to_le_bytes());
                    header[4..8].copy_from_slice(&count.to_le_bytes());
                    header[8] = codecs;
                    send.write_all(&header).await.expect("header sent");
                    let run = bench_run(size, first, count, codecs);
                    let mut log = RunLog::default();
                    let theirs = have
                        .get(first as usize..)
                        .map_or(&[][..], |h| &h[..h.len().min(count as usize)]);
                    send_run(
                        &file,
                        "bench",
                        &run,
                        theirs,
                        compression,
                        &mut send,
                        &mut log,
                    )
                    .await
                    .expect("run sent");
                    send.finish().expect("finished");
                    let mut ack = [0u8; 1];
                    assert!(recv.read_exact(&mut ack).await.expect("acknowledged"));
                    let _ = file.close().await;
                }));
            }
            for t in tasks {
                t.await;
            }
        })
    })
}

/// The server side of [`push_runs`]: verifies one stream's run and writes it into `dst`
/// (a file of `size` bytes), then acknowledges it.
pub async fn serve_run(send: SendStream, recv: RecvStream, dst: PathBuf, size: u64) {
    serve_run_over(send, recv, dst, size, None).await
}

/// [`serve_run`] with an old version of the file at `old`, where chunks sent as
/// `CODEC_SAME` are read from.
pub async fn serve_run_over(
    mut send: SendStream,
    mut recv: RecvStream,
    dst: PathBuf,
    size: u64,
    old: Option<PathBuf>,
) {
    let mut header = [0u8; 9];
    assert!(recv.read_exact(&mut header).await.expect("header"));
    let first = u32::from_le_bytes(header[..4].try_into().unwrap());
    let count = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let run = bench_run(size, first, count, header[8]);
    let file = File::open_write(&dst, 0o600)
        .await
        .expect("destination opens");
    let old = match old {
        Some(p) => Some(File::open(&p).await.expect("old version opens")),
        None => None,
    };
    // As a receiver does: a direct-I/O handle beside the ordinary one, where the
    // filesystem takes one.
    #[cfg(target_os = "linux")]
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dst)
        .ok()
        .map(DirectFile::from_std);
    #[cfg(not(target_os = "linux"))]
    let direct: Option<DirectFile> = None;
    let mut log = RunLog::default();
    receive_run(
        &mut recv,
        &file,
        direct.as_ref(),
        "bench",
        &run,
        old.as_ref(),
        &mut log,
    )
    .await
    .expect("run verified and written");
    let _ = file.close().await;
    if let Some(old) = old {
        let _ = old.close().await;
    }
    let _ = send.write_all(b"k").await;
    let _ = send.finish();
}
