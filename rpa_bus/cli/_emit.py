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
from rpa_bus import BusError, InvalidEvent, Settings, make, percent_of, validate_session_id
from rpa_bus.cli._app import app
from rpa_bus.cli._local import resolve_redis_url


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"rpa-bus emit: {message}", err=True)
    return typer.Exit(code)


def _artifact(spec: str | None, name: str | None, mime: str | None) -> dict[str, str] | None:
    """``KIND:REF`` -> the envelope's artifact object (a URL when REF starts with http://
    or https://, else a path)."""
    if spec is None:
        if name is not None or mime is not None:
            raise InvalidEvent("--name and --mime describe an --artifact KIND:URL_OR_PATH")
        return None
    kind, sep, ref = spec.partition(":")
    if not sep or not ref:
        raise InvalidEvent(
            f"--artifact must be KIND:URL_OR_PATH (e.g. screenshot:https://host/a.png), "
            f"got {spec!r}"
        )
    out = {"kind": kind, "url" if ref.startswith(("http://", "https://")) else "path": ref}
    if name is not None:
        out["name"] = name
    if mime is not None:
        out["mime"] = mime
    return out


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
    job: Annotated[
        str | None, typer.Option(help="The job this session is a run of (on started).")
    ] = None,
    level: Annotated[
        str | None, typer.Option(help="Log level: debug, info, warning or error (log).")
    ] = None,
    phase: Annotated[
        str | None, typer.Option(help="Step phase: start or end (type step, with --step).")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option(help="Step attempt: 1 for the first entry, n for a retry.")
    ] = None,
    outcome: Annotated[
        str | None, typer.Option(help="A step end's outcome: ok, failed or retried.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="A step end's duration in seconds.")
    ] = None,
    artifact: Annotated[
        str | None,
        typer.Option(
            help="An artifact reference KIND:URL_OR_PATH (type artifact), e.g. "
            "screenshot:https://host/s3.png; never the bytes."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The artifact's display name.")] = None,
    mime: Annotated[str | None, typer.Option(help="The artifact's MIME type.")] = None,
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
        percent = None
        if event_type == "step" and step is not None and total is not None and 0 < step <= total:
            # As the producer's steps: a start counts the steps before it as done, an end
            # counts its step once it ended ok.
            done = step if phase == "end" and outcome == "ok" else step - 1
            percent = percent_of(done, total)
        event = make(
            event_type,
            step=step,
            total=total,  # percent: computed by make (percent_of), as progress() does
            percent=percent,
            message=message,
            error=error,
            job=job,
            level=level,
            phase=phase,
            attempt=attempt if attempt is not None or phase is None else 1,
            outcome=outcome,
            duration_s=duration,
            artifact=_artifact(artifact, name, mime),
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
