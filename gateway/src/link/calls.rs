//! The worker's calls: its guests' outgoing requests, which the worker
//! sends on the channel as `CALL` frames (their stream ids have
//! [`frame::CALL_BIT`] set). Here the roles of a request are turned
//! around: the worker sends the head and body within the window the
//! gateway grants, and the gateway answers with a `RESPONSE` head and
//! `DATA` within the window the worker grants, or with `CALL_FAIL`.
//!
//! What a call reaches is the [`CallHandler`]'s business (see
//! `crate::outbound`); this module only moves its bytes and checks the
//! worker, which is trusted no more for calls than for responses: a call
//! id in use, a body past its window or too many calls at once break the
//! link or fail the call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt as _;
use shoal_protocol::channel::frame::{self, Frame as Wire, RequestHead, ResponseHead, call_error};
use shoal_protocol::channel::{Corrupt, Credit, MAX_DATA, STREAM_WINDOW, window_cost};

use super::{Link, LinkError, wake};

/// Errors of the bodies a call's answer streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a call's answer.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How a call ended: a response (of a service, of a host outside, or of
/// the gateway itself), or no response, with a `CALL_FAIL` code.
pub enum CallOutcome {
    Response(Response<BoxBody>),
    Fail(u8, String),
}

/// Serves a worker's calls: the call's head and its request body, as the
/// worker sends it.
pub type CallHandler =
    Arc<dyn Fn(RequestHead, CallBody) -> Pin<Box<dyn Future<Output = CallOutcome> + Send>> + Send + Sync>;

/// Calls one link may have open at once; past it, a call fails with
/// `connection-limit-reached` (the worker keeps a lower limit of its own).
const MAX_LINK_CALLS: usize = 256;

/// One call's state, shared by the driver and the call's task.
pub(crate) struct CallStream {
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    /// Request body chunks the worker sent, not yet read.
    chunks: VecDeque<Bytes>,
    /// The request body ended.
    end: bool,
    /// Who reads the request body.
    reader: Option<Waker>,
    /// Request body bytes the worker may still send.
    receive_window: u64,
    /// Response body bytes the worker allows more of.
    send_window: u64,
    /// Who waits to send more of the response body.
    writer: Option<Waker>,
    /// The worker reset the call, or the link went down.
    cancelled: bool,
    /// The call's task, stopped when the call is cancelled.
    task: Option<tokio::task::AbortHandle>,
}

impl CallStream {
    fn cancel(&self) {
        let mut state = self.state.lock().expect("call lock");
        state.cancelled = true;
        if let Some(task) = state.task.take() {
            task.abort();
        }
        let (reader, writer) = (state.reader.take(), state.writer.take());
        drop(state);
        wake(reader);
        wake(writer);
    }
}

impl Link {
    /// Lets this replica's guests make calls, served by `handler`.
    pub fn serve_calls(&self, handler: CallHandler) {
        let _ = self.call_handler.set(handler);
    }

