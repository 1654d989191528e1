"""A subscription: one stream watched by one client, and what it needs from the client.

A subscription moves through three modes::

    PENDING      live events are buffered for it (bounded) while XRANGE pages replay
    LIVE         live events go straight into its client's bounded queue
    CATCHING_UP  its client fell behind: live events are ignored (not buffered) and it
                 reads XRANGE pages from its last delivered id until it reaches the end,
                 then rejoins through PENDING

The client is a ``Sink``: it knows nothing of Redis, and the subscription nothing of the
wire (WebSocket, SSE).
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Coroutine
from typing import Any, Protocol

from relay._frames import ZERO_ID, Id, format_id
from rpa_bus import StreamRef


class Sink(Protocol):
    """What a subscription needs from its connection."""

    def try_put(self, frame: bytes) -> bool:
        """Enqueue a live frame if the connection is under its bound."""

    def put_control(self, frame: bytes) -> None:
        """Enqueue a small control frame (subscribed, live, gap, reset, error) always."""

    async def put_replay(self, frame: bytes) -> None:
        """Enqueue a replayed frame, waiting until the queue is below its low-water mark."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a task owned by the connection (cancelled and awaited when it closes)."""


class Mode(enum.Enum):
    PENDING = "pending"
    LIVE = "live"
    CATCHING_UP = "catching_up"
    CLOSED = "closed"


class Subscription:
    """One stream watched by one connection."""

    __slots__ = (
        "buffer",
        "buffer_bytes",
        "epoch",
        "expires_s",
        "last",
        "mode",
        "name",
        "notified_outage",
        "outcome",
        "overflow",
        "ref",
        "sink",
        "task",
    )

    def __init__(self, sink: Sink, ref: StreamRef) -> None:
        self.sink = sink
        self.ref = ref
        self.name = ref.name
        self.last: Id = ZERO_ID
        self.epoch: str | None = None
        # A new subscription is pending-live from the start: the handoff buffers first.
        self.mode = Mode.PENDING
        self.buffer: collections.deque[tuple[Id, bytes]] = collections.deque()
        self.buffer_bytes = 0
        self.overflow = False
        self.task: asyncio.Task[None] | None = None
        self.notified_outage = 0
        # How the current replay ends, for the replays metric: live, gap, reset, catch_up.
        self.outcome = "live"
        # With auth on: when the grant that admitted it (or a later one covering it) expires.
        self.expires_s: float | None = None

    def clear_buffer(self) -> None:
        self.buffer.clear()
        self.buffer_bytes = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.name} {self.mode.value} last={format_id(self.last)}>"
