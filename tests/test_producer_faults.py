"""The producer's guarantees under faults: Redis down, replies lost after the server
applied a write, a producer process killed mid-outage, a stalled server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

from producer import Producer, list_journals
from rpa_bus import Unavailable
from rpa_bus.cli._embedded import EmbeddedRedis, free_port
from tests._producer_helpers import client, events
from tests._proxy import FaultProxy
from tests._wait import wait_for
from tests.conftest import UNIT_S

ROOT = Path(__file__).resolve().parents[1]


def journal_lines(spool_dir: Path) -> int:
    """Events kept in the spool folder's journals (their header lines not counted)."""
    return sum(j.events for j in list_journals(spool_dir))


def messages(evts: list[dict[str, object]]) -> list[object]:
    return [e.get("message") for e in evts if e["type"] == "log"]


def test_outage_mid_session_every_event_once_in_order(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    bus = Producer(redis_server.url, spool_dir=spool_dir)
    with bus.session("outage", total=300) as s:
        for i in range(100):
            s.log(f"m{i}")
        assert bus.flush(5 * UNIT_S)
        redis_server.stop()
        for i in range(100, 200):
            s.log(f"m{i}")
        assert bus.flush(0.3 * UNIT_S) is False
        wait_for(lambda: journal_lines(spool_dir) >= 100, what="on disk while down", timeout_s=10)
        redis_server.start()
        for i in range(200, 300):
            s.log(f"m{i}")
    assert bus.flush(10 * UNIT_S)
    assert list(spool_dir.iterdir()) == []  # journal delivered and removed
    got = events(client(redis_server.url), "outage")
    assert messages(got) == [f"m{i}" for i in range(300)]
    assert [got[0]["type"], got[-1]["type"]] == ["started", "finished"]
    bus.close()


def test_lost_replies_write_nothing_twice(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    bus = Producer(proxy.url, spool_dir=spool_dir)
    with bus.session("lossy") as s:
        s.log("m0")
        assert bus.flush(5 * UNIT_S)
        for i in range(1, 200):
            if i % 40 == 0:
                proxy.cut_replies(2)  # the server applies the batch; the reply is lost
            s.log(f"m{i}")
            if i % 10 == 0:
                time.sleep(0.005)  # let batches form and be cut
    assert bus.flush(20 * UNIT_S)
    assert proxy.cut_count >= 5
    got = events(client(redis_url), "lossy")
    assert messages(got) == [f"m{i}" for i in range(200)]
    bus.close()


def test_two_producers_one_session_under_lost_replies(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    a = Producer(proxy.url, spool_dir=spool_dir)
    b = Producer(proxy.url, spool_dir=spool_dir)
    for i in range(150):
        if i % 30 == 0:
            proxy.cut_replies(2)
        a.publish("session:shared", {"type": "log", "message": f"a{i}"})
        b.publish("session:shared", {"type": "log", "message": f"b{i}"})
        if i % 10 == 0:
            time.sleep(0.005)
    assert a.flush(20 * UNIT_S)
    assert b.flush(20 * UNIT_S)
    assert proxy.cut_count >= 4
    got = messages(events(client(redis_url), "shared"))
    assert len(got) == 300
    assert [m for m in got if str(m).startswith("a")] == [f"a{i}" for i in range(150)]
    assert [m for m in got if str(m).startswith("b")] == [f"b{i}" for i in range(150)]
    a.close()
    b.close()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from producer import Producer

    url, spool, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    bus = Producer(url, spool_dir=spool, connect_timeout_s=0.2, socket_timeout_s=0.5)
    s = bus.session("killed", total=n)
    s.start()
    for i in range(1, n + 1):
        s.progress(i, f"m{i}")
        if i == 10:
            print("ten", flush=True)  # the parent may now cut the replies / stop Redis
            sys.stdin.readline()
    print("emitted", flush=True)
    time.sleep(600)  # killed by the parent
    """
)


def _run_child(url: str, spool_dir: Path, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(spool_dir), str(n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(5)
    for f in (child.stdin, child.stdout):
        if f is not None:
            f.close()


def test_killed_during_outage_journal_replayed_on_restart(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    child = _run_child(redis_server.url, spool_dir, 60)
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ten"
        r = client(redis_server.url)
        wait_for(lambda: len(events(r, "killed")) == 11, what="started + 10 in Redis", timeout_s=10)
        redis_server.stop()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "emitted"
        wait_for(
            lambda: journal_lines(spool_dir) >= 50,
            what="50 events journaled",
            timeout_s=10,
        )
    finally:
        _kill(child)
    redis_server.start()
    bus = Producer(redis_server.url, spool_dir=spool_dir)  # adopts the dead one's journal
    assert bus.flush(10 * UNIT_S)
    got = events(client(redis_server.url), "killed")
    assert [e["type"] for e in got[:1]] == ["started"]
    assert [e["message"] for e in got[1:]] == [f"m{i}" for i in range(1, 61)]
    assert list(spool_dir.iterdir()) == []
    bus.close()


def test_killed_after_lost_replies_replay_dedups(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    """The dead process's journal holds events the server did apply (replies lost):
    replaying it must not write them twice."""
    child = _run_child(proxy.url, spool_dir, 40)
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ten"
        r = client(redis_url)
        wait_for(
            lambda: len(events(r, "killed")) == 11,
            what="started + 10 in Redis",
            timeout_s=10,
        )
        proxy.cut_replies(10_000)  # from now on every write is applied, no reply comes back
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "emitted"
        # Some of m11..m40 were applied with their replies lost (later attempts die in the
        # connection handshake, whose replies are cut too), and all are in the journal.
        wait_for(
            lambda: len(events(r, "killed")) > 11 and journal_lines(spool_dir) >= 30,
            what="writes applied, replies lost, events journaled",
            timeout_s=10,
        )
    finally:
        _kill(child)
    proxy.cut_replies(-10_000)  # replies flow again
    # The journal is adopted by a producer writing where the dead one wrote (the proxy).
    bus = Producer(proxy.url, spool_dir=spool_dir)
    assert bus.flush(10 * UNIT_S)
    got = events(client(redis_url), "killed")
    assert [e["message"] for e in got[1:]] == [f"m{i}" for i in range(1, 41)]
    assert list(spool_dir.iterdir()) == []
    bus.close()


def test_emit_latency_unaffected_by_dead_redis(spool_dir: Path) -> None:
    bus = Producer(f"redis://127.0.0.1:{free_port()}/0", spool_dir=spool_dir, queue_max=500)
    s = bus.session("fast")
    s.start()
    samples = []
    for i in range(5000):
        t0 = time.perf_counter()
        s.progress(0, "x", data={"i": i})
        samples.append(time.perf_counter() - t0)
    samples.sort()
    p99 = samples[int(len(samples) * 0.99)]
    assert p99 < 1e-3 * UNIT_S, f"emit p99 {p99 * 1e6:.0f} us with Redis down"
    t0 = time.monotonic()
    bus.close(timeout_s=0.2)
    assert time.monotonic() - t0 < 1.0 * UNIT_S
    assert journal_lines(spool_dir) == 5001


def test_memory_bound_spills_in_order(redis_server: EmbeddedRedis, spool_dir: Path) -> None:
    bus = Producer(redis_server.url, spool_dir=spool_dir, queue_max=20)
    redis_server.stop()
    with bus.session("spill") as s:
        for i in range(500):
            s.log(f"m{i}")
        wait_for(
            lambda: journal_lines(spool_dir) >= 400,
            what="400 events journaled",
            timeout_s=10,
        )
        redis_server.start()
        for i in range(500, 600):
            s.log(f"m{i}")
    assert bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_server.url), "spill")) == [f"m{i}" for i in range(600)]
    bus.close()


def test_close_is_bounded_while_down_and_next_start_delivers(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    bus = Producer(redis_server.url, spool_dir=spool_dir)
    redis_server.stop()
    with bus.session("closing") as s:
        for i in range(50):
            s.log(f"m{i}")
    assert bus.flush(0.2) is False
    assert isinstance(bus.last_error, Unavailable)
    assert isinstance(bus.last_error.__cause__, redis.ConnectionError)
    t0 = time.monotonic()
    bus.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + 0.5 * UNIT_S
    assert journal_lines(spool_dir) == 52
    redis_server.start()
    nxt = Producer(redis_server.url, spool_dir=spool_dir)
    assert nxt.flush(10 * UNIT_S)
    assert messages(events(client(redis_server.url), "closing")) == [f"m{i}" for i in range(50)]
    nxt.close()


def test_close_is_bounded_when_redis_hangs(
    proxy: FaultProxy, redis_url: str, spool_dir: Path
) -> None:
    bus = Producer(proxy.url, spool_dir=spool_dir, socket_timeout_s=30.0)
    with bus.session("hung") as s:
        s.log("m0")
        assert bus.flush(5 * UNIT_S)
        proxy.stall()  # the flusher's next call hangs inside redis-py
        for i in range(1, 20):
            s.log(f"m{i}")
        time.sleep(0.1)
    t0 = time.monotonic()
    bus.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + 0.5 * UNIT_S
    assert journal_lines(spool_dir) >= 20  # m1..m19 and finished, maybe more (replayed)
    proxy.resume()
    # The journal names its target (the proxy's address): the next producer writing there
    # adopts it; one writing to another address would leave it alone.
    nxt = Producer(proxy.url, spool_dir=spool_dir)
    assert nxt.flush(10 * UNIT_S)
    assert messages(events(client(redis_url), "hung")) == [f"m{i}" for i in range(20)]
    nxt.close()


def test_redis_restart_loses_script_cache_and_it_is_reloaded(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    from rpa_bus.redisio import APPEND_SHA

    bus = Producer(redis_server.url, spool_dir=spool_dir)
    with bus.session("restart") as s:
        s.log("m0")
        assert bus.flush(5 * UNIT_S)
        redis_server.stop()
        redis_server.start()
        r = client(redis_server.url)
        assert r.script_exists(APPEND_SHA) == [False]  # NOSCRIPT awaits the next write
        s.log("m1")
        assert bus.flush(10 * UNIT_S)
    assert bus.flush(5 * UNIT_S)
    assert messages(events(r, "restart")) == ["m0", "m1"]
    assert r.script_exists(APPEND_SHA) == [True]
    bus.close()


def test_journal_unwritable_keeps_events_in_memory(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    bus = Producer(redis_server.url, spool_dir=spool_dir)
    spool_dir.rmdir()
    spool_dir.write_text("not a folder")  # the journal cannot be created
    redis_server.stop()
    with bus.session("nodisk") as s:
        for i in range(30):
            s.log(f"m{i}")
        assert bus.flush(0.3 * UNIT_S) is False
        redis_server.start()
        for i in range(30, 40):
            s.log(f"m{i}")
    assert bus.flush(10 * UNIT_S)
    assert messages(events(client(redis_server.url), "nodisk")) == [f"m{i}" for i in range(40)]
    bus.close()


def test_events_emitted_while_the_journal_drains_keep_their_order(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    bus = Producer(redis_server.url, spool_dir=spool_dir, queue_max=5)
    bus.batch_max = 3  # a slow drain, so new events pass queue_max meanwhile
    redis_server.stop()
    with bus.session("drain") as s:
        for i in range(200):
            s.log(f"m{i}")
        wait_for(
            lambda: journal_lines(spool_dir) >= 200,
            what="200 events journaled",
            timeout_s=10,
        )
        redis_server.start()
        for i in range(200, 400):
            s.log(f"m{i}")
            if i % 20 == 0:
                time.sleep(0.002)
    assert bus.flush(20 * UNIT_S)
    assert messages(events(client(redis_server.url), "drain")) == [f"m{i}" for i in range(400)]
    bus.close()
