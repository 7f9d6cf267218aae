//! Plumbing between the `wasi:http/incoming-handler` export and a handler
//! function: read the request, call the handler, write the response.
//!
//! Everything here compiles on every target (the `wasi` bindings stub out
//! their imports off-wasm), but only does something useful inside a
//! component.

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

use crate::response::wire_headers;
use crate::{MAX_BODY_SIZE, Request, Response};

/// How much to ask for per `blocking-read` of the request body.
const READ_CHUNK: u64 = 64 * 1024;

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

/// Handles one `wasi:http/incoming-handler.handle` call with `handler`.
///
/// Called by the code [`service!`](crate::service) generates; not a public
/// API.
pub fn serve<F>(incoming: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    F: FnOnce(Request) -> Response,
{
    let response = match read_request(&incoming) {
        Ok(request) => {
            drop(incoming);
            handler(request)
        }
        Err(early) => early,
    };
    send(response, response_out);
}

/// Reads the request head and the whole body; on failure returns the
/// response to send instead (400, 413 or 500).
fn read_request(incoming: &IncomingRequest) -> Result<Request, Response> {
    let method = match incoming.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(other) => other,
    };
    let path_and_query = incoming.path_with_query().unwrap_or_default();
    let authority = incoming.authority();
    let headers = incoming.headers().entries();

    let declared_len =
        crate::request::find_header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > MAX_BODY_SIZE as u64) {
        return Err(too_large());
    }
    let body = match incoming.consume() {
        Ok(body) => read_body(body, declared_len.unwrap_or(0) as usize)?,
        Err(()) => {
            return Err(Response::text(500, "shoal-sdk: request body unavailable\n"));
        }
    };
    Ok(Request::from_parts(method, path_and_query, authority, headers, body))
}

/// Reads `body` until the stream closes, refusing more than
/// [`MAX_BODY_SIZE`] bytes.
fn read_body(body: IncomingBody, size_hint: usize) -> Result<Vec<u8>, Response> {
    let stream = body.stream().map_err(|()| Response::text(500, "shoal-sdk: request body stream unavailable\n"))?;
    let mut buf = Vec::with_capacity(size_hint);
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if buf.len() + chunk.len() > MAX_BODY_SIZE {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(Response::text(
                    400,
                    format!("shoal-sdk: error reading request body: {}\n", err.to_debug_string()),
                ));
            }
        }
    }
    // The stream is a child of the body: drop it first.
    drop(stream);
    drop(body);
    Ok(buf)
}

fn too_large() -> Response {
    Response::text(413, format!("request body larger than {MAX_BODY_SIZE} bytes\n"))
}

/// Writes `response` to the host. Failures past `response-outparam.set`
/// (e.g. the client went away) can only be logged.
fn send(response: Response, response_out: ResponseOutparam) {
    let (status, headers, body) = response.into_parts();
    let headers = wire_headers(status, headers, body.len());
    let fields = to_fields(&headers);

    let outgoing = OutgoingResponse::new(fields);
    // A new outgoing-response is 200 already: one host call fewer for most
    // responses.
    if status != 200 && outgoing.set_status_code(status).is_err() {
        eprintln!("shoal-sdk: invalid status code {status}; sending 500 instead");
        // Status codes 100..=999 are always accepted.
        let _ = outgoing.set_status_code(500);
    }
    let outgoing_body = outgoing.body().expect("a new outgoing-response yields its body once");
    ResponseOutparam::set(response_out, Ok(outgoing));

    if !body.is_empty() {
        let stream = outgoing_body.write().expect("a new outgoing-body yields its stream once");
        for chunk in body.chunks(WRITE_CHUNK) {
            if let Err(err) = stream.blocking_write_and_flush(chunk) {
                eprintln!("shoal-sdk: writing response body failed: {}", describe(&err));
                return;
            }
        }
        // The stream is a child of the body: drop it before finishing.
        drop(stream);
    }
    if let Err(err) = OutgoingBody::finish(outgoing_body, None) {
        eprintln!("shoal-sdk: finishing response body failed: {err:?}");
    }
}

/// Builds the header `fields` in one host call, or field by field (dropping
/// the ones the host refuses) if the host rejects the list.
fn to_fields(headers: &[(String, Vec<u8>)]) -> Fields {
    if let Ok(fields) = Fields::from_list(headers) {
        return fields;
    }
    let fields = Fields::new();
    for (name, value) in headers {
        if let Err(err) = fields.append(name, value) {
            eprintln!("shoal-sdk: dropping response header {name:?}: {err:?}");
        }
    }
    fields
}

fn describe(err: &StreamError) -> String {
    match err {
        StreamError::Closed => "stream closed".to_owned(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}
