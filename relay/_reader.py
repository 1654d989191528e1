"""The relay's readers: one blocking XREADGROUP loop each, over a set of tailed streams.

On one server (or a Sentinel-watched service) a hub has ONE reader for every tailed stream.
On a Redis Cluster a multi-key command must stay in one hash slot, so the hub has one
reader per active slot: per session bucket (``P:{B}:...``), plus one for the index stream
and one per watched monitor stream. A cluster reader lives while its slot has tails and
reads on a connection of its own to the master that serves the slot; when that connection
fails or answers MOVED (a failover, a resharding) it refreshes redis-py's slot map and
reconnects to whichever master serves the slot now.

Each reader, on every (re)connection, first kills its previous connection server-side (a
read still blocked there could take entries nobody will see), re-reads its own pending
entries ("0": replies lost in flight), then goes back to ``>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from relay._servers import Servers
from rpa_bus.redisio import GUARDED_FAILURES, Address, AsyncClient, Backoff, is_retryable

if TYPE_CHECKING:
    from relay._hub import Tail

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """How a reader reads: its group and consumer, and the XREADGROUP/WAIT settings."""

    group: str
    consumer: str
    block_ms: int
    read_count: int
    min_replicas: int = 0
    wait_timeout_ms: int = 1000


class ReaderHost(Protocol):
    """What a reader needs from the hub, and all it may call there."""

    @property
    def closed(self) -> bool: ...

    def connected(self, reader: Reader) -> None:
        """The reader (re)connected (on one server: Redis is up)."""

    def reader_up(self, reader: Reader) -> None:
        """A read succeeded."""

    def reader_down(self, reader: Reader, exc: BaseException) -> None:
        """A read failed with a transient error; the reader retries with backoff."""

    def reader_done(self, reader: Reader) -> None:
        """A cluster reader ends: its slot has no tails left."""

    async def drop_idle(self, reader: Reader) -> None:
        """Stop tailing the reader's streams that lost their last subscriber."""

    async def repair_groups(self, reader: Reader) -> None:
        """Recreate our group where NOGROUP/UNBLOCKED says it is gone."""

    def deliver(self, reader: Reader, response: Any) -> dict[str, list[bytes]]:
        """Fan out a read; return the ids to acknowledge."""

    async def ack(self, delivered: dict[str, list[bytes]], client: AsyncClient) -> None:
        """Acknowledge now, on ``client`` (recovering pending entries)."""

    def queue_acks(self, delivered: dict[str, list[bytes]]) -> None:
        """Acknowledge soon, coalesced, off the read path."""


