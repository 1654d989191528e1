"""Fan-out, acknowledgements and the waker: what happens around each read.

``fan_out`` hands each entry a reader returned to every subscription of its stream (the
subscription core decides, per subscription, whether it goes to the client, to the replay
buffer, or nowhere because the subscription is catching up). The ``Acker`` XACKs
fanned-out entries, coalesced, off the readers' path. The ``Waker`` unblocks a reader with
CLIENT UNBLOCK when its tailed set grew, so its next read includes the new streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from relay._frames import Id, event_frame, parse_id
from relay._servers import Servers
from relay._stats import Stats
from relay._subscription import Subscription
from rpa_bus.redisio import GUARDED_FAILURES, AsyncClient, Backoff, is_retryable

if TYPE_CHECKING:
    from relay._hub import Tail
    from relay._reader import Reader

ACK_INTERVAL_S = 0.01

Offer = Callable[[Subscription, Id, bytes], None]


def fan_out(
    tails: Mapping[str, Tail], response: Any, stats: Stats, offer: Offer
) -> dict[str, list[bytes]]:
    """Hand each entry to every subscription of its stream; return ids to acknowledge."""
    if not response:
        return {}
    items: Iterable[Any] = response.items() if isinstance(response, dict) else response
    delivered: dict[str, list[bytes]] = {}
    newest = 0
    for raw_key, entries in items:
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        tail = tails.get(key)
        ids: list[bytes] = []
        for raw_id, fields in entries:
            ids.append(raw_id)
            if tail is None or fields is None:  # entry deleted while pending
                continue
            entry_id = parse_id(raw_id)
            newest = max(newest, entry_id[0])
            frame = event_frame(tail.prefix, raw_id, _field_e(fields))
            for sub in tail.subs:
                offer(sub, entry_id, frame)
        if ids:
            delivered[key] = ids
            if tail is not None:
                # Ids grow within a stream; with min_replicas these are confirmed.
                tail.confirmed = max(tail.confirmed, parse_id(ids[-1]))
    if newest:
        stats.lag_s = max(0.0, time.time() - newest / 1000)
    return delivered


def _field_e(fields: Any) -> bytes | None:
    """The ``e`` field of a raw entry: a flat [field, value, ...] list (RESP2) or a dict."""
    if isinstance(fields, dict):
        value = fields.get(b"e")
        return value if isinstance(value, bytes) else None
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == b"e":
            raw: bytes = fields[i + 1]
            return raw
    return None


class Acker:
    """XACKs fanned-out entries of our group, batched."""

    def __init__(self, client: AsyncClient, group: str) -> None:
        self._client = client
        self.group = group
        self._acks: dict[str, list[bytes]] = {}
        self._ack_wake = asyncio.Event()

    def queue_acks(self, delivered: dict[str, list[bytes]]) -> None:
        for key, ids in delivered.items():
            self._acks.setdefault(key, []).extend(ids)
        self._ack_wake.set()

    async def ack(self, delivered: dict[str, list[bytes]], client: AsyncClient) -> None:
        if len(delivered) == 1:
            [(key, ids)] = delivered.items()
            # NOGROUP: the group went away, and its pending list with it.
            with contextlib.suppress(ResponseError):
                await client.xack(key, self.group, *ids)
            return
        async with client.pipeline(transaction=False) as pipe:
            for key, ids in delivered.items():
                pipe.xack(key, self.group, *ids)
            await pipe.execute(raise_on_error=False)

    async def run(self) -> None:
        """Acknowledge fanned-out entries, batching whatever piled up since the last call.

        Acks are bookkeeping (lag and pending in XINFO GROUPS), not what makes delivery exact,
        so they run on the command client while the reader goes straight back to reading.
        """
        backoff = Backoff()
        while True:
            await self._ack_wake.wait()
            # Coalesce: at a steady trickle this turns one XACK per event into one per 10 ms.
            await asyncio.sleep(ACK_INTERVAL_S)
            self._ack_wake.clear()
            pending, self._acks = self._acks, {}
            try:
                await self.ack(pending, self._client)
            except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
                if not is_retryable(exc):
                    raise
                for key, ids in pending.items():  # they stay pending in Redis meanwhile
                    self._acks.setdefault(key, [])[:0] = ids
                self._ack_wake.set()
                await asyncio.sleep(backoff.next_s())
            else:
                backoff.reset()


class Waker:
    """Wakes readers whose tailed set grew (``wake()``) with CLIENT UNBLOCK."""

    def __init__(self, servers: Servers, readers: Mapping[int | None, Reader]) -> None:
        self._servers = servers
        self._readers = readers
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Wake readers with CLIENT UNBLOCK when their tailed set grew.

        UNBLOCK only works once Redis has the XREADGROUP blocked: if the command is still
        on its way, it returns 0 and we try again shortly, until the reader has picked up
        the new set (or is not blocked).
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            for _ in range(500):
                # Readers in an outage are skipped: their next read is built afresh.
                stale = [
                    r for r in self._readers.values()
                    if r.client_id is not None and r.up and r.reading_gen < r.gen
                ]  # fmt: skip
                if not stale:
                    break
                await asyncio.gather(*(self._unblock(r) for r in stale if r.blocked))
                await asyncio.sleep(0.002)

    async def _unblock(self, reader: Reader) -> None:
        if reader.client_id is not None:
            try:
                await self._servers.pinned(reader.addr).client_unblock(reader.client_id)
            except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
                if not is_retryable(exc):
                    raise
