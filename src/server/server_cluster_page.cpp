#include "server/server_cluster_page.h"

namespace es::server {

const char* ClusterPageHtml() {
  // Self-contained (no external scripts or styles: the cluster may be offline). Text from the
  // JSON goes in with textContent; only the plan's SVG, which the server drew, is inserted as
  // markup.
  return R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeshard cluster</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.lost{color:#b00}.num{text-align:right}
#plan svg{max-width:100%;height:auto;border:1px solid #ddd}
#error{color:#b00}
</style></head><body>
<h1>edgeshard cluster <span id="model"></span></h1>
<p id="summary">loading…</p><p id="error"></p>
<h2>Devices</h2>
<table id="devices"><thead><tr><th>name</th><th>address</th><th>threads</th><th>memory</th>
<th>state</th></tr></thead><tbody></tbody></table>
<h2>Links</h2>
<table id="links"><thead><tr><th>between</th><th>bandwidth</th><th>RTT</th></tr></thead>
<tbody></tbody></table>
<h2>Plan</h2>
<div id="plan"></div>
<table id="stages"><thead><tr><th>stage</th><th>device</th><th>holds</th><th>compute ms</th>
<th>planned</th><th>link ms</th><th>planned</th><th>wire bytes/step</th></tr></thead>
<tbody></tbody></table>
<h2>Events</h2>
<ol id="events"></ol>
<script>
"use strict";
const q = location.search;
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}
function fill(id, rows, make) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const r of rows) { const tr = document.createElement("tr"); make(tr, r); body.appendChild(tr); }
}
const mib = (b) => b >= 10485760 ? (b / 1048576).toFixed(0) + " MiB" : (b / 1024).toFixed(0) + " KiB";
const ms = (x) => x.toFixed(2);
let lastSvg = null;
async function tick() {
  try {
    const r = await fetch("cluster.json" + q);
    if (!r.ok) throw new Error("HTTP " + r.status);
    const j = await r.json();
    document.getElementById("model").textContent = "· " + j.model;
    const s = j.server || {};
    document.getElementById("summary").textContent =
      `${j.stages.length} stage(s), ${j.plan_method}, ${j.objective} objective, wire ${j.wire}; ` +
      `slots ${s.active}/${s.slots} active, ${s.queued} queued; ` +
      `${(s.tokens_per_s || 0).toFixed(1)} tokens/s; step ${ms(j.step_ms)} ms ` +
      `(planned ${ms(j.planned_step_ms)}); ${j.replans} replan(s)`;
    document.getElementById("error").textContent = j.plan_error ? "no plan: " + j.plan_error : "";
    fill("devices", j.devices, (tr, d) => {
      tr.className = "device" + (d.lost ? " lost" : "");
      cell(tr, d.name); cell(tr, d.address); cell(tr, d.threads, "num");
      cell(tr, mib(d.memory_bytes), "num");
      cell(tr, d.lost ? "lost: " + d.lost_reason : d.in_plan ? "in plan" : "idle");
    });
    fill("links", j.links, (tr, l) => {
      cell(tr, l.a + " – " + l.b); cell(tr, l.bandwidth_mbps.toFixed(0) + " Mbit/s", "num");
      cell(tr, ms(l.rtt_ms) + " ms", "num");
    });
    fill("stages", j.stages, (tr, st) => {
      tr.className = "stage";
      cell(tr, j.stages.indexOf(st)); cell(tr, st.device); cell(tr, st.what);
      cell(tr, ms(st.compute_ms), "num"); cell(tr, ms(st.planned_compute_ms), "num");
      cell(tr, ms(st.link_ms), "num"); cell(tr, ms(st.planned_link_ms), "num");
      cell(tr, st.wire_bytes.toFixed(0), "num");
    });
    if (j.svg !== lastSvg) { document.getElementById("plan").innerHTML = j.svg; lastSvg = j.svg; }
    const ev = document.getElementById("events");
    ev.replaceChildren();
    for (const e of j.events) { const li = document.createElement("li"); li.textContent = e; ev.appendChild(li); }
  } catch (e) {
    document.getElementById("error").textContent = "cannot read cluster.json: " + e.message;
  }
}
tick();
setInterval(tick, 1000);
</script></body></html>
)html";
}

}  // namespace es::server
