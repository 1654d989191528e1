"""Archive benchmark: prints figures, never passes or fails.

    python bench/archive.py [--events 20000] [--sessions 20] [--rounds 3] [--rate 500]
                            [--parts 1,2,3] [--clients 1000] [--compare]

Starts a private Redis and a private PostgreSQL (initdb/pg_ctl as for the tests; fsync
off, loopback) and a SQLite file, and measures in one run, with ~200-byte events:

1. drivers: the archiver's insert statement (one ``INSERT ... SELECT FROM unnest(arrays)
   ON CONFLICT DO NOTHING`` per 500-row batch) on psycopg 3 (async) and asyncpg, and each
   driver's ``executemany`` of the same rows, rows/s (best of the rounds);
2. throughput: the archiver (Redis group read -> store -> XACK -> trim) draining a backlog
   of ``--events`` against raw batched inserts of the same rows into the same store
   (PostgreSQL and SQLite), as a ratio;
3. lag: with the archiver running, a producer at ``--rate`` events/s for ``--seconds``;
   per event, the time from its Redis id (XADD time) to the store's commit; p50/p99.

During 2 and 3 a relay (``rpa-bus relay``, its own process) serves ``--clients``
WebSocket clients (another process; default 1,000, 0 for none), as the issue's targets ask
("with a relay serving 1,000 clients"): ``--per`` (default 2) follow each session being
written, the others sessions that stay idle. In 2 both sides run under the same load: the
archiver's backlog is written, and delivered by the relay to its clients, before either
side is timed, and each side waits for the relay and the fleet to be idle; the sides take
turns going first, and the CPU the relay and its fleet used while each side was timed is
printed. ``--compare`` adds the PostgreSQL archiver with group commit off (a transaction
per stream) as a third side. ``--engines`` picks the stores of 2 and 3. The archivers run
in this process, with the collector set as ``rpa-bus archiver`` sets it (``tune_gc``;
``--gc-default`` keeps CPython's settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Run as a script, this folder is sys.path[0] and this file would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import orjson  # noqa: E402

from bench.relay import cpu_s, raise_nofile, stop, wait_port  # noqa: E402
from producer import Producer  # noqa: E402
from rpa_bus import Settings, now_ts  # noqa: E402
from rpa_bus.archive import PostgresStore, Record, Row, Store, open_store  # noqa: E402
from rpa_bus.cli._embedded import EmbeddedRedis, free_port  # noqa: E402
from tests._postgres import LocalPostgres  # noqa: E402
from workers import Archiver, ArchiverSettings, tune_gc  # noqa: E402

PAYLOAD = {"plate": "ABC1D23", "insurer": "porto", "plans": [101, 202, 303]}
BATCH = 500
INSERT_PG = (
    "INSERT INTO events (stream, ms, seq, epoch, data) SELECT * FROM unnest({}::text[], "
    "{}::int8[], {}::int8[], {}::text[], {}::bytea[]) ON CONFLICT DO NOTHING"
)
ROW_INSERT = (
    "INSERT INTO events (stream, ms, seq, epoch, data) VALUES ({}, {}, {}, {}, {}) "
    "ON CONFLICT DO NOTHING"
)


# A client fleet in its own process: N WebSocket clients, PER of them on each of the given
# streams (the rest on sessions that stay idle), each subscribed from "$" (following what
# is written), counting events until SIGTERM.
FLEET = r"""
import asyncio, signal, sys, orjson
from websockets.asyncio.client import connect
url, streams, n, per = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
count = 0
async def client(i, sem, ready):
    global count
    async with sem:
        ws = await connect(url, open_timeout=60, max_size=None, ping_interval=None)
    # ``per`` clients follow each written session; the others sessions that stay idle.
    stream = streams[i % len(streams)] if i < per * len(streams) else f"session:idle-{i}"
    await ws.send(orjson.dumps({"op": "subscribe", "stream": stream, "from": "$"}).decode())
    ready.append(i)
    async for raw in ws:
        if b'"type":"event"' in (raw if isinstance(raw, bytes) else raw.encode()):
            count += 1
