"""Masters with fewer replicas than RPA_BUS_MIN_REPLICAS: the shared helper, the monitor's
``replicas`` alert and ``rpa-bus status``, against a real master and a real replica."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from monitor import Monitor, MonitorSettings
from rpa_bus import Keys, Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from rpa_bus.redisio import (
    ShardReplicas,
    master_label,
    online_replicas,
    replica_counts,
    shards_below,
)
from tests._cluster import LocalCluster
from tests._wait import wait_for
from tests.conftest import UNIT_S

KEYS = Keys()
RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield c
    c.close()


@pytest.fixture
def replica(
    redis_server: EmbeddedRedis, tmp_path: Path, server_binary: Path
) -> Iterator[EmbeddedRedis]:
    """A second server, not yet replicating: ``attach(replica, master)`` makes it one."""
    server = EmbeddedRedis(tmp_path / "replica", binary=server_binary, persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def attach(replica: EmbeddedRedis, master: EmbeddedRedis) -> None:
    with redis.Redis(port=master.port, socket_timeout=5) as m:
        # Diskless sync waits 5 s by default for more replicas to share one transfer.
        m.config_set("repl-diskless-sync-delay", 0)
    with redis.Redis(port=replica.port, socket_timeout=5) as r:
        r.replicaof(master.host, master.port)


def replication(client: redis.Redis) -> dict[str, Any]:
    return cast(dict[str, Any], client.info("replication"))


def test_online_replicas_counts_only_replicas_in_sync(
    redis_server: EmbeddedRedis, replica: EmbeddedRedis, client: redis.Redis
) -> None:
    label = master_label(client)
    assert label == f"127.0.0.1:{redis_server.port}"
    alone = replication(client)
    assert online_replicas(alone) == 0
    assert shards_below({label: alone}, min_replicas=1) == [ShardReplicas(label, 0, 1)]
    assert shards_below({label: alone}, min_replicas=0) == []

    attach(replica, redis_server)
    wait_for(lambda: online_replicas(replication(client)) == 1, what="replica in sync")
    info = replication(client)
    assert info["connected_slaves"] == 1
    assert shards_below({label: info}, min_replicas=1) == []
    assert shards_below({label: info}, min_replicas=2) == [ShardReplicas(label, 1, 2)]
    # The replica itself (a demoted master, after a failover) counts none.
    with redis.Redis(port=replica.port, socket_timeout=5) as r:
        assert online_replicas(replication(r)) == 0
    # A replica still loading its snapshot does not acknowledge WAIT yet.
    loading = {"role": "master", "connected_slaves": 1, "slave0": {"state": "wait_bgsave"}}
    assert online_replicas(loading) == 0
    assert online_replicas({"role": "master", "slave0": "ip=a,port=1,state=online"}) == 1
    counts = replica_counts({"b:2": info, "a:1": alone}, min_replicas=1)
    assert [(s.master, s.replicas, s.below) for s in counts] == [
        ("a:1", 0, True),
        ("b:2", 1, False),
    ]


def events(client: redis.Redis, host: str = "test-host") -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.monitor(host)))
    return [orjson.loads(fields[b"e"]) for _, fields in entries]


def test_the_monitor_alerts_on_a_master_below_min_replicas(
    redis_server: EmbeddedRedis,
    replica: EmbeddedRedis,
    redis_url: str,
    client: redis.Redis,
    spool_dir: Path,
) -> None:
    """No replica left (a failover promoted it, or it died): every producer batch would
    wait for ever. The monitor fires `replicas` for that master, after the usual
    hysteresis, and resolves it once a replica is back in sync."""
    bus = Settings(redis_url=redis_url, spool_dir=spool_dir, min_replicas=1)
    settings = MonitorSettings(
        host_name="test-host", bus=bus, interval_s=0.2, alert_samples=2, cpu_warn=100.0
    )
    master = f"127.0.0.1:{redis_server.port}"

    def replica_alerts() -> list[dict[str, Any]]:
        return [
            e["data"] for e in events(client) if e["type"] == "alert"
            if e["data"]["metric"] == "replicas"
        ]  # fmt: skip

    with Monitor(settings) as mon:
        for _ in range(3):
            mon.tick()
        assert mon.flush(5)
        [firing] = replica_alerts()
        assert firing == {
            "metric": "replicas",
            "value": 0.0,
            "threshold": 1,
            "severity": "critical",
            "state": "firing",
            "master": master,
        }
        samples = [e["data"] for e in events(client) if e["type"] == "metrics"]
        assert [s["bus"]["replicas"] for s in samples] == [{master: 0}] * 3
        # Fired at the second sample below, not the first (hysteresis).
        firing = [[a["metric"] for a in s["alerts"]["firing"]] for s in samples]
        assert firing == [[], ["replicas"], ["replicas"]]

        attach(replica, redis_server)
        wait_for(lambda: online_replicas(replication(client)) == 1, what="replica in sync")
        for _ in range(2):
            mon.tick()
        assert mon.flush(5)
    assert [a["state"] for a in replica_alerts()] == ["firing", "resolved"]
    assert replica_alerts()[-1]["value"] == 1.0
    last = [e["data"] for e in events(client) if e["type"] == "metrics"][-1]
    assert last["bus"]["replicas"] == {master: 1}
    assert last["alerts"] == {"count": 0, "firing": []}  # nothing else fires at 100%


def status(
    url: str, tmp_path: Path, *args: str, min_replicas: int
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_BUS_")}
    env |= {
        "RPA_BUS_REDIS_URL": url,
        "RPA_BUS_MIN_REPLICAS": str(min_replicas),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    return subprocess.run(
        [RPA_BUS, "status", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_status_names_a_master_below_min_replicas(
    redis_server: EmbeddedRedis, replica: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    master = f"127.0.0.1:{redis_server.port}"
    table = status(redis_url, tmp_path, min_replicas=1)
    assert table.returncode == 0, table.stderr
    [line] = [x for x in table.stdout.splitlines() if x.startswith("replicas")]
    assert line.split()[:5] == ["replicas", master, "0", "online", "of"]
    assert "BELOW RPA_BUS_MIN_REPLICAS" in line
    report = json.loads(status(redis_url, tmp_path, "--json", min_replicas=1).stdout)
    assert report["replicas"] == {
        "min_replicas": 1,
        "masters": [{"master": master, "replicas": 0, "min_replicas": 1, "below": True}],
    }

    attach(replica, redis_server)
    with redis.Redis.from_url(redis_url, socket_timeout=5) as c:
        wait_for(lambda: online_replicas(replication(c)) == 1, what="replica in sync")
    table = status(redis_url, tmp_path, min_replicas=1)
    [line] = [x for x in table.stdout.splitlines() if x.startswith("replicas")]
    assert line.split() == ["replicas", master, "1", "online", "of", "1", "required"]
    report = json.loads(status(redis_url, tmp_path, "--json", min_replicas=0).stdout)
    assert report["replicas"]["masters"][0]["below"] is False


def test_after_a_cluster_failover_the_orphaned_master_is_reported(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The case that stalls producers: a master dies, its only replica is promoted and
    has no replica of its own. The monitor's `replicas` alert names the new master and
    `rpa-bus status` flags it; once the old node rejoins as its replica, both clear."""
    cluster.wait_healthy(time.monotonic() + 30 * UNIT_S)
    bus = Settings(redis_url=cluster.url, spool_dir=tmp_path / "spool", min_replicas=1)
    settings = MonitorSettings(
        host_name="cluster-host", bus=bus, interval_s=0.5, alert_samples=1, cpu_warn=100.0
    )
    key = KEYS.session("orphan-probe")

    def replicas_state(mon: Monitor) -> tuple[dict[str, int], list[dict[str, Any]]]:
        events = mon.tick()
        health = events[0]["data"]["bus"]
        alerts = [e["data"] for e in events[1:] if e["data"]["metric"] == "replicas"]
        return (health.get("replicas") or {}), alerts

    with Monitor(settings) as mon:
        before, fired = replicas_state(mon)
        assert sorted(before.values()) == [1, 1, 1]
        assert fired == []
        victim = cluster.master_of_key(key)
        cluster.kill(victim)
        cluster.wait_replaced(victim, time.monotonic() + 20 * UNIT_S)
        seen: list[dict[str, Any]] = []

        def orphan_alerted() -> str | None:
            # Asked again each time: on a loaded machine the first answer after the
            # failover can still name a node that is about to hand the slot over.
            orphan = f"127.0.0.1:{cluster.master_of_key(key)}"
            counts, alerts = replicas_state(mon)
            seen.extend(alerts)
            return orphan if counts.get(orphan) == 0 else None

        orphan = str(wait_for(orphan_alerted, what="the orphaned master in a sample", timeout_s=30))
        assert [(a["master"], a["state"], a["value"]) for a in seen] == [(orphan, "firing", 0.0)]
        report = json.loads(status(cluster.url, tmp_path, "--json", min_replicas=1).stdout)
        below = [m["master"] for m in report["replicas"]["masters"] if m["below"]]
        assert below == [orphan]
        assert len(report["replicas"]["masters"]) == 3

        cluster.nodes[victim].start()  # rejoins as the orphan's replica
        cluster.wait_healthy(time.monotonic() + 30 * UNIT_S)

        def resolved() -> bool:
            counts, alerts = replicas_state(mon)
            seen.extend(alerts)
            return counts.get(orphan) == 1

        wait_for(resolved, what="the orphan's new replica in a sample", timeout_s=20)
        assert [a["state"] for a in seen] == ["firing", "resolved"]
        assert mon.flush(10 * UNIT_S)


