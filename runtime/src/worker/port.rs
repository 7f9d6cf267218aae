//! The worker's end of its channel to the gateway
//! ([`shoal_protocol::channel`]): requests come in as frames and become
//! `http::Request`s for `wasmtime-wasi-http`; the guest's responses go back
//! as frames. No HTTP is parsed or written here.
//!
//! One task (the driver, [`Port::run`]) reads every frame the gateway
//! writes: a request starts a handler task; body frames, window updates
//! and resets go to their stream; probes are answered at once. Handler
//! tasks write their responses themselves, under the port's writer lock,
//! within the window the gateway granted for each stream.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use shoal_protocol::channel::frame::{self, Frame as Wire, RequestHead, ResponseHead};
use shoal_protocol::channel::{Channel, Credit, FRAMES_PER_TURN, MAX_DATA, STREAM_WINDOW, window_cost};
use tokio::sync::Notify;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The worker's end of the channel.
pub(crate) struct Port {
    channel: Channel,
    /// Serializes frame writes; holds a scratch buffer for encoding heads.
    writer: Mutex<Vec<u8>>,
    /// Wakes writers waiting for room in the ring.
    space: Notify,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    /// Requests taken and not yet answered in full.
    in_flight: AtomicUsize,
    /// Wakes the drain when the last request finishes.
    idle: Notify,
    /// Set on SIGTERM: new requests are refused.
    draining: AtomicBool,
    /// The gateway closed its end: nothing more is sent.
    closed: AtomicBool,
    /// The next call's id (without [`frame::CALL_BIT`]).
    next_call: AtomicU32,
}

/// One request's state, shared by the driver, its handler and the guest's
/// body reader.
pub(crate) struct Stream {
    id: u32,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    /// Request body chunks not yet read by the guest.
    chunks: VecDeque<Bytes>,
    /// The request body ended.
    end: bool,
    /// Who waits for the request body.
    reader: Option<Waker>,
    /// Response body bytes the gateway allows more of.
    send_window: u64,
    /// Who waits to send more of the response body.
    writer: Option<Waker>,
    /// The gateway reset the stream (the client went away, the deadline
    /// passed): the guest is stopped, nothing more is sent.
    cancelled: bool,
    /// The guest's task, to stop it on a reset.
    guest: Option<tokio::task::AbortHandle>,
    /// A call's response head, once the gateway sent it (its body bytes
    /// are in `chunks`).
    head: Option<ResponseHead>,
    /// Why a call got no response, if the gateway said so.
    failure: Option<(u8, String)>,
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// What the driver hands a handler: the request, ready for the guest.
pub(crate) struct Incoming {
    pub request: Request<GuestBody>,
    pub stream: Arc<Stream>,
    /// Where the request came from, for the calls its guest makes.
    pub origin: Origin,
}

impl Port {
    pub(crate) fn new(channel: Channel) -> Arc<Port> {
        Arc::new(Port {
            channel,
            writer: Mutex::new(Vec::with_capacity(4096)),
            space: Notify::new(),
            streams: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next_call: AtomicU32::new(0),
        })
    }

    /// Refuses new requests from now on.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The gateway is gone: every stream is cancelled (guests stopped,
    /// writers woken), and nothing more is sent.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let streams: Vec<Arc<Stream>> = self.streams.lock().expect("port lock").values().cloned().collect();
        for stream in streams {
            stream.cancel(None);
        }
        self.space.notify_waiters();
    }

