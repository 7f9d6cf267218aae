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
//! - `/sleep?ms=N` (any method) waits N milliseconds (a WASI clock wait,
//!   not a spin), then answers `slept N ms` (exercises graceful drain and
//!   which requests the gateway sends again).
//! - `/inspect…` (any method, any path under it) answers the request as the
//!   guest received it: `<METHOD> <path and query>`, then one line per
//!   header, `name: value`.
//! - `/echo` (any method) answers `<METHOD>\n` followed by the request
//!   body.
//! - Anything else answers `You've hit <HOSTNAME>` like `hello`.
//!
//! Every request is logged to stdout as `faulty: <method> <path>`.

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
        (_, "/sleep") => sleep(&req),
        (_, path) if path.starts_with("/inspect") => inspect(&req),
        ("GET", "/count") => count(),
        (_, "/echo") => echo(&req),
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

/// Requests this instance has served: global state, which a fresh instance
/// per request resets and a reused instance keeps.
fn count() -> Response {
    static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    Response::ok(format!("{n}\n"))
}

fn sleep(req: &Request) -> Response {
    let Some(ms) = req.query_param("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return Response::text(400, "usage: /sleep?ms=N\n");
    };
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Response::ok(format!("slept {ms} ms\n"))
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

shoal_sdk::service!(handle);

/// Unused when serving HTTP: the host calls the exported
/// `wasi:http/incoming-handler`, not `wasi:cli/run`.
fn main() {}
