"""The Redis side of the relay: the tailed streams and their readers, and who runs what.

One ``Hub`` per relay instance. It owns the tails (stream key -> the subscriptions
watching it) and the readers (``relay._reader``): on one server ONE, with a dedicated
connection running one blocking XREADGROUP over every tailed stream (``>``); on a Redis
Cluster one per active hash slot, each over that slot's streams on the master serving it.
Each concern has its own module, which the hub composes:

- ``relay._servers``: which server a call goes to (one server, Sentinel, Cluster slots);
- ``relay._groups``: our consumer group on each tailed stream (the Lua scripts);
- ``relay._outage``: outage bookkeeping (each subscription told once per outage);
- ``relay._subscription``: the subscription state machine (replay, live handoff,
  catch-up, gap/reset), which talks to clients through the ``Sink`` protocol only;
- ``relay._fanout``: fan-out of each read, the coalesced XACKs, the waker.

The readers see the hub through ``relay._reader.ReaderHost``; the subscription core
through ``relay._subscription.Streams``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
from typing import Any

from relay import _frames as F
from relay._archive import Archive
from relay._fanout import Acker, Waker, fan_out
from relay._frames import ZERO_ID, Id
from relay._groups import Groups
from relay._outage import Outages
from relay._reader import Reader, ReadSpec
from relay._servers import Servers
from relay._stats import Stats
from relay._subscription import Subscription, Subscriptions
from relay._writes import coalesced
from rpa_bus import Keys
from rpa_bus.redisio import AsyncClient, NodeClient, cancel_and_wait

log = logging.getLogger(__name__)


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
        archive: Archive | None = None,
    ) -> None:
        self.servers = Servers(client, node_client)
        self._keys = keys
        self.stats = stats
        group = keys.relay_group(name)
        # Deliver only what this many replicas hold (see ``Reader._await_replicas``).
        self.min_replicas = min_replicas
        self.spec = ReadSpec(
            group=group,
            consumer=name,
            block_ms=block_ms,
            read_count=read_count,
            min_replicas=min_replicas,
            wait_timeout_ms=wait_timeout_ms,
        )
        self._tails: dict[str, Tail] = {}
        self._readers: dict[int | None, Reader] = {}
        self.groups = Groups(
            self.servers, group, min_replicas=min_replicas, wait_timeout_ms=wait_timeout_ms
        )
        self.outages = Outages(
            stats=stats, servers=self.servers, keys=keys, tails=self._tails, readers=self._readers
        )
        self.core = Subscriptions(
            streams=self,
            servers=self.servers,
            outages=self.outages,
            keys=keys,
            stats=stats,
            page_size=page_size,
            replay_buffer=replay_buffer,
            replay_buffer_bytes=replay_buffer_bytes,
            archive=archive,
        )
        self._acker = Acker(client, group)
        self._waker = Waker(self.servers, self._readers)
        # Group creation and removal are serialised per slot (one lock on one server), so a
        # key is never dropped while a new subscriber is creating its group, and a cluster
        # reader never ends while a tail is being added to its slot. Per slot, so a master
        # that is slow to answer holds up only its own slots.
        self._locks: collections.defaultdict[int | None, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._waker.run(), "relay-waker")
        self._spawn(self._acker.run(), "relay-acker")
        if self.servers.cluster is None:
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
        await self.servers.close()

    # -- what /healthz and /metrics read --------------------------------------------------

    @property
    def up(self) -> bool:
        return self.outages.up

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
        return await self.servers.ping()

    # -- for the doors --------------------------------------------------------------------

    def start_subscription(
        self, sub: Subscription, *, from_id: Id | None, epoch: str | None
    ) -> None:
        """Begin a subscription: attach, send ``subscribed``, replay, then go live."""
        self.core.start(sub, from_id=from_id, epoch=epoch)

    async def stop_subscription(self, sub: Subscription) -> None:
        await self.core.stop(sub)

    # -- Streams (for the subscription core) ----------------------------------------------

    async def attach(self, sub: Subscription) -> None:
        """Register ``sub`` on its stream's tail, creating the tail and our group if new."""
        key = self._keys.key_for(sub.ref)
        slot = self.servers.slot(key)
        async with self._locks[slot]:
            tail = self._tails.get(key)
            if tail is None:
                confirmed = await self.groups.create(key, slot)
                tail = Tail(key, self._keys.meta_for(sub.ref), sub.name, slot)
                tail.confirmed = confirmed
                self._tails[key] = tail
                # No await from here on: a cluster reader ending right now (its slot had
                # no tails) is either gone from ``_readers`` already or sees this tail.
                reader = self._reader_for(slot)
                reader.tails[key] = tail
                reader.gen += 1
                reader.changed.set()
                self._waker.wake()
            tail.subs.add(sub)

    def detach(self, sub: Subscription) -> None:
        tail = self._tails.get(self._keys.key_for(sub.ref))
        if tail is not None:
            tail.subs.discard(sub)
            if not tail.subs:
                reader = self._readers[tail.slot]
                reader.leaving.add(tail.key)
                reader.changed.set()  # the reader drops idle tails between reads

    def confirmed(self, key: str) -> Id | None:
        if not self.min_replicas:
            return None
        tail = self._tails.get(key)
        return tail.confirmed if tail is not None else None

    # -- readers --------------------------------------------------------------------------

    def _reader_for(self, slot: int | None) -> Reader:
        reader = self._readers.get(slot)
        if reader is None:
            reader = self._start_reader(slot)
        return reader

    def _start_reader(
        self, slot: int | None, failed: Reader | None = None, delay_s: float = 0.0
    ) -> Reader:
        reader = self._readers[slot] = Reader(self, self.servers, self.spec, slot)
        if failed is not None:
            reader.tails, reader.leaving = failed.tails, failed.leaving
        name = "relay-reader" if slot is None else f"relay-reader:{slot}"
        reader.task = self._spawn(reader.run(delay_s), name)
        return reader

    # -- ReaderHost (for the readers) -----------------------------------------------------

    def reader_done(self, reader: Reader) -> None:
        """A cluster reader whose slot has no tails left is ending."""
        if self._readers.get(reader.slot) is reader:
            del self._readers[reader.slot]

    def connected(self, reader: Reader) -> None:
        if reader.slot is None:
            # One server: connected is up. A cluster slot is up once a read succeeds (a
            # node answers CLUSTERDOWN while a failover is on).
            self.outages.mark_up()

    def reader_up(self, reader: Reader) -> None:
        self.outages.reader_up(reader)

    def reader_down(self, reader: Reader, exc: BaseException) -> None:
        self.servers.slots_changed()
        self.outages.reader_down(reader, exc)

    async def drop_idle(self, reader: Reader) -> None:
        """Stop tailing ``reader``'s streams whose last subscriber left."""
        if not reader.leaving:
            return
        async with self._locks[reader.slot]:
            for key in list(reader.leaving):
                tail = self._tails.get(key)
                if tail is not None and not tail.subs:
                    await self.groups.drop(key, tail.meta)
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
                if await self.groups.recreate(tail.key):
                    for sub in list(tail.subs):
                        self.core.restart(sub)

    def deliver(self, reader: Reader, response: Any) -> dict[str, list[bytes]]:
        """Fan out what ``reader`` just read; return the ids to acknowledge."""
        stats = self.stats
        with coalesced():  # one socket write per client for the whole response
            return fan_out(self._tails, response, stats, self.core.offer)

    async def ack(self, delivered: dict[str, list[bytes]], client: AsyncClient) -> None:
        await self._acker.ack(delivered, client)

    def queue_acks(self, delivered: dict[str, list[bytes]]) -> None:
        self._acker.queue_acks(delivered)
