"""History pages over HTTP vs the raw floor (XRANGE + JSON encode in-process).

    python bench/api.py [--events 20000] [--page 1000] [--rounds 5]

Starts a private Redis and a relay (its own process) on loopback, writes one session of
``--events`` events, then reads all of them page by page: (a) with redis-py XRANGE and
orjson encoding each page as the API would, in this process, and (b) with ``GET
/v1/streams/.../events`` over one kept-alive HTTP connection, reading of each answer only
what paging needs. Prints events/s of each (median of ``--rounds``) and the ratio. A
figure for docs/benchmarks.md, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rpa_bus import Keys, Settings, encode, make
from rpa_bus.cli._embedded import (
    EmbeddedRedis,
    find_server_binary,
    free_port,
    port_open,
)


async def fill(r: aioredis.Redis, key: str, n: int) -> None:
    for start in range(0, n, 1000):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                event = make("progress", step=i, total=n, message=f"screen {i}")
                pipe.xadd(key, {"e": encode(event)})
            await pipe.execute()


async def raw(r: aioredis.Redis, key: str, page: int) -> int:
    after, seen = "-", 0
    while True:
        rows = await r.xrange(key, min=after, max="+", count=page)
        if not rows:
            return seen
        body = {"events": [{"id": i.decode(), "data": orjson.Fragment(f[b"e"])} for i, f in rows]}
        orjson.dumps(body)
        seen += len(rows)
        after = "(" + rows[-1][0].decode()


async def http(session: aiohttp.ClientSession, url: str, page: int) -> int:
    """Page through over HTTP. The client reads only what paging needs (the count and
    ``next``, the body's last key), as ``raw`` reads only its last id: decoding every page
    in this process would time the client's JSON parser, not the relay."""
    params = {"limit": str(page)}
    seen = 0
    while True:
        async with session.get(url, params=params) as resp:
            body = await resp.read()
        seen += body.count(b'{"id":"')
        after = orjson.loads(body[body.rindex(b'"next":') + 7 : -1])
        if after is None:
            return seen
        params["after"] = after


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "redis", binary=find_server_binary()) as server,
    ):
        bus = Settings(redis_url=server.url)
        key = Keys().session("bench-1")
        r = aioredis.Redis.from_url(server.url)
        await fill(r, key, args.events)
        # The relay in its own process, as deployed: the client's decoding is not its cost.
        port = free_port()
        # The read rate limit off: this times the page path, not the limiter (--page 100
        # asks for more pages a second than the default allows one address).
        env = {
            **os.environ,
            "RPA_BUS_REDIS_URL": bus.redis_url,
            "RPA_BUS_API_READS_PER_S": "1000000",
            "RPA_BUS_API_READS_BURST": "1000000",
        }
        exe = shutil.which("rpa-bus") or f"{sys.prefix}/bin/rpa-bus"
        relay = await asyncio.create_subprocess_exec(
            *(exe, "relay", "--port", str(port), "--name", "bench"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not port_open("127.0.0.1", port):
                if time.monotonic() > deadline:
                    raise SystemExit("relay did not start")
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{port}/v1/streams/session:bench-1/events"
            async with aiohttp.ClientSession() as session:
                rates: dict[str, list[float]] = {"raw": [], "http": []}
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    assert await raw(r, key, args.page) == args.events
                    rates["raw"].append(args.events / (time.perf_counter() - t))
                    t = time.perf_counter()
                    assert await http(session, url, args.page) == args.events
                    rates["http"].append(args.events / (time.perf_counter() - t))
        finally:
            relay.terminate()
            await asyncio.wait_for(relay.wait(), 10)
        await r.aclose()
    raw_rate = statistics.median(rates["raw"])
    http_rate = statistics.median(rates["http"])
    print(f"history pages of {args.page}, {args.events} events, median of {args.rounds}:")
    print(f"  raw XRANGE + JSON encode  {raw_rate:>10,.0f} events/s")
    print(f"  GET /v1/streams/.../events {http_rate:>9,.0f} events/s")
    print(f"  ratio                      {http_rate / raw_rate:>9.2f}")


if __name__ == "__main__":
    asyncio.run(main())
