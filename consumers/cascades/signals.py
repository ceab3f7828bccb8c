"""Spread signals from cascade state: pure functions, for the alerts consumer.

Every signal is edge-triggered with hysteresis: ``open`` when its condition
starts to hold, ``resolved`` when it stops (below a lower bar), and nothing
in between, so a receiver sees transitions, not a stream. Each carries the
numbers that triggered it. Its ``id`` is ``kind:subject:version`` (the
cascade's state version, or the campaign window's minute), stable across
replays, so duplicates from an at-least-once replay can be dropped.

- ``spread.accelerating``: a cascade's shares per minute over the last
  ``accel_window_min`` minutes, against its own baseline (the mean rate of
  the hour before); opens at ``accel_factor`` times the baseline and at least
  ``accel_min_rate``, resolves below half the factor.
- ``spread.forecast_exceeds``: the forecast final size reaches
  ``forecast_threshold`` (resolves below 80% of it).
- ``spread.structural_virality``: a cascade of ``virality_min_size`` nodes
  or more whose structural virality reaches ``virality_threshold``: it is
  spreading person to person, not as one broadcast (resolves below 80%).
- ``spread.viral`` (per campaign): the windowed K-factor, new recruited
  sharers in the last ``k_window_min`` minutes per sharer of the window
  before, above ``viral_k`` at each of the last ``viral_sustain_min`` minutes.
  Counted over the cascades this consumer holds (its partitions), which are a
  hash sample of the campaign's cascades; same-origin and bot shares excluded.
  The windows start empty after a restart or rebalance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.settings import CascadeSettings
from consumers.cascades.state import MINUTE_MS, Cascade, CascadeStats

OPEN = "open"
RESOLVED = "resolved"
RESOLVE_RATIO = 0.8


@dataclass
class SignalState:
    """Which of a cascade's signals are open."""

    accelerating: bool = False
    forecast: bool = False
    structural: bool = False

    def any_open(self) -> bool:
        return self.accelerating or self.forecast or self.structural


