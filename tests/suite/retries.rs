//! When the gateway sends a request again, and when it never does; and
//! what reaches the guest of the request a client sent.

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// Small instances: a replica runs many at once (as many as its memory
/// holds), so that sleeping requests do not queue behind each other.
const ROOMY: &str = "resources:\n  instanceMemory: 4Mi";

/// Sends `method path` with `body` to the gateway: (status, body).
async fn send(shoal: &Shoal, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request =
        hyper::Request::builder().method(method).uri(shoal.url(path)).body(Full::new(Bytes::from(body))).unwrap();
    let response = client.request(request).await.expect("request failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The lines in which a replica logged `faulty: <method> <path>`, with the
/// replica's name.
fn seen(shoal: &Shoal, method: &str, path: &str) -> Vec<String> {
    let needle = format!(" | faulty: {method} {path}");
    shoal
        .output
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_suffix(&needle).map(|replica| replica.trim_start_matches("[shoal] ").to_owned()))
        .collect()
}

/// Waits until a replica logged `method path` `count` times; returns the
/// replicas that did.
async fn wait_seen(shoal: &Shoal, method: &str, path: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replicas = seen(shoal, method, path);
        if replicas.len() >= count {
            return replicas;
        }
        assert!(Instant::now() < deadline, "{method} {path} was not seen {count} times: {replicas:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs the workers of `replicas`, all at once.
fn kill_replicas(shoal: &Shoal, replicas: &[&str]) {
    let pids: Vec<u32> = replicas.iter().map(|r| shoal.pid_of(r)).collect();
    for pid in pids {
        // SAFETY: kill on a worker of our own shoal.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Sends `method /sleep?ms=3000` with `body`, kills the worker that got it
/// while it sleeps, and returns the status and every replica that saw it.
async fn kill_mid_request(shoal: &Shoal, method: &'static str, body: Vec<u8>) -> (u16, Vec<String>) {
    let before = seen(shoal, method, "/sleep").len();
    let request = {
        let url = shoal.url("/sleep?ms=3000");
        tokio::spawn(async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            let request = hyper::Request::builder().method(method).uri(url).body(Full::new(Bytes::from(body))).unwrap();
            client.request(request).await.map(|r| r.status().as_u16()).unwrap_or(0)
        })
    };
    let first = wait_seen(shoal, method, "/sleep", before + 1).await;
    kill_replicas(shoal, &[&first[before]]);
    let status = request.await.unwrap();
    // Time for a retry, if one were made, to show in the logs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (status, seen(shoal, method, "/sleep")[before..].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_reached_a_dying_worker_is_sent_again_only_when_that_is_safe() {
    let (mut shoal, _dir) = start_faulty("retry-safety", &format!("replicas: 3\ntimeout: 20s\n{ROOMY}"));

    // A POST that reached the worker: never sent again.
    let (status, replicas) = kill_mid_request(&shoal, "POST", b"order #1".to_vec()).await;
    assert_eq!(status, 502);
    assert_eq!(replicas.len(), 1, "the POST reached {replicas:?}");
    shoal.eventually(&["get", "services"], |out| out.contains("3/3"));

    // A GET with a body over 64 KiB streams, and is never sent again.
    let (status, replicas) = kill_mid_request(&shoal, "GET", vec![b'x'; 100 * 1024]).await;
    assert_eq!(status, 502);
    assert_eq!(replicas.len(), 1, "the large GET reached {replicas:?}");
    shoal.eventually(&["get", "services"], |out| out.contains("3/3"));

    // A GET with a small body is: another replica answers it.
    let (status, replicas) = kill_mid_request(&shoal, "GET", b"small".to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(replicas.len(), 2, "the small GET reached {replicas:?}");
    assert_ne!(replicas[0], replicas[1]);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_requests_survive_two_replicas_dying_at_once() {
    let (mut shoal, _dir) = start_faulty("retry-two", &format!("replicas: 3\ntimeout: 30s\n{ROOMY}"));
    // Enough requests in flight that every replica has several.
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let url = shoal.url("/sleep?ms=3000");
            tokio::spawn(async move { get(&url, None).await })
        })
        .collect();
    let replicas = wait_seen(&shoal, "GET", "/sleep", 30).await;
    let mut names = replicas.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "requests did not reach every replica: {replicas:?}");
    // Two of the three die at once.
    kill_replicas(&shoal, &[&names[0], &names[1]]);
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 3000 ms\n"), "a request failed with two replicas dead");
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_leaves_the_rotation_within_seconds_and_its_requests_fail_over() {
    let (mut shoal, _dir) = start_faulty("stopped", &format!("replicas: 2\ntimeout: 30s\n{ROOMY}"));
    let workers = shoal.worker_pids();
    let stopped = workers[0];
    let name = shoal.replica_of(stopped);
    // SAFETY: a worker of our own shoal.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    let started = Instant::now();

    // Requests sent meanwhile: the ones that went to the stopped worker are
    // sent to the other once it is out of rotation, long before the 30 s
    // deadline.
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let url = shoal.url("/sleep?ms=100");
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = get(&url, None).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    // A POST that went to it is answered 502 then, not left to the deadline.
    let posts: Vec<_> = (0..6)
        .map(|_| {
            let url = shoal.url("/sleep?ms=100");
            tokio::spawn(async move {
                let client =
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
                let request = hyper::Request::post(url).body(Full::new(Bytes::from_static(b"x"))).unwrap();
                let started = Instant::now();
                let status = client.request(request).await.map(|r| r.status().as_u16()).unwrap_or(0);
                (status, started.elapsed())
            })
        })
        .collect();

    let out =
        shoal.eventually(&["get", "replicas"], |out| out.lines().any(|l| l.starts_with(&name) && l.contains("0/1")));
    let left_after = started.elapsed();
    eprintln!("{name} out of rotation {left_after:?} after SIGSTOP:\n{out}");
    assert!(left_after < Duration::from_secs(6), "a stopped worker stayed in rotation {left_after:?}");
    for get in gets {
        let ((status, body), took) = get.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 100 ms\n"));
        assert!(took < Duration::from_secs(10), "a GET waited {took:?}");
    }
    let mut statuses = Vec::new();
    for post in posts {
        let (status, took) = post.await.unwrap();
        assert!(status == 200 || status == 502, "{status}");
        assert!(took < Duration::from_secs(10), "a POST waited {took:?}");
        statuses.push(status);
    }
    eprintln!("POSTs: {statuses:?}");

    // Continued, it comes back.
    // SAFETY: as above.
    unsafe { libc::kill(stopped as i32, libc::SIGCONT) };
    shoal.eventually(&["get", "replicas"], |out| out.lines().any(|l| l.starts_with(&name) && l.contains("1/1")));
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_sees_the_clients_request_with_forwarding_headers_and_never_the_probe_header() {
    let (mut shoal, _dir) = start_faulty("inspect", "replicas: 1");
    let target = "/inspect/a%20b//c/../d.txt?q=%2F&x=1&x=2&empty=&plus=a+b";
    let client = client();
    let request = hyper::Request::get(shoal.url(target))
        .header("x-shoal-probe", "1")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "203.0.113.7")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let mut lines = body.lines();
    // The worker answers `ready` itself to a request with the probe header:
    // the guest answering proves the header did not reach the worker.
    assert_eq!(lines.next(), Some(format!("GET {target}").as_str()), "{body}");
    let headers: Vec<&str> = lines.collect();
    assert!(!headers.iter().any(|h| h.starts_with("x-shoal-probe")), "{body}");
    assert!(headers.contains(&"x-custom: kept"), "{body}");
    assert!(headers.contains(&"x-forwarded-proto: http"), "{body}");
    assert!(headers.contains(&"x-forwarded-for: 203.0.113.7, 127.0.0.1"), "{body}");

    // Methods and bodies reach it as sent.
    let (status, body) = send(&shoal, "PATCH", "/inspect?x", b"patch body".to_vec()).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("PATCH /inspect?x\n"), "{body}");
    assert!(shoal.stop().success());
}
