//! The frames on the channel, and their encoding.
//!
//! A frame is `kind: u8`, `stream: u32` (little-endian), then what the kind
//! says. Strings and byte strings are a `u16` length and the bytes; header
//! lists a `u16` count and that many name/value pairs. A head frame's body
//! bytes (the first part of the body, or all of it) are the rest of the
//! frame.
//!
//! | kind | direction | after the stream id |
//! |---|---|---|
//! | `REQUEST` | gateway → worker | flags, scheme, hops `u8`, deadline `u32` ms, connect timeout `u32` ms, authority, method, path and query, client address, headers, body |
//! | `RESPONSE` | worker → gateway (a call's: gateway → worker) | status `u16`, flags, headers, body |
//! | `CALL` | worker → gateway | as `REQUEST`: a guest's outgoing request |
//! | `CALL_FAIL` | gateway → worker | error code `u8`, message: a call that got no response |
//! | `DATA` | both | flags, body bytes |
//! | `WINDOW` | both | `u32`: bytes of body the sender may now send more on that stream |
//! | `RESET` | both | reason `u8`: the stream ends here, without a proper end |
//! | `PROBE`, `PROBE_ACK` | gateway → worker, back | nonce `u64` |
//!
//! Streams a worker opens (its guests' calls, [`CALL_BIT`] set in their
//! ids) and streams the gateway opens (requests, the bit clear) never
//! share an id: `DATA`, `WINDOW` and `RESET` frames go to a call or a
//! request by that bit.
//!
//! Decoding checks every length against the frame, every name and value
//! against HTTP's rules, and the kind against the direction: anything else
//! is an error, which the gateway treats as a broken replica.

use bytes::{BufMut as _, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::ring::Corrupt;

/// Frame kinds.
pub mod kind {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const DATA: u8 = 3;
    pub const WINDOW: u8 = 4;
    pub const RESET: u8 = 5;
    pub const PROBE: u8 = 6;
    pub const PROBE_ACK: u8 = 7;
    pub const CALL: u8 = 8;
    pub const CALL_FAIL: u8 = 9;
}

/// Set in the id of every stream a worker opens (a call), clear in those
/// the gateway opens (a request).
pub const CALL_BIT: u32 = 1 << 31;

/// Whether `stream` is a call (a stream the worker opened).
pub fn is_call(stream: u32) -> bool {
    stream & CALL_BIT != 0
}

/// Why a call got no response (a `CALL_FAIL` frame's code); each is one
/// of `wasi:http`'s error codes.
pub mod call_error {
    /// The caller's `spec.allowOutbound` does not allow the URL
    /// (`HTTP-request-denied`).
    pub const DENIED: u8 = 1;
    /// The host name did not resolve (`DNS-error`).
    pub const DNS: u8 = 2;
    /// No such destination (`destination-not-found`).
    pub const NOT_FOUND: u8 = 3;
    /// The connection was refused (`connection-refused`).
    pub const REFUSED: u8 = 4;
    /// The connection was not made in time (`connection-timeout`).
    pub const CONNECT_TIMEOUT: u8 = 5;
    /// The connection ended before the response (`connection-terminated`).
    pub const TERMINATED: u8 = 6;
    /// The response head did not come in time (`HTTP-response-timeout`).
    pub const TIMEOUT: u8 = 7;
    /// Too many calls at once (`connection-limit-reached`).
    pub const LIMIT: u8 = 8;
    /// The destination cannot be reached (`destination-unavailable`).
    pub const UNAVAILABLE: u8 = 9;
    /// TLS failed: the certificate (`TLS-certificate-error`).
    pub const TLS_CERTIFICATE: u8 = 10;
    /// TLS failed otherwise (`TLS-protocol-error`).
    pub const TLS: u8 = 11;
    /// The peer broke HTTP (`HTTP-protocol-error`).
    pub const PROTOCOL: u8 = 12;
    /// The URL cannot be sent (`HTTP-request-URI-invalid`).
    pub const URI: u8 = 13;
    /// Anything else (`internal-error`).
    pub const INTERNAL: u8 = 14;
    /// The response body is larger than the caller may receive
    /// (`HTTP-response-body-size`); sent after the head, it ends the body.
    pub const RESPONSE_TOO_LARGE: u8 = 15;
}

/// The flag of a head or data frame that ends its body.
pub const END_STREAM: u8 = 1;

/// The scheme the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A request as the gateway parsed it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub stream: u32,
    /// Whether the body ends with this frame.
    pub end_stream: bool,
    pub scheme: Scheme,
    /// The host (and port) the client addressed.
    pub authority: String,
    pub method: Method,
    /// The request target as the client sent it (path and query).
    pub path_and_query: String,
    /// The client's address, as `ip` (the gateway's view); for a call,
    /// empty.
    pub client: String,
    /// Internal calls that led to this request: 0 for a client's request,
    /// one more at each call from a service to a service.
    pub hops: u8,
    /// Milliseconds left of the request's deadline when it was sent (0:
    /// none given).
    pub deadline_ms: u32,
    /// For a call: how long its connection may take to make, in
    /// milliseconds (0: no limit of its own).
    pub connect_ms: u32,
    pub headers: HeaderMap,
}

