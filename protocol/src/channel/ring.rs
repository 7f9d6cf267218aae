//! A single-producer, single-consumer byte ring in shared memory, carrying
//! length-prefixed frames.
//!
//! The ring's positions are byte counters that only grow (`u64`, never
//! wrapped in practice); a byte's place in the data area is its position
//! modulo the ring's size. The producer owns `tail` (it writes a frame
//! after `tail`, then publishes the new `tail` with Release); the consumer
//! owns `head` (it reads what lies between `head` and `tail` after an
//! Acquire load of `tail`, then publishes the new `head`). Each side keeps
//! its own position privately and only publishes it: what it reads from
//! the shared header is the peer's position, which it checks. A frame is a
//! little-endian `u32` length and that many bytes, and may wrap around the
//! end of the data area.
//!
//! Wake-ups: a side about to sleep sets its waiting flag (`consumer_waiting`
//! or `producer_waiting`), then looks again (SeqCst on both sides, so that
//! one of them sees the other); the other side, after publishing a
//! position, swaps the flag to 0 and wakes the sleeper only if it was set.
//! Under load neither side sleeps, and no frame costs a system call.
//!
//! The peer may be hostile (a worker's guest is not trusted): every
//! position it publishes and every length it wrote is checked before use,
//! and frame bytes are copied out before they are parsed. A check that
//! fails is [`Corrupt`], after which the ring is not used again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// The largest frame a ring carries (its length field).
pub const MAX_FRAME: usize = 256 << 10;

/// The shared part of one ring: positions and waiting flags, each on its
/// own cache line.
#[repr(C)]
pub struct RingHeader {
    /// Bytes the consumer has read (written by the consumer).
    pub head: AtomicU64,
    _pad0: [u8; 56],
    /// Bytes the producer has written (written by the producer).
    pub tail: AtomicU64,
    _pad1: [u8; 56],
    /// Set by the consumer before it sleeps for data.
    pub consumer_waiting: AtomicU32,
    _pad2: [u8; 60],
    /// Set by the producer before it sleeps for space.
    pub producer_waiting: AtomicU32,
    _pad3: [u8; 60],
}

/// The ring's shared data is not what the protocol says: a hostile or
/// broken peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt channel: {0}")]
pub struct Corrupt(pub String);

/// Not enough room for a frame now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// One ring, as seen from one process: its header and data area in a
/// mapping that outlives it (see [`super::Segment`]).
pub struct Ring {
    header: *const RingHeader,
    data: *mut u8,
    size: u64,
    /// This side's own position (`tail` on the producer's side, `head` on
    /// the consumer's), kept here as well as published: the peer can
    /// write the shared copy, so it is only ever written, never read back.
    tail: AtomicU64,
    head: AtomicU64,
}

