"""The SSE door: ``GET /v1/sse?stream=S[&stream=S2...][&from=ID]`` as ``text/event-stream``.

Each message is one frame of the WebSocket protocol: ``event:`` is the frame's ``type``
(``unavailable`` for an ``error`` frame with that code), ``data:`` the frame's JSON. The
``event``, ``subscribed`` and ``reset`` messages carry an ``id:``: the position of every
stream of the response, ``STREAM=LAST_ID[@EPOCH]`` joined by ``;``, e.g.
``session:q-1=1732270000000-4@3f2a9c01d2e4b5a6;sessions=1732270000000-9`` (LAST_ID ``$``:
nothing delivered yet, resume with what comes next; the epoch percent-encoded, absent
while unknown). Stream names, ids and encoded epochs hold no ``;``, ``=`` or ``@``.
A browser's ``EventSource`` sends the last one back as ``Last-Event-ID`` when it reconnects,
and each stream resumes after its own last id, in its own epoch (a recreated stream
answers ``reset``): exactly once, in order, over any number of streams. A fresh request
may send the same format as ``?last_event_id=`` (rpa-bus.js does, when it reopens the
response with another set of streams); the header wins when both are sent.

Auth as for ``/ws``: ``Authorization: Bearer JWT`` or ``?token=``; every stream must be in
the token's ``streams`` claim; when the grant expires the response sends an ``error``
(``forbidden``) message and ends. What is wrong before the response starts is a 4xx JSON
``{"error": {"code", "message"}}`` with the WebSocket error codes.

A client that falls behind is handled like a WebSocket one: its subscriptions catch up
from Redis (bounded queue); one that takes nothing for ``stall_timeout_s`` is dropped, and
``EventSource`` resumes from its last id. A client that leaves ends its response at once
(the server watches its connection, ``AiohttpServer._watch_disconnects``). A comment
(``: hb``) goes out every ``sse_heartbeat_s`` so that proxies keep the response open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from relay import _frames as F
from relay._auth import verify_token
from relay._door import Door, Refusal, Wanted, check_request
from relay._frames import format_id
from relay._outbox import ClientGone
from relay._server import cors, error_response
from relay._stats import Stats
from relay._subscription import Subscription
from relay._writes import buffered, write
from rpa_bus import Forbidden

if TYPE_CHECKING:
    from relay._hub import Hub
    from relay._server import AiohttpServer
    from relay._settings import RelaySettings

log = logging.getLogger(__name__)

# How long EventSource waits before reconnecting (the ``retry:`` field), in ms.
RETRY_MS = 1000
_TYPE_AT = len(b'{"type":"')
_EVENT_HEAD = b'{"type":"event","stream":"'
_STREAM_AT = len(_EVENT_HEAD)
_EVENT_FIXED = len(b"event: event\nid: \ndata: \n\n")
_SINGLE_FIXED = len(b"\ndata: \n\n") - len(b"\r\n")  # the chunk head's CRLF is in ``pre``
_UNAVAILABLE = b'{"type":"error","code":"unavailable"'
# Each stream's [last id or None for "$", epoch or None].
Positions = dict[str, list[str | None]]


def _epoch_tail(epoch: str | None) -> bytes:
    return b"@" + urllib.parse.quote(epoch, safe="").encode() if epoch else b""


def segment(stream: str, position: list[str | None]) -> bytes:
    """One stream's part of an ``id:``: ``STREAM=ID[@EPOCH]`` (ID ``$``: nothing yet)."""
    last, epoch = position
    return f"{stream}={last or '$'}".encode() + _epoch_tail(epoch)


def encode_positions(positions: Positions) -> bytes:
    return b";".join(segment(stream, p) for stream, p in positions.items())


