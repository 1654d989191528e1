"""``POST /v1/sessions/{SID}/events`` with the archive on (``archive=1`` in the bus's config
hash): the HTTP append, like the producer (tests/test_archive.py::
test_producer_with_the_archive_on_neither_trims_nor_expires), neither trims a session past
the archive nor expires a finished session's keys before the archiver stored it; the
archiver then does both. Real relay, real Redis, a real archiver on a SQLite file."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from rpa_bus import Settings
from tests._relay_support import http, relay_on, relay_settings
from tests._wait import wait_for_async
from tests.test_archive import archived_ids, archiver_settings, client, running

__all__ = ["client"]

pytestmark = pytest.mark.slow

MAXLEN = 10
RETENTION_S = 60.0


def bus(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url, maxlen=MAXLEN, retention_s=RETENTION_S, spool_dir=tmp_path / "spool"
    )


@contextlib.asynccontextmanager
async def api(b: Settings) -> AsyncIterator[httpx.AsyncClient]:
    base = relay_settings(b.redis_url)
    async with (
        relay_on(b.redis_url, bus=base.bus.with_(maxlen=MAXLEN, retention_s=RETENTION_S)) as r,
        http(r) as client,
    ):
        yield client


async def run_over_http(http: httpx.AsyncClient, sid: str, steps: int = 200) -> list[str]:
    """started, ``steps`` progress events in POSTs of 50, finished; the ids the relay said."""
    ids: list[str] = []

    async def post(body: Any, key: str) -> None:
        reply = await http.post(
            f"/v1/sessions/{sid}/events", json=body, headers={"Idempotency-Key": key}
        )
        assert reply.status_code == 200, reply.text
        ids.extend(reply.json()["ids"])

    await post({"type": "started", "total": steps}, f"{sid}-start")
    for start in range(1, steps + 1, 50):
        batch = [
            {"type": "progress", "step": s, "total": steps}
            for s in range(start, min(steps, start + 49) + 1)
        ]
        await post(batch, f"{sid}-{start}")
    await post({"type": "finished"}, f"{sid}-end")
    assert len(ids) == steps + 2
    return ids


async def test_http_appends_with_the_archive_on_neither_trim_nor_expire(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    b = bus(redis_url, tmp_path)
    async with api(b) as http:
        capped = await run_over_http(http, "before")  # no archive: capped and expiring
        assert client.xlen(b.keys.session("before")) < len(capped)
        assert 0 < client.pttl(b.keys.session("before")) <= RETENTION_S * 1000
        client.hset(b.keys.config, "archive", "1")
        kept = await run_over_http(http, "kept")
        key = b.keys.session("kept")
        assert [i.decode() for i, _ in client.xrange(key)] == kept  # nothing trimmed
        assert client.pttl(key) == -1  # finished, but not archived: no expiry
        assert client.pttl(b.keys.meta("kept")) == -1
        client.hdel(b.keys.config, "archive")  # turned off: capped and expiring again
        again = await run_over_http(http, "after")
        assert client.xlen(b.keys.session("after")) < len(again)
        assert 0 < client.pttl(b.keys.session("after")) <= RETENTION_S * 1000


async def test_the_archiver_stores_every_http_append_before_trimming_and_expiring(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """An archiver announced the archive and stopped: POSTed sessions (one finished, one
    still running) keep every entry and no TTL. An archiver starts: the archive holds every
    id the relay answered, once, in order; only then Redis is trimmed to the newest
    ``maxlen`` (a suffix of the archive) and the finished session expires, the running
    one does not."""
    b = bus(redis_url, tmp_path)
    url = f"sqlite://{tmp_path / 'archive.db'}"
    settings = archiver_settings(b, url)
    async with running(settings):
        await wait_for_async(
            lambda: client.hget(b.keys.config, "archive") == b"1", what="archive=1"
        )
    async with api(b) as http:
        done = await run_over_http(http, "done", steps=300)
        reply = await http.post("/v1/sessions/open/events", json=[{"type": "started"}] + [
            {"type": "log", "message": f"m{i}"} for i in range(40)
        ])  # fmt: skip
        assert reply.status_code == 200, reply.text
        still = reply.json()["ids"]
    done_key, open_key = b.keys.session("done"), b.keys.session("open")
    assert [i.decode() for i, _ in client.xrange(done_key)] == done
    assert client.pttl(done_key) == client.pttl(b.keys.meta("done")) == -1
    async with running(settings) as archiver:
        await wait_for_async(
            lambda: _archived(archiver.store, "session:done", len(done)),
            what="the finished session archived", timeout_s=30,
        )  # fmt: skip
        await wait_for_async(
            lambda: _archived(archiver.store, "session:open", len(still)),
            what="the running session archived", timeout_s=30,
        )  # fmt: skip
        assert await archived_ids(archiver.store, "session:done") == done
        assert await archived_ids(archiver.store, "session:open") == still
        await wait_for_async(
            lambda: 0 < client.pttl(done_key) <= RETENTION_S * 1000,
            what="the finished session's retention TTL",
        )
        assert 0 < client.pttl(b.keys.meta("done")) <= RETENTION_S * 1000
        await wait_for_async(
            lambda: client.xlen(done_key) < len(done), what="the archiver's trim", timeout_s=10
        )
        left = [i.decode() for i, _ in client.xrange(done_key)]
        assert len(left) >= MAXLEN
        assert left == done[-len(left) :]  # only what the archive holds went
        assert client.pttl(open_key) == -1  # still running: no expiry
        assert client.pttl(b.keys.meta("open")) == -1
        assert archiver.stats.replayed == 0


async def _archived(store: Any, stream: str, n: int) -> bool:
    return bool(await store.count(stream) >= n)


async def test_a_post_of_more_events_than_maxlen_answers_every_id(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """The append trims to ``maxlen`` in the same call; the reply used to list only the
    ids that survived the trim (19 of 50 here), and a retry's replay the same."""
    b = bus(redis_url, tmp_path)
    body = [{"type": "log", "message": f"m{i}"} for i in range(50)]
    async with api(b) as http:
        # The first 50 fill a stream node that the approximate trim keeps whole.
        warm = await http.post("/v1/sessions/big-post/events", json=body)
        assert warm.status_code == 200, warm.text
        first = await http.post(
            "/v1/sessions/big-post/events", json=body, headers={"Idempotency-Key": "bp-1"}
        )
        assert first.status_code == 200, first.text
        ids = first.json()["ids"]
        assert len(ids) == len(set(ids)) == 50
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        kept = [i.decode() for i, _ in client.xrange(b.keys.session("big-post"))]
        assert MAXLEN <= len(kept) < 50  # trimmed (approximately) all the same
        assert kept == ids[-len(kept) :]
        retry = await http.post(
            "/v1/sessions/big-post/events", json=body, headers={"Idempotency-Key": "bp-1"}
        )
        assert retry.status_code == 200, retry.text
        assert retry.json() == {**first.json(), "replayed": True}
