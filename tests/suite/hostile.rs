//! Hostile clients against the gateway: while a well-behaved client keeps
//! sending GETs over keep-alive, more than a thousand malformed or hostile
//! requests (generated from a fixed seed, so every run sends the same bytes)
//! hit the gateway, each on its own raw TCP connection, and twenty slow
//! clients stall in the middle of their request heads.
//!
//! A malformed request must be refused: a `4xx` (or `501`) status, a clean
//! close or a reset. A request that is odd but well-formed HTTP (a lowercase
//! method, an absolute-form target, a 64 KiB header value) may be served, but
//! never with a `5xx`. No connection may be left hanging without an answer,
//! slow clients must be cut off by the 10 s header read timeout, the
//! well-behaved client must never notice, and `shoal` and its workers must
//! all still be running at the end.
//!
//! The same runs twice: against the plain listener, and against the TLS
//! listener (`--tls-listen`), each hostile input sent inside a TLS
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::support::*;

/// Outcomes by label.
type Counts = BTreeMap<String, usize>;

/// The seed of every generated input.
const SEED: u64 = 0x05EE_D0FC_0FFE_E5A1;
/// Hostile connections open at once.
const CONCURRENCY: usize = 50;
/// How long a hostile connection may go without an answer (or a close).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The gateway's header read timeout (`GatewayConfig::default`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack on top of the header read timeout before a slow client counts as
/// never cut off.
const SLOW_MARGIN: Duration = Duration::from_secs(3);
/// The well-behaved client stops on its own after this long.
const VALID_TRAFFIC_LIMIT: Duration = Duration::from_secs(120);
/// The longest the well-behaved client may go without a success.
const MAX_VALID_GAP: Duration = Duration::from_secs(5);
/// Time between two hostile connections.
const PACE: Duration = Duration::from_millis(7);
/// Pause of the well-behaved client between two requests.
const VALID_PAUSE: Duration = Duration::from_millis(5);
/// Bytes of a reply kept at most.
const MAX_REPLY: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// Deterministic generation

/// xorshift64: small, seeded, good enough to vary inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `n` printable ASCII characters (space included).
    fn printable(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b' ' + (self.next() % 95) as u8).collect()
    }

    /// `n` lowercase letters.
    fn letters(&mut self, n: usize) -> String {
        (0..n).map(|_| (b'a' + (self.next() % 26) as u8) as char).collect()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i + 1);
            items.swap(i, j);
        }
    }
}

/// What a hostile request may get back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Malformed: a 4xx or 501, a close or a reset; never a 2xx or a 5xx.
    Refused,
    /// Odd but well-formed HTTP: anything but a 5xx (501 aside).
    NoFault,
    /// Content-Length with Transfer-Encoding (RFC 9112 §6.1): refused, or
    /// processed by Transfer-Encoding alone and the connection closed after
    /// the one answer; the request smuggled behind the body never answered.
    RefusedOrClosedAfter,
    /// HTTP/2 garbage: GOAWAY, a close or a reset; never a response.
    H2Error,
}

/// One hostile request.
struct Case {
    category: &'static str,
    variant: &'static str,
    bytes: Vec<u8>,
    /// Shut the write side down once everything is sent.
    half_close: bool,
    expect: Expect,
}

/// Adds `count` cases of one variant made by `make`.
#[allow(clippy::too_many_arguments)]
fn add(
    cases: &mut Vec<Case>,
    rng: &mut Rng,
    category: &'static str,
    variant: &'static str,
    count: usize,
    expect: Expect,
    half_close: bool,
    mut make: impl FnMut(&mut Rng) -> Vec<u8>,
) {
    for _ in 0..count {
        let bytes = make(rng);
        cases.push(Case { category, variant, bytes, half_close, expect });
    }
}

