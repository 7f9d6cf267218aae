//! The channel between the gateway and one replica: a memory segment both
//! processes map, holding two rings of frames, and two eventfds to wake a
//! side that sleeps.
//!
//! # Layout
//!
//! ```text
//! offset 0        SegmentHeader (4 KiB): magic, version, ring size,
//!                   to_worker ring header, to_gateway ring header,
//!                   taken (requests the worker took)
//! offset 4096     to_worker ring data (RING_SIZE bytes): gateway → worker
//! offset 4096+R   to_gateway ring data (RING_SIZE bytes): worker → gateway
//! ```
//!
//! The node agent creates the segment (`memfd_create`) and the two eventfds
//! for each worker process it forks, passes them to the worker as fds 4, 5
//! and 6 (see [`crate::config`]), and keeps them for the gateway: the
//! segment and the eventfds are plain descriptors, which a new `shoal up`
//! could be handed over a Unix socket (`SCM_RIGHTS`) to take the channel
//! over without restarting the worker.
//!
//! # Who writes what
//!
//! - The gateway writes `to_worker` frames (requests, request bodies,
//!   window updates for response bodies, resets, probes) and `to_worker`'s
//!   `tail`, and reads `to_gateway`, writing its `head`.
//! - The worker writes `to_gateway` frames (responses, response bodies,
//!   window updates for request bodies, resets, probe answers) and its
//!   `tail`, reads `to_worker`, writes its `head`, and counts every request
//!   it takes in `taken`.
//! - Each side sleeps on its own eventfd; the other writes it only when the
//!   ring flags say the side sleeps (see [`ring`]). Under load no frame
//!   costs a system call.
//!
//! # Invariants
//!
//! - The gateway trusts nothing the worker wrote: positions, lengths and
//!   frames are checked, and a check that fails ends the channel (the
//!   replica is treated as dead: its requests fail or go elsewhere, and it
//!   is replaced).
//! - A request the worker has not taken (`taken` says how many it took, in
//!   order) never ran: it can go to another replica whatever its method.
//! - Body bytes on a stream never exceed the window the receiver granted
//!   ([`STREAM_WINDOW`] at first, more with each `WINDOW` frame), so a slow
//!   reader of one stream holds at most a window of memory and never stops
//!   the ring for the others.

pub mod frame;
pub mod ring;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use ring::{Corrupt, Full, MAX_FRAME, Ring, RingHeader};

/// `SHOALCH1`: a segment of this protocol.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHOALCH1");
/// The layout version.
pub const VERSION: u32 = 1;
/// Bytes in each ring (a power of two).
pub const RING_SIZE: u64 = 1 << 20;
/// The segment's header size.
const HEADER_SIZE: usize = 4096;
/// The segment's size.
pub const SEGMENT_SIZE: usize = HEADER_SIZE + 2 * RING_SIZE as usize;
/// Body bytes a sender may send on a stream before the receiver grants
/// more.
pub const STREAM_WINDOW: u32 = 256 << 10;
/// The largest body part in one frame.
pub const MAX_DATA: usize = 64 << 10;

/// The shared header at the start of the segment.
#[repr(C)]
struct SegmentHeader {
    magic: u64,
    version: u32,
    ring_size: u32,
    _pad: [u8; 48],
    to_worker: RingHeader,
    to_gateway: RingHeader,
    /// Requests the worker took from `to_worker`, in order.
    taken: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= HEADER_SIZE);

/// Which end of the channel a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Gateway,
    Worker,
}

/// The three descriptors of a channel.
#[derive(Debug)]
pub struct ChannelFds {
    /// The memfd holding the segment.
    pub segment: OwnedFd,
    /// The eventfd the worker sleeps on.
    pub wake_worker: OwnedFd,
    /// The eventfd the gateway sleeps on.
    pub wake_gateway: OwnedFd,
}

