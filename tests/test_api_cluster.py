"""The HTTP API on a real Redis Cluster: idempotent publish (the append in the session's
slot, the sessions index in its own), state, history and the sessions list."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import redis

from rpa_bus import Keys
from tests._api_support import ApiServer, api_server
from tests._cluster import LocalCluster
from tests.conftest import UNIT_S

KEYS = Keys()


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[ApiServer]:
    async with api_server(cluster.url) as server:
        yield server


@pytest.mark.slow
async def test_publish_and_read_on_a_cluster(api: ApiServer, rc: redis.RedisCluster) -> None:
    timeout = aiohttp.ClientTimeout(total=10 * UNIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        sids = [f"cl-{i}" for i in range(4)]
        for sid in sids:
            body = orjson.dumps([{"type": "started", "total": 2}, {"type": "finished"}])
            for _ in range(2):  # the retry appends (and indexes) nothing twice
                async with http.post(
                    api.url(f"/v1/sessions/{sid}/events"),
                    data=body,
                    headers={"Idempotency-Key": f"key-{sid}"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    reply = await resp.json()
            assert reply["replayed"] is True
            assert len(reply["ids"]) == 2
            assert rc.xlen(KEYS.session(sid)) == 2
        index = [orjson.loads(f[b"e"]) for _, f in rc.xrange(KEYS.sessions)]
        assert [(e["type"], e["session"]) for e in index] == [
            (kind, sid) for sid in sids for kind in ("started", "finished")
        ]
        async with http.get(api.url("/v1/sessions")) as resp:
            listing = await resp.json()
        assert [s["session"] for s in listing["sessions"]] == sids[::-1]
        assert {s["status"] for s in listing["sessions"]} == {"finished"}
        async with http.get(api.url("/v1/streams/session:cl-2/events")) as resp:
            page = await resp.json()
        assert [e["data"]["type"] for e in page["events"]] == ["started", "finished"]
