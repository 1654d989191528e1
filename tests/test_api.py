"""The HTTP API (relay/_api.py) against a real Redis, through real HTTP clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from relay import mint_token, verify_token
from relay._api import ApiLimits
from rpa_bus import Forbidden, InvalidInput, Keys
from rpa_bus.cli._app import app
from rpa_bus.cli._commands import register_all
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._api_support import ApiServer, api_server
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

KEYS = Keys()
SECRET = "a-test-secret-of-at-least-32-bytes!"


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[ApiServer]:
    async with api_server(redis_url) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=10 * UNIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5 * UNIT_S)
    try:
        yield client
    finally:
        await client.aclose()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.read()
        assert resp.content_type == "application/json", (resp.status, body[:200])
        return resp.status, orjson.loads(body), resp.headers


async def post(
    http: aiohttp.ClientSession, api: ApiServer, sid: str, body: Any, **headers: str
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await call(
        http, "POST", api.url(f"/v1/sessions/{sid}/events"), data=data, headers=headers
    )


async def xlen(r: aioredis.Redis, sid: str) -> int:
    return int(await r.xlen(KEYS.session(sid)))


def code(body: Any) -> str:
    return str(body["error"]["code"])


# -- publish, state, history --------------------------------------------------------------


async def test_publish_then_state_and_history(
    api: ApiServer, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    status, body, _ = await post(http, api, "job-1", {"type": "started", "total": 4})
    assert status == 200, body
    assert body["stream"] == "session:job-1"
    assert len(body["ids"]) == 1
    assert body["replayed"] is False
    progress = [
        {"type": "progress", "step": i, "total": 4, "message": f"screen {i}"} for i in (1, 2, 3)
    ]
    status, body, _ = await post(http, api, "job-1", progress)
    assert status == 200, body
    ids = body["ids"]
    assert len(ids) == 3
    stored = [i.decode() for i, _ in await r.xrange(KEYS.session("job-1"))]
    assert stored[1:] == ids

    status, state, _ = await call(http, "GET", api.url("/v1/sessions/job-1"))
    assert status == 200
    assert state["session"] == "job-1"
    assert state["status"] == "running"
    assert (state["step"], state["total"], state["message"]) == (3, 4, "screen 3")
    assert state["percent"] == 75.0  # computed from step and total, as emit does
    assert state["first"] == stored[0]
    assert state["last"] == stored[-1]
    assert state["started"] is not None
    assert state["updated"] is not None
    assert state["epoch"]

    # The sessions index has the started entry: the list shows it.
    status, listing, _ = await call(http, "GET", api.url("/v1/sessions"))
    assert status == 200
    assert [s["session"] for s in listing["sessions"]] == ["job-1"]

    # History: asc pages of 2 chained by next, then desc.
    url = api.url("/v1/streams/session:job-1/events")
    status, page, _ = await call(http, "GET", url, params={"limit": "2"})
    assert status == 200
    assert [e["id"] for e in page["events"]] == stored[:2]
    assert page["events"][0]["data"]["type"] == "started"
    assert (page["first"], page["last"], page["epoch"]) == (stored[0], stored[-1], state["epoch"])
    assert page["next"] == stored[1]
    status, page2, _ = await call(http, "GET", url, params={"limit": "2", "after": page["next"]})
    assert [e["id"] for e in page2["events"]] == stored[2:4]
    assert page2["next"] is None
    assert [e["data"]["message"] for e in page2["events"]] == ["screen 2", "screen 3"]
    status, back, _ = await call(http, "GET", url, params={"order": "desc", "limit": "3"})
    assert [e["id"] for e in back["events"]] == stored[::-1][:3]
    assert back["next"] == stored[1]
    status, rest, _ = await call(http, "GET", url, params={"order": "desc", "before": back["next"]})
    assert [e["id"] for e in rest["events"]] == [stored[0]]
    assert rest["next"] is None
    # Both bounds exclusive.
    status, mid, _ = await call(http, "GET", url, params={"after": stored[0], "before": stored[3]})
    assert [e["id"] for e in mid["events"]] == stored[1:3]

    # Finished: the state says so.
    status, body, _ = await post(http, api, "job-1", {"type": "finished"})
    assert status == 200
    status, state, _ = await call(http, "GET", api.url("/v1/sessions/job-1"))
    assert (state["status"], state["percent"]) == ("finished", 100.0)


async def test_unknown_session_is_404_and_empty_stream_is_an_empty_page(
    api: ApiServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, "GET", api.url("/v1/sessions/nobody"))
    assert (status, code(body)) == (404, "not_found")
    status, page, _ = await call(http, "GET", api.url("/v1/streams/session:nobody/events"))
    assert status == 200
    assert page == {
        "stream": "session:nobody",
        "epoch": None,
        "first": None,
        "last": None,
        "events": [],
        "next": None,
    }
    # The largest id as `after` and 0-0 as `before` hold nothing (Redis would refuse them).
    big = f"{2**64 - 1}-{2**64 - 1}"
    for params in ({"after": big}, {"before": "0-0"}, {"after": "5-0", "before": "5-1"}):
        status, page, _ = await call(
            http, "GET", api.url("/v1/streams/sessions/events"), params=params
        )
        assert (status, page["events"]) == (200, []), params


# -- idempotency --------------------------------------------------------------------------


async def test_retry_with_the_same_key_appends_nothing_twice(
    api: ApiServer, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    events = [{"type": "log", "message": "a"}, {"type": "log", "message": "b"}]
    status, first, headers = await post(http, api, "idem-1", events, **{"Idempotency-Key": "k1"})
    assert status == 200
    assert first["replayed"] is False
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await post(http, api, "idem-1", events, **{"Idempotency-Key": "k1"})
    assert status == 200
    assert again["ids"] == first["ids"]
    assert again["replayed"] is True
    assert headers["Idempotent-Replayed"] == "true"
    assert await xlen(r, "idem-1") == 2
    # Another key appends again; no key appends every time.
    status, other, _ = await post(http, api, "idem-1", events, **{"Idempotency-Key": "k2"})
    assert status == 200
    assert other["ids"] != first["ids"]
    await post(http, api, "idem-1", events)
    await post(http, api, "idem-1", events)
    assert await xlen(r, "idem-1") == 8
    # Plain appends leave no seq: field behind; keyed ones keep theirs and their record.
    fields = {k.decode() for k in await r.hkeys(KEYS.meta("idem-1"))}
    assert len([f for f in fields if f.startswith("seq:")]) == 2
    assert len([f for f in fields if f.startswith("idem:")]) == 2


async def test_retry_after_the_first_reply_was_lost(
    api: ApiServer, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    body = orjson.dumps([{"type": "log", "message": "x"}, {"type": "log", "message": "y"}])
    request = (
        b"POST /v1/sessions/lost-1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nIdempotency-Key: lost-key\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(request)
    await writer.drain()
    writer.close()  # the client goes away before reading the reply
    await writer.wait_closed()
    del reader

    async def applied() -> bool:
        return await xlen(r, "lost-1") == 2

    await wait_for_async(applied, what="the first attempt applied")
    stored = [i.decode() for i, _ in await r.xrange(KEYS.session("lost-1"))]
    status, again, _ = await post(http, api, "lost-1", body, **{"Idempotency-Key": "lost-key"})
    assert status == 200
    assert again == {"stream": "session:lost-1", "ids": stored, "replayed": True}
    assert await xlen(r, "lost-1") == 2


async def test_key_reused_with_another_body_is_refused_and_appends_nothing(
    api: ApiServer, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    key = {"Idempotency-Key": "reused"}
    status, _, _ = await post(http, api, "idem-2", {"type": "log", "message": "one"}, **key)
    assert status == 200
    for other in (
        {"type": "log", "message": "two"},
        [{"type": "log", "message": "one"}, {"type": "log", "message": "three"}],
    ):
        status, body, _ = await post(http, api, "idem-2", other, **key)
        assert (status, code(body)) == (422, "bad_request")
        assert "Idempotency-Key" in body["error"]["message"]
    assert await xlen(r, "idem-2") == 1


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b'"text"', 400, "bad_request"),
        (b'{"type": "progress", "step": 5, "total": 2}', 400, "bad_request"),
        (b'{"type": "Bad Type"}', 400, "bad_request"),
        (b'{"type": "log", "typo": 1}', 400, "bad_request"),
        (b'{"type": "log", "session": "someone-else"}', 400, "bad_request"),
        (b'[{"type": "log"}, 3]', 400, "bad_request"),
        (orjson.dumps([{"type": "log"}] * 6), 400, "bad_request"),
        (orjson.dumps({"type": "log", "message": "x" * 5000}), 413, "too_large"),
    ],
)
async def test_bad_bodies_are_refused_and_change_nothing(
    redis_url: str,
    http: aiohttp.ClientSession,
    r: aioredis.Redis,
    body: bytes,
    status: int,
    error: str,
) -> None:
    limits = ApiLimits(max_body_bytes=4096, max_events_per_post=5)
    async with api_server(redis_url, limits=limits) as api:
        got, reply, _ = await post(http, api, "bad-1", body, **{"Idempotency-Key": "k"})
        assert (got, code(reply)) == (status, error), reply
        assert await r.exists(KEYS.session("bad-1"), KEYS.meta("bad-1"), KEYS.sessions) == 0
        # The key was not burnt: the same key with a good body appends.
        got, reply, _ = await post(http, api, "bad-1", {"type": "log"}, **{"Idempotency-Key": "k"})
        assert got == 200
        assert reply["replayed"] is False


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/sessions/bad$id", 400, "invalid_stream"),
        ("/v1/sessions/" + "x" * 129, 400, "invalid_stream"),
        ("/v1/streams/nope:1/events", 400, "invalid_stream"),
        ("/v1/streams/session:a b/events", 400, "invalid_stream"),
        ("/v1/streams/sessions/events?after=abc", 400, "invalid_offset"),
        ("/v1/streams/sessions/events?before=1-2-3", 400, "invalid_offset"),
        ("/v1/streams/sessions/events?after=99999999999999999999999", 400, "invalid_offset"),
        ("/v1/streams/sessions/events?limit=0", 400, "bad_request"),
        ("/v1/streams/sessions/events?limit=1001", 400, "bad_request"),
        ("/v1/streams/sessions/events?limit=ten", 400, "bad_request"),
        ("/v1/streams/sessions/events?order=up", 400, "bad_request"),
        ("/v1/streams/sessions/events?after=1&after=2", 400, "bad_request"),
        ("/v1/sessions?status=lost", 400, "bad_request"),
        ("/v1/sessions?cursor=x", 400, "invalid_offset"),
        ("/v1/sessions?since=-1", 400, "invalid_offset"),
        ("/v1/sessions?until=-1", 400, "invalid_offset"),
        ("/v1/sessions?until=soon", 400, "invalid_offset"),
        ("/v1/sessions?limit=100000", 400, "bad_request"),
    ],
)
async def test_bad_requests_get_their_documented_4xx(
    api: ApiServer, http: aiohttp.ClientSession, path: str, status: int, error: str
) -> None:
    got, body, _ = await call(http, "GET", api.url(path))
    assert (got, code(body)) == (status, error), body


async def test_bad_sid_and_bad_key_on_post_append_nothing(
    api: ApiServer, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    status, body, _ = await post(http, api, "bad$id", {"type": "log"})
    assert (status, code(body)) == (400, "invalid_stream")
    status, body, _ = await post(http, api, "ok-1", {"type": "log"}, **{"Idempotency-Key": "é"})
    assert (status, code(body)) == (400, "bad_request")
    assert await r.dbsize() == 0


async def test_post_rate_limit_per_client(
    redis_url: str, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    limits = ApiLimits(posts_per_s=0.01, posts_burst=2)
    async with api_server(redis_url, limits=limits) as api:
        for _ in range(2):
            status, _, _ = await post(http, api, "rate-1", {"type": "log"})
            assert status == 200
        status, body, headers = await post(http, api, "rate-1", {"type": "log"})
        assert (status, code(body)) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
        assert await xlen(r, "rate-1") == 2


async def test_read_rate_limit_per_client_apart_from_posts(
    redis_url: str, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    limits = ApiLimits(reads_per_s=0.01, reads_burst=3, posts_per_s=0.01, posts_burst=1)
    async with api_server(redis_url, limits=limits) as api:
        status, _, _ = await post(http, api, "rd-1", {"type": "log"})
        assert status == 200
        # Reads have a bucket of their own: three of any kind, then 429 with Retry-After.
        for path in ("/v1/sessions/rd-1", "/v1/streams/session:rd-1/events", "/v1/sessions"):
            status, _, _ = await call(http, "GET", api.url(path))
            assert status == 200, path
        status, body, headers = await call(http, "GET", api.url("/v1/sessions/rd-1"))
        assert (status, code(body)) == (429, "rate_limited")
        assert "reads per second" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        # The spec is not rate-limited (a client reads it to learn the limits).
        status, _, _ = await call(http, "GET", api.url("/v1/openapi.json"))
        assert status == 200
        # Refused reads changed nothing, and the POST bucket is still its own (empty here).
        status, body, _ = await post(http, api, "rd-1", {"type": "log"})
        assert (status, code(body)) == (429, "rate_limited")
        assert "POSTs per second" in body["error"]["message"]
        assert await xlen(r, "rd-1") == 1


# -- auth, hosts, CORS --------------------------------------------------------------------


async def test_tokens_and_claims(
    redis_url: str, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    reader = mint_token(SECRET, ["session:a-*", "sessions"], ttl_s=60)
    writer = mint_token(SECRET, [], publish=["session:a-*"], ttl_s=60)
    expired = mint_token(SECRET, ["*"], publish=["*"], ttl_s=1, now_s=time.time() - 10)
    async with api_server(redis_url, secret=SECRET) as api:
        status, body, headers = await call(http, "GET", api.url("/v1/sessions/a-1"))
        assert (status, code(body)) == (401, "forbidden")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        bearer = {"Authorization": f"Bearer {expired}"}
        status, body, _ = await call(http, "GET", api.url("/v1/sessions/a-1"), headers=bearer)
        assert (status, code(body)) == (401, "forbidden")
        assert "expired" in body["error"]["message"]
        # A read token cannot publish; nothing is appended.
        bearer = {"Authorization": f"Bearer {reader}"}
        status, body, _ = await post(http, api, "a-1", {"type": "started"}, **bearer)
        assert (status, code(body)) == (403, "forbidden")
        assert await r.dbsize() == 0
        # A publish token can, but only where its claim reaches.
        bearer = {"Authorization": f"Bearer {writer}"}
        status, body, _ = await post(http, api, "a-1", {"type": "started"}, **bearer)
        assert status == 200, body
        await post(http, api, "b-1", {"type": "started"}, **{"Idempotency-Key": "z"})
        status, body, _ = await post(http, api, "b-1", {"type": "started"}, **bearer)
        assert (status, code(body)) == (403, "forbidden")
        assert await r.exists(KEYS.session("b-1")) == 0
        # The publish token cannot read.
        status, body, _ = await call(http, "GET", api.url("/v1/sessions/a-1"), headers=bearer)
        assert (status, code(body)) == (403, "forbidden")
        # The read token reads, by header or by ?token=.
        status, state, _ = await call(
            http, "GET", api.url("/v1/sessions/a-1"), params={"token": reader}
        )
        assert (status, state["status"]) == (200, "running")
        status, page, _ = await call(
            http,
            "GET",
            api.url("/v1/streams/session:a-1/events"),
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert status == 200
        assert len(page["events"]) == 1
        status, body, _ = await call(
            http, "GET", api.url("/v1/streams/monitor:h/events"), params={"token": reader}
        )
        assert (status, code(body)) == (403, "forbidden")
        # The openapi description needs no token.
        async with http.get(api.url("/v1/openapi.json")) as resp:
            assert resp.status == 200
            assert (await resp.json())["openapi"].startswith("3.1")


async def test_sessions_list_shows_only_granted_sessions(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    everything = mint_token(SECRET, ["*"], publish=["*"], ttl_s=60)
    some = mint_token(SECRET, ["sessions", "session:a-*"], ttl_s=60)
    async with api_server(redis_url, secret=SECRET) as api:
        for sid in ("a-1", "b-1", "a-2"):
            status, _, _ = await post(
                http, api, sid, {"type": "started"}, Authorization=f"Bearer {everything}"
            )
            assert status == 200
        status, listing, _ = await call(
            http, "GET", api.url("/v1/sessions"), params={"token": some}
        )
        assert [s["session"] for s in listing["sessions"]] == ["a-2", "a-1"]
        status, body, _ = await call(
            http,
            "GET",
            api.url("/v1/sessions"),
            params={"token": mint_token(SECRET, ["session:*"], ttl_s=60)},
        )
        assert (status, code(body)) == (403, "forbidden")


async def test_loopback_mode_refuses_foreign_hosts_and_origins(
    redis_url: str, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    async with api_server(redis_url, origins=("https://ops.example",)) as api:
        # DNS rebinding: a page on rebind.example resolving to 127.0.0.1.
        status, body, _ = await post(http, api, "h-1", {"type": "log"}, Host="rebind.example")
        assert (status, code(body)) == (403, "forbidden")
        # A page on another origin cannot make a loopback relay append (a "simple" POST
        # would skip the preflight).
        status, body, _ = await post(
            http, api, "h-1", {"type": "log"}, Origin="https://evil.example"
        )
        assert (status, code(body)) == (403, "forbidden")
        assert await r.dbsize() == 0
        # An allowed origin: preflight and CORS headers.
        async with http.options(
            api.url("/v1/sessions/h-1/events"),
            headers={
                "Origin": "https://ops.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "idempotency-key, content-type",
            },
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://ops.example"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Idempotency-Key" in resp.headers["Access-Control-Allow-Headers"]
        async with http.options(
            api.url("/v1/sessions/h-1"), headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
        status, body, headers = await post(
            http, api, "h-1", {"type": "log"}, Origin="https://ops.example"
        )
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "https://ops.example"
        assert "Idempotent-Replayed" in headers["Access-Control-Expose-Headers"]


# -- sessions list ------------------------------------------------------------------------


async def test_sessions_newest_first_with_filters_search_and_paging(
    api: ApiServer, http: aiohttp.ClientSession
) -> None:
    for i in range(7):
        sid = f"quote-{i}"
        events: list[dict[str, Any]] = [
            {"type": "started", "total": 3},
            {"type": "progress", "step": 1, "total": 3, "message": f"Tela {i} Dados"},
        ]
        if i % 3 == 0:
            events.append({"type": "finished"})
        elif i % 3 == 1:
            events.append({"type": "failed", "message": "portal down"})
        status, _, _ = await post(http, api, sid, events)
        assert status == 200
    url = api.url("/v1/sessions")
    status, listing, _ = await call(http, "GET", url)
    assert [s["session"] for s in listing["sessions"]] == [f"quote-{i}" for i in range(6, -1, -1)]
    assert listing["next"] is None
    status, listing, _ = await call(http, "GET", url, params={"status": "failed"})
    assert [s["session"] for s in listing["sessions"]] == ["quote-4", "quote-1"]
    assert all(s["error"] == "portal down" for s in listing["sessions"])
    status, listing, _ = await call(http, "GET", url, params={"q": "TELA 5 dados"})
    assert [s["session"] for s in listing["sessions"]] == ["quote-5"]
    status, listing, _ = await call(http, "GET", url, params={"q": "QUOTE-2"})
    assert [s["session"] for s in listing["sessions"]] == ["quote-2"]
    status, listing, _ = await call(http, "GET", url, params={"q": "portal"})
    assert [s["session"] for s in listing["sessions"]] == ["quote-4", "quote-1"]
    # Pages of 3, chained by the cursor, cover everything once.
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        status, listing, _ = await call(http, "GET", url, params=params)
        assert status == 200
        seen += [s["session"] for s in listing["sessions"]]
        cursor = listing["next"]
        if cursor is None:
            break
    assert seen == [f"quote-{i}" for i in range(6, -1, -1)]
    # since: only sessions started at or after an index id.
    status, page, _ = await call(http, "GET", api.url("/v1/streams/sessions/events"))
    started = [e for e in page["events"] if e["data"]["type"] == "started"]
    since = started[5]["id"]
    status, listing, _ = await call(http, "GET", url, params={"since": since})
    assert [s["session"] for s in listing["sessions"]] == ["quote-6", "quote-5"]
    # until: only sessions started at or before an index id; with since, a range.
    until = started[1]["id"]
    status, listing, _ = await call(http, "GET", url, params={"until": until})
    assert [s["session"] for s in listing["sessions"]] == ["quote-1", "quote-0"]
    params = {"since": started[2]["id"], "until": started[4]["id"], "limit": "2"}
    status, listing, _ = await call(http, "GET", url, params=params)
    assert [s["session"] for s in listing["sessions"]] == ["quote-4", "quote-3"]
    status, listing, _ = await call(http, "GET", url, params={**params, "cursor": listing["next"]})
    assert [s["session"] for s in listing["sessions"]] == ["quote-2"]
    assert listing["next"] is None
    # Without an archive, q sees only the last message: "Tela 1 Dados" was quote-1's
    # earlier message (it failed with "portal down" since).
    status, listing, _ = await call(http, "GET", url, params={"q": "tela 1 dados"})
    assert [s["session"] for s in listing["sessions"]] == []


# -- Redis down ---------------------------------------------------------------------------


async def test_redis_down_answers_503_and_appends_nothing(
    redis_server: EmbeddedRedis, http: aiohttp.ClientSession, r: aioredis.Redis
) -> None:
    async with api_server(redis_server.url) as api:
        status, _, _ = await post(http, api, "down-1", {"type": "started"})
        assert status == 200
        redis_server.stop()
        started = time.monotonic()
        for method, path in (
            ("GET", "/v1/sessions/down-1"),
            ("GET", "/v1/sessions"),
            ("GET", "/v1/streams/session:down-1/events"),
        ):
            status, body, headers = await call(http, method, api.url(path))
            assert (status, code(body)) == (503, "unavailable")
            assert headers["Retry-After"] == "1"
        status, body, _ = await post(
            http, api, "down-1", {"type": "log"}, **{"Idempotency-Key": "d"}
        )
        assert (status, code(body)) == (503, "unavailable")
        assert time.monotonic() - started < 10 * UNIT_S
        redis_server.start()
        assert await xlen(r, "down-1") == 1
        # Back: the API answers again without a restart, and the key was not burnt.
        status, body, _ = await post(
            http, api, "down-1", {"type": "log"}, **{"Idempotency-Key": "d"}
        )
        assert (status, body["replayed"]) == (200, False)
        assert await xlen(r, "down-1") == 2


# -- the publish claim ----------------------------------------------------------------------


def test_publish_claim_round_trip() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, [], publish=["session:job-*"], ttl_s=60))
    assert grant.allows_publish("session:job-1")
    assert not grant.allows_publish("session:other")
    assert not grant.allows("session:job-1")  # publishing does not grant reading
    assert not grant.allows_publish("session:job-1", now_s=time.time() + 120)
    both = verify_token(SECRET, mint_token(SECRET, ["sessions"], publish=["*"], ttl_s=60))
    assert both.allows("sessions")
    assert both.allows_publish("session:any")
    # A token that grants neither is refused when minted, and when made by hand.
    with pytest.raises(InvalidInput):
        mint_token(SECRET, [], ttl_s=60)
    bare = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(Forbidden, match="streams"):
        verify_token(SECRET, bare)
    text = jwt.encode(
        {"exp": int(time.time()) + 60, "publish": "session:a"}, SECRET, algorithm="HS256"
    )
    with pytest.raises(Forbidden, match="publish"):
        verify_token(SECRET, text)


def test_token_command_mints_publish_and_read_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPA_BUS_SECRET", SECRET)
    register_all()
    result = CliRunner().invoke(
        app, ["token", "--publish", "session:*", "--stream", "sessions", "--ttl", "60"]
    )
    assert result.exit_code == 0, result.output
    grant = verify_token(SECRET, result.output.strip())
    assert grant.allows_publish("session:q-1")
    assert grant.allows("sessions")
    assert not grant.allows("session:q-1")
    result = CliRunner().invoke(app, ["token", "--ttl", "60"])
    assert result.exit_code == 2
