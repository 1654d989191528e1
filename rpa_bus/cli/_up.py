"""``rpa-bus up``, ``demo``, ``status``, ``sessions``: what newcomers and operators meet first."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import orjson
import redis
import typer

from rpa_bus import Settings
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._local import resolve_redis_url
from rpa_bus.cli._ops import connect, format_age, format_table, list_sessions

if TYPE_CHECKING:
    from rpa_bus.cli._demo import DemoOptions

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
    client = connect(settings)
    try:
        rows = list_sessions(client, settings.keys, limit=limit)
    except redis.RedisError as exc:
        raise _fail(f"cannot read sessions from {settings.redis_url}: {exc}") from exc
    finally:
        client.close()
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
    sessions: Annotated[int, typer.Option("--sessions", min=1, max=1000, help="Jobs at once.")] = 4,
    count: Annotated[
        int | None, typer.Option(min=1, help="Jobs in all (default: run until Ctrl-C).")
    ] = None,
    speed: Annotated[float, typer.Option(min=0.1, max=1000.0, help="Pace multiplier.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable runs.")] = None,
) -> None:
    """Run simulated 15-screen insurance-quote robots that report through the bus."""
    configure_logging()
    from rpa_bus.cli._demo import DemoOptions

    settings = _settings(redis_url)
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
