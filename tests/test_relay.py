"""Relay protocol: frames, replay/live handoff, resume, gap, reset, errors (real Redis)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import rpa_bus
from relay import Relay
from tests._relay_support import (
    KEYS,
    Client,
    Writer,
    relay,
    relay_settings,
    writer,
)

__all__ = ["relay", "writer"]  # fixtures imported for pytest

S = "session:job-1"


async def test_subscribe_replays_history_then_goes_live(relay: Relay, writer: Writer) -> None:
    epoch = await writer.start("job-1")
    first = await writer.add(S, "started", total=3)
    second = await writer.add(S, "progress", step=1, total=3, message="one")
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    sub = await c.expect("subscribed")
    assert sub["stream"] == S
    assert sub["epoch"] == epoch
    assert sub["first"] == first
    assert sub["last"] == second
    assert sub["state"]["status"] == "running"
    assert sub["state"]["step"] == 1
    assert sub["state"]["message"] == "one"
    e1 = await c.expect("event")
    assert e1 == {
        "type": "event",
        "stream": S,
        "id": first,
        "data": orjson.loads(await _raw(writer, S, first)),
    }
    assert (await c.expect("event"))["id"] == second
    assert await c.recv() == {"type": "live", "stream": S}
    third = await writer.add(S, "progress", step=2, total=3)
    live = await c.expect("event")
    assert live["id"] == third
    assert live["data"]["step"] == 2
    await c.close()


async def _raw(writer: Writer, stream: str, entry_id: str) -> bytes:
    [(_, fields)] = await writer.r.xrange(writer.key(stream), entry_id, entry_id)
    raw: bytes = fields[b"e"]
    return raw


async def test_from_is_exclusive_and_dollar_means_only_new(relay: Relay, writer: Writer) -> None:
    await writer.start("job-1")
    ids = [await writer.add(S, message=str(i)) for i in range(5)]
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S, **{"from": ids[1]})
    await c.expect("live")
    assert c.ids(S) == ids[2:]
    d = await Client.open(relay.url)
    await d.send(op="subscribe", stream=S, **{"from": "$"})
    assert (await d.expect("subscribed"))["last"] == ids[-1]
    assert await d.recv() == {"type": "live", "stream": S}
    new = await writer.add(S, message="new")
    assert (await d.expect("event"))["id"] == new
    assert (await c.expect("event"))["id"] == new
    await c.close()
    await d.close()


async def test_query_string_subscribes_at_connect(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(S) for _ in range(3)]
    c = await Client.open(f"{relay.url}?stream={S}&from={ids[0]}")
    await c.expect("live")
    assert c.ids(S) == ids[1:]
    await c.close()


async def test_query_string_is_percent_decoded_once(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(S) for _ in range(2)]
    c = await Client.open(f"{relay.url}?stream=session%3Ajob-1&from={ids[0]}")
    await c.expect("live")
    assert c.ids(S) == ids[1:]
    await c.close()


async def test_one_read_of_many_entries_reaches_each_client_whole_and_in_order(
    relay: Relay, writer: Writer
) -> None:
    """Entries read together are written to each client as one write (relay._writes):
    frames of every length header (7-bit, 16-bit, 64-bit) must arrive whole, in order."""
    await writer.start("job-1")
    clients = [await Client.open(f"{relay.url}?stream={S}&from=$") for _ in range(3)]
    for c in clients:
        await c.expect("live")
    sizes = [0, 200, 70_000, 10, 3_000, 0, 66_000, 50]
    key = writer.key(S)
    async with writer.r.pipeline(transaction=False) as pipe:
        for i, size in enumerate(sizes):
            envelope = rpa_bus.make("log", message=f"m{i}", data=("x" * size) or None)
            pipe.xadd(key, {"e": rpa_bus.encode(envelope)})
        written = [x.decode() for x in await pipe.execute()]
    for c in clients:
        await c.until(lambda f: f.get("id") == written[-1], 10)
        assert c.ids(S) == written
        events = [f for f in c.frames if f["type"] == "event"]
        assert [len(e["data"].get("data") or "") for e in events] == sizes
        await c.close()


async def test_stream_that_does_not_exist_yet_goes_live_when_job_starts(
    relay: Relay, writer: Writer
) -> None:
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream="session:later")
    sub = await c.expect("subscribed")
    assert sub["first"] is None
    assert sub["last"] is None
    assert sub["epoch"] is None
    assert sub["state"] == {}
    await c.expect("live")
    await writer.start("later")
    first = await writer.add("session:later", "started")
    assert (await c.expect("event"))["id"] == first
    await c.close()


async def test_unsubscribed_never_started_stream_leaves_no_key(
    relay: Relay, writer: Writer
) -> None:
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream="session:ghost")
    await c.expect("live")
    key = writer.key("session:ghost")
    assert await writer.r.exists(key)  # MKSTREAM: tailed while waiting for the job
    await c.send(op="unsubscribe", stream="session:ghost")
    await c.close()
    for _ in range(100):
        if not await writer.r.exists(key):
            break
        await asyncio.sleep(0.05)
    assert not await writer.r.exists(key)


async def test_many_subscriptions_on_one_connection(relay: Relay, writer: Writer) -> None:
    streams = [f"session:s{i}" for i in range(5)] + ["sessions", "monitor:host-1"]
    c = await Client.open(relay.url)
    for s in streams:
        await c.send(op="subscribe", stream=s)
    for _ in streams:
        await c.expect("live")
    sent = {
        s: await writer.add(s, "metrics" if s.startswith("monitor") else "log") for s in streams
    }
    for _ in streams:
        await c.expect("event")
    assert {s: c.ids(s) for s in streams} == {s: [i] for s, i in sent.items()}
    subscribed = {f["stream"]: f for f in c.frames if f["type"] == "subscribed"}
    assert subscribed["sessions"]["epoch"] == ""
    assert subscribed["sessions"]["state"] == {}
    await c.close()


async def test_unsubscribe_stops_delivery(relay: Relay, writer: Writer) -> None:
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    await c.send(op="subscribe", stream="session:other")
    await c.expect("live")
    await c.expect("live")
    await c.send(op="unsubscribe", stream=S)
    await writer.add(S)
    marker = await writer.add("session:other")
    await c.until(lambda f: f.get("id") == marker)
    assert c.ids(S) == []
    await c.close()


async def test_ping_pong(relay: Relay) -> None:
    c = await Client.open(relay.url)
    await c.send(op="ping")
    assert await c.recv() == {"type": "pong"}
    await c.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"stream": "sessions"}', "bad_request"),
        ('{"op": "fly"}', "unknown_op"),
        ('{"op": "subscribe", "stream": "session:bad id"}', "invalid_stream"),
        ('{"op": "subscribe", "stream": "queue:x"}', "invalid_stream"),
        ('{"op": "subscribe"}', "invalid_stream"),
        ('{"op": "subscribe", "stream": "sessions", "from": "abc"}', "invalid_offset"),
        ('{"op": "subscribe", "stream": "sessions", "from": 5}', "invalid_offset"),
        ('{"op": "subscribe", "stream": "sessions", "epoch": 5}', "bad_request"),
        ('{"op": "unsubscribe", "stream": "sessions"}', "bad_request"),
        ('{"op": "unsubscribe", "stream": "x:y"}', "invalid_stream"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays(
    relay: Relay, message: str, code: str
) -> None:
    c = await Client.open(relay.url)
    await c.ws.send(message)
    frame = await c.recv()
    assert frame["type"] == "error", frame
    assert frame["code"] == code, frame
    assert frame["message"]
    await c.send(op="ping")
    assert await c.recv() == {"type": "pong"}
    await c.close()


async def test_binary_frame_is_a_bad_request(relay: Relay) -> None:
    c = await Client.open(relay.url)
    await c.ws.send(b'{"op": "ping"}')
    assert (await c.recv())["code"] == "bad_request"
    await c.close()


async def test_resubscribe_restarts_from_new_offset(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(S) for _ in range(3)]
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    await c.expect("live")
    await c.send(op="subscribe", stream=S, **{"from": ids[1]})
    await c.expect("live")
    assert c.ids(S) == [*ids, ids[2]]
    await c.close()


async def test_late_joiners_while_writing_get_every_event_once(
    relay: Relay, writer: Writer
) -> None:
    await writer.start("job-1")
    done = asyncio.Event()
    written: list[str] = []

    async def produce() -> None:
        for i in range(400):
            written.append(await writer.add(S, message=str(i)))
            if i % 20 == 0:
                await asyncio.sleep(0.002)
        done.set()

    task = asyncio.create_task(produce())
    clients: list[Client] = []
    for _ in range(8):
        await asyncio.sleep(0.02)
        c = await Client.open(relay.url)
        await c.send(op="subscribe", stream=S)
        clients.append(c)
    await task
    for c in clients:
        await c.until(lambda f: f.get("id") == written[-1], 10)
        assert c.ids(S) == written
        assert [f["type"] for f in c.frames].count("live") == 1
        await c.close()


async def test_resume_from_last_id_after_disconnect(relay: Relay, writer: Writer) -> None:
    written = [await writer.add(S, message=str(i)) for i in range(50)]
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    for _ in range(20):
        await c.expect("event")
    c.ws.transport.abort()  # drop mid-stream, unread frames and all
    got = c.ids(S)
    written += [await writer.add(S, message=str(i)) for i in range(50, 80)]
    d = await Client.open(relay.url)
    await d.send(op="subscribe", stream=S, **{"from": got[-1]})
    await d.until(lambda f: f.get("id") == written[-1])
    assert got + d.ids(S) == written
    await d.close()


async def test_trimmed_history_sends_gap_then_retained_rest(relay: Relay, writer: Writer) -> None:
    ids = [await writer.add(S, message=str(i)) for i in range(20)]
    await writer.r.xtrim(writer.key(S), maxlen=5, approximate=False)
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S, **{"from": ids[3]})
    sub = await c.expect("subscribed")
    assert sub["first"] == ids[15]
    gap = await c.recv()
    assert gap == {"type": "gap", "stream": S, "from": ids[3], "first": ids[15]}
    await c.expect("live")
    assert c.ids(S) == ids[15:]
    # From 0 there is no gap: the client asked for whatever is retained.
    d = await Client.open(relay.url)
    await d.send(op="subscribe", stream=S, **{"from": "0"})
    await d.expect("live")
    assert [f["type"] for f in d.frames].count("gap") == 0
    await c.close()
    await d.close()


async def test_recreated_stream_sends_reset_and_replays_from_start(
    relay: Relay, writer: Writer
) -> None:
    old_epoch = await writer.start("job-1")
    old = [await writer.add(S) for _ in range(3)]
    await writer.r.delete(writer.key(S), KEYS.meta("job-1"))
    new_epoch = await writer.start("job-1")
    new = [await writer.add(S) for _ in range(2)]
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S, epoch=old_epoch, **{"from": old[-1]})
    assert (await c.expect("subscribed"))["epoch"] == new_epoch
    assert await c.recv() == {"type": "reset", "stream": S, "epoch": new_epoch}
    await c.expect("live")
    assert c.ids(S) == new
    await c.close()


async def test_live_subscriber_sees_reset_when_stream_is_recreated(
    relay: Relay, writer: Writer
) -> None:
    await writer.start("job-1")
    await writer.add(S)
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    await c.expect("live")
    await writer.r.delete(writer.key(S), KEYS.meta("job-1"))
    new_epoch = await writer.start("job-1")
    fresh = await writer.add(S, "started")
    reset = await c.expect("reset", 10)
    assert reset["epoch"] in (new_epoch, None)
    await c.until(lambda f: f.get("id") == fresh, 10)
    await c.close()


async def test_same_epoch_resume_has_no_reset(relay: Relay, writer: Writer) -> None:
    epoch = await writer.start("job-1")
    ids = [await writer.add(S) for _ in range(3)]
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S, epoch=epoch, **{"from": ids[0]})
    await c.expect("live")
    assert "reset" not in [f["type"] for f in c.frames]
    assert c.ids(S) == ids[1:]
    await c.close()


async def test_two_relays_each_deliver_every_event(redis_url: str, writer: Writer) -> None:
    async with (
        Relay(relay_settings(redis_url, name="one")) as one,
        Relay(relay_settings(redis_url, name="two")) as two,
    ):
        clients = [await Client.open(r.url) for r in (one, two, one, two)]
        for c in clients:
            await c.send(op="subscribe", stream=S, **{"from": "$"})
            await c.expect("live")
        ids = [await writer.add(S, message=str(i)) for i in range(100)]
        for c in clients:
            await c.until(lambda f: f.get("id") == ids[-1])
            assert c.ids(S) == ids
            await c.close()
        groups = {g["name"].decode() for g in await writer.r.xinfo_groups(writer.key(S))}
        assert groups == {"rpa:relay:one", "rpa:relay:two"}


async def test_group_lag_is_acknowledged_in_redis(relay: Relay, writer: Writer) -> None:
    c = await Client.open(relay.url)
    await c.send(op="subscribe", stream=S)
    await c.expect("live")
    ids = [await writer.add(S) for _ in range(10)]
    await c.until(lambda f: f.get("id") == ids[-1])
    for _ in range(50):
        [group] = await writer.r.xinfo_groups(writer.key(S))
        if group["pending"] == 0 and group["last-delivered-id"].decode() == ids[-1]:
            break
        await asyncio.sleep(0.02)
    assert group["pending"] == 0
    assert group["last-delivered-id"].decode() == ids[-1]
    await c.close()


def test_stream_replies_parse_as_redis_py_does() -> None:
    """The relay's quicker XRANGE/XREVRANGE reply parser gives redis-py's own result."""
    from redis._parsers.helpers import parse_stream_list

    from relay._relay import _stream_list

    replies: list[object] = [
        None,
        [],
        [[b"1-0", [b"e", b"{}"]], [b"2-0", None], None, [b"3-0", [b"a", b"1", b"b", b"2"]]],
        [[b"4-0", []]],
    ]
    for reply in replies:
        assert _stream_list(reply) == parse_stream_list(reply), reply


def test_history_pages_read_raw_and_parsed_replies_alike() -> None:
    """History pages ask for the raw XRANGE reply (the relay's parser hands it over as Redis
    sent it); a client without that parser (a cluster's) gives redis-py's shape: both read
    the same ids and envelopes, ``e`` found among other fields too."""
    from redis._parsers.helpers import parse_stream_list

    from relay._history import RAW_ENTRIES, _entries
    from relay._relay import _stream_list

    reply = [[b"1-0", [b"e", b"{}"]], [b"2-0", [b"x", b"1", b"e", b"[]"]], [b"3-0", []]]
    assert _stream_list(reply, **{RAW_ENTRIES: True}) is reply
    want = [("1-0", b"{}"), ("2-0", b"[]"), ("3-0", None)]
    assert _entries(reply) == want
    assert _entries(parse_stream_list(reply)) == want
    assert _entries([]) == []