impl ChannelFds {
    /// A new channel: a zeroed segment with its header written, and two
    /// eventfds; every descriptor close-on-exec.
    pub fn create(name: &str) -> std::io::Result<ChannelFds> {
        let name = std::ffi::CString::new(format!("shoal-channel-{name}")).unwrap_or_default();
        // SAFETY: memfd_create reads a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        let segment = owned(fd)?;
        // SAFETY: ftruncate on a descriptor we own.
        if unsafe { libc::ftruncate(segment.as_raw_fd(), SEGMENT_SIZE as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fds = ChannelFds { segment, wake_worker: eventfd()?, wake_gateway: eventfd()? };
        let mapping = Mapping::map(fds.segment.as_fd())?;
        let header = mapping.header_ptr();
        // SAFETY: the mapping is fresh and zeroed, private to this process
        // until the descriptors are passed on; the fields written are plain
        // integers.
        unsafe {
            (*header).magic = MAGIC;
            (*header).version = VERSION;
            (*header).ring_size = RING_SIZE as u32;
        }
        Ok(fds)
    }

    /// The channel a worker was started with, from [`crate::config::CHANNEL_FDS`].
    ///
    /// # Safety
    ///
    /// The descriptors must be the ones the node agent passed, open, and
    /// not owned by anything else in this process.
    pub unsafe fn inherited(raw: [RawFd; 3]) -> ChannelFds {
        // SAFETY: the caller's contract.
        unsafe {
            ChannelFds {
                segment: OwnedFd::from_raw_fd(raw[0]),
                wake_worker: OwnedFd::from_raw_fd(raw[1]),
                wake_gateway: OwnedFd::from_raw_fd(raw[2]),
            }
        }
    }

    /// Duplicates of the descriptors (for another process to take over).
    pub fn try_clone(&self) -> std::io::Result<ChannelFds> {
        Ok(ChannelFds {
            segment: self.segment.try_clone()?,
            wake_worker: self.wake_worker.try_clone()?,
            wake_gateway: self.wake_gateway.try_clone()?,
        })
    }
}

fn owned(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor a system call just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory preconditions.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// The segment mapped into this process; unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the mapping is shared memory accessed through atomics and the
// rings' discipline; the pointer itself may move between threads.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: BorrowedFd<'_>) -> std::io::Result<Mapping> {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes the stat it is given.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if stat.st_size != SEGMENT_SIZE as libc::off_t {
            return Err(std::io::Error::other(format!(
                "the channel segment is {} bytes, not {SEGMENT_SIZE}",
                stat.st_size
            )));
        }
        // SAFETY: a shared read-write mapping of a descriptor we hold, of
        // its whole (checked) size; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SEGMENT_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { base: NonNull::new(base.cast()).expect("mmap returned a non-null address") })
    }

    fn header_ptr(&self) -> *mut SegmentHeader {
        self.base.as_ptr().cast()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; nothing refers to it
        // any more (the rings hold an Arc of the mapping).
        unsafe { libc::munmap(self.base.as_ptr().cast(), SEGMENT_SIZE) };
    }
}

/// One end of a channel, mapped: the ring it writes, the ring it reads, the
/// eventfd it sleeps on and the one that wakes the peer.
pub struct Channel {
    side: Side,
    mapping: Arc<Mapping>,
    /// The ring this side writes.
    pub out: Ring,
    /// The ring this side reads.
    pub inbound: Ring,
    wake_me: AsyncFd<OwnedFd>,
    wake_peer: OwnedFd,
    /// The descriptors, kept for handing the channel over.
    segment: OwnedFd,
}

impl Channel {
    /// Maps the channel `fds` for `side`. Checks the segment's header.
    /// Needs a tokio runtime (the eventfd is registered with it).
    pub fn open(fds: ChannelFds, side: Side) -> std::io::Result<Channel> {
        let mapping = Arc::new(Mapping::map(fds.segment.as_fd())?);
        let header = mapping.header_ptr();
        // SAFETY: the header lies in the mapping; magic, version and
        // ring_size are plain integers, valid for any bits.
        let (magic, version, ring_size) = unsafe { ((*header).magic, (*header).version, (*header).ring_size) };
        if magic != MAGIC || version != VERSION || u64::from(ring_size) != RING_SIZE {
            return Err(std::io::Error::other(format!(
                "not a channel of this Shoal (magic {magic:#x}, version {version}, ring size {ring_size})"
            )));
        }
        let base = mapping.base.as_ptr();
        // SAFETY: the ring headers are in the header page, the data areas
        // follow it, all within SEGMENT_SIZE; the mapping lives in an Arc
        // the Channel keeps with the rings.
        let (to_worker, to_gateway) = unsafe {
            (
                Ring::new(&raw const (*header).to_worker, base.add(HEADER_SIZE), RING_SIZE),
                Ring::new(&raw const (*header).to_gateway, base.add(HEADER_SIZE + RING_SIZE as usize), RING_SIZE),
            )
        };
        let (out, inbound, wake_me, wake_peer) = match side {
            Side::Gateway => (to_worker, to_gateway, fds.wake_gateway, fds.wake_worker),
            Side::Worker => (to_gateway, to_worker, fds.wake_worker, fds.wake_gateway),
        };
        // SAFETY: the eventfd is owned by the AsyncFd and neither replaced
        // nor closed while it is registered.
        let wake_me = unsafe { AsyncFd::register_with_interest(wake_me, Interest::READABLE)? };
        Ok(Channel { side, mapping, out, inbound, wake_me, wake_peer, segment: fds.segment })
    }

