"""Runs and jobs in the archive: the pure part (no database).

While a session's entries are stored, ``fold_run`` keeps an accumulator of its current run
(in ``sessions.run``, JSON): when it started, its job, and how long each step took. When
the run ends (``finished``/``failed``) it becomes a ``FinishedRun``, a row of ``runs``:
what job summaries (``JobSummary``) and learned step profiles (``profile_of``) are made
from, without reading events again.

A step's duration is the sum of its attempts' ``duration_s`` (the ``step`` ends); a run
that reports ``progress`` only gets, for step N, the time from the previous mark (its
start or the previous new step) to ``progress(N)`` by the stream ids' clock: what the
producer measures for its own ETA, so learned and observed durations compare.

A run keeps the durations of its first ``MAX_RUN_STEPS`` steps only (the first to report):
the accumulator is read and written again for every stored batch of the session, so it
must not grow with the run's length (an LLM stream or a long job reporting thousands of
steps). The run's own duration is kept whatever its length; its profile covers the steps
kept, and a producer's learned ETA for a run longer than that falls back to the pace
(``StepProfile.eta`` lacks the remaining steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

import orjson

from rpa_bus import StepProfile

# How many of a job's newest successful runs its durations and profile rest on.
WINDOW_RUNS = 50

# How many steps of a run the accumulator (and the run's stored steps) keep: a job view's
# step profile and learned ETA are for jobs of tens of steps; past this a run's steps are
# not recorded one by one, its duration still is.
MAX_RUN_STEPS = 256


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """One ended run of a session (a row of ``runs``)."""

    session: str
    started: str
    job: str | None
    status: str  # finished | failed
    ended: str
    duration_s: float
    # "N" -> {"s": seconds, "n": name, "a": attempts, "o": outcome}
    steps: dict[str, dict[str, Any]]

    def steps_json(self) -> str:
        return orjson.dumps(self.steps).decode()


def _ms_of(entry_id: str) -> int:
    ms, _, _ = entry_id.partition("-")
    return int(ms) if ms.isdigit() else 0


# The event types fold_run looks at beyond a job name.
RUN_TYPES = frozenset({"started", "step", "progress", "finished", "failed"})


def counts_progress(acc: dict[str, Any] | None, step: Any) -> bool:
    """Whether a ``progress`` event with this ``step`` is recorded in the accumulator ``acc``
    (a run under way, an int step not counted yet, room under ``MAX_RUN_STEPS``); one
    that is not changes nothing but the run's job."""
    if acc is None or not isinstance(step, int):
        return False
    progress = acc["progress"]
    return len(progress) < MAX_RUN_STEPS and str(step) not in progress


def fold_run(
    sid: str, acc: dict[str, Any] | None, entry_id: str, event: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, FinishedRun | None]:
    """Apply one event (entry ``entry_id``) to a run accumulator; returns the accumulator
    and the run that ended with this event, if any. Events before a ``started`` (a run the
    archive joined midway) are ignored: a partial run would skew the job's figures."""
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in RUN_TYPES:  # log lines: a job name only
        if acc is not None:
            job = event.get("job")
            if isinstance(job, str):
                acc["job"] = job
        return acc, None
    if kind == "progress":  # the common case, kept short
        if acc is not None:
            job = event.get("job")
            if isinstance(job, str):
                acc["job"] = job
            step = event.get("step")
            if counts_progress(acc, step):
                ms = _ms_of(entry_id)
                acc["progress"][str(step)] = {"s": round(max(0, ms - acc["mark"]) / 1000, 3)}
                acc["mark"] = ms
        return acc, None
    ms = _ms_of(entry_id)
    ts = event.get("ts")
    if kind == "started":
        job = event.get("job")
        return {
            "started": ts if isinstance(ts, str) else "",
            "t0": ms,
            "mark": ms,
            "job": job if isinstance(job, str) else None,
            "steps": {},
            "progress": {},
        }, None
    if acc is None:
        return None, None
    job = event.get("job")
    if isinstance(job, str):
        acc["job"] = job
    step = event.get("step")
    if kind == "step" and isinstance(step, int):
        steps = acc["steps"]
        entry = steps.get(str(step))
        if entry is None:
            if len(steps) >= MAX_RUN_STEPS:  # past the bound: not recorded
                if event.get("phase") != "start":
                    acc["mark"] = ms
                return acc, None
            entry = steps[str(step)] = {"s": 0.0, "a": 0}
        name = event.get("message")
        if event.get("phase") == "start":
            if isinstance(name, str):
                entry["n"] = name[:200]
        else:
            duration = event.get("duration_s")
            if isinstance(duration, int | float) and math.isfinite(duration) and duration >= 0:
                entry["s"] = round(entry["s"] + float(duration), 3)
            attempt = event.get("attempt")
            entry["a"] = max(entry["a"], attempt if isinstance(attempt, int) else 1)
            if isinstance(event.get("outcome"), str):
                entry["o"] = event["outcome"]
            acc["mark"] = ms
    if kind in ("finished", "failed"):
        steps = acc["steps"] or acc["progress"]
        run = FinishedRun(
            session=sid,
            started=acc["started"],
            job=acc["job"],
            status=str(kind),
            ended=ts if isinstance(ts, str) else "",
            duration_s=round(max(0, ms - acc["t0"]) / 1000, 3),
            steps=steps,
        )
        return None, run
    return acc, None


