//! `tpc-xfer serve`: one QUIC endpoint per shard (shard i on port PORT + i), each
//! accepting authenticated clients and serving their streams — control sessions, and
//! data streams that write (push) or read (pull) chunk runs beneath the root.
//!
//! A session's control stream lives on whichever shard its connection reached (the one
//! the client dialled first, shard 0's port). Data streams share little with it: the
//! temporary name of a file follows from its path, the session id and the file index, so
//! any shard can write a run into the file the control stream created. Small files are
//! the exception: the control stream leaves them to their data streams to create (so
//! that every shard creates files while the data flows), and publishes them in a
//! process-wide table of push sessions ([`Sessions`]) that the streams check against. A
//! failing client or stream only ever ends its own stream or connection; the server
//! keeps serving.

use std::cell::{Cell, OnceCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tpc_core::admission::Admission;
use tpc_core::codec::{Compression, CODECS_SAME};
use tpc_core::filter::Filter;
use tpc_core::relpath::RelPath;
use tpc_core::session::server::{
    check_get, check_put, open_stream, parse_path, Finished, Listing, Opened, PutTarget, Request,
    ServerFacts, ServerSession,
};
use tpc_core::wire::{DestKind, Entry, ErrorCode, Frame, Run, WireKind, MANIFEST_ENTRIES_MAX};
use tpc_engine::confine::{fstat, sync_file, Access, FileKind, Root};
use tpc_engine::pace::Pacer;
use tpc_engine::quic::{bind_socket, udp_payload_max_towards, Endpoint, HANDSHAKES_MAX};
use tpc_engine::rt::{self, File};
use tpc_engine::tcp;
use tpc_engine::transport::{Connection, RecvStream, SendStream};
use tpc_engine::Listed;

use super::congestion::Congestion;
use super::data::{open_direct, receive_run, send_run, DataError, Progress, RunLog};
use tpc_engine::temp::RunLock;

use super::receiver::{
    confine_failure, io_failure, off_thread, set_meta, temp_path, Failure, LazyFile, Receiver,
    SessionShare, Span,
};
use super::{
    expect_end, read_frame, transport_config, unless_stalled, write_frame, SessionError,
    TransportChoice, CLOSE_BUSY, CONNECT_TIMEOUT,
};
use crate::auth::{self, Fingerprint, Identity, LiveClients};
use crate::exit::Exit;

/// A line for the operator on stderr, stamped with the time (`crate::log`).
macro_rules! log {
    ($($arg:tt)*) => {
        crate::log::line(format_args!($($arg)*))
    };
}

pub struct ServeOptions {
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub shard_count: usize,
    pub read_only: bool,
    pub state_dir: PathBuf,
    /// Congestion controller of the server's sending direction (the data of a pull).
    pub congestion: Congestion,
    /// The driver the shards run on (`--io`).
    pub driver: tpc_engine::Driver,
    /// `--transport`: QUIC, TCP, or both (on the same port numbers).
    pub transport: TransportChoice,
    /// `--timeout`: a session that makes no progress this long is ended; `None` never.
    pub timeout: Option<Duration>,
}

struct Shared {
    root: Arc<Root>,
    /// The served root's path, where other runs' locks are looked up.
    root_path: std::path::PathBuf,
    /// What every session and stream is told or checked against.
    facts: ServerFacts,
    sessions: Arc<Sessions>,
    /// `--timeout`: how long a session may make no progress.
    timeout: Option<Duration>,
    /// Connections and sessions held per client key and in total (all shards).
    admission: Arc<Mutex<Admission<Fingerprint>>>,
    /// What this shard serves right now.
    activity: Activity,
    /// The authorized clients as the handshakes see them, for the log's comments and
    /// for shard 0's reloads.
    clients: LiveClients,
}

/// What a shard serves, so that it gives its memory back once idle ([`trim_when_idle`]).
#[derive(Default)]
struct Activity {
    /// TCP connections, from their accept (handshake included) to their end.
    tcp: Cell<usize>,
    /// The shard's QUIC endpoint, whose connections (handshakes included) count too.
    quic: OnceCell<Endpoint>,
    /// Connections accepted so far (QUIC and TCP): one that came and went between two
    /// checks counts as work too.
    accepted: Cell<u64>,
    /// Checks in a row that found the shard idle since it last served something.
    idle_checks: Cell<u32>,
}

impl Activity {
    fn busy(&self) -> bool {
        self.tcp.get() > 0 || self.quic.get().is_some_and(|ep| ep.connection_count() > 0)
    }
}

/// Set by SIGHUP: shard 0 re-reads authorized-clients at its next look.
static RELOAD_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sighup(_: libc::c_int) {
    // Only an atomic store: what a signal handler may do.
    RELOAD_ASKED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// How often shard 0 looks whether authorized-clients should be read again.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Re-reads authorized-clients when the operator sends SIGHUP, or within a second of the
/// file changing (its mtime, size or inode), and logs what it found. A file that no
/// longer parses leaves the list in force, and says why. Runs on shard 0 only: the list
/// is shared by every shard's handshakes.
async fn reload_clients(shared: Rc<Shared>) {
    loop {
        rt::sleep(RELOAD_CHECK_EVERY).await;
        let asked = RELOAD_ASKED.swap(false, std::sync::atomic::Ordering::Relaxed);
        let why = if asked { "on SIGHUP" } else { "as it changed" };
        match shared.clients.reload(asked) {
            None => {}
            Some(Ok(n)) => log!("tpc-xfer: read authorized-clients again {why}: {n} keys"),
            Some(Err(e)) => log!("tpc-xfer: keeping the authorized clients in force: {e}"),
        }
    }
}

/// How often a shard looks whether it is idle.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Gives the shard's free memory back to the kernel (`alloc::trim`) once it has been
/// idle for two checks in a row (1-2 s) after serving something, so that a burst (a
/// large transfer, or an attack's thousands of streams) does not leave the server at its
/// peak size: the allocator keeps free memory for reuse while the thread works
/// (`alloc::give_back_when_idle`), and an idle thread would keep it for good. A busy shard is
/// never trimmed, and an idle one once per burst.
async fn trim_when_idle(shared: Rc<Shared>) {
    let activity = &shared.activity;
    let mut accepted = 0;
    loop {
        rt::sleep(IDLE_CHECK_EVERY).await;
        let now = activity.accepted.get();
        if activity.busy() || now != accepted {
            accepted = now;
            activity.idle_checks.set(0);
            continue;
        }
        // 0 after work; 1 after one idle check; 2 once trimmed (until work again).
        match activity.idle_checks.get() {
            0 => activity.idle_checks.set(1),
            1 => {
                crate::alloc::trim();
                activity.idle_checks.set(2);
            }
            _ => {}
        }
    }
}

/// The sessions in progress (on any shard), with what they share with their data
/// streams: a data stream writes only for a push session here, and only what its plan
/// asked for; the chunks every data stream moves count as its session's progress. Looked
/// up once per data stream; the lock is held only to clone an `Arc`.
#[derive(Default)]
struct Sessions(Mutex<HashMap<u64, Arc<Live>>>);

/// A session in progress, as its data streams see it.
struct Live {
    /// The key of the client whose control stream runs it: only its connections may
    /// write for it (a session id is random, but a guessed or leaked one gets nothing).
    owner: Fingerprint,
    /// Chunks its data streams moved, push or pull (`super::unless_stalled`).
    progress: Progress,
    /// A pull's `--bwlimit`, shared by its data streams on every shard.
    pace: Option<Arc<Pacer>>,
    /// What a push's plan shares with its data streams, once planned.
    share: OnceLock<Arc<SessionShare>>,
    /// A pull's files as its listing found them (by path beneath the root), once listed:
    /// a Get reads only that version, and fails as `Changed` if the file is no longer it
    /// when opened or once read (issue 25, finding 8).
    listed: OnceLock<Arc<HashMap<Vec<u8>, Listed>>>,
}

impl Sessions {
    /// Publishes `session` of `owner` until the returned guard is dropped.
    fn publish(self: &Arc<Self>, session: u64, owner: Fingerprint, rate: Option<u64>) -> Published {
        let live = Arc::new(Live {
            owner,
            progress: Progress::default(),
            pace: rate.map(|r| Arc::new(Pacer::new(r))),
            share: OnceLock::new(),
            listed: OnceLock::new(),
        });
        self.0
            .lock()
            .expect("not poisoned")
            .insert(session, live.clone());
        Published {
            sessions: self.clone(),
            session,
            live,
        }
    }

    /// `session`, if it is here and runs for `key`: another key's session is answered as
    /// no session at all, so nothing tells a client which ids are in use.
    fn get(&self, session: u64, key: Fingerprint) -> Option<Arc<Live>> {
        let sessions = self.0.lock().expect("not poisoned");
        sessions.get(&session).filter(|l| l.owner == key).cloned()
    }
}

/// Withdraws a session from [`Sessions`] when its control stream ends, however it ends.
struct Published {
    sessions: Arc<Sessions>,
    session: u64,
    live: Arc<Live>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.sessions
            .0
            .lock()
            .expect("not poisoned")
            .remove(&self.session);
    }
}

pub fn run(opts: ServeOptions) -> Exit {
    // First of all: a reload (SIGHUP) that comes while the server starts must not end it.
    #[cfg(unix)]
    // SAFETY: installs a handler that only stores to an atomic, before the shards start.
    unsafe {
        libc::signal(libc::SIGHUP, on_sighup as *const () as libc::sighandler_t);
    }
    // Before the shards start, so that the memory they allocate can go back.
    crate::alloc::give_back_when_idle();
    let root = match Root::open_ambient(&opts.root) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            log!("tpc-xfer: cannot serve {}: {e}", opts.root.display());
            return Exit::Source;
        }
    };
    let identity = match Identity::load_or_create(&opts.state_dir) {
        Ok(i) => i,
        Err(e) => {
            log!("tpc-xfer: {e}");
            return Exit::Auth;
        }
    };
    let authorized = match LiveClients::load(&opts.state_dir) {
        Ok(a) => a,
        Err(e) => {
            log!("tpc-xfer: {e}");
            return Exit::Auth;
        }
    };
    if authorized.is_empty() {
        log!(
            "tpc-xfer: warning: {} lists no client; every client will be refused",
            opts.state_dir.join("authorized-clients").display()
        );
    }
    let tls = match auth::server_crypto(&identity, authorized.clone()) {
        Ok(c) => c,
        Err(e) => {
            log!("tpc-xfer: {e}");
            return Exit::Auth;
        }
    };
    let crypto = match auth::quic_server_config_from(tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            log!("tpc-xfer: {e}");
            return Exit::Auth;
        }
    };
    let mut sockets = Vec::with_capacity(opts.shard_count);
    for i in 0..opts.shard_count {
        let mut addr = opts.listen;
        if addr.port() != 0 {
            addr.set_port(match addr.port().checked_add(i as u16) {
                Some(p) => p,
                None => {
                    log!(
                        "tpc-xfer: port {} + {i} is out of range",
                        opts.listen.port()
                    );
                    return Exit::Usage;
                }
            });
        }
        match bind_shard(addr, opts.transport) {
            Ok(s) => sockets.push(Some(s)),
            Err(e) => {
                log!("tpc-xfer: cannot listen on {addr}: {e}");
                return Exit::Usage;
            }
        }
    }
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.port))
        .collect();
    let mut first = opts.listen;
    first.set_port(ports[0]);
    let over = match opts.transport {
        TransportChoice::Auto => "UDP and TCP",
        TransportChoice::Quic => "UDP",
        TransportChoice::Tcp => "TCP",
    };
    log!(
        "tpc-xfer: serving {} on {first} ({} shards, {over} ports {}); server key {}",
        opts.root.display(),
        opts.shard_count,
        ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        identity.fingerprint()
    );
    let sockets = Arc::new(Mutex::new(sockets));
    let crypto = Arc::new(crypto);
    let read_only = opts.read_only;
    let congestion = opts.congestion;
    let sessions = Arc::new(Sessions::default());
    let admission = Arc::new(Mutex::new(Admission::default()));
    let timeout = opts.timeout;
    // This server's run lock, held while it serves: its sessions' temporaries are alive
    // for any other run that sweeps the tree (`tpc_engine::temp`).
    let _run_lock = (!read_only)
        .then(|| RunLock::acquire(root.clone()).unwrap_or_else(|_| RunLock::unlocked()));
    let root_path = opts.root.clone();
    let result =
        tpc_engine::run_shards::<(), (), _, _>(opts.driver, opts.shard_count, 1, move |ctx| {
            let bound = sockets.lock().expect("not poisoned")[ctx.shard]
                .take()
                .expect("each shard takes its own sockets");
            let shared = Rc::new(Shared {
                root: root.clone(),
                root_path: root_path.clone(),
                facts: ServerFacts {
                    read_only,
                    ports: ports.clone(),
                },
                sessions: sessions.clone(),
                timeout,
                admission: admission.clone(),
                activity: Activity::default(),
                clients: authorized.clone(),
            });
            let crypto = crypto.clone();
            let tls = tls.clone();
            async move {
                drop(ctx.mesh);
                rt::spawn_local(trim_when_idle(shared.clone())).detach();
                if ctx.shard == 0 {
                    rt::spawn_local(reload_clients(shared.clone())).detach();
                }
                let tcp = bound
                    .tcp
                    .map(|l| rt::spawn_local(accept_tcp(l, tls, shared.clone())));
                if let Some(socket) = bound.udp {
                    accept_quic(socket, crypto, congestion, shared).await;
                }
                if let Some(t) = tcp {
                    t.await;
                }
            }
        });
    match result {
        Ok(_) => Exit::Ok,
        Err(e) => {
            log!("tpc-xfer: {e}");
            Exit::Engine
        }
    }
}

