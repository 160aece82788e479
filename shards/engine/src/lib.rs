//! The tpc-xfer shard logic on a driver: one pinned shard per core, each reading, hashing
//! and writing the ranges assigned to it, and finalizing the files it owns; and the QUIC
//! endpoints and path confinement that remote transfers run on the same shards.
//!
//! Every shard runs on one driver, chosen per run (`rt::Driver`): glommio over io_uring,
//! or the portable readiness loop. The logic here is written once against `rt`.
//!
//! A job is a list of files. Every file has an owner shard (`tpc_core::plan::owner`) and
//! is cut into ranges (`ChunkPlan`), each worked on by `range_shard`. A shard reads its
//! ranges through its driver, hashes each chunk with BLAKE3 and, for a copy, writes it to
//! the file's temporary name. It then reports the chunk hashes to the owner — directly
//! when it is the owner, otherwise as a `ShardMsg` over the channel mesh. The
//! owner feeds the reports to its `Assembly`; when a file is complete it applies mode and
//! times through the open file, and commits it: durable in batches, then renamed into place.
//!
//! Shards share nothing mutable. The job's file list is immutable and shared by `Arc`;
//! progress counters are one cache line per shard, written only by that shard.

pub mod confine;
pub mod direct;
pub mod mesh;
pub mod os;
pub mod pace;
pub mod quic;
mod recv_pool;
pub mod rt;
mod shard;
pub mod tcp;
pub mod temp;
pub mod transport;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use rt::Driver;
use tpc_core::limits::{JOB_FILES_MAX, SHARDS_MAX};
use tpc_core::{FileDigest, FileId, RelPath};

/// A path beneath one of the job's roots (`JobSpec::roots`): every file of a job is
/// opened, created and renamed through a held root directory, never by a path that a
/// symlink swapped in could redirect (`confine`).
#[derive(Clone, Debug)]
pub struct Beneath {
    /// Index into `JobSpec::roots`.
    pub root: usize,
    pub rel: RelPath,
}

/// One file of a job.
#[derive(Clone, Debug)]
pub struct JobFile {
    /// Path relative to the transfer root; decides the owner shard.
    pub rel: Vec<u8>,
    /// Where to read.
    pub src: Beneath,
    /// What the source was when it was listed. A source that is another file when
    /// opened, or whose size or mtime changed by the end of its reads, fails the file
    /// ("changed while it was copied") rather than committing a mix of two versions.
    pub listed: Option<Listed>,
    /// For a copy: where to write and commit. `None` for a hash-only job.
    pub dst: Option<Destination>,
    pub size_bytes: u64,
}

impl JobFile {
    /// Whether several shards write this file (it has more than one range): its
    /// temporary is then made before the shards start, and its metadata is applied by
    /// its owner once every range is in.
    pub(crate) fn shared(&self) -> bool {
        tpc_core::ChunkPlan::new(self.size_bytes).is_ok_and(|p| p.range_count() > 1)
    }
}

/// A source's identity and version as the walk saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    /// (device, inode); (0, 0) where the platform does not report them.
    pub inode: (u64, u64),
    pub mtime: (i64, u32),
}

impl Listed {
    /// Whether the open source `file` of `size_bytes` is still the file and the version
    /// listed: the same inode (a symlink or another file swapped in since the walk is
    /// not), size and mtime (an edit that keeps the size moves the mtime). Checked when a
    /// source is opened and again after it is read, by the local copy and by a push.
    pub fn check(&self, file: &std::fs::File, size_bytes: u64) -> Result<(), SourceChanged> {
        let st = confine::fstat(file).map_err(SourceChanged::Stat)?;
        let same_file = self.inode == (0, 0) || st.inode == self.inode;
        if !same_file {
            return Err(SourceChanged::Replaced);
        }
        if st.size_bytes != size_bytes || st.mtime != self.mtime {
            return Err(SourceChanged::Changed);
        }
        Ok(())
    }
}

/// Why a source is not what was listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceChanged {
    /// Another file is at its name (swapped in after the walk).
    Replaced,
    /// Its size or mtime moved: written to while it was copied.
    Changed,
    /// It could not be looked at (the errno).
    Stat(i32),
}

impl std::fmt::Display for SourceChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceChanged::Replaced => f.write_str("the file was replaced after it was listed"),
            SourceChanged::Changed => f.write_str("the file changed while it was being copied"),
            SourceChanged::Stat(errno) => f.write_str(&os::errno_text(*errno)),
        }
    }
}

