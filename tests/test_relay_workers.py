"""``rpa-bus relay --workers 2``: two processes on one port, supervised (real Redis).

Connections spread over both workers; SIGKILL of one loses no client event (its clients
resume from their last id on the other, and each client's ids equal XRANGE of the stream
exactly); the supervisor restarts it; SIGTERM to the parent stops all and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rpa_bus.cli._embedded import free_port
from rpa_bus.redisio import cancel_and_wait
from tests._relay_support import Writer, sid_stream
from tests.conftest import UNIT_S

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")
NAMES = ("w-1", "w-2")


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=2 * UNIT_S
            ) as response:
                body: dict[str, object] = orjson.loads(response.read())
        except OSError:
            return None
        return body

    def pids(self) -> dict[str, int]:
        """Worker name -> pid, from the workers' environment."""
        out: dict[str, int] = {}
        for child in psutil.Process(self.proc.pid).children():
            try:
                name = child.environ().get("RPA_BUS_RELAY_NAME")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if name is not None and child.is_running() and child.status() != "zombie":
                out[name] = child.pid
        return out

    def owner(self, local_port: int) -> str | None:
        """The worker holding the server side of a client's connection."""
        for name, pid in self.pids().items():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.raddr and c.raddr.port == local_port for c in conns):
                return name
        return None

    def names_seen(self, tries: int) -> set[str]:
        """Worker names answering /healthz over ``tries`` fresh connections."""
        seen = set()
        for _ in range(tries):
            body = self.health()
            if body is not None and body.get("status") == "ok":
                seen.add(str(body["name"]))
        return seen


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    port = free_port()
    log = tmp_path / "relay.log"
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": os.environ.get("HOME", "/tmp"),
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_RELAY_BLOCK_MS": "200",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RPA_BUS, "relay", "--workers", "2", "--port", str(port), "--name", "w"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    w = Workers(proc, port, log)
    try:
        deadline = time.monotonic() + 20 * UNIT_S
        while w.names_seen(10) != set(NAMES):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield w
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20 * UNIT_S)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children():
                    child.kill()
                proc.kill()
                proc.wait()


class Follower:
    """A resuming client that records every event frame it gets, duplicates included."""

    def __init__(self, url: str, stream: str) -> None:
        self.url = url
        self.stream = stream
        self.ids: list[str] = []
        self.connections = 0
        self.local_port: int | None = None

    async def run(self) -> None:
        last = "0"
        while True:
            try:
                async with connect(self.url, open_timeout=5 * UNIT_S) as ws:
                    self.connections += 1
                    self.local_port = int(ws.local_address[1])
                    op = {"op": "subscribe", "stream": self.stream, "from": last}
                    await ws.send(orjson.dumps(op).decode())
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        if frame["type"] == "event":
                            self.ids.append(frame["id"])
                            last = frame["id"]
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                pass
            self.local_port = None
            await asyncio.sleep(0.05)


def test_connections_spread_over_both_workers(workers: Workers) -> None:
    assert workers.names_seen(40) == set(NAMES)
    assert set(workers.pids()) == set(NAMES)


async def test_killed_worker_loses_no_client_event_and_is_restarted(
    workers: Workers, redis_url: str
) -> None:
    sid = "workers-run"
    stream = sid_stream(sid)
    writer = Writer(redis_url)
    followers = [Follower(f"ws://127.0.0.1:{workers.port}/ws", stream) for _ in range(8)]
    tasks = [asyncio.create_task(f.run(), name=f"follower-{i}") for i, f in enumerate(followers)]
    try:
        await writer.start(sid)
        ids = [await writer.add(stream, "started")]
        deadline = time.monotonic() + 10 * UNIT_S
        while any(f.local_port is None or not f.ids for f in followers):
            assert time.monotonic() < deadline, "followers did not connect"
            await asyncio.sleep(0.05)
        owners = {
            i: await asyncio.to_thread(workers.owner, f.local_port)
            for i, f in enumerate(followers)
            if f.local_port is not None
        }
        victim = owners[0]
        assert victim in NAMES, owners
        on_victim = [i for i, name in owners.items() if name == victim]
        old_pid = (await asyncio.to_thread(workers.pids))[victim]
        for i in range(200):
            ids.append(await writer.add(stream, "progress", step=i + 1, total=200))
            if i == 60:
                os.kill(old_pid, signal.SIGKILL)
            await asyncio.sleep(0.01)
        assert ids == await writer.ids(stream)
        deadline = time.monotonic() + 20 * UNIT_S
        while any(f.ids[-1:] != ids[-1:] for f in followers):
            assert time.monotonic() < deadline, [len(f.ids) for f in followers]
            await asyncio.sleep(0.05)
        for i, f in enumerate(followers):
            assert f.ids == ids, i  # nothing lost, nothing twice
        assert all(followers[i].connections >= 2 for i in on_victim)
        # The supervisor started the killed worker again, under its name.
        deadline = time.monotonic() + 20 * UNIT_S
        while True:
            pids = await asyncio.to_thread(workers.pids)
            if pids.get(victim, old_pid) != old_pid and set(pids) == set(NAMES):
                break
            assert time.monotonic() < deadline, (pids, workers.log.read_text())
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 20 * UNIT_S
        while await asyncio.to_thread(workers.names_seen, 10) != set(NAMES):
            assert time.monotonic() < deadline, workers.log.read_text()
    finally:
        await cancel_and_wait(tasks)
        await writer.close()


def test_sigterm_stops_every_worker_and_exits_0(workers: Workers) -> None:
    children = list(workers.pids().values())
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(20 * UNIT_S) == 0, workers.log.read_text()
    for pid in children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_workers_need_a_fixed_port() -> None:
    run = subprocess.run(
        [RPA_BUS, "relay", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT_S,
        env={"PATH": str(Path(sys.executable).parent), "HOME": os.environ.get("HOME", "/tmp")},
        check=False,
    )
    assert run.returncode == 2
    assert "fixed --port" in run.stderr
