//! `tpc-xfer copy` with a `tpc://` side: push (local → server) and pull (server → local).
//!
//! Shard 0 dials the server, authenticates it, and runs the session's control stream: the
//! manifest, the receiver's answer, commits, and the end. Every shard then opens its own
//! connection to one server shard (client shard i → server shard i mod M, on that shard's
//! port) and moves the chunk runs assigned to it — range r of a file goes to shard
//! `range_shard(owner(path), r)`, as in a local copy, in runs of `STREAM_RUN_CHUNKS` —
//! with many streams in flight. A shard whose queue runs dry asks a peer, over the channel
//! mesh, for one of its queued runs (`Msg::Idle`, `Msg::Give`), so that a shard that runs
//! slower than the others does not hold up the end. Run results travel back to shard 0
//! over the mesh; shard 0 commits a file once all its runs are verified and written.

use std::cell::RefCell;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tpc_core::codec::{Compression, CODECS_SAME, CODECS_ZSTD};
use tpc_core::filter::Action;
use tpc_core::place;
use tpc_core::relpath::RelPath;
use tpc_core::schedule::{
    claim_budget, QueuedRun, RunItem, RunQueue, TakeOver, STREAM_RUN_BYTES_MAX, STREAM_RUN_CHUNKS,
};
use tpc_core::session::client::{check_run_answer, refusal, run_header, ClientSession, Request};
use tpc_core::session::{Ended, RunFailed};
use tpc_core::window::{streams_in_flight, STREAMS_IN_FLIGHT_MIN};
use tpc_core::wire::{
    DeleteRequest, DestKind, Entry, ErrorCode, Frame, NeedItem, Op, Run, Selection, WireKind,
    DELETE_BASES_MAX, FRAME_BYTES_MAX, STREAM_CHUNKS_MAX,
};
use tpc_core::EntryKind;
use tpc_core::{ChunkHash, ChunkPlan};
use tpc_engine::confine::{Access, Root};
use tpc_engine::mesh::{MeshPeer, Receivers, Senders};
use tpc_engine::pace::Pacer;
use tpc_engine::quic::{bind_socket, udp_payload_max_towards, Endpoint};
use tpc_engine::rt::{self, File};
use tpc_engine::tcp;
use tpc_engine::transport::{Connection, Error as TransportError, Kind, SendStream, Why};
use tpc_engine::{Driver, Durability, Listed, SourceChanged};

use super::data::{open_direct, receive_run, send_run, DataError, Progress, RunLog, Savings};
use tpc_engine::temp::RunLock;

use super::receiver::{full_path, joined, off_thread, temp_path, Failure, Receiver, Span};
use super::{
    congestion::Congestion, expect_answer, expect_end, read_frame, transport_config,
    unless_stalled, write_frame, RemoteSpec, SessionError, TransportChoice, AUTO_QUIC_WAIT,
    CLOSE_DONE, CONNECT_TIMEOUT,
};
use crate::auth::{self, Identity, KnownServers, ServerTrust};
use crate::copy::{beneath, hold_tree, landing_base, local_dest, local_target};
use crate::exit::{fail, Exit, Problems};
use crate::progress::{self, FileDone, FileLog, Reporter, Sample, Show};
use crate::summary::{Done, LatencySummary, Network, PathSummary, Summary};
use crate::walk::{self, quote, quote_bytes};

pub struct RemoteOptions {
    pub shard_count: usize,
    pub durability: Durability,
    pub quiet: bool,
    /// What is shown while the transfer runs (`--progress`, `--stats-every`,
    /// `--json-log`).
    pub show: Show,
    pub state_dir: PathBuf,
    pub accept_new: bool,
    /// Congestion controller of this end's sending direction (the data of a push).
    pub congestion: Congestion,
    /// The driver the shards run on (`--io`).
    pub driver: Driver,
    /// Which chunks this end compresses when it sends (a push); `Never` also asks the
    /// server not to compress what it sends (a pull).
    pub compression: Compression,
    /// `--transport`.
    pub transport: TransportChoice,
    /// `--timeout`: how long the session may make no progress; `None` for ever.
    pub timeout: Option<std::time::Duration>,
    /// A push's `--delete`, with its `--max-delete` limit.
    pub delete: Option<Option<u64>>,
    /// `--bwlimit`, bytes a second: paced here for a push, asked of the server for a
    /// pull.
    pub bwlimit: Option<u64>,
    /// What of the sources a push takes (`--exclude`, `--include`, `--max-size`, ...).
    pub filter: Arc<tpc_core::filter::Filter>,
}

/// setuid and setgid are never sent as such: ownership is not transferred.
const SETID_BITS: u32 = 0o6000;