/// One shard's listening sockets: UDP for QUIC, TCP, or both at the same port number.
struct Bound {
    udp: Option<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    port: u16,
}

/// How many times a UDP port picked by the system (`--listen ...:0`) is tried for TCP
/// before giving up: the same number may be taken by another TCP socket.
const PORT_PAIR_TRIES: usize = 32;

/// Binds a shard's sockets at `addr`, for the transports `choice` serves.
fn bind_shard(addr: SocketAddr, choice: TransportChoice) -> std::io::Result<Bound> {
    let tries = if addr.port() == 0 { PORT_PAIR_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = match choice {
            TransportChoice::Tcp => None,
            _ => Some(bind_retrying(addr, bind_socket)?),
        };
        let mut at = addr;
        if let Some(u) = &udp {
            at.set_port(u.local_addr()?.port());
        }
        let tcp = match choice {
            TransportChoice::Quic => None,
            _ => match bind_retrying(at, tcp::bind_listener) {
                Ok(l) => Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let port = match (&udp, &tcp) {
            (Some(u), _) => u.local_addr()?.port(),
            (None, Some(t)) => t.local_addr()?.port(),
            (None, None) => 0,
        };
        return Ok(Bound { udp, tcp, port });
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))
}

/// A shard's QUIC endpoint: serves every connection it accepts.
async fn accept_quic(
    socket: std::net::UdpSocket,
    crypto: Arc<quinn_proto::ServerConfig>,
    congestion: Congestion,
    shared: Rc<Shared>,
) {
    let make = move |remote: SocketAddr| {
        let mut c = (*crypto).clone();
        c.transport_config(transport_config(
            udp_payload_max_towards(remote).unwrap_or(1452),
            congestion,
        ));
        Arc::new(c)
    };
    let ep = match Endpoint::new(socket, Some(Box::new(make))) {
        Ok(ep) => ep,
        Err(e) => {
            log!("tpc-xfer: shard cannot start its endpoint: {e}");
            return;
        }
    };
    let _ = shared.activity.quic.set(ep.clone());
    while let Some(conn) = ep.accept().await {
        let accepted = &shared.activity.accepted;
        accepted.set(accepted.get() + 1);
        rt::spawn_local(serve_connection(Connection::Quic(conn), shared.clone())).detach();
    }
}

/// A shard's TCP listener: each connection's TLS handshake (bounded by
/// `CONNECT_TIMEOUT`), then its streams.
async fn accept_tcp(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Rc<Shared>,
) {
    let listener = match rt::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log!("tpc-xfer: shard cannot listen on TCP: {e}");
            return;
        }
    };
    // TLS handshakes in flight on this shard: each holds a socket and a task for up to
    // CONNECT_TIMEOUT, so as over QUIC at most HANDSHAKES_MAX run at once; a connection
    // past them is closed at once, unanswered (and unlogged: a flood would flood the log).
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let sock = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, or the like: a moment later may do.
                log!("tpc-xfer: accepting a TCP connection: {e}");
                rt::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if in_flight.get() >= HANDSHAKES_MAX {
            continue;
        }
        let remote = sock.with_socket(|s| s.peer_addr().ok().and_then(|a| a.as_socket()));
        let Some(remote) = remote else { continue };
        let (tls, shared) = (tls.clone(), shared.clone());
        in_flight.set(in_flight.get() + 1);
        let in_flight = in_flight.clone();
        let activity = &shared.activity;
        activity.tcp.set(activity.tcp.get() + 1);
        activity.accepted.set(activity.accepted.get() + 1);
        rt::spawn_local(async move {
            let handshake = tcp::Connection::accept(sock, tls, remote);
            let handshake = rt::within(CONNECT_TIMEOUT, handshake).await;
            in_flight.set(in_flight.get() - 1);
            match handshake {
                Some(Ok(conn)) => serve_connection(Connection::Tcp(conn), shared.clone()).await,
                Some(Err(e)) => log!("tpc-xfer: TCP connection from {remote}: {e}"),
                None => log!("tpc-xfer: TCP connection from {remote}: no TLS handshake in time"),
            }
            let activity = &shared.activity;
            activity.tcp.set(activity.tcp.get() - 1);
        })
        .detach();
    }
}

