//! Relative paths received from a peer, validated before anything touches a filesystem.
//!
//! A `RelPath` names an entry beneath a transfer root. Parsing refuses everything that
//! could name something else (an absolute path, `..`), everything the kernel would
//! reinterpret (`.`, empty components, a trailing `/`, a NUL that would cut the C string
//! short) and everything beyond the named limits, so the driver that resolves it (with
//! `openat2(RESOLVE_BENEATH)`) only ever sees plain names joined by single slashes. Any
//! other byte is a legal name byte: spaces, newlines, leading dashes and non-UTF-8 names
//! all occur in real trees and must round-trip.

use std::fmt;

use crate::limits::{NAME_BYTES_MAX, PATH_BYTES_MAX, TREE_DEPTH_MAX};

/// A validated relative path: zero or more names separated by single `/`.
/// The empty path is the root itself.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

/// Why a path was refused. Offsets are byte offsets into the refused path (for `join`,
/// into the path the join would have produced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Starts with `/`.
    Absolute,
    /// Ends with `/`.
    TrailingSlash,
    /// Two slashes in a row, or `join` with an empty name.
    EmptyComponent { offset: usize },
    /// A `.` component.
    Dot { offset: usize },
    /// A `..` component.
    DotDot { offset: usize },
    /// A NUL byte, which would end the path early in every syscall.
    Nul { offset: usize },
    /// `join` was given a name containing `/`: a name is one component.
    Slash { offset: usize },
    /// One component longer than `NAME_BYTES_MAX`.
    NameTooLong { offset: usize, name_bytes: usize },
    /// The whole path is longer than `PATH_BYTES_MAX`.
    TooLong { path_bytes: usize },
    /// More than `TREE_DEPTH_MAX` components.
    TooDeep { components: usize },
}

impl RelPath {
    /// The root itself.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Validates a path received from the wire (see the module documentation for the rules).
    pub fn parse(bytes: &[u8]) -> Result<RelPath, PathError> {
        // Length first: the scan below is then bounded no matter what a peer sends.
        if bytes.len() > PATH_BYTES_MAX {
            return Err(PathError::TooLong {
                path_bytes: bytes.len(),
            });
        }
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute);
        }
        if bytes[bytes.len() - 1] == b'/' {
            return Err(PathError::TrailingSlash);
        }
        let mut offset = 0;
        let mut components = 0;
        for name in bytes.split(|&b| b == b'/') {
            components += 1;
            if components > TREE_DEPTH_MAX {
                return Err(PathError::TooDeep {
                    components: bytes.split(|&b| b == b'/').count(),
                });
            }
            check_name(name, offset)?;
            offset += name.len() + 1;
        }
        Ok(RelPath(bytes.to_vec()))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as sent on the wire and passed to syscalls (never contains NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The names from the root down; none for the root.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        // `split` on an empty slice yields one empty item; the root has no components.
        let bytes: &[u8] = &self.0;
        bytes
            .split(|&b| b == b'/')
            .filter(move |_| !bytes.is_empty())
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The containing directory; `None` for the root, the root for a single name.
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        let parent = match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => self.0[..slash].to_vec(),
            None => Vec::new(),
        };
        Some(RelPath(parent))
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&[u8]> {
        if self.is_root() {
            return None;
        }
        let start = self.0.iter().rposition(|&b| b == b'/').map_or(0, |s| s + 1);
        Some(&self.0[start..])
    }

    /// This path with one more component. `name` must be a single valid name.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        let offset = if self.is_root() { 0 } else { self.0.len() + 1 };
        let path_bytes = offset + name.len();
        if path_bytes > PATH_BYTES_MAX {
            return Err(PathError::TooLong { path_bytes });
        }
        if let Some(slash) = name.iter().position(|&b| b == b'/') {
            return Err(PathError::Slash {
                offset: offset + slash,
            });
        }
        check_name(name, offset)?;
        let components = self.depth() + 1;
        if components > TREE_DEPTH_MAX {
            return Err(PathError::TooDeep { components });
        }
        let mut joined = Vec::with_capacity(path_bytes);
        joined.extend_from_slice(&self.0);
        if !self.is_root() {
            joined.push(b'/');
        }
        joined.extend_from_slice(name);
        Ok(RelPath(joined))
    }
}

