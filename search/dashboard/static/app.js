/* mergesearch dashboard: plain JS + SVG/canvas, no external libraries.
 *
 * Data flow: GET /api/runs once, then every POLL_MS per run
 * GET /api/runs/{run}/trials?after_id=&since= (new trials and changed ones: RUNNING trials
 * that finished, held-out values added later); the reply's cursor is sent back next time.
 * If the server's epoch changes (it restarted), everything is fetched again.
 * A run above the server's limit (reply.limit) comes as a view on the first request (its
 * front, running trials, latest trials and an even sample of the other results; reply.view
 * says how many of each, and in all: sent); once the polls have added more than the limit to
 * what the first load sent, it asks for a fresh view.
 */
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 2000;
const CAT = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac"];
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const BLUES = ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"];
const RDBU = ["#b2182b", "#ef8a62", "#fddbc7", "#f7f7f7", "#d1e5f0", "#67a9cf", "#2166ac"];
const STATE_COLOR = { COMPLETE: "#4e79a7", FAIL: "#e15759", RUNNING: "#edb832" };
const SVGNS = "http://www.w3.org/2000/svg";

const S = {
  epoch: null,
  runs: [],                // run summaries, in the order given on the command line
  trials: {},              // run key -> Map(trial id -> trial)
  cursor: {},              // run key -> {after_id, since}
  view: {},                // run key -> what the first load sent of a big run (null: every trial)
  sent: {},                // run key -> how many trials the first load sent
  hv: null,
  sel: null,               // {run, number}
  detail: null,
  exportJob: null,
  opt: { x: 0, y: 1, z: 2, mode: "2d", color: "strategy", dominated: true },
  sort: { col: "number", dir: -1 },
  filter: { state: "all", front: false },
  rot: { yaw: -0.65, pitch: 0.42 },
  online: null,
  updated: null,
  version: 0,              // bumps on every data change (for lazy re-renders)
};

// ------------------------------------------------------------------ small helpers
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
function el(tag, attrs, ...kids) {
  const isSvg = ["svg", "g", "circle", "rect", "line", "path", "text", "polyline", "title", "defs", "linearGradient", "stop", "tspan"].includes(tag);
  const n = isSvg ? document.createElementNS(SVGNS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") n.textContent = v;
    else if (k === "html") n.innerHTML = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat()) if (c !== null && c !== undefined && c !== false) n.append(c.nodeType ? c : document.createTextNode(String(c)));
  return n;
}
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
function fmt(v, d = 4) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toFixed(d)).toString();
}
function fmtDur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 10) return s.toFixed(1) + "s";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), x = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(x).padStart(2, "0")}s` : `${x}s`;
}
function clock(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : "–"; }
async function getJSON(url, opts) {
  const r = await fetch(url, Object.assign({ cache: "no-store" }, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) { const err = new Error((body && body.detail) || `${r.status} ${r.statusText}`); err.status = r.status; throw err; }
  return body;
}
function hexToRgb(h) { const n = parseInt(h.slice(1), 16); return [(n >> 16) & 255, (n >> 8) & 255, n & 255]; }
function ramp(stops, t) {
  t = Math.max(0, Math.min(1, isFinite(t) ? t : 0));
  const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const a = hexToRgb(stops[i]), b = hexToRgb(stops[i + 1]);
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}
function luminance(rgb) { const m = rgb.match(/\d+/g).map(Number); return (0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2]) / 255; }
function niceTicks(lo, hi, n = 6) {
  if (!(hi > lo)) { const c = isFinite(lo) ? lo : 0; lo = c - 0.5; hi = c + 0.5; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), e = raw / mag;
  const step = (e >= 7.5 ? 10 : e >= 3.5 ? 5 : e >= 1.5 ? 2 : 1) * mag;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return { ticks: out, label: (v) => v.toFixed(Math.min(dec, 8)) };
}
function extent(vals, pad = 0.06) {
  let lo = Infinity, hi = -Infinity;
  for (const v of vals) if (isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!isFinite(lo)) return [0, 1];
  if (hi === lo) { const d = Math.abs(lo) * 0.1 || 0.5; return [lo - d, hi + d]; }
  const p = (hi - lo) * pad;
  return [lo - p, hi + p];
}
function tip(html, ev) {
  const t = $("tip");
  if (!html) { t.hidden = true; return; }
  t.innerHTML = html; t.hidden = false;
  const w = t.offsetWidth, h = t.offsetHeight;
  let x = ev.clientX + 14, y = ev.clientY + 14;
  if (x + w > innerWidth - 8) x = ev.clientX - w - 14;
  if (y + h > innerHeight - 8) y = ev.clientY - h - 14;
  t.style.left = x + "px"; t.style.top = y + "px";
}

// ------------------------------------------------------------------ derived data
function runIndex(key) { return S.runs.findIndex((r) => r.key === key); }
function runColor(key) { return CAT[Math.max(0, runIndex(key)) % CAT.length]; }
function allTrials() {
  const out = [];
  for (const r of S.runs) for (const t of (S.trials[r.key] || new Map()).values()) out.push(Object.assign({ run: r.key }, t));
  return out;
}
/* objective names across runs (first occurrence order) with their direction */
function objectiveList() {
  const seen = new Map();
  for (const r of S.runs) r.objectives.forEach((o) => { if (!seen.has(o.name)) seen.set(o.name, o.direction); });
  return [...seen.entries()].map(([name, direction]) => ({ name, direction }));
}
function objIndex(run, name) { return run.objectives.findIndex((o) => o.name === name); }
function frontSet(run) { return new Set(run.front || []); }
function strategies() { const s = new Set(); for (const t of allTrials()) s.add(t.strategy); return [...s].sort(); }
function genRange() {
  let lo = Infinity, hi = -Infinity;
  for (const t of allTrials()) { lo = Math.min(lo, t.generation); hi = Math.max(hi, t.generation); }
  return isFinite(lo) ? [lo, hi] : [0, 0];
}
function colorOf(t, onFront, ctx) {
  switch (S.opt.color) {
    case "generation": { const [lo, hi] = ctx.gen; return ramp(VIRIDIS, hi > lo ? (t.generation - lo) / (hi - lo) : 0.5); }
    case "run": return runColor(t.run);
    case "front": return onFront ? "#2f6fb0" : "#9aa3ad";
    default: return CAT[Math.max(0, ctx.strats.indexOf(t.strategy)) % CAT.length];
  }
}
function axisTitle(o) { return o.pseudo ? o.label : `${o.name} (${o.direction === "minimize" ? "min" : "max"})`; }

/* points for the selected objectives: [{t, run, onFront, v: [..]}] */
function plotPoints(names) {
  const pts = [];
  for (const r of S.runs) {
    const idx = names.map((n) => (n === "#" ? -2 : objIndex(r, n)));
    if (idx.some((i) => i === -1)) continue;
    const fr = frontSet(r);
    for (const t of (S.trials[r.key] || new Map()).values()) {
      if (t.state !== "COMPLETE" || !t.values || t.values.some((v) => v === null)) continue;
      const onFront = fr.has(t.number);
      if (!onFront && !S.opt.dominated) continue;
      pts.push({ t: Object.assign({ run: r.key }, t), run: r, onFront, v: idx.map((i) => (i === -2 ? t.number : t.values[i])) });
    }
  }
  pts.sort((a, b) => a.onFront - b.onFront);  // front members drawn on top
  return pts;
}
function tipHtml(t, run) {
  const multi = S.runs.length > 1;
  let h = `<b>Trial #${t.number}</b>${multi ? ` <span class="k">· ${esc(run.key)}</span>` : ""}<br>`;
  h += `<span class="k">${esc(t.strategy)} · gen ${t.generation}${t.worker ? " · " + esc(t.worker) : ""}</span><br>`;
  run.objectives.forEach((o, i) => {
    const v = t.values ? t.values[i] : null, ho = t.heldout ? t.heldout[i] : null;
    h += `${esc(o.name)}: <b>${fmt(v)}</b>${ho !== null && ho !== undefined ? ` <span class="ho">held-out ${fmt(ho)}</span>` : ""}<br>`;
  });
  if (frontSet(run).has(t.number)) h += `<span class="ho">★ on the Pareto front</span>`;
  return h;
}

