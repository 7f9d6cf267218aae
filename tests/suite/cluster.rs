//! Cluster mode end to end: a real three-member etcd on loopback and three
//! `shoal up --etcd` nodes, each with its own ports, data directory and
//! cgroups. Skipped, saying so, where etcd is not installed (required in
//! CI: `.ci/run` installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use shoal_etcd::testing::EtcdCluster;

/// The lease TTL the tests run with.
const TTL: &str = "3s";

/// Three nodes `n0`, `n1`, `n2` on `etcd`, then `manifest` applied
/// through `n0` (its module is pushed to `n0` only: the others fetch it).
fn start_nodes(etcd: &EtcdCluster, dir: &Scratch, manifest: &str) -> Vec<Shoal> {
    let file = dir.write("kubia.yaml", manifest);
    let shoals: Vec<Shoal> = (0..3)
        .map(|n| {
            let name = format!("n{n}");
            // A killed node's workers exit a second after it (the default
            // grace waits 30 s for a successor on the same data directory).
            let args = ["--etcd", &etcd.endpoints(), "--node-name", &name, "--node-lease-ttl", TTL];
            Shoal::start(&[&args[..], &["--orphan-grace", "1s"]].concat())
        })
        .collect();
    let (ok, out, err) = shoals[0].cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "apply: {out}{err}");
    shoals
}

