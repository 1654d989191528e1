"""The client factory for every connection form, and min_replicas on one server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.sentinel import SentinelConnectionPool

from producer import Producer
from rpa_bus import Keys, Settings, Unavailable
from rpa_bus.cli._embedded import EmbeddedRedis
from rpa_bus.redisio import async_client, close_async, close_sync, sync_client
from tests.conftest import UNIT_S

_BIN = Path(sys.executable).parent / "rpa-bus"
RPA_BUS = str(_BIN) if _BIN.exists() else "rpa-bus"


def test_sentinel_form_builds_a_master_for_client_with_the_settings_timeouts() -> None:
    settings = Settings(
        redis_url="redis+sentinel://u:pw@127.0.0.1:1,127.0.0.1:2/svc/3",
        connect_timeout_s=0.3,
        socket_timeout_s=0.7,
    )
    client = sync_client(settings)  # nothing is contacted yet
    try:
        assert isinstance(client, redis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "u", "pw")
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.3, 0.7)
        sentinels = pool.sentinel_manager.sentinels
        assert len(sentinels) == 2
        sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
        assert sentinel_kwargs["socket_timeout"] == 0.7
        assert sentinel_kwargs.get("password") is None
    finally:
        close_sync(client)


async def test_async_forms_connect_on_first_use() -> None:
    for url, kind in [
        ("redis://127.0.0.1:1/0", aredis.Redis),
        ("redis+sentinel://127.0.0.1:1/svc", aredis.Redis),
        ("redis+cluster://127.0.0.1:1", aredis.RedisCluster),
    ]:
        client = async_client(Settings(redis_url=url))
        assert isinstance(client, kind)
        await close_async(client)


def test_a_cluster_nobody_answers_is_a_connection_error_and_the_producer_keeps_events(
    tmp_path: Path,
) -> None:
    settings = Settings(
        redis_url="redis+cluster://127.0.0.1:1", connect_timeout_s=0.1, socket_timeout_s=0.1
    )
    with pytest.raises(redis.ConnectionError, match="seed node"):
        sync_client(settings)
    bus = Producer(settings=settings.with_(spool_dir=tmp_path))  # never raises for a down Redis
    bus.session("down").start()
    assert not bus.flush(0.5 * UNIT_S)
    assert isinstance(bus.last_error, Unavailable)
    bus.close(timeout_s=0.1)
    assert list(tmp_path.glob("*.journal")), "the event is kept in the journal"


def test_min_replicas_without_replicas_counts_nothing_as_written_until_lowered(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """WAIT sees 0 replicas: the batch is not counted (and is retried, not doubled);
    a producer without the requirement then finds it applied already and adds nothing."""
    bus = Producer(redis_server.url, spool_dir=tmp_path, min_replicas=1, socket_timeout_s=0.2)
    with bus.session("durable") as s:
        s.progress(1)
    assert not bus.flush(1.0 * UNIT_S)
    assert isinstance(bus.last_error, Unavailable)
    assert "replicas acknowledged" in str(bus.last_error)
    bus.close(timeout_s=0.1)
    # The journal is adopted and replayed by the next producer: the script skips it all.
    again = Producer(redis_server.url, spool_dir=tmp_path)
    assert again.flush(5 * UNIT_S)
    again.close()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.xlen(Keys().session("durable")) == 3
        assert client.xlen("rpa:sessions") == 2
    finally:
        client.close()


def test_emit_min_replicas_option_waits_for_replicas(redis_url: str, spool_dir: Path) -> None:
    """`rpa-bus emit --min-replicas 1` on a server without replicas: not written (exit 1,
    kept in the journal, the reason named); without the option it is written (once)."""
    env = {**os.environ, "RPA_BUS_REDIS_URL": redis_url, "RPA_BUS_SPOOL_DIR": str(spool_dir)}
    base = [RPA_BUS, "emit", "cli-durable", "started", "--timeout", "3"]
    strict = subprocess.run(
        [*base, "--min-replicas", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert strict.returncode == 1, strict.stderr
    assert "replicas acknowledged" in strict.stderr
    relaxed = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert relaxed.returncode == 0, relaxed.stderr
    client = redis.Redis.from_url(redis_url)
    try:
        # The journal left by the first run was written by the second, plus its own event.
        assert client.xlen(Keys().session("cli-durable")) == 2
    finally:
        client.close()
