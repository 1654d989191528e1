"""The archiver: every session stream and the ``sessions`` index into the archive store.

It reads with the consumer group ``P:archiver`` through the shared ``GroupWorker`` (N
processes split the streams; a dead process's streams and pending entries are taken over
after ``claim_idle_ms``), and is the group's sink: ``put`` commits a stream's batch to the
store and only then returns, so the loop XACKs only what is stored. The store ignores
rows it already has (stream, epoch, id), so a crash between commit and XACK stores
nothing twice.

No trim before archive. At start-up the archiver sets ``archive=1`` in ``P:config`` (on a
cluster first in every bucket's ``P:{B}:config`` and the index's copy, see ``_announce``);
the append scripts read it on every call, so producers neither trim streams nor expire
finished sessions from then on. The archiver does both itself:

- trim: while a batch is stored, a stream longer than ``maxlen`` loses its oldest
  entries, but only those before the batch (stored: per stream, a batch is given only
  once the one before it is stored; its XACK may still be on its way, and an entry
  trimmed meanwhile is, if given again, a deleted entry the loop skips), at most
  ``TRIM_CAP`` per batch. Redis keeps the newest ``maxlen`` entries for live replay;
  an archiver that lags makes Redis grow.
- profile: when a run of a job ends (its terminal event stored), the job's learned step
  profile (``Store.profile``: step durations of its newest 50 successful runs) is written
  to ``P:job:JOB:profile`` (JSON, ``PROFILE_TTL_S``) for producers to read when a run of
  the job starts; a store that cannot answer leaves the old profile (logged).
- expire: once a session's terminal event (``finished``/``failed``) is stored and is
  still the stream's last entry, its stream and meta hash get the retention TTL the
  producer would have set.

Lag (entries pending in the group plus not yet delivered, over the streams this process
reads) is sampled every ``lag_interval_s`` into ``stats.lag`` and, with a metrics port,
the Prometheus gauge ``rpa_bus_archive_lag_entries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from rpa_bus import ARCHIVE_FIELD, ConfigError, EnvReader, Settings, is_terminal
from rpa_bus.archive import ArchiveError, Store, open_store, redact_url
from rpa_bus.redisio import (
    GUARDED_FAILURES,
    AsyncClient,
    Entry,
    GroupSettings,
    GroupStats,
    GroupWorker,
    RateLimitedLog,
    async_client,
    cancel_and_wait,
    check_config_async,
    close_async,
    is_retryable,
    settled,
)

log = logging.getLogger(__name__)

KIND: Final = "archiver"
# At most this many entries are trimmed per stored batch (the trim script reads them).
TRIM_CAP: Final = 2_000
# A job's learned profile outlives its last run by this much (refreshed by every run end).
PROFILE_TTL_S: Final = 30 * 86_400
INDEX_MAXLEN: Final = 100_000
# Flag hashes written per pipeline on a cluster (at most 4096 buckets + the index's).
_FLAG_CHUNK: Final = 1_024
# Streams whose trim room ``ArchiveSink`` remembers; past this many it forgets them all
# (each is then trimmed at its next batch, as before it was known).
_ROOM_STREAMS: Final = 65_536
# ``tune_gc``: allocations between two collections of the young generation (CPython: 700).
GC_YOUNG: Final = 50_000

# KEYS: the stream. ARGV: the id of the batch's first entry (all entries before it are
# stored), maxlen, cap. Deletes the oldest entries beyond maxlen that come before that
# id, at most cap. Returns {how many, room}: room is maxlen minus the stream's length
# after (negative while it is still longer), how many entries it can take before
# another trim can cut anything.
TRIM_LUA: Final = """
local maxlen = tonumber(ARGV[2])
local len = redis.call('XLEN', KEYS[1])
local excess = len - maxlen
if excess <= 0 then return {0, -excess} end
if excess > tonumber(ARGV[3]) then excess = tonumber(ARGV[3]) end
local old = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', excess)
if #old == 0 then return {0, maxlen - len} end
local last = old[#old][1]
local n = redis.call('XTRIM', KEYS[1], 'MINID', last) + redis.call('XDEL', KEYS[1], last)
return {n, maxlen - len + n}
"""

# KEYS: the session stream, its meta hash. ARGV: the stored terminal entry's id, ttl ms.
# Sets the retention TTL only if that entry is still the stream's last (a new run that
# started meanwhile keeps its keys).
EXPIRE_LUA: Final = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 or last[1][1] ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class ArchiverSettings:
    """The archiver's settings on top of the bus's (units in the names)."""

    bus: Settings
    archive_url: str
    consumer: str | None = None  # default: host-pid (the group loop's default)
    claim_idle_ms: int = 30_000
    block_ms: int = 1_000
    count: int = 500
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    lag_interval_s: float = 5.0
    # Archive retention: events older than this are pruned every prune_interval_s.
    retention_days: float | None = None  # None: keep forever
    prune_interval_s: float = 3600.0
    connect_timeout_s: float = 5.0

    @classmethod
    def from_env(
        cls, bus: Settings, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ArchiverSettings:
        """Read ``RPA_BUS_ARCHIVER_*`` (and ``RPA_BUS_ARCHIVE_RETENTION_DAYS``); options win.

        The archive URL comes from ``bus.archive_url`` (``RPA_BUS_ARCHIVE_URL``) unless an
        override names one."""
        env = EnvReader(environ)
        retention = env.number("ARCHIVE_RETENTION_DAYS", 0.0, lo=0.0, hi=1e6)
        values: dict[str, Any] = {
            "archive_url": bus.archive_url,
            "consumer": env.optional_text("ARCHIVER_CONSUMER"),
            "claim_idle_ms": env.integer("ARCHIVER_CLAIM_IDLE_MS", 30_000, lo=100),
            "block_ms": env.integer("ARCHIVER_BLOCK_MS", 1_000, lo=10, hi=60_000),
            "count": env.integer("ARCHIVER_COUNT", 500, lo=1, hi=10_000),
            "metrics_host": env.text("ARCHIVER_METRICS_HOST", "127.0.0.1"),
            "metrics_port": env.integer("ARCHIVER_METRICS_PORT", 0, lo=0, hi=65535) or None,
            "retention_days": retention or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["archive_url"]:
            raise ConfigError(
                "no archive configured: pass --archive-url sqlite:///PATH or "
                "postgresql://..., or set RPA_BUS_ARCHIVE_URL"
            )
        return cls(bus=bus, **values)

    def redacted(self) -> str:
        return redact_url(self.archive_url)


@dataclass
class ArchiverStats:
    batches: int = 0
    stored: int = 0  # rows new to the store
    replayed: int = 0  # rows the store already had (a replay after a crash)
    trimmed: int = 0
    expired: int = 0
    profiles: int = 0  # job step profiles written to Redis
    store_errors: int = 0
    storing: int = 0  # batches in the store's hands now (put called, not returned)
    lag: int = 0
    lag_by_stream: dict[str, int] = field(default_factory=dict)
    last_store_ms: float = 0.0


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.lag = Gauge(
            "rpa_bus_archive_lag_entries",
            "Entries of the streams this archiver reads that are not archived yet",
            registry=self.registry,
        )
        self.stored = Counter(
            "rpa_bus_archive_stored_entries", "Entries written to the archive",
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "rpa_bus_archive_store_errors", "Batches the store failed (retried)",
            registry=self.registry,
        )  # fmt: skip


class ArchiveSink:
    """The group loop's sink: store a stream's batch, then trim and expire in Redis."""

    def __init__(
        self,
        store: Store,
        client: AsyncClient,
        bus: Settings,
        stats: ArchiverStats,
        *,
        metrics: _Metrics | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._stats = stats
        self._trim = client.register_script(TRIM_LUA)
        self._expire = client.register_script(EXPIRE_LUA)
        self._metrics = metrics
        self._store_log = RateLimitedLog(log)
        self._profile_log = RateLimitedLog(log)
        self._client = client
        # Stream key -> how many entries it may still take before a trim can cut
        # anything, as the last trim found it, less the entries given since (each of
        # them was in the stream by then, or came after: never an overestimate).
        self._room: dict[str, int] = {}

    async def put(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        start = time.perf_counter()
        # The trim deletes only entries before this batch, stored before it was given: it
        # runs while the store commits, not after (off the critical path).
        first = entries[0]
        trim = None
        if self._trim_due(first.key, len(entries)):
            trim = asyncio.ensure_future(self._trim_before(first))
        self._stats.storing += 1
        try:
            new = await self._store.put(entries)
        except BaseException as exc:
            if isinstance(exc, ArchiveError):
                self._stats.store_errors += 1
                if self._metrics is not None:
                    self._metrics.errors.inc()
                self._store_log.warning("archive store failed (%s); the batch is retried", exc)
            if trim is not None:
                await settled(trim)
            raise
        finally:
            self._stats.storing -= 1
        self._store_log.recovered("archive store accepts entries again")
        self._stats.last_store_ms = (time.perf_counter() - start) * 1000
        self._stats.batches += 1
        self._stats.stored += new
        self._stats.replayed += len(entries) - new
        if self._metrics is not None:
            self._metrics.stored.inc(new)
        if trim is not None:
            await trim
        await self._after_store(entries)

    def _trim_due(self, key: str, count: int) -> bool:
        """Whether a batch of ``count`` entries of stream ``key`` calls for a trim: not
        while the stream had room for them at its last trim. Most streams never reach
        maxlen, and are checked once per maxlen entries, not once per batch."""
        room = self._room.pop(key, 0) - count
        if room > 0:
            self._room[key] = room
            return False
        return True

    async def _trim_before(self, first: Entry) -> None:
        """Trim the stream's oldest entries beyond its maxlen that come before ``first``
        (at most ``TRIM_CAP``), and note its room. A Redis failure raises: the loop
        retries the batch."""
        maxlen = self._bus.maxlen if first.stream.startswith("session:") else INDEX_MAXLEN
        trimmed, room = await self._trim(keys=[first.key], args=[first.id, maxlen, TRIM_CAP])
        self._stats.trimmed += int(trimmed)
        if len(self._room) >= _ROOM_STREAMS:
            self._room.clear()
        self._room[first.key] = int(room)

    async def _after_store(self, entries: Sequence[Entry]) -> None:
        """Expire a finished session whose end is stored. A Redis failure here raises: the
        loop retries the batch (the store ignores the rows it has) once Redis answers, and
        acknowledges it then."""
        first, last = entries[0], entries[-1]
        if first.stream.startswith("session:") and is_terminal(last.data):
            self._room.pop(first.key, None)  # ended: checked afresh if it starts again
            meta = first.key + ":meta"
            ttl_ms = int(self._bus.retention_s * 1000)
            # Awaited before the +=: ``x += await f()`` reads x first, and a concurrent
            # batch's increment made meanwhile would be lost.
            expired = await self._expire(keys=[first.key, meta], args=[last.id, ttl_ms])
            self._stats.expired += int(expired)
            await self._update_profile(first.stream[8:])

    async def _update_profile(self, sid: str) -> None:
        """A run ended: write its job's learned step profile where producers read it."""
        try:
            session = await self._store.session(sid)
            if session is None or session.job is None:
                return
            profile = await self._store.profile(session.job)
        except ArchiveError as exc:
            self._profile_log.warning("cannot read a job's step profile (%s); kept as is", exc)
            return
        if profile.runs:
            key = self._bus.keys.job_profile(session.job)
            await self._client.set(key, orjson.dumps(profile.as_json()), ex=PROFILE_TTL_S)
            self._stats.profiles += 1


class Archiver:
    """One archiver process's service: an async context manager; ``run()`` until
    ``close()``. Opening the store fails fast (``ArchiveError``, ``ConfigError``) so a
    bad URL or an unreachable database stops the process at start-up with a clear error."""

    def __init__(
        self,
        settings: ArchiverSettings,
        *,
        store: Store | None = None,
        client: AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.stats = ArchiverStats()
        self._store = store
        self._own_store = store is None
        self._client = client
        self._own_client = client is None
        self._worker: GroupWorker | None = None
        self._closing = asyncio.Event()
        self._metrics: _Metrics | None = None
        self._server: Any = None
        self.metrics_port: int | None = None

    @property
    def group_stats(self) -> GroupStats | None:
        """The group loop's counters (units owned, streams tailed...), once running."""
        return self._worker.stats if self._worker is not None else None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ArchiveError("the archiver is not open")
        return self._store

    async def __aenter__(self) -> Archiver:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    async def open(self) -> None:
        s = self.settings
        if self._store is None:
            self._store = await open_store(s.archive_url, connect_timeout_s=s.connect_timeout_s)
        if self._client is None:
            self._client = async_client(s.bus)
        if s.metrics_port is not None:
            self._metrics = _Metrics()
            self._server, _thread = start_http_server(
                s.metrics_port, s.metrics_host, registry=self._metrics.registry
            )
            self.metrics_port = int(self._server.server_port)

    async def _announce(self, client: AsyncClient) -> None:
        """Record that an archive exists (P:config archive=1), after the handshake.

        On a cluster every bucket's flag hash ``P:{B}:config`` and the index's
        ``P:{P:sessions}:config`` get the flag first, where the append scripts read it
        atomically with their writes (``P:config`` is in another slot); ``P:config`` comes
        last, so it is set only once every copy is. All of it before the group loop
        creates a single group: every append that runs after its bucket's flag keeps its
        entries, and only entries already gone before the group was created are never
        archived. Written again at every start (a flag lost with a failover comes back).
        """
        keys = self.settings.bus.keys
        await check_config_async(client, keys)
        if self.settings.bus.target.topology == "cluster":
            await write_flags(client, keys.flag_keys())
        await client.hset(keys.config, ARCHIVE_FIELD, "1")

    async def run(self) -> None:
        """Archive until ``close()``. Redis outages are waited out (the group loop backs
        off); store outages keep the batch and retry it."""
        if self._store is None or self._client is None:
            await self.open()
        if self._store is None or self._client is None:
            raise ArchiveError("the archiver could not open its store or Redis client")
        s = self.settings
        # Built (and its settings checked) before archive=1 is announced.
        sink = ArchiveSink(self._store, self._client, s.bus, self.stats, metrics=self._metrics)
        group = _group_settings(s)
        self._worker = GroupWorker(s.bus, group, sink, client=self._client)
        down = RateLimitedLog(log)
        while not self._closing.is_set():
            try:
                await self._announce(self._client)
                break
            except GUARDED_FAILURES as exc:  # is_retryable: redis-py #4287
                if not is_retryable(exc):
                    raise
                down.warning("Redis unavailable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 1.0)
        if self._closing.is_set():
            return
        log.info("archiver %s: archiving into %s", group.consumer, s.redacted())
        tasks = [
            asyncio.create_task(self._worker.run(), name="archiver-group"),
            asyncio.create_task(self._sample_lag(), name="archiver-lag"),
        ]
        if s.retention_days:
            tasks.append(asyncio.create_task(self._prune_loop(), name="archiver-prune"))
        closing = asyncio.create_task(self._closing.wait(), name="archiver-closing")
        try:
            done, _ = await asyncio.wait([tasks[0], closing], return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                self._worker.close()
                await self._worker.wait_closed()
            await tasks[0]
        finally:
            await cancel_and_wait([*tasks, closing])

    async def _sample_lag(self) -> None:
        while True:
            if self._worker is not None:
                try:
                    by_stream = await self._worker.lag()
                except GUARDED_FAILURES as exc:  # is_retryable: redis-py #4287
                    if not is_retryable(exc):
                        raise
                else:
                    self.stats.lag_by_stream = by_stream
                    self.stats.lag = sum(by_stream.values())
                    if self._metrics is not None:
                        self._metrics.lag.set(self.stats.lag)
            await asyncio.sleep(self.settings.lag_interval_s)

    async def _prune_loop(self) -> None:
        days = self.settings.retention_days or 0
        while True:
            try:
                n = await self.store.prune(older_than_s=days * 86_400)
                if n:
                    log.info("archive: pruned %d events older than %g days", n, days)
            except ArchiveError as exc:
                log.warning("archive: pruning failed (%s); trying again later", exc)
            await asyncio.sleep(self.settings.prune_interval_s)

    def close(self) -> None:
        self._closing.set()

    async def wait_closed(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_client and self._client is not None:
            await close_async(self._client)
            self._client = None
        if self._own_store and self._store is not None:
            await self._store.close()
            self._store = None


def tune_gc(young: int = GC_YOUNG) -> None:
    """Fit the garbage collector to an archiver process (``rpa-bus archiver`` calls it
    once start-up is done): what start-up allocated (modules, clients) is frozen out of
    the collections, and the young generation is collected every ``young`` allocations.

    The archiver allocates in rounds: each entry read is a few objects (the reply's lists,
    an ``Entry``, the decoded event) that live until its round is stored. Collected every
    700 allocations, a round's objects are promoted to the older generations, whose
    collections then walk every object of the process: 2-3 us per event, a fifth of the
    archiver's time on SQLite (docs/benchmarks.md). Frozen and collected every 50,000
    (about one read of 20 streams' 500 entries each), that is 0.1-0.25 us. The process's
    memory does not grow with it: reference counting frees nearly everything, and only
    garbage in cycles waits for the next collection."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


async def write_flags(client: AsyncClient, flag_keys: Sequence[str]) -> None:
    """HSET ``archive=1`` into each flag hash (a cluster pipeline splits them by node);
    the first failure raises (the caller retries all: HSET is idempotent)."""
    for start in range(0, len(flag_keys), _FLAG_CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in flag_keys[start : start + _FLAG_CHUNK]:
            pipe.hset(key, ARCHIVE_FIELD, "1")
        await pipe.execute()


def _group_settings(s: ArchiverSettings) -> GroupSettings:
    # read_ahead: the next round is read from Redis while the store commits this one.
    group = GroupSettings(
        kind=KIND,
        claim_idle_ms=s.claim_idle_ms,
        block_ms=s.block_ms,
        count=s.count,
        read_ahead=True,
    )
    return group if s.consumer is None else replace(group, consumer=s.consumer)
