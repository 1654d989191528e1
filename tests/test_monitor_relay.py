"""Cross-part: a relay subscriber receives ``monitor:HOST`` live, and the monitor reports
that relay's consumer group (lag, pending) in its samples."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets

from monitor import Monitor, MonitorSettings
from relay import Relay, RelaySettings
from rpa_bus import Keys, Settings, StreamId
from tests._wait import wait_for_async
from tests.conftest import UNIT_S

KEYS = Keys()


async def next_event(ws: websockets.ClientConnection, stream: str) -> dict[str, Any]:
    """The next ``event`` frame of ``stream`` (skipping ``live`` and other frames)."""
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT_S))
        assert frame.get("type") != "error", frame
        if frame.get("type") == "event" and frame.get("stream") == stream:
            return dict(frame)


async def healthz_hosts(port: int) -> list[str]:
    """The monitored hosts the relay's /healthz lists."""

    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5 * UNIT_S) as r:
            return bytes(r.read())

    hosts = orjson.loads(await asyncio.to_thread(fetch))["hosts"]
    assert isinstance(hosts, list)
    return [str(h) for h in hosts]


async def test_relay_subscriber_receives_monitor_samples_live(
    redis_url: str, spool_dir: Path
) -> None:
    bus = Settings(redis_url=redis_url, spool_dir=spool_dir)
    relay_settings = RelaySettings(bus=bus, host="127.0.0.1", port=0, name="relay-m")
    mon = Monitor(MonitorSettings(host_name="live-host", bus=bus, interval_s=0.2))
    stream = "monitor:live-host"
    async with Relay(relay_settings) as relay, websockets.connect(relay.url) as ws:
        hosts_before = await healthz_hosts(relay.port)
        await ws.send(orjson.dumps({"op": "subscribe", "stream": stream, "from": "$"}).decode())
        sampler = threading.Thread(target=mon.run, name="monitor")
        sampler.start()
        try:
            first = await next_event(ws, stream)
            ids, seqs = [first["id"]], [first["data"]["data"]["seq"]]
            relays: dict[str, Any] = {}
            for _ in range(30):
                frame = await next_event(ws, stream)
                if frame["data"]["type"] != "metrics":
                    continue  # an alert (CPU on a busy machine)
                ids.append(frame["id"])
                seqs.append(frame["data"]["data"]["seq"])
                relays = frame["data"]["data"]["bus"]["relays"]
                if "relay-m" in relays:
                    break
            hosts_after = await healthz_hosts(relay.port)
        finally:
            mon.stop()
            await asyncio.to_thread(sampler.join, 10 * UNIT_S)
            mon.close()
        # Exact figures: nothing more is written to the stream, so once the relay's group
        # has read and acknowledged every entry (XINFO GROUPS says so), a probe must report
        # lag 0 and nothing pending, on the one stream it tails.
        r = aioredis.Redis.from_url(redis_url, socket_timeout=5 * UNIT_S, protocol=2)
        key, group = KEYS.monitor("live-host"), KEYS.relay_group("relay-m")

        async def caught_up() -> bool:
            groups = {g["name"].decode(): g for g in await r.xinfo_groups(key)}
            g = groups.get(group)
            return g is not None and g["lag"] == 0 and g["pending"] == 0

        try:
            await wait_for_async(caught_up, what="the relay's group to catch up")
        finally:
            await r.aclose()
        with Monitor(MonitorSettings(host_name="live-host", bus=bus)) as probe:
            sample, *_ = await asyncio.to_thread(probe.tick)  # probes, then writes
        caught_up_relays = sample["data"]["bus"]["relays"]
    assert first["data"]["type"] == "metrics"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "live, in order, none missed"
    offsets = [StreamId.parse(i) for i in ids]
    assert offsets == sorted(set(offsets))
    # The relay tails this stream with its own consumer group: the monitor sees it.
    assert relays["relay-m"]["streams"] == 1
    assert caught_up_relays == {"relay-m": {"lag": 0, "pending": 0, "streams": 1}}
    assert hosts_before == []
    assert hosts_after == ["live-host"]  # the dashboard charts it without ?hosts=
