"""Tokens: HS256 JWTs whose ``streams`` claim lists what a client may subscribe to.

A ``streams`` entry is an exact client-facing name (``session:quote-123``, ``sessions``) or
a prefix pattern ending in ``*`` (``monitor:*``, ``session:quote-*``, or ``*`` for all).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from rpa_bus import Forbidden, InvalidInput

ALGORITHM = "HS256"


def mint_token(
    secret: str, streams: Iterable[str], *, ttl_s: float, now_s: float | None = None
) -> str:
    """A token granting ``streams`` (names or ``prefix*`` patterns) for ``ttl_s`` seconds."""
    names = list(streams)
    if not names:
        raise InvalidInput("a token must grant at least one stream")
    if ttl_s <= 0:
        raise InvalidInput(f"ttl_s must be > 0, got {ttl_s}")
    now = time.time() if now_s is None else now_s
    claims = {"streams": names, "iat": int(now), "exp": int(now + ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows, until ``expires_s`` (Unix time)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    expires_s: float

    def allows(self, stream: str, now_s: float | None = None) -> bool:
        now = time.time() if now_s is None else now_s
        if now >= self.expires_s:
            return False
        return stream in self.exact or any(stream.startswith(p) for p in self.prefixes)


def verify_token(secret: str, token: object) -> Grant:
    """Check signature, ``exp`` and the ``streams`` claim; raise ``Forbidden`` if any fails."""
    if not isinstance(token, str) or not token:
        raise Forbidden("token must be a non-empty string")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "streams"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise Forbidden("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"invalid token: {exc}") from exc
    streams = claims.get("streams")
    # A bare string is refused, not taken as one name: a token minted by hand with
    # "streams": "session:a" would otherwise silently mean what its author may not intend.
    if isinstance(streams, str):
        raise Forbidden(
            "invalid token: 'streams' must be a JSON list of stream names, got a string "
            f"({streams[:64]!r}); mint tokens with `rpa-bus token`"
        )
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise Forbidden("invalid token: 'streams' must be a list of stream names")
    exact = frozenset(s for s in streams if not s.endswith("*"))
    prefixes = tuple(s[:-1] for s in streams if s.endswith("*"))
    return Grant(exact, prefixes, float(claims["exp"]))
