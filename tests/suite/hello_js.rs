//! The seed's Node.js kubia (`samples/hello-js/app.js`, the same file as
//! `samples/hello-node/app.js`), built to a Wasm component by `shoal build`
//! through the JS SDK and served by three replicas.
//!
//! Needs Node.js 20+ and npm (and, the first time, the npm registry):
//! without them the tests print why they are skipped, unless
//! `SHOAL_REQUIRE_NODE=1` (set by `.ci/run`) makes that a failure. The SDK's
//! dependencies are installed once under `target/tmp`, shared by later runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::*;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/hello-js");
const SEED_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/hello-node/app.js");
const ECHO_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/js-echo");
const FETCH_EVENT_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/js-fetch-event");
/// The spec lines of the JS services these tests run: one replica with room
/// for the engine.
const JS_SPEC: &str = "replicas: 1\nresources:\n  memory: 128Mi\n  instanceMemory: 32Mi\ntimeout: 10s";

/// Why JavaScript services cannot be built here, if they cannot; a panic
/// instead when `SHOAL_REQUIRE_NODE=1`.
fn node_missing() -> Option<String> {
    let reason = node_problem()?;
    assert!(std::env::var("SHOAL_REQUIRE_NODE").as_deref() != Ok("1"), "SHOAL_REQUIRE_NODE=1 but {reason}");
    Some(reason)
}

fn node_problem() -> Option<String> {
    for tool in ["node", "npm"] {
        match Command::new(tool).arg("--version").output() {
            Ok(output) if output.status.success() => {
                let version = String::from_utf8_lossy(&output.stdout);
                let major = version.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok());
                if tool == "node" && major.is_some_and(|m: u32| m < 20) {
                    return Some(format!("node is {}; the JS SDK needs Node.js 20+", version.trim()));
                }
            }
            Ok(output) => return Some(format!("`{tool} --version` failed: {}", output.status)),
            Err(error) => return Some(format!("{tool} not found ({error}); install Node.js 20+ and npm")),
        }
    }
    None
}

/// Runs `shoal build DIR` in `cwd`, with a cache shared by test runs.
fn shoal_build_in(cwd: &Path, dir: &Path) -> (bool, String) {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shoal-cache");
    let output = Command::new(SHOAL)
        .current_dir(cwd)
        .arg("build")
        .arg(dir)
        .env("SHOAL_CACHE_DIR", cache)
        .output()
        .expect("cannot run shoal build");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn shoal_build(dir: &Path) -> (bool, String) {
    shoal_build_in(Path::new("."), dir)
}

/// Sends one request with a body: (status, body).
async fn send(method: &str, url: &str, body: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.expect("request failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body failed").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_style_kubia_is_built_and_served_by_three_replicas() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    // The sample is the seed's program, unchanged.
    let app = std::fs::read(Path::new(SAMPLE).join("app.js")).unwrap();
    assert_eq!(app, std::fs::read(SEED_APP).unwrap(), "samples/hello-js/app.js differs from the seed's app.js");

    // A copy of the sample, so that the build writes nothing in the tree.
    let dir = Scratch::new("hello-js");
    for file in ["app.js", "package.json", "service.yaml"] {
        std::fs::copy(Path::new(SAMPLE).join(file), dir.0.join(file)).unwrap();
    }
    let manifest = dir.0.join("service.yaml");

    // Not built yet: `shoal up` says how to build it.
    let data = Scratch::new("hello-js-data");
    let (status, _, stderr) = run_shoal(&["up", "-f", manifest.to_str().unwrap()], &data.0);
    assert!(!status.success());
    assert!(stderr.contains("spec.module") && stderr.contains("not found"), "{stderr}");
    assert!(stderr.contains(&format!("build it with: shoal build {}", dir.0.display())), "{stderr}");

    // Built the way the README says, with a relative directory.
    let (parent, name) = (dir.0.parent().unwrap(), dir.0.file_name().unwrap());
    let (built, output) = shoal_build_in(parent, Path::new(name));
    eprintln!("{output}");
    assert!(built, "shoal build failed:\n{output}");
    let module = dir.0.join("target/hello-js.wasm");
    let bytes = std::fs::read(&module).unwrap();
    assert!(bytes.starts_with(b"\0asm"), "{} is not WebAssembly", module.display());
    let relative = Path::new(name).join("target/hello-js.wasm");
    assert!(output.contains(&format!("built {}", relative.display())), "{output}");
    // Top-level code runs at build time (the snapshot).
    assert!(output.contains("Kubia server starting..."), "{output}");

    let mut shoal = Shoal::start(&["-f", manifest.to_str().unwrap()]);
    shoal.wait_ready("hello-js");
    let names = kubia_hits(&shoal, 30).await;
    assert!(names.iter().all(|name| name.starts_with("hello-js-")), "not replica names: {names:?}");
    let seen: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(seen.len(), 3, "30 requests reached {seen:?}");

    // `console.log` in the handler is each replica's log, with the
    // client's address as Node's `request.connection.remoteAddress`.
    // Logs are eventually consistent (a worker batches its output), as
    // with `kubectl logs`.
    let out = shoal.eventually(&["logs", "hello-js"], |out| {
        seen.iter().all(|name| out.contains(&format!("{name} | Received request from 127.0.0.1")))
            && out.lines().filter(|l| l.contains("| Received request from 127.0.0.1")).count() >= 30
    });
    let logged = out.lines().filter(|l| l.contains("| Received request from 127.0.0.1")).count();
    assert!(logged >= 30, "{logged} request lines for 30 requests:\n{out}");
    assert!(shoal.stop().success());
}

#[test]
fn building_a_directory_without_a_project_names_what_is_missing() {
    let dir = Scratch::new("build-empty");
    let (built, output) = shoal_build(&dir.0);
    assert!(!built);
    assert!(
        output.contains(&format!("error: {}: nothing to build: no Cargo.toml, package.json", dir.0.display())),
        "{output}"
    );
}

/// `tests/fixtures/js-echo` built once by `shoal build` for the tests of
/// this file that serve it: the module's path, and what the build printed.
fn echo_module() -> &'static (PathBuf, String) {
    static BUILT: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Scratch::new("js-echo");
        for file in ["app.js", "package.json"] {
            std::fs::copy(Path::new(ECHO_APP).join(file), dir.0.join(file)).unwrap();
        }
        let (built, output) = shoal_build(&dir.0);
        assert!(built, "shoal build failed:\n{output}");
        let module = dir.0.join("target").join(format!("{}.wasm", dir.0.file_name().unwrap().to_str().unwrap()));
        assert!(module.is_file(), "no {} after:\n{output}", module.display());
        // Kept for the other tests of this process.
        std::mem::forget(dir);
        (module, output)
    })
}

