//! `shoal build [DIR]`: builds a service's source directory into the Wasm
//! component its manifest names, like `spin build`.
//!
//! - A Cargo project (`Cargo.toml`) is built with
//!   `cargo build --release --target wasm32-wasip2` (the target is added
//!   with rustup when missing). The component is copied to `spec.module`
//!   when cargo's output is somewhere else.
//! - A JavaScript project (`package.json`, `app.js`, `index.js` or
//!   `server.js`) is bundled and componentized by the JS SDK (`sdk/js`).
//!   The SDK is embedded in this binary. It is written once to the cache
//!   directory, and `npm ci` installs its locked dependencies there.
//!
//! The output goes where the directory's manifest (`service.yaml`,
//! `service.yml`, `shoal.yaml`, or `-f FILE`) says `spec.module` is. Without
//! a manifest, it goes to cargo's usual place, or to
//! `target/<directory name>.wasm` for JavaScript.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use sha2::{Digest as _, Sha256};

/// Arguments of `shoal build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The service's directory: a Cargo project or a JavaScript project.
    #[arg(default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// The manifest naming the module to build (default: `service.yaml`,
    /// `service.yml` or `shoal.yaml` in DIR, when there is one).
    #[arg(short = 'f', long = "file", value_name = "MANIFEST")]
    files: Vec<PathBuf>,
    /// Build the module of this service only (its `metadata.name`), when
    /// the manifests name several.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

/// The manifest names `shoal build` looks for in a directory.
const MANIFEST_NAMES: [&str; 3] = ["service.yaml", "service.yml", "shoal.yaml"];
/// The entry points of a JavaScript project without a `main` in its
/// package.json, in the order they are looked for.
const JS_ENTRIES: [&str; 3] = ["app.js", "index.js", "server.js"];
const TARGET: &str = "wasm32-wasip2";
/// The oldest Node.js the JS SDK's locked dependencies support.
const NODE_MAJOR: u32 = 20;

/// What a directory builds from.
#[derive(Debug, PartialEq, Eq)]
enum Project {
    /// A Cargo project, by its Cargo.toml.
    Cargo(PathBuf),
    /// A JavaScript project, by its entry point.
    Js(PathBuf),
}

/// The SDK's files, embedded by build.rs: (path under `sdk/js`, contents).
const SDK_JS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/sdk_js.rs"));
/// The Rust SDK's files, embedded by build.rs: (path under `sdk`, contents),
/// its Cargo.toml made standalone.
const SDK_RUST: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/sdk_rust.rs"));
/// The Rust SDK's crate name and version (always Shoal's).
pub const SDK_RUST_CRATE: &str = "shoal-sdk";
pub const SDK_RUST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `shoal build`.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let project = detect(dir)?.ok_or_else(|| {
        anyhow!(
            "{}: nothing to build: no Cargo.toml, package.json, {} here",
            dir.display(),
            JS_ENTRIES.join(", ").replacen(", server.js", " or server.js", 1)
        )
    })?;
    if matches!(project, Project::Cargo(_)) && dir.join("package.json").is_file() {
        eprintln!("note: {} has both Cargo.toml and package.json; building the Cargo project", dir.display());
    }
    let wanted = outputs(dir, &args.files, args.service.as_deref())?;
    let modules: Vec<PathBuf> = wanted.iter().map(|(_, module)| module.clone()).collect();
    let (started, built) = match &project {
        Project::Cargo(manifest) => (Instant::now(), build_cargo(manifest, &modules)?),
        Project::Js(entry) => {
            if modules.len() > 1 {
                let listed: Vec<String> = wanted.iter().map(|(name, m)| format!("{name} → {}", m.display())).collect();
                bail!(
                    "the manifests name {} modules ({}); a JavaScript project builds one: choose with --service NAME",
                    modules.len(),
                    listed.join(", ")
                );
            }
            let sdk = sdk_js()?;
            (Instant::now(), build_js(&sdk, dir, entry, modules.first())?)
        }
    };
    for path in built {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let elapsed = started.elapsed().as_secs_f64();
        println!("built {} ({:.1} MB) in {elapsed:.1}s", normalize(&path).display(), size as f64 / 1e6);
    }
    Ok(())
}

