"""Relay security (issue 12): grants over time, hostile input, floods and odd HTTP.

Real Redis, real WebSocket clients, real HTTP over sockets; waits are bounded by UNIT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay import Relay, mint_token, verify_token
from rpa_bus import Forbidden
from tests._relay_support import Client, Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

SECRET = "test-secret-that-is-long-enough-for-hs256!"
Q1, Q2 = "session:quote-1", "session:quote-2"


@pytest.fixture
async def secure_relay(redis_url: str) -> AsyncIterator[Relay]:
    settings = relay_settings(redis_url)
    r = Relay(settings.with_(bus=settings.bus.with_(secret=SECRET)))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


def token(*streams: str, ttl_s: float = 600.0) -> str:
    return mint_token(SECRET, streams, ttl_s=ttl_s)


async def no_frame_of(c: Client, stream: str, kind: str, within_s: float) -> None:
    """Assert that no frame of type ``kind`` for ``stream`` arrives within ``within_s``."""
    deadline = time.monotonic() + within_s * UNIT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await c.recv(left / UNIT_S)
        except TimeoutError:
            return
        assert not (frame["type"] == kind and frame.get("stream") == stream), frame


# -- grants over time (item 1) ------------------------------------------------------------


async def test_reauth_ends_subscriptions_the_new_token_does_not_grant(
    secure_relay: Relay, writer: Writer
) -> None:
    c = await Client.open(f"{secure_relay.url}?token={token(Q1, Q2)}")
    for stream in (Q1, Q2):
        await c.send(op="subscribe", stream=stream)
        await c.until(lambda f, s=stream: f["type"] == "live" and f["stream"] == s)
    await c.send(op="auth", token=token(Q1))
    refused = await c.expect("error")
    assert refused["code"] == "forbidden"
    assert refused["stream"] == Q2
    await writer.add(Q2)
    last = await writer.add(Q1)
    # quote-1 goes on; nothing more of quote-2 arrives, before or after quote-1's event.
    frames = []
    await c.until(lambda f: frames.append(f) or f.get("id") == last)
    assert [f for f in frames if f.get("stream") == Q2] == []
    await no_frame_of(c, Q2, "event", 0.3)
    assert secure_relay.stats.subscriptions == 1
    await c.close()


async def test_subscription_lives_no_longer_than_the_grant_that_admitted_it(
    secure_relay: Relay, writer: Writer
) -> None:
    # The admitting token expires in ~3 units (exp is whole seconds); a later long token for
    # another stream must not extend it: quote-2 ends (forbidden) no later than its own
    # token's expiry (in fact at once, since the new grant does not cover it).
    short = mint_token(SECRET, [Q2], ttl_s=3 * UNIT_S)
    c = await Client.open(f"{secure_relay.url}?token={short}&stream={Q2}")
    await c.expect("live")
    started = time.monotonic()
    await c.send(op="auth", token=token("session:other"))
    ended = await c.until(lambda f: f["type"] == "error" and f.get("stream") == Q2, 5)
    assert ended["code"] == "forbidden"
    assert time.monotonic() - started < 3 * UNIT_S
    await writer.add(Q2)
    await no_frame_of(c, Q2, "event", 0.3)
    await c.close()


async def test_expiry_applies_per_subscription_after_reauth(
    secure_relay: Relay, writer: Writer
) -> None:
    # quote-1 and quote-2 admitted by a short token; a long token re-grants quote-1 only:
    # quote-2 ends at once, quote-1 outlives the short token. A refused token changes nothing.
    short = mint_token(SECRET, [Q1, Q2], ttl_s=3 * UNIT_S)
    c = await Client.open(f"{secure_relay.url}?token={short}")
    for stream in (Q1, Q2):
        await c.send(op="subscribe", stream=stream)
        await c.until(lambda f, s=stream: f["type"] == "live" and f["stream"] == s)
    await c.send(op="auth", token=token(Q1))
    assert (await c.until(lambda f: f["type"] == "error"))["stream"] == Q2
    await c.send(op="auth", token="not-a-jwt")
    assert (await c.until(lambda f: f["type"] == "error")).get("stream") is None
    await no_frame_of(c, Q1, "error", 4)  # past the short token's expiry
    last = await writer.add(Q1)
    await c.until(lambda f: f.get("id") == last)
    await c.close()


async def test_subscriptions_of_an_unrenewed_token_end_at_its_expiry(
    secure_relay: Relay,
) -> None:
    c = await Client.open(f"{secure_relay.url}?token={mint_token(SECRET, [Q1], ttl_s=3 * UNIT_S)}")
    await c.send(op="subscribe", stream=Q1)
    await c.expect("live")
    await c.send(op="auth", token="not-a-jwt")  # refused: the old expiry still holds
    ended = await c.until(lambda f: f["type"] == "error" and f.get("stream") == Q1, 6)
    assert ended["message"] == "token expired"
    await c.close()


def test_streams_claim_given_as_a_string_is_refused() -> None:
    claims = {"streams": "session:quote-1", "exp": int(time.time()) + 60}
    with pytest.raises(Forbidden, match="must be a JSON list"):
        verify_token(SECRET, jwt.encode(claims, SECRET, algorithm="HS256"))


# -- the largest id (item 2) --------------------------------------------------------------


async def test_the_largest_id_as_from_is_served_as_nothing_after(
    relay: Relay, writer: Writer
) -> None:
    await writer.add(Q1)
    top = "18446744073709551615-18446744073709551615"
    c = await Client.open(relay.url)
    for offset in (top, "18446744073709551615", "18446744073709551614-18446744073709551615"):
        await c.send(op="subscribe", stream=Q1, **{"from": offset})
        assert (await c.recv())["type"] == "subscribed"
        assert (await c.recv())["type"] == "live"
    await writer.add(Q1)
    await no_frame_of(c, Q1, "event", 0.3)
    await c.send(op="ping")
    assert await c.expect("pong")
    await c.close()


# -- HTTP: duplicate headers, DNS rebinding, methods (item 3, odd-but-safe items) ---------


async def raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` as is over a socket; return the relay's one answer: its head and
    its body (``Content-Length`` bytes; a HEAD answer has none), or all it sends before
    closing. The relay may keep the connection open after answering (HTTP/1.1)."""
    reader, writer_ = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer_.write(request)
        await writer_.drain()
        async with asyncio.timeout(5 * UNIT_S):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                return exc.partial
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if request.startswith(b"HEAD ") or not length:
                return head
            return head + await reader.readexactly(length)
    finally:
        writer_.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    "headers",
    [
        b"Host: 127.0.0.1\r\nHost: 127.0.0.1\r\n",
        b"Host: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nOrigin: http://127.0.0.1\r\n",
    ],
    ids=["host", "origin"],
)
async def test_duplicate_host_or_origin_is_400_without_traceback(
    relay: Relay, headers: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    for path in (b"/ws", b"/healthz"):
        answer = await raw_http(
            relay.port, b"GET " + path + b" HTTP/1.1\r\n" + headers + UPGRADE + b"\r\n"
        )
        assert status_of(answer) == 400, answer
        assert b"duplicate" in answer.lower()  # aiohttp refuses two Hosts itself
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_loopback_mode_refuses_foreign_host_names(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url, origins=("https://app.example:8443",)))
    await r.start()
    try:
        for path in (b"/ws", b"/healthz", b"/metrics", b"/"):
            request = b"GET " + path + b" HTTP/1.1\r\nHost: rebind.example:%d\r\n" % r.port
            answer = await raw_http(r.port, request + UPGRADE + b"\r\n")
            assert status_of(answer) == 403, (path, answer)
        for host in (b"rebind.example@127.0.0.1", b"127.0.0.1/x", b"rebind.example"):
            request = b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            assert status_of(await raw_http(r.port, request)) == 403, host
        for host in (b"localhost", b"127.0.0.2", b"[::1]", b"LOCALHOST", b"app.example"):
            request = b"GET /healthz HTTP/1.1\r\nHost: " + host + b":%d\r\n\r\n" % r.port
            assert status_of(await raw_http(r.port, request)) == 200, host
        c = await Client.open(r.url.replace("127.0.0.1", "localhost"))
        await c.send(op="ping")
        assert await c.recv() == {"type": "pong"}
        await c.close()
    finally:
        await close_relay(r)


