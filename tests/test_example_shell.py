"""The shell robot (examples/robot.sh): a job in another language, reporting through
``rpa-bus emit``, as docs/robot.md shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rpa_bus.cli._real import examples_dir
from tests.conftest import UNIT_S
from tests.test_example_robot import stream_events


def run_robot(sid: str, redis_url: str, tmp_path: Path, **env: str) -> int:
    directory = examples_dir()
    assert directory is not None
    bin_dir = str(Path(sys.executable).parent)  # where `rpa-bus` is installed
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RPA_BUS_REDIS_URL": redis_url,
        "RPA_BUS_SPOOL_DIR": str(tmp_path / "spool"),
        "SOURCE": str(directory / "quote_site"),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(directory / "robot.sh"), sid],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30 * UNIT_S,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode


def test_shell_robot_reports_each_step(redis_url: str, tmp_path: Path) -> None:
    assert run_robot("shell-ok", redis_url, tmp_path) == 0
    events = stream_events(redis_url, "shell-ok")
    assert [e["type"] for e in events] == [
        "started", "progress", "progress", "archive", "progress", "progress", "finished",
    ]  # fmt: skip
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4]
    assert events[-2]["percent"] == 100.0
    assert events[3]["data"]["sha256"] == events[-1]["data"]["sha256"]
    assert events[-1]["data"]["bytes"] > 0


def test_a_failing_command_fails_the_session(redis_url: str, tmp_path: Path) -> None:
    assert run_robot("shell-bad", redis_url, tmp_path, FAIL_AT="1") == 1
    events = stream_events(redis_url, "shell-bad")
    assert [e["type"] for e in events] == ["started", "failed"]
    assert events[-1]["error"] == "step 1 failed (exit 1): false"
