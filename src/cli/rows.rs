//! The tables of `get` and `describe`: one row per service, replica,
//! module or event. Pure functions of the objects and the current time.

use shoal_api::objects::{Event, ModuleInfo, NodeView, ReplicaInfo, ReplicaUsage, RolloutPhase};
use shoal_api::{Route, format_bytes};

use super::ServiceView;
use super::table::{NONE, Table, age, cpu, duration, human_size, latency, mebibytes, memory, millicores, short_digest};

/// `NAME READY UP-TO-DATE AVAILABLE DESIRED REVISION AGE`; wide adds
/// `ROUTES MODULE MEMORY CPU TIMEOUT ROLLOUT`; both end with `AUTOSCALE`.
/// Sorted by name.
pub fn services(views: &[ServiceView], wide: bool, now: u64) -> Table {
    let mut headers = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "DESIRED", "REVISION", "AGE"];
    if wide {
        headers.extend(["ROUTES", "MODULE", "MEMORY", "CPU", "TIMEOUT", "ROLLOUT"]);
    }
    headers.push("AUTOSCALE");
    let mut table = Table::new(headers);
    let mut views: Vec<&ServiceView> = views.iter().collect();
    views.sort_by(|a, b| a.record.service.name.cmp(&b.record.service.name));
    for view in views {
        let (record, status) = (&view.record, &view.status);
        let spec = &record.service.spec;
        let mut row = vec![
            record.service.name.clone(),
            format!("{}/{}", status.ready, status.desired),
            status.updated.to_string(),
            status.available.to_string(),
            status.desired.to_string(),
            status.revision.clone(),
            age(now, record.created_unix),
        ];
        if wide {
            row.extend([
                routes(view),
                record.module_digest.get(..12).unwrap_or(&record.module_digest).to_owned(),
                format_bytes(spec.resources.memory),
                cpu(spec.resources.cpu_millis),
                duration(spec.timeout),
                rollout(status.rollout, status.message.as_deref()),
            ]);
        }
        row.push(autoscale(view, now));
        table.push(row);
    }
    table
}

/// The AUTOSCALE cell: `<min>-<max>, <desired> <age> ago: <reason>`
/// (`<min>-<max>: <reason>` while the count never changed; `PANIC ` first
/// in panic mode), or `-` for a service without `spec.autoscale`.
pub fn autoscale(view: &ServiceView, now: u64) -> String {
    let Some(settings) = &view.record.service.spec.autoscale else {
        return "-".to_owned();
    };
    let range = format!("{}-{}", settings.min, settings.max);
    let Some(scale) = &view.status.scale else {
        return range;
    };
    let mut cell = String::new();
    if scale.panic {
        cell.push_str("PANIC ");
    }
    cell.push_str(&range);
    if scale.changed_unix != 0 {
        cell.push_str(&format!(", {} {} ago", scale.desired, age(now, scale.changed_unix)));
    }
    // The reason of a panic decision starts with `panic: `, which PANIC says.
    let reason =
        if scale.panic { scale.reason.strip_prefix("panic: ").unwrap_or(&scale.reason) } else { &scale.reason };
    if !reason.trim().is_empty() {
        cell.push_str(": ");
        cell.push_str(reason.trim());
    }
    cell
}

/// The routes a service serves, comma-separated (`/`, `kubia.example.com/api`,
/// `https://shop.example.com/` for one that requires HTTPS): the status's,
/// or the spec's while the status has none.
pub fn routes(view: &ServiceView) -> String {
    let routes: &[Route] =
        if view.status.routes.is_empty() { &view.record.service.spec.routes } else { &view.status.routes };
    if routes.is_empty() {
        return NONE.to_owned();
    }
    let show = |route: &Route| match route.tls {
        shoal_api::RouteTls::Required => format!("https://{route}"),
        shoal_api::RouteTls::Optional => route.to_string(),
    };
    routes.iter().map(show).collect::<Vec<_>>().join(",")
}

/// `Complete`, or `Progressing: <message>`.
pub fn rollout(phase: RolloutPhase, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(message) => format!("{phase}: {message}"),
        None => phase.to_string(),
    }
}

