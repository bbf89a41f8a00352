// The rollout dashboard: plain JavaScript, no library. Each page polls its
// JSON snapshot every tick (the server reads Redis once per tick for all
// viewers) and redraws its sections; text always goes in through
// textContent, never as HTML.
"use strict";

const TICK = Number(document.body.dataset.tick) || 1000;
const STATES = ["pending", "running", "succeeded", "unchanged", "skipped", "failed", "cancelled"];
const session = { writable: false, signed_in: false };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the page's CSP, a style attribute is not
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const fill = (node, ...kids) => { node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined)); };
const $ = (id) => document.getElementById(id);

function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}
const age = (t, now) => dur((Date.parse(now) - Date.parse(t)) / 1000);
const clock = (t) => new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
const badge = (s) => el("span", { class: "badge " + s }, s);
const num = (n, d) => (n === null || n === undefined ? "—" : Number(n).toFixed(d || 0));

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

async function post(url, fields, headers) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: Object.assign({ "Content-Type": "application/x-www-form-urlencoded" }, headers || {}),
    body: new URLSearchParams(fields || {}),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

// poll calls fn now and every TICK after it settles; errors show in the
// page's status line and polling goes on.
function poll(fn) {
  const status = $("status");
  const loop = async () => {
    try {
      await fn();
      if (status) fill(status);
    } catch (e) {
      if (status) fill(status, el("span", { class: "msg err" }, "Not updated: " + e.message));
    }
    setTimeout(loop, TICK);
  };
  loop();
}

// ---- session: sign-in form, shown only when the server has a token ----

async function loadSession() {
  Object.assign(session, await getJSON("/api/session"));
  drawSession();
}

function drawSession() {
  const box = $("session");
  if (!session.writable) return fill(box, el("span", { class: "muted", id: "readonly" }, "read-only"));
  if (session.signed_in) {
    return fill(box, el("span", { id: "signed-in" }, "signed in as dashboard:" + session.name),
      el("button", { onclick: async () => { await post("/api/logout"); session.signed_in = false; session.csrf = ""; drawSession(); redraw(); } }, "Sign out"));
  }
  const name = el("input", { id: "login-name", placeholder: "your name", value: session.default_name || "", size: 12 });
  const token = el("input", { id: "login-token", type: "password", placeholder: "token", size: 16, autocomplete: "current-password" });
  const msg = el("span", { class: "msg err", id: "login-msg" });
  const form = el("form", { id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      Object.assign(session, await post("/api/login", { name: name.value, token: token.value }));
      drawSession(); redraw();
    } catch (e) { fill(msg, e.message); }
  } }, name, token, el("button", { type: "submit", id: "login-submit" }, "Sign in"), msg);
  fill(box, form);
}

let redraw = () => {};

// ---- rollouts ----

function rolloutsPage(app) {
  fill(app, el("h1", {}, "Rollouts"), el("div", { id: "status" }), el("div", { id: "list" }));
  poll(async () => {
    const v = await getJSON("/api/rollouts");
    if (!v.families.length) return fill($("list"), el("p", { class: "muted" }, "No rollout recorded yet (rollout apply -f FILE)."));
    const rows = [];
    for (const f of v.families) {
      rows.push(el("tr", { class: "family" }, el("td", { colspan: 7 }, "family " + f.family + " (" + f.rollouts.length + ")")));
      for (const r of f.rollouts) {
        const kind = r.rollback_of ? "rollback of " + r.rollback_of : r.run_of ? "run of " + r.run_of : "";
        rows.push(el("tr", { "data-id": r.id },
          el("td", {}, el("a", { href: "/rollouts/" + encodeURIComponent(r.id) }, r.id), kind ? el("div", { class: "muted" }, kind) : null),
          el("td", {}, badge(r.state), r.reason ? el("div", { class: "muted" }, r.reason) : null),
          el("td", {}, progress(r.done, r.total)),
          el("td", { class: "num" }, r.patched), el("td", { class: "num" }, r.failed),
          el("td", { class: "num" }, age(r.created_at, v.now)), el("td", {}, r.name)));
      }
    }
    fill($("list"), el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Rollout"), el("th", {}, "State"), el("th", {}, "Progress"),
      el("th", { class: "num" }, "Patched"), el("th", { class: "num" }, "Failed"), el("th", { class: "num" }, "Age"), el("th", {}, "Name"))),
    el("tbody", {}, rows)));
  });
}

