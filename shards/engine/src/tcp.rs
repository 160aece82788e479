//! TCP + TLS 1.3 for one shard: the transport where UDP is blocked. One TCP connection
//! carries TLS (rustls, the same configs and key checks as QUIC) and, inside it, a small
//! multiplexer that gives the session what QUIC streams give it: bidirectional streams,
//! each with its own flow control, finish, reset and stop with a code, and a connection
//! close with a code and reason.
//!
//! Why our own multiplexer: the session needs a reset code per stream (a server that
//! fails part way through a Get says why in the reset, docs/PROTOCOL.md §7) and runs on
//! two drivers of single-threaded shards. yamux (libp2p's) resets without a code and
//! wants a polled connection object behind `futures::io`; h2 needs tokio; both frame
//! data in small units for interactive use. What the session needs here is about as
//! long as driving either would be, shares its shape with `quic.rs` (state in one
//! `Rc<RefCell>`, tasks woken by wakers), and TLS is driven directly through rustls's
//! sans-IO `Connection` with no async adapter in between.
//!
//! The multiplexer's frames, inside the TLS stream (all integers little-endian):
//!
//! ```text
//! frame = kind:u8 stream:u32 value:u32 [payload]
//!   0 DATA    value = payload length (≤ DATA_FRAME_BYTES_MAX), payload follows
//!   1 FIN     the sender's half of the stream ends
//!   2 RESET   value = code: the sender abandons its half
//!   3 STOP    value = code: the receiver wants no more data on the stream
//!   4 WINDOW  value = bytes more the receiver of the frame may send on the stream
//!   5 CREDIT  value = streams more the receiver of the frame may open
//!   6 CLOSE   stream = code, value = reason length (≤ CLOSE_REASON_BYTES_MAX), reason
//! ```
//!
//! The client opens odd stream numbers, the server even ones, each in increasing order; a
//! stream opens with its first frame, and opens every lower-numbered one of its side with
//! it (their first frames may follow it). Each side may have `STREAMS_MAX` streams open that
//! it opened; the other returns a credit when one is done on both halves. Each stream's
//! receiver grants `STREAM_WINDOW_BYTES` at first and more as its reader consumes, so
//! what one end buffers is bounded by streams × window, and a slow stream never blocks
//! another. Every length and count from the peer is checked before use; a violation
//! closes the connection.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::ServerName;

use crate::rt::{self, TcpStream};
use crate::transport::{Error, Why};

/// Streams one side may have open that it opened: as QUIC's stream limit.
pub const STREAMS_MAX: u32 = 64;
/// What a stream's receiver grants at first, and at most holds unread.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Largest stream number: a connection opens at most half of these on each side, far
/// more than any session needs, and the counters never wrap.
const STREAM_ID_MAX: u32 = 1 << 31;
/// Largest DATA payload: large enough that framing costs nothing, small enough that
/// streams interleave finely on the wire.
pub const DATA_FRAME_BYTES_MAX: u32 = 256 * 1024;
/// Plaintext queued for the TLS writer before stream writes wait.
const OUT_QUEUE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Longest close reason.
pub const CLOSE_REASON_BYTES_MAX: u32 = 1024;
const HEADER_BYTES: usize = 9;
/// DATA payloads this large keep sharing the receive buffer rather than being copied.
const SHARE_PAYLOAD_BYTES_MIN: usize = 64 * 1024;
/// Socket reads at a time.
const READ_BYTES: usize = 256 * 1024;
/// A peer silent this long with data outstanding is gone (TCP_USER_TIMEOUT), and idle
/// connections are probed this often (TCP keep-alive): QUIC's 10 s idle timeout.
#[cfg(target_os = "linux")]
const USER_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(2);

const DATA: u8 = 0;
const FIN: u8 = 1;
const RESET: u8 = 2;
const STOP: u8 = 3;
const WINDOW: u8 = 4;
const CREDIT: u8 = 5;
const CLOSE: u8 = 6;

/// Wakes the task waiting in `slot`, if any.
fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