/// A request: `line`, then each header line, then the body.
fn request(line: &[u8], headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    out.extend_from_slice(b"\r\n");
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const HOST: &[u8] = b"Host: kubia.test";
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"];
const PATHS: [&str; 5] = ["/", "/index.html", "/a/b/c", "/search?q=shoal&n=1", "/kubia"];
/// Control characters other than tab, CR and LF (which are tested on their own).
const CONTROLS: [u8; 12] = [0x01, 0x02, 0x07, 0x08, 0x0b, 0x0c, 0x0e, 0x10, 0x1a, 0x1b, 0x1f, 0x7f];

fn request_line_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    let c = "request-line";
    add(cases, rng, c, "garbage", 40, Refused, false, |r| {
        let n = r.range(1, 120);
        cat(&[&r.printable(n), b"\r\n\r\n"])
    });
    add(cases, rng, c, "missing version", 25, Refused, false, |r| {
        request(format!("{} {}", r.pick(&METHODS), r.pick(&PATHS)).as_bytes(), &[HOST], b"")
    });
    add(cases, rng, c, "method only", 20, Refused, false, |r| {
        let line = r.pick(&["GET", "GET ", "POST", "HEAD ", "OPTIONS"]);
        request(line.as_bytes(), &[], b"")
    });
    add(cases, rng, c, "bad version", 30, Refused, false, |r| {
        let version = r.pick(&[
            "HTTP/9.9",
            "HTTP/2.0",
            "HTTP/1.2",
            "HTTP/0.9",
            "http/1.1",
            "HTTP/1.1x",
            "HTTP/11",
            "HTTP/1",
            "HTTP/",
            "HTTPS/1.1",
            "HTTP/1.1 extra",
        ]);
        request(format!("GET {} {version}", r.pick(&PATHS)).as_bytes(), &[HOST], b"")
    });
    add(cases, rng, c, "bad spacing", 15, Refused, false, |r| {
        let line =
            r.pick(&["GET  / HTTP/1.1", " GET / HTTP/1.1", "GET / HTTP/1.1 ", "GET\t/\tHTTP/1.1", "GET /  HTTP/1.1"]);
        request(line.as_bytes(), &[HOST], b"")
    });
    add(cases, rng, c, "control character", 40, Refused, false, |r| {
        let ctl = r.pick(&CONTROLS);
        let mut line = format!("GET /a{}b HTTP/1.1", r.letters(3)).into_bytes();
        let at = r.pick(&[1, 5, 6, line.len() - 1]);
        line.insert(at, ctl);
        request(&line, &[HOST], b"")
    });
    add(cases, rng, c, "NUL byte", 25, Refused, false, |r| {
        let mut line = format!("{} /{} HTTP/1.1", r.pick(&METHODS), r.letters(4)).into_bytes();
        let at = r.range(0, line.len() + 1);
        line.insert(at, 0);
        request(&line, &[HOST], b"")
    });
    add(cases, rng, c, "100 KiB request line", 10, Refused, false, |r| {
        let path = r.letters(100 * 1024);
        request(format!("GET /{path} HTTP/1.1").as_bytes(), &[HOST], b"")
    });
    add(cases, rng, c, "non-UTF-8 bytes", 30, Refused, false, |r| {
        // A byte that never starts a UTF-8 sequence, then any high bytes.
        let mut odd = vec![r.pick(&[0x80, 0x9f, 0xbf, 0xc0, 0xc1, 0xf5, 0xf8, 0xfe, 0xff])];
        odd.extend((0..r.range(0, 7)).map(|_| 0x80 | r.next() as u8));
        if r.range(0, 3) == 0 {
            request(&cat(&[b"G", &odd, b"T / HTTP/1.1"]), &[HOST], b"")
        } else {
            request(&cat(&[b"GET /", &odd, b" HTTP/1.1"]), &[HOST], b"")
        }
    });
    // Not percent-encoded, so not a valid URI, but widely accepted: may be
    // served or refused.
    add(cases, rng, c, "raw UTF-8 in target", 10, NoFault, false, |r| {
        let word = r.pick(&["ünïcödé", "日本語", "Ԁ", "🦀"]);
        request(format!("GET /{word} HTTP/1.1").as_bytes(), &[HOST], b"")
    });
    // Methods are case-sensitive tokens (RFC 9110 §9.1): `get` is a
    // well-formed method that is not GET, so forwarding it is fine.
    add(cases, rng, c, "lowercase method", 25, NoFault, false, |r| {
        let method = r.pick(&["get", "post", "head", "Get", "gEt", "delete"]);
        request(format!("{method} {} HTTP/1.1", r.pick(&PATHS)).as_bytes(), &[HOST], b"")
    });
    // A server must accept the absolute form (RFC 9112 §3.2.2); odd schemes
    // may be served or refused, but must not break anything.
    add(cases, rng, c, "absolute-form, odd scheme", 40, NoFault, false, |r| {
        let target = match r.range(0, 4) {
            0 => format!(
                "{}://{}.example/{}",
                r.pick(&["ftp", "gopher", "ws", "wss", "h2c", "x-odd+scheme.1", "HTTP", "svn+ssh"]),
                r.letters(5),
                r.letters(3)
            ),
            1 => {
                format!("{}:{}", r.pick(&["javascript", "mailto", "data", "urn"]), r.pick(&["alert(1)", "x@y", ",hi"]))
            }
            2 => "file:///etc/passwd".to_owned(),
            _ => format!("http://user:pass@{}.example:99999/", r.letters(4)),
        };
        request(format!("GET {target} HTTP/1.1").as_bytes(), &[HOST], b"")
    });
}

fn header_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    let c = "headers";
    add(cases, rng, c, "no colon", 30, Refused, false, |r| {
        let header = format!("X-{} {}", r.letters(5), r.letters(8));
        request(b"GET / HTTP/1.1", &[HOST, header.as_bytes()], b"")
    });
    add(cases, rng, c, "space before colon", 25, Refused, false, |r| {
        let name = r.pick(&["Host", "Content-Length", "X-Trace", "Transfer-Encoding", "Accept"]);
        let ws = r.pick(&[" ", "\t", "  "]);
        let header = format!("{name}{ws}: 0");
        request(b"GET / HTTP/1.1", &[HOST, header.as_bytes()], b"")
    });
    add(cases, rng, c, "invalid header-name byte", 40, Refused, false, |r| {
        let bad = r.pick(b"()<>@,;\\\"/[]?={} \x00\x01\x1f\x7f\x80\xff");
        let header = cat(&[b"X-", &[bad], b"y: 1"]);
        request(b"GET / HTTP/1.1", &[HOST, &header], b"")
    });
    add(cases, rng, c, "empty header name", 10, Refused, false, |_| {
        request(b"GET / HTTP/1.1", &[HOST, b": value"], b"")
    });
    add(cases, rng, c, "obs-fold continuation", 25, Refused, false, |r| {
        let fold = cat(&[b"X-Folded: a\r\n", r.pick(&[&b" "[..], b"\t", b"   "]), b"continued"]);
        request(b"GET / HTTP/1.1", &[HOST, &fold], b"")
    });
    add(cases, rng, c, "control byte in value", 30, Refused, false, |r| {
        let ctl = r.pick(&[0x00, 0x01, 0x08, 0x0b, 0x0c, 0x0e, 0x1f, 0x7f, b'\r']);
        let header = cat(&[b"X-Value: a", &[ctl], b"b"]);
        request(b"GET / HTTP/1.1", &[HOST, &header], b"")
    });
    // obs-text (0x80-0xff) is allowed in field values (RFC 9110 §5.5).
    add(cases, rng, c, "non-UTF-8 value", 20, NoFault, false, |r| {
        let odd: Vec<u8> = (0..r.range(1, 16)).map(|_| 0x80 | r.next() as u8).collect();
        request(b"GET / HTTP/1.1", &[HOST, &cat(&[b"X-Odd: ", &odd])], b"")
    });
    add(cases, rng, c, "64 KiB value", 10, NoFault, false, |r| {
        let value = r.letters(64 * 1024);
        request(b"GET / HTTP/1.1", &[HOST, format!("X-Big: {value}").as_bytes()], b"")
    });
    add(cases, rng, c, "500 headers", 10, Refused, false, |r| {
        let lines: Vec<Vec<u8>> = (0..500).map(|i| format!("X-H{i}: {}", r.letters(6)).into_bytes()).collect();
        let mut headers: Vec<&[u8]> = vec![HOST];
        headers.extend(lines.iter().map(Vec::as_slice));
        request(b"GET / HTTP/1.1", &headers, b"")
    });
    add(cases, rng, c, "header block over 1 MiB", 5, Refused, false, |r| {
        let lines: Vec<Vec<u8>> = (0..17).map(|i| format!("X-B{i}: {}", r.letters(64 * 1024)).into_bytes()).collect();
        let mut headers: Vec<&[u8]> = vec![HOST];
        headers.extend(lines.iter().map(Vec::as_slice));
        request(b"GET / HTTP/1.1", &headers, b"")
    });
}

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
/// code to any HTTP/1.1 request message that lacks a Host header field and
/// to any request message that contains more than one Host header field
/// line or a Host header field with an invalid field value."
fn host_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    let c = "host";
    add(cases, rng, c, "two Host headers", 15, Refused, false, |r| {
        let a = format!("Host: {}.example", r.letters(5));
        let b = format!("Host: {}.example", r.letters(5));
        request(b"GET / HTTP/1.1", &[a.as_bytes(), b.as_bytes()], b"")
    });
    add(cases, rng, c, "no Host (HTTP/1.1)", 10, Refused, false, |r| {
        request(format!("GET {} HTTP/1.1", r.pick(&PATHS)).as_bytes(), &[b"Accept: */*"], b"")
    });
    add(cases, rng, c, "invalid Host value", 15, Refused, false, |r| {
        let host = r.pick(&["a b.example", "a/b.example", "user@a.example", "[::1", "a.example:port", "a..b:1:2"]);
        request(b"GET / HTTP/1.1", &[format!("Host: {host}").as_bytes()], b"")
    });
}

