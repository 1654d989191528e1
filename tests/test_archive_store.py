"""The archive store on real SQLite files and a real private PostgreSQL: writes (idempotent
on stream, epoch, id), folded session state, the read API the relay's history and session
list need, migrations, retention pruning and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpa_bus import ConfigError, InvalidOffset, InvalidStreamName, now_ts
from rpa_bus.archive import (
    SCHEMA_VERSION,
    ArchiveUnavailable,
    Record,
    SchemaTooNew,
    Store,
    open_store,
    parse_archive_url,
)
from rpa_bus.archive._store import _FOLD_THREAD_ROWS
from tests._postgres import LocalPostgres
from tests._wait import wait_for_async


def env(kind: str, ts: str, **fields: object) -> bytes:
    return orjson.dumps({"type": kind, "ts": ts, **fields})


def session_rows(
    sid: str, n: int, *, epoch: str = "e1", ms0: int = 1_700_000_000_000
) -> list[Record]:
    """A whole run of ``n`` events: started, n-2 progress, finished."""
    rows = [Record(f"session:{sid}", epoch, f"{ms0}-0", env("started", now_ts(ms0 / 1000)))]
    for i in range(1, n - 1):
        ms = ms0 + i
        rows.append(
            Record(
                f"session:{sid}",
                epoch,
                f"{ms}-0",
                env("progress", now_ts(ms / 1000), step=i, total=n - 2, message=f"step {i}"),
            )
        )
    ms = ms0 + n - 1
    rows.append(Record(f"session:{sid}", epoch, f"{ms}-0", env("finished", now_ts(ms / 1000))))
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'archive' / 'archive.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(archive_url: str) -> AsyncIterator[Store]:
    s = await open_store(archive_url)
    try:
        yield s
    finally:
        await s.close()


async def test_put_is_idempotent_and_pages_read_in_id_order(store: Store) -> None:
    rows = session_rows("quote-1", 250)
    assert await store.put(rows[:100]) == 100
    assert await store.put(rows[:150]) == 50  # a replayed batch plus new rows
    assert await store.put(rows) == 100
    assert await store.count("session:quote-1") == 250

    seen: list[str] = []
    after = None
    while True:
        page = await store.events("session:quote-1", after=after, limit=64)
        assert page.first == rows[0].id
        assert page.last == rows[-1].id
        assert page.epoch == "e1"
        seen += [e.id for e in page.events]
        if page.next is None:
            break
        after = page.next
    assert seen == [r.id for r in rows]
    assert [e.data for e in (await store.events("session:quote-1", limit=3)).events] == [
        r.data for r in rows[:3]
    ]

    back = await store.events("session:quote-1", before=rows[10].id, limit=5, order="desc")
    assert [e.id for e in back.events] == [r.id for r in reversed(rows[5:10])]
    assert back.next == rows[5].id
    window = await store.events("session:quote-1", after=rows[0].id, before=rows[3].id)
    assert [e.id for e in window.events] == [rows[1].id, rows[2].id]
    assert window.next is None

    empty = await store.events("session:nobody")
    assert (empty.events, empty.first, empty.last, empty.epoch, empty.next) == (
        [],
        None,
        None,
        None,
        None,
    )


async def test_same_id_in_another_epoch_is_another_row(store: Store) -> None:
    a = Record("session:s", "e1", "5-0", env("started", now_ts(1)))
    b = Record("session:s", "e2", "5-0", env("started", now_ts(2)))
    assert await store.put([a]) == 1
    assert await store.put([b]) == 1
    assert await store.put([a, b]) == 0
    assert await store.count("session:s") == 2


async def test_folded_state_and_session_list(store: Store) -> None:
    ms0 = int(time.time() * 1000) - 60_000
    await store.put(session_rows("quote-a", 12, ms0=ms0))
    running = [
        Record("session:quote-b", "eb", f"{ms0 + 100}-0", env("started", now_ts(ms0 / 1000 + 0.1))),
        Record(
            "session:quote-b",
            "eb",
            f"{ms0 + 200}-0",
            env("progress", now_ts(ms0 / 1000 + 0.2), step=3, total=15, message="Screen 3"),
        ),
    ]
    await store.put(running)
    failed = [
        Record("session:job-c", "ec", f"{ms0 + 300}-0", env("started", now_ts(ms0 / 1000 + 0.3))),
        Record(
            "session:job-c",
            "ec",
            f"{ms0 + 400}-0",
            env("failed", now_ts(ms0 / 1000 + 0.4), error="captcha"),
        ),
    ]
    await store.put(failed)
    await store.put(failed)  # replayed: state unchanged

    a = await store.session("quote-a")
    assert a is not None
    assert (a.status, a.step, a.total, a.percent, a.eta_s) == ("finished", 10, 10, 100.0, 0.0)
    assert a.first == f"{ms0}-0"
    assert a.last == f"{ms0 + 11}-0"
    assert a.epoch == "e1"
    assert a.started == now_ts(ms0 / 1000)
    b = await store.session("quote-b")
    assert b is not None
    assert (b.status, b.step, b.message) == ("running", 3, "Screen 3")
    c = await store.session("job-c")
    assert c is not None
    assert (c.status, c.error) == ("failed", "captcha")

    listed = await store.sessions()
    assert [s.session for s in listed.sessions] == ["job-c", "quote-b", "quote-a"]
    assert [s.session for s in (await store.sessions(status="running")).sessions] == ["quote-b"]
    assert [s.session for s in (await store.sessions(q="QUOTE")).sessions] == [
        "quote-b",
        "quote-a",
    ]
    assert [s.session for s in (await store.sessions(q="captcha")).sessions] == ["job-c"]
    assert [s.session for s in (await store.sessions(q="100%")).sessions] == []
    since = now_ts(ms0 / 1000 + 0.35)
    assert [s.session for s in (await store.sessions(since=since)).sessions] == ["job-c"]

    first = await store.sessions(limit=2)
    assert [s.session for s in first.sessions] == ["job-c", "quote-b"]
    assert first.next
    rest = await store.sessions(limit=2, cursor=first.next)
    assert [s.session for s in rest.sessions] == ["quote-a"]
    assert rest.next is None
    with pytest.raises(InvalidOffset):
        await store.sessions(cursor="not-a-cursor")


async def test_index_entries_name_sessions_without_overriding_their_own_state(
    store: Store,
) -> None:
    ms0 = 1_700_000_000_000
    await store.put(session_rows("known", 4, ms0=ms0))
    index = [
        Record("sessions", "", f"{ms0}-0", orjson.dumps({"type": "started", "session": "known",
                                                        "ts": now_ts(ms0 / 1000)})),
        Record("sessions", "", f"{ms0 + 5}-0", orjson.dumps({"type": "started",
               "session": "gone", "ts": now_ts(ms0 / 1000 + 0.005)})),
    ]  # fmt: skip
    await store.put(index)
    known = await store.session("known")
    gone = await store.session("gone")
    assert known is not None
    assert known.status == "finished"
    assert gone is not None
    assert gone.status == "running"
    assert gone.first is None
    assert await store.count("sessions") == 2


async def test_new_epoch_starts_a_new_history_in_the_folded_state(store: Store) -> None:
    await store.put(session_rows("reused", 5, epoch="old", ms0=1_700_000_000_000))
    await store.put(
        [Record("session:reused", "new", "1700000009000-0", env("started", now_ts(1_700_000_009)))]
    )
    s = await store.session("reused")
    assert s is not None
    assert (s.epoch, s.status, s.first, s.last) == (
        "new",
        "running",
        "1700000009000-0",
        "1700000009000-0",
    )


async def test_prune_deletes_only_what_is_older(store: Store) -> None:
    now_ms = int(time.time() * 1000)
    old = session_rows("old", 3, ms0=now_ms - 10 * 86_400_000)
    new = session_rows("new", 3, ms0=now_ms - 1000)
    await store.put(old)
    await store.put(new)
    assert await store.prune(older_than_s=86_400, chunk=2) == 3  # slices of 2: 2, 1
    assert await store.count("session:old") == 0
    assert await store.count("session:new") == 3
    assert await store.session("old") is None
    assert await store.session("new") is not None


async def test_bad_reads_are_refused(store: Store) -> None:
    with pytest.raises(InvalidStreamName):
        await store.events("bogus")
    with pytest.raises(ConfigError):
        await store.events("session:x", limit=0)
    with pytest.raises(ConfigError):
        await store.events("session:x", limit=1001)
    with pytest.raises(InvalidOffset):
        await store.events("session:x", after="yesterday")


async def test_reopen_keeps_data_and_version(archive_url: str) -> None:
    s = await open_store(archive_url)
    await s.put(session_rows("x", 3))
    assert await s.schema_version() == SCHEMA_VERSION
    await s.close()
    s = await open_store(archive_url)
    try:
        assert await s.count() == 3
        assert await s.schema_version() == SCHEMA_VERSION
    finally:
        await s.close()


def test_archive_url_forms() -> None:
    assert parse_archive_url("sqlite:///var/lib/a.db") == ("sqlite", "/var/lib/a.db")
    assert parse_archive_url("postgres://u@h/db")[0] == "postgresql"
    for bad in ("mysql://u:secret@h/db", "sqlite://relative.db", "/tmp/a.db", "sqlite:///"):
        with pytest.raises(ConfigError) as info:
            parse_archive_url(bad)
        assert "secret" not in str(info.value)


async def test_sqlite_store_newer_than_the_code_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = await open_store(f"sqlite://{path}")
    await s.put(session_rows("x", 3))
    await s.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.execute("PRAGMA journal_mode=DELETE")  # a plain file: any later write shows
    conn.close()
    before = _files(path)
    with pytest.raises(SchemaTooNew, match="newer"):
        await open_store(f"sqlite://{path}")
    assert _files(path) == before


def _files(path: Path) -> list[tuple[str, str]]:
    """Every file of the database (main, journal, WAL) with its content hash."""
    return sorted(
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in path.parent.glob("a.db*")
    )


async def test_postgres_store_newer_than_the_code_is_refused_untouched(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    s = await open_store(postgres_url)
    await s.put(session_rows("x", 3))
    await s.close()
    db = postgres_url.rsplit("/", 1)[1]
    postgres_server.psql(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1}, 'x')", db)
    snapshot = "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM sessions), " \
        "(SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version)"  # fmt: skip
    before = postgres_server.psql(snapshot, db)
    with pytest.raises(SchemaTooNew):
        await open_store(postgres_url)
    assert postgres_server.psql(snapshot, db) == before


async def test_unreachable_postgres_is_a_clear_error_within_the_bound() -> None:
    from rpa_bus.cli._embedded import free_port

    start = time.monotonic()
    with pytest.raises(ArchiveUnavailable, match="cannot reach") as info:
        await open_store(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db", connect_timeout_s=1)
    assert time.monotonic() - start < 5
    assert "hunter2" not in str(info.value)


async def test_postgres_down_mid_run_fails_the_batch_then_recovers(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    s = await open_store(postgres_url, connect_timeout_s=1)
    try:
        rows = session_rows("x", 20)
        await s.put(rows[:10])
        postgres_server.stop()
        with pytest.raises(ArchiveUnavailable):
            await s.put(rows[10:])
        with pytest.raises(ArchiveUnavailable):
            await s.put(rows[10:])
        postgres_server.start()
        assert await s.put(rows[10:]) == 10
        assert [e.id for e in (await s.events("session:x", limit=100)).events] == [
            r.id for r in rows
        ]
    finally:
        await s.close()


async def test_concurrent_puts_each_commit_their_own_rows(store: Store) -> None:
    """The archiver stores many streams' batches at once (SQLite commits them together):
    each put answers its own count, every session folds, replays store nothing twice."""
    runs = [session_rows(f"c{i}", 40, ms0=1_700_000_000_000 + i * 1000) for i in range(12)]
    counts = await asyncio.gather(*(store.put(rows) for rows in runs))
    assert counts == [40] * 12
    again = await asyncio.gather(*(store.put(rows[:30]) for rows in runs))
    assert again == [0] * 12
    for i in range(12):
        assert await store.count(f"session:c{i}") == 40
        state = await store.session(f"c{i}")
        assert state is not None
        assert state.status == "finished"


async def test_events_and_counts_keep_to_one_epoch(store: Store) -> None:
    old = session_rows("re", 10, epoch="old", ms0=1_600_000_000_000)
    new = session_rows("re", 10, epoch="new", ms0=1_700_000_000_000)
    await store.put(old)
    await store.put(new)
    page = await store.events("session:re", epoch="new", limit=100)
    assert [e.id for e in page.events] == [r.id for r in new]
    assert (page.first, page.last) == (new[0].id, new[-1].id)
    assert len((await store.events("session:re", limit=100)).events) == 20
    assert await store.count_before("session:re", new[5].id, epoch="new") == 5
    assert await store.count_before("session:re", new[5].id) == 15


async def test_a_cancelled_group_commit_still_answers_the_others(archive_url: str) -> None:
    """The caller running a shared commit is cancelled mid-commit; the commit finishes and
    every other caller gets its own count (no retry of stored rows)."""
    store = await open_store(archive_url)
    try:
        runs = [session_rows(f"g{i}", 40, ms0=1_700_000_000_000 + i * 1000) for i in range(5)]
        turn = store._turn  # type: ignore[attr-defined]
        await turn.acquire()  # hold the write turn: all five queue into one commit
        tasks = [asyncio.create_task(store.put(rows)) for rows in runs]
        await wait_for_async(lambda: len(store._queued) == 5, what="five queued")  # type: ignore[attr-defined]
        turn.release()
        # The first takes the turn and starts the commit (taking the queue): cancel it then,
        # while the commit is still in flight (it needs the database, many loop passes).
        for _ in range(1000):
            if not store._queued:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0)
        assert store._commits  # type: ignore[attr-defined]
        tasks[0].cancel()
        assert await asyncio.gather(*tasks[1:]) == [40] * 4
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert await store.count() == 200  # the cancelled caller's rows were committed too
    finally:
        await store.close()


async def test_group_commit_keeps_a_streams_batches_in_order(archive_url: str) -> None:
    """Two batches of one stream queued for the same turn go in two transactions, in the
    order they came (the fold sees the stream's rows in id order)."""
    store = await open_store(archive_url)
    try:
        a = session_rows("oa", 30)
        b = session_rows("ob", 20, ms0=1_700_000_100_000)
        turn = store._turn  # type: ignore[attr-defined]
        await turn.acquire()
        tasks = [asyncio.create_task(store.put(rows)) for rows in (a[:10], b, a[10:])]
        await wait_for_async(lambda: len(store._queued) == 3, what="three queued")  # type: ignore[attr-defined]
        turn.release()
        assert await asyncio.gather(*tasks) == [10, 20, 20]
        state = await store.session("oa")
        assert state is not None
        assert (state.status, state.first, state.last) == ("finished", a[0].id, a[-1].id)
        assert [e.id for e in (await store.events("session:oa", limit=100)).events] == [
            r.id for r in a
        ]
    finally:
        await store.close()


async def test_a_refused_batch_does_not_hold_up_the_others_of_its_group(
    postgres_url: str,
) -> None:
    """PostgreSQL: one batch the database refuses (a step beyond BIGINT) fails alone; the
    other streams' batches of the same group commit, and the refused one stores nothing."""
    import psycopg

    store = await open_store(postgres_url)
    try:
        good = [session_rows(f"ok{i}", 20, ms0=1_700_000_000_000 + i * 1000) for i in range(3)]
        ts = now_ts()
        bad = [Record("session:bad", "e1", "1700000009000-0", env("progress", ts, step=2**63))]
        turn = store._turn  # type: ignore[attr-defined]
        await turn.acquire()
        tasks = [asyncio.create_task(store.put(rows)) for rows in (good[0], bad, *good[1:])]
        await wait_for_async(lambda: len(store._queued) == 4, what="four queued")  # type: ignore[attr-defined]
        turn.release()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes[0] == outcomes[2] == outcomes[3] == 20
        assert isinstance(outcomes[1], psycopg.Error)
        assert await store.count("session:bad") == 0
        for i in range(3):
            state = await store.session(f"ok{i}")
            assert state is not None
            assert state.status == "finished"
    finally:
        await store.close()


async def _queued_together(store: Store, batches: list[list[Record]]) -> list[int]:
    """Put ``batches`` so that they all queue for one group commit; each one's count."""
    turn = store._turn  # type: ignore[attr-defined]
    await turn.acquire()
    tasks = [asyncio.create_task(store.put(rows)) for rows in batches]
    await wait_for_async(
        lambda: len(store._queued) == len(batches),  # type: ignore[attr-defined]
        what=f"{len(batches)} queued",
    )
    turn.release()
    return list(await asyncio.gather(*tasks))


async def test_a_group_commit_counts_each_batchs_new_rows(archive_url: str) -> None:
    """One group commit with a batch stored before, one new and one half new: each put
    answers its own count of new rows (SQLite inserts the whole group in one statement,
    sees fewer new rows than given, and counts batch by batch instead)."""
    store = await open_store(archive_url)
    try:
        old = session_rows("d-old", 30)
        half = session_rows("d-half", 40, ms0=1_700_000_100_000)
        await store.put(old)
        await store.put(half[:20])
        new = session_rows("d-new", 25, ms0=1_700_000_200_000)
        assert await _queued_together(store, [old, new, half]) == [0, 25, 20]
        assert await store.count() == 30 + 25 + 40
        for sid, rows in (("d-old", old), ("d-new", new), ("d-half", half)):
            state = await store.session(sid)
            assert state is not None
            assert (state.status, state.first, state.last) == ("finished", rows[0].id, rows[-1].id)
    finally:
        await store.close()


def _index_entry(ms: int, kind: str, sid: str) -> Record:
    event = {"type": kind, "session": sid, "ts": now_ts(ms / 1000)}
    return Record("sessions", "", f"{ms}-0", orjson.dumps(event))


def _tables(path: Path) -> tuple[list[Any], list[Any]]:
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute("SELECT * FROM sessions ORDER BY session").fetchall(),
            conn.execute("SELECT * FROM runs ORDER BY session, started").fetchall(),
        )
    finally:
        conn.close()