// ------------------------------------------------------------------ controls
function fillSelect(sel, options, value) {
  const keep = sel.value;
  sel.innerHTML = "";
  options.forEach((o, i) => sel.append(el("option", { value: String(i), text: axisTitle(o) })));
  sel.value = String(value !== undefined ? value : keep);
}
function setupControls() {
  const objs = objectiveList();
  S.axes = objs.concat([{ name: "#", label: "trial number", pseudo: true }]);
  const opts = S.axes;
  if (objs.length === 1) { S.opt.x = S.axes.length - 1; S.opt.y = 0; }
  else { S.opt.x = 0; S.opt.y = 1; S.opt.z = Math.min(2, objs.length - 1); }
  fillSelect($("sel-x"), opts, S.opt.x);
  fillSelect($("sel-y"), opts, S.opt.y);
  fillSelect($("sel-z"), opts.slice(0, objs.length), S.opt.z);
  const three = objs.length >= 3;
  $("lab-z").hidden = !three || S.opt.mode !== "3d";
  $("mode-seg").hidden = !three;
  if (S.runs.length > 1) $("sel-color").value = S.opt.color = "run";
  $("sel-x").onchange = (e) => { S.opt.x = +e.target.value; renderPlot(); };
  $("sel-y").onchange = (e) => { S.opt.y = +e.target.value; renderPlot(); };
  $("sel-z").onchange = (e) => { S.opt.z = +e.target.value; renderPlot(); };
  $("sel-color").onchange = (e) => { S.opt.color = e.target.value; renderPlot(); };
  $("chk-dom").onchange = (e) => { S.opt.dominated = e.target.checked; renderPlot(); };
  for (const b of $("mode-seg").querySelectorAll("button")) {
    b.onclick = () => {
      S.opt.mode = b.dataset.mode;
      for (const x of $("mode-seg").querySelectorAll("button")) x.classList.toggle("on", x === b);
      $("lab-z").hidden = S.opt.mode !== "3d";
      renderPlot();
    };
  }
  $("flt-state").onchange = (e) => { S.filter.state = e.target.value; renderTable(); };
  $("flt-front").onchange = (e) => { S.filter.front = e.target.checked; renderTable(); };
}

// ------------------------------------------------------------------ header
function renderHeader() {
  const box = $("runchips");
  box.innerHTML = "";
  for (const r of S.runs) {
    const c = r.counts || {};
    const done = (c.COMPLETE || 0) + (c.FAIL || 0);
    const parts = [`${done}${r.budget ? "/" + r.budget : ""} evaluated`];
    if (c.RUNNING) parts.push(`${c.RUNNING} running`);
    if (c.FAIL) parts.push(`${c.FAIL} failed`);
    parts.push(`front ${r.front.length}`);
    if (r.hypervolume !== null && r.hypervolume !== undefined) parts.push(`HV ${fmt(r.hypervolume)}`);
    box.append(el("span", { class: "chip", title: `${r.name} · status ${r.status} · store ${r.store}` },
      el("span", { class: "sw", style: `background:${runColor(r.key)}` }),
      el("span", { class: "nm", text: r.key }),
      el("span", { class: "st", text: parts.join(" · ") })));
  }
  const live = $("live");
  const running = S.runs.some((r) => (r.counts || {}).RUNNING > 0 || r.status === "running");
  live.className = "live " + (S.online === false ? "off" : running ? "on" : "idle");
  live.querySelector(".txt").textContent = S.online === false ? "offline – retrying" :
    `${running ? "live" : "idle"} · updated ${S.updated ? S.updated.toLocaleTimeString() : "–"}`;
}

