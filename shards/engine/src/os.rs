//! Small OS services that the engine and the CLI need on every platform, each in its
//! Unix and its Windows form: errno text and translation, positional file I/O, times and
//! permission bits, file identity.
//!
//! Errors cross the wire and reach exit codes as errno values (`ErrorCode::for_errno`),
//! so on Windows a system error is translated to the errno the C runtime would give it.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Wire bytes (a name or relative path) as a name or path of this OS: on Unix the bytes
/// themselves; on Windows bytes that are not UTF-8 are replaced (U+FFFD), and Windows
/// takes `/` as a separator.
pub fn os_name(bytes: &[u8]) -> Cow<'_, OsStr> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(OsStr::from_bytes(bytes))
    }
    #[cfg(windows)]
    {
        Cow::Owned(String::from_utf8_lossy(bytes).into_owned().into())
    }
}

/// [`os_name`] as an owned path.
pub fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(os_name(bytes).into_owned())
}

/// The text of `errno` ("No space left on device").
pub fn errno_text(errno: i32) -> String {
    #[cfg(unix)]
    {
        io::Error::from_raw_os_error(errno).to_string()
    }
    #[cfg(windows)]
    {
        // io::Error would read the number as a Windows system error code; the C
        // runtime's strerror knows errno values. Its buffer is per thread.
        // SAFETY: strerror returns a NUL-terminated string valid until the next call on
        // this thread, which is copied out at once.
        let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) };
        format!("{} (errno {errno})", text.to_string_lossy())
    }
}

/// The errno of an I/O error: its own on Unix (`None` if it carries no OS error),
/// translated from the system error code (or else the error's kind) on Windows.
pub fn errno(e: &io::Error) -> Option<i32> {
    #[cfg(unix)]
    {
        e.raw_os_error()
    }
    #[cfg(windows)]
    {
        Some(windows_errno(e))
    }
}

/// `errno`, with EIO for an error that carries none: what a peer or an exit code is told.
pub fn errno_or_eio(e: &io::Error) -> i32 {
    errno(e).unwrap_or(libc::EIO)
}

#[cfg(windows)]
fn windows_errno(e: &io::Error) -> i32 {
    use windows_sys::Win32::Foundation as w;
    if let Some(code) = e.raw_os_error() {
        // Codes from the Win32 error table; what is not listed falls back on the kind.
        let errno = match code as u32 {
            w::ERROR_FILE_NOT_FOUND | w::ERROR_PATH_NOT_FOUND | w::ERROR_INVALID_DRIVE => {
                libc::ENOENT
            }
            w::ERROR_ACCESS_DENIED | w::ERROR_SHARING_VIOLATION | w::ERROR_LOCK_VIOLATION => {
                libc::EACCES
            }
            w::ERROR_WRITE_PROTECT => libc::EROFS,
            w::ERROR_FILE_EXISTS | w::ERROR_ALREADY_EXISTS => libc::EEXIST,
            w::ERROR_DISK_FULL | w::ERROR_HANDLE_DISK_FULL | w::ERROR_DISK_QUOTA_EXCEEDED => {
                libc::ENOSPC
            }
            w::ERROR_NOT_SAME_DEVICE => libc::EXDEV,
            w::ERROR_DIRECTORY => libc::ENOTDIR,
            w::ERROR_DIR_NOT_EMPTY => libc::ENOTEMPTY,
            w::ERROR_FILENAME_EXCED_RANGE | w::ERROR_BUFFER_OVERFLOW => libc::ENAMETOOLONG,
            w::ERROR_CANT_RESOLVE_FILENAME | w::ERROR_STOPPED_ON_SYMLINK => libc::ELOOP,
            w::ERROR_INVALID_NAME | w::ERROR_INVALID_PARAMETER => libc::EINVAL,
            w::ERROR_NOT_ENOUGH_MEMORY | w::ERROR_OUTOFMEMORY => libc::ENOMEM,
            w::ERROR_TOO_MANY_OPEN_FILES => libc::EMFILE,
            w::ERROR_NOT_SUPPORTED | w::ERROR_INVALID_FUNCTION => libc::ENOTSUP,
            _ => 0,
        };
        if errno != 0 {
            return errno;
        }
    }
    match e.kind() {
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        io::ErrorKind::NotADirectory => libc::ENOTDIR,
        io::ErrorKind::IsADirectory => libc::EISDIR,
        io::ErrorKind::Unsupported => libc::ENOTSUP,
        io::ErrorKind::OutOfMemory => libc::ENOMEM,
        _ => libc::EIO,
    }
}

