"""Relay settings: one frozen dataclass, read from ``RPA_BUS_RELAY_*`` once, by the CLI."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rpa_bus import ConfigError, EnvReader, Settings

# RPA_BUS_RELAY_SERVER chose the server library until issue 13 removed the websockets
# server; aiohttp is the only one. The variable is still read so that a deployment that
# asks for the removed server is told so at start instead of silently getting aiohttp.
REMOVED_SERVER_SETTING = "SERVER"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only serves this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A POST body is read whole before it is checked: bounded so that no setting lets one
# request hold much memory.
API_MIN_BODY_BYTES = 1024
API_MAX_BODY_BYTES = 64 * 1024 * 1024
API_MAX_EVENTS_PER_POST = 10_000


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Bounds of the HTTP API (docs/http.md). Units live in the names.

    The first six are settable as ``RPA_BUS_API_MAX_BODY_BYTES``,
    ``RPA_BUS_API_MAX_EVENTS_PER_POST``, ``RPA_BUS_API_POSTS_PER_S``,
    ``RPA_BUS_API_POSTS_BURST``, ``RPA_BUS_API_READS_PER_S`` and ``RPA_BUS_API_READS_BURST``
    (``from_env``).
    """

    # Largest POST body; past it 413 and nothing appended.
    max_body_bytes: int = 1024 * 1024
    max_events_per_post: int = 500
    # Token bucket per client address for POSTs: sustained requests per second and burst.
    posts_per_s: float = 50.0
    posts_burst: int = 100
    # The same for reads (GET under /v1/ but the spec): a search may scan thousands of index
    # entries and archive rows, so one client address cannot ask for them without bound.
    # Generous: a backend that polls many sessions' state through one address fits.
    reads_per_s: float = 200.0
    reads_burst: int = 1000
    # Clients whose buckets are remembered (least recently seen forgotten first).
    tracked_clients: int = 10_000
    page_default: int = 100
    page_max: int = 1000
    sessions_default: int = 50
    sessions_max: int = 1000
    jobs_default: int = 100
    jobs_max: int = 1000

    def __post_init__(self) -> None:
        if not API_MIN_BODY_BYTES <= self.max_body_bytes <= API_MAX_BODY_BYTES:
            raise ConfigError(
                f"max_body_bytes must be {API_MIN_BODY_BYTES}..{API_MAX_BODY_BYTES}, "
                f"got {self.max_body_bytes}"
            )
        if not 1 <= self.max_events_per_post <= API_MAX_EVENTS_PER_POST:
            raise ConfigError(
                f"max_events_per_post must be 1..{API_MAX_EVENTS_PER_POST}, "
                f"got {self.max_events_per_post}"
            )
        for name in ("posts_per_s", "reads_per_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "posts_burst", "reads_burst", "tracked_clients",
            "page_default", "sessions_default", "jobs_default",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (
            self.page_max < self.page_default
            or self.sessions_max < self.sessions_default
            or self.jobs_max < self.jobs_default
        ):
            raise ConfigError("page_max, sessions_max and jobs_max must be at least their defaults")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiLimits:
        """Read ``RPA_BUS_API_*``; a bad value is a ``ConfigError`` naming the variable."""
        env = EnvReader(environ, prefix="RPA_BUS_API_")
        d = cls()
        return cls(
            max_body_bytes=env.integer(
                "MAX_BODY_BYTES", d.max_body_bytes, lo=API_MIN_BODY_BYTES, hi=API_MAX_BODY_BYTES
            ),
            max_events_per_post=env.integer(
                "MAX_EVENTS_PER_POST", d.max_events_per_post, lo=1, hi=API_MAX_EVENTS_PER_POST
            ),
            posts_per_s=env.number("POSTS_PER_S", d.posts_per_s, lo=0.001, hi=1e6),
            posts_burst=env.integer("POSTS_BURST", d.posts_burst, lo=1, hi=1_000_000),
            reads_per_s=env.number("READS_PER_S", d.reads_per_s, lo=0.001, hi=1e6),
            reads_burst=env.integer("READS_BURST", d.reads_burst, lo=1, hi=1_000_000),
        )


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything ``Relay`` needs. Units live in the names.

    ``bus`` holds what every part shares (Redis URL, prefix, buckets, timeouts, secret).
    Build it with ``from_env()`` in an entry point; library code passes it around.
    """

    bus: Settings = field(default_factory=Settings)
    host: str = "127.0.0.1"
    port: int = 8765
    name: str = "relay-1"
    # Serve a non-loopback address without a secret (no auth at all).
    insecure: bool = False
    # Allowed ``Origin`` values besides same-origin and no Origin at all; "*" allows any.
    origins: tuple[str, ...] = ()
    # Largest incoming WebSocket message (close 1009 past it).
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    # 0 means no limit.
    max_connections_per_ip: int = 256
    # Token bucket per connection: sustained ops per second and burst.
    ops_per_s: float = 20.0
    ops_burst: int = 50
    # Outbound bound per connection; past it a live subscription switches to catching up.
    queue_frames: int = 1024
    queue_bytes: int = 1024 * 1024
    # Relay-wide bound on queued outbound bytes (all connections); 0 = none. Past it, live
    # subscriptions of connections that are behind switch to catching up from Redis.
    total_queue_bytes: int = 256 * 1024 * 1024
    # websockets' transport write buffer high-water mark (bytes).
    write_limit: int = 32 * 1024
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    # How long a closing handshake may take before the TCP connection is dropped.
    close_timeout_s: float = 5.0
    # A connection whose queue is full and that has taken nothing for this long is closed 1013.
    stall_timeout_s: float = 60.0
    # Blocking XREADGROUP: must stay below the Redis socket timeout.
    block_ms: int = 1000
    read_count: int = 1000
    page_size: int = 1000
    # Live events held per subscription while its replay runs (also at most queue_bytes);
    # past it the buffer is dropped and replay reads Redis again.
    replay_buffer: int = 2_000
    compression: bool = False
    # Bind with SO_REUSEPORT, so several processes share the port (``rpa-bus relay
    # --workers N`` sets it for its workers; the kernel spreads new connections over them).
    reuse_port: bool = False
    # The relay's Redis command pool on one server: at most this many connections (one is
    # the reader's, blocked in XREADGROUP); a command waits for a free one (up to 10 s,
    # relay._relay.REDIS_POOL_WAIT_S). A subscribe storm queues here instead of failing
    # with redis-py's "Too many connections" past 100 (Sentinel and Cluster keep redis-py's
    # own pools). The bound does not save memory measurably (benchmarks.md, "Relay
    # memory and the Redis pool"): it is there so that a storm waits instead of failing.
    redis_connections: int = 64
    # An SSE response sends a comment line this often, so proxies keep it open.
    sse_heartbeat_s: float = 15.0
    # The HTTP API's bounds (RPA_BUS_API_*).
    api: ApiLimits = field(default_factory=ApiLimits)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.block_ms >= self.bus.socket_timeout_s * 1000:
            raise ConfigError(
                f"block_ms ({self.block_ms}) must be below the Redis socket timeout "
                f"({self.bus.socket_timeout_s * 1000:.0f} ms)"
            )
        for name in ("max_frame_bytes", "max_subscriptions", "ops_burst", "queue_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_bytes < 1024:
            raise ConfigError(f"queue_bytes must be >= 1024, got {self.queue_bytes}")
        if self.total_queue_bytes and self.total_queue_bytes < 1024:
            raise ConfigError(
                f"total_queue_bytes must be 0 or >= 1024, got {self.total_queue_bytes}"
            )
        if self.ops_per_s <= 0:
            raise ConfigError(f"ops_per_s must be > 0, got {self.ops_per_s}")
        if self.redis_connections < 4:
            raise ConfigError(f"redis_connections must be >= 4, got {self.redis_connections}")
        if self.sse_heartbeat_s <= 0:
            raise ConfigError(f"sse_heartbeat_s must be > 0, got {self.sse_heartbeat_s}")
        if self.page_size < 1 or self.read_count < 1 or self.replay_buffer < 1:
            raise ConfigError("page_size, read_count and replay_buffer must be >= 1")
        if self.bus.archive_url:
            # An unknown scheme is refused at start; a store that is down is not (the relay
            # serves Redis and answers ``unavailable`` where the archive is needed).
            from rpa_bus.archive import parse_archive_url

            parse_archive_url(self.bus.archive_url)

    @property
    def secret(self) -> str | None:
        return self.bus.secret

    def check_bind(self) -> None:
        """Refuse to serve a non-loopback address without a secret unless ``insecure``."""
        if self.bus.secret is None and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve {self.host!r} without RPA_BUS_SECRET: anyone who can reach "
                "it could read every stream. Set RPA_BUS_SECRET (clients then need a token from "
                "`rpa-bus token`), bind 127.0.0.1, or pass --insecure"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelaySettings:
        """Read ``RPA_BUS_*`` (shared), ``RPA_BUS_RELAY_*`` and ``RPA_BUS_API_*`` variables;
        overrides win.

        Overrides whose value is ``None`` are ignored (unset CLI options). An override named
        ``bus`` replaces the shared settings; ``redis_url``, ``secret`` and ``archive_url``
        go into them.
        """
        bus_overrides = {
            k: overrides.pop(k) for k in ("redis_url", "secret", "archive_url") if k in overrides
        }
        bus = overrides.pop("bus", None) or Settings.from_env(environ, **bus_overrides)
        api = overrides.pop("api", None) or ApiLimits.from_env(environ)
        env = EnvReader(environ, prefix="RPA_BUS_RELAY_")
        _refuse_removed_server(env.raw(REMOVED_SERVER_SETTING))
        d = cls()
        values: dict[str, Any] = {
            "host": env.text("HOST", d.host),
            "port": env.integer("PORT", d.port, hi=65535),
            "name": env.text("NAME", d.name),
            "insecure": env.flag("INSECURE", d.insecure),
            "origins": env.items("ORIGINS", d.origins),
            "max_frame_bytes": env.integer("MAX_FRAME_BYTES", d.max_frame_bytes, lo=64),
            "max_subscriptions": env.integer("MAX_SUBSCRIPTIONS", d.max_subscriptions, lo=1),
            "max_connections_per_ip": env.integer(
                "MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip
            ),
            "ops_per_s": env.number("OPS_PER_S", d.ops_per_s, lo=0.01),
            "ops_burst": env.integer("OPS_BURST", d.ops_burst, lo=1),
            "queue_frames": env.integer("QUEUE_FRAMES", d.queue_frames, lo=1),
            "queue_bytes": env.integer("QUEUE_BYTES", d.queue_bytes, lo=1024),
            "total_queue_bytes": env.integer("TOTAL_QUEUE_BYTES", d.total_queue_bytes, lo=0),
            "write_limit": env.integer("WRITE_LIMIT", d.write_limit, lo=1024),
            "ping_interval_s": _optional_seconds(env, "PING_INTERVAL_S", d.ping_interval_s),
            "ping_timeout_s": _optional_seconds(env, "PING_TIMEOUT_S", d.ping_timeout_s),
            "close_timeout_s": env.number("CLOSE_TIMEOUT_S", d.close_timeout_s, lo=0.01),
            "stall_timeout_s": env.number("STALL_TIMEOUT_S", d.stall_timeout_s, lo=0.1),
            "block_ms": env.integer("BLOCK_MS", d.block_ms, lo=1),
            "read_count": env.integer("READ_COUNT", d.read_count, lo=1),
            "page_size": env.integer("PAGE_SIZE", d.page_size, lo=1),
            "replay_buffer": env.integer("REPLAY_BUFFER", d.replay_buffer, lo=1),
            "compression": env.flag("COMPRESSION", d.compression),
            "reuse_port": env.flag("REUSE_PORT", d.reuse_port),
            "redis_connections": env.integer("REDIS_CONNECTIONS", d.redis_connections, lo=4),
            "sse_heartbeat_s": env.number("SSE_HEARTBEAT_S", d.sse_heartbeat_s, lo=0.01),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(bus=bus, api=api, **values)

    def with_(self, **changes: Any) -> RelaySettings:
        return replace(self, **changes)


def _refuse_removed_server(value: str | None) -> None:
    """``RPA_BUS_RELAY_SERVER``: unset or ``aiohttp`` (the only server); anything else, the
    removed ``websockets`` above all, is a ``ConfigError`` at start."""
    if value is None or value.strip() in ("", "aiohttp"):
        return
    raise ConfigError(
        f"RPA_BUS_RELAY_SERVER={value!r}: the relay's websockets server was removed (issue 13); "
        "aiohttp is the only server (WebSocket, SSE and the HTTP API on one port). "
        "Unset RPA_BUS_RELAY_SERVER"
    )


def _optional_seconds(env: EnvReader, name: str, default: float | None) -> float | None:
    """A number of seconds, where ``0`` turns the feature off (``None``)."""
    value = env.number(name, default if default is not None else 0.0)
    return value or None
