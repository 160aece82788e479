//! Path confinement on Unix: every path is resolved beneath the held root fd without
//! following a symlink anywhere.
//!
//! On Linux each path is resolved by `openat2(2)` relative to the held root fd with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so the kernel itself
//! refuses a symlink anywhere on the way, even one swapped in by a concurrent writer after
//! we looked. Operations on a final name (mkdir, rename, symlink, unlink, stat, utimes)
//! resolve the *parent* that way and then act on the last component with the `*at` call,
//! which never follows a final symlink: the link itself is what gets renamed, removed or
//! stat'ed. Metadata of files and directories is applied through an open fd.
//!
//! On Linux, 5.6 or later (openat2) is required; `Root::open_ambient` checks it once.
//! Elsewhere (no openat2) the same rules hold by walking one name at a time with
//! `openat(O_NOFOLLOW)` from held directory fds (`walk_open`); directory handles there
//! are read-only opens, so every directory on the way must also be readable.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tpc_core::limits::PATH_BYTES_MAX;
use tpc_core::relpath::{PathError, RelPath};

use crate::os;

use super::{
    at_error, for_path, io_error, name_in, resolve_error, Access, ConfineError, FileKind,
    ReadNamesError, Stat,
};

/// The directory a server serves; every path is resolved beneath it.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
}

/// How often a resolution that the kernel could not vouch for (EAGAIN) is retried.
#[cfg(target_os = "linux")]
const OPENAT2_EAGAIN_RETRIES: u32 = 8;

