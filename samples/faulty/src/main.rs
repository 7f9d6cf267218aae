//! `faulty`: a test fixture for Shoal's failure handling.
//!
//! - `GET /trap` panics, which traps the component (the host answers 500).
//! - `GET /loop` spins forever (exercises the request timeout / fuel/epoch
//!   interruption).
//! - `GET /alloc?mb=N[&ms=M]` allocates and touches N MiB of linear memory,
//!   holds it M milliseconds, then answers `allocated N MiB` (exercises
//!   per-instance and per-replica memory limits).
//! - `GET /hostalloc?mb=N[&ms=M]` makes the *host* hold N MiB: header
//!   field objects of 120 KiB each (wasi:http's limit per object is 128
//!   KiB), kept M milliseconds. That memory is outside the instance's
//!   linear memory and its cap: only the replica's cgroup bounds it.
//! - `GET /env?name=X` answers the value of environment variable `X`
//!   (404 if unset).
//! - `GET /count` answers how many requests this instance has served (global
//!   state: 1 with a fresh instance per request).
//! - `GET /leak?mb=N&secret=S` leaves state behind on purpose: N MiB of
//!   linear memory never freed (memory grows), `S` kept in a global, the
//!   counter of `/count` bumped, and N MiB of host memory behind handles
//!   it forgets (header fields of 120 KiB each; none with `host=0`), then
//!   answers `leaked N MiB`.
//! - `GET /state` answers what a previous request could have left:
//!   `served=<counter> pages=<linear memory pages> secret=<S or none>`.
//! - `/sleep?ms=N` (any method) waits N milliseconds (a WASI clock wait,
//!   not a spin), then answers `slept N ms` (exercises graceful drain and
//!   which requests the gateway sends again).
//! - `/inspect…` (any method, any path under it) answers the request as the
//!   guest received it: `<METHOD> <path and query>`, then one line per
//!   header, `name: value`.
//! - `/echo` (any method) answers `<METHOD>\n` followed by the request
//!   body.
//! - `GET /stream?mb=N` answers N MiB of [`pattern`] bytes (with their
//!   `content-length`), written through the response body stream 4 KiB at a
//!   time as the host accepts them: the guest never holds the body (exercises
//!   streamed responses and flow control towards a slow client).
//! - `/drain[?pause_ms=M]` (any method) reads the request body as it
//!   arrives, 64 KiB at a time, holding none of it (pausing M ms after each
//!   MiB: a slow reader), and answers `<bytes> <FNV-1a 64 of the bytes, in
//!   hex>` (exercises streamed request bodies).
//! - `/silent` (any method) returns without setting a response, and keeps
//!   (forgets) the response outparam rather than dropping it, as a broken
//!   guest or SDK would: the host sees neither a response nor the
//!   outparam's drop.
//! - `/unfinished[?forget=1]` (any method) sends a response head (200, no
//!   length) and a first line of body, then spins until its deadline; with
//!   `forget=1` it returns at once instead, keeping (forgetting) the body
//!   and its stream. Either way the body is never finished.
//! - `GET /wasi` answers the host state a guest can read through WASI:
//!   `seed=<wasi:random insecure-seed, hex> clock_ns=<monotonic-clock now>`
//!   (a new instance gets a new seed and a clock that starts near zero).
//! - `GET /healthz` answers the status in `$HEALTHZ` (default 200), for
//!   probe tests; 500 once this instance answered `$HEALTHZ_FAILS_AFTER`
//!   of them (with reused instances: a replica that falls ill).
//! - Anything else answers `You've hit <HOSTNAME>` like `hello`.
//!
//! Every request is logged to stdout as `faulty: <method> <path>`.

use shoal_sdk::wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use shoal_sdk::wasi::io::streams::StreamError;
use shoal_sdk::{Request, Response};

/// Stride for touching allocated memory: one write per 4 KiB (the host's
/// page size, and a divisor of the 64 KiB wasm page) so every page is
/// really committed, not just reserved.
const PAGE: usize = 4096;

fn handle(req: Request) -> Response {
    println!("faulty: {} {}", req.method(), req.path());
    match (req.method(), req.path()) {
        ("GET", "/trap") => panic!("faulty: /trap requested"),
        ("GET", "/loop") => loop {
            std::hint::black_box(());
        },
        ("GET", "/alloc") => alloc(&req),
        ("GET", "/hostalloc") => host_alloc(&req),
        ("GET", "/env") => env(&req),
        ("GET", "/healthz") => healthz(),
        (_, "/sleep") => sleep(&req),
        (_, path) if path.starts_with("/inspect") => inspect(&req),
        ("GET", "/count") => count(),
        ("GET", "/leak") => leak(&req),
        ("GET", "/state") => state(),
        (_, "/echo") => echo(&req),
        ("GET", "/wasi") => {
            let (a, b) = shoal_sdk::wasi::random::insecure_seed::insecure_seed();
            let now = shoal_sdk::wasi::clocks::monotonic_clock::now();
            Response::ok(format!("seed={a:016x}{b:016x} clock_ns={now}\n"))
        }
        _ => {
            let host = shoal_sdk::hostname().unwrap_or_else(|| "unknown".to_owned());
            Response::ok(format!("You've hit {host}\n"))
        }
    }
}

