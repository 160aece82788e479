//! The runtime a shard runs on: the io_uring driver (`tpc-uring`) or the portable one
//! (`tpc-portable`), chosen per run. The shard logic calls these functions and types and
//! never a driver directly, so both drivers run the same code.
//!
//! Which driver a thread belongs to is set once when its shard starts (`run_here`) and
//! read by every call; a call from a thread that is no shard is a bug and panics.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::ops::Deref;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Which driver runs the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// glommio executors over io_uring (Linux).
    #[cfg(uring)]
    Uring,
    /// A readiness loop (epoll / kqueue / IOCP) with std file I/O.
    Portable,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(uring)]
            Driver::Uring => "uring",
            Driver::Portable => "portable",
        }
    }
}

thread_local! {
    static DRIVER: Cell<Option<Driver>> = const { Cell::new(None) };
}

/// The driver of the shard on this thread.
pub fn driver() -> Driver {
    DRIVER
        .with(|d| d.get())
        .expect("runtime calls are made on a shard thread")
}

/// Runs `fut` to completion on this thread as a shard of `driver`, pinned to `cpu` if
/// given. Fails if the driver cannot start here.
pub fn run_here<R>(
    driver: Driver,
    cpu: Option<usize>,
    fut: impl Future<Output = R>,
) -> io::Result<R> {
    let previous = DRIVER.with(|d| d.replace(Some(driver)));
    assert!(previous.is_none(), "one shard per thread");
    let out = match driver {
        #[cfg(uring)]
        Driver::Uring => tpc_uring::run_here(cpu, fut),
        Driver::Portable => tpc_portable::run_here(cpu, fut),
    };
    DRIVER.with(|d| d.set(None));
    out
}

/// Runs `fut` as a shard of `driver` on a new, unpinned thread and waits for it: for
/// tests and tools that need one endpoint outside a job.
pub fn run_thread<R, F, Fut>(driver: Driver, body: F) -> io::Result<R>
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
{
    std::thread::Builder::new()
        .name("tpc-shard".into())
        .spawn(move || run_here(driver, None, body()))?
        .join()
        .map_err(|_| io::Error::other("shard thread panicked"))?
}

/// A spawned task: await it for its output, or detach it to let it run on its own.
pub enum Task<T> {
    #[cfg(uring)]
    Uring(tpc_uring::Task<T>),
    Portable(tpc_portable::Task<T>),
}

impl<T> Task<T> {
    pub fn detach(self) {
        match self {
            #[cfg(uring)]
            Task::Uring(t) => {
                t.detach();
            }
            Task::Portable(t) => t.detach(),
        }
    }

    /// Stops the task; its output if it had already finished.
    pub async fn cancel(self) -> Option<T> {
        match self {
            #[cfg(uring)]
            Task::Uring(t) => t.cancel().await,
            Task::Portable(t) => t.cancel().await,
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // Both task types are Unpin handles.
        match self.get_mut() {
            #[cfg(uring)]
            Task::Uring(t) => Pin::new(t).poll(cx),
            Task::Portable(t) => Pin::new(t).poll(cx),
        }
    }
}

/// Spawns a task on this thread's shard.
pub fn spawn_local<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    match driver() {
        #[cfg(uring)]
        Driver::Uring => Task::Uring(tpc_uring::spawn_local(fut)),
        Driver::Portable => Task::Portable(tpc_portable::spawn_local(fut)),
    }
}

pub async fn sleep(d: Duration) {
    match driver() {
        #[cfg(uring)]
        Driver::Uring => tpc_uring::sleep(d).await,
        Driver::Portable => tpc_portable::sleep(d).await,
    }
}

/// `f`'s output, or `None` if `wait` passes first (`f` is then dropped).
pub async fn within<T>(wait: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        sleep(wait).await;
        None
    })
    .await
}

/// Lets the shard's other tasks run (at once on the portable driver, once this task's
/// time slice is used up on io_uring).
pub async fn yield_now() {
    match driver() {
        #[cfg(uring)]
        Driver::Uring => tpc_uring::yield_now().await,
        Driver::Portable => tpc_portable::yield_now().await,
    }
}

