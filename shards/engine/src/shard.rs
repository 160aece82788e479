//! What one shard does: work its ranges, report to owners, finalize and commit owned files.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use async_lock::Semaphore;
use tpc_core::assembly::{Assembly, Completed};
use tpc_core::limits::{CHUNK_SIZE_BYTES, RANGES_IN_FLIGHT_PER_SHARD};
use tpc_core::plan::{owner, range_shard};
use tpc_core::{Batching, ChunkHash, ChunkPlan, FileId, RangeSpan, RelPath, ShardId, Tracker};

use crate::confine::{Access, ConfineError, Dir, Root};
use crate::mesh::{MeshPeer, Senders};
use crate::os;
use crate::rt::{self, File, ReadBuf};
use crate::{
    affinity_of_current_thread, file_error, Destination, Durability, FileError, FileOutcome,
    Finished, JobFile, JobSpec, Progress, ShardReport, Stage,
};

/// Messages between shards: a worker reports a range to the file's owner.
pub(crate) enum ShardMsg {
    RangeDone {
        file: FileId,
        range: u32,
        hashes: Vec<ChunkHash>,
    },
    RangeFailed {
        file: FileId,
        range: u32,
        error: FileError,
    },
}

struct Shard {
    id: usize,
    job: Arc<JobSpec>,
    /// Files whose temporary could not be created before the shards started.
    prepared: Arc<HashMap<FileId, FileError>>,
    progress: Arc<Progress>,
    assembly: RefCell<Assembly<FileError>>,
    completed: Sender<Completed<FileError>>,
    /// The directory of the last commit, kept for the next (`--fsync never` commits each
    /// file as it completes).
    held_dir: RefCell<Option<HeldDir>>,
}

pub(crate) async fn run(
    id: usize,
    job: Arc<JobSpec>,
    prepared: Arc<HashMap<FileId, FileError>>,
    mesh: MeshPeer<ShardMsg>,
    progress: Arc<Progress>,
) -> (ShardReport, Finished) {
    let shard_count = job.shard_count;
    let MeshPeer {
        senders,
        mut receivers,
    } = mesh;
    assert_eq!(senders.peer_id(), id, "mesh peer order follows shard order");

    let (completed_tx, completed_rx) = async_channel::unbounded();
    let shard = Rc::new(Shard {
        id,
        job: job.clone(),
        prepared,
        progress,
        assembly: RefCell::new(Assembly::new()),
        completed: completed_tx,
        held_dir: RefCell::new(None),
    });

    // Register owned files and list this shard's ranges. Planning is a pure function of
    // the job, so every shard computes the same assignment without talking.
    let mut owned = Vec::new();
    // This shard's ranges, grouped by file: one task works a file's ranges in order, so
    // a file never has two writers on one shard (ext4 serializes buffered writes to one
    // inode, and concurrent writers only spin on its lock).
    // The owner is kept with the work so that reports need not hash the path again.
    let mut work: Vec<(FileId, ShardId, Vec<RangeSpan>)> = Vec::new();
    for (index, file) in job.files.iter().enumerate() {
        let file_id = FileId(index as u32);
        let plan = match ChunkPlan::new(file.size_bytes) {
            Ok(plan) => plan,
            // The planner rejects such files; a shard treats it as an invariant.
            Err(e) => panic!("file over the size limit reached a shard: {e:?}"),
        };
        let own = owner(&file.rel, shard_count);
        if own.0 as usize == id {
            shard
                .assembly
                .borrow_mut()
                .expect(file_id, plan)
                .expect("each file registered once");
            owned.push(file_id);
        }
        let mine: Vec<RangeSpan> = plan
            .ranges()
            .filter(|span| range_shard(own, span.index, shard_count).0 as usize == id)
            .collect();
        if !mine.is_empty() {
            work.push((file_id, own, mine));
        }
    }

    // Reports from peers.
    let mut listeners = Vec::new();
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        listeners.push(rt::spawn_local(async move {
            while let Ok(msg) = receiver.recv().await {
                match msg {
                    ShardMsg::RangeDone {
                        file,
                        range,
                        hashes,
                    } => shard.range_done(file, range, Ok(hashes)),
                    ShardMsg::RangeFailed { file, range, error } => {
                        shard.range_done(file, range, Err(error))
                    }
                }
            }
        }));
    }

    // Finalizer: commits owned files as they complete.
    let finalizer = rt::spawn_local(finalize_loop(shard.clone(), completed_rx, owned));

    // File work, a bounded number of files at a time.
    let limit = Arc::new(Semaphore::new(RANGES_IN_FLIGHT_PER_SHARD));
    let senders = Rc::new(senders);
    let mut ranges_done = 0u64;
    let mut tasks = Vec::with_capacity(work.len().min(RANGES_IN_FLIGHT_PER_SHARD * 2));
    for (file_id, own, spans) in work {
        let permit = limit.acquire_arc().await;
        let shard = shard.clone();
        let senders = senders.clone();
        ranges_done += spans.len() as u64;
        tasks.push(rt::spawn_local(async move {
            shard.work_file(&senders, file_id, own, &spans).await;
            drop(permit);
        }));
        if tasks.len() >= RANGES_IN_FLIGHT_PER_SHARD * 2 {
            // Reap finished tasks so the handle list stays bounded.
            for t in tasks.drain(..RANGES_IN_FLIGHT_PER_SHARD) {
                t.await;
            }
        }
    }
    for t in tasks {
        t.await;
    }
    // No more reports from this shard: peers' listeners see the end of our stream.
    senders.close();
    let (finished, committed) = finalizer.await;
    for l in listeners {
        l.await;
    }
    let counters = &shard.progress.shards[id];
    let report = ShardReport {
        shard: id,
        affinity: affinity_of_current_thread(),
        bytes: counters.bytes.load(Ordering::Relaxed),
        ranges: ranges_done,
        files_committed: committed,
    };
    (report, finished)
}