/// What `dir` builds from, if anything.
fn detect(dir: &Path) -> anyhow::Result<Option<Project>> {
    let cargo = dir.join("Cargo.toml");
    let package = dir.join("package.json");
    if cargo.is_file() {
        return Ok(Some(Project::Cargo(cargo)));
    }
    if package.is_file() {
        let text = std::fs::read_to_string(&package).with_context(|| format!("cannot read {}", package.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", package.display()))?;
        if let Some(main) = json.get("main") {
            let main = main.as_str().ok_or_else(|| anyhow!("{}: \"main\" is not a string", package.display()))?;
            // Node's resolution: the file, with `.js`, or the directory's index.js.
            let named = dir.join(main);
            let candidates = [named.clone(), dir.join(format!("{main}.js")), named.join("index.js")];
            let Some(entry) = candidates.into_iter().find(|p| p.is_file()) else {
                bail!("{}: \"main\" names {}, which does not exist", package.display(), named.display());
            };
            return Ok(Some(Project::Js(entry)));
        }
    }
    if let Some(entry) = JS_ENTRIES.iter().map(|name| dir.join(name)).find(|p| p.is_file()) {
        return Ok(Some(Project::Js(entry)));
    }
    if package.is_file() {
        bail!("{}: no \"main\" and none of {} in {}", package.display(), JS_ENTRIES.join(", "), dir.display());
    }
    Ok(None)
}

/// The services the manifests name (all, or the one called `service`) with
/// their modules, each module once, in order.
fn outputs(dir: &Path, files: &[PathBuf], service: Option<&str>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let files: Vec<PathBuf> = if files.is_empty() {
        MANIFEST_NAMES.iter().map(|name| dir.join(name)).filter(|p| p.is_file()).take(1).collect()
    } else {
        files.to_vec()
    };
    let mut modules: Vec<(String, PathBuf)> = Vec::new();
    let mut names = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read manifest {}", file.display()))?;
        let manifest_dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let services =
            shoal_api::parse_manifests(&text, manifest_dir).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        for found in services {
            names.push(found.name.clone());
            let chosen = service.is_none_or(|wanted| wanted == found.name);
            if chosen && !modules.iter().any(|(_, module)| *module == found.spec.module) {
                modules.push((found.name, found.spec.module));
            }
        }
    }
    if let Some(wanted) = service.filter(|_| modules.is_empty()) {
        let listed: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        if listed.is_empty() {
            bail!("--service {wanted}: no manifest (service.yaml, service.yml, shoal.yaml) in {}", dir.display());
        }
        bail!("--service {wanted}: no such service in {} (found: {})", listed.join(", "), names.join(", "));
    }
    Ok(modules)
}

/// Builds a Cargo project for wasm32-wasip2 and puts its component where
/// each output says.
fn build_cargo(manifest: &Path, outputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    ensure_wasm_target(dir)?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(dir)
        .args(["build", "--release", "--target", TARGET, "--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(manifest.file_name().unwrap_or(manifest.as_os_str()));
    if wants_registry_sdk(manifest)? {
        // The SDK this binary embeds stands in for the crates.io release
        // (set on the command line, this wins over a stale path a
        // `.cargo/config.toml` may hold).
        cargo.arg("--config").arg(sdk_rust_patch(&sdk_rust()?));
    }
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("cannot run cargo: {e}; building a Rust service needs a Rust toolchain"))?;
    // Components cargo produced, from its JSON messages.
    let mut artifacts: Vec<PathBuf> = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line.context("cannot read cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let files = message["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str());
        artifacts.extend(files.filter(|f| f.ends_with(".wasm")).map(PathBuf::from));
    }
    let status = child.wait().context("cannot wait for cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status}) in {}", dir.display());
    }
    if artifacts.is_empty() {
        bail!("cargo built no .wasm file in {}: is it a binary crate (src/main.rs)?", dir.display());
    }
    if outputs.is_empty() {
        return Ok(artifacts);
    }
    for output in outputs {
        let same = |a: &PathBuf| canonical(a) == canonical(output);
        if artifacts.iter().any(same) {
            continue;
        }
        let named: Vec<&PathBuf> = artifacts.iter().filter(|a| a.file_name() == output.file_name()).collect();
        // Copied by file name; or the one component to the one module.
        let source = match (named.as_slice(), artifacts.as_slice()) {
            ([one], _) => *one,
            ([], [one]) if outputs.len() == 1 => one,
            _ => bail!(
                "cannot tell which of cargo's outputs is spec.module {}: {}",
                output.display(),
                artifacts.iter().map(|a| a.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        };
        copy(source, output)?;
    }
    Ok(outputs.to_vec())
}

/// Whether the Cargo.toml at `manifest` depends on `shoal-sdk` from the
/// registry (`shoal-sdk = "0.1.0"`, as `shoal new` writes), rather than by
/// path or git, which `shoal build` leaves alone.
fn wants_registry_sdk(manifest: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    Ok(text.lines().map(str::trim_start).any(|line| {
        let Some(rest) = line.strip_prefix(SDK_RUST_CRATE) else { return false };
        let rest = rest.trim_start();
        (rest.starts_with('=') || rest.starts_with(".version"))
            && !["path", "git", "workspace"].iter().any(|source| rest.contains(source))
    }))
}

/// `sdk`'s path as a TOML string.
pub fn toml_string(sdk: &Path) -> String {
    let path = sdk.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{path}\"")
}

/// The `--config` value that makes cargo take `shoal-sdk` from the copy at
/// `sdk`.
fn sdk_rust_patch(sdk: &Path) -> String {
    format!("patch.crates-io.{SDK_RUST_CRATE}.path={}", toml_string(sdk))
}

/// The Rust SDK embedded in this binary, written to the cache directory
/// (`sdk-rust-<version>`, rewritten when its contents differ, under a file
/// lock against concurrent builds); its path.
pub fn sdk_rust() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create the cache directory {}", cache.display()))?;
    let digest = files_digest(SDK_RUST);
    let sdk = cache.join(format!("sdk-rust-{SDK_RUST_VERSION}"));
    let marker = sdk.join(".shoal-digest");
    let current = || std::fs::read_to_string(&marker).is_ok_and(|found| found == digest);
    if current() {
        return Ok(sdk);
    }
    let lock_path = cache.join("sdk-rust.lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if current() {
        return Ok(sdk);
    }
    if sdk.exists() {
        std::fs::remove_dir_all(&sdk).with_context(|| format!("cannot remove the old copy {}", sdk.display()))?;
    }
    write_files(&sdk, SDK_RUST)?;
    std::fs::write(&marker, &digest).with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(sdk)
}

