"""One cascade for the query API: its latest stats and its tree, a page at a time.

The tree is every node stored in ``cascade_nodes`` for the cascade (attached,
orphan and pending nodes, latest version of each), each linked to its parent
when the parent is a node of the same cascade at a smaller depth.
``descendants`` of a node is the exact number of nodes below it along those
links, over the WHOLE tree, whatever the page. For attached nodes and orphans
this is the consumer's own subtree size minus one (the number behind
``top_descendants``); a pending node counts the pending nodes waiting under it.

Building it reads six integer columns of every stored row (ids as UInt64, so
no string is decoded; Arrow to numpy, no Python object per value), keeps each
node's latest version, and sums subtree sizes level by level, deepest first:
a few sorts, then one vectorized step per depth. The page's own details
(channel, clicks, state, flags, parent id) are then read for its nodes only.
``TreeCache`` keeps trees per (cascade, snapshot version), so the next pages
of a tree that has not changed skip the build.

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
# Every version of every node (deduplicated in numpy: cheaper than FINAL, which
# merges the string key of every row). Ids are 16 hex digits: as UInt64 they
# compare like the strings and travel as plain numbers.
_TREE_SQL = """
SELECT reinterpretAsUInt64(reverse(unhex(node))) AS id,
       reinterpretAsUInt64(reverse(unhex(ifNull(parent, '')))) AS parent_id,
       toUInt8(isNotNull(parent)) AS has_parent,
       depth,
       toUnixTimestamp64Milli(ts) AS ts_ms,
       version
FROM cascade_nodes
WHERE campaign = {campaign:String} AND root = {root:String}
"""
# The page's nodes, every version (the latest is kept): a key-column filter, so
# only their rows are read past the node column.
_NODES_SQL = """
SELECT node, version, parent, channel, clicks, conversions, state, flags
FROM cascade_nodes
WHERE campaign = {campaign:String} AND root = {root:String} AND node IN {nodes:Array(String)}
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
    """Every node of one cascade: parent links, exact descendants, breadth-first order.

    Arrays are indexed by position in ``ids`` (ascending); ``bfs`` lists the
    positions in breadth-first order (depth, ts, id).
    """

    __slots__ = ("ids", "depth", "ts", "descendants", "parent_linked", "bfs")

    def __init__(
        self,
        ids: NDArray[Any],
        depth: NDArray[Any],
        ts: NDArray[Any],
        descendants: NDArray[Any],
        linked: NDArray[Any],
        bfs: NDArray[Any],
    ) -> None:
        self.ids = ids  # uint64, ascending
        self.depth = depth  # int64
        self.ts = ts  # int64, epoch ms
        self.descendants = descendants  # int64
        self.parent_linked = linked  # bool: the node hangs under a node of the tree
        self.bfs = bfs  # int64 positions

    def __len__(self) -> int:
        return len(self.ids)

    def page(self, limit: int, after: tuple[int, int, str] | None = None) -> list[int]:
        """Positions of up to ``limit`` nodes in breadth-first order, after the
        (depth, ts ms, id) ``after`` when given (which need not be a node)."""
        import numpy

        start = 0
        if after is not None:
            depth, ts, node = after
            ordered_depth, ordered_ts = self.depth[self.bfs], self.ts[self.bfs]
            ordered_ids = self.ids[self.bfs]
            later = (ordered_depth > depth) | (
                (ordered_depth == depth)
                & (
                    (ordered_ts > ts)
                    | ((ordered_ts == ts) & (ordered_ids > numpy.uint64(int(node, 16))))
                )
            )
            start = int(numpy.argmax(later)) if bool(later.any()) else len(self.bfs)
        found: list[int] = self.bfs[start : start + limit].tolist()
        return found