/// What a Node user's handler does beyond kubia: read a body, set headers,
/// throw (in the handler, or in a body listener) and get a 500 at once.
#[tokio::test(flavor = "multi_thread")]
async fn node_style_handlers_read_bodies_and_errors_become_500s() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let (module, _) = echo_module();
    let dir = Scratch::new("js-echo-run");
    let spec = JS_SPEC;
    let file = dir.write("echo.yaml", manifest("echo", module.to_str().unwrap(), spec));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("echo");

    assert_eq!(get(&shoal.url("/"), None).await, (200, "js-echo\n".to_owned()));
    // A body that comes whole with the head gets its length from the
    // gateway (the shim does not set it), not chunked framing.
    let response = client()
        .request(hyper::Request::get(shoal.url("/")).body(http_body_util::Empty::new()).unwrap())
        .await
        .expect("request failed");
    assert_eq!(response.headers().get("content-length").map(|v| v.as_bytes()), Some(&b"8"[..]));
    assert!(response.headers().get("transfer-encoding").is_none(), "{:?}", response.headers());
    let (status, body) = send("POST", &shoal.url("/echo"), "hello").await;
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(echoed["method"], "POST", "{body}");
    assert_eq!(echoed["url"], "/echo", "{body}");
    assert_eq!(echoed["body"], "hello", "{body}");
    assert_eq!(echoed["contentType"], "text/plain", "{body}");
    // wasi:http carries the Host header as the request's authority.
    assert_eq!(echoed["host"], shoal.url("/").trim_start_matches("http://").trim_end_matches('/'), "{body}");
    let (status, body) = send("POST", &shoal.url("/parse"), r#"{"a":1}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"value":{"a":1}}"#));
    assert_eq!(get(&shoal.url("/nowhere"), None).await.0, 404);
    // A streamed body: many writes, then one larger than a host write.
    let (status, body) = get(&shoal.url("/stream?kb=100"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 100 * 1024 + 65536);
    assert!(body.starts_with(&format!("{}\n", "x".repeat(1023))) && body.ends_with(&"y".repeat(65536)));
    // A handler that answers before reading the body and then reads it:
    // the body is dropped with the request, quietly.
    assert_eq!(send("POST", &shoal.url("/early"), &"z".repeat(300_000)).await, (200, "early\n".to_owned()));
    assert_eq!(get(&shoal.url("/"), None).await, (200, "js-echo\n".to_owned()));
    // A response sent from a timer, after the handler returned.
    assert_eq!(get(&shoal.url("/later"), None).await, (200, "later\n".to_owned()));

    // Errors answer 500 well before the 10 s deadline, and are logged.
    let started = Instant::now();
    assert_eq!(get(&shoal.url("/throw"), None).await.0, 500);
    assert_eq!(send("POST", &shoal.url("/parse"), "not json").await.0, 500);
    assert!(started.elapsed() < Duration::from_secs(5), "errors took {:?}", started.elapsed());
    shoal.wait_for_output(|l| l.contains("| Error in HTTP request handler: Error: boom"));
    assert_eq!(shoal.count_lines(|l| l.contains("Error reading request body")), 0, "{}", shoal.dump());
    // The replica serves on after them.
    assert_eq!(get(&shoal.url("/"), None).await, (200, "js-echo\n".to_owned()));
    assert!(shoal.stop().success());
}

/// GETs `/count` `n` times on one connection: the answers, in order.
async fn counts(shoal: &Shoal, n: usize) -> Vec<u32> {
    let client = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, body) = get_with(&client, &shoal.url("/count"), None).await;
        assert_eq!(status, 200, "{body}");
        out.push(body.trim().parse().unwrap_or_else(|_| panic!("not a count: {body:?}")));
    }
    out
}

