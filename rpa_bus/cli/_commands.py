"""Imports every command module so each registers itself on the app."""

from __future__ import annotations

import importlib

# One module per command family; each does ``@app.command()`` at import time.
_MODULES = (
    "rpa_bus.cli._emit",  # emit (producer)
    "rpa_bus.cli._relay",  # relay, token, tail, bench (relay)
    "rpa_bus.cli._monitor",  # monitor (monitor)
    "rpa_bus.cli._up",  # up, demo, status, sessions (newcomer and operator)
    "rpa_bus.cli._archiver",  # archiver, archiver prune (workers)
    "rpa_bus.cli._webhooks",  # webhooks and its subcommands (workers)
)


def register_all() -> None:
    for name in _MODULES:
        importlib.import_module(name)