def load_acc(raw: str | bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        acc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return acc if isinstance(acc, dict) else None


def dump_acc(acc: dict[str, Any] | None) -> str | None:
    return None if acc is None else orjson.dumps(acc).decode()


def step_durations(steps: Mapping[str, Any]) -> dict[int, float]:
    """A stored run's step durations, step number -> seconds."""
    out: dict[int, float] = {}
    for key, entry in steps.items():
        if key.isdigit() and isinstance(entry, dict) and isinstance(entry.get("s"), int | float):
            out[int(key)] = float(entry["s"])
    return out


def parse_steps(raw: str | bytes | None) -> dict[str, Any]:
    try:
        steps = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return steps if isinstance(steps, dict) else {}


def profile_of(runs_newest_first: Iterable[str | bytes | None]) -> StepProfile:
    """The learned step profile from successful runs' stored steps, newest first."""
    runs = [step_durations(parse_steps(raw)) for raw in runs_newest_first]
    return StepProfile.learn([r for r in reversed(runs) if r])


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One job's figures from its archived runs (``GET /v1/jobs``)."""

    job: str
    runs: int  # ended runs in the archive
    runs_today: int  # of them, ended since 00:00 UTC today
    succeeded: int
    failed: int
    success_rate: float | None  # succeeded / runs, None without runs
    median_s: float | None  # over the newest WINDOW_RUNS successful runs
    p90_s: float | None
    slowest_step: dict[str, Any] | None  # {"step", "name", "median_s"}
    profile: dict[str, Any] | None = None  # the learned step profile (one job's view)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "job": self.job,
            "runs": self.runs,
            "runs_today": self.runs_today,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "success_rate": self.success_rate,
            "median_s": self.median_s,
            "p90_s": self.p90_s,
            "slowest_step": self.slowest_step,
        }
        if self.profile is not None:
            out["profile"] = self.profile
        return out


def _p90(values: Sequence[float]) -> float:
    """The nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summarise(
    job: str,
    counts: Sequence[Any],
    recent: Sequence[tuple[float | None, str | bytes | None]],
    *,
    with_profile: bool = False,
) -> JobSummary:
    """``counts``: (runs, runs_today, succeeded, failed); ``recent``: (duration_s, steps)
    of the newest successful runs, newest first."""
    runs, today, ok, bad = (int(x or 0) for x in counts)
    durations = [float(d) for d, _ in recent if d is not None]
    per_step: dict[int, list[float]] = {}
    names: dict[int, str] = {}
    for _, raw in recent:
        steps = parse_steps(raw)
        for number, seconds in step_durations(steps).items():
            per_step.setdefault(number, []).append(seconds)
            name = steps[str(number)].get("n")
            if isinstance(name, str):
                names.setdefault(number, name)  # the newest run's name
    slowest = None
    if per_step:
        number, seconds = max(((n, median(ds)) for n, ds in per_step.items()), key=lambda x: x[1])
        slowest = {"step": number, "name": names.get(number), "median_s": round(seconds, 3)}
    profile = profile_of(raw for _, raw in recent).as_json() if with_profile else None
    return JobSummary(
        job=job,
        runs=runs,
        runs_today=today,
        succeeded=ok,
        failed=bad,
        success_rate=round(ok / runs, 4) if runs else None,
        median_s=round(median(durations), 3) if durations else None,
        p90_s=round(_p90(durations), 3) if durations else None,
        slowest_step=slowest,
        profile=profile,
    )
