//! The transport interface the remote session runs on: a connection with bidirectional
//! streams, per-stream finish, reset and stop with a code, and typed errors. QUIC
//! (`quic.rs`) and TCP + TLS (`tcp.rs`) implement it; the session and its drivers see
//! only these types, so a transfer runs the same over either.
//!
//! Enums rather than trait objects: the two transports are known, the calls are on the
//! data path, and async trait methods would box every future.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use quinn_proto::ConnectionError;
use rustls::AlertDescription;

use crate::quic::{self, QuicError};
use crate::tcp;

/// Which transport carries a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Quic,
    Tcp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Quic => "quic",
            Kind::Tcp => "tcp",
        }
    }
}

/// Why a connection is gone, as far as the session tells causes apart: one type for
/// both transports, defined beside the TCP multiplexer that the core drives.
pub use tpc_core::mux::Why;

/// Why a stream or connection operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The connection is gone.
    Lost(Why),
    /// The peer reset its sending half of the stream with this code.
    Reset(u64),
    /// The peer asked this end to stop sending on the stream with this code.
    Stopped(u64),
    /// The stream was already finished or reset by this end.
    Closed,
    /// No connection could be made.
    Connect(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A peer's text has its control characters escaped, as every peer message's are
        // (`wire::escape_controls`).
        let esc = tpc_core::wire::escape_controls;
        match self {
            Error::Lost(Why::Refused) => write!(f, "connection lost: the peer refused this key"),
            Error::Lost(Why::Version) => {
                write!(
                    f,
                    "connection lost: the peer speaks another protocol version"
                )
            }
            Error::Lost(Why::Closed { code, reason }) => {
                write!(
                    f,
                    "connection lost: closed by peer: {} (code {code})",
                    esc(reason)
                )
            }
            Error::Lost(Why::Other(e)) => write!(f, "connection lost: {}", esc(e)),
            Error::Reset(c) => write!(f, "stream reset by peer (code {c})"),
            Error::Stopped(c) => write!(f, "stream stopped by peer (code {c})"),
            Error::Closed => write!(f, "stream already closed"),
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// QUIC carries a TLS alert as the CRYPTO_ERROR code 0x100 + alert.
fn quic_alert(e: &ConnectionError, alert: AlertDescription) -> bool {
    let code = quinn_proto::TransportErrorCode::crypto(alert.into());
    match e {
        ConnectionError::ConnectionClosed(close) => close.error_code == code,
        ConnectionError::TransportError(t) => t.code == code,
        _ => false,
    }
}

/// Why a QUIC connection is gone.
pub fn quic_why(e: &ConnectionError) -> Why {
    if quic_alert(e, AlertDescription::AccessDenied) {
        Why::Refused
    } else if quic_alert(e, AlertDescription::NoApplicationProtocol) {
        Why::Version
    } else if let ConnectionError::ApplicationClosed(c) = e {
        Why::Closed {
            code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        }
    } else {
        Why::Other(e.to_string())
    }
}

impl From<QuicError> for Error {
    fn from(e: QuicError) -> Error {
        match e {
            QuicError::Lost(c) => Error::Lost(quic_why(&c)),
            QuicError::Reset(c) => Error::Reset(c),
            QuicError::Stopped(c) => Error::Stopped(c),
            QuicError::Closed => Error::Closed,
            QuicError::Connect(s) => Error::Connect(s),
        }
    }
}

#[derive(Debug)]
pub enum ReadExactError {
    Transport(Error),
    /// The stream ended in the middle of a value.
    Truncated,
}

impl From<Error> for ReadExactError {
    fn from(e: Error) -> Self {
        ReadExactError::Transport(e)
    }
}

impl From<quic::ReadExactError> for ReadExactError {
    fn from(e: quic::ReadExactError) -> Self {
        match e {
            quic::ReadExactError::Quic(q) => ReadExactError::Transport(q.into()),
            quic::ReadExactError::Truncated => ReadExactError::Truncated,
        }
    }
}

impl std::fmt::Display for ReadExactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadExactError::Transport(e) => e.fmt(f),
            ReadExactError::Truncated => write!(f, "stream ended in the middle of a frame"),
        }
    }
}

/// One connection, on either transport. Cheap to clone.
#[derive(Clone)]
pub enum Connection {
    Quic(quic::Connection),
    Tcp(tcp::Connection),
}

impl Connection {
    pub fn kind(&self) -> Kind {
        match self {
            Connection::Quic(_) => Kind::Quic,
            Connection::Tcp(_) => Kind::Tcp,
        }
    }

