"""Where an idle subscribed connection's memory goes: prints figures; not a test.

    python bench/relay_memory.py                 # RSS per idle subscribed connection, 3 rounds
    python bench/relay_memory.py --trace         # and tracemalloc's per-site diff (relay only)
    python bench/relay_memory.py --servers relay "bare aiohttp" --rounds 5 -n 1000
    python bench/relay_memory.py --marginal      # and the slope from n to 2n connections

Loopback only. Each round starts a fresh server process (the relay, and the bare servers
of ``bench/relay.py --compare``), opens 50 connections as warm-up, then ``n`` connections
each subscribed to one of 100 quiet streams (as a dashboard is), and reads the server's
RSS before and while they are held: (held - before) / n is the figure "RSS per idle
subscribed connection" (issue 13's target). With ``--marginal`` a second ``n`` are opened
while the first are held: (RSS at 2n - RSS at n) / n is the cost of one more connection,
without the one-off costs the first figure carries (the Redis pool grown by the subscribe
storm, the 100 tails, allocator arenas). With
``--trace`` the relay runs under tracemalloc (25 frames) and prints the allocations held
per connection, grouped by the line that made them (the relay's own code and aiohttp's):
tracemalloc's own cost makes that run's RSS meaningless, so it is not reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))  # first: `relay` here is bench/relay.py, not the package

import relay as bench  # noqa: E402  (bench/relay.py: the fleet and the bare servers)
from rpa_bus.cli._embedded import EmbeddedRedis, free_port  # noqa: E402

# The relay as `rpa-bus relay` runs it, plus a SIGUSR1 handler that writes a tracemalloc
# snapshot to the path in argv[2].
TRACING = r"""
import signal, sys, tracemalloc
tracemalloc.start(25)
path = sys.argv.pop()
def dump(*_):
    import gc
    gc.collect()
    tracemalloc.take_snapshot().dump(path + ".tmp")
    import os
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, dump)
"""
TRACED_RELAY = (
    TRACING
    + r"""
