"""The one way tests wait: poll a condition, bounded by a timeout scaled by UNIT_S.

``timeout_s`` is in seconds on a normal machine; the bound is ``timeout_s * UNIT_S``
(raise ``RPA_BUS_TEST_UNIT`` on a slow one). Never a fixed sleep: a test that waits for
something names it, and fails saying what did not happen.

    value = wait_for(lambda: samples(client), what="a sample")
    frame = await wait_for_async(lambda: hub.count() == 3, what="three subscribers")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.conftest import UNIT_S

T = TypeVar("T")

Ignored = tuple[type[BaseException], ...]


def wait_for(
    check: Callable[[], T],
    *,
    what: str,
    timeout_s: float = 5.0,
    interval_s: float = 0.02,
    ignore: Ignored = (),
) -> T:
    """Call ``check`` until it returns something truthy; return that.

    ``ignore``: exceptions that count as "not yet" (a server that is restarting).
    """
    deadline = time.monotonic() + timeout_s * UNIT_S
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s * UNIT_S:.1f}s waiting for {what}")
        time.sleep(interval_s)


async def wait_for_async(
    check: Callable[[], T | Awaitable[T]],
    *,
    what: str,
    timeout_s: float = 5.0,
    interval_s: float = 0.02,
    ignore: Ignored = (),
) -> T:
    """``wait_for`` for asyncio tests: ``check`` may be a coroutine function; the loop
    runs between polls."""
    deadline = time.monotonic() + timeout_s * UNIT_S
    while True:
        try:
            value: Any = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore:
            value = None
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s * UNIT_S:.1f}s waiting for {what}")
        await asyncio.sleep(interval_s)
