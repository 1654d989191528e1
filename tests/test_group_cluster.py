"""The workers' consumer-group loop on a real Redis Cluster (3 masters + 3 replicas): two
GroupWorkers split sessions on every master, one reader per slot, every entry once in
per-stream order; then a master is killed and its replica takes over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aredis
from redis.crc import key_slot

from producer import AsyncProducer
from rpa_bus import Keys, Settings
from rpa_bus.redisio import REDIS_FAILURES, GroupWorker, is_retryable
from rpa_bus.redisio._group import _call
from tests._cluster import LocalCluster
from tests.conftest import UNIT_S
from tests.test_group import Sink, group, wait_split, wait_until

BUCKETS = 16


def bus(cluster: LocalCluster, tmp_path: Path) -> Settings:
    return Settings(redis_url=cluster.url, buckets=BUCKETS, spool_dir=tmp_path / "spool")


def ids(rc: redis.RedisCluster, key: str) -> list[str]:
    entries = cast(list[tuple[bytes, Any]], rc.xrange(key))
    return [i.decode() for i, _ in entries]


def expected(rc: redis.RedisCluster, keys: Keys, sids: list[str]) -> dict[str, list[str]]:
    found = {f"session:{sid}": ids(rc, keys.session(sid)) for sid in sids}
    found["sessions"] = ids(rc, keys.sessions)
    return found


@pytest.fixture
async def producer(cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[AsyncProducer]:
    p = AsyncProducer(settings=bus(cluster, tmp_path))
    try:
        yield p
    finally:
        await p.close()


def run_sessions(p: AsyncProducer, prefix: str, n: int, events: int) -> list[str]:
    sids = [f"{prefix}-{i}" for i in range(n)]
    for sid in sids:
        s = p.session(sid)
        s.start()
        for k in range(events):
            s.log(f"step {k}")
        s.finish()
    return sids


async def test_two_workers_on_a_cluster_split_and_deliver_each_entry_once_in_order(
    cluster: LocalCluster, rc: redis.RedisCluster, producer: AsyncProducer, tmp_path: Path
) -> None:
    keys = bus(cluster, tmp_path).keys
    await asyncio.to_thread(rc.delete, keys.sessions)
    before = run_sessions(producer, "pre", 12, 3)  # there before any worker
    assert await producer.flush()
    ledger: list[tuple[str, str, str]] = []
    one, two = Sink(ledger, "one"), Sink(ledger, "two")
    settings = bus(cluster, tmp_path)
    first = GroupWorker(settings, group("c-one", claim_idle_ms=3000), one)
    second = GroupWorker(settings, group("c-two", claim_idle_ms=3000), two)
    async with first, second:
        await wait_split([first, second], BUCKETS + 1, timeout_s=15)
        after = run_sessions(producer, "post", 24, 3)
        assert await producer.flush()
        want = await asyncio.to_thread(expected, rc, keys, before + after)
        total = sum(map(len, want.values()))
        await wait_until(lambda: len(ledger) >= total, timeout_s=15, what="all entries")
        await asyncio.sleep(0.3)
        merged: dict[str, list[str]] = {}
        for _name, stream, entry_id in ledger:
            merged.setdefault(stream, []).append(entry_id)
        assert merged == want
        assert {s for s in one.got if s.startswith("session:post")}
        assert {s for s in two.got if s.startswith("session:post")}
        assert one.problems == two.problems == []
        # Finished sessions are left: only the index stays tailed (by one of them).
        await wait_until(lambda: first.stats.tailed + second.stats.tailed == 1, what="drops")
        assert {**await first.lag(), **await second.lag()} == {"sessions": 0}


async def test_a_bucket_slot_moving_to_another_master_is_followed(
    cluster: LocalCluster, rc: redis.RedisCluster, producer: AsyncProducer, tmp_path: Path
) -> None:
    keys = bus(cluster, tmp_path).keys
    sink = Sink()
    settings = bus(cluster, tmp_path)
    kinds = frozenset({"session"})
    async with GroupWorker(settings, group("c-move", kinds=kinds), sink) as worker:
        sid = "mover"
        first = producer.session(sid)
        first.start()
        first.log("before the move")
        assert await producer.flush()
        await wait_until(lambda: len(sink.got.get(f"session:{sid}", [])) == 2, what="before")
        slot = key_slot(keys.session(sid).encode())
        source = cluster.master_of_slot(slot)
        target = next(p for p in cluster.masters() if p != source)
        moved = await asyncio.to_thread(cluster.migrate_slot, slot, target)
        assert moved >= 2  # the stream, its meta hash (and the bucket's lease)
        first.log("after the move")
        first.finish()
        assert await producer.flush()
        want = await asyncio.to_thread(ids, rc, keys.session(sid))
        await wait_until(
            lambda: sink.got.get(f"session:{sid}") == want,
            timeout_s=15,
            what=f"after the move: {worker.stats}",
        )
        assert sink.problems == []


async def test_a_killed_master_is_ridden_out_without_losing_entries(
    cluster: LocalCluster, rc: redis.RedisCluster, producer: AsyncProducer, tmp_path: Path
) -> None:
    keys = bus(cluster, tmp_path).keys
    sink = Sink()
    settings = bus(cluster, tmp_path)
    async with GroupWorker(settings, group("c-solo", claim_idle_ms=3000), sink) as worker:
        first = run_sessions(producer, "k1", 12, 2)
        assert await producer.flush()
        await wait_until(lambda: len(sink.got) >= 12, timeout_s=15, what="first wave")
        victim = cluster.master_of_key(keys.session(first[0]))
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_replaced, victim, time.monotonic() + 20 * UNIT_S)
        second = run_sessions(producer, "k2", 12, 2)
        assert await producer.flush(timeout_s=15 * UNIT_S)
        want = await asyncio.to_thread(expected, rc, keys, first + second)
        want.pop("sessions")  # the index may hold entries the failover lost, or not
        wanted = {(s, i) for s, ids in want.items() for i in ids}
        await wait_until(
            lambda: wanted <= {(s, i) for s, ids in sink.got.items() for i in ids},
            timeout_s=20,
            what=f"everything after the failover: {worker.stats}",
        )
        assert sink.problems == []
        assert worker.stats.errors > 0


async def test_the_close_race_of_a_shared_cluster_client_is_a_connection_error(
    cluster: LocalCluster,
) -> None:
    """redis-py #4287 for real: script calls run at once on one RedisCluster (as the loop's
    fan-out does) while the client closes every node's connections (what it does itself
    after CLUSTERDOWN in a failover). A command caught between its connected check and its
    write raised AttributeError ('NoneType' ... 'writelines'), which escaped the loop; it
    comes out of ``_call`` as a ConnectionError, retried like any other."""
    client = aredis.RedisCluster(host="127.0.0.1", port=cluster.live_ports()[0],
                                 socket_timeout=2.0)  # fmt: skip
    script = client.register_script("return redis.call('GET', KEYS[1])")
    races = 0
    others: list[BaseException] = []
    stop = False

    async def caller(i: int) -> None:
        nonlocal races
        while not stop:
            try:
                await _call(script, keys=[f"race-{i}"], args=[], client=client)
            except REDIS_FAILURES as exc:
                if isinstance(exc.__cause__, AttributeError):
                    races += 1
                if not is_retryable(exc):
                    others.append(exc)

    try:
        await client.initialize()
        callers = [asyncio.create_task(caller(i)) for i in range(64)]
        deadline = time.monotonic() + 20 * UNIT_S
        while races < 3 and time.monotonic() < deadline and not any(c.done() for c in callers):
            await asyncio.sleep(0.002)
            await client.aclose()
        stop = True
        await asyncio.gather(*callers)  # an AttributeError that escaped would raise here
    finally:
        await client.aclose()
    assert races >= 3, "the close race did not happen: nothing was tested"
    assert others == []
