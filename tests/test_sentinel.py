"""The bus on a real Sentinel group: 1 master, 1 replica, 3 sentinels from redis-server.

A forced failover (``SENTINEL FAILOVER``) in the middle of a session: the producer and the
monitor follow the new master; nothing is lost or written twice. The relay's part comes
with its Sentinel support.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from monitor import Monitor, MonitorSettings
from producer import AsyncProducer, Producer
from rpa_bus import Keys, Settings
from rpa_bus.cli._ops import connect, list_sessions
from tests._cluster import LocalSentinel, running
from tests.conftest import UNIT_S

KEYS = Keys()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    with running(LocalSentinel, tmp_path_factory.mktemp("sentinel")) as group:
        yield group


def master_client(group: LocalSentinel) -> redis.Redis:
    return redis.Redis(port=group.current_master(), socket_timeout=5.0)


def events(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
    return [orjson.loads(fields[b"e"]) for _, fields in entries]


async def test_async_producer_and_cli_through_sentinel(
    sentinel: LocalSentinel, tmp_path: Path
) -> None:
    async with AsyncProducer(sentinel.url, spool_dir=tmp_path, min_replicas=1) as bus:
        async with bus.session("via-sentinel", total=3) as s:
            for i in range(1, 4):
                s.progress(i, f"step {i}")
        assert await bus.flush(5 * UNIT_S), bus.last_error
    with master_client(sentinel) as client:
        got = [e["type"] for e in events(client, KEYS.session("via-sentinel"))]
    assert got == ["started", "progress", "progress", "progress", "finished"]
    cli = connect(Settings(redis_url=sentinel.url))
    try:
        rows = {r.session: r for r in list_sessions(cli, KEYS)}
    finally:
        cli.close()
    assert rows["via-sentinel"].status == "finished"


def test_forced_failover_mid_session_loses_and_duplicates_nothing(
    sentinel: LocalSentinel, tmp_path: Path
) -> None:
    old_master = sentinel.current_master()
    bus = Producer(sentinel.url, spool_dir=tmp_path / "p", min_replicas=1)
    mon = Monitor(
        MonitorSettings(
            bus=Settings(redis_url=sentinel.url, spool_dir=tmp_path / "m"),
            host_name="sentinel-host",
            interval_s=0.1,
        )
    )
    mon_thread = threading.Thread(target=mon.run, name="monitor-under-test")
    mon_thread.start()
    rounds = 200
    errors: list[BaseException] = []

    def job() -> None:
        try:
            with bus.session("failover-run", total=rounds) as s:
                for i in range(1, rounds + 1):
                    s.progress(i, data={"i": i})
                    time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=job)
    try:
        thread.start()
        time.sleep(1.0)
        sentinel.fail_over(old_master, 40 * UNIT_S)
        followed_by = time.monotonic() + 30 * UNIT_S
        thread.join(30 * UNIT_S)
        assert not errors, errors
        assert bus.flush(30 * UNIT_S), bus.last_error
        switched_ms = int(time.time() * 1000)
        # The monitor follows too: fresh samples land on the new master.
        while True:
            with master_client(sentinel) as client:
                samples = [
                    e
                    for e in events(client, KEYS.monitor("sentinel-host"))
                    if e["type"] == "metrics" and e["data"]["bus"].get("reachable")
                ]
                stamp = client.hget(KEYS.monitors, "sentinel-host")
            if stamp is not None and int(stamp) > switched_ms and samples:
                break
            assert time.monotonic() < followed_by, "the monitor did not follow"
            time.sleep(0.1)
    finally:
        mon.stop()
        mon_thread.join(10 * UNIT_S)
        mon.close()
        bus.close()
    assert sentinel.current_master() != old_master
    with master_client(sentinel) as client:
        got = events(client, KEYS.session("failover-run"))
    assert [e["type"] for e in got].count("started") == 1
    assert [e["type"] for e in got].count("finished") == 1
    assert [e["data"]["i"] for e in got if e["type"] == "progress"] == list(range(1, rounds + 1))