/// How long a listen address that is in use is retried before giving up.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// Binds `addr`, retrying for `BIND_RETRY` while it is in use: a server restarted right
/// after being killed finds its ports still held for a moment, because the kernel tears
/// down the dead process's io_uring (which holds the sockets) asynchronously.
fn bind_retrying<S>(
    addr: SocketAddr,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> std::io::Result<S> {
    let started = Instant::now();
    loop {
        match bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < BIND_RETRY =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Serves an authenticated connection's streams, if its client key is within the
/// connection limits (`tpc_core::admission`); refuses it with `CLOSE_BUSY` otherwise.
async fn serve_connection(conn: Connection, shared: Rc<Shared>) {
    let key = conn
        .peer_certificate()
        .and_then(|c| Fingerprint::of_certificate(&c).ok());
    let Some(key) = key else {
        // The handshake admits only keys in authorized-clients; never reached.
        return conn.close(CLOSE_BUSY, b"no client key");
    };
    if let Err(r) = shared.admit(|a| a.connect(&key)) {
        log!("tpc-xfer: refused a connection of {key}: {}", r.message());
        return conn.close(CLOSE_BUSY, r.message().as_bytes());
    }
    let _held = Admitted {
        shared: shared.clone(),
        key,
        end: Admission::connection_ended,
    };
    let from = conn.remote_address();
    while let Some((send, recv)) = conn.accept_bi().await {
        // A key taken out of authorized-clients (and read again) ends its connections
        // at their next stream, not only its next handshakes.
        if !shared.clients.contains(&key) {
            log!("tpc-xfer: closing a connection of {key}: no longer in authorized-clients");
            return conn.close(CLOSE_BUSY, b"this key is no longer authorized");
        }
        rt::spawn_local(serve_stream(send, recv, shared.clone(), key, from)).detach();
    }
}

impl Shared {
    fn admit<R>(&self, f: impl FnOnce(&mut Admission<Fingerprint>) -> R) -> R {
        f(&mut self.admission.lock().expect("not poisoned"))
    }
}

/// A connection or session admitted for `key`, given back when dropped.
struct Admitted {
    shared: Rc<Shared>,
    key: Fingerprint,
    end: fn(&mut Admission<Fingerprint>, &Fingerprint),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.admit(|a| (self.end)(a, &self.key));
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Rc<Shared>,
    key: Fingerprint,
    from: Option<SocketAddr>,
) {
    let first = match read_frame(&mut recv).await {
        Ok(f) => f,
        Err(SessionError::Wire(e)) => {
            return refuse(&mut send, Failure::protocol(e.to_string())).await
        }
        Err(_) => return,
    };
    let result = match open_stream(first, &shared.facts, new_session_id) {
        Opened::Control(session) => match shared.admit(|a| a.start_session(&key)) {
            Ok(()) => {
                let _held = Admitted {
                    shared: shared.clone(),
                    key,
                    end: Admission::session_ended,
                };
                let id = session.session_id();
                let comment = shared.clients.comment(&key).unwrap_or_default();
                let from = from.map_or_else(|| "?".to_string(), |a| a.to_string());
                log!(
                    "tpc-xfer: session {id:016x}: {} {} by {key} ({}) from {from}",
                    if session.is_push() {
                        "push to"
                    } else {
                        "pull of"
                    },
                    session.path(),
                    tpc_core::wire::escape_controls(&comment),
                );
                control(&mut send, &mut recv, &shared, *session, key).await;
                return;
            }
            Err(r) => Err(Failure::new(ErrorCode::Busy, r.message())),
        },
        Opened::Put(p) => put(&mut send, &mut recv, &shared, p, key).await,
        Opened::Get(g) => match expect_end(&mut recv).await {
            // A Get is the whole request.
            Ok(()) => get(&mut send, &shared, g, key).await,
            Err(e) => Err(session_failure(e)),
        },
        Opened::Quiet => Ok(()),
        Opened::Refused(f) => Err(f),
    };
    match result {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(f) => refuse(&mut send, f).await,
    }
}

/// Answers a stream that failed with `Error`, and finishes it. The client hears why; the
/// operator sees it too. Nothing else is affected.
async fn refuse(send: &mut SendStream, f: Failure) {
    log!("tpc-xfer: refused: {}", f.message);
    let _ = write_frame(
        send,
        &Frame::Error {
            code: f.code,
            message: f.message,
        },
    )
    .await;
    let _ = send.finish();
}

fn session_failure(e: SessionError) -> Failure {
    Failure::new(ErrorCode::Protocol, e.to_string())
}

fn new_session_id() -> u64 {
    let mut b = [0u8; 8];
    #[cfg(target_os = "linux")]
    // SAFETY: getrandom writes at most 8 bytes into b.
    let ok = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) } == 8;
    #[cfg(all(unix, not(target_os = "linux")))]
    // SAFETY: getentropy writes exactly 8 bytes into b, or fails.
    let ok = unsafe { libc::getentropy(b.as_mut_ptr().cast(), 8) } == 0;
    #[cfg(windows)]
    let ok = {
        // std's hasher keys come from the system's random source (ProcessPrng).
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        b.copy_from_slice(&h.finish().to_le_bytes());
        true
    };
    if !ok {
        // Session ids only need to be distinct between this process's sessions.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (std::process::id() as u64) << 32;
    }
    u64::from_le_bytes(b)
}

/// Runs blocking filesystem work off the shard's thread, so its endpoint keeps answering
/// packets meanwhile.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    rt::spawn_blocking(f).await
}