function progress(done, total) {
  const pct = total ? Math.round(100 * done / total) : 100;
  return el("div", {}, el("div", { class: "bar" }, el("span", { class: "seg-succeeded", style: "width:" + pct + "%" })),
    el("div", { class: "muted" }, done + "/" + total + " done (" + pct + "%)"));
}

function stageBar(counts, size) {
  const total = STATES.reduce((n, s) => n + (counts[s] || 0), 0) || 1;
  return el("div", { class: "bar", title: size + " to patch" },
    ["succeeded", "failed", "unchanged", "skipped", "cancelled", "running", "pending"].map((s) =>
      counts[s] ? el("span", { class: "seg-" + s, style: "width:" + (100 * counts[s] / total) + "%", title: s + " " + counts[s] }) : null));
}

// ---- one rollout ----

function rolloutPage(app, id) {
  const q = el("input", { id: "cvm-q", type: "search", placeholder: "search id, name or reason", size: 28 });
  const state = el("select", { id: "cvm-state" }, el("option", { value: "" }, "any state"), STATES.map((s) => el("option", { value: s }, s)));
  const table = { from: 0, back: [], limit: 50 };
  const search = () => { table.from = 0; table.back = []; loadCVMs(); };
  q.addEventListener("input", () => { clearTimeout(table.t); table.t = setTimeout(search, 250); });
  state.addEventListener("change", search);
  fill(app,
    el("h1", { id: "title" }, id), el("div", { id: "status" }), el("div", { id: "head" }),
    el("div", { id: "wait" }), el("div", { id: "actions" }), el("div", { class: "cards", id: "cards" }),
    el("h2", {}, "Stages"), el("div", { class: "legend" }, ["succeeded", "failed", "unchanged", "skipped", "cancelled", "running", "pending"].map((s) =>
      el("span", {}, el("i", { class: "seg-" + s, style: s === "pending" ? "background:#eceff3" : "" }), s))),
    el("div", { id: "stages" }),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Latest failures"), el("div", { id: "failures" })),
      el("div", {}, el("h2", {}, "Audit trail"), el("div", { id: "events" }))),
    el("h2", {}, "CVMs"), el("div", { class: "pager" }, q, state, el("span", { id: "cvm-info", class: "muted" })),
    el("div", { id: "cvms" }),
    // A click on Prev/Next wins over a search still waiting out its debounce.
    el("div", { class: "pager" }, el("button", { id: "cvm-prev", onclick: () => { clearTimeout(table.t); if (table.back.length) { table.from = table.back.pop(); loadCVMs(); } } }, "‹ Prev"),
      el("button", { id: "cvm-next", onclick: () => { clearTimeout(table.t); if (table.next >= 0) { table.back.push(table.from); table.from = table.next; loadCVMs(); } } }, "Next ›")));

  let last = null, fetchedAt = 0;
  async function loadCVMs() {
    const p = new URLSearchParams({ from: table.from, limit: table.limit });
    if (q.value.trim()) p.set("q", q.value.trim());
    if (state.value) p.set("state", state.value);
    const seq = table.seq = (table.seq || 0) + 1;
    const v = await getJSON("/api/rollouts/" + encodeURIComponent(id) + "/cvms?" + p);
    if (seq !== table.seq) return; // a newer load (a click, a keystroke) went out meanwhile
    table.loadedAt = Date.now();
    table.next = v.next;
    $("cvm-prev").disabled = !table.back.length;
    $("cvm-next").disabled = v.next < 0;
    const filtered = q.value.trim() || state.value;
    fill($("cvm-info"), v.rows.length
      ? "rows from position " + (v.from + 1) + " of " + v.total + (filtered ? " (read " + v.scanned + " records for this page)" : "")
      : filtered ? "no match" + (v.next >= 0 ? " in positions " + (v.from + 1) + "–" + v.next + " of " + v.total + "; Next searches on" : "") : "no CVMs");
    const urls = (l) => (l && l.length ? l.join(" ") : "—");
    const url = (l) => el("td", { class: "url", title: urls(l) }, urls(l));
    fill($("cvms"), el("table", { id: "cvm-table" },
      el("thead", {}, el("tr", {}, ["CVM", "Name", "Stage", "State", "Attempts", "Reason", "Before KMS", "Before gateway", "Applied KMS", "Applied gateway", "HTTP", "Worker"].map((h) => el("th", {}, h)))),
      el("tbody", {}, v.rows.map((r) => el("tr", { "data-cvm": r.cvm_id },
        el("td", {}, r.cvm_id), el("td", {}, r.name), el("td", { class: "num" }, r.stage >= 0 ? r.stage + 1 : "—"), el("td", {}, badge(r.state)),
        el("td", { class: "num" }, r.attempts), el("td", { class: "reason" }, r.reason || ""),
        url(r.previous_kms_urls), url(r.previous_gateway_urls), url(r.applied_kms_urls), url(r.applied_gateway_urls),
        el("td", { class: "num" }, r.http_status || ""), el("td", {}, r.worker || ""))))));
  }

  function draw(v) {
    fill($("head"), el("div", {}, badge(v.state), " ", el("strong", {}, v.name), el("span", { class: "muted" },
      "  created " + clock(v.created_at) + " by " + v.created_by + " (" + age(v.created_at, v.now) + " ago)"),
      v.rollback_of ? el("div", {}, "rollback of ", el("a", { href: "/rollouts/" + encodeURIComponent(v.rollback_of) }, v.rollback_of)) : null,
      v.run_of ? el("div", {}, "run of ", el("a", { href: "/rollouts/" + encodeURIComponent(v.run_of) }, v.run_of)) : null,
      v.latest_rollback ? el("div", {}, "rolled back by ", el("a", { href: "/rollouts/" + encodeURIComponent(v.latest_rollback) }, v.latest_rollback)) : null));
    drawWait(v);
    drawActions(v);
    const b = v.budget, r = v.rate;
    const card = (k, val, sub, idv) => el("div", { class: "card", id: idv }, el("div", { class: "k" }, k), el("div", { class: "v" }, val), sub ? el("div", { class: "s" }, sub) : null);
    fill($("cards"),
      card("progress", v.done + "/" + v.total, "CVMs done", "card-progress"),
      STATES.map((s) => card(s, el("span", { id: "count-" + s }, v.counts[s] || 0), null, "card-" + s)),
      b ? card("failure budget", el("span", { id: "budget-used" }, "used " + b.failed + " · left " + b.left),
        "max_failed " + b.max_failed + ": " + b.action + " at failure " + (b.max_failed + 1) + " once " + b.min_executed + " executed (" + b.executed + " now)", "card-budget")
        : card("failure budget", "none", "", "card-budget"),
      card("speed", v.state === "running" ? num(r.cvms_per_second, 1) + " CVMs/s" : "—",
        "ETA " + (r.eta_seconds === undefined ? "—" : dur(r.eta_seconds)), "card-speed"),
      // The rate now: the adaptive limiter's when it has lowered it, else the file's limit.
      card("rate now", r.adaptive_rate !== undefined ? num(r.adaptive_rate, 1) + " req/s" : r.limit_per_second ? num(r.limit_per_second, 1) + " req/s" : "workers' default",
        (r.limit_per_second ? "limit " + num(r.limit_per_second, 1) + " req/s" : "no rate in the file") +
        (!r.adaptive ? "; adaptive off" : r.adaptive_rate !== undefined ? "; set by the adaptive limiter" : "; adaptive: no throttling seen") +
        (r.adaptive_reason ? " (" + r.adaptive_reason + ")" : ""), "card-rate"),
      card("in flight", r.in_flight, "limit " + (r.max_in_flight || "workers' default"), "card-inflight"));
    fill($("stages"), v.stages.map((s) => el("div", { class: "stage" + (s.current ? " current" : ""), id: "stage-" + s.index },
      el("div", {}, el("strong", {}, (s.index + 1) + " " + s.name), el("div", { class: "muted" }, s.size + " to patch" +
        (s.manual ? ", promote: manual" : s.bake_seconds ? ", bake " + dur(s.bake_seconds) : "") + (s.current ? " (current)" : ""))),
      stageBar(s.counts, s.size),
      el("div", { class: "counts" }, STATES.filter((st) => s.counts[st]).map((st) => st + " " + s.counts[st]).join(" · ") || "—"))));
    fill($("failures"), v.failures.length ? el("table", { id: "failure-table" }, el("thead", {}, el("tr", {}, el("th", {}, "CVM"), el("th", {}, "API message"), el("th", {}, "request_id"))),
      el("tbody", {}, v.failures.slice().reverse().map((f) => el("tr", {}, el("td", {}, f.cvm_id), el("td", {}, f.message), el("td", { class: "url" }, f.request_id || "—")))))
      : el("p", { class: "muted" }, "No failure."));
    fill($("events"), el("table", { id: "event-table" }, el("thead", {}, el("tr", {}, el("th", {}, "When"), el("th", {}, "Who"), el("th", {}, "What"))),
      el("tbody", {}, v.events.slice().reverse().map((e) => el("tr", {}, el("td", {}, clock(e.at)), el("td", {}, e.by), el("td", {}, e.what))))));
  }

  function drawWait(v) {
    const w = v.wait;
    let text;
    if (w.kind === "bake") {
      const left = (Date.parse(w.until) - Date.parse(v.now)) / 1000 - (Date.now() - fetchedAt) / 1000;
      text = "Baking: the next stage starts in " + dur(left) + " (at " + clock(w.until) + "), unless someone promotes it.";
    } else if (w.kind === "promote") text = "Waiting for a manual promote: " + (w.text || "the stage is done");
    else if (w.kind === "paused") text = "Paused: " + (w.text || "");
    else if (w.kind === "window") text = "Scheduled, waiting: " + (w.text || "outside its window");
    else if (v.state === "running") text = v.reason ? "Running: " + v.reason : "Running stage " + (v.current_stage + 1) + " of " + v.stages.length + ".";
    else text = v.state + (v.reason ? ": " + v.reason : ".");
    fill($("wait"), el("div", { class: "wait " + (w.kind || "none"), id: "wait-text" }, text));
  }

  function drawActions(v) {
    const box = $("actions");
    if (!session.writable || !session.signed_in) return fill(box);
    // The reason input and the message stay put across redraws (focus and
    // typing survive a tick); only the buttons follow the state.
    if (!$("action-buttons")) {
      fill(box, el("span", { id: "action-buttons", class: "actions" }), el("input", { id: "action-reason", placeholder: "reason (pause, cancel)", size: 28 }),
        el("span", { class: "msg", id: "action-msg" }));
    }
    const reason = $("action-reason"), msg = $("action-msg");
    const label = { pause: "Pause", resume: "Resume", cancel: "Cancel", promote: "Promote", retry: "Retry failed" };
    const want = v.actions.join(",");
    if ($("action-buttons").dataset.actions === want) return;
    $("action-buttons").dataset.actions = want;
    fill($("action-buttons"), v.actions.map((a) => el("button", { id: "btn-" + a, class: a === "cancel" ? "danger" : "", onclick: async (ev) => {
      if (a === "cancel" && !confirm("Cancel rollout " + v.id + "? CVMs not started become cancelled.")) return;
      ev.target.disabled = true;
      try {
        const res = await post("/api/rollouts/" + encodeURIComponent(v.id) + "/" + a, { reason: reason.value }, { "X-CSRF-Token": session.csrf });
        msg.className = "msg"; fill(msg, res.message);
        reason.value = "";
      } catch (e) { msg.className = "msg err"; fill(msg, e.message); }
      ev.target.disabled = false;
    } }, label[a])));
  }

  redraw = () => { if (last) draw(last); };
  poll(async () => {
    last = await getJSON("/api/rollouts/" + encodeURIComponent(id));
    fetchedAt = Date.now();
    draw(last);
    // A filtered page reads up to 5,000 records: refreshed every 5 ticks, not every tick.
    const filtered = q.value.trim() || state.value;
    if (!filtered || Date.now() - (table.loadedAt || 0) >= 5 * TICK) await loadCVMs();
  });
}

