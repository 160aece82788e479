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

/// Finds other runs' temporaries that are over, directory by directory.
pub struct Sweeper {
    own: RunToken,
    /// The root's path, for looking up locks above the root.
    root_path: PathBuf,
    /// Runs found alive or over, so each lock is looked at once per sweep.
    verdicts: HashMap<RunToken, bool>,
}

impl Sweeper {
    /// A sweeper for run `own` working beneath the root at `root_path`.
    pub fn new(own: RunToken, root_path: &Path) -> Sweeper {
        Sweeper {
            own,
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
                    !self.alive(token, dir.rel()) && dir.remove_file(&rel).is_ok()
                }
                // Taken, then removed while held: a run that is only now locking it
                // finds it unlinked and makes another.
                Ours::Lock(token) if token != self.own => dir
                    .open(&rel, Access::Read)
                    .is_ok_and(|file| file.try_lock().is_ok() && dir.remove_file(&rel).is_ok()),
                _ => false,
            };
            removed += usize::from(gone);
        }
        removed
    }

    /// Whether run `token` still runs: its lock, in `dir_rel` or a directory above,
    /// is held.
    fn alive(&mut self, token: RunToken, dir_rel: &RelPath) -> bool {
        if let Some(&alive) = self.verdicts.get(&token) {
            return alive;
        }
        let lock = crate::os::path_of(&temp::lock_name(token));
        let mut at = self.root_path.join(crate::os::path_of(dir_rel.as_bytes()));
        let alive = loop {
            match open_no_follow(&at.join(&lock)) {
                Ok(file) => match file.try_lock() {
                    Ok(()) => break false,
                    Err(std::fs::TryLockError::WouldBlock) => break true,
                    // Cannot tell: keep its files.
                    Err(std::fs::TryLockError::Error(_)) => break true,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A lock we may not open: its run may be alive.
                Err(_) => break true,
            }
            if !at.pop() {
                break false;
            }
        };
        self.verdicts.insert(token, alive);
        alive
    }
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
        // A user's file named as earlier versions named temporaries.
        std::fs::write(sub.join(".tpcx.999999.7.tmp"), b"mine").unwrap();

        let me = RunToken(5);
        let mut sweeper = Sweeper::new(me, &path);
        let dir = root.dir(&RelPath::parse(b"sub").unwrap()).unwrap();
        assert_eq!(sweeper.sweep(&dir, 100), 2);
        assert!(sub.join(name(live.token())).exists());
        assert!(!sub.join(name(gone_token)).exists());
        assert!(!sub.join(name(crashed)).exists());
        assert!(sub.join(".tpcx.999999.7.tmp").exists());
        // The crashed run's lock goes when its own directory is swept; the live one stays.
        let top = root.dir(&RelPath::root()).unwrap();
        assert_eq!(Sweeper::new(me, &path).sweep(&top, 100), 1);
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
