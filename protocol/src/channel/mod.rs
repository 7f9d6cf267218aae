//! The channel between the gateway and one replica: a memory segment both
//! processes map, holding two rings of frames, and two pipes to wake a
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
//! The node agent creates the segment (`memfd_create`, sealed at its size)
//! and two pipes for each worker process it forks, passes the segment and
//! the worker's ends of the pipes to the worker as fds 4, 5 and 6 (see
//! [`crate::config`]), and keeps the segment and the gateway's ends: plain
//! descriptors, which a new `shoal up` could be handed over a Unix
//! socket (`SCM_RIGHTS`) to take the channel over without restarting the
//! worker.
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
//! - Each side sleeps on the read end of its own pipe; the other writes a
//!   byte to it only when the ring flags say the side sleeps (see
//!   [`ring`]).
//!   Under load no frame costs a system call.
//!
//! # Invariants
//!
//! - The gateway trusts nothing the worker wrote: positions, lengths and
//!   frames are checked, and a check that fails ends the channel (the
//!   replica is treated as dead: its requests fail or go elsewhere, and it
//!   is replaced).
//! - Nothing the worker can do to the descriptors it holds stops the
//!   gateway: the segment is sealed (it can be neither shrunk, which would
//!   make the gateway's next access fault, nor grown), and each end of a
//!   pipe is an open file of its own, so the worker cannot make the
//!   gateway's ends blocking: a wake-up never blocks the gateway.
//! - A request the worker has not taken (`taken` says how many it took, in
//!   order) never ran: it can go to another replica whatever its method.
//! - Body bytes on a stream never exceed the window the receiver granted
//!   ([`STREAM_WINDOW`] at first, more with each `WINDOW` frame), so a slow
//!   reader of one stream holds at most a window of memory and never stops
//!   the ring for the others. Each body chunk also costs [`CHUNK_COST`] of
//!   the window ([`window_cost`]): the receiver keeps every chunk it queues,
//!   and without that charge a window of one-byte chunks would hold some
//!   fifty times its size in bookkeeping.

pub mod frame;
pub mod ring;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use ring::{Corrupt, Full, MAX_FRAME, Ring, RingHeader};

/// `SHOALCH1`: a segment of this protocol.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHOALCH1");
/// The protocol's version (2: body chunks cost [`CHUNK_COST`] of the
/// window; 3: a request carries its hops and deadline, and workers send
/// calls).
pub const VERSION: u32 = 3;
/// Bytes in each ring (a power of two).
pub const RING_SIZE: u64 = 1 << 20;
/// The segment's header size.
const HEADER_SIZE: usize = 4096;
/// The segment's size.
pub const SEGMENT_SIZE: usize = HEADER_SIZE + 2 * RING_SIZE as usize;
/// Body bytes a sender may send on a stream before the receiver grants
/// more.
pub const STREAM_WINDOW: u32 = 256 << 10;
/// What a body chunk costs of its stream's window besides its bytes: about
/// what the receiver spends on queueing it (a `Bytes`, its place in the
/// queue, the allocator's share).
pub const CHUNK_COST: u64 = 64;
/// The largest body part in one frame.
pub const MAX_DATA: usize = 64 << 10;

/// What a body chunk of `len` bytes costs of its stream's window, on both
/// sides: its bytes and [`CHUNK_COST`]. An empty chunk (a data frame that
/// only ends the body) costs nothing: the receiver queues nothing for it.
pub fn window_cost(len: usize) -> u64 {
    if len == 0 { 0 } else { len as u64 + CHUNK_COST }
}

/// The most body bytes one chunk may carry within `window` (0 when the
/// window cannot pay for a chunk's cost and a byte).
pub fn chunk_room(window: u64) -> usize {
    usize::try_from(window.saturating_sub(CHUNK_COST)).unwrap_or(usize::MAX)
}

/// A stream's receiving side: counts the chunks its reader consumed and
/// says when to grant the sender more window (all that was consumed, once
/// it reaches half a window; so a sender that waits for room for a whole
/// chunk always gets it once the reader has caught up).
#[derive(Debug, Default)]
pub struct Credit {
    consumed: u64,
}

impl Credit {
    /// Counts a chunk of `len` bytes handed to the reader; returns the
    /// increment to grant in a `WINDOW` frame, when it is time to.
    pub fn consume(&mut self, len: usize) -> Option<u32> {
        self.consumed += window_cost(len);
        if self.consumed < u64::from(STREAM_WINDOW / 2) {
            return None;
        }
        // Below a window and a chunk: always fits.
        Some(u32::try_from(std::mem::take(&mut self.consumed)).unwrap_or(u32::MAX))
    }
}

/// Frames [`Channel::receive`] hands on in one call.
pub const FRAMES_PER_TURN: usize = 256;

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