impl Root {
    /// Opens the served directory. The path is the operator's (the "ambient" filesystem,
    /// as cap-std calls it), so it may go through symlinks; everything beneath it may not.
    /// (Not `open`: that name is the method that opens files beneath the root.)
    pub fn open_ambient(path: &Path) -> io::Result<Root> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in root path"))?;
        // A handle, not a read: everything beneath is reached by *at calls, which need
        // only search permission, so an execute-only source directory or a drop-box
        // destination (mode 1733) can be a root. Calls that need a readable fd (syncfs,
        // times, listing) open the root again for reading when they run.
        // SAFETY: `c` is a valid C string; the returned fd is checked before use.
        let fd =
            unsafe { libc::open(c.as_ptr(), DIR_HANDLE | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        // Find out now, not on the first client's file, whether openat2 exists (Linux 5.6,
        // and not blocked by a seccomp profile).
        #[cfg(target_os = "linux")]
        openat2(dir.as_fd(), c".", DIR_HANDLE | libc::O_DIRECTORY, 0).map_err(|errno| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "openat2 is unavailable (Linux 5.6 or later is needed to confine paths): {}",
                    io::Error::from_raw_os_error(errno)
                ),
            )
        })?;
        Ok(Root { dir })
    }

    /// Opens a regular file beneath the root as `access` says. Anything that is not a
    /// regular file is refused with `NotRegular`, without blocking on a FIFO.
    pub fn open(&self, rel: &RelPath, access: Access) -> Result<File, ConfineError> {
        let (flags, mode) = open_flags(access, rel)?;
        self.open_flags(rel, flags, mode).map(File::from)
    }

    /// `open` with raw open(2) flags; `O_CLOEXEC | O_NOFOLLOW` are always added, and with
    /// `O_CREAT`, `mode & 0o777` is the creation mode.
    fn open_flags(&self, rel: &RelPath, flags: i32, mode: u32) -> Result<OwnedFd, ConfineError> {
        open_file(self.dir.as_fd(), &c_path(rel)?, rel, flags, mode)
    }

    /// Opens directory `rel` beneath the root (the root itself for the empty path) and
    /// holds it, for work on many entries directly in it.
    pub fn dir(&self, rel: &RelPath) -> Result<Dir, ConfineError> {
        // Read access, not a bare handle: `Dir::sync` fsyncs through this fd.
        let fd = self.open_dir_with("open directory", rel, libc::O_RDONLY)?;
        Ok(Dir {
            fd,
            rel: rel.clone(),
        })
    }

    /// Creates directory `rel`. Succeeds if a real directory is already there; refuses a
    /// symlink (even to a directory) or anything else in the way.
    pub fn mkdir(&self, rel: &RelPath, mode: u32) -> Result<(), ConfineError> {
        const OP: &str = "mkdir";
        if rel.is_root() {
            return Ok(());
        }
        let (parent, name) = self.parent_of(OP, rel)?;
        // SAFETY: valid fd and C string.
        let r = unsafe { libc::mkdirat(parent.as_fd().as_raw_fd(), name.as_ptr(), dir_mode(mode)) };
        match cvt(r) {
            Ok(_) => Ok(()),
            Err(libc::EEXIST) => match stat_at(parent.as_fd(), &name) {
                Ok(st) if st.kind == FileKind::Dir => Ok(()),
                Ok(st) if st.kind == FileKind::Symlink => {
                    Err(ConfineError::Symlink { rel: rel.clone() })
                }
                Ok(_) => Err(io_error(OP, rel, libc::EEXIST)),
                Err(errno) => Err(at_error(OP, rel, errno)),
            },
            Err(errno) => Err(at_error(OP, rel, errno)),
        }
    }

    /// Creates `rel` and every missing directory above it, each as `mkdir` would.
    pub fn mkdir_all(&self, rel: &RelPath, mode: u32) -> Result<(), ConfineError> {
        const OP: &str = "mkdir";
        // Usually everything exists already: one resolution settles it.
        if self.open_dir_with(OP, rel, DIR_HANDLE).is_ok() {
            return Ok(());
        }
        // Step down one name at a time on held directory fds, each step again through
        // openat2, so a symlink met (or swapped in) on the way is refused, never followed.
        let mut dir = DirFd::Root(self.dir.as_fd());
        let mut prefix = RelPath::root();
        for name in rel.components() {
            prefix = prefix.join(name)?;
            let c_name = c_name(name, &prefix)?;
            // SAFETY: valid fd and C string.
            let r =
                unsafe { libc::mkdirat(dir.as_fd().as_raw_fd(), c_name.as_ptr(), dir_mode(mode)) };
            match cvt(r) {
                Ok(_) | Err(libc::EEXIST) => {}
                Err(errno) => return Err(at_error(OP, &prefix, errno)),
            }
            let next = openat2(dir.as_fd(), &c_name, dir_flags(DIR_HANDLE), 0)
                .map_err(|errno| resolve_error(OP, &prefix, errno))?;
            dir = DirFd::Owned(next);
        }
        Ok(())
    }

    /// Renames `from` to `to` (replacing `to` as rename(2) does). A symlink at either end
    /// is renamed or replaced as a link; a symlink above either end is refused.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "rename";
        let (from_dir, from_name) = self.parent_of(OP, from)?;
        let (to_dir, to_name) = self.parent_of(OP, to)?;
        rename_at(
            (from_dir.as_fd(), &from_name, from),
            (to_dir.as_fd(), &to_name, to),
        )
    }

    /// Creates a symlink at `at` pointing to `target`. The target is stored as given and
    /// never resolved here; it may point anywhere, because nothing here follows it.
    pub fn symlink(&self, target: &[u8], at: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "symlink";
        let target = CString::new(target).map_err(|_| io_error(OP, at, libc::EINVAL))?;
        let (parent, name) = self.parent_of(OP, at)?;
        // SAFETY: valid fd and C strings.
        let r =
            unsafe { libc::symlinkat(target.as_ptr(), parent.as_fd().as_raw_fd(), name.as_ptr()) };
        cvt(r).map(drop).map_err(|errno| at_error(OP, at, errno))
    }

    /// Removes a file or symlink (not a directory).
    pub fn remove_file(&self, rel: &RelPath) -> Result<(), ConfineError> {
        let (parent, name) = self.parent_of("remove", rel)?;
        unlink_at(parent.as_fd(), &name, rel)
    }

    /// Removes an empty directory (`--delete`): never a symlink to one, never anything
    /// outside the root.
    pub fn remove_dir(&self, rel: &RelPath) -> Result<(), ConfineError> {
        let (parent, name) = self.parent_of("remove", rel)?;
        // SAFETY: valid fd and C string.
        let r = unsafe {
            libc::unlinkat(
                parent.as_fd().as_raw_fd(),
                name.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
        cvt(r)
            .map(drop)
            .map_err(|errno| at_error("remove directory", rel, errno))
    }

    /// Metadata of the entry itself; `None` if it (or a directory above it) does not exist.
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<Stat>, ConfineError> {
        const OP: &str = "stat";
        if rel.is_root() {
            return fstat_fd(self.dir.as_fd())
                .map(Some)
                .map_err(|errno| io_error(OP, rel, errno));
        }
        let (parent, name) = match self.parent_of(OP, rel) {
            Ok(found) => found,
            Err(ConfineError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(parent.as_fd(), &name, rel)
    }

    /// The target of symlink `rel`, as raw bytes.
    pub fn read_link(&self, rel: &RelPath) -> Result<Vec<u8>, ConfineError> {
        const OP: &str = "readlink";
        let (parent, name) = self.parent_of(OP, rel)?;
        // Linux targets are shorter than PATH_MAX; one byte more tells truncation apart.
        let mut buf = vec![0u8; PATH_BYTES_MAX + 1];
        // SAFETY: valid fd, C string and a buffer of the length passed.
        let n = unsafe {
            libc::readlinkat(
                parent.as_fd().as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(at_error(OP, rel, last_errno()));
        }
        let n = n as usize;
        if n >= buf.len() {
            return Err(io_error(OP, rel, libc::ENAMETOOLONG));
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Sets the times of the entry itself (for a symlink: the link, not its target).
    pub fn set_symlink_times(
        &self,
        rel: &RelPath,
        atime: (i64, u32),
        mtime: (i64, u32),
    ) -> Result<(), ConfineError> {
        const OP: &str = "set times of";
        let (parent, name) = self.parent_of(OP, rel)?;
        let times = [crate::os::timespec(atime), crate::os::timespec(mtime)];
        // SAFETY: valid fd, C string and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(
                parent.as_fd().as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        cvt(r).map(drop).map_err(|errno| at_error(OP, rel, errno))
    }

    /// Applies mode (setuid/setgid cleared, as for files) and times to directory `rel`
    /// through an fd opened beneath the root. The directory is opened for reading, so call
    /// this while its mode still allows that — after its children are written, before a
    /// restrictive mode is in place, which is when the copy applies directory modes anyway.
    pub fn set_dir_meta(
        &self,
        rel: &RelPath,
        mode: u32,
        atime: (i64, u32),
        mtime: (i64, u32),
    ) -> Result<(), ConfineError> {
        let dir = File::from(self.open_dir_with("set metadata of", rel, libc::O_RDONLY)?);
        super::set_file_meta(&dir, mode, atime, mtime)
            .map_err(|e| io_error("set metadata of", rel, os::errno_or_eio(&e)))
    }

    /// Sets the times of the root directory itself (its mode is left alone).
    pub fn set_root_times(&self, atime: (i64, u32), mtime: (i64, u32)) -> Result<(), ConfineError> {
        let root = self.open_dir_with("set times of", &RelPath::root(), libc::O_RDONLY)?;
        let times = [crate::os::timespec(atime), crate::os::timespec(mtime)];
        // SAFETY: valid fd and a two-element timespec array.
        let r = unsafe { libc::futimens(root.as_raw_fd(), times.as_ptr()) };
        cvt(r)
            .map(drop)
            .map_err(|errno| io_error("set times of", &RelPath::root(), errno))
    }

    /// Sets only the permission bits of directory `rel` (to unlock a read-only
    /// directory for the run), through an fd opened beneath the root.
    pub fn set_dir_mode(&self, rel: &RelPath, mode: u32) -> Result<(), ConfineError> {
        const OP: &str = "set mode of";
        // A handle, not a read: the directory may be write-only (0300) or have no
        // permissions at all, which is why it is being unlocked.
        let dir = self.open_dir_with(OP, rel, DIR_HANDLE)?;
        chmod_fd(dir.as_fd(), mode & 0o7777).map_err(|errno| io_error(OP, rel, errno))
    }

    /// Makes `to` a new hard link of the file `from` (never of a symlink's target: no
    /// `AT_SYMLINK_FOLLOW`); `to` must not exist.
    pub fn hard_link(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "link";
        let (from_dir, from_name) = self.parent_of(OP, from)?;
        let (to_dir, to_name) = self.parent_of(OP, to)?;
        // SAFETY: valid fds and C strings.
        let r = unsafe {
            libc::linkat(
                from_dir.as_fd().as_raw_fd(),
                from_name.as_ptr(),
                to_dir.as_fd().as_raw_fd(),
                to_name.as_ptr(),
                0,
            )
        };
        cvt(r).map(drop).map_err(|errno| at_error(OP, to, errno))
    }

    /// Makes directory `rel`'s entries (names created, renamed, removed) durable.
    pub fn fsync_dir(&self, rel: &RelPath) -> Result<(), ConfineError> {
        let fd = self.open_dir_with("sync", rel, libc::O_RDONLY)?;
        sync_dir(fd.as_fd(), rel)
    }

    /// Makes everything written to the root's filesystem durable (one call per batch).
    /// Off Linux there is no syncfs: files are synced through their own fds as they are
    /// finished, and this only syncs the root directory (F_FULLFSYNC on macOS, which
    /// also flushes the drive's cache for what was written before).
    pub fn syncfs(&self) -> Result<(), ConfineError> {
        self.dir(&RelPath::root())?.syncfs()
    }

    /// openat2 of directory `rel` (the root for the empty path) with `access` (O_RDONLY
    /// or O_PATH), never through or onto a symlink.
    fn open_dir_with(
        &self,
        op: &'static str,
        rel: &RelPath,
        access: i32,
    ) -> Result<OwnedFd, ConfineError> {
        let path = c_path(rel)?;
        openat2(self.dir.as_fd(), &path, dir_flags(access), 0)
            .map_err(|errno| resolve_error(op, rel, errno))
    }

    /// The directory holding `rel`, resolved beneath the root, and `rel`'s last name.
    fn parent_of(
        &self,
        op: &'static str,
        rel: &RelPath,
    ) -> Result<(DirFd<'_>, CString), ConfineError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(ConfineError::IsRoot { op });
        };
        let name = c_name(name, rel)?;
        if parent.is_root() {
            return Ok((DirFd::Root(self.dir.as_fd()), name));
        }
        // O_PATH: the *at calls need only a handle, not read permission on the directory.
        let dir = self
            .open_dir_with(op, &parent, DIR_HANDLE)
            .map_err(|e| for_path(e, rel))?;
        Ok((DirFd::Owned(dir), name))
    }
}

/// A directory beneath the root, held open by [`Root::dir`]: each entry directly in it is
/// reached with one `*at` call on its fd by name, instead of resolving the entry's whole
/// path beneath the root again. For a receiver that creates, renames and stats thousands
/// of files in a few directories. The same rules hold as for `Root`'s methods: the final
/// name is never followed, and the directory itself was resolved without symlinks. (A
/// directory moved elsewhere while held is acted on where it now is, as with any held
/// fd; only a local user who can write the tree could move it.)
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    rel: RelPath,
}

impl Dir {
    /// The directory's path beneath the root.
    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    /// `rel`'s name as a C string, where `rel` lies directly in this directory
    /// ([`name_in`]).
    fn name_of(&self, op: &'static str, rel: &RelPath) -> Result<CString, ConfineError> {
        c_name(name_in(&self.rel, op, rel)?, rel)
    }

    /// As [`Root::open`], for `rel` directly in this directory.
    pub fn open(&self, rel: &RelPath, access: Access) -> Result<File, ConfineError> {
        let (flags, mode) = open_flags(access, rel)?;
        self.open_flags(rel, flags, mode).map(File::from)
    }

    /// `open` with raw open(2) flags, as [`Root::open_flags`].
    fn open_flags(&self, rel: &RelPath, flags: i32, mode: u32) -> Result<OwnedFd, ConfineError> {
        let name = self.name_of("open", rel)?;
        open_file(self.fd.as_fd(), &name, rel, flags, mode)
    }

    /// As [`Root::lstat`], for `rel` directly in this directory.
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<Stat>, ConfineError> {
        lstat_at(self.fd.as_fd(), &self.name_of("stat", rel)?, rel)
    }

    /// As [`Root::rename`], for `from` and `to` both directly in this directory.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        let from_name = self.name_of("rename", from)?;
        let to_name = self.name_of("rename", to)?;
        let fd = self.fd.as_fd();
        rename_at((fd, &from_name, from), (fd, &to_name, to))
    }

    /// As [`Root::remove_file`], for `rel` directly in this directory.
    pub fn remove_file(&self, rel: &RelPath) -> Result<(), ConfineError> {
        unlink_at(self.fd.as_fd(), &self.name_of("remove", rel)?, rel)
    }

    /// Makes this directory's entries (names created, renamed, removed) durable.
    pub fn sync(&self) -> Result<(), ConfineError> {
        sync_dir(self.fd.as_fd(), &self.rel)
    }

    /// Makes everything written to this directory's filesystem durable, as
    /// [`Root::syncfs`] does for the root's.
    pub fn syncfs(&self) -> Result<(), ConfineError> {
        syncfs_fd(self.fd.as_fd())
            .map_err(|e| io_error("sync filesystem of", &self.rel, os::errno_or_eio(&e)))
    }

    /// Appends the names in this directory (without `.` and `..`) to `names`, at most
    /// `names_max`; `buffer` is scratch space, reused across calls.
    pub(crate) fn read_names(
        &self,
        buffer: &mut [u8],
        names: &mut Vec<Vec<u8>>,
        names_max: usize,
    ) -> Result<(), ReadNamesError> {
        read_names(self.fd.as_fd(), buffer, names, names_max)
    }
}

/// open(2) flags and creation mode for `access`.
#[cfg_attr(target_os = "linux", allow(unused_variables))]
fn open_flags(access: Access, rel: &RelPath) -> Result<(i32, u32), ConfineError> {
    Ok(match access {
        Access::Read | Access::Metadata => (libc::O_RDONLY, 0),
        Access::Write => (libc::O_WRONLY, 0),
        #[cfg(target_os = "linux")]
        Access::WriteDirect => (libc::O_WRONLY | libc::O_DIRECT, 0),
        #[cfg(not(target_os = "linux"))]
        Access::WriteDirect => return Err(io_error("open", rel, libc::EINVAL)),
        Access::CreateNew { mode } => (libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, mode),
    })
}

/// The metadata of `name` in `dir` (`rel` names it in errors); `None` if it is missing.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr, rel: &RelPath) -> Result<Option<Stat>, ConfineError> {
    match stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(libc::ENOENT) => Ok(None),
        Err(errno) => Err(io_error("stat", rel, errno)),
    }
}

/// renameat of `(dir, name, rel)` `from` to `to`, both parents already held.
fn rename_at(
    (from_dir, from_name, from): (BorrowedFd<'_>, &CStr, &RelPath),
    (to_dir, to_name, to): (BorrowedFd<'_>, &CStr, &RelPath),
) -> Result<(), ConfineError> {
    // SAFETY: valid fds and C strings.
    let r = unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from_name.as_ptr(),
            to_dir.as_raw_fd(),
            to_name.as_ptr(),
        )
    };
    match cvt(r) {
        Ok(_) => Ok(()),
        // The parents are open, so a missing name can only be the source.
        Err(libc::ENOENT) => Err(ConfineError::NotFound { rel: from.clone() }),
        Err(errno) => Err(io_error("rename", to, errno)),
    }
}

/// unlinkat of file or symlink `name` in `dir` (`rel` names it in errors).
fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, rel: &RelPath) -> Result<(), ConfineError> {
    // SAFETY: valid fd and C string.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    cvt(r)
        .map(drop)
        .map_err(|errno| at_error("remove", rel, errno))
}

