"""Reads for the operator commands (`sessions`, `status`): plain, bounded redis-py calls."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import orjson
import redis

from producer import list_journals, target_of
from rpa_bus import Keys, Settings, state_from_meta
from rpa_bus.redisio import (
    ShardReplicas,
    SyncClient,
    master_label,
    replica_counts,
    sync_client,
)

# What redis-py returns for XRANGE/XREVRANGE on a client without decode_responses.
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def connect(settings: Settings) -> SyncClient:
    """A client for any URL form (one server, Sentinel, Cluster), bounded by the settings'
    timeouts, no retries. A Cluster client reads the slot map here: it may raise
    ``redis.RedisError`` already."""
    return sync_client(settings)


def _age_s(ts: str | None, now_s: float) -> float | None:
    if not ts:
        return None
    try:
        return max(0.0, now_s - datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SessionRow:
    session: str
    status: str | None
    step: int | None
    total: int | None
    percent: float | None
    message: str | None
    error: str | None
    updated: str | None
    age_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_sessions(client: SyncClient, keys: Keys, *, limit: int = 50) -> list[SessionRow]:
    """The newest ``limit`` sessions named in the lifecycle index that still have state.

    Reads the index backwards in pages (bounded: at most 20 pages), then one pipelined
    HGETALL per session.
    """
    seen: list[str] = []
    last = "+"
    for _ in range(20):
        page = cast(Entries, client.xrevrange(keys.sessions, max=last, count=500))
        if not page:
            break
        for _entry_id, fields in page:
            try:
                sid = orjson.loads(fields[b"e"]).get("session")
            except (KeyError, orjson.JSONDecodeError):
                continue
            if isinstance(sid, str) and sid not in seen:
                seen.append(sid)
        if len(seen) >= limit:
            break
        last = "(" + page[-1][0].decode()
    seen = seen[:limit]
    pipe = client.pipeline(transaction=False)
    for sid in seen:
        pipe.hgetall(keys.meta(sid))
    now = time.time()
    rows: list[SessionRow] = []
    for sid, meta in zip(seen, pipe.execute(), strict=True):
        if not meta:
            continue  # expired after its retention period
        state = state_from_meta(meta)
        rows.append(
            SessionRow(
                session=sid,
                status=state.get("status"),
                step=state.get("step"),
                total=state.get("total"),
                percent=state.get("percent"),
                message=state.get("message"),
                error=state.get("error"),
                updated=state.get("updated"),
                age_s=_age_s(state.get("updated"), now),
            )
        )
    return rows


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True, slots=True)
class MonitorRow:
    host: str
    age_s: float | None
    active_sessions: int | None
    relays: dict[str, dict[str, int]]


def list_monitors(client: SyncClient, keys: Keys, *, now_ms: int) -> list[MonitorRow]:
    """Every host in the monitors index with the age of its last sample and the bus
    health that sample reported (relay lag and pending, active sessions)."""
    hosts = cast(dict[bytes, bytes], client.hgetall(keys.monitors))
    names = sorted(h.decode() for h in hosts)
    pipe = client.pipeline(transaction=False)
    for host in names:
        pipe.xrevrange(keys.monitor(host), count=10)
    rows: list[MonitorRow] = []
    for host, entries in zip(names, pipe.execute(), strict=True):
        health: dict[str, Any] = {}
        for _id, fields in cast(Entries, entries):
            try:
                event = orjson.loads(fields[b"e"])
            except (KeyError, orjson.JSONDecodeError):
                continue
            if event.get("type") == "metrics" and isinstance(event.get("data"), dict):
                bus = event["data"].get("bus")
                health = bus if isinstance(bus, dict) else {}
                break
        last_ms = int(hosts[host.encode()])
        rows.append(
            MonitorRow(
                host=host,
                age_s=max(0.0, (now_ms - last_ms) / 1000),
                active_sessions=health.get("active_sessions"),
                relays=health.get("relays") or {},
            )
        )
    return rows


def redis_info(client: SyncClient) -> dict[str, Any]:
    """Version, memory, clients, uptime; on a cluster summed over the masters (uptime:
    the youngest), with ``masters`` counting them."""
    if not isinstance(client, redis.RedisCluster):
        info: dict[str, Any] = client.info()
        return {
            "version": info.get("redis_version"),
            "used_memory": info.get("used_memory"),
            "connected_clients": info.get("connected_clients"),
            "uptime_s": info.get("uptime_in_seconds"),
        }
    infos = [
        client.get_redis_connection(node).info()
        for node in client.get_primaries()  # type: ignore[no-untyped-call]
    ]
    return {
        "version": infos[0].get("redis_version") if infos else None,
        "used_memory": sum(int(i.get("used_memory", 0)) for i in infos),
        "connected_clients": sum(int(i.get("connected_clients", 0)) for i in infos),
        "uptime_s": min((int(i.get("uptime_in_seconds", 0)) for i in infos), default=None),
        "masters": len(infos),
    }


def replica_report(client: SyncClient, *, min_replicas: int) -> list[ShardReplicas]:
    """`rpa-bus status`: every master's online replicas (its INFO replication), against
    ``min_replicas`` (``RPA_BUS_MIN_REPLICAS``); on a cluster one INFO per master."""
    if isinstance(client, redis.RedisCluster):
        infos = {
            node.name: client.get_redis_connection(node).info("replication")
            for node in client.get_primaries()  # type: ignore[no-untyped-call]
        }
    else:
        infos = {master_label(client): client.info("replication")}
    return replica_counts(infos, min_replicas=min_replicas)


@dataclass(frozen=True, slots=True)
class JournalRow:
    target: str | None  # None: a journal from before journals named their target
    prefix: str | None
    events: int
    live: bool  # its producer is running
    path: str


def waiting_journals(settings: Settings) -> list[JournalRow]:
    """Producer journals in ``settings.spool_dir`` that wait for another Redis target (or
    prefix) than ``settings``': no producer writing here will deliver them. For `status`."""
    here = (target_of(settings), settings.prefix)
    return [
        JournalRow(j.target, j.prefix, j.events, j.live, str(j.path))
        for j in list_journals(settings.spool_dir)
        if j.target is not None and (j.target, j.prefix) != here
    ]


def format_journal(row: JournalRow) -> str:
    owner = "its producer is running" if row.live else "waiting for a producer writing there"
    return (
        f"journal   {row.events} events for {row.target} (prefix {row.prefix}), {owner}: {row.path}"
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def list_webhooks(client: SyncClient, prefix: str) -> list[dict[str, Any]]:
    """Webhook endpoints the running senders registered: backlog (jobs in the outbox),
    dead letters, paused, whether a process delivers, last error and when (for `status`)."""
    from workers import WebhookKeys, endpoint_status

    return [row.as_dict() for row in endpoint_status(client, WebhookKeys(prefix))]
