//! Helpers for the end-to-end tests: scratch directories, running the real binary,
//! building trees with exact metadata, and comparing trees independently of `check`.

#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tpc-xfer")
}

/// A scratch directory removed when dropped (after making read-only dirs writable again).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var_os("TPC_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("tpc-xfer-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &[&OsStr]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn tpc<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run(&args)
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `--json` summary on stdout. When the suite runs on a chosen driver
/// (`TPC_XFER_IO`), it also checks the binary really ran on it.
pub fn json(out: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad json ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    });
    if let (Ok(want), Some(ran)) = (std::env::var("TPC_XFER_IO"), v["io"].as_str()) {
        if want != "auto" {
            assert_eq!(ran, want, "the suite asked for --io {want}");
        }
    }
    v
}

/// Deterministic pseudo-random bytes (BLAKE3 XOF of a seed): fast, and incompressible.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 22];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// `path/`: the form that makes `copy` take a directory's contents (rsync's rule).
pub fn with_slash(path: &Path) -> std::ffi::OsString {
    let mut s = path.as_os_str().to_owned();
    s.push("/");
    s
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {path:?}");
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Asserts two trees are identical: our own `check`, `diff -r --no-dereference`, and a
/// direct walk comparing type, mode, mtime (ns), size and link target.
pub fn assert_identical(a: &Path, b: &Path) {
    let out = tpc(&[OsStr::new("check"), a.as_os_str(), b.as_os_str()]);
    assert_eq!(
        code(&out),
        0,
        "check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert_same_bytes(a, b);
    let ea = list(a);
    let eb = list(b);
    assert_eq!(ea.len(), eb.len(), "entry counts");
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(x, y);
    }
}

/// The two trees' files hold the same bytes and their symlinks the same targets
/// (`diff -r`, never following a link).
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

/// (relative path, kind, mode, mtime s, mtime ns, size, link target) of one entry.
pub type Listed = (PathBuf, char, u32, i64, i64, u64, Option<PathBuf>);

/// Every entry under `root`, sorted by path.
pub fn list(root: &Path) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        // Entries may vanish while a live server works in the tree (temporaries renamed).
        let md = match std::fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", p.display()),
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            's'
        };
        let target = if ft.is_symlink() {
            Some(std::fs::read_link(&p).unwrap())
        } else {
            None
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        let size = if ft.is_file() { md.size() } else { 0 };
        out.push((
            rel.clone(),
            kind,
            mode,
            md.mtime(),
            md.mtime_nsec(),
            size,
            target,
        ));
        if ft.is_dir() {
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            for e in entries.map_while(Result::ok) {
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    out.sort();
    out
}

/// Files whose name marks them as tpc-xfer temporaries, anywhere under `root`. A
/// serving process's run lock (`tpc_core::temp::lock_name`) is not one: it stays while
/// the server runs.
pub fn temporaries(root: &Path) -> Vec<PathBuf> {
    list(root)
        .into_iter()
        .filter(|e| {
            e.0.file_name().is_some_and(|n| {
                n.as_bytes().starts_with(b".tpcx.")
                    && !matches!(
                        tpc_core::temp::parse(n.as_bytes()),
                        Some(tpc_core::temp::Ours::Lock(_))
                    )
            })
        })
        .map(|e| e.0)
        .collect()
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Bytes of one chunk (tpc_core::limits::CHUNK_SIZE_BYTES).
pub const CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// A tmpfs mounted for one test (root only) and unmounted when dropped: a destination
/// that can be made full or read-only.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: PathBuf, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs (tests run as root in CI)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether this test may mount a tmpfs (root, as CI runs); if not, says it is skipped.
pub fn can_mount_tmpfs() -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
    }
    root
}

/// A source directory `src` for the full-destination tests: `small` (4 bytes) fits a
/// 2 MiB tmpfs, `large` (8 MiB) does not.
pub fn too_large_source(src: &Path) {
    std::fs::create_dir(src).unwrap();
    std::fs::write(src.join("small"), b"fits").unwrap();
    random_file(&src.join("large"), 8 << 20, 1);
}

/// What a copy of `too_large_source` into a 2 MiB tmpfs at `root` must show: exit 5 with
/// a "No space left" line naming `large`; `src/small` in place; neither a partial
/// `src/large` nor a temporary file.
pub fn assert_full_destination(out: &Output, root: &Path) {
    assert_eq!(code(out), 5, "{}", stderr(out));
    let err = stderr(out);
    assert!(
        err.contains("large") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(std::fs::read(root.join("src/small")).unwrap(), b"fits");
    assert!(
        !root.join("src/large").exists(),
        "no partial file under the final name"
    );
    assert!(temporaries(root).is_empty());
}

/// Builds the edge-case tree of issue 2 under `root`.
pub fn edge_case_tree(root: &Path, big_bytes: u64, small_files: usize) {
    std::fs::create_dir_all(root).unwrap();
    let f = |rel: &str, data: &[u8]| std::fs::write(root.join(rel), data).unwrap();
    f("empty", b"");
    f("another empty", b"");
    random_file(&root.join("one-chunk"), CHUNK_BYTES, 1);
    random_file(&root.join("one-chunk-plus-one"), CHUNK_BYTES + 1, 2);
    random_file(&root.join("big.bin"), big_bytes, 3);
    // Many small files in 100 directories.
    for i in 0..small_files {
        let dir = root.join(format!("small/d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("small file {i}\n").repeat(i % 7 + 1),
        )
        .unwrap();
    }
    // 100 levels of nesting.
    let mut deep = root.join("deep");
    for i in 0..100 {
        deep = deep.join(format!("l{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom"), b"at the bottom").unwrap();
    // Awkward names.
    f("name with spaces", b"spaces");
    f("new\nline", b"newline");
    f("ünïcødé-名前-🦀", b"unicode");
    f("-leading-dash", b"dash");
    f("--double-dash", b"dash dash");
    // Names that are only bytes to the kernel, each its own file (docs/HARDENING.md):
    // NFC and NFD forms of the same word, a backslash, an overlong-UTF-8 look-alike of
    // `..`, and an escape character.
    f("caf\u{e9}", b"nfc");
    f("cafe\u{301}", b"nfd");
    f("back\\slash", b"backslash");
    let raw = |name: &[u8], data: &[u8]| {
        std::fs::write(root.join(OsStr::from_bytes(name)), data).unwrap()
    };
    raw(b"\xc0\xae\xc0\xae", b"overlong dot dot");
    raw(b"esc-\x1b[2J", b"escape");
    // Symlinks: absolute, relative, dangling, and to a directory.
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("name with spaces", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling-link")).unwrap();
    std::os::unix::fs::symlink("deep", root.join("dir-link")).unwrap();
    // Empty directories.
    std::fs::create_dir_all(root.join("empty-dir/nested-empty")).unwrap();
    // Modes.
    f("mode-0600", b"6");
    chmod(&root.join("mode-0600"), 0o600);
    f("mode-0755", b"7");
    chmod(&root.join("mode-0755"), 0o755);
    std::fs::create_dir(root.join("dir-0700")).unwrap();
    f("dir-0700/inside", b"x");
    chmod(&root.join("dir-0700"), 0o700);
    // Mtimes in 1970 and with nanoseconds.
    f("epoch", b"1970");
    set_mtime(&root.join("epoch"), 1, 0);
    f("nanos", b"ns");
    set_mtime(&root.join("nanos"), 1_700_000_000, 123_456_789);
    set_mtime(&root.join("rel-link"), 86_400, 999_999_999);
    // A read-only directory with files inside, mtime set last.
    std::fs::create_dir(root.join("read-only")).unwrap();
    f("read-only/a", b"a");
    f("read-only/b", b"b");
    chmod(&root.join("read-only"), 0o555);
    set_mtime(&root.join("read-only"), 12_345, 678);
    set_mtime(&root.join("empty-dir"), 0, 1);
}

/// A real `tpc-xfer serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// The address it listens on, as a client writes it in a URL.
    pub host: String,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

/// `tpc-xfer` itself, or run inside network namespace `netns` (`ip netns exec`, which
/// execs it: the child is the tpc-xfer process).
pub fn command_in(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin()]);
            c
        }
        None => Command::new(bin()),
    }
}

impl Server {
    /// On 127.0.0.1 with ephemeral ports.
    pub fn start(root: &Path, state: &Path) -> Server {
        Server::start_on(root, state, "127.0.0.1:0")
    }

    /// Listening on `listen`.
    pub fn start_on(root: &Path, state: &Path, listen: &str) -> Server {
        Server::start_in(None, root, state, listen)
    }

    /// Listening on `listen` with `cores` shards (ports `PORT .. PORT + cores`).
    pub fn start_on_cores(root: &Path, state: &Path, listen: &str, cores: usize) -> Server {
        Server::start_with(None, root, state, listen, &["--cores", &cores.to_string()])
    }

    /// Listening on `listen` (an IPv4 address and port), inside `netns` if given.
    pub fn start_in(netns: Option<&str>, root: &Path, state: &Path, listen: &str) -> Server {
        Server::start_with(netns, root, state, listen, &[])
    }

    pub fn start_with(
        netns: Option<&str>,
        root: &Path,
        state: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Server {
        std::fs::create_dir_all(root).unwrap();
        let mut child = command_in(netns)
            .args(["serve", "--listen", listen])
            .args(extra)
            .arg("--root")
            .arg(root)
            .arg("--state")
            .arg(state)
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        // The first line names the address: "... on HOST:PORT (N shards, ...".
        let mut line = String::new();
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        reader.read_line(&mut line).unwrap();
        // The rest of the server's log is collected for the tests to read.
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        assert!(line.contains("serving"), "server did not start: {line}");
        let host = listen.rsplit_once(':').expect("HOST:PORT").0.to_string();
        let port = line
            .split(&format!("{host}:"))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server {
            child,
            host,
            port,
            log,
        }
    }

    /// What the server has written to stderr since its first line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("tpc://{}:{}/{path}", self.host, self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client and server state directories, the client authorized by the server.
pub fn keys(s: &Scratch) -> (PathBuf, PathBuf) {
    let (cs, ss) = (s.path("client-state"), s.path("server-state"));
    let out = tpc(&[os("id"), os("--state"), cs.as_os_str().into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::create_dir_all(&ss).unwrap();
    chmod(&ss, 0o700);
    std::fs::write(ss.join("authorized-clients"), &out.stdout).unwrap();
    (cs, ss)
}

/// A second client's state directory (`name` beneath `s`), authorized by the server
/// state `ss` beside the first.
pub fn another_client(s: &Scratch, ss: &Path, name: &str) -> PathBuf {
    let state = s.path(name);
    let out = tpc(&[os("id"), os("--state"), state.clone().into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ss.join("authorized-clients"))
        .unwrap();
    f.write_all(&out.stdout).unwrap();
    state
}

pub fn os(s: &str) -> std::ffi::OsString {
    s.into()
}

pub fn copy(
    state: &Path,
    from: impl AsRef<std::ffi::OsStr>,
    to: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
) -> std::process::Output {
    copy_in(None, state, from, to, extra)
}

/// `tpc-xfer copy -q EXTRA --state STATE FROM TO`, inside `netns` if given.
pub fn copy_in(
    netns: Option<&str>,
    state: &Path,
    from: impl AsRef<std::ffi::OsStr>,
    to: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
) -> std::process::Output {
    command_in(netns)
        .args(["copy", "-q"])
        .args(extra)
        .arg("--state")
        .arg(state)
        .arg(from)
        .arg(to)
        .output()
        .expect("tpc-xfer runs")
}

/// `size` bytes of log-like text: it compresses well, but is not one repeated line.
pub fn text_file(path: &Path, size: usize) {
    let mut out = String::with_capacity(size + 100);
    let mut i = 0u64;
    while out.len() < size {
        out.push_str(&format!(
            "{} host-{} chunk {} verified in {} us\n",
            1_763_700_000 + i,
            i % 17,
            i * 7919 % 100_000,
            i * 104_729 % 5000
        ));
        i += 1;
    }
    out.truncate(size);
    std::fs::write(path, out).unwrap();
}

/// Pushes the tree `src` from `netns` to `server` as `tree` (accepting the server's key on
/// first use), checks it arrived identical under `root`, pulls it back into `back` and
/// checks that copy too, with `tpc-xfer check` as well. Returns the push's `--json`
/// summary.
pub fn push_and_pull_back(
    netns: Option<&str>,
    state: &Path,
    src: &Path,
    server: &Server,
    root: &Path,
    back: &Path,
) -> serde_json::Value {
    let out = copy_in(
        netns,
        state,
        with_slash(src),
        server.url("tree"),
        &["--accept-new", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(src, &root.join("tree"));
    let summary = json(&out);
    let out = copy_in(netns, state, server.url("tree/"), back, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(src, back);
    let out = tpc(&[os("check"), src.into(), back.into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    summary
}

/// The driver in-process test shards run on: the one the suite was asked for with
/// `TPC_XFER_IO` (which the binary reads too), else io_uring where it is built in. A
/// suite meant for io_uring fails where io_uring cannot run, rather than quietly
/// testing the other driver.
pub fn test_driver() -> tpc_engine::Driver {
    use tpc_engine::rt::{select, IoChoice};
    let choice = match std::env::var("TPC_XFER_IO").as_deref() {
        Ok("portable") => IoChoice::Portable,
        Ok("auto") => IoChoice::Auto,
        _ if cfg!(all(feature = "uring", target_os = "linux")) => IoChoice::Uring,
        _ => IoChoice::Portable,
    };
    select(choice).expect("the suite's driver runs here").0
}

/// Runs `body` as a shard of the suite's driver on a new thread.
pub fn spawn_shard<R, F, Fut>(body: F) -> std::thread::JoinHandle<R>
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R>,
{
    let driver = test_driver();
    std::thread::spawn(move || {
        tpc_engine::rt::run_here(driver, None, body()).expect("test shard starts")
    })
}

/// Whether strace runs here and can delay a syscall; if not, says the test is skipped.
/// (A container without ptrace has strace but cannot use it: that is a skip too.)
pub fn strace_works() -> bool {
    let ok = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=getpid"])
        .args(["-e", "inject=getpid:delay_exit=1", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: needs a working strace with syscall delay injection");
    }
    ok
}

/// strace attached to the running process `pid` with `args` (its trace and inject
/// options), stopped when dropped.
pub struct Attached(Child);

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attaches strace to every thread of `pid` (a server the test started) with `args`;
/// `None`, saying the test is skipped, where strace cannot delay or inject, or cannot
/// attach to a process it did not start (Yama's ptrace_scope 1 without CAP_SYS_PTRACE;
/// CI runs as root).
pub fn strace_attached(pid: u32, args: &[&str]) -> Option<Attached> {
    if !strace_works() {
        return None;
    }
    let mut child = Command::new("strace")
        .args(["-f", "-o", "/dev/null"])
        .args(args)
        .arg("-p")
        .arg(pid.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // strace says "Process N attached" for each of the threads.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let attached = Attached(child);
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    if !first.contains("attached") {
        eprintln!("skipped: strace cannot attach to the server: {first}");
        return None;
    }
    std::thread::spawn(move || lines.for_each(drop));
    // The rest of the threads.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some(attached)
}

/// What a hostile peer puts in a message: a new line that would pass for one of
/// tpc-xfer's own, and a terminal escape that clears the screen.
pub const FORGED: &str = "it broke\n\x1b[2Jtpc-xfer: all files copied";

/// Asserts that `text` (a client's stderr, a server's log) shows a peer's [`FORGED`]
/// message only escaped: no raw escape character, no line of the peer's making.
pub fn assert_forgery_escaped(text: &str, what: &str) {
    assert!(
        !text.contains('\x1b'),
        "{what}: a raw escape reached: {text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tpc-xfer: all files copied")),
        "{what}: a forged line reached: {text}"
    );
}

/// Makes `depth` directories named `d`, each inside the one before, beneath `dir`, with a
/// file `leaf` at the bottom. Each is made relative to the one above it (mkdirat), since
/// the whole path soon outgrows PATH_MAX.
pub fn deep_tree(dir: &Path, depth: usize) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let open = |at: i32, name: &std::ffi::CStr| {
        // SAFETY: a valid directory fd or AT_FDCWD, and a NUL-terminated name.
        let fd = unsafe { libc::openat(at, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0, "openat: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let top = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut at = open(libc::AT_FDCWD, &top);
    for _ in 0..depth {
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::mkdirat(at.as_raw_fd(), c"d".as_ptr(), 0o755) },
            0
        );
        at = open(at.as_raw_fd(), c"d");
    }
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(
            at.as_raw_fd(),
            c"leaf".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o644,
        )
    };
    assert!(fd >= 0, "leaf: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// How many directories named `d` nest beneath `dir` (see `deep_tree`).
pub fn depth_of(dir: &Path) -> usize {
    let mut at = std::fs::File::open(dir).unwrap();
    let mut depth = 0;
    loop {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a valid directory fd and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                at.as_raw_fd(),
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
        };
        if fd < 0 {
            return depth;
        }
        // SAFETY: a fresh fd that nothing else owns.
        at = unsafe { std::fs::File::from_raw_fd(fd) };
        depth += 1;
    }
}

/// `strace … tpc-xfer`, failing its first call of `syscall` with `errno` (on `path` only,
/// if given); the caller adds the command and its arguments, `--io portable` among them
/// (the portable driver's file I/O is what strace sees).
pub fn failing_first(syscall: &str, errno: &str, path: Option<&Path>) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"));
    if let Some(p) = path {
        c.arg("-P").arg(p);
    }
    c.arg("-e")
        .arg(format!("inject={syscall}:error={errno}:when=1"))
        .arg(bin());
    c
}
