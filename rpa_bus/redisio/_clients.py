"""Clients for every connection form of ``RPA_BUS_REDIS_URL``, sync and asyncio.

- One server (``redis://``, ``rediss://``, ``unix://``): ``Redis.from_url``.
- Sentinel: ``Sentinel(...).master_for(service)``, a plain ``Redis`` whose pool asks the
  sentinels for the current master whenever it opens a connection, drops idle connections
  to a previous master when the answer changes, and turns a READONLY reply (the old master
  was demoted) into a ``ConnectionError``, which callers treat as a transient outage.
- Cluster: ``RedisCluster(startup_nodes=...)`` for every keyed command (it follows MOVED and
  ASK and keeps the slot map), and plain clients pinned to one node (``node_client_factory``,
  ``node_kwargs``) for what must run on a given server: a blocking XREADGROUP, WAIT, and
  CLIENT UNBLOCK/KILL, whose client ids mean something only on the server that issued them.

Every client gets the settings' explicit timeouts, RESP2 and no retries inside redis-py:
callers (the producer's flusher, the relay's readers, the monitor's loop, the workers) retry
with their own backoff, keeping events safe meanwhile, and a CLI command fails within its
time bound.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol, cast

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry
from redis.sentinel import Sentinel

from rpa_bus import RedisTarget, Settings

SyncClient = redis.Redis | redis.RedisCluster
AsyncClient = aredis.Redis | aredis.RedisCluster
Address = tuple[str, int]


class NodeClient(Protocol):
    """Makes an asyncio client pinned to one server; ``single``: one dedicated connection."""

    def __call__(self, addr: Address, *, single: bool = False) -> aredis.Redis: ...


def _timeouts(settings: Settings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        **_DRIVER,
    }


def _driver_kwargs() -> dict[str, Any]:
    """redis-py 8 reads its own version from the package's metadata for every connection
    it makes unless it is given (0.48 ms each against 0.014, in the event loop for the
    asyncio client: a pool growing by 20 connections stalls it 10 ms). Given once here."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # before redis-py 8: the version is read once, at import
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


_DRIVER: Final = _driver_kwargs()


def _credentials(target: RedisTarget) -> dict[str, Any]:
    # For the forms that are not one URL (Sentinel's data nodes, cluster nodes): what
    # ``from_url`` would have read from the URL itself.
    kwargs: dict[str, Any] = {}
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:
        kwargs["password"] = target.password
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


