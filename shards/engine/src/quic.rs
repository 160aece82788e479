//! QUIC for one shard: a `quinn_proto::Endpoint` on a UDP socket that the shard owns,
//! driven from the shard's executor, with async streams for the shard's tasks.
//!
//! Why not glommio's own `UdpSocket`: it has no GSO, GRO or recvmmsg, and moving bulk
//! data through QUIC is packet-rate bound (~3x, docs/ARCHITECTURE.md "Facts measured"). So datagrams go
//! through `quinn-udp` on a non-blocking socket on either driver, and the driver only
//! says when the socket is readable (`rt::Readable`).
//!
//! Everything here is single-threaded: the endpoint, its connections and the wakers of
//! the tasks waiting on them live in one `Rc<RefCell<State>>`. A driver task does the
//! I/O: it feeds received datagrams to the endpoint, fires timers, sends what the
//! connections have to send, and wakes tasks whose streams became readable or writable.
//! Stream operations change connection state directly and then nudge the driver.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::recv_pool::{self, RecvPool};
use bytes::Bytes;
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event,
    ServerConfig, StreamEvent, StreamId, Transmit, VarInt,
};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tpc_core::window::{WindowTuner, ENDPOINT_WINDOW_BYTES_MAX};

/// Largest UDP payload of one `sendmsg`: a GSO batch must fit, or the kernel refuses it
/// with EMSGSIZE and quinn-udp drops the whole batch silently (docs/ARCHITECTURE.md,
/// "Facts measured").
const GSO_BATCH_BYTES_MAX: usize = 65507;

/// Handshakes one endpoint carries at once from validated addresses; further Initials
/// are refused (CONNECTION_REFUSED) until some complete. A session opens one connection
/// per client shard, so this is many sessions starting at the same moment.
pub const HANDSHAKES_MAX: usize = 256;

/// Handshakes in flight above which an Initial from an address that has not proved it
/// receives gets a stateless Retry first. Below it a handshake starts at once: a Retry
/// costs every connection a round trip (at 50 ms RTT a session's two rounds of dials
/// took 0.1 s longer, 4% of a 256 MiB push), and sixteen half-open handshakes per shard
/// are cheap to hold. A flood of spoofed Initials fills these within its first packets
/// and from then on costs the shard one Retry packet each.
pub const RETRY_ABOVE_HANDSHAKES: usize = 16;

/// Socket buffers. On loopback or a fast link a burst arrives faster than one executor
/// turn; a kernel default of ~200 KiB drops it and the congestion controller collapses.
pub const SOCKET_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// Transmits the driver sends for one connection before it looks at the socket again,
/// so a connection with much to send cannot starve receiving and acknowledgements.
const TRANSMITS_PER_TURN_MAX: usize = 32;

/// How long the driver waits before retrying a send that found the socket buffer full.
/// glommio offers no writability wait; a full buffer drains in well under this (the
/// portable driver could wait for writability, but one rule for both keeps them alike).
const SEND_RETRY_DELAY: Duration = Duration::from_micros(100);

/// Environment variable that turns on a periodic trace of every connection's path state
/// (RTT, congestion and flow-control windows, pacing rate, losses, flow-control frames)
/// on stderr, every so many seconds: what `--json` shows only once the transfer is over,
/// while it runs.
pub const TRACE_ENV: &str = "TPC_XFER_TRACE_QUIC";

/// Longest trace interval accepted, in seconds; beyond it a typo is more likely than intent.
const TRACE_INTERVAL_MAX_SECS: f64 = 3600.0;

/// The trace interval `TRACE_ENV` asks for, if it names a number of seconds.
fn trace_interval() -> Option<Duration> {
    let v = std::env::var(TRACE_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())?;
    match v.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= TRACE_INTERVAL_MAX_SECS => Some(Duration::from_secs_f64(s)),
        _ => {
            eprintln!(
                "tpc-xfer: {TRACE_ENV}={v:?} ignored: give seconds between traces \
                 (above 0, at most {TRACE_INTERVAL_MAX_SECS})"
            );
            None
        }
    }
}

/// One trace line of a connection: cumulative counters, so two lines give rates.
fn trace_line(local: Option<SocketAddr>, conn: &Conn) -> String {
    let c = &conn.conn;
    let s = c.stats();
    let m = c.congestion_state().metrics();
    let side = if c.side().is_server() {
        "server"
    } else {
        "client"
    };
    let mbit = |bytes_per_sec_bits: Option<u64>| {
        bytes_per_sec_bits.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1e6))
    };
    // Wall-clock time, so the lines of both ends (two processes) line up.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    format!(
        "tpc-xfer trace: at={at:.3} {side} {} -> {} rtt_ms={:.1} min_rtt_ms={:.1} cwnd={} \
         cap={} pacing_mbit={} rwnd={} swnd={} mtu={} sent_pkts={} lost_pkts={} congestion_events={} \
         black_holes={} tx[stream={} max_data={} max_stream_data={} data_blocked={} \
         stream_data_blocked={}] rx[stream={} max_data={} max_stream_data={} \
         data_blocked={} stream_data_blocked={}]",
        local.map_or_else(|| "?".into(), |a| a.to_string()),
        c.remote_address(),
        s.path.rtt.as_secs_f64() * 1e3,
        s.path.min_rtt.as_secs_f64() * 1e3,
        s.path.cwnd,
        m.ssthresh.map_or_else(|| "-".into(), |t| t.to_string()),
        mbit(m.pacing_rate),
        conn.receive_window.window(),
        conn.send_window.window(),
        s.path.current_mtu,
        s.path.sent_packets,
        s.path.lost_packets,
        s.path.congestion_events,
        s.path.black_holes_detected,
        s.frame_tx.stream,
        s.frame_tx.max_data,
        s.frame_tx.max_stream_data,
        s.frame_tx.data_blocked,
        s.frame_tx.stream_data_blocked,
        s.frame_rx.stream,
        s.frame_rx.max_data,
        s.frame_rx.max_stream_data,
        s.frame_rx.data_blocked,
        s.frame_rx.stream_data_blocked,
    )
}

