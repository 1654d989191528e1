"""Plain HTTP on the relay's port: /healthz, /metrics and the dashboard's static files.

Answers are ``Reply`` values; the server (aiohttp, or websockets while kept) writes them.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay._stats import Stats

if TYPE_CHECKING:
    from relay._hub import Hub

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}

PLACEHOLDER: Final = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rpa-bus relay</title></head>
<body><h1>rpa-bus relay</h1>
<p>The dashboard is not installed in this build. The WebSocket endpoint is <code>/ws</code>;
health is at <a href="/healthz">/healthz</a> and metrics at <a href="/metrics">/metrics</a>.</p>
</body></html>
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, whichever server library writes it."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    cache: str = "no-cache"

    def all_headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Cache-Control", self.cache),
            ("X-Content-Type-Options", "nosniff"),
            *self.headers,
        ]


def response(status: int, body: bytes, content_type: str, *, cache: str = "no-cache") -> Reply:
    return Reply(status, body, content_type, cache=cache)


def text(status: int, message: str) -> Reply:
    return response(status, message.encode(), "text/plain; charset=utf-8")


def error_json(status: int, code: str, message: str) -> Reply:
    """The 4xx/5xx JSON body of the HTTP doors: ``{"error": {"code", "message"}}``."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return response(status, body, "application/json")


def method_not_allowed(method: str, allow: str = "GET, HEAD") -> Reply:
    reply = text(405, f"method {method[:32]!r} not allowed; use {allow}\n")
    return Reply(reply.status, reply.body, reply.content_type, (("Allow", allow),))


def resolve_static(path: str, root: Path = STATIC_DIR) -> Path | None:
    """The file under ``root`` that ``path`` names, or None; never anything outside it."""
    if "\x00" in path or "\\" in path:
        return None
    relative = path.lstrip("/") or "index.html"
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


async def static_response(path: str, root: Path = STATIC_DIR) -> Reply:
    file = resolve_static(path, root)
    if file is None:
        if path in ("/", "/index.html"):
            return response(200, PLACEHOLDER, _TYPES[".html"])
        return text(404, "not found\n")
    body = await asyncio.to_thread(file.read_bytes)
    kind = _TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0]
    return response(200, body, kind or "application/octet-stream")


class RelayCollector(Collector):
    """Reads the relay's plain counters at scrape time."""

    def __init__(self, stats: Stats, name: str, hub: Hub, *, min_replicas: int = 0) -> None:
        self._stats = stats
        self._name = name
        self._hub = hub
        self._min_replicas = min_replicas

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        labels = ["relay"]
        value = [self._name]

        def gauge(name: str, doc: str, number: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(value, number)
            return g

        def counter(name: str, doc: str, number: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(value, number)
            return c

        yield gauge("rpa_relay_connections", "Open WebSocket connections.", s.connections)
        if s.replicas:
            per_master = GaugeMetricFamily(
                "rpa_relay_master_replicas",
                "Online replicas of each master (read with RPA_BUS_MIN_REPLICAS set).",
                labels=["relay", "master"],
            )
            for master, count in sorted(s.replicas.items()):
                per_master.add_metric([self._name, master], count)
            yield per_master
            need = self._min_replicas
            yield gauge(
                "rpa_relay_masters_below_min_replicas",
                "Masters with fewer online replicas than RPA_BUS_MIN_REPLICAS: writes to "
                "them are not delivered, and producers' batches to them wait.",
                sum(count < need for count in s.replicas.values()),
            )
        yield gauge("rpa_relay_subscriptions", "Active subscriptions.", s.subscriptions)
        yield gauge("rpa_relay_tailed_streams", "Streams read with the group.", self._hub.tailed)
        yield gauge(
            "rpa_relay_readers",
            "Blocking readers: 1 on one server, one per active hash slot on a cluster.",
            self._hub.readers,
        )
        yield gauge("rpa_relay_queued_frames", "Frames in outbound queues.", s.queued_frames)
        yield gauge("rpa_relay_queued_bytes", "Bytes in outbound queues.", s.queued_bytes)
        yield gauge(
            "rpa_relay_lag_seconds",
            "Age of the newest entry of the last batch read, when it was fanned out.",
            s.lag_s,
        )
        yield gauge("rpa_relay_redis_up", "1 if Redis answered the last call.", s.redis_up)
        yield counter("rpa_relay_events_out", "Event frames queued to clients.", s.events_out)
        replays = CounterMetricFamily(
            "rpa_relay_replays",
            "Replays that reached live (or failed), by outcome: live, gap, reset, catch_up "
            "(a slow client caught up), error.",
            labels=[*labels, "outcome"],
        )
        for outcome in ("live", "gap", "reset", "catch_up", "error"):
            replays.add_metric([*value, outcome], s.replays.get(outcome, 0))
        yield replays
        yield counter("rpa_relay_gaps", "Gap frames sent (history trimmed).", s.gaps)
        yield counter(
            "rpa_relay_archive_events_out",
            "Events replayed from the archive (past what Redis retains).",
            s.archive_events_out,
        )
        yield counter(
            "rpa_relay_archive_unavailable",
            "Replays told the archive was unavailable (they wait for it).",
            s.archive_unavailable,
        )
        yield counter("rpa_relay_resets", "Reset frames sent (stream recreated).", s.resets)
        yield counter(
            "rpa_relay_slow_switches",
            "Live subscriptions switched to catching up (connection queue full).",
            s.slow_switches,
        )
        yield counter(
            "rpa_relay_slow_closes", "Connections closed 1013 (took nothing).", s.slow_closes
        )
        yield counter(
            "rpa_relay_total_bound_switches",
            "Live subscriptions switched to catching up because the relay-wide queue bound "
            "(TOTAL_QUEUE_BYTES) was reached.",
            s.total_bound_switches,
        )
        yield counter(
            "rpa_relay_policy_closes",
            "Connections closed 1008 (op flood, or control frames left unread past the bound).",
            s.policy_closes,
        )
        yield counter("rpa_relay_rate_limited", "Ops refused by the rate limit.", s.rate_limited)
        yield counter(
            "rpa_relay_refused_connections",
            "Connections refused (origin, per-IP limit).",
            s.refused_connections,
        )


def metrics_response(registry: CollectorRegistry) -> Reply:
    return response(200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8")
