//! `kubia`, the sample service from *Kubernetes in Action*, as a Shoal
//! component: every request is logged with the client's address and
//! answered with the name of the replica that served it.

use shoal_sdk::{Request, Response};

fn handle(req: Request) -> Response {
    println!("Received request from {}", client_ip(&req));
    let host = shoal_sdk::hostname().unwrap_or_else(|| "unknown".to_owned());
    Response::ok(format!("You've hit {host}\n"))
}

/// The original client: the first `X-Forwarded-For` entry (the gateway
/// appends the peer address there), or `unknown`.
fn client_ip(req: &Request) -> &str {
    req.header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|ip| !ip.is_empty())
        .unwrap_or("unknown")
}

shoal_sdk::service!(handle);

/// Unused when serving HTTP: the host calls the exported
/// `wasi:http/incoming-handler`, not `wasi:cli/run`.
fn main() {}
