"""Which Redis failures are transient, how long to wait before trying again, and how
often to say so in the log: the one policy every part (producer, relay, monitor, CLI,
workers) applies.

Careful: ``redis.exceptions.ConnectionError`` and ``TimeoutError`` are not the builtins of
the same name; both trees are listed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import traceback
from collections.abc import Iterator

from redis import exceptions as rx

# Server replies that mean "not now": the same command may succeed later, unchanged.
_TRANSIENT_REPLIES = frozenset(
    {
        "LOADING",
        "BUSY",
        "READONLY",
        "OOM",
        "MISCONF",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "NOREPLICAS",
    }
)

# Transient by type: Redis unreachable, slow, restarting or failing over. The cluster ones
# are "not now, or not here": MOVED/ASK (MovedError is an AskError) reach only node-pinned
# clients (RedisCluster follows them itself), TRYAGAIN comes with a slot migration,
# CLUSTERDOWN/MASTERDOWN with a failover, and SlotNotCoveredError while a slot has no
# master yet. ``RedisClusterException`` itself is what redis-py raises when no node answers
# its slot-map refresh; ``ClusterError`` ("TTL exhausted") when a command met redirections
# or errors more times than it retries inside one call, as during a slot migration.
RETRYABLE_TYPES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.BusyLoadingError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.AskError,
    rx.TryAgainError,
    rx.ClusterDownError,
    rx.MasterDownError,
    rx.SlotNotCoveredError,
    rx.ClusterError,
    ConnectionError,  # the builtin, an OSError
    TimeoutError,  # the builtin
    OSError,
)

# Errors that will not heal by waiting: a bad password, a missing ACL permission, a bug in
# how a command was built (a cross-slot transaction, a broken pipeline).
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
    rx.NoPermissionError,
    rx.CrossSlotTransactionError,
    rx.InvalidPipelineStack,
)

# What a guarded boundary catches before asking ``is_retryable``: everything Redis or the
# socket can raise (RedisClusterException is not a RedisError). Anything else (a TypeError,
# a KeyError) is a bug and is not caught.
REDIS_FAILURES: tuple[type[BaseException], ...] = (rx.RedisError, rx.RedisClusterException, OSError)

# What a boundary may catch that re-raises everything ``is_retryable`` refuses: the above
# and redis-py's asyncio close race, an AttributeError (``is_close_race``). Any other
# AttributeError is not retryable, so such a boundary re-raises it unchanged.
GUARDED_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, AttributeError)


# redis-py's asyncio connection module, where a connection closed under a command in flight
# shows up as an AttributeError (see ``is_close_race``).
_REDIS_ASYNC_CONNECTION = os.path.join("redis", "asyncio", "connection.py")


def is_close_race(exc: BaseException) -> bool:
    """True for redis-py's asyncio close race (redis-py issues #3546 and #4287): a
    connection is closed (``disconnect()`` sets ``_writer``/``_reader`` to None) while a
    command on it is in flight, and the command's next step in
    ``redis/asyncio/connection.py`` raises ``AttributeError: 'NoneType' object has no
    attribute 'writelines'`` instead of a ``ConnectionError``. A ``RedisCluster`` does
    this to itself: after ``CLUSTERDOWN``/``SlotNotCovered`` (a failover) or repeated
    ``MOVED`` one command's ``aclose()`` disconnects every node's connections, also those
    other tasks are sending on. Only that AttributeError, raised in that module, counts;
    an AttributeError anywhere else is a bug."""
    if not isinstance(exc, AttributeError) or exc.__traceback__ is None:
        return False
    if not str(exc).startswith("'NoneType' object has no attribute"):
        return False
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    return os.path.normpath(innermost.filename).endswith(_REDIS_ASYNC_CONNECTION)


@contextlib.contextmanager
def close_race_as_connection_error() -> Iterator[None]:
    """Around a redis-py asyncio call: its close race (``is_close_race``) comes out as the
    ``redis.exceptions.ConnectionError`` it stands for, which every boundary catching
    ``REDIS_FAILURES`` retries; any other exception passes unchanged."""
    try:
        yield
    except AttributeError as exc:
        if is_close_race(exc):
            raise rx.ConnectionError(
                f"connection closed under a command in flight (redis-py #4287): {exc}"
            ) from exc
        raise


def is_retryable(exc: BaseException) -> bool:
    """True if the failure is transient: the same command may succeed later.

    Authentication and permission failures and malformed commands are permanent. A refusal
    such as WRONGTYPE or a script error is permanent too: it is a bug or a misconfiguration
    and must surface, not be retried forever. A retry is always safe for the bus's appends
    (they are idempotent); the caller decides what else to do.
    """
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if is_close_race(exc):
        return True  # a closed connection, seen as an AttributeError (redis-py #4287)
    if isinstance(exc, RETRYABLE_TYPES):
        return True
    if isinstance(exc, rx.RedisClusterException):
        return True  # no node answered the slot-map refresh
    if isinstance(exc, rx.ResponseError):
        return str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES
    return False


# The jitter's own generator: a library must not draw from (or reseed) the global one that
# the application, its seeded tests and property-based testing rely on.
_JITTER = random.Random()


class Backoff:
    """Capped exponential backoff with jitter; ``reset()`` after a success.

    Each wait is uniform in [d/2, d]; d starts at ``initial_s`` and grows by ``factor`` up
    to ``max_s``. The jitter keeps many clients that lost one server from returning to it
    in lockstep.
    """

    def __init__(self, *, initial_s: float = 0.05, max_s: float = 2.0, factor: float = 2.0):
        if not 0 < initial_s <= max_s or factor < 1:
            raise ValueError("Backoff needs 0 < initial_s <= max_s and factor >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._next = initial_s

    def reset(self) -> None:
        self._next = self.initial_s

    def next_s(self) -> float:
        """The next wait in seconds; the one after it is longer, up to the cap."""
        d = self._next
        self._next = min(self.max_s, d * self.factor)
        return _JITTER.uniform(d / 2, d)


class RateLimitedLog:
    """Log a repeated condition at most once per ``interval_s``, with a count of the rest.

    ``recovered()`` logs the end of the condition once, if it was reported, and re-arms.
    """

    def __init__(self, logger: logging.Logger, *, interval_s: float = 30.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0

    @property
    def active(self) -> bool:
        """True once the condition was reported and has not recovered since."""
        return self._last > -float("inf")

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

    def warning(self, msg: str, *args: object) -> None:
        self(logging.WARNING, msg, *args)

    def recovered(self, msg: str, *args: object) -> None:
        """Log the end of the condition once, if it was reported; re-arm."""
        if self.active:
            self._logger.info(msg, *args)
        self.reset()

    def reset(self) -> None:
        self._last = -float("inf")
        self._suppressed = 0
