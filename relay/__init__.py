"""The rpa-bus relay: Redis Streams in, WebSocket out, with exact replay.

::

    from relay import Relay, RelaySettings

    async with Relay(RelaySettings.from_env()) as relay:
        await relay.serve_forever()

The wire protocol is documented for client authors in docs/protocol.md.
"""

from __future__ import annotations

from relay._auth import Grant, mint_token, verify_token
from relay._relay import Relay
from relay._settings import RelaySettings
from relay._tail import TailError, tail

__all__ = [
    "Grant",
    "Relay",
    "RelaySettings",
    "TailError",
    "mint_token",
    "tail",
    "verify_token",
]
