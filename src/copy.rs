//! `tpc-xfer copy` for local paths: resolve sources (rsync's trailing-slash rule), walk,
//! decide what changed, hand the file data to the shards, then links, verification and
//! directory metadata.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tpc_core::compare::{file_change, file_change_by_digest};
use tpc_core::limits::FILE_SIZE_BYTES_MAX;
use tpc_core::{Change, EntryKind, EntryMeta, FileDigest, SkipPolicy};
use tpc_engine::{Destination, Driver, Durability, FileOutcome, JobFile, JobSpec, Progress, Stage};

use crate::exit::{Exit, Problems};
use crate::progress::{human_bytes, Reporter};
use crate::walk::{self, quote, Entry};

pub struct CopyOptions {
    pub shard_count: usize,
    pub policy: SkipPolicy,
    pub verify: bool,
    pub durability: Durability,
    pub progress: bool,
    pub quiet: bool,
    pub json: bool,
    /// The driver the shards run on (`--io`).
    pub driver: Driver,
}

/// One source resolved to where it lands.
struct Root {
    src: PathBuf,
    dst: PathBuf,
    entries: Vec<Entry>,
}

impl Root {
    fn src_of(&self, e: &Entry) -> PathBuf {
        join_rel(&self.src, &e.rel)
    }
    fn dst_of(&self, e: &Entry) -> PathBuf {
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

#[derive(Serialize, Default)]
struct Summary {
    files: u64,
    files_copied: u64,
    files_unchanged: u64,
    bytes: u64,
    seconds: f64,
    throughput_bytes_per_sec: f64,
    skipped: u64,
    failed: u64,
    dirs: u64,
    symlinks: u64,
    hard_links: u64,
    verified: bool,
    shards: usize,
    bytes_per_shard: Vec<u64>,
    ranges_per_shard: Vec<u64>,
    shard_cpus: Vec<Vec<usize>>,
    /// The driver the shards ran on: "uring" or "portable".
    io: &'static str,
}

/// setuid and setgid: cleared on copied files.
const SETID_BITS: u32 = 0o6000;

/// Prefix and suffix of temporary files: `.tpcx.<pid>.<n>.tmp`.
pub(crate) const TMP_PREFIX: &str = ".tpcx.";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub fn run(sources: &[OsString], dest: &Path, opts: &CopyOptions) -> Exit {
    let started = Instant::now();
    let mut problems = Problems::default();
    let mut summary = Summary {
        shards: opts.shard_count,
        verified: opts.verify,
        io: opts.driver.name(),
        ..Default::default()
    };

    let roots = resolve_roots(sources, dest, &mut problems);
    let Some(mut roots) = roots else {
        return problems.exit();
    };
    for root in &mut roots {
        match walk::walk(&root.src) {
            Ok((entries, errors)) => {
                for e in errors {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {}", quote(&e.path), e.error),
                    );
                }
                root.entries = entries;
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
    }

    let pid = std::process::id();
    let mut plan = Plan::default();
    for root in &roots {
        plan_root(root, opts, pid, &mut plan, &mut problems, &mut summary);
    }

    // --checksum: digests of both sides decide for files of equal size.
    if !plan.need_digests.is_empty() {
        let files: Vec<JobFile> = plan
            .need_digests
            .iter()
            .flat_map(|(src, dst, e)| {
                [src, dst].map(|p| JobFile {
                    rel: walk::bytes(p.as_os_str()).into_owned(),
                    src: p.clone(),
                    dst: None,
                    size_bytes: e.meta.size_bytes,
                })
            })
            .collect();
        let digests = match hash_job(files, opts) {
            Ok(d) => d,
            Err(e) => {
                problems.report(Exit::Engine, e);
                return problems.exit();
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
                    problems.report(Exit::Source, format!("cannot read {}: {err}", quote(&src)));
                    continue;
                }
                (_, Err(_)) => {
                    // An unreadable destination is rewritten.
                    plan.push_copy(&src, &dst, &e, pid);
                    continue;
                }
            };
            let dst_meta = walk::lstat(&dst).map(|d| d.meta).ok();
            match dst_meta.map(|m| file_change_by_digest(&e.meta, &m, ds == dd)) {
                Some(Change::Skip) => summary.files_unchanged += 1,
                Some(Change::FixMetadata) => {
                    summary.files_unchanged += 1;
                    plan.fix_meta.push((dst, e));
                }
                _ => plan.push_copy(&src, &dst, &e, pid),
            }
        }
    }

    for (path, e) in &plan.fix_meta {
        if let Err(err) = set_metadata(path, &e.meta, e.atime, false) {
            problems.report(
                Exit::for_write_error(&err),
                format!("cannot set metadata of {}: {err}", quote(path)),
            );
        }
    }

    // File data: the shards.
    let total_bytes: u64 = plan.job.iter().map(|f| f.size_bytes).sum();
    let job_files = plan.job.len() as u64;
    let progress = Progress::new(opts.shard_count);
    let reporter = Reporter::start(
        opts.progress,
        progress.clone(),
        total_bytes,
        job_files,
        "copy",
    );
    let spec = JobSpec {
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
            return problems.exit();
        }
    };
    summary.bytes_per_shard = report.shards.iter().map(|s| s.bytes).collect();
    summary.ranges_per_shard = report.shards.iter().map(|s| s.ranges).collect();
    summary.shard_cpus = report.shards.iter().map(|s| s.affinity.clone()).collect();
    let mut copied_ok: HashSet<PathBuf> = HashSet::new();
    let mut to_verify = Vec::new();
    for (file, outcome) in files.iter().zip(&report.outcomes) {
        let dst = file.dst.as_ref().expect("copy job");
        match outcome {
            FileOutcome::Done(digest) => {
                summary.files_copied += 1;
                summary.bytes += file.size_bytes;
                copied_ok.insert(dst.path.clone());
                mark_touched(&mut plan.touched, &dst.path);
                if opts.verify {
                    to_verify.push((dst.path.clone(), file.size_bytes, *digest));
                }
            }
            FileOutcome::Failed(err) => {
                summary.failed += 1;
                match err.stage {
                    Stage::Read => problems.report(
                        Exit::Source,
                        format!("cannot read {}: {}", quote(&file.src), err.message),
                    ),
                    Stage::Write | Stage::Commit => problems.report(
                        Exit::for_write(err.errno),
                        format!("cannot write {}: {}", quote(&dst.path), err.message),
                    ),
                }
            }
        }
    }

    // Hard links, now that their first names are in place.
    for (first, other) in &plan.links {
        if !copied_ok.contains(first) && !plan.link_targets_present.contains(first) {
            summary.failed += 1;
            problems.report(
                Exit::Source,
                format!(
                    "not linking {}: {} was not copied",
                    quote(other),
                    quote(first)
                ),
            );
            continue;
        }
        match make_hard_link(first, other, pid) {
            Ok(true) => {
                summary.hard_links += 1;
                mark_touched(&mut plan.touched, other);
            }
            Ok(false) => summary.hard_links += 1,
            Err(err) => {
                summary.failed += 1;
                problems.report(
                    Exit::for_write_error(&err),
                    format!("cannot link {}: {err}", quote(other)),
                );
            }
        }
    }

    if opts.verify && !to_verify.is_empty() {
        let files = to_verify
            .iter()
            .map(|(path, size, _)| JobFile {
                rel: walk::bytes(path.as_os_str()).into_owned(),
                src: path.clone(),
                dst: None,
                size_bytes: *size,
            })
            .collect();
        match hash_job(files, opts) {
            Ok(digests) => {
                for ((path, _, want), got) in to_verify.iter().zip(digests) {
                    match got {
                        Ok(d) if d == *want => {}
                        Ok(_) => problems.report(
                            Exit::Verify,
                            format!("verify: {} does not match its source", quote(path)),
                        ),
                        Err(e) => problems.report(
                            Exit::Verify,
                            format!("verify: cannot re-read {}: {e}", quote(path)),
                        ),
                    }
                }
            }
            Err(e) => problems.report(Exit::Engine, e),
        }
    }

    // Directory modes and times last, deepest first: writing children changes a
    // directory's mtime, and a read-only directory must stay writable until they are in.
    for (path, e, before) in plan.dirs.iter().rev() {
        let changed = plan.touched.contains(path)
            || before.as_ref().is_none_or(|b| {
                b.mode != e.meta.mode
                    || b.mtime_sec != e.meta.mtime_sec
                    || b.mtime_nsec != e.meta.mtime_nsec
            });
        if changed {
            if let Err(err) = set_metadata(path, &e.meta, e.atime, false) {
                problems.report(
                    Exit::for_write_error(&err),
                    format!("cannot set metadata of {}: {err}", quote(path)),
                );
            }
        }
    }
    if opts.durability == Durability::Batch && (!plan.touched.is_empty() || !plan.dirs.is_empty()) {
        // Directory metadata and symlinks are small; one syncfs covers them all.
        if let Some(root) = roots.first() {
            let _ = tpc_engine::confine::sync_filesystem_of(&root.dst);
        }
    }

    summary.seconds = started.elapsed().as_secs_f64();
    summary.throughput_bytes_per_sec = summary.bytes as f64 / summary.seconds.max(1e-9);
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else if !opts.quiet {
        eprintln!(
            "copied {} files ({}) in {:.2} s, {}/s; {} unchanged, {} skipped, {} failed; {} shards",
            summary.files_copied,
            human_bytes(summary.bytes),
            summary.seconds,
            human_bytes(summary.throughput_bytes_per_sec as u64),
            summary.files_unchanged,
            summary.skipped,
            summary.failed,
            summary.shards
        );
    }
    problems.exit()
}

/// Work decided by the planner.
#[derive(Default)]
struct Plan {
    job: Vec<JobFile>,
    need_digests: Vec<(PathBuf, PathBuf, Entry)>,
    fix_meta: Vec<(PathBuf, Entry)>,
    /// Directories: destination path, source entry, destination metadata before the run.
    dirs: Vec<(PathBuf, Entry, Option<EntryMeta>)>,
    /// (first name's destination, other name's destination).
    links: Vec<(PathBuf, PathBuf)>,
    /// First names of hard-link groups that were unchanged (already in place).
    link_targets_present: HashSet<PathBuf>,
    /// Directories whose entries this run changed.
    touched: HashSet<PathBuf>,
}

impl Plan {
    fn push_copy(&mut self, src: &Path, dst: &Path, e: &Entry, pid: u32) {
        let tmp = temp_path(dst, pid, &self.job.len().to_string());
        self.job.push(JobFile {
            rel: walk::bytes(e.rel.as_os_str()).into_owned(),
            src: src.to_path_buf(),
            dst: Some(Destination {
                tmp,
                path: dst.to_path_buf(),
                mode: e.meta.mode,
                atime: e.atime,
                mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
            }),
            size_bytes: e.meta.size_bytes,
        });
    }
}

fn mark_touched(touched: &mut HashSet<PathBuf>, path: &Path) {
    if let Some(parent) = path.parent() {
        touched.insert(parent.to_path_buf());
    }
}

/// Applies rsync's rules to each source: where does it land?
fn resolve_roots(sources: &[OsString], dest: &Path, problems: &mut Problems) -> Option<Vec<Root>> {
    let dest_is_dir = std::fs::metadata(dest).map(|m| m.is_dir()).unwrap_or(false);
    let dest_says_dir = walk::bytes(dest.as_os_str()).ends_with(b"/");
    let mut roots = Vec::new();
    let mut need_dest_dir = sources.len() > 1 || dest_says_dir;
    for s in sources {
        let src = PathBuf::from(s);
        let md = match std::fs::symlink_metadata(&src) {
            Ok(md) => md,
            Err(e) => {
                problems.report(Exit::Source, format!("source {}: {e}", quote(&src)));
                continue;
            }
        };
        let contents = walk::bytes(s).ends_with(b"/") || src.file_name().is_none();
        let is_dir = md.is_dir()
            || (contents && std::fs::metadata(&src).map(|m| m.is_dir()).unwrap_or(false));
        let dst = if is_dir {
            need_dest_dir = true;
            if contents {
                dest.to_path_buf()
            } else {
                dest.join(src.file_name().expect("has a name"))
            }
        } else if dest_is_dir || dest_says_dir || sources.len() > 1 {
            dest.join(src.file_name().unwrap_or(s))
        } else {
            dest.to_path_buf()
        };
        roots.push(Root {
            src,
            dst,
            entries: Vec::new(),
        });
    }
    if roots.is_empty() {
        return None;
    }
    if need_dest_dir && !dest_is_dir {
        if let Err(e) = std::fs::create_dir_all(dest) {
            problems.report(
                Exit::for_write_error(&e),
                format!("cannot create destination {}: {e}", quote(dest)),
            );
            return None;
        }
    }
    Some(roots)
}

fn plan_root(
    root: &Root,
    opts: &CopyOptions,
    pid: u32,
    plan: &mut Plan,
    problems: &mut Problems,
    summary: &mut Summary,
) {
    // Directories this run could not create: nothing below them is attempted.
    let mut failed_dirs: HashSet<&Path> = HashSet::new();
    // Directories created by this run: their children need no lstat.
    let mut fresh_dirs: HashSet<PathBuf> = HashSet::new();
    let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
    if root
        .entries
        .first()
        .is_some_and(|e| e.meta.kind != EntryKind::Dir)
    {
        if let Some(parent) = root.dst.parent() {
            remove_stale_temps(parent);
        }
    }
    for e in &root.entries {
        if e.rel.parent().is_some_and(|p| failed_dirs.contains(p)) {
            if e.meta.kind == EntryKind::Dir {
                failed_dirs.insert(&e.rel);
            }
            summary.failed += 1;
            continue;
        }
        let dst = root.dst_of(e);
        let parent_fresh =
            !e.rel.as_os_str().is_empty() && dst.parent().is_some_and(|p| fresh_dirs.contains(p));
        let before = if parent_fresh {
            None
        } else {
            walk::lstat(&dst).ok()
        };
        match e.meta.kind {
            EntryKind::Dir => {
                summary.dirs += 1;
                match prepare_dir(&dst, before.as_ref()) {
                    Ok(DirState::Existing) => {
                        remove_stale_temps(&dst);
                        plan.dirs.push((dst, e.clone(), before.map(|b| b.meta)));
                    }
                    Ok(state) => {
                        if state == DirState::Created {
                            fresh_dirs.insert(dst.clone());
                            mark_touched(&mut plan.touched, &dst);
                        } else {
                            remove_stale_temps(&dst);
                        }
                        // No "before": the final pass must set its mode and times.
                        plan.dirs.push((dst, e.clone(), None));
                    }
                    Err(err) => {
                        problems.report(
                            Exit::for_write_error(&err),
                            format!("cannot create directory {}: {err}", quote(&dst)),
                        );
                        failed_dirs.insert(&e.rel);
                        summary.failed += 1;
                    }
                }
            }
            EntryKind::File => {
                summary.files += 1;
                let src = root.src_of(e);
                if e.meta.size_bytes > FILE_SIZE_BYTES_MAX {
                    problems.report(
                        Exit::Source,
                        format!(
                            "{} is larger than the {} limit",
                            quote(&src),
                            human_bytes(FILE_SIZE_BYTES_MAX)
                        ),
                    );
                    summary.failed += 1;
                    continue;
                }
                if let Some(b) = &before {
                    if b.meta.kind == EntryKind::Dir {
                        problems.report(
                            Exit::Destination,
                            format!("cannot replace directory {} with a file", quote(&dst)),
                        );
                        summary.failed += 1;
                        continue;
                    }
                }
                let (dev, ino, nlink) = e.inode;
                if nlink > 1 {
                    if let Some(first) = first_of_inode.get(&(dev, ino)) {
                        plan.links.push((first.clone(), dst));
                        continue;
                    }
                    first_of_inode.insert((dev, ino), dst.clone());
                }
                match file_change(&e.meta, before.as_ref().map(|b| &b.meta), opts.policy) {
                    Change::Copy => plan.push_copy(&src, &dst, e, pid),
                    Change::Skip => {
                        summary.files_unchanged += 1;
                        plan.link_targets_present.insert(dst);
                    }
                    Change::FixMetadata => {
                        summary.files_unchanged += 1;
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
                match copy_symlink(e, &dst, before.as_ref(), pid) {
                    Ok(true) => mark_touched(&mut plan.touched, &dst),
                    Ok(false) => {}
                    Err(err) => {
                        problems.report(
                            Exit::for_write_error(&err),
                            format!("cannot create symlink {}: {err}", quote(&dst)),
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
fn prepare_dir(dst: &Path, before: Option<&Entry>) -> io::Result<DirState> {
    match before.map(|b| b.meta.kind) {
        Some(EntryKind::Dir) => {
            let mode = before.expect("some").meta.mode;
            if mode & 0o700 != 0o700 {
                // Read-only at the destination (from an earlier copy): writable until the
                // final metadata pass puts its mode back.
                set_mode(dst, mode | 0o700)?;
                return Ok(DirState::Unlocked);
            }
            Ok(DirState::Existing)
        }
        Some(EntryKind::File) | Some(EntryKind::Symlink) | Some(EntryKind::Special) => {
            // A non-directory is in the way: replace it, as rsync does.
            std::fs::remove_file(dst)?;
            mkdir(dst)?;
            Ok(DirState::Created)
        }
        None => {
            mkdir(dst)?;
            Ok(DirState::Created)
        }
    }
}

fn mkdir(dst: &Path) -> io::Result<()> {
    // 0700 until the final pass sets the real mode: no one else sees a half-copied tree.
    #[cfg(unix)]
    return std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(dst);
    // Windows has no mode: the directory inherits its parent's ACL.
    #[cfg(windows)]
    std::fs::create_dir(dst)
}

/// Recreates a symlink (never followed) atomically: made under a temporary name, then
/// renamed over the old entry. Returns whether anything changed.
fn copy_symlink(e: &Entry, dst: &Path, before: Option<&Entry>, pid: u32) -> io::Result<bool> {
    let target = e.meta.link_target.as_ref().expect("symlink has a target");
    if let Some(b) = before {
        if b.meta.kind == EntryKind::Dir {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "a directory is in the way",
            ));
        }
        if b.meta.kind == EntryKind::Symlink && b.meta.link_target.as_ref() == Some(target) {
            if (b.meta.mtime_sec, b.meta.mtime_nsec) != (e.meta.mtime_sec, e.meta.mtime_nsec) {
                set_metadata(dst, &e.meta, e.atime, true)?;
            }
            return Ok(false);
        }
    }
    let tmp = temp_path(dst, pid, "l");
    let _ = std::fs::remove_file(&tmp);
    make_symlink(&walk::os(target), &tmp)?;
    if let Err(err) =
        set_metadata(&tmp, &e.meta, e.atime, true).and_then(|_| std::fs::rename(&tmp, dst))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(true)
}

/// Links `other` to `first` (a hard link), atomically replacing what was there.
/// Returns false when it already was the same file.
fn make_hard_link(first: &Path, other: &Path, pid: u32) -> io::Result<bool> {
    std::fs::symlink_metadata(first)?;
    if tpc_engine::os::same_entry(first, other).unwrap_or(false) {
        return Ok(false);
    }
    let tmp = temp_path(other, pid, "h");
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(first, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, other) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}

/// The temporary name, `.tpcx.<pid>.<tag>.tmp`, beside `dst` in its directory: the
/// rename into place stays within one directory and one filesystem.
fn temp_path(dst: &Path, pid: u32, tag: &str) -> PathBuf {
    dst.parent()
        .unwrap_or(Path::new("."))
        .join(format!("{TMP_PREFIX}{pid}.{tag}{TMP_SUFFIX}"))
}

/// Removes temporary files that an interrupted run (whose process is gone) left in `dir`.
fn remove_stale_temps(dir: &Path) {
    let Ok(reader) = std::fs::read_dir(dir) else {
        return;
    };
    for item in reader.flatten() {
        let name = item.file_name();
        let Some(pid) = stale_temp_pid(&walk::bytes(&name)) else {
            continue;
        };
        if !tpc_engine::os::pid_alive(pid) || pid == std::process::id() {
            let _ = std::fs::remove_file(item.path());
        }
    }
}

/// The pid in a temporary file name `.tpcx.<pid>.<tag>.tmp`, if it is one.
pub(crate) fn stale_temp_pid(name: &[u8]) -> Option<u32> {
    let rest = name
        .strip_prefix(TMP_PREFIX.as_bytes())?
        .strip_suffix(TMP_SUFFIX.as_bytes())?;
    let dot = rest.iter().position(|&b| b == b'.')?;
    std::str::from_utf8(&rest[..dot]).ok()?.parse().ok()
}

/// Sets the permission bits of directory `path`, to unlock it for this run. Windows
/// directories have no permission bits (their read-only attribute marks folders that
/// Explorer customized), and the walk reports them writable, so there is nothing to
/// unlock there.
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    return std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(windows)]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Sets mode (unless a symlink) and times of `path`, never following a symlink.
fn set_metadata(path: &Path, meta: &EntryMeta, atime: (i64, u32), is_link: bool) -> io::Result<()> {
    let mode = (!is_link).then_some(meta.mode);
    tpc_engine::os::set_path_meta(path, mode, atime, (meta.mtime_sec, meta.mtime_nsec))
}

/// A symlink at `link` to `target`. Windows records whether a link names a file or a
/// directory: it is made as the kind its target is now, a file link if that is unknown.
fn make_symlink(target: &std::ffi::OsStr, link: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(windows)]
    {
        let resolved = link.parent().unwrap_or(Path::new(".")).join(target);
        if std::fs::metadata(resolved).is_ok_and(|m| m.is_dir()) {
            std::os::windows::fs::symlink_dir(target, link)
        } else {
            std::os::windows::fs::symlink_file(target, link)
        }
    }
}

/// Hashes files on the shards; returns each file's digest or error, in order.
pub fn hash_job(
    files: Vec<JobFile>,
    opts: &CopyOptions,
) -> Result<Vec<Result<FileDigest, String>>, tpc_engine::EngineError> {
    let total: u64 = files.iter().map(|f| f.size_bytes).sum();
    let count = files.len() as u64;
    let progress = Progress::new(opts.shard_count);
    let reporter = Reporter::start(opts.progress, progress.clone(), total, count, "hash");
    let report = tpc_engine::run_job(
        JobSpec {
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
    fn temp_names_are_recognised() {
        assert_eq!(stale_temp_pid(b".tpcx.123.45.tmp"), Some(123));
        assert_eq!(stale_temp_pid(b".tpcx.123.l.tmp"), Some(123));
        assert_eq!(stale_temp_pid(b".tpcx.x.1.tmp"), None);
        assert_eq!(stale_temp_pid(b"tpcx.123.1.tmp"), None);
        assert_eq!(stale_temp_pid(b".tpcx.123.1.tmpx"), None);
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