/// fsync of directory `fd` (`rel`), making its entries durable.
fn sync_dir(fd: BorrowedFd<'_>, rel: &RelPath) -> Result<(), ConfineError> {
    sync_fd(fd).map_err(|e| io_error("sync", rel, os::errno_or_eio(&e)))
}

/// A regular file at `path` beneath `dir` (see [`Root::open`]); `rel` names it in errors.
/// chmod of the file `fd` holds. On Linux `fd` may be an `O_PATH` handle, which fchmod
/// refuses: the mode is then set through its /proc/self/fd link, which names exactly that
/// inode (it is not a path anyone can swap).
fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<(), i32> {
    // SAFETY: valid fd.
    match cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }) {
        #[cfg(target_os = "linux")]
        Err(libc::EBADF) => {
            let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .expect("no NUL in a number");
            // SAFETY: valid C string.
            cvt(unsafe { libc::chmod(link.as_ptr(), mode as libc::mode_t) }).map(drop)
        }
        r => r.map(drop),
    }
}

fn open_file(
    dir: BorrowedFd<'_>,
    path: &CStr,
    rel: &RelPath,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, ConfineError> {
    // O_CREAT|O_EXCL can only produce a new regular file. Anything else may find a FIFO
    // or a device that a hostile peer (or local user) put there: open it non-blocking so
    // that a FIFO without a writer cannot hang a blocking-pool thread, check its type,
    // then restore blocking mode for the data path.
    let creates_new = flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0;
    let guard = !creates_new && flags & libc::O_NONBLOCK == 0;
    let mut open_flags = flags | libc::O_NOFOLLOW;
    if guard {
        open_flags |= libc::O_NONBLOCK;
    }
    let fd = openat2(dir, path, open_flags, mode & 0o777)
        .map_err(|errno| resolve_error("open", rel, errno))?;
    if !creates_new {
        let st = fstat_fd(fd.as_fd()).map_err(|errno| io_error("stat", rel, errno))?;
        if st.kind != FileKind::File {
            return Err(ConfineError::NotRegular { rel: rel.clone() });
        }
    }
    if guard {
        clear_nonblock(fd.as_fd()).map_err(|errno| io_error("fcntl", rel, errno))?;
    }
    Ok(fd)
}

/// The root fd (borrowed) or a parent directory opened beneath it.
enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

/// `rel` as a C string for openat2; the root is `.`.
fn c_path(rel: &RelPath) -> Result<CString, ConfineError> {
    if rel.is_root() {
        return Ok(c".".to_owned());
    }
    CString::new(rel.as_bytes()).map_err(|e| {
        ConfineError::Path(PathError::Nul {
            offset: e.nul_position(),
        })
    })
}

/// One name as a C string. `RelPath` never holds a NUL, and a directory entry cannot.
fn c_name(name: &[u8], rel: &RelPath) -> Result<CString, ConfineError> {
    CString::new(name).map_err(|_| io_error("name", rel, libc::EINVAL))
}

/// Makes what was written through `file` durable: fsync, or on macOS F_FULLFSYNC, since
/// its fsync leaves the data in the drive's cache (falling back to fsync where the
/// filesystem does not support it).
pub fn sync_file(file: &File) -> io::Result<()> {
    sync_fd(file.as_fd())
}

fn sync_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    // SAFETY: valid fd; F_FULLFSYNC takes no argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_FULLFSYNC) } == 0 {
        return Ok(());
    }
    // SAFETY: valid fd.
    if unsafe { libc::fsync(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes what was written to the filesystem `file` is on durable: one syncfs on Linux.
/// Elsewhere there is none: files are synced through their own fds as they are
/// finished, and this syncs `file` itself (as a barrier; F_FULLFSYNC on macOS).
pub fn sync_filesystem_through(file: &File) -> io::Result<()> {
    syncfs_fd(file.as_fd())
}

/// syncfs through `fd` on Linux; elsewhere a sync of `fd` itself (see
/// `sync_filesystem_through`).
fn syncfs_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: valid fd.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[cfg(not(target_os = "linux"))]
    sync_fd(fd)?;
    Ok(())
}

/// Flags of a directory handle that the `*at` calls work from: `O_PATH` on Linux (no
/// read permission needed), a read-only open elsewhere.
#[cfg(target_os = "linux")]
const DIR_HANDLE: i32 = libc::O_PATH;
#[cfg(not(target_os = "linux"))]
const DIR_HANDLE: i32 = libc::O_RDONLY;

/// Without openat2 (off Linux): the same confinement by walking `path` one name at a
/// time from `dir`, each step an `openat` with `O_NOFOLLOW` on the directory fd the last
/// step returned. Every name is resolved relative to a directory already proven inside,
/// `RelPath` holds no `..`, and a symlink anywhere fails the step (ELOOP, or ENOTDIR
/// for a directory step, which is mapped to ELOOP when the name is a symlink), so a
/// symlink swapped in by a concurrent writer is refused as openat2 would refuse it.
#[cfg(not(target_os = "linux"))]
fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    walk_open(dir, path, flags, mode)
}

