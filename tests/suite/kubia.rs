//! The kubia sample end to end: `shoal up` on its embedded defaults serves
//! `You've hit <replica>` from three confined worker processes, and leaves
//! nothing behind when it stops.

use std::collections::BTreeSet;

use crate::support::*;

/// `kubia-<6 hex>-<5 chars>`, like a Kubernetes pod name.
fn is_replica_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() == 3
        && parts[0] == "kubia"
        && parts[1].len() == 6
        && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        && parts[2].len() == 5
        && parts[2].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_gets_reach_all_three_replicas() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let names = kubia_hits(&shoal, 30).await;
    assert!(names.iter().all(|name| is_replica_name(name)), "not replica names: {names:?}");
    let seen: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(seen.len(), 3, "30 requests reached {seen:?}");

    // Each replica logged its requests, prefixed with its name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let output = shoal.dump();
        let logged =
            seen.iter().filter(|name| output.contains(&format!("{name} | Received request from 127.0.0.1"))).count();
        if logged == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "request logs missing:\n{output}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_are_processes_in_cgroups_with_the_manifest_memory_limit() {
    if let Some(reason) = cgroups_unavailable() {
        eprintln!("SKIPPED: cgroups unavailable: {reason}");
        return;
    }
    let dir = Scratch::new("cgroup");
    let file =
        dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 3\nresources:\n  memory: 48Mi\n  cpu: 250m"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");

    let workers = shoal.worker_pids();
    assert_eq!(workers.len(), 3, "workers: {workers:?}");
    for pid in &workers {
        assert_ne!(*pid, shoal.pid());
        let path = cgroup_of(*pid, "memory").expect("worker has a memory cgroup");
        assert!(path.contains(&format!("/shoal/up-{}/kubia-", shoal.pid())), "worker {pid} is in {path}");
        let limit_file = memory_limit_file(&path).expect("memory limit file");
        let limit = std::fs::read_to_string(&limit_file).unwrap();
        assert_eq!(limit.trim(), (48u64 << 20).to_string(), "{}", limit_file.display());
        let pids = cgroup_of(*pid, "pids").unwrap();
        assert!(pids.contains("/shoal/"), "pids cgroup {pids}");
        // 250m of cpu: a quarter of each 10 ms period (v1 cpu.cfs_quota_us
        // and cpu.cfs_period_us, v2 cpu.max).
        assert_eq!(cpu_quota(*pid), Some((2_500, 10_000)), "worker {pid}");
        assert_eq!(cgroup_setting(*pid, "pids", "pids.max").as_deref(), Some("64"), "worker {pid}");
    }
    assert!(shoal.stop().success());
}

