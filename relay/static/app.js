/**
 * rpa-bus dashboard: live sessions, their event logs, host charts and alerts.
 *
 * Everything arrives over one relay WebSocket, or Server-Sent Events where a WebSocket
 * cannot connect (rpa-bus.js falls back by itself):
 * - `sessions`       the lifecycle index (started / finished / failed) builds the list;
 * - `session:SID`    running sessions are watched from "$" (the `subscribed` state gives
 *                    their current status, live events move them); the selected session is
 *                    subscribed from "0" for its whole log; other rows on screen (ended
 *                    sessions, running ones past the watch limit) are peeked once for their
 *                    state;
 * - `monitor:HOST`   metrics and alerts, replayed from the start of the chart window.
 *
 * The selected session's events also build its job view (jobview.js): a timeline of its
 * steps and artifacts; its log filters by level, type, step and text.
 *
 * Over HTTP (/v1/, with the page's token): the History tab searches sessions
 * (GET /v1/sessions, which reads the archive too) and the Jobs tab shows per-job summaries
 * (GET /v1/jobs; the tab stays hidden where the relay does not offer it).
 *
 * URL parameters: ?token=JWT  ?hosts=a,b (or ?host=a)  ?window=1h  ?relay=ws://host:port/ws
 * The selected session lives in the hash (#session=SID), so a reload shows it again.
 */

import { compareIds, connect, idAtTime, idTime } from "./rpa-bus.js";
import { LEVELS, Timeline, artifactNode, eventText, fmtSeconds, levelOf } from "./jobview.js";

const params = new URLSearchParams(location.search);

const MAX_ROWS = 300; // sessions shown
const MAX_WATCHED = 60; // running sessions with a live subscription (the relay allows 100 per connection)
const MAX_LOG_ROWS = 3000; // event-log rows kept in the page
const PEEKS_AT_ONCE = 4;
const STALE_AFTER_MS = 120_000; // a running session silent this long is shown in amber
const TERMINAL = new Set(["finished", "failed"]);
const BUILTIN = new Set([
  "started", "progress", "log", "result", "error", "finished", "failed", "metrics", "alert",
  "step", "artifact",
]);

// ---- small helpers -------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

/** Create an element: h("td", {class: "x"}, "text", child...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}

/** Set text only when it changed (keeps layout and selection stable). */
function setText(el, text) {
  const t = text == null ? "" : String(text);
  if (el.textContent !== t) el.textContent = t;
}

function parseTs(ts) {
  const t = Date.parse(ts);
  return Number.isFinite(t) ? t : null;
}

function fmtDuration(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h_ = Math.floor(m / 60);
  if (h_ < 48) return `${h_}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h_ / 24)}d ${h_ % 24}h`;
}

function fmtAge(ms) {
  if (ms == null) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 5) return "now";
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function fmtClock(ms, withMs = false) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  const base = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return withMs ? `${base}.${p(d.getMilliseconds(), 3)}` : base;
}

function fmtBytesRate(v) {
  if (v == null || !Number.isFinite(v)) return "—";
  const units = ["B/s", "kB/s", "MB/s", "GB/s"];
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function fmtAxisPct(v) {
  return `${Math.round(v)}%`;
}

function fmtBytes(v) {
  if (v == null || !Number.isFinite(v)) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function fmtPct(v) {
  return v == null || !Number.isFinite(v) ? "—" : `${v.toFixed(1)}%`;
}

function parseWindow(text) {
  const m = /^(\d+(?:\.\d+)?)\s*([smhd]?)$/.exec(text || "");
  if (!m) return 3600_000;
  const mult = { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] || "m"];
  return Math.min(7 * 86_400_000, Math.max(60_000, Number(m[1]) * mult));
}

/** First finite number found at any of the dotted paths. */
function pick(obj, paths) {
  for (const path of paths) {
    let v = obj;
    for (const key of path.split(".")) {
      v = v != null && typeof v === "object" ? v[key] : undefined;
    }
    if (typeof v === "number" && Number.isFinite(v)) return v;
  }
  return null;
}

// ---- connection ----------------------------------------------------------------------

/** A lasting problem the operator must act on (auth, limits): shown until reload. */
function showNotice(...parts) {
  const el = $("#notice");
  if (!el.hidden) return;
  el.replaceChildren(...parts);
  el.hidden = false;
}

let redisPoll = null;

/** The relay lost Redis: say so until its /healthz is green again (it sends no all-clear). */
function redisDown() {
  if (redisPoll != null) return;
  setText($("#banner-text"), "The relay cannot reach Redis — events resume when it returns.");
  banner.hidden = false;
  redisPoll = setInterval(async () => {
    try {
      const res = await fetch("healthz", { cache: "no-store" });
      if (!res.ok) return;
    } catch {
      return;
    }
    clearInterval(redisPoll);
    redisPoll = null;
    if (bus.status === "open") banner.hidden = true;
  }, 3000);
}

/** Relay refusals that need the operator, with what to do about them. */
function noticeFor(err, stream) {
  if (err.code === "unavailable") {
    redisDown();
  } else if (err.code === "forbidden") {
    const mint = h("code", { text: "rpa-bus token --stream '*'" });
    if (token) {
      showNotice(`The relay refused ${stream}: ${err.message}. The token in the URL does not ` +
        "grant it or has expired; mint a new one with ", mint, ".");
    } else {
      showNotice(`The relay refused ${stream}: ${err.message}. Open this page with `,
        h("code", { text: "?token=JWT" }), "; mint one with ", mint, ".");
    }
  } else if (err.code === "too_many_subscriptions") {
    showNotice(`The relay refused ${stream}: ${err.message}. Some rows show less detail.`);
  }
}

const token = params.get("token") || null;
// Relative, so the page also works behind a reverse proxy that mounts the relay on a path.
const relayUrl = params.get("relay") || "ws";
const conn = $("#conn");
const banner = $("#banner");

const bus = connect(relayUrl, {
  token,
  onStatus(status, info) {
    conn.dataset.status = status;
    const label = conn.querySelector(".label");
    if (status === "open") {
      // SSE: rpa-bus.js fell back from a WebSocket that could not connect.
      setText(label, info.transport === "sse" ? "live (SSE)" : "live");
      banner.hidden = redisPoll == null;
    } else if (status === "reconnecting") {
      const secs = Math.max(1, Math.round((info.delayMs ?? 0) / 1000));
      setText(label, `reconnecting… (${info.attempt})`);
      setText($("#banner-text"),
        `Relay connection lost — reconnecting… (attempt ${info.attempt}, next in ${secs}s); ` +
        "events resume where they stopped.");
      banner.hidden = false;
    } else if (status === "connecting") {
      setText(label, "connecting…");
    } else {
      setText(label, status);
    }
    // Deferred: the first call comes from inside connect(), before `bus` is assigned.
    queueMicrotask(updateLogHeader);
  },
  onError(err) {
    console.warn(`relay: ${err.code}: ${err.message}`);
    noticeFor(err, "the bus");
  },
});

// ---- sessions ------------------------------------------------------------------------

/**
 * @typedef {Object} Session
 * @property {string} sid
 * @property {string} status      running | finished | failed | unknown
 * @property {Object} state       folded state: step, total, percent, eta_s, message, error, updated
 * @property {number|null} started  ms
 * @property {number|null} ended    ms
 * @property {string|null} sub    "watch" | "full" | "peek" | null
 * @property {string|null} last   last id of the current subscription's `subscribed` frame
 * @property {HTMLTableRowElement|null} row
 */

/** @type {Map<string, Session>} */
const sessions = new Map();
const peekQueue = [];
let peeking = 0; // peek subscriptions in flight
let watching = 0; // watch subscriptions open
let selected = null;
let filterText = "";
let revealSelected = false; // scroll the selected row into view once it is rendered
let sessionsLive = false;

function session(sid) {
  let s = sessions.get(sid);
  if (!s) {
    s = {
      sid, status: "unknown", state: {}, started: null, ended: null,
      sub: null, last: null, row: null, handle: null,
    };
    sessions.set(sid, s);
  }
  return s;
}

/** Fold one session event into its state, as the producer folds it into the meta hash. */
function fold(s, data) {
  const st = s.state;
  const kind = data.type;
  if (data.ts) st.updated = data.ts;
  if (kind === "started") {
    Object.assign(st, { step: 0, percent: 0, eta_s: null, eta_runs: null, job: null, error: null });
    s.status = "running";
    s.started = parseTs(data.ts) ?? s.started;
    s.ended = null;
  } else if (kind === "progress" || kind === "step") {
    s.status = "running";
  } else if (kind === "finished") {
    s.status = "finished";
  } else if (kind === "failed") {
    s.status = "failed";
  }
  for (const key of ["step", "total", "percent", "eta_s", "eta_runs", "job"]) if (key in data) st[key] = data[key];
  if (kind === "finished") Object.assign(st, { percent: 100, eta_s: 0 });
  if (typeof data.message === "string") st.message = data.message;
  if (kind === "error" || kind === "failed") st.error = data.error || data.message || kind;
  if (TERMINAL.has(kind)) {
    s.ended = parseTs(data.ts);
    s.endSeen = true;
  }
}

/** The `sessions` index: one entry per start and per end. */
bus.subscribe("sessions", {
  from: "0",
  onEvent(id, data) {
    if (!data || typeof data.session !== "string") return;
    const s = session(data.session);
    const t = parseTs(data.ts) ?? idTime(id);
    if (data.type === "started") {
      s.started = t;
      s.endSeen = false;
      s.ended = null;
      if (TERMINAL.has(s.status) || s.status === "unknown") s.status = "running";
    } else if (TERMINAL.has(data.type)) {
      s.status = data.type;
      s.ended = t;
    }
    if (!s.state.updated) s.state.updated = data.ts;
    if (sessionsLive) planSubscription(s);
    scheduleRender();
  },
  onLive() {
    sessionsLive = true;
    // In display order, so the live watches go to the rows at the top.
    for (const s of [...sessions.values()].sort(byOrder)) planSubscription(s);
    scheduleRender();
  },
  onReset() {
    const keep = selected ? sessions.get(selected) : null;
    for (const s of sessions.values()) if (s !== keep) endSubscription(s);
    sessions.clear();
    if (keep) sessions.set(keep.sid, keep);
    $("#sessions").replaceChildren();
    sessionsLive = false;
  },
  onError(err) {
    setText($("#sessions-sub"), `sessions: ${err.code}`);
    noticeFor(err, "the sessions index");
  },
});

/** Pick the right subscription for a session: full log, live watch, or none. */
function planSubscription(s) {
  if (s.sid === selected) return; // the log view owns it
  if (s.status === "running") {
    if (s.sub !== "watch" && watching < MAX_WATCHED) subscribeSession(s, "watch");
    return;
  }
  // Ended (or gone): its stream has nothing more to say. Rows of ended sessions are peeked
  // for their final state once they scroll into view (see rowObserver).
  if (s.sub === "watch") {
    endSubscription(s);
    // The index can tell of the end before the session's own stream does (two streams,
    // no order between them): then one peek reads the final state from the meta hash.
    if (!s.endSeen) {
      s.peeked = true;
      peekQueue.push(s);
      pumpPeeks();
    }
  }
}

/** Drop a session's subscription, whatever its mode. */
function endSubscription(s) {
  if (s.sub === "watch") watching -= 1;
  if (s.sub === "peek") {
    peeking -= 1;
    setTimeout(pumpPeeks, 0);
  }
  s.handle?.unsubscribe();
  s.handle = null;
  s.sub = null;
}

/**
 * Peek at rows on screen that have no live subscription (ended sessions, and running ones
 * past the watch limit): their state as of now, once.
 */
const rowObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const s = sessions.get(entry.target.dataset.sid);
    if (s && !s.peeked && !s.sub) {
      s.peeked = true;
      peekQueue.push(s);
    }
  }
  pumpPeeks();
});

