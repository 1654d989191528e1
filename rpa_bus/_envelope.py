"""The event envelope: build, validate, encode and decode.

An envelope is a JSON object::

    {"type": "progress", "ts": "2026-11-22T10:00:00.123Z", "step": 3, "total": 15,
     "percent": 20.0, "eta_s": 41.5, "message": "Tela 3", "data": {...}}

``type`` and ``ts`` are always there; the other fields appear where they apply. Unknown
top-level fields are refused, so a typo fails loudly instead of vanishing; a job's own
payload goes in ``data``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from rpa_bus._errors import InvalidEvent, InvalidEventType

BUILTIN_TYPES: Final = frozenset(
    {
        "started",
        "progress",
        "step",
        "log",
        "artifact",
        "result",
        "error",
        "finished",
        "failed",
        "metrics",
        "alert",
    }
)
TERMINAL_TYPES: Final = frozenset({"finished", "failed"})
MAX_EVENT_BYTES: Final = 1024 * 1024

_CUSTOM_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# A job's name: runs of one job are comparable (their step durations teach the ETA).
JOB_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
LEVELS: Final = ("debug", "info", "warning", "error")
STEP_PHASES: Final = ("start", "end")
STEP_OUTCOMES: Final = ("ok", "failed", "retried")
_ARTIFACT_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MAX_ARTIFACT_REF = 2048

# field -> (accepted Python types, description for error messages)
_FIELDS: Final[dict[str, tuple[tuple[type, ...], str]]] = {
    "type": ((str,), "a string"),
    "ts": ((str,), "an ISO-8601 UTC timestamp string"),
    "session": ((str,), "a session id string"),
    "step": ((int,), "an integer >= 0"),
    "total": ((int,), "an integer >= 1"),
    "percent": ((int, float), "a number from 0 to 100"),
    "eta_s": ((int, float), "a number of seconds >= 0"),
    "message": ((str,), "a string"),
    "error": ((str,), "a string"),
    "job": ((str,), "a job name matching [A-Za-z0-9_.-]{1,128}"),
    "level": ((str,), "one of " + ", ".join(LEVELS)),
    "phase": ((str,), "one of " + ", ".join(STEP_PHASES)),
    "attempt": ((int,), "an integer >= 1"),
    "outcome": ((str,), "one of " + ", ".join(STEP_OUTCOMES)),
    "duration_s": ((int, float), "a number of seconds >= 0"),
    "eta_runs": ((int,), "an integer >= 0"),
    "artifact": ((dict,), 'an object {"kind", "url" or "path", "name"?, "mime"?}'),
    "data": ((object,), "any JSON value"),
}

_JOB_FIELDS: Final = frozenset(
    {"job", "level", "phase", "attempt", "outcome", "duration_s", "eta_runs", "artifact"}
)

Envelope = dict[str, Any]


def validate_type(name: object) -> str:
    """Return ``name`` if it is a built-in event type or a valid custom one."""
    if isinstance(name, str) and (name in BUILTIN_TYPES or _CUSTOM_TYPE.fullmatch(name)):
        return name
    raise InvalidEventType(
        f"invalid event type {name!r}: use a built-in type "
        f"({', '.join(sorted(BUILTIN_TYPES))}) or a name matching [a-z][a-z0-9_.-]* "
        "(at most 64 characters)"
    )


def now_ts(now_s: float | None = None) -> str:
    """An envelope timestamp: UTC, millisecond precision, ``Z`` suffix."""
    t = time.time() if now_s is None else now_s
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def validate(event: Mapping[str, Any]) -> Envelope:
    """Check every field of an envelope; return it as a plain dict.

    Raises ``InvalidEventType`` or ``InvalidEvent`` naming the offending field.
    """
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, got {type(event).__name__}")
    for key in ("type", "ts"):
        if key not in event:
            raise InvalidEvent(f"event is missing the {key!r} field")
    for key, value in event.items():
        spec = _FIELDS.get(key)
        if spec is None:
            raise InvalidEvent(f"unknown event field {key!r}: put a job's own values under 'data'")
        types, what = spec
        # bool is an int subclass; True is never a valid step or percent.
        if not isinstance(value, types) or (isinstance(value, bool) and types != (object,)):
            raise InvalidEvent(f"event field {key!r} must be {what}, got {value!r}")
    validate_type(event["type"])
    step, total = event.get("step"), event.get("total")
    if step is not None and step < 0:
        raise InvalidEvent(f"step must be >= 0, got {step}")
    if total is not None and total < 1:
        raise InvalidEvent(f"total must be >= 1, got {total}")
    if step is not None and total is not None and step > total:
        raise InvalidEvent(f"step {step} is beyond total {total}")
    percent = event.get("percent")
    if percent is not None and not (math.isfinite(percent) and 0 <= percent <= 100):
        raise InvalidEvent(f"percent must be from 0 to 100, got {percent}")
    eta = event.get("eta_s")
    if eta is not None and not (math.isfinite(eta) and eta >= 0):
        raise InvalidEvent(f"eta_s must be a finite number >= 0, got {eta}")
    if event["type"] in ("step", "artifact") or not _JOB_FIELDS.isdisjoint(event):
        _validate_job_fields(event)
    return dict(event)


def _validate_job_fields(event: Mapping[str, Any]) -> None:
    """The job-view fields: job name, log level, step phase/attempt/outcome/duration, the
    ETA's basis and artifact references (docs/contract.md, "Job view")."""
    job = event.get("job")
    if job is not None and not JOB_NAME.fullmatch(job):
        raise InvalidEvent(f"job must match [A-Za-z0-9_.-]{{1,128}}, got {job!r}")
    for key, allowed in (("level", LEVELS), ("phase", STEP_PHASES), ("outcome", STEP_OUTCOMES)):
        value = event.get(key)
        if value is not None and value not in allowed:
            raise InvalidEvent(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    attempt = event.get("attempt")
    if attempt is not None and attempt < 1:
        raise InvalidEvent(f"attempt must be >= 1, got {attempt}")
    duration = event.get("duration_s")
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        raise InvalidEvent(f"duration_s must be a finite number >= 0, got {duration}")
    runs = event.get("eta_runs")
    if runs is not None and runs < 0:
        raise InvalidEvent(f"eta_runs must be >= 0, got {runs}")
    kind = event["type"]
    if kind == "step":
        if event.get("step") is None or event.get("phase") is None:
            raise InvalidEvent("a step event needs 'step' (its number) and 'phase' (start or end)")
        if event["phase"] == "end" and event.get("outcome") is None:
            raise InvalidEvent("a step's end needs an 'outcome' (ok, failed or retried)")
    artifact = event.get("artifact")
    if kind == "artifact" and artifact is None:
        raise InvalidEvent("an artifact event needs an 'artifact' object")
    if artifact is not None:
        _validate_artifact(artifact)


def _validate_artifact(artifact: Mapping[str, Any]) -> None:
    unknown = set(artifact) - {"kind", "url", "path", "name", "mime"}
    if unknown:
        raise InvalidEvent(
            f"unknown artifact field(s) {sorted(unknown)}: use kind, url, path, name, mime"
        )
    kind = artifact.get("kind")
    if not isinstance(kind, str) or not _ARTIFACT_KIND.fullmatch(kind):
        raise InvalidEvent(
            f"artifact kind must match [a-z][a-z0-9_.-]* (e.g. screenshot), got {kind!r}"
        )
    refs = [artifact.get(k) for k in ("url", "path") if artifact.get(k) is not None]
    if not refs:
        raise InvalidEvent("an artifact needs a 'url' or a 'path' (a reference, never the bytes)")
    for key in ("url", "path", "name", "mime"):
        value = artifact.get(key)
        if value is not None and (
            not isinstance(value, str) or not 0 < len(value) <= MAX_ARTIFACT_REF
        ):
            raise InvalidEvent(
                f"artifact {key} must be a string of 1 to {MAX_ARTIFACT_REF} characters"
            )


def percent_of(step: int, total: int) -> float:
    """``step`` of ``total`` in percent, one decimal, half up: the bus's one rounding
    (``rpa-bus emit``, ``Session.progress`` and ``make`` all use it). Exact integer
    arithmetic: 1 of 16 is 6.3, not the 6.2 that ``round(6.25, 1)`` gives."""
    return (2000 * step + total) // (2 * total) / 10


def eta_of(elapsed_s: float, step: int, total: int) -> float:
    """Seconds left at the average pace so far (``elapsed_s`` for ``step`` steps), one
    decimal, half up."""
    return int(10.0 * elapsed_s / step * (total - step) + 0.5) / 10


def progress(
    step: int,
    total: int | None = None,
    *,
    ts: str,
    eta_s: float | None = None,
    message: str | None = None,
    eta_runs: int | None = None,
    data: Any = None,
) -> Envelope:
    """A ``progress`` envelope, checking only what varies (``make`` checks everything and
    costs several times more): the fields and their order are ``make``'s, ``percent``
    computed by ``percent_of`` when ``total`` is known."""
    if step.__class__ is not int:  # bool is refused too
        raise InvalidEvent(f"step must be an integer, got {step!r}")
    if step < 0:
        raise InvalidEvent(f"step must be >= 0, got {step}")
    event: Envelope = {"type": "progress", "ts": ts, "step": step}
    if total is not None:
        if step > total:
            raise InvalidEvent(f"step {step} is beyond total {total}")
        event["total"] = total
        event["percent"] = percent_of(step, total)
        if eta_s is not None:
            event["eta_s"] = eta_s
    if message is not None:
        if not isinstance(message, str):
            raise InvalidEvent(f"message must be a string, got {message!r}")
        event["message"] = message
    if eta_runs is not None and "eta_s" in event:
        event["eta_runs"] = eta_runs
    if data is not None:
        event["data"] = data
    return event


def _derived_percent(step: int, total: int) -> float | None:
    return percent_of(step, total) if 0 <= step <= total else None


def make(
    type: str,
    *,
    ts: str | None = None,
    session: str | None = None,
    step: int | None = None,
    total: int | None = None,
    percent: float | None = None,
    eta_s: float | None = None,
    message: str | None = None,
    error: str | None = None,
    job: str | None = None,
    level: str | None = None,
    phase: str | None = None,
    attempt: int | None = None,
    outcome: str | None = None,
    duration_s: float | None = None,
    eta_runs: int | None = None,
    artifact: Mapping[str, Any] | None = None,
    data: Any = None,
) -> Envelope:
    """Build and validate an envelope, leaving out the fields that are ``None``.

    ``percent``, when not given, is computed from ``step`` and ``total`` (``percent_of``)
    if both are given and valid."""
    if percent is None and step.__class__ is int and total.__class__ is int:
        percent = _derived_percent(step, total)
    event: Envelope = {"type": type, "ts": ts or now_ts()}
    for key, value in (
        ("session", session),
        ("step", step),
        ("total", total),
        ("percent", percent),
        ("eta_s", eta_s),
        ("message", message),
        ("error", error),
        ("job", job),
        ("level", level),
        ("phase", phase),
        ("attempt", attempt),
        ("outcome", outcome),
        ("duration_s", duration_s),
        ("eta_runs", eta_runs),
        ("artifact", dict(artifact) if artifact is not None else None),
        ("data", data),
    ):
        if value is not None:
            event[key] = value
    return validate(event)


def encode(event: Mapping[str, Any], *, max_bytes: int = MAX_EVENT_BYTES) -> bytes:
    """Encode a validated envelope as compact JSON bytes.

    Raises ``InvalidEvent`` if a value is not JSON-serialisable (orjson's rules: str, int,
    float, bool, None, dict with str keys, list, tuple, datetime, UUID, dataclass, enum)
    or the encoding is larger than ``max_bytes``.
    """
    try:
        raw = orjson.dumps(event)
    except TypeError as exc:
        raise InvalidEvent(f"event data is not JSON-serialisable: {exc}") from exc
    if len(raw) > max_bytes:
        raise InvalidEvent(f"event is {len(raw)} bytes encoded, more than the {max_bytes} allowed")
    return raw


def is_terminal(raw: bytes) -> bool:
    """Whether a stored envelope is ``finished`` or ``failed``, without validating it (a
    worker deciding whether a stream has ended; anything unreadable is not terminal)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("type") in TERMINAL_TYPES


def decode(raw: bytes | str) -> Envelope:
    """Decode and validate an envelope; raise ``InvalidEvent`` if it is not one."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"event is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(value).__name__}")
    return validate(value)
