//! The gateway's end of one replica's channel ([`shoal_protocol::channel`]):
//! requests go out as frames, responses come back as frames, with no HTTP
//! between the two processes.
//!
//! One task per link (the driver) reads everything the worker writes and
//! hands it to the stream it belongs to; request tasks write their frames
//! themselves, one at a time under a lock. Each stream's state (its
//! response head, body chunks, windows, failure) sits behind a small mutex
//! with a `Notify` that wakes its request task.
//!
//! Flow control, both ways: a stream's body bytes never exceed the window
//! its receiver granted. The driver always drains the ring (a chunk waits
//! in its stream's queue until the client reads it), so one slow client
//! holds at most a window of memory and never stops the others.
//!
//! The worker is not trusted: a frame that does not decode, a stream that
//! sends past its window, or a position out of bounds breaks the link.
//! Every stream then fails: one the worker had not taken yet as
//! [`LinkError::NotTaken`] (safe to send anywhere again), the others as
//! [`LinkError::Failed`]; and [`Link::broken`] tells the replica's owner to
//! replace it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use shoal_protocol::channel::frame::{self, Frame as Wire, RequestHead, ResponseHead};
use shoal_protocol::channel::{
    Channel, ChannelFds, Corrupt, Credit, FRAMES_PER_TURN, MAX_DATA, STREAM_WINDOW, Side, chunk_room, window_cost,
};
use tokio::sync::Notify;

mod calls;

use calls::CallStream;
pub use calls::{BoxBody, BoxError, CallBody, CallHandler, CallOutcome};

/// Why a request through a link did not get a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The worker never took the request: it ran nowhere, and may be sent
    /// to another replica whatever its method.
    #[error("the replica did not take the request: {0}")]
    NotTaken(String),
    /// The worker took the request, then failed (died, broke the protocol,
    /// reset the stream) before answering.
    #[error("the replica failed: {0}")]
    Failed(String),
}

/// A request body on its way to a worker.
pub enum RequestBody<B> {
    /// Held whole: sent in the request's frame.
    Full(Bytes),
    /// Streamed from the client, within the worker's window.
    Stream(B),
}

/// The gateway's end of one replica's channel.
pub struct Link {
    /// The replica's name, for logs.
    name: String,
    channel: Channel,
    /// Serializes frame writes; holds a scratch buffer for encoding.
    writer: Mutex<Writer>,
    /// Wakes writers waiting for room in the ring.
    space: Notify,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    next_stream: AtomicU32,
    probes: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    next_nonce: AtomicU64,
    /// Set once the link is closed or broken; then every stream has failed.
    down: AtomicBool,
    /// Why it went down.
    reason: Mutex<Option<String>>,
    /// Wakes the driver and [`Link::broken`] waiters when it goes down.
    down_notify: Notify,
    /// Whether it went down because the worker broke the protocol.
    corrupt: AtomicBool,
    /// Why the owner closed it; the driver drains the ring, then goes down.
    closing: Mutex<Option<String>>,
    /// Set when the driver returned.
    driver_gone: AtomicBool,
    /// The worker's calls in progress, by id ([`frame::CALL_BIT`] set).
    calls: Mutex<HashMap<u32, Arc<CallStream>>>,
    /// What serves the worker's calls; without it every call fails.
    call_handler: std::sync::OnceLock<CallHandler>,
}

struct Writer {
    scratch: Vec<u8>,
    /// Request frames written so far: the next request's ordinal.
    requests: u64,
}

/// One request's state, shared by its request task and the driver.
struct Stream {
    state: Mutex<StreamState>,
    /// The request's place among the requests written (0, 1, 2, …).
    ordinal: AtomicU64,
}