/// What a control stream's session has on this end: the push's receiver once planned,
/// and the session as its data streams see it (`Sessions`).
struct Held {
    receiver: Option<Receiver>,
    published: Published,
    /// Bytes of a pull's listed versions (`Live::listed`), held beside its listing.
    listed_bytes: u64,
}

/// Drives a control stream's session (`tpc_core::session::server`): reads its frames
/// when it wants one, writes what it sends, and carries out its requests off the
/// shard's thread (plans and listings on a thread of their own, commits in the
/// blocking pool), so that the shard's endpoint keeps answering packets meanwhile. A
/// session that moves nothing for `--timeout`, reading or writing, is ended.
async fn control(
    send: &mut SendStream,
    recv: &mut RecvStream,
    shared: &Shared,
    mut session: ServerSession,
    key: Fingerprint,
) {
    let mut held = Held {
        receiver: None,
        published: shared
            .sessions
            .publish(session.session_id(), key, session.send_rate()),
        listed_bytes: 0,
    };
    let progress = held.published.live.progress.clone();
    let mut manifest_held = 0;
    let outcome = 'session: loop {
        // The manifest it holds (received, or listed for a pull, with the listed versions
        // of a pull's files) counts against what all sessions may hold.
        let more = session.manifest_bytes() + held.listed_bytes - manifest_held;
        if more > 0 {
            if let Err(r) = shared.admit(|a| a.hold_manifest(&key, more)) {
                let f = Failure::new(ErrorCode::Busy, r.message());
                break Err(ending(send, f).await);
            }
            manifest_held += more;
        }
        while let Some(f) = session.poll_transmit() {
            // A client that stops reading (its window full) is a stall like any other.
            match unless_stalled(shared.timeout, &progress, write_frame(send, &f)).await {
                Some(Ok(())) => {}
                // The client went away.
                Some(Err(e)) => break 'session Err(session_failure(e)),
                None => {
                    send.reset(ErrorCode::Busy as u32);
                    break 'session Err(no_progress(shared.timeout));
                }
            }
        }
        if let Some(outcome) = session.poll_outcome() {
            break outcome;
        }
        if let Some(request) = session.poll_request() {
            carry_out(request, &mut session, shared, &mut held).await;
            continue;
        }
        if !session.wants_frame() {
            // The machine's contract rules this out; never hang on it.
            break Err(Failure::new(ErrorCode::Io, "internal: the session stalled"));
        }
        // Waiting on the client: it must send a frame, or its data streams move chunks,
        // within every `--timeout`; keep-alives alone do not hold the session (and the
        // space its plan reserved).
        let Some(frame) = unless_stalled(shared.timeout, &progress, read_frame(recv)).await else {
            break Err(ending(send, no_progress(shared.timeout)).await);
        };
        match frame {
            Ok(Some(f)) => session.handle_frame(f),
            Err(SessionError::Wire(e)) => session.handle_malformed(e.to_string()),
            // The client went away.
            Ok(None) => break Err(session_failure(SessionError::Ended)),
            Err(e) => break Err(session_failure(e)),
        }
    };
    drop(held.published);
    shared.admit(|a| a.release_manifest(&key, manifest_held));
    let id = session.session_id();
    match outcome {
        Ok(()) => {
            log!("tpc-xfer: session {id:016x}: done");
            let _ = send.finish();
        }
        Err(f) => {
            log!("tpc-xfer: session {id:016x} ended: {}", f.message);
            let _ = send.finish();
            // Leave no temporary file behind.
            if let Some(mut r) = held.receiver.take() {
                // Removing a large session's temporaries is long work too.
                rt::spawn_thread(move || r.abort()).await;
            }
        }
    }
}

