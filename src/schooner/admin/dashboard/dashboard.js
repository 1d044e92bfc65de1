/* Schooner dashboard: the Serve page of the admin server (plain script, no build step).
 *
 * Every POLL_MS it reads GET api/serve/applications/ (Ray's ServeInstanceDetails, with
 * Schooner's traffic policies and rollouts: ?include=traffic,rollout) and
 * GET metrics (Prometheus text), renders a fresh tree and morphs the page into it, so
 * open panes, scroll positions and selections survive the refresh. Rates come from the
 * difference between two successive metrics fetches. The pure functions at the top
 * (parsePrometheus, summarize, rates, quantile) are exported for node in tests.
 */
"use strict";

const POLL_MS = 2000;
const LOG_LINES = 200;

// -- Prometheus text and rates (pure) --------------------------------------------------

/** Parse Prometheus text format into [{name, labels, value}] (comments and bad lines skipped). */
function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line[0] === "#") continue;
    const match = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!match) continue;
    let labels = {};
    let rest = line.slice(match[0].length);
    if (rest[0] === "{") {
      const parsed = parseLabels(rest);
      if (parsed === null) continue;
      [labels, rest] = parsed;
    }
    const value = parseValue(rest.trim().split(/\s+/)[0]);
    if (value !== null) samples.push({ name: match[0], labels, value });
  }
  return samples;
}

/** `{a="x",b="y"} rest` → [{a: "x", b: "y"}, " rest"], or null if malformed. */
function parseLabels(text) {
  const labels = {};
  let i = 1;
  for (;;) {
    while (text[i] === " " || text[i] === ",") i++;
    if (i >= text.length) return null;
    if (text[i] === "}") return [labels, text.slice(i + 1)];
    const eq = text.indexOf("=", i);
    if (eq < 0 || text[eq + 1] !== '"') return null;
    const key = text.slice(i, eq).trim();
    let value = "";
    let j = eq + 2;
    while (j < text.length && text[j] !== '"') {
      if (text[j] === "\\" && j + 1 < text.length) {
        value += text[j + 1] === "n" ? "\n" : text[j + 1];
        j += 2;
      } else {
        value += text[j++];
      }
    }
    if (j >= text.length) return null;
    labels[key] = value;
    i = j + 1;
  }
}

function parseValue(token) {
  if (token === undefined || token === "") return null;
  if (token === "+Inf" || token === "Inf") return Infinity;
  if (token === "-Inf") return -Infinity;
  const value = Number(token);
  return Number.isNaN(value) && token !== "NaN" ? null : value;
}

/** The families the page reads, per application (HTTP, at the proxy) and per deployment. */
const FAMILIES = {
  app: {
    requests: "ray_serve_num_http_requests_total",
    errors: "ray_serve_num_http_error_requests_total",
    latency: "ray_serve_http_request_latency_ms",
    key: (l) => l.application || null,
  },
  deployment: {
    requests: "ray_serve_deployment_request_counter_total",
    errors: "ray_serve_deployment_error_counter_total",
    latency: "ray_serve_deployment_processing_latency_ms",
    key: (l) => (l.deployment ? deploymentKey(l.application || "", l.deployment) : null),
  },
};

function deploymentKey(app, deployment) {
  return JSON.stringify([app, deployment]);
}

/** Totals per application and per deployment: {app: {key: totals}, deployment: {...}},
 * totals = {requests, errors, sum, count, buckets: {le: cumulative count}}; summed over
 * the other labels (route, method, status, replica). */
function summarize(samples) {
  const out = { app: {}, deployment: {} };
  for (const [kind, family] of Object.entries(FAMILIES)) {
    const fields = {
      [family.requests]: "requests",
      [family.errors]: "errors",
      [family.latency + "_sum"]: "sum",
      [family.latency + "_count"]: "count",
      [family.latency + "_bucket"]: "bucket",
    };
    for (const s of samples) {
      const field = fields[s.name];
      const key = field && family.key(s.labels);
      if (!key) continue;
      const t = (out[kind][key] ??= { requests: 0, errors: 0, sum: 0, count: 0, buckets: {} });
      if (field === "bucket") t.buckets[s.labels.le] = (t.buckets[s.labels.le] || 0) + s.value;
      else t[field] += s.value;
    }
  }
  return out;
}

