"""The dashboard on Server-Sent Events alone: Chromium reaches the relay through a proxy
that refuses WebSocket upgrades (as some corporate proxies do), so rpa-bus.js falls back to
SSE by itself. Real relay, real Redis, the real producer; the page's DOM is compared with
the ids in Redis, through a relay restart and dropped connections."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from playwright.sync_api import Page

from producer import Producer
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._browser import BusWriter, RelayThread, chromium_page, client, flushed, producer, relay
from tests._proxy import FaultProxy
from tests._wait import wait_for
from tests.conftest import UNIT_S
from tests.test_dashboard import WAIT_S, log_ids, row_state, show_ninety_sessions, stream_ids

# The browser's own network messages while WebSocket is refused or the relay is down.
NETWORK = ("Failed to load resource", "WebSocket connection to", "EventSource")


# Shared fixtures (tests/_browser.py), used by name.
__all__ = ["client", "producer", "relay"]


@pytest.fixture
def proxy(relay: RelayThread) -> Iterator[FaultProxy]:
    p = FaultProxy(relay.port, refuse_upgrades=True)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def page(proxy: FaultProxy) -> Iterator[Page]:
    with chromium_page(f"http://127.0.0.1:{proxy.port}") as (p, console_errors):
        yield p
        assert [e for e in console_errors if not e.startswith(NETWORK)] == []


def transport(page: Page) -> str | None:
    value: str | None = page.evaluate("() => window.rpaDashboard.bus.transport")
    return value


def test_dashboard_works_on_sse_alone_across_restarts_and_drops(
    page: Page, relay: RelayThread, proxy: FaultProxy, producer: Producer, client: redis.Redis
) -> None:
    s = producer.session("quote-sse", total=20)
    other = producer.session("quote-side", total=4)
    s.start()
    other.start()
    for step in range(1, 4):
        s.progress(step, f"Screen {step}")
    other.progress(1, "side 1")
    flushed(producer)
    page.goto("/#session=quote-sse")
    wait_for(lambda: len(log_ids(page)) == 4, timeout_s=WAIT_S, what="the first 4 rows")
    assert log_ids(page) == stream_ids(client, "quote-sse")
    assert proxy.refused_upgrades >= 1  # the WebSocket was tried, and refused
    assert transport(page) == "sse"
    assert page.get_attribute("#conn", "data-status") == "open"
    assert page.text_content("#conn .label") == "live (SSE)"
    side = wait_for(
        lambda: (st := row_state(page, "quote-side")) and st["step"] == "1/4" and st,
        timeout_s=WAIT_S,
        what="the other session's row",
    )
    assert side["status"] == "running"

    # Live: progress moves the row and the log.
    for step in range(4, 6):
        s.progress(step, f"Screen {step}")
    other.progress(2, "side 2")
    flushed(producer)
    wait_for(lambda: len(log_ids(page)) == 6, timeout_s=WAIT_S, what="live rows")
    wait_for(
        lambda: (row_state(page, "quote-side") or {}).get("step") == "2/4",
        timeout_s=WAIT_S,
        what="a live update of the other session",
    )

    # The relay restarts; what is written meanwhile arrives once each.
    relay.stop()
    wait_for(lambda: page.is_visible("#banner"), timeout_s=WAIT_S, what="the reconnecting banner")
    assert page.get_attribute("#conn", "data-status") == "reconnecting"
    for step in range(6, 9):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    time.sleep(0.5 * UNIT_S)
    relay.start()
    wait_for(lambda: page.is_hidden("#banner"), timeout_s=WAIT_S, what="the banner to go away")
    assert transport(page) == "sse"
    s.progress(9, "Screen 9")
    flushed(producer)
    wait_for(lambda: len(log_ids(page)) >= 10, timeout_s=WAIT_S, what="the resumed rows")
    time.sleep(0.3 * UNIT_S)
    assert log_ids(page) == stream_ids(client, "quote-sse")

    # The proxy drops every connection mid-stream: resumed again, no duplicate, no gap.
    for burst in range(3):
        proxy.drop_connections()
        for step in range(10 + 2 * burst, 12 + 2 * burst):
            s.progress(step, f"Screen {step}")
        flushed(producer)
    expected = stream_ids(client, "quote-sse")
    assert len(expected) == 16
    wait_for(lambda: len(log_ids(page)) >= 16, timeout_s=WAIT_S, what="rows after the drops")
    time.sleep(0.3 * UNIT_S)
    assert log_ids(page) == expected
    final = {"status": "running", "width": 75.0, "step": "15/20", "message": "Screen 15"}
    wait_for(lambda: row_state(page, "quote-sse") == final, timeout_s=WAIT_S, what="the row")

    # Selecting another session reopens the response with one more stream: its whole log.
    page.click('#sessions tr[data-sid="quote-side"]')
    side_ids = stream_ids(client, "quote-side")
    wait_for(lambda: log_ids(page) == side_ids, timeout_s=WAIT_S, what="the other log")
    s.finish({"premium": 1.0})
    flushed(producer)
    wait_for(
        lambda: (row_state(page, "quote-sse") or {}).get("status") == "finished",
        timeout_s=WAIT_S,
        what="the first session to finish",
    )
    assert transport(page) == "sse"


# -- rpa-bus.js's fallback, scripted: the test plays the relay on both transports -------

RPA_BUS_SSE_UNIT = """
async () => {
  const m = await import('/rpa-bus.js');
  const out = {};
  class FailingWS {
    static made = 0;
    constructor(url) {
      FailingWS.made += 1;
      this.readyState = 0;
      setTimeout(() => { this.readyState = 3; this.onclose({ code: 1006, reason: '' }); }, 1);
    }
    send() { throw new Error('never open'); }
    close() {}
  }
  class FakeES {
    static all = [];
    constructor(url) {
      this.url = url; this.readyState = 0; this.listeners = {}; this.closed = false;
      FakeES.all.push(this);
    }
    addEventListener(type, fn) { (this.listeners[type] ??= []).push(fn); }
    close() { this.closed = true; this.readyState = 2; }
    fire(type, ev) { for (const fn of this.listeners[type] ?? []) fn(ev); }
    open() { this.readyState = 1; this.fire('open', {}); }
    send(type, msg) { this.fire(type, { data: JSON.stringify(msg) }); }
    fail() { this.fire('error', {}); }
    query() {
      const u = new URL(this.url);
      return { path: u.pathname, streams: u.searchParams.getAll('stream'),
               at: u.searchParams.get('last_event_id'), token: u.searchParams.get('token') };
    }
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (f) => { for (let i = 0; i < 400 && !f(); i++) await sleep(5); return f(); };
  const last = () => FakeES.all[FakeES.all.length - 1];
  const statuses = [];
  const got = [];
  const calls = [];
  const bus = m.connect('ws://relay.test/base/ws', {
    WebSocket: FailingWS, EventSource: FakeES, token: 'T', sseReopenMs: 5,
    backoff: { initialMs: 2, maxMs: 4 },
    onStatus: (s, info) => statuses.push([s, info.transport ?? null]),
  });
  out.sseUrl = bus.sseUrl;
  const a = bus.subscribe('session:a', {
    from: '0',
    onEvent: (id, data, stream) => got.push(`${stream} ${id}`),
    onState: (state, info) => calls.push(['state', info.resumed]),
    onLive: () => calls.push(['live']),
    onGap: (g) => calls.push(['gap', g.from, g.first]),
    onReset: (r) => calls.push(['reset', r.epoch]),
    onError: (e) => calls.push(['error', e.code, e.fatal]),
  });
  await until(() => FakeES.all.length === 1);
  const es1 = FakeES.all[0];
  out.first = es1.query();
  out.wsTriedFirst = FailingWS.made;
  es1.open();
  out.transport = bus.transport;
  const ev = (es, stream, id) => es.send('event', { type: 'event', stream, id, data: {} });
  es1.send('subscribed', { type: 'subscribed', stream: 'session:a', epoch: 'e/1', first: '1-0',
                           last: '2-0', state: {} });
  for (const id of ['1-0', '2-0', '2-0']) ev(es1, 'session:a', id);
  es1.send('live', { type: 'live', stream: 'session:a' });

  // A second stream: the response is reopened once, each stream from where it stands.
  const b = bus.subscribe('session:b', {
    from: '$',
    onEvent: (id, d, s) => got.push(`${s} ${id}`),
    onError: (e) => calls.push(['b-error', e.code, e.fatal]),
  });
  bus.subscribe('session:bad', { from: 'yesterday',
                                 onError: (e) => calls.push(['bad-error', e.code, e.fatal]) });
  await until(() => FakeES.all.length === 2);
  const es2 = last();
  out.reopened = es2.query();
  out.oldClosed = es1.closed;
  ev(es1, 'session:a', '3-0');  // the old response's late event: not delivered
  es2.open();
  ev(es2, 'session:a', '3-0');  // before its `subscribed` on this response: dropped
  es2.send('subscribed', { type: 'subscribed', stream: 'session:a', epoch: 'e/1', first: '1-0',
                           last: '3-0', state: {} });
  es2.send('subscribed', { type: 'subscribed', stream: 'session:b', epoch: 'e/1', first: null,
                           last: '5-0', state: {} });
  ev(es2, 'session:a', '3-0');
  es2.send('gap', { type: 'gap', stream: 'session:a', from: '3-0', first: '7-0' });
  ev(es2, 'session:a', '7-0');
  es2.send('unavailable',
           { type: 'error', code: 'unavailable', stream: 'session:a', message: 'down' });
  es2.send('reset', { type: 'reset', stream: 'session:a', epoch: 'e2' });
  ev(es2, 'session:a', '1-0');

  // Dropped: WebSocket first, then SSE again, from the new positions.
  const wsBefore = FailingWS.made;
  es2.fail();
  await until(() => FakeES.all.length === 3);
  const es3 = last();
  out.wsRetried = FailingWS.made > wsBefore;
  out.resumed = es3.query();
  es3.open();
  // A fatal error for one stream ends it (the relay stopped it): later responses leave
  // it out.
  es3.send('error', { type: 'error', code: 'forbidden', stream: 'session:b', message: 'no' });
  out.bActive = b.active;
  const c = bus.subscribe('session:c', { from: '$' });
  await until(() => FakeES.all.length === 4);
  out.withoutB = last().query();
  // "$" on an empty stream: everything after it is new, so a reopen asks from 0.
  last().open();
  last().send('subscribed', { type: 'subscribed', stream: 'session:c', epoch: '', first: null,
                              last: null, state: {} });
  a.unsubscribe();
  await until(() => FakeES.all.length === 5);
  out.emptyDollar = last().query();
  c.unsubscribe();
  await until(() => last().closed);
  out.emptyClosed = last().closed;
  out.got = got;
  out.calls = calls;
  out.statuses = statuses;
  bus.close();
  await sleep(20);
  out.afterClose = FakeES.all.every((es) => es.closed);

  // transport: "websocket" never falls back.
  const esBefore = FakeES.all.length;
  const wsOnly = m.connect('ws://relay.test/ws', {
    WebSocket: FailingWS, EventSource: FakeES, transport: 'websocket',
    backoff: { initialMs: 2, maxMs: 4 },
  });
  wsOnly.subscribe('session:a', {});
  const wsMade = FailingWS.made;
  await until(() => FailingWS.made >= wsMade + 3);
  out.wsOnlyRetries = FailingWS.made > wsMade;
  out.wsOnlyNoSse = FakeES.all.length === esBefore;
  wsOnly.close();
  return out;
}
"""


def test_rpa_bus_js_falls_back_to_sse_with_the_same_semantics(page: Page) -> None:
    page.goto("/")
    out = page.evaluate(RPA_BUS_SSE_UNIT)
    assert out["sseUrl"] == "http://relay.test/base/v1/sse"
    assert out["wsTriedFirst"] == 1
    assert out["first"] == {
        "path": "/base/v1/sse", "streams": ["session:a"], "at": "session:a=0", "token": "T"
    }  # fmt: skip
    assert out["transport"] == "sse"
    # session:bad's offset would make the relay refuse the whole request: it ends alone.
    assert out["reopened"]["streams"] == ["session:a", "session:b"]
    assert out["reopened"]["at"] == "session:a=2-0@e%2F1;session:b=$"
    assert out["oldClosed"] is True
    assert out["wsRetried"] is True
    # After the reset, session:a starts again at 0 in the new epoch; session:b from the
    # `last` of its `subscribed` ("$" resolved), so nothing written while away is missed.
    assert out["resumed"]["at"] == "session:a=1-0@e2;session:b=5-0@e%2F1"
    assert out["withoutB"]["streams"] == ["session:a", "session:c"]
    assert out["withoutB"]["at"] == "session:a=1-0@e2;session:c=$"
    assert out["emptyDollar"]["at"] == "session:c=0"
    assert out["bActive"] is False
    assert out["emptyClosed"] is True
    assert out["afterClose"] is True
    assert out["wsOnlyRetries"] is True
    assert out["wsOnlyNoSse"] is True
    assert out["got"] == [
        "session:a 1-0", "session:a 2-0", "session:a 3-0", "session:a 7-0", "session:a 1-0"
    ]  # fmt: skip
    assert out["calls"] == [
        ["state", False],
        ["live"],
        ["bad-error", "invalid_offset", True],  # when the response was reopened with it
        ["state", True],
        ["gap", "3-0", "7-0"],
        ["error", "unavailable", False],
        ["reset", "e2"],
        ["b-error", "forbidden", True],
    ]
    assert out["statuses"][0] == ["connecting", None]
    assert ["open", "sse"] in out["statuses"]
    assert out["statuses"][-1] == ["closed", None]


def test_rpa_bus_js_says_why_the_relay_refused_an_sse_request(page: Page) -> None:
    """EventSource does not tell why a request failed; rpa-bus.js asks the relay once and
    passes its JSON error to onError."""
    page.goto("/")
    err = page.evaluate(
        """async () => {
            const m = await import('/rpa-bus.js');
            return await new Promise((resolve) => {
                const bus = m.connect('ws', {
                    transport: 'sse',
                    backoff: { initialMs: 5000, maxMs: 5000 },
                    onError: (e) => { bus.close(); resolve(e); },
                });
                bus.subscribe('no-such-kind:x', {});
            });
        }"""
    )
    assert err["code"] == "invalid_stream"
    assert "no-such-kind:x" in err["message"]


def test_many_sessions_on_sse_stay_within_the_relay_limits(page: Page, client: redis.Redis) -> None:
    """90 sessions: 60 watched live, the rest peeked; on SSE each change of the set reopens
    the one response (coalesced), whose URL then holds ~60 streams' positions."""
    sids = show_ninety_sessions(page, client, tail="-" + "x" * 40)  # long ids: a long URL
    newest = sids[-1]
    assert transport(page) == "sse"
    watched = page.evaluate(
        "() => [...window.rpaDashboard.sessions.values()].filter(s => s.sub === 'watch')"
        ".map(s => s.sid)"
    )
    assert len(watched) == 60
    BusWriter(client).session_event(newest, "progress", step=10, total=10, message="last screen")
    wait_for(
        lambda: (row_state(page, newest) or {}).get("step") == "10/10",
        timeout_s=WAIT_S,
        what="a live update of a watched session",
    )
    assert page.is_hidden("#notice")
    url = page.evaluate("() => window.rpaDashboard.bus._es.url")
    assert url.count("stream=") >= 61
    assert len(url) > 8190  # past aiohttp's default request-line limit, which the relay raises


def test_redis_outage_on_sse_is_shown_and_delivery_resumes(
    page: Page, redis_server: EmbeddedRedis, producer: Producer, client: redis.Redis
) -> None:
    """`unavailable` arrives as its own SSE event and reaches the page's onError, as over
    the WebSocket; the response stays open and delivery resumes without a gap."""
    s = producer.session("quote-out", total=10)
    s.start()
    s.progress(1, "Screen 1")
    flushed(producer)
    page.goto("/#session=quote-out")
    wait_for(lambda: len(log_ids(page)) == 2, timeout_s=WAIT_S, what="the first rows")
    assert transport(page) == "sse"

    redis_server.stop()
    wait_for(lambda: page.is_visible("#banner"), timeout_s=WAIT_S, what="the Redis banner")
    assert "cannot reach Redis" in (page.text_content("#banner") or "")
    redis_server.start()
    wait_for(lambda: page.is_hidden("#banner"), timeout_s=WAIT_S, what="the all-clear")

    s.progress(2, "Screen 2")
    flushed(producer)
    expected = stream_ids(client, "quote-out")
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="delivery to resume")
    wait_for(
        lambda: (row_state(page, "quote-out") or {}).get("step") == "2/10",
        timeout_s=WAIT_S,
        what="the row to show step 2",
    )
    assert transport(page) == "sse"
