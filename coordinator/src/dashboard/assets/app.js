// scoresweep dashboard: the page's whole script (hand-written SVG, no library). Every string
// from the run (names, devices, errors, metric keys) enters the document as text: through
// textContent or attribute values, never as markup.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const MAX_ROWS = 500; // table rows drawn at once (filter or sort to reach the others)
const MAX_CURVES = 12; // trials overlaid at once
const COMPANION = { gap: "c_true", dsm_gap: "c_dsm" }; // a gap column → its constant C
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939"];

const view = {
  run: null,
  sort: { key: "idx", desc: false },
  selected: new Set(), // trial hashes ticked by the user
  trials: new Map(), // hash → { checkpoints, data } from /api/trial
  fetching: false,
  pending: false,
};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text != null) e.textContent = String(text);
  return e;
}

function fmt(x) {
  if (x == null || Number.isNaN(x)) return "";
  if (typeof x !== "number") return String(x);
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(3);
  return Number(x.toPrecision(4)).toString();
}

function ago(unix, now) {
  if (unix == null) return "";
  const s = Math.max(0, now - unix);
  return s < 120 ? `${s.toFixed(1)} s ago` : `${(s / 60).toFixed(1)} min ago`;
}

function duration(s) {
  if (s == null) return "";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- the run ------------------------------------------------------------------------------

function renderRun(r) {
  $("sweep-name").textContent = r.sweep ? r.sweep.name : "";
  $("sweep-file").textContent = r.sweep ? r.sweep.file : "";
  const p = r.progress;
  const finished = p.done + p.failed + p.pruned;
  $("progress-bar").style.width = p.total ? `${(100 * finished) / p.total}%` : "0";
  const pruned = p.pruned || r.early_stop ? `, ${p.pruned} pruned` : "";
  $("counts").textContent = `${finished} / ${p.total} finished: ${p.done} done${pruned}, ${p.failed} failed; ${p.running} running, ${p.queued} queued` +
    (r.respawns ? `; ${r.respawns} worker respawn(s)` : "") + (r.out_of_sweep ? `; ${r.out_of_sweep} trial(s) no longer in the sweep` : "");
  $("rate").textContent = r.rate_per_second != null ? `${fmt(r.rate_per_second * 60)} trials/min, ETA ${duration(r.eta_seconds)}` : "";
}

function renderClaims(r) {
  replaceRows($("claims").tBodies[0], r.claims.map((c) => el("tr", {},
    el("td", {}, c.claim), el("td", {}, c.scope),
    el("td", { class: "verdict-" + c.verdict.replace(/ /g, "-") }, c.verdict),
    el("td", { class: "num" }, fmt(c.value)), el("td", { class: "num" }, c.expected_value != null ? fmt(c.expected_value) : c.expected),
    el("td", { class: "num" }, fmt(c.se)), el("td", { class: "num" }, fmt(c.z)),
    el("td", { class: "num" }, `${c.n_rows} / ${c.n_trials}`), el("td", { class: "details" }, c.details))));
}

function renderWorkers(r) {
  replaceRows($("workers").tBodies[0], r.workers.map((w) => el("tr", {},
    el("td", {}, w.name), el("td", {}, w.device), el("td", { class: "num" }, w.cores),
    el("td", {}, w.current.join(", ")), el("td", {}, ago(w.last_heartbeat, r.now)), el("td", { class: "num" }, w.results))));
  replaceRows($("events").tBodies[0], r.events.slice(-50).map((e) => el("tr", {},
    el("td", {}, new Date(e.at * 1000).toLocaleTimeString()), el("td", {}, e.kind), el("td", {}, e.detail))));
}

// Early-stopping decisions, the latest first (shown when the sweep has a rule or decisions).
function renderDecisions(r) {
  const shown = !!r.early_stop || r.decisions.length > 0;
  $("decisions-section").hidden = !shown;
  if (!shown) return;
  const es = r.early_stop;
  const stops = r.decisions.filter((d) => d.decision === "stop").length;
  $("decisions-rule").textContent = (es ? `${es.kind} on ${es.metric} (${es.mode}); ` : "") +
    `${r.decisions_total} decision(s), ${r.progress.pruned} trial(s) pruned` +
    (r.decisions_total > r.decisions.length ? `; the latest ${r.decisions.length} shown (${stops} stop)` : "");
  replaceRows($("decisions").tBodies[0], r.decisions.slice().reverse().map((d) => el("tr", { "data-trial": d.trial, "data-decision": d.decision },
    el("td", {}, d.at != null ? new Date(d.at * 1000).toLocaleTimeString() : ""), el("td", {}, d.short),
    el("td", { class: "num" }, d.rung), el("td", { class: "num" }, d.checkpoint), el("td", { class: "num" }, d.step),
    el("td", {}, d.metric), el("td", { class: "num" }, fmt(d.value)), el("td", { class: "num" }, fmt(d.cutoff)),
    el("td", { class: "decision-" + d.decision }, d.decision), el("td", { class: "details" }, d.reason))));
}

// ---- the trial table ----------------------------------------------------------------------

function columns(r) {
  const cols = [
    { key: "idx", label: "#", get: (t) => t.idx, num: true },
    { key: "hash", label: "trial", get: (t) => t.short },
    { key: "status", label: "status", get: (t) => t.status },
  ];
  for (const k of r.keys) cols.push({ key: "config." + k, label: k, get: (t) => t.config[k] ?? "" });
  for (const m of r.metrics) cols.push({ key: "metric." + m, label: m, get: (t) => t.metrics[m], num: true });
  cols.push({ key: "attempts", label: "attempts", get: (t) => t.attempts, num: true });
  cols.push({ key: "worker", label: "worker", get: (t) => t.worker });
  cols.push({ key: "device", label: "device", get: (t) => t.device });
  cols.push({ key: "error", label: "error", get: (t) => t.error ?? "" });
  return cols;
}

// `a b key=value`: every word must match (key=value: that column's text equals value).
function matcher(text) {
  const words = text.trim().toLowerCase().split(/\s+/).filter(Boolean);
  return (t, cols) => words.every((w) => {
    const eq = w.indexOf("=");
    if (eq > 0) {
      const key = w.slice(0, eq), val = w.slice(eq + 1);
      const col = cols.find((c) => c.label.toLowerCase() === key);
      return col ? String(col.get(t) ?? "").toLowerCase() === val : false;
    }
    return cols.some((c) => String(c.get(t) ?? "").toLowerCase().includes(w));
  });
}

function compare(a, b) {
  const na = a == null || a === "", nb = b == null || b === "";
  if (na || nb) return na === nb ? 0 : na ? 1 : -1; // blanks last
  const fa = Number(a), fb = Number(b);
  if (!Number.isNaN(fa) && !Number.isNaN(fb)) return fa - fb;
  return String(a).localeCompare(String(b));
}

function renderTrials(r) {
  const cols = columns(r);
  const head = el("tr", {}, el("th", {}, "plot"));
  for (const c of cols) {
    const th = el("th", { class: "sortable" + (view.sort.key === c.key ? (view.sort.desc ? " sorted-desc" : " sorted-asc") : "") }, c.label);
    th.addEventListener("click", () => {
      view.sort = { key: c.key, desc: view.sort.key === c.key ? !view.sort.desc : false };
      renderTrials(view.run);
    });
    head.append(th);
  }
  $("trials").tHead.replaceChildren(head);
  const keep = matcher($("filter").value);
  const statuses = [...new Set(r.trials.map((t) => t.status))].sort();
  const pick = $("status-filter");
  const wanted = pick.value;
  const listed = [...pick.options].slice(1).map((o) => o.value);
  if (listed.join("\n") !== statuses.join("\n")) {
    pick.replaceChildren(el("option", { value: "" }, "every status"), ...statuses.map((s) => el("option", { value: s, class: "status-" + s }, s)));
    pick.value = statuses.includes(wanted) ? wanted : "";
  }
  const status = pick.value;
  const sortCol = cols.find((c) => c.key === view.sort.key) || cols[0];
  const rows = r.trials.filter((t) => (!status || t.status === status) && keep(t, cols));
  rows.sort((a, b) => (view.sort.desc ? -1 : 1) * compare(sortCol.get(a), sortCol.get(b)));
  $("shown").textContent = rows.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${rows.length} matching` : `${rows.length} of ${r.trials.length}`;
  const plotted = new Set(plottedTrials(r).map((t) => t.hash));
  replaceRows($("trials").tBodies[0], rows.slice(0, MAX_ROWS).map((t) => {
    const box = el("input", { type: "checkbox" });
    box.checked = plotted.has(t.hash);
    box.addEventListener("change", () => {
      if (box.checked) view.selected.add(t.hash); else view.selected.delete(t.hash);
      renderPlots();
      renderTrials(view.run);
    });
    const tr = el("tr", { "data-hash": t.hash, "data-status": t.status, class: plotted.has(t.hash) ? "selected" : "" }, el("td", {}, box));
    for (const c of cols) {
      const v = c.get(t);
      tr.append(el("td", { class: (c.num ? "num" : "") + (c.key === "status" ? " status-" + t.status : "") }, c.num ? fmt(v) : v));
    }
    return tr;
  }));
}

// ---- plots --------------------------------------------------------------------------------

function plottedTrials(r) {
  const ticked = r.trials.filter((t) => view.selected.has(t.hash));
  if (ticked.length) return ticked.slice(0, MAX_CURVES);
  return r.trials.filter((t) => t.checkpoints > 0).slice(0, Math.min(5, MAX_CURVES));
}

function fillSelect(select, options, preferred) {
  const current = select.value;
  const same = select.options.length === options.length && options.every((o, i) => select.options[i].value === o);
  if (!same) select.replaceChildren(...options.map((o) => el("option", { value: o }, o)));
  if (options.includes(current)) select.value = current;
  else { const p = preferred.find((o) => options.includes(o)); if (p) select.value = p; }
}

function scale(lo, hi, a, b) {
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  return (v) => a + ((v - lo) / (hi - lo)) * (b - a);
}

function axes(g, x, y, xr, yr, w, h, m, xlabel, ylabel) {
  g.append(svg("line", { x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b, stroke: "#999" }));
  g.append(svg("line", { x1: m.l, y1: m.t, x2: m.l, y2: h - m.b, stroke: "#999" }));
  for (let i = 0; i <= 4; i++) {
    const xv = xr[0] + ((xr[1] - xr[0]) * i) / 4, yv = yr[0] + ((yr[1] - yr[0]) * i) / 4;
    g.append(svg("text", { x: x(xv), y: h - m.b + 14, "text-anchor": "middle" }, fmt(xv)));
    g.append(svg("text", { x: m.l - 4, y: y(yv) + 4, "text-anchor": "end" }, fmt(yv)));
  }
  g.append(svg("text", { x: (m.l + w - m.r) / 2, y: h - 4, "text-anchor": "middle" }, xlabel));
  g.append(svg("text", { x: 12, y: m.t - 6 }, ylabel));
}

function extent(values) {
  const v = values.filter((x) => x != null && Number.isFinite(x));
  if (!v.length) return null;
  let lo = Math.min(...v), hi = Math.max(...v);
  const pad = (hi - lo) * 0.05 || Math.abs(hi) * 0.05 || 1;
  return [lo - pad, hi + pad];
}

function renderCurves(r) {
  const metric = $("curve-metric").value;
  const box = $("curves");
  const w = 640, h = 360, m = { l: 70, r: 150, t: 24, b: 36 };
  const lines = [];
  let companion = [];
  for (const t of plottedTrials(r)) {
    const d = view.trials.get(t.hash);
    if (!d || !d.data) continue;
    const pts = d.data.curve.map((row, i) => [row.step ?? i, row[metric]]).filter((p) => p[1] != null);
    if (pts.length) lines.push({ t, pts });
    const c = COMPANION[metric];
    if (c) companion = companion.concat(d.data.curve.map((row) => row[c]).filter((v) => v != null));
  }
  const root = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  if (!lines.length) {
    root.append(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle" }, metric ? `no checkpoints with ${metric} yet` : "no checkpoints yet"));
    box.replaceChildren(root);
    return;
  }
  const cMean = companion.length ? companion.reduce((a, b) => a + b, 0) / companion.length : null;
  const xr = extent(lines.flatMap((l) => l.pts.map((p) => p[0])));
  const yr = extent(lines.flatMap((l) => l.pts.map((p) => p[1])).concat(cMean == null ? [] : [cMean]));
  const x = scale(xr[0], xr[1], m.l, w - m.r), y = scale(yr[0], yr[1], h - m.b, m.t);
  axes(root, x, y, xr, yr, w, h, m, "step", metric);
  lines.forEach((l, i) => {
    const color = PALETTE[i % PALETTE.length];
    const d = l.pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "curve", "data-hash": l.t.hash }));
    root.append(svg("text", { x: w - m.r + 8, y: m.t + 14 * i + 4, fill: color }, `${l.t.short} (${l.t.status})`));
  });
  if (cMean != null) {
    root.append(svg("line", { x1: m.l, x2: w - m.r, y1: y(cMean), y2: y(cMean), stroke: "#000", "stroke-dasharray": "6 4", class: "constant" }));
    root.append(svg("text", { x: w - m.r + 8, y: y(cMean) + 4 }, `C = ${fmt(cMean)}`));
  }
  box.replaceChildren(root);
}

function renderParallel(r) {
  const metric = $("pc-metric").value;
  const box = $("parallel");
  const w = 640, h = 360, m = { l: 30, r: 30, t: 30, b: 30 };
  const root = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  const trials = r.trials.filter((t) => metric && t.metrics[metric] != null);
  const dims = r.keys.map((k) => ({ label: k, get: (t) => t.config[k] })).concat(metric ? [{ label: metric, get: (t) => t.metrics[metric] }] : []);
  if (!trials.length || !dims.length) {
    root.append(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle" }, "no finished trial with this metric yet"));
    box.replaceChildren(root);
    return;
  }
  const xs = scale(0, Math.max(1, dims.length - 1), m.l + 40, w - m.r - 40);
  const axesOf = dims.map((d) => {
    const vals = trials.map(d.get);
    const numeric = vals.every((v) => v !== "" && v != null && !Number.isNaN(Number(v)));
    if (numeric) {
      const e = extent(vals.map(Number));
      return { pos: scale(e[0], e[1], h - m.b, m.t), ticks: [e[0], e[1]], num: true };
    }
    const cats = [...new Set(vals.map((v) => String(v ?? "")))].sort();
    const s = scale(-0.5, cats.length - 0.5, h - m.b, m.t);
    return { pos: (v) => s(cats.indexOf(String(v ?? ""))), cats, num: false };
  });
  const mv = trials.map((t) => t.metrics[metric]);
  const lo = Math.min(...mv), hi = Math.max(...mv);
  trials.slice(0, 2000).forEach((t) => {
    const d = dims.map((dim, i) => {
      const v = dim.get(t);
      return `${i ? "L" : "M"}${xs(i).toFixed(1)},${axesOf[i].pos(axesOf[i].num ? Number(v) : v).toFixed(1)}`;
    }).join("");
    const f = hi > lo ? (t.metrics[metric] - lo) / (hi - lo) : 0.5; // blue (low) → red (high)
    root.append(svg("path", { d, fill: "none", stroke: `rgb(${Math.round(40 + 200 * f)},60,${Math.round(240 - 200 * f)})`, "stroke-opacity": 0.6, class: "pc-line" }));
  });
  dims.forEach((dim, i) => {
    root.append(svg("line", { x1: xs(i), x2: xs(i), y1: m.t, y2: h - m.b, stroke: "#555" }));
    root.append(svg("text", { x: xs(i), y: m.t - 10, "text-anchor": "middle" }, dim.label));
    const a = axesOf[i];
    if (a.num) {
      for (const v of a.ticks) root.append(svg("text", { x: xs(i) + 4, y: a.pos(v) + 4 }, fmt(v)));
    } else {
      for (const c of a.cats) root.append(svg("text", { x: xs(i) + 4, y: a.pos(c) + 4 }, c));
    }
  });
  box.replaceChildren(root);
}

// The trial whose samples are shown: the first plotted one with a sample grid (an image
// trial's picture) or samples, else the first such trial of the run.
function samplesTrial(r) {
  const has = (t) => t.grid != null || t.has_samples;
  return plottedTrials(r).find(has) || r.trials.find(has);
}

function artifactUrl(hash, name) {
  return `/api/artifact?hash=${encodeURIComponent(hash)}&name=${encodeURIComponent(name)}`;
}

// The files the shown trial's worker uploaded, as links (names as text).
function renderArtifacts(t) {
  const list = t ? view.trials.get(t.hash)?.data?.artifacts || [] : [];
  replaceRows($("artifacts"), list.map((a) => el("li", {}, el("a", { href: artifactUrl(t.hash, a.name) }, a.name), ` (${a.bytes} bytes${a.image ? "" : ", download"})`)));
}

function renderSamples(r) {
  const box = $("samples");
  const t = samplesTrial(r);
  renderArtifacts(t);
  if (t && t.grid != null) {
    // An image trial: its sample grid, as uploaded (kept, not reloaded, while it is the same).
    $("samples-trial").textContent = `trial ${t.short}: ${t.grid}`;
    const src = artifactUrl(t.hash, t.grid);
    const shown = box.querySelector("img.grid");
    if (!shown || shown.getAttribute("src") !== src) {
      box.replaceChildren(el("img", { class: "grid", src, alt: `${t.grid} of trial ${t.short}`, "data-hash": t.hash }));
    }
    return;
  }
  const w = 480, h = 400, m = { l: 50, r: 20, t: 20, b: 30 };
  const root = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  if (!t || !view.trials.get(t.hash)?.data?.samples) {
    $("samples-trial").textContent = "";
    root.append(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle" }, "no trial has samples yet"));
    box.replaceChildren(root);
    return;
  }
  const s = view.trials.get(t.hash).data.samples;
  $("samples-trial").textContent = `trial ${t.short}: samples (red) against data (grey), first two coordinates`;
  const all = s.samples.concat(s.data);
  const xr = extent(all.map((p) => p[0])), yr = extent(all.map((p) => (s.dim > 1 ? p[1] : 0)));
  const x = scale(xr[0], xr[1], m.l, w - m.r), y = scale(yr[0], yr[1], h - m.b, m.t);
  axes(root, x, y, xr, yr, w, h, m, "x₀", s.dim > 1 ? "x₁" : "");
  for (const [pts, color, cls] of [[s.data, "#999", "data"], [s.samples, "#d62728", "sample"]]) {
    for (const p of pts) {
      if (p[0] == null) continue;
      root.append(svg("circle", { cx: x(p[0]).toFixed(1), cy: y(s.dim > 1 ? p[1] : 0).toFixed(1), r: 1.6, fill: color, "fill-opacity": 0.6, class: cls }));
    }
  }
  box.replaceChildren(root);
}

// Fetches the curves and samples of the plotted trials that changed, then draws.
async function renderPlots() {
  const r = view.run;
  if (!r) return;
  fillSelect($("curve-metric"), r.curve_columns.filter((c) => c !== "step"), ["gap", "loss", "train_loss"]);
  fillSelect($("pc-metric"), r.metrics, ["l_esm", "loss", "gap"]);
  const shown = samplesTrial(r);
  const want = plottedTrials(r).concat(shown && !plottedTrials(r).includes(shown) ? [shown] : []).filter((t) => {
    const have = view.trials.get(t.hash);
    return !have || have.checkpoints !== t.checkpoints || have.status !== t.status;
  });
  await Promise.all(want.map(async (t) => {
    const res = await fetch(`/api/trial?hash=${encodeURIComponent(t.hash)}`, { credentials: "same-origin" });
    if (res.ok) view.trials.set(t.hash, { checkpoints: t.checkpoints, status: t.status, data: await res.json() });
  }));
  renderCurves(r);
  renderParallel(r);
  renderSamples(r);
}

// ---- live updates -------------------------------------------------------------------------

async function refresh() {
  if (view.fetching) { view.pending = true; return; }
  view.fetching = true;
  try {
    const res = await fetch("/api/run", { credentials: "same-origin" });
    if (!res.ok) throw new Error(`/api/run: ${res.status} ${await res.text()}`);
    const r = await res.json();
    view.run = r;
    renderRun(r);
    renderClaims(r);
    renderTrials(r);
    renderWorkers(r);
    renderDecisions(r);
    await renderPlots();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    setConnection("lost", String(e.message || e));
  } finally {
    view.fetching = false;
    if (view.pending) { view.pending = false; refresh(); }
  }
}

function setConnection(cls, textContent) {
  const c = $("connection");
  c.className = "badge " + cls;
  c.textContent = textContent;
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("change", () => { setConnection("live", "live"); refresh(); });
  events.addEventListener("end", () => { setConnection("ended", view.run && view.run.live ? "run over" : "finished run"); events.close(); refresh(); });
  events.onerror = () => { if (events.readyState !== EventSource.CLOSED) setConnection("lost", "reconnecting…"); };
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", () => view.run && renderTrials(view.run));
  $("status-filter").addEventListener("change", () => view.run && renderTrials(view.run));
  $("curve-metric").addEventListener("change", () => view.run && renderCurves(view.run));
  $("pc-metric").addEventListener("change", () => view.run && renderParallel(view.run));
  refresh();
  connect();
});
