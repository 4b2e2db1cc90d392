#pragma once
// The chat page `moe serve` answers at GET / (docs/serving.md): one self-contained HTML document
// (no CDN, nothing fetched but the server's own /v1/models and /v1/chat/completions). It streams a
// reply with "moe": {"return_routing": true} and draws the token x layer expert map as the tokens
// arrive: rows = generated tokens, columns = layers, each cell split between the chosen experts in
// proportion to their combine weights (top-1 first, its number written in the cell), a tooltip with
// every expert and weight, and a legend of expert colours with how often each was the top choice.
// URL query: ?prompt=TEXT&autosend=1 sends a message on load (headless browsers, links);
// max_tokens, temperature and seed preset the fields. With --api-key the key goes into the page's
// key field or the URL fragment (#key=KEY, never sent to the server); it is kept in localStorage. When a reply ends, <body data-state="done"> (or "error").
namespace moe::server {

inline constexpr const char kChatPage[] = R"moepage(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>moe serve</title>
<style>
  :root { --bg:#f6f7f9; --panel:#fff; --ink:#1d2330; --muted:#6b7280; --line:#e3e6eb; --accent:#2f6fde; --err:#b42318; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color:var(--ink); background:var(--bg); display:flex; flex-direction:column; height:100vh; }
  header { display:flex; align-items:center; gap:12px; padding:10px 18px; background:var(--panel);
           border-bottom:1px solid var(--line); flex:none; }
  header h1 { font-size:16px; margin:0; font-weight:650; letter-spacing:.2px; }
  #model { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12.5px; color:var(--muted);
           white-space:nowrap; overflow:hidden; text-overflow:ellipsis; min-width:0; }
  #status { margin-left:auto; color:var(--muted); font-size:12.5px; white-space:nowrap; }
  header label { font-size:12px; color:var(--muted); display:flex; align-items:center; gap:4px; white-space:nowrap; }
  header input { font:inherit; font-size:12px; padding:2px 5px; border:1px solid var(--line); border-radius:5px; width:54px; }
  header input#key { width:110px; }
  main { display:grid; grid-template-columns:minmax(320px, 1fr) minmax(300px, max-content); gap:16px; padding:16px 18px;
         flex:1; min-height:0; }
  @media (max-width: 900px) { body { height:auto; } header { flex-wrap:wrap; } main { grid-template-columns:1fr; } }
  section { background:var(--panel); border:1px solid var(--line); border-radius:10px; display:flex;
            flex-direction:column; min-height:0; }
  section h2 { font-size:13px; font-weight:600; margin:0; padding:10px 14px; border-bottom:1px solid var(--line);
               color:#374151; display:flex; gap:10px; align-items:baseline; }
  section h2 small { color:var(--muted); font-weight:400; }
  #messages { flex:1; overflow:auto; padding:12px 14px; display:flex; flex-direction:column; gap:10px; }
  .msg { max-width:92%; padding:8px 11px; border-radius:10px; white-space:pre-wrap; word-break:break-word; }
  .msg.user { align-self:flex-end; background:#e8f0fe; }
  .msg.assistant { align-self:flex-start; background:#f1f2f4; }
  .msg.assistant.streaming .text::after { content:"\258D"; color:var(--accent); animation:blink 1s steps(1) infinite; }
  @keyframes blink { 50% { opacity:0; } }
  .msg .meta { font-size:11.5px; color:var(--muted); margin-top:4px; white-space:normal; }
  .error { color:var(--err); background:#fef3f2; border:1px solid #fecdca; }
  form { display:flex; gap:8px; padding:10px 14px; border-top:1px solid var(--line); }
  textarea { flex:1; font:inherit; resize:none; height:44px; padding:8px 10px; border:1px solid var(--line); border-radius:8px; }
  button { font:inherit; padding:0 16px; border:0; border-radius:8px; background:var(--accent); color:#fff; cursor:pointer; }
  button:disabled { background:#9db7ec; cursor:default; }
  button.plain { background:none; color:var(--muted); padding:0 6px; }
  #mapwrap { flex:1; overflow:auto; padding:0 14px 10px; }
  #map { border-collapse:separate; border-spacing:2px; font-size:11.5px; }
  #map th { font-weight:500; color:var(--muted); padding:8px 2px 2px; text-align:center; position:sticky; top:0;
            background:var(--panel); z-index:1; }
  #map td.tok { font-family:ui-monospace, "DejaVu Sans Mono", monospace; color:#374151; text-align:right;
                padding-right:6px; white-space:pre; max-width:110px; overflow:hidden; text-overflow:ellipsis; }
  #map td.cell { width:34px; min-width:34px; height:18px; border-radius:3px; padding:0; text-align:center;
                 font-size:10.5px; font-weight:600; color:#fff; text-shadow:0 0 2px rgba(0,0,0,.55); cursor:default; }
  #map td.cell.dense { background:#eceef1; }
  #map tr:hover td.tok { color:var(--accent); }
  #hover { min-height:20px; font-size:12px; color:var(--muted); padding:6px 14px; border-top:1px solid var(--line);
           font-family:ui-monospace, "DejaVu Sans Mono", monospace; white-space:pre; overflow:hidden; }
  #legend { display:flex; flex-wrap:wrap; gap:5px 10px; padding:8px 14px; border-top:1px solid var(--line); font-size:11.5px; color:#374151; }
  #legend span.chip { display:inline-flex; align-items:center; gap:4px; }
  #legend i { width:12px; height:12px; border-radius:3px; display:inline-block; }
  #legend b { font-weight:500; color:var(--muted); }
  .empty { color:var(--muted); padding:20px 4px; }
</style>
</head>
<body data-state="idle">
<header>
  <h1>moe</h1><span id="model">connecting&hellip;</span>
  <label>max tokens <input id="max_tokens" type="number" min="1" value="64"></label>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.8"></label>
  <label>seed <input id="seed" type="number" placeholder="random"></label>
  <label>API key <input id="key" type="password" placeholder="(none)" autocomplete="off"></label>
  <span id="status"></span>
</header>
<main>
  <section>
    <h2>Chat <small id="chatinfo"></small><button class="plain" id="clear" type="button" title="forget the conversation">clear</button></h2>
    <div id="messages"><div class="empty">Send a message: the reply streams here, and the experts that computed each of its tokens fill the map.</div></div>
    <form id="form"><textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea><button id="send">Send</button></form>
  </section>
  <section>
    <h2>Routing <small id="mapinfo">rows: tokens &middot; columns: layers &middot; colour: expert, split by weight</small></h2>
    <div id="mapwrap"><table id="map"></table></div>
    <div id="hover"></div>
    <div id="legend"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, meta: {}, history: [], busy: false, top1: [], experts: 0, layers: 0 };

// expert colours: a categorical palette for the first ten, then golden-angle hues in two
// lightness bands so that neighbours differ
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
                 "#ff9da7", "#6b6ecf"];
function colour(e) {
  if (e < PALETTE.length) return PALETTE[e];
  const h = (e * 137.508 + 200) % 360, l = e % 2 ? 40 : 55, s = e % 3 === 2 ? 55 : 68;
  return `hsl(${h.toFixed(1)} ${s}% ${l}%)`;
}
function visible(t) {
  return t.replace(/\n/g, "\u21B5").replace(/\t/g, "\u21E5").replace(/ /g, "\u2423") || "\u2205";
}
function setStatus(t) { $("status").textContent = t; }
function authHeaders() {
  const h = { "Content-Type": "application/json" };
  const k = $("key").value.trim();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}
async function errorText(res) {
  const body = await res.text();
  try { const j = JSON.parse(body); if (j.error && j.error.message) return `${res.status}: ${j.error.message}`; } catch (_) {}
  return `${res.status} ${res.statusText}` + (body ? `: ${body.slice(0, 300)}` : "");
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() });
    if (!res.ok) throw new Error(await errorText(res));
    const j = await res.json();
    const m = j.data[0];
    state.model = m.id;
    state.meta = m.meta || {};
    const mt = state.meta;
    $("model").textContent = `${m.id}` + (mt.n_layer ? ` \u00B7 ${mt.n_layer} layers` : "") +
      (mt.n_expert ? ` \u00B7 ${mt.n_expert} experts, top-${mt.n_expert_used}` : " \u00B7 dense") +
      (mt.dtype ? ` \u00B7 ${mt.dtype}` : "");
    return true;
  } catch (e) {
    $("model").textContent = "model unknown";
    showError("Could not read /v1/models: " + e.message + ($("key").value ? "" : " (an API key may be needed)"));
    return false;
  }
}

