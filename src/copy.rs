//! `tpc-xfer copy` for local paths: resolve sources (rsync's trailing-slash rule), walk,
//! decide what changed, hand the file data to the shards, then links, verification and
//! directory metadata.
//!
//! Whoever can write the destination may swap any entry in it for a symlink while the
//! copy runs. So the destination is held open as one directory (`confine::Root`) and
//! every create, rename, mode and time change beneath it is an `*at` call on held
//! directory fds that never follows a symlink, as the server's writes are; sources are
//! opened the same way beneath their own root, and checked against what the walk saw.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tpc_core::compare::{file_change, file_change_by_digest, itemize, Act};
use tpc_core::filter::Filter;
use tpc_core::limits::FILE_SIZE_BYTES_MAX;
use tpc_core::place;
use tpc_core::temp::temp_name;
use tpc_core::wire::DestKind;
use tpc_core::{Change, EntryKind, EntryMeta, FileDigest, RelPath, SkipPolicy};
use tpc_engine::confine::{self, Access, ConfineError, FileKind};
use tpc_engine::pace::Pacer;
use tpc_engine::temp::{process_token, RunLock, Sweeper};
use tpc_engine::{
    Beneath, Destination, Driver, Durability, FileOutcome, JobFile, JobSpec, Listed, Progress,
    Stage,
};

use crate::delete::Deletion;
use crate::exit::{Exit, Problems};
use crate::progress::{self, human_bytes, FileDone, Reporter, Sample, Show};
use crate::summary::Done;
use crate::summary::Summary;
use crate::walk::{self, quote, Entry};

pub struct CopyOptions {
    pub shard_count: usize,
    pub policy: SkipPolicy,
    pub verify: bool,
    pub durability: Durability,
    /// What is shown while the job runs (`--progress`, `--stats-every`, `--json-log`).
    pub show: Show,
    pub quiet: bool,
    pub json: bool,
    /// The driver the shards run on (`--io`).
    pub driver: Driver,
    /// What of the sources is taken (`--exclude`, `--include`, `--max-size`, ...).
    pub filter: Arc<Filter>,
    /// `--delete`, with its `--max-delete` limit: `None` leaves extraneous entries be.
    pub delete: Option<Option<u64>>,
    /// `--dry-run`: decide and list everything, write nothing.
    pub dry_run: bool,
    /// What is listed on stdout as it is decided (`-v`, `-i`).
    pub list: List,
    /// `--bwlimit`, in bytes per second: what the data of the run (a local copy's reads,
    /// a push's or a pull's sender) may move at.
    pub bwlimit: Option<u64>,
}

/// `-v` lists the names of what a run changes; `-i` (`--itemize-changes`) each with
/// rsync's change code (`tpc_core::compare::itemize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum List {
    #[default]
    Off,
    Names,
    Changes,
}

/// One source resolved to where it lands.
struct Root {
    /// The source as the user named it, and where it lands, for messages.
    src: PathBuf,
    dst: PathBuf,
    /// The source beneath its own held root (`JobSpec::roots[src_root]`).
    src_root: usize,
    src_base: RelPath,
    /// Where it lands beneath the destination root.
    dst_base: RelPath,
    entries: Vec<Entry>,
    /// Files the size limits left out (relative to `src`): still the source's, so
    /// `--delete` keeps their destination copies, as rsync does.
    sized_out: Vec<PathBuf>,
}

impl Root {
    fn src_of(&self, e: &Entry) -> PathBuf {
        join_rel(&self.src, &e.rel)
    }
    fn dst_path(&self, e: &Entry) -> PathBuf {
        join_rel(&self.dst, &e.rel)
    }
}

/// `base.join(rel)`, except that an empty `rel` is `base` itself (join would add a slash).
fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Index of the destination root among a run's held directories (`JobSpec::roots`):
/// the destination first, then one per source. Job files name them by index
/// (`tpc_engine::Beneath`).
const DEST: usize = 0;

/// `base` and then the names of `rel` (a walk's relative path), as one `RelPath`.
pub(crate) fn beneath(base: &RelPath, rel: &Path) -> Result<RelPath, tpc_core::PathError> {
    let rel = walk::bytes(rel.as_os_str());
    if rel.is_empty() {
        return Ok(base.clone());
    }
    if base.is_root() {
        return RelPath::parse(&rel);
    }
    let mut joined = base.as_bytes().to_vec();
    joined.push(b'/');
    joined.extend_from_slice(&rel);
    RelPath::parse(&joined)
}

/// The directory `path` is in: its parent, or `.` for a bare name.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Holds the tree at `path` open: a directory is its own root (base: the root itself);
/// anything else is reached through its parent directory (base: its name).
pub(crate) fn hold_tree(path: &Path, is_dir: bool) -> Result<(confine::Root, RelPath), String> {
    let (dir, base) = if is_dir {
        (path.to_path_buf(), RelPath::root())
    } else {
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} names no file", quote(path)))?;
        let base = RelPath::parse(&walk::bytes(name)).map_err(|e| e.to_string())?;
        (parent_dir(path), base)
    };
    let root = confine::Root::open_ambient(&dir)
        .map_err(|e| format!("cannot open {}: {e}", quote(&dir)))?;
    Ok((root, base))
}

/// setuid and setgid: cleared on copied files.
const SETID_BITS: u32 = 0o6000;

