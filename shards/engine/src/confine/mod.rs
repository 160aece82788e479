//! Path confinement for the server side of remote transfers: every create, write, read,
//! rename and metadata change happens beneath one root directory and never follows a
//! symlink.
//!
//! Paths come from a peer as `RelPath`s (already free of `..`, absolute paths and NULs).
//! Each OS resolves them its own way (`unix`: openat2 or a walk of `openat(O_NOFOLLOW)`
//! on held directory fds; `windows`: a walk of held directory handles through cap-std,
//! none opened through a reparse point), with the same rules and the same API, so the
//! receiver and the server are written once against `Root` and `Dir`. Errors carry an
//! errno (on Windows, the system error translated to its errno, `os::errno`), which
//! is what the peer is told.
//!
//! Every call here is a blocking syscall; the server runs them off its shard threads
//! (`rt::spawn_blocking`).

use std::fmt;
use std::fs::File;
use std::io;

use tpc_core::limits::TREE_DEPTH_MAX;
use tpc_core::relpath::{PathError, RelPath};

use crate::os;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{fstat, sync_file, sync_filesystem_through, Dir, Root};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{fstat, sync_file, sync_filesystem_through, Dir, Root};

/// Applies permission bits and times to an open file. Setuid and setgid are cleared
/// (`mode & 0o1777`): ownership is not transferred, so the bits would grant a peer's
/// privileges to whoever owns the file here.
pub fn set_file_meta(
    file: &File,
    mode: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    crate::os::set_mode_and_times(file, mode & 0o1777, atime, mtime)
}

/// How [`Root::open`] opens a regular file. Nothing opened here truncates, appends or
/// follows a symlink; anything that is not a regular file is refused with `NotRegular`
/// (a new file cannot be anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// An existing file, for reading.
    Read,
    /// An existing file, for writing in place.
    Write,
    /// An existing file, for writing past the page cache (`direct::AVAILABLE`);
    /// refused with EINVAL where the platform has no such open.
    WriteDirect,
    /// An existing file, to change its mode and times with `set_file_meta` (on Unix the
    /// owner may do that through any fd, so it opens for reading even a read-only file;
    /// on Windows it opens with attribute access only).
    Metadata,
    /// A new file (it must not exist), for writing, created with permission bits
    /// `mode & 0o777`; the final mode, setuid and all, is applied through the open file
    /// with `set_file_meta`.
    CreateNew { mode: u32 },
}

/// What a path turned out to be, or why it was refused.
#[derive(Debug)]
pub enum ConfineError {
    /// The path itself is malformed.
    Path(PathError),
    /// Resolution would have left the root (EXDEV from Linux's `RESOLVE_BENEATH`).
    Escapes {
        rel: RelPath,
    },
    /// A symlink (on Windows any reparse point, a junction too) on the way, or as the
    /// final component where one is not acted on as a link (ELOOP from
    /// `RESOLVE_NO_SYMLINKS` / `O_NOFOLLOW`, or `mkdir` finding one).
    Symlink {
        rel: RelPath,
    },
    NotFound {
        rel: RelPath,
    },
    /// `open` is for regular files; this is a directory, FIFO, socket or device.
    NotRegular {
        rel: RelPath,
    },
    /// The operation needs a final name, and the root has none.
    IsRoot {
        op: &'static str,
    },
    /// A walk reached `TREE_DEPTH_MAX` at this directory; its entries are not listed.
    TooDeep {
        rel: RelPath,
    },
    /// A walk found more than `entries_max` entries beneath `rel`.
    TooManyEntries {
        rel: RelPath,
        entries_max: usize,
    },
    /// A walk found an entry in `dir` whose path cannot be expressed as a `RelPath`
    /// (longer than `PATH_BYTES_MAX`).
    Child {
        dir: RelPath,
        error: PathError,
    },
    /// Any other failure of syscall `op` on `rel`.
    Io {
        op: &'static str,
        rel: RelPath,
        errno: i32,
    },
}

/// What kind of entry a `Stat` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device.
    Other,
}

