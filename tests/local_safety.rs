//! Regression tests for security findings in the local copy (`tpc-xfer copy SRC DST` on
//! local paths): a destination directory or file swapped for a symlink mid-copy, a second
//! filesystem below the destination whose files were renamed into place unsynced,
//! stale-temporary cleanup deleting a user's file, and a source changed during its copy.
//! The races are made deterministic with strace's syscall delay injection: the copy is
//! held inside one syscall while the test changes the tree under it.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Longest any one run of the binary may take before the test kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long strace holds the copy in the delayed syscall, in microseconds: long enough
/// for the test to swap the tree under it on a loaded machine, short for the suite.
const HOLD_US: u64 = 1_500_000;

/// The binary under test: this build's, or the one `TPC_XFER_UNDER_TEST` names, so that
/// these tests can be run against an older build to show they catch the findings there.
fn binary() -> PathBuf {
    std::env::var_os("TPC_XFER_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(bin()))
}

/// One run of the binary (under strace, or prlimit, or setpriv), in a process group of its
/// own so that the test can end the wrapper and the binary together if the run does not
/// stop by itself.
struct Traced {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Traced {
    /// `strace STRACE_ARGS tpc-xfer ARGS` with `env` set, run in `s` (its output kept in
    /// files there).
    fn start(s: &Scratch, strace_args: &[&str], env: &[(&str, &str)], args: &[&OsStr]) -> Traced {
        let mut cmd = Command::new("strace");
        cmd.args(strace_args)
            .arg(binary())
            .args(args)
            .envs(env.iter().copied());
        Traced::spawn(s, cmd)
    }

    /// `cmd` (strace, or any other command that runs the binary) run in `s`, its output
    /// kept in files there: a run that fails thousands of files cannot fill a pipe.
    fn spawn(s: &Scratch, mut cmd: Command) -> Traced {
        let stdout = s.path("run.stdout");
        let stderr = s.path("run.stderr");
        let child = cmd
            .current_dir(&s.0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("the command runs");
        Traced {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not waited for yet");
        child.try_wait().unwrap().is_none()
    }

    /// Waits for the run to end (killing it after RUN_TIMEOUT); strace exits with its
    /// tracee's status.
    fn wait(mut self) -> Output {
        let mut child = self.child.take().expect("waited for once");
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!("the copy did not finish within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: std::fs::read(&self.stdout).unwrap(),
            stderr: std::fs::read(&self.stderr).unwrap(),
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // A test that panics mid-run must not leave strace and the copy behind.
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

/// SIGKILL to the process group this test started (strace and its tracee), then reap.
fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) takes no pointers.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// Polls `cond` every 2 ms until it holds or `run` has ended; whether it held.
fn wait_while_running(run: &mut Traced, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        if !run.running() {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// strace arguments that hold the copy for HOLD_US after each mkdir it makes: the
/// directory exists, and the copy has not yet done anything with it.
fn hold_after_mkdir() -> Vec<String> {
    vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        "trace=mkdir,mkdirat".into(),
        "-e".into(),
        format!("inject=mkdir,mkdirat:delay_exit={HOLD_US}"),
    ]
}

fn str_args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The copy creates `dst/d` and is held there; the test moves it away and leaves a
/// symlink to a directory outside the destination in its place. Nothing may be written
/// through that link, the outside directory's mode must not change, and the copy must
/// not report success unless its files really are in the directory it created.
#[test]
fn a_destination_directory_swapped_for_a_symlink_mid_copy_is_not_followed() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("swap-dir");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        let f = src.join(format!("d/f{i:02}"));
        std::fs::write(&f, format!("file {i}\n")).unwrap();
        chmod(&f, 0o644);
    }
    // Named like a source file: following the link would replace it.
    std::fs::write(src.join("d/keep"), b"from the source\n").unwrap();
    chmod(&src.join("d"), 0o755);
    // `src/` into an existing `dst`: the only directory the copy makes is dst/d.
    let dst = s.path("dst");
    std::fs::create_dir(&dst).unwrap();
    // A private directory with a private file: what a symlink swap would aim at.
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"private\n").unwrap();
    chmod(&outside.join("keep"), 0o600);
    chmod(&outside, 0o700);
    let outside_before = list(&outside);

    let strace = hold_after_mkdir();
    let mut run = Traced::start(
        &s,
        &str_args(&strace),
        &[],
        &[
            OsStr::new("copy"),
            OsStr::new("-q"),
            &with_slash(&src),
            dst.as_os_str(),
        ],
    );
    let made = dst.join("d");
    let seen = wait_while_running(&mut run, || made.is_dir());
    if seen {
        std::fs::rename(&made, dst.join("d.moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &made).unwrap();
    }
    let out = run.wait();
    assert!(
        seen,
        "dst/d never appeared while the copy was held in mkdir: {}",
        stderr(&out)
    );

    let outside_after = list(&outside);
    let names = |l: &[Listed]| -> Vec<String> {
        l.iter()
            .map(|e| format!("{} {:o}", e.0.display(), e.2))
            .collect()
    };
    assert_eq!(
        names(&outside_after),
        names(&outside_before),
        "the copy wrote through the symlink into the outside directory (exit {}): {}",
        code(&out),
        stderr(&out)
    );
    assert_eq!(
        format!("{:o}", mode_of(&outside)),
        "700",
        "the outside directory's mode changed through the symlink"
    );
    assert_eq!(outside_after, outside_before, "outside, mtimes included");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"private\n");
    if code(&out) == 0 {
        // Success is only true if the files are in the directory the copy made.
        for i in 0..20 {
            let name = format!("f{i:02}");
            assert_eq!(
                std::fs::read(dst.join("d.moved").join(&name)).ok(),
                Some(format!("file {i}\n").into_bytes()),
                "exit 0, but {name} is not in the directory the copy created"
            );
        }
    }
}

/// A file whose content is unchanged but whose mode differs only has its mode fixed. The
/// copy is held in the mkdir of a new directory that sorts after it (after it was
/// planned, before the fix-up); the test replaces the file with a symlink to a private
/// file outside. The fix-up must not change the private file's mode.
#[test]
fn a_destination_file_swapped_for_a_symlink_before_its_mode_fixup_is_not_followed() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("swap-file");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("zz-new")).unwrap();
    std::fs::write(src.join("zz-new/g"), b"g\n").unwrap();
    std::fs::write(src.join("f"), b"same content\n").unwrap();
    set_mtime(&src.join("f"), 1_700_000_000, 0);
    // Source 0644 and destination 0600: a chmod through the link would make the private
    // file world-readable.
    chmod(&src.join("f"), 0o644);
    let dst = s.path("dst");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("f"), b"same content\n").unwrap();
    set_mtime(&dst.join("f"), 1_700_000_000, 0);
    chmod(&dst.join("f"), 0o600);
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"private\n").unwrap();
    chmod(&victim, 0o600);
    let victim_before = list(&outside);

    let strace = hold_after_mkdir();
    let mut run = Traced::start(
        &s,
        &str_args(&strace),
        &[],
        &[
            OsStr::new("copy"),
            OsStr::new("-q"),
            &with_slash(&src),
            dst.as_os_str(),
        ],
    );
    let made = dst.join("zz-new");
    let seen = wait_while_running(&mut run, || made.is_dir());
    if seen {
        std::fs::remove_file(dst.join("f")).unwrap();
        std::os::unix::fs::symlink(&victim, dst.join("f")).unwrap();
    }
    let out = run.wait();
    assert!(
        seen,
        "dst/zz-new never appeared while the copy was held in mkdir: {}",
        stderr(&out)
    );
    assert_eq!(
        format!("{:o}", mode_of(&victim)),
        "600",
        "the mode fix-up followed the symlink to the outside file (exit {}): {}",
        code(&out),
        stderr(&out)
    );
    assert_eq!(list(&outside), victim_before);
    assert_eq!(std::fs::read(&victim).unwrap(), b"private\n");
}

/// One completed syscall from an `strace -f -y` log: name, arguments and result.
struct Call {
    name: String,
    args: Vec<String>,
    result: String,
}

/// The calls of a `strace -f` log in the order they returned: an `<unfinished ...>` line
/// is joined with its `<... resumed>` line, which is where the call ends.
fn calls(log: &str) -> Vec<Call> {
    let mut pending: std::collections::HashMap<&str, String> = Default::default();
    let mut out = Vec::new();
    for line in log.lines() {
        // `-f` starts each line with the pid of the thread that made the call.
        let (pid, rest) = match line.split_once(char::is_whitespace) {
            Some((pid, rest)) if pid.bytes().all(|b| b.is_ascii_digit()) => (pid, rest),
            _ => ("", line),
        };
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            // Untrimmed: a call cut after `arg, ` goes on with the next argument.
            pending.insert(pid, head.to_string());
            continue;
        }
        let whole = if rest.starts_with("<... ") {
            let Some((_, tail)) = rest.split_once("resumed>") else {
                continue;
            };
            let head = pending.remove(pid).unwrap_or_default();
            format!("{head}{tail}")
        } else {
            rest.to_string()
        };
        // `name(args) = result`, where strace pads short calls with spaces before the `=`.
        let Some((call, result)) = whole.rsplit_once(" = ") else {
            continue;
        };
        let Some((name, args)) = call.trim_end().split_once('(') else {
            continue;
        };
        let Some(args) = args.strip_suffix(')') else {
            continue;
        };
        out.push(Call {
            name: name.to_string(),
            args: args.split(", ").map(|a| a.trim().to_string()).collect(),
            result: result.to_string(),
        });
    }
    out
}

