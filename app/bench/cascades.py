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
* ``broad``: one cascade as large as the ``1M`` one and about as deep as the
  ``1k`` ones (1,000 interleaved 1,000-node random recursive branches under
  one root), ns/event: the growth with size alone, at the same depth. The
  structural-virality update walks a new node's ancestors (O(depth), as the
  issue specifies), so a deeper tree costs more per event by design;
* ``live``: 1,000 cascades of 1,000 nodes with their shares interleaved, so
  as much live state as ``broad``, split into small cascades: ``broad`` over
  ``live`` is the cost of one large cascade against many small ones with
  everything else equal (``1k`` runs each small cascade alone, from cache);
* ``memory``: tracemalloc's traced bytes of the 1,000,000-node cascade's
  state divided by its nodes.

The records are encoded before timing; the clock covers only ``process``.
The garbage collector is set as in the consumer processes
(``consumers.base.tune_gc``, ``consumer.gc_threshold``); ``--gc-threshold
700`` measures with Python's default.

``--variant both`` (the default) runs each measure on the installed build
(mypyc-compiled where setup.py could compile) and on the same modules run
as Python (``consumers.cascades.load_pure``), alternating in each round, so
the compiled/pure ratio comes from one run on one machine state.
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.settings import ConsumerSettings

if TYPE_CHECKING:  # app.cli imports the benchmarks at start-up: keep it light
    from app.bus.memory import MemoryRecord
    from consumers.cascades.pipeline import CascadesPipeline

BENCH_CPU = 0


def _record(key: bytes, value: bytes, offset: int) -> MemoryRecord:
    from app.bus.memory import MemoryRecord

    return MemoryRecord("share-events", 0, offset, 0, key, value)


def _event(kind: str, campaign: str, root: int, node: int, ts: int, **extra: object) -> bytes:
    import orjson

    from app.bus.base import right_sized

    # Right-sized: orjson's own buffer would hold 4-8 KiB per record, ~25 GB here.
    return right_sized(orjson.dumps(
        {
            "v": 1, "event_id": str(uuid.uuid4()), "type": kind, "campaign": campaign,
            "ts": ts, "received_at": ts + 40, "source": "api", "token": None,
            "root": f"{root:016x}", "node": f"{node:016x}", "parent": None, "depth": None,
            "channel": None, "url": None, "text": None, "value": None, "reaction": None,
            "preview_of": None, "visitor": f"{random.getrandbits(63) | 1:016x}",
            "country": None, "bot": False, "browser": None, "os": None, "device": None,
            "privacy": None, **extra,
        }
    ))  # fmt: skip


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
    parents = [-1] + [rng.randrange(i) for i in range(1, n)]
    return _share_records(ids, parents)


def broad_tree_records(branches: int, n: int, seed: int) -> tuple[list[MemoryRecord], float]:
    """Share records of one cascade of ``branches * n + 1`` nodes, and its mean
    node depth: a root whose ``branches`` children each grow a random recursive
    tree of ``n`` nodes, the branches' shares interleaved at random.

    As large as the ``--big`` tree and as deep as a ``--small`` one plus one:
    per-event cost against cascade size at (nearly) the same depth. Interleaved,
    so consecutive shares touch far-apart parts of the state, as in a live cascade.
    """
    rng = random.Random(seed)
    order = [branch for branch in range(branches) for _ in range(n)]
    rng.shuffle(order)  # which branch grows next
    members: list[list[int]] = [[] for _ in range(branches)]
    parents = [-1]
    for branch in order:
        nodes = members[branch]
        parents.append(nodes[rng.randrange(len(nodes))] if nodes else 0)
        nodes.append(len(parents) - 1)
    ids = [rng.getrandbits(63) | 1 for _ in parents]
    return _share_records(ids, parents)


def _share_records(ids: list[int], parents: list[int]) -> tuple[list[MemoryRecord], float]:
    """Share records of the tree where node ``i`` has id ``ids[i]`` and parent index
    ``parents[i]`` (-1 for the root; parents come first), and its mean node depth."""
    depth = [0] * len(ids)
    root = ids[0]
    key = f"{root:016x}".encode()
    start = time.time_ns() // 1_000_000 - 86_400_000
    records = []
    for i, parent in enumerate(parents):
        if i:
            depth[i] = depth[parent] + 1
        records.append(_record(key, _event(
            "share", "bench", root, ids[i], start + i, depth=depth[i],
            parent=f"{ids[parent]:016x}" if i else None, channel="x",
        ), i))  # fmt: skip
    return records, sum(depth) / len(ids)


