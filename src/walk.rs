//! Walking a tree without following symlinks, and reading the metadata the engine compares.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use tpc_core::filter::Filter;
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
    } else {
        (EntryKind::Special, Some(special_kind(&ft)))
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
    let os = OsMeta::of(md);
    Ok(Entry {
        rel,
        meta: EntryMeta {
            kind,
            size_bytes: if kind == EntryKind::File { md.len() } else { 0 },
            mode: os.mode,
            mtime_sec: os.mtime.0,
            mtime_nsec: os.mtime.1,
            link_target,
        },
        atime: os.atime,
        inode: os.inode,
        special,
    })
}

/// What each OS reports differently: permission bits, times, identity.
struct OsMeta {
    mode: u32,
    mtime: (i64, u32),
    atime: (i64, u32),
    inode: (u64, u64, u64),
}

impl OsMeta {
    #[cfg(unix)]
    fn of(md: &std::fs::Metadata) -> OsMeta {
        use std::os::unix::fs::MetadataExt;
        OsMeta {
            mode: md.mode() & 0o7777,
            mtime: (md.mtime(), md.mtime_nsec() as u32),
            atime: (md.atime(), md.atime_nsec() as u32),
            inode: (md.dev(), md.ino(), md.nlink()),
        }
    }

    /// Windows keeps one permission bit (read-only): `0o644`, or `0o755` for a directory,
    /// less the write bits when read-only. Its path metadata has no link count (std
    /// gives one only through an open handle), so hard links are not detected and each
    /// is copied as a file of its own (`(0, 0, 1)`: a single link).
    #[cfg(windows)]
    fn of(md: &std::fs::Metadata) -> OsMeta {
        let time =
            |t: io::Result<std::time::SystemTime>| t.map_or((0, 0), tpc_engine::os::since_epoch);
        OsMeta {
            mode: tpc_engine::os::windows_mode(md.permissions().readonly(), md.is_dir()),
            mtime: time(md.modified()),
            atime: time(md.accessed()),
            inode: (0, 0, 1),
        }
    }
}

/// What a special file (neither file, directory nor symlink) is, for the warning.
#[cfg(unix)]
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "character device"
    }
}

#[cfg(windows)]
fn special_kind(_ft: &std::fs::FileType) -> &'static str {
    "special file"
}

/// A transfer's filter, and the walked root's own path among the transfer's paths
/// (`transfer_name`): what rsync matches the patterns against.
#[derive(Clone, Copy)]
pub struct Within<'a> {
    pub filter: &'a Filter,
    pub name: &'a [u8],
    /// Where the files left out by size alone are named (relative to the walked root):
    /// rsync still lists them, so `--delete` keeps the destination's copies.
    pub sized_out: Option<&'a RefCell<Vec<PathBuf>>>,
}

impl Within<'_> {
    /// `entry`'s path among the transfer's paths, as the patterns see it.
    fn path_of(&self, entry: &Entry) -> Vec<u8> {
        let rel = bytes(entry.rel.as_os_str());
        match (self.name.is_empty(), rel.is_empty()) {
            (_, true) => self.name.to_vec(),
            (true, false) => rel.into_owned(),
            (false, false) => [self.name, b"/", &rel].concat(),
        }
    }

    /// Whether `entry` is left out.
    fn excludes(&self, entry: &Entry) -> bool {
        let path = self.path_of(entry);
        if path.is_empty() {
            // The contents of `SRC/`: their root is not an entry rsync matches.
            return false;
        }
        if self.filter.unlisted(&path) {
            return true;
        }
        // A directory taken only as the way to a `--files-from` path is not filtered,
        // as in rsync ("don't filter implied dirs"); it goes if nothing beneath it is
        // taken (`without_empty_implied`).
        if self.filter.only_above(&path) {
            return false;
        }
        if self
            .filter
            .excludes_by_rule(&path, entry.meta.kind == EntryKind::Dir)
        {
            return true;
        }
        let sized_out =
            entry.meta.kind == EntryKind::File && self.filter.excludes_size(entry.meta.size_bytes);
        if let (true, Some(list)) = (sized_out, self.sized_out) {
            list.borrow_mut().push(entry.rel.clone());
        }
        sized_out
    }
}

