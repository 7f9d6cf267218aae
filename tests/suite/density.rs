//! Density: many services at zero, woken at once. Every request is
//! answered by its own service, every replica runs under its own limits,
//! and afterwards everything scales back to zero and leaves nothing behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;

/// Services woken at once.
const SERVICES: usize = 200;

/// The memory limit (MiB) and cpu (millicores) of service `i`: each
/// service has limits of its own, so a replica that got another's (or a
/// standby's) is caught.
fn limits(i: usize) -> (u64, u64) {
    (40 + i as u64, 100 + i as u64)
}

fn name(i: usize) -> String {
    format!("storm-{i:03}")
}

/// The groups left under this shoal's cgroup in the memory controller (v1)
/// or the unified hierarchy (v2), with the processes in each.
fn instance_groups(shoal_pid: u32) -> Vec<(String, Vec<u32>)> {
    let mut groups = Vec::new();
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        let base = std::path::Path::new(root).join(format!("shoal/up-{shoal_pid}"));
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let procs = std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
            let pids = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
            groups.push((entry.file_name().to_string_lossy().into_owned(), pids));
        }
        if !groups.is_empty() {
            break;
        }
    }
    groups
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_services_at_zero_woken_at_once_all_answer_under_their_own_limits() {
    let confined = match cgroups_unavailable() {
        None => true,
        Some(reason) => {
            eprintln!("cgroups unavailable ({reason}): the storm runs, the limits are not checked");
            false
        }
    };
    raise_open_files();
    let dir = Scratch::new("density");
    let manifests = dir.0.join("services");
    std::fs::create_dir_all(&manifests).unwrap();
    for i in 0..SERVICES {
        let (memory, cpu) = limits(i);
        let spec = format!(
            "replicas: 0\nroutes: [{{host: {host}.test}}]\nresources: {{memory: {memory}Mi, cpu: {cpu}m, \
             instanceMemory: 16Mi}}\ntimeout: 60s\nautoscale: {{min: 0, max: 2, scaleToZeroGracePeriod: 10s}}",
            host = name(i),
        );
        std::fs::write(manifests.join(format!("{}.yaml", name(i))), manifest(&name(i), HELLO_WASM, &spec)).unwrap();
    }
    let mut shoal = Shoal::start(&[]);
    shoal.wait_ready("kubia");
    let (ok, _, err) = shoal.cli(&["delete", "service", "kubia"]);
    assert!(ok, "{err}");
    let (ok, _, err) = shoal.cli(&["apply", "-f", manifests.to_str().unwrap()]);
    assert!(ok, "{err}");
    // All at zero (nothing started: replicas 0), their routes published.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = get(&shoal.url("/"), Some(&format!("{}.test", name(SERVICES - 1)))).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the last service never answered; status {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // That woke one service: wait for it to be back at zero, too.
    let back_at_zero = |shoal: &Shoal| shoal.worker_pids().is_empty();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !back_at_zero(&shoal) {
        assert!(Instant::now() < deadline, "the first woken service did not scale back to zero");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The storm: one request to each service, all at once, each on its
    // own connection.
    let started = Instant::now();
    let requests: Vec<_> = (0..SERVICES)
        .map(|i| {
            let url = shoal.url("/");
            tokio::spawn(async move {
                let (status, body) = get(&url, Some(&format!("{}.test", name(i)))).await;
                (i, status, body, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for request in requests {
        let (i, status, body, took) = request.await.unwrap();
        assert_eq!(status, 200, "{}: {body}", name(i));
        assert!(body.starts_with(&format!("You've hit {}-", name(i))), "{}: answered by {body:?}", name(i));
        slowest = slowest.max(took);
    }
    eprintln!("{SERVICES} services woken at once: the last answered after {slowest:?}");

    // Every replica under its own service's limits.
    let replicas = shoal.replicas();
    assert_eq!(replicas.len(), SERVICES, "one replica per service: {replicas:?}");
    if confined {
        let index: HashMap<String, usize> = (0..SERVICES).map(|i| (name(i), i)).collect();
        for replica in &replicas {
            let service = replica["service"].as_str().unwrap();
            let pid = replica["pid"].as_u64().expect("a running replica has a pid") as u32;
            let (memory, cpu) = limits(index[service]);
            let path = cgroup_of(pid, "memory").expect("a memory cgroup");
            let limit = std::fs::read_to_string(memory_limit_file(&path).expect("memory limit file")).unwrap();
            assert_eq!(limit.trim(), (memory << 20).to_string(), "{service}: worker {pid} in {path}");
            assert_eq!(cpu_quota(pid), Some((cpu * 10, 10_000)), "{service}: worker {pid}");
            assert_eq!(cgroup_setting(pid, "pids", "pids.max").as_deref(), Some("64"), "{service}: worker {pid}");
            assert_eq!(replica["cgroup"].as_str(), Some(path.as_str()), "{service}: the API names its cgroup");
        }
    }

    // `/metrics` shows the start machinery and each service's grace.
    let (status, metrics) = shoal.admin_get("/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.split([' ', '{']).next() == Some(name));
        let line = line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("shoal_replica_starts_total") > SERVICES as u64, "{metrics}");
    assert!(value("shoal_start_concurrency") >= 4, "{metrics}");
    assert_eq!(value("shoal_standby_max"), 16, "{metrics}");
    assert!(value("shoal_standby_target") >= 1, "{metrics}");
    assert!(
        metrics.contains(&format!("shoal_autoscaler_scale_to_zero_grace_seconds{{service=\"{}\"}} 10", name(7))),
        "{metrics}"
    );

    // `shoal describe` shows them too: the node its start gate and standby
    // pool, each service its grace.
    let (ok, out, err) = shoal.cli(&["get", "nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["starts"]["standbyMax"], 16, "{out}");
    let node = nodes[0]["name"].as_str().expect("the node's name").to_owned();
    let (ok, out, err) = shoal.cli(&["describe", "node", &node]);
    assert!(ok, "{err}");
    assert!(out.contains("Standby workers:") && out.contains("at most 16)"), "{out}");
    assert!(out.contains("Concurrency:") && out.contains(" at once ("), "{out}");
    let (ok, out, err) = shoal.cli(&["describe", "service", &name(7)]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.contains("Scale to zero grace:") && l.trim_end().ends_with("10s")), "{out}");

    // All back to zero: no replica left, and only standby workers, each
    // in its own group.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let groups = if confined { instance_groups(shoal.pid()) } else { Vec::new() };
        let standbys_only = groups
            .iter()
            .all(|(_, pids)| pids.len() == 1 && is_standby(pids[0]) && shoal.all_children().contains(&pids[0]));
        if back_at_zero(&shoal) && shoal.replicas().is_empty() && standbys_only {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back at zero after 2 minutes: workers {:?}, groups {groups:?}",
            shoal.worker_pids()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pid = shoal.pid();
    assert!(shoal.stop().success());
    assert!(children(pid).is_empty(), "processes left: {:?}", children(pid));
    if confined {
        for root in CGROUP_ROOTS {
            let group = std::path::Path::new(root).join(format!("shoal/up-{pid}"));
            assert!(!group.exists(), "{} left behind", group.display());
        }
    }
}
