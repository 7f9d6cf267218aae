//! The worker channel (issue 13): large bodies stream both ways through a
//! replica's shared-memory channel within their windows, so `shoal up`'s
//! memory does not grow with them; a client that stops reading holds up no
//! other request to its replica; and a worker that writes garbage into its
//! channel breaks only that channel: its request fails, the replica is
//! replaced, and `shoal up` keeps serving; and a request body the guest
//! does not read leaves nothing behind once the request is answered.
//!
//! The faulty sample's `/stream` and `/drain` stream their bodies (the SDK
//! holds whole bodies); the garbage test takes a worker's descriptors with
//! `pidfd_getfd`, so it
//! needs root.

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shoal_protocol::channel::frame::{self, kind};
use shoal_protocol::channel::{MAGIC, RING_SIZE, RingHeader, SEGMENT_SIZE, STREAM_WINDOW, window_cost};
use shoal_protocol::config::CHANNEL_FDS;

const MIB: u64 = 1 << 20;

/// How much `shoal up`'s resident set may grow above its idle size while
/// bodies of 10 MiB and more go through it. A stream holds at most its
/// window (256 KiB) in the gateway, plus connection buffers; a gateway
/// that held whole bodies would grow by about their size.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

type BodyClient = Client<HttpConnector, BoxBody<Bytes, Infallible>>;

fn body_client() -> BodyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `len` bytes of [`pattern`], made 64 KiB at a time as the connection
/// takes them (the client never holds the whole body either).
fn pattern_body(len: u64) -> BoxBody<Bytes, Infallible> {
    const CHUNK: u64 = 64 << 10;
    let chunks = (0..len.div_ceil(CHUNK)).map(move |k| {
        let (start, end) = (k * CHUNK, ((k + 1) * CHUNK).min(len));
        Ok::<_, Infallible>(Frame::data(Bytes::from((start..end).map(pattern).collect::<Vec<u8>>())))
    });
    StreamBody::new(futures::stream::iter(chunks)).boxed()
}

/// Reads a response body as it comes, checking byte `i` against
/// `expected(i)` without keeping it; returns how many bytes there were.
async fn check_body(mut body: hyper::body::Incoming, expected: impl Fn(u64) -> u8) -> u64 {
    let mut at = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|error| panic!("the body failed after {at} bytes: {error}"));
        let Ok(data) = frame.into_data() else { continue };
        for &byte in data.iter() {
            assert_eq!(byte, expected(at), "byte {at} of the body differs");
            at += 1;
        }
    }
    at
}

/// POSTs `len` bytes of [`pattern`] to `/drain` (chunked: the length is not
/// declared, the body streams from the client) and checks that the guest
/// counted all of them with the right digest.
async fn upload(shoal: &Shoal, client: &BodyClient, len: u64, pause_ms: u64) -> Duration {
    let started = Instant::now();
    let request =
        hyper::Request::post(shoal.url(&format!("/drain?pause_ms={pause_ms}"))).body(pattern_body(len)).unwrap();
    let response = client.request(request).await.expect("the upload failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the answer failed").to_bytes();
    let body = String::from_utf8_lossy(&body);
    let digest = (0..len).step_by(1 << 16).fold(FNV_OFFSET, |hash, start| {
        let bytes: Vec<u8> = (start..(start + (1 << 16)).min(len)).map(pattern).collect();
        fnv1a(hash, &bytes)
    });
    assert_eq!((status, body.as_ref()), (200, format!("{len} {digest:016x}\n").as_str()), "the guest saw another body");
    started.elapsed()
}

/// GETs `/stream?mb=<mb>` and checks every byte of the answer.
async fn download(shoal: &Shoal, client: &BodyClient, mb: u64) -> Duration {
    let started = Instant::now();
    let request = hyper::Request::get(shoal.url(&format!("/stream?mb={mb}"))).body(Full::new(Bytes::new()).boxed());
    let response = client.request(request.unwrap()).await.expect("the download failed");
    assert_eq!(response.status(), 200);
    let len = check_body(response.into_body(), pattern).await;
    assert_eq!(len, mb * MIB, "the response was cut short");
    started.elapsed()
}