/// Metadata of an entry itself (never of a symlink's target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    pub size_bytes: u64,
    /// (device, inode): which filesystem, and which file on it. (0, 0) on Windows,
    /// where nothing here needs them.
    pub inode: (u64, u64),
    /// Permission bits, `st_mode & 0o7777` (on Windows, `os::windows_mode`).
    pub mode: u32,
    /// (seconds, nanoseconds)
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
}

/// Bytes of directory entries read per call during a walk (getdents64 on Linux).
pub(crate) const DIRENT_BUFFER_BYTES: usize = 32 * 1024;

/// Why a directory could not be listed in full.
pub(crate) enum ReadNamesError {
    /// More than the caller's room for entries.
    TooMany,
    Errno(i32),
}

impl Dir {
    /// The names in this directory (not `.` or `..`), unsorted; `TooManyEntries` if there
    /// are more than `names_max`.
    pub fn names(&self, names_max: usize) -> Result<Vec<Vec<u8>>, ConfineError> {
        let mut buffer = vec![0u8; DIRENT_BUFFER_BYTES];
        let mut names = Vec::new();
        match self.read_names(&mut buffer, &mut names, names_max) {
            Ok(()) => Ok(names),
            Err(ReadNamesError::TooMany) => Err(ConfineError::TooManyEntries {
                rel: self.rel().clone(),
                entries_max: names_max,
            }),
            Err(ReadNamesError::Errno(errno)) => Err(io_error("read directory", self.rel(), errno)),
        }
    }
}

impl Root {
    /// Makes everything written beneath the root in the directories `places` durable: one
    /// syncfs for each filesystem (device) among them, so a filesystem mounted below the
    /// root is synced as well as the root's own. Each place is a directory and, for a
    /// directory that cannot be opened for reading (a drop-box, mode 1733), a file in it
    /// to sync through instead (without one, such a directory is passed over: nothing here
    /// can sync through it). Off Linux there is no syncfs (files are synced through
    /// their own handles as they are finished), and this is a barrier per filesystem.
    /// Directories that are gone are skipped.
    ///
    /// Only one directory per filesystem is held open at a time, however many `places`
    /// there are.
    pub fn sync_filesystems<'a>(
        &self,
        places: impl IntoIterator<Item = (&'a RelPath, Option<&'a RelPath>)>,
    ) -> Result<(), ConfineError> {
        let mut devices = std::collections::BTreeSet::new();
        for (dir, file) in places {
            let Some(st) = self.lstat(dir)? else { continue };
            if !devices.insert(st.inode.0) {
                continue;
            }
            let through = match (self.dir(dir), file) {
                (Ok(dir), _) => dir.syncfs(),
                (Err(e), Some(file)) if e.errno() == Some(libc::EACCES) => {
                    let f = self.open(file, Access::Read)?;
                    sync_filesystem_through(&f)
                        .map_err(|err| io_error("sync filesystem of", file, os::errno_or_eio(&err)))
                }
                // Nothing here can sync through a directory it may not read.
                (Err(e), None) if e.errno() == Some(libc::EACCES) => {
                    devices.remove(&st.inode.0);
                    Ok(())
                }
                (Err(e), _) => Err(e),
            };
            through?;
        }
        Ok(())
    }
}