/// Tells the client of a session that this end gives up (stalled, or over a limit of
/// the server's) why it ends, if it still reads; returns what to log.
async fn ending(send: &mut SendStream, f: Failure) -> Failure {
    let error = Frame::Error {
        code: f.code,
        message: f.message.clone(),
    };
    // A client that stalled may not read either: do not wait on it for long, and do not
    // leave it half a frame followed by a clean end.
    if rt::within(Duration::from_secs(1), write_frame(send, &error))
        .await
        .is_none()
    {
        send.reset(f.code as u32);
    }
    f
}

/// A data stream's run, given up with `no_progress` if its session moves nothing for a
/// whole `--timeout` (`unless_stalled`).
async fn watched<T>(
    shared: &Shared,
    progress: &Progress,
    run: impl std::future::Future<Output = Result<T, DataError>>,
) -> Result<T, DataError> {
    unless_stalled(shared.timeout, progress, run)
        .await
        .unwrap_or_else(|| Err(DataError::Local(no_progress(shared.timeout))))
}

/// Why a session or its stream was given up by the stall watchdog (`--timeout`).
fn no_progress(timeout: Option<Duration>) -> Failure {
    Failure::new(
        ErrorCode::Busy,
        format!(
            "no progress for {} s (--timeout): given up",
            timeout.map_or(0, |t| t.as_secs())
        ),
    )
}