/// A short digest of embedded files, naming their version.
fn files_digest(files: &[(&str, &[u8])]) -> String {
    let mut hash = Sha256::new();
    for (path, contents) in files {
        hash.update(path.as_bytes());
        hash.update((contents.len() as u64).to_le_bytes());
        hash.update(contents);
    }
    hash.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes embedded files under `dir`.
fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    for (path, contents) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

/// Adds the wasm32-wasip2 target to the toolchain `dir` builds with, when
/// rustup is there and the target is not.
fn ensure_wasm_target(dir: &Path) -> anyhow::Result<()> {
    let Ok(listed) = Command::new("rustup").current_dir(dir).args(["target", "list", "--installed"]).output() else {
        return Ok(()); // no rustup: cargo will say what is missing
    };
    if !listed.status.success() || String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    eprintln!("adding the {TARGET} target to the Rust toolchain (rustup target add {TARGET})");
    let status = Command::new("rustup").current_dir(dir).args(["target", "add", TARGET]).status()?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed ({status})");
    }
    Ok(())
}

/// Bundles and componentizes a JavaScript entry point with the JS SDK in
/// `sdk`, into `output` (default `<dir>/target/<dir name>.wasm`).
fn build_js(sdk: &Path, dir: &Path, entry: &Path, output: Option<&PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let output = match output {
        Some(output) => output.clone(),
        None => {
            let name =
                canonical(dir).file_name().map_or_else(|| "service".into(), |n| n.to_string_lossy().into_owned());
            dir.join("target").join(format!("{name}.wasm"))
        }
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let status =
        Command::new("node").arg(sdk.join("build.mjs")).arg(entry).arg(&output).status().context("cannot run node")?;
    if !status.success() {
        bail!("building {} failed ({status})", entry.display());
    }
    Ok(vec![output])
}

/// Checks that Node.js 20 or later is on PATH (the SDK's dependencies need it).
fn require_node() -> anyhow::Result<()> {
    let node = require_tool("node", "--version")?;
    let major: Option<u32> = node.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok());
    if major.is_some_and(|m| m < NODE_MAJOR) {
        bail!("building a JavaScript service needs Node.js {NODE_MAJOR} or later; node is {}", node.trim());
    }
    Ok(())
}

