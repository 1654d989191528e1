"""`rpa-bus relay` / `rpa-bus up` as operators run them: a subprocess, watched through its
/healthz, stopped with SIGTERM (and it must exit 0)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import UNIT_S

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def health(self) -> dict[str, Any]:
        """/healthz's body, 200 or 503 alike; {} while nothing answers."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/healthz")
        try:
            with urllib.request.urlopen(request, timeout=5 * UNIT_S) as response:
                body: dict[str, Any] = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = orjson.loads(exc.read())
        except OSError:
            body = {}
        return body

    def wait_healthy(self, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s * UNIT_S
        while True:
            body = self.health()
            if body.get("status") == "ok":
                return body
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"not healthy: {body}\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def running_service(
    args: list[str], *, port: int, folder: Path, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """Start ``rpa-bus ARGS``, wait until /healthz says ok, yield; then SIGTERM it and
    assert it exits 0. Its output goes to a log file in ``folder`` (quoted on failure);
    ``XDG_STATE_HOME`` is ``folder``, so an ``up`` leaves nothing in the real state dir."""
    log = folder / f"{args[0]}-{port}.log"
    base = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": os.environ.get("HOME", "/tmp"),
        "XDG_STATE_HOME": str(folder),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RPA_BUS, *args], env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(proc, port, log)
    try:
        service.wait_healthy()
        yield service
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15 * UNIT_S) == 0, service.output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
