"""Relay under faults: Redis restarts and dropped connections, slow clients, handler bugs,
SIGTERM of a real ``rpa-bus relay`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay import AsyncSubscription, Event, Relay
from relay._connection import Connection
from rpa_bus import ConfigMismatch
from rpa_bus.cli._embedded import EmbeddedRedis, free_port, port_open
from tests._proxy import FaultProxy
from tests._relay_support import Client, Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

S = "session:job-1"


@pytest.mark.slow
async def test_redis_restart_under_live_subscriptions(
    redis_server: EmbeddedRedis, writer: Writer
) -> None:
    r = Relay(relay_settings(redis_server.url))
    await r.start()
    try:
        clients = [await Client.open(r.url) for _ in range(3)]
        for c in clients:
            await c.send(op="subscribe", stream=S)
            await c.send(op="subscribe", stream="sessions")
            await c.expect("live")
            await c.expect("live")
        before = [await writer.add(S, message=str(i)) for i in range(20)]
        redis_server.stop()
        for c in clients:
            error = await c.expect("error", 10)
            assert error["code"] == "unavailable"
        redis_server.start()
        after = [await writer.add(S, message=f"after {i}") for i in range(30)]
        for c in clients:
            await c.until(lambda f: f.get("id") == after[-1], 15)
            assert c.ids(S) == before + after
            # Told once per outage per subscription, not once per retry.
            errors = [f for f in c.frames if f["type"] == "error"]
            assert len(errors) <= 2
            assert {f["code"] for f in errors} == {"unavailable"}
            await c.close()
    finally:
        await close_relay(r)


@pytest.mark.slow
async def test_redis_killed_and_restarted_while_writing(
    redis_server: EmbeddedRedis, writer: Writer
) -> None:
    r = Relay(relay_settings(redis_server.url))
    await r.start()
    try:
        c = await Client.open(r.url)
        await c.send(op="subscribe", stream=S)
        await c.expect("live")
        first = [await writer.add(S) for _ in range(10)]
        await c.until(lambda f: f.get("id") == first[-1])
        redis_server.kill()
        await wait_for_async(lambda: not r.stats.redis_up, what="the relay to see Redis gone")
        redis_server.start()
        # Subscribing while Redis was away, or just after: still exact.
        late = await Client.open(r.url)
        await late.send(op="subscribe", stream=S, **{"from": first[4]})
        more = [await writer.add(S) for _ in range(10)]
        await c.until(lambda f: f.get("id") == more[-1], 15)
        await late.until(lambda f: f.get("id") == more[-1], 15)
        assert c.ids(S) == first + more
        assert late.ids(S) == first[5:] + more
        await c.close()
        await late.close()
    finally:
        await close_relay(r)


@pytest.mark.slow
async def test_dropped_redis_connections_lose_nothing(redis_url: str, writer: Writer) -> None:
    """The relay talks to Redis through a proxy that keeps cutting its connections, also
    mid-reply: entries the group delivered whose reply was lost come back from our PEL."""
    proxy = FaultProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    r = Relay(relay_settings(proxy.url))
    await r.start()
    try:
        c = await Client.open(r.url)
        await c.send(op="subscribe", stream=S)
        await c.expect("live")
        written: list[str] = []
        for round_ in range(8):
            written += [await writer.add(S, message=f"{round_}.{i}") for i in range(25)]
            if round_ % 2:
                proxy.cut_replies(1)
            else:
                proxy.drop_connections()
            await asyncio.sleep(0.05 * UNIT_S)  # not a wait for something: faults paced
        written += [await writer.add(S, message="end")]
        await c.until(lambda f: f.get("id") == written[-1], 20)
        assert c.ids(S) == written
        await c.close()
    finally:
        await close_relay(r)
        proxy.close()


@pytest.mark.slow
async def test_client_that_stops_reading_keeps_relay_memory_bounded(
    redis_url: str, writer: Writer
) -> None:
    queue_bytes = 256 * 1024
    r = Relay(relay_settings(redis_url, queue_bytes=queue_bytes, queue_frames=256))
    await r.start()
    try:
        ws = await connect(r.url, max_queue=4, max_size=None)
        await ws.send('{"op": "subscribe", "stream": "session:big", "from": "$"}')
        assert b'"live"' in (await ws.recv(decode=False)) + (await ws.recv(decode=False))
        rss_before = _rss_bytes()
        peak_queue = 0

        async def watch() -> None:
            nonlocal peak_queue
            while True:
                peak_queue = max(peak_queue, r.stats.queued_bytes)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        # The client reads nothing while 20,000 events of 2 KB (40 MB) flow.
        ids = await writer.add_many("session:big", 20_000, size=2048)

        async def all_read() -> bool:
            groups = await writer.r.xinfo_groups(writer.key("session:big"))
            return any(g["last-delivered-id"].decode() == ids[-1] for g in groups)

        await wait_for_async(all_read, what="every event through the relay", timeout_s=10)
        watcher.cancel()
        grown = _rss_bytes() - rss_before
        assert r.stats.slow_switches >= 1
        assert peak_queue <= queue_bytes + 64 * 1024
        assert grown < 32 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB"
        got: list[str] = []
        async with asyncio.timeout(60 * UNIT_S):
            while len(got) < len(ids):
                frame = await ws.recv()
                if '"type":"event"' in frame:
                    got.append(frame.split('"id":"', 1)[1].split('"', 1)[0])
        assert got == ids
        await ws.close()
    finally:
        await close_relay(r)


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def test_handler_bug_closes_one_connection_1011(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: an op named "boom" raises inside the handler."""
    handle = Connection._handle

    async def buggy(self: Connection, message: str) -> None:
        if "boom" in message:
            raise RuntimeError("injected handler bug")
        await handle(self, message)

    monkeypatch.setattr(Connection, "_handle", buggy)
    victim = await Client.open(relay.url)
    bystander = await Client.open(relay.url)
    await victim.send(op="boom")
    with pytest.raises(ConnectionClosed):
        await victim.recv()
    assert victim.ws.close_code == 1011
    await bystander.send(op="ping")
    assert await bystander.recv() == {"type": "pong"}
    await bystander.close()


