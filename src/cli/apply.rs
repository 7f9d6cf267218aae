//! `shoal apply` and `shoal push`: read manifests, check them all, upload
//! their modules, then create or update each service.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use serde::Deserialize;
use shoal_api::objects::ModuleInfo;
use shoal_api::{Service, parse_manifests, validate_set};

use super::client::{ApiError, Client, rejected};
use super::connect::{encode, io_reason};
use super::table::human_size;
use super::{ApplyArgs, PushArgs, print, progress};

/// One service to apply: where it came from, its document, what it says.
#[derive(Debug)]
pub struct Planned {
    /// The manifest file as the user named it (`-` for stdin).
    pub file: String,
    /// The document alone, re-serialized (what the server receives).
    pub document: String,
    pub service: Service,
}

/// The answer to `PUT /v1/services/{name}`.
#[derive(Deserialize)]
struct Applied {
    result: String,
    /// What the service asks for that works, but not as it may expect.
    #[serde(default)]
    warnings: Vec<String>,
}

/// How long an upload waits for the server to take it while other uploads
/// run (`429`), in all.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Uploads a module, waiting (and telling so once) while the server is busy
/// with other uploads. A module the server refuses (`400`) is named as
/// `what` says, with the server's reason: `FILE: not a valid component: …`.
async fn upload(client: &Client, bytes: Bytes, what: impl Fn() -> String) -> anyhow::Result<ModuleInfo> {
    let started = std::time::Instant::now();
    let mut told = false;
    // The server checks a module before it answers: it compiles it, which
    // takes seconds for a large one (a JavaScript service's ~13 MB).
    let step = format!("uploading {} ({}; the server checks and compiles it)", what(), human_size(bytes.len() as u64));
    loop {
        match progress::show(&step, client.post_wasm::<ModuleInfo>("/v1/modules", bytes.clone())).await {
            Ok(info) => return Ok(info),
            Err(error) => match error.downcast_ref::<ApiError>() {
                Some(ApiError::Status { status, .. }) if status.as_u16() == 429 && started.elapsed() < UPLOAD_WAIT => {
                    if !told {
                        eprintln!("waiting: the server is busy with other uploads");
                        told = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Some(ApiError::Status { status, message, .. }) if status.as_u16() == 400 => {
                    return Err(anyhow!("{}: {message}", what()));
                }
                _ => return rejected(Err(error), || format!("cannot upload {}", what())),
            },
        }
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let files = manifest_files(&args.files)?;
    let planned = plan(&files)?;
    let modules = read_modules(&planned)?;
    let client = Client::new(&args.connect)?;
    let mut digests: HashMap<PathBuf, String> = HashMap::new();
    for (path, bytes) in modules {
        let user = planned.iter().find(|p| module_key(&p.service.spec.module) == path);
        let what = || match user {
            Some(user) => format!("{}: spec.module: {}", user.file, user.service.spec.module_field),
            None => path.display().to_string(),
        };
        let info = upload(&client, bytes, what).await?;
        digests.insert(path, info.digest);
    }
    // Modules named by digest: in the store already, or said now.
    for item in &planned {
        if let Some(digest) = item.service.spec.module_digest() {
            let found = client.get::<ModuleInfo>(&format!("/v1/modules/{digest}")).await;
            if let Err(error) = found {
                if super::client::is_not_found(&error) {
                    bail!(
                        "{}: spec.module: {} is not in the store (shoal get modules -o wide lists the stored ones; \
                         shoal push FILE stores one)",
                        item.file,
                        item.service.spec.module_field
                    );
                }
                return Err(error);
            }
        }
    }
    for item in &planned {
        let digest = match item.service.spec.module_digest() {
            Some(digest) => digest,
            None => &digests[&module_key(&item.service.spec.module)],
        };
        let name = &item.service.name;
        let body = serde_json::json!({ "manifest": item.document, "moduleDigest": digest });
        let applied: Applied = rejected(client.put(&format!("/v1/services/{}", encode(name)), &body).await, || {
            format!("{}: service {name:?}", item.file)
        })?;
        print(&format!("service/{name} {}\n", applied.result))?;
        for warning in &applied.warnings {
            eprintln!("Warning: {}: service {name:?}: {warning}", item.file);
        }
    }
    Ok(())
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).map_err(|e| anyhow!("{}: {}", args.file.display(), io_reason(&e)))?;
    check_wasm(&bytes).map_err(|why| anyhow!("{}: {why}", args.file.display()))?;
    let client = Client::new(&args.connect)?;
    let info = upload(&client, Bytes::from(bytes), || args.file.display().to_string()).await?;
    print(&format!("module sha256:{} ({})\n", info.digest, human_size(info.size)))?;
    Ok(())
}

/// The files named by `-f`: files as given, directories as their `*.yaml`
/// and `*.yml` files (sorted, not recursive).
pub fn manifest_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" || !arg.is_dir() {
            files.push(arg.clone());
            continue;
        }
        let entries = std::fs::read_dir(arg).map_err(|e| anyhow!("{}: {}", arg.display(), io_reason(&e)))?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| anyhow!("{}: {}", arg.display(), io_reason(&e)))?.path();
            let yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
            if yaml && path.is_file() {
                found.push(path);
            }
        }
        if found.is_empty() {
            bail!("{}: no *.yaml or *.yml files in this directory", arg.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Reads and validates every file, and checks the services together.
/// Nothing is sent anywhere until all of it is fine.
pub fn plan(files: &[PathBuf]) -> anyhow::Result<Vec<Planned>> {
    let mut planned = Vec::new();
    for path in files {
        let (name, text, dir) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| anyhow!("-: {}", io_reason(&e)))?;
            ("-".to_owned(), text, std::env::current_dir().context("cannot read the current directory")?)
        } else {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{name}: {}", io_reason(&e)))?;
            (name, text, path.parent().map_or_else(PathBuf::new, Path::to_path_buf))
        };
        planned.extend(plan_text(&name, &text, &dir)?);
    }
    for index in 0..planned.len() {
        let services: Vec<Service> = planned[..=index].iter().map(|p| p.service.clone()).collect();
        if let Err(error) = validate_set(&services) {
            bail!("{}: {error}", planned[index].file);
        }
    }
    Ok(planned)
}

