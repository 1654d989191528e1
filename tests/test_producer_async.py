"""The asyncio twin on its main paths: a session, an exception, an outage, lost replies,
a bounded close."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from producer import AsyncProducer
from rpa_bus import BusError, InvalidEvent, InvalidSessionId
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._producer_helpers import client, events, index, meta
from tests._proxy import FaultProxy
from tests.conftest import UNIT_S


def messages(evts: list[dict[str, object]]) -> list[object]:
    return [e.get("message") for e in evts if e["type"] == "log"]


async def test_async_session_lands_in_order(redis_url: str, spool_dir: Path) -> None:
    async with AsyncProducer(redis_url, spool_dir=spool_dir) as bus:
        async with bus.session("aq-1", total=2, meta={"k": "v"}) as s:
            s.progress(1, "one")
            s.emit("estimates", {"plans": []})
            s.finish({"ok": True})
        assert await bus.flush(5 * UNIT_S)
    r = client(redis_url)
    got = events(r, "aq-1")
    assert [e["type"] for e in got] == ["started", "progress", "estimates", "finished"]
    assert got[0]["data"] == {"k": "v"}
    assert got[1]["percent"] == 50.0
    assert meta(r, "aq-1")["status"] == "finished"
    assert [e["type"] for e in index(r)] == ["started", "finished"]


async def test_async_exception_emits_failed(redis_url: str, spool_dir: Path) -> None:
    bus = AsyncProducer(redis_url, spool_dir=spool_dir)

    async def job() -> None:
        async with bus.session("aq-2") as s:
            s.log("before")
            raise RuntimeError("tela 3 timed out")

    with pytest.raises(RuntimeError):
        await job()
    assert await bus.flush(5 * UNIT_S)
    got = events(client(redis_url), "aq-2")
    assert got[-1]["type"] == "failed"
    assert got[-1]["error"] == "RuntimeError: tela 3 timed out"
    await bus.close()


async def test_async_bad_input_raises_at_once(redis_url: str, spool_dir: Path) -> None:
    bus = AsyncProducer(redis_url, spool_dir=spool_dir)
    with pytest.raises(InvalidSessionId, match="no/slash"):
        bus.session("no/slash")
    with pytest.raises(InvalidEvent, match="JSON"):
        bus.session("ok").emit("x", {1, 2})
    await bus.close()


def test_async_emit_needs_a_running_loop(redis_url: str, spool_dir: Path) -> None:
    bus = AsyncProducer(redis_url, spool_dir=spool_dir)
    with pytest.raises(BusError, match="running event loop"):
        bus.publish("monitor:h", {"type": "metrics"})


async def test_async_outage_every_event_once_in_order(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    bus = AsyncProducer(redis_server.url, spool_dir=spool_dir)
    async with bus.session("aq-out") as s:
        for i in range(50):
            s.log(f"m{i}")
        assert await bus.flush(5 * UNIT_S)
        await asyncio.to_thread(redis_server.stop)
        for i in range(50, 100):
            s.log(f"m{i}")
        assert await bus.flush(0.3 * UNIT_S) is False
        await asyncio.to_thread(redis_server.start)
        for i in range(100, 150):
            s.log(f"m{i}")
    assert await bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_server.url), "aq-out")) == [f"m{i}" for i in range(150)]
    assert not await asyncio.to_thread(os.listdir, spool_dir)
    await bus.close()


async def test_async_lost_replies_nothing_twice(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    bus = AsyncProducer(proxy.url, spool_dir=spool_dir)
    async with bus.session("aq-lossy") as s:
        s.log("m0")
        assert await bus.flush(5 * UNIT_S)
        for i in range(1, 100):
            if i % 25 == 0:
                proxy.cut_replies(2)
            s.log(f"m{i}")
            if i % 5 == 0:
                await asyncio.sleep(0.005)
    assert await bus.flush(20 * UNIT_S)
    assert proxy.cut_count >= 3
    assert messages(events(client(redis_url), "aq-lossy")) == [f"m{i}" for i in range(100)]
    await bus.close()


async def test_async_close_bounded_when_redis_hangs(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    bus = AsyncProducer(proxy.url, spool_dir=spool_dir, socket_timeout_s=30.0)
    async with bus.session("aq-hung") as s:
        s.log("m0")
        assert await bus.flush(5 * UNIT_S)
        proxy.stall()
        for i in range(1, 10):
            s.log(f"m{i}")
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await bus.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + 0.5 * UNIT_S
    proxy.resume()
    nxt = AsyncProducer(proxy.url, spool_dir=spool_dir)  # the journal's own target
    await nxt.start()
    assert await nxt.flush(10 * UNIT_S)
    assert messages(events(client(redis_url), "aq-hung")) == [f"m{i}" for i in range(10)]
    await nxt.close()
