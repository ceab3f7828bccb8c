"""The cascade state engine against independent oracles (networkx, O(n) batch formulas)."""

from __future__ import annotations

import dataclasses
import math
import random

import networkx as nx
import pytest

from consumers.cascades.state import (
    ATTACHED,
    FLAG_SAME_ORIGIN,
    ORPHAN,
    Cascade,
    CascadeStats,
    NodeRow,
    Share,
    Touch,
    restore,
)
from tests.cascadehelpers import (
    clicks_for,
    random_tree,
    shuffled_with_duplicates,
    tree_shares,
    wiener_batch,
)

NEVER = 10**15  # orphan_after_ms that never expires within a test
FLOAT_FIELDS = ("forecast_size", "infectiousness", "growth_per_min", "doubling_s")


def apply(cascade: Cascade, items: object) -> None:
    for item in items:  # type: ignore[attr-defined]
        if isinstance(item, Share):
            cascade.add_share(item)
        else:
            cascade.add_touch(item)


def new_cascade(shares: list[Share], first_ts: int | None = None, **options: object) -> Cascade:
    options.setdefault("orphan_after_ms", NEVER)
    return Cascade("camp", shares[0].root, first_ts or shares[0].ts, **options)  # type: ignore[arg-type]


def assert_same_stats(a: CascadeStats, b: CascadeStats) -> None:
    left, right = dataclasses.asdict(a), dataclasses.asdict(b)
    for name in FLOAT_FIELDS:
        x, y = left.pop(name), right.pop(name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (name, x, y)
    assert left == right


def oracle(parents: list[int]) -> dict[str, object]:
    graph = nx.Graph()
    graph.add_nodes_from(range(len(parents)))
    graph.add_edges_from((i, p) for i, p in enumerate(parents) if p >= 0)
    depths = nx.single_source_shortest_path_length(graph, 0)
    breadth = [0] * (max(depths.values()) + 1)
    for d in depths.values():
        breadth[d] += 1
    n = len(parents)
    wiener = int(nx.wiener_index(graph)) if n > 1 else 0
    return {
        "size": n,
        "depth": len(breadth) - 1,
        "breadth": breadth,
        "wiener": wiener,
        "virality": 2 * wiener / (n * (n - 1)) if n > 1 else 0.0,
    }


@pytest.mark.parametrize("kind", ["uniform", "preferential", "star", "chain"])
@pytest.mark.parametrize("n", [1, 2, 57, 2000])
def test_shuffled_events_with_duplicates_match_networkx(kind: str, n: int) -> None:
    rng = random.Random(f"{kind}-{n}")
    parents = random_tree(kind, n, rng)
    shares = tree_shares(parents, rng)
    cascade = new_cascade(shares, first_ts=min(s.ts for s in shares))
    apply(cascade, shuffled_with_duplicates(shares, rng))  # type: ignore[arg-type]
    stats = cascade.stats()
    expected = oracle(parents)
    assert stats.size == stats.tree_size == expected["size"]
    assert stats.depth == expected["depth"]
    assert stats.breadth == expected["breadth"]
    assert stats.max_breadth == max(expected["breadth"])  # type: ignore[type-var]
    assert stats.wiener == expected["wiener"]
    assert math.isclose(stats.virality, expected["virality"], rel_tol=1e-12)  # type: ignore[arg-type]
    assert stats.pending == stats.orphans == 0
    assert stats.reproduction == [
        b / a for a, b in zip(stats.breadth, stats.breadth[1:], strict=False)
    ]


def test_out_of_order_equals_in_order_for_every_metric() -> None:
    rng = random.Random(7)
    parents = random_tree("preferential", 800, rng)
    shares = tree_shares(parents, rng)
    touches = clicks_for(shares, rng)
    in_order = new_cascade(shares)
    apply(in_order, [*shares, *sorted(touches, key=lambda t: t.ts)])
    shuffled = new_cascade(shares)
    apply(shuffled, [shares[0], *shuffled_with_duplicates([*shares[1:], *touches], rng)])
    assert_same_stats(in_order.stats(), shuffled.stats())
    assert shuffled.stats().clicks == len([t for t in touches if t.kind == "click"])
    assert shuffled.stats().conversions == len([t for t in touches if t.kind == "convert"])


def test_spreader_rankings_equal_a_full_sort() -> None:
    rng = random.Random(11)
    parents = random_tree("preferential", 1500, rng)
    shares = tree_shares(parents, rng)
    cascade = new_cascade(shares)
    apply(cascade, shuffled_with_duplicates(shares, rng))  # type: ignore[arg-type]
    n = len(parents)
    size, children = [1] * n, [0] * n
    for i in range(n - 1, 0, -1):
        size[parents[i]] += size[i]
        children[parents[i]] += 1
    ids = [s.node for s in shares]

    def top(values: list[int]) -> list[tuple[str, int]]:
        ranked = sorted(((v, ids[i]) for i, v in enumerate(values) if v > 0), reverse=True)
        return [(f"{node:016x}", v) for v, node in ranked[:10]]

    stats = cascade.stats()
    assert stats.top_descendants == top([s - 1 for s in size])
    assert stats.top_children == top(children)
    assert stats.branching == (n - 1) / sum(1 for c in children if c)


@pytest.mark.slow
def test_million_node_cascade_matches_the_batch_formula() -> None:
    rng = random.Random(1)
    parents = random_tree("uniform", 1_000_000, rng)
    shares = tree_shares(parents, rng)
    cascade = new_cascade(shares)
    apply(cascade, shares)
    stats = cascade.stats()
    n = len(parents)
    assert stats.size == n
    assert stats.wiener == wiener_batch(parents)
    assert stats.virality == 2 * stats.wiener / (n * (n - 1))


def test_child_before_parent_waits_then_links() -> None:
    rng = random.Random(3)
    shares = tree_shares([-1, 0, 1, 2], rng)  # a chain root -> a -> b -> c
    cascade = new_cascade(shares)
    cascade.add_share(shares[3])
    cascade.add_share(shares[2])
    stats = cascade.stats()
    assert (stats.size, stats.pending, stats.depth) == (1, 2, 0)
    cascade.add_share(shares[1])
    stats = cascade.stats()
    assert (stats.size, stats.pending, stats.depth, stats.wiener) == (4, 0, 3, 10)


def test_a_stranded_share_becomes_an_orphan_and_is_adopted_if_its_parent_comes() -> None:
    rng = random.Random(4)
    parents = random_tree("uniform", 30, rng)
    shares = tree_shares(parents, rng)
    lost = shares[5]  # its parent arrives "late"
    below = [s for s in shares if s.parent == lost.node]
    cascade = new_cascade(shares, orphan_after_ms=60_000)
    late_child = [s for s in shares if s.parent == lost.parent and s is not lost]
    # Everything except `lost`'s parent, then an event 10 minutes later.
    missing_parent = next(s for s in shares if s.node == lost.parent)
    for share in shares:
        if share is not missing_parent:
            cascade.add_share(share)
    tick = Touch("00000000-0000-4000-8000-000000000001", "camp", shares[0].root,
                 shares[0].node, "view", shares[-1].ts + 600_000, 99)  # fmt: skip
    cascade.add_touch(tick)
    stats = cascade.stats()
    stranded = 1 + len(late_child)  # every child of the missing parent
    assert stats.orphans == stranded
    assert stats.pending == 0
    # Orphans keep their recorded depth: breadth counts them there.
    expected_breadth = list(oracle(parents)["breadth"])  # type: ignore[call-overload]
    expected_breadth[missing_parent.depth] -= 1
    assert stats.breadth == expected_breadth
    assert stats.size == len(shares) - 1
    assert all(cascade.node_row(s.node).state == ORPHAN for s in [lost, *late_child])
    assert all(cascade.node_row(s.node).state == ATTACHED for s in below)
    # The parent comes after all: the tree is whole, as if in order.
    cascade.add_share(missing_parent)
    whole = cascade.stats()
    expected = oracle(parents)
    assert (whole.orphans, whole.size, whole.wiener) == (0, len(shares), expected["wiener"])
    assert whole.breadth == expected["breadth"]


def test_pending_is_bounded_oldest_first() -> None:
    rng = random.Random(5)
    shares = tree_shares([-1, 0, 1, 1, 1], rng)
    cascade = new_cascade(shares, max_pending=2)
    for share in shares[2:]:  # all wait for shares[1]
        cascade.add_share(share)
    stats = cascade.stats()
    assert (stats.pending, stats.orphans) == (2, 1)
    assert cascade.node_row(shares[2].node).state == ORPHAN  # the oldest


def touch(share: Share, kind: str, visitor: int, ts: int, n: int) -> Touch:
    return Touch(f"00000000-0000-4000-8000-{n:012d}", share.campaign, share.root, share.node,
                 kind, ts, visitor)  # fmt: skip


def test_fraud_and_noise_are_counted_and_kept_out() -> None:
    rng = random.Random(6)
    shares = tree_shares([-1, 0, 1, 1], rng)
    root, a, b, c = shares
    # b is shared by a's own visitor (same person), c from a's network bucket.
    b = b._replace(visitor=a.visitor)
    c = c._replace(net=77)
    a = a._replace(net=77)
    cascade = new_cascade(shares)
    for share in (root, a, b, c):
        cascade.add_share(share)
    hour = 3_600_000
    base = (a.ts // hour + 1) * hour  # the start of an hour
    touches = [
        touch(a, "click", a.visitor, base, 1),  # self-referral
        touch(a, "convert", a.visitor, base, 2),  # self-referral
        touch(a, "click", 500, base + 1, 3),  # counted
        touch(a, "click", 500, base + 2, 4),  # same visitor, same hour: inflated
        touch(a, "click", 500, base + hour, 5),  # next hour: counted
        touch(a, "click", 0, base, 6),  # no visitor id (DNT): counted, no reach
        touch(a, "click", 0, base, 7),
    ]
    for t in touches:
        assert cascade.add_touch(t)
    assert not cascade.add_touch(touches[2])  # a duplicate changes nothing
    stats = cascade.stats()
    assert stats.self_referrals == 2
    assert stats.inflated == 1
    assert stats.clicks == 4
    assert stats.conversions == 0
    assert stats.same_origin == 2
    assert cascade.flags[cascade.index[b.node]] & FLAG_SAME_ORIGIN
    assert stats.valid_nodes == 2  # root and a
    assert stats.valid_recruits == 1
    # b and c are flagged; a (two children) and the root (one) rank.
    assert stats.top_children == [(f"{a.node:016x}", 2), (f"{root.node:016x}", 1)]
    # Reach: the sharers a, b, c (b is a's visitor) and visitor 500.
    assert stats.reach == 3


def test_bots_never_count() -> None:
    rng = random.Random(8)
    shares = tree_shares([-1, 0, 1], rng)
    root, a, b = shares
    a = a._replace(bot=True)
    cascade = new_cascade(shares)
    for share in (root, a, b):
        cascade.add_share(share)
    stats = cascade.stats()
    assert stats.size == 3
    assert stats.valid_nodes == 2 and stats.valid_recruits == 0
    assert stats.reach == 1  # b only; a bot reaches no one
    assert all(node != f"{a.node:016x}" for node, _ in stats.top_children)


def test_touch_before_its_node_is_credited_when_the_node_arrives() -> None:
    rng = random.Random(9)
    shares = tree_shares([-1, 0], rng)
    cascade = new_cascade(shares)
    cascade.add_share(shares[0])
    cascade.add_touch(touch(shares[1], "click", 42, shares[1].ts + 5, 1))
    assert cascade.stats().clicks == 0
    cascade.add_share(shares[1])
    stats = cascade.stats()
    assert (stats.clicks, stats.reach) == (1, 2)


class Tables:
    """The latest row per node and every touch, as ReplacingMergeTree FINAL reads them."""

    def __init__(self) -> None:
        self.nodes: dict[int, NodeRow] = {}
        self.touches: dict[str, Touch] = {}

    def write(self, cascade: Cascade) -> None:
        rows, touches = cascade.drain()
        for row in rows:
            self.nodes[row.node] = row
        for t in touches:
            self.touches[t.event_id] = t


@pytest.mark.parametrize("seed", range(6))
def test_restore_then_continue_equals_a_run_that_never_stopped(seed: int) -> None:
    rng = random.Random(seed)
    parents = random_tree(["uniform", "preferential", "chain"][seed % 3], 400, rng)
    shares = tree_shares(parents, rng)
    touches = clicks_for(shares, rng, per_node=0.5)
    # Some shares go missing long enough to be orphaned, some arrive late.
    rest: list[Share | Touch] = [*shares[1:], *touches]
    events: list[Share | Touch] = [shares[0], *shuffled_with_duplicates(rest, rng)]
    options = {"orphan_after_ms": 120_000, "max_pending": 50}
    uninterrupted = new_cascade(shares, **options)
    apply(uninterrupted, events)

    tables = Tables()
    first = new_cascade(shares, **options)
    cut = len(events) // 2
    for i, event in enumerate(events[:cut]):
        apply(first, [event])
        if i % 37 == 0:
            tables.write(first)
    tables.write(first)
    assert {r.state for r in tables.nodes.values()} >= {ATTACHED}
    # The cut falls where shares wait and orphans exist: both must survive it.
    assert first.stats().pending > 0 and first.stats().orphans > 0
    restored = restore(
        "camp", shares[0].root, tables.nodes.values(), tables.touches.values(), **options
    )
    assert_same_stats(restored.stats(), first.stats())
    apply(restored, events[cut - 20 :])  # some redelivered: no-ops
    assert_same_stats(restored.stats(), uninterrupted.stats())