/// POSTs `len` bytes of [`pattern`] with their length to `/echo` (which
/// answers `POST\n` and the body) and checks every byte of the answer.
async fn echo(shoal: &Shoal, client: &BodyClient, len: u64) -> Duration {
    let started = Instant::now();
    let request = hyper::Request::post(shoal.url("/echo")).header("content-length", len).body(pattern_body(len));
    let response = client.request(request.unwrap()).await.expect("the echo failed");
    assert_eq!(response.status(), 200);
    let echoed = check_body(response.into_body(), |i| if i < 5 { b"POST\n"[i as usize] } else { pattern(i - 5) }).await;
    assert_eq!(echoed, len + 5, "the echo was cut short");
    started.elapsed()
}

/// A user uploading or downloading files relies on a 10 MiB request body
/// reaching the guest whole and in order, a 10 MiB response reaching the
/// client whole and in order, and neither being held in `shoal up`'s
/// memory: both stream through the channel within their windows, even
/// when the guest reads the upload slower than the client sends it.
#[tokio::test(flavor = "multi_thread")]
async fn ten_mib_bodies_stream_both_ways_without_growing_the_gateway() {
    let (mut shoal, _dir) = start_faulty("bigbody", "replicas: 1\ntimeout: 60s\nlimits:\n  requestBody: 16Mi");
    let client = body_client();
    // Warm up: the ring pages mapped, connection buffers and allocator
    // arenas made, by 2 MiB each way.
    upload(&shoal, &client, 2 * MIB, 0).await;
    download(&shoal, &client, 2).await;
    echo(&shoal, &client, 2 * MIB).await;
    let baseline = rss_kib(shoal.pid()).expect("shoal's resident set");

    let sampler = RssPeak::start(shoal.pid());
    // The guest sleeps 100 ms after each MiB: the client sends faster than
    // the guest reads, so the body waits in the client (window closed),
    // not in the gateway.
    let slow_upload = upload(&shoal, &client, 10 * MIB, 100).await;
    let fast_upload = upload(&shoal, &client, 10 * MIB, 0).await;
    let down = download(&shoal, &client, 10).await;
    let both = echo(&shoal, &client, 10 * MIB).await;
    let peak = sampler.finish();

    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "shoal up: {baseline} KiB idle, {peak} KiB at peak (+{growth} KiB); 10 MiB upload to a slow reader {slow_upload:?}, \
         to a fast one {fast_upload:?}, download {down:?}, echo {both:?}"
    );
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "shoal up grew by {growth} KiB (from {baseline} to {peak} KiB) while 10 MiB bodies went through it"
    );
    assert!(shoal.stop().success());
}

/// An HTTP/1.1 response read from a raw socket, its body decoded (by
/// length or chunked) as it is asked for.
struct RawResponse {
    socket: TcpStream,
    /// Bytes read from the socket and not yet decoded.
    buffered: Vec<u8>,
    framing: Framing,
}

enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before a chunk's size line.
    Chunked(Option<u64>),
    Done,
}

