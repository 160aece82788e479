//! TCP + TLS 1.3 for one shard: the transport where UDP is blocked. One TCP connection
//! carries TLS (rustls, the same configs and key checks as QUIC) and, inside it, the
//! stream multiplexer of `tpc_core::mux` (its frames, limits and why it is our own are
//! there), which gives the session what QUIC streams give it.
//!
//! This file is the driver: it runs the TLS handshake, then one task that reads the
//! socket, decrypts and feeds the plaintext to the multiplexer, and one that takes the
//! multiplexer's queued frames, encrypts and writes them; stream handles poll the
//! multiplexer and wait on wakers it fires. State is one `Rc<RefCell>`, as in `quic.rs`,
//! and TLS is driven directly through rustls's sans-IO `Connection` with no async
//! adapter in between.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tpc_core::mux::{self, Mux, Signal, StreamError};

use crate::rt::{self, TcpStream};
use crate::transport::{Error, Why};

pub use tpc_core::mux::{STREAMS_MAX, STREAM_WINDOW_BYTES};

/// Socket reads at a time, and plaintext encrypted per pass of the writer.
const READ_BYTES: usize = 256 * 1024;
/// A peer silent this long with data outstanding is gone (TCP_USER_TIMEOUT), and idle
/// connections are probed this often (TCP keep-alive): QUIC's 10 s idle timeout.
#[cfg(target_os = "linux")]
const USER_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A task's waker, fired by the multiplexer when what the task waits for may be there.
#[derive(Default)]
struct Wake(Option<Waker>);

impl Signal for Wake {
    fn signal(&mut self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }
}

/// What a pending poll leaves for the multiplexer to wake.
fn waker<'a>(cx: &Context<'a>) -> impl FnOnce() -> Wake + 'a {
    let w = cx.waker();
    move || Wake(Some(w.clone()))
}

impl From<StreamError> for Error {
    fn from(e: StreamError) -> Error {
        match e {
            StreamError::Lost(why) => Error::Lost(why),
            StreamError::Reset(c) => Error::Reset(c),
            StreamError::Stopped(c) => Error::Stopped(c),
            StreamError::Closed => Error::Closed,
        }
    }
}

struct State {
    tls: rustls::Connection,
    mux: Mux<Wake>,
    remote_addr: SocketAddr,
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

fn io_why(e: &io::Error) -> Why {
    Why::Other(e.to_string())
}

fn io_lost(e: &io::Error) -> Error {
    Error::Lost(io_why(e))
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
        Ok(Connection::start(sock, tls, addr, early))
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
        Ok(Connection::start(sock, tls, remote, early))
    }

    fn start(
        sock: TcpStream,
        mut tls: rustls::Connection,
        remote: SocketAddr,
        early: Vec<u8>,
    ) -> Connection {
        // The multiplexer's out queue bounds what is buffered (`OUT_QUEUE_BYTES_MAX`);
        // rustls's own 64 KiB limit would refuse a whole DATA frame.
        tls.set_buffer_limit(None);
        let client = matches!(tls, rustls::Connection::Client(_));
        let state = Rc::new(RefCell::new(State {
            tls,
            mux: Mux::new(client),
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
        self.state.borrow().mux.lost().cloned().map(Error::Lost)
    }

    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), Error> {
        let id = poll_fn(|cx| self.state.borrow_mut().mux.poll_open(waker(cx)))
            .await
            .map_err(Error::Lost)?;
        Ok(self.halves(id))
    }

    pub async fn accept_bi(&self) -> Option<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| self.state.borrow_mut().mux.poll_accept(waker(cx))).await?;
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
        self.state.borrow_mut().mux.close(code, reason);
    }

    /// Waits until the close has gone to the socket (or the connection is gone).
    pub async fn wait_closed(&self) {
        poll_fn(|cx| self.state.borrow_mut().mux.poll_closed(waker(cx))).await
    }
}

