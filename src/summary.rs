//! The one summary a copy ends with, local, push or pull alike: one JSON shape
//! (`--json`, documented in the README) and one line on stderr.

use serde::Serialize;

use crate::exit::{Exit, Failures};
use crate::progress::{human_bytes, Entry};

/// The version of the summary's shape: raised when a key changes meaning or goes away
/// (new keys may appear without it).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Serialize, Default)]
pub struct Summary {
    pub schema_version: u32,
    /// The process's exit code (see `--help`).
    pub exit_code: u8,
    /// What failed, as reported on stderr (the first `FAILURES_LISTED_MAX`), and how
    /// many more did.
    pub failures: Vec<String>,
    pub failures_unlisted: u64,
    /// "local", "push" or "pull".
    pub direction: &'static str,
    /// The server (`host:port`) of a push or pull.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    pub files: u64,
    pub files_copied: u64,
    pub files_unchanged: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub throughput_bytes_per_sec: f64,
    /// Special files (FIFOs, sockets, devices), which are not copied.
    pub skipped: u64,
    pub failed: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Entries removed from the destination by `--delete`.
    pub deleted: u64,
    /// Every written file was read back and compared (`--verify`).
    pub verified: bool,
    /// `--dry-run`: the counts are what the run would have done; nothing was written.
    pub dry_run: bool,
    pub shards: usize,
    pub bytes_per_shard: Vec<u64>,
    /// Ranges (local) or runs (remote; one stream each, including runs taken over from
    /// other shards) each shard moved.
    pub ranges_per_shard: Vec<u64>,
    /// The CPUs each shard's thread may run on, read back from the kernel.
    pub shard_cpus: Vec<Vec<usize>>,
    /// The driver the shards ran on: "uring" or "portable".
    pub io: &'static str,
    /// What a push or pull adds: the path and what the network was spared.
    #[serde(flatten)]
    pub network: Option<Network>,
}

/// The network side of a push or pull.
#[derive(Serialize, Default)]
pub struct Network {
    /// "quic" or "tcp": what carried the session.
    pub transport: &'static str,
    pub server_shards: usize,
    /// Largest UDP payload each shard's connection reached by path MTU discovery.
    pub udp_payload_per_shard: Vec<u16>,
    /// What each shard's connection saw of the path, at the end of the transfer.
    pub path_per_shard: Vec<PathSummary>,
    /// Per-chunk latency over all shards (hdrhistogram).
    pub chunk_latency_us: LatencySummary,
    /// Chunks that travelled zstd-compressed (`--compress`), and the bytes that saved.
    pub compressed_chunks: u64,
    pub bytes_saved_by_compression: u64,
    /// Chunks not sent because the receiver's old version of the file already held
    /// them, and their bytes.
    pub chunks_reused: u64,
    pub bytes_reused: u64,
}

/// One connection's view of its path, from quinn-proto's counters.
#[derive(Serialize, Default, Clone)]
pub struct PathSummary {
    pub rtt_us: u64,
    pub congestion_window_bytes: u64,
    /// The larger of this end's two flow-control windows, as tuned by the end.
    pub flow_window_bytes: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub congestion_events: u64,
}

/// Percentiles of the per-chunk latency, in µs.
#[derive(Serialize, Default)]
pub struct LatencySummary {
    /// What is timed: see `move_range`.
    pub measures: &'static str,
    pub chunks: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// How a copy, push or pull ended: its exit code, and its summary unless it stopped
/// before it had one.
pub struct Done {
    pub exit: Exit,
    pub summary: Option<Summary>,
}

impl From<Exit> for Done {
    fn from(exit: Exit) -> Done {
        Done {
            exit,
            summary: None,
        }
    }
}

impl Done {
    /// Prints the summary of this run (a `direction` one: "local", "push" or "pull").
    /// A run that stopped before it had a summary prints one anyway for a machine,
    /// carrying the exit code and why; a person has read why on stderr.
    pub fn print(self, direction: &'static str, output: Output) -> Exit {
        if self.summary.is_none() && matches!(output, Output::Line { .. }) {
            return self.exit;
        }
        let mut s = self.summary.unwrap_or_default();
        s.direction = direction;
        s.print(self.exit, output);
        self.exit
    }
}

/// How a run ends its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One line on stderr, unless `quiet`.
    Line { quiet: bool },
    /// `--json`: one JSON document on stdout.
    Json,
    /// `--json-log`: the summary is the log's last line, `"type": "summary"`.
    JsonLog,
}

impl Summary {
    /// Prints the summary of a run that ends with `exit`, with the failures reported.
    fn print(mut self, exit: Exit, output: Output) {
        let s = &mut self;
        s.schema_version = SCHEMA_VERSION;
        s.exit_code = exit as u8;
        let failures = Failures::so_far();
        s.failures = failures.listed;
        s.failures_unlisted = failures.unlisted;
        match output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&*s).expect("summary serializes")
            ),
            Output::JsonLog => crate::progress::json_line(&Entry::Summary(&*s)),
            Output::Line { quiet: false } => eprintln!("{}", s.line()),
            Output::Line { quiet: true } => {}
        }
    }

    fn line(&self) -> String {
        let verb = match self.direction {
            "push" => "pushed",
            "pull" => "pulled",
            _ => "copied",
        };
        let verb = if self.dry_run {
            match self.direction {
                "push" => "dry run: would push",
                "pull" => "dry run: would pull",
                _ => "dry run: would copy",
            }
        } else {
            verb
        };
        format!(
            "{verb} {} of {} files ({}) in {:.2} s, {}/s; {} unchanged, {} skipped, {} failed{}; {} shards",
            self.files_copied,
            self.files,
            human_bytes(self.bytes),
            self.seconds,
            human_bytes(self.throughput_bytes_per_sec as u64),
            self.files_unchanged,
            self.skipped,
            self.failed,
            if self.deleted > 0 {
                format!(", {} deleted", self.deleted)
            } else {
                String::new()
            },
            self.shards
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape_for_local_and_remote() {
        let local = Summary {
            direction: "local",
            ..Default::default()
        };
        let remote = Summary {
            direction: "push",
            remote: Some("h:1".into()),
            network: Some(Network::default()),
            ..Default::default()
        };
        let keys = |s: &Summary| -> Vec<String> {
            let v = serde_json::to_value(s).unwrap();
            v.as_object().unwrap().keys().cloned().collect()
        };
        let (l, r) = (keys(&local), keys(&remote));
        // Every key of a local copy is in a push, with the same meaning.
        assert!(l.iter().all(|k| r.contains(k)), "{l:?} vs {r:?}");
        assert!(r.contains(&"chunks_reused".to_string()));
        assert!(local.line().starts_with("copied 0 of 0 files"));
        assert!(remote.line().starts_with("pushed 0 of 0 files"));
    }
}
