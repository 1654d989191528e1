"""Webhook sender throughput and latency against a local receiver, loopback only.

    python bench/webhooks.py [--rounds 3] [--sessions 64] [--events 40] [--raw 3000]
                             [--concurrency 16] [--rate 100] [--seconds 10]

Starts a private Redis (not persistent) and a receiver (aiohttp.web, its own process,
127.0.0.1, answers 200 without verifying so it costs both sides the same), then:

1. raw: ``--raw`` signed POSTs (standardwebhooks signer, aiohttp, CONCURRENCY in
   flight) straight from this process: the ceiling of the HTTP client library here;
2. pipeline: SESSIONS x EVENTS events written with the producer while no webhooks
   process runs, then one ``rpa-bus webhooks`` process (CONCURRENCY sessions at once)
   delivers them all (group read, outbox, lease, signing, POST, XDEL); deliveries/s from
   the first to the last arrival. 1 and 2 alternate for ``--rounds`` rounds, so both see
   the same share of a busy machine; the ratio is taken per round;
3. latency: with one webhooks process running, the producer writes ``--rate`` events/s for
   ``--seconds`` over 10 sessions; per event the time from its XADD (the entry id's
   milliseconds) to the receiver's hand, p50/p99.

Bounded in count and time; prints figures. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from producer import Producer  # noqa: E402
from rpa_bus import Settings  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis, free_port  # noqa: E402
from workers import Endpoint, new_secret, write_endpoints  # noqa: E402
from workers._deliver import sign_headers  # noqa: E402

RECEIVER = r"""
import sys, time, orjson
from aiohttp import web
arrivals = []
async def hook(request):
    body = await request.read()
    now_ms = time.time() * 1000
    try:
        entry = orjson.loads(body)["data"].get("id") or ""
    except Exception:
        entry = ""
    arrivals.append((request.headers.get("webhook-id", ""), entry, now_ms))
    return web.Response(text="ok")
async def stats(request):
    return web.Response(body=orjson.dumps(arrivals))
async def reset(request):
    arrivals.clear()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/stats", stats)
