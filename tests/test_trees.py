"""``build_tree`` (app/storage/trees.py), the pure step behind ``/v1/cascades/{root}``:
exact descendants, parent links and breadth-first pages against a brute-force count,
on random forests with rewritten versions, missing parents and bad depths."""

from __future__ import annotations

import random
from typing import Any

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage.trees import build_tree


def arrays(rows: list[tuple[int, int | None, int, int, int]]) -> dict[str, Any]:
    """(id, parent, depth, ts, version) rows as the tree query's columns."""
    return {
        "id": numpy.array([r[0] for r in rows], dtype=numpy.uint64),
        "parent_id": numpy.array([r[1] or 0 for r in rows], dtype=numpy.uint64),
        "has_parent": numpy.array([r[1] is not None for r in rows], dtype=numpy.uint8),
        "depth": numpy.array([r[2] for r in rows], dtype=numpy.uint16),
        "ts_ms": numpy.array([r[3] for r in rows], dtype=numpy.int64),
        "version": numpy.array([r[4] for r in rows], dtype=numpy.uint64),
    }


def brute_force(
    latest: dict[int, tuple[int | None, int, int]],
) -> tuple[dict[int, int], dict[int, bool], list[int]]:
    """(descendants, linked, breadth-first ids) by walking up from every node."""
    linked = {
        node: parent is not None and parent in latest and latest[parent][1] < depth
        for node, (parent, depth, _) in latest.items()
    }
    below = dict.fromkeys(latest, 0)
    for node in latest:
        at = node
        while linked[at]:
            parent = latest[at][0]
            assert parent is not None
            below[parent] += 1
            at = parent
    order = sorted(latest, key=lambda n: (latest[n][1], latest[n][2], n))
    return below, linked, order


def check(rows: list[tuple[int, int | None, int, int, int]]) -> None:
    latest: dict[int, tuple[int | None, int, int]] = {}
    best: dict[int, int] = {}
    for node, parent, depth, ts, version in rows:
        if node not in best or version > best[node]:
            best[node] = version
            latest[node] = (parent, depth, ts)
    tree = build_tree(arrays(rows))
    below, linked, order = brute_force(latest)
    ids = tree.ids.tolist()
    assert ids == sorted(latest)
    assert dict(zip(ids, tree.descendants.tolist(), strict=True)) == below
    assert dict(zip(ids, tree.parent_linked.tolist(), strict=True)) == linked
    assert [ids[p] for p in tree.page(len(ids) + 5)] == order
    rows, more = tree.nodes(len(order))
    assert not more
    assert [(int(r.id, 16), r.descendants, r.parent_linked, r.depth, r.ts) for r in rows] == [
        (node, below[node], linked[node], latest[node][1], latest[node][2]) for node in order
    ]
    parent_of = {int(r.id, 16): r.parent for r in rows}
    assert parent_of == {
        node: None if parent is None else f"{parent:016x}"
        for node, (parent, _, _) in latest.items()
    }
    if len(order) > 1:
        assert tree.nodes(len(order) - 1)[1] is True
    # Pages after any node's key, or after a key between nodes, continue in order.
    for cut in range(0, len(order), max(1, len(order) // 7)):
        node = order[cut]
        parent, depth, ts = latest[node]
        after = (depth, ts, f"{node:016x}")
        assert [ids[p] for p in tree.page(3, after)] == order[cut + 1 : cut + 4]
        just_before = (depth, ts, f"{node - 1:016x}")  # no id lies between
        assert [ids[p] for p in tree.page(1, just_before)] == [node]


def random_rows(
    rng: random.Random, n: int, kind: str
) -> list[tuple[int, int | None, int, int, int]]:
    ids = list({rng.getrandbits(64) | 1 for _ in range(n)})[:n]
    assert len(ids) == n
    parent_of: list[int | None] = [None]
    depth = [0]
    for i in range(1, n):
        p = i - 1 if kind == "chain" else rng.randrange(i)
        parent_of.append(ids[p])
        depth.append(depth[p] + 1)
    rows = [(ids[i], parent_of[i], depth[i], rng.randrange(10**6), 1) for i in range(n)]
    lost = set(rng.sample(range(1, n), min(3, n - 1))) if n > 1 else set()
    rows = [r for i, r in enumerate(rows) if i not in lost]  # their subtrees hang free
    # Rewritten rows: a higher version with new content, and exact replays.
    for row in rng.sample(rows, len(rows) // 5):
        rows.append((row[0], row[1], row[2], row[3], 2))
        rows.append(row)
    # A row whose depth does not follow its parent's (kept out of the links).
    if len(rows) > 2:
        node, parent, _, ts, _ = rows[-1]
        rows.append((node, parent, 0, ts, 3))
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("kind", ["uniform", "chain"])
@pytest.mark.parametrize("n", [1, 2, 50, 3000])
def test_build_tree_matches_a_brute_force_count(kind: str, n: int) -> None:
    check(random_rows(random.Random(n), n, kind))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 12), st.one_of(st.none(), st.integers(1, 12)), st.integers(0, 5),
            st.integers(0, 3), st.integers(1, 3),
        ),
        max_size=30,
    )
)  # fmt: skip
def test_build_tree_on_arbitrary_rows(rows: list[tuple[int, int | None, int, int, int]]) -> None:
    # Rows of one id and version are copies in storage: make them so here.
    seen: dict[tuple[int, int], tuple[int, int | None, int, int, int]] = {}
    rows = [seen.setdefault((r[0], r[4]), r) for r in rows]
    check(rows)


def test_an_empty_tree() -> None:
    tree = build_tree(arrays([]))
    assert len(tree) == 0 and tree.page(10) == [] and tree.nodes(10) == ([], False)