async def test_a_large_group_commit_folds_as_its_batches_one_by_one(tmp_path: Path) -> None:
    """SQLite folds a large group commit on its fold thread while the rows are inserted:
    the sessions and runs it leaves are those of the same batches stored one at a time
    (index entries before and after their sessions' own, a stream recreated in a new
    epoch, two batches of one stream, a session named by the index alone, a batch stored
    before). Within one group an index entry only fills a gap, as on PostgreSQL: a
    session's own rows in the group win over it."""
    ms0 = 1_700_000_000_000
    first = session_rows("big-a", 150, ms0=ms0)
    batches = [
        [_index_entry(ms0 - 10, "started", "big-a"), _index_entry(ms0 - 9, "started", "only")],
        first[:70],
        session_rows("big-b", 120, ms0=ms0 + 1000),
        first[70:],
        session_rows("big-c", 60, epoch="e2", ms0=ms0 + 5000),
        [_index_entry(ms0 + 9000, "finished", "big-b"), _index_entry(ms0 + 9001, "started", "c")],
    ]
    before = session_rows("big-c", 30, epoch="e1", ms0=ms0 - 5000)  # the stream's old epoch
    replayed = before[5:25]  # given again: stored before (the group counts batch by batch)
    batches.insert(4, replayed)
    assert sum(len(b) for b in batches) >= _FOLD_THREAD_ROWS  # folded apart

    one_by_one = tmp_path / "one.db"
    grouped = tmp_path / "group.db"
    for path in (one_by_one, grouped):
        store = await open_store(f"sqlite://{path}")
        try:
            await store.put(before)
            if path == one_by_one:
                counts = [await store.put(rows) for rows in batches]
            else:
                counts = await _queued_together(store, batches)
            assert counts == [0 if rows is replayed else len(rows) for rows in batches]
        finally:
            await store.close()
    sessions, runs = _tables(grouped)
    assert (sessions, runs) == _tables(one_by_one)
    assert {row[0] for row in sessions} == {"big-a", "big-b", "big-c", "only", "c"}
    assert len(runs) == 4  # big-a, big-b, and big-c's two epochs

    # Joined midway (no `started`), in a stream without an epoch (as index rows are), with
    # an index entry giving another start time in the same group: its own rows win.
    mid = session_rows("mid", 400, epoch="", ms0=ms0 + 3000)[10:300]
    store = await open_store(f"sqlite://{grouped}")
    try:
        index = [_index_entry(ms0 + 2990, "started", "mid")]
        assert await _queued_together(store, [index, mid]) == [1, len(mid)]
        state = await store.session("mid")
        assert state is not None
        assert (state.started, state.first) == (orjson.loads(mid[0].data)["ts"], mid[0].id)
    finally:
        await store.close()


