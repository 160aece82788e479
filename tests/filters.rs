//! rsync as the oracle for `--exclude`, `--include`, `--exclude-from`, `--include-from`,
//! `--files-from`, `--max-size`, `--min-size` and `--delete`: for each filter set, `rsync -a` and
//! `tpc-xfer copy` (local, and pushed to a server) with the same flags must leave
//! identical trees (content, kinds, modes, mtimes but a symlink's own, symlink targets).

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use common::*;

/// A tree with something for every kind of rule to catch.
fn tree(src: &Path) {
    let files: &[(&str, usize)] = &[
        ("a.o", 10),
        ("b.c", 5_000),
        ("keep.rs", 300),
        ("kill.rs", 200),
        ("build", 64),
        ("{a,b}", 3),
        (".hidden", 7),
        ("dir/sub/x.o", 2_000),
        ("dir/sub/y.rs", 40_000),
        ("dir/build/out.bin", 200_000),
        ("docs/readme.md", 900),
        ("docs/deep/a/b/z", 1),
        ("docs/deep/b/z", 4_096),
        ("src/build/tool.rs", 4_097),
    ];
    for (name, size) in files {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let body: Vec<u8> = (0..*size).map(|i| (i * 7 + name.len()) as u8).collect();
        std::fs::write(&p, body).unwrap();
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("keep.rs", src.join("link")).unwrap();
    chmod(&src.join("kill.rs"), 0o600);
    // Fixed mtimes everywhere, directories last (writing their entries changes them).
    let mut entries = list(src);
    entries.reverse();
    for (i, e) in entries.iter().enumerate() {
        if e.1 != 'l' {
            set_mtime(&src.join(&e.0), 1_700_000_000 + i as i64, 123_456_789);
        }
    }
}

/// The filter sets, as flags both tools take.
fn filter_sets(rules: &Path) -> Vec<Vec<OsString>> {
    let r = rules.as_os_str().to_owned();
    let sets: Vec<Vec<&str>> = vec![
        vec!["--exclude", "*.o"],
        vec!["--exclude", "/docs"],
        vec!["--exclude", "sub/x.o"],
        vec!["--exclude", "**/b/z"],
        vec!["--exclude", "build/"],
        vec!["--include", "*/", "--include", "*.rs", "--exclude", "*"],
        vec!["--exclude", "docs/***"],
        vec!["--include", "keep.rs", "--exclude", "k*"],
        vec!["--exclude", "[ab].*"],
        vec!["--max-size", "4K"],
        vec!["--min-size", "1K", "--exclude", "empty"],
        vec![
            "--exclude",
            "{a,b}",
            "--exclude",
            ".hidden",
            "--exclude",
            "link",
        ],
        vec!["--exclude", "*", "--include", "*.rs"],
        vec!["--exclude", "/dir/*/"],
        vec![
            "--max-size",
            "4096",
            "--min-size",
            "10",
            "--exclude",
            "/src/",
        ],
        vec!["--exclude", "deep/**"],
        vec!["--exclude-from"],
        vec!["--include-from", "--exclude", "*"],
    ];
    sets.into_iter()
        .map(|set| {
            let mut out: Vec<OsString> = Vec::new();
            for a in set {
                out.push(a.into());
                if a.ends_with("-from") {
                    out.push(r.clone());
                }
            }
            out
        })
        .collect()
}

/// `--files-from` sets (local copies and pushes): a list naming files, a directory
/// (taken without its contents), a symlink, paths written as rsync allows (`/`, `./`),
/// and with rules on top: one that leaves out listed files, one that would leave out a
/// directory above a listed file (rsync does not filter those).
fn list_sets(s: &Scratch) -> Vec<Vec<OsString>> {
    let files = s.path("files");
    std::fs::write(
        &files,
        "keep.rs\ndir/sub/y.rs\n/docs/deep/\n./b.c\n# comment\nempty\nlink\nsrc/build/tool.rs\n",
    )
    .unwrap();
    let f = files.into_os_string();
    vec![
        vec!["--files-from".into(), f.clone()],
        vec![
            "--files-from".into(),
            f.clone(),
            "--exclude".into(),
            "*.rs".into(),
        ],
        vec![
            "--files-from".into(),
            f,
            "--exclude".into(),
            "build/".into(),
        ],
    ]
}

/// `list(root)` with what neither tool keeps left out: a symlink's own mtime.
fn listed(root: &Path) -> Vec<Listed> {
    let mut entries = list(root);
    for e in &mut entries {
        if e.1 == 'l' {
            (e.3, e.4) = (0, 0);
        }
    }
    entries
}

/// What rsync left and what tpc-xfer left are the same tree: entries, kinds, modes,
/// mtimes (a symlink's own aside, `listed`), sizes, targets, and the files' bytes.
/// (`assert_identical`'s `check` would also compare a symlink's own mtime.)
fn assert_like_rsync(want: &Path, got: &Path, flags: &[impl std::fmt::Debug]) {
    assert_eq!(listed(want), listed(got), "{flags:?}");
    assert_same_bytes(want, got);
}

fn rsync(flags: &[OsString], from: &Path, to: &Path) {
    let out = Command::new("rsync")
        .arg("-a")
        .args(flags)
        .arg(with_slash(from))
        .arg(to)
        .output()
        .expect("rsync runs");
    assert!(out.status.success(), "rsync: {}", stderr(&out));
}

fn rules_file(s: &Scratch) -> std::path::PathBuf {
    let rules = s.path("rules");
    std::fs::write(
        &rules,
        "# build output\n; and objects\n\n*.o\n*/\n/docs/deep/\n",
    )
    .unwrap();
    rules
}

#[test]
fn a_local_copy_takes_what_rsync_takes_for_every_filter_set() {
    let s = Scratch::new("filters-local");
    let src = s.path("src");
    tree(&src);
    let rules = rules_file(&s);
    let whole = listed(&src);
    let sets = filter_sets(&rules).into_iter().chain(list_sets(&s));
    for (i, flags) in sets.enumerate() {
        let (want, got) = (s.path(&format!("rsync-{i}")), s.path(&format!("tpc-{i}")));
        rsync(&flags, &src, &want);
        assert!(
            listed(&want).len() < whole.len(),
            "{flags:?} leaves something out"
        );
        let mut args: Vec<OsString> = vec!["copy".into(), "-q".into()];
        args.extend(flags.iter().cloned());
        args.push(with_slash(&src));
        args.push(got.clone().into());
        let out = tpc(&args);
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        assert_like_rsync(&want, &got, &flags);
    }
}

#[test]
fn a_files_from_path_missing_from_the_source_fails_as_in_rsync_and_the_rest_is_copied() {
    let s = Scratch::new("filters-files-from-missing");
    let src = s.path("src");
    tree(&src);
    let files = s.path("files");
    std::fs::write(&files, "keep.rs\nnot-there\ndocs/readme.md\n").unwrap();
    let want = s.path("rsync");
    let out = Command::new("rsync")
        .arg("-a")
        .arg("--files-from")
        .arg(&files)
        .arg(&src)
        .arg(&want)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(23), "rsync: {}", stderr(&out));
    // Without its trailing slash, the source is the list's root all the same.
    let got = s.path("tpc");
    let out = tpc(&[
        os("copy"),
        os("--files-from"),
        files.clone().into(),
        src.clone().into(),
        got.clone().into(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("not-there"), "{}", stderr(&out));
    // rsync leaves the root's times alone after an error; tpc-xfer sets them.
    assert_eq!(listed(&want)[1..], listed(&got)[1..]);
    assert_same_bytes(&want, &got);
    // What it cannot do yet is refused before anything is written.
    let (cs, _) = keys(&s);
    for args in [vec![os("--delete")], vec![]] {
        let mut all = vec![os("copy"), os("--files-from"), files.clone().into()];
        all.extend(args.iter().cloned());
        let remote = args.is_empty();
        all.push(if remote {
            os("tpc://127.0.0.1:9/src")
        } else {
            src.clone().into()
        });
        all.push(s.path("refused").into());
        all.extend([os("--state"), cs.clone().into()]);
        let out = tpc(&all);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    assert!(!s.path("refused").exists());
}

#[test]
fn a_named_source_is_matched_by_its_own_name_as_rsync_does() {
    let s = Scratch::new("filters-named");
    let src = s.path("src");
    tree(&src);
    for flags in [
        vec!["--exclude", "/src/docs"],
        vec!["--exclude", "/docs"],
        vec!["--exclude", "src/dir/"],
        vec!["--exclude", "/src"],
    ] {
        let flags: Vec<OsString> = flags.into_iter().map(OsString::from).collect();
        let (want, got) = (s.path("rsync"), s.path("tpc"));
        for d in [&want, &got] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir(d).unwrap();
        }
        let out = Command::new("rsync")
            .arg("-a")
            .args(&flags)
            .arg(&src)
            .arg(with_slash(&want))
            .output()
            .unwrap();
        assert!(out.status.success(), "rsync: {}", stderr(&out));
        let mut args: Vec<OsString> = vec!["copy".into(), "-q".into()];
        args.extend(flags.iter().cloned());
        args.push(src.clone().into());
        args.push(with_slash(&got));
        let out = tpc(&args);
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        // The two directories copied into were made here, not by the tools.
        assert_eq!(listed(&want)[1..], listed(&got)[1..], "{flags:?}");
    }
}

#[test]
fn a_push_takes_what_rsync_takes_for_every_filter_set() {
    let s = Scratch::new("filters-push");
    let src = s.path("src");
    tree(&src);
    let rules = rules_file(&s);
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let server = Server::start(&served, &ss);
    let sets = filter_sets(&rules).into_iter().chain(list_sets(&s));
    for (i, flags) in sets.enumerate() {
        let want = s.path(&format!("rsync-{i}"));
        rsync(&flags, &src, &want);
        let mut extra: Vec<&str> = vec!["--accept-new"];
        extra.extend(flags.iter().map(|f| f.to_str().unwrap()));
        let out = copy(
            &cs,
            with_slash(&src),
            server.url(&format!("tpc-{i}")),
            &extra,
        );
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        let got = served.join(format!("tpc-{i}"));
        assert_like_rsync(&want, &got, &flags);
    }
}

#[test]
fn a_pull_takes_what_rsync_takes_for_every_filter_set() {
    let s = Scratch::new("filters-pull");
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let src = served.join("src");
    tree(&src);
    let rules = rules_file(&s);
    let server = Server::start(&served, &ss);
    for (i, flags) in filter_sets(&rules).into_iter().enumerate() {
        let (want, got) = (s.path(&format!("rsync-{i}")), s.path(&format!("tpc-{i}")));
        rsync(&flags, &src, &want);
        let mut extra: Vec<&str> = vec!["--accept-new"];
        extra.extend(flags.iter().map(|f| f.to_str().unwrap()));
        let out = copy(&cs, server.url("src/"), &got, &extra);
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        assert_like_rsync(&want, &got, &flags);
    }
    // A named source: its own name starts the paths the patterns see.
    let (want, got) = (s.path("rsync-named"), s.path("tpc-named"));
    for d in [&want, &got] {
        std::fs::create_dir(d).unwrap();
    }
    let out = Command::new("rsync")
        .args(["-a", "--exclude", "/src/docs", "--exclude", "src/dir/"])
        .arg(&src)
        .arg(with_slash(&want))
        .output()
        .unwrap();
    assert!(out.status.success(), "rsync: {}", stderr(&out));
    let extra = [
        "--accept-new",
        "--exclude",
        "/src/docs",
        "--exclude",
        "src/dir/",
    ];
    let out = copy(&cs, server.url("src"), with_slash(&got), &extra);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(listed(&want)[1..], listed(&got)[1..]);
}

#[test]
fn a_pulled_delete_removes_what_rsync_removes() {
    let s = Scratch::new("filters-pull-delete");
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let src = served.join("src");
    tree(&src);
    let server = Server::start(&served, &ss);
    let sets: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--exclude", "*.o"],
        vec!["--exclude", "cache/", "--exclude", "/gone.txt"],
        vec!["--include", "*/", "--include", "*.rs", "--exclude", "*"],
    ];
    for (i, flags) in sets.into_iter().enumerate() {
        let (want, got) = (s.path(&format!("rsync-{i}")), s.path(&format!("tpc-{i}")));
        stale(&want, &src);
        stale(&got, &src);
        let mut rsync_flags: Vec<OsString> = flags.iter().map(OsString::from).collect();
        rsync_flags.push("--delete".into());
        rsync(&rsync_flags, &src, &want);
        let mut extra = vec!["--accept-new", "--json", "--delete"];
        extra.extend(&flags);
        let out = copy(&cs, server.url("src/"), &got, &extra);
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        assert!(json(&out)["deleted"].as_u64().unwrap() > 0, "{flags:?}");
        assert_like_rsync(&want, &got, &flags);
    }
    let got = s.path("limited");
    stale(&got, &src);
    let out = copy(
        &cs,
        server.url("src/"),
        &got,
        &["--accept-new", "--json", "--delete", "--max-delete", "1"],
    );
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert_eq!(json(&out)["deleted"].as_u64(), Some(1));
}

#[test]
fn bad_filters_are_refused_before_anything_is_written() {
    let s = Scratch::new("filters-bad");
    let src = s.path("src");
    tree(&src);
    let dst = s.path("dst");
    for (flags, says) in [
        (vec!["--exclude", "a**b"], "'**' must be a whole name"),
        (vec!["--max-size", "12X"], "want a number"),
        (vec!["--exclude-from", "/nonexistent/rules"], "cannot read"),
        (vec!["--exclude", ""], "an empty pattern"),
    ] {
        let mut args: Vec<OsString> = vec!["copy".into()];
        args.extend(flags.iter().map(OsString::from));
        args.push(with_slash(&src));
        args.push(dst.clone().into());
        let out = tpc(&args);
        assert_eq!(code(&out), 2, "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
        assert!(!dst.exists(), "{flags:?} wrote");
    }
}

/// What a destination holds before a `--delete` run: part of the source (one file
/// changed), names the filters exclude, and entries no source has, nested.
fn stale(dst: &Path, src: &Path) {
    let entries: &[(&str, Option<usize>)] = &[
        ("keep.rs", Some(300)),
        ("b.c", Some(17)),
        ("a.o", Some(10)),
        ("junk.o", Some(5)),
        ("gone.txt", Some(8)),
        ("dir/sub/x.o", Some(2_000)),
        ("dir/sub/old.rs", Some(30)),
        ("dir/old/", None),
        ("dir/old/deeper/f", Some(1)),
        ("cache/", None),
        ("cache/blob", Some(64)),
        ("dir/build/out.bin", Some(200_000)),
        ("docs/deep/b/extra", Some(3)),
    ];
    for (name, size) in entries {
        let p = dst.join(name.trim_end_matches('/'));
        match size {
            None => std::fs::create_dir_all(&p).unwrap(),
            Some(n) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let from = src.join(name);
                if from.is_file() && *name != "b.c" {
                    std::fs::copy(&from, &p).unwrap();
                } else {
                    std::fs::write(&p, vec![b'z'; *n]).unwrap();
                }
            }
        }
    }
    std::os::unix::fs::symlink("nowhere", dst.join("dangling")).unwrap();
    let mut all = list(dst);
    all.reverse();
    for (i, e) in all.iter().enumerate() {
        if e.1 != 'l' {
            set_mtime(&dst.join(&e.0), 1_600_000_000 + i as i64, 0);
        }
    }
}

#[test]
fn delete_removes_what_rsync_removes_and_spares_what_the_filters_exclude() {
    let s = Scratch::new("filters-delete");
    let src = s.path("src");
    tree(&src);
    let sets: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--exclude", "*.o"],
        vec!["--exclude", "cache/", "--exclude", "/gone.txt"],
        vec!["--exclude", "dir/***"],
        vec!["--max-size", "100K"],
        vec!["--include", "*/", "--include", "*.rs", "--exclude", "*"],
    ];
    for (i, flags) in sets.into_iter().enumerate() {
        let flags: Vec<OsString> = flags.into_iter().map(OsString::from).collect();
        let (want, got) = (s.path(&format!("rsync-{i}")), s.path(&format!("tpc-{i}")));
        stale(&want, &src);
        stale(&got, &src);
        let mut rsync_flags = flags.clone();
        rsync_flags.push("--delete".into());
        rsync(&rsync_flags, &src, &want);
        let mut args: Vec<OsString> = vec!["copy".into(), "--json".into(), "--delete".into()];
        args.extend(flags.iter().cloned());
        args.push(with_slash(&src));
        args.push(got.clone().into());
        let out = tpc(&args);
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        assert!(json(&out)["deleted"].as_u64().unwrap() > 0, "{flags:?}");
        assert_like_rsync(&want, &got, &flags);
    }
}