/// A Node http server built by `shoal build` serves request after request
/// on one instance by default, as one Node process does: module-level state
/// persists. An instance that ran out of memory is not used again: the next
/// request starts from a fresh one, and the service serves on. A manifest
/// can still ask for a fresh instance per request.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_style_instance_serves_many_requests_and_keeps_its_state() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let (module, output) = echo_module();
    assert!(output.contains("(Node http server: one instance serves many requests)"), "{output}");
    let bytes = std::fs::read(module).unwrap();
    assert!(shoal_runtime::marker::supports_reuse(&bytes), "the SDK did not mark {}", module.display());

    let dir = Scratch::new("js-count");
    let spec = JS_SPEC;
    let fresh = format!("{spec}\ninstances:\n  maxRequests: 1");
    let text = format!(
        "{}---\n{}",
        manifest("count", module.to_str().unwrap(), &format!("{spec}\nroutes:\n  - path: /")),
        manifest("fresh", module.to_str().unwrap(), &format!("{fresh}\nroutes:\n  - host: fresh.test")),
    );
    let file = dir.write("count.yaml", text);
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("count");
    shoal.wait_ready("fresh");

    assert_eq!(counts(&shoal, 100).await, (1..=100).collect::<Vec<u32>>());
    let (ok, describe, _) = shoal.cli(&["describe", "service", "count"]);
    assert!(ok, "{describe}");
    assert!(
        describe.contains("Instances:     reused, up to 100000 requests per instance, idle ones kept 10s (default for this module: a Node http server built by shoal build;"),
        "{describe}"
    );

    // Out of memory: a prompt 500, then a fresh instance.
    let started = Instant::now();
    let (status, body) = get(&shoal.url("/oom"), None).await;
    assert_eq!((status, body.as_str()), (500, "Internal Server Error\n"));
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(counts(&shoal, 3).await, [1, 2, 3]);
    shoal.wait_for_output(|l| l.contains("| Error in HTTP request handler: out of memory"));

    // Asked for in the manifest: a fresh instance per request.
    let client = client();
    for _ in 0..5 {
        assert_eq!(get_with(&client, &shoal.url("/count"), Some("fresh.test")).await, (200, "1\n".to_owned()));
    }
    let (ok, describe, _) = shoal.cli(&["describe", "service", "fresh"]);
    assert!(ok, "{describe}");
    assert!(describe.contains("Instances:     a fresh instance per request (spec.instances)"), "{describe}");
    assert!(shoal.stop().success());
}

