"""Tokens: HS256 JWTs whose ``streams`` claim lists what a client may read, and whose
``publish`` claim lists what it may append to (``POST /v1/sessions/{SID}/events``).

An entry of either claim is an exact client-facing name (``session:quote-123``,
``sessions``) or a prefix pattern ending in ``*`` (``monitor:*``, ``session:quote-*``, or
``*`` for all). A token carries at least one of the two claims; a missing claim grants
nothing of its kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from rpa_bus import Forbidden, InvalidInput

ALGORITHM = "HS256"


def mint_token(
    secret: str,
    streams: Iterable[str],
    *,
    ttl_s: float,
    publish: Iterable[str] = (),
    now_s: float | None = None,
) -> str:
    """A token granting reads of ``streams`` and appends to ``publish`` (names or
    ``prefix*`` patterns) for ``ttl_s`` seconds."""
    names = list(streams)
    writes = list(publish)
    if not names and not writes:
        raise InvalidInput("a token must grant at least one stream (to read or to publish)")
    if ttl_s <= 0:
        raise InvalidInput(f"ttl_s must be > 0, got {ttl_s}")
    now = time.time() if now_s is None else now_s
    claims: dict[str, object] = {"iat": int(now), "exp": int(now + ttl_s)}
    if names:
        claims["streams"] = names
    if writes:
        claims["publish"] = writes
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows, until ``expires_s`` (Unix time)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    expires_s: float
    publish_exact: frozenset[str] = frozenset()
    publish_prefixes: tuple[str, ...] = ()

    def allows(self, stream: str, now_s: float | None = None) -> bool:
        """Whether the token lets its bearer read ``stream`` now."""
        now = time.time() if now_s is None else now_s
        if now >= self.expires_s:
            return False
        return stream in self.exact or any(stream.startswith(p) for p in self.prefixes)

    def allows_publish(self, stream: str, now_s: float | None = None) -> bool:
        """Whether the token lets its bearer append to ``stream`` now."""
        now = time.time() if now_s is None else now_s
        if now >= self.expires_s:
            return False
        return stream in self.publish_exact or any(
            stream.startswith(p) for p in self.publish_prefixes
        )


def verify_token(secret: str, token: object) -> Grant:
    """Check signature, ``exp`` and the ``streams``/``publish`` claims; raise ``Forbidden``
    if any fails."""
    if not isinstance(token, str) or not token:
        raise Forbidden("token must be a non-empty string")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise Forbidden("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"invalid token: {exc}") from exc
    if "streams" not in claims and "publish" not in claims:
        raise Forbidden('invalid token: Token is missing the "streams" claim')
    streams = _names(claims, "streams")
    publish = _names(claims, "publish")
    return Grant(
        frozenset(s for s in streams if not s.endswith("*")),
        tuple(s[:-1] for s in streams if s.endswith("*")),
        float(claims["exp"]),
        frozenset(s for s in publish if not s.endswith("*")),
        tuple(s[:-1] for s in publish if s.endswith("*")),
    )


def _names(claims: dict[str, object], claim: str) -> list[str]:
    value = claims.get(claim, [])
    # A bare string is refused, not taken as one name: a token minted by hand with
    # "streams": "session:a" would otherwise silently mean what its author may not intend.
    if isinstance(value, str):
        raise Forbidden(
            f"invalid token: {claim!r} must be a JSON list of stream names, got a string "
            f"({value[:64]!r}); mint tokens with `rpa-bus token`"
        )
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise Forbidden(f"invalid token: {claim!r} must be a list of stream names")
    return value
