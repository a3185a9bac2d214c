// Switchboard call history dashboard. Plain JavaScript, no dependencies: it reads /api/calls and
// draws the list, one call's transcript, its recording and a per-turn latency chart (inline SVG).
// Every value from the API goes into the page as text, never as HTML.
"use strict";

const KEY_STORAGE = "switchboard.apiKey";
const PAGE_SIZE = 50;
const REFRESH_MS = 15000;
const SVG_NS = "http://www.w3.org/2000/svg";
const METRICS = [
  { key: "stt_final_ms", cls: "stt", label: "STT" },
  { key: "llm_first_token_ms", cls: "llm", label: "LLM" },
  { key: "tts_first_byte_ms", cls: "tts", label: "TTS" },
  { key: "voice_to_voice_ms", cls: "v2v", label: "Voice-to-voice" },
];

const $ = (id) => document.getElementById(id);
const state = { next: null, direction: "", view: "list", sid: null, blobUrl: null, timer: null };

// ----- small helpers -----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "dataset") Object.entries(v).forEach(([dk, dv]) => node.setAttribute("data-" + dk, dv));
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmtTime(ms) {
  const d = new Date(ms);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + time;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function fmtOffset(ms) {
  const s = ms / 1000;
  return `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

function fmtMs(v) {
  return v === null || v === undefined ? "—" : `${Math.round(v)} ms`;
}

function shortHash(v) {
  return v ? v.slice(0, 8) : null;
}

function personaLabel(call) {
  if (!call.persona) return el("span", { class: "muted" }, call.requested_persona || "—");
  const hash = shortHash(call.persona.version);
  return el("span", { title: call.persona.version || "built-in persona" }, call.persona.name,
    hash ? el("span", { class: "hash" }, "@" + hash) : null);
}

const OUTCOMES = {
  caller_hung_up: ["Caller hung up", "ok"],
  bot_hung_up: ["Bot hung up", "ok"],
  transferred: ["Transferred", "ok"],
  failed: ["Failed", "bad"],
  interrupted: ["Interrupted", "warn"],
};

function outcomeBadge(call) {
  if (!call.outcome) return el("span", { class: "badge live", title: "The call is still going on" }, "In progress");
  const [label, cls] = OUTCOMES[call.outcome] || [call.outcome, ""];
  return el("span", { class: "badge " + cls, title: call.outcome_detail || call.outcome }, label);
}

function directionLabel(d) {
  return el("span", { class: "dir" }, d || "unknown");
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// ----- API access --------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

let keyPrompt = null;

// Shows the key dialog once, however many requests are waiting for it.
function askForKey(refused) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = $("key-dialog");
    const input = $("key-input");
    $("key-error").hidden = !refused;
    input.value = "";
    const done = (key) => {
      $("key-form").onsubmit = null;
      $("key-cancel").onclick = null;
      dialog.close();
      keyPrompt = null;
      resolve(key);
    };
    $("key-form").onsubmit = (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (key) done(key);
    };
    $("key-cancel").onclick = () => done(null);
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { asBlob = false } = {}) {
  for (;;) {
    const headers = {};
    const key = apiKey();
    if (key) headers["Authorization"] = "Bearer " + key;
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (resp.status === 401) {
      const entered = await askForKey(Boolean(key));
      if (!entered) throw new ApiError(401, "An API key is needed to see the call history.");
      sessionStorage.setItem(KEY_STORAGE, entered);
      $("key-button").hidden = false;
      continue;
    }
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try {
        message = (await resp.json()).error || message;
      } catch (_) {
        /* not JSON */
      }
      throw new ApiError(resp.status, message);
    }
    return asBlob ? resp.blob() : resp.json();
  }
}

function showError(e) {
  notice(e instanceof ApiError ? e.message : `Could not reach the server: ${e.message}`);
}

// ----- call list ---------------------------------------------------------------------------

function callRow(call) {
  const open = () => (location.hash = "#/calls/" + encodeURIComponent(call.call_sid));
  return el("tr", {
    dataset: { sid: call.call_sid, outcome: call.outcome || "in_progress" },
    tabindex: 0,
    onclick: open,
    onkeydown: (e) => { if (e.key === "Enter") open(); },
  },
  el("td", { class: "time", title: new Date(call.started_at_ms).toISOString() }, fmtTime(call.started_at_ms)),
  el("td", {}, directionLabel(call.direction)),
  el("td", { class: "numbers" }, call.from || "—", el("span", { class: "muted" }, " → "), call.to || "—"),
  el("td", {}, personaLabel(call)),
  el("td", { class: "num" }, fmtDuration(call.duration_ms)),
  el("td", {}, outcomeBadge(call)),
  el("td", { class: "num" }, call.turns));
}

async function loadCalls({ append = false } = {}) {
  const table = $("calls");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.direction) params.set("direction", state.direction);
  if (append && state.next) params.set("before", state.next);
  table.dataset.state = "loading";
  try {
    const page = await api("/api/calls?" + params);
    notice(null);
    const body = table.tBodies[0];
    if (!append) body.replaceChildren();
    page.calls.forEach((c) => body.append(callRow(c)));
    state.next = page.next_before;
    $("more").hidden = !state.next;
    const n = body.rows.length;
    $("empty").hidden = n > 0;
    $("count").textContent = n ? `${n}${state.next ? "+" : ""} call${n === 1 ? "" : "s"}` : "";
    table.dataset.state = "loaded";
  } catch (e) {
    table.dataset.state = "error";
    showError(e);
  }
}

// ----- one call ----------------------------------------------------------------------------

function metaItem(label, value, title, wide) {
  return el("div", { class: wide ? "wide" : null }, el("dt", {}, label), el("dd", { title: title || value }, value));
}

function renderMeta(call) {
  $("call-title").textContent = call.call_sid;
  $("call-outcome").replaceChildren(outcomeBadge(call));
  const p = call.persona;
  const persona = p ? p.name + (p.version ? "@" + shortHash(p.version) : "") : call.requested_persona || "—";
  const items = [
    metaItem("Started", new Date(call.started_at_ms).toLocaleString()),
    metaItem("Duration", fmtDuration(call.duration_ms)),
    metaItem("Direction", call.direction || "unknown"),
    metaItem("From → To", `${call.from || "—"} → ${call.to || "—"}`, null, true),
    metaItem("Persona", persona, p && p.version ? `${p.name}, version ${p.version}` : persona),
    metaItem("Caller turns", String(call.turns)),
  ];
  if (call.outcome_detail) items.push(metaItem("Detail", call.outcome_detail, null, true));
  $("call-meta").replaceChildren(...items);
}

function seekTo(ms) {
  const audio = $("recording");
  if (!audio.src) return;
  audio.currentTime = ms / 1000;
  audio.play().catch(() => {});
}

function renderTranscript(lines) {
  const list = $("transcript");
  list.replaceChildren(...lines.map((l) => {
    const lat = l.latency;
    const latText = lat
      ? METRICS.filter((m) => lat[m.key] !== null && lat[m.key] !== undefined)
        .map((m) => `${m.label} ${Math.round(lat[m.key])} ms`).join(" · ")
      : "";
    return el("li", {
      class: `line ${l.role}${l.interrupted ? " interrupted" : ""}`,
      dataset: { seq: l.seq, role: l.role, interrupted: String(l.interrupted) },
    },
    el("button", { class: "at", type: "button", title: "Play from here", onclick: () => seekTo(l.start_ms) },
      fmtOffset(l.start_ms)),
    el("div", { class: "bubble" },
      el("span", { class: "who" }, l.role === "user" ? "Caller" : "Bot"),
      el("span", { class: "text" }, l.text),
      l.interrupted ? el("span", { class: "flag", title: "The caller spoke over this; only what was heard is kept" }, "interrupted") : null,
      latText ? el("span", { class: "lat" }, latText) : null));
  }));
  $("transcript-empty").hidden = lines.length > 0;
}

// A nice round step for about `target` ticks up to `max`.
function niceStep(max, target) {
  const raw = max / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

// Grouped bars: one group per assistant turn that carries latencies, one bar per metric.
function renderLatency(lines) {
  const chart = $("latency-chart");
  const turns = lines.filter((l) => l.role === "assistant" && l.latency);
  $("latency-note").hidden = turns.length > 0;
  chart.replaceChildren();
  if (!turns.length) {
    chart.setAttribute("viewBox", "0 0 600 0");
    return;
  }
  const values = turns.flatMap((t) => METRICS.map((m) => t.latency[m.key]).filter((v) => typeof v === "number"));
  const max = Math.max(100, ...values);
  const step = niceStep(max, 4);
  const top = Math.ceil(max / step) * step;
  const W = 600, H = 240, left = 48, right = 8, topPad = 14, bottom = 28;
  const plotW = W - left - right, plotH = H - topPad - bottom;
  const y = (v) => topPad + plotH - (v / top) * plotH;
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  for (let v = 0; v <= top + 1e-9; v += step) {
    chart.append(
      svg("line", { class: "grid-line", x1: left, x2: W - right, y1: y(v), y2: y(v) }),
      svg("text", { class: "axis-label", x: left - 6, y: y(v) + 4, "text-anchor": "end" },
        v >= 1000 ? `${+(v / 1000).toFixed(1)} s` : `${v} ms`));
  }
  const slot = plotW / turns.length;
  const barW = Math.max(3, Math.min(18, (slot * 0.75) / METRICS.length));
  const groupW = barW * METRICS.length;
  turns.forEach((t, i) => {
    const x0 = left + slot * i + (slot - groupW) / 2;
    const g = svg("g", { dataset: { turn: i + 1, seq: t.seq } });
    METRICS.forEach((m, j) => {
      const v = t.latency[m.key];
      const x = x0 + j * barW;
      if (typeof v === "number") {
        const h = Math.max(1, (v / top) * plotH);
        g.append(svg("rect", {
          class: `bar ${m.cls}`, x: x + 0.5, y: topPad + plotH - h, width: barW - 1, height: h, rx: 2,
          dataset: { metric: m.cls, ms: Math.round(v) },
        }, svg("title", {}, `Turn ${i + 1} · ${m.label}: ${Math.round(v)} ms`)));
      } else {
        g.append(svg("rect", {
          class: "missing", x: x + 0.5, y: topPad + plotH - 2, width: barW - 1, height: 2,
          dataset: { metric: m.cls },
        }, svg("title", {}, `Turn ${i + 1} · ${m.label}: not measured`)));
      }
    });
    const v2v = t.latency.voice_to_voice_ms;
    if (typeof v2v === "number" && turns.length <= 16) {
      g.append(svg("text", { class: "value", x: x0 + groupW - barW / 2, y: y(v2v) - 3, "text-anchor": "middle" },
        Math.round(v2v)));
    }
    g.append(svg("text", { class: "axis-label", x: x0 + groupW / 2, y: H - 10, "text-anchor": "middle" }, i + 1));
    chart.append(g);
  });
  chart.append(svg("text", { class: "axis-label", x: W - right, y: H - 10, "text-anchor": "end" }, "turn"));
}

async function loadRecording(call) {
  const audio = $("recording");
  if (state.blobUrl) {
    URL.revokeObjectURL(state.blobUrl);
    state.blobUrl = null;
  }
  audio.removeAttribute("src");
  audio.load();
  const url = `/api/calls/${encodeURIComponent(call.call_sid)}/recording`;
  if (!call.has_recording) {
    audio.hidden = true;
    $("recording-note").textContent = "This call was not recorded.";
    return;
  }
  audio.hidden = false;
  $("recording-note").textContent = "Left: caller · Right: bot. Click a line's time to jump there.";
  if (!apiKey()) {
    // No key: the browser streams it itself and seeks with Range requests.
    audio.src = url;
    return;
  }
  // An <audio> element can't send the key: fetch it with the key, then play it from memory.
  try {
    state.blobUrl = URL.createObjectURL(await api(url, { asBlob: true }));
    audio.src = state.blobUrl;
  } catch (e) {
    audio.hidden = true;
    $("recording-note").textContent = e.message;
  }
}

async function loadCall(sid) {
  const view = $("call-view");
  delete view.dataset.loaded;
  $("call-title").textContent = sid;
  $("call-meta").replaceChildren();
  $("transcript").replaceChildren();
  $("latency-chart").replaceChildren();
  try {
    const call = await api("/api/calls/" + encodeURIComponent(sid));
    if (state.sid !== sid) return; // navigated away meanwhile
    notice(null);
    renderMeta(call);
    renderTranscript(call.lines);
    renderLatency(call.lines);
    await loadRecording(call);
    view.dataset.loaded = sid;
  } catch (e) {
    showError(e);
  }
}

// ----- navigation --------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/calls\/([^/]+)$/);
  const sid = m ? decodeURIComponent(m[1]) : null;
  state.sid = sid;
  state.view = sid ? "call" : "list";
  document.body.dataset.view = state.view;
  $("list-view").hidden = Boolean(sid);
  $("call-view").hidden = !sid;
  document.title = sid ? `${sid} · Switchboard` : "Calls · Switchboard";
  if (sid) {
    loadCall(sid);
  } else {
    $("recording").pause();
    loadCalls();
  }
}

function init() {
  $("key-button").hidden = !apiKey();
  $("key-button").onclick = async () => {
    const key = await askForKey(false);
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
      route();
    }
  };
  $("refresh").onclick = () => route();
  $("more").onclick = () => loadCalls({ append: true });
  $("direction").onchange = (e) => {
    state.direction = e.target.value;
    state.next = null;
    loadCalls();
  };
  window.addEventListener("hashchange", route);
  // Keep the first page fresh while it is on screen (in-progress calls finish, new ones start).
  state.timer = setInterval(() => {
    if (state.view === "list" && !document.hidden && !keyPrompt && $("calls").tBodies[0].rows.length <= PAGE_SIZE) {
      loadCalls();
    }
  }, REFRESH_MS);
  route();
}

init();