/// Reads into `buf` at `offset` without moving a shared file position (on Windows the
/// handle's position moves, but nothing here reads or writes at "the" position).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

/// Fills `buf` from `offset`; UnexpectedEof if the file ends first.
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes from `buf` at `offset` with one positional write (`tpc_portable::write_at`),
/// retried if interrupted; the count written.
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    loop {
        match tpc_portable::write_at(file, buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Why a positional write of `len` bytes at `offset` to `file`, a temporary that the
/// failure discards, stopped after `written`: the errno and a message naming it. Writes
/// to a regular file stop short only when room ran out (device, quota or file size
/// limit). A driver's write takes the caller's buffer, so its rest cannot be written
/// again to learn which: one byte past what was written stands in for it, and its errno
/// names the cause. The byte can go through when another writer gave room back in
/// between (a failed file's temporary removed, say); room ran out all the same, so that
/// is ENOSPC. At the file size limit the byte raises SIGXFSZ, which `tpc-xfer` ignores
/// (`main`) so that the byte fails with EFBIG instead.
pub fn short_write(file: &File, offset: u64, written: usize, len: usize) -> (i32, String) {
    let at = offset + written as u64;
    let errno = match write_at(file, &[0u8], at) {
        Err(e) => e.raw_os_error().unwrap_or(libc::ENOSPC),
        Ok(_) => libc::ENOSPC,
    };
    let message = format!(
        "{} (short write at offset {offset}: {written} of {len} bytes)",
        errno_text(errno)
    );
    (errno, message)
}

/// Sets permission bits and access and modification times (seconds, nanoseconds)
/// through an open file. Windows keeps one permission bit: the file is read-only
/// when `mode` grants no write (`0o200`), as Rust's `Permissions::set_readonly` maps it.
pub fn set_mode_and_times(
    file: &File,
    mode: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: valid fd.
        if unsafe { libc::fchmod(fd, (mode & 0o7777) as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let times = [timespec(atime), timespec(mtime)];
        // SAFETY: valid fd and a two-element timespec array.
        if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(windows)]
    set_windows_meta(file, Some(mode), atime, mtime)
}

/// Windows: sets the times and, with `mode` and for a regular file, the read-only
/// attribute (from the owner's write bit; a directory's read-only attribute means
/// something else there) through `file`, which must have attribute access.
#[cfg(windows)]
fn set_windows_meta(
    file: &File,
    mode: Option<u32>,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    let times = std::fs::FileTimes::new()
        .set_accessed(system_time(atime)?)
        .set_modified(system_time(mtime)?);
    file.set_times(times)?;
    let md = file.metadata()?;
    if let (Some(mode), true) = (mode, md.is_file()) {
        let mut perm = md.permissions();
        perm.set_readonly(mode & 0o200 == 0);
        file.set_permissions(perm)?;
    }
    Ok(())
}

/// Windows: the permission bits an entry is reported with (Windows keeps one, read-only):
/// `0o644`, or `0o755` for a directory, less the write bits when read-only.
#[cfg(windows)]
pub fn windows_mode(readonly: bool, is_dir: bool) -> u32 {
    let full = if is_dir { 0o755 } else { 0o644 };
    if readonly {
        full & !0o222
    } else {
        full
    }
}

/// Whether permission bits read back from this filesystem (`have`) already are `want`
/// as it would keep them: all of them on Unix; on Windows only the owner's write bit.
pub fn mode_matches(have: u32, want: u32) -> bool {
    if cfg!(windows) {
        have & 0o200 == want & 0o200
    } else {
        have == want
    }
}

/// Whether a time read back from this filesystem (`have`) already is `want` as it would
/// keep it: exactly on Unix; on Windows to its 100 ns step.
pub fn same_time(have: (i64, u32), want: (i64, u32)) -> bool {
    if cfg!(windows) {
        (have.0, have.1 / 100) == (want.0, want.1 / 100)
    } else {
        have == want
    }
}

/// A `timespec` of (seconds, nanoseconds) since the epoch.
#[cfg(unix)]
pub fn timespec((sec, nsec): (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

/// (seconds, nanoseconds) since the epoch as a `SystemTime`; EINVAL if it cannot be one.
pub fn system_time((sec, nsec): (i64, u32)) -> io::Result<std::time::SystemTime> {
    use std::time::{Duration, UNIX_EPOCH};
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    // (sec, nsec) is sec + nsec/1e9 with 0 <= nsec < 1e9, before the epoch too.
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(sec as u64, nsec))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
    };
    if nsec >= 1_000_000_000 {
        return Err(invalid());
    }
    t.ok_or_else(invalid)
}

/// Whether two open files are the same file (same device and inode, or on Windows the
/// same volume and file index).
pub fn same_file(a: &File, b: &File) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (a.metadata()?, b.metadata()?);
        Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
    }
    #[cfg(windows)]
    {
        use cap_fs_ext::MetadataExt;
        let a = cap_std::fs::Metadata::from_file(a)?;
        let b = cap_std::fs::Metadata::from_file(b)?;
        Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
    }
}

/// A `SystemTime` as (seconds, nanoseconds) since the epoch, the inverse of
/// `system_time`; times before the epoch have negative seconds.
pub fn since_epoch(t: std::time::SystemTime) -> (i64, u32) {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            let (sec, nsec) = (d.as_secs() as i64, d.subsec_nanos());
            if nsec == 0 {
                (-sec, 0)
            } else {
                (-sec - 1, 1_000_000_000 - nsec)
            }
        }
    }
}

