//! The run lock and the sweep of stale temporary files: a run's temporaries are removed by
//! another run only once the first is over, whoever and wherever it was.
//!
//! Names and their check are `tpc_core::temp`'s. A run creates and locks (`flock`, or
//! `LockFileEx` on Windows) `.tpcx.<token>.lock` in its destination root before it creates
//! any temporary, and removes it after its last rename. A sweep meeting another run's
//! temporary looks for that run's lock in the temporary's directory and every directory
//! above it: a lock held means alive (kept); a lock that can be taken, or none at all,
//! means over (removed). Locks are kernel state (and NFS lock state across hosts), so this
//! holds across PID namespaces, where `kill(pid, 0)` — what earlier versions asked — names
//! another process or none. A run whose root is not writable has no lock; its temporaries
//! (in writable directories below) may then be swept by a concurrent run, and its renames
//! fail loudly, because temporaries are created once with `O_EXCL` and never re-created.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tpc_core::relpath::RelPath;
use tpc_core::temp::{self, Ours, RunToken};

use crate::confine::{Access, ConfineError, Dir, Root};

/// Directories with more names than this are not swept: their stale temporaries stay
/// until a run finds the directory smaller, and never take a live file's name.
pub const SWEEP_NAMES_MAX: usize = 1 << 20;

/// Tries to make the run lock when sweeps of other runs keep removing it.
const LOCK_CREATE_TRIES: u32 = 4;

/// A run's lock in its destination root; removed and released on drop.
pub struct RunLock {
    token: RunToken,
    held: Option<(Arc<Root>, RelPath, File)>,
}

/// This process's token: every temporary it writes, in any root, carries it. A process
/// is one run (a copy, or a server), so one token serves all its sessions.
pub fn process_token() -> RunToken {
    static TOKEN: std::sync::OnceLock<RunToken> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(|| new_token().expect("the OS random source works"))
}

impl RunLock {
    /// Creates and locks this process's lock file in `root`.
    pub fn acquire(root: Arc<Root>) -> io::Result<RunLock> {
        Self::acquire_as(root, process_token())
    }

    /// Creates and locks run `token`'s lock file in `root`. The name is taken only if
    /// this process already holds a lock there, or someone guessed the token.
    fn acquire_as(root: Arc<Root>, token: RunToken) -> io::Result<RunLock> {
        let rel = RelPath::parse(&temp::lock_name(token)).expect("a valid name");
        for _ in 0..LOCK_CREATE_TRIES {
            let file = without_trace(&root, || root.open(&rel, Access::CreateNew { mode: 0o600 }))
                .map_err(confine_io)?;
            // Blocking: a sweep may hold it for a moment to find out whether it is stale.
            file.lock()?;
            // A sweep that took it in that moment removed it as stale: make it again.
            if linked(&root, &rel, &file) {
                return Ok(RunLock {
                    token,
                    held: Some((root, rel, file)),
                });
            }
        }
        Err(io::Error::other(format!(
            "the run lock {rel} was removed {LOCK_CREATE_TRIES} times while being made"
        )))
    }

    /// A run without a lock (its root is not writable).
    pub fn unlocked() -> RunLock {
        RunLock {
            token: process_token(),
            held: None,
        }
    }

    pub fn token(&self) -> RunToken {
        self.token
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some((root, rel, file)) = self.held.take() {
            // Removed while still locked: nobody can take a lock on a name that is gone.
            let _ = without_trace(&root, || root.remove_file(&rel));
            drop(file);
        }
    }
}

/// How long another run's temporary must have gone unmodified before a sweep that
/// finds no lock for its run removes it. No lock is found for a run that ended without
/// removing a temporary (rare), and for a live run whose root this sweep cannot see: one
/// that reached the same directory through another mount (a bind mount, a container
/// volume, an NFS export of a subdirectory). A live run writes its temporaries, which
/// keeps their mtime fresh.
pub const SWEEP_UNLOCKED_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What a sweep found out about another run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Its lock is held.
    Alive,
    /// Its lock exists and could be taken: it died.
    Over,
    /// No lock in the directory or any above it (see `SWEEP_UNLOCKED_AGE`).
    NoLock,
}

/// Finds other runs' temporaries that are over, directory by directory.
pub struct Sweeper {
    own: RunToken,
    root: Arc<Root>,
    /// The root's path, for looking up locks above the root.
    root_path: PathBuf,
    /// Runs found alive or over, so each lock is looked at once per sweep.
    verdicts: HashMap<RunToken, Run>,
}

