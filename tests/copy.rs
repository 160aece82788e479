//! End-to-end tests of `tpc-xfer copy` and `tpc-xfer check` on real files through the
//! real binary: the edge-case tree, sharding, crash safety, change detection and errors.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::*;

const CHUNK: u64 = 4 * 1024 * 1024;

#[test]
fn edge_case_tree_copies_exactly_and_reruns_as_a_no_op() {
    let s = Scratch::new("edge");
    let src = s.path("src");
    edge_case_tree(&src, 1 << 30, 20_000);
    let dst = s.path("dst");

    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = json(&out);
    // `src` without a slash lands in dst/src.
    assert_identical(&src, &dst.join("src"));
    assert_eq!(j["failed"], 0);
    assert_eq!(j["files_copied"], j["files"]);
    assert!(temporaries(&dst).is_empty());

    // Unchanged: nothing is written again.
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["files_copied"], 0);
    assert_eq!(j["files_unchanged"], j["files"]);
    assert_identical(&src, &dst.join("src"));
}

#[test]
fn trailing_slash_copies_contents() {
    let s = Scratch::new("slash");
    let src = s.path("src");
    edge_case_tree(&src, 3 * CHUNK, 50);
    let with_slash = with_slash(&src);
    let dst = s.path("dst");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("-q"),
        &with_slash,
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &dst);
    assert!(!dst.join("src").exists());
}

#[test]
fn one_large_file_is_processed_by_every_pinned_shard() {
    let s = Scratch::new("shards");
    let src = s.path("big");
    random_file(&src, 256 << 20, 9);
    let dst = s.path("out");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let j = json(&out);
    let shards = j["shards"].as_u64().unwrap() as usize;
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(shards, cores, "one shard per usable core by default");
    let per_shard = j["bytes_per_shard"].as_array().unwrap();
    assert_eq!(per_shard.len(), shards);
    assert!(
        per_shard.iter().all(|b| b.as_u64().unwrap() > 0),
        "every shard read the file: {per_shard:?}"
    );
    assert_eq!(
        per_shard.iter().map(|b| b.as_u64().unwrap()).sum::<u64>(),
        256 << 20
    );
    // Each executor is pinned to exactly one CPU, and no two share one.
    let cpus: Vec<u64> = j["shard_cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|set| {
            let set = set.as_array().unwrap();
            assert_eq!(set.len(), 1, "pinned to one CPU: {set:?}");
            set[0].as_u64().unwrap()
        })
        .collect();
    let mut unique = cpus.clone();
    unique.dedup();
    assert_eq!(unique.len(), cpus.len(), "{cpus:?}");
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());

    // --cores 1 runs a single shard that does everything.
    let dst1 = s.path("out1");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        OsStr::new("--cores"),
        OsStr::new("1"),
        src.as_os_str(),
        dst1.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["bytes_per_shard"].as_array().unwrap().len(), 1);
}

