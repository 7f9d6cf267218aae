//! Autoscaling from request metrics: up under a load step, back toward the
//! minimum when it stops, to zero after the grace period, and from zero on
//! the next requests through the activator, which starts exactly one
//! replica however many requests wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// The status of `service` from the admin API: (ready, desired).
async fn counts(shoal: &Shoal, service: &str) -> (u64, u64) {
    let (status, body) = shoal.admin_get(&format!("/v1/services/{service}")).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    (view["status"]["ready"].as_u64().unwrap(), view["status"]["desired"].as_u64().unwrap())
}

/// Polls until `done(ready, desired)` holds; returns how long it took.
async fn until(shoal: &Shoal, service: &str, limit: Duration, done: impl Fn(u64, u64) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let (ready, desired) = counts(shoal, service).await;
        if done(ready, desired) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {ready} ready / {desired} desired after {limit:?}; output:\n{}",
            shoal.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_step_scales_up_within_seconds_and_back_down_after() {
    let (mut shoal, _dir) = start_faulty(
        "step",
        "replicas: 1\nautoscale:\n  min: 1\n  max: 6\n  target: 2\n  stableWindow: 6s\n  panicWindow: 2s",
    );
    // 8 clients, each with one 100 ms request at a time: about 8 in flight
    // against a target of 2 × 70 % per replica.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok, failed) = (shoal.url("/sleep?ms=100"), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let client = client();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (status, _) = get_with(&client, &url, None).await;
                if status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let took = until(&shoal, "faulty", Duration::from_secs(20), |ready, _| ready >= 3).await;
    eprintln!("3 replicas ready {took:?} after the load step");
    assert!(took <= Duration::from_secs(5), "3 replicas ready only after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed while scaling", ok + failed);
    let peak = counts(&shoal, "faulty").await.1;
    assert!(peak >= 3, "{peak}");
    shoal.wait_for_output(|l| l.contains("service/faulty Scaled: 1 → ") && l.contains("panic:"));

    // Without load it returns to its minimum, one step per decision.
    until(&shoal, "faulty", Duration::from_secs(60), |ready, desired| ready == 1 && desired == 1).await;
    assert!(shoal.count_lines(|l| l.contains("service/faulty Scaled: ") && l.contains(" → 1 replicas")) >= 1);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn scales_to_zero_after_its_grace_period_and_the_next_request_gets_200() {
    let (mut shoal, _dir) = start_faulty("zero", "autoscale:\n  min: 0\n  max: 3\n  scaleToZeroGracePeriod: 2s");
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    shoal.wait_for_line(|l| l.contains("service/faulty ScaledToZero: 1 → 0 replicas: no requests for 2s"));
    until(&shoal, "faulty", Duration::from_secs(20), |ready, desired| ready == 0 && desired == 0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shoal.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "workers left at zero: {:?}", shoal.worker_pids());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let (status, body) = get(&shoal.url("/"), None).await;
    eprintln!("first request from zero answered in {:?}", started.elapsed());
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("You've hit faulty-"), "{body}");
    shoal.wait_for_output(|l| l.contains("service/faulty ScaledFromZero: 0 → 1 replicas: a request arrived"));
    assert_eq!(shoal.worker_pids().len(), 1);
    // The replica from zero was the standby worker, forked and exec'd ahead.
    let started: Vec<String> =
        shoal.output.lock().unwrap().iter().filter(|l| l.contains("Started:")).cloned().collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[1].contains("exec standby"), "{started:?}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_at_zero_all_succeed_with_one_scale_from_zero() {
    // A high target: the 50 requests alone do not call for a second replica.
    let (mut shoal, _dir) =
        start_faulty("burst", "autoscale:\n  min: 0\n  max: 3\n  target: 100\n  scaleToZeroGracePeriod: 1s");
    shoal.wait_for_line(|l| l.contains("service/faulty ScaledToZero"));
    until(&shoal, "faulty", Duration::from_secs(20), |ready, _| ready == 0).await;
    let started_before = shoal.count_lines(|l| l.contains("replica/faulty-") && l.contains("Started:"));

    let url = shoal.url("/sleep?ms=20");
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, None).await })
        })
        .collect();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Give any second activation time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shoal.count_lines(|l| l.contains("service/faulty ScaledFromZero")), 1, "{}", shoal.dump());
    let started_after = shoal.count_lines(|l| l.contains("replica/faulty-") && l.contains("Started:"));
    assert_eq!(started_after - started_before, 1, "{}", shoal.dump());
    let (_, metrics) = shoal.admin_get("/metrics").await;
    assert!(metrics.contains("shoal_autoscaler_scale_from_zero_total{service=\"faulty\"} 1"), "{metrics}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_exposed_in_prometheus_format_behind_the_token() {
    let (mut shoal, _dir) = start_faulty("metrics", "replicas: 2");
    let client = client();
    for _ in 0..20 {
        assert_eq!(get_with(&client, &shoal.url("/"), None).await.0, 200);
    }
    assert_eq!(get_with(&client, &shoal.url("/trap"), None).await.0, 500);
    // Without the token: 401, and no figures.
    let (status, body) = get(&format!("{}/metrics", shoal.server()), None).await;
    assert_eq!(status, 401, "{body}");

    let (status, text) = shoal.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("shoal_service_requests_total{service=\"faulty\",code=\"2xx\"} 20"), "{text}");
    assert!(text.contains("shoal_service_requests_total{service=\"faulty\",code=\"5xx\"} 1"), "{text}");
    assert!(text.contains("shoal_service_ready_replicas{service=\"faulty\"} 2"), "{text}");
    assert!(text.contains("shoal_service_desired_replicas{service=\"faulty\"} 2"), "{text}");
    let replica_total: u64 = text
        .lines()
        .filter(|l| l.starts_with("shoal_replica_requests_total{") && !l.starts_with('#'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(replica_total, 21, "{text}");
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("shoal_replica_request_duration_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    assert_eq!(counts.iter().sum::<u64>(), 21, "{text}");
    assert!(text.contains("shoal_replica_request_duration_seconds_bucket{"), "{text}");
    // CPU and memory of both replicas, once sampled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = shoal.admin_get("/metrics").await;
        let memory = text.lines().filter(|l| l.starts_with("shoal_replica_memory_bytes{")).count();
        let cpu = text.lines().filter(|l| l.starts_with("shoal_replica_cpu_seconds_total{")).count();
        if memory == 2 && cpu == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no CPU or memory figures:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_for_a_service_that_is_deleted_get_503_at_once() {
    // A component that traps at start: no replica ever becomes ready, so a
    // request waits in the activator (up to its 60 s deadline).
    let dir = Scratch::new("held");
    let crash = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crash-at-start.wat")).unwrap();
    dir.write("crash.wasm", crash);
    let file = dir.write("crash.yaml", manifest("crash", "crash.wasm", "timeout: 60s\nautoscale:\n  min: 0\n  max: 2"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_for_output(|l| l.contains("replica/crash-") && l.contains("FailedStart"));

    let url = shoal.url("/");
    let waiting = tokio::spawn(async move { get(&url, None).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the request should wait for a replica");
    let (_, metrics) = shoal.admin_get("/metrics").await;
    assert!(metrics.contains("shoal_service_requests_held{service=\"crash\"} 1"), "{metrics}");

    let (ok, out, err) = shoal.cli(&["delete", "service", "crash"]);
    assert!(ok, "{out}{err}");
    let answered = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    let (status, body) = answered.expect("the waiting request was not answered after the delete").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(shoal.stop().success());
}
