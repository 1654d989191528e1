"""The webhook sender on a real Redis Cluster (3 masters + 3 replicas): each endpoint's
keys share one slot (its ``{NAME}`` hash tag), so its scripts run there; sessions on
every master reach the receivers in order, and ``status`` reads the endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producer import AsyncProducer
from rpa_bus import Settings
from tests._cluster import LocalCluster
from tests._receiver import receiving
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from workers import (
    Endpoint,
    WebhookKeys,
    WebhookService,
    WebhookSettings,
    endpoint_status,
    new_secret,
)

pytestmark = pytest.mark.slow


async def until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    await wait_for_async(check, what=what, timeout_s=timeout_s, interval_s=0.05)


async def test_webhooks_on_a_cluster(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    secret = new_secret()
    bus = Settings(redis_url=cluster.url, buckets=16, spool_dir=tmp_path / "spool")
    sids = [f"wh-{i}" for i in range(12)]
    with receiving(secret) as one, receiving(secret) as two:
        endpoints = tuple(
            Endpoint(name=name, url=rx.url, secret=secret, allow_http=True, allow_private=True)
            for name, rx in (("one", one), ("two", two))
        )
        async with WebhookService(WebhookSettings(bus=bus, endpoints=endpoints)) as service:
            runner = asyncio.create_task(service.run())
            producer = AsyncProducer(settings=bus)
            try:
                for sid in sids:
                    s = producer.session(sid, total=3)
                    s.start()
                    for step in (1, 2, 3):
                        s.progress(step)
                    s.finish()
                assert await producer.flush(30)
            finally:
                await producer.close()
            for rx in (one, two):
                await until(lambda rx=rx: len(rx.delivered()) == 12 * 5, "60 deliveries")  # type: ignore[misc]
            service.close()
            await asyncio.wait_for(runner, 30 * UNIT_S)
    for rx in (one, two):
        assert all(r.verified for r in rx.requests)
        for sid in sids:
            got = [
                r.json["type"]
                for r in rx.delivered()
                if r.json["data"]["stream"] == f"session:{sid}"
            ]
            assert got == ["started", "progress", "progress", "progress", "finished"], sid
    rows = {row.name: row for row in endpoint_status(rc, WebhookKeys("rpa"))}
    assert sorted(rows) == ["one", "two"]
    assert all(row.backlog == 0 and row.dead == 0 for row in rows.values())