fn framing_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    let c = "framing";
    let post = b"POST / HTTP/1.1".as_slice();
    add(cases, rng, c, "Content-Length overflow", 20, Refused, false, |r| {
        let digits: String = (0..r.range(20, 40)).map(|_| (b'1' + (r.next() % 9) as u8) as char).collect();
        let first = if r.range(0, 2) == 0 { "99999999999999999999".to_owned() } else { digits };
        request(post, &[HOST, format!("Content-Length: {first}").as_bytes()], b"hello")
    });
    add(cases, rng, c, "Content-Length negative", 15, Refused, false, |r| {
        let n = r.pick(&["-1", "-100", "-99999999"]);
        request(post, &[HOST, format!("Content-Length: {n}").as_bytes()], b"hello")
    });
    add(cases, rng, c, "Content-Length not a number", 15, Refused, false, |r| {
        let n = r.pick(&["0x10", "1e3", "+5", "5 5", "abc", "", "5;", "٥"]);
        request(post, &[HOST, format!("Content-Length: {n}").as_bytes()], b"hello")
    });
    add(cases, rng, c, "two different Content-Lengths", 25, Refused, false, |r| {
        let a = r.range(0, 6);
        let b = a + r.range(1, 100);
        request(
            post,
            &[HOST, format!("Content-Length: {a}").as_bytes(), format!("Content-Length: {b}").as_bytes()],
            &r.letters(b).into_bytes(),
        )
    });
    add(cases, rng, c, "Content-Length with chunked (smuggling)", 30, RefusedOrClosedAfter, false, |r| {
        let smuggled = format!("GET /smuggled-{} HTTP/1.1\r\nHost: kubia.test\r\n\r\n", r.letters(6));
        let body = format!("0\r\n\r\n{smuggled}");
        // The classic CL.TE pair, in both orders: a Content-Length covering
        // the smuggled request, or one stopping short of the chunked body.
        let cl = if r.range(0, 2) == 0 { body.len() } else { 3 };
        let cl = format!("Content-Length: {cl}");
        let te = b"Transfer-Encoding: chunked".as_slice();
        let headers: Vec<&[u8]> =
            if r.range(0, 2) == 0 { vec![HOST, cl.as_bytes(), te] } else { vec![HOST, te, cl.as_bytes()] };
        request(post, &headers, body.as_bytes())
    });
    // `chunked` is the final coding, so the framing is unambiguous; a server
    // may refuse the unknown `gzip` coding with 501 (RFC 9112 §6.1) or
    // forward it.
    add(cases, rng, c, "Transfer-Encoding: gzip, chunked", 20, NoFault, false, |r| {
        let n = r.range(1, 30);
        let data = r.letters(n);
        let body = format!("{:x}\r\n{data}\r\n0\r\n\r\n", data.len());
        request(post, &[HOST, b"Transfer-Encoding: gzip, chunked"], body.as_bytes())
    });
    add(cases, rng, c, "chunked not the final coding", 25, Refused, false, |r| {
        let te = r.pick(&[
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
        ]);
        request(post, &[HOST, te.as_bytes()], b"5\r\nhello\r\n0\r\n\r\n")
    });
    add(cases, rng, c, "chunked in HTTP/1.0", 10, Refused, false, |_| {
        request(b"POST / HTTP/1.0", &[HOST, b"Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n")
    });
    add(cases, rng, c, "bad chunk size", 40, Refused, false, |r| {
        let size = r.pick(&["zz", "-5", "ffffffffffffffffffffffff", "g", "0x5", "-0"]);
        let body = format!("{size}\r\nhello\r\n0\r\n\r\n");
        request(post, &[HOST, b"Transfer-Encoding: chunked"], body.as_bytes())
    });
    add(cases, rng, c, "chunk missing CRLF", 25, Refused, false, |r| {
        let body =
            r.pick(&["5\r\nhelloXX0\r\n\r\n", "5\r\nhello0\r\n\r\n", "5hello\r\n0\r\n\r\n", "5\r\nhello\n\n0\r\n\r\n"]);
        request(post, &[HOST, b"Transfer-Encoding: chunked"], body.as_bytes())
    });
    add(cases, rng, c, "chunked body ends early, then close", 25, Refused, true, |r| {
        let body = r.pick(&["a\r\nhel", "5\r\nhello\r\n", "5\r\nhello\r\n3", "ff\r\n"]);
        request(post, &[HOST, b"Transfer-Encoding: chunked"], body.as_bytes())
    });
    add(cases, rng, c, "short body (<= 64 KiB declared), then close", 25, Refused, true, |r| {
        let declared = r.range(10, 64 * 1024);
        let sent = r.range(0, declared.min(100));
        request(post, &[HOST, format!("Content-Length: {declared}").as_bytes()], r.letters(sent).as_bytes())
    });
    add(cases, rng, c, "short body (> 64 KiB declared), then close", 25, Refused, true, |r| {
        let declared = r.range(64 * 1024 + 1, 10 << 20);
        let sent = r.range(0, 100);
        request(post, &[HOST, format!("Content-Length: {declared}").as_bytes()], r.letters(sent).as_bytes())
    });
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn h2_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    let c = "h2 prior knowledge";
    let settings = h2_frame(4, 0, 0, &[]);
    add(cases, rng, c, "first frame not SETTINGS", 12, H2Error, false, |r| {
        let n = r.range(0, 32);
        let data = r.bytes(n);
        cat(&[PREFACE, &h2_frame(0, 1, 1, &data)])
    });
    add(cases, rng, c, "frame over max size", 12, H2Error, false, |r| {
        let mut header = vec![0xff, 0xff, 0xff, r.pick(&[0, 1, 6, 8, 0x42]), 0];
        header.extend_from_slice(&(r.next() as u32 & 0x7fff_ffff).to_be_bytes());
        cat(&[PREFACE, &settings, &header, &r.bytes(64)])
    });
    add(cases, rng, c, "SETTINGS of bad length", 12, H2Error, false, |r| {
        let n = r.pick(&[1, 5, 7, 13]);
        cat(&[PREFACE, &h2_frame(4, 0, 0, &r.bytes(n))])
    });
    add(cases, rng, c, "WINDOW_UPDATE of 0", 12, H2Error, false, |_| {
        cat(&[PREFACE, &settings, &h2_frame(8, 0, 0, &[0, 0, 0, 0])])
    });
    add(cases, rng, c, "HEADERS with garbage HPACK", 12, H2Error, false, |r| {
        let n = r.range(1, 64);
        let block = r.bytes(n);
        cat(&[PREFACE, &settings, &h2_frame(1, 0x5, 1, &block)])
    });
    add(cases, rng, c, "HEADERS on an even stream", 10, H2Error, false, |r| {
        let stream = 2 * r.range(1, 1000) as u32;
        cat(&[PREFACE, &settings, &h2_frame(1, 0x5, stream, &[0x82, 0x84, 0x86])])
    });
    add(cases, rng, c, "CONTINUATION without HEADERS", 10, H2Error, false, |r| {
        cat(&[PREFACE, &settings, &h2_frame(9, 0x4, 1, &r.bytes(8))])
    });
    add(cases, rng, c, "PING of bad length", 10, H2Error, false, |r| {
        let n = r.pick(&[0, 7, 9, 16]);
        cat(&[PREFACE, &settings, &h2_frame(6, 0, 0, &r.bytes(n))])
    });
    add(cases, rng, c, "random frames, then close", 10, H2Error, true, |r| {
        let mut out = cat(&[PREFACE, &settings]);
        for _ in 0..r.range(1, 8) {
            let n = r.range(0, 64);
            let payload = r.bytes(n);
            out.extend(h2_frame(r.range(0, 12) as u8, r.next() as u8, r.next() as u32 & 0x7fff_ffff, &payload));
        }
        out
    });
    add(cases, rng, c, "random bytes after preface, then close", 10, H2Error, true, |r| {
        let n = r.range(9, 512);
        cat(&[PREFACE, &r.bytes(n)])
    });
}

