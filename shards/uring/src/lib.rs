//! glommio / io_uring driver of the tpc-xfer shard logic (Linux): one executor per core,
//! each owning an io_uring ring through which its file reads and writes go.
//!
//! It offers the same primitives as `tpc-portable` (spawn, sleep, yield, blocking work,
//! files, socket readability); `tpc-engine` chooses one of the two per run, and the
//! shard logic above them is the same code. glommio's own errors are turned into
//! `io::Error`s that keep the OS error, so callers classify failures the same way on
//! both drivers.

use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use glommio::io::{BufferedFile, OpenOptions};
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};

pub use glommio::io::ReadResult;
pub use glommio::Task;

/// Pinned memory registered per ring. Registered buffers are for O_DIRECT; this driver
/// reads and writes buffered, so keep it small to fit a default RLIMIT_MEMLOCK of 8 MiB.
pub const IO_MEMORY_BYTES: usize = 512 << 10;

/// The RLIMIT_MEMLOCK below which glommio refuses to start an executor (its own check,
/// independent of `IO_MEMORY_BYTES`).
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// Threads in each shard's blocking pool (glommio's default is one). Direct writes of
/// received chunks wait there on the device, so with one thread a shard had one write in
/// flight and its commits queued behind its writes.
pub const BLOCKING_THREADS: usize = 4;

/// Runs `fut` to completion on this thread as an io_uring shard, pinned to `cpu` if
/// given, with its blocking pool pinned beside it. Fails if the ring cannot be set up
/// (seccomp, RLIMIT_MEMLOCK, old kernel).
pub fn run_here<R>(cpu: Option<usize>, fut: impl Future<Output = R>) -> io::Result<R> {
    let (placement, pool) = match cpu {
        Some(cpu) => {
            let here = CpuSet::online().map_err(to_io)?.filter(|l| l.cpu == cpu);
            (
                Placement::Fixed(cpu),
                PoolPlacement::Fenced(BLOCKING_THREADS, here),
            )
        }
        None => (Placement::Unbound, PoolPlacement::Unbound(BLOCKING_THREADS)),
    };
    let executor = LocalExecutorBuilder::new(placement)
        .io_memory(IO_MEMORY_BYTES)
        .blocking_thread_pool_placement(pool)
        .make()
        .map_err(to_io)?;
    Ok(executor.run(fut))
}

/// Sets up and tears down one small io_uring ring, to learn whether this process may use
/// io_uring at all. glommio panics where io_uring_setup fails, so this is asked first.
pub fn probe_ring() -> io::Result<()> {
    // io_uring_params is 120 bytes of plain data that the kernel fills in; zeroed is a
    // valid request for defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) with a writable, correctly sized params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is the ring we just created and own.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

pub fn spawn_local<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut)
}

pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Lets the other tasks of this shard run if this one has used up its time slice.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}

/// Runs blocking work on glommio's blocking pool, so this shard keeps serving meanwhile.
pub async fn spawn_blocking<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(f).await
}

/// A glommio error as an `io::Error`: the OS error and its plain message, without
/// glommio's decoration (operation, fd), so one-line reports stay readable and the errno
/// survives for the exit-code policy.
fn to_io<T>(e: glommio::GlommioError<T>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(source)
        | glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// A file whose reads and writes go through this shard's io_uring ring.
pub struct File {
    file: BufferedFile,
}

impl File {
    pub fn from_fd(fd: OwnedFd) -> File {
        // SAFETY: ownership of a valid fd is handed over.
        File {
            file: unsafe { BufferedFile::from_raw_fd(fd.into_raw_fd()) },
        }
    }

    pub async fn open(path: &Path) -> io::Result<File> {
        Ok(File {
            file: BufferedFile::open(path).await.map_err(to_io)?,
        })
    }

    /// Opens for writing, creating it with `mode` if missing, never truncating; `flags`
    /// are added to the open flags (O_NOFOLLOW, O_CLOEXEC).
    pub async fn open_write(path: &Path, mode: u32, flags: i32) -> io::Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(mode)
            .custom_flags(flags)
            .buffered_open(path)
            .await
            .map_err(to_io)?;
        Ok(File { file })
    }

    /// Reads up to `len` bytes at `offset`, into a buffer glommio owns.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<ReadResult> {
        self.file.read_at(offset, len).await.map_err(to_io)
    }

    pub async fn write_at(&self, data: Vec<u8>, offset: u64) -> io::Result<usize> {
        self.file.write_at(data, offset).await.map_err(to_io)
    }

    pub async fn pre_allocate(&self, size: u64) -> io::Result<()> {
        self.file.pre_allocate(size, false).await.map_err(to_io)
    }

    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Tells a task when a UDP socket has a datagram queued, without consuming it: glommio
/// has no readiness wait, so an io_uring one-byte `MSG_PEEK` on a second handle of the
/// socket stands in for one (it completes when a datagram is queued and leaves it there).
pub struct Readable {
    peek: glommio::net::UdpSocket,
}

impl Readable {
    pub fn new(socket: &UdpSocket) -> io::Result<Readable> {
        let fd = socket.try_clone()?.into_raw_fd();
        // SAFETY: fd is a fresh, owned, valid socket descriptor.
        let peek = unsafe { glommio::net::UdpSocket::from_raw_fd(fd) };
        Ok(Readable { peek })
    }

    pub async fn wait(&self) {
        // One byte, not zero: glommio cannot allocate a zero-length buffer for the
        // operation. MSG_PEEK leaves the datagram queued either way.
        let mut one = [0u8; 1];
        let _ = self.peek.peek_from(&mut one).await;
    }
}

/// A connected TCP stream, shared by the task that reads it and the task that writes it
/// (glommio keeps a separate pending operation for each direction).
#[derive(Clone)]
pub struct TcpStream(std::rc::Rc<std::cell::RefCell<glommio::net::TcpStream>>);

impl TcpStream {
    fn wrap(s: glommio::net::TcpStream) -> TcpStream {
        TcpStream(std::rc::Rc::new(std::cell::RefCell::new(s)))
    }

    /// Connects within `timeout`.
    pub async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let s = glommio::net::TcpStream::connect_timeout(addr, timeout).await?;
        Ok(TcpStream::wrap(s))
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        use futures_lite::AsyncRead;
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf))
            .await
    }

    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        use futures_lite::AsyncWrite;
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf))
            .await
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.0.borrow().as_raw_fd()
    }
}

/// A listening TCP socket, bound by the caller.
pub struct TcpListener(glommio::net::TcpListener);

impl TcpListener {
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        // SAFETY: the descriptor is a fresh, owned, bound and listening socket.
        Ok(TcpListener(unsafe {
            glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd())
        }))
    }

    pub async fn accept(&self) -> io::Result<TcpStream> {
        Ok(TcpStream::wrap(self.0.accept().await?))
    }
}
