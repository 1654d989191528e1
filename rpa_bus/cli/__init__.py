"""The ``rpa-bus`` command: the bus's front door. Nothing else imports it.

Each command lives in its own module and registers itself on the Typer app when
``main()`` runs; importing this package stays cheap (the test suite imports the embedded
server launcher from it).
"""

from __future__ import annotations


def main() -> None:
    from rpa_bus.cli._app import app
    from rpa_bus.cli._commands import register_all

    register_all()
    app()


__all__ = ["main"]
