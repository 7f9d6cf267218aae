//! The control plane end to end: the CLI against `shoal up`'s admin API,
//! durable desired state, rolling updates, authentication and logs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// A row of `shoal get services` for `name` showing `ready` (like "3/3").
fn row_ready(out: &str, name: &str, ready: &str) -> bool {
    out.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.first() == Some(&name) && cols.get(1) == Some(&ready)
    })
}

fn faulty_manifest(dir: &Scratch, replicas: u32, variant: &str) -> String {
    let text = manifest(
        "faulty",
        FAULTY_WASM,
        &format!("replicas: {replicas}\nenv:\n  VARIANT: {variant}\ntimeout: 5s\nroutes:\n  - path: /"),
    );
    dir.write(&format!("faulty-{variant}.yaml"), text).to_string_lossy().into_owned()
}

/// The worker processes of `service` under `shoal`: the pids the API
/// reports for its replicas that are running children of `shoal`.
fn workers_of(shoal: &Shoal, service: &str) -> Vec<u32> {
    let (ok, out, err) = shoal.cli(&["get", "replicas", "-o", "json"]);
    assert!(ok, "{err}");
    let replicas: serde_json::Value = serde_json::from_str(&out).unwrap();
    let running = shoal.worker_pids();
    replicas
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["service"] == service)
        .filter_map(|r| r["pid"].as_u64())
        .map(|pid| pid as u32)
        .filter(|pid| running.contains(pid))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_get_scale_and_delete() {
    let dir = Scratch::new("ctl");
    let other = faulty_manifest(&dir, 1, "v1");
    let mut shoal = Shoal::start(&["-f", &other]);
    shoal.wait_ready("faulty");

    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 3\nroutes:\n  - host: kubia.test"));
    let (ok, out, err) = shoal.cli(&["apply", "-f", kubia.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("service/kubia created"), "{out}");
    let table = shoal.eventually(&["get", "services"], |out| row_ready(out, "kubia", "3/3"));
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");

    // Re-applying the same manifest changes nothing.
    let (ok, out, _) = shoal.cli(&["apply", "-f", kubia.to_str().unwrap()]);
    assert!(ok && out.contains("service/kubia unchanged"), "{out}");

    let (ok, out, err) = shoal.cli(&["scale", "service", "kubia", "--replicas", "5"]);
    assert!(ok, "{err}");
    assert!(out.contains("scaled"), "{out}");
    shoal.eventually(&["get", "services"], |out| row_ready(out, "kubia", "5/5"));
    assert_eq!(workers_of(&shoal, "kubia").len(), 5);
    let mut seen = BTreeSet::new();
    let client = client();
    for _ in 0..60 {
        let (status, body) = get_with(&client, &shoal.url("/"), Some("kubia.test")).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 5, "requests reached {seen:?}");

    let (ok, out, err) = shoal.cli(&["get", "replicas", "-o", "wide"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("kubia-")).count(), 5, "{out}");

    let (ok, out, err) = shoal.cli(&["delete", "service", "kubia"]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers_of(&shoal, "kubia").is_empty() {
        assert!(Instant::now() < deadline, "kubia workers remain after delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = shoal.cli(&["get", "services"]);
    assert!(!out.contains("kubia"), "{out}");
    // Its route is gone: kubia.test now falls through to faulty's catch-all.
    let (_, body) = get(&shoal.url("/"), Some("kubia.test")).await;
    assert!(!body.contains("kubia-"), "a deleted service still answers: {body}");
    // The other service was not touched.
    assert_eq!(workers_of(&shoal, "faulty").len(), 1);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_update_under_load_has_no_errors() {
    let dir = Scratch::new("roll");
    let v1 = faulty_manifest(&dir, 3, "v1");
    let v2 = faulty_manifest(&dir, 3, "v2");
    let mut shoal = Shoal::start(&["-f", &v1]);
    shoal.wait_ready("faulty");

    // Bounded load: 4 clients, until told to stop or 120 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_count, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok_count, errors, answers) = (stop.clone(), ok_count.clone(), errors.clone(), answers.clone());
        let url = shoal.url("/env?name=VARIANT");
        load.push(tokio::spawn(async move {
            let client = client();
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let request = hyper::Request::get(&url).body(http_body_util::Empty::new()).unwrap();
                match client.request(request).await {
                    Ok(response) if response.status().is_success() => {
                        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
                        ok_count.fetch_add(1, Ordering::SeqCst);
                        let mut answers = answers.lock().unwrap();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        if answers.last() != Some(&body) {
                            answers.push(body);
                        }
                    }
                    Ok(response) => {
                        eprintln!("non-2xx during rollout: {}", response.status());
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => {
                        eprintln!("request failed during rollout: {error}");
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, out, err) = shoal.cli(&["apply", "-f", &v2]);
    assert!(ok && out.contains("configured"), "{out}{err}");
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "2m"]);
    assert!(ok, "rollout failed: {out}{err}");
    assert!(out.contains("successfully rolled out"), "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    eprintln!("{} requests succeeded during the rollout", ok_count.load(Ordering::SeqCst));
    assert_eq!(errors.load(Ordering::SeqCst), 0, "failed requests during the rollout");
    assert!(ok_count.load(Ordering::SeqCst) > 100);
    assert_eq!(answers.first().map(String::as_str), Some("v1"));
    assert_eq!(answers.last().map(String::as_str), Some("v2"), "answers: {answers:?}");
    assert_eq!(workers_of(&shoal, "faulty").len(), 3);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_crashes_at_start_never_takes_the_old_replicas_down() {
    let dir = Scratch::new("crash");
    let v1 = faulty_manifest(&dir, 2, "v1");
    let mut shoal = Shoal::start(&["-f", &v1]);
    shoal.wait_ready("faulty");
    let crash = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crash-at-start.wat")).unwrap();
    dir.write("crash.wasm", crash);
    let bad = dir.write("bad.yaml", manifest("faulty", "crash.wasm", "replicas: 2\ntimeout: 5s\nroutes:\n  - path: /"));
    let (ok, out, err) = shoal.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(ok && out.contains("configured"), "{out}{err}");

    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "2m"]);
    assert!(!ok, "rollout status succeeded for a release that cannot start: {out}");
    assert!(err.contains("halted"), "{err}");
    assert!(err.contains("failed to start"), "the reason is missing: {err}");

    // The old replicas still serve.
    for _ in 0..10 {
        let (status, body) = get(&shoal.url("/env?name=VARIANT"), None).await;
        assert_eq!(status, 200);
        assert_eq!(body, "v1");
    }
    let (_, out, _) = shoal.cli(&["get", "services"]);
    assert!(row_ready(&out, "faulty", "2/2"), "{out}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn services_come_back_after_a_restart_and_tampered_modules_are_refused() {
    let dir = Scratch::new("restart");
    let v1 = faulty_manifest(&dir, 2, "v1");
    let mut shoal = Shoal::start(&["-f", &v1]);
    shoal.wait_ready("faulty");
    let (_, modules_before, _) = shoal.cli(&["get", "modules", "-o", "json"]);
    let data = shoal.stop_keep_data();

    // Restart without -f: the store brings the service back.
    let mut shoal = Shoal::start_in(data, &[], |_| {});
    shoal.wait_ready("faulty");
    let (status, body) = get(&shoal.url("/env?name=VARIANT"), None).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    shoal.eventually(&["get", "services"], |out| row_ready(out, "faulty", "2/2"));
    let (_, modules_after, _) = shoal.cli(&["get", "modules", "-o", "json"]);
    assert_eq!(modules_before, modules_after, "modules changed across the restart");
    let data = shoal.stop_keep_data();

    // Tamper with the stored module's file behind Shoal's back.
    {
        let modules: serde_json::Value = serde_json::from_str(&modules_before).unwrap();
        let digest = modules[0]["digest"].as_str().unwrap().to_owned();
        let file = data.0.join("modules").join(format!("{digest}.wasm"));
        assert!(file.exists(), "{} is missing", file.display());
        std::fs::write(&file, std::fs::read(HELLO_WASM).unwrap()).unwrap();
    }
    // The compiled cache would still hold the real module: clear it, so
    // that the tampered file is what would be served.
    let _ = std::fs::remove_dir_all(data.0.join("cache"));

    let mut shoal = Shoal::start_in(data, &[], |_| {});
    shoal.wait_for_output(|l| l.contains("ModuleInvalid") && l.contains("does not match its content"));
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 503, "a tampered module was served");
    assert!(workers_of(&shoal, "faulty").is_empty());
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_requires_the_token_and_is_not_on_the_gateway() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let http = reqwest_like::Client::new();
    let services = format!("{}/v1/services", shoal.server());

    let (status, body) = http.send("GET", &services, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = http.send("GET", &services, Some("wrong-token")).await;
    assert_eq!(status, 401);
    let (status, _) = http.send("DELETE", &format!("{services}/kubia"), None).await;
    assert_eq!(status, 401);
    let (status, _) = http.send("DELETE", &format!("{services}/kubia"), Some("wrong-token")).await;
    assert_eq!(status, 401);
    let (status, body) = http.send("GET", &services, Some(&shoal.token())).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"kubia\""), "the unauthorized delete changed something: {body}");

    // The gateway's port routes to services; it never serves the admin API.
    let (status, body) = get(&shoal.url("/v1/services"), None).await;
    assert!(!body.contains("\"record\""), "gateway answered the admin API ({status}): {body}");
    assert!(body.starts_with("You've hit kubia-"), "{body}");

    // The token file is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(shoal.data.0.join("token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The CLI without a usable token says so in one line.
    let output = std::process::Command::new(SHOAL)
        .args(["get", "services", "--server", &shoal.server(), "--token", "nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.starts_with("error: ") && err.contains("token"), "{err}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_every_replica_prefixed_and_follow() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let client = client();
    let mut names = BTreeSet::new();
    while names.len() < 3 {
        let (_, body) = get_with(&client, &shoal.url("/"), None).await;
        names.insert(body.trim().trim_start_matches("You've hit ").to_owned());
    }
    let out = shoal.eventually(&["logs", "kubia"], |out| {
        names.iter().all(|n| out.contains(&format!("{n} | Received request from 127.0.0.1")))
    });
    assert!(out.lines().all(|l| l.starts_with("kubia-")), "{out}");

    // -f follows: a request made after it starts shows up.
    let mut follow = std::process::Command::new(SHOAL)
        .args(["logs", "kubia", "-f", "--tail", "0", "--server", &shoal.server(), "--token", &shoal.token()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let request = hyper::Request::get(shoal.url("/"))
        .header("x-forwarded-for", "203.0.113.7")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 200);
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("logs -f showed nothing new");
    assert!(line.contains("Received request from 203.0.113.7"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(shoal.stop().success());
}

/// A small HTTP client for raw admin API calls.
mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    pub struct Client(
        hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    );

    impl Client {
        pub fn new() -> Self {
            Self(super::client())
        }

        pub async fn send(&self, method: &str, url: &str, token: Option<&str>) -> (u16, String) {
            let mut request = hyper::Request::builder().method(method).uri(url);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = self.0.request(request.body(Empty::new()).unwrap()).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    }
}

/// Optimistic concurrency, as in Kubernetes: a manifest that names the
/// `resourceVersion` it was read at is applied only if nothing changed the
/// service since. Two updates racing from the same version: one wins, the
/// other gets 409 Conflict and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn two_updates_from_one_resource_version_one_wins_the_other_gets_409() {
    let dir = Scratch::new("rv");
    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", kubia.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    let read = || async {
        let (status, body) = shoal.admin_get("/v1/services/kubia").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        let record = &view["record"];
        (
            record["resourceVersion"].as_u64().expect("a resourceVersion"),
            record["moduleDigest"].as_str().unwrap().to_owned(),
        )
    };
    let (version, digest) = read().await;
    let body = |replicas: u32, version: u64| {
        let text = manifest("kubia", HELLO_WASM, &format!("replicas: {replicas}"))
            .replace("  name: kubia\n", &format!("  name: kubia\n  resourceVersion: \"{version}\"\n"));
        serde_json::json!({ "manifest": text, "moduleDigest": digest }).to_string()
    };
    let (first, second) = tokio::join!(
        shoal.admin_request("PUT", "/v1/services/kubia", Some(body(2, version))),
        shoal.admin_request("PUT", "/v1/services/kubia", Some(body(3, version))),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{first:?} {second:?}");
    let (won, lost) = if first.0 == 200 { (2, &second) } else { (3, &first) };
    assert!(lost.1.contains("service \\\"kubia\\\" was changed by another write (resourceVersion "), "{}", lost.1);
    let (now, _) = read().await;
    assert!(now > version);
    let (ok, out, err) = shoal.cli(&["get", "service", "kubia", "-o", "json"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"replicas\": {won}")), "the winner's spec is stored: {out}");
    // A stale version stays refused; the current one is accepted.
    assert_eq!(shoal.admin_request("PUT", "/v1/services/kubia", Some(body(4, version))).await.0, 409);
    let (status, out) = shoal.admin_request("PUT", "/v1/services/kubia", Some(body(4, now))).await;
    assert_eq!(status, 200, "{out}");
    // The CLI passes a manifest's resourceVersion through and shows the refusal.
    let stale = dir.write(
        "stale.yaml",
        manifest("kubia", HELLO_WASM, "replicas: 5")
            .replace("  name: kubia\n", &format!("  name: kubia\n  resourceVersion: {version}\n")),
    );
    let (ok, _, err) = shoal.cli(&["apply", "-f", stale.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("was changed by another write"), "{err}");
    shoal.stop();
}