impl RawResponse {
    /// Sends `request` on a new connection whose receive buffer is small
    /// (so the kernel holds little of a response this client does not
    /// read) and reads the response's head: (the response, status).
    fn send(shoal: &Shoal, request: &str) -> (RawResponse, u16) {
        let socket = TcpStream::connect(shoal.addr).unwrap();
        let size: libc::c_int = 64 << 10;
        // SAFETY: setsockopt reads `size` for the length given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut response = RawResponse { socket, buffered: Vec::new(), framing: Framing::Done };
        response.socket.write_all(request.as_bytes()).unwrap();
        let end = loop {
            if let Some(end) = response.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(response.fill() > 0, "the connection closed before the response head");
        };
        let head = String::from_utf8_lossy(&response.buffered[..end]).to_ascii_lowercase();
        response.buffered.drain(..end + 4);
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let header = |name: &str| {
            head.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
        };
        response.framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked(None)
        } else if let Some(len) = header("content-length") {
            Framing::Length(len.parse().expect("a content-length"))
        } else {
            panic!("a response without a length: {head}")
        };
        (response, status)
    }

    /// Reads more from the socket; 0 at its end.
    fn fill(&mut self) -> usize {
        let mut buf = [0u8; 64 << 10];
        let n = self.socket.read(&mut buf).expect("reading the response failed");
        self.buffered.extend_from_slice(&buf[..n]);
        n
    }

    /// The next body bytes; `None` at the body's end.
    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.framing {
                Framing::Done => return None,
                Framing::Length(left) => {
                    if left == 0 {
                        self.framing = Framing::Done;
                        return None;
                    }
                    if self.buffered.is_empty() {
                        assert!(self.fill() > 0, "the connection closed with {left} body bytes to come");
                    }
                    let n = (left as usize).min(self.buffered.len());
                    self.framing = Framing::Length(left - n as u64);
                    return Some(self.buffered.drain(..n).collect());
                }
                Framing::Chunked(None) => {
                    let Some(end) = self.buffered.windows(2).position(|w| w == b"\r\n") else {
                        assert!(self.fill() > 0, "the connection closed inside a chunk size");
                        continue;
                    };
                    let line = String::from_utf8_lossy(&self.buffered[..end]).into_owned();
                    self.buffered.drain(..end + 2);
                    let size = u64::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("a chunk size");
                    if size == 0 {
                        // The last chunk; then an empty trailer line.
                        while !self.buffered.starts_with(b"\r\n") {
                            assert!(self.fill() > 0, "the connection closed before the end of a chunked body");
                        }
                        self.framing = Framing::Done;
                        return None;
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Chunked(Some(left)) => {
                    if left == 0 {
                        while self.buffered.len() < 2 {
                            assert!(self.fill() > 0, "the connection closed after a chunk");
                        }
                        assert_eq!(&self.buffered[..2], b"\r\n", "a chunk did not end with CRLF");
                        self.buffered.drain(..2);
                        self.framing = Framing::Chunked(None);
                        continue;
                    }
                    if self.buffered.is_empty() {
                        assert!(self.fill() > 0, "the connection closed inside a chunk");
                    }
                    let n = (left as usize).min(self.buffered.len());
                    self.framing = Framing::Chunked(Some(left - n as u64));
                    return Some(self.buffered.drain(..n).collect());
                }
            }
        }
    }
}

/// A user relies on one slow client (a phone on a bad network downloading
/// a large file) not slowing anyone else down: while a client has stopped
/// reading a 64 MiB response, 50 other requests to the same (only) replica
/// are answered at once, `shoal up` does not hold the unread response in
/// memory, and when the client reads again the whole response arrives
/// intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_holds_up_no_other_request() {
    // Small instances: the replica runs several requests at once, so the
    // stalled response's instance leaves room for the others.
    let (mut shoal, _dir) = start_faulty("slowreader", "replicas: 1\ntimeout: 60s\nresources:\n  instanceMemory: 8Mi");
    let client = body_client();
    download(&shoal, &client, 2).await;
    let baseline = rss_kib(shoal.pid()).expect("shoal's resident set");

    const MB: u64 = 64;
    let (mut slow, status) = RawResponse::send(&shoal, &format!("GET /stream?mb={MB} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(status, 200);
    // Read the first few KiB, checking them, then stop reading.
    let mut at = 0u64;
    while at < 8 << 10 {
        let chunk = slow.next().expect("the body ended early");
        for byte in chunk {
            assert_eq!(byte, pattern(at), "byte {at} of the slow response differs");
            at += 1;
        }
    }
    let stalled = Instant::now();
    let sampler = RssPeak::start(shoal.pid());

    // Meanwhile, 50 requests to the same replica, 10 at a time.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let others = async {
        for _ in 0..5 {
            let batch: Vec<_> = (0..10)
                .map(|_| {
                    let url = shoal.url("/");
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let (status, body) = get(&url, None).await;
                        (status, body, started.elapsed())
                    })
                })
                .collect();
            for task in batch {
                let (status, body, took) = task.await.unwrap();
                assert_eq!(status, 200, "{body}");
                slowest = slowest.max(took);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), others)
        .await
        .expect("requests to the replica waited for the client that does not read");
    let all = started.elapsed();
    // Keep the client stalled for 5 s in all, with the memory sampled.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stalled.elapsed())).await;
    let peak = sampler.finish();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "50 requests during the stall: {all:?} in all, the slowest {slowest:?}; shoal up: {baseline} KiB before, \
         {peak} KiB at peak during the stall (+{growth} KiB)"
    );
    assert!(all < Duration::from_secs(10), "50 requests took {all:?} while a client did not read");
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "shoal up grew by {growth} KiB (from {baseline} to {peak} KiB) while a {MB} MiB response was not read"
    );

    // The client reads again: the rest arrives, intact.
    let resumed = Instant::now();
    while let Some(chunk) = slow.next() {
        for byte in chunk {
            assert_eq!(byte, pattern(at), "byte {at} of the slow response differs");
            at += 1;
        }
    }
    assert_eq!(at, MB * MIB, "the slow response was cut short");
    eprintln!("the rest of the {MB} MiB response came in {:?} once read", resumed.elapsed());
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    assert!(shoal.stop().success());
}