/// The path strace -y shows for an fd argument, `6</some/path>`.
fn fd_path(arg: &str) -> Option<PathBuf> {
    let open = arg.find('<')?;
    let close = arg.rfind('>')?;
    Some(PathBuf::from(&arg[open + 1..close]))
}

/// The path a (dirfd, name) pair names; `cwd` for AT_FDCWD and a name given alone.
fn at_path(dirfd: Option<&str>, name: &str, cwd: &Path) -> PathBuf {
    let name = Path::new(name.trim_matches('"'));
    if name.is_absolute() {
        return name.to_path_buf();
    }
    let dir = dirfd.and_then(fd_path).unwrap_or_else(|| cwd.to_path_buf());
    dir.join(name)
}

/// (from, to) of a successful rename, renameat or renameat2.
fn rename_paths(call: &Call, cwd: &Path) -> Option<(PathBuf, PathBuf)> {
    if !call.result.starts_with('0') {
        return None;
    }
    let a = &call.args;
    match call.name.as_str() {
        "rename" if a.len() >= 2 => Some((at_path(None, &a[0], cwd), at_path(None, &a[1], cwd))),
        "renameat" | "renameat2" if a.len() >= 4 => Some((
            at_path(Some(&a[0]), &a[1], cwd),
            at_path(Some(&a[2]), &a[3], cwd),
        )),
        _ => None,
    }
}