/// Carries out one request of a control stream's session and feeds back the answer.
async fn carry_out(
    request: Request,
    session: &mut ServerSession,
    shared: &Shared,
    held: &mut Held,
) {
    match request {
        Request::LookUp(base) => {
            let root = shared.root.clone();
            let kind = blocking(move || root.lstat(&base)).await;
            session.handle_looked_up(kind.map_err(|e| confine_failure(&e)).map(|k| match k {
                None => DestKind::Missing,
                Some(s) if s.kind == FileKind::Dir => DestKind::Dir,
                Some(_) => DestKind::Other,
            }));
        }
        Request::Walk { base, name, select } => {
            let root = shared.root.clone();
            // The client's rules are compiled off the shard too: each is a small regex.
            let listed = rt::spawn_thread(move || {
                let filter = select
                    .filter()
                    .map_err(|e| Failure::protocol(e.to_string()))?;
                list(&root, &base, &filter, &name)
            })
            .await;
            session.handle_listed(listed.map(|(listing, files)| {
                held.listed_bytes = files
                    .keys()
                    .map(|path| (path.len() + std::mem::size_of::<(Vec<u8>, Listed)>()) as u64)
                    .sum();
                let _ = held.published.live.listed.set(Arc::new(files));
                listing
            }));
        }
        Request::Plan {
            base,
            session: id,
            durable,
            entries,
        } => {
            let mut r = Receiver::new(
                shared.root.clone(),
                &shared.root_path,
                base,
                id,
                durable,
                true,
            )
            .create_small_files_on_write()
            .commit_only_arrived()
            .keep_root_metadata();
            if let Err(f) = r.add(entries) {
                return session.handle_planned(Err(f));
            }
            held.receiver = Some(r);
            let planned = off_thread(&mut held.receiver, Span::Long, |r| r.plan()).await;
            let lazy = held.receiver.as_ref().expect("put back").stream_share();
            let _ = held.published.live.share.set(lazy);
            session.handle_planned(Ok(planned));
        }
        Request::Commit(files) => {
            let r = &mut held.receiver;
            let (ok, failed) = off_thread(r, Span::Short, move |r| r.commit(&files)).await;
            session.handle_committed(ok, failed);
        }
        Request::Finish { delete } => {
            let r = &mut held.receiver;
            let done = move |r: &mut Receiver| {
                // --delete first: the directories' metadata is set after it.
                let (deleted, left, mut failed) = match delete.map(|d| r.delete(&d)) {
                    None => (0, 0, Vec::new()),
                    Some(Ok(done)) => done,
                    Some(Err(f)) => return Err(f),
                };
                failed.extend(r.finish());
                let finished = Finished {
                    files: r.files_written,
                    bytes: r.bytes_written,
                    deleted,
                    left,
                };
                Ok((failed, finished))
            };
            session.handle_finished(off_thread(r, Span::Long, done).await);
        }
    }
}

/// A data stream of a push: verify and write one run of chunks into the file's temporary
/// file, which the session's control stream created, or which this stream creates for a
/// small file the session left to it (`create_lazy`). Only for a push session in
/// progress here, and only what its plan asked for: the run claims its chunks in the
/// session's [`Arrivals`](tpc_core::session::arrivals) first, and they count as arrived
/// (which a `Commit` of the file needs) before `RangeOk` is sent.
async fn put(
    send: &mut SendStream,
    recv: &mut RecvStream,
    shared: &Shared,
    p: Run,
    key: Fingerprint,
) -> Result<(), Failure> {
    let full = parse_path(&p.path)?;
    let tmp = temp_path(&full, p.session, p.file)?;
    let no_session = || Failure::protocol(format!("{full}: no push session {} here", p.session));
    let live = shared.sessions.get(p.session, key).ok_or_else(no_session)?;
    let share = live.share.get().ok_or_else(no_session)?;
    let bound = !share.files.contains_key(&p.file);
    let arrivals = || share.arrivals.lock().expect("not poisoned");
    if bound {
        arrivals().claim(p.file, p.chunk_first, p.chunk_count)?;
    }
    let written = write_run(recv, shared, share, &live, &p, &full, &tmp).await;
    if bound {
        match written {
            Ok(()) => arrivals().arrived(p.file, p.chunk_first),
            Err(_) => arrivals().release(p.file, p.chunk_first),
        }
    }
    match written {
        Ok(()) => write_frame(send, &Frame::RangeOk)
            .await
            .map_err(session_failure),
        Err(DataError::Local(f)) => Err(f),
        Err(DataError::Session(e)) => Err(session_failure(e)),
    }
}

