"""The final-size forecast, the cascade simulator and the forecast backtest (pure, no services)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.bench.forecast import forecast, run_backtest
from consumers.cascades.forecast import METHOD, Exposure, forecast_final_size
from consumers.cascades.simulation import (
    CHANNELS,
    SimShare,
    simulate_campaign,
    simulate_cascade,
)

BASE_MS = 1_767_225_600_000
TAU_MS = 1_800_000.0
YEAR_MS = 365 * 86_400_000


def brute_remaining(times: list[int], now_ms: int, tau_ms: float) -> float:
    return math.fsum(math.exp(-(now_ms - t) / tau_ms) for t in times)


# ---- Exposure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spread_ms", "tau_ms"),
    [
        (6 * 3_600_000, TAU_MS),  # one busy afternoon
        (2 * YEAR_MS, TAU_MS),  # two years at a 30 min scale: rebases many times
        (2 * YEAR_MS, 7 * 86_400_000.0),  # two years at a week's scale
        (60_000, 1_000.0),  # one minute at a second's scale
    ],
)
def test_exposure_matches_brute_force_in_any_order(spread_ms: int, tau_ms: float) -> None:
    rng = random.Random(spread_ms)
    for _ in range(20):
        times = [BASE_MS + rng.randrange(spread_ms) for _ in range(rng.randrange(1, 300))]
        # Bursts: shares close together, as in a real cascade.
        times += [t + rng.randrange(60_000) for t in times[: len(times) // 2]]
        rng.shuffle(times)
        exposure = Exposure(tau_ms)
        for count, ts in enumerate(times, 1):
            exposure.add(ts)
            if count % 17 == 0 or count == len(times):
                seen = times[:count]
                for now in (max(seen), max(seen) + rng.randrange(int(4 * tau_ms))):
                    assert math.isclose(
                        exposure.remaining(now), brute_remaining(seen, now, tau_ms), rel_tol=1e-9
                    )


def test_exposure_empty_and_single() -> None:
    exposure = Exposure(TAU_MS)
    assert exposure.remaining(BASE_MS) == 0.0
    exposure.add(BASE_MS)
    assert exposure.remaining(BASE_MS) == 1.0
    assert math.isclose(exposure.remaining(BASE_MS + int(TAU_MS)), math.exp(-1), rel_tol=1e-12)
    # Far past the last share the exposure is spent, without an error.
    assert exposure.remaining(BASE_MS + 10 * YEAR_MS) == 0.0


def test_exposure_copy_is_independent() -> None:
    exposure = Exposure(TAU_MS)
    for ts in (BASE_MS, BASE_MS + 60_000, BASE_MS + 120_000):
        exposure.add(ts)
    before = exposure.remaining(BASE_MS + 120_000)
    copy = exposure.copy()
    copy.add(BASE_MS + 180_000)
    copy.add(BASE_MS + YEAR_MS)  # rebases the copy only
    assert exposure.remaining(BASE_MS + 120_000) == before
    assert copy.ref_ms != exposure.ref_ms
    exposure.add(BASE_MS + 130_000)
    assert math.isclose(
        copy.remaining(BASE_MS + YEAR_MS), 1.0 + math.exp(-(YEAR_MS - 180_000) / TAU_MS)
    )


# ---- forecast_final_size --------------------------------------------------


def test_forecast_formula() -> None:
    # n = 10, remaining 0.5: R = 9 / 9.5, so R * remaining / (1 - R) = 9.
    result = forecast_final_size(10, 0.5, prior_offspring=0.0, prior_exposure=0.0)
    assert result.method == METHOD
    assert math.isclose(result.infectiousness, 9 / 9.5)
    assert result.final_size is not None
    assert math.isclose(result.final_size, 19.0)
    # The prior adds pseudo re-shares over pseudo exposure.
    result = forecast_final_size(10, 0.5, prior_offspring=3.0, prior_exposure=10.0)
    assert math.isclose(result.infectiousness, 12 / 19.5)


def test_forecast_of_a_finished_cascade_is_its_size() -> None:
    rng = random.Random(3)
    shares: list[SimShare] = []
    while len(shares) < 30:
        shares = simulate_cascade(rng, r=0.9, tau_s=1800, start_ms=BASE_MS)
    exposure = Exposure(TAU_MS)
    for share in shares:
        exposure.add(share.ts_ms)
    later = shares[-1].ts_ms + int(50 * TAU_MS)
    result = forecast_final_size(len(shares), exposure.remaining(later))
    assert result.final_size is not None
    assert math.isclose(result.final_size, len(shares), rel_tol=1e-9)


@given(
    size=st.integers(min_value=1, max_value=1_000_000),
    remaining=st.floats(min_value=-10.0, max_value=2e6, allow_nan=False),
    prior_offspring=st.floats(min_value=0.0, max_value=1e4),
    prior_exposure=st.floats(min_value=0.0, max_value=1e4),
    min_size=st.integers(min_value=1, max_value=20),
)
def test_forecast_is_never_below_size(
    size: int, remaining: float, prior_offspring: float, prior_exposure: float, min_size: int
) -> None:
    result = forecast_final_size(
        size,
        remaining,
        min_size=min_size,
        prior_offspring=prior_offspring,
        prior_exposure=prior_exposure,
    )
    if result.final_size is None:
        assert size < min_size or result.infectiousness >= 1.0
    else:
        assert result.final_size >= size
        assert result.infectiousness < 1.0


def test_forecast_none_below_min_size() -> None:
    assert forecast_final_size(4, 0.1, min_size=5).final_size is None
    assert forecast_final_size(5, 0.1, min_size=5).final_size is not None


def test_forecast_none_when_supercritical() -> None:
    # 19 re-shares over 2 units of spent exposure: R = 9.5.
    result = forecast_final_size(20, 18.0, prior_offspring=0.0, prior_exposure=0.0)
    assert result.final_size is None
    assert math.isclose(result.infectiousness, 9.5)
    # All shares at "now" and no prior: nothing spent yet, R is infinite.
    result = forecast_final_size(20, 20.0, prior_offspring=0.0, prior_exposure=0.0)
    assert result.final_size is None
    assert result.infectiousness == math.inf
    # R exactly 1 has no finite expected size either.
    assert forecast_final_size(11, 1.0, prior_offspring=0, prior_exposure=0).final_size is None


# ---- simulation -------------------------------------------------------------


def check_tree(shares: list[SimShare]) -> None:
    assert shares[0].parent is None and shares[0].depth == 0
    by_node: dict[int, SimShare] = {}
    for share in shares:
        assert 0 < share.node < 2**63
        assert share.node not in by_node
        assert share.channel in CHANNELS
        if share.parent is not None:
            parent = by_node[share.parent]  # parents precede their children
            assert share.depth == parent.depth + 1
            assert share.ts_ms >= parent.ts_ms
        by_node[share.node] = share
    assert [s.ts_ms for s in shares] == sorted(s.ts_ms for s in shares)


def test_simulate_cascade_is_seeded_and_a_tree() -> None:
    first = simulate_cascade(random.Random(11), r=0.9, tau_s=600, start_ms=BASE_MS)
    again = simulate_cascade(random.Random(11), r=0.9, tau_s=600, start_ms=BASE_MS)
    assert first == again
    assert first[0].ts_ms == BASE_MS
    for seed in range(300):
        check_tree(simulate_cascade(random.Random(seed), r=0.9, tau_s=600, start_ms=BASE_MS))


@pytest.mark.parametrize(("r", "dispersion"), [(0.5, 1.0), (0.5, math.inf), (0.7, 1.0)])
def test_mean_size_is_one_over_one_minus_r(r: float, dispersion: float) -> None:
    rng = random.Random(5)
    sizes = [
        len(simulate_cascade(rng, r=r, tau_s=60, start_ms=0, dispersion=dispersion))
        for _ in range(20_000)
    ]
    # Standard error: sqrt(var / n), var = (r + r^2/k) / (1 - r)^3 <= 19 here.
    assert statistics.mean(sizes) == pytest.approx(1 / (1 - r), abs=0.15)


def test_supercritical_cascade_stops_at_max_size() -> None:
    # Poisson(5) children: dies out with probability < 1%.
    shares = simulate_cascade(
        random.Random(1), r=5.0, tau_s=60, start_ms=0, max_size=2_000, dispersion=math.inf
    )
    assert len(shares) == 2_000
    check_tree(shares)


def test_children_keep_their_parent_channel_mostly() -> None:
    rng = random.Random(9)
    same = total = 0
    for _ in range(400):
        shares = simulate_cascade(rng, r=0.9, tau_s=60, start_ms=0)
        channel = {s.node: s.channel for s in shares}
        for share in shares[1:]:
            total += 1
            same += share.parent is not None and channel[share.parent] == share.channel
    # 0.6 kept + 0.4 * 1/6 drawn again.
    assert same / total == pytest.approx(0.6 + 0.4 / len(CHANNELS), abs=0.03)


def test_simulate_campaign() -> None:
    def campaign(seed: int) -> list[list[SimShare]]:
        return simulate_campaign(
            random.Random(seed),
            cascades=200,
            r=0.8,
            tau_s=900,
            start_ms=BASE_MS,
            span_s=86_400,
            max_size=10_000,
        )

    cascades = campaign(4)
    assert cascades == campaign(4)
    assert len(cascades) == 200
    starts = [c[0].ts_ms for c in cascades]
    assert starts == sorted(starts)
    assert starts[0] >= BASE_MS and starts[-1] <= BASE_MS + 86_400_000
    nodes = [s.node for c in cascades for s in c]
    assert len(nodes) == len(set(nodes))
    for cascade in cascades:
        check_tree(cascade)
    # 4 influencer roots, 20 children each on average; an ordinary root has ~0.8.
    root_children = sorted(sum(s.depth == 1 for s in c) for c in cascades)
    assert root_children[-1] >= 8


# ---- backtest --------------------------------------------------------------


def test_backtest_smoke(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, facts = run_backtest(cascades=200, seed=7, clock_taus=(1.0, 2.0))
    assert facts["kept"] == 200
    median = {(row.protocol, row.at, row.model): row.median_ape for row in rows}
    for row in rows:
        assert 0.0 <= row.p25_ape <= row.median_ape <= row.p75_ape
        assert 0.0 <= row.no_forecast <= 1.0
    default = "hawkes prior 140/200 (default)"
    # What holds on this data (docs/forecast.md): the default model beats
    # both baselines at half the cascade's life and the observed size at
    # one tau; at 10% of the life even the true r loses to n / f.
    assert median[("life", 0.5, default)] < median[("life", 0.5, "observed size")]
    assert median[("life", 0.5, default)] < median[("life", 0.5, "linear extrapolation")]
    assert median[("clock", 1.0, default)] < median[("clock", 1.0, "observed size")]
    assert median[("life", 0.1, "oracle: true r")] < median[("life", 0.1, "observed size")]
    # The plain estimator (no prior) is supercritical on almost every young cascade.
    plain = next(r for r in rows if r.at == 0.1 and r.model == "hawkes prior 0/0")
    assert plain.no_forecast > 0.9

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns when not a terminal
    forecast(cascades=200, seed=7, clock_taus="1")
    out = capsys.readouterr().out
    assert "linear extrapolation" in out and "median APE" in out
