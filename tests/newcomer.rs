//! What a newcomer meets in their first hour (issue 20's small surprises):
//! starting without the sample, listing a service's replicas by its name,
//! selecting by labels, and build hints that can be followed as printed.

mod support;

use support::*;

/// A manifest with `labels` (a YAML flow mapping) under metadata.
fn labelled(name: &str, labels: &str, module: &str, spec: &str) -> String {
    manifest(name, module, spec).replace(&format!("  name: {name}\n"), &format!("  name: {name}\n  labels: {labels}\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_sample_starts_empty_and_the_first_service_can_own_slash() {
    let dir = Scratch::new("no-sample");
    let mut shoal = Shoal::start(&["--no-sample"]);
    let (ok, out, err) = shoal.cli(&["get", "services"]);
    assert!(ok && out.is_empty() && err.contains("No resources found"), "{out}{err}");
    assert_eq!(get(&shoal.url("/"), None).await.0, 404);
    // Without the sample, a first service on "/" is accepted.
    let file = dir.write("mine.yaml", manifest("mine", HELLO_WASM, "replicas: 1"));
    let (ok, _, err) = shoal.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    shoal.wait_ready("mine");
    let (status, body) = get(&shoal.url("/"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(shoal.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_replicas_takes_a_service_name_and_label_selectors() {
    let dir = Scratch::new("selectors");
    let web = labelled("web", "{app: shop, tier: front}", HELLO_WASM, "replicas: 2\nroutes: [{host: web.test}]");
    let api = labelled("api", "{app: shop, tier: back}", HELLO_WASM, "replicas: 1\nroutes: [{host: api.test}]");
    let plain = manifest("plain", HELLO_WASM, "replicas: 1\nroutes: [{host: plain.test}]");
    let file = dir.write("all.yaml", format!("{web}---\n{api}---\n{plain}"));
    let mut shoal = Shoal::start(&["--no-sample", "-f", file.to_str().unwrap()]);
    for service in ["web", "api", "plain"] {
        shoal.wait_ready(service);
    }
    let names = |args: &[&str]| -> Vec<String> {
        let (ok, out, err) = shoal.cli(args);
        assert!(ok, "{err}");
        let mut names: Vec<String> =
            out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
        names.sort();
        names
    };
    // A service's name lists its replicas; a replica's name, that one.
    let web_replicas = names(&["get", "replicas", "web"]);
    assert_eq!(web_replicas.len(), 2, "{web_replicas:?}");
    assert!(web_replicas.iter().all(|r| r.starts_with("web-")), "{web_replicas:?}");
    assert_eq!(names(&["get", "replicas", &web_replicas[0]]), [web_replicas[0].clone()]);
    let (ok, _, err) = shoal.cli(&["get", "replicas", "nothing"]);
    assert!(!ok && err.contains("no replica and no service with replicas is named \"nothing\""), "{err}");

    // Label selectors, kubectl's syntax.
    assert_eq!(names(&["get", "services", "-l", "app=shop"]), ["api", "web"]);
    assert_eq!(names(&["get", "services", "-l", "app=shop,tier!=front"]), ["api"]);
    assert_eq!(names(&["get", "services", "-l", "!app"]), ["plain"]);
    let api_replicas = names(&["get", "replicas", "-l", "tier=back"]);
    assert!(api_replicas.len() == 1 && api_replicas[0].starts_with("api-"), "{api_replicas:?}");
    let (ok, _, err) = shoal.cli(&["get", "services", "-l", "app=shop,"]);
    assert!(!ok && err.contains("an empty term"), "{err}");
    let (ok, _, err) = shoal.cli(&["get", "modules", "-l", "app=shop"]);
    assert!(!ok && err.contains("-l selects services and replicas"), "{err}");
    assert!(shoal.stop().success());
}

#[test]
fn the_build_hint_names_a_manifest_build_would_not_read() {
    let dir = Scratch::new("hint");
    // A Cargo project whose manifest is not service.yaml, its module not
    // built yet.
    dir.write("Cargo.toml", "[package]\nname = \"x\"\n");
    let staging = dir.write("staging.yaml", manifest("x", "target/wasm32-wasip2/release/x.wasm", "replicas: 1"));
    let data = Scratch::new("hint-data");
    let (status, _, err) = run_shoal(&["up", "-f", staging.to_str().unwrap()], &data.0);
    assert!(!status.success());
    let hint = format!("build it with: shoal build {} -f {}", dir.0.display(), staging.display());
    assert!(err.contains(&hint), "{err:?} lacks {hint:?}");
}
