"""The relay on aiohttp: WebSocket, SSE, the HTTP API and plain HTTP on one port.

The listening sockets run ``relay._lite.Front``: a connection whose first request is a
``/ws`` upgrade (compression off) is served by the light WebSocket door there; every other
connection is handed to this module's aiohttp application.

``/ws`` (the WebSocket protocol), ``/v1/sse`` (Server-Sent Events), the HTTP API under
``/v1/`` (``relay._api``, when present), ``/healthz``, ``/metrics`` and the dashboard's
static files. One middleware applies what every request gets: duplicate ``Host`` or
``Origin`` -> 400, a foreign ``Host`` in loopback mode (DNS rebinding) -> 403, CORS and
the origin allow-list on ``/v1/``, and the relay's own 404/405 answers (JSON under
``/v1/``, with the WebSocket error codes). aiohttp answers a malformed request with 400
itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractView
from aiohttp.http_exceptions import HttpProcessingError

from relay import _frames as F
from relay import _http
from relay._api import ApiContext, add_routes
from relay._connection import Connection
from relay._lite import Front
from relay._sockets import AiohttpSocket

if TYPE_CHECKING:
    from relay._relay import Relay
    from relay._sse import SseDoor

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# CORS preflight answers (what a page may send to /v1/).
_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"

# The relay's application, for handlers added by other modules (relay._api).
RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay")
_SERVER_KEY: web.AppKey[AiohttpServer] = web.AppKey("server")


def reply_response(reply: _http.Reply) -> web.Response:
    response = web.Response(status=reply.status, body=reply.body)
    for name, value in reply.all_headers():
        response.headers[name] = value
    return response


def error_response(status: int, code: str, message: str) -> web.Response:
    """``{"error": {"code", "message"}}``: the HTTP doors' error body."""
    return reply_response(_http.error_json(status, code, F.shorten(message, F.MESSAGE_CHARS)))


_HTTP_CODES = {
    400: F.BAD_REQUEST,
    401: F.FORBIDDEN,
    403: F.FORBIDDEN,
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: F.RATE_LIMITED,
    503: F.UNAVAILABLE,
}