/// The scheduling policy of every thread of `pid` (`/proc/<pid>/task/*/sched`,
/// its `policy` line: 0 SCHED_OTHER, 3 SCHED_BATCH), by thread name.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(comm), Ok(sched)) =
            (std::fs::read_to_string(task.path().join("comm")), std::fs::read_to_string(task.path().join("sched")))
        else {
            continue; // the thread ended meanwhile
        };
        let policy = sched
            .lines()
            .find(|l| l.starts_with("policy"))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no policy line for {}: {sched}", task.path().display()));
        policies.push((comm.trim().to_owned(), policy));
    }
    policies
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_and_its_workers_run_sched_batch_unless_told_normal() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    for (args, expected) in [(&[][..], SCHED_BATCH), (&["--cpu-scheduling", "normal"][..], SCHED_OTHER)] {
        let mut shoal = Shoal::start(args);
        shoal.wait_ready("kubia");
        assert_eq!(kubia_hits(&shoal, 3).await.len(), 3);
        // The gateway's threads, the fork thread, the standby, and each
        // replica's threads (its runtime and epoch ticker).
        let processes: Vec<u32> = std::iter::once(shoal.pid()).chain(shoal.all_children()).collect();
        assert!(processes.len() >= 4, "shoal up, 3 workers and the standby: {processes:?}");
        for pid in processes {
            let policies = thread_policies(pid);
            assert!(!policies.is_empty(), "process {pid} has no threads");
            for (thread, policy) in policies {
                assert_eq!(policy, expected, "{args:?}: thread {thread:?} of process {pid} ({:?})", comm(pid));
            }
        }
        assert!(shoal.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_leaves_no_worker_and_no_cgroup() {
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let (status, _) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(shoal.worker_pids().len(), 3);
    // The standby workers (started ahead for the next replicas) too, once
    // one has started, and the zygote that forks them all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shoal.all_children().into_iter().any(is_standby) {
        assert!(std::time::Instant::now() < deadline, "no standby worker: {:?}", shoal.all_children());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let workers = shoal.all_children();
    let standbys = workers.iter().filter(|&&p| is_standby(p)).count();
    let zygotes = workers.iter().filter(|&&p| comm(p).as_deref() == Some("shoal-zygote")).count();
    assert_eq!(zygotes, 1, "one zygote: {workers:?}");
    assert_eq!(workers.len(), 3 + standbys + zygotes, "3 replicas, standby workers and the zygote: {workers:?}");
    let groups: Vec<String> = workers.iter().filter_map(|p| cgroup_of(*p, "memory")).collect();
    let pid = shoal.pid();

    assert!(shoal.stop().success(), "shoal did not exit cleanly:\n{}", shoal.dump());
    for worker in &workers {
        assert!(!alive(*worker), "worker {worker} still runs");
    }
    if cgroups_unavailable().is_none() {
        for group in groups.iter().filter(|g| g.contains("/shoal/")) {
            assert!(memory_limit_file(group).is_none(), "cgroup {group} remains");
        }
        assert!(groups.iter().any(|g| g.contains("/shoal/")), "no worker was in a shoal cgroup: {groups:?}");
        for root in CGROUP_ROOTS {
            let instance = std::path::Path::new(root).join(format!("shoal/up-{pid}"));
            assert!(!instance.exists(), "{} remains", instance.display());
        }
    }
    assert!(!std::env::temp_dir().join(format!("shoal-{pid}")).exists(), "run directory remains");
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_h2c_and_routes_by_host_and_path() {
    let dir = Scratch::new("routes");
    let mut text = manifest("kubia", HELLO_WASM, "replicas: 1\nroutes:\n  - host: kubia.test");
    text.push_str("---\n");
    text.push_str(&manifest("faulty", FAULTY_WASM, "replicas: 1\nroutes:\n  - path: /api"));
    let file = dir.write("both.yaml", text);
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("kubia");
    shoal.wait_ready("faulty");

    let (status, body) = get(&shoal.url("/anything"), Some("kubia.test")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("You've hit kubia-"), "{body}");
    // The path reaches the service unchanged, as with an Ingress.
    let (status, body) = get(&shoal.url("/api/x"), Some("other.test")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("You've hit faulty-"), "{body}");
    let (status, body) = get(&shoal.url("/"), Some("other.test")).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route"), "{body}");

    // HTTP/2 with prior knowledge on the same port.
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let response =
        h2.request(hyper::Request::get(shoal.url("/api/h2")).body(Default::default()).unwrap()).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert!(body.starts_with(b"You've hit faulty-"), "{body:?}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cgroup_access_replicas_run_unconfined_with_one_warning() {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nobody = 65534;
    let mut shoal = if root {
        // Run shoal as an unprivileged user, which cannot create cgroups.
        let exe_ok = std::process::Command::new(SHOAL).arg("--version").uid(nobody).gid(nobody).output();
        if !exe_ok.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIPPED: the shoal binary cannot be run by uid {nobody} here (directory permissions)");
            return;
        }
        Shoal::start_with(&[], |command| {
            command.uid(nobody).gid(nobody);
        })
    } else {
        Shoal::start(&[])
    };
    shoal.wait_ready("kubia");
    // (Stdout and stderr are written by two threads: the warning, on
    // stderr, may be read after the Ready event on stdout.)
    shoal.wait_for_output(|l| l.contains("WARNING: cgroups are unavailable"));
    let output = shoal.dump();
    let warnings = output.lines().filter(|l| l.contains("WARNING: cgroups are unavailable")).count();
    assert_eq!(warnings, 1, "{output}");
    assert!(output.contains("UNCONFINED"), "{output}");
    assert_eq!(output.lines().filter(|l| l.contains("cgroup none (unconfined)")).count(), 3, "{output}");
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("You've hit kubia-"));
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_exit_after_a_killed_shoal_and_its_cgroups_are_reclaimed() {
    let (_dir, file) = write_kubia(1);
    // Without a successor, workers wait --orphan-grace to be taken over,
    // then exit.
    let mut shoal = Shoal::start(&["--orphan-grace", "1s", "-f", &file]);
    shoal.wait_ready("kubia");
    assert_eq!(shoal.worker_pids().len(), 1);
    let workers = shoal.all_children();
    let pid = shoal.pid();
    // SAFETY: kill on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    shoal.wait_exit(std::time::Duration::from_secs(10)).expect("shoal survived SIGKILL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while workers.iter().any(|w| alive(*w)) {
        assert!(std::time::Instant::now() < deadline, "workers outlived their shoal by more than the grace");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Some(reason) = cgroups_unavailable() {
        eprintln!("SKIPPED (cgroup part): {reason}");
        return;
    }
    // The killed shoal could not remove its cgroups; the next one does.
    // (A shoal up of a test running beside this one may get there first:
    // either way, none is left once the next one runs.)
    let stale: Vec<_> =
        CGROUP_ROOTS.iter().map(|root| std::path::Path::new(root).join(format!("shoal/up-{pid}"))).collect();
    let mut next = Shoal::start(&["-f", &file]);
    next.wait_ready("kubia");
    for dir in &stale {
        assert!(!dir.exists(), "{} was not reclaimed", dir.display());
    }
    assert!(next.stop().success());
}

/// Writes a kubia manifest with `replicas` replicas: (its directory, its path).
fn write_kubia(replicas: u32) -> (Scratch, String) {
    let dir = Scratch::new("kubia");
    let path = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, &format!("replicas: {replicas}")));
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}