/// Checks one component that starts at `offset` in its path.
fn check_name(name: &[u8], offset: usize) -> Result<(), PathError> {
    match name {
        b"" => return Err(PathError::EmptyComponent { offset }),
        b"." => return Err(PathError::Dot { offset }),
        b".." => return Err(PathError::DotDot { offset }),
        _ => {}
    }
    if let Some(nul) = name.iter().position(|&b| b == 0) {
        return Err(PathError::Nul {
            offset: offset + nul,
        });
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(PathError::NameTooLong {
            offset,
            name_bytes: name.len(),
        });
    }
    Ok(())
}

/// Writes `bytes` so that the result is one line of valid UTF-8 that still tells names
/// apart: control characters, `\` and `'` are escaped, and bytes that are not UTF-8 are
/// shown as `\xNN` rather than replaced (two different names never print alike).
fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                '\\' => f.write_str("\\\\")?,
                '\'' => f.write_str("\\'")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// For messages: escaped as above; the root prints as `.`.
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        write_escaped(f, &self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelPath('")?;
        write_escaped(f, &self.0)?;
        f.write_str("')")
    }
}

impl AsRef<[u8]> for RelPath {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Absolute => write!(f, "path is absolute (starts with '/')"),
            PathError::TrailingSlash => write!(f, "path ends with '/'"),
            PathError::EmptyComponent { offset } => {
                write!(f, "empty path component at byte {offset}")
            }
            PathError::Dot { offset } => write!(f, "'.' path component at byte {offset}"),
            PathError::DotDot { offset } => write!(f, "'..' path component at byte {offset}"),
            PathError::Nul { offset } => write!(f, "NUL byte in path at byte {offset}"),
            PathError::Slash { offset } => {
                write!(f, "name contains '/' (at byte {offset} of the path)")
            }
            PathError::NameTooLong { offset, name_bytes } => write!(
                f,
                "path component at byte {offset} is {name_bytes} bytes (at most {NAME_BYTES_MAX})"
            ),
            PathError::TooLong { path_bytes } => {
                write!(f, "path is {path_bytes} bytes (at most {PATH_BYTES_MAX})")
            }
            PathError::TooDeep { components } => write!(
                f,
                "path has {components} components (at most {TREE_DEPTH_MAX})"
            ),
        }
    }
}

