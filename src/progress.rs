//! Progress line on stderr (bytes, files, rate, ETA) while a job runs, when stderr is a
//! terminal; and human-readable sizes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tpc_engine::Progress;

pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts drawing if `enabled` and stderr is a terminal; otherwise does nothing.
    pub fn start(
        enabled: bool,
        progress: Arc<Progress>,
        total_bytes: u64,
        total_files: u64,
        verb: &'static str,
    ) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Reporter { stop, thread: None };
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tpc-progress".into())
            .spawn(move || {
                let start = Instant::now();
                let mut drawn = false;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let elapsed = start.elapsed().as_secs_f64();
                    if elapsed < 0.5 {
                        continue; // short jobs stay quiet
                    }
                    let bytes = progress.bytes();
                    let rate = bytes as f64 / elapsed;
                    let eta = if rate > 0.0 && total_bytes > bytes {
                        format!("{:.0}s", (total_bytes - bytes) as f64 / rate)
                    } else {
                        "-".into()
                    };
                    let line = format!(
                        "{verb} {} / {}  files {} / {}  {}/s  ETA {eta}",
                        human_bytes(bytes),
                        human_bytes(total_bytes),
                        progress.files(),
                        total_files,
                        human_bytes(rate as u64),
                    );
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                    drawn = true;
                }
                if drawn {
                    let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
                }
            })
            .ok();
        Reporter { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
