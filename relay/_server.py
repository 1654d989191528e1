"""The relay on aiohttp: WebSocket, SSE, the HTTP API and plain HTTP on one port.

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from relay import _frames as F
from relay import _http
from relay._api import ApiContext, add_routes
from relay._connection import Connection
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
        self._site: web.TCPSite | None = None
        self._port = 0
        self._closed = asyncio.Event()
        self.connections: set[Connection] = set()
        self.sse: set[SseDoor] = set()
        self._gone = asyncio.Event()  # set when a long-lived connection ends

    def forget(self, door: Connection | SseDoor) -> None:
        self.connections.discard(door)
        self.sse.discard(door)
        self._gone.set()

    def app(self) -> web.Application:
        from relay import _sse

        app = web.Application(middlewares=[self._guard], handler_args={"max_field_size": 8190})
        app[RELAY_KEY] = self.relay
        app.router.add_get("/ws", self._ws)
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
        self._site = web.TCPSite(
            self._runner, s.host, s.port, backlog=1024, reuse_port=s.reuse_port or None
        )
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._port = int(server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    async def close(self, code: int, reason: str) -> None:
        """Stop accepting, close every WebSocket with ``code``, end every SSE response."""
        try:
            if self._site is not None:
                await self._site.stop()  # stops listening; open connections go on
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
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        relay = self.relay
        headers = request.headers
        for name in ("Host", "Origin"):
            if len(headers.getall(name, ())) > 1:
                # Two Hosts or two Origins: which one would a check trust? Neither.
                relay.stats.refused_connections += 1
                return reply_response(_http.text(400, f"duplicate {name} header\n"))
        host = headers.get("Host")
        if not relay.host_ok(host):
            relay.stats.refused_connections += 1
            return reply_response(_http.text(403, f"host {host!r} not allowed\n"))
        api = request.path.startswith("/v1/")
        if not api:
            try:
                return await handler(request)
            except web.HTTPMethodNotAllowed as exc:
                allow = ", ".join(sorted(exc.allowed_methods))
                return reply_response(_http.method_not_allowed(request.method, allow))
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

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        relay = self.relay
        assert relay.hub is not None
        s = relay.settings
        ip = _ip(request)
        refusal = relay.admit(ip, request.headers.get("Origin"), request.headers.get("Host"))
        if refusal is not None:
            return reply_response(refusal)
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
            return response
        await ws.prepare(request)
        conn = Connection(AiohttpSocket(ws, request), hub=relay.hub, settings=s, stats=relay.stats)
        relay.opened(ip)
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:
            log.error("connection handler failed", exc_info=True)
            await _bounded_close(ws, F.CLOSE_INTERNAL, "internal error", s.close_timeout_s)
        finally:
            self.forget(conn)
            relay.closed(ip)
        if not ws.closed:
            await _bounded_close(ws, 1000, "", s.close_timeout_s)
        return ws

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return reply_response(await self.relay.healthz())

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return reply_response(_http.metrics_response(self.relay.registry))

    async def _static(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
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


async def _bounded_close(ws: web.WebSocketResponse, code: int, reason: str, limit_s: float) -> None:
    try:
        async with asyncio.timeout(limit_s):
            await ws.close(code=code, message=reason.encode())
    except TimeoutError:
        if ws._req is not None and ws._req.transport is not None:
            ws._req.transport.abort()


def _ip(request: web.Request) -> str:
    transport = request.transport
    peer: Any = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) else "?"
