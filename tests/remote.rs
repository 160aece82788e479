//! End-to-end tests of remote transfers through the real binary: a real `tpc-xfer serve`
//! on loopback, real QUIC, real keys; push and pull of the edge-case tree, and the
//! authentication and reachability errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn push_and_pull_the_edge_case_tree_on_loopback() {
    let s = Scratch::new("remote-tree");
    let src = s.path("src");
    edge_case_tree(&src, 80 * CHUNK_BYTES + 3, 2000);
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);

    let out = copy(
        &cs,
        with_slash(&src),
        server.url("tree"),
        &["--accept-new", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert_identical(&src, &s.path("root/tree"));
    assert_eq!(summary["files_copied"], summary["files"], "{summary}");
    // Every client shard carried traffic, over its own connection.
    let per_shard = summary["bytes_per_shard"].as_array().unwrap();
    assert!(
        per_shard.iter().all(|b| b.as_u64().unwrap() > 0),
        "{summary}"
    );

    // A rerun sends nothing.
    let out = copy(&cs, with_slash(&src), server.url("tree"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["files_copied"], 0);
    // It left every mode and mtime as it was, directories' too.
    assert_identical(&src, &s.path("root/tree"));

    // Pull it back into a fresh directory.
    let back = s.path("back");
    let out = copy(&cs, server.url("tree/"), &back, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &back);
    let out = tpc(&[os("check"), src.clone().into(), back.into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Every file of the tree is owned by client shard 0, so all runs start queued there and
/// shard 1 starts with none: it carries traffic only by taking queued runs over from
/// shard 0 through the mesh. Both ways, and nothing lost or sent twice.
#[test]
fn a_shard_with_no_runs_of_its_own_takes_queued_runs_over_from_its_peer() {
    let s = Scratch::new("remote-takeover");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut made = 0;
    for i in 0.. {
        let name = format!("f{i}");
        // The client hashes each file's path relative to the pushed directory.
        if tpc_core::plan::owner(name.as_bytes(), 2).0 != 0 {
            continue;
        }
        random_file(&src.join(&name), 256 * 1024 + i, i);
        made += 1;
        if made == 120 {
            break;
        }
    }
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);
    let carried_by_both = |out: &std::process::Output| {
        assert_eq!(code(out), 0, "{}", stderr(out));
        let summary = json(out);
        let runs: Vec<u64> = summary["ranges_per_shard"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect();
        assert_eq!(runs.len(), 2, "{summary}");
        assert_eq!(
            runs.iter().sum::<u64>(),
            120,
            "each file's one run once: {summary}"
        );
        assert!(runs.iter().all(|&r| r > 0), "{summary}");
    };

    let out = copy(
        &cs,
        with_slash(&src),
        server.url("spread"),
        &["--accept-new", "--json", "--cores", "2"],
    );
    carried_by_both(&out);
    assert_identical(&src, &s.path("root/spread"));

    let back = s.path("back");
    let out = copy(
        &cs,
        server.url("spread/"),
        &back,
        &["--json", "--cores", "2"],
    );
    carried_by_both(&out);
    assert_identical(&src, &back);
}

#[test]
fn compressible_chunks_travel_compressed_both_ways_and_arrive_intact() {
    let s = Scratch::new("remote-zstd");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Three whole chunks of text and a tail of one byte, random data beside them (which
    // must go raw), and a small text file.
    text_file(&src.join("log.txt"), 3 * CHUNK_BYTES as usize + 1);
    random_file(&src.join("random.bin"), 2 * CHUNK_BYTES, 9);
    text_file(&src.join("small.txt"), 10_000);
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);
    let compressed = |summary: &serde_json::Value| {
        counts(summary, "compressed_chunks", "bytes_saved_by_compression")
    };

    // `always` tries every chunk: the three text chunks and the small file travel
    // compressed; never the random chunks, nor the one-byte tail (nothing to gain).
    let out = copy(
        &cs,
        with_slash(&src),
        server.url("always"),
        &["--accept-new", "--json", "--compress", "always"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    let (chunks, saved) = compressed(&summary);
    assert_eq!(chunks, 4, "{summary}");
    assert!(saved > 3 * CHUNK_BYTES / 2, "{summary}");
    assert_identical(&src, &s.path("root/always"));

    // `auto` (the default) also weighs the path's rate against zstd's speed, which on
    // loopback depends on how far the connection has ramped up: some or all of those
    // chunks, never the random ones. (The choice itself is unit-tested in
    // tpc_core::codec; tests/wan.rs has a slow path compress.)
    let out = copy(&cs, with_slash(&src), server.url("auto"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert!(compressed(&summary).0 <= 4, "{summary}");
    assert_identical(&src, &s.path("root/auto"));

    let out = copy(
        &cs,
        with_slash(&src),
        server.url("never"),
        &["--json", "--compress", "never"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(compressed(&json(&out)), (0, 0));
    assert_identical(&src, &s.path("root/never"));

    // Pulls: the server decides as `auto` does (the first text chunk each of its shards
    // sends is tried, which measures zstd), unless the client says never.
    let back = s.path("back");
    let out = copy(&cs, server.url("auto/"), &back, &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(compressed(&json(&out)).0 >= 1);
    assert_identical(&src, &back);
    let back_raw = s.path("back-raw");
    let out = copy(
        &cs,
        server.url("auto/"),
        &back_raw,
        &["--json", "--compress", "never"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(compressed(&json(&out)), (0, 0));
    assert_identical(&src, &back_raw);
}

/// Two counters of a `--json` summary, as (chunks, bytes).
fn counts(summary: &serde_json::Value, chunks: &str, bytes: &str) -> (u64, u64) {
    (
        summary[chunks].as_u64().unwrap(),
        summary[bytes].as_u64().unwrap(),
    )
}

/// Overwrites `len` bytes at `at` in `path` with other bytes, and moves its mtime on.
fn scribble(path: &Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0x5a; len], at).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
}

#[test]
fn a_changed_file_pushed_again_moves_only_its_changed_chunks() {
    let s = Scratch::new("remote-reuse");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Ten whole chunks and a tail.
    let big = src.join("big.bin");
    random_file(&big, 10 * CHUNK_BYTES + 1000, 21);
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    let server = Server::start(&root, &ss);
    let reused = |summary: &serde_json::Value| counts(summary, "chunks_reused", "bytes_reused");
    let out = copy(
        &cs,
        with_slash(&src),
        server.url("tree"),
        &["--accept-new", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(reused(&json(&out)), (0, 0), "nothing was there to reuse");

    // Change chunk 3 and the tail, then push again: the other nine chunks stay behind.
    scribble(&big, 3 * CHUNK_BYTES + 17, 100);
    scribble(&big, 10 * CHUNK_BYTES + 999, 1);
    let out = copy(&cs, with_slash(&src), server.url("tree"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["files_copied"], 1, "{summary}");
    assert_eq!(reused(&summary), (9, 9 * CHUNK_BYTES), "{summary}");
    assert_identical(&src, &root.join("tree"));

    // Grow the file by a chunk and a half: its old chunks are reused, except the old
    // tail chunk, which is now a whole chunk of other length.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
        f.write_all(&vec![7u8; (CHUNK_BYTES + CHUNK_BYTES / 2) as usize])
            .unwrap();
    }
    let out = copy(&cs, with_slash(&src), server.url("tree"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(reused(&json(&out)).0, 10);
    assert_identical(&src, &root.join("tree"));

    // A pull never tells the server hashes of local files (a hostile server could pick
    // sizes that make them hashes of short secrets), so a changed file comes whole.
    let back = s.path("back");
    let out = copy(&cs, server.url("tree/"), &back, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    scribble(&root.join("tree/big.bin"), 5, 10);
    let out = copy(&cs, server.url("tree/"), &back, &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(reused(&summary), (0, 0), "{summary}");
    assert_identical(&root.join("tree"), &back);
}

#[test]
fn unknown_changed_and_unauthorized_keys_are_refused() {
    let s = Scratch::new("remote-auth");
    let src = s.path("f");
    random_file(&src, 1000, 1);
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);

    // Unknown server, no --accept-new: exit 9, nothing written.
    let out = copy(&cs, &src, server.url("f"), &[]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(stderr(&out).contains("not known"), "{}", stderr(&out));
    assert!(!s.path("root/f").exists());

    // Trusted on first use, then it works without the flag.
    assert_eq!(
        code(&copy(&cs, &src, server.url("f"), &["--accept-new"])),
        0
    );
    assert_eq!(code(&copy(&cs, &src, server.url("g"), &[])), 0);

    // Another client, not authorized: exit 9.
    let other = s.path("other-state");
    let out = copy(&other, &src, server.url("h"), &["--accept-new"]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused this client"),
        "{}",
        stderr(&out)
    );
    assert!(!s.path("root/h").exists());

    // Same address, another server key: refused even with --accept-new.
    let port = server.port;
    drop(server);
    let ss2 = s.path("server-state-2");
    std::fs::create_dir_all(&ss2).unwrap();
    chmod(&ss2, 0o700);
    std::fs::copy(
        ss.join("authorized-clients"),
        ss2.join("authorized-clients"),
    )
    .unwrap();
    // One shard: only the first port is known to be free again.
    let impostor = Server::start_on_cores(&s.path("root2"), &ss2, &format!("127.0.0.1:{port}"), 1);
    let out = copy(&cs, &src, impostor.url("f"), &["--accept-new"]);
    let log = impostor.log();
    drop(impostor);
    assert_eq!(code(&out), 9, "{}\nserver: {log}", stderr(&out));
    assert!(stderr(&out).contains("CHANGED"), "{}", stderr(&out));
}

#[test]
fn unreachable_server_fails_within_seconds() {
    let s = Scratch::new("remote-unreachable");
    let src = s.path("f");
    random_file(&src, 10, 2);
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let out = copy(
        &s.path("cs"),
        &src,
        format!("tpc://127.0.0.1:{port}/f"),
        &["--accept-new"],
    );
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
}

#[test]
fn pulling_a_missing_remote_path_is_exit_3_and_the_server_keeps_serving() {
    let s = Scratch::new("remote-missing");
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);
    let out = copy(&cs, server.url("nope"), s.path("dst"), &["--accept-new"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let src = s.path("f");
    random_file(&src, 5000, 3);
    let out = copy(&cs, &src, server.url("f"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &s.path("root/f"));
}

#[test]
fn a_full_remote_disk_is_exit_5_leaves_no_partial_file_and_the_server_keeps_serving() {
    if !can_mount_tmpfs() {
        return;
    }
    let s = Scratch::new("remote-full");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    too_large_source(&src);
    let mnt = Tmpfs::mount(s.path("root"), "size=2m");
    let server = Server::start(&mnt.0, &ss);
    let out = copy(&cs, &src, server.url(""), &["--accept-new"]);
    assert_full_destination(&out, &mnt.0);
    // The same server goes on serving.
    assert_takes_a_file_that_fits(&s, &cs, &server, &mnt.0);
}

/// The same full disk on the pulling client's side: the large file fails with exit 5 and
/// leaves nothing (not even a temporary file), the small one arrives (docs/HARDENING.md).
#[test]
fn a_full_disk_at_a_pulling_client_is_exit_5_and_leaves_no_partial_file() {
    if !can_mount_tmpfs() {
        return;
    }
    let s = Scratch::new("remote-pull-full");
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    too_large_source(&root.join("src"));
    let server = Server::start(&root, &ss);
    let mnt = Tmpfs::mount(s.path("dest"), "size=2m");
    let out = copy(&cs, server.url("src"), &mnt.0, &["--accept-new"]);
    assert_full_destination(&out, &mnt.0);
}

/// setuid and setgid bits never travel (ownership does not), in either direction, on
/// files or directories; mode 0000 does, and the content of such a file or directory
/// arrives all the same (read as root, or skipped when not).
#[test]
fn setid_bits_are_cleared_and_mode_0000_is_kept_in_a_push_and_a_pull() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        eprintln!("skipped: needs root to read a file of mode 0000");
        return;
    }
    let s = Scratch::new("remote-modes");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("setid"), b"setid").unwrap();
    chmod(&src.join("setid"), 0o6755);
    std::fs::write(src.join("none"), b"none").unwrap();
    chmod(&src.join("none"), 0o000);
    // A setgid directory, and a directory of mode 0000 with a file in it.
    std::fs::create_dir(src.join("sgid")).unwrap();
    std::fs::write(src.join("sgid/f"), b"in sgid").unwrap();
    chmod(&src.join("sgid"), 0o2775);
    std::fs::create_dir(src.join("shut")).unwrap();
    std::fs::write(src.join("shut/f"), b"in shut").unwrap();
    chmod(&src.join("shut"), 0o000);
    let root = s.path("root");
    let server = Server::start(&root, &ss);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let kept = |dir: &Path| {
        assert_eq!(mode(&dir.join("setid")), 0o755);
        assert_eq!(mode(&dir.join("none")), 0o000);
        assert_eq!(std::fs::read(dir.join("none")).unwrap(), b"none");
        assert_eq!(mode(&dir.join("sgid")), 0o775);
        assert_eq!(std::fs::read(dir.join("sgid/f")).unwrap(), b"in sgid");
        assert_eq!(mode(&dir.join("shut")), 0o000);
        assert_eq!(std::fs::read(dir.join("shut/f")).unwrap(), b"in shut");
    };
    let out = copy(&cs, &src, server.url(""), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    kept(&root.join("src"));
    // What the server holds with setid bits (put there by its operator).
    chmod(&root.join("src/setid"), 0o6755);
    chmod(&root.join("src/sgid"), 0o2775);
    let back = s.path("back");
    let out = copy(&cs, server.url("src/"), &back, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    kept(&back);
}

/// After a push that filled the 2 MiB tmpfs at `root`, `server` still takes (and
/// completes) a push of a file that fits in what the failed files gave back.
fn assert_takes_a_file_that_fits(s: &Scratch, cs: &Path, server: &Server, root: &Path) {
    let f = s.path("f");
    random_file(&f, 100_000, 2);
    let out = copy(cs, &f, server.url("f"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&f, &root.join("f"));
}

#[test]
fn small_files_that_overflow_a_remote_disk_fail_at_their_write_whole_or_not_at_all() {
    if !can_mount_tmpfs() {
        return;
    }
    // Files under 1 MiB get no space reserved when planned (receiver.rs,
    // RESERVE_FILE_BYTES_MIN): a full disk meets them at their write instead.
    let s = Scratch::new("remote-full-small");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("part{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        random_file(&src.join(n), 700 * 1024, i as u64 + 10);
    }
    let mnt = Tmpfs::mount(s.path("root"), "size=2m");
    let server = Server::start(&mnt.0, &ss);
    let out = copy(&cs, &src, server.url(""), &["--accept-new"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let err = stderr(&out);
    // Failed at the write, not at the plan's reservation ("cannot allocate"), and a
    // short write never without its cause.
    assert!(!err.contains("cannot allocate"), "{err}");
    assert!(
        !err.lines()
            .any(|l| l.contains("short write") && !l.contains("No space left")),
        "{err}"
    );
    // Each file is there complete, or missing and named on a "No space left" line; no
    // temporary file is left.
    let mut whole = 0;
    for n in &names {
        let there = mnt.0.join("src").join(n);
        if there.exists() {
            assert_identical(&src.join(n), &there);
            whole += 1;
        } else {
            assert!(
                err.lines()
                    .any(|l| l.contains(&format!("src/{n}:")) && l.contains("No space left")),
                "{n} missing without its line: {err}"
            );
        }
    }
    assert!(whole < names.len(), "4.2 MB cannot all fit in 2 MiB");
    assert!(temporaries(&mnt.0).is_empty());
    // The failed files' space was given back: the same server takes a file that fits.
    assert_takes_a_file_that_fits(&s, &cs, &server, &mnt.0);
}

/// Reads a whole file.
fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killing_the_server_mid_push_leaves_old_or_new_files_and_a_rerun_completes() {
    let s = Scratch::new("remote-kill");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    let root = s.path("root");
    let small = 300;
    let names: Vec<String> = (0..small).map(|i| format!("small/f{i}")).collect();
    // Version A, pushed completely.
    std::fs::create_dir_all(src.join("small")).unwrap();
    random_file(&src.join("big.bin"), 64 * CHUNK_BYTES, 1);
    for (i, n) in names.iter().enumerate() {
        std::fs::write(src.join(n), format!("old {i}\n").repeat(i % 50 + 1)).unwrap();
    }
    let server = Server::start(&root, &ss);
    let port = server.port;
    let out = copy(&cs, with_slash(&src), server.url("tree"), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let old: Vec<Vec<u8>> = names.iter().map(|n| bytes(&src.join(n))).collect();
    let old_big = bytes(&src.join("big.bin"));

    // Version B: every file changes.
    random_file(&src.join("big.bin"), 64 * CHUNK_BYTES, 2);
    for (i, n) in names.iter().enumerate() {
        std::fs::write(src.join(n), format!("new {i}\n").repeat(i % 40 + 2)).unwrap();
    }
    let new: Vec<Vec<u8>> = names.iter().map(|n| bytes(&src.join(n))).collect();
    let new_big = bytes(&src.join("big.bin"));

    // Push B and kill the server once its temporaries exist.
    let client = Command::new(bin())
        .args(["copy", "-q", "--state"])
        .arg(&cs)
        .arg(with_slash(&src))
        .arg(server.url("tree"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while temporaries(&root).is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(server);
    let out = client.wait_with_output().unwrap();
    assert_eq!(code(&out), 8, "{}", stderr(&out));

    // Every file is complete: the old version or the new one, never a mix or a part.
    let tree = root.join("tree");
    let mut olds = 0;
    for (i, n) in names.iter().enumerate() {
        let got = bytes(&tree.join(n));
        assert!(got == old[i] || got == new[i], "{n} is neither version");
        olds += usize::from(got == old[i]);
    }
    let big = bytes(&tree.join("big.bin"));
    assert!(
        big == old_big || big == new_big,
        "big.bin is neither version"
    );
    assert!(
        olds > 0 || big == old_big,
        "the kill came after the push completed: the test proved nothing"
    );
    // A restarted server and a rerun complete the push and leave no temporary.
    // On the same first port (its other shards' ports were the kernel's pick before, so
    // they are not reused: one shard).
    let server = Server::start_on_cores(&root, &ss, &format!("127.0.0.1:{port}"), 1);
    let out = copy(&cs, with_slash(&src), server.url("tree"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &tree);
    assert_eq!(temporaries(&root), Vec::<PathBuf>::new());
}

/// Issue 25, finding 9: pushing a directory's contents to the served root (`src/` to
/// `tpc://host/`) once applied the client's directory mode and mtime to the root itself:
/// a root of mode 755 became 777. The served root's own metadata is the operator's.
#[test]
fn a_push_to_the_served_root_leaves_the_roots_own_mode_and_times() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new("remote-root-meta");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o777)).unwrap();
    set_mtime(&src, 1_000_000_000, 0);
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cs, ss) = keys(&s);
    let server = Server::start(&root, &ss);
    let out = copy(&cs, with_slash(&src), server.url(""), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"data");
    let md = std::fs::metadata(&root).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755, "the root's mode changed");
    assert_ne!(
        md.mtime(),
        1_000_000_000,
        "the root took the client's mtime"
    );
}

/// Issue 25, finding 7: a pull that fails part way left its preallocated temporaries in
/// the client's destination (the session's error path skipped the receiver's abort), so
/// a hostile or dying server could fill the client's disk. The server is killed once the
/// client's temporary exists; the client fails, and leaves none.
#[test]
fn a_pull_that_fails_part_way_leaves_no_temporary_in_the_destination() {
    let s = Scratch::new("remote-pull-kill");
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir_all(root.join("tree")).unwrap();
    random_file(&root.join("tree/big.bin"), 128 * CHUNK_BYTES, 3);
    let server = Server::start(&root, &ss);
    let dst = s.path("dst");
    let client = Command::new(bin())
        .args(["copy", "-q", "--accept-new", "--state"])
        .arg(&cs)
        .arg(server.url("tree/"))
        .arg(&dst)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while temporaries(&dst).is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(server);
    let out = client.wait_with_output().unwrap();
    assert_ne!(
        code(&out),
        0,
        "the pull completed before the kill: the test proved nothing"
    );
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new(), "{}", stderr(&out));
    assert!(
        !dst.join("big.bin").exists(),
        "a partial file under its name"
    );
}

/// An error on the server's disk mid-push, injected by strace into the first call of
/// `syscall` (`errno`, whose text is `says`): the push fails with exit 4 naming the
/// error, leaves no file under its name and no temporary, and the same server then
/// takes the file (docs/HARDENING.md).
fn an_error_at_the_server(syscall: &str, errno: &str, says: &str) {
    let s = Scratch::new(&format!("remote-{errno}-{syscall}"));
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    let server = Server::start_with(None, &root, &ss, "127.0.0.1:0", &["--io", "portable"]);
    let trace = format!("trace={syscall}");
    let inject = format!("inject={syscall}:error={errno}:when=1");
    let Some(strace) = strace_attached(server.child.id(), &["-e", &trace, "-e", &inject]) else {
        return;
    };
    let src = s.path("f");
    random_file(&src, 8 << 20, 6);
    let out = copy(&cs, &src, server.url("f"), &["--accept-new"]);
    drop(strace);
    assert_eq!(code(&out), 4, "{syscall}: {}", stderr(&out));
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
    assert!(
        !root.join("f").exists(),
        "{syscall}: a file under the final name"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !temporaries(&root).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(temporaries(&root), Vec::<PathBuf>::new());
    let out = copy(&cs, &src, server.url("f"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &root.join("f"));
}

/// The first data write fails (the portable driver writes with pwrite64, which strace
/// sees).
#[test]
fn an_io_error_writing_at_the_server_fails_the_file_cleanly_and_the_server_goes_on() {
    an_error_at_the_server("pwrite64", "EIO", "Input/output error");
}

/// A filesystem gone read-only mid-transfer. The kernel refuses to remount one read-only
/// while a file on it is open for writing (EBUSY), so a transfer meets it as ext4's
/// `errors=remount-ro` makes it: its next write fails with EROFS.
#[test]
fn a_filesystem_gone_read_only_at_the_server_fails_the_file_cleanly() {
    an_error_at_the_server("pwrite64", "EROFS", "Read-only file system");
}

/// The sync before the rename fails: the file is not renamed into place.
#[test]
fn an_io_error_syncing_at_the_server_fails_the_file_cleanly_and_the_server_goes_on() {
    an_error_at_the_server("syncfs", "EIO", "Input/output error");
}

/// Issue 25, point 2 ("depth 4096"): a source tree 4,096 directories deep, on disk. The
/// limit is 1,024 path components (`TREE_DEPTH_MAX`): a local copy, a push and a pull
/// each take the tree down to it, fail what lies deeper with a line saying why, and
/// exit non-zero; the file beside the tree arrives. Before, a push's server refused the
/// whole session over the one entry too deep, and a pull left the deeper part out with
/// exit 0 (only the server's log said so).
#[test]
fn a_tree_deeper_than_the_limit_arrives_down_to_it_and_fails_past_it() {
    let s = Scratch::new("remote-deep");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("top"), b"top").unwrap();
    deep_tree(&src, 4096);
    let quiet = |out: &std::process::Output| stderr(out).replace(&"d/".repeat(64), "");
    // Local copy: `dst/src` plus 1,023 levels make 1,024 components.
    let dst = s.path("dst");
    let out = tpc(&[
        std::ffi::OsStr::new("copy"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 3, "{}", quiet(&out));
    assert!(
        stderr(&out).contains("nested deeper than 1024 levels"),
        "{}",
        quiet(&out)
    );
    assert_eq!(std::fs::read(dst.join("src/top")).unwrap(), b"top");
    assert_eq!(depth_of(&dst.join("src")), 1023);
    // Push into the server's root: the same, but exit 4: the entries past the limit are
    // refused as the destination's paths (the walker's own line is exit 3; the higher
    // class wins, `exit::Problems`).
    let root = s.path("root");
    let server = Server::start(&root, &ss);
    let out = copy(&cs, &src, server.url(""), &["--accept-new"]);
    assert_eq!(code(&out), 4, "{}", quiet(&out));
    assert!(
        stderr(&out).contains("cannot push to") && stderr(&out).contains("at most 1024"),
        "{}",
        quiet(&out)
    );
    assert_eq!(std::fs::read(root.join("src/top")).unwrap(), b"top");
    assert_eq!(depth_of(&root.join("src")), 1023);
    // Pull it back: the server's walk stops at the limit and says so to the client.
    let back = s.path("back");
    let out = copy(&cs, server.url("src/"), &back, &[]);
    assert_eq!(code(&out), 3, "{}", quiet(&out));
    assert!(
        stderr(&out).contains("tpc-xfer: server: 'src/d/d"),
        "{}",
        quiet(&out)
    );
    assert_eq!(std::fs::read(back.join("top")).unwrap(), b"top");
    assert_eq!(depth_of(&back), 1023);
    // Trees this deep outlast `remove_dir_all` where open files are limited to 1,024 (it
    // holds one per level): rm takes them apart.
    for tree in [src, dst, root, back] {
        let _ = Command::new("rm").arg("-rf").arg(tree).status();
    }
}

/// An error on a pulling client's disk, injected by strace into the client's first call
/// of `syscall` (`errno`, whose text is `says`; on the portable driver, whose writes
/// strace sees): the pull fails with exit 4 naming the error and the file, leaves no
/// file under its name and no temporary, and a second pull brings the file
/// (docs/HARDENING.md).
fn an_error_at_a_pulling_client(syscall: &str, errno: &str, says: &str) {
    if !strace_works() {
        return;
    }
    let s = Scratch::new(&format!("remote-pull-{errno}-{syscall}"));
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    random_file(&root.join("f"), 8 << 20, 7);
    let server = Server::start(&root, &ss);
    // Known first, so that the traced run writes nothing but the pulled file.
    let warm = s.path("warm");
    let out = copy(&cs, server.url("f"), &warm, &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let dst = s.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = failing_first(syscall, errno, None)
        .args(["copy", "-q", "--io", "portable", "--state"])
        .arg(&cs)
        .arg(server.url("f"))
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{syscall}: {}", stderr(&out));
    // Named as the file where it lands, not as its temporary.
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.starts_with("tpc-xfer: f: ") && l.contains(says)),
        "{syscall}: {}",
        stderr(&out)
    );
    assert!(!dst.join("f").exists(), "{syscall}: a file under its name");
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new(), "{syscall}");
    let out = copy(&cs, server.url("f"), &dst, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&root.join("f"), &dst.join("f"));
}

#[test]
fn an_io_error_writing_at_a_pulling_client_fails_the_file_cleanly() {
    an_error_at_a_pulling_client("pwrite64", "EIO", "Input/output error");
}

/// As `a_filesystem_gone_read_only_at_the_server_…`, at a pulling client.
#[test]
fn a_filesystem_gone_read_only_at_a_pulling_client_fails_the_file_cleanly() {
    an_error_at_a_pulling_client("pwrite64", "EROFS", "Read-only file system");
}

#[test]
fn an_io_error_syncing_at_a_pulling_client_fails_the_file_cleanly() {
    an_error_at_a_pulling_client("syncfs", "EIO", "Input/output error");
}

/// An I/O error reading a push's source (strace fails the client's first read of it, on
/// the portable driver): the file fails as a source problem (exit 3, as in a local copy,
/// where it was exit 4 when every run failure of a push counted as the server's), named,
/// with nothing of it at the server; the file beside it arrives.
#[test]
fn an_io_error_reading_a_pushed_source_is_exit_3_and_leaves_nothing_of_it() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("remote-push-eio");
    let (cs, ss) = keys(&s);
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("big"), 8 << 20, 8);
    std::fs::write(src.join("ok"), b"fine").unwrap();
    let root = s.path("root");
    let server = Server::start(&root, &ss);
    let out = failing_first("pread64", "EIO", Some(&src.join("big")))
        .args(["copy", "-q", "--io", "portable", "--accept-new", "--state"])
        .arg(&cs)
        .arg(&src)
        .arg(server.url(""))
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("big") && err.contains("Input/output error"),
        "{err}"
    );
    assert!(!root.join("src/big").exists(), "a file under its name");
    assert_eq!(temporaries(&root), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read(root.join("src/ok")).unwrap(), b"fine");
}

/// Polls the server's log until it holds `what` (10 s at most).
fn await_log(server: &Server, what: &str) -> String {
    let start = Instant::now();
    loop {
        let log = server.log();
        if log.contains(what) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {what:?} in: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_key_authorized_while_serving_is_admitted_after_sighup_and_the_log_says_when_and_who() {
    let s = Scratch::new("sighup");
    let (a, ss) = keys(&s);
    let b = s.path("client-b");
    let out = tpc(&[os("id"), os("--state"), b.clone().into()]);
    let b_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let clients = ss.join("authorized-clients");
    let a_key = std::fs::read_to_string(&clients)
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(&clients, format!("{a_key} laptop-a\n")).unwrap();
    set_mtime(&clients, 1_700_000_000, 0);
    let served = s.path("served");
    let server = Server::start(&served, &ss);
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"hello").unwrap();
    let push =
        |state: &Path, to: &str| copy(state, with_slash(&src), server.url(to), &["--accept-new"]);

    assert_eq!(code(&push(&b, "b")), 9, "not authorized yet");
    let log = await_log(
        &server,
        &format!("refused key {b_key}: not in authorized-clients"),
    );
    // Every line starts with its UTC time: 2026-12-07T23:59:59Z.
    for line in log.lines() {
        let (stamp, _) = line.split_once(' ').unwrap();
        assert!(
            stamp.len() == 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'),
            "{line}"
        );
    }

    // The same bytes' length, rewritten in place and its mtime put back: the file looks
    // unchanged, so only SIGHUP makes the server read it again.
    std::fs::write(&clients, format!("{b_key} laptop-b\n")).unwrap();
    set_mtime(&clients, 1_700_000_000, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(code(&push(&b, "b")), 9, "read again without being asked");
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    await_log(&server, "read authorized-clients again on SIGHUP: 1 keys");
    let out = push(&b, "b");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(served.join("b/f")).unwrap(), b"hello");
    let log = await_log(&server, "done");
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("push to b by {b_key} (laptop-b) from 127.0.0.1:"))),
        "{log}"
    );
    assert_eq!(code(&push(&a, "a")), 9, "a key taken out is refused");

    // A file that changes is read again within a second or two, unasked.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&clients)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{a_key} laptop-a\n").as_bytes()).unwrap();
    await_log(
        &server,
        "read authorized-clients again as it changed: 2 keys",
    );
    let out = push(&a, "a");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn serve_caps_cores_past_the_machine_and_takes_no_flag_it_would_ignore() {
    use std::io::BufRead;
    let s = Scratch::new("serve-cores");
    let (_, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--cores",
            "999",
            "--listen",
            "127.0.0.1:0",
            "--root",
        ])
        .arg(&root)
        .arg("--state")
        .arg(&ss)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let note = lines.next().unwrap().unwrap();
    // A driver's notice (io_uring unavailable) may come between.
    let serving = lines
        .map_while(Result::ok)
        .find(|l| l.contains("serving"))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let usable = tpc_engine::usable_cpus().len();
    assert!(
        note.contains(&format!("--cores 999 is more than the {usable} cores")),
        "{note}"
    );
    assert!(
        serving.contains("serving") && serving.contains(&format!("{usable} shard")),
        "{serving}"
    );
    // A summary or quiet output is for copies; serve refuses them rather than ignore them.
    for flag in ["--json", "--quiet"] {
        let out = Command::new(bin())
            .args(["serve", flag, "--root"])
            .arg(&root)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{flag}: {}", stderr(&out));
    }
}
