"""Alert rules and their hysteresis, as pure code (no I/O, no clock): unit-tested alone.

A rule watches one metric family (``cpu``, ``memory``, ``disk``, ``relay_lag``,
``stalled``, ``replicas``, ``archive_lag``); a family has one value per subject (a mount,
a relay, a session, a master; ``""`` for host-wide and bus-wide metrics). Per subject a
small state machine decides::

    ok --(value > threshold for fire_after samples in a row)--> firing   emits state=firing
    firing --(value < threshold - margin for resolve_after in a row)--> ok   emits resolved
    firing --(subject gone from a measured family)--> ok                 emits resolved

A value between ``threshold - margin`` and ``threshold`` counts towards neither, so a
value hovering at the threshold neither fires nor resolves over and over. A ``below`` rule
watches a floor instead (``replicas``: fewer connected replicas than required): it fires
below ``threshold`` and resolves at ``threshold + margin`` or above.

The firing state survives a restart of the monitor: ``stored()`` turns a firing alert into
one hash field and value, ``from_stored()`` reads it back, and ``AlertBook.restore()``
takes the alerts that were firing without emitting them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import orjson

Severity = Literal["warning", "critical"]
AlertState = Literal["firing", "resolved"]

# Which data key names an alert's subject, per metric family.
SUBJECT_KEYS: Final[dict[str, str]] = {
    "disk": "mount",
    "relay_lag": "relay",
    "stalled": "session",
    "replicas": "master",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """Fire above ``threshold``; resolve below ``threshold - margin``.

    ``below=True`` turns it over: fire below ``threshold``, resolve at ``threshold +
    margin`` or above (a floor on a count, where "at the threshold" is healthy).
    """

    metric: str
    threshold: float
    severity: Severity
    margin: float = 0.0
    fire_after: int = 1
    resolve_after: int = 1
    below: bool = False

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ValueError("fire_after and resolve_after must be >= 1")

    @property
    def resolve_below(self) -> float:
        return self.threshold - self.margin

    def is_bad(self, value: float) -> bool:
        return value < self.threshold if self.below else value > self.threshold

    def is_good(self, value: float) -> bool:
        if self.below:
            return value >= self.threshold + self.margin
        return value < self.resolve_below


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition: what an ``alert`` event carries in ``data``."""

    metric: str
    subject: str
    value: float
    threshold: float
    severity: Severity
    state: AlertState
    # When the alert began firing (the ``ts`` of its firing event); "" if not known.
    since: str = ""
    below: bool = False

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "severity": self.severity,
            "state": self.state,
        }
        key = SUBJECT_KEYS.get(self.metric)
        if key is not None:
            out[key] = self.subject
        return out

    def message(self) -> str:
        where = f" {self.subject}" if self.subject else ""
        if self.state == "firing":
            op = "<" if self.below else ">"
            return f"{self.metric}{where} {self.value:g} {op} {self.threshold:g} ({self.severity})"
        return f"{self.metric}{where} back to {self.value:g} (threshold {self.threshold:g})"


def stored(alert: Alert) -> tuple[str, bytes]:
    """A firing alert as one field and value of the monitor's alerts hash.

    The field is ``metric:subject`` (metric names hold no colon, so it splits back at the
    first one); the value is JSON with what a reader needs without the rules.
    """
    value = {
        "value": alert.value,
        "threshold": alert.threshold,
        "severity": alert.severity,
        "since": alert.since,
    }
    return f"{alert.metric}:{alert.subject}", orjson.dumps(value)


def from_stored(name: bytes | str, value: bytes | str) -> Alert | None:
    """The firing alert of one stored field; None if it is not one (skipped, not fatal:
    the next write replaces the whole hash)."""
    try:
        text = name.decode() if isinstance(name, bytes) else name
        metric, sep, subject = text.partition(":")
        fields = orjson.loads(value)
        severity = fields["severity"]
        if not sep or not metric or severity not in ("warning", "critical"):
            return None
        return Alert(
            metric,
            subject,
            float(fields["value"]),
            float(fields["threshold"]),
            cast(Severity, severity),
            "firing",
            since=str(fields.get("since") or ""),
        )
    except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(slots=True)