class AiohttpServer:
    """Serves one relay with aiohttp until closed."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.closing = False  # close() began: relay._lite refuses new WebSockets (503)
        self._port = 0
        self._closed = asyncio.Event()
        self.connections: set[Connection] = set()
        self.sse: set[SseDoor] = set()
        # Each SSE response's door by its connection's protocol, for ``_watch_disconnects``.
        self.sse_by_protocol: dict[object, SseDoor] = {}
        self._gone = asyncio.Event()  # set when a long-lived connection ends

    def forget(self, door: Connection | SseDoor) -> None:
        self.connections.discard(door)
        self.sse.discard(door)
        self._gone.set()

    def ended(self, conn: Connection, ip: str) -> None:
        """A WebSocket connection is over (``AiohttpSocket.ended``)."""
        self.forget(conn)
        self.relay.closed(ip)

    def app(self) -> web.Application:
        from relay import _sse

        # 32 KiB request lines and headers: an SSE position (``last_event_id``, the
        # ``Last-Event-ID`` header) covers up to MAX_SUBSCRIPTIONS (100) streams.
        app = web.Application(
            middlewares=[self._guard],
            handler_args={"max_field_size": 32768, "max_line_size": 32768},
        )
        app[RELAY_KEY] = self.relay
        app[_SERVER_KEY] = self
        app.router.add_view("/ws", _WsView)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/sse", _sse.handler(self))
        relay = self.relay
        add_routes(
            app,
            ApiContext(
                client=relay.client,
                keys=relay.settings.bus.keys,
                settings=relay.settings,
                limits=relay.settings.api,
                archive=relay.archive,
            ),
        )
        app.router.add_get("/{path:.*}", self._static)
        app.on_response_prepare.append(_server_header)
        return app

    async def start(self) -> None:
        s = self.relay.settings
        self._runner = web.AppRunner(
            self.app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=s.close_timeout_s,
            logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._watch_disconnects(self._runner.server)
        # The listening sockets run relay._lite's front protocol: /ws upgrades on the light
        # door, everything else handed to aiohttp's server (``runner.server``).
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: Front(self),
            s.host,
            s.port,
            backlog=1024,
            reuse_port=s.reuse_port or None,
        )
        self._port = int(self._listener.sockets[0].getsockname()[1])

    @property
    def runner(self) -> web.AppRunner | None:
        return self._runner

    def _watch_disconnects(self, server: web.Server) -> None:
        """End an SSE response as soon as its client's connection is lost.

        aiohttp does not cancel a handler whose client left (``handler_cancellation`` is
        off, and should stay off for the POST handlers), so an idle response would notice
        only at its next write or heartbeat, holding its subscriptions and its place in
        ``MAX_CONNECTIONS_PER_IP`` meanwhile; rpa-bus.js reopens its response whenever its
        set of streams changes. The server's ``connection_lost`` (called by each
        connection's protocol) tells us first.
        """
        lost = server.connection_lost
        doors = self.sse_by_protocol

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            door = doors.pop(handler, None)
            if door is not None:
                door.end()
            lost(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @property
    def port(self) -> int:
        return self._port

    async def close(self, code: int, reason: str) -> None:
        """Stop accepting, close every WebSocket with ``code``, end every SSE response."""
        self.closing = True
        try:
            if self._listener is not None:
                self._listener.close()  # stops listening; open connections go on
            for conn in list(self.connections):
                conn.close_soon(code, reason)
            for door in list(self.sse):
                door.end()
            # Each close is bounded by close_timeout_s; wait for their handlers.
            limit = self.relay.settings.close_timeout_s + 1.0
            async with asyncio.timeout(limit):
                while self.connections or self.sse:
                    self._gone.clear()
                    await self._gone.wait()
        except TimeoutError:
            log.warning("%d connections did not close in time", len(self.connections))
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- every request --------------------------------------------------------------------

    @web.middleware
    def _guard(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        """Not a coroutine: a request outside ``/v1/`` that passes the checks gets its
        handler's own coroutine, so a WebSocket held for hours keeps no frame of this."""
        headers = request.headers
        refusal = self.relay.guard(headers.getall("Host", ()), headers.getall("Origin", ()))
        if refusal is not None:
            return _answer(reply_response(refusal))
        host = headers.get("Host")
        if request.path.startswith("/v1/"):
            return self._guard_api(request, handler, host)
        exc = request.match_info.http_exception
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allow = ", ".join(sorted(exc.allowed_methods))
            return _answer(reply_response(_http.method_not_allowed(request.method, allow)))
        return handler(request)

    async def _guard_api(
        self, request: web.Request, handler: Handler, host: str | None
    ) -> web.StreamResponse:
        relay = self.relay
        headers = request.headers
        origin = headers.get("Origin")
        if origin is not None and not relay.origin_ok(origin, host):
            relay.stats.refused_connections += 1
            return error_response(403, F.FORBIDDEN, f"origin {origin!r} not allowed")
        if request.method == "OPTIONS" and origin is not None:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = error_response(
                    exc.status, _HTTP_CODES.get(exc.status, F.BAD_REQUEST), exc.reason
                )
                if isinstance(exc, web.HTTPMethodNotAllowed):
                    response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        if origin is not None and not response.prepared:
            cors(response, origin)
        return response

    # -- routes ---------------------------------------------------------------------------

    def _ws(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        """Not a coroutine: a WebSocket runs in ``Connection.run``'s frame alone, from the
        handshake (``AiohttpSocket.open``) to the close (``AiohttpSocket.finish``)."""
        relay = self.relay
        assert relay.hub is not None
        s = relay.settings
        ip = _ip(request)
        refusal = relay.admit(ip, request.headers.get("Origin"), request.headers.get("Host"))
        if refusal is not None:
            return _answer(reply_response(refusal))
        ws = web.WebSocketResponse(
            timeout=s.close_timeout_s,
            heartbeat=s.ping_interval_s,
            compress=s.compression,
            max_msg_size=s.max_frame_bytes,
            writer_limit=s.write_limit,
        )
        if not ws.can_prepare(request).ok:
            reply = _http.text(426, "this is a WebSocket endpoint: send an Upgrade request\n")
            response = reply_response(reply)
            response.headers["Upgrade"] = "websocket"
            return _answer(response)
        socket = AiohttpSocket(ws, request, ip=ip, close_timeout_s=s.close_timeout_s, server=self)
        conn = Connection(socket, hub=relay.hub, settings=s, stats=relay.stats)
        relay.opened(ip)
        self.connections.add(conn)
        return conn.run()

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return reply_response(await self.relay.healthz())

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return reply_response(_http.metrics_response(self.relay.registry))

    async def _static(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            # A /v1/ path that takes other methods only (GET on the POST-only events path)
            # reaches this catch-all, not aiohttp's 405: answer 405 as docs/http.md says.
            allowed: set[str] = set()
            for resource in request.app.router.resources():
                if resource is not request.match_info.route.resource:
                    match, methods = await resource.resolve(request)
                    if match is None:
                        allowed |= methods
            if allowed:
                allow = ", ".join(sorted(allowed))
                response = error_response(
                    405, "method_not_allowed", f"{request.method} not allowed here; use {allow}"
                )
                response.headers["Allow"] = allow
                return response
            return error_response(404, "not_found", f"no such endpoint: {request.path}")
        return reply_response(await _http.static_response(request.path))


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, where a malformed request (answered 400 by aiohttp) is one
    INFO line: a client's garbage is not the relay's error, and needs no traceback."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            log.info("malformed HTTP request: %s", F.shorten(str(exc.message)))
            return
        super().exception(msg, *args, **kwargs)


def cors(response: web.StreamResponse, origin: str) -> None:
    """Let the page at ``origin`` (allowed by the caller) read ``response``."""
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Not aiohttp's default (which names the Python and aiohttp versions).
    response.headers["Server"] = "rpa-bus"


async def _answer(response: web.StreamResponse) -> web.StreamResponse:
    return response


class _WsView(AbstractView):
    """``/ws``. A view, not a coroutine function: awaiting it awaits ``Connection.run``
    itself, so an idle WebSocket holds no handler frame of the relay's besides that one."""

    def __await__(self) -> Generator[None, None, web.StreamResponse]:
        request = self.request
        if request.method not in ("GET", "HEAD"):
            reply = _http.method_not_allowed(request.method, "GET, HEAD")
            return _answer(reply_response(reply)).__await__()
        run: Generator[None, None, web.StreamResponse] = (
            request.app[_SERVER_KEY]._ws(request).__await__()
        )
        return run


def _ip(request: web.Request) -> str:
    transport = request.transport
    peer: Any = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) else "?"
