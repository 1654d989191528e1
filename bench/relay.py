"""Relay benchmark: prints figures; not a test. Loopback only, bounded in count and time.

    python bench/relay.py            # full run (~2-3 minutes)
    python bench/relay.py --quick    # smaller counts, for a smoke run
    python bench/relay.py --compare  # the relay (WebSocket and SSE) vs bare websockets and
                                     # aiohttp broadcasts, and idle memory, in one run

Runs, each in its own processes: a private Redis, the relay (`rpa-bus relay`), a client
fleet (one asyncio process), a writer, and a bare websockets server for the raw baselines.

1. latency: append (XADD) -> client receive, p50/p99, at 1,000 events/s over 100 sessions
   with 1,000 clients (10 per session);
2. delivery ceiling: events delivered per second to the same 1,000 clients when the writer
   appends as fast as it can, vs a bare websockets server broadcasting the same pre-encoded
   frames to the same clients (no Redis), as a ratio;
3. replay: a 100,000-event history to one late joiner, vs the bare server sending the same
   frames to one client;
4. relay RSS per idle connection, and whether 10,000 concurrent connections are held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpa_bus import Keys, encode, make  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis, free_port, port_open  # noqa: E402

KEYS = Keys()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- processes ----------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the workers of `--workers N`)."""
    import psutil

    total = cpu_s(pid)
    for child in psutil.Process(pid).children(recursive=True):
        try:
            total += cpu_s(child.pid)
        except FileNotFoundError:
            continue
    return total


def start_relay(
    redis_url: str, port: int, workers: int = 1, name: str = "bench"
) -> subprocess.Popen[bytes]:
    exe = shutil.which("rpa-bus") or str(Path(sys.prefix) / "bin" / "rpa-bus")
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_RELAY_MAX_CONNECTIONS_PER_IP": "0",
        "RPA_BUS_RELAY_OPS_PER_S": "1000",
        "RPA_BUS_RELAY_OPS_BURST": "1000",
    }
    proc = subprocess.Popen(
        [
            exe,
            "relay",
            "--port",
            str(port),
            "--name",
            name,
            *(["--workers", str(workers)] if workers > 1 else []),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    if workers > 1:  # the port opens with the first worker; wait for every one
        deadline = time.monotonic() + 20
        while len({health(port)["name"] for _ in range(8 * workers)}) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("not every worker answered")
            time.sleep(0.1)
    return proc


RAW_SERVER = r"""
import asyncio, sys, orjson
from websockets.asyncio.server import serve, broadcast
port, mode, n_frames, sessions, expected = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                            int(sys.argv[4]), int(sys.argv[5]))
envelope = sys.argv[6].encode()  # the same stored envelope bytes the relay forwards
groups = {}
ready = asyncio.Event()
def frame(s, i):
    head = b'{"type":"event","stream":"session:s%d","id":"1732270000000-%d","data":' % (s, i)
    return head + envelope + b"}"
async def handler(ws):
    s = int(ws.request.path.rsplit("=", 1)[1])
    groups.setdefault(s, set()).add(ws)
    if sum(len(g) for g in groups.values()) >= expected:
        ready.set()
    await ws.wait_closed()
async def main():
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        await ready.wait()
        await asyncio.sleep(0.5)
        if mode == "broadcast":
            frames = [[frame(s, i) for s in range(sessions)] for i in range(n_frames // sessions)]
            for row in frames:
                for s, f in enumerate(row):
                    broadcast(groups[s], f.decode())
                await asyncio.sleep(0)
        else:  # one client, awaited sends
            [ws] = groups[0]
            for i in range(n_frames):
                await ws.send(frame(0, i), text=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


RAW_AIOHTTP = r"""
import asyncio, sys
from aiohttp import web
port, n_frames, sessions, expected = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                      int(sys.argv[4]))
envelope = sys.argv[5]
groups = {}
ready = asyncio.Event()
def frame(s, i):
    head = '{"type":"event","stream":"session:s%d","id":"1732270000000-%d","data":' % (s, i)
    return head + envelope + "}"
async def handler(request):
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    s = int(request.query["s"])
    groups.setdefault(s, set()).add(ws)
    if sum(len(g) for g in groups.values()) >= expected:
        ready.set()
    async for _ in ws:
        pass
    return ws
async def blast():
    await ready.wait()
    await asyncio.sleep(0.5)
    frames = [[frame(s, i) for s in range(sessions)] for i in range(n_frames // sessions)]
    for row in frames:
        for s, f in enumerate(row):
            for ws in groups[s]:
                await ws.send_str(f)
        await asyncio.sleep(0)
async def main():
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await blast()
    await asyncio.sleep(3600)
asyncio.run(main())
"""


# Bare servers holding idle connections the way the relay's idle phase uses them: each
# says "live" on connect and answers {"op":"ping"} with a pong. The floor under the relay's
# per-connection memory.
BARE_IDLE_AIOHTTP = r"""
import asyncio, sys
from aiohttp import web
async def handler(request):
    ws = web.WebSocketResponse(compress=False, heartbeat=20.0)
    await ws.prepare(request)
    await ws.send_str('{"type":"live"}')
    async for msg in ws:
        await ws.send_str('{"type":"pong"}')
    return ws
async def main():
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), backlog=1024).start()
    await asyncio.sleep(3600)
asyncio.run(main())
"""

BARE_IDLE_WEBSOCKETS = r"""
import asyncio, sys
from websockets.asyncio.server import serve
async def handler(ws):
    await ws.send('{"type":"live"}')
    async for _ in ws:
        await ws.send('{"type":"pong"}')
async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None,
                     ping_interval=20, server_header=None):
        await asyncio.sleep(3600)