#[derive(Default)]
struct Stream {
    rx: VecDeque<Bytes>,
    rx_fin: bool,
    rx_reset: Option<u64>,
    /// Bytes the peer may send in all, and has sent.
    rx_allowed: u64,
    rx_total: u64,
    /// Bytes read by the application and not yet granted back.
    rx_unacked: u64,
    /// The application still reads this half (not stopped, not dropped).
    rx_open: bool,
    reader: Option<Waker>,
    tx_credit: u64,
    tx_stopped: Option<u64>,
    /// The application may still write (not finished, reset or dropped).
    tx_open: bool,
    writer: Option<Waker>,
    /// Opened by the peer.
    remote: bool,
}

impl Stream {
    fn new(remote: bool) -> Stream {
        Stream {
            rx_allowed: u64::from(STREAM_WINDOW_BYTES),
            rx_open: true,
            tx_credit: u64::from(STREAM_WINDOW_BYTES),
            tx_open: true,
            remote,
            ..Default::default()
        }
    }

    fn done(&self) -> bool {
        !self.tx_open && (self.rx_fin || self.rx_reset.is_some()) && !self.rx_open
    }
}

struct State {
    tls: rustls::Connection,
    streams: HashMap<u32, Stream>,
    next_local: u32,
    next_remote: u32,
    open_credit: u32,
    remote_open: u32,
    accepted: VecDeque<u32>,
    /// Tasks waiting to open or accept a stream, or for room in the out queue.
    waiters: Vec<Waker>,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    writer: Option<Waker>,
    lost: Option<Error>,
    /// Our CLOSE is queued: nothing more goes out after it.
    closing: bool,
    closed: bool,
    remote_addr: SocketAddr,
}

