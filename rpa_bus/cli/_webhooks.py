"""``rpa-bus webhooks``: run the webhook sender, and manage its endpoints and dead letters.

Endpoints live in one TOML file: ``--config``, else ``RPA_BUS_WEBHOOKS_FILE``, else
``$XDG_CONFIG_HOME/rpa-bus/webhooks.toml``. ``add`` and ``remove`` rewrite that file
(atomically, mode 0600); every webhooks process reads it at start-up and again when it
changes (``RPA_BUS_WEBHOOKS_RELOAD_S``). ``pause``, ``resume`` and ``replay`` act on Redis
and take effect in the running processes at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import redis
import typer

from rpa_bus import BusError, ConfigError, Settings
from rpa_bus.cli._app import app, configure_logging
from rpa_bus.cli._local import resolve_redis_url

if TYPE_CHECKING:
    from workers import Endpoint

webhooks_app = typer.Typer(
    name="webhooks",
    help="Signed HTTP callbacks (Standard Webhooks) for session and monitor events.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts quote defaults in [brackets]
)
app.add_typer(webhooks_app)

ConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Endpoints file [env RPA_BUS_WEBHOOKS_FILE, $XDG_CONFIG_HOME/rpa-bus/webhooks.toml].",
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", help="Redis URL [env RPA_BUS_REDIS_URL, a running `up`]."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def config_path(option: Path | None) -> Path:
    if option is not None:
        return option
    if os.environ.get("RPA_BUS_WEBHOOKS_FILE"):
        return Path(os.environ["RPA_BUS_WEBHOOKS_FILE"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rpa-bus" / "webhooks.toml"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"rpa-bus webhooks: {message}", err=True)
    return typer.Exit(code)


def _load(path: Path) -> list[Endpoint]:
    from workers import load_endpoints

    try:
        return load_endpoints(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def _endpoint(path: Path, name: str) -> Endpoint:
    for ep in _load(path):
        if ep.name == name:
            return ep
    raise _fail(f"no endpoint {name!r} in {path}")


@webhooks_app.callback(invoke_without_command=True)
def webhooks(
    ctx: typer.Context,
    config: ConfigPath = None,
    redis_url: RedisUrl = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve /metrics and /healthz here; 0 = off "
            "[env RPA_BUS_WEBHOOKS_METRICS_PORT, 0].",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address of the metrics port [RPA_BUS_WEBHOOKS_METRICS_HOST, 127.0.0.1]."
        ),
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="This process's consumer name (default HOST-PID).")
    ] = None,
    claim_idle_ms: Annotated[
        int | None,
        typer.Option(
            min=300,
            help="A dead process's streams are taken over after this "
            "[RPA_BUS_WEBHOOKS_CLAIM_IDLE_MS, 30000].",
        ),
    ] = None,
    lease_ms: Annotated[
        int | None,
        typer.Option(
            min=100,
            help="An endpoint's delivery lease; a dead holder's endpoints "
            "move to another process after this [RPA_BUS_WEBHOOKS_LEASE_MS, 10000].",
        ),
    ] = None,
    retry_initial_s: Annotated[
        float | None,
        typer.Option(min=0.001, help="First retry delay [RPA_BUS_WEBHOOKS_RETRY_INITIAL_S, 1]."),
    ] = None,
    retry_max_s: Annotated[
        float | None,
        typer.Option(min=0.001, help="Longest retry delay [RPA_BUS_WEBHOOKS_RETRY_MAX_S, 300]."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the webhook sender (no subcommand), or manage endpoints (subcommands).

    Reads session streams, the sessions index and monitor streams with the consumer group
    P:webhooks, shared by every webhooks process. A bad endpoints file exits 2 at once.
    SIGTERM or Ctrl-C: stop, release the endpoints' leases, exit 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    from workers import WebhookService, WebhookSettings

    configure_logging(verbose)
    path = config_path(config)
    try:
        settings = WebhookSettings.from_env(
            bus=Settings.from_env(redis_url=resolve_redis_url(redis_url)),
            path=path,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            lease_ms=lease_ms,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
        )
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    if not settings.endpoints:
        raise _fail(f"{path} declares no endpoints (add one with `rpa-bus webhooks add`)")

    async def serve() -> None:
        try:
            service = WebhookService(settings)
        except ValueError as exc:  # settings the group loop refuses (e.g. block vs timeout)
            raise ConfigError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.close)
        async with service:
            await service.run()

    try:
        asyncio.run(serve())
    except BusError as exc:
        raise _fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1) from exc
    except redis.RedisError as exc:
        raise _fail(f"Redis failed: {exc}", code=1) from exc


@webhooks_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Endpoint name (A-Z a-z 0-9 _ . -).")],
    url: Annotated[
        str, typer.Option(help="Where to POST (https://, or http:// with --allow-http).")
    ],
    secret: Annotated[
        str | None,
        typer.Option(help="whsec_... signing secret; default: a new one, printed once."),
    ] = None,
    stream: Annotated[
        list[str] | None,
        typer.Option("--stream", help="Stream pattern (repeat): session:*, monitor:*, sessions."),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event", help="Event type (repeat): finished, failed, alert, ...; default all."
        ),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="At most this many deliveries a second.")
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="Bound of one attempt, seconds.")] = 10.0,
    max_attempts: Annotated[int, typer.Option(help="Tries before the dead letters.")] = 10,
    allow_http: Annotated[bool, typer.Option(help="Allow a plain http:// URL.")] = False,
    allow_private: Annotated[
        bool, typer.Option(help="Allow loopback, private and link-local addresses.")
    ] = False,
    replace: Annotated[bool, typer.Option(help="Replace an endpoint of that name.")] = False,
    config: ConfigPath = None,
) -> None:
    """Add an endpoint to the endpoints file (running webhooks processes pick it up)."""
    from workers import Endpoint, add_endpoint, new_secret

    path = config_path(config)
    generated = secret is None
    try:
        endpoint = Endpoint(
            name=name,
            url=url,
            secret=new_secret() if secret is None else secret,
            streams=tuple(stream or ("session:*",)),
            events=tuple(event or ("*",)),
            rate_per_s=rate,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            allow_http=allow_http,
            allow_private=allow_private,
        )
        add_endpoint(path, endpoint, replace_existing=replace)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"added endpoint {name} to {path}")
    if generated:
        typer.echo(f"secret (shown once; give it to the receiver): {endpoint.secret}")


@webhooks_app.command("list")
def list_(config: ConfigPath = None, as_json: AsJson = False) -> None:
    """Show the endpoints of the file (never their secrets)."""
    from rpa_bus.cli._ops import format_table

    path = config_path(config)
    endpoints = _load(path)
    if as_json:
        typer.echo(orjson.dumps([ep.public() for ep in endpoints]).decode())
        return
    rows = [
        [
            ep.name,
            ep.url,
            ",".join(ep.streams),
            ",".join(ep.events),
            "-" if ep.rate_per_s is None else f"{ep.rate_per_s:g}/s",
            " ".join(f for f, on in (("http", ep.allow_http), ("private", ep.allow_private)) if on)
            or "-",
        ]
        for ep in endpoints
    ]
    typer.echo(format_table(rows, ["name", "url", "streams", "events", "rate", "allows"]))


@webhooks_app.command("remove")
def remove(name: str, config: ConfigPath = None) -> None:
    """Remove an endpoint from the endpoints file."""
    from workers import remove_endpoint

    path = config_path(config)
    try:
        remove_endpoint(path, name)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"removed endpoint {name} from {path}")


@webhooks_app.command("test")
def send_test(name: str, config: ConfigPath = None) -> None:
    """Send one signed `webhook.test` event to an endpoint now; exit 1 unless it answers 2xx."""
    from workers import Deliverer

    endpoint = _endpoint(config_path(config), name)
    now = datetime.now(UTC)
    body = orjson.dumps(
        {
            "type": "webhook.test",
            "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": {"endpoint": name, "message": "rpa-bus webhooks test"},
        }
    )
    wid = f"msg_test_{int(time.time() * 1000)}"

    async def send() -> Any:
        async with Deliverer(endpoint) as deliverer:
            return await deliverer.post(wid, body)

    result = asyncio.run(send())
    if result.ok:
        typer.echo(f"{name}: HTTP {result.status} in {result.elapsed_s * 1000:.0f} ms")
        return
    raise _fail(f"{name}: {result.error}", code=1)


def _admin_client(redis_url: str | None) -> tuple[Any, Any]:
    from rpa_bus.cli._ops import connect
    from workers import WebhookKeys

    settings = Settings.from_env(redis_url=resolve_redis_url(redis_url))
    return connect(settings), WebhookKeys(settings.prefix)


@webhooks_app.command("pause")
def pause_(name: str, redis_url: RedisUrl = None, config: ConfigPath = None) -> None:
    """Stop deliveries to an endpoint in every process; its events keep queuing."""
    _set_paused(name, paused=True, redis_url=redis_url, config=config)
    typer.echo(f"paused {name}")


@webhooks_app.command("resume")
def resume_(name: str, redis_url: RedisUrl = None, config: ConfigPath = None) -> None:
    """Resume deliveries to a paused endpoint (its backlog goes first, in order)."""
    _set_paused(name, paused=False, redis_url=redis_url, config=config)
    typer.echo(f"resumed {name}")


def _set_paused(name: str, *, paused: bool, redis_url: str | None, config: Path | None) -> None:
    """Pause or resume a configured endpoint in Redis, where every process reads it."""
    from workers import pause, resume

    _endpoint(config_path(config), name)
    client, keys = _admin_client(redis_url)
    try:
        (pause if paused else resume)(client, keys, name)
    except redis.RedisError as exc:
        raise _fail(f"Redis failed: {exc}", code=1) from exc
    finally:
        client.close()


@webhooks_app.command("replay")
def replay_(
    name: Annotated[str | None, typer.Argument(help="Endpoint; default: every endpoint.")] = None,
    dead_id: Annotated[
        list[str] | None, typer.Option("--id", help="Only this dead letter (repeat).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many per endpoint.")] = 1000,
    redis_url: RedisUrl = None,
    config: ConfigPath = None,
) -> None:
    """Send dead letters again: they go back to the end of the endpoint's outbox, with
    their original webhook-id."""
    from workers import replay

    path = config_path(config)
    names = [_endpoint(path, name).name] if name else [ep.name for ep in _load(path)]
    client, keys = _admin_client(redis_url)
    try:
        for each in names:
            moved = replay(client, keys, each, ids=dead_id, limit=limit)
            typer.echo(f"{each}: {moved} dead letter(s) queued again")
    except redis.RedisError as exc:
        raise _fail(f"Redis failed: {exc}", code=1) from exc
    finally:
        client.close()


@webhooks_app.command("dead")
def dead(
    name: str,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    redis_url: RedisUrl = None,
    as_json: AsJson = False,
) -> None:
    """List an endpoint's dead letters (oldest first) with their last error."""
    from rpa_bus.cli._ops import format_table
    from workers import dead_letters

    client, keys = _admin_client(redis_url)
    try:
        letters = dead_letters(client, keys, name, limit=limit)
    except redis.RedisError as exc:
        raise _fail(f"Redis failed: {exc}", code=1) from exc
    finally:
        client.close()
    if as_json:
        typer.echo(orjson.dumps([d.as_dict() for d in letters]).decode())
        return
    rows = [[d.id, d.webhook_id, d.stream, d.type, str(d.attempts), d.error] for d in letters]
    typer.echo(format_table(rows, ["dead id", "webhook-id", "stream", "type", "tries", "error"]))
