"""Connection forms of RPA_BUS_REDIS_URL: the pure parser (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpa_bus import ConfigError, RedisTarget, Settings, parse_redis_url


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:secret@10.0.0.1:6380/3?socket_keepalive=true",
        "rediss://user:pw@redis.example.com:6380/0",
        "unix:///run/redis.sock?db=2",
        "unix://user:pw@/run/redis.sock",
    ],
)
def test_single_server_forms_pass_through(url: str) -> None:
    target = parse_redis_url(url)
    assert target.topology == "single"
    assert target.url == url
    assert target.format() == url
    assert target.tls is url.startswith("rediss://")


def test_sentinel_form() -> None:
    t = parse_redis_url("redis+sentinel://ana:p%40ss@h1:26379,h2:26380,h3/mymaster/2")
    assert t.topology == "sentinel"
    assert t.hosts == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (t.username, t.password, t.service, t.db, t.tls) == ("ana", "p@ss", "mymaster", 2, False)
    assert "p@ss" not in t.redacted()
    assert "p%40ss" not in t.redacted()
    assert parse_redis_url("rediss+sentinel://h1/svc").tls
    assert parse_redis_url("redis+sentinel://h1/svc/").db == 0


def test_cluster_form() -> None:
    t = parse_redis_url("rediss+cluster://:pw@h1:7000,[::1]:7001,h3")
    assert t.topology == "cluster"
    assert t.tls
    assert t.hosts == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert (t.username, t.password) == (None, "pw")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "non-empty"),
        ("localhost:6379", "no scheme"),
        ("http://localhost", "unknown Redis URL scheme"),
        ("redis://", "names no host"),
        ("unix://", "socket path"),
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel://h1:26379/svc/zero", "not a number"),
        ("redis+sentinel://h1/svc/0/x", "SERVICE[/DB]"),
        ("redis+cluster://h1:7000/0", "no path"),
        ("redis+cluster://h1:7000?timeout=1", "no query"),
        ("redis+cluster://h1:70000", "bad port"),
        ("redis+cluster://h1:", "empty port"),
        ("redis+cluster://h1:7000,,h2", "empty host"),
        ("redis+cluster://[::1", "IPv6"),
        ("redis+cluster://a:b:c", "bad host"),
    ],
)
def test_bad_forms_name_the_problem(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_redis_url(url)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url("redis+cluster://u:hunter2@h1:7000/0")
    assert "hunter2" not in str(info.value)


def test_settings_refuse_a_bad_url_and_read_min_replicas() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        Settings(redis_url="mysql://x")
    s = Settings.from_env(
        {"RPA_BUS_REDIS_URL": "redis+cluster://h:7000", "RPA_BUS_MIN_REPLICAS": "1"}
    )
    assert s.target.topology == "cluster"
    assert s.min_replicas == 1
    with pytest.raises(ConfigError, match="MIN_REPLICAS"):
        Settings.from_env({"RPA_BUS_MIN_REPLICAS": "-1"})
    assert 1 <= Settings(socket_timeout_s=0.01).wait_timeout_ms <= 1000


_host = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_text = st.text(min_size=1, max_size=12)


@given(
    tls=st.booleans(),
    hosts=st.lists(st.tuples(_host, st.integers(1, 65535)), min_size=1, max_size=4),
    username=st.none() | _text,
    password=st.none() | _text,
    service=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    db=st.integers(0, 15),
    sentinel=st.booleans(),
)
def test_round_trip(
    tls: bool,
    hosts: list[tuple[str, int]],
    username: str | None,
    password: str | None,
    service: str,
    db: int,
    sentinel: bool,
) -> None:
    target = RedisTarget(
        "sentinel" if sentinel else "cluster",
        "",
        tls,
        tuple(hosts),
        username,
        password,
        service if sentinel else None,
        db if sentinel else 0,
    )
    url = target.format()
    assert parse_redis_url(url) == target
    assert parse_redis_url(url).format() == url
