//! `shoal new rust|js NAME`: writes a service's directory that `shoal build`
//! builds and `shoal apply -f service.yaml` deploys, as `spin new` does.
//!
//! A Rust project depends on `shoal-sdk = "<Shoal's version>"`, as it would
//! on the crate from crates.io; `shoal build` supplies the SDK embedded in
//! this binary (see `builder::sdk_rust`), and the project's
//! `.cargo/config.toml` points plain `cargo` at the same copy. A JavaScript
//! project is a Node.js-style `app.js`, which the embedded JS SDK builds.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::builder;

/// Arguments of `shoal new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The language: `rust` (a Cargo project with the Rust SDK) or `js` (a
    /// Node.js-style app.js, built with the JS SDK).
    #[arg(value_enum)]
    language: Language,
    /// The service's name (lowercase letters, digits and "-"): its
    /// directory, its `metadata.name` and its route, /NAME.
    name: String,
    /// Where to write it (default: ./NAME). It must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Language {
    Rust,
    Js,
}

/// Runs `shoal new`.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    shoal_api::check_name(name).map_err(|reason| anyhow::anyhow!("NAME: {reason}"))?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut entries| entries.next().is_some()) {
        bail!("{}: already exists and is not an empty directory; choose another NAME or --dir", dir.display());
    }
    let files = match args.language {
        Language::Rust => rust(name)?,
        Language::Js => js(name),
    };
    for (path, contents) in &files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let shown = dir.display();
    println!("created {shown}/ ({} service {name:?}):", args.language.title());
    for (path, _) in &files {
        println!("  {path}");
    }
    println!("next:\n  cd {shown}\n  shoal build\n  shoal apply -f service.yaml\n  curl localhost:8080/{name}");
    Ok(())
}

impl Language {
    fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
        }
    }
}

/// The manifest both languages share: one route, /NAME; a readiness probe
/// on /NAME/healthz; limits that suit a small service.
fn manifest(name: &str, module: &str, memory: &str, instance_memory: &str) -> String {
    format!(
        "# Deploy with: shoal apply -f service.yaml (build first: shoal build)
apiVersion: shoal.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  module: {module}
  replicas: 2
  routes:
    - path: /{name}
  # A new replica takes requests once this answers 2xx or 3xx; a rollout
  # whose replicas never do stops, and the old replicas keep serving.
  readiness:
    path: /{name}/healthz
    periodSeconds: 5
    failureThreshold: 3
  resources:
    memory: {memory}
    cpu: 500m
    instanceMemory: {instance_memory}
  timeout: 10s
"
    )
}

fn readme(name: &str, language: &str, edit: &str) -> String {
    format!(
        "# {name}

A {language} HTTP service for Shoal. Edit `{edit}`, then:

```sh
shoal build                     # builds the module service.yaml names
shoal apply -f service.yaml     # deploys it (shoal up must be running)
curl localhost:8080/{name}
shoal logs {name}               # what it printed
```

`service.yaml` sets its replicas, route, readiness probe and limits.
"
    )
}

