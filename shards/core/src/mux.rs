//! The TCP transport's stream multiplexer, sans-IO: the plaintext inside one TLS stream
//! in, frames to send and stream data out. It gives the session what QUIC streams give
//! it: bidirectional streams, each with its own flow control, finish, reset and stop with
//! a code, and a connection close with a code and reason. The engine's `tcp.rs` drives it
//! over rustls and a socket; a fuzz target and the unit tests below drive it directly.
//!
//! Why our own multiplexer: the session needs a reset code per stream (a server that
//! fails part way through a Get says why in the reset, docs/PROTOCOL.md §7) and runs on
//! two drivers of single-threaded shards. yamux (libp2p's) resets without a code and
//! wants a polled connection object behind `futures::io`; h2 needs tokio; both frame
//! data in small units for interactive use.
//!
//! The frames (all integers little-endian):
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
//! queues a CLOSE saying which and ends the connection.
//!
//! Waiting is the driver's business: where an operation must wait, it takes a `Signal`
//! (the engine's holds a task's waker) and fires it when the wait may be over.

use std::collections::{HashMap, VecDeque};
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};

/// Streams one side may have open that it opened: as QUIC's stream limit.
pub const STREAMS_MAX: u32 = 64;
/// What a stream's receiver grants at first, and at most holds unread.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Largest stream number: a connection opens at most half of these on each side, far
/// more than any session needs, and the counters never wrap.
pub const STREAM_ID_MAX: u32 = 1 << 31;
/// Largest DATA payload: large enough that framing costs nothing, small enough that
/// streams interleave finely on the wire.
pub const DATA_FRAME_BYTES_MAX: u32 = 256 * 1024;
/// Frames queued to send before stream writes wait, and before the peer's frames are
/// read no more (their answers would queue without bound otherwise).
pub const OUT_QUEUE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Longest close reason.
pub const CLOSE_REASON_BYTES_MAX: u32 = 1024;
/// A frame's header: kind, stream, value.
pub const HEADER_BYTES: usize = 9;
/// DATA payloads this large keep sharing the receive buffer rather than being copied.
const SHARE_PAYLOAD_BYTES_MIN: usize = 64 * 1024;

const DATA: u8 = 0;
const FIN: u8 = 1;
const RESET: u8 = 2;
const STOP: u8 = 3;
const WINDOW: u8 = 4;
const CREDIT: u8 = 5;
const CLOSE: u8 = 6;

/// Why a connection is gone, as far as the session tells causes apart. Both transports
/// report it (the engine's `transport::Why` is this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The peer refused this end's key (TLS `access_denied`).
    Refused,
    /// The peer speaks another protocol version (TLS `no_application_protocol`).
    Version,
    /// The peer closed the connection with this application code and reason.
    Closed { code: u32, reason: String },
    /// Anything else: timed out, reset, a TLS or framing failure.
    Other(String),
}

/// Why a stream operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The connection is gone.
    Lost(Why),
    /// The peer reset its sending half of the stream with this code.
    Reset(u64),
    /// The peer asked this end to stop sending on the stream with this code.
    Stopped(u64),
    /// The stream was already finished or reset by this end.
    Closed,
}

/// Where a waiting task is told to look again. `()` never tells anyone: for callers that
/// poll in a loop (the fuzz target, the tests).
pub trait Signal: Default {
    fn signal(&mut self);
}

impl Signal for () {
    fn signal(&mut self) {}
}

#[derive(Default)]
struct Stream<S> {
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
    reader: S,
    tx_credit: u64,
    tx_stopped: Option<u64>,
    /// The application may still write (not finished, reset or dropped).
    tx_open: bool,
    writer: S,
    /// Opened by the peer.
    remote: bool,
}

impl<S: Signal> Stream<S> {
    fn new(remote: bool) -> Self {
        Stream {
            rx: VecDeque::new(),
            rx_fin: false,
            rx_reset: None,
            rx_allowed: u64::from(STREAM_WINDOW_BYTES),
            rx_total: 0,
            rx_unacked: 0,
            rx_open: true,
            reader: S::default(),
            tx_credit: u64::from(STREAM_WINDOW_BYTES),
            tx_stopped: None,
            tx_open: true,
            writer: S::default(),
            remote,
        }
    }

