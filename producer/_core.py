"""What the sync and async producers share: input checks, envelopes, sequence numbers,
steps, pace and learned eta, the queue and journals, and every decision of the flusher
(what to write next, on which node, what a reply means, when to back off, spill or stop).
The twins add only the I/O: a thread and ``redis.Redis``, or a task and ``redis.asyncio.Redis``.

The flusher is written once, as generators that yield what they need done:

- ``BaseProducer._flusher()`` yields ``Write(batch)`` (the driver sends back ``None`` or
  the Redis failure), ``Sleep(s)`` (wait for close() at most ``s``), ``IDLE`` (wait for an
  emit), ``NOTIFY`` (wake ``flush()`` waiters) and ``Fetch(key)`` (GET a job's learned
  step profile for the sessions' ETA; the driver sends back the value or the failure);
- ``BaseProducer._rounds()`` / ``_config_rounds()`` yield, for one node, ``Pipeline``
  (send these commands in one round trip, reply with the results, errors included) and
  ``LoadScripts``.

``Producer`` drives them by blocking, ``AsyncProducer`` by awaiting; neither decides.

Order of unwritten events, oldest first: adopted journals (left by dead processes writing
to the same target), this producer's own journal, the batch in flight (``_held``), the
memory queue. The flusher always writes from the oldest non-empty source, so each stream's
events reach Redis in the order they were emitted.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Final, Self

import orjson
from redis import exceptions as rx

from producer._journal import (
    DEFAULT_FSYNC,
    Item,
    Journal,
    adopt_all,
    check_fsync,
    journal_fsync_from_env,
    target_of,
)
from rpa_bus import (
    JOB_NAME,
    LEVELS,
    TERMINAL_TYPES,
    BusError,
    ConfigError,
    ConfigMismatch,
    Envelope,
    InvalidEvent,
    InvalidEventType,
    Keys,
    Settings,
    StepProfile,
    StreamRef,
    Unavailable,
    encode,
    eta_of,
    last_fields,
    make,
    now_ts,
    parse_stream_name,
    percent_of,
    progress,
    validate,
    validate_session_id,
    validate_type,
)
from rpa_bus.redisio import (
    APPEND_SHA,
    INDEX_MAXLEN,
    ONCE_SHA,
    SCRIPTS,
    Backoff,
    RateLimitedLog,
    check_config_reply,
    config_commands,
    is_retryable,
    seen_key,
    trim_args,
)

log = logging.getLogger("producer")

# Lifecycle types: their own Session methods (emit() refuses them), and the events that
# go into the sessions index.
_LIFECYCLE: Final = frozenset({"started", "finished", "failed"})

Call = tuple[tuple[Any, ...], list[Item]]


class ProducerClosed(BusError):
    """An event was emitted after ``close()``."""


class NotReplicated(rx.RedisError):
    """WAIT saw fewer replicas acknowledge a batch than ``min_replicas``: the batch does
    not count as written and is sent again (the append script skips what it applied)."""


def call_key(args: tuple[Any, ...]) -> str:
    """The key a call is routed by on a cluster: the script's first key."""
    return str(args[3])


def _fold(group: list[Item]) -> dict[str, str]:
    """The meta fields a run of events leaves: for each field, the last event's value
    (``rpa_bus._state.last_fields``, which the archive's fold uses too)."""
    return last_fields([item.event for item in group])


class Batch:
    """Events written in one round trip, and where they came from."""

    __slots__ = ("calls", "end", "items", "journal")

    def __init__(self, items: list[Item], journal: Journal | None, end: int) -> None:
        self.items = items
        self.journal = journal  # None: from the memory queue (``_held``)
        self.end = end  # journal offset after the batch
        self.calls: list[Call] = []


# -- what the flusher core asks its driver for -----------------------------------------


class Write:
    """Write the batch; send back None, or the Redis failure (``REDIS_FAILURES``)."""

    __slots__ = ("batch",)

    def __init__(self, batch: Batch) -> None:
        self.batch = batch


