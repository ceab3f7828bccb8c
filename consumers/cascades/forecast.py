"""Final-size forecast of a live share cascade (pure, stdlib only, O(1) memory per cascade).

Model: a self-exciting (Hawkes) branching process in the spirit of SEISMIC
(Zhao et al., KDD 2015), with two simplifications. Every node counts as one
follower (audiences are unknown), and the memory kernel is exponential with
time scale ``tau``: a node that shared at ``t_i`` has, by time ``t``,
``R * F(t - t_i)`` expected direct re-shares, ``F(s) = 1 - exp(-s / tau)``.
With the exponential kernel the whole state a forecast needs is one running
sum (``Exposure``), updated in O(1) per share in any order; a general kernel
would need every share time.

Observed at ``t`` with ``n`` shares (root included, so ``n - 1`` observed
re-shares)::

    remaining(t) = sum_i exp(-(t - t_i) / tau)     # exposure still to come
    used         = n - remaining                   # exposure already spent
    R            = (n - 1 + a) / (used + b)        # a, b: prior_offspring, prior_exposure
    final        = n + R * remaining / (1 - R)     # when R < 1

``R`` is the ratio estimator of the offspring mean (re-shares per unit of
spent exposure) with a Gamma-style shrinkage: the prior adds ``a`` pseudo
re-shares over ``b`` pseudo exposure, i.e. a prior mean ``a / b`` worth
``b`` nodes of evidence; ``a = b = 0`` is the plain estimator. Each of the
``R * remaining`` re-shares still expected brings ``1 / (1 - R)`` shares in
expectation (itself and its whole subtree), hence ``final``.

Assumptions and limits: ``tau`` is a setting, not learnt per cascade (the
backtest in docs/forecast.md shows what a wrong ``tau`` costs); one ``R``
per cascade, constant over time (no decay of interest, no saturation of
the audience); a subcritical process. ``R >= 1`` has no finite expected
size and gives ``final_size=None``, as does a cascade with fewer than
``min_size`` shares. The forecast is an expectation: a single cascade's
size spreads widely around it (heavy tails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METHOD = "hawkes-exp-v1"

# Tuned by the backtest (docs/forecast.md): a prior mean of 0.7 re-shares
# per share, worth 200 shares of evidence. Strong on purpose: with
# overdispersed offspring, weaker priors leave most young cascades with
# R >= 1 (no forecast). It also caps what the data can say: a cascade needs
# a few hundred shares before its own R dominates.
PRIOR_OFFSPRING = 140.0
PRIOR_EXPOSURE = 200.0

# ``Exposure.total`` keeps every term below exp(_REBASE_AFTER): the reference
# time moves forward to a share that is more than this many ``tau`` after it.
_REBASE_AFTER = 32.0


@dataclass(slots=True)
class Exposure:
    """``total = sum_i exp((t_i - ref_ms) / tau_ms)`` over the added share times.

    O(1) time and memory per ``add``, in any order of times. ``ref_ms`` is the
    first time added and moves forward (rebasing ``total``) when a later time
    would make its term exceed ``exp(32)``, so times years apart neither
    overflow nor lose precision: the term at ``ref_ms`` is 1, and any term
    that underflows against it is below 1e-13 of the sum.
    """

    tau_ms: float
    ref_ms: int | None = None
    total: float = 0.0

    def add(self, ts_ms: int) -> None:
        """Add one share at ``ts_ms`` (epoch ms)."""
        if self.ref_ms is None:
            self.ref_ms = ts_ms
            self.total += 1.0
            return
        exponent = (ts_ms - self.ref_ms) / self.tau_ms
        if exponent > _REBASE_AFTER:
            # exp(-exponent) may underflow to 0: those terms are below
            # exp(-32) of the new one, which is 1.
            self.total = self.total * math.exp(-exponent) + 1.0
            self.ref_ms = ts_ms
        else:
            self.total += math.exp(exponent)

    def remaining(self, now_ms: int) -> float:
        """Unused exposure at ``now_ms``: ``sum_i exp(-(now_ms - t_i) / tau_ms)``.

        ``now_ms`` must be at or after every added time (pass the cascade's
        latest share time or the clock, whichever is later): a share in the
        future of ``now_ms`` would count ``exp(+...) > 1``, and clamping it to
        1 cannot be done in O(1). ``forecast_final_size`` clamps the result
        to ``[0, size]`` anyway. 0.0 before any ``add``.
        """
        if self.ref_ms is None or self.total <= 0.0:
            return 0.0
        # exp(log(total) - age) instead of total * exp(-age): exp(-age) alone
        # could underflow while the product is still representable.
        return math.exp(math.log(self.total) - (now_ms - self.ref_ms) / self.tau_ms)

    def copy(self) -> Exposure:
        """An independent copy (e.g. to forecast at several clocks)."""
        return Exposure(self.tau_ms, self.ref_ms, self.total)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A cascade's expected final size; ``None`` when supercritical or too small."""

    final_size: float | None
    infectiousness: float
    method: str


def forecast_final_size(
    size: int,
    remaining: float,
    *,
    min_size: int = 5,
    prior_offspring: float = PRIOR_OFFSPRING,
    prior_exposure: float = PRIOR_EXPOSURE,
) -> Forecast:
    """Expected final size of a cascade of ``size`` shares with ``remaining`` unused exposure.

    ``remaining`` is ``Exposure.remaining(now)`` (clamped here to
    ``[0, size]``, its range when ``now`` is at or after every share).
    ``infectiousness`` is the estimated ``R`` (``inf`` when no exposure is
    spent yet and there is no prior); it is reported even when
    ``final_size`` is ``None``, which happens when ``size < min_size`` or
    ``R >= 1``. A finite ``final_size`` is never below ``size``. Pure; never
    raises for ``size >= 1``.
    """
    remaining = min(max(remaining, 0.0), float(size))
    offspring = size - 1 + prior_offspring
    exposure = size - remaining + prior_exposure
    # No spent exposure and no prior: any observed re-share means R = inf.
    no_exposure = math.inf if offspring > 0 else 0.0
    r_hat = offspring / exposure if exposure > 0.0 else no_exposure
    if size < min_size or r_hat >= 1.0:
        return Forecast(None, r_hat, METHOD)
    final = size + r_hat * remaining / (1.0 - r_hat)
    return Forecast(max(final, float(size)), r_hat, METHOD)