pub fn run(sources: &[OsString], dest: &Path, opts: &CopyOptions) -> Done {
    let started = Instant::now();
    let mut problems = Problems::default();
    let mut summary = Summary {
        direction: "local",
        shards: opts.shard_count,
        verified: opts.verify,
        io: opts.driver.name(),
        ..Default::default()
    };

    // A destination this run makes is listed as made (`cd+++++++++ ./`), as a dry run
    // lists it, though it exists by the time the planner looks.
    let dest_existed = std::fs::symlink_metadata(dest).is_ok();
    let Some((mut roots, dest_dir)) = resolve_roots(sources, dest, opts.dry_run, &mut problems)
    else {
        return problems.exit().into();
    };
    // A dry run makes no destination: where there is none yet, everything is new, and
    // the nearest directory that exists stands in for the root (it is never read).
    let absent = opts.dry_run && dest_dir == dest && std::fs::symlink_metadata(dest).is_err();
    let opened = if absent {
        dest_dir
            .ancestors()
            .find(|d| d.is_dir())
            .unwrap_or(Path::new("."))
    } else {
        &dest_dir
    };
    let dest_root = match confine::Root::open_ambient(opened) {
        Ok(root) => Arc::new(root),
        Err(e) => {
            problems.report(
                Exit::for_write_error(&e),
                format!("cannot open destination {}: {e}", quote(&dest_dir)),
            );
            return problems.exit().into();
        }
    };
    let mut held = vec![dest_root.clone()];
    for root in &mut roots {
        let named = walk::bytes(root.src.as_os_str()).into_owned();
        let sized_out = RefCell::new(Vec::new());
        let within = walk::Within {
            filter: &opts.filter,
            name: walk::transfer_name(&named),
            sized_out: Some(&sized_out),
        };
        match walk::walk(&root.src, Some(within)) {
            Ok((entries, errors)) => {
                for e in errors {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {}", quote(&e.path), e.error),
                    );
                }
                root.entries = entries;
                root.sized_out = sized_out.take();
                for e in &mut root.entries {
                    if e.meta.kind == EntryKind::File {
                        // Ownership is not copied, so a setuid/setgid file would gain the
                        // privileges of whoever runs the copy (often root): never keep them.
                        e.meta.mode &= !SETID_BITS;
                    }
                }
            }
            Err(e) => problems.report(
                Exit::Source,
                format!("cannot read {}: {e}", quote(&root.src)),
            ),
        }
        let is_dir = root
            .entries
            .first()
            .is_some_and(|e| e.meta.kind == EntryKind::Dir);
        if root.entries.is_empty() {
            continue;
        }
        match hold_tree(&root.src, is_dir) {
            Ok((tree, base)) => {
                root.src_root = held.len();
                root.src_base = base;
                held.push(Arc::new(tree));
            }
            Err(e) => {
                problems.report(Exit::Source, e);
                root.entries.clear();
            }
        }
    }

    let mut plan = Plan::new(dest_root.clone(), dest_dir.clone());
    plan.dry = opts.dry_run;
    plan.absent = absent;
    plan.fresh_root = !dest_existed && dest_dir == dest;
    plan.list = opts.list;
    plan.by_digest = opts.policy == SkipPolicy::Checksum;
    for root in &roots {
        plan_root(root, opts, &mut plan, &mut problems, &mut summary);
    }

    // --checksum: digests of both sides decide for files of equal size.
    if !plan.need_digests.is_empty() {
        let files: Vec<JobFile> = plan
            .need_digests
            .iter()
            .flat_map(|(src, dst, e)| {
                [
                    src.clone(),
                    Beneath {
                        root: DEST,
                        rel: dst.clone(),
                    },
                ]
                .map(|at| hash_file(at, e.meta.size_bytes))
            })
            .collect();
        let digests = match hash_job(held.clone(), files, opts) {
            Ok(d) => d,
            Err(e) => {
                problems.report(Exit::Engine, e);
                return problems.exit().into();
            }
        };
        for (i, (src, dst, e)) in std::mem::take(&mut plan.need_digests)
            .into_iter()
            .enumerate()
        {
            let (ds, dd) = (&digests[2 * i], &digests[2 * i + 1]);
            let (ds, dd) = match (ds, dd) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(err), _) => {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {err}", quote(&plan.shown(&dst))),
                    );
                    continue;
                }
                (_, Err(_)) => {
                    // An unreadable destination is rewritten.
                    plan.item(Act::Transfer, &e.meta, None, &dst);
                    plan.push_copy(src, &dst, &e);
                    continue;
                }
            };
            let dst_meta = dest_meta(&plan.dest, &mut None, &dst);
            match dst_meta
                .as_ref()
                .map(|m| file_change_by_digest(&e.meta, m, ds == dd))
            {
                Some(Change::Skip) => summary.files_unchanged += 1,
                Some(Change::FixMetadata) => {
                    summary.files_unchanged += 1;
                    plan.item(Act::Attributes, &e.meta, dst_meta.as_ref(), &dst);
                    plan.fix_meta.push((dst, e));
                }
                _ => {
                    plan.item(Act::Transfer, &e.meta, dst_meta.as_ref(), &dst);
                    plan.push_copy(src, &dst, &e);
                }
            }
        }
    }

    if opts.dry_run {
        return dry_run_ends(plan, &roots, opts, problems, summary, started);
    }
    for (rel, e) in &plan.fix_meta {
        if let Err(err) = set_file_metadata(&plan.dest, rel, e) {
            problems.report(
                Exit::for_write(err.errno()),
                format!("cannot set metadata of {}: {err}", quote(&plan.shown(rel))),
            );
        }
    }

    // File data: the shards. What is listed so far is out before they start.
    plan.flush_list();
    let total_bytes: u64 = plan.job.iter().map(|f| f.size_bytes).sum();
    let job_files = plan.job.len() as u64;
    let (file_log, finished) = progress::file_log(opts.show);
    let listener = file_log.map(|log| {
        let shown: Vec<(String, u64)> = plan
            .job
            .iter()
            .map(|f| {
                let dst = f.dst.as_ref().expect("copy job");
                (plan.shown(&dst.path).display().to_string(), f.size_bytes)
            })
            .collect();
        Box::new(move |file: u32, outcome: &FileOutcome| {
            let (path, bytes) = &shown[file as usize];
            log.done(FileDone {
                path: path.clone(),
                bytes: *bytes,
                error: match outcome {
                    FileOutcome::Done(_) => None,
                    FileOutcome::Failed(e) => Some(e.message.clone()),
                },
            });
        }) as tpc_engine::FinishedListener
    });
    let progress = Progress::with_listener(opts.shard_count, listener);
    let reporter = Reporter::start(
        opts.show,
        "copy",
        counted(&progress, total_bytes, job_files),
        finished,
    );
    let spec = JobSpec {
        pace: opts.bwlimit.map(|rate| Arc::new(Pacer::new(rate))),
        roots: held.clone(),
        files: std::mem::take(&mut plan.job),
        shard_count: opts.shard_count,
        durability: opts.durability,
        driver: opts.driver,
    };
    let files = spec.files.clone();
    let report = tpc_engine::run_job(spec, progress);
    reporter.finish();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            problems.report(Exit::Engine, e);
            return problems.exit().into();
        }
    };
    summary.bytes_per_shard = report.shards.iter().map(|s| s.bytes).collect();
    summary.ranges_per_shard = report.shards.iter().map(|s| s.ranges).collect();
    summary.shard_cpus = report.shards.iter().map(|s| s.affinity.clone()).collect();
    let mut copied_ok: HashSet<RelPath> = HashSet::new();
    let mut to_verify = Vec::new();
    for (file, outcome) in files.iter().zip(&report.outcomes) {
        let dst = file.dst.as_ref().expect("copy job");
        match outcome {
            FileOutcome::Done(digest) => {
                summary.files_copied += 1;
                summary.bytes += file.size_bytes;
                copied_ok.insert(dst.path.clone());
                plan.mark_touched(&dst.path);
                if opts.verify {
                    to_verify.push((dst.path.clone(), file.size_bytes, *digest));
                }
            }
            FileOutcome::Failed(err) => {
                summary.failed += 1;
                match err.stage {
                    Stage::Read => problems.report(
                        Exit::Source,
                        format!(
                            "cannot read {}: {}",
                            quote(&shown_source(&roots, file)),
                            err.message
                        ),
                    ),
                    Stage::Write | Stage::Commit => problems.report(
                        Exit::for_write(err.errno),
                        format!(
                            "cannot write {}: {}",
                            quote(&plan.shown(&dst.path)),
                            err.message
                        ),
                    ),
                }
            }
        }
    }

    // Hard links, now that their first names are in place.
    for (first, other) in std::mem::take(&mut plan.links) {
        if !plan.link_target_ready(&first, &other, &copied_ok, "was not copied", &mut problems) {
            summary.failed += 1;
            continue;
        }
        let tmp = plan.temp(&other, "h");
        match make_hard_link(&plan.dest, &first, &other, &tmp) {
            Ok(true) => {
                plan.link_item(&first, &other);
                summary.hard_links += 1;
                plan.mark_touched(&other);
            }
            Ok(false) => summary.hard_links += 1,
            Err(err) => {
                summary.failed += 1;
                problems.report(
                    Exit::for_write(err.errno()),
                    format!("cannot link {}: {err}", quote(&plan.shown(&other))),
                );
            }
        }
    }

    if opts.verify && !to_verify.is_empty() {
        let files = to_verify
            .iter()
            .map(|(rel, size, _)| {
                hash_file(
                    Beneath {
                        root: DEST,
                        rel: rel.clone(),
                    },
                    *size,
                )
            })
            .collect();
        match hash_job(held.clone(), files, opts) {
            Ok(digests) => {
                for ((rel, _, want), got) in to_verify.iter().zip(digests) {
                    let path = plan.shown(rel);
                    match got {
                        Ok(d) if d == *want => {}
                        Ok(_) => problems.report(
                            Exit::Verify,
                            format!("verify: {} does not match its source", quote(&path)),
                        ),
                        Err(e) => problems.report(
                            Exit::Verify,
                            format!("verify: cannot re-read {}: {e}", quote(&path)),
                        ),
                    }
                }
            }
            Err(e) => problems.report(Exit::Engine, e),
        }
    }

    if let Some(max) = opts.delete {
        delete_extraneous(&roots, &mut plan, opts, max, &mut problems, &mut summary);
    }

    // Every temporary is renamed or removed by now: the run's lock goes before the root's
    // own mode is set (a read-only root could not lose it after).
    plan.lock = None;

    // Directory modes and times last, deepest first: writing children changes a
    // directory's mtime, and a read-only directory must stay writable until they are in.
    let mut changed_dirs = Vec::new();
    for (rel, e, before) in plan.dirs.iter().rev() {
        let changed =
            plan.touched.contains(rel) || before.as_ref().is_none_or(|b| dir_differs(&e.meta, b));
        if changed {
            changed_dirs.push(rel.clone());
            let set = plan.dest.set_dir_meta(
                rel,
                e.meta.mode,
                e.atime,
                (e.meta.mtime_sec, e.meta.mtime_nsec),
            );
            if let Err(err) = set {
                problems.report(
                    Exit::for_write(err.errno()),
                    format!("cannot set metadata of {}: {err}", quote(&plan.shown(rel))),
                );
            }
        }
    }
    if opts.durability == Durability::Batch {
        // Directory entries, symlinks and metadata are small; one syncfs for each
        // filesystem they are on covers them all (a filesystem mounted below the
        // destination root as well as the root's own).
        changed_dirs.extend(plan.touched.iter().cloned());
        let places = changed_dirs.iter().map(|dir| (dir, None));
        if let Err(err) = plan.dest.sync_filesystems(places) {
            problems.report(
                Exit::for_write(err.errno()),
                format!("cannot make the copy durable: {err}"),
            );
        }
    }

    plan.flush_list();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.throughput_bytes_per_sec = summary.bytes as f64 / summary.seconds.max(1e-9);
    Done {
        exit: problems.exit(),
        summary: Some(summary),
    }
}

