//! A route belongs to its service from the moment the service exists until
//! it is gone: while the service has no ready replica its requests get
//! `503` (or wait, if autoscaled), never another service's answer.

use std::time::{Duration, Instant};

use crate::support::*;

/// Functions in the slow fixture: a few seconds of compiling here.
const SLOW_FUNCTIONS: usize = 6000;

/// The kubia catch-all (every host, every path) and `slow` on
/// `slow.local`, whose module takes seconds to compile.
fn catch_all_and_slow(dir: &Scratch, slow_spec: &str) -> Vec<String> {
    dir.write("slow.wasm", slow_component(SLOW_FUNCTIONS));
    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let slow =
        dir.write("slow.yaml", manifest("slow", "slow.wasm", &format!("routes:\n  - host: slow.local\n{slow_spec}")));
    vec!["-f".into(), kubia.to_str().unwrap().into(), "-f".into(), slow.to_str().unwrap().into()]
}

/// Who answered a request for `host`: `(status, "kubia" | "slow" | body)`.
async fn who(shoal: &Shoal, host: &str, path: &str) -> (u16, String) {
    let (status, body) = get(&shoal.url(path), Some(host)).await;
    let name = body.strip_prefix("You've hit ").and_then(|rest| rest.split('-').next()).unwrap_or(&body);
    (status, name.to_owned())
}

