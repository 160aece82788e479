//! `--dry-run` and `--itemize-changes` of a local copy: a dry run writes nothing at the
//! destination (a listing with content hashes, inodes and mtimes is the same after it),
//! and lists exactly what the real run then lists and does: the entries the real run
//! changes are the ones listed, no more and no fewer.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// Every entry with what a change to it would change: kind, mode, mtime, size, target,
/// inode (a replaced file is a new one) and a file's BLAKE3 hash.
fn snapshot(root: &Path) -> Vec<(Listed, u64, Option<[u8; 32]>)> {
    list(root)
        .into_iter()
        .map(|e| {
            let p = root.join(&e.0);
            let ino = std::fs::symlink_metadata(&p).unwrap().ino();
            let hash = (e.1 == 'f').then(|| *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes());
            (e, ino, hash)
        })
        .collect()
}

/// The paths whose entries differ between two snapshots, or are in one only.
fn changed(
    a: &[(Listed, u64, Option<[u8; 32]>)],
    b: &[(Listed, u64, Option<[u8; 32]>)],
) -> BTreeSet<PathBuf> {
    let a: BTreeSet<_> = a.iter().collect();
    let b: BTreeSet<_> = b.iter().collect();
    a.symmetric_difference(&b).map(|e| e.0 .0.clone()).collect()
}

/// The paths an itemized list names (`./` is the root).
fn named(items: &str) -> BTreeSet<PathBuf> {
    items
        .lines()
        .map(|l| {
            let name = &l[12..];
            let name = name
                .split(" -> ")
                .next()
                .unwrap()
                .split(" => ")
                .next()
                .unwrap();
            let name = name.strip_suffix('/').unwrap_or(name);
            PathBuf::from(if name == "." { "" } else { name })
        })
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_dry_run_writes_nothing_and_lists_what_the_real_run_then_does() {
    let s = Scratch::new("dry-run");
    let src = s.path("src");
    let dst = s.path("dst");
    for d in ["a/b", "c", "gone-dir/inner"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let write = |rel: &str, data: &[u8]| std::fs::write(src.join(rel), data).unwrap();
    write("same", b"unchanged");
    write("grows", b"short");
    write("edited", b"0123456789");
    write("mode-only", b"m");
    write("a/b/deep", b"deep");
    write("first", b"linked");
    std::fs::hard_link(src.join("first"), src.join("second")).unwrap();
    write("gone", b"removed from the source later");
    write("gone-dir/inner/x", b"x");
    write("kept.keep", b"excluded");
    std::os::unix::fs::symlink("same", src.join("link")).unwrap();
    let out = tpc(&[os("copy"), os("-q"), with_slash(&src), dst.clone().into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // What changes at the source since: content (same size, new mtime), size, mode
    // only, a retargeted link, new entries, removed ones; extraneous entries at the
    // destination, one of them protected by the filter.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write("grows", b"much longer now");
    write("edited", b"9876543210");
    chmod(&src.join("mode-only"), 0o600);
    std::fs::remove_file(src.join("link")).unwrap();
    std::os::unix::fs::symlink("grows", src.join("link")).unwrap();
    write("c/new", b"new file");
    std::fs::create_dir_all(src.join("new-dir/empty")).unwrap();
    std::fs::remove_file(src.join("gone")).unwrap();
    std::fs::remove_dir_all(src.join("gone-dir")).unwrap();
    std::fs::write(dst.join("c/extra"), b"only at the destination").unwrap();
    std::fs::write(dst.join("protected.keep"), b"excluded, so kept").unwrap();

    let flags = ["-i", "--delete", "--exclude", "*.keep"];
    let run = |extra: &[&str]| {
        let mut args = vec![os("copy")];
        args.extend(extra.iter().map(|a| os(a)));
        args.extend(flags.iter().map(|a| os(a)));
        args.extend([with_slash(&src), dst.clone().into()]);
        tpc(&args)
    };
    let before = snapshot(&dst);
    let dry = run(&["-n"]);
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    assert_eq!(
        snapshot(&dst),
        before,
        "the dry run changed the destination"
    );
    assert!(temporaries(&dst).is_empty());
    let listed = stdout(&dry);
    assert!(
        stderr(&dry).contains("dry run: would copy"),
        "{}",
        stderr(&dry)
    );

    let real = run(&[]);
    assert_eq!(code(&real), 0, "{}", stderr(&real));
    assert_eq!(stdout(&real), listed, "the dry run listed other changes");
    let after = snapshot(&dst);
    assert_eq!(named(&listed), changed(&before, &after), "{listed}");
    // The codes say what each change is, as rsync's do.
    for line in [
        ">f.st...... grows",
        ">f..t...... edited",
        ".f...p..... mode-only",
        "cLc.t...... link -> grows",
        ">f+++++++++ c/new",
        "cd+++++++++ new-dir/empty/",
        "*deleting   gone",
        "*deleting   gone-dir/",
        "*deleting   c/extra",
    ] {
        assert!(
            listed.lines().any(|l| l == line),
            "no {line:?} in\n{listed}"
        );
    }
    assert!(
        !listed.contains("same\n") && !listed.contains("protected"),
        "{listed}"
    );
    assert_identical_but_extra(&src, &dst);

    // Nothing left to do: a dry run and a real one list nothing.
    assert_eq!(stdout(&run(&["-n"])), "");
    assert_eq!(stdout(&run(&[])), "");
}

/// The destination is the source, but for what the filter protected there.
fn assert_identical_but_extra(src: &Path, dst: &Path) {
    std::fs::remove_file(dst.join("protected.keep")).unwrap();
    std::fs::remove_file(src.join("kept.keep")).unwrap();
    let _ = std::fs::remove_file(dst.join("kept.keep"));
    assert_same_bytes(src, dst);
}

#[test]
fn a_dry_run_into_a_missing_destination_makes_nothing_and_lists_everything() {
    let s = Scratch::new("dry-run-missing");
    let src = s.path("src");
    for d in ["a/b/c", "empty"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    random_file(&src.join("a/big"), 3 << 20, 1);
    std::fs::write(src.join("a/b/c/small"), b"small").unwrap();
    std::fs::hard_link(src.join("a/big"), src.join("linked")).unwrap();
    std::os::unix::fs::symlink("a/big", src.join("link")).unwrap();
    let dst = s.path("not/yet");
    let out = tpc(&[
        os("copy"),
        os("-n"),
        os("-i"),
        with_slash(&src),
        dst.clone().into(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!s.path("not").exists());
    let dry = stdout(&out);
    assert!(dry.starts_with("cd+++++++++ ./\n"), "{dry}");
    // The real run lists the same, and makes what it lists.
    let out = tpc(&[os("copy"), os("-i"), with_slash(&src), dst.clone().into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), dry);
    let every: BTreeSet<PathBuf> = list(&dst).into_iter().map(|e| e.0).collect();
    assert_eq!(named(&dry), every);
    // -v names the same entries, without the codes.
    let out = tpc(&[
        os("copy"),
        os("-n"),
        os("-v"),
        with_slash(&src),
        s.path("other").into(),
    ]);
    let names: Vec<&str> = dry.lines().map(|l| &l[12..]).collect();
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), names);
    // Remote dry runs are refused for now, before anything is written.
    let out = tpc(&[os("copy"), os("-n"), src.into(), os("tpc://127.0.0.1:9/x")]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