/** Prometheus' histogram_quantile over cumulative [[le, count], ...] sorted by le. */
function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** Rates between two summaries taken dtS seconds apart: per kind and key, {rps, errorsPerS,
 * errorRatio, meanMs, p50Ms, p99Ms} (null where there is nothing to say). A counter that
 * went down was reset (its process restarted): it counts from zero, as in Prometheus. */
function rates(prev, curr, dtS) {
  const out = { app: {}, deployment: {} };
  if (!prev || !(dtS > 0)) return out;
  const delta = (a, b) => (b >= a ? b - a : b);
  for (const kind of Object.keys(out)) {
    for (const [key, c] of Object.entries(curr[kind])) {
      const p = prev[kind][key] || { requests: 0, errors: 0, sum: 0, count: 0, buckets: {} };
      const requests = delta(p.requests, c.requests);
      const errors = delta(p.errors, c.errors);
      const count = delta(p.count, c.count);
      const les = Object.keys(c.buckets).map((le) => [le, parseValue(le)]);
      les.sort((a, b) => a[1] - b[1]);
      const buckets = les.map(([le, v]) => [v, delta(p.buckets[le] || 0, c.buckets[le])]);
      out[kind][key] = {
        rps: requests / dtS,
        errorsPerS: errors / dtS,
        errorRatio: requests > 0 ? errors / requests : null,
        meanMs: count > 0 ? delta(p.sum, c.sum) / count : null,
        p50Ms: quantile(0.5, buckets),
        p99Ms: quantile(0.99, buckets),
      };
    }
  }
  return out;
}

// -- formatting ---------------------------------------------------------------------------

function fmtNumber(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  if (x === 0) return "0";
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function fmtMs(ms) {
  return ms === null || ms === undefined ? "–" : `${fmtNumber(ms)} ms`;
}

function fmtDuration(seconds) {
  if (!(seconds >= 0)) return "–";
  const s = Math.floor(seconds);
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d ${pad(Math.floor(s / 3600) % 24)}h`;
}

function fmtPercent(fraction) {
  return Number.isFinite(fraction) ? `${+(fraction * 100).toFixed(1)}%` : "–";
}

/** What the traffic policies say, as lines per application: an owner's split and
 *  shadows, and for each application a policy names, the share it serves or copies. */
function trafficNotes(applications) {
  const notes = {};
  const add = (name, text) => (notes[name] = notes[name] || []).push(text);
  for (const [owner, app] of Object.entries(applications || {})) {
    const policy = app.traffic;
    if (!policy) continue;
    const split = Object.entries(policy.split || {});
    if (split.length) {
      add(owner, `split: ${split.map(([name, w]) => `${name} ${fmtPercent(w)}`).join(" · ")}`);
      for (const [name, w] of split) {
        if (name !== owner) add(name, `serves ${fmtPercent(w)} of ${owner}'s requests`);
      }
    }
    const shadows = Object.entries(policy.shadows || {});
    if (shadows.length) {
      add(owner, `shadows: ${shadows.map(([name, f]) => `${name} ${fmtPercent(f)}`).join(" · ")}`);
      for (const [name, f] of shadows) {
        add(name, `shadow of ${owner}: gets copies of ${fmtPercent(f)} of its requests`);
      }
    }
  }
  return notes;
}

function rolloutClass(state) {
  if (state === "SUCCEEDED") return "status ok";
  if (state === "ROLLED_BACK") return "status bad";
  if (state === "ABORTED") return "status";
  return "status busy"; // RUNNING, PAUSED
}

function statusClass(status) {
  if (["RUNNING", "HEALTHY"].includes(status)) return "status ok";
  if (["DEPLOY_FAILED", "UNHEALTHY"].includes(status)) return "status bad";
  if (["DELETING", "STOPPING", "STOPPED", "DRAINING"].includes(status)) return "status";
  return "status busy";
}

