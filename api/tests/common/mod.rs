//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use std::path::Path;

use shoal_api::{ManifestError, Service, parse_manifests};

pub const MI: u64 = 1 << 20;

pub const FULL: &str = r#"
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: kubia
  labels: {app: kubia, tier: web}
spec:
  module: ../target/wasm32-wasip2/release/hello.wasm
  replicas: 3
  routes:
    - host: Kubia.Example.com
      path: /api
    - host: "*.kubia.dev"
    - path: /health
  env:
    GREETING: hi
    PORT: 8080
    EMPTY:
  resources:
    memory: 64Mi
    cpu: 500m
    instanceMemory: 16Mi
  timeout: 10s
"#;

/// A minimal valid document with `extra` appended under `spec:`.
pub fn with_spec(extra: &str) -> String {
    format!("apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  module: hello.wasm\n{extra}")
}

pub fn parse(text: &str) -> Result<Vec<Service>, ManifestError> {
    parse_manifests(text, Path::new("/srv/manifests"))
}

pub fn parse_one(text: &str) -> Service {
    let mut services = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(services.len(), 1);
    services.remove(0)
}

/// Asserts that parsing fails with an error on `field` whose text contains
/// every one of `words`.
#[track_caller]
pub fn assert_error(text: &str, field: &str, words: &[&str]) -> ManifestError {
    let err = parse(text).expect_err("manifest should be rejected");
    let shown = err.to_string();
    assert_eq!(err.field, field, "wrong field in {shown:?}");
    assert!(shown.starts_with(&format!("{field}: ")), "{shown:?}");
    for word in words {
        assert!(shown.contains(word), "{shown:?} lacks {word:?}");
    }
    err
}
