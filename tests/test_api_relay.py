"""The HTTP API inside the relay (one port): what a job POSTs, a WebSocket subscriber and
the history pages see, once and in order; the relay serves the API's own description."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from relay import ApiLimits, AsyncSubscription, Event, Item, Live, Relay
from relay._openapi import openapi_spec
from tests._relay_support import close_relay, relay_settings
from tests._wait import wait_for_async
from tests.conftest import UNIT_S


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    r = Relay(relay_settings(redis_url, origins=("https://ops.example",)))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


async def test_posted_events_reach_subscribers_and_history(relay: Relay) -> None:
    base = f"http://127.0.0.1:{relay.port}"
    items: list[Item] = []
    sub = AsyncSubscription(base, ["session:web-1", "sessions"])

    async def collect() -> None:
        async for item in sub:
            items.append(item)

    task = asyncio.create_task(collect())
    timeout = aiohttp.ClientTimeout(total=10 * UNIT_S)
    try:
        await wait_for_async(lambda: sum(isinstance(i, Live) for i in items) == 2, what="live")
        async with aiohttp.ClientSession(timeout=timeout) as http:
            posted: list[str] = []
            for body in (
                {"type": "started", "total": 2},
                [{"type": "progress", "step": 1, "total": 2, "message": "Tela 1"}],
                {"type": "finished"},
            ):
                async with http.post(
                    f"{base}/v1/sessions/web-1/events",
                    data=orjson.dumps(body),
                    headers={"Idempotency-Key": orjson.dumps(body).decode()},
                ) as resp:
                    assert resp.status == 200
                    posted += (await resp.json())["ids"]
            await wait_for_async(
                lambda: (
                    [i.id for i in items if isinstance(i, Event) and i.stream != "sessions"]
                    == posted
                ),
                what="the posted events over WebSocket",
            )
            async with http.get(f"{base}/v1/sessions/web-1") as resp:
                state = await resp.json()
            assert (state["status"], state["step"], state["percent"]) == ("finished", 1, 100.0)
            assert state["last"] == posted[-1]
            async with http.get(f"{base}/v1/streams/session:web-1/events") as resp:
                page = await resp.json()
            assert [e["id"] for e in page["events"]] == posted
            # The relay serves the description the fuzzer checks it against.
            async with http.get(f"{base}/v1/openapi.json") as resp:
                assert resp.status == 200
                assert await resp.json() == orjson.loads(orjson.dumps(openapi_spec(ApiLimits())))
            # CORS through the relay's own middleware.
            async with http.options(
                f"{base}/v1/sessions/web-1/events",
                headers={"Origin": "https://ops.example", "Access-Control-Request-Method": "POST"},
            ) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "https://ops.example"
            async with http.post(
                f"{base}/v1/sessions/web-1/events",
                data=b'{"type": "log"}',
                headers={"Origin": "https://evil.example"},
            ) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "forbidden"
        # The sessions index stream carried started and finished for the posted session.
        await wait_for_async(
            lambda: (
                [
                    i.data["type"]
                    for i in items
                    if isinstance(i, Event) and i.stream == "sessions" and i.data
                ]
                == ["started", "finished"]
            ),
            what="index entries",
        )
    finally:
        await sub.close()
        await asyncio.wait_for(task, 5 * UNIT_S)
