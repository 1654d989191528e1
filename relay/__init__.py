"""The rpa-bus relay: Redis Streams in; WebSocket, Server-Sent Events and an HTTP API out,
with exact replay.

::

    from relay import Relay, RelaySettings

    async with Relay(RelaySettings.from_env()) as relay:
        await relay.serve_forever()

Consumers in Python follow streams with ``Subscription`` (blocking) or
``AsyncSubscription``. The wire protocols are documented for client authors in
docs/protocol.md and docs/http.md.
"""

from __future__ import annotations

from relay._api import ApiContext, add_routes
from relay._auth import Grant, mint_token, verify_token
from relay._client import (
    AsyncSubscription,
    Event,
    Gap,
    Item,
    Live,
    Reset,
    Subscription,
    SubscriptionError,
    Unavailable,
)
from relay._relay import Relay
from relay._settings import ApiLimits, RelaySettings

__all__ = [
    "ApiContext",
    "ApiLimits",
    "AsyncSubscription",
    "Event",
    "Gap",
    "Grant",
    "Item",
    "Live",
    "Relay",
    "RelaySettings",
    "Reset",
    "Subscription",
    "SubscriptionError",
    "Unavailable",
    "add_routes",
    "mint_token",
    "verify_token",
]
