//! What a transfer shows while it runs, local, push or pull alike: a progress line on
//! stderr (indicatif: bytes, percentage, moving rate, ETA, files), a plain stamped line
//! every `--stats-every` seconds for logs, and `--json-log` objects on stdout (one per
//! interval and one per finished file). The shards only count (atomics, one writer
//! each); one reporter thread samples the counts, so drawing never slows a shard. Its
//! one rate estimator (indicatif's, weighted toward the last seconds) feeds all three.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

/// How often the reporter samples the shards' counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A job shorter than this draws no line on a terminal unless `--progress` asked.
const QUIET_START: Duration = Duration::from_millis(500);
/// How often `--json-log` writes a progress object when `--stats-every` is not given.
pub const JSON_LOG_EVERY_DEFAULT: Duration = Duration::from_secs(10);

/// What a run asked to be shown (`--progress`, `--stats-every`, `--json-log`, `--quiet`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Show {
    /// Draw the progress line: `Some(true)` even where stderr is not a terminal
    /// (`--progress`), `Some(false)` where it is one, `None` never.
    pub bar: Option<bool>,
    /// A plain line (or with `json_log` an object) this often.
    pub stats_every: Option<Duration>,
    /// `--json-log`: objects on stdout instead of lines on stderr.
    pub json_log: bool,
}

impl Show {
    /// Nothing at all: `check`'s hashing with `--quiet`, or a run that shows its own.
    pub fn nothing() -> Show {
        Show::default()
    }

    fn anything(&self) -> bool {
        self.bar.is_some() || self.stats_every.is_some() || self.json_log
    }
}

/// The counts a reporter samples. A remote transfer learns its totals only once the
/// manifest is exchanged: until then `totals_known` is false, and no percentage or ETA
/// is shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub bytes: u64,
    pub files: u64,
    pub total_bytes: u64,
    pub total_files: u64,
    pub totals_known: bool,
}

/// One finished file, for `--json-log`.
#[derive(Serialize, Debug)]
pub struct FileDone {
    pub path: String,
    pub bytes: u64,
    /// Why it failed; absent when it is in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the shards report finished files; cheap to clone, one per thread that reports.
/// A report never waits (a shard must not stall its connections on a slow stdout): the
/// queue is unbounded, and holds at most one report per file of the job, whose own list
/// is bounded (`JOB_FILES_MAX`, `MANIFEST_ENTRIES_MAX`).
#[derive(Clone)]
pub struct FileLog(mpsc::Sender<FileDone>);

impl FileLog {
    pub fn done(&self, file: FileDone) {
        // The reporter is gone only once the job has ended.
        let _ = self.0.send(file);
    }
}

/// A channel for finished files, when `show` logs them (`--json-log`): the log for the
/// shards, and its other end for [`Reporter::start`].
pub fn file_log(show: Show) -> (Option<FileLog>, Option<mpsc::Receiver<FileDone>>) {
    if show.json_log {
        let (tx, rx) = mpsc::channel();
        (Some(FileLog(tx)), Some(rx))
    } else {
        (None, None)
    }
}

pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts showing what `show` asks, of the counts `sample` returns and the files
    /// `files` receives (see [`file_log`]); `verb` names the work ("copy", "push",
    /// "pull", "hash").
    pub fn start(
        show: Show,
        verb: &'static str,
        sample: impl Fn() -> Sample + Send + 'static,
        files: Option<mpsc::Receiver<FileDone>>,
    ) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        if !show.anything() {
            return Reporter { stop, thread: None };
        }
        let flag = stop.clone();
        // If the thread cannot start, `files` goes with it: reports then fail at once
        // instead of waiting for room.
        let thread = std::thread::Builder::new()
            .name("tpc-progress".into())
            .spawn(move || report(show, verb, sample, files, &flag))
            .ok();
        Reporter { stop, thread }
    }

    /// Stops, after a last sample and the files reported so far.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reporter thread: samples every `SAMPLE_EVERY` until told to stop.
