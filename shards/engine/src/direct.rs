//! Direct (O_DIRECT) I/O of large files' chunks: written by a receiver from an aligned
//! buffer to the device, and read by a sender from the device into an aligned buffer,
//! past the page cache both ways.
//!
//! A receiver writes each chunk once and never reads it back, so a copy into the page
//! cache buys it nothing, and on the machines measured it was the receiver's most
//! expensive step: `dd bs=4M` of 1 GiB cost 1.2-4.9 s of system time buffered against
//! 0.3 s with `oflag=direct` (PERFORMANCE.md, "Direct writes at the receiver").
//!
//! A sender reads each chunk once, and a buffered read is a CPU copy out of the page
//! cache: with the memory it touched, a quarter of a sender's CPU on loopback. A direct
//! read is the device's DMA into the chunk's own buffer instead, and a large transfer does
//! not push everything else out of the page cache. The price: a file that is in the page
//! cache but on a disk slower than the link is read from the disk all the same
//! (PERFORMANCE.md, "Direct reads at the sender").
//!
//! Direct I/O wants the buffer's address, the file offset and the length aligned to the
//! device's logical block; `DIRECT_ALIGN` covers 512-byte and 4 KiB devices. Chunk
//! offsets are multiples of the chunk size, so only a file's last chunk has an unaligned
//! tail: a writer writes that through the file's ordinary handle, a reader asks for whole
//! blocks and the end of the file cuts the last one short.
//!
//! Both run on the shard's blocking pool on both drivers: glommio's direct-I/O file
//! (`DmaFile`) opens by path only, where receivers open their files through the confined
//! root and senders reopen the file they hold; and its buffers cannot become the `Bytes`
//! QUIC sends from.

use std::io;
use std::sync::Arc;

use aligned_vec::{AVec, ConstAlign};
use bytes::Bytes;

use crate::rt;

/// Alignment of direct I/O buffers, offsets and lengths: the largest logical block size
/// in common use (4 KiB sectors), which is also a multiple of the smaller one (512).
pub const DIRECT_ALIGN: usize = 4096;

/// A chunk buffer aligned for direct I/O.
pub type AlignedBuf = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

/// An empty aligned buffer with room for `capacity` bytes.
pub fn aligned_buf(capacity: usize) -> AlignedBuf {
    AVec::with_capacity(DIRECT_ALIGN, capacity)
}

/// Whether this platform opens files for direct I/O (O_DIRECT: `confine::Access::WriteDirect`
/// for writes, `DirectReader` for reads). macOS's `F_NOCACHE` and Windows'
/// `FILE_FLAG_NO_BUFFERING` are set differently and not used.
pub const AVAILABLE: bool = cfg!(target_os = "linux");

/// A second handle on a file being received, opened with `Access::WriteDirect`.
pub struct DirectFile {
    file: Arc<std::fs::File>,
}

impl DirectFile {
    pub fn from_std(file: std::fs::File) -> DirectFile {
        DirectFile {
            file: Arc::new(file),
        }
    }

    /// Writes `buf[..len]` at `offset` with one positional write, and hands the buffer
    /// back. Returns the bytes written: fewer than `len` only when the device ran out of
    /// room part way, which the caller finds out by writing the rest the ordinary way.
    /// `offset` and `len` are multiples of `DIRECT_ALIGN` (the buffer is aligned by type).
    pub async fn write_at(
        &self,
        buf: AlignedBuf,
        offset: u64,
        len: usize,
    ) -> (AlignedBuf, io::Result<usize>) {
        assert!(
            offset.is_multiple_of(DIRECT_ALIGN as u64)
                && len.is_multiple_of(DIRECT_ALIGN)
                && len <= buf.len(),
            "direct write of {len} bytes at {offset} is not block-aligned"
        );
        let file = Arc::clone(&self.file);
        rt::spawn_blocking(move || {
            let wrote = crate::os::write_at(&file, &buf[..len], offset);
            (buf, wrote)
        })
        .await
    }
}

/// A second handle on a file being sent, opened for direct reads.
pub struct DirectReader {
    file: Arc<std::fs::File>,
}