impl Sweeper {
    /// A sweeper for run `own` working beneath `root`, which is at `root_path`.
    pub fn new(own: RunToken, root: Arc<Root>, root_path: &Path) -> Sweeper {
        Sweeper {
            own,
            root,
            root_path: std::fs::canonicalize(root_path).unwrap_or_else(|_| root_path.into()),
            verdicts: HashMap::new(),
        }
    }

    /// Removes from `dir` the temporaries of runs that are over, and their locks. Lists
    /// at most `names_max` names (a larger directory is left alone). Returns how many
    /// entries it removed.
    pub fn sweep(&mut self, dir: &Dir, names_max: usize) -> usize {
        let Ok(names) = dir.names(names_max) else {
            return 0;
        };
        let mut removed = 0;
        for name in names {
            let Some(ours) = temp::parse(&name) else {
                continue;
            };
            let Ok(rel) = dir.rel().join(&name) else {
                continue;
            };
            let gone = match ours {
                Ours::Temp(token) if token != self.own => {
                    let stale = match self.run(token, dir.rel()) {
                        Run::Alive => false,
                        Run::Over => true,
                        Run::NoLock => unmodified_for(dir, &rel, SWEEP_UNLOCKED_AGE),
                    };
                    stale && dir.remove_file(&rel).is_ok()
                }
                Ours::Lock(token) if token != self.own => {
                    let over = remove_stale_lock(dir, &rel);
                    if over {
                        // Its temporaries, listed after its lock, are then known stale.
                        self.verdicts.insert(token, Run::Over);
                    }
                    over
                }
                _ => false,
            };
            removed += usize::from(gone);
        }
        removed
    }

