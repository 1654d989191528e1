"""The consumer-group loop the workers share: ``GroupWorker`` reads streams through the
group ``P:KIND`` and hands each stream's entries, in order, to a ``GroupSink``.

Ownership. The streams are cut into units: the session buckets (all sessions of bucket B,
``P:{B}:session:*``), the index stream ``P:sessions`` and each ``P:monitor:HOST``, as the
settings' ``kinds`` select. The live processes of a kind heartbeat into the sorted set
``P:workers:KIND`` (consumer -> server time, ms); every process computes the same
rendezvous hash of each unit over the live members and *wants* the units that hash to it.
A process reads a unit's streams only while it holds the unit's lease, the string
``P:{TAG}:lease:KIND`` = consumer with a TTL of ``claim_idle_ms`` (TAG: the bucket, or the
stream's key, so the lease shares its streams' slot on a cluster):

- taken with SET-if-absent (or kept, if it still names us: a restart of Redis with AOF),
- renewed every ``claim_idle_ms / 3`` with compare-and-PEXPIRE,
- given up with compare-and-DEL when another member wants the unit, after the batch in
  flight is acknowledged (the new owner takes it on its next tick),
- and counted lost when a renewal answers 0, or when no renewal succeeded for
  ``claim_idle_ms`` (Redis unreachable): reading the unit stops at once. A process that
  died holds its leases until they expire, so its units are taken over after
  ``claim_idle_ms``, with their pending entries.

The rendezvous hash only spreads the units; the lease is what makes a stream read by one
process at a time. Two members that disagree on who is alive (a heartbeat not seen yet)
race for a lease with SET NX and one wins.

Discovery. Taking a bucket SCANs for its session streams; sessions that start later are
learnt from the index (a plain XREAD of ``P:sessions`` in every process, from the index's
last id before the first scan, so nothing falls between the two). Every owned bucket is
scanned again after an outage and every ``rescan_ms`` (a trimmed index, a cluster where
the index entry and the stream are written apart). Adding a stream is one script
(``_ADD``): create the group at 0 (everything still in Redis is processed), read the
session's epoch, XAUTOCLAIM the group's pending entries to us (min-idle 0: the lease says
their reader is gone or gave the unit up), and tell whether the stream is done: its last
entry is ``finished``/``failed``, delivered and acknowledged. Done streams are not
tailed; one that reaches that state is dropped; a ``started`` in the index for it (the id
is reused) adds it again.

Reading. A reader task runs one XREADGROUP over its tailed streams (on one server one
reader for all; on a cluster one per active hash slot, on a connection to the slot's
master, since a multi-key read must stay in one slot): first ``0`` (our own
pending list, in id order: claimed entries and replies lost in a dropped connection) for
streams just added or after a reconnect, until empty, then ``>`` with BLOCK. The response's
batches (one per stream) go to ``sink.put`` concurrently, then their ids are XACKed. A
``put`` that raises keeps its batch and its stream out of the reads until a retry (after
a per-stream backoff) succeeds. CLIENT UNBLOCK wakes the blocked read when the tailed set
changes. With ``read_ahead`` (the archiver) the next ``>`` round is read, without BLOCK,
while the sink stores the current one, and handed over only once the current one is
acknowledged: at most one round ahead, each stream's batches still one at a time and in
order. A stream whose batch was refused meanwhile (or that began to recover) leaves its
entries of that round pending, to be read again from ``0``; a dropped connection drops
the round (its entries stay pending too).

Cancelling ``run()`` is a hard stop (as if the process were killed: nothing released);
``close()`` is the graceful one: the batch in flight is acknowledged, the leases are given
up and the member leaves ``P:workers:KIND``, so others take over at their next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from rpa_bus import Keys, Settings, bucket_of, is_terminal, validate_host_name
from rpa_bus.redisio._clients import (
    Address,
    AsyncClient,
    NodeClient,
    SlotMap,
    async_client,
    close_async,
    node_client_factory,
)
from rpa_bus.redisio._config import check_config_async
from rpa_bus.redisio._retry import (
    GUARDED_FAILURES,
    REDIS_FAILURES,
    Backoff,
    RateLimitedLog,
    close_race_as_connection_error,
    is_retryable,
)
from rpa_bus.redisio._tasks import cancel_and_wait, settled

log = logging.getLogger(__name__)

STREAM_KINDS = frozenset({"session", "sessions", "monitor"})

# KEYS: the stream, its meta hash (the stream again when it has none).
# ARGV: group, consumer, XAUTOCLAIM count, "1" for a session stream, "1" to MKSTREAM.
# Returns nil if the stream does not exist, else {epoch, done, claimed}.
_ADD = """
if ARGV[5] == '1' then
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return false
else
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
end
local epoch = ''
if KEYS[2] ~= KEYS[1] then
  epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
end
local claimed = 0
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, cursor,
                       'COUNT', ARGV[3], 'JUSTID')
  cursor = r[1]
  claimed = claimed + #r[2]
until cursor == '0-0'
local done = 0
if ARGV[4] == '1' then
  local pending, delivered = -1, nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do
      f[g[i]] = g[i + 1]
    end
    if f['name'] == ARGV[1] then
      pending, delivered = f['pending'], f['last-delivered-id']
    end
  end
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if pending == 0 and last[1] and last[1][1] == delivered then
    local fields = last[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        local ok, ev = pcall(cjson.decode, fields[i + 1])
        if ok and type(ev) == 'table' and (ev['type'] == 'finished' or ev['type'] == 'failed') then
          done = 1
        end
      end
    end
  end
end
return {epoch, done, claimed}
"""

# KEYS: a lease. ARGV: consumer, ttl ms. Ours already (a restart of Redis kept it): extend.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Renew only: a lease that is gone (given up, expired) is never re-created here, so a
# renewal racing a release cannot leave a lease nobody knows it holds.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: P:workers:KIND. ARGV: consumer, ttl ms. The server's clock, so members on hosts
# whose clocks disagree still age alike.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: a stream. ARGV: the group, then the ids to acknowledge separated by spaces. XACKs
# them (a thousand per call: Lua's unpack has a limit); returns how many were pending, or
# XACK's error (NOGROUP) as it is. One argument for all ids, not one each: redis-py packs
# each argument in Python, about 0.5 us an id on the archiver's path; joined, 0.05.
_ACK = """
local ids, n = {}, 0
for id in string.gmatch(ARGV[2], '%S+') do
  ids[#ids + 1] = id
  if #ids == 1000 then
    local r = redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ids))
    if type(r) == 'table' and r.err then return r end
    n, ids = n + r, {}
  end
end
if #ids > 0 then
  local r = redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ids))
  if type(r) == 'table' and r.err then return r end
  n = n + r