/// The services of one manifest file, each with its own document.
pub fn plan_text(file: &str, text: &str, dir: &Path) -> anyhow::Result<Vec<Planned>> {
    // The whole text first: its errors carry the file's line numbers and
    // document numbers.
    let services = parse_manifests(text, dir).map_err(|e| anyhow!("{file}: {e}"))?;
    let documents = split_documents(text).map_err(|e| anyhow!("{file}: invalid YAML: {e}"))?;
    if documents.len() != services.len() {
        bail!("{file}: found {} documents but {} services", documents.len(), services.len());
    }
    let several = documents.len() > 1;
    let mut planned = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let where_ = if several { format!("{file}: document {}", index + 1) } else { file.to_owned() };
        let mut parsed = parse_manifests(&document, dir).map_err(|e| anyhow!("{where_}: {e}"))?;
        let service = parsed.pop().ok_or_else(|| anyhow!("{where_}: no Service"))?;
        // The manifest's path, for the build hint (stdin has none).
        let manifest = match Path::new(file).file_name() {
            Some(name) if file != "-" => dir.join(name),
            _ => dir.join("service.yaml"),
        };
        check_module(&where_, &manifest, &service)?;
        planned.push(Planned { file: file.to_owned(), document, service });
    }
    Ok(planned)
}

/// Splits YAML text into its non-empty documents, each re-serialized on
/// its own. Stops at the first syntax error (serde_yaml_ng's document
/// iterator would not end after one).
pub fn split_documents(text: &str) -> Result<Vec<String>, serde_yaml_ng::Error> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(serde_yaml_ng::to_string(&value)?);
        }
    }
    Ok(documents)
}

/// Checks that `spec.module` names an existing file.
fn check_module(where_: &str, manifest: &Path, service: &Service) -> anyhow::Result<()> {
    let spec = &service.spec;
    if spec.module_digest().is_some() {
        return Ok(());
    }
    let module = &spec.module;
    let problem = match std::fs::metadata(module) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(_) => "is not a file".to_owned(),
        Err(e) => io_reason(&e),
    };
    let mut message = format!("{where_}: spec.module: {}: {problem}", spec.module_field);
    if Path::new(&spec.module_field) != module.as_path() {
        message.push_str(&format!(" (looked for {})", module.display()));
    }
    message.push_str(&format!("; build it with: {}", crate::builder::build_hint(manifest, module)));
    Err(anyhow!(message))
}

