//! Congestion control for long, lossy paths: a model-based controller (in the spirit of
//! BBR) that sizes the window from the measured delivery rate and minimum RTT, so random
//! loss on a long fat pipe does not collapse it. Paths under `LONG_PATH_MIN_RTT` keep
//! quinn-proto's Cubic; quinn-proto's own controllers stay selectable for comparison.
//!
//! Why not quinn-proto's: Cubic halves its window for every loss event, and at 50 ms RTT
//! and 1% random loss it fell to 5.8 Mbit/s of a 1 Gbit/s path (tools/delayline). Its BBR
//! is marked experimental, and there it grew its window to 180 MB and lost a quarter of
//! its packets at the bottleneck queue. A first try here, Cubic that ignores losses with
//! no queuing delay behind them (TCP Veno's idea), did not hold either: on a busy host the
//! RTT jitters by more than a queue would add, and Cubic regrows slowly after each cut.
//!
//! The model: the bottleneck rate is the largest delivery rate measured over the last
//! `BW_WINDOW_ROUNDS` round trips (bytes acked per round trip); the window is
//! `CWND_GAIN` bandwidth-delay products, plus an allowance for delay the hosts add
//! (`HOST_DELAY_ALLOWANCE`). Start-up doubles the window each round trip until the rate
//! stops growing, or until loss is heavy. Loss is congestion only when it is heavy
//! (`LOSS_RATE_CONGESTION`), or persistent, or an ECN mark.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{
    BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig,
};
use quinn_proto::RttEstimator;

/// Which congestion controller a connection's sender uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    /// On paths of 5 ms RTT or more, a window from the measured delivery rate and
    /// minimum RTT that random loss (below 3%) does not shrink; Cubic on shorter ones.
    #[default]
    Tolerant,
    /// quinn-proto's Cubic: halves on every loss event.
    Cubic,
    /// quinn-proto's BBR (marked experimental there).
    Bbr,
}

impl Congestion {
    /// The factory quinn-proto builds each connection's controller from.
    pub fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Congestion::Tolerant => Arc::new(TolerantConfig::default()),
            Congestion::Cubic => Arc::new(CubicConfig::default()),
            Congestion::Bbr => Arc::new(BbrConfig::default()),
        }
    }
}

/// Window in bandwidth-delay products once start-up is over. quinn-proto paces at 1.25
/// windows per smoothed RTT, so the window, not a pacing gain, decides how much queue
/// the sender keeps: 1.5 keeps the pipe full through delayed and bunched acks and lets
/// rate samples above the estimate appear (the probe for more bandwidth), with a standing
/// queue of half a BDP plus `HOST_DELAY_ALLOWANCE` at most (BBR's 2 overflowed a
/// one-BDP buffer: 4% queue drops).
const CWND_GAIN: f64 = 1.5;

/// Round trips the bottleneck rate is the maximum over: long enough to ride out a few
/// slow rounds, short enough to follow a path that got slower.
const BW_WINDOW_ROUNDS: usize = 10;

/// Delay the end hosts add to a round trip now and then (scheduling, batched acks, a
/// receiver busy writing), covered by the window at the measured rate so the pipe stays
/// full through it. On the 2-core dev VM, with both ends and the delay line sharing it,
/// deliveries ran up to 20 ms late; the minimum RTT never sees that.
const HOST_DELAY_ALLOWANCE: Duration = Duration::from_millis(8);

/// Shortest interval a rate sample is measured over, for the same reason.
const SAMPLE_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Start-up ends when the rate has grown by less than this factor ...
const STARTUP_GROWTH: f64 = 1.25;
/// ... for this many rounds in a row (BBR's full-pipe test).
const STARTUP_FLAT_ROUNDS: u32 = 3;

/// Share of bytes lost, over the recent `LOSS_SAMPLE_BYTES`, above which loss is
/// congestion: three times the worst random loss the product is specified for (1%), and
/// several standard deviations above it at that sample size. Below it, the delivery-rate
/// model already accounts for the loss.
const LOSS_RATE_CONGESTION: f64 = 0.03;

