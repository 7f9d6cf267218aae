//! `spec.instances`: a fresh Wasm instance per request by default, so guest
//! globals never carry over; with `maxRequests` an instance serves several
//! requests (its globals persist), is discarded after that many, after
//! `maxIdle`, and at once when it trapped.

use std::time::Duration;

use crate::support::*;

/// GETs `/count` `n` times in a row on one connection.
async fn counts(shoal: &Shoal, n: usize) -> Vec<u32> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, body) = get_with(&client, &shoal.url("/count"), None).await;
        assert_eq!(status, 200, "{body}");
        out.push(body.trim().parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_every_request_gets_a_fresh_instance() {
    let (mut shoal, _dir) = start_faulty("fresh", "replicas: 1");
    assert_eq!(counts(&shoal, 10).await, [1; 10]);
    assert!(shoal.stop().success());
}

/// The default resets an instance that served a request instead of making
/// another (see `Reset` in the worker): nothing a request leaves behind
/// (memory it grew, a global it set, host resources behind handles it
/// forgot) reaches the next request or stays in the worker.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_a_request_leaves_behind_reaches_the_next() {
    let (mut shoal, _dir) = start_faulty("leaks", "replicas: 1");
    // The worker says it resets rather than instantiates.
    shoal.wait_for_output(|line| line.contains("Started") && line.ends_with(", instances reset"));
    let client = client();
    let (status, fresh) = get_with(&client, &shoal.url("/state"), None).await;
    assert_eq!(status, 200, "{fresh}");
    assert!(fresh.starts_with("served=0 ") && fresh.trim_end().ends_with(" secret=none"), "{fresh}");
    for i in 0..100 {
        let (status, body) = get_with(&client, &shoal.url(&format!("/leak?mb=4&secret=s{i}")), None).await;
        assert_eq!((status, body.as_str()), (200, "leaked 4 MiB\n"), "/leak number {i}");
        let (status, state) = get_with(&client, &shoal.url("/state"), None).await;
        assert_eq!((status, state.as_str()), (200, fresh.as_str()), "after /leak number {i}");
    }
    // The requests leaked 400 MiB of linear memory and 400 MiB of host
    // memory; the worker holds none of it.
    let worker = shoal.worker_pids()[0];
    let rss = rss_kib(worker).expect("the worker's RSS") / 1024;
    assert!(rss < 96, "the worker holds {rss} MiB after the leaks");
    assert!(shoal.stop().success());
}