/// Runs long blocking work (a plan of a whole manifest, a listing of a whole tree) on a
/// thread of its own, not in the shard's blocking pool: the pool's few threads serve
/// every session's direct writes and commits, and one session's long work must not hold
/// them. Falls back to the pool if no thread can be started.
pub async fn spawn_thread<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let work = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let (tx, rx) = async_channel::bounded(1);
    let theirs = work.clone();
    let started = std::thread::Builder::new()
        .name("tpc-session-work".into())
        .spawn(move || {
            let f = theirs.lock().expect("not poisoned").take();
            if let Some(f) = f {
                let _ = tx.send_blocking(f());
            }
        });
    if started.is_ok() {
        if let Ok(out) = rx.recv().await {
            return out;
        }
    }
    // No thread (out of threads or memory), or it died: the work is still here unless
    // it panicked part way, which takes the shard down as the pool's would.
    let f = work.lock().expect("not poisoned").take();
    spawn_blocking(f.expect("the work panicked on its own thread")).await
}

/// Runs blocking work off the shard's thread, so its network keeps being served.
pub async fn spawn_blocking<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match driver() {
        #[cfg(uring)]
        Driver::Uring => tpc_uring::spawn_blocking(f).await,
        Driver::Portable => tpc_portable::spawn_blocking(f).await,
    }
}

/// A file for positional reads and writes through the shard's driver.
pub enum File {
    #[cfg(uring)]
    Uring(tpc_uring::File),
    Portable(tpc_portable::File),
}

/// Bytes read from a file: the driver's own buffer, used as it is.
pub enum ReadBuf {
    #[cfg(uring)]
    Uring(tpc_uring::ReadResult),
    Portable(Vec<u8>),
}

impl Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(uring)]
            ReadBuf::Uring(r) => r,
            ReadBuf::Portable(v) => v,
        }
    }
}

impl ReadBuf {
    /// The bytes as an owned `Vec`; the portable driver's already is one.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            #[cfg(uring)]
            ReadBuf::Uring(r) => r.to_vec(),
            ReadBuf::Portable(v) => v,
        }
    }
}

impl File {
    /// Wraps a file opened (and confined) elsewhere.
    pub fn from_std(file: std::fs::File) -> File {
        match driver() {
            #[cfg(uring)]
            Driver::Uring => File::Uring(tpc_uring::File::from_fd(file.into())),
            Driver::Portable => File::Portable(tpc_portable::File::from_std(file)),
        }
    }

    pub async fn open(path: &Path) -> io::Result<File> {
        Ok(match driver() {
            #[cfg(uring)]
            Driver::Uring => File::Uring(tpc_uring::File::open(path).await?),
            Driver::Portable => File::Portable(tpc_portable::File::open(path).await?),
        })
    }

    /// Opens for writing, creating it with `mode` if missing, never truncating, and on
    /// Unix never through a final symlink (O_NOFOLLOW).
    pub async fn open_write(path: &Path, mode: u32) -> io::Result<File> {
        #[cfg(unix)]
        let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
        #[cfg(not(unix))]
        let flags = 0;
        Ok(match driver() {
            #[cfg(uring)]
            Driver::Uring => File::Uring(tpc_uring::File::open_write(path, mode, flags).await?),
            Driver::Portable => {
                File::Portable(tpc_portable::File::open_write(path, mode, flags).await?)
            }
        })
    }