/// A component written in componentize-js's fetch-event style and built
/// without Shoal's SDK (componentize-js called directly) carries no marker:
/// it runs with a fresh instance per request and answers every request.
/// With reuse forced in its manifest, the second request on an instance
/// cannot be answered (StarlingMonkey dispatches one fetch event per
/// instance): it gets a prompt 500, that instance goes, and the replica
/// answers the next one. No request hangs.
#[tokio::test(flavor = "multi_thread")]
async fn fetch_event_components_built_without_the_sdk_run_and_never_hang() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    // The SDK's node_modules (componentize-js) are installed by a build.
    echo_module();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shoal-cache");
    let sdk = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join("node_modules/.shoal-installed").is_file())
        .unwrap_or_else(|| panic!("no installed JS SDK in {}", cache.display()));
    let dir = Scratch::new("js-fetch-event");
    for file in ["app.js", "componentize.mjs"] {
        std::fs::copy(Path::new(FETCH_EVENT_APP).join(file), dir.0.join(file)).unwrap();
    }
    let module = dir.0.join("fetch-event.wasm");
    let built = Command::new("node")
        .current_dir(&dir.0)
        .arg("componentize.mjs")
        .arg(&sdk)
        .arg(&module)
        .output()
        .expect("cannot run node");
    assert!(built.status.success(), "componentize-js failed: {}", String::from_utf8_lossy(&built.stderr));
    assert!(!shoal_runtime::marker::supports_reuse(&std::fs::read(&module).unwrap()));

    let spec = JS_SPEC;
    let module = module.to_str().unwrap();
    let text = format!(
        "{}---\n{}",
        manifest("plain", module, &format!("{spec}\nroutes:\n  - path: /")),
        manifest("forced", module, &format!("{spec}\ninstances:\n  maxRequests: 1000\nroutes:\n  - host: forced.test")),
    );
    let file = dir.write("fetch-event.yaml", text);
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("plain");
    shoal.wait_ready("forced");

    let client = client();
    for i in 0..100 {
        let (status, body) = get_with(&client, &shoal.url("/"), None).await;
        assert_eq!((status, body.as_str()), (200, "fetch-event 1\n"), "request {i}");
    }
    let (ok, describe, _) = shoal.cli(&["describe", "service", "plain"]);
    assert!(ok, "{describe}");
    assert!(describe.contains("Instances:     a fresh instance per request (default;"), "{describe}");

    let mut statuses = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let (status, body) = get_with(&client, &shoal.url("/"), Some("forced.test")).await;
        assert!(started.elapsed() < Duration::from_secs(2), "request {i} took {:?}", started.elapsed());
        match status {
            200 => assert_eq!(body, "fetch-event 1\n", "request {i}"),
            500 => assert_eq!(body, "the service returned no response\n", "request {i}"),
            other => panic!("request {i}: {other} {body}"),
        }
        statuses.push(status);
    }
    // Every failure is followed by an answer: the replica recovers.
    assert!(statuses.windows(2).all(|pair| pair != [500, 500]), "{statuses:?}");
    assert!(statuses.iter().filter(|&&s| s == 200).count() >= 10, "{statuses:?}");
    assert!(shoal.stop().success());
}

/// A Node-style app calls another service by its name, with `fetch` and
/// with `http.get`, where its manifest allows it; elsewhere the call fails
/// inside the app.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_style_app_calls_another_service_with_fetch_and_http_get() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let (module, _) = echo_module();
    let dir = Scratch::new("js-calls");
    let text = format!(
        "{}---\n{}",
        manifest("echo", module.to_str().unwrap(), &format!("{JS_SPEC}\nallowOutbound:\n  - http://kubia")),
        // Reached by name only: no route of its own is needed.
        manifest("kubia", HELLO_WASM, "replicas: 2\nroutes:\n  - host: kubia.test"),
    );
    let file = dir.write("calls.yaml", text);
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("echo");
    shoal.wait_ready("kubia");

    for how in ["fetch", "get"] {
        let (status, body) = get(&shoal.url(&format!("/{how}?url=http%3A%2F%2Fkubia%2F")), None).await;
        assert_eq!(status, 200, "{how}: {body}");
        assert!(body.starts_with("200 You've hit kubia-"), "{how}: {body}");
    }
    let (status, body) = get(&shoal.url("/fetch?url=http%3A%2F%2Fexample.com%2F"), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("fetch failed:"), "{body}");
    shoal.wait_for_output(|l| l.contains("call denied: GET http://example.com/ is not allowed by spec.allowOutbound"));
    let (status, body) = get(&shoal.url("/get?url=http%3A%2F%2Fexample.com%2F"), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("http.get failed:"), "{body}");
    assert!(shoal.stop().success());
}
