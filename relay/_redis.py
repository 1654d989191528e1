"""The relay's Redis clients, for each connection form of ``RPA_BUS_REDIS_URL``.

The relay may not import the producer, so it has this small asyncio factory of its own
(the producer's is ``producer._connect``); both read the URL with ``rpa_bus.parse_redis_url``.

- One server (``redis://``, ``rediss://``, ``unix://``): ``Redis.from_url``, as always.
- Sentinel: ``Sentinel(...).master_for(service)``, a plain ``Redis`` whose pool asks the
  sentinels for the current master whenever it opens a connection, drops idle connections
  to a previous master when the answer changes, and turns a READONLY reply (the old master
  was demoted) into a ``ConnectionError``, which the hub treats as a transient outage.
- Cluster: not served by the relay yet (one reader per bucket is still to come); refused
  with a ``ConfigError`` that says so.

Every client: explicit timeouts, RESP2, no retries inside redis-py (the hub retries with its
own backoff and tells subscribers ``unavailable`` meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from rpa_bus import ConfigError, RedisTarget, Settings

NodeClient = Callable[[str, int], aioredis.Redis]


def redis_client(bus: Settings) -> aioredis.Redis:
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
    raise ConfigError(
        f"the relay does not run on Redis Cluster yet ({target.redacted()}): point it at one "
        "server or a Sentinel-watched service"
    )


def node_client_factory(bus: Settings) -> NodeClient | None:
    """For Sentinel, a maker of clients pinned to one server (``host``, ``port``), so that
    CLIENT UNBLOCK and CLIENT KILL reach the server the reader's connection is on (client
    ids are per server: the same id on the new master is somebody else). ``None`` for one
    server, where the command pool always reaches the reader's server."""
    target = bus.target
    if target.topology != "sentinel":
        return None
    kwargs = _node_kwargs(bus, target)

    def make(host: str, port: int) -> aioredis.Redis:
        return aioredis.Redis(host=host, port=port, db=target.db, **kwargs)

    return make


async def close_client(client: aioredis.Redis) -> None:
    """Close a client from ``redis_client``, with a Sentinel client's sentinel connections
    (``aclose()`` of the master client leaves those open)."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
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
