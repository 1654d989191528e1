"""``AsyncProducer`` and ``AsyncSession``: the flusher is an owned task on
``redis.asyncio.Redis``. Emitting stays a plain call that only enqueues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from producer._core import BaseProducer, BaseSession, Batch
from producer._retry import Backoff
from producer._script import APPEND_LUA
from rpa_bus import BusError, ConfigMismatch, Envelope, Settings

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
        client: aredis.Redis | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(url, client=client, settings=settings, **overrides)
        s = self.settings
        self._owns_client = client is None
        self._client: aredis.Redis = client or aredis.Redis.from_url(
            s.redis_url,
            socket_connect_timeout=s.connect_timeout_s,
            socket_timeout=s.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
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
        if self._owns_client:
            await self._client.aclose()

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
                    await self._pause(backoff.delay())
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
        client = self._client
        # redis-py bounds each socket read; this bounds the whole round trip as well.
        bound = self.settings.connect_timeout_s + self.settings.socket_timeout_s
        if not self._config_checked:
            async with client.pipeline(transaction=False) as pipe:
                for cmd in self._config_commands():
                    pipe.execute_command(*cmd)
                async with asyncio.timeout(bound):
                    results = await pipe.execute()
            self._check_config_reply(results)
        calls = batch.calls
        while calls:
            async with client.pipeline(transaction=False) as pipe:
                for args, _items in calls:
                    pipe.execute_command(*args)
                try:
                    async with asyncio.timeout(bound):
                        results = await pipe.execute(raise_on_error=False)
                except TimeoutError as exc:
                    raise redis.TimeoutError(f"no reply from Redis within {bound}s") from exc
            calls, reload = self._sort_results(calls, results)
            if reload:
                async with asyncio.timeout(bound):
                    await client.script_load(APPEND_LUA)
