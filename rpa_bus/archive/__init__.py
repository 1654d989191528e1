"""The archive store: the I/O room that keeps every event of every session durably, in
SQLite or PostgreSQL, past Redis's retention.

The archiver (``workers``) writes it; the relay's replay and history and the CLI read it.
Like ``rpa_bus.redisio`` it is an I/O room beside the pure contract: the pure modules of
``rpa_bus`` never import it.
"""

from __future__ import annotations

from rpa_bus.archive._runs import WINDOW_RUNS, FinishedRun, JobSummary
from rpa_bus.archive._store import (
    MAX_PAGE,
    SCHEMA_VERSION,
    ArchivedEvent,
    ArchivedSession,
    ArchiveError,
    ArchiveUnavailable,
    EventPage,
    PostgresStore,
    Record,
    Row,
    SchemaTooNew,
    SessionPage,
    SqliteStore,
    Store,
    open_store,
    parse_archive_url,
    redact_url,
    session_cursor,
)

__all__ = [
    "MAX_PAGE",
    "SCHEMA_VERSION",
    "WINDOW_RUNS",
    "ArchiveError",
    "ArchiveUnavailable",
    "ArchivedEvent",
    "ArchivedSession",
    "EventPage",
    "FinishedRun",
    "JobSummary",
    "PostgresStore",
    "Record",
    "Row",
    "SchemaTooNew",
    "SessionPage",
    "SqliteStore",
    "Store",
    "open_store",
    "parse_archive_url",
    "redact_url",
    "session_cursor",
]