/// The walk behind [`openat2`] off Linux; compiled on Linux too for its tests, which
/// hold it to openat2's answers.
#[cfg(any(not(target_os = "linux"), test))]
fn walk_open(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let bytes = path.to_bytes();
    let names: Vec<&[u8]> = if bytes == b"." {
        Vec::new()
    } else {
        bytes.split(|&b| b == b'/').collect()
    };
    let Some((last, above)) = names.split_last() else {
        return open_at(dir, c".", flags, mode);
    };
    if names
        .iter()
        .any(|n| n.is_empty() || *n == b"." || *n == b"..")
    {
        // RelPath never holds these; refuse rather than trust that here.
        return Err(libc::EINVAL);
    }
    let mut held: Option<OwnedFd> = None;
    for name in above {
        let c = CString::new(*name).map_err(|_| libc::EINVAL)?;
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let next = open_at(at, &c, DIR_HANDLE | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
            .map_err(|errno| symlink_errno(at, &c, errno))?;
        held = Some(next);
    }
    let c = CString::new(*last).map_err(|_| libc::EINVAL)?;
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    open_at(at, &c, flags | libc::O_NOFOLLOW, mode).map_err(|errno| symlink_errno(at, &c, errno))
}

/// openat(2), retried on EINTR; the errno on failure.
#[cfg(any(not(target_os = "linux"), test))]
fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    loop {
        // SAFETY: valid fd and C string; the mode is read only with O_CREAT.
        let r = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if r >= 0 {
            // SAFETY: a new fd that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r) });
        }
        match last_errno() {
            libc::EINTR => {}
            errno => return Err(errno),
        }
    }
}

/// ENOTDIR from a step whose name is a symlink means "a symlink on the way", as
/// openat2's ELOOP does on Linux.
#[cfg(any(not(target_os = "linux"), test))]
fn symlink_errno(dir: BorrowedFd<'_>, name: &CStr, errno: i32) -> i32 {
    if errno == libc::ENOTDIR || errno == libc::EMLINK {
        if let Ok(st) = stat_at(dir, name) {
            if st.kind == FileKind::Symlink {
                return libc::ELOOP;
            }
        }
    }
    errno
}

