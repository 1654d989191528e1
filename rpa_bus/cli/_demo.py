"""Simulated RPA jobs with the shape of the real one: a 15-screen insurance quote.

Each job is a run of the job ``quote-demo``: it walks 15 screens as steps (``s.step``),
each with a typical length of its own (a login is quick, the premium calculation slow) and
noise around it, publishes premium estimates at screen 5, logs at every level now and
then, retries a screen whose page timed out (the step's attempt ends ``retried`` and the
screen is entered again), and ends with a quote — or, now and then, fails inside a step
the way a real robot does when the insurer's site gives up on it. With an archiver
running, later runs get an ETA learned from the earlier ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass

from producer import AsyncProducer, AsyncSession

log = logging.getLogger(__name__)

SCREENS = (
    "Screen 1: insurer portal login",
    "Screen 2: policyholder details",
    "Screen 3: driver details",
    "Screen 4: vehicle details",
    "Screen 5: premium estimates",
    "Screen 6: coverages",
    "Screen 7: roadside assistance",
    "Screen 8: deductible",
    "Screen 9: risk questionnaire",
    "Screen 10: overnight address",
    "Screen 11: payment method",
    "Screen 12: review",
    "Screen 13: terms acceptance",
    "Screen 14: proposal issued",
    "Screen 15: policy PDF downloaded",
)
INSURERS = ("Atlas Seguros", "Porto Norte", "Aurora Mutual", "Vela Insurance")
JOB = "quote-demo"
# Seconds each screen typically takes (uneven, like a real insurer's site).
TYPICAL_S = (0.8, 0.5, 0.6, 0.7, 3.0, 0.9, 0.4, 0.4, 1.2, 0.5, 0.6, 0.8, 0.3, 2.0, 1.0)
RETRY_RATIO = 0.06  # a screen's page times out and is retried this often
FAILURES = (
    "insurer site returned HTTP 502 on the quote calculation",
    "vehicle plate not found in the national registry",
    "session expired on the insurer portal after 3 retries",
)


class QuoteFailed(RuntimeError):
    """What a robot raises when the insurer's site fails it."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    sessions: int = 4  # jobs running at once
    count: int | None = None  # jobs in all; None runs until cancelled
    speed: float = 1.0  # 2.0 runs twice as fast
    fail_ratio: float = 0.15
    seed: int | None = None


async def run_quote_job(bus: AsyncProducer, sid: str, rng: random.Random, opts: DemoOptions) -> str:
    """One simulated robot; returns its final status (finished or failed)."""
    vehicle = rng.choice(("Onix 1.0 2022", "HB20 1.6 2021", "Corolla 2.0 2023", "Kwid 1.0 2020"))
    fail_at = rng.randint(6, 14) if rng.random() < opts.fail_ratio else None
    pace = rng.lognormvariate(0.0, 0.2)  # this run's speed: some days the site is slow
    try:
        async with bus.session(sid, job=JOB, total=len(SCREENS), meta={"vehicle": vehicle}) as s:
            for step, title in enumerate(SCREENS, start=1):
                retry = rng.random() < RETRY_RATIO
                while True:
                    async with s.step(step, title) as st:
                        # Irregular pacing around the screen's typical length.
                        seconds = TYPICAL_S[step - 1] * pace * rng.lognormvariate(0.0, 0.3)
                        try:
                            await asyncio.sleep(seconds / opts.speed)
                        except asyncio.CancelledError:
                            s.fail("demo stopped before this quote was done")
                            raise
                        if retry:
                            s.log("the insurer's page timed out; trying again", level="warning")
                            st.retry("page load timed out")
                            retry = False
                            continue
                        if step == fail_at:
                            s.log("the insurer's site answered with an error", level="error")
                            raise QuoteFailed(rng.choice(FAILURES))
                        _screen_events(s, step, rng)
                    break
            s.finish({"vehicle": vehicle, "premium": round(rng.uniform(1400, 4200), 2)})
    except QuoteFailed:
        return "failed"
    return "finished"


def _screen_events(s: AsyncSession, step: int, rng: random.Random) -> None:
    """What a screen reports besides its step: estimates, log lines at every level."""
    if step == 5:
        plans = [
            {"insurer": name, "premium": round(rng.uniform(1400, 4200), 2)} for name in INSURERS
        ]
        s.emit("estimates", {"plans": plans})
        s.log(f"{len(plans)} premium estimates received")
    elif step == 1:
        s.log("logged in to the insurer portal", level="debug")
    elif rng.random() < 0.2:
        s.log(f"waited {rng.randint(300, 2500)} ms for the insurer's page", level="debug")


async def run_demo(bus: AsyncProducer, opts: DemoOptions) -> dict[str, int]:
    """Keep ``opts.sessions`` jobs running until ``opts.count`` have run (or cancelled)."""
    rng = random.Random(opts.seed)
    outcomes = {"finished": 0, "failed": 0}
    numbers = itertools.count(1) if opts.count is None else iter(range(1, opts.count + 1))
    stamp = time.strftime("%H%M%S")
    running: set[asyncio.Task[str]] = set()
    try:
        while True:
            while len(running) < opts.sessions:
                n = next(numbers, None)
                if n is None:
                    break
                sid = f"quote-{stamp}-{n:04d}"
                job_rng = random.Random(rng.random())
                running.add(asyncio.create_task(run_quote_job(bus, sid, job_rng, opts)))
                await asyncio.sleep(rng.uniform(0.1, 0.8) / opts.speed)
            if not running:
                return outcomes
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcomes[task.result()] += 1
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
