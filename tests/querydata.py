"""A campaign with known answers for the query API tests.

Events and cascades are made here, then written by the REAL sink and cascades
pipelines into the real ClickHouse engine (chdb); every number the API should
answer is computed here from the events themselves (distinct event ids,
bucketed by event time) and from independent oracles for the cascades.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.bus.memory import MemoryRecord
from app.settings import CascadeSettings
from app.storage.clickhouse import ClickHouse
from consumers.cascades.pipeline import CascadesPipeline
from consumers.cascades.state import Cascade, Share, Touch
from consumers.sink.pipeline import EventsPipeline
from tests.cascadehelpers import clicks_for, random_tree, tree_shares, wire_event
from tests.test_storage import make_event

DAY_S = 86_400
# A whole UTC day three days ago: buckets are reproducible and well inside the TTL.
BASE_S = (int(time.time()) // DAY_S - 3) * DAY_S
BASE_MS = BASE_S * 1000
SPAN_MS = 3 * 3_600_000  # every event falls in [BASE, BASE + 3 h)
CAMPAIGN = "spring"
OTHER = "summer"
TYPES = ("view", "click", "share", "signup", "convert")


def record(value: bytes, offset: int, key: bytes | None = None) -> MemoryRecord:
    return MemoryRecord("share-events", 0, offset, 0, key, value)


@dataclass
class Expected:
    """What was written, deduplicated by event id."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    cascades: dict[str, Cascade] = field(default_factory=dict)  # root hex -> oracle state
    parents: dict[str, dict[str, str | None]] = field(
        default_factory=dict
    )  # root -> node -> parent

    def of(self, campaign: str) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if e["campaign"] == campaign]

    def counts(self, campaign: str) -> Counter[str]:
        return Counter(e["type"] for e in self.of(campaign))

    def buckets(self, campaign: str, step_s: int, types: tuple[str, ...] | None) -> Counter[int]:
        """Distinct events (or, ``types`` None, distinct non-null visitors) per bucket."""
        if types is not None:
            return Counter(
                e["ts"] // 1000 // step_s * step_s for e in self.of(campaign) if e["type"] in types
            )
        seen: dict[int, set[str]] = defaultdict(set)
        for e in self.of(campaign):
            if e["visitor"] is not None:
                seen[e["ts"] // 1000 // step_s * step_s].add(e["visitor"])
        return Counter({b: len(v) for b, v in seen.items()})

    def descendants(self, root: str) -> dict[str, int]:
        """Nodes below each node along stored parent links (an independent count)."""
        parents = self.parents[root]
        below: Counter[str] = Counter()
        for node in parents:
            seen = {node}
            parent = parents[node]
            while parent is not None and parent in parents and parent not in seen:
                below[parent] += 1
                seen.add(parent)
                parent = parents[parent]
        return {node: below[node] for node in parents}


class Writer:
    """Feeds wire events through the real sink and cascades pipelines, in batches."""

    def __init__(self, ch: ClickHouse, cascade_settings: CascadeSettings | None = None) -> None:
        self.sink = EventsPipeline(ch)
        self.cascades = CascadesPipeline(cascade_settings or CascadeSettings(), ch)
        self.offset = 0
        self.batches = 0

    async def write(self, events: list[dict[str, Any]]) -> None:
        sink_rows: list[Any] = []
        cascade_rows: list[Any] = []
        records = []
        for event in events:
            # Keyed as the API publishes: by cascade root, else by campaign.
            key = event["root"] or f"campaign:{event['campaign']}"
            records.append(record(orjson.dumps(event), self.offset, key.encode()))
            self.offset += 1
        await self.cascades.prepare(records)
        for rec in records:
            sink_rows.extend(self.sink.process(rec))
            cascade_rows.extend(self.cascades.process(rec))
        self.batches += 1
        await self.sink.write(sink_rows, f"test-sink-{self.batches}")
        await self.cascades.write(cascade_rows, f"test-cascades-{self.batches}")


def plain_events(rng: random.Random, n: int, campaign: str) -> list[dict[str, Any]]:
    return [
        make_event(
            rng,
            campaign=campaign,
            type=rng.choice(TYPES),
            ts=BASE_MS + rng.randrange(SPAN_MS),
            bot=False,
        )
        for _ in range(n)
    ]


def cascade_events(
    rng: random.Random, campaign: str, kind: str, n: int, start_ms: int
) -> tuple[list[Share | Touch], list[int], list[Share]]:
    parents = random_tree(kind, n, rng)
    shares = tree_shares(parents, rng, campaign=campaign, start_ms=start_ms,
                         channels=("whatsapp", "x", "email", "sms"))  # fmt: skip
    # Shares a few seconds apart: keep each cascade inside the span.
    shares = [s._replace(ts=start_ms + i * 20) for i, s in enumerate(shares)]
    touches = clicks_for(shares, rng, per_node=0.6)
    stream: list[Share | Touch] = [*shares, *touches]
    return stream, parents, shares


async def load(ch: ClickHouse, seed: int = 7) -> Expected:
    """Plain events in two campaigns, five cascades in ``CAMPAIGN`` (one with a
    same-origin share and a bot share) and one in ``OTHER``; every event goes
    through the sink, cascade events through the cascades consumer too. The
    last batch replays a tenth of what came before (duplicates count once)."""
    rng = random.Random(seed)
    expected = Expected()
    wire: list[dict[str, Any]] = []
    wire += plain_events(rng, 1500, CAMPAIGN) + plain_events(rng, 600, OTHER)
    plans = [(CAMPAIGN, "preferential", 160), (CAMPAIGN, "uniform", 90), (CAMPAIGN, "star", 40),
             (CAMPAIGN, "chain", 30), (OTHER, "uniform", 50)]  # fmt: skip
    streams: list[list[Share | Touch]] = []
    for i, (campaign, kind, n) in enumerate(plans):
        stream, parents, shares = cascade_events(rng, campaign, kind, n, BASE_MS + i * 600_000)
        if i == 0:
            # A re-share by the parent's own visitor (same origin) and a bot's share.
            parent = shares[5]
            stream.append(Share(str(uuid.uuid4()), campaign, parent.root, rng.getrandbits(63) | 1,
                                parent.node, parent.depth + 1, parent.ts + 5, parent.visitor,
                                channel="x"))  # fmt: skip
            stream.append(Share(str(uuid.uuid4()), campaign, parent.root, rng.getrandbits(63) | 1,
                                parent.node, parent.depth + 1, parent.ts + 6, rng.getrandbits(63),
                                channel="email", bot=True))  # fmt: skip
        streams.append(stream)
    for stream in streams:
        root = f"{stream[0].root:016x}"
        cfg = CascadeSettings()
        oracle = Cascade(
            stream[0].campaign, stream[0].root, stream[0].ts,
            orphan_after_ms=int(cfg.orphan_after_s * 1000), max_pending=cfg.max_pending,
            forecast_tau_ms=cfg.forecast_tau_s * 1000,
        )  # fmt: skip
        links: dict[str, str | None] = {}
        for item in stream:
            if isinstance(item, Share):
                oracle.add_share(item)
                links[f"{item.node:016x}"] = None if item.parent is None else f"{item.parent:016x}"
            else:
                oracle.add_touch(item)
        expected.cascades[root] = oracle
        expected.parents[root] = links
        wire += [wire_event(item) for item in stream]
    for event in wire:
        expected.events.setdefault(event["event_id"], event)
    writer = Writer(ch)
    for start in range(0, len(wire), 700):
        await writer.write(wire[start : start + 700])
    await writer.write(rng.sample(wire, len(wire) // 10))
    return expected
