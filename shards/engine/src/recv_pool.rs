//! Receive buffers that become the datagrams themselves: the kernel writes a datagram
//! train into a pooled buffer, each datagram is split off it as a `BytesMut` for
//! quinn-proto (which decrypts in place and keeps stream data as slices of it), and the
//! buffer is used again once every piece of it has been dropped.
//!
//! Why: copying each received datagram into a buffer of its own was half of the
//! receiver's memory copying on a bulk push (the other half, into aligned write buffers,
//! is needed for O_DIRECT). Zeroing a fresh buffer per receive would cost about as much
//! as the copy, so a buffer is only zeroed once, when it is created. Small datagrams are
//! still copied out (`SHARED_DATAGRAM_BYTES_MIN`), so that no datagram pins much more
//! memory than quinn-proto accounts for.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Bytes of one buffer: the largest GRO-coalesced datagram train (or one datagram).
pub const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// Datagrams from this size up are handed on as pieces of their buffer; smaller ones
/// (among them a train's short last piece) are copied out into buffers of their own.
/// quinn-proto counts a datagram it holds (out of order, or not yet read) at its own
/// size, but the datagram pins the whole 64 KiB buffer it came in. From 8 KiB up that is
/// at most 8 times its size (loopback's 64 KiB datagrams, 9000-byte jumbo frames); a
/// 1500-byte path's train holds 44 datagrams, and a few held ones could pin many
/// buffers that quinn-proto believes are gone.
pub const SHARED_DATAGRAM_BYTES_MIN: usize = RECV_BUFFER_BYTES / 8;

/// A datagram split off a pooled buffer, as it is handed on: the piece itself from
/// `SHARED_DATAGRAM_BYTES_MIN` up, else a copy of its own, so that it does not hold the
/// buffer.
pub fn datagram(piece: BytesMut) -> BytesMut {
    if piece.len() >= SHARED_DATAGRAM_BYTES_MIN {
        piece
    } else {
        BytesMut::from(&piece[..])
    }
}

/// Buffers still shared with live datagrams that the pool keeps track of, to take back
/// when their datagrams are gone: 16 MiB, one socket buffer's worth. Past that the oldest
/// is forgotten; its memory is freed when quinn-proto drops the last datagram of it.
pub const LENT_BUFFERS_MAX: usize = 256;

/// A buffer and the address its initialized bytes start at.
struct Buf {
    bytes: BytesMut,
    /// `bytes.as_ptr()` when all `RECV_BUFFER_BYTES` bytes from there were initialized.
    base: usize,
}

impl Buf {
    fn zeroed() -> Buf {
        let bytes = BytesMut::zeroed(RECV_BUFFER_BYTES);
        let base = bytes.as_ptr() as usize;
        Buf { bytes, base }
    }

    /// Takes the whole allocation back if no datagram split off it is alive any more,
    /// and makes it a full buffer again. False while some datagram still holds it.
    fn reclaim(&mut self) -> bool {
        self.bytes.clear();
        // `try_reclaim` never allocates, so on success this is the same allocation.
        if !self.bytes.try_reclaim(RECV_BUFFER_BYTES) {
            return false;
        }
        if self.bytes.as_ptr() as usize == self.base && self.bytes.capacity() >= RECV_BUFFER_BYTES {
            // SAFETY: the allocation is the one `base` was recorded for, and all
            // RECV_BUFFER_BYTES bytes from `base` were initialized then (zeroed, and
            // since only overwritten by the kernel and quinn-proto with plain bytes).
            // Capacity covers them, and no other handle to the allocation is alive.
            unsafe { self.bytes.set_len(RECV_BUFFER_BYTES) };
        } else {
            // Not where it was initialized (bytes reused it differently): zero it anew.
            self.bytes.resize(RECV_BUFFER_BYTES, 0);
            self.base = self.bytes.as_ptr() as usize;
        }
        true
    }
}

/// The receive buffers of one endpoint.
#[derive(Default)]
pub struct RecvPool {
    /// Full buffers of RECV_BUFFER_BYTES, ready for the kernel to write into.
    ready: Vec<Buf>,
    /// Buffers that datagrams were split off and may still be alive, oldest first.
    lent: VecDeque<Buf>,
}

impl RecvPool {
    pub fn new() -> RecvPool {
        RecvPool::default()
    }

    /// Makes the first `n` ready buffers available to receive into, taking back lent
    /// buffers whose datagrams are gone before allocating new ones, and returns them.
    pub fn ready(&mut self, n: usize) -> impl Iterator<Item = &mut [u8]> {
        // Oldest first, and in place: the buffers still held keep their order, so that
        // `take` forgets the oldest.
        let mut i = 0;
        while self.ready.len() < n && i < self.lent.len() {
            if self.lent[i].reclaim() {
                let b = self.lent.remove(i).expect("index checked above");
                self.ready.push(b);
            } else {
                i += 1;
            }
        }
        while self.ready.len() < n {
            self.ready.push(Buf::zeroed());
        }
        self.ready[..n].iter_mut().map(|b| {
            assert_eq!(b.bytes.len(), RECV_BUFFER_BYTES, "a ready buffer is full");
            &mut b.bytes[..]
        })
    }

