//! `shoal top [SERVICE]`: each running replica's requests in flight,
//! requests per second, p99 latency, CPU and memory, like `kubectl top
//! pods`; `-o json` and `--watch`.

use std::time::Duration;

use shoal_api::objects::{CallUsage, ReplicaUsage};

use super::client::{Client, is_not_found, or_not_found};
use super::connect::encode;
use super::table::{Table, format_row};
use super::{TopArgs, TopOutput, print, rows};

/// How often `--watch` prints the figures again.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let service = args.service.as_deref();
    // The widths of the tables printed so far: a watch keeps columns in place.
    let mut widths: Option<Vec<usize>> = None;
    let mut strict = true;
    loop {
        let usage = fetch(&client, service, strict).await?;
        match args.output {
            Some(TopOutput::Json) => print(&(serde_json::to_string_pretty(&usage)? + "\n"))?,
            None => {
                let mut text = String::new();
                if usage.is_empty() {
                    eprintln!("{}", rows::no_replicas(service));
                } else {
                    let separator = if widths.is_some() { "\n" } else { "" };
                    text = format!("{separator}{}", render(&rows::top(&usage), &mut widths));
                }
                // Calls between services (and out), when there were any.
                let path = match service {
                    Some(name) => format!("/v1/calls?service={}", encode(name)),
                    None => "/v1/calls".to_owned(),
                };
                let calls: Vec<CallUsage> = client.get(&path).await.unwrap_or_default();
                if !calls.is_empty() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&rows::calls(&calls).render());
                }
                print(&text)?;
            }
        }
        if !args.watch {
            return Ok(());
        }
        strict = false;
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// `GET /v1/top`, of one service's replicas when it is named. With
/// `strict`, a service that does not exist is an error; otherwise (later
/// polls of a watch, after it was deleted) it just has no replicas.
async fn fetch(client: &Client, service: Option<&str>, strict: bool) -> anyhow::Result<Vec<ReplicaUsage>> {
    let Some(name) = service else {
        return client.get("/v1/top").await;
    };
    match client.get(&format!("/v1/top?service={}", encode(name))).await {
        Ok(usage) => Ok(usage),
        Err(e) if is_not_found(&e) && !strict => Ok(Vec::new()),
        Err(e) => Err(or_not_found(e, || format!("service {name:?} not found"))),
    }
}

/// The table, its columns at least as wide as those printed before (which
/// `widths` remembers).
fn render(table: &Table, widths: &mut Option<Vec<usize>>) -> String {
    let mut current = table.widths();
    if let Some(before) = widths.as_ref() {
        current.iter_mut().zip(before).for_each(|(width, before)| *width = (*width).max(*before));
    }
    let mut out = table.header(&current) + "\n";
    for row in &table.rows {
        out.push_str(&format_row(row, &current));
        out.push('\n');
    }
    *widths = Some(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(name: &str, rps: f64) -> ReplicaUsage {
        ReplicaUsage {
            name: name.into(),
            service: "kubia".into(),
            in_flight: 0,
            rps,
            p99_ms: None,
            cpu_millis: None,
            memory_bytes: None,
        }
    }

    #[test]
    fn columns_only_grow_from_one_print_to_the_next() {
        let mut widths = None;
        let wide = rows::top(&[usage("kubia-3382d9-x58q4", 1234.5)]);
        assert_eq!(render(&wide, &mut widths), wide.render());
        let narrow = rows::top(&[usage("kubia-3382d9-x58q4", 1.0)]);
        assert_eq!(
            render(&narrow, &mut widths),
            "NAME                 SERVICE   IN-FLIGHT   RPS      P99   CPU   MEMORY\n\
             kubia-3382d9-x58q4   kubia     0           1.0      -     -     -\n"
        );
        assert_eq!(widths.as_deref(), Some(&[18, 7, 9, 6, 3, 3, 6][..]));
    }
}
