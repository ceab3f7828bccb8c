"""``viraltrace bench cascades``: the cascades consumer's processing step on ONE core.

One run measures, side by side:

* ``mix``: ``CascadesPipeline.process`` (decode + apply) over a realistic
  campaign's records, events/s: simulated cascades (consumers/cascades/
  simulation.py), two token clicks or views per share, and one view without
  a token (skipped from its key) per share;
* ``1k`` and ``1M``: ``process`` on share records of 1,000-node cascades
  (200,000 events in all) and of one 1,000,000-node cascade, same tree
  model (a random recursive tree: each new node under a uniformly chosen
  earlier node, mean depth ~ ln n),
  ns/event, so the growth of the per-event cost with cascade size shows;
* ``memory``: tracemalloc's traced bytes of the 1,000,000-node cascade's
  state divided by its nodes.

The records are encoded before timing; the clock covers only ``process``.
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
import uuid
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # app.cli imports the benchmarks at start-up: keep it light
    from app.bus.memory import MemoryRecord

BENCH_CPU = 0


def _record(key: bytes, value: bytes, offset: int) -> MemoryRecord:
    from app.bus.memory import MemoryRecord

    return MemoryRecord("share-events", 0, offset, 0, key, value)


def _event(kind: str, campaign: str, root: int, node: int, ts: int, **extra: object) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "v": 1, "event_id": str(uuid.uuid4()), "type": kind, "campaign": campaign,
            "ts": ts, "received_at": ts + 40, "source": "api", "token": None,
            "root": f"{root:016x}", "node": f"{node:016x}", "parent": None, "depth": None,
            "channel": None, "url": None, "text": None, "value": None, "reaction": None,
            "preview_of": None, "visitor": f"{random.getrandbits(63) | 1:016x}",
            "country": None, "bot": False, "browser": None, "os": None, "device": None,
            "privacy": None, **extra,
        }
    )  # fmt: skip


def campaign_records(n: int, seed: int = 1) -> list[MemoryRecord]:
    """About ``n`` records of one simulated campaign, in time order."""
    from consumers.cascades.simulation import simulate_campaign

    rng = random.Random(seed)
    random.seed(seed)
    start = time.time_ns() // 1_000_000 - 86_400_000
    cascades = simulate_campaign(
        rng, cascades=max(1, n // 40), r=0.9, tau_s=1800, start_ms=start, span_s=86_400,
        max_size=20_000,
    )  # fmt: skip
    timed: list[tuple[int, bytes, bytes]] = []
    for cascade in cascades:
        root = cascade[0].node
        key = f"{root:016x}".encode()
        for share in cascade:
            parent = None if share.parent is None else f"{share.parent:016x}"
            timed.append((share.ts_ms, key, _event(
                "share", "bench", root, share.node, share.ts_ms, parent=parent,
                depth=share.depth, channel=share.channel,
            )))  # fmt: skip
            for kind in ("click", "view"):
                ts = share.ts_ms + rng.randrange(1, 600_000)
                timed.append((ts, key, _event(kind, "bench", root, share.node, ts)))
            timed.append((share.ts_ms, b"campaign:bench", b"{}"))
            if len(timed) >= n:
                break
        if len(timed) >= n:
            break
    timed.sort(key=lambda item: item[0])
    return [_record(key, value, i) for i, (_, key, value) in enumerate(timed)]


def tree_records(n: int, seed: int) -> tuple[list[MemoryRecord], float]:
    """Share records of one random recursive tree of ``n`` nodes (parents first),
    and its mean node depth."""
    rng = random.Random(seed)
    ids = [rng.getrandbits(63) | 1 for _ in range(n)]
    depth = [0] * n
    root = ids[0]
    key = f"{root:016x}".encode()
    start = time.time_ns() // 1_000_000 - 86_400_000
    records = []
    for i in range(n):
        parent = rng.randrange(i) if i else -1
        if i:
            depth[i] = depth[parent] + 1
        records.append(_record(key, _event(
            "share", "bench", root, ids[i], start + i, depth=depth[i],
            parent=f"{ids[parent]:016x}" if i else None, channel="x",
        ), i))  # fmt: skip
    return records, sum(depth) / n


def _time_process(records: list[MemoryRecord]) -> float:
    """Seconds for ``process`` over every record (a fresh pipeline)."""
    from app.settings import CascadeSettings
    from consumers.cascades.pipeline import CascadesPipeline

    pipeline = CascadesPipeline(CascadeSettings())
    process = pipeline.process
    gc.collect()
    started = time.perf_counter()
    for record in records:
        process(record)
    return time.perf_counter() - started


def cascades(
    events: Annotated[int, typer.Option(help="records in the campaign mix")] = 300_000,
    big: Annotated[int, typer.Option(help="nodes of the large cascade")] = 1_000_000,
    small: Annotated[int, typer.Option(help="nodes of the small cascade")] = 1_000,
    small_events: Annotated[int, typer.Option(help="events over the small cascades")] = 200_000,
    rounds: Annotated[int, typer.Option(help="alternating rounds")] = 3,
    cpu: Annotated[int, typer.Option(help="the core to pin to")] = BENCH_CPU,
) -> None:
    """The cascades consumer's processing step: events/s, ns/event by cascade size, bytes/node."""
    console = Console()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    console.print(f"encoding {events:,} mix records, {big:,} + {small:,}×k tree records ...")
    mix = campaign_records(events)
    large, large_depth = tree_records(big, seed=2)
    # Many small cascades with as many events as the large one: same work, other shape.
    small_trees: list[MemoryRecord] = []
    depths = []
    for seed in range(max(1, min(big, small_events) // small)):
        records, depth = tree_records(small, seed=100 + seed)
        small_trees += records
        depths.append(depth)
    small_depth = sum(depths) / len(depths)
    # The encoded inputs are millions of objects the consumer never holds: keep
    # them out of the garbage collector's scans (the cascades' own state stays in).
    gc.collect()
    gc.freeze()
    results: dict[str, list[float]] = {"mix": [], "1k": [], "1M": []}
    for _ in range(rounds):
        results["mix"].append(len(mix) / _time_process(mix))
        results["1k"].append(_time_process(small_trees) / len(small_trees) * 1e9)
        results["1M"].append(_time_process(large) / len(large) * 1e9)

    bytes_per_node = _memory_per_node(large)
    table = Table(title=f"cascades processing step, one core (CPU {cpu})")
    table.add_column("measure")
    table.add_column("best")
    table.add_column("median")
    for name, unit, fmt in (("mix", "events/s", "{:,.0f}"), ("1k", "ns/event", "{:,.0f}"),
                            ("1M", "ns/event", "{:,.0f}")):  # fmt: skip
        values = sorted(results[name])
        best = values[-1] if name == "mix" else values[0]
        label = {"mix": "campaign mix", "1k": f"{small:,}-node cascades",
                 "1M": f"one {big:,}-node cascade"}[name]  # fmt: skip
        table.add_row(f"{label} ({unit})", fmt.format(best), fmt.format(values[len(values) // 2]))
    ratios = sorted(b / s for b, s in zip(results["1M"], results["1k"], strict=True))
    table.add_row("1M / 1k ns per event (per round, median)", "", f"{ratios[len(ratios) // 2]:.2f}")
    table.add_row(f"state per node, {big:,}-node cascade (bytes)", "", f"{bytes_per_node:.0f}")
    table.add_row("mean node depth (small / large)", "", f"{small_depth:.1f} / {large_depth:.1f}")
    console.print(table)


def _memory_per_node(records: list[MemoryRecord]) -> float:
    """Traced bytes of the state one cascade built from ``records`` holds, per node.

    The dirty-node set (emptied by every write, every few seconds) is cleared
    first: it is a flush buffer, not the cascade's state."""
    from app.settings import CascadeSettings
    from consumers.cascades.pipeline import CascadesPipeline

    pipeline = CascadesPipeline(CascadeSettings())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for record in records:
        pipeline.process(record)
    (cascade,) = pipeline.cascades.values()
    cascade.dirty_nodes = set()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / cascade.live