impl Shard {
    fn durable(&self) -> bool {
        self.job.durability == Durability::Batch
    }

    fn file(&self, id: FileId) -> &JobFile {
        &self.job.files[id.0 as usize]
    }

    /// Works this shard's ranges of one file, in order, and reports each to the owner.
    /// Every range is reported exactly once, as done or failed.
    async fn work_file(
        &self,
        senders: &Senders<ShardMsg>,
        file_id: FileId,
        own: ShardId,
        spans: &[RangeSpan],
    ) {
        let file = self.file(file_id);
        let (src, dst, sparse) = match self.open_pair(file_id, file).await {
            Ok(pair) => pair,
            Err(error) => {
                for span in spans {
                    self.report(senders, own, file_id, span.index, Err(error.clone()))
                        .await;
                }
                return;
            }
        };
        let plan = ChunkPlan::new(file.size_bytes).expect("checked at registration");
        let mut failed: Option<FileError> = None;
        for span in spans {
            let mut result = match &failed {
                Some(error) => Err(error.clone()),
                None => {
                    self.work_span(&plan, &src, dst.as_ref(), span, sparse)
                        .await
                }
            };
            // What was read must be one version of the source: its size and mtime as
            // listed, after the reads too (an edit that keeps the size moves the mtime).
            if result.is_ok() {
                if let Err(e) = src.with_std(|f| source_unchanged(f, file)) {
                    result = Err(e);
                }
            }
            // A file that is one range is complete now, and its owner is this shard (range
            // 0 always is): set mode and times through this file before the report lets the
            // finalizer rename it, instead of opening it again there.
            if let (Ok(_), Some(out), Some(meta)) = (&result, &dst, &file.dst) {
                if plan.range_count() == 1 {
                    if let Err(e) = out.with_std(|f| apply_metadata(f, meta, self.durable())) {
                        result = Err(file_error(Stage::Write, &e));
                    }
                }
            }
            if let Err(error) = &result {
                failed.get_or_insert_with(|| error.clone());
            }
            self.report(senders, own, file_id, span.index, result).await;
        }
        let _ = src.close().await;
        if let Some(dst) = dst {
            let _ = dst.close().await;
        }
    }

