//! The receiving side of a session, on the filesystem: checks each manifest entry's path,
//! decides what it needs (hashing the chunks of an old version of a file already in
//! place, so the sender can skip those it would send unchanged), creates temporary
//! files, and commits files, symlinks and directory metadata — all beneath a confined
//! root.
//!
//! The server runs this for a push (root = `--root`), the client for a pull (root = the
//! local destination). Everything here is blocking filesystem work; the shards call it
//! off their threads (`rt::spawn_blocking`) so their QUIC endpoints keep running meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tpc_core::filter::Filter;
use tpc_core::limits::CHUNK_SIZE_BYTES;
use tpc_core::relpath::RelPath;
use tpc_core::session::arrivals::Arrivals;
use tpc_core::wire::{
    rules_filter, DeleteRequest, Entry, ErrorCode, NeedItem, WireKind, NEED_HAVE_HASHES_MAX,
};
use tpc_core::{ChunkHash, ChunkPlan};
use tpc_engine::confine::{set_file_meta, sync_file, Access, ConfineError, Dir, FileKind, Root};
use tpc_engine::os;
use tpc_engine::temp::{process_token, Sweeper, SWEEP_NAMES_MAX};

use super::temp_name;
use crate::delete::Deletion;

/// A per-file or per-session failure, as sent to the peer.
pub use tpc_core::session::Failure;

