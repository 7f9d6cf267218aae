//! Modules as uploaded: checked for what they are before they are stored,
//! deleted when nothing uses them, streamed to disk with bounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;

/// `shoal push FILE` against `shoal`: (success, stdout, stderr).
fn push(shoal: &Shoal, file: &std::path::Path) -> (bool, String, String) {
    shoal.cli(&["push", file.to_str().unwrap()])
}

/// The line after `error: ` that the CLI printed.
fn error_line(stderr: &str) -> &str {
    stderr.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_components_and_text_files_are_refused_by_push_and_apply_with_the_same_message() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let dir = Scratch::new("fake");
    let fake = dir.write("fake.wasm", b"\0asm\x0d\0\x01\0garbage");
    let text = dir.write("notes.wasm", "these are notes, not a component\n");
    // A valid component that is not a wasi:http service: nothing to serve.
    let core_wrapped = dir.write("empty.wasm", wat::parse_str("(component)").unwrap());
    let modules_before = shoal.cli(&["get", "modules", "-o", "json"]).1;

    for (file, reason) in [
        (&fake, "not a valid component"),
        (&text, "not a WebAssembly file"),
        (&core_wrapped, "not a wasi:http service that Shoal can run"),
    ] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let (ok, _, err) = push(&shoal, file);
        assert!(!ok, "push of {name} succeeded");
        let pushed = error_line(&err).to_owned();
        assert!(pushed.starts_with(&format!("{}: {reason}", file.display())), "{pushed}");

        let manifest = dir.write("svc.yaml", manifest("fakesvc", name, ""));
        let (ok, out, err) = shoal.cli(&["apply", "-f", manifest.to_str().unwrap()]);
        assert!(!ok, "apply of {name} succeeded: {out}");
        let applied = error_line(&err);
        // The same message, after the manifest's name and field.
        let expected =
            format!("{}: spec.module: {name}: {}", manifest.display(), &pushed[file.display().to_string().len() + 2..]);
        assert_eq!(applied, expected);
    }
    let (_, services, _) = shoal.cli(&["get", "services", "-o", "json"]);
    assert!(!services.contains("fakesvc"), "a refused module made a service: {services}");
    assert_eq!(shoal.cli(&["get", "modules", "-o", "json"]).1, modules_before, "a refused module was stored");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_updated_to_an_unpreparable_module_halts_and_rollout_status_fails_at_once() {
    let (mut shoal, dir) = start_faulty("halt", "replicas: 2");
    // A second module, stored and then damaged behind Shoal's back: it
    // cannot be prepared any more.
    let (ok, out, err) = push(&shoal, std::path::Path::new(HELLO_WASM));
    assert!(ok, "{err}");
    let digest = out.split_whitespace().nth(1).unwrap().trim_start_matches("sha256:").to_owned();
    std::fs::write(shoal.data.0.join("modules").join(format!("{digest}.wasm")), b"\0asm\x0d\0\x01\0damaged").unwrap();

    // Apply the service with that module (by digest: the CLI would upload
    // the file again, which repairs it).
    let document = manifest("faulty", FAULTY_WASM, "replicas: 2");
    let body = serde_json::json!({ "manifest": document, "moduleDigest": format!("sha256:{digest}") });
    let (status, answer) = shoal.admin_request("PUT", "/v1/services/faulty", Some(body.to_string())).await;
    assert_eq!(status, 200, "{answer}");

    let started = Instant::now();
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "60s"]);
    let took = started.elapsed();
    assert!(!ok, "rollout status succeeded: {out}");
    assert!(took < Duration::from_secs(5), "rollout status took {took:?}");
    let line = error_line(&err);
    assert!(line.contains("halted") && line.contains("cannot be prepared"), "{line}");
    assert!(line.contains("does not match its content"), "{line}");
    // The old replicas keep serving.
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200, "{body}");
    let (_, out, _) = shoal.cli(&["get", "services"]);
    assert!(out.contains("2/2"), "{out}");
    drop(dir);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_deleted_when_nothing_uses_them_and_refused_while_something_does() {
    let dir = Scratch::new("lifecycle");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap(), "--module-retention", "3s"]);
    shoal.wait_ready("faulty");
    let modules = |shoal: &Shoal| -> Vec<String> {
        let (ok, out, err) = shoal.cli(&["get", "modules", "-o", "json"]);
        assert!(ok, "{err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect()
    };
    let in_use = modules(&shoal);
    assert_eq!(in_use.len(), 1);

    // In use: refused, naming the service.
    let (ok, _, err) = shoal.cli(&["delete", "module", &in_use[0][..12]]);
    assert!(!ok);
    assert!(error_line(&err).contains("is in use: service faulty runs it"), "{err}");

    // Unused: deleted, with its file and its compiled artifact.
    let (ok, out, err) = push(&shoal, std::path::Path::new(HELLO_WASM));
    assert!(ok, "{err}");
    let hello = out.split_whitespace().nth(1).unwrap().trim_start_matches("sha256:").to_owned();
    let file = shoal.data.0.join("modules").join(format!("{hello}.wasm"));
    assert!(file.exists());
    let artifacts = |digest: &str| {
        std::fs::read_dir(shoal.data.0.join("cache"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(digest)))
            .count()
    };
    assert_eq!(artifacts(&hello), 1, "an upload is compiled once, into the cache");
    let (ok, out, err) = shoal.cli(&["delete", "module", &format!("sha256:{hello}")]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("module sha256:{hello} deleted")), "{out}");
    assert!(!file.exists(), "its file remains");
    assert_eq!(artifacts(&hello), 0, "its compiled artifact remains");
    assert_eq!(modules(&shoal), in_use);
    let (ok, _, err) = shoal.cli(&["delete", "module", &hello]);
    assert!(!ok);
    assert!(error_line(&err).contains("not found"), "{err}");

    // `shoal gc` deletes every unused module at once.
    let (ok, _, err) = push(&shoal, std::path::Path::new(HELLO_WASM));
    assert!(ok, "{err}");
    let (ok, out, err) = shoal.cli(&["gc"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("module sha256:{hello} deleted")), "{out}");
    assert!(out.ends_with("1 module(s) deleted, 119.6 KiB freed\n") || out.contains("1 module(s) deleted"), "{out}");
    assert_eq!(modules(&shoal), in_use);
    assert_eq!(shoal.cli(&["gc"]).1, "No unused modules.\n");

    // And the collector deletes it on its own after the retention (3 s).
    let (ok, _, err) = push(&shoal, std::path::Path::new(HELLO_WASM));
    assert!(ok, "{err}");
    assert_eq!(modules(&shoal).len(), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while modules(&shoal).len() == 2 {
        assert!(Instant::now() < deadline, "the unused module was not collected");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(modules(&shoal), in_use, "the collector deleted a module in use");
    assert!(shoal.stop().success());
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The memory bound `shoal up` keeps while modules upload (README).
const UPLOAD_RSS_BOUND: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn four_parallel_200_mb_uploads_keep_shoal_up_memory_bounded() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let pid = shoal.pid();
    let before = rss(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let most_at_once = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let staging = shoal.data.0.join("modules").join(".staging");
    let sampler = {
        let (peak, most_at_once, done, staging) = (peak.clone(), most_at_once.clone(), done.clone(), staging.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(pid), Ordering::SeqCst);
                let writing = std::fs::read_dir(&staging).map_or(0, |d| d.count() as u64);
                most_at_once.fetch_max(writing, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Each body: a component header and 200 MB of pseudo-random bytes,
    // generated as it is sent (the test holds no 200 MB buffers either).
    const SIZE: usize = 200 << 20;
    let url = format!("{}/v1/modules", shoal.server());
    let token = shoal.token();
    let uploads: Vec<_> = (0..4u64)
        .map(|n| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut busy = 0;
                loop {
                    let (status, body) = upload_generated(&url, &token, n, SIZE).await;
                    if status != 429 {
                        return (status, body, busy);
                    }
                    busy += 1;
                    assert!(Instant::now() < deadline, "upload {n} never got its turn");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        })
        .collect();
    let mut refused_busy = 0;
    for upload in uploads {
        let (status, body, busy) = upload.await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not a valid component"), "{body}");
        refused_busy += busy;
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    let most_at_once = most_at_once.load(Ordering::SeqCst);
    eprintln!(
        "shoal up RSS: {} MiB before, {} MiB at the peak; at most {most_at_once} uploads written at once, {refused_busy} × 429",
        before >> 20,
        peak >> 20
    );
    assert!(peak < UPLOAD_RSS_BOUND, "RSS peaked at {} MiB", peak >> 20);
    assert!(most_at_once <= 2, "{most_at_once} uploads were written at once");
    assert_eq!(refused_busy, 0, "four uploads wait for their turn rather than being refused");
    // Nothing of them is left on disk.
    let left: Vec<_> = std::fs::read_dir(&staging).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(shoal.stop().success());
}

/// POSTs `size` bytes (a component header, then bytes from a generator
/// seeded with `seed`) to `url`, streamed: (status, body).
async fn upload_generated(url: &str, token: &str, seed: u64, size: usize) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let (sender, body) = {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
        (tx, http_body_util::StreamBody::new(tokio_stream_from(rx)))
    };
    let writer = tokio::spawn(async move {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
        let mut sent = 0;
        let mut first = true;
        while sent < size {
            let len = (size - sent).min(256 * 1024);
            let mut chunk = vec![0u8; len];
            for byte in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            if first {
                chunk[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
                first = false;
            }
            sent += len;
            if sender.send(Ok(hyper::body::Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
        }
        sender.closed().await;
    });
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/wasm")
        .header("content-length", size.to_string())
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let result = client.request(request).await;
    writer.abort();
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(error) => (0, format!("request failed: {error}")),
    }
}

/// A stream over an mpsc receiver.
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