    /// Opens the source (checked against what was listed) and, for a copy, the
    /// temporary file, both beneath their held roots; says whether the source has holes
    /// (`os::is_sparse`), which the copy then keeps. A file of one range is this
    /// shard's alone: it creates the temporary (`O_EXCL`). A file of several ranges had
    /// its temporary created before the shards started (`run_job`): every shard opens
    /// that one, and never creates another in its place.
    async fn open_pair(
        &self,
        file_id: FileId,
        file: &JobFile,
    ) -> Result<(File, Option<File>, bool), FileError> {
        let root = &self.job.roots[file.src.root];
        let src = root
            .open(&file.src.rel, Access::Read)
            .map_err(|e| confine_error(Stage::Read, &e))?;
        source_unchanged(&src, file)?;
        let sparse = os::is_sparse(&src);
        let src = File::from_std(src);
        let Some(meta) = &file.dst else {
            return Ok((src, None, sparse));
        };
        if let Some(error) = self.prepared.get(&file_id) {
            return Err(error.clone());
        }
        let root = &self.job.roots[meta.root];
        let access = if file.shared() {
            Access::Write
        } else {
            Access::CreateNew { mode: 0o600 }
        };
        let dst = root
            .open(&meta.tmp, access)
            .map_err(|e| confine_error(Stage::Write, &e))?;
        let dst = File::from_std(dst);
        if sparse {
            // Holes stay holes: the file gets its size, and only the chunks that hold
            // data are written (`work_span`). Every shard sets the same final size, so
            // none can cut another's data short.
            dst.with_std(|f| f.set_len(file.size_bytes))
                .map_err(|e| file_error(Stage::Write, &e))?;
        } else if file.size_bytes > CHUNK_SIZE_BYTES {
            // Allocating a large file's blocks in one call spares the filesystem an
            // allocation per write, and a full disk is found before any data moves.
            // Every shard asks; after the first, the call finds nothing to do. Files of
            // one chunk are written in one call anyway: there it only costs.
            dst.pre_allocate(file.size_bytes)
                .await
                .map_err(|e| file_error(Stage::Write, &e))?;
        }
        Ok((src, Some(dst), sparse))
    }

    /// Reads (and, for a copy, writes) one range; returns its chunk hashes. The write of
    /// one chunk overlaps the read of the next.
    async fn work_span(
        &self,
        plan: &ChunkPlan,
        src: &File,
        dst: Option<&File>,
        span: &RangeSpan,
        sparse: bool,
    ) -> Result<Vec<ChunkHash>, FileError> {
        let mut hashes = Vec::with_capacity(span.chunk_count as usize);
        let counters = &self.progress.shards[self.id];
        let mut unwritten: Option<(u64, Vec<u8>)> = None;
        for chunk in span.first_chunk..span.first_chunk + span.chunk_count {
            let (offset, len) = plan.chunk(chunk);
            if len == 0 {
                // An empty file's one chunk: its hash, and nothing to read or write.
                hashes.push(ChunkHash::of(&[]));
                continue;
            }
            if sparse && dst.is_some() && src.with_std(|f| os::is_hole(f, offset, len)) {
                // A hole of the source: nothing to read, nothing to write (the copy has
                // its size, and reads zeros there), and its hash is the zeros'. Hashing
                // alone (`check`, `--verify`) reads every byte: it must not take the
                // filesystem's word for a hole, which is what it verifies.
                hashes.push(zeros_hash(len));
                counters.bytes.fetch_add(len, Ordering::Relaxed);
                continue;
            }
            if let Some(pacer) = &self.job.pace {
                pacer.take(len).await;
            }
            let read = read_exact_at(src, offset, len as usize);
            let data = match (unwritten.take(), dst) {
                (Some((at, bytes)), Some(out)) => {
                    let (written, read) =
                        futures_lite::future::zip(write_all_at(out, bytes, at), read).await;
                    written?;
                    read?
                }
                _ => read.await?,
            };
            hashes.push(ChunkHash::of(data.bytes()));
            counters.bytes.fetch_add(len, Ordering::Relaxed);
            match dst {
                // In a sparse copy, blocks of zeros are left unwritten: holes, as `cp`
                // makes them. The blocks of data are written one run at a time.
                Some(out) if sparse => {
                    for (from, to) in data_runs(data.bytes()) {
                        let run = data.bytes()[from..to].to_vec();
                        write_all_at(out, run, offset + from as u64).await?;
                    }
                }
                Some(_) => unwritten = Some((offset, data.into_vec())),
                None => {}
            }
        }
        if let (Some((at, bytes)), Some(out)) = (unwritten, dst) {
            write_all_at(out, bytes, at).await?;
        }
        Ok(hashes)
    }

