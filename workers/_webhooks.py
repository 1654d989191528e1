"""``WebhookService``: the webhook sender process (``rpa-bus webhooks``).

It runs the shared consumer-group loop (``GroupWorker``, group ``P:webhooks``) with a
``WebhookSink`` that queues delivery jobs in each matching endpoint's outbox, one
``EndpointSender`` per endpoint that delivers while this process holds that endpoint's
lease, and optionally a small HTTP server with ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rpa_bus import ConfigError, EnvReader, Settings
from rpa_bus.redisio import (
    REDIS_FAILURES,
    AsyncClient,
    GroupSettings,
    GroupWorker,
    async_client,
    cancel_and_wait,
    check_config_async,
    close_async,
    is_retryable,
)
from workers._endpoints import Endpoint, load_endpoints
from workers._outbox import EndpointSender, Metrics, SenderSettings, WebhookKeys, WebhookSink

log = logging.getLogger(__name__)

DEFAULT_FILE = "webhooks.toml"


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Everything ``rpa-bus webhooks`` runs with; ``from_env`` reads ``RPA_BUS_WEBHOOKS_*``."""

    bus: Settings
    endpoints: tuple[Endpoint, ...]
    consumer: str = field(default_factory=default_consumer)
    sender: SenderSettings = field(default_factory=SenderSettings)
    claim_idle_ms: int = 30_000
    max_backlog: int = 100_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics server
    # The endpoints file, watched every ``reload_s`` seconds (0: never) for changes.
    config_path: Path | None = None
    reload_s: float = 5.0

    def __post_init__(self) -> None:
        names = [ep.name for ep in self.endpoints]
        if len(set(names)) != len(names):
            raise ConfigError("endpoint names must be unique")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be 0..65535, got {self.metrics_port}")

    @classmethod
    def from_env(
        cls, *, bus: Settings, path: Path, environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> WebhookSettings:  # fmt: skip
        """Endpoints from ``path``; the rest from ``RPA_BUS_WEBHOOKS_*``; overrides win."""
        env = EnvReader(environ, prefix="RPA_BUS_WEBHOOKS_")
        sender_values: dict[str, Any] = {
            "retry_initial_s": env.number("RETRY_INITIAL_S", 1.0, lo=0.001, hi=3600),
            "retry_max_s": env.number("RETRY_MAX_S", 300.0, lo=0.001, hi=86400),
            "lease_ms": env.integer("LEASE_MS", 10_000, lo=100, hi=600_000),
            "concurrency": env.integer("CONCURRENCY", 16, lo=1, hi=1024),
            "body_cap_bytes": env.integer("BODY_CAP_BYTES", 64 * 1024, lo=0, hi=16 << 20),
        }
        for key in list(sender_values):
            if overrides.get(key) is not None:
                sender_values[key] = overrides.pop(key)
            else:
                overrides.pop(key, None)
        if sender_values["retry_initial_s"] > sender_values["retry_max_s"]:
            raise ConfigError("retry_initial_s must not exceed retry_max_s")
        values: dict[str, Any] = {
            "claim_idle_ms": env.integer("CLAIM_IDLE_MS", 30_000, lo=300),
            "max_backlog": env.integer("MAX_BACKLOG", 100_000, lo=1),
            "metrics_host": env.text("METRICS_HOST", "127.0.0.1"),
            "metrics_port": env.integer("METRICS_PORT", 0, lo=0, hi=65535),
            "reload_s": env.number("RELOAD_S", 5.0, lo=0.0, hi=3600.0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(
            bus=bus,
            endpoints=tuple(load_endpoints(path)),
            config_path=path,
            sender=SenderSettings(**sender_values),
            **values,
        )


def _signature(path: Path) -> tuple[int, int] | None:
    """What tells a changed file: modification time and size (None: unreadable)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class WebhookService:
    """The webhook sender: an async context manager; ``run()`` until ``close()``."""

    def __init__(self, settings: WebhookSettings, *, client: AsyncClient | None = None) -> None:
        self.settings = settings
        self.keys = WebhookKeys(settings.bus.prefix)
        self.metrics = Metrics()
        self._own_client = client is None
        self._client: AsyncClient = client if client is not None else async_client(settings.bus)
        self.sink = WebhookSink(
            self._client,
            self.keys,
            settings.endpoints,
            metrics=self.metrics,
            seen_ttl_s=settings.bus.retention_s,
            max_backlog=settings.max_backlog,
            dead_maxlen=settings.sender.dead_maxlen,
        )
        # A blocking outbox read must end well inside the socket timeout.
        sender = replace(
            settings.sender,
            block_ms=max(
                1, min(settings.sender.block_ms, int(settings.bus.socket_timeout_s * 500))
            ),
        )
        self._sender_settings = sender
        self.senders = [self._new_sender(ep) for ep in settings.endpoints]
        self._sender_tasks: dict[EndpointSender, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None
        self.group = GroupWorker(
            settings.bus,
            GroupSettings(
                kind="webhooks",
                consumer=settings.consumer,
                kinds=frozenset({"session", "sessions", "monitor"}),
                claim_idle_ms=settings.claim_idle_ms,
                block_ms=sender.block_ms,
            ),
            self.sink,
            client=self._client,
        )
        self._closed = asyncio.Event()
        self._done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        self._running = False
        self._shut = False

    def _new_sender(self, endpoint: Endpoint) -> EndpointSender:
        return EndpointSender(
            self._client,
            self.keys,
            endpoint,
            holder=self.settings.consumer,
            settings=self._sender_settings,
            metrics=self.metrics,
        )

    async def __aenter__(self) -> WebhookService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    async def start(self) -> None:
        """Check the deployment's P:config (if Redis answers), start /metrics."""
        try:
            await check_config_async(self._client, self.settings.bus.keys)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            # As the relay: start anyway; the group loop and the senders retry until Redis
            # is back (the group loop runs the same P:config check when it connects).
            log.warning("Redis unavailable at start (%s); retrying in the background", exc)
        if self.settings.metrics_port:
            await self._serve_metrics()

    async def _serve_metrics(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.metrics_host, self.settings.metrics_port)
        await site.start()
        self.metrics_port = self._runner.addresses[0][1] if self._runner.addresses else None
        log.info("webhooks: /metrics on %s:%s", self.settings.metrics_host, self.metrics_port)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _handle_health(self, request: web.Request) -> web.Response:
        """200 while the group loop reaches Redis, else 503 (a healthcheck restarts it)."""
        up = self.group.stats.redis_up
        body = {
            "status": "ok" if up else "redis unreachable",
            "consumer": self.settings.consumer,
            "delivering": sorted(s.endpoint.name for s in self.senders if s.holding),
            "streams": self.group.stats.tailed,
        }
        return web.json_response(body, status=200 if up else 503)

    async def run(self) -> None:
        """Read the streams and deliver until ``close()``."""
        self._running = True
        for sender in self.senders:
            self._start_sender(sender)
        group = asyncio.create_task(self.group.run(), name="webhooks:group")
        watcher = asyncio.create_task(self._watch(), name="webhooks:watch")
        closed = asyncio.create_task(self._closed.wait(), name="webhooks:closed")
        try:
            done, _ = await asyncio.wait([group, watcher, closed], return_when="FIRST_COMPLETED")
            for task in (group, watcher):
                if task in done:
                    task.result()  # a part that stopped on its own: raise why
            if self._failure is not None:
                raise self._failure
        finally:
            self.group.close()
            for sender in self.senders:
                sender.close()
            # Senders release their leases on the way out; give them a moment to do it.
            tasks = [group, *self._sender_tasks.values()]
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            await cancel_and_wait([*pending, watcher, closed])
            await self._shutdown()

    def _start_sender(self, sender: EndpointSender) -> None:
        async def guarded() -> None:
            try:
                await sender.run()
            except Exception as exc:  # a permanent failure (e.g. a refused script): stop all
                self._failure = exc
                self._closed.set()
                raise

        task = asyncio.create_task(guarded(), name=f"webhooks:{sender.endpoint.name}")
        self._sender_tasks[sender] = task

    async def _watch(self) -> None:
        """Reload the endpoints file when it changes; a bad file is logged and ignored."""
        path, every_s = self.settings.config_path, self.settings.reload_s
        if path is None or every_s <= 0:
            await self._closed.wait()
            return
        seen = _signature(path)
        while True:
            await asyncio.sleep(every_s)
            now = _signature(path)
            if now == seen:
                continue
            seen = now
            try:
                endpoints = await asyncio.to_thread(load_endpoints, path)
            except ConfigError as exc:
                log.error("webhooks: %s changed but is not used: %s", path, exc)
                continue
            await self.apply(endpoints)

    async def apply(self, endpoints: Sequence[Endpoint]) -> None:
        """Serve ``endpoints`` from now on: new ones start, removed ones stop (their outbox
        stays in Redis), changed ones restart with the new settings."""
        wanted = {ep.name: ep for ep in endpoints}
        if len(wanted) != len(endpoints):
            raise ConfigError("endpoint names must be unique")
        keep = [s for s in self.senders if wanted.get(s.endpoint.name) == s.endpoint]
        stop = [s for s in self.senders if s not in keep]
        kept_names = {s.endpoint.name for s in keep}
        start = [self._new_sender(ep) for ep in endpoints if ep.name not in kept_names]
        self.sink.set_endpoints(endpoints)
        for sender in stop:
            sender.close()
        stopping = [self._sender_tasks.pop(s) for s in stop if s in self._sender_tasks]
        if stopping:
            _, pending = await asyncio.wait(stopping, timeout=10.0)
            await cancel_and_wait(pending)
        self.senders = [*keep, *start]
        if self._running:
            for sender in start:
                self._start_sender(sender)
        if stop or start:
            log.info(
                "webhooks: endpoints now %s (started %s, stopped %s)",
                sorted(wanted), sorted(s.endpoint.name for s in start),
                sorted(s.endpoint.name for s in stop),
            )  # fmt: skip

    async def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._running:  # a GroupWorker that never ran has nothing to wait for
            await self.group.wait_closed()
        if self._own_client:
            await close_async(self._client)
        self._done.set()

    def close(self) -> None:
        """Stop reading and delivering; idempotent. ``wait_closed()`` waits for it."""
        self._closed.set()
        self.group.close()
        for sender in self.senders:
            sender.close()

    async def wait_closed(self) -> None:
        if not self._running:
            await self._shutdown()
        await self._done.wait()