impl LatencySummary {
    fn of(h: &Histogram<u64>, push: bool) -> Self {
        Self {
            measures: if push {
                "from a chunk read off disk until the server confirmed its range verified and written"
            } else {
                "from the request for a range until the chunk was verified and written here"
            },
            chunks: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl PathSummary {
    fn of(conn: &Connection) -> Self {
        // Over TCP the path is the kernel's: nothing of it is counted here.
        let stats = conn.quic().and_then(|q| q.stats());
        stats.map_or_else(Self::default, |s| Self {
            rtt_us: s.path.rtt.as_micros() as u64,
            congestion_window_bytes: s.path.cwnd,
            flow_window_bytes: conn.flow_window(),
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            congestion_events: s.path.congestion_events,
        })
    }
}

/// One file to move, as the data shards see it.
struct WorkFile {
    /// Path beneath the server root.
    remote: Vec<u8>,
    size: u64,
    /// Push: the local source. Pull: where the file lands beneath `Job::local_root`.
    local_src: Option<PushSource>,
    landing: Option<Landing>,
    /// Push: the server's hashes of its old version of the file, from chunk `have_first`
    /// on: chunks that match are not sent (`CODEC_SAME`).
    have_first: u32,
    have: Vec<ChunkHash>,
}

const _: () = assert!(STREAM_RUN_CHUNKS >= 1 && STREAM_RUN_CHUNKS <= STREAM_CHUNKS_MAX);

impl WorkFile {
    /// Its path as the per-file log names it (beneath the server's root for a push;
    /// the local path, beneath `local`, for a pull), and its size.
    fn shown(&self, local: Option<&Path>) -> (String, u64) {
        let path = match (&self.landing, local) {
            (Some(l), Some(root)) => root.join(walk::os(l.full.as_bytes())).display().to_string(),
            _ => String::from_utf8_lossy(&self.remote).into_owned(),
        };
        (path, self.size)
    }
}

/// Where a pulled file lands, beneath the pull's local root.
struct Landing {
    /// Its path, as failures name it.
    full: RelPath,
    /// The temporary file its runs write.
    tmp: RelPath,
}

/// A file a push reads: beneath one of its held source roots (`Work::src_roots`), as
/// the local copy reads its sources, never by a path a symlink swapped in could redirect;
/// and checked against what the walk listed when opened and after it is read.
struct PushSource {
    root: usize,
    rel: RelPath,
    listed: Listed,
    /// Its path as the user named it, for messages.
    shown: PathBuf,
}

/// What shard 0 hands every shard once the receiver has answered.
struct Work {
    push: bool,
    session: u64,
    files: Vec<WorkFile>,
    /// Runs per shard, as first queued (shards then take runs over from each other).
    ranges: Vec<Vec<RunItem>>,
    local_root: Option<Arc<Root>>,
    /// A push's sources, held open (`PushSource`).
    src_roots: Vec<Arc<Root>>,
    compression: Compression,
    /// Chunks moved by every shard's streams, for the session's stall watchdog.
    progress: Progress,
    /// A push's `--bwlimit`, shared by every shard's streams.
    pace: Option<Arc<Pacer>>,
}

enum Msg {
    /// The server shards' ports and the transport shard 0 reached the server over, sent
    /// as soon as the server has welcomed the session, so that every shard's handshake
    /// overlaps the manifest exchange.
    Dial(Vec<u16>, Kind),
    Start(Arc<Work>),
    Result {
        file: u32,
        result: Result<u64, RunFailed>,
    },
    /// A shard could not connect to its server shard: the session cannot complete.
    Lost(Exit, String),
    /// The sender's run queue is empty and it has room for another stream: it asks for a
    /// run the receiver has queued and not started.
    Idle,
    /// The answer to `Idle`: a run taken off the back of the sender's queue (the receiver
    /// of this message now moves it), or none left.
    Give(Option<RunItem>),
    Stop,
}

#[derive(Default)]
struct ShardOut {
    bytes: u64,
    ranges: u64,
    saved: Savings,
    cpu: usize,
    udp_payload: u16,
    path: PathSummary,
    /// This shard's per-chunk latencies (see `move_range`).
    chunk_latency: Option<Histogram<u64>>,
    /// Only shard 0: the session's outcome.
    summary: Option<(Summary, Problems)>,
}

/// Everything a shard needs to start; shared by all shards.
struct Job {
    remote: RemoteSpec,
    server: SocketAddr,
    client_config: quinn_proto::ClientConfig,
    /// The same TLS settings and key checks, for TCP.
    tcp_config: Arc<rustls::ClientConfig>,
    /// What a pull asks the server to leave out, and what protects a pull's `--delete`.
    filter: Arc<tpc_core::filter::Filter>,
    /// A pull's `--delete`, carried out locally once every file is in place.
    delete: Option<Option<u64>>,
    transport: TransportChoice,
    trust: ServerTrust,
    state_dir: PathBuf,
    opts_durable: bool,
    quiet: bool,
    compression: Compression,
    plan: Mutex<Option<Plan>>,
    /// `--timeout`, and what the session's watchdog watches.
    timeout: Option<std::time::Duration>,
    progress: Progress,
    /// What the progress line counts against, once the plan is known.
    totals: Totals,
    /// Where finished files are logged (`--json-log`).
    file_log: Option<FileLog>,
    /// `--bwlimit`: a pull asks it of the server; a push paces its data streams on
    /// every shard by `pace`.
    bwlimit: Option<u64>,
    pace: Option<Arc<Pacer>>,
}

/// What a transfer moves in all, and the files done so far: set by shard 0's session,
/// read by the progress reporter.
#[derive(Default)]
struct Totals {
    bytes: AtomicU64,
    files: AtomicU64,
    files_done: AtomicU64,
    /// Set once the others are.
    known: AtomicBool,
}

enum Plan {
    /// `delete`: the push's `--delete`, its bases filled in once the manifest is built.
    Push {
        sources: Vec<Source>,
        delete: Option<DeleteRequest>,
    },
    Pull {
        dest: PathBuf,
    },
}

/// One local source of a push, walked.
struct Source {
    arg: OsString,
    path: PathBuf,
    entries: Vec<walk::Entry>,
    /// The source held open (`copy::hold_tree`), and where it is beneath that.
    root: Arc<Root>,
    base: RelPath,
}

pub fn push(sources: &[OsString], remote: RemoteSpec, opts: &RemoteOptions) -> Done {
    let mut problems = Problems::default();
    let mut walked = Vec::new();
    for s in sources {
        let path = PathBuf::from(s);
        let named = walk::bytes(s);
        let within = walk::Within {
            filter: &opts.filter,
            name: walk::transfer_name(&named),
            sized_out: None,
        };
        match walk::walk(&path, Some(within)) {
            Ok((entries, errors)) => {
                for e in errors {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {}", quote(&e.path), e.error),
                    );
                }
                if entries.is_empty() {
                    // Left out whole by the filter.
                    continue;
                }
                let is_dir = entries
                    .first()
                    .is_some_and(|e| e.meta.kind == EntryKind::Dir);
                match hold_tree(&path, is_dir) {
                    Ok((root, base)) => walked.push(Source {
                        arg: s.clone(),
                        path,
                        entries,
                        root: Arc::new(root),
                        base,
                    }),
                    Err(e) => problems.report(Exit::Source, e),
                }
            }
            Err(e) => problems.report(Exit::Source, format!("source {}: {e}", quote(&path))),
        }
    }
    if walked.is_empty() {
        return problems.exit().into();
    }
    // rsync's --delete-after: never when a source could not be read in full.
    let delete = match opts.delete {
        Some(_) if problems.exit() != Exit::Ok => {
            eprintln!("tpc-xfer: not deleting anything at the destination: the run had errors");
            None
        }
        Some(max) => Some(DeleteRequest {
            max: max.unwrap_or(u64::MAX),
            bases: Vec::new(),
            rules: opts
                .filter
                .rules()
                .map(|(action, pattern)| (action == Action::Include, pattern.to_owned()))
                .collect(),
        }),
        None => None,
    };
    let done = run(
        remote,
        opts,
        Plan::Push {
            sources: walked,
            delete,
        },
    );
    problems.record(done.exit);
    Done {
        exit: problems.exit(),
        summary: done.summary,
    }
}

pub fn pull(remote: RemoteSpec, dest: &Path, opts: &RemoteOptions) -> Done {
    run(
        remote,
        opts,
        Plan::Pull {
            dest: dest.to_path_buf(),
        },
    )
}

fn run(remote: RemoteSpec, opts: &RemoteOptions, plan: Plan) -> Done {
    let started = Instant::now();
    let server = match remote.resolve() {
        Ok(a) => a,
        Err(e) => return fail(Exit::Network, e).into(),
    };
    let setup = (|| {
        let identity = Identity::load_or_create(&opts.state_dir)?;
        let known = KnownServers::load(&opts.state_dir)?;
        let trust = ServerTrust::new(&known, &remote.authority, opts.accept_new)?;
        let mut config = auth::quic_client_config(&identity, trust.clone())?;
        config.transport_config(transport_config(
            udp_payload_max_towards(server).unwrap_or(1452),
            opts.congestion,
        ));
        let tcp_config = auth::client_crypto(&identity, trust.clone())?;
        Ok::<_, auth::AuthError>((config, tcp_config, trust))
    })();
    let (client_config, tcp_config, trust) = match setup {
        Ok(x) => x,
        Err(e) => return fail(Exit::Auth, e).into(),
    };
    let push = matches!(plan, Plan::Push { .. });
    let (file_log, finished) = progress::file_log(opts.show);
    let job = Arc::new(Job {
        remote,
        server,
        client_config,
        tcp_config,
        filter: opts.filter.clone(),
        delete: opts.delete,
        transport: opts.transport,
        trust,
        state_dir: opts.state_dir.clone(),
        opts_durable: opts.durability == Durability::Batch,
        quiet: opts.quiet,
        compression: opts.compression,
        plan: Mutex::new(Some(plan)),
        timeout: opts.timeout,
        progress: Progress::default(),
        totals: Totals::default(),
        file_log,
        bwlimit: opts.bwlimit,
        pace: opts
            .bwlimit
            .filter(|_| push)
            .map(|rate| Arc::new(Pacer::new(rate))),
    });
    let reporter = Reporter::start(
        opts.show,
        if push { "push" } else { "pull" },
        {
            let job = job.clone();
            move || Sample {
                bytes: job.progress.bytes(),
                files: job.totals.files_done.load(Ordering::Relaxed),
                total_bytes: job.totals.bytes.load(Ordering::Relaxed),
                total_files: job.totals.files.load(Ordering::Relaxed),
                totals_known: job.totals.known.load(Ordering::Relaxed),
            }
        },
        finished,
    );
    let shard_count = opts.shard_count;
    let outs =
        match tpc_engine::run_shards::<Msg, ShardOut, _, _>(opts.driver, shard_count, 1024, {
            let job = job.clone();
            move |ctx| shard_main(ctx.shard, ctx.cpu, shard_count, ctx.mesh, job.clone())
        }) {
            Ok(o) => o,
            Err(e) => {
                reporter.finish();
                return fail(Exit::Engine, e).into();
            }
        };
    reporter.finish();
    let mut outs = outs;
    let Some((mut summary, problems)) = outs[0].summary.take() else {
        return Exit::Engine.into();
    };
    summary.shards = shard_count;
    summary.io = opts.driver.name();
    summary.bytes_per_shard = outs.iter().map(|o| o.bytes).collect();
    summary.ranges_per_shard = outs.iter().map(|o| o.ranges).collect();
    summary.shard_cpus = outs.iter().map(|o| vec![o.cpu]).collect();
    let mut saved = Savings::default();
    for o in &outs {
        saved.add(o.saved);
    }
    let mut latency = latency_histogram();
    for h in outs.iter().filter_map(|o| o.chunk_latency.as_ref()) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = latency.add(h);
    }
    let network = summary.network.get_or_insert_with(Network::default);
    network.compressed_chunks = saved.compressed_chunks;
    network.bytes_saved_by_compression = saved.compressed_saved_bytes;
    network.chunks_reused = saved.reused_chunks;
    network.bytes_reused = saved.reused_bytes;
    network.udp_payload_per_shard = outs.iter().map(|o| o.udp_payload).collect();
    network.path_per_shard = outs.iter().map(|o| o.path.clone()).collect();
    network.chunk_latency_us = LatencySummary::of(&latency, summary.direction == "push");
    summary.seconds = started.elapsed().as_secs_f64();
    summary.throughput_bytes_per_sec = summary.bytes as f64 / summary.seconds.max(1e-9);
    Done {
        exit: problems.exit(),
        summary: Some(summary),
    }
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    }
}

async fn shard_main(
    shard: usize,
    cpu: usize,
    shard_count: usize,
    mesh: MeshPeer<Msg>,
    job: Arc<Job>,
) -> ShardOut {
    let mut out = ShardOut {
        cpu,
        ..Default::default()
    };
    let MeshPeer {
        senders,
        mut receivers,
    } = mesh;
    let endpoint =
        match bind_socket(unspecified_for(job.server)).and_then(|s| Endpoint::new(s, None)) {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("tpc-xfer: cannot open a UDP socket: {e}");
                if shard == 0 {
                    let mut p = Problems::default();
                    p.record(Exit::Engine);
                    out.summary = Some((Summary::default(), p));
                    for peer in 1..shard_count {
                        let _ = senders.send_to(peer, Msg::Stop).await;
                    }
                } else {
                    // Its runs cannot move: shard 0 must not wait for them.
                    let why = format!("shard {shard} cannot open a UDP socket: {e}");
                    let _ = senders.send_to(0, Msg::Lost(Exit::Engine, why)).await;
                }
                return out;
            }
        };
    if shard == 0 {
        coordinator(
            &job,
            &endpoint,
            &senders,
            &mut receivers,
            shard_count,
            &mut out,
        )
        .await;
    } else {
        worker_shard(shard, &job, &endpoint, &senders, &mut receivers, &mut out).await;
    }
    endpoint.shutdown();
    out
}