/// A response as the guest gave it.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub stream: u32,
    pub end_stream: bool,
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// A frame, decoded.
#[derive(Debug, Clone)]
pub enum Frame {
    Request(RequestHead, Bytes),
    Response(ResponseHead, Bytes),
    Call(RequestHead, Bytes),
    CallFail { stream: u32, code: u8, message: String },
    Data { stream: u32, end: bool, data: Bytes },
    Window { stream: u32, increment: u32 },
    Reset { stream: u32, reason: u8 },
    Probe { nonce: u64 },
    ProbeAck { nonce: u64 },
}

/// Why a stream was reset.
pub mod reset {
    /// The request was cancelled (the client went away, the deadline
    /// passed): the worker drops it.
    pub const CANCEL: u8 = 1;
    /// The guest's body failed after the head was sent.
    pub const BODY_FAILED: u8 = 2;
    /// The stream sent more than its window allowed.
    pub const FLOW_CONTROL: u8 = 3;
    /// The worker refused the request without running any of it (it is
    /// draining): it may be sent to another replica whatever its method.
    pub const REFUSED: u8 = 4;
}

/// Encodes a request head (and its first body bytes) into `out`, as stream
/// `stream` (the head's own `stream` and `end_stream` are not used: the
/// gateway sends one head on several streams when it tries again).
pub fn encode_request(out: &mut Vec<u8>, stream: u32, end_stream: bool, head: &RequestHead, body: &[u8]) {
    encode_head(out, kind::REQUEST, stream, end_stream, head, body);
}

/// Encodes a guest's outgoing request (and its first body bytes) as call
/// `stream` ([`CALL_BIT`] set).
pub fn encode_call(out: &mut Vec<u8>, stream: u32, end_stream: bool, head: &RequestHead, body: &[u8]) {
    encode_head(out, kind::CALL, stream, end_stream, head, body);
}

fn encode_head(out: &mut Vec<u8>, kind: u8, stream: u32, end_stream: bool, head: &RequestHead, body: &[u8]) {
    out.clear();
    out.put_u8(kind);
    out.put_u32_le(stream);
    out.put_u8(if end_stream { END_STREAM } else { 0 });
    out.put_u8(match head.scheme {
        Scheme::Http => 0,
        Scheme::Https => 1,
    });
    out.put_u8(head.hops);
    out.put_u32_le(head.deadline_ms);
    out.put_u32_le(head.connect_ms);
    put_str(out, head.authority.as_bytes());
    put_str(out, head.method.as_str().as_bytes());
    put_str(out, head.path_and_query.as_bytes());
    put_str(out, head.client.as_bytes());
    put_headers(out, &head.headers);
    out.extend_from_slice(body);
}

/// Encodes a response head (and its first body bytes) into `out`.
pub fn encode_response(out: &mut Vec<u8>, head: &ResponseHead, body: &[u8]) {
    out.clear();
    out.put_u8(kind::RESPONSE);
    out.put_u32_le(head.stream);
    out.put_u16_le(head.status.as_u16());
    out.put_u8(if head.end_stream { END_STREAM } else { 0 });
    put_headers(out, &head.headers);
    out.extend_from_slice(body);
}

/// Encodes why a call got no response.
pub fn encode_call_fail(out: &mut Vec<u8>, stream: u32, code: u8, message: &str) {
    out.clear();
    out.put_u8(kind::CALL_FAIL);
    out.put_u32_le(stream);
    out.put_u8(code);
    let end = message.floor_char_boundary(1024);
    put_str(out, &message.as_bytes()[..end]);
}

/// The 6 bytes before a data frame's body: kind, stream, flags.
pub fn data_header(stream: u32, end: bool) -> [u8; 6] {
    let s = stream.to_le_bytes();
    [kind::DATA, s[0], s[1], s[2], s[3], if end { END_STREAM } else { 0 }]
}

/// Encodes a window update.
pub fn encode_window(stream: u32, increment: u32) -> [u8; 9] {
    let (s, i) = (stream.to_le_bytes(), increment.to_le_bytes());
    [kind::WINDOW, s[0], s[1], s[2], s[3], i[0], i[1], i[2], i[3]]
}

