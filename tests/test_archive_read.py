"""Reading through the archive (issue 14): replay over WebSocket and SSE and the HTTP
history reach from the archive into Redis without a seam; ``gap`` only for a real hole;
a store that is down answers ``unavailable`` and the replay completes when it returns.
Real Redis, real SQLite files, a real private PostgreSQL, real WebSocket/SSE/HTTP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from httpx_sse import aconnect_sse

from producer import Producer
from relay import Relay
from rpa_bus import Settings, now_ts
from rpa_bus.archive import Record, open_store
from tests._postgres import LocalPostgres
from tests._relay_support import KEYS, Client, Writer, http, relay_on, relay_settings, writer
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from tests.test_archive import running
from workers import Archiver, ArchiverSettings

__all__ = ["writer"]

pytestmark = pytest.mark.slow


def bus(redis_url: str, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        spool_dir=tmp_path / "spool",
        queue_max=100_000,
        connect_timeout_s=0.5,
        socket_timeout_s=1.0,
        **kw,
    )


@contextlib.asynccontextmanager
async def archiving(b: Settings, url: str, **kw: Any) -> AsyncIterator[Archiver]:
    settings = ArchiverSettings(
        bus=b,
        archive_url=url,
        claim_idle_ms=1000,
        block_ms=200,
        lag_interval_s=0.1,
        connect_timeout_s=2.0,
        **kw,
    )
    async with running(settings) as archiver:
        yield archiver


async def ws_replay(
    r: Relay, stream: str, last: str, *, start: str = "0", timeout_s: float = 60.0
) -> tuple[list[str], list[dict[str, Any]]]:
    """Subscribe ``from=start`` over WebSocket; return the event ids up to ``last`` and
    every control frame seen meanwhile."""
    c = await Client.open(r.url)
    try:
        await c.send(op="subscribe", stream=stream, **{"from": start})
        await c.events_until(stream, last, timeout_s)
        await c.expect("live")
        return c.ids(stream), [f for f in c.frames if f["type"] != "event"]
    finally:
        await c.close()


async def sse_replay(r: Relay, stream: str, last: str) -> list[str]:
    got: list[str] = []
    async with (
        http(r) as client,
        aconnect_sse(client, "GET", "/v1/sse", params={"stream": stream, "from": "0"}) as src,
    ):
        async with asyncio.timeout(60 * UNIT_S):
            async for sse in src.aiter_sse():
                if sse.event == "event":
                    entry_id = orjson.loads(sse.data)["id"]
                    got.append(entry_id)
                    if entry_id == last:
                        break
    return got


async def history(r: Relay, stream: str, *, order: str = "asc", limit: int = 1000) -> list[str]:
    """Every id of ``stream`` through the history API, following ``next``."""
    ids: list[str] = []
    cursor: str | None = None
    bound = "after" if order == "asc" else "before"
    async with http(r) as client:
        while True:
            params = {"limit": str(limit), "order": order, **({bound: cursor} if cursor else {})}
            reply = await client.get(f"/v1/streams/{stream}/events", params=params)
            assert reply.status_code == 200, reply.text
            page = reply.json()
            ids += [e["id"] for e in page["events"]]
            cursor = page["next"]
            if cursor is None:
                return ids


async def put_archive(url: str, stream: str, epoch: str, ids: Sequence[str]) -> None:
    store = await open_store(url)
    try:
        rows = [Record(stream, epoch, i, orjson.dumps({"type": "log", "ts": "x"})) for i in ids]
        for start in range(0, len(rows), 1000):
            await store.put(rows[start : start + 1000])
    finally:
        await store.close()


def assert_once_in_order(got: list[str], want: list[str], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} events, want {len(want)}"
    if got != want:
        at = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        raise AssertionError(f"{what}: first difference at index {at}")


# ---------------------------------------------------------------------------------------


async def test_30000_events_whose_redis_stream_holds_the_last_10000_over_every_door(
    redis_url: str, writer: Writer, tmp_path: Path
) -> None:
    """Built with the archiver running (it trims after storing); a relay started after
    the archive took over replays all 30,000 over WebSocket, SSE and HTTP pages (both
    ways), in order, once, and resumes from an id Redis trimmed without a gap."""
    b = bus(redis_url, tmp_path, maxlen=10_000)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    stream = "session:big"
    key = writer.key(stream)
    async with archiving(b, url, count=1000) as archiver:
        await wait_for_async(
            lambda: writer.r.hget(KEYS.config, "archive"), what="archive=1", timeout_s=10
        )
        await writer.start("big")
        # The index announces it, as the producer does: the archiver learns of sessions
        # from the index (or when it scans a bucket it takes).
        started = {"type": "started", "session": "big", "ts": now_ts()}
        await writer.r.xadd(KEYS.sessions, {"e": orjson.dumps(started)})
        everything = await writer.add_many(stream, 30_000)
        await wait_for_async(
            lambda: archiver.stats.stored >= 30_000, what="30,000 archived", timeout_s=120
        )

        async def trimmed() -> bool:
            return int(await writer.r.xlen(key)) <= 10_500

        await wait_for_async(trimmed, what="Redis trimmed to ~10,000", timeout_s=30)
    in_redis = await writer.ids(stream)
    assert in_redis == everything[-len(in_redis) :]
    assert len(in_redis) < 20_000

    async with relay_on(redis_url, url) as r:
        got, control = await ws_replay(r, stream, everything[-1])
        assert_once_in_order(got, everything, "WebSocket from=0")
        assert [f["type"] for f in control] == ["subscribed", "live"]
        assert r.stats.archive_events_out >= 30_000 - len(in_redis)

        # Resuming from an id Redis trimmed long ago: the rest, no gap.
        resume_at = everything[5_000]
        got, control = await ws_replay(r, stream, everything[-1], start=resume_at)
        assert_once_in_order(got, everything[5_001:], "WebSocket resume from a trimmed id")
        assert "gap" not in [f["type"] for f in control]

        assert_once_in_order(await sse_replay(r, stream, everything[-1]), everything, "SSE")
        assert_once_in_order(await history(r, stream), everything, "history asc")
        assert_once_in_order(
            await history(r, stream, order="desc", limit=700), everything[::-1], "history desc"
        )
        # A page that straddles the boundary, and its bounds.
        boundary = everything.index(in_redis[0])
        async with http(r) as client:
            reply = await client.get(
                f"/v1/streams/{stream}/events",
                params={"after": everything[boundary - 3], "limit": "5"},
            )
            page = reply.json()
        assert [e["id"] for e in page["events"]] == everything[boundary - 2 : boundary + 3]
        assert page["first"] == everything[0]
        assert page["last"] == everything[-1]
        assert page["next"] == everything[boundary + 2]

        # Live after the read-through replay: once.
        c = await Client.open(r.url)
        try:
            await c.send(op="subscribe", stream=stream, **{"from": everything[-2]})
            await c.expect("live")
            new = await writer.add(stream, message="after")
            await c.events_until(stream, new)
            assert c.ids(stream) == [everything[-1], new]
        finally:
            await c.close()


async def test_gap_means_an_event_exists_in_neither(
    redis_url: str, writer: Writer, tmp_path: Path
) -> None:
    """The archive holds the first 50 of 100 entries; Redis lost the first 70 to a trim
    the archive never saw: the client gets the 50, a gap, then Redis's 30. Where the
    archive covers what Redis trimmed, there is no gap."""
    url = f"sqlite://{tmp_path / 'archive.db'}"
    epoch = await writer.start("holey")
    ids = await writer.add_many("session:holey", 100)
    await writer.r.xtrim(writer.key("session:holey"), minid=ids[70], approximate=False)
    await put_archive(url, "session:holey", epoch, ids[:50])
    whole = await writer.start("whole")
    wids = await writer.add_many("session:whole", 100)
    await writer.r.xtrim(writer.key("session:whole"), minid=wids[70], approximate=False)
    await put_archive(url, "session:whole", whole, wids[:70])
    # Another run of "whole" long ago (another epoch, older ids): never mixed in.
    await put_archive(url, "session:whole", "old-epoch", ["1-0", "2-0"])

    async with relay_on(redis_url, url) as r:
        got, control = await ws_replay(r, "session:holey", ids[-1])
        assert got == ids[:50] + ids[70:]
        gaps = [f for f in control if f["type"] == "gap"]
        assert gaps == [
            {"type": "gap", "stream": "session:holey", "from": ids[49], "first": ids[70]}
        ]
        got, control = await ws_replay(r, "session:holey", ids[-1], start=ids[10])
        assert got == ids[11:50] + ids[70:]
        assert [f["from"] for f in control if f["type"] == "gap"] == [ids[49]]
        got, control = await ws_replay(r, "session:whole", wids[-1], start="0")
        assert got == wids
        assert "gap" not in [f["type"] for f in control]
        assert await history(r, "session:whole", limit=30) == wids


async def test_store_down_replay_says_unavailable_then_completes(
    redis_url: str, writer: Writer, tmp_path: Path, postgres_server: LocalPostgres,
    postgres_url: str,
) -> None:  # fmt: skip
    """PostgreSQL archive: down when the relay starts (it serves Redis anyway), up, then
    stopped before a replay that needs it: ``unavailable``, 503 on history, and the replay
    completes, in order, once, when the store returns. A stream Redis never trimmed
    replays without the store."""
    epoch = await writer.start("pg")
    ids = await writer.add_many("session:pg", 3_000)
    await writer.r.xtrim(writer.key("session:pg"), minid=ids[2_000], approximate=False)
    await put_archive(postgres_url, "session:pg", epoch, ids[:2_000])
    await writer.start("fresh")
    fresh = await writer.add_many("session:fresh", 20)

    postgres_server.stop()
    try:
        async with relay_on(redis_url, postgres_url) as r:
            got, control = await ws_replay(r, "session:fresh", fresh[-1])
            assert got == fresh
            assert [f["type"] for f in control] == ["subscribed", "live"]
            # Subscribing before a job starts is not held up by the store being down
            # (told once: the archive could not say whether it ran before).
            early = await Client.open(r.url)
            try:
                await early.send(op="subscribe", stream="session:later", **{"from": "0"})
                await early.expect("live")
                # As for Redis outages, `unavailable` may come before `subscribed`.
                assert [f["type"] for f in early.frames] == ["error", "subscribed", "live"]
                assert early.frames[0]["code"] == "unavailable"
                await writer.start("later")
                first_live = await writer.add("session:later", message="go")
                assert await early.events_until("session:later", first_live) == [first_live]
                # Nor is the (still empty) index of a new deployment.
                await early.send(op="subscribe", stream="sessions", **{"from": "0"})
                await early.until(lambda f: f["type"] == "live" and f["stream"] == "sessions")
            finally:
                await early.close()
            async with http(r) as client:
                reply = await client.get("/v1/streams/session:pg/events")
                assert reply.status_code == 503
                assert reply.json()["error"]["code"] == "unavailable"
                tail = await client.get(
                    "/v1/streams/session:pg/events", params={"after": ids[2_500]}
                )
                assert tail.status_code == 200  # Redis alone answers this one
                assert [e["id"] for e in tail.json()["events"]] == ids[2_501:2_601]

            c = await Client.open(r.url)
            try:
                await c.send(op="subscribe", stream="session:pg", **{"from": "0"})
                err = await c.expect("error", timeout_s=10)
                assert err["code"] == "unavailable"
                assert "archive" in err["message"]
                assert c.ids("session:pg") == []  # nothing skipped to
                postgres_server.start()
                await c.events_until("session:pg", ids[-1], timeout_s=60)
                assert c.ids("session:pg") == ids
                async with http(r) as client:
                    assert (await client.get("/healthz")).json()["archive"] is True
                assert "gap" not in [f["type"] for f in c.frames]
            finally:
                await c.close()
            assert await history(r, "session:pg", limit=900) == ids
    finally:
        if not postgres_server.running():
            postgres_server.start()


async def test_store_stopped_in_the_middle_of_a_replay(
    redis_url: str, writer: Writer, tmp_path: Path, postgres_server: LocalPostgres,
    postgres_url: str,
) -> None:  # fmt: skip
    """A slow client holds the replay mid-archive (pages of 100, small queues); the store
    stops: the client gets what was read, then ``unavailable``; the store returns and the
    rest follows, in order, once."""
    epoch = await writer.start("mid")
    ids = await writer.add_many("session:mid", 1_500, size=2_000)
    await writer.r.xtrim(writer.key("session:mid"), minid=ids[1_400], approximate=False)
    store = await open_store(postgres_url)
    try:
        pad = orjson.dumps({"type": "log", "ts": "x", "data": "x" * 2_000})
        for start in range(0, 1_400, 500):
            await store.put(
                [Record("session:mid", epoch, i, pad) for i in ids[start : min(1_400, start + 500)]]
            )
    finally:
        await store.close()
    try:
        async with relay_on(
            redis_url, postgres_url, page_size=100, queue_frames=16, queue_bytes=32 * 1024
        ) as r:
            c = await Client.open(r.url, max_queue=2)
            try:
                await c.send(op="subscribe", stream="session:mid", **{"from": "0"})
                await c.events_until("session:mid", ids[49])
                postgres_server.stop()
                err = await c.until(lambda f: f["type"] == "error", timeout_s=30)
                assert err["code"] == "unavailable"
                postgres_server.start()
                await c.events_until("session:mid", ids[-1], timeout_s=60)
                assert c.ids("session:mid") == ids
                assert "gap" not in [f["type"] for f in c.frames]
            finally:
                await c.close()
    finally:
        if not postgres_server.running():
            postgres_server.start()


async def test_session_gone_from_redis_answers_from_the_archive(
    redis_url: str, writer: Writer, tmp_path: Path
) -> None:
    """A finished session whose keys are gone from Redis: listed by /v1/sessions (search,
    status), its state and history from the archive, and replayed over WebSocket."""
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    async with archiving(b, url) as archiver:
        await wait_for_async(
            lambda: writer.r.hget(KEYS.config, "archive"), what="archive=1", timeout_s=10
        )

        def run() -> None:
            with Producer(settings=b) as p:
                with p.session("gone-1", total=3) as s:
                    s.progress(1, "Tela 1")
                    s.progress(2, "captcha solved")
                    s.progress(3, "Tela 3")
                with p.session("still-1", total=2) as s:
                    s.progress(1, "here")
                assert p.flush(timeout_s=30 * UNIT_S)

        await asyncio.to_thread(run)
        await wait_for_async(lambda: archiver.stats.stored >= 5 + 3 + 4, what="all archived")
    gone_ids = [i.decode() for i, _ in await writer.r.xrange(KEYS.session("gone-1"))]
    # Retention ran out for gone-1: its keys are gone from Redis.
    await writer.r.delete(KEYS.session("gone-1"), KEYS.meta("gone-1"))

    async with relay_on(redis_url, url) as r, http(r) as client:
        found = (await client.get("/v1/sessions", params={"q": "Tela"})).json()
        assert [s["session"] for s in found["sessions"]] == ["gone-1"]
        assert found["sessions"][0]["status"] == "finished"
        later = str(int(time.time() * 1000) + 3_600_000)  # since an hour from now: none
        assert (await client.get("/v1/sessions", params={"since": later})).json() == {
            "sessions": [],
            "next": None,
        }
        everyone = (await client.get("/v1/sessions", params={"status": "finished"})).json()
        assert sorted(s["session"] for s in everyone["sessions"]) == ["gone-1", "still-1"]
        # Paged one at a time: Redis's first, then the archive's, each once.
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(5):
            params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            listing = (await client.get("/v1/sessions", params=params)).json()
            seen += [s["session"] for s in listing["sessions"]]
            cursor = listing["next"]
            if cursor is None:
                break
        assert seen == ["still-1", "gone-1"]
        bad = await client.get("/v1/sessions", params={"cursor": "a.!!"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_offset")

        state = (await client.get("/v1/sessions/gone-1")).json()
        assert (state["status"], state["step"], state["total"], state["percent"]) == (
            "finished", 3, 3, 100.0,
        )  # fmt: skip
        assert state["first"] == gone_ids[0]
        assert state["last"] == gone_ids[-1]
        assert await history(r, "session:gone-1") == gone_ids
        assert await history(r, "session:gone-1", order="desc", limit=2) == gone_ids[::-1]

        got, control = await ws_replay(r, "session:gone-1", gone_ids[-1])
        assert got == gone_ids
        subscribed = control[0]
        assert subscribed["type"] == "subscribed"
        assert subscribed["state"]["status"] == "finished"
        assert subscribed["last"] == gone_ids[-1]
        missing = await client.get("/v1/sessions/never-was")
        assert missing.status_code == 404

        # A client following it live makes the relay's consumer group keep an empty stream
        # under its name (MKSTREAM): the session is still listed from the archive.
        follower = await Client.open(r.url)
        try:
            await follower.send(op="subscribe", stream="session:gone-1", **{"from": "$"})
            await follower.expect("live")
            await wait_for_async(
                lambda: writer.r.exists(KEYS.session("gone-1")), what="the group's stream"
            )
            found = (await client.get("/v1/sessions", params={"q": "Tela"})).json()
            assert [s["session"] for s in found["sessions"]] == ["gone-1"]
        finally:
            await follower.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'archive.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def test_search_finds_any_message_in_redis_and_in_the_archive_and_until_bounds(
    redis_url: str, writer: Writer, tmp_path: Path, any_archive_url: str
) -> None:
    """``q`` finds a session by a message it logged before its last one, whether Redis
    still holds it (its meta hash has only the last message: the archive's text is asked)
    or only the archive does; ``until`` bounds the list from above in both parts."""
    b = bus(redis_url, tmp_path)
    url = any_archive_url

    def produce(runs: dict[str, list[str]]) -> None:
        with Producer(settings=b) as p:
            for sid, messages in runs.items():
                with p.session(sid, total=len(messages)) as s:
                    for i, message in enumerate(messages, 1):
                        s.progress(i, message)
            assert p.flush(timeout_s=30 * UNIT_S)

    async with archiving(b, url) as archiver:
        await wait_for_async(
            lambda: writer.r.hget(KEYS.config, "archive"), what="archive=1", timeout_s=10
        )
        await asyncio.to_thread(produce, {"gone-1": ["Tela 1", "captcha solved", "Tela 3"]})
        await wait_for_async(lambda: archiver.stats.stored >= 5 + 2, what="gone-1 archived")
        mid = int(time.time() * 1000)
        await wait_for_async(lambda: int(time.time() * 1000) > mid, what="the next ms")
        later = {"live-1": ["login ok", "CAPTCHA resolvido", "Tela 15"], "plain-1": ["Tela 1"]}
        await asyncio.to_thread(produce, later)
        await wait_for_async(lambda: archiver.stats.stored >= 7 + 7 + 5, what="all archived")
    # Retention ran out for gone-1: its keys are gone from Redis; the others stay.
    await writer.r.delete(KEYS.session("gone-1"), KEYS.meta("gone-1"))

    async with relay_on(redis_url, url) as r, http(r) as client:

        async def listed(**params: str) -> list[str]:
            reply = await client.get("/v1/sessions", params=params)
            assert reply.status_code == 200, reply.text
            return [s["session"] for s in reply.json()["sessions"]]

        # Redis's part first (live-1 by its archived text), then the archive's.
        assert await listed(q="captcha") == ["live-1", "gone-1"]
        assert await listed(q="Captcha Solved") == ["gone-1"]
        assert await listed(q="login") == ["live-1"]
        assert await listed(q="tela 15") == ["live-1"]  # the last message, from Redis
        assert await listed(q="tela 1") == ["plain-1", "live-1", "gone-1"]
        assert await listed(q="nowhere") == []
        assert await listed(q="captcha", status="running") == []
        # Paged one at a time, the search walks both parts once.
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(5):
            params = {"q": "captcha", "limit": "1", **({"cursor": cursor} if cursor else {})}
            reply = (await client.get("/v1/sessions", params=params)).json()
            seen += [s["session"] for s in reply["sessions"]]
            cursor = reply["next"]
            if cursor is None:
                break
        assert seen == ["live-1", "gone-1"]
        # until: Redis's part by the index id (started), the archive's by updated.
        assert await listed(until=str(mid)) == ["gone-1"]
        assert await listed(since=str(mid + 1)) == ["plain-1", "live-1"]
        assert await listed(q="captcha", until=str(mid)) == ["gone-1"]
        assert await listed(since="0", until="1") == []
        bad = await client.get("/v1/sessions", params={"until": "yesterday"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_offset")


async def test_bad_archive_url_is_refused_and_an_unreachable_store_does_not_stop_the_relay(
    redis_url: str, writer: Writer, tmp_path: Path
) -> None:
    from rpa_bus import ConfigError

    with pytest.raises(ConfigError, match="unknown archive URL scheme"):
        relay_settings(redis_url).with_(bus=Settings(redis_url=redis_url, archive_url="mysql://x"))
    # A directory where the file should be: the store cannot open; the relay serves Redis.
    (tmp_path / "dir.db").mkdir()
    started = time.monotonic()
    async with relay_on(redis_url, f"sqlite://{tmp_path / 'dir.db'}") as r:
        assert time.monotonic() - started < 5 * UNIT_S
        await writer.start("ok")
        ids = await writer.add_many("session:ok", 5)
        got, _ = await ws_replay(r, "session:ok", ids[-1])
        assert got == ids
        async with http(r) as client:
            reply = await client.get("/v1/sessions/nobody")
            assert reply.status_code == 503  # only the archive could say it never existed
            assert reply.json()["error"]["code"] == "unavailable"
            # A page Redis's index fills is served; a search that needs the archive's text
            # of the sessions Redis holds (no match on id or last message) is not.
            await writer.add("sessions", "started", session="ok")  # the index's entry
            listing = await client.get("/v1/sessions", params={"q": "ok", "limit": "1"})
            assert [x["session"] for x in listing.json()["sessions"]] == ["ok"]
            params = {"q": "an earlier message", "limit": "1"}
            reply = await client.get("/v1/sessions", params=params)
            assert (reply.status_code, reply.json()["error"]["code"]) == (503, "unavailable")
            health = await client.get("/healthz")
            # Redis's part is served: healthy, with the archive reported down.
            assert health.status_code == 200
            assert health.json()["archive"] is False


def test_relay_cli_refuses_an_unknown_archive_url_scheme() -> None:
    run = subprocess.run(
        [str(Path(sys.executable).parent / "rpa-bus"), "relay", "--archive-url", "mysql://db/x"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT_S,
        env={"PATH": str(Path(sys.executable).parent), "HOME": os.environ.get("HOME", "/tmp")},
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "unknown archive URL scheme" in run.stderr


async def test_a_relay_without_the_archive_url_says_so_when_the_deployment_has_one(
    redis_url: str, writer: Writer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archiver turned the archive on (P:config); a relay started without
    RPA_BUS_ARCHIVE_URL warns at start and /healthz shows the mismatch, so an operator
    finds why its clients get a gap for events the archive holds."""
    async with relay_on(redis_url, None) as r, http(r) as client:
        health = (await client.get("/healthz")).json()
        assert (health["archive"], health["archive_on"]) == (None, False)
    assert "RPA_BUS_ARCHIVE_URL is not set" not in caplog.text
    await writer.r.hset(KEYS.config, "archive", "1")
    with caplog.at_level("WARNING", logger="relay"):
        async with relay_on(redis_url, None) as r, http(r) as client:
            health = (await client.get("/healthz")).json()
            assert (health["status"], health["archive"], health["archive_on"]) == (
                "ok",
                None,
                True,
            )
    assert "RPA_BUS_ARCHIVE_URL is not set" in caplog.text
    url = f"sqlite://{tmp_path / 'archive.db'}"
    caplog.clear()
    async with relay_on(redis_url, url) as r, http(r) as client:
        health = (await client.get("/healthz")).json()
        assert health["archive_on"] is True
    assert "RPA_BUS_ARCHIVE_URL is not set" not in caplog.text
