//! `shoal get services|replicas|modules|nodes|certs [NAME]`: tables, `-o wide|json|yaml`
//! and `--watch`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal_api::CertificateView;
use shoal_api::objects::{ModuleInfo, NodeView, ReplicaInfo, now_unix};

use super::client::{Client, is_not_found, or_not_found};
use super::connect::encode;
use super::table::{NO_RESOURCES, Table, format_row, widen};
use super::{GetArgs, Output, Resource, ServiceView, print, rows};

/// How often `--watch` polls.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What to list, as the flags say.
struct Query {
    resource: Resource,
    name: Option<String>,
    service: Option<String>,
    selector: Option<Selector>,
}

/// A label selector (`-l`): terms that must all hold of a service's
/// `metadata.labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector(Vec<Term>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(text: &str) -> anyhow::Result<Selector> {
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim) {
            let key = |k: &str| -> anyhow::Result<String> {
                let k = k.trim();
                let valid = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                if !valid {
                    bail!("-l {text:?}: {k:?} is not a label key (letters, digits, \"-\", \"_\", \".\", \"/\")");
                }
                Ok(k.to_owned())
            };
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::NotEquals(key(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                Term::Equals(key(k)?, v.trim().to_owned())
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(key(k)?)
            } else if raw.is_empty() {
                bail!("-l {text:?}: an empty term (write key=value, key!=value, key or !key, comma-separated)");
            } else {
                Term::Exists(key(raw)?)
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    /// Whether `labels` (a JSON object of strings, or null) match.
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|term| match term {
            Term::Equals(k, v) => get(k) == Some(v.as_str()),
            Term::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        })
    }
}

impl Query {
    /// The objects, as the API returns them. With `strict`, a NAME that
    /// matches nothing is an error; otherwise (later polls of a watch) the
    /// list is just empty.
    async fn fetch(&self, client: &Client, strict: bool) -> anyhow::Result<Vec<Value>> {
        let name = self.name.as_deref();
        let items = match self.resource {
            Resource::Services => {
                let mut items: Vec<Value> = match name {
                    Some(name) => match client.get::<Value>(&format!("/v1/services/{}", encode(name))).await {
                        Ok(view) => vec![view],
                        Err(e) if is_not_found(&e) && !strict => Vec::new(),
                        Err(e) => return Err(or_not_found(e, || format!("service {name:?} not found"))),
                    },
                    None => client.get("/v1/services").await?,
                };
                if let Some(selector) = &self.selector {
                    items.retain(|item| selector.matches(&item["record"]["service"]["labels"]));
                }
                items
            }
            Resource::Replicas => {
                let path = match &self.service {
                    Some(service) => format!("/v1/replicas?service={}", encode(service)),
                    None => "/v1/replicas".to_owned(),
                };
                let mut items: Vec<Value> = client.get(&path).await?;
                if let Some(name) = name {
                    // A replica by its name, or else a service's replicas
                    // by the service's name.
                    if items.iter().any(|item| item["name"] == name) {
                        items.retain(|item| item["name"] == name);
                    } else {
                        items.retain(|item| item["service"] == name);
                    }
                    if items.is_empty() && strict {
                        bail!(
                            "no replica and no service with replicas is named {name:?} (shoal get replicas lists them)"
                        );
                    }
                }
                if let Some(selector) = &self.selector {
                    let services: Vec<Value> = client.get("/v1/services").await?;
                    let selected: Vec<&str> = services
                        .iter()
                        .filter(|s| selector.matches(&s["record"]["service"]["labels"]))
                        .filter_map(|s| s["record"]["service"]["name"].as_str())
                        .collect();
                    items.retain(|item| item["service"].as_str().is_some_and(|s| selected.contains(&s)));
                }
                items
            }
            Resource::Nodes => {
                let mut items: Vec<Value> = client.get("/v1/nodes").await?;
                if let Some(name) = name {
                    items.retain(|item| item["name"] == name);
                    if items.is_empty() && strict {
                        bail!("node {name:?} not found");
                    }
                }
                items
            }
            Resource::Certificates => {
                let mut items: Vec<Value> = client.get("/v1/certificates").await?;
                if let Some(name) = name {
                    let name = name.to_ascii_lowercase();
                    items.retain(|item| item["host"].as_str() == Some(name.as_str()));
                    if items.is_empty() && strict {
                        bail!("certificate for host {name:?} not found (shoal get certs lists them)");
                    }
                }
                items
            }
            Resource::Modules => {
                let mut items: Vec<Value> = client.get("/v1/modules").await?;
                if let Some(name) = name {
                    let prefix = name.strip_prefix("sha256:").unwrap_or(name);
                    items.retain(|item| item["digest"].as_str().is_some_and(|d| d.starts_with(prefix)));
                    if items.is_empty() && strict {
                        bail!("module {name:?} not found");
                    }
                }
                items
            }
        };
        Ok(items)
    }