asyncio.run(main())
"""


NAIVE_RELAY = r"""
import asyncio, sys
import redis.asyncio as aioredis
from websockets.asyncio.server import serve, broadcast
port, redis_url, sessions, prefix = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
keys = sys.argv[5:]
groups = {}
async def handler(ws):
    s = int(ws.request.path.rsplit("=", 1)[1])
    groups.setdefault(keys[s].encode(), set()).add(ws)
    await ws.wait_closed()
async def tail():
    r = aioredis.Redis.from_url(redis_url, protocol=2)
    last = dict.fromkeys(keys, "$")
    while True:
        for key, entries in await r.xread(last, block=1000, count=1000) or []:
            name = key.decode().rsplit(":", 1)[1]
            for entry_id, fields in entries:
                frame = (b'{"type":"event","stream":"session:' + name.encode() + b'","id":"'
                         + entry_id + b'","data":' + fields[b"e"] + b"}")
                broadcast(groups.get(key, ()), frame, text=True)
            last[key.decode()] = entries[-1][0]
async def main():
    async with serve(handler, "127.0.0.1", port, compression=None):
        await tail()
asyncio.run(main())
"""


def start_naive(port: int, redis_url: str, sessions: int) -> Any:
    keys = [KEYS.session(f"s{s}") for s in range(sessions)]
    proc = subprocess.Popen(
        [sys.executable, "-c", NAIVE_RELAY, str(port), redis_url, str(sessions), "rpa", *keys],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc


def start_raw(port: int, mode: str, n_frames: int, sessions: int, expected: int, pad: str) -> Any:
    raw_envelope = envelope(pad).decode()
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_SERVER, str(port), mode, str(n_frames), str(sessions),
         str(expected), raw_envelope],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc)
    return proc


def start_raw_aiohttp(port: int, n_frames: int, sessions: int, expected: int, pad: str) -> Any:
    raw_envelope = envelope(pad).decode()
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_AIOHTTP, str(port), str(n_frames), str(sessions),
         str(expected), raw_envelope],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc)
    return proc


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("server did not listen")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the client fleet (its own process) ---------------------------------------------------


def fleet(task: str, args: dict[str, Any], out: Any, ready: Any, go: Any) -> None:
    raise_nofile()
    try:
        result = asyncio.run(_fleet(task, args, ready, go))
    except BaseException as exc:  # report to the parent instead of dying silently
        result = {"error": repr(exc)}
        ready.set()
    out.put(result)


async def _connect_all(urls: list[str], concurrency: int = 64) -> list[Any]:
    from websockets.asyncio.client import connect

    sem = asyncio.Semaphore(concurrency)

    async def one(url: str) -> Any:
        async with sem:
            for attempt in range(5):
                try:
                    return await connect(
                        url, open_timeout=30, compression=None, max_size=None, ping_interval=None
                    )
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise RuntimeError(f"cannot connect {url}")

    return list(await asyncio.gather(*(one(u) for u in urls)))


async def _fleet(task: str, a: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    if task == "idle":
        # Each connection subscribed to one of 100 quiet streams, as a dashboard would be.
        urls = [f"{a['url']}?stream=session:idle{i % 100}&from=$" for i in range(a["n"])]
        conns = await _connect_all(urls)
        for ws in conns:
            async with asyncio.timeout(30):
                while not (await ws.recv()).startswith('{"type":"live"'):
                    pass
        ready.set()
        await loop.run_in_executor(None, go.wait)
        # Prove they are all alive: a ping on every one.
        pongs = 0
        for ws in conns:
            await ws.send('{"op":"ping"}')
        for ws in conns:
            async with asyncio.timeout(30):
                if await ws.recv() == '{"type":"pong"}':
                    pongs += 1
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        return {"held": pongs}

    sessions, per = a["sessions"], a["per_session"]
    if a.get("sse"):
        paths = [f"/v1/sse?stream=session:s{s}&from=$" for s in range(sessions) for _ in range(per)]
    elif a.get("raw"):
        paths = [f"/?s={s}" for s in range(sessions) for _ in range(per)]
    else:
        paths = [f"/ws?stream=session:s{s}&from=$" for s in range(sessions) for _ in range(per)]
    port = int(a["url"].rsplit(":", 1)[1].split("/")[0])
    stats = FleetStats(a["expected"], measure_latency=task == "latency")
    conns = await _open_raw(port, paths, stats, sse=bool(a.get("sse")))
    if not a.get("raw"):  # wait until every subscription is live
        stats.live_target = len(conns)
        if stats.live < len(conns):
            async with asyncio.timeout(120):
                await stats.all_live.wait()
    gc.collect()
    gc.freeze()  # keep the fleet's own GC pauses out of the latency figures
    ready.set()
    try:
        async with asyncio.timeout(a["timeout_s"]):
            await stats.done.wait()
    except TimeoutError:
        stats.last = time.perf_counter()
    for conn in conns:
        conn.transport.close()
    return {
        "count": stats.count,
        "elapsed_s": (stats.last - stats.first) if stats.first else 0.0,
        "lat": stats.latencies,
        "cpu_s": time.process_time(),
    }


class FleetStats:
    def __init__(self, expected: int, *, measure_latency: bool) -> None:
        self.expected = expected
        self.measure_latency = measure_latency
        self.latencies: list[int] = []
        self.count = 0
        self.live = 0
        self.live_target = 0
        self.all_live = asyncio.Event()
        self.first = self.last = 0.0
        self.done = asyncio.Event()

    def on_message(self, payload: bytes) -> None:
        if not payload.startswith(b'{"type":"event"'):
            if payload.startswith(b'{"type":"live"'):
                self.live += 1
                if self.live == self.live_target:
                    self.all_live.set()
            return
        now = time.time_ns()
        if not self.first:
            self.first = time.perf_counter()
        if self.measure_latency:
            at = payload.find(b'"t":') + 4
            self.latencies.append(now - int(payload[at : payload.find(b",", at)]))
        self.count += 1
        if self.count >= self.expected:
            self.last = time.perf_counter()
            self.done.set()


class RawClient(asyncio.Protocol):
    """A minimal WebSocket client for the fleet: handshake, then unmasked server frames
    parsed straight from the socket buffer (about 5x cheaper per message than a full
    client library, so 1,000 of them in one process measure the server, not themselves)."""

    def __init__(self, path: str, stats: FleetStats, opened: asyncio.Future[None]) -> None:
        self.path = path
        self.stats = stats
        self.opened = opened
        self.buf = bytearray()
        self.is_open = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.is_open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(bytes(buf[:40]).decode()))
                return
            del buf[: end + 4]
            self.is_open = True
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 1:
                self.stats.on_message(payload)
            elif opcode == 9:  # ping: answer with a pong, masked with a zero key
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        del buf[:pos]


class RawSseClient(asyncio.Protocol):
    """A minimal SSE client for the fleet: counts ``event`` and ``live`` messages straight
    from the socket buffer (the relay writes one message per HTTP chunk)."""

    EVENT = b"\ndata: "

    def __init__(self, path: str, stats: FleetStats, opened: asyncio.Future[None]) -> None:
        self.path = path
        self.stats = stats
        self.opened = opened
        self.buf = bytearray()
        self.is_open = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.is_open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                self.opened.set_exception(RuntimeError(bytes(buf[:40]).decode()))
                return
            del buf[: end + 4]
            self.is_open = True
            self.opened.set_result(None)
        pos = 0
        while True:
            at = buf.find(self.EVENT, pos)
            if at < 0:
                break
            end = buf.find(b"\n\n", at + 7)
            if end < 0:
                break
            self.stats.on_message(bytes(buf[at + 7 : end]))
            pos = end + 2
        del buf[:pos]


async def _open_raw(
    port: int, paths: list[str], stats: FleetStats, *, sse: bool = False
) -> list[Any]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(64)
    kind: Any = RawSseClient if sse else RawClient

    async def one(path: str) -> Any:
        async with sem:
            opened: asyncio.Future[None] = loop.create_future()
            _, conn = await loop.create_connection(
                lambda: kind(path, stats, opened), "127.0.0.1", port
            )
            async with asyncio.timeout(30):
                await opened
            return conn

    return list(await asyncio.gather(*(one(p) for p in paths)))


def run_fleet(task: str, args: dict[str, Any], during: Any = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=fleet, args=(task, args, out, ready, go))
    proc.start()
    if not ready.wait(300):
        proc.kill()
        raise SystemExit("client fleet did not get ready")
    extra = during(go) if during else None
    go.set()
    result: dict[str, Any] = out.get(timeout=args.get("timeout_s", 60) + 120)
    proc.join(30)
    if "error" in result:
        raise SystemExit(f"client fleet failed: {result['error']}")
    result["extra"] = extra
    return result


# -- writers ------------------------------------------------------------------------------


def envelope(pad: str, t_ns: int = 0) -> bytes:
    return encode(make("log", message="m", data={"t": t_ns, "pad": pad}))


def writer_client(redis_url: str) -> Any:
    """A plain asyncio client for one server, or a ``RedisCluster`` for a cluster URL."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode

    from rpa_bus import parse_redis_url

    target = parse_redis_url(redis_url)
    if target.topology == "cluster":
        nodes = [ClusterNode(h, p) for h, p in target.hosts]
        return aioredis.RedisCluster(startup_nodes=nodes, protocol=2)
    return aioredis.Redis.from_url(redis_url, protocol=2)