function addMessage(role, text) {
  const empty = document.querySelector("#messages .empty");
  if (empty) empty.remove();
  const d = document.createElement("div");
  d.className = "msg " + role;
  const t = document.createElement("div");
  t.className = "text";
  t.textContent = text;
  d.appendChild(t);
  $("messages").appendChild(d);
  $("messages").scrollTop = $("messages").scrollHeight;
  return d;
}
function showError(msg) {
  const d = addMessage("assistant error", msg);
  d.classList.add("error");
  document.body.dataset.state = "error";
  setStatus("error");
}

// ---------------------------------------------------------------- the map
function resetMap(layers) {
  state.layers = layers;
  state.top1 = [];
  const map = $("map");
  map.innerHTML = "";
  const tr = document.createElement("tr");
  tr.appendChild(document.createElement("th"));
  for (let l = 0; l < layers; ++l) {
    const th = document.createElement("th");
    th.textContent = "L" + l;
    tr.appendChild(th);
  }
  map.appendChild(tr);
  $("legend").innerHTML = "";
  $("hover").textContent = layers ? "hover a cell: its token, layer, experts and weights" : "";
  if (state.model && !state.meta.n_expert) $("hover").textContent = "a dense model: no experts to show";
}
function addRow(r) {
  const layers = r.experts.length;
  if (state.layers !== layers) resetMap(layers);
  const i = $("map").rows.length - 1;
  const tr = document.createElement("tr");
  tr.className = "token";
  const lab = document.createElement("td");
  lab.className = "tok";
  lab.textContent = visible(r.text);
  lab.title = `token ${i}: id ${r.token}`;
  tr.appendChild(lab);
  for (let l = 0; l < layers; ++l) {
    const ex = r.experts[l], w = r.weights[l];
    const td = document.createElement("td");
    td.className = "cell";
    td.dataset.layer = l;
    td.dataset.token = i;
    if (!ex.length) {
      td.classList.add("dense");
      td.title = `token ${i} "${r.text}", layer ${l}: dense`;
    } else {
      // the served slots, split by weight, top-1 first
      let total = 0;
      for (let k = 0; k < ex.length; ++k) if (ex[k] >= 0) total += w[k];
      const stops = [];
      let at = 0;
      for (let k = 0; k < ex.length; ++k) {
        if (ex[k] < 0) continue;
        const next = at + (total > 0 ? 100 * w[k] / total : 100 / ex.length);
        stops.push(`${colour(ex[k])} ${at.toFixed(1)}% ${next.toFixed(1)}%`);
        at = next;
      }
      td.style.background = stops.length ? `linear-gradient(to right, ${stops.join(", ")})` : "#000";
      td.textContent = ex[0] >= 0 ? ex[0] : "";
      const lines = ex.map((e, k) => `#${k + 1} expert ${e < 0 ? "(dropped)" : e}  weight ${w[k].toFixed(3)}`);
      td.title = `token ${i} "${r.text}", layer ${l}\n` + lines.join("\n");
      td.dataset.expert = ex[0];
      if (ex[0] >= 0) state.top1.push(ex[0]);
      state.experts = Math.max(state.experts, ...ex.map((e) => e + 1));
      td.addEventListener("mouseenter", () => {
        $("hover").textContent = `token ${i} ${JSON.stringify(r.text)} \u00B7 layer ${l} \u00B7 ` +
          ex.map((e, k) => `e${e} ${w[k].toFixed(2)}`).join("  ");
      });
    }
    tr.appendChild(td);
  }
  $("map").appendChild(tr);
  const wrap = $("mapwrap");
  wrap.scrollTop = wrap.scrollHeight;
  drawLegend();
}
function drawLegend() {
  const E = Math.max(state.meta.n_expert || 0, state.experts);
  const counts = new Array(E).fill(0);
  for (const e of state.top1) counts[e]++;
  const lg = $("legend");
  lg.innerHTML = "";
  for (let e = 0; e < E; ++e) {
    const s = document.createElement("span");
    s.className = "chip";
    s.title = `expert ${e}: top-1 choice in ${counts[e]} cells of this reply`;
    s.innerHTML = `<i style="background:${colour(e)}"></i>e${e} <b>${counts[e]}</b>`;
    lg.appendChild(s);
  }
}

