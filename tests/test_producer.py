"""The producer's write path against a real Redis: envelopes, order, folded state, index,
retention, the script cache, and every bad input refused at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from producer import Producer, ProducerClosed
from rpa_bus import (
    ConfigMismatch,
    InvalidEvent,
    InvalidEventType,
    InvalidSessionId,
    InvalidStreamName,
    Keys,
    decode,
)
from tests._producer_helpers import client, events, index, meta
from tests.conftest import UNIT_S


@pytest.fixture
def bus(redis_url: str, spool_dir: Path) -> Any:
    p = Producer(redis_url, spool_dir=spool_dir)
    yield p
    p.close(timeout_s=2 * UNIT_S)


def test_session_lands_in_order_with_state_and_index(bus: Producer, redis_url: str) -> None:
    with bus.session("quote-123", total=4, meta={"user": "ana"}) as s:
        s.progress(1, "Tela 1")
        time.sleep(0.05)
        s.progress(2, "Tela 2", data={"x": 1})
        s.emit("estimates", {"plans": [1, 2]})
        s.log("a log line", data=[1])
        s.error("non-fatal")
        s.finish({"premium": 1234.5})
    assert bus.flush(5 * UNIT_S)
    r = client(redis_url)
    got = events(r, "quote-123")
    for e in got:
        decode(orjson.dumps(e))  # every entry is a valid envelope
    assert [e["type"] for e in got] == [
        "started", "progress", "progress", "estimates", "log", "error", "finished",
    ]  # fmt: skip
    assert got[0]["data"] == {"user": "ana"}
    assert got[0]["total"] == 4
    p1, p2 = got[1], got[2]
    assert (p1["step"], p1["total"], p1["percent"], p1["message"]) == (1, 4, 25.0, "Tela 1")
    assert p2["percent"] == 50.0
    assert p2["data"] == {"x": 1}
    # The pace so far: ~0.05 s for 2 steps -> ~0.05 s for the 2 left.
    assert 0.0 < p2["eta_s"] < 5.0
    assert got[3]["data"] == {"plans": [1, 2]}
    assert got[5]["error"] == "non-fatal"
    assert got[6]["data"] == {"premium": 1234.5}
    m = meta(r, "quote-123")
    assert m["status"] == "finished"
    assert m["percent"] == "100.0"
    assert m["step"] == "4"
    assert m["error"] == "non-fatal"
    assert m["message"] == "non-fatal"
    assert m[f"seq:{bus.id}"] == "7"
    assert m["epoch"]
    assert m["created"]
    idx = index(r)
    assert [(e["type"], e["session"]) for e in idx] == [
        ("started", "quote-123"),
        ("finished", "quote-123"),
    ]
    assert idx[0]["ts"] == got[0]["ts"]


def test_exception_in_block_emits_failed_and_reraises(bus: Producer, redis_url: str) -> None:
    def job() -> None:
        with bus.session("job-1", total=2) as s:
            s.progress(1, "one")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        job()
    assert bus.flush(5 * UNIT_S)
    r = client(redis_url)
    got = events(r, "job-1")
    assert [e["type"] for e in got] == ["started", "progress", "failed"]
    assert got[-1]["error"] == "KeyError: 'boom'"
    m = meta(r, "job-1")
    assert m["status"] == "failed"
    assert m["error"] == "KeyError: 'boom'"
    assert index(r)[-1] == {"type": "failed", "session": "job-1", "ts": got[-1]["ts"]}


def test_block_without_finish_finishes_and_explicit_fail(bus: Producer, redis_url: str) -> None:
    with bus.session("a") as s:
        s.log("hi")
    with bus.session("b") as s:
        s.fail(ValueError("bad plate"))
    assert bus.flush(5 * UNIT_S)
    r = client(redis_url)
    assert [e["type"] for e in events(r, "a")] == ["started", "log", "finished"]
    assert events(r, "b")[-1]["error"] == "ValueError: bad plate"
    with pytest.raises(InvalidEvent, match="already failed"):
        s.log("after the end")


def test_retention_maxlen_ttl_and_persist_on_rerun(redis_url: str, spool_dir: Path) -> None:
    bus = Producer(redis_url, spool_dir=spool_dir, maxlen=10, retention_s=60.0)
    r = client(redis_url)
    key = Keys().session("long")
    with bus.session("long", total=1000) as s:
        for i in range(1000):
            s.progress(i, "step")
        assert bus.flush(5 * UNIT_S)
        # Approximate trimming works in whole stream nodes (100 entries by default).
        assert 10 <= r.xlen(key) <= 200
        assert r.pttl(key) == -1
        s.finish()
    assert bus.flush(5 * UNIT_S)
    assert 0 < r.pttl(key) <= 60_000
    assert 0 < r.pttl(key + ":meta") <= 60_000
    # A new run of the same id: its keys must not expire under it.
    with bus.session("long") as s:
        assert bus.flush(5 * UNIT_S)
        assert r.pttl(key) == -1
        assert r.pttl(key + ":meta") == -1
        assert meta(r, "long")["status"] == "running"
    bus.close()


def test_script_cache_lost_is_reloaded(bus: Producer, redis_url: str) -> None:
    r = client(redis_url)
    with bus.session("s1") as s:
        s.log("one")
        assert bus.flush(5 * UNIT_S)
        r.script_flush()
        s.log("two")
        assert bus.flush(5 * UNIT_S)
    assert bus.flush(5 * UNIT_S)
    assert [e.get("message") for e in events(r, "s1")] == [None, "one", "two", None]


def test_publish_monitor_and_session_streams(bus: Producer, redis_url: str) -> None:
    bus.publish("monitor:web-1", {"type": "metrics", "data": {"cpu": 12.5}})
    bus.publish("monitor:web-1", {"type": "alert", "data": {"state": "firing"}}, window_s=60)
    bus.publish("session:raw-1", {"type": "started", "ts": "2026-11-22T10:00:00.000Z"})
    assert bus.flush(5 * UNIT_S)
    r = client(redis_url)
    got = [orjson.loads(f[b"e"]) for _i, f in r.xrange("rpa:monitor:web-1")]
    assert [e["type"] for e in got] == ["metrics", "alert"]
    assert got[0]["data"] == {"cpu": 12.5}
    assert got[0]["ts"]
    assert events(r, "raw-1")[0]["ts"] == "2026-11-22T10:00:00.000Z"
    assert meta(r, "raw-1")["status"] == "running"
    assert index(r)[-1]["session"] == "raw-1"


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda b: b.session("bad id!"), InvalidSessionId, "bad id!"),
        (lambda b: b.session(""), InvalidSessionId, "session id"),
        (lambda b: b.session("x" * 129), InvalidSessionId, "128"),
        (lambda b: b.session("ok", total=0), InvalidEvent, "total"),
        (lambda b: b.session("ok", meta={1j}), InvalidEvent, "JSON"),
        (lambda b: b.session("ok").emit("Bad Type"), InvalidEventType, "Bad Type"),
        (lambda b: b.session("ok").emit("finished"), InvalidEventType, "finish"),
        (lambda b: b.session("ok").emit("x", {"a": object()}), InvalidEvent, "JSON"),
        (lambda b: b.session("ok", total=3).progress(-1), InvalidEvent, "step"),
        (lambda b: b.session("ok", total=3).progress(4), InvalidEvent, "beyond total"),
        (lambda b: b.session("ok").progress("2"), InvalidEvent, "step"),  # type: ignore[arg-type]
        (lambda b: b.session("ok").log(3), InvalidEvent, "message"),  # type: ignore[arg-type]
        (lambda b: b.publish("nope:x", {"type": "log"}), InvalidStreamName, "nope:x"),
        (lambda b: b.publish("monitor:h", {"type": "log", "x": 1}), InvalidEvent, "'x'"),
        (
            lambda b: b.session("ok").emit("big", "x" * 2_000_000),
            InvalidEvent,
            "bytes",
        ),
    ],
)
def test_bad_input_raises_at_once_naming_the_problem(
    bus: Producer, call: Any, error: type[Exception], words: str
) -> None:
    t0 = time.perf_counter()
    with pytest.raises(error, match=__import__("re").escape(words)):
        call(bus)
    assert time.perf_counter() - t0 < 0.5
    assert bus.flush(1 * UNIT_S)  # nothing half-enqueued


def test_constructor_combinations(redis_url: str, spool_dir: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Producer(redis_url, client=client(redis_url))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown producer setting"):
        Producer(redis_url, spool_dir=spool_dir, no_such_setting=1)
    p = Producer(client=client(redis_url), spool_dir=spool_dir, maxlen=5)
    assert p.settings.maxlen == 5
    p.close()
    with pytest.raises(ProducerClosed):
        p.publish("monitor:h", {"type": "metrics"})


def test_config_mismatch_stops_writing_and_keeps_events(redis_url: str, spool_dir: Path) -> None:
    r = client(redis_url)
    r.hset("rpa:config", "buckets", "16")
    bus = Producer(redis_url, spool_dir=spool_dir)
    with bus.session("cfg") as s:
        s.log("kept")
    assert bus.flush(1 * UNIT_S) is False
    assert isinstance(bus.last_error, ConfigMismatch)
    assert "RPA_BUS_BUCKETS=16" in str(bus.last_error)
    bus.close(timeout_s=1 * UNIT_S)
    assert r.exists(Keys().session("cfg")) == 0
    # Delivered by a producer with the deployment's bucket count.
    fixed = Producer(redis_url, spool_dir=spool_dir, buckets=16)
    assert fixed.flush(5 * UNIT_S)
    assert [e["type"] for e in events(r, "cfg", Keys(buckets=16))] == [
        "started", "log", "finished",
    ]  # fmt: skip
    fixed.close()
    assert list(spool_dir.iterdir()) == []


def test_append_script_applies_a_batch_once(redis_url: str, spool_dir: Path) -> None:
    """The same call sent twice (a retry after a lost reply) appends nothing the 2nd time."""
    from producer._journal import Item
    from rpa_bus.redisio import APPEND_LUA, APPEND_SHA

    bus = Producer(redis_url, spool_dir=spool_dir)
    r = client(redis_url)
    items = [
        Item("session:idem", "p1", seq, orjson.dumps(ev), ev)
        for seq, ev in (
            (3, {"type": "started", "ts": "2026-11-22T10:00:00.000Z"}),
            (7, {"type": "log", "ts": "2026-11-22T10:00:00.001Z", "message": "m"}),
        )
    ]
    ((args, _),) = bus._build_calls(items)
    assert args[0] == "EVALSHA"
    assert args[1] == APPEND_SHA
    r.script_load(APPEND_LUA)
    assert r.execute_command(*args) == [2, 7]
    assert r.execute_command(*args) == [0, 7]
    # A later batch that overlaps (replayed with other boundaries) applies only what is new.
    more = Item("session:idem", "p1", 9, b'{"type":"log","ts":"x"}', {"type": "log", "ts": "x"})
    ((args2, _),) = bus._build_calls([items[1], more])
    assert r.execute_command(*args2) == [1, 9]
    assert len(events(r, "idem")) == 3
    assert len(index(r)) == 1
    assert meta(r, "idem")["seq:p1"] == "9"
    bus.close()


def test_append_script_takes_every_key_layout(redis_url: str) -> None:
    """Two keys (a cluster caller without the flag), three (one server without the flag,
    as before P:config was a key; or a cluster's bucket flag P:{B}:config), four (one
    server): the script tells the index from the flag hash by name."""
    from rpa_bus.redisio import APPEND_LUA

    r = client(redis_url)
    keys = Keys()
    r.hset(keys.config, "archive", "1")
    r.hset(keys.bucket_config(0), "archive", "1")

    def call(sid: str, extra: list[str]) -> None:
        stream_keys = [keys.session(sid), keys.meta(sid), *extra]
        started = orjson.dumps({"type": "started", "session": sid, "ts": "t"})
        # maxlen 1, retention 60 s: kept only where the call names a flag hash with archive=1
        args: list[Any] = ["p", 1, 60_000, "ep", 1, 10, b"{}", b"1|s" + started, b"{}"]
        args += [x for n in range(2, 152) for x in (n, b"{}")]
        args += [b"152|t" + started, b"{}"]
        assert r.eval(APPEND_LUA, len(stream_keys), *stream_keys, *args) == [152, 152]

    call("two", [])
    call("three-old", [keys.sessions])
    call("three-flag", [keys.bucket_config(0)])
    call("four", [keys.sessions, keys.config])
    for sid, kept in (("two", False), ("three-old", False), ("three-flag", True), ("four", True)):
        assert (r.xlen(keys.session(sid)) == 152) is kept, sid
        assert (r.pttl(keys.session(sid)) == -1) is kept, sid
    # Index entries only where the index is a key: the old three-key layout and four keys.
    assert sorted(orjson.loads(e[b"e"])["session"] for _, e in r.xrange(keys.sessions)) == [
        "four", "four", "three-old", "three-old"
    ]  # fmt: skip
    r.close()


def test_from_env(redis_url: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPA_BUS_REDIS_URL", redis_url)
    monkeypatch.setenv("RPA_BUS_SPOOL_DIR", str(spool_dir))
    monkeypatch.setenv("RPA_BUS_MAXLEN", "123")
    bus = Producer.from_env(retention_s=60.0)
    assert bus.settings.maxlen == 123
    assert bus.settings.retention_s == 60.0
    bus.publish("session:env-1", {"type": "log", "message": "hi"})
    assert bus.flush(5 * UNIT_S)
    assert events(client(redis_url), "env-1")[0]["message"] == "hi"
    bus.close()


def test_emit_from_many_threads_keeps_each_threads_order(bus: Producer, redis_url: str) -> None:
    import threading

    s = bus.session("threads")

    def work(name: str) -> None:
        for i in range(300):
            s.log(f"{name}{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bus.flush(10 * UNIT_S)
    got = [e["message"] for e in events(client(redis_url), "threads")]
    assert len(got) == 1200
    for n in "abcd":
        assert [m for m in got if m[0] == n] == [f"{n}{i}" for i in range(300)]
