"""Browser-test helpers: headless Chromium via Playwright, and a deterministic bus writer.

Chromium is Debian's (``/usr/bin/chromium``); Playwright never downloads a browser here.
``BusWriter`` writes what the producer writes (stream entry, folded state in the meta
hash, the ``sessions`` index entry) synchronously, so a test knows each event's id the
moment it returns and can compare it with what the page shows.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from producer import Producer
from rpa_bus import Keys, encode, make, now_ts, state_fields
from tests.conftest import UNIT_S

RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's Chromium, or the one named by ``RPA_BUS_CHROMIUM``; fail with instructions."""
    path = os.environ.get("RPA_BUS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise RuntimeError(
            "browser tests need Chromium: apt-get install -y chromium chromium-driver "
            "(or set RPA_BUS_CHROMIUM to a Chromium binary)"
        )
    return path


class BusWriter:
    """Writes session and monitor events straight to Redis, as the producer lays them out.

    Each call is one MULTI/EXEC (the producer uses one script), so the meta hash never
    disagrees with the stream.
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    def session_event(self, sid: str, kind: str, *, at_ms: int | None = None, **fields: Any) -> str:
        """Append one event to ``session:SID``; returns its stream id.

        ``at_ms`` back-dates the entry (its id, and the sessions index entry's): events
        written in time order across sessions then read as if they had happened then.
        """
        event = make(kind, **fields)
        key, meta = self.keys.session(sid), self.keys.meta(sid)
        entry = "*" if at_ms is None else f"{at_ms}-*"
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(meta, "epoch", "1")
        pipe.hsetnx(meta, "created", str(at_ms or int(time.time() * 1000)))
        pipe.xadd(key, {"e": encode(event)}, id=entry)
        pipe.hset(meta, items=[x for kv in state_fields(event).items() for x in kv])
        if kind in ("started", "finished", "failed"):
            index = make(kind, session=sid, ts=event["ts"])
            pipe.xadd(self.keys.sessions, {"e": encode(index)}, id=entry)
        result = pipe.execute()
        entry_id = result[2]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def monitor_event(
        self, host: str, kind: str, *, at_ms: int | None = None, **fields: Any
    ) -> str:
        """Append one ``metrics`` or ``alert`` event to ``monitor:HOST``; returns its id.

        ``at_ms`` back-dates the entry (its id and ``ts``), to fill a chart's window.
        """
        if at_ms is not None:
            fields.setdefault("ts", now_ts(at_ms / 1000))
        entry_id = self.client.xadd(
            self.keys.monitor(host),
            {"e": encode(make(kind, **fields))},
            id="*" if at_ms is None else f"{at_ms}-*",
        )
        self.client.hset(self.keys.monitors, host, str(int(time.time() * 1000)))
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@contextmanager
def chromium_page(base_url: str) -> Iterator[tuple[Page, list[str]]]:
    """A fresh headless Chromium page (1440x900) and the list of its console errors.

    The list collects the page's ``console.error`` messages and uncaught exceptions as
    they happen, for the tests to assert on.
    """
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1440, "height": 900}, base_url=base_url
            )
            page = context.new_page()
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()


class RelayThread:
    """A real ``relay.Relay`` on 127.0.0.1, run by an event loop in a thread of its own.

    The browser tests are synchronous (Playwright's sync API); the relay is asyncio. The
    first ``start()`` binds a free port; later ones bind the same port again, so a page
    open on it reconnects to the restarted relay.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        port: int = 0,
        secret: str | None = None,
        archive_url: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.port = port
        self.secret = secret
        self.archive_url = archive_url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise AssertionError(f"relay did not start within {timeout_s}s")
        if self._error is not None:
            raise AssertionError(f"relay failed to start: {self._error!r}") from self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every connection with 1012 (service restart) and stop; idempotent."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"relay did not stop within {timeout_s}s")
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from relay import Relay, RelaySettings
        from rpa_bus import Settings

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = RelaySettings(
            bus=Settings(
                redis_url=self.redis_url, secret=self.secret, archive_url=self.archive_url
            ),
            host="127.0.0.1",
            port=self.port,
            name="relay-test",
        )
        try:
            relay = Relay(settings)
            await relay.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self.port = relay.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            relay.close(1012, "relay restarting")
            await relay.wait_closed()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_files(root: Path) -> Iterator[str]:
    """Serve ``root`` over real HTTP on a free loopback port (what a robot's screenshot
    store is to the dashboard); yields the base URL."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def screen_svg(title: str, *, error: str | None = None) -> str:
    """A small picture of a web form, standing in for a robot's screenshot."""
    fields = "".join(
        f'<rect x="24" y="{64 + 30 * i}" width="120" height="8" rx="2" fill="#9aa5b1"/>'
        f'<rect x="160" y="{58 + 30 * i}" width="216" height="20" rx="4" fill="#fff" '
        'stroke="#c9d1da"/>'
        for i in range(4)
    )
    banner = (
        f'<rect x="16" y="186" width="368" height="30" rx="4" fill="#fde2e1"/>'
        f'<text x="28" y="206" font-size="14" fill="#b42318">{error}</text>'
        if error
        else '<rect x="276" y="190" width="100" height="26" rx="5" fill="#1f6feb"/>'
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="240" viewBox="0 0 400 240">'
        '<rect width="400" height="240" fill="#f3f5f8"/>'
        '<rect width="400" height="28" fill="#dfe4ea"/>'
        '<circle cx="14" cy="14" r="5" fill="#f0605a"/>'
        '<circle cx="30" cy="14" r="5" fill="#d9a528"/>'
        f'<text x="24" y="48" font-size="15" font-family="sans-serif" fill="#1f2733">{title}</text>'
        f"{fields}{banner}</svg>"
    )


@contextmanager
def archiver(redis_url: str, archive_url: str, tmp_path: Path) -> Iterator[None]:
    """The real `rpa-bus archiver` (this venv's), reading the test's Redis, until the block
    ends (SIGTERM, then SIGKILL if it does not stop)."""
    env = {**os.environ, "RPA_BUS_REDIS_URL": redis_url, "RPA_BUS_ARCHIVER_BLOCK_MS": "200",
           "XDG_STATE_HOME": str(tmp_path / "state")}  # fmt: skip
    env.pop("RPA_BUS_ARCHIVE_URL", None)
    with (tmp_path / "archiver.log").open("wb") as out:
        proc = subprocess.Popen(
            [RPA_BUS, "archiver", "--archive-url", archive_url], env=env, stdout=out, stderr=out
        )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Fixtures the dashboard's browser tests share (import them into a test module).


@pytest.fixture
def relay(redis_url: str) -> Iterator[RelayThread]:
    r = RelayThread(redis_url)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def producer(redis_url: str, spool_dir: Path) -> Iterator[Producer]:
    p = Producer(redis_url, spool_dir=spool_dir)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        c.close()


def flushed(p: Producer) -> None:
    assert p.flush(timeout_s=5 * UNIT_S), "producer did not write its events in time"
