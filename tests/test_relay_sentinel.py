"""The relay on a real Sentinel group: 1 master, 1 replica, 3 sentinels from redis-server.

A forced failover (``SENTINEL FAILOVER``) in the middle of a session: the relay's reader
and command clients follow the new master, WebSocket clients stay connected and keep
receiving, and what each received equals the stream (XRANGE on the new master) exactly:
nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis

from producer import AsyncProducer
from relay import Relay
from tests._cluster import LocalSentinel, free_ports, running
from tests._relay_support import KEYS, Client, close_relay, relay_settings, sid_stream
from tests._service import Service, running_service
from tests.conftest import UNIT_S


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    with running(LocalSentinel, tmp_path_factory.mktemp("relay-sentinel")) as group:
        yield group


async def stream_ids(group: LocalSentinel, sid: str) -> list[str]:
    port = await asyncio.to_thread(group.current_master)
    client = aioredis.Redis(port=port, socket_timeout=5.0)
    try:
        entries = cast(list[tuple[bytes, Any]], await client.xrange(KEYS.session(sid)))
        return [i.decode() for i, _ in entries]
    finally:
        await client.aclose()


def events(c: Client, stream: str) -> list[str]:
    """Every event frame the client got, in arrival order, duplicates included."""
    return c.ids(stream)


async def test_relay_follows_a_forced_failover(sentinel: LocalSentinel, tmp_path: Path) -> None:
    sid = "relay-failover"
    stream = sid_stream(sid)
    rounds = 150
    old_master = await asyncio.to_thread(sentinel.current_master)
    settings = relay_settings(sentinel.url, name="sentinel")
    # The relay delivers only entries a replica holds: entries the old master took while
    # the failover was under way vanish with it, and a client must not have seen them.
    relay = Relay(settings.with_(bus=dataclasses.replace(settings.bus, min_replicas=1)))
    await relay.start()
    try:
        early = await Client.open(relay.url)
        await early.send(op="subscribe", stream=stream)
        await early.expect("live")

        async with AsyncProducer(sentinel.url, spool_dir=tmp_path, min_replicas=1) as bus:

            async def job() -> None:
                async with bus.session(sid, total=rounds) as s:
                    for i in range(1, rounds + 1):
                        s.progress(i, data={"i": i})
                        await asyncio.sleep(0.02)

            writing = asyncio.create_task(job(), name="job")
            try:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(sentinel.failover)
                deadline = time.monotonic() + 20 * UNIT_S
                while await asyncio.to_thread(sentinel.current_master) == old_master:
                    assert time.monotonic() < deadline, "Sentinel did not fail over"
                    await asyncio.sleep(0.05)
                # A client that joins right after the switch replays from the new master.
                late = await Client.open(relay.url)
                await late.send(op="subscribe", stream=stream)
                await asyncio.wait_for(writing, 60 * UNIT_S)
            finally:
                if not writing.done():
                    writing.cancel()
            assert await bus.flush(30 * UNIT_S), bus.last_error

        ids = await stream_ids(sentinel, sid)
        assert len(ids) == rounds + 2  # started, progress..., finished
        for c in (early, late):
            if ids[-1] not in events(c, stream):
                await c.until(lambda f: f.get("id") == ids[-1], timeout_s=30)
            assert events(c, stream) == ids, (c is early, set(events(c, stream)) ^ set(ids))
            kinds = {f["type"] for f in c.frames}
            assert not kinds & {"gap", "reset"}, c.frames
            await c.close()
        health = orjson.loads(
            await asyncio.to_thread(_get, f"http://127.0.0.1:{relay.port}/healthz")
        )
        assert health["status"] == "ok"
    finally:
        await close_relay(relay)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5 * UNIT_S) as response:
        body: bytes = response.read()
    return body


def test_relay_command_serves_through_sentinel(sentinel: LocalSentinel, tmp_path: Path) -> None:
    """``rpa-bus relay`` with a ``redis+sentinel://`` URL: healthy, and a subscriber gets a
    session's events."""
    [port] = free_ports(1)
    args = ["relay", "--port", str(port), "--name", "cli-sentinel"]
    with running_service(
        args, port=port, folder=tmp_path, env={"RPA_BUS_REDIS_URL": sentinel.url}
    ) as relay:
        assert relay.health()["name"] == "cli-sentinel"
        asyncio.run(_one_session(sentinel, relay.ws_url, tmp_path))