    /// Whether one object was asked for (JSON and YAML then print it, not a list).
    fn single(&self, items: &[Value]) -> bool {
        self.name.is_some() && items.len() == 1
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    if args.service.is_some() && args.resource != Resource::Replicas {
        bail!("--service only filters replicas (shoal get replicas --service NAME)");
    }
    if args.selector.is_some() && !matches!(args.resource, Resource::Services | Resource::Replicas) {
        bail!("-l selects services and replicas by their service's metadata.labels (shoal get services -l app=web)");
    }
    let selector = args.selector.as_deref().map(Selector::parse).transpose()?;
    let client = Client::new(&args.connect)?;
    let query = Query { resource: args.resource, name: args.name, service: args.service, selector };
    let items = query.fetch(&client, true).await?;
    match args.output {
        Some(format @ (Output::Json | Output::Yaml)) => {
            let yaml = format == Output::Yaml;
            print(&render_objects(query.resource, &items, query.single(&items), yaml)?)?;
            if args.watch {
                watch_objects(&client, &query, items, yaml).await?;
            }
        }
        output => {
            let wide = output == Some(Output::Wide);
            let table = table(query.resource, &items, wide, now_unix())?;
            if table.is_empty() {
                eprintln!("{NO_RESOURCES}");
            } else {
                print(&table.render())?;
            }
            if args.watch {
                watch_table(&client, &query, (&items, table), wide).await?;
            }
        }
    }
    Ok(())
}

/// The table of `items` (objects of `resource` as the API returns them).
pub fn table(resource: Resource, items: &[Value], wide: bool, now: u64) -> anyhow::Result<Table> {
    Ok(match resource {
        Resource::Services => rows::services(&typed::<ServiceView>(items)?, wide, now),
        Resource::Replicas => rows::replicas(&typed::<ReplicaInfo>(items)?, wide, now),
        Resource::Modules => rows::modules(&typed::<ModuleInfo>(items)?, wide, now),
        Resource::Nodes => rows::nodes(&typed::<NodeView>(items)?, wide, now),
        Resource::Certificates => rows::certificates(&typed::<CertificateView>(items)?, wide, now),
    })
}

fn typed<T: DeserializeOwned>(items: &[Value]) -> anyhow::Result<Vec<T>> {
    items
        .iter()
        .map(|item| {
            serde_json::from_value(item.clone()).map_err(|e| {
                anyhow!(
                    "unexpected answer from the Shoal admin API: {e} (is it the same version of Shoal as this CLI?)"
                )
            })
        })
        .collect()
}

/// The objects as pretty JSON or YAML (a list, or the one object when
/// `single`), through their types so fields keep the API's order.
fn render_objects(resource: Resource, items: &[Value], single: bool, yaml: bool) -> anyhow::Result<String> {
    fn render<T: DeserializeOwned + Serialize>(items: &[Value], single: bool, yaml: bool) -> anyhow::Result<String> {
        let objects = typed::<T>(items)?;
        match (single, yaml) {
            (true, true) => Ok(serde_yaml_ng::to_string(&objects[0])?),
            (true, false) => Ok(serde_json::to_string_pretty(&objects[0])? + "\n"),
            (false, true) => Ok(serde_yaml_ng::to_string(&objects)?),
            (false, false) => Ok(serde_json::to_string_pretty(&objects)? + "\n"),
        }
    }
    match resource {
        Resource::Services => render::<ServiceView>(items, single, yaml),
        Resource::Replicas => render::<ReplicaInfo>(items, single, yaml),
        Resource::Modules => render::<ModuleInfo>(items, single, yaml),
        Resource::Nodes => render::<NodeView>(items, single, yaml),
        Resource::Certificates => render::<CertificateView>(items, single, yaml),
    }
}

/// The key of an object: its name, or a module's digest.
fn key(item: &Value) -> String {
    let key = item
        .pointer("/record/service/name")
        .or_else(|| item.get("name"))
        .or_else(|| item.get("digest"))
        .or_else(|| item.get("host"));
    key.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Watches with a table: every second, prints the rows that changed
/// (ignoring ages) and rows that are new, with the widths of the first table.
async fn watch_table(client: &Client, query: &Query, first: (&[Value], Table), wide: bool) -> anyhow::Result<()> {
    let (items, first) = first;
    let mut widths = (!first.is_empty()).then(|| first.widths());
    let mut last = keyed_rows(table(query.resource, items, wide, AGELESS)?);
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let items = query.fetch(client, false).await?;
        let current = keyed_rows(table(query.resource, &items, wide, AGELESS)?);
        let printed = table(query.resource, &items, wide, now_unix())?;
        let changed = changed_rows(&last, &current, &printed);
        if !changed.is_empty() {
            let mut out = String::new();
            let widths = widths.get_or_insert_with(|| {
                let mut new = Table::new(printed.headers.clone());
                new.rows = changed.clone();
                let widths = new.widths();
                out.push_str(&new.header(&widths));
                out.push('\n');
                widths
            });
            for row in &changed {
                widen(widths, row);
                out.push_str(&format_row(row, widths));
                out.push('\n');
            }
            print(&out)?;
        }
        last = current;
    }
}

/// The time at which to build the tables a watch compares: every age is
/// then `0s` (the AGE column, and the age of the last change in AUTOSCALE),
/// so that rows compare without their ages.
const AGELESS: u64 = 0;

fn keyed_rows(table: Table) -> BTreeMap<String, Vec<String>> {
    table.rows.into_iter().map(|row| (row[0].clone(), row)).collect()
}

/// The rows of `table` (as printed) that are new, or whose rows in the
/// ageless tables `last` and `current` differ. (Rows that disappeared are
/// not printed.)
pub fn changed_rows(
    last: &BTreeMap<String, Vec<String>>,
    current: &BTreeMap<String, Vec<String>>,
    table: &Table,
) -> Vec<Vec<String>> {
    table.rows.iter().filter(|row| last.get(&row[0]) != current.get(&row[0])).cloned().collect()
}

/// Watches with JSON or YAML: prints each object that is new or changed.
async fn watch_objects(client: &Client, query: &Query, first: Vec<Value>, yaml: bool) -> anyhow::Result<()> {
    let keyed = |items: Vec<Value>| items.into_iter().map(|item| (key(&item), item)).collect::<BTreeMap<_, _>>();
    let mut last = keyed(first);
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let current = keyed(query.fetch(client, false).await?);
        let mut out = String::new();
        for (name, item) in &current {
            if last.get(name) != Some(item) {
                if yaml {
                    out.push_str("---\n");
                }
                out.push_str(&render_objects(query.resource, std::slice::from_ref(item), true, yaml)?);
            }
        }
        print(&out)?;
        last = current;
    }
}

