//! Which entries a transfer takes: rsync's `--include` / `--exclude` rules (first match
//! wins), and `--min-size` / `--max-size` for regular files. The walker asks about each
//! entry by its path from the transfer's root, as rsync names it (`SRC/` gives paths
//! inside SRC; `SRC` gives `SRC/...`); an excluded directory is not descended into.
//!
//! Patterns have rsync's meaning:
//! - `*` and `?` match within one name, `[...]` a class, `\` escapes; `**` matches across
//!   `/` and must be a whole name (`a/**/b`, `**/x`, `x/**`), as globset requires.
//! - A pattern with a `/` (other than a trailing one), or with `**`, is matched against
//!   the whole path: from the root if it starts with `/`, else against any trailing part
//!   that starts at a name (`b/c` matches `a/b/c`). Without one it is matched against the
//!   last name only.
//! - A trailing `/` matches directories only; a trailing `/***` matches the directory
//!   and everything beneath it.
//!
//! globset compiles the patterns (a well-kept matcher, ripgrep's); what it would read
//! otherwise is escaped first: `{` and `}` are literal in rsync, alternation in globset.
//!
//! `--files-from` is a list, not patterns: the paths it names (from the source
//! directory) are taken, with the directories above them, and nothing else; a listed
//! directory is taken without its contents, unless written with a trailing `/` or `/.`:
//! then with the entries directly in it, subdirectories empty (rsync's `--files-from`
//! with `-a`, which implies `--dirs` and not `-r`). The rules still apply to what it
//! lists.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

use crate::limits::PATH_BYTES_MAX;

/// Rules at most, and their patterns' bytes in all. Each rule costs a compiled matcher
/// and a look at every entry, and a pull's server or a push's `--delete` compiles the
/// peer's: these bound what a peer can make it hold and do. rsync users' rule files run
/// to tens of lines.
pub const RULES_MAX: usize = 1024;
pub const RULES_BYTES_MAX: usize = 64 * 1024;
/// Longest pattern.
pub const PATTERN_BYTES_MAX: usize = 4096;
/// Paths a `--files-from` list may name, and the bytes of the list and of what it is
/// held as (its paths and the directories above them, each once): a million paths of
/// a hundred bytes fit. Each line is a path, within `PATH_BYTES_MAX`.
pub const FILES_FROM_PATHS_MAX: usize = 4 << 20;
pub const FILES_FROM_BYTES_MAX: u64 = 256 << 20;

/// What a rule does with what it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Include,
    Exclude,
}

/// Why a rule or a size cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

struct Rule {
    action: Action,
    /// What the user wrote, for messages.
    pattern: String,
    /// Each with whether it matches directories only.
    matchers: Vec<(GlobMatcher, bool)>,
    /// Matched against the whole path, not the last name.
    whole_path: bool,
}

/// A `--files-from` list.
#[derive(Default)]
struct Listed {
    paths: HashSet<Vec<u8>>,
    /// The directories above the paths.
    above: HashSet<Vec<u8>>,
    /// Directories listed as `dir/` or `dir/.`: their entries are taken too.
    contents: HashSet<Vec<u8>>,
    /// Bytes held in the three sets, each entry counted with `ENTRY_OVERHEAD_BYTES`,
    /// within `FILES_FROM_BYTES_MAX`.
    held_bytes: u64,
}

impl Listed {
    /// Whether the list names `path` itself: listed, or directly inside a directory
    /// listed as `dir/`.
    fn names(&self, path: &[u8]) -> bool {
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => b"",
        };
        self.paths.contains(path) || self.contents.contains(parent)
    }
}

/// What one entry of a `--files-from` set costs beyond its bytes: the `Vec` and the hash
/// set's slot.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// A transfer's rules and size limits. The default takes everything.
#[derive(Default)]
pub struct Filter {
    rules: Vec<Rule>,
    /// Bytes of the rules' patterns, within `RULES_BYTES_MAX`.
    rules_bytes: usize,
    /// Regular files smaller than this are left out (`--min-size`).
    pub min_size: Option<u64>,
    /// Regular files larger than this are left out (`--max-size`).
    pub max_size: Option<u64>,
    /// `--files-from`: the paths listed, and the directories above them.
    listed: Option<Listed>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<_> = self.rules.iter().map(|r| (r.action, &r.pattern)).collect();
        f.debug_struct("Filter")
            .field("rules", &rules)
            .field("min_size", &self.min_size)
            .field("max_size", &self.max_size)
            .finish()
    }
}