/// What a test writes into a worker's channel, as if the worker were
/// broken or hostile.
#[derive(Debug, Clone, Copy)]
enum Garbage {
    /// `to_gateway`'s tail more than a ring ahead of its head.
    TailPastRing,
    /// A frame whose length field says 4 GiB.
    HugeFrameLength,
    /// A well-framed frame of an unknown kind.
    UnknownKind,
    /// Body bytes for the request in flight past the window the gateway
    /// granted (two data frames of 200 KiB; the window is 256 KiB).
    PastTheWindow,
    /// `to_worker`'s head (which the worker writes) past its tail: the
    /// gateway finds it when it next writes (a probe, within 0.5 s).
    ReaderPastWriter,
    /// Body chunks of one byte for the request in flight, one more than
    /// the window pays for: without the per-chunk cost, 256 Ki of them
    /// would fit in the window and the gateway would queue them all.
    TinyChunks,
}

impl Garbage {
    /// What the gateway's warning says the worker did.
    fn reason(self, stream: u32) -> String {
        match self {
            Garbage::TailPastRing => "more than a ring ahead of the reader".into(),
            Garbage::HugeFrameLength => "a frame of 4294967295 bytes where 8 were published".into(),
            Garbage::UnknownKind => "a frame with frame kind 99".into(),
            Garbage::PastTheWindow => {
                let cost = window_cost(PAST_WINDOW_FRAME);
                format!(
                    "stream {stream} overran its window: a chunk of {PAST_WINDOW_FRAME} bytes costs {cost}, {} were left",
                    u64::from(STREAM_WINDOW) - cost
                )
            }
            Garbage::ReaderPastWriter => "past the writer at".into(),
            Garbage::TinyChunks => {
                let (cost, fit) = (window_cost(1), TinyChunks::fit());
                format!(
                    "stream {stream} overran its window: a chunk of 1 bytes costs {cost}, {} were left",
                    u64::from(STREAM_WINDOW) - fit * cost
                )
            }
        }
    }
}

/// The body bytes in each of [`Garbage::PastTheWindow`]'s data frames.
const PAST_WINDOW_FRAME: usize = 200 << 10;

/// [`Garbage::TinyChunks`]' arithmetic.
struct TinyChunks;

impl TinyChunks {
    /// One-byte chunks a fresh window pays for.
    fn fit() -> u64 {
        u64::from(STREAM_WINDOW) / window_cost(1)
    }
}

/// The segment's header: `SegmentHeader` (repr(C)) is a u64 magic, a u32
/// version and a u32 ring size, 48 bytes of padding, then the two rings'
/// headers, `to_worker` first.
const TO_WORKER_HEADER: usize = 64;
const RING_SIZE_OFFSET: usize = 12;
/// Where the rings' data begins: after the header page.
const HEADER_SIZE: usize = SEGMENT_SIZE - 2 * RING_SIZE as usize;
const _: () = assert!(size_of::<RingHeader>() == 256 && TO_WORKER_HEADER + 2 * 256 + 8 <= HEADER_SIZE);

#[derive(Clone, Copy)]
enum Direction {
    ToWorker,
    ToGateway,
}

