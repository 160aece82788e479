//! `tpc-delayline`: the WAN emulator of the benchmark harness. It makes two network
//! namespaces, gives each a TUN device, and forwards every IP packet between the two
//! devices through a userspace delay line (`line.rs`) that applies one-way delay, random
//! loss and a rate limit with a tail-drop queue. This kernel has no netem, so this is how
//! TCP and UDP tools alike see a long, lossy path. It removes its namespaces when it is
//! stopped (SIGINT, SIGTERM, SIGHUP, or its parent dying).

mod line;

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use line::{Line, LineConfig, Nanos, Verdict};

/// Name of the TUN device inside each namespace.
const DEVICE: &str = "wan0";
/// Packets read from a device per wake-up before due packets are written again: bounds
/// how late a delivery can be made by a burst of arrivals.
const READ_BATCH_PACKETS_MAX: usize = 64;
/// Longest sleep of a forwarding thread, so a stop request is seen promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Smallest bottleneck queue when none is given (a few jumbo frames).
const QUEUE_BYTES_MIN: u64 = 64 * 1024;
/// Highest rate limit accepted: 1 Tbit/s, far above what a userspace line can carry,
/// and low enough that no size computed from it overflows.
const RATE_MBIT_MAX: u64 = 1_000_000;

/// Two namespaces joined by an emulated WAN path. Settings apply to each direction.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespace of side A (created; an existing one of that name is replaced).
    #[arg(long, default_value = "tpcwan-a")]
    ns_a: String,
    /// Namespace of side B.
    #[arg(long, default_value = "tpcwan-b")]
    ns_b: String,
    /// IPv4 address of side A's device (a /24 that holds both addresses).
    #[arg(long, default_value = "10.199.0.1")]
    addr_a: String,
    /// IPv4 address of side B's device.
    #[arg(long, default_value = "10.199.0.2")]
    addr_b: String,
    /// One-way delay in milliseconds, each direction (RTT = 2 x this).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Random loss in percent, each packet independently, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss_pct: f64,
    /// Rate limit in Mbit/s of IP packets, each direction; unlimited when absent.
    #[arg(long)]
    rate_mbit: Option<u64>,
    /// Bottleneck queue in bytes (tail drop); defaults to one bandwidth-delay product of
    /// the round trip, as a well-provisioned router would have.
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// MTU of both devices.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Seed of the loss pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write counters as JSON to this file every second and on exit. The file first
    /// appears once both namespaces are up, so scripts can wait for it.
    #[arg(long)]
    stats: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    // Namespaces this run made: the only ones it may remove, on success or failure.
    let mut made = Vec::new();
    let outcome = run(&args, &mut made);
    for ns in &made {
        remove_namespace(ns);
    }
    if let Err(e) = outcome {
        eprintln!("tpc-delayline: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args, made: &mut Vec<String>) -> Result<(), String> {
    if args.ns_a == args.ns_b {
        return Err("--ns-a and --ns-b must differ".into());
    }
    if !(0.0..=100.0).contains(&args.loss_pct) {
        return Err(format!("--loss-pct {} is not within 0..100", args.loss_pct));
    }
    if !(0.0..=10_000.0).contains(&args.delay_ms) {
        return Err(format!(
            "--delay-ms {} is not within 0..10000",
            args.delay_ms
        ));
    }
    if args
        .rate_mbit
        .is_some_and(|r| !(1..=RATE_MBIT_MAX).contains(&r))
    {
        return Err(format!("--rate-mbit must be within 1..{RATE_MBIT_MAX}"));
    }
    if !(576..=65_535).contains(&args.mtu) {
        return Err(format!("--mtu {} is not within 576..65535", args.mtu));
    }
    let delay = (args.delay_ms * 1e6) as Nanos;
    let rate_bits_per_sec = args.rate_mbit.map(|m| m * 1_000_000);
    let queue_bytes_max = args.queue_bytes.unwrap_or_else(|| match rate_bits_per_sec {
        // u128: rate and delay are bounded, but their product is not small.
        Some(rate) => {
            ((rate as u128 / 8 * 2 * delay as u128 / 1_000_000_000) as u64).max(QUEUE_BYTES_MIN)
        }
        None => u64::MAX,
    });

    // Signals are taken by the main thread alone (sigtimedwait), so block them before any
    // thread starts; a parent that dies sends SIGTERM.
    let signals = blocked_signals()?;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        // A parent that died before the prctl: init (or a subreaper) adopted us already.
        if libc::getppid() == 1 {
            return Err("the parent process is gone".into());
        }
        // Default timer slack (50 µs) would add up to that much to every delivery.
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000);
    }

    let tun_a = make_side(&args.ns_a, &args.addr_a, args.mtu, made)?;
    let tun_b = make_side(&args.ns_b, &args.addr_b, args.mtu, made)?;
    let tun_a = Arc::new(tun_a);
    let tun_b = Arc::new(tun_b);

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut directions = Vec::new();
    let mut threads = Vec::new();
    for (name, from, to, seed) in [
        ("a_to_b", &tun_a, &tun_b, args.seed),
        ("b_to_a", &tun_b, &tun_a, args.seed ^ 0x5bd1_e995),
    ] {
        let counters = Arc::new(Counters::default());
        let line = Line::new(LineConfig {
            delay,
            rate_bits_per_sec,
            queue_bytes_max,
            loss: args.loss_pct / 100.0,
            seed,
        });
        let (from, to, stop, c) = (from.clone(), to.clone(), stop.clone(), counters.clone());
        let mtu = args.mtu as usize;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || forward(&from, &to, line, mtu, start, &stop, &c))
            .map_err(|e| format!("cannot start a forwarding thread: {e}"))?;
        directions.push((name, counters));
        threads.push((name, thread));
    }

    let write_stats = |final_: bool| {
        if let Some(path) = &args.stats {
            let body = stats_json(args, queue_bytes_max, start, &directions, final_);
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, body)
                .and_then(|_| std::fs::rename(&tmp, path))
                .is_err()
            {
                eprintln!("tpc-delayline: cannot write {}", path.display());
            }
        }
    };
    write_stats(false);
    eprintln!(
        "tpc-delayline: ready: {} {} <-> {} {}, one-way delay {} ms, loss {}%, rate {}, queue {} bytes, mtu {}",
        args.ns_a,
        args.addr_a,
        args.ns_b,
        args.addr_b,
        args.delay_ms,
        args.loss_pct,
        args.rate_mbit.map_or("unlimited".into(), |r| format!("{r} Mbit/s")),
        queue_text(args.rate_mbit, queue_bytes_max, "unlimited"),
        args.mtu
    );

    loop {
        match wait_signal(&signals, Duration::from_secs(1)) {
            Some(_) => break,
            None => write_stats(false),
        }
        if threads.iter().any(|(_, t)| t.is_finished()) {
            eprintln!("tpc-delayline: a forwarding thread stopped");
            break;
        }
    }
    stop.store(true, Relaxed);
    let mut failed = false;
    for (name, thread) in threads {
        let outcome = thread.join().unwrap_or_else(|_| Err("panicked".into()));
        if let Err(e) = outcome {
            eprintln!("tpc-delayline: {name}: {e}");
            failed = true;
        }
    }
    write_stats(true);
    // The devices go with their fds; main removes the namespaces.
    drop((tun_a, tun_b));
    if failed {
        return Err("forwarding failed".into());
    }
    Ok(())
}

