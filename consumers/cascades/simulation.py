"""Seeded share-cascade simulator (pure, stdlib only), for benchmarks and tests.

A cascade is a Galton-Watson branching process in continuous time: every
share (node) has a number of children drawn from a negative binomial with
mean ``r`` and dispersion ``k`` (a Poisson whose mean is Gamma(k, r / k)
distributed: variance ``r + r**2 / k``; ``k = inf`` is a plain Poisson),
each child shares an Exp(mean ``tau_s``) delay after its parent. With
``r < 1`` the process dies out with probability 1, after ``1 / (1 - r)``
shares on average (heavy-tailed); ``max_size`` caps it in any case, keeping
the earliest shares. A child keeps its parent's channel with probability
0.6, else draws one (uniformly, or by ``channel_weights``; it may be the
parent's again).

This is the forecast's own model (``consumers.cascades.forecast``: mean
offspring ``r``, exponential delays) plus what the forecast ignores:
overdispersed offspring, per-cascade ``r`` and influencer roots
(``simulate_campaign``). Real cascades differ more (audiences, time of day,
saturation); do not read a backtest on this data as a field result.

``viraltrace simulate`` (``app/simulate``) drives a running instance with
cascades from this same model.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

CHANNELS: tuple[str, ...] = ("whatsapp", "facebook", "x", "telegram", "email", "link")
KEEP_CHANNEL = 0.6
R_CAP = 0.97


@dataclass(frozen=True, slots=True)
class SimShare:
    """One simulated share; ``parent`` is ``None`` for the root (``depth`` 0)."""

    node: int
    parent: int | None
    depth: int
    ts_ms: int
    channel: str


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson(``mean``) draw (Knuth's product method, in chunks of mean <= 30)."""
    count = 0
    while mean > 0.0:
        chunk = min(mean, 30.0)
        mean -= chunk
        limit = math.exp(-chunk)
        product = rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
    return count


def negative_binomial(rng: random.Random, mean: float, dispersion: float) -> int:
    """A draw with mean ``mean`` and variance ``mean + mean**2 / dispersion``."""
    if mean <= 0.0:
        return 0
    if math.isinf(dispersion):
        return poisson(rng, mean)
    return poisson(rng, rng.gammavariate(dispersion, mean / dispersion))


def _new_id(rng: random.Random, used: set[int]) -> int:
    while True:
        node = rng.getrandbits(63)
        if node and node not in used:
            used.add(node)
            return node


def _simulate(
    rng: random.Random,
    used: set[int],
    *,
    r: float,
    root_r: float,
    tau_s: float,
    start_ms: int,
    max_size: int,
    channels: Sequence[str],
    dispersion: float,
    channel_weights: Sequence[float] | None = None,
) -> list[SimShare]:
    def draw_channel() -> str:
        # Unweighted draws stay rng.choice, so seeded benchmarks keep their cascades.
        if channel_weights is None:
            return rng.choice(channels)
        return rng.choices(channels, channel_weights)[0]

    root = SimShare(_new_id(rng, used), None, 0, start_ms, draw_channel())
    out: list[SimShare] = []
    # Shares not yet emitted, earliest first; ``seq`` breaks ties in time so
    # that a parent (pushed earlier) always precedes its children.
    pending: list[tuple[int, int, SimShare]] = [(root.ts_ms, 0, root)]
    seq = 1
    while pending and len(out) < max_size:
        _, _, share = heapq.heappop(pending)
        out.append(share)
        mean = root_r if share.parent is None else r
        for _ in range(negative_binomial(rng, mean, dispersion)):
            delay_ms = round(rng.expovariate(1.0 / tau_s) * 1000.0)
            channel = share.channel if rng.random() < KEEP_CHANNEL else draw_channel()
            child = SimShare(
                _new_id(rng, used), share.node, share.depth + 1, share.ts_ms + delay_ms, channel
            )
            heapq.heappush(pending, (child.ts_ms, seq, child))
            seq += 1
    return out