    fn done(&self) -> bool {
        !self.tx_open && (self.rx_fin || self.rx_reset.is_some()) && !self.rx_open
    }
}

/// One connection's multiplexer.
pub struct Mux<S> {
    client: bool,
    streams: HashMap<u32, Stream<S>>,
    next_local: u32,
    next_remote: u32,
    open_credit: u32,
    remote_open: u32,
    accepted: VecDeque<u32>,
    /// Tasks waiting to open or accept a stream, or for room in the out queue.
    waiters: Vec<S>,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    /// The task that sends the out queue.
    sender: S,
    /// The peer's bytes not yet making a whole frame.
    plain: BytesMut,
    lost: Option<Why>,
    /// Our CLOSE is queued: nothing more goes out after it.
    closing: bool,
    closed: bool,
}

impl<S: Signal> Mux<S> {
    /// A new connection's multiplexer, for the TLS client's end or the server's.
    pub fn new(client: bool) -> Self {
        let first = if client { 1 } else { 2 };
        Mux {
            client,
            streams: HashMap::new(),
            next_local: first,
            next_remote: 3 - first,
            open_credit: STREAMS_MAX,
            remote_open: 0,
            accepted: VecDeque::new(),
            waiters: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            sender: S::default(),
            plain: BytesMut::new(),
            lost: None,
            closing: false,
            closed: false,
        }
    }

    fn wake_waiters(&mut self) {
        for mut w in self.waiters.drain(..) {
            w.signal();
        }
    }

    fn wake_all(&mut self) {
        self.wake_waiters();
        for s in self.streams.values_mut() {
            s.reader.signal();
            s.writer.signal();
        }
        self.sender.signal();
    }

    /// Why the connection is gone, once it is.
    pub fn lost(&self) -> Option<&Why> {
        self.lost.as_ref()
    }

