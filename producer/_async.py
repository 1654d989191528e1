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
from rpa_bus import BusError, ConfigMismatch, Envelope, Settings
from rpa_bus.redisio import (
    REDIS_FAILURES,
    AsyncClient,
    async_client,
    async_node_client,
    close_async,
)

log = logging.getLogger("producer")


class AsyncStep(BaseStep):
    """One attempt at a step: ``async with s.step(3, "Screen 3") as st:`` (a plain
    ``with`` works too: nothing is awaited)."""

    __slots__ = ()

    async def __aenter__(self) -> AsyncStep:
        self._session._enter_step(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session._leave_step(self, exc)  # the exception, if any, propagates

    def __enter__(self) -> AsyncStep:
        self._session._enter_step(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session._leave_step(self, exc)


class AsyncSession(BaseSession):
    """A session run for ``AsyncProducer``: ``async with bus.session(...) as s:``."""

    def step(self, number: int, name: str | None = None) -> AsyncStep:
        """A step: ``async with s.step(3, "Screen 3"):`` emits its start and its end
        (outcome and duration). Entering step ``number`` again is its next attempt."""
        return AsyncStep(self, number, name)

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
        journal_fsync: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(
            url, client=client, settings=settings, journal_fsync=journal_fsync, **overrides
        )
        self._owns_client = client is None
        if isinstance(client, aredis.RedisCluster):
            self._cluster = True
        # Any form connects on first use; nothing here touches the network.
        self._client: AsyncClient = client if client is not None else async_client(self.settings)
        self._task: asyncio.Task[None] | None = None
        self._wake_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._written = asyncio.Condition()

    def session(
        self, sid: str, *, total: int | None = None, meta: Any = None, job: str | None = None
    ) -> AsyncSession:
        """A session run; ``async with`` emits ``started``, then ``finished`` or ``failed``.
        ``job`` names the job it is a run of (its ETA is learned from past runs)."""
        return AsyncSession(self, sid, total=total, meta=meta, job=job)

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
                if self._dead:
                    self._revive()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._fatal is not None or self._closed:
                    return False
                try:  # a dying flusher notifies too
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
            self._closing()
            self._stop_event.set()
            self._wake_event.set()
            task = self._task
            # Let it finish its current step; cancel if it is stuck in a Redis call.
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        self._closing()
        self._closed_report(self._spill_at_close())
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

    # -- the flusher task: drives BaseProducer._flusher() by awaiting ---------------------

    def _ensure_task(self) -> None:
        if self._task is None and not self._closed:
            self._start_flusher()

    def _start_flusher(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError as exc:
            raise BusError("AsyncProducer needs a running event loop to emit") from exc
        self._task = loop.create_task(self._run(), name=f"rpa-bus-producer-{self.id}")

    def _enqueue(self, stream: str, event: Envelope, window_ms: int = 0) -> None:
        if self._task is None:
            self._ensure_task()  # refuse before anything is queued
        super()._enqueue(stream, event, window_ms)

    async def _run(self) -> None:
        steps = self._flusher()
        reply: BaseException | None = None
        try:
            while True:
                step = steps.send(reply)
                reply = None
                if isinstance(step, Write):
                    try:
                        await self._write(step.batch)
                    except (*REDIS_FAILURES, ConfigMismatch) as exc:  # type: ignore[misc]
                        reply = exc
                elif isinstance(step, Fetch):
                    try:
                        if self._cluster:
                            await self._read_slot_map()
                        reply = await cast(Any, self._client).get(step.key)
                    except REDIS_FAILURES as exc:
                        reply = exc
                elif isinstance(step, Sleep):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_event.wait(), step.seconds)
                elif step == IDLE:
                    self._wake_event.clear()
                    if not self._has_work():
                        await self._wake_event.wait()
                else:  # NOTIFY
                    async with self._written:
                        self._written.notify_all()
        except StopIteration:
            pass
        except Exception as exc:  # a bug: logged; the next emit starts a new flusher
            self._crashed(exc)
            self._mark_dead()
        finally:
            # Wake flush() waiters so they see the task is gone (not under cancellation:
            # acquiring the condition could wait, and close() is awaiting us).
            if not self._written.locked():
                async with self._written:
                    self._written.notify_all()

    async def _write(self, batch: Batch) -> None:
        """One round trip for the batch (plus one to load the scripts if Redis lost them);
        on a cluster, one per node serving the batch's streams, at once."""
        if self._cluster:
            await self._read_slot_map()
        if not self._config_checked:
            await self._drive(*self._config_job())
        # Every node's pipeline at once (gather with return_exceptions: no task outlives
        # this call); any failure leaves the batch to be sent again whole, which is safe:
        # the scripts skip what they applied. The first error is raised as itself.
        results = await asyncio.gather(
            *(
                self._drive(client, self._rounds(calls, name))
                for client, calls, name in self._jobs(batch.calls)
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _drive(self, client: aredis.Redis, rounds: NodeRounds) -> None:
        """Run one node's rounds, awaiting: each bounded as a whole (``_round_trip_s``)."""
        bound = self._round_trip_s
        reply: Any = None
        try:
            while True:
                op = rounds.send(reply)
                try:
                    async with asyncio.timeout(bound):
                        if isinstance(op, LoadScripts):
                            for script in op.scripts:
                                await client.script_load(script)
                            reply = None
                        else:
                            async with client.pipeline(transaction=False) as pipe:
                                for args in op.commands:
                                    pipe.execute_command(*args)
                                reply = await pipe.execute(raise_on_error=False)
                except TimeoutError as exc:
                    raise redis.TimeoutError(f"no reply within {bound}s") from exc
        except StopIteration:
            return

    async def _read_slot_map(self) -> None:
        cluster = cast(aredis.RedisCluster, self._client)
        async with asyncio.timeout(self._round_trip_s):
            if self._refresh:
                # After MOVED, a dead master or READONLY: read the slot map again.
                await cluster.nodes_manager.initialize()
                self._refresh = False
            else:
                await cluster.initialize()  # a no-op once the slot map is known

    def _node_client(self, host: str, port: int) -> aredis.Redis:
        return async_node_client(self.settings, (host, port))