function pumpPeeks() {
  while (peeking < PEEKS_AT_ONCE && peekQueue.length) {
    const s = peekQueue.shift();
    if (s.sub || s.sid === selected) continue;
    peeking += 1;
    subscribeSession(s, "peek");
  }
}

/** Subscribe one session stream in the given mode, replacing its current subscription. */
function subscribeSession(s, mode) {
  const from = mode === "full" ? "0" : "$";
  if (s.sub === "watch") watching -= 1;
  if (s.sub === "peek") {
    peeking -= 1;
    setTimeout(pumpPeeks, 0);
  }
  if (mode === "watch") watching += 1;
  s.sub = mode;
  s.last = null;
  const handle = bus.subscribe(`session:${s.sid}`, {
    from,
    onState(state, info) {
      // The relay's folded state is the truth at subscription time: a late joiner sees the
      // status even when the early history was trimmed.
      if (state && Object.keys(state).length) {
        Object.assign(s.state, state);
        if (state.status) s.status = state.status;
        const up = parseTs(state.updated);
        if (TERMINAL.has(s.status) && up && !s.ended) s.ended = up;
      }
      s.last = info.last;
      if (!info.first && !info.last && !Object.keys(state ?? {}).length && !s.fromHistory) {
        // Nothing left of it: its keys expired after the retention period.
        s.status = "expired";
      }
      if (mode === "peek" || (mode === "watch" && s.status !== "running")) endSubscription(s);
      scheduleRender();
    },
    onEvent(id, data) {
      // History older than the `subscribed` frame is already in its state.
      const isNew = !s.last || compareIds(id, s.last) > 0;
      if (isNew && data) {
        fold(s, data);
        if (mode === "watch" && TERMINAL.has(data.type)) setTimeout(() => planSubscription(s), 0);
        scheduleRender();
      }
      if (mode === "full") log.add(id, data);
    },
    onLive() {
      if (mode !== "full") return;
      log.live();
      // Nothing in Redis (expired, or a session found in the archive): read its history
      // pages over HTTP, which reach into the archive.
      if (log.count === 0 && s.sid === selected) loadPages(s);
    },
    onGap(info) {
      if (mode === "full") log.marker(`events trimmed by retention: resuming at ${info.first}`);
    },
    onReset() {
      if (mode === "full") log.reset("stream recreated: showing it from its start");
    },
    onError(err) {
      if (mode === "full") log.marker(`${err.code}: ${err.message}`);
      if (mode !== "peek" || err.code === "unavailable") noticeFor(err, `session:${s.sid}`);
      if (err.fatal && s.handle === handle) endSubscription(s);
    },
  });
  s.handle = handle;
}

function byOrder(a, b) {
  const ra = a.status === "running" ? 0 : 1;
  const rb = b.status === "running" ? 0 : 1;
  if (ra !== rb) return ra - rb;
  return (b.started ?? 0) - (a.started ?? 0) || (a.sid < b.sid ? -1 : 1);
}

function shownStatus(s) {
  return s.status === "running" && stalledSids.has(s.sid) ? "stalled" : s.status;
}

function buildRow(s) {
  const fill = h("div", { class: "fill" });
  const row = h("tr", { "data-sid": s.sid },
    h("td", {}, h("span", { class: "pill" })),
    h("td", { class: "sid", title: s.sid, text: s.sid }),
    h("td", {}, h("div", { class: "progress" }, h("div", { class: "bar" }, fill), h("span", { class: "pct" }))),
    h("td", { class: "num step" }),
    h("td", { class: "num eta" }),
    h("td", { class: "msg" }),
    h("td", { class: "num age" }),
  );
  row.addEventListener("click", () => select(s.sid, true));
  s.row = row;
  rowObserver.observe(row);
  return row;
}

