"""The Python consumer client: follow one or more streams of a relay, surviving dropped
connections and relay restarts, each event exactly once and in order.

::

    from relay import AsyncSubscription, Event, Gap, Reset

    async with AsyncSubscription("ws://127.0.0.1:8765", ["session:quote-123"]) as sub:
        async for item in sub:
            if isinstance(item, Event):
                print(item.stream, item.id, item.data)

``Subscription`` is the same for code without asyncio (a plain iterator). Both yield typed
items: ``Event``; ``Live`` (replay caught up); ``Gap`` (events after ``from_id`` were trimmed
away before they could be read); ``Reset`` (the stream was recreated; replay restarts at its
start); ``Unavailable`` (Redis or the relay cannot be reached; the subscription resumes by
itself). A refusal that retrying cannot fix (bad stream name, token without the grant)
raises ``SubscriptionError`` (``Forbidden`` for the grant).

The frames-to-items logic is one pure class (``_Follower``) shared by the asyncio and the
blocking twin; each twin adds only its I/O (websockets' asyncio or sync client).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import urllib.parse
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import orjson
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from relay._frames import Id, format_id, parse_id
from rpa_bus import BusError, Forbidden, InvalidInput, parse_offset, parse_stream_name
from rpa_bus.redisio import Backoff

log = logging.getLogger(__name__)

# Errors that retrying the same subscribe cannot fix.
FATAL_CODES: Final = frozenset(
    {"bad_request", "invalid_stream", "invalid_offset", "forbidden", "too_many_subscriptions"}
)
# Close codes that ask us to come back at once (going away, service restart, try again).
PROMPT_CODES: Final = frozenset({1001, 1012, 1013})
PROMPT_DELAY_S: Final = 0.05


class SubscriptionError(BusError):
    """The relay refused a subscription for a reason retrying cannot fix."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its stream, its entry id (the offset to resume from) and its envelope."""

    stream: str
    id: str
    data: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Live:
    """Replay of ``stream`` has caught up: what follows is live."""

    stream: str


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of ``stream`` after ``from_id`` were trimmed away before they could be read;
    delivery goes on at ``first`` (None: nothing retained)."""

    stream: str
    from_id: str
    first: str | None


@dataclass(frozen=True, slots=True)
class Reset:
    """``stream`` was recreated (new ``epoch``): replay restarts at its start."""

    stream: str
    epoch: str | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Redis (``stream`` set) or the relay itself (``stream`` None) cannot be reached;
    delivery resumes by itself, without gaps, once it can."""

    stream: str | None
    message: str


Item = Event | Live | Gap | Reset | Unavailable


