//! What a transfer shows while it runs: the progress line through a pseudo-terminal
//! (push and pull), `--json-log`'s lines, and nothing drawn where stderr is not a
//! terminal unless asked.

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use common::*;

/// A pseudo-terminal of 120 columns: (master, slave).
fn pty() -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let mut size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors it opened; the pointers are valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            // `*const` on Linux, `*mut` on macOS: a `*mut` serves both.
            std::ptr::null_mut(),
            &raw mut size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are open and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

/// Runs `tpc-xfer ARGS` with stderr on a terminal; returns its exit code and what it
/// drew there.
fn on_terminal(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let (mut master, slave) = pty();
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("tpc-xfer runs");
    // The child holds the terminal's only other end: reading ends (EIO) when it exits.
    let reader = std::thread::spawn(move || {
        let mut drawn = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            drawn.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&drawn).into_owned()
    });
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

/// The states of the progress line (`verb`) among what was drawn: each one's
/// percentage and ETA as h:mm:ss.
fn states(drawn: &str, verb: &str) -> Vec<(u64, String)> {
    drawn
        .split(['\r', '\n'])
        .filter_map(|l| {
            // Terminal control sequences (clearing the line) come before the text.
            let l = &l[l.find(&format!("{verb} "))?..];
            let words: Vec<&str> = l.split_whitespace().collect();
            let pct = words
                .iter()
                .find_map(|w| w.strip_suffix('%')?.parse().ok())?;
            let at = words.iter().position(|w| *w == "ETA")?;
            Some((pct, words.get(at + 1)?.to_string()))
        })
        .collect()
}

fn is_hms(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
        && parts[1].len() == 2
        && parts[2].len() == 2
}

#[test]
fn push_and_pull_draw_percentage_and_eta_on_a_terminal() {
    let s = Scratch::new("progress-pty");
    let (cs, ss) = keys(&s);
    let served = s.path("served");
    let server = Server::start(&served, &ss);
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("big"), 64 << 20, 1);
    random_file(&src.join("small"), 1000, 2);
    let state = cs.as_os_str();
    let url = server.url("in");
    let (code, drawn) = on_terminal(&[
        os("copy").as_os_str(),
        os("--progress").as_os_str(),
        os("--accept-new").as_os_str(),
        os("--state").as_os_str(),
        state,
        with_slash(&src).as_os_str(),
        os(&url).as_os_str(),
    ]);
    assert_eq!(code, 0, "{drawn}");
    let pushed = states(&drawn, "push");
    assert!(!pushed.is_empty(), "no progress line drawn: {drawn:?}");
    assert!(pushed
        .iter()
        .all(|(p, eta)| *p <= 100 && (is_hms(eta) || eta == "-:--:--")));
    // The last state drawn is the whole transfer, and a known ETA reads h:mm:ss.
    assert_eq!(
        pushed.last().unwrap(),
        &(100, "0:00:00".to_string()),
        "{drawn:?}"
    );
    assert!(drawn.contains("2 / 2 files"), "{drawn:?}");
    assert!(drawn.contains("pushed 2 of 2 files"), "{drawn:?}");

    let back = s.path("back");
    let (code, drawn) = on_terminal(&[
        os("copy").as_os_str(),
        os("--progress").as_os_str(),
        os("--state").as_os_str(),
        state,
        os(&server.url("in/")).as_os_str(),
        back.as_os_str(),
    ]);
    assert_eq!(code, 0, "{drawn}");
    let pulled = states(&drawn, "pull");
    assert_eq!(
        pulled.last().unwrap(),
        &(100, "0:00:00".to_string()),
        "{drawn:?}"
    );
    assert_same_bytes(&src, &back);
}

#[test]
fn nothing_is_drawn_where_stderr_is_not_a_terminal_unless_asked() {
    let s = Scratch::new("progress-pipe");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("f"), 4 << 20, 3);
    let out = tpc(&[os("copy"), src.clone().into(), s.path("a").into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains("ETA"), "{}", stderr(&out));
    // `--progress` into a pipe: the states after carriage returns, as rsync does.
    let out = tpc(&[os("copy"), os("-P"), src.into(), s.path("b").into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(
        states(&text, "copy").last().unwrap(),
        &(100, "0:00:00".into()),
        "{text:?}"
    );
}

#[test]
fn json_log_lines_parse_name_each_file_and_end_with_the_exit_code() {
    let s = Scratch::new("progress-json-log");
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("served"), &ss);
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5 {
        random_file(&src.join(format!("f{i}")), 100_000 * (i + 1), i);
    }
    let lines = |out: &std::process::Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let check = |lines: &[serde_json::Value], exit: u64, files: &[&str]| {
        let last = lines.last().expect("a summary line");
        assert_eq!(last["type"], "summary", "{last}");
        assert_eq!(last["exit_code"], exit, "{last}");
        assert_eq!(last["schema_version"], 2, "{last}");
        let mut logged: Vec<String> = lines
            .iter()
            .filter(|l| l["type"] == "file")
            .map(|l| {
                l["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        logged.sort();
        assert_eq!(logged, files, "{lines:?}");
        let progress: Vec<_> = lines.iter().filter(|l| l["type"] == "progress").collect();
        // The last state is logged before the summary, whatever the run's length.
        let p = progress.last().expect("a progress line");
        assert_eq!(p["bytes"], p["total_bytes"], "{p}");
        assert!(lines
            .iter()
            .all(|l| l["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
    };
    let all = ["f0", "f1", "f2", "f3", "f4"];
    let missing = s.path("missing");
    // A local copy with one source missing: exit 3, named among the failures.
    let out = tpc(&[
        os("copy"),
        os("--json-log"),
        with_slash(&src),
        missing.clone().into(),
        s.path("local").into(),
    ]);
    let local = lines(&out);
    check(&local, 3, &all);
    let failures = local.last().unwrap()["failures"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        failures.len() == 1 && failures[0].as_str().unwrap().contains("missing"),
        "{failures:?}"
    );
    // A push and a pull.
    let out = copy(
        &cs,
        with_slash(&src),
        server.url("in"),
        &["--json-log", "--accept-new"],
    );
    check(&lines(&out), 0, &all);
    let out = copy(&cs, server.url("in/"), s.path("back"), &["--json-log"]);
    check(&lines(&out), 0, &all);
    // A pull that cannot start still ends with its summary line.
    let out = copy(
        &cs,
        server.url("nothing-here"),
        s.path("none"),
        &["--json-log"],
    );
    let none = lines(&out);
    let last = none.last().unwrap();
    assert_eq!(
        (&last["type"], &last["exit_code"]),
        (&"summary".into(), &3.into()),
        "{none:?}"
    );
    assert_eq!(last["direction"], "pull");
    assert!(
        last["failures"][0]
            .as_str()
            .unwrap()
            .contains("nothing-here"),
        "{last}"
    );
    // --json and --json-log are one or the other.
    let out = tpc(&[
        os("copy"),
        os("--json"),
        os("--json-log"),
        src.into(),
        s.path("x").into(),
    ]);
    assert_eq!(code(&out), 2);
}
