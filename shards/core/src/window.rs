//! Flow-control windows and streams in flight sized from the measured bandwidth-delay
//! product, as TCP's receive-buffer auto-tuning does, instead of one size for every path.
//!
//! A QUIC connection may not have more bytes unread at the receiver (its receive window)
//! or unacknowledged at the sender (its send window) than these windows allow. Sized for
//! the fastest, longest path, they let every peer's connection pin that much memory;
//! sized for a LAN, they cap a long fat pipe at window / RTT. So a receive window starts at
//! what the receiver's own chunk pipeline needs (`FLOW_WINDOW_BYTES_INITIAL`), a send
//! window at what a path needs (`SEND_WINDOW_BYTES_INITIAL`), and each end
//! measures, at most once per round trip, how many bytes the connection moved in a round
//! trip and sets the window to `WINDOW_GAIN` times that when that is larger, never shrinking it (connections live for one
//! transfer) and never past `FLOW_WINDOW_BYTES_MAX`, nor past what is left of the shard's
//! `ENDPOINT_WINDOW_BYTES_MAX` over all its connections. A window that limits the transfer
//! is used in full each round trip, so it doubles each round trip, as the congestion
//! window does in start-up; one that does not limit it stays where it is.
//!
//! The round trip and the byte counters come from the caller, and time as a `Duration`
//! since any fixed origin: nothing here reads a clock. Callers count bytes a peer cannot
//! inflate: stream bytes the application read (not datagrams, which a peer can pad or
//! repeat), and the minimum RTT (not the smoothed one, which delayed acks stretch).

use std::time::Duration;

use crate::limits::CHUNK_SIZE_BYTES;

/// Window at a connection's start, and its floor, in bytes: a chunk for each of the
/// ranges in flight (16 × 4 MiB). The receiver reads each range's stream a chunk at a
/// time and stops reading it while that chunk is verified and written, so up to a chunk
/// per stream sits unread in the window without any path delay. An 8 MiB start, sized
/// for the path alone, blocked the sender on flow control while the network idled: at
/// 50 ms and no loss, 3 of 22 pushes of 1 GiB took 17-25 s instead of 12 (both
/// connections' rates collapsed for seconds), against none of 14 with 62.5 MB windows.
pub const FLOW_WINDOW_BYTES_INITIAL: u64 = STREAMS_IN_FLIGHT_MIN as u64 * CHUNK_SIZE_BYTES;

/// Send window at a connection's start, and its floor, in bytes. The send window bounds
/// what the sender holds written but not yet acknowledged (QUIC's send buffer), which
/// the receiver's unread chunks do not count against: acknowledged data leaves it once
/// everything before it on its stream is acknowledged too, read by the receiving
/// application or not. So it starts at what a path needs (16 MiB is twice the bandwidth-delay
/// product of 1 Gbit/s at 64 ms) and grows with the path like the receive window,
/// instead of starting at the receiver's chunk pipeline. Each byte of it is memory the
/// sender touches: a 64 MiB start made a loopback push of 2 GiB spend about a quarter of
/// its CPU zeroing fresh pages (PERFORMANCE.md, "Where a push's time goes").
pub const SEND_WINDOW_BYTES_INITIAL: u64 = 16 * 1024 * 1024;

/// Largest window the tuner grows one connection's window to, in bytes: 512 MiB is
/// 43 Gbit/s at 100 ms on one connection, and each shard has its own.
pub const FLOW_WINDOW_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// Most bytes one direction's windows may grow to in sum over all of a shard's
/// connections: whatever its peers do, growth stops there. Initial windows count toward
/// it but are not refused by it (each connection gets `FLOW_WINDOW_BYTES_INITIAL` to
/// receive, `SEND_WINDOW_BYTES_INITIAL` to send), so past 16 connections (64 for send
/// windows) a shard's windows in that direction simply stop growing (and only clients in the
/// server's authorized-clients file get a connection at all). 1 GiB per shard and direction; an appliance that
/// fills a 100 GbE long fat pipe uses several shards.
pub const ENDPOINT_WINDOW_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Window in bytes moved per round trip. 2, as Linux's receive-buffer tuning uses: the
/// window stays ahead of a sender whose rate is still doubling each round trip.
pub const WINDOW_GAIN: u64 = 2;

/// Shortest interval a rate is measured over: on loopback the RTT is a few µs, and rates
/// measured over a driver turn or two are noise.
pub const TUNE_INTERVAL_MIN: Duration = Duration::from_millis(5);

