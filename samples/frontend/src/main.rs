//! `frontend`: a service that calls another service by its name. `/` calls
//! `http://kubia/` twice and reports which replicas answered; Shoal's
//! gateway balances the calls over kubia's replicas as it does clients'
//! requests. Its manifest must allow the calls (`spec.allowOutbound`).
//!
//! More paths (under any route prefix) show how calls behave:
//!
//! - `/call?url=URL`: calls URL once and answers with its status and body,
//!   or `502` and the error (`HttpRequestDenied` for a URL the manifest
//!   does not allow).
//! - `/once`: calls kubia once and passes its answer on.
//! - `/chain`: calls `$NEXT` (e.g. `http://b/chain`) and answers with the
//!   callee's status and body; two services that name each other make a
//!   loop, which Shoal ends with `508 Loop Detected`.

use shoal_sdk::{Request, Response};

fn handle(req: Request) -> Response {
    // Under whatever route prefix the manifest gives it.
    let path = req.path();
    if path.ends_with("/call") {
        match req.query_param("url") {
            Some(url) => call(&url),
            None => Response::text(400, "usage: /call?url=URL\n"),
        }
    } else if path.ends_with("/chain") {
        chain()
    } else if path.ends_with("/once") {
        once()
    } else {
        frontend()
    }
}

fn frontend() -> Response {
    let url = shoal_sdk::env("KUBIA_URL").unwrap_or_else(|| "http://kubia/".to_owned());
    let me = shoal_sdk::hostname().unwrap_or_else(|| "unknown".to_owned());
    let mut text = format!("frontend {me} called {url} twice:\n");
    for i in 1..=2 {
        match shoal_sdk::get(&url) {
            Ok(answer) => {
                let body = String::from_utf8_lossy(answer.body());
                text.push_str(&format!("{i}: {} {}\n", answer.status(), body.trim_end()));
            }
            Err(error) => return Response::text(502, format!("{text}{i}: calling {url} failed: {error}\n")),
        }
    }
    Response::ok(text)
}

/// One call of kubia, its answer passed on (what `bench/calls.sh` measures).
fn once() -> Response {
    let url = shoal_sdk::env("KUBIA_URL").unwrap_or_else(|| "http://kubia/".to_owned());
    match shoal_sdk::get(&url) {
        Ok(answer) => Response::text(answer.status(), answer.into_body()),
        Err(error) => Response::text(502, format!("calling {url} failed: {error}\n")),
    }
}

fn call(url: &str) -> Response {
    match shoal_sdk::get(url) {
        Ok(answer) => {
            Response::ok(format!("{}\n{}", answer.status(), String::from_utf8_lossy(answer.body())))
        }
        Err(error) => Response::text(502, format!("call failed: {error}\n")),
    }
}

fn chain() -> Response {
    let Some(next) = shoal_sdk::env("NEXT") else {
        return Response::text(500, "NEXT is not set\n");
    };
    let me = shoal_sdk::hostname().unwrap_or_default();
    match shoal_sdk::get(&next) {
        Ok(answer) => Response::text(
            answer.status(),
            format!("{me} -> {}", String::from_utf8_lossy(answer.body())),
        ),
        Err(error) => Response::text(502, format!("{me}: calling {next} failed: {error}\n")),
    }
}

shoal_sdk::service!(handle);

/// Unused when serving HTTP.
fn main() {}
