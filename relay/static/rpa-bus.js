/**
 * rpa-bus.js — browser client for the rpa-bus relay (WebSocket protocol of DESIGN.md).
 *
 * Dependency-free ES module. One WebSocket per bus, shared by all its subscriptions;
 * reconnects with capped, jittered exponential backoff and resubscribes every stream from
 * the last id it delivered (and the epoch it saw), so a caller sees each event once, in
 * order, across relay restarts.
 *
 * When a WebSocket cannot connect (a proxy that strips upgrades), the bus falls back to
 * Server-Sent Events (`/v1/sse` beside `/ws`) with the same semantics and callbacks: one
 * EventSource over all subscriptions, opened with each stream's position
 * (`?last_event_id=`). An SSE response's set of streams is fixed, so subscribing or
 * unsubscribing reopens it (coalesced) from each stream's current position. Every
 * reconnection tries the WebSocket first again. `transport: "websocket"|"sse"` forces one.
 *
 *     import { connect } from "/rpa-bus.js";
 *     const bus = connect("/ws", { token, onStatus: (s) => console.log(s) });
 *     const sub = bus.subscribe("session:quote-123", {
 *       from: "0",
 *       onEvent: (id, data) => console.log(id, data.type, data.percent),
 *       onState: (state) => console.log(state.status),
 *       onLive: () => console.log("caught up"),
 *     });
 *     sub.unsubscribe();
 *
 * @module rpa-bus
 */

/**
 * Close codes after which the relay asks us to come back soon: going away (1001), service
 * restart (1012), try again later (1013: we fell too far behind; resuming catches up).
 */
const PROMPT_RECONNECT_CODES = new Set([1001, 1012, 1013]);

/** Relay error codes that end a subscription: retrying the same frame cannot succeed. */
const FATAL_SUBSCRIPTION_ERRORS = new Set([
  "bad_request",
  "invalid_stream",
  "invalid_offset",
  "forbidden",
  "too_many_subscriptions",
]);

const ID_RE = /^(\d{1,20})(?:-(\d{1,20}))?$/;

/**
 * Split a stream id into its two decimal parts, without losing precision.
 * @param {string} id  "ms-seq" (or a bare "ms", meaning "ms-0")
 * @returns {[string, string]} the parts with leading zeros stripped
 */
function splitId(id) {
  const m = ID_RE.exec(String(id));
  if (!m) throw new TypeError(`invalid stream id ${JSON.stringify(id)}`);
  const strip = (s) => s.replace(/^0+(?=\d)/, "");
  return [strip(m[1]), strip(m[2] ?? "0")];
}