def _sentinel_kwargs(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    # The sentinels get the timeouts (and TLS), not the data nodes' credentials.
    kwargs = _timeouts(settings)
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


def node_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for a plain sync ``Redis(host=, port=)`` client to one node of the
    configured deployment (credentials, TLS, timeouts, no retries)."""
    return {
        **_timeouts(settings),
        **_credentials(settings.target),
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
    }


def _async_node_kwargs(settings: Settings) -> dict[str, Any]:
    # The asyncio client needs the asyncio Retry: the sync one's failure callback is never
    # awaited by redis.asyncio.
    return {
        **_timeouts(settings),
        **_credentials(settings.target),
        "retry": AsyncRetry(NoBackoff(), 0),
        "health_check_interval": 0,
        "protocol": 2,
    }


def sync_client(settings: Settings) -> SyncClient:
    """A sync client for ``settings.redis_url``.

    A Cluster client reads the slot map when built and raises ``redis.RedisError`` if no
    seed node answers (redis-py's ``RedisClusterException`` is translated to
    ``redis.ConnectionError``); one server and Sentinel connect on first use.
    """
    target = settings.target
    if target.topology == "single":
        return redis.Redis.from_url(
            target.url,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            protocol=2,
            **_timeouts(settings),
        )
    kwargs = node_kwargs(settings)
    if target.topology == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(settings, target), **kwargs
        )
        master = sentinel.master_for(str(target.service), db=target.db)  # type: ignore[no-untyped-call]
        return cast(redis.Redis, master)
    try:
        # MOVED/ASK redirections are still followed; the callers refresh the slot map and
        # retry with their own backoff.
        return redis.RedisCluster(
            startup_nodes=[
                ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in target.hosts
            ],
            require_full_coverage=False,
            **kwargs,
        )
    except redis.exceptions.RedisClusterException as exc:
        raise redis.ConnectionError(
            f"no Redis Cluster seed node answered ({target.redacted()}): {exc}"
        ) from exc


class QueuedPool(aredis.ConnectionPool):
    """redis-py's pool with at most ``limit`` connections handed out at once; past that a
    command queues (``asyncio.Semaphore``: in order) for up to ``wait_s``, then
    ``ConnectionError``. Unlike ``BlockingConnectionPool`` it adds no lock and arms no
    timer when a connection is free, and a waiter arms one timer: during a storm of 1,000
    subscriptions that pool's lock and per-command timers left the relay ~1 KiB more RSS
    per idle connection than the unbounded pool (benchmarks.md)."""

    _slots: asyncio.Semaphore | None = None
    _wait_s = 10.0

    def bound(self, limit: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._wait_s = wait_s
        self._slotted: set[int] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        slots = self._slots
        if slots is None:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if slots.locked():
            try:
                async with asyncio.timeout(self._wait_s):
                    await slots.acquire()
            except TimeoutError:
                raise redis.ConnectionError("No connection available.") from None
        else:
            await slots.acquire()  # free: returns at once
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            slots.release()
            raise
        self._slotted.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            # Only a connection this pool handed out frees a slot (the base class also
            # releases one whose connect failed, before it was handed out).
            if self._slots is not None and id(connection) in self._slotted:
                self._slotted.discard(id(connection))
                self._slots.release()


def async_client(
    settings: Settings, *, max_connections: int | None = None, wait_s: float = 10.0
) -> AsyncClient:
    """A ``redis.asyncio`` client for ``settings.redis_url``; connects on first use (a
    cluster client reads its slot map on first use, and callers retry that like any other
    outage).

    ``max_connections`` (one server only): at most that many connections handed out at
    once (``QueuedPool``); past that a command waits in line up to ``wait_s`` for a free
    one (then ``ConnectionError``, an outage to the caller). Without it redis-py's plain
    pool opens a connection per concurrent command up to its own cap (100 in redis-py 8),
    past which a command fails at once with "Too many connections": the relay took that
    for an outage during a storm of 2,000 subscriptions (subscribers told
    ``unavailable``, tailing restarted, over and over for ~30 s). ``wait_s`` is generous:
    a Redis that is down fails each command at connect, which frees its connection at
    once; a hung one frees them at the socket timeout."""
    target = settings.target
    if target.topology == "single":
        options: dict[str, Any] = {
            "retry": AsyncRetry(NoBackoff(), 0),
            "health_check_interval": 0,
            "protocol": 2,
            **_timeouts(settings),
        }
        if max_connections is None:
            return aredis.Redis.from_url(target.url, **options)
        pool = QueuedPool.from_url(target.url, **options)
        pool.bound(max_connections, wait_s)
        return aredis.Redis.from_pool(pool)
    kwargs = _async_node_kwargs(settings)
    if target.topology == "sentinel":
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(settings, target), **kwargs
        )
        return cast(aredis.Redis, sentinel.master_for(str(target.service), db=target.db))
    return aredis.RedisCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in target.hosts],
        require_full_coverage=False,
        **kwargs,
    )


def async_node_client(settings: Settings, addr: Address, *, single: bool = False) -> aredis.Redis:
    """An asyncio client pinned to the server at ``addr`` of the configured deployment
    (credentials, TLS, timeouts, no retries); ``single``: one dedicated connection."""
    host, port = addr
    kwargs = _async_node_kwargs(settings)
    if settings.target.topology == "sentinel":
        kwargs["db"] = settings.target.db
    return aredis.Redis(host=host, port=port, single_connection_client=single, **kwargs)


def node_client_factory(settings: Settings) -> NodeClient | None:
    """For Sentinel and Cluster, a maker of asyncio clients pinned to one server, so that
    blocking reads and CLIENT UNBLOCK/KILL reach the server a connection is on (client ids
    are per server: the same id on another node is somebody else). ``None`` for one
    server, where the command pool always reaches the same server."""
    target = settings.target
    if target.topology == "single":
        return None

    def make(addr: Address, *, single: bool = False) -> aredis.Redis:
        return async_node_client(settings, addr, single=single)

    return make


def close_sync(client: SyncClient) -> None:
    """Close a client from ``sync_client``, with a Sentinel client's sentinel connections."""
    client.close()
    for sentinel in _sentinels(client):
        sentinel.close()


async def close_async(client: AsyncClient) -> None:
    """Close a client from ``async_client``, with a Sentinel client's sentinel connections
    (``aclose()`` of the master client leaves those open)."""
    await client.aclose()
    for sentinel in _sentinels(client):
        await sentinel.aclose()


def _sentinels(client: Any) -> list[Any]:
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", []))


class SlotMap:
    """A cluster client's slot map as the node-pinned readers need it: the master serving a
    slot, with the map re-read first once a failure marked it stale.

    Coalesced: readers failing together after one failover cause one refresh (under a
    lock), not one each. Starts stale, so the first lookup reads the map.
    """

    def __init__(self, cluster: aredis.RedisCluster) -> None:
        self._cluster = cluster
        self._stale = True
        self._lock = asyncio.Lock()

    def mark_stale(self) -> None:
        """A failover or a slot move may explain a failure: re-read before the next lookup."""
        self._stale = True

    async def fresh(self) -> None:
        """Re-read the slot map if it is stale (redis-py errors propagate; still stale)."""
        if not self._stale:
            return
        async with self._lock:
            if self._stale:
                self._stale = False
                try:
                    await self._cluster.nodes_manager.initialize()
                except BaseException:
                    self._stale = True
                    raise

    async def master(self, slot: int) -> Address:
        """The master serving ``slot``; ``SlotNotCoveredError`` if the map has none."""
        await self.fresh()
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
        except (KeyError, IndexError) as exc:  # no slot map yet, or a hole in it
            self._stale = True
            raise redis.exceptions.SlotNotCoveredError(f"no master known for slot {slot}") from exc
        return (str(node.host), int(node.port))