def ws_url(url: str, token: str | None = None) -> str:
    """``url`` (ws://, wss://, http:// or https://) as the relay's WebSocket URL: ``/ws``
    added if it has no path, and ``?token=`` if given."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise InvalidInput(f"relay URL must start with ws://, wss://, http:// or https://: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = parts.query
    if token:
        query = (query + "&" if query else "") + urllib.parse.urlencode({"token": token})
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


@dataclass(slots=True)
class _Position:
    resume_from: str  # what the next subscribe sends as ``from``
    last: Id | None  # the last event id yielded; None: "$" not yet anchored
    epoch: str | None


class _Follower:
    """The pure part: subscribe ops, frames to items, never a duplicate, and where to
    resume after a drop."""

    def __init__(
        self,
        streams: str | Iterable[str],
        from_id: str | Mapping[str, str],
        epochs: Mapping[str, str] | None,
        max_backoff_s: float,
    ) -> None:
        names = [streams] if isinstance(streams, str) else list(streams)
        if not names:
            raise InvalidInput("subscribe to at least one stream")
        self.positions: dict[str, _Position] = {}
        for raw in names:
            name = parse_stream_name(raw).name
            start = from_id if isinstance(from_id, str) else from_id.get(name, "0")
            offset = parse_offset(start)
            last = None if offset is None else (offset.ms, offset.seq)
            self.positions[name] = _Position(start, last, (epochs or {}).get(name))
        self.backoff = Backoff(initial_s=0.1, max_s=max_backoff_s)
        self.relay_down = False

    def ops(self) -> list[str]:
        out = []
        for name, pos in self.positions.items():
            op: dict[str, Any] = {"op": "subscribe", "stream": name, "from": pos.resume_from}
            if pos.epoch:
                op["epoch"] = pos.epoch
            out.append(orjson.dumps(op).decode())
        return out

    def feed(self, message: str | bytes) -> Item | None:
        """The item a frame means, or None; raises on a refusal retrying cannot fix."""
        frame = orjson.loads(message)
        if not isinstance(frame, dict):
            return None
        kind = frame.get("type")
        pos = self.positions.get(frame.get("stream", ""))
        if kind == "error":
            return self._error(frame)
        if pos is None:
            return None  # pong, or a stream this subscription did not ask for
        name = frame["stream"]
        if kind == "event":
            entry_id = parse_id(frame["id"])
            if pos.last is not None and entry_id <= pos.last:
                return None  # never a duplicate, whatever happens
            pos.last = entry_id
            pos.resume_from = frame["id"]
            return Event(name, frame["id"], frame.get("data"))
        if kind == "subscribed":
            pos.epoch = frame.get("epoch") or pos.epoch
            if pos.last is None:  # "$": resume after what existed at subscribe
                pos.last = parse_id(frame["last"]) if frame.get("last") else (0, 0)
                pos.resume_from = format_id(pos.last)
            self.backoff.reset()
            return None
        if kind == "live":
            return Live(name)
        if kind == "gap":
            return Gap(name, str(frame.get("from")), frame.get("first"))
        if kind == "reset":
            pos.epoch = frame.get("epoch")
            pos.last, pos.resume_from = (0, 0), "0"
            return Reset(name, pos.epoch)
        return None

    def _error(self, frame: dict[str, Any]) -> Item | None:
        code, message = frame.get("code"), str(frame.get("message", ""))
        if code == "unavailable":
            return Unavailable(frame.get("stream"), message)
        if code == "forbidden":
            raise Forbidden(message or "forbidden")
        if code in FATAL_CODES:
            raise SubscriptionError(f"{code}: {message}")
        log.warning("relay error %s: %s", code, message)
        return None

    def connected(self) -> None:
        self.relay_down = False

    def dropped(self, close_code: int | None) -> float:
        """Seconds to wait before reconnecting after the connection closed."""
        return PROMPT_DELAY_S if close_code in PROMPT_CODES else self.backoff.next_s()

    def unreachable(self, url: str, exc: BaseException) -> tuple[float, Item | None]:
        """The delay before the next attempt, and an ``Unavailable`` once per outage."""
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            raise SubscriptionError(f"relay refused the connection: {exc}") from exc
        log.warning("cannot reach relay at %s (%s); retrying", url, exc)
        item: Item | None = None
        if not self.relay_down:
            self.relay_down = True
            item = Unavailable(None, f"cannot reach relay: {exc}")
        return self.backoff.next_s(), item

    def last_ids(self) -> dict[str, str | None]:
        return {
            name: None if pos.last is None else format_id(pos.last)
            for name, pos in self.positions.items()
        }


_CONNECT_ERRORS: Final = (OSError, TimeoutError, InvalidHandshake)


class _Base:
    def __init__(
        self,
        url: str,
        streams: str | Iterable[str],
        *,
        from_id: str | Mapping[str, str] = "0",
        epochs: Mapping[str, str] | None = None,
        token: str | None = None,
        max_backoff_s: float = 10.0,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._target = ws_url(url, token)
        self._url = url
        self._follower = _Follower(streams, from_id, epochs, max_backoff_s)
        self._open_timeout_s = open_timeout_s
        self._pending: deque[Item] = deque()
        self._delay_s = 0.0
        self._closed = False
        self._stop = threading.Event()  # the blocking twin's backoff sleep ends at close()

    @property
    def positions(self) -> dict[str, str | None]:
        """The last event id yielded per stream (None: none yet): where a new subscription
        would resume."""
        return self._follower.last_ids()

    @property
    def epochs(self) -> dict[str, str | None]:
        return {name: pos.epoch for name, pos in self._follower.positions.items()}


class AsyncSubscription(_Base):
    """Follow ``streams`` of the relay at ``url`` with asyncio: ``async for item in sub``.

    ``from_id``: exclusive start (``"0"`` all retained, ``"$"`` only new, or an id), one
    for all streams or a mapping per stream. Reconnects with capped, jittered backoff and
    resumes every stream from the last event it yielded (and its epoch).
    """

    _ws: AsyncConnection | None = None

    async def __anext__(self) -> Item:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            ws = self._ws
            if ws is None:
                await self._connect()
                continue
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                self._ws = None
                if self._closed:
                    raise StopAsyncIteration from None
                self._delay_s = self._follower.dropped(exc.rcvd.code if exc.rcvd else None)
                continue
            item = self._follower.feed(message)
            if item is not None:
                return item

    def __aiter__(self) -> Self:
        return self

    async def _connect(self) -> None:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        try:
            ws = await async_connect(self._target, open_timeout=self._open_timeout_s, max_size=None)
        except _CONNECT_ERRORS as exc:
            self._delay_s, item = self._follower.unreachable(self._url, exc)
            if item is not None:
                self._pending.append(item)
            return
        self._follower.connected()
        try:
            for op in self._follower.ops():
                await ws.send(op)
        except ConnectionClosed:
            self._delay_s = self._follower.dropped(None)
            return
        if self._closed:
            await ws.close()
            return
        self._ws = ws

    async def close(self) -> None:
        """Stop: the iteration ends. Idempotent."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# Blocking subscriptions with a connection open: closed when the interpreter exits, so a