impl State {
    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
        for s in self.streams.values_mut() {
            wake(&mut s.reader);
            wake(&mut s.writer);
        }
        wake(&mut self.writer);
    }

    fn lose(&mut self, e: Error) {
        if self.lost.is_none() {
            self.lost = Some(e);
        }
        self.wake_all();
    }

    fn queue(&mut self, kind: u8, stream: u32, value: u32, payload: &[u8]) {
        if self.closing {
            return;
        }
        let mut f = Vec::with_capacity(HEADER_BYTES + payload.len());
        f.push(kind);
        f.extend_from_slice(&stream.to_le_bytes());
        f.extend_from_slice(&value.to_le_bytes());
        f.extend_from_slice(payload);
        self.out_bytes += f.len();
        self.out.push_back(f);
        wake(&mut self.writer);
    }

    /// Removes a stream both halves of which are done; a stream the peer opened returns
    /// its credit.
    fn reap(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::done) {
            let s = self.streams.remove(&id).expect("present");
            if s.remote {
                self.remote_open -= 1;
                self.queue(CREDIT, 0, 1, &[]);
            }
        }
    }

    fn protocol(&mut self, why: &str) {
        let reason = format!("received a bad frame: {why}");
        self.queue(CLOSE, 1, reason.len() as u32, reason.as_bytes());
        self.closing = true;
        self.lose(Error::Lost(Why::Other(reason)));
    }

    /// The stream a frame from the peer names: an open one, a new one the peer opens, or
    /// `None` for one already closed (late frames are dropped).
    fn stream_for(&mut self, id: u32, opens: bool) -> Result<Option<&mut Stream>, &'static str> {
        let peer_parity = u32::from(self.is_client_tls()) ^ 1;
        if id > STREAM_ID_MAX {
            return Err("stream number out of range");
        }
        if id % 2 == peer_parity && id >= self.next_remote {
            // A stream opens with its first frame, and the peer's tasks may write their
            // first frames in another order than they opened the streams: as in QUIC,
            // a stream opens every lower one of the same side with it.
            let opened = (id - self.next_remote) / 2 + 1;
            if !opens {
                return Err("frame for a stream never opened");
            }
            if self.remote_open + opened > STREAMS_MAX {
                return Err("too many streams");
            }
            while self.next_remote <= id {
                self.streams.insert(self.next_remote, Stream::new(true));
                self.accepted.push_back(self.next_remote);
                self.next_remote += 2;
            }
            self.remote_open += opened;
            for w in self.waiters.drain(..) {
                w.wake();
            }
        } else if id % 2 != peer_parity && id >= self.next_local {
            return Err("frame for a stream never opened");
        }
        Ok(self.streams.get_mut(&id))
    }

    fn is_client_tls(&self) -> bool {
        matches!(self.tls, rustls::Connection::Client(_))
    }

    /// Handles one frame from the peer.
    fn frame(&mut self, kind: u8, id: u32, value: u32, payload: Bytes) -> Result<(), &'static str> {
        match kind {
            CREDIT => {
                self.open_credit = self.open_credit.saturating_add(value).min(STREAMS_MAX);
                for w in self.waiters.drain(..) {
                    w.wake();
                }
                return Ok(());
            }
            CLOSE => {
                let reason = String::from_utf8_lossy(&payload).into_owned();
                self.closed = true;
                self.lose(Error::Lost(Why::Closed { code: id, reason }));
                return Ok(());
            }
            _ => {}
        }
        // Any frame but WINDOW may be a stream's first: a reader may stop a stream
        // before its writer sent anything (QUIC's STOP_SENDING opens a stream too).
        let opens = kind != WINDOW;
        let Some(s) = self.stream_for(id, opens)? else {
            return Ok(());
        };
        match kind {
            DATA => {
                s.rx_total += payload.len() as u64;
                if s.rx_total > s.rx_allowed || s.rx_fin {
                    return Err("data beyond the stream's window or end");
                }
                if payload.is_empty() {
                    // Carries nothing; kept, it would cost memory outside the window.
                } else if s.rx_open {
                    s.rx.push_back(payload);
                    wake(&mut s.reader);
                } else {
                    // Stopped: dropped. An honest peer stops sending once it sees the
                    // STOP; what was in flight is allowed here, and no WINDOW answers it
                    // (a peer could make us queue one per frame otherwise).
                    s.rx_allowed += payload.len() as u64;
                }
            }
            FIN => {
                s.rx_fin = true;
                wake(&mut s.reader);
            }
            RESET => {
                s.rx_reset = Some(u64::from(value));
                s.rx.clear();
                wake(&mut s.reader);
            }
            STOP => {
                s.tx_stopped = Some(u64::from(value));
                wake(&mut s.writer);
            }
            WINDOW => {
                s.tx_credit = s.tx_credit.saturating_add(u64::from(value));
                wake(&mut s.writer);
            }
            _ => return Err("unknown frame kind"),
        }
        self.reap(id);
        Ok(())
    }
}

/// One TCP + TLS connection. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Connection {
    state: Rc<RefCell<State>>,
    /// The reading and the writing task: stopped (dropped) with the last handle.
    _tasks: Rc<Vec<rt::Task<()>>>,
}

/// Binds a listening TCP socket, reusing the address at once after a restart (the old
/// connections may linger in TIME_WAIT). Done before the shards start, as `quic::
/// bind_socket` is.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Listening on [::] takes IPv4 clients too, as users expect.
        let _ = sock.set_only_v6(false);
    }
    #[cfg(unix)]
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Sets what makes a dead peer noticed: keep-alive probes, and a bound on unacknowledged
/// data (`USER_TIMEOUT`), the way QUIC's idle timeout does.
fn tune(sock: &TcpStream) {
    sock.with_socket(|s| {
        let _ = s.set_nodelay(true);
        let ka = socket2::TcpKeepalive::new()
            .with_time(KEEP_ALIVE)
            .with_interval(KEEP_ALIVE);
        #[cfg(not(windows))]
        let ka = ka.with_retries(4);
        let _ = s.set_tcp_keepalive(&ka);
        #[cfg(target_os = "linux")]
        let _ = s.set_tcp_user_timeout(Some(USER_TIMEOUT));
        let _ = s.set_send_buffer_size(crate::quic::SOCKET_BUFFER_BYTES);
        let _ = s.set_recv_buffer_size(crate::quic::SOCKET_BUFFER_BYTES);
    });
}

