"""The per-endpoint outbox in Redis: how an event gets from the consumer group to a receiver.

::

    session/monitor streams --(group P:webhooks, GroupWorker)--> WebhookSink.put()
        put(): for each endpoint whose patterns match, one Lua script appends the batch's
               delivery jobs to that endpoint's outbox stream (skipping what it already
               holds); then put() returns and the group loop XACKs.
    P:webhooks:{NAME}:out --(EndpointSender, whoever holds P:webhooks:{NAME}:lease)--> POST
        the holder reads the outbox in order, delivers each source stream's jobs in order
        (different streams concurrently), retries with backoff, XDELs a job once it is
        delivered, or moves it to P:webhooks:{NAME}:dead (atomically) after the last try.

Why an outbox and not delivering inside put(): put() returns only when every matching
endpoint holds the event durably (Redis, AOF), so the XACK never loses one; a slow or dead
receiver costs put() nothing, so it never holds up the stream for the other endpoints
(no head-of-line blocking between endpoints); and each endpoint's backlog is visible
(``XLEN``) and survives any process's death. Order: the group loop hands one stream to
one process at a time, in id order, and the enqueue script appends in that order; one
process at a time (the lease holder) delivers an endpoint's outbox, stream by stream in
order. Crash-safety: a job leaves the outbox only after its receiver answered 2xx (or it
went to the dead letters), so a process SIGKILLed mid-delivery leaves it there, and the
next lease holder sends it again with the same ``webhook-id``.

Every key of one endpoint carries ``{NAME}`` as its hash tag, so the scripts that touch
an endpoint's outbox, dead letters and markers run in one slot on a cluster too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from rpa_bus.redisio import (
    GUARDED_FAILURES,
    REDIS_FAILURES,
    AsyncClient,
    Backoff,
    Entry,
    RateLimitedLog,
    cancel_and_wait,
    is_retryable,
)
from workers._deliver import Attempt, Deliverer
from workers._endpoints import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    """Key names of the webhook sender (prefix ``P``)."""

    prefix: str

    @property
    def group(self) -> str:
        """The consumer group every webhooks process shares (``P:webhooks``)."""
        return f"{self.prefix}:webhooks"

    @property
    def endpoints(self) -> str:
        """Set of endpoint names the running senders serve (read by ``status``)."""
        return f"{self.prefix}:webhooks:endpoints"

    def _ep(self, name: str) -> str:
        return f"{self.prefix}:webhooks:{{{name}}}"

    def outbox(self, name: str) -> str:
        return self._ep(name) + ":out"

    def dead(self, name: str) -> str:
        return self._ep(name) + ":dead"

    def lease(self, name: str) -> str:
        return self._ep(name) + ":lease"

    def state(self, name: str) -> str:
        """Hash: ``paused``, ``last_error``, ``last_error_at``, ``last_ok_at``, ``holder``."""
        return self._ep(name) + ":state"

    def seen(self, name: str, stream: str) -> str:
        """``EPOCH|ID``: the last entry of ``stream`` already in the outbox."""
        return self._ep(name) + f":seen:{stream}"


def webhook_id(endpoint: str, stream: str, epoch: str, entry_id: str) -> str:
    """The ``webhook-id`` of one event to one endpoint: the same on every retry, replay and
    redelivery by another process, different for every (endpoint, stream, epoch, entry)."""
    digest = hashlib.sha256(f"{endpoint}\0{stream}\0{epoch}\0{entry_id}".encode()).hexdigest()
    return "msg_" + digest[:32]


def payload(
    event_type: str, stream: str, epoch: str, entry_id: str, envelope: bytes, *, ts: object = None
) -> bytes:
    """The JSON body, in the specification's recommended shape ``{type, timestamp, data}``
    (``timestamp``: the envelope's ``ts``); ``data.event`` is the envelope exactly as the
    stream holds it."""
    return orjson.dumps(
        {
            "type": event_type,
            "timestamp": ts,
            "data": {
                "stream": stream,
                "id": entry_id,
                "epoch": epoch,
                "event": orjson.Fragment(envelope),
            },
        }
    )


# KEYS: outbox, seen marker, dead letters. ARGV: stream, epoch, marker ttl ms, outbox cap,
# dead-letter cap, now (ms), then 4 per job: entry id, webhook id, type, body.
# Skips entries at or below the marker (a batch replayed after a crash between put and
# XACK is not queued twice); past the cap a job goes straight to the dead letters.
ENQUEUE_LUA = """
local outbox, seen, dead = KEYS[1], KEYS[2], KEYS[3]
local stream, epoch = ARGV[1], ARGV[2]
local ttl, cap, deadcap, now = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local lms, lseq = -1, -1
local last = redis.call('GET', seen)
if last then
  local bar = string.find(last, '|', 1, true)
  if string.sub(last, 1, bar - 1) == epoch then
    lms, lseq = split(string.sub(last, bar + 1))
  end
end
local added, overflow, lastid = 0, 0, nil
local size = redis.call('XLEN', outbox)
for i = 7, #ARGV, 4 do
  local id = ARGV[i]
  local ms, seq = split(id)
  if ms > lms or (ms == lms and seq > lseq) then
    if size < cap then
      redis.call('XADD', outbox, '*', 'w', ARGV[i + 1], 's', stream, 'e', epoch, 'i', id,
                 't', ARGV[i + 2], 'b', ARGV[i + 3])
      size = size + 1
      added = added + 1
    else
      redis.call('XADD', dead, 'MAXLEN', '~', deadcap, '*', 'w', ARGV[i + 1], 's', stream,
                 'e', epoch, 'i', id, 't', ARGV[i + 2], 'b', ARGV[i + 3], 'n', '0',
                 'err', 'backlog full: the outbox held ' .. cap .. ' jobs', 'at', now)
      overflow = overflow + 1
    end
    lms, lseq, lastid = ms, seq, id
  end
end
if lastid then
  redis.call('SET', seen, epoch .. '|' .. lastid, 'PX', ttl)
end
return {added, overflow}
"""

# KEYS: outbox, dead. ARGV: outbox id, dead cap, then field/value pairs of the dead letter.
DEAD_LUA = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return redis.call('XDEL', KEYS[1], ARGV[1])
"""

# KEYS: lease. ARGV: holder, ttl ms. Take the lease if free, extend it if ours; 1 if ours.
LEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: holder. Drop the lease only if ours.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: dead, outbox. ARGV: max count, then optional dead-letter ids (none = the oldest
# ``max count``). Moves dead letters back to the end of the outbox; returns how many.
REPLAY_LUA = """
local entries
if #ARGV > 1 then
  entries = {}
  for i = 2, #ARGV do
    local got = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if got[1] then entries[#entries + 1] = got[1] end
  end
else
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
end
local moved = 0
for _, entry in ipairs(entries) do
  local f, keep = entry[2], {}
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'w' or k == 's' or k == 'e' or k == 'i' or k == 't' or k == 'b' then
      keep[#keep + 1] = k
      keep[#keep + 1] = f[j + 1]
    end
  end
  redis.call('XADD', KEYS[2], '*', unpack(keep))
  redis.call('XDEL', KEYS[1], entry[1])
  moved = moved + 1
end
return moved
"""


class Metrics:
    """The webhook sender's Prometheus series, on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["endpoint"]
        self.delivered = Counter(
            "rpa_bus_webhook_delivered", "Deliveries a receiver accepted (2xx).", labels,
            registry=self.registry,
        )  # fmt: skip
        self.failed = Counter(
            "rpa_bus_webhook_failed", "Attempts that failed (error, timeout, non-2xx).", labels,
            registry=self.registry,
        )  # fmt: skip
        self.retried = Counter(
            "rpa_bus_webhook_retried", "Failed attempts scheduled for another try.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.dead = Counter(
            "rpa_bus_webhook_dead", "Deliveries moved to the dead-letter stream.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.enqueued = Counter(
            "rpa_bus_webhook_enqueued", "Delivery jobs appended to an outbox.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "rpa_bus_webhook_latency_seconds",
            "From the event's XADD (its entry id) to the receiver's 2xx.",
            labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )

    def value(self, name: str, endpoint: str) -> float:
        got = self.registry.get_sample_value(
            f"rpa_bus_webhook_{name}_total", {"endpoint": endpoint}
        )
        return got or 0.0


class WebhookSink:
    """The ``GroupSink`` of the webhook sender: appends delivery jobs to the outboxes."""

    def __init__(
        self,
        client: AsyncClient,
        keys: WebhookKeys,
        endpoints: Sequence[Endpoint],
        *,
        metrics: Metrics,
        seen_ttl_s: float = 24 * 3600.0,
        max_backlog: int = 100_000,
        dead_maxlen: int = 10_000,
    ) -> None:
        self._client = client
        self._keys = keys
        self._endpoints = list(endpoints)
        self._metrics = metrics
        self._seen_ttl_ms = int(seen_ttl_s * 1000)
        self._max_backlog = max_backlog
        self._dead_maxlen = dead_maxlen
        self._enqueue = client.register_script(ENQUEUE_LUA)

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Queue for ``endpoints`` from the next batch on (the endpoints file changed)."""
        self._endpoints = list(endpoints)

    async def put(self, entries: Sequence[Entry]) -> None:
        """Queue ``entries`` (one stream, in id order) for every endpoint that wants them.
        Returns once every outbox holds them; raises (Redis) to have the batch retried."""
        if not entries:
            return
        stream, epoch = entries[0].stream, entries[0].epoch
        jobs: dict[str, list[bytes | str | int]] = {}
        for entry in entries:
            try:
                envelope = orjson.loads(entry.data)
                event_type = envelope["type"]
                if not isinstance(event_type, str):
                    raise TypeError(event_type)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("skipping %s %s: not an event envelope", entry.stream, entry.id)
                continue
            body: bytes | None = None
            for ep in self._endpoints:
                if ep.matches(stream, event_type):
                    if body is None:
                        body = payload(event_type, stream, entry.epoch, entry.id, entry.data,
                                       ts=envelope.get("ts"))  # fmt: skip
                    wid = webhook_id(ep.name, stream, entry.epoch, entry.id)
                    jobs.setdefault(ep.name, []).extend((entry.id, wid, event_type))
                    jobs[ep.name].append(body)
        now_ms = str(int(time.time() * 1000))
        for name, args in jobs.items():
            keys = [self._keys.outbox(name), self._keys.seen(name, stream), self._keys.dead(name)]
            argv: list[bytes | str | int] = [
                stream,
                epoch,
                self._seen_ttl_ms,
                self._max_backlog,
                self._dead_maxlen,
                now_ms,
            ]
            added, overflow = await self._enqueue(keys=keys, args=[*argv, *args])
            if added:
                self._metrics.enqueued.labels(name).inc(int(added))
            if overflow:
                self._metrics.dead.labels(name).inc(int(overflow))
                log.warning("endpoint %s: backlog full, %d job(s) dead-lettered", name, overflow)


class RateLimiter:
    """At most ``rate_per_s`` acquisitions a second, spaced evenly (None = no limit)."""

    def __init__(self, rate_per_s: float | None) -> None:
        self._interval = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """How an endpoint's sender retries and shares its endpoint with other processes."""

    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    lease_ms: int = 10_000
    window: int = 1_000  # jobs read from the outbox and not yet done, at most
    concurrency: int = 16  # source streams delivered at once (connections, at most)
    block_ms: int = 1_000
    dead_maxlen: int = 10_000
    body_cap_bytes: int = 64 * 1024
    connect_timeout_s: float = 5.0


Fields = dict[bytes, bytes]


class _LeaseLost(Exception):
    """Another process holds the endpoint's lease now (ours expired)."""


class EndpointSender:
    """Delivers one endpoint's outbox while this process holds the endpoint's lease.

    Every process runs one per endpoint; the lease (a key with a TTL, renewed every third
    of it) makes one of them the deliverer. When the holder dies the lease expires and
    another takes over, starting from the oldest job still in the outbox: what the dead
    one was sending is sent again, same ``webhook-id``.
    """

    def __init__(
        self,
        client: AsyncClient,
        keys: WebhookKeys,
        endpoint: Endpoint,
        *,
        holder: str,
        settings: SenderSettings,
        metrics: Metrics,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self.endpoint = endpoint
        self._client = client
        self._keys = keys
        self._holder = holder
        self._settings = settings
        self._metrics = metrics
        self._clock_ms = clock_ms
        self._name = endpoint.name
        # The hot path's series, looked up once.
        self._delivered_total = metrics.delivered.labels(endpoint.name)
        self._latency = metrics.latency.labels(endpoint.name)
        self._lease = client.register_script(LEASE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._dead = client.register_script(DEAD_LUA)
        self._limiter = RateLimiter(endpoint.rate_per_s)
        self._paused = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._closed = asyncio.Event()
        self._outage = RateLimitedLog(log)
        self.holding = False
        self._done_ids: list[bytes] = []  # delivered, not yet XDELed
        self._done_ready = asyncio.Event()
        self.deliverer = Deliverer(
            endpoint,
            body_cap_bytes=settings.body_cap_bytes,
            connect_timeout_s=settings.connect_timeout_s,
            max_connections=settings.concurrency,
        )

    def close(self) -> None:
        self._closed.set()

    async def run(self) -> None:
        """Compete for the lease and deliver while holding it, until ``close()``."""
        backoff = Backoff(initial_s=0.2, max_s=5.0)
        try:
            registered = False
            while not self._closed.is_set():
                try:
                    if not registered:  # so `rpa-bus status` lists this endpoint
                        await self._client.sadd(self._keys.endpoints, self._name)
                        registered = True
                    if await self._lease(keys=[self._keys.lease(self._name)],
                                         args=[self._holder, self._settings.lease_ms]):  # fmt: skip
                        await self._hold()
                    else:
                        await self._wait_closed(self._settings.lease_ms / 3000)
                    backoff.reset()
                    self._outage.recovered("endpoint %s: Redis is back", self._name)
                except _LeaseLost:
                    log.warning("endpoint %s: lease lost to another process", self._name)
                except GUARDED_FAILURES as exc:  # is_retryable: redis-py #4287
                    if not is_retryable(exc):
                        raise
                    self._outage.warning("endpoint %s: Redis failed (%s); retrying", self._name,
                                         exc)  # fmt: skip
                    await self._wait_closed(backoff.next_s())
        finally:
            self.holding = False
            await self.deliverer.close()
            with contextlib.suppress(*REDIS_FAILURES):
                await asyncio.shield(
                    self._release(keys=[self._keys.lease(self._name)], args=[self._holder])
                )

    async def _wait_closed(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout_s)

    async def _hold(self) -> None:
        """Deliver until the lease is lost (raises), Redis fails (raises) or close()."""
        await self._refresh_pause()  # a paused endpoint sends nothing, not even at first
        self.holding = True
        log.info("endpoint %s: delivering (this process holds its lease)", self._name)
        keeper = asyncio.create_task(self._keep_lease(), name=f"lease:{self._name}")
        pump = asyncio.create_task(self._pump(), name=f"pump:{self._name}")
        flusher = asyncio.create_task(self._flush_done(), name=f"done:{self._name}")
        closed = asyncio.create_task(self._closed.wait(), name=f"closed:{self._name}")
        try:
            done, _ = await asyncio.wait(
                {keeper, pump, flusher, closed}, return_when="FIRST_COMPLETED"
            )
            for task in (keeper, pump, flusher):
                if task in done:
                    task.result()  # raises what ended it
        finally:
            self.holding = False
            await cancel_and_wait([keeper, pump, flusher, closed])
            # What was delivered leaves the outbox now if Redis lets it; if not, the next
            # holder sends those jobs again (same webhook-id).
            with contextlib.suppress(*REDIS_FAILURES):
                await asyncio.shield(self._flush_once())

    async def _flush_done(self) -> None:
        """Take delivered jobs out of the outbox, many per round trip: while one XDEL is
        in flight the next deliveries' ids gather for the next."""
        while True:
            await self._done_ready.wait()
            self._done_ready.clear()
            await self._flush_once()

    async def _flush_once(self) -> None:
        if not self._done_ids:
            return
        ids, self._done_ids = self._done_ids, []
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xdel(self._keys.outbox(self._name), *ids)
            pipe.hset(self._keys.state(self._name), "last_ok_at", str(int(self._clock_ms())))
            await pipe.execute()
        except BaseException:
            self._done_ids[:0] = ids  # not known to be gone: try again on the way out
            raise

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its TTL; read the pause flag meanwhile."""
        every_s = self._settings.lease_ms / 3000
        while True:
            await self._refresh_pause()
            await asyncio.sleep(min(every_s, 1.0))
            ours = await self._lease(keys=[self._keys.lease(self._name)],
                                     args=[self._holder, self._settings.lease_ms])  # fmt: skip
            if not ours:
                raise _LeaseLost(self._name)

    async def _refresh_pause(self) -> None:
        paused = await self._client.hget(self._keys.state(self._name), "paused")
        now_paused = paused not in (None, b"0", b"")
        if now_paused != self._paused:
            log.info("endpoint %s: %s", self._name, "paused" if now_paused else "resumed")
        self._paused = now_paused
        if now_paused:
            self._unpaused.clear()
        else:
            self._unpaused.set()

    async def _pump(self) -> None:
        """Read the outbox in order; one task per source stream delivers its jobs in order."""
        queues: dict[bytes, deque[tuple[bytes, Fields]]] = {}
        workers: dict[bytes, asyncio.Task[None]] = {}
        slots = asyncio.Semaphore(self._settings.concurrency)
        outbox = self._keys.outbox(self._name)
        last = "0-0"
        try:
            while True:
                for stream, task in list(workers.items()):
                    if task.done():
                        del workers[stream]
                        task.result()  # a worker's failure (Redis) ends the hold
                free = self._settings.window - sum(len(q) for q in queues.values())
                if free <= 0:
                    await asyncio.wait(list(workers.values()), timeout=0.05,
                                       return_when="FIRST_COMPLETED")  # fmt: skip
                    continue
                block = min(self._settings.block_ms, 50) if workers else self._settings.block_ms
                reply = cast(
                    list[tuple[bytes, list[tuple[bytes, Fields]]]],
                    await self._client.xread({outbox: last}, count=free, block=block),
                )
                for _key, entries in reply or []:
                    for oid, fields in entries:
                        last = oid.decode()
                        stream = fields.get(b"s", b"")
                        queues.setdefault(stream, deque()).append((oid, fields))
                        if stream not in workers or workers[stream].done():
                            if stream in workers:
                                workers.pop(stream).result()
                            workers[stream] = asyncio.create_task(
                                self._drain(queues, stream, slots),
                                name=f"send:{self._name}:{stream.decode(errors='replace')}",
                            )
        finally:
            await cancel_and_wait(workers.values())

    async def _drain(
        self,
        queues: dict[bytes, deque[tuple[bytes, Fields]]],
        stream: bytes,
        slots: asyncio.Semaphore,
    ) -> None:
        """Deliver one source stream's queued jobs in order; holds a concurrency slot."""
        queue = queues[stream]
        async with slots:
            while queue:
                oid, fields = queue[0]
                await self._deliver(oid, fields)
                queue.popleft()
            del queues[stream]

    async def _deliver(self, oid: bytes, fields: Fields) -> None:
        """Try one job until delivered or dead; then take it out of the outbox."""
        wid = fields[b"w"].decode()
        body = fields[b"b"]
        backoff = Backoff(initial_s=self._settings.retry_initial_s,
                          max_s=self._settings.retry_max_s)  # fmt: skip
        attempts = 0
        while True:
            await self._unpaused.wait()
            await self._limiter.acquire()
            attempts += 1
            result = await self.deliverer.post(wid, body)
            if result.ok:
                self._delivered_total.inc()
                self._observe_latency(fields)
                self._delivered(oid)
                return
            self._metrics.failed.labels(self._name).inc()
            await self._note_error(result)
            if result.final or attempts >= self.endpoint.max_attempts:
                await self._to_dead(oid, fields, result, attempts)
                return
            self._metrics.retried.labels(self._name).inc()
            delay = backoff.next_s()
            if result.retry_after_s is not None:
                delay = max(delay, result.retry_after_s)
            log.info("endpoint %s: %s failed (%s); attempt %d, next in %.1fs", self._name,
                     wid, result.error, attempts, delay)  # fmt: skip
            await asyncio.sleep(delay)

    def _observe_latency(self, fields: Fields) -> None:
        try:
            xadd_ms = int(fields[b"i"].split(b"-", 1)[0])
        except (KeyError, ValueError):
            return
        self._latency.observe(max(0.0, (self._clock_ms() - xadd_ms) / 1000))

    def _delivered(self, oid: bytes) -> None:
        self._done_ids.append(oid)
        self._done_ready.set()

    async def _note_error(self, result: Attempt) -> None:
        await self._client.hset(
            self._keys.state(self._name),
            mapping={"last_error": result.error or "", "last_error_at": str(int(self._clock_ms()))},
        )

    async def _to_dead(self, oid: bytes, fields: Fields, result: Attempt, attempts: int) -> None:
        self._metrics.dead.labels(self._name).inc()
        log.warning("endpoint %s: %s dead-lettered after %d attempt(s): %s", self._name,
                    fields[b"w"].decode(), attempts, result.error)  # fmt: skip
        letter: list[Any] = []
        for key in (b"w", b"s", b"e", b"i", b"t", b"b"):
            letter += [key, fields.get(key, b"")]
        letter += [
            b"n",
            str(attempts),
            b"err",
            result.error or "",
            b"at",
            str(int(self._clock_ms())),
        ]
        if result.status is not None:
            letter += [b"status", str(result.status)]
        await self._dead(
            keys=[self._keys.outbox(self._name), self._keys.dead(self._name)],
            args=[oid, self._settings.dead_maxlen, *letter],
        )