/// The body of [`put`]: opens (or, for a lazy file, creates) the temporary file, receives
/// the run into it and, for a lazy file, finishes it.
async fn write_run(
    recv: &mut RecvStream,
    shared: &Shared,
    share: &SessionShare,
    live: &Live,
    p: &Run,
    full: &RelPath,
    tmp: &RelPath,
) -> Result<(), DataError> {
    let lazy = share.files.get(&p.file);
    let fd = match lazy {
        Some(lazy) => create_lazy(&shared.root, lazy, full, tmp, p),
        // Otherwise only a temporary file the control stream created can be written: no
        // create (`Access::Write`).
        None => (shared.root.open(tmp, Access::Write))
            .map_err(|e| confine_failure(&e))
            .and_then(|fd| {
                let size = size_of(&fd, full)?;
                check_put(p, full, PutTarget::Planned { size })?;
                Ok(fd)
            }),
    }
    .map_err(DataError::Local)?;
    let direct = open_direct(&shared.root, tmp, p.size, &fd);
    let file = File::from_std(fd);
    let what = full.to_string();
    // The old version of the file, where the client may send chunks as already here.
    let old = if p.codecs & CODECS_SAME != 0 {
        shared
            .root
            .open(full, Access::Read)
            .ok()
            .map(File::from_std)
    } else {
        None
    };
    // Per-chunk timing is the client's to report; the chunks count as the session's
    // progress, and a run that makes none while its session makes none is given up.
    let mut log = RunLog::watched_by(&live.progress);
    let run = receive_run(
        recv,
        &file,
        direct.as_ref(),
        &what,
        p,
        old.as_ref(),
        &mut log,
    );
    let result = watched(shared, &live.progress, run).await;
    let result = match lazy {
        Some(lazy) => {
            let finished = match result {
                Ok(_) => finish_lazy(lazy, &file, share.durable)
                    .await
                    .map_err(DataError::Local),
                Err(e) => Err(e),
            };
            if finished.is_err() {
                // Nothing of a failed run stays behind, and the file may be sent again.
                let _ = shared.root.remove_file(tmp);
                lazy.release();
            }
            finished
        }
        None => result.map(drop),
    };
    let _ = file.close().await;
    if let Some(old) = old {
        let _ = old.close().await;
    }
    result
}

/// Creates the temporary file of a file that its session left to its data stream (see
/// [`Sessions`]). The run must be the planned file, whole, and no other stream may have
/// claimed it: a client cannot create a file its manifest did not plan, or extend one.
fn create_lazy(
    root: &Root,
    lazy: &LazyFile,
    full: &RelPath,
    tmp: &RelPath,
    p: &Run,
) -> Result<std::fs::File, Failure> {
    let planned = PutTarget::Unmade {
        path: &lazy.full,
        size: lazy.size,
    };
    check_put(p, full, planned)?;
    if !lazy.begin() {
        return Err(Failure::new(
            ErrorCode::Protocol,
            format!("{full}: not expecting data (another run has it, or the session is over)"),
        ));
    }
    let fd = match root.open(tmp, Access::CreateNew { mode: 0o600 }) {
        Ok(fd) => fd,
        Err(e) => {
            // Nothing was created: another run may try.
            lazy.release();
            return Err(confine_failure(&e));
        }
    };
    if lazy.is_dead() {
        // The session ended (and cleaned up) while this was being created.
        let _ = root.remove_file(tmp);
        return Err(Failure::new(
            ErrorCode::Protocol,
            format!("{full}: the session is over"),
        ));
    }
    Ok(fd)
}

/// After a lazily created file's data is written and verified: its mode and times, as a
/// commit would set them, so that the commit only has to rename it.
async fn finish_lazy(lazy: &LazyFile, file: &File, durable: bool) -> Result<(), Failure> {
    file.with_std(|f| set_meta(f, &lazy.full, lazy.mode, lazy.mtime))?;
    if durable && !cfg!(target_os = "linux") {
        // No syncfs for a commit batch off Linux: each file is synced through its own
        // handle, on the blocking pool (through a copy of the handle that it owns), so
        // that the shard's thread goes on serving its other streams meanwhile.
        let io = |e: std::io::Error| io_failure(&lazy.full, &e);
        let own = file.with_std(|f| f.try_clone()).map_err(io)?;
        rt::spawn_blocking(move || sync_file(&own))
            .await
            .map_err(io)?;
    }
    if !lazy.written() {
        return Err(Failure::new(
            ErrorCode::Protocol,
            format!("{}: the session is over", lazy.full),
        ));
    }
    Ok(())
}

/// The size of the open file at `full`, for the run checks of Put and Get.
fn size_of(fd: &std::fs::File, full: &RelPath) -> Result<u64, Failure> {
    let st = fstat(fd).map_err(|e| io_failure(full, &std::io::Error::from_raw_os_error(e)))?;
    Ok(st.size_bytes)
}

