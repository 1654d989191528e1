"""The archiver on a real Redis with real SQLite files and a real private PostgreSQL:
everything once and in order, no trim before archive, faults (SIGKILL, a second archiver
dying with entries pending, PostgreSQL stopped, Redis restarted) and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import Settings
from rpa_bus.archive import SCHEMA_VERSION, Row, Store, open_store
from rpa_bus.cli._embedded import EmbeddedRedis, free_port
from tests._postgres import LocalPostgres
from tests._wait import wait_for, wait_for_async
from tests.conftest import UNIT_S
from workers import EXPIRE_LUA, TRIM_LUA, Archiver, ArchiverSettings

BUCKETS = 8
RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")

pytestmark = pytest.mark.slow


def bus(url: str, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(
        redis_url=url, buckets=BUCKETS, spool_dir=tmp_path / "spool", queue_max=100_000, **kw
    )


def archiver_settings(b: Settings, archive_url: str, **kw: Any) -> ArchiverSettings:
    values: dict[str, Any] = {
        "claim_idle_ms": 1000,
        "block_ms": 200,
        "count": 200,
        "lag_interval_s": 0.1,
        "connect_timeout_s": 2.0,
    }
    values.update(kw)
    return ArchiverSettings(bus=b, archive_url=archive_url, **values)


def write_sessions(
    settings: Settings, sids: Sequence[str], steps: int, *, finish: bool = True
) -> None:
    """Run each session: started, ``steps`` progress events, finished (unless not)."""
    with Producer(settings=settings) as p:
        runs = [p.session(sid, total=steps) for sid in sids]
        for run in runs:
            run.start()
        for step in range(1, steps + 1):
            for run in runs:
                run.progress(step, f"step {step}")
        if finish:
            for run in runs:
                run.finish()
        assert p.flush(timeout_s=60 * UNIT_S)


async def wait_until(cond: Callable[[], Any], timeout_s: float, what: str) -> None:
    await wait_for_async(cond, what=what, timeout_s=timeout_s, interval_s=0.05)


def redis_ids(client: redis.Redis, key: str) -> list[str]:
    return [i.decode() for i, _ in client.xrange(key)]


async def archived_ids(store: Store, stream: str) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await store.events(stream, after=after, limit=1000)
        ids += [e.id for e in page.events]
        if page.next is None:
            return ids
        after = page.next


async def assert_archive_matches_redis(
    store: Store, client: redis.Redis, settings: Settings, sids: Sequence[str]
) -> None:
    """Every stream entry Redis holds is archived, once, in order (nothing more)."""
    for sid in sids:
        key = settings.keys.session(sid)
        want = redis_ids(client, key)
        got = await archived_ids(store, f"session:{sid}")
        assert got == want, f"session {sid}: archive {len(got)} vs Redis {len(want)}"
    assert await archived_ids(store, "sessions") == redis_ids(client, settings.keys.sessions)


@contextlib.asynccontextmanager
async def running(settings: ArchiverSettings) -> AsyncIterator[Archiver]:
    archiver = Archiver(settings)
    await archiver.open()
    task = asyncio.create_task(archiver.run())
    try:
        yield archiver
    finally:
        archiver.close()
        try:
            await asyncio.wait_for(task, 30 * UNIT_S)
        finally:
            await archiver.wait_closed()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield c
    finally:
        c.close()


async def stored(store_url: str, stream: str | None = None) -> int:
    s = await open_store(store_url)
    try:
        return await s.count(stream)
    finally:
        await s.close()


# ---------------------------------------------------------------------------------------


async def test_archives_everything_once_in_order_and_expires_finished_sessions(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    sids = [f"s{i}" for i in range(12)]
    async with running(archiver_settings(b, url)) as archiver:
        await wait_until(lambda: client.hget(b.keys.config, "archive") == b"1", 10, "archive=1")
        await asyncio.to_thread(write_sessions, b, sids, 40)
        total = 12 * 42 + 24  # 42 events per session, 2 index entries per session
        await wait_until(lambda: archiver.stats.stored >= total, 30, "all archived")
        await assert_archive_matches_redis(archiver.store, client, b, sids)
        assert archiver.stats.stored == total
        s0 = await archiver.store.session("s0")
        assert s0 is not None
        assert (s0.status, s0.step, s0.total, s0.percent) == ("finished", 40, 40, 100.0)
        # The producer did not expire them (archive on); the archiver did, once stored.
        await wait_until(
            lambda: all(client.pttl(b.keys.session(s)) > 0 for s in sids), 10, "retention TTL"
        )
        assert all(client.pttl(b.keys.meta(s)) > 0 for s in sids)
        await wait_until(lambda: archiver.stats.lag == 0, 10, "lag 0")


async def test_session_that_started_and_ended_with_no_archiver_running(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    await asyncio.to_thread(write_sessions, b, ["early-1", "early-2"], 25)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with running(archiver_settings(b, url)) as archiver:
        await wait_until(lambda: archiver.stats.stored >= 2 * 27 + 4, 30, "found and archived")
        await assert_archive_matches_redis(archiver.store, client, b, ["early-1", "early-2"])
        early = await archiver.store.session("early-2")
        assert early is not None
        assert early.status == "finished"


async def test_30000_events_with_maxlen_10000_none_lost_redis_not_trimmed_past_archive(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path, maxlen=10_000)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with running(archiver_settings(b, url)):
        await wait_until(lambda: client.hget(b.keys.config, "archive") == b"1", 10, "archive=1")
    # No archiver runs now: the producer (whose handshake saw archive=1) must not trim.
    await asyncio.to_thread(write_sessions, b, ["big"], 29_998)
    key = b.keys.session("big")
    everything = redis_ids(client, key)
    assert len(everything) == 30_000
    assert client.pttl(key) == -1  # not expired either: not archived yet
    async with running(archiver_settings(b, url, count=500)) as archiver:
        await wait_until(
            lambda: archiver.stats.stored >= 30_002, 120, "30,000 events and 2 index entries"
        )
        assert await archived_ids(archiver.store, "session:big") == everything
        assert await archiver.store.count("session:big") == 30_000
        # The archiver trimmed what it stored, keeping the newest maxlen for live replay.
        left = redis_ids(client, key)
        assert 10_000 <= len(left) <= 10_000 + 500
        assert left == everything[-len(left) :]
        await wait_until(lambda: client.pttl(key) > 0, 10, "retention TTL after archive")


async def test_two_archivers_split_and_a_dead_ones_pending_entries_move(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    gate = asyncio.Event()

    a = Archiver(archiver_settings(b, url, consumer="arch-a"))
    await a.open()
    real_put = a.store.put

    async def held_put(rows: Sequence[Row]) -> int:
        await gate.wait()  # arch-a takes entries, then hangs with them pending
        return await real_put(rows)

    a.store.put = held_put  # type: ignore[method-assign]
    a_task = asyncio.create_task(a.run())
    sids = [f"job-{i}" for i in range(24)]
    try:
        async with running(archiver_settings(b, url, consumer="arch-b")) as b_arch:

            def split() -> bool:
                sa, sb = a.group_stats, b_arch.group_stats
                return bool(sa and sb and sa.owned and sb.owned and sa.owned + sb.owned == 9)

            await wait_until(split, 20, "units split between the two")
            await asyncio.to_thread(write_sessions, b, sids, 10)
            total = 24 * 12 + 48
            await wait_until(lambda: b_arch.stats.stored > 0, 20, "arch-b stores")
            await wait_until(lambda: _pending(client, b, "arch-a") > 0, 20, "arch-a holding")
            assert a.stats.batches == 0
            held = _pending(client, b, "arch-a")
            # arch-a dies (a hard stop: nothing released, as after SIGKILL).
            a_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a_task
            await wait_until(lambda: b_arch.stats.stored >= total, 30, "arch-b stores it all")
            assert held > 0
            assert _pending(client, b, "arch-a") == 0
            await assert_archive_matches_redis(b_arch.store, client, b, sids)
    finally:
        a_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a_task
        await a.wait_closed()


def _pending(client: redis.Redis, b: Settings, consumer: str | None) -> int:
    """Entries pending in P:archiver over every session stream and the index, for
    ``consumer`` (None: for anyone)."""
    n = 0
    keys = [*client.scan_iter(match=f"{b.keys.prefix}:{{*}}:session:*", _type="stream")]
    for key in [*keys, b.keys.sessions]:
        with contextlib.suppress(redis.ResponseError):
            for c in client.xinfo_consumers(key, b.keys.worker_group("archiver")):
                if consumer is None or c["name"].decode() == consumer:
                    n += int(c["pending"])
    return n


async def test_two_archiver_processes_both_take_entries(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    ports = [free_port(), free_port()]
    procs = [
        _spawn(redis_url, tmp_path, "--archive-url", url, "--consumer", f"p{i}",
               "--claim-idle-ms", "1000", "--metrics-port", str(port))
        for i, port in enumerate(ports)
    ]  # fmt: skip
    try:
        await wait_until(lambda: _lease_holders(client) == {"p0", "p1"}, 30, "units split")
        sids = [f"multi-{i}" for i in range(32)]
        await asyncio.to_thread(write_sessions, b, sids, 10)
        total = 32 * 12 + 64
        await wait_until(lambda: _lag_zero_and_count(url, total), 60, "all archived")

        def counts() -> list[float]:
            return [_metric(port, "rpa_bus_archive_stored_entries_total") for port in ports]

        # A process counts a batch once its put returns, a moment after the commit that
        # the count above already sees (SQLite commits concurrent batches together).
        await wait_until(lambda: sum(counts()) == total, 10, "every stored entry counted")
        assert all(c > 0 for c in counts()), counts()
    finally:
        for p in procs:
            _stop(p)
    assert [p.returncode for p in procs] == [0, 0]  # SIGTERM: a clean stop


def _lease_holders(client: redis.Redis) -> set[str]:
    """Who holds the archiver's leases, once all 9 units (8 buckets, the index) are held."""
    leases = list(client.scan_iter(match="*:lease:archiver"))
    holders = {v.decode() for v in client.mget(leases) if v is not None} if leases else set()
    return holders if len(leases) == BUCKETS + 1 else set()


