"""`rpa-bus webhooks` end to end: the producer writes, the consumer group reads, real
receivers on 127.0.0.1 verify and deduplicate. Processes killed with SIGKILL, two
processes sharing the work, a bad endpoints file, the operator commands and status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from producer import Producer
from rpa_bus import ConfigError, Settings
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._receiver import HANG, Receiver, receiving
from tests._wait import wait_for_async
from tests.conftest import UNIT_S
from workers import Endpoint, WebhookKeys, load_endpoints, new_secret, write_endpoints
from workers._webhooks import WebhookService, WebhookSettings

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")
KEYS = WebhookKeys("rpa")


def wait(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s * UNIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hook(url: str, secret: str, name: str = "hook", **kw: object) -> Endpoint:
    kw.setdefault("streams", ("session:*",))
    return Endpoint(name=name, url=url, secret=secret, allow_http=True, allow_private=True, **kw)  # type: ignore[arg-type]


def steps(rx: Receiver, session: str) -> list[int]:
    """The steps of ``session``'s progress events as the receiver accepted them."""
    return [
        r.json["data"]["event"]["step"]
        for r in rx.delivered()
        if r.json["data"]["stream"] == f"session:{session}" and r.json["type"] == "progress"
    ]


@contextlib.contextmanager
def worker(
    tmp_path: Path, redis_url: str, config: Path, name: str, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``rpa-bus webhooks`` as operators run it, with short leases for the test."""
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_WEBHOOKS_FILE": str(config),
        "RPA_BUS_WEBHOOKS_RETRY_INITIAL_S": "0.05",
        "RPA_BUS_WEBHOOKS_RETRY_MAX_S": "0.2",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RPA_BUS, "webhooks", "--consumer", name, "--lease-ms", "1000",
             "--claim-idle-ms", "1000", *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        code = proc.poll()
        if code is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(20 * UNIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(log.read_text(errors="replace")[-3000:])
    # SIGTERM: a clean stop (a test that SIGKILLs a worker sees -9 here).
    assert code in (0, -signal.SIGKILL), f"{name} exited {code}"


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def bus(redis_url: str, tmp_path: Path) -> Iterator[Producer]:
    producer = Producer(redis_url, spool_dir=tmp_path / "spool")
    yield producer
    producer.close()


async def test_service_delivers_what_the_producer_writes_with_metrics(
    redis_url: str, bus: Producer, secret: str, tmp_path: Path
) -> None:
    with receiving(secret) as rx, receiving(secret) as failures:
        settings = WebhookSettings(
            bus=Settings(redis_url=redis_url),
            endpoints=(
                hook(rx.url, secret, "all"),
                hook(failures.url, secret, "failures", streams=("session:*", "monitor:*"),
                     events=("failed", "alert")),
            ),
            metrics_port=_free_port(),
        )  # fmt: skip
        async with WebhookService(settings) as service:
            runner = asyncio.create_task(service.run())
            with bus.session("quote-1", total=3) as job:
                for step in (1, 2, 3):
                    job.progress(step, f"step {step}")
            with contextlib.suppress(RuntimeError), bus.session("quote-2", total=3) as job:
                job.progress(1)
                raise RuntimeError("the site is down")
            assert bus.flush(10)
            # A monitor's alert, written as the monitor writes it.
            alert = {"type": "alert", "ts": "2026-11-27T00:00:00.000Z",
                     "data": {"name": "cpu", "state": "firing"}}  # fmt: skip
            with redis.Redis.from_url(redis_url) as client:
                client.xadd("rpa:monitor:h1", {"e": orjson.dumps(alert)})
                client.xadd("rpa:monitor:h1", {"e": b'{"type":"metrics","ts":"x"}'})
                client.hset("rpa:monitors", "h1", str(int(time.time() * 1000)))
            await _until(lambda: len(rx.delivered()) == 8, "8 events at `all`")
            await _until(lambda: len(failures.delivered()) == 2, "a failure and an alert")
            assert all(r.verified for r in rx.requests + failures.requests)
            assert steps(rx, "quote-1") == [1, 2, 3]
            alerted, failed = sorted(failures.delivered(), key=lambda r: r.json["type"])
            assert alerted.json["data"]["stream"] == "monitor:h1"
            assert alerted.json["data"]["event"] == alert
            assert failed.json["data"]["event"]["error"] == "RuntimeError: the site is down"
            assert failed.json["data"]["stream"] == "session:quote-2"
            metrics = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{service.metrics_port}/metrics"
            )
            assert 'rpa_bus_webhook_delivered_total{endpoint="all"} 8.0' in metrics
            assert 'rpa_bus_webhook_delivered_total{endpoint="failures"} 2.0' in metrics
            assert "rpa_bus_webhook_latency_seconds_bucket" in metrics
            health = orjson.loads(
                await asyncio.to_thread(_get, f"http://127.0.0.1:{service.metrics_port}/healthz")
            )
            assert sorted(health["delivering"]) == ["all", "failures"]
            service.close()
            await asyncio.wait_for(runner, 20 * UNIT_S)


def _free_port() -> int:
    from rpa_bus.cli._embedded import free_port

    return free_port()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5 * UNIT_S) as response:
        return str(response.read().decode())


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    await wait_for_async(check, what=what, timeout_s=timeout_s, interval_s=0.05)


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_is_replaced_and_the_id_is_kept(
    redis_url: str, bus: Producer, secret: str, tmp_path: Path, sync: redis.Redis
) -> None:
    hung: list[str] = []

    def respond(r: object, n: int) -> int:
        if not hung:  # the very first request hangs: the first worker dies holding it
            hung.append(r.webhook_id)  # type: ignore[attr-defined]
            return HANG
        return 200

    with receiving(secret, respond) as rx:
        config = tmp_path / "webhooks.toml"
        write_endpoints(config, [hook(rx.url, secret, timeout_s=60)])
        with worker(tmp_path, redis_url, config, "first") as first:
            wait(lambda: sync.get(KEYS.lease("hook")) == b"first", what="first holds the lease")
            with worker(tmp_path, redis_url, config, "second") as second:
                with bus.session("s1", total=5) as job:
                    for step in range(1, 6):
                        job.progress(step)
                assert bus.flush(10)
                wait(lambda: len(rx.requests) >= 1, what="the first request")
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                wait(lambda: len(rx.delivered()) == 7, what="all 7 events after the takeover")
                assert second.poll() is None
                assert sync.get(KEYS.lease("hook")) == b"second"
    ids = [r.webhook_id for r in rx.requests]
    assert ids.count(hung[0]) == 2  # sent by the killed worker, then again, same id
    assert rx.counts[hung[0]] == 2
    assert steps(rx, "s1") == [1, 2, 3, 4, 5]
    assert rx.delivered()[0].webhook_id == hung[0]  # order held: the hung one went first


@pytest.mark.slow
def test_two_workers_keep_per_session_order_at_each_receiver(
    redis_url: str, bus: Producer, secret: str, tmp_path: Path
) -> None:
    sessions = [f"job-{i:02d}" for i in range(50)]
    with receiving(secret) as one, receiving(secret) as two:
        config = tmp_path / "webhooks.toml"
        write_endpoints(config, [hook(one.url, secret, "one"), hook(two.url, secret, "two")])
        with worker(tmp_path, redis_url, config, "w1"), worker(tmp_path, redis_url, config, "w2"):
            jobs = [bus.session(sid, total=8) for sid in sessions]
            for job in jobs:
                job.start()
            for step in range(1, 9):
                for job in jobs:
                    job.progress(step)
            for job in jobs:
                job.finish()
            assert bus.flush(30)
            expected = 50 * 10
            wait(lambda: len(one.delivered()) == expected, 90, "all events at receiver one")
            wait(lambda: len(two.delivered()) == expected, 90, "all events at receiver two")
    for rx in (one, two):
        assert all(r.verified for r in rx.requests)
        for sid in sessions:
            got = [
                r.json["type"]
                for r in rx.delivered()
                if r.json["data"]["stream"] == f"session:{sid}"
            ]
            assert got == ["started"] + ["progress"] * 8 + ["finished"], sid
            assert steps(rx, sid) == list(range(1, 9)), sid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[endpoints.a]\nurl = "https://x.example/"\nsecret = "{s}"\ncolour = 1\n', "unknown key"),
        ('[endpoints.a]\nurl = "x.example/hook"\nsecret = "{s}"\n', "must be https://"),
        ('[endpoints.a]\nurl = "https://x.example/"\n', "secret is missing"),
    ],
)
def test_a_bad_config_file_exits_2_at_start_up(
    redis_url: str, tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "webhooks.toml"
    config.write_text(text.replace("{s}", new_secret()))
    with pytest.raises(ConfigError):
        load_endpoints(config)
    result = subprocess.run(
        [RPA_BUS, "webhooks", "--config", str(config), "--redis-url", redis_url],
        capture_output=True, text=True, timeout=60 * UNIT_S,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "endpoint 'a'" in result.stderr


def test_operator_commands_and_status(
    redis_url: str, bus: Producer, secret: str, tmp_path: Path, sync: redis.Redis
) -> None:
    gone = [True]
    with receiving(secret, lambda r, n: 410 if gone[0] else 200) as rx:
        config = tmp_path / "webhooks.toml"
        write_endpoints(config, [hook(rx.url, secret)])
        env = {**os.environ, "RPA_BUS_REDIS_URL": redis_url, "RPA_BUS_WEBHOOKS_FILE": str(config)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([RPA_BUS, *args], env=env, capture_output=True, text=True,
                                  timeout=60 * UNIT_S)  # fmt: skip

        with worker(tmp_path, redis_url, config, "w1"):
            with bus.session("s1", total=1) as job:
                job.progress(1)
            assert bus.flush(10)
            wait(lambda: sync.xlen(KEYS.dead("hook")) == 3, what="3 dead letters (410)")
            dead = cli("webhooks", "dead", "hook", "--json")
            assert dead.returncode == 0, dead.stderr
            assert [d["error"] for d in orjson.loads(dead.stdout)] == ["HTTP 410 Gone"] * 3
            status = orjson.loads(cli("status", "--json").stdout)
            (row,) = status["webhooks"]
            assert row["name"] == "hook"
            assert row["dead"] == 3
            assert row["last_error"] == "HTTP 410 Gone"
            assert "webhook   hook  delivering  backlog 0  dead 3" in cli("status").stdout

            assert cli("webhooks", "pause", "hook").returncode == 0
            gone[0] = False
            assert "hook: 3 dead letter(s) queued again" in cli("webhooks", "replay").stdout

            def backlog() -> int:
                return int(orjson.loads(cli("status", "--json").stdout)["webhooks"][0]["backlog"])

            wait(lambda: backlog() == 3, what="the replayed jobs wait while paused")
            assert rx.delivered() == []
            assert cli("webhooks", "resume", "hook").returncode == 0
            wait(lambda: len(rx.delivered()) == 3, what="the replayed deliveries")
            assert [r.json["type"] for r in rx.delivered()] == ["started", "progress", "finished"]
        test = cli("webhooks", "test", "hook")
        assert test.returncode == 0, test.stderr
        assert "hook: HTTP 200" in test.stdout
    assert secret not in cli("webhooks", "list").stdout


async def test_started_while_redis_is_down_it_delivers_once_redis_is_up(
    redis_server: EmbeddedRedis, redis_url: str, bus: Producer, secret: str
) -> None:
    await asyncio.to_thread(redis_server.stop)
    with receiving(secret) as rx:
        settings = WebhookSettings(
            bus=Settings(redis_url=redis_url), endpoints=(hook(rx.url, secret),)
        )
        async with WebhookService(settings) as service:
            runner = asyncio.create_task(service.run())
            await asyncio.sleep(1.0)
            assert not runner.done()
            await asyncio.to_thread(redis_server.start)
            with bus.session("late", total=1) as job:
                job.progress(1)
            assert await asyncio.to_thread(bus.flush, 10)
            await _until(lambda: len(rx.delivered()) == 3, "3 events after Redis came up")
            service.close()
            await asyncio.wait_for(runner, 20 * UNIT_S)
    with redis.Redis.from_url(redis_url) as client:
        assert client.smembers(KEYS.endpoints) == {b"hook"}


async def test_the_endpoints_file_is_reloaded_when_it_changes(
    redis_url: str, bus: Producer, secret: str, tmp_path: Path
) -> None:
    config = tmp_path / "webhooks.toml"
    with receiving(secret) as one, receiving(secret) as two:
        write_endpoints(config, [hook(one.url, secret, "one")])
        settings = WebhookSettings.from_env(
            bus=Settings(redis_url=redis_url), path=config, environ={}, reload_s=0.1
        )
        async with WebhookService(settings) as service:
            runner = asyncio.create_task(service.run())

            def holders() -> list[str]:
                return sorted(s.endpoint.name for s in service.senders if s.holding)

            await _until(lambda: holders() == ["one"], "one delivering")
            write_endpoints(config, [hook(one.url, secret, "one"), hook(two.url, secret, "two")])
            await _until(lambda: holders() == ["one", "two"], "two added")
            with bus.session("a", total=1) as job:
                job.progress(1)
            assert await asyncio.to_thread(bus.flush, 10)
            await _until(lambda: len(one.delivered()) == len(two.delivered()) == 3, "a at both")
            config.write_text("[endpoints.broken\n")  # a bad edit is ignored
            await asyncio.sleep(0.5)
            assert holders() == ["one", "two"]
            write_endpoints(config, [hook(two.url, secret, "two")])
            await _until(lambda: holders() == ["two"], "one removed")
            with bus.session("b", total=1) as job:
                job.progress(1)
            assert await asyncio.to_thread(bus.flush, 10)
            await _until(lambda: len(two.delivered()) == 6, "b at two")
            service.close()
            await asyncio.wait_for(runner, 20 * UNIT_S)
    assert len(one.delivered()) == 3  # nothing of b
