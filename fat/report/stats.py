"""Statistics of ablation grids, and nothing else: numbers in, numbers out (no tables, no figures, no I/O).

A *point* of a grid is one combination of its varied axes, run once per seed. `describe` summarises a point (mean,
sample std, n and a t-based confidence interval with n - 1 degrees of freedom); `compare` tests a point against its
baseline: a paired t-test on the per-seed differences when both ran the same seeds (the seed fixes data order and
initialisation, so seeds move together across points and the per-seed difference is the unit), else Welch's
t-test (Welch-Satterthwaite degrees of freedom). `holm` corrects the p-values of one table together, `verdict`
puts the result in words and `seeds_to_resolve` says how many seeds would resolve an observed difference.
Distributions come from scipy.stats and statsmodels; nothing here is hand-written.
"""
import math
from dataclasses import dataclass
from typing import Hashable, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

__all__ = ['PointStats', 'Comparison', 'describe', 'compare', 'holm', 'verdict', 'seeds_to_resolve', 'ALPHA', 'POWER',
           'MAX_SEEDS', 'RESOLVED', 'NOT_RESOLVED']

ALPHA = 0.05  # family-wise error rate of one table (after Holm's correction)
LEVEL = 0.95  # confidence level of every interval
POWER = 0.8  # target power of `seeds_to_resolve`
MAX_SEEDS = 100  # beyond this the answer is "more than 100": the difference is too small to chase with seeds
RESOLVED, NOT_RESOLVED = 'resolved at 5 %', 'not resolved'


@dataclass(frozen=True)
class PointStats:
    """Mean, sample std (ddof 1), n and the t-based confidence interval of one point (NaN where n is too small)."""
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """A point against its baseline.

    Attributes:
        test: 'paired t' or 'Welch t', '' where no test could be made (`reason` says why).
        n: Runs of the point (pairs for a paired test).
        n_base: Runs of the baseline.
        delta: mean(point) - mean(baseline); NaN when either side has no run.
        ci_low: Lower end of the confidence interval of delta.
        ci_high: Upper end.
        df: Degrees of freedom of the test (n - 1 paired; Welch-Satterthwaite otherwise).
        p: Two-sided p-value, uncorrected.
        spread: Std of the per-seed differences (paired) or sqrt of the mean of the two variances (Welch): the
            spread `seeds_to_resolve` assumes.
        reason: Why there is no test ('n = 1: no test', ...); '' when there is one.
    """
    test: str
    n: int
    n_base: int
    delta: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    df: float = math.nan
    p: float = math.nan
    spread: float = math.nan
    reason: str = ''


def describe(values: Sequence[float], level: float = LEVEL) -> PointStats:
    """Summary of one point's runs; NaN values must be removed by the caller (they are data problems, not runs)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return PointStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return PointStats(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    if std == 0:  # scipy's t with scale 0 is undefined; identical runs give a zero-width interval
        return PointStats(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=std / math.sqrt(n))
    return PointStats(n, mean, std, float(low), float(high))


def compare(values: Mapping[Hashable, float], base: Mapping[Hashable, float], level: float = LEVEL) -> Comparison:
    """Test a point (`values`, keyed by seed) against its baseline (`base`, keyed by seed).

    Paired when both hold the same seeds (at least two), Welch's otherwise. Keys that are not seeds (runs without
    a seed column) never coincide between points, so such runs are compared unpaired.
    """
    a, b = np.asarray(list(values.values()), dtype=float), np.asarray(list(base.values()), dtype=float)
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        reason = 'no run: no test' if not len(a) or not len(b) else 'n = 1: no test'
        return Comparison('', len(a), len(b), delta, reason=reason)
    if set(values) == set(base):
        seeds = sorted(values, key=repr)  # pair run i of the point with run i of the baseline: same seed
        a = np.asarray([values[s] for s in seeds], dtype=float)
        b = np.asarray([base[s] for s in seeds], dtype=float)
        spread = float(np.std(a - b, ddof=1))
        if spread == 0:
            return Comparison('paired t', len(a), len(b), delta, spread=0.0,
                              reason='identical per-seed differences: no test')
        result = stats.ttest_rel(a, b)
        test = 'paired t'
    else:
        spread = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        if spread == 0:
            return Comparison('Welch t', len(a), len(b), delta, spread=0.0, reason='no spread in either point: no test')
        result = stats.ttest_ind(a, b, equal_var=False)
        test = 'Welch t'
    ci = result.confidence_interval(level)
    return Comparison(test, len(a), len(b), delta, float(ci.low), float(ci.high), float(result.df),
                      float(result.pvalue), spread)


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values of one family (NaN, for comparisons without a test, stays NaN and does not count)."""
    from statsmodels.stats.multitest import multipletests
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method='holm')[1]
    return out.tolist()


def verdict(c: Comparison, p_adjusted: float, alpha: float = ALPHA) -> str:
    """The comparison in words: resolved, not resolved, or why there is no test."""
    if c.reason:
        return c.reason
    return RESOLVED if p_adjusted < alpha else NOT_RESOLVED


def seeds_to_resolve(c: Comparison, alpha: float = ALPHA, power: float = POWER) -> Optional[int]:
    """Seeds per point that would resolve the observed Δ at `alpha` with `power`, at the observed spread.

    Paired: the one-sample t-test power of the per-seed differences. Welch: the two-sample t-test power with equal
    seeds per point (statsmodels has no Welch power; at equal n and the mean variance it is the usual stand-in).
    None when there is nothing to extrapolate from (no test, no spread, Δ = 0) or more than `MAX_SEEDS` would be
    needed. Pass `alpha` divided by the number of comparisons to plan for Holm's strictest step.
    """
    from statsmodels.stats.power import TTestIndPower, TTestPower
    if c.test == '' or not c.spread or not c.delta or math.isnan(c.spread):
        return None
    effect = abs(c.delta) / c.spread

    def achieved(n: int) -> float:
        if c.test == 'paired t':
            return TTestPower().power(effect_size=effect, nobs=n, alpha=alpha, alternative='two-sided')
        return TTestIndPower().power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0, alternative='two-sided')

    # power grows with n: the smallest n whose power reaches the target (exact, no root finding to fail)
    return next((n for n in range(2, MAX_SEEDS + 1) if achieved(n) >= power), None)