fn report(
    show: Show,
    verb: &'static str,
    sample: impl Fn() -> Sample,
    events: Option<mpsc::Receiver<FileDone>>,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(style(verb));
    let forced = show.bar == Some(true);
    let mut drawing = false;
    let json_every = show.stats_every.unwrap_or(JSON_LOG_EVERY_DEFAULT);
    let mut next_stats = show.stats_every.map(|every| started + every);
    let mut next_json = started + json_every;
    loop {
        let last = stop.load(Ordering::Relaxed);
        let now = sample();
        if now.totals_known {
            bar.set_length(now.total_bytes);
        }
        bar.set_position(now.bytes);
        bar.set_message(format!("{} / {} files", now.files, now.total_files));
        if !drawing && show.bar.is_some() && (forced || started.elapsed() >= QUIET_START && !last) {
            // Only now: a job that ends sooner than `QUIET_START` leaves no line behind,
            // unless `--progress` asked for one.
            bar.set_draw_target(if stderr_is_terminal() {
                ProgressDrawTarget::stderr_with_hz(5)
            } else {
                ProgressDrawTarget::term_like_with_hz(Box::new(ForcedStderr), 5)
            });
            drawing = true;
            bar.tick();
        }
        if let Some(rx) = &events {
            while let Ok(file) = rx.try_recv() {
                json_line(&Entry::<()>::File(&file));
            }
        }
        let due = |at: &mut Option<Instant>, every: Option<Duration>| match (*at, every) {
            (Some(t), Some(every)) if Instant::now() >= t => {
                *at = Some(t + every);
                true
            }
            _ => false,
        };
        if show.json_log {
            // The last state too, just before the summary: a log of any run shows one.
            if Instant::now() >= next_json || last {
                next_json += json_every;
                json_line(&Entry::<()>::Progress(Interval::of(&bar, now)));
            }
        } else if due(&mut next_stats, show.stats_every) && !last {
            let text = stats_line(verb, &bar, now);
            bar.suspend(|| crate::log::line(format_args!("{text}")));
        }
        if last {
            break;
        }
        wait(SAMPLE_EVERY, events.as_ref());
    }
    if drawing && forced {
        // As rsync's --progress: the last state stays on the screen, on a line of its own.
        bar.abandon();
        let _ = writeln!(std::io::stderr().lock());
    } else {
        bar.finish_and_clear();
    }
}

/// Sleeps for `period`, logging finished files as they arrive meanwhile, so a log of
/// thousands of small files a second keeps up with them instead of coming in bursts.
fn wait(period: Duration, events: Option<&mpsc::Receiver<FileDone>>) {
    let until = Instant::now() + period;
    let Some(rx) = events else {
        std::thread::sleep(period);
        return;
    };
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(file) => json_line(&Entry::<()>::File(&file)),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(left);
                return;
            }
        }
    }
}

/// The progress line: `push  1.2 GiB / 4.0 GiB  30%  123.4 MiB/s  ETA 0:00:23  12 / 100 files`.
fn style(verb: &'static str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{verb} {{bytes_done}} / {{bytes_total}}  {{percent}}%  {{rate}}  ETA {{eta_hms}}  {{msg}}"
    ))
    .expect("a valid template")
    .with_key(
        "bytes_done",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&human_bytes(s.pos()));
        },
    )
    .with_key(
        "bytes_total",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&human_bytes(s.len().unwrap_or(0)));
        },
    )
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{}/s", human_bytes(s.per_sec() as u64));
    })
    .with_key(
        "eta_hms",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&eta_hms(eta(s.per_sec(), s.pos(), s.len())));
        },
    )
}

/// Seconds left at `per_sec`, or `None` while nothing has moved.
fn eta(per_sec: f64, done: u64, total: Option<u64>) -> Option<u64> {
    let left = total?.saturating_sub(done);
    if left == 0 {
        return Some(0);
    }
    (per_sec >= 1.0).then(|| (left as f64 / per_sec).ceil() as u64)
}

