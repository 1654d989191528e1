"""The SSE door's edges against a real relay: ``gap`` for a client resuming from an id
trimmed away (no archive), ``too_many_subscriptions`` (too many ``stream=``), the per-IP
connection limit (429, shared with /ws), and a PostgreSQL archive that is down during an
SSE replay (``unavailable``, then the replay completes). Every refusal is checked against
the OpenAPI description the relay serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from websockets.exceptions import InvalidStatus

from relay._api import ApiLimits
from relay._openapi import openapi_spec
from relay._sse import decode_positions
from tests._postgres import LocalPostgres
from tests._relay_support import Client, Writer, http, relay_on, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from tests.test_archive_read import put_archive
from tests.test_relay_sse import is_event

__all__ = ["writer"]

SPEC = openapi_spec(ApiLimits())
S = "session:sse-lim"


async def read_until(
    events: AsyncIterator[ServerSentEvent], seen: list[ServerSentEvent], pred: Any,
    timeout_s: float = 10.0,
) -> ServerSentEvent:  # fmt: skip
    deadline = time.monotonic() + timeout_s * UNIT_S
    while True:
        async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
            sse = await anext(events)
        seen.append(sse)
        if pred(sse):
            return sse


def ids_of(seen: list[ServerSentEvent], stream: str = S) -> list[str]:
    frames = [orjson.loads(s.data) for s in seen if s.event == "event"]
    return [f["id"] for f in frames if f["stream"] == stream]


def assert_described(status: int, body: dict[str, Any]) -> None:
    """``status`` is a response of GET /v1/sse in the description, with the Error body."""
    responses = SPEC["paths"]["/v1/sse"]["get"]["responses"]
    assert str(status) in responses, f"/v1/sse answers {status}, not in the description"
    codes = SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert body["error"]["code"] in codes["enum"], body
    assert isinstance(body["error"]["message"], str)


# ---------------------------------------------------------------------------------------


async def test_resuming_from_an_id_trimmed_away_sends_gap_then_the_rest(
    redis_url: str, writer: Writer
) -> None:
    """No archive: a client read 10 events, went away; meanwhile the stream was trimmed
    past its position. With its Last-Event-ID it gets ``gap`` (from its id to the first
    retained one), then every retained event, once, in order; its next id resumes cleanly."""
    ids = [await writer.add(S, message=f"m{i}") for i in range(10)]
    seen: list[ServerSentEvent] = []
    async with relay_on(redis_url) as r, http(r) as client:
        async with aconnect_sse(client, "GET", "/v1/sse", params={"stream": S, "from": "0"}) as src:
            await read_until(src.aiter_sse(), seen, is_event(S, ids[-1]))
        last_id = seen[-1].id
        assert decode_positions(last_id)[S][0] == ids[-1]
        ids += [await writer.add(S, message=f"m{i}") for i in range(10, 40)]
        await writer.r.xtrim(writer.key(S), maxlen=8, approximate=False)
        kept = await writer.ids(S)
        assert kept == ids[-8:]
        again: list[ServerSentEvent] = []
        headers = {"Last-Event-ID": last_id}
        async with aconnect_sse(client, "GET", "/v1/sse", params={"stream": S},
                                headers=headers) as src:  # fmt: skip
            events = src.aiter_sse()
            await read_until(events, again, is_event(S, kept[-1]))
            await read_until(events, again, lambda s: s.event == "live")
            more = await writer.add(S, message="after")
            await read_until(events, again, is_event(S, more))
        gaps = [orjson.loads(s.data) for s in again if s.event == "gap"]
        assert gaps == [{"type": "gap", "stream": S, "from": ids[9], "first": kept[0]}]
        kinds = [s.event for s in again]
        assert kinds.index("gap") < kinds.index("event")
        assert ids_of(again) == [*kept, more]
        # The gap message moves no position (no id:); the events after it do.
        assert next(s for s in again if s.event == "gap").id in ("", None, last_id)
        final = again[-1].id
        assert decode_positions(final)[S][0] == more
        # Resuming from the newest id: nothing missing, so no gap.
        third: list[ServerSentEvent] = []
        newest = await writer.add(S, message="newest")
        async with aconnect_sse(client, "GET", "/v1/sse", params={"stream": S},
                                headers={"Last-Event-ID": final}) as src:  # fmt: skip
            await read_until(src.aiter_sse(), third, is_event(S, newest))
        assert ids_of(third) == [newest]
        assert "gap" not in [s.event for s in third]


async def test_too_many_stream_params_is_too_many_subscriptions(redis_url: str) -> None:
    async with relay_on(redis_url, max_subscriptions=2) as r, http(r) as client:
        three = [("stream", f"session:t{i}") for i in range(3)]
        reply = await client.get("/v1/sse", params=three)
        assert reply.status_code == 400
        assert reply.headers["content-type"].startswith("application/json")
        body = reply.json()
        assert body["error"]["code"] == "too_many_subscriptions"
        assert_described(reply.status_code, body)
        assert r.stats.subscriptions == 0
        # The same name twice counts once: two streams are within the limit.
        two = [("stream", "session:t0"), ("stream", "session:t1"), ("stream", "session:t0")]
        async with aconnect_sse(client, "GET", "/v1/sse", params=two) as src:
            assert src.response.status_code == 200
            seen: list[ServerSentEvent] = []
            live: set[str] = set()

            def both_live(sse: ServerSentEvent) -> bool:
                if sse.event == "live":
                    live.add(orjson.loads(sse.data)["stream"])
                return live == {"session:t0", "session:t1"}

            await read_until(src.aiter_sse(), seen, both_live)
            assert r.stats.subscriptions == 2


async def test_per_ip_connection_limit_answers_429_over_sse_shared_with_websockets(
    redis_url: str,
) -> None:
    async with relay_on(redis_url, max_connections_per_ip=2) as r, http(r) as client:
        params = {"stream": S}
        async with aconnect_sse(client, "GET", "/v1/sse", params=params) as first:
            assert first.response.status_code == 200
            ws = await Client.open(r.url)
            try:
                await wait_for_async(lambda: r.stats.connections == 2, what="two connections")
                refused = await client.get("/v1/sse", params=params)
                assert refused.status_code == 429, refused.text
                assert refused.headers["content-type"].startswith("application/json")
                body = refused.json()
                assert body["error"]["code"] == "rate_limited"
                assert_described(refused.status_code, body)
                # And the WebSocket door counts the SSE response too.
                with pytest.raises(InvalidStatus) as no_ws:
                    await Client.open(r.url)
                assert no_ws.value.response.status_code == 429
            finally:
                await ws.close()
            await wait_for_async(lambda: r.stats.connections < 2, what="the WebSocket gone")
            async with aconnect_sse(client, "GET", "/v1/sse", params=params) as second:
                assert second.response.status_code == 200
                seen: list[ServerSentEvent] = []
                await read_until(second.aiter_sse(), seen, lambda s: s.event == "live")
        await wait_for_async(lambda: r.stats.connections == 0, what="every response ended")


@pytest.mark.slow
async def test_store_down_during_an_sse_replay_says_unavailable_then_completes(
    redis_url: str, writer: Writer, tmp_path: Path, postgres_server: LocalPostgres,
    postgres_url: str,
) -> None:  # fmt: skip
    """The SSE twin of test_archive_read's WebSocket test: the first 1,500 of 2,000 events
    are only in the (PostgreSQL) archive; the store is stopped: a replay from 0 sends
    ``unavailable`` and no event; the store returns: every event follows, once, in order,
    no gap, and the last id resumes in Redis."""
    stream = "session:sse-pg"
    epoch = await writer.start("sse-pg")
    ids = await writer.add_many(stream, 2_000)
    await writer.r.xtrim(writer.key(stream), minid=ids[1_500], approximate=False)
    await put_archive(postgres_url, stream, epoch, ids[:1_500])
    seen: list[ServerSentEvent] = []
    try:
        async with relay_on(redis_url, postgres_url) as r, http(r) as client:
            postgres_server.stop()
            params = {"stream": stream, "from": "0"}
            async with aconnect_sse(client, "GET", "/v1/sse", params=params) as src:
                assert src.response.status_code == 200
                events = src.aiter_sse()
                down = await read_until(events, seen, lambda s: s.event == "unavailable", 30)
                frame = orjson.loads(down.data)
                assert frame["code"] == "unavailable"
                assert "archive" in frame["message"]
                assert ids_of(seen, stream) == []  # nothing skipped to
                postgres_server.start()
                await read_until(events, seen, is_event(stream, ids[-1]), timeout_s=60)
                await read_until(events, seen, lambda s: s.event == "live")
                later = await writer.add(stream, message="live")
                await read_until(events, seen, is_event(stream, later))
            got = ids_of(seen, stream)
            assert len(got) == len(set(got)) == 2_001
            assert got == [*ids, later]
            assert "gap" not in [s.event for s in seen]
            assert decode_positions(seen[-1].id)[stream][0] == later
    finally:
        if not postgres_server.running():
            postgres_server.start()
