"""The relay on websockets' server (``RPA_BUS_RELAY_SERVER=websockets``).

The relay's first server: WebSocket on ``/ws`` and plain HTTP through websockets'
``process_request`` (which cannot stream a response, so no SSE and no HTTP API here). Kept
so that bench/relay.py can measure it beside aiohttp's in one run.
"""

from __future__ import annotations

import email.utils
import http
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import InvalidMessage, SecurityError
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from relay import _http
from relay._connection import Connection
from relay._frames import shorten
from relay._sockets import WebsocketsSocket

if TYPE_CHECKING:
    from relay._relay import Relay

log = logging.getLogger(__name__)


def _response(reply: _http.Reply, *, head: bool = False) -> Response:
    code = http.HTTPStatus(reply.status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(reply.body))),
            *reply.all_headers(),
        ]
    )
    return Response(code.value, code.phrase, headers, b"" if head else reply.body)


class WebsocketsServer:
    """Serves one relay with websockets until closed."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._server: Server | None = None

    async def start(self) -> None:
        s = self.relay.settings
        listen: dict[str, Any] = {"reuse_port": True} if s.reuse_port else {}
        self._server = await serve(
            self._handler,
            s.host,
            s.port,
            process_request=self._process_request,
            compression="deflate" if s.compression else None,
            max_size=s.max_frame_bytes,
            max_queue=16,
            write_limit=s.write_limit,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            close_timeout=s.close_timeout_s,
            open_timeout=10,
            server_header=None,
            create_connection=_Connection,
            **listen,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, code: int, reason: str) -> None:
        if self._server is not None:
            self._server.close(code=code, reason=reason)
            await self._server.wait_closed()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        relay = self.relay
        assert relay.hub is not None
        socket = WebsocketsSocket(ws)
        relay.opened(socket.ip)
        try:
            conn = Connection(socket, hub=relay.hub, settings=relay.settings, stats=relay.stats)
            await conn.run()
        finally:
            relay.closed(socket.ip)

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        relay = self.relay
        try:
            host = request.headers.get("Host")
            origin = request.headers.get("Origin")
        except MultipleValuesError as exc:
            # Two Hosts or two Origins: which one would a check trust? Neither.
            relay.stats.refused_connections += 1
            return _response(_http.text(400, f"duplicate {exc} header\n"))
        if not relay.host_ok(host):
            relay.stats.refused_connections += 1
            return _response(_http.text(403, f"host {host!r} not allowed\n"))
        path = request.path.partition("?")[0]
        if path == "/ws":
            refusal = relay.admit(_ip(ws), origin, host)
            return None if refusal is None else _response(refusal)
        if request.method not in ("GET", "HEAD"):
            return _response(_http.method_not_allowed(request.method))
        if path == "/healthz":
            reply = await relay.healthz()
        elif path == "/metrics":
            reply = _http.metrics_response(relay.registry)
        else:
            reply = await _http.static_response(path)
        return _response(reply, head=request.method == "HEAD")


class _Connection(ServerConnection):
    """websockets answers a request it cannot parse (garbage request line, ``HTTP/9.9``, a
    header line without a colon) by closing the TCP connection without a word. This
    connection answers 400 instead (431 for one too large), then closes: its protocol's
    request parser is replaced before any byte arrives."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        protocol.parser = _parse_request(protocol)
        next(protocol.parser)


def _parse_request(protocol: ServerProtocol) -> Generator[None]:
    """``ServerProtocol.parse`` with an HTTP answer for a malformed request."""
    try:
        request = yield from Request.parse(protocol.reader.read_line)
    except EOFError as exc:  # the client left before a whole request: nobody to answer
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
    except Exception as exc:
        # SecurityError: a line too long or too many headers. Anything else: ValueError
        # (bad request line, protocol version, header line), UnicodeDecodeError (non-ASCII
        # method or path), NotImplementedError (Transfer-Encoding).
        protocol.handshake_exc = exc
        status = 431 if isinstance(exc, SecurityError) else 400
        reason = f"malformed HTTP request: {shorten(str(exc))}\n"
        protocol.send_response(protocol.reject(status, reason))
        yield
    else:
        protocol.events.append(request)
        yield from Protocol.parse(protocol)


def _ip(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if isinstance(address, tuple) else "?"
