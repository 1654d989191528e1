"""rpa-bus's shared I/O room: what every part does with Redis, the same way.

Connection forms and their timeouts (``sync_client``, ``async_client``, node-pinned
clients), the one transient-error classifier (``is_retryable``), capped jittered
``Backoff``, rate-limited outage logging, the ``P:config`` handshake, task ownership, and
the consumer-group loop the workers share (``GroupWorker``: leases, discovery, reading).
The producer, the relay, the monitor, the workers and the CLI import this package; the
pure contract modules of ``rpa_bus`` never do (a test keeps it so).
"""

from __future__ import annotations

from rpa_bus.redisio._clients import (
    Address,
    AsyncClient,
    NodeClient,
    SyncClient,
    async_client,
    async_node_client,
    close_async,
    close_sync,
    node_client_factory,
    node_kwargs,
    sync_client,
)
from rpa_bus.redisio._config import (
    check_config,
    check_config_async,
    check_config_reply,
    config_commands,
)
from rpa_bus.redisio._group import (
    Entry,
    GroupSettings,
    GroupSink,
    GroupStats,
    GroupWorker,
)
from rpa_bus.redisio._retry import (
    REDIS_FAILURES,
    RETRYABLE_TYPES,
    Backoff,
    RateLimitedLog,
    is_retryable,
)
from rpa_bus.redisio._tasks import cancel_and_wait

__all__ = [
    "REDIS_FAILURES",
    "RETRYABLE_TYPES",
    "Address",
    "AsyncClient",
    "Backoff",
    "Entry",
    "GroupSettings",
    "GroupSink",
    "GroupStats",
    "GroupWorker",
    "NodeClient",
    "RateLimitedLog",
    "SyncClient",
    "async_client",
    "async_node_client",
    "cancel_and_wait",
    "check_config",
    "check_config_async",
    "check_config_reply",
    "close_async",
    "close_sync",
    "config_commands",
    "is_retryable",
    "node_client_factory",
    "node_kwargs",
    "sync_client",
]