/// Why a stream or connection operation failed.
#[derive(Clone, Debug)]
pub enum QuicError {
    /// The connection is gone; the reason says whether the peer closed it or it timed out.
    Lost(ConnectionError),
    /// The peer reset its sending side of the stream with this code.
    Reset(u64),
    /// The peer asked us to stop sending on this stream with this code.
    Stopped(u64),
    /// The stream was already finished or reset by us.
    Closed,
    Connect(String),
}

impl std::fmt::Display for QuicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A close's reason is the peer's text: its control characters are escaped,
            // as every peer message's are (`wire::escape_controls`).
            QuicError::Lost(e) => write!(
                f,
                "connection lost: {}",
                tpc_core::wire::escape_controls(&e.to_string())
            ),
            QuicError::Reset(c) => write!(f, "stream reset by peer (code {c})"),
            QuicError::Stopped(c) => write!(f, "stream stopped by peer (code {c})"),
            QuicError::Closed => write!(f, "stream already closed"),
            QuicError::Connect(e) => write!(f, "cannot connect: {e}"),
        }
    }
}

impl std::error::Error for QuicError {}

struct Conn {
    conn: quinn_proto::Connection,
    connected: bool,
    lost: Option<ConnectionError>,
    deadline: Option<Instant>,
    /// Tasks waiting for the handshake, a new stream, or stream credit.
    waiters: Vec<Waker>,
    readable: HashMap<StreamId, Waker>,
    writable: HashMap<StreamId, Waker>,
    /// Server side: announced to `accept()` once the handshake is done.
    announced: bool,
    /// Flow-control windows from the measured bandwidth-delay product, each direction,
    /// measured on what the application moved: stream bytes it read and wrote (a peer
    /// can pad or repeat datagrams, but not make us read more than it really sent).
    receive_window: WindowTuner,
    send_window: WindowTuner,
    bytes_read: u64,
    bytes_written: u64,
    /// The path's minimum RTT at the last tuning sample: when the next one is due.
    tune_rtt: Duration,
    /// Closed by us or the peer, with nothing left to transmit: our CONNECTION_CLOSE (if
    /// any) has gone to the socket.
    close_sent: bool,
    /// Permits for the chunk buffers this connection's senders stage
    /// (`send_staged_chunks` of the send window; more are added as it grows), one set
    /// per connection so that one peer's stalled streams never hold another's permits.
    staging: Rc<async_lock::Semaphore>,
    staging_permits: usize,
}

impl Conn {
    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
        for (_, w) in self.readable.drain() {
            w.wake();
        }
        for (_, w) in self.writable.drain() {
            w.wake();
        }
    }
}

struct State {
    endpoint: quinn_proto::Endpoint,
    socket: UdpSocket,
    udp: UdpSocketState,
    /// The buffers datagrams are received into and handed on in.
    recv_pool: RecvPool,
    conns: HashMap<ConnectionHandle, Conn>,
    /// Connections that need a turn of the driver (events, transmits, timers).
    dirty: HashSet<ConnectionHandle>,
    /// Server side: handshaken connections not yet taken by `accept()`.
    accepted: VecDeque<ConnectionHandle>,
    accept_waiter: Option<Waker>,
    driver: Option<Waker>,
    /// A transmit the kernel had no room for; sent before anything else.
    pending: Option<(Transmit, Vec<u8>)>,
    /// Makes the server's per-connection transport config (its MTU bound depends on
    /// the route to the client).
    server_config: Option<Box<dyn Fn(SocketAddr) -> Arc<ServerConfig>>>,
    closing: bool,
    /// Origin of the times the window tuners see (they read no clock themselves).
    epoch: Instant,
}

/// One shard's QUIC endpoint. Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct Endpoint {
    state: Rc<RefCell<State>>,
}

