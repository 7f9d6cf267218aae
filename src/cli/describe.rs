//! `shoal describe service NAME`: the service in detail, its replicas and
//! its events, like `kubectl describe`.

use std::fmt::Write as _;

use shoal_api::objects::{CallUsage, Event, NodeView, ReplicaInfo, ScaleStatus, now_unix};
use shoal_api::{Autoscale, format_bytes};

use super::client::{Client, or_not_found};
use super::connect::encode;
use super::table::{NONE, age, cpu, duration};
use super::{DescribeArgs, DescribeKind, ServiceView, print, rows};

/// Width of the field names (values start after it).
const KEY_WIDTH: usize = 15;

/// Width of the field names under `Resources:`.
const SUB_KEY_WIDTH: usize = 20;

/// Width of the field names under `Autoscale:`.
const AUTOSCALE_KEY_WIDTH: usize = 24;

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let name = &args.name;
    if args.kind == DescribeKind::Node {
        let node: NodeView = client
            .get(&format!("/v1/nodes/{}", encode(name)))
            .await
            .map_err(|e| or_not_found(e, || format!("node {name:?} not found")))?;
        let replicas: Vec<ReplicaInfo> = client.get("/v1/replicas").await?;
        print(&render_node(&node, &replicas, now_unix()))?;
        return Ok(());
    }
    let view: ServiceView = client
        .get(&format!("/v1/services/{}", encode(name)))
        .await
        .map_err(|e| or_not_found(e, || format!("service {name:?} not found")))?;
    let replicas: Vec<ReplicaInfo> = client.get(&format!("/v1/replicas?service={}", encode(name))).await?;
    let events_of = |object: String| format!("/v1/events?object={}", encode(&object));
    let mut events: Vec<Event> = client.get(&events_of(format!("service/{name}"))).await?;
    let replica_events: Vec<Event> = client.get(&events_of(format!("replica/{name}"))).await?;
    events.extend(replica_events);
    // Its module's preparation (reported when it takes a while).
    let module = format!("module/sha256:{}", view.record.module_digest);
    events.extend(client.get::<Vec<Event>>(&events_of(module.clone())).await.unwrap_or_default());
    let events = of_service(name, &module, events, view.record.created_unix);
    // An older `shoal up` has no calls to report.
    let calls: Vec<CallUsage> = client.get(&format!("/v1/calls?service={}", encode(name))).await.unwrap_or_default();
    print(&render(&view, &replicas, &calls, &events, now_unix()))?;
    Ok(())
}

