"""The monitor's settings: a frozen dataclass read once, by the CLI, from options and env."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rpa_bus import ConfigError, EnvReader, InvalidStreamName, Settings, validate_host_name

HOST_HINT = "pass --host-name NAME or set RPA_BUS_MONITOR_HOST"


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """What one ``rpa-bus monitor`` process does; units live in the names.

    Alert thresholds are in the metric's own unit: percent for ``cpu_warn``, ``memory_crit``
    and ``disk_crit``, entries for ``relay_lag_warn`` and ``archive_lag_warn``. An alert fires after
    ``alert_samples`` consecutive samples above its threshold and resolves after as many
    samples below ``threshold * (1 - alert_margin)``.
    """

    host_name: str
    bus: Settings = field(default_factory=Settings)
    interval_s: float = 5.0
    stall_after_s: float = 120.0
    cpu_warn: float = 80.0
    memory_crit: float = 85.0
    disk_crit: float = 90.0
    relay_lag_warn: float = 1000.0
    # Entries not yet archived, over all streams (with the archive on), and how often the
    # lag is measured (a SCAN of the session streams; alerts count measured samples).
    archive_lag_warn: float = 100_000.0
    archive_lag_interval_s: float = 30.0
    alert_margin: float = 0.05
    alert_samples: int = 2
    # The monitor stream keeps this much history (XADD MINID ~).
    window_s: float = 24 * 3600.0
    # Session streams probed per sample (last activity, relay groups); round-robin beyond.
    streams_per_tick: int = 1000
    # Running sessions tracked at most; the oldest are forgotten past it.
    max_sessions: int = 100_000
    # How long close() waits for buffered samples to be written.
    flush_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        try:
            validate_host_name(self.host_name)
        except InvalidStreamName as exc:
            raise ConfigError(f"{exc}; {HOST_HINT}") from exc
        checks: tuple[tuple[str, bool], ...] = (
            ("interval_s must be from 0.01 to 3600", 0.01 <= self.interval_s <= 3600),
            ("stall_after_s must be > 0", self.stall_after_s > 0),
            ("alert_margin must be from 0 to 1", 0.0 <= self.alert_margin < 1.0),
            ("alert_samples must be >= 1", self.alert_samples >= 1),
            ("window_s must be >= 1", self.window_s >= 1),
            ("streams_per_tick must be >= 1", self.streams_per_tick >= 1),
            ("max_sessions must be >= 1", self.max_sessions >= 1),
            ("flush_timeout_s must be >= 0", self.flush_timeout_s >= 0),
            ("archive_lag_interval_s must be > 0", self.archive_lag_interval_s > 0),
        )
        for message, ok in checks:
            if not ok:
                raise ConfigError(message)
        for name in ("cpu_warn", "memory_crit", "disk_crit", "relay_lag_warn", "archive_lag_warn"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        bus: Settings | None = None,
        **overrides: Any,
    ) -> MonitorSettings:
        """Read ``RPA_BUS_MONITOR_*`` (and the shared ``RPA_BUS_*``); non-None overrides win.

        The host name defaults to this machine's host name; one that is not a valid id is
        refused (ids are never sanitised), with a hint to pass ``--host-name``.
        """
        env = EnvReader(environ)
        values: dict[str, Any] = {
            "host_name": env.optional_text("MONITOR_HOST"),
            "interval_s": env.number("MONITOR_INTERVAL_S", 5.0, lo=0.01, hi=3600),
            "stall_after_s": env.number("MONITOR_STALL_AFTER_S", 120.0, lo=0.001),
            "cpu_warn": env.number("MONITOR_CPU_WARN", 80.0),
            "memory_crit": env.number("MONITOR_MEMORY_CRIT", 85.0),
            "disk_crit": env.number("MONITOR_DISK_CRIT", 90.0),
            "relay_lag_warn": env.number("MONITOR_RELAY_LAG_WARN", 1000.0),
            "archive_lag_warn": env.number("MONITOR_ARCHIVE_LAG_WARN", 100_000.0),
            "archive_lag_interval_s": env.number(
                "MONITOR_ARCHIVE_LAG_INTERVAL_S", 30.0, lo=0.01, hi=3600
            ),
            "alert_margin": env.number("MONITOR_ALERT_MARGIN", 0.05, hi=0.99),
            "alert_samples": env.integer("MONITOR_ALERT_SAMPLES", 2, lo=1, hi=1000),
            "window_s": env.number("MONITOR_WINDOW_S", 24 * 3600.0, lo=1.0),
            "streams_per_tick": env.integer("MONITOR_STREAMS_PER_TICK", 1000, lo=1),
            "max_sessions": env.integer("MONITOR_MAX_SESSIONS", 100_000, lo=1),
            "flush_timeout_s": env.number("MONITOR_FLUSH_TIMEOUT_S", 5.0, hi=3600),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["host_name"] is None:
            name = socket.gethostname()
            try:
                validate_host_name(name)
            except InvalidStreamName as exc:
                raise ConfigError(
                    f"this machine's host name {name!r} is not a valid monitor host name "
                    f"(1 to 128 characters from A-Z a-z 0-9 _ . -): {HOST_HINT}"
                ) from exc
            values["host_name"] = name
        return cls(bus=bus if bus is not None else Settings.from_env(environ), **values)

    def with_(self, **changes: Any) -> MonitorSettings:
        return replace(self, **changes)
