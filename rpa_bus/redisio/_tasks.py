"""Owning asyncio tasks: cancel and wait until they are really done."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each is done.

    Cancels again while one is still running: on Python 3.11 a cancel that lands inside a
    library's ``asyncio.wait_for`` (redis-py wraps every socket read in one) can be
    swallowed, leaving a task that would otherwise run on forever. Our own cancellation
    still propagates (``asyncio.wait`` does not swallow it).
    """
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]


async def settled(fut: asyncio.Future[Any]) -> None:
    """Cancel ``fut`` unless it is done, wait for it, and mark its outcome seen: for a
    helper task whose caller is already on its way out (or took its result), so that a
    failure of the helper is neither reported twice nor as never retrieved."""
    if not fut.done():
        await cancel_and_wait([fut])  # type: ignore[list-item]
    if not fut.cancelled():
        fut.exception()