// ------------------------------------------------------------------ legend
function renderLegend(pts, ctx) {
  const lg = $("legend");
  lg.innerHTML = "";
  const item = (color, label) => el("span", { class: "it" }, el("span", { class: "sw", style: `background:${color}` }), label);
  if (S.opt.color === "generation") {
    const [lo, hi] = ctx.gen;
    lg.append(el("span", { class: "it" }, `generation ${lo}`,
      el("span", { class: "grad", style: `background:linear-gradient(90deg,${VIRIDIS.join(",")})` }), `${hi}`));
  } else if (S.opt.color === "run") {
    for (const r of S.runs) lg.append(item(runColor(r.key), r.key));
  } else if (S.opt.color === "front") {
    lg.append(item("#2f6fb0", "Pareto front"), item("#9aa3ad", "dominated"));
  } else {
    for (const s of ctx.strats) lg.append(item(CAT[ctx.strats.indexOf(s) % CAT.length], s));
  }
  lg.append(el("span", { class: "it" }, el("span", { class: "ring" }), "front member"));
  if (S.opt.dominated) lg.append(el("span", { class: "it" }, el("span", { class: "sw faded", style: "background:#4b5563" }), "dominated"));
  const nd = pts.length, nf = pts.filter((p) => p.onFront).length;
  // runs that came as a view: say which, with each one's own count (the points cover every run)
  const sampled = S.runs.filter((r) => S.view[r.key]).map((r) => {
    const all = (r.counts || {}).COMPLETE || 0;
    if (S.runs.length === 1) return `a sample of the run's ${all} results`;
    return `a sample of run ${r.key}'s ${all} results: ${pts.filter((p) => p.run.key === r.key).length} shown`;
  });
  lg.append(el("span", { class: "it muted", id: "points-note" }, `${nd} point${nd === 1 ? "" : "s"}, ${nf} on the front` +
    (sampled.length ? ` (${sampled.join("; ")})` : "")));
}

// ------------------------------------------------------------------ 2-D scatter (SVG)
function renderPlot() {
  const objs = S.axes || [];
  const three = S.opt.mode === "3d" && objectiveList().length >= 3;
  $("scatter").toggleAttribute("hidden", three);  // an SVG element has no .hidden property
  $("scatter3d").toggleAttribute("hidden", !three);
  if (!objs.length) return;
  const ctx = { strats: strategies(), gen: genRange() };
  const names = three ? [S.opt.x, S.opt.y, S.opt.z].map((i) => objs[Math.min(i, objs.length - 1)].name)
    : [objs[S.opt.x].name, objs[S.opt.y].name];
  const pts = plotPoints(names);
  renderLegend(pts, ctx);
  $("plot-empty").hidden = pts.length > 0;
  if (three) return render3d(pts, names, ctx);
  render2d(pts, [objs[S.opt.x], objs[S.opt.y]], ctx);
}

