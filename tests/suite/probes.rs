//! Readiness and liveness from the service (`spec.readiness`,
//! `spec.liveness`), end to end: a release whose readiness never passes
//! halts with the probe's reason while the old replicas serve every
//! request; a replica whose liveness fails is restarted with an event; a
//! healthy one is left alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;

/// faulty's `/healthz` answers `$HEALTHZ` (default 200).
fn spec(variant: &str, healthz: u16, probes: &str) -> String {
    format!("replicas: 2\ntimeout: 5s\nenv:\n  VARIANT: {variant}\n  HEALTHZ: \"{healthz}\"\n{probes}")
}

const READINESS: &str = "readiness: {path: /healthz, periodSeconds: 1, failureThreshold: 2}";

#[tokio::test(flavor = "multi_thread")]
async fn a_release_whose_readiness_fails_halts_and_the_old_replicas_serve_every_request() {
    let dir = Scratch::new("readiness");
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &spec("v1", 200, READINESS)));
    let mut shoal = Shoal::start(&["--no-sample", "-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    let (_, described, _) = shoal.cli(&["describe", "service", "faulty"]);
    assert!(
        described.contains("Readiness:     http-get /healthz delay=0s timeout=1s period=1s #failure=2"),
        "{described}"
    );

    // Load across the whole attempt: every answer must come from v1.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, served, wrong, url) = (stop.clone(), served.clone(), wrong.clone(), shoal.url("/env?name=VARIANT"));
        load.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = get_with(&client, &url, None).await;
                if status == 200 && body == "v1" {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!("during the halted rollout: {status} {body:?}");
                    wrong.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &spec("v2", 500, READINESS)));
    let (ok, out, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "2m"]);
    assert!(!ok, "a release that is never ready rolled out: {out}");
    assert!(err.contains("halted"), "{err}");
    assert!(
        err.contains(
            r#"readiness probe failed 2 times in a row: GET /healthz answered 500 Internal Server Error: "healthz says 500""#
        ),
        "the probe's reason is missing: {err}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let served = served.load(Ordering::SeqCst);
    eprintln!("{served} requests answered by v1 during the halted rollout");
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "a request failed or reached the unready release");
    assert!(served > 50, "{served}");
    let (_, services, _) = shoal.cli(&["get", "services"]);
    assert!(services.lines().any(|l| l.starts_with("faulty") && l.contains(" 2/2 ")), "{services}");
    let (_, described, _) = shoal.cli(&["describe", "service", "faulty"]);
    assert!(
        described.contains("Unhealthy") && described.contains("readiness probe failed: GET /healthz"),
        "{described}"
    );
    assert!(described.contains("RolloutHalted"), "{described}");

    // A fixed release (its probe passes) rolls out over the halted one.
    dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, &spec("v3", 200, READINESS)));
    assert!(shoal.cli(&["apply", "-f", file.to_str().unwrap()]).0);
    let (ok, out, err) = shoal.cli(&["rollout", "status", "faulty", "--timeout", "2m"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    assert_eq!(get(&shoal.url("/env?name=VARIANT"), None).await.1, "v3");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_liveness_fails_is_restarted_with_an_event_and_a_healthy_one_is_not() {
    let dir = Scratch::new("liveness");
    let liveness = "liveness: {path: /healthz, periodSeconds: 1, failureThreshold: 2}";
    let sick = manifest("sick", FAULTY_WASM, &format!("{}\nroutes: [{{host: sick.test}}]", spec("s", 503, liveness)));
    let well = manifest("well", FAULTY_WASM, &format!("{}\nroutes: [{{host: well.test}}]", spec("w", 200, liveness)));
    let file = dir.write("both.yaml", format!("{sick}---\n{well}"));
    let mut shoal = Shoal::start(&["--no-sample", "-f", file.to_str().unwrap()]);
    shoal.wait_ready("well");
    // Without a readiness probe the sick replicas start ready; their
    // liveness then fails and they are restarted, with the reason.
    let described = shoal.eventually(&["describe", "service", "sick"], |out| {
        out.contains(
            r#"liveness probe failed 2 times in a row: GET /healthz answered 503 Service Unavailable: "healthz says 503"; restarting the replica"#,
        )
    });
    assert!(described.contains("Liveness:      http-get /healthz"), "{described}");
    let restarts = |shoal: &Shoal, service: &str| -> u64 {
        shoal.replicas().iter().filter(|r| r["service"] == service).map(|r| r["restarts"].as_u64().unwrap_or(0)).sum()
    };
    shoal.eventually(&["get", "replicas", "sick"], |out| {
        out.lines().skip(1).any(|l| l.split_whitespace().nth(3).is_some_and(|r| r != "0"))
    });
    assert!(restarts(&shoal, "sick") >= 1);
    // The healthy service, probed as often for as long, never restarted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(restarts(&shoal, "well"), 0, "{}", shoal.cli(&["describe", "service", "well"]).1);
    assert_eq!(get(&shoal.url("/env?name=VARIANT"), Some("well.test")).await.1, "w");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_replica_whose_readiness_starts_failing_leaves_the_rotation_without_a_restart() {
    // One reused instance per replica, so faulty counts its probes and
    // fails from the fourth on.
    let probes = "readiness: {path: /healthz, periodSeconds: 1, failureThreshold: 2}\n\
                  instances: {maxRequests: 100000, maxIdle: 1h}\nlimits: {concurrency: 1}\n\
                  env: {HEALTHZ_FAILS_AFTER: \"3\"}";
    let (mut shoal, _dir) = start_faulty("unready", &format!("replicas: 1\n{probes}"));
    let (status, _) = get(&shoal.url("/env?name=HEALTHZ_FAILS_AFTER"), None).await;
    assert_eq!(status, 200);
    let described = shoal.eventually(&["describe", "service", "faulty"], |out| out.contains("Unready"));
    assert!(
        described.contains(r#"readiness probe failed 2 times in a row: GET /healthz answered 500 Internal Server Error: "healthz says 500"; out of rotation"#),
        "{described}"
    );
    // Out of rotation, not restarted: its service has no ready replica.
    let replicas = shoal.replicas();
    assert_eq!(replicas.len(), 1);
    assert_eq!((replicas[0]["ready"].as_bool(), replicas[0]["restarts"].as_u64()), (Some(false), Some(0)));
    assert_eq!(get(&shoal.url("/env?name=HEALTHZ_FAILS_AFTER"), None).await.0, 503);
    assert!(shoal.stop().success());
}