class _Track:
    firing: bool = False
    above: int = 0
    below: int = 0
    value: float = 0.0
    since: str = ""


@dataclass(slots=True)
class AlertBook:
    """The hysteresis state of every (metric, subject) under a set of rules."""

    rules: Mapping[str, Rule]
    _tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> AlertBook:
        return cls({rule.metric: rule for rule in rules})

    def is_firing(self, metric: str, subject: str = "") -> bool:
        track = self._tracks.get((metric, subject))
        return track is not None and track.firing

    def firing(self) -> list[tuple[str, str]]:
        """The (metric, subject) pairs currently firing."""
        return [key for key, track in self._tracks.items() if track.firing]

    def current(self) -> list[Alert]:
        """Every alert firing now, with its latest value and when it began."""
        out: list[Alert] = []
        for (metric, subject), track in self._tracks.items():
            rule = self.rules.get(metric)
            if track.firing and rule is not None:
                out.append(self._alert(rule, subject, track.value, "firing", track.since))
        return out

    def restore(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Take back the alerts a previous run left firing; return the transitions.

        A restored alert fires on without a new ``firing`` event. If this run has already
        measured its subject (the monitor sampled while Redis, where the alerts are kept,
        was away), the measurement decides: still bad or in the margin band, it goes on
        firing (since the previous run's ``since``); good, it resolves now (one
        ``resolved`` event, so the firing event of the previous run is not left open).
        Alerts of a rule this run does not have are dropped.
        """
        out: list[Alert] = []
        for alert in alerts:
            rule = self.rules.get(alert.metric)
            if rule is None:
                continue
            key = (alert.metric, alert.subject)
            track = self._tracks.get(key)
            if track is None:
                self._tracks[key] = _Track(
                    firing=True, above=rule.fire_after, value=alert.value, since=alert.since
                )
            elif track.firing:
                track.since = alert.since  # the episode began in the previous run
            elif rule.is_good(track.value):
                out.append(self._alert(rule, alert.subject, track.value, "resolved"))
            else:
                track.firing = True
                track.since = alert.since
        return out

    def observe(self, metric: str, values: Mapping[str, float], *, at: str = "") -> list[Alert]:
        """Feed one sample of a measured family: subject -> value; return the transitions.

        Call it only when the family was measured: a subject missing from ``values`` is
        taken as gone (a session ended, a relay left), so its firing alert resolves. A
        family that could not be read this time is simply not observed. ``at``: the
        sample's ``ts``, kept as the ``since`` of an alert that fires now.
        """
        rule = self.rules.get(metric)
        if rule is None:
            return []
        out: list[Alert] = []
        for subject, value in values.items():
            track = self._tracks.setdefault((metric, subject), _Track())
            track.value = value
            # `above` counts bad samples in a row and `below` good ones, whichever way the
            # rule faces.
            if rule.is_bad(value):
                track.above += 1
                track.below = 0
            elif rule.is_good(value):
                track.below += 1
                track.above = 0
            else:
                track.above = track.below = 0
            if not track.firing and track.above >= rule.fire_after:
                track.firing = True
                track.since = at
                out.append(self._alert(rule, subject, value, "firing", at))
            elif track.firing and track.below >= rule.resolve_after:
                track.firing = False
                out.append(self._alert(rule, subject, value, "resolved"))
        for key in [k for k in self._tracks if k[0] == metric and k[1] not in values]:
            track = self._tracks.pop(key)
            if track.firing:
                out.append(self._alert(rule, key[1], track.value, "resolved"))
        return out

    @staticmethod
    def _alert(rule: Rule, subject: str, value: float, state: AlertState, since: str = "") -> Alert:
        return Alert(
            rule.metric, subject, value, rule.threshold, rule.severity, state, since, rule.below
        )