/// What one direction has done, read by the stats writer while the thread runs.
#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    delivered: AtomicU64,
    bytes_delivered: AtomicU64,
    lost: AtomicU64,
    queue_drops: AtomicU64,
    write_errors: AtomicU64,
    /// How late deliveries were against their schedule: a busy emulator shows here first.
    late_nanos_sum: AtomicU64,
    late_nanos_max: AtomicU64,
}

/// A packet waiting in the line.
struct Pending {
    at: Nanos,
    len: usize,
    buf: Box<[u8]>,
}

/// One direction: reads packets from `from`, passes each through `line`, writes the
/// survivors to `to` when they are due. Runs until `stop`.
fn forward(
    from: &OwnedFd,
    to: &OwnedFd,
    mut line: Line,
    mtu: usize,
    start: Instant,
    stop: &AtomicBool,
    c: &Counters,
) -> Result<(), String> {
    let now = || start.elapsed().as_nanos() as Nanos;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut spare: Vec<Box<[u8]>> = Vec::new();
    while !stop.load(Relaxed) {
        // Write what is due.
        let t = now();
        while pending.front().is_some_and(|p| p.at <= t) {
            let p = pending.pop_front().expect("front exists");
            // SAFETY: writes p.len initialized bytes of p.buf.
            let n = unsafe { libc::write(to.as_raw_fd(), p.buf.as_ptr().cast(), p.len) };
            if n == p.len as isize {
                c.delivered.fetch_add(1, Relaxed);
                c.bytes_delivered.fetch_add(p.len as u64, Relaxed);
            } else {
                // The receiving stack refused it (its queue is full, or the device is
                // going away): as lost as a packet on a real wire.
                c.write_errors.fetch_add(1, Relaxed);
            }
            let late = t - p.at;
            c.late_nanos_sum.fetch_add(late, Relaxed);
            c.late_nanos_max.fetch_max(late, Relaxed);
            spare.push(p.buf);
        }
        // Sleep until the next packet is due or one arrives.
        let wait = pending
            .front()
            .map_or(IDLE_WAIT, |p| {
                Duration::from_nanos(p.at.saturating_sub(now()))
            })
            .min(IDLE_WAIT);
        if !wait_readable(from, wait)? {
            continue;
        }
        for _ in 0..READ_BATCH_PACKETS_MAX {
            let mut buf = spare
                .pop()
                .unwrap_or_else(|| vec![0u8; mtu].into_boxed_slice());
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                spare.push(buf);
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => break,
                    _ => return Err(format!("read from the TUN device: {e}")),
                }
            }
            let len = n as usize;
            c.packets_in.fetch_add(1, Relaxed);
            c.bytes_in.fetch_add(len as u64, Relaxed);
            match line.admit(now(), len as u64) {
                Verdict::Deliver(at) => pending.push_back(Pending { at, len, buf }),
                Verdict::Lost => {
                    c.lost.fetch_add(1, Relaxed);
                    spare.push(buf);
                }
                Verdict::QueueFull => {
                    c.queue_drops.fetch_add(1, Relaxed);
                    spare.push(buf);
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `wait` for `fd` to become readable, with sub-millisecond precision.
fn wait_readable(fd: &OwnedFd, wait: Duration) -> Result<bool, String> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(format!("poll on the TUN device: {e}"));
    }
    Ok(rc > 0)
}

/// Makes namespace `ns` (replacing a stale one of that name) with its loopback up and a
/// TUN device `wan0` at `addr`/24, and returns the device's fd. The device is created
/// from inside the namespace, so it lives there while this process holds its fd.
fn make_side(ns: &str, addr: &str, mtu: u32, made: &mut Vec<String>) -> Result<OwnedFd, String> {
    if std::path::Path::new("/run/netns").join(ns).exists() {
        // Left by a run that was killed outright (SIGKILL gives no chance to clean up).
        eprintln!("tpc-delayline: replacing the existing namespace {ns}");
        remove_namespace(ns);
    }
    ip(&["netns", "add", ns])?;
    made.push(ns.to_string());
    let home = open_ns("/proc/self/ns/net")?;
    let there = open_ns(&format!("/run/netns/{ns}"))?;
    enter_ns(&there)?;
    let tun = open_tun(DEVICE);
    // Back home whatever happened, or later namespaces would nest in this one.
    enter_ns(&home)?;
    let tun = tun?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // A long device queue: the TUN device drops what this process has not read yet
    // when its queue (500 packets by default) is full, which a burst at 1 Gbit/s and
    // 1500-byte packets overruns; the emulated bottleneck queue is the only one meant
    // to drop.
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        DEVICE,
        "mtu",
        &mtu.to_string(),
        "txqueuelen",
        "20000",
        "up",
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        DEVICE,
    ])?;
    // Give TCP the buffers a long fat pipe needs (as on a tuned transfer host), so the
    // TCP tools are limited by the path and their congestion control, not by defaults
    // sized for a LAN.
    for (key, value) in [
        ("net.ipv4.tcp_rmem", "4096 131072 134217728"),
        ("net.ipv4.tcp_wmem", "4096 65536 134217728"),
    ] {
        let status = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .arg(format!("{key}={value}"))
            .status()
            .map_err(|e| format!("cannot run sysctl: {e}"))?;
        if !status.success() {
            return Err(format!("sysctl {key} failed in {ns}"));
        }
    }
    Ok(tun)
}