/// One side's descriptors of a channel.
#[derive(Debug)]
pub struct ChannelFds {
    /// The memfd holding the segment.
    pub segment: OwnedFd,
    /// The read end of the pipe this side sleeps on.
    pub wake_me: OwnedFd,
    /// The write end of the pipe the peer sleeps on.
    pub wake_peer: OwnedFd,
}

/// The seals a channel's segment carries: its size is fixed for good.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

impl ChannelFds {
    /// A new channel: a zeroed segment of [`SEGMENT_SIZE`], sealed, with its
    /// header written, and two pipes; every descriptor close-on-exec.
    /// Returns the gateway's descriptors and the worker's.
    pub fn create(name: &str) -> std::io::Result<(ChannelFds, ChannelFds)> {
        let name = std::ffi::CString::new(format!("shoal-channel-{name}")).unwrap_or_default();
        // SAFETY: memfd_create reads a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        let segment = owned(fd)?;
        // SAFETY: ftruncate and fcntl on a descriptor we own.
        unsafe {
            if libc::ftruncate(segment.as_raw_fd(), SEGMENT_SIZE as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(segment.as_raw_fd(), libc::F_ADD_SEALS, SEALS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (worker_sleeps, wake_worker) = pipe()?;
        let (gateway_sleeps, wake_gateway) = pipe()?;
        let mapping = Mapping::map(segment.as_fd())?;
        let header = mapping.header_ptr();
        // SAFETY: the mapping is fresh and zeroed, private to this process
        // until the descriptors are passed on; the fields written are plain
        // integers.
        unsafe {
            (*header).magic = MAGIC;
            (*header).version = VERSION;
            (*header).ring_size = RING_SIZE as u32;
        }
        let worker = ChannelFds { segment: segment.try_clone()?, wake_me: worker_sleeps, wake_peer: wake_gateway };
        Ok((ChannelFds { segment, wake_me: gateway_sleeps, wake_peer: wake_worker }, worker))
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
                wake_me: OwnedFd::from_raw_fd(raw[1]),
                wake_peer: OwnedFd::from_raw_fd(raw[2]),
            }
        }
    }
}

/// A pipe, both ends close-on-exec and non-blocking: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((owned(fds[0])?, owned(fds[1])?))
}

