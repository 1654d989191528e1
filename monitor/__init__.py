"""The metrics service: samples the host (psutil) and the bus (Redis) into its stream.

``Monitor`` writes ``metrics`` and ``alert`` events to ``P:monitor:{host}``; see
docs/monitor.md for the sample's fields, the alerts and their settings.
"""

from __future__ import annotations

from monitor._alerts import Alert, AlertBook, Rule
from monitor._service import Monitor, rules_of
from monitor._settings import MonitorSettings
from monitor._writer import ProducerWriter, Writer

__all__ = [
    "Alert",
    "AlertBook",
    "Monitor",
    "MonitorSettings",
    "ProducerWriter",
    "Rule",
    "Writer",
    "rules_of",
]