/// Restarts `shoal` on its data with an empty compiled-module cache (as
/// after an upgrade of Shoal): every module is compiled again.
fn restart_cold(shoal: Shoal) -> Shoal {
    let data = shoal.stop_keep_data();
    std::fs::remove_dir_all(data.0.join("cache")).unwrap();
    Shoal::start_in(data, &[], |_| {})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_whose_module_is_being_prepared_gets_503_never_the_catch_alls_answer() {
    let dir = Scratch::new("routes-slow");
    let args = catch_all_and_slow(&dir, "replicas: 1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut shoal = Shoal::start(&args);
    shoal.wait_ready("kubia");
    shoal.wait_ready("slow");
    assert_eq!(who(&shoal, "slow.local", "/").await, (200, "slow".into()));
    assert_eq!(who(&shoal, "other.local", "/").await, (200, "kubia".into()));

    // A restart compiles the slow module again: its host gets 503 until
    // its replica is ready, then its own answer.
    let mut shoal = restart_cold(shoal);
    let started = Instant::now();
    let mut answers: Vec<(u16, String)> = Vec::new();
    loop {
        let answer = who(&shoal, "slow.local", "/").await;
        assert_ne!(answer.1, "kubia", "the catch-all answered for slow.local after {:?}", started.elapsed());
        let done = answer == (200, "slow".into());
        answers.push(answer);
        if done {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "slow never served: {:?}", answers.last());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unavailable = answers.iter().filter(|(status, _)| *status == 503).count();
    eprintln!("slow.local: {unavailable} × 503 over {:?}, then its own answer", started.elapsed());
    assert!(unavailable > 0, "the module was prepared before any request: make it slower");
    assert!(answers.iter().all(|(status, name)| *status == 503 || name == "slow"), "{answers:?}");
    shoal.wait_for_output(|l| l.contains("service/slow Ready"));

    // A service applied while Shoal runs: once `apply` returns, its host is
    // its own (the upload compiled the module; it was the catch-all's
    // before, when the service did not exist).
    dir.write("slow2.wasm", slow_component(SLOW_FUNCTIONS + 1));
    let slow2 = dir.write("slow2.yaml", manifest("slow2", "slow2.wasm", "routes:\n  - host: slow2.local"));
    assert_eq!(who(&shoal, "slow2.local", "/").await, (200, "kubia".into()));
    let (ok, _, err) = shoal.cli(&["apply", "-f", slow2.to_str().unwrap()]);
    assert!(ok, "{err}");
    let started = Instant::now();
    loop {
        let (status, name) = who(&shoal, "slow2.local", "/").await;
        assert_ne!(name, "kubia", "the catch-all answered for slow2.local after apply");
        if status == 200 {
            assert_eq!(name, "slow2");
            break;
        }
        assert_eq!(status, 503);
        assert!(started.elapsed() < Duration::from_secs(60), "slow2 never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_autoscaled_service_holds_requests_until_its_timeout_and_sheds_past_its_queue() {
    let dir = Scratch::new("routes-activator");
    let spec = "autoscale:\n  min: 0\n  max: 2\ntimeout: 1s\nlimits:\n  concurrency: 1\n  queue: 1";
    let args = catch_all_and_slow(&dir, spec);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut shoal = Shoal::start(&args);
    shoal.wait_ready("slow");
    let mut shoal = restart_cold(shoal);
    shoal.wait_for_output(|l| l.contains("service/kubia Ready"));

    // While its module compiles, `concurrency + queue` (2) requests wait,
    // up to the timeout (1 s), then get 503; the others get 503 with
    // Retry-After at once.
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = shoal.url("/");
            tokio::spawn(async move {
                let started = Instant::now();
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
                let request =
                    hyper::Request::get(url).header("host", "slow.local").body(http_body_util::Empty::new()).unwrap();
                let response = client.request(request).await.unwrap();
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let status = response.status().as_u16();
                let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
                (status, retry_after, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut shed = Vec::new();
    for request in requests {
        let (status, retry_after, body, took) = request.await.unwrap();
        assert_eq!(status, 503, "{body}");
        if retry_after.is_some() {
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert!(body.contains("2 requests are already waiting"), "{body}");
            shed.push(took);
        } else {
            assert!(body.contains("no replica became ready within the service's timeout (1s)"), "{body}");
            held.push(took);
        }
    }
    eprintln!("held {held:?}, shed {shed:?}");
    assert_eq!((held.len(), shed.len()), (2, 4));
    assert!(held.iter().all(|t| *t >= Duration::from_millis(900)), "a held request was answered early: {held:?}");
    assert!(shed.iter().max() < held.iter().min(), "shed requests waited: {shed:?} vs {held:?}");
    // Once ready, it serves.
    shoal.wait_for_output(|l| l.contains("service/slow Ready"));
    assert_eq!(who(&shoal, "slow.local", "/").await, (200, "slow".into()));
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_service_answers_503_while_it_drains_never_the_catch_alls_answer() {
    let dir = Scratch::new("routes-delete");
    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let faulty = dir
        .write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\ntimeout: 20s\nroutes:\n  - host: f.local"));
    let mut shoal = Shoal::start(&["-f", kubia.to_str().unwrap(), "-f", faulty.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    shoal.wait_ready("faulty");
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let url = shoal.url("/sleep?ms=3000");
            tokio::spawn(async move { get(&url, Some("f.local")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, _, err) = shoal.cli(&["delete", "service", "faulty"]);
    assert!(ok, "{err}");
    // While its replicas drain, its host is still its own.
    let started = Instant::now();
    let mut unavailable = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (status, body) = get(&shoal.url("/"), Some("f.local")).await;
        assert!(!body.starts_with("You've hit kubia"), "the catch-all answered while faulty drained");
        assert_eq!(status, 503, "{body}");
        unavailable += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for request in in_flight {
        assert_eq!(request.await.unwrap(), (200, "slept 3000 ms\n".to_owned()));
    }
    // Once it is gone, the host is routed like any other: to the catch-all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&shoal.url("/"), Some("f.local")).await;
        if body.starts_with("You've hit kubia") {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "faulty's route was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{unavailable} × 503 while faulty drained");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_change_on_a_running_service_moves_its_traffic_without_replacing_replicas() {
    let dir = Scratch::new("routes-change");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\nroutes:\n  - path: /a"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    assert_eq!(get(&shoal.url("/a"), None).await.0, 200);
    assert_eq!(get(&shoal.url("/b"), None).await.0, 404);
    let workers = shoal.worker_pids();
    assert_eq!(workers.len(), 2);

    dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\nroutes:\n  - path: /b"));
    let (ok, out, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "service/faulty configured\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&shoal.url("/b"), None).await.0 != 200 {
        assert!(Instant::now() < deadline, "/b never reached faulty");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(&shoal.url("/b/c"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&shoal.url("/a"), None).await.0, 404);
    assert_eq!(shoal.worker_pids(), workers, "a route change replaced replicas");
    assert!(shoal.stop().success());
}
