//! Path confinement on Windows: every path is resolved beneath the held root directory
//! handle one name at a time, never through a symlink or junction.
//!
//! Windows has no `openat2`; cap-std gives directory-relative operations on held handles
//! (`cap_std::fs::Dir`). Each step down opens the next directory with
//! `open_dir_nofollow`, which refuses a reparse point (symlink or junction), so a link
//! anywhere on the way is refused as `openat2`'s `RESOLVE_NO_SYMLINKS` refuses it on
//! Linux. The final name is acted on relative to its held parent without following it
//! (`FollowSymlinks::No`, `symlink_metadata`).
//!
//! Opens and stats are relative to the held handle (NtCreateFile with a root directory).
//! cap-std does mkdir, rename, remove, symlink, readlink and listing by the held
//! directory's path (GetFinalPathNameByHandle) joined with the name. That path stays the
//! directory's because cap-std holds directories open without FILE_SHARE_DELETE, and
//! NTFS refuses to rename a directory beneath which handles are open. On a network share
//! neither holds (and cap-std turns a `\\?\UNC\` path into a relative one), so a root
//! that is not on a local drive is refused.
//!
//! Names must be UTF-8 on the wire and free of what Windows would read as structure or
//! rewrite rather than take as a name: `\`, `:` (a drive or an alternate data stream),
//! the wildcard and redirection characters, control characters, a trailing dot or
//! space (Win32 strips them), and the reserved device names (`CON`, `NUL`, `COM1`, ...,
//! with any extension). Such a name is refused with EINVAL before any call. Windows
//! compares names without case and may know a file by its 8.3 short name too, so two
//! wire names can reach one file; both lie in the same directory.
//!
//! Windows keeps one permission bit (read-only); `Stat::mode` is `os::windows_mode`, and
//! `set_file_meta` sets the read-only bit from the owner's write bit.

use std::fs::File;
use std::io;
use std::path::Path;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt, SystemTimeSpec};
use cap_std::ambient_authority;
use tpc_core::relpath::RelPath;

use super::{
    at_error, for_path, io_error, name_in, resolve_error, Access, ConfineError, FileKind,
    ReadNamesError, Stat,
};
use crate::os;

/// The directory a server serves; every path is resolved beneath it.
#[derive(Debug)]
pub struct Root {
    dir: cap_std::fs::Dir,
}

/// A directory beneath the root, held open by [`Root::dir`], as on Unix: each entry
/// directly in it is reached by name relative to the held handle.
#[derive(Debug)]
pub struct Dir {
    dir: cap_std::fs::Dir,
    rel: RelPath,
}

/// Characters Windows treats as structure or refuses in a name.
const RESERVED_CHARS: &[char] = &['\\', '/', ':', '*', '?', '"', '<', '>', '|'];

/// Names of devices, which Win32 finds in every directory, with any extension.
const RESERVED_STEMS: &[&str] = &[
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "COM0",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT0",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
    "CONIN$",
    "CONOUT$",
];

/// One name as Windows takes it, or EINVAL (see the module's notes).
fn win_name<'a>(name: &'a [u8], rel: &RelPath) -> Result<&'a str, ConfineError> {
    let refused = || io_error("name", rel, libc::EINVAL);
    let s = std::str::from_utf8(name).map_err(|_| refused())?;
    let stem = s.split('.').next().unwrap_or("").trim_end_matches(' ');
    if s.is_empty()
        || s.ends_with('.')
        || s.ends_with(' ')
        || s.chars().any(|c| RESERVED_CHARS.contains(&c) || c < ' ')
        || RESERVED_STEMS.iter().any(|r| r.eq_ignore_ascii_case(stem))
    {
        return Err(refused());
    }
    Ok(s)
}

