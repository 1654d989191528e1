"""Where samples go: a small ``Writer`` protocol and the monitor's own buffered writer.

The monitor never blocks a sample on Redis: it hands each event to a writer, which owns
the network. ``RedisWriter`` keeps events in a bounded in-memory buffer and a background
thread appends them to the monitor stream in order (XADD with MINID ~ for the time
window), retrying with backoff while Redis is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Protocol

import redis

from monitor._throttle import Backoff, Throttle
from rpa_bus import Envelope, encode

log = logging.getLogger(__name__)

RETRYABLE = (redis.RedisError, OSError)


class Writer(Protocol):
    """What the monitor needs from whatever writes its stream."""

    def write(self, envelope: Envelope) -> None:
        """Queue one event; never blocks on the network, never raises for an outage."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is written; ``False`` if ``timeout_s`` ran out."""

    def close(self) -> None:
        """Stop writing; events still queued are dropped (call ``flush`` first)."""


class RedisWriter:
    """Appends events to one stream from a background thread, in order, with a time window.

    While Redis is down, events wait in memory (at most ``buffer_max``; past that the
    oldest are dropped and counted). After a lost reply a batch may be written twice: this
    writer does not de-duplicate.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        window_s: float,
        buffer_max: int = 10_000,
        batch_max: int = 100,
    ) -> None:
        if buffer_max < 1 or batch_max < 1:
            raise ValueError("buffer_max and batch_max must be >= 1")
        self._client = client
        self._stream = stream
        self._window_ms = int(window_s * 1000)
        self._buffer_max = buffer_max
        self._batch_max = batch_max
        # (sequence number, encoded envelope); the sequence tells what a finished batch
        # covered even if write() dropped the oldest entries meanwhile.
        self._buf: deque[tuple[int, bytes]] = deque()
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self.dropped = 0
        self._down = Throttle(log)
        self._thread = threading.Thread(target=self._run, name="monitor-writer", daemon=True)
        self._thread.start()

    def write(self, envelope: Envelope) -> None:
        raw = encode(envelope)
        with self._cond:
            if self._closed:
                raise RuntimeError("write() on a closed RedisWriter")
            if len(self._buf) >= self._buffer_max:
                self._buf.popleft()
                self.dropped += 1
                self._down.warn("monitor buffer full: dropped the oldest sample")
            self._seq += 1
            self._buf.append((self._seq, raw))
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._buf)

    def flush(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._buf, timeout=timeout_s)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            left = len(self._buf)
            self._cond.notify_all()
        self._thread.join(timeout=10.0)
        if left:
            log.warning("monitor writer closed with %d event(s) not written", left)

    def _run(self) -> None:
        backoff = Backoff()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._buf or self._closed)
                if self._closed:
                    return
                batch = [self._buf[i] for i in range(min(self._batch_max, len(self._buf)))]
            try:
                self._append(batch)
            except RETRYABLE as exc:
                self._down.warn("cannot write monitor samples to %s: %r", self._stream, exc)
                with self._cond:
                    self._cond.wait(timeout=backoff.next_s())
                continue
            backoff.reset()
            self._down.recovered("monitor samples are written again to %s", self._stream)
            last = batch[-1][0]
            with self._cond:
                while self._buf and self._buf[0][0] <= last:
                    self._buf.popleft()
                self.written += len(batch)
                self._cond.notify_all()

    def _append(self, batch: list[tuple[int, bytes]]) -> None:
        minid = int(time.time() * 1000) - self._window_ms
        # MULTI/EXEC: a batch is written whole or not at all (short of a lost reply).
        pipe = self._client.pipeline(transaction=True)
        for _, raw in batch:
            pipe.xadd(self._stream, {"e": raw}, minid=minid, approximate=True)
        pipe.execute()
