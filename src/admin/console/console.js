// lb operators' console: polls /status, differences successive readings for rates and latency
// percentiles, and sends drain/maint/ready changes to POST /pools/{pool}/servers/{name}.
"use strict";

const POLL_MS = 2000;
// Readings kept per server: rates cover the span between the oldest and the newest (about 10 s).
const HISTORY = 6;
const TOKEN_KEY = "lb-admin-token";

const history = new Map(); // "pool/server" -> [{t, answered, errors, latency}]
let bounds = [];
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showToken() {
  $("token-state").textContent = token() ? "A token is set for this tab." : "No token set.";
}

function say(text, ok) {
  const m = $("message");
  m.hidden = false;
  m.textContent = text;
  m.className = ok ? "ok" : "bad";
}

function fmtRate(r) {
  if (r === null) return "–";
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function fmtMs(ms) {
  if (ms === null) return "–";
  if (ms === Infinity) return "> " + fmtMs(bounds[bounds.length - 1]);
  return ms >= 1000 ? (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s" : ms + " ms";
}

function fmtLeft(ms) {
  const s = Math.ceil(ms / 1000);
  return s >= 60 ? Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s" : s + "s";
}

// The q quantile of the bucket counts between two readings, as its bucket's upper bound.
function quantile(older, newer, q) {
  const counts = newer.latency.map((n, i) => Math.max(0, n - (older.latency[i] || 0)));
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= rank) return i < bounds.length ? bounds[i] : Infinity;
  }
  return null;
}

function figures(key, now, traffic) {
  let h = history.get(key) || [];
  const reading = { t: now, answered: traffic.answered, errors: traffic.errors_5xx, latency: traffic.latency };
  // Counters only grow; a smaller one means the server was replaced: start over.
  if (h.length && h[h.length - 1].answered > reading.answered) h = [];
  h.push(reading);
  while (h.length > HISTORY) h.shift();
  history.set(key, h);
  const first = h[0];
  const secs = (reading.t - first.t) / 1000;
  if (h.length < 2 || secs <= 0) return { rate: null, share: null, p50: null, p99: null, secs: 0 };
  const answered = reading.answered - first.answered;
  return {
    rate: answered / secs,
    share: answered ? (reading.errors - first.errors) / answered : null,
    p50: quantile(first, reading, 0.5),
    p99: quantile(first, reading, 0.99),
    secs,
  };
}

function stateText(s) {
  switch (s.state) {
    case "ejected": return s.ejected_ms_left !== null ? "ejected (" + fmtLeft(s.ejected_ms_left) + " left)" : "ejected";
    case "warming": return "warming (" + Math.round(s.warmup_permille / 10) + "%)";
    default: return s.state;
  }
}

