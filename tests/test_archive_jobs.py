"""The job view in the archive store, on real SQLite files and a real private PostgreSQL:
runs and their step durations recorded as sessions end, job summaries, the learned step
profile, the schema 1 -> 2 migration, and bad input."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpa_bus import InvalidInput, now_ts
from rpa_bus.archive import SCHEMA_VERSION, Record, Store, open_store
from rpa_bus.archive._store import _PG_MIGRATIONS, _SQLITE_MIGRATIONS
from tests._postgres import LocalPostgres
from tests.test_archive_store import archive_url, store

# Shared fixtures: each test runs on SQLite and on PostgreSQL.
__all__ = ["archive_url", "store"]


class Run:
    """Builds one run's rows: a clock in ms, events at chosen offsets."""

    def __init__(self, sid: str, ms0: int, epoch: str = "e1") -> None:
        self.sid, self.ms, self.epoch = sid, ms0, epoch
        self.rows: list[Record] = []

    def add(self, kind: str, after_ms: int = 0, **fields: Any) -> Run:
        self.ms += after_ms
        data = orjson.dumps({"type": kind, "ts": now_ts(self.ms / 1000), **fields})
        self.rows.append(Record(f"session:{self.sid}", self.epoch, f"{self.ms}-0", data))
        return self

    def step(self, n: int, seconds: float, outcome: str = "ok", attempt: int = 1) -> Run:
        ms = int(seconds * 1000)
        self.add("step", 0, step=n, phase="start", attempt=attempt, message=f"Screen {n}")
        return self.add(
            "step", ms, step=n, phase="end", attempt=attempt, outcome=outcome, duration_s=seconds
        )


def quote_run(sid: str, ms0: int, speed: float, *, fail: bool = False) -> Run:
    run = Run(sid, ms0).add("started", job="quote-robot", total=3)
    run.step(1, 1.0 * speed).step(2, 2.0 * speed, "retried").step(2, 3.0 * speed, attempt=2)
    if fail:
        return run.step(3, 0.5, "failed").add("failed", 1, error="no quote")
    return run.step(3, 10.0 * speed).add("finished", 1)