impl Root {
    /// Opens the served directory. The path is the operator's (the "ambient" filesystem),
    /// so it may go through links; everything beneath it may not.
    pub fn open_ambient(path: &Path) -> io::Result<Root> {
        let dir = cap_std::fs::Dir::open_ambient_dir(path, ambient_authority())?;
        let full = final_path(&dir)?;
        // `\\?\C:\...`: a local drive. Anything else (`\\?\UNC\server\share`, a volume
        // GUID path) is refused: see the module's notes.
        if !(full.starts_with(r"\\?\") && full.get(5..6) == Some(":")) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: a served root must be on a local drive, not {full}",
                    path.display()
                ),
            ));
        }
        Ok(Root { dir })
    }

    /// Opens a regular file beneath the root as `access` says. Anything that is not a
    /// regular file is refused with `NotRegular`.
    pub fn open(&self, rel: &RelPath, access: Access) -> Result<File, ConfineError> {
        let (parent, name) = self.parent_of("open", rel)?;
        open_file(parent.get(&self.dir), name, rel, access)
    }

    /// Opens directory `rel` beneath the root (the root itself for the empty path) and
    /// holds it, for work on many entries directly in it.
    pub fn dir(&self, rel: &RelPath) -> Result<Dir, ConfineError> {
        let dir = self.walk_dirs("open directory", rel)?;
        Ok(Dir {
            dir,
            rel: rel.clone(),
        })
    }

    /// Creates directory `rel`. Succeeds if a real directory is already there; refuses a
    /// link (even to a directory) or anything else in the way.
    pub fn mkdir(&self, rel: &RelPath, _mode: u32) -> Result<(), ConfineError> {
        const OP: &str = "mkdir";
        if rel.is_root() {
            return Ok(());
        }
        let (parent, name) = self.parent_of(OP, rel)?;
        mkdir_at(parent.get(&self.dir), name, rel)
    }

    /// Creates `rel` and every missing directory above it, each as `mkdir` would.
    pub fn mkdir_all(&self, rel: &RelPath, _mode: u32) -> Result<(), ConfineError> {
        let mut held: Option<cap_std::fs::Dir> = None;
        let mut prefix = RelPath::root();
        for name in rel.components() {
            prefix = prefix.join(name)?;
            let at = held.as_ref().unwrap_or(&self.dir);
            let name = win_name(name, &prefix)?;
            mkdir_at(at, name, &prefix)?;
            let next = open_dir_step(at, name, &prefix, "mkdir")?;
            held = Some(next);
        }
        Ok(())
    }

    /// Renames `from` to `to` (replacing `to`). A link at either end is renamed or
    /// replaced as a link; a link above either end is refused.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "rename";
        let (from_dir, from_name) = self.parent_of(OP, from)?;
        let (to_dir, to_name) = self.parent_of(OP, to)?;
        rename_at(
            (from_dir.get(&self.dir), from_name, from),
            (to_dir.get(&self.dir), to_name, to),
        )
    }

    /// Creates a symlink at `at` pointing to `target`, stored as given and never
    /// resolved here. Windows records whether a link names a file or a directory and the
    /// wire does not say, so it is made as a file link. Making links needs the
    /// "create symbolic links" privilege (or Developer Mode). cap-std makes only
    /// relative links: an absolute target (`/x`, `\x`, `C:...`) is refused (ENOTSUP).
    pub fn symlink(&self, target: &[u8], at: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "symlink";
        let target = std::str::from_utf8(target).map_err(|_| io_error(OP, at, libc::EINVAL))?;
        if target.starts_with(['/', '\\']) || target.get(1..2) == Some(":") {
            return Err(io_error(OP, at, libc::ENOTSUP));
        }
        let (parent, name) = self.parent_of(OP, at)?;
        parent
            .get(&self.dir)
            .symlink_file(target, name)
            .map_err(|e| at_error(OP, at, os::errno_or_eio(&e)))
    }

    /// Removes a file or symlink (not a directory).
    pub fn remove_file(&self, rel: &RelPath) -> Result<(), ConfineError> {
        let (parent, name) = self.parent_of("remove", rel)?;
        unlink_at(parent.get(&self.dir), name, rel)
    }

    /// Removes an empty directory (`--delete`).
    pub fn remove_dir(&self, rel: &RelPath) -> Result<(), ConfineError> {
        let (parent, name) = self.parent_of("remove", rel)?;
        parent
            .get(&self.dir)
            .remove_dir(name)
            .map_err(|e| at_error("remove directory", rel, os::errno_or_eio(&e)))
    }

    /// Metadata of the entry itself; `None` if it (or a directory above it) does not exist.
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<Stat>, ConfineError> {
        const OP: &str = "stat";
        if rel.is_root() {
            return self
                .dir
                .dir_metadata()
                .map(|md| Some(stat_of(&md)))
                .map_err(|e| io_error(OP, rel, os::errno_or_eio(&e)));
        }
        let (parent, name) = match self.parent_of(OP, rel) {
            Ok(found) => found,
            Err(ConfineError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(parent.get(&self.dir), name, rel)
    }

    /// The target of symlink `rel`, as UTF-8 bytes.
    pub fn read_link(&self, rel: &RelPath) -> Result<Vec<u8>, ConfineError> {
        const OP: &str = "readlink";
        let (parent, name) = self.parent_of(OP, rel)?;
        let target = parent
            .get(&self.dir)
            .read_link_contents(name)
            .map_err(|e| at_error(OP, rel, os::errno_or_eio(&e)))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| io_error(OP, rel, libc::EILSEQ))?;
        Ok(target.into_bytes())
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
        let spec = |t| {
            os::system_time(t)
                .map(|t| SystemTimeSpec::Absolute(cap_std::time::SystemTime::from_std(t)))
                .map_err(|e| io_error(OP, rel, os::errno_or_eio(&e)))
        };
        parent
            .get(&self.dir)
            .set_symlink_times(name, Some(spec(atime)?), Some(spec(mtime)?))
            .map_err(|e| at_error(OP, rel, os::errno_or_eio(&e)))
    }

    /// Applies times to directory `rel`, never through a link (Windows directories have
    /// no permission bits to set; their read-only attribute means something else).
    pub fn set_dir_meta(
        &self,
        rel: &RelPath,
        mode: u32,
        atime: (i64, u32),
        mtime: (i64, u32),
    ) -> Result<(), ConfineError> {
        use std::os::windows::io::AsHandle;
        use windows_sys::Win32::Storage::FileSystem::{
            FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES,
        };
        const OP: &str = "set metadata of";
        let dir = self.walk_dirs(OP, rel)?;
        // The held handle may only read: a second one on it that may set attributes.
        os::reopen(
            dir.as_handle(),
            FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES,
        )
        .and_then(|d| super::set_file_meta(&d, mode, atime, mtime))
        .map_err(|e| io_error(OP, rel, os::errno_or_eio(&e)))
    }

    /// Sets the times of the root directory itself.
    pub fn set_root_times(&self, atime: (i64, u32), mtime: (i64, u32)) -> Result<(), ConfineError> {
        let root = RelPath::root();
        let mode = self.lstat(&root)?.map_or(0o755, |st| st.mode);
        self.set_dir_meta(&root, mode, atime, mtime)
    }

    /// Windows directories have no permission bits to unlock (see `set_dir_meta`).
    pub fn set_dir_mode(&self, rel: &RelPath, _mode: u32) -> Result<(), ConfineError> {
        self.walk_dirs("set mode of", rel).map(drop)
    }

    /// Makes `to` a new hard link of the file `from`; `to` must not exist.
    pub fn hard_link(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        const OP: &str = "link";
        let (from_dir, from_name) = self.parent_of(OP, from)?;
        let (to_dir, to_name) = self.parent_of(OP, to)?;
        from_dir
            .get(&self.dir)
            .hard_link(from_name, to_dir.get(&self.dir), to_name)
            .map_err(|e| at_error(OP, to, os::errno_or_eio(&e)))
    }

    /// Makes directory `rel`'s entries durable (see [`Dir::sync`]).
    pub fn fsync_dir(&self, rel: &RelPath) -> Result<(), ConfineError> {
        self.dir(rel)?.sync()
    }

    /// Makes what was written beneath the root durable. Windows has no syncfs: files are
    /// flushed through their own handles as they are finished, and this flushes the
    /// root directory.
    pub fn syncfs(&self) -> Result<(), ConfineError> {
        sync_dir(&self.dir, &RelPath::root())
    }

    /// Every directory of `rel` opened in turn from the root, none through a link.
    fn walk_dirs(&self, op: &'static str, rel: &RelPath) -> Result<cap_std::fs::Dir, ConfineError> {
        let mut held: Option<cap_std::fs::Dir> = None;
        let mut prefix = RelPath::root();
        for name in rel.components() {
            prefix = prefix.join(name)?;
            let at = held.as_ref().unwrap_or(&self.dir);
            let next = open_dir_step(at, win_name(name, &prefix)?, &prefix, op)?;
            held = Some(next);
        }
        match held {
            Some(dir) => Ok(dir),
            None => self
                .dir
                .try_clone()
                .map_err(|e| io_error(op, rel, os::errno_or_eio(&e))),
        }
    }

    /// The directory holding `rel`, resolved beneath the root, and `rel`'s last name.
    fn parent_of<'a>(
        &self,
        op: &'static str,
        rel: &'a RelPath,
    ) -> Result<(Parent, &'a str), ConfineError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(ConfineError::IsRoot { op });
        };
        let name = win_name(name, rel)?;
        if parent.is_root() {
            return Ok((Parent::Root, name));
        }
        let dir = self.walk_dirs(op, &parent).map_err(|e| for_path(e, rel))?;
        Ok((Parent::Held(dir), name))
    }
}

