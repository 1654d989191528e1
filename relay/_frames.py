"""Relay -> client frames, as UTF-8 JSON bytes.

Event frames are spliced from the stored envelope bytes instead of decoding and encoding
them again: the producer validated the envelope when it wrote it, and the splice is what
lets one relay fan out ~100k frames/s.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

# Error codes (docs/protocol.md).
BAD_REQUEST: Final = "bad_request"
UNKNOWN_OP: Final = "unknown_op"
INVALID_STREAM: Final = "invalid_stream"
INVALID_OFFSET: Final = "invalid_offset"
FORBIDDEN: Final = "forbidden"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
RATE_LIMITED: Final = "rate_limited"
UNAVAILABLE: Final = "unavailable"

# Close codes.
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013

PONG: Final = b'{"type":"pong"}'

# An id of a stream entry as a tuple (ms, seq): compares in stream order, cheaply.
Id = tuple[int, int]
ZERO_ID: Final[Id] = (0, 0)
# The largest id Redis can hold. Nothing comes after it, and Redis refuses it as an
# exclusive range start ("(" + MAX_ID: its successor overflows), so replay serves it as
# "nothing after" without asking.
MAX_ID: Final[Id] = (2**64 - 1, 2**64 - 1)


def parse_id(raw: bytes | str) -> Id:
    """A Redis-generated entry id (always ``ms-seq``) as a tuple; no validation needed."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: Id) -> str:
    return f"{value[0]}-{value[1]}"


def event_prefix(stream: str) -> bytes:
    """The constant head of every event frame of one stream, up to the id."""
    return b'{"type":"event","stream":' + orjson.dumps(stream) + b',"id":"'


def event_frame(prefix: bytes, entry_id: bytes, raw: bytes | None) -> bytes:
    """``{"type":"event","stream":S,"id":ID,"data":<raw envelope>}`` without re-encoding."""
    return prefix + entry_id + b'","data":' + (raw if raw else b"null") + b"}"


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# Error frames quote what the client sent (a bad stream name, offset, op); quoted in full,
# a client could make the relay hold and send back whatever it sends. Bounded instead.
ECHO_CHARS: Final = 128
MESSAGE_CHARS: Final = 2 * ECHO_CHARS + 128


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def error(code: str, message: str, stream: str | None = None) -> bytes:
    fields = {"type": "error", "code": code, "message": shorten(message, MESSAGE_CHARS)}
    if stream is not None:
        fields["stream"] = shorten(stream)
    return orjson.dumps(fields)
