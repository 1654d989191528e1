"""The producer's close() racing its flusher on a real Redis Cluster (3 masters + 3
replicas, ``min_replicas=1``): issue 11 #2."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import Keys
from tests._cluster import LocalCluster
from tests.conftest import UNIT_S

KEYS = Keys()


def test_close_while_the_flusher_is_mid_write_does_not_crash_it(
    cluster: LocalCluster,
    rc: redis.RedisCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() gives up waiting (its timeout) while the flusher is between reading a batch
    and sending it to the nodes, as in a failover: the flusher must finish its step
    without ``cannot schedule new futures after shutdown``, and every event lands once."""
    sids = [f"race-{i}" for i in range(24)]
    assert len({cluster.master_of_key(KEYS.session(s)) for s in sids}) > 1
    bus = Producer(cluster.url, spool_dir=tmp_path, min_replicas=1)
    for sid in sids:
        bus.publish(f"session:{sid}", {"type": "log", "message": "m0"})
    assert bus.flush(20 * UNIT_S)  # one pipeline per master: the flusher's threads exist

    # Hold the flusher at the step that routes a batch to the nodes.
    entered, go = threading.Event(), threading.Event()
    hook = "_jobs" if hasattr(bus, "_jobs") else "_route"
    real = getattr(bus, hook)

    def held(*args: Any) -> Any:
        entered.set()
        assert go.wait(30 * UNIT_S)
        return real(*args)

    setattr(bus, hook, held)
    for sid in sids:
        bus.publish(f"session:{sid}", {"type": "log", "message": "m1"})
    assert entered.wait(10 * UNIT_S)
    thread = bus._thread
    assert thread is not None
    bus.close(timeout_s=0.2)  # gives up: the flusher is still inside its step
    assert thread.is_alive()
    go.set()
    thread.join(20 * UNIT_S)
    assert not thread.is_alive()
    assert not isinstance(bus.last_error, RuntimeError), bus.last_error
    assert "unexpected error" not in caplog.text

    # What close() left in the journal is delivered by the next producer, once.
    nxt = Producer(cluster.url, spool_dir=tmp_path, min_replicas=1)
    assert nxt.flush(20 * UNIT_S)
    nxt.close()
    for sid in sids:
        entries = rc.xrange(KEYS.session(sid))
        assert [orjson.loads(f[b"e"])["message"] for _id, f in entries] == ["m0", "m1"], sid
    assert list(tmp_path.glob("*.journal")) == []


def test_a_jobs_profile_is_read_on_a_cluster_sync_and_async(
    cluster: LocalCluster, rc: redis.RedisCluster, tmp_path: Path
) -> None:
    """The flusher's GET of ``P:job:JOB:profile`` routes like any key on a cluster (the
    client's slot map is read first when the producer has not written yet)."""
    import asyncio

    from producer import AsyncProducer
    from rpa_bus import StepProfile
    from tests._wait import wait_for, wait_for_async

    rc.set(KEYS.job_profile("cj"), orjson.dumps(StepProfile.learn([{1: 2.0, 2: 3.0}]).as_json()))
    bus = Producer(cluster.url, spool_dir=tmp_path / "sync")
    try:
        with bus.session("cj-1", job="cj", total=2) as s:
            wait_for(lambda: bus.profile("cj"), what="the profile read on the cluster")
            with s.step(1, "one"):
                pass
        assert bus.flush(20 * UNIT_S)
    finally:
        bus.close(timeout_s=5 * UNIT_S)
    got = [orjson.loads(f[b"e"]) for _, f in rc.xrange(KEYS.session("cj-1"))]
    assert [e.get("eta_runs") for e in got if e["type"] == "step"] == [1, 1]

    async def run_async() -> None:
        async with AsyncProducer(cluster.url, spool_dir=tmp_path / "async") as abus:
            async with abus.session("cj-2", job="cj", total=2):
                await wait_for_async(lambda: abus.profile("cj"), what="the profile, async")
            assert await abus.flush(20 * UNIT_S)

    asyncio.run(run_async())
