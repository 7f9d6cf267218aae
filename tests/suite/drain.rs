//! Graceful drain: requests in flight when Shoal is stopped, or when their
//! replica is scaled away, finish with their whole response.

use std::time::Duration;

use crate::support::*;

fn start(replicas: u32) -> (Shoal, Scratch) {
    let dir = Scratch::new("drain");
    let file = dir.write("svc.yaml", manifest("faulty", FAULTY_WASM, &format!("replicas: {replicas}\ntimeout: 20s")));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    (shoal, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_requests_finish_when_shoal_is_stopped() {
    let (mut shoal, _dir) = start(2);
    let mut pending = Vec::new();
    for _ in 0..4 {
        let url = shoal.url("/sleep?ms=2000");
        pending.push(tokio::spawn(async move { get(&url, None).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: kill on our own child.
    unsafe { libc::kill(shoal.pid() as i32, libc::SIGTERM) };
    for request in pending {
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 2000 ms\n"), "a request was cut off by the shutdown");
    }
    let status = shoal.wait_exit(Duration::from_secs(30)).expect("shoal did not stop");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_requests_finish_when_their_replica_is_scaled_away() {
    let (mut shoal, _dir) = start(2);
    let mut pending = Vec::new();
    for _ in 0..4 {
        let url = shoal.url("/sleep?ms=3000");
        pending.push(tokio::spawn(async move { get(&url, None).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, _, err) = shoal.cli(&["scale", "service", "faulty", "--replicas", "0"]);
    assert!(ok, "{err}");
    for request in pending {
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 3000 ms\n"), "a request was cut off by the scale-down");
    }
    shoal.wait_for_output(|l| l.contains("Stopped: worker exit code 0"));
    assert!(shoal.stop().success());
}
