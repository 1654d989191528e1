"""The subscription core: one stream watched by one client, from replay to live.

A subscription moves through three modes::

    PENDING      live events are buffered for it (bounded) while XRANGE pages replay
    LIVE         live events go straight into its client's bounded queue
    CATCHING_UP  its client fell behind: live events are ignored (not buffered) and it
                 reads XRANGE pages from its last delivered id until it reaches the end,
                 then rejoins through PENDING

The invariant that makes replay, live, catch-up and reconnects exact: a subscription
delivers an entry only if its id is greater than ``last``, the id it delivered last, and
``last`` only grows. Duplicates are therefore impossible; the handoff argument for "no
gap" is in ``Subscriptions._catch_up``.

The client is a ``Sink`` (a door: WebSocket, SSE): the core knows nothing of the wire, and
the doors nothing of Redis. The core reaches the tailed streams through ``Streams`` (the
hub), Redis through ``Servers``, and outages through ``Outages``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from redis.exceptions import ResponseError

from relay import _frames as F
from relay._archive import trimmed_count
from relay._frames import MAX_ID, ZERO_ID, Id, event_frame, format_id, parse_id
from relay._stats import Stats
from rpa_bus import Keys, StreamRef, state_from_meta
from rpa_bus.archive import MAX_PAGE, ArchiveUnavailable, EventPage, Store
from rpa_bus.redisio import Backoff, cancel_and_wait

T = TypeVar("T")

if TYPE_CHECKING:
    from relay._archive import Archive
    from relay._outage import Outages
    from relay._servers import Servers


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
        "archived",
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
        # Interned: the subscriptions of one stream share one string.
        self.name = sys.intern(ref.name)
        self.last: Id = ZERO_ID
        self.epoch: str | None = None
        # A new subscription is pending-live from the start: the handoff buffers first.
        self.mode = Mode.PENDING
        # Made when the first live event is buffered; dropped when it is emptied.
        self.buffer: collections.deque[tuple[Id, bytes]] | None = None
        self.buffer_bytes = 0
        self.overflow = False
        self.task: asyncio.Task[None] | None = None
        self.notified_outage = 0
        # How the current replay ends, for the replays metric: live, gap, reset, catch_up.
        self.outcome = "live"
        # With auth on: when the grant that admitted it (or a later one covering it) expires.
        self.expires_s: float | None = None
        # A session Redis does not hold: whether the archive has it (None: the store was
        # down when asked, so not known).
        self.archived: bool | None = False

    def clear_buffer(self) -> None:
        self.buffer = None
        self.buffer_bytes = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.name} {self.mode.value} last={format_id(self.last)}>"


class Streams(Protocol):
    """The tailed streams, as the core needs them (the hub)."""

    async def attach(self, sub: Subscription) -> None:
        """Register ``sub`` on its stream's tail, tailing the stream if new."""

    def detach(self, sub: Subscription) -> None:
        """Unregister ``sub``; a tail left without subscribers is dropped by its reader."""

    def confirmed(self, key: str) -> Id | None:
        """With ``min_replicas``: up to which id ``key`` is known to be replicated."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    epoch: str | None
    first: Id | None
    last: Id | None
    state: dict[str, Any]


class Subscriptions:
    """Runs subscriptions: ``start``, ``offer`` (from the fan-out), ``restart``, ``stop``."""

    def __init__(
        self,
        *,
        streams: Streams,
        servers: Servers,
        outages: Outages,
        keys: Keys,
        stats: Stats,
        page_size: int,
        replay_buffer: int,
        replay_buffer_bytes: int,
        archive: Archive | None = None,
    ) -> None:
        self._streams = streams
        # Replay reaches into the archive for what Redis trimmed (None: Redis only).
        self._archive = archive
        self._archive_page = min(page_size, MAX_PAGE)
        self._servers = servers
        self._outages = outages
        self._keys = keys
        self.stats = stats
        self._page_size = page_size
        self._replay_buffer = replay_buffer
        self._replay_buffer_bytes = replay_buffer_bytes

    def start(self, sub: Subscription, *, from_id: Id | None, epoch: str | None) -> None:
        """Begin a subscription: attach, send ``subscribed``, replay, then go live."""
        sub.task = sub.sink.spawn(self._subscribe(sub, from_id, epoch), f"sub:{sub.name}")

    async def stop(self, sub: Subscription) -> None:
        sub.mode = Mode.CLOSED
        sub.clear_buffer()
        task, sub.task = sub.task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task])
        self._streams.detach(sub)

    async def _subscribe(self, sub: Subscription, from_id: Id | None, epoch: str | None) -> None:
        try:
            await self._outages.retrying(sub, lambda: self._streams.attach(sub))
        except ResponseError as exc:  # e.g. WRONGTYPE: the key holds something else
            sub.mode = Mode.CLOSED
            sub.sink.put_control(F.error(F.INVALID_STREAM, f"cannot read stream: {exc}", sub.name))
            self.stats.replays["error"] += 1
            return
        info: StreamInfo = await self._outages.retrying(sub, lambda: self._info(sub.ref))
        if self._gone(sub, info):
            info = await self._archived_info(sub, info)
        sub.sink.put_control(
            F.frame(
                type="subscribed",
                stream=sub.name,
                epoch=info.epoch,
                first=_fmt(info.first),
                last=_fmt(info.last),
                state=info.state,
            )
        )
        sub.epoch = info.epoch
        if from_id is None:  # "$": only what comes after the current end
            sub.last = info.last or ZERO_ID
        elif epoch and epoch != info.epoch:
            # The client's history belongs to another incarnation of the stream.
            self.stats.resets += 1
            sub.outcome = "reset"
            sub.sink.put_control(F.frame(type="reset", stream=sub.name, epoch=info.epoch))
            sub.last = ZERO_ID
        else:
            sub.last = from_id
        await self._catch_up(sub)

    def restart(self, sub: Subscription) -> None:
        """Re-check a subscription against Redis (its stream lost our group: recreated or
        lost in a restart): reset if the epoch changed, else catch up from ``last``."""
        old = sub.task
        sub.mode = Mode.CATCHING_UP
        sub.clear_buffer()
        sub.task = sub.sink.spawn(self._resume(sub, old), f"resume:{sub.name}")

    async def _resume(self, sub: Subscription, old: asyncio.Task[None] | None) -> None:
        if old is not None:
            await cancel_and_wait([old])
        info: StreamInfo = await self._outages.retrying(sub, lambda: self._info(sub.ref))
        if self._gone(sub, info):
            info = await self._archived_info(sub, info)
        if sub.epoch != info.epoch and sub.ref.kind == "session":
            self.stats.resets += 1
            sub.outcome = "reset"
            sub.sink.put_control(F.frame(type="reset", stream=sub.name, epoch=info.epoch))
            sub.epoch = info.epoch
            sub.last = ZERO_ID
        await self._catch_up(sub)

    def _fall_behind(self, sub: Subscription) -> None:
        """The connection's queue is full: catch this subscription up from Redis instead."""
        self.stats.slow_switches += 1
        sub.outcome = "catch_up"
        sub.mode = Mode.CATCHING_UP
        sub.clear_buffer()
        sub.task = sub.sink.spawn(self._catch_up(sub), f"catch-up:{sub.name}")

    async def _catch_up(self, sub: Subscription) -> None:
        """Replay XRANGE pages from ``sub.last`` to the end, then hand off to live.

        No gap: while PENDING, every entry the reader fans out for this stream is buffered.
        The final XRANGE pass starts after PENDING began, so an entry is either older than
        that pass (and the pass returns it) or the reader fans it out after PENDING began
        (the group was created before any pass, so ``>`` returns it) and it is buffered or,
        once LIVE, delivered. Buffer overflow drops the buffer and reads Redis again.
        No duplicate: everything goes through the ``id > last`` test.
        """
        while True:
            await self._replay_pages(sub)
            if sub.mode is not Mode.PENDING:  # coming from CATCHING_UP: one more pass
                sub.mode = Mode.PENDING
                sub.clear_buffer()
                sub.overflow = False
                continue
            while sub.buffer and not sub.overflow:
                entry_id, frame = sub.buffer.popleft()
                sub.buffer_bytes -= len(frame)
                if entry_id > sub.last:
                    await sub.sink.put_replay(frame)
                    sub.last = entry_id
                    self.stats.events_out += 1
            if sub.overflow:
                sub.overflow = False
                sub.clear_buffer()
                continue
            sub.mode = Mode.LIVE
            sub.clear_buffer()  # empty: live subscriptions hold no buffer
            sub.task = None
            self.stats.replays[sub.outcome] += 1
            sub.outcome = "live"
            sub.sink.put_control(F.frame(type="live", stream=sub.name))
            return

    async def _replay_pages(self, sub: Subscription) -> None:
        key = self._keys.key_for(sub.ref)
        prefix = F.event_prefix(sub.name)
        page = self._page_size
        archived = self._archive is not None and sub.ref.kind in ("session", "sessions")
        while True:
            # With min_replicas, replay stops at what is known to be replicated: an entry
            # past it may still vanish in a failover, and reaches the subscription through
            # the reader (which confirms it first) instead; see ``_await_replicas``.
            upto = self._streams.confirmed(key)
            first, entries = await self._outages.retrying(
                sub, functools.partial(self._page, key, sub.last, page, upto)
            )
            if archived and (first is None or first > sub.last):
                # Redis holds nothing at or before ``last``'s successor: what it trimmed
                # is read from the archive first (these Redis entries all come after it).
                await self._from_archive(sub, key, first)
            elif first is not None and sub.last != ZERO_ID and first > sub.last:
                # Entries after `last` may have been trimmed away (approximate MAXLEN); the
                # client learns it, then gets the retained rest.
                self._gap(sub, first)
            for raw_id, fields in entries:
                entry_id = parse_id(raw_id)
                if entry_id <= sub.last:
                    continue
                await sub.sink.put_replay(event_frame(prefix, raw_id, fields.get(b"e")))
                sub.last = entry_id
                self.stats.events_out += 1
            if len(entries) < page:
                return

    def _gap(self, sub: Subscription, first: Id) -> None:
        self.stats.gaps += 1
        sub.outcome = "gap"
        sub.sink.put_control(
            F.frame(type="gap", stream=sub.name, **{"from": format_id(sub.last)},
                    first=format_id(first))
        )  # fmt: skip

    async def _from_archive(self, sub: Subscription, key: str, first: Id | None) -> None:
        """Deliver the archived entries after ``sub.last`` and before Redis's ``first``
        (all of them when Redis no longer holds the stream), then tell a ``gap`` only if
        an event exists in neither.

        Redis 7 counts what it removed from the stream's head (``entries-added`` minus
        ``length``): none, and the archive is not asked at all, so a store that is down
        holds up only the replays that need it; those tell the subscriber ``unavailable``
        and wait for the store, never a silent skip. Some, and the archive must hold as
        many of this epoch's entries below ``first``, else there is a hole: the ones
        Redis trimmed before the archive stored them. The hole is placed after what the
        archive delivered (the usual case: an archive that started late, or was off)."""
        assert self._archive is not None
        removed = None
        if first is None and sub.ref.kind == "session" and not sub.archived:
            # Redis holds nothing of it and the archive did not know it (or was down when
            # asked, and the subscriber was told): nothing to wait for; follow it live.
            return
        if first is not None:
            removed = await self._outages.retrying(sub, functools.partial(self._removed, key))
            if removed == 0:
                return  # Redis holds the whole stream
        epoch = sub.epoch if sub.ref.kind == "session" else None
        before = None if first is None else format_id(first)
        prefix = F.event_prefix(sub.name)
        delivered = 0
        # Wait for a store that is down only when the archive is known to hold what is
        # missing: Redis trimmed the stream, or it has the session Redis no longer holds.
        wait = first is not None or sub.archived is True
        while True:
            after = format_id(sub.last)

            def read(store: Store, after: str = after) -> Awaitable[EventPage]:
                return store.events(
                    sub.name, after=after, before=before, limit=self._archive_page, epoch=epoch
                )

            if wait:
                page = await self._archive_retrying(sub, read)
            else:
                page = await self._archive_once(sub, read)
                if page is _DOWN:
                    return  # told; Redis holds nothing of it: follow it live
            for event in page.events:
                entry_id = parse_id(event.id)
                if entry_id <= sub.last:
                    continue
                await sub.sink.put_replay(event_frame(prefix, event.id.encode(), event.data))
                sub.last = entry_id
                delivered += 1
                self.stats.events_out += 1
                self.stats.archive_events_out += 1
            if page.next is None:
                break
        if first is None or before is None or sub.last == ZERO_ID:
            return  # "from the start": whatever is retained anywhere, as without an archive
        if removed is None:
            if delivered == 0:  # Redis does not say (before 7.0): the rule without archive
                self._gap(sub, first)
            return
        held = await self._archive_retrying(
            sub,
            lambda store: store.count_before(sub.name, before, epoch=epoch),
        )
        if held < removed:
            self._gap(sub, first)

    async def _removed(self, key: str) -> int | None:
        client = await self._servers.slot_client(key)
        return await trimmed_count(client, key)

    def _gone(self, sub: Subscription, info: StreamInfo) -> bool:
        """Whether ``sub`` is to a session Redis no longer holds (the archive may)."""
        return (
            self._archive is not None
            and sub.ref.kind == "session"
            and info.epoch is None
            and info.last is None
        )

    async def _archived_info(self, sub: Subscription, info: StreamInfo) -> StreamInfo:
        """A session Redis does not hold: its newest archived run, if any. Asked once,
        without waiting: it may be a session about to start (subscribing before the job
        does is the usual way), which a store that is down must not hold up."""
        found = await self._archive_once(sub, lambda store: store.session(sub.ref.ident))
        if found is _DOWN or found is None:
            sub.archived = None if found is _DOWN else False
            return info
        sub.archived = True
        state = {
            k: v
            for k in ("status", "step", "total", "percent", "eta_s", "message", "error", "updated")
            if (v := getattr(found, k)) is not None
        }
        return StreamInfo(
            epoch=found.epoch,
            first=None if found.first is None else parse_id(found.first),
            last=None if found.last is None else parse_id(found.last),
            state=state,
        )

    async def _archive_once(self, sub: Subscription, call: Callable[[Store], Awaitable[T]]) -> Any:
        """``call`` on the archive once; ``_DOWN`` (the subscriber told) if it is down."""
        assert self._archive is not None
        try:
            return await self._archive.run(call)
        except ArchiveUnavailable:
            self._tell_archive_down(
                sub,
                "the archive is unavailable: what it may hold of this stream is not "
                "replayed (subscribe again once it returns); following what comes",
            )
            return _DOWN

    def _tell_archive_down(
        self,
        sub: Subscription,
        message: str = "the archive is unavailable; replay resumes when it returns",
    ) -> None:
        if sub.mode is not Mode.CLOSED:
            self.stats.archive_unavailable += 1
            sub.sink.put_control(F.error(F.UNAVAILABLE, message, sub.name))

    async def _archive_retrying(
        self, sub: Subscription, call: Callable[[Store], Awaitable[T]]
    ) -> T:
        """``call`` on the archive until it answers; the subscriber is told ``unavailable``
        once per outage, and its replay resumes where it stood when the store returns."""
        assert self._archive is not None
        backoff = Backoff(initial_s=0.1, max_s=2.0)
        told = False
        while True:
            try:
                return await self._archive.run(call)
            except ArchiveUnavailable:
                if not told:
                    told = True
                    self._tell_archive_down(sub)
                await asyncio.sleep(backoff.next_s())

    async def _page(
        self, key: str, after: Id, count: int, upto: Id | None = None
    ) -> tuple[Id | None, list[Any]]:
        end = "+" if upto is None else format_id(upto)
        client = await self._servers.slot_client(key)
        if after == MAX_ID:  # nothing can follow it, and "(" + MAX_ID is a Redis error
            first: Any = await client.xrange(key, "-", "+", count=1)
            return (parse_id(first[0][0]) if first else None), []
        async with client.pipeline(transaction=True) as pipe:
            pipe.xrange(key, "-", "+", count=1)
            pipe.xrange(key, "(" + format_id(after), end, count=count)
            head, entries = await pipe.execute()
        return (parse_id(head[0][0]) if head else None), entries

    async def _info(self, ref: StreamRef) -> StreamInfo:
        key = self._keys.key_for(ref)
        meta_key = self._keys.meta_for(ref)
        client = await self._servers.slot_client(key)
        async with client.pipeline(transaction=True) as pipe:
            pipe.xrange(key, "-", "+", count=1)
            pipe.xrevrange(key, "+", "-", count=1)
            if meta_key is not None:
                pipe.hgetall(meta_key)
            results = await pipe.execute()
        head, tail = results[0], results[1]
        if meta_key is None:
            # Index and monitor streams are never recreated: a constant epoch.
            epoch: str | None = ""
            state: dict[str, Any] = {}
        else:
            meta = results[2]
            raw_epoch = meta.get(b"epoch")
            epoch = raw_epoch.decode() if raw_epoch is not None else None
            state = state_from_meta(meta)
        return StreamInfo(
            epoch=epoch,
            first=parse_id(head[0][0]) if head else None,
            last=parse_id(tail[0][0]) if tail else None,
            state=state,
        )

    def offer(self, sub: Subscription, entry_id: Id, frame: bytes) -> None:
        if entry_id <= sub.last:
            return
        mode = sub.mode
        if mode is Mode.LIVE:
            if sub.sink.try_put(frame):
                sub.last = entry_id
                self.stats.events_out += 1
            else:
                self._fall_behind(sub)
        elif mode is Mode.PENDING:
            if sub.overflow:
                return
            size = len(frame)
            buffer = sub.buffer
            if buffer is None:
                buffer = sub.buffer = collections.deque()
            if len(buffer) < self._replay_buffer and (
                sub.buffer_bytes + size <= self._replay_buffer_bytes
            ):
                buffer.append((entry_id, frame))
                sub.buffer_bytes += size
            else:
                sub.overflow = True
                sub.clear_buffer()
        # CATCHING_UP and CLOSED: nothing; the catch-up reads these from Redis.


# What ``_archive_once`` answers when the store is down.
_DOWN: Any = object()


def _fmt(value: Id | None) -> str | None:
    return None if value is None else format_id(value)