async def paced_writer(redis_url: str, sessions: int, rate: int, seconds: float, pad: str) -> int:
    r = writer_client(redis_url)
    keys = [KEYS.session(f"s{s}") for s in range(sessions)]
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await r.xadd(keys[i % sessions], {"e": envelope(pad, time.time_ns())})
    await r.aclose()
    return n


async def blast_writer(redis_url: str, sessions: int, n: int, pad: str, key_of: Any = None) -> None:
    r = writer_client(redis_url)
    keys = [KEYS.session(f"s{s}") for s in range(sessions)]
    raw = envelope(pad)
    for start in range(0, n, 1000):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(key_of or keys[i % sessions], {"e": raw})
            await pipe.execute()
    await r.aclose()


# -- the benchmark ------------------------------------------------------------------------


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--phases", default="1234", help="which figures, e.g. 13")
    parser.add_argument("--workers", type=int, default=1, help="rpa-bus relay --workers N")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the relay (WebSocket, SSE) vs both bare broadcasts, and idle memory, one run",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--compare: ceiling rounds")
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=1,
        help="--compare: measure latency in this many of the rounds (medians), not only the first",
    )
    opts = parser.parse_args()
    if opts.compare:
        compare(opts)
        return
    q = opts.quick
    sessions, per = (20, 5) if q else (100, 10)
    lat_seconds = 3.0 if q else 10.0
    ceiling_events = 2_000 if q else 10_000
    replay_n = 10_000 if q else 100_000
    idle_n = 1_000 if q else 10_000
    pad = "x" * 100  # ~200-byte frames
    nofile = raise_nofile()
    print(f"rpa-bus relay benchmark ({'quick' if q else 'full'}); {os.cpu_count()} CPUs; "
          f"RLIMIT_NOFILE {nofile}; relay workers {opts.workers}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), persistent=False)
        redis.start()
        port = free_port()
        relay = start_relay(redis.url, port, opts.workers)
        url = f"ws://127.0.0.1:{port}/ws"
        try:
            base = {"url": url, "sessions": sessions, "per_session": per}
            if "1" in opts.phases:
                latency_phase(redis, relay, base, lat_seconds, pad)
            if "2" in opts.phases:
                ceiling_phase(redis, base, ceiling_events, pad)
            if "3" in opts.phases:
                replay_phase(redis, url, replay_n, pad)
            if "4" in opts.phases:
                idle_phase(relay, url, port, idle_n)
        finally:
            stop(relay)
            redis.kill()


def latency_phase(
    redis: EmbeddedRedis, relay: Any, base: dict[str, Any], seconds: float, pad: str
) -> None:
    """1. append -> receive latency at 1,000 events/s."""
    sessions, per = base["sessions"], base["per_session"]
    n = int(1000 * seconds)

    def paced(go: Any) -> None:
        go.set()
        asyncio.run(paced_writer(redis.url, sessions, 1000, seconds, pad))

    print(f"\n1. latency, append -> receive, 1,000 ev/s x {per} clients/session over "
          f"{sessions} sessions ({sessions * per} clients, {n * per:,} deliveries):")  # fmt: skip
    for label, pid, fleet_args in (("rpa-bus relay", relay.pid, base), ("naive relay", 0, None)):
        naive = None
        if fleet_args is None:  # XREAD BLOCK -> broadcast: no groups, no replay, no bounds
            naive_port = free_port()
            naive = start_naive(naive_port, redis.url, sessions)
            pid = naive.pid
            fleet_args = {**base, "url": f"ws://127.0.0.1:{naive_port}/", "raw": True}
        try:
            cpu0, redis_cpu0 = tree_cpu_s(pid), cpu_s(redis.pid or 0)
            res = run_fleet(
                "latency",
                {**fleet_args, "expected": n * per, "timeout_s": seconds + 30},
                during=paced,
            )
            relay_cpu = tree_cpu_s(pid) - cpu0
            redis_cpu = cpu_s(redis.pid or 0) - redis_cpu0
        finally:
            if naive is not None:
                stop(naive)
        lat = res["lat"]
        print(f"   {label:14} p50 {pct(lat, 0.50):.2f} ms   p90 {pct(lat, 0.90):.2f} ms   "
              f"p99 {pct(lat, 0.99):.2f} ms   max {max(lat) / 1e6:.1f} ms   "
              f"({len(lat):,} received); CPU (share of one core): server "
              f"{relay_cpu / seconds:.0%}, redis {redis_cpu / seconds:.0%}, "
              f"client fleet {res['cpu_s'] / seconds:.0%} incl. connecting")  # fmt: skip


def ceiling_phase(redis: EmbeddedRedis, base: dict[str, Any], n: int, pad: str) -> None:
    """2. delivery ceiling, relay vs a bare websockets server broadcasting the same frames."""
    sessions, per = base["sessions"], base["per_session"]

    def blast(go: Any) -> None:
        go.set()
        asyncio.run(blast_writer(redis.url, sessions, n, pad))

    res = run_fleet("ceiling", {**base, "expected": n * per, "timeout_s": 120}, during=blast)
    relay_rate = res["count"] / res["elapsed_s"]
    raw_port = free_port()
    raw = start_raw(raw_port, "broadcast", n, sessions, sessions * per, pad)
    try:
        raw_res = run_fleet(
            "ceiling",
            {**base, "url": f"ws://127.0.0.1:{raw_port}/", "raw": True, "expected": n * per,
             "timeout_s": 120},
        )  # fmt: skip
    finally:
        stop(raw)
    raw_rate = raw_res["count"] / raw_res["elapsed_s"]
    print(f"\n2. delivery ceiling, {n:,} events x {per} clients ({n * per:,} deliveries to "
          f"{sessions * per} clients):")  # fmt: skip
    print(f"   relay {relay_rate:,.0f} deliveries/s ({res['count']:,} in "
          f"{res['elapsed_s']:.2f} s); raw broadcast {raw_rate:,.0f}/s "
          f"({raw_res['count']:,} in {raw_res['elapsed_s']:.2f} s); "
          f"ratio {relay_rate / raw_rate:.0%}")  # fmt: skip


def replay_phase(redis: EmbeddedRedis, url: str, n: int, pad: str) -> None:
    """3. a long history to one late joiner, vs the bare server sending it to one client."""
    asyncio.run(blast_writer(redis.url, 1, n, pad, key_of=KEYS.session("replay")))
    replay_s = asyncio.run(replay_one(url, n))
    raw_port = free_port()
    raw = start_raw(raw_port, "one", n, 1, 1, pad)
    try:
        raw_s = asyncio.run(raw_one(f"ws://127.0.0.1:{raw_port}/?s=0", n))
    finally:
        stop(raw)
    print(f"\n3. replay of {n:,} events to one late joiner: {n / replay_s:,.0f} events/s "
          f"({replay_s:.2f} s, subscribe -> live); raw one-client send {n / raw_s:,.0f}/s; "
          f"ratio {raw_s / replay_s:.0%}")  # fmt: skip


def idle_phase(relay: Any, url: str, port: int, n: int) -> None:
    """4. relay RSS per idle connection, and whether n connections are held."""
    before = rss_kib(relay.pid)
    held: dict[str, int] = {}

    def measure(go: Any) -> None:
        held["rss"] = rss_kib(relay.pid)
        held["conns"] = health(port)["connections"]

    res = run_fleet("idle", {"url": url, "n": n, "timeout_s": 120}, during=measure)
    per_conn = (held["rss"] - before) / n
    print(f"\n4. {n:,} idle connections: relay reports {held['conns']:,} open, "
          f"{res['held']:,} answered a ping; relay RSS {before / 1024:.0f} -> "
          f"{held['rss'] / 1024:.0f} MiB = {per_conn:.1f} KiB per idle connection")  # fmt: skip


def compare(opts: Any) -> None:
    """The relay against the bare servers, in one run: latency p99 at 1,000 ev/s x 10
    fan-out, the WebSocket and SSE delivery ceilings to 1,000 clients beside bare websockets
    and aiohttp broadcasts (rounds alternate the relay and the bare servers so all see the
    same machine load; medians), and RSS per idle subscribed connection. (Until issue 13
    this also ran the relay on the websockets server, since removed.)"""
    import statistics

    q = opts.quick
    sessions, per = (20, 5) if q else (100, 10)
    lat_seconds = 3.0 if q else 10.0
    n = 2_000 if q else 10_000
    idle_n = 200 if q else 1_000
    pad = "x" * 100
    nofile = raise_nofile()
    load = os.getloadavg()[0]
    print(f"rpa-bus relay vs bare servers ({'quick' if q else 'full'}); "
          f"{os.cpu_count()} CPUs; RLIMIT_NOFILE {nofile}; load {load:.1f}")  # fmt: skip
    base = {"sessions": sessions, "per_session": per}
    rates: dict[str, list[float]] = {}
    figures: dict[str, dict[str, float]] = {"relay": {}}
    latencies: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), persistent=False)
        redis.start()
        try:
            for round_ in range(opts.rounds):
                order = ["relay", "bare"] if round_ % 2 == 0 else ["bare", "relay"]
                for what in order:
                    if what == "bare":
                        for raw in ("raw websockets", "raw aiohttp"):
                            rates.setdefault(raw, []).append(raw_ceiling(raw, base, n, pad))
                        continue
                    port = free_port()
                    relay = start_relay(redis.url, port, name="b-relay")
                    try:
                        args = {**base, "url": f"ws://127.0.0.1:{port}/ws"}
                        rates.setdefault("relay", []).append(relay_ceiling(redis, args, n, pad))
                        rate = relay_ceiling(redis, {**args, "sse": True}, n, pad)
                        rates.setdefault("sse", []).append(rate)
                        if round_ < opts.latency_rounds:
                            lat = relay_latency(redis, relay, args, lat_seconds, pad)
                            for k, v in lat.items():
                                latencies.setdefault(k, []).append(v)
                    finally:
                        stop(relay)
                    if round_ == 0:  # on a fresh relay: no memory freed by earlier phases
                        relay = start_relay(redis.url, port, name="i-relay")
                        try:
                            figures["relay"]["idle_kib"] = idle_kib(relay, port, idle_n)
                        finally:
                            stop(relay)
                print(f"   round {round_ + 1}: " + ", ".join(
                    f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))  # fmt: skip
        finally:
            redis.kill()
        for bare, script in (("bare aiohttp", BARE_IDLE_AIOHTTP),
                             ("bare websockets", BARE_IDLE_WEBSOCKETS)):  # fmt: skip
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-c", script, str(port)])
            try:
                wait_port(port, proc)
                figures[bare] = {"idle_kib": idle_kib(proc, port, idle_n)}
            finally:
                stop(proc)
    med = {k: statistics.median(v) for k, v in rates.items()}
    figures["relay"].update({k: statistics.median(v) for k, v in latencies.items()})
    print(f"\nDelivery ceiling, {n:,} events x {per} clients ({sessions * per} "
          f"clients), medians of {opts.rounds} rounds:")  # fmt: skip
    for k, v in med.items():
        print(f"   {k:16} {v:>9,.0f} deliveries/s")
    print(f"   relay / bare aiohttp broadcast {med['relay'] / med['raw aiohttp']:.0%}; "
          f"relay / bare websockets broadcast {med['relay'] / med['raw websockets']:.0%}; "
          f"SSE / WebSocket {med['sse'] / med['relay']:.0%}")  # fmt: skip

    def per_round(a: str, b: str) -> str:
        ratios = sorted(x / y for x, y in zip(rates[a], rates[b], strict=True))
        return f"median {statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f})"

    print(f"   per-round ratios: relay / bare aiohttp {per_round('relay', 'raw aiohttp')}; "
          f"SSE / WebSocket {per_round('sse', 'relay')}")  # fmt: skip
    lat_n = min(opts.latency_rounds, opts.rounds)
    print(f"\nLatency at 1,000 ev/s x {per} fan-out ({sessions * per} clients; medians of "
          f"{lat_n} x {lat_seconds:.0f} s), and RSS per idle subscribed connection "
          f"({idle_n:,} connections):")  # fmt: skip
    if latencies:
        print("   relay p99 of each latency round: "
              + ", ".join(f"{v:.1f}" for v in latencies["p99"]) + " ms")  # fmt: skip
    for server, f in figures.items():
        if "p50" not in f:
            print(f"   {server:16} idle {f['idle_kib']:.1f} KiB/connection")
            continue
        print(f"   {server:10} p50 {f['p50']:.2f} ms  p99 {f['p99']:.2f} ms  max {f['max']:.1f} ms"
              f"  server CPU {f['cpu']:.0%}   idle {f['idle_kib']:.1f} KiB/connection")  # fmt: skip