app.router.add_post("/reset", reset)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.port)])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        deadline = time.monotonic() + 20
        while True:
            try:
                self.arrivals()
                return
            except OSError:
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.05)

    def arrivals(self) -> list[tuple[str, str, float]]:
        url = f"http://127.0.0.1:{self.port}/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            return [tuple(a) for a in orjson.loads(response.read())]  # type: ignore[misc]

    def reset(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def wait_for(self, count: int, timeout_s: float) -> list[tuple[str, str, float]]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.arrivals()
            if len({a[0] for a in got}) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def raw_posts(url: str, secret: str, count: int, body: bytes, *, in_flight: int) -> float:
    """Signed POSTs, ``in_flight`` at once; deliveries per second."""
    signer = Webhook(secret)
    connector = aiohttp.TCPConnector(limit=in_flight, use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=10, sock_connect=5, sock_read=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        todo = iter(range(count))

        async def worker() -> None:
            for i in todo:
                headers = sign_headers(signer, f"msg_raw_{i}", body, now=datetime.now(UTC))
                headers["Content-Type"] = "application/json"
                async with session.post(url, data=body, headers=headers,
                                        allow_redirects=False) as response:  # fmt: skip
                    await response.content.read(65536)
                    assert response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return count / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--events", type=int, default=40, help="progress events per session")
    ap.add_argument("--raw", type=int, default=3000, help="raw POSTs per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--concurrency", type=int, default=16, help="raw: POSTs in flight; webhooks: sessions"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "r", persistent=False) as srv:
            run(srv.url, root, args)


def start_worker(url: str, config: Path, concurrency: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": url,
        "RPA_BUS_WEBHOOKS_FILE": str(config),
        "RPA_BUS_WEBHOOKS_CONCURRENCY": str(concurrency),
    }
    return subprocess.Popen(
        [RPA_BUS, "webhooks"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)


def backlog(settings: Settings, tag: str, sessions: int, events: int) -> int:
    """Write SESSIONS x EVENTS progress events (plus started/finished); how many entries."""
    bus = Producer(settings=settings)
    for s in range(sessions):
        with bus.session(f"{tag}-{s:04d}", total=events) as job:
            for step in range(1, events + 1):
                job.progress(step, "x" * 80)
    assert bus.flush(120)
    bus.close()
    return sessions * (events + 2)


def run(url: str, root: Path, args: argparse.Namespace) -> None:
    receiver = Receiver()
    secret = new_secret()
    config = root / "webhooks.toml"
    endpoint = Endpoint(name="bench", url=receiver.url, secret=secret, allow_http=True,
                        allow_private=True, streams=("session:*",))  # fmt: skip
    write_endpoints(config, [endpoint])
    settings = Settings(redis_url=url, spool_dir=root / "spool")
    event = {"type": "progress", "step": 1, "message": "x" * 80}
    sample = orjson.dumps({"type": "progress", "data": {"stream": "session:x", "event": event}})
    worker: subprocess.Popen[bytes] | None = None
    try:
        # 1 and 2, alternating, so both see the same share of a busy machine.
        raws: list[float] = []
        pipes: list[float] = []
        for r in range(args.rounds):
            raws.append(
                asyncio.run(
                    raw_posts(receiver.url, secret, args.raw, sample, in_flight=args.concurrency)
                )
            )
            receiver.reset()
            # A backlog written while no webhooks process runs, then one process drains it
            # (group read, outbox, lease, signing, POST, XDEL): first to last arrival.
            expected = backlog(settings, f"r{r}", args.sessions, args.events)
            worker = start_worker(url, config, args.concurrency)
            got = receiver.wait_for(expected, timeout_s=300)
            stop_worker(worker)
            worker = None
            assert len({a[0] for a in got}) == expected, f"{len(got)} of {expected}"
            times = sorted(a[2] for a in got)
            pipes.append((len(times) - 1) / ((times[-1] - times[0]) / 1000))
            receiver.reset()
            print(f"round {r + 1}: raw {raws[-1]:6.0f}/s  webhooks {pipes[-1]:6.0f}/s  "
                  f"({pipes[-1] / raws[-1]:.0%})")  # fmt: skip
        ratios = sorted(p / q for p, q in zip(pipes, raws, strict=True))
        print(f"raw signed POSTs (aiohttp, {args.concurrency} in flight): "
              f"median {statistics.median(raws):.0f}/s")  # fmt: skip
        print(f"rpa-bus webhooks (1 process, {args.concurrency} sessions at once): "
              f"median {statistics.median(pipes):.0f}/s")  # fmt: skip
        print(f"webhooks / raw, same round: median {statistics.median(ratios):.0%}")

        # 3. latency at a steady rate, one process running
        worker = start_worker(url, config, args.concurrency)
        bus = Producer(settings=settings)
        sessions = [bus.session(f"live-{i}", total=100_000) for i in range(10)]
        for s in sessions:
            s.start()
        assert bus.flush(30)
        receiver.wait_for(10, timeout_s=30)
        receiver.reset()
        count = int(args.rate * args.seconds)
        started = time.perf_counter()
        for i in range(count):
            sessions[i % 10].progress(i // 10 + 1, "tick")
            pause = started + (i + 1) / args.rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        assert bus.flush(30)
        got = receiver.wait_for(count, timeout_s=60)
        latencies = [a[2] - int(a[1].split("-")[0]) for a in got if a[1]]
        bus.close()
        print(f"XADD -> receiver at {args.rate:g} events/s ({len(latencies)} events): "
              f"p50 {statistics.median(latencies):.1f} ms, "
              f"p99 {percentile(latencies, 99):.1f} ms")  # fmt: skip
    finally:
        if worker is not None:
            stop_worker(worker)
        receiver.close()


if __name__ == "__main__":
    main()