// ---------------------------------------------------------------- sending
async function send(text) {
  if (state.busy || !text.trim()) return;
  state.busy = true;
  $("send").disabled = true;
  document.body.dataset.state = "streaming";
  addMessage("user", text);
  state.history.push({ role: "user", content: text });
  const bubble = addMessage("assistant streaming", "");
  const out = bubble.querySelector(".text");
  resetMap(state.meta.n_layer || 0);
  const body = { messages: state.history, stream: true, moe: { return_routing: !!state.meta.n_expert },
                 stream_options: { include_usage: true } };
  if (state.model) body.model = state.model;
  const mt = parseInt($("max_tokens").value, 10), temp = parseFloat($("temperature").value), seed = $("seed").value;
  if (mt > 0) body.max_tokens = mt;
  if (!isNaN(temp)) body.temperature = temp;
  if (seed !== "") body.seed = parseInt(seed, 10);
  const t0 = performance.now();
  let reply = "", tokens = 0, chunks = 0, finish = null, usage = null, failed = null, tFirst = 0;
  setStatus("waiting for the first token\u2026");
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
    if (!res.ok) throw new Error(await errorText(res));
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = "", done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) throw new Error("the stream ended before its last event (the server stopped or the connection broke)");
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of ev.split("\n")) {
          if (!line.startsWith("data: ")) continue;  // ": ping" comments
          const data = line.slice(6);
          if (data === "[DONE]") { done = true; break; }
          bubble.dataset.chunks = ++chunks;
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message || JSON.stringify(j.error));
          if (j.usage) usage = j.usage;
          for (const c of j.choices || []) {
            if (c.delta && c.delta.content) { reply += c.delta.content; out.textContent = reply; }
            for (const r of c.moe_routing || []) { addRow(r); tokens++; }
            if (c.finish_reason) finish = c.finish_reason;
          }
          if (!tFirst && reply) tFirst = performance.now();
          const secs = (performance.now() - t0) / 1000;
          setStatus(`${tokens} tokens \u00B7 ${secs.toFixed(1)} s`);
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    }
  } catch (e) {
    failed = e.message || String(e);
  }
  bubble.classList.remove("streaming");
  const secs = (performance.now() - t0) / 1000;
  if (failed) {
    if (!reply) bubble.remove();
    state.history.pop();
    showError(failed);
  } else {
    state.history.push({ role: "assistant", content: reply });
    const n = usage ? usage.completion_tokens : tokens;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${n} tokens \u00B7 ${secs.toFixed(2)} s` + (n > 1 && secs > 0 ? ` \u00B7 ${(n / secs).toFixed(1)} tok/s` : "") +
      (finish ? ` \u00B7 finish: ${finish}` : "") + (usage && usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens
        ? ` \u00B7 ${usage.prompt_tokens_details.cached_tokens} prompt tokens reused` : "");
    bubble.appendChild(meta);
    setStatus(`done \u00B7 ${n} tokens in ${secs.toFixed(1)} s`);
    document.body.dataset.state = "done";
  }
  $("chatinfo").textContent = `${state.history.length} messages`;
  state.busy = false;
  $("send").disabled = false;
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("input").value;
  $("input").value = "";
  send(t);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
$("clear").addEventListener("click", () => {
  state.history = [];
  $("messages").innerHTML = "";
  $("chatinfo").textContent = "";
  resetMap(state.meta.n_layer || 0);
});
// a key in the URL fragment (#key=...: never sent to the server) is kept and taken off the address
const hashKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (hashKey !== null) {
  localStorage.setItem("moe.apiKey", hashKey);
  history.replaceState(null, "", location.pathname + location.search);
}
$("key").value = localStorage.getItem("moe.apiKey") || "";
$("key").addEventListener("change", () => { localStorage.setItem("moe.apiKey", $("key").value.trim()); loadModel(); });

(async () => {
  const q = new URLSearchParams(location.search);
  for (const f of ["max_tokens", "temperature", "seed"]) if (q.has(f)) $(f).value = q.get(f);
  const ok = await loadModel();
  if (ok) setStatus("ready");
  if (q.has("prompt")) {
    $("input").value = q.get("prompt");
    if (ok && q.get("autosend") === "1") { $("input").value = ""; await send(q.get("prompt")); }
  }
})();
</script>
</body>
</html>
)moepage";

}  // namespace moe::server