/// The root's handle or a parent directory opened beneath it.
enum Parent {
    Root,
    Held(cap_std::fs::Dir),
}

impl Parent {
    fn get<'a>(&'a self, root: &'a cap_std::fs::Dir) -> &'a cap_std::fs::Dir {
        match self {
            Parent::Root => root,
            Parent::Held(dir) => dir,
        }
    }
}

impl Dir {
    /// The directory's path beneath the root.
    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    /// `rel`'s name as Windows takes it, where `rel` lies directly in this directory
    /// ([`name_in`]).
    fn name_of<'a>(&self, op: &'static str, rel: &'a RelPath) -> Result<&'a str, ConfineError> {
        win_name(name_in(&self.rel, op, rel)?, rel)
    }

    /// As [`Root::open`], for `rel` directly in this directory.
    pub fn open(&self, rel: &RelPath, access: Access) -> Result<File, ConfineError> {
        open_file(&self.dir, self.name_of("open", rel)?, rel, access)
    }

    /// As [`Root::lstat`], for `rel` directly in this directory.
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<Stat>, ConfineError> {
        lstat_at(&self.dir, self.name_of("stat", rel)?, rel)
    }

    /// As [`Root::rename`], for `from` and `to` both directly in this directory.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), ConfineError> {
        let from_name = self.name_of("rename", from)?;
        let to_name = self.name_of("rename", to)?;
        rename_at((&self.dir, from_name, from), (&self.dir, to_name, to))
    }

    /// As [`Root::remove_file`], for `rel` directly in this directory.
    pub fn remove_file(&self, rel: &RelPath) -> Result<(), ConfineError> {
        unlink_at(&self.dir, self.name_of("remove", rel)?, rel)
    }

    /// Makes this directory's entries durable: FlushFileBuffers on its handle.
    pub fn sync(&self) -> Result<(), ConfineError> {
        sync_dir(&self.dir, &self.rel)
    }

    /// As [`Root::syncfs`]: Windows has no syncfs, so this flushes this directory.
    pub fn syncfs(&self) -> Result<(), ConfineError> {
        self.sync()
    }

    /// Appends the names in this directory to `names`, at most `names_max`, as WTF-8
    /// (UTF-8 for every well-formed name). A name that is not valid Unicode cannot be
    /// resolved (`win_name` refuses it), so a walk reports it as an error rather than
    /// leaving it out.
    pub(crate) fn read_names(
        &self,
        _buffer: &mut [u8],
        names: &mut Vec<Vec<u8>>,
        names_max: usize,
    ) -> Result<(), ReadNamesError> {
        let entries = self
            .dir
            .entries()
            .map_err(|e| ReadNamesError::Errno(os::errno_or_eio(&e)))?;
        for entry in entries {
            let entry = entry.map_err(|e| ReadNamesError::Errno(os::errno_or_eio(&e)))?;
            if names.len() >= names_max {
                return Err(ReadNamesError::TooMany);
            }
            names.push(entry.file_name().as_encoded_bytes().to_vec());
        }
        Ok(())
    }
}