async function change(pool, server, state) {
  const verb = { drain: "Drain", maint: "Put in maintenance", ready: "Make ready" }[state];
  const what = { drain: "It takes no new requests (sticky sessions bound to it stay); requests in flight finish.",
    maint: "It takes no requests at all; health checks keep running.",
    ready: "It takes requests again." }[state];
  if (!window.confirm(verb + " server \u201c" + server + "\u201d of pool \u201c" + pool + "\u201d?\n" + what)) return;
  const headers = { "Content-Type": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  try {
    const resp = await fetch("/pools/" + encodeURIComponent(pool) + "/servers/" + encodeURIComponent(server), {
      method: "POST", headers, body: JSON.stringify({ state }), credentials: "omit", cache: "no-store",
    });
    const answer = await resp.json().catch(() => ({}));
    if (resp.ok) say(pool + "/" + server + " is now " + answer.state + ".", true);
    else if (resp.status === 401) say("Refused: " + (answer.error || "a token is needed") + ". Enter the admin token above.", false);
    else say("Refused (" + resp.status + "): " + (answer.error || resp.statusText), false);
  } catch (e) {
    say("Could not reach lb: " + e.message, false);
  }
  refresh();
}

function actionButton(pool, s, state, label) {
  const b = el("button", { type: "button", "data-action": state, "data-pool": pool, "data-server": s.name, textContent: label });
  b.disabled = s.admin === state;
  b.addEventListener("click", () => change(pool, s.name, state));
  return b;
}

function serverRow(pool, s, now) {
  const f = figures(pool + "/" + s.name, now, s.traffic);
  const cell = (label, value, cls) => el("td", { class: cls || "", "data-label": label }, value);
  // Value and its "override" mark share one span, so a phone's label/value layout keeps them together.
  const weight = el("span", {}, String(s.weight));
  if (s.override && s.override.weight !== null) weight.append(el("span", { class: "override", title: "runtime override; configured " + s.configured_weight }, "override"));
  const weightCell = cell("Weight", weight, "num");
  const state = el("span", {}, stateText(s));
  if (s.override && s.override.state) state.append(el("span", { class: "override", title: "set by an operator" }, "override"));
  const stateCell = cell("State", state, "state state-" + s.state.replace("+", "-"));
  const row = el("tr", { "data-server": s.name, "data-state": s.state },
    cell("Server", el("span", {}, el("strong", {}, s.name),
      s.backup ? el("span", { class: "override", title: "backup: gets requests only while no other server is healthy" }, "backup") : "",
      el("br"), el("span", { class: "muted mono" }, s.addr))),
    stateCell,
    weightCell,
    cell("In flight", s.in_flight, "num"),
    cell("Req/s", fmtRate(f.rate), "num"),
    cell("5xx", f.share === null ? "–" : (100 * f.share).toFixed(1) + "%", "num"),
    cell("p50", fmtMs(f.p50), "num"),
    cell("p99", fmtMs(f.p99), "num"),
    cell("Last check", s.last_check === "none" ? "–" : s.last_check),
    cell("", el("div", { class: "actions" },
      actionButton(pool, s, "drain", "Drain"), actionButton(pool, s, "maint", "Maint"), actionButton(pool, s, "ready", "Ready"))));
  return [row, f.secs];
}

function render(doc) {
  bounds = doc.latency_bounds_ms || [];
  const cfg = doc.config || {};
  $("generation").textContent = cfg.generation;
  $("file").textContent = cfg.file || "–";
  $("hash").textContent = cfg.hash;
  const last = cfg.last_reload;
  $("last-reload").textContent = !last ? "none since start"
    : new Date(last.at_unix * 1000).toLocaleString() + " (" + last.trigger + "): " + (last.error ? "refused: " + last.error : "ok");
  const pools = $("pools");
  const cards = [];
  let span = 0;
  for (const p of doc.pools) {
    const body = el("tbody");
    for (const s of p.servers) {
      const [row, secs] = serverRow(p.name, s, doc.now_unix_ms);
      span = Math.max(span, secs);
      body.append(row);
    }
    const head = el("thead", {}, el("tr", {}, ...["Server", "State", "Weight", "In flight", "Req/s", "5xx", "p50", "p99", "Last check", ""]
      .map((h, i) => el("th", { class: i >= 2 && i <= 7 ? "num" : "" }, h))));
    cards.push(el("section", { class: "card pool", "data-pool": p.name },
      el("div", { class: "pool-head" }, el("h2", {}, "Pool " + p.name),
        el("span", { class: "muted" }, p.strategy || ""),
        el("span", { class: "muted" }, "queued " + p.queued + " · ejected " + p.ejected)),
      el("table", { class: "servers" }, head, body)));
  }
  pools.replaceChildren(...cards);
  $("window").textContent = span ? Math.round(span) + " s" : "next few seconds";
  const certs = doc.certificates || [];
  $("certs").hidden = certs.length === 0;
  $("cert-rows").replaceChildren(...certs.map((c) => {
    const days = Math.floor((c.not_after_unix * 1000 - doc.now_unix_ms) / 86400000);
    return el("tr", {}, el("td", {}, c.listener), el("td", { class: "mono" }, c.file), el("td", {}, c.names.join(", ")),
      el("td", { class: days < 14 ? "state-down" : "" }, new Date(c.not_after_unix * 1000).toISOString().slice(0, 10) + " (" + days + " days)"));
  }));
}

async function refresh() {
  clearTimeout(timer);
  try {
    const resp = await fetch("/status", { cache: "no-store" });
    if (!resp.ok) throw new Error("status " + resp.status);
    render(await resp.json());
    $("conn").textContent = "live";
    $("conn").className = "pill ok";
  } catch (e) {
    $("conn").textContent = "unreachable";
    $("conn").className = "pill bad";
  }
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    showToken();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
  });
  showToken();
  refresh();
});
