"""The HTTP API's limits from the environment (RPA_BUS_API_*): read, range-checked with a
clear ConfigError, and applied by a real relay (real Redis, real HTTP client)."""

from __future__ import annotations

import os
import re
import subprocess

import httpx
import pytest
import redis.asyncio as aioredis

from relay import ApiLimits, Relay, RelaySettings
from rpa_bus import ConfigError, Keys
from tests._relay_support import close_relay, relay_settings
from tests._service import RPA_BUS
from tests.conftest import UNIT_S


def test_limits_from_env_and_defaults() -> None:
    assert RelaySettings.from_env({}).api == ApiLimits()
    api = RelaySettings.from_env(
        {
            "RPA_BUS_API_MAX_BODY_BYTES": "2048",
            "RPA_BUS_API_MAX_EVENTS_PER_POST": "3",
            "RPA_BUS_API_POSTS_PER_S": "0.5",
            "RPA_BUS_API_POSTS_BURST": "7",
            "RPA_BUS_API_READS_PER_S": "2.5",
            "RPA_BUS_API_READS_BURST": "9",
        }
    ).api
    assert (api.max_body_bytes, api.max_events_per_post) == (2048, 3)
    assert (api.posts_per_s, api.posts_burst) == (0.5, 7)
    assert (api.reads_per_s, api.reads_burst) == (2.5, 9)
    assert api.page_max == ApiLimits().page_max  # the rest keep their defaults


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MAX_BODY_BYTES", "1MB", "is not a whole number"),
        ("MAX_BODY_BYTES", "100", "outside 1024..67108864"),
        ("MAX_BODY_BYTES", str(65 * 1024 * 1024), "outside 1024..67108864"),
        ("MAX_EVENTS_PER_POST", "0", "outside 1..10000"),
        ("MAX_EVENTS_PER_POST", "2.5", "is not a whole number"),
        ("POSTS_PER_S", "fast", "is not a number"),
        ("POSTS_PER_S", "0.0", "outside 0.001..1000000"),
        ("POSTS_BURST", "-1", "outside 1..1000000"),
        ("READS_PER_S", "0.0", "outside 0.001..1000000"),
        ("READS_BURST", "many", "is not a whole number"),
    ],
)
def test_bad_values_are_a_clear_config_error(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=rf"RPA_BUS_API_{name}='?{re.escape(value)}'? .*{says}"):
        RelaySettings.from_env({f"RPA_BUS_API_{name}": value})


def test_rpa_bus_relay_stops_at_start_on_a_bad_limit() -> None:
    env = {**os.environ, "RPA_BUS_API_MAX_EVENTS_PER_POST": "many"}
    done = subprocess.run(
        [RPA_BUS, "relay", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT_S,
    )
    assert done.returncode == 2
    assert "RPA_BUS_API_MAX_EVENTS_PER_POST='many' is not a whole number" in done.stderr


def test_bad_limits_in_code_are_refused_too() -> None:
    for bad in (
        {"max_body_bytes": 10},
        {"max_events_per_post": 0},
        {"posts_per_s": 0.0},
        {"posts_burst": 0},
        {"reads_per_s": -1.0},
        {"reads_burst": 0},
        {"page_default": 2000},
    ):
        with pytest.raises(ConfigError):
            ApiLimits(**bad)  # type: ignore[arg-type]


async def test_a_relay_applies_the_limits_it_read(redis_url: str) -> None:
    api = RelaySettings.from_env(
        {
            "RPA_BUS_API_MAX_BODY_BYTES": "2048",
            "RPA_BUS_API_MAX_EVENTS_PER_POST": "2",
            "RPA_BUS_API_POSTS_PER_S": "0.01",
            "RPA_BUS_API_POSTS_BURST": "3",
        }
    ).api
    r = Relay(relay_settings(redis_url, api=api))
    await r.start()
    client = aioredis.Redis.from_url(redis_url)
    key = Keys().session("lim-1")
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{r.port}", timeout=5 * UNIT_S
        ) as http:
            spec = (await http.get("/v1/openapi.json")).json()
            body = spec["paths"]["/v1/sessions/{sid}/events"]["post"]["requestBody"]
            assert "2048 bytes and 2 events" in body["description"]
            url = "/v1/sessions/lim-1/events"
            three = [{"type": "log", "message": str(i)} for i in range(3)]
            too_many = await http.post(url, json=three)
            assert too_many.status_code == 400
            assert too_many.json()["error"]["code"] == "bad_request"
            too_large = await http.post(url, json={"type": "log", "message": "x" * 3000})
            assert too_large.status_code == 413
            assert too_large.json()["error"]["code"] == "too_large"
            assert await client.exists(key) == 0  # nothing appended
            ok = await http.post(url, json=three[:2])
            assert ok.status_code == 200, ok.text
            limited = await http.post(url, json={"type": "log"})
            assert limited.status_code == 429  # the burst of 3 is spent
            assert limited.json()["error"]["code"] == "rate_limited"
            assert await client.xlen(key) == 2
    finally:
        await client.aclose()
        await close_relay(r)
