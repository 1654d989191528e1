"""Socket writes coalesced over one fan-out: one ``transport.write`` per client per read.

A reader's XREADGROUP returns many entries at once; handing each to each client as its own
``transport.write`` costs a ``send()`` system call per frame (asyncio writes at once when
the buffer is empty). Inside ``coalesced()`` the doors' synchronous writes (``write``) are
kept per transport instead, and written as one when the block ends. The block is
synchronous (a fan-out awaits nothing), so nothing else can write to those transports in
between and the bytes go out in exactly the order they were written; ``buffered`` counts
what is held, so the write limit holds as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# Transport -> chunks, and their total size; None outside ``coalesced()``.
_chunks: dict[Any, list[bytes]] | None = None
_sizes: dict[Any, int] = {}


@contextlib.contextmanager
def coalesced() -> Iterator[None]:
    """Hold the writes made inside; write each transport's as one at the end."""
    global _chunks
    if _chunks is not None:  # nested: the outer block writes
        yield
        return
    chunks: dict[Any, list[bytes]] = {}
    _chunks = chunks
    try:
        yield
    finally:
        _chunks = None
        _sizes.clear()
        for transport, parts in chunks.items():
            if transport.is_closing():
                continue  # closed meanwhile by a failed write of its own: the client resumes
            try:
                transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
            except (OSError, RuntimeError):  # pragma: no cover - asyncio reports, not raises
                log.debug("coalesced write failed", exc_info=True)


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, or held until the ``coalesced()`` block ends."""
    chunks = _chunks
    if chunks is None:
        transport.write(data)
        return
    parts = chunks.get(transport)
    if parts is None:
        chunks[transport] = [data]
        _sizes[transport] = len(data)
    else:
        parts.append(data)
        _sizes[transport] += len(data)


def buffered(transport: Any) -> int:
    """Bytes waiting for ``transport``: its buffer and what ``coalesced()`` holds."""
    size: int = transport.get_write_buffer_size()
    if _sizes:
        size += _sizes.get(transport, 0)
    return size
