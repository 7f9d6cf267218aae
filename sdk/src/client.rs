//! Outgoing HTTP requests from a service, through `wasi:http/outgoing-handler`.
//!
//! Under Shoal a request to `http://<service>/…` reaches that service's
//! replicas; any other URL goes out of the platform. Either must be allowed
//! by the calling service's `spec.allowOutbound`, or the call fails with
//! `HTTP-request-denied`.

use std::fmt;

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

use crate::{MAX_BODY_SIZE, Response};

/// Why a call got no response: the host's `wasi:http` error code (e.g.
/// `HttpRequestDenied` for a URL the manifest does not allow), or a URL
/// the SDK cannot send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError(String);

impl CallError {
    /// The error as text, e.g. `HttpRequestDenied`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

impl From<ErrorCode> for CallError {
    fn from(code: ErrorCode) -> Self {
        CallError(format!("{code:?}"))
    }
}

/// `GET url`, and the whole response.
///
/// ```no_run
/// let kubia = shoal_sdk::get("http://kubia/")?;
/// assert_eq!(kubia.status(), 200);
/// # Ok::<(), shoal_sdk::CallError>(())
/// ```
pub fn get(url: &str) -> Result<Response, CallError> {
    send("GET", url, &[], &[])
}

/// Sends `method url` with `headers` and `body`, and reads the whole
/// response (at most [`MAX_BODY_SIZE`] bytes of body).
pub fn send(method: &str, url: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Result<Response, CallError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| CallError(format!("{url:?} has no scheme")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let list: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| ((*n).to_owned(), v.to_vec())).collect();
    let fields = Fields::from_list(&list).map_err(|e| CallError(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    let bad = |what: &str| CallError(format!("{url:?}: invalid {what}"));
    request.set_method(&method).map_err(|()| bad("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| bad("host"))?;
    request.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let outgoing = request.body().map_err(|()| CallError("the request body is unavailable".to_owned()))?;
    let future = outgoing_handler::handle(request, None)?;
    if !body.is_empty() {
        let stream = outgoing.write().map_err(|()| CallError("the request body is unavailable".to_owned()))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| CallError(describe(&e)))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(outgoing, None)?;
    let response = loop {
        match future.get() {
            Some(Ok(result)) => break result?,
            Some(Err(())) => return Err(CallError("the response was taken already".to_owned())),
            None => future.subscribe().block(),
        }
    };
    let mut out = Response::new(response.status());
    for (name, value) in response.headers().entries() {
        out = out.append_header(name, value);
    }
    let incoming = response.consume().map_err(|()| CallError("the response body is unavailable".to_owned()))?;
    Ok(out.with_body(read(incoming)?))
}

fn read(body: IncomingBody) -> Result<Vec<u8>, CallError> {
    let stream = body.stream().map_err(|()| CallError("the response body is unavailable".to_owned()))?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if buf.len() + chunk.len() > MAX_BODY_SIZE {
                    return Err(CallError(format!("the response body is larger than {MAX_BODY_SIZE} bytes")));
                }
                buf.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(error) => return Err(CallError(describe(&error))),
        }
    }
    drop(stream);
    drop(body);
    Ok(buf)
}

fn describe(error: &StreamError) -> String {
    match error {
        StreamError::Closed => "stream closed".to_owned(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}
