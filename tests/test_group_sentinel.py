"""The workers' consumer-group loop on a real Sentinel group (1 master, 1 replica, 3
sentinels): a forced failover while sessions are written; the worker follows the new
master and the sink ends up with every entry it holds. (What ``min_replicas`` adds, that
the sink never sees an entry a failover lost, is tested on one server with a replica in
tests/test_group.py: the replica's resync after a Sentinel failover takes ~15 s.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aredis

from producer import AsyncProducer
from rpa_bus import Settings
from rpa_bus.redisio import GroupWorker
from tests._cluster import LocalSentinel, running
from tests.conftest import UNIT_S
from tests.test_group import Sink, group, wait_until


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    with running(LocalSentinel, tmp_path_factory.mktemp("group-sentinel")) as deployment:
        yield deployment


async def stream_ids(port: int, settings: Settings, sids: list[str]) -> dict[str, list[str]]:
    client = aredis.Redis(port=port, socket_timeout=5.0)
    try:
        found = {}
        for sid in sids:
            entries = cast(list[tuple[bytes, Any]], await client.xrange(settings.keys.session(sid)))
            found[f"session:{sid}"] = [i.decode() for i, _ in entries]
        return found
    finally:
        await client.aclose()


async def wait_until_replica(port: int) -> None:
    client = aredis.Redis(port=port, socket_timeout=5.0)
    deadline = time.monotonic() + 20 * UNIT_S
    try:
        while (await client.info("replication")).get("role") != "slave":
            assert time.monotonic() < deadline, f"{port} is still a master"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_the_group_loop_follows_a_forced_failover(
    sentinel: LocalSentinel, tmp_path: Path
) -> None:
    settings = Settings(redis_url=sentinel.url, buckets=8, spool_dir=tmp_path / "spool")
    old_master = await asyncio.to_thread(sentinel.current_master)
    sink = Sink()
    sids = [f"fo-{i}" for i in range(6)]
    kinds = frozenset({"session"})
    async with (
        AsyncProducer(settings=settings) as bus,
        GroupWorker(settings, group("sentinel", kinds=kinds, claim_idle_ms=3000), sink) as worker,
    ):

        async def job(sid: str) -> None:
            async with bus.session(sid, total=60) as s:
                for i in range(1, 61):
                    s.progress(i)
                    await asyncio.sleep(0.03)

        jobs = [asyncio.create_task(job(sid)) for sid in sids]
        try:
            await asyncio.sleep(0.8)
            await asyncio.to_thread(sentinel.failover)
            deadline = time.monotonic() + 20 * UNIT_S
            while await asyncio.to_thread(sentinel.current_master) == old_master:
                assert time.monotonic() < deadline, "Sentinel did not fail over"
                await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(*jobs), 60 * UNIT_S)
        finally:
            for j in jobs:
                j.cancel()
            await asyncio.wait(jobs)
        master = await asyncio.to_thread(sentinel.current_master)
        await wait_until_replica(old_master)  # it takes no more writes
        # After the switch: sessions that start on the new master reach the sink too.
        later = [f"after-{i}" for i in range(4)]
        for sid in later:
            run = bus.session(sid)
            run.start()
            run.finish()
        assert await bus.flush(10 * UNIT_S), bus.last_error
        sids += later
        want = await stream_ids(master, settings, sids)
        assert all(len(ids) == 2 for s, ids in want.items() if s.startswith("session:after"))

        def complete() -> bool:
            return all(set(sink.got.get(s, [])) >= set(ids) for s, ids in want.items())

        await wait_until(complete, timeout_s=30, what=f"every entry: {worker.stats}")
        assert sink.problems == []
