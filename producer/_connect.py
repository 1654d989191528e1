"""Clients for every connection form of ``RPA_BUS_REDIS_URL``, sync and asyncio.

One server (``redis://``, ``rediss://``, ``unix://``) -> ``Redis.from_url``; Sentinel ->
redis-py's ``Sentinel(...).master_for(service)`` (a plain ``Redis`` whose pool asks the
sentinels for the current master on each new connection, and drops a connection that
meets READONLY after a failover); Cluster -> ``RedisCluster(startup_nodes=...)``.

Every client gets the settings' explicit timeouts and no retries inside redis-py: callers
(the producer's flusher, the monitor's loop) retry with their own backoff, keeping events
safe meanwhile, and a CLI command fails within its time bound. The monitor and the CLI
import these (they may import the producer); the relay has its own async factory.
"""

from __future__ import annotations

from typing import Any, cast

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


def _common(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
    }
    if target.topology != "single":
        if target.username is not None:
            kwargs["username"] = target.username
        if target.password is not None:
            kwargs["password"] = target.password
        if target.tls:
            kwargs["ssl"] = True
    return kwargs


def node_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for a plain ``Redis(host=, port=)`` client to one node of the
    configured deployment (credentials, TLS, timeouts, no retries)."""
    target = settings.target
    return {**_common(settings, target), "retry": Retry(NoBackoff(), 0)}


def sync_client(settings: Settings) -> SyncClient:
    """A sync client for ``settings.redis_url``.

    A Cluster client reads the slot map when built and raises ``redis.RedisError`` if no
    seed node answers (redis-py's ``RedisClusterException`` is translated to
    ``redis.ConnectionError``); one server and Sentinel connect on first use.
    """
    target = settings.target
    kwargs = _common(settings, target)
    if target.topology == "single":
        return redis.Redis.from_url(
            target.url, retry=Retry(NoBackoff(), 0), health_check_interval=0, **kwargs
        )
    if target.topology == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs=_sentinel_kwargs(settings, target),
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )
        master = sentinel.master_for(str(target.service), db=target.db)  # type: ignore[no-untyped-call]
        return cast(redis.Redis, master)
    try:
        return redis.RedisCluster(
            startup_nodes=[
                ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in target.hosts
            ],
            # No retries in redis-py (MOVED/ASK redirections are still followed): the
            # callers refresh the slot map and retry with their own backoff.
            retry=Retry(NoBackoff(), 0),
            require_full_coverage=False,
            **kwargs,
        )
    except redis.exceptions.RedisClusterException as exc:
        raise redis.ConnectionError(
            f"no Redis Cluster seed node answered ({target.redacted()}): {exc}"
        ) from exc


def async_client(settings: Settings) -> AsyncClient:
    """An ``redis.asyncio`` client for ``settings.redis_url``; connects on first use."""
    target = settings.target
    kwargs = _common(settings, target)
    if target.topology == "single":
        return aredis.Redis.from_url(
            target.url, retry=AsyncRetry(NoBackoff(), 0), health_check_interval=0, **kwargs
        )
    if target.topology == "sentinel":
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs=_sentinel_kwargs(settings, target),
            retry=AsyncRetry(NoBackoff(), 0),
            **kwargs,
        )
        return cast(aredis.Redis, sentinel.master_for(str(target.service), db=target.db))
    return aredis.RedisCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in target.hosts],
        retry=AsyncRetry(NoBackoff(), 0),
        require_full_coverage=False,
        **kwargs,
    )


def _sentinel_kwargs(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    # The sentinels get the timeouts (and TLS), not the data nodes' credentials.
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
    }
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


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