if (typeof module !== "undefined") {
  module.exports = { parsePrometheus, summarize, quantile, rates, deploymentKey, fmtNumber,
    fmtMs, fmtDuration, fmtPercent, statusClass, trafficNotes, rolloutClass };
}

// -- the page -----------------------------------------------------------------------------

const ui = {
  open: new Map(), // pane key → open (overrides the pane's default)
  logs: new Map(), // log pane key → {lines} or {error}
  details: null,
  error: null,
  metrics: { state: "loading", note: "", summary: null, at: 0, rates: null },
};

function isOpen(key, byDefault) {
  return ui.open.has(key) ? ui.open.get(key) : byDefault;
}

/** h("td", {class: "num"}, "text", childNode, [more children]) → an element. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) el.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Make `from` (in the page) look like `to` (freshly rendered), keeping unchanged nodes. */
function morph(from, to) {
  const sameKey = from.nodeType !== 1 || from.getAttribute("data-key") === to.getAttribute("data-key");
  if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName || !sameKey) {
    from.replaceWith(to);
    return;
  }
  if (from.nodeType !== 1) {
    if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
    return;
  }
  for (const a of Array.from(from.attributes)) {
    if (!to.hasAttribute(a.name)) from.removeAttribute(a.name);
  }
  for (const a of Array.from(to.attributes)) {
    if (from.getAttribute(a.name) !== a.value) from.setAttribute(a.name, a.value);
  }
  const olds = Array.from(from.childNodes);
  const news = Array.from(to.childNodes);
  news.forEach((node, i) => (i < olds.length ? morph(olds[i], node) : from.append(node)));
  olds.slice(news.length).forEach((node) => node.remove());
}

function toggle(key, byDefault, label) {
  const open = isOpen(key, byDefault);
  return h("button", { class: "toggle", "data-toggle": key, "data-default": String(byDefault),
    "aria-expanded": String(open) }, `${open ? "▾" : "▸"} ${label}`);
}

function logPane(key) {
  const got = ui.logs.get(key);
  let text = "loading…";
  if (got && got.error) text = got.error;
  else if (got) text = got.lines.length ? got.lines.join("\n") : "(no log lines yet)";
  return h("pre", { class: "logs", "data-logs": key }, text);
}

function metricsLine(rate) {
  const m = ui.metrics;
  if (m.state !== "ok") return h("div", { class: "metrics" }, "–"); // said once, at the top
  if (!rate) return h("div", { class: "metrics" }, m.rates ? "no requests yet" : "collecting…");
  const ratio = rate.errorRatio === null ? "" : ` (${fmtNumber(rate.errorRatio * 100)}%)`;
  return h("div", { class: "metrics" },
    `${fmtNumber(rate.rps)} req/s · ${fmtNumber(rate.errorsPerS)} errors/s${ratio} · ` +
    `latency avg ${fmtMs(rate.meanMs)}, p50 ${fmtMs(rate.p50Ms)}, p99 ${fmtMs(rate.p99Ms)}`);
}

function replicaCounts(dep) {
  const counts = {};
  for (const r of dep.replicas || []) counts[r.state] = (counts[r.state] || 0) + 1;
  const chips = Object.entries(counts).map(([state, n]) =>
    h("span", { class: statusClass(state) }, `${n} ${state}`));
  return h("span", { class: "counts" }, chips.length ? chips : h("span", { class: "muted" }, "none"),
    h("span", { class: "muted" }, ` target ${dep.target_num_replicas}`));
}

/** The options people look for first, then the rest as the config lists them. */
const FIRST_OPTIONS = ["num_replicas", "autoscaling_config", "max_ongoing_requests",
  "user_config", "ray_actor_options"];

function optionsList(config) {
  const entries = Object.entries(config || {}).filter(([name]) => name !== "name");
  const rank = (name) => (FIRST_OPTIONS.includes(name) ? FIRST_OPTIONS.indexOf(name) : 99);
  entries.sort((a, b) => rank(a[0]) - rank(b[0]));
  return h("dl", { class: "options" }, entries.map(([name, value]) => [
    h("dt", {}, name),
    h("dd", {}, typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)),
  ]));
}

