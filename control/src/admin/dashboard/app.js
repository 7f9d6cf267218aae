// Shoal's dashboard: plain JavaScript, no dependencies, no build step.
// Every figure comes from the admin API the CLI uses, with the session
// cookie standing for the token; /v1/stream pushes the services and their
// latest figures every second.
"use strict";

const state = { services: [], latest: {}, history: {}, loaded: new Set(), connected: false };
const view = document.getElementById("view");
const live = document.getElementById("live");

// --- helpers ---------------------------------------------------------------

// Replaces the view's content with `nodes` (nulls left out).
function show(...nodes) {
  view.replaceChildren(...nodes.filter((node) => node !== null && node !== undefined && node !== false));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    location.reload(); // the session ended: the login form
    throw new Error("unauthorized");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((data && data.error) || response.statusText);
  return data;
}

function fixed(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function percent(rate) {
  return rate === null || rate === undefined ? "–" : (rate * 100).toFixed(rate > 0 && rate < 0.01 ? 2 : 1) + " %";
}

function age(unix) {
  if (!unix) return "–";
  const s = Math.max(0, Math.floor(Date.now() / 1000 - unix));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

const SVG = "http://www.w3.org/2000/svg";

// A line chart of `points` (objects with unixMs) by `key`, as SVG; a
// second, dashed line by `dashed`; panic periods shaded when `shadePanic`.
function chart(points, key, { width = 600, height = 120, label = "", shadePanic = false, dashed = null } = {}) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const values = points.map((p) => p[key] ?? 0);
  // Headroom above the highest point, so a flat line at the top shows.
  const max = 1.15 * Math.max(1e-9, ...values, ...(dashed ? points.map((p) => p[dashed] ?? 0) : []));
  const now = Date.now();
  const span = 15 * 60 * 1000;
  const x = (t) => width - ((now - t) / span) * width;
  const y = (v) => height - 4 - (v / max) * (height - 8);
  if (shadePanic) {
    for (const p of points.filter((p) => p.panic)) {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", x(p.unixMs - 1000));
      rect.setAttribute("y", 0);
      rect.setAttribute("width", Math.max(1, width / 900));
      rect.setAttribute("height", height);
      rect.setAttribute("class", "panic");
      svg.append(rect);
    }
  }
  for (const [field, kind] of [[dashed, "line dashed"], [key, "line"]]) {
    if (!field) continue;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map((p) => `${x(p.unixMs).toFixed(1)},${y(p[field] ?? 0).toFixed(1)}`).join(" "));
    line.setAttribute("class", kind);
    svg.append(line);
  }
  const last = values.length ? values[values.length - 1] : null;
  svg.setAttribute("aria-label", `${label}: ${last === null ? "no data" : fixed(last)} now, at most ${fixed(max)} over 15 minutes`);
  return svg;
}

// --- live data -------------------------------------------------------------

// Fetches the points of `name` after the last one known (all of them when
// `all`), merged with those the stream brought.
async function loadHistory(name, all = false) {
  const known = state.history[name] || [];
  const since = all || !known.length ? 0 : known[known.length - 1].unixMs;
  const points = await api("GET", `/v1/history?service=${encodeURIComponent(name)}&since=${since}`);
  const byTime = new Map(known.concat(points).map((p) => [p.unixMs, p]));
  state.history[name] = [...byTime.values()].sort((a, b) => a.unixMs - b.unixMs).slice(-900);
}