/// Bytes one stream may have unread at its receiver (the QUIC stream window): several
/// chunks, so a stream is not held up while its receiver writes one, and enough that
/// `STREAMS_IN_FLIGHT_MAX` streams fill `FLOW_WINDOW_BYTES_MAX` (60 × 16 MiB).
pub const STREAM_WINDOW_BYTES: u64 = 16 * 1024 * 1024;

/// Chunk buffers a connection's senders may hold at once, read and not yet handed to
/// QUIC whole, while the send window is small (`send_staged_chunks`). Without a bound
/// every stream in flight holds a chunk while it waits for send credit; on the loopback
/// of the VMs measured, first touching that memory cost a sender more than it saved (a
/// 2 GiB push: 2.31 s against 2.68 s, client peak RSS 135 MiB against 230-260 MiB;
/// PERFORMANCE.md, "Staged chunks").
pub const SEND_STAGED_CHUNKS: usize = 4;

/// The chunks a connection with send window `send_window` may have staged: one per
/// chunk of the window, at least `SEND_STAGED_CHUNKS` and at most `STREAMS_IN_FLIGHT_MAX`.
/// A stager waits on its stream's credit (`STREAM_WINDOW_BYTES`) while it holds its
/// chunk, so on a long, fast path the stagers must be enough streams to fill the window:
/// as many as the window has chunks is four times that.
pub fn send_staged_chunks(send_window: u64) -> usize {
    let chunks = usize::try_from(send_window / CHUNK_SIZE_BYTES).unwrap_or(usize::MAX);
    chunks.clamp(SEND_STAGED_CHUNKS, STREAMS_IN_FLIGHT_MAX)
}

/// Ranges (streams) a client shard keeps in flight at least: small files need this many
/// for their server-side file creation to overlap (measured on ext4, as for the local
/// copy's `RANGES_IN_FLIGHT_PER_SHARD`).
pub const STREAMS_IN_FLIGHT_MIN: usize = 16;

/// Ranges a client shard keeps in flight at most: the peer allows 64 streams at once per
/// connection, and one is the control stream.
pub const STREAMS_IN_FLIGHT_MAX: usize = 60;

/// One direction's window of one connection.
#[derive(Clone, Debug)]
pub struct WindowTuner {
    window: u64,
    /// Time and byte count when the current measurement began: the rate is measured over
    /// at least a round trip, from here.
    start: Option<(Duration, u64)>,
}

impl Default for WindowTuner {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowTuner {
    /// A tuner at `FLOW_WINDOW_BYTES_INITIAL`, which must be what the connection was
    /// configured with: the first growth replaces it, so a larger configured window would
    /// be shrunk.
    pub fn new() -> Self {
        Self::starting_at(FLOW_WINDOW_BYTES_INITIAL)
    }

    /// A tuner at `window` bytes, which must be what the connection was configured with
    /// (as for `new`), and at most `FLOW_WINDOW_BYTES_MAX`.
    pub fn starting_at(window: u64) -> Self {
        assert!(
            window > 0 && window <= FLOW_WINDOW_BYTES_MAX,
            "a flow window starts within (0, FLOW_WINDOW_BYTES_MAX]"
        );
        Self {
            window,
            start: None,
        }
    }

    /// The window now, in bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The earliest time a sample can change the window, if a measurement is running.
    pub fn next_sample(&self, rtt: Duration) -> Option<Duration> {
        self.start.map(|(t, _)| t + rtt.max(TUNE_INTERVAL_MIN))
    }