/// `pattern` with rsync's literal braces escaped for globset.
fn escape_braces(pattern: &str) -> Cow<'_, str> {
    if !pattern.contains(['{', '}']) {
        return Cow::Borrowed(pattern);
    }
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' | '}' if !in_class => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn compile(glob: &str, shown: &str) -> Result<GlobMatcher, FilterError> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| FilterError(format!("pattern '{shown}': {}", e.kind())))
}

impl Filter {
    /// Whether any rule or limit is set.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.min_size.is_none()
            && self.max_size.is_none()
            && self.listed.is_none()
    }

    /// Adds a rule after those already there. As in rsync's `--include`/`--exclude`, a
    /// pattern written `+ PAT` or `- PAT` is an include or an exclude whatever the flag,
    /// and `!` clears the rules given so far.
    pub fn add(&mut self, action: Action, pattern: &str) -> Result<(), FilterError> {
        if pattern == "!" {
            self.rules.clear();
            self.rules_bytes = 0;
            return Ok(());
        }
        let (action, pattern) = if let Some(p) = pattern.strip_prefix("+ ") {
            (Action::Include, p)
        } else if let Some(p) = pattern.strip_prefix("- ") {
            (Action::Exclude, p)
        } else {
            (action, pattern)
        };
        if self.rules.len() >= RULES_MAX {
            return Err(FilterError(format!("more than {RULES_MAX} filter rules")));
        }
        if self.rules_bytes + pattern.len() > RULES_BYTES_MAX {
            return Err(FilterError(format!(
                "filter rules longer than {RULES_BYTES_MAX} bytes in all"
            )));
        }
        if pattern.len() > PATTERN_BYTES_MAX {
            return Err(FilterError(format!(
                "a pattern longer than {PATTERN_BYTES_MAX} bytes"
            )));
        }
        if pattern.is_empty() {
            return Err(FilterError("an empty pattern".into()));
        }
        let mut p = pattern;
        let mut dir_only = false;
        let mut and_below = false;
        if let Some(base) = p.strip_suffix("/***") {
            and_below = true;
            p = base;
        } else if let Some(base) = p.strip_suffix('/') {
            dir_only = true;
            p = base;
        }
        let anchored = p.starts_with('/');
        let p = p.trim_start_matches('/');
        if p.is_empty() {
            return Err(FilterError(format!("pattern '{pattern}' names nothing")));
        }
        if p.split('/').any(|name| name.contains("**") && name != "**") {
            // rsync's `a**b` crosses slashes; globset reads it as `a*b`, which does not.
            return Err(FilterError(format!(
                "pattern '{pattern}': '**' must be a whole name here (a/**/b, **/x, x/**)"
            )));
        }
        let whole_path = anchored || and_below || p.contains('/') || p.contains("**");
        let p = escape_braces(p);
        // Unanchored with a slash: any trailing part of the path that starts at a name.
        let base = if whole_path && !anchored && !p.starts_with("**/") {
            Cow::Owned(format!("**/{p}"))
        } else {
            p
        };
        // `dir/***` matches the directory itself "as if `dir/`", and all beneath it.
        let mut matchers = vec![(compile(&base, pattern)?, dir_only || and_below)];
        if and_below {
            matchers.push((compile(&format!("{base}/**"), pattern)?, false));
        }
        self.rules_bytes += pattern.len();
        self.rules.push(Rule {
            action,
            pattern: pattern.to_owned(),
            matchers,
            whole_path,
        });
        Ok(())
    }

    /// The rules in order, as they were given: what a push sends its server for a
    /// `--delete` (`wire::DeleteRequest`).
    pub fn rules(&self) -> impl Iterator<Item = (Action, &str)> {
        self.rules.iter().map(|r| (r.action, r.pattern.as_str()))
    }

    /// Adds the rules of a rules file (`--exclude-from`, `--include-from`): one pattern
    /// per line; blank lines and lines starting with `#` or `;` are comments, as in rsync.
    pub fn add_lines(&mut self, action: Action, text: &str) -> Result<(), FilterError> {
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            self.add(action, line)?;
        }
        Ok(())
    }

    /// Takes only the paths `text` lists (`--files-from`: one a line, from the source
    /// directory; a leading `/` and `.` names are dropped, as rsync does; blank lines and
    /// lines starting with `#` or `;` are comments), with the directories above them.
    pub fn add_files_from(&mut self, text: &[u8]) -> Result<(), FilterError> {
        if text.len() as u64 > FILES_FROM_BYTES_MAX {
            return Err(FilterError(format!(
                "--files-from: the list is larger than {FILES_FROM_BYTES_MAX} bytes"
            )));
        }
        let listed = self.listed.get_or_insert_with(Default::default);
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line[0] == b'#' || line[0] == b';' {
                continue;
            }
            if line.len() > PATH_BYTES_MAX {
                return Err(FilterError(format!(
                    "--files-from: a path longer than {PATH_BYTES_MAX} bytes"
                )));
            }
            let mut names = Vec::new();
            for name in line.split(|&b| b == b'/') {
                match name {
                    b"" | b"." => {}
                    b".." => {
                        return Err(FilterError(format!(
                            "--files-from: '{}' leaves the source directory",
                            String::from_utf8_lossy(line)
                        )))
                    }
                    name => names.push(name),
                }
            }
            let path = names.join(&b'/');
            let contents = line.ends_with(b"/") || line.ends_with(b"/.") || line == b".";
            if contents && listed.contents.insert(path.clone()) {
                listed.held_bytes += path.len() as u64 + ENTRY_OVERHEAD_BYTES;
            }
            if names.is_empty() || !listed.paths.insert(path.clone()) {
                continue;
            }
            listed.held_bytes += path.len() as u64 + ENTRY_OVERHEAD_BYTES;
            // The directories above, longest first: where one is known, so are those
            // above it, and a long list of one tree costs what it adds.
            for end in (1..names.len()).rev() {
                let above = names[..end].join(&b'/');
                let len = above.len() as u64;
                if !listed.above.insert(above) {
                    break;
                }
                listed.held_bytes += len + ENTRY_OVERHEAD_BYTES;
            }
            if listed.paths.len() > FILES_FROM_PATHS_MAX {
                return Err(FilterError(format!(
                    "--files-from: more than {FILES_FROM_PATHS_MAX} paths"
                )));
            }
            if listed.held_bytes > FILES_FROM_BYTES_MAX {
                return Err(FilterError(format!(
                    "--files-from: the paths and the directories above them hold more than {FILES_FROM_BYTES_MAX} bytes"
                )));
            }
        }
        Ok(())
    }

    /// The paths a `--files-from` list names.
    pub fn listed(&self) -> impl Iterator<Item = &[u8]> {
        self.listed
            .iter()
            .flat_map(|l| l.paths.iter().map(Vec::as_slice))
    }

    /// Whether a `--files-from` list is given.
    pub fn has_list(&self) -> bool {
        self.listed.is_some()
    }

    /// Whether a `--files-from` list leaves out the entry at `path`: it is neither listed
    /// nor above what is. Without a list, nothing is left out.
    pub fn unlisted(&self, path: &[u8]) -> bool {
        self.listed
            .as_ref()
            .is_some_and(|l| !l.names(path) && !l.above.contains(path))
    }

    /// Whether a `--files-from` list takes the entry at `path` only as a directory above
    /// what it lists.
    pub fn only_above(&self, path: &[u8]) -> bool {
        self.listed
            .as_ref()
            .is_some_and(|l| l.above.contains(path) && !l.names(path))
    }

    /// Whether the entry at `path` (from the transfer's root, `/` between names, no
    /// leading `/`) is left out. `file_size` is a regular file's size; `None` for
    /// anything else.
    pub fn excludes(&self, path: &[u8], is_dir: bool, file_size: Option<u64>) -> bool {
        file_size.is_some_and(|size| self.excludes_size(size))
            || self.unlisted(path)
            || self.excludes_by_rule(path, is_dir)
    }

    /// Whether a regular file of `size` bytes is left out by `--min-size` / `--max-size`.
    pub fn excludes_size(&self, size: u64) -> bool {
        self.min_size.is_some_and(|min| size < min) || self.max_size.is_some_and(|max| size > max)
    }

    /// Whether a rule leaves out the entry at `path`: what also protects a destination
    /// entry from `--delete`, as in rsync (sizes do not).
    pub fn excludes_by_rule(&self, path: &[u8], is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let name = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[i + 1..],
            None => path,
        };
        let (whole, last) = (candidate(path), candidate(name));
        for rule in &self.rules {
            let against = if rule.whole_path { &whole } else { &last };
            let hit = |(m, dir_only): &(GlobMatcher, bool)| {
                (is_dir || !dir_only) && m.is_match(against.as_ref())
            };
            if rule.matchers.iter().any(hit) {
                return rule.action == Action::Exclude;
            }
        }
        false
    }
}

