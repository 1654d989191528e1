"""The relay on a real Redis Cluster: 3 masters + 3 replicas started from redis-server.

Sessions spread over every master; WebSocket clients on two relays (each its own consumer
group) must get every event of every session exactly once, in stream order, while the
relays read with one reader per active slot. Then the cluster changes under them: a
bucket's slot moves to another master, and a master is killed (SIGKILL) and replaced by
its replica. One cluster for the module; the tests that change the topology run last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from redis.crc import key_slot

from producer import Producer
from relay import Relay
from tests._cluster import (
    LocalCluster,
    assert_each_once,
    free_ports,
    tick_in_background,
)
from tests._relay_support import KEYS, Client, close_relay, relay_settings, sid_stream
from tests._service import Service, running_service
from tests._wait import wait_for, wait_for_async
from tests.conftest import UNIT_S

INDEX = "sessions"


@pytest.fixture
async def relays(cluster: LocalCluster) -> AsyncIterator[list[Relay]]:
    """Two relays on the cluster, delivering only what a replica holds (min_replicas=1)."""
    started: list[Relay] = []
    try:
        for name in ("cl-a", "cl-b"):
            settings = relay_settings(cluster.url, name=name)
            bus = dataclasses.replace(settings.bus, min_replicas=1)
            relay = Relay(settings.with_(bus=bus))
            await relay.start()
            started.append(relay)
        yield started
    finally:
        for relay in started:
            await close_relay(relay)


def spread(cluster: LocalCluster, prefix: str, per_master: int) -> list[str]:
    """Session ids whose streams live on every master, ``per_master`` on each."""
    by_master: dict[int, list[str]] = {port: [] for port in cluster.masters()}
    i = 0
    while any(len(sids) < per_master for sids in by_master.values()):
        sid = f"{prefix}-{i}"
        i += 1
        sids = by_master[cluster.master_of_key(KEYS.session(sid))]
        if len(sids) < per_master:
            sids.append(sid)
    return [sid for sids in by_master.values() for sid in sids]


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def stream_ids(rc: redis.RedisCluster, stream: str) -> list[str]:
    key = KEYS.sessions if stream == INDEX else KEYS.session(stream.removeprefix("session:"))
    entries = cast(list[tuple[bytes, Any]], rc.xrange(key))
    return [i.decode() for i, _ in entries]


async def watch(url: str, streams: list[str]) -> Client:
    """A client subscribed to ``streams`` from their start, each live before it returns."""
    c = await Client.open(url)
    for stream in streams:
        await c.send(op="subscribe", stream=stream)
    waiting = set(streams)

    def all_live(frame: dict[str, Any]) -> bool:
        if frame["type"] == "live":
            waiting.discard(frame["stream"])
        return not waiting

    await c.until(all_live)
    return c


async def assert_exactly_once(c: Client, rc: redis.RedisCluster, streams: list[str]) -> None:
    """What ``c`` received of each stream is exactly the stream: every id, once, in order,
    with no gap or reset on the way."""
    expected = {s: await asyncio.to_thread(stream_ids, rc, s) for s in streams}
    done = {s for s in streams if c.ids(s)[-1:] == expected[s][-1:]}

    def seen(frame: dict[str, Any]) -> bool:
        stream = frame.get("stream")
        if frame["type"] == "event" and stream in expected and frame["id"] in expected[stream][-1:]:
            done.add(stream)
        return done == set(streams)

    if done != set(streams):
        await c.until(seen, timeout_s=30)
    for stream in streams:
        assert c.ids(stream) == expected[stream], (
            stream,
            set(c.ids(stream)) ^ set(expected[stream]),
        )
    assert not [f for f in c.frames if f["type"] in ("gap", "reset")]


def healthz(relay: Relay) -> dict[str, Any]:
    url = f"http://127.0.0.1:{relay.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5 * UNIT_S) as response:
            body: dict[str, Any] = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: the body says why
        body = orjson.loads(exc.read())
    return body


async def test_two_relays_deliver_sessions_on_every_master_exactly_once(
    cluster: LocalCluster, rc: redis.RedisCluster, relays: list[Relay], tmp_path: Path
) -> None:
    sids = spread(cluster, "spread", per_master=4)
    streams = [INDEX, *(sid_stream(sid) for sid in sids)]
    early = [await watch(relay.url, streams) for relay in relays]
    # One reader per slot with tails: each session bucket, and the index's slot.
    slots = {slot_of(KEYS.session(sid)) for sid in sids} | {slot_of(KEYS.sessions)}
    for relay in relays:
        body = await asyncio.to_thread(healthz, relay)
        assert body["status"] == "ok", body
        assert body["readers"] == len(slots), body
    rounds = 60
    with Producer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        thread, errors = tick_in_background(bus, sids, rounds, pause_s=0.01)
        await wait_for_async(lambda: written(rc, sids[0], 15), what="the run under way")
        late = [await watch(relay.url, streams) for relay in relays]  # replay, then live
        await asyncio.to_thread(thread.join, 30 * UNIT_S)
        assert not errors, errors
        assert bus.flush(20 * UNIT_S), bus.last_error
    await asyncio.to_thread(assert_each_once, rc, sids, rounds)
    for c in [*early, *late]:
        await assert_exactly_once(c, rc, streams)
    # Every relay's group read every session, and acknowledged what it fanned out. Checked
    # while the clients still watch: once they leave, the relays drop their groups.
    for relay in relays:
        group = KEYS.relay_group(relay.settings.name)
        await wait_for_async(
            lambda: asyncio.to_thread(lambda: not pending(rc, sids, group)),  # noqa: B023
            what="every entry acknowledged",
        )
    for c in [*early, *late]:
        await c.close()


def written(rc: redis.RedisCluster, sid: str, n: int) -> Awaitable[bool]:
    """True once ``sid``'s stream holds ``n`` entries (a run is under way)."""
    return asyncio.to_thread(lambda: rc.xlen(KEYS.session(sid)) >= n)


