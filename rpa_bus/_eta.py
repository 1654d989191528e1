"""Time-to-finish estimates for a run of numbered steps: from the run's own pace, and from
what past runs of the same job took for each step.

Pure code: the archive (or a per-job summary the archiver keeps) supplies the finished
runs' step durations, and whoever folds a session's state asks for an estimate.

The pace estimate (``eta_from_pace``) assumes every step takes as long as the average so
far: wrong early, and wrong whenever steps differ (a login screen takes seconds, a quote
calculation minutes). The learned estimate (``StepProfile.eta``) adds up the typical
duration of each remaining step instead, taken from past runs, and corrects it by how
fast this run has been so far relative to those runs (a slow target system slows every
step alike). How far to trust that speed is learned too: past runs show how much whole
runs differ in speed and how much single steps scatter around it, and the run's observed
speed is weighed against both (a Bayesian shrinkage in log space), so one quick first
step does not halve the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

# How many past runs a step's typical duration rests on at most: recent runs reflect the
# target system as it is now, and a bounded window keeps a profile small.
WINDOW_RUNS = 50

# Spreads (standard deviations of the log) assumed until a job has runs enough to learn
# its own: how much whole runs differ in speed, and how much a step scatters around it.
DEFAULT_RUN_SPREAD = 0.25
DEFAULT_STEP_SPREAD = 0.35


def eta_from_pace(elapsed_s: float, step: int, total: int) -> float | None:
    """Seconds left if each remaining step takes the average of the steps done so far."""
    if step <= 0 or total <= 0:
        return None
    return max(0.0, elapsed_s / step * (total - step))


@dataclass(frozen=True, slots=True)
class Estimate:
    """A learned estimate and its basis: how many past runs it rests on."""

    eta_s: float
    runs: int


@dataclass(frozen=True, slots=True)
class StepProfile:
    """Typical duration of each step of one job (the median over its recent runs)."""

    typical_s: Mapping[int, float]
    runs: int
    run_spread: float = DEFAULT_RUN_SPREAD
    step_spread: float = DEFAULT_STEP_SPREAD

    @classmethod
    def learn(cls, runs: Iterable[Mapping[int, float]]) -> StepProfile:
        """Learn from finished runs, each a mapping step -> duration in seconds (oldest
        first; only the newest ``WINDOW_RUNS`` count)."""
        window = list(runs)[-WINDOW_RUNS:]
        samples: dict[int, list[float]] = {}
        for run in window:
            for step, duration in run.items():
                if duration >= 0 and math.isfinite(duration):
                    samples.setdefault(step, []).append(duration)
        typical = {step: median(ds) for step, ds in samples.items()}
        speeds: list[float] = []
        scatter: list[float] = []
        for run in window:
            pairs = [(d, typical[s]) for s, d in run.items() if s in typical and d > 0]
            base = sum(t for _, t in pairs)
            if not pairs or base <= 0:
                continue
            log_speed = math.log(sum(d for d, _ in pairs) / base)
            speeds.append(log_speed)
            scatter += [math.log(d / t) - log_speed for d, t in pairs if t > 0]
        run_spread = _spread(speeds, DEFAULT_RUN_SPREAD)
        step_spread = _spread(scatter, DEFAULT_STEP_SPREAD)
        return cls(typical, len(window), run_spread, step_spread)

    def eta(
        self,
        *,
        done: Mapping[int, float],
        current: int | None,
        in_current_s: float,
        total: int,
    ) -> Estimate | None:
        """Seconds left for a run that finished the steps in ``done`` (step -> duration),
        is ``in_current_s`` into step ``current`` (None between steps) and has ``total``
        steps numbered 1..total. None when the profile lacks a remaining step."""
        if self.runs == 0:
            return None
        remaining = [s for s in range(1, total + 1) if s not in done and s != current]
        if any(s not in self.typical_s for s in remaining):
            return None
        if current is not None and current not in self.typical_s:
            return None
        speed = self._speed(done)
        left = sum(self.typical_s[s] for s in remaining) * speed
        if current is not None:
            # The current step's expected rest; past its typical length, assume it is
            # nearly done rather than predicting a negative time.
            expected = self.typical_s[current] * speed
            left += max(expected - in_current_s, 0.1 * expected)
        return Estimate(left, self.runs)

    def _speed(self, done: Mapping[int, float]) -> float:
        """This run's speed relative to the typical run, shrunk toward 1 by how much the
        evidence so far can be trusted."""
        known = [(d, self.typical_s[s]) for s, d in done.items() if s in self.typical_s]
        actual = sum(d for d, _ in known)
        typical = sum(t for _, t in known)
        if not known or typical <= 0 or actual <= 0:
            return 1.0
        observed = math.log(actual / typical)
        # Steps of equal length count alike; one long step weighs like one step, not many.
        n_eff = typical**2 / sum(t * t for _, t in known)
        noise = self.step_spread**2 / n_eff
        prior = self.run_spread**2
        return math.exp(observed * prior / (prior + noise))

    def as_json(self) -> dict[str, Any]:
        """The compact form the archiver stores for producers (``P:job:JOB:profile``)."""
        return {
            "v": 1,
            "runs": self.runs,
            "typical_s": {str(k): round(v, 3) for k, v in sorted(self.typical_s.items())},
            "run_spread": round(self.run_spread, 4),
            "step_spread": round(self.step_spread, 4),
        }

    @classmethod
    def from_json(cls, value: object) -> StepProfile:
        """The inverse of ``as_json``; ``ValueError`` naming what is wrong otherwise."""
        if not isinstance(value, dict) or value.get("v") != 1:
            raise ValueError("not a version-1 step profile object")
        runs, typical = value.get("runs"), value.get("typical_s")
        spreads = (value.get("run_spread"), value.get("step_spread"))
        if not isinstance(runs, int) or isinstance(runs, bool) or runs < 0:
            raise ValueError(f"profile runs must be an integer >= 0, got {runs!r}")
        if not isinstance(typical, dict):
            raise ValueError("profile typical_s must be an object step -> seconds")
        out: dict[int, float] = {}
        for key, seconds in typical.items():
            if not (isinstance(key, str) and key.isdigit()):
                raise ValueError(f"profile step {key!r} is not a step number")
            if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"profile duration of step {key} is not seconds >= 0")
            out[int(key)] = float(seconds)
        for spread in spreads:
            if not isinstance(spread, int | float) or not math.isfinite(spread) or spread <= 0:
                raise ValueError(f"profile spread must be a number > 0, got {spread!r}")
        return cls(out, runs, float(spreads[0]), float(spreads[1]))  # type: ignore[arg-type]


def _spread(logs: Sequence[float], default: float) -> float:
    """Standard deviation of ``logs``; ``default`` while there are too few to tell."""
    if len(logs) < 5:
        return default
    mean = sum(logs) / len(logs)
    return max(0.01, math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)))


def durations_of(step_starts: Sequence[tuple[int, float]], end_s: float) -> dict[int, float]:
    """Step durations from (step, start time) pairs in order and the run's end time."""
    out: dict[int, float] = {}
    for (step, start), (_, nxt) in zip(step_starts, [*step_starts[1:], (0, end_s)], strict=True):
        out[step] = out.get(step, 0.0) + max(0.0, nxt - start)
    return out
