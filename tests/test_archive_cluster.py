"""The archiver on a real Redis Cluster (3 masters + 3 replicas): it archives every
session and the index once and in order; the archive flag it writes into every bucket's
``P:{B}:config`` keeps producers (and the HTTP publish) from trimming or expiring what is
not archived yet, also producers whose handshake saw no archive; with no archiver ever
run, a cluster trims and expires as before."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from producer import Producer
from relay._publish import append, body_digest
from rpa_bus import Settings
from rpa_bus.archive import open_store
from rpa_bus.redisio import async_client, close_async
from tests._cluster import LocalCluster
from tests.conftest import UNIT_S
from tests.test_archive import RPA_BUS, _stop, archived_ids, archiver_settings, running, wait_until

BUCKETS = 8
STEPS = 150  # progress events per session: a run is STEPS + 2 entries, over one
# stream node (100 entries), so an approximate MAXLEN of 10 would trim

pytestmark = pytest.mark.slow


def bus(cluster: LocalCluster, tmp_path: Path, prefix: str, **kw: Any) -> Settings:
    """Each test its own prefix: the module's cluster keeps the flags a test wrote."""
    return Settings(
        redis_url=cluster.url,
        prefix=prefix,
        buckets=BUCKETS,
        spool_dir=tmp_path / "spool",
        queue_max=100_000,
        **kw,
    )


def ids(rc: redis.RedisCluster, key: str) -> list[str]:
    return [i.decode() for i, _ in cast(list[tuple[bytes, Any]], rc.xrange(key))]


def run(p: Producer, sid: str, steps: int = STEPS) -> None:
    with p.session(sid, total=steps) as s:
        for step in range(1, steps + 1):
            s.progress(step)


def flags(rc: redis.RedisCluster, b: Settings) -> list[bytes | None]:
    keys = b.keys
    return [rc.hget(k, "archive") for k in [*keys.flag_keys(), keys.config]]


async def test_the_archiver_archives_sessions_on_a_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    b = bus(cluster, tmp_path, "ca1", maxlen=10, retention_s=60.0)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    sids = [f"s-{i}" for i in range(12)]  # spread over the buckets, so over every master
    slots = {cluster.master_of_key(b.keys.session(sid)) for sid in sids}
    assert len(slots) == 3
    async with running(archiver_settings(b, url, count=10)) as archiver:
        await wait_until(lambda: flags(rc, b) == [b"1"] * (BUCKETS + 2), 10, "flags")
        with Producer(settings=b) as p:
            for sid in sids:
                run(p, sid)
            assert p.flush(timeout_s=30 * UNIT_S)
        total = len(sids) * (STEPS + 2) + 2 * len(sids)  # + started/finished in the index
        await wait_until(lambda: archiver.stats.stored >= total, 30, "all archived")
        store = archiver.store
        for sid in sids:
            got = await archived_ids(store, f"session:{sid}")
            assert len(got) == STEPS + 2
            assert got == sorted(got, key=lambda i: tuple(map(int, i.split("-"))))
            # Stored, then trimmed by the archiver to about maxlen and expiring.
            key = b.keys.session(sid)
            await wait_until(lambda k=key: 0 < rc.pttl(k) <= 60_000, 10, "expiry")
            kept = ids(rc, key)
            assert len(kept) < STEPS + 2
            assert kept == got[-len(kept) :]
        index = ids(rc, b.keys.sessions)
        assert len(index) == 2 * len(sids)
        assert await archived_ids(store, "sessions") == index
        assert archiver.stats.stored == total  # once each
        assert archiver.stats.replayed == 0


async def test_nothing_is_trimmed_before_archive_on_a_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """A producer whose handshake saw no archive (it passes its cap and retention to the
    script) writes more than its cap while the archiver is stopped: the bucket's flag
    keeps every entry, and the archiver, once it runs, archives them all."""
    b = bus(cluster, tmp_path, "ca2", maxlen=10, retention_s=60.0)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    sids = [f"t-{i}" for i in range(6)]
    with Producer(settings=b) as p:
        run(p, "early", steps=3)  # the handshake: no archive yet
        assert p.flush(timeout_s=30 * UNIT_S)
        assert p._archive is False
        async with running(archiver_settings(b, url)):  # turns the archive on, then stops
            await wait_until(lambda: flags(rc, b) == [b"1"] * (BUCKETS + 2), 10, "on")
        assert p._archive is False  # still sends its cap: only the flag can stop the trim
        for sid in sids:
            await asyncio.to_thread(run, p, sid)
        assert await asyncio.to_thread(p.flush, timeout_s=30 * UNIT_S)
    for sid in sids:
        assert rc.xlen(b.keys.session(sid)) == STEPS + 2  # more than maxlen, none trimmed
        assert rc.pttl(b.keys.session(sid)) == -1
        assert rc.pttl(b.keys.meta(sid)) == -1
    index = ids(rc, b.keys.sessions)
    # The HTTP publish on the same cluster: its script reads the flag too.
    client = async_client(b)
    try:
        events = [{"type": "started", "ts": "2026-11-27T08:00:00.000Z"}] + [
            {"type": "log", "ts": "2026-11-27T08:00:00.001Z", "message": f"m{i}"}
            for i in range(STEPS)
        ]
        encoded = [orjson.dumps(e) for e in events]
        await append(client, keys=b.keys, settings=b, sid="http", events=cast(Any, events),
                     encoded=encoded, idempotency_key=None,
                     digest=body_digest(secrets.token_bytes(8)))  # fmt: skip
    finally:
        await close_async(client)
    assert rc.xlen(b.keys.session("http")) == STEPS + 1
    want = {f"session:{sid}": ids(rc, b.keys.session(sid)) for sid in [*sids, "early", "http"]}
    want["sessions"] = ids(rc, b.keys.sessions)
    assert len(want["sessions"]) == len(index) + 1
    async with running(archiver_settings(b, url, count=10)) as archiver:

        async def all_archived() -> bool:
            for stream, entry_ids in want.items():
                if await archived_ids(archiver.store, stream) != entry_ids:
                    return False
            return True

        # Everything Redis held, "early" stored by the first run too: nothing was lost.
        await wait_until(all_archived, 30, "every entry archived, once, in order")
        # Now stored, the archiver trims to about maxlen.
        key = b.keys.session(sids[0])
        await wait_until(lambda: rc.xlen(key) < STEPS + 2, 10, "trimmed after")


