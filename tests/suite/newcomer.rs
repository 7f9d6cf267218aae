//! What a newcomer meets in their first hour: `shoal new` projects that
//! build and deploy with nothing but the `shoal` binary and the toolchains,
//! starting without the sample, listing a service's replicas by its name,
//! selecting by labels, and build hints that can be followed as printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

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

/// Where a tool is on this machine's PATH.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file())
}

/// A machine with only the `shoal` binary and the toolchains: a directory
/// holding `shoal` alone, and one holding the toolchains' commands (cargo's
/// directory, node and npm, and what they run: the C linker build scripts
/// link with, a shell for npm's install scripts). No clone of this
/// repository is involved: projects live in a temporary directory.
struct Newcomer {
    home: Scratch,
    path: std::ffi::OsString,
    /// The toolchain the tests were built with (it has wasm32-wasip2).
    toolchain: String,
}

impl Newcomer {
    fn new() -> Newcomer {
        let home = Scratch::new("newcomer");
        let bin = home.0.join("bin");
        let tools = home.0.join("tools");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&tools).unwrap();
        std::os::unix::fs::symlink(SHOAL, bin.join("shoal")).unwrap();
        let cargo = which("cargo").expect("cargo is on PATH");
        for tool in ["node", "npm", "cc", "sh"] {
            if let Some(found) = which(tool) {
                std::os::unix::fs::symlink(found, tools.join(tool)).unwrap();
            }
        }
        let path = std::env::join_paths([bin, cargo.parent().unwrap().to_path_buf(), tools]).unwrap();
        let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().expect("rustc runs");
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        let toolchain = std::env::var("RUSTUP_TOOLCHAIN")
            .unwrap_or_else(|_| sysroot.file_name().unwrap().to_string_lossy().into_owned());
        Newcomer { home, path, toolchain }
    }

    /// Runs `shoal args` in `cwd` with nothing of this environment but
    /// HOME (rustup's and npm's settings), cargo's and rustup's homes, the
    /// toolchain and the test's cache (the JS SDK's npm install is shared
    /// with the other tests).
    fn shoal(&self, cwd: &Path, args: &[&str], up: Option<&Shoal>) -> (bool, String) {
        let mut command = Command::new("shoal");
        command.env_clear().current_dir(cwd).args(args).env("PATH", &self.path);
        for kept in ["HOME", "CARGO_HOME", "RUSTUP_HOME"] {
            if let Some(value) = std::env::var_os(kept) {
                command.env(kept, value);
            }
        }
        command
            .env("RUSTUP_TOOLCHAIN", &self.toolchain)
            .env("SHOAL_CACHE_DIR", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shoal-cache"));
        if let Some(up) = up {
            command.env("SHOAL_SERVER", up.server()).env("SHOAL_TOKEN", up.token());
        }
        // `Command` looks `shoal` up in the child's PATH.
        let output = command.output().expect("cannot run shoal from the newcomer's PATH");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// `shoal new LANGUAGE NAME && cd NAME && shoal build && shoal apply -f
    /// service.yaml`, then a request to /NAME: its answer.
    async fn new_build_apply(&self, up: &Shoal, language: &str, name: &str) -> String {
        let (ok, out) = self.shoal(&self.home.0, &["new", language, name], None);
        assert!(ok, "{out}");
        assert!(out.contains(&format!("cd {name}\n  shoal build\n  shoal apply -f service.yaml")), "{out}");
        let project = self.home.0.join(name);
        let (ok, out) = self.shoal(&project, &["build"], None);
        assert!(ok, "shoal build failed:\n{out}");
        let (ok, out) = self.shoal(&project, &["apply", "-f", "service.yaml"], Some(up));
        assert!(ok && out.contains(&format!("service/{name} created")), "{out}");
        let (ok, out) = self.shoal(&project, &["rollout", "status", name, "--timeout", "2m"], Some(up));
        assert!(ok, "{out}");
        let (status, body) = get(&up.url(&format!("/{name}")), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_new_rust_builds_and_deploys_with_only_shoal_and_the_toolchain() {
    let newcomer = Newcomer::new();
    let mut up = Shoal::start(&[]);
    // Beside the sample, which keeps "/".
    let body = newcomer.new_build_apply(&up, "rust", "hello2").await;
    assert!(body.starts_with("Hello from hello2! You've hit hello2-"), "{body}");
    assert!(get(&up.url("/"), None).await.1.starts_with("You've hit kubia-"));
    // Its readiness probe gated it, and the SDK came from the binary.
    let (_, described) = newcomer.shoal(&newcomer.home.0, &["describe", "service", "hello2"], Some(&up));
    assert!(described.contains("Readiness:     http-get /hello2/healthz"), "{described}");
    let lock = std::fs::read_to_string(newcomer.home.0.join("hello2/Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"shoal-sdk\"\nversion = \"0.1.0\"\n"), "{lock}");
    // Plain cargo builds it too (its .cargo/config.toml names the SDK).
    let status = Command::new("cargo")
        .current_dir(newcomer.home.0.join("hello2"))
        .args(["build", "--release", "--quiet"])
        .env("RUSTUP_TOOLCHAIN", &newcomer.toolchain)
        .status()
        .unwrap();
    assert!(status.success());

    // What shoal new refuses.
    let (ok, out) = newcomer.shoal(&newcomer.home.0, &["new", "rust", "hello2"], None);
    assert!(!ok && out.contains("hello2: already exists and is not an empty directory"), "{out}");
    let (ok, out) = newcomer.shoal(&newcomer.home.0, &["new", "rust", "Hello_World"], None);
    assert!(!ok && out.contains("\"Hello_World\" is not a valid name"), "{out}");
    let (ok, out) = newcomer.shoal(&newcomer.home.0, &["new", "go", "x"], None);
    assert!(!ok && out.contains("invalid value 'go'") && out.contains("rust, js"), "{out}");
    assert!(up.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_new_js_builds_and_deploys_with_only_shoal_and_node() {
    if which("node").is_none() || which("npm").is_none() {
        assert!(std::env::var("SHOAL_REQUIRE_NODE").as_deref() != Ok("1"), "SHOAL_REQUIRE_NODE=1 but no node/npm");
        eprintln!("skipped: Node.js and npm are not installed");
        return;
    }
    let newcomer = Newcomer::new();
    let mut up = Shoal::start(&["--no-sample"]);
    let body = newcomer.new_build_apply(&up, "js", "hello3").await;
    assert!(body.starts_with("Hello from hello3! You've hit hello3-"), "{body}");
    assert!(up.stop().success());
}

/// Runs `shoal args` against `up` with its stderr on a terminal (a pty):
/// (success, what the terminal showed).
fn on_a_terminal(up: &Shoal, args: &[&str]) -> (bool, String) {
    use std::io::Read as _;
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors into the integers given.
    let opened =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are open descriptors of our own, each owned once.
    let (mut master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave)) };
    let mut child = Command::new(SHOAL)
        .args(args)
        .args(["--server", &up.server(), "--token", &up.token()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(slave)
        .spawn()
        .expect("cannot run shoal");
    let status = child.wait().unwrap();
    // The child and its copy of the slave are gone: reading ends (EIO).
    let mut shown = Vec::new();
    let _ = master.read_to_end(&mut shown);
    (status.success(), String::from_utf8_lossy(&shown).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn long_work_says_what_it_is_doing() {
    /// Functions in the slow fixture: seconds of compiling here.
    const SLOW: usize = 3_000;
    let dir = Scratch::new("long-work");
    dir.write("slow.wasm", slow_component(SLOW));
    let file = dir.write("slow.yaml", manifest("slow", "slow.wasm", "routes:\n  - host: slow.local"));
    let shoal = Shoal::start(&["--no-sample", "-f", file.to_str().unwrap()]);
    // Restarted with an empty compile cache, Shoal compiles the module
    // again: describe and rollout status say so meanwhile.
    let data = shoal.stop_keep_data();
    std::fs::remove_dir_all(data.0.join("cache")).unwrap();
    let mut shoal = Shoal::start_in(data, &[], |_| {});
    let described = shoal.eventually(&["describe", "service", "slow"], |out| out.contains("preparing module sha256:"));
    assert!(described.contains("(compiling it, ") && described.contains(" MB"), "{described}");
    let (ok, out, err) = shoal.cli(&["rollout", "status", "slow", "--timeout", "2m"]);
    assert!(ok, "{err}");
    assert!(out.contains("(preparing module sha256:"), "{out}");
    // Then the module's events: when it started, and how long it took.
    let described = shoal.eventually(&["describe", "service", "slow"], |out| out.contains("Prepared"));
    assert!(described.contains("Preparing") && described.contains("MB): checking and compiling it"), "{described}");
    assert!(described.contains("prepared in ") && described.contains("s (compiled)"), "{described}");
    shoal.wait_ready("slow");

    // An upload the server takes seconds to check shows a status line on
    // a terminal, and nothing off one.
    let other = dir.write("slow2.wasm", slow_component(SLOW + 1));
    let (ok, shown) = on_a_terminal(&shoal, &["push", other.to_str().unwrap()]);
    assert!(ok, "{shown}");
    assert!(shown.contains("uploading ") && shown.contains("the server checks and compiles it"), "{shown:?}");
    assert!(shown.contains(": done in "), "{shown:?}");
    let third = dir.write("slow3.wasm", slow_component(SLOW + 2));
    let (ok, _, err) = shoal.cli(&["push", third.to_str().unwrap()]);
    assert!(ok && !err.contains("uploading"), "{err}");
    assert!(shoal.stop().success());
}
