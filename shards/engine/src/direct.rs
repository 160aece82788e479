//! Direct (O_DIRECT) writes of received chunks: from an aligned buffer to the device,
//! past the page cache.
//!
//! A receiver writes each chunk once and never reads it back, so a copy into the page
//! cache buys it nothing, and on the machines measured it was the receiver's most
//! expensive step: `dd bs=4M` of 1 GiB cost 1.2-4.9 s of system time buffered against
//! 0.3 s with `oflag=direct` (PERFORMANCE.md, "Direct writes at the receiver").
//!
//! Direct I/O wants the buffer's address, the file offset and the length aligned to the
//! device's logical block; `DIRECT_ALIGN` covers 512-byte and 4 KiB devices. Chunk
//! offsets are multiples of the chunk size, so only a file's last chunk has an unaligned
//! tail; the caller writes that through the file's ordinary handle.
//!
//! The writes run on the shard's blocking pool on both drivers: glommio's direct-I/O file
//! (`DmaFile`) opens by path only, and receivers open their files through the
//! confined root.

use std::io;
use std::sync::Arc;

use aligned_vec::{AVec, ConstAlign};

use crate::rt;

/// Alignment of direct I/O buffers, offsets and lengths: the largest logical block size
/// in common use (4 KiB sectors), which is also a multiple of the smaller one (512).
pub const DIRECT_ALIGN: usize = 4096;

/// A chunk buffer aligned for direct writes.
pub type AlignedBuf = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

/// An empty aligned buffer with room for `capacity` bytes.
pub fn aligned_buf(capacity: usize) -> AlignedBuf {
    AVec::with_capacity(DIRECT_ALIGN, capacity)
}

/// Whether this platform opens files for direct I/O (`confine::Access::WriteDirect`, which
/// is O_DIRECT). macOS's `F_NOCACHE` and Windows' `FILE_FLAG_NO_BUFFERING` are set
/// differently and not used.
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
            offset % DIRECT_ALIGN as u64 == 0 && len % DIRECT_ALIGN == 0 && len <= buf.len(),
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