async def main():
    sem, ready = asyncio.Semaphore(64), []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(client(i, sem, ready)) for i in range(n)]
    while len(ready) < n:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    while not stop.is_set():  # the running count, for the bench to see the relay settle
        print(count, flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    print(count, flush=True)
    for t in tasks:
        t.cancel()
asyncio.run(main())
"""


class Fleet:
    """The relay and its client fleet while they run: events delivered so far, CPU used."""

    def __init__(self, relay: subprocess.Popen[bytes], fleet: subprocess.Popen[str]) -> None:
        self.relay, self.fleet = relay, fleet
        self.delivered = 0
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        assert self.fleet.stdout is not None
        for line in self.fleet.stdout:
            with contextlib.suppress(ValueError):
                self.delivered = int(line)

    def cpu_s(self) -> float:
        """CPU seconds the relay and the fleet used so far."""
        return cpu_s(self.relay.pid) + cpu_s(self.fleet.pid)

    async def quiet(self, timeout_s: float = 30.0) -> None:
        """Wait until the relay and the fleet use under 5% of a core (over 0.25 s): once
        its clients got the backlog, the relay goes on working for up to a second, and
        whichever side was timed first then shared the machine with it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cpu0, t0 = self.cpu_s(), time.perf_counter()
            await asyncio.sleep(0.25)
            if (self.cpu_s() - cpu0) / (time.perf_counter() - t0) < 0.05:
                return
        print(f"      (relay and fleet still busy after {timeout_s:.0f} s)")

    async def settle(self, expected: int, timeout_s: float = 300.0) -> None:
        """Wait until the clients got ``expected`` events (or nothing came for 2 s): the
        relay is done delivering what was just written, so it loads neither side."""
        deadline = time.monotonic() + timeout_s
        seen, since = -1, time.monotonic()
        while self.delivered < expected and time.monotonic() < deadline:
            if self.delivered != seen:
                seen, since = self.delivered, time.monotonic()
            elif time.monotonic() - since > 2.0:
                print(f"      (relay settled at {seen} of {expected} deliveries)")
                return
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def serving(
    redis_url: str, prefix: str, streams: Sequence[str], clients: int, per: int
) -> Iterator[Fleet | None]:
    """A relay and ``clients`` WebSocket clients, ``per`` following each of ``streams``,
    the others idle sessions (None if ``clients`` is 0)."""
    if clients <= 0:
        yield None
        return
    raise_nofile()  # the relay and the fleet inherit it: 1,000+ sockets each
    port = free_port()
    exe = shutil.which("rpa-bus") or str(Path(sys.prefix) / "bin" / "rpa-bus")
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_PREFIX": prefix,
        "RPA_BUS_RELAY_MAX_CONNECTIONS_PER_IP": "0",
    }
    relay = subprocess.Popen(
        [exe, "relay", "--port", str(port), "--name", "bench"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fleet = None
    handle: Fleet | None = None
    try:
        wait_port(port, relay)
        url = f"ws://127.0.0.1:{port}/ws"
        fleet = subprocess.Popen(
            [sys.executable, "-c", FLEET, url, ",".join(streams), str(clients), str(per)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fleet.stdout is not None
        if fleet.stdout.readline().strip() != "ready":
            raise SystemExit("the client fleet did not connect")
        handle = Fleet(relay, fleet)
        yield handle
    finally:
        if fleet is not None:
            fleet.terminate()
            fleet.wait(timeout=30)
            got = handle.delivered if handle is not None else "?"
            print(f"      (relay delivered {got} events to {clients} clients)")
        stop(relay)


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_rows(n: int, sessions: int, tag: str) -> list[Record]:
    ms0 = int(time.time() * 1000)
    rows = []
    for i in range(n):
        event = {"type": "progress", "ts": now_ts(), "step": i, "total": n,
                 "message": "Tela de cotação", "data": PAYLOAD}  # fmt: skip
        rows.append(Record(f"session:{tag}-{i % sessions}", "e", f"{ms0 + i}-0",
                           orjson.dumps(event)))  # fmt: skip
    return rows


def columns(rows: Sequence[Record]) -> tuple[list[Any], ...]:
    ids = [r.id.split("-") for r in rows]
    return (
        [r.stream for r in rows],
        [int(a) for a, _ in ids],
        [int(b) for _, b in ids],
        [r.epoch for r in rows],
        [r.data for r in rows],
    )


async def fresh_pg(pg: LocalPostgres, name: str) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {name}")
    pg.psql(f"CREATE DATABASE {name}")
    url = pg.url_for(name)
    store = await open_store(url)  # creates the schema
    await store.close()
    return url


async def psycopg_rate(url: str, rows: list[Record], *, many: bool, ph: str = "%b") -> float:
    """psycopg 3 (async): ``ph`` %b sends binary parameters (the store's choice), %s text."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            batch = rows[i : i + BATCH]
            async with conn.transaction():
                if many:
                    async with conn.cursor() as cur:
                        cols = columns(batch)
                        await cur.executemany(
                            ROW_INSERT.format(*[ph] * 5).encode(), list(zip(*cols, strict=True))
                        )
                else:
                    await conn.execute(INSERT_PG.format(*[ph] * 5).encode(), columns(batch))
        return len(rows) / (time.perf_counter() - t0)


async def asyncpg_rate(url: str, rows: list[Record], *, many: bool) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            batch = rows[i : i + BATCH]
            async with conn.transaction():
                cols = columns(batch)
                if many:
                    await conn.executemany(
                        ROW_INSERT.format("$1", "$2", "$3", "$4", "$5"),
                        list(zip(*cols, strict=True)),
                    )
                else:
                    await conn.execute(INSERT_PG.format("$1", "$2", "$3", "$4", "$5"), *cols)
        return len(rows) / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def raw_store_rate(url: str, rows: list[Record]) -> float:
    """Plain batched inserts of the rows, no folding, no Redis: the store's ceiling."""
    if url.startswith("sqlite"):
        import sqlite3

        path = url[len("sqlite://") :]

        def run() -> float:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            t0 = time.perf_counter()
            for i in range(0, len(rows), BATCH):
                batch = rows[i : i + BATCH]
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    ROW_INSERT.format(*["?"] * 5), list(zip(*columns(batch), strict=True))
                )
                conn.execute("COMMIT")
            rate = len(rows) / (time.perf_counter() - t0)
            conn.close()
            return rate

        return await asyncio.to_thread(run)
    return await psycopg_rate(url, rows, many=False)


def fill_redis(settings: Settings, n: int, sessions: int, tag: str) -> None:
    with Producer(settings=settings) as p:
        runs = [p.session(f"{tag}-{k}", total=n) for k in range(sessions)]
        for run in runs:
            run.start()
        for i in range(n - sessions):
            runs[i % sessions].progress(i // sessions, "Tela de cotação", data=PAYLOAD)
        assert p.flush(120)


async def fill_backlog(settings: Settings, url: str, n: int, sessions: int, tag: str) -> None:
    """``n`` events over ``sessions`` sessions into Redis, kept for the archiver (an
    archiver announces itself first: archive=1, so the producer trims nothing)."""
    marker = ArchiverSettings(bus=settings, archive_url=url)
    async with Archiver(marker) as a:
        task = asyncio.create_task(a.run())
        await until(lambda: a.group_stats is not None and a.group_stats.owned > 0)
        a.close()
        await task
    await asyncio.to_thread(fill_redis, settings, n, sessions, tag)


async def archiver_rate(settings: Settings, store: Store, n: int, sessions: int) -> float:
    """Events/s the archiver drains from the backlog ``fill_backlog`` left in Redis, from
    its first store call to its last commit (start-up and discovery left out)."""
    span: list[float] = []
    url = "unused://the store is given"
    async with Archiver(ArchiverSettings(bus=settings, archive_url=url), store=store) as a:
        real_put = a.store.put

        async def timed_put(rows: Sequence[Row]) -> int:
            if not span:
                span.append(time.perf_counter())
            stored = await real_put(rows)
            span[1:] = [time.perf_counter()]
            return stored

        a.store.put = timed_put  # type: ignore[method-assign]
        task = asyncio.create_task(a.run())
        await until(lambda: a.stats.stored >= n + sessions)  # + the index's entries
        rate = a.stats.stored / (span[1] - span[0])
        a.close()
        await task
    return rate


async def until(cond: Any, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        await asyncio.sleep(0.005)


async def lag(settings: Settings, url: str, rate: float, seconds: float, tag: str) -> list[float]:
    """Per event: ms from its Redis id to the store's commit, at a steady rate."""
    delays: list[float] = []
    async with Archiver(ArchiverSettings(bus=settings, archive_url=url)) as a:
        real_put = a.store.put

        async def timed_put(rows: Sequence[Row]) -> int:
            n = await real_put(rows)
            now = time.time() * 1000
            delays.extend(now - int(r.id.split("-")[0]) for r in rows)
            return n

        a.store.put = timed_put  # type: ignore[method-assign]
        task = asyncio.create_task(a.run())
        await until(lambda: a.group_stats is not None and a.group_stats.owned > 0)
        total = int(rate * seconds)
        done = threading.Event()

        def produce() -> None:
            with Producer(settings=settings) as p:
                runs = [p.session(f"{tag}-{k}", total=total) for k in range(10)]
                for run in runs:
                    run.start()
                t0 = time.perf_counter()
                for i in range(total):
                    due = t0 + i / rate
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    runs[i % 10].progress(i // 10, "Tela de cotação", data=PAYLOAD)
                assert p.flush(60)
            done.set()

        await asyncio.to_thread(produce)
        await until(lambda: a.stats.stored >= total + 20)
        a.close()
        await task
    return delays


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 1 or 2,3")
    ap.add_argument("--clients", type=int, default=1000, help="relay clients during 2 and 3")
    ap.add_argument("--compare", action="store_true",
                    help="2 also times the PostgreSQL archiver without group commit")  # fmt: skip
    ap.add_argument("--per", type=int, default=2, help="of which following each written session")
    ap.add_argument("--engines", default="postgresql,sqlite", help="the stores 2 and 3 use")
    add_gc_option(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="rpa-bus-bench-archive-"))
    with servers(tmp, gc_default=args.gc_default) as (pg, redis_server):
        parts = {int(p) for p in args.parts.split(",")}
        if 1 in parts:
            await drivers_part(pg, args)
        if 2 in parts:
            await throughput_part(pg, redis_server, tmp, args)
        if 3 in parts:
            await lag_part(pg, redis_server, tmp, args)


def add_gc_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gc-default", action="store_true",
                    help="CPython's collector settings, not tune_gc's")  # fmt: skip


@contextlib.contextmanager
def servers(tmp: Path, *, gc_default: bool) -> Iterator[tuple[LocalPostgres, EmbeddedRedis]]:
    """A private PostgreSQL and Redis under ``tmp`` (removed afterwards). The archivers the
    benches run in this process get the collector set as `rpa-bus archiver` sets its own
    (``tune_gc``), unless ``gc_default`` (CPython's defaults, to compare)."""
    pg = LocalPostgres(tmp / "pg")
    pg.init()
    pg.start()
    redis_server = EmbeddedRedis(tmp / "redis", persistent=False)
    redis_server.start()
    if not gc_default:
        tune_gc()
    try:
        yield pg, redis_server
    finally:
        redis_server.kill()
        pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


async def drivers_part(pg: LocalPostgres, args: argparse.Namespace) -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        print("1. skipped: the driver comparison needs asyncpg (pip install 'rpa-bus[bench]')")
        return
    rows = make_rows(args.events, args.sessions, "d")
    print(f"1. insert path, {args.events} rows in batches of {BATCH}: rows/s, best of "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    drivers: dict[str, Any] = {
        "psycopg 3 unnest, binary (the store)": lambda u: psycopg_rate(u, rows, many=False),
        "psycopg 3 unnest, text": lambda u: psycopg_rate(u, rows, many=False, ph="%s"),
        "asyncpg   unnest": lambda u: asyncpg_rate(u, rows, many=False),
        "psycopg 3 executemany, binary": lambda u: psycopg_rate(u, rows, many=True),
        "asyncpg   executemany": lambda u: asyncpg_rate(u, rows, many=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in drivers}
    for r in range(args.rounds):
        order = list(drivers.items())
        if r % 2:  # alternate who goes first: a busy machine favours no one
            order.reverse()
        for i, (name, fn) in enumerate(order):
            rates[name].append(await fn(await fresh_pg(pg, f"drv{r}_{i}")))
    for name, got in rates.items():
        print(f"   {name:38s} best {max(got):8.0f}   median {statistics.median(got):8.0f}")
    ours, theirs = rates["psycopg 3 unnest, binary (the store)"], rates["asyncpg   unnest"]
    same_round = [p / a for p, a in zip(ours, theirs, strict=True)]
    print(f"   psycopg 3 / asyncpg (unnest), per round: median x{statistics.median(same_round):.2f}"
          f"  (rounds: {' '.join(f'{x:.2f}' for x in same_round)})")  # fmt: skip


async def throughput_part(
    pg: LocalPostgres, redis_server: EmbeddedRedis, tmp: Path, args: argparse.Namespace
) -> None:
    print(f"2. archiver vs raw batched inserts of the same rows, {args.events} events "
          f"({args.sessions} sessions) already in Redis, a relay serving {args.clients} "
          "clients meanwhile")  # fmt: skip
    for engine in args.engines.split(","):
        sides = ["raw", "archiver"]
        if engine == "postgresql" and args.compare:
            sides.append("archiver, a transaction per stream")
        rates: dict[str, list[float]] = {side: [] for side in sides}
        loads: dict[str, list[float]] = {side: [] for side in sides}
        for r in range(args.rounds):
            urls: dict[str, str] = {}
            for i, side in enumerate(sides):
                if engine == "sqlite":
                    urls[side] = f"sqlite://{tmp / f'{i}-{r}.db'}"
                    s = await open_store(urls[side])
                    await s.close()
                else:
                    urls[side] = await fresh_pg(pg, f"side{i}_{r}")
            bus = {side: Settings(
                redis_url=redis_server.url,
                spool_dir=tmp / "spool",
                maxlen=1_000_000,
                queue_max=1_000_000,
                prefix=f"b{engine[:2]}{r}" + ("" if i == 1 else f"s{i}"),
            ) for i, side in enumerate(sides)}  # fmt: skip
            streams = [f"session:t-{k}" for k in range(args.sessions)]
            relay_prefix = bus["archiver"].prefix
            with serving(redis_server.url, relay_prefix, streams, args.clients, args.per) as fleet:
                # The backlogs are written (and the relay delivers the one of its prefix to
                # its clients) before any side is timed; then every side runs with the
                # relay serving its clients idle, in an order that turns every round, so
                # no side gets the quieter moments of the machine.
                for side in sides[1:]:
                    await fill_backlog(bus[side], urls[side], args.events, args.sessions, "t")
                rows = make_rows(args.events, args.sessions, "r")
                if fleet is not None:
                    t_settle = time.perf_counter()
                    await fleet.settle(args.per * args.events)
                    took = time.perf_counter() - t_settle
                    print(f"      (round {r}: backlog delivered {took:.1f} s after written)")
                # Each side goes first in turn.
                for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                    if fleet is not None:
                        await fleet.quiet()
                    cpu0, t0 = (fleet.cpu_s() if fleet else 0.0), time.perf_counter()
                    if side == "raw":
                        rate = await raw_store_rate(urls[side], rows)
                    else:
                        store = await open_store(urls[side])
                        if isinstance(store, PostgresStore):
                            store.group_commit = side == "archiver"
                        try:
                            rate = await archiver_rate(bus[side], store, args.events, args.sessions)
                        finally:
                            await store.close()
                    rates[side].append(rate)
                    if fleet is not None:  # the relay's and the fleet's share of a core
                        loads[side].append((fleet.cpu_s() - cpu0) / (time.perf_counter() - t0))
        raw = rates["raw"]
        print(f"   {engine:10s}  raw inserts {max(raw):8.0f}/s best, {statistics.median(raw):8.0f}"
              "/s median")  # fmt: skip
        for side in sides[1:]:
            got = rates[side]
            ratios = [x / y for x, y in zip(got, raw, strict=True)]
            print(f"      {side:36s} {max(got):8.0f}/s best, {statistics.median(got):8.0f}/s "
                  f"median; per-round ratio median x{statistics.median(ratios):.2f} "
                  f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
        if fleet is not None:
            print("      relay+fleet CPU while timed (cores): " + "; ".join(
                f"{side} {' '.join(f'{x:.2f}' for x in loads[side])}" for side in sides
            ))  # fmt: skip


async def lag_part(
    pg: LocalPostgres, redis_server: EmbeddedRedis, tmp: Path, args: argparse.Namespace
) -> None:
    print(f"3. lag at {args.rate:.0f} events/s for {args.seconds:.0f} s (Redis id -> commit), "
          f"a relay serving {args.clients} clients meanwhile")  # fmt: skip
    for engine in args.engines.split(","):
        url = (f"sqlite://{tmp / 'lag.db'}" if engine == "sqlite"
               else await fresh_pg(pg, "lag"))  # fmt: skip
        settings = Settings(redis_url=redis_server.url, spool_dir=tmp / "spool",
                            prefix=f"lag{engine[:2]}")  # fmt: skip
        streams = [f"session:l-{k}" for k in range(10)]
        with serving(redis_server.url, settings.prefix, streams, args.clients, args.per):
            delays = await lag(settings, url, args.rate, args.seconds, "l")
        print(f"   {engine:10s}  p50 {statistics.median(delays):6.1f} ms   "
              f"p99 {quantile(delays, 0.99):6.1f} ms   ({len(delays)} events)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
