"""``viraltrace bench forecast``: backtest of the final-size forecast (results: docs/forecast.md).

Cascades come from ``consumers.cascades.simulation`` (``plan_campaign``,
then ``simulate_cascade`` per plan, so the bench knows each cascade's true
``r``). Two protocols, every model measured on the same cascades in one run:

* ``life``: the cascades whose final size is at least ``--min-size``, each
  observed at ``t0 + f * (t_last - t0)`` for ``f`` in ``--observe``, 0.25
  and 0.5 (the protocol the benchmark was asked for). It leaks the
  future twice: the selection uses the final size, and ``f`` uses the last
  share's time, which the "linear extrapolation" baseline (``n / f``)
  exploits and a live system never knows.
* ``clock``: every simulated cascade that has at least the forecast's
  ``min_size`` shares at ``t0 + k * tau`` (``--clock-taus``): what a live
  system sees, no selection on the future.

APE is ``|forecast - final| / final``. A forecast of ``None`` (too small or
supercritical) counts as APE 1 (as a forecast of 0) in the median and
quartiles; its share is in "no forecast" (in brackets: the part below
the forecast's ``min_size``; the rest is supercritical), and "median,
None->n" redoes the median with the observed size in its place (what a
dashboard would show).
"sum ratio" is sum(forecast) / sum(final) with that same fallback: how
biased the models are in aggregate (an expectation should be near 1
where the observation does not select on the future).

"oracle: true r" is the exact expected final size given the observed
shares and the cascade's true ``r`` and root ``r``: the best the model's
formula could do with a perfect estimate of ``R``.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPAN_S = 86_400.0
PLAN_CHUNK = 1_000
EXTRA_OBSERVE = (0.25, 0.5)
DEFAULT_PRIORS = "140:200,0:0,0.5:1,35:50,700000:1000000"
FIXED_R_EXPOSURE = 1e5  # a prior this heavy is a fixed R: the data barely moves it


@dataclass(frozen=True, slots=True)
class Row:
    """One model at one observation point."""

    protocol: str  # "life" or "clock"
    at: float  # f (share of life) or k (multiples of tau)
    model: str
    cascades: int
    median_ape: float
    p25_ape: float
    p75_ape: float
    no_forecast: float  # share of None forecasts
    too_small: float  # share of cascades below the forecast's min_size (part of no_forecast)
    median_ape_fallback: float  # None -> observed size
    sum_ratio: float  # sum(forecast, None -> observed size) / sum(final)


@dataclass(frozen=True, slots=True)
class _Cascade:
    ts: list[int]
    r: float
    root_r: float


@dataclass(frozen=True, slots=True)
class _Observation:
    """A cascade cut at ``now_ms``: ``size`` shares seen of ``final``."""

    cascade: _Cascade
    now_ms: int
    size: int
    final: int


# A model maps an observation to a forecast (None: no finite forecast).
_Model = Callable[[_Observation], float | None]


def parse_priors(text: str) -> list[tuple[float, float]]:
    """``"a:b,a:b"`` -> ``[(prior_offspring, prior_exposure), ...]``."""
    out = []
    for item in text.split(","):
        offspring, _, exposure = item.partition(":")
        out.append((float(offspring), float(exposure)))
    return out


def _row(
    protocol: str,
    at: float,
    model: str,
    pairs: Sequence[tuple[float | None, _Observation]],
    min_size: int,
) -> Row:
    apes, fallback, forecast_sum = [], [], 0.0
    for forecast, obs in pairs:
        shown = float(obs.size) if forecast is None else forecast
        apes.append(1.0 if forecast is None else abs(forecast - obs.final) / obs.final)
        fallback.append(abs(shown - obs.final) / obs.final)
        forecast_sum += shown
    p25, median, p75 = statistics.quantiles(apes, n=4, method="inclusive")
    return Row(
        protocol=protocol,
        at=at,
        model=model,
        cascades=len(pairs),
        median_ape=median,
        p25_ape=p25,
        p75_ape=p75,
        no_forecast=sum(f is None for f, _ in pairs) / len(pairs),
        too_small=sum(f is None and o.size < min_size for f, o in pairs) / len(pairs),
        median_ape_fallback=statistics.median(fallback),
        sum_ratio=forecast_sum / sum(obs.final for _, obs in pairs),
    )


def _remaining(cascade: _Cascade, size: int, now_ms: int, tau_ms: float) -> float:
    from consumers.cascades.forecast import Exposure

    exposure = Exposure(tau_ms)
    for ts in cascade.ts[:size]:
        exposure.add(ts)
    return exposure.remaining(now_ms)


def _models(
    tau_ms: float, priors: Sequence[tuple[float, float]], model_min_size: int
) -> list[tuple[str, _Model]]:
    from consumers.cascades.forecast import forecast_final_size

    def hawkes(tau: float, offspring: float, exposure: float) -> _Model:
        def model(obs: _Observation) -> float | None:
            remaining = _remaining(obs.cascade, obs.size, obs.now_ms, tau)
            return forecast_final_size(
                obs.size,
                remaining,
                min_size=model_min_size,
                prior_offspring=offspring,
                prior_exposure=exposure,
            ).final_size

        return model

    def oracle(obs: _Observation) -> float | None:
        cascade = obs.cascade
        remaining = _remaining(cascade, obs.size, obs.now_ms, tau_ms)
        root = math.exp(-(obs.now_ms - cascade.ts[0]) / tau_ms)
        children = cascade.root_r * root + cascade.r * (remaining - root)
        return obs.size + children / (1.0 - cascade.r)

    def name(offspring: float, exposure: float) -> str:
        if exposure >= FIXED_R_EXPOSURE:
            return f"hawkes fixed R={offspring / exposure:g}"
        return f"hawkes prior {offspring:g}/{exposure:g}"

    tau_s = tau_ms / 1000
    models: list[tuple[str, _Model]] = [("observed size", lambda obs: float(obs.size))]
    for index, (offspring, exposure) in enumerate(priors):
        tag = " (default)" if index == 0 else ""
        models.append((name(offspring, exposure) + tag, hawkes(tau_ms, offspring, exposure)))
    offspring, exposure = priors[0]
    for factor in (0.5, 2.0):
        models.append(
            (
                f"{name(offspring, exposure)} tau x{factor:g} ({tau_s * factor:g} s)",
                hawkes(tau_ms * factor, offspring, exposure),
            )
        )
    models.append(("oracle: true r", oracle))
    return models


def _simulate(
    rng: random.Random,
    *,
    keep: int,
    min_size: int,
    r: float,
    tau_s: float,
    dispersion: float,
    influencer_share: float,
    max_size: int,
    max_simulated: int,
) -> tuple[list[_Cascade], list[_Cascade]]:
    """(kept, all): simulate until ``keep`` cascades reach ``min_size`` shares."""
    from consumers.cascades.simulation import plan_campaign, simulate_cascade

    every: list[_Cascade] = []
    kept: list[_Cascade] = []
    while len(kept) < keep and len(every) < max_simulated:
        plans = plan_campaign(
            rng,
            cascades=PLAN_CHUNK,
            r=r,
            start_ms=START_MS,
            span_s=SPAN_S,
            influencer_share=influencer_share,
        )
        for plan in plans:
            shares = simulate_cascade(
                rng,
                r=plan.r,
                root_r=plan.root_r,
                tau_s=tau_s,
                start_ms=plan.start_ms,
                max_size=max_size,
                dispersion=dispersion,
            )
            cascade = _Cascade([share.ts_ms for share in shares], plan.r, plan.root_r)
            every.append(cascade)
            if len(shares) >= min_size and len(kept) < keep:
                kept.append(cascade)
    return kept, every


def run_backtest(
    *,
    cascades: int = 2000,
    seed: int = 7,
    min_size: int = 20,
    r: float = 0.8,
    tau_s: float = 1800.0,
    observes: Sequence[float] = (0.1, 0.25, 0.5),
    model_tau_s: float | None = None,
    priors: Sequence[tuple[float, float]] = (),
    model_min_size: int = 5,
    dispersion: float = 1.0,
    influencer_share: float = 0.02,
    clock_taus: Sequence[float] = (1.0, 2.0, 4.0),
    max_size: int = 100_000,
) -> tuple[list[Row], dict[str, float]]:
    """Rows for every protocol, observation point and model, and run facts. Pure CPU."""
    started = time.perf_counter()
    rng = random.Random(seed)
    kept, every = _simulate(
        rng,
        keep=cascades,
        min_size=min_size,
        r=r,
        tau_s=tau_s,
        dispersion=dispersion,
        influencer_share=influencer_share,
        max_size=max_size,
        max_simulated=1000 * cascades + PLAN_CHUNK,
    )
    if not kept:
        raise ValueError(f"no simulated cascade reached {min_size} shares")
    tau_ms = (tau_s if model_tau_s is None else model_tau_s) * 1000.0
    models = _models(tau_ms, priors or parse_priors(DEFAULT_PRIORS), model_min_size)
    rows: list[Row] = []
    for f in sorted(observes):
        observations = []
        for cascade in kept:
            t0, life = cascade.ts[0], cascade.ts[-1] - cascade.ts[0]
            now = t0 + math.floor(f * life)
            size = bisect.bisect_right(cascade.ts, now)
            observations.append(_Observation(cascade, now, size, len(cascade.ts)))
        rows.append(
            _row(
                "life",
                f,
                "linear extrapolation",
                [(o.size / f, o) for o in observations],
                model_min_size,
            )
        )
        for name, model in models:
            pairs = [(model(o), o) for o in observations]
            rows.append(_row("life", f, name, pairs, model_min_size))
    for k in clock_taus:
        observations = []
        for cascade in every:
            now = cascade.ts[0] + round(k * tau_s * 1000.0)
            size = bisect.bisect_right(cascade.ts, now)
            if size >= model_min_size:
                observations.append(_Observation(cascade, now, size, len(cascade.ts)))
        if observations:
            for name, model in models:
                pairs = [(model(o), o) for o in observations]
                rows.append(_row("clock", k, name, pairs, model_min_size))
    facts = {
        "simulated": float(len(every)),
        "kept": float(len(kept)),
        "capped": float(sum(len(c.ts) >= max_size for c in every)),
        "median_final_kept": float(statistics.median(len(c.ts) for c in kept)),
        "seconds": time.perf_counter() - started,
    }
    return rows, facts


def forecast(
    cascades: Annotated[
        int, typer.Option(help="cascades to evaluate (final size >= --min-size)")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    min_size: Annotated[int, typer.Option(help="keep cascades with this final size or more")] = 20,
    r: Annotated[float, typer.Option(help="mean offspring per share (per-cascade r varies)")] = 0.8,
    tau_s: Annotated[float, typer.Option(help="mean re-share delay of the simulation, s")] = 1800.0,
    observe: Annotated[float, typer.Option(help="headline share of each cascade's life")] = 0.1,
    model_tau_s: Annotated[
        float | None, typer.Option(help="the model's tau, s (default: --tau-s)")
    ] = None,
    priors: Annotated[
        str, typer.Option(help="prior_offspring:prior_exposure pairs; the first is the default")
    ] = DEFAULT_PRIORS,
    model_min_size: Annotated[int, typer.Option(help="the forecast's min_size")] = 5,
    dispersion: Annotated[
        float, typer.Option(help="offspring negative-binomial k ('inf': Poisson)")
    ] = 1.0,
    influencers: Annotated[float, typer.Option(help="share of influencer roots")] = 0.02,
    clock_taus: Annotated[
        str, typer.Option(help="clock protocol at t0 + k*tau, k comma-separated ('' skips)")
    ] = "1,2,4",
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
) -> None:
    """Backtest the final-size forecast against naive baselines on simulated cascades."""
    console = Console()
    observes = sorted({observe, *EXTRA_OBSERVE})
    clocks = [float(k) for k in clock_taus.split(",") if k.strip()]
    rows, facts = run_backtest(
        cascades=cascades,
        seed=seed,
        min_size=min_size,
        r=r,
        tau_s=tau_s,
        observes=observes,
        model_tau_s=model_tau_s,
        priors=parse_priors(priors),
        model_min_size=model_min_size,
        dispersion=dispersion,
        influencer_share=influencers,
        clock_taus=clocks,
    )
    model_tau = tau_s if model_tau_s is None else model_tau_s
    console.print(
        f"simulated {facts['simulated']:,.0f} cascades (r={r:g} x lognormal(0, 0.25) capped"
        f" at 0.97, NB k={dispersion:g}, {influencers:.0%} influencer roots, tau={tau_s:g} s,"
        f" seed {seed}); {facts['kept']:,.0f} with final size >= {min_size}"
        f" (median {facts['median_final_kept']:,.0f}); model tau {model_tau:g} s;"
        f" {facts['seconds']:.1f} s"
    )
    titles = {
        "life": f"Observed at a share f of each cascade's life ({facts['kept']:,.0f} cascades"
        f" with final size >= {min_size})",
        "clock": f"Observed at t0 + k*tau (cascades with >= {model_min_size} shares then,"
        " no selection on the future)",
    }
    for protocol, title in titles.items():
        selected = [row for row in rows if row.protocol == protocol]
        if not selected:
            continue
        table = Table(title=title)
        columns = (
            "f" if protocol == "life" else "k",
            "model",
            "cascades",
            "median APE",
            "p25",
            "p75",
            "no forecast (too small)",
            "median, None->n",
            "sum ratio",
        )
        for column in columns:
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in selected:
            style = "bold" if protocol == "life" and row.at == observe else None
            table.add_row(
                f"{row.at:g}",
                row.model,
                f"{row.cascades:,}",
                f"{row.median_ape:.3f}",
                f"{row.p25_ape:.3f}",
                f"{row.p75_ape:.3f}",
                f"{row.no_forecast:.1%} ({row.too_small:.1%})",
                f"{row.median_ape_fallback:.3f}",
                f"{row.sum_ratio:.2f}",
                style=style,
            )
        console.print(table)
    console.print(
        "APE = |forecast - final| / final; a None forecast counts as APE 1 (no forecast);"
        " 'median, None->n' and 'sum ratio' show the observed size instead."
    )
    if json_out is not None:
        json_out.write_text(
            json.dumps({"facts": facts, "rows": [asdict(row) for row in rows]}, indent=2)
        )
