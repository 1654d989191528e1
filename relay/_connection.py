"""The WebSocket door: one client's ops (subscribe, unsubscribe, auth, ping) over a socket.

Frames go through the client's bounded outbox (``relay._outbox``); grants and
subscriptions are the door's (``relay._door``). The socket is aiohttp's
(``relay._sockets``) or the light door's (``relay._lite``). A client that takes nothing
for ``stall_timeout_s`` is closed with 1013 (try again later) and resumes from its last
id; one that floods ops or leaves control frames unread is closed with 1008; a bug closes
its connection with 1011.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import orjson

from relay import _frames as F
from relay._door import Door, Refusal, check_request, check_stream
from relay._outbox import ClientGone
from relay._sockets import Socket
from relay._stats import Stats

if TYPE_CHECKING:
    from relay._hub import Hub
    from relay._settings import RelaySettings

log = logging.getLogger(__name__)

# A flooding client is closed (1008) when, over the last _FLOOD_WINDOW_S seconds, it had
# _FLOOD_CLOSE_AFTER refused ops, or refused ops in every one of those seconds (it stays
# over the rate, however it spaces them). Counted per second, so neither an op the token
# bucket lets through now and then nor a pause shorter than a second resets the count.
_FLOOD_CLOSE_AFTER = 1000
_FLOOD_WINDOW_S = 10


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Connection(Door):
    """Serves one WebSocket connection until it closes. A ``relay._subscription.Sink``."""

    __slots__ = (
        "_bucket",
        "_closing",
        "_limited_in_a_row",
        "_ops_burst",
        "_ops_per_s",
        "_refusals",
        "_refused_in_window",
        "close_timeout_s",
        "ws",
    )

    def __init__(self, ws: Socket, *, hub: Hub, settings: RelaySettings, stats: Stats) -> None:
        super().__init__(hub=hub, settings=settings, stats=stats)
        self.ws = ws
        self.close_timeout_s = settings.close_timeout_s
        self._ops_per_s = settings.ops_per_s
        self._ops_burst = settings.ops_burst
        self._bucket: TokenBucket | None = None  # made at the first op
        self._limited_in_a_row = 0
        # Refused ops per second over the last _FLOOD_WINDOW_S seconds: [second, count].
        self._refusals: collections.deque[list[int]] | None = None
        self._refused_in_window = 0
        self._closing: asyncio.Task[None] | None = None

    # -- the socket -----------------------------------------------------------------------

    def _write_now(self, frame: bytes) -> bool:
        return self.ws.write_now(frame, self.write_limit)

    async def _send(self, frame: bytes) -> None:
        await self.ws.send(frame)

    async def _stalled(self) -> None:
        log.info("closing %s: took nothing for %.0f s", self.ws.peer, self.stall_s)
        await self._close(F.CLOSE_TRY_AGAIN, "too slow: resume from your last id")

    def _policy_close(self, reason: str) -> None:
        log.info("closing %s (1008): %s", self.ws.peer, reason)
        self.close_soon(F.CLOSE_POLICY, reason)

    def _failed(self, exc: BaseException) -> None:
        self.close_soon(F.CLOSE_INTERNAL, "internal error")

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing with ``code`` (once); the receive loop then ends."""
        if self._closing is None:
            self._closing = self.spawn(self._close(code, reason), "close")

    async def _close(self, code: int, reason: str) -> None:
        """Close with ``code``, bounded: a close may wait for the socket buffer to drain,
        which never happens with a client that reads nothing; past ``close_timeout_s`` the
        TCP connection is dropped instead."""
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError from None  # 3.11: see ``Outbox._drain``
            self.ws.abort()
        except ClientGone:
            return

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> Any:
        """Serve until the client leaves, the relay closes, or a bug (``Socket.finish``
        gets it: aiohttp closes with 1011, websockets re-raises it); returns what
        ``Socket.finish`` returns (aiohttp: the response).

        The opening handshake, the receive loop and the closing all run here: an idle
        connection holds this one coroutine frame of the relay's, no task of its own."""
        ws = self.ws
        try:
            await ws.open()
        except BaseException:
            ws.ended(self)
            raise  # a failed handshake is the server library's to answer
        failure: Exception | None = None
        try:
            try:
                await self._query_ops()
                # No bound methods kept in locals: each would be held for the connection's life.
                while (message := ws.unwrap(await ws.receive_raw())) is not None:
                    if self._failure is not None:
                        break
                    bucket = self._bucket
                    if bucket is None:
                        # Made at the first op: a client that only subscribed at connect
                        # (a dashboard) never holds one.
                        bucket = self._bucket = TokenBucket(self._ops_per_s, self._ops_burst)
                    if not bucket.take():
                        self._limited(message)
                        continue
                    self._limited_in_a_row = 0
                    if isinstance(message, bytes):
                        self.put_control(F.error(F.BAD_REQUEST, "frames must be JSON text"))
                        continue
                    await self._handle(message)
                closing = self._closing
                if closing is not None and not closing.done():
                    # Let our closing handshake finish (it is bounded) before cancelling it.
                    await asyncio.wait([closing])
            finally:
                await self._shutdown()
            if self._failure is not None:
                raise self._failure
        except Exception as exc:
            failure = exc
        finally:
            ws.ended(self)
        return await ws.finish(failure)

    def _limited(self, message: str | bytes) -> None:
        self.stats.rate_limited += 1
        self._limited_in_a_row += 1
        if self._limited_in_a_row == 1:
            # One error per burst: a flood must not turn into a flood of error frames.
            self.put_control(F.error(F.RATE_LIMITED, "too many ops; slow down"))
        second = int(time.monotonic())
        slots = self._refusals
        if slots is None:
            slots = self._refusals = collections.deque()
        if slots and slots[-1][0] == second:
            slots[-1][1] += 1
        else:
            slots.append([second, 1])
        self._refused_in_window += 1
        while second - slots[0][0] >= _FLOOD_WINDOW_S:
            self._refused_in_window -= slots.popleft()[1]
        if self._refused_in_window >= _FLOOD_CLOSE_AFTER or len(slots) == _FLOOD_WINDOW_S:
            self._close_policy("op rate limit exceeded")

    # -- ops ------------------------------------------------------------------------------

    async def _query_ops(self) -> None:
        """``/ws?token=...&stream=...&from=...&epoch=...``: auth and subscribe at connect."""
        raw, self.ws.query = self.ws.query, ""  # read once: not held for the connection's life
        if not raw:
            return
        query = urllib.parse.parse_qs(raw)
        token = query.get("token", [None])[-1]
        if token is not None:
            await self._auth(token)
        streams = query.get("stream")
        if streams:
            await self._subscribe(
                {
                    "stream": streams[-1],
                    "from": query.get("from", [None])[-1],
                    "epoch": query.get("epoch", [None])[-1],
                }
            )

    async def _handle(self, message: str) -> None:
        try:
            op = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            self.put_control(F.error(F.BAD_REQUEST, f"not JSON: {exc}"))
            return
        if not isinstance(op, dict):
            self.put_control(F.error(F.BAD_REQUEST, "a frame must be a JSON object with 'op'"))
            return
        name = op.get("op")
        if name == "subscribe":
            await self._subscribe(op)
        elif name == "unsubscribe":
            await self._unsubscribe(op)
        elif name == "ping":
            self.put_control(F.PONG)
        elif name == "auth":
            await self._auth(op.get("token"))
        elif name is None:
            self.put_control(F.error(F.BAD_REQUEST, "missing 'op'"))
        else:
            self.put_control(
                F.error(F.UNKNOWN_OP, f"unknown op {str(name)[:64]!r}: use subscribe, "
                        "unsubscribe, auth or ping")
            )  # fmt: skip

    async def _subscribe(self, op: dict[str, Any]) -> None:
        try:
            wanted = check_request(op.get("stream"), op.get("from"), op.get("epoch"))
            self.check_grant(wanted.ref.name)
            await self._start(wanted)
        except Refusal as refusal:
            self.put_control(refusal.frame())

    async def _unsubscribe(self, op: dict[str, Any]) -> None:
        try:
            name = check_stream(op.get("stream")).name
        except Refusal as refusal:
            self.put_control(F.error(refusal.code, refusal.message))
            return
        sub = self.subs.get(name)
        if sub is None:
            self.put_control(F.error(F.BAD_REQUEST, f"not subscribed to {name}", name))
            return
        await self._drop(sub)