def simulate_cascade(
    rng: random.Random,
    *,
    r: float,
    tau_s: float,
    start_ms: int,
    max_size: int = 100_000,
    channels: Sequence[str] = CHANNELS,
    dispersion: float = 1.0,
    root_r: float | None = None,
    channel_weights: Sequence[float] | None = None,
) -> list[SimShare]:
    """One cascade, root first, in time order (ties: parents before children).

    ``r``: mean children per share (``r < 1`` for a cascade that ends by
    itself; any ``r`` stops at ``max_size`` shares). ``tau_s``: mean delay
    of a child after its parent, seconds. ``dispersion``: the negative
    binomial's ``k`` (1.0: geometric-like, many shares with no child and a
    few with many; ``math.inf``: Poisson). ``root_r``: the root's mean
    children if not ``r`` (an influencer). ``channel_weights``: relative
    weights of ``channels`` (default: uniform). Deterministic for a given
    ``rng`` state; node ids are random non-zero 63-bit ints, unique within
    the cascade.
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    return _simulate(
        rng,
        set(),
        r=r,
        root_r=r if root_r is None else root_r,
        tau_s=tau_s,
        start_ms=start_ms,
        max_size=max_size,
        channels=channels,
        dispersion=dispersion,
        channel_weights=channel_weights,
    )


@dataclass(frozen=True, slots=True)
class CascadePlan:
    """What ``simulate_campaign`` draws for one cascade before simulating it."""

    start_ms: int
    r: float
    root_r: float


def plan_campaign(
    rng: random.Random,
    *,
    cascades: int,
    r: float,
    start_ms: int,
    span_s: float,
    r_sigma: float = 0.25,
    influencer_share: float = 0.02,
    influencer_offspring: float = 20.0,
) -> list[CascadePlan]:
    """Start time, ``r`` and root ``r`` of each cascade of a campaign, by start time.

    Starts are uniform over ``[start_ms, start_ms + span_s]``. Each cascade
    has its own ``r``: the given mean times lognormal(0, ``r_sigma``),
    capped at 0.97 (so every cascade ends by itself). A share
    ``influencer_share`` of the roots (at least one when ``cascades >= 10``
    and the share is positive) are influencers, whose root has
    ``influencer_offspring`` children on average.
    """
    influencers = round(cascades * influencer_share)
    if cascades >= 10 and influencer_share > 0:
        influencers = max(influencers, 1)
    chosen = set(rng.sample(range(cascades), min(influencers, cascades)))
    starts = sorted(start_ms + round(rng.uniform(0.0, span_s) * 1000.0) for _ in range(cascades))
    plans = []
    for index, start in enumerate(starts):
        cascade_r = min(r * rng.lognormvariate(0.0, r_sigma), R_CAP)
        root_r = influencer_offspring if index in chosen else cascade_r
        plans.append(CascadePlan(start, cascade_r, root_r))
    return plans


def simulate_campaign(
    rng: random.Random,
    *,
    cascades: int,
    r: float,
    tau_s: float,
    start_ms: int,
    span_s: float,
    max_size: int = 100_000,
    channels: Sequence[str] = CHANNELS,
    dispersion: float = 1.0,
    r_sigma: float = 0.25,
    influencer_share: float = 0.02,
    influencer_offspring: float = 20.0,
) -> list[list[SimShare]]:
    """``cascades`` cascades of one campaign, sorted by start time (see ``plan_campaign``).

    Node ids are unique across the whole campaign. Deterministic for a
    given ``rng`` state.
    """
    plans = plan_campaign(
        rng,
        cascades=cascades,
        r=r,
        start_ms=start_ms,
        span_s=span_s,
        r_sigma=r_sigma,
        influencer_share=influencer_share,
        influencer_offspring=influencer_offspring,
    )
    used: set[int] = set()
    return [
        _simulate(
            rng,
            used,
            r=plan.r,
            root_r=plan.root_r,
            tau_s=tau_s,
            start_ms=plan.start_ms,
            max_size=max_size,
            channels=channels,
            dispersion=dispersion,
        )
        for plan in plans
    ]
