"""Settings, read once at the edge (the CLI and service mains) from ``RPA_BUS_*``.

Library code takes keyword arguments; only entry points call ``from_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rpa_bus._envelope import MAX_EVENT_BYTES
from rpa_bus._errors import ConfigError
from rpa_bus._keys import DEFAULT_BUCKETS, DEFAULT_PREFIX, MAX_BUCKETS, Keys
from rpa_bus._urls import RedisTarget, parse_redis_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where producers journal events during an outage: ``$XDG_STATE_HOME/rpa-bus/spool``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rpa-bus" / "spool"


class EnvReader:
    """Typed, range-checked reads of ``RPA_BUS_*`` variables with clear errors."""

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = "RPA_BUS_"):
        self._env = os.environ if environ is None else environ
        self._prefix = prefix

    def raw(self, name: str) -> str | None:
        value = self._env.get(self._prefix + name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def optional_text(self, name: str) -> str | None:
        return self.raw(name)

    def integer(self, name: str, default: int, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError as exc:
            raise ConfigError(f"{self._prefix}{name}={value!r} is not a whole number") from exc
        if not lo <= number <= hi:
            raise ConfigError(f"{self._prefix}{name}={number} is outside {lo}..{hi}")
        return number

    def number(self, name: str, default: float, *, lo: float = 0.0, hi: float = 1e12) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError as exc:
            raise ConfigError(f"{self._prefix}{name}={value!r} is not a number") from exc
        if not lo <= number <= hi:
            raise ConfigError(f"{self._prefix}{name}={number} is outside {lo}..{hi}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{self._prefix}{name}={value!r} is not a boolean (use 1/0, true/false)")

    def items(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """What every part of the bus needs to agree on or to reach Redis.

    Units live in the names. Relay and monitor have their own settings on top of these.
    """

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    buckets: int = DEFAULT_BUCKETS
    # Per-session stream cap (approximate MAXLEN) and how long a finished session's keys live.
    maxlen: int = 10_000
    retention_s: float = 24 * 3600.0
    # Producer: events held in memory before spilling to the journal in spool_dir.
    queue_max: int = 10_000
    spool_dir: Path = field(default_factory=default_spool_dir)
    # Bounds on every Redis call: redis-py's defaults can stall a caller for tens of seconds.
    connect_timeout_s: float = 1.0
    socket_timeout_s: float = 2.0
    max_event_bytes: int = MAX_EVENT_BYTES
    secret: str | None = field(default=None, repr=False)
    # Producer durability: a batch counts as written only once this many replicas
    # acknowledged it (WAIT after the batch, bounded by wait_timeout_ms); 0 = don't wait.
    min_replicas: int = 0
    # The archive store (``sqlite:///PATH`` or ``postgresql://...``): the archiver writes
    # it; the relay and the CLI read history from it. None: no archive configured here.
    archive_url: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parse_redis_url(self.redis_url)  # a bad form fails here, naming the problem
        if self.min_replicas < 0:
            raise ConfigError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if not 1 <= self.buckets <= MAX_BUCKETS:
            raise ConfigError(f"buckets must be 1..{MAX_BUCKETS}, got {self.buckets}")
        if self.maxlen < 1:
            raise ConfigError(f"maxlen must be >= 1, got {self.maxlen}")
        if self.queue_max < 1:
            raise ConfigError(f"queue_max must be >= 1, got {self.queue_max}")
        if not self.prefix or any(c in self.prefix for c in "{}: "):
            raise ConfigError(
                f"prefix must be non-empty without braces, colons or spaces: {self.prefix!r}"
            )

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.buckets)

    @property
    def target(self) -> RedisTarget:
        """The parsed ``redis_url``: one server, Sentinel or Cluster."""
        return parse_redis_url(self.redis_url)

    @property
    def wait_timeout_ms(self) -> int:
        """WAIT's bound for ``min_replicas``: half the socket timeout (at most 1 s), so the
        call ends, with a count, well before the socket gives up on it."""
        return max(1, min(1000, int(self.socket_timeout_s * 500)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``RPA_BUS_*`` variables; keyword overrides (from CLI options) win."""
        env = EnvReader(environ)
        values: dict[str, Any] = {
            "redis_url": env.text("REDIS_URL", DEFAULT_REDIS_URL),
            "prefix": env.text("PREFIX", DEFAULT_PREFIX),
            "buckets": env.integer("BUCKETS", DEFAULT_BUCKETS, lo=1, hi=MAX_BUCKETS),
            "maxlen": env.integer("MAXLEN", 10_000, lo=1),
            "retention_s": env.number("RETENTION_S", 24 * 3600.0, lo=1.0),
            "queue_max": env.integer("QUEUE_MAX", 10_000, lo=1),
            "spool_dir": Path(env.text("SPOOL_DIR", str(default_spool_dir(environ)))),
            "connect_timeout_s": env.number("CONNECT_TIMEOUT_S", 1.0, lo=0.01, hi=60),
            "socket_timeout_s": env.number("SOCKET_TIMEOUT_S", 2.0, lo=0.01, hi=60),
            "max_event_bytes": env.integer("MAX_EVENT_BYTES", MAX_EVENT_BYTES, lo=256),
            "secret": env.optional_text("SECRET"),
            "min_replicas": env.integer("MIN_REPLICAS", 0, lo=0, hi=64),
            "archive_url": env.optional_text("ARCHIVE_URL"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Settings:
        return cls(redis_url=url, **overrides)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
