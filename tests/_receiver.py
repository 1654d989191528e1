"""A real webhook receiver on 127.0.0.1 for the tests: aiohttp.web in a thread of its own.

It verifies every request with the Standard Webhooks package (as a receiver would),
deduplicates by ``webhook-id``, and answers what the test's ``respond`` says (a status,
or ``HANG`` to keep the request open until the client gives up).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests._wait import wait_for
from tests.conftest import UNIT_S

HANG = -1
# What `respond` returns: a status, or a status and extra response headers (and a body).
Answer = int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    body: bytes
    verified: bool
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    secret: str
    respond: Callable[[Received, int], Answer] = lambda r, n: 200
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    by_id: dict[str, Received] = field(default_factory=dict)  # first verified copy per id
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        got = Received(
            webhook_id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            body=body,
            verified=verified,
            at=time.time(),
        )
        with self.lock:
            self.requests.append(got)
            n = self.counts.get(got.webhook_id, 0) + 1
            self.counts[got.webhook_id] = n
        if not verified:
            return web.Response(status=401, text="bad signature")
        answer = self.respond(got, n)
        if isinstance(answer, int):
            answer = (answer, {})
        status, extra = answer[0], answer[1]
        text = answer[2] if len(answer) > 2 else (b"ok" if status < 300 else b"no")  # type: ignore[misc]
        if status == HANG:
            await asyncio.sleep(3600)
        if 200 <= status < 300:
            with self.lock:
                self.by_id.setdefault(got.webhook_id, got)
        return web.Response(status=status, body=text, headers=extra)

    def delivered(self) -> list[Received]:
        """Verified, accepted, one per webhook-id, in arrival order."""
        with self.lock:
            return sorted(self.by_id.values(), key=lambda r: r.at)

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
        wait_for(check, what=what or "the condition", timeout_s=timeout_s)


@contextmanager
def receiving(
    secret: str, respond: Callable[[Received, int], Answer] | None = None
) -> Iterator[Receiver]:
    """A receiver at ``receiver.url`` (http://127.0.0.1:PORT/hook) until the block ends."""
    receiver = Receiver(secret) if respond is None else Receiver(secret, respond)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    runner: web.AppRunner | None = None

    async def main() -> None:
        nonlocal stop, runner
        stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10 * UNIT_S), "receiver did not start"
    try:
        yield receiver
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10 * UNIT_S)
        loop.close()
