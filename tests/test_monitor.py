"""Integration tests of the monitor: real psutil, a real private Redis, real time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
import pytest
import redis

from monitor import Monitor, MonitorSettings, ProducerWriter, Writer
from monitor._host import HostSampler
from producer import Producer, Session
from rpa_bus import ConfigMismatch, Envelope, Keys, Settings, encode, make
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._proxy import FaultProxy
from tests._wait import wait_for
from tests.conftest import UNIT_S

KEYS = Keys()
# What a read meets while the test restarts the server (or it loads its AOF): "not yet".
RESTARTING = (redis.ConnectionError,)
ROOT = Path(__file__).resolve().parents[1]


MakeSettings = Callable[..., MonitorSettings]


@pytest.fixture
def settings_for(spool_dir: Path) -> MakeSettings:
    def make_settings(url: str, **kw: Any) -> MonitorSettings:
        kw.setdefault("host_name", "test-host")
        kw.setdefault("interval_s", 0.2)
        return MonitorSettings(bus=Settings(redis_url=url, spool_dir=spool_dir), **kw)

    return make_settings


@contextmanager
def running(mon: Monitor) -> Iterator[Monitor]:
    """Run the monitor in a thread; on exit stop it and flush (as the CLI does)."""
    thread = threading.Thread(target=mon.run, name="monitor-under-test")
    thread.start()
    try:
        yield mon
    finally:
        mon.stop()
        thread.join(10 * UNIT_S)
        assert not thread.is_alive()
        mon.close()


def events(client: redis.Redis, host: str = "test-host") -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.monitor(host)))
    return [orjson.loads(fields[b"e"]) for _, fields in entries]


def samples(client: redis.Redis, host: str = "test-host") -> list[dict[str, Any]]:
    return [e["data"] for e in events(client, host) if e["type"] == "metrics"]


def alerts(
    client: redis.Redis, metric: str | None = None, host: str = "test-host"
) -> list[dict[str, Any]]:
    found = [e["data"] for e in events(client, host) if e["type"] == "alert"]
    return [a for a in found if metric is None or a["metric"] == metric]


@pytest.fixture
def jobs(redis_url: str, spool_dir: Path) -> Iterator[Producer]:
    """The producer library, writing sessions as real jobs do."""
    bus = Producer(redis_url, spool_dir=spool_dir)
    yield bus
    bus.close()


def start_session(jobs: Producer, sid: str) -> Session:
    session = jobs.session(sid, total=100)
    session.start()
    assert jobs.flush(5 * UNIT_S)
    return session


def written(jobs: Producer) -> None:
    assert jobs.flush(5 * UNIT_S)


def ts_s(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def is_rate(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x >= 0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield c
    c.close()


def test_samples_hold_every_field(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, jobs: Producer
) -> None:
    start_session(jobs, "job-1")
    with running(Monitor(settings_for(redis_url))):
        wait_for(lambda: len(samples(client)) >= 3, what="3 samples")
    found = samples(client)
    for i, d in enumerate(found, 1):
        assert d["seq"] == i
        assert d["host"] == "test-host"
        assert d["interval_s"] == 0.2
        cpu = d["cpu"]
        assert 0 <= cpu["percent"] <= 100
        assert cpu["count"] == len(cpu["per_core"]) == os.cpu_count()
        assert all(0 <= c <= 100 for c in cpu["per_core"])
        assert len(cpu["load"]) == 3
        assert 0 < d["memory"]["percent"] <= 100
        assert d["memory"]["total"] >= d["memory"]["used"] > 0
        assert set(d["swap"]) == {"total", "used", "percent"}
        assert d["disks"], "at least one real mount"
        for mount, disk in d["disks"].items():
            assert mount.startswith("/")
            assert 0 <= disk["percent"] <= 100
            assert disk["total"] > 0
        assert set(d["disk_io"]) == {"read_bytes_s", "write_bytes_s", "read_ops_s", "write_ops_s"}
        assert all(is_rate(v) for v in d["disk_io"].values())
        rates = {"rx_bytes_s", "tx_bytes_s", "rx_packets_s", "tx_packets_s"}
        assert set(d["net"]["total"]) == rates
        assert all(is_rate(v) for v in d["net"]["total"].values())
        assert d["net"]["interfaces"]
        for nic in d["net"]["interfaces"].values():
            assert set(nic) == rates
            assert all(is_rate(v) for v in nic.values())
        assert d["processes"] > 1
        own = d["monitor"]
        assert is_rate(own["cpu_s"])
        assert is_rate(own["sample_cpu_ms"])
        assert own["rss"] > 0
        bus = d["bus"]
        assert bus["reachable"] is True
        assert bus["used_memory"] > 0
        assert bus["connected_clients"] >= 2  # this test's client and the monitor's
        assert isinstance(bus["ops_s"], int)
        assert bus["active_sessions"] == 1
        assert bus["relays"] == {}
    # INFO's instantaneous_ops_per_sec: the monitor's own commands (a dozen per sample)
    # register as soon as Redis has measured them (it samples every 100 ms).
    assert any(s["bus"]["ops_s"] > 0 for s in found), [s["bus"]["ops_s"] for s in found]
    # The loopback traffic of the monitor itself shows up as a rate on `lo`.
    assert any(s["net"]["interfaces"].get("lo", {}).get("rx_packets_s", 0) > 0 for s in found)
    # The host is discoverable, with the time of its last sample.
    last_ms = int(client.hget(KEYS.monitors, "test-host") or 0)
    assert abs(last_ms / 1000 - ts_s(events(client)[-1]["ts"])) < 0.01


class SlowWriter:
    """The real writer, after a pause: a sample that takes 60 ms, as on a busy host."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner

    def write(self, envelope: Envelope) -> None:
        if envelope["type"] == "metrics":
            time.sleep(0.06)  # the work a sample costs here, not a wait for something
        self.inner.write(envelope)

    def flush(self, timeout_s: float) -> bool:
        return self.inner.flush(timeout_s)

    def close(self) -> None:
        self.inner.close()


