// proctor dashboard: live updates without a reload. Plain JavaScript, no build step, no CDN.
// Pages are rendered on the server; this only refreshes numbers from each page's .json twin and
// follows the log stream (SSE, which sends the session cookie on its own).
"use strict";

const POLL_MS = 2000;

function percent(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
function seconds(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return Math.round(1000 * v) + " ms";
  if (v < 60) return v < 10 ? v.toFixed(1) + " s" : Math.round(v) + " s";
  if (v < 3600) return Math.floor(v / 60) + " min " + String(Math.floor(v % 60)).padStart(2, "0") + " s";
  return Math.floor(v / 3600) + " h " + String(Math.floor((v % 3600) / 60)).padStart(2, "0") + " min";
}
function text(el, value) { if (el && el.textContent !== String(value)) el.textContent = value; }

function fillProgress(row, p) {
  const bar = row.querySelector("progress");
  if (bar) { bar.max = p.total || 1; bar.value = p.done; }
  text(row.querySelector(".done"), p.done);
  text(row.querySelector(".total"), p.total);
  text(row.querySelector(".accuracy"), percent(p.accuracy));
  text(row.querySelector(".eta"), seconds(p.eta_s));
}

function setState(el, state) {
  if (!el) return;
  text(el, state);
  el.className = el.className.replace(/state-\S+/, "state-" + state);
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function every(ms, fn) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (e) { /* the next tick tries again */ } finally { busy = false; }
  }, ms);
}

function jobsPage() {
  const known = () => Array.from(document.querySelectorAll("tr[data-job]")).map(r => r.dataset.job).join(",");
  every(POLL_MS, async () => {
    const data = await getJSON("/jobs.json");
    const ids = data.batches.flatMap(b => b.jobs.map(j => j.id)).join(",");
    if (ids !== known()) { location.reload(); return; }  // a job came or went: re-render the groups
    for (const job of data.jobs) {
      const row = document.querySelector(`tr[data-job="${CSS.escape(job.id)}"]`);
      if (!row) continue;
      setState(row.querySelector(".state"), job.state);
      fillProgress(row, job.progress);
    }
  });
}

function jobPage() {
  const id = document.body.dataset.job;
  every(POLL_MS, async () => {
    const data = await getJSON(`/jobs/${encodeURIComponent(id)}.json`);
    fillProgress(document.querySelector("#summary tbody tr"), data.job.progress);
    setState(document.getElementById("state"), data.job.state);
    text(document.getElementById("accuracy"), percent(data.accuracy.value));
    text(document.getElementById("denominator"), data.accuracy.denominator);
    text(document.getElementById("errors"), data.counts.error);
  });
  const log = document.getElementById("log");
  if (log && window.EventSource) {
    const stream = new EventSource(log.dataset.src);
    stream.addEventListener("log", (ev) => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(ev.data + "\n");
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
    stream.addEventListener("end", () => stream.close());
  }
  const analysis = document.getElementById("analysis");
  if (analysis) {
    fetch(analysis.dataset.src, { credentials: "same-origin" })
      .then(r => r.ok ? r.text() : Promise.reject(r.status))
      .then(html => { analysis.innerHTML = html; })
      .catch(() => { analysis.textContent = "The analysis could not be loaded."; });
  }
}

function analysisPage() {
  const box = document.getElementById("plots");
  if (!box) return;
  getJSON(box.dataset.src).then(data => {
    box.textContent = data.plots.length ? "" : (data.problem || "No plots.");
    for (const src of data.plots) {
      const img = document.createElement("img");
      img.className = "plot"; img.src = src; img.alt = src.split("/").pop(); img.loading = "lazy";
      box.append(img);
    }
  }).catch(() => { box.textContent = "The plots could not be drawn."; });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "jobs") jobsPage();
  else if (page === "job") jobPage();
  else if (page === "analysis") analysisPage();
});