/// Bytes (acked plus lost) the loss rate is measured over before older history is
/// halved away: about 1,400 full-size packets, so 1% is ~14 losses.
const LOSS_SAMPLE_BYTES: u64 = 2 << 20;

/// Heavy loss caps the window at this share of what it was (at most once per round) ...
const LOSS_BACKOFF: f64 = 0.85;
/// ... and each round without heavy loss lifts the cap by this share, until the model's
/// window is below it again.
const CAP_GROWTH_PER_ROUND: f64 = 0.125;

/// Window at start and after persistent congestion, in packets (RFC 9002's 10).
const INITIAL_WINDOW_PACKETS: u64 = 10;
/// Smallest window, in packets.
const MIN_WINDOW_PACKETS: u64 = 4;

/// Paths whose minimum RTT is below this are short (a LAN, loopback): there loss means a
/// switch or socket buffer overflowed, random loss is rare, and what the end hosts add
/// to the RTT dwarfs the path's own, so the delay-free rate model has little to stand
/// on. Cubic runs them, as it measured best on loopback (1.7 s for 1 GiB against 1.9-4.2 s
/// with the model). Long paths are where random loss costs Cubic everything.
const LONG_PATH_MIN_RTT: Duration = Duration::from_millis(5);

/// Factory of [`Tolerant`] controllers.
#[derive(Debug, Default)]
pub struct TolerantConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for TolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Tolerant {
            cubic: self.cubic.clone().build(now, current_mtu),
            model: Model::new(current_mtu),
        })
    }
}

/// Cubic on short paths, the [`Model`] on long ones (`LONG_PATH_MIN_RTT`). Both see every
/// event, so either is ready when the minimum RTT settles which one rules.
pub struct Tolerant {
    cubic: Box<dyn Controller>,
    model: Model,
}

impl Tolerant {
    fn long_path(&self) -> bool {
        self.model.min_rtt >= LONG_PATH_MIN_RTT
    }
}