function updateRow(s) {
  const row = s.row;
  const st = s.state;
  const status = shownStatus(s);
  if (row.dataset.status !== status) row.dataset.status = status;
  const pill = row.cells[0].firstChild;
  pill.dataset.status = status;
  setText(pill, status === "unknown" ? "…" : status);
  const pct = st.percent ?? (st.step != null && st.total ? (100 * st.step) / st.total : null);
  const fill = row.querySelector(".fill");
  const width = `${Math.max(0, Math.min(100, pct ?? 0)).toFixed(1)}%`;
  if (fill.style.width !== width) fill.style.width = width;
  setText(row.querySelector(".pct"), pct == null ? "—" : `${Math.round(pct)}%`);
  setText(row.cells[3], st.step != null ? (st.total ? `${st.step}/${st.total}` : st.step) : "—");
  const msg = s.status === "failed" && st.error ? st.error : st.message;
  setText(row.cells[5], msg ?? "");
  row.cells[5].title = msg ?? "";
  row.classList.toggle("selected", s.sid === selected);
  updateTimes(s);
}

/** Cells that move with the clock: ETA countdown (or run time) and age. */
function updateTimes(s) {
  const row = s.row;
  const updated = parseTs(s.state.updated);
  let eta = "—";
  if (s.status === "running" && s.state.eta_s != null && updated) {
    eta = fmtDuration(s.state.eta_s - (Date.now() - updated) / 1000);
  } else if (TERMINAL.has(s.status) && s.started && s.ended) {
    eta = fmtDuration((s.ended - s.started) / 1000);
  }
  setText(row.cells[4], eta);
  const runs = s.state.eta_runs;
  row.cells[4].title = TERMINAL.has(s.status) ? "run time"
    : runs ? `estimated time left, from ${runs} past run${runs === 1 ? "" : "s"} of ${s.state.job ?? "its job"}`
      : "estimated time left, at this run's pace";
  const ageCell = row.cells[6];
  setText(ageCell, fmtAge(updated));
  ageCell.classList.toggle("stale",
    s.status === "running" && updated != null && Date.now() - updated > STALE_AFTER_MS);
}

let renderPending = false;
let renderedAt = 0;

/** Render the sessions on the next frame, at most every 100 ms (a replay folds thousands). */
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => requestAnimationFrame(() => {
    renderPending = false;
    renderedAt = performance.now();
    renderSessions();
  }), Math.max(0, renderedAt + 100 - performance.now()));
}

function renderSessions() {
  const tbody = $("#sessions");
  const all = [...sessions.values()].sort(byOrder);
  const shown = all
    .filter((s) => !filterText || s.sid.toLowerCase().includes(filterText) ||
      (s.state.message ?? "").toLowerCase().includes(filterText) ||
      (s.state.job ?? "").toLowerCase() === filterText)
    .slice(0, MAX_ROWS);
  // Reorder by moving existing rows: a row keeps its node (and its bar's transition).
  let cursor = tbody.firstChild;
  for (const s of shown) {
    const row = s.row ?? buildRow(s);
    updateRow(s);
    if (row !== cursor) tbody.insertBefore(row, cursor);
    else cursor = cursor.nextSibling;
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
  const sel = selected ? sessions.get(selected) : null;
  if (revealSelected && sessionsLive && sel?.row?.isConnected) {
    revealSelected = false;
    sel.row.scrollIntoView({ block: "center" });
  }
  const counts = { running: 0, finished: 0, failed: 0 };
  for (const s of all) if (s.status in counts) counts[s.status] += 1;
  for (const [k, v] of Object.entries(counts)) setText($(`.count[data-status="${k}"] b`), v);
  runningCount = counts.running;
  updateTitle();
  $("#sessions-empty").hidden = shown.length > 0;
  setText($("#sessions-empty"), sessionsLive
    ? (filterText ? "No session matches the filter." : "No sessions in the retained history yet.")
    : "Waiting for sessions…");
  setText($("#sessions-sub"), all.length > shown.length
    ? `${shown.length} of ${all.length} shown` : `${all.length} in the retained history`);
}

// ---- event log of the selected session -----------------------------------------------

const log = {
  body: $("#log"),
  wrap: $("#log-wrap"),
  count: 0, // rows in the page
  received: 0, // events of this selection, drawn or not
  generation: 0, // one per selection
  shown: 0, // rows that pass the filters
  ids: new Set(), // ids of the rows in the page, and of those waiting to be drawn
  pending: [], // events not drawn yet: {id, data, t, fresh}
  flushTimer: null,
  isLive: false,
  pinned: true, // follow the tail while the user is at the bottom
  autoTop: null, // scrollTop our last automatic scroll left

  clear() {
    this.generation += 1;
    this.body.replaceChildren();
    this.ids.clear();
    this.pending = [];
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    this.count = 0;
    this.shown = 0;
    this.received = 0;
    timeline.reset();
    filters.resetSession();
    this.isLive = false;
    this.pinned = true;
    $("#follow").hidden = true;
  },

  /**
   * One event of the selected session. Its meaning (timeline, filter choices) is taken at
   * once; its row is drawn in a batch: every 200 ms while history replays, right after the
   * current burst once live. Drawing a replay row by row costs a layout of the table per
   * frame and made a 30,000-event history take minutes; rows that would leave the page
   * before being seen (beyond the last MAX_LOG_ROWS) are never built.
   */
  add(id, data) {
    if (!data) return;
    // Defence in depth: rpa-bus.js already drops repeats; a row per id, never two.
    if (this.ids.has(id)) return;
    this.ids.add(id);
    const t = parseTs(data.ts) ?? idTime(id);
    filters.seen(String(data.type ?? "?"), data.step);
    timeline.add(data, t);
    this.pending.push({ id, data, t, fresh: this.isLive });
    this.received += 1;
    if (this.pending.length > 2 * MAX_LOG_ROWS) this.dropPending(MAX_LOG_ROWS);
    this.scheduleFlush();
    if (!this.isLive) this.countPending();
  },

  /** Forget the oldest waiting events but `keep`: they would leave the page unseen. */
  dropPending(keep) {
    const drop = this.pending.length - keep;
    if (drop <= 0) return;
    for (let i = 0; i < drop; i += 1) this.ids.delete(this.pending[i].id);
    this.pending.splice(0, drop);
  },

  scheduleFlush() {
    if (this.flushTimer != null) return;
    // While history replays, the first rows show soon and the rest every 5 s: each draw
    // lays out the whole table again (the header counts the events meanwhile).
    const delay = this.isLive ? 0 : this.count ? 5000 : 200;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      this.flush();
    }, delay);
  },

  /** The header's event count moves while rows wait to be drawn (at most every 250 ms). */
  countPending() {
    const now = Date.now();
    if (now - (this.counted ?? 0) < 250) return;
    this.counted = now;
    updateLogHeader();
  },

  /** Draw the waiting events, then keep the page to its last MAX_LOG_ROWS rows. */
  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (!this.pending.length) return;
    this.dropPending(MAX_LOG_ROWS);
    const rows = document.createDocumentFragment();
    for (const item of this.pending) {
      const row = this.row(item);
      rows.append(row);
      this.count += 1;
      if (!row.hidden) this.shown += 1;
    }
    this.pending = [];
    this.body.append(rows);
    let oldest = this.body.firstElementChild;
    while (this.count > MAX_LOG_ROWS && oldest) {
      const next = oldest.nextElementSibling;
      if (oldest.dataset.id) {
        this.ids.delete(oldest.dataset.id);
        if (!oldest.hidden) this.shown -= 1;
        oldest.remove();
        this.count -= 1;
      }
      oldest = next;
    }
    this.afterAppend();
  },

  row({ id, data, t, fresh }) {
    const kind = String(data.type ?? "?");
    const step = data.step != null ? (data.total ? `${data.step}/${data.total}` : String(data.step)) : "";
    const text = eventText(data);
    const level = levelOf(data);
    const msgCell = h("td", { class: "m" });
    if (level !== "info") msgCell.append(h("span", { class: "lvl", "data-level": level, text: level }));
    msgCell.append(text);
    if (kind === "artifact" && data.artifact) msgCell.append(" ", artifactNode(data.artifact));
    const hasData = data.data !== undefined;
    if (hasData) {
      msgCell.append(h("code", { class: "data", text: JSON.stringify(data.data) }));
    }
    const row = h("tr", {
      "data-id": id, "data-type": kind, "data-level": level,
      "data-step": Number.isInteger(data.step) ? String(data.step) : null,
      class: hasData ? "has-data" : null,
    },
      h("td", { class: "t", title: `${new Date(t).toISOString()}\nid ${id}`, text: fmtClock(t, true) }),
      h("td", {}, h("span", { class: BUILTIN.has(kind) ? "type" : "type custom", "data-type": kind, text: kind })),
      h("td", { class: "step", text: step }),
      msgCell,
    );
    if (hasData) {
      row.addEventListener("click", () => {
        const open = row.classList.toggle("open");
        row.querySelector(".data").textContent = JSON.stringify(data.data, null, open ? 2 : 0);
      });
    }
    if (fresh) row.classList.add("fresh");
    // What the search box looks through: the line as shown, its type and its data.
    row.searchText = `${kind} ${text} ${hasData ? JSON.stringify(data.data) : ""}`.toLowerCase();
    row.hidden = !filters.match(row);
    return row;
  },

  marker(text) {
    this.flush(); // after the rows that came before it
    this.body.append(h("tr", { class: "marker" }, h("td", { colspan: "4", text })));
    this.afterAppend();
  },

  reset(text) {
    this.clear();
    this.marker(text);
  },

  live() {
    this.isLive = true;
    this.flush();
    updateLogHeader();
  },

  afterAppend() {
    $("#log-empty").hidden = true;
    $("#log-filters").hidden = false;
    $("#log-none").hidden = this.shown > 0 || this.count === 0;
    if (this.pinned) this.scrollPending();
    else $("#follow").hidden = false;
    updateLogHeader();
  },

  scrollPending() {
    if (this._raf) return;
    this._raf = requestAnimationFrame(() => {
      this._raf = null;
      this.wrap.scrollTop = this.wrap.scrollHeight;
      this.autoTop = this.wrap.scrollTop;
    });
  },
};

