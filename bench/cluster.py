"""Producer on a 3-master Redis Cluster vs one server: prints figures, never passes or fails.

    python bench/cluster.py [--events 30000] [--sessions 60] [--rounds 3] [--procs 1 2]

Starts, in the same run, one private Redis and a local cluster of 3 masters + 3 replicas
(no persistence on either, loopback) and measures with ~200-byte ``progress`` events:

1. throughput: events/s through ``Producer`` (emit + flush, every event checked in Redis
   afterwards) with P producer processes, on one server, on the cluster, and on the
   cluster with ``min_replicas=1`` (WAIT after each batch); the three alternate per round
   so they see the same machine load; medians;
2. the cost of ``min_replicas=1`` per write: ``flush()`` time of a single event (one
   round trip, plus WAIT), p50 / p99, on the cluster with and without it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0] and this file would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # for tests._cluster (the cluster launcher)

import redis  # noqa: E402

from producer import Producer  # noqa: E402
from rpa_bus import Keys  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402
from tests._cluster import LocalCluster  # noqa: E402

PAYLOAD = {"plate": "ABC1D23", "insurer": "porto", "plans": [101, 202, 303]}


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _one_producer(args: tuple[str, str, int, int, str, int, float]) -> tuple[float, float]:
    """(start, end) on CLOCK_MONOTONIC of one producer process emitting and flushing ``n``
    events; every process starts emitting at ``start_at``, once set up."""
    url, spool, n, sessions, tag, min_replicas, start_at = args
    bus = Producer(url, spool_dir=Path(spool), maxlen=1_000_000, min_replicas=min_replicas)
    runs = [bus.session(f"{tag}-{k}", total=n) for k in range(sessions)]
    for s in runs:
        s.start()
    assert bus.flush(10), bus.last_error
    time.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.monotonic()
    for i in range(n):
        runs[i % sessions].progress(i // sessions, "Tela de cotação", data=PAYLOAD)
    assert bus.flush(120), f"producer did not drain: {bus.last_error}"
    t1 = time.monotonic()
    bus.close()
    return t0, t1


def rate(url: str, spool: Path, n: int, sessions: int, procs: int, tag: str, mr: int) -> float:
    """Aggregate events/s of ``procs`` producer processes, each writing ``n`` events."""
    # Processes start emitting together, 3 s from now (spawning and importing come first).
    start_at = time.monotonic() + 3.0
    jobs = [
        (url, str(spool / f"{tag}-{p}"), n, sessions, f"{tag}-p{p}", mr, start_at)
        for p in range(procs)
    ]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        spans = pool.map(_one_producer, jobs)
    check(url, [j[4] for j in jobs], sessions, n)
    return procs * n / (max(e for _, e in spans) - min(s for s, _ in spans))


def check(url: str, tags: list[str], sessions: int, n: int) -> None:
    keys = Keys()
    client: redis.Redis | redis.RedisCluster
    if url.startswith("redis+cluster://"):
        host, port = url.split("://")[1].split(",")[0].split(":")
        client = redis.RedisCluster(host=host, port=int(port))
    else:
        client = redis.Redis.from_url(url)
    landed = sum(client.xlen(keys.session(f"{t}-{k}")) for t in tags for k in range(sessions))
    client.close()
    assert landed == len(tags) * (n + sessions), f"{landed} entries, expected more"


def flush_latency(url: str, spool: Path, mr: int, n: int = 500) -> tuple[float, float]:
    bus = Producer(url, spool_dir=spool, min_replicas=mr)
    s = bus.session(f"lat-{mr}")
    s.start()
    assert bus.flush(10)
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        s.progress(i, data=PAYLOAD)
        assert bus.flush(5), bus.last_error
        took.append(time.perf_counter() - t0)
    bus.close()
    return quantile(took, 0.5), quantile(took, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30_000, help="per producer process")
    ap.add_argument("--sessions", type=int, default=60, help="per producer process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    logging.getLogger("producer").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root / "cluster", appendonly=False)
        cluster.start()
        try:
            with EmbeddedRedis(root / "redis", persistent=False) as server:
                targets = [
                    ("one server", server.url, 0),
                    ("cluster", cluster.url, 0),
                    ("cluster, min_replicas=1", cluster.url, 1),
                ]
                print(f"events per process: {args.events}, sessions per process: "
                      f"{args.sessions}, rounds: {args.rounds}")  # fmt: skip
                print("1. throughput (emit + flush), events/s, all processes together")
                for procs in args.procs:
                    got: dict[str, list[float]] = {label: [] for label, _, _ in targets}
                    for k in range(args.rounds):
                        for label, url, mr in targets:
                            tag = f"r{procs}-{k}-{len(got[label])}-{mr}-{abs(hash(label))}"
                            got[label].append(
                                rate(url, root / "spool", args.events, args.sessions,
                                     procs, tag, mr)
                            )  # fmt: skip
                    base = statistics.median(got["one server"])
                    for label, values in got.items():
                        med = statistics.median(values)
                        rounds = ", ".join(f"{v:,.0f}" for v in values)
                        print(f"  {procs} proc  {label:24} {med:>9,.0f}  ({med / base:.0%} of "
                              f"one server; rounds {rounds})")  # fmt: skip
                print("2. one event's flush() time (round trip, plus WAIT with min_replicas)")
                for label, url, mr in targets:
                    p50, p99 = flush_latency(url, root / f"lat-{mr}-{len(label)}", mr)
                    print(f"  {label:24} p50 {p50 * 1e3:.2f} ms   p99 {p99 * 1e3:.2f} ms")
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