fn owned(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor a system call just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
        // SAFETY: fcntl on a descriptor we hold.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SEALS != SEALS {
            return Err(std::io::Error::other("the channel segment is not sealed at its size"));
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
/// pipe it sleeps on and the one that wakes the peer.
pub struct Channel {
    side: Side,
    // Declared (so dropped) after the rings, which point into it.
    out: Ring,
    inbound: Ring,
    mapping: Arc<Mapping>,
    wake_me: AsyncFd<OwnedFd>,
    wake_peer: OwnedFd,
    /// The descriptors, kept for handing the channel over.
    segment: OwnedFd,
}

impl Channel {
    /// Maps the channel `fds` for `side`. Checks the segment's header.
    /// Needs a tokio runtime (the pipe this side sleeps on is registered
    /// with it).
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
        let (out, inbound) = match side {
            Side::Gateway => (to_worker, to_gateway),
            Side::Worker => (to_gateway, to_worker),
        };
        // SAFETY: the pipe is owned by the AsyncFd and neither replaced
        // nor closed while it is registered.
        let wake_me = unsafe { AsyncFd::register_with_interest(fds.wake_me, Interest::READABLE)? };
        Ok(Channel { side, out, inbound, mapping, wake_me, wake_peer: fds.wake_peer, segment: fds.segment })
    }

    /// The ring this side writes.
    pub fn out(&self) -> &Ring {
        &self.out
    }

    /// The ring this side reads.
    pub fn inbound(&self) -> &Ring {
        &self.inbound
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

    /// Hands each frame the peer wrote, in order, to `each`: at most
    /// [`FRAMES_PER_TURN`] of them, so that a peer that never stops
    /// writing does not keep the caller's thread (it yields when this
    /// returns that many). Wakes the peer if it waits for room. Returns how
    /// many frames it handed on.
    pub fn receive(&self, mut each: impl FnMut(Bytes) -> Result<(), Corrupt>) -> Result<usize, Corrupt> {
        let mut frames = 0;
        while frames < FRAMES_PER_TURN {
            let mut buf = Vec::new();
            let Some(wake_writer) = self.inbound.pop(&mut buf)? else { break };
            if wake_writer {
                self.wake_peer();
            }
            each(Bytes::from(buf))?;
            frames += 1;
        }
        Ok(frames)
    }

    /// Wakes the peer (it sleeps on the read end of its pipe).
    pub fn wake_peer(&self) {
        let one = 1u8;
        // SAFETY: writes one byte from `one` to a pipe we hold. This end is
        // non-blocking and only ours (the peer's end is another open file),
        // so this never blocks: a full pipe (EAGAIN) means the peer has
        // wake-ups pending anyway, and a peer that closed its end (EPIPE;
        // SIGPIPE is ignored, as Rust programs do) is seen by its exit.
        unsafe { libc::write(self.wake_peer.as_raw_fd(), (&raw const one).cast(), 1) };
    }

    /// Waits until the peer wakes this side (or did since the last wait),
    /// and takes the wake-ups. Once the peer has closed its end, never
    /// returns: a peer that is gone is noticed by its exit.
    pub async fn woken(&self) -> std::io::Result<()> {
        if self.woken_or_closed().await? {
            return Ok(());
        }
        std::future::pending().await
    }

    /// Like [`Channel::woken`], but says when every copy of the peer's end
    /// is closed: `false` (a worker whose gateways are all gone).
    pub async fn woken_or_closed(&self) -> std::io::Result<bool> {
        let mut bytes = [0u8; 64];
        loop {
            let mut guard = self.wake_me.readable().await?;
            // SAFETY: reads at most `bytes.len()` bytes into `bytes` from a
            // non-blocking pipe we hold.
            let n = unsafe { libc::read(self.wake_me.get_ref().as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len()) };
            match n {
                0 => return Ok(false),
                n if n > 0 => {
                    // Fewer bytes than asked for: none are left, so forget
                    // the readiness without a second `read` that would only
                    // say so (a byte written after is a new edge, which
                    // `clear_ready` does not clear).
                    if (n as usize) < bytes.len() {
                        guard.clear_ready();
                    }
                    return Ok(true);
                }
                _ => {}
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
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

    /// The receiver grants back what was consumed, chunk costs included,
    /// once half a window is; empty chunks cost nothing.
    #[test]
    fn credit_grants_all_consumed_at_half_a_window() {
        let mut credit = Credit::default();
        let chunk = MAX_DATA;
        assert_eq!(credit.consume(0), None);
        assert_eq!(credit.consume(chunk - 100), None);
        // With its cost, a second chunk passes half of 256 KiB: all of
        // both is granted, and counting starts again.
        let grant = credit.consume(chunk).expect("half a window consumed");
        assert_eq!(u64::from(grant), window_cost(chunk - 100) + window_cost(chunk));
        assert_eq!(credit.consume(1), None);
    }

    #[tokio::test]
    async fn both_ends_see_each_others_frames_and_wake_each_other() {
        let (fds, worker_fds) = ChannelFds::create("test").unwrap();
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
    fn a_segment_that_could_change_size_or_is_of_another_kind_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let (fds, _worker) = ChannelFds::create("test").unwrap();
        // SAFETY: ftruncate on our own memfd.
        let shrunk = unsafe { libc::ftruncate(fds.segment.as_raw_fd(), 4096) };
        assert_ne!(shrunk, 0, "a worker could shrink the segment under the gateway");
        assert!(Channel::open(fds, Side::Gateway).is_ok());

        // The right size, but unsealed.
        let (_, worker) = ChannelFds::create("test").unwrap();
        // SAFETY: memfd_create reads a NUL-terminated name; ftruncate on it.
        let segment = unsafe {
            let fd = owned(libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC)).unwrap();
            assert_eq!(libc::ftruncate(fd.as_raw_fd(), SEGMENT_SIZE as libc::off_t), 0);
            fd
        };
        let fds = ChannelFds { segment, wake_me: worker.wake_me, wake_peer: worker.wake_peer };
        let error = Channel::open(fds, Side::Worker).err().unwrap();
        assert!(error.to_string().contains("not sealed"), "{error}");

        let (fds, _worker) = ChannelFds::create("test").unwrap();
        let mapping = Mapping::map(fds.segment.as_fd()).unwrap();
        // SAFETY: the header is in our own mapping.
        unsafe { (*mapping.header_ptr()).version = 99 };
        drop(mapping);
        let error = Channel::open(fds, Side::Worker).err().unwrap();
        assert!(error.to_string().contains("version 99"), "{error}");
    }

    /// A worker that makes its pipe blocking and never reads its wake-ups
    /// cannot make the gateway's wake-up block.
    #[test]
    fn waking_a_peer_that_never_reads_does_not_block() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let (fds, worker) = ChannelFds::create("test").unwrap();
        // SAFETY: fcntl on the worker's descriptor, which we hold.
        unsafe {
            libc::fcntl(worker.wake_me.as_raw_fd(), libc::F_SETFL, 0);
            libc::fcntl(worker.wake_peer.as_raw_fd(), libc::F_SETFL, 0);
        }
        let gateway = Arc::new(Channel::open(fds, Side::Gateway).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let waker = gateway.clone();
        // Detached: if it blocks, the test fails rather than hangs.
        std::thread::spawn(move || {
            // Far more than the pipes hold.
            for _ in 0..1_000_000 {
                waker.wake_peer();
            }
            done.send(()).unwrap();
        });
        finished.recv_timeout(std::time::Duration::from_secs(30)).expect("wake_peer blocked");
    }
}