/// One step down: directory `name` in `at`, refused if it is a link.
fn open_dir_step(
    at: &cap_std::fs::Dir,
    name: &str,
    prefix: &RelPath,
    op: &'static str,
) -> Result<cap_std::fs::Dir, ConfineError> {
    at.open_dir_nofollow(name).map_err(|e| {
        let is_link = at
            .symlink_metadata(name)
            .is_ok_and(|md| md.file_type().is_symlink());
        if is_link {
            ConfineError::Symlink {
                rel: prefix.clone(),
            }
        } else {
            resolve_error(op, prefix, os::errno_or_eio(&e))
        }
    })
}

/// A regular file `name` in `dir` (see [`Root::open`]); `rel` names it in errors.
fn open_file(
    dir: &cap_std::fs::Dir,
    name: &str,
    rel: &RelPath,
    access: Access,
) -> Result<File, ConfineError> {
    let mut options = cap_std::fs::OpenOptions::new();
    options.follow(FollowSymlinks::No);
    match access {
        Access::Read => options.read(true),
        Access::Metadata => {
            use cap_std::fs::OpenOptionsExt;
            use windows_sys::Win32::Storage::FileSystem::{
                FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES,
            };
            options.access_mode(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES)
        }
        Access::Write => options.write(true),
        Access::WriteDirect => return Err(io_error("open", rel, libc::EINVAL)),
        Access::CreateNew { .. } => options.write(true).create_new(true),
    };
    let file = dir.open_with(name, &options).map_err(|e| {
        // Windows refuses to open a directory as a file (access denied): say what is
        // there rather than pass that on.
        match dir.symlink_metadata(name) {
            Ok(md) if md.file_type().is_symlink() => ConfineError::Symlink { rel: rel.clone() },
            Ok(md) if !md.is_file() => ConfineError::NotRegular { rel: rel.clone() },
            _ => at_error("open", rel, os::errno_or_eio(&e)),
        }
    })?;
    let file = file.into_std();
    if !matches!(access, Access::CreateNew { .. }) {
        let st = fstat(&file).map_err(|errno| io_error("stat", rel, errno))?;
        match st.kind {
            FileKind::File => {}
            FileKind::Symlink => return Err(ConfineError::Symlink { rel: rel.clone() }),
            _ => return Err(ConfineError::NotRegular { rel: rel.clone() }),
        }
    }
    Ok(file)
}

