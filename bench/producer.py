"""Producer benchmark: prints figures, never passes or fails.

    python bench/producer.py [--events 20000] [--sessions 10] [--rounds 5]

Starts a private Redis (no persistence) and measures, with ~200-byte events:

1. throughput: events/s through ``Producer`` (emit + flush) against raw redis-py
   pipelined ``XADD`` of the same encoded events on the same server, as a ratio;
2. the cost of one ``emit()`` on the caller's thread, median and p99, Redis up and down;
   down, once per journal fsync policy (``always``, ``everysec``, ``no``) with the default
   ``queue_max`` (the flusher spills to the journal every 50 ms) and with ``queue_max``
   100 (emit() itself spills, and fsyncs under ``always``, every 100 events);
3. emit -> in-Redis latency under light load (one event every 2 ms): a reader blocked in
   ``XREAD`` notes when each event arrives; p50 and p99.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0] and this file would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import orjson  # noqa: E402
import redis  # noqa: E402

from producer import Producer  # noqa: E402
from rpa_bus import Keys, make, now_ts  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis, free_port  # noqa: E402

PAYLOAD = {"plate": "ABC1D23", "insurer": "porto", "plans": [101, 202, 303]}
ROOMY = True  # also measure with a queue_max above the burst (no spill to the journal)


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def producer_rate(
    url: str, spool: Path, n: int, sessions: int, tag: str, queue_max: int | None = None
) -> float:
    """Events/s through Producer: from the first emit until flush() confirms all."""
    extra = {} if queue_max is None else {"queue_max": queue_max}
    bus = Producer(url, spool_dir=spool, maxlen=1_000_000, **extra)
    runs = [bus.session(f"{tag}-{k}", total=n) for k in range(sessions)]
    for s in runs:
        s.start()
    assert bus.flush(10)
    t0 = time.perf_counter()
    for i in range(n):
        runs[i % sessions].progress(i // sessions, "Tela de cotação", data=PAYLOAD)
    assert bus.flush(120), "producer did not drain"
    elapsed = time.perf_counter() - t0
    bus.close()
    r = redis.Redis.from_url(url)
    landed = sum(r.xlen(Keys().session(f"{tag}-{k}")) for k in range(sessions))
    r.close()
    assert landed == n + sessions, f"{landed} entries in Redis, expected {n + sessions}"
    return n / elapsed


def raw_rate(url: str, n: int, sessions: int, tag: str) -> float:
    """Events/s through redis-py pipelined XADD of the same encoded events."""
    r = redis.Redis.from_url(url)
    envs = [
        orjson.dumps(
            make("progress", step=i // sessions, total=n, percent=1.0, eta_s=1.0,
                 message="Tela de cotação", data=PAYLOAD)
        )
        for i in range(n)
    ]  # fmt: skip
    keys = [Keys().session(f"{tag}-{k}") for k in range(sessions)]
    t0 = time.perf_counter()
    for start in range(0, n, 512):  # the producer's batch size
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 512)):
            pipe.xadd(keys[i % sessions], {"e": envs[i]}, maxlen=1_000_000, approximate=True)
        pipe.execute()
    elapsed = time.perf_counter() - t0
    r.close()
    return n / elapsed


def throughput(url: str, spool: Path, n: int, sessions: int, rounds: int) -> None:
    """Alternate the two, so both see the same machine load; report medians."""
    r = redis.Redis.from_url(url)
    ours, roomy, raw = [], [], []
    for k in range(rounds):
        ours.append(producer_rate(url, spool, n, sessions, f"tp{k}"))
        if ROOMY:
            roomy.append(producer_rate(url, spool, n, sessions, f"rq{k}", queue_max=10 * n))
        raw.append(raw_rate(url, n, sessions, f"raw{k}"))
        r.flushall()
    sample = orjson.dumps(
        make("progress", ts=now_ts(), step=4999, total=n, percent=10.0, eta_s=41.5,
             message="Tela de cotação", data=PAYLOAD)
    )  # fmt: skip
    r.close()
    print(f"  event size: {len(sample)} bytes")
    print(f"  producer: {statistics.median(ours):,.0f} events/s (rounds: "
          f"{', '.join(f'{x:,.0f}' for x in ours)})")  # fmt: skip
    print(f"  raw XADD: {statistics.median(raw):,.0f} events/s (rounds: "
          f"{', '.join(f'{x:,.0f}' for x in raw)})")  # fmt: skip
    ratios = sorted(a / b for a, b in zip(ours, raw, strict=True))
    print(f"  ratio (median of per-round ratios): {statistics.median(ratios):.0%} "
          f"(min {ratios[0]:.0%}, max {ratios[-1]:.0%})")  # fmt: skip
    if roomy:
        # The burst outruns the flusher by more than queue_max (10,000): past it, emit()
        # moves the queue to the journal (the memory bound), and the flusher reads it back.
        # With room for the whole burst, the same run shows the cost without that.
        ratios = sorted(a / b for a, b in zip(roomy, raw, strict=True))
        print(f"  producer, queue_max {10 * n:,} (no spill): {statistics.median(roomy):,.0f} "
              f"events/s, ratio {statistics.median(ratios):.0%} "
              f"(min {ratios[0]:.0%}, max {ratios[-1]:.0%})")  # fmt: skip


def emit_cost(
    url: str, spool: Path, n: int, fsync: str = "everysec", queue_max: int = 10_000
) -> tuple[float, float, float]:
    """(median, p99, median of the first emit after an idle pause) seconds of one
    progress() call on the caller's thread. Bursts of 1000 emits, 2 ms apart, so the
    flusher runs meanwhile; the first call after a pause runs with cold CPU caches and is
    reported on its own (on this VM any code is ~20 us slower right after a sleep)."""
    bus = Producer(
        url,
        spool_dir=spool,
        connect_timeout_s=0.2,
        socket_timeout_s=0.5,
        journal_fsync=fsync,
        queue_max=queue_max,
    )
    s = bus.session("cost", total=n)
    s.start()
    warm, cold = [], []
    for i in range(n):
        t0 = time.perf_counter()
        s.progress(i, "Tela de cotação", data=PAYLOAD)
        (cold if i % 1000 == 0 else warm).append(time.perf_counter() - t0)
        if i % 1000 == 999:
            time.sleep(0.002)
    bus.close(timeout_s=5)
    both = warm + cold
    return statistics.median(both), quantile(both, 0.99), statistics.median(cold)


_READER = """
import sys, time, orjson, redis
url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = redis.Redis.from_url(url)
last, arrived = "0-0", {}
print("ready", flush=True)
while len(arrived) < n:
    for _key, entries in r.xread({key: last}, block=2000) or []:
        now = time.monotonic_ns()
        for entry_id, fields in entries:
            last = entry_id
            event = orjson.loads(fields[b"e"])
            if event["type"] == "progress":
                arrived[event["step"]] = now
