"""One cascade for the query API: its latest stats and its tree, a page at a time.

The tree is every node stored in ``cascade_nodes`` for the cascade (attached,
orphan and pending nodes, latest version of each), each linked to its parent
when the parent is a node of the same cascade at a smaller depth.
``descendants`` of a node is the exact number of nodes below it along those
links, over the WHOLE tree, whatever the page. For attached nodes and orphans
this is the consumer's own subtree size minus one (the number behind
``top_descendants``); a pending node counts the pending nodes waiting under it.

One query reads every stored row of the cascade as Arrow columns: ids as
UInt64 (no string is decoded), depth, time, version, clicks, conversions,
flags and state as numbers, and the channel as strings that stay in Arrow
until a page takes its own. numpy then keeps each node's latest version (what
``FINAL`` would keep, without merging the string keys of every row), finds
parents, sums subtree sizes level by level, deepest first, and orders nodes
breadth-first. ``TreeCache`` keeps trees per (cascade, snapshot version): any
change to a node (a click, a new child) is a new version, so a cached tree is
the tree as of that snapshot, and the next pages of an unchanged tree skip the
build.

Pages are breadth-first, ordered by (depth, ts, node id), with a keyset cursor
on that triple: every node present when both pages are read is on exactly one
of them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.storage.clickhouse import ClickHouse
from app.storage.lru import lru_get, lru_put

if TYPE_CHECKING:
    from numpy.typing import NDArray

# consumers/cascades/state.py FLAG_SAME_ORIGIN, FLAG_BOT.
FLAG_NAMES = ((1, "same_origin"), (2, "bot"))
STATES = ("attached", "pending", "orphan")

# The latest snapshot per campaign (normally one campaign): the highest version,
# without FINAL (cheaper: the few snapshot rows of one root are read as they are).
_STATS_SQL = """
SELECT campaign, version, size, tree_size, pending, orphans, reach, depth, breadth, max_breadth,
       branching, reproduction, clicks, conversions, toUnixTimestamp64Milli(first_ts),
       toUnixTimestamp64Milli(last_ts), growth_per_min, doubling_s, wiener, virality,
       valid_nodes, valid_recruits, self_referrals, same_origin, inflated, channel_mix,
       forecast_size, forecast_method, infectiousness
FROM cascade_stats
WHERE root = {root:String}
ORDER BY campaign, version DESC
LIMIT 1 BY campaign
"""
_STATS_FIELDS = (
    "size", "tree_size", "pending", "orphans", "reach", "depth", "breadth", "max_breadth",
    "branching", "reproduction", "clicks", "conversions", "first_ts", "last_ts",
    "growth_per_min", "doubling_s", "wiener", "virality", "valid_nodes", "valid_recruits",
    "self_referrals", "same_origin", "inflated",
)  # fmt: skip
# Every version of every node. Ids are 16 hex digits; their 8 bytes read as a
# little-endian UInt64 (byte-swapped in numpy: the value of the hex number, so
# ids compare as the strings do). state: 0 attached, 1 pending, 2 orphan.
_TREE_SQL = """
SELECT reinterpretAsUInt64(unhex(node)) AS id,
       reinterpretAsUInt64(unhex(ifNull(parent, ''))) AS parent_id,
       toUInt8(isNotNull(parent)) AS has_parent,
       depth,
       toUnixTimestamp64Milli(ts) AS ts_ms,
       version,
       clicks,
       conversions,
       flags,
       toUInt8(state = 'pending') + 2 * toUInt8(state = 'orphan') AS state_code,
       channel
FROM cascade_nodes
WHERE campaign = {campaign:String} AND root = {root:String}
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
    parent_linked: bool  # the parent is a node of the tree (an edge to draw)