impl Endpoint {
    /// Takes a bound UDP socket (see [`bind_socket`]), sets up GSO/GRO through quinn-udp,
    /// and starts the driver task on the current shard. `server_config`, when
    /// given, builds the config for a connection from a client at the given address;
    /// without it incoming connections are refused.
    pub fn new(
        socket: UdpSocket,
        server_config: Option<Box<dyn Fn(SocketAddr) -> Arc<ServerConfig>>>,
    ) -> io::Result<Endpoint> {
        let udp = UdpSocketState::new(UdpSockRef::from(&socket))?;
        set_socket_buffers(&socket);
        // quinn-proto only considers incoming connections when the endpoint has a server
        // config; the per-client one (`accept`) then replaces it for each connection.
        let default_server = server_config
            .as_ref()
            .map(|make| make(SocketAddr::from(([0, 0, 0, 0], 0))));
        let mut endpoint_config = EndpointConfig::default();
        // Advertise that we take datagrams up to the UDP maximum (quinn's default, 1480,
        // would cap every path at Ethernet size); MTU discovery then finds what the path
        // really carries.
        endpoint_config
            .max_udp_payload_size(65527)
            .expect("65527 is a valid QUIC max_udp_payload_size");
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config),
            default_server,
            // quinn-udp sets IP_PMTUDISC_PROBE / IPV6_DONTFRAG, so probes are never
            // fragmented and path MTU discovery is sound.
            !udp.may_fragment(),
            None,
        );
        let state = Rc::new(RefCell::new(State {
            endpoint,
            socket,
            udp,
            recv_pool: RecvPool::new(),
            conns: HashMap::new(),
            dirty: HashSet::new(),
            accepted: VecDeque::new(),
            accept_waiter: None,
            driver: None,
            pending: None,
            server_config,
            closing: false,
            epoch: Instant::now(),
        }));
        let ep = Endpoint { state };
        let driver = ep.clone();
        crate::rt::spawn_local(async move { driver.drive().await }).detach();
        Ok(ep)
    }

    /// Stops accepting connections; the driver ends once the existing ones have drained.
    pub fn shutdown(&self) {
        let mut st = self.state.borrow_mut();
        st.closing = true;
        if let Some(w) = st.accept_waiter.take() {
            w.wake();
        }
        st.wake_driver();
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.state.borrow().socket.local_addr()
    }

    /// Connects and completes the handshake (including the server key check).
    pub async fn connect(
        &self,
        config: ClientConfig,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, QuicError> {
        let handle = {
            let mut st = self.state.borrow_mut();
            let (handle, conn) = st
                .endpoint
                .connect(Instant::now(), config, remote, server_name)
                .map_err(|e| QuicError::Connect(e.to_string()))?;
            st.conns.insert(handle, new_conn(conn));
            st.dirty.insert(handle);
            st.wake_driver();
            handle
        };
        let conn = Connection {
            ep: self.clone(),
            handle,
        };
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            let c = st
                .conns
                .get_mut(&handle)
                .expect("connection outlives connect");
            if let Some(e) = &c.lost {
                return Poll::Ready(Err(QuicError::Lost(e.clone())));
            }
            if c.connected {
                return Poll::Ready(Ok(()));
            }
            c.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(conn)
    }

    /// The next connection whose handshake completed (client authenticated).
    pub async fn accept(&self) -> Option<Connection> {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if let Some(handle) = st.accepted.pop_front() {
                return Poll::Ready(Some(Connection {
                    ep: self.clone(),
                    handle,
                }));
            }
            if st.closing {
                return Poll::Ready(None);
            }
            st.accept_waiter = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The connections the endpoint holds: in their handshake, established, or draining.
    pub fn connection_count(&self) -> usize {
        self.state.borrow().conns.len()
    }

    /// Waits until every connection is closed and its CONNECTION_CLOSE has been handed to
    /// the socket, without waiting out the draining period (three probe timeouts: 0.3 s
    /// at 50 ms RTT) that `wait_idle` does. For a client that exits once its session is
    /// over: if that one packet is lost, the server's side of the connection ends at its
    /// idle timeout instead, with nothing left to transfer.
    pub async fn wait_closed(&self) {
        self.wait_for_all(|c| c.close_sent).await
    }

    /// Waits until every connection has closed and drained (so the peer got our close).
    pub async fn wait_idle(&self) {
        // A drained connection leaves the map: idle is an empty one.
        self.wait_for_all(|_| false).await
    }

    /// Waits until `done` holds for every connection still in the map, looking again
    /// whenever one of them has news.
    async fn wait_for_all(&self, done: impl Fn(&Conn) -> bool) {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.conns.values().all(&done) {
                return Poll::Ready(());
            }
            for c in st.conns.values_mut() {
                c.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The driver: receive, time out, transmit, then sleep until the socket is readable,
    /// a timer is due, or a task has given a connection something to send.
    async fn drive(self) {
        // Readiness comes through a second handle on the same socket, so its owner's
        // lifetime is independent of the state's.
        let readiness = match crate::rt::Readable::new(&self.state.borrow().socket) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tpc-xfer: cannot watch the UDP socket: {e}");
                return;
            }
        };
        let mut send_buf = Vec::with_capacity(GSO_BATCH_BYTES_MAX);
        let trace_every = trace_interval();
        let mut next_trace = Instant::now();
        loop {
            let (wait, send_blocked) = {
                let mut st = self.state.borrow_mut();
                // Each step reads the clock afresh: receiving a burst can take
                // milliseconds, and a packet stamped with a time from before it arrived
                // makes RTT samples (and the congestion model's minimum RTT) too short.
                st.receive();
                let now = Instant::now();
                st.fire_timers(now);
                let blocked = st.service(&mut send_buf);
                if let Some(every) = trace_every.filter(|_| now >= next_trace) {
                    next_trace = now + every;
                    let local = st.socket.local_addr().ok();
                    for c in st.conns.values() {
                        eprintln!("{}", trace_line(local, c));
                    }
                }
                if st.closing && st.conns.is_empty() {
                    return;
                }
                let deadline = st.conns.values().filter_map(|c| c.deadline).min();
                (deadline, blocked)
            };
            let now = Instant::now();
            let mut sleep_for = wait.map(|d| d.saturating_duration_since(now));
            if send_blocked {
                sleep_for = Some(sleep_for.map_or(SEND_RETRY_DELAY, |d| d.min(SEND_RETRY_DELAY)));
            }
            if sleep_for == Some(Duration::ZERO) {
                crate::rt::yield_now().await;
                continue;
            }
            let nudged = poll_fn(|cx| {
                if send_blocked {
                    // The blocked connections stay dirty: waiting on that would spin. The
                    // retry timer below comes back for them.
                    return Poll::Pending;
                }
                let mut st = self.state.borrow_mut();
                if !st.dirty.is_empty() {
                    return Poll::Ready(());
                }
                st.driver = Some(cx.waker().clone());
                Poll::Pending
            });
            let readable = readiness.wait();
            let timer = async {
                match sleep_for {
                    Some(d) => crate::rt::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            futures_lite::future::or(nudged, futures_lite::future::or(readable, timer)).await;
        }
    }
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Reads every queued datagram (recvmmsg + GRO) and hands each to the endpoint, as a
    /// piece of the buffer the kernel wrote it into (`recv_pool`), uncopied unless it is
    /// small.
    fn receive(&mut self) {
        let mut meta = [RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut response = Vec::new();
        loop {
            let n = {
                let mut slices: Vec<IoSliceMut> = self
                    .recv_pool
                    .ready(quinn_udp::BATCH_SIZE)
                    .map(IoSliceMut::new)
                    .collect();
                match self
                    .udp
                    .recv(UdpSockRef::from(&self.socket), &mut slices, &mut meta)
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    // ICMP errors (port unreachable) surface here; the connection's own
                    // timers decide what they mean.
                    Err(_) => return,
                }
            };
            let now = Instant::now();
            let trains = self.recv_pool.take(meta[..n].iter().map(|m| m.len));
            for (m, mut train) in meta.iter().zip(trains) {
                let stride = m.stride.max(1);
                while !train.is_empty() {
                    let datagram = recv_pool::datagram(train.split_to(stride.min(train.len())));
                    let ev = self.endpoint.handle(
                        now,
                        m.addr,
                        m.dst_ip,
                        m.ecn.map(ecn_to_proto),
                        datagram,
                        &mut response,
                    );
                    match ev {
                        Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                            if let Some(c) = self.conns.get_mut(&h) {
                                c.conn.handle_event(ev);
                                self.dirty.insert(h);
                            }
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            self.incoming(incoming, now, &mut response);
                        }
                        Some(DatagramEvent::Response(t)) => {
                            let _ = self.send_now(&t, &response[..t.size]);
                        }
                        None => {}
                    }
                    response.clear();
                }
            }
        }
    }

    fn incoming(&mut self, incoming: quinn_proto::Incoming, now: Instant, buf: &mut Vec<u8>) {
        let Some(make) = &self.server_config else {
            let t = self.endpoint.refuse(incoming, buf);
            let _ = self.send_now(&t, &buf[..t.size]);
            return;
        };
        if self.closing {
            let t = self.endpoint.refuse(incoming, buf);
            let _ = self.send_now(&t, &buf[..t.size]);
            return;
        }
        // Address validation under load: once RETRY_ABOVE_HANDSHAKES handshakes are in
        // flight, an Initial whose source address has not proved it receives (a Retry
        // round trip) costs this end one stateless Retry packet, no connection state and
        // no route lookup (`make`), so spoofed Initials cannot make the server do work
        // for an address that never answers (issue 25, finding 4).
        let handshaking = self.conns.values().filter(|c| !c.connected).count();
        // (A Retry token that does not validate never gets here: quinn-proto closes
        // with INVALID_TOKEN, and an unvalidated Initial may always be retried.)
        let refuse = if incoming.remote_address_validated() {
            handshaking >= HANDSHAKES_MAX
        } else if handshaking >= RETRY_ABOVE_HANDSHAKES {
            match self.endpoint.retry(incoming, buf) {
                Ok(t) => {
                    let _ = self.send_now(&t, &buf[..t.size]);
                }
                Err(e) => self.endpoint.ignore(e.into_incoming()),
            }
            return;
        } else {
            false
        };
        if refuse {
            let t = self.endpoint.refuse(incoming, buf);
            let _ = self.send_now(&t, &buf[..t.size]);
            return;
        }
        let config = make(incoming.remote_address());
        match self.endpoint.accept(incoming, now, buf, Some(config)) {
            Ok((h, conn)) => {
                let mut c = new_conn(conn);
                c.announced = false;
                self.conns.insert(h, c);
                self.dirty.insert(h);
            }
            Err(e) => {
                if let Some(t) = e.response {
                    let _ = self.send_now(&t, &buf[..t.size]);
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for (h, c) in self.conns.iter_mut() {
            if c.deadline.is_some_and(|d| d <= now) {
                c.deadline = None;
                c.conn.handle_timeout(now);
                self.dirty.insert(*h);
            }
        }
    }

    /// Gives every dirty connection its turn. Returns true if the socket was full.
    fn service(&mut self, buf: &mut Vec<u8>) -> bool {
        if let Some((t, data)) = self.pending.take() {
            match self.send_now(&t, &data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending = Some((t, data));
                    return true;
                }
                _ => {}
            }
        }
        let dirty: Vec<ConnectionHandle> = self.dirty.drain().collect();
        let max_gso = self.udp.max_gso_segments().max(1);
        let mut blocked = false;
        for h in dirty {
            let Some(mut c) = self.conns.remove(&h) else {
                continue;
            };
            if c.connected {
                // Before transmitting, so a grown receive window's MAX_DATA goes out now.
                let now = Instant::now().saturating_duration_since(self.epoch);
                tune_windows(&mut c, now, &self.conns);
            }
            let mut sent = 0;
            // Whether quinn-proto had nothing more to send this turn.
            let mut ran_dry = false;
            while !blocked {
                if sent == TRANSMITS_PER_TURN_MAX {
                    // More to send: come back after looking at the socket.
                    self.dirty.insert(h);
                    break;
                }
                let mtu = c.conn.current_mtu() as usize;
                let max_datagrams = max_gso.min(GSO_BATCH_BYTES_MAX / mtu).max(1);
                buf.clear();
                // The send time quinn-proto records is when the packet really left.
                let now = Instant::now();
                let Some(t) = c.conn.poll_transmit(now, max_datagrams, buf) else {
                    ran_dry = true;
                    break;
                };
                sent += 1;
                if let Err(e) = self.send_now(&t, &buf[..t.size]) {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        let data = buf[..t.size].to_vec();
                        self.pending = Some((t, data));
                        self.dirty.insert(h);
                        blocked = true;
                    }
                    // Other send errors are like a lost packet; QUIC recovers.
                }
            }
            if blocked {
                // The socket filled (on this or an earlier connection): this one may have
                // more to send once it drains.
                self.dirty.insert(h);
            }
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(ev) = self.endpoint.handle_event(h, ev) {
                    c.conn.handle_event(ev);
                    self.dirty.insert(h);
                }
            }
            while let Some(ev) = c.conn.poll() {
                match ev {
                    Event::Connected => {
                        c.connected = true;
                        c.wake_all();
                        if !c.announced && c.conn.side().is_server() {
                            c.announced = true;
                            self.accepted.push_back(h);
                            if let Some(w) = self.accept_waiter.take() {
                                w.wake();
                            }
                        }
                    }
                    Event::ConnectionLost { reason } => {
                        c.lost = Some(reason);
                        c.wake_all();
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        if let Some(w) = c.readable.remove(&id) {
                            w.wake();
                        }
                    }
                    Event::Stream(StreamEvent::Writable { id })
                    | Event::Stream(StreamEvent::Finished { id })
                    | Event::Stream(StreamEvent::Stopped { id, .. }) => {
                        if let Some(w) = c.writable.remove(&id) {
                            w.wake();
                        }
                        if let Some(w) = c.readable.remove(&id) {
                            w.wake();
                        }
                    }
                    Event::Stream(StreamEvent::Opened { .. })
                    | Event::Stream(StreamEvent::Available { .. }) => {
                        for w in c.waiters.drain(..) {
                            w.wake();
                        }
                    }
                    Event::HandshakeDataReady
                    | Event::DatagramReceived
                    | Event::DatagramsUnblocked => {}
                }
            }
            if ran_dry && !c.close_sent && c.conn.is_closed() {
                // Nothing left to transmit after the close: the close packet is out.
                c.close_sent = true;
                c.wake_all();
            }
            c.deadline = c.conn.poll_timeout();
            if c.conn.is_drained() {
                c.lost.get_or_insert(ConnectionError::LocallyClosed);
                c.wake_all();
                continue;
            }
            self.conns.insert(h, c);
        }
        blocked
    }

    fn send_now(&self, t: &Transmit, data: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t.ecn.map(ecn_from_proto),
            contents: data,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        self.udp.try_send(UdpSockRef::from(&self.socket), &transmit)
    }
}

/// Grows a connection's flow-control windows to what it moved per round trip (see
/// tpc_core::window), at most once per RTT each, within what the shard's `others`
/// connections leave of `ENDPOINT_WINDOW_BYTES_MAX`. The tuners say when a sample is due,
/// so most turns do not read the connection's statistics.
fn tune_windows(c: &mut Conn, now: Duration, others: &HashMap<ConnectionHandle, Conn>) {
    let due = |t: &WindowTuner| t.next_sample(c.tune_rtt).is_none_or(|at| now >= at);
    if !due(&c.receive_window) && !due(&c.send_window) {
        return;
    }
    // The minimum RTT: a peer that delays its acks stretches the smoothed one.
    c.tune_rtt = c.conn.stats().path.min_rtt;
    let headroom = |mine: u64, window: fn(&Conn) -> u64| {
        let used: u64 = others.values().map(window).sum::<u64>() + mine;
        ENDPOINT_WINDOW_BYTES_MAX.saturating_sub(used)
    };
    let room = headroom(c.receive_window.window(), |o| o.receive_window.window());
    if let Some(w) = c
        .receive_window
        .on_sample(now, c.bytes_read, c.tune_rtt, room)
    {
        c.conn
            .set_receive_window(VarInt::from_u64(w).expect("window limit fits a varint"));
    }
    let room = headroom(c.send_window.window(), |o| o.send_window.window());
    if let Some(w) = c
        .send_window
        .on_sample(now, c.bytes_written, c.tune_rtt, room)
    {
        c.conn.set_send_window(w);
        let staged = tpc_core::window::send_staged_chunks(w);
        if staged > c.staging_permits {
            c.staging.add_permits(staged - c.staging_permits);
            c.staging_permits = staged;
        }
    }
}

fn new_conn(conn: quinn_proto::Connection) -> Conn {
    Conn {
        conn,
        connected: false,
        lost: None,
        deadline: None,
        waiters: Vec::new(),
        readable: HashMap::new(),
        writable: HashMap::new(),
        announced: true,
        receive_window: WindowTuner::new(),
        send_window: WindowTuner::starting_at(tpc_core::window::SEND_WINDOW_BYTES_INITIAL),
        bytes_read: 0,
        bytes_written: 0,
        tune_rtt: Duration::ZERO,
        close_sent: false,
        staging: Rc::new(async_lock::Semaphore::new(
            tpc_core::window::SEND_STAGED_CHUNKS,
        )),
        staging_permits: tpc_core::window::SEND_STAGED_CHUNKS,
    }
}

fn ecn_to_proto(e: quinn_udp::EcnCodepoint) -> quinn_proto::EcnCodepoint {
    match e {
        quinn_udp::EcnCodepoint::Ect0 => quinn_proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => quinn_proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => quinn_proto::EcnCodepoint::Ce,
    }
}

fn ecn_from_proto(e: quinn_proto::EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match e {
        quinn_proto::EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        quinn_proto::EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        quinn_proto::EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}

/// Sets both socket buffers to `SOCKET_BUFFER_BYTES`: on Linux beyond `rmem_max` when
/// privileged (the FORCE variants), else (and elsewhere) as far as the OS allows.
fn set_socket_buffers(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        set_buffer_force(socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        set_buffer_force(socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let s = socket2::SockRef::from(socket);
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    }
}

#[cfg(target_os = "linux")]
fn set_buffer_force(socket: &UdpSocket, force: libc::c_int, plain: libc::c_int) {
    let bytes = SOCKET_BUFFER_BYTES as libc::c_int;
    for opt in [force, plain] {
        // SAFETY: setsockopt with a valid fd and an int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// The path MTU the kernel knows for `remote` (the outgoing interface's MTU unless a
/// smaller one was learned), as the largest UDP payload: QUIC's MTU discovery searches up
/// to this, so loopback and jumbo-frame links get large packets and a 1500-byte link
/// does not waste probes. Off Linux (no IP_MTU) it is not asked: discovery starts from
/// QUIC's default and climbs as far as the path carries.
pub fn udp_payload_max_towards(remote: SocketAddr) -> Option<u16> {
    #[cfg(not(target_os = "linux"))]
    {
        let _ = remote;
        None
    }
    #[cfg(target_os = "linux")]
    path_mtu_payload(remote)
}

#[cfg(target_os = "linux")]
fn path_mtu_payload(remote: SocketAddr) -> Option<u16> {
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(remote).ok()?;
    let (level, opt, overhead) = if remote.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU, 48)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU, 28)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &mut mtu as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 || mtu <= overhead {
        return None;
    }
    // A UDP payload is at most 65,535 bytes less the UDP header (and, in IPv4, the IP
    // header inside the same 16-bit length): 65,507 for IPv4, 65,527 for IPv6 (which is
    // also quinn-proto's cap). Loopback's 65,536-byte MTU would otherwise name 65,508.
    let max = if remote.is_ipv6() { 65527 } else { 65507 };
    Some((mtu - overhead).min(max) as u16)
}

/// Binds a UDP socket for an endpoint. Done before the shards start, so that a port in use
/// is reported once, up front, and the ports of all shards are known.
pub fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Listening on [::] takes IPv4 clients too, as users expect.
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// One QUIC connection of this shard.
#[derive(Clone)]
pub struct Connection {
    ep: Endpoint,
    handle: ConnectionHandle,
}

impl Connection {
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let mut st = self.ep.state.borrow_mut();
        let r = st.conns.get_mut(&self.handle).map(f);
        st.dirty.insert(self.handle);
        st.wake_driver();
        r
    }

    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.with(|c| c.conn.remote_address())
    }

    /// The peer's certificate chain, for the caller's own identity checks.
    pub fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.with(|c| c.conn.crypto_session().peer_identity())
            .flatten()
    }

    /// The largest UDP payload currently used on this path (after MTU discovery).
    pub fn current_mtu(&self) -> u16 {
        self.with(|c| c.conn.current_mtu()).unwrap_or(0)
    }

    /// Bytes per second this connection can send, as its congestion controller sees it:
    /// the pacing rate where the controller estimates the bottleneck's bandwidth, else
    /// one window per smoothed RTT; `None` before the controller has measured anything.
    /// Only an estimate of what the path allows when the sender keeps it busy: a sender
    /// held back (by the disk, or by compressing) sees a rate near its own.
    pub fn send_rate_estimate(&self) -> Option<f64> {
        self.with(|c| {
            let m = c.conn.congestion_state().metrics();
            match m.pacing_rate {
                Some(0) => None,
                Some(bits_per_sec) => Some(bits_per_sec as f64 / 8.0),
                None => Some(m.congestion_window as f64 / c.conn.rtt().as_secs_f64().max(1e-6)),
            }
        })
        .flatten()
    }

    /// The permits a sender takes before reading a chunk to send on this connection and
    /// gives back once the chunk is handed to QUIC (`send_staged_chunks` of its send
    /// window); `None` once the connection is gone.
    pub fn send_staging(&self) -> Option<Rc<async_lock::Semaphore>> {
        self.with(|c| Rc::clone(&c.staging))
    }

    /// The larger of this connection's two flow-control windows as tuned so far, in
    /// bytes: what the streams in flight on it should be able to fill.
    pub fn flow_window(&self) -> u64 {
        self.with(|c| c.receive_window.window().max(c.send_window.window()))
            .unwrap_or(tpc_core::window::FLOW_WINDOW_BYTES_INITIAL)
    }

    /// quinn-proto's counters for this connection (RTT, window, packets sent and lost,
    /// congestion events), for summaries and benchmarks.
    pub fn stats(&self) -> Option<quinn_proto::ConnectionStats> {
        self.with(|c| c.conn.stats())
    }

    pub fn lost_reason(&self) -> Option<ConnectionError> {
        let st = self.ep.state.borrow();
        match st.conns.get(&self.handle) {
            Some(c) => c.lost.clone(),
            None => Some(ConnectionError::LocallyClosed),
        }
    }

    /// Opens a bidirectional stream, waiting for stream credit from the peer.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), QuicError> {
        let id = poll_fn(|cx| {
            let mut st = self.ep.state.borrow_mut();
            let Some(c) = st.conns.get_mut(&self.handle) else {
                return Poll::Ready(Err(QuicError::Lost(ConnectionError::LocallyClosed)));
            };
            if let Some(e) = &c.lost {
                return Poll::Ready(Err(QuicError::Lost(e.clone())));
            }
            if let Some(id) = c.conn.streams().open(Dir::Bi) {
                return Poll::Ready(Ok(id));
            }
            c.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(self.pair(id))
    }

    /// The next stream the peer opened, or `None` once the connection is gone.
    pub async fn accept_bi(&self) -> Option<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| {
            let mut st = self.ep.state.borrow_mut();
            let handle = self.handle;
            let Some(c) = st.conns.get_mut(&handle) else {
                return Poll::Ready(None);
            };
            if let Some(id) = c.conn.streams().accept(Dir::Bi) {
                // Accepting may raise the peer's stream limit: that must be sent.
                st.dirty.insert(handle);
                st.wake_driver();
                return Poll::Ready(Some(id));
            }
            if c.lost.is_some() {
                return Poll::Ready(None);
            }
            c.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Some(self.pair(id))
    }

    fn pair(&self, id: StreamId) -> (SendStream, RecvStream) {
        (
            SendStream {
                conn: self.clone(),
                id,
                finished: false,
            },
            RecvStream {
                conn: self.clone(),
                id,
                buffered: Bytes::new(),
                finished: false,
            },
        )
    }

    /// Closes the connection with an application code and reason the peer will see.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.with(|c| {
            c.conn.close(
                Instant::now(),
                VarInt::from_u32(code),
                Bytes::copy_from_slice(reason),
            )
        });
    }
}

