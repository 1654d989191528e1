"""The relay service: a Hub, and an aiohttp server with its doors on one port."""

from __future__ import annotations

import asyncio
import collections
import logging
import urllib.parse
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, cast

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from relay import _http
from relay._archive import Archive
from relay._history import RAW_ENTRIES
from relay._hub import Hub
from relay._settings import RelaySettings, is_loopback
from relay._stats import Stats
from rpa_bus import ConfigMismatch, Keys
from rpa_bus.redisio import (
    REDIS_FAILURES,
    AsyncClient,
    Backoff,
    async_client,
    cancel_and_wait,
    check_config_async,
    close_async,
    is_retryable,
    master_label,
    node_client_factory,
    replica_counts,
)

if TYPE_CHECKING:
    from relay._server import AiohttpServer

log = logging.getLogger(__name__)

# How long a command may wait for a free connection of the bounded Redis pool
# (RPA_BUS_RELAY_REDIS_CONNECTIONS) before it counts as an outage; see async_client.
REDIS_POOL_WAIT_S: Final = 10.0
# How often a relay with RPA_BUS_MIN_REPLICAS reads each master's replicas (/metrics).
REPLICAS_PROBE_S: Final = 5.0


class Relay:
    """One relay instance: ``async with Relay(settings) as relay: await relay.serve_forever()``.

    ``client`` injects a ``redis.asyncio.Redis`` on one server (its socket timeout must
    exceed ``settings.block_ms``); otherwise one is made from ``settings.bus`` (any of its
    connection forms) and closed with the relay. ``close()`` is idempotent: it stops
    accepting, closes every connection with ``code`` (1001 going away by default, 1012 for a
    restart) and stops tailing.

    The server is aiohttp's: WebSocket, SSE and the HTTP API on one port.
    """

    def __init__(self, settings: RelaySettings, *, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self._own_client = client is None
        self._client: AsyncClient = (
            client
            if client is not None
            else async_client(
                settings.bus,
                max_connections=settings.redis_connections,
                wait_s=max(REDIS_POOL_WAIT_S, settings.bus.socket_timeout_s),
            )
        )
        if client is None and type(self._client) is aioredis.Redis:
            _quick_stream_replies(self._client)
        self.stats = Stats()
        self.registry = CollectorRegistry(auto_describe=True)
        self.hub: Hub | None = None
        # The archive store (RPA_BUS_ARCHIVE_URL), opened lazily: a store that is down does
        # not stop the relay; reads that need it answer ``unavailable`` until it returns.
        self.archive: Archive | None = (
            Archive(settings.bus.archive_url) if settings.bus.archive_url else None
        )
        self._server: AiohttpServer | None = None
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._close_task: asyncio.Task[None] | None = None
        self._config_task: asyncio.Task[None] | None = None
        self._replicas_task: asyncio.Task[None] | None = None
        # What stopped the relay by itself (a P:config mismatch found after start).
        self._fatal: BaseException | None = None
        self._origins = frozenset(settings.origins)
        self._origin_hosts = frozenset(
            name for o in settings.origins if o != "*" and (name := _hostname(o, url=True))
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        s = self.settings
        keys = s.bus.keys
        await self._check_config()
        self.hub = Hub(
            client=self._client,
            keys=keys,
            name=s.name,
            stats=self.stats,
            block_ms=s.block_ms,
            read_count=s.read_count,
            page_size=s.page_size,
            replay_buffer=s.replay_buffer,
            replay_buffer_bytes=s.queue_bytes,
            node_client=node_client_factory(s.bus) if self._own_client else None,
            min_replicas=s.bus.min_replicas,
            wait_timeout_ms=s.bus.wait_timeout_ms,
            archive=self.archive,
        )
        hub = self.hub
        if self.archive is not None:
            self.archive.start()
        self.registry.register(
            _http.RelayCollector(self.stats, s.name, hub, min_replicas=s.bus.min_replicas)
        )
        await hub.start()
        from relay._server import AiohttpServer

        self._server = AiohttpServer(self)
        await self._server.start()
        if s.bus.min_replicas > 0:
            self._replicas_task = asyncio.get_running_loop().create_task(
                self._watch_replicas(), name="relay-replicas"
            )
        log.info("relay %s serving ws://%s:%d/ws", s.name, s.host, self.port)

    async def _check_config(self) -> None:
        """Agree with the deployment on the bucket count (``ConfigMismatch`` if not). If
        Redis is down the relay starts anyway, serves once Redis is back, and checks then:
        ``_check_config_later``."""
        try:
            stored = await check_config_async(self._client, self.settings.bus.keys)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            log.warning("Redis unavailable at start (%s); P:config is checked when it answers", exc)
            self._config_task = asyncio.get_running_loop().create_task(
                self._check_config_later(), name="relay-config-check"
            )
        else:
            self._warn_without_archive(stored)

    def _warn_without_archive(self, stored: dict[str, str]) -> None:
        """The deployment has an archive but this relay was not told where: its replay and
        history stop at what Redis holds (a ``gap``, a 404 for a session Redis forgot)
        while the events are safe in the archive. Say so once; ``/healthz`` says it too."""
        if self.archive is None and Keys.archive_on(stored):
            log.warning(
                "relay %s: the deployment has an archive (P:config archive=1) but "
                "RPA_BUS_ARCHIVE_URL is not set here; history older than what Redis holds "
                "will answer gap/404. Set RPA_BUS_ARCHIVE_URL (or --archive-url)",
                self.settings.name,
            )

    async def _watch_replicas(self) -> None:
        """With ``RPA_BUS_MIN_REPLICAS``: every ``REPLICAS_PROBE_S``, each master's online
        replicas into ``stats.replicas`` for /metrics. A master below the setting holds back
        every entry written to it (the relay delivers only what N replicas hold) and blocks
        producers' batches: the gauge says which one."""
        while True:
            try:
                infos = await self._replication_infos()
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise
            else:
                self.stats.replicas = {
                    s.master: s.replicas
                    for s in replica_counts(infos, min_replicas=self.settings.bus.min_replicas)
                }
            await asyncio.sleep(REPLICAS_PROBE_S)

    async def _replication_infos(self) -> dict[str, Any]:
        client = self._client
        if isinstance(client, aioredis.RedisCluster):
            return {
                node.name: await client.info("replication", target_nodes=node)
                for node in client.get_primaries()
            }
        return {master_label(cast(Any, client)): await client.info("replication")}

    async def _check_config_later(self) -> None:
        """Retry the ``P:config`` check until Redis answers. On a mismatch the relay stops:
        ``wait_closed()`` (and so ``serve_forever()``) raises the ``ConfigMismatch``."""
        backoff = Backoff(max_s=1.0)
        while True:
            try:
                stored = await check_config_async(self._client, self.settings.bus.keys)
            except REDIS_FAILURES as exc:
                if not is_retryable(exc):
                    raise
                await asyncio.sleep(backoff.next_s())
                continue
            except ConfigMismatch as exc:
                log.error("relay %s stops: %s", self.settings.name, exc)
                self._fatal = exc
                self.close(1011, "relay misconfigured")
            else:
                self._warn_without_archive(stored)
            return

    @property
    def client(self) -> AsyncClient:
        """The relay's Redis client (the HTTP API reads and appends with it)."""
        return self._client

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("relay not started")
        return self._server.port

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/ws"

    def close(self, code: int = 1001, reason: str = "relay shutting down") -> None:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        config_task, self._config_task = self._config_task, None
        if config_task is not None and config_task is not asyncio.current_task():
            await cancel_and_wait([config_task])
        replicas_task, self._replicas_task = self._replicas_task, None
        if replicas_task is not None:
            await cancel_and_wait([replicas_task])
        try:
            if self._server is not None:
                await self._server.close(code, reason)
        finally:
            if self.hub is not None:
                await self.hub.close()
            if self.archive is not None:
                await self.archive.close()
            if self._own_client:
                await close_async(self._client)
            log.info("relay %s closed", self.settings.name)

    async def wait_closed(self) -> None:
        """Wait until the relay is closed; raise what stopped it by itself, if anything
        (``ConfigMismatch``)."""
        if self._close_task is None and self._server is not None:
            await self._server.wait_closed()
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
        if self._fatal is not None:
            raise self._fatal

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.wait_closed()
        await self.wait_closed()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.close()
            await self.wait_closed()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    # -- what every door checks -----------------------------------------------------------

    def opened(self, ip: str) -> None:
        """Count a long-lived connection (WebSocket, SSE) of ``ip`` (then ``closed(ip)``)."""
        self._per_ip[ip] += 1
        self.stats.connections += 1

    def closed(self, ip: str) -> None:
        self.stats.connections -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def host_ok(self, host: str | None) -> bool:
        """Without a secret (loopback mode), only loopback names or the hosts of configured
        origins: a page on rebind.example whose name now resolves to 127.0.0.1 (DNS
        rebinding) sends ``Host: rebind.example`` and is refused. With a secret or
        ``--insecure`` any Host is served. No Host at all (not a browser) is served."""
        if host is None or self.settings.secret is not None or self.settings.insecure:
            return True
        name = _hostname(host)
        return name is not None and (is_loopback(name) or name in self._origin_hosts)

    def guard(self, hosts: Sequence[str], origins: Sequence[str]) -> _http.Reply | None:
        """None if a request with these ``Host`` and ``Origin`` headers may be served, else
        the refusal: two of either (which one would a check trust?) or a foreign Host in
        loopback mode (``host_ok``). Every request gets it, whichever door serves it."""
        for name, values in (("Host", hosts), ("Origin", origins)):
            if len(values) > 1:
                self.stats.refused_connections += 1
                return _http.text(400, f"duplicate {name} header\n")
        host = hosts[0] if hosts else None
        if not self.host_ok(host):
            self.stats.refused_connections += 1
            return _http.text(403, f"host {host!r} not allowed\n")
        return None

    def admit(self, ip: str, origin: str | None, host: str | None) -> _http.Reply | None:
        """None if a long-lived connection from ``ip`` may open, else the refusal."""
        if origin is not None and not self.origin_ok(origin, host):
            self.stats.refused_connections += 1
            return _http.text(403, f"origin {origin!r} not allowed\n")
        limit = self.settings.max_connections_per_ip
        if limit and self._per_ip[ip] >= limit:
            self.stats.refused_connections += 1
            return _http.text(429, f"at most {limit} connections per client address\n")
        return None

    def origin_ok(self, origin: str, host: str | None) -> bool:
        if "*" in self._origins or origin in self._origins:
            return True
        # Same origin: a page served by this relay (the dashboard).
        netloc = urllib.parse.urlsplit(origin).netloc
        return host is not None and netloc == host

    async def healthz(self) -> _http.Reply:
        assert self.hub is not None
        redis_ok = await self.hub.ping()
        # A reader returns at least every block_ms; well past that it is stuck.
        stale_after = self.settings.block_ms / 1000 + self.settings.bus.socket_timeout_s + 5
        reader_ok = self.hub.idle or self.hub.reader_age_s() < stale_after
        ok = redis_ok and reader_ok
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "name": self.settings.name,
            "redis": redis_ok,
            "reader": reader_ok,
            "lag_s": round(self.stats.lag_s, 6),
            "connections": self.stats.connections,
            "subscriptions": self.stats.subscriptions,
            "tailed_streams": self.hub.tailed,
            "readers": self.hub.readers,
            "readers_down": self.hub.readers_down,
            "hosts": await self._monitored_hosts() if redis_ok else [],
            # The archive (RPA_BUS_ARCHIVE_URL): None without one; false while it cannot
            # be read. It does not make the relay unhealthy: Redis's part is still served.
            "archive": None if self.archive is None else self.archive.up,
            # Whether the deployment has one (P:config, set by the archiver): true with
            # "archive" null means this relay should be given RPA_BUS_ARCHIVE_URL.
            "archive_on": await self._archive_on() if redis_ok else None,
        }
        return _http.response(200 if ok else 503, orjson.dumps(body), "application/json")

    async def _archive_on(self) -> bool | None:
        keys = self.settings.bus.keys
        try:
            stored = await self._client.hgetall(keys.config)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            return None
        return Keys.archive_on({_text(k): _text(v) for k, v in stored.items()})

    async def _monitored_hosts(self) -> list[str]:
        """The hosts whose monitor reports (the ``P:monitors`` hash), for the dashboard's
        host charts. Names only: their samples still need a grant for ``monitor:HOST``."""
        try:
            names = await self._client.hkeys(self.settings.bus.keys.monitors)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            return []
        return sorted(_text(name) for name in names)


def _hostname(value: str, *, url: bool = False) -> str | None:
    """The lower-case host name of a ``Host`` header (or of an origin URL), without port
    or IPv6 brackets; None if it does not parse (urlsplit raises on a bad IPv6 literal)."""
    if not url and any(c in value for c in "@/?#\\ "):
        return None  # a Host header is host[:port]; "evil@127.0.0.1" is not loopback
    try:
        parts = urllib.parse.urlsplit(value if url else f"//{value}")
        return parts.hostname  # lower-cased, IPv6 brackets stripped
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_list(response: Any, **options: Any) -> Any:
    """What redis-py makes of an XRANGE/XREVRANGE reply, ``[(id, {field: value})]``, with
    the entries the bus writes (one field, ``e``) built by a dict display instead of
    ``dict(zip(...))``: half the time for a 1,000-entry history or replay page."""
    if response is None or options.get(RAW_ENTRIES):
        return response
    out: list[Any] = []
    append = out.append
    for entry in response:
        if entry is None:
            append((None, None))
            continue
        fields = entry[1]
        if fields is None:
            append((entry[0], {}))
        elif len(fields) == 2:
            append((entry[0], {fields[0]: fields[1]}))
        else:
            pairs = iter(fields)
            append((entry[0], dict(zip(pairs, pairs, strict=False))))
    return out


def _quick_stream_replies(client: aioredis.Redis) -> None:
    for command in ("XRANGE", "XREVRANGE"):
        client.set_response_callback(command, _stream_list)
