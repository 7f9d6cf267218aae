//! A guest's outgoing HTTP requests (`wasi:http/outgoing-handler`), sent to
//! the gateway as calls on the channel ([`Port::call`]) with the hops and
//! deadline of the request they serve. The gateway checks the service's
//! `spec.allowOutbound`, then routes a call to a service by name or sends
//! it out; this process opens no socket. What went wrong with a call is
//! logged here, in the replica's log.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme as UriScheme;
use http_body::Body as HttpBody;
use http_body_util::BodyExt as _;
use shoal_protocol::channel::frame::{RequestHead, Scheme, call_error};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::port::{CallBody, Origin, Port};

/// Calls one replica may have in flight at once; past it a call fails
/// with `connection-limit-reached`.
pub(crate) const MAX_CALLS: usize = 64;

/// At most this much of a request's time is kept for its guest to answer
/// after a call it made ran out of time.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// What every instance of a replica shares for its calls.
pub(crate) struct Calls {
    /// The channel calls go out on: that of the newest session that
    /// brought a request (the start check runs before there is one; after
    /// a handover, the successor's once it routes to this worker).
    port: std::sync::Mutex<Option<Arc<Port>>>,
    slots: Arc<Semaphore>,
}

impl Calls {
    pub(crate) fn new() -> Calls {
        Calls { port: std::sync::Mutex::new(None), slots: Arc::new(Semaphore::new(MAX_CALLS)) }
    }

    /// Sends calls on `port` from now on.
    pub(crate) fn use_port(&self, port: Arc<Port>) {
        *self.port.lock().expect("calls lock") = Some(port);
    }

    /// Sends calls on no port until the next [`Calls::use_port`], if
    /// `port` is the one in use.
    pub(crate) fn forget_port(&self, port: &Arc<Port>) {
        let mut current = self.port.lock().expect("calls lock");
        if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, port)) {
            *current = None;
        }
    }
}

/// The `wasi:http` hooks of one store: outgoing requests go through
/// [`Calls`], on behalf of the request the store serves (`origin`).
pub(crate) struct Outbound {
    pub calls: Arc<Calls>,
    pub origin: Origin,
}

pub(crate) type OutboundResult =
    Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>;

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = OutboundResult> + Send> {
        let (calls, origin) = (self.calls.clone(), self.origin);
        Box::new(async move {
            let response = send(&calls, request, options, origin).await?;
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

async fn send(
    calls: &Calls,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    origin: Origin,
) -> Result<http::Response<WasiBody>, Error> {
    let (parts, body) = request.into_parts();
    let uri = &parts.uri;
    let https = uri.scheme() == Some(&UriScheme::HTTPS);
    let Some(authority) = uri.authority() else {
        tracing::warn!(%uri, "call refused: the URL has no host");
        return Err(Error::HttpRequestUriInvalid);
    };
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
    // A call ends a little before the request it serves must be answered
    // (a tenth of what is left, at most `ANSWER_MARGIN`), so that the guest
    // can still answer with what went wrong.
    let remaining = origin.deadline.map(|d| {
        let left = d.saturating_duration_since(tokio::time::Instant::now());
        left - (left / 10).min(ANSWER_MARGIN)
    });
    if remaining == Some(Duration::ZERO) {
        tracing::warn!("call to {url} not sent: the request's deadline has passed");
        return Err(Error::HttpResponseTimeout);
    }
    let Ok(permit) = calls.slots.clone().try_acquire_owned() else {
        tracing::warn!("call to {url} refused: {MAX_CALLS} calls of this replica are in flight");
        return Err(Error::ConnectionLimitReached);
    };
    let Some(channel) = calls.port.lock().expect("calls lock").clone() else {
        return Err(Error::InternalError(Some("the replica has no channel to a gateway now".to_owned())));
    };
    let options = options.unwrap_or_default();
    let head = RequestHead {
        stream: 0,
        end_stream: false,
        scheme: if https { Scheme::Https } else { Scheme::Http },
        authority: authority.as_str().to_owned(),
        method: parts.method.clone(),
        path_and_query: uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        client: String::new(),
        hops: origin.hops,
        deadline_ms: remaining.map_or(0, millis),
        connect_ms: options.connect_timeout.map_or(0, millis),
        headers: parts.headers,
    };
    // The response head within the guest's first-byte timeout and the
    // request's deadline, whichever is sooner.
    let wait = match (options.first_byte_timeout, remaining) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let called = channel.call(&head, body);
    let result = match wait {
        Some(wait) => match tokio::time::timeout(wait, called).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(?wait, "call to {url} timed out waiting for its response");
                return Err(Error::HttpResponseTimeout);
            }
        },
        None => called.await,
    };
    match result {
        Ok((head, body)) => {
            let mut response = http::Response::new(Permitted { body, _permit: permit }.boxed_unsync());
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers;
            Ok(response)
        }
        Err((call_error::DENIED, message)) => {
            tracing::warn!("call denied: {message}");
            Err(Error::HttpRequestDenied)
        }
        Err((code, message)) => {
            tracing::warn!("call to {url} failed: {message}");
            Err(error(code, message))
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// The `wasi:http` error for a `CALL_FAIL` code.
pub(crate) fn error(code: u8, message: String) -> Error {
    match code {
        call_error::DENIED => Error::HttpRequestDenied,
        call_error::DNS => Error::DnsError { rcode: None, info_code: None },
        call_error::NOT_FOUND => Error::DestinationNotFound,
        call_error::REFUSED => Error::ConnectionRefused,
        call_error::CONNECT_TIMEOUT => Error::ConnectionTimeout,
        call_error::TERMINATED => Error::ConnectionTerminated,
        call_error::TIMEOUT => Error::HttpResponseTimeout,
        call_error::LIMIT => Error::ConnectionLimitReached,
        call_error::UNAVAILABLE => Error::DestinationUnavailable,
        call_error::TLS_CERTIFICATE => Error::TlsCertificateError,
        call_error::TLS => Error::TlsProtocolError,
        call_error::PROTOCOL => Error::HttpProtocolError,
        call_error::URI => Error::HttpRequestUriInvalid,
        call_error::RESPONSE_TOO_LARGE => Error::HttpResponseBodySize(None),
        _ => Error::InternalError(Some(message)),
    }
}

/// A call's response body, holding its place among the replica's calls
/// until it is dropped.
struct Permitted {
    body: CallBody,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Permitted {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
