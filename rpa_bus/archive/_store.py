"""The archive store: every event of every session (and the ``sessions`` index), durably.

One schema, two engines: SQLite (stdlib ``sqlite3``, WAL, run in a thread through
``asyncio.to_thread``; the embedded default) and PostgreSQL (psycopg 3, async). The URL
names the engine (``open_store(url)``)::

    sqlite:///ABSOLUTE/PATH      a file (created with its folder when absent)
    postgresql://USER:PASS@HOST:PORT/DB   (also postgres://)

Tables (``schema_version`` says which migrations ran)::

    events    (stream, ms, seq, epoch) primary key, data: one row per stream entry,
              its id being ``ms-seq``. The key makes a replayed batch store nothing twice
              (INSERT ... ON CONFLICT DO NOTHING) and serves the id-ordered page reads.
    sessions  session primary key: the folded state of each session's newest run
              (status, step, total, percent, eta_s, message, error, started, updated,
              first and last id, job, eta_runs) and ``run``, the accumulator of the run
              in progress (JSON, see ``_runs.py``), kept current by the same transaction
              as its events.
              Since schema 3 also ``texts``: what ``q`` searches (``session_texts``).
    runs      (session, started) primary key: each ended run (schema 2): job, status,
              ended, duration_s and its steps (JSON: step -> seconds, name, attempts,
              outcome); job summaries (``jobs()``, ``job()``) and learned step profiles
              (``profile()``) are read from here.

Writes: ``put(rows)`` takes the entries of one stream in id order (the consumer-group
loop's contract) and commits them, and the folded state, in one transaction. Folding
applies only the entries past the session's stored ``last`` id, so a replayed batch (a
crash between commit and XACK) changes nothing.

Reads (for the relay's history and session list, and the CLI): ``events(stream, after=,
before=, limit=, order=)`` and ``sessions(status=, q=, since=, until=, limit=, cursor=)``.

Errors::

    BusError
     └── ArchiveError
          ├── ArchiveUnavailable  the database cannot be reached (transient: retry)
          └── SchemaTooNew        the store was written by newer code; nothing touched
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

import orjson

from rpa_bus import (
    JOB_NAME,
    BusError,
    ConfigError,
    Envelope,
    InvalidInput,
    InvalidOffset,
    StepProfile,
    StreamId,
    last_fields,
    parse_stream_name,
    state_from_meta,
)
from rpa_bus.archive._runs import (
    RUN_TYPES,
    WINDOW_RUNS,
    FinishedRun,
    JobSummary,
    counts_progress,
    dump_acc,
    fold_run,
    load_acc,
    summarise,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# The schema this code writes. A store at a higher version is refused untouched.
SCHEMA_VERSION: Final = 3
MAX_PAGE: Final = 1000
_I64: Final = 2**63 - 1

Order = Literal["asc", "desc"]


class ArchiveError(BusError):
    """Base of the archive store's errors."""


class ArchiveUnavailable(ArchiveError):
    """The store's database could not be reached or failed transiently; retry later."""


class SchemaTooNew(ArchiveError):
    """The store's schema is newer than this code; it was left untouched."""


class Row(Protocol):
    """What ``put`` takes: the consumer-group loop's ``Entry`` fits."""

    @property
    def stream(self) -> str: ...
    @property
    def epoch(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A row to store (tests and benchmarks build these; the archiver passes ``Entry``)."""

    stream: str
    epoch: str
    id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    id: str
    epoch: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of a stream's archived history, as ``GET /v1/streams/{S}/events`` answers.

    ``first``/``last``: the stream's oldest and newest archived ids (None when empty);
    ``epoch``: the epoch of the page's newest event, else of the stream's newest; ``next``:
    the id to pass as ``after`` (asc) or ``before`` (desc) for the following page, or None.
    """

    stream: str
    epoch: str | None
    first: str | None
    last: str | None
    events: list[ArchivedEvent]
    next: str | None


@dataclass(frozen=True, slots=True)
class ArchivedSession:
    session: str
    epoch: str
    status: str | None
    step: int | None
    total: int | None
    percent: float | None
    eta_s: float | None
    message: str | None
    error: str | None
    started: str | None
    updated: str | None
    first: str | None
    last: str | None
    job: str | None = None
    eta_runs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SessionPage:
    """Sessions, most recently updated first; ``next`` is the cursor of the following page."""

    sessions: list[ArchivedSession]
    next: str | None


# ---------------------------------------------------------------------------------------
# Schema: one list of migrations per engine; version N is the N-th item. Add, never edit.

_SQLITE_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE events (
            stream TEXT NOT NULL,
            ms INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            epoch TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (stream, ms, seq, epoch)
        ) WITHOUT ROWID""",
        "CREATE INDEX events_ms ON events (ms)",
        """CREATE TABLE sessions (
            session TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            status TEXT, step INTEGER, total INTEGER, percent REAL, eta_s REAL,
            message TEXT, error TEXT, started TEXT, updated TEXT NOT NULL,
            first TEXT, last TEXT
        )""",
        "CREATE INDEX sessions_updated ON sessions (updated, session)",
        "CREATE INDEX sessions_status_updated ON sessions (status, updated, session)",
    ),
    (  # 2: the job view (issue 16): jobs, the run in progress, ended runs with step times
        "ALTER TABLE sessions ADD COLUMN job TEXT",
        "ALTER TABLE sessions ADD COLUMN eta_runs INTEGER",
        "ALTER TABLE sessions ADD COLUMN run TEXT",
        """CREATE TABLE runs (
            session TEXT NOT NULL,
            started TEXT NOT NULL,
            job TEXT,
            status TEXT NOT NULL,
            ended TEXT NOT NULL,
            duration_s REAL,
            steps TEXT NOT NULL,
            PRIMARY KEY (session, started)
        )""",
        "CREATE INDEX runs_job_ended ON runs (job, ended)",
        "CREATE INDEX runs_ended ON runs (ended)",
    ),
    # 3: search in every message (issue 14); the existing sessions' texts are backfilled
    # from their archived events by ``_backfill_texts_sqlite`` in the same transaction.
    ("ALTER TABLE sessions ADD COLUMN texts TEXT",),
)

_PG_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE events (
            stream TEXT NOT NULL,
            ms BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            epoch TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (stream, ms, seq, epoch)
        )""",
        "CREATE INDEX events_ms ON events (ms)",
        """CREATE TABLE sessions (
            session TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            status TEXT, step BIGINT, total BIGINT, percent DOUBLE PRECISION,
            eta_s DOUBLE PRECISION, message TEXT, error TEXT, started TEXT,
            updated TEXT NOT NULL, first TEXT, last TEXT
        )""",
        "CREATE INDEX sessions_updated ON sessions (updated, session)",
        "CREATE INDEX sessions_status_updated ON sessions (status, updated, session)",
    ),
    (  # 2: the job view (issue 16)
        "ALTER TABLE sessions ADD COLUMN job TEXT",
        "ALTER TABLE sessions ADD COLUMN eta_runs BIGINT",
        "ALTER TABLE sessions ADD COLUMN run TEXT",
        """CREATE TABLE runs (
            session TEXT NOT NULL,
            started TEXT NOT NULL,
            job TEXT,
            status TEXT NOT NULL,
            ended TEXT NOT NULL,
            duration_s DOUBLE PRECISION,
            steps TEXT NOT NULL,
            PRIMARY KEY (session, started)
        )""",
        "CREATE INDEX runs_job_ended ON runs (job, ended)",
        "CREATE INDEX runs_ended ON runs (ended)",
    ),
    # 3: search in every message (issue 14); backfilled by ``_backfill_texts_pg``.
    ("ALTER TABLE sessions ADD COLUMN texts TEXT",),
)

assert len(_SQLITE_MIGRATIONS) == len(_PG_MIGRATIONS) == SCHEMA_VERSION

_SESSION_COLUMNS: Final = (
    "session, epoch, status, step, total, percent, eta_s, message, error, started, updated, "
    "first, last, job, eta_runs"
)
_FOLDED: Final = (
    "status", "step", "total", "percent", "eta_s", "message", "error", "updated", "job",
    "eta_runs",
)  # fmt: skip
_RUN_COLUMNS: Final = "session, started, job, status, ended, duration_s, steps"


