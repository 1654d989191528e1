"""The bounded outbound queue every door (WebSocket, SSE) puts a client's frames through.

Everything sent to a client goes through one FIFO, so frames of one subscription
(``subscribed``, replayed events, ``live``, live events) keep their order. The FIFO is
bounded in frames and bytes:

- live events use ``try_put`` and never wait; a full queue switches the subscription to
  catching up from Redis (see ``relay._subscription``), so the relay holds at most the bound;
- replayed events use ``put_replay``, which waits until the queue is under half its bound,
  leaving the other half as headroom for the live subscriptions of the same client;
- control frames (a handful per subscription or op, and ops are rate limited) go in up to
  twice the byte bound; a client that leaves even that unread is closed with 1008.

Past the relay-wide ``total_queue_bytes`` (all clients), a live event for a client that is
behind is refused too (it catches up from Redis instead), and a replay holds at most one
frame in the queue.

A frame goes straight to the socket when nothing is queued before it and the transport's
buffer is under ``write_limit`` (nearly always); otherwise it waits in the FIFO, and one
writer task (started when first needed) drains the FIFO into the door's ``_send``, which
waits while the buffer is full. A client that takes nothing for ``stall_timeout_s`` is
closed (WebSocket: 1013, try again later; SSE: the response ends) and resumes from its
last id.

``Outbox`` implements ``relay._subscription.Sink``; a door subclasses it with
``_write_now`` (synchronous, below the buffer limit), ``_send`` (waits for the buffer),
``_stalled`` and ``_policy_close``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from relay._stats import Stats
from rpa_bus.redisio import cancel_and_wait

if TYPE_CHECKING:
    from relay._settings import RelaySettings

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client's connection is closed: nothing more can be sent."""