    /// Hands a frame of a call to its stream; starts the call's task for
    /// a `CALL`.
    pub(super) fn call_dispatch(self: &Arc<Self>, wire: Wire) -> Result<(), Corrupt> {
        match wire {
            Wire::Call(head, body) => {
                let id = head.stream;
                if !frame::is_call(id) {
                    return Err(Corrupt(format!("a call on stream {id:#x}, which is not a call's id")));
                }
                let cost = window_cost(body.len());
                if cost > u64::from(STREAM_WINDOW) {
                    return Err(Corrupt(format!(
                        "call {id:#x} overran its window with its first {} bytes",
                        body.len()
                    )));
                }
                let stream = Arc::new(CallStream {
                    state: Mutex::new(CallState {
                        chunks: if body.is_empty() { VecDeque::new() } else { VecDeque::from([body]) },
                        end: head.end_stream,
                        receive_window: u64::from(STREAM_WINDOW) - cost,
                        send_window: u64::from(STREAM_WINDOW),
                        ..CallState::default()
                    }),
                });
                let refused = {
                    let mut calls = self.calls.lock().expect("link lock");
                    if calls.contains_key(&id) {
                        return Err(Corrupt(format!("a call on stream {id:#x}, which is open already")));
                    }
                    if calls.len() >= MAX_LINK_CALLS {
                        Some((call_error::LIMIT, format!("{MAX_LINK_CALLS} calls of this replica are open")))
                    } else if let Some(handler) = self.call_handler.get() {
                        calls.insert(id, stream.clone());
                        let call = handler(
                            head,
                            CallBody { link: self.clone(), stream: stream.clone(), id, credit: Credit::default() },
                        );
                        let link = self.clone();
                        let task = tokio::spawn(async move {
                            let outcome = call.await;
                            link.answer_call(id, &stream, outcome).await;
                            link.calls.lock().expect("link lock").remove(&id);
                        });
                        calls.get(&id).expect("just inserted").state.lock().expect("call lock").task =
                            Some(task.abort_handle());
                        None
                    } else {
                        Some((call_error::INTERNAL, "this replica's calls are not served".to_owned()))
                    }
                };
                if let Some((code, message)) = refused {
                    let mut out = Vec::new();
                    frame::encode_call_fail(&mut out, id, code, &message);
                    self.send_soon(&out);
                }
            }
            Wire::Data { stream: id, end, data } => {
                let Some(stream) = self.call(id) else { return Ok(()) };
                let mut state = stream.state.lock().expect("call lock");
                let cost = window_cost(data.len());
                if cost > state.receive_window {
                    return Err(Corrupt(format!(
                        "call {id:#x} overran its window: a chunk of {} bytes costs {cost}, {} were left",
                        data.len(),
                        state.receive_window
                    )));
                }
                state.receive_window -= cost;
                if !data.is_empty() {
                    state.chunks.push_back(data);
                }
                state.end |= end;
                let reader = state.reader.take();
                drop(state);
                wake(reader);
            }
            Wire::Window { stream: id, increment } => {
                let Some(stream) = self.call(id) else { return Ok(()) };
                let mut state = stream.state.lock().expect("call lock");
                state.send_window = state.send_window.saturating_add(u64::from(increment));
                let writer = state.writer.take();
                drop(state);
                wake(writer);
            }
            Wire::Reset { stream: id, .. } => {
                let stream = self.calls.lock().expect("link lock").remove(&id);
                if let Some(stream) = stream {
                    stream.cancel();
                }
            }
            _ => return Err(Corrupt("a frame that belongs to no call".to_owned())),
        }
        Ok(())
    }

    fn call(&self, id: u32) -> Option<Arc<CallStream>> {
        self.calls.lock().expect("link lock").get(&id).cloned()
    }

    /// Stops every call (the link went down).
    pub(super) fn cancel_calls(&self) {
        let calls: Vec<Arc<CallStream>> = self.calls.lock().expect("link lock").drain().map(|(_, c)| c).collect();
        for call in calls {
            call.cancel();
        }
    }

