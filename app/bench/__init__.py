"""Rerunnable benchmarks: ``viraltrace bench ...`` (results in docs/benchmarks.md).

Kept light to import: ``app.cli`` imports ``bench`` at start-up, and each
command imports what it measures only when it runs.
"""

from __future__ import annotations

import typer

from app.bench.alerts import alerts as _alerts
from app.bench.cascades import cascades as _cascades
from app.bench.forecast import forecast as _forecast
from app.bench.ingest import ingest as _ingest
from app.bench.pixel import pixel as _pixel
from app.bench.query import query as _query
from app.bench.sentiment import sentiment as _sentiment
from app.bench.sink import latency as _latency
from app.bench.sink import sink as _sink

bench = typer.Typer(help="Benchmarks (rerunnable; see docs/benchmarks.md).", no_args_is_help=True)
bench.command("ingest")(_ingest)
bench.command("pixel")(_pixel)
bench.command("sink")(_sink)
bench.command("latency")(_latency)
bench.command("forecast")(_forecast)
bench.command("cascades")(_cascades)
bench.command("sentiment")(_sentiment)
bench.command("alerts")(_alerts)
bench.command("query")(_query)

__all__ = ["bench"]