#[derive(Default)]
struct StreamState {
    /// Who waits for the response (its head, then its body).
    reader: Option<Waker>,
    /// Who waits to send more of the request body.
    writer: Option<Waker>,
    head: Option<(ResponseHead, Bytes)>,
    chunks: VecDeque<Bytes>,
    /// The response body ended.
    end: bool,
    /// Why the stream failed, if it did.
    failed: Option<LinkError>,
    /// Request body bytes the worker allows more of.
    send_window: u64,
    /// Response body bytes the worker may still send before the gateway
    /// grants more.
    receive_window: u64,
    /// The worker wrote something for this stream: it took the request,
    /// whatever `taken` or a later reset says.
    heard: bool,
}

impl Link {
    /// Opens the gateway's end of `fds` and starts its driver (on the
    /// current tokio runtime).
    pub fn open(name: &str, fds: ChannelFds) -> std::io::Result<Arc<Link>> {
        let link = Arc::new(Link {
            name: name.to_owned(),
            channel: Channel::open(fds, Side::Gateway)?,
            writer: Mutex::new(Writer { scratch: Vec::with_capacity(4096), requests: 0 }),
            space: Notify::new(),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            probes: Mutex::new(HashMap::new()),
            next_nonce: AtomicU64::new(1),
            down: AtomicBool::new(false),
            reason: Mutex::new(None),
            down_notify: Notify::new(),
            corrupt: AtomicBool::new(false),
            closing: Mutex::new(None),
            driver_gone: AtomicBool::new(false),
            calls: Mutex::new(HashMap::new()),
            call_handler: std::sync::OnceLock::new(),
        });
        tokio::spawn(Link::drive(link.clone()));
        Ok(link)
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the link is down (closed, or broken by the worker).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Completes once the worker broke the protocol: its replica must be
    /// replaced.
    pub async fn broken(&self) {
        loop {
            let notified = self.down_notify.notified();
            if self.corrupt.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Closes the link (its worker exited): the driver hands on what the
    /// worker wrote before it exited, then every stream still open fails,
    /// those the worker had not taken as [`LinkError::NotTaken`].
    pub fn close(&self, why: &str) {
        *self.closing.lock().expect("link lock") = Some(why.to_owned());
        self.down_notify.notify_waiters();
        if self.driver_gone.load(Ordering::SeqCst) {
            self.go_down(why.to_owned(), false);
        }
    }

    fn go_down(&self, why: String, corrupt: bool) {
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        if corrupt {
            tracing::warn!(replica = %self.name, reason = %why, "the replica broke the channel protocol");
            self.corrupt.store(true, Ordering::SeqCst);
        }
        *self.reason.lock().expect("link lock") = Some(why.clone());
        let taken = self.channel.taken().load(Ordering::SeqCst);
        let streams: Vec<Arc<Stream>> = self.streams.lock().expect("link lock").drain().map(|(_, s)| s).collect();
        for stream in streams {
            let ordinal = stream.ordinal.load(Ordering::SeqCst);
            let heard = stream.state.lock().expect("stream lock").heard;
            let error = if ordinal >= taken && !corrupt && !heard {
                LinkError::NotTaken(why.clone())
            } else {
                LinkError::Failed(why.clone())
            };
            stream.fail(error);
        }
        self.probes.lock().expect("link lock").clear();
        self.cancel_calls();
        self.down_notify.notify_waiters();
        self.space.notify_waiters();
    }

    fn down_error(&self, taken: bool) -> LinkError {
        let why = self.reason.lock().expect("link lock").clone().unwrap_or_else(|| "the link is closed".into());
        if taken { LinkError::Failed(why) } else { LinkError::NotTaken(why) }
    }

    /// Sends a request and waits for its response head. The response's
    /// body streams from the worker as the returned body is read.
    pub async fn request<B>(
        self: &Arc<Self>,
        head: &RequestHead,
        body: RequestBody<B>,
    ) -> Result<Response<LinkBody>, LinkError>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Send,
    {
        if self.is_down() {
            return Err(self.down_error(false));
        }
        let (inline, rest) = match body {
            RequestBody::Full(bytes) if bytes.len() <= MAX_DATA => (bytes, None),
            RequestBody::Full(bytes) => (Bytes::new(), Some(PumpSource::Full(bytes))),
            RequestBody::Stream(body) => (Bytes::new(), Some(PumpSource::Stream(body))),
        };
        let stream = Arc::new(Stream {
            state: Mutex::new(StreamState {
                // The body sent in the request's own frame is a chunk too.
                send_window: u64::from(STREAM_WINDOW) - window_cost(inline.len()),
                receive_window: u64::from(STREAM_WINDOW),
                ..StreamState::default()
            }),
            ordinal: AtomicU64::new(u64::MAX),
        });
        let id = self.register(&stream);
        // From here the stream is registered: dropped early (the client
        // went away, the deadline passed), it is reset and forgotten.
        let mut guard = StreamGuard { link: self.clone(), id, armed: true };

        self.send_request(id, rest.is_none(), head, &inline, &stream).await?;
        if let Some(source) = rest {
            tokio::spawn(pump(self.clone(), stream.clone(), id, source));
        }

        let waited = std::future::poll_fn(|cx| {
            let mut state = stream.state.lock().expect("stream lock");
            if let Some(head) = state.head.take() {
                return Poll::Ready(Ok(head));
            }
            if let Some(error) = state.failed.clone() {
                return Poll::Ready(Err(error));
            }
            state.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let (response_head, first) = match waited {
            Ok(head) => head,
            Err(error) => {
                guard.armed = false;
                self.forget(id);
                return Err(error);
            }
        };
        guard.armed = false;
        let declared =
            response_head.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut response = Response::new(LinkBody {
            link: self.clone(),
            stream,
            id,
            first: (!first.is_empty()).then_some(first),
            credit: Credit::default(),
            done: response_head.end_stream,
            remaining: declared,
        });
        *response.status_mut() = response_head.status;
        *response.headers_mut() = response_head.headers;
        if response_head.end_stream {
            self.forget(id);
        }
        Ok(response)
    }

    /// Gives `stream` the next stream id that no open stream has (ids wrap
    /// after 2³² requests; a stream open that long keeps its id).
    fn register(&self, stream: &Arc<Stream>) -> u32 {
        let mut streams = self.streams.lock().expect("link lock");
        loop {
            // The worker's calls have the high bit; requests never do.
            let id = self.next_stream.fetch_add(1, Ordering::Relaxed) & !frame::CALL_BIT;
            if let std::collections::hash_map::Entry::Vacant(entry) = streams.entry(id) {
                entry.insert(stream.clone());
                return id;
            }
        }
    }

    /// Writes a request frame, waiting for room; records its ordinal.
    async fn send_request(
        &self,
        id: u32,
        end_stream: bool,
        head: &RequestHead,
        body: &[u8],
        stream: &Stream,
    ) -> Result<(), LinkError> {
        loop {
            let needed = {
                let mut writer = self.writer.lock().expect("link lock");
                let Writer { scratch, requests } = &mut *writer;
                frame::encode_request(scratch, id, end_stream, head, body);
                match self.channel.out().push(&[scratch]) {
                    Ok(Ok(wake)) => {
                        stream.ordinal.store(*requests, Ordering::SeqCst);
                        *requests += 1;
                        drop(writer);
                        if wake {
                            self.channel.wake_peer();
                        }
                        return Ok(());
                    }
                    Ok(Err(_full)) => scratch.len(),
                    Err(corrupt) => {
                        drop(writer);
                        self.go_down(corrupt.to_string(), true);
                        return Err(self.down_error(false));
                    }
                }
            };
            self.wait_for_space(needed).await.map_err(|()| self.down_error(false))?;
        }
    }

    /// Writes a frame made of `parts`, waiting for room.
    async fn send(&self, parts: &[&[u8]]) -> Result<(), ()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        loop {
            if self.is_down() {
                return Err(());
            }
            {
                let _writer = self.writer.lock().expect("link lock");
                match self.channel.send(parts) {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(_full)) => {}
                    Err(corrupt) => {
                        drop(_writer);
                        self.go_down(corrupt.to_string(), true);
                        return Err(());
                    }
                }
            }
            self.wait_for_space(len).await?;
        }
    }

    /// Writes a small frame from a place that cannot wait (a drop, a
    /// body's poll): now if there is room, else from a task that waits for
    /// it.
    fn send_soon(self: &Arc<Self>, bytes: &[u8]) {
        if self.is_down() {
            return;
        }
        let full = {
            let _writer = self.writer.lock().expect("link lock");
            match self.channel.send(&[bytes]) {
                Ok(Ok(())) => false,
                Ok(Err(_full)) => true,
                Err(_corrupt) => false,
            }
        };
        if full {
            let (link, bytes) = (self.clone(), bytes.to_vec());
            tokio::spawn(async move {
                let _ = link.send(&[&bytes]).await;
            });
        }
    }

    async fn wait_for_space(&self, len: usize) -> Result<(), ()> {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match self.channel.out().producer_waits(len) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(corrupt) => {
                self.go_down(corrupt.to_string(), true);
                return Err(());
            }
        }
        if self.is_down() {
            return Err(());
        }
        notified.await;
        if self.is_down() { Err(()) } else { Ok(()) }
    }

    /// Forgets a stream whose exchange is over (answered, cancelled or
    /// failed). A request body still being sent stops going to the worker
    /// there: its pump is woken, reads what is left and throws it away
    /// (bounded, see [`discard`]), then drops it.
    fn forget(&self, id: u32) {
        let stream = self.streams.lock().expect("link lock").remove(&id);
        if let Some(stream) = stream {
            stream.fail(LinkError::Failed("the exchange is over".to_owned()));
        }
    }

    /// An HTTP probe (`spec.readiness`, `spec.liveness`): `GET path` sent
    /// to this replica alone, as Kubernetes' `httpGet` probes are. Passes
    /// on a status from 200 to 399 within `timeout`; else the reason, as
    /// events show it (the status and the start of the body, or what
    /// went wrong).
    pub async fn http_probe(self: &Arc<Self>, path: &str, timeout: Duration) -> Result<http::StatusCode, String> {
        /// How much of a failing answer's body the reason quotes.
        const QUOTED: usize = 120;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::USER_AGENT, http::HeaderValue::from_static("shoal-probe"));
        let head = RequestHead {
            stream: 0,
            end_stream: true,
            scheme: frame::Scheme::Http,
            authority: "localhost".to_owned(),
            method: http::Method::GET,
            path_and_query: path.to_owned(),
            client: String::new(),
            hops: 0,
            deadline_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1),
            connect_ms: 0,
            headers,
        };
        let exchange = async {
            let response = self
                .request::<http_body_util::Empty<Bytes>>(&head, RequestBody::Full(Bytes::new()))
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status();
            // Read what is needed: nothing of a pass, the start of a failure.
            let mut quoted = Vec::new();
            if !(200..400).contains(&status.as_u16()) {
                let mut body = response.into_body();
                while quoted.len() < QUOTED {
                    match http_body_util::BodyExt::frame(&mut body).await {
                        Some(Ok(frame)) => quoted.extend(frame.into_data().unwrap_or_default()),
                        _ => break,
                    }
                }
            }
            Ok::<_, String>((status, quoted))
        };
        let (status, quoted) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("GET {path}: no answer within {timeout:?}"))?
            .map_err(|why| format!("GET {path}: {why}"))?;
        if (200..400).contains(&status.as_u16()) {
            return Ok(status);
        }
        let text = String::from_utf8_lossy(&quoted[..quoted.len().min(QUOTED)]);
        let text = text.trim();
        Err(if text.is_empty() {
            format!("GET {path} answered {status}")
        } else {
            format!("GET {path} answered {status}: {text:?}")
        })
    }

    /// Asks the worker whether it answers, within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> bool {
        if self.is_down() {
            return false;
        }
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.probes.lock().expect("link lock").insert(nonce, sender);
        let answered = async {
            self.send(&[&frame::encode_probe(false, nonce)]).await.ok()?;
            receiver.await.ok()
        };
        let ok = tokio::time::timeout(timeout, answered).await.is_ok_and(|a| a.is_some());
        self.probes.lock().expect("link lock").remove(&nonce);
        ok
    }

    /// The driver: reads every frame the worker writes, until the link goes
    /// down (its owner closes it when the worker exits: what the worker
    /// wrote before is handed on first).
    async fn drive(this: Arc<Link>) {
        Link::drive_until_down(&this).await;
        this.driver_gone.store(true, Ordering::SeqCst);
        let closing = this.closing.lock().expect("link lock").clone();
        if let Some(why) = closing {
            this.go_down(why, false);
        }
    }

    async fn drive_until_down(this: &Arc<Link>) {
        loop {
            if this.is_down() {
                return;
            }
            let closing = this.closing.lock().expect("link lock").is_some();
            let frames = match this.channel.receive(|bytes| this.dispatch(bytes)) {
                Ok(frames) => frames,
                Err(corrupt) => {
                    this.go_down(corrupt.to_string(), true);
                    return;
                }
            };
            // The worker may have made room in the other ring.
            this.space.notify_waiters();
            if frames == FRAMES_PER_TURN {
                // A worker that never stops writing (or rewinds the ring)
                // does not keep this runtime thread to itself.
                tokio::task::yield_now().await;
                continue;
            }
            if closing {
                return;
            }
            if !this.channel.inbound().consumer_sleeps() {
                continue;
            }
            let woken = {
                let down = this.down_notify.notified();
                tokio::pin!(down);
                down.as_mut().enable();
                if this.is_down() {
                    return;
                }
                if this.closing.lock().expect("link lock").is_some() {
                    this.channel.inbound().consumer_awake();
                    continue;
                }
                tokio::select! {
                    woken = this.channel.woken() => woken,
                    () = down => Ok(()),
                }
            };
            this.channel.inbound().consumer_awake();
            if let Err(error) = woken {
                this.go_down(format!("cannot wait on the channel: {error}"), false);
                return;
            }
        }
    }

    /// Hands one frame from the worker to its stream.
    fn dispatch(self: &Arc<Self>, bytes: Bytes) -> Result<(), Corrupt> {
        let wire = frame::decode(bytes)?;
        match &wire {
            Wire::Call(..) => return self.call_dispatch(wire),
            Wire::Data { stream, .. } | Wire::Window { stream, .. } | Wire::Reset { stream, .. }
                if frame::is_call(*stream) =>
            {
                return self.call_dispatch(wire);
            }
            Wire::Response(head, _) if frame::is_call(head.stream) => {
                return Err(Corrupt(format!("a response on call stream {:#x}, which the worker opened", head.stream)));
            }
            _ => {}
        }
        match wire {
            Wire::Response(head, body) => {
                let Some(stream) = self.stream(head.stream) else { return Ok(()) };
                let mut state = stream.state.lock().expect("stream lock");
                state.heard = true;
                if state.head.is_some() || state.failed.is_some() {
                    return Ok(());
                }
                take_window(&mut state, body.len(), head.stream)?;
                state.end = head.end_stream;
                state.head = Some((head, body));
                let reader = state.reader.take();
                drop(state);
                wake(reader);
            }
            Wire::Data { stream: id, end, data } => {
                let Some(stream) = self.stream(id) else { return Ok(()) };
                let mut state = stream.state.lock().expect("stream lock");
                state.heard = true;
                take_window(&mut state, data.len(), id)?;
                if !data.is_empty() {
                    state.chunks.push_back(data);
                }
                state.end |= end;
                let reader = state.reader.take();
                drop(state);
                wake(reader);
            }
            Wire::Window { stream: id, increment } => {
                let Some(stream) = self.stream(id) else { return Ok(()) };
                let mut state = stream.state.lock().expect("stream lock");
                state.heard = true;
                state.send_window = state.send_window.saturating_add(u64::from(increment));
                let writer = state.writer.take();
                drop(state);
                wake(writer);
            }
            Wire::Reset { stream: id, reason } => {
                let Some(stream) = self.stream(id) else { return Ok(()) };
                let heard = stream.state.lock().expect("stream lock").heard;
                // A refusal after the worker answered or read part of the
                // request is not believed: the request may have run.
                let error = if reason == frame::reset::REFUSED && !heard {
                    LinkError::NotTaken("the replica is shutting down".to_owned())
                } else {
                    LinkError::Failed(format!("the worker reset the stream (reason {reason})"))
                };
                stream.fail(error);
            }
            Wire::ProbeAck { nonce } => {
                if let Some(sender) = self.probes.lock().expect("link lock").remove(&nonce) {
                    let _ = sender.send(());
                }
            }
            Wire::Request(..) | Wire::Probe { .. } | Wire::CallFail { .. } | Wire::Call(..) => {
                return Err(Corrupt("a worker sent a frame only the gateway sends".to_owned()));
            }
        }
        Ok(())
    }

    fn stream(&self, id: u32) -> Option<Arc<Stream>> {
        self.streams.lock().expect("link lock").get(&id).cloned()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.down.store(true, Ordering::SeqCst);
        self.down_notify.notify_waiters();
    }
}

