"""The learned ETA (pure): step profiles from past runs, the speed correction, fallbacks."""

from __future__ import annotations

import math

import pytest

from rpa_bus._eta import StepProfile, durations_of, eta_from_pace


def test_pace_extrapolates_the_average_step() -> None:
    assert eta_from_pace(30.0, 3, 15) == pytest.approx(120.0)
    assert eta_from_pace(30.0, 0, 15) is None
    assert eta_from_pace(30.0, 15, 15) == 0.0


def test_profile_is_the_median_of_recent_runs() -> None:
    runs = [{1: 1.0, 2: 10.0}, {1: 3.0, 2: 30.0}, {1: 2.0, 2: 1000.0}]
    profile = StepProfile.learn(runs)
    assert profile.runs == 3
    assert profile.typical_s == {1: 2.0, 2: 30.0}  # one outlier does not move a median


def test_eta_adds_the_remaining_steps_typical_durations() -> None:
    profile = StepProfile.learn([{1: 2.0, 2: 60.0, 3: 5.0}] * 4)
    # Nothing done yet, 1 s into step 1: the rest of step 1 + steps 2 and 3.
    first = profile.eta(done={}, current=1, in_current_s=1.0, total=3)
    assert first is not None
    assert first.eta_s == pytest.approx(1.0 + 60.0 + 5.0)
    assert first.runs == 4
    # Past a step's typical length it is assumed nearly done, never negative.
    late = profile.eta(done={1: 2.0}, current=2, in_current_s=90.0, total=3)
    assert late is not None
    assert late.eta_s == pytest.approx(6.0 + 5.0)


def test_a_slow_run_stretches_the_rest_shrunk_by_the_evidence() -> None:
    profile = StepProfile({1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0}, runs=5)  # default spreads
    one = profile.eta(done={1: 20.0}, current=None, in_current_s=0.0, total=4)
    assert one is not None
    # Observed 2x on one step; prior spread 0.25, step noise 0.35 -> weight 0.338.
    weight = 0.25**2 / (0.25**2 + 0.35**2)
    assert one.eta_s == pytest.approx(30.0 * math.exp(weight * math.log(2.0)))
    # The same 2x over three steps is more evidence: closer to 2x.
    three = profile.eta(done={1: 20.0, 2: 20.0, 3: 20.0}, current=None, in_current_s=0, total=4)
    assert three is not None
    assert 1.264 * 10.0 < three.eta_s < 2.0 * 10.0


def test_spreads_are_learned_from_past_runs() -> None:
    steady = [{1: 10.0, 2: 10.0}] * 6  # every run alike: trust the observed speed little
    assert StepProfile.learn(steady).run_spread == pytest.approx(0.01)
    varied = [{1: 10.0 * k, 2: 10.0 * k} for k in (0.5, 1.0, 2.0, 1.0, 0.5, 2.0)]
    assert StepProfile.learn(varied).run_spread > 0.5


def test_no_history_or_an_unknown_step_gives_no_learned_estimate() -> None:
    assert StepProfile.learn([]).eta(done={}, current=1, in_current_s=0, total=2) is None
    profile = StepProfile.learn([{1: 1.0}])
    assert profile.eta(done={}, current=1, in_current_s=0, total=2) is None


def test_durations_from_step_starts_count_a_retried_step_twice() -> None:
    starts = [(1, 0.0), (2, 4.0), (2, 10.0), (3, 11.0)]
    assert durations_of(starts, 20.0) == {1: 4.0, 2: 7.0, 3: 9.0}