/// Where a copied file is written and what it looks like when done.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Index into `JobSpec::roots`.
    pub root: usize,
    /// Temporary name in the destination directory (`tpc_core::temp::temp_name`);
    /// created once with `O_EXCL`, written, then renamed.
    pub tmp: RelPath,
    pub path: RelPath,
    /// Permission bits to set (`mode & 0o7777`).
    pub mode: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
}

/// How copied files are made durable before they are renamed into place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Batches of files are synced together (`syncfs`; off Linux each through its own
    /// handle), then renamed, then their directories are synced. A file is never visible
    /// under its name before it is durable.
    Batch,
    /// Rename as soon as written; the kernel writes back when it likes.
    Never,
}

#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The directories every path of the job is beneath.
    pub roots: Vec<Arc<confine::Root>>,
    pub files: Vec<JobFile>,
    pub shard_count: usize,
    pub durability: Durability,
    pub driver: Driver,
    /// `--bwlimit`: every chunk read waits its turn on this schedule.
    pub pace: Option<Arc<pace::Pacer>>,
}

/// What happened to one file.
#[derive(Clone, Debug)]
pub enum FileOutcome {
    /// Read, hashed and (for a copy) written, durable as requested and in place.
    Done(FileDigest),
    Failed(FileError),
}

/// Why a file failed: which stage, and the OS error.
#[derive(Clone, Debug)]
pub struct FileError {
    pub stage: Stage,
    pub errno: Option<i32>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Read,
    Write,
    Commit,
}

/// Per-shard figures for the summary.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: usize,
    /// CPUs this executor's thread may run on, read back from the kernel.
    pub affinity: Vec<usize>,
    pub bytes: u64,
    pub ranges: u64,
    pub files_committed: u64,
}

pub struct JobReport {
    pub outcomes: Vec<FileOutcome>,
    pub shards: Vec<ShardReport>,
}

/// Live counters for progress display: one cache line per shard, one writer each.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardCounters {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

pub struct Progress {
    pub shards: Vec<ShardCounters>,
    /// Called on the owner shard as each file gets its outcome (committed or failed),
    /// with its index in the job: what a per-file progress log is written from.
    pub on_finished: Option<FinishedListener>,
}

/// See [`Progress::on_finished`].
pub type FinishedListener = Box<dyn Fn(u32, &FileOutcome) + Send + Sync>;

impl Progress {
    pub fn new(shard_count: usize) -> Arc<Self> {
        Progress::with_listener(shard_count, None)
    }

    pub fn with_listener(shard_count: usize, on_finished: Option<FinishedListener>) -> Arc<Self> {
        Arc::new(Progress {
            shards: (0..shard_count).map(|_| ShardCounters::default()).collect(),
            on_finished,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }

    pub fn files(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.files.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Debug)]
pub enum EngineError {
    TooManyShards {
        requested: usize,
        available: usize,
    },
    TooManyFiles(usize),
    /// io_uring or the executor could not start (seccomp, RLIMIT_MEMLOCK, old kernel).
    Start(String),
    ShardPanicked(usize),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::TooManyShards {
                requested,
                available,
            } => write!(
                f,
                "--cores {requested} asks for more cores than the {available} this process may use"
            ),
            EngineError::TooManyFiles(n) => write!(f, "{n} files exceed the per-job limit"),
            EngineError::Start(e) => write!(f, "cannot start a shard: {e}"),
            EngineError::ShardPanicked(i) => write!(f, "shard {i} stopped unexpectedly"),
        }
    }
}

impl std::error::Error for EngineError {}

/// CPUs this process may run on, in order (respects `taskset` and cgroup cpusets).
pub fn usable_cpus() -> Vec<usize> {
    affinity_of_current_thread()
}

/// The CPUs this thread may run on. Off Linux there is no affinity to read: every CPU
/// the OS reports (the portable driver leaves placement to the scheduler there).
#[cfg(not(target_os = "linux"))]
fn affinity_of_current_thread() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

