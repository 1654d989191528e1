"""Automatic archive retention (``--retention-days`` / ``RPA_BUS_ARCHIVE_RETENTION_DAYS``):
a running archiver prunes what is older, again and again, and keeps what is recent; and
``RPA_BUS_ARCHIVE_URL`` alone configures ``rpa-bus archiver``. Real Redis, real SQLite
files, the archiver in-process and as the command operators run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import Settings, now_ts
from rpa_bus.archive import Record, open_store
from tests._wait import wait_for, wait_for_async
from tests.conftest import UNIT_S
from tests.test_archive import archiver_settings, running

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")
DAY_MS = 86_400_000

pytestmark = pytest.mark.slow


def rows(sid: str, n: int, *, days_ago: float) -> list[Record]:
    """``n`` events of session ``sid`` whose ids (the archive's clock) are ``days_ago`` old."""
    ms0 = int(time.time() * 1000 - days_ago * DAY_MS)
    kinds = ["started", *["log"] * (n - 1)]
    return [
        Record(
            f"session:{sid}",
            "e",
            f"{ms0 + i}-0",
            orjson.dumps({"type": kind, "ts": now_ts((ms0 + i) / 1000), "message": f"m{i}"}),
        )
        for i, kind in enumerate(kinds)
    ]


async def put(url: str, records: Sequence[Record]) -> None:
    store = await open_store(url)
    try:
        assert await store.put(records) == len(records)
    finally:
        await store.close()


async def counts(url: str, *streams: str) -> list[int]:
    store = await open_store(url)
    try:
        return [await store.count(s) for s in streams]
    finally:
        await store.close()


def write_session(settings: Settings, sid: str, steps: int) -> None:
    with Producer(settings=settings) as p:
        with p.session(sid, total=steps) as s:
            for step in range(1, steps + 1):
                s.progress(step)
        assert p.flush(timeout_s=30 * UNIT_S)


async def test_a_running_archiver_prunes_old_events_every_interval_and_keeps_recent_ones(
    redis_url: str, tmp_path: Path
) -> None:
    b = Settings(redis_url=redis_url, spool_dir=tmp_path / "spool")
    url = f"sqlite://{tmp_path / 'archive.db'}"
    await put(url, rows("ancient", 30, days_ago=40) + rows("recent", 20, days_ago=2))
    settings = archiver_settings(b, url, retention_days=10.0, prune_interval_s=0.2)
    async with running(settings) as archiver:
        store = archiver.store
        await wait_for_async(
            lambda: _count_is(store, "session:ancient", 0), what="the first prune", timeout_s=20
        )
        assert await store.count("session:recent") == 20
        assert await store.session("ancient") is None
        # A later prune, not only the one at start-up: old rows that arrive now go too.
        await store.put(rows("late", 5, days_ago=11))
        assert await store.count("session:late") == 5
        await wait_for_async(
            lambda: _count_is(store, "session:late", 0), what="a later prune", timeout_s=20
        )
        # What the archiver stores meanwhile (live, so recent) stays.
        await asyncio.to_thread(write_session, b, "live", 5)
        await wait_for_async(
            lambda: _count_is(store, "session:live", 7), what="the live session archived",
            timeout_s=30,
        )  # fmt: skip
        await store.put(rows("later", 3, days_ago=10.5))
        await wait_for_async(
            lambda: _count_is(store, "session:later", 0), what="a third prune", timeout_s=20
        )
        assert await store.count("session:recent") == 20
        assert await store.count("session:live") == 7
        recent = await store.session("recent")
        assert recent is not None


async def _count_is(store: object, stream: str, n: int) -> bool:
    return bool(await store.count(stream) == n)  # type: ignore[attr-defined]


async def test_without_retention_nothing_is_pruned(redis_url: str, tmp_path: Path) -> None:
    """The same archiver with no retention (the default) keeps even ancient events: the
    test above would notice a prune that ran whatever the setting."""
    b = Settings(redis_url=redis_url, spool_dir=tmp_path / "spool")
    url = f"sqlite://{tmp_path / 'archive.db'}"
    await put(url, rows("ancient", 10, days_ago=4000))
    async with running(archiver_settings(b, url, prune_interval_s=0.05)) as archiver:
        await asyncio.to_thread(write_session, b, "marker", 2)
        await wait_for_async(
            lambda: _count_is(archiver.store, "session:marker", 4), what="archived", timeout_s=30
        )
        assert await archiver.store.count("session:ancient") == 10


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": os.environ.get("HOME", "/tmp"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "RPA_BUS_REDIS_URL": redis_url,
    }
    env.update(extra)
    return env


@pytest.mark.parametrize("how", ["option", "environment"])
def test_archiver_command_with_retention_and_the_archive_url_from_the_environment(
    redis_url: str, tmp_path: Path, how: str
) -> None:
    """``rpa-bus archiver`` with only ``RPA_BUS_ARCHIVE_URL`` set (no --archive-url) archives
    into that store, not the state folder's default; with retention (the option or its
    variable) it prunes old events at start-up and keeps recent ones; SIGTERM exits 0."""
    path = tmp_path / "from-env" / "archive.db"
    url = f"sqlite://{path}"
    asyncio.run(put(url, rows("ancient", 25, days_ago=45) + rows("recent", 15, days_ago=1)))
    args = [RPA_BUS, "archiver"]
    extra = {"RPA_BUS_ARCHIVE_URL": url}
    if how == "option":
        args += ["--retention-days", "30"]
    else:
        extra["RPA_BUS_ARCHIVE_RETENTION_DAYS"] = "30"
    log = tmp_path / "archiver.log"
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=_env(redis_url, tmp_path, **extra), stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def output() -> str:
            return log.read_text(errors="replace")[-3000:]

        def alive() -> bool:
            assert proc.poll() is None, f"archiver exited {proc.returncode}: {output()}"
            return True

        wait_for(
            lambda: alive() and client.hget(Settings().keys.config, "archive") == b"1",
            what="archive=1 in the bus's config hash",
            timeout_s=20,
        )
        wait_for(
            lambda: stored(url, "session:ancient") == [0],
            what="the ancient session pruned", timeout_s=20, interval_s=0.1,
        )  # fmt: skip
        assert stored(url, "session:recent") == [15]
        write_session(Settings(redis_url=redis_url, spool_dir=tmp_path / "spool"), "env-url", 3)
        wait_for(
            lambda: stored(url, "session:env-url") == [5],
            what="the session archived into RPA_BUS_ARCHIVE_URL", timeout_s=30, interval_s=0.1,
        )  # fmt: skip
        assert "archiving into sqlite://" in output()
        assert not (tmp_path / "state" / "rpa-bus" / "archive.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15 * UNIT_S) == 0, output()
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stored(url, "session:ancient", "session:recent") == [0, 15]


def stored(url: str, *streams: str) -> list[int]:
    return asyncio.run(counts(url, *streams))