async def _lag_zero_and_count(url: str, total: int) -> bool:
    return await stored(url) >= total


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics:\n{body}")


def _spawn(redis_url: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_BUCKETS": str(BUCKETS),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "RPA_BUS_ARCHIVER_BLOCK_MS": "200",
        "RPA_BUS_ARCHIVER_COUNT": "100",
    }
    env.pop("RPA_BUS_ARCHIVE_URL", None)
    with (tmp_path / f"archiver-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen([RPA_BUS, "archiver", *args], env=env, stdout=log, stderr=log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_sigkill_mid_batch_loses_and_doubles_nothing(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """`rpa-bus archiver` SIGKILLed again and again while a producer writes, until kills
    have caught it with entries delivered but not acknowledged (mid-batch); then one more
    archiver drains: the archive equals Redis, every entry once."""
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    sids = [f"kill-{i}" for i in range(16)]
    stop = threading.Event()
    writer = asyncio.create_task(asyncio.to_thread(write_until, b, sids, stop))
    mid_batch = kills = 0
    try:
        while mid_batch < 2 and kills < 12:
            proc = _spawn(redis_url, tmp_path, "--archive-url", url, "--claim-idle-ms", "1000")
            before = _db_rows(tmp_path / "archive.db")
            await wait_until(
                lambda n=before: _db_rows(tmp_path / "archive.db") > n, 30, "this one storing"
            )
            await asyncio.sleep(0.1 * (kills % 4) * UNIT_S)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            mid_batch += _pending(client, b, None) > 0
        stop.set()
        await writer
        assert mid_batch >= 1, f"no kill of {kills} left entries pending"
        total = sum(client.xlen(b.keys.session(sid)) for sid in sids)
        total += client.xlen(b.keys.sessions)
        proc = _spawn(redis_url, tmp_path, "--archive-url", url, "--claim-idle-ms", "1000")
        try:
            await wait_until(lambda: _db_rows(tmp_path / "archive.db") >= total, 60, "all stored")
        finally:
            _stop(proc)
        store = await open_store(url)
        try:
            await assert_archive_matches_redis(store, client, b, sids)
            assert await store.count() == total  # once each: the key refuses a second copy
        finally:
            await store.close()
    finally:
        stop.set()
        if not writer.done():
            await writer


def write_until(settings: Settings, sids: Sequence[str], stop: threading.Event) -> None:
    """Start the sessions, then a step of each every 5 ms until ``stop``; finish them."""
    with Producer(settings=settings) as p:
        runs = [p.session(sid) for sid in sids]
        for run in runs:
            run.start()
        step = 0
        while not stop.wait(0.005):
            step += 1
            for run in runs:
                run.progress(step, f"step {step}")
        for run in runs:
            run.finish()
        assert p.flush(timeout_s=60 * UNIT_S)


def _db_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
            return int(c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def test_postgres_stopped_lag_grows_then_everything_is_stored(
    redis_url: str,
    client: redis.Redis,
    tmp_path: Path,
    postgres_url: str,
    postgres_server: LocalPostgres,
) -> None:
    b = bus(redis_url, tmp_path)
    async with running(archiver_settings(b, postgres_url, connect_timeout_s=1.0)) as archiver:
        await asyncio.to_thread(write_sessions, b, ["pg-1", "pg-2"], 20, finish=False)
        await wait_until(lambda: archiver.stats.stored >= 2 * 21 + 2, 30, "first part stored")
        postgres_server.stop()
        try:
            await asyncio.to_thread(write_sessions, b, ["pg-3"], 30)
            await wait_until(lambda: archiver.stats.store_errors > 0, 20, "the store failing")
            await wait_until(lambda: archiver.stats.lag >= 32, 20, "lag growing")
        finally:
            postgres_server.start()
        await wait_until(lambda: archiver.stats.stored >= 2 * 21 + 2 + 34, 60, "all stored")
        await assert_archive_matches_redis(archiver.store, client, b, ["pg-1", "pg-2", "pg-3"])
        await wait_until(lambda: archiver.stats.lag == 0, 10, "lag back to 0")


async def test_redis_restart_mid_run(
    redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with running(archiver_settings(b, url)) as archiver:
        await asyncio.to_thread(write_sessions, b, ["r-1"], 30)
        await wait_until(lambda: archiver.stats.stored >= 34, 30, "before the restart")
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(0.5 * UNIT_S)
        await asyncio.to_thread(redis_server.start)
        await asyncio.to_thread(write_sessions, b, ["r-2"], 30)
        await wait_until(lambda: archiver.stats.stored >= 68, 60, "after the restart")
        c = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            await assert_archive_matches_redis(archiver.store, c, b, ["r-1", "r-2"])
        finally:
            c.close()


# -- the command line: bad input, prune, status --------------------------------------


def _cli(
    *args: str, redis_url: str, tmp_path: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_BUCKETS": str(BUCKETS),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    env.pop("RPA_BUS_ARCHIVE_URL", None)
    return subprocess.run(
        [RPA_BUS, *args], capture_output=True, text=True, timeout=timeout * UNIT_S, env=env
    )


def test_unknown_archive_url_scheme_exits_2(redis_url: str, tmp_path: Path) -> None:
    run = _cli("archiver", "--archive-url", "mysql://u:pw@h/db", redis_url=redis_url,
               tmp_path=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert "unknown archive URL scheme" in run.stderr
    assert "pw@" not in run.stderr


def test_unreachable_database_at_start_up_exits_2(redis_url: str, tmp_path: Path) -> None:
    url = f"postgresql://rpa:secret@127.0.0.1:{free_port()}/x"
    run = _cli("archiver", "--archive-url", url, redis_url=redis_url, tmp_path=tmp_path)
    assert run.returncode == 2
    assert "cannot reach the archive database" in run.stderr
    assert "secret" not in run.stderr


def test_store_with_newer_schema_is_refused_untouched(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    asyncio.run(_close(open_store(f"sqlite://{path}")))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    run = _cli("archiver", "--archive-url", f"sqlite://{path}", redis_url=redis_url,
               tmp_path=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert "newer than this rpa-bus understands" in run.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.glob("new.db*")) == ["new.db"]


async def _close(opening: Any) -> None:
    await (await opening).close()


async def test_prune_command_and_status_lag(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with running(archiver_settings(b, url)):
        await wait_until(lambda: client.hget(b.keys.config, "archive") == b"1", 10, "archive=1")
    # No archiver runs: what is written now is the archive's lag.
    await asyncio.to_thread(write_sessions, b, ["lagging"], 8)
    run = await asyncio.to_thread(_cli, "status", "--json", redis_url=redis_url, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    archive = orjson.loads(run.stdout)["archive"]
    assert archive["on"] is True
    assert archive["lag"] == 10 + 2  # the session's 10 events and its 2 index entries
    text = await asyncio.to_thread(_cli, "status", redis_url=redis_url, tmp_path=tmp_path)
    assert "archive   lag 12 entries in 2 of 2 streams" in text.stdout

    old = Archiver(archiver_settings(b, url))
    await old.open()
    await old.store.put([_old_row()])
    await old.wait_closed()
    run = await asyncio.to_thread(
        _cli, "archiver", "prune", "--older-than", "30", "--archive-url", url,
        redis_url=redis_url, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "pruned 1 events older than 30 days" in run.stdout
    assert await stored(url, "session:ancient") == 0


def _old_row() -> Row:
    from rpa_bus import now_ts
    from rpa_bus.archive import Record

    ms = int((time.time() - 90 * 86_400) * 1000)
    return Record(
        "session:ancient", "e", f"{ms}-0", orjson.dumps({"type": "started", "ts": now_ts()})
    )


def test_producer_with_the_archive_on_neither_trims_nor_expires(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """P:config archive=1 (set by an archiver): the append script leaves trimming and
    expiry to it, from the next call on, also in a producer that was running already."""
    b = bus(redis_url, tmp_path, maxlen=10, retention_s=60.0)

    def run(p: Producer, sid: str) -> str:
        with p.session(sid, total=200) as s:
            for step in range(1, 201):
                s.progress(step)
        assert p.flush(timeout_s=30 * UNIT_S)
        return b.keys.session(sid)

    with Producer(settings=b) as p:
        capped = run(p, "before")  # no archive yet: capped (approximately) and expiring
        assert client.xlen(capped) < 202
        assert 0 < client.pttl(capped) <= 60_000
        client.hset(b.keys.config, "archive", "1")
        kept = run(p, "kept")
        assert client.xlen(kept) == 202
        assert client.pttl(kept) == -1
        assert client.pttl(b.keys.meta("kept")) == -1
        client.hdel(b.keys.config, "archive")  # turned off: capped and expiring again
        again = run(p, "after")
        assert client.xlen(again) < 202
        assert 0 < client.pttl(again) <= 60_000


async def test_metrics_port_serves_the_lag_gauge(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with running(archiver_settings(b, url, metrics_port=0)) as archiver:
        assert archiver.metrics_port
        await asyncio.to_thread(write_sessions, b, ["m-1"], 5)
        await wait_until(lambda: archiver.stats.stored >= 9, 20, "archived")
        port = archiver.metrics_port
        await wait_until(
            lambda: _metric(port, "rpa_bus_archive_stored_entries_total") == 9, 10, "counter"
        )
        await wait_until(lambda: _metric(port, "rpa_bus_archive_lag_entries") == 0, 10, "lag 0")


def test_trim_keeps_maxlen_and_everything_not_yet_acknowledged(client: redis.Redis) -> None:
    trim = client.register_script(TRIM_LUA)
    ids = [client.xadd("s", {"e": b"x"}).decode() for _ in range(30)]
    # Each call answers [trimmed, room]: room is maxlen minus the length after.
    # The batch being stored starts at entry 15: only the 14 before it may go.
    assert trim(keys=["s"], args=[ids[14], 10, 1000]) == [14, -6]
    assert redis_ids(client, "s") == ids[14:]
    # Now the batch starts at entry 28: the newest 10 stay (excess 6), at most `cap` go.
    assert trim(keys=["s"], args=[ids[28], 10, 4]) == [4, -2]
    assert trim(keys=["s"], args=[ids[28], 10, 1000]) == [2, 0]
    assert redis_ids(client, "s") == ids[20:]
    assert trim(keys=["s"], args=[ids[29], 10, 1000]) == [0, 0]  # never below maxlen
    assert trim(keys=["s"], args=[ids[29], 25, 1000]) == [0, 15]  # room for 15 more
    # Longer than maxlen, but nothing before the batch to cut.
    assert trim(keys=["s"], args=[ids[20], 5, 1000]) == [0, -5]


def test_expire_only_when_the_terminal_entry_is_still_the_last(client: redis.Redis) -> None:
    expire = client.register_script(EXPIRE_LUA)
    client.hset("s:meta", "status", "finished")
    done = client.xadd("s", {"e": b"finished"}).decode()
    client.xadd("s", {"e": b"started again"})  # a new run began before the archiver got here
    assert expire(keys=["s", "s:meta"], args=[done, 60_000]) == 0
    assert client.pttl("s") == -1
    last = client.xadd("s", {"e": b"finished"}).decode()
    assert expire(keys=["s", "s:meta"], args=[last, 60_000]) == 1
    assert 0 < client.pttl("s") <= 60_000
    assert 0 < client.pttl("s:meta") <= 60_000


def run_job(
    settings: Settings, sid: str, job: str, *, learned: bool = False
) -> list[dict[str, Any]]:
    """One run of ``job`` with three steps; returns the events its producer wrote.
    ``learned``: wait until the producer holds the job's profile before the steps."""
    with Producer(settings=settings) as p:
        with p.session(sid, job=job, total=3) as s:
            if learned:
                wait_for(lambda: p.profile(job), what="the producer reading the profile")
            for n in (1, 2, 3):
                with s.step(n, f"Screen {n}"):
                    pass
        assert p.flush(timeout_s=10 * UNIT_S)
    c = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        entries: Any = c.xrange(settings.keys.session(sid))
        return [orjson.loads(f[b"e"]) for _, f in entries]
    finally:
        c.close()


async def test_a_finished_run_teaches_the_next_runs_eta(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    key = b.keys.job_profile("robot")
    async with running(archiver_settings(b, url)) as archiver:
        await wait_until(lambda: client.hget(b.keys.config, "archive") == b"1", 10, "archive=1")
        first = await asyncio.to_thread(run_job, b, "run-1", "robot")
        assert {e.get("eta_runs") for e in first if "eta_s" in e} == {0}  # no history: pace
        await wait_until(lambda: client.get(key), 10, "the job's profile in Redis")
        profile = orjson.loads(client.get(key) or b"")
        assert profile["runs"] == 1
        assert sorted(profile["typical_s"]) == ["1", "2", "3"]
        assert 0 < client.ttl(key) <= 30 * 86_400
        assert archiver.stats.profiles >= 1
        summary = await archiver.store.job("robot")
        assert summary is not None
        assert (summary.runs, summary.succeeded) == (1, 1)
        # A new producer reads the profile when the run starts: the ETA rests on 1 run.
        second = await asyncio.to_thread(run_job, b, "run-2", "robot", learned=True)
        assert {e.get("eta_runs") for e in second if "eta_s" in e} == {1}


async def test_a_stream_below_maxlen_is_checked_for_trimming_once_per_maxlen_entries(
    redis_url: str, tmp_path: Path
) -> None:
    """The sink trims while it stores, but a stream that had room at its last check is not
    checked again until the entries given since could have filled that room: most
    sessions never reach maxlen, and cost a trim call per maxlen entries, not per batch.
    One over maxlen is checked (and cut back) at every batch."""
    import redis.asyncio as aredis

    from rpa_bus.redisio import Entry
    from workers import ArchiverStats, ArchiveSink

    sync = redis.Redis.from_url(redis_url)
    client = aredis.Redis.from_url(redis_url)
    store = await open_store(f"sqlite://{tmp_path / 'a.db'}")

    async def feed(maxlen: int, sid: str, entries: int, per: int) -> tuple[list[str], int]:
        """``entries`` in the stream, given to a sink in batches of ``per``: the trim
        calls (the batch's first id each) and the stream's length after."""
        b = bus(redis_url, tmp_path, maxlen=maxlen)
        key = b.keys.session(sid)
        ids = [sync.xadd(key, {"e": b"{}"}).decode() for _ in range(entries)]
        stats = ArchiverStats()
        sink = ArchiveSink(store, client, b, stats)
        calls: list[str] = []
        real_trim = sink._trim

        async def counted(*, keys: list[str], args: list[Any]) -> Any:
            calls.append(str(args[0]))
            return await real_trim(keys=keys, args=args)

        sink._trim = counted  # type: ignore[method-assign]
        for start in range(0, entries, per):
            await sink.put(
                [Entry(f"session:{sid}", key, "e1", i, b"{}") for i in ids[start : start + per]]
            )
        length = int(sync.xlen(key))
        assert stats.trimmed == entries - length
        return calls, length

    try:
        # 40 entries, maxlen 1,000: room for 960 more at the first check, none after.
        calls, length = await feed(1_000, "short", 40, 5)
        assert len(calls) == 1
        assert length == 40
        # 120 entries, maxlen 50: over it from the first batch, checked at every batch
        # and cut back to maxlen (only entries before the batch being stored go).
        calls, length = await feed(50, "long", 120, 10)
        assert len(calls) == 12
        assert length == 50
    finally:
        await store.close()
        await client.aclose()
        sync.close()
