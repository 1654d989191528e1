"""Imports every command module so each registers itself on the app."""

from __future__ import annotations

import importlib

# One module per command family; each does ``@app.command()`` at import time.
_MODULES = ("rpa_bus.cli._emit",)


def register_all() -> None:
    for name in _MODULES:
        importlib.import_module(name)