/// A worker's end of its channel, as a test running as root can take it:
/// its segment and the pipe that wakes the gateway, duplicated out of the
/// worker process (`pidfd_getfd`), the segment mapped here.
struct Tap {
    base: *mut u8,
    _segment: OwnedFd,
    wake_gateway: OwnedFd,
}

impl Tap {
    fn open(pid: u32) -> Tap {
        // SAFETY: pidfd_open and pidfd_getfd take plain integers and
        // return a new descriptor or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as libc::c_int;
        assert!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor the kernel just gave us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let take = |target: i32| {
            // SAFETY: as above.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) } as libc::c_int;
            assert!(fd >= 0, "pidfd_getfd({pid}, {target}): {}", std::io::Error::last_os_error());
            // SAFETY: as above.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        let (segment, wake_gateway) = (take(CHANNEL_FDS[0]), take(CHANNEL_FDS[2]));
        // SAFETY: a shared mapping of the segment's size; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SEGMENT_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                segment.as_raw_fd(),
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap of the worker's segment: {}", std::io::Error::last_os_error());
        let tap = Tap { base: base.cast(), _segment: segment, wake_gateway };
        let mut magic = [0u8; 8];
        let mut ring_size = [0u8; 4];
        // SAFETY: both lie in the header page of the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(tap.base, magic.as_mut_ptr(), 8);
            std::ptr::copy_nonoverlapping(tap.base.add(RING_SIZE_OFFSET), ring_size.as_mut_ptr(), 4);
        }
        assert_eq!(u64::from_le_bytes(magic), MAGIC, "fd {} of worker {pid} is not a channel segment", CHANNEL_FDS[0]);
        assert_eq!(u64::from(u32::from_le_bytes(ring_size)), RING_SIZE);
        tap
    }

    fn header(&self, ring: Direction) -> &RingHeader {
        let offset = match ring {
            Direction::ToWorker => TO_WORKER_HEADER,
            Direction::ToGateway => TO_WORKER_HEADER + size_of::<RingHeader>(),
        };
        // SAFETY: the ring headers lie in the mapping, which lives as long
        // as `self`; they are atomics, valid for any bits.
        unsafe { &*self.base.add(offset).cast::<RingHeader>() }
    }

    fn data(&self, ring: Direction) -> *mut u8 {
        let offset = match ring {
            Direction::ToWorker => HEADER_SIZE,
            Direction::ToGateway => HEADER_SIZE + RING_SIZE as usize,
        };
        // SAFETY: within the mapping.
        unsafe { self.base.add(offset) }
    }

    /// Copies `bytes` into `ring` at stream position `position` (wrapping).
    fn write(&self, ring: Direction, position: u64, bytes: &[u8]) {
        let data = self.data(ring);
        for (k, &byte) in bytes.iter().enumerate() {
            // SAFETY: the index is taken modulo the ring's size.
            unsafe { data.add(((position + k as u64) % RING_SIZE) as usize).write_volatile(byte) };
        }
    }

    fn read(&self, ring: Direction, position: u64, len: usize) -> Vec<u8> {
        let data = self.data(ring);
        // SAFETY: as in `write`.
        (0..len).map(|k| unsafe { data.add(((position + k as u64) % RING_SIZE) as usize).read_volatile() }).collect()
    }

    /// Writes `frames` into `to_gateway` as the worker would (each after its
    /// length), and publishes them.
    fn push(&self, frames: &[Vec<u8>]) {
        let header = self.header(Direction::ToGateway);
        let mut tail = header.tail.load(Ordering::SeqCst);
        for frame in frames {
            self.write(Direction::ToGateway, tail, &(frame.len() as u32).to_le_bytes());
            self.write(Direction::ToGateway, tail + 4, frame);
            tail += 4 + frame.len() as u64;
        }
        header.tail.store(tail, Ordering::SeqCst);
    }