async def test_relay_metrics_name_a_master_below_min_replicas(
    redis_server: EmbeddedRedis, replica: EmbeddedRedis, redis_url: str
) -> None:
    """The relay's /metrics (issue 11, item 4): with RPA_BUS_MIN_REPLICAS=1 and no replica
    the master is counted below it; once a replica is in sync, it is not."""
    import asyncio
    import dataclasses
    import urllib.request

    import relay._relay as relay_module
    from relay import Relay
    from tests._relay_support import close_relay, relay_settings
    from tests._wait import wait_for_async

    settings = relay_settings(redis_url, name="replicas")
    settings = settings.with_(bus=dataclasses.replace(settings.bus, min_replicas=1))
    probe_s = relay_module.REPLICAS_PROBE_S
    relay_module.REPLICAS_PROBE_S = 0.05  # type: ignore[misc]
    r = Relay(settings)
    await r.start()

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    label = f'master="127.0.0.1:{redis_server.port}"'
    try:
        below = 'rpa_relay_masters_below_min_replicas{relay="replicas"} 1.0'
        await wait_for_async(
            lambda: asyncio.to_thread(lambda: below in metrics()), what="the master below"
        )
        text = await asyncio.to_thread(metrics)  # the relay answers on this loop
        assert f'rpa_relay_master_replicas{{{label},relay="replicas"}} 0.0' in text
        attach(replica, redis_server)
        fine = 'rpa_relay_masters_below_min_replicas{relay="replicas"} 0.0'
        await wait_for_async(
            lambda: asyncio.to_thread(lambda: fine in metrics()),
            what="the replica counted",
            timeout_s=20,
        )
    finally:
        relay_module.REPLICAS_PROBE_S = probe_s  # type: ignore[misc]
        await close_relay(r)
