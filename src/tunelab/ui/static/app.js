// tunelab ui: a thin page over the JSON API in ui/app.py. No framework, no asset from elsewhere.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok && !(data && data.problems)) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

const fmtNum = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const fmtBytes = (b) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
const fmtTime = (s) => {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
};

function progressText(p, state) {
  if (state === "complete") return "done";
  if (!p.max_steps) return state === "starting" || state === "running" ? "starting…" : "";
  let text = `step ${p.step}/${p.max_steps}`;
  if (p.phase === "evaluating") text += " · evaluating";
  else if (p.eta_s !== null && (state === "running")) text += ` · ETA ${fmtTime(p.eta_s)}`;
  return text;
}

// -- charts ---------------------------------------------------------------------------------------

function lineChart(target, series, { width = 560, height = 220, log = false } = {}) {
  target.replaceChildren();
  const names = Object.keys(series).filter((k) => series[k].length);
  if (!names.length) { target.append(el("p", { class: "muted" }, "nothing logged yet")); return; }
  const pad = { l: 56, r: 12, t: 10, b: 26 };
  const pts = names.flatMap((n) => series[n]);
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    root.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: Y(y), y2: Y(y), stroke: "#eaecf0" }));
    const t = svg("text", { x: pad.l - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" });
    t.textContent = Math.abs(y) < 0.01 && y !== 0 ? y.toExponential(1) : y.toFixed(2);
    root.append(t);
  }
  const xt = svg("text", { x: width - pad.r, y: height - 6, "text-anchor": "end", "font-size": 10, fill: "#667085" });
  xt.textContent = `step ${x1}`;
  root.append(xt);
  const colours = ["#2b5cab", "#d9480f", "#1f7a44", "#7a5af8"];
  names.forEach((n, i) => {
    const d = series[n].map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, fill: "none", stroke: colours[i % 4], "stroke-width": 2 }));
    if (series[n].length === 1 || n === "eval_loss") for (const p of series[n]) root.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: colours[i % 4] }));
    const label = svg("text", { x: pad.l + 8 + i * 110, y: pad.t + 12, "font-size": 11, fill: colours[i % 4] });
    label.textContent = n.replace("_", " ");
    root.append(label);
  });
  target.append(root);
}

function histogramChart(target, bins) {
  target.replaceChildren();
  if (!bins.length) return;
  const width = 520, height = 180, pad = 28;
  const top = Math.max(...bins.map((b) => b[2]));
  const w = (width - 2 * pad) / bins.length;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  bins.forEach(([lo, hi, n], i) => {
    const h = ((height - 2 * pad) * n) / top;
    const bar = svg("rect", { x: pad + i * w + 1, y: height - pad - h, width: w - 2, height: h, fill: "#2b5cab" });
    const tip = svg("title"); tip.textContent = `${lo}–${hi} tokens: ${n} rows`; bar.append(tip);
    root.append(bar);
  });
  const first = svg("text", { x: pad, y: height - 8, "font-size": 10, fill: "#667085" }); first.textContent = `${bins[0][0]}`;
  const last = svg("text", { x: width - pad, y: height - 8, "font-size": 10, fill: "#667085", "text-anchor": "end" });
  last.textContent = `${bins[bins.length - 1][1]} tokens`;
  root.append(first, last);
  target.append(root);
}

// -- pages ----------------------------------------------------------------------------------------

let timer = null;
function every(ms, fn) { clearInterval(timer); fn(); timer = setInterval(fn, ms); }

const pages = {
  async new() { clearInterval(timer); },
  async runs() { every(1500, refreshRuns); },
  async run(name) { currentRun = name; $("#report-frame").hidden = true; $("#report-frame").removeAttribute("src"); every(1500, refreshRun); },
  async compare() { clearInterval(timer); await fillRunChoices(); },
  async chat() { clearInterval(timer); await fillChatModels(); },
  async arena() { clearInterval(timer); await fillContestants(); await refreshLeaderboard(); },
};