function connect() {
  const source = new EventSource("/v1/stream");
  source.addEventListener("services", (event) => {
    const data = JSON.parse(event.data);
    state.services = data.services;
    state.latest = data.latest;
    // A service seen for the first time: its last 15 minutes.
    for (const service of data.services) {
      const name = service.record.service.name;
      if (!state.loaded.has(name)) {
        state.loaded.add(name);
        loadHistory(name, true).then(refresh, () => state.loaded.delete(name));
      }
    }
    for (const [name, point] of Object.entries(data.latest)) {
      const series = state.history[name] || (state.history[name] = []);
      if (!series.length || series[series.length - 1].unixMs < point.unixMs) series.push(point);
      if (series.length > 900) series.shift();
    }
    state.connected = true;
    live.textContent = "live";
    live.className = "live on";
    refresh();
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  };
}

// --- views -----------------------------------------------------------------

let current = null; // { name, render }

function route() {
  if (current && current.close) current.close();
  const hash = location.hash || "#/";
  const service = hash.match(/^#\/service\/(.+)$/);
  if (service) current = servicePage(decodeURIComponent(service[1]));
  else if (hash === "#/nodes") current = nodesPage();
  else if (hash === "#/modules") current = modulesPage();
  else current = servicesPage();
  show();
  current.render(true);
  view.focus();
}

function refresh() {
  if (current && current.live) current.render(false);
}

function ready(service) {
  const s = service.status;
  return `${s.ready}/${s.desired}`;
}

function servicesPage() {
  // Built once: the table is redrawn every second, the apply form kept
  // (what is typed in it stays).
  const table = el("div", { class: "scroll" });
  const empty = el("p", { hidden: "" }, "No services yet: apply a manifest below, or with shoal apply.");
  return {
    live: true,
    render(first) {
      if (first) show(el("h1", {}, "Services"), empty, table, applyForm());
      const rows = state.services.map((service) => {
        const name = service.record.service.name;
        const point = state.latest[name] || (state.history[name] || []).slice(-1)[0] || {};
        const scale = service.status.scale;
        const autoscale = service.record.service.spec.autoscale;
        return el("tr", { "data-service": name },
          el("th", { scope: "row" }, el("a", { href: `#/service/${encodeURIComponent(name)}` }, name)),
          el("td", { class: "ready" }, ready(service)),
          el("td", {}, service.status.revision),
          el("td", {}, autoscale ? `${autoscale.min}–${autoscale.max}${scale && scale.panic ? " (panic)" : ""}` : "off"),
          el("td", { class: "num rps" }, fixed(point.rps)),
          el("td", { class: "num" }, point.p99Ms == null ? "–" : fixed(point.p99Ms) + " ms"),
          el("td", { class: "num" }, percent(point.errorRate)),
          el("td", { class: "spark" }, chart(state.history[name] || [], "rps", { width: 180, height: 32, label: `${name} requests/s` })));
      });
      empty.hidden = !(state.services.length === 0 && state.connected);
      table.replaceChildren(el("table", { class: "services" },
        el("thead", {}, el("tr", {}, ["Name", "Ready", "Revision", "Autoscale", "Req/s", "p99", "Errors", "Last 15 min"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)));
    },
  };
}

// Apply a manifest pasted here, with its module uploaded from a file or
// chosen among the stored ones; the server checks it as it checks the
// CLI's (errors name the field).
function applyForm() {
  const manifest = el("textarea", { id: "manifest", rows: "10", spellcheck: "false",
    placeholder: "apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: kubia\nspec:\n  module: kubia.wasm\n  replicas: 3" });
  const file = el("input", { id: "module-file", type: "file", accept: ".wasm,application/wasm" });
  // A manifest file fills the text area (to read, or change, before it
  // is applied).
  const manifestFile = el("input", { id: "manifest-file", type: "file", accept: ".yaml,.yml,text/yaml",
    onchange: () => { if (manifestFile.files.length) manifestFile.files[0].text().then((text) => { manifest.value = text; }); } });
  const stored = el("select", { id: "module-stored" }, el("option", { value: "" }, "a stored module…"));
  api("GET", "/v1/modules").then((modules) => {
    modules.sort((a, b) => b.createdUnix - a.createdUnix);
    for (const m of modules) stored.append(el("option", { value: m.digest }, `sha256:${m.digest.slice(0, 12)} (${Math.round(m.size / 1024)} KiB)`));
  }, () => {});
  const result = el("p", { id: "apply-result", role: "status" });
  async function apply() {
    let digest = stored.value;
    if (file.files.length) {
      const response = await fetch("/v1/modules", { method: "POST", credentials: "same-origin", headers: { "content-type": "application/wasm" }, body: file.files[0] });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error);
      digest = answer.digest;
    }
    if (!digest) throw new Error("Choose the service's module: a .wasm file, or a stored module.");
    const answer = await api("POST", "/v1/services", { manifest: manifest.value, moduleDigest: digest });
    result.className = "";
    result.textContent = `service/${answer.service.record.service.name} ${answer.result}` + (answer.warnings.length ? ` (${answer.warnings.join("; ")})` : "");
  }
  const onError = (error) => {
    result.className = "error";
    result.textContent = error.message;
  };
  return el("section", { class: "apply", "aria-labelledby": "apply-title" },
    el("h2", { id: "apply-title" }, "Apply a manifest"),
    el("form", { onsubmit: (event) => { event.preventDefault(); act("Apply this manifest?", apply, onError); } },
      el("label", { for: "manifest" }, "Manifest (YAML, one Service), pasted or "),
      el("label", { for: "manifest-file", class: "file" }, "from a file "), manifestFile, manifest,
      el("div", { class: "module" },
        el("label", { for: "module-file" }, "Module: a .wasm file "), file,
        el("label", { for: "module-stored" }, " or "), stored),
      el("button", { type: "submit", id: "apply" }, "Apply")),
    result);
}

function servicePage(name) {
  let extra = { replicas: [], top: [], events: [], logs: "" };
  // The page's own stream: the service's replicas, usage, events and log
  // tail every second (the services and their charts come by the main one).
  const source = new EventSource(`/v1/stream?service=${encodeURIComponent(name)}`);
  source.addEventListener("service", (event) => {
    extra = JSON.parse(event.data);
    if (current && current.name === name) current.draw();
  });
  // Built once (what is typed in the form stays); the parts below are
  // refreshed in place.
  const parts = {
    ready: el("span", { class: "ready-big", id: "ready" }),
    error: el("p", { class: "error", role: "alert", hidden: "" }),
    summary: el("p", {}),
    charts: el("section", { class: "charts" }),
    replicas: el("div", { class: "scroll" }),
    events: el("ul", { class: "events", id: "events" }),
    log: el("pre", { class: "log", tabindex: "0" }),
  };
  const input = el("input", { id: "replicas", type: "number", min: "0", max: "1000", "aria-label": "Replicas" });
  const rollback = el("button", { id: "rollback", hidden: "", onclick: () => act(`Roll ${name} back to its previous revision?`, () => api("POST", `/v1/services/${encodeURIComponent(name)}/rollback`)) }, "Roll back");
  let built = false;
  function build() {
    built = true;
    show(
      el("p", {}, el("a", { href: "#/" }, "← Services")),
      el("h1", {}, name, " ", parts.ready),
      parts.error,
      parts.summary,
      el("section", { class: "actions", "aria-label": "Actions" },
        el("label", { for: "replicas" }, "Replicas "), input,
        rollback,
        el("button", { id: "scale", onclick: () => act(`Scale ${name} to ${input.value} replicas?`, () => api("PUT", `/v1/services/${encodeURIComponent(name)}/scale`, { replicas: Number(input.value) })) }, "Scale"),
        el("button", { class: "danger", id: "delete", onclick: () => act(`Delete service ${name}? Its replicas drain and stop.`, () => api("DELETE", `/v1/services/${encodeURIComponent(name)}`).then(() => { location.hash = "#/"; })) }, "Delete")),
      parts.charts,
      el("h2", {}, "Replicas"), parts.replicas,
      el("h2", {}, "Events"), parts.events,
      el("h2", {}, "Log"), parts.log);
  }
  return {
    name,
    live: true,
    close() {
      source.close();
    },
    render(first) {
      if (first) loadHistory(name, true).then(() => this.draw(), (error) => this.draw(error));
      this.draw();
    },
    draw(error) {
      const service = state.services.find((s) => s.record.service.name === name);
      if (!service) {
        built = false;
        show(el("h1", {}, name), el("p", {}, state.connected ? "No such service." : "Loading…"));
        return;
      }
      if (!built) {
        input.value = String(service.status.desired);
        build();
      }
      const points = state.history[name] || [];
      const usage = Object.fromEntries(extra.top.map((u) => [u.name, u]));
      const scale = service.status.scale;
      parts.ready.textContent = ready(service);
      rollback.hidden = !service.record.previous;
      parts.error.hidden = !error;
      parts.error.textContent = error ? error.message : "";
      parts.summary.textContent = `Revision ${service.status.revision}, rollout ${service.status.rollout}` +
        (scale ? ` · autoscaler: ${scale.reason}${scale.panic ? " (panic)" : ""}` : "");
      parts.charts.replaceChildren(
        el("figure", {}, el("figcaption", {}, "Requests/s (", el("span", { id: "rps" }, fixed(points.length ? points[points.length - 1].rps : null)), ")"), chart(points, "rps", { label: "requests/s", shadePanic: true })),
        el("figure", {}, el("figcaption", {}, "p99 latency, ms"), chart(points, "p99Ms", { label: "p99 latency in ms" })),
        el("figure", {}, el("figcaption", {}, "Replicas: ready, and asked for (dashed; shaded: autoscaler panic)"), chart(points, "ready", { label: "ready replicas", shadePanic: true, dashed: "desired" })));
      parts.replicas.replaceChildren(el("table", { id: "replica-table" },
        el("thead", {}, el("tr", {}, ["Name", "State", "Ready", "In flight", "Req/s", "CPU", "Memory", "Restarts", "Node", "Age"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, extra.replicas.map((r) => {
          const u = usage[r.name] || {};
          return el("tr", {},
            el("th", { scope: "row" }, r.name), el("td", {}, r.state), el("td", {}, r.ready ? "yes" : "no"),
            el("td", { class: "num" }, u.inFlight ?? "–"), el("td", { class: "num" }, fixed(u.rps)),
            el("td", { class: "num" }, u.cpuMillis == null ? "–" : u.cpuMillis + "m"),
            el("td", { class: "num" }, u.memoryBytes == null ? "–" : Math.round(u.memoryBytes / 1048576) + "Mi"),
            el("td", { class: "num" }, r.restarts), el("td", {}, r.node), el("td", {}, age(r.startedUnix)));
        }))));
      parts.events.replaceChildren(...extra.events.map((e) =>
        el("li", { class: e.kind === "Warning" ? "warning" : "" }, el("time", {}, age(e.timeUnix)), ` ${e.object} ${e.reason}: ${e.message}`)));
      parts.log.textContent = extra.logs || "(no output yet)";
    },
  };
}

function nodesPage() {
  return {
    live: false,
    render() {
      api("GET", "/v1/nodes").then((nodes) => {
        show(el("h1", {}, "Nodes"), el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, ["Name", "Status", "Role", "Address", "Replicas", "Capacity", "Reserved", "Age"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, nodes.map((n) => el("tr", {}, el("th", { scope: "row" }, n.name), el("td", {}, n.ready ? "Ready" : "NotReady"),
            el("td", {}, n.leader ? "leader" : ""), el("td", {}, n.address), el("td", { class: "num" }, n.replicas),
            el("td", { class: "num" }, Math.round(n.capacity / 1048576) + "Mi"), el("td", { class: "num" }, Math.round(n.reserved / 1048576) + "Mi"),
            el("td", {}, age(n.registeredUnix))))))));
      }, (error) => show(el("h1", {}, "Nodes"), el("p", {}, error.message)));
    },
  };
}

function modulesPage() {
  return {
    live: false,
    render() {
      api("GET", "/v1/modules").then((modules) => {
        show(el("h1", {}, "Modules"), el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, ["Digest", "Size", "Age"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, modules.map((m) => el("tr", {}, el("td", { class: "mono" }, "sha256:" + m.digest.slice(0, 12)),
            el("td", { class: "num" }, Math.round(m.size / 1024) + " KiB"), el("td", {}, age(m.createdUnix))))))));
      }, (error) => show(el("h1", {}, "Modules"), el("p", {}, error.message)));
    },
  };
}

// --- actions ---------------------------------------------------------------

// Asks `question`; on confirmation runs `action`, and `onError` (an alert
// by default) with what went wrong.
function act(question, action, onError = (error) => alert(error.message)) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue !== "ok") return;
    action().then(() => refresh(), onError);
  };
  dialog.showModal();
}

window.addEventListener("hashchange", route);
connect();
route();
