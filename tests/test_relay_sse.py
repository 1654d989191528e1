"""The SSE door (/v1/sse): real relay, real Redis, a real SSE client library (httpx-sse)
and Chromium's own EventSource; waits are bounded by UNIT_S."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from relay import Relay, mint_token
from relay._sse import decode_positions, encode_positions
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._browser import BusWriter, RelayThread, chromium_page
from tests._relay_support import KEYS, Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

SECRET = "test-secret-that-is-long-enough-for-hs256!"
A, B = "session:sse-a", "session:sse-b"


def base(r: Relay) -> str:
    return f"http://127.0.0.1:{r.port}"


async def next_event(
    events: AsyncIterator[ServerSentEvent], timeout_s: float = 5.0
) -> ServerSentEvent:
    async with asyncio.timeout(timeout_s * UNIT_S):
        return await anext(events)


async def until(
    events: AsyncIterator[ServerSentEvent], pred: Any, seen: list[ServerSentEvent],
    timeout_s: float = 10.0,
) -> ServerSentEvent:  # fmt: skip
    deadline = time.monotonic() + timeout_s * UNIT_S
    while True:
        sse = await next_event(events, max(0.01, deadline - time.monotonic()) / UNIT_S)
        seen.append(sse)
        if pred(sse):
            return sse


async def until_seen(
    events: AsyncIterator[ServerSentEvent], seen: list[ServerSentEvent], *last: tuple[str, str]
) -> None:
    """Read until the events ``last`` (stream, id) have all arrived, in whatever order."""

    def done(_: ServerSentEvent) -> bool:
        return all(entry_id in event_ids(seen, stream) for stream, entry_id in last)

    if not done(seen[-1] if seen else ServerSentEvent()):
        await until(events, done, seen)


def event_ids(seen: list[ServerSentEvent], stream: str) -> list[str]:
    out = []
    for sse in seen:
        if sse.event == "event":
            frame = orjson.loads(sse.data)
            if frame["stream"] == stream:
                out.append(frame["id"])
    return out


def is_event(stream: str, entry_id: str):  # type: ignore[no-untyped-def]
    def pred(sse: ServerSentEvent) -> bool:
        if sse.event != "event":
            return False
        frame = orjson.loads(sse.data)
        return bool(frame["stream"] == stream and frame["id"] == entry_id)

    return pred


async def test_two_streams_resume_exactly_once_after_a_disconnect(
    relay: Relay, writer: Writer
) -> None:
    a1 = [await writer.add(A, message=f"a{i}") for i in range(5)]
    b1 = [await writer.add(B, message=f"b{i}") for i in range(3)]
    seen: list[ServerSentEvent] = []
    url = f"{base(relay)}/v1/sse?stream={A}&stream={B}"
    async with httpx.AsyncClient(timeout=10 * UNIT_S) as http:
        async with aconnect_sse(http, "GET", url) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.aiter_sse()
            await until_seen(events, seen, (A, a1[-1]), (B, b1[-1]))

            def both_live(_: ServerSentEvent) -> bool:
                live = {orjson.loads(s.data)["stream"] for s in seen if s.event == "live"}
                return live == {A, B}

            if not both_live(seen[-1]):
                await until(events, both_live, seen)
            for kind in ("subscribed", "live"):
                assert {orjson.loads(s.data)["stream"] for s in seen if s.event == kind} == {A, B}
            a2 = [await writer.add(A, message=f"a2-{i}") for i in range(3)]
            await until(events, is_event(A, a2[1]), seen)  # disconnect mid-stream
        last_id = seen[-1].id
        assert last_id
        positions = decode_positions(last_id)
        assert positions[A][0] == a2[1]
        assert positions[B][0] == b1[-1]
        # While away: more on both streams.
        a3 = [await writer.add(A, message=f"a3-{i}") for i in range(4)]
        b3 = [await writer.add(B, message=f"b3-{i}") for i in range(4)]
        headers = {"Last-Event-ID": last_id}
        async with aconnect_sse(http, "GET", url, headers=headers) as source:
            events = source.aiter_sse()
            await until_seen(events, seen, (A, a3[-1]), (B, b3[-1]))
    assert event_ids(seen, A) == a1 + a2 + a3
    assert event_ids(seen, B) == b1 + b3
    # Every event message carries the position of both streams.
    for sse in seen:
        if sse.event == "event":
            assert set(decode_positions(sse.id)) == {A, B}


async def test_last_event_id_parameter_starts_each_stream_where_it_says(
    relay: Relay, writer: Writer
) -> None:
    """A fresh request (rpa-bus.js reopening with another set of streams) gives each stream
    its own start in ``?last_event_id=``; the header, when sent too, wins."""
    epoch = await writer.start("sse-a")
    a = [await writer.add(A, message=f"a{i}") for i in range(4)]
    b = [await writer.add(B, message=f"b{i}") for i in range(3)]
    c = "session:sse-c"
    c_old = await writer.add(c)
    query = urlencode(
        [("stream", A), ("stream", B), ("stream", c),
         ("last_event_id", f"{A}={a[1]}@{epoch};{c}=$")],
    )  # fmt: skip
    seen: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10 * UNIT_S) as http:
        async with aconnect_sse(http, "GET", f"{base(relay)}/v1/sse?{query}") as source:
            events = source.aiter_sse()
            await until_seen(events, seen, (A, a[-1]), (B, b[-1]))
            await until(events, lambda s: s.event == "live" and c in s.data, seen)
            c_new = await writer.add(c)
            await until(events, is_event(c, c_new), seen)
        assert event_ids(seen, A) == a[2:]  # after its position, in its epoch
        assert event_ids(seen, B) == b  # not named: `from` (absent: everything)
        assert event_ids(seen, c) == [c_new]  # "$": what came next, not c_old
        assert c_old not in event_ids(seen, c)
        # Both sent: the header is the newer position (EventSource's reconnect to the URL).
        headers = {"Last-Event-ID": f"{A}={a[2]}@{epoch};{B}={b[-1]};{c}={c_new}"}
        seen = []
        async with aconnect_sse(
            http, "GET", f"{base(relay)}/v1/sse?{query}", headers=headers
        ) as source:
            events = source.aiter_sse()
            await until_seen(events, seen, (A, a[-1]))
            more = await writer.add(B)
            await until(events, is_event(B, more), seen)
        assert event_ids(seen, A) == [a[3]]
        assert event_ids(seen, B) == [more]


async def test_the_id_carries_the_epoch_and_a_recreated_stream_resets(
    relay: Relay, writer: Writer
) -> None:
    stream = "session:sse-epoch"
    old_epoch = await writer.start("sse-epoch")
    old = [await writer.add(stream) for _ in range(2)]
    seen: list[ServerSentEvent] = []
    url = f"{base(relay)}/v1/sse?stream={stream}"
    async with httpx.AsyncClient(timeout=10 * UNIT_S) as http:
        async with aconnect_sse(http, "GET", url) as source:
            await until(source.aiter_sse(), is_event(stream, old[-1]), seen)
        last_id = seen[-1].id
        assert last_id == f"{stream}={old[-1]}@{old_epoch}"
        # The session runs again under the same id: a new stream, a new epoch.
        await writer.r.delete(writer.key(stream), KEYS.meta("sse-epoch"))
        new_epoch = await writer.start("sse-epoch")
        new = [await writer.add(stream) for _ in range(2)]
        headers = {"Last-Event-ID": last_id}
        async with aconnect_sse(http, "GET", url, headers=headers) as source:
            events = source.aiter_sse()
            reset = await until(events, lambda s: s.event == "reset", seen)
            assert orjson.loads(reset.data)["epoch"] == new_epoch
            assert reset.id == f"{stream}=0-0@{new_epoch}"
            await until(events, is_event(stream, new[-1]), seen)
    assert event_ids(seen, stream) == old + new


async def test_from_dollar_and_heartbeats(redis_url: str, writer: Writer) -> None:
    await writer.add(A)
    r = Relay(relay_settings(redis_url, sse_heartbeat_s=0.2))
    await r.start()
    try:
        async with (
            httpx.AsyncClient(timeout=10 * UNIT_S) as http,
            http.stream("GET", f"{base(r)}/v1/sse?stream={A}&from=$") as response,
        ):
            lines = response.aiter_lines()
            got: list[str] = []
            async with asyncio.timeout(5 * UNIT_S):
                while ": hb" not in got:
                    got.append(await anext(lines))
            assert "event: live" in got
            assert not [line for line in got if line == "event: event"]  # "$": nothing old
            new = await writer.add(A)
            async with asyncio.timeout(5 * UNIT_S):
                while not got[-1].startswith("data: ") or new not in got[-1]:
                    got.append(await anext(lines))
    finally:
        await close_relay(r)


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("", {}, "bad_request"),
        ("stream=nope", {}, "invalid_stream"),
        ("stream=session:a&from=yesterday", {}, "invalid_offset"),
        ("stream=session:a", {"Last-Event-ID": "not a cursor"}, "invalid_offset"),
        ("stream=session:a", {"Last-Event-ID": "session:a=1-0;=2-0"}, "invalid_offset"),
        ("stream=session:a", {"Last-Event-ID": encode_positions(
            {"session:a": ["soon", None]}).decode()}, "invalid_offset"),
        ("stream=session:a&last_event_id=nope", {}, "invalid_offset"),
        ("stream=session:a&last_event_id=" + quote("session:a=1-0;session:a=2-0"), {},
         "invalid_offset"),
        ("stream=session:a&last_event_id=" + quote("session:a=soon"), {}, "invalid_offset"),
        ("stream=session:a&last_event_id=" + quote("session:b=1-0"), {}, "invalid_offset"),
        ("stream=session:a&last_event_id=session:a%3D1-0&last_event_id=session:a%3D2-0", {},
         "invalid_offset"),
        # The header wins, but a bad parameter is refused all the same.
        ("stream=session:a&last_event_id=nope", {"Last-Event-ID": "session:a=1-0"},
         "invalid_offset"),
    ],
    ids=["no-stream", "unknown-stream", "bad-offset", "bad-cursor", "cursor-shape", "cursor-id",
         "param-shape", "param-twice-a-stream", "param-id", "param-other-stream",
         "param-repeated", "param-bad-header-good"],
)  # fmt: skip
async def test_bad_requests_get_400_json(
    relay: Relay, query: str, headers: dict[str, str], code: str
) -> None:
    async with httpx.AsyncClient(timeout=5 * UNIT_S) as http:
        response = await http.get(f"{base(relay)}/v1/sse?{query}", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert relay.stats.subscriptions == 0


async def test_v1_paths_answer_json_errors(relay: Relay) -> None:
    async with httpx.AsyncClient(timeout=5 * UNIT_S) as http:
        missing = await http.get(f"{base(relay)}/v1/nope")
        wrong = await http.delete(f"{base(relay)}/v1/sse?stream={A}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD"


@pytest.fixture
async def secure_relay(redis_url: str) -> AsyncIterator[Relay]:
    settings = relay_settings(redis_url, origins=("https://app.example",))
    r = Relay(settings.with_(bus=settings.bus.with_(secret=SECRET)))
    await r.start()
    try:
        yield r
    finally:
        await close_relay(r)


async def test_auth_errors_and_both_token_forms(secure_relay: Relay, writer: Writer) -> None:
    url = f"{base(secure_relay)}/v1/sse?stream={A}"
    good = mint_token(SECRET, [A], ttl_s=600)
    other = mint_token(SECRET, [B], ttl_s=600)
    async with httpx.AsyncClient(timeout=5 * UNIT_S) as http:
        for extra, headers, status in [
            ("", {}, 401),
            ("&token=not-a-jwt", {}, 401),
            ("", {"Authorization": "Basic abc"}, 403),
            (f"&token={other}", {}, 403),
            ("", {"Authorization": f"Bearer {other}"}, 403),
        ]:
            response = await http.get(url + extra, headers=headers)
            assert response.status_code == status, (extra, headers, response.text)
            assert response.json()["error"]["code"] == "forbidden"
        response = await http.get(url, headers={"Origin": "https://evil.example"})
        assert response.status_code == 403
        entry = await writer.add(A)
        for extra, headers in [
            (f"&token={good}", {"Origin": "https://app.example"}),
            ("", {"Authorization": f"Bearer {good}"}),
        ]:
            async with aconnect_sse(http, "GET", url + extra, headers=headers) as source:
                if "Origin" in headers:
                    allowed = source.response.headers["access-control-allow-origin"]
                    assert allowed == "https://app.example"
                await until(source.aiter_sse(), is_event(A, entry), [])


async def test_grant_expiry_ends_the_stream_with_forbidden(secure_relay: Relay) -> None:
    short = mint_token(SECRET, [A], ttl_s=2 * UNIT_S)
    url = f"{base(secure_relay)}/v1/sse?stream={A}&token={short}"
    seen: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=10 * UNIT_S) as http:
        async with aconnect_sse(http, "GET", url) as source:
            events = source.aiter_sse()
            await until(events, lambda s: s.event == "live", seen)
            ended = await until(events, lambda s: s.event == "error", seen, timeout_s=6)
            assert orjson.loads(ended.data)["code"] == "forbidden"
            with pytest.raises(StopAsyncIteration):  # the response ends
                await next_event(events)
        response = await http.get(url)
        assert response.status_code == 401  # the same token again: refused up front
    await wait_for_async(lambda: secure_relay.stats.subscriptions == 0, what="the sub to end")


async def test_slow_sse_client_catches_up_within_the_bound(redis_url: str, writer: Writer) -> None:
    queue_bytes = 16 * 1024
    r = Relay(relay_settings(redis_url, queue_bytes=queue_bytes, queue_frames=64))
    await r.start()
    try:
        # A reader that stops reading: the kernel buffers fill, then the relay's queue.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", r.port))
        reader, writer_ = await asyncio.open_connection(sock=sock, limit=1 << 20)
        try:
            request = f"GET /v1/sse?stream={A}&from=$ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            writer_.write(request.encode())
            await writer_.drain()
            # "$" is the stream's end when the relay answers `subscribed`, not when the
            # request was sent: write nothing before it (or those entries are, rightly, not
            # the subscription's; under load that window was wide enough to lose the first).
            async with asyncio.timeout(5 * UNIT_S):
                while (await reader.readline()).strip() != b"event: live":
                    pass
            reader._transport.pause_reading()  # type: ignore[attr-defined]
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, r.stats.queued_bytes)
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            ids = await writer.add_many(A, 3000, size=2048)
            await wait_for_async(lambda: r.stats.slow_switches >= 1, what="a switch to catch-up")
            watcher.cancel()
            assert peak <= 2 * queue_bytes + 4096, peak
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read fast
            reader._transport.resume_reading()  # type: ignore[attr-defined]
            got: list[str] = []
            try:
                async with asyncio.timeout(60 * UNIT_S):
                    while len(got) < len(ids):
                        line = await reader.readline()
                        if not line:  # EOF: readline would return b"" without waiting
                            pytest.fail(f"the relay ended the response after {len(got)}")
                        if line.startswith(b'data: {"type":"event"'):
                            got.append(orjson.loads(line[6:])["id"])
            except TimeoutError:  # say where it stands
                stacks = io.StringIO()
                for task in asyncio.all_tasks():
                    if task.get_name() in ("writer", f"catch-up:{A}", f"sub:{A}"):
                        task.print_stack(file=stacks)
                pytest.fail(
                    f"got {len(got)} of {len(ids)} events; relay {r.stats}; tasks:\n"
                    f"{stacks.getvalue()}"
                )
            assert got == ids  # every event once, in order, through the catch-up
        finally:
            writer_.close()
            with contextlib.suppress(OSError):
                await writer_.wait_closed()
    finally:
        await close_relay(r)


async def test_a_client_that_leaves_ends_its_response_at_once(relay: Relay) -> None:
    """No write or heartbeat is needed to notice: the subscriptions and the place in the
    per-address count go when the connection does (rpa-bus.js reopens its response on
    every change of its streams)."""
    assert relay.settings.sse_heartbeat_s >= 15
    for _ in range(3):
        reader, writer_ = await asyncio.open_connection("127.0.0.1", relay.port)
        writer_.write(
            f"GET /v1/sse?stream={A}&stream={B} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        async with asyncio.timeout(5 * UNIT_S):
            while (await reader.readline()).strip() != b"event: live":
                pass
        assert relay.stats.subscriptions >= 1
        writer_.close()
        await writer_.wait_closed()
        await wait_for_async(
            lambda: relay.stats.subscriptions == 0 and relay.stats.connections == 0,
            what="the response to end",
            timeout_s=2,
        )


@pytest.mark.slow
async def test_redis_down_sends_unavailable_then_resumes(
    redis_server: EmbeddedRedis, writer: Writer
) -> None:
    r = Relay(relay_settings(redis_server.url))
    await r.start()
    seen: list[ServerSentEvent] = []
    try:
        before = [await writer.add(A) for _ in range(3)]
        async with (
            httpx.AsyncClient(timeout=30 * UNIT_S) as http,
            aconnect_sse(http, "GET", f"{base(r)}/v1/sse?stream={A}") as source,
        ):
            events = source.aiter_sse()
            await until(events, lambda s: s.event == "live", seen)
            redis_server.stop()
            down = await until(events, lambda s: s.event == "unavailable", seen)
            assert orjson.loads(down.data)["code"] == "unavailable"
            redis_server.start()
            after = [await writer.add(A) for _ in range(3)]
            await until(events, is_event(A, after[-1]), seen, timeout_s=20)
        assert event_ids(seen, A) == before + after
    finally:
        await close_relay(r)


def test_chromium_eventsource_reads_a_session_live_across_a_restart(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    bus = BusWriter(client)
    sid = "sse-browser"
    first = [bus.session_event(sid, "log", message=f"m{i}") for i in range(3)]
    r = RelayThread(redis_url)
    r.start()
    try:
        with chromium_page(r.base_url) as (page, errors):
            page.goto("/")
            page.evaluate(
                """(stream) => {
                    window.got = [];
                    window.kinds = [];
                    const es = new EventSource('/v1/sse?stream=' + encodeURIComponent(stream));
                    for (const kind of ['subscribed', 'live', 'event']) {
                        es.addEventListener(kind, (e) => {
                            window.kinds.push(kind);
                            if (kind === 'event') window.got.push(JSON.parse(e.data).id);
                            window.lastEventId = e.lastEventId;
                        });
                    }
                    window.es = es;
                }""",
                f"session:{sid}",
            )
            page.wait_for_function(f"window.got.length === {len(first)}")
            page.wait_for_function("window.kinds.includes('live')")
            more = [bus.session_event(sid, "progress", step=i, total=3) for i in range(3)]
            page.wait_for_function(f"window.got.length === {len(first) + len(more)}")
            assert page.evaluate("window.got") == first + more
            last = page.evaluate("window.lastEventId")
            assert decode_positions(last)[f"session:{sid}"][0] == more[-1]
            # The relay restarts; EventSource reconnects by itself with Last-Event-ID.
            r.stop()
            away = [bus.session_event(sid, "log", message=f"away {i}") for i in range(3)]
            r.start()
            page.wait_for_function(f"window.got.length >= {len(first) + len(more) + len(away)}")
            assert page.evaluate("window.got") == first + more + away
            page.evaluate("window.es.close()")
            assert not [e for e in errors if "EventSource" in e]
    finally:
        r.stop()
        client.close()
