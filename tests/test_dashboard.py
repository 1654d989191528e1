"""The dashboard and rpa-bus.js in real headless Chromium, against a real relay and Redis.

Events are written by the real producer (and the real monitor for host samples), the page
is served by the real relay, and assertions read the page's DOM: every event-log row
carries its stream id (``tr[data-id]``), so "no duplicate rows" is a plain comparison with
the ids in Redis.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page

from monitor import Monitor, MonitorSettings
from producer import Producer
from rpa_bus import Keys, Settings, now_ts
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._browser import (
    BusWriter,
    RelayThread,
    archiver,
    chromium_page,
    client,
    flushed,
    producer,
    relay,
    screen_svg,
    serve_files,
)
from tests._wait import wait_for
from tests.conftest import UNIT_S

# Shared fixtures (tests/_browser.py), used by name.
__all__ = ["client", "producer", "relay"]

DOCS = Path(__file__).resolve().parent.parent / "docs"
# In seconds on a normal machine: wait_for scales it by UNIT_S.
WAIT_S = 15.0


@pytest.fixture
def page(relay: RelayThread) -> Iterator[Page]:
    with chromium_page(relay.base_url) as (p, console_errors):
        yield p
        # The browser's own network messages (a refused WebSocket while the relay is down,
        # the optional host listing) are not the page's errors.
        network = ("Failed to load resource", "WebSocket connection to")
        errors = [e for e in console_errors if not e.startswith(network)]
        assert errors == []


def stream_ids(client: redis.Redis, sid: str) -> list[str]:
    entries = client.xrange(Keys().session(sid))
    assert entries is not None
    return [i.decode() if isinstance(i, bytes) else str(i) for i, _ in entries]


def log_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#log tr[data-id]", "rows => rows.map(r => r.dataset.id)"
    )
    return ids


def row_state(page: Page, sid: str) -> dict[str, Any] | None:
    state: dict[str, Any] | None = page.evaluate(
        """sid => {
            const row = document.querySelector(`#sessions tr[data-sid="${sid}"]`);
            if (!row) return null;
            return {
                status: row.dataset.status,
                width: parseFloat(row.querySelector('.fill').style.width) || 0,
                step: row.cells[3].textContent,
                message: row.cells[5].textContent,
            };
        }""",
        sid,
    )
    return state


# -- rpa-bus.js, in the browser ---------------------------------------------------------

RPA_BUS_UNIT = """
async () => {
  const m = await import('/rpa-bus.js');
  const out = {};
  const c = m.compareIds;
  // Ids beyond 2**53: Numbers would call these equal.
  out.big = [
    c('9007199254740993-0', '9007199254740992-0'),
    c('9007199254740992-5', '9007199254740993-0'),
    c('18446744073709551615-18446744073709551615', '18446744073709551615-18446744073709551614'),
    c('10-0', '9-9'), c('1', '1-0'), c('007-1', '7-1'), c('5-10', '5-9'),
  ];
  out.isId = [m.isId('1-0'), m.isId('12'), m.isId('$'), m.isId('1-'), m.isId('a-1'), m.isId(7)];
  const at = m.idAtTime(1000);
  out.idAtTime = m.compareIds(at, '999-99') > 0 && m.compareIds(at, '1000-0') < 0;
  const delays = [];
  for (let a = 0; a < 40; a++) delays.push(m.backoffDelay(a));
  out.delays = delays;

  // A scripted WebSocket: the test plays the relay.
  class FakeWS {
    static all = [];
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; FakeWS.all.push(this); }
    send(t) { this.sent.push(JSON.parse(t)); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen(); }
    recv(msg) { this.onmessage({ data: JSON.stringify(msg) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose({ code, reason: '' }); }
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (f) => { for (let i = 0; i < 200 && !f(); i++) await sleep(5); return f(); };
  const statuses = [];
  const got = [];
  const calls = [];
  const bus = m.connect('ws://relay.test/ws', {
    WebSocket: FakeWS, token: 'T', backoff: { initialMs: 2, maxMs: 4 },
    onStatus: (s) => statuses.push(s),
  });
  const sub = bus.subscribe('session:a', {
    from: '0',
    onEvent: (id, data) => got.push(id),
    onState: (state, info) => calls.push(['state', state.status, info.resumed]),
    onLive: () => calls.push(['live']),
    onGap: (g) => calls.push(['gap', g.from, g.first]),
    onReset: (r) => calls.push(['reset', r.epoch]),
    onError: (e) => calls.push(['error', e.code, e.fatal]),
  });
  const ws1 = FakeWS.all[0];
  ws1.open();
  await until(() => ws1.sent.length >= 2);
  out.firstFrames = ws1.sent.slice();
  const ev = (ws, id) => ws.recv({ type: 'event', stream: 'session:a', id, data: {} });
  ws1.recv({ type: 'subscribed', stream: 'session:a', epoch: 'e1', first: '1-0', last: '2-0',
             state: { status: 'running' } });
  for (const id of ['1-0', '2-0', '2-0', '1-5']) ev(ws1, id);
  ws1.recv({ type: 'live', stream: 'session:a' });
  ws1.recv({ type: 'event', stream: 'session:other', id: '9-0', data: {} });
  out.afterFirst = got.slice();

  // The relay goes away: reconnect, resume after 2-0 with the epoch seen.
  ws1.drop(1012);
  await until(() => FakeWS.all.length === 2);
  const ws2 = FakeWS.all[1];
  ws2.open();
  await until(() => ws2.sent.length >= 2);
  out.resumeFrames = ws2.sent.slice();
  // Frames of a subscription before its `subscribed` belong to an earlier one: dropped.
  ev(ws2, '3-0');
  ws2.recv({ type: 'subscribed', stream: 'session:a', epoch: 'e1', first: '1-0', last: '4-0',
             state: {} });
  for (const id of ['2-0', '3-0', '4-0']) ev(ws2, id);
  ws2.recv({ type: 'gap', stream: 'session:a', from: '4-0', first: '7-0' });
  ws2.recv({ type: 'reset', stream: 'session:a', epoch: 'e2' });
  ev(ws2, '1-0');
  out.afterResume = got.slice();
  out.lastId = sub.lastId;
  out.epoch = sub.epoch;

  // A fatal error ends a subscription; it is not resubscribed on reconnection.
  bus.subscribe('session:b', {});
  // "$": the resume point is the `last` of the subscribed frame.
  bus.subscribe('session:c', { from: '$' });
  await until(() => ws2.sent.length >= 4);
  ws2.recv({ type: 'error', stream: 'session:b', code: 'forbidden', message: 'no' });
  ws2.recv({ type: 'subscribed', stream: 'session:c', epoch: 'x', first: null, last: '9-0',
             state: {} });
  sub.unsubscribe();
  sub.unsubscribe();
  await until(() => ws2.sent.some((f) => f.op === 'unsubscribe'));
  out.unsubscribes = ws2.sent.filter((f) => f.op === 'unsubscribe').length;
  ws2.drop(1006);
  await until(() => FakeWS.all.length === 3);
  const ws3 = FakeWS.all[2];
  ws3.open();
  await until(() => ws3.sent.length >= 2);
  await sleep(20);
  out.thirdFrames = ws3.sent.slice();
  out.calls = calls;
  bus.close();
  out.statuses = statuses;
  out.afterClose = FakeWS.all.length;
  await sleep(30);
  out.noReconnectAfterClose = FakeWS.all.length === out.afterClose;

  // Pacing: a burst of subscriptions is sent at the configured rate, never refused.
  FakeWS.all.length = 0;
  const paced = m.connect('ws://relay.test/ws',
                          { WebSocket: FakeWS, opsBurst: 3, opsPerSecond: 100 });
  const ws4 = FakeWS.all[0];
  ws4.open();
  for (let i = 0; i < 10; i++) paced.subscribe(`session:p${i}`, {});
  out.pacedAtOnce = ws4.sent.length;
  await until(() => ws4.sent.length === 10);
  out.pacedLater = ws4.sent.length;
  paced.close();

  // 1013 (too slow: resume) asks for a prompt reconnect, like 1001/1012, not the backoff.
  FakeWS.all.length = 0;
  const slow = m.connect('ws://relay.test/ws',
                         { WebSocket: FakeWS, backoff: { initialMs: 60000, maxMs: 60000 } });
  FakeWS.all[0].open();
  FakeWS.all[0].drop(1013);
  out.promptAfter1013 = await until(() => FakeWS.all.length === 2);
  slow.close();
  return out;
}
"""


def test_rpa_bus_js_ids_resume_and_pacing(page: Page) -> None:
    page.goto("/healthz")
    out = page.evaluate(RPA_BUS_UNIT)
    assert out["big"] == [1, -1, 1, 1, 0, 0, 1]
    assert out["isId"] == [True, True, False, False, False, False]
    assert out["idAtTime"] is True
    # Capped and jittered: within [cap/2, cap], never above the 15 s ceiling.
    for attempt, delay in enumerate(out["delays"]):
        cap = min(15000, 500 * 2**attempt)
        assert cap / 2 - 1 <= delay <= cap + 1, (attempt, delay)

    assert out["firstFrames"] == [
        {"op": "auth", "token": "T"},
        {"op": "subscribe", "stream": "session:a", "from": "0"},
    ]
    # Duplicates and older ids are never delivered; other streams' frames are not ours.
    assert out["afterFirst"] == ["1-0", "2-0"]
    assert out["resumeFrames"] == [
        {"op": "auth", "token": "T"},
        {"op": "subscribe", "stream": "session:a", "from": "2-0", "epoch": "e1"},
    ]
    # After the reset the stream starts over, so 1-0 of the new stream is delivered.
    assert out["afterResume"] == ["1-0", "2-0", "3-0", "4-0", "1-0"]
    assert out["lastId"] == "1-0"
    assert out["epoch"] == "e2"
    assert out["calls"] == [
        ["state", "running", False],
        ["live"],
        ["state", None, True],
        ["gap", "4-0", "7-0"],
        ["reset", "e2"],
    ]
    assert out["unsubscribes"] == 1
    # Only session:c comes back (b died of `forbidden`, a was unsubscribed), from its `last`.
    assert out["thirdFrames"] == [
        {"op": "auth", "token": "T"},
        {"op": "subscribe", "stream": "session:c", "from": "9-0", "epoch": "x"},
    ]
    assert out["statuses"] == [
        "connecting",
        "open",
        "reconnecting",
        "open",
        "reconnecting",
        "open",
        "closed",
    ]
    assert out["noReconnectAfterClose"] is True
    assert out["pacedAtOnce"] == 3
    assert out["pacedLater"] == 10
    assert out["promptAfter1013"] is True


# -- the dashboard ------------------------------------------------------------------------


def test_sessions_list_shows_running_session_progress(page: Page, producer: Producer) -> None:
    s = producer.session("quote-1", total=10)
    s.start()
    s.progress(1, "Screen 1: login")
    flushed(producer)
    page.goto("/")
    first = wait_for(
        lambda: (st := row_state(page, "quote-1")) and st["step"] == "1/10" and st,
        timeout_s=WAIT_S,
        what="quote-1 in the sessions list at step 1",
    )
    assert first["status"] == "running"
    assert first["message"] == "Screen 1: login"
    assert 9 <= first["width"] <= 11

    for step in (2, 3, 4):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    later = wait_for(
        lambda: (st := row_state(page, "quote-1")) and st["step"] == "4/10" and st,
        timeout_s=WAIT_S,
        what="the progress bar to advance to step 4",
    )
    assert later["width"] > first["width"]
    assert later["message"] == "Screen 4"

    s.finish({"premium": 1234.5})
    flushed(producer)
    done = wait_for(
        lambda: (st := row_state(page, "quote-1")) and st["status"] == "finished" and st,
        timeout_s=WAIT_S,
        what="quote-1 to finish",
    )
    assert done["width"] == 100
    assert page.text_content('.count[data-status="finished"] b') == "1"


def test_late_joiner_sees_state_of_trimmed_session(
    page: Page, producer: Producer, client: redis.Redis
) -> None:
    s = producer.session("quote-old", total=5)
    s.start()
    for step in range(1, 4):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    # Retention trimmed the early history away: the folded state still tells the story.
    client.xtrim(Keys().session("quote-old"), maxlen=0)
    page.goto("/")
    st = wait_for(
        lambda: (st := row_state(page, "quote-old")) and st["step"] == "3/5" and st,
        timeout_s=WAIT_S,
        what="the trimmed session's state",
    )
    assert st["status"] == "running"
    assert st["message"] == "Screen 3"


def test_reload_shows_the_same_history(page: Page, producer: Producer, client: redis.Redis) -> None:
    s = producer.session("quote-2", total=15, meta={"insurer": "Atlas"})
    s.start()
    for step in range(1, 6):
        s.progress(step, f"Screen {step}")
    s.emit("estimates", {"plans": [{"name": "basic", "premium": 980.0}]})
    s.log("captcha solved")
    s.error("insurer slow to answer")
    flushed(producer)
    expected = stream_ids(client, "quote-2")
    assert len(expected) == 9

    page.goto("/#session=quote-2")
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="the event log")
    wait_for(lambda: "live" in (page.text_content("#log-sub") or ""), timeout_s=WAIT_S, what="live")
    first_view = page.eval_on_selector_all("#log tr[data-id]", "rows => rows.map(r => r.innerText)")

    page.reload()
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="the log after reload")
    second_view = page.eval_on_selector_all(
        "#log tr[data-id]", "rows => rows.map(r => r.innerText)"
    )
    assert second_view == first_view
    assert page.text_content("#log-title") == "quote-2"
    wait_for(
        lambda: page.get_attribute('#sessions tr[data-sid="quote-2"]', "class") == "selected",
        timeout_s=WAIT_S,
        what="the selected row",
    )


def test_relay_restart_reconnects_and_resumes_without_duplicates(
    page: Page, relay: RelayThread, producer: Producer, client: redis.Redis
) -> None:
    s = producer.session("quote-3", total=20)
    s.start()
    for step in range(1, 4):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    page.goto("/#session=quote-3")
    wait_for(lambda: len(log_ids(page)) == 4, timeout_s=WAIT_S, what="the first 4 rows")
    assert page.is_hidden("#banner")

    relay.stop()
    wait_for(lambda: page.is_visible("#banner"), timeout_s=WAIT_S, what="the reconnecting banner")
    assert "reconnecting" in (page.text_content("#banner") or "")
    assert page.get_attribute("#conn", "data-status") == "reconnecting"

    # Events written while the relay is down arrive after it returns, once each.
    for step in range(4, 7):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    time.sleep(0.5 * UNIT_S)
    relay.start()
    wait_for(lambda: page.is_hidden("#banner"), timeout_s=WAIT_S, what="the banner to go away")
    assert page.get_attribute("#conn", "data-status") == "open"

    for step in range(7, 9):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    expected = stream_ids(client, "quote-3")
    assert len(expected) == 9
    wait_for(lambda: len(log_ids(page)) >= 9, timeout_s=WAIT_S, what="the resumed rows")
    time.sleep(0.3 * UNIT_S)
    assert log_ids(page) == expected
    final = {"status": "running", "width": 40.0, "step": "8/20", "message": "Screen 8"}
    wait_for(lambda: row_state(page, "quote-3") == final, timeout_s=WAIT_S, what="the row")


def test_host_charts_read_real_monitor_samples(
    page: Page, redis_url: str, relay: RelayThread
) -> None:
    settings = MonitorSettings(host_name="worker-7", bus=Settings(redis_url=redis_url))
    with Monitor(settings) as mon:
        mon.tick()
        mon.tick()  # the second has rates: the difference with the first
        assert mon.flush(5 * UNIT_S)
    # No ?hosts= in the URL: the page finds the host in the relay's /healthz listing.
    page.goto("/")
    host = '.host[data-host="worker-7"]'

    def shown() -> list[str]:
        texts: list[str] = page.eval_on_selector_all(
            f"{host} .chart-value", "els => els.map(e => e.innerText)"
        )
        return texts

    wait_for(
        lambda: len(shown()) == 3 and "—" not in shown()[0],
        timeout_s=WAIT_S,
        what="the CPU value from the monitor's sample",
    )
    values = shown()
    assert values[0].endswith("%")
    assert values[1].endswith("%")
    assert "B/s" in values[2]
    assert "sample" in (page.text_content(f"{host} .host-meta") or "")


def test_alerts_fire_and_resolve(page: Page, client: redis.Redis, producer: Producer) -> None:
    w = BusWriter(client)
    s = producer.session("quote-9", total=15)
    s.start()
    s.progress(2, "Screen 2")
    flushed(producer)
    page.goto("/?hosts=worker-1")
    wait_for(lambda: row_state(page, "quote-9"), timeout_s=WAIT_S, what="quote-9")
    alert = {"metric": "stalled", "value": 312.0, "threshold": 300.0, "severity": "warning"}
    w.monitor_event(
        "worker-1",
        "alert",
        message="stalled",
        data={**alert, "state": "firing", "session": "quote-9"},
    )
    item = '#alerts li[data-key="worker-1|stalled|quote-9"]'
    wait_for(
        lambda: page.get_attribute(item, "data-state") == "firing", timeout_s=WAIT_S, what="firing"
    )
    wait_for(
        lambda: (row_state(page, "quote-9") or {}).get("status") == "stalled",
        timeout_s=WAIT_S,
        what="the session marked stalled",
    )
    wait_for(
        lambda: page.text_content('.count[data-status="firing"] b') == "1",
        timeout_s=WAIT_S,
        what="1 firing",
    )
    w.monitor_event(
        "worker-1",
        "alert",
        message="ok",
        data={**alert, "value": 0.5, "state": "resolved", "session": "quote-9"},
    )
    wait_for(
        lambda: page.get_attribute(item, "data-state") == "resolved",
        timeout_s=WAIT_S,
        what="resolved",
    )
    wait_for(
        lambda: (
            page.text_content('.count[data-status="firing"] b') == "0"
            and (row_state(page, "quote-9") or {}).get("status") == "running"
        ),
        timeout_s=WAIT_S,
        what="none firing and quote-9 running again",
    )


# -- the screenshot in docs/ --------------------------------------------------------------

_SCREENS = [
    "Insurer portal login", "Policyholder", "Driver details", "Vehicle details",
    "Premium estimates", "Coverages", "Roadside assistance", "Deductible",
    "Risk questionnaire", "Overnight address", "Payment method", "Review",
    "Terms acceptance", "Proposal issued", "Policy PDF",
]  # fmt: skip
_FAILURE = "insurer site returned HTTP 502 on the quote calculation"


def _shot(base_url: str, name: str) -> dict[str, str]:
    url = f"{base_url}/{name}.svg"
    return {"kind": "screenshot", "url": url, "name": f"{name}.png", "mime": "image/svg+xml"}


def _write_shots(folder: Path) -> None:
    """The robot's screenshots of the scene, as a screenshot store would serve them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "step-5.svg").write_text(screen_svg("Premium estimates"))
    (folder / "step-14.svg").write_text(screen_svg("Proposal issued"))
    (folder / "failed.svg").write_text(screen_svg("Risk questionnaire", error="502 Bad Gateway"))


def _busy_scene(redis_url: str, client: redis.Redis, shots_url: str) -> None:
    """Sessions in every state, an hour of host samples and a few alerts. The runs are
    written as the producer's steps write them (issue 16): one job, uneven step times, a
    retry, log levels and screenshots (``shots_url``: where ``_write_shots`` put them)."""
    w = BusWriter(client)
    # How long each screen takes, relative to the run's pace: uneven, as real portals are.
    weights = [0.6, 1.0, 1.3, 0.8, 2.1, 1.0, 0.5, 0.7, 1.7, 0.9, 0.6, 1.2, 0.4, 1.5, 0.7]
    lines = {
        2: ("debug", "cookie banner dismissed"), 5: ("info", "3 plans offered"),
        8: ("warning", "insurer answered slowly (6.1 s)"), 12: ("info", "premium 1,234.50"),
    }  # fmt: skip
    now_s = time.time()
    events: list[tuple[float, str, str, dict[str, Any]]] = []

    def emit(t: float, sid: str, kind: str, **fields: Any) -> None:
        events.append((t, sid, kind, fields))

    def run(
        sid: str,
        ago_s: float,
        steps: int,
        end: str | None = None,
        pace_s: float = 4.2,
        retry_at: int | None = None,
        job: str = "quote-robot",
        total: int = 15,
    ) -> None:
        """One robot run that started ``ago_s`` seconds ago, ``pace_s`` per screen on
        average; with ``end`` None its last step is still running."""
        t = now_s - ago_s
        emit(t, sid, "started", total=total, job=job,
            data={"insurer": "Atlas Seguros"},
        )  # fmt: skip
        for step in range(1, steps + 1):
            name = _SCREENS[step - 1]
            took = pace_s * weights[step - 1]
            attempts = 2 if step == retry_at else 1
            for attempt in range(1, attempts + 1):
                eta = round(pace_s * sum(weights[step - 1 : total]), 1)
                emit(t, sid, "step", step=step, total=total, phase="start",
                    attempt=attempt, message=name, eta_s=eta, eta_runs=12,
                    percent=round((step - 1) * 100 / total, 1),  # the steps done before it
                )  # fmt: skip
                last = attempt == attempts
                if step in lines and last:
                    level, text = lines[step]
                    at = t + 0.3 * took
                    emit(at, sid, "log", step=step, level=level, message=text)
                if step == 5 and last:
                    plans = {"plans": [{"name": "basic", "premium": 1180.4}]}
                    at = t + 0.5 * took
                    emit(at, sid, "estimates", step=5, data=plans)
                if step in (5, 14) and last:
                    at = t + 0.6 * took
                    shot = _shot(shots_url, f"step-{step}")
                    emit(at, sid, "artifact", step=step, artifact=shot)
                if not last:
                    spent = round(0.6 * took, 3)
                    at = t + 0.4 * spent
                    text = "captcha shown: trying again"
                    emit(at, sid, "log", step=step, level="warning", message=text)
                    emit(t + spent, sid, "step", step=step, total=total, phase="end",
                        attempt=attempt, outcome="retried", duration_s=spent, message="captcha",
                    )  # fmt: skip
                    t += spent + 0.1
                    continue
                if step == steps and end is None:
                    return  # still on this screen
                failing = step == steps and end == "failed"
                if failing:
                    at = t + 0.8 * took
                    shot = _shot(shots_url, "failed")
                    emit(at, sid, "artifact", step=step, artifact=shot)
                    at = t + 0.9 * took
                    text = "HTTP 502 from /quote/calculate"
                    emit(at, sid, "error", step=step, message=text, error="HTTP 502")
                emit(t + took, sid, "step", step=step, total=total, phase="end",
                    attempt=attempt, outcome="failed" if failing else "ok",
                    duration_s=round(took, 3), message=_FAILURE if failing else None,
                )  # fmt: skip
                t += took + 0.05
        if end == "finished":
            emit(t, sid, "finished", step=total, total=total, data={"premium": 1234.5})
        elif end == "failed":
            emit(t + 0.1, sid, "failed", message=_FAILURE, error=_FAILURE)

    run("quote-2409", 1500, 15, "finished", pace_s=4.6)
    run("quote-2410", 1320, 15, "finished", pace_s=3.9)
    run("quote-2411", 1100, 6, "failed", pace_s=5.1)
    run("quote-2412", 960, 15, "finished", pace_s=4.4, retry_at=3)
    run("quote-2413", 840, 15, "finished", pace_s=3.6)
    run("quote-2414", 700, 15, "finished", pace_s=4.9)
    run("quote-2415", 520, 15, "finished", pace_s=4.1)
    run("quote-2416", 380, 15, "finished", pace_s=4.0)
    run("quote-2417", 250, 15, "finished", pace_s=3.8)
    run("quote-2418", 170, 9, "failed", pace_s=4.7, retry_at=5)
    run("quote-2419", 140, 15, "finished", pace_s=4.2)
    run("quote-2420", 19, 4, pace_s=4.3)
    run("quote-2421", 48, 11, pace_s=4.1)
    run("quote-2422", 31, 7, pace_s=4.2)
    run("quote-2423", 190, 2, pace_s=5.0)
    for i, ago in enumerate((1400, 900, 450)):
        run(f"renewal-{880 + i}", ago, 6, "finished", pace_s=2.5 + i, job="renewal-robot", total=6)
    # Written in time order, with ids of their time: the archive measures runs by ids.
    events.sort(key=lambda e: e[0])
    for t, sid, kind, fields in events:
        w.session_event(sid, kind, ts=now_ts(t), at_ms=int(t * 1000), **fields)

    # Host samples: the shape comes from one real monitor sample, the values vary.
    settings = MonitorSettings(host_name="rpa-worker-01", bus=Settings(redis_url=redis_url))
    with Monitor(settings) as mon:
        sample = mon.tick()[0]["data"]
        mon.flush()
    client.delete(Keys().monitor("rpa-worker-01"))
    now_ms = int(time.time() * 1000)
    for i in range(720, 0, -1):
        t = now_ms - i * 5000
        k = i / 720
        cpu = 38 + 22 * math.sin(k * 9) + 12 * math.sin(k * 47) ** 2 + (30 if 90 < i < 160 else 0)
        data = {
            **sample,
            "cpu": {**sample.get("cpu", {}), "percent": round(min(99.0, max(2.0, cpu)), 1)},
            "memory": {**sample.get("memory", {}), "percent": round(61 + 6 * math.sin(k * 4), 1)},
            "net": {"total": {
                "rx_bytes_s": round(420_000 + 260_000 * math.sin(k * 31) ** 2, 1),
                "tx_bytes_s": round(95_000 + 40_000 * math.cos(k * 23) ** 2, 1),
            }},
        }  # fmt: skip
        w.monitor_event("rpa-worker-01", "metrics", at_ms=t, data=data)
        if i == 160:
            w.monitor_event("rpa-worker-01", "alert", at_ms=t + 1, message="cpu 91.5 > 80",
                            data={"metric": "cpu", "value": 91.5, "threshold": 80.0,
                                  "severity": "warning", "state": "firing"})  # fmt: skip
        if i == 90:
            w.monitor_event("rpa-worker-01", "alert", at_ms=t + 1, message="cpu back to 52",
                            data={"metric": "cpu", "value": 52.0, "threshold": 80.0,
                                  "severity": "warning", "state": "resolved"})  # fmt: skip
    stalled = {"metric": "stalled", "value": 184.0, "threshold": 120.0, "severity": "warning"}
    w.monitor_event("rpa-worker-01", "alert", message="stalled quote-2423",
                    data={**stalled, "state": "firing", "session": "quote-2423"})  # fmt: skip
    w.monitor_event("rpa-worker-01", "alert", message="disk /var 91.2 > 90",
                    data={"metric": "disk", "value": 91.2, "threshold": 90.0,
                          "severity": "critical", "state": "firing", "mount": "/var"})  # fmt: skip


def test_screenshot_of_a_busy_dashboard(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """Render a busy scene, archived by the real archiver, and screenshot it: the live
    view, the Jobs tab and the History tab. The pictures in docs/ come from this test:
    RPA_BUS_UPDATE_SCREENSHOT=1 writes docs/dashboard*.png; otherwise they go to a temp
    folder, so a test run leaves the work tree as it was."""
    archive_url = f"sqlite://{tmp_path / 'archive.db'}"
    _write_shots(tmp_path / "shots")
    relay = RelayThread(redis_url, archive_url=archive_url)
    with (
        serve_files(tmp_path / "shots") as shots_url,
        archiver(redis_url, archive_url, tmp_path),
    ):
        _busy_scene(redis_url, client, shots_url)
        relay.start()
        try:
            wait_for(
                lambda: _archived_runs(relay.base_url) == 14,
                timeout_s=2 * WAIT_S,
                what="the scene's 14 ended runs in the archive",
            )
            with chromium_page(relay.base_url) as (page, errors):
                page.emulate_media(color_scheme="dark")
                page.goto("/?hosts=rpa-worker-01#session=quote-2418")
                _screenshot_when_settled(page, client, tmp_path)
                _screenshot_jobs_and_history(page, tmp_path)
                network = ("Failed to load resource", "WebSocket connection to")
                assert [e for e in errors if not e.startswith(network)] == []
        finally:
            relay.stop()


def _archived_runs(base_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/jobs", timeout=5) as reply:
            return sum(j["runs"] for j in json.loads(reply.read())["jobs"])
    except urllib.error.HTTPError:
        return 0  # the archive's schema is not there yet


def _screenshot_jobs_and_history(page: Page, tmp_path: Path) -> None:
    target = DOCS if os.environ.get("RPA_BUS_UPDATE_SCREENSHOT") == "1" else tmp_path
    # The Jobs tab beside a running session, whose ETA rests on the job's past runs.
    page.evaluate("location.hash = '#session=quote-2421'")
    page.click('.tab[data-tab="jobs"]')
    wait_for(
        lambda: page.eval_on_selector_all("#jobs tr", "rows => rows.length") == 2,
        timeout_s=WAIT_S,
        what="two jobs' summaries",
    )
    wait_for(
        lambda: "12 past runs" in (page.text_content("#timeline .tl-eta") or ""),
        timeout_s=WAIT_S,
        what="the ETA and its basis",
    )
    page.mouse.move(10, 10)
    page.screenshot(path=str(target / "dashboard-jobs.png"))
    # The History tab: the failed runs, one of them open.
    page.click('.tab[data-tab="history"]')
    page.select_option("#history-status", "failed")
    wait_for(
        lambda: (
            page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.sid)")
            == ["quote-2418", "quote-2411"]
        ),
        timeout_s=WAIT_S,
        what="the two failed runs",
    )
    page.click('#history tr[data-sid="quote-2411"]')
    wait_for(
        lambda: page.eval_on_selector_all("#timeline .tl-row", "rows => rows.length") == 6,
        timeout_s=WAIT_S,
        what="quote-2411's timeline",
    )
    page.hover('.tl-row[data-step="6"] .tl-bar')
    page.screenshot(path=str(target / "dashboard-history.png"))
    for name in ("dashboard-jobs.png", "dashboard-history.png"):
        picture = png_facts(page, (target / name).read_bytes())
        assert picture["colors"] > 200, (name, picture)


def _screenshot_when_settled(page: Page, client: redis.Redis, tmp_path: Path) -> None:
    expected = stream_ids(client, "quote-2418")
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="quote-2418's log")
    wait_for(
        lambda: page.evaluate(
            """() => document.querySelectorAll('#timeline .tl-row').length === 9 &&
                [...document.querySelectorAll('#timeline .thumb img')]
                  .every((i) => i.complete && i.naturalWidth > 0)"""
        ),
        timeout_s=WAIT_S,
        what="the timeline's 9 steps and its screenshots",
    )
    wait_for(
        lambda: page.eval_on_selector_all("#sessions tr", "rows => rows.length") == 18,
        timeout_s=WAIT_S,
        what="18 sessions",
    )
    wait_for(
        lambda: (row_state(page, "quote-2418") or {}).get("message", "").startswith("insurer"),
        timeout_s=WAIT_S,
        what="the failed session's error",
    )
    wait_for(
        lambda: page.eval_on_selector_all("#alerts li.alert", "els => els.length") == 3,
        timeout_s=WAIT_S,
        what="3 alerts",
    )
    wait_for(
        lambda: "12 past runs" not in (page.text_content("#timeline .tl-head") or ""),
        timeout_s=WAIT_S,
        what="no ETA for the failed run",
    )
    page.mouse.move(10, 10)
    wait_for(
        lambda: (
            page.evaluate(
                "document.getAnimations().filter((a) => a instanceof CSSTransition).length"
            )
            == 0
        ),
        timeout_s=WAIT_S,
        what="the bars' transitions to finish",
    )
    target = DOCS if os.environ.get("RPA_BUS_UPDATE_SCREENSHOT") == "1" else tmp_path
    page.screenshot(path=str(target / "dashboard.png"))
    picture = png_facts(page, (target / "dashboard.png").read_bytes())
    assert (picture["width"], picture["height"]) == (1440, 900)  # the viewport
    # A rendered page, not a blank or a single-colour error screen: many colours, and the
    # background covers well under all of it.
    assert picture["colors"] > 200, picture
    assert picture["commonest"] < 0.9, picture


def png_facts(page: Page, png: bytes) -> dict[str, float]:
    """Width, height, distinct colours and the commonest colour's share of a PNG, decoded
    by the browser itself (createImageBitmap: no image library in the tests)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    facts: dict[str, float] = page.evaluate(
        """async (b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
          const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
          const ctx = canvas.getContext('2d');
          ctx.drawImage(bitmap, 0, 0);
          const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
          const px = new Uint32Array(image.data.buffer);
          const counts = new Map();
          for (const p of px) counts.set(p, (counts.get(p) || 0) + 1);
          return { width: bitmap.width, height: bitmap.height, colors: counts.size,
                   commonest: Math.max(...counts.values()) / px.length };
        }""",
        base64.b64encode(png).decode(),
    )
    return facts


# -- auth ---------------------------------------------------------------------------------


def test_token_in_the_page_url_reaches_the_relay(redis_url: str, producer: Producer) -> None:
    from relay import mint_token

    secret = "test-secret-0123456789abcdef0123456789"
    s = producer.session("quote-auth", total=4)
    s.start()
    s.progress(1, "Screen 1")
    flushed(producer)
    r = RelayThread(redis_url, secret=secret)
    r.start()
    try:
        with chromium_page(r.base_url) as (page, _):
            page.goto("/")
            wait_for(lambda: page.is_visible("#notice"), timeout_s=WAIT_S, what="the auth notice")
            assert "?token=" in (page.text_content("#notice") or "")
            assert row_state(page, "quote-auth") is None

            token = mint_token(secret, ["sessions", "session:*", "monitor:*"], ttl_s=600)
            page.goto(f"/?token={token}")
            st = wait_for(
                lambda: (st := row_state(page, "quote-auth")) and st["step"] == "1/4" and st,
                timeout_s=WAIT_S,
                what="the session, read with the token",
            )
            assert st["status"] == "running"
            assert page.is_hidden("#notice")
    finally:
        r.stop()


def test_redis_outage_is_shown_and_delivery_resumes(
    page: Page, redis_server: EmbeddedRedis, producer: Producer, client: redis.Redis
) -> None:
    s = producer.session("quote-5", total=10)
    s.start()
    s.progress(1, "Screen 1")
    flushed(producer)
    page.goto("/#session=quote-5")
    wait_for(lambda: len(log_ids(page)) == 2, timeout_s=WAIT_S, what="the first rows")

    redis_server.stop()
    wait_for(lambda: page.is_visible("#banner"), timeout_s=WAIT_S, what="the Redis banner")
    assert "cannot reach Redis" in (page.text_content("#banner") or "")
    redis_server.start()
    wait_for(lambda: page.is_hidden("#banner"), timeout_s=WAIT_S, what="the all-clear")

    s.progress(2, "Screen 2")
    flushed(producer)
    expected = stream_ids(client, "quote-5")
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="delivery to resume")
    wait_for(
        lambda: (row_state(page, "quote-5") or {}).get("step") == "2/10",
        timeout_s=WAIT_S,
        what="the row to show step 2",
    )


def test_recreated_stream_resets_the_log(
    page: Page,
    relay: RelayThread,
    producer: Producer,
    client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    s = producer.session("quote-6", total=5)
    s.start()
    for step in (1, 2):
        s.progress(step, f"Screen {step}")
    flushed(producer)
    page.goto("/#session=quote-6")
    wait_for(lambda: len(log_ids(page)) == 3, timeout_s=WAIT_S, what="the first run")

    # While the page is away, the session's keys go (expiry) and a new run recreates them
    # with a new epoch: resuming after the old last id would be wrong.
    relay.stop()
    keys = Keys()
    client.delete(keys.session("quote-6"), keys.meta("quote-6"))
    spool = tmp_path / "spool-2"
    spool.mkdir()
    again = Producer(redis_url, spool_dir=spool)
    try:
        s2 = again.session("quote-6", total=5)
        s2.start()
        s2.progress(1, "Screen 1, second run")
        flushed(again)
    finally:
        again.close()
    expected = stream_ids(client, "quote-6")
    relay.start()
    wait_for(lambda: log_ids(page) == expected, timeout_s=WAIT_S, what="the log of the new run")
    assert "stream recreated" in (page.text_content("#log") or "")


def show_ninety_sessions(page: Page, client: redis.Redis, *, tail: str = "") -> list[str]:
    """90 running sessions (ids ``bulk-NNN`` + ``tail``) on the page, the newest one's state
    shown; their ids, oldest first."""
    w = BusWriter(client)
    sids = [f"bulk-{i:03d}{tail}" for i in range(90)]
    for i, sid in enumerate(sids):
        w.session_event(sid, "started", total=10)
        w.session_event(sid, "progress", step=1 + i % 9, total=10, message=f"job {i}")
    page.goto("/?hosts=bulk-host")
    wait_for(
        lambda: page.eval_on_selector_all("#sessions tr", "rows => rows.length") == 90,
        timeout_s=WAIT_S,
        what="90 rows",
    )
    wait_for(
        lambda: (row_state(page, sids[-1]) or {}).get("step") == "9/10",
        timeout_s=WAIT_S,
        what="the newest session's state",
    )
    return sids


def test_many_running_sessions_stay_within_the_relay_limits(
    page: Page, client: redis.Redis
) -> None:
    # The newest rows, at the top, are watched live; every row on screen has its state.
    sids = show_ninety_sessions(page, client)
    newest = sids[-1]
    watched = page.evaluate(
        "() => [...window.rpaDashboard.sessions.values()].filter(s => s.sub === 'watch')"
        ".map(s => s.sid)"
    )
    assert len(watched) == 60
    assert newest in watched
    BusWriter(client).session_event(newest, "progress", step=10, total=10, message="last screen")
    wait_for(
        lambda: (row_state(page, newest) or {}).get("step") == "10/10",
        timeout_s=WAIT_S,
        what="a live update of a watched session",
    )
    assert page.is_hidden("#notice")