async def test_close_sends_1001_to_clients(relay: Relay) -> None:
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    await c.expect("live")
    await close_relay(relay)
    with pytest.raises(ConnectionClosed):
        await c.recv()
    assert c.ws.close_code == 1001
    relay.close()  # idempotent
    await relay.wait_closed()


async def test_tail_client_resumes_across_relay_restart(redis_url: str, writer: Writer) -> None:
    port = free_port()
    r = Relay(relay_settings(redis_url, port=port))
    await r.start()
    written = [await writer.add(S, message=str(i)) for i in range(5)]
    seen: list[str] = []

    async def follow() -> None:
        async for item in AsyncSubscription(f"ws://127.0.0.1:{port}", S):
            if isinstance(item, Event):
                seen.append(item.id)

    task = asyncio.create_task(follow())
    try:
        await wait_for_async(lambda: len(seen) == 5, what="5 events")
        await close_relay(r)
        written += [await writer.add(S, message=str(i)) for i in range(5, 10)]
        r = Relay(relay_settings(redis_url, port=port))
        await r.start()
        written += [await writer.add(S, message=str(i)) for i in range(10, 15)]
        await wait_for_async(lambda: len(seen) >= 15, what="15 events", timeout_s=10)
        assert seen == written
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_relay(r)


@pytest.mark.slow
async def test_sigterm_closes_clients_1001_and_exits_0(redis_url: str, writer: Writer) -> None:
    exe = shutil.which("rpa-bus") or f"{sys.prefix}/bin/rpa-bus"
    port = free_port()
    env = {**os.environ, "RPA_BUS_REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        exe,
        "relay",
        "--port",
        str(port),
        "--name",
        "sig",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def listening() -> bool:
            assert proc.returncode is None, "relay exited"
            return await asyncio.to_thread(port_open, "127.0.0.1", port)

        await wait_for_async(listening, what="the relay to listen", timeout_s=15)
        clients = [await Client.open(f"ws://127.0.0.1:{port}/ws") for _ in range(3)]
        for c in clients:
            await c.send(op="subscribe", stream=S)
            await c.expect("live")
        event = await writer.add(S)
        for c in clients:
            assert (await c.expect("event"))["id"] == event
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            with pytest.raises(ConnectionClosed):
                await c.recv(5)
            assert c.ws.close_code == 1001
        async with asyncio.timeout(10 * UNIT_S):
            code = await proc.wait()
        assert code == 0
        assert time.monotonic() - started < 5 * UNIT_S
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_relay_started_while_redis_is_down(
    redis_server: EmbeddedRedis, writer: Writer
) -> None:
    redis_server.stop()
    r = Relay(relay_settings(redis_server.url))
    await r.start()  # stays up: it serves once Redis is back
    try:
        c = await Client.open(r.url)
        await c.send(op="subscribe", stream=S)
        error = await c.recv()
        assert error["code"] == "unavailable"
        assert error["stream"] == S
        redis_server.start()
        await c.expect("subscribed", 10)
        await c.expect("live")
        event = await writer.add(S)
        assert (await c.expect("event"))["id"] == event
        await c.close()
    finally:
        await close_relay(r)


async def test_live_events_past_the_replay_buffer_are_read_again(
    redis_url: str, writer: Writer
) -> None:
    """A long replay while events keep coming: the per-subscription buffer overflows, is
    dropped, and the handoff reads Redis again; still exact."""
    r = Relay(relay_settings(redis_url, replay_buffer=5, page_size=50, queue_frames=64))
    await r.start()
    try:
        history = await writer.add_many(S, 3000)
        c = await Client.open(r.url)
        await c.send(op="subscribe", stream=S)
        live = [await writer.add(S, message=str(i)) for i in range(200)]
        await c.until(lambda f: f.get("id") == live[-1], 20)
        assert c.ids(S) == history + live
        assert [f["type"] for f in c.frames].count("live") >= 1
        await c.close()
    finally:
        await close_relay(r)


async def test_tail_command_prints_events_as_json_lines(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(S, message=str(i)) for i in range(3)]
    exe = shutil.which("rpa-bus") or f"{sys.prefix}/bin/rpa-bus"
    proc = await asyncio.create_subprocess_exec(
        exe, "tail", S, "--from", ids[0], "--url", f"ws://127.0.0.1:{relay.port}",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        async with asyncio.timeout(15 * UNIT_S):
            for _ in range(2):
                lines.append(orjson.loads(await proc.stdout.readline()))
            ids.append(await writer.add(S, message="live"))
            lines.append(orjson.loads(await proc.stdout.readline()))
        assert [line["id"] for line in lines] == ids[1:]
        assert lines[-1]["data"]["message"] == "live"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10 * UNIT_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _deployment_with_64_buckets(redis_server: EmbeddedRedis) -> None:
    """P:config says 64 buckets, and Redis is down (its data kept for the restart)."""
    r = aioredis.Redis.from_url(redis_server.url, socket_timeout=5 * UNIT_S)
    try:
        await r.hset("rpa:config", "buckets", "64")
    finally:
        await r.aclose()
    redis_server.stop()


async def test_relay_started_while_redis_is_down_checks_config_when_it_answers(
    redis_server: EmbeddedRedis,
) -> None:
    await _deployment_with_64_buckets(redis_server)
    r = Relay(relay_settings(redis_server.url))  # 256 buckets
    await r.start()
    try:
        c = await Client.open(r.url)
        redis_server.start()
        with pytest.raises(ConfigMismatch, match="RPA_BUS_BUCKETS=64"):
            async with asyncio.timeout(10 * UNIT_S):
                await r.wait_closed()
        with pytest.raises(ConnectionClosed):
            await c.recv()
    finally:
        await close_relay_quietly(r)


async def close_relay_quietly(r: Relay) -> None:
    with contextlib.suppress(ConfigMismatch):
        await close_relay(r)


@pytest.mark.slow
async def test_relay_command_exits_2_on_a_config_mismatch_found_after_start(
    redis_server: EmbeddedRedis,
) -> None:
    await _deployment_with_64_buckets(redis_server)
    exe = shutil.which("rpa-bus") or f"{sys.prefix}/bin/rpa-bus"
    port = free_port()
    env = {**os.environ, "RPA_BUS_REDIS_URL": redis_server.url, "RPA_BUS_BUCKETS": "256"}
    proc = await asyncio.create_subprocess_exec(
        exe, "relay", "--port", str(port), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15 * UNIT_S
        while not await asyncio.to_thread(port_open, "127.0.0.1", port):
            assert proc.returncode is None, "relay exited"
            assert time.monotonic() < deadline, "relay did not listen"
            await asyncio.sleep(0.05)
        redis_server.start()
        assert proc.stderr is not None
        async with asyncio.timeout(15 * UNIT_S):
            err = (await proc.stderr.read()).decode()
            code = await proc.wait()
        assert code == 2, err
        assert "RPA_BUS_BUCKETS=64" in err
        assert "Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_relay_wide_queue_bound_switches_connections_that_are_behind(
    redis_url: str, writer: Writer
) -> None:
    total = 64 * 1024
    r = Relay(relay_settings(redis_url, total_queue_bytes=total))  # 1 MiB per connection
    await r.start()
    try:
        clients = []
        for _ in range(4):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # few bytes in flight
            sock.connect(("127.0.0.1", r.port))
            ws = await connect(r.url, sock=sock, max_queue=16, max_size=None, ping_interval=None)
            await ws.send('{"op": "subscribe", "stream": "session:big", "from": "$"}')
            while b'"live"' not in await ws.recv(decode=False):
                pass
            clients.append(ws)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, r.stats.queued_bytes)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        # Nobody reads while 8,000 events of 1 KB (8 MB per client) flow.
        ids = await writer.add_many("session:big", 8_000, size=1024)
        await wait_for_async(
            lambda: r.stats.total_bound_switches >= 1, what="a switch to catch-up", timeout_s=10
        )
        await asyncio.sleep(0.3)
        watcher.cancel()
        # Each behind connection may add one replayed frame and its control frames.
        assert peak <= total + 4 * 4096, peak
        _, _, metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{r.port}/metrics")
        assert 'rpa_relay_total_bound_switches_total{relay="test"}' in metrics
        assert "rpa_relay_queued_bytes" in metrics
        for ws in clients:  # then every client gets every event, in order, once
            got: list[str] = []
            async with asyncio.timeout(60 * UNIT_S):
                while len(got) < len(ids):
                    frame = await ws.recv()
                    if '"type":"event"' in frame:
                        got.append(frame.split('"id":"', 1)[1].split('"', 1)[0])
            assert got == ids
            await ws.close()
    finally:
        await close_relay(r)


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5 * UNIT_S) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
