"""The consumer-group loop the workers share (rpa_bus.redisio.GroupWorker), on a real Redis:
exactly-once in per-stream order, sink retries, splitting between processes, take-over of
a killed process's streams and pending entries, Redis restarts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from producer import AsyncProducer
from rpa_bus import ConfigMismatch, Keys, Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from rpa_bus.redisio import Entry, GroupSettings, GroupWorker
from tests._proxy import FaultProxy
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

BUCKETS = 8
GROUP = "rpa:archiver"


def bus(url: str, tmp_path: Path, **kw: object) -> Settings:
    return Settings(redis_url=url, buckets=BUCKETS, spool_dir=tmp_path / "spool", **kw)  # type: ignore[arg-type]


def group(consumer: str, **kw: object) -> GroupSettings:
    values: dict[str, object] = {
        "kind": "archiver",
        "consumer": consumer,
        "claim_idle_ms": 1500,
        "block_ms": 200,
        "count": 20,
    }
    values.update(kw)
    return GroupSettings(**values)  # type: ignore[arg-type]


class Sink:
    """Records every put; checks each batch is one stream in ascending id order.
    ``ledger``: shared between the sinks of several workers (put order across them)."""

    def __init__(self, ledger: list[tuple[str, str, str]] | None = None, name: str = "") -> None:
        self.name = name
        self.ledger = ledger if ledger is not None else []
        self.attempts: list[tuple[str, list[str]]] = []  # every put call, refused ones too
        self.got: dict[str, list[str]] = {}  # stream -> ids taken, in put order
        self.epochs: dict[str, set[str]] = {}
        self.fail: Callable[[Sequence[Entry]], bool] = lambda entries: False
        self.gate: asyncio.Event | None = None  # when set by a test: put waits on it
        self.problems: list[str] = []

    async def put(self, entries: Sequence[Entry]) -> None:
        ids = [e.id for e in entries]
        self.attempts.append((entries[0].stream, ids))
        if len({e.stream for e in entries}) != 1:
            self.problems.append(f"mixed batch {entries}")
        if [_id(i) for i in ids] != sorted(_id(i) for i in ids):
            self.problems.append(f"unordered batch {ids}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail(entries):
            raise RuntimeError("sink refuses")
        stream = entries[0].stream
        self.got.setdefault(stream, []).extend(ids)
        self.epochs.setdefault(stream, set()).update(e.epoch for e in entries)
        self.ledger.extend((self.name, stream, i) for i in ids)

    def count(self) -> int:
        return sum(len(v) for v in self.got.values())


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


async def wait_until(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    await wait_for_async(check, what=what or "the condition", timeout_s=timeout_s)


async def wait_split(
    workers: Sequence[GroupWorker], units: int, timeout_s: float = 10.0, ticks: int = 3
) -> None:
    """Wait until the workers hold all ``units`` between them, each some, with no unit
    still to be given up (the split the rendezvous hash asks for, not a passing state)."""

    def split() -> bool:
        return sum(w.stats.owned for w in workers) == units and all(
            w.stats.owned > 0 and not w.stats.releasing for w in workers
        )

    await wait_until(split, timeout_s=timeout_s, what="units split")
    settle = time.monotonic() + ticks * max(w.settings.claim_idle_ms for w in workers) / 3000
    while time.monotonic() < settle:  # stable for a few ticks
        await asyncio.sleep(0.05)
        if not split():
            await wait_until(split, timeout_s=timeout_s, what="units split again")


async def truth(r: aredis.Redis, keys: Keys) -> dict[str, list[str]]:
    """Every session stream and the index in Redis: stream name -> ids."""
    found: dict[str, list[str]] = {}
    async for raw in r.scan_iter(match=f"{keys.prefix}:{{*}}:session:*", _type="stream"):
        key = raw.decode()
        sid = key.rpartition(":session:")[2]
        found[f"session:{sid}"] = [i.decode() for i, _ in await r.xrange(key)]
    index = await r.xrange(keys.sessions)
    if index:
        found["sessions"] = [i.decode() for i, _ in index]
    return found


def write_sessions(p: AsyncProducer, prefix: str, n: int, events: int, finish: bool) -> None:
    for i in range(n):
        s = p.session(f"{prefix}-{i}")
        s.start()
        for k in range(events):
            s.log(f"step {k}")
        if finish:
            s.finish()


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url, socket_timeout=5 * UNIT_S, protocol=2)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def producer(redis_url: str, tmp_path: Path) -> AsyncIterator[AsyncProducer]:
    p = AsyncProducer(settings=bus(redis_url, tmp_path))
    try:
        yield p
    finally:
        await p.close()


async def stop(worker: GroupWorker, timeout_s: float = 10.0) -> None:
    worker.close()
    async with asyncio.timeout(timeout_s * UNIT_S):
        await worker.wait_closed()


async def test_settings_are_checked(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kinds"):
        group("a", kinds=frozenset({"bogus"}))
    with pytest.raises(ValueError, match="socket timeout"):
        GroupWorker(bus(redis_url, tmp_path), group("a", block_ms=5000), Sink())
    assert GroupSettings(kind="archiver").consumer  # host-pid by default


@pytest.mark.parametrize("read_ahead", [False, True])
async def test_sessions_from_before_start_and_live_reach_the_sink_once_in_order(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis, read_ahead: bool
) -> None:
    keys = bus(redis_url, tmp_path).keys
    # Started and ended while no worker ran: found at start-up.
    write_sessions(producer, "old", 12, 5, finish=True)
    write_sessions(producer, "live", 4, 3, finish=False)
    assert await producer.flush()
    sink = Sink()
    settings = group("w1", read_ahead=read_ahead)
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        expected = await truth(r, keys)
        await wait_until(lambda: sink.count() == sum(map(len, expected.values())), what="old")
        # Learnt live from the index: sessions that start now, and more of the live ones.
        write_sessions(producer, "new", 10, 4, finish=True)
        for i in range(4):
            s = producer.session(f"live-{i}")
            s.log("more")
            s.finish()
        assert await producer.flush()
        expected = await truth(r, keys)
        assert len(expected) == 12 + 4 + 10 + 1
        await wait_until(lambda: sink.count() == sum(map(len, expected.values())), what="new")
        assert sink.got == expected  # every entry once, in id order per stream
        assert sink.problems == []
        for name, epochs in sink.epochs.items():
            assert epochs == ({""} if name == "sessions" else {(await epoch_of(r, keys, name))})
        # Finished sessions are left once acknowledged; the index is always tailed.
        await wait_until(lambda: worker.stats.tailed == 1, what="finished sessions dropped")
        assert worker.stats.dropped == 26
        assert worker.stats.owned == BUCKETS + 1
        assert await worker.lag() == {"sessions": 0}
        assert worker.stats.acked == worker.stats.read == sink.count()
        if not read_ahead:
            assert worker.stats.ahead == 0
    # Closed gracefully: leases given up, member gone.
    assert await r.zrange(keys.workers("archiver"), 0, -1) == []
    assert await r.keys("*:lease:*") == []


async def epoch_of(r: aredis.Redis, keys: Keys, name: str) -> str:
    raw = await r.hget(keys.meta(name.partition(":")[2]), "epoch")
    assert raw is not None
    return str(raw.decode())


@pytest.mark.parametrize("read_ahead", [False, True])
async def test_a_refused_batch_is_retried_and_nothing_later_is_given_meanwhile(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, read_ahead: bool
) -> None:
    write_sessions(producer, "flaky", 1, 9, finish=True)  # 11 entries, batches of 4
    write_sessions(producer, "fine", 3, 2, finish=True)
    assert await producer.flush()
    sink = Sink()
    refusals = 0

    def fail(entries: Sequence[Entry]) -> bool:
        nonlocal refusals
        if entries[0].stream == "session:flaky-0" and refusals < 2:
            refusals += 1
            return True
        return False

    sink.fail = fail
    # read_ahead: the rounds read while a batch is refused hold the stream's next entries,
    # which must wait (pending) until the refused batch is stored.
    settings = group("w1", count=4, kinds=frozenset({"session"}), read_ahead=read_ahead)
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        await wait_until(lambda: len(sink.got.get("session:flaky-0", [])) == 11)
        await wait_until(lambda: len(sink.got) == 4)
        flaky = [ids for stream, ids in sink.attempts if stream == "session:flaky-0"]
        # The same first batch three times (two refusals), then the rest, in order.
        assert flaky[0] == flaky[1] == flaky[2]
        assert len(flaky[0]) == 4
        assert [i for a in flaky[2:] for i in a] == sink.got["session:flaky-0"]
        assert worker.stats.retried == 2
        assert [len(sink.got[f"session:fine-{i}"]) for i in range(3)] == [4, 4, 4]
        assert sink.problems == []
        assert (worker.stats.ahead > 0) == read_ahead


async def test_two_workers_split_the_streams_and_keep_per_stream_order(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    write_sessions(producer, "a", 16, 3, finish=False)
    assert await producer.flush()
    ledger: list[tuple[str, str, str]] = []
    one, two = Sink(ledger, "one"), Sink(ledger, "two")
    first = GroupWorker(bus(redis_url, tmp_path), group("one"), one)
    second = GroupWorker(bus(redis_url, tmp_path), group("two"), two)
    async with first, second:
        # Both hold units once they have seen each other.
        await wait_split([first, second], BUCKETS + 1)
        write_sessions(producer, "b", 24, 3, finish=True)
        assert await producer.flush()
        expected = await truth(r, keys)
        total = sum(map(len, expected.values()))
        await wait_until(lambda: len(ledger) >= total, what="all entries")
        await asyncio.sleep(0.3)  # nothing more should come
        merged: dict[str, list[str]] = {}
        for _name, stream, entry_id in ledger:
            merged.setdefault(stream, []).append(entry_id)
        assert merged == expected  # once each, in order across both processes
        b_streams = {s for s in merged if s.startswith("session:b-")}
        assert b_streams & set(one.got)  # both got some
        assert b_streams & set(two.got)
        for s in b_streams:  # and a stream that started after the split had one reader
            assert (s in one.got) != (s in two.got), s
        assert one.problems == two.problems == []


async def test_a_killed_workers_streams_and_pending_entries_are_taken_over(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    write_sessions(producer, "k", 10, 6, finish=False)
    assert await producer.flush()
    victim_sink, heir_sink = Sink(name="victim"), Sink(name="heir")
    # The victim takes entries and then hangs in the sink, so some stay pending to it.
    stuck = asyncio.Event()
    orig_put = victim_sink.put

    async def put(entries: Sequence[Entry]) -> None:
        if victim_sink.count() >= 30:
            stuck.set()
            await asyncio.Event().wait()  # hangs until the "kill"
        await orig_put(entries)

    victim_sink.put = put  # type: ignore[method-assign]
    victim = GroupWorker(bus(redis_url, tmp_path), group("victim", count=5), victim_sink)
    run = asyncio.create_task(victim.run())
    await asyncio.wait_for(stuck.wait(), 10 * UNIT_S)
    run.cancel()  # a kill: nothing acked further, nothing released
    await asyncio.wait([run])
    pending: set[tuple[str, str]] = set()
    for name in await truth(r, keys):
        key = keys.sessions if name == "sessions" else keys.session(name.partition(":")[2])
        for p in await r.xpending_range(key, GROUP, "-", "+", 1000):
            pending.add((name, p["message_id"].decode()))
    assert pending  # the kill left entries delivered but not acknowledged
    assert await r.keys("*:lease:archiver")  # and its leases, until they expire
    write_sessions(producer, "after", 3, 2, finish=True)
    assert await producer.flush()
    started = time.monotonic()
    async with GroupWorker(bus(redis_url, tmp_path), group("heir", count=5), heir_sink) as heir:
        expected = await truth(r, keys)
        want = {(s, i) for s, ids in expected.items() for i in ids}

        def seen() -> set[tuple[str, str]]:
            return {(s, i) for sink in (victim_sink, heir_sink) for s, ids in sink.got.items()
                    for i in ids}  # fmt: skip

        await wait_until(lambda: seen() == want, what="take-over")
        took_s = time.monotonic() - started
        assert took_s >= 1.0  # not before the victim's leases expired (1.5 s TTL)
        victim_acked = {(s, i) for s, ids in victim_sink.got.items() for i in ids} - pending
        heir_seen = {(s, i) for s, ids in heir_sink.got.items() for i in ids}
        assert not victim_acked & heir_seen  # acknowledged entries are not given again
        assert heir.stats.claimed >= len(pending)
        for s, ids in heir_sink.got.items():  # the heir's share in order, once
            assert ids == sorted(set(ids), key=_id), s
        assert heir_sink.problems == []


async def test_redis_restart_mid_run_loses_nothing(
    redis_server: EmbeddedRedis, tmp_path: Path, producer: AsyncProducer
) -> None:
    url = redis_server.url
    keys = bus(url, tmp_path).keys
    sink = Sink()
    async with GroupWorker(bus(url, tmp_path), group("w1"), sink) as worker:
        write_sessions(producer, "pre", 6, 4, finish=False)
        assert await producer.flush()
        await wait_until(lambda: sink.count() >= 6 * 5, what="before the restart")
        redis_server.stop()
        write_sessions(producer, "during", 4, 3, finish=True)  # the producer keeps them
        await wait_until(lambda: worker.stats.errors > 0, what="outage noticed")
        assert not worker.stats.redis_up
        redis_server.start()
        write_sessions(producer, "post", 4, 3, finish=True)
        assert await producer.flush(timeout_s=10 * UNIT_S)
        r = aredis.Redis.from_url(url, socket_timeout=5 * UNIT_S, protocol=2)
        try:
            expected = await truth(r, keys)
        finally:
            await r.aclose()
        want = {(s, i) for s, ids in expected.items() for i in ids}
        await wait_until(
            lambda: {(s, i) for s, ids in sink.got.items() for i in ids} == want,
            timeout_s=15,
            what=f"everything after the restart: {worker.stats}",
        )
        assert worker.stats.redis_up
        assert sink.problems == []
        for s, ids in sink.got.items():
            assert sorted(set(ids), key=_id) == expected[s], s


async def test_monitor_streams_are_units_of_their_own(
    redis_url: str, tmp_path: Path, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    await r.hset(keys.monitors, mapping={"h1": 1, "h2": 1})
    ids = {h: [(await r.xadd(keys.monitor(h), {"e": b'{"type":"metrics"}'})).decode()
               for _ in range(3)] for h in ("h1", "h2")}  # fmt: skip
    sink = Sink()
    settings = group("w1", kinds=frozenset({"monitor"}))
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        await wait_until(lambda: sink.count() == 6)
        assert sink.got == {"monitor:h1": ids["h1"], "monitor:h2": ids["h2"]}
        assert worker.stats.owned == 2
        assert sink.epochs == {"monitor:h1": {""}, "monitor:h2": {""}}


async def test_a_config_mismatch_ends_run(redis_url: str, tmp_path: Path, r: aredis.Redis) -> None:
    await r.hset(bus(redis_url, tmp_path).keys.config, "buckets", "64")
    worker = GroupWorker(bus(redis_url, tmp_path), group("w1"), Sink())
    with pytest.raises(ConfigMismatch):
        async with asyncio.timeout(5 * UNIT_S):
            await worker.run()


async def test_close_hands_the_units_over_without_waiting_for_expiry(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    ledger: list[tuple[str, str, str]] = []
    one, two = Sink(ledger, "one"), Sink(ledger, "two")
    slow = {"claim_idle_ms": 6000}  # leases live 6 s; ticks every 2 s
    first = GroupWorker(bus(redis_url, tmp_path), group("one", **slow), one)
    async with GroupWorker(bus(redis_url, tmp_path), group("two", **slow), two) as second:
        async with first:
            await wait_split([first, second], BUCKETS + 1, ticks=0)
            write_sessions(producer, "c", 8, 2, finish=False)
            assert await producer.flush()
            await wait_until(lambda: len(ledger) == 8 * 3 + 8, what="first wave")
        closed = time.monotonic()
        await wait_until(lambda: second.stats.owned == BUCKETS + 1, what="hand-over")
        assert time.monotonic() - closed < 3.5  # the next tick, not the 6 s expiry
        write_sessions(producer, "d", 8, 2, finish=True)
        for i in range(8):
            producer.session(f"c-{i}").finish()
        assert await producer.flush()
        expected = await truth(r, keys)
        await wait_until(lambda: len(ledger) == sum(map(len, expected.values())), what="all")
        merged: dict[str, list[str]] = {}
        for _name, stream, entry_id in ledger:
            merged.setdefault(stream, []).append(entry_id)
        assert merged == expected  # a graceful hand-over gives nothing twice
        assert {s for s in two.got if s.startswith("session:d-")} == {
            f"session:d-{i}" for i in range(8)
        }


async def test_a_reused_session_id_is_read_again_with_its_epoch(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    sink = Sink()
    settings = group("w1", kinds=frozenset({"session"}))
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        write_sessions(producer, "re", 1, 1, finish=True)
        assert await producer.flush()
        await wait_until(lambda: len(sink.got.get("session:re-0", [])) == 3)
        await wait_until(lambda: worker.stats.tailed == 0, what="finished session left")
        first_epoch = await epoch_of(r, keys, "session:re-0")
        # Run again while the keys still exist: the same stream and epoch go on.
        write_sessions(producer, "re", 1, 1, finish=True)
        assert await producer.flush()
        await wait_until(lambda: len(sink.got["session:re-0"]) == 6, what="second run")
        # The keys expired (deleted here), then a third run: a new stream, a new epoch.
        await r.delete(keys.session("re-0"), keys.meta("re-0"))
        await wait_until(lambda: worker.stats.tailed == 0, what="second run left")
        write_sessions(producer, "re", 1, 1, finish=True)
        assert await producer.flush()
        await wait_until(lambda: len(sink.got["session:re-0"]) == 9, what="third run")
        second_epoch = await epoch_of(r, keys, "session:re-0")
        assert second_epoch != first_epoch
        assert sink.epochs["session:re-0"] == {first_epoch, second_epoch}
        assert sink.got["session:re-0"][6:] == [
            i.decode() for i, _ in await r.xrange(keys.session("re-0"))
        ]


async def test_a_new_session_wakes_a_blocked_read(
    redis_url: str, tmp_path: Path, producer: AsyncProducer
) -> None:
    sink = Sink()
    settings = group("w1", block_ms=4000, kinds=frozenset({"session"}))
    patient = bus(redis_url, tmp_path, socket_timeout_s=5.0)
    async with GroupWorker(patient, settings, sink) as worker:
        write_sessions(producer, "first", 1, 0, finish=False)
        assert await producer.flush()
        await wait_until(lambda: sink.count() == 1)
        await asyncio.sleep(0.3)  # the reader is blocked on the one stream now
        write_sessions(producer, "second", 1, 0, finish=False)
        assert await producer.flush()
        started = time.monotonic()
        await wait_until(lambda: sink.count() == 2)
        assert time.monotonic() - started < 2.0  # not after the 4 s BLOCK
        assert worker.stats.tailed == 2


async def test_a_deleted_stream_is_dropped_and_the_rest_goes_on(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    sink = Sink()
    settings = group("w1", kinds=frozenset({"session"}))
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        write_sessions(producer, "x", 3, 1, finish=False)
        assert await producer.flush()
        await wait_until(lambda: sink.count() == 6)
        await r.delete(keys.session("x-0"), keys.meta("x-0"))  # it expired, say
        await wait_until(lambda: worker.stats.tailed == 2, what="deleted stream left")
        producer.session("x-1").log("still here")
        assert await producer.flush()
        await wait_until(lambda: len(sink.got["session:x-1"]) == 3)
        assert worker.stats.redis_up


async def test_a_stream_the_index_never_announced_is_found_by_a_rescan(
    redis_url: str, tmp_path: Path, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    sink = Sink()
    settings = group("w1", kinds=frozenset({"session"}), rescan_ms=300)
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink):
        await asyncio.sleep(0.2)
        # Written behind the index's back (an index trimmed away, a cluster's lag).
        await r.hset(keys.meta("quiet"), "epoch", "e1")
        entry = (await r.xadd(keys.session("quiet"), {"e": b'{"type":"log"}'})).decode()
        await wait_until(lambda: sink.got.get("session:quiet") == [entry], what="rescan")
        assert sink.epochs["session:quiet"] == {"e1"}


async def test_a_session_announced_before_its_stream_exists_is_waited_for(
    redis_url: str, tmp_path: Path, r: aredis.Redis
) -> None:
    """On a cluster the index entry and the stream are written on two masters at once."""
    keys = bus(redis_url, tmp_path).keys
    sink = Sink()
    settings = group("w1", kinds=frozenset({"session"}), block_ms=500)
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        await wait_until(lambda: worker.stats.owned == BUCKETS, what="units")
        await r.xadd(keys.sessions, {"e": b'{"type":"started","session":"late","ts":"x"}'})
        await asyncio.sleep(0.4)  # the follower has seen it; no stream yet
        await r.hset(keys.meta("late"), "epoch", "e2")
        entry = (await r.xadd(keys.session("late"), {"e": b'{"type":"started"}'})).decode()
        await wait_until(lambda: sink.got.get("session:late") == [entry], timeout_s=3)
        assert sink.epochs["session:late"] == {"e2"}


async def test_a_sigkilled_worker_process_is_taken_over(
    redis_url: str, tmp_path: Path, producer: AsyncProducer, r: aredis.Redis
) -> None:
    keys = bus(redis_url, tmp_path).keys
    out = tmp_path / "victim.jsonl"
    out.touch()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).parent / "scripts" / "group_worker.py"),
        redis_url, str(BUCKETS), "victim", "1500", str(out),
    )  # fmt: skip
    try:
        write_sessions(producer, "s", 12, 8, finish=False)
        assert await producer.flush()
        await wait_until(lambda: len(out.read_bytes().splitlines()) >= 40, what="victim reads")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    victim = {tuple(orjson.loads(line)) for line in out.read_bytes().splitlines()}
    pending = set()
    for name in await truth(r, keys):
        key = keys.sessions if name == "sessions" else keys.session(name.partition(":")[2])
        for p in await r.xpending_range(key, GROUP, "-", "+", 1000):
            pending.add((name, p["message_id"].decode()))
    heir_sink = Sink(name="heir")
    async with GroupWorker(bus(redis_url, tmp_path), group("heir"), heir_sink):
        want = {(s, i) for s, ids in (await truth(r, keys)).items() for i in ids}
        heir: set[tuple[str, str]] = set()

        def complete() -> bool:
            heir.clear()
            heir.update((s, i) for s, ids in heir_sink.got.items() for i in ids)
            return victim | heir == want

        await wait_until(complete, what="take-over after SIGKILL")
        assert not (victim - pending) & heir  # acknowledged entries are not given again
        assert heir_sink.problems == []


async def test_close_before_run_and_a_never_started_task(redis_url: str, tmp_path: Path) -> None:
    worker = GroupWorker(bus(redis_url, tmp_path), group("w1"), Sink())
    worker.close()
    worker.close()  # idempotent
    async with asyncio.timeout(2 * UNIT_S):
        await worker.wait_closed()  # never ran: nothing to wait for
        await worker.run()  # returns at once
    other = GroupWorker(bus(redis_url, tmp_path), group("w2"), Sink())
    task = asyncio.create_task(other.run())
    task.cancel()  # before its first step: run() never starts
    await asyncio.wait([task])
    other.close()
    async with asyncio.timeout(2 * UNIT_S):
        await other.wait_closed()


@pytest.mark.parametrize("read_ahead", [False, True])
async def test_lost_replies_dropped_connections_and_a_stall_lose_and_repeat_nothing(
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    producer: AsyncProducer,
    r: aredis.Redis,
    read_ahead: bool,
) -> None:
    keys = bus(redis_server.url, tmp_path).keys
    proxy = FaultProxy(redis_server.port)
    sink = Sink()
    settings = group("w1", claim_idle_ms=2000, block_ms=300, read_ahead=read_ahead)
    try:
        async with GroupWorker(bus(proxy.url, tmp_path), settings, sink) as worker:
            for wave in range(6):
                write_sessions(producer, f"f{wave}", 4, 5, finish=wave % 2 == 0)
                assert await producer.flush()
                await asyncio.sleep(0.15)
                if wave % 3 == 0:
                    proxy.cut_replies(3)  # XREADGROUP, XACK, a renewal: applied, unanswered
                elif wave % 3 == 1:
                    proxy.drop_connections()
                else:
                    proxy.stall()  # longer than the socket timeout and the leases' life
                    await asyncio.sleep(2.5)
                    proxy.resume()
            want = {(s, i) for s, ids in (await truth(r, keys)).items() for i in ids}
            await wait_until(
                lambda: {(s, i) for s, ids in sink.got.items() for i in ids} == want,
                timeout_s=15,
                what=f"everything: {worker.stats}",
            )
            assert worker.stats.errors > 0
            assert worker.stats.lost > 0  # the stall outlived the leases
            assert proxy.cut_count > 0
            for s, ids in sink.got.items():
                assert ids == sorted(set(ids), key=_id), f"{s} repeated or out of order"
            assert sink.problems == []
    finally:
        proxy.close()


async def test_min_replicas_holds_entries_until_a_replica_has_them(
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    producer: AsyncProducer,
    server_binary: Path,
    r: aredis.Redis,
) -> None:
    await r.config_set("repl-diskless-sync-delay", 0)  # a replica syncs at once
    careful = bus(redis_server.url, tmp_path, min_replicas=1)
    sink = Sink()
    settings = group("w1", kinds=frozenset({"session"}))
    async with GroupWorker(careful, settings, sink):
        write_sessions(producer, "rep", 3, 2, finish=True)
        assert await producer.flush()
        await asyncio.sleep(1.0)
        assert sink.count() == 0  # no replica: nothing is handed over
        replica = EmbeddedRedis(
            tmp_path / "replica",
            binary=server_binary,
            persistent=False,
            extra_args=("--replicaof", "127.0.0.1", str(redis_server.port)),
        )
        replica.start()
        try:
            await wait_until(lambda: sink.count() == 3 * 4, what="entries once replicated")
        finally:
            replica.kill()
        assert sink.problems == []


async def test_lag_counts_pending_and_undelivered_entries_per_stream(
    redis_url: str, tmp_path: Path, producer: AsyncProducer
) -> None:
    sink = Sink()
    sink.gate = asyncio.Event()  # the sink holds the first batch
    settings = group("w1", kinds=frozenset({"session"}), count=2)
    async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
        write_sessions(producer, "lag", 1, 4, finish=False)  # 5 entries
        assert await producer.flush()
        await wait_until(lambda: len(sink.attempts) == 1, what="a batch in the sink")
        # 2 delivered and pending (in the sink), 3 not delivered yet.
        assert await worker.lag() == {"session:lag-0": 5}
        sink.gate.set()
        await wait_until(lambda: sink.count() == 5)
        await wait_until(lambda: worker.stats.acked == 5)
        assert await worker.lag() == {"session:lag-0": 0}


async def test_the_ack_script_takes_any_number_of_ids_and_passes_errors_on(
    r: aredis.Redis,
) -> None:
    """The loop acknowledges a stream's batch with one script call, the ids joined in one
    argument (``_ACK``): past Lua's unpack limit too. XACK's own errors come back as they
    are (the loop reads NOGROUP as "the stream went away" and retries the others)."""
    from rpa_bus.redisio._group import _ACK

    ack = r.register_script(_ACK)
    pipe = r.pipeline(transaction=False)
    for i in range(2_500):
        pipe.xadd("acks", {"e": b"{}"}, id=f"{i + 1}-0")
    await pipe.execute()
    await r.xgroup_create("acks", "g", "0")
    got = await r.xreadgroup("g", "c", {"acks": ">"}, count=3_000)
    ids = [raw for raw, _ in got[0][1]]
    assert len(ids) == 2_500
    assert await ack(keys=["acks"], args=["g", b" ".join(ids[:2_400])]) == 2_400
    assert (await r.xpending("acks", "g"))["pending"] == 100
    # Again, and with what is still pending: only those count.
    assert await ack(keys=["acks"], args=["g", b" ".join(ids)]) == 100
    assert (await r.xpending("acks", "g"))["pending"] == 0
    await r.set("not-a-stream", "x")
    with pytest.raises(aredis.ResponseError, match=r"^WRONGTYPE"):
        await ack(keys=["not-a-stream"], args=["g", b"1-0"])
    await r.delete("acks", "not-a-stream")


async def test_finished_sessions_are_dropped_while_rounds_keep_coming(
    redis_url: str, tmp_path: Path, producer: AsyncProducer
) -> None:
    """With read_ahead a round's acks go out with the next round, so some are always
    pending while a busy stream keeps every read full: a finished stream is still dropped
    once its own acks are flushed, not only when the reads run dry."""
    sink = Sink()
    slow = asyncio.Event()  # never set: each put waits its timeout, so rounds pile up

    async def slow_put(entries: Sequence[Entry]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slow.wait(), 0.02 * UNIT_S)
        await Sink.put(sink, entries)

    sink.put = slow_put  # type: ignore[method-assign]
    settings = group("w1", count=5, kinds=frozenset({"session"}), read_ahead=True)
    busy = producer.session("busy-0")
    busy.start()
    writing = True

    async def keep_writing() -> None:
        while writing:
            busy.log("tick")
            await producer.flush()
            await asyncio.sleep(0.002)

    writer = asyncio.create_task(keep_writing())
    try:
        async with GroupWorker(bus(redis_url, tmp_path), settings, sink) as worker:
            await wait_until(lambda: worker.stats.ahead > 0, what="rounds read ahead")
            write_sessions(producer, "done", 5, 2, finish=True)
            assert await producer.flush()
            await wait_until(
                lambda: worker.stats.dropped == 5, what=f"finished dropped: {worker.stats}"
            )
            assert not writer.done()  # the reads were still full when they were dropped
            assert worker.stats.tailed == 1
    finally:
        writing = False
        await writer
    assert sink.problems == []
