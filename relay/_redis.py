"""The relay's Redis clients, for each connection form of ``RPA_BUS_REDIS_URL``.

The relay may not import the producer, so it has this small asyncio factory of its own
(the producer's is ``producer._connect``); both read the URL with ``rpa_bus.parse_redis_url``.

- One server (``redis://``, ``rediss://``, ``unix://``): ``Redis.from_url``, as always.
- Sentinel: ``Sentinel(...).master_for(service)``, a plain ``Redis`` whose pool asks the
  sentinels for the current master whenever it opens a connection, drops idle connections
  to a previous master when the answer changes, and turns a READONLY reply (the old master
  was demoted) into a ``ConnectionError``, which the hub treats as a transient outage.
- Cluster: ``RedisCluster(startup_nodes=...)`` for every keyed command (it follows MOVED and
  ASK and keeps the slot map), and plain clients pinned to one node (``node_client_factory``)
  for what must run on a given server: the readers' blocking XREADGROUP, WAIT, and CLIENT
  UNBLOCK/KILL, whose client ids mean something only on the server that issued them.

Every client: explicit timeouts, RESP2, no retries inside redis-py (the hub retries with its
own backoff and tells subscribers ``unavailable`` meanwhile).
"""

from __future__ import annotations

import random
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from rpa_bus import RedisTarget, Settings

Address = tuple[str, int]
Client = aioredis.Redis | aioredis.RedisCluster

# Transient: Redis unreachable, slow, restarting or failing over. Anything else is a bug (or
# a refusal like WRONGTYPE) and propagates. Careful: redis-py's ConnectionError and
# TimeoutError are not the builtins. The cluster replies are "not now, or not here":
# MOVED/ASK (MovedError is an AskError) reach only the node-pinned clients (RedisCluster
# follows them itself), TRYAGAIN comes with a slot migration, CLUSTERDOWN/MASTERDOWN with
# a failover; RedisClusterException is what redis-py raises when no node answers its
# slot-map refresh or a slot has no master yet (SlotNotCoveredError). (Its subclass for
# cross-slot transactions cannot arise: the relay runs no transaction through RedisCluster.)
TRANSIENT: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    OSError,
    rx.AskError,
    rx.TryAgainError,
    rx.ClusterDownError,
    rx.RedisClusterException,
)


class NodeClient(Protocol):
    """Makes a client pinned to one server; ``single``: one dedicated connection."""

    def __call__(self, addr: Address, *, single: bool = False) -> aioredis.Redis: ...


class Backoff:
    """Capped, jittered exponential backoff; ``reset()`` after a success."""

    def __init__(self, base_s: float = 0.05, cap_s: float = 2.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._attempt = 0

    def next_s(self) -> float:
        delay = min(self.cap_s, self.base_s * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0


def redis_client(bus: Settings) -> Client:
    """A client whose every call is bounded in time and never retried behind our back."""
    target = bus.target
    if target.topology == "single":
        return aioredis.Redis.from_url(
            bus.redis_url,
            socket_timeout=bus.socket_timeout_s,
            socket_connect_timeout=bus.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            protocol=2,
        )
    if target.topology == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs=_sentinel_kwargs(bus, target),
            **_node_kwargs(bus, target),
        )
        return cast(aioredis.Redis, sentinel.master_for(str(target.service), db=target.db))
    # Built without contacting a node: the slot map is read on first use, and the hub
    # retries that like any other outage.
    return aioredis.RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
        require_full_coverage=False,
        **_node_kwargs(bus, target),
    )


def node_client_factory(bus: Settings) -> NodeClient | None:
    """For Sentinel and Cluster, a maker of clients pinned to one server, so that the
    readers and CLIENT UNBLOCK/KILL reach the server a reader's connection is on (client
    ids are per server: the same id on another node is somebody else). ``None`` for one
    server, where the command pool always reaches the reader's server."""
    target = bus.target
    if target.topology == "single":
        return None
    kwargs = _node_kwargs(bus, target)
    if target.topology == "sentinel":
        kwargs["db"] = target.db

    def make(addr: Address, *, single: bool = False) -> aioredis.Redis:
        host, port = addr
        return aioredis.Redis(host=host, port=port, single_connection_client=single, **kwargs)

    return make


async def close_client(client: Client) -> None:
    """Close a client from ``redis_client``, with a Sentinel client's sentinel connections
    (``aclose()`` of the master client leaves those open)."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()


def _node_kwargs(bus: Settings, target: RedisTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": bus.socket_timeout_s,
        "socket_connect_timeout": bus.connect_timeout_s,
        "retry": AsyncRetry(NoBackoff(), 0),
        "health_check_interval": 0,
        "protocol": 2,
    }
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:
        kwargs["password"] = target.password
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


def _sentinel_kwargs(bus: Settings, target: RedisTarget) -> dict[str, Any]:
    # The sentinels get the timeouts (and TLS), not the data nodes' credentials.
    kwargs: dict[str, Any] = {
        "socket_timeout": bus.socket_timeout_s,
        "socket_connect_timeout": bus.connect_timeout_s,
    }
    if target.tls:
        kwargs["ssl"] = True
    return kwargs