@dataclass(slots=True, eq=False)
class Tree:
    """Every node of one cascade: parent links, exact descendants, breadth-first order.

    Per-node arrays are indexed by position in ``ids`` (ascending); ``bfs`` lists
    positions in breadth-first order (depth, ts, id); ``rows`` maps a position to
    its row of ``channel`` (an Arrow string array of every stored row).
    About 100 bytes per node.
    """

    ids: NDArray[Any]  # uint64, ascending
    parents: NDArray[Any]  # uint64 (0 without a parent)
    has_parent: NDArray[Any]  # bool
    depth: NDArray[Any]  # int64
    ts: NDArray[Any]  # int64, epoch ms
    clicks: NDArray[Any]
    conversions: NDArray[Any]
    flags: NDArray[Any]
    state: NDArray[Any]  # index into STATES
    descendants: NDArray[Any]
    parent_linked: NDArray[Any]  # bool: the parent is a node of the tree
    bfs: NDArray[Any]  # positions, breadth-first
    rows: NDArray[Any]  # position -> row of ``channel``
    channel: Any  # pyarrow string array, one value per stored row

    def __len__(self) -> int:
        return len(self.ids)

    def page(self, limit: int, after: tuple[int, int, str] | None = None) -> list[int]:
        """Positions of up to ``limit`` nodes in breadth-first order, after the
        (depth, ts ms, id) ``after`` when given (which need not be a node)."""
        import numpy

        start = 0
        if after is not None:
            depth, ts, node = after
            bfs = self.bfs
            ordered_depth, ordered_ts, ordered_ids = self.depth[bfs], self.ts[bfs], self.ids[bfs]
            later = (ordered_depth > depth) | (
                (ordered_depth == depth)
                & (
                    (ordered_ts > ts)
                    | ((ordered_ts == ts) & (ordered_ids > numpy.uint64(int(node, 16))))
                )
            )
            start = int(numpy.argmax(later)) if bool(later.any()) else len(bfs)
        found: list[int] = self.bfs[start : start + limit].tolist()
        return found

    def nodes(
        self, limit: int, after: tuple[int, int, str] | None = None
    ) -> tuple[list[NodeRow], bool]:
        """Up to ``limit`` nodes in breadth-first order after ``after`` (see ``page``),
        and whether more follow."""
        import pyarrow

        positions = self.page(limit + 1, after)
        more = len(positions) > limit
        positions = positions[:limit]
        if not positions:
            return [], more

        def values(array: NDArray[Any]) -> list[Any]:
            picked: list[Any] = array[positions].tolist()
            return picked

        ids, parents, has_parent = values(self.ids), values(self.parents), values(self.has_parent)
        depth, ts, state = values(self.depth), values(self.ts), values(self.state)
        clicks, conversions, flags = (
            values(self.clicks),
            values(self.conversions),
            values(self.flags),
        )
        descendants, linked = values(self.descendants), values(self.parent_linked)
        channels = self.channel.take(pyarrow.array(self.rows[positions])).to_pylist()
        rows = [
            NodeRow(
                id=f"{ids[i]:016x}",
                parent=f"{parents[i]:016x}" if has_parent[i] else None,
                depth=depth[i],
                channel=channels[i],
                ts=ts[i],
                clicks=clicks[i],
                conversions=conversions[i],
                state=STATES[state[i]],
                flags=flags[i],
                descendants=descendants[i],
                parent_linked=linked[i],
            )
            for i in range(len(positions))
        ]
        return rows, more