/// `shoal get nodes -o json` through `node`'s API.
fn nodes(node: &Shoal) -> Vec<Value> {
    let (ok, out, err) = node.cli(&["get", "nodes", "-o", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The ready replicas of every node, by node name, through `node`'s API.
fn ready_by_node(node: &Shoal) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for replica in node.replicas() {
        if replica["ready"] == true {
            *counts.entry(replica["node"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`.
fn within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return (value, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The nodes whose replicas answered `requests` GETs sent to `node`'s
/// gateway (every answer a `200` from kubia).
fn nodes_reached(node: &Shoal, requests: usize) -> BTreeSet<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let hits = runtime.block_on(kubia_hits(node, requests));
    let owners: BTreeMap<String, String> = node
        .replicas()
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["node"].as_str().unwrap().to_owned()))
        .collect();
    hits.iter().map(|name| owners.get(name).cloned().unwrap_or_else(|| format!("unknown replica {name}"))).collect()
}

/// GETs sent without pause to some gateways from background threads,
/// each with its own keep-alive client, until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(urls: &[String], clients_per_url: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for url in urls {
            for _ in 0..clients_per_url {
                let (stop, url) = (stop.clone(), url.clone());
                threads.push(std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(async move {
                        let client = client();
                        let (mut ok, mut failed) = (0, Vec::new());
                        let started = Instant::now();
                        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                            let request = hyper::Request::get(&url).body(http_body_util::Empty::new()).unwrap();
                            match client.request(request).await {
                                Ok(r) if r.status() == 200 => {
                                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                                    ok += 1;
                                }
                                Ok(r) => {
                                    let status = r.status();
                                    let body = http_body_util::BodyExt::collect(r.into_body()).await;
                                    let body = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned());
                                    failed.push(format!("{url}: {status} {body:?}"));
                                }
                                Err(error) => failed.push(format!("{url}: {error}")),
                            }
                        }
                        (ok, failed)
                    })
                }));
            }
        }
        Load { stop, threads }
    }

    /// Stops the load: (requests answered 200, the others).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, Vec::new());
        for thread in self.threads {
            let (o, f) = thread.join().unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

fn leaders(nodes: &[Value]) -> Vec<String> {
    nodes.iter().filter(|n| n["leader"] == true).map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

fn signal(node: &Shoal, signal: i32) {
    // SAFETY: kill on a child process this test started.
    assert_eq!(unsafe { libc::kill(node.pid() as i32, signal) }, 0);
}

#[test]
fn three_nodes_bootstrap_spread_replicas_and_replace_a_lost_node() {
    let Some(etcd) = EtcdCluster::start(3) else { return };
    let dir = Scratch::new("cluster");
    let mut shoals = start_nodes(&etcd, &dir, &manifest("kubia", HELLO_WASM, "replicas: 6"));

    // Bootstrap: three ready nodes and one leader, seen from every node.
    for shoal in &shoals {
        let (listed, _) = within(Duration::from_secs(20), "three ready nodes", || {
            let listed = nodes(shoal);
            (listed.len() == 3 && listed.iter().all(|n| n["ready"] == true)).then_some(listed)
        });
        assert_eq!(leaders(&listed).len(), 1, "{listed:?}");
    }
    let (ok, table, _) = shoals[0].cli(&["get", "nodes"]);
    assert!(ok);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("leader") && table.contains("Ready"), "{table}");

    // Six replicas, two per node.
    let want = [("n0".to_owned(), 2), ("n1".to_owned(), 2), ("n2".to_owned(), 2)].into_iter().collect();
    within(Duration::from_secs(30), "replicas spread 2/2/2", || (ready_by_node(&shoals[1]) == want).then_some(()));
    let (ok, table, _) = shoals[2].cli(&["get", "replicas"]);
    assert!(ok && table.lines().next().unwrap().contains("NODE"), "{table}");
    // Each node's view follows the store on its own: node 0 may see node
    // 1's replicas ready a moment after node 1 did.
    let (text, _) = within(Duration::from_secs(10), "describe node n1 on n0 showing its 2 replicas", || {
        let (ok, text, err) = shoals[0].cli(&["describe", "node", "n1"]);
        assert!(ok, "{err}");
        text.contains("Replicas:      2").then_some(text)
    });
    assert!(text.contains("Status:") && text.contains("Ready"), "{text}");

    // A module pushed to one node is on every node within seconds, so it
    // outlives the node it was pushed to.
    let (ok, out, err) = shoals[1].cli(&["push", FAULTY_WASM]);
    assert!(ok, "{err}");
    let digest = out.split("sha256:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    within(Duration::from_secs(15), "the pushed module on every node", || {
        shoals.iter().all(|s| s.data.0.join(format!("modules/{digest}.wasm")).is_file()).then_some(())
    });

    // Every gateway reaches the replicas of all three nodes (its own
    // preferred, the others' through their nodes).
    let all: BTreeSet<String> = ["n0", "n1", "n2"].map(str::to_owned).into();
    for shoal in &shoals {
        within(Duration::from_secs(10), "a gateway reaching every node", || {
            (nodes_reached(shoal, 60) == all).then_some(())
        });
    }

    // Any node's API answers for every node: usage and output of all six.
    let owners: BTreeMap<String, String> = shoals[0]
        .replicas()
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["node"].as_str().unwrap().to_owned()))
        .collect();
    let (ok, out, err) = shoals[0].cli(&["top", "-o", "json"]);
    assert!(ok, "{err}");
    let usage: Vec<Value> = serde_json::from_str(&out).unwrap();
    let named: BTreeSet<&str> = usage.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(named, owners.keys().map(String::as_str).collect(), "{out}");
    // (Output reaches the log book a moment after the response: awaited.)
    within(Duration::from_secs(10), "the output of every node's replicas in `shoal logs` on n0", || {
        let (ok, out, err) = shoals[0].cli(&["logs", "kubia", "--tail", "1000"]);
        assert!(ok, "{err}");
        let logged: BTreeSet<String> = out
            .lines()
            .filter(|l| l.contains("Received request"))
            .filter_map(|l| owners.iter().find(|(name, _)| l.contains(name.as_str())).map(|(_, node)| node.clone()))
            .collect();
        (logged == all).then_some(())
    });

    // SIGKILL a node that does not lead: its workers exit after it; its two
    // replicas run on the survivors within the TTL and a few seconds.
    let leader = leaders(&nodes(&shoals[0]))[0].clone();
    let victim = (0..3).find(|n| format!("n{n}") != leader).unwrap();
    let workers = shoals[victim].worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Under GET load on the other two gateways, none of which fails.
    let survivors: Vec<String> = (0..3).filter(|n| *n != victim).map(|n| shoals[n].url("/")).collect();
    let load = Load::start(&survivors, 2);
    std::thread::sleep(Duration::from_secs(1));
    signal(&shoals[victim], libc::SIGKILL);
    shoals[victim].wait_exit(Duration::from_secs(10)).expect("the killed node exits");
    let survivor = (victim + 1) % 3;
    let (_, took) = within(Duration::from_secs(15), "six ready replicas on the survivors", || {
        let counts = ready_by_node(&shoals[survivor]);
        (counts.values().sum::<usize>() == 6 && !counts.contains_key(&format!("n{victim}"))).then_some(())
    });
    eprintln!("replicas replaced {took:?} after SIGKILL");
    assert!(took < Duration::from_secs(10), "replaced in {took:?}");
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed) = load.finish();
    eprintln!("{ok} GETs answered 200 while a node died");
    assert!(failed.is_empty(), "{} GETs failed: {:?}", failed.len(), &failed[..failed.len().min(10)]);
    assert!(ok > 100, "only {ok} GETs");
    within(Duration::from_secs(5), "workers of the killed node gone", || {
        workers.iter().all(|pid| !alive(*pid)).then_some(())
    });
    let listed = nodes(&shoals[survivor]);
    let dead = listed.iter().find(|n| n["name"] == format!("n{victim}").as_str()).unwrap();
    assert_eq!(dead["ready"], false, "{listed:?}");
    let (_, table, _) = shoals[survivor].cli(&["get", "nodes"]);
    assert!(table.contains("NotReady"), "{table}");

    // SIGKILL the leader: another takes over within the TTL and 2 s.
    let leader_index: usize = leader[1..].parse().unwrap();
    signal(&shoals[leader_index], libc::SIGKILL);
    let last = 3 - victim - leader_index;
    let (_, took) = within(Duration::from_secs(10), "a new leader", || {
        let listed = nodes(&shoals[last]);
        let leaders = leaders(&listed);
        (leaders.len() == 1 && leaders[0] != leader).then_some(())
    });
    eprintln!("new leader {took:?} after SIGKILL of the leader");
    assert!(took < Duration::from_secs(5), "a new leader after {took:?}");
    // The last node runs all six.
    within(Duration::from_secs(15), "six replicas on the last node", || {
        (ready_by_node(&shoals[last]).get(&format!("n{last}")) == Some(&6)).then_some(())
    });
}

#[test]
fn a_frozen_node_comes_back_and_stops_its_stale_replicas() {
    let Some(etcd) = EtcdCluster::start(3) else { return };
    let dir = Scratch::new("frozen");
    let shoals = start_nodes(&etcd, &dir, &manifest("kubia", HELLO_WASM, "replicas: 3"));
    within(Duration::from_secs(30), "one replica per node", || {
        let counts = ready_by_node(&shoals[0]);
        (counts.len() == 3 && counts.values().all(|c| *c == 1)).then_some(())
    });
    // Freeze a node that does not lead for two TTLs: its lease expires and
    // its replica is placed elsewhere.
    let leader = leaders(&nodes(&shoals[0]))[0].clone();
    let frozen = (0..3).find(|n| format!("n{n}") != leader).unwrap();
    let other = (frozen + 1) % 3;
    let stale = shoals[frozen].worker_pids();
    assert_eq!(stale.len(), 1, "{stale:?}");
    signal(&shoals[frozen], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    within(Duration::from_secs(15), "three replicas without the frozen node", || {
        let counts = ready_by_node(&shoals[other]);
        let total: usize = counts.iter().filter(|(node, _)| **node != format!("n{frozen}")).map(|(_, c)| *c).sum();
        (total == 3).then_some(())
    });
    signal(&shoals[frozen], libc::SIGCONT);
    // It registers again and stops its stale replica (the scheduler may
    // give it a new one, to spread them again); the count ends at 3.
    within(Duration::from_secs(15), "the node ready again", || {
        nodes(&shoals[other]).iter().all(|n| n["ready"] == true).then_some(())
    });
    within(Duration::from_secs(15), "its stale replica stopped", || stale.iter().all(|pid| !alive(*pid)).then_some(()));
    within(Duration::from_secs(20), "three replicas, one per node, and three workers", || {
        let counts = ready_by_node(&shoals[other]);
        let workers: usize = shoals.iter().map(|s| s.worker_pids().len()).sum();
        (counts.len() == 3 && counts.values().all(|c| *c == 1) && workers == 3).then_some(())
    });
}

#[test]
fn requests_at_three_gateways_at_once_wake_a_service_at_zero_with_one_replica() {
    let Some(etcd) = EtcdCluster::start(3) else { return };
    let dir = Scratch::new("zero");
    let spec = "autoscale:\n  min: 0\n  max: 3\n  target: 100\n  scaleToZeroGracePeriod: 2s";
    let shoals = start_nodes(&etcd, &dir, &manifest("kubia", HELLO_WASM, spec));
    // It starts at one replica and, without requests, goes to zero.
    within(Duration::from_secs(30), "one replica", || {
        (ready_by_node(&shoals[0]).values().sum::<usize>() == 1).then_some(())
    });
    within(Duration::from_secs(30), "zero replicas and no worker", || {
        let workers: usize = shoals.iter().map(|s| s.worker_pids().len()).sum();
        (ready_by_node(&shoals[0]).is_empty() && workers == 0).then_some(())
    });
    let started = |shoals: &[Shoal]| -> usize {
        shoals.iter().map(|s| s.count_lines(|l| l.contains("replica/kubia-") && l.contains("Started:"))).sum()
    };
    let before = started(&shoals);

    // Ten requests at each gateway at the same moment: every one answered.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let urls: Vec<String> = shoals.iter().map(|s| s.url("/")).collect();
    let answers = runtime.block_on(async move {
        let requests: Vec<_> = urls
            .iter()
            .flat_map(|url| std::iter::repeat_n(url.clone(), 10))
            .map(|url| tokio::spawn(async move { get(&url, None).await }))
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.unwrap());
        }
        answers
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    // Exactly one replica started, on one node, for all three gateways.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(started(&shoals) - before, 1, "{}", shoals.iter().map(Shoal::dump).collect::<String>());
    let workers: usize = shoals.iter().map(|s| s.worker_pids().len()).sum();
    assert_eq!(workers, 1);
    // Every node's API shows the leader's autoscaler decision.
    for shoal in &shoals {
        let (ok, out, err) = shoal.cli(&["get", "services", "-o", "json"]);
        assert!(ok, "{err}");
        let services: Vec<Value> = serde_json::from_str(&out).unwrap();
        let status = &services[0]["status"];
        assert_eq!((status["desired"].as_u64(), status["scale"]["desired"].as_u64()), (Some(1), Some(1)), "{out}");
    }
}

#[test]
fn without_an_etcd_quorum_gets_keep_working_writes_fail_naming_etcd_and_nothing_is_evicted() {
    let Some(mut etcd) = EtcdCluster::start(3) else { return };
    let dir = Scratch::new("quorum");
    let shoals = start_nodes(&etcd, &dir, &manifest("kubia", HELLO_WASM, "replicas: 3"));
    within(Duration::from_secs(30), "one replica per node", || {
        let counts = ready_by_node(&shoals[0]);
        (counts.len() == 3 && counts.values().all(|c| *c == 1)).then_some(())
    });
    let workers: BTreeSet<u32> = shoals.iter().flat_map(|s| s.worker_pids()).collect();
    assert_eq!(workers.len(), 3);

    // Two of three members stop: etcd has no quorum.
    let urls: Vec<String> = shoals.iter().map(|s| s.url("/")).collect();
    let load = Load::start(&urls, 1);
    etcd.stop(0);
    etcd.stop(1);
    let (ok, out, err) = shoals[1].cli(&["scale", "service", "kubia", "--replicas", "4"]);
    assert!(!ok, "a scale without quorum succeeded: {out}");
    assert!(err.contains("etcd"), "the error names etcd: {err}");
    eprintln!("scale without quorum: {}", err.trim());
    // Longer than two lease TTLs without etcd.
    std::thread::sleep(Duration::from_secs(7));
    let (answered, failed) = load.finish();
    assert!(failed.is_empty(), "{} GETs failed: {:?}", failed.len(), &failed[..failed.len().min(10)]);
    assert!(answered > 100, "only {answered} GETs");
    eprintln!("{answered} GETs answered 200 without an etcd quorum");

    // etcd comes back: nothing was evicted, and writes work again.
    etcd.restart(0);
    etcd.restart(1);
    within(Duration::from_secs(30), "a scale once etcd is back", || {
        shoals[1].cli(&["scale", "service", "kubia", "--replicas", "4"]).0.then_some(())
    });
    within(Duration::from_secs(30), "four ready replicas", || {
        (ready_by_node(&shoals[0]).values().sum::<usize>() == 4).then_some(())
    });
    let now: BTreeSet<u32> = shoals.iter().flat_map(|s| s.worker_pids()).collect();
    assert!(workers.is_subset(&now), "replicas were replaced: before {workers:?}, after {now:?}");
    assert_eq!(now.len(), 4, "{now:?}");
}

#[test]
fn a_rolling_update_across_three_nodes_under_load_answers_every_request() {
    let Some(etcd) = EtcdCluster::start(3) else { return };
    let dir = Scratch::new("cluster-rollout");
    let shoals = start_nodes(&etcd, &dir, &manifest("faulty", FAULTY_WASM, "replicas: 6\nenv:\n  VARIANT: v1"));
    within(Duration::from_secs(30), "replicas spread 2/2/2", || {
        let counts = ready_by_node(&shoals[0]);
        (counts.len() == 3 && counts.values().all(|c| *c == 2)).then_some(())
    });
    let old: BTreeSet<u32> = shoals.iter().flat_map(|s| s.worker_pids()).collect();
    let urls: Vec<String> = shoals.iter().map(|s| s.url("/")).collect();
    let load = Load::start(&urls, 2);
    std::thread::sleep(Duration::from_secs(1));
    let file = dir.write("kubia.yaml", manifest("faulty", FAULTY_WASM, "replicas: 6\nenv:\n  VARIANT: v2"));
    let (ok, out, err) = shoals[2].cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    within(Duration::from_secs(60), "six new replicas and no old one", || {
        let replicas = shoals[0].replicas();
        let ready = replicas.iter().filter(|r| r["ready"] == true).count();
        let now: BTreeSet<u32> = shoals.iter().flat_map(|s| s.worker_pids()).collect();
        (ready == 6 && now.len() == 6 && now.is_disjoint(&old)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let (answered, failed) = load.finish();
    assert!(failed.is_empty(), "{} requests failed: {:?}", failed.len(), &failed[..failed.len().min(10)]);
    eprintln!("{answered} GETs answered 200 during the rolling update");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for shoal in &shoals {
        for _ in 0..10 {
            let (status, body) = runtime.block_on(get(&shoal.url("/env?name=VARIANT"), None));
            assert_eq!((status, body.as_str()), (200, "v2"));
        }
    }
}

#[test]
fn a_certificate_added_through_one_node_is_served_by_every_node() {
    let Some(etcd) = EtcdCluster::start(1) else { return };
    let dir = Scratch::new("cluster-tls");
    let shoals: Vec<Shoal> = (0..2)
        .map(|n| {
            let name = format!("t{n}");
            let args = ["--etcd", &etcd.endpoints(), "--node-name", &name, "--node-lease-ttl", TTL];
            Shoal::start(&[&args[..], &["--tls-listen", "127.0.0.1:0"]].concat())
        })
        .collect();
    within(Duration::from_secs(30), "two ready nodes", || {
        let listed = nodes(&shoals[0]);
        (listed.len() == 2 && listed.iter().all(|n| n["ready"] == true)).then_some(())
    });
    let ca = crate::support::tls::TestCa::new();
    let leaf = ca.leaf(&["shop.test"], -1, 90);
    let (cert, key) = leaf.write(&dir, "shop");
    let (ok, _, err) = shoals[0].cli(&["tls", "add", "shop.test", "--cert", &cert, "--key", &key]);
    assert!(ok, "{err}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let served = |shoal: &Shoal| {
        let config = crate::support::tls::any_certificate(&[b"http/1.1"], None);
        runtime
            .block_on(crate::support::tls::https_get(shoal.https_addr(), config, "shop.test", "/"))
            .map(|(_, cert)| cert)
    };
    // The node it was added through serves it at once; the other within
    // a pass of its reconciler.
    assert_eq!(served(&shoals[0]).unwrap(), leaf.der);
    within(Duration::from_secs(20), "the other node serves the certificate", || {
        (served(&shoals[1]).ok()? == leaf.der).then_some(())
    });
    let (ok, table, _) = shoals[1].cli(&["get", "certs"]);
    assert!(ok && table.lines().any(|l| l.starts_with("shop.test")), "{table}");
    // Deleted through the other node: gone from both.
    let (ok, out, err) = shoals[1].cli(&["tls", "delete", "shop.test"]);
    assert!(ok, "{out}{err}");
    within(Duration::from_secs(20), "both nodes back on the default certificate", || {
        shoals.iter().all(|s| served(s).is_ok_and(|cert| cert != leaf.der)).then_some(())
    });
}
