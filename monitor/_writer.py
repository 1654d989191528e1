"""Where samples go: a small ``Writer`` protocol, served by the producer library.

The monitor never blocks a sample on Redis: it hands each event to a writer, which owns
the network. The default, ``ProducerWriter``, publishes through ``producer.Producer`` and
so inherits its outage tolerance: events wait in memory, then in a journal on disk, in
order, and are written when Redis returns, also after the monitor restarts.
"""

from __future__ import annotations

from typing import Protocol

from producer import Producer
from rpa_bus import Envelope


class Writer(Protocol):
    """What the monitor needs from whatever writes its stream."""

    def write(self, envelope: Envelope) -> None:
        """Queue one event; never blocks on the network, never raises for an outage."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is written; ``False`` if ``timeout_s`` ran out."""

    def close(self) -> None:
        """Stop writing; what is still queued is kept if the writer can (the journal)."""


class ProducerWriter:
    """Publishes to ``monitor:HOST`` through a ``Producer``, keeping a time window."""

    def __init__(
        self, producer: Producer, *, host_name: str, window_s: float, owned: bool = True
    ) -> None:
        self.producer = producer
        self._stream = f"monitor:{host_name}"
        self._window_s = window_s
        self._owned = owned

    def write(self, envelope: Envelope) -> None:
        self.producer.publish(self._stream, envelope, window_s=self._window_s)

    def flush(self, timeout_s: float) -> bool:
        return self.producer.flush(timeout_s)

    def close(self) -> None:
        # The monitor flushed (bounded) already; what is left goes to the journal.
        if self._owned:
            self.producer.close(timeout_s=1.0)