    /// `bytes` is the connection's cumulative count of bytes moved in this direction at
    /// `now`; `rtt` its minimum round-trip time; `headroom` how much more the shard's
    /// windows in this direction may add up to (see `ENDPOINT_WINDOW_BYTES_MAX`).
    /// Returns the new window if it grew.
    pub fn on_sample(
        &mut self,
        now: Duration,
        bytes: u64,
        rtt: Duration,
        headroom: u64,
    ) -> Option<u64> {
        let Some((t0, b0)) = self.start else {
            self.start = Some((now, bytes));
            return None;
        };
        let elapsed = now.saturating_sub(t0);
        if elapsed < rtt.max(TUNE_INTERVAL_MIN) {
            return None;
        }
        self.start = Some((now, bytes));
        // Counters only grow; one that went back (a caller's bug) measures nothing.
        let moved = bytes.checked_sub(b0)?;
        // Bytes per round trip: the rate over the interval times the RTT. The interval is
        // at least one RTT long, so this never exceeds what the interval moved.
        let per_rtt = (moved as u128 * rtt.as_nanos() / elapsed.as_nanos().max(1)) as u64;
        let target = per_rtt
            .saturating_mul(WINDOW_GAIN)
            .min(FLOW_WINDOW_BYTES_MAX)
            .min(self.window.saturating_add(headroom));
        if target <= self.window {
            return None;
        }
        self.window = target;
        Some(target)
    }
}

/// Ranges a client shard keeps in flight on a connection whose larger flow window is
/// `window` bytes: enough streams, each limited to `STREAM_WINDOW_BYTES`, to fill the
/// window twice over (a range also spends time being opened and confirmed, carrying
/// nothing), within `STREAMS_IN_FLIGHT_MIN..=STREAMS_IN_FLIGHT_MAX`.
pub fn streams_in_flight(window: u64) -> usize {
    let streams = window.div_ceil(STREAM_WINDOW_BYTES).saturating_mul(2);
    usize::try_from(streams)
        .unwrap_or(usize::MAX)
        .clamp(STREAMS_IN_FLIGHT_MIN, STREAMS_IN_FLIGHT_MAX)
}

#[cfg(test)]
mod tests {

    #[test]
    fn staged_chunks_follow_the_send_window_within_their_bounds() {
        assert_eq!(send_staged_chunks(0), SEND_STAGED_CHUNKS);
        assert_eq!(
            send_staged_chunks(SEND_WINDOW_BYTES_INITIAL),
            SEND_STAGED_CHUNKS
        );
        assert_eq!(send_staged_chunks(40 * CHUNK_SIZE_BYTES + 1), 40);
        assert_eq!(
            send_staged_chunks(FLOW_WINDOW_BYTES_MAX),
            STREAMS_IN_FLIGHT_MAX
        );
        assert_eq!(send_staged_chunks(u64::MAX), STREAMS_IN_FLIGHT_MAX);
        // Stagers blocked on their streams' credit still cover the window.
        for w in [SEND_WINDOW_BYTES_INITIAL, 100 << 20, FLOW_WINDOW_BYTES_MAX] {
            assert!(send_staged_chunks(w) as u64 * STREAM_WINDOW_BYTES >= w);
        }
    }

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A sender limited only by the window: each round trip moves the whole window,
    /// unless `path_bytes_per_rtt` (the path's bandwidth-delay product) is smaller.
    fn run(rtt: Duration, path_bytes_per_rtt: u64, rounds: u32) -> (WindowTuner, Vec<u64>) {
        run_from(WindowTuner::new(), rtt, path_bytes_per_rtt, rounds)
    }

    fn run_from(
        mut t: WindowTuner,
        rtt: Duration,
        path_bytes_per_rtt: u64,
        rounds: u32,
    ) -> (WindowTuner, Vec<u64>) {
        let mut bytes = 0u64;
        let mut windows = Vec::new();
        t.on_sample(Duration::ZERO, 0, rtt, u64::MAX);
        for r in 1..=rounds {
            bytes += t.window().min(path_bytes_per_rtt);
            t.on_sample(rtt * r, bytes, rtt, u64::MAX);
            windows.push(t.window());
        }
        (t, windows)
    }

    #[test]
    fn a_window_that_limits_doubles_each_round_trip_up_to_twice_the_path() {
        // 10 Gbit/s at 200 ms: a 250 MB pipe, far past the initial window.
        let bdp = 250_000_000;
        let (t, windows) = run(200 * MS, bdp, 20);
        assert_eq!(windows[0], 2 * FLOW_WINDOW_BYTES_INITIAL);
        assert_eq!(windows[1], 4 * FLOW_WINDOW_BYTES_INITIAL);
        assert_eq!(t.window(), 2 * bdp, "settles at twice the path's BDP");
    }

    #[test]
    fn a_send_window_starts_smaller_and_grows_the_same_way() {
        const { assert!(SEND_WINDOW_BYTES_INITIAL < FLOW_WINDOW_BYTES_INITIAL) };
        // 1 Gbit/s at 50 ms: 6.25 MB per round trip fits the start; it stays.
        let start = || WindowTuner::starting_at(SEND_WINDOW_BYTES_INITIAL);
        let (t, _) = run_from(start(), 50 * MS, 6_250_000, 50);
        assert_eq!(t.window(), SEND_WINDOW_BYTES_INITIAL);
        // 10 Gbit/s at 200 ms: it doubles from its own start to twice the path.
        let bdp = 250_000_000;
        let (t, windows) = run_from(start(), 200 * MS, bdp, 20);
        assert_eq!(windows[0], 2 * SEND_WINDOW_BYTES_INITIAL);
        assert_eq!(t.window(), 2 * bdp);
    }