impl Controller for Tolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        // quinn-proto updates its RTT estimate after calling on_ack, so this ack's own
        // sample is not in rtt.min() yet (and before the first sample, min() is the
        // 333 ms initial guess): the ack's own round trip bounds it.
        let min_rtt = rtt.min().min(now.saturating_duration_since(sent));
        self.model.on_ack(now, sent, bytes, app_limited, min_rtt);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.model
            .on_loss(now, lost_bytes, is_persistent_congestion);
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.mtu = u64::from(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.long_path() {
            self.model.window()
        } else {
            self.cubic.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        if !self.long_path() {
            return self.cubic.metrics();
        }
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window();
        m.pacing_rate = Some((self.model.bw_bytes_per_sec() * 8.0) as u64);
        // The loss cap bounds the window from above as Cubic's ssthresh bounds its slow
        // start; reporting it there lets a trace tell a capped window from a small model.
        m.ssthresh = self.model.cap;
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Tolerant {
            cubic: self.cubic.clone_box(),
            model: self.model.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The controller's state, fed only what acks and losses report (times come from
/// quinn-proto's calls, never a clock), so it is tested deterministically.
#[derive(Clone, Debug)]
pub struct Model {
    mtu: u64,
    startup: bool,
    /// Start-up's window, grown by every byte acked.
    startup_window: u64,
    min_rtt: Duration,
    /// The current rate-sample interval: when it began and what was acked since.
    sample_start: Option<Instant>,
    sample_bytes: u64,
    /// Send times of the packets acked in the interval (earliest, latest).
    sample_sent: Option<(Instant, Instant)>,
    sample_app_limited: bool,
    /// Largest rate of each of the last rounds (bytes per second), newest at `round %`.
    rates: [f64; BW_WINDOW_ROUNDS],
    round: usize,
    /// Start-up's full-pipe test.
    full_bw: f64,
    flat_rounds: u32,
    /// Recent bytes acked and lost; both halved when their sum passes LOSS_SAMPLE_BYTES.
    acked_recent: u64,
    lost_recent: u64,
    /// Round of the last loss backoff, so heavy loss cuts once per round.
    backoff_round: Option<usize>,
    /// Window limit set by heavy loss (BBRv2's inflight_hi, simplified).
    cap: Option<u64>,
}

impl Model {
    pub fn new(mtu: u16) -> Self {
        let mtu = u64::from(mtu);
        Self {
            mtu,
            startup: true,
            startup_window: INITIAL_WINDOW_PACKETS * mtu,
            min_rtt: Duration::ZERO,
            sample_start: None,
            sample_bytes: 0,
            sample_sent: None,
            sample_app_limited: false,
            rates: [0.0; BW_WINDOW_ROUNDS],
            round: 0,
            full_bw: 0.0,
            flat_rounds: 0,
            acked_recent: 0,
            lost_recent: 0,
            backoff_round: None,
            cap: None,
        }
    }

    /// `bytes` sent at `sent` were acked at `now`; `min_rtt` is the path's minimum RTT.
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        min_rtt: Duration,
    ) {
        self.min_rtt = min_rtt;
        self.acked_recent += bytes;
        self.age_loss();
        if self.startup {
            self.startup_window += bytes;
        }
        let start = *self.sample_start.get_or_insert(now);
        self.sample_bytes += bytes;
        self.sample_app_limited |= app_limited;
        let (first, last) = self.sample_sent.get_or_insert((sent, sent));
        *first = (*first).min(sent);
        *last = (*last).max(sent);
        let ack_elapsed = now.saturating_duration_since(start);
        if ack_elapsed < min_rtt.max(SAMPLE_INTERVAL_MIN) {
            return;
        }
        // One round trip's worth of acks: a rate sample. Acks can arrive bunched (a
        // busy receiver or path releases them late, then all at once), which would
        // overstate the rate; the packets were sent no faster than over `send_elapsed`,
        // so the slower of the two spans bounds it (BBR's rule).
        let send_elapsed = self
            .sample_sent
            .map_or(Duration::ZERO, |(first, last)| last - first);
        let elapsed = ack_elapsed.max(send_elapsed);
        self.sample_sent = None;
        let rate = self.sample_bytes as f64 / elapsed.as_secs_f64();
        let app_limited = self.sample_app_limited;
        self.sample_start = Some(now);
        self.sample_bytes = 0;
        self.sample_app_limited = false;
        // A sender with too little to send measures its own pace, not the path's: such a
        // sample may only raise the estimate, and does not age it either (a pause
        // waiting for the disk must not cost the rate learned before it).
        if app_limited && rate < self.bw_bytes_per_sec() {
            return;
        }
        self.round += 1;
        self.rates[self.round % BW_WINDOW_ROUNDS] = rate;
        // The cap lifts only after a round free of heavy loss.
        let backed_off_last_round = self.backoff_round.is_some_and(|r| r + 1 == self.round);
        if let Some(cap) = self.cap.filter(|_| !backed_off_last_round) {
            let lifted = cap + (cap as f64 * CAP_GROWTH_PER_ROUND) as u64;
            self.cap = (lifted < self.model_window()).then_some(lifted);
        }
        if self.startup && !app_limited {
            let bw = self.bw_bytes_per_sec();
            if bw >= self.full_bw * STARTUP_GROWTH {
                self.full_bw = bw;
                self.flat_rounds = 0;
            } else {
                self.flat_rounds += 1;
                if self.flat_rounds >= STARTUP_FLAT_ROUNDS {
                    self.startup = false;
                }
            }
        }
    }

    /// `lost_bytes` were declared lost (0: an ECN mark); `persistent`: quinn-proto saw
    /// persistent congestion (no ack across several probe timeouts).
    pub fn on_loss(&mut self, _now: Instant, lost_bytes: u64, persistent: bool) {
        self.lost_recent += lost_bytes;
        self.age_loss();
        if persistent {
            // The path may have changed entirely: measure it again from the start.
            *self = Self::new(self.mtu as u16);
            return;
        }
        if lost_bytes > 0 && self.loss_rate() <= LOSS_RATE_CONGESTION {
            return;
        }
        // Congestion: start-up has overshot, so stop growing; cap the window below
        // what caused it, once per round.
        self.startup = false;
        if self.backoff_round != Some(self.round) {
            self.backoff_round = Some(self.round);
            let floor = MIN_WINDOW_PACKETS * self.mtu;
            self.cap = Some(((self.window() as f64 * LOSS_BACKOFF) as u64).max(floor));
        }
    }

    /// The bottleneck rate estimate.
    pub fn bw_bytes_per_sec(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }

    /// Bytes the sender may have in flight.
    pub fn window(&self) -> u64 {
        let window = self.model_window();
        self.cap.map_or(window, |cap| window.min(cap))
    }

    /// The window the rate model alone allows.
    fn model_window(&self) -> u64 {
        let floor = MIN_WINDOW_PACKETS * self.mtu;
        let bw = self.bw_bytes_per_sec();
        let model =
            bw * (CWND_GAIN * self.min_rtt.as_secs_f64() + HOST_DELAY_ALLOWANCE.as_secs_f64());
        let window = if self.startup {
            // Before the first rate sample the model knows nothing: start-up's own
            // window rules until the model catches up.
            (self.startup_window as f64).max(model)
        } else {
            model
        };
        (window as u64).max(floor)
    }

    pub fn in_startup(&self) -> bool {
        self.startup
    }

    /// Share of recent bytes lost (0 until enough bytes were seen for it to mean much).
    pub fn loss_rate(&self) -> f64 {
        let total = self.acked_recent + self.lost_recent;
        if total < LOSS_SAMPLE_BYTES / 4 {
            return 0.0;
        }
        self.lost_recent as f64 / total as f64
    }

    fn age_loss(&mut self) {
        if self.acked_recent + self.lost_recent > LOSS_SAMPLE_BYTES {
            self.acked_recent /= 2;
            self.lost_recent /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1472;
    const MS: Duration = Duration::from_millis(1);

    /// A fluid bottleneck: each round trip delivers min(window, rate x rtt) bytes, in
    /// acks of one packet spread over the round, and `loss_every` packets one is lost.
    struct Path {
        rate_bytes_per_sec: f64,
        rtt: Duration,
        loss_every: Option<u64>,
        now: Instant,
        packets: u64,
    }

    impl Path {
        fn round(&mut self, m: &mut Model) -> u64 {
            let pipe = (self.rate_bytes_per_sec * self.rtt.as_secs_f64()) as u64;
            let delivered = m.window().min(pipe);
            let packets = (delivered / u64::from(MTU)).max(1);
            let step = self.rtt / packets as u32;
            for _ in 0..packets {
                self.now += step;
                self.packets += 1;
                if self
                    .loss_every
                    .is_some_and(|n| self.packets.is_multiple_of(n))
                {
                    m.on_loss(self.now, u64::from(MTU), false);
                } else {
                    m.on_ack(
                        self.now,
                        self.now - self.rtt,
                        u64::from(MTU),
                        false,
                        self.rtt,
                    );
                }
            }
            delivered
        }
    }

    fn path(rate_mbit: f64, rtt: Duration, loss_every: Option<u64>) -> Path {
        Path {
            rate_bytes_per_sec: rate_mbit * 1e6 / 8.0,
            rtt,
            loss_every,
            now: Instant::now(),
            packets: 0,
        }
    }

    /// A model that has run `rounds` round trips on a clean path: past start-up.
    fn warmed(rate_mbit: f64, rtt: Duration, rounds: usize) -> (Path, Model) {
        let mut p = path(rate_mbit, rtt, None);
        let mut m = Model::new(MTU);
        for _ in 0..rounds {
            p.round(&mut m);
        }
        (p, m)
    }

    #[test]
    fn start_up_fills_a_long_fat_pipe_and_stops_growing() {
        let mut p = path(1000.0, 50 * MS, None);
        let mut m = Model::new(MTU);
        let bdp = 6_250_000;
        let mut rounds = 0;
        while m.in_startup() {
            p.round(&mut m);
            rounds += 1;
            assert!(rounds < 40, "start-up never ended");
        }
        let bw = m.bw_bytes_per_sec();
        assert!((bw - 125e6).abs() < 12.5e6, "bottleneck estimate {bw}");
        for _ in 0..50 {
            assert_eq!(p.round(&mut m), bdp, "the pipe stays full");
        }
        // 1.5 BDPs plus the host allowance: bounded, not growing without end.
        assert!(m.window() < 3 * bdp, "window {}", m.window());
    }

    #[test]
    fn one_percent_random_loss_keeps_the_pipe_full() {
        let mut p = path(1000.0, 50 * MS, Some(100));
        let mut m = Model::new(MTU);
        let bdp = 6_250_000u64;
        let mut delivered = 0;
        for r in 0..200 {
            let d = p.round(&mut m);
            if r >= 100 {
                delivered += d;
            }
        }
        assert!(
            m.loss_rate() > 0.005 && m.loss_rate() < 0.02,
            "{}",
            m.loss_rate()
        );
        // The model counts the lost packet out of each round's pipe, so ~99%.
        assert!(delivered >= 100 * bdp * 95 / 100, "delivered {delivered}");
    }

    #[test]
    fn heavy_loss_backs_off_and_ends_start_up() {
        let mut p = path(1000.0, 50 * MS, Some(10));
        let mut m = Model::new(MTU);
        for _ in 0..10 {
            p.round(&mut m);
        }
        assert!(!m.in_startup());
        let uncapped = m.model_window();
        for _ in 0..5 {
            p.round(&mut m);
        }
        assert!(
            m.window() < uncapped * 3 / 4,
            "10% loss must cap the window"
        );
        // Loss back to nothing: the cap lifts.
        p.loss_every = None;
        for _ in 0..60 {
            p.round(&mut m);
        }
        assert_eq!(
            m.window(),
            m.model_window(),
            "the cap lifts once loss stops"
        );
    }

    #[test]
    fn persistent_congestion_starts_over() {
        let (p, mut m) = warmed(1000.0, 50 * MS, 30);
        assert!(m.window() > 1_000_000);
        m.on_loss(p.now, 1472, true);
        assert!(m.in_startup());
        assert_eq!(m.window(), INITIAL_WINDOW_PACKETS * u64::from(MTU));
    }

    #[test]
    fn an_ecn_mark_is_congestion() {
        let (p, mut m) = warmed(1000.0, 50 * MS, 30);
        let before = m.window();
        m.on_loss(p.now, 0, false);
        assert!(m.window() < before);
    }

    #[test]
    fn the_window_covers_host_delay_on_top_of_the_path() {
        let (_, m) = warmed(1000.0, 10 * MS, 100);
        let bw = m.bw_bytes_per_sec();
        let wanted = bw * (CWND_GAIN * 0.010 + HOST_DELAY_ALLOWANCE.as_secs_f64());
        assert!(
            (m.window() as f64 - wanted).abs() < wanted * 0.01,
            "window {}",
            m.window()
        );
    }

    #[test]
    fn bunched_acks_do_not_overstate_the_rate() {
        // 401 packets sent evenly over 40 ms (14.7 MB/s), their acks released within
        // 10 ms (the minimum RTT): by acks alone the rate would look four times higher.
        let mut m = Model::new(MTU);
        let t0 = Instant::now();
        let us = Duration::from_micros(1);
        for i in 0..=400u32 {
            m.on_ack(
                t0 + 100 * MS + i * 25 * us,
                t0 + i * 100 * us,
                1472,
                false,
                10 * MS,
            );
        }
        let bw = m.bw_bytes_per_sec();
        assert!(bw > 14e6 && bw < 15.5e6, "rate {bw}");
    }

    #[test]
    fn app_limited_samples_only_raise_the_estimate() {
        let mut m = Model::new(MTU);
        let t0 = Instant::now();
        // A full-rate round, then slow app-limited rounds.
        m.on_ack(t0 + 10 * MS, t0, 1, false, 10 * MS);
        m.on_ack(t0 + 20 * MS, t0 + 10 * MS, 1_000_000, false, 10 * MS);
        let bw = m.bw_bytes_per_sec();
        for i in 3..40u32 {
            m.on_ack(
                t0 + i * 10 * MS,
                t0 + (i - 1) * 10 * MS,
                1000,
                true,
                10 * MS,
            );
        }
        assert_eq!(
            m.bw_bytes_per_sec(),
            bw,
            "app-limited rounds do not lower it"
        );
    }
}
