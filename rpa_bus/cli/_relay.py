"""``rpa-bus relay``, ``rpa-bus token`` and ``rpa-bus tail``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from rpa_bus import BusError, ConfigError, Settings
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._local import resolve_redis_url

if TYPE_CHECKING:  # imported lazily at run time: `rpa-bus --help` stays quick
    from relay import RelaySettings

log = logging.getLogger("rpa_bus.cli.relay")


@app.command()
def relay(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [env RPA_BUS_RELAY_HOST, 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [env RPA_BUS_RELAY_PORT, 8765].")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Instance name; its consumer group is P:relay:NAME [RPA_BUS_RELAY_NAME]."
        ),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [env RPA_BUS_REDIS_URL].")
    ] = None,
    archive_url: Annotated[
        str | None,
        typer.Option(
            help="Archive store to read through (replay and history past Redis): "
            "sqlite:///PATH or postgresql://... [env RPA_BUS_ARCHIVE_URL; default none].",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Serve a non-loopback address without RPA_BUS_SECRET (no auth).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes sharing the port (SO_REUSEPORT), named NAME-1..NAME-N, "
            "each with its own consumer group; restarted if they exit.",
        ),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve session streams over WebSocket (/ws), with /healthz, /metrics and the dashboard."""
    from relay import RelaySettings

    configure_logging(verbose)
    try:
        settings = RelaySettings.from_env(
            host=host,
            port=port,
            name=name,
            redis_url=resolve_redis_url(redis_url),
            archive_url=archive_url,
            insecure=insecure or None,
        )
        settings.check_bind()
        if workers > 1 and settings.port == 0:
            raise ConfigError("--workers needs a fixed --port: workers share it")
    except ConfigError as exc:
        typer.echo(f"rpa-bus relay: {exc}", err=True)
        raise typer.Exit(2) from exc
    if workers > 1:
        from rpa_bus.cli._workers import supervise

        raise typer.Exit(asyncio.run(supervise(settings, workers, verbose=verbose)))
    try:
        asyncio.run(_serve(settings))
    except (BusError, OSError) as exc:  # bad config, mismatch with P:config, port in use
        typer.echo(f"rpa-bus relay: {exc}", err=True)
        raise typer.Exit(2) from exc


async def _serve(settings: RelaySettings) -> None:
    from relay import Relay

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Relay(settings) as server:
        typer.echo(f"relay {settings.name} listening on {server.url}", err=True)
        # Until a signal, or until the relay stops by itself (wait_closed then raises why:
        # a P:config mismatch found once Redis answered).
        signalled = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(server.wait_closed())
        try:
            await asyncio.wait({signalled, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
        if closed.done():
            closed.result()
            return
        log.info("signal received: closing connections (1001) and stopping")
        server.close(1001, "relay shutting down")
        await closed


@app.command()
def token(
    stream: Annotated[
        list[str] | None,
        typer.Option(
            "--stream",
            "-s",
            help="Stream to read: a name or prefix pattern (monitor:*); repeatable.",
        ),
    ] = None,
    publish: Annotated[
        list[str] | None,
        typer.Option(
            "--publish",
            "-p",
            help="Stream to append to over HTTP (POST /v1/sessions/SID/events): a name or "
            "prefix pattern (session:*); repeatable.",
        ),
    ] = None,
    ttl: Annotated[float, typer.Option("--ttl", help="Seconds until the token expires.")] = 3600.0,
) -> None:
    """Print a token granting reads of STREAM(s) and appends to PUBLISH streams, signed
    with RPA_BUS_SECRET."""
    from relay import mint_token

    settings = Settings.from_env()
    if settings.secret is None:
        typer.echo("rpa-bus token: set RPA_BUS_SECRET (the relay's secret) first", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(mint_token(settings.secret, stream or (), publish=publish or (), ttl_s=ttl))
    except BusError as exc:
        typer.echo(f"rpa-bus token: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def tail(
    stream: Annotated[str, typer.Argument(help="session:SID, sessions or monitor:HOST")],
    from_id: Annotated[
        str, typer.Option("--from", help="Exclusive start id; 0 = all, $ = only new.")
    ] = "0",
    url: Annotated[str, typer.Option("--url", help="Relay URL (ws:// or http://).")] = (
        "ws://127.0.0.1:8765/ws"
    ),
    token: Annotated[
        str | None, typer.Option("--token", help="Token from `rpa-bus token`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Print a stream's events as JSON lines; reconnects and resumes from the last id."""
    configure_logging(verbose)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(_tail(url, stream, from_id, token))
        except BusError as exc:
            typer.echo(f"rpa-bus tail: {exc}", err=True)
            raise typer.Exit(2) from exc


async def _tail(url: str, stream: str, from_id: str, token: str | None) -> None:
    """Events as JSON lines on stdout (the relay's event frames); gaps, resets and
    outages as JSON lines on stderr."""
    from relay import AsyncSubscription, Event, Gap, Live

    async with AsyncSubscription(url, [stream], from_id=from_id, token=token) as sub:
        async for item in sub:
            if isinstance(item, Event):
                frame = {"type": "event", "stream": item.stream, "id": item.id, "data": item.data}
                sys.stdout.buffer.write(orjson.dumps(frame) + b"\n")
                sys.stdout.flush()
            elif not isinstance(item, Live):
                note = {"type": type(item).__name__.lower(), **dataclasses.asdict(item)}
                if isinstance(item, Gap):
                    note["from"] = note.pop("from_id")
                typer.echo(orjson.dumps(note).decode(), err=True)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Smaller counts (a smoke run).")] = False,
    phases: Annotated[
        str, typer.Option("--phases", help="Which figures: 1 latency, 2 ceiling, 3 replay, 4 idle.")
    ] = "1234",
) -> None:
    """Measure the relay on this machine (loopback): latency, ceiling, replay, connections.

    Runs bench/relay.py from a source checkout (it starts its own Redis, relay and clients).
    """
    script = Path(__file__).resolve().parents[2] / "bench" / "relay.py"
    if not script.is_file():
        typer.echo(
            "rpa-bus bench: bench/relay.py is not installed with the package; run it from a "
            "source checkout: python bench/relay.py",
            err=True,
        )
        raise typer.Exit(2)
    args = [sys.executable, str(script), "--phases", phases, *(["--quick"] if quick else [])]
    raise typer.Exit(subprocess.call(args))