/// Runs `tool flag` and returns what it printed; an error that says what
/// is missing when it cannot run.
fn require_tool(tool: &str, flag: &str) -> anyhow::Result<String> {
    match Command::new(tool).arg(flag).output() {
        Ok(output) if output.status.success() => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        Ok(output) => bail!("`{tool} {flag}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr)),
        Err(e) => bail!(
            "building a JavaScript service needs Node.js {NODE_MAJOR} or later and npm: cannot run {tool} ({e}); install them"
        ),
    }
}

/// The JS SDK, written to the cache directory with its dependencies
/// installed; its path. Safe against concurrent builds (a file lock).
fn sdk_js() -> anyhow::Result<PathBuf> {
    require_node()?;
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create the cache directory {}", cache.display()))?;
    let sdk = cache.join(format!("sdk-js-{}", files_digest(SDK_JS)));
    let installed = sdk.join("node_modules").join(".shoal-installed");
    if installed.is_file() {
        return Ok(sdk);
    }
    let lock_path = cache.join("sdk-js.lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
        eprintln!("waiting for another shoal build to install the JavaScript SDK (lock {})", lock_path.display());
    }
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if installed.is_file() {
        return Ok(sdk); // another build installed it while this one waited
    }
    require_tool("npm", "--version")?;
    write_files(&sdk, SDK_JS)?;
    eprintln!(
        "installing the JavaScript SDK's dependencies (npm ci in {}; once per SDK version, ~10-40 s)",
        sdk.display()
    );
    let started = Instant::now();
    let mut npm = Command::new("npm")
        .current_dir(&sdk)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run npm")?;
    let status = wait_with_progress(&mut npm, started, "installing the JavaScript SDK's dependencies")?;
    if !status.success() {
        bail!("`npm ci` in {} failed ({status}); the npm registry must be reachable the first time", sdk.display());
    }
    eprintln!("installed the JavaScript SDK's dependencies in {:.1}s", started.elapsed().as_secs_f64());
    std::fs::write(&installed, b"").with_context(|| format!("cannot write {}", installed.display()))?;
    // Earlier SDK versions' copies (each with its node_modules) go.
    for old in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = old.file_name();
        if name.to_string_lossy().starts_with("sdk-js-") && old.path() != sdk && old.path().is_dir() {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    Ok(sdk)
}

/// Waits for `child`, saying every 10 s that `what` is still going (npm
/// prints nothing while it downloads).
fn wait_with_progress(
    child: &mut std::process::Child,
    started: Instant,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    let mut next = EVERY;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for npm")? {
            return Ok(status);
        }
        if started.elapsed() >= next {
            eprintln!("still {what} ({}s)", next.as_secs());
            next += EVERY;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Where `shoal build` keeps the JS SDK: `$SHOAL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/shoal`, else `~/.cache/shoal`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SHOAL_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("shoal"));
    }
    var("HOME")
        .map(|home| home.join(".cache").join("shoal"))
        .ok_or_else(|| anyhow!("no cache directory: set SHOAL_CACHE_DIR, XDG_CACHE_HOME or HOME"))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
}

