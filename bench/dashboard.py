"""The dashboard opening a long session: prints figures, never passes or fails.

    python bench/dashboard.py [--steps 500] [--lines 58] [--rounds 3]

One private Redis, one relay, headless Chromium (Debian's, as for the browser tests). One
session of a job holds ``--steps`` steps, each a start, ``--lines`` log lines and an end:
``steps * (lines + 2) + 2`` events (the defaults: 30,002, the archive issue's long
session), all retained in Redis. Per round a fresh page opens the session
(``#session=SID``) and the figure is the time until its log says "live" and its timeline
has a row per step: the whole history replayed, folded into the timeline and the newest
3,000 rows drawn. Then the time for the level filter to apply to those rows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0] and this file would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import redis  # noqa: E402

from rpa_bus import Keys, encode, make, now_ts  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402

# The browser tests' helpers: a relay in a thread, Debian's Chromium through Playwright.
from tests._browser import RelayThread, chromium_page  # noqa: E402


def write_session(client: redis.Redis, sid: str, steps: int, lines: int) -> int:
    keys = Keys()
    key = keys.session(sid)
    t = time.time() - 3600
    pipe = client.pipeline(transaction=False)
    count = 0

    def add(event: dict[str, object]) -> None:
        nonlocal count
        pipe.xadd(key, {"e": encode(event)})
        count += 1

    add(make("started", ts=now_ts(t), total=steps, job="bench"))
    for step in range(1, steps + 1):
        add(make("step", ts=now_ts(t), step=step, total=steps, phase="start", attempt=1,
                 message=f"step {step}"))  # fmt: skip
        for i in range(lines):
            add(make("log", ts=now_ts(t + 0.01 * i), step=step, message=f"line {i} of {step}"))
        add(make("step", ts=now_ts(t + 1), step=step, total=steps, phase="end", attempt=1,
                 outcome="ok", duration_s=1.0))  # fmt: skip
        t += 1.1
    add(make("finished", ts=now_ts(t), step=steps, total=steps))
    pipe.hset(keys.meta(sid), mapping={"epoch": "1", "status": "finished"})
    pipe.execute()
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lines", type=int, default=58, help="log lines per step")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rpa-bus-bench-dashboard-"))
    server = EmbeddedRedis(folder / "redis", persistent=False)
    server.start()
    relay = RelayThread(server.url)
    try:
        client = redis.Redis.from_url(server.url)
        events = write_session(client, "long-1", args.steps, args.lines)
        relay.start()
        opened: list[float] = []
        filtered: list[float] = []
        ready = (
            "() => (document.querySelector('#log-sub')?.textContent || '').includes('live')"
            f" && document.querySelectorAll('#timeline .tl-row').length === {args.steps}"
        )
        for _ in range(args.rounds):
            with chromium_page(relay.base_url) as (page, _errors):
                page.goto("/healthz")
                start = time.monotonic()
                page.goto("/#session=long-1")
                page.wait_for_function(ready, timeout=600_000, polling=100)
                opened.append(time.monotonic() - start)
                rows = page.evaluate("document.querySelectorAll('#log tr[data-id]').length")
                took_ms = page.evaluate(
                    """() => { const t = performance.now();
                       const s = document.querySelector('#log-level');
                       s.value = 'warning'; s.dispatchEvent(new Event('change'));
                       document.body.offsetHeight; return performance.now() - t; }"""
                )
                filtered.append(took_ms)
        print(f"{events} events, {args.steps} steps, {rows} rows drawn, {args.rounds} rounds")
        print(
            f"open to live with the full timeline: median {statistics.median(opened):.2f} s, "
            f"best {min(opened):.2f} s ({events / statistics.median(opened):,.0f} events/s)"
        )
        print(f"level filter over the drawn rows: median {statistics.median(filtered):.0f} ms")
    finally:
        relay.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