def test_up_follows_a_sentinel_failover(sentinel: LocalSentinel, tmp_path: Path) -> None:
    """``rpa-bus up --demo --redis-url redis+sentinel://...`` with RPA_BUS_MIN_REPLICAS=1:
    relay, monitor and demo jobs on the Sentinel-watched service. A forced failover later,
    the relay is healthy again, its subscribers get demo events that the new master holds
    (without min_replicas they may also see writes the demoted master took and then lost),
    and the monitor samples into it; SIGTERM exits 0."""
    [port] = free_ports(1)
    args = ["up", "--demo", "--port", str(port), "--redis-url", sentinel.url,
            "--host-name", "up-sentinel", "--interval", "0.5"]  # fmt: skip
    env = {"RPA_BUS_MIN_REPLICAS": "1"}
    with running_service(args, port=port, folder=tmp_path, env=env) as up:
        asyncio.run(_through_a_failover(sentinel, up))


async def _through_a_failover(group: LocalSentinel, up: Service) -> None:
    c = await Client.open(up.ws_url)
    try:
        await c.send(op="subscribe", stream="sessions")
        started = await c.until(lambda f: f.get("data", {}).get("type") == "started", 20)
        # Follow that demo session, and every one that starts later.
        await c.send(op="subscribe", stream=sid_stream(started["data"]["session"]), **{"from": "$"})
        old = await asyncio.to_thread(group.current_master)
        new = await asyncio.to_thread(group.fail_over, old, 40 * UNIT_S)
        followed_by = time.monotonic() + 50 * UNIT_S
        switched_ms = int(time.time() * 1000)
        await asyncio.to_thread(up.wait_healthy)

        async def follow(f: dict[str, Any]) -> None:
            if f.get("data", {}).get("type") == "started" and f["stream"] == "sessions":
                stream = sid_stream(f["data"]["session"])
                await c.send(op="subscribe", stream=stream, **{"from": "$"})

        # A demo event written on the new master reaches the subscriber.
        while True:
            f = await c.recv(30)
            await follow(f)
            if f["type"] == "event" and int(f["id"].split("-")[0]) > switched_ms:
                break
        client = aioredis.Redis(port=new, socket_timeout=5.0)
        try:
            key = (
                KEYS.sessions
                if f["stream"] == "sessions"
                else KEYS.session(f["stream"].removeprefix("session:"))
            )
            assert await client.xrange(key, f["id"], f["id"])
            # And the monitor samples into the new master.
            while True:
                newest = cast(
                    list[Any], await client.xrevrange(KEYS.monitor("up-sentinel"), count=1)
                )
                if newest and int(newest[0][0].split(b"-")[0]) > switched_ms:
                    break
                assert time.monotonic() < followed_by, "no monitor sample since"
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
    finally:
        await c.close()


async def _one_session(group: LocalSentinel, url: str, spool: Path) -> None:
    sid = "cli-sentinel-run"
    stream = sid_stream(sid)
    c = await Client.open(url)
    try:
        await c.send(op="subscribe", stream=stream)
        await c.expect("live")
        async with AsyncProducer(group.url, spool_dir=spool) as bus:
            async with bus.session(sid, total=3) as s:
                for i in range(1, 4):
                    s.progress(i)
            assert await bus.flush(10 * UNIT_S), bus.last_error
        ids = await stream_ids(group, sid)
        await c.until(lambda f: f.get("id") == ids[-1], timeout_s=10)
        assert events(c, stream) == ids
    finally:
        await c.close()
