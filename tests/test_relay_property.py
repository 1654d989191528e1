"""Property: under any interleaving of produce / subscribe / read / disconnect / resume, each
client's events are exactly the stream's ids after its ``from``: in order, no gap, no dup."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from relay import Relay
from relay._frames import parse_id
from tests._relay_support import Writer, close_relay, relay_settings
from tests.conftest import UNIT_S

N_CLIENTS = 3

op = st.one_of(
    st.tuples(st.just("produce"), st.integers(1, 12)),
    st.tuples(st.just("subscribe"), st.integers(0, N_CLIENTS - 1), st.sampled_from("0$m")),
    st.tuples(st.just("read"), st.integers(0, N_CLIENTS - 1), st.integers(0, 8)),
    st.tuples(st.just("disconnect"), st.integers(0, N_CLIENTS - 1), st.booleans()),
    st.tuples(st.just("resume"), st.integers(0, N_CLIENTS - 1)),
)


@dataclass
class Watcher:
    after: str | None = None  # the exclusive start this client asked for (resolved)
    ws: ClientConnection | None = None
    received: list[str] = field(default_factory=list)
    epoch: str | None = None


async def _frame(ws: ClientConnection, timeout_s: float) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(timeout_s):
            raw = await ws.recv()
    except TimeoutError:
        return None
    frame: dict[str, Any] = orjson.loads(raw)
    return frame


def _track(w: Watcher, frame: dict[str, Any]) -> None:
    if frame["type"] == "event":
        w.received.append(frame["id"])


async def _subscribe(url: str, stream: str, w: Watcher, from_: str) -> None:
    w.ws = await connect(url, open_timeout=5 * UNIT_S)
    op: dict[str, Any] = {"op": "subscribe", "stream": stream, "from": from_}
    if w.epoch:
        op["epoch"] = w.epoch
    await w.ws.send(orjson.dumps(op).decode())
    while True:
        frame = await _frame(w.ws, 5 * UNIT_S)
        assert frame is not None, "no subscribed frame"
        if frame["type"] == "subscribed":
            w.epoch = frame["epoch"]
            if w.after is None:
                w.after = (frame["last"] or "0-0") if from_ == "$" else from_
            return
        _track(w, frame)


async def scenario(redis_url: str, ops: list[tuple[Any, ...]], pick: int) -> None:
    stream = f"session:p-{uuid.uuid4().hex[:10]}"
    writer = Writer(redis_url)
    relay = Relay(relay_settings(redis_url, page_size=7, queue_frames=16))
    await relay.start()
    watchers = [Watcher() for _ in range(N_CLIENTS)]
    try:
        await writer.start(stream.split(":", 1)[1])
        for step in ops:
            kind, *args = step
            if kind == "produce":
                await writer.add_many(stream, args[0])
                continue
            w = watchers[args[0]]
            if kind == "subscribe" and w.after is None:
                ids = await writer.ids(stream)
                from_ = args[1]
                if from_ == "m":
                    from_ = ids[pick % len(ids)] if ids else "0"
                await _subscribe(relay.url, stream, w, from_)
            elif kind == "read" and w.ws is not None:
                for _ in range(args[1]):
                    frame = await _frame(w.ws, 0.02)
                    if frame is None:
                        break
                    _track(w, frame)
            elif kind == "disconnect" and w.ws is not None:
                if args[1]:
                    w.ws.transport.abort()
                await w.ws.close()
                w.ws = None
            elif kind == "resume" and w.after is not None and w.ws is None:
                await _subscribe(relay.url, stream, w, w.received[-1] if w.received else w.after)
        final = await writer.add(stream, message="final")
        all_ids = await writer.ids(stream)
        for w in watchers:
            if w.after is None:
                continue
            if w.ws is None:
                await _subscribe(relay.url, stream, w, w.received[-1] if w.received else w.after)
            assert w.ws is not None
            while not w.received or w.received[-1] != final:
                frame = await _frame(w.ws, 10 * UNIT_S)
                assert frame is not None, f"stalled after {w.received[-3:]}"
                _track(w, frame)
            expected = [i for i in all_ids if parse_id(i) > parse_id(w.after)]
            assert w.received == expected
    finally:
        for w in watchers:
            if w.ws is not None:
                await w.ws.close()
        await close_relay(relay)
        await writer.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=3, max_size=25), pick=st.integers(0, 1000))
def test_random_interleavings_deliver_exactly_the_ids_after_from(
    redis_url: str, ops: list[tuple[Any, ...]], pick: int
) -> None:
    asyncio.run(scenario(redis_url, ops, pick))