/// A tmpfs mounted below the destination: the batch's durability step must reach it too.
/// Every file renamed into place must come after a sync that covers it: a `sync`, a
/// `syncfs` of an fd on its filesystem, or an fsync/fdatasync of the file itself. The
/// portable driver is used so that every sync is a syscall strace sees (io_uring's
/// fsync is not).
#[test]
fn every_file_is_synced_before_its_rename_even_on_a_second_filesystem_below_the_destination() {
    if !can_mount_tmpfs() || !strace_works() {
        return;
    }
    let s = Scratch::new("second-fs");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("mnt")).unwrap();
    chmod(&src.join("mnt"), 0o755);
    for name in ["a", "b", "z"] {
        std::fs::write(src.join(name), format!("top {name}\n")).unwrap();
        std::fs::write(src.join("mnt").join(name), format!("mounted {name}\n")).unwrap();
    }
    // One shard (one commit batch holding files of both filesystems), then every core.
    for (round, cores) in [Some("1"), None].into_iter().enumerate() {
        let dst = s.path(&format!("dst{round}"));
        let mnt = dst.join("mnt");
        let _tmpfs = Tmpfs::mount(mnt.clone(), "size=4m,mode=0755");
        let log = s.path(&format!("sync{round}.trace"));
        let mut args: Vec<OsString> = vec!["copy".into(), "-q".into()];
        if let Some(n) = cores {
            args.extend(["--cores".into(), n.into()]);
        }
        args.extend([with_slash(&src), dst.clone().into()]);
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let log_arg = log.to_str().unwrap();
        let run = Traced::start(
            &s,
            &[
                "-f",
                "-qq",
                "-y",
                "-o",
                log_arg,
                "-e",
                "trace=sync,syncfs,fsync,fdatasync,rename,renameat,renameat2",
            ],
            &[("TPC_XFER_IO", "portable")],
            &args,
        );
        let out = run.wait();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        // (Contents only: this test is about durability, the rest of the metadata is
        // tests/copy.rs's.)
        for name in ["a", "b", "z", "mnt/a", "mnt/b", "mnt/z"] {
            assert_eq!(
                std::fs::read(dst.join(name)).unwrap(),
                std::fs::read(src.join(name)).unwrap(),
                "{name}"
            );
        }

        let text = std::fs::read_to_string(&log).unwrap();
        let calls = calls(&text);
        let on_mnt = |p: &Path| p.starts_with(&mnt);
        let mut renamed = 0;
        for (i, call) in calls.iter().enumerate() {
            let Some((from, to)) = rename_paths(call, &s.0) else {
                continue;
            };
            if !to.starts_with(&dst) {
                continue;
            }
            renamed += 1;
            let covered = calls[..i].iter().any(|c| {
                if !c.result.starts_with('0') {
                    return false;
                }
                match c.name.as_str() {
                    "sync" => true,
                    "syncfs" => fd_path(&c.args[0]).is_some_and(|p| on_mnt(&p) == on_mnt(&to)),
                    "fsync" | "fdatasync" => {
                        fd_path(&c.args[0]).is_some_and(|p| p == from || p == to)
                    }
                    _ => false,
                }
            });
            assert!(
                covered,
                "{} was renamed into place (--cores {}) before anything synced its \
                 filesystem ({}); the trace:\n{text}",
                to.display(),
                cores.unwrap_or("default"),
                if on_mnt(&to) {
                    "the tmpfs below the destination"
                } else {
                    "the destination's"
                },
            );
        }
        assert_eq!(
            renamed, 6,
            "six files renamed into place; the trace:\n{text}"
        );
    }
}

/// A pid that names no process here, for a temporary-looking name of a dead run.
fn dead_pid() -> u32 {
    (1..=999_999u32)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("some pid is free")
}

/// Files in the destination named as earlier versions named temporaries (`.tpcx.<pid>.<n>.tmp`)
/// belong to the user: neither a dead nor a live pid in the name lets a copy delete them.
#[test]
fn files_named_like_stale_temporaries_in_the_destination_are_not_deleted() {
    let s = Scratch::new("stale-names");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a"), b"a\n").unwrap();
    std::fs::write(src.join("sub/b"), b"b\n").unwrap();
    let single = s.path("single");
    std::fs::write(&single, b"one file\n").unwrap();

    let dead = format!(".tpcx.{}.7.tmp", dead_pid());
    let live = ".tpcx.1.7.tmp".to_string();
    let dst = s.path("dst");
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    let users: Vec<PathBuf> = [
        dst.join(&dead),
        dst.join(&live),
        dst.join("sub").join(&dead),
        dst.join("sub").join(&live),
    ]
    .into();
    for (i, f) in users.iter().enumerate() {
        std::fs::write(f, format!("user data {i}\n")).unwrap();
    }

    // A tree into the existing top directory and subdirectory, then one file into the
    // top directory (the copy of a single file cleans its parent).
    for from in [with_slash(&src), single.clone().into()] {
        let out = Command::new(binary())
            .args([OsStr::new("copy"), OsStr::new("-q"), &from, dst.as_os_str()])
            .output()
            .expect("binary runs");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for (i, f) in users.iter().enumerate() {
            let now = std::fs::read(f).map(|b| String::from_utf8_lossy(&b).into_owned());
            assert_eq!(
                now.as_deref().ok(),
                Some(format!("user data {i}\n").as_str()),
                "the copy of {from:?} deleted or changed the user's {}",
                f.display()
            );
        }
    }
    assert_eq!(std::fs::read(dst.join("sub/b")).unwrap(), b"b\n");
    assert_eq!(std::fs::read(dst.join("single")).unwrap(), b"one file\n");
}