/// openat2 relative to `dir`, confined beneath it and refusing every symlink.
/// Returns the errno on failure.
#[cfg(target_os = "linux")]
fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    // SAFETY: open_how is plain data (and non_exhaustive, so it cannot be built literally).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u32 as u64;
    // openat2 refuses a mode unless the call can create a file.
    if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let mut eagain_left = OPENAT2_EAGAIN_RETRIES;
    loop {
        // SAFETY: valid fd, C string and open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a new fd that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        match last_errno() {
            libc::EINTR => {}
            // RESOLVE_BENEATH gives EAGAIN when a concurrent rename kept the kernel from
            // proving the result stays beneath; trying again is the documented answer.
            libc::EAGAIN if eagain_left > 0 => eagain_left -= 1,
            errno => return Err(errno),
        }
    }
}

/// Metadata of an open file (never of a symlink's target); the error is the errno.
pub fn fstat(file: &File) -> Result<Stat, i32> {
    fstat_fd(file.as_fd())
}

fn fstat_fd(fd: BorrowedFd<'_>) -> Result<Stat, i32> {
    #[cfg(target_os = "linux")]
    return stat_flags(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW);
    // Without AT_EMPTY_PATH, fstatat of "." would name a directory fd's own directory
    // but not a file; fstat is the call for an fd.
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: stat is plain data that fstat fills.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and stat buffer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        Ok(stat_of(&st))
    }
}

/// Metadata of `name` in `dir` itself, never of a symlink's target.
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat, i32> {
    stat_flags(dir, name, libc::AT_SYMLINK_NOFOLLOW)
}

fn stat_flags(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<Stat, i32> {
    // SAFETY: stat is plain data that fstatat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and stat buffer.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags) };
    cvt(r)?;
    Ok(stat_of(&st))
}

// The widths of stat's fields differ by OS (mode_t is u16 on macOS, dev_t i32).
#[allow(clippy::unnecessary_cast)]
fn stat_of(st: &libc::stat) -> Stat {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Stat {
        kind,
        size_bytes: st.st_size as u64,
        inode: (st.st_dev as u64, st.st_ino as u64),
        mode: (st.st_mode & 0o7777) as u32,
        atime: (st.st_atime as i64, st.st_atime_nsec as u32),
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
    }
}

fn clear_nonblock(fd: BorrowedFd<'_>) -> Result<(), i32> {
    // SAFETY: valid fd; F_GETFL/F_SETFL take and return plain flags.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags & !libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Appends the names in `dir` (without `.` and `..`) to `names`, at most `names_max`.
/// Off Linux there is no getdents64: readdir on a duplicate of the fd.
#[cfg(not(target_os = "linux"))]
fn read_names(
    dir: BorrowedFd<'_>,
    _buffer: &mut [u8],
    names: &mut Vec<Vec<u8>>,
    names_max: usize,
) -> Result<(), ReadNamesError> {
    // SAFETY: dup of a valid fd; fdopendir takes ownership of the duplicate.
    let fd = unsafe { libc::dup(dir.as_raw_fd()) };
    if fd < 0 {
        return Err(ReadNamesError::Errno(last_errno()));
    }
    // SAFETY: fd is ours; on failure it is closed here.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let errno = last_errno();
        // SAFETY: fd is still ours.
        unsafe { libc::close(fd) };
        return Err(ReadNamesError::Errno(errno));
    }
    // The duplicate shares the directory offset: start from the beginning.
    // SAFETY: a valid directory stream.
    unsafe { libc::rewinddir(stream) };
    let result = loop {
        clear_errno();
        // SAFETY: a valid directory stream; the entry lives until the next readdir.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break match last_errno() {
                0 => Ok(()),
                errno => Err(ReadNamesError::Errno(errno)),
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if names.len() >= names_max {
            break Err(ReadNamesError::TooMany);
        }
        names.push(name.to_vec());
    };
    // SAFETY: closes the stream and the duplicate fd it owns.
    unsafe { libc::closedir(stream) };
    result
}

/// readdir signals an error only through errno, so it is cleared before each call.
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
compile_error!("clear_errno needs this target's errno location");

#[cfg(not(target_os = "linux"))]
fn clear_errno() {
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: __error returns this thread's errno location.
    unsafe {
        *libc::__error() = 0
    };
}

/// Appends the names in `dir` (without `.` and `..`) to `names`, at most `names_max`.
#[cfg(target_os = "linux")]
fn read_names(
    dir: BorrowedFd<'_>,
    buffer: &mut [u8],
    names: &mut Vec<Vec<u8>>,
    names_max: usize,
) -> Result<(), ReadNamesError> {
    // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
    const RECLEN_OFFSET: usize = 16;
    const NAME_OFFSET: usize = 19;
    // A held directory may have been listed before: start from its beginning.
    // SAFETY: valid fd.
    if unsafe { libc::lseek(dir.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(ReadNamesError::Errno(last_errno()));
    }
    loop {
        // SAFETY: valid fd and a writable buffer of the length passed.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buffer.as_mut_ptr(),
                buffer.len(),
            )
        };
        if n < 0 {
            match last_errno() {
                libc::EINTR => continue,
                errno => return Err(ReadNamesError::Errno(errno)),
            }
        }
        let filled = n as usize;
        if filled == 0 {
            return Ok(());
        }
        let mut at = 0;
        while at < filled {
            let Some(&[lo, hi]) = buffer.get(at + RECLEN_OFFSET..at + RECLEN_OFFSET + 2) else {
                return Err(ReadNamesError::Errno(libc::EIO));
            };
            let reclen = usize::from(u16::from_ne_bytes([lo, hi]));
            if reclen <= NAME_OFFSET || at + reclen > filled {
                return Err(ReadNamesError::Errno(libc::EIO));
            }
            let field = &buffer[at + NAME_OFFSET..at + reclen];
            let name = &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())];
            if name != b"." && name != b".." {
                if names.len() >= names_max {
                    return Err(ReadNamesError::TooMany);
                }
                names.push(name.to_vec());
            }
            at += reclen;
        }
    }
}

/// Flags that open a directory and never a symlink. No `O_NOFOLLOW`: with `O_DIRECTORY`
/// it turns a final symlink into ENOTDIR (and with `O_PATH` into an fd for the link),
/// while without it `RESOLVE_NO_SYMLINKS` refuses a final symlink with ELOOP, as it does
/// any symlink on the way, so the caller can tell "a symlink" from "not a directory".
fn dir_flags(access: i32) -> i32 {
    access | libc::O_DIRECTORY
}