sys.stdout.write(orjson.dumps(arrived, option=orjson.OPT_NON_STR_KEYS).decode() + "\\n")
"""


def latency(url: str, spool: Path, n: int, sid: str = "lat") -> tuple[float, float]:
    """(p50, p99) seconds from emit() returning to the event being readable in Redis.

    The reader is another process (blocked in XREAD), so it does not compete with the
    producer for the GIL; both read CLOCK_MONOTONIC.
    """
    key = Keys().session(sid)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, url, key, str(n)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    emitted: dict[int, int] = {}
    bus = Producer(url, spool_dir=spool)
    s = bus.session(sid, total=n)
    s.start()
    assert bus.flush(5)
    for i in range(n):
        s.progress(i, "Tela", data=PAYLOAD)
        emitted[i] = time.monotonic_ns()
        time.sleep(0.002)
    out, _ = reader.communicate(timeout=30)
    bus.close()
    arrived = {int(k): v for k, v in orjson.loads(out).items()}
    lat = [(arrived[i] - emitted[i]) / 1e9 for i in range(n) if i in arrived]
    return quantile(lat, 0.5), quantile(lat, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    # The Redis-down run logs its (expected) warnings; keep the figures readable.
    logging.getLogger("producer").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "spool"
        spool_down = Path(tmp) / "spool-down"
        with EmbeddedRedis(Path(tmp) / "redis", persistent=False) as server:
            print(f"server: {server.binary}, events: {args.events}, sessions: {args.sessions}")
            print("1. throughput (emit + flush vs raw pipelined XADD)")
            throughput(server.url, spool, args.events, args.sessions, args.rounds)
            print("2. emit() cost on the caller's thread")
            dead = f"redis://127.0.0.1:{free_port()}/0"
            runs = [("up", server.url, spool, "everysec", 10_000)] + [
                (f"down, fsync {policy}, queue_max {qmax}", dead, spool_down / f"{policy}{qmax}",
                 policy, qmax)
                for qmax in (10_000, 100)
                for policy in ("everysec", "always", "no")
            ]  # fmt: skip
            for label, url, where, policy, qmax in runs:
                med, p99, cold = emit_cost(url, where, 50_000, policy, qmax)
                print(f"  Redis {label:39}  median {med * 1e6:.1f} us   p99 {p99 * 1e6:.1f} us"
                      f"   first after a pause: {cold * 1e6:.1f} us")  # fmt: skip
            print("3. emit -> in Redis, light load (one event every 2 ms)")
            p50, p99 = latency(server.url, spool, 1000)
            print(f"  p50 {p50 * 1e3:.2f} ms   p99 {p99 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
