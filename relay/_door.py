"""What every door (WebSocket, SSE) does for one client: its grant, its subscriptions.

A door checks a subscribe request (``check_subscribe``: stream name, offset, epoch, grant),
starts it on the hub's subscription core, ends subscriptions whose grant ends (re-auth,
expiry) with a ``forbidden`` error frame, and stops them all when the client leaves. The
frames go through the door's bounded ``Outbox``; how they reach the wire is the door's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay import _frames as F
from relay._auth import Grant, verify_token
from relay._frames import Id
from relay._outbox import Outbox
from relay._stats import Stats
from relay._subscription import Subscription
from rpa_bus import (
    Forbidden,
    InvalidOffset,
    InvalidStreamName,
    StreamRef,
    parse_offset,
    parse_stream_name,
)

if TYPE_CHECKING:
    from relay._hub import Hub
    from relay._settings import RelaySettings


class Refusal(Exception):
    """A request refused with one of the protocol's error codes."""

    def __init__(self, code: str, message: str, stream: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stream = stream

    def frame(self) -> bytes:
        return F.error(self.code, self.message, self.stream)


@dataclass(frozen=True, slots=True)
class Wanted:
    """A checked subscribe request."""

    ref: StreamRef
    from_id: Id | None  # None: "$", only what comes after the current end
    epoch: str | None


def check_stream(raw_name: object) -> StreamRef:
    shown = raw_name[:300] if isinstance(raw_name, str) else None
    try:
        return parse_stream_name(raw_name)
    except InvalidStreamName as exc:
        raise Refusal(F.INVALID_STREAM, str(exc), shown) from exc


def check_request(stream: object, from_: object, epoch: object) -> Wanted:
    """Stream name, offset and epoch of a subscribe request (``Refusal`` if bad)."""
    ref = check_stream(stream)
    try:
        offset = parse_offset(from_)
    except InvalidOffset as exc:
        raise Refusal(F.INVALID_OFFSET, str(exc), ref.name) from exc
    if epoch is not None and not isinstance(epoch, str):
        raise Refusal(F.BAD_REQUEST, "'epoch' must be a string", ref.name)
    from_id = None if offset is None else (offset.ms, offset.seq)
    return Wanted(ref, from_id, epoch or None)


class Door(Outbox):
    """One client's grant and subscriptions, over its bounded outbox."""

    __slots__ = ("_expiry", "grant", "hub", "max_subscriptions", "secret", "subs")

    def __init__(self, *, hub: Hub, settings: RelaySettings, stats: Stats) -> None:
        super().__init__(settings, stats)
        self.hub = hub
        self.secret = settings.secret
        self.max_subscriptions = settings.max_subscriptions
        self.subs: dict[str, Subscription] = {}
        self.grant: Grant | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- grants ---------------------------------------------------------------------------

    def check_grant(self, name: str) -> None:
        """``Refusal`` unless the client's grant covers ``name`` now (auth on)."""
        if self.secret is None:
            return
        if self.grant is None:
            raise Refusal(
                F.FORBIDDEN,
                'authentication required: send {"op": "auth", "token": ...} or connect '
                "with ?token=",
                name,
            )
        if time.time() >= self.grant.expires_s:
            raise Refusal(F.FORBIDDEN, "token expired", name)
        if not self.grant.allows(name):
            raise Refusal(F.FORBIDDEN, f"token does not grant {name}", name)

    async def _auth(self, token: object) -> None:
        """Replace the client's grant. Every subscription the new grant does not cover
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
        self._ended(sub)

    def _ended(self, sub: Subscription) -> None:
        """A subscription ended for want of a grant (SSE: the stream ends)."""

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

    # -- subscriptions --------------------------------------------------------------------

    async def _start(self, wanted: Wanted) -> None:
        """Start a checked, granted subscription (replacing one to the same stream)."""
        name = wanted.ref.name
        old = self.subs.get(name)
        if old is not None:
            await self._drop(old)  # re-subscribing restarts from the new offset
        elif len(self.subs) >= self.max_subscriptions:
            raise Refusal(
                F.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.max_subscriptions} subscriptions per connection",
                name,
            )
        sub = Subscription(self, wanted.ref)
        self.subs[name] = sub
        self.stats.subscriptions += 1
        if self.grant is not None:
            sub.expires_s = self.grant.expires_s
            self._schedule_expiry()
        self.hub.start_subscription(sub, from_id=wanted.from_id, epoch=wanted.epoch)

    async def _drop(self, sub: Subscription) -> None:
        if self.subs.get(sub.name) is sub:
            del self.subs[sub.name]
            self.stats.subscriptions -= 1
        await self.hub.stop_subscription(sub)

    async def _shutdown(self) -> None:
        """Stop every subscription and task of this client."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for sub in list(self.subs.values()):
            await self.hub.stop_subscription(sub)
        self.stats.subscriptions -= len(self.subs)
        self.subs.clear()
        await self._release()
        if self._expiry is not None:  # again: an ``auth`` may have armed it meanwhile
            self._expiry.cancel()
            self._expiry = None