function render2d(pts, axes, ctx) {
  const svg = $("scatter");
  const W = svg.clientWidth || 800, H = svg.clientHeight || 470;
  const m = { l: 64, r: 18, t: 14, b: 50 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.innerHTML = "";
  const [x0, x1] = extent(pts.map((p) => p.v[0])), [y0, y1] = extent(pts.map((p) => p.v[1]));
  const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  const g = el("g");
  const xt = niceTicks(x0, x1, Math.max(3, Math.floor((W - m.l - m.r) / 90))), yt = niceTicks(y0, y1, 6);
  for (const v of xt.ticks) {
    if (v < x0 || v > x1) continue;
    g.append(el("line", { class: "gridline", x1: sx(v), x2: sx(v), y1: m.t, y2: H - m.b }));
    g.append(el("text", { x: sx(v), y: H - m.b + 15, "text-anchor": "middle", text: xt.label(v) }));
  }
  for (const v of yt.ticks) {
    if (v < y0 || v > y1) continue;
    g.append(el("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v) }));
    g.append(el("text", { x: m.l - 7, y: sy(v) + 4, "text-anchor": "end", text: yt.label(v) }));
  }
  g.append(el("line", { class: "axisline", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  g.append(el("line", { class: "axisline", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
  const better = (o, horiz) => o.pseudo ? "" : o.direction === "minimize" ? (horiz ? "  ← better" : "  ↓ better") : (horiz ? "  better →" : "  better ↑");
  g.append(el("text", { class: "axis-label", x: (m.l + W - m.r) / 2, y: H - 10, "text-anchor": "middle", text: axisTitle(axes[0]) + better(axes[0], true) }));
  g.append(el("text", { class: "axis-label", x: 0, y: 0, transform: `translate(16 ${(m.t + H - m.b) / 2}) rotate(-90)`, "text-anchor": "middle", text: axisTitle(axes[1]) + better(axes[1], false) }));
  svg.append(g);

  // attainment staircase of each run's front (two-objective runs: the front is exactly this pair)
  if (!axes[0].pseudo && !axes[1].pseudo) {
    for (const r of S.runs) {
      if (r.objectives.length !== 2) continue;
      const fp = pts.filter((p) => p.run === r && p.onFront).map((p) => p.v).sort((a, b) => a[0] - b[0]);
      if (fp.length < 2) continue;
      const worse = (a, b, dir) => (dir === "minimize" ? Math.max(a, b) : Math.min(a, b));
      let d = `M${sx(fp[0][0])},${sy(fp[0][1])}`;
      for (let i = 1; i < fp.length; i++) {
        const cx = worse(fp[i - 1][0], fp[i][0], axes[0].direction), cy = worse(fp[i - 1][1], fp[i][1], axes[1].direction);
        d += ` L${sx(cx)},${sy(cy)} L${sx(fp[i][0])},${sy(fp[i][1])}`;
      }
      svg.append(el("path", { class: "stair", d, stroke: S.runs.length > 1 ? runColor(r.key) : "#1f2430" }));
    }
  }
  const layer = el("g", { id: "points" });
  for (const p of pts) {
    const c = el("circle", {
      class: "pt " + (p.onFront ? "front" : "dom"), cx: sx(p.v[0]).toFixed(1), cy: sy(p.v[1]).toFixed(1),
      r: p.onFront ? 5.5 : 4.2, fill: colorOf(p.t, p.onFront, ctx), "data-run": p.run.key, "data-n": p.t.number,
    });
    c.__p = p;
    layer.append(c);
  }
  svg.append(layer);
  if (S.sel) {
    const hit = pts.find((p) => p.run.key === S.sel.run && p.t.number === S.sel.number);
    if (hit) svg.append(el("circle", { class: "selring", cx: sx(hit.v[0]), cy: sy(hit.v[1]), r: 9 }));
  }
  layer.onmousemove = (ev) => { const p = ev.target.__p; tip(p ? tipHtml(p.t, p.run) : null, ev); };
  layer.onmouseleave = () => tip(null);
  layer.onclick = (ev) => { const p = ev.target.__p; if (p) select(p.run.key, p.t.number); };
}

// ------------------------------------------------------------------ 3-D scatter (canvas, drag to rotate)
/* A rotatable orthographic projection rather than a scatter matrix: the shape of a 3-objective
 * front (a curved sheet) is visible at a glance when turned, and the 2-D view already gives any
 * pair. Each axis is scaled to [-1, 1]; drag rotates, double-click resets. */
function render3d(pts, names, ctx) {
  const cv = $("scatter3d");
  const dpr = window.devicePixelRatio || 1;
  const W = cv.clientWidth || 800, H = cv.clientHeight || 470;
  cv.width = W * dpr; cv.height = H * dpr;
  const c = cv.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, W, H);
  const ext = [0, 1, 2].map((k) => extent(pts.map((p) => p.v[k]), 0.02));
  const norm = (v, k) => ((v - ext[k][0]) / (ext[k][1] - ext[k][0])) * 2 - 1;
  const { yaw, pitch } = S.rot;
  const s = (Math.min(W, H) / 2 - 18) / 2.1, cx = W / 2, cy = H / 2;  // the labelled box fits at any rotation
  const proj = (x, y, z) => {
    const x1 = Math.cos(yaw) * x + Math.sin(yaw) * z, z1 = -Math.sin(yaw) * x + Math.cos(yaw) * z;
    const y1 = Math.cos(pitch) * y - Math.sin(pitch) * z1, d = Math.sin(pitch) * y + Math.cos(pitch) * z1;
    return [cx + s * x1, cy - s * y1, d];
  };
  // box
  c.strokeStyle = "#d5d9df"; c.lineWidth = 1;
  const corners = [-1, 1];
  for (const a of corners) for (const b of corners) {
    for (const [p, q] of [[[-1, a, b], [1, a, b]], [[a, -1, b], [a, 1, b]], [[a, b, -1], [a, b, 1]]]) {
      const P = proj(...p), Q = proj(...q);
      c.beginPath(); c.moveTo(P[0], P[1]); c.lineTo(Q[0], Q[1]); c.stroke();
    }
  }
  // axes from the (-1,-1,-1) corner; each labelled past its end with the objective and its range
  const axisColors = ["#c8423b", "#3b8f5a", "#2f6fb0"];
  const ends = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]];
  const O = proj(-1, -1, -1);
  c.textAlign = "center";
  ends.forEach((e, k) => {
    const E = proj(...e);
    c.strokeStyle = axisColors[k]; c.lineWidth = 2;
    c.beginPath(); c.moveTo(O[0], O[1]); c.lineTo(E[0], E[1]); c.stroke();
    const L = proj(...e.map((v, i) => (i === k ? 1.32 : -1)));
    const o = S.axes.find((a) => a.name === names[k]) || { name: names[k] };
    const lo = ext[k][0] + (ext[k][1] - ext[k][0]) * 0.02 / 1.04, hi = ext[k][1] - (ext[k][1] - ext[k][0]) * 0.02 / 1.04;
    c.font = "600 12px system-ui, sans-serif"; c.fillStyle = axisColors[k];
    c.fillText(axisTitle(o), L[0], L[1]);
    c.font = "11px system-ui, sans-serif"; c.fillStyle = "#6b7280";
    c.fillText(`${fmt(lo, 3)} → ${fmt(hi, 3)}`, L[0], L[1] + 14);
  });
  // points, far to near
  const scr = pts.map((p) => { const q = proj(norm(p.v[0], 0), norm(p.v[1], 1), norm(p.v[2], 2)); return { p, x: q[0], y: q[1], d: q[2] }; });
  scr.sort((a, b) => a.d - b.d);
  for (const q of scr) {
    c.globalAlpha = q.p.onFront ? 1 : 0.38;
    c.beginPath(); c.arc(q.x, q.y, (q.p.onFront ? 5.5 : 4.2) * (1 + 0.12 * q.d), 0, 2 * Math.PI);
    c.fillStyle = colorOf(q.p.t, q.p.onFront, ctx); c.fill();
    c.lineWidth = q.p.onFront ? 1.4 : 1; c.strokeStyle = q.p.onFront ? "#1f2430" : "#fff"; c.stroke();
    if (S.sel && q.p.run.key === S.sel.run && q.p.t.number === S.sel.number) {
      c.globalAlpha = 1; c.strokeStyle = "#e0574f"; c.lineWidth = 2.5;
      c.beginPath(); c.arc(q.x, q.y, 9, 0, 2 * Math.PI); c.stroke();
    }
  }
  c.globalAlpha = 1;
  c.fillStyle = "#9ca3af"; c.textAlign = "left"; c.font = "11px system-ui, sans-serif";
  c.fillText("drag to rotate · double-click to reset", 10, H - 10);
  cv.dataset.points = String(pts.length);
  cv.__scr = scr;
}
function setup3d() {
  const cv = $("scatter3d");
  let drag = null;
  const nearest = (ev) => {
    const r = cv.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    let best = null, bd = 64;
    for (const q of cv.__scr || []) { const d = (q.x - x) ** 2 + (q.y - y) ** 2; if (d < bd) { bd = d; best = q; } }
    return best;
  };
  cv.onmousedown = (ev) => { drag = { x: ev.clientX, y: ev.clientY, yaw: S.rot.yaw, pitch: S.rot.pitch, moved: false }; cv.classList.add("drag"); };
  window.addEventListener("mouseup", () => { drag = null; cv.classList.remove("drag"); });
  cv.onmousemove = (ev) => {
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      S.rot.yaw = drag.yaw + dx * 0.01;
      S.rot.pitch = Math.max(-1.5, Math.min(1.5, drag.pitch + dy * 0.01));
      tip(null); renderPlot(); return;
    }
    const q = nearest(ev);
    tip(q ? tipHtml(q.p.t, q.p.run) : null, ev);
  };
  cv.onmouseleave = () => tip(null);
  cv.onclick = (ev) => { if (drag && drag.moved) return; const q = nearest(ev); if (q) select(q.p.run.key, q.p.t.number); };
  cv.ondblclick = () => { S.rot = { yaw: -0.65, pitch: 0.42 }; renderPlot(); };
}

// ------------------------------------------------------------------ hypervolume chart
function renderHV() {
  const box = $("hv");
  box.innerHTML = "";
  const doc = S.hv;
  if (!doc || !doc.groups.length) { box.append(el("p", { class: "muted", text: "No evaluations yet." })); return; }
  const refs = [];
  for (const grp of doc.groups) {
    refs.push("reference point: " + grp.objectives.map((o, i) => `${o.name}=${fmt(grp.ref_point[i])}`).join(", "));
    // x: evaluations (0), examples evaluated (2) or evaluation seconds (3); runs without that measure are left out
    const xi = +($("hv-x") ? $("hv-x").value : 0);
    const xLabel = { 0: "evaluations (finished trials, failed ones included)", 2: "examples evaluated (all objectives)", 3: "evaluation seconds" }[xi];
    const series = Object.entries(grp.runs).map(([k, s]) => [k, s.filter((p) => p[xi] !== null && p[xi] !== undefined).map((p) => [p[xi], p[1]])]);
    const W = box.clientWidth || 500, H = 230, m = { l: 58, r: 14, t: 12, b: 40 };
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, height: H });
    let xmax = xi === 3 ? 1e-9 : 1, ymax = 0;
    for (const [, s] of series) for (const [n, h] of s) { xmax = Math.max(xmax, n); ymax = Math.max(ymax, h || 0); }
    if (xi === 0) for (const r of S.runs) if (grp.runs[r.key] && r.budget) xmax = Math.max(xmax, r.budget);
    if (ymax <= 0) ymax = 1;
    const sx = (v) => m.l + (v / xmax) * (W - m.l - m.r), sy = (v) => H - m.b - (v / (ymax * 1.08)) * (H - m.t - m.b);
    const xt = niceTicks(0, xmax, 6), yt = niceTicks(0, ymax * 1.08, 5);
    for (const v of xt.ticks) if (v <= xmax) {
      svg.append(el("line", { class: "gridline", x1: sx(v), x2: sx(v), y1: m.t, y2: H - m.b }));
      svg.append(el("text", { x: sx(v), y: H - m.b + 15, "text-anchor": "middle", text: xt.label(v) }));
    }
    for (const v of yt.ticks) if (v <= ymax * 1.08) {
      svg.append(el("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v) }));
      svg.append(el("text", { x: m.l - 6, y: sy(v) + 4, "text-anchor": "end", text: yt.label(v) }));
    }
    svg.append(el("line", { class: "axisline", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    svg.append(el("line", { class: "axisline", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    svg.append(el("text", { class: "axis-label", x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", text: xLabel }));
    svg.append(el("text", { class: "axis-label", transform: `translate(14 ${(m.t + H - m.b) / 2}) rotate(-90)`, "text-anchor": "middle", text: "hypervolume" }));
    for (const [key, s] of series) {
      if (!s.length) continue;
      let d = `M${sx(0)},${sy(0)}`, prev = 0;
      for (const [n, h] of s) { d += ` L${sx(n)},${sy(prev)} L${sx(n)},${sy(h || 0)}`; prev = h || 0; }
      svg.append(el("path", { d, fill: "none", stroke: runColor(key), "stroke-width": 2, "data-run": key },
        el("title", { text: `${key}: hypervolume ${fmt(prev)} after ${fmt(s[s.length - 1][0])} ${xLabel}` })));
    }
    // legend
    let lx = m.l + 10;
    for (const [key, s] of series) {
      const last = s.length ? s[s.length - 1][1] : 0;
      const label = `${key}  ${fmt(last)}`;
      svg.append(el("rect", { x: lx, y: m.t + 4, width: 14, height: 3, fill: runColor(key) }));
      svg.append(el("text", { x: lx + 19, y: m.t + 9, text: label }));
      lx += 30 + label.length * 6.5;
    }
    box.append(svg);
  }
  $("hv-ref").textContent = refs.join(" | ");
}

// ------------------------------------------------------------------ workers timeline
function renderWorkers() {
  const box = $("workers");
  box.innerHTML = "";
  const ts = allTrials().filter((t) => t.started_at);
  if (!ts.length) { box.append(el("p", { class: "muted", text: "No trials started yet." })); $("workers-note").textContent = ""; return; }
  const multi = S.runs.length > 1;
  const rowKey = (t) => (multi ? `${t.run} · ` : "") + (t.worker || "unassigned");
  const rows = [...new Set(ts.map(rowKey))].sort();
  const nowS = Date.now() / 1000;
  const t0 = Math.min(...ts.map((t) => t.started_at));
  const t1 = Math.max(...ts.map((t) => t.finished_at || (t.state === "RUNNING" ? nowS : t.started_at)), t0 + 0.01);
  const W = box.clientWidth || 500, rh = 20, m = { l: 118, r: 56, t: 8, b: 34 };
  const H = m.t + rows.length * rh + m.b;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, height: H });
  const sx = (v) => m.l + ((v - t0) / (t1 - t0)) * (W - m.l - m.r);
  const span = t1 - t0;
  const xt = niceTicks(0, span, Math.max(3, Math.floor((W - m.l - m.r) / 80)));
  const tlabel = (s) => (span >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}` :
    span >= 120 ? `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}` : `${xt.label(s)}s`);
  for (const v of xt.ticks) if (v <= span) {
    svg.append(el("line", { class: "gridline", x1: sx(t0 + v), x2: sx(t0 + v), y1: m.t, y2: H - m.b }));
    svg.append(el("text", { x: sx(t0 + v), y: H - m.b + 14, "text-anchor": "middle", text: tlabel(v) }));
  }
  svg.append(el("text", { class: "axis-label", x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", text: "time since the first trial started" }));
  const busy = {};
  rows.forEach((rk, i) => {
    const y = m.t + i * rh;
    if (i % 2 === 0) svg.append(el("rect", { x: m.l, y, width: W - m.l - m.r, height: rh, fill: "#fafbfc" }));
    svg.append(el("text", { x: m.l - 8, y: y + rh / 2 + 4, "text-anchor": "end", text: rk.length > 20 ? rk.slice(0, 19) + "…" : rk },
      el("title", { text: rk })));
  });
  const layer = el("g");
  for (const t of ts) {
    const i = rows.indexOf(rowKey(t)), y = m.t + i * rh + 3;
    const end = t.finished_at || (t.state === "RUNNING" ? nowS : t.started_at);
    busy[rowKey(t)] = (busy[rowKey(t)] || 0) + Math.max(0, end - t.started_at);
    const x = sx(t.started_at), w = Math.max(1.5, sx(end) - x - 0.5);
    const sel = S.sel && S.sel.run === t.run && S.sel.number === t.number;
    const dur = end - t.started_at;
    const r = el("rect", { class: "bar " + t.state, x, y, width: w, height: rh - 6, rx: 2,
      fill: STATE_COLOR[t.state] || "#999", stroke: sel ? "#1f2430" : null, "stroke-width": sel ? 2 : null },
      el("title", { text: `#${t.number} ${t.state} · ${fmtDur(dur)}` + (t.materialize_s !== null && t.materialize_s !== undefined ?
        ` (materialize ${fmtDur(t.materialize_s)}, evaluate ${fmtDur(t.evaluate_s)})` : "") + (t.error ? "\n" + t.error.split("\n")[0] : "") }));
    r.onclick = () => select(t.run, t.number);
    layer.append(r);
  }
  svg.append(layer);
  rows.forEach((rk, i) => {
    svg.append(el("text", { x: W - m.r + 6, y: m.t + i * rh + rh / 2 + 4, text: `${Math.round((100 * (busy[rk] || 0)) / span)}%` },
      el("title", { text: "share of the time span this worker was running a trial" })));
  });
  box.append(svg);
  const leg = Object.entries(STATE_COLOR).map(([k, c]) => `<span style="color:${c}">■</span> ${k.toLowerCase()}`).join("  ");
  const part = S.runs.some((r) => S.view[r.key]) ? " (of the loaded trials)" : "";
  $("workers-note").innerHTML = `${rows.length} worker${rows.length === 1 ? "" : "s"} · right: busy share${part} · ${leg}`;
}

// ------------------------------------------------------------------ trial table
function tableColumns() {
  const objs = objectiveList();
  const cols = [];
  if (S.runs.length > 1) cols.push({ id: "run", label: "run", get: (t) => t.run });
  cols.push({ id: "number", label: "#", num: true, get: (t) => t.number });
  cols.push({ id: "state", label: "state", get: (t) => t.state });
  cols.push({ id: "strategy", label: "strategy", get: (t) => t.strategy });
  cols.push({ id: "generation", label: "gen", num: true, get: (t) => t.generation });
  objs.forEach((o) => cols.push({
    id: "obj:" + o.name, label: `${o.name} ${o.direction === "minimize" ? "↓" : "↑"}`, num: true, obj: o.name,
    get: (t) => { const r = S.runs[runIndex(t.run)], i = objIndex(r, o.name); return t.values && i >= 0 ? t.values[i] : null; },
  }));
  cols.push({ id: "worker", label: "worker", get: (t) => t.worker || "" });
  cols.push({ id: "started_at", label: "started", num: true, get: (t) => t.started_at });
  cols.push({ id: "duration", label: "time", num: true, get: (t) => (t.finished_at && t.started_at ? t.finished_at - t.started_at : null) });
  cols.push({ id: "error", label: "error", get: (t) => t.error || "" });
  return cols;
}
function renderTable() {
  const cols = tableColumns();
  const thead = $("trials").querySelector("thead"), tbody = $("trials").querySelector("tbody");
  thead.innerHTML = "";
  const tr = el("tr");
  for (const c of cols) {
    const th = el("th", { class: c.num ? "num" : null, "data-col": c.id }, c.label,
      S.sort.col === c.id ? el("span", { class: "arr", text: S.sort.dir > 0 ? "▲" : "▼" }) : null);
    th.onclick = () => { S.sort = { col: c.id, dir: S.sort.col === c.id ? -S.sort.dir : (c.num ? -1 : 1) }; renderTable(); };
    tr.append(th);
  }
  thead.append(tr);
  const fronts = {};
  for (const r of S.runs) fronts[r.key] = frontSet(r);
  let rows = allTrials();
  const loaded = rows.length;
  const total = S.runs.map((r) => Object.values(r.counts || {}).reduce((a, b) => a + b, 0)).reduce((a, b) => a + b, 0);
  if (S.filter.state !== "all") rows = rows.filter((t) => t.state === S.filter.state);
  if (S.filter.front) rows = rows.filter((t) => fronts[t.run].has(t.number));
  const col = cols.find((c) => c.id === S.sort.col) || cols.find((c) => c.id === "number");
  rows.sort((a, b) => {
    const x = col.get(a), y = col.get(b);
    if (x === y) return a.number - b.number;
    if (x === null || x === undefined || x === "") return 1;
    if (y === null || y === undefined || y === "") return -1;
    return (x < y ? -1 : 1) * S.sort.dir;
  });
  const LIMIT = 600;
  $("table-note").textContent = `${rows.length} of ${total} trials` + (loaded < total ? ` (of ${loaded} loaded: the front, running, latest and a sample)` : "") +
    (rows.length > LIMIT ? ` (first ${LIMIT} shown)` : "");
  tbody.innerHTML = "";
  const frag = document.createDocumentFragment();
  for (const t of rows.slice(0, LIMIT)) {
    const r = S.runs[runIndex(t.run)];
    const row = el("tr", { class: t.state + (S.sel && S.sel.run === t.run && S.sel.number === t.number ? " sel" : ""), "data-run": t.run, "data-n": t.number });
    for (const c of cols) {
      let td;
      if (c.id === "number") td = el("td", { class: "num" }, fronts[t.run].has(t.number) ? el("span", { class: "star", title: "on the Pareto front", text: "★ " }) : null, String(t.number));
      else if (c.id === "state") td = el("td", {}, el("span", { class: "badge " + t.state, text: t.state.toLowerCase() }));
      else if (c.obj) {
        const i = objIndex(r, c.obj), ho = t.heldout && i >= 0 ? t.heldout[i] : null;
        td = el("td", { class: "num" }, fmt(c.get(t)), ho !== null && ho !== undefined ? el("span", { class: "ho", title: "held-out", text: `(${fmt(ho)})` }) : null);
      } else if (c.id === "started_at") td = el("td", { class: "num", text: clock(t.started_at) });
      else if (c.id === "duration") td = el("td", { class: "num", text: t.state === "RUNNING" ? "running" : fmtDur(c.get(t)) });
      else if (c.id === "error") td = el("td", { class: "err", title: t.error || "", text: t.error ? t.error.split("\n").filter(Boolean).slice(-1)[0].slice(0, 160) : "" });
      else td = el("td", { class: c.num ? "num" : null, text: String(c.get(t)) });
      row.append(td);
    }
    row.onclick = () => select(t.run, t.number);
    frag.append(row);
  }
  tbody.append(frag);
}

// ------------------------------------------------------------------ trial detail
async function select(run, number) {
  S.sel = { run, number };
  renderPlot(); renderTable(); renderWorkers();
  $("detail-title").textContent = `Trial #${number}` + (S.runs.length > 1 ? ` · ${run}` : "");
  try {
    S.detail = await getJSON(`/api/runs/${enc(run)}/trials/${number}`);
    if (!S.sel || S.sel.run !== run || S.sel.number !== number) return;
    renderDetail();
  } catch (e) {
    $("detail").innerHTML = `<p class="muted">Could not load trial ${number}: ${esc(e.message)}</p>`;
  }
}
function heatmap(map) {
  const nG = map.groups.length, nE = map.experts.length;
  const box = $("detail");
  const avail = Math.max(240, (box.clientWidth || 380) - 6);
  const labW = Math.min(96, 12 + 6.5 * Math.max(...map.experts.map((e) => e.length)));
  const cw = Math.max(9, Math.min(54, Math.floor((avail - labW - 8) / nG))), ch = Math.max(16, Math.min(30, cw));
  const glen = Math.max(...map.groups.map((g) => g.length));
  const rotate = cw < 6.5 * glen + 4;
  const labH = rotate ? Math.min(110, 6 + 5.6 * glen) : 18;
  const W = labW + nG * cw + 8, H = nE * ch + labH + 34;
  const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "heatmap", "data-param": map.param });
  const lo = map.lower, hi = map.upper;
  const div = lo < 0 && hi > 0;
  const color = (v) => {
    if (v === null) return "#eee";
    if (div) { const a = Math.max(Math.abs(lo), Math.abs(hi)); return ramp(RDBU, 0.5 + v / (2 * a)); }
    return ramp(BLUES, (v - lo) / (hi - lo || 1));
  };
  map.experts.forEach((e, i) => {
    svg.append(el("text", { x: labW - 6, y: i * ch + ch / 2 + 4, "text-anchor": "end", text: e }));
    map.groups.forEach((g, j) => {
      const v = map.matrix[i][j], fill = color(v);
      const r = el("rect", { class: "cell", x: labW + j * cw, y: i * ch, width: cw - 1, height: ch - 1, fill, "data-v": v },
        el("title", { text: `${g} / ${e} / ${map.param} = ${fmt(v)}` }));
      svg.append(r);
      if (cw >= 30 && v !== null) svg.append(el("text", { x: labW + j * cw + (cw - 1) / 2, y: i * ch + ch / 2 + 4, "text-anchor": "middle",
        style: `fill:${luminance(fill) < 0.55 ? "#fff" : "#1f2430"};font-size:10px;pointer-events:none`, text: fmt(v, 2) }));
    });
  });
  const gy = nE * ch + 4;
  const step = Math.max(1, Math.ceil(9 / cw));  // skip labels when cells are narrow
  map.groups.forEach((g, j) => {
    if (j % step) return;
    const x = labW + j * cw + cw / 2;
    svg.append(rotate ? el("text", { x: 0, y: 0, transform: `translate(${x + 3} ${gy + 4}) rotate(-60)`, "text-anchor": "end", text: g })
      : el("text", { x, y: gy + 11, "text-anchor": "middle", text: g }));
  });
  // colour bar
  const by = nE * ch + labH + 10, bw = Math.min(180, nG * cw);
  const gid = "grad-" + map.param.replace(/[^A-Za-z0-9_-]/g, "_");
  const defs = el("defs"), lg = el("linearGradient", { id: gid });
  const stops = div ? RDBU : BLUES;
  stops.forEach((c, i) => lg.append(el("stop", { offset: `${(100 * i) / (stops.length - 1)}%`, "stop-color": c })));
  defs.append(lg); svg.append(defs);
  svg.append(el("rect", { x: labW, y: by, width: bw, height: 8, fill: `url(#${gid})`, stroke: "#ddd" }));
  const blo = div ? -Math.max(Math.abs(lo), Math.abs(hi)) : lo, bhi = div ? Math.max(Math.abs(lo), Math.abs(hi)) : hi;
  svg.append(el("text", { x: labW, y: by + 20, text: fmt(blo, 3) }));
  svg.append(el("text", { x: labW + bw, y: by + 20, "text-anchor": "end", text: fmt(bhi, 3) }));
  return svg;
}
function renderDetail() {
  const d = S.detail, box = $("detail");
  box.innerHTML = "";
  const badges = el("div", { class: "badges" },
    el("span", { class: "badge " + d.state, text: d.state.toLowerCase() }),
    d.on_front ? el("span", { class: "badge front", text: "★ Pareto front" }) : null,
    el("span", { class: "badge", text: `${d.strategy} · gen ${d.generation}` }),
    d.worker ? el("span", { class: "badge", text: d.worker }) : null,
    d.parents && d.parents.length ? el("span", { class: "badge", text: `parents ${d.parents.join(", ")}` }) : null,
    d.attempts > 1 ? el("span", { class: "badge", text: `${d.attempts} attempts` }) : null);
  box.append(badges);
  const vt = el("table", { class: "vals" }, el("tr", {}, el("th", { text: "objective" }), el("th", { text: "search" }), el("th", { text: "held-out" })));
  d.objectives.forEach((o, i) => vt.append(el("tr", {},
    el("td", { text: `${o.name} (${o.direction === "minimize" ? "min" : "max"})` }),
    el("td", { text: fmt(d.values ? d.values[i] : null) }),
    el("td", { text: fmt(d.heldout ? d.heldout[i] : null) }))));
  box.append(vt);
  box.append(el("p", { class: "muted small" },
    `started ${clock(d.started_at)} · materialize ${fmtDur(d.materialize_s)} · evaluate ${fmtDur(d.evaluate_s)}`));
  if (d.error) { box.append(el("h3", { text: "Error" })); box.append(el("pre", { class: "err", text: d.error })); }
  const maps = (d.coefficients && d.coefficients.maps) || [];
  if (maps.length) {
    for (const mp of maps) {
      box.append(el("h3", {}, `Coefficients: ${mp.param} `, el("span", { class: "muted small", text: `experts × layer groups, bounds [${fmt(mp.lower, 3)}, ${fmt(mp.upper, 3)}]` })));
      box.append(el("div", { class: "heat" }, heatmap(mp)));
    }
  } else box.append(el("p", { class: "muted", text: "No coefficients recorded for this trial." }));
  const other = Object.entries((d.coefficients && d.coefficients.other) || {});
  if (other.length) {
    const t = el("table", { class: "mets" });
    for (const [k, v] of other) t.append(el("tr", {}, el("td", { text: k }), el("td", { class: "num", text: fmt(v) })));
    box.append(el("h3", { text: "Other parameters" }), t);
  }
  if (d.metrics && d.metrics.length) {
    const t = el("table", { class: "mets" }, el("tr", {}, el("th", { text: "objective" }), el("th", { text: "split" }),
      el("th", { text: "evaluator" }), el("th", { text: "metric" }), el("th", { class: "num", text: "value" })));
    for (const mt of d.metrics) {
      const o = d.objectives[mt.objective_idx];
      t.append(el("tr", {}, el("td", { text: o ? o.name : String(mt.objective_idx) }), el("td", { text: mt.split }),
        el("td", { text: mt.evaluator }), el("td", { text: mt.metric }), el("td", { class: "num", text: fmt(mt.value) })));
    }
    box.append(el("h3", { text: "Metrics" }), t);
  }
  // export (complete trials only: a failed or running trial has no merge worth writing)
  if (d.state !== "COMPLETE") {
    box.append(el("div", { class: "export" }, el("h3", { text: "Export this merge" }),
      el("p", { class: "muted small", text: `Only complete trials can be exported; this one is ${d.state.toLowerCase()}.` })));
    return;
  }
  const input = el("input", { type: "text", id: "export-dir", value: `merged/${d.run}-trial-${d.number}`, spellcheck: "false" });
  const force = el("input", { type: "checkbox", id: "export-force" });
  const msg = el("div", { class: "msg", id: "export-msg" });
  const btn = el("button", { class: "btn", type: "button", id: "export-btn", text: "Export" });
  btn.onclick = () => startExport(d.run, d.number, input.value, force.checked, btn, msg);
  box.append(el("div", { class: "export" }, el("h3", { text: "Export this merge" }),
    el("div", { class: "row" }, input, el("label", { class: "chk small" }, force, " overwrite"), btn),
    el("div", { class: "muted small", text: "Writes a Hugging Face model folder on the machine running the dashboard (relative paths: from its working directory)." }),
    msg));
}
async function startExport(run, number, outDir, force, btn, msg) {
  msg.className = "msg"; msg.textContent = "starting export…"; btn.disabled = true;
  try {
    const job = await getJSON(`/api/runs/${enc(run)}/trials/${number}/export`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ out_dir: outDir, force }),
    });
    msg.textContent = `exporting into ${job.out_dir}…`;
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const j = await getJSON(`/api/exports/${job.job}`);
      if (j.status === "running") continue;
      if (j.status === "done") { msg.className = "msg done"; msg.textContent = `exported to ${j.out_dir}`; }
      else { msg.className = "msg error"; msg.textContent = `export failed: ${j.error}`; }
      break;
    }
  } catch (e) {
    msg.className = "msg error"; msg.textContent = e.status === 501 ? `export unavailable: ${e.message}` : `export failed: ${e.message}`;
  } finally { btn.disabled = false; }
}

