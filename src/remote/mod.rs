//! Remote transfers over QUIC: `tpc://` addresses, the transport tuning, framed I/O on
//! streams, and the pieces shared by `serve` and the push / pull client.
//!
//! Roles are symmetric: the side that has the files is the *sender* (the client in a push,
//! the server in a pull); the other is the *receiver*. The receiver's logic
//! (`receiver.rs`) works beneath a confined root in both cases, so a hostile server can no
//! more write outside the client's destination than a hostile client can outside the
//! server's root.

pub mod client;
pub mod congestion;
pub mod data;
pub mod receiver;
pub mod server;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use congestion::Congestion;
use quinn_proto::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use tpc_core::window::{
    FLOW_WINDOW_BYTES_INITIAL, SEND_WINDOW_BYTES_INITIAL, STREAMS_IN_FLIGHT_MAX,
    STREAM_WINDOW_BYTES,
};
use tpc_core::wire::{ErrorCode, Frame, WireError, FRAME_HEADER_BYTES};
use tpc_engine::rt;
use tpc_engine::transport::{Error as TransportError, ReadExactError, RecvStream, SendStream};

/// Port `serve` listens on by default (shard 0; shard i listens on this + i).
pub const DEFAULT_PORT: u16 = 7440;

/// Streams a peer may have open towards us on one connection: the data streams of one
/// shard (at most `STREAMS_IN_FLIGHT_MAX`) plus the control stream, with room to spare.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 64;
const _: () = assert!(STREAMS_IN_FLIGHT_MAX < STREAMS_PER_CONNECTION_MAX as usize);

/// How long a client waits for a server's handshake before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time after which a silent peer is considered gone: a server that died mid-transfer
/// is reported this long after its last packet. Both ends send keep-alives far more often,
/// and a shard's endpoint answers packets while its blocking pool runs a long syncfs, so
/// only a dead or unreachable peer stays silent this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alives: several fit in one idle timeout, so a few lost ones do not end a transfer.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// Application close codes (QUIC CONNECTION_CLOSE), seen by the peer.
pub const CLOSE_DONE: u32 = 0;
/// The server is over a limit of its own (`tpc_core::admission`): the reason says which.
pub const CLOSE_BUSY: u32 = ErrorCode::Busy as u32;

/// Transport parameters for a connection whose path carries UDP payloads up to
/// `udp_payload_max` (from the route's MTU). The connection's windows start at
/// `FLOW_WINDOW_BYTES_INITIAL` (receive) and `SEND_WINDOW_BYTES_INITIAL` (send), and the
/// QUIC driver grows them from the measured bandwidth-delay product (tpc_core::window);
/// quinn's defaults would cap each stream at a 1.25 MB window and a connection at a
/// 10 MB send window.
pub fn transport_config(udp_payload_max: u16, congestion: Congestion) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(congestion.factory());
    t.receive_window(VarInt::from_u64(FLOW_WINDOW_BYTES_INITIAL).expect("fits a varint"));
    t.send_window(SEND_WINDOW_BYTES_INITIAL);
    // Fixed for the connection's life (quinn-proto has no per-stream tuning): a larger
    // window is filled by more streams in flight (`window::streams_in_flight`).
    t.stream_receive_window(VarInt::from_u64(STREAM_WINDOW_BYTES).expect("fits a varint"));
    t.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    let mut mtud = MtuDiscoveryConfig::default();
    // Discovery searches from the 1200-byte QUIC minimum up to the link's limit.
    mtud.upper_bound(udp_payload_max.max(1200));
    t.mtu_discovery_config(Some(mtud));
    Arc::new(t)
}

/// A remote location `tpc://HOST[:PORT]/PATH`. The path is relative to the server's root;
/// the leading slash only separates it from the authority.
#[derive(Clone, Debug)]
pub struct RemoteSpec {
    /// As written, for messages and the known-servers file (`HOST:PORT`).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path beneath the server root, without the leading slash; a trailing slash is kept
    /// (it selects "the contents of" as in rsync).
    pub path: Vec<u8>,
}