#[cfg(test)]
mod tests {
    use shoal_api::objects::ReplicaState;

    use super::*;
    use crate::cli::rows::tests::{NOW, autoscaled, replica, view};

    #[test]
    fn tables_from_api_json() {
        let items = vec![serde_json::to_value(view("kubia", 3, 3)).unwrap()];
        let table = table(Resource::Services, &items, false, NOW).unwrap();
        assert_eq!(table.rows[0][..2], ["kubia".to_owned(), "3/3".to_owned()]);
        let error = super::table(Resource::Replicas, &items, false, NOW).unwrap_err().to_string();
        assert!(error.starts_with("unexpected answer from the Shoal admin API"), "{error}");
        assert!(super::table(Resource::Modules, &[], true, NOW).unwrap().is_empty());
    }

    #[test]
    fn keys() {
        assert_eq!(key(&serde_json::to_value(view("kubia", 3, 3)).unwrap()), "kubia");
        let r = replica("kubia-3382d9-x58q4", ReplicaState::Running, true);
        assert_eq!(key(&serde_json::to_value(r).unwrap()), "kubia-3382d9-x58q4");
        assert_eq!(key(&serde_json::json!({"digest": "abc", "size": 1, "createdUnix": 0})), "abc");
    }

    #[test]
    fn watch_prints_only_changed_rows_ignoring_age() {
        let replicas = |list: &[ReplicaInfo], now| rows::replicas(list, false, now);
        let ageless = |list: &[ReplicaInfo]| keyed_rows(replicas(list, AGELESS));
        let a = replica("kubia-3382d9-aaaaa", ReplicaState::Running, true);
        let b = replica("kubia-3382d9-bbbbb", ReplicaState::Starting, false);
        let last = ageless(&[a.clone(), b.clone()]);
        let later = [a.clone(), b.clone()];
        assert!(changed_rows(&last, &ageless(&later), &replicas(&later, NOW + 30)).is_empty(), "only ages changed");
        let ready = ReplicaInfo { state: ReplicaState::Running, ready: true, ..b };
        let c = replica("kubia-4493e0-ccccc", ReplicaState::Starting, false);
        let now = [ready, c];
        let changed = changed_rows(&last, &ageless(&now), &replicas(&now, NOW + 1));
        let names: Vec<&str> = changed.iter().map(|row| row[0].as_str()).collect();
        assert_eq!(names, ["kubia-3382d9-bbbbb", "kubia-4493e0-ccccc"], "a vanished; b changed; c is new");
        assert_eq!(changed[0][1..3], ["1/1".to_owned(), "Running".to_owned()]);
        assert_eq!(changed[0][4], "43s", "printed with their ages");
    }