    /// This end's side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Requests the worker took so far.
    pub fn taken(&self) -> &AtomicU64 {
        // SAFETY: an atomic in the mapping, which `self` keeps alive.
        unsafe { &(*self.mapping.header_ptr()).taken }
    }

    /// Writes a frame made of `parts` to the outbound ring, waking the
    /// peer if it said it sleeps. `Ok(Err(Full))`: no room now (nothing was
    /// written).
    pub fn send(&self, parts: &[&[u8]]) -> Result<Result<(), Full>, Corrupt> {
        let wake = self.out.push(parts)?;
        Ok(wake.map(|wake| {
            if wake {
                self.wake_peer();
            }
        }))
    }

    /// Wakes the peer (it sleeps on its eventfd).
    pub fn wake_peer(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to an eventfd we hold. A full
        // counter (EAGAIN) means the peer has wake-ups pending anyway.
        unsafe { libc::write(self.wake_peer.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Waits until the peer wakes this side (or did since the last wait),
    /// and clears the wake-up.
    pub async fn woken(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.wake_me.readable().await?;
            let mut count: u64 = 0;
            // SAFETY: reads 8 bytes into `count` from an eventfd we hold.
            let n = unsafe { libc::read(self.wake_me.get_ref().as_raw_fd(), (&raw mut count).cast(), 8) };
            if n == 8 {
                // The counter is zero now, so the descriptor is not
                // readable: forget the readiness without a second read that
                // would only say so. A wake-up after the read is a new edge,
                // which `clear_ready` does not clear.
                guard.clear_ready();
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(error);
        }
    }

    /// The segment's descriptor (for tests and for handing over).
    pub fn segment_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[tokio::test]
    async fn both_ends_see_each_others_frames_and_wake_each_other() {
        let fds = ChannelFds::create("test").unwrap();
        let worker_fds = fds.try_clone().unwrap();
        let gateway = Channel::open(fds, Side::Gateway).unwrap();
        let worker = Channel::open(worker_fds, Side::Worker).unwrap();
        let mut out = Vec::new();

        assert!(worker.inbound.consumer_sleeps());
        let wake = gateway.out.push(&[b"request"]).unwrap().unwrap();
        assert!(wake, "the worker said it sleeps");
        gateway.wake_peer();
        tokio::time::timeout(std::time::Duration::from_secs(5), worker.woken()).await.unwrap().unwrap();
        assert_eq!(worker.inbound.pop(&mut out).unwrap(), Some(false));
        assert_eq!(out, b"request");
        worker.taken().fetch_add(1, Ordering::SeqCst);
        assert_eq!(gateway.taken().load(Ordering::SeqCst), 1);

        assert!(!worker.out.push(&[b"response"]).unwrap().unwrap(), "the gateway did not say it sleeps");
        assert_eq!(gateway.inbound.pop(&mut out).unwrap(), Some(false));
        assert_eq!(out, b"response");
    }

    #[test]
    fn a_segment_of_another_size_or_kind_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let fds = ChannelFds::create("test").unwrap();
        // SAFETY: ftruncate on our own memfd.
        unsafe { libc::ftruncate(fds.segment.as_raw_fd(), 4096) };
        assert!(Channel::open(fds, Side::Worker).is_err());
        let fds = ChannelFds::create("test").unwrap();
        let mapping = Mapping::map(fds.segment.as_fd()).unwrap();
        // SAFETY: the header is in our own mapping.
        unsafe { (*mapping.header_ptr()).version = 99 };
        drop(mapping);
        let error = Channel::open(fds, Side::Worker).err().unwrap();
        assert!(error.to_string().contains("version 99"), "{error}");
    }
}