log.wrap.addEventListener("scroll", () => {
  const w = log.wrap;
  // Our own scroll to the tail: rows may have arrived since, so "not at the bottom" here
  // does not mean the user scrolled away.
  if (log.autoTop != null && Math.abs(w.scrollTop - log.autoTop) < 2) return;
  log.autoTop = null;
  log.pinned = w.scrollHeight - w.scrollTop - w.clientHeight < 24;
  if (log.pinned) $("#follow").hidden = true;
});
// The timeline above the log grows as steps arrive, shrinking the log's box: a log that
// follows its tail must scroll again then (a resize fires no scroll event).
new ResizeObserver(() => {
  if (log.pinned) log.scrollPending();
}).observe(log.wrap);
$("#follow").addEventListener("click", () => {
  log.pinned = true;
  $("#follow").hidden = true;
  log.scrollPending();
});

// ---- the log's filters and the job view ----------------------------------------------

const LEVEL_RANK = Object.fromEntries(LEVELS.map((l, i) => [l, i]));
const KNOWN_TYPES = ["started", "step", "progress", "log", "error", "artifact", "result", "finished", "failed"];

/**
 * Level (this one and up), type, step and a search over the log's text. Rows that do not
 * match are hidden, not dropped: clearing a filter shows them again at once.
 */
const filters = {
  level: "",
  type: "",
  step: "",
  q: "",
  types: new Set(KNOWN_TYPES),
  steps: new Set(),

  active() {
    return Boolean(this.level || this.type || this.step || this.q);
  },

  match(row) {
    if (!row.dataset.id) return true; // markers (gaps, resets) always show
    if (this.level && (LEVEL_RANK[row.dataset.level] ?? 1) < LEVEL_RANK[this.level]) return false;
    if (this.type && row.dataset.type !== this.type) return false;
    if (this.step && row.dataset.step !== this.step) return false;
    if (this.q && !(row.searchText ?? "").includes(this.q)) return false;
    return true;
  },

  /** Offer the types and steps the log has shown. */
  seen(kind, step) {
    if (!this.types.has(kind)) {
      this.types.add(kind);
      $("#log-type").append(h("option", { value: kind, text: kind }));
    }
    if (Number.isInteger(step) && !this.steps.has(step)) {
      this.steps.add(step);
      const select = $("#log-step");
      const option = h("option", { value: String(step), text: `step ${step}` });
      const after = [...select.options].find((o) => o.value !== "" && Number(o.value) > step);
      select.insertBefore(option, after ?? null);
    }
  },

  /** Steps belong to a session: a new selection starts with none. */
  resetSession() {
    this.steps.clear();
    this.step = "";
    $("#log-step").replaceChildren(h("option", { value: "", text: "all steps" }));
  },

  setStep(step) {
    const value = step == null ? "" : String(step);
    this.step = this.step === value ? "" : value; // clicking the same step again clears it
    $("#log-step").value = this.step;
    this.apply();
  },

  apply() {
    let shown = 0;
    for (const row of log.body.rows) {
      row.hidden = !this.match(row);
      if (!row.hidden && row.dataset.id) shown += 1;
    }
    log.shown = shown;
    $("#log-none").hidden = shown > 0 || log.count === 0;
    for (const el of document.querySelectorAll(".tl-row")) {
      el.classList.toggle("picked", el.dataset.step === this.step);
    }
    updateLogHeader();
    if (log.pinned) log.scrollPending();
  },
};

for (const name of KNOWN_TYPES) $("#log-type").append(h("option", { value: name, text: name }));
$("#log-level").addEventListener("change", (e) => {
  filters.level = e.target.value;
  filters.apply();
});
$("#log-type").addEventListener("change", (e) => {
  filters.type = e.target.value;
  filters.apply();
});
$("#log-step").addEventListener("change", (e) => {
  filters.step = e.target.value;
  filters.apply();
});
$("#log-search").addEventListener("input", (e) => {
  filters.q = e.target.value.trim().toLowerCase();
  filters.apply();
});

// Clicking a step's label (or the failure note) shows only that step's events.
const timeline = new Timeline($("#timeline"), { onStep: (step) => filters.setStep(step) });
$("#timeline").addEventListener("click", (e) => {
  const note = e.target.closest(".tl-error");
  if (note?.dataset.step) filters.setStep(Number(note.dataset.step));
});

function updateLogHeader() {
  const s = selected ? sessions.get(selected) : null;
  const pill = $("#log-status");
  if (!s) {
    pill.hidden = true;
    setText($("#log-title"), "Event log");
    setText($("#log-sub"), "select a session");
    return;
  }
  setText($("#log-title"), s.sid);
  pill.hidden = false;
  pill.dataset.status = shownStatus(s);
  setText(pill, shownStatus(s));
  const phase = s.viaPages ? (log.isLive ? "whole history" : "loading history…")
    : bus.status !== "open" ? "paused" : log.isLive ? "live" : "loading history…";
  // Filtered: of the rows the page holds (the newest MAX_LOG_ROWS); else all received.
  const counted = filters.active() ? `${log.shown} of ${log.count + log.pending.length} events`
    : `${log.received} events`;
  setText($("#log-sub"), `${counted}${s.archived ? " · from the archive" : ""} · ${phase}`);
  // With the status: an ended run shows no ETA from the moment its pill says so.
  showEta();
}

/** Show one session's log: its whole retained history, then live events. */
/**
 * Show one session's log and timeline. `pages`: read its history over HTTP instead of
 * subscribing (an ended session opened from the History tab: nothing more will happen in
 * it, and while the relay follows a session Redis no longer holds, it keeps an empty
 * stream under its name, which hides the session from the archive's search meanwhile).
 */
function select(sid, fromClick = false, { pages = false } = {}) {
  if (sid === selected) return;
  const prev = selected ? sessions.get(selected) : null;
  selected = sid;
  if (prev) {
    endSubscription(prev);
    planSubscription(prev);
  }
  log.clear();
  $("#log-empty").hidden = !!sid;
  if (sid) {
    history.replaceState(null, "", `${location.pathname}${location.search}#session=${encodeURIComponent(sid)}`);
    const s = session(sid);
    s.viaPages = pages;
    if (pages) loadPages(s, { whole: true });
    else subscribeSession(s, "full");
    revealSelected = !fromClick;
  }
  updateLogHeader();
  showEta();
  scheduleRender();
}