/// Runs tpc-xfer with `args` on one portable shard under strace, each read of `src`
/// held a while, and rewrites `src` in place (same size and inode, every byte new) as
/// soon as its first chunk has been read (strace writes a held call's line before
/// holding it). Returns the run's output, whether the first chunk was seen read, and the
/// trace.
fn rewrite_after_first_chunk(
    s: &Scratch,
    src: &Path,
    old: &[u8],
    args: &[&OsStr],
) -> (Output, bool, String) {
    let log = s.path("read.trace");
    let hold = format!("inject=pread64,preadv,preadv2:delay_exit={}", HOLD_US / 3);
    // One shard reads the chunks one after another; the portable driver reads with
    // pread, which strace sees and can hold.
    let mut run = Traced::start(
        s,
        &[
            "-f",
            "-qq",
            "-y",
            "-o",
            log.to_str().unwrap(),
            "-e",
            "trace=pread64,preadv,preadv2",
            "-e",
            &hold,
        ],
        &[("TPC_XFER_IO", "portable")],
        args,
    );
    let marker = format!("<{}>", src.display());
    let seen = wait_while_running(&mut run, || {
        std::fs::read_to_string(&log).is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains(&marker) && l.contains(&format!("= {CHUNK_BYTES}")))
        })
    });
    if seen {
        let new: Vec<u8> = old.iter().map(|b| !b).collect();
        let f = std::fs::OpenOptions::new().write(true).open(src).unwrap();
        f.write_all_at(&new, 0).unwrap();
    }
    let out = run.wait();
    (out, seen, std::fs::read_to_string(&log).unwrap_or_default())
}

/// A source file rewritten in place (same size) while it is being read: the copy, held
/// after reading its first chunk, would otherwise commit the old first chunk with the new
/// rest, a file that never existed, and report success. It must either fail or end with
/// exactly what the source now holds.
#[test]
fn a_source_rewritten_during_its_copy_is_not_reported_as_copied() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("changing-source");
    let src = s.path("big");
    random_file(&src, 3 * CHUNK_BYTES, 1);
    let old = std::fs::read(&src).unwrap();
    let dst = s.path("out");
    let args = [
        OsStr::new("copy"),
        OsStr::new("-q"),
        OsStr::new("--cores"),
        OsStr::new("1"),
        src.as_os_str(),
        dst.as_os_str(),
    ];
    let (out, seen, trace) = rewrite_after_first_chunk(&s, &src, &old, &args);
    assert!(
        seen,
        "never saw the first chunk of the source read: {}\n{trace}",
        stderr(&out)
    );
    if code(&out) == 0 {
        let copied = std::fs::read(&dst).unwrap();
        let now = std::fs::read(&src).unwrap();
        assert_eq!(
            copied.len(),
            now.len(),
            "exit 0, but the copy's size differs"
        );
        // Which version each chunk of the copy holds.
        let chunks: Vec<&str> = copied
            .chunks(CHUNK_BYTES as usize)
            .zip(old.chunks(CHUNK_BYTES as usize))
            .zip(now.chunks(CHUNK_BYTES as usize))
            .map(|((c, o), n)| match (c == o, c == n) {
                (_, true) => "new",
                (true, false) => "old",
                _ => "neither",
            })
            .collect();
        assert!(
            copied == now,
            "exit 0, but the copy is not what the source holds: its chunks are {chunks:?}"
        );
    } else {
        assert!(
            stderr(&out).contains("big"),
            "the failure names the file: {}",
            stderr(&out)
        );
        // Nothing torn under the final name either.
        let copied = std::fs::read(&dst).ok();
        let now = std::fs::read(&src).unwrap();
        assert!(
            copied.is_none() || copied == Some(old) || copied == Some(now),
            "the failed copy left a mixture of old and new content at {}",
            dst.display()
        );
    }
}

/// Another run's temporary in the destination survives a copy for as long as that run
/// holds its lock, even when the copy runs in another PID namespace (where no pid of the
/// other run means anything), and is swept once the lock is free. The test plays the
/// other run: it holds `.tpcx.<token>.lock` in the destination root with flock, as a
/// run does (`tpc_engine::temp`).
#[test]
fn a_live_runs_temporary_survives_a_copy_from_another_pid_namespace() {
    let s = Scratch::new("live-temp");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/b"), b"b\n").unwrap();
    let dst = s.path("dst");
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    let token = tpc_core::temp::RunToken(0x5eed_0000_0000_0001);
    let name = |b: Vec<u8>| PathBuf::from(OsString::from_vec(b));
    let lock_path = dst.join(name(tpc_core::temp::lock_name(token)));
    let temp_path = dst
        .join("sub")
        .join(name(tpc_core::temp::temp_name(token, "f1")));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    std::fs::write(&temp_path, b"half a file\n").unwrap();

    // In a PID namespace of its own where one can be made (root), else as it is.
    let unshare = is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "true"])
            .status()
            .is_ok_and(|s| s.success());
    let copy = || {
        let mut cmd = if unshare {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork"]).arg(binary());
            c
        } else {
            Command::new(binary())
        };
        let out = cmd
            .args([OsStr::new("copy"), OsStr::new("-q")])
            .arg(with_slash(&src))
            .arg(&dst)
            .output()
            .expect("binary runs");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    };
    copy();
    assert_eq!(
        std::fs::read(&temp_path).ok().as_deref(),
        Some(&b"half a file\n"[..]),
        "a live run's temporary was removed"
    );
    assert!(lock_path.exists(), "a live run's lock was removed");

    // The other run ends without cleaning up (as if killed): the next copy sweeps both.
    drop(lock);
    copy();
    assert!(!temp_path.exists(), "a finished run's temporary stayed");
    assert!(!lock_path.exists(), "a finished run's lock stayed");
    assert_eq!(std::fs::read(dst.join("sub/b")).unwrap(), b"b\n");
}