/// A TLS ClientHello as a browser would send it to port 443.
fn client_hello(r: &mut Rng) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    let n = r.range(3, 12);
    let host = format!("{}.example", r.letters(n));
    let mut extensions = Vec::new();
    // server_name
    let mut sni = vec![0];
    sni.extend(u16be(host.len()));
    sni.extend(host.as_bytes());
    let mut sni_list = u16be(sni.len()).to_vec();
    sni_list.extend(sni);
    extensions.extend([0, 0]);
    extensions.extend(u16be(sni_list.len()));
    extensions.extend(sni_list);
    // supported_versions: TLS 1.3, 1.2
    extensions.extend([0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
    // supported_groups: x25519, secp256r1
    extensions.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // key_share: x25519 with a random key
    extensions.extend([0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
    extensions.extend(r.bytes(32));
    // ALPN: h2, http/1.1
    extensions.extend([0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c, 0x02, b'h', b'2', 0x08]);
    extensions.extend(b"http/1.1");

    let mut hello = vec![0x03, 0x03];
    hello.extend(r.bytes(32)); // random
    hello.push(32);
    hello.extend(r.bytes(32)); // session id
    let suites: [u16; 5] = [0x1301, 0x1302, 0x1303, 0xc02f, 0xc030];
    hello.extend(u16be(suites.len() * 2));
    suites.iter().for_each(|s| hello.extend(s.to_be_bytes()));
    hello.extend([1, 0]); // compression: null
    hello.extend(u16be(extensions.len()));
    hello.extend(extensions);

    let mut handshake = vec![1, 0];
    handshake.extend(u16be(hello.len()));
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, r.pick(&[0x01, 0x03])];
    record.extend(u16be(handshake.len()));
    record.extend(handshake);
    record
}

fn other_cases(cases: &mut Vec<Case>, rng: &mut Rng) {
    use Expect::*;
    add(cases, rng, "TLS on plaintext", "ClientHello", 50, Refused, false, client_hello);
    add(cases, rng, "random bytes", "binary blob, then close", 150, Refused, true, |r| {
        let n = r.range(1, 4096);
        r.bytes(n)
    });
    add(cases, rng, "random bytes", "printable lines, then close", 50, Refused, true, |r| {
        let mut out = Vec::new();
        for _ in 0..r.range(1, 6) {
            let n = r.range(0, 80);
            out.extend(r.printable(n));
            out.extend_from_slice(b"\r\n");
        }
        out
    });
}

fn hostile_cases(seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    request_line_cases(&mut cases, &mut rng);
    header_cases(&mut cases, &mut rng);
    host_cases(&mut cases, &mut rng);
    framing_cases(&mut cases, &mut rng);
    h2_cases(&mut cases, &mut rng);
    other_cases(&mut cases, &mut rng);
    rng.shuffle(&mut cases);
    cases
}

// ---------------------------------------------------------------------------
// Sending one hostile request and judging the reply

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// A complete response arrived; the connection was not watched further.
    Answered,
    Eof,
    Reset,
    Error(std::io::ErrorKind),
    /// Neither an answer nor a close within [`READ_TIMEOUT`].
    Timeout,
}

/// What came back for one case.
struct Outcome {
    /// Column of the summary table: a status code, `EOF`, `reset`, `GOAWAY`…
    label: String,
    /// Why this outcome is unacceptable, if it is.
    failure: Option<String>,
}

impl Outcome {
    fn ok(label: impl Into<String>) -> Self {
        Self { label: label.into(), failure: None }
    }

    fn bad(label: impl Into<String>, why: impl Into<String>) -> Self {
        Self { label: label.into(), failure: Some(why.into()) }
    }
}

/// A connection the gateway cut: reset, or (over TLS) closed without a
/// `close_notify`, which is how a cut TLS connection looks from here.
fn is_reset(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
}

/// The status code of an HTTP/1 response at the start of `buf`.
fn status_code(buf: &[u8]) -> Option<u16> {
    if buf.len() < 12 || !buf.starts_with(b"HTTP/1.") || buf[8] != b' ' {
        return None;
    }
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// The length of the complete response at the start of `buf`, once its
/// head is in (None if it is not, or if only a close would end it).
fn response_len(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("content-length:") {
            return value.trim().parse::<usize>().ok().map(|n| head + n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return buf[head..].windows(5).position(|w| w == b"0\r\n\r\n").map(|p| head + p + 5);
        }
    }
    // A status without a body.
    let code = status_code(buf)?;
    (code == 204 || code == 304 || code < 200).then_some(head)
}

/// Where the hostile clients connect: the plain listener, or the TLS one
/// (then every input goes inside a TLS connection).
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `target` (TLS done, when it is TLS).
async fn connect(target: &Target) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(target.addr).await.map_err(|e| format!("cannot connect: {e}"))?;
    match &target.tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            Ok(Box::new(tls))
        }
    }
}