def build_tree(columns: dict[str, NDArray[Any]], channel: Any = None) -> Tree:
    """The tree from every stored version of every node (one entry each). Pure.

    ``columns``: ``id``, ``parent_id`` (values of the hex ids), ``has_parent``,
    ``depth``, ``ts_ms``, ``version``, and optionally ``clicks``, ``conversions``,
    ``flags``, ``state_code`` (0 when absent); ``channel``: an Arrow string array
    over the same rows (None: no channels). The latest version of each node
    wins, as ``FINAL`` would have it. A link counts only when the parent is a
    node of the tree at a smaller depth, so the links form a forest whatever
    the rows say, and the sums end.
    """
    import numpy
    import pyarrow

    ids = columns["id"]
    n_rows = len(ids)
    zeros = numpy.zeros(n_rows, dtype=numpy.int64)
    keep = _latest(ids, columns["version"])
    ids = ids[keep]
    parents = columns["parent_id"][keep]
    has_parent = columns["has_parent"][keep].astype(bool)
    depth = columns["depth"][keep].astype(numpy.int64)
    ts = columns["ts_ms"][keep].astype(numpy.int64)
    n = len(ids)
    if channel is None:
        channel = pyarrow.nulls(n_rows, pyarrow.string())
    # Parent positions: sorted needles make the binary searches cache-friendly.
    at = numpy.zeros(n, dtype=numpy.int64)
    if n:
        by_parent = numpy.argsort(parents)
        at[by_parent] = numpy.searchsorted(ids, parents[by_parent])
        numpy.minimum(at, n - 1, out=at)
    linked = has_parent & (ids[at] == parents) & (depth[at] < depth) if n else has_parent
    parent = numpy.where(linked, at, -1)
    bfs = _breadth_first(depth, ts)
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

    def kept(name: str) -> NDArray[Any]:
        values: NDArray[Any] = columns.get(name, zeros)[keep].astype(numpy.int64)
        return values

    tree_columns = {
        "ids": ids, "parents": parents, "has_parent": has_parent, "depth": depth, "ts": ts,
        "clicks": kept("clicks"), "conversions": kept("conversions"), "flags": kept("flags"),
        "state": kept("state_code"), "descendants": sizes - 1, "parent_linked": linked,
        "bfs": bfs, "rows": keep,
    }  # fmt: skip
    return Tree(**tree_columns, channel=channel)


def _breadth_first(depth: NDArray[Any], ts: NDArray[Any]) -> NDArray[Any]:
    """Positions (already in id order) sorted by (depth, ts, position).

    One packed key, 16 bits of depth over 47 bits of ms since the oldest node
    (4,400 years), sorted by numpy's fast unstable sort; the few runs of equal
    keys are then put back in position order.
    """
    import numpy

    if not len(depth):
        return numpy.zeros(0, dtype=numpy.int64)
    packed = (depth << 47) | (ts - ts.min())
    order: NDArray[Any] = numpy.argsort(packed)
    keys = packed[order]
    ties = numpy.flatnonzero(keys[1:] == keys[:-1])
    if len(ties):
        tied = numpy.zeros(len(order), dtype=bool)
        tied[ties] = tied[ties + 1] = True
        run = numpy.flatnonzero(tied)  # whole runs, in key order
        order[run] = order[run][numpy.lexsort((order[run], keys[run]))]
    return order


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
    table = await ch.aquery_arrow(_TREE_SQL, {"campaign": campaign, "root": root})
    columns = {name: table.column(name).to_numpy() for name in table.column_names[:-1]}
    # Little-endian reads of big-endian hex: swap to get the ids' values.
    columns["id"] = columns["id"].byteswap()
    columns["parent_id"] = columns["parent_id"].byteswap()
    return build_tree(columns, table.column("channel"))


class TreeCache:
    """Trees by (campaign, root, snapshot version), least recently used out first.

    A snapshot version changes with every change of the cascade, so an entry is
    the tree as of that snapshot (the consumer writes a cascade's node rows
    before its snapshot, so it may hold a few nodes of the next one). ``size``
    0 turns it off.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._trees: OrderedDict[tuple[str, str, int], Tree] = OrderedDict()

    def __len__(self) -> int:
        return len(self._trees)

    def get(self, key: tuple[str, str, int]) -> Tree | None:
        return lru_get(self._trees, key)

    def put(self, key: tuple[str, str, int], tree: Tree) -> None:
        lru_put(self._trees, key, tree, self.size)


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]