    /// Ends the connection (the first cause is kept) and wakes every waiting task. What
    /// streams hold stays readable; a part of a frame is dropped, as no more will come.
    pub fn lose(&mut self, why: Why) {
        if self.lost.is_none() {
            self.lost = Some(why);
        }
        self.plain = BytesMut::new();
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
        self.sender.signal();
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

    /// The peer broke the protocol: a CLOSE says how, and the connection ends.
    pub fn violation(&mut self, why: &str) {
        let reason = format!("received a bad frame: {why}");
        self.queue(CLOSE, 1, reason.len() as u32, reason.as_bytes());
        self.closing = true;
        self.lose(Why::Other(reason));
    }

    /// The stream a frame from the peer names: an open one, a new one the peer opens, or
    /// `None` for one already closed (late frames are dropped).
    fn stream_for(&mut self, id: u32, opens: bool) -> Result<Option<&mut Stream<S>>, &'static str> {
        let peer_parity = u32::from(self.client) ^ 1;
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
            self.wake_waiters();
        } else if id % 2 != peer_parity && id >= self.next_local {
            return Err("frame for a stream never opened");
        }
        Ok(self.streams.get_mut(&id))
    }

    /// Handles one frame from the peer.
    fn frame(&mut self, kind: u8, id: u32, value: u32, payload: Bytes) -> Result<(), &'static str> {
        match kind {
            CREDIT => {
                self.open_credit = self.open_credit.saturating_add(value).min(STREAMS_MAX);
                self.wake_waiters();
                return Ok(());
            }
            CLOSE => {
                let reason = String::from_utf8_lossy(&payload).into_owned();
                self.closed = true;
                self.lose(Why::Closed { code: id, reason });
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
                    s.reader.signal();
                } else {
                    // Stopped: dropped. An honest peer stops sending once it sees the
                    // STOP; what was in flight is allowed here, and no WINDOW answers it
                    // (a peer could make us queue one per frame otherwise).
                    s.rx_allowed += payload.len() as u64;
                }
            }
            FIN => {
                s.rx_fin = true;
                s.reader.signal();
            }
            RESET => {
                s.rx_reset = Some(u64::from(value));
                s.rx.clear();
                s.reader.signal();
            }
            STOP => {
                s.tx_stopped = Some(u64::from(value));
                s.writer.signal();
            }
            WINDOW => {
                s.tx_credit = s.tx_credit.saturating_add(u64::from(value));
                s.writer.signal();
            }
            _ => return Err("unknown frame kind"),
        }
        self.reap(id);
        Ok(())
    }

    /// Takes plaintext the peer sent and handles every whole frame in what has arrived.
    /// False once the connection is lost (a violation queued its CLOSE).
    pub fn receive(&mut self, data: &[u8]) -> bool {
        if self.lost.is_some() {
            return false;
        }
        self.plain.extend_from_slice(data);
        match self.frames() {
            Ok(()) => self.lost.is_none(),
            Err(e) => {
                self.violation(e);
                false
            }
        }
    }

    fn frames(&mut self) -> Result<(), &'static str> {
        while self.plain.len() >= HEADER_BYTES && self.lost.is_none() {
            let p = &self.plain;
            let kind = p[0];
            let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
            let value = u32::from_le_bytes([p[5], p[6], p[7], p[8]]);
            let len = match kind {
                DATA if value <= DATA_FRAME_BYTES_MAX => value as usize,
                CLOSE if value <= CLOSE_REASON_BYTES_MAX => value as usize,
                DATA | CLOSE => return Err("frame longer than its limit"),
                _ => 0,
            };
            if self.plain.len() < HEADER_BYTES + len {
                break;
            }
            self.plain.advance(HEADER_BYTES);
            // A small payload is copied out, so that it never pins the large buffer it
            // arrived in past its own bytes; a large one shares it.
            let payload = if len < SHARE_PAYLOAD_BYTES_MIN {
                let p = Bytes::copy_from_slice(&self.plain[..len]);
                self.plain.advance(len);
                p
            } else {
                self.plain.split_to(len).freeze()
            };
            self.frame(kind, id, value, payload)?;
        }
        Ok(())
    }

    /// The peer's byte stream ended.
    pub fn peer_ended(&mut self) {
        self.closed = true;
        self.lose(Why::Other("the peer closed the connection".into()));
    }

    /// Ready while the peer's frames may be read: the out queue has room (the peer reads
    /// what this end queued, answers to its frames included), or the connection is gone.
    pub fn poll_receive(&mut self, wait: impl FnOnce() -> S) -> Poll<()> {
        if self.out_bytes <= OUT_QUEUE_BYTES_MAX || self.lost.is_some() {
            return Poll::Ready(());
        }
        self.waiters.push(wait());
        Poll::Pending
    }

    /// What the sending task does next. `own` says the driver's encryption has bytes of
    /// its own to send (a TLS key update, an alert), so the task goes on with or without
    /// frames.
    pub fn poll_send(&mut self, own: bool, wait: impl FnOnce() -> S) -> Poll<Send> {
        if self.lost.is_some() && !self.closing {
            return Poll::Ready(Send::Stop);
        }
        if self.out.is_empty() && !own {
            if self.closing {
                return Poll::Ready(Send::Stop);
            }
            self.sender = wait();
            return Poll::Pending;
        }
        Poll::Ready(Send::Frames)
    }

    /// Wakes the sending task: the driver's encryption has bytes to send.
    pub fn wake_sender(&mut self) {
        self.sender.signal();
    }

    /// The next queued frames, about `max` bytes in all (a frame is never split), to
    /// `into`; wakes the tasks waiting for room.
    pub fn take_frames(&mut self, max: usize, mut into: impl FnMut(&[u8])) {
        let mut moved = 0;
        while let Some(f) = self.out.pop_front() {
            moved += f.len();
            into(&f);
            if moved >= max {
                break;
            }
        }
        self.out_bytes -= moved;
        self.wake_waiters();
    }

    /// Queued frames are all sent, our CLOSE last if there was one; once it has gone, the
    /// connection is over.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Our CLOSE has gone out.
    pub fn close_sent(&mut self) {
        self.closed = true;
        self.lose(Why::Closed {
            code: 0,
            reason: "closed".into(),
        });
    }

    /// Opens a stream of this side, within the peer's credit.
    pub fn poll_open(&mut self, wait: impl FnOnce() -> S) -> Poll<Result<u32, Why>> {
        if let Some(e) = &self.lost {
            return Poll::Ready(Err(e.clone()));
        }
        if self.next_local > STREAM_ID_MAX {
            return Poll::Ready(Err(Why::Other("stream numbers ran out".into())));
        }
        if self.open_credit == 0 {
            self.waiters.push(wait());
            return Poll::Pending;
        }
        self.open_credit -= 1;
        let id = self.next_local;
        self.next_local += 2;
        self.streams.insert(id, Stream::new(false));
        Poll::Ready(Ok(id))
    }

    /// The next stream the peer opened; `None` once the connection is gone.
    pub fn poll_accept(&mut self, wait: impl FnOnce() -> S) -> Poll<Option<u32>> {
        if let Some(id) = self.accepted.pop_front() {
            return Poll::Ready(Some(id));
        }
        if self.lost.is_some() {
            return Poll::Ready(None);
        }
        self.waiters.push(wait());
        Poll::Pending
    }

    /// How many bytes of `want` may go on stream `id` now: within its credit, a frame,
    /// and the out queue.
    pub fn poll_room(
        &mut self,
        id: u32,
        want: usize,
        wait: impl FnOnce() -> S,
    ) -> Poll<Result<usize, StreamError>> {
        if let Some(e) = &self.lost {
            return Poll::Ready(Err(StreamError::Lost(e.clone())));
        }
        let full = self.out_bytes >= OUT_QUEUE_BYTES_MAX;
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.tx_open) else {
            return Poll::Ready(Err(StreamError::Closed));
        };
        if let Some(code) = s.tx_stopped {
            return Poll::Ready(Err(StreamError::Stopped(code)));
        }
        if s.tx_credit == 0 {
            s.writer = wait();
            return Poll::Pending;
        }
        if full {
            self.waiters.push(wait());
            return Poll::Pending;
        }
        let n = (want as u64)
            .min(s.tx_credit)
            .min(u64::from(DATA_FRAME_BYTES_MAX));
        Poll::Ready(Ok(n as usize))
    }

    /// Queues `data` on stream `id`: no more than `poll_room` just allowed.
    pub fn send(&mut self, id: u32, data: &[u8]) {
        let s = self.streams.get_mut(&id).expect("poll_room found it open");
        assert!(
            data.len() as u64 <= s.tx_credit.min(u64::from(DATA_FRAME_BYTES_MAX)),
            "within the room poll_room gave"
        );
        s.tx_credit -= data.len() as u64;
        self.queue(DATA, id, data.len() as u32, data);
    }

    fn end_with(&mut self, id: u32, kind: u8, code: u32) -> Result<(), StreamError> {
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.tx_open) else {
            return Err(StreamError::Closed);
        };
        s.tx_open = false;
        self.queue(kind, id, code, &[]);
        self.reap(id);
        Ok(())
    }

    /// Ends this side's half of stream `id`.
    pub fn finish(&mut self, id: u32) -> Result<(), StreamError> {
        if let Some(e) = &self.lost {
            return Err(StreamError::Lost(e.clone()));
        }
        if let Some(code) = self.streams.get(&id).and_then(|s| s.tx_stopped) {
            return Err(StreamError::Stopped(code));
        }
        self.end_with(id, FIN, 0)
    }

    /// Abandons this side's half of stream `id` with `code` (nothing if it is over).
    pub fn reset(&mut self, id: u32, code: u32) {
        let _ = self.end_with(id, RESET, code);
    }

    /// The next bytes the peer sent on stream `id`; `None` at its end. Reading grants the
    /// peer more window once half of it is consumed.
    pub fn poll_read(
        &mut self,
        id: u32,
        wait: impl FnOnce() -> S,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        let lost = self.lost.clone();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Ok(None));
        };
        if let Some(b) = s.rx.pop_front() {
            s.rx_unacked += b.len() as u64;
            if s.rx_unacked >= u64::from(STREAM_WINDOW_BYTES / 2) && !s.rx_fin {
                let n = s.rx_unacked as u32;
                s.rx_allowed += s.rx_unacked;
                s.rx_unacked = 0;
                self.queue(WINDOW, id, n, &[]);
            }
            return Poll::Ready(Ok(Some(b)));
        }
        if let Some(code) = s.rx_reset {
            return Poll::Ready(Err(StreamError::Reset(code)));
        }
        if s.rx_fin {
            return Poll::Ready(Ok(None));
        }
        if let Some(e) = lost {
            return Poll::Ready(Err(StreamError::Lost(e)));
        }
        s.reader = wait();
        Poll::Pending
    }

    /// Tells the peer to stop sending on stream `id`; what arrives is dropped.
    pub fn stop(&mut self, id: u32, code: u32) {
        let Some(s) = self.streams.get_mut(&id).filter(|s| s.rx_open) else {
            return;
        };
        s.rx_open = false;
        let ended = s.rx_fin || s.rx_reset.is_some();
        s.rx.clear();
        if !ended {
            self.queue(STOP, id, code, &[]);
        }
        self.reap(id);
    }

    /// Closes the connection with `code` and `reason` (cut to its limit), queued behind
    /// what was written.
    pub fn close(&mut self, code: u32, reason: &[u8]) {
        let reason = &reason[..reason.len().min(CLOSE_REASON_BYTES_MAX as usize)];
        self.queue(CLOSE, code, reason.len() as u32, reason);
        self.closing = true;
    }

    /// Ready once the close has gone out or the connection is gone.
    pub fn poll_closed(&mut self, wait: impl FnOnce() -> S) -> Poll<()> {
        if self.closed || self.lost.is_some() {
            return Poll::Ready(());
        }
        self.waiters.push(wait());
        Poll::Pending
    }

    /// What this end holds for the peer's streams and frames, in bytes: the unread data
    /// of every stream and the part of a frame not yet whole. Bounded by the limits above
    /// whatever the peer sends (the fuzz target checks it).
    pub fn buffered_bytes(&self) -> usize {
        let unread: usize = self
            .streams
            .values()
            .flat_map(|s| s.rx.iter())
            .map(Bytes::len)
            .sum();
        unread + self.plain.len()
    }

    /// The most unread bytes one stream holds: never above `STREAM_WINDOW_BYTES`.
    pub fn most_unread_bytes(&self) -> usize {
        let unread = |s: &Stream<S>| s.rx.iter().map(Bytes::len).sum::<usize>();
        self.streams.values().map(unread).max().unwrap_or(0)
    }

    /// Streams open, of either side.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of frames queued to send.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes
    }
}

