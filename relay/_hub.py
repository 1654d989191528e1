"""The Redis side of the relay: tailing with a consumer group, replay, and the handoff.

One ``Hub`` per relay instance. It owns

- a command client (a small pool) for XRANGE pages, HGETALL, XGROUP and XACK, and for
  CLIENT UNBLOCK/KILL on one server (with Sentinel and Cluster, clients pinned to a node);
- the readers (``relay._reader``): on one server ONE, with a dedicated connection running
  one blocking XREADGROUP over every tailed stream (``>``); on a Redis Cluster one per
  active hash slot, each over that slot's streams on the master serving it. A reader is
  woken with CLIENT UNBLOCK (the waker task) when its tailed set grows;
- the tails: stream key -> the subscriptions watching it;
- an ack task: XACKs of fanned-out entries, coalesced, off the readers' path.

A subscription moves through three modes::

    PENDING      live events are buffered for it (bounded) while XRANGE pages replay
    LIVE         live events go straight into its connection's bounded queue
    CATCHING_UP  its connection fell behind: live events are ignored (not buffered) and it
                 reads XRANGE pages from its last delivered id until it reaches the end,
                 then rejoins through PENDING

The invariant that makes replay, live, catch-up and reconnects exact: a subscription
delivers an entry only if its id is greater than ``last``, the id it delivered last, and
``last`` only grows. Duplicates are therefore impossible; the handoff argument for "no
gap" is in ``Hub._catch_up``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, SlotNotCoveredError

from relay import _frames as F
from relay._frames import MAX_ID, ZERO_ID, Id, event_frame, format_id, parse_id
from relay._reader import Reader
from relay._stats import Stats
from relay._subscription import Mode, Subscription
from rpa_bus import Keys, StreamRef, state_from_meta
from rpa_bus.redisio import (
    REDIS_FAILURES,
    Address,
    AsyncClient,
    Backoff,
    NodeClient,
    cancel_and_wait,
    is_retryable,
)

log = logging.getLogger(__name__)

# Begin tailing a key: a fresh group at "$" (dropping one a crashed run of this relay left
# behind, with its stale pending entries). MKSTREAM so a session that has not started yet
# can be tailed; its first XADD then goes live at once.
_CREATE_GROUP = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
"""

# Stop tailing a key: drop our group; if that leaves an empty stream nobody else reads and
# no session owns (no meta hash), delete it, so subscribing to a session that never starts
# leaves nothing behind. Atomic, so a producer's first XADD cannot slip in between.
_DROP_GROUP = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XLEN', KEYS[1]) == 0 then
  local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
  if #groups == 0 and (KEYS[2] == KEYS[1] or redis.call('EXISTS', KEYS[2]) == 0) then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