def _too_new(found: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"the archive's schema is version {found}, newer than this rpa-bus understands "
        f"({SCHEMA_VERSION}); upgrade rpa-bus. Nothing in the store was changed"
    )


# ---------------------------------------------------------------------------------------
# The pure parts both engines share: id parsing, folding, page and cursor shapes.


def _split_id(text: str) -> tuple[int, int]:
    ms, sep, seq = text.partition("-")
    if sep and ms.isdigit() and seq.isdigit() and len(ms) < 19 and len(seq) < 19:
        return int(ms), int(seq)  # the usual case, without the general parser's cost
    sid = StreamId.parse(text)
    return min(sid.ms, _I64), min(sid.seq, _I64)


def _id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def _check_stream(stream: str) -> str:
    parse_stream_name(stream)  # raises InvalidStreamName naming the problem
    return stream


def _check_limit(limit: int, default_max: int = MAX_PAGE) -> int:
    if not 1 <= limit <= default_max:
        raise ConfigError(f"limit must be 1..{default_max}, got {limit}")
    return limit


def _session_row(row: Sequence[Any]) -> ArchivedSession:
    return ArchivedSession(*row)


def session_cursor(session: ArchivedSession) -> str:
    """The ``cursor`` that lists the sessions after ``session`` (for a reader that stops
    part-way through a page)."""
    return _encode_cursor(session)


def _encode_cursor(session: ArchivedSession) -> str:
    raw = orjson.dumps([session.updated, session.session])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        updated, session = orjson.loads(base64.urlsafe_b64decode(padded))
        if isinstance(updated, str) and isinstance(session, str):
            return updated, session
    except (ValueError, TypeError, orjson.JSONDecodeError):
        pass
    raise InvalidOffset(f"invalid sessions cursor {cursor!r}")


def _as_strings(state: ArchivedSession | None) -> dict[str, str]:
    """A stored session's folded fields as the meta hash would hold them."""
    if state is None:
        return {}
    out: dict[str, str] = {}
    for name in _FOLDED:
        value = getattr(state, name)
        out[name] = "" if value is None else repr(value) if isinstance(value, float) else str(value)
    return out


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def fold_session_runs(
    sid: str, current: ArchivedSession | None, run: str | None, rows: Sequence[Row]
) -> tuple[ArchivedSession | None, str | None, list[FinishedRun]]:
    """A session's state and its run accumulator (``sessions.run``) after ``rows`` (its
    own stream's entries, id order): the new state (None: unchanged), the new accumulator,
    and the runs that ended in ``rows``. Only rows past ``current.last`` count, so folding
    a replayed batch again changes nothing.

    One pass decodes each row once and folds the run; the state's fields are then taken
    from the valid events since the last new epoch by ``last_fields`` (backwards, only
    the events that can still set a field): what applying ``state_fields`` of each in
    order leaves."""
    state, acc, _, ended = fold_session_texts(sid, current, run, None, rows, with_texts=False)
    return state, acc, ended


def fold_session_texts(
    sid: str,
    current: ArchivedSession | None,
    run: str | None,
    stored_texts: str | None,
    rows: Sequence[Row],
    *,
    with_texts: bool = True,
) -> tuple[ArchivedSession | None, str | None, str | None, list[FinishedRun]]:
    """``fold_session_runs`` and, with ``with_texts``, the session's ``texts`` after
    ``rows`` from its stored ``stored_texts`` (what ``session_texts`` gives) in the same
    pass: each row decoded once for both. Returns (state, accumulator, texts, ended runs);
    state is None when no row is new, texts then too (and always without ``with_texts``)."""
    last = _split_id(current.last) if current is not None and current.last else (-1, -1)
    # Rows come in id order: when the first is past ``last``, all are.
    if rows and _split_id(rows[0].id) <= last:
        rows = [row for row in rows if _split_id(row.id) > last]
    if not rows:
        return None, run, None, []
    fields = _as_strings(current)
    epoch = current.epoch if current is not None else ""
    started = current.started if current is not None else None
    first = current.first if current is not None else None
    acc = load_acc(run)
    ended: list[FinishedRun] = []
    events: list[Envelope] = []  # the valid events since the last new epoch
    before = stored_texts or ""
    found: list[str] = []  # message and error texts since ``before`` (or the new epoch)
    collect = with_texts and len(before) < TEXTS_MAX - 1  # full: nothing more to add
    # The loop runs for every archived event: names are bound locally, and the run's
    # common case, a ``progress`` past the accumulator's step bound or already counted,
    # is told apart here without a call to ``fold_run`` (which it would leave unchanged
    # but for the job).
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    keep, note = events.append, found.append
    for row in rows:
        row_epoch = row.epoch
        if row_epoch and row_epoch != epoch:  # the stream was recreated: a new history
            epoch, first, started, fields, acc = row_epoch, row.id, None, {}, None
            events = []
            before, found, collect = "", [], with_texts
            keep, note = events.append, found.append
        if first is None:
            first = row.id
        try:
            event = loads(row.data)
        except decode_error:
            continue
        if type(event) is not dict:
            continue
        get = event.get
        if collect:  # as ``_event_texts``: any object's message and error
            message = get("message")
            if type(message) is str and message:
                note(message)
            error = get("error")
            if type(error) is str and error:
                note(error)
        kind = get("type")
        if type(kind) is not str:
            continue
        if kind == "progress" and not counts_progress(acc, get("step")):
            if acc is not None:  # what fold_run would do: note the job
                job = get("job")
                if type(job) is str:
                    acc["job"] = job
        elif acc is not None or kind in RUN_TYPES:
            acc, done = fold_run(sid, acc, row.id, event)
            if done is not None:
                ended.append(done)
        if type(get("ts")) is str:
            keep(event)  # type: ignore[arg-type,unused-ignore]
    fields.update(last_fields(events))
    for event in reversed(events):
        if event["type"] == "started":
            started = event["ts"]
            break
    else:
        if started is None and events:
            started = events[0]["ts"]
    typed = state_from_meta(cast("dict[str | bytes, str | bytes]", fields))
    state = ArchivedSession(
        session=sid,
        epoch=epoch,
        status=typed.get("status"),
        step=typed.get("step"),
        total=typed.get("total"),
        percent=typed.get("percent"),
        eta_s=typed.get("eta_s"),
        message=typed.get("message"),
        error=typed.get("error"),
        started=started,
        updated=typed.get("updated") or started or "",
        first=first,
        last=rows[-1].id,
        job=typed.get("job"),
        eta_runs=typed.get("eta_runs"),
    )
    return state, dump_acc(acc), _add_texts(before, found) if with_texts else None, ended


# ---------------------------------------------------------------------------------------
# What ``q`` searches (schema 3): per session, the distinct ``message`` and ``error``
# values of its current epoch's events, casefolded, line breaks made spaces, one per
# line, in the order they first came, at most ``TEXTS_MAX`` characters: once full, later
# texts are not added (the last message and error stay searchable by their own columns).

TEXTS_MAX: Final = 65_536
_SEP: Final = "\n"


def search_form(text: str) -> str:
    """``text`` as ``sessions.texts`` holds it (and as ``q`` is compared with it)."""
    return text.casefold().replace(_SEP, " ")


