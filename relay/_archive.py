"""The relay's link to the archive store (issue 14, "reading through").

``Archive`` opens the store ``RPA_BUS_ARCHIVE_URL`` names lazily and reopens it after a
failure, so a store that is down when the relay starts (or goes down later) never stops
the relay: it serves what Redis holds, and every read that needs the archive raises
``ArchiveUnavailable``, which the doors turn into ``unavailable`` (a 503 on the HTTP API,
an ``error`` frame on a subscription, whose replay then waits for the store).

Opening is tried at most once per backoff interval (capped at ``retry_max_s``): a relay
with many clients asking while the database is down does not hammer it with connects.
Once open, the store object reconnects by itself (PostgreSQL drops a lost connection and
opens another on next use; SQLite is a local file).

Used by the history API (``relay._history.ArchiveHistory``) and the subscription core's
replay (``relay._subscription``); other API handlers reach it through ``ApiContext.archive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from rpa_bus import ConfigError
from rpa_bus.archive import (
    ArchiveError,
    ArchiveUnavailable,
    SchemaTooNew,
    Store,
    open_store,
    parse_archive_url,
    redact_url,
)
from rpa_bus.redisio import AsyncClient, Backoff, RateLimitedLog, cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")


class Archive:
    """A lazily opened, reopening archive store: ``await archive.run(lambda s: s.events(...))``.

    ``url`` is checked at once (``ConfigError`` for an unknown scheme); nothing connects
    until the first read (or ``start()``, which tries once in the background).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        retry_max_s: float = 5.0,
        opener: Callable[[str], Awaitable[Store]] | None = None,
    ) -> None:
        parse_archive_url(url)  # an unknown scheme is a configuration error, not an outage
        self.url = url
        self.url_redacted = redact_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._opener = opener
        self._store: Store | None = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(initial_s=0.2, max_s=retry_max_s)
        self._next_try = 0.0
        self._last_error: str | None = None
        self._down_log = RateLimitedLog(log, interval_s=30.0)
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # Reads that failed because the store was down (for /metrics and tests).
        self.failures = 0

    @property
    def up(self) -> bool:
        """Whether the store is open and its last read succeeded."""
        return self._store is not None and self._last_error is None

    def start(self) -> None:
        """Try to open the store in the background (a relay starting does not wait for it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._warm(), name="archive-open")

    async def _warm(self) -> None:
        with contextlib.suppress(ArchiveUnavailable):  # logged; the next read tries again
            await self.store()

    async def store(self) -> Store:
        """The open store, opening it if need be; ``ArchiveUnavailable`` when it cannot be
        reached now (or was refused: a schema newer than this code)."""
        store = self._store
        if store is not None:
            return store
        async with self._lock:
            if self._store is not None:
                return self._store
            if self._closed:
                raise ArchiveUnavailable("the relay is closing")
            now = time.monotonic()
            if now < self._next_try:
                raise ArchiveUnavailable(self._last_error or "the archive is unavailable")
            try:
                if self._opener is not None:
                    opened = await self._opener(self.url)
                else:
                    opened = await open_store(self.url, connect_timeout_s=self._connect_timeout_s)
            except (ArchiveUnavailable, SchemaTooNew, OSError) as exc:
                self._failed(exc)
                self._next_try = time.monotonic() + self._backoff.next_s()
                raise ArchiveUnavailable(self._last_error or str(exc)) from exc
            except ConfigError as exc:  # e.g. psycopg missing for a postgresql:// URL
                self._failed(exc)
                self._next_try = time.monotonic() + self._backoff.max_s
                raise ArchiveUnavailable(str(exc)) from exc
            self._backoff.reset()
            self._store = opened
            self._ok()
            log.info("archive %s open for reading", self.url_redacted)
            return opened

    async def run(self, call: Callable[[Store], Awaitable[T]]) -> T:
        """``call(store)``; ``ArchiveUnavailable`` when the store is down (counted, logged)."""
        store = await self.store()
        try:
            result = await call(store)
        except ArchiveUnavailable as exc:
            self._failed(exc)
            raise
        except ArchiveError as exc:  # e.g. the store was closed under us: treat as down
            self._failed(exc)
            raise ArchiveUnavailable(str(exc)) from exc
        if self._last_error is not None:
            self._ok()
        return result

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._last_error = f"the archive {self.url_redacted} is unavailable: {exc}"
        self._down_log.warning("%s", self._last_error)

    def _ok(self) -> None:
        if self._last_error is not None:
            self._last_error = None
            self._down_log.recovered("archive %s reachable again", self.url_redacted)

    async def close(self) -> None:
        """Close the store (idempotent); later reads raise ``ArchiveUnavailable``."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        async with self._lock:
            store, self._store = self._store, None
        if store is not None:
            await store.close()


async def trimmed_count(client: AsyncClient, key: str) -> int | None:
    """How many entries Redis removed from stream ``key`` since it was made: XINFO
    STREAM's ``entries-added`` minus its ``length`` (Redis 7.0+). Streams lose entries
    only at their head (MAXLEN/MINID trims; nothing here uses XDEL), so these are exactly
    the entries older than its first. ``0``: Redis holds the whole stream. None when Redis
    does not say (before 7.0) or the stream does not exist."""
    try:
        info: Any = await client.xinfo_stream(key)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    added = info.get("entries-added")
    if added is None:
        return None
    return max(0, int(added) - int(info["length"]))
