"""The Python consumer client (relay/_client.py) against a real relay and Redis: resume
across relay restarts exactly once and in order, gap/reset/unavailable as typed items,
refusals raised, and ``rpa-bus tail`` built on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from typing import Any

import orjson
import pytest

from relay import (
    AsyncSubscription,
    Event,
    Gap,
    Item,
    Live,
    Relay,
    Reset,
    Subscription,
    SubscriptionError,
    Unavailable,
    mint_token,
)
from relay._client import _Follower, ws_url
from rpa_bus import Forbidden, InvalidInput, InvalidStreamName, Keys
from rpa_bus.cli._embedded import free_port
from tests._relay_support import Writer, close_relay, relay, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

__all__ = ["relay", "writer"]

KEYS = Keys()
A, B = "session:job-a", "session:job-b"
SECRET = "a-test-secret-of-at-least-32-bytes!"


async def collect(sub: AsyncSubscription, items: list[Item]) -> None:
    async for item in sub:
        items.append(item)


def events(items: list[Item], stream: str) -> list[str]:
    return [i.id for i in items if isinstance(i, Event) and i.stream == stream]


async def test_resumes_across_relay_restart_exactly_once_in_order(
    redis_url: str, writer: Writer
) -> None:
    port = free_port()
    r = Relay(relay_settings(redis_url, port=port))
    await r.start()
    written = {A: [await writer.add(A, message=f"a{i}") for i in range(5)], B: []}
    written[B] += [await writer.add(B, message=f"b{i}") for i in range(3)]
    items: list[Item] = []
    sub = AsyncSubscription(f"http://127.0.0.1:{port}", [A, B], max_backoff_s=0.2)
    task = asyncio.create_task(collect(sub, items))
    try:
        await wait_for_async(
            lambda: len(events(items, A)) == 5 and len(events(items, B)) == 3, what="replay"
        )
        assert {i.stream for i in items if isinstance(i, Live)} == {A, B}
        await close_relay(r)
        # Written while the relay is away, then more once it is back: all arrive once.
        written[A] += [await writer.add(A, message=f"a{i}") for i in range(5, 10)]
        await wait_for_async(
            lambda: any(isinstance(i, Unavailable) and i.stream is None for i in items),
            what="the client to say the relay is unreachable",
        )
        r = Relay(relay_settings(redis_url, port=port))
        await r.start()
        written[B] += [await writer.add(B, message=f"b{i}") for i in range(3, 6)]
        written[A] += [await writer.add(A, message=f"a{i}") for i in range(10, 12)]
        await wait_for_async(
            lambda: len(events(items, A)) >= 12 and len(events(items, B)) >= 6,
            what="every event after the restart",
            timeout_s=10,
        )
        assert events(items, A) == written[A]
        assert events(items, B) == written[B]
        assert sub.positions == {A: written[A][-1], B: written[B][-1]}
        data = [i.data for i in items if isinstance(i, Event) and i.stream == A]
        assert [d["message"] for d in data if d] == [f"a{i}" for i in range(12)]
    finally:
        await sub.close()
        await asyncio.wait_for(task, 5 * UNIT_S)
        await close_relay(r)


async def test_blocking_twin_resumes_across_relay_restart(redis_url: str, writer: Writer) -> None:
    port = free_port()
    r = Relay(relay_settings(redis_url, port=port))
    await r.start()
    written = [await writer.add(A, message=str(i)) for i in range(4)]
    items: list[Item] = []
    sub = Subscription(f"ws://127.0.0.1:{port}/ws", A, max_backoff_s=0.2)

    def run() -> None:
        for item in sub:
            items.append(item)

    thread = threading.Thread(target=run, name="blocking-subscription")
    thread.start()
    try:
        await wait_for_async(lambda: len(events(items, A)) == 4, what="replay")
        await close_relay(r)
        written += [await writer.add(A, message=str(i)) for i in range(4, 8)]
        r = Relay(relay_settings(redis_url, port=port))
        await r.start()
        written += [await writer.add(A, message=str(i)) for i in range(8, 10)]
        await wait_for_async(lambda: len(events(items, A)) >= 10, what="all", timeout_s=10)
        assert events(items, A) == written
    finally:
        sub.close()  # from another thread: the iteration ends
        await asyncio.to_thread(thread.join, 5 * UNIT_S)
        assert not thread.is_alive()
        await close_relay(r)


async def test_gap_is_surfaced_then_the_retained_rest(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(A, message=str(i)) for i in range(20)]
    await writer.r.xtrim(writer.key(A), maxlen=5, approximate=False)
    items: list[Item] = []
    async with AsyncSubscription(relay.url, A, from_id=ids[3]) as sub:
        async for item in sub:
            items.append(item)
            if isinstance(item, Live):
                break
    assert items[0] == Gap(A, ids[3], ids[15])
    assert events(items, A) == ids[15:]


async def test_reset_is_surfaced_and_replay_restarts(relay: Relay, writer: Writer) -> None:
    old_epoch = await writer.start("job-a")
    old = [await writer.add(A) for _ in range(3)]
    await writer.r.delete(writer.key(A), KEYS.meta("job-a"))
    new_epoch = await writer.start("job-a")
    new = [await writer.add(A) for _ in range(2)]
    items: list[Item] = []
    sub = AsyncSubscription(relay.url, A, from_id=old[-1], epochs={A: old_epoch})
    async with sub:
        async for item in sub:
            items.append(item)
            if isinstance(item, Live):
                break
    assert items[0] == Reset(A, new_epoch)
    assert events(items, A) == new
    assert sub.epochs == {A: new_epoch}


async def test_from_dollar_yields_only_new_events(relay: Relay, writer: Writer) -> None:
    await writer.add(A, message="old")
    items: list[Item] = []
    sub = AsyncSubscription(relay.url, A, from_id="$")
    task = asyncio.create_task(collect(sub, items))
    try:
        await wait_for_async(lambda: any(isinstance(i, Live) for i in items), what="live")
        fresh = await writer.add(A, message="new")
        await wait_for_async(lambda: events(items, A) == [fresh], what="the new event")
    finally:
        await sub.close()
        await asyncio.wait_for(task, 5 * UNIT_S)


async def _drain(sub: AsyncSubscription) -> None:
    async with sub:
        async for _ in sub:
            pass


async def test_refusals_raise(redis_url: str, writer: Writer) -> None:
    bus = relay_settings(redis_url).bus.with_(secret=SECRET)
    r = Relay(relay_settings(redis_url, bus=bus, max_subscriptions=1))
    await r.start()
    try:
        token = mint_token(SECRET, ["session:job-b", "session:job-a"], ttl_s=60)
        with pytest.raises(Forbidden):
            await _drain(AsyncSubscription(r.url, A, token="not-a-token"))
        with pytest.raises(Forbidden):
            await _drain(AsyncSubscription(r.url, A, token=mint_token(SECRET, [B], ttl_s=60)))
        with pytest.raises(SubscriptionError, match="too_many_subscriptions"):
            await _drain(AsyncSubscription(r.url, [A, B], token=token))
        # The granted stream works.
        fresh = await writer.add(B, message="ok")
        async with AsyncSubscription(r.url, B, token=token) as sub:
            item = await anext(sub)
            assert isinstance(item, Event)
            assert (item.stream, item.id) == (B, fresh)
    finally:
        await close_relay(r)
    with pytest.raises(InvalidStreamName):
        AsyncSubscription("ws://127.0.0.1:1", "nope")
    with pytest.raises(InvalidInput):
        AsyncSubscription("ftp://127.0.0.1:1", A)
    with pytest.raises(InvalidInput):
        Subscription("ws://127.0.0.1:1", [])


def test_follower_never_yields_a_duplicate_and_resumes_from_the_last_id() -> None:
    f = _Follower([A], "0", None, 1.0)

    def frame(**fields: Any) -> bytes:
        return orjson.dumps(fields)

    assert f.feed(frame(type="subscribed", stream=A, epoch="e1", first=None, last=None)) is None
    assert f.feed(frame(type="event", stream=A, id="5-0", data={"type": "log"})) == Event(
        A, "5-0", {"type": "log"}
    )
    assert f.feed(frame(type="event", stream=A, id="5-0", data={})) is None
    assert f.feed(frame(type="event", stream=A, id="4-9", data={})) is None
    assert f.feed(frame(type="event", stream="session:other", id="9-0", data={})) is None
    assert f.feed(frame(type="error", code="unavailable", stream=A, message="down")) == (
        Unavailable(A, "down")
    )
    assert [orjson.loads(op) for op in f.ops()] == [
        {"op": "subscribe", "stream": A, "from": "5-0", "epoch": "e1"}
    ]
    with pytest.raises(SubscriptionError):
        f.feed(frame(type="error", code="invalid_offset", stream=A, message="bad"))


def test_ws_url_forms() -> None:
    assert ws_url("http://h:1") == "ws://h:1/ws"
    assert ws_url("https://h:1/") == "wss://h:1/ws"
    assert ws_url("ws://h:1/ws", token="t t") == "ws://h:1/ws?token=t+t"


async def test_tail_command_prints_events_as_json_lines(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(A, message=str(i)) for i in range(3)]
    exe = shutil.which("rpa-bus") or f"{sys.prefix}/bin/rpa-bus"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "tail",
        A,
        "--url",
        relay.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(3):
            line = await asyncio.wait_for(proc.stdout.readline(), 20 * UNIT_S)
            lines.append(orjson.loads(line))
        assert [line["id"] for line in lines] == ids
        assert lines[0] == {
            "type": "event",
            "stream": A,
            "id": ids[0],
            "data": lines[0]["data"],
        }
        assert lines[2]["data"]["message"] == "2"
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_loop_left_with_break_and_no_close_does_not_hang_the_exit(
    relay: Relay, writer: Writer
) -> None:
    """The README's first example breaks out of ``for item in Subscription(...)`` without
    closing it: the process must still exit at once (it hung on the connection's reader
    thread at interpreter shutdown)."""
    await writer.add(A, message="one")
    script = (
        "import sys\n"
        "from relay import Event, Subscription\n"
        f"for item in Subscription({relay.url!r}, [{A!r}]):\n"
        "    if isinstance(item, Event):\n"
        "        print(item.data['message'], flush=True)\n"
        "        break\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20 * UNIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, out.strip()) == (0, b"one")
