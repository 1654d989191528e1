"""Issue 11's producer corners, each against real Redis servers: journals tied to their
target, a flusher stopped by a bug, the memory bound held by emit() itself, monitor
samples and other non-session streams written exactly once, the journal fsync policy."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from producer import AsyncProducer, Producer, list_journals
from rpa_bus import Keys
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._producer_helpers import client, events
from tests._proxy import FaultProxy
from tests._wait import wait_for
from tests.conftest import UNIT_S
from tests.test_producer_faults import messages

ROOT = Path(__file__).resolve().parents[1]


def kept(spool_dir: Path) -> int:
    return sum(j.events for j in list_journals(spool_dir))


def status(url: str, spool_dir: Path) -> subprocess.CompletedProcess[str]:
    exe = ROOT / ".venv" / "bin" / "rpa-bus"
    env = {**os.environ, "RPA_BUS_REDIS_URL": url, "RPA_BUS_SPOOL_DIR": str(spool_dir)}
    return subprocess.run(
        [str(exe) if exe.exists() else "rpa-bus", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_journal_goes_only_to_its_own_redis(
    redis_server: EmbeddedRedis, server_binary: Path, tmp_path: Path, spool_dir: Path
) -> None:
    """Issue 11 #1: a producer writing elsewhere with the same spool folder leaves an
    orphaned journal alone (status lists it); one writing to its Redis delivers it."""
    first = redis_server
    with EmbeddedRedis(tmp_path / "second", binary=server_binary, persistent=False) as second:
        a = Producer(first.url, spool_dir=spool_dir)
        first.stop()
        with a.session("mine") as s:
            for i in range(5):
                s.log(f"m{i}")
        a.close(timeout_s=0.2)  # Redis down: the 7 events stay in a's journal
        assert kept(spool_dir) == 7

        b = Producer(second.url, spool_dir=spool_dir)
        assert b.flush(5 * UNIT_S)
        b.publish("session:theirs", {"type": "log", "message": "x"})
        assert b.flush(5 * UNIT_S)
        b.close()
        assert events(client(second.url), "mine") == []  # not written into the wrong Redis
        assert kept(spool_dir) == 7

        shown = status(second.url, spool_dir)
        assert shown.returncode == 0, shown.stderr
        (line,) = [x for x in shown.stdout.splitlines() if x.startswith("journal")]
        assert f"7 events for redis://127.0.0.1:{first.port}/0 (prefix rpa)" in line
        assert "waiting for a producer writing there" in line

    first.start()
    c = Producer(first.url, spool_dir=spool_dir)
    assert c.flush(10 * UNIT_S)
    assert messages(events(client(first.url), "mine")) == [f"m{i}" for i in range(5)]
    assert list(spool_dir.iterdir()) == []
    c.close()
    assert "journal" not in status(first.url, spool_dir).stdout


def _bug_in(bus: Producer | AsyncProducer, times: list[int]) -> None:
    """Make the flusher's batch building raise while ``times[0] > 0`` (a stand-in for a
    bug in the flusher; Redis stays real)."""
    build = bus._build_calls

    def broken(items: Any) -> Any:
        if times[0] > 0:
            times[0] -= 1
            raise RuntimeError("a bug in the flusher")
        return build(items)

    bus._build_calls = broken  # type: ignore[method-assign]


def test_dead_flusher_bound_holds_in_emit_and_it_is_restarted(
    redis_url: str, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 #3: with the flusher stopped by a bug, emit() still keeps the memory
    bound (the queue goes to the journal), and the flusher is restarted and logged.
    ``spool_dir`` as a str works."""
    bus = Producer(redis_url, spool_dir=str(spool_dir), queue_max=20)
    assert bus.settings.spool_dir == spool_dir
    bug = [1_000_000]  # every round fails until the bug is "fixed"
    _bug_in(bus, bug)
    s = bus.session("bounded")
    s.start()
    wait_for(lambda: isinstance(bus.last_error, RuntimeError), what="the flusher's crash")
    for i in range(300):
        s.log(f"m{i}")
        assert len(bus._queue) <= 20
    assert kept(spool_dir) >= 280
    assert "restarting it" in caplog.text
    bug[0] = 0
    s.log("m300")  # the next emit restarts the flusher, which now works
    s.finish()
    assert bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_url), "bounded")) == [f"m{i}" for i in range(301)]
    bus.close()
    assert list(spool_dir.iterdir()) == []