fn alloc(req: &Request) -> Response {
    let Some(mb) = req.query_param("mb").and_then(|v| v.parse::<usize>().ok()) else {
        return Response::text(400, "usage: /alloc?mb=N\n");
    };
    let Some(len) = mb.checked_mul(1024 * 1024) else {
        return Response::text(400, "mb too large\n");
    };
    // An allocation failure aborts (traps) the component, which is what a
    // memory-limit test wants to observe.
    let mut buf = vec![0u8; len];
    for i in (0..len).step_by(PAGE) {
        buf[i] = 1;
    }
    std::hint::black_box(&buf);
    // `ms`: keep the memory that long, so that concurrent requests overlap.
    if let Some(ms) = req.query_param("ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    Response::ok(format!("allocated {mb} MiB\n"))
}

fn host_alloc(req: &Request) -> Response {
    use shoal_sdk::wasi::http::types::Fields;
    let Some(mb) = req.query_param("mb").and_then(|v| v.parse::<usize>().ok()) else {
        return Response::text(400, "usage: /hostalloc?mb=N\n");
    };
    let value = vec![b'x'; 120 * 1024];
    let mut held = Vec::new();
    for _ in 0..mb * 1024 / 120 {
        let fields = Fields::new();
        if fields.append("x-held", &value).is_err() {
            return Response::text(500, "the host refused a header field\n");
        }
        held.push(fields);
    }
    if let Some(ms) = req.query_param("ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    drop(held);
    Response::ok(format!("the host held {mb} MiB\n"))
}

/// Requests `/count` (and `/leak`) counted in this instance: global state,
/// which a fresh instance per request resets and a reused instance keeps.
static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The secret `/leak` keeps, for `/state` to tell.
static SECRET: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn count() -> Response {
    let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    Response::ok(format!("{n}\n"))
}

fn leak(req: &Request) -> Response {
    let mb = req.query_param("mb").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).min(64);
    let heap = vec![1u8; mb * 1024 * 1024];
    std::mem::forget(heap);
    *SECRET.lock().unwrap() = req.query_param("secret");
    SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let value = vec![b'x'; 120 * 1024];
    let host_mb = if req.query_param("host").as_deref() == Some("0") { 0 } else { mb };
    for _ in 0..host_mb * 1024 / 120 {
        let fields = Fields::new();
        if fields.append("x-leak", &value).is_err() {
            return Response::text(500, "the host refused a header field\n");
        }
        std::mem::forget(fields);
    }
    Response::ok(format!("leaked {mb} MiB\n"))
}

fn state() -> Response {
    let served = SERVED.load(std::sync::atomic::Ordering::Relaxed);
    let pages = core::arch::wasm32::memory_size(0);
    let secret = SECRET.lock().unwrap().clone().unwrap_or_else(|| "none".to_owned());
    Response::ok(format!("served={served} pages={pages} secret={secret}\n"))
}

fn sleep(req: &Request) -> Response {
    let Some(ms) = req.query_param("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return Response::text(400, "usage: /sleep?ms=N\n");
    };
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Response::ok(format!("slept {ms} ms\n"))
}

/// `/healthz` calls this instance answered.
static PROBED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn healthz() -> Response {
    let probed = PROBED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let sick = shoal_sdk::env("HEALTHZ_FAILS_AFTER").and_then(|v| v.parse::<u32>().ok()).is_some_and(|n| probed > n);
    let status = if sick { 500 } else { shoal_sdk::env("HEALTHZ").and_then(|v| v.parse().ok()).unwrap_or(200) };
    Response::text(status, format!("healthz says {status}\n"))
}

fn env(req: &Request) -> Response {
    let Some(name) = req.query_param("name") else {
        return Response::text(400, "usage: /env?name=X\n");
    };
    match shoal_sdk::env(&name) {
        Some(value) => Response::ok(value),
        None => Response::text(404, format!("{name} is not set\n")),
    }
}

fn inspect(req: &Request) -> Response {
    let mut text = format!("{} {}\n", req.method(), req.path_and_query());
    for (name, value) in req.headers() {
        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
    }
    Response::ok(text)
}

fn echo(req: &Request) -> Response {
    let mut body = Vec::with_capacity(req.method().len() + 1 + req.body().len());
    body.extend_from_slice(req.method().as_bytes());
    body.push(b'\n');
    body.extend_from_slice(req.body());
    let content_type = req.header("content-type").unwrap_or("application/octet-stream").to_owned();
    Response::new(200)
        .with_header("content-type", content_type)
        .with_header("x-echo-method", req.method())
        .with_body(body)
}

/// Byte `i` of the content `/stream` sends (and the tests upload): the top
/// byte of a multiplicative hash of its position, so that a byte out of
/// place, lost or repeated shows.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// FNV-1a, 64 bits, continued from `hash` over `bytes`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// The value of `name` in a query string.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(other) => other.clone(),
    }
}

