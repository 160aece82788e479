//! What `--delete` removes: the destination entries beneath a source's landing that no
//! source holds, less those a filter rule protects (rsync's `--delete` without
//! `--delete-excluded`: an excluded name is neither sent nor deleted), and less the
//! directories that would still hold something after the rest is gone.

use std::collections::HashSet;

use crate::filter::Filter;

/// One destination entry beneath a landing, by its path from the landing (`/` between
/// names, never empty). A listing gives each directory before what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<u8>,
    pub is_dir: bool,
}

/// The entries of `dest` to remove, as indices into it, each before the directory that
/// holds it. `in_source` says whether a source holds an entry at a path; `name` is the
/// landing's own path among the transfer's paths (`walk::transfer_name`), which the
/// filter's patterns see before each path.
pub fn extraneous(
    dest: &[Found],
    in_source: impl Fn(&[u8]) -> bool,
    filter: &Filter,
    name: &[u8],
) -> Vec<usize> {
    let named = |path: &[u8]| -> Vec<u8> {
        if name.is_empty() {
            path.to_vec()
        } else {
            [name, b"/", path].concat()
        }
    };
    let mut remove = vec![false; dest.len()];
    // A protected directory's whole subtree stays, unlisted by the rules as in rsync; it
    // and everything beneath it are named here, as each comes after its directory.
    let mut protected: HashSet<&[u8]> = HashSet::new();
    for (i, e) in dest.iter().enumerate() {
        if parent(&e.path).is_some_and(|p| protected.contains(p)) {
            protected.insert(&e.path);
            continue;
        }
        if filter.excludes_by_rule(&named(&e.path), e.is_dir) {
            protected.insert(&e.path);
            continue;
        }
        remove[i] = !in_source(&e.path);
    }
    // Deepest first: what stays keeps its directories.
    let mut holds_kept: HashSet<&[u8]> = HashSet::new();
    let mut order = Vec::new();
    for (i, e) in dest.iter().enumerate().rev() {
        if remove[i] && e.is_dir && holds_kept.contains(e.path.as_slice()) {
            remove[i] = false;
        }
        if remove[i] {
            order.push(i);
        } else if let Some(p) = parent(&e.path) {
            holds_kept.insert(p);
        }
    }
    order
}

/// `path` less its last name; `None` at the top.
fn parent(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Action;

    fn found(paths: &[&str]) -> Vec<Found> {
        paths
            .iter()
            .map(|p| Found {
                path: p.trim_end_matches('/').as_bytes().to_vec(),
                is_dir: p.ends_with('/'),
            })
            .collect()
    }

    fn removed(dest: &[Found], source: &[&str], filter: &Filter) -> Vec<String> {
        let held = |p: &[u8]| source.iter().any(|s| s.as_bytes() == p);
        extraneous(dest, held, filter, b"")
            .into_iter()
            .map(|i| String::from_utf8(dest[i].path.clone()).unwrap())
            .collect()
    }

    #[test]
    fn what_no_source_holds_goes_children_first() {
        let dest = found(&["a", "d/", "d/x", "d/y/", "d/y/z", "k"]);
        let got = removed(&dest, &["a", "k"], &Filter::default());
        assert_eq!(got, ["d/y/z", "d/y", "d/x", "d"]);
        assert!(removed(
            &dest,
            &["a", "d", "d/x", "d/y", "d/y/z", "k"],
            &Filter::default()
        )
        .is_empty());
    }

    #[test]
    fn an_excluded_name_is_protected_and_keeps_its_directories() {
        let mut f = Filter::default();
        f.add(Action::Exclude, "*.keep").unwrap();
        f.add(Action::Exclude, "cache/").unwrap();
        // A walk lists a directory's entries before its subdirectories' (not pre-order).
        let dest = found(&["d/", "cache/", "e", "d/a.keep", "d/b", "cache/junk"]);
        let got = removed(&dest, &[], &f);
        assert_eq!(
            got,
            ["d/b", "e"],
            "d holds a.keep; cache/ is protected whole"
        );
    }

    #[test]
    fn sizes_protect_nothing() {
        let mut f = Filter::default();
        f.max_size = Some(1);
        assert_eq!(removed(&found(&["big"]), &[], &f), ["big"]);
    }
}