/// SIGKILL while a large file replaces an older version: the final name holds the whole
/// old or the whole new content, and the next run finishes and leaves no temporary file.
#[test]
fn sigkill_mid_copy_leaves_old_or_new_and_rerun_cleans_up() {
    let s = Scratch::new("kill");
    let size = 384u64 << 20;
    let new = s.path("new.bin");
    random_file(&new, size, 100);
    let old = s.path("old.bin");
    random_file(&old, size, 200);
    let old_bytes = std::fs::read(&old).unwrap();
    let new_bytes = std::fs::read(&new).unwrap();
    let dst_dir = s.path("dst");
    std::fs::create_dir(&dst_dir).unwrap();
    let dst = dst_dir.join("file.bin");
    std::fs::copy(&old, &dst).unwrap();

    for delay_ms in [5u64, 40, 120, 300, 700] {
        let mut child = Command::new(bin())
            .arg("copy")
            .arg("-q")
            .arg(&new)
            .arg(&dst)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = std::fs::read(&dst).unwrap();
        assert!(
            now == old_bytes || now == new_bytes,
            "after kill at {delay_ms} ms: neither old nor new"
        );
        if now == new_bytes {
            // Put the old version back so later rounds kill a real replacement.
            std::fs::copy(&old, &dst).unwrap();
        }
    }
    let out = tpc(&[OsStr::new("copy"), new.as_os_str(), dst.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(&dst).unwrap(), new_bytes);
    assert!(
        temporaries(&dst_dir).is_empty(),
        "left behind: {:?}",
        temporaries(&dst_dir)
    );
}

#[test]
fn check_reports_every_kind_of_difference() {
    let s = Scratch::new("check");
    let a = s.path("a");
    std::fs::create_dir(&a).unwrap();
    for name in ["same", "content", "mode", "gone"] {
        std::fs::write(a.join(name), b"0123456789").unwrap();
        set_mtime(&a.join(name), 1000, 0);
    }
    let b = s.path("b");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("-q"),
        &with_slash(&a),
        b.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&a, &b);

    // Same size, same mtime, different bytes: only a content comparison sees it.
    std::fs::write(b.join("content"), b"0123456780").unwrap();
    set_mtime(&b.join("content"), 1000, 0);
    chmod(&b.join("mode"), 0o600);
    std::fs::remove_file(b.join("gone")).unwrap();
    std::fs::write(b.join("new"), b"new").unwrap();
    set_mtime(&b, 1, 0);
    set_mtime(&a, 1, 0);
    let out = tpc(&[OsStr::new("check"), a.as_os_str(), b.as_os_str()]);
    assert_eq!(code(&out), 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing  'gone'"), "{text}");
    assert!(text.contains("extra    'new'"), "{text}");
    assert!(text.contains("differs  'content' (content)"), "{text}");
    assert!(text.contains("differs  'mode' (mode)"), "{text}");
    assert!(!text.contains("'same'"), "{text}");
}

#[test]
fn checksum_finds_changes_that_size_and_mtime_miss() {
    let s = Scratch::new("checksum");
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("f"), CHUNK * 20 + 7, 5);
    let dst = s.path("dst");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("-q"),
        &with_slash(&src),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Corrupt the copy in the middle, keeping size and mtime.
    let md = std::fs::metadata(dst.join("f")).unwrap();
    let mut bytes = std::fs::read(dst.join("f")).unwrap();
    bytes[(CHUNK * 17) as usize] ^= 0xff;
    std::fs::write(dst.join("f"), &bytes).unwrap();
    set_mtime(&dst.join("f"), md.mtime(), md.mtime_nsec());

    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        &with_slash(&src),
        dst.as_os_str(),
    ]);
    assert_eq!(
        json(&out)["files_copied"],
        0,
        "quick check trusts size and mtime"
    );
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        OsStr::new("--checksum"),
        OsStr::new("--verify"),
        &with_slash(&src),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["files_copied"], 1);
    assert_identical(&src, &dst);
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        OsStr::new("--checksum"),
        &with_slash(&src),
        dst.as_os_str(),
    ]);
    assert_eq!(json(&out)["files_copied"], 0);
}

