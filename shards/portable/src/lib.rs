//! Portable driver of the tpc-xfer shard logic: one thread per core, each running its
//! tasks on a local executor over a readiness loop (`async-io`, which is the `polling`
//! crate: epoll on Linux, kqueue on macOS and the BSDs, IOCP on Windows), with
//! positional file I/O through std.
//!
//! It offers the same primitives as `tpc-uring` (spawn, sleep, yield, blocking work,
//! files, socket readability); `tpc-engine` chooses one of the two per run, and the
//! shard logic above them is the same code.
//!
//! One compromise on shared-nothing: async-io has one reactor per process, so the
//! shards' sockets share one epoll set, and whichever shard is idle polls it and wakes
//! the others' tasks. Each shard still runs its own tasks on its own thread.
//!
//! File I/O here blocks the shard's thread for the length of one `pread` / `pwrite`. That
//! is the price of portability: the page cache answers most of them quickly, and what
//! blocks longer (fsync, syncfs) goes through `spawn_blocking`.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use async_executor::LocalExecutor;

pub use async_executor::Task;

thread_local! {
    /// The executor of the shard running on this thread, while it runs.
    static EXECUTOR: RefCell<Option<Rc<LocalExecutor<'static>>>> = const { RefCell::new(None) };
}

/// Runs `fut` to completion on this thread as a portable shard, pinned to `cpu` where the
/// OS allows it; tasks it spawns run on the same thread.
pub fn run_here<R>(cpu: Option<usize>, fut: impl Future<Output = R>) -> io::Result<R> {
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let executor = Rc::new(LocalExecutor::new());
    let previous = EXECUTOR.with(|e| e.borrow_mut().replace(executor.clone()));
    assert!(previous.is_none(), "one portable shard per thread");
    let out = async_io::block_on(executor.run(fut));
    EXECUTOR.with(|e| e.borrow_mut().take());
    Ok(out)
}

fn executor() -> Rc<LocalExecutor<'static>> {
    EXECUTOR.with(|e| {
        e.borrow()
            .clone()
            .expect("portable primitives are used on a portable shard thread")
    })
}

/// Spawns a task on this thread's shard.
pub fn spawn_local<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    executor().spawn(fut)
}

pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Lets the other tasks of this shard run before continuing.
pub async fn yield_now() {
    futures_lite::future::yield_now().await;
}

/// Runs blocking work (fsync, syncfs, directory walks) on the `blocking` crate's thread
/// pool, so this shard's network keeps being served meanwhile.
pub async fn spawn_blocking<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    blocking::unblock(f).await
}

/// A file for positional reads and writes.
pub struct File {
    file: std::fs::File,
}

impl File {
    pub fn from_std(file: std::fs::File) -> File {
        File { file }
    }

    pub async fn open(path: &Path) -> io::Result<File> {
        Ok(File::from_std(std::fs::File::open(path)?))
    }

    /// Opens for writing, creating it with `mode` if missing, never truncating; `flags`
    /// are added to the open flags (O_NOFOLLOW, O_CLOEXEC).
    pub async fn open_write(path: &Path, mode: u32, flags: i32) -> io::Result<File> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode).custom_flags(flags);
        }
        #[cfg(not(unix))]
        let _ = (mode, flags);
        Ok(File::from_std(options.open(path)?))
    }

    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_vec_at(&self.file, offset, len)
    }

    /// Writes all of `data` at `offset`; returns the bytes written.
    pub async fn write_at(&self, data: Vec<u8>, offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match write_at(&self.file, &data[done..], offset + done as u64) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Reserves the blocks of a file of `size` bytes, so a full disk shows up before the
    /// data moves: fallocate on Linux, failing as the io_uring driver's does; elsewhere
    /// the file is only extended (sparse), which is all std offers.
    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(size)
                .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
            // SAFETY: a valid open fd; fallocate only reads its arguments.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            if self.file.metadata()?.len() < size {
                self.file.set_len(size)?;
            }
            Ok(())
        }
    }

    pub async fn close(self) -> io::Result<()> {
        drop(self.file);
        Ok(())
    }

    pub fn as_std(&self) -> &std::fs::File {
        &self.file
    }
}

