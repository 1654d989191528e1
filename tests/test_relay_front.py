"""The relay's front protocol (relay._lite): which door serves a connection.

A ``GET /ws`` upgrade is served by the light WebSocket door (websockets' sans-I/O protocol)
when compression is off; everything else, and every /ws with compression on, goes to
aiohttp. Real Redis, real clients, raw sockets; waits bounded by UNIT_S.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay import Relay, _lite
from relay._lite import LiteSocket
from relay._sockets import AiohttpSocket
from tests._relay_support import Client, Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

S = "session:front-1"


def _sockets(r: Relay) -> list[object]:
    server = r._server
    assert server is not None
    return [conn.ws for conn in server.connections]


async def _read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout_s * UNIT_S):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def _upgrade_head(path: str = "/ws", *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_ws_is_served_by_the_light_door_uncompressed(relay: Relay, writer: Writer) -> None:
    await writer.start("front-1")
    first = await writer.add(S, message="one")
    # websockets' client offers permessage-deflate by default: compression is off, so the
    # relay answers without the extension.
    c = await Client.open(f"{relay.url}?stream={S}&from=0")
    try:
        assert c.ws.protocol.extensions == []
        assert "Sec-WebSocket-Extensions" not in c.ws.response.headers
        assert c.ws.response.headers["Server"] == "rpa-bus"
        await c.expect("subscribed")
        assert await c.events_until(S, first) == [first]
        sockets = _sockets(relay)
        assert len(sockets) == 1
        assert isinstance(sockets[0], LiteSocket)
        await c.send(op="ping")
        assert (await c.expect("pong"))["type"] == "pong"
        pong = await c.ws.ping()  # a protocol ping: the door answers it
        async with asyncio.timeout(5 * UNIT_S):
            await pong
    finally:
        await c.close()
    await wait_for_async(lambda: not _sockets(relay), what="the connection's end")
    assert relay.stats.connections == 0


async def test_http_and_keep_alive_go_to_aiohttp(relay: Relay) -> None:
    reader, w = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        w.write(request)
        for _ in range(2):  # two requests on one keep-alive connection
            async with asyncio.timeout(5 * UNIT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = orjson.loads(await reader.readexactly(length))
            assert body["name"] == "test"
            w.write(request)
        # A WebSocket upgrade after a request on the same connection: aiohttp's /ws route
        # (the front only reads a connection's first request).
        w.write(_upgrade_head())
        async with asyncio.timeout(5 * UNIT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            while head.startswith(b"HTTP/1.1 200"):  # the third /healthz answer
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        await wait_for_async(lambda: len(_sockets(relay)) == 1, what="the WebSocket")
        assert isinstance(_sockets(relay)[0], AiohttpSocket)
    finally:
        w.close()
    await wait_for_async(lambda: not _sockets(relay), what="the connection's end")


async def test_a_slow_head_is_dropped(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lite, "HEAD_TIMEOUT_S", 0.5 * UNIT_S)
    reader, w = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        w.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        try:
            data = await _read_until_closed(reader, 5)
        except ConnectionResetError:
            data = b""
    finally:
        w.close()
    assert data == b""  # dropped unanswered, within the bound
    # The relay still serves.
    c = await Client.open(relay.url)
    await c.close()
    assert relay.stats.connections == 0


async def test_an_oversized_head_is_refused(relay: Relay) -> None:
    reader, w = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        w.write(_upgrade_head("/ws", *(f"X-Pad-{i}: {'x' * 1000}" for i in range(80))))
        data = await _read_until_closed(reader, 5)
    finally:
        w.close()
    assert data.startswith(b"HTTP/1.1 431"), data[:100]
    assert not _sockets(relay)
    assert relay.stats.connections == 0


async def test_refusals_before_the_upgrade(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url, max_connections_per_ip=1))
    await r.start()
    try:
        c = await Client.open(r.url)
        try:
            with pytest.raises(Exception, match="429"):
                await Client.open(r.url)
            with pytest.raises(Exception, match="403"):
                await Client.open(r.url, origin="http://evil.example")  # type: ignore[arg-type]
        finally:
            await c.close()
        reader, w = await asyncio.open_connection("127.0.0.1", r.port)
        w.write(_upgrade_head("/ws", "Host: 127.0.0.1"))  # two Hosts
        data = await _read_until_closed(reader, 5)
        w.close()
        assert data.startswith(b"HTTP/1.1 400"), data[:100]
        assert b"duplicate Host header" in data
    finally:
        await close_relay(r)


async def test_compression_on_uses_aiohttps_route(redis_url: str, writer: Writer) -> None:
    r = Relay(relay_settings(redis_url, compression=True))
    await r.start()
    try:
        await writer.start("front-1")
        first = await writer.add(S, message="one")
        c = await Client.open(f"{r.url}?stream={S}&from=0")
        try:
            assert [e.name for e in c.ws.protocol.extensions] == ["permessage-deflate"]
            await c.expect("subscribed")
            assert await c.events_until(S, first) == [first]
            sockets = _sockets(r)
            assert len(sockets) == 1
            assert isinstance(sockets[0], AiohttpSocket)
        finally:
            await c.close()
    finally:
        await close_relay(r)


async def test_too_large_a_frame_closes_1009(relay: Relay) -> None:
    c = await Client.open(relay.url, max_size=None)
    try:
        await c.ws.send("x" * (relay.settings.max_frame_bytes + 1))
        with pytest.raises(ConnectionClosed) as info:
            await c.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009
    finally:
        await c.close()
    await wait_for_async(lambda: relay.stats.connections == 0, what="the connection's end")


async def test_fragmented_and_binary_messages(relay: Relay) -> None:
    c = await Client.open(relay.url)
    try:
        await c.ws.send(iter(['{"op": ', '"ping"}']))  # a fragmented text message
        assert (await c.expect("pong"))["type"] == "pong"
        await c.ws.send(b'{"op": "ping"}')
        error = await c.expect("error")
        assert error["code"] == "bad_request"
    finally:
        await c.close()


@pytest.fixture
async def pinging_relay(redis_url: str) -> AsyncIterator[Relay]:
    r = Relay(relay_settings(redis_url, ping_interval_s=0.2 * UNIT_S))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


async def test_heartbeat(pinging_relay: Relay) -> None:
    r = pinging_relay
    # A client that answers pings (websockets does by itself) stays.
    c = await Client.open(r.url, ping_interval=None)
    # One that never reads (its pongs never come) is dropped within about 1.5 intervals.
    sock = socket.create_connection(("127.0.0.1", r.port))
    try:
        sock.sendall(_upgrade_head())
        await wait_for_async(lambda: r.stats.connections == 2, what="both connections")
        await wait_for_async(lambda: r.stats.connections == 1, what="the silent one dropped")
        await asyncio.sleep(1.0 * UNIT_S)  # five intervals
        assert r.stats.connections == 1
        await c.send(op="ping")
        assert (await c.expect("pong"))["type"] == "pong"
    finally:
        sock.close()
        await c.close()


async def test_shutdown_closes_light_connections_1001(redis_url: str) -> None:
    r = Relay(relay_settings(redis_url))
    await r.start()
    c = await Client.open(r.url)
    assert isinstance(_sockets(r)[0], LiteSocket)
    await close_relay(r)
    with pytest.raises(ConnectionClosed) as info:
        await c.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code in (1001, 1012)


async def test_a_client_gone_mid_stream_frees_its_connection(relay: Relay, writer: Writer) -> None:
    await writer.start("front-1")
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.sendall(_upgrade_head(f"/ws?stream={S}&from=0"))
    await wait_for_async(lambda: relay.stats.subscriptions == 1, what="the subscription")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset
    await writer.add_many(S, 50)
    await wait_for_async(lambda: relay.stats.connections == 0, what="the connection's end")
    assert relay.stats.subscriptions == 0


async def test_no_light_websocket_opens_once_closing(relay: Relay) -> None:
    server = relay._server
    assert server is not None
    server.closing = True  # as AiohttpServer.close sets it first
    try:
        with pytest.raises(Exception, match="503"):
            await Client.open(relay.url)
        assert relay.stats.connections == 0
    finally:
        server.closing = False
    c = await Client.open(relay.url)
    await c.close()