    /// Sends a call's outcome to the worker: the response head with what
    /// of its body is ready, then the rest within the worker's window; or
    /// why it got none.
    async fn answer_call(&self, id: u32, stream: &CallStream, outcome: CallOutcome) {
        let response = match outcome {
            CallOutcome::Response(response) if frame::headers_fit(response.headers()) => response,
            CallOutcome::Response(_) => {
                return self.fail_call(id, call_error::PROTOCOL, "the response head is too large").await;
            }
            CallOutcome::Fail(code, message) => return self.fail_call(id, code, &message).await,
        };
        let (parts, mut body) = response.into_parts();
        let (first, ended) = match first_part(&mut body).await {
            Ok(first) => first,
            Err(error) => {
                let (code, message) = body_failure(&*error);
                return self.fail_call(id, code, &message).await;
            }
        };
        let head = ResponseHead { stream: id, end_stream: ended, status: parts.status, headers: parts.headers };
        if !self.take_call_window(stream, first.len()).await {
            return;
        }
        let mut out = Vec::with_capacity(256 + first.len());
        frame::encode_response(&mut out, &head, &first);
        if self.send(&[&out]).await.is_err() || ended {
            return;
        }
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match next {
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else { continue };
                    while !data.is_empty() {
                        let n = data.len().min(MAX_DATA);
                        if !self.take_call_window(stream, n).await {
                            return;
                        }
                        let chunk = data.split_to(n);
                        if self.send(&[&frame::data_header(id, false), &chunk]).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    let _ = self.send(&[&frame::data_header(id, true)]).await;
                    return;
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "a call's response body failed");
                    // Why, when the caller should know it (a body past its
                    // limit); a plain reset otherwise.
                    let (code, message) = body_failure(&*error);
                    if code == call_error::RESPONSE_TOO_LARGE {
                        self.fail_call(id, code, &message).await;
                    } else {
                        let _ = self.send(&[&frame::encode_reset(id, frame::reset::BODY_FAILED)]).await;
                    }
                    return;
                }
            }
        }
    }

    async fn fail_call(&self, id: u32, code: u8, message: &str) {
        let mut out = Vec::new();
        frame::encode_call_fail(&mut out, id, code, message);
        let _ = self.send(&[&out]).await;
    }

    /// Waits until the worker's window for a call's response body allows
    /// a chunk of `len` bytes, and takes it. False if the call was
    /// cancelled.
    async fn take_call_window(&self, stream: &CallStream, len: usize) -> bool {
        let cost = window_cost(len);
        std::future::poll_fn(|cx| {
            let mut state = stream.state.lock().expect("call lock");
            if state.cancelled || self.is_down() {
                return Poll::Ready(false);
            }
            if state.send_window >= cost {
                state.send_window = state.send_window.saturating_sub(cost);
                return Poll::Ready(true);
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The `CALL_FAIL` code and words for a response body that failed.
fn body_failure(error: &(dyn std::error::Error + 'static)) -> (u8, String) {
    if error.downcast_ref::<crate::outbound::ResponseTooLarge>().is_some() {
        (call_error::RESPONSE_TOO_LARGE, error.to_string())
    } else {
        (call_error::TERMINATED, format!("the response body failed: {error}"))
    }
}

/// What of a body is ready at once (after one yield), up to
/// [`MAX_DATA`] bytes, and whether that is all of it: most answers go in
/// their head's frame.
async fn first_part(body: &mut BoxBody) -> Result<(Bytes, bool), BoxError> {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let mut yielded = false;
    let mut ended = body.is_end_stream();
    while !ended && len < MAX_DATA {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    parts.push(data);
                }
                ended = body.is_end_stream();
            }
            Poll::Ready(None) => ended = true,
            Poll::Ready(Some(Err(error))) => return Err(error),
            Poll::Pending if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Poll::Pending => break,
        }
    }
    let mut first = match parts.len() {
        0 => Bytes::new(),
        // Most answers: one chunk, sent as it is.
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut joined = bytes::BytesMut::with_capacity(len);
            for part in &parts {
                joined.extend_from_slice(part);
            }
            joined.freeze()
        }
    };
    if first.len() > MAX_DATA {
        // The rest goes as data frames: put it back in front of the body.
        let rest = first.split_off(MAX_DATA);
        let tail = std::mem::replace(body, http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
        *body = Prepend { first: Some(rest), body: tail }.boxed_unsync();
        return Ok((first, false));
    }
    Ok((first, ended))
}

/// A body with bytes in front of it.
struct Prepend {
    first: Option<Bytes>,
    body: BoxBody,
}

impl HttpBody for Prepend {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }
}

/// A call's request body, as the worker sends it: read by the service or
/// the host the call goes to, with window granted back as it is read.
pub struct CallBody {
    link: Arc<Link>,
    stream: Arc<CallStream>,
    id: u32,
    credit: Credit,
}

impl HttpBody for CallBody {
    type Data = Bytes;
    type Error = LinkError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, LinkError>>> {
        let this = self.get_mut();
        let mut state = this.stream.state.lock().expect("call lock");
        if let Some(chunk) = state.chunks.pop_front() {
            drop(state);
            if let Some(grant) = this.credit.consume(chunk.len()) {
                this.stream.state.lock().expect("call lock").receive_window += u64::from(grant);
                this.link.send_soon(&frame::encode_window(this.id, grant));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.end {
            return Poll::Ready(None);
        }
        if state.cancelled {
            return Poll::Ready(Some(Err(LinkError::Failed("the caller's request body failed".to_owned()))));
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let state = self.stream.state.lock().expect("call lock");
        state.end && state.chunks.is_empty()
    }
}
