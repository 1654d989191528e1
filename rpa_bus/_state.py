"""A session's folded state: where it stands, kept in its meta hash.

Each append updates the meta hash in the same atomic script, with the fields that
``state_fields(event)`` returns, so a client that joins after the early history was
trimmed is still shown status, step, percent and the last message. The folding rule lives
here, in pure code, so the producer (which computes it) and the tests share one definition.

Meta hash fields::

    epoch      changes when the stream is recreated (clients see ``reset``)
    created    ms since the epoch when the meta hash was first written
    seq:PID    highest sequence number applied from producer PID (idempotence)
    status     running | finished | failed
    step total percent eta_s message error updated   the folded state
    job        the job the session is a run of (from its ``started`` event)
    eta_runs   how many past runs ``eta_s`` rests on (0: the run's own pace)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from rpa_bus._envelope import Envelope

STATE_FIELDS: Final = (
    "status",
    "step",
    "total",
    "percent",
    "eta_s",
    "message",
    "error",
    "updated",
    "job",
    "eta_runs",
)
_INT_FIELDS: Final = frozenset({"step", "total", "eta_runs"})
_FLOAT_FIELDS: Final = frozenset({"percent", "eta_s"})

STATUS_BY_TYPE: Final = {
    "started": "running",
    "progress": "running",
    "step": "running",
    "finished": "finished",
    "failed": "failed",
}


def state_fields(event: Envelope) -> dict[str, str]:
    """The meta hash fields an event sets (as strings, ready for HSET)."""
    kind = event["type"]
    out: dict[str, str] = {"updated": event["ts"]}
    status = STATUS_BY_TYPE.get(kind)
    if status is not None:
        out["status"] = status
    for key in ("step", "total", "percent", "eta_s", "eta_runs"):
        if key in event:
            out[key] = repr(event[key]) if isinstance(event[key], float) else str(event[key])
    if kind == "started":
        # A new run of a session id starts with a clean slate.
        out.setdefault("step", "0")
        out["error"] = ""
        out["eta_s"] = ""
        out["eta_runs"] = ""
        out["percent"] = "0.0"
        out["job"] = event.get("job", "")
    if kind == "finished":
        out["percent"] = "100.0"
        out["eta_s"] = "0.0"
    if "message" in event:
        out["message"] = event["message"]
    if kind in ("error", "failed"):
        out["error"] = event.get("error") or event.get("message") or kind
    return out


# state_fields() of an event type outside _RESETTING sets only "updated", "status" (for
# the types in STATUS_BY_TYPE) and those of these keys the event carries (job is set by
# `started` alone, error by the resetting types).
_CARRIED: Final = frozenset({"step", "total", "percent", "eta_s", "eta_runs", "message"})
_RESETTING: Final = frozenset({"started", "finished", "failed", "error"})


def last_fields(events: Sequence[Envelope]) -> dict[str, str]:
    """What ``state_fields`` of ``events``, applied in order, leave: for each field the
    last event's value. Walks backwards keeping the first value seen, and skips the events
    that cannot add a missing field (``state_fields`` is the costly part): a run of log
    lines, say, once the newest has given ``updated`` and ``message``."""
    state: dict[str, str] = {}
    wanted = _CARRIED  # of the keys events carry, those not in ``state`` yet
    for event in reversed(events):
        kind = event["type"]
        if (
            kind not in _RESETTING
            and state
            and ("status" in state or kind not in STATUS_BY_TYPE)
            and wanted.isdisjoint(event)
        ):
            continue
        for key, value in state_fields(event).items():
            if key not in state:
                state[key] = value
        if len(state) == len(STATE_FIELDS):
            break
        wanted = _CARRIED.difference(state)
    return state


def state_from_meta(meta: Mapping[str | bytes, str | bytes]) -> dict[str, Any]:
    """The client-facing ``state`` object from a meta hash (only the folded fields, typed)."""
    state: dict[str, Any] = {}
    for raw_key, raw_value in meta.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if key not in STATE_FIELDS:
            continue
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        if value == "":
            state[key] = None
        elif key in _INT_FIELDS:
            state[key] = int(value)
        elif key in _FLOAT_FIELDS:
            state[key] = float(value)
        else:
            state[key] = value
    return state
