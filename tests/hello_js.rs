//! The seed's Node.js kubia (`samples/hello-js/app.js`, the same file as
//! `samples/hello-node/app.js`), built to a Wasm component by `shoal build`
//! through the JS SDK and served by three replicas.
//!
//! Needs Node.js and npm (and, the first time, the npm registry): without
//! them the test prints why it is skipped. The SDK's dependencies are
//! installed once under `target/tmp`, shared by later runs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/hello-js");
const SEED_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/hello-node/app.js");

/// Why JavaScript services cannot be built here, if they cannot.
fn node_missing() -> Option<String> {
    for tool in ["node", "npm"] {
        match Command::new(tool).arg("--version").output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => return Some(format!("`{tool} --version` failed: {}", output.status)),
            Err(error) => return Some(format!("{tool} not found ({error}); install Node.js 18+ and npm")),
        }
    }
    None
}

/// Runs `shoal build` with a cache shared by test runs.
fn shoal_build(dir: &Path) -> (bool, String) {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shoal-cache");
    let output = Command::new(SHOAL)
        .arg("build")
        .arg(dir)
        .env("SHOAL_CACHE_DIR", cache)
        .output()
        .expect("cannot run shoal build");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn node_style_kubia_is_built_and_served_by_three_replicas() {
    if let Some(reason) = node_missing() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    // The sample is the seed's program, unchanged.
    let app = std::fs::read(Path::new(SAMPLE).join("app.js")).unwrap();
    assert_eq!(app, std::fs::read(SEED_APP).unwrap(), "samples/hello-js/app.js differs from the seed's app.js");

    // A copy of the sample, so that the build writes nothing in the tree.
    let dir = Scratch::new("hello-js");
    for file in ["app.js", "package.json", "service.yaml"] {
        std::fs::copy(Path::new(SAMPLE).join(file), dir.0.join(file)).unwrap();
    }
    let manifest = dir.0.join("service.yaml");

    // Not built yet: `shoal up` says how to build it.
    let data = Scratch::new("hello-js-data");
    let (status, _, stderr) = run_shoal(&["up", "-f", manifest.to_str().unwrap()], &data.0);
    assert!(!status.success());
    assert!(stderr.contains("spec.module") && stderr.contains("not found"), "{stderr}");
    assert!(stderr.contains(&format!("build it with: shoal build {}", dir.0.display())), "{stderr}");

    let (built, output) = shoal_build(&dir.0);
    eprintln!("{output}");
    assert!(built, "shoal build failed:\n{output}");
    let module = dir.0.join("target/hello-js.wasm");
    let bytes = std::fs::read(&module).unwrap();
    assert!(bytes.starts_with(b"\0asm"), "{} is not WebAssembly", module.display());
    assert!(output.contains(&format!("built {}", module.display())), "{output}");

    let mut shoal = Shoal::start(&["-f", manifest.to_str().unwrap()]);
    shoal.wait_ready("hello-js");
    let client = client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = get_with(&client, &shoal.url("/"), None).await;
        assert_eq!(status, 200, "body: {body}");
        let name = body
            .strip_prefix("You've hit ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected body {body:?}"));
        assert!(name.starts_with("hello-js-"), "not a replica name: {name:?}");
        seen.insert(name.to_owned());
    }
    assert_eq!(seen.len(), 3, "30 requests reached {seen:?}");

    // `console.log` in the handler is each replica's log, with the
    // client's address as Node's `request.connection.remoteAddress`.
    let out = shoal.eventually(&["logs", "hello-js"], |out| {
        seen.iter().all(|name| out.contains(&format!("{name} | Received request from 127.0.0.1")))
    });
    let logged = out.lines().filter(|l| l.contains("| Received request from 127.0.0.1")).count();
    assert!(logged >= 30, "{logged} request lines for 30 requests:\n{out}");
    assert!(shoal.stop().success());
}

#[test]
fn building_a_directory_without_a_project_names_what_is_missing() {
    let dir = Scratch::new("build-empty");
    let (built, output) = shoal_build(&dir.0);
    assert!(!built);
    assert!(
        output.contains(&format!("error: {}: nothing to build: no Cargo.toml, package.json", dir.0.display())),
        "{output}"
    );
}