/** Compare two non-negative decimal integers given as digit strings (no leading zeros). */
function compareDigits(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Compare two Redis stream ids in stream order. Parts may exceed 2^53, so they are
 * compared as digit strings (by length, then lexicographically), never as Numbers.
 * @param {string} a
 * @param {string} b
 * @returns {-1|0|1}
 */
export function compareIds(a, b) {
  const [am, as] = splitId(a);
  const [bm, bs] = splitId(b);
  return compareDigits(am, bm) || compareDigits(as, bs);
}

/**
 * Whether `id` is a well-formed stream id ("ms-seq" or a bare "ms").
 * @param {unknown} id
 * @returns {boolean}
 */
export function isId(id) {
  return typeof id === "string" && ID_RE.test(id);
}

/**
 * The stream id just below the first entry written at `ms` (ms since the Unix epoch):
 * subscribing `from` it replays everything written since that moment.
 * @param {number} ms
 * @returns {string}
 */
export function idAtTime(ms) {
  return `${Math.max(0, Math.floor(ms) - 1)}-18446744073709551615`;
}

/**
 * The time (ms since the Unix epoch) a stream id was assigned at.
 * @param {string} id
 * @returns {number}
 */
export function idTime(id) {
  return Number(splitId(id)[0]);
}

/**
 * Next reconnect delay: exponential in the attempt number, capped, with jitter drawn from
 * [delay/2, delay] so a fleet of pages does not reconnect in lockstep after a restart.
 * @param {number} attempt  0 for the first retry
 * @param {{initialMs?: number, maxMs?: number, factor?: number}} [opts]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const { initialMs = 500, maxMs = 15000, factor = 2 } = opts;
  const capped = Math.min(maxMs, initialMs * factor ** Math.min(attempt, 30));
  return Math.round(capped / 2 + (random() * capped) / 2);
}

/**
 * The relay's WebSocket URL for a page it serves: same host, `/ws`, ws: or wss:.
 * Relative URLs ("/ws") resolve against the page.
 * @param {string} [url]
 * @returns {string}
 */
export function resolveUrl(url) {
  const base = globalThis.location ? globalThis.location.href : "http://localhost/";
  const u = new URL(url || "/ws", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

/**
 * The relay's SSE URL beside a WebSocket URL: http(s), `/ws` replaced by `/v1/sse` (a
 * relay mounted under a path keeps it).
 * @param {string} wsUrl  as returned by {@link resolveUrl}
 * @returns {string}
 */
export function sseUrl(wsUrl) {
  const u = new URL(wsUrl);
  if (u.protocol === "ws:") u.protocol = "http:";
  else if (u.protocol === "wss:") u.protocol = "https:";
  u.pathname = `${u.pathname.replace(/\/ws\/?$/, "").replace(/\/$/, "")}/v1/sse`;
  u.search = "";
  u.hash = "";
  return u.toString();
}

const OFFSET_RE = /^(0|\$|\d{1,20}(?:-\d{1,20})?)$/;

/**
 * @typedef {Object} SubscribeOptions
 * @property {string} [from]  exclusive start: "0" (default) the whole retained history,
 *   "$" only new events, or an id to resume after.
 * @property {(id: string, data: Object, stream: string) => void} [onEvent]
 *   each event once, in id order (history first, then live).
 * @property {(state: Object, info: SubscribedInfo) => void} [onState]
 *   on every (re)subscription: the stream's folded state (sessions only; `{}` otherwise).
 * @property {() => void} [onLive]  replay has caught up; what follows is live.
 * @property {(info: {from: string, first: string}) => void} [onGap]
 *   events after `from` were trimmed away; delivery goes on from `first`.
 * @property {(info: {epoch: string}) => void} [onReset]
 *   the stream was recreated; delivery restarts at its beginning (forget earlier events).
 * @property {(err: {code: string, message: string, fatal: boolean}) => void} [onError]
 *   an error from the relay about this subscription; `fatal` ones end it.
 */

/**
 * @typedef {Object} SubscribedInfo
 * @property {string|null} epoch
 * @property {string|null} first  first retained id
 * @property {string|null} last   last id at subscription time
 * @property {boolean} resumed    true when this is a resubscription after a reconnect
 */

/** One stream's subscription on a bus. Obtain it from {@link Bus#subscribe}. */
export class Subscription {
  /**
   * @param {Bus} bus
   * @param {string} stream
   * @param {SubscribeOptions} opts
   */
  constructor(bus, stream, opts) {
    /** @type {string} */
    this.stream = stream;
    /** @type {string|null} last id delivered to onEvent; resubscriptions resume after it */
    this.lastId = null;
    /** @type {string|null} epoch the relay announced; sent back on resubscription */
    this.epoch = null;
    /** @type {boolean} true once replay has caught up on the current connection */
    this.live = false;
    /** @type {boolean} false after unsubscribe() or a fatal error */
    this.active = true;
    this._bus = bus;
    this._opts = opts;
    this._from = opts.from ?? "0";
    this._subscribedOnce = false;
    this._resetEpoch = undefined;
    // True from sending a subscribe frame until its `subscribed` answer: events before it
    // belong to an earlier subscription of the same stream and are dropped.
    this._awaiting = true;
  }

  /** Stop receiving events for this stream. Idempotent. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this._bus._drop(this, true);
  }

  /**
   * This stream's part of an SSE position, `STREAM=LAST[@EPOCH]`: after the last id
   * delivered (in the epoch seen), else from the subscription's own start. @private
   */
  _position() {
    const at = this.lastId ?? this._from;
    return this.epoch ? `${this.stream}=${at}@${encodeURIComponent(this.epoch)}` : `${this.stream}=${at}`;
  }

  /** The subscribe frame that resumes exactly after what was delivered. @private */
  _frame() {
    const frame = { op: "subscribe", stream: this.stream, from: this.lastId ?? this._from };
    if (this.epoch != null) frame.epoch = this.epoch;
    return frame;
  }

  /** @private */
  _call(name, ...args) {
    const fn = this._opts[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      // A page's handler bug must not break delivery to other subscriptions.
      console.error(`rpa-bus: ${name} handler for ${this.stream} failed`, err);
    }
  }

  /** The stream was recreated: forget the position, replay starts at its beginning. @private */
  _reset(epoch) {
    this.epoch = epoch;
    this._resetEpoch = epoch;
    this.lastId = null;
    this._from = "0";
    this._call("onReset", { epoch });
  }

  /** Handle one relay frame addressed to this stream. @private */
  _handle(msg) {
    switch (msg.type) {
      case "subscribed": {
        this._awaiting = false;
        this.live = false;
        if (this.epoch != null && msg.epoch != null && msg.epoch !== this.epoch) {
          // The stream was recreated while we were away. The relay says `reset` too; this
          // covers the order where `subscribed` comes first.
          this._reset(msg.epoch);
        }
        this.epoch = msg.epoch ?? this.epoch;
        // Subscribed from "$": the resume point is what existed at subscription time, so
        // events written while we are disconnected later (or while an SSE response is
        // reopened) are not skipped; an empty stream then means "everything after", "0".
        if (this.lastId == null && this._from === "$") {
          if (isId(msg.last)) this._from = msg.last;
          else if (msg.last === null) this._from = "0";
        }
        const resumed = this._subscribedOnce;
        this._subscribedOnce = true;
        this._call("onState", msg.state ?? {}, {
          epoch: msg.epoch ?? null,
          first: msg.first ?? null,
          last: msg.last ?? null,
          resumed,
        });
        break;
      }
      case "event": {
        if (this._awaiting || !isId(msg.id)) return;
        // Never deliver an id twice, whatever the relay sends after a reconnect.
        if (this.lastId != null && compareIds(msg.id, this.lastId) <= 0) return;
        this.lastId = msg.id;
        this._call("onEvent", msg.id, msg.data, this.stream);
        break;
      }
      case "live":
        if (this._awaiting) return;
        this.live = true;
        this._call("onLive");
        break;
      case "gap":
        this._call("onGap", { from: msg.from ?? null, first: msg.first ?? null });
        break;
      case "reset":
        this.live = false;
        if (msg.epoch == null || msg.epoch !== this._resetEpoch) this._reset(msg.epoch ?? null);
        break;
      case "error": {
        const fatal = FATAL_SUBSCRIPTION_ERRORS.has(msg.code);
        if (fatal) {
          this.active = false;
          this._bus._drop(this, false);
        }
        this._call("onError", { code: msg.code, message: msg.message ?? "", fatal });
        break;
      }
      default:
        break;
    }
  }
}

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [token]  JWT sent with an `auth` frame on every connection.
 * @property {(status: "connecting"|"open"|"reconnecting"|"closed", info: Object) => void} [onStatus]
 * @property {(err: {code: string, message: string}) => void} [onError]
 *   relay errors not tied to a subscription.
 * @property {{initialMs?: number, maxMs?: number, factor?: number}} [backoff]
 * @property {number} [pingIntervalMs]  keepalive ping period (default 15000); a connection
 *   that hears nothing for three periods is dropped and reconnected.
 * @property {number} [connectTimeoutMs]  give up on a connection attempt after this long
 *   (default 10000) and retry.
 * @property {number} [opsPerSecond]  sustained rate of frames sent (default 10), with
 * @property {number} [opsBurst]  a burst allowance (default 30): below the relay's own
 *   per-connection limit, so subscribing to many streams is paced, never refused.
 * @property {typeof WebSocket} [WebSocket]  constructor to use (tests, Node).
 * @property {"auto"|"websocket"|"sse"} [transport]  "auto" (default): WebSocket, falling
 *   back to SSE when a WebSocket cannot connect; or only the one named.
 * @property {string} [sseUrl]  the relay's SSE URL (default: `/v1/sse` beside the
 *   WebSocket URL, see {@link sseUrl}).
 * @property {typeof EventSource} [EventSource]  constructor to use (tests).
 * @property {number} [sseReopenMs]  subscription changes within this many ms (default 100)
 *   reopen the SSE response once.
 */

/** A connection to one relay, shared by all its subscriptions. Create it with {@link connect}. */
export class Bus {
  /**
   * @param {string} url
   * @param {ConnectOptions} [opts]
   */
  constructor(url, opts = {}) {
    /** @type {string} the WebSocket URL */
    this.url = resolveUrl(url);
    /** @type {string} the SSE URL, for the fallback */
    this.sseUrl = opts.sseUrl ? new URL(opts.sseUrl, globalThis.location?.href).toString()
      : sseUrl(this.url);
    /** @type {"connecting"|"open"|"reconnecting"|"closed"|null} */
    this.status = null;
    /** @type {"websocket"|"sse"|null} the transport of the open connection */
    this.transport = null;
    // The transport of the current (or last) attempt, and the next one to try.
    this._kind = null;
    this._next = "websocket";
    /** @type {EventSource|null} */
    this._es = null;
    this._sseIdle = false; // on SSE with no subscription: opened by the first one
    this._reopenTimer = null;
    this._opts = opts;
    this._token = opts.token ?? null;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._pingTimer = null;
    this._lastHeard = 0;
    this._closed = false;
    /** @type {{frame: Object, sub: Subscription|null}[]} frames waiting for the rate limit */
    this._queue = [];
    this._tokens = opts.opsBurst ?? 30;
    this._tokensAt = Date.now();
    this._pumpTimer = null;
    this._onOnline = () => {
      if (this.status === "reconnecting" && this._timer != null) {
        clearTimeout(this._timer);
        this._timer = null;
        this._open();
      }
    };
    globalThis.addEventListener?.("online", this._onOnline);
    this._setStatus("connecting", { attempt: 0 });
    this._open();
  }

  /**
   * Subscribe to a stream (`sessions`, `session:SID`, `monitor:HOST`). One subscription per
   * stream per bus: subscribing again to a stream replaces the earlier subscription.
   * @param {string} stream
   * @param {SubscribeOptions} [opts]
   * @returns {Subscription}
   */
  subscribe(stream, opts = {}) {
    if (this._closed) throw new Error("rpa-bus: subscribe() on a closed bus");
    const old = this._subs.get(stream);
    if (old) {
      // The relay restarts a stream subscribed again from the new offset: no unsubscribe.
      old.active = false;
      this._subs.delete(stream);
      this._unqueue(old);
    }
    const sub = new Subscription(this, stream, opts);
    this._subs.set(stream, sub);
    this._send(sub._frame(), sub);
    return sub;
  }

  /**
   * Replace the token (e.g. before it expires): sent at once and on every reconnection.
   * @param {string|null} token
   */
  setToken(token) {
    this._token = token;
    if (token) this._send({ op: "auth", token });
  }

  /** Close the connection for good; no reconnection. Idempotent. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._pumpTimer);
    clearInterval(this._pingTimer);
    this._queue = [];
    globalThis.removeEventListener?.("online", this._onOnline);
    for (const sub of this._subs.values()) sub.active = false;
    this._subs.clear();
    if (this._ws) this._ws.close(1000, "client closed");
    clearTimeout(this._reopenTimer);
    if (this._es) this._es.close();
    this._es = null;
    this.transport = null;
    this._setStatus("closed", {});
  }

  /** @private */
  _drop(sub, tellRelay) {
    if (this._subs.get(sub.stream) !== sub) return;
    this._subs.delete(sub.stream);
    // Never sent: nothing to undo on the relay.
    if (this._unqueue(sub)) return;
    if (tellRelay) this._send({ op: "unsubscribe", stream: sub.stream });
  }

  /** Remove a subscription's unsent subscribe frame; true if there was one. @private */
  _unqueue(sub) {
    const i = this._queue.findIndex((q) => q.sub === sub);
    if (i < 0) return false;
    this._queue.splice(i, 1);
    return true;
  }

  /**
   * Queue a frame for the open connection; frames are sent in order, paced by a token
   * bucket. Frames queued while disconnected are dropped: on (re)connection the auth and
   * subscribe frames are rebuilt from the subscriptions' current positions.
   * @private
   */
  _send(frame, sub = null) {
    if (this._kind === "sse") {
      // The response's streams and token are in its URL: a change reopens it.
      if (sub) sub._awaiting = true;
      if (frame.op !== "ping") this._sseChanged();
      return;
    }
    if (!this._ws || this._ws.readyState !== 1) return;
    if (sub) sub._awaiting = true;
    this._queue.push({ frame, sub });
    this._pump();
  }

  /** @private */
  _pump() {
    const rate = (this._opts.opsPerSecond ?? 10) / 1000;
    const burst = this._opts.opsBurst ?? 30;
    const now = Date.now();
    this._tokens = Math.min(burst, this._tokens + (now - this._tokensAt) * rate);
    this._tokensAt = now;
    while (this._queue.length && this._tokens >= 1) {
      if (!this._ws || this._ws.readyState !== 1) {
        this._queue = [];
        return;
      }
      const { frame } = this._queue.shift();
      this._tokens -= 1;
      this._ws.send(JSON.stringify(frame));
    }
    if (this._queue.length && this._pumpTimer == null) {
      this._pumpTimer = setTimeout(() => {
        this._pumpTimer = null;
        this._pump();
      }, Math.ceil((1 - this._tokens) / rate));
    }
  }

  /** @private */
  _setStatus(status, info) {
    const changed = status !== this.status;
    this.status = status;
    if (changed || status === "reconnecting") {
      const fn = this._opts.onStatus;
      if (typeof fn === "function") {
        try {
          fn(status, info);
        } catch (err) {
          console.error("rpa-bus: onStatus handler failed", err);
        }
      }
    }
  }

  /** @private */
  _open() {
    if (this._closed) return;
    const mode = this._opts.transport ?? "auto";
    if (mode === "sse" || (mode === "auto" && this._next === "sse")) this._openSse();
    else this._openWs();
  }

  /** A WebSocket that never opened: try SSE at once (auto), else back off. @private */
  _wsFailed(info) {
    if (this._closed) return;
    if ((this._opts.transport ?? "auto") === "auto" && this._sseSupported()) {
      this._next = "sse";
      this._openSse();
      return;
    }
    this._scheduleReconnect(info);
  }

  /** @private */
  _sseSupported() {
    return typeof (this._opts.EventSource ?? globalThis.EventSource) === "function";
  }

  /** @private */
  _openWs() {
    this._kind = "websocket";
    const WS = this._opts.WebSocket ?? globalThis.WebSocket;
    let ws;
    let opened = false;
    try {
      ws = new WS(this.url);
    } catch (err) {
      this._wsFailed({ error: String(err), transport: "websocket" });
      return;
    }
    this._ws = ws;
    // A handshake that neither opens nor fails (a black-holed address) is given up on.
    const connectTimer = setTimeout(() => {
      if (this._ws === ws && ws.readyState !== 1) {
        ws.onclose({ code: 4001, reason: "connect timeout" });
        ws.close();
      }
    }, this._opts.connectTimeoutMs ?? 10000);
    ws.onopen = () => {
      clearTimeout(connectTimer);
      if (this._ws !== ws) return;
      opened = true;
      this.transport = "websocket";
      this._lastHeard = Date.now();
      this._queue = [];
      if (this._token) this._send({ op: "auth", token: this._token });
      for (const sub of this._subs.values()) this._send(sub._frame(), sub);
      this._startPing(ws);
      this._setStatus("open", { attempt: this._attempt, transport: "websocket" });
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this._dispatch(msg);
    };
    ws.onclose = (ev) => {
      clearTimeout(connectTimer);
      if (this._ws !== ws) return;
      this._ws = null;
      this._queue = [];
      clearInterval(this._pingTimer);
      for (const sub of this._subs.values()) sub.live = false;
      this.transport = null;
      const info = { code: ev.code, reason: ev.reason, transport: "websocket" };
      if (opened) this._scheduleReconnect(info);
      else this._wsFailed(info);
    };
    // Errors are always followed by close; nothing to do here.
    ws.onerror = () => {};
  }

  /** The SSE request for the current subscriptions: streams, positions, token. @private */
  _sseRequest(subs) {
    const u = new URL(this.sseUrl);
    for (const sub of subs) u.searchParams.append("stream", sub.stream);
    u.searchParams.set("last_event_id", subs.map((sub) => sub._position()).join(";"));
    if (this._token) u.searchParams.set("token", this._token);
    return u.toString();
  }

  /** Open one EventSource over every subscription, each from its own position. @private */
  _openSse() {
    if (this._closed) return;
    this._kind = "sse";
    clearTimeout(this._reopenTimer);
    this._reopenTimer = null;
    if (this._es) this._es.close();
    this._es = null;
    const ES = this._opts.EventSource ?? globalThis.EventSource;
    const subs = [];
    for (const sub of [...this._subs.values()]) {
      if (sub.lastId == null && !OFFSET_RE.test(String(sub._from))) {
        // The relay would refuse the whole request: end this one subscription instead.
        sub.active = false;
        this._subs.delete(sub.stream);
        const message = `'from' must be an id, '0' or '$', got ${JSON.stringify(sub._from)}`;
        queueMicrotask(() => sub._call("onError", { code: "invalid_offset", message, fatal: true }));
      } else {
        subs.push(sub);
      }
    }
    this._sseIdle = subs.length === 0;
    if (this._sseIdle) return; // no stream to ask for: the first subscribe opens it
    const url = this._sseRequest(subs);
    let es;
    try {
      es = new ES(url);
    } catch (err) {
      this._sseFailed(null, { error: String(err) });
      return;
    }
    this._es = es;
    let opened = false;
    // Events before a stream's `subscribed` on this response belong to an earlier one.
    for (const sub of subs) sub._awaiting = true;
    const connectTimer = setTimeout(() => {
      if (this._es === es && !opened) {
        es.close();
        this._es = null;
        this._sseFailed(url, { reason: "connect timeout" });
      }
    }, this._opts.connectTimeoutMs ?? 10000);
    const onMessage = (ev) => {
      if (this._es !== es) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this._dispatch(msg);
    };
    es.addEventListener("open", () => {
      if (this._es !== es) return;
      clearTimeout(connectTimer);
      opened = true;
      this.transport = "sse";
      this._setStatus("open", { attempt: this._attempt, transport: "sse" });
    });
    for (const type of ["subscribed", "event", "live", "gap", "reset", "unavailable"]) {
      es.addEventListener(type, onMessage);
    }
    es.addEventListener("error", (ev) => {
      if (this._es !== es) return;
      // The relay's `error` messages carry data; EventSource's own errors do not.
      if (typeof ev.data === "string") {
        onMessage(ev);
        return;
      }
      // Dropped or refused: reconnect ourselves (EventSource would not change the URL).
      clearTimeout(connectTimer);
      es.close();
      this._es = null;
      for (const sub of this._subs.values()) sub.live = false;
      if (opened) {
        this.transport = null;
        this._scheduleReconnect({ reason: "SSE connection lost", transport: "sse" });
      } else {
        this._sseFailed(url, { reason: "SSE connection failed" });
      }
    });
  }

  /** The SSE request failed before it opened: learn why if the relay said, back off. @private */
  _sseFailed(url, info) {
    this.transport = null;
    if (url) this._explain(url);
    this._scheduleReconnect({ ...info, transport: "sse" });
  }

  /** Ask the relay once why `url` was refused (EventSource does not tell). @private */
  _explain(url) {
    if (typeof fetch !== "function" || typeof AbortController !== "function") return;
    const ctl = new AbortController();
    fetch(url, { signal: ctl.signal, cache: "no-store" })
      .then(async (res) => {
        if (res.ok) return ctl.abort();
        if (!(res.headers.get("content-type") || "").includes("json")) return undefined;
        const body = await res.json();
        const err = body && body.error;
        if (err && typeof err.code === "string" && !this._closed) this._busError(err);
        return undefined;
      })
      .catch(() => {});
  }

  /** The subscriptions changed while on SSE: reopen the response once, soon. @private */
  _sseChanged() {
    if (this._closed || this._kind !== "sse") return;
    if (!this._es && !this._sseIdle) return; // between attempts: the next takes the set
    if (this._timer != null || this._reopenTimer != null) return;
    this._reopenTimer = setTimeout(() => {
      this._reopenTimer = null;
      if (!this._closed && this._kind === "sse" && this._timer == null) this._openSse();
    }, this._opts.sseReopenMs ?? 100);
  }

  /** @private */
  _dispatch(msg) {
    if (!msg || typeof msg !== "object") return;
    // The relay works: reset the backoff once it has answered with something useful.
    if (msg.type === "subscribed" || msg.type === "pong" || msg.type === "event") {
      this._attempt = 0;
    }
    if (typeof msg.stream === "string") {
      const sub = this._subs.get(msg.stream);
      if (sub) sub._handle(msg);
      else if (msg.type === "error") this._busError(msg);
      return;
    }
    if (msg.type === "error") this._busError(msg);
  }

  /** @private */
  _busError(msg) {
    const fn = this._opts.onError;
    if (typeof fn === "function") fn({ code: msg.code, message: msg.message ?? "" });
    else console.warn(`rpa-bus: relay error ${msg.code}: ${msg.message}`);
  }

  /** @private */
  _startPing(ws) {
    const period = this._opts.pingIntervalMs ?? 15000;
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      if (this._ws !== ws) return;
      if (Date.now() - this._lastHeard > 3 * period + 1000) {
        // Half-open connection (sleeping laptop, dead proxy): drop it and resume elsewhere.
        ws.onclose({ code: 4000, reason: "relay silent" });
        ws.close();
        return;
      }
      this._send({ op: "ping" });
    }, period);
  }

  /** @private */
  _scheduleReconnect(info) {
    if (this._closed) return;
    this._next = "websocket"; // each reconnection tries the WebSocket first again
    clearTimeout(this._reopenTimer);
    this._reopenTimer = null;
    const prompt = PROMPT_RECONNECT_CODES.has(info.code) && this._attempt === 0;
    const delayMs = prompt
      ? Math.round(Math.random() * 250)
      : backoffDelay(this._attempt, this._opts.backoff);
    this._attempt += 1;
    this._setStatus("reconnecting", { ...info, attempt: this._attempt, delayMs });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delayMs);
  }
}

/**
 * Connect to a relay. The connection opens at once and stays open (reconnecting as
 * needed) until `bus.close()`.
 * @param {string} [url]  WebSocket URL; default: the `/ws` of the relay serving this page.
 * @param {ConnectOptions} [opts]
 * @returns {Bus}
 */
export function connect(url, opts = {}) {
  return new Bus(url, opts);
}