/// The rest of a `--dry-run`, once everything is decided: what the shards would copy,
/// the hard links that would be made and what `--delete` would remove, counted and
/// listed, and nothing written.
fn dry_run_ends(
    mut plan: Plan,
    roots: &[Root],
    opts: &CopyOptions,
    mut problems: Problems,
    mut summary: Summary,
    started: Instant,
) -> Done {
    summary.dry_run = true;
    summary.files_copied = plan.job.len() as u64;
    summary.bytes = plan.job.iter().map(|f| f.size_bytes).sum();
    let will_exist: HashSet<RelPath> = plan
        .job
        .iter()
        .filter_map(|f| f.dst.as_ref().map(|d| d.path.clone()))
        .collect();
    for (first, other) in std::mem::take(&mut plan.links) {
        if !plan.link_target_ready(
            &first,
            &other,
            &will_exist,
            "would not be copied",
            &mut problems,
        ) {
            summary.failed += 1;
            continue;
        }
        summary.hard_links += 1;
        // A first name that is written anew is a new file: its links are made again.
        let renewed = plan.absent || will_exist.contains(&first);
        if renewed || !same_file(&plan.dest, &first, &other).unwrap_or(false) {
            plan.link_item(&first, &other);
        }
    }
    if let (Some(max), false) = (opts.delete, plan.absent) {
        delete_extraneous(roots, &mut plan, opts, max, &mut problems, &mut summary);
    }
    plan.flush_list();
    summary.seconds = started.elapsed().as_secs_f64();
    Done {
        exit: problems.exit(),
        summary: Some(summary),
    }
}

