//! The client commands' output and errors, end to end through the real
//! binary, against a stub admin API that answers canned JSON and records
//! what it was sent. (Tests against the real control plane live with it.)

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use shoal_api::objects::now_unix;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const TOKEN: &str = "t0k3n";

/// A request the stub received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    body: Vec<u8>,
}

type Answer = (u16, String);
type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// A stub admin API on a random local port, answering with `handler`.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Stub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, handler): (_, Arc<Handler>) = (seen.clone(), Arc::new(handler));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (record, handler) = (record.clone(), handler.clone());
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (record, handler) = (record.clone(), handler.clone());
                        async move {
                            let header = |name| {
                                request
                                    .headers()
                                    .get(name)
                                    .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_owned())
                            };
                            let (authorization, content_type) = (header("authorization"), header("content-type"));
                            let method = request.method().to_string();
                            let path = request.uri().path_and_query().unwrap().to_string();
                            let body = request.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let seen = Seen {
                                method,
                                path,
                                authorization: authorization.unwrap_or_default(),
                                content_type: content_type.unwrap_or_default(),
                                body,
                            };
                            record.lock().unwrap().push(seen.clone());
                            let (status, body) = handler(&seen);
                            let response = Response::builder().status(status).body(Full::new(Bytes::from(body)));
                            Ok::<_, std::convert::Infallible>(response.unwrap())
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
        });
        Stub { addr, seen }
    }

    /// Runs `shoal ARGS` against the stub.
    fn shoal(&self, args: &[&str]) -> Output {
        shoal(&format!("http://{}", self.addr), args)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn shoal(server: &str, args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .args(["--server", server, "--token", TOKEN])
        .env_remove("SHOAL_SERVER")
        .env_remove("SHOAL_TOKEN")
        .env("SHOAL_DATA_DIR", "/nonexistent/shoal-cli-test")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const HOURS_3: u64 = 3 * 3600;

/// A service as the API returns it (created three hours ago: AGE `3h`).
fn service_view(name: &str, ready: u32, desired: u32, rollout: &str) -> Value {
    let created = now_unix() - HOURS_3;
    json!({
        "record": {
            "service": {
                "name": name,
                "labels": {"app": name},
                "spec": {
                    "module": "/target/wasm32-wasip2/release/hello.wasm",
                    "moduleField": "../target/wasm32-wasip2/release/hello.wasm",
                    "replicas": desired,
                    "routes": [{"path": "/"}],
                    "env": {},
                    "resources": {"memory": 64 << 20, "cpuMillis": 500, "instanceMemory": 16 << 20},
                    "timeout": "10s"
                }
            },
            "moduleDigest": format!("3f2a9c1b7e4d{}", "0".repeat(52)),
            "generation": 2,
            "createdUnix": created,
            "updatedUnix": created
        },
        "status": {
            "name": name, "desired": desired, "ready": ready, "updated": ready, "available": ready,
            "revision": "3382d9", "generation": 2, "observedGeneration": 2, "rollout": rollout,
            "message": null, "routes": [{"path": "/"}]
        }
    })
}

#[test]
fn get_services_prints_an_aligned_table_and_sends_the_token() {
    let stub = Stub::start(|_| (200, json!([service_view("kubia", 3, 3, "Complete")]).to_string()));
    let output = stub.shoal(&["get", "services"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   AUTOSCALE\n\
         kubia   3/3     3            3           3         3382d9     3h    -\n"
    );
    let seen = stub.seen();
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1/services"));
    assert_eq!(seen[0].authorization, format!("Bearer {TOKEN}"));

    let wide = stdout(&stub.shoal(&["get", "svc", "-o", "wide"]));
    assert!(wide.starts_with("NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   ROUTES   MODULE         MEMORY   CPU    TIMEOUT   ROLLOUT    AUTOSCALE\n"), "{wide}");
    assert!(wide.ends_with("3h    /        3f2a9c1b7e4d   64Mi     500m   10s       Complete   -\n"), "{wide}");

    let json: Value = serde_json::from_str(&stdout(&stub.shoal(&["get", "svc", "-o", "json"]))).unwrap();
    assert_eq!(json[0]["record"]["service"]["name"], "kubia");
    let yaml = stdout(&stub.shoal(&["get", "svc", "-o", "yaml"]));
    assert!(yaml.starts_with("- record:\n    service:\n      name: kubia\n"), "{yaml}");
}

/// [`service_view`] with `spec.autoscale` (1 to 10 replicas) and the
/// autoscaler's decision, made `changed_ago` seconds ago (0: never).
fn autoscaled_view(name: &str, desired: u32, panic: bool, changed_ago: u64, reason: &str) -> Value {
    let mut view = service_view(name, desired, desired, "Complete");
    view["record"]["service"]["spec"]["autoscale"] = json!({
        "min": 1, "max": 10, "metric": "concurrency", "target": 10, "targetUtilization": 70,
        "stableWindow": "60s", "panicWindow": "6s", "panicThreshold": 200, "tolerance": 10,
        "maxScaleUpRate": 1000, "maxScaleDownRate": 2, "scaleToZeroGracePeriod": "30s"
    });
    let changed_unix = if changed_ago == 0 { 0 } else { now_unix() - changed_ago };
    view["status"]["scale"] =
        json!({"desired": desired, "panic": panic, "reason": reason, "changedUnix": changed_unix});
    view
}

#[test]
fn get_services_shows_the_autoscaler() {
    let services = json!([
        service_view("api", 1, 1, "Complete"),
        autoscaled_view("burst", 8, true, 5, "panic: 41.5 in flight over 6s, target 10 × 70% per replica"),
        autoscaled_view("fresh", 1, false, 0, "initial count (spec.replicas 1)"),
        autoscaled_view("kubia", 3, false, 150, "4.2 in flight over 1m, target 10 × 70% per replica"),
    ]);
    let stub = Stub::start(move |seen| match seen.path.as_str() {
        "/v1/services" => (200, services.to_string()),
        "/v1/services/kubia" => (200, services[3].to_string()),
        _ => (200, "[]".into()),
    });
    let output = stub.shoal(&["get", "services"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   AUTOSCALE", "{table}");
    assert_eq!(lines[1], "api     1/1     1            1           1         3382d9     3h    -", "{table}");
    // The ages of the last changes depend on when the test runs: 5s or 6s, 2m30s or 2m31s.
    assert!(lines[2].starts_with("burst   8/8     8            8           8         3382d9     3h    PANIC 1-10, 8 "));
    assert!(lines[2].ends_with("s ago: 41.5 in flight over 6s, target 10 × 70% per replica"), "{table}");
    assert_eq!(
        lines[3],
        "fresh   1/1     1            1           1         3382d9     3h    1-10: initial count (spec.replicas 1)"
    );
    assert!(lines[4].starts_with("kubia   3/3     3            3           3         3382d9     3h    1-10, 3 2m3"));
    assert!(lines[4].ends_with("s ago: 4.2 in flight over 1m, target 10 × 70% per replica"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");

    let output = stub.shoal(&["describe", "service", "kubia"]);
    let text = stdout(&output);
    assert!(text.contains("\nAutoscale:\n  Min:                  1\n  Max:                  10\n"), "{text}");
    assert!(text.contains("\nLast decision: 3 replicas, changed 2m3"), "{text}");
    assert!(text.contains("s ago\n               4.2 in flight over 1m, target 10 × 70% per replica\n"), "{text}");
}

/// What `GET /v1/top` answers: the figures of two replicas of kubia.
fn usage() -> Value {
    json!([
        {"name": "kubia-3382d9-b7k2m", "service": "kubia", "inFlight": 0, "rps": 0.0,
         "p99Ms": null, "cpuMillis": null, "memoryBytes": null},
        {"name": "kubia-3382d9-x58q4", "service": "kubia", "inFlight": 2, "rps": 153.43,
         "p99Ms": 1.84, "cpuMillis": 23, "memoryBytes": 12_u64 * 1024 * 1024 + 512 * 1024}
    ])
}

/// What `GET /v1/calls` answers: frontend's calls to kubia and out.
fn calls() -> Value {
    json!([
        {"caller": "frontend", "target": "kubia", "internal": true, "responses": [0, 60, 0, 2, 1],
         "failed": 0, "denied": 0, "p50Ms": 0.9, "p99Ms": 4.2},
        {"caller": "frontend", "target": "http://example.com:80", "internal": false, "responses": [0, 0, 0, 0, 0],
         "failed": 0, "denied": 3, "p50Ms": null, "p99Ms": null}
    ])
}

#[test]
fn top_prints_each_replicas_figures() {
    let stub = Stub::start(|seen| match seen.path.as_str() {
        "/v1/top" | "/v1/top?service=kubia" => (200, usage().to_string()),
        "/v1/calls" => (200, calls().to_string()),
        "/v1/calls?service=kubia" | "/v1/calls?service=idle" => (200, "[]".into()),
        "/v1/top?service=idle" => (200, "[]".into()),
        "/v1/top?service=gone" => (404, String::new()),
        _ => (404, json!({"error": "service \"nope\" not found"}).to_string()),
    });
    let output = stub.shoal(&["top"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "NAME                 SERVICE   IN-FLIGHT   RPS     P99     CPU   MEMORY\n\
         kubia-3382d9-b7k2m   kubia     0           0.0     -       -     -\n\
         kubia-3382d9-x58q4   kubia     2           153.4   1.8ms   23m   12Mi\n\
         \n\
         CALLER     TARGET                  2XX   3XX   4XX   5XX   FAILED   DENIED   P50      P99\n\
         frontend   kubia                   60    0     2     1     0        0        0.90ms   4.2ms\n\
         frontend   http://example.com:80   0     0     0     0     0        3        -        -\n"
    );
    assert_eq!(stub.seen()[0].path, "/v1/top");
    assert_eq!(stub.seen()[0].authorization, format!("Bearer {TOKEN}"));
    assert_eq!(stub.seen()[1].path, "/v1/calls");

    let output = stub.shoal(&["top", "kubia"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = stub.seen();
    assert_eq!(seen[seen.len() - 2].path, "/v1/top?service=kubia");
    assert_eq!(seen[seen.len() - 1].path, "/v1/calls?service=kubia");
    assert_eq!(stdout(&output).lines().count(), 3, "no calls, no calls table");

    let output = stub.shoal(&["top", "kubia", "-o", "json"]);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json, usage(), "the API's array");
    assert!(stdout(&output).starts_with("[\n  {\n    \"name\": \"kubia-3382d9-b7k2m\",\n"), "pretty");

    let output = stub.shoal(&["top", "idle"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        (stdout(&output).as_str(), stderr(&output).as_str()),
        ("", "No replicas running for service \"idle\".\n")
    );
    assert_eq!(stdout(&stub.shoal(&["top", "idle", "-o", "json"])), "[]\n");

    let output = stub.shoal(&["top", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: service \"nope\" not found\n", "the server's message");
    assert_eq!(stderr(&stub.shoal(&["top", "gone"])), "error: service \"gone\" not found\n", "the CLI's");

    let stub = Stub::start(|_| (200, "[]".into()));
    let output = stub.shoal(&["top"]);
    assert_eq!((stdout(&output).as_str(), stderr(&output).as_str()), ("", "No replicas running.\n"));
}

#[test]
fn top_watch_prints_the_table_again() {
    let stub = Stub::start(|_| (200, usage().to_string()));
    let mut child = Command::new(SHOAL)
        .args(["top", "--watch", "--server", &format!("http://{}", stub.addr), "--token", TOKEN])
        .env_remove("SHOAL_SERVER")
        .env_remove("SHOAL_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    while lines.len() < 8 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        lines.push(line);
    }
    let elapsed = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(lines[..3], lines[4..7], "the same table again");
    assert_eq!((lines[3].as_str(), lines[4].starts_with("NAME ")), ("\n", true), "{lines:?}");
    assert!(elapsed >= std::time::Duration::from_millis(1900), "every 2 seconds: {elapsed:?}");
    let tops = stub.seen().iter().filter(|s| s.path == "/v1/top").count();
    assert_eq!(tops, 3, "one request for the figures per print");
}

#[test]
fn empty_lists_say_no_resources_found() {
    let stub = Stub::start(|_| (200, "[]".into()));
    for what in ["services", "replicas", "modules"] {
        let output = stub.shoal(&["get", what]);
        assert!(output.status.success(), "{what}: {}", stderr(&output));
        assert_eq!(stdout(&output), "", "{what}");
        assert_eq!(stderr(&output), "No resources found.\n", "{what}");
    }
    let output = stub.shoal(&["get", "replicas", "-s", "kubia"]);
    assert_eq!(stub.seen().last().unwrap().path, "/v1/replicas?service=kubia");
    assert_eq!(stderr(&output), "No resources found.\n");
}

#[test]
fn errors_are_one_line() {
    let stub = Stub::start(|seen| match seen.path.as_str() {
        "/v1/services/x" => (404, json!({"error": "service \"x\" not found"}).to_string()),
        "/v1/services/bad/scale" => (400, json!({"error": "replicas: 2000 is more than 1000"}).to_string()),
        "/v1/services" => (401, json!({"error": "unauthorized: wrong token"}).to_string()),
        _ => (502, "<html>\n<body>Bad Gateway</body>".into()),
    });
    let cases: [(&[&str], &str); 5] = [
        (&["get", "svc", "x"], "error: service \"x\" not found\n"),
        (&["describe", "svc", "x"], "error: service \"x\" not found\n"),
        (
            &["get", "svc"],
            "error: unauthorized: the token was rejected (check --token, SHOAL_TOKEN or /nonexistent/shoal-cli-test/token)\n",
        ),
        (&["get", "modules"], "error: the Shoal admin API answered 502 Bad Gateway: <html>\n"),
        (&["logs", "x"], "error: the Shoal admin API answered 502 Bad Gateway: <html>\n"),
    ];
    for (args, want) in cases {
        let output = stub.shoal(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output), want, "{args:?}");
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let output = shoal(&closed, &["get", "svc"]);
    assert_eq!(
        stderr(&output),
        format!(
            "error: cannot connect to the Shoal admin API at {closed}: connection refused (is shoal up running?)\n"
        )
    );
    let output = shoal("https://127.0.0.1:8081", &["get", "svc"]);
    assert!(stderr(&output).starts_with("error: --server \"https://127.0.0.1:8081\": the admin API speaks plain HTTP"));
    assert_eq!(stderr(&output).lines().count(), 1);
}

#[test]
fn apply_uploads_each_module_once_then_puts_each_service() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-format-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let manifest = |name: &str, path: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  module: hello.wasm\n  routes: [{{path: {path}}}]\n"
        )
    };
    std::fs::write(dir.join("services.yaml"), format!("{}---\n{}", manifest("kubia", "/"), manifest("api", "/api")))
        .unwrap();
    let digest = "ab".repeat(32);
    let stub = Stub::start(move |seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/v1/modules") => (201, json!({"digest": digest, "size": 8, "createdUnix": 1}).to_string()),
        ("PUT", "/v1/services/kubia") => (200, json!({"result": "created"}).to_string()),
        ("PUT", "/v1/services/api") => (200, json!({"result": "unchanged"}).to_string()),
        _ => (404, json!({"error": "no such route"}).to_string()),
    });
    let output = stub.shoal(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "service/kubia created\nservice/api unchanged\n");
    let seen = stub.seen();
    let calls: Vec<(&str, &str)> = seen.iter().map(|s| (s.method.as_str(), s.path.as_str())).collect();
    assert_eq!(calls, [("POST", "/v1/modules"), ("PUT", "/v1/services/kubia"), ("PUT", "/v1/services/api")]);
    assert_eq!(seen[0].content_type, "application/wasm");
    assert_eq!(seen[0].body, b"\0asm\x0d\0\x01\0");
    let put: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(put["moduleDigest"], "ab".repeat(32));
    let document = put["manifest"].as_str().unwrap();
    assert!(document.contains("name: kubia") && !document.contains("name: api"), "{document}");

    // A bad manifest among good ones: nothing is sent.
    std::fs::write(dir.join("z-bad.yaml"), manifest("bad", "/bad").replace("hello.wasm", "missing.wasm")).unwrap();
    let output = stub.shoal(&["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let error = stderr(&output);
    assert!(
        error.starts_with(&format!(
            "error: {}: spec.module: missing.wasm: no such file",
            dir.join("z-bad.yaml").display()
        )),
        "{error}"
    );
    assert!(error.contains("build it with: cargo build --release --target wasm32-wasip2"), "{error}");
    assert_eq!(stub.seen().len(), 3, "nothing more was sent");

    let output = stub.shoal(&["push", dir.join("hello.wasm").to_str().unwrap()]);
    assert_eq!(stdout(&output), format!("module sha256:{} (8 B)\n", "ab".repeat(32)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn delete_scale_and_logs() {
    let stub = Stub::start(|seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("DELETE", "/v1/services/kubia") => (200, json!({"deleted": "kubia"}).to_string()),
        ("PUT", "/v1/services/kubia/scale") => (200, service_view("kubia", 3, 5, "Progressing").to_string()),
        ("GET", "/v1/logs/kubia?tail=2") => (200, "kubia-3382d9-x58q4 | one\nkubia-3382d9-x58q4 | two\n".into()),
        ("GET", "/v1/logs/nope") => (404, String::new()),
        _ => (404, json!({"error": "service \"nope\" not found"}).to_string()),
    });
    assert_eq!(stdout(&stub.shoal(&["delete", "svc", "kubia"])), "service \"kubia\" deleted\n");
    assert_eq!(stdout(&stub.shoal(&["scale", "service", "kubia", "--replicas", "5"])), "service/kubia scaled\n");
    assert_eq!(stub.seen()[1].body, br#"{"replicas":5}"#);
    let logs = stub.shoal(&["logs", "kubia", "--tail", "2"]);
    assert_eq!(stdout(&logs), "kubia-3382d9-x58q4 | one\nkubia-3382d9-x58q4 | two\n");
    // A 404 without the server's message gets the CLI's; the server's own is shown as is.
    assert_eq!(stderr(&stub.shoal(&["logs", "nope"])), "error: no service or replica named \"nope\"\n");
    assert_eq!(stderr(&stub.shoal(&["delete", "svc", "nope"])), "error: service \"nope\" not found\n");
}

#[test]
fn rollout_status_follows_until_complete_or_halted() {
    let polls = AtomicUsize::new(0);
    let stub = Stub::start(move |seen| match seen.path.as_str() {
        "/v1/replicas?service=kubia" | "/v1/replicas?service=broken" => (200, "[]".into()),
        "/v1/services/kubia" => {
            let view = match polls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => service_view("kubia", 1, 3, "Progressing"),
                _ => service_view("kubia", 3, 3, "Complete"),
            };
            (200, view.to_string())
        }
        _ => {
            let mut view = service_view("broken", 0, 3, "Halted");
            view["status"]["message"] = json!("new replicas keep failing: exit status 1");
            (200, view.to_string())
        }
    });
    let output = stub.shoal(&["rollout", "status", "kubia"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "Waiting for rollout to finish: 1 out of 3 new replicas have been updated...\n\
         service \"kubia\" successfully rolled out\n"
    );
    let output = stub.shoal(&["rollout", "status", "broken"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: rollout of service \"broken\" halted: new replicas keep failing: exit status 1\n"
    );
}
