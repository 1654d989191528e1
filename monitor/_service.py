"""The monitor service: sample, evaluate alerts, write; on a drift-free schedule.

Why a thread and not asyncio: every source is a blocking call that returns in
microseconds (psutil reads /proc; the bus probe is three round trips to Redis with tight
timeouts), there is nothing to overlap, and sync redis-py costs less CPU per call than its
asyncio twin, which matters against a budget of a few ms per sample. The network side
that can be slow (writing samples while Redis is down) runs in the producer's flusher
thread, so sampling never waits on it. ``run()`` blocks the calling thread until ``stop()``;
``stop()`` only sets an event, so a signal handler may call it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from monitor._alerts import Alert, AlertBook, Rule, from_stored, stored
from monitor._bus import BusProbe
from monitor._host import HostSampler
from monitor._settings import MonitorSettings
from monitor._writer import ProducerWriter, Writer
from producer import Producer
from rpa_bus import Envelope, make, now_ts
from rpa_bus.redisio import (
    REDIS_FAILURES,
    RateLimitedLog,
    SyncClient,
    close_sync,
    is_retryable,
    sync_client,
)

log = logging.getLogger(__name__)

# At most this many firing alerts are listed in each sample's `alerts.firing` (all of them
# stay in the alerts hash); `alerts.count` says how many fire.
SUMMARY_MAX = 100


def rules_of(settings: MonitorSettings) -> list[Rule]:
    """The alert rules the settings ask for."""
    k = settings.alert_samples
    m = settings.alert_margin
    return [
        Rule("cpu", settings.cpu_warn, "warning", settings.cpu_warn * m, k, k),
        Rule("memory", settings.memory_crit, "critical", settings.memory_crit * m, k, k),
        Rule("disk", settings.disk_crit, "critical", settings.disk_crit * m, k, k),
        Rule("relay_lag", settings.relay_lag_warn, "warning", settings.relay_lag_warn * m, k, k),
        # Entries not archived yet: with the archive on, Redis keeps them (no trim before
        # archive), so a stopped or slow archiver makes Redis grow until this fires.
        Rule(
            "archive_lag",
            settings.archive_lag_warn,
            "warning",
            settings.archive_lag_warn * m,
            k,
            k,
        ),
        # Stall is its own hysteresis: idle time only drops when the session moves.
        Rule("stalled", settings.stall_after_s, "warning"),
        # A floor on a count: fewer online replicas than the producers wait for (WAIT)
        # blocks every write to that master. Only when the deployment asks for replicas.
        *(
            [Rule("replicas", settings.bus.min_replicas, "critical", 0.0, k, k, below=True)]
            if settings.bus.min_replicas > 0
            else []
        ),
    ]


def _probe_client(settings: MonitorSettings) -> SyncClient:
    """The probe's client for any URL form (one server, Sentinel, Cluster)."""
    bus = settings.bus
    # A probe must not hold a sample back much longer than a fraction of the interval;
    # the next sample is the retry, so redis-py does not retry either (the factory sets
    # no retries).
    return sync_client(
        bus.with_(
            connect_timeout_s=min(bus.connect_timeout_s, max(0.05, settings.interval_s / 4)),
            socket_timeout_s=min(bus.socket_timeout_s, max(0.1, settings.interval_s / 2)),
        )
    )