/// `--delete`: removes what no source holds beneath each directory source's landing, once
/// every transfer of the run has succeeded (rsync's `--delete-after`), children before
/// their directories, at most `max` entries (`--max-delete`). Never when anything failed
/// before (a source that could not be listed in full would look like files to delete).
fn delete_extraneous(
    roots: &[Root],
    plan: &mut Plan,
    opts: &CopyOptions,
    max: Option<u64>,
    problems: &mut Problems,
    summary: &mut Summary,
) {
    if problems.exit() != Exit::Ok {
        eprintln!("tpc-xfer: not deleting anything at the destination: the run had errors");
        return;
    }
    // Every destination path a source holds.
    let mut held: HashSet<Vec<u8>> = HashSet::new();
    for root in roots {
        let rels = root.entries.iter().map(|e| &e.rel).chain(&root.sized_out);
        for rel in rels {
            if let Ok(rel) = beneath(&root.dst_base, rel) {
                held.insert(rel.into_bytes());
            }
        }
    }
    let mut seen = HashSet::new();
    let mut deletion = Deletion::new(&plan.dest, &opts.filter, max);
    deletion.dry = opts.dry_run;
    for root in roots {
        let is_dir = root
            .entries
            .first()
            .is_some_and(|e| e.meta.kind == EntryKind::Dir);
        if !is_dir || !seen.insert(root.dst_base.clone()) {
            continue;
        }
        let base = root.dst_base.as_bytes();
        let named = walk::bytes(root.src.as_os_str()).into_owned();
        let in_source = |path: &[u8]| {
            let full = [base, if base.is_empty() { b"" } else { b"/" }, path].concat();
            held.contains(&full)
        };
        let name = walk::transfer_name(&named);
        if opts.dry_run && !plan.absent && plan.dest.lstat(&root.dst_base).ok().flatten().is_none()
        {
            // A landing the real run would make: nothing there to delete.
            continue;
        }
        if let Err(e) = deletion.beneath(&root.dst_base, name, in_source) {
            problems.report(
                Exit::for_write(e.errno()),
                format!("not deleting: cannot list the destination: {e}"),
            );
            return;
        }
    }
    for (rel, e) in std::mem::take(&mut deletion.failures) {
        problems.report(
            Exit::for_write(e.errno()),
            format!("cannot delete {}: {e}", quote(&plan.shown(&rel))),
        );
    }
    summary.deleted = deletion.deleted;
    let (left, removed) = (deletion.left, std::mem::take(&mut deletion.removed));
    for (rel, is_dir) in &removed {
        plan.deleted_item(rel, *is_dir);
        plan.mark_touched(rel);
    }
    if left > 0 {
        problems.report(
            Exit::MaxDelete,
            format!(
                "--max-delete {} reached: {left} more extraneous entries left in place",
                max.unwrap_or(0)
            ),
        );
    }
}

/// The source path of a job file, for messages.
fn shown_source(roots: &[Root], file: &JobFile) -> PathBuf {
    let root = roots.iter().find(|r| r.src_root == file.src.root);
    let rel = walk::os(file.src.rel.as_bytes());
    match root {
        // `src_base` is the file's own name when the source is a single file.
        Some(r) if !r.src_base.is_root() => r.src.clone(),
        Some(r) => join_rel(&r.src, Path::new(&*rel)),
        None => PathBuf::from(&*rel),
    }
}

/// A file to hash (no destination), read beneath its root.
fn hash_file(src: Beneath, size_bytes: u64) -> JobFile {
    JobFile {
        rel: src.rel.as_bytes().to_vec(),
        src,
        listed: None,
        dst: None,
        size_bytes,
    }
}

/// Work decided by the planner. Destination paths are relative to the held destination
/// root.
struct Plan {
    dest: Arc<confine::Root>,
    /// The destination root's path, for messages.
    dest_dir: PathBuf,
    /// This run's lock (`tpc_engine::temp`), taken before its first temporary is made:
    /// a run that makes none leaves the root untouched.
    lock: Option<RunLock>,
    /// Temporary names made so far: the next one's number.
    temps: u64,
    sweeper: Sweeper,
    /// The directory the planner looked in last (`dest_meta`).
    held_parent: Option<confine::Dir>,
    job: Vec<JobFile>,
    need_digests: Vec<(Beneath, RelPath, Entry)>,
    fix_meta: Vec<(RelPath, Entry)>,
    /// Directories: destination path, source entry, destination metadata before the run.
    dirs: Vec<(RelPath, Entry, Option<EntryMeta>)>,
    /// (first name's destination, other name's destination).
    links: Vec<(RelPath, RelPath)>,
    /// First names of hard-link groups that were unchanged (already in place).
    link_targets_present: HashSet<RelPath>,
    /// Directories whose entries this run changed.
    touched: HashSet<RelPath>,
    /// `--dry-run`: nothing is written (no directory, link, temporary, lock or sweep).
    dry: bool,
    /// A dry run's destination does not exist: nothing is there to compare with.
    absent: bool,
    /// The destination root was made by this run, before the planner looked.
    fresh_root: bool,
    /// What is listed as it is decided (`-v`, `-i`), and where.
    list: List,
    listing: Option<BufWriter<std::io::Stdout>>,
    /// `--checksum`: a file is copied because its digest differs.
    by_digest: bool,
}

impl Plan {
    fn new(dest: Arc<confine::Root>, dest_dir: PathBuf) -> Plan {
        Plan {
            sweeper: Sweeper::new(process_token(), dest.clone(), &dest_dir),
            dest,
            dest_dir,
            lock: None,
            temps: 0,
            held_parent: None,
            job: Vec::new(),
            need_digests: Vec::new(),
            fix_meta: Vec::new(),
            dirs: Vec::new(),
            links: Vec::new(),
            link_targets_present: HashSet::new(),
            touched: HashSet::new(),
            dry: false,
            absent: false,
            fresh_root: false,
            list: List::Off,
            listing: None,
            by_digest: false,
        }
    }

    /// What is at destination `rel` now (`dest_meta`); nothing where the destination
    /// does not exist.
    fn before(&mut self, rel: &RelPath) -> Option<EntryMeta> {
        if self.absent {
            return None;
        }
        dest_meta(&self.dest, &mut self.held_parent, rel)
    }