    #[test]
    fn watch_ignores_the_age_of_the_last_scale_change() {
        let services = |list: &[ServiceView], now| rows::services(list, false, now);
        let ageless = |list: &[ServiceView]| keyed_rows(services(list, AGELESS));
        let view = autoscaled("kubia", 3, 3, true);
        let last = ageless(std::slice::from_ref(&view));
        let later = [view.clone()];
        assert!(changed_rows(&last, &ageless(&later), &services(&later, NOW + 5)).is_empty());
        let mut scaled = view;
        let scale = scaled.status.scale.as_mut().unwrap();
        (scale.desired, scale.changed_unix) = (4, NOW + 5);
        let later = [scaled];
        let changed = changed_rows(&last, &ageless(&later), &services(&later, NOW + 6));
        assert_eq!(changed.len(), 1);
        assert!(changed[0][7].starts_with("1-10, 4 1s ago: "), "{:?}", changed[0]);
    }

    #[test]
    fn json_and_yaml_keep_the_api_field_order() {
        let items = [serde_json::json!({"size": 3, "createdUnix": 5, "digest": "ab"})];
        let json = render_objects(Resource::Modules, &items, false, false).unwrap();
        assert_eq!(json, "[\n  {\n    \"digest\": \"ab\",\n    \"size\": 3,\n    \"createdUnix\": 5\n  }\n]\n");
        let yaml = render_objects(Resource::Modules, &items, false, true).unwrap();
        assert_eq!(yaml, "- digest: ab\n  size: 3\n  createdUnix: 5\n");
        let one = render_objects(Resource::Modules, &items, true, true).unwrap();
        assert_eq!(one, "digest: ab\nsize: 3\ncreatedUnix: 5\n");
        let view = serde_json::to_value(view("kubia", 3, 3)).unwrap();
        let json = render_objects(Resource::Services, &[view], true, false).unwrap();
        assert!(json.starts_with("{\n  \"record\": {\n    \"service\": {\n      \"name\": \"kubia\""), "{json}");
    }
}