/// Makes directory `path`'s entries (names created, renamed, removed) durable: an fsync
/// of the directory; on Windows FlushFileBuffers, which needs a handle with write access.
pub fn sync_dir(path: &std::path::Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(path)?.sync_all();
    // A directory opens on Windows only with FILE_FLAG_BACKUP_SEMANTICS.
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_BACKUP_SEMANTICS;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
            .open(path)?;
        flush_dir(std::os::windows::io::AsHandle::as_handle(&dir))
    }
}

/// FlushFileBuffers of the directory open as `dir`, which Windows allows only through a
/// handle with write access.
#[cfg(windows)]
pub fn flush_dir(dir: std::os::windows::io::BorrowedHandle<'_>) -> io::Result<()> {
    use windows_sys::Win32::Foundation::GENERIC_WRITE;
    reopen(dir, GENERIC_WRITE)?.sync_all()
}

/// A second handle on what `handle` is open on (ReOpenFile), with `access`: not a new
/// lookup by name, so it is the very same file or directory.
#[cfg(windows)]
pub fn reopen(handle: std::os::windows::io::BorrowedHandle<'_>, access: u32) -> io::Result<File> {
    use std::os::windows::io::{AsRawHandle, FromRawHandle};
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::Storage::FileSystem::{
        ReOpenFile, FILE_FLAG_BACKUP_SEMANTICS, FILE_SHARE_DELETE, FILE_SHARE_READ,
        FILE_SHARE_WRITE,
    };
    // SAFETY: a valid handle; the new handle is owned by the File returned.
    let new = unsafe {
        ReOpenFile(
            handle.as_raw_handle(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            FILE_FLAG_BACKUP_SEMANTICS,
        )
    };
    if new == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle that nobody else owns.
    Ok(unsafe { File::from_raw_handle(new) })
}

/// Whether `file` has holes: fewer blocks allocated than its size needs (Linux; `false`
/// elsewhere, where holes are not looked for). What makes a copy keep holes.
pub fn is_sparse(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata()
            .is_ok_and(|m| m.blocks().saturating_mul(512) < m.size())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Whether `len` bytes of `file` at `offset` are all a hole (no data: `SEEK_DATA` finds
/// the next data past them, or none). An error says no: the bytes are then read.
pub fn is_hole(file: &File, offset: u64, len: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(at) = libc::off_t::try_from(offset) else {
            return false;
        };
        // SAFETY: lseek on an open descriptor; it only moves the file offset, which
        // positional reads (pread) do not use.
        let next = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
        if next < 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
        }
        next as u64 >= offset.saturating_add(len)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_before_and_after_the_epoch() {
        // Windows keeps times in 100 ns steps, so these are whole steps.
        for t in [
            (0, 0),
            (1, 200),
            (1_500_000_000, 999_999_900),
            (-1, 0),
            (-2, 500),
        ] {
            assert_eq!(since_epoch(system_time(t).unwrap()), t, "{t:?}");
        }
        assert!(system_time((0, 1_000_000_000)).is_err());
    }
}
