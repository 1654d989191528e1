"""The whole path, end to end: real Chromium filling the quote site, the producer writing
to a real Redis, a real relay, and WebSocket clients watching ``session:SID``.

The robot runs in a worker thread (Playwright's sync API); the relay and the clients run
on the test's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from producer import Producer
from relay import Relay, RelaySettings
from rpa_bus import Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from tests.conftest import UNIT_S
from tests.test_example_robot import (
    check_failed_session,
    check_finished_session,
    chromium,
    examples,
    stream_events,
)

__all__ = ["chromium", "examples"]  # fixtures, imported for pytest

Event = tuple[str, dict[str, Any]]  # (stream id, envelope)


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    settings = RelaySettings(
        bus=Settings(redis_url=redis_url, connect_timeout_s=0.5, socket_timeout_s=1.0),
        host="127.0.0.1",
        port=0,
        name="example-test",
        block_ms=200,
        ping_interval_s=None,
        ping_timeout_s=None,
    )
    async with Relay(settings) as r:
        yield r


@pytest.fixture
def bus(redis_url: str, spool_dir: Path) -> Iterator[Producer]:
    producer = Producer(redis_url, spool_dir=spool_dir)
    try:
        yield producer
    finally:
        producer.close(timeout_s=2 * UNIT_S)


class Watcher:
    """A WebSocket client of one session, as a dashboard would be: subscribes from ``0``,
    and if its connection drops, reconnects and resumes from the last id it received."""

    def __init__(self, url: str, sid: str) -> None:
        self.url = url
        self.stream = f"session:{sid}"
        self.events: list[Event] = []
        self.connections = 0
        self.unavailable = 0  # `unavailable` errors: the relay saying Redis is down
        self._arrived = asyncio.Event()

    def steps(self) -> list[int]:
        return [
            e["step"]
            for _, e in self.events
            if e["type"] == "step" and e["phase"] == "end" and e["outcome"] == "ok"
        ]

    async def until_step(self, step: int) -> None:
        """Wait until the client has received the ok end of step ``step``."""
        while step not in self.steps():
            self._arrived.clear()
            await self._arrived.wait()

    async def watch(self, timeout_s: float = 60.0) -> list[Event]:
        """Receive until the session's terminal event; return every event received."""
        async with asyncio.timeout(timeout_s * UNIT_S):
            while True:
                try:
                    if await self._connection():
                        return self.events
                except (ConnectionClosed, OSError):
                    await asyncio.sleep(0.1)

    async def _connection(self) -> bool:
        """One connection; True once the terminal event is in."""
        start = self.events[-1][0] if self.events else "0"
        async with connect(self.url, open_timeout=5 * UNIT_S) as ws:
            self.connections += 1
            op = {"op": "subscribe", "stream": self.stream, "from": start}
            await ws.send(orjson.dumps(op).decode())
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame["type"]
                if kind == "event" and frame["stream"] == self.stream:
                    self.events.append((frame["id"], frame["data"]))
                    self._arrived.set()
                    if frame["data"]["type"] in ("finished", "failed"):
                        return True
                elif kind == "error" and frame.get("code") == "unavailable":
                    self.unavailable += 1
                elif kind in ("error", "gap", "reset"):
                    raise AssertionError(f"unexpected frame from the relay: {frame}")
        return False


def stored(redis_url: str, sid: str) -> list[dict[str, Any]]:
    return stream_events(redis_url, sid)


def envelopes(events: list[Event]) -> list[dict[str, Any]]:
    return [e for _, e in events]


def assert_exactly_once_in_order(events: list[Event], redis_url: str, sid: str) -> None:
    """What the client got is the session's stream: every event, in order, once."""
    ids = [i for i, _ in events]
    assert len(set(ids)) == len(ids), "duplicate events"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert envelopes(events) == stored(redis_url, sid)


def run_robots_in_thread(
    robot: ModuleType,
    bus: Producer,
    site_url: str,
    jobs: list[tuple[str, Any]],
    screenshots: Path,
    browser: str,
) -> asyncio.Future[list[Any]]:
    return asyncio.ensure_future(
        asyncio.to_thread(
            robot.run_robots,
            bus,
            site_url=site_url,
            jobs=jobs,
            robots=len(jobs),
            screenshots=screenshots,
            browser_path=browser,
        )
    )


async def test_clients_see_the_robots_live_and_a_late_client_replays_it_all(
    examples: tuple[ModuleType, ModuleType],
    chromium: str,
    relay: Relay,
    bus: Producer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    robot, quote_site = examples
    site = quote_site.start_site(estimate_delay_s=0.5)
    plate = quote_site.FAILING_PLATE
    failing = dataclasses.replace(robot.QuoteRequest.sample(2), plate=plate)
    jobs = [("live-ok", robot.QuoteRequest.sample(1)), ("live-fail", failing)]
    try:
        # Subscribed from 0 before the sessions exist, as a dashboard opened first would be.
        ok, bad = Watcher(relay.url, "live-ok"), Watcher(relay.url, "live-fail")
        watching = asyncio.gather(ok.watch(), bad.watch())
        await asyncio.sleep(0.2)
        outcomes = await run_robots_in_thread(robot, bus, site.url, jobs, tmp_path, chromium)
        await watching
    finally:
        site.stop()
    assert sorted(o.status for o in outcomes) == ["failed", "finished"]

    check_finished_session(envelopes(ok.events))
    assert_exactly_once_in_order(ok.events, redis_url, "live-ok")
    check_failed_session(envelopes(bad.events), plate)
    assert_exactly_once_in_order(bad.events, redis_url, "live-fail")
    assert (ok.connections, bad.connections) == (1, 1)

    # A client that joins after the robot finished gets the whole session, identical.
    for sid, live in (("live-ok", ok), ("live-fail", bad)):
        late = Watcher(relay.url, sid)
        assert await late.watch(timeout_s=10) == live.events


async def test_redis_down_mid_quote_changes_nothing_the_client_sees(
    examples: tuple[ModuleType, ModuleType],
    chromium: str,
    relay: Relay,
    bus: Producer,
    redis_server: EmbeddedRedis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    robot, quote_site = examples
    # A slower site, so the robot is mid-quote for the whole outage.
    site = quote_site.start_site(estimate_delay_s=0.0, latency_s=0.15)
    watcher = Watcher(relay.url, "outage")
    try:
        watching = asyncio.ensure_future(watcher.watch())
        jobs = [("outage", robot.QuoteRequest.sample(3))]
        running = run_robots_in_thread(robot, bus, site.url, jobs, tmp_path, chromium)
        async with asyncio.timeout(30 * UNIT_S):
            await watcher.until_step(2)
        down_at = dt.datetime.now(dt.UTC)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(3 * UNIT_S)
        up_at = dt.datetime.now(dt.UTC)
        await asyncio.to_thread(redis_server.start)
        steps_before_restart = len(watcher.steps())
        (outcome,) = await running
        await watching
    finally:
        site.stop()
    assert outcome.status == "finished"
    # The relay stayed up through the outage and said so; the client never had to reconnect.
    assert watcher.connections == 1
    assert watcher.unavailable >= 1
    assert steps_before_restart < 15  # the client had not seen the end before Redis came back

    check_finished_session(envelopes(watcher.events))
    assert_exactly_once_in_order(watcher.events, redis_url, "outage")
    # The robot did not wait for Redis: it went on through screens while Redis was down.
    during = [
        e
        for _, e in watcher.events
        if e["type"] == "step"
        and down_at <= dt.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) <= up_at
    ]
    assert len(during) >= 2, [e["ts"] for _, e in watcher.events]
