//! `shoal delete service NAME` and `shoal scale service NAME --replicas N`.

use anyhow::bail;
use serde_json::Value;

use super::client::{Client, encode, is_not_found};
use super::{DeleteArgs, ScaleArgs, print};

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    match client.delete::<Value>(&format!("/v1/services/{}", encode(name))).await {
        Err(e) if is_not_found(&e) => bail!("service {name:?} not found"),
        result => result?,
    };
    print(&format!("service {name:?} deleted\n"))?;
    Ok(())
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    let body = serde_json::json!({ "replicas": args.replicas });
    match client.put::<_, Value>(&format!("/v1/services/{}/scale", encode(name)), &body).await {
        Err(e) if is_not_found(&e) => bail!("service {name:?} not found"),
        result => result?,
    };
    print(&format!("service/{name} scaled\n"))?;
    Ok(())
}
