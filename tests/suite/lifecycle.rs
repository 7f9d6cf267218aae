//! What README promises about a replica's and a rollout's life, each
//! checked end to end: the kill at the end of the grace period, rollout
//! timeouts and surge, the tasks limit, memory-aware admission, the replica
//! name in `ps`, `shoal build` of a Cargo project, and stores `shoal up`
//! refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_ignores_sigterm_is_killed_ten_seconds_after_it() {
    let (mut shoal, _dir) = start_faulty("sigkill", "replicas: 1");
    let worker = shoal.worker_pids()[0];
    // A stopped process cannot act on SIGTERM; SIGKILL still ends it.
    // SAFETY: a worker of our own shoal.
    unsafe { libc::kill(worker as i32, libc::SIGSTOP) };
    let started = Instant::now();
    // SAFETY: our own child.
    unsafe { libc::kill(shoal.pid() as i32, libc::SIGTERM) };
    let status = shoal.wait_exit(Duration::from_secs(60)).expect("shoal did not exit");
    let took = started.elapsed();
    eprintln!("shoal stopped {took:?} after SIGTERM");
    assert!(status.success());
    assert!(!alive(worker), "the stopped worker survived");
    assert!(took >= Duration::from_secs(9), "the worker was killed before its grace period: {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(shoal.dump().contains("did not stop in time; killing it"), "{}", shoal.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_status_gives_up_at_its_timeout() {
    let (mut shoal, _dir) = start_faulty("rollout-timeout", "replicas: 2");
    let stopped = shoal.worker_pids()[0];
    let name = shoal.replica_of(stopped);
    // SAFETY: a worker of our own shoal.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    shoal.eventually(&["get", "replicas"], |out| out.lines().any(|l| l.starts_with(&name) && l.contains("0/1")));
    let started = Instant::now();
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "3s"]);
    let took = started.elapsed();
    assert!(!ok, "{out}");
    assert!(err.starts_with("error: timed out after 3s waiting for the rollout of service \"faulty\""), "{err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    // SAFETY: as above.
    unsafe { libc::kill(stopped as i32, libc::SIGCONT) };
    // Continued, it is ready again and the rollout completes.
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "30s"]);
    assert!(ok, "{err}");
    assert!(out.ends_with("service \"faulty\" successfully rolled out\n"), "{out}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_never_runs_more_than_one_replica_above_the_desired_count_nor_fewer_ready() {
    let dir = Scratch::new("surge");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 3\nenv:\n  VARIANT: v1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    let (mut most, mut fewest_ready, mut polls) = (0, usize::MAX, 0);
    // A replica is ready in a few milliseconds: a surge lasts about as
    // long, and a poll may miss every one of a rollout's three. Rolled
    // again (v2, v3, …) until one was seen; every poll checks the bounds.
    let mut variant = 1;
    while most < 4 && variant < 10 {
        variant += 1;
        dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &format!("replicas: 3\nenv:\n  VARIANT: v{variant}")));
        let (ok, _, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, out) = shoal.admin_get("/v1/replicas").await;
            assert_eq!(status, 200, "{out}");
            let replicas: serde_json::Value = serde_json::from_str(&out).unwrap();
            let replicas = replicas.as_array().unwrap();
            let live = replicas.iter().filter(|r| r["state"] != "Terminating").count();
            let ready = replicas.iter().filter(|r| r["ready"] == true).count();
            most = most.max(live);
            fewest_ready = fewest_ready.min(ready);
            polls += 1;
            assert!(live <= 4, "{live} replicas during the rollout (3 desired, maxSurge 1): {out}");
            assert!(ready >= 3, "{ready} ready replicas during the rollout (maxUnavailable 0): {out}");
            let (_, service) = shoal.admin_get("/v1/services/faulty").await;
            let generation = format!("\"observedGeneration\":{}", variant);
            if service.contains("\"rollout\":\"Complete\"") && service.contains(&generation) && live == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "the rollout to v{variant} did not finish: {service}");
        }
    }
    eprintln!("{polls} polls: at most {most} replicas, at least {fewest_ready} ready");
    assert_eq!(most, 4, "no rollout of {} surged", variant - 1);
    let (status, body) = get(&shoal.url("/env?name=VARIANT"), None).await;
    assert_eq!((status, body.as_str()), (200, format!("v{variant}").as_str()));
    // A status other than the SDK's default 200 reaches the client too.
    let (status, body) = get(&shoal.url("/env?name=UNSET"), None).await;
    assert_eq!((status, body.as_str()), (404, "UNSET is not set\n"));
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_may_have_at_most_64_tasks() {
    if let Some(reason) = cgroups_unavailable() {
        eprintln!("SKIPPED: cgroups unavailable: {reason}");
        return;
    }
    let (mut shoal, _dir) = start_faulty("pids", "replicas: 1");
    let worker = shoal.worker_pids()[0];
    // A guest cannot make its worker spawn (WASI has no processes or
    // threads here), so the limit is checked where the kernel enforces it.
    assert_eq!(cgroup_setting(worker, "pids", "pids.max").as_deref(), Some("64"));
    let tasks: u64 = cgroup_setting(worker, "pids", "pids.current").unwrap().parse().unwrap();
    assert!((1..64).contains(&tasks), "{tasks} tasks");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_under_load_gets_200s_and_503s_never_a_crash_loop() {
    let dir = Scratch::new("bomb");
    let bomb = dir.write(
        "bomb.yaml",
        manifest(
            "bomb",
            FAULTY_WASM,
            "replicas: 2\nresources:\n  memory: 128Mi\n  instanceMemory: 64Mi\nroutes:\n  - host: bomb.local",
        ),
    );
    let kubia = dir.write("kubia.yaml", manifest("kubia", HELLO_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", bomb.to_str().unwrap(), "-f", kubia.to_str().unwrap()]);
    shoal.wait_ready("bomb");
    shoal.wait_ready("kubia");
    assert!(!shoal.dump().contains("warning:"), "the defaults drew a warning:\n{}", shoal.dump());

    // Eight clients, each asking for 60 MB of the 64 MiB an instance may
    // have, for 10 s; and kubia beside them.
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 600]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop, counts) = (shoal.url("/alloc?mb=60&ms=50"), stop.clone(), counts.clone());
        clients.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = get_with(&client, &url, Some("bomb.local")).await;
                counts[usize::from(status)].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let (mut kubia_ok, mut kubia_other) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        match get(&shoal.url("/"), None).await {
            (200, body) if body.starts_with("You've hit kubia-") => kubia_ok += 1,
            _ => kubia_other += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let count = |status: usize| counts[status].load(Ordering::SeqCst);
    let total: u64 = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    eprintln!(
        "bomb: {} × 200, {} × 503, {} × 502, {} × 500 of {total}; kubia {kubia_ok} × 200, {kubia_other} other",
        count(200),
        count(503),
        count(502),
        count(500)
    );
    assert_eq!(count(502), 0, "a replica died");
    assert_eq!(count(200) + count(503), total, "answers other than 200 and 503");
    assert!(count(200) > 0);
    assert_eq!(kubia_other, 0, "kubia was affected");
    let output = shoal.dump();
    assert!(!output.contains("OOMKilled") && !output.contains("CrashLoopBackOff"), "{output}");
    let (_, replicas, _) = shoal.cli(&["get", "replicas"]);
    assert!(!replicas.contains("CrashLoopBackOff") && replicas.matches("Running").count() == 3, "{replicas}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ps_shows_each_workers_replica_name_also_for_one_started_from_the_standby() {
    let dir = Scratch::new("ps");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    // The standby is there; the next replica is made from it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shoal.all_children().into_iter().any(is_standby) {
        assert!(Instant::now() < deadline, "no standby worker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, _, err) = shoal.cli(&["scale", "service", "faulty", "--replicas", "2"]);
    assert!(ok, "{err}");
    shoal.eventually(&["get", "services"], |out| out.contains("2/2"));
    shoal.wait_for_output(|l| l.contains("exec standby"));
    for pid in shoal.worker_pids() {
        let name = shoal.replica_of(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert_eq!(shown.trim(), format!("shoal worker {name}"), "pid {pid}");
    }
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_build_makes_a_cargo_project_into_the_component_its_manifest_names() {
    let dir = Scratch::new("build-cargo");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = dir.0.join("greeter");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n\
             shoal-sdk = {{ path = {:?} }}\n\n[workspace]\n\n[profile.release]\nopt-level = \"s\"\n",
            repo.join("sdk")
        ),
    )
    .unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        "use shoal_sdk::{Request, Response};\n\nfn handle(_req: Request) -> Response {\n    \
         Response::ok(\"hello from a cargo project\\n\")\n}\n\nshoal_sdk::service!(handle);\n\nfn main() {}\n",
    )
    .unwrap();
    // The samples' lockfile: the same dependency versions, already fetched.
    std::fs::copy(repo.join("samples/Cargo.lock"), project.join("Cargo.lock")).unwrap();
    std::fs::write(project.join("service.yaml"), manifest("greeter", "greeter.wasm", "replicas: 1")).unwrap();

    let output = std::process::Command::new(SHOAL)
        .args(["build"])
        .arg(&project)
        .env("CARGO_TARGET_DIR", dir.0.join("target"))
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{out}{err}");
    let built = project.join("greeter.wasm");
    let bytes = std::fs::read(&built).unwrap_or_else(|e| panic!("{}: {e}\n{out}{err}", built.display()));
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0", "not a component");

    let manifest = project.join("service.yaml");
    let mut shoal = Shoal::start(&["-f", manifest.to_str().unwrap()]);
    shoal.wait_ready("greeter");
    assert_eq!(get(&shoal.url("/"), None).await, (200, "hello from a cargo project\n".to_owned()));
    assert!(shoal.stop().success());
}

#[test]
fn shoal_up_refuses_a_damaged_store_and_one_from_a_newer_shoal() {
    let data = Scratch::new("refused-store");
    std::fs::write(data.0.join("store.redb"), "this is not a store\n".repeat(100)).unwrap();
    let (status, _, err) = run_shoal(&["up"], &data.0);
    assert_eq!(status.code(), Some(1), "{err}");
    let store = data.0.join("store.redb");
    assert!(err.contains(&format!("error: the store at {} is corrupt or not a Shoal store", store.display())), "{err}");
    assert_eq!(std::fs::read_to_string(&store).unwrap(), "this is not a store\n".repeat(100), "it was changed");

    // A store written by a newer Shoal is refused, and left as it is.
    std::fs::remove_file(&store).unwrap();
    {
        let db = redb::Database::create(&store).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<'_, &str, u32> = redb::TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("schema_version", 99).unwrap();
        txn.commit().unwrap();
    }
    let (status, _, err) = run_shoal(&["up"], &data.0);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("was written by a newer Shoal (schema 99; this version reads schema"), "{err}");
    let db = redb::Database::open(&store).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta: redb::TableDefinition<'_, &str, u32> = redb::TableDefinition::new("meta");
    let version = txn.open_table(meta).unwrap().get("schema_version").unwrap().unwrap().value();
    assert_eq!(version, 99, "the newer store was changed");
    assert!(!data.0.join("initialized").exists(), "shoal up went on after refusing the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_undo_goes_back_to_the_previous_revision_and_a_second_undo_comes_back() {
    let dir = Scratch::new("undo");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\nenv:\n  VARIANT: v1"));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    // Nothing to go back to yet.
    let (ok, _, err) = shoal.cli(&["rollout", "undo", "faulty"]);
    assert!(!ok);
    assert!(err.contains("has no previous revision"), "{err}");
    let variant = |shoal: &Shoal| {
        let url = shoal.url("/env?name=VARIANT");
        async move { get(&url, None).await.1 }
    };
    dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, "replicas: 2\nenv:\n  VARIANT: v2"));
    assert!(shoal.cli(&["apply", "-f", file.to_str().unwrap()]).0);
    // Scaling is not a revision: undo still goes back to v1, at 3 replicas.
    assert!(shoal.cli(&["scale", "svc", "faulty", "--replicas", "3"]).0);
    assert!(shoal.cli(&["rollout", "status", "faulty", "--timeout", "60s"]).0);
    assert_eq!(variant(&shoal).await, "v2");
    let (ok, out, err) = shoal.cli(&["rollout", "undo", "faulty"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("service/faulty rolled back (revision "), "{out}");
    assert!(shoal.cli(&["rollout", "status", "faulty", "--timeout", "60s"]).0);
    assert_eq!(variant(&shoal).await, "v1");
    assert_eq!(shoal.replicas().iter().filter(|r| r["state"] != "Terminating").count(), 3);
    let (_, events, _) = shoal.cli(&["describe", "service", "faulty"]);
    assert!(events.contains("RolledBack"), "{events}");
    // A second undo comes back to v2.
    assert!(shoal.cli(&["rollout", "undo", "faulty"]).0);
    assert!(shoal.cli(&["rollout", "status", "faulty", "--timeout", "60s"]).0);
    assert_eq!(variant(&shoal).await, "v2");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_history_lists_revisions_and_undo_goes_back_to_any_without_a_build() {
    let dir = Scratch::new("history");
    let spec = |variant: &str| format!("replicas: 2\nenv:\n  VARIANT: {variant}");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &spec("v1")));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    let variant = |shoal: &Shoal| {
        let url = shoal.url("/env?name=VARIANT");
        async move { get(&url, None).await.1 }
    };
    let rolled_out = |shoal: &Shoal| assert!(shoal.cli(&["rollout", "status", "faulty", "--timeout", "60s"]).0);
    for v in ["v2", "v3"] {
        dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &spec(v)));
        assert!(shoal.cli(&["apply", "-f", file.to_str().unwrap()]).0);
        rolled_out(&shoal);
    }
    assert_eq!(variant(&shoal).await, "v3");

    // Three revisions, oldest first, the current one marked.
    let (ok, history, err) = shoal.cli(&["rollout", "history", "faulty"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[0].starts_with("REVISION") && lines[0].contains("MODULE") && lines[0].contains("CHANGE"),
        "{history}"
    );
    assert_eq!(lines.len(), 4, "{history}");
    assert!(lines[1].starts_with('1') && lines[1].contains("created"), "{history}");
    assert!(lines[2].starts_with('2') && lines[2].ends_with("env"), "{history}");
    assert!(lines[3].starts_with('3') && lines[3].contains("env (current)"), "{history}");

    // Back to the first: its answers return; nothing was built or uploaded.
    let digests = |shoal: &Shoal| {
        let (_, json, _) = shoal.cli(&["get", "modules", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        list.as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let modules_before = digests(&shoal);
    let (ok, out, err) = shoal.cli(&["rollout", "undo", "faulty", "--to-revision", "1"]);
    assert!(ok && out.starts_with("service/faulty rolled back"), "{out}{err}");
    rolled_out(&shoal);
    assert_eq!(variant(&shoal).await, "v1");
    assert_eq!(digests(&shoal), modules_before);
    let (_, history, _) = shoal.cli(&["rollout", "history", "faulty"]);
    assert!(history.lines().last().unwrap().contains("rolled back to 1 (current)"), "{history}");
    let (ok, _, err) = shoal.cli(&["rollout", "undo", "faulty", "--to-revision", "99"]);
    assert!(!ok && err.contains("revision 99 is not in the service's history"), "{err}");
    let (ok, _, err) = shoal.cli(&["rollout", "undo", "faulty", "--to-revision", "4"]);
    assert!(!ok && err.contains("revision 4 is the current one"), "{err}");

    // A manifest may name a stored module by its digest: no file needed.
    let digest = digests(&shoal)[0].clone();
    let elsewhere = Scratch::new("history-by-digest");
    let by_digest = elsewhere.write("faulty.yaml", manifest("faulty", &format!("sha256:{digest}"), &spec("v9")));
    let (ok, out, err) = shoal.cli(&["apply", "-f", by_digest.to_str().unwrap()]);
    assert!(ok && out.contains("service/faulty configured"), "{out}{err}");
    rolled_out(&shoal);
    assert_eq!(variant(&shoal).await, "v9");
    let unknown =
        elsewhere.write("unknown.yaml", manifest("faulty", &format!("sha256:{}", "0".repeat(64)), "replicas: 1"));
    let (ok, _, err) = shoal.cli(&["apply", "-f", unknown.to_str().unwrap()]);
    assert!(!ok && err.contains("is not in the store"), "{err}");
    let bad = elsewhere.write("bad.yaml", manifest("faulty", "sha256:abc", "replicas: 1"));
    let (ok, _, err) = shoal.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("\"sha256:abc\" is not a module digest"), "{err}");
    assert!(shoal.stop().success());
}