async fn exchange(target: &Target, case: &Case) -> Outcome {
    let stream = match tokio::time::timeout(READ_TIMEOUT, connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Outcome::bad("connect failed", error),
        Err(_) => return Outcome::bad("connect failed", "connect timed out"),
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let payload = case.bytes.clone();
    let half_close = case.half_close;
    // Write and read at once: the gateway may answer (and close) before it
    // has read everything.
    let writing = tokio::spawn(async move {
        if writer.write_all(&payload).await.is_ok() && half_close {
            let _ = writer.shutdown().await;
        }
        writer // dropping it would shut the write side down
    });
    let watch_close = matches!(case.expect, Expect::RefusedOrClosedAfter | Expect::H2Error);
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::new();
    let end = loop {
        if (!watch_close && response_len(&buf).is_some_and(|n| buf.len() >= n)) || buf.len() > MAX_REPLY {
            break End::Answered;
        }
        buf.reserve(16 * 1024);
        match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
            Err(_) => break End::Timeout,
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(_)) => {}
            Ok(Err(error)) if is_reset(error.kind()) => break End::Reset,
            Ok(Err(error)) => break End::Error(error.kind()),
        }
    };
    writing.abort();
    judge(case.expect, &buf, end)
}

fn judge(expect: Expect, buf: &[u8], end: End) -> Outcome {
    if let End::Error(kind) = end {
        return Outcome::bad(format!("error {kind:?}"), format!("read failed: {kind:?}"));
    }
    if buf.is_empty() {
        return match end {
            End::Eof => Outcome::ok("EOF"),
            End::Reset => Outcome::ok("reset"),
            _ => Outcome::bad("stuck", format!("no answer and no close within {READ_TIMEOUT:?}")),
        };
    }
    if expect == Expect::H2Error {
        return judge_h2(buf, end);
    }
    let Some(code) = status_code(buf) else {
        return Outcome::bad("not HTTP", format!("reply is not an HTTP/1 response: {}", show(buf, 80)));
    };
    let label = code.to_string();
    let complete = response_len(buf).filter(|n| buf.len() >= *n);
    if complete.is_none() && end == End::Timeout {
        return Outcome::bad("stuck", format!("incomplete {code} response, then nothing for {READ_TIMEOUT:?}"));
    }
    let refusal = (400..500).contains(&code) || code == 501;
    if code >= 500 && code != 501 {
        return Outcome::bad(label, format!("{code} (server error): {}", first_line(buf)));
    }
    match expect {
        Expect::Refused if refusal => Outcome::ok(label),
        Expect::Refused => Outcome::bad(label, format!("malformed request answered {}", first_line(buf))),
        Expect::NoFault => Outcome::ok(label),
        Expect::RefusedOrClosedAfter if refusal => Outcome::ok(label),
        Expect::RefusedOrClosedAfter => match (complete, end) {
            (Some(n), _) if buf.len() > n => Outcome::bad(
                format!("{code} + 2nd response"),
                format!("answered the request smuggled behind the body: {}", show(&buf[n..], 60)),
            ),
            (Some(_), End::Eof | End::Reset) => Outcome::ok(format!("{code}+close")),
            _ => Outcome::bad(
                format!("{code}, kept open"),
                format!("answered {code} but kept the connection open (RFC 9112 §6.1: MUST close)"),
            ),
        },
        Expect::H2Error => unreachable!(),
    }
}

