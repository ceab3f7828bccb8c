"""``viraltrace consume ...``: the Kafka consumers as commands (mounted by app/cli.py)."""

from __future__ import annotations

import asyncio

import typer

from app.logs import configure_logging
from app.settings import Settings
from consumers.base import install_signal_handlers

consume_app = typer.Typer(help="Run the Kafka consumers.", no_args_is_help=True)


@consume_app.callback()
def _consumers() -> None:
    """Run the Kafka consumers (one command per consumer)."""
    # A callback keeps `sink` a subcommand: typer collapses a one-command app.


@consume_app.command()
def sink() -> None:
    """Write share-events to ClickHouse (events, events_dlq) until SIGTERM/SIGINT."""
    settings = Settings()
    configure_logging(settings.server.log_level)
    from consumers.sink.runner import run_sink

    async def main() -> None:
        stop = asyncio.Event()
        undo = install_signal_handlers(stop)
        try:
            await run_sink(settings, stop)
        finally:
            undo()

    asyncio.run(main())