fn rust(name: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let version = builder::SDK_RUST_VERSION;
    let crate_name = builder::SDK_RUST_CRATE;
    let cargo = format!(
        "[package]
name = \"{name}\"
version = \"0.1.0\"
edition = \"2024\"
publish = false

[dependencies]
# Shoal's version: `shoal build` supplies the SDK embedded in the shoal binary.
{crate_name} = \"{version}\"

# Small components that instantiate fast; a panic aborts (the host answers 500).
[profile.release]
opt-level = \"s\"
lto = true
codegen-units = 1
strip = \"debuginfo\"
"
    );
    let main = format!(
        "//! {name}: a Shoal HTTP service (see README.md).

use shoal_sdk::{{Request, Response}};

/// Called for every request the gateway routes here: paths under /{name}.
fn handle(req: Request) -> Response {{
    match (req.method(), req.path()) {{
        // service.yaml's readiness probe: a replica takes requests once this answers.
        (\"GET\", \"/{name}/healthz\") => Response::ok(\"ok\\n\"),
        (\"GET\", _) => {{
            let replica = shoal_sdk::hostname().unwrap_or_else(|| \"unknown\".into());
            println!(\"{{}} {{}}\", req.method(), req.path_and_query());
            Response::ok(format!(\"Hello from {name}! You've hit {{replica}}\\n\"))
        }}
        _ => Response::text(405, \"only GET is served here\\n\").with_header(\"allow\", \"GET\"),
    }}
}}

shoal_sdk::service!(handle);

// A binary crate needs a main; the host never calls it when serving HTTP.
fn main() {{}}
"
    );
    // Plain `cargo build` (and editors) find the SDK where `shoal build`
    // keeps it; `shoal build` passes the same setting itself.
    let patch = match builder::sdk_rust() {
        Ok(sdk) => format!("[patch.crates-io]\n{crate_name} = {{ path = {} }}\n", builder::toml_string(&sdk)),
        Err(error) => {
            eprintln!("warning: cannot write the Rust SDK to the cache ({error:#}); shoal build will");
            String::new()
        }
    };
    let config = format!(
        "# Written by `shoal new`. Builds target WebAssembly components; the patch
# lets plain cargo find the Rust SDK embedded in shoal (shoal build sets it
# itself, so it may go once shoal-sdk is on crates.io).
[build]
target = \"wasm32-wasip2\"

{patch}"
    );
    Ok(vec![
        ("Cargo.toml", cargo),
        ("src/main.rs", main),
        ("service.yaml", manifest(name, &format!("target/wasm32-wasip2/release/{name}.wasm"), "64Mi", "16Mi")),
        (".cargo/config.toml", config),
        (".gitignore", "/target\n".into()),
        ("README.md", readme(name, "Rust", "src/main.rs")),
    ])
}

fn js(name: &str) -> Vec<(&'static str, String)> {
    let app = format!(
        "// {name}: a Shoal HTTP service in Node.js style (see README.md). The
// http, os, events, buffer, util, url and querystring modules are there;
// use fetch() for outbound calls.
const http = require('http');
const os = require('os');

const server = http.createServer((request, response) => {{
  // service.yaml's readiness probe: a replica takes requests once this answers.
  if (request.url === '/{name}/healthz') {{
    response.writeHead(200);
    response.end('ok\\n');
    return;
  }}
  console.log(request.method + ' ' + request.url);
  response.writeHead(200, {{ 'content-type': 'text/plain; charset=utf-8' }});
  response.end(\"Hello from {name}! You've hit \" + os.hostname() + '\\n');
}});

server.listen(8080);
"
    );
    let package = format!(
        "{{\n  \"name\": \"{name}\",\n  \"version\": \"0.1.0\",\n  \"private\": true,\n  \"main\": \"app.js\"\n}}\n"
    );
    vec![
        ("app.js", app),
        ("package.json", package),
        ("service.yaml", manifest(name, &format!("target/{name}.wasm"), "128Mi", "32Mi")),
        (".gitignore", "/target\n/node_modules\n".into()),
        ("README.md", readme(name, "JavaScript", "app.js")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shoal new` never writes a manifest `apply` refuses.
    #[test]
    fn the_manifests_it_writes_are_valid() {
        for (module, memory, instance) in [("target/x.wasm", "128Mi", "32Mi"), ("target/y.wasm", "64Mi", "16Mi")] {
            let text = manifest("my-svc", module, memory, instance);
            let services = shoal_api::parse_manifests(&text, std::path::Path::new("/tmp")).expect("a valid manifest");
            assert_eq!(services[0].name, "my-svc");
            assert_eq!(services[0].spec.routes[0].path, "/my-svc");
        }
    }

    #[test]
    fn names_a_manifest_refuses_are_refused() {
        assert!(shoal_api::check_name("Hello").is_err());
        assert!(shoal_api::check_name("-x").is_err());
        assert!(shoal_api::check_name("hello2").is_ok());
    }
}