class Variant(StrEnum):
    compiled = "compiled"  # the installed build: compiled where setup.py could compile
    pure = "pure"
    both = "both"


def _interleave(groups: list[list[MemoryRecord]], seed: int) -> list[MemoryRecord]:
    """The records of every group, interleaved at random, each group's in its order."""
    rng = random.Random(seed)
    order = [g for g, records in enumerate(groups) for _ in records]
    rng.shuffle(order)
    cursors = [iter(records) for records in groups]
    return [next(cursors[g]) for g in order]


def _pipelines(variant: Variant) -> dict[str, type[CascadesPipeline]]:
    """The pipeline classes to time, by implementation ("compiled" or "pure")."""
    import consumers.cascades
    from consumers.cascades import pipeline

    classes: dict[str, type[CascadesPipeline]] = {}
    if variant != Variant.pure:
        classes[consumers.cascades.implementation()] = pipeline.CascadesPipeline
    if variant != Variant.compiled and "pure" not in classes:
        pure = consumers.cascades.load_pure("consumers.cascades.pipeline")
        classes["pure"] = pure.CascadesPipeline
    return classes


def _time_process(records: list[MemoryRecord], pipeline_class: type[CascadesPipeline]) -> float:
    """Seconds for ``process`` over every record (a fresh pipeline)."""
    from app.settings import CascadeSettings

    pipeline = pipeline_class(CascadeSettings())
    process = pipeline.process
    gc.collect()
    started = time.perf_counter()
    for record in records:
        process(record)
    return time.perf_counter() - started


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def cascades(
    events: Annotated[int, typer.Option(help="records in the campaign mix")] = 300_000,
    big: Annotated[int, typer.Option(help="nodes of the large cascade")] = 1_000_000,
    small: Annotated[int, typer.Option(help="nodes of the small cascade")] = 1_000,
    small_events: Annotated[int, typer.Option(help="events over the small cascades")] = 200_000,
    gc_threshold: Annotated[
        int,
        typer.Option(
            help="young-generation GC threshold (default: the consumers' setting; 700 is "
            "Python's own)"
        ),
    ] = ConsumerSettings().gc_threshold,
    rounds: Annotated[int, typer.Option(help="alternating rounds")] = 3,
    cpu: Annotated[int, typer.Option(help="the core to pin to")] = BENCH_CPU,
    variant: Annotated[
        Variant,
        typer.Option(help="the installed (compiled) build, pure Python, or both side by side"),
    ] = Variant.both,
) -> None:
    """The cascades consumer's processing step: events/s, ns/event by cascade size, bytes/node."""
    import consumers.cascades

    console = Console(width=max(Console().width, 132))  # the table, unwrapped in a log
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    installed = consumers.cascades.implementation()
    console.print(
        f"installed cascades modules: {installed} (compiled with mypyc: "
        f"{'yes' if installed == 'compiled' else 'no'})"
    )
    pipelines = _pipelines(variant)
    if variant == Variant.both and len(pipelines) == 1:
        console.print("[yellow]the installed build is not compiled: only pure Python runs")
    console.print(f"encoding {events:,} mix records, {big:,} + {small:,}×k tree records ...")
    mix = campaign_records(events)
    large, large_depth = tree_records(big, seed=2)
    broad, broad_depth = broad_tree_records(max(1, big // small), small, seed=3)
    # Many small cascades with as many events as the large one: same work, other shape.
    small_trees: list[MemoryRecord] = []
    depths = []
    for seed in range(max(1, min(big, small_events) // small)):
        records, depth = tree_records(small, seed=100 + seed)
        small_trees += records
        depths.append(depth)
    small_depth = sum(depths) / len(depths)
    # As many 1k cascades as the 1M one has nodes, their shares interleaved: the
    # same live state as ``broad`` in cascades of 1,000, as a consumer sees a campaign.
    live = _interleave(
        [tree_records(small, seed=1_000 + seed)[0] for seed in range(max(1, big // small))],
        seed=4,
    )
    from consumers.base import tune_gc

    # As the consumer processes do (consumers.base.tune_gc); the freeze also keeps
    # the encoded inputs, millions of objects no consumer holds, out of the scans.
    tune_gc(ConsumerSettings(gc_threshold=gc_threshold))
    console.print(f"GC threshold {gc.get_threshold()[0]:,} (consumer.gc_threshold)")
    results: dict[str, dict[str, list[float]]] = {
        name: {"mix": [], "1k": [], "live": [], "1M": [], "broad": []} for name in pipelines
    }
    order = list(pipelines.items())
    for pipeline_class in pipelines.values():
        _time_process(mix, pipeline_class)  # warm-up: the heap grows to its working size
    for round_no in range(rounds):
        # Alternate which variant goes first, so a disturbance early or late in a
        # round does not always fall on the same one.
        for name, pipeline_class in order if round_no % 2 == 0 else order[::-1]:
            found = results[name]
            found["mix"].append(len(mix) / _time_process(mix, pipeline_class))
            found["1k"].append(_time_process(small_trees, pipeline_class) / len(small_trees) * 1e9)
            found["live"].append(_time_process(live, pipeline_class) / len(live) * 1e9)
            found["1M"].append(_time_process(large, pipeline_class) / len(large) * 1e9)
            found["broad"].append(_time_process(broad, pipeline_class) / len(broad) * 1e9)
    memory = {name: _memory_per_node(large, cls) for name, cls in pipelines.items()}

    table = Table(title=f"cascades processing step, one core (CPU {cpu}), {rounds} rounds")
    table.add_column("measure")
    for name in pipelines:
        table.add_column(f"{name}: best")
        table.add_column(f"{name}: median")
    if len(pipelines) == 2:
        table.add_column("compiled / pure (median of rounds)")
    labels = {"mix": "campaign mix (events/s)", "1k": f"{small:,}-node cascades (ns/event)",
              "live": f"{small:,}-node cascades, {len(live):,} shares interleaved (ns/event)",
              "1M": f"one {big:,}-node cascade (ns/event)",
              "broad": f"one {len(broad):,}-node broad cascade (ns/event)"}  # fmt: skip
    for measure, label in labels.items():
        cells = [label]
        for found in results.values():
            values = sorted(found[measure])
            best = values[-1] if measure == "mix" else values[0]
            cells += [f"{best:,.0f}", f"{_median(values):,.0f}"]
        if len(pipelines) == 2:
            compiled, pure = results["compiled"][measure], results["pure"][measure]
            # Speed-up either way: events/s up, or ns/event down.
            ratios = [
                c / p if measure == "mix" else p / c for c, p in zip(compiled, pure, strict=True)
            ]
            cells.append(f"{_median(ratios):.2f}× faster")
        table.add_row(*cells)
    for measure, base, label in (
        ("1M", "1k", "1M / 1k ns per event"),
        ("broad", "1k", "broad / 1k ns per event"),
        ("broad", "live", "broad / 1k interleaved ns per event"),
    ):
        flat = [f"{label} (median of rounds)"]
        for found in results.values():
            ratios = [b / s for b, s in zip(found[measure], found[base], strict=True)]
            flat += ["", f"{_median(ratios):.2f}"]
        table.add_row(*flat)
    per_node = [f"state per node, {big:,}-node cascade (bytes)"]
    for name in pipelines:
        per_node += ["", f"{memory[name]:.0f}"]
    table.add_row(*per_node)
    console.print(table)
    console.print(f"mean node depth: {small:,}-node cascades {small_depth:.1f}, "
                  f"{big:,}-node cascade {large_depth:.1f}, "
                  f"broad cascade {broad_depth:.1f}")  # fmt: skip
    # Every round's figures: a disturbed round shows as an outlier here.
    for name, found in results.items():
        for measure, values in found.items():
            console.print(f"rounds, {name} {measure}: " + ", ".join(f"{v:,.0f}" for v in values))


def _memory_per_node(records: list[MemoryRecord], pipeline_class: type[CascadesPipeline]) -> float:
    """Traced bytes of the state one cascade built from ``records`` holds, per node.

    The dirty-node set (emptied by every write, every few seconds) is cleared
    first: it is a flush buffer, not the cascade's state."""
    from app.settings import CascadeSettings

    pipeline = pipeline_class(CascadeSettings())
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
