"""``viraltrace bench alerts``: how often buzz detection cries wolf, and how fast it
finds a real spike (results: docs/benchmarks.md, docs/alerts.md).

Simulated comment streams (``consumers.alerts.detect`` fed directly, no I/O):
each item's time is uniform within its minute (sorted, as they arrive), its
label negative with probability ``--share``. *Flat* streams run for
``--hours`` each and count every ``buzz.negative_spike`` opened (all false).
*Spike* streams run ``--warm-min`` calm minutes, then two minutes at
``--spike-share``, and report the event-time delay from the spike's start to
the alert (misses count as no alert within the two minutes). Every variant
runs on the same seeds, side by side in one run.
"""

from __future__ import annotations

import random
import statistics
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.settings import AlertSettings


def _stream(
    cfg: AlertSettings, rate: int, minutes: int, share: float, spike_at: int | None,
    spike_share: float, seed: int,
) -> list[float]:  # fmt: skip
    """Seconds from the spike's start (or the stream's) to each negative-spike opening."""
    from consumers.alerts.detect import MINUTE_MS, BuzzItem, CampaignBuzz, Label
    from consumers.alerts.rules import default_rules

    rng = random.Random(seed)
    state = CampaignBuzz(
        "bench", halflife_min=cfg.baseline_halflife_min,
        out_of_order_ms=int(cfg.out_of_order_s * 1000),
        max_lateness_ms=int(cfg.max_lateness_s * 1000), warmup_min=cfg.warmup_min,
        keep_min=max(1, round(cfg.window_s / 60)),
    )  # fmt: skip
    rules = default_rules(cfg)
    start = 1_790_000_040_000 // MINUTE_MS * MINUTE_MS
    origin = start + (spike_at or 0) * MINUTE_MS
    opened: list[float] = []
    for minute in range(minutes):
        spiking = spike_at is not None and spike_at <= minute < spike_at + 2
        p = spike_share if spiking else share
        for offset in sorted(rng.randrange(MINUTE_MS) for _ in range(rate)):
            ts = start + minute * MINUTE_MS + offset
            label: Label = "negative" if rng.random() < p else "neutral"
            item = BuzzItem("", "bench", "comment", None, None, None, ts, ts, label, 0.0,
                            "en", (), "")  # fmt: skip
            for t in state.add(item, rules):
                if t.kind == "buzz.negative_spike" and t.state == "open":
                    opened.append((t.opened_at - origin) / 1000)
    return opened


def alerts(
    hours: Annotated[int, typer.Option(help="hours per flat stream")] = 10,
    rates: Annotated[str, typer.Option(help="items per minute, comma-separated")] = "30,100",
    seeds: Annotated[int, typer.Option(help="streams per rate and variant")] = 3,
    share: Annotated[float, typer.Option(help="usual negative share")] = 0.1,
    spike_share: Annotated[float, typer.Option(help="negative share during the spike")] = 0.75,
    warm_min: Annotated[int, typer.Option(help="calm minutes before the spike")] = 30,
) -> None:
    """False negative-spike alerts per 100 stream-hours and detection delay, per variant."""
    per_minute = [int(r) for r in rates.split(",") if r.strip()]
    defaults = AlertSettings()
    variants = {
        "default (z 4, 2 min)": defaults,
        "z 3, 2 min": AlertSettings(z_open=3.0, z_resolve=1.5),
        "z 4, 5 min": AlertSettings(window_s=300),
        "z 3, 1 min": AlertSettings(z_open=3.0, z_resolve=1.5, window_s=60),
    }
    table = Table(title="buzz.negative_spike on simulated streams")
    for column in ("variant", "false alerts / 100 h", "delay median s", "delay max s", "missed"):
        table.add_column(column, justify="right")
    for name, cfg in variants.items():
        false = sum(
            len(_stream(cfg, rate, hours * 60, share, None, spike_share, seed))
            for rate in per_minute
            for seed in range(seeds)
        )
        delays: list[float] = []
        missed = 0
        for rate in per_minute:
            for seed in range(seeds):
                found = [d for d in _stream(cfg, rate, warm_min + 3, share, warm_min,
                                            spike_share, 1000 + seed) if 0 <= d < 120]  # fmt: skip
                if found:
                    delays.append(found[0])
                else:
                    missed += 1
        stream_hours = hours * len(per_minute) * seeds
        table.add_row(
            name,
            f"{100 * false / stream_hours:.1f}",
            f"{statistics.median(delays):.1f}" if delays else "-",
            f"{max(delays):.1f}" if delays else "-",
            f"{missed}/{len(per_minute) * seeds}",
        )
    Console().print(table)
    typer.echo(f"rates {per_minute}/min, share {share}, spike {spike_share}, seeds {seeds}")
