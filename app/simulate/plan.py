"""The simulator's plan: every HTTP action of a run, drawn from one seed, without I/O.

A campaign is a set of *seeds* (influencers) and the share cascades that
grow from them, plus a stream of comments and reactions:

- A seed's follower count is Pareto distributed (``followers_alpha``, from
  ``followers_min``): most seeds are small, a few are huge. Its post reaches
  ``seed_reach`` of its followers.
- Every share is seen by ``views_per_share`` recipients on average (a seed's
  post by its reach), each a ``view`` through the share's token. A viewer
  reshares with probability ``r / views_per_share``, so a share has ``r``
  children on average and a seed ``r * reach / views_per_share``. The
  cascade itself comes from the forecast backtest's branching process
  (``consumers.cascades.simulation.simulate_cascade``: negative-binomial
  offspring with dispersion ``dispersion``, exponential delays of mean
  ``tau_s``, a child keeping its parent's channel with probability 0.6).
- A viewer clicks with probability ``click_through``, a clicker converts
  with probability ``conversion_rate``.
- Comments (in the chosen languages, from ``app.simulate.texts``) and
  reactions arrive as a Poisson stream on recent shares; a share
  ``negative_share`` of them is negative. An optional buzz episode doubles
  the stream for ``buzz_minutes`` and raises the negative share to
  ``buzz_negative_share``.

The plan fits an event budget (``max_events``): ``buzz_fraction`` of it
goes to comments and reactions, the rest to cascades. Without a fixed seed
count, seeds are added until the cascades use their part; with one, each
seed gets an equal part. A cascade over its part keeps its earliest actions.
Times are virtual milliseconds from the start of the plan; the driver maps
them to wall-clock event times. Same config, same plan.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from app.simulate.texts import LANGUAGES, Label, templates
from consumers.cascades.simulation import poisson, simulate_cascade

MINUTE_MS: Final = 60_000
DEFAULT_CHANNEL_MIX: Final = (
    ("whatsapp", 0.35), ("facebook", 0.2), ("email", 0.15), ("x", 0.1), ("telegram", 0.1),
    ("link", 0.1),
)  # fmt: skip
POSITIVE_REACTIONS: Final = ("like", "love", "haha", "wow", "clap")
NEGATIVE_REACTIONS: Final = ("angry", "sad", "thumbsdown")
REACTION_SHARE: Final = 0.2  # of comments and reactions
POSITIVE_OF_REST: Final = 0.6  # of the comments that are not negative; the rest are neutral
BUZZ_BOOST: Final = 2.0  # comment and reaction rate during the buzz episode
MAX_VIEWERS: Final = 2_000  # per share: keeps a mega-influencer's post inside a budget
MAX_AUTO_SEEDS: Final = 1_000
SEED_START_SPREAD: Final = 0.6  # seeds start within this fraction of the span
RECENT_SHARES: Final = 100  # a comment lands on one of the latest shares
MEAN_ORDER_VALUE: Final = 40.0


@dataclass(frozen=True)
class SimConfig:
    """What to simulate (see the module docstring). ``span_s`` is virtual seconds."""

    campaigns: tuple[str, ...] = ("demo",)
    span_s: float = 60.0
    max_events: int = 2_700
    seeds: int | None = None
    r: float = 0.8
    dispersion: float = 1.0
    tau_s: float | None = None  # None: span_s / 20
    channels: tuple[tuple[str, float], ...] = DEFAULT_CHANNEL_MIX
    languages: tuple[tuple[str, float], ...] = tuple((lang, 1.0) for lang in LANGUAGES)
    views_per_share: float = 8.0
    click_through: float = 0.1
    conversion_rate: float = 0.05
    followers_min: float = 2_000.0
    followers_alpha: float = 1.5
    seed_reach: float = 0.005
    buzz_fraction: float = 0.25
    negative_share: float = 0.1
    buzz_episode: bool = False
    buzz_negative_share: float = 0.75
    buzz_minutes: float = 3.0
    buzz_start: float = 0.7  # fraction of the span
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "campaigns": bool(self.campaigns),
            "span_s": self.span_s > 0,
            "max_events": self.max_events >= 1,
            "seeds": self.seeds is None or self.seeds >= 1,
            "r": self.r > 0,
            "dispersion": self.dispersion > 0,
            "tau_s": self.tau_s is None or self.tau_s > 0,
            "channels": bool(self.channels) and all(w >= 0 for _, w in self.channels)
            and sum(w for _, w in self.channels) > 0,
            "languages": bool(self.languages)
            and all(lang in LANGUAGES and w >= 0 for lang, w in self.languages)
            and sum(w for _, w in self.languages) > 0,
            "views_per_share": self.views_per_share > 0,
            "click_through": 0 <= self.click_through <= 1,
            "conversion_rate": 0 <= self.conversion_rate <= 1,
            "followers_min": self.followers_min >= 1,
            "followers_alpha": self.followers_alpha > 0,
            "seed_reach": 0 < self.seed_reach <= 1,
            "buzz_fraction": 0 <= self.buzz_fraction < 1,
            "negative_share": 0 <= self.negative_share <= 1,
            "buzz_negative_share": 0 <= self.buzz_negative_share <= 1,
            "buzz_minutes": self.buzz_minutes > 0,
            "buzz_start": 0 <= self.buzz_start < 1,
        }  # fmt: skip
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid simulation settings: {', '.join(bad)}")

    @property
    def span_ms(self) -> int:
        return round(self.span_s * 1000)

    @property
    def mean_delay_s(self) -> float:
        """Mean delay of a reshare after its parent (and of a view after its share)."""
        return self.tau_s if self.tau_s is not None else self.span_s / 20


# -- actions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Share:
    """``POST /v1/shares``: ``node`` shared by ``sharer``, a child of ``parent`` (None: a
    seed). ``recipient`` is the sharer's browser (a reshare's sharer viewed the parent)."""

    at_ms: int
    campaign: str
    node: int
    parent: int | None
    depth: int
    channel: str
    sharer: str
    recipient: int

    @property
    def type(self) -> str:
        return "share"


@dataclass(frozen=True, slots=True)
class Touch:
    """A recipient's ``view`` or ``click`` through share ``node``: the pixel, or a
    tracked link for clicks. ``recipient`` tells recipients (browsers) apart."""

    at_ms: int
    campaign: str
    node: int
    type: Literal["view", "click"]
    channel: str
    recipient: int


@dataclass(frozen=True, slots=True)
class Event:
    """A ``comment``, ``reaction`` or ``convert`` for ``POST /v1/events`` (batched).

    ``label`` is what a comment or reaction is meant to read as; ``lang`` its language.
    """

    at_ms: int
    campaign: str
    node: int | None
    type: Literal["comment", "reaction", "convert"]
    channel: str | None
    text: str | None = None
    reaction: str | None = None
    value: float | None = None
    lang: str | None = None
    label: Label | None = None


Action = Share | Touch | Event


@dataclass(frozen=True, slots=True)
class Seed:
    campaign: str
    node: int
    followers: int


@dataclass(frozen=True)
class Plan:
    """The actions of a run in time order (a share always before what uses its token)."""

    config: SimConfig
    actions: tuple[Action, ...]
    seeds: tuple[Seed, ...]
    buzz_window_ms: tuple[int, int] | None

    def count_by_type(self) -> Counter[str]:
        return Counter(action.type for action in self.actions)


@dataclass
class _Ids:
    """Plan-wide counters: share nodes and recipients get small unique ints."""

    node: int = 0
    recipient: int = 0
    by_sim_node: dict[int, int] = field(default_factory=dict)

    def next_node(self) -> int:
        self.node += 1
        return self.node

    def next_recipient(self) -> int:
        self.recipient += 1
        return self.recipient


# -- planning ------------------------------------------------------------------


def make_plan(config: SimConfig) -> Plan:
    """The plan of ``config``: deterministic for a given config (``seed`` included)."""
    ids = _Ids()
    actions: list[Action] = []
    seeds: list[Seed] = []
    per_campaign = config.max_events / len(config.campaigns)
    cascade_budget = max(1, math.floor(per_campaign * (1 - config.buzz_fraction)))
    buzz_budget = math.floor(per_campaign) - cascade_budget
    window = _buzz_window(config)
    for campaign in config.campaigns:
        # A stream per campaign: one campaign's draws never shift another's.
        rng = random.Random(f"{config.seed}:{campaign}")
        cascades, campaign_seeds = _cascades(rng, config, campaign, cascade_budget, ids)
        shares = sorted(
            (a for a in cascades if isinstance(a, Share)), key=lambda share: share.at_ms
        )
        actions += cascades
        actions += _buzz(rng, config, campaign, shares, buzz_budget, window)
        seeds += campaign_seeds
    actions.sort(key=lambda action: action.at_ms)  # stable: a share stays before its uses
    return Plan(config, tuple(actions), tuple(seeds), window)


def _buzz_window(config: SimConfig) -> tuple[int, int] | None:
    if not config.buzz_episode:
        return None
    start = round(config.span_ms * config.buzz_start)
    return start, min(config.span_ms, start + round(config.buzz_minutes * MINUTE_MS))


def followers(rng: random.Random, config: SimConfig) -> int:
    """A seed's follower count: Pareto(``followers_alpha``) from ``followers_min``."""
    return round(config.followers_min * rng.paretovariate(config.followers_alpha))


