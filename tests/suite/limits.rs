//! Every limit from the manifest, from both sides: under it the request
//! succeeds; over it the stated status (or the stated recovery), and the
//! replica still serves afterwards.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::support::*;

/// Sends raw bytes on a new connection and returns the status code of the
/// answer (0 if the connection closed without one).
fn raw_status(shoal: &Shoal, request: &[u8]) -> u16 {
    let mut stream = std::net::TcpStream::connect(shoal.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn still_serves(shoal: &Shoal) {
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_memory_obeyed_and_violated() {
    let (mut shoal, _dir) = start_faulty("instmem", "resources:\n  memory: 128Mi\n  instanceMemory: 16Mi");
    let (status, body) = get(&shoal.url("/alloc?mb=4"), None).await;
    assert_eq!((status, body.as_str()), (200, "allocated 4 MiB\n"));
    let (status, body) = get(&shoal.url("/alloc?mb=32"), None).await;
    assert_eq!(status, 500, "{body}");
    still_serves(&shoal).await;
    let (status, _) = get(&shoal.url("/alloc?mb=4"), None).await;
    assert_eq!(status, 200);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_memory_obeyed_and_oom_killed_then_replaced() {
    if let Some(reason) = cgroups_unavailable() {
        eprintln!("SKIPPED: cgroups unavailable: {reason}");
        return;
    }
    // Instances run only as many at once as the replica's memory holds, so
    // their linear memory cannot exhaust it; memory a guest makes the host
    // hold (wasi:http header objects) is outside the instance's cap, and
    // only the cgroup bounds it.
    let (mut shoal, _dir) = start_faulty("oom", "resources:\n  memory: 48Mi\n  instanceMemory: 16Mi\ntimeout: 10s");
    let (status, _) = get(&shoal.url("/hostalloc?mb=16"), None).await;
    assert_eq!(status, 200, "16 MiB fits in a 48 MiB replica");

    let (status, _) = get(&shoal.url("/hostalloc?mb=96&ms=1000"), None).await;
    assert_eq!(status, 502, "the worker was killed mid-request");
    shoal.wait_for_output(|l| l.contains("OOMKilled:"));
    // Replaced: it serves again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(&shoal.url("/"), None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement after the OOM kill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_and_queue_obeyed_and_exceeded() {
    let (mut shoal, _dir) = start_faulty("queue", "limits:\n  concurrency: 1\n  queue: 1\ntimeout: 6s");
    // The only instance is busy with a loop until its 6 s deadline.
    let busy = {
        let url = shoal.url("/loop");
        tokio::spawn(async move { get(&url, None).await })
    };
    shoal.wait_for_output(|l| l.contains("faulty: GET /loop"));
    // Late enough that its own deadline outlasts the loop's by seconds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // One request may wait: it is answered once the instance is free.
    let queued = {
        let url = shoal.url("/");
        tokio::spawn(async move { get(&url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A second one finds the queue full: 503 with Retry-After, at once
    // (while the loop still holds the instance).
    let client = client();
    let response =
        client.request(hyper::Request::get(shoal.url("/")).body(http_body_util::Empty::new()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    assert!(!busy.is_finished() && !queued.is_finished(), "the overflow waited instead of being refused");

    let (status, _) = busy.await.unwrap();
    assert_eq!(status, 504);
    let (status, body) = queued.await.unwrap();
    assert_eq!(status, 200, "the queued request should be served: {body}");
    still_serves(&shoal).await;
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn request_body_size_obeyed_and_exceeded() {
    let (mut shoal, _dir) = start_faulty("body", "limits:\n  requestBody: 1Ki");
    let post = |len: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{}",
            "a".repeat(len)
        )
    };
    assert_eq!(raw_status(&shoal, post(512).as_bytes()), 200);
    assert_eq!(raw_status(&shoal, post(2048).as_bytes()), 413);
    // Without a declared length (chunked), it is cut off at the limit.
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "b".repeat(2048)
    );
    assert_eq!(raw_status(&shoal, chunked.as_bytes()), 413);
    let small = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
    assert_eq!(raw_status(&shoal, small.as_bytes()), 200);
    still_serves(&shoal).await;
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn header_size_and_count_obeyed_and_exceeded() {
    let (mut shoal, _dir) = start_faulty("headers", "replicas: 1");
    let with_headers = |count: usize, size: usize| {
        let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..count {
            request.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(size)));
        }
        request.push_str("\r\n");
        request
    };
    assert_eq!(raw_status(&shoal, with_headers(50, 100).as_bytes()), 200, "50 headers, 5 KiB in all");
    assert_eq!(raw_status(&shoal, with_headers(150, 10).as_bytes()), 431, "more than 100 headers");
    assert_eq!(raw_status(&shoal, with_headers(1, 40 * 1024).as_bytes()), 431, "a 40 KiB header");
    still_serves(&shoal).await;
    assert!(shoal.stop().success());
}