    /// The stream id of the last request for `path` the gateway wrote,
    /// found by reading `to_worker` from its start (a fresh replica's ring
    /// has not wrapped yet).
    fn stream_of(&self, path: &str) -> u32 {
        let tail = self.header(Direction::ToWorker).tail.load(Ordering::SeqCst);
        assert!(tail <= RING_SIZE, "to_worker wrapped ({tail} bytes written): cannot find the request's stream");
        let (mut at, mut found) = (0, None);
        while at < tail {
            let len = u32::from_le_bytes(self.read(Direction::ToWorker, at, 4).try_into().unwrap()) as usize;
            let bytes = self.read(Direction::ToWorker, at + 4, len);
            if let Ok(frame::Frame::Request(head, _)) = frame::decode(Bytes::from(bytes))
                && head.path_and_query.starts_with(path)
            {
                found = Some(head.stream);
            }
            at += 4 + len as u64;
        }
        found.unwrap_or_else(|| panic!("no request for {path} in the worker's ring"))
    }

    /// Writes `garbage` into the channel.
    fn inject(&self, garbage: Garbage, stream: u32) {
        match garbage {
            Garbage::TailPastRing => {
                let header = self.header(Direction::ToGateway);
                let head = header.head.load(Ordering::SeqCst);
                header.tail.store(head + 3 * RING_SIZE, Ordering::SeqCst);
            }
            Garbage::HugeFrameLength => {
                let header = self.header(Direction::ToGateway);
                let tail = header.tail.load(Ordering::SeqCst);
                self.write(Direction::ToGateway, tail, &u32::MAX.to_le_bytes());
                self.write(Direction::ToGateway, tail + 4, &[0; 8]);
                header.tail.store(tail + 12, Ordering::SeqCst);
            }
            Garbage::UnknownKind => self.push(&[vec![99, 0, 0, 0, 0]]),
            Garbage::PastTheWindow => {
                let mut data = frame::data_header(stream, false).to_vec();
                data.resize(data.len() + PAST_WINDOW_FRAME, b'x');
                assert_eq!(data[0], kind::DATA);
                self.push(&[data.clone(), data]);
            }
            Garbage::TinyChunks => {
                let mut data = frame::data_header(stream, false).to_vec();
                data.push(b'x');
                let frames = vec![data; TinyChunks::fit() as usize + 1];
                self.push(&frames);
            }
            Garbage::ReaderPastWriter => {
                let header = self.header(Direction::ToWorker);
                let tail = header.tail.load(Ordering::SeqCst);
                header.head.store(tail + 4096, Ordering::SeqCst);
            }
        }
    }