def decode_positions(value: str, source: str = "Last-Event-ID") -> Positions:
    """An id this door sent (``Refusal`` ``invalid_offset`` if not); ``source`` names
    where it came from, for the message."""
    positions: Positions = {}
    for part in value.split(";"):
        stream, eq, rest = part.partition("=")
        last, _, epoch = rest.partition("@")
        if not eq or not stream or not last or "=" in rest or stream in positions:
            raise Refusal(F.INVALID_OFFSET, f"{source} is not an id this relay sent")
        positions[stream] = [None if last == "$" else last, urllib.parse.unquote(epoch) or None]
    return positions


class SseDoor(Door):
    """One SSE response: its subscriptions, written as events. A ``Sink``."""

    __slots__ = (
        "_done",
        "_fast",
        "_heads",
        "_ids",
        "_segments",
        "_single",
        "_tails",
        "_transport",
        "_unset",
        "heartbeat_s",
        "peer",
        "response",
    )

    def __init__(
        self,
        response: web.StreamResponse,
        request: web.Request,
        *,
        hub: Hub,
        settings: RelaySettings,
        stats: Stats,
    ) -> None:
        super().__init__(hub=hub, settings=settings, stats=stats)
        self.response = response
        self.peer = request.remote or "?"
        self._transport = request.transport
        # Each stream's part of the id, STREAM=ID[@EPOCH], kept encoded, and its pieces.
        self._segments: dict[bytes, bytes] = {}
        self._heads: dict[bytes, bytes] = {}  # b"STREAM="
        self._ids: dict[bytes, bytes] = {}  # b"ID" or b"$"
        self._tails: dict[bytes, bytes] = {}  # b"@EPOCH" or b""
        self._unset: set[bytes] = set()  # streams still at "$"
        self._single: tuple[bytes, bytes, int] | None = None  # see ``_join``
        self.heartbeat_s = settings.sse_heartbeat_s
        self._done = asyncio.Event()
        self._fast = False

    # -- the wire -------------------------------------------------------------------------

    def encode(self, frame: bytes) -> bytes:
        """The SSE message of ``frame``, moving the positions (in wire order)."""
        if frame.startswith(_EVENT_HEAD):
            return b"event: event\nid: " + self._event_id(frame) + b"\ndata: " + frame + b"\n\n"
        kind = frame[_TYPE_AT : frame.index(b'"', _TYPE_AT)]
        if kind in (b"subscribed", b"reset"):
            fields = orjson.loads(frame)
            stream = fields["stream"].encode()
            if kind == b"reset":
                self._ids[stream] = b"0-0"
            elif stream in self._unset:  # "$": after what existed at subscribe
                self._ids[stream] = (fields.get("last") or "0-0").encode()
            self._unset.discard(stream)
            epoch = fields.get("epoch")
            self._tails[stream] = _epoch_tail(epoch)
            self._join(stream)
            id_line = b"id: " + b";".join(self._segments.values()) + b"\n"
        else:
            id_line = b""
            if frame.startswith(_UNAVAILABLE):
                kind = b"unavailable"
        return b"event: " + kind + b"\n" + id_line + b"data: " + frame + b"\n\n"

    def _join(self, stream: bytes) -> None:
        self._segments[stream] = self._heads[stream] + self._ids[stream] + self._tails[stream]
        if len(self._heads) == 1:
            # One stream (the common case): the fast path writes its events without
            # looking anything up; its last id then lives only on the wire, which is all a
            # single-stream id needs (subscribed/reset set their own).
            start = _STREAM_AT + len(stream) + 8  # '","id":"'
            pre = b"\r\nevent: event\nid: " + self._heads[stream]
            self._single = (pre, self._tails[stream], start)
        else:
            self._single = None

    def _event_id(self, frame: bytes) -> bytes:
        """The ``id:`` of an event frame: its stream moves to the frame's id."""
        # {"type":"event","stream":"S","id":"ID",...}: names and ids have no quotes.
        end = frame.index(b'"', _STREAM_AT)
        stream = frame[_STREAM_AT:end]
        start = end + 8  # len('","id":"')
        entry_id = frame[start : frame.index(b'"', start)]
        self._ids[stream] = entry_id
        segment = self._heads[stream] + entry_id + self._tails[stream]
        segments = self._segments
        segments[stream] = segment
        return segment if len(segments) == 1 else b";".join(segments.values())

    def _write_now(self, frame: bytes) -> bool:
        transport = self._transport
        if (
            not self._fast
            or self._done.is_set()
            or transport is None
            or transport.is_closing()
            or buffered(transport) >= self.write_limit
        ):
            return False
        if frame.startswith(_EVENT_HEAD):  # the hot path: one allocation, one write
            single = self._single
            if single is not None:  # one stream: its id is at a known offset
                pre, tail, start = single
                entry_id = frame[start : frame.index(b'"', start)]
                size = len(pre) + len(entry_id) + len(tail) + len(frame) + _SINGLE_FIXED
                write(transport, b"%x%b%b%b\ndata: %b\n\n\r\n" % (size, pre, entry_id, tail, frame))
                return True
            id_ = self._event_id(frame)
            size = _EVENT_FIXED + len(id_) + len(frame)
            write(transport, b"%x\r\nevent: event\nid: %b\ndata: %b\n\n\r\n" % (size, id_, frame))
        else:
            self._chunk(self.encode(frame))
        return True

    def _writable(self) -> bool:
        transport = self._transport
        return (
            self._fast
            and not self._done.is_set()
            and transport is not None
            and not transport.is_closing()
            and buffered(transport) < self.write_limit
        )

    def _chunk(self, data: bytes) -> None:
        """One HTTP/1.1 chunk, straight to the transport (``_writable`` checked it)."""
        transport = self._transport
        assert transport is not None
        write(transport, b"%x\r\n%b\r\n" % (len(data), data))

    async def _send(self, frame: bytes) -> None:
        if self._done.is_set():
            raise ClientGone
        try:
            await self.response.write(self.encode(frame))
        except (ClientConnectionResetError, ConnectionResetError, RuntimeError) as exc:
            self.end()
            raise ClientGone from exc

    async def _stalled(self) -> None:
        log.info("dropping SSE client %s: took nothing for %.0f s", self.peer, self.stall_s)
        self._abort()

    def _policy_close(self, reason: str) -> None:
        log.info("dropping SSE client %s: %s", self.peer, reason)
        self._abort()

    def _failed(self, exc: BaseException) -> None:
        log.error("SSE client %s failed", self.peer, exc_info=exc)
        self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.end()

    def _ended(self, sub: Subscription) -> None:
        """A grant ended: the ``forbidden`` message goes out, then the response ends (a
        reconnect with the same token is refused before it starts)."""
        self.spawn(self._end_after_writes(), "end")

    async def _end_after_writes(self) -> None:
        try:
            async with asyncio.timeout(self.stall_s):
                await self.flushed()
        finally:
            self.end()

    def end(self) -> None:
        """End the response (relay closing, client gone, grant ended)."""
        self._done.set()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, wanted: list[Wanted]) -> None:
        response = self.response
        await response.write(b"retry: %d\n\n" % RETRY_MS)  # also sends the headers
        # The synchronous chunk write aiohttp's own write() uses, if this aiohttp has it.
        writer: Any = response._payload_writer
        self._fast = bool(
            writer is not None
            and getattr(writer, "chunked", False)
            and not getattr(writer, "_compress", None)
            and hasattr(writer, "_write_chunked_payload")
        )
        try:
            for w in wanted:
                stream = w.ref.name.encode()
                self._heads[stream] = stream + b"="
                if w.from_id is None:
                    self._ids[stream] = b"$"
                    self._unset.add(stream)
                else:
                    self._ids[stream] = format_id(w.from_id).encode()
                self._tails[stream] = _epoch_tail(w.epoch)
                self._join(stream)
            for w in wanted:
                await self._start(w)
            while not self._done.is_set():
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        await self._done.wait()
                except TimeoutError:
                    self._heartbeat()
        finally:
            await self._shutdown()

    def _heartbeat(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self.end()  # the client left
        elif not self.queue and self._writable():
            try:
                self._chunk(b": hb\n\n")
            except ClientConnectionResetError:
                self.end()


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Refusal(F.FORBIDDEN, "Authorization must be 'Bearer TOKEN'")
    return request.query.get("token")


def _resume(request: web.Request, names: list[str]) -> Positions:
    """Where each stream starts: the ``Last-Event-ID`` header (what ``EventSource`` sends
    on reconnect) or else the ``last_event_id`` parameter (the same format, for a fresh
    request: a client that reopens the response with another set of streams). The
    parameter is checked even when the header wins, and may only name requested streams."""
    values = request.query.getall("last_event_id", ())
    if len(values) > 1:
        raise Refusal(F.INVALID_OFFSET, "send last_event_id once")
    query = decode_positions(values[0], "last_event_id") if values and values[0] else {}
    unknown = [name for name in query if name not in names]
    if unknown:
        raise Refusal(
            F.INVALID_OFFSET,
            f"last_event_id names {unknown[0][:300]!r}, which is not a stream= of the request",
        )
    header = request.headers.get("Last-Event-ID")
    return decode_positions(header) if header else query


def _wanted(request: web.Request, max_streams: int) -> list[Wanted]:
    """The subscriptions a request asks for, each from its resume position if sent."""
    names = list(dict.fromkeys(request.query.getall("stream", ())))
    if not names:
        raise Refusal(F.BAD_REQUEST, "name at least one stream: /v1/sse?stream=S[&stream=S2]")
    if len(names) > max_streams:
        raise Refusal(F.TOO_MANY_SUBSCRIPTIONS, f"at most {max_streams} streams per connection")
    resume = _resume(request, names)
    from_ = request.query.get("from")
    wanted = []
    for name in names:
        w = check_request(name, from_, None)
        position = resume.get(w.ref.name)
        if position is not None:
            last, epoch = position
            w = check_request(name, "$" if last is None else last, epoch)
        wanted.append(w)
    return wanted


def handler(server: AiohttpServer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    relay = server.relay

    async def sse(request: web.Request) -> web.StreamResponse:
        hub = relay.hub
        assert hub is not None
        s = relay.settings
        door_ip = request.remote or "?"
        try:
            wanted = _wanted(request, s.max_subscriptions)
            grant = None
            if s.secret is not None:
                token = _token(request)
                if token is None:
                    return error_response(
                        401, F.FORBIDDEN, "authentication required: Authorization: Bearer "
                        "TOKEN, or ?token=",
                    )  # fmt: skip
                try:
                    grant = verify_token(s.secret, token)
                except Forbidden as exc:
                    return error_response(401, F.FORBIDDEN, str(exc))
                for w in wanted:
                    if not grant.allows(w.ref.name):
                        raise Refusal(F.FORBIDDEN, f"token does not grant {w.ref.name}")
        except Refusal as refusal:
            status = 403 if refusal.code == F.FORBIDDEN else 400
            return error_response(status, refusal.code, refusal.message)
        refused = relay.admit(door_ip, None, None)  # the Origin was checked already
        if refused is not None:
            return error_response(refused.status, F.RATE_LIMITED, refused.body.decode().strip())
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            },
        )
        origin = request.headers.get("Origin")
        if origin is not None:
            cors(response, origin)
        await response.prepare(request)
        door = SseDoor(response, request, hub=hub, settings=s, stats=relay.stats)
        door.grant = grant
        relay.opened(door_ip)
        server.sse.add(door)
        server.sse_by_protocol[request.protocol] = door  # ended when the client leaves
        try:
            await door.run(wanted)
        except (ClientConnectionResetError, ConnectionResetError):
            pass  # the client left
        finally:
            server.sse_by_protocol.pop(request.protocol, None)
            server.forget(door)
            relay.closed(door_ip)
        if door._failure is None and not door_ended_by_abort(door):
            with contextlib.suppress(ClientConnectionResetError, ConnectionResetError):
                await response.write_eof()
        return response

    return sse


def door_ended_by_abort(door: SseDoor) -> bool:
    transport = door._transport
    return transport is None or transport.is_closing()
