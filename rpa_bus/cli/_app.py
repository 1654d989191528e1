"""The Typer application every command module registers on."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="rpa-bus",
    help="Live, replayable progress events for long-running jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts quote defaults in [brackets]; rich markup would swallow them.
    rich_markup_mode=None,
)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every HTTP request and closed connection at INFO: too chatty for a
    # service log; its warnings and errors still show.
    if not verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)