def test_dead_flusher_is_restarted_by_flush(redis_url: str, spool_dir: Path) -> None:
    bus = Producer(redis_url, spool_dir=spool_dir)
    _bug_in(bus, [1])  # one failure, then the flusher works again
    bus.publish("session:once", {"type": "log", "message": "m0"})
    wait_for(lambda: isinstance(bus.last_error, RuntimeError), what="the flusher's crash")
    assert bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_url), "once")) == ["m0"]
    bus.close()


async def test_async_dead_flusher_is_restarted(redis_url: str, spool_dir: Path) -> None:
    bus = AsyncProducer(redis_url, spool_dir=spool_dir, queue_max=10)
    bug = [1_000_000]
    _bug_in(bus, bug)
    bus.publish("session:abound", {"type": "log", "message": "m0"})
    deadline = time.monotonic() + 10 * UNIT_S
    while not isinstance(bus.last_error, RuntimeError):
        assert time.monotonic() < deadline
        await bus.flush(0.01)
    for i in range(1, 100):
        bus.publish("session:abound", {"type": "log", "message": f"m{i}"})
        assert len(bus._queue) <= 10
    bug[0] = 0
    assert await bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_url), "abound")) == [f"m{i}" for i in range(100)]
    await bus.close()


def test_monitor_samples_and_plain_streams_are_written_once_under_lost_replies(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    """Issue 11 #10: a retry after a lost reply does not append a monitor sample (or a
    publish() to ``sessions``) twice."""
    bus = Producer(proxy.url, spool_dir=spool_dir)
    bus.publish("monitor:web-1", {"type": "metrics", "data": {"i": -1}})
    assert bus.flush(5 * UNIT_S)
    for i in range(200):
        if i % 40 == 0:
            proxy.cut_replies(2)  # the server applies the batch; the reply is lost
        bus.publish("monitor:web-1", {"type": "metrics", "data": {"i": i}}, window_s=3600)
        bus.publish("sessions", {"type": "log", "message": f"s{i}"})
        if i % 10 == 0:
            time.sleep(0.005)  # let batches form and be cut
    assert bus.flush(20 * UNIT_S)
    assert proxy.cut_count >= 5
    r = client(redis_url)
    keys = Keys()
    samples = [orjson.loads(f[b"e"])["data"]["i"] for _id, f in r.xrange(keys.monitor("web-1"))]
    assert samples == list(range(-1, 200))
    index = [orjson.loads(f[b"e"]).get("message") for _id, f in r.xrange(keys.sessions)]
    assert index == [f"s{i}" for i in range(200)]
    bus.close()


def test_journal_fsync_policy_from_env(
    redis_server: EmbeddedRedis, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPA_BUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RPA_BUS_SPOOL_DIR", str(spool_dir))
    monkeypatch.setenv("RPA_BUS_JOURNAL_FSYNC", "always")
    bus = Producer.from_env()
    assert bus.journal_fsync == "always"
    assert Producer.from_env(journal_fsync="no").journal_fsync == "no"
    redis_server.stop()
    for i in range(10):
        bus.publish("session:synced", {"type": "log", "message": f"m{i}"})
    wait_for(lambda: kept(spool_dir) == 10, what="10 events kept in the journal")
    # Fsynced at every spill: the count moves once fsync returns, just after the lines
    # became readable.
    wait_for(
        lambda: bus._journal is not None and bus._journal.syncs >= 1,
        what="the journal fsynced",
    )
    bus.close(timeout_s=0)
    monkeypatch.setenv("RPA_BUS_JOURNAL_FSYNC", "sometimes")
    with pytest.raises(Exception, match="always, everysec, no"):
        Producer.from_env()


def test_no_process_wide_state_between_producers(redis_url: str, spool_dir: Path) -> None:
    """Issue 11: the type check cache and the timestamp cache are per producer."""
    import producer._core as core

    a = Producer(redis_url, spool_dir=spool_dir)
    b = Producer(redis_url, spool_dir=spool_dir)
    a.session("x").emit("estimates", {"n": 1})
    assert "estimates" in a._types_ok
    assert "estimates" not in b._types_ok
    assert not hasattr(core, "_CHECKED_TYPES")
    assert not hasattr(core, "_TS_CACHE")
    a.close()
    b.close()
