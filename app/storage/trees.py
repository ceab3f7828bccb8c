"""One cascade for the query API: its latest stats and its tree, a page at a time.

The tree is every ``cascade_nodes`` row of the cascade (attached, orphan and
pending nodes, ``FINAL``), each linked to its parent when the parent is a row
of the same cascade at a smaller depth. ``descendants`` of a node is the exact
number of nodes below it along those links, over the WHOLE tree, whatever the
page. For attached nodes and orphans this is the consumer's own subtree size
minus one (the number behind ``top_descendants``); a pending node counts the
pending nodes waiting under it.

Computing it reads three integer columns of every node (ids as UInt64, so no
string is decoded) into numpy arrays and sums subtree sizes level by level,
deepest first: O(n log n) for the sort, then one vectorized step per depth.
``TreeCache`` keeps the result per (cascade, snapshot version), so the next
pages of a tree that has not changed skip it.

Pages are breadth-first, ordered by (depth, ts, node id), with a keyset cursor
on that triple: every node present when both pages are read is on exactly one
of them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.storage.clickhouse import ClickHouse

if TYPE_CHECKING:
    from numpy.typing import NDArray

# consumers/cascades/state.py FLAG_SAME_ORIGIN, FLAG_BOT.
FLAG_NAMES = ((1, "same_origin"), (2, "bot"))

_STATS_SQL = """
SELECT campaign, version, size, tree_size, pending, orphans, reach, depth, breadth, max_breadth,
       branching, reproduction, clicks, conversions, toUnixTimestamp64Milli(first_ts),
       toUnixTimestamp64Milli(last_ts), growth_per_min, doubling_s, wiener, virality,
       valid_nodes, valid_recruits, self_referrals, same_origin, inflated, channel_mix,
       forecast_size, forecast_method, infectiousness
FROM cascade_stats FINAL
WHERE root = {root:String}
ORDER BY campaign
"""
_STATS_FIELDS = (
    "size", "tree_size", "pending", "orphans", "reach", "depth", "breadth", "max_breadth",
    "branching", "reproduction", "clicks", "conversions", "first_ts", "last_ts",
    "growth_per_min", "doubling_s", "wiener", "virality", "valid_nodes", "valid_recruits",
    "self_referrals", "same_origin", "inflated",
)  # fmt: skip
# Ids are 16 hex digits: as UInt64 they sort like the strings and decode as numbers.
_TREE_SQL = """
SELECT reinterpretAsUInt64(reverse(unhex(node))) AS id,
       reinterpretAsUInt64(reverse(unhex(ifNull(parent, '')))) AS parent_id,
       toUInt8(isNotNull(parent)) AS has_parent,
       depth
FROM cascade_nodes FINAL
WHERE campaign = {campaign:String} AND root = {root:String}
ORDER BY id
"""
_PAGE_SQL = """
SELECT node, parent, depth, channel, toUnixTimestamp64Milli(ts) AS t, clicks, conversions,
       state, flags
FROM cascade_nodes FINAL
WHERE campaign = {campaign:String} AND root = {root:String}
  AND (depth, t, node) > ({depth:UInt16}, {ts:Int64}, {node:String})
