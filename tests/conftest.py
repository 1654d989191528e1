"""Shared fixtures: a private Redis server per test, a fault proxy, one time unit.

Every integration test talks to a real Redis started here on a free port (never the
machine's own on 6379), so tests can stop, kill and restart it. If no server binary can be
found the test fails with instructions; it never skips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rpa_bus.cli._embedded import EmbeddedRedis, ServerNotFound, find_server_binary
from tests._cluster import LocalCluster, running
from tests._postgres import LocalPostgres, PostgresNotFound
from tests._proxy import FaultProxy

# One scaled unit for every wait in the tests: raise RPA_BUS_TEST_UNIT on a slow machine.
UNIT_S = float(os.environ.get("RPA_BUS_TEST_UNIT", "1.0"))


@pytest.fixture(scope="session")
def server_binary() -> Path:
    try:
        return find_server_binary()
    except ServerNotFound as exc:
        pytest.fail(f"{exc}. The test suite needs a real Redis server.", pytrace=False)


@pytest.fixture
def redis_server(tmp_path: Path, server_binary: Path) -> Iterator[EmbeddedRedis]:
    """A private, persistent (AOF) Redis on a free loopback port; stop()/start() keep data."""
    server = EmbeddedRedis(tmp_path / "redis", binary=server_binary, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def proxy(redis_server: EmbeddedRedis) -> Iterator[FaultProxy]:
    p = FaultProxy(redis_server.port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3+3 Redis Cluster, one per test module that asks (a module that kills a
    master leaves the topology changed for its own later tests only)."""
    with running(LocalCluster, tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    """A sync cluster client for checking what a test left in the cluster."""
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.live_ports()[0], socket_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One private PostgreSQL per test run (never the machine's on 5432); tests may stop
    and start it: each test that asks for ``postgres_url`` finds it running again.

    Its folder is its own, not under pytest's base temp: concurrent pytest runs prune each
    other's old base temps, which would delete a live server's data."""
    folder = Path(tempfile.mkdtemp(prefix="rpa-bus-pg-"))
    try:
        server = LocalPostgres(folder / "pg")
    except PostgresNotFound as exc:
        pytest.fail(f"{exc}. The archive tests need a real PostgreSQL.", pytrace=False)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A fresh, empty database on the private server, for this test alone."""
    if not postgres_server.running():
        postgres_server.start()
    name = f"t{uuid.uuid4().hex[:12]}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    return postgres_server.url_for(name)
