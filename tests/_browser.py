"""Browser-test helpers: headless Chromium via Playwright, and a deterministic bus writer.

Chromium is Debian's (``/usr/bin/chromium``); Playwright never downloads a browser here.
``BusWriter`` writes what the producer writes (stream entry, folded state in the meta
hash, the ``sessions`` index entry) synchronously, so a test knows each event's id the
moment it returns and can compare it with what the page shows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from rpa_bus import Keys, encode, make, state_fields

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


def wait_for(
    predicate: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(interval_s)


class BusWriter:
    """Writes session and monitor events straight to Redis, as the producer lays them out.

    Each call is one MULTI/EXEC (the producer uses one script), so the meta hash never
    disagrees with the stream.
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    def session_event(self, sid: str, kind: str, **fields: Any) -> str:
        """Append one event to ``session:SID``; returns its stream id."""
        event = make(kind, **fields)
        key, meta = self.keys.session(sid), self.keys.meta(sid)
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(meta, "epoch", "1")
        pipe.hsetnx(meta, "created", str(int(time.time() * 1000)))
        pipe.xadd(key, {"e": encode(event)})
        pipe.hset(meta, mapping=state_fields(event))
        if kind in ("started", "finished", "failed"):
            index = make(kind, session=sid, ts=event["ts"])
            pipe.xadd(self.keys.sessions, {"e": encode(index)})
        result = pipe.execute()
        entry_id = result[2]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def monitor_event(self, host: str, kind: str, **fields: Any) -> str:
        """Append one ``metrics`` or ``alert`` event to ``monitor:HOST``; returns its id."""
        entry_id = self.client.xadd(self.keys.monitor(host), {"e": encode(make(kind, **fields))})
        self.client.hset(self.keys.monitors, host, str(int(time.time() * 1000)))
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@contextmanager
def chromium_page(base_url: str) -> Iterator[Any]:
    """A fresh headless Chromium page (1440x900) with console errors collected.

    Yields the Playwright ``Page``; ``page.console_errors`` lists the page's console errors
    and uncaught exceptions, which tests assert are empty.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1440, "height": 900}, base_url=base_url
            )
            page = context.new_page()
            errors: list[str] = []
            page.on(
                "console", lambda msg: errors.append(msg.text) if msg.type == "error" else None
            )
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.console_errors = errors
            yield page
        finally:
            browser.close()