// SAFETY: a Ring only points into a shared mapping that its owner keeps
// alive as long as the Ring; all shared state it touches through `header`
// is atomic, and the data area is only written by the producer side and
// read by the consumer side (each used from one place at a time by its
// owner, under a lock or a single task).
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring over `header` and `size` bytes at `data`.
    ///
    /// # Safety
    ///
    /// `header` and `data..data + size` must be valid, writable, and stay
    /// mapped for as long as the ring is used; `size` must be a power of
    /// two.
    pub(crate) unsafe fn new(header: *const RingHeader, data: *mut u8, size: u64) -> Ring {
        debug_assert!(size.is_power_of_two());
        // SAFETY: `header` is valid (the contract above).
        let shared = unsafe { &*header };
        // Where the ring stands when this side opens it (zero for a new
        // channel): from here on each side counts its own position.
        let (tail, head) = (shared.tail.load(Ordering::Acquire), shared.head.load(Ordering::Acquire));
        Ring { header, data, size, tail: AtomicU64::new(tail), head: AtomicU64::new(head) }
    }

    pub(crate) fn header(&self) -> &RingHeader {
        // SAFETY: `new`'s contract: the header stays mapped; its fields are
        // atomics, valid for any bit pattern the peer writes.
        unsafe { &*self.header }
    }

    /// The ring's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// Bytes waiting to be read, as the producer side sees it, checked:
    /// a consumer that claims to have read more than was written is
    /// corrupt.
    fn used_by_producer(&self) -> Result<u64, Corrupt> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.header().head.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.size {
            return Err(Corrupt(format!("the reader is at {head}, past the writer at {tail}")));
        }
        Ok(used)
    }

    /// Writes one frame made of `parts` (their total length is the frame's
    /// length) if there is room. Returns whether the consumer is asleep and
    /// must be woken.
    pub fn push(&self, parts: &[&[u8]]) -> Result<Result<bool, Full>, Corrupt> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        assert!(len <= MAX_FRAME, "a frame of {len} bytes is over the limit of {MAX_FRAME}");
        let needed = 4 + len as u64;
        let used = self.used_by_producer()?;
        if self.size - used < needed {
            return Ok(Err(Full));
        }
        let header = self.header();
        let tail = self.tail.load(Ordering::Relaxed);
        self.write_at(tail, &(len as u32).to_le_bytes());
        let mut at = tail.wrapping_add(4);
        for part in parts {
            self.write_at(at, part);
            at = at.wrapping_add(part.len() as u64);
        }
        let tail = tail.wrapping_add(needed);
        self.tail.store(tail, Ordering::Relaxed);
        header.tail.store(tail, Ordering::Release);
        // Pairs with the consumer's fence between setting its flag and
        // looking at `tail` again: one of the two sees the other.
        fence(Ordering::SeqCst);
        Ok(Ok(header.consumer_waiting.swap(0, Ordering::SeqCst) != 0))
    }

    /// Whether a frame of `len` bytes fits now.
    pub fn fits(&self, len: usize) -> Result<bool, Corrupt> {
        Ok(self.size - self.used_by_producer()? >= 4 + len as u64)
    }

    /// Reads the next frame into `out` (replacing its contents), if there
    /// is one. Returns whether the producer waits for space and must be
    /// woken.
    pub fn pop(&self, out: &mut Vec<u8>) -> Result<Option<bool>, Corrupt> {
        let header = self.header();
        let head = self.head.load(Ordering::Relaxed);
        let tail = header.tail.load(Ordering::Acquire);
        let available = tail.wrapping_sub(head);
        if available == 0 {
            return Ok(None);
        }
        if available > self.size {
            return Err(Corrupt(format!("the writer is at {tail}, more than a ring ahead of the reader at {head}")));
        }
        if available < 4 {
            return Err(Corrupt(format!("{available} bytes published, less than a frame's length field")));
        }
        let mut len = [0u8; 4];
        self.read_at(head, &mut len);
        let len = u32::from_le_bytes(len) as u64;
        if len > MAX_FRAME as u64 || 4 + len > available {
            return Err(Corrupt(format!("a frame of {len} bytes where {} were published", available - 4)));
        }
        out.clear();
        out.resize(len as usize, 0);
        self.read_at(head.wrapping_add(4), out);
        let head = head.wrapping_add(4 + len);
        self.head.store(head, Ordering::Relaxed);
        header.head.store(head, Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(Some(header.producer_waiting.swap(0, Ordering::SeqCst) != 0))
    }

    /// Marks the consumer awake (it was woken, or looks by itself).
    pub fn consumer_awake(&self) {
        self.header().consumer_waiting.store(0, Ordering::SeqCst);
    }

    /// Whether there is nothing to read (the consumer's question: it
    /// compares the producer's published `tail` with its own `head`).
    pub fn is_empty(&self) -> bool {
        self.header().tail.load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }

    /// Marks the consumer asleep, then tells whether data came meanwhile
    /// (then it should not sleep; the flag is cleared).
    pub fn consumer_sleeps(&self) -> bool {
        let header = self.header();
        header.consumer_waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.is_empty() {
            header.consumer_waiting.store(0, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Marks the producer waiting for room for `len` bytes, then tells
    /// whether room came meanwhile (then it should not wait; the flag is
    /// cleared).
    pub fn producer_waits(&self, len: usize) -> Result<bool, Corrupt> {
        let header = self.header();
        header.producer_waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.fits(len)? {
            header.producer_waiting.store(0, Ordering::SeqCst);
            return Ok(false);
        }
        Ok(true)
    }

    fn write_at(&self, position: u64, bytes: &[u8]) {
        let start = (position & (self.size - 1)) as usize;
        let first = bytes.len().min(self.size as usize - start);
        // SAFETY: `start + first <= size` and the rest starts at 0 with
        // `bytes.len() - first <= size` (a frame is smaller than the ring);
        // the data area is valid for `size` bytes (`new`'s contract), and
        // the producer alone writes the part between `tail` and `head +
        // size`, which `push` checked this write stays within.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data, bytes.len() - first);
        }
    }

    fn read_at(&self, position: u64, out: &mut [u8]) {
        let start = (position & (self.size - 1)) as usize;
        let first = out.len().min(self.size as usize - start);
        // SAFETY: bounds as in `write_at`. The bytes were published by the
        // producer before `tail` (Acquire above); a hostile producer may
        // still change them while they are copied, which can only change
        // the bytes copied (any byte is a valid u8), and they are checked
        // after the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, for tests.
    struct Local {
        _header: Box<RingHeader>,
        _data: Vec<u8>,
        ring: Ring,
    }

    fn local(size: usize) -> Local {
        // SAFETY: RingHeader is atomics and padding: zeroes are valid.
        let header: Box<RingHeader> = Box::new(unsafe { std::mem::zeroed() });
        let mut data = vec![0u8; size];
        // SAFETY: both live as long as `Local`; size is a power of two.
        let ring = unsafe { Ring::new(&*header, data.as_mut_ptr(), size as u64) };
        Local { _header: header, _data: data, ring }
    }

    #[test]
    fn frames_go_through_in_order_and_wrap_around() {
        let l = local(64);
        let mut out = Vec::new();
        for round in 0..50u8 {
            let frame = vec![round; (round as usize % 13) + 1];
            assert_eq!(l.ring.push(&[&frame[..2.min(frame.len())], &frame[2.min(frame.len())..]]), Ok(Ok(false)));
            assert_eq!(l.ring.pop(&mut out), Ok(Some(false)));
            assert_eq!(out, frame);
        }
        assert_eq!(l.ring.pop(&mut out), Ok(None));
    }

    #[test]
    fn a_full_ring_refuses_and_flags_wake_ups() {
        let l = local(32);
        assert_eq!(l.ring.push(&[&[1; 20]]), Ok(Ok(false)));
        assert_eq!(l.ring.push(&[&[2; 20]]), Ok(Err(Full)));
        assert_eq!(l.ring.producer_waits(20), Ok(true));
        let mut out = Vec::new();
        // The consumer frees room and learns that the producer waits.
        assert_eq!(l.ring.pop(&mut out), Ok(Some(true)));
        assert!(l.ring.consumer_sleeps());
        // The producer learns that the consumer sleeps.
        assert_eq!(l.ring.push(&[&[2; 20]]), Ok(Ok(true)));
        assert!(!l.ring.consumer_sleeps(), "data came: no sleep");
    }

    #[test]
    fn hostile_positions_and_lengths_are_corrupt() {
        let l = local(64);
        let header = l.ring.header();
        let mut out = Vec::new();
        // A writer more than a ring ahead.
        header.tail.store(1000, Ordering::SeqCst);
        assert!(l.ring.pop(&mut out).is_err());
        // A length longer than what was published.
        header.tail.store(8, Ordering::SeqCst);
        l.ring.write_at(0, &60u32.to_le_bytes());
        assert!(l.ring.pop(&mut out).unwrap_err().0.contains("a frame of 60 bytes"));
        // Too short for a length.
        header.tail.store(2, Ordering::SeqCst);
        assert!(l.ring.pop(&mut out).is_err());
        // A reader past the writer, seen by the writer.
        header.tail.store(0, Ordering::SeqCst);
        header.head.store(10, Ordering::SeqCst);
        assert!(l.ring.push(&[b"x"]).is_err());
    }
}
