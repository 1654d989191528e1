"""The monitor's own cost per sample, with many active sessions on the bus.

    python bench/monitor.py [--sessions 1000] [--samples 300] [--relay-streams 100]

Starts a private Redis (not persistent), starts N sessions with the producer library (a
few events each; a relay consumer group on some of them, so the relay lag probe has work),
then calls ``Monitor.tick()`` back to back. Between samples 10% of the sessions emit a
progress event (outside the measured window). Per sample it measures the process's CPU
time (``time.process_time``: every thread, so the producer's flusher writing the sample
is included; ``flush()`` is awaited inside the window) and prints median and p99, the
RSS, and the server time of the probe script (``INFO commandstats``). Not a test.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the monitor package: look in the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import psutil  # noqa: E402
import redis  # noqa: E402

from monitor import Monitor, MonitorSettings  # noqa: E402
from producer import Producer, Session  # noqa: E402
from rpa_bus import Settings  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(url: str, spool: Path, *, sessions: int, samples: int, relay_streams: int) -> None:
    client = redis.Redis.from_url(url, socket_timeout=30)
    client.flushall()
    settings = Settings(redis_url=url, spool_dir=spool)
    jobs = Producer(settings=settings)
    running: list[Session] = []
    for i in range(sessions):
        s = jobs.session(f"job-{i:05d}", total=1000)
        s.start()
        s.progress(1, "first step")
        running.append(s)
    assert jobs.flush(120), "sessions not written"
    keys = settings.keys
    for s in running[:relay_streams]:
        client.xgroup_create(keys.session(s.sid), keys.relay_group("relay-1"), id="0")

    mon_settings = MonitorSettings(host_name="bench", bus=settings, interval_s=5.0)
    rng = random.Random(1)
    step = 1
    with Monitor(mon_settings) as mon:
        for _ in range(5):  # warm up: index read, script load, first connections
            mon.tick()
        assert mon.flush(30)
        cpu_ms: list[float] = []
        for _ in range(samples):
            step += 1
            for s in rng.sample(running, len(running) // 10):
                s.progress(step)
            assert jobs.flush(60)
            t0 = time.process_time()
            [sample, *_] = mon.tick()
            assert mon.flush(30)
            cpu_ms.append((time.process_time() - t0) * 1000)
        rss = psutil.Process().memory_info().rss
        # The probe script's server time, alone: the sessions are quiet now and the
        # monitor's own writes are plain XADDs, so every EVALSHA is a probe.
        client.config_resetstat()
        for _ in range(50):
            mon.tick()
        stats = client.info("commandstats")
    bus = sample["data"]["bus"]
    assert bus["active_sessions"] == sessions, bus
    probe = stats.get("cmdstat_evalsha", {})
    print(
        f"sessions={sessions:>6}  samples={samples}  "
        f"cpu/sample median={statistics.median(cpu_ms):.2f} ms  "
        f"p99={percentile(cpu_ms, 99):.2f} ms  "
        f"rss={rss / 2**20:.1f} MiB  "
        f"probe script on Redis={probe.get('usec_per_call', 0) / 1000:.2f} ms/sample  "
        f"relays={bus['relays']}"
    )
    jobs.close()
    client.close()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the alerts the load raises are not news here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="*", default=[0, 1000, 10_000])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--relay-streams", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persistent=False) as srv:
        for n in args.sessions:
            run(
                srv.url,
                Path(tmp) / "spool",
                sessions=n,
                samples=args.samples,
                relay_streams=min(n, args.relay_streams),
            )


if __name__ == "__main__":
    main()