async function route() {
  const [page, arg] = (location.hash.slice(1) || "runs").split("/");
  const name = pages[page] ? page : "runs";
  document.querySelectorAll(".page").forEach((p) => p.classList.toggle("active", p.id === `page-${name}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "run" ? "runs" : name)));
  await pages[name](arg && decodeURIComponent(arg));
}

// new run

function formData() {
  const data = {};
  for (const input of $("#new-form").querySelectorAll("input[name], select[name]")) {
    const v = input.value.trim();
    if (v === "") continue;
    data[input.name] = input.type === "number" ? Number(v) : v;
  }
  if (data.eval_steps) data.save_steps = data.eval_steps;
  return data;
}

function showCheck(result) {
  $("#check-result").hidden = false;
  const list = $("#problems");
  list.replaceChildren();
  const problems = result.problems || [];
  for (const p of problems) list.append(el("li", { class: p.severity }, p.text));
  if (!problems.length) list.append(el("li", { class: "ok" }, `no problems${result.counts ? ` · rows: ${Object.entries(result.counts).map(([k, v]) => `${k} ${v}`).join(", ")}` : ""}`));
  const preview = $("#preview");
  preview.replaceChildren();
  for (const row of result.preview || []) {
    preview.append(el("div", { class: "row-preview" }, el("span", { class: "source" }, row.source),
      ...row.segments.map((s) => el("span", { class: s.trained ? "trained" : "masked" }, s.text))));
  }
  if ((result.preview || []).length) preview.append(el("p", { class: "muted" }, "green: trained (the loss is on it) · grey: masked"));
  histogramChart($("#histogram"), result.histogram || []);
  $("#plan").replaceChildren(result.plan ? el("div", {}, el("h3", {}, `Memory estimate: ${fmtBytes(result.plan.peak_bytes)} at ${result.plan.peak_phase} (tunelab plan)`),
    el("ul", { class: "terms" }, result.plan.terms.filter((t) => t.bytes > 0).map((t) => el("li", {}, `${t.label}: ${fmtBytes(t.bytes)}`))),
    el("p", { class: "muted" }, `${result.plan.total_steps} optimizer steps`)) : "");
  $("#yaml").textContent = result.yaml || "";
}

async function checkForm() {
  $("#form-status").textContent = "checking…";
  try { showCheck(await api("/api/check", formData())); $("#form-status").textContent = ""; }
  catch (e) { $("#form-status").textContent = e.message; }
}

async function startRun(event) {
  event.preventDefault();
  $("#start-btn").disabled = true;
  $("#form-status").textContent = "checking…";
  try {
    const result = await api("/api/runs", formData());
    showCheck(result);
    if (result.started) { $("#form-status").textContent = "started"; location.hash = `#run/${encodeURIComponent(result.config.name)}`; }
    else $("#form-status").textContent = "not started: fix the problems above";
  } catch (e) { $("#form-status").textContent = e.message; }
  finally { $("#start-btn").disabled = false; }
}

async function uploadFile() {
  const file = $("#f-upload").files[0];
  if (!file) return;
  $("#form-status").textContent = `uploading ${file.name}…`;
  const b64 = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  try {
    const { path } = await api("/api/upload", { filename: file.name, base64: b64 });
    $("#f-data").value = path;
    await checkForm();
  } catch (e) { $("#form-status").textContent = e.message; }
}

// runs

async function refreshRuns() {
  const runs = await api("/api/runs");
  const body = $("#runs-table tbody");
  body.replaceChildren();
  $("#no-runs").hidden = runs.length > 0;
  for (const r of runs) {
    const bar = el("div", { class: "bar" }, el("div"));
    bar.firstChild.style.width = `${Math.round(100 * (r.state === "complete" ? 1 : r.progress.fraction))}%`;
    body.append(el("tr", { "data-run": r.name },
      el("td", {}, el("a", { href: `#run/${encodeURIComponent(r.name)}` }, r.name)),
      el("td", {}, el("span", { class: `badge ${r.state}` }, r.state), r.error ? el("div", { class: "error-line" }, r.error) : null),
      el("td", {}, [r.task, r.method].filter(Boolean).join(" · ")),
      el("td", {}, r.model || ""),
      el("td", {}, bar, " ", progressText(r.progress, r.state)),
      el("td", {}, r.has_report ? el("a", { href: `/runs/${encodeURIComponent(r.name)}/report`, target: "_blank" }, "report") : "")));
  }
}

let currentRun = null;
async function refreshRun() {
  if (!currentRun) return;
  let r;
  try { r = await api(`/api/runs/${encodeURIComponent(currentRun)}`); }
  catch (e) { $("#run-name").textContent = currentRun; $("#run-error").hidden = false; $("#run-error").textContent = e.message; return; }
  $("#run-name").textContent = r.name;
  $("#run-state").textContent = r.state;
  $("#run-state").className = `badge ${r.state}`;
  $("#run-error").hidden = !r.error;
  $("#run-error").textContent = r.error || "";
  $("#run-bar").style.width = `${Math.round(100 * (r.state === "complete" ? 1 : r.progress.fraction))}%`;
  $("#run-progress").textContent = progressText(r.progress, r.state);
  $("#stop-btn").disabled = r.state !== "running";
  $("#resume-btn").disabled = !(r.state === "stopped" || r.state === "failed");
  const c = r.curves || {};
  lineChart($("#loss-chart"), { loss: c.loss || [], eval_loss: c.eval_loss || [] });
  lineChart($("#lr-chart"), { learning_rate: c.learning_rate || [] });
  $("#run-log").textContent = r.log_tail || "(no terminal output: this run was not started from here)";
  $("#run-config").textContent = r.config || "";
  const link = $("#report-link");
  link.hidden = !r.has_report;
  link.href = `/runs/${encodeURIComponent(r.name)}/report`;
  const frame = $("#report-frame");
  if (r.has_report && r.state === "complete" && frame.hidden) { frame.src = link.href; frame.hidden = false; }
  if (r.state !== "running" && r.state !== "starting") clearInterval(timer);
}

async function stopRun() { await api(`/api/runs/${encodeURIComponent(currentRun)}/stop`, {}); every(1500, refreshRun); }
async function resumeRun() { await api(`/api/runs/${encodeURIComponent(currentRun)}/resume`, {}); every(1500, refreshRun); }

// compare

async function completeRuns(generativeOnly = false) {
  return (await api("/api/runs")).filter((r) => r.state === "complete" && (!generativeOnly || r.generative));
}

async function fillRunChoices() {
  const box = $("#compare-runs");
  box.replaceChildren();
  for (const r of await completeRuns()) box.append(el("label", { class: "inline" }, el("input", { type: "checkbox", value: r.name, checked: true }), ` ${r.name}`));
  if (!box.children.length) box.append(el("p", { class: "muted" }, "no complete runs yet"));
}

async function compareRuns() {
  const runs = [...$("#compare-runs").querySelectorAll("input:checked")].map((i) => i.value);
  const max = Number($("#compare-max").value) || null;
  $("#compare-status").textContent = "evaluating… (outputs already in the runs are reused)";
  $("#compare-btn").disabled = true;
  try {
    const result = await api("/api/compare", { runs, base: $("#compare-base").checked, max_examples: max });
    const table = $("#compare-table");
    table.replaceChildren();
    const cols = Object.keys(result.table[0] || {});
    table.append(el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))));
    table.append(el("tbody", {}, result.table.map((row) => el("tr", {}, cols.map((c) => el("td", {}, typeof row[c] === "number" ? fmtNum(row[c]) : (row[c] ?? "")))))));
    table.hidden = false;
    const frame = $("#compare-frame");
    frame.src = `${result.report}?t=${Date.now()}`;
    frame.hidden = false;
    $("#compare-status").textContent = `baseline: ${result.baseline} · primary metric: ${result.primary}`;
  } catch (e) { $("#compare-status").textContent = e.message; }
  finally { $("#compare-btn").disabled = false; }
}