async def test_any_host_name_with_a_secret(secure_relay: Relay) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: relay.example\r\n\r\n"
    assert status_of(await raw_http(secure_relay.port, request)) == 200


async def test_methods_other_than_get_and_head_get_405(relay: Relay) -> None:
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"):
        for path in (b"/", b"/healthz", b"/metrics", b"/rpa-bus.js"):
            answer = await raw_http(
                relay.port, method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            assert status_of(answer) == 405, (method, path, answer)
            assert b"\r\nAllow: GET, HEAD\r\n" in answer


async def test_head_answers_headers_without_a_body(relay: Relay) -> None:
    for path in (b"/", b"/healthz", b"/metrics", b"/rpa-bus.js", b"/nope.js"):
        get = await raw_http(relay.port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await raw_http(relay.port, b"HEAD " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(head) == status_of(get), path
        headers, _, body = head.partition(b"\r\n\r\n")
        assert body == b"", path
        length = int(headers.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        assert length == len(get.partition(b"\r\n\r\n")[2]), path


# -- unauthenticated memory growth (item 4) -----------------------------------------------


async def test_error_frames_echo_at_most_a_bounded_slice_of_the_input(relay: Relay) -> None:
    c = await Client.open(relay.url)
    huge = "x" * 30_000
    await c.send(op="subscribe", stream=huge)
    await c.send(op="subscribe", stream="sessions", **{"from": huge})
    await c.send(op=huge)
    for _ in range(3):
        error = await c.expect("error")
        assert len(orjson.dumps(error)) < 700, error
        assert error["message"].endswith("\u2026") or len(error["message"]) < 200
        assert len(error.get("stream", "")) <= 128
    await c.close()


async def test_client_that_never_reads_its_answers_is_closed_1008(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url, queue_bytes=4096, ops_per_s=1e6, ops_burst=1_000_000))
    await r.start()
    try:
        # A small receive buffer and no reading: the relay's answers pile up on its side.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", r.port))
        ws = await connect(r.url, sock=sock, max_queue=1, open_timeout=5 * UNIT_S)
        op = orjson.dumps({"op": "x" * 64}).decode()  # answered with a ~170-byte error
        deadline = time.monotonic() + 20 * UNIT_S
        while r.stats.policy_closes == 0:
            assert time.monotonic() < deadline, f"queued {r.stats.queued_bytes} bytes"
            assert r.stats.queued_bytes <= 2 * 4096
            for _ in range(200):
                await ws.send(op)
            await asyncio.sleep(0)
        assert r.stats.policy_closes == 1
        await wait_for_async(lambda: r.stats.connections == 0, what="the close", timeout_s=10)
        assert r.stats.queued_bytes == 0
        ws.transport.abort()
    finally:
        await close_relay(r)


# -- op floods (item 5; issue 11 item 9b) -------------------------------------------------


async def flood(r: Relay, per_s: float, limit_s: float) -> tuple[int | None, float]:
    """Send pings at ``per_s`` (reading every answer) until the relay closes the
    connection; return its close code and how long it took."""
    c = await Client.open(r.url)
    started = time.monotonic()

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in c.ws:
                pass

    reader = asyncio.create_task(drain())
    batch = max(1, round(per_s / 20))
    try:
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() - started < limit_s * UNIT_S:
                for _ in range(batch):
                    await c.ws.send('{"op": "ping"}')
                await asyncio.sleep(batch / per_s)
        async with asyncio.timeout(5 * UNIT_S):
            await reader
    finally:
        reader.cancel()
    return c.ws.close_code, time.monotonic() - started


async def test_sustained_op_flood_is_closed_1008_once(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url, ops_per_s=20.0, ops_burst=50))
    await r.start()
    try:
        code, took = await flood(r, 2000, limit_s=10)
        assert code == 1008
        assert took < 5 * UNIT_S
        # Every refused op past the limit used to spawn one more close task.
        assert r.stats.policy_closes == 1
    finally:
        await close_relay(r)


@pytest.mark.slow
async def test_op_flood_spaced_under_the_burst_is_closed_too(redis_url: str) -> None:
    # Twice the rate: the bucket lets an op through every 50 ms, so refusals never pile up
    # in a row, but there are some in every second.
    r = Relay(relay_settings(redis_url, ops_per_s=20.0, ops_burst=5))
    await r.start()
    try:
        code, took = await flood(r, 40, limit_s=30)
        assert code == 1008
        assert 8 < took < 20 * UNIT_S
        assert r.stats.policy_closes == 1
    finally:
        await close_relay(r)


async def test_brief_bursts_over_the_rate_are_not_closed(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url, ops_per_s=20.0, ops_burst=5))
    await r.start()
    try:
        c = await Client.open(r.url)
        for _ in range(3):
            for _ in range(30):
                await c.send(op="ping")
            await asyncio.sleep(1.0)
        await c.send(op="subscribe", stream="sessions")
        await c.expect("live")
        assert r.stats.policy_closes == 0
        await c.close()
    finally:
        await close_relay(r)


@pytest.mark.parametrize(
    "request_",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["request-line", "version", "header", "non-ascii"],
)
async def test_malformed_http_gets_400(
    relay: Relay, request_: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await raw_http(relay.port, request_)
    # aiohttp answers these itself: 400 with its own wording (websockets' server needed
    # the relay's parser for any answer at all, worded "malformed HTTP request").
    assert status_of(answer) == 400, answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    c = await Client.open(relay.url)  # the relay goes on
    await c.send(op="ping")
    assert await c.recv() == {"type": "pong"}
    await c.close()


async def test_text_frame_that_is_not_utf8_closes_1007(relay: Relay) -> None:
    # The one bad frame that ends the connection besides an oversized one (1009): the
    # WebSocket protocol itself forbids it (RFC 6455 8.1), before the relay sees it.
    c = await Client.open(relay.url)
    await c.ws.send(b'{"op": "ping", "x": "\xff"}', text=True)
    with pytest.raises(ConnectionClosed):
        await c.recv()
    assert c.ws.close_code == 1007