fn open_ns(path: &str) -> Result<OwnedFd, String> {
    let c = CString::new(path).expect("no NUL in a namespace path");
    // SAFETY: a valid C string; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {path}: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn enter_ns(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: fd refers to a network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tun(name: &str) -> Result<OwnedFd, String> {
    // SAFETY: a constant C string; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("open /dev/net/tun: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    assert!(name.len() < libc::IFNAMSIZ, "device name too long");
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: req is a properly laid out ifreq that outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(format!("TUNSETIFF {name}: {}", io::Error::last_os_error()));
    }
    Ok(fd)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn remove_namespace(ns: &str) {
    if std::path::Path::new("/run/netns").join(ns).exists() {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("tpc-delayline: {e}");
        }
    }
}

fn blocked_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: sigset functions on a local set; pthread_sigmask on this (only) thread,
    // inherited by threads started later.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("cannot block signals".into());
        }
        Ok(set)
    }
}

/// The signal that arrived within `wait`, if any.
fn wait_signal(set: &libc::sigset_t, wait: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; no siginfo wanted.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

/// The queue size for messages: without a rate limit no queue ever forms.
fn queue_text(rate_mbit: Option<u64>, queue_bytes_max: u64, none: &str) -> String {
    match rate_mbit {
        Some(_) => queue_bytes_max.to_string(),
        None => none.into(),
    }
}

fn stats_json(
    args: &Args,
    queue_bytes_max: u64,
    start: Instant,
    directions: &[(&str, Arc<Counters>)],
    final_: bool,
) -> String {
    let mut out = Vec::new();
    let _ = write!(
        out,
        "{{\"final\":{final_},\"elapsed_s\":{:.3},\"delay_ms\":{},\"loss_pct\":{},\"rate_mbit\":{},\"queue_bytes\":{},\"mtu\":{},\"seed\":{}",
        start.elapsed().as_secs_f64(),
        args.delay_ms,
        args.loss_pct,
        args.rate_mbit.map_or("null".into(), |r| r.to_string()),
        queue_text(args.rate_mbit, queue_bytes_max, "null"),
        args.mtu,
        args.seed
    );
    for (name, c) in directions {
        let delivered = c.delivered.load(Relaxed);
        let _ = write!(
            out,
            ",\"{name}\":{{\"packets_in\":{},\"bytes_in\":{},\"delivered\":{delivered},\"bytes_delivered\":{},\"lost\":{},\"queue_drops\":{},\"write_errors\":{},\"late_us_mean\":{:.1},\"late_us_max\":{:.1}}}",
            c.packets_in.load(Relaxed),
            c.bytes_in.load(Relaxed),
            c.bytes_delivered.load(Relaxed),
            c.lost.load(Relaxed),
            c.queue_drops.load(Relaxed),
            c.write_errors.load(Relaxed),
            c.late_nanos_sum.load(Relaxed) as f64 / delivered.max(1) as f64 / 1e3,
            c.late_nanos_max.load(Relaxed) as f64 / 1e3,
        );
    }
    out.extend_from_slice(b"}\n");
    String::from_utf8(out).expect("ASCII JSON")
}
