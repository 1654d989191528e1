"""Rate-limited warnings: a Redis outage is reported, not repeated every sample."""

from __future__ import annotations

import logging
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
