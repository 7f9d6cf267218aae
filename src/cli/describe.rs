//! `shoal describe service NAME`: the service in detail, its replicas and
//! its events, like `kubectl describe`.

use std::fmt::Write as _;

use shoal_api::format_bytes;
use shoal_api::objects::{Event, ReplicaInfo, now_unix};

use super::client::{Client, or_not_found};
use super::connect::encode;
use super::table::{NONE, age, cpu, duration};
use super::{DescribeArgs, ServiceView, print, rows};

/// Width of the field names (values start after it).
const KEY_WIDTH: usize = 15;

/// Width of the field names under `Resources:`.
const SUB_KEY_WIDTH: usize = 20;

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    let view: ServiceView = client
        .get(&format!("/v1/services/{}", encode(name)))
        .await
        .map_err(|e| or_not_found(e, || format!("service {name:?} not found")))?;
    let replicas: Vec<ReplicaInfo> = client.get(&format!("/v1/replicas?service={}", encode(name))).await?;
    let events_of = |object: String| format!("/v1/events?object={}", encode(&object));
    let mut events: Vec<Event> = client.get(&events_of(format!("service/{name}"))).await?;
    let replica_events: Vec<Event> = client.get(&events_of(format!("replica/{name}"))).await?;
    events.extend(replica_events);
    let events = of_service(name, events, view.record.created_unix);
    print(&render(&view, &replicas, &events, now_unix()))?;
    Ok(())
}

/// The events of service `name` and of its replicas since it was created
/// (`created_unix`; not those of an earlier service of the same name),
/// oldest first, once each. (`replica/kubia-…` filters also match service
/// `kubia-v2`'s replicas; those are left out here.)
pub fn of_service(name: &str, mut events: Vec<Event>, created_unix: u64) -> Vec<Event> {
    let service = format!("service/{name}");
    events.retain(|event| {
        event.time_unix >= created_unix
            && (event.object == service || event.object.strip_prefix("replica/").and_then(service_of) == Some(name))
    });
    events.sort_by_key(|event| event.seq);
    events.dedup_by_key(|event| event.seq);
    events
}

/// The service part of a replica name `<service>-<revision>-<suffix>`.
fn service_of(replica: &str) -> Option<&str> {
    let mut parts = replica.rsplitn(3, '-');
    let (_suffix, _revision, service) = (parts.next()?, parts.next()?, parts.next()?);
    Some(service)
}

/// The description, as printed.
pub fn render(view: &ServiceView, replicas: &[ReplicaInfo], events: &[Event], now: u64) -> String {
    let (record, status) = (&view.record, &view.status);
    let service = &record.service;
    let spec = &service.spec;
    let mut out = String::new();
    let pairs = |map: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        map.iter().map(|(key, value)| format!("{key}={value}")).collect()
    };
    field(&mut out, "Name:", std::slice::from_ref(&service.name));
    field(&mut out, "Labels:", &pairs(&service.labels));
    field(
        &mut out,
        "Module:",
        &[format!("sha256:{}", record.module_digest), format!("applied from {}", spec.module_field)],
    );
    field(&mut out, "Revision:", std::slice::from_ref(&status.revision));
    field(&mut out, "Generation:", &[format!("{} (observed: {})", record.generation, status.observed_generation)]);
    field(&mut out, "Created:", &[format!("{} ago", age(now, record.created_unix))]);
    field(
        &mut out,
        "Replicas:",
        &[format!(
            "{} desired | {} updated | {} total | {} available",
            status.desired,
            status.updated,
            replicas.len(),
            status.available
        )],
    );
    field(&mut out, "Routes:", &[rows::routes(view)]);
    field(&mut out, "Environment:", &pairs(&spec.env));
    out.push_str("Resources:\n");
    let resources = &spec.resources;
    field_in(&mut out, "  Memory:", &[format_bytes(resources.memory)], SUB_KEY_WIDTH);
    field_in(
        &mut out,
        "  CPU:",
        &[resources.cpu_millis.map_or_else(|| "unlimited".to_owned(), |m| cpu(Some(m)))],
        SUB_KEY_WIDTH,
    );
    field_in(&mut out, "  Instance memory:", &[format_bytes(resources.instance_memory)], SUB_KEY_WIDTH);
    field(&mut out, "Timeout:", &[duration(spec.timeout)]);
    field(&mut out, "Rollout:", &[rows::rollout(status.rollout, status.message.as_deref())]);
    section(&mut out, "Replicas:", &rows::service_replicas(replicas, now).render_indented("  "), replicas.is_empty());
    section(&mut out, "Events:", &rows::events(events, now).render_indented("  "), events.is_empty());
    out
}

/// `Key:           value`, further values on their own lines under the
/// first; `<none>` when there are none.
fn field(out: &mut String, key: &str, values: &[String]) {
    field_in(out, key, values, KEY_WIDTH);
}