/// Starts a response with `headers`; returns its body.
fn start_response(out: ResponseOutparam, status: u16, headers: &[(String, Vec<u8>)]) -> OutgoingBody {
    let fields = Fields::from_list(headers).expect("valid response headers");
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let body = response.body().expect("a new response yields its body once");
    ResponseOutparam::set(out, Ok(response));
    body
}

/// A whole small plain-text response.
fn reply(out: ResponseOutparam, status: u16, text: &str) {
    let headers = [
        ("content-type".to_owned(), b"text/plain; charset=utf-8".to_vec()),
        ("content-length".to_owned(), text.len().to_string().into_bytes()),
    ];
    let body = start_response(out, status, &headers);
    let stream = body.write().expect("a new body yields its stream once");
    let _ = stream.blocking_write_and_flush(text.as_bytes());
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// `GET /stream?mb=N`: N MiB of [`pattern`], streamed.
fn stream(query: &str, out: ResponseOutparam) {
    let Some(mb) = query_value(query, "mb").and_then(|v| v.parse::<u64>().ok()) else {
        return reply(out, 400, "usage: /stream?mb=N\n");
    };
    let total = mb << 20;
    let headers = [
        ("content-type".to_owned(), b"application/octet-stream".to_vec()),
        ("content-length".to_owned(), total.to_string().into_bytes()),
    ];
    let body = start_response(out, 200, &headers);
    let stream = body.write().expect("a new body yields its stream once");
    let mut chunk = [0u8; 4096];
    let mut at = 0u64;
    while at < total {
        let n = (total - at).min(chunk.len() as u64) as usize;
        for (k, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(at + k as u64);
        }
        // Blocks while the host holds as much as it takes: flow control
        // reaches the guest. An error means the client went away.
        if let Err(error) = stream.blocking_write_and_flush(&chunk[..n]) {
            eprintln!("faulty: /stream stopped after {at} bytes: {}", describe(&error));
            return;
        }
        at += n as u64;
    }
    drop(stream);
    if let Err(error) = OutgoingBody::finish(body, None) {
        eprintln!("faulty: /stream could not finish: {error:?}");
    }
}

/// `/drain[?pause_ms=M]`: reads and counts the request body as it comes.
fn drain(request: IncomingRequest, query: &str, out: ResponseOutparam) {
    let pause = query_value(query, "pause_ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let Ok(body) = request.consume() else {
        return reply(out, 500, "request body unavailable\n");
    };
    let Ok(input) = body.stream() else {
        return reply(out, 500, "request body stream unavailable\n");
    };
    let (mut bytes, mut hash) = (0u64, FNV_OFFSET);
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => {
                let before = bytes >> 20;
                bytes += chunk.len() as u64;
                hash = fnv1a(hash, &chunk);
                if pause > 0 && bytes >> 20 != before {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
            }
            Err(StreamError::Closed) => break,
            Err(error) => {
                drop(input);
                return reply(
                    out,
                    400,
                    &format!("reading the body failed after {bytes} bytes: {}\n", describe(&error)),
                );
            }
        }
    }
    drop(input);
    drop(body);
    drop(request);
    reply(out, 200, &format!("{bytes} {hash:016x}\n"));
}

fn describe(error: &StreamError) -> String {
    match error {
        StreamError::Closed => "closed".to_owned(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

/// The component's `wasi:http/incoming-handler`: `/stream` and `/drain`
/// stream their bodies through the raw `wasi:http` interfaces (the SDK
/// holds whole bodies); every other request goes through the SDK to
/// [`handle`].
struct Faulty;

impl shoal_sdk::__private::Guest for Faulty {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/stream" | "/drain" => println!("faulty: {} {path}", method_name(&request.method())),
            "/unfinished" => {
                println!("faulty: /unfinished: a response head and no end");
                let body = start_response(out, 200, &[("content-type".to_owned(), b"text/plain".to_vec())]);
                let stream = body.write().expect("a new body yields its stream once");
                let _ = stream.blocking_write_and_flush(b"the start of a body that never ends\n");
                if query_value(query, "forget").is_some() {
                    std::mem::forget(stream);
                    std::mem::forget(body);
                    return;
                }
                loop {
                    std::hint::black_box(&stream);
                }
            }
            "/silent" => {
                println!("faulty: /silent: returning without a response");
                std::mem::forget(out);
                return;
            }
            _ => return shoal_sdk::__private::serve(request, out, handle),
        }
        if path == "/stream" {
            stream(query, out);
        } else {
            drain(request, query, out);
        }
    }
}

shoal_sdk::wasi::http::proxy::export!(Faulty with_types_in shoal_sdk::wasi);

/// Unused when serving HTTP: the host calls the exported
/// `wasi:http/incoming-handler`, not `wasi:cli/run`.
fn main() {}
