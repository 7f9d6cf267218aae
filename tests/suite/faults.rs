//! Guest faults map to the right status and the replica keeps serving: a
//! trap gives 500, an endless loop 504 at its deadline, a dead worker 502,
//! no replica 503.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_gives_500_and_the_replica_keeps_serving() {
    let (mut shoal, _dir) = start_faulty("faulty", "replicas: 1\ntimeout: 2s");
    let (status, before) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        let (status, body) = get(&shoal.url("/trap"), None).await;
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("trapped"), "{body}");
    }
    let (status, after) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(before, after, "the same replica still serves");
    // Each trap is one summary line in the replica's log, beside the
    // guest's own panic message; the wasm backtrace only at debug level.
    // (The guest's output and the worker's own lines are two streams: their
    // order may vary, so the whole log is read. They reach the log book
    // through pipes the agent reads: on a loaded machine a line written
    // before the response can arrive after it, so the log is awaited.)
    let summaries =
        |logs: &str| logs.lines().filter(|l| l.contains("guest trapped: ") && l.contains("`unreachable`")).count();
    let logs = shoal.eventually(&["logs", "faulty"], |logs| {
        summaries(logs) >= 3 && logs.matches("faulty: /trap requested").count() >= 3
    });
    assert_eq!(summaries(&logs), 3, "{logs}");
    assert_eq!(logs.matches("faulty: /trap requested").count(), 3, "{logs}");
    assert!(logs.lines().count() < 30, "more than a few lines per trap:\n{logs}");
    assert!(!shoal.dump().contains("wasm backtrace"), "a backtrace at the default log level:\n{}", shoal.dump());
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_gives_504_within_its_deadline_and_the_replica_keeps_serving() {
    // Room for several instances at once (the default 64Mi fits one).
    let (mut shoal, _dir) = start_faulty("faulty", "replicas: 1\ntimeout: 2s\nresources: {instanceMemory: 16Mi}");
    let (_, before) = get(&shoal.url("/"), None).await;
    let started = Instant::now();
    let looping = tokio::spawn({
        let url = shoal.url("/loop");
        async move { get(&url, None).await }
    });
    // While the loop runs, the replica's one thread still serves others:
    // the guest yields at every epoch tick.
    shoal.wait_for_output(|line| line.contains("faulty: GET /loop"));
    let beside = Instant::now();
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!((status, body.as_str()), (200, before.as_str()));
    assert!(beside.elapsed() < Duration::from_secs(1), "a request beside the loop took {:?}", beside.elapsed());
    assert!(!looping.is_finished(), "the looping request ended before a request beside it was answered");
    let (status, body) = looping.await.expect("the looping request's task");
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(took < Duration::from_secs(3), "504 after {took:?}, deadline 2 s");
    // The looping instance was interrupted: the replica serves at full speed.
    for _ in 0..5 {
        let (status, body) = get(&shoal.url("/"), None).await;
        assert_eq!(status, 200);
        assert_eq!(body, before);
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_request_gives_502_and_is_replaced() {
    let (mut shoal, _dir) = start_faulty("faulty", "replicas: 1\ntimeout: 20s");
    let workers = shoal.worker_pids();
    assert_eq!(workers.len(), 1);
    let url = shoal.url("/loop");
    let pending = tokio::spawn(async move { get(&url, None).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SAFETY: kill on a worker process of our own shoal.
    unsafe { libc::kill(workers[0] as i32, libc::SIGKILL) };
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 502, "{body}");
    shoal.wait_for_line(|l| l.contains("Exited: worker killed by signal 9"));
    shoal.wait_for_line(|l| l.contains("shoal: replica/faulty-") && l.contains("Started:"));
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_replica_gives_503() {
    let (mut shoal, _dir) = start_faulty("faulty", "replicas: 0");
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 503);
    assert!(body.contains("no ready replica"), "{body}");
    assert!(shoal.stop().success());
}
