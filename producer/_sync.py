"""``Producer`` and ``Session``: the flusher is a daemon thread on ``redis.Redis``."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, cast

import redis

from producer._core import (
    IDLE,
    BaseProducer,
    BaseSession,
    BaseStep,
    Batch,
    Fetch,
    LoadScripts,
    NodeRounds,
    Sleep,
    Write,
)
from rpa_bus import ConfigMismatch, Settings
from rpa_bus.redisio import REDIS_FAILURES, SyncClient, close_sync, node_kwargs, sync_client

log = logging.getLogger("producer")


class Step(BaseStep):
    """One attempt at a step: ``with s.step(3, "Screen 3: driver details") as st:``."""

    __slots__ = ()

    def __enter__(self) -> Step:
        self._session._enter_step(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session._leave_step(self, exc)  # the exception, if any, propagates


class Session(BaseSession):
    """A session run for ``Producer``: ``with bus.session(...) as s:``."""

    def step(self, number: int, name: str | None = None) -> Step:
        """A step: ``with s.step(3, "Screen 3"):`` emits its start and its end (outcome and
        duration). Entering step ``number`` again in this run is its next attempt."""
        return Step(self, number, name)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)  # the exception, if any, propagates


class Producer(BaseProducer):
    """Writes events to Redis from a background thread; emitting never blocks.

    ``Producer(url)``, ``Producer(client=redis.Redis(...))`` (the caller's client and its
    timeouts are used as they are; a ``redis.RedisCluster`` too), ``Producer(settings=...)``
    or ``Producer.from_env()``; keyword overrides set ``Settings`` fields (``maxlen=``,
    ``spool_dir=`` (a str or a Path), ``min_replicas=``...); ``journal_fsync=``
    ``"always"``/``"everysec"``/``"no"`` sets the journal's fsync policy. Every URL form
    works: one server, Sentinel, Cluster (see ``rpa_bus.parse_redis_url``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: SyncClient | None = None,
        settings: Settings | None = None,
        journal_fsync: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(
            url, client=client, settings=settings, journal_fsync=journal_fsync, **overrides
        )
        self._owns_client = client is None
        if isinstance(client, redis.RedisCluster):
            self._cluster = True
        # A Cluster client reads the slot map when built, which may fail: it is built by
        # the flusher (retried with backoff), so a producer never raises for a down Redis.
        # No retries inside redis-py: the flusher retries with its own backoff, keeping
        # events safe on disk meanwhile.
        self._client: SyncClient | None = (
            client if client is not None or self._cluster else sync_client(self.settings)
        )
        # Cluster: one pipeline per node at once, on threads owned by the flusher thread
        # (made and shut down by it: close() never pulls them from under a write).
        self._pool: ThreadPoolExecutor | None = None
        self._wake_event = threading.Event()
        self._stop_event = threading.Event()
        self._written = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_flusher()
        # Events still queued when the interpreter exits go to the journal, not nowhere.
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    def session(
        self, sid: str, *, total: int | None = None, meta: Any = None, job: str | None = None
    ) -> Session:
        """A session run; ``with`` emits ``started`` on enter and ``finished`` (or
        ``failed``, when an exception escapes) on exit. ``job`` names the job it is a run
        of: its ETA is then learned from the job's past runs."""
        return Session(self, sid, total=total, meta=meta, job=job)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event emitted before the call is in Redis; False on timeout
        (the events are kept and written later) or while the bus config mismatches."""
        target = self._seq
        deadline = time.monotonic() + timeout_s
        with self._written:
            while not self._all_written(target):
                if self._dead:
                    self._revive()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._fatal is not None or self._closed:
                    return False
                self._written.wait(remaining)  # a dying flusher notifies too
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, waiting at most ``timeout_s``; what is left goes to the
        journal, delivered by the next producer started with the same spool folder and
        target. Idempotent; never blocks past ``timeout_s`` (plus a file write)."""
        if self._closed:
            return
        atexit.unregister(self._atexit)
        deadline = time.monotonic() + timeout_s
        self.flush(timeout_s)
        self._closing()
        self._stop_event.set()
        self._wake_event.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        # If the thread is still inside a Redis call, it finds _closed set when it
        # returns and touches nothing; a write it completes is deduplicated on replay.
        self._closed_report(self._spill_at_close())
        for node in list(self._nodes.values()):
            node.close()
        if self._owns_client and self._client is not None:
            close_sync(self._client)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the flusher thread: drives BaseProducer._flusher() by blocking -------------------

    def _start_flusher(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"rpa-bus-producer-{self.id}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        steps = self._flusher()
        reply: BaseException | None = None
        crashed = False
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Write):
                    try:
                        self._write(step.batch)
                    except (*REDIS_FAILURES, ConfigMismatch) as exc:  # type: ignore[misc]
                        reply = exc
                elif isinstance(step, Fetch):
                    try:
                        reply = self._fetch(step.key)
                    except REDIS_FAILURES as exc:
                        reply = exc
                elif isinstance(step, Sleep):
                    self._stop_event.wait(step.seconds)
                elif step == IDLE:
                    self._wake_event.clear()
                    if not self._has_work():
                        self._wake_event.wait()
                else:  # NOTIFY
                    with self._written:
                        self._written.notify_all()
        except StopIteration:
            pass
        except Exception as exc:  # a bug: logged; the next emit starts a new flusher
            crashed = True
            self._crashed(exc)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if crashed:  # only now: a new flusher must not meet this one's pool
                self._mark_dead()
            with self._written:
                self._written.notify_all()

    def _write(self, batch: Batch) -> None:
        """One round trip for the batch (plus one to load the scripts if Redis lost them);
        on a cluster, one per node serving the batch's streams, at once."""
        if self._cluster:
            self._read_slot_map()
        if not self._config_checked:
            self._drive(*self._config_job())
        jobs = self._jobs(batch.calls)
        # Every node's pipeline at once (one thread each but the first: the round trips
        # overlap, the GIL is free while a thread waits on its socket); every one is
        # awaited, and a failure leaves the batch to be sent again whole, which is safe:
        # the scripts skip what they applied.
        futures = []
        here = jobs[:1]
        for job in jobs[1:]:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(thread_name_prefix=f"rpa-bus-producer-{self.id}")
            try:
                futures.append(self._pool.submit(self._drive, job[0], self._rounds(*job[1:])))
            except RuntimeError:  # the interpreter is exiting: no new threads
                here.append(job)
        first: BaseException | None = None
        for client, calls, name in here:
            try:
                self._drive(client, self._rounds(calls, name))
            except REDIS_FAILURES as exc:
                first = first or exc
        for future in futures:
            error = future.exception()
            if first is None and error is not None:
                first = error
        if first is not None:
            raise first

    def _fetch(self, key: str) -> Any:
        """One GET, bounded by the client's socket timeouts."""
        if self._cluster:
            self._read_slot_map()
        return cast(Any, self._client).get(key)

    def _drive(self, client: redis.Redis, rounds: NodeRounds) -> None:
        """Run one node's rounds, blocking: each bounded by the socket timeouts."""
        reply: Any = None
        try:
            while True:
                op = rounds.send(reply)
                if isinstance(op, LoadScripts):
                    for script in op.scripts:
                        client.script_load(script)
                    reply = None
                else:
                    pipe = client.pipeline(transaction=False)
                    for args in op.commands:
                        pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                    reply = pipe.execute(raise_on_error=False)
        except StopIteration:
            return

    def _read_slot_map(self) -> None:
        if self._client is None:
            self._client = sync_client(self.settings)
            self._refresh = False
        elif self._refresh:
            # After MOVED, a dead master or READONLY: read the slot map again.
            cast(redis.RedisCluster, self._client).nodes_manager.initialize()
            self._refresh = False

    def _node_client(self, host: str, port: int) -> redis.Redis:
        return redis.Redis(host=host, port=port, **node_kwargs(self.settings))


def _closer(ref: weakref.ref[Producer]) -> Callable[[], None]:
    def close_at_exit() -> None:
        bus = ref()
        if bus is not None:
            bus.close(timeout_s=1.0)

    return close_at_exit