function selectionFromHash() {
  const m = /(?:^#|&)session=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

// ---- hosts: metrics charts -----------------------------------------------------------

const windowMs = parseWindow(params.get("window"));
setText($("#window-label"), `last ${fmtDuration(windowMs / 1000).replace(/ 0+s$/, "").replace(/ 00m$/, "")}`);

/**
 * Read the numbers the charts need from a `metrics` event's data. Accepts the monitor's
 * layout and a few plausible variants, so a renamed field shows as a gap, not an error.
 */
function readMetrics(d) {
  const disks = d?.disks && typeof d.disks === "object" ? Object.entries(d.disks) : [];
  let disk = null;
  for (const [mount, v] of disks) {
    if (typeof v?.percent === "number" && (!disk || v.percent > disk.percent)) disk = { mount, percent: v.percent };
  }
  const bus = d?.bus && typeof d.bus === "object" ? d.bus : null;
  return {
    cpu: pick(d, ["cpu.percent", "cpu.total", "cpu_percent", "cpu"]),
    mem: pick(d, ["memory.percent", "mem.percent", "memory_percent"]),
    rx: pick(d, ["net.total.rx_bytes_s", "net.rx_bytes_s", "net.bytes_recv_per_s"]),
    tx: pick(d, ["net.total.tx_bytes_s", "net.tx_bytes_s", "net.bytes_sent_per_s"]),
    load: pick(d, ["cpu.load.0", "load.0"]),
    cores: pick(d, ["cpu.count"]) ?? (Array.isArray(d?.cpu?.per_core) ? d.cpu.per_core.length : null),
    memUsed: pick(d, ["memory.used", "mem.used"]),
    memTotal: pick(d, ["memory.total", "mem.total"]),
    swap: pick(d, ["swap.percent"]),
    disk,
    bus,
  };
}

/** A time-series chart on a canvas: fixed x window ending now, one or two series. */
class Chart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{series: {key: string, color: string}[], max?: number, format: (v: number) => string}} opts
   */
  constructor(canvas, opts) {
    this.canvas = canvas;
    this.opts = opts;
    this.hover = null;
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect();
      this.hover = e.clientX - r.left;
      this.draw();
    });
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
  }

  /** @param {{t: number}[]} points */
  draw(points = this.points ?? []) {
    this.points = points;
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const css = getComputedStyle(document.documentElement);
    const grid = css.getPropertyValue("--border").trim();
    const faint = css.getPropertyValue("--faint").trim();
    const now = Date.now();
    const t0 = now - windowMs;
    const pad = { l: 0, r: 0, t: 12, b: 14 };
    const pw = w - pad.l - pad.r;
    const ph = hgt - pad.t - pad.b;
    let max = this.opts.max;
    if (max == null) {
      max = 0;
      for (const p of points) for (const s of this.opts.series) max = Math.max(max, p[s.key] ?? 0);
      max = niceCeil(max || 1);
    }
    const x = (t) => pad.l + ((t - t0) / windowMs) * pw;
    const y = (v) => pad.t + ph - (Math.min(v, max) / max) * ph;

    // Grid: three horizontal lines with their values; time ticks along the bottom.
    const labels = [];
    ctx.font = "10px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = faint;
    ctx.textBaseline = "bottom";
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(max * f)) + 0.5;
      ctx.beginPath();
      ctx.setLineDash(f === 0 ? [] : [2, 3]);
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(pad.l + pw, yy);
      ctx.stroke();
      if (f > 0) labels.push([(this.opts.axis ?? this.opts.format)(max * f), yy]);
    }
    ctx.setLineDash([]);
    const tick = niceTick(windowMs);
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "center";
    for (let t = Math.ceil(t0 / tick) * tick; t <= now; t += tick) {
      const xx = x(t);
      if (xx < 16 || xx > pw - 16) continue;
      ctx.fillText(fmtClock(t).slice(0, windowMs > 3 * 3600_000 ? 5 : tick >= 60_000 ? 5 : 8), xx, hgt - 2);
    }

    // Series, averaged per pixel column when there are more points than pixels.
    const visible = points.filter((p) => p.t >= t0);
    for (const s of this.opts.series) {
      const cols = columns(visible, s.key, x, pw);
      if (!cols.length) continue;
      ctx.beginPath();
      let started = false;
      let lastX = null;
      for (const [xx, v] of cols) {
        const yy = y(v);
        // A hole longer than a few samples (monitor down) breaks the line.
        if (!started || (lastX != null && xx - lastX > Math.max(12, pw / 40))) ctx.moveTo(xx, yy);
        else ctx.lineTo(xx, yy);
        started = true;
        lastX = xx;
      }
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.lineJoin = "round";
      ctx.stroke();
      if (this.opts.series.length === 1 || s === this.opts.series[0]) {
        ctx.lineTo(cols[cols.length - 1][0], y(0));
        ctx.lineTo(cols[0][0], y(0));
        ctx.closePath();
        const g = ctx.createLinearGradient(0, pad.t, 0, pad.t + ph);
        g.addColorStop(0, withAlpha(s.color, 0.28));
        g.addColorStop(1, withAlpha(s.color, 0.02));
        ctx.fillStyle = g;
        ctx.fill();
      }
    }

    // Alert bands: when a threshold alert on this chart's metric was firing.
    for (const band of this.opts.bands?.() ?? []) {
      const x1 = Math.max(pad.l, x(band.from));
      const x2 = Math.min(pad.l + pw, x(band.to ?? now));
      if (x2 <= x1) continue;
      ctx.fillStyle = withAlpha(css.getPropertyValue(band.severity === "critical" ? "--critical" : "--warning").trim(), 0.16);
      ctx.fillRect(x1, pad.t, Math.max(2, x2 - x1), ph);
    }

    // Axis values last, on a backing, so a line never hides them.
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const [text, yy] of labels) {
      const tw = ctx.measureText(text).width + 6;
      ctx.fillStyle = withAlpha(css.getPropertyValue("--panel").trim(), 0.85);
      ctx.fillRect(pad.l, yy - 6, tw, 12);
      ctx.fillStyle = faint;
      ctx.fillText(text, pad.l + 3, yy);
    }

    // Hover: crosshair and the values under it.
    if (this.hover != null && visible.length) {
      const tAt = t0 + ((this.hover - pad.l) / pw) * windowMs;
      let best = visible[0];
      for (const p of visible) if (Math.abs(p.t - tAt) < Math.abs(best.t - tAt)) best = p;
      const xx = Math.round(x(best.t)) + 0.5;
      ctx.strokeStyle = faint;
      ctx.beginPath();
      ctx.moveTo(xx, pad.t);
      ctx.lineTo(xx, pad.t + ph);
      ctx.stroke();
      const label = `${fmtClock(best.t)}  ${this.opts.series
        .map((s) => this.opts.format(best[s.key] ?? NaN)).join(" / ")}`;
      ctx.font = "11px system-ui, sans-serif";
      const tw = ctx.measureText(label).width + 10;
      const lx = Math.min(Math.max(xx - tw / 2, 0), w - tw);
      ctx.fillStyle = css.getPropertyValue("--panel-2").trim();
      ctx.fillRect(lx, pad.t, tw, 17);
      ctx.strokeStyle = grid;
      ctx.strokeRect(lx + 0.5, pad.t + 0.5, tw - 1, 16);
      ctx.fillStyle = css.getPropertyValue("--text").trim();
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(label, lx + 5, pad.t + 9);
    }
  }
}

