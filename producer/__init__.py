"""The producer library: a job writes its progress events to the bus.

::

    from producer import Producer
    bus = Producer("redis://localhost:6379/0")        # or Producer.from_env()
    with bus.session("quote-123", job="quote-robot", total=15) as s:    # started
        with s.step(1, "Screen 1: login") as st:       # step start ... end (ok, failed,
            ...                                        # or retried after st.retry())
        s.progress(2, "Tela 2")                        # percent and eta_s computed
        s.log("message", level="warning")              # debug, info, warning, error
        s.artifact("screenshot", "https://host/s1.png")   # a reference, never bytes
        s.emit("estimates", {"plans": [1, 2]})         # a job's own event type
        s.log("message"); s.error("non-fatal")
        s.finish({"premium": 1234.5})                  # or s.fail(exc); an exception
                                                       # escaping the block emits failed
    bus.flush(timeout_s=5.0) -> bool                   # all emitted so far is in Redis?
    bus.close(timeout_s=5.0)                           # drains, bounded; rest -> journal

``AsyncProducer`` / ``AsyncSession``: the same on ``redis.asyncio`` with ``async with``,
``await bus.flush()`` and ``await bus.close()``; emitting stays a plain call.

Lower level, for streams without a session object (the monitor's samples and alerts)::

    bus.publish(stream, event, *, window_s=None) -> None
        stream:   "session:SID" | "sessions" | "monitor:HOST" (or an rpa_bus.StreamRef)
        event:    an envelope mapping; "ts" is filled in when missing
        window_s: monitor streams keep this time window (XADD MINID ~ now - window),
                  default settings.retention_s (24 h)

Guarantees: emitting never blocks on the network and never raises because Redis is slow
or down; events are kept in order (in memory up to ``queue_max``, then in a journal on
disk, fsynced per ``journal_fsync``: ``always``/``everysec``/``no``) until written, also
across a restart of the process (by the next producer writing to the same Redis target
and prefix); no event is written twice, on any stream (idempotent append scripts check a
per-producer sequence number); bad input raises ``rpa_bus.InvalidInput`` subclasses at
once. ``list_journals(spool_dir)`` shows what waits on disk, and for which target. See
docs/producer.md.
"""

from __future__ import annotations

from producer._async import AsyncProducer, AsyncSession, AsyncStep
from producer._core import ProducerClosed
from producer._journal import FSYNC_POLICIES, JournalInfo, list_journals, target_of
from producer._sync import Producer, Session, Step
from rpa_bus.redisio import is_retryable

__all__ = [
    "FSYNC_POLICIES",
    "AsyncProducer",
    "AsyncSession",
    "AsyncStep",
    "JournalInfo",
    "Producer",
    "ProducerClosed",
    "Session",
    "Step",
    "is_retryable",
    "list_journals",
    "target_of",
]
