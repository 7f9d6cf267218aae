//! # shoal-sdk
//!
//! Write [Shoal](https://shoal.dev) HTTP services in Rust.
//!
//! A Shoal service is a WebAssembly component targeting the standard
//! [`wasi:http/proxy`](https://github.com/WebAssembly/wasi-http) world. This
//! crate is a thin layer over the [`wasi`] crate's bindings for that world:
//! you write a plain function from [`Request`] to [`Response`], and
//! [`service!`] exports it as `wasi:http/incoming-handler`. There is no
//! private ABI, so the same component also runs under `wasmtime serve -Scli`
//! or any other `wasi:http` host.
//!
//! ## Example
//!
//! `shoal new rust hello` writes a project like this one; `shoal build`
//! builds it (the SDK comes embedded in the `shoal` binary, whose version
//! it always has) and `shoal apply -f service.yaml` deploys it.
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "hello"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [dependencies]
//! shoal-sdk = "0.1.0"
//! ```
//!
//! `src/main.rs`:
//!
//! ```
//! use shoal_sdk::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     let client = req
//!         .header("x-forwarded-for")
//!         .and_then(|v| v.split(',').next())
//!         .map(str::trim)
//!         .unwrap_or("unknown");
//!     println!("Received request from {client}");
//!
//!     match (req.method(), req.path()) {
//!         ("GET", "/greet") => {
//!             let name = req.query_param("name").unwrap_or_else(|| "stranger".into());
//!             Response::ok(format!("Hello, {name}!\n"))
//!         }
//!         ("POST", "/echo") => Response::new(200)
//!             .with_header("content-type", "application/octet-stream")
//!             .with_body(req.body()),
//!         _ => {
//!             let host = shoal_sdk::hostname().unwrap_or_else(|| "unknown".into());
//!             Response::ok(format!("You've hit {host}\n"))
//!         }
//!     }
//! }
//!
//! shoal_sdk::service!(handle);
//!
//! // A `bin` crate still needs a `main`; the host never calls it when
//! // serving HTTP (it is what `wasi:cli/run` would run).
//! fn main() {}
//! ```
//!
//! Build it as a component with
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! and serve `target/wasm32-wasip2/release/hello.wasm` with Shoal (or try it
//! with `wasmtime serve -Scli hello.wasm`).
//!
//! Handlers are ordinary functions, so they can be unit-tested on the host
//! by building requests with [`Request::new`]:
//!
//! ```
//! # use shoal_sdk::{Request, Response};
//! # fn handle(req: Request) -> Response {
//! #     Response::ok(format!("Hello, {}!\n", req.query_param("name").unwrap()))
//! # }
//! let resp = handle(Request::new("GET", "/greet?name=Ada"));
//! assert_eq!(resp.status(), 200);
//! assert_eq!(resp.body(), b"Hello, Ada!\n");
//! ```
//!
//! ## How a request is handled
//!
//! - The request head and the **whole body** are read before the handler
//!   runs (bodies larger than [`MAX_BODY_SIZE`] are answered with `413`
//!   without calling the handler).
//! - The handler's [`Response`] is then sent: headers (plus an automatic
//!   `Content-Length`), status, and the body in chunks of at most 4096
//!   bytes.
//! - If the handler panics, the component traps; the host answers the
//!   client with a 500 and discards the instance.
//! - Standard output and standard error (`println!`, `eprintln!`) go to the
//!   host's log for the service; environment variables set by the host are
//!   available through [`env`] and [`hostname`] (or `std::env`).
//!
//! For anything this crate does not cover (trailers, streaming bodies,
//! outgoing HTTP requests), the raw bindings are re-exported as [`wasi`].

mod client;
mod glue;
mod request;
mod response;

pub use client::{CallError, get, send};
pub use request::Request;
pub use response::{Response, TEXT_PLAIN_UTF8};

/// The raw WASI 0.2 bindings (the [`wasi`](https://docs.rs/wasi) crate) this
/// SDK is built on, for things the SDK does not wrap.
pub use wasi;

/// The largest request body (in bytes) the SDK will buffer: 64 MiB. Larger
/// requests are answered with `413 Payload Too Large` without calling the
/// handler.
pub const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;

/// The value of environment variable `name`, or `None` if it is unset or not
/// valid UTF-8.
///
/// Shoal passes the service's configured environment (and `HOSTNAME`) to
/// every instance.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The name of the replica serving this request: the `HOSTNAME`
/// environment variable, as in a Kubernetes pod. `None` if it is not set.
pub fn hostname() -> Option<String> {
    env("HOSTNAME")
}

/// Exports a handler function as this component's
/// `wasi:http/incoming-handler`.
///
/// The argument is anything callable as `fn(Request) -> Response`: a function
/// path or a closure. Use it once per component, at module level:
///
/// ```
/// use shoal_sdk::{Request, Response};
///
/// fn handle(req: Request) -> Response {
///     Response::ok(format!("{} {}\n", req.method(), req.path()))
/// }
///
/// shoal_sdk::service!(handle);
/// # fn main() {}
/// ```
///
/// The expansion only refers to `shoal_sdk` (through `$crate`), so the
/// service crate needs no other dependency. A panic in the handler traps the
/// component; the host turns that into a `500` response.
#[macro_export]
macro_rules! service {
    ($handler:expr $(,)?) => {
        const _: () = {
            struct __ShoalService;

            impl $crate::__private::Guest for __ShoalService {
                fn handle(
                    request: $crate::__private::IncomingRequest,
                    response_out: $crate::__private::ResponseOutparam,
                ) {
                    $crate::__private::serve(request, response_out, $handler);
                }
            }

            $crate::__private::wasi::http::proxy::export!(
                __ShoalService with_types_in $crate::__private::wasi
            );
        };
    };
}

/// Implementation details of [`service!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::glue::serve;
    pub use wasi;
    pub use wasi::exports::http::incoming_handler::Guest;
    pub use wasi::http::types::{IncomingRequest, ResponseOutparam};
}
