"""Outage bookkeeping: Redis (or, on a cluster, one slot's master) stops answering.

Outages are numbered, so that each subscription is told once per outage (an ``error``
frame with code ``unavailable``), not once per retry; the relay goes on retrying with
backoff and delivery resumes by itself when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from relay import _frames as F
from relay._servers import Servers
from relay._stats import Stats
from relay._subscription import Mode, Subscription
from rpa_bus import Keys
from rpa_bus.redisio import GUARDED_FAILURES, Backoff, is_retryable

if TYPE_CHECKING:
    from relay._hub import Tail
    from relay._reader import Reader

log = logging.getLogger(__name__)


class Outages:
    """Whether Redis answers, per command path and per reader, and who has been told."""

    def __init__(
        self,
        *,
        stats: Stats,
        servers: Servers,
        keys: Keys,
        tails: Mapping[str, Tail],
        readers: Mapping[int | None, Reader],
    ) -> None:
        self.stats = stats
        self._servers = servers
        self._keys = keys
        self._tails = tails
        self._readers = readers
        self._up = False
        # The counter, and the number of the current/last outage of the command path and
        # of the single reader. On a cluster a reader counts its own slot's (``Reader.outage``).
        self._outages = 0
        self.outage = 0

    @property
    def up(self) -> bool:
        return self._up

    def mark_down(self, exc: BaseException) -> None:
        if self._up or self.outage == 0:
            self._up = False
            self.stats.redis_up = False
            self._outages += 1
            self.outage = self._outages
            log.warning("Redis unavailable (%s); subscribers are told and tailing retries", exc)
            for tail in self._tails.values():
                for sub in tail.subs:
                    self.notify_unavailable(sub)

    def mark_up(self) -> None:
        if not self._up:
            if self.outage:
                log.warning("Redis reachable again; tailing resumes")
            self._up = True
        self.stats.redis_up = all(r.up for r in self._readers.values() if r.slot is not None)

    def reader_down(self, reader: Reader, exc: BaseException) -> None:
        """A reader's read failed. On a cluster only its slot is out: only its subscribers
        are told, and other slots' readers going on do not end the outage."""
        if reader.slot is None:
            reader.up = False
            self.mark_down(exc)
            return
        if reader.up or reader.outage == 0:
            reader.up = False
            self.stats.redis_up = False
            self._outages += 1
            reader.outage = self._outages
            log.warning(
                "Redis unavailable for slot %d (%s); its subscribers are told and reading retries",
                reader.slot,
                exc,
            )
            for tail in reader.tails.values():
                for sub in tail.subs:
                    self.notify_unavailable(sub, reader.outage)

    def reader_up(self, reader: Reader) -> None:
        if not reader.up:
            if reader.outage and reader.slot is not None:
                log.warning("slot %d reachable again; reading resumes", reader.slot)
            reader.up = True
        self.mark_up()

    def notify_unavailable(self, sub: Subscription, outage: int | None = None) -> None:
        outage = self.outage if outage is None else outage
        if sub.notified_outage != outage and sub.mode is not Mode.CLOSED:
            sub.notified_outage = outage
            sub.sink.put_control(
                F.error(F.UNAVAILABLE, "Redis is unavailable; delivery resumes when it returns",
                        sub.name)
            )  # fmt: skip

    async def retrying(self, sub: Subscription, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis call for ``sub`` until it succeeds, telling it once per outage."""
        backoff = Backoff()
        slot = self._servers.slot(self._keys.key_for(sub.ref))
        outage = 0  # on a cluster: the number this subscription is told (once per call)
        while True:
            try:
                result = await call()
            except GUARDED_FAILURES as exc:  # is_retryable decides (redis-py #4287)
                if not is_retryable(exc):
                    raise
                if slot is None:
                    self.mark_down(exc)
                    self.notify_unavailable(sub)
                else:
                    # Only this slot may be out: tell this subscriber, not the relay's
                    # others (its slot's reader tells its own), and refresh the slot map.
                    self._servers.slots_changed()
                    reader = self._readers.get(slot)
                    if reader is not None and reader.outage and not reader.up:
                        outage = reader.outage
                    elif not outage:
                        self._outages += 1
                        outage = self._outages
                    log.debug("slot %d unavailable for %s (%s); retrying", slot, sub.name, exc)
                    self.notify_unavailable(sub, outage)
                await asyncio.sleep(backoff.next_s())
            else:
                if slot is None:
                    self.mark_up()
                return result
