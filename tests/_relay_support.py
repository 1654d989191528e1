"""Helpers for the relay tests: a direct stream writer, a relay fixture, a test client.

The writer uses plain redis-py (XADD + HSET on the meta hash), so the relay tests do not
depend on the producer library.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

import rpa_bus
from relay import Relay, RelaySettings
from rpa_bus import Keys, Settings, StreamRef, parse_stream_name
from tests.conftest import UNIT_S

KEYS = Keys()


class Writer:
    """Writes events the way the producer does (envelope in field ``e``, meta hash)."""

    def __init__(self, url: str) -> None:
        self.r = aioredis.Redis.from_url(url, socket_timeout=5 * UNIT_S, protocol=2)

    def key(self, stream: str) -> str:
        return KEYS.key_for(parse_stream_name(stream))

    async def start(self, sid: str, epoch: str | None = None) -> str:
        epoch = epoch or uuid.uuid4().hex[:12]
        await self.r.hset(KEYS.meta(sid), mapping={"epoch": epoch, "created": int(time.time())})
        return epoch

    async def add(self, stream: str, kind: str = "log", **fields: Any) -> str:
        ref = parse_stream_name(stream)
        envelope = rpa_bus.make(kind, **fields)
        raw = rpa_bus.encode(envelope)
        entry_id = await self.r.xadd(KEYS.key_for(ref), {"e": raw})
        meta = KEYS.meta_for(ref)
        if meta is not None:
            await self.r.hset(meta, mapping=rpa_bus.state_fields(envelope))
        return entry_id.decode()

    async def add_many(self, stream: str, n: int, *, size: int = 0) -> list[str]:
        key = self.key(stream)
        pad = "x" * size
        ids: list[str] = []
        for start in range(0, n, 500):
            async with self.r.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 500)):
                    envelope = rpa_bus.make("log", message=f"m{i}", data=pad or None)
                    pipe.xadd(key, {"e": rpa_bus.encode(envelope)})
                ids += [x.decode() for x in await pipe.execute()]
        return ids

    async def ids(self, stream: str) -> list[str]:
        return [i.decode() for i, _ in await self.r.xrange(self.key(stream))]

    async def close(self) -> None:
        await self.r.aclose()


def relay_settings(redis_url: str, **changes: Any) -> RelaySettings:
    base = RelaySettings(
        bus=Settings(redis_url=redis_url, connect_timeout_s=0.5, socket_timeout_s=1.0),
        host="127.0.0.1",
        port=0,
        name="test",
        block_ms=200,
        ping_interval_s=None,
        ping_timeout_s=None,
        close_timeout_s=1.0,
        max_connections_per_ip=0,
        ops_per_s=1000.0,
        ops_burst=1000,
    )
    return base.with_(**changes)


@pytest.fixture
async def writer(redis_url: str) -> AsyncIterator[Writer]:
    w = Writer(redis_url)
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    r = Relay(relay_settings(redis_url))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


async def close_relay(r: Relay, timeout_s: float = 10.0) -> None:
    """Close a relay; if that hangs, fail with the stacks of every task (not a bare timeout)."""
    r.close()
    try:
        async with asyncio.timeout(timeout_s * UNIT_S):
            await r.wait_closed()
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        pytest.fail(f"relay did not close in {timeout_s} s; tasks:\n{stacks.getvalue()}")


@contextlib.asynccontextmanager
async def relay_on(
    redis_url: str, archive_url: str | None = None, **kw: Any
) -> AsyncIterator[Relay]:
    """A started relay (``relay_settings`` changed by ``kw``), reading ``archive_url``."""
    base = relay_settings(redis_url, **kw)
    r = Relay(base.with_(bus=base.bus.with_(archive_url=archive_url)))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


def http(r: Relay) -> httpx.AsyncClient:
    """An HTTP client for ``r``'s port."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{r.port}", timeout=30 * UNIT_S)


class Client:
    """A test WebSocket client that collects frames per stream."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Client:
        return cls(await connect(url, open_timeout=5 * UNIT_S, **kwargs))

    async def send(self, **op: Any) -> None:
        await self.ws.send(orjson.dumps(op).decode())

    async def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s * UNIT_S):
            raw = await self.ws.recv()
        frame: dict[str, Any] = orjson.loads(raw)
        self.frames.append(frame)
        return frame

    async def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s * UNIT_S
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if pred(frame):
                return frame

    async def expect(self, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
        return await self.until(lambda f: f["type"] == kind, timeout_s)

    async def events_until(self, stream: str, last_id: str, timeout_s: float = 10.0) -> list[str]:
        """Receive until the event ``last_id`` of ``stream``; return the event ids seen."""
        got: list[str] = []
        await self.until(
            lambda f: (
                f["type"] == "event"
                and f["stream"] == stream
                and (got.append(f["id"]) or f["id"] == last_id)
            ),
            timeout_s,
        )
        return got

    def ids(self, stream: str) -> list[str]:
        return [f["id"] for f in self.frames if f["type"] == "event" and f["stream"] == stream]

    async def close(self) -> None:
        await self.ws.close()


def sid_stream(sid: str) -> str:
    return StreamRef("session", sid).name
