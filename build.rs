//! Builds the guest samples (`samples/`, its own workspace) for
//! `wasm32-wasip2` so that `shoal up` can embed the kubia sample and the
//! tests can use the fixtures, without extra steps: `cargo run` and
//! `cargo test` are enough on a machine with only a Rust toolchain.
//!
//! The `wasm32-wasip2` target is listed in `rust-toolchain.toml`, but rustup
//! only installs listed targets with the toolchain itself, not into an
//! installed toolchain that lacks them; so this script adds it when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const SAMPLES: [&str; 3] = ["hello", "faulty", "frontend"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let samples = root.join("samples");
    for path in ["samples/Cargo.toml", "samples/Cargo.lock", "samples/.cargo", "sdk/src", "sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={path}");
    }
    for sample in SAMPLES {
        println!("cargo:rerun-if-changed=samples/{sample}");
    }

    embed_sdk_js(&root);
    embed_sdk_rust(&root);
    ensure_target();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&samples)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(samples.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(samples.join("target"));
    clean_env(&mut command);
    let output = command.output().expect("cannot run cargo to build the samples");
    if !output.status.success() {
        panic!(
            "building the samples for {TARGET} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let out = samples.join("target").join(TARGET).join("release");
    for sample in SAMPLES {
        let wasm = out.join(format!("{sample}.wasm"));
        assert!(wasm.is_file(), "the samples build did not produce {}", wasm.display());
        println!("cargo:rustc-env=SHOAL_{}_WASM={}", sample.to_uppercase(), wasm.display());
    }
    println!("cargo:rustc-env=SHOAL_SAMPLES_DIR={}", samples.display());
}

/// What of `sdk/js` `shoal build` needs (not `node_modules`, nor anything
/// else a developer leaves there).
const SDK_JS: [&str; 6] = ["build.mjs", "package.json", "package-lock.json", "README.md", "shims", "wit"];
/// What of `sdk` (the Rust SDK) a project outside this repository builds
/// with; its Cargo.toml is written standalone (see `standalone_manifest`).
const SDK_RUST: [&str; 2] = ["README.md", "src"];

/// Writes `$OUT_DIR/sdk_js.rs`: the JS SDK's files (`SDK_JS`, directories
/// walked) as `&[(path, include_bytes!(…))]`, which `shoal build` writes out
/// to its cache.
fn embed_sdk_js(root: &Path) {
    let sdk = root.join("sdk/js");
    let files = walk_all(&sdk, &SDK_JS);
    write_embedded("sdk_js.rs", &sdk, files, &[]);
}

/// Writes `$OUT_DIR/sdk_rust.rs`, as `embed_sdk_js` does, for the Rust SDK:
/// its sources and a Cargo.toml that needs no workspace.
fn embed_sdk_rust(root: &Path) {
    let sdk = root.join("sdk");
    let files = walk_all(&sdk, &SDK_RUST);
    println!("cargo:rerun-if-changed=sdk/Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let manifest = standalone_manifest(root);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sdk_rust_Cargo.toml");
    std::fs::write(&out, manifest).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    write_embedded("sdk_rust.rs", &sdk, files, &[("Cargo.toml", out)]);
}

/// `sdk/Cargo.toml` with each `key.workspace = true` replaced by the
/// workspace's value and the workspace's lints dropped, so that it builds
/// on its own.
fn standalone_manifest(root: &Path) -> String {
    let read =
        |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let workspace = read(&root.join("Cargo.toml"));
    let mut inherited = std::collections::HashMap::new();
    let mut in_package = false;
    for line in workspace.lines() {
        if line.starts_with('[') {
            in_package = line.trim() == "[workspace.package]";
        } else if in_package && let Some((key, value)) = line.split_once('=') {
            inherited.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    let mut manifest = String::new();
    let mut lines = read(&root.join("sdk/Cargo.toml")).lines().map(str::to_owned).collect::<Vec<_>>().into_iter();
    while let Some(line) = lines.next() {
        if line.trim() == "[lints]" {
            let next = lines.next().unwrap_or_default();
            assert_eq!(next.trim(), "workspace = true", "sdk/Cargo.toml: [lints] other than the workspace's");
            continue;
        }
        if let Some(key) = line.strip_suffix(".workspace = true") {
            let value = inherited.get(key).unwrap_or_else(|| panic!("[workspace.package] has no {key}"));
            manifest.push_str(&format!("{key} = {value}\n"));
            continue;
        }
        assert!(!line.contains("workspace"), "sdk/Cargo.toml: cannot make {line:?} standalone");
        manifest.push_str(&line);
        manifest.push('\n');
    }
    manifest
}

/// The files under `base`'s `names`, directories walked in order.
fn walk_all(base: &Path, names: &[&str]) -> Vec<PathBuf> {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_dir() {
            assert!(path.is_file(), "{} is missing", path.display());
            files.push(path.to_path_buf());
            return;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            walk(&entry, files);
        }
    }
    let mut files = Vec::new();
    for name in names {
        walk(&base.join(name), &mut files);
    }
    files
}

/// Writes `$OUT_DIR/<name>`: `&[(path under base, include_bytes!(file))]`
/// for `files`, then for `extra` (path, file) pairs.
fn write_embedded(name: &str, base: &Path, files: Vec<PathBuf>, extra: &[(&str, PathBuf)]) {
    let mut code = String::from("&[\n");
    for file in files {
        let relative = file.strip_prefix(base).expect("under the SDK").to_str().expect("a UTF-8 path");
        code.push_str(&format!("    ({relative:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    for (relative, file) in extra {
        code.push_str(&format!("    ({relative:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    code.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(name);
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// Adds the wasm target to the toolchain in use if it lacks it.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.as_deref().is_some_and(has_target) {
        return;
    }
    println!("cargo:warning=adding the {TARGET} target to the Rust toolchain (rustup target add {TARGET})");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    match rustup.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`rustup target add {TARGET}` failed ({status}); install the target and build again"),
        Err(error) => panic!("the {TARGET} target is missing and rustup cannot be run ({error}); install the target"),
    }
}

fn has_target(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib").join(TARGET).join("lib").is_dir()
}

/// Keeps the outer build's settings (target dir, flags, jobserver, profile)
/// out of the nested cargo, which builds another workspace for another target.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_NET_OFFLINE" | "CARGO_TERM_COLOR")
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_HTTP_");
        let drop = (key.starts_with("CARGO_") && !keep)
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if drop {
            command.env_remove(key);
        }
    }
}
