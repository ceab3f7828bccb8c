"""``viraltrace consume ...``: the Kafka consumers as commands (mounted by app/cli.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import typer
from prometheus_client import REGISTRY

from app.logs import configure_logging
from app.settings import Settings
from consumers.base import install_signal_handlers, tune_gc
from consumers.exporter import MetricsEndpointError, serve_consumer_metrics

consume_app = typer.Typer(
    help="Run the Kafka consumers and the webhook notifier.", no_args_is_help=True
)


@consume_app.callback()
def _consumers() -> None:
    """Run the Kafka consumers (one command per consumer)."""
    # A callback keeps `sink` a subcommand: typer collapses a one-command app.


def _run_until_signal(run: Callable[..., Awaitable[None]], **options: Any) -> None:
    """``run(settings, stop, registry=..., **options)`` until SIGTERM/SIGINT, serving
    the registry on the consumer metrics port (consumers/exporter.py).

    The registry is prometheus_client's global one, so a scrape also carries the
    process collectors (memory, CPU, open files) next to the consumer's own metrics."""
    settings = Settings()
    configure_logging(settings.server.log_level)
    tune_gc(settings.consumer)

    async def main() -> None:
        stop = asyncio.Event()
        undo = install_signal_handlers(stop)
        try:
            async with serve_consumer_metrics(settings.consumer, REGISTRY):
                await run(settings, stop, registry=REGISTRY, **options)
        finally:
            undo()

    try:
        asyncio.run(main())
    except MetricsEndpointError as exc:
        typer.echo(f"consume failed: {exc}", err=True)
        raise typer.Exit(1) from exc


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

    _run_until_signal(run_alerts, alerts=False)


@consume_app.command()
def alerts() -> None:
    """Buzz windows, alert detection and the webhook outbox, from the signals topic."""
    from consumers.alerts.runner import run_alerts

    _run_until_signal(run_alerts, buzz=False)


@consume_app.command()
def notifier() -> None:
    """Deliver alert webhooks from the outbox (control-plane database), with retries."""
    from consumers.notifier.runner import run_notifier

    _run_until_signal(run_notifier)
