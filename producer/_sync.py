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

from producer._core import BaseProducer, BaseSession, Batch
from rpa_bus import ConfigMismatch, Settings
from rpa_bus.redisio import Backoff, SyncClient, close_sync, sync_client

log = logging.getLogger("producer")


class Session(BaseSession):
    """A session run for ``Producer``: ``with bus.session(...) as s:``."""

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
    ``spool_dir=``, ``min_replicas=``...). Every URL form works: one server, Sentinel,
    Cluster (see ``rpa_bus.parse_redis_url``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: SyncClient | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(url, client=client, settings=settings, **overrides)
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
        self._pool: ThreadPoolExecutor | None = None  # cluster: one pipeline per node
        self._wake_event = threading.Event()
        self._stop_event = threading.Event()
        self._written = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name=f"rpa-bus-producer-{self.id}", daemon=True
        )
        self._thread.start()
        # Events still queued when the interpreter exits go to the journal, not nowhere.
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    @classmethod
    def from_env(cls, **overrides: Any) -> Producer:
        """Settings from ``RPA_BUS_*`` variables; keyword overrides win."""
        return cls(settings=Settings.from_env(**overrides))

    def session(self, sid: str, *, total: int | None = None, meta: Any = None) -> Session:
        """A session run; ``with`` emits ``started`` on enter and ``finished`` (or
        ``failed``, when an exception escapes) on exit."""
        return Session(self, sid, total=total, meta=meta)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event emitted before the call is in Redis; False on timeout
        (the events are kept and written later) or while the bus config mismatches."""
        target = self._seq
        deadline = time.monotonic() + timeout_s
        with self._written:
            while not self._all_written(target):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._fatal is not None or not self._thread.is_alive():
                    return False
                self._written.wait(remaining)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, waiting at most ``timeout_s``; what is left goes to the
        journal, delivered by the next producer started with the same spool folder.
        Idempotent; never blocks past ``timeout_s`` (plus a file write)."""
        if self._closed:
            return
        atexit.unregister(self._atexit)
        deadline = time.monotonic() + timeout_s
        self.flush(timeout_s)
        self._stop_event.set()
        self._wake_event.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        # If the thread is still inside a Redis call, it finds _closed set when it
        # returns and touches nothing; a write it completes is deduplicated on replay.
        left = self._spill_at_close()
        if left:
            log.warning(
                "closed with %d events not yet written; they are in the journal in %s",
                left,
                self.settings.spool_dir,
            )
        if self._pool is not None:
            # Its threads only run inside a batch write, which the flusher awaits.
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_client and self._client is not None:
            close_sync(self._client)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the flusher thread -------------------------------------------------------------

    def _wake(self) -> None:
        # Checking first keeps emit() cheap: set() takes a lock and notifies. The flusher
        # clears the event before it looks at the queue, so no wake-up is lost.
        if not self._wake_event.is_set():
            self._wake_event.set()

    def _run(self) -> None:
        backoff = Backoff(initial_s=self.backoff_initial_s, max_s=self.backoff_max_s)
        try:
            while not self._stop_event.is_set():
                if self._fatal is not None:
                    self._spill()
                    self._stop_event.wait(self.spill_interval_s)
                    continue
                batch = self._next_batch()
                if batch is None:
                    self._wake_event.clear()
                    if not self._has_work():
                        self._wake_event.wait()
                    continue
                try:
                    self._write(batch)
                except ConfigMismatch:
                    continue
                except (redis.RedisError, OSError) as exc:
                    self._failed(batch, exc)
                    self._pause(backoff.next_s())
                    continue
                backoff.reset()
                self._recovered()
                if self._done(batch):
                    with self._written:
                        self._written.notify_all()
        except Exception as exc:  # a bug: say so loudly; close() still saves the queue
            self.last_error = exc
            log.exception("rpa-bus producer flusher stopped by an unexpected error")
        finally:
            with self._written:
                self._written.notify_all()

    def _pause(self, delay_s: float) -> None:
        """Back off, moving new events to disk meanwhile."""
        end = time.monotonic() + delay_s
        while not self._stop_event.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._stop_event.wait(min(remaining, self.spill_interval_s))
            self._spill()

    def _write(self, batch: Batch) -> None:
        """One round trip for the batch (plus one to load the script if Redis lost it);
        on a cluster, one per node serving the batch's sessions."""
        if self._cluster:
            self._write_cluster(batch)
            return
        client = cast(redis.Redis, self._client)  # set in __init__ when not a cluster
        if not self._config_checked:
            pipe = client.pipeline(transaction=False)
            for cmd in self._config_commands():
                pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
            self._check_config_reply(pipe.execute())
        self._write_node(client, batch.calls, "Redis")

    def _write_node(self, client: redis.Redis, calls: list[Any], where: str) -> None:
        """The calls in one pipeline on one connection, then WAIT on that same connection
        (WAIT counts the replicas that acknowledged this connection's last write)."""
        wait = self._wait_args()
        while calls:
            pipe = client.pipeline(transaction=False)
            for args, _items in calls:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            if wait is not None:
                pipe.execute_command(*wait)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            acked = results.pop() if wait is not None else None
            calls, reload = self._sort_results(calls, results)
            if wait is not None:
                self._check_replicas(acked, where)
            if reload:
                # NOSCRIPT: the server restarted, flushed its script cache, or is a
                # replica promoted by a failover that never saw SCRIPT LOAD.
                for script in self._scripts:
                    client.script_load(script)
            if self._closed:
                return

    def _write_cluster(self, batch: Batch) -> None:
        cluster = self._cluster_client()
        if not self._config_checked:
            config = self.keys.config
            ((field, value),) = self.keys.config_fields().items()
            cluster.hsetnx(config, field, value)
            self._check_config_reply([None, cluster.hgetall(config)])
        # One pipeline per node, all at once (one thread each but the first: the round
        # trips overlap, the GIL is free while a thread waits on its socket); every one
        # is awaited, and a failure leaves the batch to be sent again whole, which is
        # safe: the scripts skip what they applied.
        routed = list(self._route(batch.calls, cluster.get_node_from_key).items())
        jobs = [(cluster.get_redis_connection(node), calls, name) for name, (node, calls) in routed]
        if len(jobs) == 1:
            self._write_node(*jobs[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(thread_name_prefix=f"rpa-bus-producer-{self.id}")
        futures = [self._pool.submit(self._write_node, *job) for job in jobs[1:]]
        first: BaseException | None = None
        try:
            self._write_node(*jobs[0])
        except (redis.RedisError, OSError) as exc:
            first = exc
        for future in futures:
            error = future.exception()
            if first is None and error is not None:
                first = error
        if first is not None:
            raise first

    def _cluster_client(self) -> redis.RedisCluster:
        if self._client is None:
            self._client = sync_client(self.settings)
            self._refresh = False
        cluster = cast(redis.RedisCluster, self._client)
        if self._refresh:
            # After MOVED, a dead master or READONLY: read the slot map again.
            try:
                cluster.nodes_manager.initialize()
            except redis.exceptions.RedisClusterException as exc:
                raise redis.ConnectionError(f"cannot read the cluster's slot map: {exc}") from exc
            self._refresh = False
        return cluster


def _closer(ref: weakref.ref[Producer]) -> Callable[[], None]:
    def close_at_exit() -> None:
        bus = ref()
        if bus is not None:
            bus.close(timeout_s=1.0)

    return close_at_exit
