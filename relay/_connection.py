"""One WebSocket client: its ops, its subscriptions and its bounded outbound queue.

Everything sent to a client goes through one FIFO, so frames of one subscription
(``subscribed``, replayed events, ``live``, live events) keep their order. The FIFO is
bounded in frames and bytes:

- live events use ``try_put`` and never wait; a full queue switches the subscription to
  catching up from Redis (see ``relay._hub``), so the relay holds at most the bound;
- replayed events use ``put_replay``, which waits until the queue is under half its bound,
  leaving the other half as headroom for the live subscriptions of the same connection;
- control frames (a handful per subscription or op, and ops are rate limited) go in up to
  twice the byte bound; a client that leaves even that unread is closed with 1008.

Past the relay-wide ``total_queue_bytes`` (all connections), a live event for a connection
that is behind is refused too (it catches up from Redis instead), and a replay holds at
most one frame in the queue.

A frame goes straight to the socket when nothing is queued before it and the transport's
buffer is under ``write_limit`` (nearly always); otherwise it waits in the FIFO, and one
writer task drains the FIFO into ``websocket.send``, which waits while the buffer is full.
A client that takes nothing for ``stall_timeout_s`` is closed with 1013 (try again later)
and resumes from its last id.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay import _frames as F
from relay._auth import Grant, verify_token
from relay._hub import Hub, Stats, Subscription
from rpa_bus import Forbidden, InvalidOffset, InvalidStreamName, parse_offset, parse_stream_name
from rpa_bus.redisio import cancel_and_wait

if TYPE_CHECKING:
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


class Connection:
    """Serves one WebSocket connection until it closes. Implements ``relay._hub.Sink``."""

    def __init__(
        self, ws: ServerConnection, *, hub: Hub, settings: RelaySettings, stats: Stats
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.stats = stats
        self.secret = settings.secret
        self.max_subscriptions = settings.max_subscriptions
        self.max_frames = settings.queue_frames
        self.max_bytes = settings.queue_bytes
        self.max_control_bytes = 2 * settings.queue_bytes
        self.total_bytes = settings.total_queue_bytes
        self._policy_closing = False
        self.low_frames = max(1, settings.queue_frames // 2)
        self.low_bytes = settings.queue_bytes // 2
        self.stall_s = settings.stall_timeout_s
        self.close_timeout_s = settings.close_timeout_s
        self.write_limit = settings.write_limit
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self.subs: dict[str, Subscription] = {}
        self.grant: Grant | None = None
        self._bucket = TokenBucket(settings.ops_per_s, settings.ops_burst)
        self._limited_in_a_row = 0
        # Refused ops per second over the last _FLOOD_WINDOW_S seconds: [second, count].
        self._refusals: collections.deque[list[int]] = collections.deque()
        self._refused_in_window = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._failure: BaseException | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- Sink -----------------------------------------------------------------------------

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` to the socket at once if nothing is queued before it and the
        transport's buffer is under ``write_limit``; else leave it to the writer task.

        This is the fast path for nearly every frame: no task switch, no coroutine. It uses
        ``broadcast`` (websockets' synchronous send) for ONE connection, and only below the
        buffer limit, so it adds no unbounded buffering: above the limit, frames wait in our
        bounded queue and the writer awaits ``send``, which waits for the buffer to drain.
        """
        ws = self.ws
        if self.queue or ws.state is not State.OPEN:
            return False
        if ws.transport.get_write_buffer_size() >= self.write_limit:
            return False
        broadcast((ws,), frame, text=True)
        return True

    def _push(self, frame: bytes) -> None:
        if self._write_now(frame):
            return
        self.queue.append(frame)
        size = len(frame)
        self.queued_bytes += size
        self.stats.queued_frames += 1
        self.stats.queued_bytes += size
        if not self._data.is_set():
            self._data.set()

    def try_put(self, frame: bytes) -> bool:
        if self._write_now(frame):
            return True
        if len(self.queue) >= self.max_frames or self.queued_bytes + len(frame) > self.max_bytes:
            return False
        if self._over_total(len(frame)):
            # Relay-wide bound: this connection is behind (its frame could not go straight
            # to the socket), so it catches up from Redis instead of holding relay memory.
            self.stats.total_bound_switches += 1
            return False
        self._push(frame)
        return True

    def _over_total(self, size: int) -> bool:
        return bool(self.total_bytes) and self.stats.queued_bytes + size > self.total_bytes

    def put_control(self, frame: bytes) -> None:
        """Enqueue a control frame. Control frames count against the byte bound too, with
        headroom: events may fill ``queue_bytes``, control frames up to twice that. A client
        that leaves even that unread (it sends ops and never reads the answers) is closed
        with 1008 instead of growing the queue."""
        if self._write_now(frame):
            return
        if self.queued_bytes + len(frame) > self.max_control_bytes:
            self._close_policy("control frames past the queue bound: read what you are sent")
            return
        self._push(frame)

    def _close_policy(self, reason: str) -> None:
        """Close with 1008 (policy), once."""
        if self._policy_closing:
            return
        self._policy_closing = True
        self.stats.policy_closes += 1
        log.info("closing %s (1008): %s", _peer(self.ws), reason)
        self.spawn(self._close(F.CLOSE_POLICY, reason), "close")

    async def _close(self, code: int, reason: str) -> None:
        """Close with ``code``, bounded: websockets' ``close`` waits for the socket buffer
        to drain before it starts its own timeout, which never happens with a client that
        reads nothing; past ``close_timeout_s`` the TCP connection is dropped instead."""
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError from None  # 3.11: see ``_writer``
            self.ws.transport.abort()

    async def put_replay(self, frame: bytes) -> None:
        if self._write_now(frame):
            return
        while (
            len(self.queue) >= self.low_frames
            or self.queued_bytes >= self.low_bytes
            # Past the relay-wide bound a replay holds at most one frame in the queue.
            or (self.queue and self._over_total(len(frame)))
        ):
            # The writer sets _room when the queue is down to a quarter: replay then refills
            # a quarter of the bound in one go instead of one frame per task switch.
            self._room.clear()
            await self._room.wait()
        self._push(frame)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            self._failure = exc
            self._finish()

    def _finish(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the client leaves, the relay closes, or a bug (re-raised: 1011)."""
        writer = self.spawn(self._writer(), "writer")
        writer.add_done_callback(lambda _: self._finish())
        try:
            await self._query_ops()
            receiver = self.spawn(self._receiver(), "receiver")
            receiver.add_done_callback(lambda _: self._finish())
            await self._finished
        finally:
            await self._shutdown()
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for sub in list(self.subs.values()):
            await self.hub.stop_subscription(sub)
        self.stats.subscriptions -= len(self.subs)
        self.subs.clear()
        await cancel_and_wait(list(self._tasks))
        if self._expiry is not None:  # again: an ``auth`` may have armed it meanwhile
            self._expiry.cancel()
            self._expiry = None
        self.stats.queued_frames -= len(self.queue)
        self.stats.queued_bytes -= self.queued_bytes
        self.queue.clear()
        self.queued_bytes = 0

    async def _writer(self) -> None:
        ws, queue = self.ws, self.queue
        try:
            while True:
                if not queue:
                    self._data.clear()
                    await self._data.wait()
                    continue
                frame = queue.popleft()
                size = len(frame)
                self.queued_bytes -= size
                self.stats.queued_frames -= 1
                self.stats.queued_bytes -= size
                if len(queue) <= self.low_frames // 2 and self.queued_bytes <= self.low_bytes // 2:
                    self._room.set()
                if ws.transport.get_write_buffer_size() < self.write_limit:
                    await ws.send(frame, text=True)  # returns without waiting
                    continue
                try:
                    # The buffer is full: send writes, then waits for it to drain.
                    async with asyncio.timeout(self.stall_s):
                        await ws.send(frame, text=True)
                except TimeoutError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        # 3.11: a cancel landing as the timeout expires surfaces as this.
                        raise asyncio.CancelledError from None
                    self.stats.slow_closes += 1
                    log.info("closing %s: took nothing for %.0f s", _peer(ws), self.stall_s)
                    await self._close(F.CLOSE_TRY_AGAIN, "too slow: resume from your last id")
                    return
        except ConnectionClosed:
            return

    async def _receiver(self) -> None:
        try:
            async for message in self.ws:
                if not self._bucket.take():
                    self._limited(message)
                    continue
                self._limited_in_a_row = 0
                if isinstance(message, bytes):
                    self.put_control(F.error(F.BAD_REQUEST, "frames must be JSON text"))
                    continue
                await self._handle(message)
        except ConnectionClosed:
            return

    def _limited(self, message: str | bytes) -> None:
        self.stats.rate_limited += 1
        self._limited_in_a_row += 1
        if self._limited_in_a_row == 1:
            # One error per burst: a flood must not turn into a flood of error frames.
            self.put_control(F.error(F.RATE_LIMITED, "too many ops; slow down"))
        second = int(time.monotonic())
        slots = self._refusals
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
        request = self.ws.request
        if request is None:
            return
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
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

    async def _auth(self, token: object) -> None:
        """Replace the connection's grant. Every subscription the new grant does not cover
        ends now (``forbidden``); those it covers live until the later of the two expiries.
        A refused token changes nothing: the previous grant and its subscriptions stay."""
        if self.secret is None:
            return  # no secret: auth is off, every token is accepted and ignored
        try:
            grant = verify_token(self.secret, token)
        except Forbidden as exc:
            self.put_control(F.error(F.FORBIDDEN, str(exc)))
            return
        self.grant = grant
        revoked: list[Subscription] = []
        for sub in self.subs.values():
            if grant.allows(sub.name):
                sub.expires_s = max(sub.expires_s or 0.0, grant.expires_s)
            else:
                revoked.append(sub)
        for sub in revoked:
            await self._end(sub, f"new token does not grant {sub.name}")
        self._schedule_expiry()

    async def _end(self, sub: Subscription, message: str) -> None:
        """End ``sub`` for want of a grant: stop it first, so that nothing of it follows
        the ``forbidden`` frame."""
        if self.subs.get(sub.name) is not sub:
            return  # already ended (unsubscribed, replaced, or ended by another path)
        await self._drop(sub)
        self.put_control(F.error(F.FORBIDDEN, message, sub.name))

    def _schedule_expiry(self) -> None:
        """Arm one timer for the earliest expiry among the subscriptions."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        due = [s.expires_s for s in self.subs.values() if s.expires_s is not None]
        if due:
            delay = max(0.0, min(due) - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self.spawn(self._expire_due(), "token-expiry")

    async def _expire_due(self) -> None:
        """End every subscription whose grant has expired, then re-arm for the rest."""
        for sub in list(self.subs.values()):
            # Checked one by one: an ``auth`` landing meanwhile may have extended it.
            if sub.expires_s is not None and sub.expires_s <= time.time():
                await self._end(sub, "token expired")
        self._schedule_expiry()

    async def _subscribe(self, op: dict[str, Any]) -> None:
        raw_name = op.get("stream")
        shown = raw_name[:300] if isinstance(raw_name, str) else None
        try:
            ref = parse_stream_name(raw_name)
        except InvalidStreamName as exc:
            self.put_control(F.error(F.INVALID_STREAM, str(exc), shown))
            return
        name = ref.name
        try:
            offset = parse_offset(op.get("from"))
        except InvalidOffset as exc:
            self.put_control(F.error(F.INVALID_OFFSET, str(exc), name))
            return
        epoch = op.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            self.put_control(F.error(F.BAD_REQUEST, "'epoch' must be a string", name))
            return
        if self.secret is not None:
            if self.grant is None:
                self.put_control(
                    F.error(F.FORBIDDEN, "authentication required: send {\"op\": \"auth\", "
                            "\"token\": ...} or connect with ?token=", name)
                )  # fmt: skip
                return
            if time.time() >= self.grant.expires_s:
                self.put_control(F.error(F.FORBIDDEN, "token expired", name))
                return
            if not self.grant.allows(name):
                self.put_control(F.error(F.FORBIDDEN, f"token does not grant {name}", name))
                return
        old = self.subs.get(name)
        if old is not None:
            await self._drop(old)  # re-subscribing restarts from the new offset
        elif len(self.subs) >= self.max_subscriptions:
            self.put_control(
                F.error(F.TOO_MANY_SUBSCRIPTIONS,
                        f"at most {self.max_subscriptions} subscriptions per connection", name)
            )  # fmt: skip
            return
        sub = Subscription(self, ref)
        self.subs[name] = sub
        self.stats.subscriptions += 1
        if self.grant is not None:
            sub.expires_s = self.grant.expires_s
            self._schedule_expiry()
        from_id = None if offset is None else (offset.ms, offset.seq)
        self.hub.start_subscription(sub, from_id=from_id, epoch=epoch or None)

    async def _unsubscribe(self, op: dict[str, Any]) -> None:
        try:
            name = parse_stream_name(op.get("stream")).name
        except InvalidStreamName as exc:
            self.put_control(F.error(F.INVALID_STREAM, str(exc)))
            return
        sub = self.subs.get(name)
        if sub is None:
            self.put_control(F.error(F.BAD_REQUEST, f"not subscribed to {name}", name))
            return
        await self._drop(sub)

    async def _drop(self, sub: Subscription) -> None:
        if self.subs.get(sub.name) is sub:
            del self.subs[sub.name]
            self.stats.subscriptions -= 1
        await self.hub.stop_subscription(sub)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"
