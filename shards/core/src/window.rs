//! Flow-control windows and streams in flight sized from the measured bandwidth-delay
//! product, as TCP's receive-buffer auto-tuning does, instead of one size for every path.
//!
//! A QUIC connection may not have more bytes unread at the receiver (its receive window)
//! or unacknowledged at the sender (its send window) than these windows allow. Sized for
//! the fastest, longest path, they let a slow peer's connection pin that much memory;
//! sized for a LAN, they cap a long fat pipe at window / RTT. So each end measures, once
//! per round trip, how many bytes the connection moved in that round trip and sets the
//! window to `WINDOW_GAIN` times that, never shrinking it and never past
//! `FLOW_WINDOW_BYTES_MAX`. A window that limits the transfer is used in full each round
//! trip, so it doubles each round trip, as the congestion window does in start-up; one
//! that does not limit it stays where it is.
//!
//! The round trip and the byte counters come from the caller (quinn-proto's estimates and
//! statistics), and time as a `Duration` since any fixed origin: nothing here reads a clock.

use std::time::Duration;

/// Window at a connection's start, in bytes: 1 Gbit/s at 64 ms, so LAN and metro paths
/// never wait for the tuner, while a connection that stays slow holds little memory.
pub const FLOW_WINDOW_BYTES_INITIAL: u64 = 8 * 1024 * 1024;

/// Largest window the tuner grows to, in bytes: 512 MiB is 43 Gbit/s at 100 ms on one
/// connection, and each shard has its own. It also bounds what a peer that delays its
/// acknowledgements (inflating the RTT) can make this end buffer.
pub const FLOW_WINDOW_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// Window in bytes moved per round trip. 2, as Linux's receive-buffer tuning uses: the
/// window stays ahead of a sender whose rate is still doubling each round trip.
pub const WINDOW_GAIN: u64 = 2;

/// Shortest interval a rate is measured over: on loopback the RTT is a few µs, and rates
/// measured over a driver turn or two are noise.
pub const TUNE_INTERVAL_MIN: Duration = Duration::from_millis(5);

/// Bytes one stream may have unread at its receiver (the QUIC stream window): the flow
/// window's initial size, so one stream alone can use the initial window in full.
pub const STREAM_WINDOW_BYTES: u64 = FLOW_WINDOW_BYTES_INITIAL;

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
    /// Start of the current measurement: (time, byte counter).
    start: Option<(Duration, u64)>,
}

impl Default for WindowTuner {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowTuner {
    pub fn new() -> Self {
        Self {
            window: FLOW_WINDOW_BYTES_INITIAL,
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
    /// `now`; `rtt` its smoothed round-trip time. Returns the new window if it grew.
    pub fn on_sample(&mut self, now: Duration, bytes: u64, rtt: Duration) -> Option<u64> {
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
            .min(FLOW_WINDOW_BYTES_MAX);
        if target <= self.window {
            return None;
        }
        self.window = target;
        assert!(self.window <= FLOW_WINDOW_BYTES_MAX);
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
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A sender limited only by the window: each round trip moves the whole window,
    /// unless `path_bytes_per_rtt` (the path's bandwidth-delay product) is smaller.
    fn run(rtt: Duration, path_bytes_per_rtt: u64, rounds: u32) -> (WindowTuner, Vec<u64>) {
        let mut t = WindowTuner::new();
        let mut bytes = 0u64;
        let mut windows = Vec::new();
        t.on_sample(Duration::ZERO, 0, rtt);
        for r in 1..=rounds {
            bytes += t.window().min(path_bytes_per_rtt);
            t.on_sample(rtt * r, bytes, rtt);
            windows.push(t.window());
        }
        (t, windows)
    }

    #[test]
    fn a_window_that_limits_doubles_each_round_trip_up_to_twice_the_path() {
        // 10 Gbit/s at 100 ms: a 125 MB pipe, far past the initial window.
        let bdp = 125_000_000;
        let (t, windows) = run(100 * MS, bdp, 20);
        assert_eq!(windows[0], 2 * FLOW_WINDOW_BYTES_INITIAL);
        assert_eq!(windows[1], 4 * FLOW_WINDOW_BYTES_INITIAL);
        assert_eq!(t.window(), 2 * bdp, "settles at twice the path's BDP");
    }

    #[test]
    fn a_window_that_does_not_limit_stays() {
        // 1 Gbit/s at 1 ms: 125 kB per round trip, well inside the initial window.
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
        t.on_sample(Duration::ZERO, 0, 60_000 * MS);
        t.on_sample(60_000 * MS, 1 << 40, 60_000 * MS);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_MAX);
    }

    #[test]
    fn samples_closer_than_a_round_trip_do_not_count() {
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, 50 * MS);
        assert_eq!(t.next_sample(50 * MS), Some(50 * MS));
        // 1 GB in 10 ms would be a huge rate, but the measurement is not over.
        assert_eq!(t.on_sample(10 * MS, 1_000_000_000, 50 * MS), None);
        assert_eq!(t.window(), FLOW_WINDOW_BYTES_INITIAL);
        // On loopback the interval is at least TUNE_INTERVAL_MIN, not the µs RTT.
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 0, Duration::from_micros(20));
        assert_eq!(
            t.on_sample(MS, 100_000_000, Duration::from_micros(20)),
            None
        );
    }

    #[test]
    fn a_counter_that_goes_back_measures_nothing() {
        let mut t = WindowTuner::new();
        t.on_sample(Duration::ZERO, 1_000_000_000, 10 * MS);
        assert_eq!(t.on_sample(20 * MS, 0, 10 * MS), None);
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
        assert_eq!(
            streams_in_flight(FLOW_WINDOW_BYTES_MAX),
            STREAMS_IN_FLIGHT_MAX
        );
        assert_eq!(streams_in_flight(u64::MAX), STREAMS_IN_FLIGHT_MAX);
    }
}