/// The sending half of a bidirectional stream.
pub struct SendStream {
    conn: Connection,
    id: StreamId,
    finished: bool,
}

impl SendStream {
    /// The connection this stream belongs to.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Writes all of `data`, waiting for flow-control credit as needed.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), QuicError> {
        while !data.is_empty() {
            let n = self.write_some(|s| s.write(data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes `data` without copying it (QUIC keeps the `Bytes` until acknowledged).
    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), QuicError> {
        let mut chunks = [data];
        loop {
            if chunks[0].is_empty() {
                return Ok(());
            }
            self.write_some(|s| s.write_chunks(&mut chunks).map(|w| w.bytes))
                .await?;
        }
    }

    async fn write_some(
        &mut self,
        mut op: impl FnMut(&mut quinn_proto::SendStream<'_>) -> Result<usize, quinn_proto::WriteError>,
    ) -> Result<usize, QuicError> {
        let (handle, id) = (self.conn.handle, self.id);
        poll_fn(|cx| {
            let mut st = self.conn.ep.state.borrow_mut();
            let Some(c) = st.conns.get_mut(&handle) else {
                return Poll::Ready(Err(QuicError::Lost(ConnectionError::LocallyClosed)));
            };
            if let Some(e) = &c.lost {
                return Poll::Ready(Err(QuicError::Lost(e.clone())));
            }
            let r = op(&mut c.conn.send_stream(id));
            match r {
                Ok(n) => {
                    c.bytes_written += n as u64;
                    st.dirty.insert(handle);
                    st.wake_driver();
                    Poll::Ready(Ok(n))
                }
                Err(quinn_proto::WriteError::Blocked) => {
                    c.writable.insert(id, cx.waker().clone());
                    Poll::Pending
                }
                Err(quinn_proto::WriteError::Stopped(code)) => {
                    // As in `finish`: a stopped stream is released by resetting it.
                    let _ = c.conn.send_stream(id).reset(VarInt::from_u32(0));
                    st.dirty.insert(handle);
                    st.wake_driver();
                    Poll::Ready(Err(QuicError::Stopped(code.into_inner())))
                }
                Err(quinn_proto::WriteError::ClosedStream) => Poll::Ready(Err(QuicError::Closed)),
            }
        })
        .await
    }

    /// Marks the end of the stream; the peer reads it as end of data. Finishing twice is
    /// harmless.
    pub fn finish(&mut self) -> Result<(), QuicError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let r = self
            .conn
            .with(|c| c.conn.send_stream(self.id).finish())
            .ok_or(QuicError::Lost(ConnectionError::LocallyClosed))?;
        match r {
            Ok(()) => Ok(()),
            Err(quinn_proto::FinishError::Stopped(code)) => {
                // quinn-proto keeps a stopped stream that was never finished or reset, and
                // it holds one of the peer's stream credits until then: release it.
                self.reset(0);
                Err(QuicError::Stopped(code.into_inner()))
            }
            Err(quinn_proto::FinishError::ClosedStream) => Err(QuicError::Closed),
        }
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: u32) {
        self.finished = true;
        self.conn.with(|c| {
            let _ = c.conn.send_stream(self.id).reset(VarInt::from_u32(code));
        });
    }
}

/// The receiving half of a bidirectional stream.
pub struct RecvStream {
    conn: Connection,
    id: StreamId,
    /// Bytes received but not yet handed out (from a chunk larger than asked for).
    buffered: Bytes,
    finished: bool,
}

impl RecvStream {
    /// The next piece of the stream, at most `max` bytes, or `None` at its end.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, QuicError> {
        assert!(max > 0, "read_chunk of zero bytes");
        if !self.buffered.is_empty() {
            let n = max.min(self.buffered.len());
            return Ok(Some(self.buffered.split_to(n)));
        }
        if self.finished {
            return Ok(None);
        }
        let (handle, id) = (self.conn.handle, self.id);
        let got = poll_fn(|cx| {
            let mut st = self.conn.ep.state.borrow_mut();
            let Some(c) = st.conns.get_mut(&handle) else {
                return Poll::Ready(Err(QuicError::Lost(ConnectionError::LocallyClosed)));
            };
            let mut stream = c.conn.recv_stream(id);
            let mut chunks = match stream.read(true) {
                Ok(chunks) => chunks,
                Err(_) => return Poll::Ready(Ok(None)),
            };
            let r = chunks.next(usize::MAX);
            // Finalizing may open flow-control credit for the peer: send it.
            let _ = chunks.finalize();
            let out = match r {
                Ok(Some(chunk)) => {
                    c.bytes_read += chunk.bytes.len() as u64;
                    Poll::Ready(Ok(Some(chunk.bytes)))
                }
                Ok(None) => Poll::Ready(Ok(None)),
                Err(quinn_proto::ReadError::Blocked) => {
                    if let Some(e) = &c.lost {
                        return Poll::Ready(Err(QuicError::Lost(e.clone())));
                    }
                    c.readable.insert(id, cx.waker().clone());
                    Poll::Pending
                }
                Err(quinn_proto::ReadError::Reset(code)) => {
                    Poll::Ready(Err(QuicError::Reset(code.into_inner())))
                }
            };
            st.dirty.insert(handle);
            st.wake_driver();
            out
        })
        .await?;
        match got {
            Some(mut bytes) => {
                if bytes.len() > max {
                    self.buffered = bytes.split_off(max);
                }
                Ok(Some(bytes))
            }
            None => {
                self.finished = true;
                Ok(None)
            }
        }
    }

    /// Fills `out` exactly; `Ok(false)` if the stream ended before any byte of it, an
    /// error if it ended part way.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<bool, ReadExactError> {
        let mut filled = 0;
        while filled < out.len() {
            match self.read_chunk(out.len() - filled).await? {
                Some(b) => {
                    out[filled..filled + b.len()].copy_from_slice(&b);
                    filled += b.len();
                }
                None if filled == 0 => return Ok(false),
                None => return Err(ReadExactError::Truncated),
            }
        }
        Ok(true)
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        self.finished = true;
        self.conn.with(|c| {
            let _ = c.conn.recv_stream(self.id).stop(VarInt::from_u32(code));
        });
    }
}

#[derive(Debug)]
pub enum ReadExactError {
    Quic(QuicError),
    /// The stream ended in the middle of a value.
    Truncated,
}

impl From<QuicError> for ReadExactError {
    fn from(e: QuicError) -> Self {
        ReadExactError::Quic(e)
    }
}

impl std::fmt::Display for ReadExactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadExactError::Quic(e) => e.fmt(f),
            ReadExactError::Truncated => write!(f, "stream ended in the middle of a frame"),
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        // A stream dropped unfinished was abandoned (an error path): tell the peer, so it
        // does not wait for bytes that will never come.
        if !self.finished {
            self.reset(0);
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.finished {
            self.stop(0);
        }
    }
}