/// Why a TLS failure ended the connection, as the session tells it apart.
fn tls_why(e: &rustls::Error) -> Why {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(A::AccessDenied) => Why::Refused,
        rustls::Error::AlertReceived(A::NoApplicationProtocol)
        | rustls::Error::NoApplicationProtocol => Why::Version,
        other => Why::Other(format!("TLS: {other}")),
    }
}

fn io_lost(e: &io::Error) -> Error {
    Error::Lost(Why::Other(e.to_string()))
}

/// Runs the TLS handshake on `sock`. Returns what was read past its end: the peer's
/// first records may arrive in the same segment as its last handshake message, and
/// rustls holds only a little plaintext unread, so the read loop feeds them in, draining
/// as it goes.
async fn handshake(sock: &TcpStream, tls: &mut rustls::Connection) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; READ_BYTES];
    let mut out = Vec::new();
    loop {
        while tls.wants_write() {
            out.clear();
            tls.write_tls(&mut out).map_err(|e| io_lost(&e))?;
            sock.write_all(&out).await.map_err(|e| io_lost(&e))?;
        }
        if !tls.is_handshaking() {
            return Ok(Vec::new());
        }
        let n = sock.read(&mut buf).await.map_err(|e| io_lost(&e))?;
        if n == 0 {
            return Err(Error::Lost(Why::Other(
                "peer closed during the TLS handshake".into(),
            )));
        }
        let mut data = &buf[..n];
        while !data.is_empty() && tls.is_handshaking() {
            tls.read_tls(&mut data).map_err(|e| io_lost(&e))?;
            if let Err(e) = tls.process_new_packets() {
                // Our alert goes out before we give up.
                while tls.wants_write() {
                    out.clear();
                    let _ = tls.write_tls(&mut out);
                    let _ = sock.write_all(&out).await;
                }
                return Err(Error::Lost(tls_why(&e)));
            }
        }
        if !tls.is_handshaking() {
            while tls.wants_write() {
                out.clear();
                tls.write_tls(&mut out).map_err(|e| io_lost(&e))?;
                sock.write_all(&out).await.map_err(|e| io_lost(&e))?;
            }
            return Ok(data.to_vec());
        }
    }
}