/// A shard other than 0: dial its server shard when told where, wait for the work, move
/// its ranges.
async fn worker_shard(
    shard: usize,
    job: &Job,
    endpoint: &Endpoint,
    senders: &Senders<Msg>,
    receivers: &mut Receivers<Msg>,
    out: &mut ShardOut,
) {
    let (ports, kind) = match receivers.recv_from(0).await {
        Some(Msg::Dial(p, kind)) => (p, kind),
        _ => return,
    };
    let mut addr = job.server;
    addr.set_port(ports[shard % ports.len()]);
    let conn = match dial(job, endpoint, kind, addr, CONNECT_TIMEOUT).await {
        Some(Ok(c)) => c,
        failed => {
            // Its ranges cannot move: the whole session fails, for the reason this
            // connect failed (a key that changed, a port that does not answer).
            let (exit, message) = match failed {
                Some(Err(e)) => {
                    let (exit, why) = connect_failure(job, &e);
                    (exit, format!("shard {shard} ({addr}): {why}"))
                }
                _ => (
                    Exit::Network,
                    format!(
                        "server shard at {addr} did not answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ),
            };
            let _ = senders.send_to(0, Msg::Lost(exit, message)).await;
            let _ = receivers.recv_from(0).await;
            endpoint.wait_idle().await;
            return;
        }
    };
    let work = match receivers.recv_from(0).await {
        Some(Msg::Start(w)) => w,
        // The session ended before any work was handed out.
        _ => return close(&conn, endpoint).await,
    };
    let conn = Some(conn);
    // From here on the peers' messages are relayed by kind: asks to `answer_asks`, gifts
    // to `run_ranges`, and shard 0's Stop (or its end) to the wait for the end below.
    let (queue, answerer, take_over, route) = take_over_for(shard, &work, senders);
    let (stop_tx, stop_rx) = async_channel::unbounded::<()>();
    let mut relays = vec![answerer];
    for (peer, stream) in receivers.streams() {
        let (route, stop_tx) = (route.clone(), stop_tx.clone());
        relays.push(rt::spawn_local(async move {
            while let Ok(msg) = stream.recv().await {
                if let Some(Msg::Stop) = route.route(peer, msg).await {
                    if peer == 0 {
                        break;
                    }
                }
            }
            if peer == 0 {
                let _ = stop_tx.send(()).await;
            }
        }));
    }
    let (tx, rx) = async_channel::unbounded::<(u32, Result<u64, RunFailed>)>();
    let forward = async {
        while let Ok((file, result)) = rx.recv().await {
            if senders
                .send_to(0, Msg::Result { file, result })
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let latency = Rc::new(RefCell::new(latency_histogram()));
    let moved: Moved = Rc::default();
    let run = run_ranges(
        conn.clone(),
        work.clone(),
        queue,
        moved.clone(),
        tx,
        latency.clone(),
        take_over,
    );
    let finished = async {
        futures_lite::future::zip(run, forward).await;
        Some(())
    };
    // Shard 0 says Stop when the session is over, which may be before our runs are (it
    // failed, and the server may never answer them): then they are abandoned.
    let stopped = async {
        let _ = stop_rx.recv().await;
        None
    };
    if futures_lite::future::or(finished, stopped).await.is_some() {
        out.chunk_latency = Some(latency.borrow().clone());
        // Wait for shard 0 to finish the session before closing our connection, answering
        // the peers' asks meanwhile.
        let _ = stop_rx.recv().await;
    }
    let m = *moved.borrow();
    (out.bytes, out.ranges, out.saved) = m;
    for r in relays {
        r.cancel().await;
    }
    if let Some(c) = &conn {
        out.udp_payload = c.quic().map_or(0, |q| q.current_mtu());
        out.path = PathSummary::of(c);
        close(c, endpoint).await;
    }
}

/// Closes the session's connection; once the close is on the wire there is nothing
/// to wait for.
async fn close(conn: &Connection, endpoint: &Endpoint) {
    conn.close(CLOSE_DONE, b"done");
    match conn {
        Connection::Quic(_) => endpoint.wait_closed().await,
        Connection::Tcp(c) => c.wait_closed().await,
    }
}

/// Dials the server shard at `addr` over `kind`: `None` if no handshake completed
/// within `wait`.
async fn dial(
    job: &Job,
    endpoint: &Endpoint,
    kind: Kind,
    addr: SocketAddr,
    wait: Duration,
) -> Option<Result<Connection, TransportError>> {
    match kind {
        Kind::Quic => rt::within(
            wait,
            endpoint.connect(job.client_config.clone(), addr, auth::SERVER_NAME),
        )
        .await
        .map(|r| r.map(Connection::Quic).map_err(TransportError::from)),
        Kind::Tcp => rt::within(
            wait,
            tcp::Connection::connect(addr, job.tcp_config.clone(), auth::SERVER_NAME, wait),
        )
        .await
        .map(|r| r.map(Connection::Tcp)),
    }
}

/// Shard 0's connection, over the transport `--transport` asks for. `auto` tries QUIC
/// for `AUTO_QUIC_WAIT`, then TCP, saying so on stderr; a key refused either way is
/// not retried (it would be refused the same over TCP).
async fn dial_first(job: &Job, endpoint: &Endpoint) -> Option<Result<Connection, TransportError>> {
    let kind = match job.transport {
        TransportChoice::Quic => Kind::Quic,
        TransportChoice::Tcp => Kind::Tcp,
        TransportChoice::Auto => {
            let tried = dial(job, endpoint, Kind::Quic, job.server, AUTO_QUIC_WAIT).await;
            match &tried {
                Some(Ok(_)) => return tried,
                Some(Err(e)) if job.trust.failure().is_some() || refused(job, e).is_some() => {
                    return tried
                }
                _ => {}
            }
            // Said even with -q, as warnings are: the path is not what the user expects.
            let why = match tried {
                Some(Err(e)) => e.to_string(),
                _ => format!("no answer within {:.1} s", AUTO_QUIC_WAIT.as_secs_f64()),
            };
            eprintln!(
                "tpc-xfer: no QUIC connection to {} ({why}); UDP may be blocked: using TCP",
                job.remote.authority
            );
            Kind::Tcp
        }
    };
    dial(job, endpoint, kind, job.server, CONNECT_TIMEOUT).await
}

/// This shard's queue of runs not yet started, and the bytes its streams have claimed
/// (`schedule::RunQueue`). Its own stream workers take from the front; a peer that asks
/// (`Msg::Idle`) is given one from the back.
type SharedQueue = Rc<RefCell<RunQueue>>;

/// What a shard's streams moved: bytes, runs, and what compression and the receiver's old
/// copies saved. Shared with the caller, so that it holds what moved even if the session
/// stopped the shard before `run_ranges` returned.
type Moved = Rc<RefCell<(u64, u64, Savings)>>;

/// The bytes of the runs the streams on `conn` may claim at once.
fn budget_of(conn: Option<&Connection>) -> u64 {
    claim_budget(conn.map(|c| c.flow_window()))
}

/// `run` with its bytes, as a queue holds it. Checked when the run was planned
/// (check_need): a file of the manifest, a run inside it. A run outside its file would
/// count 0 bytes here; move_range fails it.
fn queued(work: &Work, run: RunItem) -> QueuedRun {
    let bytes = work
        .files
        .get(run.file as usize)
        .and_then(|f| ChunkPlan::new(f.size).ok()?.run(run.first, run.count))
        .map_or(0, |(_, n)| n);
    QueuedRun { run, bytes }
}

/// How a shard asks its peers for runs (see `Msg::Idle`).
struct Asking {
    shard: usize,
    senders: Senders<Msg>,
    /// The answers (`Msg::Give`) to this shard's asks, relayed from the mesh.
    gifts: async_channel::Receiver<Option<RunItem>>,
}

/// Where a shard's mesh relays pass on the peers' take-over messages.
struct TakeOverRoute {
    asks: async_channel::Sender<usize>,
    gifts: async_channel::Sender<Option<RunItem>>,
}

impl TakeOverRoute {
    /// Passes on `msg` from `peer` if it is about take-over (`Idle`, `Give`); returns
    /// any other message.
    async fn route(&self, peer: usize, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::Idle => {
                let _ = self.asks.send(peer).await;
                None
            }
            Msg::Give(run) => {
                let _ = self.gifts.send(run).await;
                None
            }
            other => Some(other),
        }
    }
}

/// Take-over for `shard` of `work`: its queue of runs, the task that answers the peers'
/// asks (`answer_asks`), what `run_ranges` needs to ask, and what the shard's mesh relays
/// pass take-over messages to.
fn take_over_for(
    shard: usize,
    work: &Work,
    senders: &Senders<Msg>,
) -> (SharedQueue, rt::Task<()>, Asking, Rc<TakeOverRoute>) {
    let (ask_tx, ask_rx) = async_channel::unbounded::<usize>();
    let (gift_tx, gift_rx) = async_channel::unbounded::<Option<RunItem>>();
    let runs = work.ranges.get(shard).cloned().unwrap_or_default();
    let queue = Rc::new(RefCell::new(RunQueue::new(
        runs.into_iter().map(|run| queued(work, run)),
    )));
    let answerer = rt::spawn_local(answer_asks(queue.clone(), senders.clone(), ask_rx));
    let take_over = Asking {
        shard,
        senders: senders.clone(),
        gifts: gift_rx,
    };
    let route = TakeOverRoute {
        asks: ask_tx,
        gifts: gift_tx,
    };
    (queue, answerer, take_over, Rc::new(route))
}

/// Answers the peers' asks (`Msg::Idle`, relayed as the asking peer's index) with the run
/// at the back of `queue`, or none. Runs as long as the shard is in the session, also
/// after its own runs are done, so that no ask goes unanswered.
async fn answer_asks(
    queue: SharedQueue,
    senders: Senders<Msg>,
    asks: async_channel::Receiver<usize>,
) {
    while let Ok(peer) = asks.recv().await {
        let given = queue.borrow_mut().give();
        if senders
            .send_to(peer, Msg::Give(given.map(|q| q.run)))
            .await
            .is_err()
        {
            // That peer has stopped (the session is ending): the run stays ours.
            if let Some(q) = given {
                queue.borrow_mut().receive(q);
            }
        }
    }
}

/// Moves the runs of `queue`, one stream each, sending each run's result to `results`.
/// Keeps as many streams in flight as the connection's tuned flow window asks for
/// (`window::streams_in_flight`, at least `STREAMS_IN_FLIGHT_MIN`), adding more as the
/// window grows, as long as their runs fit in the claim budget. When the queue is empty,
/// a stream is free and the budget has room for a whole run, asks the peers one at a
/// time for one of their queued runs, until each has said it has none left
/// (`schedule::TakeOver` decides whom). Adds what moved to `moved`.
#[allow(clippy::too_many_arguments)]
async fn run_ranges(
    conn: Option<Connection>,
    work: Arc<Work>,
    queue: SharedQueue,
    moved: Moved,
    results: async_channel::Sender<(u32, Result<u64, RunFailed>)>,
    latency: Rc<RefCell<Histogram<u64>>>,
    asking: Asking,
) {
    let results = Rc::new(results);
    let shard_count = work.ranges.len();
    // Each worker says when it finished a run: the moment to look at the window (and the
    // queue) again. A run can take many round trips, so the window is also looked at
    // every `WINDOW_RECHECK` while the runs move.
    let (finished_tx, finished_rx) = async_channel::unbounded::<()>();
    let live = Rc::new(std::cell::Cell::new(0usize));
    let failed = Rc::new(std::cell::Cell::new(false));
    let mut tasks = Vec::new();
    let mut take_over = TakeOver::new(asking.shard, shard_count);
    if conn.is_none() {
        take_over.stop();
    }
    loop {
        let wanted = conn.as_ref().map_or(STREAMS_IN_FLIGHT_MIN, |c| {
            streams_in_flight(c.flow_window())
        });
        let budget = budget_of(conn.as_ref());
        while live.get() < wanted {
            // Taken here, so that the queue shows at once what is left for the peers.
            let Some(first) = queue.borrow_mut().claim(budget) else {
                break;
            };
            live.set(live.get() + 1);
            tasks.push(rt::spawn_local(range_worker(
                first,
                queue.clone(),
                moved.clone(),
                results.clone(),
                conn.clone(),
                work.clone(),
                latency.clone(),
                finished_tx.clone(),
                live.clone(),
                failed.clone(),
            )));
        }
        if results.is_closed() {
            break;
        }
        // A shard whose runs fail (its connection was lost, say) takes no more over: it
        // would fail those too, and the session fails anyway.
        if failed.get() || conn.as_ref().is_some_and(|c| c.is_lost()) {
            take_over.stop();
        }
        // Room for the largest run a peer may give, so that it starts at once.
        let ready = {
            let q = queue.borrow();
            q.is_empty() && live.get() < wanted && q.fits(STREAM_RUN_BYTES_MAX, budget)
        };
        if let Some(peer) = take_over.ask(ready) {
            if asking.senders.send_to(peer, Msg::Idle).await.is_err() {
                take_over.unreachable();
                continue;
            }
        }
        if queue.borrow().is_empty() && live.get() == 0 && !take_over.waiting() {
            break;
        }
        let gift = async {
            if take_over.waiting() {
                Some(asking.gifts.recv().await.ok().flatten())
            } else {
                std::future::pending().await
            }
        };
        let tick = async {
            futures_lite::future::or(
                async {
                    // Never an error: this function holds a sender.
                    let _ = finished_rx.recv().await;
                },
                rt::sleep(WINDOW_RECHECK),
            )
            .await;
            None
        };
        if let Some(given) = futures_lite::future::or(gift, tick).await {
            if let Some(run) = take_over.answered(given) {
                queue.borrow_mut().receive(queued(&work, run));
            }
        }
    }
    drop(finished_tx);
    for t in tasks {
        t.await;
    }
}

/// How often `run_ranges` looks at the connection's flow window while its ranges run.
const WINDOW_RECHECK: Duration = Duration::from_millis(50);

/// One stream's worth of `run_ranges`: moves `first`, then takes runs off the shard's
/// queue (`RunQueue::claim`) until it is empty or its next run does not fit in the
/// budget.
#[allow(clippy::too_many_arguments)]
async fn range_worker(
    first: QueuedRun,
    queue: SharedQueue,
    moved: Moved,
    results: Rc<async_channel::Sender<(u32, Result<u64, RunFailed>)>>,
    conn: Option<Connection>,
    work: Arc<Work>,
    latency: Rc<RefCell<Histogram<u64>>>,
    finished: async_channel::Sender<()>,
    live: Rc<std::cell::Cell<usize>>,
    failed: Rc<std::cell::Cell<bool>>,
) {
    let mut next = Some(first);
    while let Some(QueuedRun { run: item, bytes }) = next {
        let result = match &conn {
            Some(c) => move_range(c, &work, item, &latency).await,
            None => Err(there(
                work.push,
                Failure::new(ErrorCode::Io, "no connection to the server"),
            )),
        };
        match &result {
            Ok((n, saved)) => {
                let mut t = moved.borrow_mut();
                t.0 += n;
                t.1 += 1;
                t.2.add(*saved);
            }
            Err(_) => failed.set(true),
        }
        queue.borrow_mut().finish(bytes);
        let result = result.map(|(n, _)| n);
        if results.send((item.file, result)).await.is_err() {
            break;
        }
        // Unbounded, and the receiver lives as long as run_ranges: this cannot fail.
        let _ = finished.try_send(());
        next = queue.borrow_mut().claim(budget_of(conn.as_ref()));
    }
    live.set(live.get() - 1);
    // Also on the way out, so a coordinator waiting for a range sees the results closed,
    // and run_ranges sees a free stream.
    let _ = finished.try_send(());
}

/// A run's failure, at this end (`DataError::Local`: reading the source of a push,
/// writing the destination of a pull) or at the server's.
fn data_failure(push: bool, e: DataError, what: &str) -> RunFailed {
    match e {
        DataError::Local(f) => here(push, f),
        // The server failed part way through a run it was sending (see server::get).
        DataError::Session(SessionError::Transport(TransportError::Reset(code))) => there(
            push,
            match u16::try_from(code).ok().and_then(ErrorCode::from_u16) {
                Some(ErrorCode::Changed) => Failure::new(
                    ErrorCode::Changed,
                    format!("{what}: changed on the server while it was read"),
                ),
                Some(code) => Failure::new(
                    code,
                    format!("{what}: the server failed while sending it: {code:?}"),
                ),
                None => Failure::new(
                    ErrorCode::Io,
                    format!("{what}: the server abandoned its data stream"),
                ),
            },
        ),
        DataError::Session(e) => there(push, Failure::new(ErrorCode::Io, e.to_string())),
    }
}

/// A run's failure at this end: the source of a push, the destination of a pull.
fn here(push: bool, failure: Failure) -> RunFailed {
    RunFailed {
        failure,
        at_destination: !push,
    }
}

/// A run's failure at the server's end, or between the two.
fn there(push: bool, failure: Failure) -> RunFailed {
    RunFailed {
        failure,
        at_destination: push,
    }
}

/// Per-chunk latency in µs, up to an hour, to three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records each (start, end) span in µs (at least 1, clamped into the histogram's range).
fn record_latencies(
    h: &RefCell<Histogram<u64>>,
    spans: impl IntoIterator<Item = (Instant, Instant)>,
) {
    let mut h = h.borrow_mut();
    for (start, end) in spans {
        let us = end.saturating_duration_since(start).as_micros() as u64;
        h.saturating_record(us.max(1));
    }
}

/// Moves one range over its own stream. Per-chunk latency goes to `latency`: for a push,
/// from the chunk read off disk until the server's RangeOk (its range verified and
/// written there); for a pull, from the Get sent until the chunk is verified and written
/// here.
async fn move_range(
    conn: &Connection,
    work: &Work,
    item: RunItem,
    latency: &RefCell<Histogram<u64>>,
) -> Result<(u64, Savings), RunFailed> {
    let f = &work.files[item.file as usize];
    let push = work.push;
    // The file as failures name it: this end's source, or where a pulled file lands.
    let shown = match (&f.local_src, &f.landing) {
        (Some(src), _) => quote(&src.shown),
        (None, Some(landing)) => landing.full.to_string(),
        (None, None) => quote_bytes(&f.remote),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| there(push, Failure::new(ErrorCode::Io, e.to_string())))?;
    let io = |e: SessionError| data_failure(push, DataError::Session(e), &shown);
    // Push: the server's hashes of this range's chunks in its old version, if it has one.
    let have: &[ChunkHash] = item
        .first
        .checked_sub(f.have_first)
        .and_then(|skip| f.have.get(skip as usize..))
        .map_or(&[], |h| &h[..h.len().min(item.count as usize)]);
    let run = Run {
        session: work.session,
        file: item.file,
        path: f.remote.clone(),
        size: f.size,
        chunk_first: item.first,
        chunk_count: item.count,
        // Push: what this end may send. Pull: what it takes from the server.
        codecs: match work.compression {
            Compression::Never => 0,
            Compression::Auto | Compression::Always => CODECS_ZSTD,
        } | if have.is_empty() { 0 } else { CODECS_SAME },
    };
    let header = run_header(work.push, run.clone());
    write_frame(&mut send, &header).await.map_err(io)?;
    if work.push {
        let Some(src) = f.local_src.as_ref() else {
            return Err(here(
                push,
                Failure::new(
                    ErrorCode::PathRefused,
                    format!("cannot read file {}: its path is too long", item.file),
                ),
            ));
        };
        let what = quote(&src.shown);
        let opened = work.src_roots[src.root]
            .open(&src.rel, Access::Read)
            .map_err(|e| {
                let code = e.errno().map_or(ErrorCode::Io, ErrorCode::for_errno);
                here(push, Failure::new(code, format!("cannot open {what}: {e}")))
            })?;
        let changed = |e: SourceChanged| {
            here(
                push,
                Failure::new(ErrorCode::Changed, format!("{what}: {e}")),
            )
        };
        src.listed.check(&opened, f.size).map_err(changed)?;
        let file = File::from_std(opened);
        let mut log = RunLog::watched_by(&work.progress).paced(work.pace.clone());
        let sent = send_run(
            &file,
            &what,
            &run,
            have,
            work.compression,
            &mut send,
            &mut log,
        )
        .await;
        // End the stream before anything else can yield: the server stops reading once
        // the run is complete, and a finish after that would be refused.
        let finished = sent.is_ok().then(|| send.finish());
        // Read from one version of the file only: otherwise the run fails, and with it
        // the file, which the server then never commits.
        let unchanged = file.with_std(|f_| src.listed.check(f_, f.size));
        let _ = file.close().await;
        unchanged.map_err(changed)?;
        let n = match sent {
            // The server refused the run part way and stopped reading: its answer says why.
            Err(DataError::Session(SessionError::Transport(TransportError::Stopped(_)))) => {
                return Err(match expect_answer(&mut recv).await {
                    Err(e) => io(e),
                    Ok(f) => there(push, refusal(f)),
                });
            }
            other => other.map_err(|e| data_failure(push, e, &shown))?,
        };
        if let Some(Err(e)) = finished {
            return Err(io(e.into()));
        }
        let answer = expect_answer(&mut recv).await.map_err(io)?;
        check_run_answer(true, item.count, answer).map_err(|f| there(push, f))?;
        let ok = Instant::now();
        record_latencies(latency, log.times.iter().map(|&t| (t, ok)));
        expect_end(&mut recv).await.map_err(io)?;
        Ok((n, log.saved))
    } else {
        let asked = Instant::now();
        send.finish().map_err(|e| io(e.into()))?;
        let answer = expect_answer(&mut recv).await.map_err(io)?;
        check_run_answer(false, item.count, answer).map_err(|f| there(push, f))?;
        let root = work.local_root.as_ref().expect("pull has a local root");
        let landing = f.landing.as_ref().expect("pull has temporaries");
        let tmp = &landing.tmp;
        // Failures name the file where it lands, not its temporary.
        let what = &shown;
        let fd = root.open(tmp, Access::Write).map_err(|e| {
            let code = e.errno().map_or(ErrorCode::Io, ErrorCode::for_errno);
            here(push, Failure::new(code, format!("{what}: {e}")))
        })?;
        let direct = open_direct(root, tmp, run.size, &fd);
        let file = File::from_std(fd);
        let mut log = RunLog::watched_by(&work.progress);
        let got = receive_run(
            &mut recv,
            &file,
            direct.as_ref(),
            what,
            &run,
            None,
            &mut log,
        )
        .await;
        let _ = file.close().await;
        record_latencies(latency, log.times.iter().map(|&t| (asked, t)));
        got.map(|n| (n, log.saved))
            .map_err(|e| data_failure(push, e, &shown))
    }
}

/// How shard 0 reports a failure that ends the session.
fn fail_session(out: &mut ShardOut, exit: Exit, message: String, direction: &'static str) {
    let mut p = Problems::default();
    p.report(exit, message);
    out.summary = Some((
        Summary {
            direction,
            ..Default::default()
        },
        p,
    ));
}

fn exit_for(code: ErrorCode, push: bool) -> Exit {
    match code {
        ErrorCode::NoSpace => Exit::NoSpace,
        ErrorCode::NotWritable => Exit::Destination,
        ErrorCode::NotFound | ErrorCode::PathRefused if !push => Exit::Source,
        ErrorCode::NotFound | ErrorCode::PathRefused => Exit::Destination,
        ErrorCode::HashMismatch => Exit::Verify,
        ErrorCode::Protocol | ErrorCode::Version => Exit::Protocol,
        ErrorCode::Changed => Exit::Source,
        ErrorCode::Io | ErrorCode::Busy => {
            if push {
                Exit::Destination
            } else {
                Exit::Source
            }
        }
    }
}

/// Explains a failed connect: the server's key (unknown or changed), this client refused
/// by the server, or no server at all.
fn connect_failure(job: &Job, e: &TransportError) -> (Exit, String) {
    if let Some(auth) = job.trust.failure() {
        return (Exit::Auth, auth.to_string());
    }
    refused(job, e).unwrap_or_else(|| {
        (
            Exit::Network,
            format!("server {} unreachable: {e}", job.remote.authority),
        )
    })
}

/// The server refused this client's key, or speaks another protocol version. In TLS 1.3
/// the client's handshake completes before the server has checked the client's
/// certificate, so a refusal can arrive at connect or at the first stream.
fn refused(job: &Job, e: &TransportError) -> Option<(Exit, String)> {
    match e {
        TransportError::Lost(Why::Version) => Some((
            Exit::Protocol,
            format!(
                "server {} speaks another version of the tpc-xfer protocol than this client ({}): run the same release at both ends",
                job.remote.authority,
                String::from_utf8_lossy(auth::ALPN)
            ),
        )),
        TransportError::Lost(Why::Refused) => Some((
            Exit::Auth,
            format!(
                "server {} refused this client: add this host's key (tpc-xfer id --state {}) to the server's authorized-clients",
                job.remote.authority,
                job.state_dir.display()
            ),
        )),
        _ => None,
    }
}

/// Shard 0: authenticate, run the session's control stream, hand out work, commit.
async fn coordinator(
    job: &Job,
    endpoint: &Endpoint,
    senders: &Senders<Msg>,
    receivers: &mut Receivers<Msg>,
    shard_count: usize,
    out: &mut ShardOut,
) {
    let plan = job
        .plan
        .lock()
        .expect("not poisoned")
        .take()
        .expect("one coordinator");
    let push = matches!(plan, Plan::Push { .. });
    let direction = if push { "push" } else { "pull" };
    let stop_peers = || async {
        for peer in 1..shard_count {
            let _ = senders.send_to(peer, Msg::Stop).await;
        }
    };
    let conn = match dial_first(job, endpoint).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            let (exit, msg) = connect_failure(job, &e);
            fail_session(out, exit, msg, direction);
            stop_peers().await;
            return;
        }
        None => {
            fail_session(
                out,
                Exit::Network,
                format!(
                    "server {} unreachable: no answer within {} s",
                    job.remote.authority,
                    CONNECT_TIMEOUT.as_secs()
                ),
                direction,
            );
            stop_peers().await;
            return;
        }
    };
    if let Some(fp) = job.trust.accepted_new() {
        match KnownServers::record(&job.state_dir, &job.remote.authority, fp) {
            Ok(()) => {
                if !job.quiet {
                    eprintln!(
                        "tpc-xfer: trusting new server {} with key {fp} (recorded in known-servers)",
                        job.remote.authority
                    );
                }
            }
            Err(e) => eprintln!("tpc-xfer: {e}"),
        }
    }
    let result = session(job, &conn, plan, senders, receivers, shard_count, out).await;
    if let Err((exit, msg)) = result {
        let mut p = out.summary.take().map(|s| s.1).unwrap_or_default();
        p.report(exit, msg);
        let summary = Summary {
            direction,
            ..Default::default()
        };
        out.summary = Some((summary, p));
    }
    out.udp_payload = conn.quic().map_or(0, |q| q.current_mtu());
    out.path = PathSummary::of(&conn);
    if let Some((summary, _)) = out.summary.as_mut() {
        summary
            .network
            .get_or_insert_with(Network::default)
            .transport = conn.kind().name();
    }
    stop_peers().await;
    close(&conn, endpoint).await;
}

type SessionResult = Result<(), (Exit, String)>;

/// Events shard 0 waits for, at most this many queued: run results (its own and the
/// peers').
const EVENTS_MAX: usize = 1024;

/// The control frames the reader hands on, one at a time.
type Frames = async_channel::Receiver<Result<Frame, SessionError>>;

enum Ev {
    Range(u32, Result<u64, RunFailed>),
    Frame(Result<Frame, SessionError>),
    Lost(Exit, String),
}

/// Why the connection or its control stream failed, for the exit code and message.
fn lost(job: &Job, e: SessionError) -> (Exit, String) {
    match e {
        SessionError::Wire(w) => (Exit::Protocol, format!("server sent an invalid frame: {w}")),
        SessionError::Transport(q) if refused(job, &q).is_some() => {
            refused(job, &q).expect("just matched")
        }
        other => (
            Exit::Network,
            format!("connection to {} lost: {other}", job.remote.authority),
        ),
    }
}

/// The exit code and message of a session the state machine ended.
fn ended(e: Ended) -> (Exit, String) {
    (exit_for(e.code, e.at_destination), e.message)
}

/// The data shards' side of the transfer, once started: shard 0's own runs, the relays
/// of the peers' results, and what moved.
struct Transfer {
    own: rt::Task<()>,
    answerer: rt::Task<()>,
    relays: Vec<rt::Task<()>>,
    moved: Moved,
    latency: Rc<RefCell<Histogram<u64>>>,
}

/// Shard 0's driver of the session (`tpc_core::session::client`): carries out what the
/// state machine asks, on the local files and the other shards, and feeds back what
/// happened. It makes no protocol decision of its own.
struct SessionDriver<'a> {
    job: &'a Job,
    senders: &'a Senders<Msg>,
    shard_count: usize,
    plan: Option<Plan>,
    events: Rc<async_channel::Sender<Ev>>,
    files: Vec<WorkFile>,
    src_roots: Vec<Arc<Root>>,
    summary: Summary,
    problems: Problems,
    /// A pull's local receiver. Declared before the run lock, so that it is dropped
    /// (removing its temporaries) while the lock is still held.
    local_receiver: Option<Receiver>,
    /// A pull's run lock in its destination root (`tpc_engine::temp`).
    _run_lock: Option<RunLock>,
    local_root: Option<Arc<Root>>,
    transfer: Option<Transfer>,
    /// A push's `--delete`, for the session once its manifest is built.
    delete: Option<DeleteRequest>,
    /// A pull's source is a directory (what a pull's `--delete` needs).
    pulled_dir: bool,
    /// With `--json-log`: each manifest entry's path (the local one for a pull) and
    /// size, set when the transfer starts.
    names: Vec<(String, u64)>,
    /// A pull's local root, as the user named it.
    local_shown: Option<PathBuf>,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    job: &Job,
    conn: &Connection,
    plan: Plan,
    senders: &Senders<Msg>,
    receivers: &mut Receivers<Msg>,
    shard_count: usize,
    out: &mut ShardOut,
) -> SessionResult {
    let push = matches!(plan, Plan::Push { .. });
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(job, e.into()))?;
    let path = job.remote.path.clone();
    let op = if push {
        Op::Push {
            dest: path,
            durable: job.opts_durable,
        }
    } else {
        let rules = job.filter.rules();
        Op::Pull {
            src: path,
            select: Selection {
                rules: rules
                    .map(|(a, p)| (a == Action::Include, p.to_owned()))
                    .collect(),
                min_size: job.filter.min_size,
                max_size: job.filter.max_size,
            },
            rate: job.bwlimit,
        }
    };
    let (tx, rx) = async_channel::bounded::<Ev>(EVENTS_MAX);
    // Control frames come one at a time: the reader holds the next frame until the
    // session takes it (it reads only while it `wants_frame`), so a peer's frames wait in
    // the transport's flow-controlled buffers, not here.
    let (ftx, frames) = async_channel::bounded::<Result<Frame, SessionError>>(1);
    let control_reader = rt::spawn_local(async move {
        loop {
            let (f, end) = match read_frame(&mut recv).await {
                Ok(Some(f)) => (Ok(f), false),
                Ok(None) => (Err(SessionError::Ended), true),
                Err(e) => (Err(e), true),
            };
            if ftx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    let mut d = SessionDriver {
        job,
        senders,
        shard_count,
        plan: Some(plan),
        events: Rc::new(tx),
        files: Vec::new(),
        src_roots: Vec::new(),
        summary: Summary {
            direction: if push { "push" } else { "pull" },
            remote: Some(job.remote.authority.clone()),
            ..Default::default()
        },
        problems: Problems::default(),
        local_receiver: None,
        _run_lock: None,
        local_root: None,
        transfer: None,
        delete: None,
        pulled_dir: false,
        names: Vec::new(),
        local_shown: None,
    };
    let asked_delete = matches!(
        d.plan,
        Some(Plan::Push {
            delete: Some(_),
            ..
        })
    );
    let mut s = ClientSession::new(op, shard_count);
    let result = d
        .drive(&mut s, &mut send, (&rx, &frames), conn, receivers)
        .await;
    // Problems the machine still holds (one that came with the error that ended it).
    while let Some(p) = s.poll_problem() {
        d.problems
            .report(exit_for(p.code, p.at_destination), p.message);
    }
    // Nobody reads run results any more: their senders must not wait for room.
    rx.close();
    if let Some(t) = d.transfer.take() {
        if result.is_err() {
            // The server may never answer the runs still in flight: abandon them.
            t.own.cancel().await;
        } else {
            t.own.await;
        }
        (out.bytes, out.ranges, out.saved) = *t.moved.borrow();
        out.chunk_latency = Some(t.latency.borrow().clone());
        for r in t.relays {
            r.cancel().await;
        }
        t.answerer.cancel().await;
    }
    control_reader.cancel().await;
    let _ = send.finish();
    let t = s.tally();
    let sm = &mut d.summary;
    (sm.files, sm.files_copied, sm.files_unchanged) = (t.files, t.files_copied, t.files_unchanged);
    // Added to what the driver counted itself (entries left out of a push's manifest).
    (sm.failed, sm.bytes) = (sm.failed + t.failed, t.bytes);
    if !push {
        (sm.dirs, sm.symlinks) = (t.dirs, t.symlinks);
    }
    if push {
        sm.deleted = t.deleted;
    }
    if asked_delete && result.is_ok() {
        if sm.failed > 0 && t.deleted == 0 {
            // The session withheld the --delete, or the server did: a file failed.
            eprintln!("tpc-xfer: nothing was deleted at the destination: the run had errors");
        } else if t.delete_left > 0 {
            d.problems.report(
                Exit::MaxDelete,
                format!(
                    "--max-delete {} reached: {} more extraneous entries left in place",
                    t.deleted, t.delete_left
                ),
            );
        }
    }
    out.summary = Some((
        std::mem::take(&mut d.summary),
        std::mem::take(&mut d.problems),
    ));
    result
}

impl SessionDriver<'_> {
    /// A file of the manifest is in place, or failed: counted for the progress line,
    /// and logged with `--json-log`.
    fn file_done(&self, file: u32, error: Option<&str>) {
        self.job.totals.files_done.fetch_add(1, Ordering::Relaxed);
        let Some(log) = &self.job.file_log else {
            return;
        };
        // Before the transfer starts (a file failed while planning), the files are
        // still the driver's.
        let name = match self.names.get(file as usize) {
            Some(n) => Some(n.clone()),
            None => self
                .files
                .get(file as usize)
                .map(|f| f.shown(self.local_shown.as_deref())),
        };
        if let Some((path, bytes)) = name {
            log.done(FileDone {
                path,
                bytes,
                error: error.map(str::to_owned),
            });
        }
    }

    /// The driver's loop (contract: `tpc_core::session`).
    async fn drive(
        &mut self,
        s: &mut ClientSession,
        send: &mut SendStream,
        (events, frames): (&async_channel::Receiver<Ev>, &Frames),
        conn: &Connection,
        receivers: &mut Receivers<Msg>,
    ) -> SessionResult {
        loop {
            while let Some(file) = s.poll_placed() {
                self.file_done(file, None);
            }
            while let Some(p) = s.poll_problem() {
                if let Some(file) = p.file {
                    self.file_done(file, Some(&p.message));
                }
                self.problems
                    .report(exit_for(p.code, p.at_destination), p.message);
            }
            while let Some(f) = s.poll_transmit() {
                // A server that stops reading (the manifest fills its window) stalls too.
                let written = self.unless_stalled(write_frame(send, &f)).await?;
                written.map_err(|e| lost(self.job, e))?;
            }
            if let Some(r) = s.poll_request() {
                self.carry_out(r, s, conn, receivers).await?;
                continue;
            }
            if let Some(outcome) = s.poll_outcome() {
                return outcome.map_err(ended);
            }
            let next = async { events.recv().await.ok() };
            let wants_frame = s.wants_frame();
            let wait = async {
                if wants_frame {
                    let frame = async {
                        Some(Ev::Frame(
                            frames.recv().await.unwrap_or(Err(SessionError::Ended)),
                        ))
                    };
                    futures_lite::future::or(frame, next).await
                } else {
                    next.await
                }
            };
            // Both waits are on channels, so a wait given up by the watchdog loses nothing.
            let ev = self.unless_stalled(wait).await?;
            match ev {
                Some(Ev::Range(file, result)) => s.handle_run(file, result),
                Some(Ev::Frame(Ok(f))) => s.handle_frame(f),
                Some(Ev::Frame(Err(e))) => return Err(lost(self.job, e)),
                Some(Ev::Lost(exit, message)) => return Err((exit, message)),
                None => return Err(lost(self.job, SessionError::Ended)),
            }
        }
    }

    /// `fut`'s output, or the session's end (exit 8) once the session moved nothing for a
    /// whole `--timeout` (`super::unless_stalled`).
    async fn unless_stalled<F: std::future::Future>(
        &self,
        fut: F,
    ) -> Result<F::Output, (Exit, String)> {
        let job = self.job;
        unless_stalled(job.timeout, &job.progress, fut)
            .await
            .ok_or_else(|| {
                let seconds = job.timeout.map_or(0, |t| t.as_secs());
                let server = &job.remote.authority;
                let why = format!(
                    "server {server} made no progress for {seconds} s (--timeout): giving up"
                );
                (Exit::Network, why)
            })
    }

    async fn carry_out(
        &mut self,
        request: Request,
        s: &mut ClientSession,
        conn: &Connection,
        receivers: &mut Receivers<Msg>,
    ) -> SessionResult {
        match request {
            Request::Dial { ports, .. } => {
                self.summary.network = Some(Network {
                    server_shards: ports.len(),
                    ..Default::default()
                });
                for peer in 1..self.shard_count {
                    let dial = Msg::Dial(ports.clone(), conn.kind());
                    let _ = self.senders.send_to(peer, dial).await;
                }
            }
            Request::BuildManifest(dest) => {
                s.handle_manifest(self.build_manifest(dest)?);
                if let Some(d) = self.delete.take() {
                    s.delete_after(d);
                }
            }
            Request::Plan { dest, entries } => {
                let planned = self.plan_pull(dest, entries, s.session_id()).await?;
                s.handle_planned(planned);
            }
            Request::Start { runs, needs } => self.start(runs, needs, s, conn, receivers).await,
            Request::Abandon(file) => {
                if let Some(r) = self.local_receiver.as_mut() {
                    r.fail(file);
                }
            }
            Request::Commit(files) => {
                let r = &mut self.local_receiver;
                let (ok, failed) = off_thread(r, Span::Short, move |r| r.commit(&files)).await;
                s.handle_committed(ok, failed);
            }
            Request::Finish => {
                // A pull's --delete, locally, once every file is in place (and never
                // when anything failed), before the directories' times are set.
                let clean = s.tally().failed == 0 && self.problems.exit() == Exit::Ok;
                let delete = match self.job.delete {
                    Some(_) if !clean => {
                        eprintln!("tpc-xfer: not deleting anything at the destination: the run had errors");
                        None
                    }
                    Some(max) if self.pulled_dir => Some(max),
                    _ => None,
                };
                let filter = self.job.filter.clone();
                let name = place::transfer_name(&self.job.remote.path).to_vec();
                let r = &mut self.local_receiver;
                let (deleted, mut failed, written) = off_thread(r, Span::Long, move |r| {
                    let deleted = delete.map(|max| r.delete_beneath(&filter, max, &[(b"", &name)]));
                    let failed = r.finish();
                    (deleted, failed, r.files_written)
                })
                .await;
                match deleted {
                    Some(Ok((n, left, fails))) => {
                        self.summary.deleted = n;
                        failed.extend(fails);
                        if left > 0 {
                            self.problems.report(
                                Exit::MaxDelete,
                                format!("--max-delete {n} reached: {left} more extraneous entries left in place"),
                            );
                        }
                    }
                    Some(Err(f)) => self.problems.report(Exit::Destination, f.message),
                    None => {}
                }
                s.handle_finished(failed, written);
            }
        }
        Ok(())
    }

    /// Push: the manifest by rsync's placement rules, and where each file is read.
    fn build_manifest(&mut self, dest_kind: DestKind) -> Result<Vec<Entry>, (Exit, String)> {
        let Some(Plan::Push { sources, delete }) = self.plan.take() else {
            return Err((Exit::Protocol, "internal: no push to build".into()));
        };
        let path = &self.job.remote.path;
        self.src_roots = sources.iter().map(|s| s.root.clone()).collect();
        let (entries, srcs, skipped, bases) = push_manifest(&sources, path, dest_kind);
        // What one frame carries: a push of more directory sources deletes nothing.
        let base_bytes: usize = bases.iter().map(|b| b.len() + 4).sum();
        let fits = bases.len() <= DELETE_BASES_MAX && base_bytes < FRAME_BYTES_MAX / 2;
        self.delete = match delete {
            Some(_) if !fits => {
                self.problems.report(
                    Exit::Usage,
                    format!(
                        "not deleting anything: a remote --delete takes at most {DELETE_BASES_MAX} directory sources"
                    ),
                );
                None
            }
            d => d.map(|d| DeleteRequest { bases, ..d }),
        };
        self.summary.skipped = skipped;
        // As a local copy counts them: the entries walked (not the destination
        // directory a push of several sources creates).
        let walked = sources.iter().flat_map(|s| &s.entries);
        for e in walked {
            self.summary.dirs += u64::from(e.meta.kind == EntryKind::Dir);
            self.summary.symlinks += u64::from(e.meta.kind == EntryKind::Symlink);
        }
        let trimmed = path.strip_suffix(b"/").unwrap_or(path);
        let base = RelPath::parse(trimmed).map_err(|e| (Exit::Destination, e.to_string()))?;
        let mut kept = Vec::with_capacity(entries.len());
        for (e, src) in entries.into_iter().zip(srcs) {
            // An entry the server would refuse once beneath the destination (deeper than
            // `TREE_DEPTH_MAX` there, or longer than a path may be) fails alone, as in a
            // local copy, instead of the server ending the whole session over it.
            let remote = match full_path(&base, &e.path) {
                Ok(p) => p.into_bytes(),
                Err(f) => {
                    let at = joined(&base, &e.path);
                    self.problems.report(
                        exit_for(f.code, true),
                        format!("cannot push to {}: {}", quote_bytes(&at), f.message),
                    );
                    self.summary.failed += 1;
                    continue;
                }
            };
            self.files.push(WorkFile {
                remote,
                size: e.size,
                local_src: src,
                landing: None,
                have_first: 0,
                have: Vec::new(),
            });
            kept.push(e);
        }
        Ok(kept)
    }

    /// Pull: where the tree lands locally, the local receiver, and its plan.
    async fn plan_pull(
        &mut self,
        dest: DestKind,
        entries: Vec<Entry>,
        session: u64,
    ) -> Result<tpc_core::session::Planned, (Exit, String)> {
        let Some(Plan::Pull { dest: local }) = self.plan.take() else {
            return Err((Exit::Protocol, "internal: no pull to plan".into()));
        };
        let path = &self.job.remote.path;
        self.pulled_dir = dest == DestKind::Dir;
        let (root, root_path, base) = pull_target(path, dest, &local)?;
        let root = Arc::new(root);
        // The run's lock, before the first temporary file (`tpc_engine::temp`).
        self._run_lock =
            Some(RunLock::acquire(root.clone()).unwrap_or_else(|_| RunLock::unlocked()));
        // No old-version hashes for the server (see `Receiver::new`): a pull moves
        // changed files whole.
        let mut receiver = Receiver::new(
            root.clone(),
            &root_path,
            base,
            session,
            self.job.opts_durable,
            false,
        );
        let trimmed = path.strip_suffix(b"/").unwrap_or(path);
        let src_base = RelPath::parse(trimmed).map_err(|e| (Exit::Source, e.to_string()))?;
        for e in &entries {
            let remote = full_path(&src_base, &e.path)
                .map(|p| p.into_bytes())
                .map_err(|f| (Exit::Protocol, f.message))?;
            self.files.push(WorkFile {
                remote,
                size: e.size,
                local_src: None,
                landing: None,
                have_first: 0,
                have: Vec::new(),
            });
        }
        if let Err(f) = receiver.add(entries) {
            let why = format!("server manifest refused: {}", f.message);
            return Ok(Err(Failure::protocol(why)));
        }
        let mut slot = Some(receiver);
        let (needs, failed) = off_thread(&mut slot, Span::Long, |r| r.plan()).await;
        let receiver = slot.expect("put back");
        for item in &needs {
            let tmp = receiver.receiving(item.file).map(|(full, _)| full);
            if let (Some(full), Some(f)) = (tmp, self.files.get_mut(item.file as usize)) {
                f.landing = temp_path(&full, session, item.file)
                    .ok()
                    .map(|tmp| Landing { full, tmp });
            }
        }
        self.local_receiver = Some(receiver);
        self.local_root = Some(root);
        self.local_shown = Some(root_path);
        Ok(Ok((needs, failed)))
    }

    /// Hands every shard its runs, and starts shard 0's own.
    async fn start(
        &mut self,
        runs: Vec<Vec<RunItem>>,
        needs: Vec<NeedItem>,
        s: &ClientSession,
        conn: &Connection,
        receivers: &mut Receivers<Msg>,
    ) {
        let files = &self.files;
        let asked = |n: &NeedItem| -> Option<u64> {
            let plan = ChunkPlan::new(files.get(n.file as usize)?.size).ok()?;
            Some(plan.run(n.chunk_first, n.chunk_count)?.1)
        };
        let totals = &self.job.totals;
        totals
            .bytes
            .store(needs.iter().filter_map(asked).sum(), Ordering::Relaxed);
        totals.files.store(needs.len() as u64, Ordering::Relaxed);
        totals.known.store(true, Ordering::Relaxed);
        for n in needs {
            // Checked by the session: a file of the manifest, a run inside it. Hashes of
            // the receiver's old version, at most one per chunk asked for.
            if let Some(f) = self.files.get_mut(n.file as usize) {
                f.have_first = n.chunk_first;
                f.have = n.have;
            }
        }
        if self.job.file_log.is_some() {
            let local = self.local_shown.as_deref();
            self.names = self.files.iter().map(|f| f.shown(local)).collect();
        }
        // Files failed while planning are not among those counted from here.
        totals.files_done.store(0, Ordering::Relaxed);
        let work = Arc::new(Work {
            push: s.is_push(),
            session: s.session_id(),
            files: std::mem::take(&mut self.files),
            ranges: runs,
            local_root: self.local_root.clone(),
            src_roots: std::mem::take(&mut self.src_roots),
            progress: self.job.progress.clone(),
            pace: self.job.pace.clone(),
            compression: self.job.compression,
        });
        for peer in 1..self.shard_count {
            let _ = self.senders.send_to(peer, Msg::Start(work.clone())).await;
        }
        let (rtx, rrx) = async_channel::unbounded::<(u32, Result<u64, RunFailed>)>();
        let latency = Rc::new(RefCell::new(latency_histogram()));
        // Take-over between the shards (see `Msg::Idle`): the peers' asks and answers
        // arrive among their results, and are relayed from there.
        let (queue, answerer, take_over, route) = take_over_for(0, &work, self.senders);
        let moved: Moved = Rc::default();
        let own = run_ranges(
            Some(conn.clone()),
            work.clone(),
            queue,
            moved.clone(),
            rtx,
            latency.clone(),
            take_over,
        );
        let tx = self.events.clone();
        let relay_own = async move {
            while let Ok((f, r)) = rrx.recv().await {
                let _ = tx.send(Ev::Range(f, r)).await;
            }
        };
        let mut relays = Vec::new();
        for (peer, stream) in receivers.streams() {
            if peer == 0 {
                continue;
            }
            let tx = self.events.clone();
            let route = route.clone();
            // Each peer's results arrive on its own mesh receiver.
            relays.push(rt::spawn_local(async move {
                while let Ok(msg) = stream.recv().await {
                    let ev = match route.route(peer, msg).await {
                        Some(Msg::Result { file, result }) => Ev::Range(file, result),
                        Some(Msg::Lost(exit, message)) => Ev::Lost(exit, message),
                        _ => continue,
                    };
                    if tx.send(ev).await.is_err() {
                        break;
                    }
                }
            }));
        }
        let own = rt::spawn_local(async move {
            futures_lite::future::zip(own, relay_own).await;
        });
        self.transfer = Some(Transfer {
            own,
            answerer,
            relays,
            moved,
            latency,
        });
    }
}

/// The manifest of a push: rsync's rules decide where each source lands beneath the
/// remote destination (`src/` → its contents; `src` → `dest/src`; a single file onto a
/// path that is not a directory → that path). Also where each directory source lands,
/// for a `--delete`.
#[allow(clippy::type_complexity)]
fn push_manifest(
    sources: &[Source],
    dest: &[u8],
    dest_kind: DestKind,
) -> (Vec<Entry>, Vec<Option<PushSource>>, u64, Vec<Vec<u8>>) {
    let named: Vec<Vec<u8>> = sources
        .iter()
        .map(|s| walk::bytes(&s.arg).into_owned())
        .collect();
    let placed: Vec<place::Source<'_>> = sources
        .iter()
        .zip(&named)
        .map(|(s, named)| place::Source {
            named,
            is_dir: s
                .entries
                .first()
                .is_some_and(|e| e.meta.kind == EntryKind::Dir),
        })
        .collect();
    let dest = place::Dest {
        kind: dest_kind,
        // The served root ("") is a directory.
        says_dir: dest.ends_with(b"/") || dest.is_empty(),
    };
    let placement = place::place(&placed, dest);
    let mut skipped = 0;
    let mut entries = Vec::new();
    let mut srcs = Vec::new();
    let mut has_base = false;
    for (i, (s, landing)) in sources.iter().zip(&placement.landings).enumerate() {
        let prefix: Vec<u8> = match landing {
            place::Landing::Named(name) => name.clone(),
            place::Landing::Contents | place::Landing::AsDest => Vec::new(),
        };
        for e in &s.entries {
            let rel = walk::bytes(e.rel.as_os_str());
            let rel = &rel[..];
            let path = match (prefix.is_empty(), rel.is_empty()) {
                (true, _) => rel.to_vec(),
                (false, true) => prefix.clone(),
                (false, false) => [&prefix[..], b"/", rel].concat(),
            };
            if path.is_empty() {
                has_base = true;
            }
            let (kind, target, size, src) = match e.meta.kind {
                EntryKind::File => (
                    WireKind::File,
                    Vec::new(),
                    e.meta.size_bytes,
                    Some(push_source(i, s, e)),
                ),
                EntryKind::Dir => (WireKind::Dir, Vec::new(), 0, None),
                EntryKind::Symlink => (
                    WireKind::Symlink,
                    e.meta.link_target.clone().unwrap_or_default(),
                    0,
                    None,
                ),
                EntryKind::Special => {
                    eprintln!(
                        "tpc-xfer: skipping special file {}",
                        quote(&s.path.join(&e.rel))
                    );
                    skipped += 1;
                    continue;
                }
            };
            // A name the walk gave that no RelPath can hold (too long) fails at open.
            let src = src.flatten();
            entries.push(Entry {
                kind,
                path,
                size,
                mode: if kind == WireKind::File {
                    e.meta.mode & !SETID_BITS
                } else {
                    e.meta.mode
                } & 0o7777,
                mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
                target,
                hashes: Vec::new(),
            });
            srcs.push(src);
        }
    }
    if placement.into_dir && !has_base && dest_kind == DestKind::Missing {
        // The destination directory itself, created for several sources or `dest/`.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        entries.insert(
            0,
            Entry {
                kind: WireKind::Dir,
                path: Vec::new(),
                size: 0,
                mode: 0o755,
                mtime: (now.as_secs() as i64, now.subsec_nanos()),
                target: Vec::new(),
                hashes: Vec::new(),
            },
        );
        srcs.insert(0, None);
    }
    // The landings of directory sources: where a --delete looks.
    let mut bases: Vec<Vec<u8>> = Vec::new();
    for (s, landing) in sources.iter().zip(&placement.landings) {
        let is_dir = (s.entries.first()).is_some_and(|e| e.meta.kind == EntryKind::Dir);
        let base = match landing {
            place::Landing::Named(name) => name.clone(),
            place::Landing::Contents => Vec::new(),
            place::Landing::AsDest => continue,
        };
        if is_dir && !bases.contains(&base) {
            bases.push(base);
        }
    }
    (entries, srcs, skipped, bases)
}