    /// Lists one change on stdout: `code name` (`-i`) or `verb name` (`-v`, where `verb`
    /// is most often empty), a directory's name ending in `/` (the root is `./`), `extra`
    /// after it.
    fn list_line(&mut self, (code, verb): (&str, &str), rel: &RelPath, is_dir: bool, extra: &str) {
        if self.list == List::Off {
            return;
        }
        let name = String::from_utf8_lossy(rel.as_bytes());
        let name = match (rel.is_root(), is_dir) {
            (true, _) => "./".to_string(),
            (false, true) => format!("{name}/"),
            (false, false) => name.into_owned(),
        };
        // A name may hold any byte but `/` and NUL: escaped, it stays one line.
        let name = tpc_core::wire::escape_controls(&name);
        let out = self
            .listing
            .get_or_insert_with(|| BufWriter::new(std::io::stdout()));
        let _ = match self.list {
            List::Changes => writeln!(out, "{code} {name}{extra}"),
            _ => writeln!(out, "{verb}{name}{extra}"),
        };
    }

    /// Lists what `act` does to the entry at `rel`, `before` being what is there now.
    fn item(&mut self, act: Act, src: &EntryMeta, before: Option<&EntryMeta>, rel: &RelPath) {
        let code = itemize(act, src, before, self.by_digest);
        let extra = match &src.link_target {
            Some(t) => format!(" -> {}", String::from_utf8_lossy(t)),
            None => String::new(),
        };
        self.list_line((&code, ""), rel, src.kind == EntryKind::Dir, &extra);
    }

    /// Whether `first`, the name a hard link at `other` points to, is in place: copied
    /// by this run (`copied`) or already there. If not, the link is reported as failed,
    /// saying `why` ("was not copied", or in a dry run "would not be copied").
    fn link_target_ready(
        &self,
        first: &RelPath,
        other: &RelPath,
        copied: &HashSet<RelPath>,
        why: &str,
        problems: &mut Problems,
    ) -> bool {
        if copied.contains(first) || self.link_targets_present.contains(first) {
            return true;
        }
        problems.report(
            Exit::Source,
            format!(
                "not linking {}: {} {why}",
                quote(&self.shown(other)),
                quote(&self.shown(first))
            ),
        );
        false
    }

    /// Lists a hard link made at `other` to `first`.
    fn link_item(&mut self, first: &RelPath, other: &RelPath) {
        let file = EntryMeta {
            kind: EntryKind::File,
            size_bytes: 0,
            mode: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            link_target: None,
        };
        let code = itemize(Act::HardLink, &file, None, false);
        let first = String::from_utf8_lossy(first.as_bytes()).into_owned();
        self.list_line((&code, ""), other, false, &format!(" => {first}"));
    }

    /// Lists an entry `--delete` removes, as rsync does: `*deleting   name`.
    fn deleted_item(&mut self, rel: &RelPath, is_dir: bool) {
        self.list_line(("*deleting  ", "deleting "), rel, is_dir, "");
    }

    /// Writes out what is listed so far: before the shards run, and at the end.
    fn flush_list(&mut self) {
        if let Some(out) = &mut self.listing {
            let _ = out.flush();
        }
    }

    /// Where `rel` is, for messages.
    fn shown(&self, rel: &RelPath) -> PathBuf {
        join_rel(&self.dest_dir, Path::new(&*walk::os(rel.as_bytes())))
    }

    /// A new temporary name beside `dst`; `kind` tells files, links and hard links apart.
    fn temp(&mut self, dst: &RelPath, kind: &str) -> RelPath {
        if self.lock.is_none() && !self.dry {
            // A root that cannot take it (not writable) gets a run without one. The
            // lock leaves the root's times as they were, but the final pass sets a
            // copied root's anyway.
            let lock = RunLock::acquire(self.dest.clone()).unwrap_or_else(|_| RunLock::unlocked());
            self.lock = Some(lock);
            self.touched.insert(RelPath::root());
        }
        self.temps += 1;
        let name = temp_name(process_token(), &format!("{kind}{}", self.temps));
        dst.parent()
            .unwrap_or_else(RelPath::root)
            .join(&name)
            .expect("a temporary name is a valid name")
    }

    fn push_copy(&mut self, src: Beneath, dst: &RelPath, e: &Entry) {
        let tmp = self.temp(dst, "f");
        self.job.push(JobFile {
            rel: walk::bytes(e.rel.as_os_str()).into_owned(),
            src,
            listed: Some(Listed {
                inode: (e.inode.0, e.inode.1),
                mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
            }),
            dst: Some(Destination {
                root: DEST,
                tmp,
                path: dst.clone(),
                mode: e.meta.mode,
                atime: e.atime,
                mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
            }),
            size_bytes: e.meta.size_bytes,
        });
    }

    fn mark_touched(&mut self, rel: &RelPath) {
        if let Some(parent) = rel.parent() {
            self.touched.insert(parent);
        }
    }

    /// Removes other runs' stale temporaries from directory `rel`.
    fn sweep(&mut self, rel: &RelPath) {
        if self.dry {
            return;
        }
        if let Ok(dir) = self.dest.dir(rel) {
            if self.sweeper.sweep(&dir, tpc_engine::temp::SWEEP_NAMES_MAX) > 0 {
                self.touched.insert(rel.clone());
            }
        }
    }
}

