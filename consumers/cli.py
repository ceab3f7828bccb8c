"""``viraltrace consume ...``: the Kafka consumers as commands (mounted by app/cli.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import typer

from app.logs import configure_logging
from app.settings import Settings
from consumers.base import install_signal_handlers

consume_app = typer.Typer(
    help="Run the Kafka consumers and the webhook notifier.", no_args_is_help=True
)


@consume_app.callback()
def _consumers() -> None:
    """Run the Kafka consumers (one command per consumer)."""
    # A callback keeps `sink` a subcommand: typer collapses a one-command app.


def _run_until_signal(run: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    settings = Settings()
    configure_logging(settings.server.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        undo = install_signal_handlers(stop)
        try:
            await run(settings, stop)
        finally:
            undo()

    asyncio.run(main())


@consume_app.command()
def sink() -> None:
    """Write share-events to ClickHouse (events, events_dlq) until SIGTERM/SIGINT."""
    from consumers.sink.runner import run_sink

    _run_until_signal(run_sink)


@consume_app.command()
def cascades() -> None:
    """Rebuild share cascades live (cascade_nodes, cascade_stats, spread signals)."""
    from consumers.cascades.runner import run_cascades

    _run_until_signal(run_cascades)


@consume_app.command()
def buzz() -> None:
    """Score comments, reactions, reports and captions; publish them to the signals topic."""
    from consumers.alerts.runner import run_alerts

    _run_until_signal(lambda settings, stop: run_alerts(settings, stop, alerts=False))


@consume_app.command()
def alerts() -> None:
    """Buzz windows, alert detection and the webhook outbox, from the signals topic."""
    from consumers.alerts.runner import run_alerts

    _run_until_signal(lambda settings, stop: run_alerts(settings, stop, buzz=False))


@consume_app.command()
def notifier() -> None:
    """Deliver alert webhooks from the outbox (control-plane database), with retries."""
    from consumers.notifier.runner import run_notifier

    _run_until_signal(run_notifier)