/// `shoal describe node`: the node's record, its lease, how it starts
/// replicas (the node answering only knows its own), and the replicas it
/// runs.
pub fn render_node(node: &NodeView, replicas: &[ReplicaInfo], now: u64) -> String {
    let mut out = String::new();
    let mut field = |key: &str, value: String| {
        let _ = writeln!(out, "{:<KEY_WIDTH$}{value}", format!("{key}:"));
    };
    field("Name", node.name.clone());
    field(
        "Status",
        if node.ready { "Ready".into() } else { "NotReady (its lease expired; its replicas run elsewhere)".into() },
    );
    field("Roles", if node.leader { "leader".into() } else { NONE.into() });
    field("Address", node.address.clone());
    field("Gateway", node.gateway.clone());
    field("Admin API", node.admin.clone());
    field("Capacity", format_bytes(node.capacity));
    field("Reserved", format_bytes(node.reserved));
    field(
        "Lease",
        node.lease_granted_unix.map_or_else(|| NONE.to_owned(), |granted| format!("granted {} ago", age(now, granted))),
    );
    field("Registered", format!("{} ago", age(now, node.registered_unix)));
    if let Some(starts) = &node.starts {
        let _ = writeln!(out, "Starts:");
        let mut sub = |key: &str, value: String| {
            let _ = writeln!(out, "  {:<SUB_KEY_WIDTH$}{value}", format!("{key}:"));
        };
        sub(
            "Concurrency",
            format!("{} at once ({} under way, {} waiting)", starts.concurrency, starts.in_progress, starts.waiting),
        );
        sub(
            "Standby workers",
            format!("{} (aiming at {}, at most {})", starts.standby, starts.standby_target, starts.standby_max),
        );
        sub("Started", format!("{} replicas, {} from a standby", starts.started, starts.from_standby));
    }
    let here: Vec<ReplicaInfo> = replicas.iter().filter(|r| r.node == node.name).cloned().collect();
    let _ = writeln!(out, "Replicas:      {}", here.len());
    if !here.is_empty() {
        for line in rows::replicas(&here, false, now).render().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The events of service `name`, of its replicas and of its `module`
/// object since it was created (`created_unix`; not those of an earlier
/// service of the same name), oldest first, once each. (`replica/kubia-…`
/// filters also match service `kubia-v2`'s replicas; those are left out
/// here.)
pub fn of_service(name: &str, module: &str, mut events: Vec<Event>, created_unix: u64) -> Vec<Event> {
    let service = format!("service/{name}");
    events.retain(|event| {
        event.time_unix >= created_unix
            && (event.object == service
                || event.object == module
                || event.object.strip_prefix("replica/").and_then(service_of) == Some(name))
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
pub fn render(view: &ServiceView, replicas: &[ReplicaInfo], calls: &[CallUsage], events: &[Event], now: u64) -> String {
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
    let allowed = if spec.allow_outbound.is_empty() {
        vec!["<none> (every call denied)".to_owned()]
    } else {
        spec.allow_outbound.clone()
    };
    field(&mut out, "Outbound:", &allowed);
    let instances = match (status.instances, spec.instances.max_requests) {
        (Some(policy), _) => policy.to_string(),
        (None, Some(_)) => spec.instances.policy(false).to_string(),
        (None, None) => "decided once the module is prepared".to_owned(),
    };
    field(&mut out, "Instances:", &[instances]);
    // As kubectl describe shows a pod's probes.
    for (key, probe) in [("Readiness:", &spec.readiness), ("Liveness:", &spec.liveness)] {
        if let Some(p) = probe {
            let text = format!(
                "http-get {} delay={}s timeout={}s period={}s #failure={}",
                p.path, p.initial_delay_seconds, p.timeout_seconds, p.period_seconds, p.failure_threshold
            );
            field(&mut out, key, &[text]);
        }
    }
    if let Some(settings) = &spec.autoscale {
        autoscale(&mut out, settings, status.scale.as_ref(), now);
    }
    field(&mut out, "Rollout:", &[rows::rollout(status.rollout, status.message.as_deref())]);
    section(&mut out, "Replicas:", &rows::service_replicas(replicas, now).render_indented("  "), replicas.is_empty());
    if !calls.is_empty() {
        section(&mut out, "Calls:", &rows::calls(calls).render_indented("  "), false);
    }
    section(&mut out, "Events:", &rows::events(events, now).render_indented("  "), events.is_empty());
    out
}

/// The `Autoscale:` block (the settings, every default filled in) and the
/// `Last decision:` of the autoscaler.
fn autoscale(out: &mut String, settings: &Autoscale, scale: Option<&ScaleStatus>, now: u64) {
    let percent = |value: u32| format!("{value}%");
    out.push_str("Autoscale:\n");
    for (key, value) in [
        ("  Min:", settings.min.to_string()),
        ("  Max:", settings.max.to_string()),
        ("  Metric:", settings.metric.to_string()),
        ("  Target:", format!("{} per replica", settings.target)),
        ("  Target utilization:", percent(settings.target_utilization)),
        ("  Stable window:", duration(settings.stable_window)),
        ("  Panic window:", duration(settings.panic_window)),
        ("  Panic threshold:", percent(settings.panic_threshold)),
        ("  Tolerance:", percent(settings.tolerance)),
        ("  Max scale up rate:", settings.max_scale_up_rate.to_string()),
        ("  Max scale down rate:", settings.max_scale_down_rate.to_string()),
        ("  Scale to zero grace:", duration(settings.scale_to_zero_grace_period)),
    ] {
        field_in(out, key, &[value], AUTOSCALE_KEY_WIDTH);
    }
    let decision = scale.map(|scale| {
        let mut count = match scale.desired {
            1 => "1 replica".to_owned(),
            n => format!("{n} replicas"),
        };
        if scale.changed_unix != 0 {
            let _ = write!(count, ", changed {} ago", age(now, scale.changed_unix));
        }
        if scale.panic {
            count.push_str(", in panic mode");
        }
        let mut lines = vec![count];
        lines.extend(Some(scale.reason.trim()).filter(|r| !r.is_empty()).map(str::to_owned));
        lines
    });
    field(out, "Last decision:", &decision.unwrap_or_default());
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
    use crate::cli::rows::tests::{NOW, autoscaled, replica, view};

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
        let mut events = events;
        events.push(event(5, "module/sha256:ab", "Prepared"));
        events.push(event(6, "module/sha256:cd", "Prepared"));
        let kept: Vec<u64> = of_service("kubia", "module/sha256:ab", events, NOW - 300).iter().map(|e| e.seq).collect();
        assert_eq!(kept, [1, 3, 5]);
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
        view.record.service.spec.allow_outbound = vec!["http://db".into(), "https://*.example.org".into()];
        let events = [event(1, "service/kubia", "Applied"), event(2, "replica/kubia-3382d9-b7k2m", "BackOff")];
        let calls = [CallUsage {
            caller: "kubia".into(),
            target: "db".into(),
            internal: true,
            responses: [0, 120, 0, 3, 1],
            failed: 2,
            denied: 5,
            p50_ms: Some(1.25),
            p99_ms: Some(9.5),
        }];
        let text = render(&view, &replicas, &calls, &events, NOW);
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
             Outbound:      http://db\n\
             \x20              https://*.example.org\n\
             Instances:     a fresh instance per request (default; spec.instances.maxRequests above 1 reuses instances)\n\
             Rollout:       Progressing: 2 of 3 updated replicas are available\n\
             Replicas:\n\
             \x20 NAME                 READY   STATUS     RESTARTS   AGE   REVISION   MESSAGE\n\
             \x20 kubia-3382d9-b7k2m   0/1     Starting   0          42s   3382d9     waiting for ready\n\
             \x20 kubia-3382d9-c2d4f   1/1     Running    0          42s   3382d9\n\
             \x20 kubia-3382d9-x58q4   1/1     Running    0          42s   3382d9\n\
             Calls:\n\
             \x20 CALLER   TARGET   2XX   3XX   4XX   5XX   FAILED   DENIED   P50     P99\n\
             \x20 kubia    db       120   0     3     1     2        5        1.2ms   9.5ms\n\
             Events:\n\
             \x20 TYPE      REASON    AGE   MESSAGE\n\
             \x20 Normal    Applied   60s   Applied message\n\
             \x20 Warning   BackOff   60s   BackOff message\n"
        );
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn describes_the_autoscaler_of_an_autoscaled_service() {
        let view = autoscaled("kubia", 3, 3, true);
        let text = render(&view, &[], &[], &[], NOW);
        let expected = "\nTimeout:       10s\n\
             Outbound:      <none> (every call denied)\n\
             Instances:     a fresh instance per request (default; spec.instances.maxRequests above 1 reuses instances)\n\
             Autoscale:\n\
             \x20 Min:                  1\n\
             \x20 Max:                  10\n\
             \x20 Metric:               concurrency\n\
             \x20 Target:               10 per replica\n\
             \x20 Target utilization:   70%\n\
             \x20 Stable window:        1m\n\
             \x20 Panic window:         6s\n\
             \x20 Panic threshold:      200%\n\
             \x20 Tolerance:            10%\n\
             \x20 Max scale up rate:    1000\n\
             \x20 Max scale down rate:  2\n\
             \x20 Scale to zero grace:  30s\n\
             Last decision: 3 replicas, changed 90s ago\n\
             \x20              4.2 in flight over 1m, target 10 × 70% per replica\n\
             Rollout:       Complete\n";
        assert!(text.contains(expected), "\n{text}");

        let mut view = autoscaled("kubia", 1, 1, false);
        view.status.scale.as_mut().unwrap().panic = true;
        let text = render(&view, &[], &[], &[], NOW);
        assert!(text.contains("\nLast decision: 1 replica, in panic mode\n  "), "\n{text}");
        view.status.scale = None;
        let text = render(&view, &[], &[], &[], NOW);
        assert!(text.contains("\n  Scale to zero grace:  30s\nLast decision: <none>\nRollout:"), "\n{text}");
    }

    #[test]
    fn empty_parts_say_none() {
        let mut view = view("kubia", 0, 0);
        view.record.service.labels.clear();
        view.record.service.spec.resources.cpu_millis = None;
        let text = render(&view, &[], &[], &[], NOW);
        assert!(text.contains("\nLabels:        <none>\n"), "{text}");
        assert!(text.contains("\nEnvironment:   <none>\n"), "{text}");
        assert!(text.contains("\n  CPU:              unlimited\n"), "{text}");
        assert!(text.contains("\nReplicas:      0 desired | 0 updated | 0 total | 0 available\n"), "{text}");
        assert!(text.ends_with("\nReplicas:      <none>\nEvents:        <none>\n"), "{text}");
        assert!(!text.contains("Autoscale:") && !text.contains("Last decision:"), "{text}");
    }
}
