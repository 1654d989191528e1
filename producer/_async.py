"""``AsyncProducer`` and ``AsyncSession``: the flusher is an owned task on
``redis.asyncio.Redis``. Emitting stays a plain call that only enqueues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Any, cast

import redis
import redis.asyncio as aredis

from producer._core import BaseProducer, BaseSession, Batch
from rpa_bus import BusError, ConfigMismatch, Envelope, Settings
from rpa_bus.redisio import AsyncClient, Backoff, async_client, async_node_client, close_async

log = logging.getLogger("producer")


class AsyncSession(BaseSession):
    """A session run for ``AsyncProducer``: ``async with bus.session(...) as s:``."""

    async def __aenter__(self) -> AsyncSession:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)  # the exception, if any, propagates


class AsyncProducer(BaseProducer):
    """The asyncio twin of ``Producer``: same names; ``flush``/``close`` are awaited.

    The flusher task starts with the first event (or ``async with bus``), on the running
    loop; emit from that loop's thread only. ``close()`` stops and awaits it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: AsyncClient | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(url, client=client, settings=settings, **overrides)
        self._owns_client = client is None
        if isinstance(client, aredis.RedisCluster):
            self._cluster = True
        # Any form connects on first use; nothing here touches the network.
        self._client: AsyncClient = client if client is not None else async_client(self.settings)
        # Cluster: one plain client per node (by "host:port"), for a pipeline per node
        # with WAIT on its connection; the cluster client only maps slots to nodes.
        self._nodes: dict[str, aredis.Redis] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._written = asyncio.Condition()

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncProducer:
        """Settings from ``RPA_BUS_*`` variables; keyword overrides win."""
        return cls(settings=Settings.from_env(**overrides))

    def session(self, sid: str, *, total: int | None = None, meta: Any = None) -> AsyncSession:
        """A session run; ``async with`` emits ``started``, then ``finished`` or ``failed``."""
        return AsyncSession(self, sid, total=total, meta=meta)

    async def start(self) -> None:
        """Start the flusher now (otherwise the first event starts it)."""
        self._ensure_task()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event emitted before the call is in Redis; False on timeout."""
        target = self._seq
        if self._all_written(target):
            return True
        self._ensure_task()
        deadline = time.monotonic() + timeout_s
        async with self._written:
            while not self._all_written(target):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._fatal is not None or self._task_dead():
                    return False
                try:
                    await asyncio.wait_for(self._written.wait(), remaining)
                except TimeoutError:
                    return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, waiting at most ``timeout_s``; the rest goes to the
        journal. Idempotent; the flusher task is stopped and awaited."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout_s
        if self._task is not None:
            await self.flush(timeout_s)
            self._stop_event.set()
            self._wake_event.set()
            task = self._task
            # Let it finish its current step; cancel if it is stuck in a Redis call.
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        left = self._spill_at_close()
        if left:
            log.warning(
                "closed with %d events not yet written; they are in the journal in %s",
                left,
                self.settings.spool_dir,
            )
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()
        if self._owns_client:
            await close_async(self._client)

    async def __aenter__(self) -> AsyncProducer:
        self._ensure_task()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the flusher task -----------------------------------------------------------------

    def _task_dead(self) -> bool:
        return self._task is None or self._task.done()

    def _ensure_task(self) -> None:
        if self._task is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError as exc:
                raise BusError("AsyncProducer needs a running event loop to emit") from exc
            self._task = loop.create_task(self._run(), name=f"rpa-bus-producer-{self.id}")

    def _enqueue(self, stream: str, event: Envelope, window_ms: int = 0) -> None:
        if self._task is None:
            self._ensure_task()  # refuse before anything is queued
        super()._enqueue(stream, event, window_ms)

    def _wake(self) -> None:
        if not self._wake_event.is_set():
            self._wake_event.set()

    async def _run(self) -> None:
        backoff = Backoff(initial_s=self.backoff_initial_s, max_s=self.backoff_max_s)
        try:
            while not self._stop_event.is_set():
                if self._fatal is not None:
                    self._spill()
                    await self._sleep(self.spill_interval_s)
                    continue
                batch = self._next_batch()
                if batch is None:
                    self._wake_event.clear()
                    if not self._has_work():
                        await self._wake_event.wait()
                    continue
                try:
                    await self._write(batch)
                except ConfigMismatch:
                    continue
                except (redis.RedisError, OSError) as exc:
                    self._failed(batch, exc)
                    await self._pause(backoff.next_s())
                    continue
                backoff.reset()
                self._recovered()
                if self._done(batch):
                    async with self._written:
                        self._written.notify_all()
        except Exception as exc:  # a bug: say so loudly; close() still saves the queue
            self.last_error = exc
            log.exception("rpa-bus producer flusher stopped by an unexpected error")
        finally:
            # Wake flush() waiters so they see the task is gone (not under cancellation:
            # acquiring the condition could wait, and close() is awaiting us).
            if not self._written.locked():
                async with self._written:
                    self._written.notify_all()

    async def _sleep(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay_s)

    async def _pause(self, delay_s: float) -> None:
        end = time.monotonic() + delay_s
        while not self._stop_event.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            await self._sleep(min(remaining, self.spill_interval_s))
            self._spill()

    async def _write(self, batch: Batch) -> None:
        """One round trip for the batch (plus one to load the script if Redis lost it);
        on a cluster, one per node serving the batch's sessions, concurrently."""
        if self._cluster:
            await self._write_cluster(batch)
            return
        client = cast(aredis.Redis, self._client)
        if not self._config_checked:
            async with client.pipeline(transaction=False) as pipe:
                for cmd in self._config_commands():
                    pipe.execute_command(*cmd)
                async with asyncio.timeout(self._bound):
                    results = await pipe.execute()
            self._check_config_reply(results)
        await self._write_node(client, batch.calls, "Redis")

    @property
    def _bound(self) -> float:
        # redis-py bounds each socket read; this bounds the whole round trip as well.
        s = self.settings
        return s.connect_timeout_s + s.socket_timeout_s + s.wait_timeout_ms / 1000

    async def _write_node(self, client: aredis.Redis, calls: list[Any], where: str) -> None:
        """The calls in one pipeline on one connection, then WAIT on that same connection
        (WAIT counts the replicas that acknowledged this connection's last write)."""
        wait = self._wait_args()
        bound = self._bound
        while calls:
            async with client.pipeline(transaction=False) as pipe:
                for args, _items in calls:
                    pipe.execute_command(*args)
                if wait is not None:
                    pipe.execute_command(*wait)
                try:
                    async with asyncio.timeout(bound):
                        results = await pipe.execute(raise_on_error=False)
                except TimeoutError as exc:
                    raise redis.TimeoutError(f"no reply from {where} within {bound}s") from exc
            acked = results.pop() if wait is not None else None
            calls, reload = self._sort_results(calls, results)
            if wait is not None:
                self._check_replicas(acked, where)
            if reload:
                async with asyncio.timeout(bound):
                    for script in self._scripts:
                        await client.script_load(script)

    async def _write_cluster(self, batch: Batch) -> None:
        cluster = cast(aredis.RedisCluster, self._client)
        bound = self._bound
        async with asyncio.timeout(bound):
            if self._refresh:
                # After MOVED, a dead master or READONLY: read the slot map again.
                await cluster.nodes_manager.initialize()
                self._refresh = False
            else:
                await cluster.initialize()  # a no-op once the slot map is known
            if not self._config_checked:
                config = self.keys.config
                ((field, value),) = self.keys.config_fields().items()
                await cluster.hsetnx(config, field, value)
                stored = await cluster.hgetall(config)
                self._check_config_reply([None, stored])
        routed = self._route(batch.calls, cluster.get_node_from_key)
        # Every node's pipeline at once, each awaited to its end (gather with
        # return_exceptions: no task outlives this call); any failure leaves the batch to
        # be sent again whole, which is safe: the scripts skip what they applied. The
        # first error is raised as itself, for the flusher's narrow except.
        results = await asyncio.gather(
            *(
                self._write_node(self._node(name, node), calls, name)
                for name, (node, calls) in routed.items()
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _node(self, name: str, node: Any) -> aredis.Redis:
        client = self._nodes.get(name)
        if client is None:
            client = async_node_client(self.settings, (node.host, node.port))
            self._nodes[name] = client
        return client