/// Takes a chunk of `len` bytes off a stream's receive window (its
/// [`window_cost`]); more than the window is a broken worker.
fn take_window(state: &mut StreamState, len: usize, id: u32) -> Result<(), Corrupt> {
    let cost = window_cost(len);
    if cost > state.receive_window {
        return Err(Corrupt(format!(
            "stream {id} overran its window: a chunk of {len} bytes costs {cost}, {} were left",
            state.receive_window
        )));
    }
    state.receive_window -= cost;
    Ok(())
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Stream {
    fn fail(&self, error: LinkError) {
        let mut state = self.state.lock().expect("stream lock");
        if state.failed.is_none() {
            state.failed = Some(error);
        }
        let (reader, writer) = (state.reader.take(), state.writer.take());
        drop(state);
        wake(reader);
        wake(writer);
    }
}

/// Resets and forgets a stream whose request task went away before its
/// response head came.
struct StreamGuard {
    link: Arc<Link>,
    id: u32,
    armed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.armed {
            self.link.forget(self.id);
            self.link.send_soon(&frame::encode_reset(self.id, frame::reset::CANCEL));
        }
    }
}

enum PumpSource<B> {
    Full(Bytes),
    Stream(B),
}

/// Sends a request body that did not fit in the request's frame, within the
/// worker's window. A body that fails (the client broke it, or it went past
/// the service's limit) resets the stream.
async fn pump<B>(link: Arc<Link>, stream: Arc<Stream>, id: u32, source: PumpSource<B>)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    let mut body = match source {
        PumpSource::Full(bytes) => {
            let ok = send_body_bytes(&link, &stream, id, bytes, true).await;
            if !ok {
                link.send_soon(&frame::encode_reset(id, frame::reset::CANCEL));
            }
            return;
        }
        PumpSource::Stream(body) => body,
    };
    loop {
        // The client's next part, unless the stream ends first (then the
        // body is dropped, even if the client never sends another byte).
        let next = std::future::poll_fn(|cx| {
            {
                let mut state = stream.state.lock().expect("stream lock");
                if state.failed.is_some() {
                    return Poll::Ready(None);
                }
                state.writer = Some(cx.waker().clone());
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let Some(next) = next else { return discard(body).await };
        match next {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if !send_body_bytes(&link, &stream, id, data, false).await {
                    return discard(body).await;
                }
            }
            None => {
                let end = frame::data_header(id, true);
                let _ = link.send(&[&end]).await;
                return;
            }
            Some(Err(_)) => {
                link.send_soon(&frame::encode_reset(id, frame::reset::CANCEL));
                stream.fail(LinkError::Failed("the request body failed".to_owned()));
                return;
            }
        }
    }
}

/// How long the rest of a request body is read and thrown away after its
/// exchange ended: at most this long in all...
const LINGER_TIME: Duration = Duration::from_secs(30);
/// ...and at most this long without a byte from the client (nginx's
/// `lingering_time` and `lingering_timeout`).
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and throws away what is left of a request body whose exchange is
/// over (the guest answered without reading it all, or the replica failed),
/// as nginx's lingering close does: a client that sends its whole body
/// before reading gets the answer instead of a reset connection, and the
/// connection can carry its next request. Bounded by [`LINGER_TIME`],
/// [`LINGER_TIMEOUT`] and the service's body limit (the body errs past
/// it); then the body is dropped, which closes the connection.
async fn discard<B>(mut body: B)
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let until = tokio::time::Instant::now() + LINGER_TIME;
    loop {
        let wait = (tokio::time::Instant::now() + LINGER_TIMEOUT).min(until);
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(wait, next).await {
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}

/// Sends `data` as data frames within the stream's window; `end` ends the
/// body with the last one. False if the stream or the link failed.
async fn send_body_bytes(link: &Link, stream: &Stream, id: u32, mut data: Bytes, end: bool) -> bool {
    loop {
        let allowed = std::future::poll_fn(|cx| {
            let mut state = stream.state.lock().expect("stream lock");
            if state.failed.is_some() || link.is_down() {
                return Poll::Ready(None);
            }
            if chunk_room(state.send_window) > 0 || data.is_empty() {
                return Poll::Ready(Some(state.send_window));
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(allowed) = allowed else { return false };
        let n = data.len().min(MAX_DATA).min(chunk_room(allowed));
        let chunk = data.split_to(n);
        let last = end && data.is_empty();
        stream.state.lock().expect("stream lock").send_window -= window_cost(n);
        if link.send(&[&frame::data_header(id, last), &chunk]).await.is_err() {
            return false;
        }
        if data.is_empty() {
            return true;
        }
    }
}

/// A response body streaming from a worker.
pub struct LinkBody {
    link: Arc<Link>,
    stream: Arc<Stream>,
    id: u32,
    /// The bytes that came in the response's frame.
    first: Option<Bytes>,
    /// What was read since the last window granted back.
    credit: Credit,
    done: bool,
    /// Bytes still to come, when the response declared its length: once
    /// they came the body is whole, and dropping it resets nothing.
    remaining: Option<u64>,
}

impl HttpBody for LinkBody {
    type Data = Bytes;
    type Error = LinkError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, LinkError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            this.count(first.len());
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut state = this.stream.state.lock().expect("stream lock");
        if let Some(chunk) = state.chunks.pop_front() {
            drop(state);
            this.count(chunk.len());
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.end {
            drop(state);
            this.done = true;
            this.link.forget(this.id);
            return Poll::Ready(None);
        }
        if let Some(error) = state.failed.clone() {
            drop(state);
            this.done = true;
            this.link.forget(this.id);
            return Poll::Ready(Some(Err(error)));
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        (self.done && self.first.is_none()) || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            // The whole body came with the head: its length is known, and
            // the client gets it as a content-length rather than chunks.
            None if self.done => SizeHint::with_exact(self.first.as_ref().map_or(0, |b| b.len() as u64)),
            None => SizeHint::default(),
        }
    }
}

impl LinkBody {
    /// Counts bytes handed on, and grants the worker more window once half
    /// of it was read.
    fn count(&mut self, len: usize) {
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(len as u64);
        }
        if let Some(grant) = self.credit.consume(len) {
            self.stream.state.lock().expect("stream lock").receive_window += u64::from(grant);
            self.link.send_soon(&frame::encode_window(self.id, grant));
        }
    }
}

impl Drop for LinkBody {
    fn drop(&mut self) {
        if self.remaining == Some(0) && !self.done {
            // Whole: the worker's end frame may still be on its way.
            self.link.forget(self.id);
        } else if !self.done {
            self.link.forget(self.id);
            self.link.send_soon(&frame::encode_reset(self.id, frame::reset::CANCEL));
        }
    }
}
