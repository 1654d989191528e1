"""A GroupWorker in a process of its own, for tests/test_group.py to SIGKILL: its sink
writes each entry it takes as a JSON line [stream, id] to a file (flushed per batch, so a
kill loses nothing written), slowly, so a kill finds a batch in flight.

Arguments: REDIS_URL BUCKETS CONSUMER CLAIM_IDLE_MS OUT_FILE
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from rpa_bus import Settings
from rpa_bus.redisio import Entry, GroupSettings, GroupWorker


class FileSink:
    def __init__(self, path: Path) -> None:
        self.out = path.open("ab")

    async def put(self, entries: Sequence[Entry]) -> None:
        await asyncio.sleep(0.02)
        self.out.write(b"".join(orjson.dumps([e.stream, e.id]) + b"\n" for e in entries))
        self.out.flush()


async def main() -> None:
    url, buckets, consumer, claim_idle_ms, out = sys.argv[1:6]
    bus = Settings(redis_url=url, buckets=int(buckets))
    group = GroupSettings(
        kind="archiver", consumer=consumer, claim_idle_ms=int(claim_idle_ms), block_ms=200, count=3
    )
    await GroupWorker(bus, group, FileSink(Path(out))).run()


asyncio.run(main())