/// `NAME READY STATUS RESTARTS AGE`, and `NODE` when the replicas run on
/// more than one node (a cluster); wide adds `PID NODE CGROUP REVISION
/// MESSAGE`. Sorted by name.
pub fn replicas(replicas: &[ReplicaInfo], wide: bool, now: u64) -> Table {
    let mut headers = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    let nodes = replicas.iter().any(|replica| replica.node != replicas[0].node);
    if nodes && !wide {
        headers.push("NODE");
    }
    if wide {
        headers.extend(["PID", "NODE", "CGROUP", "REVISION", "MESSAGE"]);
    }
    let mut table = Table::new(headers);
    for replica in sorted(replicas) {
        let mut row = vec![
            replica.name.clone(),
            ready(replica).to_owned(),
            replica.state.to_string(),
            replica.restarts.to_string(),
            age(now, replica.started_unix),
        ];
        if nodes && !wide {
            row.push(replica.node.clone());
        }
        if wide {
            row.extend([
                replica.pid.map_or_else(|| NONE.to_owned(), |pid| pid.to_string()),
                replica.node.clone(),
                replica.cgroup.clone().unwrap_or_else(|| "<none: unconfined>".to_owned()),
                replica.revision.clone(),
                replica.message.clone().filter(|m| !m.trim().is_empty()).unwrap_or_else(|| NONE.to_owned()),
            ]);
        }
        table.push(row);
    }
    table
}

/// The replicas of a service in `describe`: `NAME READY STATUS RESTARTS
/// AGE REVISION MESSAGE` (the message blank when there is none).
pub fn service_replicas(replicas: &[ReplicaInfo], now: u64) -> Table {
    let mut table = Table::new(vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "REVISION", "MESSAGE"]);
    for replica in sorted(replicas) {
        table.push(vec![
            replica.name.clone(),
            ready(replica).to_owned(),
            replica.state.to_string(),
            replica.restarts.to_string(),
            age(now, replica.started_unix),
            replica.revision.clone(),
            replica.message.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// `NAME STATUS ROLES ADDRESS REPLICAS CAPACITY RESERVED LEASE AGE`;
/// wide adds `GATEWAY ADMIN`. Sorted by name.
pub fn nodes(nodes: &[NodeView], wide: bool, now: u64) -> Table {
    let mut headers = vec!["NAME", "STATUS", "ROLES", "ADDRESS", "REPLICAS", "CAPACITY", "RESERVED", "LEASE", "AGE"];
    if wide {
        headers.extend(["GATEWAY", "ADMIN"]);
    }
    let mut table = Table::new(headers);
    let mut nodes: Vec<&NodeView> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        let mut row = vec![
            node.name.clone(),
            if node.ready { "Ready" } else { "NotReady" }.to_owned(),
            if node.leader { "leader" } else { NONE }.to_owned(),
            node.address.clone(),
            node.replicas.to_string(),
            memory(node.capacity),
            memory(node.reserved),
            node.lease_granted_unix.map_or_else(|| NONE.to_owned(), |granted| age(now, granted)),
            age(now, node.registered_unix),
        ];
        if wide {
            row.extend([node.gateway.clone(), node.admin.clone()]);
        }
        table.push(row);
    }
    table
}

fn sorted(replicas: &[ReplicaInfo]) -> Vec<&ReplicaInfo> {
    let mut replicas: Vec<&ReplicaInfo> = replicas.iter().collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));
    replicas
}

fn ready(replica: &ReplicaInfo) -> &'static str {
    if replica.ready { "1/1" } else { "0/1" }
}

/// `DIGEST SIZE AGE` (DIGEST `sha256:` + 12 hex digits; wide: all of
/// them). Oldest first.
pub fn modules(modules: &[ModuleInfo], wide: bool, now: u64) -> Table {
    let mut table = Table::new(vec!["DIGEST", "SIZE", "AGE"]);
    let mut modules: Vec<&ModuleInfo> = modules.iter().collect();
    modules.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then_with(|| a.digest.cmp(&b.digest)));
    for module in modules {
        let digest = if wide { format!("sha256:{}", module.digest) } else { short_digest(&module.digest) };
        table.push(vec![digest, human_size(module.size), age(now, module.created_unix)]);
    }
    table
}