/// Where entry `e` of source `s` (the `i`th) is read; `None` if its path cannot be a
/// `RelPath` (longer than the limit).
fn push_source(i: usize, s: &Source, e: &walk::Entry) -> Option<PushSource> {
    Some(PushSource {
        root: i,
        rel: beneath(&s.base, &e.rel).ok()?,
        listed: Listed {
            inode: (e.inode.0, e.inode.1),
            mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
        },
        shown: if e.rel.as_os_str().is_empty() {
            s.path.clone()
        } else {
            s.path.join(&e.rel)
        },
    })
}

/// Where a pull lands locally: the root the receiver is confined to, its path, and the
/// base beneath it, by the placement rules of a local copy (`tpc_core::place`).
fn pull_target(
    src: &[u8],
    src_kind: DestKind,
    dest: &Path,
) -> Result<(Root, PathBuf, RelPath), (Exit, String)> {
    let source = place::Source {
        named: src,
        is_dir: src_kind == DestKind::Dir,
    };
    let placement = place::place(&[source], local_dest(dest));
    let (dir, as_dest) = local_target(dest, &placement, true)?;
    let base = landing_base(&placement.landings[0], &as_dest)
        .map_err(|e| (Exit::Protocol, e.to_string()))?;
    let root = Root::open_ambient(&dir).map_err(|e| {
        (
            Exit::for_write_error(&e),
            format!("cannot open {}: {e}", quote(&dir)),
        )
    })?;
    Ok((root, dir, base))
}