fn judge_h2(buf: &[u8], end: End) -> Outcome {
    if let Some(code) = status_code(buf) {
        return if (400..500).contains(&code) {
            Outcome::ok(code.to_string())
        } else {
            Outcome::bad(code.to_string(), format!("HTTP/1 answer to HTTP/2: {}", first_line(buf)))
        };
    }
    let mut at = 0;
    let mut goaway = None;
    let mut kinds = BTreeSet::new();
    while buf.len() >= at + 9 {
        let len = (buf[at] as usize) << 16 | (buf[at + 1] as usize) << 8 | buf[at + 2] as usize;
        let kind = buf[at + 3];
        kinds.insert(kind);
        if kind == 7 && buf.len() >= at + 9 + 8 {
            goaway = Some(u32::from_be_bytes(buf[at + 13..at + 17].try_into().unwrap()));
        }
        at += 9 + len;
    }
    if kinds.contains(&1) {
        return Outcome::bad("h2 HEADERS", "HTTP/2 garbage got a response (HEADERS frame)");
    }
    match (goaway, end) {
        (_, End::Timeout) => Outcome::bad(
            "stuck",
            format!("HTTP/2 connection left open {READ_TIMEOUT:?} after garbage (GOAWAY code {goaway:?})"),
        ),
        (Some(code), _) => Outcome::ok(format!("GOAWAY {}", h2_error(code))),
        (None, End::Reset) => Outcome::ok("reset"),
        (None, _) => Outcome::ok("EOF"),
    }
}

fn h2_error(code: u32) -> &'static str {
    match code {
        0 => "NO_ERROR",
        1 => "PROTOCOL",
        2 => "INTERNAL",
        3 => "FLOW_CONTROL",
        6 => "FRAME_SIZE",
        9 => "COMPRESSION",
        _ => "other",
    }
}