/// Reads up to `len` bytes of `file` at `offset` into a new buffer; fewer only at the
/// end of the file. Blocking: the portable driver calls it on the shard's thread, the
/// io_uring driver on its blocking pool where it wants the bytes in a `Vec`.
pub fn read_vec_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    let n = read_full_uninit(file, &mut buf.spare_capacity_mut()[..len], offset, 1)?;
    // SAFETY: read_full_uninit initialised the first n bytes of the spare capacity.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// Reads `dst.len()` bytes of `file` at `offset` into `dst`, which may be uninitialised
/// memory (zeroing a 4 MiB chunk first would cost a fifth of the read itself), with as
/// many positional reads as it takes. It stops short at the end of the file: a read of
/// nothing, or one that is not a whole number of `block`s (1 for ordinary reads; for
/// direct reads the block, since asking again at an unaligned offset is EINVAL on some
/// filesystems). Returns the count read: that many bytes at the front of `dst` are
/// initialised.
pub fn read_full_uninit(
    file: &std::fs::File,
    dst: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
    block: usize,
) -> io::Result<usize> {
    assert!(block > 0, "reads come in blocks of at least a byte");
    let mut done = 0;
    while done < dst.len() {
        match pread_uninit(file, &mut dst[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if n % block != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One positional read into `dst`, which may be uninitialised memory; the count read,
/// whose bytes at the front of `dst` it initialised.
#[cfg(unix)]
fn pread_uninit(
    f: &std::fs::File,
    dst: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: pread writes at most `dst.len()` bytes into memory `dst` borrows mutably.
    let n = unsafe { libc::pread(f.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), offset) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    assert!(n <= dst.len(), "pread reads no more than asked");
    Ok(n)
}

/// One positional read into `dst`: `seek_read` takes initialised memory, so it is zeroed
/// first.
#[cfg(windows)]
fn pread_uninit(
    f: &std::fs::File,
    dst: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> io::Result<usize> {
    dst.fill(std::mem::MaybeUninit::new(0));
    // SAFETY: every byte of `dst` was initialised just above.
    let buf = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
    std::os::windows::fs::FileExt::seek_read(f, buf, offset)
}

/// One positional write of `buf` at `offset` (on Windows the handle's position moves,
/// but nothing here writes at "the" position); the count written.
#[cfg(unix)]
pub fn write_at(f: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(f, buf, offset)
}

#[cfg(windows)]
pub fn write_at(f: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(f, buf, offset)
}

/// Tells a task when a UDP socket has a datagram queued, without consuming it.
pub struct Readable {
    socket: async_io::Async<UdpSocket>,
}

impl Readable {
    /// Watches `socket` through a second handle on it, so the caller keeps its own.
    pub fn new(socket: &UdpSocket) -> io::Result<Readable> {
        Ok(Readable {
            socket: async_io::Async::new(socket.try_clone()?)?,
        })
    }

    pub async fn wait(&self) {
        let _ = self.socket.readable().await;
    }
}

/// Pins this thread to `cpu` (Linux); elsewhere the OS schedules it.
fn pin_to(cpu: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
    Ok(())
}

/// A connected TCP stream, shared by the task that reads it and the task that writes it.
#[derive(Clone)]
pub struct TcpStream(Rc<async_io::Async<std::net::TcpStream>>);

impl TcpStream {
    /// Connects within `timeout`.
    pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let connect = async { Some(async_io::Async::<std::net::TcpStream>::connect(addr).await) };
        let expire = async {
            async_io::Timer::after(timeout).await;
            None
        };
        match futures_lite::future::or(connect, expire).await {
            Some(s) => Ok(TcpStream(Rc::new(s?))),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        use futures_lite::AsyncReadExt;
        (&*self.0).read(buf).await
    }

    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        use futures_lite::AsyncWriteExt;
        (&*self.0).write(buf).await
    }

    pub fn as_std(&self) -> &std::net::TcpStream {
        self.0.get_ref()
    }
}

/// A listening TCP socket, bound by the caller.
pub struct TcpListener(async_io::Async<std::net::TcpListener>);

impl TcpListener {
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener(async_io::Async::new(listener)?))
    }

    pub async fn accept(&self) -> io::Result<TcpStream> {
        let (s, _) = self.0.accept().await?;
        Ok(TcpStream(Rc::new(s)))
    }
}