def _signal(
    kind: str, state: str, campaign: str, root: str | None, version: int | str, ts: int,
    value: float, threshold: float, numbers: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    subject = root or campaign
    return {
        "id": f"{kind}:{subject}:{version}:{state}",
        "kind": kind,
        "state": state,
        "campaign": campaign,
        "root": root,
        "ts": ts,
        "value": value,
        "threshold": threshold,
        "numbers": numbers,
    }


def _edge(is_open: bool, value: float, open_at: float, resolve_at: float) -> str | None:
    if not is_open and value >= open_at:
        return OPEN
    if is_open and value < resolve_at:
        return RESOLVED
    return None


def cascade_signals(
    cascade: Cascade, stats: CascadeStats, state: SignalState, cfg: CascadeSettings
) -> list[dict[str, Any]]:
    """The signals one cascade raises now; updates ``state``."""
    out: list[dict[str, Any]] = []
    base = (stats.campaign, stats.root, stats.version, stats.last_ts)

    recent = cascade.rate(0, cfg.accel_window_min)
    baseline = cascade.rate(cfg.accel_window_min, 60)
    floor = max(baseline, cfg.accel_min_rate / cfg.accel_factor)
    ratio = recent / floor
    edge = _edge(state.accelerating, ratio, cfg.accel_factor, cfg.accel_factor / 2)
    if edge is not None and (edge == RESOLVED or recent >= cfg.accel_min_rate):
        state.accelerating = edge == OPEN
        out.append(_signal(
            "spread.accelerating", edge, *base, recent, cfg.accel_factor * floor,
            {"shares_per_min": recent, "baseline_per_min": baseline, "ratio": ratio,
             "window_min": cfg.accel_window_min, "size": stats.size},
        ))  # fmt: skip

    if stats.forecast_size is not None or state.forecast:
        forecast = stats.forecast_size if stats.forecast_size is not None else float("inf")
        threshold = cfg.forecast_threshold
        edge = _edge(state.forecast, forecast, threshold, threshold * RESOLVE_RATIO)
        if edge is not None:
            state.forecast = edge == OPEN
            out.append(_signal(
                "spread.forecast_exceeds", edge, *base, stats.forecast_size or 0.0, threshold,
                {"forecast_size": stats.forecast_size, "size": stats.size,
                 "infectiousness": stats.infectiousness, "method": stats.forecast_method},
            ))  # fmt: skip

    if stats.tree_size >= cfg.virality_min_size or state.structural:
        threshold = cfg.virality_threshold
        edge = _edge(state.structural, stats.virality, threshold, threshold * RESOLVE_RATIO)
        if edge is not None:
            state.structural = edge == OPEN
            out.append(_signal(
                "spread.structural_virality", edge, *base, stats.virality, threshold,
                {"virality": stats.virality, "size": stats.tree_size, "depth": stats.depth,
                 "max_breadth": stats.max_breadth},
            ))  # fmt: skip
    return out


IDLE_KINDS = (
    ("accelerating", "spread.accelerating"),
    ("forecast", "spread.forecast_exceeds"),
    ("structural", "spread.structural_virality"),
)


def idle_signals(stats: CascadeStats, state: SignalState) -> list[dict[str, Any]]:
    """``resolved`` for each open signal of a cascade about to leave memory (idle).

    An evicted cascade restarts with no open signals, so without these its
    open ones would never resolve downstream.
    """
    out = []
    for flag, kind in IDLE_KINDS:
        if getattr(state, flag):
            setattr(state, flag, False)
            out.append(_signal(
                kind, RESOLVED, stats.campaign, stats.root, stats.version, stats.last_ts,
                0.0, 0.0, {"reason": "idle", "size": stats.size},
            ))  # fmt: skip
    return out


@dataclass
class CampaignWindows:
    """Per event-time minute: valid sharers and valid recruited sharers of a campaign."""

    minutes: dict[int, list[int]] = field(default_factory=dict)  # minute -> [nodes, recruits]
    last_minute: int = 0
    viral: bool = False

    def add(self, ts: int, nodes: int, recruits: int) -> None:
        minute = ts // MINUTE_MS
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = [0, 0]
        counts[0] += nodes
        counts[1] += recruits
        if minute > self.last_minute:
            self.last_minute = minute

    def total(self, index: int, first: int, last: int) -> int:
        return sum(self.minutes.get(m, (0, 0))[index] for m in range(first, last + 1))

    def k_factor(self, end: int, window: int) -> tuple[float, int, int]:
        """(K, recruits in (end-window, end], sharers in (end-2·window, end-window])."""
        recruits = self.total(1, end - window + 1, end)
        sharers = self.total(0, end - 2 * window + 1, end - window)
        return (recruits / sharers if sharers else 0.0), recruits, sharers

    def prune(self, keep_minutes: int) -> None:
        oldest = self.last_minute - keep_minutes
        for minute in [m for m in self.minutes if m < oldest]:
            del self.minutes[minute]


def viral_signal(
    campaign: str, windows: CampaignWindows, cfg: CascadeSettings
) -> dict[str, Any] | None:
    """``spread.viral`` open/resolved for a campaign, or None; updates ``windows.viral``."""
    window, sustain = cfg.k_window_min, cfg.viral_sustain_min
    end = windows.last_minute
    history = [windows.k_factor(end - lag, window) for lag in range(sustain)]
    windows.prune(2 * window + sustain)
    k_now, recruits, sharers = history[0]
    sustained = all(k > cfg.viral_k and s >= cfg.viral_min_sharers for k, _, s in history)
    if sustained == windows.viral:
        return None
    windows.viral = sustained
    return _signal(
        "spread.viral", OPEN if sustained else RESOLVED, campaign, None, end,
        end * MINUTE_MS, k_now, cfg.viral_k,
        {"k_factor": k_now, "recruits": recruits, "sharers": sharers,
         "window_min": window, "sustained_min": sustain,
         "history": [k for k, _, _ in history]},
    )  # fmt: skip
