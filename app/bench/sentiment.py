"""``viraltrace bench sentiment``: the text scorer's quality, speed and memory (docs/sentiment.md).

One run prints:

* per language of the labelled sets (``tests/data/sentiment/*.jsonl`` by
  default): accuracy, precision and recall of each label, and how often the
  detected language was right (texts with letters only). No language hint is
  given: detection runs among all supported languages, as for a campaign that
  declares none;
* throughput on ONE core (``--cpu``), texts/s, over the same texts cycled:
  with detection, with a two-language campaign hint (ms,id) and with the
  language given (no detection);
* memory: resident set size growth from loading the scorer (VmRSS before
  and after ``default_scorer()``, in this process, before anything else is
  loaded) and tracemalloc's view of the same load.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

BENCH_CPU = 0
DEFAULT_DATA = Path("tests/data/sentiment")


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sentiment(
    data: Annotated[Path, typer.Option(help="directory of labelled *.jsonl sets")] = DEFAULT_DATA,
    seconds: Annotated[float, typer.Option(help="time per throughput measurement")] = 3.0,
    cpu: Annotated[int, typer.Option(help="the core to pin to")] = BENCH_CPU,
    errors: Annotated[bool, typer.Option(help="also list the misclassified texts")] = False,
) -> None:
    """Per-language precision/recall of the text scorer, its texts/s on one core, its memory."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    rss_before = _rss_bytes()
    tracemalloc.start()
    started = time.perf_counter()
    from app.sentiment import default_scorer

    scorer = default_scorer()
    load_seconds = time.perf_counter() - started
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss_after = _rss_bytes()

    from app.sentiment.evaluate import LABELS, evaluate, load_examples

    examples = load_examples(data)
    reports = evaluate(examples, scorer)
    console = Console()
    table = Table(title=f"text scorer on {data} (no language hint)")
    for column in ("lang", "n", "accuracy", "lang id"):
        table.add_column(column, justify="right")
    for label in LABELS:
        table.add_column(f"{label[:3]} P / R", justify="right")
    for lang, report in reports.items():
        cells = [f"{report.labels[lab].precision:.2f} / {report.labels[lab].recall:.2f}"
                 for lab in LABELS]  # fmt: skip
        table.add_row(
            lang, str(report.n), f"{report.accuracy:.2f}", f"{report.lang_accuracy:.2f}", *cells
        )
    console.print(table)
    if errors:
        for lang, report in reports.items():
            for text, expected, predicted in report.errors:
                console.print(f"  {lang}  expected {expected:8} got {predicted:8} {text!r}")

    texts = [e.text for e in examples]
    speed = Table(title=f"throughput, one core (CPU {cpu}), {len(texts)} texts cycled")
    speed.add_column("mode")
    speed.add_column("texts/s", justify="right")
    speed.add_column("µs/text", justify="right")
    modes: tuple[tuple[str, dict[str, object]], ...] = (
        ("language detection", {}),
        ("campaign languages ms,id", {"languages": ("ms", "id")}),
        ("language given (en)", {"lang": "en"}),
    )
    for name, kwargs in modes:
        done = 0
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds:
            for text in texts:
                scorer.score(text, **kwargs)  # type: ignore[arg-type]
            done += len(texts)
        rate = done / (time.perf_counter() - begin)
        speed.add_row(name, f"{rate:,.0f}", f"{1e6 / rate:.0f}")
    console.print(speed)
    mib = 1024 * 1024
    console.print(
        f"memory: loading the scorer took {load_seconds:.2f} s and grew RSS by "
        f"{(rss_after - rss_before) / mib:.1f} MiB (tracemalloc: {traced / mib:.1f} MiB); "
        f"process RSS now {_rss_bytes() / mib:.1f} MiB"
    )
