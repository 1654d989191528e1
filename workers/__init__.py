"""rpa-bus workers: consumer processes that split the streams' entries through one
consumer group per kind (``P:archiver``, ``P:webhooks``).

Each kind runs as its own service (``rpa-bus archiver``, ``rpa-bus webhooks``); N processes
of a kind share the group, and a dead process's streams and pending entries are taken
over by the others. The loop they share lives in ``rpa_bus.redisio`` (``GroupWorker``).

The archive store the archiver writes lives in ``rpa_bus.archive`` (the relay reads it too).
The webhook sender: ``WebhookService`` (the process), ``Endpoint`` and the endpoints-file
helpers, ``Deliverer`` (one signed POST), and the Redis-side operator actions.
"""

from __future__ import annotations

from workers._admin import (
    DeadLetter,
    EndpointStatus,
    dead_letters,
    endpoint_status,
    pause,
    replay,
    resume,
)
from workers._archive import (
    EXPIRE_LUA,
    TRIM_CAP,
    TRIM_LUA,
    Archiver,
    ArchiverSettings,
    ArchiverStats,
    ArchiveSink,
    tune_gc,
)
from workers._deliver import Attempt, Deliverer, sign_headers
from workers._endpoints import (
    Endpoint,
    add_endpoint,
    load_endpoints,
    new_secret,
    parse_endpoints,
    remove_endpoint,
    write_endpoints,
)
from workers._outbox import SenderSettings, WebhookKeys, webhook_id
from workers._safety import AddressRefused, refusal
from workers._webhooks import WebhookService, WebhookSettings

__all__ = [
    "EXPIRE_LUA",
    "TRIM_CAP",
    "TRIM_LUA",
    "AddressRefused",
    "ArchiveSink",
    "Archiver",
    "ArchiverSettings",
    "ArchiverStats",
    "Attempt",
    "DeadLetter",
    "Deliverer",
    "Endpoint",
    "EndpointStatus",
    "SenderSettings",
    "WebhookKeys",
    "WebhookService",
    "WebhookSettings",
    "add_endpoint",
    "dead_letters",
    "endpoint_status",
    "load_endpoints",
    "new_secret",
    "parse_endpoints",
    "pause",
    "refusal",
    "remove_endpoint",
    "replay",
    "resume",
    "sign_headers",
    "tune_gc",
    "webhook_id",
    "write_endpoints",
]