// chat

const conversations = { left: [], right: [] };
async function contestants() { return (await api("/api/arena/contestants")).contestants; }

async function fillChatModels() {
  const names = await contestants();
  for (const side of ["left", "right"]) {
    const select = $(`#chat-${side}`);
    const keep = select.value;
    select.replaceChildren(...(side === "right" ? [el("option", { value: "" }, "(none)")] : []), ...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(keep)) select.value = keep;
    else if (side === "right" && names.length > 1) select.value = names[1];
  }
}

function renderChat(side) {
  const log = $(`#chat-log-${side}`);
  log.replaceChildren(...conversations[side].map((m) => el("div", { class: `msg ${m.role}` }, m.content)));
  log.scrollTop = log.scrollHeight;
}

async function chatOn(side, text) {
  const model = $(`#chat-${side}`).value;
  if (!model) return;
  const convo = conversations[side];
  convo.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "" };
  convo.push(reply);
  renderChat(side);
  const res = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: convo.slice(0, -1), max_tokens: 128 }) });
  if (!res.ok) { reply.content = `(error: ${(await res.json().catch(() => ({}))).error || res.status})`; renderChat(side); return; }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      const event = JSON.parse(line);
      if (event.text) reply.content += event.text;
      if (event.error) reply.content += ` (${event.error})`;
      if (event.done) $(`#chat-log-${side}`).dataset.done = String(Number($(`#chat-log-${side}`).dataset.done || 0) + 1);
      renderChat(side);
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("#chat-text").value.trim();
  if (!text) return;
  $("#chat-text").value = "";
  $("#chat-send").disabled = true;
  try { await Promise.all(["left", "right"].map((s) => chatOn(s, text))); }
  finally { $("#chat-send").disabled = false; }
}

