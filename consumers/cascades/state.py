"""Live state of one share cascade: a pure data structure, no I/O.

A ``Cascade`` is every share made under one root token, kept as parallel
arrays indexed by the order in which nodes became live (about 150 bytes per
node, see docs/benchmarks.md). Events change it through two calls:

- ``add_share(share)``: a node. Its parent may not be live yet (events of a
  cascade can arrive out of order): then it waits in ``pending`` under the
  parent's id, and is linked when the parent arrives, with exactly the
  metrics an in-order arrival would have given. A pending share whose parent
  has not come ``orphan_after_ms`` of event time later (or that overflows
  ``max_pending``) is attached as an *orphan*: live at its recorded depth, in
  a component of its own, counted; it is merged into the tree if its parent
  turns up after all.
- ``add_touch(touch)``: a view, click, signup or conversion through a node.
  Its node may not be live yet: the touch is held and credited when it is.

Both return True when the event changed the state. A duplicate (same node
id, same event id) returns False and changes nothing, so redelivery is
harmless. Every change leaves a *footprint* (a node row or a touch row, see
``consumers/cascades/pipeline.py``) from which ``restore`` rebuilds the same
state after a restart; that is why nothing here depends on arrival time.

Structural virality (Goel et al. 2016) is the mean pairwise distance
``2W / (n(n-1))`` where W is the Wiener index. A new leaf v under u adds, in
O(depth), ``D + n + d(u)·n - 2·Σ s(e)`` to W, with D the sum of depths and
s(e) the subtree sizes below the edges on u's path to the top (see
ARCHITECTURE.md); merging an orphan component uses the same path sum.
The metrics are over the root's component; orphans count in size, depth
and breadth at their recorded depth, not in W.

Fraud and noise, flagged and kept out of K-factor and spreader rankings:
- a share whose sharer has the same visitor id or network bucket as its
  parent's sharer (a same-origin chain) gets ``FLAG_SAME_ORIGIN``;
- a touch by the node's own sharer is a self-referral: counted, not credited;
- a visitor's view or click counts at most once per node per hour of event
  time; repeats are counted as inflated;
- bots never count: bot touches are ignored and bot shares are flagged.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from consumers.cascades.forecast import Exposure, Forecast, forecast_final_size

NO_NODE = -1
FLAG_SAME_ORIGIN = 1
FLAG_BOT = 2
FLAG_ROOT_SEEN = 4  # the root's own share event was seen (else the root is implicit)
EXCLUDED = FLAG_SAME_ORIGIN | FLAG_BOT

ATTACHED = "attached"
PENDING = "pending"
ORPHAN = "orphan"

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CLICK_KINDS = frozenset({"view", "click"})
CONVERSION_KINDS = frozenset({"signup", "convert"})
TOUCH_KINDS = CLICK_KINDS | CONVERSION_KINDS
TOP_K = 10
# Below this many nodes a cascade's rankings are computed when a snapshot asks
# (O(n), cheap); from it on they are kept per event (O(1) per ancestor).
RANK_LIVE_FROM = 256
# Growth: shares per minute, exponentially smoothed with this half-life, over
# this window of event-time minutes ending at the cascade's latest event.
GROWTH_HALF_LIFE_MIN = 5.0
GROWTH_WINDOW_MIN = 60
_GROWTH_DECAY: float = 0.5 ** (1 / GROWTH_HALF_LIFE_MIN)


class Share(NamedTuple):
    """A decoded ``share`` event. Ids are ints (the token's u64); visitor/net 0 = unknown.

    A NamedTuple: the consumer builds one per event, and tuples build fastest."""

    event_id: str
    campaign: str
    root: int
    node: int
    parent: int | None
    depth: int
    ts: int
    visitor: int = 0
    net: int = 0
    channel: str | None = None
    bot: bool = False


class Touch(NamedTuple):
    """A decoded view/click/signup/convert through ``node`` (``kind`` in ``TOUCH_KINDS``)."""

    event_id: str
    campaign: str
    root: int
    node: int
    kind: str
    ts: int
    visitor: int = 0


@dataclass(slots=True)
class _Component:
    """A tree of live nodes: the root's, or an orphan's (keyed by its top's index).

    Depths are relative to the top."""

    n: int = 1
    depth_sum: int = 0
    wiener: int = 0


class _Ranking:
    """The ``TOP_K`` largest nodes by (value, node id), for values that only grow.

    Exact: a node whose value grows either was a member and stays one, or
    enters by beating the smallest member (the floor). ``threshold`` lets the
    hot path skip values that cannot enter, and ``_link`` updates a member
    that is not the floor in place. Restore rebuilds the same set.
    """

    __slots__ = ("members", "node_ids", "floor_index", "floor_key", "threshold", "enabled")

    def __init__(self, enabled: bool = True) -> None:
        self.members: dict[int, int] = {}  # index -> value
        self.node_ids: dict[int, int] = {}  # index -> node id, the tie-break
        self.floor_index = -1  # the smallest member's index, once full
        self.floor_key = (-1, 0)
        # Values below it cannot enter. A disabled ranking (a small cascade, ranked
        # from scratch when asked) sets it out of reach, so the hot path skips it.
        self.threshold = -1 if enabled else 1 << 62
        self.enabled = enabled

    def bump(self, index: int, value: int, node_id: int) -> None:
        members = self.members
        if index in members:
            members[index] = value
            if index == self.floor_index:
                self._refloor()
            return
        if len(members) < TOP_K:
            members[index] = value
            self.node_ids[index] = node_id
            if len(members) == TOP_K:
                self._refloor()
            return
        if (value, node_id) > self.floor_key:
            del members[self.floor_index], self.node_ids[self.floor_index]
            members[index] = value
            self.node_ids[index] = node_id
            self._refloor()

    def _refloor(self) -> None:
        ids = self.node_ids
        value, node, index = min((v, ids[i], i) for i, v in self.members.items())
        self.floor_index, self.floor_key, self.threshold = index, (value, node), value

    def ordered(self) -> list[tuple[int, int]]:
        """(node id, value), largest first."""
        ids = self.node_ids
        ranked = sorted(((v, ids[i]) for i, v in self.members.items()), reverse=True)
        return [(node, value) for value, node in ranked]


class Cascade:
    """One cascade's live state; see the module docstring.

    ``ts`` is the event time of the event that created the cascade: the root's
    time until (unless) the root's own share event is seen.
    """

    __slots__ = (
        "campaign", "root", "orphan_after_ms", "max_pending",
        "index", "ids", "parent", "depth", "size", "children", "clicks", "conversions",
        "sharer", "net", "ts", "channel", "flags",
        "channels", "channel_codes", "components", "breadth", "internal",
        "pending", "pending_ids", "pending_floor", "held", "orphans_of", "orphan_parent",
        "seen", "click_keys", "reach",
        "first_ts", "last_ts", "minutes", "exposure", "top_descendants", "top_children",
        "version", "valid_nodes", "valid_recruits", "self_referrals", "inflated",
        "same_origin", "channel_mix", "touch_rows", "dirty_nodes", "dirty_from",
    )  # fmt: skip

    def __init__(
        self,
        campaign: str,
        root: int,
        ts: int,
        *,
        orphan_after_ms: int = 600_000,
        max_pending: int = 10_000,
        forecast_tau_ms: float = 1_800_000.0,
    ) -> None:
        self.campaign = campaign
        self.root = root
        self.orphan_after_ms = orphan_after_ms
        self.max_pending = max_pending
        # Per live node, by index. 4-byte ints: a cascade holds < 2**31 nodes.
        self.index: dict[int, int] = {}  # node id -> index
        self.ids = array("Q")
        self.parent = array("i")
        self.depth = array("H")
        self.size = array("i")  # subtree size within its component
        self.children = array("i")
        self.clicks = array("I")
        self.conversions = array("I")
        self.sharer = array("Q")
        self.net = array("Q")
        self.ts = array("q")
        self.channel = array("H")
        self.flags = bytearray()
        self.channels: list[str | None] = [None]
        self.channel_codes: dict[str | None, int] = {None: 0}
        self.components: dict[int, _Component] = {}  # top index -> component
        self.breadth: list[int] = []
        self.internal = 0  # nodes with at least one child
        self.pending: dict[int, list[Share]] = {}  # missing parent id -> waiting shares
        self.pending_ids: dict[int, Share] = {}
        self.pending_floor = 0  # no pending share is older (event time)
        self.held: dict[int, list[Touch]] = {}  # node id not live yet -> its touches
        self.orphans_of: dict[int, list[int]] = {}  # missing parent id -> orphan indexes
        self.orphan_parent: dict[int, int] = {}  # orphan index -> missing parent id
        self.seen: set[str] = set()  # touch event ids
        self.click_keys: set[tuple[int, int, str, int]] = set()
        self.reach: set[int] = set()
        self.first_ts = ts
        self.last_ts = ts
        self.minutes: dict[int, int] = {}  # event-time minute -> shares
        self.exposure = Exposure(forecast_tau_ms)
        self.top_descendants = _Ranking(enabled=False)
        self.top_children = _Ranking(enabled=False)
        self.version = 0  # footprints recorded: deterministic, restorable
        self.valid_nodes = 0
        self.valid_recruits = 0
        self.self_referrals = 0
        self.inflated = 0
        self.same_origin = 0
        self.channel_mix: dict[tuple[int, str | None], int] = {}
        # What changed since the last drain, for the writer.
        self.touch_rows: list[Touch] = []
        # Live nodes from index ``dirty_from`` on are new since the last drain;
        # ``dirty_nodes`` holds the ids of the others that changed, and of pending
        # shares. A mark, not a set of every new node: in a large cascade an insert
        # of a random 64-bit id into a set is a cache miss per share.
        self.dirty_nodes: set[int] = set()
        self.dirty_from = 0
        # The root exists from the first event on: a tracked link's root token
        # never gets a share event of its own.
        self.version += 1
        self._append(root, NO_NODE, 0, ts, 0, 0, None, 0)
        self.components[0] = _Component()
        self.valid_nodes += 1

    # ---- size ----------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self.ids)

    @property
    def orphans(self) -> int:
        return len(self.components) - 1

    # ---- events --------------------------------------------------------

    def add_share(self, share: Share) -> bool:
        """Apply a ``share``; False for a duplicate. Raises ``ValueError`` on bad lineage."""
        node = share.node
        if node == self.root:
            return self._see_root(share)
        if node in self.index or node in self.pending_ids:
            return False
        depth = share.depth
        if share.parent is None or depth < 1:
            raise ValueError("a non-root share needs a parent and depth >= 1")
        parent = self.index.get(share.parent)
        if parent is not None and self.depth[parent] + 1 != depth:
            raise ValueError("share depth does not follow its parent's")
        self.version += 1
        ts = share.ts
        if ts < self.first_ts:
            self.first_ts = ts
        if ts > self.last_ts:
            self.last_ts = ts
        if parent is None:
            self.dirty_nodes.add(node)  # pending; a live node is new, past ``dirty_from``
            self._hold(share)
        else:
            self._attach(share, parent)
        if self.pending:
            self._expire_pending()
        return True

    def add_touch(self, touch: Touch) -> bool:
        """Apply a view/click/signup/convert; False for a duplicate event id."""
        if touch.event_id in self.seen:
            return False
        self.seen.add(touch.event_id)
        self.version += 1
        ts = touch.ts  # _stamp, inlined here and in add_share: the hot path
        if ts < self.first_ts:
            self.first_ts = ts
        if ts > self.last_ts:
            self.last_ts = ts
        self.touch_rows.append(touch)
        index = self.index.get(touch.node)
        if index is None:
            self.held.setdefault(touch.node, []).append(touch)
        else:
            self._credit(index, touch)
        if self.pending:
            self._expire_pending()
        return True

    def _stamp(self, ts: int) -> None:
        if ts < self.first_ts:
            self.first_ts = ts
        if ts > self.last_ts:
            self.last_ts = ts

    # ---- nodes ---------------------------------------------------------

    def _see_root(self, share: Share) -> bool:
        if self.flags[0] & FLAG_ROOT_SEEN:
            return False
        if share.depth != 0 or share.parent is not None:
            raise ValueError("the root share must have depth 0 and no parent")
        self.version += 1
        self._stamp(share.ts)
        self.dirty_nodes.add(self.root)
        self.flags[0] |= FLAG_ROOT_SEEN
        self.sharer[0] = share.visitor
        self.net[0] = share.net
        old = (0, self.channels[self.channel[0]])
        self.channel_mix[old] -= 1
        self.channel[0] = self._channel_code(share.channel)
        new = (0, share.channel)
        self.channel_mix[new] = self.channel_mix.get(new, 0) + 1
        if share.bot:
            self._exclude(0, FLAG_BOT)
        self._expire_pending()
        return True

    def _channel_code(self, channel: str | None) -> int:
        code = self.channel_codes.get(channel)
        if code is None:
            code = len(self.channels)
            if code > 0xFFFF:
                return 0
            self.channels.append(channel)
            self.channel_codes[channel] = code
        return code

    def _append(
        self,
        node: int,
        parent: int,
        depth: int,
        ts: int,
        visitor: int,
        net: int,
        channel: str | None,
        flags: int,
    ) -> int:
        """A new live node: arrays, breadth, channel mix, growth minutes, exposure."""
        index = len(self.ids)
        self.index[node] = index
        self.ids.append(node)
        self.parent.append(parent)
        self.depth.append(depth)
        self.size.append(1)
        self.children.append(0)
        self.clicks.append(0)
        self.conversions.append(0)
        self.sharer.append(visitor)
        self.net.append(net)
        self.ts.append(ts)
        code = self.channel_codes.get(channel)
        self.channel.append(self._channel_code(channel) if code is None else code)
        self.flags.append(flags)
        breadth = self.breadth
        while len(breadth) <= depth:
            breadth.append(0)
        breadth[depth] += 1
        key = (depth, channel)
        self.channel_mix[key] = self.channel_mix.get(key, 0) + 1
        minute = ts // MINUTE_MS
        self.minutes[minute] = self.minutes.get(minute, 0) + 1
        self.exposure.add(ts)
        if index == RANK_LIVE_FROM:
            self._rank_from_scratch()
        return index

    def _attach(self, share: Share, parent: int) -> None:
        """Make ``share`` live under live node ``parent``, then what waited for it."""
        stack = [(share, parent)]
        while stack:  # iterative: a long chain may have waited
            share, parent = stack.pop()
            visitor, net = share.visitor, share.net
            flags = FLAG_BOT if share.bot else 0
            if (visitor and visitor == self.sharer[parent]) or (net and net == self.net[parent]):
                flags |= FLAG_SAME_ORIGIN
            index = self._append(
                share.node, parent, share.depth, share.ts, visitor, net, share.channel, flags
            )
            self._count_valid(index, parent)
            self._link(index, parent, 1)
            if visitor and not flags & FLAG_BOT:
                self.reach.add(visitor)
            if self.held or self.pending or self.orphans_of:
                stack += self._became_live(share.node, index)

    def _became_live(self, node: int, index: int) -> list[tuple[Share, int]]:
        """Held touches and orphans of the node now live; returns the shares that
        waited for it, to attach under it."""
        held = self.held.pop(node, None)
        if held:
            for touch in held:
                self._credit(index, touch)
        orphans = self.orphans_of.pop(node, None)
        if orphans:
            for orphan in orphans:
                self._adopt(orphan, index)
        waiting = self.pending.pop(node, None)
        if not waiting:
            return []
        for child in waiting:
            del self.pending_ids[child.node]
            self.dirty_nodes.add(child.node)
        return [(child, index) for child in reversed(waiting)]

    def _count_valid(self, index: int, parent: int) -> None:
        flags = self.flags[index]
        if flags & FLAG_SAME_ORIGIN:
            self.same_origin += 1
        if not flags & EXCLUDED:
            self.valid_nodes += 1
            if parent != NO_NODE and not self.flags[parent] & EXCLUDED:
                self.valid_recruits += 1

    def _link(self, index: int, parent: int, m: int) -> None:
        """Hang ``index`` (top of an ``m``-node subtree) under live ``parent``. O(depth).

        Updates subtree sizes, the descendants ranking and the Wiener index of
        the component on the way: for a leaf (m = 1) W grows by the sum of
        distances from the new node to every node; for a merged component by
        its own W plus the cross distances, all from one sum of subtree sizes
        along the path (sizes before the increment).
        """
        parents, sizes, ids, flags = self.parent, self.size, self.ids, self.flags
        ranking = self.top_descendants
        members, floor = ranking.members, ranking.floor_index
        # The walk is the consumer's hottest loop: locals only, and one branch
        # (values below the threshold) for almost every ancestor.
        threshold = ranking.threshold - m + 1  # compare the old size directly
        path = 0
        x = parent
        top = x
        while x != NO_NODE:
            size = sizes[x]
            sizes[x] = size + m
            if size >= threshold and not flags[x] & EXCLUDED:
                if x in members and x != floor:
                    members[x] = size + m - 1  # a member above the floor: no reorder
                else:
                    ranking.bump(x, size + m - 1, ids[x])
                    floor = ranking.floor_index
                    threshold = ranking.threshold - m + 1
            path += size
            top = x
            x = parents[x]
        x = top
        path -= sizes[x] - m  # the top's own size is not on an edge
        component = self.components[x]
        relative = self.depth[parent] - self.depth[x]
        n = component.n
        # Σ over the component's nodes of their distance to ``parent``.
        to_parent = n * relative + component.depth_sum - 2 * path
        sub = self.components.pop(index, None)  # an orphan's component, merged
        sub_wiener, sub_depth_sum = (sub.wiener, sub.depth_sum) if sub else (0, 0)
        component.wiener += sub_wiener + m * (to_parent + n) + n * sub_depth_sum
        component.depth_sum += sub_depth_sum + m * (relative + 1)
        component.n = n + m
        self.parent[index] = parent
        count = self.children[parent]
        if count == 0:
            self.internal += 1
        self.children[parent] = count + 1
        if count + 1 >= self.top_children.threshold and not flags[parent] & EXCLUDED:
            self.top_children.bump(parent, count + 1, ids[parent])

    # ---- pending and orphans -------------------------------------------

    def _hold(self, share: Share) -> None:
        assert share.parent is not None
        if not self.pending_ids or share.ts < self.pending_floor:
            self.pending_floor = share.ts
        self.pending.setdefault(share.parent, []).append(share)
        self.pending_ids[share.node] = share
        if len(self.pending_ids) > self.max_pending:
            oldest = min(self._stranded(), key=_age_order, default=None)
            if oldest is not None:
                self._orphan(oldest)

    def _stranded(self) -> Iterator[Share]:
        """Pending shares whose parent is neither live nor itself pending."""
        pending_ids = self.pending_ids
        for parent, waiting in self.pending.items():
            if parent not in pending_ids:
                yield from waiting

    def _expire_pending(self) -> None:
        cutoff = self.last_ts - self.orphan_after_ms
        if not self.pending or self.pending_floor >= cutoff:
            return
        expired = [share for share in self._stranded() if share.ts < cutoff]
        for share in sorted(expired, key=_age_order):
            self._orphan(share)
        # Shares waiting on a pending parent stay; they set the new floor.
        self.pending_floor = min((s.ts for s in self.pending_ids.values()), default=0)

    def _orphan(self, share: Share) -> None:
        """Make a stranded share live at its recorded depth, as the top of a new component."""
        parent_id = share.parent
        assert parent_id is not None
        waiting = self.pending[parent_id]
        waiting.remove(share)
        if not waiting:
            del self.pending[parent_id]
        del self.pending_ids[share.node]
        self.dirty_nodes.add(share.node)
        index = self._append(
            share.node, NO_NODE, share.depth, share.ts, share.visitor, share.net,
            share.channel, FLAG_BOT if share.bot else 0,
        )  # fmt: skip
        self.components[index] = _Component()
        self.orphans_of.setdefault(parent_id, []).append(index)
        self.orphan_parent[index] = parent_id
        self._count_valid(index, NO_NODE)
        if share.visitor and not share.bot:
            self.reach.add(share.visitor)
        for child, parent in self._became_live(share.node, index):
            self._attach(child, parent)

    def _adopt(self, orphan: int, parent: int) -> None:
        """The missing parent of ``orphan`` is live: merge the orphan's component under it."""
        del self.orphan_parent[orphan]
        self.dirty_nodes.add(self.ids[orphan])
        if self.depth[parent] + 1 != self.depth[orphan]:
            # A forged lineage cannot get here (tokens are signed); keep the orphan apart.
            return
        self._link(orphan, parent, self.components[orphan].n)
        same = (self.sharer[orphan] and self.sharer[orphan] == self.sharer[parent]) or (
            self.net[orphan] and self.net[orphan] == self.net[parent]
        )
        if same:
            self.same_origin += 1
            self._exclude(orphan, FLAG_SAME_ORIGIN)
        elif not self.flags[orphan] & EXCLUDED and not self.flags[parent] & EXCLUDED:
            self.valid_recruits += 1

    def _exclude(self, index: int, flag: int) -> None:
        """Flag a live node after the fact: out of K-factor and rankings. O(n), rare."""
        was_valid = not self.flags[index] & EXCLUDED
        self.flags[index] |= flag
        if not was_valid:
            return
        self.valid_nodes -= 1
        parent = self.parent[index]
        if parent != NO_NODE and not self.flags[parent] & EXCLUDED:
            self.valid_recruits -= 1
        if self.top_descendants.enabled:
            self._rank_from_scratch()

    def _rank_from_scratch(self) -> None:
        self.top_descendants = self._rank_all(self.size, offset=1)
        self.top_children = self._rank_all(self.children, offset=0)

    def rankings(self) -> tuple[_Ranking, _Ranking]:
        """(by descendants, by direct children): kept live, or computed now for a small cascade."""
        if self.top_descendants.enabled:
            return self.top_descendants, self.top_children
        return self._rank_all(self.size, offset=1), self._rank_all(self.children, offset=0)

    def _rank_all(self, values: array[int], offset: int) -> _Ranking:
        ranking = _Ranking()
        ids, flags = self.ids, self.flags
        for i in range(len(ids)):
            value = values[i] - offset
            if value > 0 and value >= ranking.threshold and not flags[i] & EXCLUDED:
                ranking.bump(i, value, ids[i])
        return ranking

    # ---- touches -------------------------------------------------------

    def _credit(self, index: int, touch: Touch) -> None:
        visitor = touch.visitor
        self.dirty_nodes.add(self.ids[index])
        if visitor and visitor == self.sharer[index]:
            self.self_referrals += 1
            return
        if touch.kind in CLICK_KINDS:
            if visitor:
                key = (index, visitor, touch.kind, touch.ts // HOUR_MS)
                if key in self.click_keys:
                    self.inflated += 1
                    return
                self.click_keys.add(key)
            if touch.kind == "click":
                self.clicks[index] += 1
        else:
            self.conversions[index] += 1
        if visitor:
            self.reach.add(visitor)

    # ---- metrics -------------------------------------------------------

    def growth_per_minute(self) -> float:
        """Shares per minute, exponentially smoothed (half-life 5 min) up to the latest event."""
        now = self.last_ts // MINUTE_MS
        total = 0.0
        for minute, count in self.minutes.items():
            age = now - minute
            if 0 <= age < GROWTH_WINDOW_MIN:
                total += count * _GROWTH_DECAY**age
        return total * (1 - _GROWTH_DECAY)

    def rate(self, newest_age: int, oldest_age: int) -> float:
        """Mean shares per minute, minutes ``newest_age..oldest_age-1`` before the latest."""
        if oldest_age <= newest_age:
            return 0.0
        now = self.last_ts // MINUTE_MS
        count = sum(self.minutes.get(now - age, 0) for age in range(newest_age, oldest_age))
        return count / (oldest_age - newest_age)

    def prune_minutes(self) -> None:
        """Forget minutes that can no longer enter the growth window (they only age)."""
        oldest = self.last_ts // MINUTE_MS - GROWTH_WINDOW_MIN
        for minute in [m for m in self.minutes if m < oldest]:
            del self.minutes[minute]

    def forecast(self) -> Forecast:
        return forecast_final_size(self.live, self.exposure.remaining(self.last_ts))

    def stats(self) -> CascadeStats:
        """The metrics as of now (O(depth + K + channels))."""
        main = self.components[0]
        n = main.n
        breadth = list(self.breadth)
        while breadth and breadth[-1] == 0:
            breadth.pop()
        # A generation can be empty when only orphans are below it.
        reproduction = [
            breadth[g + 1] / breadth[g] if breadth[g] else 0.0 for g in range(len(breadth) - 1)
        ]
        live = self.live
        growth = self.growth_per_minute()
        forecast = self.forecast()
        orphans = self.orphans
        descendants, children = self.rankings()
        return CascadeStats(
            campaign=self.campaign,
            root=node_hex(self.root),
            version=self.version,
            size=live,
            tree_size=n,
            pending=len(self.pending_ids),
            orphans=orphans,
            reach=len(self.reach),
            depth=len(breadth) - 1,
            breadth=breadth,
            max_breadth=max(breadth),
            branching=(live - 1 - orphans) / self.internal if self.internal else 0.0,
            reproduction=reproduction,
            clicks=sum(self.clicks),
            conversions=sum(self.conversions),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            growth_per_min=growth,
            doubling_s=math.log(2) * live / growth * 60 if growth > 0 else None,
            wiener=main.wiener,
            virality=2 * main.wiener / (n * (n - 1)) if n > 1 else 0.0,
            valid_nodes=self.valid_nodes,
            valid_recruits=self.valid_recruits,
            self_referrals=self.self_referrals,
            same_origin=self.same_origin,
            inflated=self.inflated,
            forecast_size=forecast.final_size,
            forecast_method=forecast.method,
            infectiousness=forecast.infectiousness,
            top_descendants=[(node_hex(i), v) for i, v in descendants.ordered()],
            top_children=[(node_hex(i), v) for i, v in children.ordered()],
            channel_mix=sorted(
                (depth, channel or "", count)
                for (depth, channel), count in self.channel_mix.items()
                if count
            ),
        )

    # ---- draining changes for the writer --------------------------------

    def drain(self) -> tuple[list[NodeRow], list[Touch]]:
        """Node rows for every node changed since the last drain (by node id), and the
        new touches."""
        changed = self.dirty_nodes
        changed.update(self.ids[self.dirty_from :])
        rows = [self.node_row(node) for node in sorted(changed)]
        touches, self.touch_rows = self.touch_rows, []
        self.dirty_nodes = set()
        self.dirty_from = len(self.ids)
        return rows, touches

    def node_row(self, node: int) -> NodeRow:
        index = self.index.get(node)
        if index is None:
            share = self.pending_ids[node]
            return NodeRow(
                node, share.parent, share.depth, share.ts, share.visitor, share.net,
                share.channel, 0, 0, FLAG_BOT if share.bot else 0, PENDING,
            )  # fmt: skip
        parent = self.parent[index]
        state = ATTACHED
        parent_id: int | None = None
        if parent != NO_NODE:
            parent_id = self.ids[parent]
        elif index != 0:
            state = ORPHAN
            parent_id = self.orphan_parent.get(index)
        return NodeRow(
            node, parent_id, self.depth[index], self.ts[index], self.sharer[index],
            self.net[index], self.channels[self.channel[index]], self.clicks[index],
            self.conversions[index], self.flags[index], state,
        )  # fmt: skip


def _age_order(share: Share) -> tuple[int, int]:
    return (share.ts, share.node)


def node_hex(node: int) -> str:
    return f"{node:016x}"


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One ``cascade_nodes`` row's content (ids as ints; the writer formats them)."""

    node: int
    parent: int | None
    depth: int
    ts: int
    sharer: int
    net: int
    channel: str | None
    clicks: int
    conversions: int
    flags: int
    state: str


@dataclass(slots=True)
class CascadeStats:
    """One ``cascade_stats`` snapshot (see migrations/clickhouse/0005_cascades.sql)."""

    campaign: str
    root: str
    version: int
    size: int
    tree_size: int
    pending: int
    orphans: int
    reach: int
    depth: int
    breadth: list[int]
    max_breadth: int
    branching: float
    reproduction: list[float]
    clicks: int
    conversions: int
    first_ts: int
    last_ts: int
    growth_per_min: float
    doubling_s: float | None
    wiener: int
    virality: float
    valid_nodes: int
    valid_recruits: int
    self_referrals: int
    same_origin: int
    inflated: int
    forecast_size: float | None
    forecast_method: str
    infectiousness: float
    top_descendants: list[tuple[str, int]] = field(default_factory=list)
    top_children: list[tuple[str, int]] = field(default_factory=list)
    channel_mix: list[tuple[int, str, int]] = field(default_factory=list)


def restore(
    campaign: str,
    root: int,
    nodes: Iterable[NodeRow],
    touches: Iterable[Touch],
    **options: Any,
) -> Cascade:
    """Rebuild a cascade from its footprints (``cascade_nodes`` and ``cascade_touches`` rows).

    Replays them as events in an order that reproduces the recorded outcome:
    the root, then the orphans (as orphans), then the attached nodes by depth
    (parents first), the pending ones, and the touches. Every metric is a
    function of these, so the result equals the state of a consumer that
    never stopped, up to float rounding in the forecast's exposure sum.
    ``options`` are ``Cascade`` keyword options. Returns a clean cascade
    (nothing to drain).
    """
    by_state: dict[str, list[NodeRow]] = {ATTACHED: [], PENDING: [], ORPHAN: []}
    root_row: NodeRow | None = None
    for row in nodes:
        if row.node == root:
            root_row = row
        else:
            by_state[row.state].append(row)
    if root_row is None:
        raise ValueError(f"cascade {node_hex(root)} has no root row")
    cascade = Cascade(campaign, root, root_row.ts, **options)
    orphan_after_ms = cascade.orphan_after_ms
    cascade.orphan_after_ms = 2**62  # nothing expires while replaying
    if root_row.flags & FLAG_ROOT_SEEN:
        cascade.add_share(_share(campaign, root, root_row))
    for row in sorted(by_state[ORPHAN], key=lambda r: (r.depth, r.ts, r.node)):
        share = _share(campaign, root, row)
        cascade._hold(share)
        cascade.version += 1
        cascade._orphan(share)
    for row in sorted(by_state[ATTACHED], key=lambda r: (r.depth, r.ts, r.node)):
        cascade.add_share(_share(campaign, root, row))
    for row in by_state[PENDING]:
        cascade.add_share(_share(campaign, root, row))
    for touch in sorted(touches, key=lambda t: (t.ts, t.event_id)):
        cascade.add_touch(touch)
    cascade.orphan_after_ms = orphan_after_ms
    cascade.drain()
    return cascade


def _share(campaign: str, root: int, row: NodeRow) -> Share:
    return Share(
        event_id="",
        campaign=campaign,
        root=root,
        node=row.node,
        parent=row.parent,
        depth=row.depth,
        ts=row.ts,
        visitor=row.sharer,
        net=row.net,
        channel=row.channel,
        bot=bool(row.flags & FLAG_BOT),
    )