/// [`field`] with keys padded to `width`.
fn field_in(out: &mut String, key: &str, values: &[String], width: usize) {
    let none = [NONE.to_owned()];
    let values = if values.is_empty() { &none[..] } else { values };
    for (index, value) in values.iter().enumerate() {
        let key = if index == 0 { key } else { "" };
        let _ = writeln!(out, "{key:<width$}{value}", width = width.max(key.len() + 1));
    }
}

/// A heading followed by a table, or `Heading:      <none>`.
fn section(out: &mut String, heading: &str, table: &str, empty: bool) {
    if empty {
        field(out, heading, &[]);
    } else {
        out.push_str(heading);
        out.push('\n');
        out.push_str(table);
    }
}

#[cfg(test)]
mod tests {
    use shoal_api::objects::{EventType, ReplicaState, RolloutPhase};

    use super::*;
    use crate::cli::rows::tests::{NOW, replica, view};

    fn event(seq: u64, object: &str, reason: &str) -> Event {
        Event {
            seq,
            time_unix: NOW - 60,
            kind: if reason == "BackOff" { EventType::Warning } else { EventType::Normal },
            object: object.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn keeps_the_events_of_the_service_and_its_replicas() {
        let mut earlier = event(0, "service/kubia", "Deleted");
        earlier.time_unix = NOW - 3600;
        let events = vec![
            earlier,
            event(3, "replica/kubia-3382d9-x58q4", "Started"),
            event(1, "service/kubia", "Applied"),
            event(2, "service/kubia-v2", "Applied"),
            event(4, "replica/kubia-v2-4493e0-aaaaa", "Started"),
            event(3, "replica/kubia-3382d9-x58q4", "Started"),
        ];
        let kept: Vec<u64> = of_service("kubia", events, NOW - 300).iter().map(|e| e.seq).collect();
        assert_eq!(kept, [1, 3]);
    }

    #[test]
    fn describes_a_service() {
        let mut view = view("kubia", 2, 3);
        view.record.service.spec.env.insert("GREETING".into(), "hi".into());
        view.record.service.spec.env.insert("MODE".into(), "fast".into());
        view.status.updated = 3;
        view.status.rollout = RolloutPhase::Progressing;
        view.status.message = Some("2 of 3 updated replicas are available".into());
        let mut starting = replica("kubia-3382d9-b7k2m", ReplicaState::Starting, false);
        starting.message = Some("waiting for ready".into());
        let replicas = [
            replica("kubia-3382d9-x58q4", ReplicaState::Running, true),
            replica("kubia-3382d9-c2d4f", ReplicaState::Running, true),
            starting,
        ];
        let events = [event(1, "service/kubia", "Applied"), event(2, "replica/kubia-3382d9-b7k2m", "BackOff")];
        let text = render(&view, &replicas, &events, NOW);
        let digest = &view.record.module_digest;
        let expected = format!(
            "Name:          kubia\n\
             Labels:        app=kubia\n\
             Module:        sha256:{digest}\n\
             \x20              applied from ../target/wasm32-wasip2/release/hello.wasm\n\
             Revision:      3382d9\n\
             Generation:    1 (observed: 1)\n\
             Created:       5m ago\n\
             Replicas:      3 desired | 3 updated | 3 total | 2 available\n\
             Routes:        /\n\
             Environment:   GREETING=hi\n\
             \x20              MODE=fast\n\
             Resources:\n\
             \x20 Memory:           64Mi\n\
             \x20 CPU:              500m\n\
             \x20 Instance memory:  16Mi\n\
             Timeout:       10s\n\
             Rollout:       Progressing: 2 of 3 updated replicas are available\n\
             Replicas:\n\
             \x20 NAME                 READY   STATUS     RESTARTS   AGE   REVISION   MESSAGE\n\
             \x20 kubia-3382d9-b7k2m   0/1     Starting   0          42s   3382d9     waiting for ready\n\
             \x20 kubia-3382d9-c2d4f   1/1     Running    0          42s   3382d9\n\
             \x20 kubia-3382d9-x58q4   1/1     Running    0          42s   3382d9\n\
             Events:\n\
             \x20 TYPE      REASON    AGE   MESSAGE\n\
             \x20 Normal    Applied   60s   Applied message\n\
             \x20 Warning   BackOff   60s   BackOff message\n"
        );
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn empty_parts_say_none() {
        let mut view = view("kubia", 0, 0);
        view.record.service.labels.clear();
        view.record.service.spec.resources.cpu_millis = None;
        let text = render(&view, &[], &[], NOW);
        assert!(text.contains("\nLabels:        <none>\n"), "{text}");
        assert!(text.contains("\nEnvironment:   <none>\n"), "{text}");
        assert!(text.contains("\n  CPU:              unlimited\n"), "{text}");
        assert!(text.contains("\nReplicas:      0 desired | 0 updated | 0 total | 0 available\n"), "{text}");
        assert!(text.ends_with("\nReplicas:      <none>\nEvents:        <none>\n"), "{text}");
    }
}