    async fn report(
        &self,
        senders: &Senders<ShardMsg>,
        own: ShardId,
        file: FileId,
        range: u32,
        result: Result<Vec<ChunkHash>, FileError>,
    ) {
        if own == ShardId(self.id as u16) {
            // Fast path: the owner is this shard.
            self.range_done(file, range, result);
            return;
        }
        let msg = match result {
            Ok(hashes) => ShardMsg::RangeDone {
                file,
                range,
                hashes,
            },
            Err(error) => ShardMsg::RangeFailed { file, range, error },
        };
        if senders.send_to(own.0 as usize, msg).await.is_err() {
            panic!(
                "owner shard {} closed its mesh while a range was in flight",
                own.0
            );
        }
    }

    fn range_done(&self, file: FileId, range: u32, result: Result<Vec<ChunkHash>, FileError>) {
        let completed = match result {
            Ok(hashes) => self.assembly.borrow_mut().range_done(file, range, &hashes),
            Err(error) => self.assembly.borrow_mut().range_failed(file, range, error),
        };
        // Peers are the same process running the same plan: a bad report is a bug.
        let completed = completed.unwrap_or_else(|e| panic!("inconsistent range report: {e}"));
        if let Some(done) = completed {
            self.completed
                .try_send(done)
                .unwrap_or_else(|_| panic!("finalizer stopped early"));
        }
    }
}

/// Commits owned files as they complete; returns their outcomes and how many were
/// committed, in the batches [`Tracker`] forms (amortized when durable: each commit
/// syncs every filesystem and directory it touches).
async fn finalize_loop(
    shard: Rc<Shard>,
    completed: Receiver<Completed<FileError>>,
    owned: Vec<FileId>,
) -> (Finished, u64) {
    let batching = match shard.durable() {
        true => Batching::Amortized,
        false => Batching::Eager,
    };
    // The tracker counts this shard's files by their place in `owned` (ascending), so
    // each shard's memory follows what it owns, not the whole job.
    let mut tracker = Tracker::new(owned.len(), 0..owned.len() as u32, batching);
    let place = |file: FileId| owned.binary_search(&file).expect("an owned file") as u32;
    let mut finished: Finished = Vec::with_capacity(owned.len());
    // Digests of the files ready to commit.
    let mut ready: HashMap<FileId, tpc_core::FileDigest> = HashMap::new();
    let mut committed = 0u64;
    // How many of `finished` the progress listener was told of.
    let mut told = 0;
    while tracker.unresolved() > 0 {
        if let Some(batch) = tracker.take_batch() {
            let batch = batch.into_iter().map(|i| {
                let file = owned[i as usize];
                (
                    file,
                    ready.remove(&file).expect("a ready file has its digest"),
                )
            });
            for (file, outcome) in commit(&shard, batch.collect()).await {
                tracker
                    .settle(place(file))
                    .expect("each file of a batch settles once");
                // Files of a `check` have nothing to commit and are not counted.
                let copied = shard.file(file).dst.is_some();
                committed += u64::from(copied && matches!(outcome, FileOutcome::Done(_)));
                finished.push((file, outcome));
            }
            assert_eq!(
                tracker.in_commit(),
                0,
                "every file of a batch has an outcome"
            );
        } else {
            // Nothing ready: wait for a completion, then take all that have arrived.
            // (The shard holds the channel's sender, so it never closes under us.)
            let done = completed.recv().await.expect("the shard holds the sender");
            let mut done = Some(done);
            while let Some(d) = done.take().or_else(|| completed.try_recv().ok()) {
                let i = place(d.file());
                shard.completed(d, i, &mut tracker, &mut ready, &mut finished);
            }
        }
        shard.progress.shards[shard.id]
            .files
            .store((finished.len() + ready.len()) as u64, Ordering::Relaxed);
        if let Some(listener) = &shard.progress.on_finished {
            for (file, outcome) in &finished[told..] {
                listener(file.0, outcome);
            }
            told = finished.len();
        }
    }
    (finished, committed)
}