    /// Reads up to `len` bytes at `offset` into a `Vec` of its own (fewer only at the end
    /// of the file), for a caller that hands the buffer on without copying it (into
    /// QUIC's send buffer as `Bytes`) where it has no direct reads (`direct::DirectReader`).
    /// The portable driver reads so anyway; the io_uring driver's reads land in glommio's
    /// buffers, so there it is preads on a second handle on the shard's blocking pool,
    /// which it shares with direct reads and writes and commits.
    pub async fn read_vec_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            #[cfg(uring)]
            File::Uring(_) => {
                let file = self.with_std(|f| f.try_clone())?;
                spawn_blocking(move || tpc_portable::read_vec_at(&file, offset, len)).await
            }
            File::Portable(f) => f.read_at(offset, len).await,
        }
    }

    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<ReadBuf> {
        Ok(match self {
            #[cfg(uring)]
            File::Uring(f) => ReadBuf::Uring(f.read_at(offset, len).await?),
            File::Portable(f) => ReadBuf::Portable(f.read_at(offset, len).await?),
        })
    }

    /// Writes `data` at `offset`; returns the bytes written (short only when the device
    /// or quota ran out).
    pub async fn write_at(&self, data: Vec<u8>, offset: u64) -> io::Result<usize> {
        match self {
            #[cfg(uring)]
            File::Uring(f) => f.write_at(data, offset).await,
            File::Portable(f) => f.write_at(data, offset).await,
        }
    }

    /// Reserves the blocks of a file of `size` bytes.
    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        match self {
            #[cfg(uring)]
            File::Uring(f) => f.pre_allocate(size).await,
            File::Portable(f) => f.pre_allocate(size).await,
        }
    }

    pub async fn close(self) -> io::Result<()> {
        match self {
            #[cfg(uring)]
            File::Uring(f) => f.close().await,
            File::Portable(f) => f.close().await,
        }
    }

    /// Calls `f` with the file as a `std::fs::File`, for the calls no driver offers
    /// (metadata, sync).
    pub fn with_std<R>(&self, f: impl FnOnce(&std::fs::File) -> R) -> R {
        match self {
            #[cfg(uring)]
            File::Uring(u) => {
                use std::os::fd::FromRawFd;
                // SAFETY: the fd stays open while `u` lives, which outlasts this call;
                // ManuallyDrop keeps the borrowed view from closing it.
                let view = std::mem::ManuallyDrop::new(unsafe {
                    std::fs::File::from_raw_fd(u.as_raw_fd())
                });
                f(&view)
            }
            File::Portable(p) => f(p.as_std()),
        }
    }
}

/// Tells a task when a UDP socket has a datagram queued, without consuming it.
pub enum Readable {
    #[cfg(uring)]
    Uring(tpc_uring::Readable),
    Portable(tpc_portable::Readable),
}

impl Readable {
    pub fn new(socket: &UdpSocket) -> io::Result<Readable> {
        Ok(match driver() {
            #[cfg(uring)]
            Driver::Uring => Readable::Uring(tpc_uring::Readable::new(socket)?),
            Driver::Portable => Readable::Portable(tpc_portable::Readable::new(socket)?),
        })
    }

    pub async fn wait(&self) {
        match self {
            #[cfg(uring)]
            Readable::Uring(r) => r.wait().await,
            Readable::Portable(r) => r.wait().await,
        }
    }
}

/// What the user asked for with `--io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoChoice {
    /// io_uring where it works, else the portable driver (with a notice).
    Auto,
    Uring,
    Portable,
}

/// The driver for `choice`, and for `Auto` a one-line notice when it fell back to the
/// portable driver. An explicit `Uring` that cannot run is an error with the reason.
pub fn select(choice: IoChoice) -> Result<(Driver, Option<String>), String> {
    match choice {
        IoChoice::Portable => Ok((Driver::Portable, None)),
        IoChoice::Uring => match uring_unusable() {
            None => Ok((uring_driver(), None)),
            Some(why) => Err(format!("--io uring: io_uring cannot be used here: {why}")),
        },
        // A build without the io_uring driver has nothing to fall back from: no notice.
        IoChoice::Auto if cfg!(not(uring)) => Ok((Driver::Portable, None)),
        IoChoice::Auto => match uring_unusable() {
            None => Ok((uring_driver(), None)),
            Some(why) => Ok((
                Driver::Portable,
                Some(format!(
                    "io_uring cannot be used here ({why}); using the portable driver"
                )),
            )),
        },
    }
}

#[cfg(uring)]
fn uring_driver() -> Driver {
    Driver::Uring
}

#[cfg(not(uring))]
fn uring_driver() -> Driver {
    unreachable!("uring_unusable always answers without the uring feature")
}