impl RemoteSpec {
    /// Parses `tpc://...`; `None` if the argument is not a remote at all.
    pub fn parse(arg: &[u8]) -> Option<Result<RemoteSpec, String>> {
        let rest = arg.strip_prefix(b"tpc://")?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &[u8]) -> Result<RemoteSpec, String> {
        let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let authority =
            std::str::from_utf8(&rest[..slash]).map_err(|_| "host is not UTF-8".to_string())?;
        let mut path = rest.get(slash + 1..).unwrap_or(&[]).to_vec();
        // `dir/.` means `dir/` (its contents), as for a local path (`tpc_core::place`);
        // the wire has no `.` component.
        if path == b"." {
            path.clear();
        } else if path.ends_with(b"/.") {
            path.pop();
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6
                .find(']')
                .ok_or_else(|| format!("unclosed '[' in {authority:?}"))?;
            let host = &v6[..close];
            let port = match &v6[close + 1..] {
                "" => DEFAULT_PORT,
                p => parse_port(p.strip_prefix(':').ok_or("expected ':' after ']'")?)?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p)?),
                None => (authority.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err("missing host in tpc://HOST[:PORT]/PATH".into());
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(RemoteSpec {
            authority,
            host,
            port,
            path,
        })
    }

    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("bad port {p:?}"))
}

/// `--transport`: what a client dials, or what a server listens on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// Client: QUIC, and TCP when no QUIC handshake completes within `AUTO_QUIC_WAIT`
    /// (UDP blocked on the way). Server: both, on the same port numbers.
    #[default]
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// TCP with TLS 1.3 only.
    Tcp,
}

/// How long `--transport auto` waits for a QUIC handshake before it dials TCP. A QUIC
/// handshake takes one round trip and a little; this leaves room for slow paths and
/// still starts a blocked transfer within a few seconds.
pub const AUTO_QUIC_WAIT: Duration = Duration::from_millis(1500);

/// `--timeout` when not given, on both ends: a session that moves no chunk and no control
/// frame for this long is given up. Keep-alives keep a connection open; only this ends
/// a peer that answers them and does nothing else. The waiting end cannot tell a peer
/// busy with a long step from a stalled one: the server's plan or listing of a whole
/// manifest, or a pulling client's own plan, must finish within it (a few million files
/// at the tens of thousands per second a plan creates them); a larger tree needs a
/// larger `--timeout`, or 0. A 4 MiB chunk on one of 32 streams sharing a 10 Mbit/s
/// path takes about 110 s.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);

/// Runs `fut` for as long as `progress` moves: `None` once a whole `timeout` passed in
/// which it did not (`fut` is then dropped), and never with no timeout (`--timeout 0`).
pub async fn unless_stalled<F: std::future::Future>(
    timeout: Option<Duration>,
    progress: &data::Progress,
    fut: F,
) -> Option<F::Output> {
    let Some(timeout) = timeout else {
        return Some(fut.await);
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        let seen = progress.seen();
        if let Some(out) = rt::within(timeout, fut.as_mut()).await {
            return Some(out);
        }
        if progress.seen() == seen {
            return None;
        }
    }
}

/// Why a session with a peer failed, for the one-line message and the exit code.
#[derive(Debug)]
pub enum SessionError {
    Transport(TransportError),
    /// The peer sent something we refuse (bad frame, broken limit, wrong order).
    Wire(WireError),
    /// The stream ended where a frame was due.
    Ended,
    /// The stream carried bytes after its last frame or run.
    Trailing,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Transport(e) => e.fmt(f),
            SessionError::Wire(e) => write!(f, "protocol error: {e}"),
            SessionError::Ended => write!(f, "peer ended the stream early"),
            SessionError::Trailing => write!(f, "peer sent bytes after the end of a stream"),
        }
    }
}

impl From<TransportError> for SessionError {
    fn from(e: TransportError) -> Self {
        SessionError::Transport(e)
    }
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        SessionError::Wire(e)
    }
}

