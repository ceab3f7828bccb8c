"""Alert detection (consumers/alerts/detect.py): pure state machines over event time."""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any

import pytest

from app.settings import AlertSettings
from consumers.alerts.detect import MINUTE_MS, BuzzItem, CampaignBuzz, Minute, Transition
from consumers.alerts.pipeline import restore_minutes
from consumers.alerts.rules import default_rules

T0 = 1_790_000_040_000 // MINUTE_MS * MINUTE_MS  # a minute boundary


def campaign_state(cfg: AlertSettings | None = None) -> CampaignBuzz:
    cfg = cfg or AlertSettings()
    return CampaignBuzz(
        "spring", halflife_min=cfg.baseline_halflife_min,
        out_of_order_ms=int(cfg.out_of_order_s * 1000),
        max_lateness_ms=int(cfg.max_lateness_s * 1000), warmup_min=cfg.warmup_min, keep_min=10,
    )  # fmt: skip


def item(
    ts: int, label: str, kind: str = "comment", root: str | None = "00000000000000aa"
) -> BuzzItem:
    return BuzzItem(
        str(uuid.uuid4()), "spring", kind, root, root, "whatsapp", ts, ts + 50, label,  # type: ignore[arg-type]
        -0.6 if label == "negative" else 0.0, "en", ("bad",) if label == "negative" else (), "",
    )  # fmt: skip


def series(
    minutes: int, per_minute: int, negative_share: float, start: int = T0, seed: int = 1,
    kind: str = "comment",
) -> list[BuzzItem]:  # fmt: skip
    """Items spread evenly over each minute; labels drawn with the given negative share."""
    rng = random.Random(seed)
    out = []
    for m in range(minutes):
        for i in range(per_minute):
            ts = start + m * MINUTE_MS + i * MINUTE_MS // per_minute
            label = (
                "negative" if rng.random() < negative_share else rng.choice(["neutral", "positive"])
            )
            out.append(item(ts, label, kind))
    return out


def run(state: CampaignBuzz, items: list[BuzzItem], rules: dict[str, Any]) -> list[Transition]:
    out: list[Transition] = []
    for it in items:
        if not state.too_late(it.ts):
            out += state.add(it, rules)
    return out


RULES = default_rules(AlertSettings())


def test_a_flat_series_raises_nothing() -> None:
    state = campaign_state()
    transitions = run(state, series(180, 40, 0.12), RULES)
    assert transitions == []
    assert state.warm >= 170
    assert state.baseline_share() == pytest.approx(0.12, abs=0.03)


def test_a_negative_spike_opens_within_a_minute_and_resolves_after_it() -> None:
    state = campaign_state()
    baseline = series(60, 40, 0.1)
    spike_start = T0 + 60 * MINUTE_MS
    spike = series(2, 40, 0.7, start=spike_start, seed=2)
    after = series(40, 40, 0.1, start=spike_start + 2 * MINUTE_MS, seed=3)
    assert run(state, baseline, RULES) == []
    opened = run(state, spike, RULES)
    kinds = [(t.kind, t.state) for t in opened]
    assert ("buzz.negative_spike", "open") in kinds
    spike_alert = next(t for t in opened if t.kind == "buzz.negative_spike")
    assert spike_alert.opened_at - spike_start < 60_000, "within 60 s of event time"
    assert spike_alert.value > spike_alert.baseline
    assert spike_alert.numbers["score"] >= RULES["buzz.negative_spike"].open
    assert spike_alert.id == f"buzz.negative_spike:spring:{spike_alert.opened_at}"
    later = run(state, after, RULES)
    resolved = [t for t in later if t.kind == "buzz.negative_spike"]
    assert [t.state for t in resolved] == ["resolved"], "hysteresis: one resolve, no flapping"
    assert resolved[0].id == spike_alert.id
    assert resolved[0].resolved_at is not None
    # Resolves once the spike minutes have left the 5-minute window.
    assert resolved[0].resolved_at <= spike_start + 9 * MINUTE_MS


def test_cooldown_keeps_a_flapping_series_quiet() -> None:
    state = campaign_state()
    run(state, series(60, 40, 0.1), RULES)
    start = T0 + 60 * MINUTE_MS
    transitions: list[Transition] = []
    # Spikes every 10 minutes for an hour: one alert per cooldown (30 min), not six.
    for burst in range(6):
        at = start + burst * 10 * MINUTE_MS
        transitions += run(state, series(1, 40, 0.8, start=at, seed=10 + burst), RULES)
        transitions += run(state, series(9, 40, 0.1, start=at + MINUTE_MS, seed=20 + burst), RULES)
    opens = [t for t in transitions if t.kind == "buzz.negative_spike" and t.state == "open"]
    assert len(opens) == 2
    assert opens[1].opened_at - opens[0].opened_at >= 30 * MINUTE_MS


def test_small_partial_windows_do_not_fake_a_spike() -> None:
    """Three negative comments in a row at a minute's start are below min_volume."""
    state = campaign_state()
    run(state, series(60, 10, 0.1), RULES)
    start = T0 + 60 * MINUTE_MS
    burst = [item(start + i, "negative") for i in range(3)]
    assert run(state, burst, RULES) == []


def test_volume_spike() -> None:
    state = campaign_state()
    run(state, series(60, 20, 0.1), RULES)
    start = T0 + 60 * MINUTE_MS
    opened = run(state, series(1, 200, 0.1, start=start, seed=5), RULES)
    volume = [t for t in opened if t.kind == "buzz.volume_spike"]
    assert len(volume) == 1 and volume[0].state == "open"
    assert volume[0].opened_at - start < 30_000
    assert not [t for t in opened if t.kind == "buzz.negative_spike"]


