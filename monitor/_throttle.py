"""Rate-limited warnings and a capped, jittered backoff: the two halves of retrying."""

from __future__ import annotations

import logging
import random
import time


class Throttle:
    """Log a repeated problem at most once per ``every_s``, with how often it happened."""

    def __init__(self, log: logging.Logger, every_s: float = 30.0) -> None:
        self._log = log
        self._every_s = every_s
        self._last = -float("inf")
        self._count = 0

    def warn(self, msg: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self._every_s:
            suffix = f" (x{self._count} since the last report)" if self._count > 1 else ""
            self._log.warning(msg + suffix, *args)
            self._last = now
            self._count = 0

    def recovered(self, msg: str, *args: object) -> None:
        """Log the end of a problem once, if one was reported."""
        if self._last > -float("inf"):
            self._log.info(msg, *args)
        self._last = -float("inf")
        self._count = 0


class Backoff:
    """Capped exponential delays with jitter; ``reset()`` after a success."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self._base_s = base_s
        self._cap_s = cap_s
        self._n = 0

    def next_s(self) -> float:
        delay = min(self._cap_s, self._base_s * 2.0**self._n)
        self._n = min(self._n + 1, 30)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._n = 0