/// A worker the zygote forked after loading its module ahead (every start
/// after the first one of a module) runs and resets its instances like
/// one that loaded the module itself: it scans its own memory's pages, not
/// the zygote's, when it resets.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_forked_with_its_module_preloaded_resets_like_any_other() {
    let (mut shoal, _dir) = start_faulty("preloaded", "replicas: 1");
    shoal.wait_for_output(|line| line.contains("Started"));
    // Replaced until a replacement had its module preloaded: the first
    // ones may come from standby workers forked before the preload.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while shoal.count_lines(|l| l.contains("Started") && l.contains(", module preloaded, instances reset")) == 0 {
        assert!(std::time::Instant::now() < deadline, "no replica started with its module preloaded");
        if let Some(&worker) = shoal.worker_pids().first() {
            // SAFETY: kill on a worker of the shoal this test started.
            unsafe { libc::kill(worker as i32, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        let (status, fresh) = get_with(&client, &shoal.url("/state"), None).await;
        if status == 200 {
            break fresh;
        }
        assert!(std::time::Instant::now() < deadline, "the preloaded replica never answered: {status} {fresh}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(fresh.starts_with("served=0 ") && fresh.trim_end().ends_with(" secret=none"), "{fresh}");
    for i in 0..20 {
        let (status, body) = get_with(&client, &shoal.url(&format!("/leak?mb=4&secret=s{i}")), None).await;
        assert_eq!((status, body.as_str()), (200, "leaked 4 MiB\n"), "/leak number {i}");
        let (status, state) = get_with(&client, &shoal.url("/state"), None).await;
        assert_eq!((status, state.as_str()), (200, fresh.as_str()), "after /leak number {i}");
    }
    assert_eq!(counts(&shoal, 5).await, [1; 5]);
    assert!(shoal.stop().success());
}

/// A guest whose call returns without setting a response (and without
/// dropping the response outparam) gets `500` at once, not at its deadline,
/// whether its instance is reset or kept as it is; the replica goes on
/// serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_returns_without_a_response_gets_500_at_once() {
    for (name, instances) in [("silent-reset", ""), ("silent-reuse", "\ninstances:\n  maxRequests: 5")] {
        let (mut shoal, _dir) = start_faulty(name, &format!("replicas: 1\ntimeout: 10s{instances}"));
        let client = client();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (status, body) = get_with(&client, &shoal.url("/silent"), None).await;
            assert_eq!((status, body.as_str()), (500, "the service returned no response\n"), "{name}");
            // Within a second, far below the 10 s deadline.
            assert!(started.elapsed() < Duration::from_secs(1), "{name}: answered after {:?}", started.elapsed());
            let (status, body) = get_with(&client, &shoal.url("/"), None).await;
            assert_eq!(status, 200, "{name}: {body}");
        }
        shoal.wait_for_output(|line| line.contains("guest returned without setting a response"));
        assert!(shoal.stop().success());
    }
}

/// A reused instance whose linear memory has grown near its cap is retired
/// after the request that grew it, while it still answers: a guest that
/// leaks a little per request (some engines do) is renewed instead of
/// failing a request when it runs out.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_near_its_memory_cap_is_retired_before_it_fails() {
    let spec = "replicas: 1\nresources:\n  memory: 128Mi\n  instanceMemory: 16Mi\ninstances:\n  maxRequests: 1000";
    let (mut shoal, _dir) = start_faulty("retire", spec);
    let client = client();
    // 1 MiB of linear memory leaked per request: without retirement the
    // instance runs out within 16.
    for i in 0..40 {
        let (status, body) = get_with(&client, &shoal.url("/leak?mb=1&host=0"), None).await;
        assert_eq!((status, body.as_str()), (200, "leaked 1 MiB\n"), "request {i}");
    }
    // The instance serving now is not the one that served the first leak.
    let (status, body) = get_with(&client, &shoal.url("/count"), None).await;
    assert_eq!(status, 200, "{body}");
    let count: u32 = body.trim().parse().unwrap();
    assert!(count < 16, "one instance served {count} requests: never retired");
    assert!(shoal.stop().success());
}

/// A guest that sends a response head and never finishes the body, never
/// leaves the client with a body that looks complete or one held open: one
/// that runs on gets the head and the start of the body at once, then a
/// cut-off body at its deadline; one that returns keeping the body gets a
/// 500 at once (nothing had gone out). The replica goes on serving, with
/// instances reset or reused.
#[tokio::test(flavor = "multi_thread")]
async fn a_response_body_never_finished_is_cut_off() {
    use http_body_util::BodyExt as _;
    for (name, instances) in [("unfinished-reset", ""), ("unfinished-reuse", "\ninstances:\n  maxRequests: 5")] {
        let (mut shoal, _dir) = start_faulty(name, &format!("replicas: 1\ntimeout: 3s{instances}"));
        let client = client();
        for _ in 0..2 {
            // Running on: cut at the deadline.
            let started = std::time::Instant::now();
            let request = hyper::Request::get(shoal.url("/unfinished")).body(http_body_util::Empty::new()).unwrap();
            let response = client.request(request).await.expect("the head arrives");
            assert_eq!(response.status(), 200, "{name}");
            let mut body = response.into_body();
            let first = body.frame().await.expect("a first frame").expect("the start of the body");
            assert_eq!(&first.into_data().expect("data")[..], b"the start of a body that never ends\n", "{name}");
            assert!(started.elapsed() < Duration::from_secs(2), "{name}: head after {:?}", started.elapsed());
            let rest = tokio::time::timeout(Duration::from_secs(20), body.collect()).await.expect("cut, not held open");
            assert!(rest.is_err(), "{name}: the body ended as if complete");
            assert!(started.elapsed() >= Duration::from_secs(2), "{name}: cut after only {:?}", started.elapsed());

            // Returned keeping the body: 500 at once.
            let started = std::time::Instant::now();
            let (status, body) = get_with(&client, &shoal.url("/unfinished?forget=1"), None).await;
            assert_eq!((status, body.as_str()), (500, "the service did not finish its response body\n"), "{name}");
            assert!(started.elapsed() < Duration::from_secs(2), "{name}: answered after {:?}", started.elapsed());

            let (status, body) = get_with(&client, &shoal.url("/"), None).await;
            assert_eq!(status, 200, "{name}: {body}");
        }
        shoal.wait_for_output(|line| line.contains("guest returned without finishing its response body"));
        assert!(shoal.stop().success());
    }
}