impl Connection {
    /// Dials `addr` and completes TLS as a client within `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| Error::Connect(e.to_string()))?;
        let sock = TcpStream::connect(addr, timeout)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        tune(&sock);
        let client = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::Connect(e.to_string()))?;
        let mut tls = rustls::Connection::Client(client);
        let early = handshake(&sock, &mut tls).await?;
        Ok(Connection::start(sock, tls, addr, 1, early))
    }

    /// Completes TLS as a server on an accepted stream.
    pub async fn accept(
        sock: TcpStream,
        config: Arc<rustls::ServerConfig>,
        remote: SocketAddr,
    ) -> Result<Connection, Error> {
        tune(&sock);
        let server =
            rustls::ServerConnection::new(config).map_err(|e| Error::Connect(e.to_string()))?;
        let mut tls = rustls::Connection::Server(server);
        let early = handshake(&sock, &mut tls).await?;
        Ok(Connection::start(sock, tls, remote, 2, early))
    }

    fn start(
        sock: TcpStream,
        mut tls: rustls::Connection,
        remote: SocketAddr,
        first: u32,
        early: Vec<u8>,
    ) -> Connection {
        // The out queue bounds what is buffered (`OUT_QUEUE_BYTES_MAX`); rustls's own
        // 64 KiB limit would refuse a whole DATA frame.
        tls.set_buffer_limit(None);
        let state = Rc::new(RefCell::new(State {
            tls,
            streams: HashMap::new(),
            next_local: first,
            next_remote: 3 - first,
            open_credit: STREAMS_MAX,
            remote_open: 0,
            accepted: VecDeque::new(),
            waiters: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            writer: None,
            lost: None,
            closing: false,
            closed: false,
            remote_addr: remote,
        }));
        let reader = rt::spawn_local(read_loop(sock.clone(), state.clone(), early));
        let writer = rt::spawn_local(write_loop(sock, state.clone()));
        Connection {
            state,
            _tasks: Rc::new(vec![reader, writer]),
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.state.borrow().remote_addr
    }

    /// The certificate the peer proved it holds the key of (the first of its chain).
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let st = self.state.borrow();
        Some(st.tls.peer_certificates()?.first()?.clone().into_owned())
    }

    /// Why the connection is gone, once it is.
    pub fn lost(&self) -> Option<Error> {
        self.state.borrow().lost.clone()
    }

    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), Error> {
        let id = poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if let Some(e) = &st.lost {
                return Poll::Ready(Err(e.clone()));
            }
            if st.next_local > STREAM_ID_MAX {
                return Poll::Ready(Err(Error::Lost(Why::Other(
                    "stream numbers ran out".into(),
                ))));
            }
            if st.open_credit == 0 {
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            st.open_credit -= 1;
            let id = st.next_local;
            st.next_local += 2;
            st.streams.insert(id, Stream::new(false));
            Poll::Ready(Ok(id))
        })
        .await?;
        Ok(self.halves(id))
    }

    pub async fn accept_bi(&self) -> Option<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if let Some(id) = st.accepted.pop_front() {
                return Poll::Ready(Some(id));
            }
            if st.lost.is_some() {
                return Poll::Ready(None);
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Some(self.halves(id))
    }

    fn halves(&self, id: u32) -> (SendStream, RecvStream) {
        (
            SendStream {
                conn: self.clone(),
                id,
            },
            RecvStream {
                conn: self.clone(),
                id,
                pending: Bytes::new(),
            },
        )
    }

    /// Closes the connection with `code` and `reason`: queued behind what was written.
    pub fn close(&self, code: u32, reason: &[u8]) {
        let mut st = self.state.borrow_mut();
        let reason = &reason[..reason.len().min(CLOSE_REASON_BYTES_MAX as usize)];
        st.queue(CLOSE, code, reason.len() as u32, reason);
        st.closing = true;
    }

    /// Waits until the close has gone to the socket (or the connection is gone).
    pub async fn wait_closed(&self) {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            // Lost: nothing more can go out.
            if st.closed || st.lost.is_some() {
                return Poll::Ready(());
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Reads TLS records, decrypts them and hands each frame to its stream.
async fn read_loop(sock: TcpStream, state: Rc<RefCell<State>>, early: Vec<u8>) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut plain = BytesMut::new();
    // What arrived with the end of the handshake: a client's first frames travel in the
    // same segment as its Finished.
    if !feed(&mut state.borrow_mut(), &mut plain, &early) {
        return;
    }
    loop {
        // While the peer does not read what this end queued (answers to its frames
        // included), this end reads no more of its frames.
        poll_fn(|cx| {
            let mut st = state.borrow_mut();
            if st.out_bytes <= OUT_QUEUE_BYTES_MAX || st.lost.is_some() {
                return Poll::Ready(());
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let n = match sock.read(&mut buf).await {
            Ok(0) => {
                let mut st = state.borrow_mut();
                st.closed = true;
                st.lose(Error::Lost(Why::Other(
                    "the peer closed the connection".into(),
                )));
                return;
            }
            Ok(n) => n,
            Err(e) => return state.borrow_mut().lose(io_lost(&e)),
        };
        if !feed(&mut state.borrow_mut(), &mut plain, &buf[..n]) {
            return;
        }
    }
}

/// Decrypts `data` a record batch at a time (rustls holds little plaintext unread) and
/// handles the frames; false once the connection is lost.
fn feed(st: &mut State, plain: &mut BytesMut, mut data: &[u8]) -> bool {
    loop {
        if let Err(e) = drain_plaintext(st, plain) {
            st.protocol(e);
            return false;
        }
        if data.is_empty() {
            break;
        }
        if let Err(e) = st.tls.read_tls(&mut data) {
            st.lose(io_lost(&e));
            return false;
        }
        if let Err(e) = st.tls.process_new_packets() {
            st.lose(Error::Lost(tls_why(&e)));
            return false;
        }
    }
    if st.tls.wants_write() {
        wake(&mut st.writer);
    }
    true
}

/// Moves the decrypted bytes into `plain` and handles every whole frame there.
fn drain_plaintext(st: &mut State, plain: &mut BytesMut) -> Result<(), &'static str> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match st.tls.reader().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err("TLS stream ended uncleanly"),
        }
    }
    while plain.len() >= HEADER_BYTES {
        let kind = plain[0];
        let id = u32::from_le_bytes(plain[1..5].try_into().expect("4 bytes"));
        let value = u32::from_le_bytes(plain[5..9].try_into().expect("4 bytes"));
        let len = match kind {
            DATA if value <= DATA_FRAME_BYTES_MAX => value as usize,
            CLOSE if value <= CLOSE_REASON_BYTES_MAX => value as usize,
            DATA | CLOSE => return Err("frame longer than its limit"),
            _ => 0,
        };
        if plain.len() < HEADER_BYTES + len {
            break;
        }
        plain.advance(HEADER_BYTES);
        // A small payload is copied out, so that it never pins the large buffer it
        // arrived in past its own bytes; a large one shares it.
        let payload = if len < SHARE_PAYLOAD_BYTES_MIN {
            let p = Bytes::copy_from_slice(&plain[..len]);
            plain.advance(len);
            p
        } else {
            plain.split_to(len).freeze()
        };
        st.frame(kind, id, value, payload)?;
    }
    Ok(())
}

/// Encrypts queued frames and writes them to the socket, in order.
async fn write_loop(sock: TcpStream, state: Rc<RefCell<State>>) {
    let mut out = Vec::new();
    loop {
        // Emptied before anything else: a pass that ends the loop (closing, or lost)
        // encrypts nothing, and must not send the last pass's records a second time (the
        // peer would fail to decrypt the copy, and lose the close reason with it).
        out.clear();
        let done = poll_fn(|cx| {
            let mut st = state.borrow_mut();
            if st.lost.is_some() && !st.closing {
                return Poll::Ready(None);
            }
            if st.out.is_empty() && !st.tls.wants_write() {
                if st.closing {
                    return Poll::Ready(None);
                }
                st.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut moved = 0;
            while let Some(f) = st.out.pop_front() {
                moved += f.len();
                if let Err(e) = st.tls.writer().write_all(&f) {
                    st.lose(io_lost(&e));
                    return Poll::Ready(None);
                }
                if moved >= READ_BYTES {
                    break;
                }
            }
            st.out_bytes -= moved;
            while st.tls.wants_write() {
                if let Err(e) = st.tls.write_tls(&mut out) {
                    st.lose(io_lost(&e));
                    return Poll::Ready(None);
                }
            }
            // Room in the queue: wake writers waiting for it.
            for w in st.waiters.drain(..) {
                w.wake();
            }
            Poll::Ready(Some(()))
        })
        .await;
        if !out.is_empty() {
            if let Err(e) = sock.write_all(&out).await {
                return state.borrow_mut().lose(io_lost(&e));
            }
        }
        if done.is_none() {
            let mut st = state.borrow_mut();
            if st.closing {
                st.closed = true;
                sock.with_socket(|s| s.shutdown(std::net::Shutdown::Write).ok());
                st.lose(Error::Lost(Why::Closed {
                    code: 0,
                    reason: "closed".into(),
                }));
            }
            return;
        }
    }
}

pub struct SendStream {
    conn: Connection,
    id: u32,
}

impl SendStream {
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_room(cx, data.len())).await?;
            let mut st = self.conn.state.borrow_mut();
            st.streams.get_mut(&self.id).expect("open").tx_credit -= n as u64;
            st.queue(DATA, self.id, n as u32, &data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.write_all(&data).await
    }

    /// How many bytes may go now: within the stream's credit, a frame, and the queue.
    fn poll_room(
        &self,
        cx: &mut std::task::Context<'_>,
        want: usize,
    ) -> Poll<Result<usize, Error>> {
        let mut st = self.conn.state.borrow_mut();
        if let Some(e) = &st.lost {
            return Poll::Ready(Err(e.clone()));
        }
        let full = st.out_bytes >= OUT_QUEUE_BYTES_MAX;
        let Some(s) = st.streams.get_mut(&self.id).filter(|s| s.tx_open) else {
            return Poll::Ready(Err(Error::Closed));
        };
        if let Some(code) = s.tx_stopped {
            return Poll::Ready(Err(Error::Stopped(code)));
        }
        if s.tx_credit == 0 {
            s.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if full {
            st.waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let n = (want as u64)
            .min(s.tx_credit)
            .min(u64::from(DATA_FRAME_BYTES_MAX));
        Poll::Ready(Ok(n as usize))
    }

    fn end_with(&mut self, kind: u8, code: u32) -> Result<(), Error> {
        let mut st = self.conn.state.borrow_mut();
        let Some(s) = st.streams.get_mut(&self.id).filter(|s| s.tx_open) else {
            return Err(Error::Closed);
        };
        s.tx_open = false;
        st.queue(kind, self.id, code, &[]);
        st.reap(self.id);
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), Error> {
        if let Some(e) = self.conn.lost() {
            return Err(e);
        }
        let stopped = self
            .conn
            .state
            .borrow()
            .streams
            .get(&self.id)
            .and_then(|s| s.tx_stopped);
        if let Some(code) = stopped {
            return Err(Error::Stopped(code));
        }
        self.end_with(FIN, 0)
    }

    pub fn reset(&mut self, code: u32) {
        let _ = self.end_with(RESET, code);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        // Abandoned before it finished: reset with code 0, as a QUIC send half is.
        let _ = self.end_with(RESET, 0);
    }
}

pub struct RecvStream {
    conn: Connection,
    id: u32,
    pending: Bytes,
}

impl RecvStream {
    /// The next bytes of the stream, at most `max`; `None` at its end.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        if self.pending.is_empty() {
            match poll_fn(|cx| self.poll_next(cx)).await? {
                Some(b) => self.pending = b,
                None => return Ok(None),
            }
        }
        let n = self.pending.len().min(max.max(1));
        Ok(Some(self.pending.split_to(n)))
    }

    fn poll_next(&self, cx: &mut std::task::Context<'_>) -> Poll<Result<Option<Bytes>, Error>> {
        let mut st = self.conn.state.borrow_mut();
        let lost = st.lost.clone();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(None));
        };
        if let Some(b) = s.rx.pop_front() {
            s.rx_unacked += b.len() as u64;
            if s.rx_unacked >= u64::from(STREAM_WINDOW_BYTES / 2) && !s.rx_fin {
                let n = s.rx_unacked as u32;
                s.rx_allowed += s.rx_unacked;
                s.rx_unacked = 0;
                st.queue(WINDOW, self.id, n, &[]);
            }
            return Poll::Ready(Ok(Some(b)));
        }
        if let Some(code) = s.rx_reset {
            return Poll::Ready(Err(Error::Reset(code)));
        }
        if s.rx_fin {
            return Poll::Ready(Ok(None));
        }
        if let Some(e) = lost {
            return Poll::Ready(Err(e));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Fills `out`; false if the stream ended cleanly before its first byte.
    pub async fn read_exact(
        &mut self,
        out: &mut [u8],
    ) -> Result<bool, crate::transport::ReadExactError> {
        let mut filled = 0;
        while filled < out.len() {
            match self
                .read_chunk(out.len() - filled)
                .await
                .map_err(crate::transport::ReadExactError::from)?
            {
                Some(b) => {
                    out[filled..filled + b.len()].copy_from_slice(&b);
                    filled += b.len();
                }
                None if filled == 0 => return Ok(false),
                None => return Err(crate::transport::ReadExactError::Truncated),
            }
        }
        Ok(true)
    }

    /// Tells the peer to stop sending; what arrives is dropped.
    pub fn stop(&mut self, code: u32) {
        let mut st = self.conn.state.borrow_mut();
        let Some(s) = st.streams.get_mut(&self.id).filter(|s| s.rx_open) else {
            return;
        };
        s.rx_open = false;
        let ended = s.rx_fin || s.rx_reset.is_some();
        s.rx.clear();
        if !ended {
            st.queue(STOP, self.id, code, &[]);
        }
        st.reap(self.id);
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.stop(0);
    }
}