end
return n
"""

_CLAIM_COUNT = 1000  # XAUTOCLAIM page inside _ADD
_ADD_CHUNK = 200  # _ADD calls per pipeline
_CLUSTER_FANOUT = 64  # script calls in flight at once on a cluster
_UNBORN_S = 10.0  # how long an announced session's stream is waited for
_LEASE_MARGIN = 0.9  # read only for this share of a lease's TTL after its renewal was sent


def default_consumer() -> str:
    """This process's consumer name: ``HOST-PID``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Entry(NamedTuple):
    """One stream entry handed to a sink (a NamedTuple: built for every entry read, at
    under half the cost of a frozen dataclass)."""

    stream: str  # client-facing name: "session:SID", "sessions", "monitor:HOST"
    key: str  # the Redis key
    epoch: str  # the session's epoch from its meta hash ("" for sessions/monitor streams)
    id: str  # stream entry id, "ms-seq"
    data: bytes  # the envelope JSON (entry field ``e``)


class GroupSink(Protocol):
    async def put(self, entries: Sequence[Entry]) -> None:
        """Take entries of ONE stream, in id order. Return only when the sink holds them
        (stored / durably queued); the loop XACKs after put returns. Must be idempotent on
        (stream, epoch, id): a crash between put and XACK replays them. Raise to have the
        same batch retried after backoff (nothing later of that stream is given
        meanwhile)."""


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """One worker kind's consumer group and how a process of it reads."""

    kind: str  # "archiver" | "webhooks": the group is P:KIND
    # Unique per GroupWorker of a kind: two with one name would share leases (a lease that
    # names us is ours), so two workers of a kind in one process need names of their own.
    consumer: str = field(default_factory=default_consumer)
    kinds: frozenset[str] = frozenset({"session", "sessions"})  # + "monitor" for webhooks
    # Lease TTL: a dead process's streams (and pending entries) are taken over after this.
    claim_idle_ms: int = 30_000
    block_ms: int = 1_000
    count: int = 500
    # Owned buckets are scanned again this often (and after every outage), for sessions
    # the index did not announce (trimmed away, or written apart on a cluster).
    rescan_ms: int = 300_000
    # close() waits this long for the sink to take the batch in flight.
    close_timeout_ms: int = 10_000
    # Read the next round (without BLOCK) while the sink stores the current one, so the
    # sink's wait and the reading overlap; it is handed over once the current round is
    # stored. For sinks that wait on something else (a database).
    read_ahead: bool = False

    def __post_init__(self) -> None:
        validate_host_name(self.kind)
        if not self.consumer or any(c.isspace() for c in self.consumer):
            raise ValueError(f"consumer must be non-empty without spaces: {self.consumer!r}")
        if not self.kinds or not self.kinds <= STREAM_KINDS:
            raise ValueError(f"kinds must be a non-empty subset of {sorted(STREAM_KINDS)}")
        if self.claim_idle_ms < 300:
            raise ValueError(f"claim_idle_ms must be >= 300, got {self.claim_idle_ms}")
        if min(self.block_ms, self.count, self.rescan_ms, self.close_timeout_ms) < 1:
            raise ValueError("block_ms, count, rescan_ms and close_timeout_ms must be >= 1")


@dataclass(eq=False)
class GroupStats:
    """Plain counters of one GroupWorker (read them any time)."""

    read: int = 0  # entries the sink took (put returned)
    acked: int = 0  # entries acknowledged (XACK)
    claimed: int = 0  # pending entries taken on when a stream was added
    retried: int = 0  # batches given to the sink again after it raised
    ack_failures: int = 0  # XACK flushes that failed (their ids are sent with the next)
    ahead: int = 0  # rounds read while the sink stored the one before (read_ahead)
    owned: int = 0  # units (buckets, index, monitor hosts) leased now
    releasing: int = 0  # of those, units another member wants (given up when idle)
    tailed: int = 0  # streams read now
    dropped: int = 0  # session streams finished and left
    lost: int = 0  # leases lost (not renewed in time, or taken)
    errors: int = 0  # Redis failures absorbed (retried)
    redis_up: bool = False


@dataclass(eq=False)
class _Unit:
    name: str  # "bucket:00a" | "sessions" | "monitor:HOST"
    lease: str
    bucket: int | None = None
    key: str | None = None  # the one stream of a "sessions" / "monitor:HOST" unit
    stream: str = ""  # and its client-facing name
    valid_until: float = 0.0  # monotonic: reading stops then unless renewed
    releasing: bool = False  # another member wants it: given up once nothing is in flight
    busy: int = 0  # batches of its streams given to the sink and not yet acknowledged
    gone: bool = False  # being given up
    keys: set[str] = field(default_factory=set)  # its tailed streams


@dataclass(eq=False)
class _Stream:
    key: str
    meta: str | None
    name: str
    unit: _Unit
    epoch: str
    recovering: bool = True  # read our pending list ("0") before ">"
    retry: list[Entry] | None = None  # a batch the sink refused, with all its ids
    retry_ids: list[bytes] = field(default_factory=list)
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.05, max_s=5.0))
    gen: int = 0  # bumped when the index says the session (re)started
    slot: int | None = None  # its hash slot on a cluster (its reader's); None otherwise


# One stream's part of a read: its stream, the entries for the sink, all ids to XACK.
_Batch = tuple[_Stream, list[Entry], list[bytes]]


class _Reader:
    """One blocking XREADGROUP loop over a set of streams: on one server (``slot=None``)
    all of them, on a cluster those of one hash slot, on a connection to its master."""

    def __init__(self, slot: int | None) -> None:
        self.slot = slot
        self.streams: dict[str, _Stream] = {}
        self.unacked: dict[str, list[bytes]] = {}  # acknowledged by the next flush
        self.unacked_units: list[_Unit] = []  # one per batch in ``unacked`` (busy counts)
        self.ending: dict[str, _Stream] = {}  # streams whose session just ended
        self.ahead: list[_Batch] | None = None  # a round read while the sink stored one
        self.gen = 0  # bumped when ``streams`` changes
        self.reading_gen = -1  # the generation the blocked read was built from
        self.blocked = False
        self.read_id: int | None = None  # CLIENT ID of its connection, for UNBLOCK
        self.addr: Address | None = None  # its server, on a cluster
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def bump(self) -> None:
        self.gen += 1
        self.changed.set()


def _weight(unit: str, member: str) -> bytes:
    return hashlib.blake2b(f"{unit}\n{member}".encode(), digest_size=8).digest()


def owner_of(unit: str, members: Iterable[str]) -> str | None:
    """The member a unit rendezvous-hashes to (the same answer in every process)."""
    return max(members, key=lambda m: (_weight(unit, m), m), default=None)


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response or []


