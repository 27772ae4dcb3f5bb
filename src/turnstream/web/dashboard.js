// turnstream dashboard: reads AnalyticsService over native JSON (POST /v1/dashboard:get,
// GET /v1/executions/{id}) and draws every chart as plain SVG — no library, no build step.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const COLORS = { completed: "#16a34a", failed: "#dc2626", running: "#2563eb", pending: "#d97706" };
const PALETTE = ["#7c3aed", "#2563eb", "#0891b2", "#16a34a", "#d97706", "#dc2626", "#db2777", "#4b5563"];
const num = (v) => Number(v || 0);
const fmt = (v, d = 0) => num(v).toLocaleString("en-US", { maximumFractionDigits: d });
const ms = (v) => (num(v) >= 60000 ? fmt(num(v) / 60000, 1) + " min" : fmt(num(v) / 1000, 1) + " s");
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(target, width, height) {
  const root = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  target.replaceChildren(root);
  return root;
}

function empty(target) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = "no data in this range";
  target.replaceChildren(p);
}

// Vertical bars, stacked by series: rows = [{label, values: {series: n}}].
function stacked(target, rows, series, colors) {
  if (!rows.length) return empty(target);
  const W = 880, H = 240, L = 40, B = 24;
  const root = svg(target, W, H);
  const max = Math.max(1, ...rows.map((r) => series.reduce((s, k) => s + num(r.values[k]), 0)));
  const step = (W - L) / rows.length, bar = Math.max(2, step * 0.7);
  for (let g = 0; g <= 4; g++) {
    const y = H - B - ((H - B - 10) * g) / 4;
    root.append(el("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#e5e7eb" }));
    root.append(el("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, fmt((max * g) / 4)));
  }
  rows.forEach((r, i) => {
    let y = H - B;
    const x = L + i * step + (step - bar) / 2;
    for (const k of series) {
      const h = ((H - B - 10) * num(r.values[k])) / max;
      if (h > 0) {
        const rect = el("rect", { x, y: y - h, width: bar, height: h, fill: colors[k], "data-value": num(r.values[k]) });
        rect.append(el("title", {}, `${r.label} ${k}: ${fmt(r.values[k])}`));
        root.append(rect);
      }
      y -= h;
    }
    if (rows.length <= 16 || i % Math.ceil(rows.length / 12) === 0) {
      root.append(el("text", { x: x + bar / 2, y: H - 6, "text-anchor": "middle" }, r.label));
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.innerHTML = series.map((k) => `<span><i style="background:${colors[k]}"></i>${k}</span>`).join("");
  target.append(legend);
}

// A line over time, values in [0, 100].
function line(target, points) {
  if (!points.length) return empty(target);
  const W = 440, H = 200, L = 36, B = 22;
  const root = svg(target, W, H);
  const x = (i) => L + (points.length === 1 ? (W - L) / 2 : ((W - L - 10) * i) / (points.length - 1));
  const y = (v) => H - B - ((H - B - 10) * v) / 100;
  for (const g of [0, 50, 100]) {
    root.append(el("line", { x1: L, x2: W, y1: y(g), y2: y(g), stroke: "#e5e7eb" }));
    root.append(el("text", { x: L - 6, y: y(g) + 4, "text-anchor": "end" }, g + "%"));
  }
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
  root.append(el("path", { d, fill: "none", stroke: "#16a34a", "stroke-width": 2 }));
  points.forEach((p, i) => {
    const c = el("circle", { cx: x(i), cy: y(p.value), r: 3, fill: "#16a34a", "data-value": p.value });
    c.append(el("title", {}, `${p.label}: ${fmt(p.value, 1)}%`));
    root.append(c);
  });
  root.append(el("text", { x: L, y: H - 4 }, points[0].label));
  root.append(el("text", { x: W, y: H - 4, "text-anchor": "end" }, points[points.length - 1].label));
}

// Horizontal bars: rows = [{label, value, note}].
function hbars(target, rows, format = fmt) {
  if (!rows.length) return empty(target);
  const W = 440, row = 26, L = 150, H = rows.length * row + 6;
  const root = svg(target, W, H);
  const max = Math.max(...rows.map((r) => num(r.value)), 1e-12);
  rows.forEach((r, i) => {
    const w = ((W - L - 70) * num(r.value)) / max;
    root.append(el("text", { x: L - 8, y: i * row + 17, "text-anchor": "end" }, r.label));
    const rect = el("rect", { x: L, y: i * row + 5, width: Math.max(1, w), height: row - 10, rx: 3, fill: PALETTE[i % PALETTE.length], "data-value": num(r.value) });
    rect.append(el("title", {}, `${r.label}: ${format(r.value)}${r.note ? " · " + r.note : ""}`));
    root.append(rect);
    root.append(el("text", { x: L + w + 6, y: i * row + 17 }, format(r.value)));
  });
}

function table(target, head, rows) {
  const th = head.map((h) => `<th class="${h.num ? "num" : ""}">${h.label}</th>`).join("");
  target.innerHTML = `<thead><tr>${th}</tr></thead><tbody></tbody>`;
  const body = target.querySelector("tbody");
  for (const r of rows) {
    const tr = document.createElement("tr");
    r.forEach((cell, i) => {
      const td = document.createElement("td");
      if (head[i].num) td.className = "num";
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    });
    body.append(tr);
  }
  if (!rows.length) body.innerHTML = `<tr><td colspan="${head.length}" class="empty">none</td></tr>`;
}

function cards(target, items) {
  target.innerHTML = items.map(([label, value]) => `<div class="card"><b>${value}</b><span>${label}</span></div>`).join("");
}

// The API key (docs/auth.md): typed once, kept in localStorage, sent as a Bearer token.
const KEY = "turnstream.apiKey";
$("apikey").value = localStorage.getItem(KEY) || "";
$("apikey").addEventListener("change", () => {
  const key = $("apikey").value.trim();
  if (key) localStorage.setItem(KEY, key); else localStorage.removeItem(KEY);
});

async function call(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  const json = await res.json();
  if (res.status === 401 || res.status === 403) $("apikey").focus();
  if (!res.ok) throw new Error(json.error ? json.error.message : res.statusText);
  return json;
}

function filters() {
  const f = new FormData($("filters"));
  const filter = {};
  if (f.get("start")) filter.startDate = new Date(f.get("start") + "T00:00:00Z").toISOString();
  if (f.get("end")) filter.endDate = new Date(new Date(f.get("end") + "T00:00:00Z").getTime() + 86400000).toISOString();
  if (f.get("workflow")) filter.workflowName = f.get("workflow");
  if (f.get("trigger")) filter.triggeredBy = "TRIGGER_TYPE_" + f.get("trigger").toUpperCase();
  if (f.get("status")) filter.status = "EXECUTION_STATUS_" + f.get("status").toUpperCase();
  return { filter, granularity: "GRANULARITY_" + f.get("granularity").toUpperCase(), recentFailuresLimit: 10 };
}

const short = (t, g) => (g === "hour" ? t.slice(5, 13).replace("T", " ") + "h" : t.slice(g === "month" ? 0 : 5, g === "month" ? 7 : 10));

async function dashboard() {
  const req = filters();
  const g = req.granularity.replace("GRANULARITY_", "").toLowerCase();
  const d = await call("POST", "/v1/dashboard:get", req);
  const s = d.summary || {};
  const cost = (d.models || []).reduce((a, m) => a + num(m.totalCost), 0);
  cards($("cards"), [
    ["executions", fmt(s.totalExecutions)], ["success rate", fmt(s.successRate, 1) + "%"],
    ["failures", fmt(s.totalFailures)], ["mean duration", ms(s.avgDurationMs)],
    ["tokens", fmt(s.totalTokens)], ["cost", "$" + fmt(cost, 2)],
    ["cache read share", fmt(num((d.cache || {}).cacheReadShare) * 100, 1) + "%"],
    ["AEM", fmt((d.aem || {}).aemValue, 1)],
  ]);
  const over = d.executionsOverTime || [];
  stacked($("runs"), over.map((p) => ({ label: short(p.time, g), values: p })), ["completed", "failed", "running", "pending"], COLORS);
  line($("success"), over.map((p) => ({ label: short(p.time, g), value: num(p.successRate) })));
  hbars($("failures"), (d.failureBreakdown || []).map((f) => ({ label: f.category, value: f.count, note: (f.sampleMessages || [])[0] })));
  const models = d.models || [];
  hbars($("cost"), [...models].sort((a, b) => num(b.totalCost) - num(a.totalCost)).map((m) => ({ label: m.model, value: m.totalCost })), (v) => "$" + fmt(v, 2));
  hbars($("tokens"), models.map((m) => ({ label: m.model, value: m.totalTokens })));
  stacked($("durations"), (d.durationHistogram || []).map((b) => ({ label: ms(b.bucketStartMs), values: { count: b.count } })), ["count"], { count: "#7c3aed" });
  hbars($("tools"), (d.tools || []).slice(0, 8).map((t) => ({ label: t.toolName, value: t.calls, note: `p95 ${ms(t.p95DurationMs)}, ${fmt(t.successRate, 1)}% ok` })));
  table($("workflows"), [{ label: "workflow" }, { label: "runs", num: 1 }, { label: "failures", num: 1 }, { label: "success", num: 1 }, { label: "mean duration", num: 1 }, { label: "last run" }],
    (d.topAutomations || []).map((a) => [a.workflowName, fmt(a.executions), fmt(a.failures), fmt(a.successRate, 1) + "%", ms(a.avgDurationMs), (a.lastExecution || "").slice(0, 16).replace("T", " ")]));
  table($("recent"), [{ label: "execution" }, { label: "workflow" }, { label: "category" }, { label: "error" }, { label: "started" }, { label: "duration", num: 1 }],
    (d.recentFailures || []).map((f) => {
      const a = document.createElement("a");
      a.href = "#/executions/" + encodeURIComponent(f.executionId);
      a.textContent = f.executionId;
      const pill = document.createElement("span");
      pill.className = "pill";
      pill.textContent = f.errorCategory;
      return [a, f.workflowName, pill, f.errorMessage, (f.startedAt || "").slice(0, 16).replace("T", " "), ms(f.durationMs)];
    }));
  const select = document.querySelector("select[name=workflow]");
  if (select.options.length === 1) for (const w of d.workflows || []) select.append(new Option(w, w));
}

async function execution(id) {
  const d = await call("GET", "/v1/executions/" + encodeURIComponent(id));
  const e = d.execution, t = d.totals || {};
  $("ex-title").textContent = `${e.executionId} · ${e.workflowName || "unknown workflow"} · ${(e.status || "").replace("EXECUTION_STATUS_", "").toLowerCase()}`;
  $("ex-error").textContent = e.errorMessage || "";
  $("ex-error").hidden = !e.errorMessage;
  cards($("ex-cards"), [["turns", fmt(t.turns)], ["tool calls", fmt(t.toolCalls)], ["failed tool calls", fmt(t.failedToolCalls)], ["tokens", fmt(t.totalTokens)], ["cost", "$" + fmt(t.totalCost, 4)], ["duration", ms(e.durationMs)]]);
  const items = [
    ...(d.turns || []).map((x) => ({ label: `turn ${x.turnNumber} · ${x.model}`, start: x.startedAt, end: x.completedAt, color: "#7c3aed" })),
    ...(d.toolCalls || []).map((x) => ({ label: `  ${x.toolName}`, start: x.startedAt, end: x.completedAt, color: x.success === false ? "#dc2626" : "#0891b2" })),
  ].filter((x) => x.start).sort((a, b) => a.start.localeCompare(b.start));
  const target = $("timeline");
  if (!items.length) empty(target);
  else {
    const t0 = Math.min(...items.map((x) => Date.parse(x.start)));
    const t1 = Math.max(...items.map((x) => Date.parse(x.end || x.start) + 1));
    const W = 880, L = 200, row = 20, root = svg(target, W, items.length * row + 24);
    items.forEach((x, i) => {
      const a = L + ((W - L - 10) * (Date.parse(x.start) - t0)) / (t1 - t0);
      const b = L + ((W - L - 10) * (Date.parse(x.end || x.start) - t0)) / (t1 - t0);
      root.append(el("text", { x: 4, y: i * row + 14 }, x.label));
      const rect = el("rect", { x: a, y: i * row + 4, width: Math.max(2, b - a), height: row - 8, rx: 2, fill: x.color, "data-value": b - a });
      rect.append(el("title", {}, `${x.label.trim()}: ${ms(Date.parse(x.end || x.start) - Date.parse(x.start))}`));
      root.append(rect);
    });
    root.append(el("text", { x: W - 10, y: items.length * row + 16, "text-anchor": "end" }, ms(t1 - t0)));
  }
  table($("ex-turns"), [{ label: "#" }, { label: "model" }, { label: "tokens", num: 1 }, { label: "cost", num: 1 }, { label: "duration", num: 1 }, { label: "finish" }],
    (d.turns || []).map((x) => [x.turnNumber, x.model, fmt(x.totalTokens), "$" + fmt(x.totalCost, 4), ms(x.durationMs), x.finishReason || ""]));
}

async function route() {
  const match = location.hash.match(/^#\/executions\/(.+)$/);
  $("dashboard").hidden = !!match;
  $("execution").hidden = !match;
  $("error").hidden = true;
  try {
    if (match) await execution(decodeURIComponent(match[1]));
    else await dashboard();
  } catch (err) {
    $("error").textContent = "Could not load: " + err.message;
    $("error").hidden = false;
  }
}

$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = ""; route(); });
window.addEventListener("hashchange", route);
const today = new Date();
document.querySelector("input[name=end]").value = today.toISOString().slice(0, 10);
document.querySelector("input[name=start]").value = new Date(today.getTime() - 29 * 86400000).toISOString().slice(0, 10);
route();