def test_interval_holds_without_drift(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    interval = 0.2
    settings = settings_for(redis_url, interval_s=interval)
    inner = ProducerWriter(Producer(settings=settings.bus), host_name="test-host", window_s=60)
    mon = Monitor(settings, writer=SlowWriter(inner))
    with running(mon):
        # Ten slots of the grid, taken or skipped.
        wait_for(lambda: mon.seq + mon.skipped >= 10, what="10 sampling slots", timeout_s=10)
    inner.close()
    times = [ts_s(e["ts"]) for e in events(client) if e["type"] == "metrics"]
    assert len(times) >= 10 - mon.skipped - 1
    # Every sample sits on the grid start + n * interval: the 60 ms each sample takes does
    # not push the next one (sleeping `interval` between samples would: 10 x 60 ms).
    tolerance = 0.05 * UNIT_S
    slots = [(t - times[0]) / interval for t in times]
    assert all(abs(s - round(s)) * interval < tolerance for s in slots), slots
    assert round(slots[-1]) == len(times) - 1 + mon.skipped


def test_relay_lag_alert_fires_and_resolves(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, jobs: Producer
) -> None:
    job = start_session(jobs, "job-1")
    for step in range(1, 31):
        job.progress(step)
    written(jobs)
    stream = KEYS.session("job-1")
    group = KEYS.relay_group("relay-a")
    client.xgroup_create(stream, group, id="0")  # 31 entries not yet read: lag 31
    settings = settings_for(redis_url, relay_lag_warn=10.0, alert_samples=2, stall_after_s=60)
    with running(Monitor(settings)):
        wait_for(lambda: alerts(client, "relay_lag"), what="lag alert")
        relay = samples(client)[-1]["bus"]["relays"]["relay-a"]
        assert relay == {"lag": 31, "pending": 0, "streams": 1}
        client.xreadgroup(group, "c1", {stream: ">"}, count=100)  # read: lag 0, 31 pending
        wait_for(lambda: len(alerts(client, "relay_lag")) >= 2, what="resolved")
        seen = samples(client)[-1]["bus"]["relays"]["relay-a"]
        assert (seen["lag"], seen["pending"]) == (0, 31)
    firing, resolved = alerts(client, "relay_lag")
    assert firing == {
        "metric": "relay_lag",
        "value": 31.0,
        "threshold": 10.0,
        "severity": "warning",
        "state": "firing",
        "relay": "relay-a",
    }
    assert resolved | {"value": 0.0} == firing | {"state": "resolved", "value": 0.0}
    # Hysteresis: two samples above before firing; the value never flapped.
    lags = [s["bus"]["relays"]["relay-a"]["lag"] for s in samples(client)]
    assert lags[:2] == [31, 31]


def test_archive_lag_alert_fires_and_resolves(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, jobs: Producer
) -> None:
    """With the archive on (P:config archive=1) and no archiver, every entry counts as lag
    (``rpa-bus status``'s reading); once the archiver's group has read all, it resolves."""
    client.hset(KEYS.config, "archive", "1")
    job = start_session(jobs, "job-a")
    for step in range(1, 31):
        job.progress(step)
    written(jobs)
    settings = settings_for(
        redis_url, archive_lag_warn=10.0, archive_lag_interval_s=0.01, alert_samples=2
    )
    with running(Monitor(settings)):
        wait_for(lambda: alerts(client, "archive_lag"), what="archive lag alert")
        seen = samples(client)[-1]["bus"]["archive"]
        assert seen["on"] is True
        assert seen["lag"] >= 31
        group = KEYS.worker_group("archiver")
        for key in (KEYS.session("job-a"), KEYS.sessions):
            client.xgroup_create(key, group, id="$")  # everything read and acknowledged
        wait_for(lambda: len(alerts(client, "archive_lag")) >= 2, what="resolved")
    firing, resolved = alerts(client, "archive_lag")
    assert firing["state"] == "firing"
    assert firing["value"] >= 31
    assert firing["threshold"] == 10.0
    assert (resolved["state"], resolved["value"]) == ("resolved", 0.0)


def test_host_alerts_follow_their_thresholds(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    low = settings_for(redis_url, memory_crit=0.0, disk_crit=0.0, alert_samples=1)
    with running(Monitor(low)):
        wait_for(lambda: len(samples(client)) >= 2, what="2 samples")
    fired = {(a["metric"], a.get("mount")): a for a in alerts(client) if a["metric"] != "cpu"}
    assert fired[("memory", None)]["severity"] == "critical"
    assert fired[("memory", None)]["state"] == "firing"
    assert fired[("memory", None)]["value"] > 0
    assert any(metric == "disk" for metric, _ in fired)
    for metric, _ in fired:  # each fired once, not once per sample
        assert len(alerts(client, metric)) == sum(1 for m, _ in fired if m == metric)
    last_state = {(a["metric"], a.get("mount")): a["state"] for a in alerts(client)}
    left_firing = sorted(k for k, state in last_state.items() if state == "firing")  # cpu too

    client.delete(KEYS.monitor("test-host"))
    high = settings_for(redis_url, cpu_warn=100.0, memory_crit=100.0, disk_crit=100.0)
    with running(Monitor(high)):
        wait_for(lambda: len(samples(client)) >= 3, what="3 samples")
    # The first run's alerts were still firing (kept in Redis): this run resolves them
    # once each (memory and disk are far below 100%; CPU, on a busy machine, may stay in
    # its hysteresis band and go on firing), and fires nothing.
    after = alerts(client)
    assert {a["state"] for a in after} == {"resolved"}
    resolved = sorted((a["metric"], a.get("mount")) for a in after)
    assert set(resolved) <= set(left_firing)
    assert {k for k in left_firing if k[0] != "cpu"} <= set(resolved)
    summary = samples(client)[-1]["alerts"]
    still = [a["metric"] for a in summary["firing"]]
    assert set(still) <= {"cpu"}
    stored = client.hgetall(KEYS.monitor("test-host") + ":alerts")
    assert sorted(stored) == [f"{m}:".encode() for m in still]


def test_stalled_sessions(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, jobs: Producer
) -> None:
    settings = settings_for(redis_url, stall_after_s=0.6 * UNIT_S)
    # A session whose end never reached the lifecycle index (written by hand here).
    client.xadd(KEYS.sessions, {"e": encode(make("started", session="forgotten"))})
    client.hset(KEYS.meta("forgotten"), mapping={"status": "finished"})
    moves = start_session(jobs, "moves")
    ends = start_session(jobs, "ends")
    with running(Monitor(settings)):

        def stalled() -> dict[str, dict[str, Any]]:
            return {a["session"]: a for a in alerts(client, "stalled")}

        both = wait_for(lambda: len(stalled()) == 2 and stalled(), what="two stalled")
        assert set(both) == {"moves", "ends"}
        for alert in both.values():
            assert alert["state"] == "firing"
            assert alert["severity"] == "warning"
            assert alert["value"] > alert["threshold"] == 0.6 * UNIT_S
        moves.progress(1)
        ends.finish()
        written(jobs)
        wait_for(lambda: all(a["state"] == "resolved" for a in stalled().values()), what="resolved")
        wait_for(lambda: samples(client)[-1]["bus"]["active_sessions"] == 1, what="1 active")
        moves.fail("gave up")
        written(jobs)
        wait_for(lambda: samples(client)[-1]["bus"]["active_sessions"] == 0, what="0 active")
    by_session: dict[str, list[str]] = {}
    for a in alerts(client, "stalled"):
        by_session.setdefault(a["session"], []).append(a["state"])
    assert by_session["ends"] == ["firing", "resolved"]
    # "moves" may stall again before it ends; either way firing and resolved alternate.
    assert by_session["moves"][:2] == ["firing", "resolved"]
    assert by_session["moves"] == ["firing", "resolved"] * (len(by_session["moves"]) // 2)
    # "forgotten" was checked against its meta status, never reported, then dropped.
    assert set(by_session) == {"moves", "ends"}


def test_redis_restart_loses_no_sample(
    redis_server: EmbeddedRedis,
    redis_url: str,
    client: redis.Redis,
    settings_for: MakeSettings,
) -> None:
    with running(Monitor(settings_for(redis_url))) as mon:
        wait_for(lambda: len(samples(client)) >= 3, what="samples")
        redis_server.stop()
        taken = mon.seq
        wait_for(lambda: mon.seq >= taken + 4, what="4 samples while Redis is down")
        redis_server.start()
        wait_for(
            lambda: samples(client)[-1]["bus"]["reachable"], what="bus back", ignore=RESTARTING
        )
    found = samples(client)
    seqs = [s["seq"] for s in found]
    assert seqs == list(range(1, len(seqs) + 1)), "every sample, once, in order"
    down = [s for s in found if not s["bus"]["reachable"]]
    assert len(down) >= 3, "sampling went on while Redis was down"
    assert all("cpu" in s and "memory" in s for s in down)
    assert down[0]["bus"] == {"reachable": False}


def test_monitor_stream_keeps_a_time_window(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    key = KEYS.monitor("test-host")
    old = int(time.time() * 1000) - 3_600_000
    pipe = client.pipeline()
    for i in range(500):
        pipe.xadd(key, {"e": encode(make("log", message="old"))}, id=f"{old + i}-0")
    pipe.execute()
    with running(Monitor(settings_for(redis_url, window_s=600.0))):
        wait_for(lambda: len(samples(client)) >= 2, what="2 samples")
    # MINID ~ trims whole stream nodes (100 entries): what is older than the window goes,
    # but for at most one node that also holds newer entries.
    left = [e for e in events(client) if e["type"] == "log"]
    assert len(left) < 100


def test_bucket_count_mismatch_stops_the_monitor(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    client.hset(KEYS.config, "buckets", "16")
    mon = Monitor(settings_for(redis_url))
    with pytest.raises(ConfigMismatch, match="RPA_BUS_BUCKETS=16"):
        mon.tick()
    mon.close()


def rpa_bus(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = "import sys; from rpa_bus.cli import main; sys.argv[0] = 'rpa-bus'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_BUS_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["RPA_BUS_SOCKET_TIMEOUT_S"] = str(10 * UNIT_S)
    return env


def test_sigterm_flushes_buffered_samples_and_exits_0(
    redis_server: EmbeddedRedis, client: redis.Redis, cli_env: dict[str, str]
) -> None:
    proxy = FaultProxy(redis_server.port)
    try:
        args = ("monitor", "--interval", "0.2", "--host-name", "cli-host")
        proc = rpa_bus(*args, "--redis-url", proxy.url, env=cli_env)
        wait_for(lambda: len(samples(client, "cli-host")) >= 2, what="samples", timeout_s=15)
        proxy.stall()  # writes hang: the next samples wait in the monitor's buffer
        # Each probe that times out drops its connection; the next sample opens another.
        opened = proxy.accepted
        wait_for(lambda: proxy.accepted >= opened + 2, what="2 samples while stalled")
        proc.send_signal(signal.SIGTERM)
        sent_at = time.time()
        # Not a wait for something: the stall goes on past the signal, so the samples are
        # still buffered when the monitor starts to close.
        time.sleep(0.3 * UNIT_S)
        proxy.resume()
        _, err = proc.communicate(timeout=15 * UNIT_S)
    finally:
        proxy.close()
    assert proc.returncode == 0, err
    found = samples(client, "cli-host")
    assert [s["seq"] for s in found] == list(range(1, len(found) + 1))
    last = max(ts_s(e["ts"]) for e in events(client, "cli-host"))
    assert sent_at - last < 0.2 + 0.3 * UNIT_S, "the samples taken up to SIGTERM were flushed"
    assert sum(1 for s in found if not s["bus"]["reachable"]) >= 2


def test_bad_host_name_is_a_clear_error(redis_url: str, cli_env: dict[str, str]) -> None:
    proc = rpa_bus("monitor", "--host-name", "web 1/a", "--redis-url", redis_url, env=cli_env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "invalid host name 'web 1/a'" in err
    assert "--host-name" in err
    assert "Traceback" not in err


def test_redis_down_at_start_loses_no_sample(
    redis_server: EmbeddedRedis, redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    redis_server.stop()
    with running(Monitor(settings_for(redis_url))) as mon:
        wait_for(lambda: mon.seq >= 3, what="3 samples while Redis is down")
        taken = mon.seq
        redis_server.start()
        wait_for(
            lambda: any(s["bus"]["reachable"] for s in samples(client)),
            what="bus back",
            ignore=RESTARTING,
        )
    found = samples(client)
    assert [s["seq"] for s in found] == list(range(1, len(found) + 1))
    assert taken >= 2
    assert all(not s["bus"]["reachable"] for s in found[:taken])


def test_round_robin_probe_covers_every_session(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, jobs: Producer
) -> None:
    sids = [f"rr-{i}" for i in range(5)]
    for sid in sids:
        start_session(jobs, sid)
        client.xgroup_create(KEYS.session(sid), KEYS.relay_group("relay-b"), id="0")
    settings = settings_for(redis_url, streams_per_tick=2, stall_after_s=0.5 * UNIT_S)
    with running(Monitor(settings)):
        wait_for(
            lambda: {a["session"] for a in alerts(client, "stalled")} == set(sids),
            what="all stalled",
            timeout_s=8,
        )
        wait_for(
            lambda: samples(client)[-1]["bus"]["relays"].get("relay-b", {}).get("streams") == 5,
            what="every stream's lag",
        )
    last = samples(client)[-1]["bus"]
    assert last["active_sessions"] == 5
    assert last["relays"]["relay-b"] == {"lag": 5, "pending": 0, "streams": 5}


def test_an_unreadable_metric_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    sampler = HostSampler()
    missing = "/no/such/mount/here"
    assert sampler._read("disk", lambda: psutil.disk_usage(missing)) is None
    assert sampler._read("disk", lambda: psutil.Process(2**22 + 1).name()) is None
    assert sum("cannot read disk" in r.message for r in caplog.records) == 1  # once
    # A mount that vanished between listing and reading: the others are still reported.
    sampler._mounts(time.monotonic())
    assert sampler._mounts_cache is not None
    sampler._mounts_cache.append(missing)
    disks = sampler.sample()["disks"]
    assert missing not in disks
    assert disks


def test_each_host_has_its_stream_and_is_discoverable(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    for host in ("web-1", "db.2"):
        with Monitor(settings_for(redis_url, host_name=host)) as mon:
            [sample] = mon.tick()[:1]
            assert mon.flush(5 * UNIT_S)
        assert sample["data"]["host"] == host
        assert [s["host"] for s in samples(client, host)] == [host]
    hosts = cast(dict[bytes, bytes], client.hgetall(KEYS.monitors))
    assert set(hosts) == {b"web-1", b"db.2"}
    now_ms = time.time() * 1000
    assert all(0 <= now_ms - int(ms) < 10_000 * UNIT_S for ms in hosts.values())


def test_a_bug_in_reading_a_metric_is_not_an_unavailable_metric() -> None:
    """Only psutil's "not here" errors leave a metric out; an AttributeError (a misspelt
    field, a changed psutil API) is a bug and raises instead of vanishing from every
    sample behind one warning."""
    sampler = HostSampler()
    vm = psutil.virtual_memory()
    with pytest.raises(AttributeError):
        sampler._read("memory", lambda: vm.no_such_field)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        sampler._read("memory", lambda: psutil.disk_usage(None))  # type: ignore[arg-type]
    # What psutil raises for a metric that is not available still leaves it out.
    assert sampler._read("disk", lambda: psutil.disk_usage("/no/such/mount")) is None


@pytest.mark.parametrize("where", ["index", "monitors"])
def test_a_wrong_type_where_the_monitor_reads_is_an_error_not_an_outage(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings, where: str
) -> None:
    """WRONGTYPE is permanent (a misconfiguration, another program on the same prefix):
    the monitor raises it instead of sampling "bus unreachable" with a warning forever."""
    key = KEYS.sessions if where == "index" else KEYS.monitors
    client.set(key, "not what the monitor expects")
    with Monitor(settings_for(redis_url)) as mon:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            mon.tick()
        # run() stops on it too (the CLI then exits non-zero), instead of looping.
        thread_error: list[BaseException] = []

        def run() -> None:
            try:
                mon.run()
            except redis.ResponseError as exc:
                thread_error.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(10 * UNIT_S)
        assert not thread.is_alive()
        assert thread_error
        assert "WRONGTYPE" in str(thread_error[0])
    assert samples(client) == [], "no sample claims the bus was unreachable"


def test_a_restarted_monitor_keeps_its_firing_alerts_without_firing_again(
    redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    """The firing alerts live in P:monitor:HOST:alerts: a restart takes them back, so an
    alert that still holds is not announced a second time, and one that began before a
    reader's history is still visible in every sample's firing summary."""
    low = settings_for(redis_url, memory_crit=0.0, alert_samples=1)
    with running(Monitor(low)):
        wait_for(lambda: alerts(client, "memory"), what="memory firing")
    [first] = [
        e for e in events(client) if e["type"] == "alert" and e["data"]["metric"] == "memory"
    ]
    stored = client.hgetall(KEYS.monitor("test-host") + ":alerts")
    assert b"memory:" in stored
    assert orjson.loads(stored[b"memory:"])["since"] == first["ts"]

    with running(Monitor(low)) as mon:
        wait_for(lambda: mon.seq >= 3 and mon.flush(UNIT_S), what="3 samples of the second run")
    assert [a["state"] for a in alerts(client, "memory")] == ["firing"], "no second firing"
    # A reader that joins now and reads only the last sample still learns of it, with
    # when it began. (The newest entry may be another alert, e.g. cpu resolving on a
    # loaded machine: the last *sample* is what counts.)
    recent = [orjson.loads(e[b"e"]) for _, e in client.xrevrange(KEYS.monitor("test-host"))]
    last = next(e for e in recent if e["type"] == "metrics")
    summary = last["data"]["alerts"]
    memory = [a for a in summary["firing"] if a["metric"] == "memory"]
    assert memory == [
        {
            "metric": "memory",
            "value": memory[0]["value"],
            "threshold": 0.0,
            "severity": "critical",
            "state": "firing",
            "since": first["ts"],
        }
    ]
    assert memory[0]["value"] > 0
    assert summary["count"] == len(summary["firing"])


def test_firing_alerts_written_while_redis_was_down_are_kept_once_it_is_back(
    redis_server: EmbeddedRedis, redis_url: str, client: redis.Redis, settings_for: MakeSettings
) -> None:
    """Started while Redis is away: host alerts fire meanwhile, but are held; once Redis
    answers, the stored state is read first (never overwritten unread), what a previous
    run announced is not announced again, the rest is, and the state is written."""
    old = {"value": 99.0, "threshold": 0.0, "severity": "critical", "since": "T"}
    client.hset(
        KEYS.monitor("test-host") + ":alerts",
        mapping={"disk:/gone": orjson.dumps(old), "memory:": orjson.dumps(old)},
    )
    redis_server.stop()
    low = settings_for(redis_url, memory_crit=0.0, disk_crit=0.0, alert_samples=1)
    with running(Monitor(low)) as mon:
        wait_for(lambda: mon.seq >= 2, what="samples while down")
        redis_server.start()

        def kept() -> dict[bytes, bytes] | None:
            found = client.hgetall(KEYS.monitor("test-host") + ":alerts")
            return found if b"disk:/" in found else None  # written by this run

        stored = wait_for(kept, what="alerts kept", ignore=RESTARTING)
    # The stored /gone mount is not mounted here: resolved, not kept.
    assert b"disk:/gone" not in stored
    gone = [a for a in alerts(client, "disk") if a["mount"] == "/gone"]
    assert [a["state"] for a in gone] == ["resolved"]
    # Memory was announced by the previous run and still fires: no second firing event.
    assert alerts(client, "memory") == []
    assert orjson.loads(stored[b"memory:"])["since"] == "T"
    # The root disk is news: announced once, when Redis answered.
    root = [a for a in alerts(client, "disk") if a["mount"] == "/"]
    assert [a["state"] for a in root] == ["firing"]
    assert b"disk:/" in stored