def _field(fields: list[bytes] | None, name: bytes) -> bytes | None:
    """A field's value in an entry's raw field list (None: absent, or no fields)."""
    if not fields:
        return None
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class GroupWorker:
    """Reads its share of a worker kind's streams through the group ``P:KIND`` into a sink.

    ``run()`` until ``close()`` (or ``async with``, which runs it in a task it owns).
    Transient Redis failures are retried with backoff and logged at most every 30 s; a
    permanent one (a bad password, a missing permission, a refused script) ends ``run()``
    with that error. See the module docstring for ownership, discovery and reading.
    """

    def __init__(
        self,
        bus: Settings,
        group: GroupSettings,
        sink: GroupSink,
        *,
        client: AsyncClient | None = None,
    ) -> None:
        if group.block_ms >= bus.socket_timeout_s * 1000:
            raise ValueError(
                f"block_ms ({group.block_ms}) must be under the socket timeout "
                f"({bus.socket_timeout_s} s), or every idle read would time out"
            )
        self.settings = group
        self.stats = GroupStats()
        self._bus = bus
        self._keys: Keys = bus.keys
        self._sink = sink
        self._owns_client = client is None
        self._cmd: AsyncClient = client if client is not None else async_client(bus)
        # Cluster: keyed commands and scripts go through the RedisCluster client; each
        # reader has a connection of its own to the master of its slot, and CLIENT
        # UNBLOCK/KILL go to that server (client ids are per server).
        self._cluster = self._cmd if isinstance(self._cmd, aredis.RedisCluster) else None
        self._node_client: NodeClient | None = None
        if self._cluster is not None:
            self._node_client = node_client_factory(bus)
            if self._node_client is None:
                raise ValueError("a Redis Cluster client needs a redis+cluster:// bus URL")
        self._controls: dict[Address, aredis.Redis] = {}
        self._slots = SlotMap(self._cluster) if self._cluster is not None else None
        self._group = self._keys.worker_group(group.kind)
        self._consumer = group.consumer
        self._members_key = self._keys.workers(group.kind)
        self._ttl_ms = group.claim_idle_ms
        self._tick_s = group.claim_idle_ms / 3000
        self._add_script = self._cmd.register_script(_ADD)
        self._acquire = self._cmd.register_script(_ACQUIRE)
        self._renew = self._cmd.register_script(_RENEW)
        self._release = self._cmd.register_script(_RELEASE)
        self._heartbeat = self._cmd.register_script(_HEARTBEAT)
        self._ack = self._cmd.register_script(_ACK)
        self._held: dict[str, _Unit] = {}
        self._streams: dict[str, _Stream] = {}  # every tailed stream, by key
        self._readers: dict[int | None, _Reader] = {}
        self._reader_tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._wake_event = asyncio.Event()
        self._close_event = asyncio.Event()
        self._done = asyncio.Event()
        self._closing = False
        self._started = False
        self._index_last = "0-0"
        self._rescan = False  # scan every owned bucket again (after an outage)
        self._rescan_at = 0.0
        self._to_scan: dict[str, _Unit] = {}  # units just taken, for discovery
        self._discover_event = asyncio.Event()
        self._redis_log = RateLimitedLog(log)
        self._sink_log = RateLimitedLog(log)
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> GroupWorker:
        self._task = asyncio.create_task(self.run(), name=f"group-{self.settings.kind}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def close(self) -> None:
        """Stop gracefully: finish the batches in flight, give up the leases, leave."""
        if self._closing:
            return
        self._closing = True
        self._close_event.set()
        self._discover_event.set()
        for reader in self._readers.values():
            reader.bump()
        self._wake_event.set()

    async def wait_closed(self) -> None:
        """Wait until ``run()`` has ended; re-raise its error if it failed."""
        task = self._task
        if task is None:
            if not self._started and self._closing:
                return  # closed before it ran (a task cancelled before its first step)
            await self._done.wait()
            return
        await asyncio.wait([task])
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            raise exc

    async def run(self) -> None:
        """Read until ``close()``. Cancelling it is a hard stop: nothing is released, and
        other processes take over once the leases expire."""
        if self._started:
            raise RuntimeError("GroupWorker.run() was already called")
        self._started = True
        if self._closing:  # closed before it ran
            if self._owns_client:
                await close_async(self._cmd)
            self._done.set()
            return
        tasks: list[asyncio.Task[None]] = []
        try:
            if await self._connect():
                tasks = [
                    asyncio.create_task(self._manage(), name="group-manage"),
                    asyncio.create_task(self._waker(), name="group-waker"),
                    asyncio.create_task(self._discovery(), name="group-discovery"),
                ]
                if "session" in self.settings.kinds:
                    tasks.append(asyncio.create_task(self._follow(), name="group-follow"))
                if self._cluster is None:
                    self._reader(None)  # one reader for everything
                closing = asyncio.create_task(self._close_event.wait(), name="group-closing")
                try:
                    await asyncio.wait([*tasks, closing], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait([closing])
                self.close()
                _raise_failure(tasks)
                if self._failure is not None:
                    raise self._failure
                # Closing: the readers finish their batches and return; the rest just stop.
                readers = list(self._reader_tasks)
                if readers:
                    await asyncio.wait(readers, timeout=self.settings.close_timeout_ms / 1000)
                if any(not t.done() for t in readers):
                    # A sink stuck in put(): its batch stays pending for the next owner.
                    log.warning("%s: the sink did not return in time; closing anyway", self._group)
                await cancel_and_wait([*tasks, *self._reader_tasks])
                _raise_failure([*tasks, *readers])
                await self._leave()
        finally:
            self._closing = True
            await cancel_and_wait([*tasks, *self._reader_tasks])
            for control in self._controls.values():
                await control.aclose()
            self._controls.clear()
            if self._owns_client:
                await close_async(self._cmd)
            self._done.set()

    async def _connect(self) -> bool:
        """The P:config handshake and the index's position, retried until Redis answers;
        False if closed meanwhile."""
        backoff = Backoff(max_s=min(2.0, self._tick_s))
        while not self._closing:
            try:
                await check_config_async(self._cmd, self._keys)
                if "session" in self.settings.kinds:
                    last = await self._cmd.xrevrange(self._keys.sessions, "+", "-", count=1)
                    self._index_last = _text(last[0][0]) if last else "0-0"
                self._up()
                return True
            except GUARDED_FAILURES as exc:  # _down re-raises the rest
                self._down(exc)
                await self._sleep(backoff.next_s())
        return False

    async def _leave(self) -> None:
        """Graceful end (the readers have flushed their acks): give up the leases, leave
        the members. One try: what fails here expires by itself."""
        try:
            await self._give_up(list(self._held.values()))
            await self._cmd.zrem(self._members_key, self._consumer)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            log.warning("could not give up leases on close (%s); they expire by themselves", exc)

    async def _sleep(self, delay_s: float) -> None:
        """Sleep, returning early when closing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._close_event.wait()

    # -- health ---------------------------------------------------------------------------

    def _down(self, exc: BaseException) -> None:
        """A failure a loop caught (``GUARDED_FAILURES``): counted and waited out if
        transient, re-raised if not (a bug, a refusal)."""
        if not is_retryable(exc):
            raise exc
        self.stats.errors += 1
        self.stats.redis_up = False
        self._rescan = True
        if self._slots is not None:
            self._slots.mark_stale()  # a failover or a slot move explains it
        self._redis_log.warning("Redis unavailable for %s (%s); retrying", self._group, exc)

    def _up(self) -> None:
        self.stats.redis_up = True
        self._redis_log.recovered("Redis available again for %s", self._group)

    async def lag(self) -> dict[str, int]:
        """Per tailed stream: entries pending in the group plus those not yet delivered."""
        streams = list(self._streams.values())
        if not streams:
            return {}
        if self._cluster is None:
            async with self._cmd.pipeline(transaction=False) as pipe:
                for s in streams:
                    pipe.xinfo_groups(s.key)
                replies = await pipe.execute(raise_on_error=False)
        else:
            replies = await asyncio.gather(
                *(self._cmd.xinfo_groups(s.key) for s in streams), return_exceptions=True
            )
        result: dict[str, int] = {}
        for s, groups in zip(streams, replies, strict=True):
            if isinstance(groups, BaseException):
                continue
            for g in groups:
                if _text(g.get("name")) != self._group:
                    continue
                behind = g.get("lag")
                if behind is None:  # Redis cannot tell (deleted entries): count them
                    after = "(" + _text(g.get("last-delivered-id"))
                    rest: Any = await self._cmd.xrange(s.key, after, "+", count=100_000)
                    behind = len(rest)
                result[s.name] = int(g.get("pending", 0)) + int(behind)
        return result

    async def _scripts(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script for many key sets: pipelined on one server, concurrent calls
        (each routed to its slot's master) on a cluster."""
        if not calls:
            return []
        if self._cluster is None:
            async with self._cmd.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await _call(script, keys=keys, args=args, client=pipe)
                return list(await pipe.execute())
        replies: list[Any] = []
        for i in range(0, len(calls), _CLUSTER_FANOUT):
            replies += await asyncio.gather(
                *(
                    _call(script, keys=keys, args=args, client=self._cmd)
                    for keys, args in calls[i : i + _CLUSTER_FANOUT]
                )
            )
        return replies

    # -- ownership ------------------------------------------------------------------------

    def _units(self, hosts: Iterable[str]) -> dict[str, _Unit]:
        kinds, keys, kind = self.settings.kinds, self._keys, self.settings.kind
        units: dict[str, _Unit] = {}
        if "session" in kinds:
            for b in range(keys.buckets):
                tag = keys.bucket_hex(b)
                units[f"bucket:{tag}"] = _Unit(f"bucket:{tag}", keys.lease(kind, tag), bucket=b)
        if "sessions" in kinds:
            key = keys.sessions
            units["sessions"] = _Unit("sessions", keys.lease(kind, key), key=key, stream="sessions")
        if "monitor" in kinds:
            for host in hosts:
                try:
                    key = keys.monitor(host)
                except ValueError:
                    continue  # not a host name we write (InvalidStreamName is a ValueError)
                name = f"monitor:{host}"
                units[name] = _Unit(name, keys.lease(kind, key), key=key, stream=name)
        return units

    async def _manage(self) -> None:
        """Heartbeat, lease and rebalance every ``claim_idle_ms / 3``."""
        backoff = Backoff(max_s=min(2.0, self._tick_s))
        while not self._closing:
            try:
                await self._tick()
                backoff.reset()
                wait = self._tick_s
            except GUARDED_FAILURES as exc:  # _down re-raises the rest
                self._down(exc)
                wait = min(backoff.next_s(), self._tick_s)
            self._expire_lapsed()
            await self._sleep(wait)

    async def _tick(self) -> None:
        lease_args = [self._consumer, self._ttl_ms]
        raw = await _call(
            self._heartbeat, keys=[self._members_key], args=lease_args, client=self._cmd
        )
        members = {_text(m) for m in raw} | {self._consumer}
        hosts: list[str] = []
        if "monitor" in self.settings.kinds:
            hosts = sorted(_text(h) for h in await self._cmd.hkeys(self._keys.monitors))
        units = self._units(hosts)
        desired = {name for name in units if owner_of(name, members) == self._consumer}
        self._expire_lapsed()
        held = list(self._held.values())
        wanted = [units[n] for n in sorted(desired) if n not in self._held]
        sent = time.monotonic()
        renewed = await self._scripts(self._renew, [([u.lease], lease_args) for u in held])
        acquired = await self._scripts(self._acquire, [([u.lease], lease_args) for u in wanted])
        self._up()
        valid_until = sent + self._ttl_ms / 1000 * _LEASE_MARGIN
        for u, ok in zip(held, renewed, strict=True):
            if self._held.get(u.name) is not u:
                continue  # given up meanwhile
            if ok:
                u.valid_until = valid_until
            else:
                self._lose(u, "taken by another process")
        taken = [u for u, ok in zip(wanted, acquired, strict=True) if ok]
        for u in taken:
            u.valid_until = valid_until
            self._held[u.name] = u
        for u in self._held.values():
            if u.name not in desired and not u.releasing:
                u.releasing = True  # its readers stop giving its entries to the sink
                self._wake_readers(u)
        if taken:
            log.info(
                "%s took %d units: %s", self._consumer, len(taken), _summary(u.name for u in taken)
            )
        self._count_units()
        await self._release_ready()
        # Discovery runs in its own task: a long SCAN must not hold up the renewals.
        self._to_scan.update((u.name, u) for u in taken)
        missing = any(u.key is not None and u.key not in self._streams for u in held)
        if taken or missing or self._rescan:
            self._discover_event.set()

    def _count_units(self) -> None:
        self.stats.owned = len(self._held)
        self.stats.releasing = sum(1 for u in self._held.values() if u.releasing)

    def _expire_lapsed(self) -> None:
        now = time.monotonic()
        for u in list(self._held.values()):
            if u.valid_until <= now:
                self._lose(u, "lease not renewed in time")

    def _lose(self, unit: _Unit, why: str) -> None:
        """Stop reading a unit at once (its entries in flight stay pending for the next
        owner, who claims them)."""
        if self._held.get(unit.name) is not unit:
            return
        del self._held[unit.name]
        self.stats.lost += 1
        self._count_units()
        log.warning("%s lost the lease of %s: %s", self._consumer, unit.name, why)
        self._forget(unit)

    def _forget(self, unit: _Unit) -> None:
        for key in list(unit.keys):
            s = self._streams.get(key)
            if s is not None and s.unit is unit:
                self._untail(s)
        unit.keys.clear()

    def _valid(self, unit: _Unit) -> bool:
        return self._held.get(unit.name) is unit and unit.valid_until > time.monotonic()

    def _readable(self, unit: _Unit) -> bool:
        return not unit.releasing and self._valid(unit)

    def _wake_readers(self, unit: _Unit) -> None:
        for slot in {self._slot(key) for key in unit.keys}:
            reader = self._readers.get(slot)
            if reader is not None:
                reader.bump()
        self._wake_event.set()

    async def _release_ready(self) -> None:
        """Give up the units another member wants once nothing of theirs is in flight
        (every batch given to the sink is acknowledged)."""
        ready = [u for u in self._held.values() if u.releasing and u.busy == 0 and not u.gone]
        if ready:
            await self._give_up(ready)

    async def _give_up(self, units: list[_Unit]) -> None:
        if not units:
            return
        for u in units:
            u.gone = True
            self._forget(u)  # nothing new of theirs starts from here on
        await self._scripts(self._release, [([u.lease], [self._consumer]) for u in units])
        for u in units:
            if self._held.get(u.name) is u:
                del self._held[u.name]
        self._count_units()
        names = _summary(u.name for u in units)
        log.info("%s gave up %d units: %s", self._consumer, len(units), names)

    # -- discovery ------------------------------------------------------------------------

    async def _discovery(self) -> None:
        """Add the streams of units just taken; scan every owned bucket again after an
        outage and every ``rescan_ms``."""
        backoff = Backoff(max_s=min(2.0, self._tick_s))
        while not self._closing:
            wait = max(0.0, self._rescan_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._discover_event.wait()
            self._discover_event.clear()
            if self._closing:
                return
            rescan = self._rescan or time.monotonic() >= self._rescan_at
            try:
                if rescan:
                    self._rescan = False
                    self._rescan_at = time.monotonic() + self.settings.rescan_ms / 1000
                    self._to_scan.clear()
                    units = list(self._held.values())
                else:
                    units = list(self._to_scan.values())
                    self._to_scan.clear()
                units = [u for u in units if self._readable(u)]
                await self._discover([u for u in units if u.bucket is not None])
                singles: list[tuple[_Unit, str, str | None, str]] = [
                    (u, u.key, None, u.stream)
                    for u in self._held.values()
                    if u.key is not None and u.key not in self._streams and not u.releasing
                ]
                await self._add(singles, mkstream=True)
                backoff.reset()
            except GUARDED_FAILURES as exc:  # _down re-raises the rest
                self._down(exc)  # asks for a rescan of everything
                self._discover_event.set()
                await self._sleep(backoff.next_s())

    async def _discover(self, units: list[_Unit]) -> None:
        """SCAN for the session streams of these bucket units and add them (on a cluster
        the client scans every master)."""
        if not units:
            return
        by_bucket = {u.bucket: u for u in units}
        prefix = _glob_escape(self._keys.prefix)
        if len(units) == 1:
            pattern = f"{prefix}:{{{self._keys.bucket_hex(units[0].bucket or 0)}}}:session:*"
        else:
            pattern = f"{prefix}:{{*}}:session:*"
        found: list[tuple[_Unit, str, str | None, str]] = []
        async for raw in self._cmd.scan_iter(match=pattern, count=1000, _type="stream"):
            key = _text(raw)
            sid = key.rpartition(":session:")[2]
            try:
                if self._keys.session(sid) != key:
                    continue
            except ValueError:
                continue  # not a session stream of ours
            unit = by_bucket.get(bucket_of(sid, self._keys.buckets))
            if unit is not None and key not in self._streams:
                found.append((unit, key, self._keys.meta(sid), f"session:{sid}"))
        await self._add(found)

    async def _add(
        self,
        items: Sequence[tuple[_Unit, str, str | None, str]],
        *,
        mkstream: bool = False,
        started: bool = False,
    ) -> list[tuple[_Unit, str, str | None, str]]:
        """Create the group on these streams, claim their pending entries, and tail those
        not done. ``started``: the index announced them (a reused id may have a new epoch).
        Returns the items whose stream does not exist.
        """
        missing: list[tuple[_Unit, str, str | None, str]] = []
        base: list[str | int] = [self._group, self._consumer, _CLAIM_COUNT]
        for i in range(0, len(items), _ADD_CHUNK):
            chunk = items[i : i + _ADD_CHUNK]
            calls: list[tuple[list[str], list[Any]]] = [
                ([key, meta or key], [*base, "1" if meta else "0", "1" if mkstream else "0"])
                for _unit, key, meta, _name in chunk
            ]
            replies = await self._scripts(self._add_script, calls)
            for item, reply in zip(chunk, replies, strict=True):
                unit, key, meta, name = item
                if reply is None:
                    missing.append(item)
                if reply is None or not self._readable(unit):
                    continue
                epoch, done, claimed = _text(reply[0]), int(reply[1]), int(reply[2])
                self.stats.claimed += claimed
                current = self._streams.get(key)
                if current is not None:
                    if started:
                        current.gen += 1
                        if current.epoch != epoch:
                            log.info("%s has a new epoch %s", name, epoch)
                            current.epoch = epoch
                    continue
                if not done:
                    self._tail(_Stream(key, meta, name, unit, epoch, slot=self._slot(key)))
        return missing

    async def _follow(self) -> None:
        """Learn sessions that start in owned buckets from the index (plain XREAD).

        On a cluster the producer writes a session's stream and its index entry on two
        masters at once, so the entry may come first: such a session is tried again on
        every round for ``_UNBORN_S`` (then the periodic rescan is its safety net).
        """
        backoff = Backoff(max_s=min(2.0, self._tick_s))
        index = self._keys.sessions
        # Announced sessions whose stream is not there yet -> wall-clock deadline (the
        # index entry's time + _UNBORN_S: an old entry read late is not waited for).
        unborn: dict[str, tuple[tuple[_Unit, str, str | None, str], float]] = {}
        while not self._closing:
            try:
                block = min(self.settings.block_ms, 50) if unborn else self.settings.block_ms
                reply: Any = await self._cmd.xread(
                    {index: self._index_last}, count=500, block=block
                )
                adds = dict(unborn)
                last = self._index_last
                for _key, entries in reply or []:
                    for raw_id, fields in entries:
                        last = _text(raw_id)
                        item = self._started_item(fields)
                        if item is not None:
                            deadline = int(last.partition("-")[0]) / 1000 + _UNBORN_S
                            adds[item[1]] = (item, deadline)
                missing = []
                if adds:
                    missing = await self._add([item for item, _ in adds.values()], started=True)
                self._index_last = last  # only now: a failed add reads them again
                now = time.time()
                unborn = {item[1]: adds[item[1]] for item in missing if adds[item[1]][1] > now}
                backoff.reset()
            except GUARDED_FAILURES as exc:  # _down re-raises the rest
                self._down(exc)
                await self._sleep(backoff.next_s())

    def _started_item(self, fields: Any) -> tuple[_Unit, str, str | None, str] | None:
        """The stream to add for an index entry: a ``started`` of a session in an owned
        bucket."""
        data = (fields or {}).get(b"e")
        if not isinstance(data, bytes):
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("type") != "started":
            return None
        sid = event.get("session")
        try:
            key = self._keys.session(sid)  # type: ignore[arg-type]
        except ValueError:
            return None
        bucket = bucket_of(key.rpartition(":session:")[2], self._keys.buckets)
        unit = self._held.get(f"bucket:{self._keys.bucket_hex(bucket)}")
        if unit is None or unit.releasing:
            return None
        return unit, key, self._keys.meta(str(sid)), f"session:{sid}"

    # -- the tailed set -------------------------------------------------------------------

    def _slot(self, key: str) -> int | None:
        return None if self._cluster is None else int(self._cluster.keyslot(key))

    def _reader(self, slot: int | None) -> _Reader:
        reader = self._readers.get(slot)
        if reader is None:
            reader = self._readers[slot] = _Reader(slot)
            name = "group-read" if slot is None else f"group-read:{slot}"
            task = asyncio.create_task(self._read(reader), name=name)
            reader.task = task
            self._reader_tasks.add(task)
            task.add_done_callback(self._reader_done)
        return reader

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        self._reader_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self._close_event.set()  # run() raises it

    def _tail(self, s: _Stream) -> None:
        if self._closing:
            return
        self._streams[s.key] = s
        s.unit.keys.add(s.key)
        reader = self._reader(s.slot)
        reader.streams[s.key] = s
        reader.bump()
        self._wake_event.set()
        self.stats.tailed = len(self._streams)

    def _untail(self, s: _Stream) -> None:
        if self._streams.get(s.key) is s:
            del self._streams[s.key]
        s.unit.keys.discard(s.key)
        reader = self._readers.get(s.slot)
        if reader is not None and reader.streams.get(s.key) is s:
            del reader.streams[s.key]
            reader.bump()
            self._wake_event.set()
        self.stats.tailed = len(self._streams)

    # -- reading --------------------------------------------------------------------------

    async def _waker(self) -> None:
        """Wake blocked reads with CLIENT UNBLOCK when their tailed sets changed. UNBLOCK
        answers 0 while a read is still on its way to Redis: try again shortly."""
        while True:
            await self._wake_event.wait()
            self._wake_event.clear()
            for _ in range(200):
                stale = [
                    r for r in self._readers.values()
                    if r.blocked and r.read_id is not None and r.reading_gen < r.gen
                ]  # fmt: skip
                if not stale:
                    break
                await asyncio.gather(*(self._unblock(r) for r in stale))
                await asyncio.sleep(0.005)

    async def _unblock(self, reader: _Reader) -> None:
        read_id = reader.read_id
        if read_id is None:
            return
        try:
            await self._control(reader.addr).client_unblock(read_id)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise

    def _control(self, addr: Address | None) -> Any:
        """The client for CLIENT UNBLOCK/KILL aimed at a connection on ``addr``."""
        if self._node_client is None or addr is None:
            return self._cmd
        client = self._controls.get(addr)
        if client is None:
            client = self._controls[addr] = self._node_client(addr)
        return client

    async def _connect_reader(self, reader: _Reader) -> aredis.Redis:
        if reader.slot is None:
            assert isinstance(self._cmd, aredis.Redis)
            client = self._cmd.client()
            reader.addr = None
        else:
            assert self._node_client is not None
            assert self._slots is not None  # a cluster: built in __init__
            reader.addr = await self._slots.master(reader.slot)
            client = self._node_client(reader.addr, single=True)
        # The reply as Redis sent it: _deliver needs each entry's id and its one field,
        # not redis-py's tuple and dict per entry.
        client.set_response_callback("XREADGROUP", _raw_reply)
        try:
            reader.read_id = int(await client.client_id())
        except BaseException:
            await _close_reader_client(client, reader)
            raise
        return client

    async def _read(self, reader: _Reader) -> None:
        backoff = Backoff(max_s=min(2.0, self._tick_s))
        client: aredis.Redis | None = None
        stale: tuple[int, Address | None] | None = None
        repair = False
        repairs = 0  # repairs since the last read that succeeded
        try:
            while not self._closing:
                if reader.slot is not None and not reader.streams and not reader.unacked:
                    # A cluster reader ends with its slot's last stream. No await between
                    # the check and the removal: a new stream either came before (not
                    # empty) or finds no reader and starts one.
                    if self._readers.get(reader.slot) is reader:
                        del self._readers[reader.slot]
                    return
                try:
                    if client is None:
                        client = await self._connect_reader(reader)
                        await self._retire(stale, reader)
                        stale = None
                        for s in reader.streams.values():
                            s.recovering = True
                    if repair:
                        # Here, not in the except clause: a failure while repairing must
                        # reach the handler below like any other.
                        await self._repair(reader)
                        repair = False
                    await self._read_once(reader, client)
                    repairs = 0
                    if not self.stats.redis_up:
                        self._up()
                    backoff.reset()
                except REDIS_FAILURES as exc:
                    # A round read ahead is dropped: its entries stay pending, and the
                    # recovery read ("0") or a repair finds them again.
                    reader.ahead = None
                    if isinstance(exc, ResponseError) and str(exc).startswith(
                        ("NOGROUP", "UNBLOCKED")
                    ):
                        repair = True
                        repairs += 1
                        if repairs > 1:  # again at once: do not hammer Redis
                            await self._sleep(backoff.next_s())
                        continue
                    self._down(exc)
                    if stale is None and reader.read_id is not None:
                        stale = (reader.read_id, reader.addr)
                    reader.read_id = None
                    if client is not None:
                        await _close_reader_client(client, reader)
                        client = None
                    await self._sleep(backoff.next_s())
            if client is not None:  # closing: acknowledge what the sink took
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._flush_acks(reader, client)
        finally:
            reader.read_id = None
            if client is not None:
                await _close_reader_client(client, reader)

    async def _retire(self, stale: tuple[int, Address | None] | None, reader: _Reader) -> None:
        """Kill our previous read connection server-side: a read still blocked there could
        take entries nobody would see until the next recovery."""
        if stale is None or stale == (reader.read_id, reader.addr):
            return
        read_id, addr = stale
        try:
            await self._control(addr).client_kill_filter(_id=str(read_id))
        except REDIS_FAILURES as exc:
            if isinstance(exc, ResponseError) and not is_retryable(exc):
                if "no such client" not in str(exc).lower():
                    # Refused (ACLs): wait out the old read's BLOCK instead.
                    await asyncio.sleep(self.settings.block_ms / 1000 + 0.05)
                return
            if not is_retryable(exc) or addr is None or addr == reader.addr:
                raise
            # Cluster: the old server is unreachable, so no longer the slot's master: it
            # hands us nothing more.

    async def _read_once(self, reader: _Reader, client: aredis.Redis) -> None:
        if reader.ahead is None:
            # (With a round read ahead, the acks go out while the sink stores it.)
            await self._flush_acks(reader, client)
        await self._drop_ended(reader)
        await self._release_ready()
        await self._retry_due(reader, client)
        if reader.ahead is not None:
            ahead, reader.ahead = reader.ahead, None
            await self._deliver(reader, client, ahead, ahead=True)
            return
        reader.changed.clear()  # before looking: a change from here on ends the wait below
        now = time.monotonic()
        streams = reader.streams.values()
        ready = [s for s in streams if s.retry is None and self._readable(s.unit)]
        retry_at = min((s.retry_at for s in streams if s.retry), default=None)
        if not ready:
            wait = self.settings.block_ms / 1000 if retry_at is None else retry_at - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await reader.changed.wait()
            return
        recovering = [s for s in ready if s.recovering]
        count = self.settings.count
        reply: Any
        if recovering:
            reply = await client.xreadgroup(
                self._group, self._consumer, {s.key: "0" for s in recovering}, count=count
            )
            got = {_text(k) for k, entries in reply or [] if entries}
            for s in recovering:
                if s.key not in got:
                    s.recovering = False
        else:
            block = self.settings.block_ms
            if retry_at is not None:
                block = max(1, min(block, int((retry_at - now) * 1000)))
            reader.reading_gen = reader.gen
            reader.blocked = True
            try:
                reply = await client.xreadgroup(
                    self._group, self._consumer, {s.key: ">" for s in ready}, count, block
                )
            finally:
                reader.blocked = False
        if reply and self._bus.min_replicas:
            await self._await_replicas(client)
        if reply:
            await self._deliver(reader, client, self._parse(reader, reply))

    async def _await_replicas(self, client: aredis.Redis) -> None:
        """With ``min_replicas``: hold what a read returned until that many replicas hold
        it too. A failover can lose entries the old master took but never replicated (a
        producer with ``min_replicas`` writes them again under new ids); a sink that got
        them would keep events the stream no longer has. Our XREADGROUP propagated after
        the XADDs it returned, so a replica that acknowledged it (WAIT on the reader's
        connection) holds them. If the connection drops meanwhile, the entries stay
        pending, and the next connection's pending read finds exactly those that survived.
        """
        wanted = self._bus.min_replicas
        warned = False
        while True:
            try:
                acked = await client.wait(wanted, self._bus.wait_timeout_ms)
            except ResponseError as exc:
                # "WAIT cannot be used with replica instances": demoted under us.
                raise RedisConnectionError(f"cannot confirm replication: {exc}") from exc
            if acked >= wanted:
                return
            if not warned:
                warned = True
                log.warning(
                    "%d of %d replicas hold the entries just read; the sink waits for them",
                    acked,
                    wanted,
                )

    def _parse(self, reader: _Reader, reply: Any) -> list[_Batch]:
        """A read's batches, one per stream of the reader: the entries for the sink and
        the ids to acknowledge (all of them). ``reply`` is the raw XREADGROUP reply,
        ``[[key, [[id, [field, value, ...] or nil], ...]], ...]``."""
        new_entry = tuple.__new__  # Entry's own __new__ is a Python function: twice the cost
        batches: list[_Batch] = []
        for raw_key, entries in reply:
            s = reader.streams.get(_text(raw_key))
            if s is None or not entries:
                continue  # not ours any more: left pending for the stream's next reader
            name, key, epoch = s.name, s.key, s.epoch
            batch: list[Entry] = []
            for raw_id, fields in entries:
                # The bus writes one field, "e"; None: the entry was deleted while pending.
                if fields and len(fields) == 2 and fields[0] == b"e":
                    data = fields[1]
                else:
                    data = _field(fields, b"e")
                if isinstance(data, bytes):
                    batch.append(new_entry(Entry, (name, key, epoch, raw_id.decode(), data)))
            batches.append((s, batch, [raw_id for raw_id, _ in entries]))
        return batches

    async def _deliver(
        self, reader: _Reader, client: aredis.Redis, parsed: list[_Batch], *, ahead: bool = False
    ) -> None:
        """Hand a read's batches (``_parse``) to the sink, then acknowledge them.

        With ``read_ahead`` the next round is read (and parsed) while the sink stores this
        one, and the acknowledgements of the round before, if still unsent, go out
        meanwhile too: the next round is handed over as soon as this one is stored, and
        its acknowledgements go out with it (``_read_once``)."""
        batches: list[_Batch] = []
        for s, batch, ids in parsed:
            if reader.streams.get(s.key) is not s:
                # Not tailed any more (or added again since, reading its pending list):
                # left pending; the stream's next reader (or our recovery read) finds them.
                continue
            if not self._readable(s.unit) or (ahead and (s.retry is not None or s.recovering)):
                # Its unit is being given up (or its lease is not renewed yet), or the
                # round was read ahead while the batch before it failed (or the stream
                # began to recover): left pending and read again from our pending list
                # ("0") before anything later, so the stream's order holds and nothing
                # skipped is trimmed unstored; a unit given up leaves them to its next
                # owner's XAUTOCLAIM.
                s.recovering = True
                continue
            batches.append((s, batch, ids))
        puts = asyncio.gather(*(self._put(reader, s, b, ids) for s, b, ids in batches))
        reading: asyncio.Future[list[_Batch] | None] | None = None
        acking: asyncio.Future[None] | None = None
        try:
            if self.settings.read_ahead and batches and not self._closing:
                # One pass of the event loop first: the sink starts on this round (a store
                # that yields once to gather a read's batches starts its commit) before
                # the acks and the next read take the loop.
                await asyncio.sleep(0)
                reading = asyncio.ensure_future(self._read_ahead(reader, client))
            if reader.unacked:
                acking = asyncio.ensure_future(self._flush_acks(reader, client))
            try:
                await puts
            except BaseException:
                if acking is not None:  # its own failure must not replace this one
                    await settled(acking)
                raise
            if acking is not None:
                # A failure (Redis) reaches _read's handler from here, after the sink took
                # this round; the acks are kept for the flush after the reconnect.
                await acking
            if reading is not None:
                reader.ahead = await reading
        finally:
            await settled(puts)  # cancelled with this call if it was not awaited
            if reading is not None:
                await settled(reading)
        if reader.ahead is None:  # nothing read ahead: acknowledge now
            await self._flush_acks(reader, client)
            await self._drop_ended(reader)

    async def _read_ahead(self, reader: _Reader, client: aredis.Redis) -> list[_Batch] | None:
        """The next round of the streams that are ready, without BLOCK, parsed (None:
        nothing there yet, or a stream is recovering: the next turn reads as usual)."""
        ready = [s for s in reader.streams.values() if s.retry is None and self._readable(s.unit)]
        if not ready or any(s.recovering for s in ready):
            return None
        reply = await client.xreadgroup(
            self._group, self._consumer, {s.key: ">" for s in ready}, self.settings.count
        )
        if not reply:
            return None
        if self._bus.min_replicas:
            await self._await_replicas(client)
        self.stats.ahead += 1
        return self._parse(reader, reply)

    async def _put(self, reader: _Reader, s: _Stream, batch: list[Entry], ids: list[bytes]) -> None:
        """Hand one stream's batch to the sink; note the stream if the batch ended its
        session (it may be dropped once acknowledged)."""
        unit = s.unit
        if not self._readable(unit) or self._streams.get(s.key) is not s:
            # Given up, lost or forgotten since the round was read: left pending, for our
            # recovery read or the unit's next owner.
            s.recovering = True
            return
        unit.busy += 1  # until acknowledged: the unit is not given up meanwhile
        if batch:
            try:
                await self._sink.put(batch)
            except Exception:
                # The sink's failure boundary: keep the batch, retry it after a backoff.
                unit.busy -= 1
                self.stats.retried += 1
                s.retry, s.retry_ids = batch, ids
                s.retry_at = time.monotonic() + s.backoff.next_s()
                self._sink_log(logging.ERROR, "sink failed on %s; retrying the batch", s.name)
                log.debug("sink failure on %s", s.name, exc_info=True)
                return
            except BaseException:
                unit.busy -= 1
                raise
            self.stats.read += len(batch)
        s.retry, s.retry_ids = None, []
        s.backoff.reset()
        self._sink_log.recovered("sink accepts entries again")
        reader.unacked.setdefault(s.key, []).extend(ids)
        reader.unacked_units.append(unit)
        if s.meta and batch and is_terminal(batch[-1].data):
            reader.ending[s.key] = s

    async def _retry_due(self, reader: _Reader, client: aredis.Redis) -> None:
        now = time.monotonic()
        due = [s for s in reader.streams.values() if s.retry is not None and s.retry_at <= now]
        for s in due:
            if self._readable(s.unit) and s.retry is not None:
                await self._put(reader, s, s.retry, s.retry_ids)
                await self._flush_acks(reader, client)
                await self._drop_ended(reader)

    async def _flush_acks(self, reader: _Reader, client: aredis.Redis) -> None:
        """XACK what the sink took, on the reader's connection (its streams' server). The
        sink may take more meanwhile (``_deliver``): that waits for the next flush."""
        if not reader.unacked:
            return
        acks, units = reader.unacked, reader.unacked_units
        reader.unacked, reader.unacked_units = {}, []
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    await _call(
                        self._ack, keys=[key], args=[self._group, b" ".join(ids)], client=pipe
                    )
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                # NOGROUP: the stream went away, and its pending list with it. Anything
                # else (MOVED after a slot moved, a dropped connection) fails the flush:
                # retried.
                if isinstance(reply, BaseException) and not str(reply).startswith("NOGROUP"):
                    raise reply
        except BaseException:
            self.stats.ack_failures += 1
            for key, ids in reader.unacked.items():  # taken meanwhile: after these
                acks.setdefault(key, []).extend(ids)
            reader.unacked, reader.unacked_units = acks, units + reader.unacked_units
            raise
        self.stats.acked += sum(len(ids) for ids in acks.values())
        for unit in units:
            unit.busy -= 1

    async def _drop_ended(self, reader: _Reader) -> None:
        """Check the streams whose session ended, once their acks are flushed (a stream
        with acks still to send, or whose check fails, is checked after the next flush)."""
        for key, s in list(reader.ending.items()):
            if key in reader.unacked:
                continue
            # Only while we hold its unit: the check claims the stream's pending entries.
            if self._streams.get(key) is s and self._readable(s.unit):
                await self._drop_if_done(s)
            reader.ending.pop(key, None)

    async def _drop_if_done(self, s: _Stream) -> None:
        """Stop tailing a session stream whose last entry ended it, once that entry is
        acknowledged and nothing followed it (a restart shows up in the index: ``gen``)."""
        gen = s.gen
        reply = await _call(
            self._add_script,
            keys=[s.key, s.meta or s.key],
            args=[self._group, self._consumer, _CLAIM_COUNT, "1", "0"],
            client=self._cmd,
        )
        if reply is not None and int(reply[1]) and s.gen == gen and self._streams.get(s.key) is s:
            self._untail(s)
            self.stats.dropped += 1

    async def _repair(self, reader: _Reader) -> None:
        """After NOGROUP/UNBLOCKED: one of the reader's streams was deleted (expired) or
        lost its group. Create the group again where it is gone (at 0) and re-read each
        stream's epoch; streams that no longer exist are dropped."""
        streams = list(reader.streams.values())
        sessions = [(s.unit, s.key, s.meta, s.name) for s in streams if s.meta is not None]
        missing = {key for _u, key, _m, _n in await self._add(sessions, started=True)}
        singles = [(s.unit, s.key, s.meta, s.name) for s in streams if s.meta is None]
        await self._add(singles, mkstream=True)
        for s in streams:
            s.recovering = True
            if s.key in missing:
                self._untail(s)


async def _close_reader_client(client: aredis.Redis, reader: _Reader) -> None:
    await client.aclose()
    if reader.slot is not None:
        await client.connection_pool.disconnect()


async def _call(script: Any, *, keys: list[str], args: list[Any], client: Any) -> Any:
    """Run a registered script on a client or queue it on a pipeline. On a cluster many
    run at once on the shared client: redis-py's close race among them (redis-py #4287)
    comes out as a ConnectionError, retried like any other."""
    with close_race_as_connection_error():
        return await script(keys=keys, args=args, client=client)


def _raise_failure(tasks: Iterable[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc


def _summary(names: Iterable[str], limit: int = 8) -> str:
    items = sorted(names)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