impl From<ReadExactError> for SessionError {
    fn from(e: ReadExactError) -> Self {
        match e {
            ReadExactError::Transport(q) => SessionError::Transport(q),
            ReadExactError::Truncated => SessionError::Ended,
        }
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream. The length is checked against
/// `FRAME_BYTES_MAX` (in `Frame::header`) before the payload buffer is allocated.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, SessionError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if !recv.read_exact(&mut header).await? {
        return Ok(None);
    }
    let (kind, len) = Frame::header(&header)?;
    // The buffer grows as the payload's bytes arrive, never from the length the header
    // announces: a peer's header-only streams would otherwise make this end allocate
    // FRAME_BYTES_MAX each (issue 25, finding 3).
    let mut payload = Vec::with_capacity(len.min(FRAME_PREALLOC_BYTES_MAX));
    while payload.len() < len {
        match recv.read_chunk(len - payload.len()).await? {
            Some(bytes) => payload.extend_from_slice(&bytes),
            None => return Err(SessionError::Ended),
        }
    }
    Ok(Some(Frame::decode(kind, &payload)?))
}

/// Bytes of a frame's payload buffer made before any of them arrived (most frames are
/// smaller; a larger one grows its buffer as its bytes come in).
const FRAME_PREALLOC_BYTES_MAX: usize = 64 * 1024;

/// Reads a frame that must be there (an `Error` frame included: the session decides
/// what it means).
pub async fn expect_answer(recv: &mut RecvStream) -> Result<Frame, SessionError> {
    read_frame(recv).await?.ok_or(SessionError::Ended)
}

/// Reads the end of a stream whose last frame or run has been read. Every stream is read
/// to its end rather than stopped: a stop can race the peer's finish, and a stream whose
/// finish was refused holds one of the connection's stream credits until it is reset.
pub async fn expect_end(recv: &mut RecvStream) -> Result<(), SessionError> {
    match recv.read_chunk(1).await? {
        None => Ok(()),
        Some(_) => Err(SessionError::Trailing),
    }
}

pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), SessionError> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    send.write_all(&buf).await?;
    Ok(())
}

/// The temporary name of file `file` of session `session`, beside its final name, in
/// the scheme the local copy uses too (`tpc_core::temp`), so either cleans up what the
/// other left. Every shard of the receiving process derives the same name (one token per
/// process), so data streams on any shard find the file the control stream created.
pub fn temp_name(session: u64, file: u32) -> Vec<u8> {
    tpc_core::temp::temp_name(
        tpc_engine::temp::process_token(),
        &format!("{session:x}-{file}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs_parse() {
        let r = RemoteSpec::parse(b"tpc://host/a/b").unwrap().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, &r.path[..]),
            ("host", DEFAULT_PORT, &b"a/b"[..])
        );
        let r = RemoteSpec::parse(b"tpc://[::1]:9/x/").unwrap().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, &r.path[..]),
            ("::1", 9, &b"x/"[..])
        );
        assert_eq!(r.authority, "[::1]:9");
        let r = RemoteSpec::parse(b"tpc://10.0.0.1:7441").unwrap().unwrap();
        assert_eq!((r.port, r.path.len()), (7441, 0));
        assert!(RemoteSpec::parse(b"/local/path").is_none());
        let r = RemoteSpec::parse(b"tpc://h/a/b/.").unwrap().unwrap();
        assert_eq!(&r.path[..], b"a/b/");
        let r = RemoteSpec::parse(b"tpc://h/.").unwrap().unwrap();
        assert_eq!(r.path.len(), 0);
        assert!(RemoteSpec::parse(b"tpc://:80/x").unwrap().is_err());
        assert!(RemoteSpec::parse(b"tpc://h:0/x").unwrap().is_err());
        assert!(RemoteSpec::parse(b"tpc://h:99999/x").unwrap().is_err());
        assert!(RemoteSpec::parse(b"tpc://[::1/x").unwrap().is_err());
    }
}