#[test]
fn special_files_skipped_by_name_hard_links_kept_setid_cleared() {
    let s = Scratch::new("special");
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"linked").unwrap();
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    std::fs::write(src.join("setuid"), b"#!/bin/sh\n").unwrap();
    chmod(&src.join("setuid"), 0o6755);
    std::fs::create_dir(src.join("sgid")).unwrap();
    chmod(&src.join("sgid"), 0o2775);
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let dst = s.path("dst");
    let out = tpc(&[
        OsStr::new("copy"),
        OsStr::new("--json"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("skipping FIFO") && stderr(&out).contains("pipe"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json(&out)["skipped"], 1);
    let (a, b) = (
        std::fs::metadata(dst.join("src/a")).unwrap(),
        std::fs::metadata(dst.join("src/b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard link preserved");
    assert!(!dst.join("src/pipe").exists());
    // Ownership is not copied, so setuid/setgid must not be either.
    let mode = std::fs::metadata(dst.join("src/setuid")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    let mode = std::fs::metadata(dst.join("src/sgid")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o775, "setgid on a directory is cleared too");
}

#[test]
fn missing_source_is_one_line_exit_3_and_other_sources_still_copy() {
    let s = Scratch::new("missing");
    std::fs::write(s.path("present"), b"here").unwrap();
    let dst = s.path("dst");
    let out = tpc(&[
        OsStr::new("copy"),
        s.path("absent").as_os_str(),
        s.path("present").as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("tpc-xfer:")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("absent") && err.contains("No such file"),
        "{err}"
    );
    // The one source found lands as DEST itself, as rsync writes it (`rsync -r missing
    // present dst` makes the file dst): a missing source counts for nothing.
    assert_eq!(std::fs::read(&dst).unwrap(), b"here");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = tpc(&["copy", "--cores", "0", "a", "b"]);
    assert_eq!(code(&out), 2);
    let out = tpc(&["copy", "only-one"]);
    assert_eq!(code(&out), 2);
    let out = tpc(&["--help"]);
    assert_eq!(code(&out), 0);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes"), "{help}");
}

#[test]
fn full_destination_is_exit_5_and_leaves_no_partial_file() {
    if !can_mount_tmpfs() {
        return;
    }
    let s = Scratch::new("full");
    let src = s.path("src");
    too_large_source(&src);
    let mnt = Tmpfs::mount(s.path("mnt"), "size=2m");
    let out = tpc(&[OsStr::new("copy"), src.as_os_str(), mnt.0.as_os_str()]);
    assert_full_destination(&out, &mnt.0);
}

#[test]
fn read_only_destination_is_exit_4() {
    if !can_mount_tmpfs() {
        return;
    }
    let s = Scratch::new("rofs");
    std::fs::write(s.path("f"), b"data").unwrap();
    let mnt = Tmpfs::mount(s.path("mnt"), "size=1m,ro");
    let out = tpc(&[
        OsStr::new("copy"),
        s.path("f").as_os_str(),
        mnt.0.join("f").as_os_str(),
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreadable_file_and_directory_are_exit_3_and_the_rest_is_copied() {
    let s = Scratch::new("unreadable");
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"no").unwrap();
    chmod(&src.join("secret"), 0o000);
    // A directory of mode 0000: what is in it cannot be listed.
    std::fs::create_dir(src.join("shut")).unwrap();
    std::fs::write(src.join("shut/f"), b"hidden").unwrap();
    chmod(&src.join("shut"), 0o000);
    let dst = s.path("dst");
    let mut cmd = Command::new(bin());
    if is_root() {
        // Root reads anything: run as nobody, on a tree nobody owns.
        Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&s.0)
            .status()
            .unwrap();
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin()]);
    }
    let out = cmd.arg("copy").arg(&src).arg(&dst).output().unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secret") && stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(dst.join("src/ok")).unwrap(), b"fine");
    assert!(!dst.join("src/secret").exists());
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.contains("shut") && l.contains("Permission denied")),
        "{}",
        stderr(&out)
    );
    assert!(!dst.join("src/shut/f").exists());
}

/// A source that fails with EIO part way (strace makes the copy's first read of the file
/// fail; the portable driver reads with pread64, which strace sees): exit 3 with
/// the error and the file named, nothing of it at the destination, the rest copied
/// (docs/HARDENING.md).
#[test]
fn an_io_error_reading_a_source_is_exit_3_and_leaves_nothing_of_it() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("eio-read");
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("big"), 8 << 20, 4);
    std::fs::write(src.join("ok"), b"fine").unwrap();
    let dst = s.path("dst");
    let out = failing_first("pread64", "EIO", Some(&src.join("big")))
        .args(["copy", "--io", "portable"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("big") && err.contains("Input/output error"),
        "{err}"
    );
    assert!(
        !dst.join("src/big").exists(),
        "a partial file under the final name"
    );
    assert!(temporaries(&dst).is_empty());
}

/// An error writing a local copy's destination, injected by strace into the copy's first
/// call of `syscall` (`errno`, whose text is `says`; portable driver): exit 4 with the
/// error and the file named, nothing under its final name and no temporary left
/// (docs/HARDENING.md).
fn an_error_in_a_local_copy(syscall: &str, errno: &str, says: &str) {
    if !strace_works() {
        return;
    }
    let s = Scratch::new(&format!("copy-{errno}-{syscall}"));
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("big"), 8 << 20, 5);
    let dst = s.path("dst");
    let out = failing_first(syscall, errno, None)
        .args(["copy", "--io", "portable"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{syscall}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("big") && err.contains(says),
        "{syscall}: {err}"
    );
    assert!(
        !dst.join("src/big").exists(),
        "{syscall}: a file under its final name"
    );
    assert!(temporaries(&dst).is_empty(), "{syscall}");
}

/// The sync before the renames fails.
#[test]
fn an_io_error_syncing_a_local_copy_is_exit_4_and_leaves_nothing_under_its_name() {
    an_error_in_a_local_copy("syncfs", "EIO", "Input/output error");
}

/// The destination's filesystem goes read-only mid-copy: as a remount to read-only is
/// refused while files are open for writing, the copy meets it as ext4's
/// `errors=remount-ro` makes it, at its next write.
#[test]
fn a_destination_gone_read_only_mid_copy_is_exit_4_and_leaves_nothing_under_its_name() {
    an_error_in_a_local_copy("pwrite64", "EROFS", "Read-only file system");
}

/// Bytes a file has allocated on disk.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_sparse_file_keeps_its_holes_and_its_bytes() {
    let s = Scratch::new("sparse");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // 1 GiB with 1 MiB of data: 768 KiB across a chunk boundary, the rest at the end.
    // (`check` reads every byte, holes too: 10 GiB, the size, takes it 30 s
    // here; the copy itself reads and writes only the data either way.)
    const SIZE: u64 = 1 << 30;
    let f = std::fs::File::create(src.join("disk.img")).unwrap();
    f.set_len(SIZE).unwrap();
    let data: Vec<u8> = (0..768 * 1024).map(|i| (i % 251) as u8 + 1).collect();
    let tail = vec![7u8; 256 * 1024];
    let at = 5 * CHUNK - 300 * 1024;
    std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, SIZE - tail.len() as u64).unwrap();
    drop(f);
    let data_bytes = (data.len() + tail.len()) as u64;
    if allocated(&src.join("disk.img")) > 2 * data_bytes {
        eprintln!("skipped: this filesystem does not make holes");
        return;
    }
    // A small file that is all zeros, and a dense one, beside it.
    std::fs::File::create(src.join("zeros"))
        .unwrap()
        .set_len(100_000)
        .unwrap();
    random_file(&src.join("dense"), 3 * CHUNK + 5, 9);
    let dst = s.path("dst");
    let out = tpc(&[os("copy"), os("-q"), with_slash(&src), dst.clone().into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // `check` compares every chunk's hash, holes included.
    let out = tpc(&[os("check"), src.clone().into(), dst.clone().into()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    let got = std::fs::File::open(dst.join("disk.img")).unwrap();
    let mut back = vec![0u8; data.len() + 8192];
    std::os::unix::fs::FileExt::read_exact_at(&got, &mut back, at - 4096).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert_eq!(&back[4096..4096 + data.len()], &data[..]);
    assert!(back[4096 + data.len()..].iter().all(|&b| b == 0));
    // Within twice its data on disk: the holes stayed holes.
    let used = allocated(&dst.join("disk.img"));
    assert!(
        used <= 2 * data_bytes,
        "{used} bytes allocated for {data_bytes} of data"
    );
    assert_eq!(std::fs::metadata(dst.join("zeros")).unwrap().len(), 100_000);
    assert_same_bytes(&src.join("dense"), &dst.join("dense"));
}
