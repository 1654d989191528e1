"""The HTTP API under ``/v1/``: history pages, sessions, one session's state, publish, and
the OpenAPI description of it all (docs/http.md).

``add_routes(app, ctx)`` registers aiohttp handlers on the relay's application. Every
answer is JSON; every refusal is a 4xx ``{"error": {"code", "message"}}`` with the
WebSocket error codes, and Redis being down is a 503 ``unavailable`` (POST then appended
nothing, or, if the reply was lost, what a retry with the same ``Idempotency-Key`` makes
whole). Reads go through a ``History`` (relay/_history.py), the seam where the archive
joins later.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from relay._archive import Archive
from relay._auth import Grant, verify_token
from relay._history import ArchiveHistory, History, Order, RedisHistory
from relay._openapi import openapi_spec
from relay._publish import KeyReused, append, body_digest
from relay._settings import ApiLimits as ApiLimits  # its home is the settings
from relay._settings import RelaySettings, is_loopback
from rpa_bus import (
    JOB_NAME,
    Envelope,
    Forbidden,
    InvalidEvent,
    InvalidInput,
    InvalidOffset,
    InvalidSessionId,
    InvalidStreamName,
    Keys,
    StreamId,
    encode,
    now_ts,
    parse_stream_name,
    percent_of,
    validate,
    validate_session_id,
)
from rpa_bus.archive import ArchiveUnavailable
from rpa_bus.redisio import REDIS_FAILURES, AsyncClient, RateLimitedLog, is_retryable

log = logging.getLogger(__name__)

# Error codes: the WebSocket ones (docs/protocol.md), plus ``not_found`` (no such session)
# and ``too_large`` (a body over the limit), as the relay's server answers them too.
BAD_REQUEST: Final = "bad_request"
INVALID_STREAM: Final = "invalid_stream"
INVALID_OFFSET: Final = "invalid_offset"
FORBIDDEN: Final = "forbidden"
RATE_LIMITED: Final = "rate_limited"
UNAVAILABLE: Final = "unavailable"
NOT_FOUND: Final = "not_found"
TOO_LARGE: Final = "too_large"

JSON: Final = "application/json"
_ALLOW_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
_EXPOSE_HEADERS: Final = "Idempotent-Replayed, Retry-After"
_MAX_KEY_CHARS: Final = 255
_MESSAGE_CHARS: Final = 400


@dataclass(slots=True)
class ApiContext:
    """What the handlers need. ``history`` defaults to ``RedisHistory(client, keys)``, read
    through into ``archive`` when one is configured (``relay._history.ArchiveHistory``);
    ``archive`` is the relay's lazily opened store (``relay._archive.Archive``, None without
    ``RPA_BUS_ARCHIVE_URL``): a handler reads it with ``await ctx.archive.run(call)`` and
    lets ``ArchiveUnavailable`` propagate (answered 503 ``unavailable``); ``verify`` checks
    a token against the secret (``relay._auth.verify_token``)."""

    client: AsyncClient
    keys: Keys
    settings: RelaySettings
    limits: ApiLimits = field(default_factory=ApiLimits)  # the relay passes settings.api
    history: History | None = None
    archive: Archive | None = None
    verify: Callable[[str, object], Grant] = verify_token


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_routes(app: web.Application, ctx: ApiContext) -> None:
    """Register the ``/v1/`` HTTP API (all but ``/v1/sse``) on ``app``."""
    api = _Api(ctx)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/v1/openapi.json", api.openapi),
        ("GET", "/v1/streams/{stream}/events", api.events),
        ("GET", "/v1/sessions", api.sessions),
        ("GET", "/v1/sessions/{sid}", api.session),
        ("GET", "/v1/jobs", api.jobs),
        ("GET", "/v1/jobs/{job}", api.job),
        ("POST", "/v1/sessions/{sid}/events", api.publish),
    ]
    paths: dict[str, list[str]] = {}
    for method, path, handler in routes:
        app.router.add_route(method, path, api.endpoint(handler))
        paths.setdefault(path, []).append(method)
    for path, methods in paths.items():
        app.router.add_route("OPTIONS", path, api.preflight(methods))


class _Api:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        self.history: History = ctx.history or (
            RedisHistory(ctx.client, ctx.keys)
            if ctx.archive is None
            else ArchiveHistory(RedisHistory(ctx.client, ctx.keys), ctx.archive)
        )
        self._secret = ctx.settings.secret
        self._origins = frozenset(ctx.settings.origins)
        self._origin_hosts = frozenset(
            name for o in ctx.settings.origins if o != "*" and (name := _hostname(o, url=True))
        )
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._read_buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._spec = orjson.dumps(openapi_spec(ctx.limits))
        self._down_log = RateLimitedLog(log, interval_s=10.0)

    # -- the frame every endpoint shares ------------------------------------------------

    def endpoint(self, handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.Response:
            origin = request.headers.get("Origin")
            try:
                self._check_host(request)
                if origin is not None and not self._origin_ok(origin, request.host):
                    raise ApiError(403, FORBIDDEN, f"origin {_short(origin)!r} not allowed")
                response = await handler(request)
            except ApiError as exc:
                response = _error(exc.status, exc.code, exc.message, exc.headers)
            except REDIS_FAILURES as exc:
                if is_retryable(exc):
                    self._down_log.warning("Redis unavailable for the HTTP API: %s", exc)
                else:
                    log.error("Redis refused an HTTP API call: %s", exc)
                response = _error(
                    503, UNAVAILABLE, "Redis is unavailable; try again", {"Retry-After": "1"}
                )
            except ArchiveUnavailable as exc:
                # The answer needs the archive (history past Redis, an expired session) and
                # the store is down: say so, never answer what Redis alone holds as if whole.
                response = _error(503, UNAVAILABLE, str(exc), {"Retry-After": "2"})
            if origin is not None and self._origin_ok(origin, request.host):
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
                response.headers.add("Vary", "Origin")
            return response

        return run

    def preflight(self, methods: list[str]) -> Handler:
        allow = ", ".join([*methods, "OPTIONS"])

        async def run(request: web.Request) -> web.Response:
            origin = request.headers.get("Origin")
            try:
                self._check_host(request)
            except ApiError as exc:
                return _error(exc.status, exc.code, exc.message)
            if origin is not None and not self._origin_ok(origin, request.host):
                return _error(403, FORBIDDEN, f"origin {_short(origin)!r} not allowed")
            response = web.Response(status=204, headers={"Allow": allow})
            if origin is not None:
                response.headers.update(
                    {
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Methods": allow,
                        "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                        "Access-Control-Max-Age": "600",
                        "Vary": "Origin",
                    }
                )
            return response

        return run

    def _check_host(self, request: web.Request) -> None:
        """Without a secret (loopback mode) only loopback names or the hosts of configured
        origins, as for ``/ws``: a DNS-rebinding page sends its own name and is refused."""
        if self._secret is not None or self.ctx.settings.insecure:
            return
        host = request.headers.get("Host")
        if host is None:
            return
        name = _hostname(host)
        if name is None or not (is_loopback(name) or name in self._origin_hosts):
            raise ApiError(403, FORBIDDEN, f"host {_short(host)!r} not allowed")

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        if "*" in self._origins or origin in self._origins:
            return True
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:
            return False
        return host is not None and netloc == host

    def _grant(self, request: web.Request) -> Grant | None:
        """The request's verified grant; None when the relay runs without a secret."""
        if self._secret is None:
            return None
        token: str | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _unauthorized("Authorization must be 'Bearer TOKEN'")
            token = value.strip()
        else:
            token = _one(request, "token")
        if token is None:
            raise _unauthorized(
                "a token is required: 'Authorization: Bearer TOKEN' or '?token=' "
                "(mint one with `rpa-bus token`)"
            )
        try:
            return self.ctx.verify(self._secret, token)
        except Forbidden as exc:
            raise _unauthorized(str(exc)) from exc

    def _may_read(self, request: web.Request, stream: str) -> Grant | None:
        grant = self._grant(request)
        if grant is not None and not grant.allows(stream):
            raise ApiError(403, FORBIDDEN, f"token does not grant reading {stream!r}")
        self._rate(request, read=True)
        return grant

    def _rate(self, request: web.Request, *, read: bool = False) -> None:
        """A token bucket per client address, one for POSTs and one for reads; refused
        requests cost nothing."""
        client = request.remote or "?"
        now = time.monotonic()
        limits = self.limits
        if read:
            buckets, per_s, burst = self._read_buckets, limits.reads_per_s, limits.reads_burst
        else:
            buckets, per_s, burst = self._buckets, limits.posts_per_s, limits.posts_burst
        tokens, at = buckets.pop(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * per_s)
        if tokens < 1.0:
            buckets[client] = (tokens, now)
            wait_s = (1.0 - tokens) / per_s
            raise ApiError(
                429,
                RATE_LIMITED,
                f"at most {per_s:g} {'reads' if read else 'POSTs'} per second per client",
                {"Retry-After": str(max(1, round(wait_s + 0.5)))},
            )
        buckets[client] = (tokens - 1.0, now)
        while len(buckets) > limits.tracked_clients:
            buckets.popitem(last=False)

    # -- endpoints ------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._spec, content_type=JSON)

    async def events(self, request: web.Request) -> web.Response:
        try:
            ref = parse_stream_name(request.match_info["stream"])
        except InvalidStreamName as exc:
            raise ApiError(400, INVALID_STREAM, str(exc)) from exc
        self._may_read(request, ref.name)
        after = _offset(request, "after")
        before = _offset(request, "before")
        limit = _int(request, "limit", self.limits.page_default, self.limits.page_max)
        order_text = _one(request, "order") or "asc"
        if order_text not in ("asc", "desc"):
            raise ApiError(400, BAD_REQUEST, f"order must be 'asc' or 'desc', got {order_text!r}")
        order: Order = "asc" if order_text == "asc" else "desc"
        page = await self.history.page(ref, after=after, before=before, limit=limit, order=order)
        body = {
            "stream": ref.name,
            "epoch": page.epoch,
            "first": page.first,
            "last": page.last,
            # The stored envelope bytes, embedded as they are: no decode and encode again.
            "events": [
                {"id": entry_id, "data": orjson.Fragment(raw) if raw else None}
                for entry_id, raw in page.entries
            ],
            "next": page.next,
        }
        return _json(200, body)

    async def sessions(self, request: web.Request) -> web.Response:
        grant = self._may_read(request, "sessions")
        status = _one(request, "status")
        if status is not None and status not in ("running", "finished", "failed"):
            raise ApiError(
                400,
                BAD_REQUEST,
                f"status must be running, finished or failed, got {_short(status)!r}",
            )
        query = _one(request, "q") or None
        if query is not None and len(query) > 256:
            raise ApiError(400, BAD_REQUEST, "q must be at most 256 characters")
        since = _offset(request, "since")
        until = _offset(request, "until")
        # Opaque to clients: a stream id while Redis's index lists, then the archive's.
        cursor = _one(request, "cursor")
        if cursor is not None and len(cursor) > 1024:
            raise ApiError(400, INVALID_OFFSET, "cursor: longer than any cursor this API gives")
        limit = _int(request, "limit", self.limits.sessions_default, self.limits.sessions_max)
        try:
            page = await self.history.sessions(
                status=status,
                query=query,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        except InvalidOffset as exc:
            raise ApiError(400, INVALID_OFFSET, f"cursor: {exc}") from exc
        visible = [
            s.as_json()
            for s in page.sessions
            if grant is None or grant.allows(f"session:{s.session}")
        ]
        return _json(200, {"sessions": visible, "next": page.next})

    async def session(self, request: web.Request) -> web.Response:
        sid = _sid(request)
        self._may_read(request, f"session:{sid}")
        state = await self.history.session(sid)
        if state is None:
            raise ApiError(404, NOT_FOUND, f"no session {sid!r} (never started, or expired)")
        return _json(200, state.as_json())

    async def jobs(self, request: web.Request) -> web.Response:
        """Job summaries from the archive. Aggregates over every session, so reading them
        needs what the session list needs: a token granting ``sessions``."""
        self._may_read(request, "sessions")
        limit = _int(request, "limit", self.limits.jobs_default, self.limits.jobs_max)
        archive = self._archive()
        summaries = await archive.run(lambda store: store.jobs(limit=limit))
        return _json(200, {"jobs": [s.as_dict() for s in summaries]})

    async def job(self, request: web.Request) -> web.Response:
        """One job's summary and its learned step profile."""
        name = request.match_info["job"]
        if not JOB_NAME.fullmatch(name):
            raise ApiError(
                400, BAD_REQUEST, f"invalid job name {_short(name)!r}: use [A-Za-z0-9_.-]{{1,128}}"
            )
        self._may_read(request, "sessions")
        archive = self._archive()
        summary = await archive.run(lambda store: store.job(name))
        if summary is None:
            raise ApiError(404, NOT_FOUND, f"no runs of job {name!r} in the archive")
        return _json(200, summary.as_dict())

    def _archive(self) -> Archive:
        if self.ctx.archive is None:
            raise ApiError(
                404,
                NOT_FOUND,
                "job summaries come from the archive, and this relay has none "
                "(set RPA_BUS_ARCHIVE_URL)",
            )
        return self.ctx.archive

    async def publish(self, request: web.Request) -> web.Response:
        sid = _sid(request)
        stream = f"session:{sid}"
        grant = self._grant(request)
        if grant is not None and not grant.allows_publish(stream):
            raise ApiError(
                403,
                FORBIDDEN,
                f"token does not grant publishing to {stream!r} "
                "(mint one with `rpa-bus token --publish`)",
            )
        self._rate(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (
            0 < len(key) <= _MAX_KEY_CHARS and key.isascii() and key.isprintable()
        ):
            raise ApiError(
                400,
                BAD_REQUEST,
                f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} printable ASCII characters",
            )
        body = await self._body(request)
        events, encoded = self._events(body, sid)
        try:
            result = await append(
                self.ctx.client,
                keys=self.ctx.keys,
                settings=self.ctx.settings.bus,
                sid=sid,
                events=events,
                encoded=encoded,
                idempotency_key=key,
                digest=body_digest(body),
            )
        except KeyReused as exc:
            raise ApiError(422, BAD_REQUEST, str(exc)) from exc
        response = _json(200, {"stream": stream, "ids": result.ids, "replayed": result.replayed})
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _body(self, request: web.Request) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = ApiError(413, TOO_LARGE, f"request body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(64 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _events(self, body: bytes, sid: str) -> tuple[list[Envelope], list[bytes]]:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, BAD_REQUEST, f"request body is not JSON: {exc}") from exc
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ApiError(400, BAD_REQUEST, "an empty list appends nothing; send events")
        limit = self.limits.max_events_per_post
        if len(items) > limit:
            raise ApiError(400, BAD_REQUEST, f"{len(items)} events in one request; at most {limit}")
        events: list[Envelope] = []
        encoded: list[bytes] = []
        ts = now_ts()
        for i, item in enumerate(items):
            where = f"event {i}: " if isinstance(value, list) else ""
            try:
                if not isinstance(item, dict):
                    raise InvalidEvent(f"an event must be a JSON object, got {_kind(item)}")
                if "ts" not in item:
                    item = {**item, "ts": ts}
                if item.get("session", sid) != sid:
                    raise InvalidEvent(
                        f"event names session {_short(str(item['session']))!r}, not {sid!r}"
                    )
                event = validate(item)
                step, total = event.get("step"), event.get("total")
                if "percent" not in event and step is not None and total is not None:
                    # As `rpa-bus emit` and the producer do: a poller reads percent.
                    event["percent"] = percent_of(step, total)
                encoded.append(encode(event))
            except InvalidInput as exc:
                raise ApiError(400, BAD_REQUEST, where + str(exc)) from exc
            events.append(event)
        return events, encoded


# -- small pure helpers ---------------------------------------------------------------------


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=JSON,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    text = message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 1] + "\u2026"
    return _json(status, {"error": {"code": code, "message": text}}, headers)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, FORBIDDEN, message, {"WWW-Authenticate": 'Bearer realm="rpa-bus"'})


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, BAD_REQUEST, f"query parameter {name!r} given more than once")
    return values[0] if values else None