/// Applies rsync's rules to each source: where does it land? Returns the roots and the
/// destination directory they all land beneath (made if it must be a directory).
fn resolve_roots(
    sources: &[OsString],
    dest: &Path,
    dry: bool,
    problems: &mut Problems,
) -> Option<(Vec<Root>, PathBuf)> {
    // The sources found: a missing one is reported and counts for nothing, as in rsync
    // (`copy missing f dst` writes the file f at dst).
    let mut found = Vec::new();
    for s in sources {
        let src = PathBuf::from(s);
        let named = walk::bytes(s).into_owned();
        match std::fs::symlink_metadata(&src) {
            Ok(md) => {
                // A symlink is copied as a link, unless its name asks for the directory
                // it points to (`link/`).
                let follows = named.ends_with(b"/") || place::last_name(&named).is_none();
                let is_dir =
                    md.is_dir() || (follows && std::fs::metadata(&src).is_ok_and(|m| m.is_dir()));
                found.push((src, named, is_dir));
            }
            Err(e) => problems.report(Exit::Source, format!("source {}: {e}", quote(&src))),
        }
    }
    if found.is_empty() {
        return None;
    }
    let named: Vec<place::Source<'_>> = found
        .iter()
        .map(|(_, named, is_dir)| place::Source {
            named,
            is_dir: *is_dir,
        })
        .collect();
    let placement = place::place(&named, local_dest(dest));
    let (dest_dir, as_dest) = match local_target(dest, &placement, !dry) {
        Ok(target) => target,
        Err((code, message)) => {
            problems.report(code, message);
            return None;
        }
    };
    let mut roots = Vec::new();
    for ((src, _, _), landing) in found.iter().zip(&placement.landings) {
        let dst = match landing {
            place::Landing::Named(name) => dest.join(&*walk::os(name)),
            place::Landing::Contents | place::Landing::AsDest => dest.to_path_buf(),
        };
        match landing_base(landing, &as_dest) {
            Ok(dst_base) => roots.push(Root {
                src: src.clone(),
                dst,
                src_root: 0,
                src_base: RelPath::root(),
                dst_base,
                entries: Vec::new(),
                sized_out: Vec::new(),
            }),
            Err(e) => problems.report(Exit::Source, format!("source {}: {e}", quote(src))),
        }
    }
    (!roots.is_empty()).then_some((roots, dest_dir))
}

/// Where a source that lands as `landing` goes beneath the directory `local_target`
/// chose (`as_dest`: the name it gave, for a file onto a path).
pub(crate) fn landing_base(
    landing: &place::Landing,
    as_dest: &Option<RelPath>,
) -> Result<RelPath, tpc_core::PathError> {
    match landing {
        place::Landing::Contents => Ok(RelPath::root()),
        place::Landing::Named(name) => RelPath::parse(name),
        place::Landing::AsDest => Ok(as_dest.clone().expect("a file onto a path has its name")),
    }
}

/// What a local destination is now, for the placement rules.
pub(crate) fn local_dest(dest: &Path) -> place::Dest {
    place::Dest {
        kind: match std::fs::metadata(dest) {
            Ok(m) if m.is_dir() => DestKind::Dir,
            Ok(_) => DestKind::Other,
            Err(_) => DestKind::Missing,
        },
        says_dir: walk::bytes(dest.as_os_str()).ends_with(b"/"),
    }
}

/// The directory a local copy or a pull writes beneath, by `placement`: DEST itself,
/// made a directory if it must be one; or, for one file onto a path that is not a
/// directory, DEST's parent, with DEST's name (the second value) as where it lands.
pub(crate) fn local_target(
    dest: &Path,
    placement: &place::Placement,
    create: bool,
) -> Result<(PathBuf, Option<RelPath>), (Exit, String)> {
    if placement.dest_is_dir {
        if !create && !dest.is_dir() && std::fs::symlink_metadata(dest).is_ok() {
            // What the real run's mkdir would meet (a dry run makes nothing).
            return Err((
                Exit::Destination,
                format!(
                    "cannot create destination {}: it is not a directory",
                    quote(dest)
                ),
            ));
        }
        if create && !dest.is_dir() {
            std::fs::create_dir_all(dest).map_err(|e| {
                (
                    Exit::for_write_error(&e),
                    format!("cannot create destination {}: {e}", quote(dest)),
                )
            })?;
        }
        return Ok((dest.to_path_buf(), None));
    }
    let bytes = walk::bytes(dest.as_os_str());
    let name = place::last_name(&bytes).ok_or_else(|| {
        (
            Exit::Destination,
            format!("destination {} names no file", quote(dest)),
        )
    })?;
    let name = RelPath::parse(name).map_err(|e| {
        (
            Exit::Destination,
            format!("destination {}: {e}", quote(dest)),
        )
    })?;
    Ok((parent_dir(dest), Some(name)))
}

/// What is at destination `rel` now: `None` if nothing (or if it cannot be looked at,
/// which the step that writes it then reports). `held` keeps the last parent directory
/// open: the walk lists a directory's entries together, so each is one `fstatat` on it
/// rather than a resolution of its parent beneath the root and a stat.
fn dest_meta(
    dest: &confine::Root,
    held: &mut Option<confine::Dir>,
    rel: &RelPath,
) -> Option<EntryMeta> {
    let parent = rel.parent();
    if held.as_ref().map(|d| Some(d.rel())) != Some(parent.as_ref()) {
        // The root itself, or a directory that cannot be held (unreadable): by path.
        *held = parent.and_then(|p| dest.dir(&p).ok());
    }
    let st = match held {
        Some(dir) => dir.lstat(rel),
        None => dest.lstat(rel),
    }
    .ok()??;
    let kind = match st.kind {
        FileKind::File => EntryKind::File,
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink => EntryKind::Symlink,
        FileKind::Other => EntryKind::Special,
    };
    let link_target = if kind == EntryKind::Symlink {
        Some(dest.read_link(rel).ok()?)
    } else {
        None
    };
    Some(EntryMeta {
        kind,
        size_bytes: if kind == EntryKind::File {
            st.size_bytes
        } else {
            0
        },
        mode: st.mode,
        mtime_sec: st.mtime.0,
        mtime_nsec: st.mtime.1,
        link_target,
    })
}