def relay_ceiling(redis: EmbeddedRedis, args: dict[str, Any], n: int, pad: str) -> float:
    def blast(go: Any) -> None:
        go.set()
        asyncio.run(blast_writer(redis.url, args["sessions"], n, pad))

    per = args["per_session"]
    res = run_fleet("ceiling", {**args, "expected": n * per, "timeout_s": 120}, during=blast)
    if res["count"] < n * per:
        print(f"   (only {res['count']:,} of {n * per:,} delivered)")
    return float(res["count"] / res["elapsed_s"])


def raw_ceiling(kind: str, base: dict[str, Any], n: int, pad: str) -> float:
    sessions, per = base["sessions"], base["per_session"]
    port = free_port()
    if kind == "raw aiohttp":
        proc = start_raw_aiohttp(port, n, sessions, sessions * per, pad)
    else:
        proc = start_raw(port, "broadcast", n, sessions, sessions * per, pad)
    try:
        res = run_fleet(
            "ceiling",
            {**base, "url": f"ws://127.0.0.1:{port}/", "raw": True, "expected": n * per,
             "timeout_s": 120},
        )  # fmt: skip
    finally:
        stop(proc)
    return float(res["count"] / res["elapsed_s"])


def relay_latency(
    redis: EmbeddedRedis, relay: Any, args: dict[str, Any], seconds: float, pad: str
) -> dict[str, float]:
    n = int(1000 * seconds)

    def paced(go: Any) -> None:
        go.set()
        asyncio.run(paced_writer(redis.url, args["sessions"], 1000, seconds, pad))

    cpu0 = tree_cpu_s(relay.pid)
    res = run_fleet(
        "latency",
        {**args, "expected": n * args["per_session"], "timeout_s": seconds + 30},
        during=paced,
    )
    lat = res["lat"]
    return {
        "p50": pct(lat, 0.50),
        "p99": pct(lat, 0.99),
        "max": max(lat) / 1e6,
        "cpu": (tree_cpu_s(relay.pid) - cpu0) / seconds,
    }