// ---- queue and workers ----

// held sums a worker's tasks by rollout: how many, a few CVM ids, the oldest.
function held(tasks, now) {
  const by = new Map();
  for (const t of tasks) {
    const g = by.get(t.rollout) || { n: 0, ids: [], oldest: t.started };
    g.n++;
    if (g.ids.length < 4) g.ids.push(t.cvm_id);
    if (Date.parse(t.started) < Date.parse(g.oldest)) g.oldest = t.started;
    by.set(t.rollout, g);
  }
  return [...by].map(([r, g]) => el("div", {}, el("a", { href: "/rollouts/" + encodeURIComponent(r) }, r), ": " + g.n + " CVM" + (g.n > 1 ? "s" : "") +
    " (" + g.ids.join(", ") + (g.n > g.ids.length ? ", …" : "") + "), oldest " + age(g.oldest, now)));
}

function queuePage(app) {
  fill(app, el("h1", {}, "Queue & workers"), el("div", { id: "status" }), el("div", { class: "cards", id: "qcards" }),
    el("h2", {}, "Workers (asynq heartbeats)"), el("div", { id: "workers" }),
    el("h2", {}, "In-flight slots by worker (rollout heartbeats)"), el("div", { id: "holders" }),
    el("h2", {}, "Slots held by dead workers"), el("div", { id: "dead" }));
  poll(async () => {
    const v = await getJSON("/api/queue");
    const i = v.info;
    const card = (k, val, idv) => el("div", { class: "card", id: idv }, el("div", { class: "k" }, k), el("div", { class: "v" }, val));
    fill($("qcards"), card("pending", i.pending, "q-pending"), card("active", i.active, "q-active"), card("scheduled", i.scheduled, "q-scheduled"),
      card("retry", i.retry, "q-retry"), card("archived", i.archived, "q-archived"), card("oldest pending", dur(i.oldest_pending_seconds), "q-oldest"),
      card("processed today", i.processed_today, "q-processed"));
    fill($("workers"), v.workers.length ? el("table", { id: "worker-table" }, el("thead", {}, el("tr", {}, ["Host", "PID", "Status", "Concurrency", "Started", "Holds (rollout / CVM, since)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, v.workers.map((w) => el("tr", {}, el("td", {}, w.host), el("td", { class: "num" }, w.pid), el("td", {}, w.status),
        el("td", { class: "num" }, w.tasks.length + "/" + w.concurrency), el("td", {}, clock(w.started) + " (" + age(w.started, v.now) + " ago)"),
        el("td", {}, w.tasks.length ? held(w.tasks, v.now) : "—")))))
      : el("p", { class: "msg err" }, "No worker is running: no rollout moves until one starts (rollout worker)."));
    fill($("holders"), v.holders.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Worker", "Heartbeat", "Rollout", "CVMs"].map((h) => el("th", {}, h)))),
      el("tbody", {}, v.holders.map((h) => el("tr", {}, el("td", {}, h.worker), el("td", {}, h.alive ? "alive, renews within " + dur(h.heartbeat_ttl_seconds) : el("span", { class: "msg err" }, "gone")),
        el("td", {}, h.rollout), el("td", {}, h.cvm_ids.length + ": " + h.cvm_ids.slice(0, 5).join(", ") + (h.cvm_ids.length > 5 ? ", …" : ""))))))
      : el("p", { class: "muted" }, "No slot held."));
    fill($("dead"), v.dead.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Rollout", "Dead worker", "CVMs held", "Slots taken back"].map((h) => el("th", {}, h)))),
      el("tbody", {}, v.dead.map((d) => el("tr", {}, el("td", {}, d.rollout), el("td", {}, d.worker), el("td", { class: "num" }, d.slots), el("td", { class: "num" }, d.freed)))))
      : el("p", { class: "muted" }, "None."));
  });
}

// ---- routing ----

(async function main() {
  try { await loadSession(); } catch (e) { /* the pages say what fails */ }
  const app = $("app"), path = location.pathname;
  const m = path.match(/^\/rollouts\/(.+)$/);
  if (m) rolloutPage(app, decodeURIComponent(m[1]));
  else if (path === "/queue") queuePage(app);
  else rolloutsPage(app);
})();