// ------------------------------------------------------------------ polling
function renderAll() { renderHeader(); renderPlot(); renderTable(); renderWorkers(); renderHV(); }
async function loadHV() {
  try { S.hv = await getJSON("/api/hypervolume?changes=true"); renderHV(); } catch (e) { /* next poll retries */ }
}
async function poll() {
  let changed = false, selChanged = false;
  try {
    for (const r of S.runs) {
      const held = S.trials[r.key];
      // a fresh view once the polls have added more than the limit to what the first load sent
      if (held && S.limit && held.size - (S.sent[r.key] || 0) > S.limit) { S.trials[r.key] = new Map(); delete S.cursor[r.key]; }
      const c = S.cursor[r.key];
      const q = new URLSearchParams();
      if (c && c.after_id !== null && c.after_id !== undefined) q.set("after_id", c.after_id);
      if (c && c.since !== null && c.since !== undefined) q.set("since", c.since);
      const res = await getJSON(`/api/runs/${enc(r.key)}/trials?${q}`);
      if (S.epoch !== null && res.epoch !== S.epoch) { S.epoch = res.epoch; S.trials = {}; S.cursor = {}; changed = true; return setTimeout(poll, 0); }
      S.epoch = res.epoch;
      S.limit = res.limit;
      if (!c) { S.view[r.key] = res.view; S.sent[r.key] = res.view ? res.view.sent : res.trials.length; S.trials[r.key] = new Map(); changed = true; }
      const map = S.trials[r.key] || (S.trials[r.key] = new Map());
      for (const t of res.trials) {
        map.set(t.id, t);
        if (S.sel && S.sel.run === r.key && S.sel.number === t.number) selChanged = true;
      }
      S.cursor[r.key] = res.cursor;
      const i = runIndex(r.key);
      if (res.trials.length || (S.runs[i].counter !== res.summary.counter) || S.runs[i].status !== res.summary.status) changed = true;
      S.runs[i] = res.summary;
    }
    S.online = true; S.updated = new Date();
    if (changed) { S.version++; renderHeader(); renderPlot(); renderTable(); renderWorkers(); loadHV(); }
    else { renderHeader(); if (S.runs.some((r) => (r.counts || {}).RUNNING)) renderWorkers(); }
    if (selChanged && S.sel) select(S.sel.run, S.sel.number);
  } catch (e) {
    S.online = false; renderHeader();
  }
  document.body.dataset.version = String(S.version);
  setTimeout(poll, POLL_MS);
}
async function start() {
  try {
    const doc = await getJSON("/api/runs");
    S.epoch = doc.epoch; S.runs = doc.runs;
  } catch (e) {
    $("live").className = "live off"; $("live").querySelector(".txt").textContent = "cannot reach the dashboard server";
    return setTimeout(start, 3000);
  }
  document.title = `${S.runs.map((r) => r.key).join(", ")} · mergesearch`;
  setupControls(); setup3d();
  $("hv-x").onchange = () => renderHV();
  renderHeader();
  let rt = null;
  window.addEventListener("resize", () => { clearTimeout(rt); rt = setTimeout(renderAll, 150); });
  await poll();
  document.body.dataset.ready = "1";
}
start();