def pending(rc: redis.RedisCluster, sids: list[str], group: str) -> int:
    total = 0
    for sid in sids:
        groups: list[dict[str, Any]] = rc.xinfo_groups(KEYS.session(sid))
        mine = [g for g in groups if g["name"].decode() == group]
        assert mine, f"no group {group} on {sid}"
        total += int(mine[0]["pending"])
    return total


async def test_readers_follow_a_bucket_moving_to_another_master(
    cluster: LocalCluster, rc: redis.RedisCluster, relays: list[Relay], tmp_path: Path
) -> None:
    """A subscribed bucket's slot migrates mid-run (keys, consumer groups and pending
    lists move with MIGRATE): the readers meet UNBLOCKED, TRYAGAIN and MOVED, refresh the
    slot map, read on the new master, and clients miss and repeat nothing."""
    bucket = KEYS.bucket_tag("move-0")
    sids = [f"move-{i}" for i in range(400) if KEYS.bucket_tag(f"move-{i}") == bucket][:3]
    sids += spread(cluster, "move-other", per_master=1)
    streams = [sid_stream(sid) for sid in sids]
    slot = slot_of(KEYS.session(sids[0]))
    source = cluster.master_of_slot(slot)
    target = next(p for p in cluster.masters() if p != source)
    clients = [await watch(relay.url, streams) for relay in relays]
    rounds = 100
    with Producer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        thread, errors = tick_in_background(bus, sids, rounds, pause_s=0.01)
        await wait_for_async(lambda: written(rc, sids[0], 20), what="the run under way")
        await asyncio.to_thread(cluster.migrate_slot, slot, target, pause_s=0.05)
        await asyncio.to_thread(thread.join, 30 * UNIT_S)
        assert not errors, errors
        assert bus.flush(20 * UNIT_S), bus.last_error
    assert cluster.master_of_key(KEYS.session(sids[0])) == target
    await asyncio.to_thread(assert_each_once, rc, sids, rounds)
    for c in clients:
        await assert_exactly_once(c, rc, streams)
        await c.close()


def test_up_serves_the_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """``rpa-bus up --demo --redis-url redis+cluster://...``: relay, monitor and demo jobs
    on the cluster; a subscriber follows a demo session to its end; SIGTERM exits 0."""
    [port] = free_ports(1)
    args = ["up", "--demo", "--port", str(port), "--redis-url", cluster.url,
            "--host-name", "up-cluster", "--interval", "0.5"]  # fmt: skip
    with running_service(args, port=port, folder=tmp_path) as up:
        sid = asyncio.run(_follow_a_demo_session(up))
        assert stream_ids(rc, sid_stream(sid))
        wait_for(lambda: rc.xlen(KEYS.monitor("up-cluster")), what="a monitor sample", timeout_s=10)


