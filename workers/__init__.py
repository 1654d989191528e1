"""rpa-bus workers: consumer processes that split the streams' entries through one
consumer group per kind (``P:archiver``, ``P:webhooks``).

Each kind runs as its own service (``rpa-bus archiver``, ``rpa-bus webhooks``); N processes
of a kind share the group, and a dead process's streams and pending entries are taken
over by the others. The loop they share lives in ``rpa_bus.redisio`` (``GroupWorker``).

The archive store (``open_store``) keeps every event in SQLite or PostgreSQL; its read
API (``Store.events``, ``Store.sessions``) serves history past Redis's retention.
"""

from __future__ import annotations

from workers._archive import (
    EXPIRE_LUA,
    TRIM_CAP,
    TRIM_LUA,
    Archiver,
    ArchiverSettings,
    ArchiverStats,
    ArchiveSink,
)
from workers._store import (
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
)

__all__ = [
    "EXPIRE_LUA",
    "MAX_PAGE",
    "SCHEMA_VERSION",
    "TRIM_CAP",
    "TRIM_LUA",
    "ArchiveError",
    "ArchiveSink",
    "ArchiveUnavailable",
    "ArchivedEvent",
    "ArchivedSession",
    "Archiver",
    "ArchiverSettings",
    "ArchiverStats",
    "EventPage",
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
]
