//! `shoal logs NAME [-f] [--tail N]`: the output of a service's replicas
//! (or of one replica), streamed to stdout as it arrives.

use super::LogsArgs;
use super::client::{Client, or_not_found};
use super::connect::encode;

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let path = path(&args.name, args.tail, args.follow);
    let result = client
        .stream(&path, |chunk| {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(chunk)?;
            stdout.flush()
        })
        .await;
    result.map_err(|e| or_not_found(e, || format!("no service or replica named {:?}", args.name)))
}

/// `/v1/logs/{name}` with `tail` and `follow` when they are asked for.
pub fn path(name: &str, tail: Option<u64>, follow: bool) -> String {
    let mut query = Vec::new();
    if let Some(tail) = tail {
        query.push(format!("tail={tail}"));
    }
    if follow {
        query.push("follow=true".to_owned());
    }
    let mut path = format!("/v1/logs/{}", encode(name));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths() {
        assert_eq!(super::path("kubia", None, false), "/v1/logs/kubia");
        assert_eq!(super::path("kubia", Some(20), true), "/v1/logs/kubia?tail=20&follow=true");
        assert_eq!(super::path("kubia-3382d9-x58q4", None, true), "/v1/logs/kubia-3382d9-x58q4?follow=true");
        assert_eq!(super::path("kubia", Some(0), false), "/v1/logs/kubia?tail=0");
    }
}
