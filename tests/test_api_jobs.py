"""The job view over HTTP, on a real relay API with a real SQLite archive and Redis: job
summaries (``GET /v1/jobs``, ``/v1/jobs/{job}``) and their auth, a session's job and ETA
basis in its state, and the new envelope fields through ``POST .../events``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from relay import mint_token
from rpa_bus import Keys, now_ts
from rpa_bus.archive import Record, open_store
from tests._api_support import api_server
from tests.conftest import UNIT_S

SECRET = "a-test-secret-of-at-least-32-bytes!"
KEYS = Keys()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.read()
        assert resp.content_type == "application/json", (resp.status, body[:200])
        return resp.status, orjson.loads(body)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10 * UNIT_S)) as s:
        yield s


async def archive_runs(url: str) -> None:
    """Two finished runs and a failed one of quote-robot, two steps each."""
    store = await open_store(url)
    try:
        ms0 = int(time.time() * 1000) - 600_000
        for i, end in enumerate(("finished", "finished", "failed")):
            ms = ms0 + i * 100_000
            events = [
                (ms, {"type": "started", "job": "quote-robot", "total": 2}),
                (ms + 1, {"type": "step", "step": 1, "phase": "start", "attempt": 1,
                          "message": "Login"}),
                (ms + 1001, {"type": "step", "step": 1, "phase": "end", "attempt": 1,
                             "outcome": "ok", "duration_s": 1.0}),
                (ms + 1002, {"type": "step", "step": 2, "phase": "start", "attempt": 1,
                             "message": "Quote"}),
                (ms + 4002, {"type": "step", "step": 2, "phase": "end", "attempt": 1,
                             "outcome": "ok", "duration_s": 3.0 + i}),
                (ms + 4003 + i * 1000, {"type": end}),
            ]  # fmt: skip
            await store.put(
                [
                    Record(
                        f"session:q-{i}",
                        "e1",
                        f"{at}-0",
                        orjson.dumps({**event, "ts": now_ts(at / 1000)}),
                    )
                    for at, event in events
                ]
            )
    finally:
        await store.close()


async def test_job_summaries_from_the_archive(
    redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    url = f"sqlite://{tmp_path / 'archive.db'}"
    await archive_runs(url)
    async with api_server(redis_url, archive_url=url) as api:
        status, body = await call(http, "GET", api.url("/v1/jobs"))
        assert status == 200, body
        [job] = body["jobs"]
        assert job == {
            "job": "quote-robot",
            "runs": 3,
            "runs_today": job["runs_today"],  # 10 minutes ago: today, unless just past 00:00
            "succeeded": 2,
            "failed": 1,
            "success_rate": 0.6667,
            "median_s": job["median_s"],
            "p90_s": job["p90_s"],
            "slowest_step": {"step": 2, "name": "Quote", "median_s": 3.5},
        }
        assert job["runs_today"] in (0, 3)
        assert 4.0 < job["median_s"] <= job["p90_s"] < 7.0
        status, one = await call(http, "GET", api.url("/v1/jobs/quote-robot"))
        assert status == 200
        assert one["profile"]["runs"] == 2
        assert one["profile"]["typical_s"] == {"1": 1.0, "2": 3.5}
        status, body = await call(http, "GET", api.url("/v1/jobs/nobody"))
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await call(http, "GET", api.url("/v1/jobs/bad%20name"))
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, body = await call(http, "GET", api.url("/v1/jobs"), params={"limit": "0"})
        assert status == 400


async def test_jobs_need_a_token_granting_sessions(
    redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    url = f"sqlite://{tmp_path / 'archive.db'}"
    await archive_runs(url)
    async with api_server(redis_url, archive_url=url, secret=SECRET) as api:
        status, body = await call(http, "GET", api.url("/v1/jobs"))
        assert status == 401
        one_session = mint_token(SECRET, ["session:q-1"], ttl_s=60)
        for path in ("/v1/jobs", "/v1/jobs/quote-robot"):
            status, body = await call(
                http, "GET", api.url(path), headers={"Authorization": f"Bearer {one_session}"}
            )
            assert (status, body["error"]["code"]) == (403, "forbidden")
        lister = mint_token(SECRET, ["sessions"], ttl_s=60)
        status, body = await call(http, "GET", api.url("/v1/jobs"), params={"token": lister})
        assert status == 200
        assert [j["job"] for j in body["jobs"]] == ["quote-robot"]


async def test_without_an_archive_jobs_are_not_found(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    async with api_server(redis_url) as api:
        status, body = await call(http, "GET", api.url("/v1/jobs"))
        assert (status, body["error"]["code"]) == (404, "not_found")
        assert "RPA_BUS_ARCHIVE_URL" in body["error"]["message"]


async def test_posted_job_view_events_land_and_fold(
    redis_url: str, http: aiohttp.ClientSession
) -> None:
    events = [
        {"type": "started", "job": "quote-robot", "total": 3},
        {"type": "step", "step": 1, "phase": "start", "attempt": 1, "message": "Login",
         "total": 3, "percent": 0.0, "eta_s": 30.0, "eta_runs": 12},
        {"type": "log", "level": "warning", "step": 1, "message": "slow page"},
        {"type": "artifact", "step": 1,
         "artifact": {"kind": "screenshot", "url": "http://site.test/1.png", "mime": "image/png"}},
        {"type": "step", "step": 1, "phase": "end", "attempt": 1, "outcome": "retried",
         "duration_s": 2.5},
    ]  # fmt: skip
    async with api_server(redis_url) as api:
        status, body = await call(
            http, "POST", api.url("/v1/sessions/q-post/events"), data=orjson.dumps(events)
        )
        assert status == 200, body
        r = aioredis.Redis.from_url(redis_url)
        try:
            stored = [orjson.loads(f[b"e"]) for _, f in await r.xrange(KEYS.session("q-post"))]
        finally:
            await r.aclose()
        assert [{k: v for k, v in e.items() if k != "ts"} for e in stored] == events
        status, state = await call(http, "GET", api.url("/v1/sessions/q-post"))
        assert status == 200
        assert (state["job"], state["eta_runs"], state["eta_s"]) == ("quote-robot", 12, 30.0)
        bad = [
            {"type": "step", "step": 1},  # no phase
            {"type": "step", "step": 1, "phase": "end"},  # no outcome
            {"type": "log", "level": "loud", "message": "x"},
            {"type": "artifact", "artifact": {"kind": "screenshot"}},  # no url or path
            {"type": "started", "job": "has space"},
            {"type": "step", "step": 1, "phase": "start", "attempt": 0},
        ]
        for event in bad:
            status, body = await call(
                http, "POST", api.url("/v1/sessions/q-post/events"), data=orjson.dumps(event)
            )
            assert (status, body["error"]["code"]) == (400, "bad_request"), event