impl DirectReader {
    /// A direct-read handle on the very file `file` is, where the platform and its
    /// filesystem offer one. It is reopened through `/proc/self/fd`, which names the open
    /// file and not a path, so it needs no confinement of its own and no rename in
    /// between can swap the file; the identity check guards against a `/proc` that is
    /// something else.
    pub fn open(file: &std::fs::File) -> Option<DirectReader> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            let direct = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
                .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .ok()?;
            crate::os::same_file(file, &direct)
                .ok()?
                .then(|| DirectReader {
                    file: Arc::new(direct),
                })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }

    /// Reads `len` bytes at `offset` (a multiple of `DIRECT_ALIGN`) into an aligned
    /// buffer of its own, on the shard's blocking pool; fewer only at the end of the file.
    /// An error may mean only that this file or device takes no direct reads after all
    /// (EINVAL): the caller can read it through the page cache instead.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        assert!(
            offset.is_multiple_of(DIRECT_ALIGN as u64),
            "direct read at {offset} is not block-aligned"
        );
        // Whole blocks: the end of the file cuts the last one short.
        let want = len.next_multiple_of(DIRECT_ALIGN);
        // Allocated here, on the shard that also frees it once QUIC is done with it.
        let mut buf = aligned_buf(want);
        let file = Arc::clone(&self.file);
        rt::spawn_blocking(move || {
            assert!(buf.capacity() >= want, "the buffer holds what is asked");
            // SAFETY: the capacity is allocated and owned by `buf`; seen as `MaybeUninit`
            // it may hold anything.
            let spare = unsafe {
                std::slice::from_raw_parts_mut(
                    buf.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
                    want,
                )
            };
            // A read short of a whole block is the end of the file.
            let n = tpc_portable::read_full_uninit(&file, spare, offset, DIRECT_ALIGN)?;
            // SAFETY: read_full_uninit initialised these n bytes.
            unsafe { buf.set_len(n) };
            // A file that grew since it was announced is sent as announced.
            buf.truncate(len);
            Ok(Bytes::from_owner(buf))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn drivers() -> Vec<rt::Driver> {
        vec![
            #[cfg(uring)]
            rt::Driver::Uring,
            rt::Driver::Portable,
        ]
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn direct_writes_land_where_asked_on_both_drivers() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("tpc-direct-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for driver in drivers() {
            let path = dir.join(driver.name());
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path);
            let f = match opened {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    eprintln!("skipped: {} takes no direct I/O", dir.display());
                    std::fs::remove_dir_all(&dir).unwrap();
                    return;
                }
                Err(e) => panic!("open {}: {e}", path.display()),
            };
            let file = DirectFile::from_std(f);
            let wrote = rt::run_thread(driver, move || async move {
                let mut buf = aligned_buf(3 * DIRECT_ALIGN);
                for b in 0..3u8 {
                    buf.extend_from_slice(&[b + 1; DIRECT_ALIGN]);
                }
                // Two blocks at the second block: the first stays a hole.
                let (buf, wrote) = file
                    .write_at(buf, DIRECT_ALIGN as u64, 2 * DIRECT_ALIGN)
                    .await;
                assert_eq!(buf.len(), 3 * DIRECT_ALIGN, "the buffer comes back whole");
                wrote
            })
            .unwrap()
            .unwrap();
            assert_eq!(wrote, 2 * DIRECT_ALIGN);
            let got = std::fs::read(&path).unwrap();
            let mut want = vec![0u8; DIRECT_ALIGN];
            want.extend_from_slice(&[1; DIRECT_ALIGN]);
            want.extend_from_slice(&[2; DIRECT_ALIGN]);
            assert_eq!(got, want, "{}", driver.name());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn direct_reads_return_the_file_as_it_is_on_both_drivers() {
        let dir = std::env::temp_dir().join(format!("tpc-direct-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        // Three blocks and a tail, each byte telling its offset apart from its neighbours'.
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        {
            use std::os::unix::fs::OpenOptionsExt;
            let probe = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path);
            if let Err(e) = probe {
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "open: {e}");
                eprintln!("skipped: {} takes no direct I/O", dir.display());
                std::fs::remove_dir_all(&dir).unwrap();
                return;
            }
        }
        let plain = std::fs::File::open(&path).unwrap();
        let reader = DirectReader::open(&plain).expect("a direct-read handle where O_DIRECT opens");
        {
            use std::os::fd::AsRawFd;
            // SAFETY: F_GETFL only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(reader.file.as_raw_fd(), libc::F_GETFL) };
            assert!(
                flags >= 0 && flags & libc::O_DIRECT != 0,
                "the handle reads directly"
            );
        }
        let reader = std::sync::Arc::new(reader);
        for driver in drivers() {
            let r = std::sync::Arc::clone(&reader);
            let reads = rt::run_thread(driver, move || async move {
                let mut out = Vec::new();
                // All of it; a middle block; a request past the end; one shorter than
                // the block it starts.
                for (at, len) in [
                    (0, 3 * DIRECT_ALIGN + 100),
                    (DIRECT_ALIGN as u64, DIRECT_ALIGN),
                    (2 * DIRECT_ALIGN as u64, 4 * DIRECT_ALIGN),
                    (DIRECT_ALIGN as u64, 10),
                ] {
                    out.push((at as usize, len, r.read_at(at, len).await.unwrap()));
                }
                out
            })
            .unwrap();
            for (at, len, got) in reads {
                let end = (at + len).min(data.len());
                assert_eq!(&got[..], &data[at..end], "{} at {at}", driver.name());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn buffers_are_aligned_whatever_their_size() {
        for size in [1, 4095, 4096, 1 << 20, (4 << 20) + 7] {
            let mut b = aligned_buf(size);
            b.extend_from_slice(&vec![7u8; size]);
            assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.len(), size);
        }
    }
}