    /// Completes once no request is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The driver: reads every frame the gateway writes and hands each
    /// request to `handle`, until the channel fails (an error) or every
    /// copy of the gateway's end is closed (`Ok`).
    pub(crate) async fn run<F, Fut>(self: Arc<Self>, handle: F) -> std::io::Result<()>
    where
        F: Fn(Incoming) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            let frames = self
                .channel
                .receive(|bytes| {
                    self.dispatch(frame::decode(bytes)?, &handle);
                    Ok(())
                })
                .map_err(std::io::Error::other)?;
            self.space.notify_waiters();
            if frames == FRAMES_PER_TURN {
                // Let the requests just taken, and the responses, run.
                tokio::task::yield_now().await;
                continue;
            }
            if !self.channel.inbound().consumer_sleeps() {
                continue;
            }
            if !self.channel.woken_or_closed().await? {
                return Ok(());
            }
            self.channel.inbound().consumer_awake();
        }
    }

    fn dispatch<F, Fut>(self: &Arc<Self>, wire: Wire, handle: &F)
    where
        F: Fn(Incoming) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        match wire {
            Wire::Request(head, body) => {
                self.channel.taken().fetch_add(1, Ordering::SeqCst);
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                let id = head.stream;
                let stream = Arc::new(Stream {
                    id,
                    state: Mutex::new(StreamState {
                        end: head.end_stream,
                        send_window: u64::from(STREAM_WINDOW),
                        chunks: if body.is_empty() { VecDeque::new() } else { VecDeque::from([body]) },
                        ..StreamState::default()
                    }),
                });
                let draining = self.draining.load(Ordering::SeqCst);
                self.streams.lock().expect("port lock").insert(id, stream.clone());
                let port = self.clone();
                if draining {
                    // Refused unrun: the gateway sends it to another replica.
                    tokio::spawn(async move {
                        let _ = port.send(&[&frame::encode_reset(id, frame::reset::REFUSED)]).await;
                        port.finish(&stream);
                    });
                    return;
                }
                let deadline = (head.deadline_ms > 0)
                    .then(|| tokio::time::Instant::now() + std::time::Duration::from_millis(head.deadline_ms.into()));
                let origin = Origin { hops: head.hops, deadline };
                match into_request(
                    head,
                    GuestBody { port: self.clone(), stream: stream.clone(), credit: Credit::default() },
                ) {
                    Ok(request) => {
                        tokio::spawn(handle(Incoming { request, stream, origin }));
                    }
                    Err(why) => {
                        tracing::warn!(%why, "bad request from the gateway");
                        tokio::spawn(async move {
                            port.respond(&stream, plain(StatusCode::BAD_REQUEST, "400 bad request\n")).await;
                        });
                    }
                }
            }
            Wire::Data { stream, end, data } => {
                let Some(stream) = self.stream(stream) else { return };
                let mut state = stream.state.lock().expect("stream lock");
                if !data.is_empty() {
                    state.chunks.push_back(data);
                }
                state.end |= end;
                let reader = state.reader.take();
                drop(state);
                wake(reader);
            }
            Wire::Window { stream, increment } => {
                let Some(stream) = self.stream(stream) else { return };
                let mut state = stream.state.lock().expect("stream lock");
                state.send_window = state.send_window.saturating_add(u64::from(increment));
                let writer = state.writer.take();
                drop(state);
                wake(writer);
            }
            Wire::Reset { stream, .. } => {
                let Some(stream) = self.stream(stream) else { return };
                stream.cancel(None);
            }
            Wire::Probe { nonce } => {
                let port = self.clone();
                tokio::spawn(async move {
                    let _ = port.send(&[&frame::encode_probe(true, nonce)]).await;
                });
            }
            Wire::Response(head, body) if frame::is_call(head.stream) => {
                let Some(stream) = self.stream(head.stream) else { return };
                let mut state = stream.state.lock().expect("stream lock");
                if state.head.is_some() {
                    return;
                }
                if !body.is_empty() {
                    state.chunks.push_back(body);
                }
                state.end = head.end_stream;
                state.head = Some(head);
                let reader = state.reader.take();
                drop(state);
                wake(reader);
            }
            Wire::CallFail { stream, code, message } => {
                let Some(stream) = self.stream(stream) else { return };
                stream.cancel(Some((code, message)));
            }
            Wire::Response(..) | Wire::Call(..) | Wire::ProbeAck { .. } => {
                tracing::warn!("the gateway sent a frame only a worker sends; ignored");
            }
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<Stream>> {
        self.streams.lock().expect("port lock").get(&id).cloned()
    }

    /// Writes a frame made of `parts`, waiting for room.
    async fn send(&self, parts: &[&[u8]]) -> Result<(), ()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(());
            }
            {
                let _writer = self.writer.lock().expect("port lock");
                match self.channel.send(parts) {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(_full)) => {}
                    Err(_corrupt) => return Err(()),
                }
            }
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.channel.out().producer_waits(len) {
                Ok(false) => continue,
                Ok(true) => notified.await,
                Err(_corrupt) => return Err(()),
            }
        }
    }

    /// Sends `response` on `stream`: its head (with as much of the body as
    /// is ready and fits), then the rest of the body within the window, then
    /// forgets the stream.
    pub(crate) async fn respond(&self, stream: &Stream, response: Response<HyperOutgoingBody>) {
        self.send_response(stream, response).await;
        self.finish(stream);
    }

    /// Forgets a stream that was answered.
    fn finish(&self, stream: &Stream) {
        let mut streams = self.streams.lock().expect("port lock");
        // Only this stream: after 2³² requests its id may name a newer one.
        if streams.get(&stream.id).is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), stream)) {
            streams.remove(&stream.id);
        }
        drop(streams);
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn send_response(&self, stream: &Stream, response: Response<HyperOutgoingBody>) {
        let response = if frame::headers_fit(response.headers()) {
            response
        } else {
            tracing::warn!(
                fields = response.headers().len(),
                "the guest's response head has more than {} fields or a field of 64 KiB or more: answering 502",
                frame::MAX_HEADERS
            );
            plain(StatusCode::BAD_GATEWAY, "502 the service's response head is too large\n")
        };
        let (parts, mut body) = response.into_parts();
        let (mut first, gathered) = gather(&mut body).await;
        if gathered == Gathered::Failed {
            // Nothing has gone out: a clear answer rather than a head and
            // a cut-off body.
            let failed = plain(StatusCode::INTERNAL_SERVER_ERROR, "the service did not finish its response body\n");
            return Box::pin(self.send_response(stream, failed)).await;
        }
        let mut ended = gathered == Gathered::Ended;
        let mut rest = Bytes::new();
        if first.len() > MAX_DATA {
            rest = first.split_off(MAX_DATA);
            ended = false;
        }
        let head = ResponseHead {
            stream: stream.id,
            end_stream: ended && rest.is_empty(),
            status: parts.status,
            headers: parts.headers,
        };
        if !self.take_window(stream, first.len()).await {
            return;
        }
        let encoded = {
            let mut scratch = self.writer.lock().expect("port lock");
            frame::encode_response(&mut scratch, &head, &first);
            std::mem::take(&mut *scratch)
        };
        let sent = self.send(&[&encoded]).await;
        self.give_back(encoded);
        if sent.is_err() || head.end_stream {
            return;
        }
        self.send_tail(stream, rest, ended, &mut body).await;
    }

    /// Sends what is left of a body after its head frame went: `rest`
    /// (gathered already), then the body's frames to its end, within the
    /// window. A body that fails resets the stream.
    async fn send_tail(&self, stream: &Stream, rest: Bytes, ended: bool, body: &mut HyperOutgoingBody) {
        if !rest.is_empty() && !self.send_data(stream, rest, ended).await {
            return;
        }
        if ended {
            return;
        }
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
            match next {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let end = body.is_end_stream();
                    if !self.send_data(stream, data, end).await {
                        return;
                    }
                    if end {
                        return;
                    }
                }
                None => {
                    let _ = self.send(&[&frame::data_header(stream.id, true)]).await;
                    return;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "a body the guest was sending failed");
                    let _ = self.send(&[&frame::encode_reset(stream.id, frame::reset::BODY_FAILED)]).await;
                    return;
                }
            }
        }
    }

    /// Sends a guest's outgoing request to the gateway as a call and waits
    /// for its response head; the response body streams as it is read.
    /// The request body streams within the gateway's window from a task
    /// of its own (a guest may write it after it sent the request).
    pub(crate) async fn call(
        self: &Arc<Self>,
        head: &RequestHead,
        mut body: HyperOutgoingBody,
    ) -> Result<(ResponseHead, CallBody), (u8, String)> {
        let stream = self.register_call();
        // From here, dropped (the guest gave up on the call, its deadline
        // passed) the call is reset and forgotten.
        let guard = CallGuard { port: self.clone(), stream: stream.clone(), armed: true };
        let (mut first, gathered) = gather(&mut body).await;
        if gathered == Gathered::Failed {
            return Err((frame::call_error::INTERNAL, "the request body failed before it was sent".to_owned()));
        }
        let mut ended = gathered == Gathered::Ended;
        let mut rest = Bytes::new();
        if first.len() > MAX_DATA {
            rest = first.split_off(MAX_DATA);
            ended = false;
        }
        let end_stream = ended && rest.is_empty();
        if !self.take_window(&stream, first.len()).await {
            return Err(self.call_failure(&stream));
        }
        let encoded = {
            let mut scratch = self.writer.lock().expect("port lock");
            frame::encode_call(&mut scratch, stream.id, end_stream, head, &first);
            std::mem::take(&mut *scratch)
        };
        let sent = self.send(&[&encoded]).await;
        self.give_back(encoded);
        if sent.is_err() {
            return Err((frame::call_error::INTERNAL, "the channel to the gateway failed".to_owned()));
        }
        if !end_stream {
            let (port, sender) = (self.clone(), stream.clone());
            tokio::spawn(async move { port.send_tail(&sender, rest, ended, &mut body).await });
        }
        let head = std::future::poll_fn(|cx| {
            let mut state = stream.state.lock().expect("stream lock");
            if let Some(head) = state.head.take() {
                return Poll::Ready(Some(head));
            }
            if state.cancelled {
                return Poll::Ready(None);
            }
            state.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(head) = head else { return Err(self.call_failure(&stream)) };
        let body = GuestBody { port: self.clone(), stream: stream.clone(), credit: Credit::default() };
        Ok((head, CallBody { body, guard }))
    }

    /// Gives an encoding buffer back for the next head (the larger of the
    /// two is kept).
    fn give_back(&self, buffer: Vec<u8>) {
        let mut scratch = self.writer.lock().expect("port lock");
        if scratch.capacity() < buffer.capacity() {
            *scratch = buffer;
        }
    }

    /// Why a call failed, as the gateway said (or that it reset it).
    fn call_failure(&self, stream: &Stream) -> (u8, String) {
        let state = stream.state.lock().expect("stream lock");
        state
            .failure
            .clone()
            .unwrap_or_else(|| (frame::call_error::TERMINATED, "the gateway ended the call".to_owned()))
    }

    /// Gives a call the next free id with [`frame::CALL_BIT`] set.
    fn register_call(&self) -> Arc<Stream> {
        let mut streams = self.streams.lock().expect("port lock");
        loop {
            let id = frame::CALL_BIT | (self.next_call.fetch_add(1, Ordering::Relaxed) & !frame::CALL_BIT);
            if let std::collections::hash_map::Entry::Vacant(entry) = streams.entry(id) {
                let state = StreamState { send_window: u64::from(STREAM_WINDOW), ..StreamState::default() };
                let stream = Arc::new(Stream { id, state: Mutex::new(state) });
                entry.insert(stream.clone());
                return stream;
            }
        }
    }

    /// Forgets a call, stopping what still sends on it.
    fn forget_call(&self, stream: &Stream) {
        {
            let mut streams = self.streams.lock().expect("port lock");
            if streams.get(&stream.id).is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), stream)) {
                streams.remove(&stream.id);
            }
        }
        stream.cancel(None);
    }

    /// Sends `data` as data frames within the window; `end` ends the body
    /// with the last. False if the stream was reset or the channel failed.
    async fn send_data(&self, stream: &Stream, mut data: Bytes, end: bool) -> bool {
        loop {
            let n = data.len().min(MAX_DATA);
            if !self.take_window(stream, n).await {
                return false;
            }
            let chunk = data.split_to(n);
            let last = end && data.is_empty();
            if self.send(&[&frame::data_header(stream.id, last), &chunk]).await.is_err() {
                return false;
            }
            if data.is_empty() {
                return true;
            }
        }
    }

    /// Waits until the stream's window allows a chunk of `len` bytes (its
    /// [`window_cost`]), and takes it. False if the stream was reset.
    async fn take_window(&self, stream: &Stream, len: usize) -> bool {
        let len = window_cost(len);
        std::future::poll_fn(|cx| {
            let mut state = stream.state.lock().expect("stream lock");
            if state.cancelled {
                return Poll::Ready(false);
            }
            if state.send_window >= len {
                state.send_window -= len;
                return Poll::Ready(true);
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Grants the gateway more request-body window (from the guest's
    /// reader, which cannot wait).
    fn grant(self: &Arc<Self>, stream: u32, increment: u32) {
        let port = self.clone();
        tokio::spawn(async move {
            let _ = port.send(&[&frame::encode_window(stream, increment)]).await;
        });
    }
}

impl Stream {
    /// Ends the stream here (a reset, a call's failure with its reason, a
    /// call forgotten): the guest's task, if any, is stopped, and whoever
    /// waits on the stream is woken to see it.
    fn cancel(&self, failure: Option<(u8, String)>) {
        let mut state = self.state.lock().expect("stream lock");
        if failure.is_some() {
            state.failure = failure;
        }
        state.cancelled = true;
        if let Some(guest) = state.guest.take() {
            guest.abort();
        }
        let (reader, writer) = (state.reader.take(), state.writer.take());
        drop(state);
        wake(reader);
        wake(writer);
    }

    /// Remembers the guest's task, to stop it on a reset. False if the
    /// stream was reset already (then the task is stopped now).
    pub(crate) fn set_guest(&self, guest: tokio::task::AbortHandle) -> bool {
        let mut state = self.state.lock().expect("stream lock");
        if state.cancelled {
            guest.abort();
            return false;
        }
        state.guest = Some(guest);
        true
    }

    /// Whether the gateway reset the stream.
    pub(crate) fn cancelled(&self) -> bool {
        self.state.lock().expect("stream lock").cancelled
    }
}

/// Resets and forgets a call when the guest lets go of it before its
/// response body ended.
struct CallGuard {
    port: Arc<Port>,
    stream: Arc<Stream>,
    armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let gone = self.stream.state.lock().expect("stream lock").cancelled;
        self.port.forget_call(&self.stream);
        if !gone {
            let (port, id) = (self.port.clone(), self.stream.id);
            tokio::spawn(async move {
                let _ = port.send(&[&frame::encode_reset(id, frame::reset::CANCEL)]).await;
            });
        }
    }
}

/// A call's response body as the guest reads it; the call is over (and
/// forgotten) when it ends or is dropped.
pub(crate) struct CallBody {
    body: GuestBody,
    guard: CallGuard,
}

impl HttpBody for CallBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && this.guard.armed
        {
            // Ended: nothing to reset.
            this.guard.armed = false;
            this.guard.port.forget_call(&this.guard.stream);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

/// A request as the guest gets it.
fn into_request(head: RequestHead, body: GuestBody) -> Result<Request<GuestBody>, String> {
    let uri: http::Uri = head.path_and_query.parse().map_err(|e| format!("target {:?}: {e}", head.path_and_query))?;
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = head.headers;
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(&head.authority)
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    Ok(request)
}

/// Where a request came from, for the calls its guest makes: the hops
/// that led to it and its deadline, as the gateway sent them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub hops: u8,
    pub deadline: Option<tokio::time::Instant>,
}

/// A request body as the guest reads it: the chunks the gateway sends,
/// with window updates back as they are read.
pub(crate) struct GuestBody {
    port: Arc<Port>,
    stream: Arc<Stream>,
    /// What was read since the last window granted back.
    credit: Credit,
}

impl HttpBody for GuestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let mut state = this.stream.state.lock().expect("stream lock");
        if let Some(chunk) = state.chunks.pop_front() {
            drop(state);
            if let Some(grant) = this.credit.consume(chunk.len()) {
                this.port.grant(this.stream.id, grant);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.end {
            return Poll::Ready(None);
        }
        if state.cancelled {
            // A call's response the gateway ended with a reason (once).
            let error = match state.failure.take() {
                Some((code, message)) => {
                    tracing::warn!("a call's response failed: {message}");
                    super::calls::error(code, message)
                }
                None => wasmtime_wasi_http::Error::ConnectionTerminated,
            };
            return Poll::Ready(Some(Err(error)));
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let state = self.stream.state.lock().expect("stream lock");
        state.end && state.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A short plain-text response from the worker itself.
pub(crate) fn plain(status: StatusCode, body: &'static str) -> Response<HyperOutgoingBody> {
    use http_body_util::BodyExt as _;
    let full = http_body_util::Full::new(Bytes::from_static(body.as_bytes()));
    let mut response = Response::new(full.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// How far [`gather`] got through a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// More is to come.
    Open,
    /// That was all of it.
    Ended,
    /// The body failed before the head went out (the guest did not
    /// finish it): a 500 goes instead.
    Failed,
}

/// What of a response body is there already, up to [`MAX_DATA`] bytes (and
/// whether that is all of it), so that most responses go in one frame.
/// Most guests set the response and then write its body: the guest's task
/// is given one turn to do so before the head goes without it.
async fn gather(body: &mut HyperOutgoingBody) -> (Bytes, Gathered) {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let mut yielded = false;
    let mut gathered = if body.is_end_stream() { Gathered::Ended } else { Gathered::Open };
    while gathered == Gathered::Open && len < MAX_DATA {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    parts.push(data);
                }
                if body.is_end_stream() {
                    gathered = Gathered::Ended;
                }
            }
            Poll::Ready(None) => gathered = Gathered::Ended,
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "the guest's response body failed");
                gathered = Gathered::Failed;
            }
            Poll::Pending if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Poll::Pending => break,
        }
    }
    let first = match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut joined = bytes::BytesMut::with_capacity(len);
            for part in parts {
                joined.extend_from_slice(&part);
            }
            joined.freeze()
        }
    };
    (first, gathered)
}
