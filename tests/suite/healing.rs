//! Self-healing: workers killed under load are replaced with no failed
//! request, and a release that crashes at start backs off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_worker_every_second_under_load_fails_no_request() {
    let dir = Scratch::new("chaos");
    let file = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 3"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), shoal.url("/"));
        load.push(tokio::spawn(async move {
            let client = client();
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                let request = hyper::Request::get(&url).body(http_body_util::Empty::new()).unwrap();
                match client.request(request).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        eprintln!("status {}", r.status());
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => {
                        eprintln!("request error {error}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    let mut killed = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let workers = shoal.worker_pids();
        if let Some(&victim) = workers.get(killed % workers.len().max(1)) {
            // SAFETY: kill on a worker of our own shoal.
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
            killed += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    eprintln!("{} requests succeeded, {killed} workers killed", ok.load(Ordering::SeqCst));
    assert_eq!(killed, 10);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed while workers were killed");
    assert!(ok.load(Ordering::SeqCst) > 100);
    // Back at three ready replicas.
    shoal.eventually(&["get", "services"], |out| {
        out.lines().any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["kubia", "3/3"])
    });
    assert_eq!(shoal.worker_pids().len(), 3);
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_that_crashes_at_start_backs_off_without_burning_cpu() {
    let dir = Scratch::new("crashloop");
    let crash = wat::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crash-at-start.wat")).unwrap();
    dir.write("crash.wasm", crash);
    let file = dir.write("crash.yaml", manifest("crashy", "crash.wasm", "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);

    // Failed starts are retried after 1 s, 2 s, 4 s...
    let mut delays = Vec::new();
    for _ in 0..3 {
        let line = shoal.wait_for_line(|l| l.contains("FailedStart:") && l.contains("retrying in"));
        assert!(line.contains("failed to start"), "{line}");
        delays.push(line.rsplit("retrying in ").next().unwrap().trim().to_owned());
    }
    assert_eq!(delays, ["1s", "2s", "4s"]);
    let (ok, out, _) = shoal.cli(&["get", "replicas"]);
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with("crashy-")).expect("a crashy replica");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "0/1", "{row}");
    assert!(["CrashLoopBackOff", "Starting"].contains(&cols[2]), "{row}");
    assert!(cols[3].parse::<u32>().unwrap() >= 3, "{row}");

    // While it backs off, shoal itself is idle: under 25% of a core over 3 s.
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", shoal.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = ticks() - before;
    assert!(used < 75, "shoal used {used} ticks (1/100 s) in 3 s while backing off");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_worker_leaves_the_rotation_and_comes_back() {
    let dir = Scratch::new("probe");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\ntimeout: 5s"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    let workers = shoal.worker_pids();
    assert_eq!(workers.len(), 2);
    let stuck = workers[0];
    let stuck_name = shoal.replica_of(stuck);
    // SAFETY: signals to a worker of our own shoal.
    unsafe { libc::kill(stuck as i32, libc::SIGSTOP) };
    shoal.wait_for_line(|l| l.contains(&format!("replica/{stuck_name} Unready:")));

    // Out of rotation: every request goes to the other replica, at once.
    let client = client();
    for _ in 0..20 {
        let (status, body) = get_with(&client, &shoal.url("/"), None).await;
        assert_eq!(status, 200);
        assert!(!body.contains(&stuck_name), "a request reached the stuck replica");
    }
    let (_, out, _) = shoal.cli(&["get", "replicas"]);
    let row = out.lines().find(|l| l.starts_with(&stuck_name)).expect("the stuck replica is listed");
    assert!(row.split_whitespace().nth(1) == Some("0/1"), "{row}");

    unsafe { libc::kill(stuck as i32, libc::SIGCONT) };
    shoal.wait_for_line(|l| l.contains(&format!("replica/{stuck_name} Ready:")));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(get_with(&client, &shoal.url("/"), None).await.1);
    }
    assert_eq!(seen.len(), 2, "the replica did not come back into rotation: {seen:?}");
    assert!(shoal.stop().success());
}