impl Root {
    /// Lists `rel` and, if it is a directory, everything beneath it in pre-order (a
    /// directory before its children, children sorted by name), without following or
    /// entering symlinks. The first entry is `rel` itself.
    ///
    /// Problems with single entries (an unreadable directory, a path too long to name,
    /// nesting beyond `TREE_DEPTH_MAX`) are collected and the walk goes on; entries that
    /// vanish while walking are left out. More than `entries_max` entries and errors in
    /// all stop the walk with `TooManyEntries`, so a peer cannot make it allocate without
    /// bound.
    #[allow(clippy::type_complexity)]
    pub fn walk(
        &self,
        rel: &RelPath,
        entries_max: usize,
    ) -> Result<(Vec<(RelPath, Stat)>, Vec<ConfineError>), ConfineError> {
        let too_many = || ConfineError::TooManyEntries {
            rel: rel.clone(),
            entries_max,
        };
        let first = self
            .lstat(rel)?
            .ok_or_else(|| ConfineError::NotFound { rel: rel.clone() })?;
        if entries_max == 0 {
            return Err(too_many());
        }
        let is_dir = first.kind == FileKind::Dir;
        let mut entries = vec![(rel.clone(), first)];
        let mut errors = Vec::new();
        if !is_dir {
            return Ok((entries, errors));
        }
        let mut buffer = vec![0u8; DIRENT_BUFFER_BYTES];
        let mut names = Vec::new();
        // Explicit stack of (directory, depth): deep trees must not recurse on the stack.
        let mut stack = vec![(rel.clone(), rel.depth())];
        while let Some((dir_rel, depth)) = stack.pop() {
            let room = entries_max.saturating_sub(entries.len() + errors.len());
            if depth >= TREE_DEPTH_MAX {
                if room == 0 {
                    return Err(too_many());
                }
                errors.push(ConfineError::TooDeep { rel: dir_rel });
                continue;
            }
            let dir = match self.dir(&dir_rel) {
                Ok(dir) => dir,
                Err(e) => {
                    if room == 0 {
                        return Err(too_many());
                    }
                    errors.push(e);
                    continue;
                }
            };
            names.clear();
            match dir.read_names(&mut buffer, &mut names, room) {
                Ok(()) => {}
                Err(ReadNamesError::TooMany) => return Err(too_many()),
                Err(ReadNamesError::Errno(errno)) => {
                    if room == 0 {
                        return Err(too_many());
                    }
                    errors.push(io_error("read directory", &dir_rel, errno));
                    continue;
                }
            }
            names.sort_unstable();
            let mut subdirs = Vec::new();
            for name in &names {
                // Temporaries and run locks (ours or another run's) are never listed: a
                // peer cannot pull, or learn the name of, a transfer in flight.
                if tpc_core::temp::parse(name).is_some() {
                    continue;
                }
                if entries.len() + errors.len() >= entries_max {
                    return Err(too_many());
                }
                let child = match dir_rel.join(name) {
                    Ok(child) => child,
                    Err(error) => {
                        errors.push(ConfineError::Child {
                            dir: dir_rel.clone(),
                            error,
                        });
                        continue;
                    }
                };
                match dir.lstat(&child) {
                    Ok(Some(st)) => {
                        if st.kind == FileKind::Dir {
                            subdirs.push((child.clone(), depth + 1));
                        }
                        entries.push((child, st));
                    }
                    // Removed since the directory was read: not part of the tree any more.
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            // Reverse so the stack pops them in name order: pre-order per subtree.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok((entries, errors))
    }
}

impl ConfineError {
    /// The OS error this corresponds to, if any: the caller maps ENOSPC and EDQUOT to
    /// "remote disk full", EACCES and EROFS to "not writable".
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConfineError::Io { errno, .. } => Some(*errno),
            ConfineError::Escapes { .. } => Some(libc::EXDEV),
            ConfineError::Symlink { .. } => Some(libc::ELOOP),
            ConfineError::NotFound { .. } => Some(libc::ENOENT),
            ConfineError::Path(_)
            | ConfineError::NotRegular { .. }
            | ConfineError::IsRoot { .. }
            | ConfineError::TooDeep { .. }
            | ConfineError::TooManyEntries { .. }
            | ConfineError::Child { .. } => None,
        }
    }
}

impl From<PathError> for ConfineError {
    fn from(e: PathError) -> Self {
        ConfineError::Path(e)
    }
}

impl fmt::Display for ConfineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfineError::Path(e) => write!(f, "refused path: {e}"),
            ConfineError::Escapes { rel } => write!(f, "'{rel}' leads outside the served root"),
            ConfineError::Symlink { rel } => {
                write!(
                    f,
                    "'{rel}' is or goes through a symlink, which is never followed"
                )
            }
            ConfineError::NotFound { rel } => write!(f, "'{rel}' does not exist"),
            ConfineError::NotRegular { rel } => write!(f, "'{rel}' is not a regular file"),
            ConfineError::IsRoot { op } => write!(f, "cannot {op} the served root itself"),
            ConfineError::TooDeep { rel } => write!(
                f,
                "'{rel}' is nested {TREE_DEPTH_MAX} levels deep; its entries are not listed"
            ),
            ConfineError::TooManyEntries { rel, entries_max } => {
                write!(f, "more than {entries_max} entries beneath '{rel}'")
            }
            ConfineError::Child { dir, error } => {
                write!(f, "an entry of '{dir}' cannot be named: {error}")
            }
            ConfineError::Io { op, rel, errno } => {
                write!(f, "cannot {op} '{rel}': {}", crate::os::errno_text(*errno))
            }
        }
    }
}

