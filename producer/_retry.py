"""Which Redis failures are transient, how long to wait before trying again, and how
often to say so in the log.

Careful: ``redis.exceptions.ConnectionError`` and ``TimeoutError`` are not the builtins of
the same name; both trees are listed.
"""

from __future__ import annotations

import logging
import random
import time

from redis import exceptions as rx

# Server replies that mean "not now": the write may succeed later, unchanged.
_TRANSIENT_REPLIES = (
    "LOADING",
    "BUSY",
    "READONLY",
    "OOM",
    "MISCONF",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
)

RETRYABLE_TYPES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # includes BusyLoadingError, AuthenticationError's siblings
    rx.TimeoutError,
    rx.BusyLoadingError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.TryAgainError,
    rx.ClusterDownError,
    rx.MasterDownError,
    ConnectionError,  # the builtin, an OSError
    TimeoutError,  # the builtin
    OSError,
)


def is_retryable(exc: BaseException) -> bool:
    """True if the failure is transient: the same write may succeed later.

    Authentication failures are refused: they will not heal by waiting. A retry is always
    safe for session appends (they are idempotent); the caller decides what else to do.
    """
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
        return False
    if isinstance(exc, RETRYABLE_TYPES):
        return True
    if isinstance(exc, rx.ResponseError):
        return str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES
    return False


class Backoff:
    """Capped exponential backoff with jitter; ``reset()`` after a success."""

    def __init__(self, *, initial_s: float = 0.05, max_s: float = 1.0, factor: float = 2.0):
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._next = initial_s

    def reset(self) -> None:
        self._next = self.initial_s

    def delay(self) -> float:
        """The next wait: uniform in [d/2, d], then d grows up to the cap."""
        d = self._next
        self._next = min(self.max_s, d * self.factor)
        return random.uniform(d / 2, d)


class RateLimitedLog:
    """Log a repeated condition at most once per ``interval_s``, with a count of the rest."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 30.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._logger.log(level, msg, *args)
        self._last = now
        self._suppressed = 0

    def reset(self) -> None:
        self._last = -float("inf")
        self._suppressed = 0