    /// After the kernel wrote `lens[i]` bytes into the i-th ready buffer: splits those
    /// bytes off each and hands them out, and keeps the buffers as lent.
    pub fn take(&mut self, lens: impl ExactSizeIterator<Item = usize>) -> Vec<BytesMut> {
        assert!(
            lens.len() <= self.ready.len(),
            "received into buffers not handed out"
        );
        let mut out = Vec::with_capacity(lens.len());
        for (mut b, len) in self.ready.drain(..lens.len()).zip(lens) {
            assert!(
                len <= RECV_BUFFER_BYTES,
                "received more than a buffer holds"
            );
            out.push(b.bytes.split_to(len));
            self.lent.push_back(b);
        }
        while self.lent.len() > LENT_BUFFERS_MAX {
            self.lent.pop_front();
        }
        out
    }

    /// Buffers the pool holds or tracks (ready and lent).
    #[cfg(test)]
    fn buffers(&self) -> usize {
        self.ready.len() + self.lent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(pool: &mut RecvPool, datagrams: &[&[u8]]) -> Vec<BytesMut> {
        for (buf, d) in pool.ready(datagrams.len()).zip(datagrams) {
            buf[..d.len()].copy_from_slice(d);
        }
        pool.take(datagrams.iter().map(|d| d.len()))
    }

    #[test]
    fn a_buffer_comes_back_only_when_its_datagrams_are_gone() {
        let mut pool = RecvPool::new();
        let first = receive(&mut pool, &[b"alpha"]);
        let first_ptr = first[0].as_ptr();
        // Still alive: the next receive must get another buffer and leave this intact.
        let second = receive(&mut pool, &[b"beta"]);
        assert_ne!(second[0].as_ptr(), first_ptr);
        assert_eq!(&first[0][..], b"alpha");
        assert_eq!(&second[0][..], b"beta");
        drop(first);
        // Gone: its memory is written again, with no new buffer.
        let third = receive(&mut pool, &[b"gamma"]);
        assert_eq!(third[0].as_ptr(), first_ptr);
        assert_eq!(&third[0][..], b"gamma");
        assert_eq!(&second[0][..], b"beta");
        assert_eq!(pool.buffers(), 2);
    }

    #[test]
    fn a_buffer_split_into_datagrams_waits_for_every_one() {
        let mut pool = RecvPool::new();
        let mut train = receive(&mut pool, &[b"onetwothree"]).remove(0);
        let ptr = train.as_ptr();
        let one = train.split_to(3).freeze();
        let two = train.split_to(3);
        drop(train);
        drop(two);
        // A frozen slice of the first datagram still holds the buffer.
        let held = receive(&mut pool, &[b"x"]);
        assert_ne!(held[0].as_ptr(), ptr);
        assert_eq!(&one[..], b"one");
        drop(one);
        drop(held);
        let again = receive(&mut pool, &[b"y"]);
        assert_eq!(again[0].as_ptr(), ptr);
        assert_eq!(&again[0][..], b"y");
        assert_eq!(pool.buffers(), 2);
    }

    #[test]
    fn a_small_datagram_holds_a_copy_and_a_large_one_the_buffer_itself() {
        let mut pool = RecvPool::new();
        let mut train = receive(&mut pool, &[&[5u8; 2 * SHARED_DATAGRAM_BYTES_MIN]]).remove(0);
        let base = train.as_ptr();
        let large = datagram(train.split_to(SHARED_DATAGRAM_BYTES_MIN));
        let small = datagram(train.split_to(SHARED_DATAGRAM_BYTES_MIN - 1));
        drop(train);
        assert_eq!(large.as_ptr(), base, "the large one is not copied");
        // While the large one lives, the buffer is not taken back.
        assert_ne!(receive(&mut pool, &[b"x"])[0].as_ptr(), base);
        drop(large);
        // The small one, still alive, does not hold the buffer.
        assert_eq!(receive(&mut pool, &[b"y"])[0].as_ptr(), base);
        assert!(small.iter().all(|&b| b == 5));
    }

    #[test]
    fn datagrams_held_forever_do_not_grow_the_pool_without_bound() {
        let mut pool = RecvPool::new();
        let mut held = Vec::new();
        for _ in 0..LENT_BUFFERS_MAX + 10 {
            held.extend(receive(&mut pool, &[b"kept"]));
        }
        assert_eq!(pool.buffers(), LENT_BUFFERS_MAX);
        assert!(held.iter().all(|d| &d[..] == b"kept"));
    }

    #[test]
    fn ready_buffers_are_full_length_whether_reused_or_new() {
        let mut pool = RecvPool::new();
        drop(receive(&mut pool, &[&[7u8; RECV_BUFFER_BYTES]]));
        let mut lens = 0;
        for buf in pool.ready(2) {
            assert_eq!(buf.len(), RECV_BUFFER_BYTES);
            lens += 1;
        }
        assert_eq!(lens, 2);
        let got = pool.take([0usize, 5].into_iter());
        assert!(got[0].is_empty());
        assert_eq!(got[1].len(), 5);
    }
}