impl std::error::Error for ConfineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfineError::Path(e) | ConfineError::Child { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Errors of a resolution beneath the root (openat2, or the walk of held directories).
pub(crate) fn resolve_error(op: &'static str, rel: &RelPath, errno: i32) -> ConfineError {
    match errno {
        libc::EXDEV => ConfineError::Escapes { rel: rel.clone() },
        _ => at_error(op, rel, errno),
    }
}

/// Errors of an *at call on a final name. (EXDEV from renameat is a cross-filesystem
/// rename inside the root, not an escape, so it stays an `Io` error.)
pub(crate) fn at_error(op: &'static str, rel: &RelPath, errno: i32) -> ConfineError {
    match errno {
        libc::ELOOP => ConfineError::Symlink { rel: rel.clone() },
        libc::ENOENT => ConfineError::NotFound { rel: rel.clone() },
        _ => io_error(op, rel, errno),
    }
}

/// An error met resolving `rel`'s parent, reported for `rel` itself: the path that was
/// asked for, not just its parent.
pub(crate) fn for_path(e: ConfineError, rel: &RelPath) -> ConfineError {
    match e {
        ConfineError::Symlink { .. } => ConfineError::Symlink { rel: rel.clone() },
        ConfineError::Escapes { .. } => ConfineError::Escapes { rel: rel.clone() },
        ConfineError::NotFound { .. } => ConfineError::NotFound { rel: rel.clone() },
        ConfineError::Io { op, errno, .. } => ConfineError::Io {
            op,
            rel: rel.clone(),
            errno,
        },
        other => other,
    }
}

/// `rel`'s last name, where `rel` must lie directly in held directory `dir`. The root has
/// no name (`IsRoot`, which a peer's path can lead to); a path in another directory is
/// the caller's bug, which would act on the wrong file, so it is checked in release
/// builds too.
pub(crate) fn name_in<'a>(
    dir: &RelPath,
    op: &'static str,
    rel: &'a RelPath,
) -> Result<&'a [u8], ConfineError> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(ConfineError::IsRoot { op });
    };
    assert!(parent == *dir, "{rel} is not directly in {dir}");
    Ok(name)
}

pub(crate) fn io_error(op: &'static str, rel: &RelPath, errno: i32) -> ConfineError {
    ConfineError::Io {
        op,
        rel: rel.clone(),
        errno,
    }
}