def _offset(request: web.Request, name: str) -> StreamId | None:
    text = _one(request, name)
    if text is None:
        return None
    try:
        return StreamId.parse(text)
    except InvalidOffset as exc:
        raise ApiError(400, INVALID_OFFSET, f"{name}: {exc}") from exc


def _int(request: web.Request, name: str, default: int, most: int) -> int:
    text = _one(request, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 1 <= int(text) <= most:
        raise ApiError(
            400, BAD_REQUEST, f"{name} must be an integer from 1 to {most}, got {_short(text)!r}"
        )
    return int(text)


def _sid(request: web.Request) -> str:
    try:
        return validate_session_id(request.match_info["sid"])
    except InvalidSessionId as exc:
        raise ApiError(400, INVALID_STREAM, str(exc)) from exc


def _short(text: str, limit: int = 128) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _hostname(value: str, *, url: bool = False) -> str | None:
    """The lower-case host name of a ``Host`` header (or of an origin URL), without port
    or IPv6 brackets; None if it does not parse."""
    if not url and any(c in value for c in "@/?#\\ "):
        return None  # a Host header is host[:port]; "evil@127.0.0.1" is not loopback
    try:
        return urllib.parse.urlsplit(value if url else f"//{value}").hostname
    except ValueError:
        return None
