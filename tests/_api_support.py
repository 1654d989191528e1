"""An aiohttp application serving the HTTP API (relay/_api.py) on 127.0.0.1:0 against a
real Redis, for tests that talk to it with real HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from relay import RelaySettings
from relay._api import ApiContext, ApiLimits, add_routes
from relay._archive import Archive
from rpa_bus import Settings
from rpa_bus.redisio import AsyncClient, async_client, close_async
from tests.conftest import UNIT_S


class ApiServer:
    def __init__(self, runner: web.AppRunner, client: AsyncClient, port: int) -> None:
        self.runner = runner
        self.client = client
        self.port = port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path


@asynccontextmanager
async def api_server(
    redis_url: str,
    *,
    limits: ApiLimits | None = None,
    secret: str | None = None,
    archive_url: str | None = None,
    **relay: Any,
) -> AsyncIterator[ApiServer]:
    """``archive_url``: the API reads that archive too (``ApiContext.archive``)."""
    bus = Settings(
        redis_url=redis_url,
        connect_timeout_s=0.5 * UNIT_S,
        socket_timeout_s=1.0 * UNIT_S,
        secret=secret,
    )
    settings = RelaySettings(bus=bus, host="127.0.0.1", port=0, block_ms=200, **relay)
    client = async_client(bus)
    archive = Archive(archive_url) if archive_url is not None else None
    app = web.Application()
    add_routes(
        app,
        ApiContext(
            client=client,
            keys=bus.keys,
            settings=settings,
            limits=limits or ApiLimits(),
            archive=archive,
        ),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield ApiServer(runner, client, port)
    finally:
        await runner.cleanup()
        await close_async(client)
        if archive is not None:
            await archive.close()