def _event_texts(data: bytes, into: list[str]) -> None:
    """Append the ``message`` and ``error`` of one stored entry to ``into`` (as they are:
    ``search_form`` is applied once per distinct text, by ``_Texts.add``)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if type(event) is dict:
        message = event.get("message")
        if type(message) is str and message:
            into.append(message)
        error = event.get("error")
        if type(error) is str and error:
            into.append(error)


class _Texts:
    """A ``texts`` value being extended: distinct values in order, up to ``TEXTS_MAX``."""

    __slots__ = ("_parts", "_seen", "_size")

    def __init__(self, texts: str = "") -> None:
        self._parts = texts.split(_SEP) if texts else []
        self._seen = set(self._parts)
        self._size = len(texts)

    @property
    def full(self) -> bool:
        return self._size >= TEXTS_MAX - 1  # not even one character and a separator fit

    def add(self, raw: str) -> None:
        text = search_form(raw)
        if text in self._seen or self.full:
            return
        self._seen.add(text)
        room = TEXTS_MAX - self._size - (1 if self._parts else 0)
        text = text[:room]  # the last to fit may be cut
        self._size += len(text) + (1 if self._parts else 0)
        self._parts.append(text)

    def value(self) -> str:
        return _SEP.join(self._parts)


def session_texts(texts: str | None, current: ArchivedSession | None, rows: Sequence[Row]) -> str:
    """The session's ``texts`` after ``rows`` (its own stream's entries, id order), from
    its stored ``texts`` and state before them (``current``): as in ``fold_session``, only
    rows past ``current.last`` count and a new epoch starts afresh. The archiver gets the
    same from ``fold_session_texts`` in the fold's one decode of each row; this one
    decodes the rows again (the reference the fold is tested against, and the bench's)."""
    last = _split_id(current.last) if current is not None and current.last else (-1, -1)
    epoch = current.epoch if current is not None else ""
    before = texts or ""
    if len(before) >= TEXTS_MAX - 1 and not any(r.epoch and r.epoch != epoch for r in rows):
        return before  # full, and no new epoch empties it
    new: list[str] = []
    check = bool(rows) and _split_id(rows[0].id) <= last
    for row in rows:
        if check and _split_id(row.id) <= last:
            continue
        if row.epoch and row.epoch != epoch:
            epoch, before, new = row.epoch, "", []
        _event_texts(row.data, new)
    return _add_texts(before, new)


def _add_texts(before: str, new: list[str]) -> str:
    """``before`` (a ``texts`` value) with the texts of ``new`` it lacks, in order."""
    if not new:
        return before
    acc = _Texts(before)
    for text in dict.fromkeys(new):  # distinct, in order, before casefolding each once
        acc.add(text)
        if acc.full:
            break
    return acc.value()


class _Backfill:
    """The schema 3 migration's backfill (both engines): ``feed`` it (stream, epoch, data)
    rows of ``session:*`` streams grouped by stream in id order; ``updates()`` then gives
    ``(texts, session)`` for each session of ``epochs`` (session -> its row's epoch) that
    has events. Only the row's epoch counts, as in the running fold."""

    def __init__(self, epochs: dict[str, str]) -> None:
        self._epochs = epochs
        self._sid: str | None = None
        self._acc = _Texts()
        self._done: list[tuple[str, str]] = []

    def feed(self, events: Iterable[Sequence[Any]]) -> None:
        for stream, epoch, data in events:
            name = str(stream)[8:]
            if name != self._sid:
                self._flush()
                self._sid, self._acc = name, _Texts()
            if self._acc.full or self._epochs.get(name) != epoch:
                continue
            texts: list[str] = []
            _event_texts(bytes(data), texts)
            for text in texts:
                self._acc.add(text)

    def _flush(self) -> None:
        if self._sid is not None and self._sid in self._epochs:
            self._done.append((self._acc.value(), self._sid))

    def updates(self) -> list[tuple[str, str]]:
        self._flush()
        self._sid = None
        return self._done


_BACKFILL_EVENTS: Final = (
    "SELECT stream, epoch, data FROM events WHERE stream >= 'session:' "
    "AND stream < 'session;' ORDER BY stream, ms, seq"
)


def _backfill_texts_sqlite(conn: sqlite3.Connection) -> None:
    backfill = _Backfill(dict(conn.execute("SELECT session, epoch FROM sessions").fetchall()))
    backfill.feed(conn.execute(_BACKFILL_EVENTS))
    conn.executemany("UPDATE sessions SET texts = ? WHERE session = ?", backfill.updates())


async def _backfill_texts_pg(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT session, epoch FROM sessions")
    backfill = _Backfill({str(a): str(b) for a, b in await cur.fetchall()})
    # A server-side cursor, read in slices: the events are never all in memory.
    async with conn.cursor(name="rpa_bus_texts_backfill") as events:
        await events.execute(_BACKFILL_EVENTS)
        while chunk := await events.fetchmany(2000):
            backfill.feed(chunk)
    async with conn.cursor() as writes:
        await writes.executemany(
            "UPDATE sessions SET texts = %s WHERE session = %s", backfill.updates()
        )


def _run_row(run: FinishedRun) -> tuple[Any, ...]:
    return (
        run.session,
        run.started,
        run.job,
        run.status,
        run.ended,
        run.duration_s,
        run.steps_json(),
    )


def _today() -> str:
    return time.strftime("%Y-%m-%dT00:00:00.000Z", time.gmtime())


def _jobs_queries(ph: str, one: bool) -> tuple[str, str]:
    """The two queries of job summaries: counts per job, and the newest successful runs'
    durations and steps (``WINDOW_RUNS`` per job, by a window function both engines
    have). ``one``: for the job given as the last parameter only."""
    only = f" AND job = {ph}" if one else ""
    counts = (
        "SELECT job, COUNT(*), "
        f"SUM(CASE WHEN ended >= {ph} THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'finished' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) "
        f"FROM runs WHERE job IS NOT NULL{only} GROUP BY job ORDER BY job LIMIT {ph}"
    )
    recent = (
        "SELECT job, duration_s, steps FROM (SELECT job, duration_s, steps, ended, "
        "ROW_NUMBER() OVER (PARTITION BY job ORDER BY ended DESC) AS n FROM runs "
        f"WHERE job IS NOT NULL AND status = 'finished'{only}) AS w "
        f"WHERE n <= {WINDOW_RUNS} ORDER BY job, ended DESC"
    )
    return counts, recent


def _summaries(
    counts: Sequence[Sequence[Any]], recent: Sequence[Sequence[Any]], *, with_profile: bool
) -> list[JobSummary]:
    by_job: dict[str, list[tuple[float | None, Any]]] = {}
    for job, duration, steps in recent:
        by_job.setdefault(job, []).append((duration, steps))
    return [
        summarise(row[0], row[1:], by_job.get(row[0], []), with_profile=with_profile)
        for row in counts
    ]


def _check_job(job: str) -> str:
    if not isinstance(job, str) or not JOB_NAME.fullmatch(job):
        raise InvalidInput(f"invalid job name {job!r}: use 1 to 128 characters A-Z a-z 0-9 _ . -")
    return job


def index_sessions(rows: Sequence[Row]) -> dict[str, ArchivedSession]:
    """Rows for sessions named in ``sessions`` index entries; stored only where the session
    has no row yet (its own stream's events, folded, are the better source)."""
    out: dict[str, ArchivedSession] = {}
    for row in rows:
        event = _decode(row.data)
        if event is None or not isinstance(sid := event.get("session"), str):
            continue
        ts = event.get("ts") if isinstance(event.get("ts"), str) else ""
        status = {"started": "running", "finished": "finished", "failed": "failed"}.get(
            event["type"]
        )
        prior = out.get(sid)
        out[sid] = ArchivedSession(
            session=sid,
            epoch="",
            status=status,
            step=None,
            total=None,
            percent=None,
            eta_s=None,
            message=None,
            error=None,
            started=(prior.started if prior else None) or (ts if status == "running" else None),
            updated=ts,
            first=None,
            last=None,
        )
    return out


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class _Bounds:
    lo: tuple[int, int]
    hi: tuple[int, int]
    desc: bool
    limit: int


def _bounds(after: str | None, before: str | None, limit: int, order: Order) -> _Bounds:
    if order not in ("asc", "desc"):
        raise ConfigError(f"order must be 'asc' or 'desc', got {order!r}")
    _check_limit(limit)
    lo = _split_id(after) if after is not None else (-1, -1)
    hi = _split_id(before) if before is not None else (_I64, _I64)
    return _Bounds(lo, hi, order == "desc", limit)


# ---------------------------------------------------------------------------------------


class Store:
    """An open archive store (base of both engines); an async context manager."""

    url_redacted: str = ""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError

    async def schema_version(self) -> int:
        raise NotImplementedError

    async def put(self, rows: Sequence[Row]) -> int:
        """Store ``rows`` (one stream, id order) in one transaction; return how many were
        new. Idempotent on (stream, epoch, id)."""
        raise NotImplementedError

    async def events(
        self,
        stream: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        order: Order = "asc",
        epoch: str | None = None,
    ) -> EventPage:
        """A page of ``stream``'s archived entries strictly between ``after`` and ``before``;
        with ``epoch``, only that incarnation's (a recreated stream's older runs have older
        ids: the relay's read-through keeps to the epoch Redis holds)."""
        raise NotImplementedError

    async def sessions(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """Archived sessions, most recently updated first. ``status`` filters exactly,
        ``q`` searches session ids and every message and error of the session's current
        epoch (substring, case-insensitive; see ``session_texts``), ``since`` keeps
        sessions updated at or after an envelope timestamp (``2026-11-27T02:00:00.000Z``; a
        prefix such as ``2026-11-27`` works too), ``until`` those updated at or before one
        (compared as text: ``2026-11-27`` is the start of that day)."""
        raise NotImplementedError

    async def searched(self, sids: Sequence[str], q: str) -> set[str]:
        """Which of ``sids`` have ``q`` in any archived message or error (the relay asks
        this for the sessions Redis holds, whose meta hash has only the last ones)."""
        raise NotImplementedError

    async def session(self, sid: str) -> ArchivedSession | None:
        raise NotImplementedError

    async def jobs(self, *, limit: int = 100) -> list[JobSummary]:
        """Every job's summary from its archived runs, by name (at most ``limit``)."""
        raise NotImplementedError

    async def job(self, job: str) -> JobSummary | None:
        """One job's summary with its learned step profile; None if it has no runs."""
        raise NotImplementedError

    async def profile(self, job: str) -> StepProfile:
        """The learned step profile of ``job`` from its newest successful runs."""
        summary = await self.job(job)
        if summary is None or summary.profile is None:
            return StepProfile({}, 0)
        return StepProfile.from_json(summary.profile)

    async def prune(self, *, older_than_s: float, chunk: int = 10_000) -> int:
        """Delete events older than ``older_than_s`` (by their id's time) and sessions not
        updated since, ``chunk`` events per transaction; return how many events went."""
        raise NotImplementedError

    async def count(self, stream: str | None = None) -> int:
        raise NotImplementedError

    async def count_before(self, stream: str, before: str, *, epoch: str | None = None) -> int:
        """How many of ``stream``'s entries (of ``epoch`` only, if given) have an id below
        ``before``: the relay compares it with how many Redis trimmed to find holes."""
        raise NotImplementedError


def _count_before_query(ph: str, epoch: bool) -> str:
    where = f"stream = {ph}" + (f" AND epoch = {ph}" if epoch else "")
    return f"SELECT COUNT(*) FROM events WHERE {where} AND (ms, seq) < ({ph}, {ph})"


# Pruning deletes this many events per transaction (by the events_ms index).
PRUNE_CHUNK: Final = 10_000
_PRUNE_WHERE: Final = (
    "DELETE FROM events WHERE (stream, ms, seq, epoch) IN (SELECT stream, ms, seq, epoch "
    "FROM events WHERE ms < {0} ORDER BY ms LIMIT {0})"
)
_PRUNE_SQLITE: Final = _PRUNE_WHERE.format("?")
_PRUNE_PG: Final = _PRUNE_WHERE.format("%s")


def _cutoff_ms(older_than_s: float) -> int:
    if older_than_s < 0:
        raise ConfigError(f"older_than_s must be >= 0, got {older_than_s}")
    return int((time.time() - older_than_s) * 1000)


def _ts_of_ms(ms: int) -> str:
    from rpa_bus import now_ts

    return now_ts(ms / 1000)


# A group commit of at least this many rows folds them in a thread, meanwhile the
# database inserts them (both stores); below, the thread's hand-off costs more than it
# saves.
_FOLD_THREAD_ROWS: Final = 256


def _fold_all(
    by_stream: dict[str, list[Row]], found: dict[str, Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The sessions' rows after ``by_stream``'s rows (``found``: their rows before, with
    ``run`` and ``texts`` last), the runs that ended, and the index's sessions
    (``sessions`` stream) as rows. Pure: safe in a thread."""
    states: list[tuple[Any, ...]] = []
    ended: list[tuple[Any, ...]] = []
    indexed: list[tuple[Any, ...]] = []
    for stream in sorted(by_stream):
        rows = by_stream[stream]
        if stream.startswith("session:"):
            sid = stream[8:]
            row = found.get(sid)
            current = _session_row(row[:-2]) if row else None
            state, run, texts, done = fold_session_texts(
                sid, current, row[-2] if row else None, row[-1] if row else None, rows
            )
            if state is not None:
                states.append((*astuple_session(state), run, texts))
            ended.extend(_run_row(r) for r in done)
        elif stream == "sessions":
            indexed.extend(astuple_session(s) for s in index_sessions(rows).values())
    indexed.sort(key=lambda t: str(t[0]))
    return states, ended, indexed


# ---------------------------------------------------------------------------------------
# SQLite


# A group commit inserts its rows in one statement (up to ``_INSERT_ROWS`` rows and
# ``_INSERT_BYTES`` of data a statement): ?1 is a JSON array (text: a blob would be read
# as JSONB from SQLite 3.45) of [stream, id, epoch, offset, length], ?2 all the rows' data
# in one blob. SQLite then parses, splits and inserts without the GIL for the whole
# statement, while the fold of the same rows runs on the store's fold thread
# (``_put_many``); a statement per row gave the GIL back and took it again for every row,
# and each time it waited for whichever thread held it. SQLite splits the id too: CAST
# takes a text's longest integer prefix (the ``ms`` of "ms-seq") and caps an integer past
# 2**63-1 at it, as ``_split_id`` does. ``substr`` of an empty blob is NULL, hence the
# COALESCE (a statement whose rows all have empty data). ``json_extract``, not ``->>``:
# SQLite before 3.38 built with JSON1 (what some Linux distributions' Python links) has
# the one, not the other. JSON text ends at a NUL, so a stream name or epoch with one
# would be cut: neither can have one (names are checked, epochs are the bus's hex ids).
_SQLITE_INSERT: Final = (
    "INSERT INTO events (stream, ms, seq, epoch, data) SELECT "
    "json_extract(j.value, '$[0]'), "
    "CAST(json_extract(j.value, '$[1]') AS INTEGER), "
    "CAST(substr(json_extract(j.value, '$[1]'), instr(json_extract(j.value, '$[1]'), '-') + 1)"
    " AS INTEGER), "
    "json_extract(j.value, '$[2]'), "
    "COALESCE(substr(?2, json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]')), x'') "
    "FROM json_each(?1) AS j WHERE true ON CONFLICT DO NOTHING"
)
# SQLite refuses a value past 1e9 bytes (SQLITE_MAX_LENGTH); events can be megabytes.
_INSERT_ROWS: Final = 20_000
_INSERT_BYTES: Final = 64 << 20


def _check_json() -> None:
    """Refuse an SQLite without the JSON functions ``_SQLITE_INSERT`` needs (built in
    since 3.38; before, a build option most distributions set), before any file is
    touched."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT json_extract(value, '$[0]') FROM json_each(?)", ("[[1]]",))
    except sqlite3.OperationalError as exc:
        raise ArchiveUnavailable(
            f"this Python's SQLite {sqlite3.sqlite_version} lacks the JSON functions the "
            f"archive needs ({exc}): use one built with them (SQLite 3.38 or newer has them)"
        ) from exc


def _insert_params(rows: Sequence[Row]) -> list[tuple[str, bytes]]:
    """The parameters of the ``_SQLITE_INSERT`` statements that insert ``rows``."""
    params: list[tuple[str, bytes]] = []
    meta: list[tuple[str, str, str, int, int]] = []
    datas: list[bytes] = []
    at = 1  # substr counts from 1
    for row in rows:
        data = row.data
        size = len(data)
        if meta and (len(meta) == _INSERT_ROWS or at - 1 + size > _INSERT_BYTES):
            params.append((orjson.dumps(meta).decode(), b"".join(datas)))
            meta, datas, at = [], [], 1
        meta.append((row.stream, row.id, row.epoch, at, size))
        datas.append(data)
        at += size
    if meta:
        params.append((orjson.dumps(meta).decode(), b"".join(datas)))
    return params


def _insert(conn: sqlite3.Connection, params: Sequence[tuple[str, bytes]]) -> int:
    """Run the inserts; returns how many rows were new."""
    return sum(conn.execute(_SQLITE_INSERT, args).rowcount for args in params)


def _insert_round(
    conn: sqlite3.Connection,
    batches: Sequence[Sequence[Row]],
    params: Sequence[tuple[str, bytes]],
) -> list[int]:
    """Insert a group commit's batches, all at once (``params``: ``_insert_params`` of
    their rows in order); returns each batch's count of new rows. If some rows were there
    already (a batch given again), that is undone and each batch is inserted on its own,
    to count its own."""
    if len(batches) == 1:
        return [_insert(conn, params)]
    conn.execute("SAVEPOINT round")
    if _insert(conn, params) == sum(len(rows) for rows in batches):
        conn.execute("RELEASE round")
        return [len(rows) for rows in batches]
    conn.execute("ROLLBACK TO round")
    conn.execute("RELEASE round")
    return [_insert(conn, _insert_params(rows)) for rows in batches]


def _found_sessions(conn: sqlite3.Connection, sids: Sequence[str]) -> dict[str, Sequence[Any]]:
    """The stored sessions rows (with ``run`` and ``texts`` last) of those of ``sids`` that
    have one, as ``_fold_all`` takes them."""
    found: dict[str, Sequence[Any]] = {}
    for i in range(0, len(sids), 500):
        chunk = sids[i : i + 500]
        for row in conn.execute(
            f"SELECT {_SESSION_COLUMNS}, run, texts FROM sessions "
            f"WHERE session IN ({_marks('?', len(chunk))})",
            chunk,
        ):
            found[row[0]] = row
    return found


class SqliteStore(Store):
    """The embedded store: one file, WAL, one connection used by one thread at a time."""

    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.url_redacted = f"sqlite://{path}"
        self._timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # Group commit (``put``): batches waiting for the write turn.
        self._queued: list[tuple[Sequence[Row], asyncio.Future[int]]] = []
        self._turn = asyncio.Lock()
        self._commits: set[asyncio.Task[list[int]]] = set()  # running group commits
        # Where a large group commit's fold runs (``_put_many``); started at the first.
        self._folder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="archive-fold")

    @classmethod
    async def open(cls, path: Path, *, timeout_s: float = 5.0) -> SqliteStore:
        store = cls(path, timeout_s=timeout_s)
        await asyncio.to_thread(store._open)
        return store

    def _open(self) -> None:
        _check_json()
        if self.path.exists():
            # Read-only first: a newer schema is refused before anything (even WAL mode,
            # which is written into the file) changes.
            self._check_version_ro()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArchiveUnavailable(f"cannot create {self.path.parent}: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ArchiveUnavailable(f"cannot open the archive {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not WAL's usual NORMAL: the archiver XACKs (and Redis may then trim)
            # right after COMMIT, so a commit must survive a power loss too.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise ArchiveUnavailable(f"cannot prepare the archive {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _check_version_ro(self) -> None:
        try:
            ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self._timeout_s)
        except sqlite3.Error as exc:
            raise ArchiveUnavailable(f"cannot open the archive {self.path}: {exc}") from exc
        try:
            found = self._version(ro)
        except sqlite3.DatabaseError as exc:
            raise ArchiveUnavailable(f"{self.path} is not an SQLite archive: {exc}") from exc
        finally:
            ro.close()
        if found > SCHEMA_VERSION:
            raise _too_new(found)

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if not has:
            return 0
        (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        return int(version)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        found = self._version(conn)
        if found > SCHEMA_VERSION:  # written by newer code since the read-only check
            raise _too_new(found)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _SQLITE_MIGRATIONS[version - 1]:
                conn.execute(statement)
            if version == 3:
                _backfill_texts_sqlite(conn)
            conn.execute(
                "INSERT INTO schema_version VALUES (?, ?)",
                (version, _ts_of_ms(int(time.time() * 1000))),
            )
            log.info("archive %s: schema migrated to version %d", self.path, version)

    @contextlib.contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise ArchiveError("the archive store is closed")
        with self._lock:
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
                raise ArchiveUnavailable(f"archive {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._commits:  # a group commit whose caller was cancelled: let it finish
            await asyncio.wait(list(self._commits))
        self._folder.shutdown(wait=False)
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                await asyncio.to_thread(conn.close)

    async def schema_version(self) -> int:
        def run() -> int:
            with self._use() as conn:
                return self._version(conn)

        return await asyncio.to_thread(run)

    async def put(self, rows: Sequence[Row]) -> int:
        """Store ``rows``; concurrent calls share one transaction (group commit).

        SQLite commits one transaction at a time, each with an fsync (``synchronous=
        FULL``), and the archiver stores the batches of different streams concurrently:
        whichever call holds the write turn commits every batch queued meanwhile in one
        transaction, one fsync for all. Each call still returns only once its rows are
        committed (or raises: then none of the transaction's batches was, and each is
        retried by its caller; the store is idempotent)."""
        if not rows:
            return 0
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((rows, done))
        try:
            # One pass of the event loop: the other batches of the same read queue too,
            # and the first does not commit alone (an fsync more per read).
            await asyncio.sleep(0)
            return await self._commit_turn(done)
        except asyncio.CancelledError:
            # Leave nothing queued that no one would wait for, and no answer no one reads.
            self._queued = [q for q in self._queued if q[1] is not done]
            done.cancel()
            raise

    async def _commit_turn(self, done: asyncio.Future[int]) -> int:
        async with self._turn:
            if not done.done():
                batch, self._queued = self._queued, []
                work = asyncio.get_running_loop().create_task(
                    asyncio.to_thread(self._put_many, [r for r, _ in batch]), name="sqlite-commit"
                )
                self._commits.add(work)
                work.add_done_callback(self._commits.discard)
                # Every caller learns the commit's real outcome, also when the one that
                # runs it is cancelled (the thread goes on and may still commit): the
                # others must not retry as if their rows had not been stored.
                work.add_done_callback(lambda w: _settle(batch, w))
                await asyncio.shield(work)
        return await done

    def _put_many(self, batches: Sequence[Sequence[Row]]) -> list[int]:
        """One group commit (in a worker thread): each batch's count of new rows. The
        inserts (one statement, SQLite's work without the GIL) and the fold (Python's,
        ``_fold_all`` as for PostgreSQL) are the two halves of a row's cost: a large
        commit runs them at once, the fold on the fold thread."""
        with self._use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # What needs the GIL first (the fold thread then has it to itself
                # while the inserts run): the statements' parameters, the streams' rows.
                every = batches[0] if len(batches) == 1 else [r for b in batches for r in b]
                params = _insert_params(every)
                by_stream: dict[str, list[Row]] = {}
                for row in every:
                    by_stream.setdefault(row.stream, []).append(row)
                sids = [name[8:] for name in by_stream if name.startswith("session:")]
                found = _found_sessions(conn, sids)
                if len(every) < _FOLD_THREAD_ROWS:
                    states, ended, indexed = _fold_all(by_stream, found)
                    counts = _insert_round(conn, batches, params)
                else:
                    try:
                        folding = self._folder.submit(_fold_all, by_stream, found)
                    except RuntimeError:  # shut down: close() came meanwhile
                        raise ArchiveError("the archive store is closed") from None
                    try:
                        counts = _insert_round(conn, batches, params)
                    finally:
                        concurrent.futures.wait([folding])
                    states, ended, indexed = folding.result()
                conn.executemany(
                    f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}, run, texts) "
                    f"VALUES ({_marks('?', _N_SESSION + 2)})",
                    states,
                )
                conn.executemany(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({_marks('?', 7)}) "
                    "ON CONFLICT DO NOTHING",
                    ended,
                )
                # The index's sessions after the others: they only fill gaps.
                conn.executemany(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
                    f"VALUES ({_marks('?', _N_SESSION)}) ON CONFLICT DO NOTHING",
                    indexed,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return counts

    async def events(
        self,
        stream: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        order: Order = "asc",
        epoch: str | None = None,
    ) -> EventPage:
        _check_stream(stream)
        b = _bounds(after, before, limit, order)
        key = (stream,) if epoch is None else (stream, epoch)
        page_sql, ends_sql = _event_queries("?", desc=b.desc, epoch=epoch is not None)

        def run() -> EventPage:
            with self._use() as conn:
                page = conn.execute(page_sql, (*key, *b.lo, *b.hi, b.limit + 1)).fetchall()
                ends = conn.execute(ends_sql, (*key, *key)).fetchone()
            return _page(stream, page, b.limit, ends)

        return await asyncio.to_thread(run)

    async def sessions(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        _check_limit(limit)
        where, args = _session_filters(status, q, since, until, cursor, "?", "LIKE")

        def run() -> SessionPage:
            with self._use() as conn:
                rows = conn.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions {where} "
                    "ORDER BY updated DESC, session DESC LIMIT ?",
                    (*args, limit + 1),
                ).fetchall()
            return _session_page(rows, limit)

        return await asyncio.to_thread(run)

    async def searched(self, sids: Sequence[str], q: str) -> set[str]:
        if not sids or not q:
            return set()

        def run() -> set[str]:
            with self._use() as conn:
                rows = conn.execute(
                    f"SELECT session FROM sessions WHERE session IN ({_marks('?', len(sids))}) "
                    "AND texts LIKE ? ESCAPE '\\'",
                    (*sids, _like(search_form(q))),
                ).fetchall()
            return {str(r[0]) for r in rows}

        return await asyncio.to_thread(run)

    async def session(self, sid: str) -> ArchivedSession | None:
        def run() -> ArchivedSession | None:
            with self._use() as conn:
                row = conn.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session = ?", (sid,)
                ).fetchone()
            return _session_row(row) if row else None

        return await asyncio.to_thread(run)

    async def prune(self, *, older_than_s: float, chunk: int = PRUNE_CHUNK) -> int:
        cutoff = _cutoff_ms(older_than_s)

        def one(sql: str, args: tuple[Any, ...]) -> int:
            with self._use() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    n = int(conn.execute(sql, args).rowcount)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return n

        # In slices, each its own transaction: the archiver's writes wait for one slice at
        # most, not for the whole cut.
        deleted = 0
        while True:
            n = await asyncio.to_thread(one, _PRUNE_SQLITE, (cutoff, chunk))
            deleted += n
            if n < chunk:
                break
        await asyncio.to_thread(one, "DELETE FROM sessions WHERE updated < ?", (_ts_of_ms(cutoff),))
        await asyncio.to_thread(one, "DELETE FROM runs WHERE ended < ?", (_ts_of_ms(cutoff),))
        return deleted

    async def jobs(self, *, limit: int = 100) -> list[JobSummary]:
        _check_limit(limit)
        return await asyncio.to_thread(self._jobs, None, limit)

    async def job(self, job: str) -> JobSummary | None:
        found = await asyncio.to_thread(self._jobs, _check_job(job), 1)
        return found[0] if found else None

    def _jobs(self, job: str | None, limit: int) -> list[JobSummary]:
        counts_sql, recent_sql = _jobs_queries("?", job is not None)
        only = () if job is None else (job,)
        with self._use() as conn:
            counts = conn.execute(counts_sql, (_today(), *only, limit)).fetchall()
            recent = conn.execute(recent_sql, only).fetchall()
        return _summaries(counts, recent, with_profile=job is not None)

    async def count(self, stream: str | None = None) -> int:
        def run() -> int:
            with self._use() as conn:
                if stream is None:
                    (n,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
                else:
                    (n,) = conn.execute(
                        "SELECT COUNT(*) FROM events WHERE stream = ?", (stream,)
                    ).fetchone()
            return int(n)

        return await asyncio.to_thread(run)

    async def count_before(self, stream: str, before: str, *, epoch: str | None = None) -> int:
        key = (stream,) if epoch is None else (stream, epoch)
        sql = _count_before_query("?", epoch is not None)

        def run() -> int:
            with self._use() as conn:
                (n,) = conn.execute(sql, (*key, *_split_id(before))).fetchone()
            return int(n)

        return await asyncio.to_thread(run)


def _settle(
    batch: Sequence[tuple[Sequence[Row], asyncio.Future[int]]],
    work: asyncio.Task[Sequence[int | Exception]],
) -> None:
    """Answer each caller of a group commit with its own count or error, or the
    commit's error."""
    if work.cancelled():
        error: BaseException | None = ArchiveUnavailable("the shared commit was cancelled")
    else:
        error = work.exception()
    for i, (_, fut) in enumerate(batch):
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        elif isinstance(outcome := work.result()[i], Exception):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


def astuple_session(s: ArchivedSession) -> tuple[Any, ...]:
    return (
        s.session,
        s.epoch,
        s.status,
        s.step,
        s.total,
        s.percent,
        s.eta_s,
        s.message,
        s.error,
        s.started,
        s.updated or "",
        s.first,
        s.last,
        s.job,
        s.eta_runs,
    )


_N_SESSION: Final = len(_SESSION_COLUMNS.split(", "))


def _marks(ph: str, n: int) -> str:
    return ", ".join([ph] * n)


def _by_stream(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.stream, []).append(row)
    return list(groups.items())


def _event_queries(ph: str, *, desc: bool, epoch: bool = False) -> tuple[str, str]:
    """The two queries of an events page, for a driver's placeholder (``?`` or ``%s``):
    the page (strictly between the bounds, one row more than the limit) and the stream's
    first id and last id with its epoch. With ``epoch``, both keep to one epoch (its value
    follows each ``stream`` parameter)."""
    direction = "DESC" if desc else "ASC"
    where = f"stream = {ph}" + (f" AND epoch = {ph}" if epoch else "")
    page = (
        f"SELECT ms, seq, epoch, data FROM events WHERE {where} "
        f"AND (ms, seq) > ({ph}, {ph}) AND (ms, seq) < ({ph}, {ph}) "
        f"ORDER BY ms {direction}, seq {direction} LIMIT {ph}"
    )
    ends = (
        f"SELECT (SELECT ms || '-' || seq FROM events WHERE {where} "
        "ORDER BY ms, seq LIMIT 1), (SELECT ms || '-' || seq || ' ' || epoch "
        f"FROM events WHERE {where} ORDER BY ms DESC, seq DESC LIMIT 1)"
    )
    return page, ends


def _page(
    stream: str, rows: Sequence[Sequence[Any]], limit: int, ends: Sequence[Any] | None
) -> EventPage:
    more = len(rows) > limit
    rows = rows[:limit]
    events = [ArchivedEvent(_id(ms, seq), epoch, bytes(data)) for ms, seq, epoch, data in rows]
    first = ends[0] if ends else None
    last, _, last_epoch = (ends[1] or "").partition(" ") if ends else ("", "", "")
    epoch = events[-1].epoch if events else (last_epoch or None)
    return EventPage(
        stream=stream,
        epoch=epoch,
        first=first,
        last=last or None,
        events=events,
        next=events[-1].id if more and events else None,
    )


def _session_filters(
    status: str | None,
    q: str | None,
    since: str | None,
    until: str | None,
    cursor: str | None,
    ph: str,
    like: str,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if status:
        clauses.append(f"status = {ph}")
        args.append(status)
    if q:
        # ``texts`` holds every message and error, casefolded (``search_form``): a plain
        # LIKE with the casefolded needle. The last message and error are asked too: a
        # session whose texts filled up still matches on them.
        clauses.append(
            f"(session {like} {ph} ESCAPE '\\' OR message {like} {ph} ESCAPE '\\' "
            f"OR error {like} {ph} ESCAPE '\\' OR texts LIKE {ph} ESCAPE '\\')"
        )
        args += [_like(q)] * 3 + [_like(search_form(q))]
    if since:
        clauses.append(f"updated >= {ph}")
        args.append(since)
    if until:
        clauses.append(f"updated <= {ph}")
        args.append(until)
    if cursor:
        updated, session = _decode_cursor(cursor)
        clauses.append(f"(updated, session) < ({ph}, {ph})")
        args += [updated, session]
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _session_page(rows: Sequence[Sequence[Any]], limit: int) -> SessionPage:
    sessions = [_session_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return SessionPage(sessions, _encode_cursor(sessions[-1]) if more and sessions else None)


# ---------------------------------------------------------------------------------------
# PostgreSQL


class PostgresStore(Store):
    """The operators' store: PostgreSQL through psycopg 3 (async), a few connections.

    Events go in with one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``
    with binary parameters: one statement however many rows (see docs/archive.md for the
    measured comparison with asyncpg and with executemany). The group loop stores the
    batches of one read (one per stream) concurrently: they share one transaction (group
    commit, ``put``); reads use the other connections of the pool.
    """

    def __init__(
        self,
        url: str,
        connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        pool_size: int = 4,
        group_commit: bool = True,
    ) -> None:
        if pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size}")
        self.url = url
        self.url_redacted = redact_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._closed = False
        # Group commit (``put``): batches waiting for the write turn; ``group_commit``
        # False stores each call's rows in its own transaction (the benchmark's "before").
        self.group_commit = group_commit
        self._queued: list[tuple[Sequence[Row], asyncio.Future[int]]] = []
        self._turn = asyncio.Lock()
        self._commits: set[asyncio.Task[list[int | Exception]]] = set()  # running group commits

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        pool_size: int = 4,
        group_commit: bool = True,
    ) -> PostgresStore:
        store = cls(url, connect_timeout_s, statement_timeout_s, pool_size, group_commit)
        conn = await store._connect()
        try:
            await store._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        store._idle.append(conn)
        return store

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        try:
            return await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self.url,
                    connect_timeout=max(1, round(self.connect_timeout_s)),
                    autocommit=False,
                    options=f"-c statement_timeout={int(self.statement_timeout_s * 1000)}",
                ),
                self.connect_timeout_s + 1.0,
            )
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise ArchiveUnavailable(
                f"cannot reach the archive database {self.url_redacted}: {exc}"
            ) from exc

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        import psycopg

        try:
            async with conn.transaction():
                # One migrator at a time across processes; the lock is not a write, so a
                # too-new schema is refused with nothing changed.
                await conn.execute("SELECT pg_advisory_xact_lock(7262657373)")
                cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
                row = await cur.fetchone()
                found = 0
                if row and row[0]:
                    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                    row = await cur.fetchone()
                    found = int(row[0]) if row else 0
                if found > SCHEMA_VERSION:
                    raise _too_new(found)
                if found == 0:
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                    )
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _PG_MIGRATIONS[version - 1]:
                        await conn.execute(statement.encode())
                    if version == 3:
                        await _backfill_texts_pg(conn)
                    await conn.execute(
                        "INSERT INTO schema_version VALUES (%s, %s)",
                        (version, _ts_of_ms(int(time.time() * 1000))),
                    )
                    log.info("archive %s: schema migrated to version %d", self.url_redacted,
                             version)  # fmt: skip
        except psycopg.Error as exc:
            raise ArchiveUnavailable(f"archive {self.url_redacted}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _use(self) -> Any:
        import psycopg

        async with self._slots:
            if self._closed:
                raise ArchiveError("the archive store is closed")
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await self._connect()  # a lost connection is replaced on next use
            try:
                yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # Connection lost, server shutting down, statement timeout: the caller
                # retries the batch; the connection is dropped, the next use reconnects.
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
                raise ArchiveUnavailable(f"archive {self.url_redacted}: {exc}") from exc
            except BaseException:
                # Anything else (a refused row, a cancelled call) may leave the connection
                # mid-transaction or mid-protocol: drop it rather than reuse it.
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
                raise
            self._idle.append(conn)

    async def close(self) -> None:
        import psycopg

        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def schema_version(self) -> int:
        async with self._use() as conn:
            cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            row = await cur.fetchone()
            await conn.commit()
        return int(row[0]) if row else 0

    async def put(self, rows: Sequence[Row]) -> int:
        """Store ``rows``; concurrent calls share one transaction (group commit).

        The archiver stores the batches of one read (one per stream) concurrently: the
        call that gets the write turn stores every batch queued meanwhile in one
        transaction (two round trips in pipeline mode, whatever the number of streams),
        instead of one transaction and two round trips per stream. Batches of a stream
        already in the group wait for the next turn, so each stream's rows are folded in
        the order they came. Each call returns only once its rows are committed (or
        raises: then none of the group's batches was, and each caller retries its own;
        the store is idempotent)."""
        if not rows:
            return 0
        if not self.group_commit:
            return (await self._commit([rows]))[0]
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((rows, done))
        try:
            # One pass of the event loop: the other batches of the same read queue too.
            await asyncio.sleep(0)
            # Until a commit took the batch (one whose runner was cancelled still answers).
            while not done.done() and self._waiting(done):
                await self._commit_turn(done)
            return await done
        except asyncio.CancelledError:
            # Leave nothing queued that no one would wait for, and no answer no one reads.
            self._queued = [q for q in self._queued if q[1] is not done]
            done.cancel()
            raise

    def _waiting(self, done: asyncio.Future[int]) -> bool:
        return any(fut is done for _, fut in self._queued)

    async def _commit_turn(self, done: asyncio.Future[int]) -> None:
        async with self._turn:
            if done.done() or not self._waiting(done):
                return
            group: list[tuple[Sequence[Row], asyncio.Future[int]]] = []
            rest: list[tuple[Sequence[Row], asyncio.Future[int]]] = []
            taken: set[str] = set()
            for item in self._queued:
                names = {r.stream for r in item[0]}
                if names & taken:
                    rest.append(item)
                else:
                    group.append(item)
                    taken |= names
            self._queued = rest
            work = asyncio.get_running_loop().create_task(
                self._commit_group([r for r, _ in group]), name="postgres-commit"
            )
            self._commits.add(work)
            work.add_done_callback(self._commits.discard)
            # Every caller learns the commit's real outcome, also when the one that runs
            # it is cancelled (the commit goes on): the others must not retry as if their
            # rows had not been stored.
            work.add_done_callback(lambda w: _settle(group, w))
            # The outcome reaches each caller through its future (set before this wakes).
            with contextlib.suppress(Exception):
                await asyncio.shield(work)

    async def _commit_group(self, batches: Sequence[Sequence[Row]]) -> list[int | Exception]:
        """``_commit`` of the group; if the database refuses it (not a lost connection), each
        batch alone: one batch the database refuses (a value out of a column's range) must
        not hold up the other streams' batches, retried with it again and again."""
        try:
            return list(await self._commit(batches))
        except ArchiveUnavailable:
            raise
        except Exception:
            if len(batches) == 1:
                raise
        outcomes: list[int | Exception] = []
        for rows in batches:
            try:
                outcomes.extend(await self._commit([rows]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _commit(self, batches: Sequence[Sequence[Row]]) -> list[int]:
        """One transaction for ``batches`` (no stream in two of them): the events, the
        folded session rows, the ended runs; each batch's count of new events."""
        streams, mss, seqs, epochs, datas = [], [], [], [], []
        by_stream: dict[str, list[Row]] = {}
        for rows in batches:
            for r in rows:
                ms, seq = _split_id(r.id)
                streams.append(r.stream)
                mss.append(ms)
                seqs.append(seq)
                epochs.append(r.epoch)
                datas.append(r.data)
                by_stream.setdefault(r.stream, []).append(r)
        sids = sorted(name[8:] for name in by_stream if name.startswith("session:"))
        # Pipeline mode, three round trips whatever the number of streams: BEGIN and the
        # session rows' SELECT; the insert, while a thread folds the rows into the
        # sessions' new state (Python's part overlaps the database's); the upserts and
        # COMMIT.
        async with self._use() as conn, conn.pipeline(), conn.transaction():
            found: dict[str, Sequence[Any]] = {}
            if sids:
                # Locked in one order (ORDER BY): two archivers never wait on each
                # other crosswise (streams change hands on a takeover).
                cur = await conn.execute(
                    f"SELECT {_SESSION_COLUMNS}, run, texts FROM sessions "
                    "WHERE session = ANY(%b::text[]) ORDER BY session FOR UPDATE",
                    (sids,),
                )
                found = {row[0]: row for row in await cur.fetchall()}
            ins = await conn.execute(
                # Binary parameters (%b): arrays of bytes go as they are, not
                # hex-encoded text; measured about 1.5x faster (bench/archive.py).
                "WITH ins AS (INSERT INTO events (stream, ms, seq, epoch, data) "
                "SELECT * FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::text[], "
                "%b::bytea[]) ON CONFLICT DO NOTHING RETURNING stream) "
                "SELECT stream, COUNT(*) FROM ins GROUP BY stream",
                (streams, mss, seqs, epochs, datas),
            )
            if len(streams) >= _FOLD_THREAD_ROWS:
                folding = asyncio.ensure_future(asyncio.to_thread(_fold_all, by_stream, found))
                try:
                    new = {name: int(n) for name, n in await ins.fetchall()}
                finally:
                    folded = await folding
            else:
                new = {name: int(n) for name, n in await ins.fetchall()}
                folded = _fold_all(by_stream, found)
            await self._upsert(conn, *folded)
        return [sum(new.get(name, 0) for name in {r.stream for r in rows}) for rows in batches]

    async def _upsert(
        self,
        conn: psycopg.AsyncConnection[Any],
        states: list[tuple[Any, ...]],
        ended: list[tuple[Any, ...]],
        indexed: list[tuple[Any, ...]],
    ) -> None:
        """Write what ``_fold_all`` made: the sessions' rows, the runs that ended, and the
        index's sessions that have no row yet (after the others: they only fill gaps)."""
        async with conn.cursor() as cur:
            if states:
                columns = [*_SESSION_COLUMNS.split(", ")[1:], "run", "texts"]
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
                await cur.executemany(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}, run, texts) "
                    f"VALUES ({_marks('%s', _N_SESSION + 2)}) "
                    f"ON CONFLICT (session) DO UPDATE SET {updates}",
                    states,
                )
            if ended:
                await cur.executemany(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({_marks('%s', 7)}) "
                    "ON CONFLICT DO NOTHING",
                    ended,
                )
            if indexed:
                await cur.executemany(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
                    f"VALUES ({_marks('%s', _N_SESSION)}) ON CONFLICT DO NOTHING",
                    indexed,
                )

    async def events(
        self,
        stream: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        order: Order = "asc",
        epoch: str | None = None,
    ) -> EventPage:
        _check_stream(stream)
        b = _bounds(after, before, limit, order)
        key = (stream,) if epoch is None else (stream, epoch)
        page_sql, ends_sql = _event_queries("%s", desc=b.desc, epoch=epoch is not None)
        async with self._use() as conn:
            cur = await conn.execute(page_sql, (*key, *b.lo, *b.hi, b.limit + 1))
            rows = await cur.fetchall()
            cur = await conn.execute(ends_sql, (*key, *key))
            ends = await cur.fetchone()
            await conn.commit()
        return _page(stream, rows, b.limit, ends)

    async def sessions(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        _check_limit(limit)
        where, args = _session_filters(status, q, since, until, cursor, "%s", "ILIKE")
        async with self._use() as conn:
            cur = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions {where} "
                "ORDER BY updated DESC, session DESC LIMIT %s",
                (*args, limit + 1),
            )
            rows = await cur.fetchall()
            await conn.commit()
        return _session_page(rows, limit)

    async def searched(self, sids: Sequence[str], q: str) -> set[str]:
        if not sids or not q:
            return set()
        async with self._use() as conn:
            cur = await conn.execute(
                "SELECT session FROM sessions WHERE session = ANY(%s) "
                "AND texts LIKE %s ESCAPE '\\'",
                (list(sids), _like(search_form(q))),
            )
            rows = await cur.fetchall()
            await conn.commit()
        return {str(r[0]) for r in rows}

    async def session(self, sid: str) -> ArchivedSession | None:
        async with self._use() as conn:
            cur = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session = %s", (sid,)
            )
            row = await cur.fetchone()
            await conn.commit()
        return _session_row(row) if row else None

    async def prune(self, *, older_than_s: float, chunk: int = PRUNE_CHUNK) -> int:
        cutoff = _cutoff_ms(older_than_s)
        deleted = 0
        while True:  # in slices, as on SQLite: short transactions, under statement_timeout
            async with self._use() as conn, conn.transaction():
                cur = await conn.execute(_PRUNE_PG, (cutoff, chunk))
                n = int(cur.rowcount)
            deleted += n
            if n < chunk:
                break
        async with self._use() as conn, conn.transaction():
            await conn.execute("DELETE FROM sessions WHERE updated < %s", (_ts_of_ms(cutoff),))
            await conn.execute("DELETE FROM runs WHERE ended < %s", (_ts_of_ms(cutoff),))
        return deleted

    async def jobs(self, *, limit: int = 100) -> list[JobSummary]:
        _check_limit(limit)
        return await self._jobs(None, limit)

    async def job(self, job: str) -> JobSummary | None:
        found = await self._jobs(_check_job(job), 1)
        return found[0] if found else None

    async def _jobs(self, job: str | None, limit: int) -> list[JobSummary]:
        counts_sql, recent_sql = _jobs_queries("%s", job is not None)
        only = () if job is None else (job,)
        async with self._use() as conn:
            cur = await conn.execute(counts_sql, (_today(), *only, limit))
            counts = await cur.fetchall()
            cur = await conn.execute(recent_sql, only)
            recent = await cur.fetchall()
            await conn.commit()
        return _summaries(counts, recent, with_profile=job is not None)

    async def count(self, stream: str | None = None) -> int:
        async with self._use() as conn:
            if stream is None:
                cur = await conn.execute("SELECT COUNT(*) FROM events")
            else:
                cur = await conn.execute("SELECT COUNT(*) FROM events WHERE stream = %s", (stream,))
            row = await cur.fetchone()
            await conn.commit()
        return int(row[0]) if row else 0

    async def count_before(self, stream: str, before: str, *, epoch: str | None = None) -> int:
        key = (stream,) if epoch is None else (stream, epoch)
        async with self._use() as conn:
            cur = await conn.execute(
                _count_before_query("%s", epoch is not None), (*key, *_split_id(before))
            )
            row = await cur.fetchone()
            await conn.commit()
        return int(row[0]) if row else 0


# ---------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


def parse_archive_url(url: str) -> tuple[Literal["sqlite", "postgresql"], str]:
    """The engine and its address; ``ConfigError`` naming the accepted forms otherwise."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"archive URL {url!r}: use sqlite:///ABSOLUTE/PATH (three slashes, then the path)"
            )
        return "sqlite", rest
    if sep and scheme in ("postgresql", "postgres"):
        return "postgresql", url
    raise ConfigError(
        f"unknown archive URL scheme in {redact_url(url)!r}: use sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


async def open_store(url: str, *, connect_timeout_s: float = 5.0) -> Store:
    """Open (creating or migrating as needed) the store ``url`` names.

    Raises ``ConfigError`` for a URL of another form, ``ArchiveUnavailable`` when the
    database cannot be reached, ``SchemaTooNew`` for a store written by newer code."""
    engine, address = parse_archive_url(url)
    if engine == "sqlite":
        return await SqliteStore.open(Path(address), timeout_s=connect_timeout_s)
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "a postgresql:// archive needs psycopg 3: pip install 'rpa-bus[postgres]'"
        ) from exc
    return await PostgresStore.open(url, connect_timeout_s=connect_timeout_s)