impl Shard {
    /// An owned file's every range was reported: it failed, or is ready to commit.
    /// `place`: the file's place among the shard's owned files (the tracker's index).
    fn completed(
        &self,
        done: Completed<FileError>,
        place: u32,
        tracker: &mut Tracker,
        ready: &mut HashMap<FileId, tpc_core::FileDigest>,
        finished: &mut Finished,
    ) {
        let (file, outcome) = match done {
            Completed::Failed { file, failure } => (file, Err(failure)),
            Completed::Ok { file, digest } => {
                let f = self.file(file);
                // Several shards wrote a shared file; they have all closed it by now.
                let applied = match &f.dst {
                    Some(dst) if f.shared() => {
                        apply_metadata_beneath(&self.job, dst, self.durable())
                    }
                    _ => Ok(()),
                };
                (file, applied.map(|()| digest))
            }
        };
        let ok = match outcome {
            Ok(digest) => {
                ready.insert(file, digest);
                true
            }
            Err(error) => {
                if let Some(dst) = &self.file(file).dst {
                    let _ = self.job.roots[dst.root].remove_file(&dst.tmp);
                }
                finished.push((file, FileOutcome::Failed(error)));
                false
            }
        };
        tracker
            .run_ended(place, ok, self.file(file).size_bytes)
            .expect("an owned file completes once");
    }
}

/// Makes a batch of written files durable, renames them into place, syncs their
/// directories. Returns each file's outcome.
///
/// Durability covers every filesystem the batch touched: one syncfs per device among
/// its directories (a filesystem mounted below the root is synced too), before any file
/// of the batch is renamed. Then each directory is held open in turn, beneath the
/// destination root, for its renames and its own sync: the renames happen in
/// directories resolved without symlinks, and a batch of thousands of directories holds
/// one open at a time. A durable commit blocks, so it runs off the executor thread; with
/// `--fsync never` each file is one rename on this thread.
async fn commit(
    shard: &Shard,
    batch: Vec<(FileId, tpc_core::FileDigest)>,
) -> Vec<(FileId, FileOutcome)> {
    let mut outcomes = Vec::new();
    let durable = shard.job.durability == Durability::Batch;
    let mut groups: BTreeMap<(usize, RelPath), Vec<Renaming>> = BTreeMap::new();
    for (file, digest) in batch {
        let Some(dst) = shard.file(file).dst.as_ref() else {
            // Checked, not copied: nothing to commit.
            outcomes.push((file, FileOutcome::Done(digest)));
            continue;
        };
        let parent = dst.path.parent().unwrap_or_else(RelPath::root);
        groups
            .entry((dst.root, parent))
            .or_default()
            .push(Renaming {
                file,
                digest,
                tmp: dst.tmp.clone(),
                path: dst.path.clone(),
            });
    }
    if groups.is_empty() {
        return outcomes;
    }
    let roots = shard.job.roots.clone();
    let (renamed, warning) = if durable {
        rt::spawn_blocking(move || commit_groups(&roots, groups, true, &mut None)).await
    } else {
        // Renamed as soon as written, one file at a time: each is one renameat in a
        // directory held from the commit before (a directory's files complete together),
        // on this thread, as cheap as the rename by path it replaces.
        commit_groups(&roots, groups, false, &mut shard.held_dir.borrow_mut())
    };
    if let Some(e) = warning {
        // The files are in place and complete; only their durability is in doubt.
        eprintln!("tpc-xfer: warning: syncing directories failed: {e}");
    }
    outcomes.extend(renamed);
    outcomes
}