#[cfg(target_os = "linux")]
fn affinity_of_current_thread() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Runs a job on `spec.shard_count` pinned shards and waits for it.
pub fn run_job(spec: JobSpec, progress: Arc<Progress>) -> Result<JobReport, EngineError> {
    if spec.files.len() > JOB_FILES_MAX {
        return Err(EngineError::TooManyFiles(spec.files.len()));
    }
    assert_eq!(
        progress.shards.len(),
        spec.shard_count,
        "progress sized for the job"
    );
    let prepared = Arc::new(create_shared_temporaries(&spec));
    let job = Arc::new(spec);
    let file_count = job.files.len();
    let shards_job = job.clone();
    let results =
        run_shards::<shard::ShardMsg, _, _, _>(job.driver, job.shard_count, 1024, move |ctx| {
            shard::run(
                ctx.shard,
                shards_job.clone(),
                prepared.clone(),
                ctx.mesh,
                progress.clone(),
            )
        });
    let results = match results {
        Ok(results) => results,
        Err(e) => {
            // No shard ran: the temporaries made for them go again.
            for dst in job.files.iter().filter_map(|f| f.dst.as_ref()) {
                let _ = job.roots[dst.root].remove_file(&dst.tmp);
            }
            return Err(e);
        }
    };
    let mut outcomes: Vec<Option<FileOutcome>> = vec![None; file_count];
    let mut shards = Vec::with_capacity(results.len());
    for (report, finished) in results {
        for (file, outcome) in finished {
            let slot = &mut outcomes[file.0 as usize];
            assert!(slot.is_none(), "file finalized by two shards");
            *slot = Some(outcome);
        }
        shards.push(report);
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every file has an outcome from its owner"))
        .collect();
    Ok(JobReport { outcomes, shards })
}

/// Creates (`O_EXCL`) the temporary of every file that several shards write, before
/// any shard starts: each shard then opens that one file and none can create another in
/// its place. Returns the files whose temporary could not be created, and why.
fn create_shared_temporaries(spec: &JobSpec) -> std::collections::HashMap<FileId, FileError> {
    let mut failed = std::collections::HashMap::new();
    for (i, file) in spec.files.iter().enumerate() {
        let Some(dst) = file.dst.as_ref().filter(|_| file.shared()) else {
            continue;
        };
        let created =
            spec.roots[dst.root].open(&dst.tmp, confine::Access::CreateNew { mode: 0o600 });
        if let Err(e) = created {
            failed.insert(FileId(i as u32), shard::confine_error(Stage::Write, &e));
        }
    }
    failed
}

/// A commit holds a directory and files open for each batch, a server a connection per
/// peer shard and files per stream; Linux's default soft limit of 1024 open files is
/// below what a busy shard can want. Raise the soft limit to the hard one, which needs
/// no privilege.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// glommio registers pinned memory for each ring and fails to start when
/// RLIMIT_MEMLOCK is below it; raise the soft limit to the hard one, which needs no
/// privilege, so that a low default soft limit does not stop the engine.
#[cfg(uring)]
pub fn raise_memlock_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}

pub(crate) fn file_error(stage: Stage, err: &io::Error) -> FileError {
    FileError {
        stage,
        errno: os::errno(err),
        message: err.to_string(),
    }
}

pub(crate) type Finished = Vec<(FileId, FileOutcome)>;

/// What a shard started by [`run_shards`] gets: its index, its CPU, and its place in the
/// channel mesh that connects all shards of the run.
pub struct ShardContext<M: Send + 'static> {
    pub shard: usize,
    pub cpu: usize,
    pub mesh: mesh::MeshPeer<M>,
}

/// Runs `body` on `shard_count` shards of `driver`, one pinned to each usable CPU in
/// order, and returns their results in shard order. The remote transfer code uses this
/// to run its endpoints and data tasks; `run_job` is the same for the local copy with
/// its shard logic built in.
pub fn run_shards<M, R, F, Fut>(
    driver: Driver,
    shard_count: usize,
    mesh_capacity: usize,
    body: F,
) -> Result<Vec<R>, EngineError>
where
    M: Send + 'static,
    R: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let cpus = usable_cpus();
    if shard_count == 0 || shard_count > cpus.len() || shard_count > SHARDS_MAX {
        return Err(EngineError::TooManyShards {
            requested: shard_count,
            available: cpus.len().min(SHARDS_MAX),
        });
    }
    #[cfg(uring)]
    if driver == Driver::Uring {
        raise_memlock_limit();
    }
    raise_open_files_limit();
    let body = Arc::new(body);
    let gate = Arc::new(StartGate::new(shard_count));
    let mut handles = Vec::with_capacity(shard_count);
    for ((shard, &cpu), mesh) in cpus
        .iter()
        .enumerate()
        .zip(mesh::full::<M>(shard_count, mesh_capacity))
    {
        let body = body.clone();
        let pass = GatePass {
            gate: gate.clone(),
            arrived: false,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("tpc-shard-{shard}"))
            .spawn(move || {
                let mut pass = pass;
                rt::run_here(driver, Some(cpu), async move {
                    if !pass.arrive() {
                        return None;
                    }
                    Some(body(ShardContext { shard, cpu, mesh }).await)
                })
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The closure, and with it this shard's pass, is gone: the gate counted it
                // as failed. Count the shards never spawned too, so the ones already
                // started stop waiting and return at once.
                for _ in handles.len() + 1..shard_count {
                    gate.arrive(false, false);
                }
                for h in handles {
                    let _ = h.join();
                }
                return Err(EngineError::Start(e.to_string()));
            }
        }
    }
    // Join every thread before reporting, so that none is left running on an error.
    let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let mut out = Vec::with_capacity(shard_count);
    let mut panicked = None;
    for (i, result) in joined.into_iter().enumerate() {
        match result {
            Err(_) => panicked = panicked.or(Some(i)),
            Ok(Err(e)) => {
                return Err(EngineError::Start(format!(
                    "{} shard {i}: {e}",
                    driver.name()
                )))
            }
            // This one started, and stopped because another did not: that one's
            // result says why.
            Ok(Ok(None)) => {}
            Ok(Ok(Some(r))) => out.push(r),
        }
    }
    match panicked {
        Some(i) => Err(EngineError::ShardPanicked(i)),
        None => {
            assert_eq!(
                out.len(),
                shard_count,
                "every shard ran or one says why not"
            );
            Ok(out)
        }
    }
}

