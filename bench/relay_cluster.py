"""Relay on a 3-master Redis Cluster vs one server: prints figures, never passes or fails.

    python bench/relay_cluster.py [--rounds 3] [--seconds 10] [--events 10000] [--sessions 100]

Starts, in the same run, one private Redis and a local cluster of 3 masters + 3 replicas
(no persistence, loopback), an `rpa-bus relay` process on each, and the client fleet and
writers of bench/relay.py (10 clients per session):

1. latency: append (XADD) -> client receive at 1,000 events/s, p50 / p99;
2. delivery ceiling: deliveries per second when the writer appends as fast as it can.

On one server the relay has one reader for every stream; on the cluster one per hash slot
with watched streams (the 100 sessions s0..s99 occupy 96 of the 256 buckets: 96 readers,
each a blocking XREADGROUP on its own connection). The two targets alternate per round so
they see the same machine load; medians and the cluster/one-server ratio are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run as a script, this folder is sys.path[0]: bench/relay.py would shadow the relay package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # for tests._cluster (the cluster launcher)

# bench/relay.py's fleet and writers, under a name of their own; registered at import so the
# fleet's spawned process (which imports this file first) can unpickle its entry point.
_spec = importlib.util.spec_from_file_location("bench_relay", _HERE / "relay.py")
if _spec is None or _spec.loader is None:
    raise SystemExit(f"cannot load {_HERE / 'relay.py'}")
B: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_relay"] = B
_spec.loader.exec_module(B)

from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402
from tests._cluster import LocalCluster  # noqa: E402

PER_SESSION = 10


def measure(url: str, port: int, opts: argparse.Namespace, pad: str) -> dict[str, float]:
    """Latency and ceiling through the relay on ``port``, fed by writes to ``url``."""
    base = {"url": f"ws://127.0.0.1:{port}/ws", "sessions": opts.sessions,
            "per_session": PER_SESSION}  # fmt: skip
    n = int(1000 * opts.seconds)
    readers: list[int] = []

    def paced(go: Any) -> None:
        readers.append(B.health(port)["readers"])  # every subscription is live by now
        go.set()
        asyncio.run(B.paced_writer(url, opts.sessions, 1000, opts.seconds, pad))

    lat = B.run_fleet(
        "latency",
        {**base, "expected": n * PER_SESSION, "timeout_s": opts.seconds + 30},
        during=paced,
    )["lat"]

    def blast(go: Any) -> None:
        go.set()
        asyncio.run(B.blast_writer(url, opts.sessions, opts.events, pad))

    res = B.run_fleet(
        "ceiling", {**base, "expected": opts.events * PER_SESSION, "timeout_s": 120}, during=blast
    )
    return {
        "p50": B.pct(lat, 0.50),
        "p99": B.pct(lat, 0.99),
        "received": len(lat),
        "ceiling": res["count"] / res["elapsed_s"],
        "readers": readers[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--events", type=int, default=10_000, help="ceiling phase events")
    parser.add_argument("--sessions", type=int, default=100)
    opts = parser.parse_args()
    pad = "x" * 100  # ~200-byte frames
    B.raise_nofile()
    print(f"relay on a 3-master cluster vs one server: {opts.sessions} sessions x "
          f"{PER_SESSION} clients, latency at 1,000 ev/s for {opts.seconds:g} s, ceiling "
          f"with {opts.events:,} events; {opts.rounds} rounds")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {"one server": [], "cluster": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root / "cluster", appendonly=False)
        cluster.start()
        try:
            with EmbeddedRedis(root / "redis", persistent=False) as server:
                targets = {"one server": server.url, "cluster": cluster.url}
                for r in range(opts.rounds):
                    for label, url in targets.items():
                        port = B.free_port()
                        relay = B.start_relay(url, port)
                        try:
                            got = measure(url, port, opts, pad)
                        finally:
                            B.stop(relay)
                        results[label].append(got)
                        print(f"   round {r + 1} {label:10}  p50 {got['p50']:.2f} ms  "
                              f"p99 {got['p99']:.2f} ms  ({got['received']:,} received)  "
                              f"ceiling {got['ceiling']:,.0f}/s  readers "
                              f"{got['readers']:.0f}")  # fmt: skip
        finally:
            cluster.close()
    med = {
        label: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        for label, runs in results.items()
    }
    one, cl = med["one server"], med["cluster"]
    print("\nmedians:")
    for label, m in med.items():
        print(f"   {label:10}  p50 {m['p50']:.2f} ms  p99 {m['p99']:.2f} ms  "
              f"ceiling {m['ceiling']:,.0f} deliveries/s  readers {m['readers']:.0f}")  # fmt: skip
    print(f"   cluster / one server: ceiling {cl['ceiling'] / one['ceiling']:.0%}, "
          f"p50 x{cl['p50'] / one['p50']:.2f}, p99 x{cl['p99'] / one['p99']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