/// Reads TLS records, decrypts them and hands the plaintext to the multiplexer.
async fn read_loop(sock: TcpStream, state: Rc<RefCell<State>>, early: Vec<u8>) {
    let mut buf = vec![0u8; READ_BYTES];
    // What arrived with the end of the handshake: a client's first frames travel in the
    // same segment as its Finished.
    if !feed(&mut state.borrow_mut(), &early) {
        return;
    }
    loop {
        // While the peer does not read what this end queued (answers to its frames
        // included), this end reads no more of its frames.
        poll_fn(|cx| state.borrow_mut().mux.poll_receive(waker(cx))).await;
        let n = match sock.read(&mut buf).await {
            Ok(0) => return state.borrow_mut().mux.peer_ended(),
            Ok(n) => n,
            Err(e) => return state.borrow_mut().mux.lose(io_why(&e)),
        };
        if !feed(&mut state.borrow_mut(), &buf[..n]) {
            return;
        }
    }
}

/// Decrypts `data` a record batch at a time (rustls holds little plaintext unread) and
/// hands the plaintext to the multiplexer; false once the connection is lost.
fn feed(st: &mut State, mut data: &[u8]) -> bool {
    loop {
        if !drain_plaintext(st) {
            return false;
        }
        if data.is_empty() {
            break;
        }
        if let Err(e) = st.tls.read_tls(&mut data) {
            st.mux.lose(io_why(&e));
            return false;
        }
        if let Err(e) = st.tls.process_new_packets() {
            st.mux.lose(tls_why(&e));
            return false;
        }
    }
    if st.tls.wants_write() {
        st.mux.wake_sender();
    }
    true
}

/// Moves the decrypted bytes to the multiplexer; false once the connection is lost.
fn drain_plaintext(st: &mut State) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match st.tls.reader().read(&mut chunk) {
            Ok(0) => return st.mux.lost().is_none(),
            Ok(n) => {
                if !st.mux.receive(&chunk[..n]) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return st.mux.lost().is_none(),
            Err(_) => {
                st.mux.violation("TLS stream ended uncleanly");
                return false;
            }
        }
    }
}

/// Encrypts queued frames and writes them to the socket, in order.
async fn write_loop(sock: TcpStream, state: Rc<RefCell<State>>) {
    let mut out = Vec::new();
    loop {
        // Emptied before anything else: a pass that ends the loop (closing, or lost)
        // encrypts nothing, and must not send the last pass's records a second time (the
        // peer would fail to decrypt the copy, and lose the close reason with it).
        out.clear();
        let next = poll_fn(|cx| {
            let st = &mut *state.borrow_mut();
            let own = st.tls.wants_write();
            match st.mux.poll_send(own, waker(cx)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(mux::Send::Stop) => return Poll::Ready(None),
                Poll::Ready(mux::Send::Frames) => {}
            }
            let mut failed = None;
            st.mux.take_frames(READ_BYTES, |f| {
                if failed.is_none() {
                    failed = st.tls.writer().write_all(f).err();
                }
            });
            while failed.is_none() && st.tls.wants_write() {
                failed = st.tls.write_tls(&mut out).err();
            }
            if let Some(e) = failed {
                st.mux.lose(io_why(&e));
                return Poll::Ready(None);
            }
            Poll::Ready(Some(()))
        })
        .await;
        if !out.is_empty() {
            if let Err(e) = sock.write_all(&out).await {
                return state.borrow_mut().mux.lose(io_why(&e));
            }
        }
        if next.is_none() {
            let mut st = state.borrow_mut();
            if st.mux.closing() {
                sock.with_socket(|s| s.shutdown(std::net::Shutdown::Write).ok());
                st.mux.close_sent();
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
            let n = poll_fn(|cx| {
                let want = data.len();
                self.conn
                    .state
                    .borrow_mut()
                    .mux
                    .poll_room(self.id, want, waker(cx))
            })
            .await?;
            self.conn.state.borrow_mut().mux.send(self.id, &data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.write_all(&data).await
    }

    pub fn finish(&mut self) -> Result<(), Error> {
        Ok(self.conn.state.borrow_mut().mux.finish(self.id)?)
    }

    pub fn reset(&mut self, code: u32) {
        self.conn.state.borrow_mut().mux.reset(self.id, code);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        // Abandoned before it finished: reset with code 0, as a QUIC send half is.
        self.reset(0);
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
            let id = self.id;
            let next = poll_fn(|cx| self.conn.state.borrow_mut().mux.poll_read(id, waker(cx)));
            match next.await? {
                Some(b) => self.pending = b,
                None => return Ok(None),
            }
        }
        let n = self.pending.len().min(max.max(1));
        Ok(Some(self.pending.split_to(n)))
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
        self.conn.state.borrow_mut().mux.stop(self.id, code);
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.stop(0);
    }
}
