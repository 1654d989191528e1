"""The archive's batch fold (``fold_session_runs``: one decode per row, the state's fields
taken backwards by ``last_fields``) equals the forward fold it replaced: each row decoded,
``state_fields`` applied in order, and ``fold_run`` as it was, row by row."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from rpa_bus import state_fields, state_from_meta
from rpa_bus._state import last_fields
from rpa_bus.archive import Record
from rpa_bus.archive._runs import MAX_RUN_STEPS, FinishedRun, dump_acc, load_acc, profile_of
from rpa_bus.archive._store import (
    TEXTS_MAX,
    ArchivedSession,
    _as_strings,
    _split_id,
    fold_session_runs,
    fold_session_texts,
    session_texts,
)

TYPES = [
    "started", "progress", "step", "log", "result", "error", "finished", "failed", "estimates",
]  # fmt: skip


# -- the forward fold, as it was before the batch fold ---------------------------------


def _ms_of(entry_id: str) -> int:
    ms, _, _ = entry_id.partition("-")
    return int(ms) if ms.isdigit() else 0


def forward_fold_run(
    sid: str, acc: dict[str, Any] | None, entry_id: str, event: dict[str, Any]
) -> tuple[dict[str, Any] | None, FinishedRun | None]:
    kind = event.get("type")
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
        entry = acc["steps"].setdefault(str(step), {"s": 0.0, "a": 0})
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
    elif kind == "progress" and isinstance(step, int) and str(step) not in acc["progress"]:
        acc["progress"][str(step)] = {"s": round(max(0, ms - acc["mark"]) / 1000, 3)}
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


def forward_fold(
    sid: str, current: ArchivedSession | None, run: str | None, rows: Sequence[Record]
) -> tuple[ArchivedSession | None, str | None, list[FinishedRun]]:
    last = _split_id(current.last) if current is not None and current.last else (-1, -1)
    fields = _as_strings(current)
    epoch = current.epoch if current is not None else ""
    started = current.started if current is not None else None
    first = current.first if current is not None else None
    last_id = current.last if current is not None else None
    acc = load_acc(run)
    ended: list[FinishedRun] = []
    changed = False
    for row in rows:
        if _split_id(row.id) <= last:
            continue
        changed = True
        last_id = row.id
        if row.epoch and row.epoch != epoch:
            epoch, first, started, fields, acc = row.epoch, row.id, None, {}, None
        if first is None:
            first = row.id
        try:
            event = orjson.loads(row.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            continue
        acc, done = forward_fold_run(sid, acc, row.id, event)
        if done is not None:
            ended.append(done)
        if not isinstance(event.get("ts"), str):
            continue
        fields.update(state_fields(event))  # type: ignore[arg-type]
        if event["type"] == "started" or started is None:
            started = event["ts"]
    if not changed:
        return None, run, []
    typed = state_from_meta(fields)  # type: ignore[arg-type]
    state = ArchivedSession(
        session=sid,
        epoch=epoch,
        status=typed.get("status"),
        step=typed.get("step"),
        total=typed.get("total"),
        percent=typed.get("percent"),
        eta_s=typed.get("eta_s"),
        message=typed.get("message"),
        error=typed.get("error"),
        started=started,
        updated=typed.get("updated") or started or "",
        first=first,
        last=last_id,
        job=typed.get("job"),
        eta_runs=typed.get("eta_runs"),
    )
    return state, dump_acc(acc), ended


# -- generated histories ------------------------------------------------------------------


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"type": draw(st.sampled_from(TYPES))}
    if draw(st.integers(0, 9)):  # now and then no ts, or not a string
        event["ts"] = draw(st.sampled_from(["a", "b", "c"]))
    elif draw(st.booleans()):
        event["ts"] = 7
    for key, values in (
        ("step", st.integers(0, 4)),
        ("total", st.integers(4, 5)),
        ("percent", st.floats(0, 100)),
        ("eta_s", st.floats(0, 50)),
        ("message", st.text(max_size=3)),
        ("error", st.text(max_size=3)),
        ("job", st.sampled_from(["j1", "j2"])),
        ("eta_runs", st.integers(0, 3)),
        ("phase", st.sampled_from(["start", "end"])),
        ("duration_s", st.floats(0, 5)),
        ("attempt", st.integers(1, 3)),
        ("outcome", st.sampled_from(["ok", "retry"])),
    ):
        if draw(st.booleans()):
            event[key] = draw(values)
    return event


# An entry's data: an envelope, or now and then something that is not one.
datas = st.one_of(
    events().map(orjson.dumps),
    events().map(orjson.dumps),
    events().map(orjson.dumps),
    st.sampled_from([b"not json", b"[1, 2]", b'{"ts": "x"}', b'{"type": 3}']),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Record]:
    n = draw(st.integers(1, 40))
    rows = []
    ms = 1_000
    for _ in range(n):
        ms += draw(st.integers(0, 3_000))
        seq = draw(st.integers(0, 1))
        epoch = draw(st.sampled_from(["e1", "e1", "e1", "e2", ""]))
        rows.append(Record("session:f", epoch, f"{ms}-{seq}", draw(datas)))
    # Ids strictly increasing, as in a stream.
    unique: dict[tuple[int, int], Record] = {_split_id(r.id): r for r in rows}
    return [unique[k] for k in sorted(unique)]


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_batch_fold_matches_the_forward_fold(rows: list[Record], data: st.DataObject) -> None:
    # A first batch, folded from nothing, then the rest (some rows again: a replay).
    cut = data.draw(st.integers(0, len(rows)))
    back = data.draw(st.integers(0, cut))
    head, tail = rows[:cut], rows[cut - back :]
    got = fold_session_runs("f", None, None, head)
    want = forward_fold("f", None, None, head)
    assert got == want
    current, run = got[0], got[1]
    assert fold_session_runs("f", current, run, tail) == forward_fold("f", current, run, tail)


@given(st.lists(events(), max_size=30))
def test_last_fields_matches_forward_application(evts: list[dict[str, Any]]) -> None:
    valid = [e for e in evts if isinstance(e.get("ts"), str)]
    expected: dict[str, str] = {}
    for e in valid:
        expected.update(state_fields(e))  # type: ignore[arg-type]
    assert last_fields(valid) == expected  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_texts_in_the_fold_match_session_texts(rows: list[Record], data: st.DataObject) -> None:
    # The texts collected in the fold's one decode equal the second decode's
    # (``session_texts``), from nothing, from a stored text (now and then a full one),
    # and on a replayed tail.
    cut = data.draw(st.integers(0, len(rows)))
    back = data.draw(st.integers(0, cut))
    head, tail = rows[:cut], rows[cut - back :]
    stored = data.draw(st.sampled_from([None, "", "older\nmessage", "x" * (TEXTS_MAX - 1)]))
    state, run, texts, ended = fold_session_texts("f", None, None, stored, head)
    assert (state, run, ended) == fold_session_runs("f", None, None, head)
    assert texts == (session_texts(stored, None, head) if state is not None else None)
    got = fold_session_texts("f", state, run, texts, tail)
    assert (got[0], got[1], got[3]) == fold_session_runs("f", state, run, tail)
    assert got[2] == (session_texts(texts, state, tail) if got[0] is not None else None)


def _rows(events: list[dict[str, Any]], ms0: int = 1_000, every_ms: int = 10) -> list[Record]:
    return [
        Record("session:long", "e1", f"{ms0 + i * every_ms}-0", orjson.dumps(e))
        for i, e in enumerate(events)
    ]


def test_a_long_run_keeps_the_accumulator_bounded() -> None:
    # 10,000 progress steps (an LLM stream, a long job), folded in batches of 500 as the
    # archiver does: the accumulator stays small, the run's duration is still recorded
    # and its steps are the first MAX_RUN_STEPS.
    n = 10_000
    evts: list[dict[str, Any]] = [{"type": "started", "ts": "a", "job": "long"}]
    evts += [{"type": "progress", "ts": "b", "step": i, "total": n} for i in range(1, n + 1)]
    evts.append({"type": "finished", "ts": "c"})
    rows = _rows(evts)
    state, run, ended = None, None, []
    sizes = []
    for i in range(0, len(rows), 500):
        state, run, done = fold_session_runs("long", state, run, rows[i : i + 500])
        ended += done
        sizes.append(len(run or ""))
    assert max(sizes) < 8_000  # ~15 bytes a step kept; unbounded it reached ~170 KB
    assert run is None  # the run ended
    (finished,) = ended
    assert finished.duration_s == round((n + 1) * 10 / 1000, 3)
    assert sorted(map(int, finished.steps)) == list(range(1, MAX_RUN_STEPS + 1))
    assert all(entry["s"] == 0.01 for entry in finished.steps.values())
    # The learned profile covers the steps kept; a run longer than that gets no learned
    # estimate (the producer then falls back to its pace), a run within it does.
    profile = profile_of([finished.steps_json()])
    assert set(profile.typical_s) == set(range(1, MAX_RUN_STEPS + 1))
    assert profile.eta(done={1: 0.01}, current=None, in_current_s=0.0, total=n) is None
    short = profile.eta(done={1: 0.01}, current=None, in_current_s=0.0, total=MAX_RUN_STEPS)
    assert short is not None
    assert math.isclose(short.eta_s, (MAX_RUN_STEPS - 1) * 0.01)


def test_a_long_run_of_step_events_keeps_the_first_steps() -> None:
    n = MAX_RUN_STEPS + 50
    evts: list[dict[str, Any]] = [{"type": "started", "ts": "a"}]
    for i in range(1, n + 1):
        evts.append({"type": "step", "ts": "b", "step": i, "phase": "start", "message": f"s{i}"})
        evts.append({"type": "step", "ts": "b", "step": i, "phase": "end", "duration_s": 0.5})
    evts.append({"type": "failed", "ts": "c", "error": "boom"})
    _, run, ended = fold_session_runs("long", None, None, _rows(evts))
    assert run is None
    (failed,) = ended
    assert failed.status == "failed"
    assert failed.duration_s == round((2 * n + 1) * 10 / 1000, 3)
    assert sorted(map(int, failed.steps)) == list(range(1, MAX_RUN_STEPS + 1))
    assert failed.steps[str(MAX_RUN_STEPS)] == {"s": 0.5, "a": 1, "n": f"s{MAX_RUN_STEPS}"}