fn mkdir_at(dir: &cap_std::fs::Dir, name: &str, rel: &RelPath) -> Result<(), ConfineError> {
    const OP: &str = "mkdir";
    match dir.create_dir(name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match dir.symlink_metadata(name) {
            Ok(md) if md.file_type().is_symlink() => {
                Err(ConfineError::Symlink { rel: rel.clone() })
            }
            Ok(md) if md.is_dir() => Ok(()),
            Ok(_) => Err(io_error(OP, rel, libc::EEXIST)),
            Err(e) => Err(at_error(OP, rel, os::errno_or_eio(&e))),
        },
        Err(e) => Err(at_error(OP, rel, os::errno_or_eio(&e))),
    }
}

/// The metadata of `name` in `dir` (`rel` names it in errors); `None` if it is missing.
fn lstat_at(
    dir: &cap_std::fs::Dir,
    name: &str,
    rel: &RelPath,
) -> Result<Option<Stat>, ConfineError> {
    match dir.symlink_metadata(name) {
        Ok(md) => Ok(Some(stat_of(&md))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("stat", rel, os::errno_or_eio(&e))),
    }
}

/// Rename of `(dir, name, rel)` `from` to `to`, both parents already held.
fn rename_at(
    (from_dir, from_name, from): (&cap_std::fs::Dir, &str, &RelPath),
    (to_dir, to_name, to): (&cap_std::fs::Dir, &str, &RelPath),
) -> Result<(), ConfineError> {
    match from_dir.rename(from_name, to_dir, to_name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ConfineError::NotFound { rel: from.clone() })
        }
        Err(e) => Err(io_error("rename", to, os::errno_or_eio(&e))),
    }
}