/// What a confinement error means on the wire.
pub fn confine_failure(e: &ConfineError) -> Failure {
    let code = match e {
        ConfineError::Path(_) | ConfineError::Escapes { .. } | ConfineError::Symlink { .. } => {
            ErrorCode::PathRefused
        }
        _ => e.errno().map_or(ErrorCode::Io, ErrorCode::for_errno),
    };
    Failure::new(code, e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileState {
    /// Nothing to do (a directory or symlink, or a file that is already up to date).
    Idle,
    /// Its data is awaited: a temporary file exists (or, for a lazily created file, its
    /// data stream will create one).
    Receiving,
    Committed,
    Failed,
}

struct Planned {
    entry: Entry,
    /// Where the entry lands, relative to the root.
    full: RelPath,
    state: FileState,
    /// A directory that already had this entry's mode and mtime when planned.
    meta_ok: bool,
}

/// Files below this size may be created by their data stream instead of by the plan (see
/// [`Receiver::create_small_files_on_write`]). Each is one chunk, so one run, and needs no
/// reservation.
pub const LAZY_FILE_BYTES_MAX: u64 = 1024 * 1024;

const _: () = assert!(LAZY_FILE_BYTES_MAX <= CHUNK_SIZE_BYTES);
const _: () = assert!(LAZY_FILE_BYTES_MAX <= RESERVE_FILE_BYTES_MIN);

/// A file whose temporary file its data stream creates: what the stream must match, and
/// how far it got. The plan makes these; a data stream on any shard moves one from
/// `PLANNED` through `CREATING` to `WRITTEN` (or back to `PLANNED` if its run fails); the
/// session's end, or the file's failure, moves it to `DEAD`.
#[derive(Debug)]
pub struct LazyFile {
    pub full: RelPath,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, u32),
    state: AtomicU8,
}

const LAZY_PLANNED: u8 = 0;
/// A data stream has claimed the file: it creates the temporary file and writes it.
const LAZY_CREATING: u8 = 1;
/// Its data verified and written, mode and times applied: ready to commit.
const LAZY_WRITTEN: u8 = 2;
/// Failed or abandoned: its temporary file is removed and must not come back.
const LAZY_DEAD: u8 = 3;

impl LazyFile {
    /// Claims the file for a data stream, which then creates its temporary file; false if
    /// another stream had it already, or it is dead.
    pub fn begin(&self) -> bool {
        self.advance(LAZY_PLANNED, LAZY_CREATING)
    }

    /// The data stream finished the file; false if it died meanwhile (the stream then
    /// removes what it wrote).
    pub fn written(&self) -> bool {
        self.advance(LAZY_CREATING, LAZY_WRITTEN)
    }

    /// The data stream failed and removed its temporary file: another run may try.
    pub fn release(&self) {
        self.advance(LAZY_CREATING, LAZY_PLANNED);
    }

    pub fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) == LAZY_DEAD
    }

    fn is_written(&self) -> bool {
        self.state.load(Ordering::Acquire) == LAZY_WRITTEN
    }

    /// Marks the file dead before its temporary file is removed, so that a stream that
    /// creates it afterwards sees this and removes it again.
    fn kill(&self) {
        self.state.store(LAZY_DEAD, Ordering::Release);
    }

    fn advance(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// What a push session shares with its data streams on every shard: its lazily created
/// files, by file index, and the chunks of the others that have arrived.
#[derive(Debug)]
pub struct SessionShare {
    pub files: HashMap<u32, LazyFile>,
    /// The runs of the files the plan created (not the lazy ones): claimed, arrived.
    pub arrivals: Mutex<Arrivals>,
    /// Off Linux a durable session syncs each file through its own handle (no syncfs).
    pub durable: bool,
}

/// One session's view of the destination.
pub struct Receiver {
    root: Arc<Root>,
    base: RelPath,
    session: u64,
    /// Removes other runs' stale temporaries from the directories written.
    sweeper: Sweeper,
    /// One existing directory of each filesystem (device) the plan met.
    devices: BTreeMap<u64, RelPath>,
    /// See `keep_root_metadata`.
    keep_root_meta: bool,
    durable: bool,
    planned: Vec<Planned>,
    /// Regular files committed (symlinks and directories are not counted, as in a local
    /// copy's summary).
    pub files_written: u64,
    pub bytes_written: u64,
    /// Disk space reserved by the plan (`reserve`), against `RESERVED_BYTES_PER_SESSION_MAX`.
    reserved: u64,
    /// Whether this session changed anything beneath the root (a directory's entries, so
    /// its mtime, or any file's data).
    changed: bool,
    /// Whether to hash the old versions of changed files for the sender (`NeedItem::have`).
    offer_old_hashes: bool,
    /// Whether small files are left for their data streams to create.
    lazy_create: bool,
    lazy: Arc<SessionShare>,
    /// See `commit_only_arrived`.
    bound: bool,
}

/// The path under the root where an entry with `path` (relative to `base`) lands.
pub fn full_path(base: &RelPath, path: &[u8]) -> Result<RelPath, Failure> {
    RelPath::parse(&joined(base, path))
        .map_err(|e| Failure::new(ErrorCode::PathRefused, e.to_string()))
}

/// Manifest path `path` beneath `base`, as bytes: what [`full_path`] checks, and what a
/// failure names when the check refuses it.
pub fn joined(base: &RelPath, path: &[u8]) -> Vec<u8> {
    if base.is_root() {
        path.to_vec()
    } else if path.is_empty() {
        base.as_bytes().to_vec()
    } else {
        [base.as_bytes(), b"/", path].concat()
    }
}

/// The temporary name of file `file` of `session` beside `full`.
pub fn temp_path(full: &RelPath, session: u64, file: u32) -> Result<RelPath, Failure> {
    let name = temp_name(session, file);
    let parent = full.parent().unwrap_or_else(RelPath::root);
    full_path(&parent, &name)
}

impl Receiver {
    /// `offer_old_hashes`: hash the old version of each changed file so the sender can
    /// skip the chunks it holds. Only where the sender may learn those hashes: a server
    /// tells a pushing client hashes of files that client could pull anyway, but a
    /// pulling client would tell the server hashes of its own files, at sizes the server
    /// picks (a short prefix of a secret is open to guessing), so a pull does not.
    pub fn new(
        root: Arc<Root>,
        root_path: &Path,
        base: RelPath,
        session: u64,
        durable: bool,
        offer_old_hashes: bool,
    ) -> Receiver {
        let sweeper = Sweeper::new(process_token(), Arc::clone(&root), root_path);
        Receiver {
            offer_old_hashes,
            root,
            base,
            session,
            sweeper,
            devices: BTreeMap::new(),
            keep_root_meta: false,
            durable,
            planned: Vec::new(),
            files_written: 0,
            bytes_written: 0,
            reserved: 0,
            changed: false,
            lazy_create: false,
            bound: false,
            lazy: Arc::new(SessionShare {
                files: HashMap::new(),
                arrivals: Mutex::new(Arrivals::default()),
                durable,
            }),
        }
    }

    /// Leaves the temporary files of files under `LAZY_FILE_BYTES_MAX` to their data
    /// streams: the plan then only looks at each such file, and the streams create,
    /// write and finish them in parallel on every shard while the data flows, instead of
    /// one thread creating them all before any data moves. The caller shares
    /// [`Receiver::stream_share`] with those streams once planned.
    pub fn create_small_files_on_write(mut self) -> Receiver {
        self.lazy_create = true;
        self
    }

    /// Commits a file only once every chunk the plan asked for has arrived, as the data
    /// streams record in [`SessionShare::arrivals`] (a server's push, where the data
    /// streams and the `Commit` come from the peer; issue 25, finding 5). A pulling
    /// client's own runs are already checked by its session's tracker.
    pub fn commit_only_arrived(mut self) -> Receiver {
        self.bound = true;
        self
    }

    /// Leaves the root's own mode and times alone: a server's root is its operator's,
    /// and no peer's directory metadata is applied to it (issue 25, finding 9). (A
    /// pulling client's destination takes the source's, as a local copy's does.)
    pub fn keep_root_metadata(mut self) -> Receiver {
        self.keep_root_meta = true;
        self
    }

    /// What the data streams share; complete once planned.
    pub fn stream_share(&self) -> Arc<SessionShare> {
        self.lazy.clone()
    }

    pub fn entry_count(&self) -> usize {
        self.planned.len()
    }

    /// Adds manifest entries, refusing the whole session on a path that is not confined:
    /// a peer that sends `../x` or `/etc/x` is hostile or broken, not unlucky.
    pub fn add(&mut self, entries: Vec<Entry>) -> Result<(), Failure> {
        for entry in entries {
            let full = full_path(&self.base, &entry.path)?;
            if entry.kind == WireKind::File && !entry.hashes.is_empty() {
                let chunks = ChunkPlan::new(entry.size).map_or(0, |p| p.chunk_count());
                if entry.hashes.len() as u64 != u64::from(chunks) {
                    return Err(Failure::new(
                        ErrorCode::Protocol,
                        format!("{} hashes for {chunks} chunks", entry.hashes.len()),
                    ));
                }
            }
            self.planned.push(Planned {
                entry,
                full,
                state: FileState::Idle,
                meta_ok: false,
            });
        }
        Ok(())
    }

    /// Creates directories, decides which files are needed (quick check: size and mtime),
    /// and creates their temporary files at full size (except those left to their data
    /// streams, see `create_small_files_on_write`). Returns what to ask the sender for and
    /// which files failed already.
    pub fn plan(&mut self) -> (Vec<NeedItem>, Vec<(u32, Failure)>) {
        let mut needs = Vec::new();
        let mut failed = Vec::new();
        let mut dirs_seen = BTreeSet::new();
        // The directory of the files being planned: a manifest lists a directory's files
        // together, so each is opened about once.
        let mut dir = None;
        if let Some(parent) = self.base.parent() {
            if let Err(e) = self.root.mkdir_all(&parent, 0o755) {
                // Every entry lands beneath it; report once per file below.
                let f = confine_failure(&e);
                for (i, p) in self.planned.iter_mut().enumerate() {
                    p.state = FileState::Failed;
                    failed.push((i as u32, f.clone()));
                }
                return (needs, failed);
            }
        }
        for i in 0..self.planned.len() {
            let index = i as u32;
            let result = match self.planned[i].entry.kind {
                WireKind::Dir => self.prepare_dir(i).map(|_| None),
                WireKind::File => self.prepare_file(i, &mut dir, &mut dirs_seen),
                WireKind::Symlink => Ok(None),
            };
            self.changed |= !matches!(result, Ok(None));
            match result {
                Ok(Some((chunks, have))) => needs.push(NeedItem {
                    file: index,
                    chunk_first: 0,
                    chunk_count: chunks,
                    have,
                }),
                Ok(None) => {}
                Err(f) => {
                    self.planned[i].state = FileState::Failed;
                    failed.push((index, f));
                }
            }
        }
        let share = Arc::get_mut(&mut self.lazy).expect("shared only once planned");
        let created = needs.iter().filter(|n| !share.files.contains_key(&n.file));
        share.arrivals = Mutex::new(Arrivals::new(created));
        (needs, failed)
    }

    fn prepare_dir(&mut self, i: usize) -> Result<(), Failure> {
        let p = &self.planned[i];
        let full = &p.full;
        match self.root.lstat(full).map_err(|e| confine_failure(&e))? {
            Some(st) if st.kind == FileKind::Dir => {
                // New directories are on their parent's filesystem; existing ones may be
                // mount points: `finish` syncs one directory of each filesystem seen.
                self.devices
                    .entry(st.inode.0)
                    .or_insert_with(|| full.clone());
                if full.is_root() && self.keep_root_meta {
                    // The root is not unlocked, nor given the peer's mode later.
                    self.planned[i].meta_ok = true;
                } else if st.mode & 0o700 != 0o700 {
                    // Read-only from an earlier copy: writable until `finish` sets its mode.
                    self.root
                        .set_dir_meta(full, st.mode | 0o700, st.atime, st.mtime)
                        .map_err(|e| confine_failure(&e))?;
                } else {
                    // set_dir_meta clears setuid/setgid, as for files: compare likewise.
                    self.planned[i].meta_ok = os::mode_matches(st.mode, p.entry.mode & 0o1777)
                        && os::same_time(st.mtime, p.entry.mtime);
                }
                Ok(())
            }
            Some(_) => {
                // A non-directory in the way is replaced, as rsync and the local copy do.
                self.changed = true;
                self.root
                    .remove_file(full)
                    .map_err(|e| confine_failure(&e))?;
                self.root
                    .mkdir(full, 0o700)
                    .map_err(|e| confine_failure(&e))
            }
            None => {
                self.changed = true;
                self.root
                    .mkdir_all(full, 0o700)
                    .map_err(|e| confine_failure(&e))
            }
        }
    }

    /// Returns the number of chunks needed and the hashes of those an old version of the
    /// file already holds, or `None` if the file is up to date.
    fn prepare_file(
        &mut self,
        i: usize,
        dir: &mut Option<Dir>,
        dirs_seen: &mut BTreeSet<Vec<u8>>,
    ) -> Result<Option<(u32, Vec<ChunkHash>)>, Failure> {
        if self.planned[i].full.is_root() {
            // A file entry that names the destination root itself, which is a directory.
            return Err(Failure::new(
                ErrorCode::NotWritable,
                "the destination root is a directory: a file cannot take its place",
            ));
        }
        let parent = parent_of(&self.planned[i].full);
        let dir = match dir {
            Some(d) if *d.rel() == parent => d,
            _ => {
                *dir = None;
                let d = self.root.dir(&parent).map_err(|e| confine_failure(&e))?;
                if dirs_seen.insert(parent.as_bytes().to_vec()) {
                    self.remove_stale_temps(&d);
                }
                dir.insert(d)
            }
        };
        let p = &self.planned[i];
        let mut old_size = None;
        match dir.lstat(&p.full).map_err(|e| confine_failure(&e))? {
            Some(st) if st.kind == FileKind::Dir => {
                return Err(Failure::new(
                    ErrorCode::NotWritable,
                    format!("{}: a directory is in the way", p.full),
                ))
            }
            Some(st)
                if st.kind == FileKind::File
                    && st.size_bytes == p.entry.size
                    && os::same_time(st.mtime, p.entry.mtime) =>
            {
                if !os::mode_matches(st.mode, p.entry.mode & 0o1777) {
                    let file = dir
                        .open(&p.full, Access::Metadata)
                        .map_err(|e| confine_failure(&e))?;
                    set_file_meta(&file, p.entry.mode, st.atime, st.mtime)
                        .map_err(|e| io_failure(&p.full, &e))?;
                }
                return Ok(None);
            }
            Some(st) if st.kind == FileKind::File => old_size = Some(st.size_bytes),
            _ => {}
        }
        let tmp = temp_path(&p.full, self.session, i as u32)?;
        let lazy = self.lazy_create && p.entry.size < LAZY_FILE_BYTES_MAX;
        let fd = if lazy {
            None
        } else {
            let fd = dir
                .open(&tmp, Access::CreateNew { mode: 0o600 })
                .map_err(|e| confine_failure(&e))?;
            Some(fd)
        };
        if let Some(fd) = fd.as_ref().filter(|_| p.entry.size > 0) {
            // Size it now, and reserve the space of a large file while the session's
            // reservations stay within their limit: a full disk fails it here, before
            // any of its bytes are sent.
            let size = p.entry.size;
            let reserving = size >= RESERVE_FILE_BYTES_MIN
                && self.reserved + size <= RESERVED_BYTES_PER_SESSION_MAX;
            if reserving {
                self.reserved += size;
            }
            if let Err(rc) = reserve(fd, size, reserving) {
                let _ = dir.remove_file(&tmp);
                return Err(Failure::new(
                    ErrorCode::for_errno(rc),
                    format!(
                        "cannot allocate {} bytes for {}: {}",
                        p.entry.size,
                        p.full,
                        os::errno_text(rc)
                    ),
                ));
            }
        }
        // Only once the file is sized (and a large one's space reserved): a full disk
        // fails a large file before its old version is read.
        let have = match old_size {
            Some(old) if self.offer_old_hashes && p.entry.size > 0 => {
                match dir.open(&p.full, Access::Read) {
                    Ok(file) => old_chunk_hashes(&file, old, p.entry.size),
                    Err(_) => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let p = &self.planned[i];
        let chunks = ChunkPlan::new(p.entry.size).map_or(0, |p| p.chunk_count());
        if lazy {
            let file = LazyFile {
                full: p.full.clone(),
                size: p.entry.size,
                mode: p.entry.mode,
                mtime: p.entry.mtime,
                state: AtomicU8::new(LAZY_PLANNED),
            };
            Arc::get_mut(&mut self.lazy)
                .expect("the lazy files are shared only once planned")
                .files
                .insert(i as u32, file);
        }
        self.planned[i].state = FileState::Receiving;
        Ok(Some((chunks, have)))
    }

    /// Removes temporary files in `dir` left by runs that are over (`tpc_engine::temp`).
    fn remove_stale_temps(&mut self, dir: &Dir) {
        if self.sweeper.sweep(dir, SWEEP_NAMES_MAX) > 0 {
            self.changed = true;
        }
    }

    /// Makes files whose data all arrived durable and visible. Returns the committed
    /// files and the ones that failed.
    pub fn commit(&mut self, files: &[u32]) -> (Vec<u32>, Vec<(u32, Failure)>) {
        let mut failed = Vec::new();
        let mut valid = Vec::with_capacity(files.len());
        for &f in files {
            let arrived = || {
                let lazy = self.lazy.files.contains_key(&f);
                let arrivals = self.lazy.arrivals.lock().expect("not poisoned");
                !self.bound || lazy || arrivals.complete(f)
            };
            match self.planned.get(f as usize) {
                Some(p) if p.state == FileState::Receiving && !arrived() => failed.push((
                    f,
                    Failure::protocol(format!("file {f} was committed before its data arrived")),
                )),
                Some(p) if p.state == FileState::Receiving => valid.push((parent_of(&p.full), f)),
                _ => failed.push((
                    f,
                    Failure::new(
                        ErrorCode::Protocol,
                        format!("file {f} is not being received"),
                    ),
                )),
            }
        }
        // By directory, so that each is opened once rather than resolved again for every
        // file; a file listed twice is committed once.
        valid.sort_unstable();
        valid.dedup();
        // Mode and times through each temporary file's handle, before the data is synced.
        let mut ready: Vec<(Dir, Vec<u32>)> = Vec::new();
        for (parent, group) in by_directory(valid) {
            let dir = match self.root.dir(&parent) {
                Ok(d) => d,
                Err(e) => {
                    let f = confine_failure(&e);
                    failed.extend(group.iter().map(|&i| (i, f.clone())));
                    continue;
                }
            };
            let mut ok = Vec::with_capacity(group.len());
            for f in group {
                let done = match self.lazy.files.get(&f) {
                    // Its data stream applied mode and times already.
                    Some(lazy) if lazy.is_written() => Ok(()),
                    Some(_) => Err(Failure::new(
                        ErrorCode::Protocol,
                        format!("file {f} was committed before its data was written"),
                    )),
                    None => self.finish_file(f, &dir),
                };
                match done {
                    Ok(()) => ok.push(f),
                    Err(e) => failed.push((f, e)),
                }
            }
            ready.push((dir, ok));
        }
        if self.durable && ready.iter().any(|(_, g)| !g.is_empty()) {
            // One syncfs for the batch per filesystem it touched: every temp file's data
            // (written by any shard) is on disk before any of them takes its final name.
            // (Off Linux each file was synced through its own handle, by finish_file or
            // its data stream, and this syncs the directories as a barrier.)
            // Through the first file of each directory where the directory cannot be read.
            let firsts: Vec<(RelPath, Option<RelPath>)> = (ready.iter())
                .filter(|(_, g)| !g.is_empty())
                .map(|(d, g)| {
                    let p = &self.planned[g[0] as usize];
                    (d.rel().clone(), temp_path(&p.full, self.session, g[0]).ok())
                })
                .collect();
            let places = firsts.iter().map(|(d, f)| (d, f.as_ref()));
            if let Err(e) = self.root.sync_filesystems(places) {
                let f = confine_failure(&e);
                for (_, group) in ready.drain(..) {
                    failed.extend(group.into_iter().map(|i| (i, self.named(i, &f))));
                }
            }
        }
        let mut committed = Vec::new();
        for (dir, group) in ready {
            let renamed = self.rename_into_place(&dir, &group, &mut failed);
            committed.extend(renamed);
        }
        // Whatever failed leaves no temporary file, and a lazily created one cannot come
        // back (its data stream may still be running).
        for &(f, _) in &failed {
            self.fail(f);
        }
        (committed, failed)
    }

    /// Renames the temporary files of `files` (all in `dir`) to their final names and,
    /// for a durable session, syncs the directory. Returns the files committed; the
    /// others are added to `failed`.
    fn rename_into_place(
        &mut self,
        dir: &Dir,
        files: &[u32],
        failed: &mut Vec<(u32, Failure)>,
    ) -> Vec<u32> {
        let mut renamed = Vec::with_capacity(files.len());
        for &f in files {
            let p = &self.planned[f as usize];
            let moved = temp_path(&p.full, self.session, f)
                .and_then(|tmp| dir.rename(&tmp, &p.full).map_err(|e| confine_failure(&e)));
            match moved {
                Ok(()) => renamed.push(f),
                Err(e) => failed.push((f, e)),
            }
        }
        if self.durable && !renamed.is_empty() {
            if let Err(e) = dir.sync() {
                // In place but not known durable: not acknowledged as committed.
                let f = confine_failure(&e);
                failed.extend(renamed.drain(..).map(|i| (i, self.named(i, &f))));
            }
        }
        for &f in &renamed {
            let p = &mut self.planned[f as usize];
            p.state = FileState::Committed;
            self.files_written += 1;
            self.bytes_written += p.entry.size;
        }
        renamed
    }

    /// `f` failed for what failed the batch it was in: the same, named for the file.
    fn named(&self, f: u32, why: &Failure) -> Failure {
        let full = &self.planned[f as usize].full;
        Failure::new(why.code, format!("{full}: not committed: {}", why.message))
    }

    /// Applies mode and times through the temporary file's handle (`dir` is its directory).
    fn finish_file(&self, f: u32, dir: &Dir) -> Result<(), Failure> {
        let p = &self.planned[f as usize];
        let tmp = temp_path(&p.full, self.session, f)?;
        let file = dir
            .open(&tmp, Access::Write)
            .map_err(|e| confine_failure(&e))?;
        set_meta(&file, &p.full, p.entry.mode, p.entry.mtime)?;
        if self.durable && !cfg!(target_os = "linux") {
            // No syncfs for the batch off Linux: sync through this handle, the one sure way
            // in once the final mode is set.
            sync_file(&file).map_err(|e| io_failure(&tmp, &e))?;
        }
        Ok(())
    }

    /// Marks a file failed (its data did not arrive intact) and removes its temp file.
    pub fn fail(&mut self, f: u32) {
        if let Some(p) = self.planned.get_mut(f as usize) {
            if p.state == FileState::Receiving {
                p.state = FileState::Failed;
                if let Some(lazy) = self.lazy.files.get(&f) {
                    lazy.kill();
                }
                if let Ok(tmp) = temp_path(&p.full, self.session, f) {
                    let _ = self.root.remove_file(&tmp);
                }
            }
        }
    }

    /// Symlinks (made under a temporary name, renamed into place), then directory modes
    /// and times, deepest first so that a read-only directory is locked only after its
    /// children are in place. Returns per-entry failures.
    /// A push's `--delete`, before `finish` sets the directories' metadata: beneath each
    /// base the client named (relative to the session's base), what the manifest does
    /// not hold goes, less what the client's rules protect. Returns what was removed and
    /// left past the limit, and a failure per entry that could not be removed, told as
    /// a failure of its base's directory entry (the client counts one per entry). A bad
    /// request (a base outside the root, a rule that does not compile) refuses it all.
    #[allow(clippy::type_complexity)]
    pub fn delete(
        &mut self,
        request: &DeleteRequest,
    ) -> Result<(u64, u64, Vec<(u32, Failure)>), Failure> {
        let filter = rules_filter(&request.rules, None, None)
            .map_err(|e| Failure::protocol(format!("--delete rule: {e}")))?;
        // A push's bases are relative to its destination, which is the transfer's root:
        // each base is also its own name among the transfer's paths. Each must be a
        // directory of the manifest (the landing of a directory source), and is taken
        // once: a peer cannot make the server list one tree many times.
        let mut bases: Vec<&[u8]> = request.bases.iter().map(Vec::as_slice).collect();
        bases.sort_unstable();
        bases.dedup();
        for b in &bases {
            let full = full_path(&self.base, b)?;
            let is_dir = |p: &Planned| p.full == full && p.entry.kind == WireKind::Dir;
            if !self.planned.iter().any(is_dir) {
                return Err(Failure::protocol(format!(
                    "--delete beneath {full}, which is not a directory of the manifest"
                )));
            }
        }
        let bases: Vec<(&[u8], &[u8])> = bases.into_iter().map(|b| (b, b)).collect();
        let max = (request.max != u64::MAX).then_some(request.max);
        self.delete_beneath(&filter, max, &bases)
    }

    /// `--delete` beneath each `(base, name)`: `base` relative to the session's base,
    /// `name` its path among the transfer's paths, which the filter's patterns see.
    #[allow(clippy::type_complexity)]
    pub fn delete_beneath(
        &mut self,
        filter: &Filter,
        max: Option<u64>,
        bases: &[(&[u8], &[u8])],
    ) -> Result<(u64, u64, Vec<(u32, Failure)>), Failure> {
        let bases = (bases.iter())
            .map(|&(b, name)| Ok((full_path(&self.base, b)?, name)))
            .collect::<Result<Vec<_>, Failure>>()?;
        let held: HashSet<&[u8]> = self.planned.iter().map(|p| p.full.as_bytes()).collect();
        let mut deletion = Deletion::new(&self.root, filter, max);
        let mut failures: Vec<(RelPath, Failure)> = Vec::new();
        for (full, name) in &bases {
            let prefix = full.as_bytes();
            let in_manifest = |path: &[u8]| {
                let whole = [prefix, if prefix.is_empty() { b"" } else { b"/" }, path].concat();
                held.contains(whole.as_slice())
            };
            if let Err(e) = deletion.beneath(full, name, in_manifest) {
                let code = ErrorCode::for_errno(e.errno().unwrap_or(libc::EIO));
                let message = format!("not deleting beneath {full}: {e}");
                failures.push((full.clone(), Failure::new(code, message)));
            }
        }
        for (rel, e) in &deletion.failures {
            let code = ErrorCode::for_errno(e.errno().unwrap_or(libc::EIO));
            let message = format!("cannot delete {rel}: {e}");
            let under = |b: &RelPath| {
                let (r, b) = (rel.as_bytes(), b.as_bytes());
                b.is_empty() || (r.starts_with(b) && r.get(b.len()) == Some(&b'/'))
            };
            let base = bases.iter().map(|b| &b.0).find(|b| under(b));
            failures.push((
                base.unwrap_or(&self.base).clone(),
                Failure::new(code, message),
            ));
        }
        let failures = failures
            .into_iter()
            .filter_map(|(base, f)| {
                let entry = self.planned.iter().position(|p| p.full == base);
                entry.map(|i| (i as u32, f))
            })
            .collect();
        if deletion.deleted > 0 {
            // Directories' entries changed: their metadata is set again in `finish`.
            self.changed = true;
        }
        Ok((deletion.deleted, deletion.left, failures))
    }

    pub fn finish(&mut self) -> Vec<(u32, Failure)> {
        // Files never committed (a range failed, or the sender gave up on them) leave
        // no temporary behind.
        self.abort();
        let mut failed = Vec::new();
        let mut dirs = BTreeSet::new();
        for i in 0..self.planned.len() {
            if self.planned[i].entry.kind != WireKind::Symlink {
                continue;
            }
            match self.place_symlink(i) {
                Ok(Some(dir)) => {
                    self.changed = true;
                    dirs.insert(dir);
                }
                Ok(None) => {}
                Err(f) => {
                    // A temporary link may have come and gone: the directory's mtime moved.
                    self.changed = true;
                    failed.push((i as u32, f));
                }
            }
        }
        // A session that changed no directory's entries leaves directories that already
        // matched alone: a rerun of an unchanged tree rewrites no directory metadata.
        let mut order: Vec<usize> = (0..self.planned.len())
            .filter(|&i| self.planned[i].entry.kind == WireKind::Dir)
            .filter(|&i| self.changed || !self.planned[i].meta_ok)
            .filter(|&i| !(self.keep_root_meta && self.planned[i].full.is_root()))
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.planned[i].full.depth()));
        for i in order {
            let p = &self.planned[i];
            if let Err(e) =
                self.root
                    .set_dir_meta(&p.full, p.entry.mode, p.entry.mtime, p.entry.mtime)
            {
                failed.push((i as u32, confine_failure(&e)));
            }
        }
        // Durability is synced whatever this session did: an earlier session may have left
        // metadata or data unsynced (`--fsync never`, or killed before its syncfs).
        if self.durable {
            for d in &dirs {
                let _ = self.root.fsync_dir(d);
            }
            // Every filesystem the session's directories are on, the root's and any
            // mounted below it: one directory of each, as planning found them.
            let places = (self.devices.values())
                .chain(std::iter::once(&self.base))
                .map(|dir| (dir, None));
            let _ = self.root.sync_filesystems(places);
        }
        failed
    }

    fn place_symlink(&mut self, i: usize) -> Result<Option<RelPath>, Failure> {
        let p = &self.planned[i];
        let before = self.root.lstat(&p.full).map_err(|e| confine_failure(&e))?;
        match before {
            Some(st) if st.kind == FileKind::Dir => {
                return Err(Failure::new(
                    ErrorCode::NotWritable,
                    format!("{}: a directory is in the way", p.full),
                ))
            }
            Some(st) if st.kind == FileKind::Symlink => {
                let target = self
                    .root
                    .read_link(&p.full)
                    .map_err(|e| confine_failure(&e))?;
                if target == p.entry.target {
                    if !os::same_time(st.mtime, p.entry.mtime) {
                        self.root
                            .set_symlink_times(&p.full, p.entry.mtime, p.entry.mtime)
                            .map_err(|e| confine_failure(&e))?;
                    }
                    return Ok(None);
                }
            }
            _ => {}
        }
        let tmp = temp_path(&p.full, self.session, i as u32)?;
        let _ = self.root.remove_file(&tmp);
        let placed = self
            .root
            .symlink(&p.entry.target, &tmp)
            .and_then(|_| {
                self.root
                    .set_symlink_times(&tmp, p.entry.mtime, p.entry.mtime)
            })
            .and_then(|_| self.root.rename(&tmp, &p.full));
        if let Err(e) = placed {
            let _ = self.root.remove_file(&tmp);
            return Err(confine_failure(&e));
        }
        Ok(Some(p.full.parent().unwrap_or_else(RelPath::root)))
    }

    /// Removes the temporary files of files that never committed (the peer went away).
    pub fn abort(&mut self) {
        for i in 0..self.planned.len() {
            self.fail(i as u32);
        }
    }

    /// Where file `f` lands and its size, for a data stream; `None` if the file is not
    /// being received in this session.
    pub fn receiving(&self, f: u32) -> Option<(RelPath, u64)> {
        let p = self.planned.get(f as usize)?;
        (p.state == FileState::Receiving).then(|| (p.full.clone(), p.entry.size))
    }
}

/// How long the work handed to [`off_thread`] may take, which says where it runs.
#[derive(Clone, Copy)]
pub enum Span {
    /// A commit or a finish: the shard's blocking pool, shared with the direct writes.
    Short,
    /// A plan of a whole manifest: a thread of its own (`rt::spawn_thread`), so that a
    /// session's long plan never holds the pool every other session's writes and commits
    /// wait on (issue 25, finding 3).
    Long,
}

/// Runs `f` on the receiver in `slot` off the shard's thread (where `span` says), so that
/// the shard's endpoint keeps answering packets while it plans, syncs and renames, and
/// puts it back.
pub async fn off_thread<R: Send + 'static>(
    slot: &mut Option<Receiver>,
    span: Span,
    f: impl FnOnce(&mut Receiver) -> R + Send + 'static,
) -> R {
    let mut r = slot.take().expect("the receiver is in its slot");
    let work = move || {
        let out = f(&mut r);
        (r, out)
    };
    let (r, out) = match span {
        Span::Short => tpc_engine::rt::spawn_blocking(work).await,
        Span::Long => tpc_engine::rt::spawn_thread(work).await,
    };
    *slot = Some(r);
    out
}

/// However a session ends, files it never committed leave no temporary behind: a
/// session that fails part way (a lost or hostile peer, any early return) drops its
/// receiver without `finish`, and the temporaries it created, preallocated at full size,
/// would stay (issue 25, finding 7). After `finish` or `abort` there is nothing left to
/// remove.
impl Drop for Receiver {
    fn drop(&mut self) {
        self.abort();
    }
}

/// BLAKE3 of each chunk of a new file's layout (`new_size` bytes) that an old version
/// (`old`, of `old_size` bytes) covers whole, from the first chunk on, up to
/// `NEED_HAVE_HASHES_MAX`: what a receiver tells the sender it already has. Unreadable,
/// or shorter than it said: the hashes so far.
pub fn old_chunk_hashes(old: &std::fs::File, old_size: u64, new_size: u64) -> Vec<ChunkHash> {
    let mut have = Vec::new();
    let mut buf = Vec::new();
    for c in 0..(NEED_HAVE_HASHES_MAX as u64) {
        let start = c * CHUNK_SIZE_BYTES;
        let end = (start + CHUNK_SIZE_BYTES).min(new_size);
        if start >= new_size || end > old_size {
            break;
        }
        buf.resize((end - start) as usize, 0);
        if os::read_exact_at(old, &mut buf, start).is_err() {
            break;
        }
        have.push(ChunkHash::of(&buf));
    }
    have
}

/// Files sorted by their directory, in runs that share one.
fn by_directory(files: Vec<(RelPath, u32)>) -> Vec<(RelPath, Vec<u32>)> {
    let mut groups: Vec<(RelPath, Vec<u32>)> = Vec::new();
    for (parent, f) in files {
        match groups.last_mut() {
            Some((p, g)) if *p == parent => g.push(f),
            _ => groups.push((parent, vec![f])),
        }
    }
    groups
}

/// The directory `full` lies in (the root for a name at the top).
fn parent_of(full: &RelPath) -> RelPath {
    full.parent().unwrap_or_else(RelPath::root)
}

/// Sets a received file's mode (setuid and setgid cleared) and mtime (atime = mtime)
/// through its open handle; `full` names it in the error.
pub fn set_meta(
    file: &std::fs::File,
    full: &RelPath,
    mode: u32,
    mtime: (i64, u32),
) -> Result<(), Failure> {
    set_file_meta(file, mode, mtime, mtime).map_err(|e| io_failure(full, &e))
}

pub fn io_failure(rel: &RelPath, e: &std::io::Error) -> Failure {
    Failure::new(
        os::errno(e).map_or(ErrorCode::Io, ErrorCode::for_errno),
        format!("{rel}: {e}"),
    )
}

/// Disk space one session's plan may reserve for data not yet sent: a client's manifest
/// of a few bytes must not hold a server's disk (nor a hostile server's a pulling
/// client's) for the length of a session (issue 25, finding 3). Files planned past it
/// are sized but not reserved: a full disk fails them at a write instead, with the same
/// `NoSpace`.
pub const RESERVED_BYTES_PER_SESSION_MAX: u64 = 4 << 30;

/// On Linux, files from this size up have their space reserved when planned (within
/// `RESERVED_BYTES_PER_SESSION_MAX`), so a full disk fails them before any of their
/// bytes are sent. Smaller ones are only created (and
/// extended to their size, unless their data stream creates them), and a full disk fails
/// them at their write, after at most this much was sent: reserving costs a block
/// allocation per file now and an extent conversion at the write, and the plan runs on
/// one thread while the data waits for it.
const RESERVE_FILE_BYTES_MIN: u64 = 1024 * 1024;

// Files small enough to be written without direct I/O are never reserved: reserving
// pays for direct writes, which then meet no allocation part way through a large file.
const _: () = assert!(super::data::DIRECT_FILE_BYTES_MIN >= RESERVE_FILE_BYTES_MIN);

/// Gives a new file its `size`; the errno on failure. With `reserving`, on Linux,
/// posix_fallocate reserves the space too. Otherwise (and elsewhere) files are only
/// extended (sparse), so a full disk shows up on a write instead of here.
fn reserve(file: &std::fs::File, size: u64, reserving: bool) -> Result<(), i32> {
    #[cfg(target_os = "linux")]
    if reserving {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(size).map_err(|_| libc::EFBIG)?;
        // SAFETY: valid fd.
        return match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => Ok(()),
            errno => Err(errno),
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reserving;
    file.set_len(size).map_err(|e| os::errno_or_eio(&e))
}