/// A path's bytes as globset takes them: the bytes themselves on Unix, and UTF-8 (names
/// that are not are matched as their lossy form) elsewhere.
fn candidate(path: &[u8]) -> Cow<'_, std::path::Path> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(std::path::Path::new(std::ffi::OsStr::from_bytes(path)))
    }
    #[cfg(not(unix))]
    {
        Cow::Owned(std::path::PathBuf::from(
            String::from_utf8_lossy(path).into_owned(),
        ))
    }
}

/// A size as rsync's `--max-size` takes it: a number (a fraction allowed) and a suffix,
/// `K`, `M`, `G`, `T` or `P` counting in 1024s (also `KiB`...), `KB`, `MB`... in 1000s,
/// `B` or none for bytes; `+1` or `-1` after it adds or takes one byte.
pub fn parse_size(text: &str) -> Result<u64, FilterError> {
    let bad = || {
        FilterError(format!(
            "size '{text}': want a number and K, M, G, T or P (e.g. 100M, 1.5G, 10KB)"
        ))
    };
    let s = text.trim();
    let (s, adjust) = if let Some(s) = s.strip_suffix("+1") {
        (s, 1i64)
    } else if let Some(s) = s.strip_suffix("-1") {
        (s, -1)
    } else {
        (s, 0)
    };
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    if number.is_empty() || number == "." {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let upper = suffix.to_ascii_uppercase();
    let unit = match upper.as_str() {
        "" | "B" => 1.0,
        other => {
            let mut chars = other.chars();
            let letter = chars.next().unwrap_or(' ');
            let base = match chars.as_str() {
                "" | "IB" => 1024.0,
                "B" => 1000.0,
                _ => return Err(bad()),
            };
            let power = match letter {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                _ => return Err(bad()),
            };
            f64::powi(base, power)
        }
    };
    let bytes = (value * unit).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    let bytes = bytes as u64;
    Ok(match adjust {
        1 => bytes.saturating_add(1),
        -1 => bytes.saturating_sub(1),
        _ => bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(rules: &[(Action, &str)]) -> Filter {
        let mut f = Filter::default();
        for (a, p) in rules {
            f.add(*a, p).unwrap();
        }
        f
    }

    fn out(f: &Filter, path: &str) -> bool {
        f.excludes(path.as_bytes(), false, Some(1))
    }

    fn out_dir(f: &Filter, path: &str) -> bool {
        f.excludes(path.as_bytes(), true, None)
    }

    use Action::{Exclude as X, Include as I};

    #[test]
    fn a_pattern_without_a_slash_matches_the_last_name() {
        let f = filter(&[(X, "*.o")]);
        assert!(out(&f, "a.o") && out(&f, "x/y/a.o"));
        assert!(!out(&f, "a.c") && !out(&f, "a.o/b"));
        let f = filter(&[(X, "b")]);
        assert!(out(&f, "a/b") && !out(&f, "b/a"));
    }

    #[test]
    fn a_leading_slash_anchors_and_an_inner_one_matches_a_trailing_part() {
        let f = filter(&[(X, "/a/b")]);
        assert!(out(&f, "a/b") && !out(&f, "x/a/b"));
        let f = filter(&[(X, "a/b")]);
        assert!(out(&f, "a/b") && out(&f, "x/a/b") && !out(&f, "xa/b"));
        let f = filter(&[(X, "a/*")]);
        assert!(out(&f, "a/b") && !out(&f, "a/b/c"));
    }

    #[test]
    fn double_stars_cross_slashes_and_triple_takes_the_directory_too() {
        let f = filter(&[(X, "/a/**/z")]);
        assert!(out(&f, "a/z") && out(&f, "a/b/c/z") && !out(&f, "b/a/z"));
        let f = filter(&[(X, "dir/***")]);
        assert!(out_dir(&f, "dir") && out(&f, "dir/x/y") && out_dir(&f, "p/dir"));
        assert!(
            !out(&f, "dir"),
            "the base as if `dir/`: a file named dir stays"
        );
        assert!(
            Filter::default().add(X, "a**b").is_err(),
            "whole names only"
        );
    }

    #[test]
    fn a_trailing_slash_matches_directories_only() {
        let f = filter(&[(X, "build/")]);
        assert!(out_dir(&f, "build") && out_dir(&f, "x/build"));
        assert!(!out(&f, "build"));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let f = filter(&[(I, "*.rs"), (X, "*")]);
        assert!(!out(&f, "src/main.rs") && out(&f, "src/main.c"));
        let f = filter(&[(X, "*"), (I, "*.rs")]);
        assert!(out(&f, "main.rs"));
        let f = filter(&[(I, "*/"), (X, "*")]);
        assert!(!out_dir(&f, "src") && out(&f, "src/x"));
    }

    #[test]
    fn plus_and_minus_prefixes_set_the_action_and_a_bang_clears() {
        let mut f = Filter::default();
        f.add_lines(X, "+ /keep/\n- *.tmp\n*.o\n").unwrap();
        assert!(!out_dir(&f, "keep") && out(&f, "a.tmp") && out(&f, "a.o"));
        assert_eq!(f.rules().next(), Some((I, "/keep/")));
        f.add(I, "- x").unwrap();
        assert!(out(&f, "x"), "an --include of `- x` excludes");
        f.add(X, "!").unwrap();
        assert_eq!(f.rules().count(), 0);
        assert!(!out(&f, "a.o"));
    }

    #[test]
    fn braces_are_literal_and_classes_work() {
        let f = filter(&[(X, "{a,b}")]);
        assert!(out(&f, "{a,b}") && !out(&f, "a"));
        let f = filter(&[(X, "[ab].txt"), (X, "[!x]y")]);
        assert!(out(&f, "a.txt") && !out(&f, "c.txt") && out(&f, "zy") && !out(&f, "xy"));
    }

    #[test]
    fn sizes_leave_out_files_only() {
        let f = Filter {
            min_size: Some(10),
            max_size: Some(100),
            ..Default::default()
        };
        assert!(f.excludes(b"a", false, Some(9)) && f.excludes(b"a", false, Some(101)));
        assert!(!f.excludes(b"a", false, Some(10)) && !f.excludes(b"a", false, Some(100)));
        assert!(!f.excludes(b"d", true, None));
    }

    #[test]
    fn sizes_parse_as_rsync_reads_them() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1.5M"), Ok(1_572_864));
        assert_eq!(parse_size("2G-1"), Ok(2 * 1024 * 1024 * 1024 - 1));
        assert_eq!(parse_size("1M+1"), Ok(1_048_577));
        for bad in ["", "M", "1X", "1.2.3", "-5", "99999999999P", "1µ", "1Kµ"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_files_skip_comments_and_limits_hold() {
        let mut f = Filter::default();
        f.add_lines(X, "# comment\n; also\n\n*.tmp\r\n/cache/\n")
            .unwrap();
        assert_eq!(f.rules.len(), 2);
        assert!(out(&f, "a/b.tmp") && out_dir(&f, "cache"));
        assert!(f.add(X, "").is_err() && f.add(X, "/").is_err());
        assert!(f.add(X, &"a".repeat(PATTERN_BYTES_MAX + 1)).is_err());
        let mut f = Filter::default();
        for i in 0..RULES_MAX {
            f.add(X, &format!("n{i}")).unwrap();
        }
        assert!(f.add(X, "one-more").is_err(), "{RULES_MAX} rules at most");
        let mut f = Filter::default();
        let long = "b".repeat(PATTERN_BYTES_MAX);
        for _ in 0..RULES_BYTES_MAX / PATTERN_BYTES_MAX {
            f.add(X, &long).unwrap();
        }
        assert!(
            f.add(X, "c").is_err(),
            "{RULES_BYTES_MAX} bytes of patterns at most"
        );
    }

    #[test]
    fn files_from_takes_what_it_lists_and_the_directories_above() {
        let mut f = Filter::default();
        f.add_files_from(b"# a comment\n/a/b/c.txt\n./d//e\r\n\n;x\nf/\ng\n")
            .unwrap();
        for taken in ["a", "a/b", "a/b/c.txt", "d", "d/e", "f", "f/inside", "g"] {
            assert!(!f.unlisted(taken.as_bytes()), "{taken}");
        }
        let left = [
            "a/other",
            "a/b/c.txt/x",
            "f/in/deeper",
            "g/inside",
            "x",
            ";x",
            "# a comment",
            "d/e/g",
        ];
        for left in left {
            assert!(f.unlisted(left.as_bytes()), "{left}");
        }
        // `.`: the source's own entries, not their contents.
        let mut dot = Filter::default();
        dot.add_files_from(b".\n").unwrap();
        assert!(!dot.unlisted(b"top") && dot.unlisted(b"top/below"));
        assert!(f.excludes(b"a/b/zz", false, Some(1)));
        assert!(Filter::default().add_files_from(b"a/../../etc").is_err());
        assert!(!Filter::default().unlisted(b"anything"));
    }
}