/// Removes file or link `name` in `dir` (`rel` names it in errors).
fn unlink_at(dir: &cap_std::fs::Dir, name: &str, rel: &RelPath) -> Result<(), ConfineError> {
    dir.remove_file_or_symlink(name)
        .map_err(|e| at_error("remove", rel, os::errno_or_eio(&e)))
}

fn sync_dir(dir: &cap_std::fs::Dir, rel: &RelPath) -> Result<(), ConfineError> {
    use std::os::windows::io::AsHandle;
    os::flush_dir(dir.as_handle()).map_err(|e| io_error("sync", rel, os::errno_or_eio(&e)))
}

/// Makes what was written through `file` durable (FlushFileBuffers).
pub fn sync_file(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// Windows has no syncfs: files are flushed through their own handles as they are
/// finished, and this flushes `file` itself, as a barrier.
pub fn sync_filesystem_through(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// Metadata of an open file (never of a link's target); the error is the errno.
pub fn fstat(file: &File) -> Result<Stat, i32> {
    let md = cap_std::fs::Metadata::from_file(file).map_err(|e| os::errno_or_eio(&e))?;
    Ok(stat_of(&md))
}

fn stat_of(md: &cap_std::fs::Metadata) -> Stat {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let mode = os::windows_mode(md.permissions().readonly(), kind == FileKind::Dir);
    let time = |t: io::Result<cap_std::time::SystemTime>| {
        t.map_or((0, 0), |t| os::since_epoch(t.into_std()))
    };
    Stat {
        kind,
        size_bytes: md.len(),
        inode: (0, 0),
        mode,
        atime: time(md.accessed()),
        mtime: time(md.modified()),
    }
}

/// The path Windows knows the directory held as `dir` by (GetFinalPathNameByHandle).
fn final_path(dir: &cap_std::fs::Dir) -> io::Result<String> {
    use std::os::windows::io::{AsHandle, AsRawHandle};
    use windows_sys::Win32::Storage::FileSystem::{
        GetFinalPathNameByHandleW, FILE_NAME_NORMALIZED, VOLUME_NAME_DOS,
    };
    let mut buf = vec![0u16; 1024];
    loop {
        // SAFETY: a valid handle and a buffer of the length passed.
        let n = unsafe {
            GetFinalPathNameByHandleW(
                dir.as_handle().as_raw_handle(),
                buf.as_mut_ptr(),
                buf.len() as u32,
                FILE_NAME_NORMALIZED | VOLUME_NAME_DOS,
            )
        } as usize;
        if n == 0 {
            return Err(io::Error::last_os_error());
        }
        // Too small: n is the length needed, with the terminating NUL.
        if n >= buf.len() {
            buf.resize(n + 1, 0);
            continue;
        }
        return Ok(String::from_utf16_lossy(&buf[..n]));
    }
}
