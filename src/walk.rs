//! Walking a tree without following symlinks, and reading the metadata the engine compares.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tpc_core::limits::{PATH_BYTES_MAX, TREE_DEPTH_MAX};
use tpc_core::{EntryKind, EntryMeta};

/// One entry of a walked tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the walked root; empty for the root itself.
    pub rel: PathBuf,
    pub meta: EntryMeta,
    pub atime: (i64, u32),
    /// (device, inode, link count) of a regular file, for hard-link detection.
    pub inode: (u64, u64, u64),
    /// What a special file is, for the warning that names it.
    pub special: Option<&'static str>,
}

/// A problem met while walking: the path and what went wrong.
#[derive(Debug)]
pub struct WalkError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// Metadata of `path` itself (never following a final symlink).
pub fn lstat(path: &Path) -> io::Result<Entry> {
    let md = std::fs::symlink_metadata(path)?;
    entry_from(PathBuf::new(), path, &md)
}

fn entry_from(rel: PathBuf, path: &Path, md: &std::fs::Metadata) -> io::Result<Entry> {
    let ft = md.file_type();
    let (kind, special) = if ft.is_file() {
        (EntryKind::File, None)
    } else if ft.is_dir() {
        (EntryKind::Dir, None)
    } else if ft.is_symlink() {
        (EntryKind::Symlink, None)
    } else if ft.is_fifo() {
        (EntryKind::Special, Some("FIFO"))
    } else if ft.is_socket() {
        (EntryKind::Special, Some("socket"))
    } else if ft.is_block_device() {
        (EntryKind::Special, Some("block device"))
    } else {
        (EntryKind::Special, Some("character device"))
    };
    let link_target = if kind == EntryKind::Symlink {
        Some(
            std::fs::read_link(path)?
                .into_os_string()
                .into_encoded_bytes(),
        )
    } else {
        None
    };
    Ok(Entry {
        rel,
        meta: EntryMeta {
            kind,
            size_bytes: if kind == EntryKind::File {
                md.size()
            } else {
                0
            },
            mode: md.mode() & 0o7777,
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            link_target,
        },
        atime: (md.atime(), md.atime_nsec() as u32),
        inode: (md.dev(), md.ino(), md.nlink()),
        special,
    })
}

/// Walks `root` in pre-order (a directory before its children, children sorted by name).
/// The root itself is the first entry, with an empty relative path. Errors on single
/// entries are collected, and the walk goes on.
pub fn walk(root: &Path) -> io::Result<(Vec<Entry>, Vec<WalkError>)> {
    let first = lstat(root)?;
    let mut entries = vec![first];
    let mut errors = Vec::new();
    if entries[0].meta.kind != EntryKind::Dir {
        return Ok((entries, errors));
    }
    // Explicit stack: deep trees must not recurse on the thread's stack.
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    while let Some((rel, depth)) = stack.pop() {
        let dir = root.join(&rel);
        let reader = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(error) => {
                errors.push(WalkError { path: dir, error });
                continue;
            }
        };
        let mut names: Vec<_> = Vec::new();
        for item in reader {
            match item {
                Ok(item) => names.push(item.file_name()),
                Err(error) => errors.push(WalkError {
                    path: dir.clone(),
                    error,
                }),
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let child_rel = rel.join(&name);
            let path = dir.join(&name);
            if path.as_os_str().len() > PATH_BYTES_MAX {
                errors.push(WalkError {
                    path,
                    error: io::Error::other(format!("path longer than {PATH_BYTES_MAX} bytes")),
                });
                continue;
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(error) => {
                    errors.push(WalkError { path, error });
                    continue;
                }
            };
            let entry = match entry_from(child_rel.clone(), &path, &md) {
                Ok(e) => e,
                Err(error) => {
                    errors.push(WalkError { path, error });
                    continue;
                }
            };
            let is_dir = entry.meta.kind == EntryKind::Dir;
            entries.push(entry);
            if is_dir {
                if depth + 1 >= TREE_DEPTH_MAX {
                    errors.push(WalkError {
                        path,
                        error: io::Error::other(format!(
                            "nested deeper than {TREE_DEPTH_MAX} levels"
                        )),
                    });
                    continue;
                }
                subdirs.push((child_rel, depth + 1));
            }
        }
        // Reverse so the stack pops them in name order: entries stay in pre-order per
        // subtree, which the copy relies on (a directory is created before its children).
        stack.extend(subdirs.into_iter().rev());
    }
    // The stack visits subtrees depth-first, but children of a directory were appended
    // when that directory was read, so a parent always precedes its children.
    Ok((entries, errors))
}

/// Quotes a path for one-line messages: control characters (a newline in a file name)
/// are escaped so that every report stays one line.
pub fn quote(path: &Path) -> String {
    quote_bytes(path.as_os_str().as_bytes())
}

pub fn quote_bytes(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}