async def test_rows_are_stored_byte_for_byte(archive_url: str) -> None:
    """Whatever an entry's data holds comes back as it went in: NUL bytes, bytes that are
    not UTF-8, an empty value, quotes and backslashes, and so does an epoch with quotes,
    a backslash and a non-ASCII letter (SQLite's inserts carry the rows' keys in JSON and
    their data in one blob)."""
    store = await open_store(archive_url)
    try:
        odd = [b"", b"\x00\x01\xff\xfe", b'{"q":"\\"x\\u0000"}', bytes(range(256)) * 40]
        rows = [
            Record("session:odd", 'e"1\\é', f"{1_700_000_000_000 + i}-{i}", data)
            for i, data in enumerate(odd)
        ]
        other = [
            Record("session:plain", "e1", f"{1_700_000_000_000 + i}-0", b"x") for i in range(3)
        ]
        assert await _queued_together(store, [rows, other]) == [4, 3]
        page = await store.events("session:odd", limit=10)
        assert [(e.id, e.epoch, e.data) for e in page.events] == [
            (r.id, r.epoch, r.data) for r in rows
        ]
        assert await store.put(rows) == 0
        # A batch whose rows all have empty data (one statement with an empty blob).
        empty = [Record("session:empty", "e1", f"{1_700_000_000_000 + i}-0", b"") for i in range(2)]
        assert await store.put(empty) == 2
        page = await store.events("session:empty", limit=10)
        assert [e.data for e in page.events] == [b"", b""]
    finally:
        await store.close()