/// The host state a guest reads through WASI is a new instance's after a
/// reset, as it is: a new insecure seed, and a monotonic clock that started
/// at the reset; an instance reused as it is keeps both (which shows the
/// test can tell).
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_instance_gets_new_clocks_and_random_generators() {
    /// `(seed, clock)` from `/wasi`.
    async fn wasi(shoal: &Shoal) -> (String, Duration) {
        let (status, body) = get(&shoal.url("/wasi"), None).await;
        assert_eq!(status, 200, "{body}");
        let (seed, clock) = body.trim().split_once(' ').expect("seed=… clock_ns=…");
        let ns: u64 = clock.strip_prefix("clock_ns=").and_then(|n| n.parse().ok()).expect("clock_ns");
        (seed.to_owned(), Duration::from_nanos(ns))
    }
    for (name, instances, reset) in [("wasi-reset", "", true), ("wasi-reuse", "\ninstances:\n  maxRequests: 10", false)]
    {
        let (mut shoal, _dir) = start_faulty(name, &format!("replicas: 1{instances}"));
        let first = std::time::Instant::now();
        let (seed1, _) = wasi(&shoal).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = std::time::Instant::now();
        let (seed2, _) = wasi(&shoal).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (seed3, clock3) = wasi(&shoal).await;
        let (since_first, since_second) = (first.elapsed(), second.elapsed());
        if reset {
            assert!(seed1 != seed2 && seed2 != seed3 && seed1 != seed3, "{name}: {seed1} {seed2} {seed3}");
            // Started at the reset after the second request.
            assert!(clock3 < since_second, "{name}: clock at {clock3:?}, {since_second:?} after the second request");
        } else {
            assert!(seed1 == seed2 && seed2 == seed3, "{name}: {seed1} {seed2} {seed3}");
            // Started with the instance, at the first request.
            assert!(
                clock3 + Duration::from_millis(500) > since_first,
                "{name}: clock at {clock3:?}, {since_first:?} after the first request"
            );
        }
        assert!(shoal.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_keeps_its_globals_for_max_requests() {
    let (mut shoal, _dir) = start_faulty("reuse", "replicas: 1\ninstances:\n  maxRequests: 5");
    shoal.wait_for_output(|line| line.contains("Started") && line.ends_with(", instances reuse"));
    assert_eq!(counts(&shoal, 12).await, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_trapped_or_idled_is_never_reused() {
    let (mut shoal, _dir) = start_faulty("discard", "replicas: 1\ninstances:\n  maxRequests: 100\n  maxIdle: 1s");
    assert_eq!(counts(&shoal, 3).await, [1, 2, 3]);
    // The trap happens in the warm instance: it is discarded.
    let (status, _) = get(&shoal.url("/trap"), None).await;
    assert_eq!(status, 500);
    assert_eq!(counts(&shoal, 2).await, [1, 2]);
    // Past maxIdle the idle instance is dropped too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counts(&shoal, 2).await, [1, 2]);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_instance_is_discarded() {
    let (mut shoal, _dir) = start_faulty("deadline", "replicas: 1\ntimeout: 1s\ninstances:\n  maxRequests: 100");
    assert_eq!(counts(&shoal, 2).await, [1, 2]);
    let (status, _) = get(&shoal.url("/loop"), None).await;
    assert_eq!(status, 504);
    // The loop ran in the warm instance (the most recently used), which
    // the deadline interrupted: a fresh one serves next.
    assert_eq!(counts(&shoal, 1).await, [1]);
    assert!(shoal.stop().success());
}