/// `HOST NAMES EXPIRES ORIGIN` (wide: and `ISSUER`): the certificates
/// HTTPS serves, the default one as `(default)`.
pub fn certificates(certificates: &[shoal_api::CertificateView], wide: bool, now: u64) -> Table {
    let mut columns = vec!["HOST", "NAMES", "EXPIRES", "ORIGIN"];
    if wide {
        columns.push("ISSUER");
    }
    let mut table = Table::new(columns);
    for certificate in certificates {
        let host = certificate.host.clone().unwrap_or_else(|| "(default)".to_owned());
        let names = if certificate.names.is_empty() { "<none>".to_owned() } else { certificate.names.join(",") };
        let expires = if certificate.not_after_unix == 0 && certificate.names.is_empty() {
            "<does not load>".to_owned()
        } else {
            let date = shoal_gateway::tls::format_unix(certificate.not_after_unix);
            let date = date.split('T').next().unwrap_or(&date).to_owned();
            let left = certificate.not_after_unix - now as i64;
            if left < 0 {
                format!("{date} (EXPIRED {} ago)", duration_words(-left))
            } else {
                format!("{date} (in {})", duration_words(left))
            }
        };
        let mut row = vec![host, names, expires, certificate.origin.clone()];
        if wide {
            row.push(certificate.issuer.clone());
        }
        table.push(row);
    }
    table
}