fn plan_root(
    root: &Root,
    opts: &CopyOptions,
    plan: &mut Plan,
    problems: &mut Problems,
    summary: &mut Summary,
) {
    // Directories this run could not create: nothing below them is attempted.
    let mut failed_dirs: HashSet<&Path> = HashSet::new();
    // Directories created by this run: their children need no lstat.
    let mut fresh_dirs: HashSet<RelPath> = HashSet::new();
    let mut first_of_inode: HashMap<(u64, u64), RelPath> = HashMap::new();
    if root
        .entries
        .first()
        .is_some_and(|e| e.meta.kind != EntryKind::Dir)
    {
        plan.sweep(&root.dst_base.parent().unwrap_or_else(RelPath::root));
    }
    for e in &root.entries {
        if e.rel.parent().is_some_and(|p| failed_dirs.contains(p)) {
            if e.meta.kind == EntryKind::Dir {
                failed_dirs.insert(&e.rel);
            }
            summary.failed += 1;
            continue;
        }
        let (dst, src) = match (
            beneath(&root.dst_base, &e.rel),
            beneath(&root.src_base, &e.rel),
        ) {
            (Ok(dst), Ok(src)) => (dst, src),
            (Err(err), _) | (_, Err(err)) => {
                problems.report(
                    Exit::Source,
                    format!("cannot copy {}: {err}", quote(&root.src_of(e))),
                );
                if e.meta.kind == EntryKind::Dir {
                    failed_dirs.insert(&e.rel);
                }
                summary.failed += 1;
                continue;
            }
        };
        let parent_fresh =
            !e.rel.as_os_str().is_empty() && dst.parent().is_some_and(|p| fresh_dirs.contains(&p));
        let before = if parent_fresh {
            None
        } else {
            plan.before(&dst)
        };
        match e.meta.kind {
            EntryKind::Dir => {
                summary.dirs += 1;
                match prepare_dir(&plan.dest, &dst, before.as_ref(), plan.dry) {
                    Ok(DirState::Existing) => {
                        if dst.is_root() && plan.fresh_root {
                            plan.item(Act::Make, &e.meta, None, &dst);
                        } else if before.as_ref().is_some_and(|b| dir_differs(&e.meta, b)) {
                            plan.item(Act::Attributes, &e.meta, before.as_ref(), &dst);
                        }
                        plan.sweep(&dst);
                        plan.dirs.push((dst, e.clone(), before));
                    }
                    Ok(state) => {
                        if state == DirState::Created {
                            plan.item(Act::Make, &e.meta, before.as_ref(), &dst);
                        } else if before.as_ref().is_some_and(|b| dir_differs(&e.meta, b)) {
                            plan.item(Act::Attributes, &e.meta, before.as_ref(), &dst);
                        }
                        if state == DirState::Created {
                            fresh_dirs.insert(dst.clone());
                            plan.mark_touched(&dst);
                        } else {
                            plan.sweep(&dst);
                        }
                        // No "before": the final pass must set its mode and times.
                        plan.dirs.push((dst, e.clone(), None));
                    }
                    Err(err) => {
                        problems.report(
                            Exit::for_write(err.errno()),
                            format!(
                                "cannot create directory {}: {err}",
                                quote(&root.dst_path(e))
                            ),
                        );
                        failed_dirs.insert(&e.rel);
                        summary.failed += 1;
                    }
                }
            }
            EntryKind::File => {
                summary.files += 1;
                if e.meta.size_bytes > FILE_SIZE_BYTES_MAX {
                    problems.report(
                        Exit::Source,
                        format!(
                            "{} is larger than the {} limit",
                            quote(&root.src_of(e)),
                            human_bytes(FILE_SIZE_BYTES_MAX)
                        ),
                    );
                    summary.failed += 1;
                    continue;
                }
                if before.as_ref().is_some_and(|b| b.kind == EntryKind::Dir) {
                    problems.report(
                        Exit::Destination,
                        format!(
                            "cannot replace directory {} with a file",
                            quote(&root.dst_path(e))
                        ),
                    );
                    summary.failed += 1;
                    continue;
                }
                let (dev, ino, nlink) = e.inode;
                if nlink > 1 {
                    if let Some(first) = first_of_inode.get(&(dev, ino)) {
                        plan.links.push((first.clone(), dst));
                        continue;
                    }
                    first_of_inode.insert((dev, ino), dst.clone());
                }
                let src = Beneath {
                    root: root.src_root,
                    rel: src,
                };
                match file_change(&e.meta, before.as_ref(), opts.policy) {
                    Change::Copy => {
                        plan.item(Act::Transfer, &e.meta, before.as_ref(), &dst);
                        plan.push_copy(src, &dst, e);
                    }
                    Change::Skip => {
                        summary.files_unchanged += 1;
                        plan.link_targets_present.insert(dst);
                    }
                    Change::FixMetadata => {
                        summary.files_unchanged += 1;
                        plan.item(Act::Attributes, &e.meta, before.as_ref(), &dst);
                        plan.link_targets_present.insert(dst.clone());
                        plan.fix_meta.push((dst, e.clone()));
                    }
                    Change::NeedDigests => {
                        plan.link_targets_present.insert(dst.clone());
                        plan.need_digests.push((src, dst, e.clone()));
                    }
                }
            }
            EntryKind::Symlink => {
                summary.symlinks += 1;
                let tmp = plan.temp(&dst, "l");
                match copy_symlink(&plan.dest, e, &dst, before.as_ref(), &tmp, plan.dry) {
                    Ok(LinkChange::Made) => {
                        plan.item(Act::Make, &e.meta, before.as_ref(), &dst);
                        plan.mark_touched(&dst);
                    }
                    Ok(LinkChange::Times) => {
                        plan.item(Act::Attributes, &e.meta, before.as_ref(), &dst)
                    }
                    Ok(LinkChange::None) => {}
                    Err(err) => {
                        problems.report(
                            Exit::for_write(err.errno()),
                            format!("cannot create symlink {}: {err}", quote(&root.dst_path(e))),
                        );
                        summary.failed += 1;
                    }
                }
            }
            EntryKind::Special => {
                summary.skipped += 1;
                if !opts.quiet {
                    eprintln!(
                        "tpc-xfer: warning: skipping {} {} (special files are not copied)",
                        e.special.unwrap_or("special file"),
                        quote(&root.src_of(e))
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DirState {
    Created,
    /// Existed, and was made writable for this run.
    Unlocked,
    Existing,
}

/// Makes `dst` a directory this run can write into.
/// A dry run (`dry`) only says which it would be.
fn prepare_dir(
    dest: &confine::Root,
    dst: &RelPath,
    before: Option<&EntryMeta>,
    dry: bool,
) -> Result<DirState, ConfineError> {
    match before.map(|b| (b.kind, b.mode)) {
        Some((EntryKind::Dir, _)) if dry => Ok(DirState::Existing),
        Some(_) | None if dry => Ok(DirState::Created),
        Some((EntryKind::Dir, mode)) => {
            if mode & 0o700 != 0o700 {
                // Read-only at the destination (from an earlier copy): writable until the
                // final metadata pass puts its mode back.
                dest.set_dir_mode(dst, mode | 0o700)?;
                return Ok(DirState::Unlocked);
            }
            Ok(DirState::Existing)
        }
        Some(_) => {
            // A non-directory is in the way: replace it, as rsync does.
            dest.remove_file(dst)?;
            // 0700 until the final pass sets the real mode: no one else sees a
            // half-copied tree.
            dest.mkdir(dst, 0o700)?;
            Ok(DirState::Created)
        }
        None => {
            dest.mkdir(dst, 0o700)?;
            Ok(DirState::Created)
        }
    }
}

/// What `copy_symlink` changed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkChange {
    None,
    /// The link was right; its times were set.
    Times,
    /// Made, or replaced what was there.
    Made,
}

/// Whether an existing directory's mode or mtime differs from its source's.
fn dir_differs(src: &EntryMeta, before: &EntryMeta) -> bool {
    src.mode != before.mode
        || (src.mtime_sec, src.mtime_nsec) != (before.mtime_sec, before.mtime_nsec)
}

/// Recreates a symlink (never followed) atomically: made under the temporary name `tmp`,
/// then renamed over the old entry. A dry run (`dry`) only says what it would change.
fn copy_symlink(
    dest: &confine::Root,
    e: &Entry,
    dst: &RelPath,
    before: Option<&EntryMeta>,
    tmp: &RelPath,
    dry: bool,
) -> Result<LinkChange, ConfineError> {
    let target = e.meta.link_target.as_ref().expect("symlink has a target");
    let times = (e.atime, (e.meta.mtime_sec, e.meta.mtime_nsec));
    if let Some(b) = before {
        if b.kind == EntryKind::Dir {
            return Err(ConfineError::Io {
                op: "replace a directory with a symlink",
                rel: dst.clone(),
                errno: libc::EISDIR,
            });
        }
        if b.kind == EntryKind::Symlink && b.link_target.as_ref() == Some(target) {
            if (b.mtime_sec, b.mtime_nsec) == (e.meta.mtime_sec, e.meta.mtime_nsec) {
                return Ok(LinkChange::None);
            }
            if !dry {
                dest.set_symlink_times(dst, times.0, times.1)?;
            }
            return Ok(LinkChange::Times);
        }
    }
    if dry {
        return Ok(LinkChange::Made);
    }
    dest.symlink(target, tmp)?;
    let placed = dest
        .set_symlink_times(tmp, times.0, times.1)
        .and_then(|_| dest.rename(tmp, dst));
    if let Err(err) = placed {
        let _ = dest.remove_file(tmp);
        return Err(err);
    }
    Ok(LinkChange::Made)
}

/// Whether `other` is already the file `first` is (a hard link to it).
fn same_file(dest: &confine::Root, first: &RelPath, other: &RelPath) -> Result<bool, ConfineError> {
    let first_stat = dest
        .lstat(first)?
        .ok_or_else(|| ConfineError::NotFound { rel: first.clone() })?;
    Ok(match dest.lstat(other)? {
        None => false,
        Some(o) if first_stat.inode != (0, 0) => o.inode == first_stat.inode,
        // Windows reports no inode in a stat here: ask the open files.
        Some(_) => match (
            dest.open(first, Access::Metadata),
            dest.open(other, Access::Metadata),
        ) {
            (Ok(a), Ok(b)) => tpc_engine::os::same_file(&a, &b).unwrap_or(false),
            _ => false,
        },
    })
}

/// Links `other` to `first` (a hard link) through the temporary name `tmp`, atomically
/// replacing what was there. Returns false when it already was the same file.
fn make_hard_link(
    dest: &confine::Root,
    first: &RelPath,
    other: &RelPath,
    tmp: &RelPath,
) -> Result<bool, ConfineError> {
    if same_file(dest, first, other)? {
        return Ok(false);
    }
    dest.hard_link(first, tmp)?;
    if let Err(e) = dest.rename(tmp, other) {
        let _ = dest.remove_file(tmp);
        return Err(e);
    }
    Ok(true)
}

/// Applies an unchanged file's mode and times through a no-follow open of it.
fn set_file_metadata(dest: &confine::Root, rel: &RelPath, e: &Entry) -> Result<(), ConfineError> {
    let file = dest.open(rel, Access::Metadata)?;
    confine::set_file_meta(
        &file,
        e.meta.mode,
        e.atime,
        (e.meta.mtime_sec, e.meta.mtime_nsec),
    )
    .map_err(|err| ConfineError::Io {
        op: "set metadata of",
        rel: rel.clone(),
        errno: tpc_engine::os::errno_or_eio(&err),
    })
}

/// What a reporter samples of a job's shards, whose totals are known before it starts.
fn counted(progress: &Arc<Progress>, total_bytes: u64, total_files: u64) -> impl Fn() -> Sample {
    let progress = progress.clone();
    move || Sample {
        bytes: progress.bytes(),
        files: progress.files(),
        total_bytes,
        total_files,
        totals_known: true,
    }
}

/// Hashes files on the shards; returns each file's digest or error, in order.
pub fn hash_job(
    roots: Vec<Arc<confine::Root>>,
    files: Vec<JobFile>,
    opts: &CopyOptions,
) -> Result<Vec<Result<FileDigest, String>>, tpc_engine::EngineError> {
    let total: u64 = files.iter().map(|f| f.size_bytes).sum();
    let count = files.len() as u64;
    let progress = Progress::new(opts.shard_count);
    let show = Show {
        json_log: false,
        ..opts.show
    };
    let reporter = Reporter::start(show, "hash", counted(&progress, total, count), None);
    let report = tpc_engine::run_job(
        JobSpec {
            pace: None,
            roots,
            files,
            shard_count: opts.shard_count,
            durability: Durability::Never,
            driver: opts.driver,
        },
        progress,
    );
    reporter.finish();
    Ok(report?
        .outcomes
        .into_iter()
        .map(|o| match o {
            FileOutcome::Done(d) => Ok(d),
            FileOutcome::Failed(e) => Err(e.message),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_paths_land_beneath_their_base() {
        let base = RelPath::parse(b"d").unwrap();
        let at = |b: &RelPath, p: &str| beneath(b, Path::new(p)).unwrap().to_string();
        assert_eq!(at(&base, ""), "d");
        assert_eq!(at(&base, "x/y"), "d/x/y");
        assert_eq!(at(&RelPath::root(), "x"), "x");
        assert!(beneath(&base, Path::new("../x")).is_err());
    }

    #[test]
    fn empty_rel_is_the_base() {
        assert_eq!(
            join_rel(Path::new("/a/b"), Path::new("")),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            join_rel(Path::new("/a"), Path::new("c")),
            PathBuf::from("/a/c")
        );
    }
}
