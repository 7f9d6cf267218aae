//! A bad manifest stops `shoal up` before anything starts, with a message
//! that names the field or the file.

use crate::support::*;

/// Runs `shoal up -f <manifest>` and returns its stderr, asserting that it
/// failed and left nothing behind.
fn up_fails(dir: &Scratch, manifest: &str) -> String {
    let file = dir.write("service.yaml", manifest);
    let data = Scratch::new("errdata");
    let (pid, status, _out, err) = run_shoal_pid(&["up", "-f", file.to_str().unwrap()], &data.0);
    assert!(!status.success(), "shoal up succeeded with a bad manifest");
    assert!(err.contains("error:"), "{err}");
    // Nothing started: no cgroup of this shoal instance (the process has
    // exited; its workers would have died with it anyway). Other tests'
    // instances, running beside this one, are not this test's business.
    for root in ["/sys/fs/cgroup/memory/shoal", "/sys/fs/cgroup/shoal"] {
        let group = std::path::Path::new(root).join(format!("up-{pid}"));
        assert!(!group.exists(), "{} left behind by a shoal up that failed", group.display());
    }
    err
}

#[test]
fn unknown_field_is_named() {
    let dir = Scratch::new("unknown");
    let err = up_fails(&dir, &manifest("kubia", HELLO_WASM, "replicass: 3"));
    assert!(err.contains("spec.replicass"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
    assert!(err.contains("service.yaml"), "{err}");
}

#[test]
fn bad_quantity_is_named() {
    let dir = Scratch::new("quantity");
    let err = up_fails(&dir, &manifest("kubia", HELLO_WASM, "resources:\n  memory: 64Q"));
    assert!(err.contains("spec.resources.memory"), "{err}");
    assert!(err.contains("64Q"), "{err}");
}

#[test]
fn missing_module_file_is_named() {
    let dir = Scratch::new("missing");
    let err = up_fails(&dir, &manifest("kubia", "nowhere/hello.wasm", ""));
    assert!(err.contains("spec.module"), "{err}");
    assert!(err.contains("nowhere/hello.wasm"), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_file_that_is_not_a_component_is_named() {
    let dir = Scratch::new("notwasm");
    dir.write("text.wasm", "hello, I am not WebAssembly\n");
    let err = up_fails(&dir, &manifest("kubia", "text.wasm", ""));
    assert!(err.contains("text.wasm"), "{err}");
    assert!(err.contains("not a WebAssembly file"), "{err}");

    // A core module (the wasm32-wasip1 kind) is not a component either.
    dir.write("core.wasm", b"\0asm\x01\0\0\0");
    let err = up_fails(&dir, &manifest("kubia", "core.wasm", ""));
    assert!(err.contains("core.wasm"), "{err}");
    assert!(err.contains("core WebAssembly module, not a component"), "{err}");

    // A component header with garbage after it fails to compile.
    dir.write("broken.wasm", b"\0asm\x0d\0\x01\0garbage");
    let err = up_fails(&dir, &manifest("kubia", "broken.wasm", ""));
    assert!(err.contains("broken.wasm"), "{err}");
    assert!(err.contains("not a valid component"), "{err}");
}

#[test]
fn duplicate_routes_across_services_are_rejected() {
    let dir = Scratch::new("dupes");
    let mut text = manifest("one", HELLO_WASM, "routes:\n  - path: /x");
    text.push_str("---\n");
    text.push_str(&manifest("two", HELLO_WASM, "routes:\n  - path: /x"));
    let err = up_fails(&dir, &text);
    assert!(err.contains("\"one\"") && err.contains("\"two\""), "{err}");
}

#[test]
fn an_unreadable_manifest_is_named() {
    let data = Scratch::new("nofile");
    let (status, _, err) = run_shoal(&["up", "-f", "/nonexistent/shoal.yaml"], &data.0);
    assert!(!status.success());
    assert!(err.contains("/nonexistent/shoal.yaml"), "{err}");
}

#[test]
fn a_busy_port_is_reported() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = Scratch::new("busy");
    let dir = Scratch::new("busyman");
    let file = dir.write("s.yaml", manifest("kubia", HELLO_WASM, "replicas: 0"));
    let output = std::process::Command::new(SHOAL)
        .args(["up", "-f", file.to_str().unwrap(), "--listen", &addr, "--data-dir"])
        .arg(&data.0)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