#[test]
fn max_delete_stops_at_its_limit_and_says_so() {
    let s = Scratch::new("filters-max-delete");
    let src = s.path("src");
    tree(&src);
    for limit in [0u64, 2] {
        let dst = s.path(&format!("dst-{limit}"));
        stale(&dst, &src);
        let extraneous = |d: &Path| {
            [
                "junk.o",
                "gone.txt",
                "dangling",
                "cache/blob",
                "dir/sub/old.rs",
            ]
            .iter()
            .filter(|n| std::fs::symlink_metadata(d.join(n)).is_ok())
            .count() as u64
        };
        let before = extraneous(&dst);
        let out = tpc(&[
            OsString::from("copy"),
            "--json".into(),
            "--delete".into(),
            "--max-delete".into(),
            limit.to_string().into(),
            with_slash(&src),
            dst.clone().into(),
        ]);
        assert_eq!(code(&out), 11, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("--max-delete {limit} reached")),
            "{}",
            stderr(&out)
        );
        assert_eq!(json(&out)["deleted"].as_u64(), Some(limit));
        assert!(extraneous(&dst) >= before - limit, "at most {limit} gone");
        // Everything was copied all the same.
        assert_eq!(json(&out)["failed"].as_u64(), Some(0));
        assert!(dst.join("dir/sub/y.rs").is_file() && dst.join("docs/readme.md").is_file());
    }
}