# loop left with ``break`` and no ``close()`` does not hang the exit (the connection's
# reader thread is gone by the time the suspended iteration would be finalised).
_OPEN: weakref.WeakSet[Subscription] = weakref.WeakSet()


@atexit.register
def _close_open_subscriptions() -> None:
    for sub in list(_OPEN):
        sub.close()


class Subscription(_Base):
    """``AsyncSubscription`` for code without asyncio: ``for item in sub``. ``close()`` may
    be called from another thread; the iteration then ends. Prefer ``with Subscription(...)
    as sub``; one left open is closed when the interpreter exits."""

    _ws: SyncConnection | None = None
    _items: Iterator[Item] | None = None

    def __next__(self) -> Item:
        if self._items is None:
            self._items = self._run()
        return next(self._items)

    def __iter__(self) -> Iterator[Item]:
        return self

    def _run(self) -> Iterator[Item]:
        follower = self._follower
        while not self._closed:
            if self._delay_s and self._stop.wait(self._delay_s):
                return
            code: int | None = None
            try:
                with sync_connect(
                    self._target, open_timeout=self._open_timeout_s, max_size=None
                ) as ws:
                    self._ws = ws
                    if self._closed:  # close() ran before it could see this connection
                        return
                    _OPEN.add(self)
                    follower.connected()
                    for op in follower.ops():
                        ws.send(op)
                    for message in ws:  # ends quietly on a normal close (1000, 1001)
                        item = follower.feed(message)
                        if item is not None:
                            yield item
                code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except _CONNECT_ERRORS as exc:
                self._delay_s, unreachable = follower.unreachable(self._url, exc)
                if unreachable is not None:
                    yield unreachable
                continue
            finally:
                self._ws = None
                _OPEN.discard(self)
            self._delay_s = follower.dropped(code)

    def close(self) -> None:
        """Stop: the iteration ends (also when called from another thread). Idempotent."""
        self._closed = True
        self._stop.set()
        ws = self._ws
        if ws is not None:
            ws.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
