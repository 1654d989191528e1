"""The light WebSocket door: ``/ws`` on websockets' sans-I/O protocol, in front of aiohttp.

aiohttp holds ~14 KiB per idle WebSocket (its parsed request, HTTP parser, reader, writer,
message queue, handler task), none of it releasable. The relay's listening sockets run
``Front`` instead: it reads the first request head (bounded in size and time) and

- serves a ``GET /ws`` WebSocket upgrade itself (``LiteSocket``: one ``asyncio.Protocol``
  over websockets' ``ServerProtocol``, ~6 KiB idle) when compression is off;
- hands anything else to aiohttp unchanged (its low-level server's protocol takes the
  transport and the bytes read so far): the HTTP API, SSE, the dashboard, a malformed or
  unusual ``/ws`` request (aiohttp answers it as before), and every ``/ws`` when
  compression is on (aiohttp's ``/ws`` route: permessage-deflate).

The checks a ``/ws`` request gets before its upgrade (duplicate Host/Origin, Host in
loopback mode, Origin allow-list, connections per IP) are ``Relay.guard`` and
``Relay.admit``, the same calls aiohttp's route makes.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay import _frames as F
from relay import _http
from relay._connection import Connection
from relay._outbox import ClientGone
from relay._sockets import bounded_close, frame_text, peer_name
from relay._writes import buffered, write

if TYPE_CHECKING:
    from relay._server import AiohttpServer

log = logging.getLogger("relay._server")

# The first request head: at most this many bytes and seconds before a decision. 60 s as
# nginx's client_header_timeout default: a socket a browser opened ahead of need (a
# preconnect) may stay quiet for a while before its request.
HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 60.0

# A client's ops read but not yet handled: past this many, stop reading its socket.
_INBOX_PAUSE = 16

_OPEN = State.OPEN
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_CLOSE = Opcode.CLOSE


class Front(asyncio.Protocol):
    """A new TCP connection until its first request head says where it goes."""

    __slots__ = ("_buffer", "_server", "_timer", "_transport")

    def __init__(self, server: AiohttpServer) -> None:
        self._server = server
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None:
            log.info("closing %s: no request head in %.0f s", _peer(transport), HEAD_TIMEOUT_S)
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._transport = None
        self._buffer = b""

    def eof_received(self) -> bool | None:
        return None  # no head: close

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer = self._buffer + data
        line_end = buffer.find(b"\r\n")
        if line_end < 0:
            if not b"GET /ws".startswith(buffer[:7]) or len(buffer) > HEAD_BYTES:
                self._hand_over()  # not a WebSocket (or no line in 64 KiB): aiohttp's
            return
        line = buffer[:line_end]
        if not (line.startswith((b"GET /ws ", b"GET /ws?")) and line.endswith(b" HTTP/1.1")):
            self._hand_over()  # not a WebSocket: aiohttp's
            return
        if self._server.relay.settings.compression:
            self._hand_over()  # aiohttp's /ws route negotiates permessage-deflate
            return
        head_end = buffer.find(b"\r\n\r\n")
        if head_end > HEAD_BYTES or (head_end < 0 and len(buffer) > HEAD_BYTES):
            self._server.relay.stats.refused_connections += 1
            self._refuse(_http.text(431, f"request head over {HEAD_BYTES} bytes\n"))
            return
        if head_end < 0:
            return
        self._upgrade()

    def _refuse(self, reply: _http.Reply) -> None:
        self._stop_timer()
        transport, self._transport = self._transport, None
        self._buffer = b""
        if transport is not None:
            transport.write(_http_bytes(reply))
            transport.close()

    def _hand_over(self) -> None:
        """aiohttp serves this connection from its first byte."""
        self._stop_timer()
        transport, self._transport = self._transport, None
        buffer, self._buffer = self._buffer, b""
        if transport is None or transport.is_closing():
            return
        runner = self._server.runner
        factory = runner.server if runner is not None else None
        if factory is None:
            transport.abort()
            return
        handler = factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if buffer:
            handler.data_received(buffer)

    def _upgrade(self) -> None:
        transport = self._transport
        assert transport is not None
        server = self._server
        relay = server.relay
        s = relay.settings
        protocol = ServerProtocol(max_size=s.max_frame_bytes)
        protocol.receive_data(self._buffer)
        events = protocol.events_received()
        request = events[0] if len(events) == 1 else None
        if not isinstance(request, Request) or protocol.reader.buffer:
            self._hand_over()  # unparsable, or bytes past the head: aiohttp decides
            return
        response = protocol.accept(request)
        if response.status_code != 101:
            self._hand_over()  # aiohttp answers a bad upgrade (400, 426) as before
            return
        headers = request.headers
        ip = _ip(transport)
        reply = relay.guard(headers.get_all("Host"), headers.get_all("Origin"))
        if reply is None:
            reply = relay.admit(ip, headers.get("Origin"), headers.get("Host"))
        if reply is None and server.closing:
            reply = _http.text(503, "relay shutting down\n")
        if reply is not None:
            self._refuse(reply)
            return
        self._stop_timer()
        self._transport = None
        self._buffer = b""
        if relay.hub is None:  # pragma: no cover - the relay serves after its hub starts
            transport.abort()
            return
        response.headers["Server"] = "rpa-bus"
        protocol.send_response(response)
        path = request.path
        socket = LiteSocket(transport, protocol, server, ip=ip, query=path.partition("?")[2])
        transport.set_protocol(socket)
        conn = Connection(socket, hub=relay.hub, settings=s, stats=relay.stats)
        relay.opened(ip)
        server.connections.add(conn)
        socket.flush()
        socket.start(conn)


class LiteSocket(asyncio.Protocol):
    """One WebSocket after its handshake: the transport's protocol and the ``Socket`` of
    its ``Connection`` (``relay._sockets``)."""

    __slots__ = (
        "_alive",
        "_close_timeout_s",
        "_drain",
        "_inbox",
        "_lost",
        "_parts",
        "_parts_text",
        "_paused_reading",
        "_pinged",
        "_protocol",
        "_server",
        "_task",
        "_timer",
        "_transport",
        "_waiter",
        "_writing_paused",
        "ip",
        "query",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: ServerProtocol,
        server: AiohttpServer,
        *,
        ip: str,
        query: str,
    ) -> None:
        s = server.relay.settings
        self._transport: asyncio.Transport | None = transport
        self._protocol = protocol
        self._server: AiohttpServer | None = server
        self.ip = ip
        self.query = query  # raw (percent-encoded); read once by the connection
        self._close_timeout_s = s.close_timeout_s
        self._inbox: deque[str | bytes | None] | None = None
        self._waiter: asyncio.Future[str | bytes | None] | None = None
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._parts_text = False
        self._paused_reading = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pinged = False
        self._alive = False
        transport.set_write_buffer_limits(high=s.write_limit)

    def start(self, conn: Connection) -> None:
        self._task = asyncio.get_running_loop().create_task(conn.run())
        self._task.add_done_callback(_task_done)
        if self._server is not None:
            self._schedule_ping(self._server.relay.settings.ping_interval_s)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        self._alive = True
        for event in protocol.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                self._data_frame(event)
            elif opcode is _CLOSE:
                self._message(None)
        self.flush()
        if protocol.state is State.CLOSED:
            self._message(None)

    def _data_frame(self, frame: Frame) -> None:
        data = bytes(frame.data)
        if frame.opcode is not _CONT:
            if not frame.fin:
                self._parts = [data]
                self._parts_text = frame.opcode is _TEXT
                return
            text = frame.opcode is _TEXT
        else:
            parts = self._parts
            if parts is None:  # pragma: no cover - the protocol refuses it first
                return
            parts.append(data)
            if not frame.fin:
                return
            self._parts = None
            data = b"".join(parts)
            text = self._parts_text
        if not text:
            self._message(data)
            return
        try:
            self._message(data.decode())
        except UnicodeDecodeError:
            self._protocol.fail(1007, "invalid UTF-8")

    def eof_received(self) -> bool | None:
        self._protocol.receive_eof()
        self.flush()
        self._message(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._message(None)
        for future in (self._drain, self._lost):
            if future is not None and not future.done():
                future.set_result(None)
        self._drain = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the protocol's writes, messages, pings -------------------------------------------

    def flush(self) -> None:
        """Write what the protocol has to send (the handshake, pongs, close frames)."""
        transport = self._transport
        for data in self._protocol.data_to_send():
            if transport is None:
                return
            if data:
                transport.write(data)
            else:
                # The closing handshake is over (or failed): the server closes TCP first.
                transport.close()
                transport = None

    def _message(self, message: str | bytes | None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        elif message is None and inbox and inbox[-1] is None:
            return
        inbox.append(message)
        if len(inbox) >= _INBOX_PAUSE and not self._paused_reading:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                self._paused_reading = True
                transport.pause_reading()

    def _schedule_ping(self, delay: float | None) -> None:
        if delay is not None and self._transport is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._heartbeat)

    def _heartbeat(self) -> None:
        """A ping every ``ping_interval_s``; nothing heard in half the interval after it
        (aiohttp's rule, docs/protocol.md "Keepalive"): the TCP connection is dropped and
        the client resumes from its last id. One timer per connection at a time."""
        self._timer = None
        server = self._server
        if server is None or self._transport is None:
            return
        interval = server.relay.settings.ping_interval_s
        if interval is None:
            return
        if self._pinged:
            if not self._alive:
                log.info("closing %s: no pong in %.1f s", self.peer, interval / 2)
                self.abort()
                return
            self._pinged = False
        elif self._protocol.state is _OPEN:
            self._protocol.send_ping(b"")
            self.flush()
            self._alive = False
            self._pinged = True
        else:
            return
        self._schedule_ping(interval / 2)

    # -- Socket ---------------------------------------------------------------------------

    @property
    def peer(self) -> str:
        transport = self._transport
        return peer_name(transport.get_extra_info("peername") if transport else None)

    async def open(self) -> None:
        return  # the handshake is done (``Front._upgrade``)

    def write_now(self, frame: bytes, limit: int) -> bool:
        transport = self._transport
        if (
            transport is None
            or self._protocol.state is not _OPEN
            or transport.is_closing()
            or buffered(transport) >= limit
        ):
            return False
        write(transport, frame_text(frame))
        return True

    async def send(self, frame: bytes) -> None:
        while True:
            transport = self._transport
            if transport is None or transport.is_closing() or self._protocol.state is not _OPEN:
                raise ClientGone
            if not self._writing_paused:
                break
            drain = self._drain
            if drain is None:
                drain = self._drain = asyncio.get_running_loop().create_future()
            await drain
        write(transport, frame_text(frame))

    def receive_raw(self) -> asyncio.Future[str | bytes | None]:
        future: asyncio.Future[str | bytes | None] = asyncio.get_running_loop().create_future()
        inbox = self._inbox
        if inbox:
            message = inbox[0] if inbox[0] is None else inbox.popleft()
            future.set_result(message)
            if self._paused_reading and len(inbox) < _INBOX_PAUSE // 4:
                self._paused_reading = False
                transport = self._transport
                if transport is not None:
                    transport.resume_reading()
        else:
            self._waiter = future
        return future

    def unwrap(self, raw: Any) -> str | bytes | None:
        message: str | bytes | None = raw
        return message

    async def close(self, code: int, reason: str) -> None:
        protocol = self._protocol
        if self._transport is None:
            return
        if protocol.state is _OPEN:
            protocol.send_close(code, reason)
            self.flush()
        lost = self._lost
        if lost is None:
            lost = self._lost = asyncio.get_running_loop().create_future()
        if self._transport is not None:
            await asyncio.shield(lost)

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()

    def ended(self, conn: Any) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.ended(conn, self.ip)

    async def finish(self, failure: Exception | None) -> None:
        if failure is not None:
            log.error("connection handler failed", exc_info=failure)
            await bounded_close(self, F.CLOSE_INTERNAL, "internal error", self._close_timeout_s)
        if self._transport is not None:
            await bounded_close(self, 1000, "", self._close_timeout_s)


def _task_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("WebSocket connection failed", exc_info=task.exception())


def _peer(transport: asyncio.BaseTransport) -> str:
    return peer_name(transport.get_extra_info("peername"))


def _ip(transport: asyncio.BaseTransport) -> str:
    peer: Any = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else "?"


def _http_bytes(reply: _http.Reply) -> bytes:
    """A refusal as HTTP/1.1 bytes, with the headers aiohttp would write for it."""
    try:
        phrase = http.HTTPStatus(reply.status).phrase
    except ValueError:  # pragma: no cover - the relay's statuses are standard
        phrase = ""
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.all_headers()]
    lines += [
        f"Content-Length: {len(reply.body)}",
        "Server: rpa-bus",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body
