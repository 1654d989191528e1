"""The relay's plain counters."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass(eq=False)
class Stats:
    """Plain counters; the metrics collector reads them at scrape time (no per-event cost)."""

    connections: int = 0
    # With RPA_BUS_MIN_REPLICAS: each master's online replicas, read every few seconds.
    replicas: dict[str, int] = field(default_factory=dict)
    subscriptions: int = 0
    events_out: int = 0
    replays: collections.Counter[str] = field(default_factory=collections.Counter)
    gaps: int = 0
    # Replayed from the archive (past Redis's retention); replays told the store was down.
    archive_events_out: int = 0
    archive_unavailable: int = 0
    resets: int = 0
    slow_switches: int = 0
    slow_closes: int = 0
    policy_closes: int = 0
    total_bound_switches: int = 0
    rate_limited: int = 0
    refused_connections: int = 0
    lag_s: float = 0.0
    redis_up: bool = False
    queued_frames: int = 0
    queued_bytes: int = 0