from rpa_bus.cli import main
sys.argv = ["rpa-bus", "relay", "--port", sys.argv[1], "--name", "mem"]
main()
"""
)


BASE: str | None = None  # --base: a checkout of the code to compare with


def start(kind: str, redis_url: str, port: int, trace_path: str | None) -> Any:
    if kind == "relay (base)":
        assert BASE is not None
        env = {
            **os.environ,
            "PYTHONPATH": BASE,
            "RPA_BUS_REDIS_URL": redis_url,
            "RPA_BUS_RELAY_MAX_CONNECTIONS_PER_IP": "0",
            "RPA_BUS_RELAY_OPS_PER_S": "1000",
            "RPA_BUS_RELAY_OPS_BURST": "1000",
        }
        script = (
            TRACED_RELAY if trace_path is not None else "import sys" + TRACED_RELAY[len(TRACING) :]
        )
        args = [str(port)] if trace_path is None else [str(port), trace_path]
        # cwd=BASE: ``python -c`` puts the working directory first on sys.path, before
        # PYTHONPATH, so run from a checkout it would import that checkout's code instead.
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], env=env, stdout=subprocess.DEVNULL, cwd=BASE
        )
    elif kind == "relay":
        if trace_path is None:
            return bench.start_relay(redis_url, port, name="m-relay")
        env = {
            **os.environ,
            "RPA_BUS_RELAY_OPS_PER_S": "1000",
            "RPA_BUS_RELAY_OPS_BURST": "1000",
            "RPA_BUS_REDIS_URL": redis_url,
            "RPA_BUS_RELAY_MAX_CONNECTIONS_PER_IP": "0",
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", TRACED_RELAY, str(port), trace_path],
            env=env,
            stdout=subprocess.DEVNULL,
        )
    else:
        script = bench.BARE_IDLE_AIOHTTP if kind == "bare aiohttp" else bench.BARE_IDLE_WEBSOCKETS
        if trace_path is not None:
            script = TRACING + script
        args = [str(port)] if trace_path is None else [str(port), trace_path]
        proc = subprocess.Popen([sys.executable, "-c", script, *args])
    deadline = time.monotonic() + 120  # tracemalloc makes imports slow
    while not bench.port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            bench.stop(proc)
            raise SystemExit(f"{kind} did not listen")
        time.sleep(0.1)
    return proc


def snapshot(proc: Any, path: str) -> Any:
    import signal
    import tracemalloc

    if os.path.exists(path):
        os.unlink(path)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("no snapshot from the relay")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(path)


def measure(kind: str, redis_url: str, n: int, trace: str | None) -> tuple[float, float | None]:
    """(RSS per idle subscribed connection at ``n``, and with ``MARGINAL`` the slope from
    ``n`` to ``2n``), in KiB."""
    port = free_port()
    proc = start(kind, redis_url, port, trace)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        bench.run_fleet("idle", {"url": url, "n": 50, "timeout_s": 60})
        before = bench.rss_kib(proc.pid)
        snaps: dict[str, Any] = {}
        if trace:
            snaps["before"] = snapshot(proc, trace)
        held: dict[str, int] = {}

        def more(go: Any) -> None:
            held["rss2"] = bench.rss_kib(proc.pid)

        def during(go: Any) -> None:
            held["rss"] = bench.rss_kib(proc.pid)
            held["redis"] = redis_clients(redis_url)
            if trace:
                snaps["held"] = snapshot(proc, trace)
            if MARGINAL:
                res2 = bench.run_fleet("idle", {"url": url, "n": n, "timeout_s": 120}, during=more)
                if res2["held"] != n:
                    print(f"   ({res2['held']} of the second {n} idle connections answered)")

        res = bench.run_fleet("idle", {"url": url, "n": n, "timeout_s": 120}, during=during)
        if VERBOSE:
            print(f"   {kind}: Redis clients {held['redis']} while held")
        if res["held"] != n:
            print(f"   ({res['held']} of {n} idle connections answered)")
        if trace:
            report(snaps["before"], snaps["held"], n)
        slope = (held["rss2"] - held["rss"]) / n if MARGINAL else None
        return (held["rss"] - before) / n, slope
    finally:
        bench.stop(proc)


VERBOSE = False
MARGINAL = False


def redis_clients(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


def report(before: Any, held: Any, n: int) -> None:
    import tracemalloc

    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    b, h = before.filter_traces(filters), held.filter_traces(filters)
    total = sum(s.size_diff for s in h.compare_to(b, "filename"))
    print(f"   tracemalloc: {total / n:,.0f} B held per connection; by line (>= 16 B):")
    for stat in h.compare_to(b, "lineno")[:60]:
        if stat.size_diff / n < 16:
            break
        frame = stat.traceback[0]
        where = f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}"
        print(f"   {stat.size_diff / n:7,.0f} B {stat.count_diff / n:5.1f} blocks  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", nargs="+", default=["relay", "bare aiohttp"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=1000, help="idle connections per measurement")
    parser.add_argument("--trace", action="store_true", help="tracemalloc diff, one round")
    parser.add_argument("-v", "--verbose", action="store_true", help="Redis clients held")
    parser.add_argument(
        "--marginal", action="store_true", help="also the slope from n to 2n connections"
    )
    parser.add_argument(
        "--base", help='a checkout (git archive) of other code: server "relay (base)"'
    )
    opts = parser.parse_args()
    global BASE, VERBOSE, MARGINAL
    BASE = opts.base
    VERBOSE = opts.verbose
    MARGINAL = opts.marginal
    bench.raise_nofile()
    print(f"idle subscribed connections: {opts.n:,} per measurement; load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    results: dict[str, list[float]] = {}
    slopes: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), persistent=False)
        redis.start()
        try:
            if opts.trace:
                for kind in opts.servers:
                    print(f"{kind}:")
                    measure(kind, redis.url, opts.n, str(Path(tmp) / "snap"))
                return
            for round_ in range(opts.rounds):
                order = opts.servers if round_ % 2 == 0 else opts.servers[::-1]
                for kind in order:
                    per_conn, slope = measure(kind, redis.url, opts.n, None)
                    results.setdefault(kind, []).append(per_conn)
                    if slope is not None:
                        slopes.setdefault(kind, []).append(slope)
                print(f"   round {round_ + 1}: " + ", ".join(
                    f"{k} {v[-1]:.1f}" for k, v in results.items()) + " KiB" + (
                    "; marginal " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in slopes.items())
                    if slopes else ""))  # fmt: skip
        finally:
            redis.kill()
    for kind, values in results.items():
        print(f"   {kind:16} median {statistics.median(values):.1f} KiB per idle subscribed "
              f"connection (min {min(values):.1f}, max {max(values):.1f})")  # fmt: skip
    for kind, values in slopes.items():
        print(f"   {kind:16} median {statistics.median(values):.1f} KiB per connection from "
              f"{opts.n:,} to {2 * opts.n:,} (marginal; min {min(values):.1f}, "
              f"max {max(values):.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
