//! Change detection: does a destination entry already match its source, and how do two
//! trees differ. Works on metadata and digests that the drivers collected.

use std::collections::BTreeMap;

use crate::digest::FileDigest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device: never copied.
    Special,
}

/// What the engine compares about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryKind,
    pub size_bytes: u64,
    /// Permission bits, `mode & 0o7777`.
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Target of a symlink, as raw bytes.
    pub link_target: Option<Vec<u8>>,
}

/// How `copy` decides that a file is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipPolicy {
    /// Same size and modification time (rsync's default "quick check").
    SizeAndMtime,
    /// Same size and the same BLAKE3 file digest.
    Checksum,
}

/// What a copy must do for one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write the content (new, or different).
    Copy,
    /// Content matches; only mode or mtime must be set.
    FixMetadata,
    /// Identical: nothing to do.
    Skip,
    /// Same size, but the policy asks for digests before deciding.
    NeedDigests,
}

fn same_mtime(a: &EntryMeta, b: &EntryMeta) -> bool {
    a.mtime_sec == b.mtime_sec && a.mtime_nsec == b.mtime_nsec
}

/// Decides what to do with a regular source file given what sits at the destination.
pub fn file_change(src: &EntryMeta, dst: Option<&EntryMeta>, policy: SkipPolicy) -> Change {
    assert_eq!(
        src.kind,
        EntryKind::File,
        "file_change takes a regular source file"
    );
    let Some(dst) = dst else { return Change::Copy };
    if dst.kind != EntryKind::File || dst.size_bytes != src.size_bytes {
        return Change::Copy;
    }
    match policy {
        SkipPolicy::SizeAndMtime if !same_mtime(src, dst) => Change::Copy,
        SkipPolicy::SizeAndMtime if src.mode != dst.mode => Change::FixMetadata,
        SkipPolicy::SizeAndMtime => Change::Skip,
        SkipPolicy::Checksum => Change::NeedDigests,
    }
}

/// After digests were compared for a `NeedDigests` file.
pub fn file_change_by_digest(src: &EntryMeta, dst: &EntryMeta, same_content: bool) -> Change {
    if !same_content {
        Change::Copy
    } else if src.mode != dst.mode || !same_mtime(src, dst) {
        Change::FixMetadata
    } else {
        Change::Skip
    }
}

/// What a copy does to one destination entry, for `--itemize-changes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// A file's data is written (new, or replacing a changed one).
    Transfer,
    /// A directory or symlink is made, or a symlink replaced.
    Make,
    /// Only mode or times are set.
    Attributes,
    /// A hard link to a file written or kept by the same run.
    HardLink,
}

/// The change code rsync's `--itemize-changes` writes for an entry: `YXcstpoguax`. `Y` is
/// `>` (file data written), `c` (made here), `h` (hard link) or `.` (attributes only);
/// `X` is `f`, `d` or `L`; then `+++++++++` for a new entry, or one letter per change:
/// `c` content (`--checksum`) or symlink target, `s` size, `t` mtime, `p` permissions.
/// Ownership, ACLs and xattrs (`o g u a x`) are not copied, so always `.`.
pub fn itemize(act: Act, src: &EntryMeta, before: Option<&EntryMeta>, by_digest: bool) -> String {
    let y = match act {
        Act::Transfer => '>',
        Act::Make => 'c',
        Act::Attributes => '.',
        Act::HardLink => 'h',
    };
    let x = match src.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'L',
        _ => 'f',
    };
    let Some(b) = before.filter(|b| b.kind == src.kind && act != Act::HardLink) else {
        return format!("{y}{x}+++++++++");
    };
    let flag = |on: bool, c: char| if on { c } else { '.' };
    let content = match src.kind {
        EntryKind::Symlink => b.link_target != src.link_target,
        EntryKind::File => by_digest && act == Act::Transfer,
        _ => false,
    };
    let size = src.kind == EntryKind::File && b.size_bytes != src.size_bytes;
    let perms = src.kind != EntryKind::Symlink && b.mode != src.mode;
    format!(
        "{y}{x}{}{}{}{}.....",
        flag(content, 'c'),
        flag(size, 's'),
        flag(!same_mtime(src, b), 't'),
        flag(perms, 'p'),
    )
}

/// One difference between two trees, as `check` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// In A, not in B.
    Missing(Vec<u8>),
    /// In B, not in A.
    Extra(Vec<u8>),
    Differs {
        path: Vec<u8>,
        what: Vec<&'static str>,
    },
}

/// An entry of a tree as `check` sees it: metadata, plus the digest of a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedEntry {
    pub meta: EntryMeta,
    pub digest: Option<FileDigest>,
}