async def _archived_steps(store: Any, sid: str) -> list[int]:
    steps: list[int] = []
    after = None
    while True:
        page = await store.events(f"session:{sid}", after=after, limit=1000)
        for e in page.events:
            event = orjson.loads(e.data)
            if event["type"] == "progress":
                steps.append(int(event["step"]))
        if page.next is None:
            return steps
        after = page.next


async def test_turning_the_archive_on_while_producers_write_leaves_no_hole(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """The race of the archiver's start with appends in flight: producers (handshake
    without archive, cap 10) write on every master while the first archiver starts. What
    they trimmed before their bucket's flag is gone for good, but from the first entry
    the archive holds, every later one of the session is there: a trim after the flag
    would leave a hole in the middle."""
    b = bus(cluster, tmp_path, "ca5", maxlen=10, retention_s=60.0)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    sids = [f"r-{i}" for i in range(9)]
    steps = 600
    started = threading.Event()

    def write() -> None:
        with Producer(settings=b) as p:
            runs = [p.session(sid, total=steps) for sid in sids]
            for r in runs:
                r.start()
            for step in range(1, steps + 1):
                for r in runs:
                    r.progress(step)
                if step == 50:
                    assert p.flush(timeout_s=30 * UNIT_S)
                    assert p._archive is False
                    started.set()
                if step % 20 == 0:
                    time.sleep(0.01)  # spread the writes over the archiver's start
            for r in runs:
                r.finish()
            assert p.flush(timeout_s=60 * UNIT_S)

    writer = asyncio.create_task(asyncio.to_thread(write))
    await asyncio.to_thread(started.wait, 30 * UNIT_S)
    async with running(archiver_settings(b, url, count=50)) as archiver:
        await writer

        async def finished_archived() -> bool:
            for sid in sids:
                steps_got = await _archived_steps(archiver.store, sid)
                if not steps_got or steps_got[-1] != steps:
                    return False
            return True

        await wait_until(finished_archived, 60, "every session archived to its end")
        for sid in sids:
            got = await _archived_steps(archiver.store, sid)
            first = got[0]
            assert got == list(range(first, steps + 1)), f"{sid}: a hole after step {first}"


def test_a_cluster_without_an_archiver_trims_and_expires_as_before(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    b = bus(cluster, tmp_path, "ca3", maxlen=10, retention_s=60.0)
    with Producer(settings=b) as p:
        run(p, "plain", steps=200)
        assert p.flush(timeout_s=30 * UNIT_S)
    key = b.keys.session("plain")
    assert rc.xlen(key) < 202
    assert 0 < rc.pttl(key) <= 60_000
    assert 0 < rc.pttl(b.keys.meta("plain")) <= 60_000
    assert flags(rc, b) == [None] * (BUCKETS + 2)
    assert rc.exists(*b.keys.flag_keys()) == 0


async def test_the_archiver_command_runs_on_a_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """`rpa-bus archiver` on a ``redis+cluster://`` URL (it exited 2 before): it turns the
    archive on in every bucket and archives a session written meanwhile."""
    b = bus(cluster, tmp_path, "ca4")
    db = tmp_path / "archive.db"
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": cluster.url,
        "RPA_BUS_PREFIX": "ca4",
        "RPA_BUS_BUCKETS": str(BUCKETS),
        "RPA_BUS_ARCHIVE_URL": f"sqlite://{db}",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "RPA_BUS_ARCHIVER_BLOCK_MS": "200",
    }
    log = tmp_path / "archiver.log"
    proc = _spawn(env, log)
    try:
        await wait_until(lambda: flags(rc, b) == [b"1"] * (BUCKETS + 2), 20, "archive on")
        with Producer(settings=b) as p:
            run(p, "cli", steps=3)
            assert p.flush(timeout_s=30 * UNIT_S)
        want = ids(rc, b.keys.session("cli"))

        async def archived() -> bool:
            store = await open_store(f"sqlite://{db}")
            try:
                return await archived_ids(store, "session:cli") == want
            finally:
                await store.close()

        await wait_until(archived, 20, "the session archived by the command")
        assert proc.poll() is None
    finally:
        await asyncio.to_thread(_stop, proc)
    assert proc.returncode == 0, log.read_text(errors="replace")


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([RPA_BUS, "archiver"], env=env, stdout=out, stderr=out)
