"""One WebSocket: what ``relay._connection`` needs of it (``Socket``).

``AiohttpSocket`` adapts aiohttp's ``WebSocketResponse``. It writes a frame synchronously
when the transport's buffer is under the limit (no task switch, no coroutine: the fan-out's
fast path) and otherwise leaves it to the connection's bounded queue and writer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from aiohttp.client_exceptions import ClientConnectionResetError

from relay import _frames as F
from relay._outbox import ClientGone
from relay._writes import buffered, write

log = logging.getLogger("relay._server")

_HEAD_7 = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


class Socket(Protocol):
    ip: str
    query: str

    @property
    def peer(self) -> str:
        """The client's address and port, for logs."""

    async def open(self) -> None:
        """Finish the opening handshake (aiohttp: ``prepare``); a no-op if done."""

    def write_now(self, frame: bytes, limit: int) -> bool:
        """Write ``frame`` at once if open and the buffer holds under ``limit`` bytes."""

    async def send(self, frame: bytes) -> None:
        """Write ``frame``, waiting while the buffer is full; ``ClientGone`` if closed."""

    def receive_raw(self) -> Awaitable[Any]:
        """The next message, raw: the library's own receive (no extra coroutine frame held
        per idle connection); ``unwrap`` turns it into text, bytes, or None once closed."""

    def unwrap(self, raw: Any) -> str | bytes | None:
        """The message's text or bytes, or None if it says the connection closed."""

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake (unbounded: the caller bounds it)."""

    def abort(self) -> None:
        """Drop the TCP connection."""

    def ended(self, conn: Any) -> None:
        """``conn`` is over (also when cancelled, or its handshake failed): the server's
        bookkeeping."""

    async def finish(self, failure: Exception | None) -> Any:
        """After ``Connection.run``'s loop: close the socket, and return what the server
        library wants from its handler; ``failure`` is a bug of this connection."""


async def bounded_close(socket: Socket, code: int, reason: str, timeout_s: float) -> None:
    """The closing handshake, at most ``timeout_s``; past it the TCP connection is dropped."""
    try:
        async with asyncio.timeout(timeout_s):
            await socket.close(code, reason)
    except TimeoutError:
        socket.abort()


def peer_name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "?"


def frame_text(frame: bytes) -> bytes:
    """``frame`` as a server's WebSocket text frame (RFC 6455: FIN + text opcode, the
    length, no mask)."""
    size = len(frame)
    if size < 126:
        return _HEAD_7(0x81, size) + frame
    if size < 65536:
        return _HEAD_16(0x81, 126, size) + frame
    return _HEAD_64(0x81, 127, size) + frame


class AiohttpSocket:
    """An aiohttp ``WebSocketResponse`` before its handshake: ``open`` prepares it. The
    whole connection then runs in ``Connection.run``'s one coroutine frame (the handler
    returns that coroutine), and holds no copy of the request, its headers or its peer
    address: an idle connection costs aiohttp's objects and the relay's few."""

    __slots__ = (
        "_close_timeout_s",
        "_fast",
        "_request",
        "_server",
        "_transport",
        "ip",
        "query",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        ip: str,
        close_timeout_s: float,
        server: Any,
    ) -> None:
        self.ws = ws
        # Raw (percent-encoded), as websockets gives it; read once by the connection.
        self.query = request.rel_url.raw_query_string
        self.ip = ip
        self._request: web.Request | None = request
        self._transport = request.transport
        self._close_timeout_s = close_timeout_s
        self._server: Any = server  # relay._server.AiohttpServer: told when it ends
        self._fast = False

    @property
    def peer(self) -> str:
        transport = self._transport
        return peer_name(transport.get_extra_info("peername") if transport is not None else None)

    async def open(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        ws = self.ws
        await ws.prepare(request)
        # Sent: the response's headers are never read again (aiohttp keeps them).
        ws.headers.clear()
        # Frames are written by write_now (relay._writes) unless compressed (aiohttp's
        # shared compressor: those go the awaited way).
        writer = getattr(ws, "_writer", None)
        self._fast = writer is not None and not getattr(writer, "compress", True)

    def receive_raw(self) -> Awaitable[Any]:
        return self.ws.receive()

    def write_now(self, frame: bytes, limit: int) -> bool:
        # The fan-out's hot path: as few lookups as possible. A server frame (RFC 6455:
        # FIN + text opcode, the length, no mask) written through ``relay._writes``, so a
        # fan-out writes each client's frames as one.
        if not self._fast or self.ws._closed:
            return False
        transport = self._transport
        if transport is None or transport.is_closing() or buffered(transport) >= limit:
            return False
        write(transport, frame_text(frame))
        return True

    async def send(self, frame: bytes) -> None:
        if self.ws.closed:
            raise ClientGone
        try:
            await self.ws.send_frame(frame, WSMsgType.TEXT)
        except (ClientConnectionResetError, ConnectionResetError, RuntimeError) as exc:
            raise ClientGone from exc

    def unwrap(self, raw: Any) -> str | bytes | None:
        if raw.type is WSMsgType.TEXT:
            text: str = raw.data
            return text
        if raw.type is WSMsgType.BINARY:
            data: bytes = raw.data
            return data
        return None  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp closed with its code)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def ended(self, conn: Any) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.ended(conn, self.ip)

    async def finish(self, failure: Exception | None) -> web.WebSocketResponse:
        if failure is not None:
            log.error("connection handler failed", exc_info=failure)
            await bounded_close(self, F.CLOSE_INTERNAL, "internal error", self._close_timeout_s)
        if not self.ws.closed:
            await bounded_close(self, 1000, "", self._close_timeout_s)
        return self.ws
