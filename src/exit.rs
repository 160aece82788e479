//! The single exit-code policy of the command line: every failure maps to one documented
//! code, chosen from the most serious problem of a run.

use std::io;

/// Exit codes, documented in `--help` and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    /// `check`: the trees differ.
    Differ = 1,
    /// Bad arguments (clap uses 2 as well).
    Usage = 2,
    /// A source is missing or could not be read; everything else was copied.
    Source = 3,
    /// The destination could not be written: read-only, permission denied, in the way.
    Destination = 4,
    /// The destination ran out of space or quota.
    NoSpace = 5,
    /// `--verify` found written content that does not match the source.
    Verify = 6,
    /// The engine could not start or stopped unexpectedly.
    Engine = 7,
    /// The server could not be reached, or the connection to it was lost.
    Network = 8,
    /// Authentication failed: unknown or changed server key, client not authorized.
    Auth = 9,
    /// The peer broke the protocol (or speaks another version).
    Protocol = 10,
    /// `--max-delete` stopped deletions: everything was copied, and the destination holds
    /// entries it would have deleted.
    MaxDelete = 11,
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (check: trees identical)
  1  check: trees differ
  2  usage error
  3  a source is missing or unreadable (the rest was copied)
  4  destination not writable (read-only, permission denied, or a directory in the way)
  5  destination full (no space or quota left)
  6  --verify found a mismatch
  7  engine failure (--io uring where io_uring cannot be used, shard stopped)
  8  server unreachable, or the connection was lost
  9  authentication failed (unknown or changed server key, client not authorized)
  10 protocol error (the peer sent something invalid, or speaks another version)
  11 --max-delete reached (the rest was copied; extraneous entries left in place)";

impl Exit {
    /// Classifies an error met while writing to the destination.
    pub fn for_write(errno: Option<i32>) -> Exit {
        match errno {
            Some(libc::ENOSPC) => Exit::NoSpace,
            #[cfg(unix)]
            Some(libc::EDQUOT) => Exit::NoSpace,
            _ => Exit::Destination,
        }
    }

    pub fn for_write_error(e: &io::Error) -> Exit {
        Exit::for_write(tpc_engine::os::errno(e))
    }
}

/// How many failure messages a run keeps for its summary (`--json`, `--json-log`); past
/// this they are counted only, so a tree of a million unreadable files cannot grow the
/// summary without bound.
pub const FAILURES_LISTED_MAX: usize = 1000;

/// Every failure the process reported, in order: what the summary lists. One process
/// runs one command, and failures are reported on every shard and from several
/// collectors (`Problems`), so they gather here.
static FAILURES: std::sync::Mutex<Failures> = std::sync::Mutex::new(Failures {
    listed: Vec::new(),
    unlisted: 0,
});

/// The failures a summary reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Failures {
    /// The messages, as printed on stderr, the first `FAILURES_LISTED_MAX` of them.
    pub listed: Vec<String>,
    /// How many more there were.
    pub unlisted: u64,
}

impl Failures {
    /// What was reported so far.
    pub fn so_far() -> Failures {
        FAILURES.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(message: String) {
        let mut f = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
        if f.listed.len() < FAILURES_LISTED_MAX {
            f.listed.push(message);
        } else {
            f.unlisted += 1;
        }
    }
}

/// Reports one failure that ends a run: printed, kept for the summary, and its class
/// returned as the exit code.
pub fn fail(exit: Exit, message: impl std::fmt::Display) -> Exit {
    let mut p = Problems::default();
    p.report(exit, message);
    exit
}

/// Collects problems of a run; the worst one decides the exit code.
#[derive(Default)]
pub struct Problems {
    worst: Option<Exit>,
}

impl Problems {
    /// Prints a one-line error, keeps it for the summary, and records its class.
    pub fn report(&mut self, exit: Exit, message: impl std::fmt::Display) {
        let message = message.to_string();
        eprintln!("tpc-xfer: {message}");
        Failures::add(message);
        self.record(exit);
    }

    pub fn record(&mut self, exit: Exit) {
        // Prefer the rarer, more specific classes: out of space over a generic failure.
        // `--max-delete` reached is the least of them (rsync: "unless some more
        // important error condition also occurred").
        self.worst = Some(match self.worst {
            Some(w) if exit == Exit::MaxDelete => w,
            Some(w) if w >= exit && w != Exit::MaxDelete => w,
            _ => exit,
        });
    }

    pub fn exit(&self) -> Exit {
        self.worst.unwrap_or(Exit::Ok)
    }
}
