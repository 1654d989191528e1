"""How many replicas each master has, from INFO replication replies: pure, no I/O.

With ``RPA_BUS_MIN_REPLICAS=N`` a producer counts a batch as written only once WAIT says N
replicas hold it. A master with fewer than N connected replicas (after a failover promoted
its only replica, say) makes every batch to it wait forever, while the producer logs one
throttled warning. The monitor (an alert), ``rpa-bus status`` and the relay's ``/metrics``
compute "which masters are below N" with these functions from replies they read
themselves (``INFO replication`` of each master, as redis-py parses it); no function here
sends a command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis


def online_replicas(info: Mapping[str, Any]) -> int:
    """Replicas of this node that are connected and in sync (``state=online``).

    A replica still loading the master's snapshot (``wait_bgsave``, ``send_bulk``) does not
    acknowledge WAIT yet, so it does not count. A node whose reply lists no replica lines
    (an old or unusual server) counts ``connected_slaves``. A node that is itself a
    replica (a demoted master) has none.
    """
    if info.get("role") not in (None, "master"):
        return 0
    lines = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
    if not lines:
        return int(info.get("connected_slaves", 0) or 0)
    online = 0
    for line in lines:
        # redis-py parses "ip=...,port=...,state=online,..." into a dict; a raw reply
        # keeps the string.
        state = line.get("state") if isinstance(line, Mapping) else _field(str(line), "state")
        online += state == "online"
    return online


def _field(line: str, name: str) -> str | None:
    for part in line.split(","):
        key, sep, value = part.partition("=")
        if sep and key == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ShardReplicas:
    """One master (``host:port``, or the name its caller knows it by) and its replicas."""

    master: str
    replicas: int
    min_replicas: int

    @property
    def below(self) -> bool:
        return self.replicas < self.min_replicas


def replica_counts(
    infos: Mapping[str, Mapping[str, Any]], *, min_replicas: int
) -> list[ShardReplicas]:
    """Every master of ``infos`` (master -> its INFO replication reply), sorted by name."""
    return [
        ShardReplicas(master, online_replicas(info), min_replicas)
        for master, info in sorted(infos.items())
    ]


def shards_below(
    infos: Mapping[str, Mapping[str, Any]], *, min_replicas: int
) -> list[ShardReplicas]:
    """The masters with fewer online replicas than ``min_replicas`` (none when it is 0)."""
    return [s for s in replica_counts(infos, min_replicas=min_replicas) if s.below]


def master_label(client: redis.Redis) -> str:
    """How a one-server or Sentinel client names its master: ``host:port``, the Sentinel
    service as ``sentinel:NAME`` (its address changes with each failover), or the socket
    path. (On a cluster, each master is ``ClusterNode.name``, ``host:port``.)"""
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service:
        return f"sentinel:{service}"
    kwargs = pool.connection_kwargs
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return str(kwargs.get("path") or "master")