/// How to build a missing module named by a manifest in `manifest_dir`:
/// `shoal build <dir>` when that directory holds a project; else, from
/// `<crate>/target/wasm32-wasip2/<profile>/x.wasm`, the cargo command.
pub fn build_hint(manifest: &Path, module: &Path) -> String {
    let manifest_dir = manifest.parent().unwrap_or(Path::new(""));
    // A project `shoal build` can build, or one it will say what is wrong with.
    if matches!(detect(manifest_dir), Ok(Some(_)) | Err(_)) {
        let dir = if manifest_dir.as_os_str().is_empty() { Path::new(".") } else { manifest_dir };
        // `shoal build DIR` reads the first of MANIFEST_NAMES there: name
        // any other manifest, or following the hint builds another module.
        let found = MANIFEST_NAMES.iter().map(|name| dir.join(name)).find(|path| path.is_file());
        let same = found.is_some_and(|found| found.file_name() == manifest.file_name());
        return if same {
            format!("shoal build {}", dir.display())
        } else {
            format!("shoal build {} -f {}", dir.display(), manifest.display())
        };
    }
    cargo_hint(module)
}

/// `cargo build [--release] --target wasm32-wasip2 --manifest-path <crate>/Cargo.toml`
/// for a module in `<crate>/target/wasm32-wasip2/<profile>/`.
fn cargo_hint(module: &Path) -> String {
    let normalized = normalize(module);
    let parts: Vec<Component<'_>> = normalized.components().collect();
    let target = parts
        .windows(2)
        .rposition(|w| matches!(w, [Component::Normal(a), Component::Normal(b)] if *a == "target" && *b == TARGET));
    if let Some(index) = target {
        let release = matches!(parts.get(index + 2), Some(Component::Normal(p)) if *p == "release");
        let root: PathBuf = parts[..index].iter().collect();
        let profile = if release { " --release" } else { "" };
        let manifest = root.join("Cargo.toml");
        let manifest = if root.as_os_str().is_empty() {
            String::new()
        } else {
            format!(" --manifest-path {}", manifest.display())
        };
        return format!("cargo build{profile} --target {TARGET}{manifest}");
    }
    format!("cargo build --release --target {TARGET} (in the service's crate)")
}