    /// Whether run `token` still runs: its lock, in `dir_rel` or a directory above it,
    /// is held. Beneath the root the lock is looked up through the held root (never
    /// through a symlink someone swapped in); above it, by the root's own path.
    fn run(&mut self, token: RunToken, dir_rel: &RelPath) -> Run {
        if let Some(&run) = self.verdicts.get(&token) {
            return run;
        }
        let name = temp::lock_name(token);
        let mut at = Some(dir_rel.clone());
        let mut run = None;
        while let Some(dir) = at {
            let Ok(lock) = dir.join(&name) else { break };
            match self.root.open(&lock, Access::Read) {
                Ok(file) => {
                    run = Some(lock_verdict(&file));
                    break;
                }
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                // A lock we may not open (or not a file): its run may be alive.
                Err(_) => {
                    run = Some(Run::Alive);
                    break;
                }
            }
            at = dir.parent();
        }
        let lock = crate::os::path_of(&name);
        let mut above = self.root_path.clone();
        while run.is_none() && above.pop() {
            match open_no_follow(&above.join(&lock)) {
                Ok(file) => run = Some(lock_verdict(&file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => run = Some(Run::Alive),
            }
        }
        let run = run.unwrap_or(Run::NoLock);
        if run != Run::NoLock {
            self.verdicts.insert(token, run);
        }
        run
    }
}

/// Alive if another holds the lock on `file`; over if it can be taken (and is released
/// again at once).
fn lock_verdict(file: &File) -> Run {
    match file.try_lock() {
        Ok(()) => Run::Over,
        // WouldBlock: held. Any other error: cannot tell, so keep its files.
        Err(_) => Run::Alive,
    }
}

/// Removes the lock file `rel` in `dir` if its run is over: taken, checked to be still
/// the file at that name (another sweep may have removed it and its run made a new one),
/// and removed while held, so that a run only now locking it finds it unlinked and makes
/// another.
fn remove_stale_lock(dir: &Dir, rel: &RelPath) -> bool {
    let Ok(file) = dir.open(rel, Access::Read) else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    let same = match (dir.lstat(rel), crate::confine::fstat(&file)) {
        (Ok(Some(by_name)), Ok(held)) => by_name.inode == held.inode,
        _ => false,
    };
    same && dir.remove_file(rel).is_ok()
}

/// Whether `rel` in `dir` was last modified at least `age` ago.
fn unmodified_for(dir: &Dir, rel: &RelPath, age: Duration) -> bool {
    let Ok(Some(st)) = dir.lstat(rel) else {
        return false;
    };
    let Ok(mtime) = crate::os::system_time(st.mtime) else {
        return false;
    };
    SystemTime::now()
        .duration_since(mtime)
        .is_ok_and(|elapsed| elapsed >= age)
}

/// Runs `f` (which adds or removes the lock in `root`) and puts the root's times back as
/// they were: a run's lock leaves no trace on the tree, so an unchanged tree stays
/// unchanged and a copied root keeps the times the copy gave it. (Setting times needs
/// ownership of the root; where that is refused, the times moved as for any new name.)
fn without_trace<T>(root: &Root, f: impl FnOnce() -> T) -> T {
    let before = root.lstat(&RelPath::root()).ok().flatten();
    let result = f();
    if let Some(st) = before {
        let _ = root.set_root_times(st.atime, st.mtime);
    }
    result
}

/// Whether `rel` in `root` is still the file `file` (not removed, not replaced).
fn linked(root: &Root, rel: &RelPath, file: &File) -> bool {
    let Ok(by_name) = root.open(rel, Access::Read) else {
        return false;
    };
    crate::os::same_file(&by_name, file).unwrap_or(false)
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    options.open(path)
}

fn new_token() -> io::Result<RunToken> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(RunToken(u64::from_le_bytes(bytes)))
}

fn confine_io(e: ConfineError) -> io::Error {
    match e.errno() {
        Some(errno) => io::Error::new(io::Error::from_raw_os_error(errno).kind(), e.to_string()),
        None => io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tpcx-temp-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir
    }

    #[test]
    fn a_live_runs_temporaries_survive_and_a_finished_runs_go() {
        let path = scratch("sweep");
        let root = Arc::new(Root::open_ambient(&path).unwrap());
        let live = RunLock::acquire(root.clone()).unwrap();
        let gone = RunLock::acquire_as(root.clone(), RunToken(99)).unwrap();
        let gone_token = gone.token();
        drop(gone);
        // A run that crashed: its lock is still there, but nobody holds it.
        let crashed = RunToken(7);
        std::fs::write(
            path.join(crate::os::path_of(&temp::lock_name(crashed))),
            b"",
        )
        .unwrap();
        let name = |t: RunToken| crate::os::path_of(&temp::temp_name(t, "1"));
        let sub = path.join("sub");
        for t in [live.token(), gone_token, crashed] {
            std::fs::write(sub.join(name(t)), b"x").unwrap();
        }
        // A run that crashed with its lock beside its temporary: whichever the sweep
        // lists first, both go.
        let beside = RunToken(13);
        std::fs::write(sub.join(crate::os::path_of(&temp::lock_name(beside))), b"").unwrap();
        std::fs::write(sub.join(name(beside)), b"x").unwrap();
        // A user's file named as earlier versions named temporaries.
        std::fs::write(sub.join(".tpcx.999999.7.tmp"), b"mine").unwrap();

        // A run whose lock this sweep cannot find (it reached the tree through another
        // mount): its fresh temporary stays, an old one goes.
        let elsewhere = RunToken(11);
        let old = RunToken(12);
        for t in [elsewhere, old] {
            std::fs::write(sub.join(name(t)), b"x").unwrap();
        }
        let day_ago = SystemTime::now() - SWEEP_UNLOCKED_AGE - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(sub.join(name(old)))
            .unwrap()
            .set_modified(day_ago)
            .unwrap();

        let me = RunToken(5);
        let mut sweeper = Sweeper::new(me, root.clone(), &path);
        let dir = root.dir(&RelPath::parse(b"sub").unwrap()).unwrap();
        assert_eq!(sweeper.sweep(&dir, 100), 4);
        assert!(!sub.join(name(beside)).exists());
        assert!(sub.join(name(elsewhere)).exists());
        assert!(!sub.join(name(old)).exists());
        std::fs::remove_file(sub.join(name(elsewhere))).unwrap();
        assert!(sub.join(name(live.token())).exists());
        // A run that ended, lock and all, but left a temporary: kept until it is old.
        assert!(sub.join(name(gone_token)).exists());
        std::fs::remove_file(sub.join(name(gone_token))).unwrap();
        assert!(!sub.join(name(crashed)).exists());
        assert!(sub.join(".tpcx.999999.7.tmp").exists());
        // The crashed run's lock goes when its own directory is swept; the live one stays.
        let top = root.dir(&RelPath::root()).unwrap();
        assert_eq!(Sweeper::new(me, root.clone(), &path).sweep(&top, 100), 1);
        let lock_of = |t| path.join(crate::os::path_of(&temp::lock_name(t)));
        assert!(lock_of(live.token()).exists());
        assert!(!lock_of(crashed).exists());
        drop(live);
        assert!(std::fs::read_dir(&path)
            .unwrap()
            .all(|e| e.unwrap().file_name() == "sub"));
        let _ = std::fs::remove_dir_all(&path);
    }
}
