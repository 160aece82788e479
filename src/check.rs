//! `tpc-xfer check A B`: compares two trees by content (BLAKE3 digests computed on the
//! shards) and metadata (type, size, mode, mtime, link target).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use std::sync::Arc;
use tpc_core::compare::{diff_trees, CheckedEntry, Difference};
use tpc_core::EntryKind;
use tpc_engine::{Beneath, JobFile};

use crate::copy::{beneath, hash_job, hold_tree, CopyOptions};
use crate::exit::{Exit, Problems};
use crate::walk::{self, quote, quote_bytes};

#[derive(Serialize)]
struct Report {
    identical: bool,
    entries_a: usize,
    entries_b: usize,
    missing: Vec<String>,
    extra: Vec<String>,
    differs: Vec<(String, Vec<&'static str>)>,
}

pub fn run(a: &Path, b: &Path, opts: &CopyOptions) -> Exit {
    let mut problems = Problems::default();
    let mut trees = Vec::new();
    for root in [a, b] {
        match walk::walk(root, None) {
            Ok((entries, errors)) => {
                for e in errors {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {}", quote(&e.path), e.error),
                    );
                }
                trees.push(entries);
            }
            Err(e) => {
                problems.report(Exit::Source, format!("cannot read {}: {e}", quote(root)));
                return problems.exit();
            }
        }
    }
    let to_map = |entries: Vec<walk::Entry>| -> BTreeMap<Vec<u8>, CheckedEntry> {
        entries
            .into_iter()
            .map(|e| {
                (
                    walk::bytes(e.rel.as_os_str()).into_owned(),
                    CheckedEntry {
                        meta: e.meta,
                        digest: None,
                    },
                )
            })
            .collect()
    };
    let tree_b = to_map(trees.pop().expect("two trees"));
    let tree_a = to_map(trees.pop().expect("two trees"));
    let (mut tree_a, mut tree_b) = (tree_a, tree_b);

    // Only files present on both sides with the same size need their content hashed.
    let pairs: Vec<Vec<u8>> = tree_a
        .iter()
        .filter(|(rel, ea)| {
            ea.meta.kind == EntryKind::File
                && tree_b.get(*rel).is_some_and(|eb| {
                    eb.meta.kind == EntryKind::File && eb.meta.size_bytes == ea.meta.size_bytes
                })
        })
        .map(|(rel, _)| rel.clone())
        .collect();
    let path_of = |root: &Path, rel: &[u8]| {
        if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(walk::os(rel))
        }
    };
    // Files are read beneath each tree held open, as the copy reads its sources.
    let mut held = Vec::new();
    for (root, entries) in [(a, &tree_a), (b, &tree_b)] {
        let is_dir = entries
            .get(&b""[..])
            .is_some_and(|e| e.meta.kind == EntryKind::Dir);
        match hold_tree(root, is_dir) {
            Ok((tree, base)) => held.push((Arc::new(tree), base)),
            Err(e) => {
                problems.report(Exit::Source, e);
                return problems.exit();
            }
        }
    }
    let roots: Vec<_> = held.iter().map(|(tree, _)| tree.clone()).collect();
    let mut files: Vec<JobFile> = Vec::with_capacity(2 * pairs.len());
    for rel in &pairs {
        let size = tree_a[rel].meta.size_bytes;
        for (side, (_, base)) in held.iter().enumerate() {
            match beneath(base, Path::new(&*walk::os(rel))) {
                Ok(at) => files.push(JobFile {
                    rel: at.as_bytes().to_vec(),
                    src: Beneath {
                        root: side,
                        rel: at,
                    },
                    listed: None,
                    dst: None,
                    size_bytes: size,
                }),
                Err(e) => {
                    problems.report(
                        Exit::Source,
                        format!("cannot read {}: {e}", quote_bytes(rel)),
                    );
                    return problems.exit();
                }
            }
        }
    }
    let digests = match hash_job(roots, files, opts) {
        Ok(d) => d,
        Err(e) => {
            problems.report(Exit::Engine, e);
            return problems.exit();
        }
    };
    for (i, rel) in pairs.iter().enumerate() {
        for (side, tree, root) in [(0, &mut tree_a, a), (1, &mut tree_b, b)] {
            match &digests[2 * i + side] {
                Ok(d) => tree.get_mut(rel).expect("listed").digest = Some(*d),
                Err(e) => problems.report(
                    Exit::Source,
                    format!("cannot read {}: {e}", quote(&path_of(root, rel))),
                ),
            }
        }
    }

    let diffs = diff_trees(&tree_a, &tree_b);
    let mut report = Report {
        identical: diffs.is_empty(),
        entries_a: tree_a.len(),
        entries_b: tree_b.len(),
        missing: vec![],
        extra: vec![],
        differs: vec![],
    };
    let show = |rel: &[u8]| {
        if rel.is_empty() {
            "'.'".to_string()
        } else {
            quote_bytes(rel)
        }
    };
    for d in &diffs {
        match d {
            Difference::Missing(p) => report.missing.push(show(p)),
            Difference::Extra(p) => report.extra.push(show(p)),
            Difference::Differs { path, what } => report.differs.push((show(path), what.clone())),
        }
    }
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        for p in &report.missing {
            println!("missing  {p}");
        }
        for p in &report.extra {
            println!("extra    {p}");
        }
        for (p, what) in &report.differs {
            println!("differs  {p} ({})", what.join(", "));
        }
        if !opts.quiet {
            eprintln!(
                "{}: {} entries in A, {} in B, {} missing, {} extra, {} different",
                if report.identical {
                    "identical"
                } else {
                    "trees differ"
                },
                report.entries_a,
                report.entries_b,
                report.missing.len(),
                report.extra.len(),
                report.differs.len()
            );
        }
    }
    if problems.exit() != Exit::Ok {
        return problems.exit();
    }
    if report.identical {
        Exit::Ok
    } else {
        Exit::Differ
    }
}