/// The first lines of a run's stderr, for a message: a run that fails every file says
/// so thousands of times.
fn head(text: &str) -> String {
    const LINES: usize = 8;
    let total = text.lines().count();
    let mut out: String = text.lines().take(LINES).map(|l| format!("{l}\n")).collect();
    if total > LINES {
        out.push_str(&format!("... ({} more lines)\n", total - LINES));
    }
    out
}

/// A commit batch spanning more directories than the process may have open files: 1500
/// directories of one file each, one shard (so one batch), under an open-files limit of
/// 512 that the binary cannot raise (soft and hard). A commit that held every directory
/// of its batch open at once failed most files with EMFILE ("Too many open files").
#[test]
fn many_directories_in_one_commit_batch_do_not_run_out_of_file_descriptors() {
    const DIRS: usize = 1500;
    const LIMIT: &str = "--nofile=512:512";
    let prlimit = Command::new("prlimit")
        .args([LIMIT, "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !prlimit {
        eprintln!("skipped: needs prlimit (util-linux)");
        return;
    }
    let s = Scratch::new("many-dirs");
    let src = s.path("src");
    for i in 0..DIRS {
        let d = src.join(format!("d{i:04}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("file {i}\n")).unwrap();
    }
    let dst = s.path("dst");
    let mut cmd = Command::new("prlimit");
    cmd.args([LIMIT, "--"])
        .arg(binary())
        .args(["copy", "-q", "--cores", "1"])
        .arg(with_slash(&src))
        .arg(&dst);
    let out = Traced::spawn(&s, cmd).wait();
    assert_eq!(
        code(&out),
        0,
        "{DIRS} directories under {LIMIT}: {}",
        head(&stderr(&out))
    );
    let missing: Vec<String> = (0..DIRS)
        .map(|i| format!("d{i:04}/f"))
        .enumerate()
        .filter(|(i, rel)| {
            std::fs::read(dst.join(rel)).ok() != Some(format!("file {i}\n").into_bytes())
        })
        .map(|(_, rel)| rel)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {DIRS} files not copied, the first {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new(), "temporaries left");
}

/// `setpriv` arguments that run a command as nobody.
const AS_NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/// Whether this test can run the copy as nobody. Permission cases need a user the kernel
/// checks (root passes every check), and becoming one needs root, as CI runs. Makes the
/// scratch directory (root's) one nobody can pass through; if not, says the test is
/// skipped.
fn can_run_as_nobody(s: &Scratch) -> bool {
    if !is_root() {
        eprintln!("skipped: running the copy as nobody needs root (CI runs as root)");
        return false;
    }
    chmod(&s.0, 0o755);
    let ok = Command::new("setpriv")
        .args(AS_NOBODY)
        .arg("test")
        .arg("-x")
        .arg(&s.0)
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        eprintln!(
            "skipped: needs setpriv (util-linux), user nobody and group nogroup, and a \
             scratch directory nobody can reach"
        );
    }
    ok
}

/// `chown -R nobody:nogroup path`.
fn give_to_nobody(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown -R nobody:nogroup {}", path.display());
}

/// `tpc-xfer copy -q ARGS` run as nobody in `s`.
fn copy_as_nobody(s: &Scratch, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(AS_NOBODY)
        .arg(binary())
        .args(["copy", "-q"])
        .args(args);
    Traced::spawn(s, cmd).wait()
}

/// Names in `dir` (not below), sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One file out of a directory nobody may search but not list (root's, mode 0711): the
/// file's own parent is the source root, which needs only search permission to copy
/// from. A root opened for reading failed the copy.
#[test]
fn a_file_in_an_execute_only_source_directory_is_copied() {
    let s = Scratch::new("exec-only-src");
    if !can_run_as_nobody(&s) {
        return;
    }
    let sealed = s.path("sealed");
    std::fs::create_dir(&sealed).unwrap();
    std::fs::write(sealed.join("f"), b"readable in a sealed directory\n").unwrap();
    chmod(&sealed.join("f"), 0o644);
    chmod(&sealed, 0o711);
    let out_dir = s.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    give_to_nobody(&out_dir);

    let out = copy_as_nobody(
        &s,
        &[
            sealed.join("f").as_os_str(),
            with_slash(&out_dir).as_os_str(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(out_dir.join("f")).unwrap(),
        b"readable in a sealed directory\n"
    );
    assert_eq!(names_in(&out_dir), ["f"], "only the file is left in out/");
}

/// A drop-box: root's directory of mode 1733, which nobody may write into but not list.
/// Returns it, and the file `f` (nobody's) to drop into it.
fn drop_box(s: &Scratch) -> (PathBuf, PathBuf) {
    let file = s.path("f");
    std::fs::write(&file, b"dropped\n").unwrap();
    chmod(&file, 0o644);
    give_to_nobody(&file);
    let dropbox = s.path("dropbox");
    std::fs::create_dir(&dropbox).unwrap();
    chmod(&dropbox, 0o1733);
    (dropbox, file)
}

/// `copy f dropbox/` as nobody: the drop-box is the destination root, held with search
/// permission only. A root opened for reading failed the copy.
#[test]
fn a_file_is_copied_into_a_drop_box_directory() {
    let s = Scratch::new("drop-box-dir");
    if !can_run_as_nobody(&s) {
        return;
    }
    let (dropbox, file) = drop_box(&s);
    let out = copy_as_nobody(&s, &[file.as_os_str(), with_slash(&dropbox).as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(dropbox.join("f")).unwrap(), b"dropped\n");
    assert_eq!(
        names_in(&dropbox),
        ["f"],
        "only the file is left in the drop-box"
    );
    assert_eq!(format!("{:o}", mode_of(&dropbox)), "1733");
}

/// `copy f dropbox/name` as nobody: a new name in a drop-box, the same root as above.
#[test]
fn a_file_is_copied_to_a_new_name_in_a_drop_box_directory() {
    let s = Scratch::new("drop-box-name");
    if !can_run_as_nobody(&s) {
        return;
    }
    let (dropbox, file) = drop_box(&s);
    let out = copy_as_nobody(&s, &[file.as_os_str(), dropbox.join("name").as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(dropbox.join("name")).unwrap(), b"dropped\n");
    assert_eq!(
        names_in(&dropbox),
        ["name"],
        "only the file is left in the drop-box"
    );
    assert_eq!(format!("{:o}", mode_of(&dropbox)), "1733");
}

/// A directory that already exists in the destination with mode 0300 (its owner, who
/// runs the copy, may write and search it but not list it) is copied into: the copy
/// unlocks it for the run and gives it the source's mode at the end.
#[test]
fn an_existing_write_only_destination_directory_is_copied_into() {
    let s = Scratch::new("write-only-dir");
    if !can_run_as_nobody(&s) {
        return;
    }
    let src = s.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"into a write-only directory\n").unwrap();
    chmod(&src.join("d"), 0o755);
    let dst = s.path("dst");
    std::fs::create_dir_all(dst.join("d")).unwrap();
    give_to_nobody(&src);
    give_to_nobody(&dst);
    chmod(&dst.join("d"), 0o300);

    let out = copy_as_nobody(&s, &[with_slash(&src).as_os_str(), dst.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dst.join("d/f")).unwrap(),
        b"into a write-only directory\n"
    );
    assert_eq!(format!("{:o}", mode_of(&dst.join("d"))), "755");
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new(), "temporaries left");
}

/// `copy src/ dst` as nobody, where src has mode 0555: dst, the destination root, ends
/// read-only too. The run's lock in it must be gone before that mode is set; after, the
/// run cannot remove it.
#[test]
fn a_read_only_source_root_leaves_no_run_lock_in_the_destination() {
    let s = Scratch::new("read-only-root");
    if !can_run_as_nobody(&s) {
        return;
    }
    let src = s.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"in a read-only root\n").unwrap();
    let dst = s.path("dst");
    std::fs::create_dir(&dst).unwrap();
    give_to_nobody(&src);
    give_to_nobody(&dst);
    chmod(&src, 0o555);

    let out = copy_as_nobody(&s, &[with_slash(&src).as_os_str(), dst.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dst.join("f")).unwrap(),
        b"in a read-only root\n"
    );
    let ours: Vec<String> = names_in(&dst)
        .into_iter()
        .filter(|n| n.starts_with(".tpcx."))
        .collect();
    assert_eq!(ours, Vec::<String>::new(), "left in the destination root");
    assert_eq!(format!("{:o}", mode_of(&dst)), "555");
}

/// A bind mount for one test (root only), unmounted when dropped.
struct BindMount(PathBuf);

impl BindMount {
    /// `mount --bind from at`; None if this machine does not allow it.
    fn new(from: &Path, at: &Path) -> Option<BindMount> {
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| BindMount(at.to_path_buf()))
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A live run's temporary in R/sub survives a copy into the same directory reached
/// through a bind mount of R/sub: that copy cannot see R, so finds no lock for the run,
/// which is not the same as finding its lock free. The test plays the live run, as
/// `a_live_runs_temporary_survives_a_copy_from_another_pid_namespace` does.
#[test]
fn a_live_runs_temporary_survives_a_copy_through_a_bind_mount() {
    if !is_root() {
        eprintln!("skipped: a bind mount needs root (CI runs as root)");
        return;
    }
    let s = Scratch::new("bind-temp");
    let src = s.path("src");
    std::fs::create_dir_all(src.join("deeper")).unwrap();
    std::fs::write(src.join("a"), b"a\n").unwrap();
    std::fs::write(src.join("deeper/b"), b"b\n").unwrap();
    let r = s.path("r");
    std::fs::create_dir_all(r.join("sub")).unwrap();
    let token = tpc_core::temp::RunToken(0x5eed_0000_0000_0002);
    let name = |b: Vec<u8>| PathBuf::from(OsString::from_vec(b));
    let lock = std::fs::File::create(r.join(name(tpc_core::temp::lock_name(token)))).unwrap();
    lock.lock().unwrap();
    // The lock as builds before 2ede728 named it (no check), held too: such a build
    // run against this test fails for the bind mount, not for the name.
    let old_lock = std::fs::File::create(r.join(format!(".tpcx.{token}.lock"))).unwrap();
    old_lock.lock().unwrap();
    let temp_path = r
        .join("sub")
        .join(name(tpc_core::temp::temp_name(token, "f1")));
    std::fs::write(&temp_path, b"half a file\n").unwrap();

    let y = s.path("y");
    std::fs::create_dir(&y).unwrap();
    let Some(_bind) = BindMount::new(&r.join("sub"), &y) else {
        eprintln!("skipped: mount --bind is not allowed here");
        return;
    };
    let mut cmd = Command::new(binary());
    cmd.args(["copy", "-q"])
        .arg(with_slash(&src))
        .arg(with_slash(&y));
    let out = Traced::spawn(&s, cmd).wait();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&temp_path).ok().as_deref(),
        Some(&b"half a file\n"[..]),
        "a live run's temporary was removed by a copy through a bind mount"
    );
    assert_eq!(std::fs::read(y.join("a")).unwrap(), b"a\n");
    assert_eq!(std::fs::read(r.join("sub/deeper/b")).unwrap(), b"b\n");
}

/// A drop-box destination gets `--fsync batch` durability too: the drop-box cannot be
/// opened to sync its filesystem through, so the batch syncs it through the file's
/// temporary, before the rename. The portable driver makes every sync a syscall strace
/// sees.
#[test]
fn a_file_copied_into_a_drop_box_is_synced_before_its_rename() {
    let s = Scratch::new("drop-box-sync");
    if !can_run_as_nobody(&s) || !strace_works() {
        return;
    }
    let (dropbox, file) = drop_box(&s);
    let log = s.path("sync.trace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=sync,syncfs,fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg("setpriv")
        .args(AS_NOBODY)
        .arg(binary())
        .args(["copy", "-q"])
        .arg(&file)
        .arg(with_slash(&dropbox))
        .env("TPC_XFER_IO", "portable");
    let out = Traced::spawn(&s, cmd).wait();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(dropbox.join("f")).unwrap(), b"dropped\n");

    let text = std::fs::read_to_string(&log).unwrap();
    let calls = calls(&text);
    let target = dropbox.join("f");
    let Some(at) = calls
        .iter()
        .position(|c| rename_paths(c, &s.0).is_some_and(|(_, to)| to == target))
    else {
        panic!("no rename into the drop-box; the trace:\n{text}");
    };
    let (from, _) = rename_paths(&calls[at], &s.0).unwrap();
    // The scratch directory is one filesystem: a syncfs through anything in it covers
    // the drop-box.
    let covered = calls[..at].iter().any(|c| {
        c.result.starts_with('0')
            && match c.name.as_str() {
                "sync" => true,
                "syncfs" => fd_path(&c.args[0]).is_some_and(|p| p.starts_with(&s.0)),
                "fsync" | "fdatasync" => {
                    fd_path(&c.args[0]).is_some_and(|p| p == from || p == target)
                }
                _ => false,
            }
    });
    assert!(
        covered,
        "the file was renamed into the drop-box before anything synced it; the trace:\n{text}"
    );
}

/// Issue 25, finding 8, for a push: a source rewritten in place (same size) while the
/// client reads it was pushed as a mix of two versions and reported as success. Held
/// by strace after its first chunk is read (portable driver: pread), the file is
/// rewritten; the push must fail that file, or the server must hold exactly what the
/// source now holds.
#[test]
fn a_source_rewritten_during_its_push_is_not_committed_torn() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("changing-push-source");
    let src = s.path("big");
    random_file(&src, 3 * CHUNK_BYTES, 2);
    let old = std::fs::read(&src).unwrap();
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    let server = Server::start(&root, &ss);
    // First contact, so that the traced push needs no prompt.
    std::fs::write(s.path("hello"), b"hi").unwrap();
    let out = copy(&cs, s.path("hello"), server.url("hello"), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let url = server.url("big");
    let args = [
        OsStr::new("copy"),
        OsStr::new("-q"),
        OsStr::new("--cores"),
        OsStr::new("1"),
        OsStr::new("--state"),
        cs.as_os_str(),
        src.as_os_str(),
        OsStr::new(&url),
    ];
    let (out, seen, trace) = rewrite_after_first_chunk(&s, &src, &old, &args);
    assert!(
        seen,
        "never saw the first chunk of the source read: {}\n{trace}",
        stderr(&out)
    );
    let pushed = std::fs::read(root.join("big")).ok();
    let now = std::fs::read(&src).unwrap();
    if code(&out) == 0 {
        assert!(
            pushed.as_ref() == Some(&now),
            "exit 0, but the server does not hold what the source holds"
        );
    } else {
        assert!(
            pushed.is_none(),
            "the failed push left a file under its name: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("big"), "{}", stderr(&out));
    }
}

/// Issue 25, finding 8, for a pull: a file on the server rewritten in place (same size)
/// while the server reads it for a pulling client. Held by strace after the server has
/// read its first chunk (portable driver: pread), the file is rewritten; the pull must
/// fail that file, or the client must hold exactly what the server's file now holds.
#[test]
fn a_source_rewritten_on_the_server_during_its_pull_is_not_committed_torn() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("changing-pull-source");
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let src = root.join("big");
    random_file(&src, 3 * CHUNK_BYTES, 3);
    let old = std::fs::read(&src).unwrap();
    std::fs::write(root.join("hello"), b"hi").unwrap();
    let server = Server::start_with(
        None,
        &root,
        &ss,
        "127.0.0.1:0",
        &["--io", "portable", "--cores", "1"],
    );
    // First contact, so that the traced pull needs no prompt.
    let out = copy(&cs, server.url("hello"), s.path("hello"), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let log = s.path("read.trace");
    let hold = format!("inject=pread64,preadv,preadv2:delay_exit={}", HOLD_US / 3);
    let trace = ["-y", "-o", log.to_str().unwrap()];
    let calls = ["-e", "trace=pread64,preadv,preadv2", "-e", &hold];
    let Some(strace) = strace_attached(server.child.id(), &[&trace[..], &calls[..]].concat())
    else {
        return;
    };
    let dst = s.path("dst");
    let pull = std::thread::spawn({
        let (cs, url, dst) = (cs.clone(), server.url("big"), dst.clone());
        move || copy(&cs, url, &dst, &["--cores", "1"])
    });
    let marker = format!("<{}>", src.display());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let first_read = || {
        std::fs::read_to_string(&log).is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains(&marker) && l.contains(&format!("= {CHUNK_BYTES}")))
        })
    };
    let mut seen = false;
    while Instant::now() < deadline && !pull.is_finished() {
        if first_read() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if seen {
        let new: Vec<u8> = old.iter().map(|b| !b).collect();
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&new, 0).unwrap();
    }
    let out = pull.join().unwrap();
    drop(strace);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen,
        "never saw the first chunk of the file read: {}\n{text}",
        stderr(&out)
    );
    let pulled = std::fs::read(&dst).ok();
    let now = std::fs::read(&src).unwrap();
    if code(&out) == 0 {
        assert!(
            pulled.as_ref() == Some(&now),
            "exit 0, but the client does not hold what the server's file holds"
        );
    } else {
        assert_eq!(code(&out), 3, "{}", stderr(&out));
        assert!(
            pulled.is_none(),
            "the failed pull left a file under its name: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("dst: changed on the server"),
            "{}",
            stderr(&out)
        );
    }
}