/// Encodes a reset.
pub fn encode_reset(stream: u32, reason: u8) -> [u8; 6] {
    let s = stream.to_le_bytes();
    [kind::RESET, s[0], s[1], s[2], s[3], reason]
}

/// Encodes a probe, or its answer.
pub fn encode_probe(ack: bool, nonce: u64) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[0] = if ack { kind::PROBE_ACK } else { kind::PROBE };
    out[5..].copy_from_slice(&nonce.to_le_bytes());
    out
}

/// The most header fields a head may carry (a reader refuses more; the
/// `http` crate's maps hold at most 24,576 distinct names).
pub const MAX_HEADERS: usize = 4096;

/// Whether a head with these headers can be sent: at most
/// [`MAX_HEADERS`] fields, each name and value shorter than 64 KiB.
pub fn headers_fit(headers: &HeaderMap) -> bool {
    headers.len() <= MAX_HEADERS
        && headers
            .iter()
            .all(|(name, value)| name.as_str().len() <= usize::from(u16::MAX) && value.len() <= usize::from(u16::MAX))
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("strings in a head are shorter than 64 KiB");
    out.put_u16_le(len);
    out.extend_from_slice(bytes);
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    let count = u16::try_from(headers.len()).expect("fewer than 65,536 header fields");
    out.put_u16_le(count);
    for (name, value) in headers {
        put_str(out, name.as_str().as_bytes());
        put_str(out, value.as_bytes());
    }
}

/// Reads a frame. `bytes` is its whole body (as a ring delivered it).
pub fn decode(bytes: Bytes) -> Result<Frame, Corrupt> {
    let mut r = Reader { bytes: &bytes, at: 0 };
    let kind = r.u8()?;
    let stream = r.u32()?;
    let frame = match kind {
        kind::REQUEST | kind::CALL => {
            let flags = r.u8()?;
            let scheme = match r.u8()? {
                0 => Scheme::Http,
                1 => Scheme::Https,
                other => return Err(corrupt(format!("scheme {other}"))),
            };
            let hops = r.u8()?;
            let deadline_ms = r.u32()?;
            let connect_ms = r.u32()?;
            let authority = r.string("authority")?;
            let method = Method::from_bytes(r.bytes()?).map_err(|_| corrupt("a method that is not a token"))?;
            let path_and_query = r.string("path")?;
            let client = r.string("client address")?;
            let headers = r.headers()?;
            let body = bytes.slice(r.at..);
            let head = RequestHead {
                stream,
                end_stream: flags & END_STREAM != 0,
                scheme,
                authority,
                method,
                path_and_query,
                client,
                hops,
                deadline_ms,
                connect_ms,
                headers,
            };
            if kind == kind::CALL { Frame::Call(head, body) } else { Frame::Request(head, body) }
        }
        kind::CALL_FAIL => {
            let code = r.u8()?;
            let message = String::from_utf8_lossy(r.bytes()?).into_owned();
            Frame::CallFail { stream, code, message }
        }
        kind::RESPONSE => {
            let status = StatusCode::from_u16(r.u16()?).map_err(|_| corrupt("a response status outside 100..=999"))?;
            let flags = r.u8()?;
            let headers = r.headers()?;
            let body = bytes.slice(r.at..);
            Frame::Response(ResponseHead { stream, end_stream: flags & END_STREAM != 0, status, headers }, body)
        }
        kind::DATA => {
            let flags = r.u8()?;
            Frame::Data { stream, end: flags & END_STREAM != 0, data: bytes.slice(r.at..) }
        }
        kind::WINDOW => Frame::Window { stream, increment: r.u32()? },
        kind::RESET => Frame::Reset { stream, reason: r.u8()? },
        kind::PROBE => Frame::Probe { nonce: r.u64()? },
        kind::PROBE_ACK => Frame::ProbeAck { nonce: r.u64()? },
        other => return Err(corrupt(format!("frame kind {other}"))),
    };
    Ok(frame)
}

