"""The shared I/O room: one classifier, one backoff, the P:config handshake (real Redis)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
import redis.asyncio as aredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry as AsyncRetry

from relay import Relay, RelaySettings
from rpa_bus import ConfigMismatch, Keys, Settings
from rpa_bus.redisio import (
    Backoff,
    RateLimitedLog,
    async_client,
    check_config,
    check_config_async,
    close_async,
    close_race_as_connection_error,
    is_close_race,
    is_retryable,
)
from tests._wait import wait_for_async


@pytest.mark.parametrize(
    "exc",
    [
        rx.ConnectionError("refused"),
        rx.TimeoutError("slow"),
        ConnectionRefusedError(),
        TimeoutError(),
        rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        rx.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        rx.ResponseError("MASTERDOWN Link with MASTER is down"),
        rx.ResponseError("NOREPLICAS Not enough good replicas to write"),
        rx.ReadOnlyError("READONLY You can't write against a read only replica."),
        rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rx.RedisClusterException("no node answered"),
        rx.ClusterError("TTL exhausted."),
    ],
)
def test_transient_failures_are_retryable(exc: BaseException) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.ResponseError("ERR Error running script (call to f_x): user_script:1: oops"),
        rx.AuthenticationError("invalid username-password pair"),
        rx.NoPermissionError("NOPERM this user has no permissions"),
        rx.CrossSlotTransactionError("keys in different slots"),
        ValueError("a bug"),
        KeyError("a bug"),
    ],
)
def test_permanent_failures_are_not(exc: BaseException) -> None:
    assert not is_retryable(exc)


async def _closed_under_a_command(redis_url: str) -> AttributeError:
    """redis-py's close race for real (redis-py #4287): a real asyncio Connection is
    disconnected (``_writer`` set to None by ``disconnect()``) while a command on it has
    passed its connected check, as a cluster client's ``aclose()`` does to the commands
    of other tasks."""
    pool = aredis.ConnectionPool.from_url(redis_url)
    conn = await pool.get_connection()
    try:
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
        await conn.disconnect()  # another task closes it ...
        try:
            await conn._send_packed_command(conn.pack_command("PING"))  # ... mid-command
        except AttributeError as exc:
            return exc
        raise AssertionError("a closed connection sent a command")
    finally:
        await pool.aclose()


async def test_the_asyncio_close_race_is_transient(redis_url: str) -> None:
    race = await _closed_under_a_command(redis_url)
    assert "writelines" in str(race)
    assert is_close_race(race)
    assert is_retryable(race)
    with (
        pytest.raises(rx.ConnectionError, match="redis-py #4287") as caught,
        close_race_as_connection_error(),
    ):
        raise race
    assert caught.value.__cause__ is race


def test_other_attribute_errors_stay_bugs() -> None:
    """Narrow: the same message raised from our own code is a bug, not a retry."""

    def ours() -> None:
        none: object = None
        none.writelines  # type: ignore[attr-defined]  # noqa: B018

    with pytest.raises(AttributeError) as caught:
        ours()
    assert not is_close_race(caught.value)
    assert not is_retryable(caught.value)
    with pytest.raises(AttributeError), close_race_as_connection_error():
        ours()
    assert not is_close_race(AttributeError("'NoneType' object has no attribute 'x'"))


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(initial_s=0.1, max_s=0.8)
    waits = [b.next_s() for _ in range(6)]
    assert 0.05 <= waits[0] <= 0.1
    assert all(0.4 <= w <= 0.8 for w in waits[3:]), waits
    b.reset()
    assert b.next_s() <= 0.1
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=2, max_s=1)


def test_rate_limited_log_reports_once_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimitedLog(logging.getLogger("t"), interval_s=3600)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            rl.warning("down: %s", "x")
        rl.recovered("back")
        rl.recovered("back")  # once only
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["down: x", "back"]


def test_config_handshake_first_writer_wins(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert check_config(client, Keys(buckets=64)) == {"buckets": "64"}
        with pytest.raises(ConfigMismatch, match="RPA_BUS_BUCKETS=64"):
            check_config(client, Keys(buckets=256))
        assert client.hgetall("rpa:config") == {b"buckets": b"64"}
    finally:
        client.close()


async def test_config_handshake_async(redis_url: str) -> None:
    client = async_client(Settings(redis_url=redis_url))
    try:
        assert await check_config_async(client, Keys()) == {"buckets": "256"}
        with pytest.raises(ConfigMismatch):
            await check_config_async(client, Keys(buckets=16))
    finally:
        await close_async(client)


async def test_async_clients_get_the_asyncio_retry() -> None:
    """redis.asyncio awaits its Retry's failure callbacks: a sync Retry would never run."""
    for url in ("redis://127.0.0.1:1/0", "redis+sentinel://127.0.0.1:1/svc"):
        client = async_client(Settings(redis_url=url))
        assert isinstance(client, aredis.Redis)
        kwargs = client.connection_pool.connection_kwargs
        assert isinstance(kwargs["retry"], AsyncRetry), url
        await close_async(client)
    # The relay's own client too (it once had a factory of its own with the sync Retry).
    relay = Relay(RelaySettings(bus=Settings(redis_url="redis://127.0.0.1:1/0")))
    kwargs = relay._client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert isinstance(kwargs["retry"], AsyncRetry)
    relay.close()
    await relay.wait_closed()


async def test_queued_pool_bounds_connections_and_gives_slots_back(redis_url: str) -> None:
    """``async_client(max_connections=2)``: 50 concurrent commands share 2 connections; a
    command that finds both held longer than ``wait_s`` fails as an outage; failed and
    timed-out commands give their slots back (no leak: later commands still run; no extra
    slot: still 2 connections)."""
    client = async_client(Settings(redis_url=redis_url), max_connections=2, wait_s=0.2)
    probe = aredis.Redis.from_url(redis_url)
    try:

        async def connections() -> int:
            return int((await probe.info("clients"))["connected_clients"]) - 1

        await asyncio.gather(*(client.incr("n") for _ in range(50)))
        assert int(await client.get("n")) == 50
        assert await connections() <= 2
        # Both connections blocked for 1 s: a third command waits 0.2 s, then fails.
        blocked = [asyncio.create_task(client.blpop(["empty"], timeout=1)) for _ in range(2)]
        await wait_for_async(lambda: _blocked_clients(probe, 2), what="two BLPOPs blocked")
        with pytest.raises(rx.ConnectionError, match="No connection available"):
            await client.get("n")
        assert await asyncio.gather(*blocked) == [None, None]
        for _ in range(5):  # errors from Redis release their connection too
            with pytest.raises(rx.ResponseError):
                await client.lpush("n", "x")
        await asyncio.gather(*(client.incr("n") for _ in range(50)))
        assert int(await client.get("n")) == 100
        assert await connections() <= 2
    finally:
        await probe.aclose()
        await close_async(client)


async def _blocked_clients(probe: aredis.Redis, n: int) -> bool:
    return int((await probe.info("clients"))["blocked_clients"]) >= n


def test_clients_give_redis_py_its_version_so_no_connection_reads_package_metadata() -> None:
    """redis-py 8 looks its own version up in the package metadata for every connection
    it makes unless given one (about 0.5 ms, in the event loop): every client built here
    is given it."""
    from rpa_bus.redisio import async_client, sync_client

    settings = Settings(redis_url="redis://127.0.0.1:1")
    for client in (async_client(settings), sync_client(settings)):
        kwargs = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        info = kwargs.get("driver_info")
        if info is None:  # redis-py before 8 reads it once, at import
            assert not hasattr(redis, "driver_info")
            continue
        assert info.lib_version == redis.__version__
