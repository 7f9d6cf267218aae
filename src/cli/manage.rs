//! `shoal delete service NAME` and `shoal scale service NAME --replicas N`.

use serde_json::Value;

use super::client::{Client, or_not_found};
use super::connect::encode;
use super::{DeleteArgs, ScaleArgs, print};

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
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
