"""The operator commands through the real console script: demo, sessions, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from monitor import Monitor, MonitorSettings
from rpa_bus import Settings
from rpa_bus.cli._embedded import EmbeddedRedis, free_port

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")


def _run(
    *args: str, url: str, tmp_path: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RPA_BUS_REDIS_URL": url,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    return subprocess.run(
        [RPA_BUS, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def demo_done(redis_url: str, tmp_path: Path) -> str:
    """Three simulated quotes run to their end (fast), one of them failing."""
    run = _run(
        "demo", "--count", "3", "--sessions", "3", "--speed", "50", "--seed", "7",
        url=redis_url, tmp_path=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "demo: 3 quote robots at a time" in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith("demo: ")
    return redis_url


def test_demo_writes_whole_quote_sessions(demo_done: str) -> None:
    client = redis.Redis.from_url(demo_done)
    index = [json.loads(f[b"e"]) for _, f in client.xrange("rpa:sessions")]
    started = [e["session"] for e in index if e["type"] == "started"]
    ended = {e["session"]: e["type"] for e in index if e["type"] in ("finished", "failed")}
    assert len(started) == 3
    assert set(ended) == set(started)
    keys = Settings().keys
    for sid in started:
        events = [json.loads(f[b"e"]) for _, f in client.xrange(keys.session(sid))]
        types = [e["type"] for e in events]
        assert types[0] == "started"
        assert types[-1] == ended[sid]
        assert events[0]["job"] == "quote-demo"
        # Steps: each entered (again after a retried attempt) until it ends ok, in order.
        ends = [e for e in events if e["type"] == "step" and e["phase"] == "end"]
        ok = [e["step"] for e in ends if e["outcome"] == "ok"]
        assert ok == list(range(1, len(ok) + 1))
        for e in ends:
            if e["outcome"] == "retried":
                assert any(
                    x["step"] == e["step"] and x["attempt"] == e["attempt"] + 1 for x in ends
                )
        if ended[sid] == "finished":
            assert ok == list(range(1, 16))
            assert "estimates" in types
        else:
            assert ends[-1]["outcome"] == "failed"
    client.close()


def test_sessions_table_and_json(demo_done: str, tmp_path: Path) -> None:
    table = _run("sessions", url=demo_done, tmp_path=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["SESSION", "STATUS", "STEP", "PERCENT", "AGE", "LAST"]
    assert len(lines) == 4
    as_json = _run("sessions", "--json", url=demo_done, tmp_path=tmp_path)
    rows = json.loads(as_json.stdout)
    assert len(rows) == 3
    for row in rows:
        assert row["status"] in ("finished", "failed")
        assert row["session"].startswith("quote-")
        assert row["age_s"] >= 0
        if row["status"] == "finished":
            assert row["percent"] == 100.0
            assert (row["step"], row["total"]) == (15, 15)
        else:
            assert row["error"]


def test_status_reports_redis_monitors_and_sessions(redis_url: str, tmp_path: Path) -> None:
    bus = Settings(redis_url=redis_url, spool_dir=tmp_path / "spool")
    settings = MonitorSettings(host_name="ops-test", bus=bus, interval_s=0.2)
    with Monitor(settings) as mon:
        thread = threading.Thread(target=mon.run)
        thread.start()
        try:
            client = redis.Redis.from_url(redis_url)
            for _ in range(100):  # wait for the first sample
                if client.hexists("rpa:monitors", "ops-test"):
                    break
                threading.Event().wait(0.05)
            client.close()
            run = _run("status", "--json", url=redis_url, tmp_path=tmp_path)
            fresh = _run(
                "status", "--require-monitor", "ops-test", url=redis_url, tmp_path=tmp_path
            )
            stale = _run(
                "status", "--require-monitor", "elsewhere", url=redis_url, tmp_path=tmp_path
            )
        finally:
            mon.stop()
            thread.join()
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["redis"]["reachable"] is True
    assert report["redis"]["version"]
    (monitor,) = report["monitors"]
    assert monitor["host"] == "ops-test"
    assert monitor["age_s"] < 10
    assert report["active_sessions"] == []
    assert fresh.returncode == 0, fresh.stderr
    assert "monitor   ops-test  last sample" in fresh.stdout
    assert stale.returncode == 1
    assert "monitor 'elsewhere' has no sample" in stale.stderr


def test_status_without_redis_exits_1_with_a_clear_line(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    run = _run("status", url=dead, tmp_path=tmp_path, timeout=30)
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"rpa-bus: Redis at {dead} does not answer")


def test_demo_finds_the_redis_up_announced(tmp_path: Path, server_binary: Path) -> None:
    """No URL given: commands use the Redis a running `up` wrote to its state file."""
    from rpa_bus.cli._local import resolve_redis_url, write_up_state

    with EmbeddedRedis(tmp_path / "r", binary=server_binary, persistent=False) as server:
        env = {"XDG_STATE_HOME": str(tmp_path / "state")}
        write_up_state({"redis_url": server.url}, env)  # this test process plays `up`
        assert resolve_redis_url(None, env) == server.url
        assert resolve_redis_url("redis://other:1/0", env) == "redis://other:1/0"
        run = subprocess.run(
            [RPA_BUS, "demo", "--count", "1", "--speed", "50"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        )
        assert run.returncode == 0, run.stderr
        assert f"writing to {server.url}" in run.stdout
        client = redis.Redis.from_url(server.url)
        assert client.xlen("rpa:sessions") == 2  # started and finished/failed
        client.close()


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["relay", "--help"], "[env RPA_BUS_RELAY_HOST"),
        (["demo", "--help"], "[default: 4; --real: 2]"),
        (["webhooks", "--help"], "[env RPA_BUS_WEBHOOKS_FILE"),
    ],
)
def test_help_texts_keep_their_bracketed_defaults(args: list[str], shown: str) -> None:
    from typer.testing import CliRunner

    from rpa_bus.cli._app import app
    from rpa_bus.cli._commands import register_all

    register_all()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert shown in result.output