def build_tree(
    ids: NDArray[Any],
    parents: NDArray[Any],
    has_parent: NDArray[Any],
    depth: NDArray[Any],
    ts: NDArray[Any],
    version: NDArray[Any],
) -> Tree:
    """The tree from every stored version of every node (one entry each). Pure.

    The latest version of each node wins, as ``FINAL`` would have it. A link
    counts only when the parent is a node of the tree at a smaller depth, so
    the links form a forest whatever the rows say, and the sums end.
    """
    import numpy

    keep = _latest(ids, version)
    ids = ids[keep]
    parents, has_parent = parents[keep], has_parent[keep]
    depth, ts = depth[keep].astype(numpy.int64), ts[keep].astype(numpy.int64)
    n = len(ids)
    if n == 0:
        empty = numpy.zeros(0, dtype=numpy.int64)
        return Tree(ids, empty, empty, empty, numpy.zeros(0, dtype=bool), empty)
    # Parent positions: sorted needles make the binary searches cache-friendly.
    by_parent = numpy.argsort(parents, kind="stable")
    at = numpy.empty(n, dtype=numpy.int64)
    at[by_parent] = numpy.searchsorted(ids, parents[by_parent])
    numpy.minimum(at, n - 1, out=at)
    linked = (has_parent != 0) & (ids[at] == parents) & (depth[at] < depth)
    parent = numpy.where(linked, at, -1)
    # Breadth-first order (depth, ts, id): one packed key, sorted stably over
    # positions already in id order (ties keep it). 16 bits of depth over 47
    # bits of ms since the oldest node (4,400 years).
    packed = (depth << 47) | (ts - ts.min())
    bfs = numpy.argsort(packed, kind="stable")
    sizes = numpy.ones(n, dtype=numpy.int64)
    cuts = (numpy.flatnonzero(numpy.diff(depth[bfs])) + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, n]
    if len(starts) * 32 > n:
        # Deep and thin (a chain): a vectorized step per level would cost more
        # than one plain pass over the nodes, deepest first.
        size_list = sizes.tolist()
        parent_list = parent.tolist()
        for i in reversed(bfs.tolist()):
            p = parent_list[i]
            if p >= 0:
                size_list[p] += size_list[i]
        sizes = numpy.array(size_list, dtype=numpy.int64)
    else:
        for start, end in zip(reversed(starts), reversed(ends), strict=True):
            level = bfs[start:end]
            level = level[linked[level]]
            numpy.add.at(sizes, parent[level], sizes[level])
    return Tree(ids, depth, ts, sizes - 1, linked, bfs)


def _latest(ids: NDArray[Any], version: NDArray[Any]) -> NDArray[Any]:
    """Positions of each id's highest version, in ascending id order.

    The rows come part by part, each part sorted by node, so a stable sort
    (merging sorted runs) is cheap; only ids stored more than once need the
    version compared.
    """
    import numpy

    order = numpy.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    versions = version[order]
    first = numpy.ones(len(order), dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    if bool(first.all()):
        return order
    group = numpy.cumsum(first) - 1
    top = numpy.maximum.reduceat(versions, numpy.flatnonzero(first))
    best = numpy.flatnonzero(versions == top[group])
    # Several rows of one id at its highest version are copies: keep the first.
    unique = numpy.ones(len(best), dtype=bool)
    unique[1:] = group[best][1:] != group[best][:-1]
    keep: NDArray[Any] = order[best[unique]]
    return keep


async def read_tree(ch: ClickHouse, campaign: str, root: str) -> Tree:
    """The cascade's whole tree with exact descendants (see the module docstring)."""
    columns = await ch.aquery_arrays(_TREE_SQL, {"campaign": campaign, "root": root})
    return build_tree(*columns)


class TreeCache:
    """Trees by (campaign, root, snapshot version), least recently used out first.

    A snapshot version changes with every change of the cascade, so an entry is
    the tree as of that snapshot (the consumer writes a cascade's node rows
    before its snapshot, so it may hold a few nodes of the next one). Pages of
    a cached tree list its nodes; their clicks, conversions, state and flags
    are read fresh. ``size`` 0 turns it off.
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
    descendants: int
    parent_linked: bool


async def read_page(
    ch: ClickHouse,
    campaign: str,
    root: str,
    tree: Tree,
    limit: int,
    after: tuple[int, int, str] | None = None,
) -> tuple[list[NodeRow], bool]:
    """Up to ``limit`` nodes of ``tree`` in breadth-first order (depth, ts, id), after
    the (depth, ts ms, id) ``after`` when given, with their latest stored details,
    and whether more nodes follow. A node gone from storage since the tree was
    read (TTL) is left out."""
    positions = tree.page(limit + 1, after)
    more = len(positions) > limit
    positions = positions[:limit]
    if not positions:
        return [], more
    nodes = [f"{int(tree.ids[p]):016x}" for p in positions]
    rows = await ch.aquery_rows(_NODES_SQL, {"campaign": campaign, "root": root, "nodes": nodes})
    latest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        held = latest.get(row[0])
        if held is None or row[1] > held[1]:
            latest[row[0]] = row
    out = []
    descendants = tree.descendants[positions].tolist()
    linked = tree.parent_linked[positions].tolist()
    depth, ts = tree.depth[positions].tolist(), tree.ts[positions].tolist()
    for i, node in enumerate(nodes):
        found = latest.get(node)
        if found is None:
            continue
        _, _, parent, channel, clicks, conversions, state, flags = found
        out.append(
            NodeRow(
                node, None if parent is None else str(parent), depth[i],
                None if channel is None else str(channel), ts[i], int(clicks),
                int(conversions), str(state), int(flags), descendants[i], linked[i],
            )
        )  # fmt: skip
    return out, more


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]