function replicaRows(dep, nowS) {
  const rows = [];
  for (const r of dep.replicas || []) {
    const key = `replica:${r.replica_id}`;
    rows.push(h("tr", { "data-key": key, "data-replica": r.replica_id },
      h("td", { class: "mono" }, r.replica_id),
      h("td", {}, h("span", { class: statusClass(r.state) }, r.state)),
      h("td", { class: "num" }, r.pid),
      h("td", { title: `node ${r.node_id}` }, r.node_ip, h("span", { class: "muted" },
        ` ${String(r.node_id || "").slice(0, 8)}`)),
      h("td", { class: "num" }, fmtDuration(nowS - r.start_time_s)),
      h("td", {}, toggle(`logs:${key}`, false, "logs"))));
    if (isOpen(`logs:${key}`, false)) {
      rows.push(h("tr", { class: "sub", "data-key": `logs:${key}` },
        h("td", { colspan: 6 }, h("div", { class: "muted mono" }, r.log_file_path || ""),
          logPane(`logs:${key}`))));
    }
  }
  return rows;
}

function deploymentRows(app, dep, nowS) {
  const key = `dep:${deploymentKey(app.name, dep.name)}`;
  const rate = ui.metrics.rates && ui.metrics.rates.deployment[deploymentKey(app.name, dep.name)];
  const rows = [h("tr", { "data-key": key, "data-deployment": dep.name },
    h("td", {}, h("strong", {}, dep.name)),
    h("td", {}, h("span", { class: statusClass(dep.status) }, dep.status)),
    h("td", {}, replicaCounts(dep)),
    h("td", {}, metricsLine(rate)),
    h("td", {}, toggle(`${key}:replicas`, true, "replicas"), " ", toggle(`${key}:options`, false,
      "options")))];
  const detail = [];
  if (dep.message) detail.push(h("div", { class: "message" }, dep.message));
  if (isOpen(`${key}:options`, false)) detail.push(optionsList(dep.deployment_config));
  if (isOpen(`${key}:replicas`, true)) {
    detail.push(h("table", { class: "replicas" },
      h("thead", {}, h("tr", {}, ["Replica", "State", "PID", "Node", "Uptime", ""].map((t, i) =>
        h("th", { class: i === 2 || i === 4 ? "num" : null }, t)))),
      h("tbody", {}, replicaRows(dep, nowS))));
  }
  if (detail.length) rows.push(h("tr", { class: "sub", "data-key": `${key}:detail`,
    "data-deployment-detail": dep.name },
    h("td", { colspan: 5 }, detail)));
  return rows;
}

function rolloutLine(app, nowS) {
  const r = app.rollout;
  if (!r) return null;
  const when = r.ended_at ? ` · ended ${fmtDuration(nowS - r.ended_at)} ago` : "";
  return h("div", { class: "rollout", "data-rollout": app.name },
    h("span", { class: rolloutClass(r.state) }, r.state),
    ` rollout to ${r.to}: ${fmtPercent(r.weight_percent / 100)} of requests${when}`,
    r.message ? h("div", { class: "muted" }, r.message) : null);
}

function applicationCard(app, nowS, traffic) {
  const key = `app:${app.name}`;
  const config = app.deployed_app_config || {};
  const rate = ui.metrics.rates && ui.metrics.rates.app[app.name];
  const open = isOpen(key, true);
  const deployments = Object.values(app.deployments || {});
  return h("section", { class: "card application", "data-key": key, "data-app": app.name },
    h("div", { class: "card-head" },
      toggle(key, true, ""),
      h("h3", {}, app.name),
      h("span", { class: statusClass(app.status) }, app.status),
      h("span", { class: "muted" }, "route "), h("code", {}, app.route_prefix ?? "(none)"),
      config.import_path ? [h("span", { class: "muted" }, "import path "),
        h("code", {}, config.import_path)] : null,
      app.last_deployed_time_s ? h("span", { class: "muted" },
        `deployed ${fmtDuration(nowS - app.last_deployed_time_s)} ago`) : null),
    app.message ? h("div", { class: "message" }, app.message) : null,
    traffic && traffic.length ? h("div", { class: "traffic", "data-traffic": app.name },
      traffic.map((line) => h("div", {}, line))) : null,
    rolloutLine(app, nowS),
    metricsLine(rate),
    open ? h("table", { class: "deployments" },
      h("thead", {}, h("tr", {}, ["Deployment", "Status", "Replicas", "Traffic", ""].map((t) =>
        h("th", {}, t)))),
      h("tbody", {}, deployments.map((dep) => deploymentRows(app, dep, nowS)))) : null);
}

