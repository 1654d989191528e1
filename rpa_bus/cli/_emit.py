"""``rpa-bus emit``: write one event from a shell or any other language.

Exit status: 0 when the event is in Redis; 1 when it could not be written in time (it is
then kept in the journal and written by the next producer started with the same spool
folder and Redis target, e.g. the next ``rpa-bus emit`` there); 2 for bad input or
settings. Errors are one line on stderr.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Annotated, Any

import orjson
import typer

from producer import Producer
from rpa_bus import BusError, InvalidEvent, Settings, make, validate_session_id
from rpa_bus.cli._app import app
from rpa_bus.cli._local import resolve_redis_url


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"rpa-bus emit: {message}", err=True)
    return typer.Exit(code)


@app.command()
def emit(
    sid: Annotated[
        str, typer.Argument(metavar="SID", help="Session id ([A-Za-z0-9_.-], 1 to 128).")
    ],
    event_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE", help="Event type: started, progress, log, finished... or your own."
        ),
    ],
    step: Annotated[int | None, typer.Option(help="Step number (progress).")] = None,
    total: Annotated[int | None, typer.Option(help="Total steps.")] = None,
    message: Annotated[str | None, typer.Option(help="A human-readable message.")] = None,
    data: Annotated[str | None, typer.Option(help="The event's data, as JSON.")] = None,
    timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait for the write (default 5).")
    ] = 5.0,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL (default: RPA_BUS_REDIS_URL, a running `up`, or localhost)"),
    ] = None,
    min_replicas: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Written only once this many replicas acknowledged it (WAIT); "
            "default RPA_BUS_MIN_REPLICAS or 0.",
        ),
    ] = None,
) -> None:
    """Append one event to session SID (settings from RPA_BUS_* variables)."""
    # The producer's own warnings would repeat what the one-line error below says.
    logging.getLogger("producer").addHandler(logging.NullHandler())
    try:
        settings = Settings.from_env(
            redis_url=resolve_redis_url(redis_url), min_replicas=min_replicas
        )
        validate_session_id(sid)
        payload: Any = None
        if data is not None:
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvent(f"--data is not valid JSON: {exc}") from exc
        error = message if event_type in ("error", "failed") else None
        event = make(
            event_type,
            step=step,
            total=total,  # percent: computed by make (percent_of), as progress() does
            message=message,
            error=error,
            data=payload,
        )
        # from_env: the settings above, and the journal's fsync policy (RPA_BUS_JOURNAL_FSYNC).
        bus = Producer.from_env(**asdict(settings))
    except BusError as exc:
        raise _fail(2, str(exc)) from None
    try:
        bus.publish(f"session:{sid}", event)
    except BusError as exc:
        bus.close(timeout_s=0)
        raise _fail(2, str(exc)) from None
    written = bus.flush(timeout)
    reason = bus.last_error
    bus.close(timeout_s=0)
    if not written:
        why = f"{type(reason).__name__}: {reason}" if reason is not None else "timed out"
        raise _fail(
            1,
            f"not written within {timeout:g}s ({why}); the event is kept in the journal in "
            f"{settings.spool_dir} and is written by the next producer started with it",
        )
