"""rpa-bus workers: consumer processes that split the streams' entries through one
consumer group per kind (``P:archiver``, ``P:webhooks``).

Each kind runs as its own service (``rpa-bus archiver``, ``rpa-bus webhooks``); N processes
of a kind share the group, and a dead process's streams and pending entries are taken
over by the others. The loop they share lives in ``rpa_bus.redisio`` (``GroupWorker``).
"""

from __future__ import annotations

__all__: list[str] = []
