//! `shoal delete service NAME`, `shoal delete module DIGEST`, `shoal gc`
//! and `shoal scale service NAME --replicas N`.

use anyhow::bail;
use serde::Deserialize;
use serde_json::Value;
use shoal_api::objects::ModuleInfo;

use super::client::{Client, or_not_found};
use super::connect::encode;
use super::table::human_size;
use super::{DeleteArgs, DeleteKind, GcArgs, ScaleArgs, print};

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    if args.kind == DeleteKind::Module {
        return delete_module(&client, &args.name).await;
    }
    let name = &args.name;
    client
        .delete::<Value>(&format!("/v1/services/{}", encode(name)))
        .await
        .map_err(|e| or_not_found(e, || format!("service {name:?} not found")))?;
    print(&format!("service {name:?} deleted\n"))?;
    Ok(())
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    let body = serde_json::json!({ "replicas": args.replicas });
    client
        .put::<_, Value>(&format!("/v1/services/{}/scale", encode(name)), &body)
        .await
        .map_err(|e| or_not_found(e, || format!("service {name:?} not found")))?;
    print(&format!("service/{name} scaled\n"))?;
    Ok(())
}

/// Deletes the one module whose digest starts with `name` (`sha256:`
/// optional); the server refuses one in use, naming who uses it.
async fn delete_module(client: &Client, name: &str) -> anyhow::Result<()> {
    let prefix = name.strip_prefix("sha256:").unwrap_or(name);
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{name:?} is not a module digest (expected sha256: and hex characters, as shoal get modules shows)");
    }
    let prefix = prefix.to_ascii_lowercase();
    let modules: Vec<ModuleInfo> = client.get("/v1/modules").await?;
    let matching: Vec<&ModuleInfo> = modules.iter().filter(|m| m.digest.starts_with(&prefix)).collect();
    let module = match matching.as_slice() {
        [] => bail!("module {name:?} not found"),
        [one] => one,
        several => bail!(
            "{name:?} names {} modules ({}); give more of the digest",
            several.len(),
            several.iter().map(|m| format!("sha256:{}", &m.digest[..16])).collect::<Vec<_>>().join(", ")
        ),
    };
    client.delete::<Value>(&format!("/v1/modules/sha256:{}", module.digest)).await?;
    print(&format!("module sha256:{} deleted ({} freed)\n", module.digest, human_size(module.size)))?;
    Ok(())
}

/// What `POST /v1/modules/gc` answers.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Collected {
    deleted: Vec<ModuleInfo>,
    freed_bytes: u64,
}

pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let collected: Collected = client.post("/v1/modules/gc").await?;
    if collected.deleted.is_empty() {
        return print("No unused modules.\n").map_err(Into::into);
    }
    let mut text = String::new();
    for module in &collected.deleted {
        text.push_str(&format!("module sha256:{} deleted ({})\n", module.digest, human_size(module.size)));
    }
    text.push_str(&format!(
        "{} module(s) deleted, {} freed\n",
        collected.deleted.len(),
        human_size(collected.freed_bytes)
    ));
    print(&text)?;
    Ok(())
}
