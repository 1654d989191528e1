"""Session search in the archive store (issue 14), on real SQLite files and a real private
PostgreSQL: ``q`` finds text in any of a session's messages and errors (not only the last),
case-insensitively, with ``%`` and ``_`` taken literally; the per-session cap; ``until``;
the schema 2 -> 3 migration that backfills the text of archived sessions; ``searched``
(what the relay asks for the sessions Redis holds)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from rpa_bus import now_ts
from rpa_bus.archive import SCHEMA_VERSION, Record, Store, open_store
from rpa_bus.archive._store import _PG_MIGRATIONS, _SQLITE_MIGRATIONS, TEXTS_MAX
from tests._postgres import LocalPostgres
from tests.test_archive_store import archive_url, env, store

# Shared fixtures: each test runs on SQLite and on PostgreSQL.
__all__ = ["archive_url", "store"]

MS0 = 1_700_000_000_000


def run_rows(
    sid: str, messages: list[str], *, error: str | None = None, ms0: int = MS0, epoch: str = "e1"
) -> list[Record]:
    """started, one progress per message, then finished (or failed with ``error``)."""
    rows = [Record(f"session:{sid}", epoch, f"{ms0}-0", env("started", now_ts(ms0 / 1000)))]
    for i, message in enumerate(messages, 1):
        ms = ms0 + i
        data = env("progress", now_ts(ms / 1000), step=i, total=len(messages), message=message)
        rows.append(Record(f"session:{sid}", epoch, f"{ms}-0", data))
    ms = ms0 + len(messages) + 1
    end = (
        env("failed", now_ts(ms / 1000), error=error)
        if error
        else env("finished", now_ts(ms / 1000))
    )
    rows.append(Record(f"session:{sid}", epoch, f"{ms}-0", end))
    return rows


async def ids(store: Store, **kw: object) -> list[str]:
    return [s.session for s in (await store.sessions(**kw)).sessions]  # type: ignore[arg-type]


async def test_q_finds_an_earlier_message_not_only_the_last(store: Store) -> None:
    await store.put(run_rows("quote-1", ["Tela 1", "captcha solved", "Tela 15"]))
    await store.put(run_rows("quote-2", ["Tela 1", "Tela 2"], ms0=MS0 + 100))
    await store.put(run_rows("quote-3", ["Tela 1"], error="timeout at login", ms0=MS0 + 200))
    [one] = (await store.sessions(q="captcha")).sessions
    assert (one.session, one.message) == ("quote-1", "Tela 15")  # the last, as before
    assert await ids(store, q="tela 1") == ["quote-3", "quote-2", "quote-1"]
    assert await ids(store, q="timeout") == ["quote-3"]
    assert await ids(store, q="quote-2") == ["quote-2"]
    assert await ids(store, q="tela 2") == ["quote-2"]
    assert await ids(store, q="nowhere") == []
    # Filters combine: status and text.
    assert await ids(store, q="tela", status="failed") == ["quote-3"]


async def test_replayed_and_split_batches_give_the_same_text(store: Store) -> None:
    rows = run_rows("split", ["a one", "b two", "a one", "c three"])
    await store.put(rows[:2])
    await store.put(rows[:3])  # a replay that overlaps, then the rest
    await store.put(rows[3:])
    await store.put(rows)  # all again: nothing changes
    assert await ids(store, q="b two") == ["split"]
    assert await store.searched(["split"], "A ONE") == {"split"}


async def test_search_is_case_insensitive_beyond_ascii(store: Store) -> None:
    await store.put(run_rows("acc", ["Captcha RÉSOLU", "Straße gefunden", "fin"]))
    assert await ids(store, q="CAPTCHA") == ["acc"]
    assert await ids(store, q="résolu") == ["acc"]  # SQLite's own LIKE folds only ASCII
    assert await ids(store, q="STRASSE") == ["acc"]  # casefolded: ß is ss
    assert await ids(store, q="FIN") == ["acc"]


async def test_percent_and_underscore_are_literal(store: Store) -> None:
    await store.put(run_rows("pct", ["done 100% of it", "step_one", "end"]))
    await store.put(run_rows("plain", ["done 1000 of it", "stepXone", "end"], ms0=MS0 + 100))
    assert await ids(store, q="100%") == ["pct"]
    assert await ids(store, q="p_o") == ["pct"]
    assert await ids(store, q="%") == ["pct"]
    assert await ids(store, q="_") == ["pct"]
    assert await ids(store, q="\\") == []
    await store.put(run_rows("slash", ["C:\\robots\\quote", "end"], ms0=MS0 + 200))
    assert await ids(store, q="\\robots") == ["slash"]


async def test_text_is_capped_per_session_and_the_last_message_stays_searchable(
    store: Store,
) -> None:
    # 700 distinct messages of ~100 characters: about 70,000 characters, past the cap.
    messages = [f"m{i:04d} " + "x" * 94 for i in range(700)]
    messages[-1] = "the very last message"
    rows = run_rows("big", messages)
    for at in range(0, len(rows), 100):  # in several batches, as the archiver stores them
        await store.put(rows[at : at + 100])
    assert await ids(store, q="m0000") == ["big"]
    assert await ids(store, q="m0600") == ["big"]  # ~60,600 characters in: kept
    assert await ids(store, q="m0680") == []  # past the cap: not kept
    assert await ids(store, q="very last") == ["big"]  # the last message's own column
    # Each message and its separator take 101 characters: the cap keeps the first ones.
    kept = TEXTS_MAX // 101
    assert await ids(store, q=f"m{kept - 1:04d}") == ["big"]
    assert await ids(store, q=f"m{kept + 1:04d}") == []


async def test_a_new_epoch_starts_the_text_afresh(store: Store) -> None:
    await store.put(run_rows("reused", ["old run text", "end"], epoch="e1"))
    assert await ids(store, q="old run") == ["reused"]
    await store.put(run_rows("reused", ["new run text", "end"], epoch="e2", ms0=MS0 + 1000))
    assert await ids(store, q="old run") == []
    assert await ids(store, q="new run") == ["reused"]


async def test_until_is_an_upper_bound_on_updated(store: Store) -> None:
    for i in range(3):
        await store.put(run_rows(f"t{i}", ["x"], ms0=MS0 + i * 60_000))
    ended = [now_ts((MS0 + i * 60_000 + 2) / 1000) for i in range(3)]
    assert await ids(store, until=ended[1]) == ["t1", "t0"]
    assert await ids(store, until=ended[0]) == ["t0"]
    assert await ids(store, since=ended[1], until=ended[1]) == ["t1"]
    assert await ids(store, since=ended[2], until=ended[0]) == []
    first = await store.sessions(until=ended[2], limit=2)
    assert [s.session for s in first.sessions] == ["t2", "t1"]
    rest = await store.sessions(until=ended[2], limit=2, cursor=first.next)
    assert [s.session for s in rest.sessions] == ["t0"]


async def test_searched_tells_which_sessions_have_the_text(store: Store) -> None:
    await store.put(run_rows("s1", ["captcha solved", "Tela 2"]))
    await store.put(run_rows("s2", ["Tela 1", "Tela 2"], ms0=MS0 + 100))
    assert await store.searched(["s1", "s2", "unknown"], "CAPTCHA") == {"s1"}
    assert await store.searched(["s1", "s2"], "tela") == {"s1", "s2"}
    assert await store.searched([], "tela") == set()


# ---------------------------------------------------------------------------------------
# Schema 2 -> 3: the text of sessions archived before is backfilled from their events.

# Events as a schema 2 archiver left them: a session whose earlier message matters, one
# reused under a new epoch (only the row's epoch counts), one with only index entries.
_OLD_EVENTS = [
    ("session:old", "e0", 1, {"type": "started"}),
    ("session:old", "e0", 2, {"type": "progress", "message": "Captcha Solved"}),
    ("session:old", "e0", 3, {"type": "failed", "error": "Tela 15 timed out"}),
    ("session:reused", "e1", 1, {"type": "progress", "message": "first run only"}),
    ("session:reused", "e2", 5, {"type": "progress", "message": "second run"}),
]
_OLD_SESSIONS = [
    ("old", "e0", "failed", "2026-01-01T00:00:03.000Z", "1-0", "3-0"),
    ("reused", "e2", "running", "2026-01-01T00:00:05.000Z", "5-0", "5-0"),
    ("indexed", "", "running", "2026-01-01T00:00:06.000Z", None, None),
]


def _event_data(fields: dict[str, object]) -> bytes:
    return orjson.dumps({"ts": "2026-01-01T00:00:00.000Z", **fields})


async def _check_backfilled(store: Store) -> None:
    assert await store.schema_version() == SCHEMA_VERSION == 3
    assert await ids(store, q="captcha") == ["old"]
    assert await ids(store, q="TELA 15") == ["old"]
    assert await ids(store, q="second run") == ["reused"]
    assert await ids(store, q="first run only") == []  # an older epoch's text
    assert await ids(store, q="indexed") == ["indexed"]
    # Folding goes on from the backfilled text.
    await store.put(
        [Record("session:old", "e0", "4-0", _event_data({"type": "progress", "message": "more"}))]
    )
    assert await ids(store, q="captcha") == ["old"]
    assert await ids(store, q="more") == ["old"]


async def test_sqlite_schema_2_migrates_to_3_backfilling_the_text(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for version in (1, 2):
        for statement in _SQLITE_MIGRATIONS[version - 1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, 'then')", (version,))
    for stream, epoch, ms, fields in _OLD_EVENTS:
        conn.execute(
            "INSERT INTO events VALUES (?, ?, 0, ?, ?)", (stream, ms, epoch, _event_data(fields))
        )
    conn.executemany(
        "INSERT INTO sessions (session, epoch, status, updated, first, last) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        _OLD_SESSIONS,
    )
    conn.close()
    store = await open_store(f"sqlite://{path}")
    try:
        await _check_backfilled(store)
    finally:
        await store.close()


async def test_postgres_schema_2_migrates_to_3_backfilling_the_text(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    db = postgres_url.rsplit("/", 1)[1]
    events = ", ".join(
        f"('{stream}', {ms}, 0, '{epoch}', convert_to('{_event_data(f).decode()}', 'UTF8'))"
        for stream, epoch, ms, f in _OLD_EVENTS
    )
    sessions = ", ".join(
        "(" + ", ".join("NULL" if v is None else f"'{v}'" for v in row) + ")"
        for row in _OLD_SESSIONS
    )
    postgres_server.psql(
        "DROP TABLE IF EXISTS events, sessions, runs, schema_version; "
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL); "
        + "; ".join(_PG_MIGRATIONS[0] + _PG_MIGRATIONS[1])
        + "; INSERT INTO schema_version VALUES (1, 'then'), (2, 'then'); "
        f"INSERT INTO events VALUES {events}; "
        "INSERT INTO sessions (session, epoch, status, updated, first, last) "
        f"VALUES {sessions}",
        db,
    )
    store = await open_store(postgres_url)
    try:
        await _check_backfilled(store)
    finally:
        await store.close()
