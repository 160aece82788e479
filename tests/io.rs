//! The I/O driver choice end to end: `--io auto` falls back to the portable driver, with
//! a one-line notice, where io_uring cannot be used (RLIMIT_MEMLOCK too low, or a seccomp
//! filter refusing io_uring_setup as Docker's default profile does), and the copy still
//! succeeds; `--io uring` there fails with the reason; and a client on one driver moves
//! the edge-case tree through a server on the other.
#![cfg(all(feature = "uring", target_os = "linux"))]

mod common;

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use common::*;

const NOTICE: &str = "using the portable driver";

/// The `--json` summary, read directly: these tests choose `--io` themselves, so the
/// suite-wide driver check in `common::json` does not apply.
fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad json ({e}): {}", stderr(out)))
}

/// Whether io_uring works here without any restriction of ours; where it does not (a
/// container that blocks it already), the tests that need it say so and skip.
fn io_uring_usable(test: &str) -> bool {
    let s = Scratch::new(&format!("{test}-probe"));
    std::fs::create_dir(s.path("empty")).unwrap();
    let out = Command::new(bin())
        .args(["check", "-q", "--io", "uring"])
        .arg(s.path("empty"))
        .arg(s.path("empty"))
        .output()
        .expect("tpc-xfer runs");
    if code(&out) == 7 {
        eprintln!(
            "skipped: io_uring is unusable here already: {}",
            stderr(&out)
        );
        return false;
    }
    true
}

/// `tpc-xfer copy --json ARGS SRC/ DST` with `restrict` run in the child before exec.
/// The test's own `TPC_XFER_IO` is removed, so `--io` defaults to auto unless given.
fn copy_restricted(restrict: fn() -> io::Result<()>, args: &[&str], s: &Scratch) -> Output {
    let mut cmd = Command::new(bin());
    cmd.env_remove("TPC_XFER_IO")
        .args(["copy", "--json"])
        .args(args)
        .arg(with_slash(&s.path("src")))
        .arg(s.path("dst"));
    // SAFETY: the closure only makes async-signal-safe syscalls (setrlimit, prctl).
    unsafe { cmd.pre_exec(restrict) };
    cmd.output().expect("tpc-xfer runs")
}

fn low_memlock() -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: 64 << 10,
        rlim_max: 64 << 10,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A seccomp filter that fails io_uring_setup with EPERM and allows everything else.
fn no_io_uring() -> io::Result<()> {
    // seccomp_data.nr is the first field (offset 0).
    let filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with a filter program that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn no_restriction() -> io::Result<()> {
    Ok(())
}

/// Under `restrict`, auto falls back with its notice and copies the tree; `--io uring`
/// fails with one line saying why (`why` is part of it).
fn falls_back_under(name: &str, restrict: fn() -> io::Result<()>, why: &str) {
    if !io_uring_usable(name) {
        return;
    }
    let s = Scratch::new(name);
    edge_case_tree(&s.path("src"), 3 * CHUNK_BYTES + 5, 50);

    let out = copy_restricted(restrict, &[], &s);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line of notice: {err}");
    assert!(err.contains(NOTICE) && err.contains(why), "{err}");
    assert_eq!(summary(&out)["io"], "portable");
    assert_identical(&s.path("src"), &s.path("dst"));

    std::fs::remove_dir_all(s.path("dst")).unwrap();
    let out = copy_restricted(restrict, &["--io", "uring"], &s);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--io uring") && err.contains(why), "{err}");
    assert!(
        !s.path("dst").exists(),
        "nothing is copied on a refused start"
    );
}

#[test]
fn auto_falls_back_to_portable_when_memlock_is_too_low() {
    falls_back_under("io-memlock", low_memlock, "RLIMIT_MEMLOCK is 64 KiB");
}

#[test]
fn auto_falls_back_to_portable_when_seccomp_refuses_io_uring() {
    falls_back_under("io-seccomp", no_io_uring, "seccomp");
}

#[test]
fn auto_uses_io_uring_where_it_works_and_says_nothing() {
    if !io_uring_usable("io-auto") {
        return;
    }
    let s = Scratch::new("io-auto");
    edge_case_tree(&s.path("src"), CHUNK_BYTES + 1, 10);
    let out = copy_restricted(no_restriction, &[], &s);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(summary(&out)["io"], "uring");
}

/// A server on `server_io` and a client on `client_io` push and pull the edge-case tree.
fn across_drivers(name: &str, server_io: &str, client_io: &str) {
    if !io_uring_usable(name) {
        return;
    }
    let s = Scratch::new(name);
    let src = s.path("src");
    edge_case_tree(&src, 20 * CHUNK_BYTES + 7, 500);
    let (cs, ss) = keys(&s);
    let server = Server::start_with(
        None,
        &s.path("root"),
        &ss,
        "127.0.0.1:0",
        &["--io", server_io],
    );
    let out = copy(
        &cs,
        with_slash(&src),
        server.url("tree"),
        &["--accept-new", "--json", "--io", client_io],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(summary(&out)["io"], client_io);
    assert_identical(&src, &s.path("root/tree"));
    let back = s.path("back");
    let out = copy(&cs, server.url("tree/"), &back, &["--io", client_io]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &back);
    let out = tpc(&[os("check"), src.into(), back.into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn a_uring_client_and_a_portable_server_move_the_edge_case_tree() {
    across_drivers("io-uring-to-portable", "portable", "uring");
}

#[test]
fn a_portable_client_and_a_uring_server_move_the_edge_case_tree() {
    across_drivers("io-portable-to-uring", "uring", "portable");
}
