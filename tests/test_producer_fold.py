"""The batch fold of session state equals applying state_fields() event by event."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from producer._core import _fold
from producer._journal import Item
from rpa_bus import state_fields

TYPES = [
    "started", "progress", "step", "log", "result", "error", "finished", "failed", "estimates",
]  # fmt: skip


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"type": draw(st.sampled_from(TYPES)), "ts": draw(st.text(max_size=3))}
    for key, values in (
        ("step", st.integers(0, 9)),
        ("total", st.integers(9, 10)),
        ("percent", st.floats(0, 100)),
        ("eta_s", st.floats(0, 50)),
        ("message", st.text(max_size=3)),
        ("error", st.text(max_size=3)),
        ("job", st.sampled_from(["j1", "j2"])),
        ("eta_runs", st.integers(0, 3)),
    ):
        if draw(st.booleans()):
            event[key] = draw(values)
    return event


@given(st.lists(events(), min_size=1, max_size=30))
def test_fold_matches_forward_application(evts: list[dict[str, Any]]) -> None:
    items = [Item("session:f", "p", i, orjson.dumps(e), e) for i, e in enumerate(evts)]
    expected: dict[str, str] = {}
    for e in evts:
        expected.update(state_fields(e))
    assert _fold(items) == expected