impl std::error::Error for PathError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(bytes: &[u8]) -> RelPath {
        RelPath::parse(bytes).unwrap_or_else(|e| panic!("{bytes:?} refused: {e}"))
    }

    fn err(bytes: &[u8]) -> PathError {
        match RelPath::parse(bytes) {
            Ok(p) => panic!("{p:?} accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_path_is_the_root() {
        let root = ok(b"");
        assert!(root.is_root());
        assert_eq!(root, RelPath::root());
        assert_eq!(root.as_bytes(), b"");
        assert_eq!(root.components().count(), 0);
        assert_eq!(root.depth(), 0);
        assert_eq!(root.parent(), None);
        assert_eq!(root.file_name(), None);
        assert_eq!(root.to_string(), ".");
    }

    #[test]
    fn plain_paths_are_accepted_and_split() {
        let p = ok(b"a/bc/d.txt");
        assert!(!p.is_root());
        assert_eq!(p.as_bytes(), b"a/bc/d.txt");
        let parts: Vec<&[u8]> = p.components().collect();
        assert_eq!(parts, vec![&b"a"[..], b"bc", b"d.txt"]);
        assert_eq!(p.depth(), 3);
        assert_eq!(p.file_name(), Some(&b"d.txt"[..]));
        assert_eq!(p.parent(), Some(ok(b"a/bc")));
        assert_eq!(ok(b"a").parent(), Some(RelPath::root()));
        assert_eq!(ok(b"a").file_name(), Some(&b"a"[..]));
    }

    #[test]
    fn odd_names_are_accepted() {
        for name in [
            &b"with space"[..],
            b"new\nline",
            b"tab\there",
            b"-rf",
            b"--",
            b"\xff\xfe not utf-8",
            b"...",
            b".hidden",
            b"..x",
            b"x..",
            b"back\\slash",
            b"quote'd",
            b"\x01\x7f",
            "ünïcødé".as_bytes(),
        ] {
            let p = ok(name);
            assert_eq!(p.as_bytes(), name);
            assert_eq!(p.components().count(), 1);
            let nested = ok(&[b"d/", name, b"/e"].concat());
            assert_eq!(nested.components().nth(1), Some(name));
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        assert_eq!(err(b"/"), PathError::Absolute);
        assert_eq!(err(b"/etc/x"), PathError::Absolute);
        assert_eq!(err(b"//x"), PathError::Absolute);
    }

    #[test]
    fn trailing_slash_is_refused() {
        assert_eq!(err(b"a/"), PathError::TrailingSlash);
        assert_eq!(err(b"a/b/"), PathError::TrailingSlash);
    }

    #[test]
    fn empty_components_are_refused() {
        assert_eq!(err(b"a//b"), PathError::EmptyComponent { offset: 2 });
        assert_eq!(err(b"a/b///c"), PathError::EmptyComponent { offset: 4 });
    }

    #[test]
    fn dot_and_dotdot_are_refused() {
        assert_eq!(err(b"."), PathError::Dot { offset: 0 });
        assert_eq!(err(b"a/./b"), PathError::Dot { offset: 2 });
        assert_eq!(err(b"a/."), PathError::Dot { offset: 2 });
        assert_eq!(err(b".."), PathError::DotDot { offset: 0 });
        assert_eq!(err(b"../x"), PathError::DotDot { offset: 0 });
        assert_eq!(err(b"a/../../x"), PathError::DotDot { offset: 2 });
        assert_eq!(err(b"a/b/.."), PathError::DotDot { offset: 4 });
    }

    #[test]
    fn nul_is_refused_anywhere() {
        assert_eq!(err(b"\0"), PathError::Nul { offset: 0 });
        assert_eq!(err(b"a\0b"), PathError::Nul { offset: 1 });
        assert_eq!(err(b"a/b\0"), PathError::Nul { offset: 3 });
    }

    #[test]
    fn component_length_limit() {
        let max = vec![b'n'; NAME_BYTES_MAX];
        ok(&max);
        ok(&[b"d/", &max[..]].concat());
        let over = vec![b'n'; NAME_BYTES_MAX + 1];
        assert_eq!(
            err(&over),
            PathError::NameTooLong {
                offset: 0,
                name_bytes: NAME_BYTES_MAX + 1
            }
        );
        assert_eq!(
            err(&[b"d/", &over[..]].concat()),
            PathError::NameTooLong {
                offset: 2,
                name_bytes: NAME_BYTES_MAX + 1
            }
        );
    }

    #[test]
    fn total_length_limit() {
        // Names of 99 bytes plus a slash: 100 bytes per component.
        let name = vec![b'n'; 99];
        let mut path = Vec::new();
        while path.len() + 100 <= PATH_BYTES_MAX {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
        }
        path.resize(PATH_BYTES_MAX, b'x');
        assert_eq!(path.len(), PATH_BYTES_MAX);
        ok(&path);
        path.push(b'x');
        assert_eq!(
            err(&path),
            PathError::TooLong {
                path_bytes: PATH_BYTES_MAX + 1
            }
        );
    }

    #[test]
    fn depth_limit() {
        let at_max = vec!["d"; TREE_DEPTH_MAX].join("/");
        assert!(at_max.len() <= PATH_BYTES_MAX);
        assert_eq!(ok(at_max.as_bytes()).depth(), TREE_DEPTH_MAX);
        let over = vec!["d"; TREE_DEPTH_MAX + 1].join("/");
        assert!(over.len() <= PATH_BYTES_MAX);
        assert_eq!(
            err(over.as_bytes()),
            PathError::TooDeep {
                components: TREE_DEPTH_MAX + 1
            }
        );
        let deepest = ok(at_max.as_bytes());
        assert_eq!(
            deepest.join(b"d"),
            Err(PathError::TooDeep {
                components: TREE_DEPTH_MAX + 1
            })
        );
    }

    #[test]
    fn join_builds_valid_paths() {
        let root = RelPath::root();
        let a = root.join(b"a").unwrap();
        assert_eq!(a, ok(b"a"));
        let ab = a.join(b"b c\n").unwrap();
        assert_eq!(ab.as_bytes(), b"a/b c\n");
        assert_eq!(ab.parent(), Some(a.clone()));
        assert_eq!(ab.file_name(), Some(&b"b c\n"[..]));
        assert_eq!(RelPath::parse(ab.as_bytes()), Ok(ab));
    }

    #[test]
    fn join_refuses_what_parse_refuses() {
        let a = ok(b"a");
        let root = RelPath::root();
        assert_eq!(root.join(b""), Err(PathError::EmptyComponent { offset: 0 }));
        assert_eq!(a.join(b""), Err(PathError::EmptyComponent { offset: 2 }));
        assert_eq!(a.join(b"."), Err(PathError::Dot { offset: 2 }));
        assert_eq!(a.join(b".."), Err(PathError::DotDot { offset: 2 }));
        assert_eq!(a.join(b"x\0"), Err(PathError::Nul { offset: 3 }));
        assert_eq!(a.join(b"x/y"), Err(PathError::Slash { offset: 3 }));
        assert_eq!(root.join(b"/"), Err(PathError::Slash { offset: 0 }));
        assert_eq!(
            a.join(&vec![b'n'; NAME_BYTES_MAX + 1]),
            Err(PathError::NameTooLong {
                offset: 2,
                name_bytes: NAME_BYTES_MAX + 1
            })
        );
        // 20 names of 200 bytes: 4019 bytes; one more name would make 4220.
        let long = (0..20)
            .try_fold(RelPath::root(), |p, _| p.join(&[b'n'; 200]))
            .unwrap();
        assert_eq!(long.as_bytes().len(), 20 * 201 - 1);
        assert_eq!(
            long.join(&[b'n'; 200]),
            Err(PathError::TooLong {
                path_bytes: 21 * 201 - 1
            })
        );
    }

    #[test]
    fn display_is_one_escaped_line() {
        let p = ok(b"dir/new\nline\t\\'x'\xff\x01/\xc3\xa9");
        let shown = p.to_string();
        assert_eq!(shown, "dir/new\\nline\\t\\\\\\'x\\'\\xff\\x01/é");
        assert!(!shown.contains('\n'));
        // Distinct names stay distinct: an invalid byte is not replaced by U+FFFD.
        assert_ne!(ok(b"\xff").to_string(), ok(b"\xfe").to_string());
        assert_eq!(format!("{p:?}"), format!("RelPath('{shown}')"));
    }

    #[test]
    fn errors_display_one_line() {
        let errors = [
            err(b"/x"),
            err(b"x/"),
            err(b"a//b"),
            err(b"./a"),
            err(b"a/.."),
            err(b"a\0"),
            err(&vec![b'n'; NAME_BYTES_MAX + 1]),
            err(&vec![b'n'; PATH_BYTES_MAX + 1]),
            RelPath::root().join(b"a/b").unwrap_err(),
        ];
        for e in errors {
            let shown = e.to_string();
            assert!(!shown.is_empty() && !shown.contains('\n'), "{shown:?}");
        }
        let boxed: Box<dyn std::error::Error> = Box::new(PathError::Absolute);
        assert_eq!(boxed.to_string(), "path is absolute (starts with '/')");
    }
}
