"""Rerunnable benchmarks: ``viraltrace bench ...`` (results in docs/benchmarks.md).

Kept light to import: ``app.cli`` imports ``bench`` at start-up, and each
command imports what it measures only when it runs.
"""

from __future__ import annotations

import typer

from app.bench.ingest import ingest as _ingest

bench = typer.Typer(
    help="Benchmarks (rerunnable; see docs/benchmarks.md).", no_args_is_help=True
)
bench.command("ingest")(_ingest)

__all__ = ["bench"]