/// Compares two trees keyed by relative path. The root's own entry uses the empty path;
/// its mtime is compared like any other directory's.
pub fn diff_trees(
    a: &BTreeMap<Vec<u8>, CheckedEntry>,
    b: &BTreeMap<Vec<u8>, CheckedEntry>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (path, ea) in a {
        let Some(eb) = b.get(path) else {
            out.push(Difference::Missing(path.clone()));
            continue;
        };
        let (ma, mb) = (&ea.meta, &eb.meta);
        let mut what = Vec::new();
        if ma.kind != mb.kind {
            what.push("type");
        } else {
            match ma.kind {
                EntryKind::File => {
                    if ma.size_bytes != mb.size_bytes {
                        what.push("size");
                    } else if ea.digest != eb.digest {
                        what.push("content");
                    }
                }
                EntryKind::Symlink if ma.link_target != mb.link_target => what.push("target"),
                _ => {}
            }
            // Symlink permission bits are meaningless on Linux and cannot be set.
            if ma.kind != EntryKind::Symlink && ma.mode != mb.mode {
                what.push("mode");
            }
            if !same_mtime(ma, mb) {
                what.push("mtime");
            }
        }
        if !what.is_empty() {
            out.push(Difference::Differs {
                path: path.clone(),
                what,
            });
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            out.push(Difference::Extra(path.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mode: u32, mtime: i64) -> EntryMeta {
        EntryMeta {
            kind: EntryKind::File,
            size_bytes: size,
            mode,
            mtime_sec: mtime,
            mtime_nsec: 5,
            link_target: None,
        }
    }

    #[test]
    fn quick_check() {
        let s = file(10, 0o644, 100);
        assert_eq!(
            file_change(&s, None, SkipPolicy::SizeAndMtime),
            Change::Copy
        );
        assert_eq!(
            file_change(&s, Some(&s), SkipPolicy::SizeAndMtime),
            Change::Skip
        );
        assert_eq!(
            file_change(&s, Some(&file(11, 0o644, 100)), SkipPolicy::SizeAndMtime),
            Change::Copy
        );
        assert_eq!(
            file_change(&s, Some(&file(10, 0o644, 101)), SkipPolicy::SizeAndMtime),
            Change::Copy
        );
        let mut ns = s.clone();
        ns.mtime_nsec = 6;
        assert_eq!(
            file_change(&s, Some(&ns), SkipPolicy::SizeAndMtime),
            Change::Copy
        );
        assert_eq!(
            file_change(&s, Some(&file(10, 0o600, 100)), SkipPolicy::SizeAndMtime),
            Change::FixMetadata
        );
        let mut dir = s.clone();
        dir.kind = EntryKind::Dir;
        assert_eq!(
            file_change(&s, Some(&dir), SkipPolicy::SizeAndMtime),
            Change::Copy
        );
    }

    #[test]
    fn checksum_policy_asks_for_digests_only_when_sizes_match() {
        let s = file(10, 0o644, 100);
        assert_eq!(
            file_change(&s, Some(&file(10, 0o644, 1)), SkipPolicy::Checksum),
            Change::NeedDigests
        );
        assert_eq!(
            file_change(&s, Some(&file(9, 0o644, 100)), SkipPolicy::Checksum),
            Change::Copy
        );
        assert_eq!(
            file_change_by_digest(&s, &file(10, 0o644, 1), true),
            Change::FixMetadata
        );
        assert_eq!(file_change_by_digest(&s, &s, true), Change::Skip);
        assert_eq!(file_change_by_digest(&s, &s, false), Change::Copy);
    }

    #[test]
    fn diff_reports_missing_extra_and_what_differs() {
        let d = |b: u8| Some(FileDigest([b; 32]));
        let e = |meta: EntryMeta, digest| CheckedEntry { meta, digest };
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        a.insert(b"same".to_vec(), e(file(1, 0o644, 1), d(1)));
        b.insert(b"same".to_vec(), e(file(1, 0o644, 1), d(1)));
        a.insert(b"content".to_vec(), e(file(1, 0o644, 1), d(1)));
        b.insert(b"content".to_vec(), e(file(1, 0o600, 1), d(2)));
        a.insert(b"gone".to_vec(), e(file(1, 0o644, 1), d(1)));
        b.insert(b"new".to_vec(), e(file(1, 0o644, 1), d(1)));
        let diffs = diff_trees(&a, &b);
        assert_eq!(
            diffs,
            vec![
                Difference::Differs {
                    path: b"content".to_vec(),
                    what: vec!["content", "mode"]
                },
                Difference::Missing(b"gone".to_vec()),
                Difference::Extra(b"new".to_vec()),
            ]
        );
        assert!(diff_trees(&a, &a).is_empty());
    }

    #[test]
    fn itemized_as_rsync_writes_them() {
        let file = |size, mode, sec| EntryMeta {
            kind: EntryKind::File,
            size_bytes: size,
            mode,
            mtime_sec: sec,
            mtime_nsec: 0,
            link_target: None,
        };
        let new = file(5, 0o644, 1);
        assert_eq!(itemize(Act::Transfer, &new, None, false), ">f+++++++++");
        assert_eq!(
            itemize(Act::Transfer, &new, Some(&file(4, 0o644, 2)), false),
            ">f.st......"
        );
        assert_eq!(
            itemize(Act::Transfer, &new, Some(&file(5, 0o644, 1)), true),
            ">fc........"
        );
        assert_eq!(
            itemize(Act::Attributes, &new, Some(&file(5, 0o600, 1)), false),
            ".f...p....."
        );
        assert_eq!(
            itemize(Act::HardLink, &new, Some(&new), false),
            "hf+++++++++"
        );
        let link = |t: &[u8]| EntryMeta {
            kind: EntryKind::Symlink,
            link_target: Some(t.to_vec()),
            ..file(0, 0o777, 1)
        };
        assert_eq!(
            itemize(Act::Make, &link(b"a"), Some(&link(b"b")), false),
            "cLc........"
        );
        let dir = EntryMeta {
            kind: EntryKind::Dir,
            ..file(0, 0o755, 1)
        };
        // Something else in the way is replaced: the entry is new.
        assert_eq!(
            itemize(Act::Make, &dir, Some(&file(3, 0o755, 1)), false),
            "cd+++++++++"
        );
        let older = EntryMeta {
            mtime_sec: 0,
            ..dir.clone()
        };
        assert_eq!(
            itemize(Act::Attributes, &dir, Some(&older), false),
            ".d..t......"
        );
    }
}