/// `a/b/../c` → `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-build-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The embedded Rust SDK builds on its own, at Shoal's version, which
    /// is what `shoal new` asks for.
    #[test]
    fn the_embedded_rust_sdk_is_standalone_at_shoals_version() {
        let manifest = SDK_RUST.iter().find(|(path, _)| *path == "Cargo.toml").expect("Cargo.toml embedded");
        let manifest = std::str::from_utf8(manifest.1).unwrap();
        assert!(manifest.contains(&format!("\nversion = \"{SDK_RUST_VERSION}\"\n")), "{manifest}");
        assert!(manifest.contains(&format!("name = \"{SDK_RUST_CRATE}\"")), "{manifest}");
        assert!(!manifest.contains("workspace"), "{manifest}");
        assert!(SDK_RUST.iter().any(|(path, _)| *path == "src/lib.rs"));
    }

    #[test]
    fn only_a_registry_dependency_on_the_sdk_gets_the_embedded_one() {
        let dir = temp_dir("registry-sdk");
        let cases = [
            ("shoal-sdk = \"0.1.0\"", true),
            ("shoal-sdk = { version = \"0.1\", features = [] }", true),
            ("shoal-sdk.version = \"0.1\"", true),
            ("shoal-sdk = { path = \"../sdk\" }", false),
            ("shoal-sdk.workspace = true", false),
            ("shoal-sdk = { git = \"https://example.com/x\" }", false),
            ("shoal-sdk-extra = \"1\"", false),
        ];
        for (line, wanted) in cases {
            let manifest = dir.join("Cargo.toml");
            std::fs::write(&manifest, format!("[package]\nname = \"x\"\n\n[dependencies]\n{line}\n")).unwrap();
            assert_eq!(wants_registry_sdk(&manifest).unwrap(), wanted, "{line}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cargo_hints() {
        assert_eq!(
            cargo_hint(Path::new("samples/hello/../target/wasm32-wasip2/release/hello.wasm")),
            "cargo build --release --target wasm32-wasip2 --manifest-path samples/Cargo.toml"
        );
        assert_eq!(
            cargo_hint(Path::new("/src/app/target/wasm32-wasip2/debug/app.wasm")),
            "cargo build --target wasm32-wasip2 --manifest-path /src/app/Cargo.toml"
        );
        assert_eq!(
            cargo_hint(Path::new("target/wasm32-wasip2/release/x.wasm")),
            "cargo build --release --target wasm32-wasip2"
        );
        assert!(cargo_hint(Path::new("/opt/x.wasm")).ends_with("(in the service's crate)"));
    }

    #[test]
    fn detects_projects_and_hints_shoal_build() {
        let dir = temp_dir("detect");
        std::fs::write(dir.join("service.yaml"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), None);
        assert_eq!(
            build_hint(&dir.join("service.yaml"), &dir.join("x.wasm")),
            "cargo build --release --target wasm32-wasip2 (in the service's crate)"
        );

        std::fs::write(dir.join("index.js"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Js(dir.join("index.js"))));
        std::fs::write(dir.join("app.js"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Js(dir.join("app.js"))), "app.js comes first");
        assert_eq!(
            build_hint(&dir.join("service.yaml"), &dir.join("x.wasm")),
            format!("shoal build {}", dir.display())
        );

        std::fs::write(dir.join("package.json"), r#"{"main": "src/server.js"}"#).unwrap();
        let error = detect(&dir).unwrap_err().to_string();
        assert!(error.contains("\"main\" names") && error.ends_with("which does not exist"), "{error}");
        std::fs::create_dir(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/server.js"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Js(dir.join("src/server.js"))));
        // Node's resolution of "main": without .js, or a directory's index.js.
        std::fs::write(dir.join("package.json"), r#"{"main": "src/server"}"#).unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Js(dir.join("src/server.js"))));
        std::fs::write(dir.join("src/index.js"), "").unwrap();
        std::fs::write(dir.join("package.json"), r#"{"main": "src"}"#).unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Js(dir.join("src/index.js"))));
        std::fs::write(dir.join("package.json"), "{").unwrap();
        assert!(detect(&dir).unwrap_err().to_string().contains("invalid JSON"));
        // A broken project: `shoal build` is still what to run (it says what is wrong).
        assert_eq!(
            build_hint(&dir.join("service.yaml"), &dir.join("x.wasm")),
            format!("shoal build {}", dir.display())
        );

        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        assert_eq!(detect(&dir).unwrap(), Some(Project::Cargo(dir.join("Cargo.toml"))), "Cargo.toml wins");
        // A manifest `shoal build DIR` would not read is named in the hint.
        let other = dir.join("staging.yaml");
        assert_eq!(
            build_hint(&other, &dir.join("x.wasm")),
            format!("shoal build {} -f {}", dir.display(), other.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_come_from_the_manifest() {
        let dir = temp_dir("outputs");
        assert!(outputs(&dir, &[], None).unwrap().is_empty());
        let manifest =
            "apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  module: target/web.wasm\n";
        std::fs::write(dir.join("service.yaml"), manifest).unwrap();
        assert_eq!(outputs(&dir, &[], None).unwrap(), [("web".to_owned(), dir.join("target/web.wasm"))]);
        let two = format!("{manifest}---\n{}", manifest.replace("web", "api"));
        std::fs::write(dir.join("two.yaml"), two).unwrap();
        let both = outputs(&dir, &[dir.join("two.yaml")], None).unwrap();
        assert_eq!(both.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["web", "api"]);
        let api = outputs(&dir, &[dir.join("two.yaml")], Some("api")).unwrap();
        assert_eq!(api, [("api".to_owned(), dir.join("target/api.wasm"))]);
        let error = outputs(&dir, &[dir.join("two.yaml")], Some("db")).unwrap_err().to_string();
        assert!(
            error.starts_with("--service db: no such service in") && error.ends_with("(found: web, api)"),
            "{error}"
        );
        std::fs::write(dir.join("bad.yaml"), "kind: Service\n").unwrap();
        let error = outputs(&dir, &[dir.join("bad.yaml")], None).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}: ", dir.join("bad.yaml").display())), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sdk_is_embedded() {
        let paths: Vec<&str> = SDK_JS.iter().map(|(path, _)| *path).collect();
        for expected in ["build.mjs", "package.json", "package-lock.json", "shims/http.js", "shims/os.js"] {
            assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
        }
        assert!(paths.iter().any(|p| p.starts_with("wit/")), "{paths:?}");
        assert!(!paths.iter().any(|p| p.contains("node_modules")), "{paths:?}");
    }
}
