"""The archiver process's own CPU per event: ``time.process_time`` around a drain of
50,000 events over 20 sessions already in Redis (group commit, no relay), per store.

    python bench/archive_cpu.py [--engines postgresql,sqlite] [--rounds 3]

To time another tree (main, say: ``git archive main | tar -x -C /tmp/base``), run its
copy of this script with ``PYTHONPATH=/tmp/base``; the script puts its own tree first
on ``sys.path``. The drain and the backlog are ``bench/archive.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import bench.archive as bench  # noqa: E402
from rpa_bus import Settings  # noqa: E402
from rpa_bus.archive import PostgresStore, open_store  # noqa: E402

EVENTS, SESSIONS = 50_000, 20


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="postgresql,sqlite")
    ap.add_argument("--rounds", type=int, default=3)
    bench.add_gc_option(ap)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rpa-bus-bench-cpu-"))
    with bench.servers(tmp, gc_default=args.gc_default) as (pg, redis_server):
        for r in range(args.rounds):
            for engine in args.engines.split(","):
                if engine == "sqlite":
                    url = f"sqlite://{tmp / f'cpu{r}.db'}"
                    await (await open_store(url)).close()  # creates the schema
                else:
                    url = await bench.fresh_pg(pg, f"cpu{r}")
                settings = Settings(
                    redis_url=redis_server.url,
                    spool_dir=tmp / "spool",
                    maxlen=1_000_000,
                    queue_max=1_000_000,
                    prefix=f"c{engine[:2]}{r}",
                )
                await bench.fill_backlog(settings, url, EVENTS, SESSIONS, "t")
                store = await open_store(url)
                if isinstance(store, PostgresStore):
                    store.group_commit = True
                try:
                    cpu0 = time.process_time()
                    rate = await bench.archiver_rate(settings, store, EVENTS, SESSIONS)
                    cpu = time.process_time() - cpu0
                finally:
                    await store.close()
                print(f"{engine:10s} round {r}: {rate:8.0f} events/s, "
                      f"CPU {cpu / EVENTS * 1e6:5.1f} us/event", flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