function systemSection(details) {
  const c = details.controller_info || {};
  const proxies = Object.values(details.proxies || {});
  return h("div", { id: "system" },
    h("h2", {}, "Controller"),
    h("section", { class: "card", id: "controller", "data-key": "controller" },
      h("div", { class: "card-head" },
        h("span", { class: "status ok" }, "ALIVE"),
        h("span", {}, c.actor_name || "controller"),
        h("span", { class: "muted" }, `node ${c.node_ip || ""} ${String(c.node_id || "").slice(0, 8)}`),
        h("span", { class: "muted" }, `pid ${c.worker_id || "–"}`),
        toggle("logs:controller", false, "logs")),
      h("div", { class: "muted mono" }, c.log_file_path || ""),
      isOpen("logs:controller", false) ? logPane("logs:controller") : null),
    h("h2", {}, `Proxies (${proxies.length})`),
    h("section", { class: "card", id: "proxies" }, proxies.length === 0
      ? h("span", { class: "muted" }, `none (proxy location ${details.proxy_location})`)
      : h("table", {},
        h("thead", {}, h("tr", {}, ["Node", "Status", "Worker", "Log file"].map((t) => h("th", {}, t)))),
        h("tbody", {}, proxies.map((p) => h("tr", { "data-key": `proxy:${p.node_id}` },
          h("td", { title: p.node_id }, p.node_ip, h("span", { class: "muted" },
            ` ${String(p.node_id || "").slice(0, 8)}`)),
          h("td", {}, h("span", { class: statusClass(p.status) }, p.status)),
          h("td", {}, p.worker_id || p.actor_name || "–"),
          h("td", { class: "mono" }, p.log_file_path || "")))))));
}

function render() {
  if (!document.getElementById("login").hidden) return;
  const root = document.getElementById("root");
  const nowS = Date.now() / 1000;
  const d = ui.details;
  const notes = d ? trafficNotes(d.applications) : {};
  const fresh = h("div", { id: "root" },
    ui.error ? h("div", { class: "banner error", id: "error" }, ui.error) : null,
    location.hash && !location.hash.startsWith("#/serve")
      ? h("div", { class: "banner" }, "Schooner's dashboard has the Serve page only.") : null,
    d ? [
      h("h2", {}, `Applications (${Object.keys(d.applications).length})`),
      h("div", { class: "metrics", id: "metrics-state" }, ui.metrics.note),
      Object.keys(d.applications).length === 0
        ? h("p", { class: "muted" }, "No applications are deployed.")
        : Object.values(d.applications).map((app) =>
          applicationCard(app, nowS, notes[app.name])),
      systemSection(d),
    ] : (ui.error ? null : h("p", { class: "muted" }, "Loading…")));
  // Log panes follow new lines, unless the reader scrolled up.
  const following = new Map();
  for (const pre of root.querySelectorAll("pre.logs")) {
    following.set(pre.dataset.logs, pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4);
  }
  morph(root, fresh);
  for (const pre of document.querySelectorAll("#root pre.logs")) {
    if (following.get(pre.dataset.logs) !== false) pre.scrollTop = pre.scrollHeight;
  }
}

// -- fetching ---------------------------------------------------------------------------

class AuthNeeded extends Error {}

async function getJSON(url) {
  const resp = await fetch(url, { cache: "no-store" });
  if (resp.status === 401 || resp.status === 403) throw new AuthNeeded();
  if (!resp.ok) {
    let text = await resp.text();
    try { text = JSON.parse(text).error || text; } catch (_) { /* plain text */ }
    throw new Error(`HTTP ${resp.status}: ${text}`);
  }
  return resp.json();
}