/// A data stream of a pull: read one run of chunks of a file beneath the root and send
/// it, each chunk followed by its hash.
async fn get(
    send: &mut SendStream,
    shared: &Shared,
    g: Run,
    key: Fingerprint,
) -> Result<(), Failure> {
    let full = parse_path(&g.path)?;
    let fd = shared
        .root
        .open(&full, Access::Read)
        .map_err(|e| confine_failure(&e))?;
    check_get(&g, &full, size_of(&fd, &full)?)?;
    let live = shared.sessions.get(g.session, key);
    // The version the session's listing found, where there is one (a Get outside a pull
    // session is checked by size only).
    let listed = live
        .as_ref()
        .and_then(|l| l.listed.get())
        .and_then(|files| files.get(full.as_bytes()).copied());
    let changed = |e: tpc_engine::SourceChanged| {
        let why = format!("{full}: changed on the server since it was listed ({e})");
        Failure::new(ErrorCode::Changed, why)
    };
    if let Some(l) = &listed {
        l.check(&fd, g.size).map_err(changed)?;
    }
    write_frame(
        send,
        &Frame::Data {
            chunk_count: g.chunk_count,
        },
    )
    .await
    .map_err(session_failure)?;
    let file = File::from_std(fd);
    let what = full.to_string();
    // Per-chunk timing is the client's to report; the chunks count as the session's
    // progress (a Get of no session of this key here counts on its own), and a run that
    // makes none while its session makes none is given up.
    let pace = live.as_ref().and_then(|l| l.pace.clone());
    let progress = live.map_or_else(Progress::default, |l| l.progress.clone());
    let mut log = RunLog::watched_by(&progress).paced(pace);
    // The client's `codecs` say whether it takes compressed chunks; which ones pay is
    // decided here, chunk by chunk.
    let run = send_run(&file, &what, &g, &[], Compression::Auto, send, &mut log);
    let mut result = watched(shared, &progress, run).await;
    // Read from the listed version only: a file rewritten while it was read (its size
    // kept) would otherwise reach the client as a mix of two versions, each chunk's hash
    // taken from the bytes read. The check comes before the stream's end, which the
    // client waits for before it takes the run.
    if let (Ok(_), Some(l)) = (&result, &listed) {
        if let Err(e) = file.with_std(|f| l.check(f, g.size)) {
            result = Err(DataError::Local(changed(e)));
        }
    }
    // End the stream before anything else can yield: the client is waiting for its end.
    let finished = result.is_ok().then(|| send.finish());
    let _ = file.close().await;
    if let Some(Err(e)) = finished {
        return Err(session_failure(e.into()));
    }
    match result {
        Ok(_) => Ok(()),
        Err(DataError::Local(f)) => {
            // Chunk bytes are already on the stream, so a frame cannot follow them: the
            // stream is reset with the error's code, which the client reads as the cause.
            log!("tpc-xfer: refused: {}", f.message);
            send.reset(f.code as u32);
            Ok(())
        }
        Err(DataError::Session(e)) => Err(session_failure(e)),
    }
}

/// A pull's listing: the tree at `base` beneath the root, as manifest entries, and what
/// its top is; and each file's version as listed, by its path beneath the root. Special
/// files are left out. Problems met during the walk and symlinks whose target cannot be
/// read are left out, logged, and told to the client (`Unlisted`, docs/PROTOCOL.md §6).
/// What the client's `filter` leaves out is not listed, nor anything beneath a directory
/// it leaves out; patterns see each path as rsync names it, from `name` (the source's
/// own name, or nothing for `SRC/`). The top itself is always listed.
fn list(
    root: &Root,
    base: &RelPath,
    filter: &Filter,
    name: &[u8],
) -> Result<(Listing, HashMap<Vec<u8>, Listed>), Failure> {
    let (entries, errors) = root
        .walk(base, MANIFEST_ENTRIES_MAX as usize)
        .map_err(|e| confine_failure(&e))?;
    let mut unlisted = Vec::with_capacity(errors.len());
    for e in &errors {
        log!("tpc-xfer: pull of {base}: {e}");
        unlisted.push(confine_failure(e));
    }
    let dest = if entries
        .first()
        .is_some_and(|(_, s)| s.kind == FileKind::Dir)
    {
        DestKind::Dir
    } else {
        DestKind::Other
    };
    let mut wire = Vec::with_capacity(entries.len());
    let mut files = HashMap::new();
    // Directories left out: a walk lists each directory before what it holds.
    let mut left_out: HashSet<Vec<u8>> = HashSet::new();
    for (rel, st) in entries {
        if !filter.is_empty() && !rel.is_root() && rel != *base {
            let inside = rel
                .parent()
                .is_some_and(|p| left_out.contains(p.as_bytes()));
            let own = &rel.as_bytes()[base.as_bytes().len()..];
            let own = own.strip_prefix(b"/").unwrap_or(own);
            let path = if name.is_empty() {
                own.to_vec()
            } else {
                [name, b"/", own].concat()
            };
            let is_dir = st.kind == FileKind::Dir;
            let size = (st.kind == FileKind::File).then_some(st.size_bytes);
            if inside || filter.excludes(&path, is_dir, size) {
                if is_dir {
                    left_out.insert(rel.as_bytes().to_vec());
                }
                continue;
            }
        }
        if st.kind == FileKind::File {
            let listed = Listed {
                inode: st.inode,
                mtime: st.mtime,
            };
            files.insert(rel.as_bytes().to_vec(), listed);
        }
        let path = rel.as_bytes()[base.as_bytes().len()..]
            .strip_prefix(b"/")
            .unwrap_or(&rel.as_bytes()[base.as_bytes().len()..])
            .to_vec();
        let (kind, target) = match st.kind {
            FileKind::File => (WireKind::File, Vec::new()),
            FileKind::Dir => (WireKind::Dir, Vec::new()),
            FileKind::Symlink => match root.read_link(&rel) {
                Ok(t) => (WireKind::Symlink, t),
                Err(e) => {
                    log!("tpc-xfer: pull of {base}: {e}");
                    unlisted.push(confine_failure(&e));
                    continue;
                }
            },
            FileKind::Other => continue,
        };
        wire.push(Entry {
            kind,
            path,
            size: if kind == WireKind::File {
                st.size_bytes
            } else {
                0
            },
            mode: st.mode & 0o7777,
            mtime: st.mtime,
            target,
            hashes: Vec::new(),
        });
    }
    let listing = Listing {
        kind: dest,
        entries: wire,
        unlisted,
    };
    Ok((listing, files))
}
