"""The webhook outbox and senders against a real Redis and real HTTP receivers on loopback:
signatures, order, retries, timeouts, dead letters and replay, pause, leases, refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
import redis
import redis.asyncio as aredis
from standardwebhooks import Webhook

from rpa_bus import Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from rpa_bus.redisio import REDIS_FAILURES, Entry, async_client, close_async
from tests._receiver import HANG, Receiver, receiving
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from workers import Deliverer, Endpoint, new_secret, sign_headers
from workers._admin import dead_letters, endpoint_status, pause, replay, resume
from workers._outbox import (
    EndpointSender,
    Metrics,
    SenderSettings,
    WebhookKeys,
    WebhookSink,
    webhook_id,
)

KEYS = WebhookKeys("rpa")
FAST = SenderSettings(retry_initial_s=0.05, retry_max_s=0.2, lease_ms=600, block_ms=200)


def event(stream: str, n: int, etype: str = "progress", epoch: str = "e1") -> Entry:
    envelope = {"type": etype, "ts": "2026-11-27T00:00:00.000Z", "step": n, "total": 1000}
    return Entry(stream, stream, epoch, f"{1_700_000_000_000 + n}-0", orjson.dumps(envelope))


async def until(check: Callable[[], bool], timeout_s: float = 15.0, what: str = "") -> None:
    await wait_for_async(check, what=what or "the condition", timeout_s=timeout_s)


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def rx(secret: str) -> Iterator[Receiver]:
    with receiving(secret) as r:
        yield r


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    c = async_client(Settings(redis_url=redis_url))
    yield c  # type: ignore[misc]
    await close_async(c)


@pytest.fixture
def sync(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def endpoint(url: str, secret: str, name: str = "hook", **kw: object) -> Endpoint:
    kw.setdefault("allow_http", True)
    kw.setdefault("allow_private", True)
    return Endpoint(name=name, url=url, secret=secret, streams=("session:*",), **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def sending(
    client: aredis.Redis, ep: Endpoint, *, holder: str = "p1", settings: SenderSettings = FAST,
    metrics: Metrics | None = None,
) -> AsyncIterator[EndpointSender]:  # fmt: skip
    sender = EndpointSender(client, KEYS, ep, holder=holder, settings=settings,
                            metrics=metrics or Metrics())  # fmt: skip
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.close()
        await asyncio.wait_for(task, 10 * UNIT_S)


async def test_signed_in_order_per_stream_and_stable_ids(
    client: aredis.Redis, rx: Receiver, secret: str, sync: redis.Redis
) -> None:
    ep = endpoint(rx.url, secret)
    metrics = Metrics()
    sink = WebhookSink(client, KEYS, [ep], metrics=metrics)
    for stream in ("session:a", "session:b"):
        await sink.put([event(stream, n) for n in range(1, 31)])
    async with sending(client, ep, metrics=metrics):
        await until(lambda: len(rx.delivered()) == 60, what="60 deliveries")
    assert all(r.verified for r in rx.requests)
    for stream in ("session:a", "session:b"):
        got = [r.json for r in rx.delivered() if r.json["data"]["stream"] == stream]
        assert [g["data"]["event"]["step"] for g in got] == list(range(1, 31))
        first = next(r for r in rx.delivered() if r.json["data"]["stream"] == stream)
        assert first.webhook_id == webhook_id("hook", stream, "e1", first.json["data"]["id"])
    body = rx.delivered()[0].json
    assert body["type"] == "progress"
    assert body["timestamp"] == "2026-11-27T00:00:00.000Z"
    assert sync.xlen(KEYS.outbox("hook")) == 0
    assert metrics.value("delivered", "hook") == 60


async def test_put_is_idempotent_and_filters_types(
    client: aredis.Redis, secret: str, sync: redis.Redis
) -> None:
    ep = endpoint("http://127.0.0.1:9/hook", secret, events=("failed", "alert"))
    sink = WebhookSink(client, KEYS, [ep], metrics=Metrics())
    batch = [event("session:a", 1), event("session:a", 2, "failed"), event("monitor:h", 3, "alert")]
    await sink.put(batch[:2])
    await sink.put(batch[:2])  # replayed after a crash between put and XACK
    await sink.put(batch[2:])  # monitor stream: not in the endpoint's patterns
    jobs = sync.xrange(KEYS.outbox("hook"))
    assert [f[b"t"] for _, f in jobs] == [b"failed"]
    # A new epoch of the same session starts afresh, even with lower ids.
    await sink.put([event("session:a", 0, "failed", epoch="e2")])
    assert sync.xlen(KEYS.outbox("hook")) == 2


async def test_500_twice_then_200_is_delivered_once_with_one_id(
    client: aredis.Redis, secret: str, sync: redis.Redis
) -> None:
    with receiving(secret, lambda r, n: 500 if n <= 2 else 200) as rx:
        ep = endpoint(rx.url, secret)
        metrics = Metrics()
        await WebhookSink(client, KEYS, [ep], metrics=metrics).put([event("session:a", 1)])
        async with sending(client, ep, metrics=metrics):
            await until(lambda: len(rx.delivered()) == 1, what="delivery")
            await until(lambda: sync.xlen(KEYS.outbox("hook")) == 0, what="outbox drained")
    assert len(rx.requests) == 3
    assert len({r.webhook_id for r in rx.requests}) == 1
    assert metrics.value("retried", "hook") == 2
    assert metrics.value("delivered", "hook") == 1
    assert endpoint_status(sync, KEYS, ["hook"])[0].last_error == "HTTP 500 Internal Server Error"


async def test_a_hanging_receiver_times_out_and_is_retried(
    client: aredis.Redis, secret: str
) -> None:
    with receiving(secret, lambda r, n: HANG if n == 1 else 200) as rx:
        ep = endpoint(rx.url, secret, timeout_s=0.3)
        await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
        started = time.monotonic()
        async with sending(client, ep):
            await until(lambda: len(rx.delivered()) == 1, what="delivery after the timeout")
    assert time.monotonic() - started >= 0.3
    assert rx.requests[0].webhook_id == rx.delivered()[0].webhook_id
    assert len(rx.requests) == 2


async def test_429_retry_after_is_honoured(client: aredis.Redis, secret: str) -> None:
    with receiving(secret, lambda r, n: (429, {"Retry-After": "1"}) if n == 1 else 200) as rx:
        ep = endpoint(rx.url, secret)  # backoff alone would wait at most 0.2 s
        await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
        async with sending(client, ep):
            await until(lambda: len(rx.delivered()) == 1, what="delivery after 429")
    assert len(rx.requests) == 2
    assert rx.requests[1].at - rx.requests[0].at >= 0.9


async def test_410_is_final_dead_lettered_and_replayed(
    client: aredis.Redis, secret: str, sync: redis.Redis
) -> None:
    gone = [True]
    with receiving(secret, lambda r, n: 410 if gone[0] else 200) as rx:
        ep = endpoint(rx.url, secret)
        metrics = Metrics()
        await WebhookSink(client, KEYS, [ep], metrics=metrics).put([event("session:a", 1)])
        async with sending(client, ep, metrics=metrics):
            await until(lambda: sync.xlen(KEYS.dead("hook")) == 1, what="a dead letter")
            assert len(rx.requests) == 1  # final: no retry
            (letter,) = dead_letters(sync, KEYS, "hook")
            assert letter.error == "HTTP 410 Gone"
            assert letter.attempts == 1
            assert metrics.value("dead", "hook") == 1
            gone[0] = False
            assert replay(sync, KEYS, "hook") == 1
            await until(lambda: len(rx.delivered()) == 1, what="the replayed delivery")
    assert rx.delivered()[0].webhook_id == letter.webhook_id == rx.requests[0].webhook_id
    assert sync.xlen(KEYS.dead("hook")) == 0


async def test_attempts_run_out_into_the_dead_letters(
    client: aredis.Redis, secret: str, sync: redis.Redis
) -> None:
    with receiving(secret, lambda r, n: 503) as rx:
        ep = endpoint(rx.url, secret, max_attempts=3)
        await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
        async with sending(client, ep):
            await until(lambda: sync.xlen(KEYS.dead("hook")) == 1, what="a dead letter")
    assert len(rx.requests) == 3
    assert dead_letters(sync, KEYS, "hook")[0].attempts == 3


async def test_a_dead_endpoint_does_not_delay_another(
    client: aredis.Redis, secret: str, rx: Receiver
) -> None:
    with receiving(secret, lambda r, n: HANG) as stuck:
        slow = endpoint(stuck.url, secret, name="slow", timeout_s=60)
        fast = endpoint(rx.url, secret, name="fast")
        sink = WebhookSink(client, KEYS, [slow, fast], metrics=Metrics())
        async with sending(client, slow), sending(client, fast):
            await sink.put([event("session:a", n) for n in range(1, 21)])
            await until(lambda: len(rx.delivered()) == 20, what="the fast endpoint's 20")
            # All 20 arrived while the slow endpoint's first request still hangs (its
            # timeout is 60 s): the slow one delays nobody but itself.
            assert len(stuck.requests) == 1  # one stream: its order holds behind the first


async def test_pause_and_resume(
    client: aredis.Redis, rx: Receiver, secret: str, sync: redis.Redis
) -> None:
    ep = endpoint(rx.url, secret)
    sink = WebhookSink(client, KEYS, [ep], metrics=Metrics())
    pause(sync, KEYS, "hook")
    async with sending(client, ep):
        await sink.put([event("session:a", 1)])
        await asyncio.sleep(1.0)
        assert rx.requests == []
        assert endpoint_status(sync, KEYS, ["hook"])[0].paused
        resume(sync, KEYS, "hook")
        await until(lambda: len(rx.delivered()) == 1, what="delivery after resume")


async def test_one_lease_holder_delivers_and_another_takes_over(
    client: aredis.Redis, rx: Receiver, secret: str, sync: redis.Redis
) -> None:
    ep = endpoint(rx.url, secret)
    sink = WebhookSink(client, KEYS, [ep], metrics=Metrics())
    async with sending(client, ep, holder="p2") as second:
        async with sending(client, ep, holder="p1") as first:
            await until(lambda: first.holding or second.holding, what="a holder")
            assert not (first.holding and second.holding)
            await sink.put([event("session:a", n) for n in range(1, 6)])
            await until(lambda: len(rx.delivered()) == 5, what="5 deliveries")
        await sink.put([event("session:a", n) for n in range(6, 11)])
        await until(lambda: len(rx.delivered()) == 10, what="10 deliveries")
        assert second.holding
    steps = [r.json["data"]["event"]["step"] for r in rx.delivered()]
    assert steps == list(range(1, 11))


async def test_rate_limit_spaces_deliveries(
    client: aredis.Redis, rx: Receiver, secret: str
) -> None:
    ep = endpoint(rx.url, secret, rate_per_s=20.0)
    await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put(
        [event("session:a", n) for n in range(1, 11)]
    )
    async with sending(client, ep):
        await until(lambda: len(rx.delivered()) == 10, what="10 deliveries")
    arrivals = [r.at for r in rx.delivered()]
    assert arrivals[-1] - arrivals[0] >= 9 / 20 * 0.9


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "loopback"),
        ("http://localhost:{port}/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ],
)
async def test_private_targets_are_refused_without_the_flag(
    client: aredis.Redis, rx: Receiver, secret: str, sync: redis.Redis, url: str, reason: str
) -> None:
    port = rx.url.rsplit(":", 1)[1].split("/")[0]
    ep = endpoint(url.format(port=port), secret, allow_private=False)
    await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
    async with sending(client, ep) as sender:
        await until(lambda: sync.xlen(KEYS.dead("hook")) == 1, what="refusal")
        assert sender.deliverer.connects == 0  # refused before any connection
        if "localhost" not in url:  # an IP literal: refused before the request started
            assert sender.deliverer.connection_attempts == 0
    (letter,) = dead_letters(sync, KEYS, "hook")
    assert "refused" in letter.error
    assert reason in letter.error
    if "localhost" in url:  # the resolver refused the name's answer
        assert "localhost resolves to" in letter.error
    assert rx.requests == []


async def test_a_receiver_that_cannot_verify_answers_401_which_is_final(
    client: aredis.Redis, rx: Receiver, sync: redis.Redis
) -> None:
    ep = endpoint(rx.url, new_secret())  # not the receiver's secret
    await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
    async with sending(client, ep):
        await until(lambda: sync.xlen(KEYS.dead("hook")) == 1, what="a dead letter")
    assert [r.verified for r in rx.requests] == [False]
    assert dead_letters(sync, KEYS, "hook")[0].error == "HTTP 401 Unauthorized"


async def test_a_tampered_body_is_rejected_by_the_receiver(rx: Receiver, secret: str) -> None:
    body = orjson.dumps({"type": "failed", "data": {"stream": "session:a"}})
    headers = sign_headers(Webhook(secret), "msg_t", body, now=datetime.now(UTC))
    async with aiohttp.ClientSession() as http:
        for payload, expected in ((body, 200), (body.replace(b"failed", b"finished"), 401)):
            async with http.post(rx.url, data=payload, headers=headers) as response:
                assert response.status == expected
    assert [r.verified for r in rx.requests] == [True, False]


async def test_a_redis_outage_pauses_delivery_and_nothing_is_lost(
    redis_server: EmbeddedRedis, client: aredis.Redis, rx: Receiver, secret: str,
    sync: redis.Redis,
) -> None:  # fmt: skip
    ep = endpoint(rx.url, secret)
    sink = WebhookSink(client, KEYS, [ep], metrics=Metrics())
    async with sending(client, ep):
        await sink.put([event("session:a", n) for n in range(1, 6)])
        await until(lambda: len(rx.delivered()) == 5, what="5 before the outage")
        await until(lambda: sync.xlen(KEYS.outbox("hook")) == 0, what="their XDEL")
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(REDIS_FAILURES):
            await sink.put([event("session:a", 6)])
        await asyncio.sleep(1.0)  # the sender meets the outage and backs off
        await asyncio.to_thread(redis_server.start)
        await sink.put([event("session:a", n) for n in range(6, 11)])
        await until(lambda: len(rx.delivered()) == 10, what="10 after the outage")
    assert [r.json["data"]["event"]["step"] for r in rx.delivered()] == list(range(1, 11))
    assert len(rx.requests) == 10  # nothing sent twice


async def test_redirects_are_not_followed(
    client: aredis.Redis, rx: Receiver, secret: str, sync: redis.Redis
) -> None:
    with receiving(secret, lambda r, n: (302, {"Location": rx.url})) as redirecting:
        ep = endpoint(redirecting.url, secret)
        await WebhookSink(client, KEYS, [ep], metrics=Metrics()).put([event("session:a", 1)])
        async with sending(client, ep):
            await until(lambda: sync.xlen(KEYS.dead("hook")) == 1, what="a dead letter")
    assert len(redirecting.requests) == 1
    assert rx.requests == []  # the redirect's target never saw it
    assert dead_letters(sync, KEYS, "hook")[0].error == "HTTP 302 Found"


async def test_a_huge_response_is_read_only_up_to_the_cap(secret: str) -> None:
    with receiving(secret, lambda r, n: (200, {}, b"x" * 2_000_000)) as rx:
        ep = endpoint(rx.url, secret)
        async with Deliverer(ep, body_cap_bytes=1000) as deliverer:
            result = await deliverer.post("msg_big", b"{}")
    assert result.ok
    assert len(result.response) <= 1000
