"""A resuming client: follow one stream, surviving dropped connections without duplicates.

Used by ``rpa-bus tail`` and the benchmark; a reference for client authors too.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relay._frames import Id, parse_id
from rpa_bus import BusError, Forbidden, InvalidInput, parse_offset, parse_stream_name
from rpa_bus.redisio import Backoff

log = logging.getLogger(__name__)

# Errors that retrying the same subscribe cannot fix.
FATAL_CODES = frozenset(
    {"bad_request", "invalid_stream", "invalid_offset", "forbidden", "too_many_subscriptions"}
)
# Close codes that ask us to come back at once (going away, service restart, try again).
PROMPT_CODES = frozenset({1001, 1012, 1013})


class TailError(BusError):
    """The relay refused the subscription for a reason retrying cannot fix."""


def ws_url(url: str, token: str | None = None) -> str:
    """``url`` with ``/ws`` added if it has no path, and ``?token=`` if given."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise InvalidInput(f"relay URL must start with ws:// or wss://, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = parts.query
    if token:
        query = (query + "&" if query else "") + urllib.parse.urlencode({"token": token})
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


async def tail(
    url: str,
    stream: str,
    *,
    from_id: str = "0",
    token: str | None = None,
    epoch: str | None = None,
    max_backoff_s: float = 10.0,
    open_timeout_s: float = 10.0,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the frames of one subscription (``event``, ``gap``, ``reset``, ``live``,
    ``subscribed``, ``error``) forever, reconnecting with capped, jittered backoff and
    resuming from the last event id (and epoch) it yielded. Raises ``TailError`` on a
    refusal that retrying cannot fix (bad stream, forbidden, ...)."""
    name = parse_stream_name(stream).name
    offset = parse_offset(from_id)
    last: Id | None = None if offset is None else (offset.ms, offset.seq)
    resume_from = from_id
    target = ws_url(url, token)
    backoff = Backoff(initial_s=0.1, max_s=max_backoff_s)
    while True:
        try:
            async with connect(target, open_timeout=open_timeout_s, max_size=None) as ws:
                op: dict[str, Any] = {"op": "subscribe", "stream": name, "from": resume_from}
                if epoch:
                    op["epoch"] = epoch
                await ws.send(orjson.dumps(op).decode())
                async for message in ws:
                    frame: dict[str, Any] = orjson.loads(message)
                    kind = frame.get("type")
                    if frame.get("stream") not in (None, name):
                        continue
                    if kind == "event":
                        entry_id = parse_id(frame["id"])
                        if last is not None and entry_id <= last:
                            continue  # never a duplicate, whatever happens
                        last = entry_id
                        resume_from = frame["id"]
                    elif kind == "subscribed":
                        epoch = frame.get("epoch") or epoch
                        if last is None:  # "$": resume after what existed at subscribe
                            last = parse_id(frame["last"]) if frame.get("last") else (0, 0)
                            resume_from = f"{last[0]}-{last[1]}"
                        backoff.reset()
                    elif kind == "reset":
                        epoch = frame.get("epoch")
                        last, resume_from = (0, 0), "0"
                    elif kind == "error" and frame.get("code") in FATAL_CODES:
                        if frame["code"] == "forbidden":
                            raise Forbidden(frame.get("message", "forbidden"))
                        raise TailError(f"{frame['code']}: {frame.get('message')}")
                    yield frame
            code = ws.close_code
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise TailError(f"relay refused the connection: {exc}") from exc
            code = None
            log.warning("relay refused the connection (%s); retrying", exc)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            code = None
            log.warning("cannot reach relay at %s (%s); retrying", url, exc)
        delay = 0.05 if code in PROMPT_CODES else backoff.next_s()
        await asyncio.sleep(delay)
