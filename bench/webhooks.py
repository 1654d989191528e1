"""Webhook sender throughput and latency against a local receiver, loopback only.

    python bench/webhooks.py [--sessions 64] [--events 40] [--raw 3000] [--rate 100] [--seconds 10]

Starts a private Redis (not persistent) and a receiver (aiohttp.web, its own process,
127.0.0.1, answers 200 without verifying so it costs both sides the same), then:

1. raw: ``--raw`` signed POSTs (standardwebhooks signer, aiohttp, 16 in flight, the
   sender's own connection settings) straight from this process: the ceiling of the
   HTTP client library on this machine;
2. pipeline: SESSIONS x EVENTS events written with the producer, then one
   ``rpa-bus webhooks`` process delivers them all (group read, outbox, lease, signing,
   POST, XDEL); deliveries/s from the first to the last arrival;
3. latency: with that process running, the producer writes ``--rate`` events/s for
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
import redis  # noqa: E402
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


async def raw_posts(url: str, secret: str, count: int, body: bytes) -> float:
    """Signed POSTs, 16 in flight; deliveries per second."""
    signer = Webhook(secret)
    connector = aiohttp.TCPConnector(limit=16, use_dns_cache=False)
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
        await asyncio.gather(*(worker() for _ in range(16)))
        return count / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--events", type=int, default=40, help="progress events per session")
    ap.add_argument("--raw", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedRedis(root / "r", persistent=False) as srv:
            run(srv.url, root, args)


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
        # 1. raw ceiling of the client library
        raw_rate = asyncio.run(raw_posts(receiver.url, secret, args.raw, sample))
        receiver.reset()

        # 2. pipeline throughput: a backlog, then one webhooks process drains it
        bus = Producer(settings=settings)
        for s in range(args.sessions):
            with bus.session(f"bench-{s:04d}", total=args.events) as job:
                for step in range(1, args.events + 1):
                    job.progress(step, "x" * 80)
        assert bus.flush(120)
        bus.close()
        client = redis.Redis.from_url(url)
        expected = sum(
            client.xlen(settings.keys.session(f"bench-{s:04d}")) for s in range(args.sessions)
        )
        env = {**os.environ, "RPA_BUS_REDIS_URL": url,
               "RPA_BUS_WEBHOOKS_FILE": str(config)}  # fmt: skip
        worker = subprocess.Popen(
            [RPA_BUS, "webhooks"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        got = receiver.wait_for(expected, timeout_s=300)
        times = sorted(a[2] for a in got)
        pipe_rate = (len(times) - 1) / ((times[-1] - times[0]) / 1000)
        print(f"raw signed POSTs (aiohttp, 16 in flight): {raw_rate:8.0f} /s")
        print(
            f"rpa-bus webhooks, 1 process:              {pipe_rate:8.0f} /s "
            f"({len(got)} of {expected} delivered; {pipe_rate / raw_rate:.0%} of raw)"
        )
        receiver.reset()

        # 3. latency at a steady rate
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
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        receiver.close()


if __name__ == "__main__":
    main()