#[test]
fn a_source_that_cannot_be_listed_in_full_deletes_nothing() {
    if !strace_works() {
        eprintln!("skipped: strace cannot trace here");
        return;
    }
    let s = Scratch::new("filters-delete-unlisted");
    let src = s.path("src");
    tree(&src);
    let dst = s.path("dst");
    stale(&dst, &src);
    let before = list(&dst).len();
    let out = failing_first("getdents64", "EIO", Some(&src.join("dir/sub")))
        .args(["copy", "--io", "portable", "--delete"])
        .arg(with_slash(&src))
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not deleting anything"),
        "{}",
        stderr(&out)
    );
    for name in [
        "junk.o",
        "gone.txt",
        "cache/blob",
        "dir/old/deeper/f",
        "dir/sub/old.rs",
    ] {
        assert!(dst.join(name).exists(), "{name} deleted");
    }
    assert!(list(&dst).len() >= before);
}

#[test]
fn a_pushed_delete_removes_what_rsync_removes_and_stops_at_its_limit() {
    let s = Scratch::new("filters-push-delete");
    let src = s.path("src");
    tree(&src);
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let server = Server::start(&served, &ss);
    let sets: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--exclude", "*.o"],
        vec!["--exclude", "cache/", "--exclude", "/gone.txt"],
        vec!["--exclude", "dir/***"],
        vec!["--include", "*/", "--include", "*.rs", "--exclude", "*"],
    ];
    for (i, flags) in sets.into_iter().enumerate() {
        let want = s.path(&format!("rsync-{i}"));
        let got = served.join(format!("tpc-{i}"));
        stale(&want, &src);
        stale(&got, &src);
        let mut rsync_flags: Vec<OsString> = flags.iter().map(OsString::from).collect();
        rsync_flags.push("--delete".into());
        rsync(&rsync_flags, &src, &want);
        let mut extra = vec!["--accept-new", "--json", "--delete"];
        extra.extend(&flags);
        let out = copy(
            &cs,
            with_slash(&src),
            server.url(&format!("tpc-{i}")),
            &extra,
        );
        assert_eq!(code(&out), 0, "{flags:?}: {}", stderr(&out));
        assert!(json(&out)["deleted"].as_u64().unwrap() > 0, "{flags:?}");
        assert_like_rsync(&want, &got, &flags);
    }
    // A named source: only beneath its own landing.
    let got = served.join("named");
    std::fs::create_dir_all(got.join("src")).unwrap();
    std::fs::write(got.join("beside"), b"not the transfer's").unwrap();
    std::fs::write(got.join("src/extra"), b"extraneous").unwrap();
    let out = copy(
        &cs,
        &src,
        server.url("named/"),
        &["--accept-new", "--delete"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(got.join("beside").exists() && !got.join("src/extra").exists());
    // The limit.
    let got = served.join("limited");
    stale(&got, &src);
    let out = copy(
        &cs,
        with_slash(&src),
        server.url("limited"),
        &["--accept-new", "--json", "--delete", "--max-delete", "2"],
    );
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--max-delete 2 reached"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json(&out)["deleted"].as_u64(), Some(2));
}

#[test]
fn sizes_keep_the_copies_of_every_source_they_leave_out() {
    let s = Scratch::new("filters-delete-sizes");
    let (a, b) = (s.path("a"), s.path("b"));
    for (dir, name) in [(&a, "small-a"), (&b, "small-b")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), b"x").unwrap();
    }
    std::fs::write(b.join("big"), vec![1u8; 4096]).unwrap();
    let lone = s.path("lone.iso");
    std::fs::write(&lone, vec![2u8; 4096]).unwrap();
    for tool in ["rsync", "tpc"] {
        let dst = s.path(tool);
        std::fs::create_dir_all(&dst).unwrap();
        for name in ["big", "lone.iso", "stale"] {
            std::fs::write(dst.join(name), b"old").unwrap();
            set_mtime(&dst.join(name), 1_600_000_000, 0);
        }
        let mut cmd = if tool == "rsync" {
            let mut c = Command::new("rsync");
            c.arg("-a");
            c
        } else {
            let mut c = Command::new(bin());
            c.args(["copy", "-q"]);
            c
        };
        let out = cmd
            .args(["--delete", "--max-size", "1K"])
            .arg(with_slash(&a))
            .arg(with_slash(&b))
            .arg(&lone)
            .arg(with_slash(&dst))
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool}: {}", stderr(&out));
        assert!(
            dst.join("big").exists() && dst.join("lone.iso").exists(),
            "{tool}"
        );
        assert!(!dst.join("stale").exists(), "{tool}");
    }
    assert_eq!(listed(&s.path("rsync"))[1..], listed(&s.path("tpc"))[1..]);
}

#[test]
fn a_remote_delete_with_size_limits_is_refused_for_now() {
    let s = Scratch::new("filters-delete-remote");
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let server = Server::start(&served, &ss);
    let src = s.path("src");
    tree(&src);
    std::fs::create_dir_all(served.join("d")).unwrap();
    let dst = s.path("pulled");
    let flags = ["--accept-new", "--delete", "--max-size", "1M"];
    let out = copy(&cs, server.url("d/"), &dst, &flags);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("for local copies for now"),
        "{}",
        stderr(&out)
    );
    assert!(!dst.exists());
    let out = copy(&cs, with_slash(&src), server.url("e"), &flags);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("for local copies for now"),
        "{}",
        stderr(&out)
    );
    assert!(!served.join("e").exists());
}