fn corrupt(what: impl std::fmt::Display) -> Corrupt {
    Corrupt(format!("a frame with {what}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Corrupt> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(corrupt(format!("a field past its end ({} + {n} of {} bytes)", self.at, self.bytes.len())));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&[u8], Corrupt> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn string(&mut self, what: &str) -> Result<String, Corrupt> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| corrupt(format!("a {what} that is not UTF-8")))
    }

    fn headers(&mut self) -> Result<HeaderMap, Corrupt> {
        let count = self.u16()? as usize;
        if count > MAX_HEADERS {
            return Err(corrupt(format!("a head of {count} header fields (at most {MAX_HEADERS})")));
        }
        let mut headers = HeaderMap::with_capacity(count.min(128));
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.bytes()?).map_err(|_| corrupt("an invalid header name"))?;
            let value = HeaderValue::from_bytes(self.bytes()?).map_err(|_| corrupt("an invalid header value"))?;
            headers.try_append(name, value).map_err(|_| corrupt("more header fields than a map holds"))?;
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_small_frames_read_back() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let head = RequestHead {
            stream: 7,
            end_stream: true,
            scheme: Scheme::Http,
            authority: "kubia.test:8080".into(),
            method: Method::POST,
            path_and_query: "/a%20b?x=1".into(),
            client: "127.0.0.1".into(),
            hops: 3,
            deadline_ms: 2500,
            connect_ms: 0,
            headers: headers.clone(),
        };
        let mut out = Vec::new();
        encode_request(&mut out, head.stream, head.end_stream, &head, b"hello");
        let Frame::Request(back, body) = decode(Bytes::from(out.clone())).unwrap() else { panic!() };
        assert_eq!((back.stream, back.end_stream, back.method, body.as_ref()), (7, true, Method::POST, &b"hello"[..]));
        assert_eq!((back.authority.as_str(), back.path_and_query.as_str()), ("kubia.test:8080", "/a%20b?x=1"));
        assert_eq!(back.headers, headers);
        assert_eq!((back.hops, back.deadline_ms, back.connect_ms), (3, 2500, 0));

        encode_call(&mut out, CALL_BIT | 5, false, &head, b"");
        let Frame::Call(back, _) = decode(Bytes::from(out.clone())).unwrap() else { panic!() };
        assert!(is_call(back.stream) && !back.end_stream);
        encode_call_fail(&mut out, CALL_BIT | 5, call_error::DENIED, "not allowed");
        let Frame::CallFail { stream, code, message } = decode(Bytes::from(out.clone())).unwrap() else { panic!() };
        assert_eq!((stream, code, message.as_str()), (CALL_BIT | 5, call_error::DENIED, "not allowed"));

        let head = ResponseHead { stream: 7, end_stream: false, status: StatusCode::CREATED, headers };
        encode_response(&mut out, &head, b"");
        let Frame::Response(back, body) = decode(Bytes::from(out.clone())).unwrap() else { panic!() };
        assert_eq!((back.status, back.end_stream, body.len()), (StatusCode::CREATED, false, 0));

        let mut data = data_header(9, true).to_vec();
        data.extend_from_slice(b"tail");
        let Frame::Data { stream, end, data } = decode(Bytes::from(data)).unwrap() else { panic!() };
        assert_eq!((stream, end, data.as_ref()), (9, true, &b"tail"[..]));
        let Frame::Window { stream, increment } = decode(Bytes::copy_from_slice(&encode_window(3, 65536))).unwrap()
        else {
            panic!()
        };
        assert_eq!((stream, increment), (3, 65536));
        let Frame::ProbeAck { nonce } = decode(Bytes::copy_from_slice(&encode_probe(true, 42))).unwrap() else {
            panic!()
        };
        assert_eq!(nonce, 42);
    }

    /// A worker that sends a head of tens of thousands of header names
    /// (more than the `http` crate's maps hold, which panics on append)
    /// gets its frame refused.
    #[test]
    fn a_head_with_too_many_fields_is_corrupt() {
        let mut headers = HeaderMap::new();
        for i in 0..=MAX_HEADERS {
            headers.append(HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        assert!(!headers_fit(&headers));
        let head = ResponseHead { stream: 1, end_stream: true, status: StatusCode::OK, headers };
        let mut out = Vec::new();
        encode_response(&mut out, &head, b"");
        let error = decode(Bytes::from(out)).expect_err("a head of too many fields was read");
        assert!(error.to_string().contains("header fields"), "{error}");
    }

    #[test]
    fn garbage_is_corrupt_never_a_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = Vec::new();
        let head = ResponseHead { stream: 1, end_stream: true, status: StatusCode::OK, headers: HeaderMap::new() };
        encode_response(&mut out, &head, b"ok");
        for _ in 0..20_000 {
            let mut bytes = out.clone();
            let len = (next() % 40) as usize;
            bytes.resize(len.max(1), 0);
            for _ in 0..3 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let _ = decode(Bytes::from(bytes));
        }
        assert!(decode(Bytes::from_static(&[99, 0, 0, 0, 0])).is_err());
        assert!(decode(Bytes::from_static(&[kind::RESPONSE, 0, 0, 0, 0, 0xff, 0xff])).is_err());
    }
}