/// An ETA as h:mm:ss (`-:--:--` when unknown).
pub fn eta_hms(seconds: Option<u64>) -> String {
    match seconds {
        Some(s) => format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
        None => "-:--:--".into(),
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
    }
}

/// The `--stats-every` line.
fn stats_line(verb: &str, bar: &ProgressBar, now: Sample) -> String {
    let rate = human_bytes(bar.per_sec() as u64);
    if !now.totals_known {
        return format!("{verb}: {} so far, {rate}/s", human_bytes(now.bytes));
    }
    format!(
        "{verb}: {} / {} ({}%), {} / {} files, {rate}/s, ETA {}",
        human_bytes(now.bytes),
        human_bytes(now.total_bytes),
        percent(now.bytes, now.total_bytes),
        now.files,
        now.total_files,
        eta_hms(eta(bar.per_sec(), now.bytes, Some(now.total_bytes))),
    )
}

/// One `--json-log` progress object.
#[derive(Serialize)]
pub struct Interval {
    bytes: u64,
    /// Absent until a remote transfer knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<u64>,
    files: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_files: Option<u64>,
    /// Moving rate (weighted toward the last seconds), not the average since the start.
    bytes_per_sec: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_seconds: Option<u64>,
}

impl Interval {
    fn of(bar: &ProgressBar, now: Sample) -> Interval {
        let known = |n: u64| now.totals_known.then_some(n);
        Interval {
            bytes: now.bytes,
            total_bytes: known(now.total_bytes),
            percent: known(percent(now.bytes, now.total_bytes)),
            files: now.files,
            total_files: known(now.total_files),
            bytes_per_sec: bar.per_sec() as u64,
            eta_seconds: known(0)
                .and_then(|_| eta(bar.per_sec(), now.bytes, Some(now.total_bytes))),
        }
    }
}

/// The objects of `--json-log`, one line each, tagged by `type` and stamped with `time`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry<'a, T: Serialize = ()> {
    Progress(Interval),
    File(&'a FileDone),
    /// The last line: the run's summary, its exit code and its failures.
    Summary(&'a T),
}

/// Writes one `--json-log` object as a line on stdout.
pub fn json_line<T: Serialize>(entry: &Entry<'_, T>) {
    #[derive(Serialize)]
    struct Stamped<'a, E: Serialize> {
        time: String,
        #[serde(flatten)]
        entry: &'a E,
    }
    let line = Stamped {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        entry,
    };
    let text = serde_json::to_string(&line).expect("a log entry serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// stderr for a line forced where it is not a terminal (`--progress` into a pipe or a
/// log): drawn as on a terminal, each state after a carriage return.
#[derive(Debug)]
struct ForcedStderr;

impl indicatif::TermLike for ForcedStderr {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        writeln!(std::io::stderr().lock(), "{s}")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        write!(std::io::stderr().lock(), "{s}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        write!(std::io::stderr().lock(), "\r")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

/// Whether a line would be drawn by default: stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_reads_as_hours_minutes_seconds() {
        assert_eq!(eta_hms(Some(0)), "0:00:00");
        assert_eq!(eta_hms(Some(83)), "0:01:23");
        assert_eq!(eta_hms(Some(3 * 3600 + 61)), "3:01:01");
        assert_eq!(eta_hms(None), "-:--:--");
        assert_eq!(eta(0.0, 0, Some(10)), None);
        assert_eq!(eta(2.0, 4, Some(10)), Some(3));
        assert_eq!(eta(0.0, 10, Some(10)), Some(0));
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }

    #[test]
    fn log_entries_are_tagged_one_line_objects() {
        let file = FileDone {
            path: "a/b".into(),
            bytes: 3,
            error: None,
        };
        let v = serde_json::to_value(Entry::<()>::File(&file)).unwrap();
        assert_eq!(v["type"], "file");
        assert_eq!(v["path"], "a/b");
        assert!(v.get("error").is_none());
    }
}