/// Lets shards run their bodies only once every shard of the run has started, so a shard
/// that cannot start (its driver failed on that CPU, or it panicked first) stops the run
/// at once, instead of leaving its peers waiting for it on the mesh for ever.
struct StartGate {
    count: usize,
    /// (shards arrived, all of them started)
    state: std::sync::Mutex<(usize, bool)>,
    all_arrived: std::sync::Condvar,
}

impl StartGate {
    fn new(count: usize) -> StartGate {
        StartGate {
            count,
            state: std::sync::Mutex::new((0, true)),
            all_arrived: std::sync::Condvar::new(),
        }
    }

    /// Records one shard's start (or failure); with `wait`, waits for the rest and says
    /// whether every shard started.
    fn arrive(&self, started: bool, wait: bool) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        st.1 &= started;
        assert!(st.0 <= self.count, "each shard arrives once");
        if st.0 == self.count {
            self.all_arrived.notify_all();
        }
        while wait && st.0 < self.count {
            st = self.all_arrived.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.1
    }
}

/// One shard's place at the gate: it arrives as started from inside its executor, or, if
/// dropped first (the executor never ran it, or the thread unwound), as failed.
struct GatePass {
    gate: Arc<StartGate>,
    arrived: bool,
}

impl GatePass {
    /// Blocks this shard's thread until all have arrived. Nothing else runs on it yet.
    fn arrive(&mut self) -> bool {
        self.arrived = true;
        self.gate.arrive(true, true)
    }
}

impl Drop for GatePass {
    fn drop(&mut self) {
        if !self.arrived {
            self.gate.arrive(false, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_gate_opens_only_when_every_shard_started() {
        let gate = Arc::new(StartGate::new(3));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let mut pass = GatePass {
                    gate: gate.clone(),
                    arrived: false,
                };
                std::thread::spawn(move || pass.arrive())
            })
            .collect();
        // The third shard never runs: its pass is dropped, and that counts as failed.
        drop(GatePass {
            gate: gate.clone(),
            arrived: false,
        });
        for w in waiters {
            assert!(!w.join().unwrap(), "a started shard learns a peer did not");
        }
    }

    #[test]
    fn the_start_gate_opens_when_all_arrive() {
        let gate = Arc::new(StartGate::new(2));
        let other = {
            let mut pass = GatePass {
                gate: gate.clone(),
                arrived: false,
            };
            std::thread::spawn(move || pass.arrive())
        };
        let mut pass = GatePass {
            gate,
            arrived: false,
        };
        assert!(pass.arrive());
        assert!(other.join().unwrap());
    }

    #[test]
    fn run_shards_runs_every_shard_on_the_portable_driver() {
        let n = usable_cpus().len().min(2);
        let out = run_shards::<u32, _, _, _>(Driver::Portable, n, 4, move |ctx| async move {
            assert_eq!(rt::driver(), Driver::Portable);
            // Each shard sends its index round the ring and gets its predecessor's.
            let next = (ctx.shard + 1) % n;
            let prev = (ctx.shard + n - 1) % n;
            if n > 1 {
                ctx.mesh
                    .senders
                    .send_to(next, ctx.shard as u32)
                    .await
                    .unwrap();
                ctx.mesh.receivers.recv_from(prev).await.unwrap() as usize
            } else {
                ctx.shard
            }
        })
        .unwrap();
        let expect: Vec<usize> = (0..n).map(|i| (i + n - 1) % n).collect();
        assert_eq!(out, expect);
    }
}