/// `3d`, `5h`, `40m`: the largest whole unit.
fn duration_words(seconds: i64) -> String {
    match seconds {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

/// `NAME SERVICE IN-FLIGHT RPS P99 CPU MEMORY`: each replica's figures
/// over the last [`USAGE_WINDOW_SECS`], in the order given (the API's: by
/// name).
///
/// [`USAGE_WINDOW_SECS`]: shoal_api::objects::USAGE_WINDOW_SECS
pub fn top(usage: &[ReplicaUsage]) -> Table {
    let mut table = Table::new(vec!["NAME", "SERVICE", "IN-FLIGHT", "RPS", "P99", "CPU", "MEMORY"]);
    for replica in usage {
        table.push(vec![
            replica.name.clone(),
            replica.service.clone(),
            replica.in_flight.to_string(),
            format!("{:.1}", replica.rps),
            latency(replica.p99_ms),
            millicores(replica.cpu_millis),
            mebibytes(replica.memory_bytes),
        ]);
    }
    table
}

/// `CALLER TARGET 2XX 3XX 4XX 5XX FAILED DENIED P50 P99`: calls from
/// services since Shoal started (1xx responses are not shown apart).
pub fn calls(calls: &[shoal_api::CallUsage]) -> Table {
    let mut table = Table::new(vec!["CALLER", "TARGET", "2XX", "3XX", "4XX", "5XX", "FAILED", "DENIED", "P50", "P99"]);
    for call in calls {
        let r = call.responses;
        table.push(vec![
            call.caller.clone(),
            call.target.clone(),
            (r[0] + r[1]).to_string(),
            r[2].to_string(),
            r[3].to_string(),
            r[4].to_string(),
            call.failed.to_string(),
            call.denied.to_string(),
            latency(call.p50_ms),
            latency(call.p99_ms),
        ]);
    }
    table
}

/// What `top` prints (to stderr) when there is no replica.
pub fn no_replicas(service: Option<&str>) -> String {
    match service {
        Some(service) => format!("No replicas running for service {service:?}."),
        None => "No replicas running.".to_owned(),
    }
}

/// `TYPE REASON AGE MESSAGE`, in the order given (oldest first).
pub fn events(events: &[Event], now: u64) -> Table {
    let mut table = Table::new(vec!["TYPE", "REASON", "AGE", "MESSAGE"]);
    for event in events {
        table.push(vec![
            event.kind.to_string(),
            event.reason.clone(),
            age(now, event.time_unix),
            event.message.clone(),
        ]);
    }
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use shoal_api::objects::{EventType, ReplicaState, ScaleStatus, ServiceRecord, ServiceStatus};
    use shoal_api::{Autoscale, Resources, Service, ServiceSpec};

    use super::*;

    pub const NOW: u64 = 1_700_000_000;

    pub fn view(name: &str, ready: u32, desired: u32) -> ServiceView {
        let record = ServiceRecord {
            service: Service {
                name: name.into(),
                labels: BTreeMap::from([("app".into(), name.into())]),
                spec: ServiceSpec {
                    module: PathBuf::from("/target/wasm32-wasip2/release/hello.wasm"),
                    module_field: "../target/wasm32-wasip2/release/hello.wasm".into(),
                    replicas: desired,
                    routes: vec![Route::new(None, "/")],
                    env: BTreeMap::new(),
                    resources: Resources { memory: 64 << 20, cpu_millis: Some(500), instance_memory: 16 << 20 },
                    limits: Default::default(),
                    instances: Default::default(),
                    timeout: Duration::from_secs(10),
                    autoscale: None,
                    allow_outbound: Vec::new(),
                    readiness: None,
                    liveness: None,
                },
                resource_version: None,
            },
            module_digest: "3f2a9c1b7e4d".to_owned() + &"0".repeat(52),
            generation: 1,
            created_unix: NOW - 300,
            updated_unix: NOW - 300,
            resource_version: 0,
            previous: None,
            history: Vec::new(),
        };
        let status = ServiceStatus {
            name: name.into(),
            desired,
            ready,
            updated: ready,
            available: ready,
            revision: "3382d9".into(),
            generation: 1,
            observed_generation: 1,
            rollout: if ready == desired { RolloutPhase::Complete } else { RolloutPhase::Progressing },
            message: None,
            routes: vec![Route::new(None, "/")],
            scale: None,
            instances: Some(shoal_api::Instances::default().policy(false)),
        };
        ServiceView { record, status }
    }

    /// Autoscale settings with the manifest's defaults, from `min` to `max`.
    pub fn settings(min: u32, max: u32) -> Autoscale {
        Autoscale { min, max, ..Autoscale::default() }
    }

    /// An autoscaled service (1-10) whose autoscaler asked for `desired`
    /// replicas 90 seconds ago (never, with `changed: false`).
    pub fn autoscaled(name: &str, ready: u32, desired: u32, changed: bool) -> ServiceView {
        let mut view = view(name, ready, desired);
        view.record.service.spec.replicas = 1;
        view.record.service.spec.autoscale = Some(settings(1, 10));
        view.status.scale = Some(ScaleStatus {
            desired,
            panic: false,
            reason: "4.2 in flight over 1m, target 10 × 70% per replica".into(),
            changed_unix: if changed { NOW - 90 } else { 0 },
        });
        view
    }

    pub fn replica(name: &str, state: ReplicaState, ready: bool) -> ReplicaInfo {
        ReplicaInfo {
            name: name.into(),
            service: "kubia".into(),
            revision: "3382d9".into(),
            state,
            ready,
            node: "local".into(),
            pid: ready.then_some(20262),
            restarts: 0,
            cgroup: None,
            started_unix: NOW - 42,
            message: None,
        }
    }

    #[test]
    fn services_table() {
        let views = [view("kubia", 3, 3), view("api", 1, 2)];
        assert_eq!(
            services(&views, false, NOW).render(),
            "NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   AUTOSCALE\n\
             api     1/2     1            1           2         3382d9     5m    -\n\
             kubia   3/3     3            3           3         3382d9     5m    -\n"
        );
    }

    #[test]
    fn services_table_with_autoscaled_services() {
        let mut panicking = autoscaled("burst", 3, 8, true);
        let scale = panicking.status.scale.as_mut().unwrap();
        scale.panic = true;
        scale.reason = "panic: 41.5 in flight over 6s, target 10 × 70% per replica; held at max 8".into();
        panicking.record.service.spec.autoscale = Some(settings(0, 8));
        let views = [autoscaled("kubia", 3, 3, true), view("api", 1, 1), autoscaled("fresh", 1, 1, false), panicking];
        assert_eq!(
            services(&views, false, NOW).render(),
            "NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   AUTOSCALE\n\
             api     1/1     1            1           1         3382d9     5m    -\n\
             burst   3/8     3            3           8         3382d9     5m    PANIC 0-8, 8 90s ago: 41.5 in flight over 6s, target 10 × 70% per replica; held at max 8\n\
             fresh   1/1     1            1           1         3382d9     5m    1-10: 4.2 in flight over 1m, target 10 × 70% per replica\n\
             kubia   3/3     3            3           3         3382d9     5m    1-10, 3 90s ago: 4.2 in flight over 1m, target 10 × 70% per replica\n"
        );
        let wide = services(&views[..1], true, NOW);
        assert_eq!(wide.headers.last(), Some(&"AUTOSCALE"), "last in wide too");
        assert_eq!(wide.rows[0][13], "1-10, 3 90s ago: 4.2 in flight over 1m, target 10 × 70% per replica");
    }

    #[test]
    fn autoscale_cells() {
        let mut view = autoscaled("kubia", 3, 3, true);
        assert_eq!(autoscale(&view, NOW + 3600), "1-10, 3 61m ago: 4.2 in flight over 1m, target 10 × 70% per replica");
        view.status.scale.as_mut().unwrap().reason = "panic: but not in panic mode".into();
        assert_eq!(autoscale(&view, NOW), "1-10, 3 90s ago: panic: but not in panic mode");
        view.status.scale.as_mut().unwrap().reason = " ".into();
        assert_eq!(autoscale(&view, NOW), "1-10, 3 90s ago");
        view.status.scale = None;
        assert_eq!(autoscale(&view, NOW), "1-10", "no decision yet");
        view.record.service.spec.autoscale = None;
        assert_eq!(autoscale(&view, NOW), "-");
    }

    #[test]
    fn services_table_wide() {
        let mut api = view("api", 1, 2);
        api.status.routes = vec![Route::new(Some("api.example.com".into()), "/v1"), Route::new(None, "/api")];
        api.status.message = Some("1 of 2 updated replicas are available".into());
        api.record.service.spec.resources.cpu_millis = None;
        assert_eq!(
            services(&[view("kubia", 3, 3), api], true, NOW).render(),
            "NAME    READY   UP-TO-DATE   AVAILABLE   DESIRED   REVISION   AGE   ROUTES                    MODULE         MEMORY   CPU    TIMEOUT   ROLLOUT                                              AUTOSCALE\n\
             api     1/2     1            1           2         3382d9     5m    api.example.com/v1,/api   3f2a9c1b7e4d   64Mi     -      10s       Progressing: 1 of 2 updated replicas are available   -\n\
             kubia   3/3     3            3           3         3382d9     5m    /                         3f2a9c1b7e4d   64Mi     500m   10s       Complete                                             -\n"
        );
    }

    #[test]
    fn routes_that_require_https_show_their_scheme() {
        let mut api = view("api", 1, 1);
        let mut secure = Route::new(Some("shop.example.com".into()), "/");
        secure.tls = shoal_api::RouteTls::Required;
        api.status.routes = vec![secure, Route::new(None, "/api")];
        assert_eq!(routes(&api), "https://shop.example.com/,/api");
    }

    #[test]
    fn certificates_table() {
        let day = 86_400;
        let view = |host: Option<&str>, names: &[&str], not_after: u64, origin: &str| shoal_api::CertificateView {
            host: host.map(str::to_owned),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before_unix: 0,
            not_after_unix: not_after as i64,
            issuer: "CN=ca".into(),
            origin: origin.into(),
            warnings: Vec::new(),
        };
        let table = certificates(
            &[
                view(None, &["localhost", "127.0.0.1"], NOW + 400 * day, "self-signed"),
                view(Some("a.test"), &["a.test"], NOW - 2 * day, "store"),
                view(Some("b.test"), &[], 0, "store"),
            ],
            false,
            NOW,
        )
        .render();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("HOST") && lines[0].contains("NAMES") && lines[0].contains("EXPIRES"), "{table}");
        assert!(
            lines[1].starts_with("(default)")
                && lines[1].contains("localhost,127.0.0.1")
                && lines[1].contains("(in 400d)")
        );
        assert!(lines[2].starts_with("a.test") && lines[2].contains("(EXPIRED 2d ago)"), "{table}");
        assert!(lines[3].contains("<does not load>"), "{table}");
    }

    #[test]
    fn replicas_table() {
        let mut crashing = replica("kubia-3382d9-b7k2m", ReplicaState::CrashLoopBackOff, false);
        crashing.restarts = 4;
        crashing.message = Some("exit status 1".into());
        crashing.cgroup = Some("/shoal/up-1/kubia-3382d9-b7k2m".into());
        let list = [replica("kubia-3382d9-x58q4", ReplicaState::Running, true), crashing];
        assert_eq!(
            replicas(&list, false, NOW).render(),
            "NAME                 READY   STATUS             RESTARTS   AGE\n\
             kubia-3382d9-b7k2m   0/1     CrashLoopBackOff   4          42s\n\
             kubia-3382d9-x58q4   1/1     Running            0          42s\n"
        );
        assert_eq!(
            replicas(&list, true, NOW).render(),
            "NAME                 READY   STATUS             RESTARTS   AGE   PID      NODE    CGROUP                           REVISION   MESSAGE\n\
             kubia-3382d9-b7k2m   0/1     CrashLoopBackOff   4          42s   <none>   local   /shoal/up-1/kubia-3382d9-b7k2m   3382d9     exit status 1\n\
             kubia-3382d9-x58q4   1/1     Running            0          42s   20262    local   <none: unconfined>               3382d9     <none>\n"
        );
    }

    #[test]
    fn modules_table() {
        let list = [
            ModuleInfo { digest: "b".repeat(64), size: 2 << 20, created_unix: NOW - 7200 },
            ModuleInfo { digest: "a".repeat(64), size: 146_636, created_unix: NOW - 86400 * 3 },
        ];
        assert_eq!(
            modules(&list, false, NOW).render(),
            "DIGEST                SIZE        AGE\n\
             sha256:aaaaaaaaaaaa   143.2 KiB   3d\n\
             sha256:bbbbbbbbbbbb   2.0 MiB     120m\n"
        );
        let wide = modules(&list, true, NOW).render();
        assert!(wide.contains(&format!("sha256:{}   143.2 KiB", "a".repeat(64))), "{wide}");
    }

    #[test]
    fn empty_tables_have_no_rows() {
        assert!(services(&[], false, NOW).is_empty());
        assert!(replicas(&[], true, NOW).is_empty());
        assert!(modules(&[], false, NOW).is_empty());
        assert!(top(&[]).is_empty());
    }

    fn usage(name: &str, rps: f64, p99_ms: Option<f64>, cpu: Option<u64>, memory: Option<u64>) -> ReplicaUsage {
        ReplicaUsage {
            name: name.into(),
            service: name.rsplitn(3, '-').last().unwrap().into(),
            in_flight: 2,
            rps,
            p99_ms,
            cpu_millis: cpu,
            memory_bytes: memory,
        }
    }

    #[test]
    fn top_table() {
        let list = [
            usage("api-4493e0-aaaaa", 0.04, Some(0.42), Some(3), Some(5 << 20)),
            usage("kubia-3382d9-x58q4", 153.44, Some(1.8), Some(23), Some((12 << 20) + 4096)),
            usage("kubia-3382d9-b7k2m", 2.0, Some(1234.5), Some(1500), Some(130 << 20)),
        ];
        assert_eq!(
            top(&list).render(),
            "NAME                 SERVICE   IN-FLIGHT   RPS     P99      CPU     MEMORY\n\
             api-4493e0-aaaaa     api       2           0.0     0.42ms   3m      5Mi\n\
             kubia-3382d9-x58q4   kubia     2           153.4   1.8ms    23m     12Mi\n\
             kubia-3382d9-b7k2m   kubia     2           2.0     1.2s     1500m   130Mi\n",
            "in the order given"
        );
    }

    #[test]
    fn top_table_without_figures() {
        let mut idle = usage("kubia-3382d9-x58q4", 0.0, None, None, None);
        idle.in_flight = 0;
        assert_eq!(
            top(&[idle]).render(),
            "NAME                 SERVICE   IN-FLIGHT   RPS   P99   CPU   MEMORY\n\
             kubia-3382d9-x58q4   kubia     0           0.0   -     -     -\n"
        );
        assert_eq!(no_replicas(None), "No replicas running.");
        assert_eq!(no_replicas(Some("kubia")), "No replicas running for service \"kubia\".");
    }

    #[test]
    fn events_table() {
        let list = [
            Event {
                seq: 1,
                time_unix: NOW - 300,
                kind: EventType::Normal,
                object: "service/kubia".into(),
                reason: "Applied".into(),
                message: "created (generation 1, revision 3382d9)".into(),
            },
            Event {
                seq: 2,
                time_unix: NOW - 30,
                kind: EventType::Warning,
                object: "replica/kubia-3382d9-b7k2m".into(),
                reason: "BackOff".into(),
                message: "exit status 1".into(),
            },
        ];
        assert_eq!(
            events(&list, NOW).render(),
            "TYPE      REASON    AGE   MESSAGE\n\
             Normal    Applied   5m    created (generation 1, revision 3382d9)\n\
             Warning   BackOff   30s   exit status 1\n"
        );
    }
}
