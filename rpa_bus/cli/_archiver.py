"""``rpa-bus archiver``: every session's events into the archive store; ``archiver prune``."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from rpa_bus import BusError, ConfigError, Settings
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._local import resolve_redis_url, state_dir
from rpa_bus.redisio import REDIS_FAILURES

if TYPE_CHECKING:
    from workers import Archiver

log = logging.getLogger("rpa_bus.cli.archiver")

# The exit code for what a restart cannot fix: a bad URL, an unreachable database at
# start-up, a schema newer than this code, a P:config mismatch.
FATAL_EXIT = 2

archiver_app = typer.Typer(
    help="Archive every session's events (and the sessions index) into SQLite or PostgreSQL.",
    no_args_is_help=False,
    invoke_without_command=True,
    # Help texts quote defaults in [brackets]; rich markup would swallow them.
    rich_markup_mode=None,
)
app.add_typer(archiver_app, name="archiver")

ArchiveUrl = Annotated[
    str | None,
    typer.Option(
        "--archive-url",
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB "
        "(default: RPA_BUS_ARCHIVE_URL, else a SQLite file in the state folder).",
    ),
]


def default_archive_url() -> str:
    """The embedded archive: a SQLite file in the state folder (what `rpa-bus up` runs)."""
    return f"sqlite://{state_dir() / 'archive.db'}"


def _bus(redis_url: str | None, archive_url: str | None) -> Settings:
    bus = Settings.from_env(redis_url=resolve_redis_url(redis_url), archive_url=archive_url)
    return bus if bus.archive_url else bus.with_(archive_url=default_archive_url())


@archiver_app.callback()
def archiver(
    ctx: typer.Context,
    archive_url: ArchiveUrl = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", help="Redis URL (default: RPA_BUS_REDIS_URL, a running `up`, localhost)"
        ),
    ] = None,
    consumer: Annotated[
        str | None,
        typer.Option(help="This process's consumer name (default HOST-PID)."),
    ] = None,
    claim_idle_ms: Annotated[
        int | None,
        typer.Option(
            min=300,
            help="After this long a dead archiver's streams and pending entries are taken "
            "over (default 30000; RPA_BUS_ARCHIVER_CLAIM_IDLE_MS).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics (archive lag) on this port (0: a free one).",
        ),
    ] = None,
    retention_days: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Prune archived events older than this, hourly (default: keep forever; "
            "RPA_BUS_ARCHIVE_RETENTION_DAYS).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run an archiver: reads every session stream and the sessions index with the
    consumer group P:archiver (shared by all archiver processes) and stores each entry
    once. SIGTERM or Ctrl-C: finish the batch in flight, hand the streams over, exit 0.
    Exits 2 on a bad archive URL, an unreachable database or a too-new schema."""
    if ctx.invoked_subcommand is not None:
        return
    from rpa_bus.archive import ArchiveError
    from workers import Archiver, ArchiverSettings, tune_gc

    configure_logging(verbose)
    try:
        bus = _bus(redis_url, archive_url)
        settings = ArchiverSettings.from_env(
            bus,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            retention_days=retention_days or None,
        )
        if metrics_port is not None:
            from dataclasses import replace

            settings = replace(settings, metrics_port=metrics_port)
    except BusError as exc:
        typer.echo(f"rpa-bus archiver: {exc}", err=True)
        raise typer.Exit(FATAL_EXIT) from exc

    async def main() -> None:
        service = Archiver(settings)
        try:
            await service.open()
        except BaseException:
            await service.wait_closed()
            raise
        tune_gc()  # this process is the archiver's alone
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.close)
        if service.metrics_port is not None:
            typer.echo(f"archiver: metrics on port {service.metrics_port}", err=True)
        try:
            await service.run()
        finally:
            await service.wait_closed()

    try:
        asyncio.run(main())
    except (ArchiveError, ConfigError) as exc:
        typer.echo(f"rpa-bus archiver: {exc}", err=True)
        raise typer.Exit(FATAL_EXIT) from exc
    except BusError as exc:
        typer.echo(f"rpa-bus archiver: {exc}", err=True)
        raise typer.Exit(1) from exc
    except REDIS_FAILURES as exc:  # a permanent Redis refusal (auth, ACL) ends the run
        typer.echo(f"rpa-bus archiver: Redis refused: {exc}", err=True)
        raise typer.Exit(1) from exc


@archiver_app.command()
def prune(
    older_than: Annotated[
        float,
        typer.Option("--older-than", min=0.0, help="Delete archived events older than DAYS."),
    ],
    archive_url: ArchiveUrl = None,
) -> None:
    """Delete archived events (and sessions not updated since) older than DAYS."""
    from rpa_bus.archive import ArchiveError, open_store

    try:
        bus = _bus(None, archive_url)
    except BusError as exc:
        typer.echo(f"rpa-bus archiver prune: {exc}", err=True)
        raise typer.Exit(FATAL_EXIT) from exc
    url = bus.archive_url or default_archive_url()

    async def main() -> int:
        store = await open_store(url)
        try:
            return await store.prune(older_than_s=older_than * 86_400)
        finally:
            await store.close()

    try:
        deleted = asyncio.run(main())
    except (ArchiveError, ConfigError) as exc:
        typer.echo(f"rpa-bus archiver prune: {exc}", err=True)
        raise typer.Exit(FATAL_EXIT) from exc
    typer.echo(f"pruned {deleted} events older than {older_than:g} days")


class RunningArchiver:
    """An archiver run as a task beside other services (``rpa-bus up``)."""

    def __init__(self, service: Archiver, task: asyncio.Task[None]) -> None:
        self.service = service
        self.task = task
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Awaited (and re-raised) by stop(); said at once, since while no archiver runs
        # with archive=1 Redis keeps every entry.
        if not task.cancelled() and task.exception() is not None:
            log.error("the archiver stopped: %s; Redis now keeps every entry until one "
                      "runs again", task.exception())  # fmt: skip

    @property
    def url(self) -> str:
        return self.service.settings.redacted()

    async def stop(self) -> None:
        self.service.close()
        try:
            await self.task
        finally:
            await self.service.wait_closed()


async def start_archiver(bus: Settings) -> RunningArchiver:
    """Open the archive (``bus.archive_url``, else the SQLite file in the state folder)
    and start archiving; ``ArchiveError``/``ConfigError`` if the store cannot be used."""
    from workers import Archiver, ArchiverSettings

    url = bus.archive_url or default_archive_url()
    service = Archiver(ArchiverSettings(bus=bus.with_(archive_url=url), archive_url=url))
    try:
        await service.open()
    except BaseException:
        await service.wait_closed()
        raise
    return RunningArchiver(service, asyncio.create_task(service.run(), name="archiver"))
