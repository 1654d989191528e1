"""rpa-bus's shared I/O room: what every part does with Redis, the same way.

Connection forms and their timeouts (``sync_client``, ``async_client``, node-pinned
clients), the one transient-error classifier (``is_retryable``), capped jittered
``Backoff``, rate-limited outage logging, the ``P:config`` handshake, task ownership,
which masters have fewer replicas than ``min_replicas`` (``shards_below``), and the
consumer-group loop the workers share (``GroupWorker``: leases, discovery, reading).
The producer, the relay, the monitor, the workers and the CLI import this package; the
pure contract modules of ``rpa_bus`` never do (a test keeps it so).
"""

from __future__ import annotations

from rpa_bus.redisio._archive_lag import ArchiveLag, archive_lag
from rpa_bus.redisio._clients import (
    Address,
    AsyncClient,
    NodeClient,
    QueuedPool,
    SlotMap,
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
from rpa_bus.redisio._replicas import (
    ShardReplicas,
    master_label,
    online_replicas,
    replica_counts,
    shards_below,
)
from rpa_bus.redisio._retry import (
    GUARDED_FAILURES,
    REDIS_FAILURES,
    RETRYABLE_TYPES,
    Backoff,
    RateLimitedLog,
    close_race_as_connection_error,
    is_close_race,
    is_retryable,
)
from rpa_bus.redisio._scripts import (
    APPEND_LUA,
    APPEND_SHA,
    INDEX_MAXLEN,
    ONCE_LUA,
    ONCE_SHA,
    SCRIPTS,
    seen_key,
    trim_args,
)
from rpa_bus.redisio._tasks import cancel_and_wait, settled

__all__ = [
    "APPEND_LUA",
    "APPEND_SHA",
    "GUARDED_FAILURES",
    "INDEX_MAXLEN",
    "ONCE_LUA",
    "ONCE_SHA",
    "REDIS_FAILURES",
    "RETRYABLE_TYPES",
    "SCRIPTS",
    "Address",
    "ArchiveLag",
    "AsyncClient",
    "Backoff",
    "Entry",
    "GroupSettings",
    "GroupSink",
    "GroupStats",
    "GroupWorker",
    "NodeClient",
    "QueuedPool",
    "RateLimitedLog",
    "ShardReplicas",
    "SlotMap",
    "SyncClient",
    "archive_lag",
    "async_client",
    "async_node_client",
    "cancel_and_wait",
    "check_config",
    "check_config_async",
    "check_config_reply",
    "close_async",
    "close_race_as_connection_error",
    "close_sync",
    "config_commands",
    "is_close_race",
    "is_retryable",
    "master_label",
    "node_client_factory",
    "node_kwargs",
    "online_replicas",
    "replica_counts",
    "seen_key",
    "settled",
    "shards_below",
    "sync_client",
    "trim_args",
]