    /// Wakes the gateway, as the worker does after writing a frame.
    fn wake_gateway(&self) {
        let one = 1u8;
        // SAFETY: writes 1 byte from `one` to the pipe that wakes the
        // gateway, which we hold.
        let n = unsafe { libc::write(self.wake_gateway.as_raw_fd(), (&raw const one).cast(), 1) };
        assert_eq!(n, 1, "waking the gateway: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `open` mapped; nothing refers to it.
        unsafe { libc::munmap(self.base.cast(), SEGMENT_SIZE) };
    }
}

/// The only replica's worker, once it serves and has served for more than
/// a second (so that its replacement starts at once, without back-off),
/// and is not `old`: (pid, replica name).
async fn serving_replica(shoal: &Shoal, old: Option<u32>) -> (u32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids: Vec<u32> = shoal.worker_pids().into_iter().filter(|&p| Some(p) != old && alive(p)).collect();
        // The worker process exists a little before the admin API lists
        // its pid (the replica is Starting until it reports ready).
        let listed = |pid: u32| {
            shoal
                .replicas()
                .iter()
                .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
                .and_then(|r| r["name"].as_str().map(str::to_owned))
        };
        if let [pid] = pids[..]
            && let Some(name) = listed(pid)
        {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (status, body) = get(&shoal.url("/"), None).await;
            if status == 200 && body == format!("You've hit {name}\n") && alive(pid) {
                return (pid, name);
            }
        }
        assert!(Instant::now() < deadline, "no new replica serves; workers {:?}; output:\n{}", pids, shoal.dump());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `done`, or panics after `limit` with `what`.
async fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An operator relies on a broken or hostile worker (a bug in the worker,
/// memory corrupted by a guest escaping its sandbox) never taking down the
/// gateway: whatever a worker writes into its channel (positions out of
/// bounds, a frame length of 4 GiB, a frame of an unknown kind, body bytes
/// past the window, a read position past the write position), the request
/// it was serving is answered `502` at once, `shoal up` stays up, says the
/// worker broke the channel protocol (a `ChannelBroken` event), kills it,
/// and a new worker replaces it and serves.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_a_workers_channel_breaks_only_that_replica() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: taking another process's descriptors (pidfd_getfd) needs root");
        return;
    }
    let (mut shoal, _dir) = start_faulty("garbage", "replicas: 1\ntimeout: 30s\nresources:\n  instanceMemory: 8Mi");
    let rounds = [
        (Garbage::TailPastRing, "GET"),
        (Garbage::HugeFrameLength, "POST"),
        (Garbage::UnknownKind, "GET"),
        (Garbage::PastTheWindow, "GET"),
        (Garbage::ReaderPastWriter, "POST"),
        (Garbage::TinyChunks, "GET"),
    ];
    let mut old = None;
    for (garbage, method) in rounds {
        let (pid, name) = serving_replica(&shoal, old).await;
        old = Some(pid);
        // A request in flight on the replica: the guest sleeps in it.
        let needle = format!("{name} | faulty: {method} /sleep");
        let seen_before = shoal.count_lines(|l| l.ends_with(&needle));
        let request = {
            let url = shoal.url("/sleep?ms=3000");
            tokio::spawn(async move {
                let request = hyper::Request::builder().method(method).uri(url).body(Full::new(Bytes::from("x")));
                let client = Client::builder(TokioExecutor::new()).build_http();
                let response = client.request(request.unwrap()).await.expect("request failed");
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                (status, String::from_utf8_lossy(&body).into_owned(), Instant::now())
            })
        };
        wait_until(Duration::from_secs(20), "the guest never got the request", || {
            shoal.count_lines(|l| l.ends_with(&needle)) > seen_before
        })
        .await;

        let broken = format!("replica/{name} ChannelBroken:");
        let broken_before = shoal.count_lines(|l| l.contains(&broken));
        // The worker is stopped while the test writes, so that it cannot
        // write meanwhile (a probe's answer) and undo the garbage.
        // SAFETY: a signal to a worker of our own shoal.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        wait_until(Duration::from_secs(10), "the worker did not stop", || is_stopped(pid)).await;
        let tap = Tap::open(pid);
        let stream = match garbage {
            Garbage::PastTheWindow | Garbage::TinyChunks => tap.stream_of("/sleep"),
            _ => 0,
        };
        let reason = garbage.reason(stream);
        let warned = |l: &str| l.contains("broke the channel protocol") && l.contains(&reason);
        let warned_before = shoal.count_lines(warned);
        let injected = Instant::now();
        tap.inject(garbage, stream);
        tap.wake_gateway();
        wait_until(Duration::from_secs(20), &format!("no ChannelBroken event after {garbage:?}"), || {
            shoal.count_lines(|l| l.contains(&broken)) > broken_before
        })
        .await;
        let noticed = injected.elapsed();
        drop(tap);
        if alive(pid) {
            // SAFETY: as above (it may be killed already).
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }

        let (status, body, answered) = request.await.unwrap();
        eprintln!(
            "{garbage:?} ({method}): ChannelBroken {noticed:?} after the garbage, the request answered {status} \
             {:?} after it",
            answered.saturating_duration_since(injected)
        );
        assert_eq!(status, 502, "{garbage:?}: the request in flight got {status}: {body}");
        // The warning is on stderr, the event on stdout: either may be
        // read first.
        wait_until(Duration::from_secs(20), &format!("{garbage:?}: no warning naming {reason:?}"), || {
            shoal.count_lines(warned) > warned_before
        })
        .await;
        wait_until(Duration::from_secs(20), "the broken worker was not killed", || !alive(pid)).await;
        assert!(alive(shoal.pid()), "shoal up died of a worker's garbage");
    }
    // The last one replaced too, and serving.
    let (_, name) = serving_replica(&shoal, old).await;
    let (status, events) = shoal.admin_get("/v1/events").await;
    assert_eq!(status, 200);
    let events: Vec<serde_json::Value> = serde_json::from_str(&events).unwrap();
    let broken = events.iter().filter(|e| e["reason"] == "ChannelBroken" && e["object"] == format!("replica/{name}"));
    assert_eq!(broken.count(), rounds.len(), "one ChannelBroken event per round: {events:#?}");
    // The broken replicas' segments were unmapped: only the live one is.
    wait_until(Duration::from_secs(10), "the broken replicas' channel segments are still mapped", || {
        channel_segments(shoal.pid()) == 1
    })
    .await;
    assert!(shoal.stop().success());
}

/// How many channel segments (`memfd:shoal-channel-…`) process `pid` has
/// mapped: `shoal up` maps one per replica whose link is open.
fn channel_segments(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:shoal-channel-"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes.len()
}

/// How a client's upload ended.
#[derive(Debug, PartialEq, Eq)]
enum Upload {
    /// Every byte was taken.
    Sent,
    /// The gateway closed the connection (after answering, that is fine).
    Closed(String),
    /// Not all taken 8 s after the answer, the connection still open.
    Stalled(u64),
}

/// A user relies on an upload to a route that answers without reading it
/// (an early `401`, `413` or redirect, here `/stream?mb=0`) getting that
/// answer and then not hanging: the gateway reads the rest of the body and
/// throws it away (nginx's lingering close), so a client that writes its
/// whole body before reading is not cut off, and the connection serves the
/// next request; and on `shoal up` keeping nothing of that request in the
/// channel once it is answered: when the replica is replaced, its channel
/// is released (unmapped), and `shoal up` stops promptly.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_the_guest_does_not_read_leaves_nothing_behind() {
    let (mut shoal, _dir) = start_faulty("unread", "replicas: 1\ntimeout: 10s\nresources:\n  instanceMemory: 8Mi");
    let (pid, _) = serving_replica(&shoal, None).await;
    assert_eq!(channel_segments(shoal.pid()), 1);

