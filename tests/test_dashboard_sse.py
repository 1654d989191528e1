"""The dashboard on Server-Sent Events alone: Chromium reaches the relay through a proxy
that refuses WebSocket upgrades (as some corporate proxies do), so rpa-bus.js falls back to
SSE by itself. Real relay, real Redis, the real producer; the page's DOM is compared with
the ids in Redis, through a relay restart and dropped connections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Page

from producer import Producer
from tests._browser import RelayThread, chromium_page
from tests._proxy import FaultProxy
from tests._wait import wait_for
from tests.conftest import UNIT_S
from tests.test_dashboard import WAIT_S, flushed, log_ids, row_state, stream_ids

# The browser's own network messages while WebSocket is refused or the relay is down.
NETWORK = ("Failed to load resource", "WebSocket connection to", "EventSource")


@pytest.fixture
def relay(redis_url: str) -> Iterator[RelayThread]:
    r = RelayThread(redis_url)
    r.start()
    try:
        yield r
    finally:
        r.stop()


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


@pytest.fixture
def producer(redis_url: str, spool_dir: Path) -> Iterator[Producer]:
    p = Producer(redis_url, spool_dir=spool_dir)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        c.close()


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