/// Directory creation mode: permission bits and sticky, never setgid (see `set_file_meta`).
fn dir_mode(mode: u32) -> libc::mode_t {
    (mode & 0o1777) as libc::mode_t
}

fn cvt(r: libc::c_int) -> Result<libc::c_int, i32> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

fn last_errno() -> i32 {
    os::errno_or_eio(&io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::set_file_meta;
    use std::fmt;
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `base/root` is served, `base/outside` must stay untouched; removed on drop.
    struct Scratch {
        base: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::temp_dir().join(format!(
                "tpcx-confine-{}-{}-{tag}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&base);
            let root = base.join("root");
            let outside = base.join("outside");
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(&outside).unwrap();
            Scratch {
                base,
                root,
                outside,
            }
        }

        fn open(&self) -> Root {
            Root::open_ambient(&self.root).unwrap()
        }

        fn listing(dir: &Path) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).unwrap()
    }

    const CREATE: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;

    #[track_caller]
    fn assert_symlink<T: fmt::Debug>(r: Result<T, ConfineError>) {
        match r {
            Err(ConfineError::Symlink { .. }) => {}
            other => panic!("expected a Symlink refusal, got {other:?}"),
        }
    }

    #[test]
    fn symlinks_on_the_way_are_refused_and_nothing_escapes() {
        let s = Scratch::new("escape");
        fs::write(s.outside.join("secret"), b"keep").unwrap();
        symlink(&s.outside, s.root.join("a")).unwrap();
        symlink("..", s.root.join("b")).unwrap();
        fs::write(s.root.join("f"), b"inside").unwrap();
        fs::create_dir(s.root.join("dir")).unwrap();
        let root = s.open();
        let t = (1_000_000_000, 0);

        assert_symlink(root.open_flags(&rel("a/x"), CREATE, 0o644));
        assert_symlink(root.open_flags(&rel("b/x"), CREATE, 0o644));
        assert_symlink(root.open_flags(&rel("b/outside/x"), CREATE, 0o644));
        assert_symlink(root.open_flags(&rel("a/secret"), libc::O_RDONLY, 0));
        assert_symlink(root.open_flags(&rel("a/secret"), libc::O_WRONLY | libc::O_TRUNC, 0));
        assert_symlink(root.open_flags(&rel("b/outside/secret"), libc::O_RDONLY, 0));
        assert_symlink(root.dir(&rel("a")));
        assert_symlink(root.dir(&rel("b")));
        assert_symlink(root.mkdir(&rel("a/d"), 0o755));
        assert_symlink(root.mkdir(&rel("b/d"), 0o755));
        assert_symlink(root.mkdir_all(&rel("a/d/e"), 0o755));
        assert_symlink(root.mkdir_all(&rel("b/d/e"), 0o755));
        assert_symlink(root.rename(&rel("f"), &rel("a/f")));
        assert_symlink(root.rename(&rel("f"), &rel("b/f")));
        assert_symlink(root.rename(&rel("a/secret"), &rel("stolen")));
        assert_symlink(root.symlink(b"/etc/passwd", &rel("a/l")));
        assert_symlink(root.symlink(b"x", &rel("b/l")));
        assert_symlink(root.lstat(&rel("a/secret")));
        assert_symlink(root.lstat(&rel("b/root")));
        assert_symlink(root.remove_file(&rel("a/secret")));
        assert_symlink(root.read_link(&rel("b/root")));
        assert_symlink(root.set_symlink_times(&rel("a/secret"), t, t));
        assert_symlink(root.set_dir_meta(&rel("a"), 0o777, t, t));
        assert_symlink(root.set_dir_meta(&rel("b/outside"), 0o777, t, t));
        assert_symlink(root.fsync_dir(&rel("a")));
        assert_symlink(root.walk(&rel("a/x"), 100));
        // A walk that starts at a symlink lists the link and does not enter it.
        let (entries, errors) = root.walk(&rel("a"), 100).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].1.kind, FileKind::Symlink);

        assert_eq!(Scratch::listing(&s.outside), vec!["secret"]);
        assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"keep");
        assert_ne!(
            fs::metadata(&s.outside).unwrap().permissions().mode() & 0o777,
            0o777
        );
        assert_eq!(Scratch::listing(&s.base), vec!["outside", "root"]);
        assert_eq!(Scratch::listing(&s.root), vec!["a", "b", "dir", "f"]);
        assert_eq!(fs::read(s.root.join("f")).unwrap(), b"inside");
    }

    #[test]
    fn a_final_symlink_is_never_followed() {
        let s = Scratch::new("final");
        fs::write(s.outside.join("secret"), b"keep").unwrap();
        symlink(s.outside.join("new"), s.root.join("dangling")).unwrap();
        symlink(s.outside.join("secret"), s.root.join("l")).unwrap();
        symlink(&s.outside, s.root.join("a")).unwrap();
        let root = s.open();

        // Creating at an existing symlink is refused, dangling or not.
        let flags = libc::O_CREAT | libc::O_WRONLY;
        assert_symlink(root.open_flags(&rel("dangling"), flags, 0o644));
        assert_symlink(root.open_flags(&rel("l"), flags | libc::O_TRUNC, 0o644));
        match root.open_flags(&rel("dangling"), CREATE, 0o644) {
            Err(e @ ConfineError::Io { .. }) => assert_eq!(e.errno(), Some(libc::EEXIST)),
            other => panic!("expected EEXIST, got {other:?}"),
        }
        // mkdir finds a symlink to a directory: not "already exists".
        assert_symlink(root.mkdir(&rel("a"), 0o755));
        assert_symlink(root.mkdir_all(&rel("a"), 0o755));
        assert_symlink(root.fsync_dir(&rel("a")));

        // The *at operations act on the link itself.
        let st = root.lstat(&rel("a")).unwrap().unwrap();
        assert_eq!(st.kind, FileKind::Symlink);
        assert_eq!(
            root.read_link(&rel("l")).unwrap(),
            s.outside.join("secret").as_os_str().as_bytes()
        );
        let outside_mtime = fs::metadata(&s.outside).unwrap().modified().unwrap();
        root.set_symlink_times(&rel("a"), (5, 6), (1_000_000_000, 7))
            .unwrap();
        let st = root.lstat(&rel("a")).unwrap().unwrap();
        assert_eq!(st.mtime, (1_000_000_000, 7));
        assert_eq!(
            fs::metadata(&s.outside).unwrap().modified().unwrap(),
            outside_mtime
        );
        root.rename(&rel("l"), &rel("l2")).unwrap();
        assert_eq!(
            root.lstat(&rel("l2")).unwrap().unwrap().kind,
            FileKind::Symlink
        );
        root.remove_file(&rel("l2")).unwrap();
        root.remove_file(&rel("a")).unwrap();

        assert!(!s.outside.join("new").exists());
        assert_eq!(Scratch::listing(&s.outside), vec!["secret"]);
        assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"keep");
        assert_eq!(Scratch::listing(&s.root), vec!["dangling"]);
    }

    #[test]
    fn a_held_directory_acts_on_its_own_entries_and_never_follows_a_symlink() {
        let s = Scratch::new("dir");
        fs::create_dir(s.root.join("d")).unwrap();
        fs::write(s.outside.join("secret"), b"keep").unwrap();
        symlink(s.outside.join("secret"), s.root.join("d/l")).unwrap();
        symlink(&s.outside, s.root.join("a")).unwrap();
        let root = s.open();

        // The directory itself is resolved as any path is: not through a symlink.
        assert_symlink(root.dir(&rel("a")));
        let d = root.dir(&rel("d")).unwrap();
        assert_eq!(d.rel(), &rel("d"));
        let fd = d.open_flags(&rel("d/t"), CREATE, 0o600).unwrap();
        assert_eq!(
            // SAFETY: valid fd and buffer.
            unsafe { libc::write(fd.as_raw_fd(), b"new".as_ptr().cast(), 3) },
            3
        );
        drop(fd);
        assert_eq!(d.lstat(&rel("d/t")).unwrap().unwrap().size_bytes, 3);
        assert!(d.lstat(&rel("d/missing")).unwrap().is_none());
        d.rename(&rel("d/t"), &rel("d/f")).unwrap();
        assert_eq!(fs::read(s.root.join("d/f")).unwrap(), b"new");
        // A final symlink is stat'ed, renamed and removed as the link, never opened.
        assert_eq!(
            d.lstat(&rel("d/l")).unwrap().unwrap().kind,
            FileKind::Symlink
        );
        assert_symlink(d.open_flags(&rel("d/l"), libc::O_RDONLY, 0));
        assert_symlink(d.open_flags(&rel("d/l"), libc::O_CREAT | libc::O_WRONLY, 0o644));
        d.rename(&rel("d/f"), &rel("d/l")).unwrap();
        assert_eq!(fs::read(s.root.join("d/l")).unwrap(), b"new");
        d.remove_file(&rel("d/l")).unwrap();
        assert!(matches!(
            d.rename(&rel("d/gone"), &rel("d/x")),
            Err(ConfineError::NotFound { .. })
        ));
        d.sync().unwrap();
        assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"keep");
        assert_eq!(Scratch::listing(&s.outside), ["secret"]);
        assert_eq!(Scratch::listing(&s.root.join("d")), Vec::<String>::new());
    }

    #[test]
    #[should_panic(expected = "is not directly in")]
    fn a_held_directory_refuses_a_path_that_is_not_directly_in_it() {
        let s = Scratch::new("dir-other");
        fs::create_dir_all(s.root.join("d/e")).unwrap();
        let d = s.open().dir(&rel("d")).unwrap();
        let _ = d.lstat(&rel("d/e/f"));
    }

    #[test]
    fn the_root_has_no_name_in_a_held_directory() {
        let s = Scratch::new("dir-root");
        let d = s.open().dir(&RelPath::root()).unwrap();
        assert!(matches!(
            d.lstat(&RelPath::root()),
            Err(ConfineError::IsRoot { .. })
        ));
        assert!(matches!(
            d.open_flags(&RelPath::root(), libc::O_RDONLY, 0),
            Err(ConfineError::IsRoot { .. })
        ));
    }

    #[test]
    fn relpath_refuses_escapes_before_any_syscall() {
        for bad in [&b"../x"[..], b"/etc/x", b"a\0b", b"a/../../x", b"./x"] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e: ConfineError = RelPath::parse(b"../x").unwrap_err().into();
        assert!(matches!(
            e,
            ConfineError::Path(PathError::DotDot { offset: 0 })
        ));
    }

    #[test]
    fn create_write_rename_mkdir_all_and_walk() {
        let s = Scratch::new("ordinary");
        let root = s.open();
        root.mkdir_all(&rel("x/y/z"), 0o755).unwrap();
        root.mkdir_all(&rel("x/y/z"), 0o755).unwrap();
        root.mkdir(&rel("x"), 0o755).unwrap();
        root.mkdir(&RelPath::root(), 0o755).unwrap();
        assert!(s.root.join("x/y/z").is_dir());

        // Temp file: created exclusively, written by two openers, renamed into place.
        let tmp = rel("x/y/.tpcx.1.0.tmp");
        let fd = root.open_flags(&tmp, CREATE, 0o600).unwrap();
        assert!(matches!(
            root.open_flags(&tmp, CREATE, 0o600),
            Err(ConfineError::Io {
                errno: libc::EEXIST,
                ..
            })
        ));
        fs::File::from(fd).write_all(b"hello ").unwrap();
        let mut again = fs::File::from(
            root.open_flags(&tmp, libc::O_WRONLY | libc::O_APPEND, 0)
                .unwrap(),
        );
        again.write_all(b"world").unwrap();
        // Blocking mode was restored after the type check.
        // SAFETY: valid fd.
        let flags = unsafe { libc::fcntl(again.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(again);
        let done = rel("x/y/file name\n");
        root.rename(&tmp, &done).unwrap();
        assert_eq!(root.lstat(&tmp).unwrap(), None);
        let mut text = String::new();
        fs::File::from(root.open_flags(&done, libc::O_RDONLY, 0).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello world");
        assert!(matches!(
            root.open_flags(&rel("x/missing"), libc::O_RDONLY, 0),
            Err(ConfineError::NotFound { .. })
        ));
        assert!(matches!(
            root.open_flags(&rel("x"), libc::O_RDONLY, 0),
            Err(ConfineError::NotRegular { .. })
        ));
        // A file where a directory is wanted.
        let e = root.mkdir(&done, 0o755).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        let e = root
            .mkdir_all(&rel("x/y/file name\n/sub"), 0o755)
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOTDIR), "{e}");

        // Symlink targets are stored, never resolved.
        root.symlink(b"../../..", &rel("x/up")).unwrap();
        root.symlink(b"y", &rel("x/dirlink")).unwrap();
        assert_eq!(root.read_link(&rel("x/up")).unwrap(), b"../../..");
        assert!(matches!(
            root.symlink(b"a\0b", &rel("x/nul")),
            Err(ConfineError::Io {
                errno: libc::EINVAL,
                ..
            })
        ));

        root.set_dir_meta(&rel("x/y/z"), 0o2750, (10, 0), (20, 30))
            .unwrap();
        let st = root.lstat(&rel("x/y/z")).unwrap().unwrap();
        assert_eq!(
            (st.kind, st.mode, st.mtime),
            (FileKind::Dir, 0o750, (20, 30))
        );
        root.fsync_dir(&rel("x/y")).unwrap();
        root.fsync_dir(&RelPath::root()).unwrap();
        root.syncfs().unwrap();

        let (entries, errors) = root.walk(&RelPath::root(), 100).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let listed: Vec<(String, FileKind)> = entries
            .iter()
            .map(|(p, st)| (p.to_string(), st.kind))
            .collect();
        let expected = [
            (".", FileKind::Dir),
            ("x", FileKind::Dir),
            ("x/dirlink", FileKind::Symlink),
            ("x/up", FileKind::Symlink),
            ("x/y", FileKind::Dir),
            ("x/y/file name\\n", FileKind::File),
            ("x/y/z", FileKind::Dir),
        ];
        let expected: Vec<(String, FileKind)> =
            expected.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(listed, expected);
        assert_eq!(entries[5].1.size_bytes, 11);
        let (sub, _) = root.walk(&rel("x/y"), 100).unwrap();
        assert_eq!(sub.len(), 3);
        assert_eq!(sub[0].0, rel("x/y"));
        let (file, _) = root.walk(&done, 1).unwrap();
        assert_eq!(file.len(), 1);
        assert!(matches!(
            root.walk(&RelPath::root(), 4),
            Err(ConfineError::TooManyEntries { entries_max: 4, .. })
        ));
        assert!(matches!(
            root.walk(&rel("nope"), 4),
            Err(ConfineError::NotFound { .. })
        ));

        root.remove_file(&done).unwrap();
        assert!(matches!(
            root.remove_file(&done),
            Err(ConfineError::NotFound { .. })
        ));
        assert_eq!(root.lstat(&rel("no/such/thing")).unwrap(), None);
        assert!(root.lstat(&RelPath::root()).unwrap().unwrap().kind == FileKind::Dir);
    }

    #[test]
    fn set_file_meta_clears_setuid_and_setgid() {
        let s = Scratch::new("setuid");
        let root = s.open();
        let path = rel("suid");
        let fd = File::from(root.open_flags(&path, CREATE, 0o755).unwrap());
        set_file_meta(&fd, 0o6755, (1, 2), (1_500_000_000, 123_456_789)).unwrap();
        let st = root.lstat(&path).unwrap().unwrap();
        assert_eq!(st.mode, 0o755);
        assert_eq!(st.mtime, (1_500_000_000, 123_456_789));
        set_file_meta(&fd, 0o1640, (1, 2), (3, 4)).unwrap();
        assert_eq!(root.lstat(&path).unwrap().unwrap().mode, 0o1640);
    }

    #[test]
    fn open_refuses_a_fifo_without_blocking() {
        let s = Scratch::new("fifo");
        let fifo = CString::new(s.root.join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let root = s.open();
        assert!(matches!(
            root.open_flags(&rel("p"), libc::O_RDONLY, 0),
            Err(ConfineError::NotRegular { .. })
        ));
        // No reader: the non-blocking open itself fails (ENXIO) instead of waiting.
        assert!(root.open_flags(&rel("p"), libc::O_WRONLY, 0).is_err());
        assert_eq!(
            root.lstat(&rel("p")).unwrap().unwrap().kind,
            FileKind::Other
        );
    }

    #[test]
    fn the_root_has_no_name_to_act_on() {
        let s = Scratch::new("rootops");
        let root = s.open();
        let r = RelPath::root();
        assert!(matches!(
            root.rename(&r, &rel("x")),
            Err(ConfineError::IsRoot { op: "rename" })
        ));
        assert!(matches!(
            root.remove_file(&r),
            Err(ConfineError::IsRoot { .. })
        ));
        assert!(matches!(
            root.symlink(b"t", &r),
            Err(ConfineError::IsRoot { .. })
        ));
        assert!(root.dir(&r).is_ok());
        assert!(Root::open_ambient(&s.base.join("missing")).is_err());
    }

    #[test]
    fn errors_are_one_line_and_carry_errno() {
        let nl = RelPath::parse(b"bad\nname").unwrap();
        let errors = [
            ConfineError::Path(PathError::Absolute),
            ConfineError::Escapes { rel: nl.clone() },
            ConfineError::Symlink { rel: nl.clone() },
            ConfineError::NotFound { rel: nl.clone() },
            ConfineError::NotRegular { rel: nl.clone() },
            ConfineError::IsRoot { op: "rename" },
            ConfineError::TooDeep { rel: nl.clone() },
            ConfineError::TooManyEntries {
                rel: nl.clone(),
                entries_max: 3,
            },
            ConfineError::Child {
                dir: nl.clone(),
                error: PathError::TooLong { path_bytes: 5000 },
            },
            ConfineError::Io {
                op: "open",
                rel: nl.clone(),
                errno: libc::ENOSPC,
            },
        ];
        for e in &errors {
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "{shown:?}");
        }
        assert_eq!(errors[9].errno(), Some(libc::ENOSPC));
        assert_eq!(errors[2].errno(), Some(libc::ELOOP));
        assert_eq!(errors[0].errno(), None);
        assert!(errors[9]
            .to_string()
            .starts_with("cannot open 'bad\\nname': "));
    }

    #[test]
    fn the_walk_used_without_openat2_refuses_what_openat2_refuses() {
        let s = Scratch::new("walk");
        fs::create_dir_all(s.root.join("a/b")).unwrap();
        fs::write(s.root.join("a/b/file"), b"x").unwrap();
        symlink("a", s.root.join("dirlink")).unwrap();
        symlink("b/file", s.root.join("a/filelink")).unwrap();
        symlink(&s.outside, s.root.join("out")).unwrap();
        let root = Root::open_ambient(&s.root).unwrap();
        let at = root.dir.as_fd();
        let read = libc::O_RDONLY;
        for (path, want) in [
            (c"a/b/file", Ok(())),
            (c"a/b", Ok(())),
            (c".", Ok(())),
            (c"dirlink/b/file", Err(libc::ELOOP)),
            (c"a/filelink", Err(libc::ELOOP)),
            (c"out/x", Err(libc::ELOOP)),
            (c"a/missing", Err(libc::ENOENT)),
            (c"a/b/file/x", Err(libc::ENOTDIR)),
        ] {
            let walked = walk_open(at, path, read, 0).map(drop);
            assert_eq!(walked, want, "walk of {path:?}");
            let kernel = openat2(at, path, read, 0).map(drop);
            assert_eq!(walked, kernel, "walk and openat2 agree on {path:?}");
        }
        // Creating through the walk lands inside, and never through a link.
        let fd = walk_open(at, c"a/b/new", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
        drop(fd);
        assert!(s.root.join("a/b/new").is_file());
        assert_eq!(
            walk_open(at, c"out/new", libc::O_CREAT | libc::O_WRONLY, 0o600).map(drop),
            Err(libc::ELOOP)
        );
        assert!(!s.outside.join("new").exists());
    }
}