def test_a_partial_first_minute_does_not_set_a_low_baseline() -> None:
    """A stream that starts mid-minute (3 items in its first minute, then a steady 20 a
    minute) is flat: the baselines must average the early minutes, not keep the first."""
    state = campaign_state()
    first = [item(T0 + 50_000 + i * 3_000, "neutral") for i in range(3)]
    steady = series(90, 20, 0.1, start=T0 + MINUTE_MS, seed=7)
    assert run(state, first + steady, RULES) == []
    assert state.volume.mean == pytest.approx(20, abs=1.5)


def test_negative_velocity_needs_negative_shares_outpacing_positive_ones() -> None:
    state = campaign_state()
    shares = series(30, 10, 0.3, kind="share")
    balanced = run(state, shares, RULES)
    assert not [t for t in balanced if t.kind == "buzz.negative_velocity"]
    start = T0 + 30 * MINUTE_MS
    negative = [item(start + i * 1000, "negative", "share") for i in range(30)]
    opened = [t for t in run(state, negative, RULES) if t.kind == "buzz.negative_velocity"]
    assert [t.state for t in opened] == ["open"]
    assert opened[0].value >= RULES["buzz.negative_velocity"].open


def test_a_disabled_rule_raises_nothing() -> None:
    state = campaign_state()
    rules = dict(RULES)
    rules["buzz.negative_spike"] = dataclasses.replace(rules["buzz.negative_spike"], enabled=False)
    run(state, series(60, 40, 0.1), rules)
    spike = run(state, series(2, 40, 0.8, start=T0 + 60 * MINUTE_MS), rules)
    assert not [t for t in spike if t.kind == "buzz.negative_spike"]


def test_late_events_land_in_their_minute_and_too_late_ones_are_refused() -> None:
    state = campaign_state()
    run(state, series(10, 5, 0.0), RULES)
    late = item(T0 + 2 * MINUTE_MS + 5, "negative")
    assert not state.too_late(late.ts)
    state.add(late, RULES)
    assert state.minutes[T0 // MINUTE_MS + 2].negative == 1
    ancient = item(T0 - 2 * 86_400_000, "negative")
    assert state.too_late(ancient.ts)


def test_the_watermark_closes_minutes_in_event_time_not_arrival_order() -> None:
    state = campaign_state()
    items = series(20, 10, 0.1)
    shuffled = items[:]
    random.Random(4).shuffle(shuffled)
    run(state, shuffled, RULES)
    ordered = campaign_state()
    run(ordered, items, RULES)
    # Out-of-order arrival beyond the 5 s allowance changes what each minute held
    # when it closed, but every item is in its own minute in the end.
    for index, minute in ordered.minutes.items():
        assert state.minutes[index] == minute


def test_restored_baselines_equal_live_ones() -> None:
    live = campaign_state()
    items = series(90, 30, 0.15, seed=7)
    run(live, items, RULES)
    minutes: dict[int, Minute] = {}
    for it in items:
        minutes.setdefault(it.ts // MINUTE_MS, Minute()).add(it.label, it.type == "share")
    rows = [
        (m * 60, c.volume, c.negative, c.positive, c.negative_shares, c.positive_shares)
        for m, c in sorted(minutes.items())
    ]
    restored = campaign_state()
    restore_minutes(restored, max(it.ts for it in items), rows)
    assert restored.closed_to == live.closed_to
    assert restored.warm == live.warm
    assert restored.volume.mean == pytest.approx(live.volume.mean)
    assert restored.negative.mean == pytest.approx(live.negative.mean)
    assert restored.excess.mean == pytest.approx(live.excess.mean)
    assert restored.minutes == live.minutes


def spread_signal(kind: str, state: str, root: str | None, value: float, ts: int) -> dict[str, Any]:
    return {"kind": kind, "state": state, "campaign": "spring", "root": root,
            "value": value, "threshold": 1.0, "ts": ts, "numbers": {}}  # fmt: skip


def test_spread_signals_group_into_one_alert_per_kind() -> None:
    state = campaign_state()
    rule = RULES["spread.accelerating"]
    kind = "spread.accelerating"
    first = state.spread(spread_signal(kind, "open", "a" * 16, 5.0, T0), rule)
    assert [(t.state, t.kind) for t in first] == [("open", kind)]
    assert state.spread(spread_signal(kind, "open", "b" * 16, 7.0, T0 + 1000), rule) == []
    assert state.spread(spread_signal(kind, "resolved", "a" * 16, 1.0, T0 + 2000), rule) == []
    last = state.spread(spread_signal(kind, "resolved", "b" * 16, 1.0, T0 + 3000), rule)
    assert [(t.state, t.id) for t in last] == [("resolved", first[0].id)]
    assert last[0].resolved_at == T0 + 3000
    # Within the cooldown a new open signal is held back ...
    assert state.spread(spread_signal(kind, "open", "c" * 16, 9.0, T0 + 4000), rule) == []
    # ... and the alert opens with the next signal after it, if still open.
    after = T0 + 3000 + rule.cooldown_ms
    again = state.spread(spread_signal(kind, "open", "d" * 16, 9.0, after), rule)
    assert [t.state for t in again] == ["open"]
    assert {s["root"] for s in again[0].subjects} == {"c" * 16, "d" * 16}


def test_a_rule_can_raise_the_spread_bar() -> None:
    state = campaign_state()
    rule = RULES["spread.forecast_exceeds"]
    strict = dataclasses.replace(rule, open=5000.0)
    kind = "spread.forecast_exceeds"
    assert state.spread(spread_signal(kind, "open", "a" * 16, 1200.0, T0), strict) == []
    opened = state.spread(spread_signal(kind, "open", "b" * 16, 6000.0, T0 + 1), strict)
    assert [t.state for t in opened] == ["open"]