/// A source tree of `d` holding 20 files and `keep` (named like the outside directory's
/// private file), and a private outside directory holding `keep`.
fn swap_scene(s: &Scratch) -> (PathBuf, PathBuf) {
    let src = s.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("d/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(src.join("d/keep"), b"from the source\n").unwrap();
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"private\n").unwrap();
    chmod(&outside.join("keep"), 0o600);
    chmod(&outside, 0o700);
    (src, outside)
}

/// Once `made` appears (and while `running`), moves it to `d.moved` beside it and puts
/// a symlink to `outside` in its place. Whether it did.
fn swap_when_made(made: &Path, outside: &Path, mut running: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while Instant::now() < deadline && running() {
        if made.is_dir() {
            std::fs::rename(made, made.with_file_name("d.moved")).unwrap();
            std::os::unix::fs::symlink(outside, made).unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Nothing was written through the swapped-in link, and success (exit 0) means the
/// files are in the directory the transfer made.
fn assert_not_followed(out: &Output, outside: &Path, before: &[Listed], made: &Path) {
    assert_eq!(
        list(outside),
        before,
        "written through the symlink into the outside directory (exit {}): {}",
        code(out),
        stderr(out)
    );
    assert_eq!(format!("{:o}", mode_of(outside)), "700");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"private\n");
    if code(out) != 0 {
        assert_eq!(code(out), 4, "{}", stderr(out));
        assert!(
            stderr(out).contains("is or goes through a symlink, which is never followed"),
            "{}",
            stderr(out)
        );
    } else {
        for i in 0..20 {
            assert_eq!(
                std::fs::read(made.with_file_name("d.moved").join(format!("f{i:02}"))).ok(),
                Some(format!("file {i}\n").into_bytes()),
                "exit 0, but f{i:02} is not in the directory the transfer made"
            );
        }
    }
}

/// As `a_destination_directory_swapped_for_a_symlink_mid_copy_…`, in a push: the
/// server, held by strace after it makes `d` beneath its root, finds `d` swapped for a
/// symlink to a directory outside the root.
#[test]
fn a_server_directory_swapped_for_a_symlink_mid_push_is_not_followed() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("swap-dir-push");
    let (src, outside) = swap_scene(&s);
    let before = list(&outside);
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    let server = Server::start_with(None, &root, &ss, "127.0.0.1:0", &["--io", "portable"]);
    std::fs::write(s.path("hello"), b"hi").unwrap();
    let out = copy(&cs, s.path("hello"), server.url("hello"), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let hold = format!("inject=mkdir,mkdirat:delay_exit={HOLD_US}");
    let trace = ["-e", "trace=mkdir,mkdirat", "-e", &hold];
    let Some(strace) = strace_attached(server.child.id(), &trace) else {
        return;
    };
    let push = std::thread::spawn({
        let (cs, src, url) = (cs.clone(), with_slash(&src), server.url("t/"));
        move || copy(&cs, src, url, &[])
    });
    let made = root.join("t/d");
    let seen = swap_when_made(&made, &outside, || !push.is_finished());
    let out = push.join().unwrap();
    drop(strace);
    assert!(seen, "t/d never appeared at the server: {}", stderr(&out));
    assert_not_followed(&out, &outside, &before, &made);
}

/// The same in a pull: the client, held after it makes `d` in its destination, finds it
/// swapped for a symlink to a directory outside.
#[test]
fn a_client_directory_swapped_for_a_symlink_mid_pull_is_not_followed() {
    if !strace_works() {
        return;
    }
    let s = Scratch::new("swap-dir-pull");
    let (cs, ss) = keys(&s);
    let root = s.path("root");
    std::fs::create_dir(&root).unwrap();
    let (src, outside) = swap_scene(&s);
    std::fs::rename(&src, root.join("src")).unwrap();
    let before = list(&outside);
    let server = Server::start(&root, &ss);
    std::fs::write(root.join("hello"), b"hi").unwrap();
    let out = copy(&cs, server.url("hello"), s.path("hello"), &["--accept-new"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let dst = s.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let strace = hold_after_mkdir();
    let url = server.url("src/");
    let mut run = Traced::start(
        &s,
        &str_args(&strace),
        &[],
        &[
            OsStr::new("copy"),
            OsStr::new("-q"),
            OsStr::new("--state"),
            cs.as_os_str(),
            OsStr::new(&url),
            dst.as_os_str(),
        ],
    );
    let made = dst.join("d");
    let seen = swap_when_made(&made, &outside, || run.running());
    let out = run.wait();
    assert!(seen, "dst/d never appeared at the client: {}", stderr(&out));
    assert_not_followed(&out, &outside, &before, &made);
}