async def test_jobs_summary_and_profile(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 3_600_000
    for i, speed in enumerate((1.0, 1.2, 0.8)):
        await store.put(quote_run(f"q-{i}", ms0 + i * 100_000, speed).rows)
    await store.put(quote_run("q-bad", ms0 + 400_000, 1.0, fail=True).rows)
    await store.put(Run("other-1", ms0).add("started", total=2).add("finished", 5).rows)

    [summary] = [s.as_dict() for s in await store.jobs()]
    assert summary["job"] == "quote-robot"
    assert (summary["runs"], summary["succeeded"], summary["failed"]) == (4, 3, 1)
    assert summary["success_rate"] == 0.75
    assert summary["runs_today"] in (0, 4)  # an hour ago may be yesterday, just after 00:00
    # Runs take 16 s x speed (+1 ms): the median is the speed-1.0 run, p90 the slowest.
    assert summary["median_s"] == pytest.approx(16.0, abs=0.01)
    assert summary["p90_s"] == pytest.approx(19.2, abs=0.01)
    assert summary["slowest_step"] == {"step": 3, "name": "Screen 3", "median_s": 10.0}
    assert "profile" not in summary

    one = await store.job("quote-robot")
    assert one is not None
    assert one.profile is not None
    assert one.profile["runs"] == 3
    # A step's time counts every attempt: step 2 is 2 s (retried) + 3 s.
    assert one.profile["typical_s"] == {"1": 1.0, "2": 5.0, "3": 10.0}
    profile = await store.profile("quote-robot")
    assert profile.runs == 3
    assert profile.typical_s[2] == 5.0
    assert await store.job("nobody") is None
    assert (await store.profile("nobody")).runs == 0

    session = await store.session("q-0")
    assert session is not None
    assert session.job == "quote-robot"


async def test_runs_split_over_batches_and_replays_count_once(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 60_000
    rows = quote_run("q-split", ms0, 1.0).rows
    for cut in (0, 3, 5, 9):  # each batch a replay of the previous one plus new rows
        await store.put(rows[: cut + 2])
    await store.put(rows)
    await store.put(rows)
    summary = await store.job("quote-robot")
    assert summary is not None
    assert summary.runs == 1
    assert summary.profile is not None
    assert summary.profile["typical_s"] == {"1": 1.0, "2": 5.0, "3": 10.0}


async def test_progress_only_runs_learn_from_entry_times(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 60_000
    run = Run("p-1", ms0).add("started", job="pacer", total=3)
    run.add("progress", 2000, step=1, total=3).add("progress", 500, step=2, total=3)
    run.add("progress", 4000, step=3, total=3).add("finished", 1)
    await store.put(run.rows)
    summary = await store.job("pacer")
    assert summary is not None
    assert summary.profile is not None
    assert summary.profile["typical_s"] == {"1": 2.0, "2": 0.5, "3": 4.0}
    assert summary.slowest_step == {"step": 3, "name": None, "median_s": 4.0}


async def test_a_run_joined_midway_is_not_counted(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 60_000
    run = Run("mid", ms0).add("progress", 0, step=2, total=3).add("finished", 10)
    await store.put(run.rows)
    assert await store.jobs() == []


async def test_eta_basis_folds_into_the_session(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 60_000
    run = Run("eta-1", ms0).add("started", job="j", total=3)
    run.add("progress", 100, step=1, total=3, eta_s=12.5, eta_runs=7)
    await store.put(run.rows)
    s = await store.session("eta-1")
    assert s is not None
    assert (s.job, s.eta_s, s.eta_runs) == ("j", 12.5, 7)
    assert s.as_dict()["eta_runs"] == 7


async def test_bad_job_names_are_refused(store: Store) -> None:
    for bad in ("", "a b", "x" * 129):
        with pytest.raises(InvalidInput, match="job"):
            await store.job(bad)


async def test_prune_drops_old_runs(store: Store) -> None:
    old = int(time.time() * 1000) - 3 * 86_400_000
    await store.put(quote_run("old", old, 1.0).rows)
    await store.put(quote_run("new", int(time.time() * 1000) - 60_000, 1.0).rows)
    await store.prune(older_than_s=86_400)
    [summary] = await store.jobs()
    assert summary.runs == 1


async def test_sqlite_schema_1_migrates_to_2_keeping_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for statement in _SQLITE_MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
    conn.execute(
        "INSERT INTO sessions (session, epoch, status, updated) "
        "VALUES ('old', 'e0', 'finished', '2026-01-01T00:00:00.000Z')"
    )
    conn.close()
    store = await open_store(f"sqlite://{path}")
    try:
        assert await store.schema_version() == SCHEMA_VERSION == 3
        old = await store.session("old")
        assert old is not None
        assert (old.status, old.job, old.eta_runs) == ("finished", None, None)
        await store.put(quote_run("after", int(time.time() * 1000) - 60_000, 1.0).rows)
        assert [s.job for s in await store.jobs()] == ["quote-robot"]
    finally:
        await store.close()


async def test_postgres_schema_1_migrates_to_2_keeping_data(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    db = postgres_url.rsplit("/", 1)[1]
    postgres_server.psql(
        "DROP TABLE IF EXISTS events, sessions, runs, schema_version; "
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL); "
        + "; ".join(_PG_MIGRATIONS[0])
        + "; INSERT INTO schema_version VALUES (1, 'then'); "
        "INSERT INTO sessions (session, epoch, status, updated) "
        "VALUES ('old', 'e0', 'finished', '2026-01-01T00:00:00.000Z')",
        db,
    )
    store = await open_store(postgres_url)
    try:
        assert await store.schema_version() == SCHEMA_VERSION == 3
        old = await store.session("old")
        assert old is not None
        assert (old.status, old.job) == ("finished", None)
        await store.put(quote_run("after", int(time.time() * 1000) - 60_000, 1.0).rows)
        assert [s.job for s in await store.jobs()] == ["quote-robot"]
    finally:
        await store.close()
