"""How wrong is the ETA? The run's own pace vs durations learned from past runs.

    python bench/eta.py [--jobs 20] [--steps 15] [--history 30] [--runs 200] [--seed 7]

Makes ``--jobs`` jobs of uneven steps (a few quick screens, a few slow ones: each job's
typical durations drawn once, log-uniform between 2 s and 90 s), then runs of each with
noise: every step's
duration varies by a log-normal factor (sigma 0.35), and each run has its own speed
(log-normal, sigma 0.25: a slow target system slows every step). The first ``--history``
runs teach a ``StepProfile``; the next ``--runs`` are predicted at 10, 25, 50 and 75% of
their elapsed time by both methods, on the same data. Prints the mean absolute error of
each method in seconds and as a share of the true time left, and their ratio. Not a test;
nothing here touches the network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from rpa_bus._eta import StepProfile, eta_from_pace  # noqa: E402

POINTS = (0.10, 0.25, 0.50, 0.75)


def make_job(rng: random.Random, steps: int) -> list[float]:
    return [2.0 * (45.0 ** rng.random()) for _ in range(steps)]


def make_run(rng: random.Random, job: list[float]) -> dict[int, float]:
    speed = rng.lognormvariate(0.0, 0.25)
    return {i + 1: base * speed * rng.lognormvariate(0.0, 0.35) for i, base in enumerate(job)}


def where(run: dict[int, float], at_s: float) -> tuple[dict[int, float], int | None, float]:
    """The steps done by ``at_s``, the current step and the time spent in it."""
    done: dict[int, float] = {}
    t = 0.0
    for step in sorted(run):
        if t + run[step] > at_s:
            return done, step, at_s - t
        done[step] = run[step]
        t += run[step]
    return done, None, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--history", type=int, default=30)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    errors: dict[tuple[str, float], list[float]] = {}
    relative: dict[tuple[str, float], list[float]] = {}
    lengths: list[float] = []
    for _ in range(args.jobs):
        job = make_job(rng, args.steps)
        lengths.append(sum(job))
        profile = StepProfile.learn(make_run(rng, job) for _ in range(args.history))
        predict(rng, job, profile, args.runs, errors, relative)
    print(
        f"{args.jobs} jobs of {args.steps} steps (typical run {min(lengths):.0f}-"
        f"{max(lengths):.0f} s), each learned from {args.history} runs; "
        f"{args.runs} runs of each predicted"
    )
    heads = ("at", "pace MAE", "learned MAE", "pace rel", "learned rel", "ratio")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (5, 10, 12, 9, 12, 6), strict=True)))
    for point in POINTS:
        pace = statistics.mean(errors[("pace", point)])
        learned = statistics.mean(errors[("learned", point)])
        pace_rel = statistics.mean(relative[("pace", point)])
        learned_rel = statistics.mean(relative[("learned", point)])
        print(
            f"{point:>5.0%} {pace:>9.1f}s {learned:>11.1f}s {pace_rel:>9.0%} {learned_rel:>12.0%}"
            f" {learned / pace:>6.2f}"
        )


def predict(
    rng: random.Random,
    job: list[float],
    profile: StepProfile,
    runs: int,
    errors: dict[tuple[str, float], list[float]],
    relative: dict[tuple[str, float], list[float]],
) -> None:
    steps = len(job)
    for _ in range(runs):
        run = make_run(rng, job)
        length = sum(run.values())
        for point in POINTS:
            at = point * length
            done, current, in_current = where(run, at)
            truth = length - at
            # The pace method sees what a progress bar shows: steps finished so far.
            pace = eta_from_pace(at, len(done), steps)
            learned = profile.eta(done=done, current=current, in_current_s=in_current, total=steps)
            for name, guess in (
                ("pace", pace),
                ("learned", None if learned is None else learned.eta_s),
            ):
                # No step finished yet: the pace method has no answer; count it as
                # "no idea" = the whole remaining time wrong, as a blank ETA would be.
                err = abs((guess if guess is not None else 0.0) - truth)
                errors.setdefault((name, point), []).append(err)
                relative.setdefault((name, point), []).append(err / truth)


if __name__ == "__main__":
    main()