class Monitor:
    """Samples this host and the bus into ``P:monitor:{host}`` every ``interval_s``.

    ::

        with Monitor(settings) as mon:     # settings: MonitorSettings, built by the CLI
            mon.run()                      # until mon.stop() (signal-safe)
        # leaving the block flushes what is buffered (bounded by flush_timeout_s)

    ``client`` is the Redis client the bus probe reads with (default: one built from the
    settings, with timeouts bounded by the interval); ``writer`` takes the events (default:
    a ``ProducerWriter`` on a ``Producer`` of its own, built from ``settings.bus``).
    Injected ones are not closed by ``close()``.
    """

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        client: SyncClient | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.settings = settings
        keys = settings.bus.keys
        self.stream = keys.monitor(settings.host_name)
        self._own_client = client is None
        self._own_writer = writer is None
        if writer is None:
            # Samples never wait for replicas (RPA_BUS_MIN_REPLICAS): the monitor is what
            # reports a master without enough of them, and a writer waiting for those
            # replicas could never say so. A sample lost in a failover is one point of a
            # chart, and the next one follows an interval later.
            writer = ProducerWriter(
                Producer(settings=settings.bus.with_(min_replicas=0)),
                host_name=settings.host_name,
                window_s=settings.window_s,
            )
        self.writer: Writer = writer
        self._host = HostSampler()
        # Built at the first sample when not injected: a Cluster client reads the slot
        # map when built, and a monitor starts (and retries) while Redis is down.
        self._bus = BusProbe(
            client,
            keys,
            connect=None if client is not None else lambda: _probe_client(settings),
            host_name=settings.host_name,
            streams_per_tick=settings.streams_per_tick,
            max_sessions=settings.max_sessions,
            archive_lag_interval_s=settings.archive_lag_interval_s,
        )
        self.alerts = AlertBook.of(rules_of(settings))
        # The firing alerts are kept in Redis (P:monitor:HOST:alerts). Until this run has
        # read what a previous run left there, it must not overwrite it.
        self._restored = False
        self._saved: dict[str, bytes] | None = None
        # Host alerts that fired before the stored ones could be read (Redis was away):
        # announced once Redis answers, unless a previous run announced them already.
        self._held: dict[tuple[str, str], Alert] = {}
        self._stop = threading.Event()
        self._closed = False
        self._seq = 0
        self._down = RateLimitedLog(log)
        self._late = RateLimitedLog(log)
        self.skipped = 0

    def run(self) -> None:
        """Sample every ``interval_s`` on monotonic deadlines until ``stop()``.

        Deadlines are ``start + n * interval``, so time spent sampling never accumulates
        as drift. A sample that overruns its slot skips the deadlines it missed instead
        of catching up in a burst.
        """
        interval = self.settings.interval_s
        start = time.monotonic()
        n = 1
        log.info(
            "monitor %s: sampling every %gs into %s", self.settings.host_name, interval, self.stream
        )
        while not self._stop.wait(max(0.0, start + n * interval - time.monotonic())):
            self.tick()
            n += 1
            late = int((time.monotonic() - start) / interval) + 1 - n
            if late > 0:
                self.skipped += late
                n += late
                self._late.warning("sampling overran its interval: skipped %d sample(s)", late)

    @property
    def seq(self) -> int:
        """How many samples this monitor has taken (the ``seq`` of the last one)."""
        return self._seq

    def stop(self) -> None:
        """Ask ``run()`` to return after the current sample. Safe from a signal handler."""
        self._stop.set()

    def tick(self) -> list[Envelope]:
        """Take one sample now, evaluate the alerts, queue the events; return them."""
        cpu0 = time.thread_time()
        now_s = time.time()
        now_ms = int(now_s * 1000)
        self._seq += 1
        data: dict[str, Any] = {
            "host": self.settings.host_name,
            "interval_s": self.settings.interval_s,
            "seq": self._seq,
        }
        data.update(self._host.sample())
        ts = now_ts(now_s)
        alerts: list[Alert] = []
        try:
            if not self._restored:
                alerts += self._restore_alerts()
            reading = self._bus.probe(
                now_ms=now_ms,
                stall_after_s=self.settings.stall_after_s,
                stalled=[s for m, s in self.alerts.firing() if m == "stalled"],
            )
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise  # WRONGTYPE, a script error, a bad password: a bug or a misconfiguration
            self._down.warning("bus probe failed, sampling the host only: %r", exc)
            data["bus"] = {"reachable": False}
        else:
            self._down.recovered("bus probe works again")
            data["bus"] = reading.health
            alerts += self.alerts.observe("relay_lag", reading.relay_lag, at=ts)
            alerts += self.alerts.observe("stalled", reading.idle_s, at=ts)
            alerts += self.alerts.observe("replicas", reading.replicas, at=ts)
            if reading.archive_lag is not None:
                alerts += self.alerts.observe("archive_lag", reading.archive_lag, at=ts)
        alerts += self._host_alerts(data, ts)
        if not self._restored:
            alerts = self._hold(alerts)
        if data["bus"]["reachable"]:  # else the next sample that reaches Redis writes them
            self._save_alerts()
        data["alerts"] = self._summary()
        data["monitor"]["sample_cpu_ms"] = round((time.thread_time() - cpu0) * 1000, 3)
        events = [make("metrics", ts=ts, data=data)]
        for alert in alerts:
            log.warning("alert %s: %s", alert.state, alert.message())
            events.append(make("alert", ts=ts, message=alert.message(), data=alert.data()))
        for event in events:
            self.writer.write(event)
        return events

    def _host_alerts(self, data: dict[str, Any], ts: str) -> list[Alert]:
        out: list[Alert] = []
        if "percent" in data.get("cpu", {}):
            out += self.alerts.observe("cpu", {"": data["cpu"]["percent"]}, at=ts)
        if "memory" in data:
            out += self.alerts.observe("memory", {"": data["memory"]["percent"]}, at=ts)
        if "disks" in data:
            out += self.alerts.observe(
                "disk", {mount: d["percent"] for mount, d in data["disks"].items()}, at=ts
            )
        return out

    def _restore_alerts(self) -> list[Alert]:
        """Take back what a previous run left firing (raises what the read raises); return
        the transitions, with the held alerts that are news."""
        raw = self._bus.load_alerts()
        kept = [a for a in (from_stored(k, v) for k, v in raw.items()) if a is not None]
        self._restored = True
        self._saved = dict(stored(a) for a in kept) if len(kept) == len(raw) else None
        if kept:
            log.info("monitor %s: %d alert(s) still firing", self.settings.host_name, len(kept))
        out = self.alerts.restore(kept)
        announced = {(a.metric, a.subject) for a in kept}
        out += [
            alert
            for key, alert in self._held.items()
            if key not in announced and self.alerts.is_firing(*key)
        ]
        self._held.clear()
        return out

    def _hold(self, alerts: list[Alert]) -> list[Alert]:
        """Before the stored alerts are read, a host alert that fires may be one a previous
        run announced and left firing: hold it (and drop it if it resolves meanwhile)
        rather than announce it twice. Returns what to announce now."""
        now: list[Alert] = []
        for alert in alerts:
            key = (alert.metric, alert.subject)
            if alert.state == "firing":
                self._held[key] = alert
            elif self._held.pop(key, None) is None:
                now.append(alert)
        return now

    def _save_alerts(self) -> None:
        """Write the firing alerts to their hash when the set changed (or a write failed)."""
        if not self._restored:
            return  # what a previous run left is not read yet: never overwrite it
        fields = dict(stored(a) for a in self.alerts.current())
        # Compare names only: a value changes every sample, the set seldom.
        if self._saved is not None and fields.keys() == self._saved.keys():
            return
        try:
            self._bus.save_alerts(fields)
        except REDIS_FAILURES as exc:
            if not is_retryable(exc):
                raise
            self._down.warning("could not keep the firing alerts in Redis: %r", exc)
            self._saved = None  # write them at the next sample
        else:
            self._saved = fields

    def _summary(self) -> dict[str, Any]:
        """What fires now, in every sample: a reader that joins late learns of alerts that
        began before the history it reads."""
        current = self.alerts.current()
        firing = [a.data() | {"since": a.since} for a in current[:SUMMARY_MAX]]
        return {"count": len(current), "firing": firing}

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every sample taken so far is written (bounded)."""
        return self.writer.flush(self.settings.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self) -> None:
        """Stop, write what is buffered (bounded by ``flush_timeout_s``), release. Idempotent.

        Call it after ``run()`` returned (or from the thread that will not run it again).
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if not self.flush():
            log.warning("monitor closed before every sample was written")
        if self._own_writer:
            self.writer.close()
        probe_client = self._bus.client
        if self._own_client and probe_client is not None:
            close_sync(probe_client)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