ORDER BY depth, t, node
LIMIT {limit:UInt32}
"""


@dataclass(frozen=True, slots=True)
class StoredCascade:
    """The latest ``cascade_stats`` snapshot of one cascade."""

    campaign: str
    version: int
    stats: dict[str, Any]
    channel_mix: list[tuple[int, str, int]]
    forecast_size: float | None
    forecast_method: str
    infectiousness: float


async def read_cascades(ch: ClickHouse, root: str) -> list[StoredCascade]:
    """The snapshot of cascade ``root`` in each campaign that has one (normally one,
    none for an unknown root), by campaign."""
    out = []
    for row in await ch.aquery_rows(_STATS_SQL, {"root": root}):
        values = dict(zip(_STATS_FIELDS, row[2:25], strict=True))
        values["breadth"] = [int(b) for b in values["breadth"]]
        values["reproduction"] = [float(r) for r in values["reproduction"]]
        out.append(
            StoredCascade(
                campaign=str(row[0]),
                version=int(row[1]),
                stats=values,
                channel_mix=[(int(g), str(c), int(n)) for g, c, n in row[25]],
                forecast_size=None if row[26] is None else float(row[26]),
                forecast_method=str(row[27]),
                infectiousness=float(row[28]),
            )
        )
    return out


class Tree:
    """Every node of one cascade by id, with its parent link and its descendants."""

    __slots__ = ("ids", "descendants", "parent_linked")

    def __init__(self, ids: NDArray[Any], descendants: NDArray[Any], linked: NDArray[Any]):
        self.ids = ids  # uint64, ascending
        self.descendants = descendants  # int64, by position in ids
        self.parent_linked = linked  # bool: the node hangs under a node of the tree

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, nodes: list[str]) -> list[int] | None:
        """Where each node id is in ``ids``; None when one of them is not in the tree."""
        import numpy

        if not nodes:
            return []
        wanted = numpy.array([int(node, 16) for node in nodes], dtype=numpy.uint64)
        at = numpy.minimum(numpy.searchsorted(self.ids, wanted), max(len(self.ids) - 1, 0))
        if len(self.ids) == 0 or not bool(numpy.all(self.ids[at] == wanted)):
            return None
        found: list[int] = at.tolist()
        return found


def build_tree(
    ids: NDArray[Any], parents: NDArray[Any], has_parent: NDArray[Any], depth: NDArray[Any]
) -> Tree:
    """Subtree sizes from per-node arrays (``ids`` ascending, unique). Pure.

    A node's link counts only when its parent is a node of the tree at a smaller
    depth, so the links form a forest whatever the rows say, and the sums end.
    """
    import numpy

    n = len(ids)
    if n == 0:
        empty = numpy.zeros(0, dtype=numpy.int64)
        return Tree(ids, empty, numpy.zeros(0, dtype=bool))
    depth = depth.astype(numpy.int64)
    at = numpy.minimum(numpy.searchsorted(ids, parents), n - 1)
    linked = (has_parent != 0) & (ids[at] == parents) & (depth[at] < depth)
    parent = numpy.where(linked, at, -1)
    sizes = numpy.ones(n, dtype=numpy.int64)
    order = numpy.argsort(depth, kind="stable")
    ordered_depth = depth[order]
    cuts = (numpy.flatnonzero(numpy.diff(ordered_depth)) + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, n]
    if len(starts) * 32 > n:
        # Deep and thin (a chain): a vectorized step per level would cost more
        # than one plain pass over the nodes, deepest first.
        size_list = sizes.tolist()
        parent_list = parent.tolist()
        for i in reversed(order.tolist()):
            p = parent_list[i]
            if p >= 0:
                size_list[p] += size_list[i]
        sizes = numpy.array(size_list, dtype=numpy.int64)
    else:
        for start, end in zip(reversed(starts), reversed(ends), strict=True):
            level = order[start:end]
            level = level[linked[level]]
            numpy.add.at(sizes, parent[level], sizes[level])
    return Tree(ids, sizes - 1, linked)


async def read_tree(ch: ClickHouse, campaign: str, root: str) -> Tree:
    """The cascade's whole tree with exact descendants (see the module docstring)."""
    import numpy

    columns = await ch.aquery_arrays(_TREE_SQL, {"campaign": campaign, "root": root})
    if not columns:
        empty = numpy.zeros(0, dtype=numpy.uint64)
        return build_tree(empty, empty, empty, empty)
    ids, parents, has_parent, depth = columns
    return build_tree(ids, parents, has_parent, depth)


class TreeCache:
    """Trees by (campaign, root, snapshot version), least recently used out first.

    A snapshot version changes with every change of the cascade, so an entry is
    the tree as of that snapshot. The consumer writes a cascade's node rows
    before its snapshot, so a tree read between the two already holds the next
    version's nodes: a page node missing from a cached tree makes the reader
    build it again (``Tree.positions`` is None). ``size`` 0 turns it off.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._trees: OrderedDict[tuple[str, str, int], Tree] = OrderedDict()

    def __len__(self) -> int:
        return len(self._trees)

    def get(self, key: tuple[str, str, int]) -> Tree | None:
        tree = self._trees.get(key)
        if tree is not None:
            self._trees.move_to_end(key)
        return tree

    def put(self, key: tuple[str, str, int], tree: Tree) -> None:
        if self.size <= 0:
            return
        self._trees[key] = tree
        self._trees.move_to_end(key)
        while len(self._trees) > self.size:
            self._trees.popitem(last=False)

    def drop(self, key: tuple[str, str, int]) -> None:
        self._trees.pop(key, None)


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    parent: str | None
    depth: int
    channel: str | None
    ts: int
    clicks: int
    conversions: int
    state: str
    flags: int


async def read_page(
    ch: ClickHouse,
    campaign: str,
    root: str,
    limit: int,
    after: tuple[int, int, str] | None = None,
) -> list[NodeRow]:
    """Up to ``limit`` nodes in breadth-first order (depth, ts, id), after the
    (depth, ts ms, id) ``after`` when given."""
    depth, ts, node = after if after is not None else (0, -1, "")
    rows = await ch.aquery_rows(
        _PAGE_SQL,
        {"campaign": campaign, "root": root, "depth": depth, "ts": ts, "node": node,
         "limit": limit},
    )  # fmt: skip
    return [
        NodeRow(
            str(r[0]),
            None if r[1] is None else str(r[1]),
            int(r[2]),
            None if r[3] is None else str(r[3]),
            int(r[4]),
            int(r[5]),
            int(r[6]),
            str(r[7]),
            int(r[8]),
        )  # fmt: skip
        for r in rows
    ]


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]