/// Why io_uring shards cannot start here, or `None` if they can. In order: the
/// `kernel.io_uring_disabled` sysctl; one bare ring (io_uring_setup fails with EPERM
/// under seccomp, as in Docker's default profile, and with ENOSYS on kernels without it;
/// glommio would panic there rather than return an error); RLIMIT_MEMLOCK against what
/// glommio registers; and last a real shard started and stopped, for anything else.
fn uring_unusable() -> Option<String> {
    #[cfg(not(uring))]
    {
        Some("this tpc-xfer was built without the io_uring driver".to_string())
    }
    #[cfg(uring)]
    {
        if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            if v.trim() == "2" {
                return Some("kernel.io_uring_disabled = 2".to_string());
            }
        }
        if let Err(e) = tpc_uring::probe_ring() {
            return Some(describe_start_error(&e));
        }
        crate::raise_memlock_limit();
        let memlock = memlock_limit();
        if memlock < tpc_uring::MEMLOCK_MIN_BYTES {
            return Some(format!(
                "RLIMIT_MEMLOCK is {} KiB; io_uring shards need at least {} KiB",
                memlock / 1024,
                tpc_uring::MEMLOCK_MIN_BYTES / 1024
            ));
        }
        // glommio reports some start failures by panicking; keep the default hook from
        // printing a backtrace where one line of notice is due. Nothing else runs yet.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let trial = std::thread::Builder::new()
            .name("tpc-uring-probe".into())
            .spawn(|| tpc_uring::run_here(None, async {}))
            .map_err(|e| e.to_string())
            .and_then(|h| {
                h.join()
                    .map_err(|_| "glommio could not start an executor".to_string())
            });
        std::panic::set_hook(hook);
        match trial {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(describe_start_error(&e)),
            Err(e) => Some(e),
        }
    }
}

/// The start error of an io_uring shard, with the likely cause.
#[cfg(uring)]
fn describe_start_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("{e}: blocked by a seccomp profile or kernel.io_uring_disabled")
        }
        Some(libc::ENOSYS) => format!("{e}: this kernel has no io_uring"),
        _ => e.to_string(),
    }
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
#[cfg(uring)]
fn memlock_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// A connected TCP stream of this shard's driver, shared by one reading and one writing
/// task (clones are handles to the same stream).
#[derive(Clone)]
pub enum TcpStream {
    #[cfg(uring)]
    Uring(tpc_uring::TcpStream),
    Portable(tpc_portable::TcpStream),
}

impl TcpStream {
    /// Connects within `timeout`.
    pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        Ok(match driver() {
            #[cfg(uring)]
            Driver::Uring => TcpStream::Uring(tpc_uring::TcpStream::connect(addr, timeout).await?),
            Driver::Portable => {
                TcpStream::Portable(tpc_portable::TcpStream::connect(addr, timeout).await?)
            }
        })
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            #[cfg(uring)]
            TcpStream::Uring(s) => s.read(buf).await,
            TcpStream::Portable(s) => s.read(buf).await,
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = match self {
                #[cfg(uring)]
                TcpStream::Uring(s) => s.write(buf).await?,
                TcpStream::Portable(s) => s.write(buf).await?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Runs `f` on the socket (options, addresses, shutdown) without taking it over.
    pub fn with_socket<R>(&self, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> R {
        match self {
            #[cfg(uring)]
            TcpStream::Uring(s) => {
                // SAFETY: the descriptor stays open for the length of this call: `s` holds
                // it, and the view is never closed (ManuallyDrop).
                let view = std::mem::ManuallyDrop::new(unsafe {
                    use std::os::fd::FromRawFd;
                    std::net::TcpStream::from_raw_fd(s.as_raw_fd())
                });
                f(socket2::SockRef::from(&*view))
            }
            TcpStream::Portable(s) => f(socket2::SockRef::from(s.as_std())),
        }
    }
}

/// A listening TCP socket, bound by the caller, accepting on this shard's driver.
pub enum TcpListener {
    #[cfg(uring)]
    Uring(tpc_uring::TcpListener),
    Portable(tpc_portable::TcpListener),
}

impl TcpListener {
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(match driver() {
            #[cfg(uring)]
            Driver::Uring => TcpListener::Uring(tpc_uring::TcpListener::from_std(listener)?),
            Driver::Portable => {
                TcpListener::Portable(tpc_portable::TcpListener::from_std(listener)?)
            }
        })
    }

    pub async fn accept(&self) -> io::Result<TcpStream> {
        Ok(match self {
            #[cfg(uring)]
            TcpListener::Uring(l) => TcpStream::Uring(l.accept().await?),
            TcpListener::Portable(l) => TcpStream::Portable(l.accept().await?),
        })
    }
}
