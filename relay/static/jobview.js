/**
 * The job view of one session: a timeline of its steps, built from its events.
 *
 * The model is fed the session's events in stream order (replayed history, then live), so
 * a page opened after the run draws the same timeline as one open from the start: nothing
 * in it depends on when an event arrived, only on the events (docs/contract.md, "Job
 * view"). Only the bar of a step still running uses the clock, to grow live.
 *
 * - `step` events (phase start/end, attempt, outcome, duration_s) make the bars: one row
 *   per step number, one bar per attempt, side by side in time; a retried attempt is amber,
 *   a failed one red, a running one grows.
 * - A session with no `step` events still gets a timeline from its `progress` events:
 *   a step lasts from its progress event to the next one (marked "inferred").
 * - `log`/`error` lines go to the attempt they happened in (their `step`, else the step
 *   open at the time); hovering a bar shows them.
 * - `artifact` references become thumbnails beside their step (images with an http(s)
 *   URL), or labelled links and paths.
 */

export const LEVELS = ["debug", "info", "warning", "error"];

const MAX_LINES = 60; // log lines kept per attempt for the hover card
const MAX_THUMBS = 3; // artifacts shown beside a step; the rest as "+n"
const RENDER_EVERY_MS = 100;
const IMAGE_EXT = /\.(png|jpe?g|gif|webp|svg|avif|bmp)(?:[?#]|$)/i;

/** The level of an event: its own, else what its type implies (contract: log -> info). */
export function levelOf(data) {
  if (LEVELS.includes(data.level)) return data.level;
  if (data.type === "error" || data.type === "failed") return "error";
  if (data.type === "step" && data.outcome === "failed") return "error";
  if (data.type === "step" && data.outcome === "retried") return "warning";
  return "info";
}

/** The one line an event reads as in the log and on the hover card. */
export function eventText(data) {
  if (data.type === "step") {
    const attempt = data.attempt > 1 ? ` · attempt ${data.attempt}` : "";
    if (data.phase === "start") return `start${data.message ? ` · ${data.message}` : ""}${attempt}`;
    const took = data.duration_s != null ? ` after ${fmtSeconds(data.duration_s)}` : "";
    // An end's message is why the attempt failed or was retried (the producer's reason).
    const why = data.error || (data.outcome !== "ok" ? data.message : null);
    return `${data.outcome ?? "end"}${took}${attempt}${why ? ` — ${why}` : ""}`;
  }
  if (data.type === "artifact" && data.artifact) {
    const a = data.artifact;
    return `${a.kind}: ${a.name || a.url || a.path || ""}`;
  }
  let text = data.message ?? "";
  if (data.error && data.error !== text) text = text ? `${text} — ${data.error}` : data.error;
  if (!text && data.percent != null) text = `${data.percent}%`;
  return text;
}

/** Seconds, with tenths under a minute: step durations are often a few seconds. */
export function fmtSeconds(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function clock(ms) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

/** An http(s) URL, or null: nothing else (javascript:, data:, file paths) becomes a link. */
export function safeUrl(url) {
  if (typeof url !== "string") return null;
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/**
 * One artifact, in a box of fixed size: a thumbnail for an image the viewer can load, a
 * labelled link for other URLs, the path as text otherwise. A broken image turns into
 * its label in the same box, so the layout never moves.
 */
export function artifactNode(a) {
  const url = safeUrl(a.url);
  const label = a.name || a.kind;
  const title = [a.kind, a.name, a.url || a.path, a.mime].filter(Boolean).join("\n");
  const isImage = url && (a.mime ? a.mime.startsWith("image/") : a.kind === "screenshot" || IMAGE_EXT.test(url));
  if (isImage) {
    const img = el("img", { src: url, alt: label, loading: "lazy", decoding: "async" });
    const link = el("a", { class: "thumb", href: url, target: "_blank", rel: "noopener noreferrer", title, "data-kind": a.kind }, img);
    img.addEventListener("error", () => {
      link.classList.add("broken");
      img.replaceWith(el("span", { class: "thumb-label", text: label }));
    }, { once: true });
    return link;
  }
  if (url) {
    return el("a", { class: "art-chip", href: url, target: "_blank", rel: "noopener noreferrer", title, "data-kind": a.kind, text: label });
  }
  return el("span", { class: "art-chip path", title, "data-kind": a.kind, text: label });
}

export class Timeline {
  /**
   * @param {HTMLElement} root   the timeline's container
   * @param {{onStep?: (step: number) => void}} opts  onStep: a step's row was clicked
   */
  constructor(root, opts = {}) {
    this.root = root;
    this.opts = opts;
    this.tip = el("div", { class: "tl-tip", id: "tl-tip", role: "tooltip", hidden: true });
    document.body.append(this.tip);
    this.head = el("div", { class: "tl-head" });
    this.rowsEl = el("div", { class: "tl-rows" });
    this.errorEl = el("div", { class: "tl-error", hidden: true });
    this.looseEl = el("div", { class: "tl-loose", hidden: true });
    this.etaEl = el("span", { class: "tl-eta", hidden: true });
    root.replaceChildren(this.head, this.rowsEl, this.looseEl, this.errorEl);
    this.reset();
  }

  reset() {
    /** @type {Map<number, {step: number, name: string|null, attempts: Object[], artifacts: Object[]}>} */
    this.steps = new Map();
    this.loose = []; // artifacts tied to no step
    this.t0 = null;
    this.tEnd = null;
    this.lastT = null;
    this.status = null;
    this.error = null;
    this.lastError = null;
    this.job = null;
    this.explicit = false; // `step` events seen: progress no longer makes bars
    this.rowEls = new Map();
    this.rowsEl.replaceChildren();
    this.looseEl.replaceChildren();
    this.looseEl.hidden = true;
    this.setEta(null);
    this.hideTip();
    this.schedule();
  }

  /** Feed one event (in stream order); `t` is its time in ms. */
  add(data, t) {
    if (!data || typeof data !== "object") return;
    const kind = data.type;
    if (kind === "started") {
      // A new run under the same id: the timeline is of the latest run.
      this.reset();
      this.t0 = t;
      this.status = "running";
    }
    if (this.t0 == null) this.t0 = t;
    this.lastT = this.lastT == null ? t : Math.max(this.lastT, t);
    if (typeof data.job === "string") this.job = data.job;
    const step = Number.isInteger(data.step) ? data.step : null;

    if (kind === "step" && step != null) {
      if (!this.explicit) {
        this.explicit = true;
        for (const [n, s] of this.steps) if (s.inferred) this.dropStep(n);
      }
      this.onStep(data, step, t);
    } else if (kind === "progress" && step != null && !this.explicit) {
      this.onProgress(data, step, t);
    } else if (kind === "artifact" && data.artifact) {
      const a = { ...data.artifact, t };
      const at = step ?? this.openAttempt()?.step ?? null;
      if (at != null) this.entry(at).artifacts.push(a);
      else this.loose.push(a);
    } else if (kind === "failed" || kind === "finished") {
      this.onEnd(data, kind, t);
    }
    if (kind === "error") this.lastError = eventText(data);
    if (kind === "log" || kind === "error") {
      const attempt = step != null ? this.attemptAt(step, t) : this.openAttempt();
      if (attempt) {
        attempt.lines.push({ t, level: levelOf(data), text: eventText(data) });
        if (attempt.lines.length > MAX_LINES) attempt.lines.shift();
      }
    }
    this.schedule();
  }

  entry(step) {
    let s = this.steps.get(step);
    if (!s) {
      s = { step, name: null, attempts: [], artifacts: [], inferred: false };
      this.steps.set(step, s);
    }
    return s;
  }

  dropStep(step) {
    this.steps.delete(step);
    this.rowEls.get(step)?.row.remove();
    this.rowEls.delete(step);
  }

  onStep(data, step, t) {
    const s = this.entry(step);
    if (data.phase === "start") {
      if (data.message) s.name = data.message;
      s.attempts.push({
        step, attempt: data.attempt ?? s.attempts.length + 1, start: t, end: null,
        outcome: null, duration: null, error: null, lines: [],
      });
      return;
    }
    // The end: of the attempt it names, else of the step's open attempt. When the start
    // is gone (trimmed history), the end alone places the bar: start = end - duration.
    let a = s.attempts.findLast((x) => x.attempt === data.attempt && x.end == null)
      ?? s.attempts.findLast((x) => x.end == null);
    if (!a) {
      const d = typeof data.duration_s === "number" ? data.duration_s : 0;
      a = { step, attempt: data.attempt ?? s.attempts.length + 1, start: t - d * 1000, end: null, outcome: null, duration: null, error: null, lines: [] };
      s.attempts.push(a);
    }
    a.end = t;
    a.outcome = data.outcome ?? "ok";
    a.duration = typeof data.duration_s === "number" ? data.duration_s : (t - a.start) / 1000;
    if (a.outcome === "failed") a.error = data.error || data.message || this.lastError;
    else if (a.outcome === "retried") a.error = data.error || data.message || null;
  }

  onProgress(data, step, t) {
    const open = this.openAttempt();
    if (open && open.step === step) {
      if (data.message) this.entry(step).name ??= data.message;
      return; // progress within the step
    }
    if (open) this.close(open, t, "ok");
    const s = this.entry(step);
    s.inferred = true;
    if (data.message) s.name = data.message;
    s.attempts.push({ step, attempt: s.attempts.length + 1, start: t, end: null, outcome: null, duration: null, error: null, lines: [] });
  }

  onEnd(data, kind, t) {
    this.status = kind;
    this.tEnd = t;
    if (kind === "failed") {
      this.error = data.error || data.message || this.lastError || "failed";
      const open = this.openAttempt();
      if (open) {
        this.close(open, t, "failed");
        open.error ??= this.error;
      }
    } else {
      // A step left open at the end: inferred ones ran until the end; explicit ones
      // never reported how they ended.
      for (const s of this.steps.values()) {
        for (const a of s.attempts) if (a.end == null) this.close(a, t, s.inferred ? "ok" : null);
      }
    }
  }

  close(a, t, outcome) {
    a.end = t;
    a.outcome = outcome;
    a.duration = (t - a.start) / 1000;
  }

  /** The attempt open now (the latest started); null when none is. */
  openAttempt() {
    let best = null;
    for (const s of this.steps.values()) {
      for (const a of s.attempts) if (a.end == null && (!best || a.start >= best.start)) best = a;
    }
    return best;
  }

  /** The attempt of `step` that was running at `t` (else its latest). */
  attemptAt(step, t) {
    const s = this.steps.get(step);
    if (!s || !s.attempts.length) return null;
    return s.attempts.findLast((a) => a.start <= t) ?? s.attempts[s.attempts.length - 1];
  }

  /** The step the run failed at: the last attempt that ended `failed`. */
  failing() {
    let best = null;
    for (const s of this.steps.values()) {
      for (const a of s.attempts) if (a.outcome === "failed" && (!best || a.start >= best.start)) best = a;
    }
    return best;
  }

  /**
   * Render on the next frame, at most every RENDER_EVERY_MS: a replay of thousands of
   * events then redraws the timeline a few times a second, not at every frame.
   */
  schedule() {
    if (this.pending) return;
    this.pending = true;
    const wait = Math.max(0, (this.renderedAt ?? 0) + RENDER_EVERY_MS - performance.now());
    setTimeout(() => requestAnimationFrame(() => {
      this.pending = false;
      this.renderedAt = performance.now();
      this.render();
    }), wait);
  }

  /** Called every second by the page: the running bar grows. */
  tick() {
    if (this.status === "running" && this.openAttempt()) this.schedule();
  }

  span() {
    const running = this.status === "running" || (this.status == null && this.openAttempt());
    const end = this.tEnd ?? (running ? Math.max(Date.now(), this.lastT ?? 0) : this.lastT);
    let t1 = end ?? this.t0;
    for (const s of this.steps.values()) for (const a of s.attempts) t1 = Math.max(t1, a.end ?? a.start);
    return { t0: this.t0, t1: Math.max(t1, this.t0 + 1000) };
  }

  render() {
    const hasSteps = this.steps.size > 0;
    this.root.hidden = !hasSteps && !this.loose.length;
    if (this.root.hidden) return;
    const { t0, t1 } = this.span();
    const total = t1 - t0;
    const pct = (ms) => `${Math.max(0, Math.min(100, (100 * ms) / total)).toFixed(3)}%`;
    const now = Date.now();

    const ordered = [...this.steps.values()].sort((a, b) => a.step - b.step);
    const failing = this.failing();
    let prev = null;
    for (const s of ordered) {
      const r = this.rowEls.get(s.step) ?? this.buildRow(s);
      const want = prev ? prev.nextSibling : this.rowsEl.firstChild;
      if (r.row !== want) this.rowsEl.insertBefore(r.row, want);
      prev = r.row;
      const last = s.attempts[s.attempts.length - 1];
      const rowState = !last ? "empty" : last.end == null ? "running" : last.outcome ?? "unknown";
      r.row.dataset.state = rowState;
      r.row.classList.toggle("failing", failing != null && failing.step === s.step);
      r.row.classList.toggle("inferred", s.inferred);
      r.name.textContent = s.name ?? `step ${s.step}`;
      r.label.title = `step ${s.step}${s.name ? `: ${s.name}` : ""}${s.inferred ? "\n(inferred from progress events)" : ""}`;
      r.retries.textContent = s.attempts.length > 1 ? `×${s.attempts.length}` : "";
      r.retries.title = s.attempts.length > 1 ? `${s.attempts.length} attempts` : "";
      for (const [i, a] of s.attempts.entries()) {
        let bar = r.bars[i];
        if (!bar) {
          bar = el("span", { class: "tl-bar" });
          bar.addEventListener("mouseenter", (e) => this.showTip(s, a, e));
          bar.addEventListener("mousemove", (e) => this.moveTip(e));
          bar.addEventListener("mouseleave", () => this.hideTip());
          r.track.append(bar);
          r.bars.push(bar);
        }
        const end = a.end ?? now;
        const outcome = a.end == null ? "running" : a.outcome ?? "unknown";
        bar.dataset.outcome = outcome;
        bar.dataset.attempt = String(a.attempt);
        bar.style.left = pct(a.start - t0);
        // Its own duration when it reported one (the producer's monotonic clock).
        const dur = a.end != null && a.duration != null ? a.duration * 1000 : end - a.start;
        bar.style.width = pct(dur);
        bar.setAttribute("aria-label", `step ${s.step} attempt ${a.attempt}: ${outcome}, ${fmtSeconds(dur / 1000)}`);
      }
      const lastDur = last ? (last.end != null && last.duration != null ? last.duration : ((last.end ?? now) - last.start) / 1000) : null;
      r.dur.textContent = fmtSeconds(lastDur);
      while (r.shown < s.artifacts.length && r.shown < MAX_THUMBS) {
        r.arts.insertBefore(artifactNode(s.artifacts[r.shown]), r.more);
        r.shown += 1;
      }
      const extra = s.artifacts.length - r.shown;
      r.more.hidden = extra <= 0;
      r.more.textContent = extra > 0 ? `+${extra}` : "";
      r.more.title = s.artifacts.slice(MAX_THUMBS).map((a) => a.name || a.url || a.path).join("\n");
    }

    this.root.classList.toggle("has-arts", ordered.some((s) => s.artifacts.length > 0));
    while (this.looseEl.childElementCount < this.loose.length) {
      this.looseEl.append(artifactNode(this.loose[this.looseEl.childElementCount]));
    }
    this.looseEl.hidden = !this.loose.length;

    const steps = ordered.length;
    const bits = [];
    if (this.job) bits.push(el("span", { class: "tl-job", title: "job", text: this.job }));
    bits.push(el("span", { text: `${steps} step${steps === 1 ? "" : "s"}` }));
    const retried = ordered.reduce((n, s) => n + Math.max(0, s.attempts.length - 1), 0);
    if (retried) bits.push(el("span", { class: "tl-retried", text: `${retried} retr${retried === 1 ? "y" : "ies"}` }));
    bits.push(this.etaEl);
    bits.push(el("span", { class: "tl-span", title: "from the first event to the end (or now)", text: fmtSeconds(total / 1000) }));
    this.head.replaceChildren(...bits);

    const errorText = failing?.error ?? (this.status === "failed" ? this.error : null);
    this.errorEl.hidden = !errorText;
    if (errorText) {
      const s = failing ? this.steps.get(failing.step) : null;
      const where = s ? `Failed at step ${s.step}${s.name ? ` · ${s.name}` : ""}` : "Failed";
      this.errorEl.replaceChildren(el("b", { text: `${where}: ` }), errorText);
      this.errorEl.dataset.step = s ? String(s.step) : "";
    }
  }

  buildRow(s) {
    const name = el("span", { class: "tl-name" });
    const retries = el("span", { class: "tl-retries" });
    const label = el("div", { class: "tl-label" }, el("span", { class: "tl-num", text: String(s.step) }), name, retries);
    const track = el("div", { class: "tl-track" });
    const dur = el("div", { class: "tl-dur" });
    const more = el("span", { class: "art-more", hidden: true });
    const arts = el("div", { class: "tl-arts" }, more);
    const row = el("div", { class: "tl-row", "data-step": String(s.step) }, label, track, dur, arts);
    label.addEventListener("click", () => this.opts.onStep?.(s.step));
    const r = { row, label, name, retries, track, dur, arts, more, bars: [], shown: 0 };
    this.rowEls.set(s.step, r);
    return r;
  }

  /** The run's ETA as the page reckons it now, and what it rests on; null hides it. */
  setEta(text, title) {
    this.etaEl.hidden = text == null;
    if (this.etaEl.textContent !== (text ?? "")) this.etaEl.textContent = text ?? "";
    this.etaEl.title = title ?? "";
  }

  showTip(s, a, e) {
    const lines = [];
    const outcome = a.end == null ? "running" : a.outcome ?? "no end reported";
    lines.push(el("div", { class: "tip-title", text: `Step ${s.step}${s.name ? ` · ${s.name}` : ""}` }));
    const attempts = s.attempts.length > 1 ? ` · attempt ${a.attempt} of ${s.attempts.length}` : "";
    lines.push(el("div", { class: "tip-outcome", "data-outcome": outcome, text: `${outcome}${attempts}` }));
    const dur = a.end != null && a.duration != null ? a.duration : (Date.now() - a.start) / 1000;
    lines.push(el("div", { class: "tip-times", text: `${clock(a.start)} → ${a.end != null ? clock(a.end) : "now"} · ${fmtSeconds(dur)}` }));
    if (a.error) lines.push(el("div", { class: "tip-error", text: a.error }));
    if (a.lines.length) {
      const list = el("ul", { class: "tip-lines" });
      for (const l of a.lines.slice(-12)) {
        list.append(el("li", { "data-level": l.level }, el("span", { class: "tip-t", text: clock(l.t).slice(0, 8) }), ` ${l.text}`));
      }
      lines.push(list);
    } else {
      lines.push(el("div", { class: "tip-none", text: "no log lines in this step" }));
    }
    if (s.inferred) lines.push(el("div", { class: "tip-none", text: "inferred from progress events" }));
    this.tip.replaceChildren(...lines);
    this.tip.hidden = false;
    this.moveTip(e);
  }

  moveTip(e) {
    if (this.tip.hidden) return;
    const w = this.tip.offsetWidth;
    const hgt = this.tip.offsetHeight;
    const x = Math.min(e.clientX + 14, window.innerWidth - w - 8);
    const y = e.clientY + 16 + hgt > window.innerHeight ? e.clientY - hgt - 10 : e.clientY + 16;
    this.tip.style.left = `${Math.max(8, x)}px`;
    this.tip.style.top = `${Math.max(8, y)}px`;
  }

  hideTip() {
    this.tip.hidden = true;
  }
}