async function refreshMetrics() {
  const m = ui.metrics;
  let resp;
  try {
    resp = await fetch("metrics", { cache: "no-store" });
  } catch (err) {
    Object.assign(m, { state: "error", note: `metrics unavailable: ${err.message}` });
    return;
  }
  if (!resp.ok) {
    const note = resp.status === 404
      ? "metrics unavailable: this instance does not serve /metrics"
      : `metrics unavailable: HTTP ${resp.status}`;
    Object.assign(m, { state: "unavailable", note, summary: null, rates: null });
    return;
  }
  const summary = summarize(parsePrometheus(await resp.text()));
  const at = Date.now();
  const r = m.summary ? rates(m.summary, summary, (at - m.at) / 1000) : null;
  const window = m.summary ? ` over the last ${fmtNumber((at - m.at) / 1000)} s` : "";
  Object.assign(m, { state: "ok", note: `live metrics${window}`, summary, at, rates: r });
}

async function refreshLogs(key) {
  const url = key === "logs:controller"
    ? `api/schooner/controller/logs?lines=${LOG_LINES}`
    : `api/schooner/replicas/${encodeURIComponent(key.slice("logs:replica:".length))}/logs?lines=${LOG_LINES}`;
  try {
    ui.logs.set(key, { lines: (await getJSON(url)).lines });
  } catch (err) {
    if (err instanceof AuthNeeded) throw err;
    ui.logs.set(key, { error: err.message });
  }
}

function openLogPanes() {
  return [...ui.open].filter(([key, open]) => open && key.startsWith("logs:")).map(([key]) => key);
}

/** Stop tailing the logs of replicas that are gone (their panes went with them). */
function forgetGoneReplicas(details) {
  const live = new Set();
  for (const app of Object.values(details.applications || {})) {
    for (const dep of Object.values(app.deployments || {})) {
      for (const r of dep.replicas || []) live.add(`logs:replica:${r.replica_id}`);
    }
  }
  for (const key of [...ui.open.keys()]) {
    if (key.startsWith("logs:replica:") && !live.has(key)) {
      ui.open.delete(key);
      ui.logs.delete(key);
    }
  }
}

async function refresh() {
  try {
    const [details] = await Promise.all([
      getJSON("api/serve/applications/?include=traffic,rollout"),
      refreshMetrics(),
      ...openLogPanes().map(refreshLogs),
    ]);
    ui.details = details;
    ui.error = null;
    forgetGoneReplicas(details);
    document.getElementById("updated").textContent =
      `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
  } catch (err) {
    if (err instanceof AuthNeeded) {
      showLogin(true);
      return false;
    }
    ui.error = `Cannot reach the admin API: ${err.message}`;
  }
  render();
  return true;
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  if (await refresh()) timer = setTimeout(poll, POLL_MS);
}

function showLogin(show) {
  document.getElementById("login").hidden = !show;
  document.getElementById("root").hidden = show;
  if (show) document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = document.getElementById("token").value.trim();
  const resp = await fetch("api/authenticate", {
    method: "POST", headers: { Authorization: `Bearer ${token}` },
  });
  if (!resp.ok) {
    document.getElementById("login-error").textContent = "That token was not accepted.";
    return;
  }
  document.getElementById("login-error").textContent = "";
  document.getElementById("token").value = "";
  showLogin(false);
  poll();
}

function onClick(event) {
  const button = event.target.closest("[data-toggle]");
  if (!button) return;
  const key = button.getAttribute("data-toggle");
  const open = !isOpen(key, button.getAttribute("data-default") === "true");
  ui.open.set(key, open);
  render();
  if (open && key.startsWith("logs:")) refreshLogs(key).then(render, () => showLogin(true));
}

if (typeof document !== "undefined") {
  document.addEventListener("click", onClick);
  document.getElementById("login").addEventListener("submit", signIn);
  window.addEventListener("hashchange", render);
  poll();
}
