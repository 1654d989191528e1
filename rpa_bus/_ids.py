"""Redis stream entry ids: the offsets clients resume from."""

from __future__ import annotations

import re
from typing import NamedTuple

from rpa_bus._errors import InvalidOffset

_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_U64 = 2**64 - 1


class StreamId(NamedTuple):
    """``ms-seq``; tuples compare in stream order."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def parse(cls, text: str | bytes) -> StreamId:
        """Parse a full id (``1732270000000-0``) or a bare ms (``0``, meaning ``ms-0``)."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        if not isinstance(text, str):
            raise InvalidOffset(f"stream id must be a string, got {type(text).__name__}")
        m = _ID.fullmatch(text)
        if m is not None:
            ms, seq = int(m.group(1)), int(m.group(2))
        elif text.isascii() and text.isdigit() and len(text) <= 20:
            ms, seq = int(text), 0
        else:
            raise InvalidOffset(f"invalid stream id {text!r}: expected 'MS-SEQ', '0' or '$'")
        if ms > _U64 or seq > _U64:
            raise InvalidOffset(f"invalid stream id {text!r}: part larger than 2^64-1")
        return cls(ms, seq)


ZERO = StreamId(0, 0)

# What a client may send as ``from``: an id, "0" for the whole retained history, "$" for
# only new events. ``None`` means "$".
Offset = StreamId | None


def parse_offset(value: object) -> Offset:
    """Parse a subscribe ``from``: absent or ``"0"`` -> ZERO, ``"$"`` -> None, else an id."""
    if value is None:
        return ZERO
    if value == "$":
        return None
    if not isinstance(value, str):
        raise InvalidOffset(f"'from' must be a string stream id, got {type(value).__name__}")
    return StreamId.parse(value)