/// A directory held from one commit to the next, with its (root, path).
type HeldDir = ((usize, RelPath), Dir);

/// One file of a commit batch: its temporary and final names.
struct Renaming {
    file: FileId,
    digest: tpc_core::FileDigest,
    tmp: RelPath,
    path: RelPath,
}

/// The blocking part of [`commit`], by directory (`groups`: root index and directory).
/// Returns each file's outcome, and a directory sync error to warn about.
fn commit_groups(
    roots: &[Arc<Root>],
    groups: BTreeMap<(usize, RelPath), Vec<Renaming>>,
    durable: bool,
    held: &mut Option<HeldDir>,
) -> (Vec<(FileId, FileOutcome)>, Option<ConfineError>) {
    let mut outcomes = Vec::new();
    let fail = |outcomes: &mut Vec<_>, root: &Root, r: &Renaming, error: FileError| {
        let _ = root.remove_file(&r.tmp);
        outcomes.push((r.file, FileOutcome::Failed(error)));
    };
    if durable {
        for root in roots.iter().enumerate() {
            let places = groups
                .iter()
                .filter(|((i, _), _)| *i == root.0)
                .map(|((_, dir), files)| (dir, files.first().map(|r| &r.tmp)));
            if let Err(e) = root.1.sync_filesystems(places) {
                // Nothing is renamed yet: every file of the batch fails, whichever root.
                let error = confine_error(Stage::Commit, &e);
                for ((i, _), files) in &groups {
                    for r in files {
                        fail(&mut outcomes, &roots[*i], r, error.clone());
                    }
                }
                return (outcomes, None);
            }
        }
    }
    let mut warning = None;
    for (key, files) in groups {
        let root = &roots[key.0];
        let reused = held.take().filter(|(k, _)| *k == key);
        let opened = reused.map_or_else(|| root.dir(&key.1), |(_, dir)| Ok(dir));
        let dir = match opened {
            Ok(dir) => Some(dir),
            // A directory this user may write but not read (a drop-box, mode 1733): its
            // renames go through the root, resolved the same way, and are made durable
            // by a syncfs through a file renamed there.
            Err(e) if e.errno() == Some(libc::EACCES) => None,
            Err(e) => {
                let error = confine_error(Stage::Commit, &e);
                for r in &files {
                    fail(&mut outcomes, root, r, error.clone());
                }
                continue;
            }
        };
        let mut renamed: Option<&RelPath> = None;
        for r in &files {
            let moved = match &dir {
                Some(dir) => dir.rename(&r.tmp, &r.path),
                None => root.rename(&r.tmp, &r.path),
            };
            match moved {
                Ok(()) => {
                    renamed.get_or_insert(&r.path);
                    outcomes.push((r.file, FileOutcome::Done(r.digest)));
                }
                Err(e) => fail(&mut outcomes, root, r, confine_error(Stage::Commit, &e)),
            }
        }
        if let (true, Some(first)) = (durable, renamed) {
            // The renames themselves become durable when their directory is synced, or,
            // where it cannot be read, its filesystem through a file renamed there.
            let synced = match &dir {
                Some(dir) => dir.sync(),
                None => root.sync_filesystems([(&key.1, Some(first))]),
            };
            if let Err(e) = synced {
                warning.get_or_insert(e);
            }
        }
        *held = dir.map(|dir| (key, dir));
    }
    (outcomes, warning)
}

/// Fails a source that is no longer what was listed (`Listed::check`).
fn source_unchanged(src: &std::fs::File, file: &JobFile) -> Result<(), FileError> {
    let Some(listed) = file.listed else {
        return Ok(());
    };
    listed.check(src, file.size_bytes).map_err(|e| FileError {
        stage: Stage::Read,
        errno: match e {
            crate::SourceChanged::Stat(errno) => Some(errno),
            _ => None,
        },
        message: e.to_string(),
    })
}