def idle_kib(relay: Any, port: int, n: int) -> float:
    url = f"ws://127.0.0.1:{port}/ws"
    # Warm up: the first connections pay for imports and pools, not per connection.
    run_fleet("idle", {"url": url, "n": 50, "timeout_s": 60})
    before = rss_kib(relay.pid)
    held: dict[str, int] = {}

    def measure(go: Any) -> None:
        held["rss"] = rss_kib(relay.pid)

    res = run_fleet("idle", {"url": url, "n": n, "timeout_s": 120}, during=measure)
    if res["held"] != n:
        print(f"   ({res['held']} of {n} idle connections answered)")
    return (held["rss"] - before) / n


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        result: dict[str, Any] = orjson.loads(resp.read())
        return result


async def replay_one(url: str, n: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        start = time.perf_counter()
        await ws.send('{"op":"subscribe","stream":"session:replay","from":"0"}')
        count = 0
        async for message in ws:
            if message.startswith('{"type":"event"'):
                count += 1
            elif message.startswith('{"type":"live"'):
                break
        elapsed = time.perf_counter() - start
    if count != n:
        raise SystemExit(f"replay delivered {count}, expected {n}")
    return elapsed


async def raw_one(url: str, n: int) -> float:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        count = 0
        start = 0.0
        async for _ in ws:
            if not count:
                start = time.perf_counter()
            count += 1
            if count == n:
                break
        return (time.perf_counter() - start) * n / max(1, n - 1)


if __name__ == "__main__":
    main()