// arena

let match = null;
async function fillContestants() {
  const box = $("#arena-contestants");
  const names = await contestants();
  box.replaceChildren(...names.map((n) => el("label", { class: "inline" }, el("input", { type: "checkbox", value: n, checked: true }), ` ${n}`)));
  if (!names.length) box.append(el("p", { class: "muted" }, "no finished generative runs yet"));
  $("#arena-who").value = localStorage.getItem("tunelab-who") || "";
}

async function newMatch() {
  const chosen = [...$("#arena-contestants").querySelectorAll("input:checked")].map((i) => i.value);
  $("#arena-status").textContent = "generating both answers…";
  $("#arena-new").disabled = true;
  try {
    match = await api("/api/arena/match", { contestants: chosen, prompt: $("#arena-prompt").value });
    $("#arena-match").hidden = false;
    $("#arena-shown-prompt").textContent = match.prompt;
    $("#arena-a").textContent = match.a;
    $("#arena-b").textContent = match.b;
    $("#arena-name-a").textContent = "";
    $("#arena-name-b").textContent = "";
    document.querySelectorAll(".votes button").forEach((b) => (b.disabled = false));
    $("#arena-status").textContent = "";
  } catch (e) { $("#arena-status").textContent = e.message; }
  finally { $("#arena-new").disabled = false; }
}

async function castVote(vote) {
  if (!match) return;
  const who = $("#arena-who").value.trim();
  localStorage.setItem("tunelab-who", who);
  document.querySelectorAll(".votes button").forEach((b) => (b.disabled = true));
  try {
    const result = await api("/api/arena/vote", { id: match.id, vote, who });
    $("#arena-name-a").textContent = `(${result.a})`;
    $("#arena-name-b").textContent = `(${result.b})`;
    $("#arena-status").textContent = "vote recorded";
    match = null;
    await refreshLeaderboard();
  } catch (e) { $("#arena-status").textContent = e.message; }
}

async function refreshLeaderboard() {
  const board = await api("/api/arena/leaderboard");
  $("#arena-votes").textContent = `${board.votes} vote${board.votes === 1 ? "" : "s"}`;
  const body = $("#leaderboard tbody");
  body.replaceChildren(...board.rows.map((r, i) => el("tr", { "data-model": r.model },
    el("td", {}, i + 1), el("td", {}, r.model),
    el("td", {}, `${fmtNum(r.bt, 0)} [${fmtNum(r.bt_low, 0)}, ${fmtNum(r.bt_high, 0)}]`),
    el("td", {}, `${fmtNum(r.elo, 0)} [${fmtNum(r.elo_low, 0)}, ${fmtNum(r.elo_high, 0)}]`),
    el("td", {}, r.games), el("td", {}, r.win_rate === null ? "–" : `${Math.round(100 * r.win_rate)}%`),
    el("td", {}, Object.entries(r.metrics).slice(0, 4).map(([k, v]) => `${k} ${fmtNum(v)}`).join(" · ")))));
}

// -- start ----------------------------------------------------------------------------------------

async function init() {
  const options = await api("/api/options");
  $("#runs-dir").textContent = options.runs_dir;
  $("#model-list").replaceChildren(...options.models.map((m) => el("option", { value: m })));
  $("#f-task").replaceChildren(...options.tasks.map((t) => el("option", { value: t }, t)));
  $("#f-method").replaceChildren(...options.methods.map((m) => el("option", { value: m }, m)));
  $("#f-method").value = "lora";
  $("#check-btn").addEventListener("click", checkForm);
  $("#new-form").addEventListener("submit", startRun);
  $("#f-upload").addEventListener("change", uploadFile);
  $("#copy-yaml").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("#yaml").textContent).catch(() => {}));
  $("#stop-btn").addEventListener("click", stopRun);
  $("#resume-btn").addEventListener("click", resumeRun);
  $("#compare-btn").addEventListener("click", compareRuns);
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-clear").addEventListener("click", () => { conversations.left = []; conversations.right = []; renderChat("left"); renderChat("right"); });
  $("#arena-new").addEventListener("click", newMatch);
  document.querySelectorAll(".votes button").forEach((b) => b.addEventListener("click", () => castVote(b.dataset.vote)));
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "1";
}

init().catch((e) => { document.body.prepend(el("p", { class: "error-line" }, `tunelab ui failed to start: ${e.message}`)); });