pub(crate) fn confine_error(stage: Stage, e: &ConfineError) -> FileError {
    FileError {
        stage,
        errno: e.errno(),
        message: e.to_string(),
    }
}

/// Block size of the holes a sparse copy leaves: the common filesystem block.
const HOLE_BLOCK_BYTES: usize = 4096;

/// The runs of `data` (start, end) that hold a byte other than zero, by blocks of
/// `HOLE_BLOCK_BYTES`; adjacent blocks of data make one run.
fn data_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in data.chunks(HOLE_BLOCK_BYTES).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let (from, to) = (i * HOLE_BLOCK_BYTES, i * HOLE_BLOCK_BYTES + block.len());
        match runs.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => runs.push((from, to)),
        }
    }
    runs
}

/// The hash of `len` zero bytes: a whole chunk's is computed once.
fn zeros_hash(len: u64) -> ChunkHash {
    static WHOLE: std::sync::OnceLock<ChunkHash> = std::sync::OnceLock::new();
    let of = |len: u64| ChunkHash::of(&vec![0u8; len as usize]);
    if len == CHUNK_SIZE_BYTES {
        *WHOLE.get_or_init(|| of(len))
    } else {
        of(len)
    }
}

/// Reads exactly `len` bytes at `offset`: the bytes of one chunk.
async fn read_exact_at(file: &File, offset: u64, len: usize) -> Result<Chunk, FileError> {
    let first = file
        .read_at(offset, len)
        .await
        .map_err(|e| file_error(Stage::Read, &e))?;
    if first.len() == len {
        // The common case: one read, and the buffer the driver filled is used as it is.
        return Ok(Chunk::Read(first));
    }
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&first);
    while buf.len() < len {
        let got = file
            .read_at(offset + buf.len() as u64, len - buf.len())
            .await
            .map_err(|e| file_error(Stage::Read, &e))?;
        if got.is_empty() {
            return Err(FileError {
                stage: Stage::Read,
                errno: None,
                message: "file shrank while it was being copied".into(),
            });
        }
        buf.extend_from_slice(&got);
    }
    Ok(Chunk::Owned(buf))
}

/// A chunk's bytes: the driver's read buffer, or a buffer assembled from short reads.
enum Chunk {
    Read(ReadBuf),
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Read(r) => r,
            Chunk::Owned(v) => v,
        }
    }

    /// Writes take an owned `Vec`, so a glommio read buffer is copied once.
    fn into_vec(self) -> Vec<u8> {
        match self {
            Chunk::Read(r) => r.into_vec(),
            Chunk::Owned(v) => v,
        }
    }
}

async fn write_all_at(file: &File, data: Vec<u8>, offset: u64) -> Result<(), FileError> {
    let len = data.len();
    let written = file
        .write_at(data, offset)
        .await
        .map_err(|e| file_error(Stage::Write, &e))?;
    if written != len {
        let (errno, message) = file.with_std(|f| crate::os::short_write(f, offset, written, len));
        return Err(FileError {
            stage: Stage::Write,
            errno: Some(errno),
            message,
        });
    }
    Ok(())
}

/// Sets permission bits and times through an open file. Off Linux, for a durable copy,
/// also syncs the file through it: there is no syncfs to do it for the whole batch, and
/// once its final mode is set the file may not be openable again.
fn apply_metadata(file: &std::fs::File, meta: &Destination, durable: bool) -> io::Result<()> {
    crate::os::set_mode_and_times(file, meta.mode, meta.atime, meta.mtime)?;
    if durable && !cfg!(target_os = "linux") {
        crate::confine::sync_file(file)?;
    }
    Ok(())
}

/// Applies metadata to a temporary that several shards wrote (all closed by now),
/// opened again beneath its root.
fn apply_metadata_beneath(
    job: &JobSpec,
    meta: &Destination,
    durable: bool,
) -> Result<(), FileError> {
    let file = job.roots[meta.root]
        .open(&meta.tmp, Access::Write)
        .map_err(|e| confine_error(Stage::Write, &e))?;
    apply_metadata(&file, meta, durable).map_err(|e| file_error(Stage::Write, &e))
}