    const LEN: usize = 10 << 20;
    let mut socket = TcpStream::connect(shoal.addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let head = format!("POST /stream?mb=0 HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
    socket.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'u'; 64 << 10];
    let mut sent = 0;
    // More than the stream's window, less than the sockets hold.
    while sent < 1 << 20 {
        socket.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    let mut answer = [0u8; 4096];
    let n = socket.read(&mut answer).expect("no answer while the body was being sent");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The rest of the body: taken, or the connection closed, at once; not
    // left hanging.
    let answered = Instant::now();
    let upload = loop {
        if sent >= LEN {
            break Upload::Sent;
        }
        if answered.elapsed() > Duration::from_secs(8) {
            break Upload::Stalled(sent as u64);
        }
        match socket.write(&chunk[..chunk.len().min(LEN - sent)]) {
            Ok(0) => break Upload::Closed("write returned 0".into()),
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => break Upload::Closed(e.to_string()),
        }
    };
    let upload_ended = answered.elapsed();
    assert_eq!(upload, Upload::Sent, "the rest of the body was not taken ({upload_ended:?} after the answer)");
    // The same connection serves the next request.
    socket.write_all(b"GET /stream?mb=0 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut next = [0u8; 4096];
    let n = socket.read(&mut next).expect("no answer to a second request on the connection");
    let next = String::from_utf8_lossy(&next[..n]).into_owned();
    assert!(next.starts_with("HTTP/1.1 200"), "second request on the connection: {next}");
    drop(socket);

    // Replace the replica: its link must go, and its segment with it.
    // SAFETY: kill on a worker of our own shoal.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    serving_replica(&shoal, Some(pid)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while channel_segments(shoal.pid()) != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let segments = channel_segments(shoal.pid());
    let stopping = Instant::now();
    assert!(shoal.stop().success());
    let stop = stopping.elapsed();
    eprintln!(
        "upload after the answer: {upload:?} after {upload_ended:?}; channel segments mapped after the \
         replacement: {segments}; shoal up stopped in {stop:?}"
    );
    assert_eq!(segments, 1, "the replaced replica's channel is still mapped in shoal up");
    assert!(
        !matches!(upload, Upload::Stalled(_)) && upload_ended < Duration::from_secs(3),
        "the connection hung after the answer: {upload:?} of {LEN} bytes taken, ended {upload_ended:?} after it"
    );
    assert!(stop < Duration::from_secs(5), "shoal up took {stop:?} to stop");
}
