"""The bus on a real Redis Cluster: 3 masters + 3 replicas started from redis-server.

One cluster per module (about 6 s to create); the master-kill test runs last because it
changes the topology. The relay's cluster tests come with its cluster support.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson
import redis

from monitor import Monitor, MonitorSettings
from producer import AsyncProducer, Producer
from producer._core import Batch
from producer._journal import Item
from rpa_bus import Keys, Settings
from rpa_bus.cli._ops import connect, list_sessions, redis_info
from tests._cluster import (
    LocalCluster,
    assert_each_once,
    tick_in_background,
    ticks,
    types,
)
from tests.conftest import UNIT_S

KEYS = Keys()
_BIN = Path(sys.executable).parent / "rpa-bus"
RPA_BUS = str(_BIN) if _BIN.exists() else "rpa-bus"


def index_entries(client: redis.RedisCluster, prefix: str) -> list[tuple[str, str]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.sessions))
    out = []
    for _, fields in entries:
        event = orjson.loads(fields[b"e"])
        if event["session"].startswith(prefix):
            out.append((event["session"], event["type"]))
    return out


def test_sessions_spread_over_every_master_are_written_once_in_order(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    sids = [f"spread-{i}" for i in range(60)]
    masters = {cluster.master_of_key(KEYS.session(sid)) for sid in sids}
    assert len(masters) == 3, "the sessions should live on all three masters"
    with Producer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        sessions = [bus.session(sid, total=20) for sid in sids]
        for s in sessions:
            s.start()
        for i in range(20):
            for s in sessions:
                s.emit("tick", {"i": i})
        for s in sessions:
            s.finish({"ok": True})
        assert bus.flush(10 * UNIT_S), bus.last_error
        assert bus.last_error is None
    for sid in sids:
        assert ticks(rc, sid) == list(range(20))
        assert types(rc, sid)[0] == "started"
        assert types(rc, sid)[-1] == "finished"
        state = rc.hgetall(KEYS.meta(sid))
        assert state[b"status"] == b"finished"
    index = index_entries(rc, "spread-")
    assert sorted(index) == sorted(
        [(sid, "started") for sid in sids] + [(sid, "finished") for sid in sids]
    )


def test_a_resent_batch_writes_nothing_twice_index_included(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """A batch sent again after a lost reply: the appends and the index entries (written
    by their own script on a cluster, deduplicated by the producer's sidecar) land once."""
    sids = ["again-a", "again-b", "again-c"]
    items = []
    for n, sid in enumerate(sids):
        for k, kind in enumerate(["started", "tick", "finished"]):
            event: dict[str, Any] = {"type": kind, "ts": "2026-01-01T00:00:00.000Z"}
            if kind == "tick":
                event["data"] = {"i": n}
            seq = 1 + 3 * n + k
            items.append(
                Item(f"session:{sid}", "resent000000000", seq, orjson.dumps(event), event, 0)
            )
    bus = Producer(cluster.url, spool_dir=tmp_path)
    try:
        for _ in range(3):  # the first write, then two retries of the very same batch
            batch = Batch(items, None, 0)
            batch.calls = bus._build_calls(items)
            bus._write(batch)
    finally:
        bus.close()
    for n, sid in enumerate(sids):
        assert ticks(rc, sid) == [n]
        assert types(rc, sid) == ["started", "tick", "finished"]
    assert sorted(index_entries(rc, "again-")) == sorted(
        [(sid, "started") for sid in sids] + [(sid, "finished") for sid in sids]
    )
    sidecar = KEYS.index_seen("resent000000000")
    assert rc.keyslot(sidecar) == rc.keyslot(KEYS.sessions)
    assert rc.get(sidecar) == b"9"
    assert rc.pttl(sidecar) > 0


async def test_async_producer_on_the_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    sids = [f"async-{i}" for i in range(30)]
    async with AsyncProducer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        for sid in sids:
            async with bus.session(sid, total=5) as s:
                for i in range(5):
                    s.emit("tick", {"i": i})
        assert await bus.flush(10 * UNIT_S), bus.last_error
    for sid in sids:
        assert ticks(rc, sid) == list(range(5))
    assert len(index_entries(rc, "async-")) == 60


def test_monitor_and_cli_read_the_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    sids = [f"mon-{i}" for i in range(24)]
    with Producer(cluster.url, spool_dir=tmp_path / "p") as bus:
        for sid in sids:
            bus.session(sid).start()
        assert bus.flush(5 * UNIT_S)
        settings = MonitorSettings(
            bus=Settings(redis_url=cluster.url, spool_dir=tmp_path / "m"),
            host_name="cluster-host",
            interval_s=0.2,
        )
        mon = Monitor(settings)
        try:
            mon.tick()
            sample = next(e for e in mon.tick() if e["type"] == "metrics")
        finally:
            mon.close()
        health = sample["data"]["bus"]
        assert health["reachable"] is True
        assert health["masters"] == 3
        assert health["active_sessions"] >= len(sids)
        assert health["used_memory"] > 0
        client = connect(Settings(redis_url=cluster.url))
        try:
            rows = {r.session: r for r in list_sessions(client, KEYS, limit=1000)}
            info = redis_info(client)
        finally:
            client.close()
        assert all(rows[sid].status == "running" for sid in sids)
        assert info["masters"] == 3
        # The real command, as an operator runs it.
        status = subprocess.run(
            [RPA_BUS, "status", "--json", "--redis-url", cluster.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        report = orjson.loads(status.stdout)
        assert report["redis"]["reachable"] is True
        assert report["redis"]["masters"] == 3
        assert "cluster-host" in {m["host"] for m in report["monitors"]}
        for sid in sids:
            bus.publish(f"session:{sid}", {"type": "finished"})
        assert bus.flush(5 * UNIT_S)


def test_writes_during_a_slot_migration_follow_ask_and_moved_exactly_once(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """A bucket's slot moves to another master while its sessions are written: the
    producer meets TRYAGAIN and ASK during the move (MOVED, an AskError too, once a stale
    map points at the old owner), re-reads the slot map, and every event lands once, in
    order."""
    bucket = KEYS.bucket_tag("mig-0")
    sids = [f"mig-{i}" for i in range(400) if KEYS.bucket_tag(f"mig-{i}") == bucket][:3]
    sids += [f"mig-other-{i}" for i in range(6)]  # other slots, written meanwhile
    slot = int(rc.keyslot(KEYS.session(sids[0])))
    source = cluster.master_of_slot(slot)
    target = next(p for p in cluster.masters() if p != source)
    rounds = 120
    bus = Producer(cluster.url, spool_dir=tmp_path)
    thread, errors = tick_in_background(bus, sids, rounds, pause_s=0.01)
    try:
        time.sleep(0.3)
        moved = cluster.migrate_slot(slot, target, pause_s=0.05)
        thread.join(30 * UNIT_S)
        assert not errors, errors
        assert bus.flush(20 * UNIT_S), bus.last_error
    finally:
        bus.close()
    assert moved >= 2 * 3  # each session's stream and meta hash (and no more, e.g. none lost)
    assert cluster.master_of_key(KEYS.session(sids[0])) == target
    assert_each_once(rc, sids, rounds)


def test_a_killed_master_loses_and_duplicates_nothing_with_min_replicas(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """SIGKILL a master mid-run: its replica takes over; with min_replicas=1 every event
    the producer counted as written survives, and the retried batches add no duplicate.
    The killed node is started again (it rejoins as a replica), so WAIT can count one."""
    sids = [f"kill-{i}" for i in range(30)]
    victim = cluster.master_of_key(KEYS.session(sids[0]))
    rounds = 150
    bus = Producer(cluster.url, spool_dir=tmp_path, min_replicas=1)
    acknowledged: list[int] = []

    def checkpoint(i: int) -> None:
        if i == 30:
            assert bus.flush(5 * UNIT_S)
            acknowledged.append(i)

    thread, errors = tick_in_background(bus, sids, rounds, pause_s=0.02, after_round=checkpoint)
    time.sleep(1.0)  # mid-run
    cluster.kill(victim)
    cluster.wait_replaced(victim, time.monotonic() + 20 * UNIT_S)
    cluster.nodes[victim].start()  # back as a replica of the new master
    thread.join(30 * UNIT_S)
    assert not errors, errors
    try:
        assert bus.flush(30 * UNIT_S), bus.last_error
    finally:
        bus.close()
    assert acknowledged == [30]
    fresh = redis.RedisCluster(host="127.0.0.1", port=cluster.live_ports()[0], socket_timeout=5.0)
    try:
        assert_each_once(fresh, sids, rounds)
        assert sorted(index_entries(fresh, "kill-")) == sorted(
            [(sid, "started") for sid in sids] + [(sid, "finished") for sid in sids]
        )
    finally:
        fresh.close()


async def test_the_async_producer_follows_a_killed_master(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The same with AsyncProducer (one pipeline per node, all at once), after the
    previous test's node came back: kill another master mid-run."""
    cluster.wait_healthy(time.monotonic() + 30 * UNIT_S)
    sids = [f"akill-{i}" for i in range(30)]
    victim = cluster.master_of_key(KEYS.session(sids[0]))
    rounds = 100
    async with AsyncProducer(cluster.url, spool_dir=tmp_path, min_replicas=1) as bus:
        sessions = [bus.session(sid) for sid in sids]
        for s in sessions:
            s.start()
        for i in range(rounds):
            for s in sessions:
                s.emit("tick", {"i": i})
            if i == 30:
                cluster.kill(victim)
            if i == 60:
                deadline = time.monotonic() + 20 * UNIT_S
                await asyncio.to_thread(cluster.wait_replaced, victim, deadline)
                cluster.nodes[victim].start()
            await asyncio.sleep(0.02)
        for s in sessions:
            s.finish()
        assert await bus.flush(30 * UNIT_S), bus.last_error
    fresh = redis.RedisCluster(host="127.0.0.1", port=cluster.live_ports()[0], socket_timeout=5.0)
    try:
        assert_each_once(fresh, sids, rounds)
        assert len(index_entries(fresh, "akill-")) == 2 * len(sids)
    finally:
        fresh.close()