pub use tpc_core::place::transfer_name;

/// Walks `root` in pre-order (a directory before its children, children sorted by name).
/// The root itself is the first entry, with an empty relative path. Errors on single
/// entries are collected, and the walk goes on. What `within` leaves out is not listed,
/// nor is anything beneath a directory it leaves out; a root it leaves out gives no
/// entries at all.
pub fn walk(root: &Path, within: Option<Within<'_>>) -> io::Result<(Vec<Entry>, Vec<WalkError>)> {
    let first = lstat(root)?;
    let mut errors = Vec::new();
    if within.is_some_and(|w| w.excludes(&first)) {
        return Ok((Vec::new(), errors));
    }
    let mut entries = vec![first];
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
            // Another run's temporaries and locks are not part of the tree.
            if tpc_core::temp::parse(&bytes(&name)).is_some() {
                continue;
            }
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
            if within.is_some_and(|w| w.excludes(&entry)) {
                continue;
            }
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
    if let Some(w) = within.filter(|w| w.filter.has_list()) {
        errors.extend(missing_listed(root, w.filter, &entries));
        entries = without_empty_implied(entries, &w);
    }
    Ok((entries, errors))
}

/// A directory taken only because a `--files-from` path is beneath it goes where
/// nothing beneath it was taken (the rules left the paths out), as rsync makes such a
/// directory only for what it sends.
fn without_empty_implied(entries: Vec<Entry>, within: &Within<'_>) -> Vec<Entry> {
    let mut holds: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut keep = vec![true; entries.len()];
    // Pre-order reversed: every entry comes before the directories above it.
    for (i, e) in entries.iter().enumerate().rev() {
        let implied = e.meta.kind == EntryKind::Dir
            && !e.rel.as_os_str().is_empty()
            && within.filter.only_above(&within.path_of(e));
        if implied && !holds.contains(&e.rel) {
            keep[i] = false;
        } else if let Some(parent) = e.rel.parent() {
            holds.insert(parent.to_path_buf());
        }
    }
    entries
        .into_iter()
        .zip(keep)
        .filter_map(|(e, kept)| kept.then_some(e))
        .collect()
}

/// A `--files-from` path that is not in the source is an error, as in rsync; one the
/// rules or size limits left out is not.
fn missing_listed(root: &Path, filter: &Filter, entries: &[Entry]) -> Vec<WalkError> {
    let walked: std::collections::HashSet<Cow<'_, [u8]>> =
        entries.iter().map(|e| bytes(e.rel.as_os_str())).collect();
    let mut missing: Vec<WalkError> = filter
        .listed()
        .filter(|p| !walked.contains(*p))
        .filter_map(|p| {
            let path = root.join(&*os(p));
            let error = std::fs::symlink_metadata(&path).err()?;
            Some(WalkError { path, error })
        })
        .collect();
    missing.sort_by(|a, b| a.path.cmp(&b.path));
    missing
}

/// Quotes a path for one-line messages: control characters (a newline in a file name)
/// are escaped so that every report stays one line.
pub fn quote(path: &Path) -> String {
    quote_bytes(&bytes(path.as_os_str()))
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

/// A name or relative path as the wire and the engine carry it: on Unix its bytes; on
/// Windows its UTF-8 form (WTF-8 for ill-formed UTF-16) with `\` separators as `/`.
pub fn bytes(s: &OsStr) -> Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(s.as_bytes())
    }
    #[cfg(windows)]
    {
        let b = s.as_encoded_bytes();
        if b.contains(&b'\\') {
            Cow::Owned(
                b.iter()
                    .map(|&c| if c == b'\\' { b'/' } else { c })
                    .collect(),
            )
        } else {
            Cow::Borrowed(b)
        }
    }
}

/// The inverse of [`bytes`]: wire bytes as a name or path of this OS (`os::os_name`).
pub fn os(bytes: &[u8]) -> Cow<'_, OsStr> {
    tpc_engine::os::os_name(bytes)
}
