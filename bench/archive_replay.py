"""Replay from the archive vs replay from Redis: prints figures, never passes or fails.

    python bench/archive_replay.py [--events 30000] [--rounds 5] [--engines sqlite,postgresql]

One private Redis, one relay (aiohttp, with ``RPA_BUS_ARCHIVE_URL``), a SQLite file and a
private PostgreSQL (initdb/pg_ctl as for the tests). Two sessions carry the same
``--events`` events (~200 bytes each):

- ``hot``: all in Redis (never trimmed: the relay does not ask the archive);
- ``cold``: all in the archive, Redis trimmed down to the last one (the relay reads
  everything but that one from the store, then Redis).

Per round, in alternating order, a WebSocket client subscribes ``from=0`` to each and
times the replay until the last event; the same for an SSE client. Figures: events/s
(best and median) and the per-round ratio cold / hot (the issue's target: >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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

import httpx  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from relay import Relay, RelaySettings  # noqa: E402
from rpa_bus import Keys, Settings, encode, make  # noqa: E402
from rpa_bus.archive import Record, open_store  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis  # noqa: E402
from tests._postgres import LocalPostgres  # noqa: E402

PAYLOAD = {"plate": "ABC1D23", "insurer": "porto", "plans": [101, 202, 303]}
KEYS = Keys()


async def build(r: aioredis.Redis, archive_url: str, n: int, tag: str) -> tuple[str, str]:
    """The sessions ``hot-TAG`` (Redis only) and ``cold-TAG`` (archive, Redis keeps the
    last); return their last ids."""
    lasts = []
    for name in (f"hot-{tag}", f"cold-{tag}"):
        key = KEYS.session(name)
        await r.hset(KEYS.meta(name), mapping={"epoch": "e1", "created": int(time.time())})
        ids: list[str] = []
        datas: list[bytes] = []
        for start in range(0, n, 1000):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 1000)):
                    data = encode(make("progress", step=i + 1, total=n, message="Tela de "
                                       "cotação", data=PAYLOAD))  # fmt: skip
                    datas.append(data)
                    pipe.xadd(key, {"e": data})
                ids += [x.decode() for x in await pipe.execute()]
        if name.startswith("cold"):
            store = await open_store(archive_url)
            try:
                rows = [
                    Record(f"session:{name}", "e1", i, d) for i, d in zip(ids, datas, strict=True)
                ]
                for start in range(0, n, 1000):
                    await store.put(rows[start : start + 1000])
            finally:
                await store.close()
            await r.xtrim(key, maxlen=1, approximate=False)
        lasts.append(ids[-1])
    return lasts[0], lasts[1]


async def ws_rate(relay: Relay, stream: str, last: str, n: int) -> float:
    async with connect(relay.url, max_size=2**24) as ws:
        t0 = time.perf_counter()
        await ws.send(orjson.dumps({"op": "subscribe", "stream": stream, "from": "0"}).decode())
        got = 0
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "event":
                got += 1
                if frame["id"] == last:
                    break
        elapsed = time.perf_counter() - t0
    assert got == n, f"{stream}: {got} events, want {n}"
    return n / elapsed


async def sse_rate(relay: Relay, stream: str, last: str, n: int) -> float:
    url = f"http://127.0.0.1:{relay.port}/v1/sse"
    needle = f'"id":"{last}"'.encode()
    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.perf_counter()
        async with client.stream("GET", url, params={"stream": stream, "from": "0"}) as resp:
            got = 0
            buf = b""
            async for chunk in resp.aiter_bytes():
                buf += chunk
                end = buf.rfind(b"\n\n") + 2  # count whole messages only
                if end < 2:
                    continue
                done, buf = buf[:end], buf[end:]
                got += done.count(b"event: event\n")
                if needle in done:
                    break
        elapsed = time.perf_counter() - t0
    assert got == n, f"{stream}: {got} SSE events, want {n}"
    return n / elapsed


async def run_engine(
    engine: str, url: str, redis_url: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    settings = RelaySettings(
        bus=Settings(redis_url=redis_url, archive_url=url),
        port=0,
        name=f"bench-{engine[:2]}",
        ping_interval_s=None,
        queue_bytes=8 * 1024 * 1024,
        queue_frames=10_000,
    )
    client = aioredis.Redis.from_url(redis_url)
    rates: dict[str, list[float]] = {"ws hot": [], "ws cold": [], "sse hot": [], "sse cold": []}
    try:
        async with Relay(settings) as relay:
            for r in range(args.rounds):
                hot_last, cold_last = await build(client, url, args.events, f"{engine[:2]}{r}")
                order = [("hot", hot_last), ("cold", cold_last)]
                if r % 2:
                    order.reverse()  # a busy machine favours no one
                for door, fn in (("ws", ws_rate), ("sse", sse_rate)):
                    for kind, last in order:
                        stream = f"session:{kind}-{engine[:2]}{r}"
                        rates[f"{door} {kind}"].append(await fn(relay, stream, last, args.events))
    finally:
        await client.aclose()
    return rates


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--engines", default="sqlite,postgresql")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="rpa-bus-bench-replay-"))
    redis_server = EmbeddedRedis(tmp / "redis", persistent=False)
    redis_server.start()
    pg: LocalPostgres | None = None
    try:
        print(f"replay from=0 of {args.events} events, {args.rounds} rounds: events/s "
              "(best / median), and cold (archive) / hot (Redis) per round")  # fmt: skip
        for engine in args.engines.split(","):
            if engine == "sqlite":
                url = f"sqlite://{tmp / 'archive.db'}"
            else:
                pg = LocalPostgres(tmp / "pg")
                pg.init()
                pg.start()
                pg.psql("CREATE DATABASE bench")
                url = pg.url_for("bench")
            rates = await run_engine(engine, url, redis_server.url, args)
            for door in ("ws", "sse"):
                hot, cold = rates[f"{door} hot"], rates[f"{door} cold"]
                ratios = [c / h for c, h in zip(cold, hot, strict=True)]
                print(f"  {engine:10s} {door:3s}  Redis {max(hot):8.0f} / "
                      f"{statistics.median(hot):8.0f}   archive {max(cold):8.0f} / "
                      f"{statistics.median(cold):8.0f}   ratio median x"
                      f"{statistics.median(ratios):.2f} (rounds: "
                      f"{' '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    finally:
        redis_server.kill()
        if pg is not None:
            pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