def _cascades(
    rng: random.Random, config: SimConfig, campaign: str, budget: int, ids: _Ids
) -> tuple[list[Action], list[Seed]]:
    actions: list[Action] = []
    seeds: list[Seed] = []
    fixed = config.seeds
    while len(seeds) < (fixed or MAX_AUTO_SEEDS) and (fixed or len(actions) < budget):
        start = 0 if not seeds else round(rng.uniform(0, SEED_START_SPREAD) * config.span_ms)
        part = max(1, budget // fixed) if fixed else budget - len(actions)
        cascade, seed = _cascade(rng, config, campaign, len(seeds), start, part, ids)
        actions += cascade
        seeds.append(seed)
    return actions, seeds


def _cascade(
    rng: random.Random, config: SimConfig, campaign: str, index: int, start_ms: int,
    budget: int, ids: _Ids,
) -> tuple[list[Action], Seed]:  # fmt: skip
    """One seed's cascade with its views, clicks and conversions, at most ``budget`` actions."""
    count = followers(rng, config)
    root_viewers = min(count * config.seed_reach, MAX_VIEWERS)
    root_r = config.r * root_viewers / config.views_per_share
    names = [name for name, _ in config.channels]
    weights = [weight for _, weight in config.channels]
    sims = simulate_cascade(
        rng, r=config.r, tau_s=config.mean_delay_s, start_ms=start_ms, max_size=budget,
        channels=names, channel_weights=weights, dispersion=config.dispersion, root_r=root_r,
    )  # fmt: skip
    sims = [sim for sim in sims if sim.ts_ms <= config.span_ms]
    shares: list[Share] = []
    for sim in sims:
        node = ids.by_sim_node[sim.node] = ids.next_node()
        recipient = ids.next_recipient()
        sharer = f"{campaign}-seed-{index}" if sim.parent is None else f"r{recipient}"
        parent = None if sim.parent is None else ids.by_sim_node[sim.parent]
        shares.append(
            Share(sim.ts_ms, campaign, node, parent, sim.depth, sim.channel, sharer, recipient)
        )
    children: dict[int, list[Share]] = {}
    for share in shares:
        if share.parent is not None:
            children.setdefault(share.parent, []).append(share)
    actions: list[Action] = list(shares)
    for share in shares:
        kids = children.get(share.node, [])
        mean_viewers, mean_kids = (
            (root_viewers, root_r) if share.parent is None else (config.views_per_share, config.r)
        )
        # Whoever reshared saw the share first; the other viewers come at their own pace.
        viewers = [
            (kid.recipient, share.at_ms + round(rng.random() * (kid.at_ms - share.at_ms)))
            for kid in kids
        ]
        for _ in range(poisson(rng, max(mean_viewers - mean_kids, 0.0))):
            at = share.at_ms + _delay_ms(rng, config.mean_delay_s)
            viewers.append((ids.next_recipient(), at))
        for recipient, at in viewers:
            actions += _funnel(rng, config, share, recipient, at)
    actions = [a for a in actions if a.at_ms <= config.span_ms]
    actions.sort(key=lambda action: action.at_ms)
    return actions[:budget], Seed(campaign, shares[0].node, count)


def _funnel(
    rng: random.Random, config: SimConfig, share: Share, recipient: int, at: int
) -> list[Action]:
    """A viewer's view, and maybe a click and a conversion after it."""
    out: list[Action] = [Touch(at, share.campaign, share.node, "view", share.channel, recipient)]
    if rng.random() < config.click_through:
        at += _delay_ms(rng, min(config.mean_delay_s / 10, 30.0))
        out.append(Touch(at, share.campaign, share.node, "click", share.channel, recipient))
        if rng.random() < config.conversion_rate:
            at += _delay_ms(rng, config.mean_delay_s / 2)
            value = round(rng.lognormvariate(math.log(MEAN_ORDER_VALUE), 0.6), 2)
            out.append(Event(at, share.campaign, share.node, "convert", share.channel, value=value))
    return out


def _delay_ms(rng: random.Random, mean_s: float) -> int:
    return round(rng.expovariate(1.0 / mean_s) * 1000)


def _buzz(
    rng: random.Random, config: SimConfig, campaign: str, shares: Sequence[Share], budget: int,
    window: tuple[int, int] | None,
) -> list[Action]:  # fmt: skip
    """Comments and reactions: a Poisson stream (thinned for the buzz episode) on recent shares."""
    if budget <= 0:
        return []
    episode_ms = window[1] - window[0] if window else 0
    base_per_ms = budget / (config.span_ms + (BUZZ_BOOST - 1) * episode_ms)
    peak_per_ms = base_per_ms * (BUZZ_BOOST if window else 1.0)
    times = [share.at_ms for share in shares]
    langs = [lang for lang, _ in config.languages]
    lang_weights = [weight for _, weight in config.languages]
    out: list[Action] = []
    t = 0.0
    while len(out) < budget:
        t += rng.expovariate(peak_per_ms)
        if t > config.span_ms:
            break
        at = int(t)
        in_episode = window is not None and window[0] <= at < window[1]
        if not in_episode and window is not None and rng.random() >= 1 / BUZZ_BOOST:
            continue  # thinning: outside the episode the rate is the base rate
        negative = rng.random() < (
            config.buzz_negative_share if in_episode else config.negative_share
        )
        live = bisect.bisect_right(times, at)
        share = rng.choice(shares[max(0, live - RECENT_SHARES) : live]) if live else None
        node, channel = (share.node, share.channel) if share else (None, None)
        if rng.random() < REACTION_SHARE:
            reaction = rng.choice(NEGATIVE_REACTIONS if negative else POSITIVE_REACTIONS)
            label: Label = "negative" if negative else "positive"
            out.append(Event(at, campaign, node, "reaction", channel, reaction=reaction,
                             label=label))  # fmt: skip
            continue
        if negative:
            label = "negative"
        else:
            label = "positive" if rng.random() < POSITIVE_OF_REST else "neutral"
        lang = rng.choices(langs, lang_weights)[0]
        text = templates(lang).make(rng, label)
        out.append(Event(at, campaign, node, "comment", channel, text=text, lang=lang,
                         label=label))  # fmt: skip
    return out
