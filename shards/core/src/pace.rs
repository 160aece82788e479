//! `--bwlimit`: the rate a transfer's data may leave at, across every shard and
//! connection, kept by pacing (the generic cell rate algorithm, GCRA). Each piece of
//! data books its time on one shared schedule before it is sent, and waits until its
//! turn; nothing is sent in a burst and made up for by sleeping after it. This is the
//! arithmetic; the driver holds the schedule (one atomic) and the clock.

use crate::filter::{parse_size, FilterError};

/// The lowest limit taken: a 256 KiB piece then leaves within 4 s. (The stall watchdog
/// counts each paced piece sent, and each 64 KiB received, as progress: chunks in
/// flight share the rate, and at a low limit a whole chunk takes minutes.)
pub const RATE_MIN_BYTES_PER_SEC: u64 = 64 * 1024;

/// How far ahead of the schedule a sender may run: what leaves at once. Two pieces of
/// 256 KiB (the unit senders hand to the transport): enough to keep every shard busy,
/// small against a second's worth at any limit worth setting.
pub const BURST_BYTES: u64 = 512 * 1024;

/// A rate in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    bytes_per_sec: u64,
}

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            bytes_per_sec: bytes_per_sec.max(1),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Nanoseconds `bytes` take at this rate.
    fn cost(&self, bytes: u64) -> u64 {
        (u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec)) as u64
    }

    /// Books `bytes` at time `now` on the schedule `due` (when the data booked so far
    /// has left, at this rate; both in nanoseconds from the driver's epoch). Returns
    /// the schedule after it, and how long to wait before sending them.
    pub fn book(&self, due: u64, now: u64, bytes: u64) -> (u64, u64) {
        let after = due.max(now).saturating_add(self.cost(bytes));
        let wait = after.saturating_sub(now.saturating_add(self.cost(BURST_BYTES)));
        (after, wait)
    }
}

/// A `--bwlimit` value: rsync's meaning, KiB per second for a bare number (`1000` is
/// 1000 KiB/s) and bytes per second with a size suffix (`100M`: 100 MiB/s, `10MB`:
/// 10,000,000 B/s); bits per second with `bit` (`200Mbit`: 200,000,000 bit/s). `0`
/// (or `off`) is no limit: `None`.
pub fn parse_rate(text: &str) -> Result<Option<u64>, FilterError> {
    let t = text.trim();
    if t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || {
        FilterError(format!(
            "--bwlimit '{text}': not a rate (e.g. 500K, 100M, 1Gbit)"
        ))
    };
    let per_sec = if let Some(bits) = strip_suffix_ignore_case(t, "bit") {
        let (number, scale) = match bits.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let scale = match c.to_ascii_lowercase() {
                    'k' => 1e3,
                    'm' => 1e6,
                    'g' => 1e9,
                    't' => 1e12,
                    _ => return Err(bad()),
                };
                (&bits[..i], scale)
            }
            _ => (bits, 1.0),
        };
        let n: f64 = number.parse().map_err(|_| bad())?;
        if !n.is_finite() || n < 0.0 {
            return Err(bad());
        }
        (n * scale / 8.0) as u64
    } else if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let n: f64 = t.parse().map_err(|_| bad())?;
        (n * 1024.0) as u64
    } else {
        parse_size(t).map_err(|_| bad())?
    };
    if per_sec < RATE_MIN_BYTES_PER_SEC {
        return Err(FilterError(format!(
            "--bwlimit '{text}' is below the lowest limit, {} KiB/s",
            RATE_MIN_BYTES_PER_SEC / 1024
        )));
    }
    Ok(Some(per_sec))
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let at = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(at) && s[at..].eq_ignore_ascii_case(suffix)).then(|| &s[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_rsync_reads_them_and_bits_when_said() {
        assert_eq!(parse_rate("1000"), Ok(Some(1000 * 1024)));
        assert_eq!(parse_rate("100M"), Ok(Some(100 << 20)));
        assert_eq!(parse_rate("10MB"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate("200Mbit"), Ok(Some(25_000_000)));
        assert_eq!(parse_rate("1gbit"), Ok(Some(125_000_000)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("off"), Ok(None));
        assert!(parse_rate("10").is_err(), "below the floor");
        for bad in ["", "fast", "-1M", "1Xbit", "nanbit", "M"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn booked_data_leaves_at_the_rate_with_one_burst_at_most() {
        // 1 MB/s: 1000 ns a byte.
        let pace = Pace::new(1_000_000);
        let burst = pace.cost(BURST_BYTES);
        // An idle schedule sends the first burst at once.
        let (due, wait) = pace.book(0, 5_000, 256 * 1024);
        assert_eq!((due, wait), (5_000 + 262_144_000, 0));
        let (due, wait) = pace.book(due, 5_000, 256 * 1024);
        assert_eq!(wait, 0, "two pieces are one burst");
        // A third piece booked at the same instant waits its turn.
        let (due3, wait) = pace.book(due, 5_000, 256 * 1024);
        assert_eq!(wait, due3 - 5_000 - burst);
        // Over a long run of senders booking as soon as they are let go, what has left
        // by any time is the rate's worth plus one burst at most.
        let (mut due, mut now, mut sent) = (0u64, 0u64, 0u64);
        for i in 0..10_000u64 {
            let bytes = 1 + (i * 7919) % (256 * 1024);
            let (d, wait) = pace.book(due, now, bytes);
            due = d;
            now += wait;
            sent += bytes;
            assert!(
                sent <= now / 1000 + BURST_BYTES + 256 * 1024,
                "{i}: {sent} by {now}"
            );
        }
        // And it does not fall behind: the schedule is the rate's.
        assert!(sent >= now / 1000, "{sent} by {now}");
        // A schedule long idle does not bank credit beyond one burst.
        let (_, wait) = pace.book(0, 10_000_000_000, 10 * BURST_BYTES);
        assert_eq!(wait, pace.cost(9 * BURST_BYTES));
    }
}
