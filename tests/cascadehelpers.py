"""Random share trees and events for the cascade tests (no service needed)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from consumers.cascades.state import Share, Touch

BASE_TS = 1_790_000_000_000  # 2026-09-21


def random_tree(kind: str, n: int, rng: random.Random) -> list[int]:
    """Parent index per node (``-1`` for node 0, the root), parents before children."""
    parents = [-1]
    if kind == "star":
        return parents + [0] * (n - 1)
    if kind == "chain":
        return parents + list(range(n - 1))
    if kind == "uniform":
        return parents + [rng.randrange(i) for i in range(1, n)]
    if kind == "preferential":
        # Parent chosen with probability proportional to (children + 1).
        urn = [0]
        for i in range(1, n):
            parent = rng.choice(urn)
            parents.append(parent)
            urn.extend((parent, i))
        return parents
    raise ValueError(kind)


def tree_shares(
    parents: list[int],
    rng: random.Random,
    *,
    campaign: str = "camp",
    root_id: int | None = None,
    start_ms: int = BASE_TS,
    channels: tuple[str, ...] = ("whatsapp", "x", "email"),
) -> list[Share]:
    """Share events for a tree (root first, time-ordered), distinct visitors per sharer."""
    ids = [root_id or rng.getrandbits(63) | 1]
    ids += [rng.getrandbits(63) | 1 for _ in parents[1:]]
    depth = [0] * len(parents)
    shares = []
    for i, parent in enumerate(parents):
        if parent >= 0:
            depth[i] = depth[parent] + 1
        shares.append(
            Share(
                event_id=str(uuid.UUID(int=rng.getrandbits(128))),
                campaign=campaign,
                root=ids[0],
                node=ids[i],
                parent=ids[parent] if parent >= 0 else None,
                depth=depth[i],
                ts=start_ms + i * 1000,
                visitor=rng.getrandbits(63) | 1,
                channel=channels[i % len(channels)],
            )
        )
    return shares


def clicks_for(shares: list[Share], rng: random.Random, per_node: float = 1.0) -> list[Touch]:
    """Clicks by fresh visitors on random nodes, plus a conversion for one in five."""
    touches = []
    for _ in range(int(len(shares) * per_node)):
        share = rng.choice(shares)
        visitor = rng.getrandbits(63) | 1
        for kind in ("click", "convert") if rng.random() < 0.2 else ("click",):
            touches.append(
                Touch(
                    event_id=str(uuid.UUID(int=rng.getrandbits(128))),
                    campaign=share.campaign,
                    root=share.root,
                    node=share.node,
                    kind=kind,
                    ts=share.ts + rng.randrange(1, 60_000),
                    visitor=visitor,
                )
            )
    return touches


def shuffled_with_duplicates(
    items: list[Share | Touch], rng: random.Random, duplicates: float = 0.1
) -> Iterator[Share | Touch]:
    out = list(items) + [rng.choice(items) for _ in range(int(len(items) * duplicates))]
    rng.shuffle(out)
    yield from out


def wiener_batch(parents: list[int]) -> int:
    """Σ over edges of s·(n−s), from subtree sizes: O(n), independent of the live update."""
    n = len(parents)
    size = [1] * n
    for i in range(n - 1, 0, -1):  # parents precede children
        size[parents[i]] += size[i]
    return sum(size[i] * (n - size[i]) for i in range(1, n))


def wire_event(item: Share | Touch, received_at: int | None = None) -> dict[str, object]:
    """The event as the API publishes it (docs/events.md), for a share or a touch."""
    is_share = isinstance(item, Share)
    return {
        "v": 1,
        "event_id": item.event_id or str(uuid.uuid4()),
        "type": "share" if is_share else item.kind,  # type: ignore[union-attr]
        "campaign": item.campaign,
        "ts": item.ts,
        "received_at": received_at or item.ts + 50,
        "source": "api",
        "token": None,
        "root": f"{item.root:016x}",
        "node": f"{item.node:016x}",
        "parent": f"{item.parent:016x}" if is_share and item.parent else None,  # type: ignore[union-attr]
        "depth": item.depth if is_share else None,  # type: ignore[union-attr]
        "channel": item.channel if is_share else None,  # type: ignore[union-attr]
        "url": None,
        "text": None,
        "value": None,
        "reaction": None,
        "preview_of": None,
        "visitor": f"{item.visitor:016x}" if item.visitor else None,
        "net": f"{item.net:016x}" if is_share and item.net else None,  # type: ignore[union-attr]
        "country": None,
        "bot": is_share and item.bot,  # type: ignore[union-attr]
        "browser": None,
        "os": None,
        "device": None,
        "privacy": None,
    }


def cascade_workload(
    seed: int,
    cascades: int = 20,
    campaign: str = "launch",
    max_size: int = 400,
    start_ms: int | None = None,
) -> tuple[list[list[Share | Touch]], list[list[int]]]:
    """Per cascade: its events in the order they are produced (shuffled, 10% duplicates,
    clicks among them) and its parent array. Event times start at ``start_ms``, by
    default recently (now - 2 h...)."""
    import time

    rng = random.Random(seed)
    kinds = ["uniform", "preferential", "star", "chain"]
    start = time.time_ns() // 1_000_000 - 2 * 3_600_000 if start_ms is None else start_ms
    streams, trees = [], []
    for i in range(cascades):
        parents = random_tree(kinds[i % 4], rng.randrange(2, max_size), rng)
        shares = tree_shares(parents, rng, campaign=campaign, start_ms=start + i * 7_000)
        touches = clicks_for(shares, rng, per_node=0.5)
        stream: list[Share | Touch] = [
            shares[0],
            *shuffled_with_duplicates([*shares[1:], *touches], rng),  # type: ignore[list-item]
        ]
        streams.append(stream)
        trees.append(parents)
    return streams, trees