"""

# The same, returning the id of the stream's last entry (nil if none) at that instant:
# with ``min_replicas``, where replay may go until entries are known to be replicated.
_CREATE_GROUP_AT = """
redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  return false
end
return last[1][1]
"""

ACK_INTERVAL_S = 0.01


class Tail:
    """A stream this relay reads with its group, and who watches it."""

    __slots__ = ("confirmed", "key", "meta", "name", "prefix", "slot", "subs")

    def __init__(self, key: str, meta: str | None, name: str, slot: int | None) -> None:
        self.key = key
        self.meta = meta
        self.name = name
        self.slot = slot  # the cluster hash slot (its reader's); None unless on a cluster
        self.prefix = F.event_prefix(name)
        self.subs: set[Subscription] = set()
        # With min_replicas: every entry up to this id is known to be on enough replicas
        # (history when the group was made, then whatever the reader confirmed with WAIT).
        self.confirmed: Id = ZERO_ID


@dataclass(frozen=True, slots=True)
class StreamInfo:
    epoch: str | None
    first: Id | None
    last: Id | None
    state: dict[str, Any]


class Hub:
    """Tails streams for one relay instance and hands their events to subscriptions."""

    def __init__(
        self,
        *,
        client: AsyncClient,
        keys: Keys,
        name: str,
        stats: Stats,
        block_ms: int,
        read_count: int,
        page_size: int,
        replay_buffer: int,
        replay_buffer_bytes: int,
        node_client: NodeClient | None = None,
        min_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self._cmd = client
        # Cluster: keyed commands go through the RedisCluster client; a reader per hash slot.
        self._cluster = client if isinstance(client, aioredis.RedisCluster) else None
        # Sentinel and Cluster: CLIENT UNBLOCK/KILL name a client id, which only means
        # something on the server that issued it, and the command pool may be on another
        # server than a reader (right after a failover; always, on a cluster). So they go
        # through clients pinned to one server, made by ``node_client``, as do the cluster
        # readers. None (one server): the command client does.
        self._node_client = node_client
        if self._cluster is not None and node_client is None:
            raise ValueError(
                "a Redis Cluster client needs node_client (rpa_bus.redisio.node_client_factory)"
            )
        self._controls: dict[Address, aioredis.Redis] = {}
        self._refresh_lock = asyncio.Lock()
        # Re-read the cluster's slot map before the next pinned call (first: not read yet).
        self._map_stale = self._cluster is not None
        # Deliver only what this many replicas hold (see ``Reader._await_replicas``).
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._keys = keys
        self.group = keys.relay_group(name)
        self.consumer = name
        self.stats = stats
        self.block_ms = block_ms
        self.read_count = read_count
        self._page_size = page_size
        self._replay_buffer = replay_buffer
        self._replay_buffer_bytes = replay_buffer_bytes
        self._tails: dict[str, Tail] = {}
        self._readers: dict[int | None, Reader] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._ack_wake = asyncio.Event()
        # Group creation and removal are serialised per slot (one lock on one server), so a
        # key is never dropped while a new subscriber is creating its group, and a cluster
        # reader never ends while a tail is being added to its slot. Per slot, so a master
        # that is slow to answer holds up only its own slots.
        self._locks: collections.defaultdict[int | None, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._wake = asyncio.Event()
        self._up = False
        # Outages are numbered (a subscriber is told once each): the counter, and the number
        # of the current/last one of the command path and of the single reader. On a
        # cluster a reader counts its own slot's outages (``Reader.outage``).
        self._outages = 0
        self.outage = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._create_group = client.register_script(_CREATE_GROUP)
        self._create_group_at = client.register_script(_CREATE_GROUP_AT)
        self._drop_group = client.register_script(_DROP_GROUP)
        self.closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._waker(), "relay-waker")
        self._spawn(self._acker(), "relay-acker")
        if self._cluster is None:
            self._reader_for(None)  # one reader for everything, idle until a subscription

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay %s task failed", task.get_name(), exc_info=task.exception())
            # A reader that failed (a bug) must not leave its streams unread: a new one
            # takes over its tails, after a pause so that a bug cannot spin.
            for slot, reader in list(self._readers.items()):
                if reader.task is task and not self.closed:
                    self._start_reader(slot, reader, delay_s=1.0)

    async def close(self) -> None:
        self.closed = True
        for reader in self._readers.values():
            reader.changed.set()
        await cancel_and_wait(list(self._tasks))
        self._readers.clear()
        for control in self._controls.values():
            await control.aclose()
        self._controls.clear()

    @property
    def up(self) -> bool:
        return self._up

    @property
    def tailed(self) -> int:
        return len(self._tails)

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def idle(self) -> bool:
        """Nothing is tailed: no reader is expected to return (healthz: not stale)."""
        return not self._tails

    @property
    def readers_down(self) -> int:
        """Readers whose last read failed (on a cluster: slots in an outage)."""
        return sum(1 for r in self._readers.values() if r.tails and not r.up)

    def reader_age_s(self) -> float:
        """Seconds since the stalest reader with streams to read last returned, leaving out
        readers in a known outage (they retry with backoff; ``readers_down`` counts them)."""
        now = time.monotonic()
        ages = (now - r.last_read_s for r in self._readers.values() if r.tails and r.up)
        return max(ages, default=0.0)

    async def ping(self) -> bool:
        """Whether Redis answers: the server, or on a cluster any master (one lost master
        is a partial outage of its slots, reported per slot, not the relay's)."""
        try:
            if self._cluster is None:
                return bool(await self._cmd.ping())
            await self._fresh_map()
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            return False
        for node in self._cluster.get_primaries():
            try:
                if await self._cluster.ping(target_nodes=node):
                    return True
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise
                continue
        return False

    # -- servers --------------------------------------------------------------------------

    def command_client(self) -> aioredis.Redis:
        """The command client of a hub on one server (or a Sentinel-watched service)."""
        assert self._cluster is None
        return self._cmd  # type: ignore[return-value]

    def node_client(self, addr: Address, *, single: bool = False) -> aioredis.Redis:
        assert self._node_client is not None
        return self._node_client(addr, single=single)

    def address(self, conn: Any) -> Address | None:
        """The server a connection is on, when control commands must be pinned to it."""
        if self._node_client is None or conn is None:
            return None
        return (str(conn.host), int(conn.port))

    def pinned(self, addr: Address | None) -> aioredis.Redis:
        """A client (a small pool) of the server on ``addr``: for CLIENT UNBLOCK/KILL aimed
        at a reader connection there, and on a cluster for what must run on one node."""
        if self._node_client is None or addr is None:
            return self.command_client()
        client = self._controls.get(addr)
        if client is None:
            client = self._controls[addr] = self._node_client(addr)
        return client

    def slots_changed(self) -> None:
        """A call failed in a way a failover or a slot move explains: the next call pinned
        to a slot's master re-reads the slot map first."""
        if self._cluster is not None:
            self._map_stale = True

    async def slot_master(self, slot: int) -> Address:
        """The master serving ``slot``, from redis-py's slot map, re-read first if a call
        failed since. Coalesced: readers failing together after one failover cause one
        refresh, not one each."""
        cluster = self._cluster
        assert cluster is not None
        await self._fresh_map()
        try:
            node = cluster.nodes_manager.get_node_from_slot(slot)
        except (KeyError, IndexError) as exc:  # no slot map yet, or a hole in it
            self._map_stale = True
            raise SlotNotCoveredError(f"no master known for slot {slot}") from exc
        return (str(node.host), int(node.port))

    async def _fresh_map(self) -> None:
        cluster = self._cluster
        assert cluster is not None
        if self._map_stale:
            async with self._refresh_lock:
                if self._map_stale:
                    self._map_stale = False
                    try:
                        await cluster.nodes_manager.initialize()
                    except BaseException:
                        self._map_stale = True
                        raise

    async def _slot_client(self, key: str) -> AsyncClient:
        """The client for a MULTI over one slot's keys: the command client, or on a cluster
        one pinned to the slot's master (redis-py's cluster transactions pass routing
        arguments into reply callbacks and fail on HGETALL and XRANGE)."""
        if self._cluster is None:
            return self._cmd
        return self.pinned(await self.slot_master(self._cluster.keyslot(key)))

    def _slot(self, key: str) -> int | None:
        return None if self._cluster is None else self._cluster.keyslot(key)

    def _reader_for(self, slot: int | None) -> Reader:
        reader = self._readers.get(slot)
        if reader is None:
            reader = self._start_reader(slot)
        return reader

    def _start_reader(
        self, slot: int | None, failed: Reader | None = None, delay_s: float = 0.0
    ) -> Reader:
        reader = self._readers[slot] = Reader(self, slot)
        if failed is not None:
            reader.tails, reader.leaving = failed.tails, failed.leaving
        name = "relay-reader" if slot is None else f"relay-reader:{slot}"
        reader.task = self._spawn(reader.run(delay_s), name)
        return reader

    def reader_done(self, reader: Reader) -> None:
        """A cluster reader whose slot has no tails left is ending."""
        if self._readers.get(reader.slot) is reader:
            del self._readers[reader.slot]

    # -- availability ---------------------------------------------------------------------

    def mark_down(self, exc: BaseException) -> None:
        if self._up or self.outage == 0:
            self._up = False
            self.stats.redis_up = False
            self._outages += 1
            self.outage = self._outages
            log.warning("Redis unavailable (%s); subscribers are told and tailing retries", exc)
            for tail in self._tails.values():
                for sub in tail.subs:
                    self.notify_unavailable(sub)

    def mark_up(self) -> None:
        if not self._up:
            if self.outage:
                log.warning("Redis reachable again; tailing resumes")
            self._up = True
        self.stats.redis_up = all(r.up for r in self._readers.values() if r.slot is not None)

    def reader_down(self, reader: Reader, exc: BaseException) -> None:
        """A reader's read failed. On a cluster only its slot is out: only its subscribers
        are told, and other slots' readers going on do not end the outage."""
        if reader.slot is None:
            reader.up = False
            self.mark_down(exc)
            return
        if reader.up or reader.outage == 0:
            reader.up = False
            self.stats.redis_up = False
            self._outages += 1
            reader.outage = self._outages
            log.warning(
                "Redis unavailable for slot %d (%s); its subscribers are told and reading retries",
                reader.slot,
                exc,
            )
            for tail in reader.tails.values():
                for sub in tail.subs:
                    self.notify_unavailable(sub, reader.outage)

    def reader_up(self, reader: Reader) -> None:
        if not reader.up:
            if reader.outage and reader.slot is not None:
                log.warning("slot %d reachable again; reading resumes", reader.slot)
            reader.up = True
        self.mark_up()

    def notify_unavailable(self, sub: Subscription, outage: int | None = None) -> None:
        outage = self.outage if outage is None else outage
        if sub.notified_outage != outage and sub.mode is not Mode.CLOSED:
            sub.notified_outage = outage
            sub.sink.put_control(
                F.error(F.UNAVAILABLE, "Redis is unavailable; delivery resumes when it returns",
                        sub.name)
            )  # fmt: skip

    async def _retrying(self, sub: Subscription, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis call for ``sub`` until it succeeds, telling it once per outage."""
        backoff = Backoff()
        slot = self._slot(self._keys.key_for(sub.ref))
        outage = 0  # on a cluster: the number this subscription is told (once per call)
        while True:
            try:
                result = await call()
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise
                if slot is None:
                    self.mark_down(exc)
                    self.notify_unavailable(sub)
                else:
                    # Only this slot may be out: tell this subscriber, not the relay's
                    # others (its slot's reader tells its own), and refresh the slot map.
                    self.slots_changed()
                    reader = self._readers.get(slot)
                    if reader is not None and reader.outage and not reader.up:
                        outage = reader.outage
                    elif not outage:
                        self._outages += 1
                        outage = self._outages
                    log.debug("slot %d unavailable for %s (%s); retrying", slot, sub.name, exc)
                    self.notify_unavailable(sub, outage)
                await asyncio.sleep(backoff.next_s())
            else:
                if slot is None:
                    self.mark_up()
                return result

    # -- subscriptions --------------------------------------------------------------------

    def start_subscription(
        self, sub: Subscription, *, from_id: Id | None, epoch: str | None
    ) -> None:
        """Begin a subscription: attach, send ``subscribed``, replay, then go live."""
        sub.task = sub.sink.spawn(self._subscribe(sub, from_id, epoch), f"sub:{sub.name}")

    async def stop_subscription(self, sub: Subscription) -> None:
        sub.mode = Mode.CLOSED
        sub.clear_buffer()
        task, sub.task = sub.task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task])
        tail = self._tails.get(self._keys.key_for(sub.ref))
        if tail is not None:
            tail.subs.discard(sub)
            if not tail.subs:
                reader = self._readers[tail.slot]
                reader.leaving.add(tail.key)
                reader.changed.set()  # the reader drops idle tails between reads

    async def _subscribe(self, sub: Subscription, from_id: Id | None, epoch: str | None) -> None:
        try:
            await self._retrying(sub, lambda: self._attach(sub))
        except ResponseError as exc:  # e.g. WRONGTYPE: the key holds something else
            sub.mode = Mode.CLOSED
            sub.sink.put_control(F.error(F.INVALID_STREAM, f"cannot read stream: {exc}", sub.name))
            self.stats.replays["error"] += 1
            return
        info: StreamInfo = await self._retrying(sub, lambda: self._info(sub.ref))
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

    def _restart(self, sub: Subscription) -> None:
        """Re-check a subscription against Redis (its stream lost our group: recreated or
        lost in a restart): reset if the epoch changed, else catch up from ``last``."""
        old = sub.task
        sub.mode = Mode.CATCHING_UP
        sub.clear_buffer()
        sub.task = sub.sink.spawn(self._resume(sub, old), f"resume:{sub.name}")

    async def _resume(self, sub: Subscription, old: asyncio.Task[None] | None) -> None:
        if old is not None:
            await cancel_and_wait([old])
        info: StreamInfo = await self._retrying(sub, lambda: self._info(sub.ref))
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
            sub.task = None
            self.stats.replays[sub.outcome] += 1
            sub.outcome = "live"
            sub.sink.put_control(F.frame(type="live", stream=sub.name))
            return

    async def _replay_pages(self, sub: Subscription) -> None:
        key = self._keys.key_for(sub.ref)
        prefix = F.event_prefix(sub.name)
        page = self._page_size
        while True:
            # With min_replicas, replay stops at what is known to be replicated: an entry
            # past it may still vanish in a failover, and reaches the subscription through
            # the reader (which confirms it first) instead; see ``_await_replicas``.
            tail = self._tails.get(key) if self.min_replicas else None
            upto = tail.confirmed if tail is not None else None
            first, entries = await self._retrying(
                sub, functools.partial(self._page, key, sub.last, page, upto)
            )
            if first is not None and sub.last != ZERO_ID and first > sub.last:
                # Entries after `last` may have been trimmed away (approximate MAXLEN); the
                # client learns it, then gets the retained rest.
                self.stats.gaps += 1
                sub.outcome = "gap"
                sub.sink.put_control(
                    F.frame(type="gap", stream=sub.name, **{"from": format_id(sub.last)},
                            first=format_id(first))
                )  # fmt: skip
            for raw_id, fields in entries:
                entry_id = parse_id(raw_id)
                if entry_id <= sub.last:
                    continue
                await sub.sink.put_replay(event_frame(prefix, raw_id, fields.get(b"e")))
                sub.last = entry_id
                self.stats.events_out += 1
            if len(entries) < page:
                return

    async def _page(
        self, key: str, after: Id, count: int, upto: Id | None = None
    ) -> tuple[Id | None, list[Any]]:
        end = "+" if upto is None else format_id(upto)
        client = await self._slot_client(key)
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
        client = await self._slot_client(key)
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

    async def _attach(self, sub: Subscription) -> None:
        """Register ``sub`` on its stream's tail, creating the tail and our group if new."""
        key = self._keys.key_for(sub.ref)
        slot = self._slot(key)
        async with self._locks[slot]:
            tail = self._tails.get(key)
            if tail is None:
                confirmed = ZERO_ID
                if self.min_replicas:
                    confirmed = await self._create_group_replicated(key, slot)
                else:
                    await self._create_group(keys=[key], args=[self.group])
                tail = Tail(key, self._keys.meta_for(sub.ref), sub.name, slot)
                tail.confirmed = confirmed
                self._tails[key] = tail
                # No await from here on: a cluster reader ending right now (its slot had
                # no tails) is either gone from ``_readers`` already or sees this tail.
                reader = self._reader_for(slot)
                reader.tails[key] = tail
                reader.gen += 1
                reader.changed.set()
                self._wake.set()
            tail.subs.add(sub)

    async def _create_group_replicated(self, key: str, slot: int | None) -> Id:
        """Create our group on ``key`` and return the id of its last entry then, once
        ``min_replicas`` replicas hold everything up to it (WAIT on the same connection:
        the script's group creation propagated after every earlier write). On a cluster
        that connection is one to the master serving the key's slot."""
        if slot is None:
            client: aioredis.Redis = self.command_client()
        else:
            client = self.pinned(await self.slot_master(slot))
        async with client.pipeline(transaction=False) as pipe:
            await self._create_group_at(keys=[key], args=[self.group], client=pipe)
            pipe.execute_command("WAIT", self.min_replicas, self.wait_timeout_ms)
            last, acked = await pipe.execute()
        if int(acked) < self.min_replicas:
            raise RedisConnectionError(
                f"{acked} of {self.min_replicas} replicas acknowledged; replay waits for them"
            )
        return ZERO_ID if last is None else parse_id(last)

    # -- for the readers ------------------------------------------------------------------

    async def drop_idle(self, reader: Reader) -> None:
        """Stop tailing ``reader``'s streams whose last subscriber left."""
        if not reader.leaving:
            return
        async with self._locks[reader.slot]:
            for key in list(reader.leaving):
                tail = self._tails.get(key)
                if tail is not None and not tail.subs:
                    await self._drop_group(keys=[key, tail.meta or key], args=[self.group])
                    del self._tails[key]
                    del reader.tails[key]
                    reader.gen += 1
                reader.leaving.discard(key)

    async def repair_groups(self, reader: Reader) -> None:
        """After NOGROUP/UNBLOCKED: recreate our group where it is gone on ``reader``'s
        streams and re-check their subscriptions (the stream was recreated, or Redis lost
        it)."""
        async with self._locks[reader.slot]:
            for tail in list(reader.tails.values()):
                try:
                    await self._cmd.xgroup_create(tail.key, self.group, "$", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" in str(exc):
                        continue
                    raise
                log.info("recreated group %s on %s", self.group, tail.key)
                for sub in list(tail.subs):
                    self._restart(sub)

    def fan_out(self, response: Any) -> dict[str, list[bytes]]:
        """Hand each entry to every subscription of its stream; return ids to acknowledge."""
        if not response:
            return {}
        items: Iterable[Any] = response.items() if isinstance(response, dict) else response
        delivered: dict[str, list[bytes]] = {}
        newest = 0
        for raw_key, entries in items:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            tail = self._tails.get(key)
            ids: list[bytes] = []
            for raw_id, fields in entries:
                ids.append(raw_id)
                if tail is None or fields is None:  # entry deleted while pending
                    continue
                entry_id = parse_id(raw_id)
                newest = max(newest, entry_id[0])
                frame = event_frame(tail.prefix, raw_id, _field_e(fields))
                for sub in tail.subs:
                    self._offer(sub, entry_id, frame)
            if ids:
                delivered[key] = ids
                if tail is not None:
                    # Ids grow within a stream; with min_replicas these are confirmed.
                    tail.confirmed = max(tail.confirmed, parse_id(ids[-1]))
        if newest:
            self.stats.lag_s = max(0.0, time.time() - newest / 1000)
        return delivered

    def _offer(self, sub: Subscription, entry_id: Id, frame: bytes) -> None:
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
            if (
                len(sub.buffer) < self._replay_buffer
                and sub.buffer_bytes + size <= self._replay_buffer_bytes
            ):
                sub.buffer.append((entry_id, frame))
                sub.buffer_bytes += size
            else:
                sub.overflow = True
                sub.clear_buffer()
        # CATCHING_UP and CLOSED: nothing; the catch-up reads these from Redis.

    def queue_acks(self, delivered: dict[str, list[bytes]]) -> None:
        for key, ids in delivered.items():
            self._acks.setdefault(key, []).extend(ids)
        self._ack_wake.set()

    async def ack(self, delivered: dict[str, list[bytes]], client: AsyncClient) -> None:
        if len(delivered) == 1:
            [(key, ids)] = delivered.items()
            # NOGROUP: the group went away, and its pending list with it.
            with contextlib.suppress(ResponseError):
                await client.xack(key, self.group, *ids)
            return
        async with client.pipeline(transaction=False) as pipe:
            for key, ids in delivered.items():
                pipe.xack(key, self.group, *ids)
            await pipe.execute(raise_on_error=False)

    async def _acker(self) -> None:
        """Acknowledge fanned-out entries, batching whatever piled up since the last call.

        Acks are bookkeeping (lag and pending in XINFO GROUPS), not what makes delivery exact,
        so they run on the command client while the reader goes straight back to reading.
        """
        backoff = Backoff()
        while True:
            await self._ack_wake.wait()
            # Coalesce: at a steady trickle this turns one XACK per event into one per 10 ms.
            await asyncio.sleep(ACK_INTERVAL_S)
            self._ack_wake.clear()
            pending, self._acks = self._acks, {}
            try:
                await self.ack(pending, self._cmd)
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise
                for key, ids in pending.items():  # they stay pending in Redis meanwhile
                    self._acks.setdefault(key, [])[:0] = ids
                self._ack_wake.set()
                await asyncio.sleep(backoff.next_s())
            else:
                backoff.reset()

    async def _waker(self) -> None:
        """Wake readers with CLIENT UNBLOCK when their tailed set grew.

        UNBLOCK only works once Redis has the XREADGROUP blocked: if the command is still
        on its way, it returns 0 and we try again shortly, until the reader has picked up
        the new set (or is not blocked).
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            for _ in range(500):
                # Readers in an outage are skipped: their next read is built afresh.
                stale = [
                    r for r in self._readers.values()
                    if r.client_id is not None and r.up and r.reading_gen < r.gen
                ]  # fmt: skip
                if not stale:
                    break
                await asyncio.gather(*(self._unblock(r) for r in stale if r.blocked))
                await asyncio.sleep(0.002)

    async def _unblock(self, reader: Reader) -> None:
        if reader.client_id is not None:
            try:
                await self.pinned(reader.addr).client_unblock(reader.client_id)
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise


def _field_e(fields: Any) -> bytes | None:
    """The ``e`` field of a raw entry: a flat [field, value, ...] list (RESP2) or a dict."""
    if isinstance(fields, dict):
        value = fields.get(b"e")
        return value if isinstance(value, bytes) else None
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == b"e":
            raw: bytes = fields[i + 1]
            return raw
    return None


def _fmt(value: Id | None) -> str | None:
    return None if value is None else format_id(value)
