"""What the job view costs the job: prints figures, never passes or fails.

    python bench/steps.py [--calls 20000] [--rounds 5]

Starts a private Redis (no persistence) and measures, on the caller's thread, the cost of

1. ``progress()`` in a session without a job (the pace estimate, as before issue 16);
2. ``progress()`` in a session of a job whose learned profile the producer holds
   (``StepProfile.eta`` over 15 steps on every call);
3. one step: ``with s.step(n, name):`` (its start and its end, two events), with the
   profile;
4. ``log(..., level=...)`` and ``artifact(...)``;
5. on the flusher's side, folding a batch of 512 ``progress`` events into the meta hash
   fields (``producer._core._fold``), with and without ``eta_runs`` on them.

Each figure is the median of ``--rounds`` rounds of ``--calls`` calls (us per call); the
flusher writes meanwhile, as in a real job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder is sys.path[0] and this file would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import orjson  # noqa: E402
import redis  # noqa: E402

from producer import Producer  # noqa: E402
from producer._core import _fold  # noqa: E402
from producer._journal import Item  # noqa: E402
from rpa_bus import Keys, StepProfile  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402

TOTAL = 15


def per_call_us(calls: int, rounds: int, body: Callable[[int], None]) -> float:
    figures = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            body(i)
        figures.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(figures)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "redis", persistent=False) as server,
    ):
        url = server.url
        profile = StepProfile.learn(
            [{n: 1.0 + n % 4 + 0.1 * (r % 3) for n in range(1, TOTAL + 1)} for r in range(50)]
        )
        redis.Redis.from_url(url).set(
            Keys().job_profile("bench-job"), orjson.dumps(profile.as_json())
        )
        bus = Producer(url, spool_dir=Path(tmp) / "spool", queue_max=10_000_000)
        try:
            plain = bus.session("bench-plain", total=TOTAL)
            plain.start()
            job = bus.session("bench-job", total=TOTAL, job="bench-job")
            job.start()
            deadline = time.monotonic() + 10
            while bus.profile("bench-job") is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bus.profile("bench-job") is not None, "the profile was not read"
            c, r = args.calls, args.rounds
            figures = {
                "progress(), no job (pace)": per_call_us(
                    c, r, lambda i: plain.progress(1 + i % TOTAL, "Screen")
                ),
                "progress(), job with a profile (learned)": per_call_us(
                    c, r, lambda i: job.progress(1 + i % TOTAL, "Screen")
                ),
                "with s.step(n, name): (2 events, learned)": per_call_us(
                    c, r, lambda i: _step(job, 1 + i % TOTAL)
                ),
                "log(message, level='debug')": per_call_us(
                    c, r, lambda i: job.log("a line", level="debug")
                ),
                "artifact('screenshot', url)": per_call_us(
                    c, r, lambda i: job.artifact("screenshot", "http://h.test/s.png")
                ),
            }
            bus.flush(timeout_s=60)
        finally:
            bus.close(timeout_s=5)
    print(f"per call on the job's thread, median of {args.rounds} x {args.calls} calls:")
    for name, us in figures.items():
        print(f"  {name:<45} {us:6.2f} us")
    print("the flusher's fold of one batch of 512 progress events (median of 200):")
    for label, extra in (("no job", {}), ("job (eta_runs)", {"eta_runs": 7})):
        print(f"  {label:<45} {fold_us(extra):6.1f} us")


def fold_us(extra: dict[str, int]) -> float:
    events = [
        {"type": "progress", "ts": "2026-11-27T05:00:00.000Z", "step": 1 + i % TOTAL,
         "total": TOTAL, "percent": 6.7, "eta_s": 12.5, "message": "Screen", **extra}
        for i in range(512)
    ]  # fmt: skip
    items = [Item("session:b", "p", i, orjson.dumps(e), e) for i, e in enumerate(events)]
    times = []
    for _ in range(200):
        start = time.perf_counter()
        _fold(items)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def _step(session: object, n: int) -> None:
    with session.step(n, "Screen"):  # type: ignore[attr-defined]
        pass


if __name__ == "__main__":
    main()