/// The same API on every OS: these run on Unix and, built for Windows, there too.
#[cfg(test)]
mod portable_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "tpcx-confine-portable-{}-{tag}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn create_write_meta_rename_walk_and_remove() {
        let s = Scratch::new("basic");
        let root = Root::open_ambient(&s.0).unwrap();
        root.mkdir_all(&rel("a/b"), 0o755).unwrap();
        root.mkdir(&rel("a/b"), 0o755).unwrap();
        let tmp = rel("a/b/.t");
        let mut f = root.open(&tmp, Access::CreateNew { mode: 0o600 }).unwrap();
        f.write_all(b"hello").unwrap();
        match root.open(&tmp, Access::CreateNew { mode: 0o600 }) {
            Err(e) => assert_eq!(e.errno(), Some(libc::EEXIST), "{e}"),
            Ok(_) => panic!("a second CreateNew of one name succeeded"),
        }
        set_file_meta(&f, 0o640, (1_000, 5), (1_600_000_000, 123_456_700)).unwrap();
        // A read-only file's mode and times change through an `Access::Metadata` open.
        let ro = rel("a/ro");
        let r = root.open(&ro, Access::CreateNew { mode: 0o600 }).unwrap();
        set_file_meta(&r, 0o444, (1, 0), (2, 0)).unwrap();
        drop(r);
        let r = root.open(&ro, Access::Metadata).unwrap();
        set_file_meta(&r, 0o644, (3, 0), (4, 0)).unwrap();
        assert_eq!(fstat(&r).unwrap().mtime, (4, 0));
        assert!(crate::os::mode_matches(fstat(&r).unwrap().mode, 0o644));
        drop(r);
        root.remove_file(&ro).unwrap();
        sync_file(&f).unwrap();
        let st = fstat(&f).unwrap();
        assert_eq!((st.kind, st.size_bytes), (FileKind::File, 5));
        assert_eq!(st.mtime, (1_600_000_000, 123_456_700));
        drop(f);

        let dir = root.dir(&rel("a/b")).unwrap();
        let done = rel("a/b/done");
        dir.rename(&tmp, &done).unwrap();
        dir.sync().unwrap();
        assert_eq!(dir.names(10).unwrap(), vec![b"done".to_vec()]);
        assert!(matches!(
            dir.names(0),
            Err(ConfineError::TooManyEntries { .. })
        ));
        assert_eq!(dir.lstat(&tmp).unwrap(), None);
        assert_eq!(root.lstat(&done).unwrap().unwrap().size_bytes, 5);
        let mut text = String::new();
        root.open(&done, Access::Read)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");

        let (entries, errors) = root.walk(&RelPath::root(), 100).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<String> = entries.iter().map(|(r, _)| r.to_string()).collect();
        assert_eq!(names, [".", "a", "a/b", "a/b/done"]);
        assert!(matches!(
            root.open(&rel("a"), Access::Read),
            Err(ConfineError::NotRegular { .. })
        ));
        assert!(matches!(
            root.open(&rel("a/missing"), Access::Read),
            Err(ConfineError::NotFound { .. })
        ));
        root.set_dir_meta(&rel("a"), 0o755, (7, 0), (1_500_000_000, 0))
            .unwrap();
        assert_eq!(
            root.lstat(&rel("a")).unwrap().unwrap().mtime,
            (1_500_000_000, 0)
        );
        dir.remove_file(&done).unwrap();
        assert_eq!(root.lstat(&done).unwrap(), None);
        root.fsync_dir(&rel("a")).unwrap();
        root.syncfs().unwrap();
        assert!(matches!(
            root.remove_file(&RelPath::root()),
            Err(ConfineError::IsRoot { .. })
        ));
    }

    /// Names that Windows would read as structure (a separator, a drive or stream, a
    /// wildcard, a device) or rewrite (a trailing dot or space) never reach a call there;
    /// on Unix they are ordinary names.
    #[test]
    fn names_windows_reads_as_structure() {
        let s = Scratch::new("names");
        let root = Root::open_ambient(&s.0).unwrap();
        for name in [
            "a\\b",
            "c:x",
            "q?",
            "p|q",
            "CON",
            "nul.txt",
            "Com1.tar.gz",
            "dot.",
            "sp ",
        ] {
            let r = root.open(&rel(name), Access::CreateNew { mode: 0o600 });
            if cfg!(windows) {
                match r {
                    Err(e) => assert_eq!(e.errno(), Some(libc::EINVAL), "{name}: {e}"),
                    Ok(_) => panic!("{name} was created"),
                }
            } else {
                r.unwrap();
            }
        }
        if cfg!(windows) {
            assert!(std::fs::read_dir(&s.0).unwrap().next().is_none());
        }
    }
}