class Outbox:
    """A client's bounded FIFO and the tasks it owns (subscriptions, writer, close)."""

    # Slots: thousands of idle clients each hold one of these.
    __slots__ = (
        "_data",
        "_empty",
        "_failure",
        "_policy_closing",
        "_room",
        "_tasks",
        "_writer",
        "low_bytes",
        "low_frames",
        "max_bytes",
        "max_control_bytes",
        "max_frames",
        "queue",
        "queued_bytes",
        "stall_s",
        "stats",
        "total_bytes",
        "write_limit",
    )

    def __init__(self, settings: RelaySettings, stats: Stats) -> None:
        self.stats = stats
        self.max_frames = settings.queue_frames
        self.max_bytes = settings.queue_bytes
        self.max_control_bytes = 2 * settings.queue_bytes
        self.total_bytes = settings.total_queue_bytes
        self.low_frames = max(1, settings.queue_frames // 2)
        self.low_bytes = settings.queue_bytes // 2
        self.stall_s = settings.stall_timeout_s
        self.write_limit = settings.write_limit
        # Made when first needed, like the events below: an idle client holds none of them.
        self.queue: collections.deque[bytes] | None = None
        self.queued_bytes = 0
        # Made when first needed: most clients never fill their socket buffer.
        self._data: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._empty: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._failure: BaseException | None = None
        self._policy_closing = False

    # -- what a door provides -------------------------------------------------------------

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` at once if the socket is open and its buffer under the limit."""
        raise NotImplementedError

    async def _send(self, frame: bytes) -> None:
        """Write ``frame``, waiting while the buffer is full; ``ClientGone`` if closed."""
        raise NotImplementedError

    async def _stalled(self) -> None:
        """The client took nothing for ``stall_s`` with a full buffer: end it."""
        raise NotImplementedError

    def _policy_close(self, reason: str) -> None:
        """End the client for breaking a rule (WebSocket: 1008)."""
        raise NotImplementedError

    def _failed(self, exc: BaseException) -> None:
        """A task of this client failed (a bug): end the client."""

    # -- Sink -----------------------------------------------------------------------------

    def _push(self, frame: bytes) -> None:
        if not self.queue and self._write_now(frame):
            return
        if self.queue is None:
            self.queue = collections.deque()
        self.queue.append(frame)
        size = len(frame)
        self.queued_bytes += size
        self.stats.queued_frames += 1
        self.stats.queued_bytes += size
        if self._writer is None:
            self._writer = self.spawn(self._drain(), "writer")
        data = self._data
        if data is None:
            data = self._data = asyncio.Event()
        if not data.is_set():
            data.set()

    def try_put(self, frame: bytes) -> bool:
        queue = self.queue
        if not queue and self._write_now(frame):
            return True
        if (queue and len(queue) >= self.max_frames) or (
            self.queued_bytes + len(frame) > self.max_bytes
        ):
            return False
        if self._over_total(len(frame)):
            # Relay-wide bound: this client is behind (its frame could not go straight to
            # the socket), so it catches up from Redis instead of holding relay memory.
            self.stats.total_bound_switches += 1
            return False
        self._push(frame)
        return True

    def _over_total(self, size: int) -> bool:
        return bool(self.total_bytes) and self.stats.queued_bytes + size > self.total_bytes

    def put_control(self, frame: bytes) -> None:
        """Enqueue a control frame. Control frames count against the byte bound too, with
        headroom: events may fill ``queue_bytes``, control frames up to twice that. A client
        that leaves even that unread (it sends ops and never reads the answers) is closed
        with 1008 instead of growing the queue."""
        if not self.queue and self._write_now(frame):
            return
        if self.queued_bytes + len(frame) > self.max_control_bytes:
            self._close_policy("control frames past the queue bound: read what you are sent")
            return
        self._push(frame)

    def _close_policy(self, reason: str) -> None:
        """Close for a broken rule, once."""
        if self._policy_closing:
            return
        self._policy_closing = True
        self.stats.policy_closes += 1
        self._policy_close(reason)

    async def put_replay(self, frame: bytes) -> None:
        if not self.queue and self._write_now(frame):
            return
        while (
            (self.queue is not None and len(self.queue) >= self.low_frames)
            or self.queued_bytes >= self.low_bytes
            # Past the relay-wide bound a replay holds at most one frame in the queue.
            or (self.queue and self._over_total(len(frame)))
        ):
            # The writer sets _room when the queue is down to a quarter: replay then refills
            # a quarter of the bound in one go instead of one frame per task switch.
            room = self._room
            if room is None:
                room = self._room = asyncio.Event()
            room.clear()
            await room.wait()
        self._push(frame)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        tasks = self._tasks
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                self._tasks = None  # an idle client holds no empty set
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            self._failure = exc
            self._failed(exc)

    # -- the writer -----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Write the queued frames in order; waits for the buffer through ``_send``."""
        queue = self.queue
        assert queue is not None  # made before the writer is started
        try:
            while True:
                if not queue:
                    if self._empty is not None:
                        self._empty.set()
                    data = self._data
                    assert data is not None
                    data.clear()
                    await data.wait()
                    continue
                frame = queue.popleft()
                size = len(frame)
                self.queued_bytes -= size
                self.stats.queued_frames -= 1
                self.stats.queued_bytes -= size
                if (
                    self._room is not None
                    and len(queue) <= self.low_frames // 2
                    and self.queued_bytes <= self.low_bytes // 2
                ):
                    self._room.set()
                if self._write_now(frame):
                    continue
                try:
                    # The buffer is full: send writes, then waits for it to drain.
                    async with asyncio.timeout(self.stall_s):
                        await self._send(frame)
                except TimeoutError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        # 3.11: a cancel landing as the timeout expires surfaces as this.
                        raise asyncio.CancelledError from None
                    self.stats.slow_closes += 1
                    await self._stalled()
                    return
        except ClientGone:
            return

    async def flushed(self) -> None:
        """Wait until everything queued is written."""
        while self.queue:
            if self._empty is None:
                self._empty = asyncio.Event()
            self._empty.clear()
            await self._empty.wait()

    async def _release(self) -> None:
        """Cancel and await every task of this client; forget what is queued."""

        if self._tasks:
            await cancel_and_wait(list(self._tasks))
        if self.queue:
            self.stats.queued_frames -= len(self.queue)
        self.stats.queued_bytes -= self.queued_bytes
        self.queue = None
        self.queued_bytes = 0
