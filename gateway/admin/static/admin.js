// authgate admin page: plain DOM, no framework, no build step.
// Every value from the server is inserted as text (textContent / text nodes), never as HTML.
// The token lives in sessionStorage (this tab only) and travels as a bearer header, so the
// browser never attaches a credential to a request on its own (no CSRF by construction).
"use strict";

const TOKEN_KEY = "authgate.admin.token";
const PAGE = 20;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY);
let isAdmin = false; // learnt from /v1/stats (admin only) when the dashboard loads

// --- small helpers --------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

const when = (iso) => (iso ? iso.replace("T", " ").replace("Z", " UTC") : "never");

function flash(message, kind = "ok") {
  const box = $("flash");
  box.textContent = message;
  box.className = kind;
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error_description) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.status === 401 && path !== "/v1/tokens?limit=1") {
    signOut("Your token was refused: sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function guarded(action) {
  try {
    await action();
  } catch (err) {
    flash(err.message, "error");
  }
}

async function download(path, filename) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token}`, Accept: "text/csv" }, credentials: "omit",
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A modal confirmation; `fields` are extra inputs whose values are returned on OK.
function confirmAction(text, fields = []) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  const extra = $("confirm-extra");
  extra.replaceChildren();
  const inputs = {};
  for (const f of fields) {
    const id = `confirm-${f.name}`;
    inputs[f.name] = el("input", { id, value: f.value ?? "", type: f.type ?? "text" });
    extra.append(el("label", { htmlFor: id }, f.label), inputs[f.name]);
  }
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") return resolve(null);
      const values = {};
      for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
      resolve(values);
    }, { once: true });
  });
}

// One cursor-paged table (tokens, audit log): its filter form, Previous/Next and CSV export.
function pager(name, path, filters, row) {
  const state = { cursors: [null], index: 0 };
  async function load(reset = false) {
    if (reset) Object.assign(state, { cursors: [null], index: 0 });
    const params = filters();
    params.set("limit", PAGE);
    const cursor = state.cursors[state.index];
    if (cursor) params.set("cursor", cursor);
    await guarded(async () => {
      const page = await api("GET", `${path}?${params}`);
      state.cursors[state.index + 1] = page.next_cursor;
      $(`${name}-prev`).disabled = state.index === 0;
      $(`${name}-next`).disabled = !page.next_cursor;
      $(`${name}-table`).tBodies[0].replaceChildren(...page.items.map(row));
    });
  }
  const step = (by) => () => {
    state.index = Math.max(0, state.index + by);
    load();
  };
  const csv = () => guarded(() => {
    const params = filters();
    params.set("format", "csv");
    return download(`${path}?${params}`, `${name}.csv`);
  });
  function wire(form) {
    if (form) {
      $(form).addEventListener("submit", (e) => {
        e.preventDefault();
        load(true);
      });
    }
    $(`${name}-prev`).addEventListener("click", step(-1));
    $(`${name}-next`).addEventListener("click", step(1));
    if ($(`${name}-csv`)) $(`${name}-csv`).addEventListener("click", csv);
  }
  return { load, wire };
}

// --- session and views ----------------------------------------------------------------------

function show(view) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const tab of document.querySelectorAll("#nav .tab")) {
    tab.classList.toggle("current", tab.dataset.view === view);
  }
  ({ dashboard: loadStats, tokens: () => tokenTable.load(), events: () => eventTable.load(),
    alerts: () => alertTable.load(), subjects: () => subjectTable.load() }[view] ||
    (() => {}))();
}

// Views of APIs this gateway serves only (alerts, suspension): read from its OpenAPI document,
// so the page works the same against a gateway with or without them.
let apiPaths = new Set();

async function detectFeatures() {
  try {
    const response = await fetch("/openapi.json", { credentials: "omit", cache: "no-store" });
    apiPaths = new Set(Object.keys((await response.json()).paths || {}));
  } catch (err) {
    apiPaths = new Set();
  }
  for (const node of document.querySelectorAll("[data-needs]")) {
    node.hidden = !apiPaths.has(node.dataset.needs);
  }
}

const has = (path) => apiPaths.has(path);

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("nav").hidden = true;
  $("secret-value").textContent = "";
  $("secret-panel").hidden = true;
  show("signin");
  if (message) flash(message, "error");
}

async function signIn(candidate) {
  token = candidate;
  try {
    await api("GET", "/v1/tokens?limit=1");
  } catch (err) {
    token = null;
    const box = $("signin-error");
    box.textContent = err.status === 403 ? "This token may not use the admin API." : err.message;
    box.hidden = false;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("signin-error").hidden = true;
  $("signin-token").value = "";
  await detectFeatures();
  $("nav").hidden = false;
  show("dashboard");
}

// --- dashboard ------------------------------------------------------------------------------

async function loadStats() {
  let stats;
  loadExpiring();
  try {
    stats = await api("GET", "/v1/stats");
  } catch (err) {
    $("stats").replaceChildren(el("p", { class: "hint" }, err.message));
    isAdmin = false;
    // the rest of the dashboard, and suspension, are the operator's (admin only)
    for (const id of ["outcomes-card", "top-subjects", "recent-alerts", "dash-suspended"]) {
      $(id).closest(".card").hidden = true;
    }
    document.querySelector('#nav [data-view="subjects"]').hidden = true;
    return;
  }
  isAdmin = true;
  $("outcomes-card").hidden = false;
  $("top-subjects").closest(".card").hidden = false;
  loadOutcomes();
  if (has("/v1/alerts")) loadRecentAlerts();
  if (has("/v1/subjects/suspended")) loadDashSuspended();
  const cards = [["Active", stats.active, "active"], ["Revoked", stats.revoked, "revoked"],
    ["Expired", stats.expired, "expired"], ["Total", stats.total, ""],
    ["Created (24 h)", stats.created_24h, ""], ["Used (24 h)", stats.used_24h, ""]];
  $("stats").replaceChildren(...cards.map(([label, value, kind]) =>
    el("div", { class: `stat ${kind}`, "data-stat": label },
      el("span", { class: "value" }, value), el("span", { class: "label" }, label))));
  const rows = stats.top_subjects.map((row) =>
    el("tr", {}, el("td", {}, row.subject), el("td", {}, row.active)));
  $("top-subjects").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colSpan: 2, class: "hint" }, "No active tokens."))]));
}

// Requests by outcome per hour: stacked bars, hand-drawn SVG. Outcome names become CSS classes
// only from this closed list (anything else a newer replica wrote is drawn as "other").
const OUTCOME_ORDER = ["ok", "no_credential", "invalid_token", "insufficient_scope",
  "rate_limited", "credits_exhausted", "unavailable", "upstream_error", "upstream_timeout",
  "bad_request", "invalid_request"];

async function loadOutcomes() {
  let data;
  try {
    data = await api("GET", "/v1/stats/outcomes?hours=24");
  } catch (err) {
    $("outcome-legend").replaceChildren(el("li", { class: "hint" }, err.message));
    return;
  }
  drawOutcomes(data.hours);
}

function drawOutcomes(hours) {
  const chart = $("outcome-chart");
  const totals = {};
  for (const h of hours) {
    for (const [name, n] of Object.entries(h.outcomes)) totals[name] = (totals[name] || 0) + n;
  }
  const names = [...OUTCOME_ORDER.filter((n) => n in totals),
    ...Object.keys(totals).filter((n) => !OUTCOME_ORDER.includes(n)).sort()];
  const css = (name) => (OUTCOME_ORDER.includes(name) ? `o-${name}` : "o-other");
  const max = Math.max(1, ...hours.map((h) => Object.values(h.outcomes).reduce((a, b) => a + b,
    0)));
  const top = 14;
  const bottom = 160;
  const width = 720 / hours.length;
  const bars = hours.map((h, i) => {
    const group = svg("g", { "data-hour": h.hour });
    let y = bottom;
    for (const name of names) {
      const n = h.outcomes[name] || 0;
      if (!n) continue;
      const height = (n / max) * (bottom - top);
      y -= height;
      const rect = svg("rect", { x: i * width + 1, y, width: width - 2,
        height: Math.max(height, 0.5), class: `seg ${css(name)}`, "data-outcome": name });
      const title = svg("title", {});
      title.textContent = `${when(h.hour)}: ${name} ${n}`;
      rect.append(title);
      group.append(rect);
    }
    return group;
  });
  const hourLabel = (iso) => iso.slice(11, 16);
  const labels = [chartLabel(2, 10, `max ${max}/hour`)];
  for (let i = 0; i < hours.length; i += 6) {
    labels.push(chartLabel(i * width + 1, 174, hourLabel(hours[i].hour)));
  }
  labels.push(chartLabel(720, 174, `${hourLabel(hours[hours.length - 1].hour)} (now)`, "end"));
  chart.replaceChildren(...labels, ...bars,
    svg("line", { x1: 0, y1: bottom + 0.5, x2: 720, y2: bottom + 0.5, class: "axis" }));
  const all = names.reduce((n, name) => n + totals[name], 0);
  chart.setAttribute("aria-label", `Requests by outcome per hour, last ${hours.length} hours: ` +
    (names.map((name) => `${name} ${totals[name]}`).join(", ") || "none"));
  $("outcome-legend").replaceChildren(...(all ? names.map((name) =>
    el("li", { "data-outcome": name, class: totals[name] ? "" : "zero" }, el("span", { class: `swatch ${css(name)}` }),
      el("span", { class: "name" }, name), " ", el("span", { class: "count" }, totals[name])))
    : [el("li", { class: "hint" }, "No requests in the last 24 hours.")]));
}

function untilText(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (ms <= 0) return "expired";
  const hours = ms / 3600000;
  return hours < 24 ? `${Math.max(1, Math.floor(hours))} h` : `${Math.floor(hours / 24)} d`;
}

const EXPIRING_SHOWN = 10;

async function loadExpiring() {
  const body = $("expiring").tBodies[0];
  let page;
  try {
    page = await api("GET", "/v1/tokens?status=active&expires_before=30d&limit=100");
  } catch (err) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 4, class: "hint" }, err.message)));
    return;
  }
  const sorted = [...page.items].sort((a, b) => Date.parse(a.expires_at) -
    Date.parse(b.expires_at));
  const items = sorted.slice(0, EXPIRING_SHOWN);
  body.replaceChildren(...(items.length ? items.map((t) => el("tr", { "data-token-id": t.id },
    el("td", {}, t.name), el("td", {}, t.subject), el("td", {}, when(t.expires_at)),
    el("td", {}, untilText(t.expires_at))))
    : [el("tr", {}, el("td", { colSpan: 4, class: "hint" }, "None."))]));
  const more = sorted.length - items.length;
  $("expiring-more").hidden = !more && !page.next_cursor;
  $("expiring-more").textContent = page.next_cursor
    ? `The soonest ${items.length} of the newest 100 are shown; more expire within 30 days.`
    : `${more} more expire within 30 days (Tokens: Expiring within 30 days).`;
}

async function loadRecentAlerts() {
  const body = $("recent-alerts").tBodies[0];
  await guarded(async () => {
    const page = await api("GET", "/v1/alerts?limit=5");
    body.replaceChildren(...(page.items.length ? page.items.map((a) => el("tr", {},
      el("td", {}, when(a.raised_at)), el("td", {}, severity(a.severity)), el("td", {}, a.kind),
      el("td", {}, a.message)))
      : [el("tr", {}, el("td", { colSpan: 4, class: "hint" }, "No alerts."))]));
  });
}

async function loadDashSuspended() {
  const body = $("dash-suspended").tBodies[0];
  await guarded(async () => {
    const page = await api("GET", "/v1/subjects/suspended?limit=10");
    body.replaceChildren(...(page.items.length ? page.items.map((s) => el("tr", {},
      el("td", {}, s.subject), el("td", {}, when(s.suspended_at)), el("td", {}, s.reason || "-")))
      : [el("tr", {}, el("td", { colSpan: 3, class: "hint" }, "None."))]));
  });
}

// --- tokens ---------------------------------------------------------------------------------

function badge(status) {
  const label = status.charAt(0).toUpperCase() + status.slice(1);
  return el("span", { class: `badge badge-${status}` }, label);
}

function tokenFilters() {
  const params = new URLSearchParams();
  const subject = $("filter-subject").value.trim();
  const status = $("filter-status").value;
  if (subject) params.set("subject", subject);
  if (status) params.set("status", status);
  const expiring = $("filter-expiring").value;
  if (expiring) params.set("expires_before", expiring);
  return params;
}

function tokenRow(t) {
  const active = t.status === "active";
  const actions = el("td", { class: "actions" },
    el("button", { type: "button", onclick: () => openDetail(t.id) }, "Details"),
    el("button", { type: "button", disabled: !active, onclick: () => rotate(t) }, "Rotate"),
    el("button", { type: "button", class: "danger", disabled: !active,
      onclick: () => revoke(t) }, "Revoke"));
  return el("tr", { "data-token-id": t.id },
    el("td", {}, t.name), el("td", {}, t.subject), el("td", {}, badge(t.status)),
    el("td", {}, el("code", {}, t.hint)), el("td", {}, t.scopes.join(" ") || "-"),
    el("td", {}, when(t.expires_at)), el("td", {}, when(t.last_used_at)), actions);
}

function showSecret(secret) {
  $("secret-value").textContent = secret;
  $("secret-panel").hidden = false;
  $("secret-panel").scrollIntoView({ block: "nearest" });
}

async function createToken(event) {
  event.preventDefault();
  const body = {
    subject: $("create-subject").value.trim(),
    name: $("create-name").value.trim(),
    scopes: $("create-scopes").value.split(/\s+/).filter(Boolean),
  };
  const role = $("create-role").value.trim();
  const expires = $("create-expires").value.trim();
  const rate = $("create-rate").value.trim();
  if (role) body.role = role;
  if (expires) body.expires_in = expires;
  if (rate) body.rate_limit = rate;
  await guarded(async () => {
    body.metadata = metadataFrom($("create-metadata").value);
    const created = await api("POST", "/v1/tokens", body);
    $("create-form").reset();
    $("create-card").open = false;
    showSecret(created.token);
    flash(`Created ${created.id} for ${created.subject}.`);
    await tokenTable.load(true);
  });
}

// "key=value" lines -> an object, as the CLI's repeated --metadata key=value.
function metadataFrom(text) {
  const metadata = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`metadata: "${line}" is not key=value`);
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return metadata;
}

async function revoke(t) {
  const answer = await confirmAction(`Revoke "${t.name}" (${t.id}) of ${t.subject}? ` +
    "Requests with it are refused at once.", [{ name: "reason", label: "Reason" }]);
  if (!answer) return;
  await guarded(async () => {
    await api("POST", `/v1/tokens/${encodeURIComponent(t.id)}/revoke`,
      answer.reason ? { reason: answer.reason } : {});
    flash(`Revoked ${t.id}.`);
    await tokenTable.load();
  });
}

async function rotate(t) {
  const answer = await confirmAction(`Rotate "${t.name}" (${t.id})? A new secret is issued; ` +
    "the old one keeps working for the grace period.",
  [{ name: "grace", label: "Grace period in seconds", value: "3600", type: "number" }]);
  if (!answer) return;
  await guarded(async () => {
    const rotated = await api("POST", `/v1/tokens/${encodeURIComponent(t.id)}/rotate`,
      { grace_s: Number(answer.grace || 0) });
    showSecret(rotated.token);
    flash(`Rotated ${t.id}: the new token is ${rotated.id}.`);
    await tokenTable.load();
  });
}

async function openDetail(id) {
  await guarded(async () => {
    const [t, usage] = await Promise.all([
      api("GET", `/v1/tokens/${encodeURIComponent(id)}`),
      api("GET", `/v1/tokens/${encodeURIComponent(id)}/usage?days=30`)]);
    $("detail-title").textContent = `${t.name} (${t.id})`;
    const fields = [["Subject", t.subject], ["Status", badge(t.status)], ["Family", t.family],
      ["Scopes", t.scopes.join(" ") || "-"], ["Created", when(t.created_at)],
      ["Expires", when(t.expires_at)], ["Last used", when(t.last_used_at)],
      ["Last address", t.last_used_ip || "-"], ["Requests", t.usage_count],
      ["Rate limit", rateLimitText(t.rate_limit)],
      ...(t.credits ? [["Credits", creditsText(t.credits)]] : []),
      ["Metadata", Object.entries(t.metadata).map(([k, v]) => `${k}=${JSON.stringify(v)}`)
        .join(", ") || "-"],
      ["Rotated from", t.rotated_from || "-"], ["Grace until", t.grace_until ? when(t.grace_until)
        : "-"], ["Revoked", t.revoked_at ? `${when(t.revoked_at)} (${t.revoked_reason})` : "-"]];
    $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k),
      el("dd", {}, v)]));
    drawChart(usage.days);
    $("detail-ips").replaceChildren(...(usage.last_ips.length ? usage.last_ips.map((ip) =>
      el("li", {}, `${ip.ip}: ${ip.requests} request(s), last ${when(ip.last_seen_at)}`))
      : [el("li", {}, "none yet")]));
    $("detail-family").onclick = () => revokeFamily(t);
    $("detail-edit").onclick = () => editToken(t);
    $("detail-edit").disabled = t.status !== "active";
    $("edit-slot").replaceChildren();
    await showSuspension(t);
    $("detail-delete").onclick = () => deleteToken(t);
    $("token-detail").hidden = false;
    $("token-detail").scrollIntoView({ block: "nearest" });
  });
}

// --- rate limits, credits, token editing ----------------------------------------------------

const UNIT_OF = { 1: "second", 60: "minute", 3600: "hour", 86400: "day" };
const WINDOW_OF = { second: 1, minute: 60, hour: 3600, day: 86400 };

// {limit, window_s} -> "100 per 60 s"; a list of named limits (SPEC §13) -> each by name.
// The detail's suspend / resume button, with the subject's state (admin callers only).
async function showSuspension(t) {
  const button = $("detail-suspend");
  button.hidden = !(isAdmin && has("/v1/subjects/suspended"));
  if (button.hidden) return;
  const state = await api("GET", `/v1/subjects/${encodeURIComponent(t.subject)}/suspension`);
  $("detail-fields").append(el("dt", {}, "Subject state"), el("dd", {}, state.suspended
    ? `suspended since ${when(state.suspended_at)}${state.reason ? ` (${state.reason})` : ""}`
    : "not suspended"));
  button.textContent = state.suspended ? "Resume subject" : "Suspend subject";
  button.onclick = async () => {
    const change = state.suspended ? resumeSubject : suspendSubject;
    if (await change(t.subject)) await openDetail(t.id);
  };
}

function rateLimitText(rate) {
  if (!rate) return "default";
  if (Array.isArray(rate)) {
    return rate.map((l) => `${l.name}: ${l.limit} per ${l.window_s} s`).join("; ");
  }
  return `${rate.limit} per ${rate.window_s} s`;
}

function creditsText(credits) {
  const refill = credits.refill ? `, refill ${credits.refill.amount} per ` +
    `${credits.refill.interval}` : "";
  return `${credits.remaining} remaining${refill}`;
}

// The edit field's text for a rate limit, read back by parseRate.
function rateInput(rate) {
  const one = (l) => (UNIT_OF[l.window_s] ? `${l.limit}/${UNIT_OF[l.window_s]}`
    : `${l.limit} per ${l.window_s} s`);
  if (!rate) return "";
  return Array.isArray(rate) ? rate.map((l) => `${l.name}=${one(l)}`).join(" ") : one(rate);
}

// "100/minute" (sent as typed: the API parses it), "10 per 5 s", "burst=10/second
// hourly=1000/hour" (named limits); empty: the default. Anything else goes to the API as typed,
// so its refusal names the field.
function parseRate(text) {
  const value = text.trim();
  if (!value) return null;
  const per = /^(\d{1,10})\s*per\s*(\d{1,9})\s*s$/.exec(value);
  if (per) return { limit: Number(per[1]), window_s: Number(per[2]) };
  if (!value.includes("=")) return value;
  return value.split(/[\s,]+/).filter(Boolean).map((part) => {
    const m = /^([^=]+)=(\d{1,10})\/(second|minute|hour|day)$/.exec(part);
    if (!m) throw new Error(`rate_limit: "${part}" is not name=N/unit (e.g. burst=10/second)`);
    return { name: m[1], limit: Number(m[2]), window_s: WINDOW_OF[m[3]] };
  });
}

function editToken(t) {
  const field = (id, label, value) => [el("label", { htmlFor: id }, label),
    el("input", { id, value: value ?? "" })];
  const error = el("p", { id: "edit-error", class: "error", role: "alert", hidden: true });
  const initial = { name: t.name, scopes: t.scopes.join(" "), rate: rateInput(t.rate_limit),
    expires: t.expires_at || "" };
  const form = el("form", { id: "edit-form", class: "edit card" },
    el("h4", {}, "Edit token"),
    ...field("edit-name", "Token name", initial.name),
    ...field("edit-scopes", "Token scopes (space-separated)", initial.scopes),
    ...field("edit-rate", "Token rate limit (100/minute, 10 per 5 s, burst=10/second " +
      "hourly=1000/hour; empty: the default)", initial.rate),
    ...field("edit-expires", "Token expiry (RFC 3339, e.g. 2027-01-31T00:00:00Z; empty: never)",
      initial.expires),
    error,
    el("button", { type: "submit" }, "Save changes"),
    el("button", { type: "button", onclick: () => form.remove() }, "Discard"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const now = { name: $("edit-name").value.trim(), scopes: $("edit-scopes").value.trim(),
      rate: $("edit-rate").value.trim(), expires: $("edit-expires").value.trim() };
    const body = {};
    try {
      if (now.name !== initial.name) body.name = now.name;
      if (now.scopes !== initial.scopes) body.scopes = now.scopes.split(/\s+/).filter(Boolean);
      if (now.rate !== initial.rate) body.rate_limit = parseRate(now.rate);
      if (now.expires !== initial.expires) body.expires_at = now.expires || null;
      if (!Object.keys(body).length) {
        flash("Nothing changed.");
        return;
      }
      await api("PATCH", `/v1/tokens/${encodeURIComponent(t.id)}`, body);
    } catch (err) {
      error.textContent = err.status ? `${err.status}: ${err.message}` : err.message;
      error.hidden = false;
      return;
    }
    flash(`Saved ${Object.keys(body).join(", ")} of ${t.id}.`);
    await openDetail(t.id);
    await tokenTable.load();
  });
  $("edit-slot").replaceChildren(form);
  $("edit-name").focus();
}


function chartLabel(x, y, text, anchor = "start") {
  const label = svg("text", { x, y, class: "label", "text-anchor": anchor });
  label.textContent = text;
  return label;
}

function drawChart(days) {
  const chart = $("usage-chart");
  const max = Math.max(1, ...days.map((d) => d.requests));
  const width = 300 / days.length;
  const labels = [chartLabel(2, 8, `max ${max}/day`),
    chartLabel(0, 88, days[0].day), chartLabel(300, 88, days[days.length - 1].day, "end")];
  chart.replaceChildren(...labels, ...days.map((d, i) => {
    const height = Math.round((d.requests / max) * 70);
    const bar = svg("rect", { x: i * width + 1, y: 75 - height, width: width - 2,
      height: Math.max(height, 0.5), class: "bar" });
    const title = svg("title", {});
    title.textContent = `${d.day}: ${d.requests}`;
    bar.append(title);
    return bar;
  }), svg("line", { x1: 0, y1: 75.5, x2: 300, y2: 75.5, class: "axis" }));
  chart.setAttribute("aria-label", `Requests per day, ${days[0].day} to ` +
    `${days[days.length - 1].day}: ${days.reduce((n, d) => n + d.requests, 0)} in all`);
}

async function revokeFamily(t) {
  const answer = await confirmAction(`Revoke every active token of family ${t.family}?`,
    [{ name: "reason", label: "Reason" }]);
  if (!answer) return;
  await guarded(async () => {
    const done = await api("POST", `/v1/families/${encodeURIComponent(t.family)}/revoke`,
      answer.reason ? { reason: answer.reason } : {});
    flash(`Revoked ${done.revoked} token(s) of ${t.family}.`);
    await openDetail(t.id);
    await tokenTable.load();
  });
}

async function deleteToken(t) {
  if (!await confirmAction(`Delete the record of ${t.id}? The token stops working.`)) return;
  await guarded(async () => {
    await api("DELETE", `/v1/tokens/${encodeURIComponent(t.id)}`);
    $("token-detail").hidden = true;
    flash(`Deleted ${t.id}.`);
    await tokenTable.load();
  });
}

// --- audit log ------------------------------------------------------------------------------

function eventParams() {
  const params = new URLSearchParams();
  for (const [key, id] of [["token_id", "events-token"], ["subject", "events-subject"],
    ["type", "events-type"], ["since", "events-since"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

function eventRow(e) {
  return el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.type),
    el("td", {}, e.token_id || "-"), el("td", {}, e.subject || "-"), el("td", {}, e.actor),
    el("td", {}, e.ip || "-"),
    el("td", { class: "details" }, Object.keys(e.details).length ? JSON.stringify(e.details)
      : ""));
}

// --- alerts ---------------------------------------------------------------------------------

const SEVERITIES = ["critical", "high", "medium", "low", "info"];

function severity(value) {
  const known = SEVERITIES.includes(value) ? value : "info";
  return el("span", { class: `badge sev-${known}`, "data-severity": value }, value);
}

function alertParams() {
  const params = new URLSearchParams();
  for (const [key, id] of [["kind", "alerts-kind"], ["subject", "alerts-subject"],
    ["token_id", "alerts-token"], ["since", "alerts-since"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

function alertRow(a) {
  const extra = { ...(a.details || {}) };
  if (a.threshold !== undefined && a.threshold !== null) extra.threshold = a.threshold;
  if (a.window !== undefined && a.window !== null) extra.window = a.window;
  return el("tr", { "data-alert-id": a.id }, el("td", {}, when(a.raised_at)),
    el("td", {}, severity(a.severity)), el("td", {}, a.kind), el("td", {}, a.message),
    el("td", {}, a.token_id || "-"), el("td", {}, a.subject || "-"), el("td", {}, a.ip || "-"),
    el("td", { class: "details" }, Object.keys(extra).length ? JSON.stringify(extra) : ""));
}

// --- subjects (suspension) ------------------------------------------------------------------

function subjectRow(s) {
  return el("tr", { "data-subject": s.subject }, el("td", {}, s.subject),
    el("td", {}, when(s.suspended_at)), el("td", {}, s.reason || "-"), el("td", {}, s.actor || "-"),
    el("td", { class: "actions" }, el("button", { type: "button",
      onclick: () => resumeSubject(s.subject) }, "Resume")));
}

async function setSuspended(subject, suspend, reason) {
  const verb = suspend ? "suspend" : "resume";
  const done = await api("POST", `/v1/subjects/${encodeURIComponent(subject)}/${verb}`,
    reason ? { reason } : {});
  flash(done.suspended ? `Suspended ${subject}: its tokens are refused.`
    : `Resumed ${subject}: its tokens work again.`);
  return done;
}

async function suspendSubject(subject) {
  const answer = await confirmAction(`Suspend subject "${subject}"? Every token of it is ` +
    "refused until it is resumed; nothing is revoked.", [{ name: "reason", label: "Reason" }]);
  if (!answer) return false;
  let ok = false;
  await guarded(async () => {
    await setSuspended(subject, true, answer.reason);
    ok = true;
  });
  return ok;
}

async function resumeSubject(subject) {
  const answer = await confirmAction(`Resume subject "${subject}"? Its tokens work again.`,
    [{ name: "reason", label: "Reason" }]);
  if (!answer) return false;
  let ok = false;
  await guarded(async () => {
    await setSuspended(subject, false, answer.reason);
    ok = true;
    await subjectTable.load();
  });
  return ok;
}

async function suspendForm(event, suspend) {
  if (event) event.preventDefault();
  const subject = $("suspend-subject").value.trim();
  const reason = $("suspend-reason").value.trim();
  if (!subject) {
    flash("subject: is required", "error");
    return;
  }
  await guarded(async () => {
    await setSuspended(subject, suspend, reason);
    $("suspend-form").reset();
    await subjectTable.load(true);
  });
}

const tokenTable = pager("tokens", "/v1/tokens", tokenFilters, tokenRow);
const eventTable = pager("events", "/v1/events", eventParams, eventRow);
const alertTable = pager("alerts", "/v1/alerts", alertParams, alertRow);
const subjectTable = pager("subjects", "/v1/subjects/suspended", () => new URLSearchParams(),
  subjectRow);

// --- bulk actions ---------------------------------------------------------------------------

async function revokeSubject(event) {
  event.preventDefault();
  const subject = $("subject-revoke-subject").value.trim();
  const reason = $("subject-revoke-reason").value.trim();
  if (!await confirmAction(`Revoke every active token of subject "${subject}"?`)) return;
  await guarded(async () => {
    const done = await api("POST", `/v1/subjects/${encodeURIComponent(subject)}/revoke`,
      reason ? { reason } : {});
    flash(`Revoked ${done.revoked} token(s) of ${subject}.`);
    $("subject-revoke-form").reset();
  });
}

async function cleanup(event) {
  event.preventDefault();
  const days = Number($("cleanup-days").value);
  if (!await confirmAction(`Delete records revoked or expired more than ${days} day(s) ago?`)) {
    return;
  }
  await guarded(async () => {
    const done = await api("POST", "/v1/cleanup", { older_than_s: days * 86400 });
    flash(`Deleted ${done.deleted} record(s).`);
  });
}

async function revokeAll(event) {
  event.preventDefault();
  const reason = $("revoke-all-reason").value.trim();
  const answer = await confirmAction("Revoke EVERY active token? Type REVOKE ALL to confirm.",
    [{ name: "typed", label: "Confirmation" }]);
  if (!answer || answer.typed !== "REVOKE ALL") return;
  await guarded(async () => {
    const done = await api("POST", "/v1/revoke-all", { confirm: true, reason });
    flash(`Revoked ${done.revoked} token(s).`);
    $("revoke-all-form").reset();
  });
}

// --- wiring ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("signin-token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll("#nav .tab")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }
  $("create-form").addEventListener("submit", createToken);
  $("secret-copy").addEventListener("click", () => {
    const value = $("secret-value").textContent;
    navigator.clipboard.writeText(value).then(() => flash("Copied to the clipboard."),
      () => {
        getSelection().selectAllChildren($("secret-value"));
        flash("Select and copy the secret by hand.", "error");
      });
  });
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close("cancel"));
  $("secret-done").addEventListener("click", () => {
    $("secret-value").textContent = "";
    $("secret-panel").hidden = true;
  });
  tokenTable.wire("token-filters");
  eventTable.wire("event-filters");
  alertTable.wire("alert-filters");
  subjectTable.wire(null);
  $("suspend-form").addEventListener("submit", (e) => suspendForm(e, true));
  $("resume-submit").addEventListener("click", () => suspendForm(null, false));
  $("detail-close").addEventListener("click", () => { $("token-detail").hidden = true; });
  $("subject-revoke-form").addEventListener("submit", revokeSubject);
  $("cleanup-form").addEventListener("submit", cleanup);
  $("revoke-all-form").addEventListener("submit", revokeAll);
  if (token) signIn(token); else show("signin");
});
