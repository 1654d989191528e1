"""``rpa-bus monitor``: sample this host and the bus into the ``monitor:HOST`` stream."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

from rpa_bus import BusError, Settings
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._local import resolve_redis_url


@app.command()
def monitor(
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            min=0.01,
            max=3600,
            help="Seconds between samples (default 5; RPA_BUS_MONITOR_INTERVAL_S).",
        ),
    ] = None,
    host_name: Annotated[
        str | None,
        typer.Option(
            "--host-name",
            help="This host's name in `monitor:HOST` (default: the machine's host name; "
            "RPA_BUS_MONITOR_HOST).",
        ),
    ] = None,
    stall_after: Annotated[
        float | None,
        typer.Option(
            "--stall-after",
            min=0.001,
            help="Seconds a running session may stay silent before it is `stalled` "
            "(default 120; RPA_BUS_MONITOR_STALL_AFTER_S).",
        ),
    ] = None,
    cpu_warn: Annotated[
        float | None,
        typer.Option(min=0, help="CPU percent that raises a warning (default 80)."),
    ] = None,
    memory_crit: Annotated[
        float | None,
        typer.Option(min=0, help="Memory percent that raises a critical alert (default 85)."),
    ] = None,
    disk_crit: Annotated[
        float | None,
        typer.Option(min=0, help="Disk percent (any mount) that is critical (default 90)."),
    ] = None,
    relay_lag_warn: Annotated[
        float | None,
        typer.Option(min=0, help="Entries a relay may lag before a warning (default 1000)."),
    ] = None,
    archive_lag_warn: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Entries not yet archived (all streams) before a warning (default 100000; "
            "measured every RPA_BUS_MONITOR_ARCHIVE_LAG_INTERVAL_S, default 30).",
        ),
    ] = None,
    alert_margin: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=0.99,
            help="An alert resolves below threshold x (1 - margin) (default 0.05).",
        ),
    ] = None,
    alert_samples: Annotated[
        int | None,
        typer.Option(min=1, help="Samples in a row to fire or resolve an alert (default 2)."),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            min=1,
            help="Seconds of history the monitor stream keeps (default 86400; "
            "RPA_BUS_MONITOR_WINDOW_S).",
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", help="Redis URL (default: RPA_BUS_REDIS_URL, a running `up`, localhost)"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Sample CPU, memory, disks, network and bus health every INTERVAL; raise alerts.

    Alert thresholds also read RPA_BUS_MONITOR_CPU_WARN, _MEMORY_CRIT, _DISK_CRIT,
    _RELAY_LAG_WARN, _ARCHIVE_LAG_WARN, _ALERT_MARGIN and _ALERT_SAMPLES. SIGTERM or Ctrl-C:
    write what is buffered and exit 0.
    """
    # Imported here so other commands do not pay for psutil and the monitor.
    from monitor import Monitor, MonitorSettings

    configure_logging(verbose)
    try:
        settings = MonitorSettings.from_env(
            bus=Settings.from_env(redis_url=resolve_redis_url(redis_url)),
            host_name=host_name,
            interval_s=interval,
            stall_after_s=stall_after,
            cpu_warn=cpu_warn,
            memory_crit=memory_crit,
            disk_crit=disk_crit,
            relay_lag_warn=relay_lag_warn,
            archive_lag_warn=archive_lag_warn,
            alert_margin=alert_margin,
            alert_samples=alert_samples,
            window_s=window,
        )
    except BusError as exc:
        typer.echo(f"rpa-bus monitor: {exc}", err=True)
        raise typer.Exit(2) from exc

    try:
        with Monitor(settings) as mon:

            def on_signal(signum: int, frame: FrameType | None) -> None:
                mon.stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            mon.run()
    except BusError as exc:
        typer.echo(f"rpa-bus monitor: {exc}", err=True)
        raise typer.Exit(1) from exc
