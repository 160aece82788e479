//! What one shard does: work its ranges, report to owners, finalize and commit owned files.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use async_lock::Semaphore;
use tpc_core::assembly::{Assembly, Completed};
use tpc_core::limits::{CHUNK_SIZE_BYTES, RANGES_IN_FLIGHT_PER_SHARD};
use tpc_core::plan::{owner, range_shard};
use tpc_core::{ChunkHash, ChunkPlan, CommitBatcher, FileId, RangeSpan, ShardId};

use crate::mesh::{MeshPeer, Senders};
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
    progress: Arc<Progress>,
    assembly: RefCell<Assembly<FileError>>,
    completed: Sender<Completed<FileError>>,
}

pub(crate) async fn run(
    id: usize,
    job: Arc<JobSpec>,
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
        progress,
        assembly: RefCell::new(Assembly::new()),
        completed: completed_tx,
    });

    // Register owned files and list this shard's ranges. Planning is a pure function of
    // the job, so every shard computes the same assignment without talking.
    let mut owned = 0usize;
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
            owned += 1;
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
        let (src, dst) = match self.open_pair(file).await {
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
                None => self.work_span(&plan, &src, dst.as_ref(), span).await,
            };
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

    async fn open_pair(&self, file: &JobFile) -> Result<(File, Option<File>), FileError> {
        let src = File::open(&file.src)
            .await
            .map_err(|e| file_error(Stage::Read, &e))?;
        let Some(meta) = &file.dst else {
            return Ok((src, None));
        };
        // Every shard opens the temporary file creating it but never truncating, so the shards
        // writing ranges of one file need no ordering among themselves.
        let dst = File::open_write(&meta.tmp, 0o600)
            .await
            .map_err(|e| file_error(Stage::Write, &e))?;
        if file.size_bytes > CHUNK_SIZE_BYTES {
            // Allocating a large file's blocks in one call spares the filesystem an
            // allocation per write, and a full disk is found before any data moves.
            // Every shard asks; after the first, the call finds nothing to do. Files of
            // one chunk are written in one call anyway: there it only costs.
            dst.pre_allocate(file.size_bytes)
                .await
                .map_err(|e| file_error(Stage::Write, &e))?;
        }
        Ok((src, Some(dst)))
    }

    /// Reads (and, for a copy, writes) one range; returns its chunk hashes. The write of
    /// one chunk overlaps the read of the next.
    async fn work_span(
        &self,
        plan: &ChunkPlan,
        src: &File,
        dst: Option<&File>,
        span: &RangeSpan,
    ) -> Result<Vec<ChunkHash>, FileError> {
        let mut hashes = Vec::with_capacity(span.chunk_count as usize);
        let counters = &self.progress.shards[self.id];
        let mut unwritten: Option<(u64, Vec<u8>)> = None;
        for chunk in span.first_chunk..span.first_chunk + span.chunk_count {
            let (offset, len) = plan.chunk(chunk);
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
            if dst.is_some() {
                unwritten = Some((offset, data.into_vec()));
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

/// Commits owned files as they complete; returns their outcomes and how many were committed.
async fn finalize_loop(
    shard: Rc<Shard>,
    completed: Receiver<Completed<FileError>>,
    owned: usize,
) -> (Finished, u64) {
    let mut finished: Finished = Vec::with_capacity(owned);
    let mut batch: Vec<(FileId, tpc_core::FileDigest)> = Vec::new();
    let mut batcher = CommitBatcher::default();
    let mut committed = 0u64;
    while finished.len() + batch.len() < owned {
        let Ok(done) = completed.recv().await else {
            break;
        };
        match done {
            Completed::Failed {
                file,
                failure: error,
            } => {
                if let Some(dst) = &shard.file(file).dst {
                    let _ = std::fs::remove_file(&dst.tmp);
                }
                finished.push((file, FileOutcome::Failed(error)));
            }
            Completed::Ok { file, digest } => {
                let f = shard.file(file);
                let Some(dst) = &f.dst else {
                    finished.push((file, FileOutcome::Done(digest)));
                    continue;
                };
                let plan = ChunkPlan::new(f.size_bytes).expect("checked");
                if plan.range_count() > 1 {
                    // Several shards wrote it; they have all closed their files by now.
                    if let Err(e) = apply_metadata_by_path(&dst.tmp, dst, shard.durable()) {
                        let _ = std::fs::remove_file(&dst.tmp);
                        finished.push((file, FileOutcome::Failed(file_error(Stage::Write, &e))));
                        continue;
                    }
                }
                batch.push((file, digest));
                let full = batcher.push(f.size_bytes);
                if full || shard.job.durability == Durability::Never {
                    committed += commit(&shard, &mut batch, &mut finished).await;
                    batcher.reset();
                }
            }
        }
        shard.progress.shards[shard.id]
            .files
            .store((finished.len() + batch.len()) as u64, Ordering::Relaxed);
    }
    committed += commit(&shard, &mut batch, &mut finished).await;
    shard.progress.shards[shard.id]
        .files
        .store(finished.len() as u64, Ordering::Relaxed);
    (finished, committed)
}

/// Makes a batch of written files durable, renames them into place, syncs their
/// directories. Returns how many were committed.
async fn commit(
    shard: &Shard,
    batch: &mut Vec<(FileId, tpc_core::FileDigest)>,
    finished: &mut Finished,
) -> u64 {
    if batch.is_empty() {
        return 0;
    }
    let durable = shard.job.durability == Durability::Batch;
    let dst_of = |file: FileId| shard.file(file).dst.as_ref().expect("copy job");
    if durable {
        // One syncfs makes every file of the batch durable with one journal commit,
        // instead of one fsync per file. It blocks, so it runs off the executor thread.
        let tmps: Vec<_> = batch.iter().map(|(f, _)| dst_of(*f).tmp.clone()).collect();
        if let Err(e) = run_blocking(move || sync_batch(&tmps)).await {
            for (file, _) in batch.drain(..) {
                let _ = std::fs::remove_file(&dst_of(file).tmp);
                finished.push((file, FileOutcome::Failed(file_error(Stage::Commit, &e))));
            }
            return 0;
        }
    }
    let mut dirs = BTreeSet::new();
    let mut committed = 0;
    for (file, digest) in batch.drain(..) {
        let dst = dst_of(file);
        match std::fs::rename(&dst.tmp, &dst.path) {
            Ok(()) => {
                if durable {
                    // `Path::parent` of a bare name is "", which names no directory.
                    let parent = match dst.path.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                    dirs.insert(parent.to_path_buf());
                }
                committed += 1;
                finished.push((file, FileOutcome::Done(digest)));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&dst.tmp);
                finished.push((file, FileOutcome::Failed(file_error(Stage::Commit, &e))));
            }
        }
    }
    if durable && !dirs.is_empty() {
        // The renames themselves become durable when their directories are synced.
        let result = run_blocking(move || {
            for dir in dirs {
                crate::os::sync_dir(&dir)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            // The files are in place and complete; only their durability is in doubt.
            eprintln!("tpc-xfer: warning: syncing directories failed: {e}");
        }
    }
    committed
}

async fn run_blocking<F>(f: F) -> io::Result<()>
where
    F: FnOnce() -> io::Result<()> + Send + 'static,
{
    rt::spawn_blocking(f).await
}

/// Makes the files at `paths` durable: one syncfs of their filesystem on Linux (they
/// share it: one destination). Elsewhere each was synced through its own handle when its
/// metadata was applied (`apply_metadata`); what is left is their directory, as a
/// barrier before the renames.
fn sync_batch(paths: &[std::path::PathBuf]) -> io::Result<()> {
    let Some(first) = paths.first() else {
        return Ok(());
    };
    if cfg!(target_os = "linux") {
        return crate::confine::sync_filesystem_of(first);
    }
    let dir = first.parent().filter(|p| !p.as_os_str().is_empty());
    crate::confine::sync_filesystem_of(dir.unwrap_or(Path::new(".")))
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
        // Writes to a regular file are only short when the device or quota ran
        // out mid-write; the next write would fail with ENOSPC, so report that now.
        return Err(FileError {
            stage: Stage::Write,
            errno: Some(libc::ENOSPC),
            message: format!(
                "{} (short write at offset {offset}: {written} of {len} bytes)",
                crate::os::errno_text(libc::ENOSPC)
            ),
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

fn apply_metadata_by_path(tmp: &Path, meta: &Destination, durable: bool) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    // O_NOFOLLOW so a symlink swapped in is never followed.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    apply_metadata(&options.open(tmp)?, meta, durable)
}
