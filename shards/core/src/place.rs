//! rsync's placement rules: where each source of a copy lands beneath its destination.
//! One set of rules for the local copy, a push (the client places its sources beneath
//! the server's destination) and a pull (the client places the server's source beneath
//! its own destination).
//!
//! - `SRC/` (or a name ending in `.`, `..`, or nothing): a directory's contents land in
//!   DEST.
//! - `SRC`, a directory: it lands as `DEST/SRC`.
//! - A file lands as `DEST/name` when DEST is a directory, is named with a trailing
//!   slash, or several sources are given; otherwise it lands as DEST itself.
//! - DEST is made a directory when sources land beneath it by name or any source is a
//!   directory.

use crate::wire::DestKind;

/// The destination as the user named it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// What is there now.
    pub kind: DestKind,
    /// Its name ends in `/`.
    pub says_dir: bool,
}

/// One source as the user named it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// The name as given, `/` separating its parts.
    pub named: &'a [u8],
    /// It is a directory (after following a trailing-slash name to one).
    pub is_dir: bool,
}

/// Where one source lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Landing {
    /// Its contents land in the destination directory.
    Contents,
    /// It lands as `DEST/name`.
    Named(Vec<u8>),
    /// It lands as the destination path itself: one file onto a path that is not a
    /// directory.
    AsDest,
}

/// Where every source lands, and what the destination must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Sources land beneath DEST by name (several sources, `DEST/`, or DEST a directory).
    pub into_dir: bool,
    /// DEST is, or is made, a directory.
    pub dest_is_dir: bool,
    pub landings: Vec<Landing>,
}

/// Applies the rules to `sources` and `dest`.
pub fn place(sources: &[Source<'_>], dest: Dest) -> Placement {
    let into_dir = dest.kind == DestKind::Dir || dest.says_dir || sources.len() > 1;
    let landings: Vec<Landing> = sources
        .iter()
        .map(|s| {
            let name = last_name(s.named);
            let contents = s.named.ends_with(b"/") || name.is_none();
            if s.is_dir && contents {
                Landing::Contents
            } else if s.is_dir || into_dir {
                Landing::Named(name.unwrap_or(s.named).to_vec())
            } else {
                Landing::AsDest
            }
        })
        .collect();
    Placement {
        into_dir,
        dest_is_dir: into_dir || sources.iter().any(|s| s.is_dir),
        landings,
    }
}

/// A source's own path among a transfer's paths, as rsync names it for its filter
/// rules: nothing for `SRC/` (or `.`), whose contents are the transfer; else its last
/// name (`SRC` gives `SRC/...`).
pub fn transfer_name(named: &[u8]) -> &[u8] {
    if named.ends_with(b"/") {
        return b"";
    }
    last_name(named).unwrap_or_default()
}

/// The last name of `named` (trailing slashes aside), or `None` where it names no entry
/// of its own: empty, `/`, `.` or `..`.
pub fn last_name(named: &[u8]) -> Option<&[u8]> {
    let name = named.split(|&b| b == b'/').rfind(|n| !n.is_empty())?;
    (name != b"." && name != b"..").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(named: &str, is_dir: bool, kind: DestKind, says_dir: bool) -> (Landing, bool) {
        let p = place(
            &[Source {
                named: named.as_bytes(),
                is_dir,
            }],
            Dest { kind, says_dir },
        );
        (p.landings[0].clone(), p.dest_is_dir)
    }

    fn named(n: &str) -> Landing {
        Landing::Named(n.as_bytes().to_vec())
    }

    #[test]
    fn rsyncs_rules() {
        use DestKind::*;
        // Directories: a trailing slash copies the contents, no slash the directory.
        assert_eq!(
            one("a/src/", true, Missing, false),
            (Landing::Contents, true)
        );
        assert_eq!(one("a/src", true, Missing, false), (named("src"), true));
        assert_eq!(one("a/src", true, Dir, false), (named("src"), true));
        assert_eq!(one(".", true, Dir, false), (Landing::Contents, true));
        assert_eq!(one("a/..", true, Dir, false), (Landing::Contents, true));
        assert_eq!(one("/", true, Dir, false), (Landing::Contents, true));
        // A file: onto the destination itself, unless that is (or says it is) a directory.
        assert_eq!(one("a/f", false, Missing, false), (Landing::AsDest, false));
        assert_eq!(one("a/f", false, Other, false), (Landing::AsDest, false));
        assert_eq!(one("a/f", false, Dir, false), (named("f"), true));
        assert_eq!(one("a/f", false, Missing, true), (named("f"), true));
    }

    #[test]
    fn several_sources_land_by_name_in_a_directory() {
        let p = place(
            &[
                Source {
                    named: b"x/f",
                    is_dir: false,
                },
                Source {
                    named: b"d/",
                    is_dir: true,
                },
            ],
            Dest {
                kind: DestKind::Missing,
                says_dir: false,
            },
        );
        assert!(p.into_dir && p.dest_is_dir);
        assert_eq!(p.landings, [named("f"), Landing::Contents]);
    }

    #[test]
    fn last_names() {
        assert_eq!(last_name(b"a/b//"), Some(&b"b"[..]));
        assert_eq!(last_name(b"b"), Some(&b"b"[..]));
        assert_eq!(last_name(b""), None);
        assert_eq!(last_name(b"a/."), None);
    }
}
