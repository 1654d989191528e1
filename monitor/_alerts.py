"""Alert rules and their hysteresis, as pure code (no I/O, no clock): unit-tested alone.

A rule watches one metric family (``cpu``, ``memory``, ``disk``, ``relay_lag``,
``stalled``); a family has one value per subject (a mount, a relay, a session; ``""`` for
host-wide metrics). Per subject a small state machine decides::

    ok --(value > threshold for fire_after samples in a row)--> firing   emits state=firing
    firing --(value < threshold - margin for resolve_after in a row)--> ok   emits resolved
    firing --(subject gone from a measured family)--> ok                 emits resolved

A value between ``threshold - margin`` and ``threshold`` counts towards neither, so a
value hovering at the threshold neither fires nor resolves over and over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Severity = Literal["warning", "critical"]
AlertState = Literal["firing", "resolved"]

# Which data key names an alert's subject, per metric family.
SUBJECT_KEYS: Final[dict[str, str]] = {"disk": "mount", "relay_lag": "relay", "stalled": "session"}


@dataclass(frozen=True, slots=True)
class Rule:
    """Fire above ``threshold``; resolve below ``threshold - margin``."""

    metric: str
    threshold: float
    severity: Severity
    margin: float = 0.0
    fire_after: int = 1
    resolve_after: int = 1

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ValueError("fire_after and resolve_after must be >= 1")

    @property
    def resolve_below(self) -> float:
        return self.threshold - self.margin


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition: what an ``alert`` event carries in ``data``."""

    metric: str
    subject: str
    value: float
    threshold: float
    severity: Severity
    state: AlertState

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
            return f"{self.metric}{where} {self.value:g} > {self.threshold:g} ({self.severity})"
        return f"{self.metric}{where} back to {self.value:g} (threshold {self.threshold:g})"


@dataclass(slots=True)
class _Track:
    firing: bool = False
    above: int = 0
    below: int = 0
    value: float = 0.0


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

    def observe(self, metric: str, values: Mapping[str, float]) -> list[Alert]:
        """Feed one sample of a measured family: subject -> value; return the transitions.

        Call it only when the family was measured: a subject missing from ``values`` is
        taken as gone (a session ended, a relay left), so its firing alert resolves. A
        family that could not be read this time is simply not observed.
        """
        rule = self.rules.get(metric)
        if rule is None:
            return []
        out: list[Alert] = []
        for subject, value in values.items():
            track = self._tracks.setdefault((metric, subject), _Track())
            track.value = value
            if value > rule.threshold:
                track.above += 1
                track.below = 0
            elif value < rule.resolve_below:
                track.below += 1
                track.above = 0
            else:
                track.above = track.below = 0
            if not track.firing and track.above >= rule.fire_after:
                track.firing = True
                out.append(self._alert(rule, subject, value, "firing"))
            elif track.firing and track.below >= rule.resolve_after:
                track.firing = False
                out.append(self._alert(rule, subject, value, "resolved"))
        for key in [k for k in self._tracks if k[0] == metric and k[1] not in values]:
            track = self._tracks.pop(key)
            if track.firing:
                out.append(self._alert(rule, key[1], track.value, "resolved"))
        return out

    @staticmethod
    def _alert(rule: Rule, subject: str, value: float, state: AlertState) -> Alert:
        return Alert(rule.metric, subject, value, rule.threshold, rule.severity, state)