async def test_a_group_commit_past_one_statements_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite inserts at most ``_INSERT_ROWS`` rows and ``_INSERT_BYTES`` of data a
    statement (SQLite refuses a value past 1e9 bytes): a larger group takes several, a
    row larger than the byte bound goes alone, and all are counted and stored (the
    bounds made small here, to see them crossed)."""
    from rpa_bus.archive import _store

    monkeypatch.setattr(_store, "_INSERT_ROWS", 7)
    store = await open_store(f"sqlite://{tmp_path / 'a.db'}")
    try:
        runs = [session_rows(f"ch{i}", 23, ms0=1_700_000_000_000 + i * 1000) for i in range(3)]
        assert await _queued_together(store, runs) == [23, 23, 23]
        assert await _queued_together(store, [runs[0][:10], runs[1]]) == [0, 0]
        assert await store.count() == 69
        page = await store.events("session:ch1", limit=100)
        assert [e.id for e in page.events] == [r.id for r in runs[1]]

        monkeypatch.setattr(_store, "_INSERT_BYTES", 100)
        sizes = [40, 40, 40, 250, 10, 90, 0]
        big = [
            Record("session:bytes", "e1", f"{1_700_000_100_000 + i}-0", bytes([65 + i]) * n)
            for i, n in enumerate(sizes)
        ]
        # Statements of 40+40, 40, 250 (alone, past the bound), 10+90+0 bytes.
        assert len(_store._insert_params(big)) == 4
        assert await store.put(big) == len(big)
        page = await store.events("session:bytes", limit=100)
        assert [e.data for e in page.events] == [r.data for r in big]
    finally:
        await store.close()