/// What the sending task does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Send {
    /// Take frames (`take_frames`, perhaps none) and send them with what the driver
    /// has of its own.
    Frames,
    /// Nothing more goes out: the connection is gone, or its CLOSE was the last frame.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    type M = Mux<()>;

    /// Moves everything `from` queued into `to`; what `to` made of it.
    fn pump(from: &mut M, to: &mut M) -> bool {
        let mut bytes = Vec::new();
        from.take_frames(usize::MAX, |f| bytes.extend_from_slice(f));
        to.receive(&bytes)
    }

    fn ready<T>(p: Poll<T>) -> T {
        match p {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pending"),
        }
    }

    fn frame(kind: u8, id: u32, value: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(&value.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn reason(m: &M) -> String {
        match m.lost() {
            Some(Why::Other(r)) => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_carries_data_and_its_end_and_returns_its_credit() {
        let (mut c, mut s) = (M::new(true), M::new(false));
        let id = ready(c.poll_open(|| ())).unwrap();
        assert_eq!(id, 1);
        c.send(id, b"hello");
        c.finish(id).unwrap();
        assert!(pump(&mut c, &mut s));
        let got = ready(s.poll_accept(|| ())).unwrap();
        assert_eq!(got, id);
        assert_eq!(
            &ready(s.poll_read(id, || ())).unwrap().unwrap()[..],
            b"hello"
        );
        assert_eq!(ready(s.poll_read(id, || ())), Ok(None));
        s.send(id, b"back");
        s.finish(id).unwrap();
        s.stop(id, 0);
        assert_eq!(s.stream_count(), 0, "both halves done");
        assert!(pump(&mut s, &mut c));
        assert_eq!(
            &ready(c.poll_read(id, || ())).unwrap().unwrap()[..],
            b"back"
        );
        assert_eq!(ready(c.poll_read(id, || ())), Ok(None));
        c.stop(id, 0);
        assert_eq!(c.stream_count(), 0);
        assert_eq!(c.open_credit, STREAMS_MAX, "the server's CREDIT came back");
    }

    #[test]
    fn reading_half_the_window_grants_more_and_a_waiting_writer_goes_on() {
        let (mut c, mut s) = (M::new(true), M::new(false));
        let id = ready(c.poll_open(|| ())).unwrap();
        let block = vec![7u8; DATA_FRAME_BYTES_MAX as usize];
        let mut sent = 0;
        while let Poll::Ready(Ok(n)) = c.poll_room(id, block.len(), || ()) {
            c.send(id, &block[..n]);
            sent += n;
            assert!(pump(&mut c, &mut s));
        }
        assert_eq!(sent, STREAM_WINDOW_BYTES as usize, "the window, no more");
        let mut read = 0;
        while read < sent / 2 {
            read += ready(s.poll_read(id, || ())).unwrap().unwrap().len();
        }
        assert!(pump(&mut s, &mut c));
        assert!(matches!(c.poll_room(id, 1, || ()), Poll::Ready(Ok(1))));
    }

    #[test]
    fn a_peer_that_breaks_a_limit_gets_a_close_saying_which() {
        let cases: [(Vec<u8>, &str); 6] = [
            (
                frame(DATA, 1, DATA_FRAME_BYTES_MAX + 1, &[]),
                "frame longer than its limit",
            ),
            (
                frame(CLOSE, 0, CLOSE_REASON_BYTES_MAX + 1, &[]),
                "frame longer than its limit",
            ),
            (frame(FIN, 2 * STREAMS_MAX + 1, 0, &[]), "too many streams"),
            (
                frame(FIN, STREAM_ID_MAX + 1, 0, &[]),
                "stream number out of range",
            ),
            (frame(WINDOW, 1, 5, &[]), "frame for a stream never opened"),
            (frame(9, 1, 0, &[]), "unknown frame kind"),
        ];
        for (bytes, why) in cases {
            let mut s = M::new(false);
            assert!(!s.receive(&bytes), "{why}");
            assert_eq!(reason(&s), format!("received a bad frame: {why}"));
            let mut c = M::new(true);
            pump(&mut s, &mut c);
            assert!(
                matches!(c.lost(), Some(Why::Closed { code: 1, reason }) if reason.ends_with(why)),
                "{why}: {:?}",
                c.lost()
            );
            assert!(s.buffered_bytes() <= HEADER_BYTES);
        }
    }

    #[test]
    fn data_past_the_window_or_after_the_end_is_refused() {
        let mut s = M::new(false);
        let big = vec![0u8; DATA_FRAME_BYTES_MAX as usize];
        let frames = STREAM_WINDOW_BYTES / DATA_FRAME_BYTES_MAX;
        for _ in 0..frames {
            assert!(s.receive(&frame(DATA, 1, DATA_FRAME_BYTES_MAX, &big)));
        }
        assert_eq!(s.buffered_bytes(), STREAM_WINDOW_BYTES as usize);
        assert!(!s.receive(&frame(DATA, 1, 1, &[0])));
        assert_eq!(
            reason(&s),
            "received a bad frame: data beyond the stream's window or end"
        );

        let mut s = M::new(false);
        assert!(s.receive(&frame(FIN, 3, 0, &[])));
        assert!(!s.receive(&frame(DATA, 3, 1, &[0])));
    }

    #[test]
    fn a_stream_opens_every_lower_one_of_its_side_and_counts_them() {
        let mut s = M::new(false);
        assert!(s.receive(&frame(FIN, 2 * STREAMS_MAX - 1, 0, &[])));
        assert_eq!(s.stream_count(), STREAMS_MAX as usize);
        for want in (1..2 * STREAMS_MAX).step_by(2) {
            assert_eq!(ready(s.poll_accept(|| ())), Some(want));
        }
        assert!(!s.receive(&frame(FIN, 2 * STREAMS_MAX + 1, 0, &[])));
        assert_eq!(reason(&s), "received a bad frame: too many streams");
    }

    #[test]
    fn a_stop_reaches_the_writer_with_its_code_and_a_reset_the_reader() {
        let (mut c, mut s) = (M::new(true), M::new(false));
        let a = ready(c.poll_open(|| ())).unwrap();
        let b = ready(c.poll_open(|| ())).unwrap();
        c.send(a, b"x");
        c.send(b, b"y");
        assert!(pump(&mut c, &mut s));
        s.stop(a, 7);
        assert!(pump(&mut s, &mut c));
        assert_eq!(
            ready(c.poll_room(a, 1, || ())),
            Err(StreamError::Stopped(7))
        );
        assert_eq!(c.finish(a), Err(StreamError::Stopped(7)));
        c.reset(b, 9);
        assert!(pump(&mut c, &mut s));
        assert_eq!(ready(s.poll_read(b, || ())), Err(StreamError::Reset(9)));
    }

    #[test]
    fn a_full_out_queue_stops_writes_and_reading_the_peer() {
        let mut c = M::new(true);
        let big = vec![1u8; 1024 * 1024];
        let mut streams = Vec::new();
        // Streams of their own window each, until the queue holds its limit.
        loop {
            let id = ready(c.poll_open(|| ())).unwrap();
            streams.push(id);
            match c.poll_room(id, big.len(), || ()) {
                Poll::Ready(Ok(n)) => c.send(id, &big[..n]),
                Poll::Pending => break,
                Poll::Ready(Err(e)) => panic!("{e:?}"),
            }
        }
        assert!(c.queued_bytes() >= OUT_QUEUE_BYTES_MAX);
        assert!(
            c.queued_bytes() < OUT_QUEUE_BYTES_MAX + HEADER_BYTES + DATA_FRAME_BYTES_MAX as usize
        );
        assert!(c.poll_receive(|| ()).is_pending(), "the peer's frames wait");
        c.take_frames(usize::MAX, |_| {});
        assert!(c.poll_receive(|| ()).is_ready());
        assert!(c.poll_room(streams[0], 1, || ()).is_ready());
    }

    #[test]
    fn a_close_goes_out_last_and_ends_the_connection() {
        let (mut c, mut s) = (M::new(true), M::new(false));
        let id = ready(c.poll_open(|| ())).unwrap();
        c.send(id, b"last words");
        c.close(3, b"done");
        c.send(id, b"never");
        assert_eq!(ready(c.poll_send(false, || ())), Send::Frames);
        assert!(!pump(&mut c, &mut s), "the CLOSE ends it");
        assert_eq!(ready(c.poll_send(false, || ())), Send::Stop);
        assert_eq!(
            &ready(s.poll_read(id, || ())).unwrap().unwrap()[..],
            b"last words"
        );
        assert_eq!(
            s.lost(),
            Some(&Why::Closed {
                code: 3,
                reason: "done".into()
            })
        );
        assert_eq!(
            ready(s.poll_read(id, || ())),
            Err(StreamError::Lost(s.lost().unwrap().clone()))
        );
    }
}