/// The key under which a module is read once: its canonical path.
fn module_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads every distinct module once and checks it is WebAssembly.
fn read_modules(planned: &[Planned]) -> anyhow::Result<BTreeMap<PathBuf, Bytes>> {
    let mut modules = BTreeMap::new();
    for item in planned {
        // A module named by its digest is already in the store.
        if item.service.spec.module_digest().is_some() {
            continue;
        }
        let key = module_key(&item.service.spec.module);
        if modules.contains_key(&key) {
            continue;
        }
        let field = &item.service.spec.module_field;
        let bytes =
            std::fs::read(&key).map_err(|e| anyhow!("{}: spec.module: {field}: {}", item.file, io_reason(&e)))?;
        check_wasm(&bytes).map_err(|why| anyhow!("{}: spec.module: {field}: {why}", item.file))?;
        modules.insert(key, Bytes::from(bytes));
    }
    Ok(modules)
}

/// A quick look at the bytes, in the words of the server's check (which
/// checks the whole component).
fn check_wasm(bytes: &[u8]) -> Result<(), String> {
    shoal_runtime::check_component(Path::new(""), bytes).map_err(|e| e.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBIA: &str = "apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  module: hello.wasm\n  replicas: 3\n";

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-cli-apply-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let text = format!("# leading comment\n---\n{KUBIA}---\n---\n{}", KUBIA.replace("kubia", "api"));
        let documents = split_documents(&text).unwrap();
        assert_eq!(documents.len(), 2, "{documents:?}");
        assert!(documents[0].contains("name: kubia") && !documents[0].contains("name: api"), "{}", documents[0]);
        assert!(documents[1].contains("name: api"), "{}", documents[1]);
        let service = &parse_manifests(&documents[0], Path::new("/srv")).unwrap()[0];
        assert_eq!((service.name.as_str(), service.spec.replicas), ("kubia", 3));
        assert_eq!(service.spec.module, Path::new("/srv/hello.wasm"));
    }

    #[test]
    fn a_syntax_error_stops_splitting() {
        let text = format!("{KUBIA}---\nmetadata: {{name: [broken\n---\n{KUBIA}");
        let error = split_documents(&text).unwrap_err().to_string();
        assert!(!error.is_empty());
        assert!(split_documents("key: [unclosed\n").is_err());
        assert!(split_documents("").unwrap().is_empty());
    }

    #[test]
    fn plan_names_the_file_and_document() {
        let dir = scratch("plan");
        std::fs::write(dir.join("hello.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
        let two = format!("{KUBIA}---\n{}", KUBIA.replace("kubia", "api").replace("replicas: 3", "replicas: x"));
        let error = plan_text("two.yaml", &two, &dir).unwrap_err().to_string();
        assert!(error.starts_with("two.yaml: document 2: spec.replicas:"), "{error}");

        let planned = plan_text("one.yaml", KUBIA, &dir).unwrap();
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].file, "one.yaml");

        let missing = KUBIA.replace("hello.wasm", "../target/wasm32-wasip2/release/nope.wasm");
        let error = plan_text("svc.yaml", &missing, &dir).unwrap_err().to_string();
        assert!(
            error.starts_with("svc.yaml: spec.module: ../target/wasm32-wasip2/release/nope.wasm: no such file"),
            "{error}"
        );
        assert!(error.contains("build it with: cargo build --release --target wasm32-wasip2"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plan_checks_all_files_together() {
        let dir = scratch("set");
        std::fs::write(dir.join("hello.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
        std::fs::write(dir.join("b.yaml"), KUBIA).unwrap();
        let api = KUBIA.replace("kubia", "api") + "  routes: [{path: /api}]\n";
        std::fs::write(dir.join("a.yml"), api).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let files = manifest_files(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(files, [dir.join("a.yml"), dir.join("b.yaml")]);
        assert_eq!(plan(&files).unwrap().len(), 2);
        std::fs::write(dir.join("c.yaml"), KUBIA.replace("replicas: 3", "replicas: 1")).unwrap();
        let files = manifest_files(std::slice::from_ref(&dir)).unwrap();
        let error = plan(&files).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}: metadata.name: duplicate service name", dir.join("c.yaml").display())),
            "{error}"
        );
        let empty = dir.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let error = manifest_files(&[empty]).unwrap_err().to_string();
        assert!(error.ends_with("no *.yaml or *.yml files in this directory"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wasm_magic() {
        assert!(check_wasm(b"\0asm\x0d\0\x01\0").is_ok());
        assert_eq!(check_wasm(b"hello"), Err("not a WebAssembly file".to_owned()));
        assert!(check_wasm(b"\0asm\x01\0\0\0").unwrap_err().contains("core WebAssembly module"));
    }
}
