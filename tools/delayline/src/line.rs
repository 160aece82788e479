//! The delay line's model, free of clocks and devices: what happens to one packet that
//! enters one direction of the emulated link at a given time (queued behind the rate
//! limit, lost on the wire, or dropped at a full queue) and when it comes out.

/// Nanoseconds since the emulator started; the model never reads a clock itself.
pub type Nanos = u64;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One direction of the emulated link: a FIFO bottleneck of `rate_bits_per_sec` with a
/// tail-drop queue of `queue_bytes_max`, then a wire of `delay` that loses each packet
/// independently with probability `loss`.
#[derive(Debug, Clone)]
pub struct Line {
    delay: Nanos,
    /// None: no rate limit, packets only wait out the delay.
    rate_bits_per_sec: Option<u64>,
    queue_bytes_max: u64,
    /// Loss probability scaled to the full u64 range (0 = never, u64::MAX ~ always).
    loss_threshold: u64,
    rng: SplitMix64,
    /// When the bottleneck finishes serializing everything admitted so far.
    busy_until: Nanos,
    /// Last delivery time handed out; deliveries never go backwards (FIFO).
    last_delivery: Nanos,
}

/// What the line does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the packet out at this time.
    Deliver(Nanos),
    /// Lost on the wire (random loss); it still used its share of the bottleneck.
    Lost,
    /// The bottleneck queue was full: tail drop, as a router would.
    QueueFull,
}

/// Settings of one direction, as given on the command line.
#[derive(Debug, Clone, Copy)]
pub struct LineConfig {
    pub delay: Nanos,
    pub rate_bits_per_sec: Option<u64>,
    pub queue_bytes_max: u64,
    /// Probability in [0, 1].
    pub loss: f64,
    pub seed: u64,
}

impl Line {
    pub fn new(config: LineConfig) -> Self {
        assert!(
            (0.0..=1.0).contains(&config.loss),
            "loss probability out of range"
        );
        assert!(
            config.rate_bits_per_sec != Some(0),
            "a zero rate carries nothing"
        );
        let loss_threshold = if config.loss >= 1.0 {
            u64::MAX
        } else {
            (config.loss * u64::MAX as f64) as u64
        };
        Self {
            delay: config.delay,
            rate_bits_per_sec: config.rate_bits_per_sec,
            queue_bytes_max: config.queue_bytes_max,
            loss_threshold,
            rng: SplitMix64(config.seed),
            busy_until: 0,
            last_delivery: 0,
        }
    }

    /// A packet of `len_bytes` arrives at `now`.
    pub fn admit(&mut self, now: Nanos, len_bytes: u64) -> Verdict {
        let leaves_queue = match self.rate_bits_per_sec {
            None => now,
            Some(rate) => {
                let start = self.busy_until.max(now);
                // Bytes still waiting ahead of this packet at the bottleneck.
                let backlog = ((start - now) as u128 * rate as u128 / 8 / NANOS_PER_SEC) as u64;
                if backlog + len_bytes > self.queue_bytes_max {
                    return Verdict::QueueFull;
                }
                let serialize = (len_bytes as u128 * 8 * NANOS_PER_SEC / rate as u128) as u64;
                self.busy_until = start + serialize;
                self.busy_until
            }
        };
        // Draw for every admitted packet, so a seed gives the same loss pattern for the
        // same packet sequence whatever the loss rate.
        if self.rng.next() < self.loss_threshold {
            return Verdict::Lost;
        }
        let at = (leaves_queue + self.delay).max(self.last_delivery);
        self.last_delivery = at;
        Verdict::Deliver(at)
    }
}

/// SplitMix64: tiny, fast and good enough to pick which packets are lost; seeded so a run
/// can be repeated.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn line(delay: Nanos, rate: Option<u64>, queue: u64, loss: f64) -> Line {
        Line::new(LineConfig {
            delay,
            rate_bits_per_sec: rate,
            queue_bytes_max: queue,
            loss,
            seed: 7,
        })
    }

    #[test]
    fn without_a_rate_a_packet_only_waits_out_the_delay() {
        let mut l = line(25 * MS, None, 0, 0.0);
        assert_eq!(l.admit(0, 1500), Verdict::Deliver(25 * MS));
        assert_eq!(l.admit(3 * MS, 9000), Verdict::Deliver(28 * MS));
    }

    #[test]
    fn the_rate_limit_serializes_packets_back_to_back() {
        // 1 Gbit/s: 1500 bytes take 12 µs.
        let mut l = line(MS, Some(1_000_000_000), 1 << 20, 0.0);
        assert_eq!(l.admit(0, 1500), Verdict::Deliver(12_000 + MS));
        assert_eq!(l.admit(0, 1500), Verdict::Deliver(24_000 + MS));
        // An idle link starts afresh.
        assert_eq!(
            l.admit(10 * MS, 1500),
            Verdict::Deliver(10 * MS + 12_000 + MS)
        );
    }

    #[test]
    fn a_full_queue_drops_the_tail_and_drains_at_the_rate() {
        // 8 Mbit/s = 1 byte per µs; queue of 3,000 bytes.
        let mut l = line(0, Some(8_000_000), 3000, 0.0);
        assert!(matches!(l.admit(0, 1500), Verdict::Deliver(_)));
        assert!(matches!(l.admit(0, 1500), Verdict::Deliver(_)));
        assert_eq!(l.admit(0, 1500), Verdict::QueueFull);
        // 1.5 ms later one packet has drained: room for exactly one more.
        assert!(matches!(l.admit(1_500_000, 1500), Verdict::Deliver(_)));
        assert_eq!(l.admit(1_500_000, 1500), Verdict::QueueFull);
    }

    #[test]
    fn loss_follows_the_probability_and_the_seed() {
        let mut a = line(0, None, 0, 0.01);
        let mut b = line(0, None, 0, 0.01);
        let n = 1_000_000;
        let mut lost = 0;
        for i in 0..n {
            let va = a.admit(i, 1500);
            assert_eq!(va, b.admit(i, 1500), "same seed, same pattern");
            lost += (va == Verdict::Lost) as u64;
        }
        // 1% of a million: 10,000 expected, sd ~ 99.
        assert!((9_500..10_500).contains(&lost), "lost {lost}");
        let mut never = line(0, None, 0, 0.0);
        let mut always = line(0, None, 0, 1.0);
        for i in 0..1000 {
            assert!(matches!(never.admit(i, 100), Verdict::Deliver(_)));
            assert_eq!(always.admit(i, 100), Verdict::Lost);
        }
    }

    #[test]
    fn deliveries_never_go_backwards() {
        let mut l = line(5 * MS, Some(100_000_000), 1 << 20, 0.0);
        let mut last = 0;
        for i in 0..10_000u64 {
            if let Verdict::Deliver(at) = l.admit(i * 1000, 64 + (i * 37) % 9000) {
                assert!(at >= last);
                last = at;
            }
        }
    }
}
