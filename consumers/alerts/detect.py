"""Alert detection: pure state machines over event time, no I/O.

Buzz (per campaign): scored texts land in per-minute buckets by their event
time. A campaign's watermark trails its newest event by ``out_of_order_s``;
when it passes the end of a minute, that minute *closes*: the baselines
(EWMA mean and variance, half-life ``baseline_halflife_min``) take its
counts, and open alerts are re-checked on closed minutes only, so they
resolve on complete data. Opening is checked on every item against the
trailing window that includes the still-open minute (early firing), so a
spike alerts within seconds of event time, not at the minute's end; the
partial minute's expected volume is scaled by how much of it has elapsed,
and the negative share's variance includes the binomial term for the
window's volume, so a small partial window cannot fake a spike.

- ``buzz.negative_spike``: negative share of the window's volume, as a
  z-score against the baseline share.
- ``buzz.volume_spike``: the window's volume, as a z-score against the
  expected volume.
- ``buzz.negative_velocity``: negative shares (share events whose caption
  scored negative) per positive share in the window, (n + 1) / (p + 1).

Every kind has hysteresis (opens at ``open``, resolves below ``resolve``), a
minimum volume and a cooldown after it resolves, in event time. Spread
signals (already edge-triggered by the cascades consumer) are grouped per
campaign and kind: the alert opens with the first open subject (a cascade,
or the campaign for ``spread.viral``) whose value reaches the rule's ``open``
(default: any) outside the cooldown, and resolves when no subject is open.

Alert ids are ``kind:campaign:opened_at``: the same input gives the same id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from app.db.models import BUZZ_ALERT_KINDS, SPREAD_ALERT_KINDS

MINUTE_MS = 60_000

BUZZ_KINDS = BUZZ_ALERT_KINDS
SPREAD_KINDS = SPREAD_ALERT_KINDS
Label = Literal["negative", "neutral", "positive"]

# A baseline share below this is treated as this, so one negative comment in a
# campaign that never had one is not an infinite z-score.
MIN_BASELINE_SHARE = 0.02
# Baselines learn from a closed minute at most this many deviations from them.
CLIP_Z = 3.0
# buzz.negative_velocity opens only when negative shares outpace positive ones
# by this many standard deviations (a one-sided binomial z).
VELOCITY_Z = 3.0
# Longer quiet gaps than this restart the baselines instead of decaying them minute by minute.
MAX_GAP_MIN = 7 * 24 * 60


@dataclass(frozen=True, slots=True)
class Rule:
    """The effective thresholds of one kind for one campaign."""

    open: float
    resolve: float
    window_min: int
    min_volume: int
    cooldown_ms: int
    enabled: bool = True


class BuzzItem(NamedTuple):
    """One scored text, reaction, report or unsubscribe (from the buzz consumer)."""

    event_id: str
    campaign: str
    type: str
    root: str | None
    node: str | None
    channel: str | None
    ts: int
    received_at: int
    label: Label
    score: float
    lang: str
    terms: tuple[str, ...]
    sample: str


@dataclass(slots=True)
class Minute:
    volume: int = 0
    negative: int = 0
    positive: int = 0
    negative_shares: int = 0
    positive_shares: int = 0

    def add(self, label: str, is_share: bool) -> None:
        self.volume += 1
        if label == "negative":
            self.negative += 1
            self.negative_shares += is_share
        elif label == "positive":
            self.positive += 1
            self.positive_shares += is_share

    def merge(self, other: Minute, weight: float = 1.0) -> None:
        """Add ``other``'s counts, scaled by ``weight`` (rounded) for a prorated minute."""
        self.volume += round(other.volume * weight)
        self.negative += round(other.negative * weight)
        self.positive += round(other.positive * weight)
        self.negative_shares += round(other.negative_shares * weight)
        self.positive_shares += round(other.positive_shares * weight)


class Ewma:
    """Exponentially weighted mean and variance (Finch 2009, incremental form).

    The weight of the n-th observation is ``max(alpha, 1/n)``: until the window
    has filled, the mean and variance are the plain running ones (Welford), so
    a partial or odd first minute is averaged away instead of dominating the
    baseline for an hour (an unweighted start is what a fixed alpha would give).
    """

    __slots__ = ("alpha", "mean", "var", "n", "memory")

    def __init__(self, halflife: float) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        # How many observations the mean effectively averages, once warmed up.
        self.memory = (2.0 - self.alpha) / self.alpha
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1
        weight = max(self.alpha, 1.0 / self.n)
        delta = x - self.mean
        step = weight * delta
        self.mean += step
        self.var = (1.0 - weight) * (self.var + delta * step)