/** [x, value] per pixel column (mean of the samples that fall in it). */
function columns(points, key, x, pw) {
  const out = [];
  let col = null;
  let sum = 0;
  let n = 0;
  for (const p of points) {
    const v = p[key];
    if (v == null) continue;
    const xx = Math.round(x(p.t));
    if (xx !== col && n) {
      out.push([col, sum / n]);
      sum = 0;
      n = 0;
    }
    col = xx;
    sum += v;
    n += 1;
  }
  if (n) out.push([Math.min(col, pw), sum / n]);
  return out;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function niceTick(windowMs_) {
  const target = windowMs_ / 5;
  for (const t of [10e3, 30e3, 60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3]) {
    if (t >= target) return t;
  }
  return 86_400e3;
}

function withAlpha(color, a) {
  if (/^#[0-9a-f]{6}$/i.test(color)) {
    const n = parseInt(color.slice(1), 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }
  return color;
}

/** @type {Map<string, Object>} */
const hosts = new Map();

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function addHost(name) {
  if (hosts.has(name) || !/^[A-Za-z0-9_.-]{1,128}$/.test(name)) return;
  $("#hosts .empty")?.remove();
  const chartEl = (title, valueEl) => {
    const canvas = h("canvas");
    const el = h("div", { class: "chart" },
      h("div", { class: "chart-head" }, h("span", { class: "chart-title", text: title }), valueEl),
      canvas);
    return { el, canvas };
  };
  const cpuVal = h("span", { class: "chart-value", text: "—" });
  const memVal = h("span", { class: "chart-value", text: "—" });
  const netVal = h("span", { class: "chart-value", text: "—" });
  const cpu = chartEl("CPU", cpuVal);
  const mem = chartEl("Memory", memVal);
  const net = chartEl("Network", netVal);
  const meta = h("div", { class: "host-meta", text: "waiting for samples…" });
  const el = h("div", { class: "host", "data-host": name },
    h("div", {}, h("div", { class: "host-name", title: name, text: name }), meta),
    cpu.el, mem.el, net.el);
  $("#hosts").append(el);
  // The top row is sized once for the hosts shown (up to two, then it scrolls), so alerts
  // arriving later never push the sessions table down.
  document.documentElement.style.setProperty("--host-rows", String(Math.min(2, hosts.size + 1)));
  const host = {
    name, el, meta, points: [], lastSample: null, cpuVal, memVal, netVal, latest: null,
    charts: [],
  };
  const bands = (prefix) => () => alertBands(name, prefix);
  host.charts = [
    new Chart(cpu.canvas, { series: [{ key: "cpu", color: cssVar("--cpu") }], max: 100, format: fmtPct, axis: fmtAxisPct, bands: bands("cpu") }),
    new Chart(mem.canvas, { series: [{ key: "mem", color: cssVar("--mem") }], max: 100, format: fmtPct, axis: fmtAxisPct, bands: bands("mem") }),
    new Chart(net.canvas, {
      series: [{ key: "rx", color: cssVar("--rx") }, { key: "tx", color: cssVar("--tx") }],
      format: fmtBytesRate, bands: bands("net"),
    }),
  ];
  hosts.set(name, host);
  bus.subscribe(`monitor:${name}`, {
    from: idAtTime(Date.now() - windowMs),
    onEvent(id, data) {
      if (!data) return;
      const t = parseTs(data.ts) ?? idTime(id);
      if (data.type === "metrics") {
        const m = readMetrics(data.data ?? {});
        host.points.push({ t, ...m });
        host.latest = m;
        host.lastSample = t;
        scheduleCharts();
      } else if (data.type === "alert") {
        onAlert(name, id, t, data);
      }
    },
    onReset() {
      host.points = [];
    },
    onError(err) {
      setText(meta, `${err.code}: ${err.message}`);
      noticeFor(err, `monitor:${name}`);
    },
  });
}

let chartsPending = false;
function scheduleCharts() {
  if (chartsPending) return;
  chartsPending = true;
  requestAnimationFrame(() => {
    chartsPending = false;
    drawCharts();
  });
}

function drawCharts() {
  const cutoff = Date.now() - windowMs;
  for (const host of hosts.values()) {
    let drop = 0;
    while (drop < host.points.length && host.points[drop].t < cutoff) drop += 1;
    if (drop) host.points.splice(0, drop);
    for (const chart of host.charts) chart.draw(host.points);
    const m = host.latest;
    if (m) {
      setText(host.cpuVal, fmtPct(m.cpu));
      setText(host.memVal, fmtPct(m.mem));
      host.netVal.replaceChildren(
        h("span", { class: "k rx", title: "received", text: `↓ ${fmtBytesRate(m.rx)}` }),
        h("span", { class: "k tx", title: "sent", text: `↑ ${fmtBytesRate(m.tx)}` }));
    }
    const lines = [];
    if (host.lastSample) {
      const stale = Date.now() - host.lastSample > 60_000;
      lines.push(h("div", { class: stale ? "stale" : null, text: `sample ${fmtAge(host.lastSample)}` }));
    } else {
      lines.push(h("div", { text: "no samples in the window" }));
    }
    if (m?.load != null) lines.push(h("div", { text: `load ${m.load.toFixed(2)}${m.cores ? ` · ${m.cores} cores` : ""}` }));
    if (m?.memUsed != null && m?.memTotal) {
      lines.push(h("div", { text: `mem ${fmtBytes(m.memUsed)} / ${fmtBytes(m.memTotal)}` }));
    }
    if (m?.disk) lines.push(h("div", { title: m.disk.mount, text: `disk ${m.disk.percent.toFixed(0)}% full` }));
    if (m?.bus) {
      lines.push(m.bus.reachable === false
        ? h("div", { class: "stale", text: "Redis unreachable" })
        : h("div", { title: `${m.bus.connected_clients ?? "?"} Redis clients`, text: `redis ${fmtBytes(m.bus.used_memory ?? NaN)} used` }));
    }
    host.meta.replaceChildren(...lines);
  }
}

/** No host known: say how to name one, and offer to add it here (kept in the URL). */
function showHostForm() {
  const input = h("input", {
    type: "text", placeholder: "monitor host name", spellcheck: "false", autocomplete: "off",
  });
  const form = h("form", { class: "host-form" }, input, h("button", { type: "submit", text: "Chart it" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = input.value.trim();
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(name)) {
      input.setCustomValidity("1 to 128 characters from A-Z a-z 0-9 _ . -");
      input.reportValidity();
      return;
    }
    const url = new URL(location.href);
    const names = [...hosts.keys(), name];
    url.searchParams.set("hosts", names.join(","));
    history.replaceState(null, "", url);
    addHost(name);
  });
  input.addEventListener("input", () => input.setCustomValidity(""));
  $("#hosts").replaceChildren(h("div", { class: "empty" },
    h("p", {}, "No monitored hosts yet. Name one (the monitor's ", h("code", { text: "--host-name" }),
      ") or open the page with ", h("code", { text: "?hosts=NAME" }), "."),
    form));
}

function hostsFromUrl() {
  const names = [];
  for (const key of ["hosts", "host"]) {
    for (const v of params.getAll(key)) names.push(...v.split(",").map((x) => x.trim()).filter(Boolean));
  }
  return names;
}

/** The hosts whose monitor reports, as the relay's /healthz lists them; [] if unknown. */
async function hostsFromRelay() {
  try {
    // 503 still carries the body (the relay is up, Redis is not).
    const res = await fetch("healthz", { headers: { accept: "application/json" } });
    const body = await res.json();
    if (Array.isArray(body.hosts)) return body.hosts.filter((x) => typeof x === "string");
  } catch {
    // No listing: the page still works with ?hosts=.
  }
  return [];
}

// ---- alerts --------------------------------------------------------------------------

/** key -> alert; a key is one alert condition: host, metric and subject. */
const alerts = new Map();
/** Sessions a `stalled` alert is firing for. */
const stalledSids = new Set();

function onAlert(host, id, t, ev) {
  const d = ev.data && typeof ev.data === "object" ? ev.data : {};
  const metric = String(d.metric ?? d.name ?? "alert");
  const sid = typeof d.session === "string" ? d.session : null;
  const subject = sid ?? d.mount ?? d.relay ?? null;
  const key = `${host}|${metric}|${subject ?? ""}`;
  const state = d.state === "resolved" ? "resolved" : "firing";
  const prev = alerts.get(key);
  const a = {
    key, host, metric, sid, subject, state, id,
    severity: String(d.severity ?? "warning"),
    value: d.value, threshold: d.threshold,
    message: ev.message ?? d.message ?? null,
    since: state === "firing" ? (prev?.state === "firing" ? prev.since : t) : prev?.since ?? t,
    at: t,
    history: prev?.history ?? [],
  };
  if (state === "firing" && prev?.state !== "firing") a.history.push({ from: t, to: null, severity: a.severity });
  if (state === "resolved" && a.history.length) a.history[a.history.length - 1].to ??= t;
  if (a.history.length > 50) a.history.shift();
  alerts.set(key, a);
  if (sid && metric === "stalled") {
    if (state === "firing") stalledSids.add(sid);
    else stalledSids.delete(sid);
    scheduleRender();
  }
  scheduleAlerts();
  scheduleCharts();
}

function alertBands(host, prefix) {
  const out = [];
  for (const a of alerts.values()) {
    if (a.host === host && a.metric.toLowerCase().startsWith(prefix)) out.push(...a.history);
  }
  return out;
}

let alertsPending = false;
function scheduleAlerts() {
  if (alertsPending) return;
  alertsPending = true;
  requestAnimationFrame(() => {
    alertsPending = false;
    renderAlerts();
  });
}

/** How the monitor's alert families read to a person. */
const ALERT_NAMES = {
  cpu: "CPU busy", memory: "Memory full", disk: "Disk full", relay_lag: "Relay lagging",
  stalled: "Session stalled",
};

function fmtValue(metric, v) {
  if (typeof v !== "number") return v == null ? "" : String(v);
  if (/^(cpu|memory|disk|swap)/.test(metric) || /percent/.test(metric)) return `${v.toFixed(1)}%`;
  if (metric === "stalled" || /_s$/.test(metric)) return `${fmtDuration(v)} silent`;
  if (metric === "relay_lag") return `${Math.round(v)} entries behind`;
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function renderAlerts() {
  const list = $("#alerts");
  const all = [...alerts.values()].sort((a, b) =>
    (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1) || b.at - a.at);
  const firing = all.filter((a) => a.state === "firing").length;
  const items = all.slice(0, 40).map((a) => {
    const name = ALERT_NAMES[a.metric] ?? a.metric;
    const what = a.sid ? `${name}: ${a.sid}` : `${name}${a.subject ? ` ${a.subject}` : ""} · ${a.host}`;
    const detail = h("div", { class: "alert-detail" });
    if (a.value != null) {
      detail.append(`${fmtValue(a.metric, a.value)}`);
      if (a.threshold != null) {
        detail.append(` · threshold ${fmtValue(a.metric, a.threshold).replace(/ silent$/, "")}`);
      }
    } else if (a.message) {
      detail.append(a.message);
    }
    if (a.sid) {
      const link = h("a", { text: "open log" });
      link.addEventListener("click", () => select(a.sid));
      detail.append(detail.textContent ? " · " : "", link);
    }
    const when = a.state === "firing" ? `for ${fmtDuration((Date.now() - a.since) / 1000)}` : `resolved ${fmtAge(a.at)}`;
    return h("li", { class: "alert", "data-state": a.state, "data-severity": a.severity, "data-key": a.key },
      h("div", { class: "alert-what" }, h("span", { class: "state", text: a.state === "firing" ? a.severity : "resolved" }), what),
      h("div", { class: "alert-when", text: when }),
      detail);
  });
  if (!items.length) items.push(h("li", { class: "empty", text: "No alerts in the window. All quiet." }));
  list.replaceChildren(...items);
  setText($("#alerts-sub"), firing ? `${firing} firing` : "none firing");
  firingCount = firing;
  updateTitle();
  const c = $('.count[data-status="firing"]');
  setText(c.querySelector("b"), firing);
  c.classList.toggle("hot", firing > 0);
}

// ---- over HTTP: history search, archived sessions, job summaries ---------------------

/** The relay's HTTP root: this page's, or the one ?relay= names (ws -> http). */
const apiBase = (() => {
  const named = params.get("relay");
  if (!named) return new URL(".", location.href);
  const u = new URL(named, location.href);
  u.protocol = { "ws:": "http:", "wss:": "https:" }[u.protocol] ?? u.protocol;
  u.pathname = u.pathname.replace(/ws\/?$/, "");
  u.search = "";
  return u;
})();

/** GET a /v1/ path with the page's token: {ok, status, body} or {ok: false, error}. */
async function apiGet(path) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(new URL(path, apiBase), { headers, cache: "no-store" });
  } catch (exc) {
    return { ok: false, status: 0, error: `the relay did not answer (${exc.message})` };
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  if (!res.ok) {
    const err = body?.error;
    return { ok: false, status: res.status, error: err ? `${err.code}: ${err.message}` : `HTTP ${res.status}` };
  }
  return { ok: true, status: res.status, body };
}

/** A session's whole history in pages (Redis, then the archive behind the same answer). */
async function loadPages(s, { whole = false } = {}) {
  const sid = s.sid;
  const generation = log.generation; // a new selection (even of the same session) stops us
  const stream = `session:${encodeURIComponent(sid)}`;
  let after = null;
  let got = 0;
  for (let n = 0; n < 1000; n += 1) {
    const q = new URLSearchParams({ limit: "1000" });
    if (after) q.set("after", after);
    const res = await apiGet(`v1/streams/${stream}/events?${q}`);
    if (selected !== sid || log.generation !== generation) return;
    if (!res.ok) {
      log.marker(`history pages: ${res.error}`);
      return;
    }
    for (const ev of res.body.events ?? []) {
      if (ev.data) fold(s, ev.data); // its status and state, as the events tell them
      log.add(ev.id, ev.data);
    }
    scheduleRender();
    got += res.body.events?.length ?? 0;
    if (!res.body.next || !res.body.events?.length) break;
    after = res.body.next;
  }
  if (!got && s.fromHistory) log.marker("no events of this session are retained or archived");
  if (whole) {
    log.live(); // the whole history is here: draw it
  } else if (got) {
    s.archived = true; // Redis had nothing: these came from the archive
    updateLogHeader();
  }
}

function fmtWhen(ms) {
  if (ms == null) return "—";
  const d = new Date(ms);
  const today = new Date();
  const time = fmtClock(ms).slice(0, 5);
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

const historyView = { next: null, loaded: false, seq: 0 };

/** One page of GET /v1/sessions with the form's filters; `more` appends the next page. */
async function searchHistory(more = false) {
  const seq = ++historyView.seq;
  const q = new URLSearchParams({ limit: "50" });
  const text = $("#history-q").value.trim();
  if (text) q.set("q", text);
  if ($("#history-status").value) q.set("status", $("#history-status").value);
  const since = Number($("#history-since").value);
  if (since) q.set("since", String(Date.now() - since * 1000));
  const until = $("#history-until").value; // YYYY-MM-DD: up to the end of that local day
  if (until) q.set("until", String(new Date(`${until}T23:59:59.999`).getTime()));
  if (more && historyView.next) q.set("cursor", historyView.next);
  const empty = $("#history-empty");
  if (!more) {
    $("#history").replaceChildren();
    empty.hidden = false;
    setText(empty, "Searching…");
  }
  $("#history-more").hidden = true;
  const res = await apiGet(`v1/sessions?${q}`);
  if (seq !== historyView.seq) return; // a newer search went out meanwhile
  historyView.loaded = true;
  if (!res.ok) {
    empty.hidden = false;
    setText(empty, `The search failed: ${res.error}`);
    return;
  }
  const found = res.body.sessions ?? [];
  const tbody = $("#history");
  for (const r of found) {
    if (tbody.querySelector(`tr[data-sid="${CSS.escape(r.session)}"]`)) continue;
    tbody.append(historyRow(r));
  }
  historyView.next = res.body.next ?? null;
  $("#history-more").hidden = !historyView.next;
  empty.hidden = tbody.rows.length > 0;
  setText(empty, historyView.next ? "None in the sessions searched so far: load more to go on." : "No session matches.");
  if (!tbody.rows.length && historyView.next) empty.hidden = false;
}

function historyRow(r) {
  const started = parseTs(r.started);
  const updated = parseTs(r.updated);
  const ran = TERMINAL.has(r.status) && started && updated ? fmtDuration((updated - started) / 1000) : "—";
  const msg = r.status === "failed" && r.error ? r.error : r.message ?? "";
  const row = h("tr", { "data-sid": r.session, "data-status": r.status },
    h("td", {}, h("span", { class: "pill", "data-status": r.status, text: r.status })),
    h("td", { class: "sid", title: r.session, text: r.session }),
    h("td", { class: "job", text: r.job ?? "" }),
    h("td", { class: "when", title: r.started ?? "", text: fmtWhen(started) }),
    h("td", { class: "num eta", text: ran }),
    h("td", { class: "msg", title: msg, text: msg }),
  );
  row.addEventListener("click", () => openFromHistory(r));
  return row;
}

/** Open a session found by the search: its log and timeline, wherever its events live. */
function openFromHistory(r) {
  const s = session(r.session);
  s.fromHistory = true;
  if (s.status === "unknown" || s.status === "expired") {
    s.status = r.status;
    s.started = parseTs(r.started);
    if (TERMINAL.has(r.status)) s.ended = parseTs(r.updated);
    Object.assign(s.state, Object.fromEntries(Object.entries(r).filter(([, v]) => v != null)));
  }
  for (const tr of $("#history").rows) tr.classList.toggle("selected", tr.dataset.sid === r.session);
  select(r.session, true, { pages: TERMINAL.has(r.status) });
}

$("#history-form").addEventListener("submit", (e) => {
  e.preventDefault();
  searchHistory();
});
for (const id of ["#history-status", "#history-since", "#history-until"]) {
  $(id).addEventListener("change", () => searchHistory());
}
$("#history-more").addEventListener("click", () => searchHistory(true));

/** The success rate as a percentage (the API gives a fraction of 1). */
function fmtRate(v) {
  return typeof v === "number" && Number.isFinite(v) ? `${Math.round(v * 1000) / 10}%` : "—";
}

let jobsTimer = null;

/** GET /v1/jobs into the Jobs tab; the tab is offered only when the relay answers it. */
async function loadJobs() {
  const res = await apiGet("v1/jobs");
  const tab = $('.tab[data-tab="jobs"]');
  if (res.status === 404 || res.status === 405) {
    tab.hidden = true;
    if (currentTab === "jobs") showTab("live");
    return;
  }
  tab.hidden = false;
  const empty = $("#jobs-empty");
  if (!res.ok) {
    empty.hidden = false;
    setText(empty, `Job summaries failed: ${res.error}`);
    return;
  }
  const jobs = res.body.jobs ?? [];
  $("#jobs").replaceChildren(...jobs.map((j) => {
    const slow = j.slowest_step;
    const slowText = slow ? `${slow.step}${slow.name ? ` · ${slow.name}` : ""} (${fmtSeconds(slow.median_s)})` : "—";
    const row = h("tr", { "data-job": j.job, title: `${j.runs} runs: ${j.succeeded} finished, ${j.failed} failed` },
      h("td", { class: "sid", text: j.job }),
      h("td", { class: "num", text: String(j.runs_today ?? 0) }),
      h("td", { class: `num rate${typeof j.success_rate === "number" && j.success_rate < 0.9 ? " low" : ""}`, text: fmtRate(j.success_rate) }),
      h("td", { class: "num", text: fmtSeconds(j.median_s) }),
      h("td", { class: "num", text: fmtSeconds(j.p90_s) }),
      h("td", { class: "msg", title: slowText, text: slowText }),
    );
    // A job's row shows its runs in the Sessions tab.
    row.addEventListener("click", () => {
      $("#filter").value = j.job;
      filterText = j.job.toLowerCase();
      showTab("live");
      scheduleRender();
    });
    return row;
  }));
  empty.hidden = jobs.length > 0;
  setText(empty, "No finished runs of a named job yet.");
}

/** The selected run's ETA in its timeline: counting down, with what it rests on. */
function showEta() {
  const s = selected ? sessions.get(selected) : null;
  const updated = parseTs(s?.state.updated);
  if (!s || s.status !== "running" || s.state.eta_s == null || !updated) {
    timeline.setEta(null);
    return;
  }
  const left = s.state.eta_s - (Date.now() - updated) / 1000;
  const runs = s.state.eta_runs;
  timeline.setEta(`ETA ${fmtDuration(left)}${runs ? ` · ${runs} past run${runs === 1 ? "" : "s"}` : ""}`,
    runs ? `the typical durations of the remaining steps, from ${runs} past runs of ${s.state.job ?? "the job"}`
      : "at this run's own pace (no past runs of the job to learn from)");
}

let currentTab = "live";

function showTab(name) {
  currentTab = name;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  }
  $("#view-live").hidden = name !== "live";
  $("#view-history").hidden = name !== "history";
  $("#view-jobs").hidden = name !== "jobs";
  $("#sessions-sub").hidden = name !== "live";
  clearInterval(jobsTimer);
  jobsTimer = null;
  if (name === "history") {
    if (!historyView.loaded) searchHistory();
    $("#history-q").focus();
  } else if (name === "jobs") {
    loadJobs();
    jobsTimer = setInterval(loadJobs, 30_000);
  }
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => showTab(tab.dataset.tab));
}

// ---- wiring --------------------------------------------------------------------------

let runningCount = 0;
let firingCount = 0;

/** The tab title tells a glance what matters: alerts firing, sessions running. */
function updateTitle() {
  const title = `${firingCount ? `⚠ ${firingCount} firing · ` : ""}${runningCount} running — rpa-bus`;
  if (document.title !== title) document.title = title;
}

/** ↑/↓ (or k/j) walk the sessions list and open the log of the row reached. */
function moveSelection(delta) {
  const rows = [...$("#sessions").rows];
  if (!rows.length) return;
  const at = rows.findIndex((r) => r.dataset.sid === selected);
  const next = rows[Math.max(0, Math.min(rows.length - 1, at < 0 ? 0 : at + delta))];
  select(next.dataset.sid, true);
  next.scrollIntoView({ block: "nearest" });
}

$("#filter").addEventListener("input", (e) => {
  filterText = e.target.value.trim().toLowerCase();
  scheduleRender();
});
const typing = () => ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !typing()) {
    e.preventDefault();
    $("#filter").focus();
  } else if (e.key === "Escape") {
    if (document.activeElement === $("#filter")) $("#filter").blur();
  } else if (!typing() && !e.altKey && !e.ctrlKey && !e.metaKey) {
    if (e.key === "ArrowDown" || e.key === "j") {
      e.preventDefault();
      moveSelection(1);
    } else if (e.key === "ArrowUp" || e.key === "k") {
      e.preventDefault();
      moveSelection(-1);
    }
  }
});
window.addEventListener("hashchange", () => select(selectionFromHash()));
new ResizeObserver(() => scheduleCharts()).observe($("#hosts"));
matchMedia("(prefers-color-scheme: light)").addEventListener("change", () => location.reload());

setInterval(() => {
  setText($("#clock"), fmtClock(Date.now()));
  for (const s of sessions.values()) if (s.row?.isConnected) updateTimes(s);
  timeline.tick();
  showEta();
  scheduleCharts();
  scheduleAlerts();
}, 1000);
setText($("#clock"), fmtClock(Date.now()));

for (const name of hostsFromUrl()) addHost(name);
if (!hosts.size) {
  hostsFromRelay().then((names) => {
    for (const name of names) addHost(name);
    if (!hosts.size) showHostForm();
  });
}
renderAlerts();
select(selectionFromHash());
scheduleRender();
loadJobs(); // offers the Jobs tab where the relay has GET /v1/jobs

// For tests and the curious: the live model, read-only by convention.
window.rpaDashboard = { bus, sessions, hosts, alerts, log, timeline, filters };