fn first_line(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len()).min(80);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `bytes` as escaped ASCII, at most `max` of them.
fn show(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes.iter().take(max).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if bytes.len() > max {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

// ---------------------------------------------------------------------------
// Slow clients

/// A client that sends part of a request head (a byte at a time if
/// `trickle`) and then stalls.
struct Slow {
    kind: &'static str,
    sent: &'static [u8],
    trickle: bool,
}

const SLOW: [Slow; 5] = [
    Slow { kind: "partial request line", sent: b"GET /index.ht", trickle: false },
    Slow { kind: "partial headers", sent: b"GET / HTTP/1.1\r\nHost: kubia.test\r\nAccept: te", trickle: false },
    Slow {
        kind: "a byte every 500 ms",
        sent: b"POST /upload HTTP/1.1\r\nHost: kubia.test\r\nX-Slow: aaaaaaaa",
        trickle: true,
    },
    Slow { kind: "nothing at all", sent: b"", trickle: false },
    Slow { kind: "partial h2 preface", sent: b"PRI * HTTP/2.0\r\n", trickle: false },
];

/// Runs one slow client: how long the gateway took to close it, or why it
/// did not.
async fn slow_client(target: Target, slow: &Slow) -> Result<Duration, String> {
    let limit = HEADER_READ_TIMEOUT + SLOW_MARGIN;
    let started = Instant::now();
    let stream = connect(&target).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (sent, trickle) = (slow.sent, slow.trickle);
    let writing = tokio::spawn(async move {
        if trickle {
            for byte in sent {
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } else {
            let _ = writer.write_all(sent).await;
        }
        // Keep the write side open: a stalled client, not a closing one.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let result = loop {
        buf.reserve(1024);
        match tokio::time::timeout_at(started + limit, reader.read_buf(&mut buf)).await {
            Err(_) => break Err(format!("still open after {limit:?}")),
            Ok(Ok(0)) => break Ok(started.elapsed()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) if is_reset(error.kind()) => break Ok(started.elapsed()),
            Ok(Err(error)) => break Err(format!("read failed: {error}")),
        }
    };
    writing.abort();
    result
}

/// Runs four clients of each kind at once: for each kind, the results.
async fn slow_clients(target: Target) -> Vec<(&'static Slow, Vec<Result<Duration, String>>)> {
    let mut set = JoinSet::new();
    for i in 0..4 * SLOW.len() {
        let target = target.clone();
        set.spawn(async move { (i % SLOW.len(), slow_client(target, &SLOW[i % SLOW.len()]).await) });
    }
    let mut by_kind: Vec<_> = SLOW.iter().map(|slow| (slow, Vec::new())).collect();
    for (kind, result) in set.join_all().await {
        by_kind[kind].1.push(result);
    }
    by_kind
}

// ---------------------------------------------------------------------------
// The well-behaved client

#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    not_ok: AtomicU64,
    errors: AtomicU64,
    max_gap_ms: AtomicU64,
    problems: Mutex<Vec<String>>,
}

/// The well-behaved client's connection: a keep-alive client over plain
/// HTTP, or one HTTPS connection (opened again if it fails).
enum Valid {
    Plain(Box<Client<HttpConnector, Empty<Bytes>>>, String),
    Tls(SocketAddr, Option<crate::support::tls::Conn>),
}

impl Valid {
    async fn fetch(&mut self) -> Result<(u16, String), String> {
        match self {
            Valid::Plain(client, url) => fetch(client, url).await,
            Valid::Tls(addr, conn) => {
                if conn.is_none() {
                    let config = crate::support::tls::any_certificate(&[b"http/1.1"], None);
                    *conn = Some(crate::support::tls::Conn::open(*addr, config, "localhost").await?);
                }
                let result = conn.as_mut().expect("opened above").get("localhost", "/").await;
                if result.is_err() {
                    *conn = None;
                }
                result.map(|answer| (answer.status, answer.body))
            }
        }
    }
}

async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Result<(u16, String), String> {
    let request = hyper::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("request failed: {e:?}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("body failed: {e}"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.map_err(|_| "no answer within 5 s".to_owned())?
}

/// GETs `/` over one keep-alive connection until `stop` (or the time
/// limit).
async fn valid_traffic(mut valid: Valid, traffic: Arc<Traffic>, stop: Arc<AtomicBool>) {
    let began = Instant::now();
    let mut last_ok: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) && began.elapsed() < VALID_TRAFFIC_LIMIT {
        let result = valid.fetch().await;
        let at = began.elapsed();
        match result {
            Ok((200, body)) if body.starts_with("You've hit ") => {
                if let Some(last) = last_ok {
                    traffic.max_gap_ms.fetch_max(last.elapsed().as_millis() as u64, Ordering::SeqCst);
                }
                last_ok = Some(Instant::now());
                traffic.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, body)) => {
                traffic.not_ok.fetch_add(1, Ordering::SeqCst);
                traffic.problems.lock().unwrap().push(format!("at {at:.2?}: {status} {body:?}"));
            }
            Err(error) => {
                traffic.errors.fetch_add(1, Ordering::SeqCst);
                traffic.problems.lock().unwrap().push(format!("at {at:.2?}: {error}"));
            }
        }
        tokio::time::sleep(VALID_PAUSE).await;
    }
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Connections the gateway listening on `port` still holds (any TCP state
/// but LISTEN and TIME_WAIT, from its side).
fn gateway_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && !matches!(fields.get(3), Some(&"0A") | Some(&"06"))
        })
        .count()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_are_refused_while_valid_traffic_flows() {
    hostile_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_over_tls_are_refused_while_valid_traffic_flows() {
    hostile_run(true).await;
}

async fn hostile_run(over_tls: bool) {
    let test_started = Instant::now();
    let mut shoal = if over_tls { Shoal::start(&["--tls-listen", "127.0.0.1:0"]) } else { Shoal::start(&[]) };
    shoal.wait_ready("kubia");
    let target = if over_tls {
        Target { addr: shoal.https_addr(), tls: Some(crate::support::tls::any_certificate(&[], None)) }
    } else {
        Target { addr: shoal.addr, tls: None }
    };
    let addr = target.addr;
    let pid = shoal.pid();
    let workers_before = shoal.worker_pids();

    // The well-behaved client, running throughout.
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let valid = if over_tls { Valid::Tls(addr, None) } else { Valid::Plain(Box::new(client()), shoal.url("/")) };
    let valid = tokio::spawn(valid_traffic(valid, traffic.clone(), stop.clone()));
    let warmed = wait_until(Duration::from_secs(10), || traffic.ok.load(Ordering::SeqCst) >= 20).await;
    assert!(warmed, "valid traffic did not get going: {:?}", traffic.problems.lock().unwrap());

    // Slow clients, concurrently with the hostile batch.
    let slow = tokio::spawn(slow_clients(target.clone()));

    // The hostile batch, CONCURRENCY connections at a time.
    let cases = hostile_cases(SEED);
    let total = cases.len();
    let ok_before = traffic.ok.load(Ordering::SeqCst);
    let batch_started = Instant::now();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut running = JoinSet::new();
    // Paced, so that the batch overlaps the valid traffic and the slow
    // clients for several seconds rather than a fraction of one.
    let mut pace = tokio::time::interval(PACE);
    for (i, case) in cases.into_iter().enumerate() {
        pace.tick().await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let target = target.clone();
        running.spawn(async move {
            let outcome = exchange(&target, &case).await;
            drop(permit);
            (i, case, outcome)
        });
    }
    let mut results = running.join_all().await;
    results.sort_by_key(|(i, ..)| *i);
    let batch_took = batch_started.elapsed();
    let ok_after_batch = traffic.ok.load(Ordering::SeqCst);

    let slow_results = slow.await.unwrap();
    // Valid traffic goes on after the batch.
    let continued =
        wait_until(Duration::from_secs(5), || traffic.ok.load(Ordering::SeqCst) >= ok_after_batch + 50).await;
    stop.store(true, Ordering::SeqCst);
    valid.await.unwrap();

    let shoal_alive = alive(pid);
    let final_get =
        if over_tls { Valid::Tls(addr, None).fetch().await } else { fetch(&client(), &shoal.url("/")).await };
    let workers_after = shoal.worker_pids();
    // Every client is gone now: the gateway must have let go of every
    // connection (none held by a stuck task).
    let released = wait_until(Duration::from_secs(5), || gateway_connections(addr.port()) == 0).await;
    let held = gateway_connections(addr.port());

    // --- Summary --------------------------------------------------------
    let mut table: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut by_variant: BTreeMap<(&str, &str), (Expect, Counts)> = BTreeMap::new();
    let mut failed: BTreeMap<(&str, &str), (usize, BTreeSet<String>, String)> = BTreeMap::new();
    let mut columns = BTreeSet::new();
    for (_, case, outcome) in &results {
        columns.insert(outcome.label.clone());
        *table.entry(case.category).or_default().entry(outcome.label.clone()).or_default() += 1;
        let variant = by_variant.entry((case.category, case.variant)).or_insert((case.expect, BTreeMap::new()));
        *variant.1.entry(outcome.label.clone()).or_default() += 1;
        if let Some(why) = &outcome.failure {
            let entry =
                failed.entry((case.category, case.variant)).or_insert((0, BTreeSet::new(), show(&case.bytes, 100)));
            entry.0 += 1;
            entry.1.insert(why.clone());
        }
    }
    let columns: Vec<String> = columns.into_iter().collect();
    let over = if over_tls { "over TLS" } else { "over plain TCP" };
    let mut summary =
        format!("\n{total} hostile requests {over} in {batch_took:.1?}, {CONCURRENCY} at a time (seed {SEED:#x})\n\n");
    summary.push_str(&format!("{:<20} {:>6}", "category", "total"));
    for column in &columns {
        summary.push_str(&format!(" {column:>w$}", w = column.len().max(3)));
    }
    summary.push('\n');
    for (category, counts) in &table {
        summary.push_str(&format!("{category:<20} {:>6}", counts.values().sum::<usize>()));
        for column in &columns {
            let n = counts.get(column).map_or(String::from("."), usize::to_string);
            summary.push_str(&format!(" {n:>w$}", w = column.len().max(3)));
        }
        summary.push('\n');
    }
    summary.push_str(
        "\nby variant (expected: R = refused, N = no 5xx, C = refused or answered then closed, H = h2 error):\n",
    );
    for ((category, variant), (expect, counts)) in &by_variant {
        let tag = match expect {
            Expect::Refused => 'R',
            Expect::NoFault => 'N',
            Expect::RefusedOrClosedAfter => 'C',
            Expect::H2Error => 'H',
        };
        let counts: Vec<String> = counts.iter().map(|(label, n)| format!("{label} ×{n}")).collect();
        let mark = if failed.contains_key(&(*category, *variant)) { "FAIL" } else { "ok" };
        summary.push_str(&format!("  {mark:<4} [{tag}] {category} / {variant}: {}\n", counts.join(", ")));
    }
    summary.push_str("\nslow clients (must be closed within the 10 s header read timeout + 3 s):\n");
    for (slow, results) in &slow_results {
        let outcomes: Vec<String> = results
            .iter()
            .map(|result| match result {
                Ok(took) => format!("closed after {took:.1?}"),
                Err(why) => why.clone(),
            })
            .collect();
        let mark = if results.iter().all(Result::is_ok) { "ok" } else { "FAIL" };
        let sent = show(slow.sent, 60);
        summary.push_str(&format!("  {mark:<4} {} (sent \"{sent}\"): {}\n", slow.kind, outcomes.join(", ")));
    }
    let ok_total = traffic.ok.load(Ordering::SeqCst);
    let not_ok = traffic.not_ok.load(Ordering::SeqCst);
    let errors = traffic.errors.load(Ordering::SeqCst);
    let max_gap = Duration::from_millis(traffic.max_gap_ms.load(Ordering::SeqCst));
    summary.push_str(&format!(
        "\nvalid traffic: {ok_total} × 200 ({} during the batch, {} after it), {not_ok} other answers, {errors} errors, \
         longest gap between successes {max_gap:?}\n",
        ok_after_batch - ok_before,
        ok_total - ok_after_batch,
    ));
    let output = shoal.dump();
    summary.push_str(&format!(
        "shoal: pid {pid} alive: {shoal_alive}; workers {workers_before:?} -> {workers_after:?}; client connections \
         still held by the gateway: {held}; gateway warnings \"replica failed\": {}; final GET: {:?}\n",
        output.lines().filter(|l| l.contains("replica failed")).count(),
        final_get.as_ref().map(|(status, _)| *status),
    ));
    summary.push_str(&format!("test took {:.1?}\n", test_started.elapsed()));

    // --- Verdict --------------------------------------------------------
    let mut failures = Vec::new();
    for ((category, variant), (n, whys, sample)) in &failed {
        let whys: Vec<&str> = whys.iter().map(String::as_str).collect();
        failures.push(format!("{category} / {variant}: {n} failed: {}\n      e.g. {sample}", whys.join("; ")));
    }
    for (slow, results) in &slow_results {
        let open: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(why) = open.first() {
            let sent = show(slow.sent, 60);
            failures.push(format!(
                "slow client, {} (sent \"{sent}\"): {} of {}: {why}",
                slow.kind,
                open.len(),
                results.len()
            ));
        }
    }
    if not_ok != 0 || errors != 0 {
        let problems = traffic.problems.lock().unwrap();
        failures.push(format!(
            "valid traffic saw {not_ok} non-200 answers and {errors} errors: {:?}",
            &problems[..problems.len().min(10)]
        ));
    }
    if ok_total < 100 || ok_after_batch == ok_before || !continued {
        failures.push(format!(
            "valid traffic stalled: {ok_total} successes in all, {} during the batch, {} after it",
            ok_after_batch - ok_before,
            ok_total - ok_after_batch
        ));
    }
    if max_gap > MAX_VALID_GAP {
        failures.push(format!("valid traffic went {max_gap:?} without a success"));
    }
    if !shoal_alive {
        failures.push(format!("shoal (pid {pid}) died"));
    }
    if !released {
        failures.push(format!("the gateway still holds {held} client connections after every client left"));
    }
    if workers_before != workers_after {
        failures.push(format!("workers changed: {workers_before:?} -> {workers_after:?} (a replica died)"));
    }
    match &final_get {
        Ok((200, _)) => {}
        other => failures.push(format!("final GET: {other:?}")),
    }
    assert!(failures.is_empty(), "{} problems:\n  - {}\n{summary}", failures.len(), failures.join("\n  - "));
    eprintln!("{summary}");
    assert!(shoal.stop().success());
}