    #[test]
    #[should_panic(expected = "a flow window starts within")]
    fn a_window_cannot_start_past_its_limit() {
        WindowTuner::starting_at(FLOW_WINDOW_BYTES_MAX + 1);
    }

    #[test]
    fn a_window_that_does_not_limit_stays() {
        // 1 Gbit/s at 5 ms: 625 kB per round trip, well inside the initial window.
        let (t, _) = run(MS * 5, 625_000, 50);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_INITIAL);
    }

    #[test]
    fn the_window_never_passes_its_limit() {
        // 100 Gbit/s at 200 ms: 2.5 GB per round trip.
        let (t, windows) = run(200 * MS, 2_500_000_000, 40);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_MAX);
        assert!(windows.iter().all(|&w| w <= FLOW_WINDOW_BYTES_MAX));
        // A peer that delays its acks to inflate the RTT to a minute gets no more.
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, 60_000 * MS, u64::MAX);
        t.on_sample(60_000 * MS, 1 << 40, 60_000 * MS, u64::MAX);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_MAX);
    }

    #[test]
    fn the_shard_budget_bounds_growth() {
        // The path would take 100 MB more, but the shard's other connections leave 5 MB.
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, 100 * MS, 5_000_000);
        let grown = t.on_sample(100 * MS, 100_000_000, 100 * MS, 5_000_000);
        assert_eq!(grown, Some(FLOW_WINDOW_BYTES_INITIAL + 5_000_000));
        // None left: the window stays.
        assert_eq!(t.on_sample(200 * MS, 300_000_000, 100 * MS, 0), None);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_INITIAL + 5_000_000);
    }

    #[test]
    fn samples_closer_than_a_round_trip_do_not_count() {
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, 50 * MS, u64::MAX);
        assert_eq!(t.next_sample(50 * MS), Some(50 * MS));
        // 1 GB in 10 ms would be a huge rate, but the measurement is not over.
        assert_eq!(t.on_sample(10 * MS, 1_000_000_000, 50 * MS, u64::MAX), None);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_INITIAL);
        // On loopback the interval is at least TUNE_INTERVAL_MIN, not the µs RTT: 10 GB
        // read 1 ms in (200 MB per 20 µs round trip) is not measured yet ...
        let rtt = Duration::from_micros(20);
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, rtt, u64::MAX);
        assert_eq!(t.next_sample(rtt), Some(TUNE_INTERVAL_MIN));
        assert_eq!(t.on_sample(MS, 10_000_000_000, rtt, u64::MAX), None);
        // ... and over the whole 5 ms it is 40 MB per round trip: the window is twice that.
        let at = TUNE_INTERVAL_MIN;
        let grown = t.on_sample(at, 10_000_000_000, rtt, u64::MAX);
        assert_eq!(grown, Some(80_000_000));
    }

    #[test]
    fn a_counter_that_goes_back_measures_nothing() {
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 1_000_000_000, 10 * MS, u64::MAX);
        assert_eq!(t.on_sample(20 * MS, 0, 10 * MS, u64::MAX), None);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_INITIAL);
    }

    #[test]
    fn streams_cover_the_window_twice_within_bounds() {
        assert_eq!(
            streams_in_flight(FLOW_WINDOW_BYTES_INITIAL),
            STREAMS_IN_FLIGHT_MIN
        );
        assert_eq!(streams_in_flight(0), STREAMS_IN_FLIGHT_MIN);
        assert_eq!(streams_in_flight(20 * STREAM_WINDOW_BYTES), 40);
        // The most streams fill the largest window.
        assert!(STREAMS_IN_FLIGHT_MAX as u64 * STREAM_WINDOW_BYTES >= FLOW_WINDOW_BYTES_MAX);
        assert_eq!(
            streams_in_flight(FLOW_WINDOW_BYTES_MAX),
            STREAMS_IN_FLIGHT_MAX
        );
        assert_eq!(streams_in_flight(u64::MAX), STREAMS_IN_FLIGHT_MAX);
    }
}