class Sleep:
    """Wait ``seconds``, or less if close() is called."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


IDLE: Final = "idle"  # clear the wake-up signal; wait for it unless _has_work()
NOTIFY: Final = "notify"  # wake flush() waiters


class Fetch:
    """GET ``key`` (a job's learned step profile); send back the value (bytes or None) or
    the Redis failure."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


FlusherStep = Write | Sleep | Fetch | str


class Pipeline:
    """One round trip on one node: the commands, pipelined, without a transaction; send
    back the list of replies, errors as exception objects (``raise_on_error=False``)."""

    __slots__ = ("commands",)

    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands


class LoadScripts:
    """``SCRIPT LOAD`` each of ``scripts`` on the node; send back None."""

    __slots__ = ("scripts",)

    def __init__(self, scripts: tuple[str, ...]) -> None:
        self.scripts = scripts


NodeOp = Pipeline | LoadScripts
NodeRounds = Generator[NodeOp, Any, None]


class TsClock:
    """``rpa_bus.now_ts()``, with the formatted second cached: 0.3 us instead of 3. One
    per producer (no process-wide state); the pair is one tuple, so threads see it whole."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        sec, frac = divmod(ms, 1000)
        cached_sec, prefix = self._cached
        if cached_sec != sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._cached = (sec, prefix)
        return f"{prefix}.{frac:03d}Z"


class BaseProducer:
    """Shared base of ``Producer`` and ``AsyncProducer``; not used directly."""

    _client: Any  # the twin's client: one server, Sentinel's master, or a cluster
    _wake_event: Any  # the twin's threading.Event or asyncio.Event: set by emit()

    # Events per round trip: big enough to amortise it, small enough to keep one script
    # (which blocks the server while it runs) well under a millisecond.
    batch_max: int = 512
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    # While writes fail, the memory queue is moved to the journal this often, so a job
    # killed during an outage loses at most this much.
    spill_interval_s: float = 0.05
    # A job's learned profile is read again by a run that starts this long after the
    # last read (the archiver updates it when a run of the job ends).
    profile_refresh_s: float = 60.0
    profile_retry_s: float = 5.0  # after a failed read

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        settings: Settings | None = None,
        journal_fsync: str | None = None,
        **overrides: Any,
    ) -> None:
        if url is not None and client is not None:
            raise ValueError("pass url= or client=, not both")
        if settings is None:
            settings = Settings() if url is None else Settings.from_url(url)
        elif url is not None:
            settings = settings.with_(redis_url=url)
        if overrides:
            try:
                settings = settings.with_(**overrides)
            except TypeError as exc:
                raise ValueError(f"unknown producer setting: {exc}") from exc
        if not isinstance(settings.spool_dir, Path):  # a str (or any path-like) is fine
            settings = settings.with_(spool_dir=Path(settings.spool_dir))
        self.settings: Final = settings
        self.keys: Final[Keys] = settings.keys
        #: Random per instance: the name under which the append scripts record this
        #: producer's highest applied sequence number for each stream.
        self.id: Final = secrets.token_hex(8)
        #: The journal's fsync policy: ``always``, ``everysec`` (default) or ``no``.
        self.journal_fsync: Final = check_fsync(journal_fsync or DEFAULT_FSYNC)
        #: Where this producer writes, without credentials: its journals carry it, and
        #: only a producer writing to the same target (and prefix) adopts them.
        self.target: Final = target_of(settings)
        #: The last error the flusher met, or None: ``Unavailable`` (Redis could not be
        #: written; the redis-py error is its ``__cause__``), ``ConfigMismatch``, a
        #: ``BusError`` for events Redis refused for good, or the bug that stopped the
        #: flusher (it is restarted on the next emit or flush).
        self.last_error: BaseException | None = None
        #: Events refused by Redis for good (e.g. WRONGTYPE) and so not written.
        self.dropped = 0

        self._lock = threading.Lock()  # _queue, _seq, _dead
        self._jlock = threading.Lock()  # journals and _held; taken before _lock
        self._queue: deque[Item] = deque()
        self._queue_max = settings.queue_max
        self._seq = 0
        self._held: list[Item] = []
        self._journal: Journal | None = None
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the spool folder {settings.spool_dir}: {exc}"
            ) from exc
        self._adopted: list[Journal] = adopt_all(
            settings.spool_dir, self.target, self.keys.prefix, self.journal_fsync
        )
        self._written_seq = 0  # every own event with seq <= this is in Redis
        self._closed = False
        self._stopping = False  # close() asked the flusher to stop
        self._dead = False  # the flusher stopped on a bug; restarted by the next emit
        self._config_checked = False
        self._archive = False  # P:config archive=1: the archiver trims and expires
        self._fatal: ConfigMismatch | None = None
        self._down_log = RateLimitedLog(log)
        self._disk_log = RateLimitedLog(log)
        self._revive_log = RateLimitedLog(log)
        self._crash_log = RateLimitedLog(log)
        self._disk_retry_at = 0.0  # a failed journal write is not retried before this
        self._failing = False
        self._key_cache: dict[tuple[str, str], str] = {}
        self._max_bytes = settings.max_event_bytes
        self._clock = TsClock()
        self._types_ok: set[str] = set()  # custom event types already checked (bounded)
        #: On a cluster the sessions index lives in another slot than any session, so
        #: its entries are written by their own script (``ONCE_LUA``), not the append.
        self._cluster = settings.target.topology == "cluster"
        # Cluster: the slot map is read again before the next write after a failure
        # (MOVED, a dead master, READONLY from a demoted one).
        self._refresh = False
        self._nodes: dict[str, Any] = {}  # cluster: a client per node, by "host:port"
        # Learned step profiles by job: (when asked for, the profile or None). Read by
        # sessions on the job's thread, replaced whole by the flusher (one dict store).
        self._profiles: dict[str, tuple[float, StepProfile | None]] = {}
        self._wanted: deque[str] = deque()  # jobs whose profile the flusher should read

    # -- public, shared --------------------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Settings from ``RPA_BUS_*`` variables (``RPA_BUS_JOURNAL_FSYNC`` too); keyword
        overrides win."""
        fsync = overrides.pop("journal_fsync", None) or journal_fsync_from_env()
        return cls(settings=Settings.from_env(**overrides), journal_fsync=fsync)

    def publish(
        self, stream: str | StreamRef, event: Mapping[str, Any], *, window_s: float | None = None
    ) -> None:
        """Append one envelope to any stream, without a session object.

        ``stream``: ``session:SID``, ``sessions`` or ``monitor:HOST`` (or a ``StreamRef``).
        ``event``: an envelope; ``ts`` is filled in when missing. Session events are
        appended by the idempotent script (folded state, index, retention, dedup);
        monitor streams keep a time window (``XADD MINID ~ now - window_s``, default
        ``settings.retention_s``, 24 h); ``sessions`` is capped by length. Every stream is
        written exactly once. Never blocks; raises ``InvalidInput`` subclasses for bad
        input.
        """
        ref = stream if isinstance(stream, StreamRef) else parse_stream_name(stream)
        if not isinstance(event, Mapping):
            raise InvalidEvent(f"an event must be a mapping, got {type(event).__name__}")
        if "ts" not in event:
            event = {**event, "ts": now_ts()}
        checked = validate(event)
        window_ms = 0
        if ref.kind == "monitor":
            w = self.settings.retention_s if window_s is None else window_s
            if not w > 0:
                raise InvalidEvent(f"window_s must be > 0, got {window_s}")
            window_ms = int(w * 1000)
        self._enqueue(ref.name, checked, window_ms)

    # -- learned ETA: per-job step profiles, read by the flusher -------------------------

    def _want_profile(self, job: str) -> None:
        """A run of ``job`` starts: have the flusher read its profile (``P:job:JOB:profile``)
        unless it did less than ``profile_refresh_s`` ago. Never waits: until the profile
        arrives (or if there is none), sessions estimate from their own pace."""
        now = time.monotonic()
        got = self._profiles.get(job)
        if got is not None and now - got[0] < self.profile_refresh_s:
            return
        self._profiles[job] = (now, None if got is None else got[1])
        with self._lock:
            if job not in self._wanted and len(self._wanted) < 1024:
                self._wanted.append(job)
        self._wake()

    def _got_profile(self, job: str, reply: Any) -> None:
        """The flusher's GET of a job's profile answered (bytes, None) or failed."""
        asked, held = self._profiles.get(job, (time.monotonic(), None))
        if isinstance(reply, BaseException):
            # Asked again by a run of the job that starts profile_retry_s from now;
            # meanwhile the pace (or the profile held from before).
            log.debug("cannot read the step profile of job %s: %s", job, reply)
            retry_at = time.monotonic() + self.profile_retry_s
            self._profiles[job] = (retry_at - self.profile_refresh_s, held)
            return
        profile = None
        if reply is not None:
            try:
                profile = StepProfile.from_json(orjson.loads(reply))
            except (ValueError, orjson.JSONDecodeError) as exc:
                log.warning("ignoring the unreadable step profile of job %s: %s", job, exc)
        self._profiles[job] = (asked, profile if profile is not None and profile.runs else None)

    def profile(self, job: str) -> StepProfile | None:
        """The learned step profile of ``job`` this producer holds (None: none yet, or the
        job has no finished runs in the archive)."""
        got = self._profiles.get(job)
        return None if got is None else got[1]

    # -- the caller's side: never blocks on the network -----------------------------------

    def _enqueue(self, stream: str, event: Envelope, window_ms: int = 0) -> None:
        if self._closed:
            raise ProducerClosed("this producer is closed; events can no longer be emitted")
        try:
            env = orjson.dumps(event)
        except TypeError as exc:
            raise InvalidEvent(f"event data is not JSON-serialisable: {exc}") from exc
        if len(env) > self._max_bytes:
            encode(event, max_bytes=self._max_bytes)  # raises, naming the size
        with self._lock:
            self._seq = seq = self._seq + 1
            q = self._queue
            q.append(Item(stream, self.id, seq, env, event, window_ms))
            over = len(q) > self._queue_max
        if over:
            self._bound()
        if self._dead:
            self._revive()
        self._wake()

    def _bound(self) -> None:
        """The memory bound, held by emit() itself (whatever the flusher is doing): past
        ``queue_max`` the queue goes to the end of the journal, in order. If the journal
        cannot be written, the events stay in memory and the disk is tried again after
        ``spill_interval_s``."""
        if time.monotonic() < self._disk_retry_at:
            return
        with self._jlock:
            if self._closed or len(self._queue) <= self._queue_max:
                return
            if not self._spill_locked():
                self._disk_retry_at = time.monotonic() + self.spill_interval_s

    def _revive(self) -> None:
        """Start a new flusher after one stopped on a bug (logged, rate-limited)."""
        with self._lock:
            if not self._dead or self._stopping:
                return
            self._dead = False
        self._revive_log(
            logging.ERROR,
            "rpa-bus producer flusher had stopped (%s: %s); restarting it",
            type(self.last_error).__name__,
            self.last_error,
        )
        self._start_flusher()

    def _crashed(self, exc: Exception) -> None:
        """The flusher met a bug: say so loudly. Once its driver has let go of what it
        held, ``_mark_dead()`` lets the next emit or flush restart it; close() saves what
        is queued in any case."""
        self.last_error = exc
        # Rate-limited: a bug that strikes every batch must not flood the log.
        self._crash_log(
            logging.ERROR,
            "rpa-bus producer flusher stopped by an unexpected error:\n%s",
            "".join(traceback.format_exception(exc)).rstrip(),
        )

    def _mark_dead(self) -> None:
        with self._lock:
            self._dead = True

    def _wake(self) -> None:
        # Checking first keeps emit() cheap: set() takes a lock and notifies. The flusher
        # clears the event before it looks at the queue, so no wake-up is lost.
        if not self._wake_event.is_set():
            self._wake_event.set()

    def _start_flusher(self) -> None:
        raise NotImplementedError

    # -- the flusher's decisions ----------------------------------------------------------

    def _flusher(self) -> Generator[FlusherStep, Any, None]:
        """The flusher's loop: write the oldest unwritten events, back off and spill to
        the journal while Redis fails, stop when close() asks."""
        backoff = Backoff(initial_s=self.backoff_initial_s, max_s=self.backoff_max_s)
        while not self._stopping:
            if self._fatal is not None:
                self._spill()
                yield Sleep(self.spill_interval_s)
                continue
            if self._wanted:
                job = self._wanted.popleft()
                self._got_profile(job, (yield Fetch(self.keys.job_profile(job))))
                continue
            batch = self._next_batch()
            if batch is None:
                yield IDLE
                continue
            error = yield Write(batch)
            if error is None:
                backoff.reset()
                self._recovered()
                if self._done(batch):
                    yield NOTIFY
            elif not isinstance(error, ConfigMismatch):  # a mismatch: _fatal is set
                self._failed(error)
                end = time.monotonic() + backoff.next_s()
                while not self._stopping:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        break
                    yield Sleep(min(remaining, self.spill_interval_s))
                    self._spill()

    def _has_work(self) -> bool:
        return bool(self._queue or self._held or self._adopted or self._wanted) or (
            self._journal is not None and self._journal.pending
        )

    def _next_batch(self) -> Batch | None:
        """The oldest unwritten events, or None."""
        with self._jlock:
            while self._adopted:
                j = self._adopted[0]
                items, end = j.read(self.batch_max)
                if items:
                    return self._batch(items, j, end)
                log.info("journal %s delivered; removing it", j.path)
                j.remove()
                self._adopted.pop(0)
            own = self._journal
            if own is not None:
                items, end = own.read(self.batch_max)
                if items:
                    return self._batch(items, own, end)
                # Drained: all that is newer sits in the queue.
                own.remove()
                self._journal = None
                log.info("journal delivered: %d events written after the outage", own.count)
            if not self._held:
                with self._lock:  # emitters wait on this: keep it short
                    q = self._queue
                    if len(q) <= self.batch_max:
                        self._held = list(q)
                        q.clear()
                    else:
                        self._held = [q.popleft() for _ in range(self.batch_max)]
            if not self._held:
                return None
            return self._batch(list(self._held), None, 0)

    def _batch(self, items: list[Item], journal: Journal | None, end: int) -> Batch:
        batch = Batch(items, journal, end)
        batch.calls = self._build_calls(items)
        return batch

    def _build_calls(self, items: list[Item]) -> list[Call]:
        """One EVALSHA per (stream, producer id): the append script for a session, the
        once-only script for any other stream (and on a cluster for index entries)."""
        now_ms = int(time.time() * 1000)
        epoch = secrets.token_hex(8)
        s = self.settings
        retention_ms = int(s.retention_s * 1000)
        groups: dict[tuple[str, str], list[Item]] = {}
        plain: dict[tuple[str, str], list[Item]] = {}
        for item in items:
            if item.stream.startswith("session:"):
                groups.setdefault((item.stream, item.pid), []).append(item)
            else:
                plain.setdefault((item.stream, item.pid), []).append(item)
        calls: list[Call] = [
            (self._once_args(stream, pid, group, now_ms), group)
            for (stream, pid), group in plain.items()
        ]
        maxlen, kept_ms, index_maxlen = trim_args(s.maxlen, retention_ms, archive=self._archive)
        head = (maxlen, kept_ms, epoch, now_ms, index_maxlen)
        cluster = self._cluster
        # + the index and P:config (archive=1); on a cluster the bucket's P:{B}:config.
        index_keys = 3 if cluster else 4
        indexed: dict[str, list[tuple[int, bytes]]] = {}
        for (stream, pid), group in groups.items():
            sid = stream[8:]
            tail: list[Any] = []
            for item in group:
                event = item.event
                kind = event["type"]
                if kind in _LIFECYCLE:
                    entry = orjson.dumps({"type": kind, "session": sid, "ts": event["ts"]})
                    first: int | bytes = b"%d|%s%s" % (
                        item.seq,
                        b"s" if kind == "started" else b"t",
                        b"" if cluster else entry,
                    )
                    if cluster:
                        indexed.setdefault(pid, []).append((item.seq, entry))
                else:
                    first = item.seq
                tail += (first, item.env)
            state = _fold(group)
            args = (
                "EVALSHA",
                APPEND_SHA,
                index_keys,
                self._key("s", sid),
                self._key("m", sid),
                *((self._key("c", sid),) if cluster else (self.keys.sessions, self.keys.config)),
                pid,
                *head,
                orjson.dumps(state),
                *tail,
            )
            calls.append((args, group))
        for pid, entries in indexed.items():
            # One atomic call per producer, seqs ascending: either all of a batch's index
            # entries are in, or none, so the sidecar's "highest seq" check stays exact
            # however a replayed journal cuts its batches.
            entries.sort(key=lambda e: e[0])
            args = (
                "EVALSHA",
                ONCE_SHA,
                3,
                self.keys.sessions,
                self.keys.index_seen(pid),
                self.keys.index_config,  # archive=1 there: no trim, whatever index_maxlen
                "MAXLEN",
                index_maxlen,  # 0 with the archive on: the archiver trims
                retention_ms,
                *(x for entry in entries for x in entry),
            )
            # Its events are counted by their append call; an empty list keeps the
            # "dropped" count honest if Redis ever refuses this one.
            calls.append((args, []))
        return calls

    def _once_args(self, stream: str, pid: str, group: list[Item], now_ms: int) -> tuple[Any, ...]:
        """A stream outside a session: its events appended once each (seq-checked), the
        stream trimmed by time window (monitor) or length."""
        key = self.keys.key_for(parse_stream_name(stream))
        window_ms = max(item.window_ms for item in group)
        if window_ms:
            trim: tuple[Any, ...] = ("MINID", max(0, now_ms - window_ms))
        elif stream == "sessions" and self._archive:
            trim = ("MAXLEN", 0)  # the archiver stores the index, then trims it
        else:
            trim = ("MAXLEN", INDEX_MAXLEN)
        ttl_ms = max(int(self.settings.retention_s * 1000), window_ms)
        tail = (x for item in group for x in (item.seq, item.env))
        # The index (archived) also names the archive flag's hash in its slot.
        flag: tuple[str, ...] = ()
        if stream == "sessions":
            flag = (self.keys.index_config if self._cluster else self.keys.config,)
        return (
            "EVALSHA",
            ONCE_SHA,
            2 + len(flag),
            key,
            seen_key(self.keys.prefix, key, pid),
            *flag,
            *trim,
            ttl_ms,
            *tail,
        )

    def _key(self, kind: str, sid: str) -> str:
        key = self._key_cache.get((kind, sid))
        if key is None:
            if kind == "s":
                key = self.keys.session(sid)
            elif kind == "m":
                key = self.keys.meta(sid)
            else:
                key = self.keys.config_of(sid)
            if len(self._key_cache) > 10_000:
                self._key_cache.clear()
            self._key_cache[(kind, sid)] = key
        return key

    def _jobs(self, calls: list[Call]) -> list[tuple[Any, list[Call], str]]:
        """(client, calls, name) per node: one server, or on a cluster each node serving
        some of the calls' slots (the calls in order), with a client of its own."""
        if not self._cluster:
            return [(self._client, calls, "Redis")]
        by_node: dict[str, tuple[Any, list[Call]]] = {}
        for call in calls:
            node = self._client.get_node_from_key(call_key(call[0]))
            by_node.setdefault(node.name, (node, []))[1].append(call)
        return [
            (self._node(node), node_calls, name) for name, (node, node_calls) in by_node.items()
        ]

    def _config_job(self) -> tuple[Any, NodeRounds]:
        """The client that holds ``P:config`` and the handshake's rounds."""
        if not self._cluster:
            return self._client, self._config_rounds()
        return self._node(self._client.get_node_from_key(self.keys.config)), self._config_rounds()

    def _node(self, node: Any) -> Any:
        client = self._nodes.get(node.name)
        if client is None:
            client = self._nodes[node.name] = self._node_client(node.host, node.port)
        return client

    def _node_client(self, host: str, port: int) -> Any:
        raise NotImplementedError

    def _config_rounds(self) -> NodeRounds:
        """The ``P:config`` handshake, with the scripts loaded in the same round trip."""
        commands: list[tuple[Any, ...]] = list(config_commands(self.keys))
        stored_at = len(commands) - 1
        commands += [("SCRIPT", "LOAD", script) for script in SCRIPTS]
        replies = yield Pipeline(commands)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        try:
            stored = check_config_reply(self.keys, replies[stored_at])
        except ConfigMismatch as exc:
            self._fatal = exc
            self.last_error = exc
            log.error(
                "%s; not writing, events are kept in the journal in %s",
                exc,
                self.settings.spool_dir,
            )
            raise
        # P:config archive=1: an archiver stores every entry, then trims and expires.
        self._archive = self.keys.archive_on(stored)
        self._config_checked = True

    def _rounds(self, calls: list[Call], where: str) -> NodeRounds:
        """The calls in one pipeline on one connection, then WAIT on that same connection
        (WAIT counts the replicas that acknowledged this connection's last write); again
        for the calls Redis asks to resend (NOSCRIPT, after loading the scripts)."""
        wait = self._wait_args()
        while calls:
            commands = [args for args, _items in calls]
            if wait is not None:
                commands.append(wait)
            results = yield Pipeline(commands)
            acked = results.pop() if wait is not None else None
            calls, reload = self._sort_results(calls, results)
            if wait is not None:
                self._check_replicas(acked, where)
            if reload:
                # NOSCRIPT: the server restarted, flushed its script cache, or is a
                # replica promoted by a failover that never saw SCRIPT LOAD.
                yield LoadScripts(SCRIPTS)
            if self._closed:
                return

    def _sort_results(self, calls: list[Call], results: list[Any]) -> tuple[list[Call], bool]:
        """Split a pipeline's replies: the calls to send again, and whether the script
        must be loaded first. A transient error reply raises; a permanent one drops the
        call's events (logged and counted): retrying it would block every session."""
        again: list[Call] = []
        reload = False
        transient: BaseException | None = None
        for call, result in zip(calls, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if isinstance(result, rx.NoScriptError):
                reload = True
                again.append(call)
            elif isinstance(result, rx.AskError):
                # MOVED/ASK (MovedError is an AskError): the slot map changed. Retried,
                # safely (the scripts skip what they applied), once it is read again.
                self._refresh = True
                transient = result
                again.append(call)
            elif is_retryable(result):
                transient = result
                again.append(call)
            else:
                if not call[1]:
                    log.error("Redis refused a sessions index write for good: %s", result)
                    continue
                with self._lock:  # on a cluster, node pipelines may sort at once
                    self.dropped += len(call[1])
                error = BusError(f"Redis refused {len(call[1])} events for good: {result}")
                error.__cause__ = result
                self.last_error = error
                log.error(
                    "Redis refused %d events for %s for good (%s); they are dropped",
                    len(call[1]),
                    call[1][0].stream,
                    result,
                )
        if transient is not None:
            raise transient
        return again, reload

    def _wait_args(self) -> tuple[Any, ...] | None:
        """WAIT sent last in a batch's pipeline (same connection), or None."""
        n = self.settings.min_replicas
        return ("WAIT", n, self.settings.wait_timeout_ms) if n else None

    def _check_replicas(self, reply: Any, where: str) -> None:
        """Raise ``NotReplicated`` (a transient error: the batch is sent again) if WAIT's
        reply counts fewer replicas than ``min_replicas``."""
        if isinstance(reply, BaseException):
            raise reply
        if int(reply) < self.settings.min_replicas:
            raise NotReplicated(
                f"{where}: {reply} of {self.settings.min_replicas} replicas acknowledged "
                f"within {self.settings.wait_timeout_ms} ms"
            )

    @property
    def _round_trip_s(self) -> float:
        """The bound on one round trip: connect, the reply, and WAIT's own bound."""
        s = self.settings
        return s.connect_timeout_s + s.socket_timeout_s + s.wait_timeout_ms / 1000

    def _done(self, batch: Batch) -> bool:
        """Record a written batch; True if flush() waiters should look again."""
        with self._jlock:
            if self._closed:
                return True
            j = batch.journal
            if j is None:
                self._held = []
            else:
                j.read_pos = batch.end
                if j.adopted and not j.pending:
                    log.info("journal %s delivered; removing it", j.path)
                    j.remove()
                    self._adopted.remove(j)
                    return True
                if j is self._journal and not j.pending:
                    # Drained: removed before flush() waiters hear of it, so a flush that
                    # says "all written" leaves no journal behind (all newer events are in
                    # the queue; a later spill opens a new one).
                    j.remove()
                    self._journal = None
                    log.info("journal delivered: %d events written after the outage", j.count)
            own = max((item.seq for item in batch.items if item.pid == self.id), default=0)
            if own > self._written_seq:
                self._written_seq = own
                return True
        return False

    def _all_written(self, target: int) -> bool:
        """Every own event up to ``target`` and every adopted journal is in Redis."""
        return self._written_seq >= target and not self._adopted

    def _recovered(self) -> None:
        """A write succeeded: say so once after an outage."""
        if self._failing:
            self._failing = False
            self._down_log.reset()
            log.info(
                "Redis at %s is available again; writing kept events",
                self.settings.target.redacted(),
            )

    def _failed(self, exc: BaseException) -> None:
        """A write failed: keep everything unwritten on disk, in order."""
        self._failing = True
        self._refresh = self._cluster
        where = self.settings.target.redacted()
        # Translated at this boundary: callers see the bus's own exception tree.
        error = Unavailable(f"Redis at {where} unavailable: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        self.last_error = error
        with self._jlock:
            if not self._closed:
                self._spill_locked()
        kept = f"{self._journal.path}" if self._journal is not None else "memory"
        self._down_log(
            logging.WARNING,
            "Redis unavailable at %s (%s: %s); events are kept (%s) and written when it returns",
            where,
            type(exc).__name__,
            exc,
            kept,
        )

    def _spill(self) -> None:
        """The flusher, while writes fail: queued events to the journal; under
        ``everysec`` an fsync once a second, done after letting go of ``_jlock`` (on a
        duplicate descriptor: close() may release the journal meanwhile)."""
        with self._jlock:
            if self._closed:
                return
            if self._queue or self._held:
                self._spill_locked()
            fd = None if self._journal is None else self._journal.due_fd()
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._disk_log(logging.ERROR, "cannot fsync the journal: %s", exc)
            finally:
                os.close(fd)

    def _spill_locked(self) -> bool:
        """Move held + queued events to the end of our journal. Caller holds ``_jlock``.

        Events leave memory only once they are on disk: if the journal cannot be written
        (disk full, folder gone), they stay queued and the error is logged; False then.
        """
        with self._lock:
            queued = len(self._queue)
            items = self._held + list(self._queue)
        if not items:
            return True
        try:
            if self._journal is None:
                self._journal = Journal.create(
                    self.settings.spool_dir,
                    self.id,
                    self.target,
                    self.keys.prefix,
                    self.journal_fsync,
                )
            self._journal.append(items)
        except OSError as exc:
            self._disk_log(
                logging.ERROR,
                "cannot write the journal in %s (%s); %d events stay in memory",
                self.settings.spool_dir,
                exc,
                len(items),
            )
            return False
        with self._lock:
            # Emitters may have appended meanwhile: drop only what was written.
            for _ in range(queued):
                self._queue.popleft()
        self._held = []
        return True

    def _spill_at_close(self) -> int:
        """Move everything unwritten to disk for the next start, release the journals;
        returns how many own events were not yet written."""
        with self._jlock:
            if not self._spill_locked():
                log.error("closing: %d events could not be saved and are lost", len(self._queue))
            self._closed = True
            for j in self._adopted:
                j.release()
            if self._journal is not None:
                self._journal.release()
            self._adopted = []
            self._journal = None
        return self._seq - self._written_seq

    def _closing(self) -> None:
        """close() has begun: the flusher stops after its current step."""
        self._stopping = True

    def _closed_report(self, left: int) -> None:
        if left:
            log.warning(
                "closed with %d events not yet written; they are in the journal in %s",
                left,
                self.settings.spool_dir,
            )


class BaseSession:
    """One run of a session: ``started`` ... ``finished``/``failed``. Shared base."""

    def __init__(
        self,
        bus: BaseProducer,
        sid: str,
        *,
        total: int | None = None,
        meta: Any = None,
        job: str | None = None,
    ) -> None:
        self.sid: Final = validate_session_id(sid)
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 1
        ):
            raise InvalidEvent(f"total must be an integer >= 1 or None, got {total!r}")
        if job is not None and (not isinstance(job, str) or not JOB_NAME.fullmatch(job)):
            raise InvalidEvent(f"job must match [A-Za-z0-9_.-]{{1,128}}, got {job!r}")
        self.total: Final = total
        #: The job this session is a run of (runs of one job are comparable), or None.
        self.job: Final = job
        self.meta = meta
        self._bus = bus
        self._now = bus._clock.now
        self._stream = "session:" + sid
        self._t0: float | None = None
        self._ended: str | None = None
        # Steps: attempts per step number, durations of steps done (for the learned ETA),
        # the open step, and where progress() last marked a step done.
        self._attempts: dict[int, int] = {}
        self._done: dict[int, float] = {}
        self._retried: dict[int, float] = {}  # time spent on attempts given up, by step
        self._open: BaseStep | None = None
        self._mark = 0.0
        self._passed = 0
        # Fail fast: meta that is not JSON should not wait for __enter__ to be refused.
        encode({"type": "started", "ts": "", "data": meta})

    @property
    def ended(self) -> str | None:
        """``finished``, ``failed`` or None while the run goes on."""
        return self._ended

    def start(self) -> None:
        """Emit ``started`` (with ``meta`` as its data). ``with``/``async with`` call it."""
        if self._t0 is not None:
            raise InvalidEvent(f"session {self.sid!r} was already started")
        self._t0 = self._mark = time.monotonic()
        if self.job is not None:
            self._bus._want_profile(self.job)
        self._put(make("started", total=self.total, job=self.job, data=self.meta))

    # The hot paths below build envelopes directly (the same fields, in the same order,
    # as rpa_bus.make; progress by rpa_bus.progress, the builder `rpa-bus emit` and make
    # share) and check only what the caller supplied: make()'s generic validation costs
    # several times more than the whole rest of an emit.

    def progress(self, step: int, message: str | None = None, data: Any = None) -> None:
        """Report step ``step`` of ``total``; ``percent`` and ``eta_s`` are computed: from
        the job's past runs when the session names a job with history (``eta_runs`` then
        says how many runs), else from the pace so far (average time per step since
        ``started``)."""
        total = self.total
        eta_s = None
        runs = None
        if (
            total is not None
            and self._t0 is not None
            and step.__class__ is int
            and 0 < step <= total
        ):
            now = time.monotonic()
            if self.job is None:
                eta_s = eta_of(now - self._t0, step, total)
            else:
                if self._open is None and step > self._passed:
                    # progress(n) without steps: step n took the time since the last mark.
                    self._done.setdefault(step, now - self._mark)
                    self._mark = now
                    self._passed = step
                eta_s, runs = self._estimate(step, None, now)
        self._put(
            progress(
                step, total, ts=self._now(), eta_s=eta_s, message=message, eta_runs=runs, data=data
            )
        )

    def _estimate(
        self, steps_done: int, current: BaseStep | None, now: float
    ) -> tuple[float | None, int | None]:
        """(eta_s, eta_runs): learned from the job's profile when it covers the rest of the
        run, else the run's own pace (eta_runs 0); (None, None) when neither can tell."""
        total, t0 = self.total, self._t0
        if total is None or t0 is None:
            return None, None
        profile = self._bus.profile(self.job) if self.job is not None else None
        if profile is not None:
            done = self._done
            gaps = [s for s in range(1, self._passed) if s not in done]
            if gaps:  # steps progress() skipped over count as typical
                done = {**{s: profile.typical_s.get(s, 0.0) for s in gaps}, **done}
            estimate = profile.eta(
                done=done,
                current=None if current is None else current.number,
                in_current_s=0.0 if current is None else current.spent(now),
                total=total,
            )
            if estimate is not None:
                return round(estimate.eta_s, 1), estimate.runs
        if 0 < steps_done <= total:
            return eta_of(now - t0, steps_done, total), (0 if self.job is not None else None)
        return None, None

    def _step_event(self, st: BaseStep, phase: str, now: float) -> Envelope:
        """A ``step`` start or end for ``st`` (docs/contract.md, "Job view"). Built
        directly, in ``make``'s field order: every value is checked where it came in
        (``step()``, ``retry()``), and ``make``'s generic validation would cost more than
        the rest of the call."""
        total = self.total
        ok = phase == "end" and st.outcome == "ok"
        done = st.number if ok else st.number - 1
        event: Envelope = {"type": "step", "ts": self._now(), "step": st.number}
        if total is not None:
            event["total"] = total
            event["percent"] = percent_of(max(min(done, total), 0), total)
        eta_s, runs = (
            (None, None)
            if phase == "end" and not ok
            else self._estimate(done, st if phase == "start" else None, now)
        )
        if eta_s is not None:
            event["eta_s"] = eta_s
        message = st.message if phase == "start" else st.reason
        if message is not None:
            event["message"] = message
        event["phase"] = phase
        event["attempt"] = st.attempt
        if phase == "end":
            event["outcome"] = st.outcome
            event["duration_s"] = round(st.duration_s, 3)
        if eta_s is not None and runs is not None:
            event["eta_runs"] = runs
        return event

    def _check_step(self, number: int, name: str | None) -> None:
        if number.__class__ is not int or number < 0:
            raise InvalidEvent(f"step must be an integer >= 0, got {number!r}")
        if self.total is not None and number > self.total:
            raise InvalidEvent(f"step {number} is beyond total {self.total}")
        if name is not None:
            _text(name, "step name")
        if self._open is not None:
            raise InvalidEvent(
                f"step {self._open.number} is still open: leave it before entering step {number}"
            )
        if self._ended is not None:
            raise InvalidEvent(f"session {self.sid!r} already {self._ended}")

    def _enter_step(self, st: BaseStep) -> None:
        if self._open is not None:
            raise InvalidEvent(
                f"step {self._open.number} is still open: leave it before entering step {st.number}"
            )
        if st.started is not None:
            raise InvalidEvent(f"this step {st.number} handle was already entered")
        self._attempts[st.number] = st.attempt = self._attempts.get(st.number, 0) + 1
        st.started = now = time.monotonic()
        self._open = st
        self._put(self._step_event(st, "start", now))

    def _leave_step(self, st: BaseStep, exc: BaseException | None) -> None:
        if self._open is not st or st.started is None:
            return
        now = time.monotonic()
        st.duration_s = now - st.started
        self._open = None
        if exc is not None:
            st.outcome = "failed"
            st.reason = st.reason or _error_text(exc)
        elif st.outcome is None:
            st.outcome = "ok"
        # Time spent on a step number over all its attempts: what a past run's step took.
        spent = self._retried.get(st.number, 0.0) + st.duration_s
        if st.outcome == "ok":
            self._done[st.number] = spent
            self._retried.pop(st.number, None)
            self._passed = max(self._passed, st.number)
            self._mark = now
        else:
            self._retried[st.number] = spent
        if self._ended is None:
            self._put(self._step_event(st, "end", now))

    def emit(self, type: str, data: Any = None, *, message: str | None = None) -> None:
        """Emit an event of a job's own type (or ``log``, ``result``, ``error``...)."""
        checked = self._bus._types_ok
        if type not in checked:
            validate_type(type)
            if type in _LIFECYCLE or type in ("step", "artifact"):
                raise InvalidEventType(
                    f"event type {type!r} is emitted by the session itself: use "
                    "start(), finish(), fail(), step() or artifact()"
                )
            if len(checked) < 1024:
                checked.add(type)
        event: Envelope = {"type": type, "ts": self._now()}
        if message is not None:
            event["message"] = _text(message, "message")
        if data is not None:
            event["data"] = data
        self._put(event)

    def log(self, message: str, data: Any = None, *, level: str | None = None) -> None:
        """A log line; ``level``: ``debug``, ``info`` (the default), ``warning`` or
        ``error``. Inside a step it carries the step's number."""
        event: Envelope = {"type": "log", "ts": self._now()}
        if self._open is not None:
            event["step"] = self._open.number
        event["message"] = _text(message, "message")
        if level is not None:
            if level not in LEVELS:
                raise InvalidEvent(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
            event["level"] = level
        if data is not None:
            event["data"] = data
        self._put(event)

    def artifact(
        self,
        kind: str,
        ref: str | os.PathLike[str],
        *,
        name: str | None = None,
        mime: str | None = None,
        step: int | None = None,
        message: str | None = None,
    ) -> None:
        """Record a reference to an artifact (never its bytes): ``kind`` such as
        ``screenshot``; ``ref`` a URL (``http://``/``https://``) or a path. ``step``
        attaches it to a step (default: the open step, if any)."""
        if isinstance(ref, os.PathLike):
            ref = os.fspath(ref)
        if not isinstance(ref, str):
            raise InvalidEvent(f"artifact reference must be a URL or a path, got {ref!r}")
        is_url = ref.startswith(("http://", "https://"))
        artifact = {"kind": kind, "url" if is_url else "path": ref}
        if name is not None:
            artifact["name"] = name
        if mime is not None:
            artifact["mime"] = mime
        if step is None and self._open is not None:
            step = self._open.number
        self._put(make("artifact", ts=self._now(), step=step, message=message, artifact=artifact))

    def error(self, message: str, data: Any = None) -> None:
        """A non-fatal error: recorded as the session's last error; the run goes on."""
        text = _text(message, "message")
        event: Envelope = {"type": "error", "ts": self._now(), "message": text, "error": text}
        if self._open is not None:
            event["step"] = self._open.number
        if data is not None:
            event["data"] = data
        self._put(event)

    def finish(self, result: Any = None) -> None:
        """Emit ``finished`` with ``result`` as its data. The session's keys then expire
        after the retention period."""
        self._end(make("finished", total=self.total, step=self.total, data=result))

    def fail(self, error: str | BaseException, data: Any = None) -> None:
        """Emit ``failed``; an exception becomes ``"ExcType: message"``."""
        is_exc = isinstance(error, BaseException)
        text = _error_text(error) if is_exc else _text(error, "error")  # type: ignore[arg-type]
        self._end(make("failed", error=text, message=text, data=data))

    def _end(self, event: Envelope) -> None:
        if self._ended is not None:
            raise InvalidEvent(f"session {self.sid!r} already {self._ended}")
        open_step = self._open
        if open_step is not None and event["type"] == "failed":
            # fail() inside a step: the step ends failed first, so the timeline shows it.
            open_step.reason = open_step.reason or event.get("error")
            self._leave_step(open_step, _Failed())
        elif open_step is not None:
            raise InvalidEvent(
                f"step {open_step.number} is still open: leave it before finishing the session"
            )
        self._put(event)
        self._ended = event["type"]

    def _put(self, event: Envelope) -> None:
        if self._ended is not None and event["type"] not in TERMINAL_TYPES:
            raise InvalidEvent(f"session {self.sid!r} already {self._ended}")
        self._bus._enqueue(self._stream, event)

    def _exit(self, exc: BaseException | None) -> None:
        if self._ended is not None:
            return
        if exc is None:
            self.finish()
        else:
            self.fail(exc)


class _Failed(Exception):
    """Stands for ``fail()`` ending the open step (its reason is the failure's error)."""


class BaseStep:
    """One attempt at a numbered step (``with s.step(3, "Screen 3"):``). Shared base of the
    sync and async handles: entering emits the step's start, leaving its end with the
    duration and the outcome (``ok``; ``failed`` when an exception leaves the block, which
    propagates; ``retried`` after ``retry()``)."""

    __slots__ = ("_session", "attempt", "duration_s", "message", "number", "outcome", "reason",
                 "started")  # fmt: skip

    def __init__(self, session: BaseSession, number: int, name: str | None) -> None:
        session._check_step(number, name)
        self._session = session
        #: The step's number, its name (the start event's message), and this attempt.
        self.number: Final = number
        self.message: Final = name
        self.attempt = 0
        self.started: float | None = None
        self.duration_s = 0.0
        self.outcome: str | None = None
        self.reason: str | None = None

    def retry(self, reason: str | None = None) -> None:
        """Give this attempt up: the block should end (return, not raise) and the step be
        entered again; its end is recorded as ``retried`` with ``reason`` as message."""
        if self.started is None or self._session._open is not self:
            raise InvalidEvent(f"step {self.number} is not open: retry() inside its block")
        if reason is not None:
            _text(reason, "reason")
        self.outcome = "retried"
        self.reason = reason

    def spent(self, now: float) -> float:
        """Seconds spent on this step number so far (this attempt and earlier ones)."""
        started = self.started if self.started is not None else now
        return self._session._retried.get(self.number, 0.0) + (now - started)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _text(value: object, what: str) -> str:
    if value.__class__ is not str and not isinstance(value, str):
        raise InvalidEvent(f"{what} must be a string, got {value!r}")
    return value
