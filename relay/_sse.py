"""The SSE door (stub while the server lands)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from relay._server import AiohttpServer


class SseDoor:
    def end(self) -> None:
        pass


def handler(server: AiohttpServer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def sse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    return sse
