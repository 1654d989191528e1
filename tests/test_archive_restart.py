"""Redis restarted (stopped and started on the same port, append-only file) while a
producer writes continuously and the archiver has entries in flight: delivered to it,
held in a store that a second SQLite connection keeps locked, stored while Redis is down
(so their XACK fails) and acknowledged only after the restart. The archive then equals
what Redis accepted, every entry once, and no step was written twice.

(tests/test_archive.py::test_redis_restart_mid_run restarts Redis between two writes,
with nothing pending.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from tests.test_archive import archived_ids, archiver_settings, redis_ids, running

pytestmark = pytest.mark.slow

SIDS = [f"rs-{i}" for i in range(4)]


class ContinuousWriter:
    """A producer in a thread: one progress event per session every few ms, until
    ``stop()``; then each session finishes and the producer flushes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.steps = 0
        self.flushed: bool | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="continuous-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with Producer(settings=self.settings) as p:
                runs = [p.session(sid) for sid in SIDS]
                for run in runs:
                    run.start()
                while not self._stop.is_set():
                    self.steps += 1
                    for run in runs:
                        run.progress(self.steps, f"step {self.steps}")
                    self._stop.wait(0.005)
                for run in runs:
                    run.finish()
                self.flushed = p.flush(timeout_s=60 * UNIT_S)
        except BaseException as exc:
            self.error = exc
            raise

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90 * UNIT_S)
        assert not self._thread.is_alive(), "the writer did not finish"
        assert self.error is None, repr(self.error)
        assert self.flushed is True, "the producer did not flush everything"


def pending(client: redis.Redis, keys: list[str]) -> int:
    """Entries delivered to the archiver's group and not acknowledged, over ``keys``."""
    total = 0
    for key in keys:
        try:
            groups = client.xinfo_groups(key)
        except redis.ResponseError:
            continue
        total += sum(int(g["pending"]) for g in groups if g["name"].endswith(b"archiver"))
    return total


async def test_redis_restart_mid_write_with_entries_in_flight(
    redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    b = Settings(
        redis_url=redis_url, buckets=8, spool_dir=tmp_path / "spool", queue_max=100_000,
        connect_timeout_s=0.5, socket_timeout_s=1.0,
    )  # fmt: skip
    path = tmp_path / "archive.db"
    url = f"sqlite://{path}"
    keys = [b.keys.session(sid) for sid in SIDS] + [b.keys.sessions]
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    # The store waits up to 30 s for a lock: the test, not a timeout, decides when it ends.
    settings = archiver_settings(b, url, count=50, connect_timeout_s=30.0)
    try:
        async with running(settings) as archiver:
            await wait_for_async(
                lambda: client.hget(b.keys.config, "archive") == b"1", what="archive=1"
            )
            writer = ContinuousWriter(b)
            await wait_for_async(
                lambda: archiver.stats.stored >= 200, what="archiving under way", timeout_s=30
            )
            lock = sqlite3.connect(path, isolation_level=None, timeout=10 * UNIT_S)
            lock.execute("BEGIN IMMEDIATE")  # the archiver's next commit waits for this
            try:
                stored_before = archiver.stats.stored
                # A batch in the store's hands: it waits on the lock. (Entries pending
                # alone may be only a round read ahead, which a dropped connection
                # drops without storing it.)
                await wait_for_async(
                    lambda: archiver.stats.storing > 0 and pending(client, keys) > 0,
                    what="a batch waiting on the locked store", timeout_s=20,
                )  # fmt: skip
                in_flight = pending(client, keys)
                await asyncio.to_thread(redis_server.stop)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            # The held batch commits now, with Redis down: its XACK cannot follow.
            await wait_for_async(
                lambda: archiver.stats.stored > stored_before,
                what="the held batch stored while Redis is down", timeout_s=30,
            )  # fmt: skip
            steps_at_stop = writer.steps
            await wait_for_async(
                lambda: writer.steps >= steps_at_stop + 20,
                what="the producer writing on while Redis is down",
            )
            await asyncio.to_thread(redis_server.start)
            steps_at_start = writer.steps
            await wait_for_async(
                lambda: writer.steps >= steps_at_start + 50,
                what="writes after the restart", timeout_s=20,
            )  # fmt: skip
            await asyncio.to_thread(writer.stop)
            c = redis.Redis.from_url(redis_url, socket_timeout=5)
            try:
                total = sum(c.xlen(k) for k in keys)
                await wait_for_async(
                    lambda: archiver.stats.stored >= total, what="everything archived",
                    timeout_s=60, interval_s=0.1,
                )  # fmt: skip
                await wait_for_async(
                    lambda: pending(c, keys) == 0, what="nothing pending", timeout_s=30
                )
                steps = writer.steps
                for sid, key in zip(SIDS, keys, strict=False):
                    want = redis_ids(c, key)
                    got = await archived_ids(archiver.store, f"session:{sid}")
                    assert got == want, f"{sid}: archive {len(got)} vs Redis {len(want)}"
                    assert len(set(got)) == len(got)
                    datas = await _all_data(archiver.store, f"session:{sid}")
                    kinds = [d["type"] for d in datas]
                    assert kinds[0] == "started"
                    assert kinds[-1] == "finished"
                    progress = [d["step"] for d in datas if d["type"] == "progress"]
                    assert progress == list(range(1, steps + 1)), f"{sid}: steps doubled or lost"
                assert await archived_ids(archiver.store, "sessions") == redis_ids(
                    c, b.keys.sessions
                )
                assert archiver.stats.stored == total  # new rows: each entry once
                # Stored, so the archiver gives each finished session its retention TTL.
                await wait_for_async(
                    lambda: all(c.pttl(k) > 0 for k in keys[:-1]),
                    what="the finished sessions' retention TTL",
                )
            finally:
                c.close()
            # What was in flight was stored before the restart and delivered again after
            # it (the store ignored it), or retried, or stored with its XACK failing and
            # sent again after the restart: either way the stop caught it.
            assert in_flight > 0
            group = archiver.group_stats
            assert group is not None
            caught = archiver.stats.replayed + group.retried + group.ack_failures
            assert caught > 0, (archiver.stats, group)
    finally:
        client.close()


async def _all_data(store: Any, stream: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        page = await store.events(stream, after=after, limit=1000)
        out += [orjson.loads(e.data) for e in page.events]
        if page.next is None:
            return out
        after = page.next


async def test_every_finished_session_is_counted_once_expired(
    redis_url: str, tmp_path: Path
) -> None:
    """Sessions finished while no archiver ran, archived together: each gets its retention
    TTL and ``stats.expired`` counts each (``x += await f()`` lost concurrent batches'
    increments: 2 of 4 here)."""
    b = Settings(redis_url=redis_url, buckets=8, spool_dir=tmp_path / "spool")
    url = f"sqlite://{tmp_path / 'archive.db'}"
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = [b.keys.session(sid) for sid in SIDS]
    try:
        async with running(archiver_settings(b, url)):
            await wait_for_async(
                lambda: client.hget(b.keys.config, "archive") == b"1", what="archive=1"
            )
        writer = ContinuousWriter(b)
        await wait_for_async(lambda: writer.steps >= 5, what="a few steps")
        await asyncio.to_thread(writer.stop)
        assert [client.pttl(k) for k in keys] == [-1] * len(SIDS)  # the archive is on
        async with running(archiver_settings(b, url)) as archiver:
            await wait_for_async(
                lambda: all(client.pttl(k) > 0 for k in keys), what="every retention TTL"
            )
            await wait_for_async(
                lambda: archiver.stats.expired == len(SIDS), what="each expiry counted"
            )
    finally:
        client.close()
