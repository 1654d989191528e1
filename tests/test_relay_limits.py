"""Relay security and limits, HTTP endpoints and settings (real Redis, real clients)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay import Relay, RelaySettings, mint_token, verify_token
from relay._http import STATIC_DIR, resolve_static, static_response
from rpa_bus import ConfigError, Forbidden, Settings
from tests._relay_support import Client, Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

SECRET = "test-secret-that-is-long-enough-for-hs256!"


@pytest.fixture
async def secure_relay(redis_url: str) -> AsyncIterator[Relay]:
    settings = relay_settings(redis_url)
    r = Relay(settings.with_(bus=settings.bus.with_(secret=SECRET)))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


async def limited(redis_url: str, **changes: object) -> Relay:
    r = Relay(relay_settings(redis_url, **changes))
    await r.start()
    return r


# -- auth ---------------------------------------------------------------------------------


async def test_without_token_subscribe_is_forbidden(secure_relay: Relay) -> None:
    c = await Client.open(secure_relay.url)
    await c.send(op="subscribe", stream="session:a")
    error = await c.recv()
    assert error["code"] == "forbidden"
    assert error["stream"] == "session:a"
    await c.close()


async def test_query_token_grants_exact_names_and_patterns(
    secure_relay: Relay, writer: Writer
) -> None:
    token = mint_token(SECRET, ["session:a", "monitor:*"], ttl_s=60)
    c = await Client.open(f"{secure_relay.url}?token={token}&stream=session:a")
    await c.expect("live")
    await c.send(op="subscribe", stream="monitor:web-1")
    await c.expect("live")
    await c.send(op="subscribe", stream="session:b")
    refused = await c.expect("error")
    assert refused["code"] == "forbidden"
    assert refused["stream"] == "session:b"
    await c.close()


async def test_auth_op_and_bad_tokens(secure_relay: Relay) -> None:
    c = await Client.open(secure_relay.url)
    await c.send(op="auth", token="not-a-jwt")
    assert (await c.recv())["code"] == "forbidden"
    other = mint_token("another-secret-also-long-enough-!!!", ["*"], ttl_s=60)
    await c.send(op="auth", token=other)
    assert (await c.recv())["code"] == "forbidden"
    expired = mint_token(SECRET, ["*"], ttl_s=10, now_s=time.time() - 60)
    await c.send(op="auth", token=expired)
    error = await c.recv()
    assert error["code"] == "forbidden"
    assert "expired" in error["message"]
    await c.send(op="auth", token=mint_token(SECRET, ["*"], ttl_s=60))
    await c.send(op="subscribe", stream="sessions")
    assert (await c.recv())["type"] == "subscribed"
    await c.close()


async def test_subscription_ends_when_its_token_expires(secure_relay: Relay) -> None:
    c = await Client.open(secure_relay.url)
    await c.send(op="auth", token=mint_token(SECRET, ["sessions"], ttl_s=1.5))
    await c.send(op="subscribe", stream="sessions")
    await c.expect("live")
    error = await c.expect("error", 5)
    assert error["code"] == "forbidden"
    assert error["message"] == "token expired"
    await c.send(op="subscribe", stream="sessions")
    assert (await c.expect("error"))["code"] == "forbidden"
    await c.close()


def test_token_round_trip_and_patterns() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, ["session:job-*", "sessions"], ttl_s=60))
    assert grant.allows("session:job-1")
    assert grant.allows("sessions")
    assert not grant.allows("session:other")
    assert not grant.allows("monitor:x")
    assert not grant.allows("sessions", now_s=time.time() + 120)
    with pytest.raises(Forbidden):
        verify_token(SECRET, "")


def test_secret_is_required_off_loopback() -> None:
    with pytest.raises(ConfigError, match="RPA_BUS_SECRET"):
        RelaySettings(host="0.0.0.0").check_bind()
    RelaySettings(host="0.0.0.0", insecure=True).check_bind()
    RelaySettings(host="0.0.0.0", bus=Settings(secret=SECRET)).check_bind()
    RelaySettings(host="::1").check_bind()
    RelaySettings(host="localhost").check_bind()


def test_settings_from_env() -> None:
    s = RelaySettings.from_env(
        {
            "RPA_BUS_REDIS_URL": "redis://example:1/0",
            "RPA_BUS_RELAY_PORT": "9000",
            "RPA_BUS_RELAY_NAME": "edge",
            "RPA_BUS_RELAY_ORIGINS": "https://a.example, https://b.example",
            "RPA_BUS_RELAY_PING_INTERVAL_S": "0",
            "RPA_BUS_RELAY_QUEUE_FRAMES": "64",
            "RPA_BUS_RELAY_TOTAL_QUEUE_BYTES": "0",
        },
        port=9100,
    )
    assert s.port == 9100
    assert s.name == "edge"
    assert s.bus.redis_url == "redis://example:1/0"
    assert s.origins == ("https://a.example", "https://b.example")
    assert s.ping_interval_s is None
    assert s.queue_frames == 64
    assert s.total_queue_bytes == 0
    assert RelaySettings().total_queue_bytes == 256 * 1024 * 1024
    with pytest.raises(ConfigError):
        RelaySettings.from_env({"RPA_BUS_RELAY_PORT": "x"})
    with pytest.raises(ConfigError, match="block_ms"):
        RelaySettings(block_ms=5000)


def test_removed_websockets_server_is_refused() -> None:
    """The websockets server was removed (issue 13): asking for it fails at start with a
    message that says so, instead of silently serving aiohttp."""
    with pytest.raises(ConfigError, match="websockets server was removed"):
        RelaySettings.from_env({"RPA_BUS_RELAY_SERVER": "websockets"})
    with pytest.raises(ConfigError, match="Unset RPA_BUS_RELAY_SERVER"):
        RelaySettings.from_env({"RPA_BUS_RELAY_SERVER": "tornado"})
    # The only server, named explicitly, is still accepted.
    assert RelaySettings.from_env({"RPA_BUS_RELAY_SERVER": "aiohttp"}).port == RelaySettings().port


# -- limits -------------------------------------------------------------------------------


async def test_subscribe_storm_waits_for_the_bounded_redis_pool(redis_url: str) -> None:
    """300 connections subscribing at once through a pool of 4 Redis connections: each
    waits its turn (no "Too many connections", no ``unavailable``), every one goes live,
    and the relay never holds more than 4 connections to Redis."""
    import redis.asyncio as aioredis

    r = Relay(relay_settings(redis_url, redis_connections=4))
    await r.start()
    probe = aioredis.Redis.from_url(redis_url)
    try:
        n = 300
        urls = [f"{r.url}?stream=session:storm{i % 50}&from=$" for i in range(n)]
        clients = await asyncio.gather(*(Client.open(u) for u in urls))
        ends = await asyncio.gather(
            *(c.until(lambda f: f["type"] in ("live", "error"), 20.0) for c in clients)
        )
        assert [f["type"] for f in ends] == ["live"] * n, [f for f in ends if f["type"] != "live"]
        # The relay's connections plus this probe's one.
        assert int((await probe.info("clients"))["connected_clients"]) <= 4 + 1
        await asyncio.gather(*(c.close() for c in clients))
    finally:
        await probe.aclose()
        await close_relay(r)


def test_redis_connections_setting() -> None:
    assert RelaySettings.from_env({"RPA_BUS_RELAY_REDIS_CONNECTIONS": "8"}).redis_connections == 8
    with pytest.raises(ConfigError, match="redis_connections"):
        RelaySettings(redis_connections=2)


async def test_too_many_subscriptions(redis_url: str) -> None:
    r = await limited(redis_url, max_subscriptions=2)
    try:
        c = await Client.open(r.url)
        for stream in ("session:a", "session:b", "session:c"):
            await c.send(op="subscribe", stream=stream)
        error = await c.expect("error")
        assert error["code"] == "too_many_subscriptions"
        assert error["stream"] == "session:c"
        await c.send(op="unsubscribe", stream="session:a")
        await c.send(op="subscribe", stream="session:c")
        await c.until(lambda f: f["type"] == "live" and f["stream"] == "session:c")
        await c.close()
    finally:
        await close_relay(r)


async def test_op_rate_limit(redis_url: str) -> None:
    r = await limited(redis_url, ops_per_s=2.0, ops_burst=5)
    try:
        c = await Client.open(r.url)
        for _ in range(12):
            await c.send(op="ping")
        frames = [await c.recv() for _ in range(6)]
        assert [f["type"] for f in frames].count("pong") == 5
        assert {"type": "error", "code": "rate_limited"}.items() <= frames[-1].items()
        await asyncio.sleep(0.6 * UNIT_S)  # not a wait for something: the bucket refills
        await c.send(op="ping")
        assert await c.recv() == {"type": "pong"}
        await c.close()
    finally:
        await close_relay(r)


async def test_oversized_frame_closes_1009(redis_url: str) -> None:
    r = await limited(redis_url, max_frame_bytes=1024)
    try:
        c = await Client.open(r.url)
        await c.ws.send('{"op": "ping", "pad": "' + "x" * 2000 + '"}')
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1009
    finally:
        await close_relay(r)


async def test_connections_per_ip(redis_url: str) -> None:
    r = await limited(redis_url, max_connections_per_ip=2)
    try:
        a, b = await Client.open(r.url), await Client.open(r.url)
        with pytest.raises(InvalidStatus) as refused:
            await Client.open(r.url)
        assert refused.value.response.status_code == 429
        await a.close()
        await wait_for_async(lambda: r.stats.connections < 2, what="a closed connection")
        c = await Client.open(r.url)
        await c.close()
        await b.close()
    finally:
        await close_relay(r)


async def test_origin_allow_list(redis_url: str) -> None:
    r = await limited(redis_url, origins=("https://ok.example",))
    try:
        with pytest.raises(InvalidStatus) as refused:
            await Client.open(r.url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        for origin in ("https://ok.example", f"http://127.0.0.1:{r.port}", None):
            c = await Client.open(r.url, origin=origin)
            await c.send(op="ping")
            assert await c.recv() == {"type": "pong"}
            await c.close()
    finally:
        await close_relay(r)


async def test_dead_peer_is_dropped_by_keepalive(redis_url: str) -> None:
    r = await limited(redis_url, ping_interval_s=0.2, ping_timeout_s=0.2)
    try:
        reader, writer_ = await asyncio.open_connection("127.0.0.1", r.port)
        writer_.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer_.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        await wait_for_async(lambda: r.stats.connections == 1, what="1 connection", timeout_s=2)
        # Never answer the pings: the relay must give up on us.
        await wait_for_async(lambda: r.stats.connections == 0, what="dropped", timeout_s=3)
        writer_.close()
    finally:
        await close_relay(r)


# -- HTTP ---------------------------------------------------------------------------------


async def http_get(url: str) -> tuple[int, str, bytes]:
    def fetch() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5 * UNIT_S) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()

    return await asyncio.to_thread(fetch)


async def test_healthz_reports_redis(relay: Relay, redis_server: object) -> None:
    base = f"http://127.0.0.1:{relay.port}"
    status, kind, body = await http_get(base + "/healthz")
    assert status == 200
    assert kind == "application/json"
    health = orjson.loads(body)
    assert health["status"] == "ok"
    assert health["redis"] is True
    assert "lag_s" in health
    assert health["archive"] is None  # no RPA_BUS_ARCHIVE_URL
    redis_server.stop()  # type: ignore[attr-defined]
    status, _, body = await http_get(base + "/healthz")
    assert status == 503
    assert orjson.loads(body)["redis"] is False


async def test_metrics_are_per_relay(redis_url: str, writer: Writer) -> None:
    one = await limited(redis_url, name="m1")
    two = await limited(redis_url, name="m2")
    try:
        c = await Client.open(one.url)
        await c.send(op="subscribe", stream="session:x")
        await c.expect("live")
        last = await writer.add("session:x")
        await c.until(lambda f: f.get("id") == last)
        status, kind, body = await http_get(f"http://127.0.0.1:{one.port}/metrics")
        assert status == 200
        assert kind.startswith("text/plain")
        text = body.decode()
        for name in (
            'rpa_relay_connections{relay="m1"} 1.0',
            'rpa_relay_subscriptions{relay="m1"} 1.0',
            'rpa_relay_events_out_total{relay="m1"} 1.0',
            'rpa_relay_replays_total{outcome="live",relay="m1"} 1.0',
            "rpa_relay_gaps_total",
            "rpa_relay_resets_total",
            "rpa_relay_slow_switches_total",
            "rpa_relay_lag_seconds",
        ):
            assert name in text, name
        _, _, other = await http_get(f"http://127.0.0.1:{two.port}/metrics")
        assert 'rpa_relay_connections{relay="m2"} 0.0' in other.decode()
        assert "m1" not in other.decode()
        await c.close()
    finally:
        await close_relay(one)
        await close_relay(two)


async def test_static_files(relay: Relay) -> None:
    base = f"http://127.0.0.1:{relay.port}"
    status, kind, body = await http_get(base + "/")
    assert status == 200
    assert kind == "text/html; charset=utf-8"
    index = STATIC_DIR / "index.html"
    if index.is_file():
        assert body == index.read_bytes()
    status, kind, body = await http_get(base + "/rpa-bus.js")
    assert status == 200
    assert kind == "text/javascript; charset=utf-8"
    assert body == (STATIC_DIR / "rpa-bus.js").read_bytes()
    for path in ("/nope.js", "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/.hidden", "//etc"):
        status, _, _ = await http_get(base + path)
        assert status == 404, path


async def test_placeholder_when_dashboard_missing(tmp_path: Path) -> None:
    page = await static_response("/", tmp_path)
    assert page.status == 200
    assert b"rpa-bus relay" in page.body
    (tmp_path / "app.css").write_text("body{}")
    assert resolve_static("/app.css", tmp_path) == tmp_path / "app.css"
    assert resolve_static("/../app.css", tmp_path / "sub") is None
    assert (await static_response("/missing.css", tmp_path)).status == 404