class Reader:
    """Reads the tails of one slot (``slot``), or of everything (``slot=None``)."""

    def __init__(
        self, host: ReaderHost, servers: Servers, spec: ReadSpec, slot: int | None
    ) -> None:
        self.hub = host
        self.servers = servers
        self.spec = spec
        self.slot = slot
        self.tails: dict[str, Tail] = {}
        self.leaving: set[str] = set()  # tailed keys whose last subscriber left
        self.gen = 0  # bumped when ``tails`` changes
        self.reading_gen = -1  # the generation the current call was built from
        self.blocked = False  # a ">" read is (about to be) blocked in Redis
        self.client_id: int | None = None  # the connection's CLIENT ID, for UNBLOCK
        self.addr: Address | None = None  # its server, when control commands are pinned
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.up = False  # the last read succeeded (cluster: this slot's availability)
        self.outage = 0  # the number of its current/last outage (see ``relay._outage``)
        # For /healthz: a reader that has not returned for long is stuck.
        self.last_read_s = time.monotonic()
        self._client: aioredis.Redis | None = None
        self._client_addr: Address | None = None
        self._packed_key: tuple[int, bool] | None = None
        self._packed: list[bytes] = []

    def __repr__(self) -> str:
        where = "all" if self.slot is None else f"slot {self.slot}"
        return f"<Reader {where} tails={len(self.tails)}>"

    async def run(self, delay_s: float = 0.0) -> None:
        try:
            await asyncio.sleep(delay_s)
            await self._loop()
        finally:
            await self._close_client()

    async def _loop(self) -> None:
        hub = self.hub
        backoff = Backoff()
        recovering = True  # first read our own pending entries (a reply lost in a drop)
        stale_id: int | None = None  # the connection's id before a drop
        stale_addr: Address | None = None  # and its server (Sentinel, Cluster)
        repair = False
        while not hub.closed:
            try:
                if self.client_id is None:
                    client = await self._connect()
                    self.client_id = int(await client.client_id())
                    self.addr = self.servers.address(client.connection)
                    await self._retire(stale_id, stale_addr)
                    stale_id = stale_addr = None
                    hub.connected(self)
                    recovering = True
                if repair:
                    # Here, not in the except clause below: a transient error while
                    # repairing must reach the transient-error handler like any other.
                    await hub.repair_groups(self)
                    repair = False
                await hub.drop_idle(self)
                if not self.tails:
                    if self.slot is not None:
                        # A cluster reader ends with its slot's last tail. No await between
                        # the check and the removal, so an attach cannot slip in between:
                        # it either added its tail before (not empty) or makes a new reader.
                        hub.reader_done(self)
                        return
                    # Idle: nothing to read until a subscription arrives. (No timeout here:
                    # on 3.11 a timeout expiring as the task is cancelled can eat the cancel.)
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                assert self._client is not None
                conn = self._client.connection
                assert conn is not None  # client_id() above connected it
                command = self._read_command(conn, recovering)
                self.reading_gen = self.gen
                self.blocked = not recovering
                try:
                    await conn.send_packed_command(command, check_health=False)
                    response = await conn.read_response()
                finally:
                    self.blocked = False
                if response and self.spec.min_replicas:
                    await self._await_replicas(conn)
                self.last_read_s = time.monotonic()
                delivered = hub.deliver(self, response)
                if recovering:
                    log.debug("recovered pending entries: %s", delivered)
                if delivered and recovering:
                    await hub.ack(delivered, self._client)  # before re-reading "0"
                elif delivered:
                    hub.queue_acks(delivered)  # off the hot path, coalesced
                elif recovering:
                    recovering = False
                hub.reader_up(self)
                backoff.reset()
            except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
                if isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    repair = True
                    continue
                if not is_retryable(exc):
                    raise
                # Keep the oldest unretired connection: a newer one failing before its
                # first read (in _retire, say) cannot have taken entries.
                if stale_id is None and self.client_id is not None:
                    stale_id, stale_addr = self.client_id, self.addr
                self.client_id = None
                hub.reader_down(self, exc)
                await asyncio.sleep(backoff.next_s())

    async def _connect(self) -> aioredis.Redis:
        """The reader's connection, (re)connected to the server its streams live on."""
        servers = self.servers
        if self.slot is None:
            if self._client is None:
                self._client = servers.command_client().client()
            previous: Any = self._client.connection
            if previous is not None:
                # Reconnect explicitly: a Sentinel connection finds the current master in
                # connect(), but redis-py's implicit reconnect on the next command skips
                # that and goes back to the previous (demoted) master.
                await previous.connect()
            return self._client
        addr = await servers.slot_master(self.slot)
        if self._client is None or addr != self._client_addr:
            if self._client_addr is not None:
                log.info("reader of slot %d moves to %s:%d", self.slot, *addr)
            await self._close_client()
            self._client = servers.node_client(addr, single=True)
            self._client_addr = addr
        else:
            previous = self._client.connection
            if previous is not None:
                await previous.connect()
        return self._client

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            if self.slot is not None:
                await client.connection_pool.disconnect()

    async def _await_replicas(self, conn: Any) -> None:
        """Hold a read's entries until ``min_replicas`` replicas hold them too.

        A master can take writes its replicas never get: the moments of a failover when the
        replica is already promoted and the old master still accepts writes, or a master
        dying right after a write. Those entries vanish with the failover (a producer with
        ``min_replicas`` writes them again, under new ids); a client that saw them would
        have seen one event twice, once under an id the stream no longer has. So entries
        are fanned out only once WAIT on the reader's connection counts ``min_replicas``:
        our XREADGROUP propagated after the XADDs it returned (as XCLAIMs), and replication
        is in order, so a replica that acknowledged it holds them. WAIT repeats until it
        does; if the connection drops meanwhile (the failover), the entries are left
        unsent, and the next reader connection, on the new master, finds in our pending
        list exactly those that survived.
        """
        spec = self.spec
        command = conn.pack_command("WAIT", spec.min_replicas, spec.wait_timeout_ms)
        warned = False
        while True:
            await conn.send_packed_command(command, check_health=False)
            try:
                acked = int(await conn.read_response())
            except ResponseError as exc:
                # "WAIT cannot be used with replica instances": this server was demoted
                # under us. Start over on whichever server is the master now.
                await conn.disconnect()
                raise RedisConnectionError(f"cannot confirm replication: {exc}") from exc
            if acked >= spec.min_replicas:
                return
            if not warned:
                warned = True
                log.warning(
                    "%d of %d replicas hold the entries just read; delivery waits for them",
                    acked,
                    spec.min_replicas,
                )

    async def _retire(self, stale_id: int | None, stale_addr: Address | None) -> None:
        """Make sure the reader's previous connection can take no more entries.

        A dropped connection may still be alive on the server side with our XREADGROUP
        blocked on it (Redis has not seen the close yet, or the network is half-open). If
        an event arrives then, Redis hands it to that dead read: it enters our pending list
        and last-delivered-id moves past it. Reading our pending list ("0") is only exact
        once that old read can no longer take anything, so kill it first; if the server
        refuses CLIENT KILL (ACLs), wait out its BLOCK instead.
        """
        if stale_id is None or (stale_id, stale_addr) == (self.client_id, self.addr):
            # Nothing to retire, or the "new" connection is the old one, still open (the
            # failure was a reply such as MOVED or CLUSTERDOWN, not a drop): killing it
            # would only force another reconnect. Client ids are never reused by a server.
            return
        try:
            await self.servers.pinned(stale_addr).client_kill_filter(_id=str(stale_id))
        except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
            if not is_retryable(exc) and isinstance(exc, ResponseError):
                if "no such client" not in str(exc).lower():
                    log.debug("CLIENT KILL refused (%s); waiting out the old read instead", exc)
                    await asyncio.sleep(self.spec.block_ms / 1000 + 0.05)
                return
            if not is_retryable(exc) or stale_addr is None or stale_addr == self.addr:
                raise
            # Sentinel or Cluster, and the old server is unreachable: it is down or cut
            # off, and no longer the master of these streams, so it hands us nothing more.
            log.info("previous reader server %s:%d unreachable; not retiring there", *stale_addr)

    def _read_command(self, conn: Any, recovering: bool) -> list[bytes]:
        """The packed XREADGROUP over every tail of this reader, cached per tailed set.

        Packing a command with a few hundred keys is most of the reader's CPU at a few
        events per read, so it is packed once per change of the set and sent as is.
        """
        cache_key = (self.gen, recovering)
        if self._packed_key != cache_key:
            spec = self.spec
            keys = list(self.tails)
            ids = ["0" if recovering else ">"] * len(keys)
            block = [] if recovering else ["BLOCK", spec.block_ms]
            self._packed = conn.pack_command(
                "XREADGROUP", "GROUP", spec.group, spec.consumer, "COUNT", spec.read_count,
                *block, "STREAMS", *keys, *ids,
            )  # fmt: skip
            self._packed_key = cache_key
        return self._packed