async def _follow_a_demo_session(up: Service) -> str:
    """Subscribe to the index (new entries), then to the first demo session that starts,
    from its start; return its id once it ended."""
    c = await Client.open(up.ws_url)
    try:
        await c.send(op="subscribe", stream=INDEX, **{"from": "$"})
        started = await c.until(lambda f: f.get("data", {}).get("type") == "started", 20)
        sid: str = started["data"]["session"]
        await c.send(op="subscribe", stream=sid_stream(sid))
        await c.until(lambda f: f["type"] == "live" and f["stream"] == sid_stream(sid))
        # One reader for the index's slot, one for the session's bucket (unless they share).
        slots = {slot_of(KEYS.sessions), slot_of(KEYS.session(sid))}
        assert (await asyncio.to_thread(up.health))["readers"] == len(slots)
        await c.until(
            lambda f: (
                f["stream"] == sid_stream(sid)
                and f.get("data", {}).get("type") in ("finished", "failed")
            ),
            timeout_s=90,
        )
        return sid
    finally:
        await c.close()


async def test_clients_resume_when_a_master_is_killed(
    cluster: LocalCluster, rc: redis.RedisCluster, relays: list[Relay], tmp_path: Path
) -> None:
    """SIGKILL the master of some subscribed sessions mid-run: its replica takes over, the
    relays' readers for those slots reconnect to it, and with ``min_replicas=1`` on the
    producer and the relays every client ends with exactly the surviving streams: nothing
    acknowledged is lost, nothing is delivered twice (not even an entry the dead master
    took and its replica never got). The killed node comes back as a replica."""
    cluster.wait_healthy(time.monotonic() + 30 * UNIT_S)
    sids = spread(cluster, "kill", per_master=3)
    streams = [INDEX, *(sid_stream(sid) for sid in sids)]
    victim = cluster.master_of_key(KEYS.session(sids[0]))
    early = [await watch(relay.url, streams) for relay in relays]
    rounds = 150
    with Producer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        thread, errors = tick_in_background(bus, sids, rounds, pause_s=0.02)
        await wait_for_async(lambda: written(rc, sids[0], 40), what="the run under way")
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_replaced, victim, time.monotonic() + 20 * UNIT_S)
        late = [await watch(relay.url, streams) for relay in relays]
        cluster.nodes[victim].start()  # rejoins as a replica, so WAIT can count one again
        await asyncio.to_thread(thread.join, 60 * UNIT_S)
        assert not errors, errors
        assert bus.flush(30 * UNIT_S), bus.last_error
    fresh = redis.RedisCluster(host="127.0.0.1", port=cluster.masters()[0], socket_timeout=5.0)
    try:
        await asyncio.to_thread(assert_each_once, fresh, sids, rounds)
        for c in [*early, *late]:
            await assert_exactly_once(c, fresh, streams)
            await c.close()
    finally:
        fresh.close()
    for relay in relays:
        body = await asyncio.to_thread(healthz, relay)
        assert body["status"] == "ok", body


async def test_a_cluster_that_never_answered_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """No seed node answers when the relay starts (and so no slot map was ever read): it
    starts anyway, a subscriber is told ``unavailable`` and stays connected, and /healthz
    says 503 with ``redis`` false. Needs no cluster: the seed ports are closed."""
    dead = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    settings = relay_settings(dead, name="cl-dead")
    relay = Relay(settings.with_(bus=dataclasses.replace(settings.bus, min_replicas=1)))
    await relay.start()
    try:
        c = await Client.open(relay.url)
        await c.send(op="subscribe", stream=sid_stream("nobody-home"))
        frame = await c.expect("error", timeout_s=10)
        assert frame["code"] == "unavailable"
        await c.send(op="ping")
        await c.expect("pong")  # still connected, nothing crashed
        body = await asyncio.to_thread(healthz, relay)
        assert body["status"] == "unavailable"
        assert body["redis"] is False
        await c.close()
    finally:
        await close_relay(relay)