    pub fn quic(&self) -> Option<&quic::Connection> {
        match self {
            Connection::Quic(c) => Some(c),
            Connection::Tcp(_) => None,
        }
    }

    pub fn remote_address(&self) -> Option<SocketAddr> {
        match self {
            Connection::Quic(c) => c.remote_address(),
            Connection::Tcp(c) => Some(c.remote_address()),
        }
    }

    /// The certificate the peer proved it holds the key of, once the handshake is done:
    /// what the server identifies a client by.
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        match self {
            Connection::Quic(c) => {
                let chain = c.peer_identity()?;
                let chain =
                    chain.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
                chain.first().cloned()
            }
            Connection::Tcp(c) => c.peer_certificate(),
        }
    }

    /// Whether the connection is gone.
    pub fn is_lost(&self) -> bool {
        match self {
            Connection::Quic(c) => c.lost_reason().is_some(),
            Connection::Tcp(c) => c.lost().is_some(),
        }
    }

    /// What the streams in flight should be able to fill, in bytes: QUIC's tuned flow
    /// window; over TCP, what the multiplexer lets the streams of one connection hold.
    pub fn flow_window(&self) -> u64 {
        match self {
            Connection::Quic(c) => c.flow_window(),
            Connection::Tcp(_) => tpc_core::window::FLOW_WINDOW_BYTES_INITIAL,
        }
    }

    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), Error> {
        Ok(match self {
            Connection::Quic(c) => {
                let (s, r) = c.open_bi().await?;
                (SendStream::Quic(s), RecvStream::Quic(r))
            }
            Connection::Tcp(c) => {
                let (s, r) = c.open_bi().await?;
                (SendStream::Tcp(s), RecvStream::Tcp(r))
            }
        })
    }

    pub async fn accept_bi(&self) -> Option<(SendStream, RecvStream)> {
        Some(match self {
            Connection::Quic(c) => {
                let (s, r) = c.accept_bi().await?;
                (SendStream::Quic(s), RecvStream::Quic(r))
            }
            Connection::Tcp(c) => {
                let (s, r) = c.accept_bi().await?;
                (SendStream::Tcp(s), RecvStream::Tcp(r))
            }
        })
    }

    /// Closes with an application code and reason the peer will see.
    pub fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Connection::Quic(c) => c.close(code, reason),
            Connection::Tcp(c) => c.close(code, reason),
        }
    }
}

pub enum SendStream {
    Quic(quic::SendStream),
    Tcp(tcp::SendStream),
}

impl SendStream {
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        match self {
            SendStream::Quic(s) => Ok(s.write_all(data).await?),
            SendStream::Tcp(s) => s.write_all(data).await,
        }
    }

    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        match self {
            SendStream::Quic(s) => Ok(s.write_bytes(data).await?),
            SendStream::Tcp(s) => s.write_bytes(data).await,
        }
    }

    pub fn finish(&mut self) -> Result<(), Error> {
        match self {
            SendStream::Quic(s) => Ok(s.finish()?),
            SendStream::Tcp(s) => s.finish(),
        }
    }

    pub fn reset(&mut self, code: u32) {
        match self {
            SendStream::Quic(s) => s.reset(code),
            SendStream::Tcp(s) => s.reset(code),
        }
    }

    /// Bytes per second the connection can send, where its transport estimates it
    /// (QUIC's congestion controller; TCP's is the kernel's, unseen here).
    pub fn send_rate_estimate(&self) -> Option<f64> {
        match self {
            SendStream::Quic(s) => s.connection().send_rate_estimate(),
            SendStream::Tcp(_) => None,
        }
    }

    /// Permits a sender takes before staging a chunk (QUIC, `quic::Connection::
    /// send_staging`); TCP's multiplexer bounds what is queued itself.
    pub fn send_staging(&self) -> Option<Rc<async_lock::Semaphore>> {
        match self {
            SendStream::Quic(s) => s.connection().send_staging(),
            SendStream::Tcp(_) => None,
        }
    }
}

pub enum RecvStream {
    Quic(quic::RecvStream),
    Tcp(tcp::RecvStream),
}

impl RecvStream {
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        match self {
            RecvStream::Quic(r) => Ok(r.read_chunk(max).await?),
            RecvStream::Tcp(r) => r.read_chunk(max).await,
        }
    }

    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<bool, ReadExactError> {
        match self {
            RecvStream::Quic(r) => Ok(r.read_exact(out).await?),
            RecvStream::Tcp(r) => r.read_exact(out).await,
        }
    }

    pub fn stop(&mut self, code: u32) {
        match self {
            RecvStream::Quic(r) => r.stop(code),
            RecvStream::Tcp(r) => r.stop(code),
        }
    }
}