@dataclass(slots=True)
class Transition:
    """An alert opening or resolving; what is stored and delivered."""

    id: str
    kind: str
    campaign: str
    state: Literal["open", "resolved"]
    opened_at: int
    resolved_at: int | None
    value: float
    baseline: float
    threshold: float
    window_start: int
    window_end: int
    numbers: dict[str, Any] = field(default_factory=dict)
    subjects: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class OpenAlert:
    id: str
    opened_at: int
    value: float
    baseline: float
    threshold: float


@dataclass(slots=True)
class KindState:
    """One kind of one campaign: its open alert and its cooldown."""

    open: OpenAlert | None = None
    quiet_until: int = 0  # event time before which it may not open again
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)  # spread only


class Measure(NamedTuple):
    value: float
    baseline: float
    z: float  # the value compared with the rule (a z-score or a ratio)
    volume: int
    evidence: bool = True  # False: the value is not beyond chance (may not open)


class CampaignBuzz:
    """One campaign's minutes, baselines and alert states. Not thread-safe; pure."""

    def __init__(self, campaign: str, *, halflife_min: float, out_of_order_ms: int,
                 max_lateness_ms: int, warmup_min: int, keep_min: int) -> None:  # fmt: skip
        self.campaign = campaign
        self.out_of_order_ms = out_of_order_ms
        self.max_lateness_ms = max_lateness_ms
        self.warmup_min = warmup_min
        self.keep_min = keep_min
        self.halflife_min = halflife_min
        self.minutes: dict[int, Minute] = {}
        self.max_ts: int | None = None
        self.closed_to = 0  # minutes below this index are closed
        self.volume = Ewma(halflife_min)
        self.negative = Ewma(halflife_min)
        self.excess = Ewma(halflife_min)  # between-minute variance of the share beyond binomial
        self.negative_shares = Ewma(halflife_min)
        self.positive_shares = Ewma(halflife_min)
        self.warm = 0  # closed minutes with volume
        self.kinds: dict[str, KindState] = {}

    # ---- time ----------------------------------------------------------------

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.out_of_order_ms

    def too_late(self, ts: int) -> bool:
        """True for an item the windows no longer take (older than the lateness bound)."""
        mark = self.watermark
        return mark is not None and ts < mark - self.max_lateness_ms

    def kind(self, kind: str) -> KindState:
        state = self.kinds.get(kind)
        if state is None:
            state = self.kinds[kind] = KindState()
        return state

    # ---- buzz ----------------------------------------------------------------

    def add(self, item: BuzzItem, rules: dict[str, Rule]) -> list[Transition]:
        """Count one item (the caller dedupes, checks ``too_late``); the transitions it causes."""
        minute_index = item.ts // MINUTE_MS
        minute = self.minutes.get(minute_index)
        if minute is None:
            minute = self.minutes[minute_index] = Minute()
        minute.add(item.label, item.type == "share")
        out: list[Transition] = []
        if self.max_ts is None or item.ts > self.max_ts:
            self.advance(item.ts, rules, out)
        self._check_open(rules, out)
        return out

    def advance(self, ts: int, rules: dict[str, Rule], out: list[Transition]) -> None:
        """Move the newest event time to ``ts``; close the minutes the watermark passes."""
        first = self.max_ts is None
        self.max_ts = ts
        mark = ts - self.out_of_order_ms
        end = mark // MINUTE_MS  # minutes below this have ended
        if first:
            self.closed_to = min(self.minutes, default=end)
        if end - self.closed_to > MAX_GAP_MIN:
            self._restart_baselines(end)
        while self.closed_to < end:
            self._close(self.closed_to, rules, out)
            self.closed_to += 1
        for old in [m for m in self.minutes if m < end - self.keep_min]:
            del self.minutes[old]

    def _restart_baselines(self, end: int) -> None:
        for name in ("volume", "negative", "excess", "negative_shares", "positive_shares"):
            setattr(self, name, Ewma(self.halflife_min))
        self.warm = 0
        self.closed_to = max(end - self.keep_min, self.closed_to)

    def close_minute(self, minute: Minute) -> None:
        """Feed one closed minute's counts to the baselines (also used to restore them).

        Winsorized: a minute further than ``CLIP_Z`` deviations from its
        baseline counts as exactly that far, so one spike cannot teach the
        baseline that spikes are normal (and hide the next one); a lasting
        shift still moves it, a bounded step per minute.
        """
        share0 = self.baseline_share()
        volume = float(minute.volume)
        if self.volume.n:
            spread = CLIP_Z * math.sqrt(max(self.volume.mean, self.volume.var, 1.0))
            volume = min(max(volume, self.volume.mean - spread), self.volume.mean + spread)
        negative = float(minute.negative)
        if minute.volume and share0 is not None:
            share = minute.negative / minute.volume
            binomial = max(share0, MIN_BASELINE_SHARE) * (1 - share0) / minute.volume
            limit = CLIP_Z * math.sqrt(binomial + max(self.excess.mean, 0.0))
            residual = min(max(share - share0, -limit), limit)
            # The clipped share, at the clipped volume.
            negative = (share0 + residual) * volume
            self.excess.update(residual**2 - binomial)
        elif minute.volume:
            negative = minute.negative * volume / minute.volume
        self.volume.update(volume)
        self.negative.update(negative)
        self.negative_shares.update(minute.negative_shares)
        self.positive_shares.update(minute.positive_shares)
        if minute.volume:
            self.warm += 1

    def _close(self, index: int, rules: dict[str, Rule], out: list[Transition]) -> None:
        # Resolve on the window that ends with this complete minute, before it joins
        # the baseline it is judged against.
        for kind in BUZZ_KINDS:
            state = self.kinds.get(kind)
            rule = rules[kind]
            if state is None or state.open is None:
                continue
            measure = self.measure(kind, rule, index, partial=None)
            below = measure is None or measure.z < rule.resolve or not rule.enabled
            if below:
                end = (index + 1) * MINUTE_MS
                out.append(self._resolve(kind, state, rule, end, measure))
        self.close_minute(self.minutes.get(index) or Minute())

    def baseline_share(self) -> float | None:
        if self.volume.n == 0 or self.volume.mean <= 0:
            return None
        return self.negative.mean / self.volume.mean

    def window(self, last: int, length: int, partial: float | None = None) -> tuple[Minute, float]:
        """Counts of the ``length`` minutes ending with minute ``last``, and their span in minutes.

        With ``partial`` (the elapsed fraction of the open minute ``last``) the
        window slides: the oldest minute counts for the part of it still inside
        (its counts prorated), so a window is always ``length`` minutes long
        and a spike is not diluted by the clock position.
        """
        total = Minute()
        for index in range(last - length + 1, last + 1):
            minute = self.minutes.get(index)
            if minute is not None:
                total.merge(minute)
        if partial is None:
            return total, float(length)
        oldest = self.minutes.get(last - length)
        if oldest is not None:
            total.merge(oldest, 1.0 - partial)
        return total, float(length)

    def measure(self, kind: str, rule: Rule, last: int, partial: float | None) -> Measure | None:
        """The kind's value over the ``rule.window_min`` minutes ending with minute ``last``.

        ``partial`` is the elapsed fraction of minute ``last`` when it is still
        open (None: complete). None when there is no baseline yet.
        """
        counts, span = self.window(last, rule.window_min, partial)
        if kind == "buzz.negative_velocity":
            negative, positive = counts.negative_shares, counts.positive_shares
            ratio = (negative + 1) / (positive + 1)
            base = (self.negative_shares.mean * span + 1) / (self.positive_shares.mean * span + 1)
            # Evidence that negative shares outpace positive ones beyond chance: a
            # one-sided binomial z of the negative fraction of polar shares against
            # an even split (or the campaign's usual split, if more negative).
            polar = negative + positive
            usual = base / (1 + base)
            even = max(0.5, usual)
            z = (negative / polar - even) / math.sqrt(even * (1 - even) / polar) if polar else 0.0
            return Measure(ratio, base, ratio, negative, z >= VELOCITY_Z)
        if self.warm < self.warmup_min:
            return None
        if kind == "buzz.volume_spike":
            expected = self.volume.mean * span
            variance = max(expected, self.volume.var * span, 1.0)
            z = (counts.volume - expected) / math.sqrt(variance)
            return Measure(counts.volume, expected, z, counts.volume)
        share0 = self.baseline_share()
        if share0 is None or counts.volume == 0:
            return None
        share = counts.negative / counts.volume
        floor = max(share0, MIN_BASELINE_SHARE)
        # The window's sampling noise, the baseline's own uncertainty (it is an
        # estimate from finitely many items), and between-minute variation,
        # which averages out over the window's minutes.
        baseline_items = max(1.0, self.volume.mean * min(self.volume.n, self.volume.memory))
        variance = (
            floor * (1 - floor) * (1 / counts.volume + 1 / baseline_items)
            + max(self.excess.mean, 0.0) / span
        )
        return Measure(share, share0, (share - share0) / math.sqrt(variance), counts.volume)

    def _check_open(self, rules: dict[str, Rule], out: list[Transition]) -> None:
        assert self.max_ts is not None
        now = self.max_ts
        last = now // MINUTE_MS
        partial = (now % MINUTE_MS + 1) / MINUTE_MS
        for kind in BUZZ_KINDS:
            rule = rules[kind]
            if not rule.enabled:
                continue
            state = self.kind(kind)
            if state.open is not None or now < state.quiet_until:
                continue
            measure = self.measure(kind, rule, last, partial)
            if (
                measure is None
                or measure.volume < rule.min_volume
                or measure.z < rule.open
                or not measure.evidence
            ):
                continue
            state.open = OpenAlert(alert_id(kind, self.campaign, now), now, measure.value,
                                   measure.baseline, rule.open)  # fmt: skip
            start = (last - rule.window_min + 1) * MINUTE_MS
            out.append(Transition(
                state.open.id, kind, self.campaign, "open", now, None, measure.value,
                measure.baseline, rule.open, start, now, _numbers(measure, rule),
            ))  # fmt: skip

    def _resolve(
        self, kind: str, state: KindState, rule: Rule, at: int, measure: Measure | None
    ) -> Transition:
        alert = state.open
        assert alert is not None
        state.open = None
        state.quiet_until = at + rule.cooldown_ms
        value = alert.value if measure is None else measure.value
        baseline = alert.baseline if measure is None else measure.baseline
        numbers = {"opened_value": alert.value}
        if measure is not None:
            numbers.update(_numbers(measure, rule))
        return Transition(
            alert.id, kind, self.campaign, "resolved", alert.opened_at, at, value, baseline,
            rule.resolve, at - rule.window_min * MINUTE_MS, at, numbers,
        )  # fmt: skip

    # ---- spread --------------------------------------------------------------

    def spread(self, signal: dict[str, Any], rule: Rule) -> list[Transition]:
        """Apply one spread signal (``kind``, ``state``, ``root``, ``value``, ``ts``, ...)."""
        kind: str = signal["kind"]
        ts = int(signal["ts"])
        state = self.kind(kind)
        subject = signal.get("root") or self.campaign
        if signal["state"] == "open" and rule.enabled and float(signal["value"]) >= rule.open:
            state.subjects[subject] = signal
        else:
            state.subjects.pop(subject, None)
        if state.open is None and state.subjects and ts >= state.quiet_until:
            top = max(state.subjects.values(), key=lambda s: float(s["value"]))
            state.open = OpenAlert(alert_id(kind, self.campaign, ts), ts, float(top["value"]),
                                   float(top["threshold"]), rule.open)  # fmt: skip
            return [self._spread_transition(kind, state, "open", ts, None)]
        if state.open is not None and not state.subjects:
            transition = self._spread_transition(kind, state, "resolved", state.open.opened_at, ts)
            state.open = None
            state.quiet_until = ts + rule.cooldown_ms
            return [transition]
        return []

    def _spread_transition(
        self, kind: str, state: KindState, status: Literal["open", "resolved"], opened: int,
        resolved: int | None,
    ) -> Transition:  # fmt: skip
        alert = state.open
        assert alert is not None
        subjects = sorted(state.subjects.values(), key=lambda s: -float(s["value"]))[:5]
        return Transition(
            alert.id, kind, self.campaign, status, opened, resolved, alert.value, alert.baseline,
            alert.threshold, opened, resolved or opened,
            {"open_subjects": len(state.subjects)},
            [{"root": s.get("root"), "value": s["value"], "threshold": s["threshold"],
              "numbers": s.get("numbers", {})} for s in subjects],
        )  # fmt: skip


def alert_id(kind: str, campaign: str, opened_at: int) -> str:
    return f"{kind}:{campaign}:{opened_at}"


def _numbers(measure: Measure, rule: Rule) -> dict[str, Any]:
    return {
        "score": round(measure.z, 4),
        "volume": measure.volume,
        "window_min": rule.window_min,
        "min_volume": rule.min_volume,
    }
