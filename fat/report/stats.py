"""Statistics of ablation grids, and nothing else: numbers in, numbers out (no tables, no figures, no I/O).

A *point* of a grid is one combination of its varied axes, run once per seed. `describe` summarises a point (mean,
sample std, n and a t-based confidence interval with n - 1 degrees of freedom); `compare` sets a point against its
baseline: a paired t-test on the per-seed differences over the seeds both ran (at least two), else Welch's t-test.
One question (by default: one varied axis) is one family: `holm` corrects its p-values, and `interval` gives the
Bonferroni interval at the family's size, so that an interval excluding 0 always comes with a Holm rejection.
`tost` tests equivalence within ±min_effect (two one-sided tests), `verdict` says differs / equivalent /
inconclusive, and `seeds_for` / `detectable` plan at the declared smallest effect of interest, never at the observed
one (observed power only restates the p-value). `outliers` is the robust rule for runs far from their point.
Distributions come from scipy.stats and statsmodels; this module is glue.
"""
import math
from dataclasses import dataclass
from typing import Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ['PointStats', 'Comparison', 'describe', 'compare', 'holm', 'interval', 'tost', 'verdict', 'seeds_for',
           'detectable', 'outliers', 'ALPHA', 'POWER', 'MAX_SEEDS', 'DEFAULT_MIN_EFFECT', 'DIFFERS', 'INCONCLUSIVE',
           'equivalent_text', 'smaller_text']

ALPHA = 0.05  # family-wise error rate of one question (after Holm's correction)
LEVEL = 0.95  # confidence level of a point's interval (Δ intervals: 1 - ALPHA / family size)
POWER = 0.8  # target power of `seeds_for` and `detectable`
MAX_SEEDS = 200  # planning stops here: beyond it the answer is "more than 200"
DEFAULT_MIN_EFFECT = 1.0  # the smallest effect of interest when none is declared: 1 point of the metric (top-1 %)
OUTLIER_Z = 3.5  # modified z-score beyond which a run is an outlier (Iglewicz & Hoaglin 1993)
DIFFERS, INCONCLUSIVE = 'differs', 'inconclusive'


def equivalent_text(margin: float) -> str:
    return f'equivalent within ±{margin:g}'


def smaller_text(margin: float) -> str:
    """Both tests reject: a difference that is real and smaller than the smallest effect of interest."""
    return f'differs, by less than ±{margin:g}'


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
        n: Runs of the point in the test (pairs for a paired test).
        n_base: Runs of the baseline in the test.
        delta: mean(point) - mean(baseline) over the runs in the test; NaN when either side has no run.
        df: Degrees of freedom of the test (n - 1 paired; Welch-Satterthwaite otherwise).
        p: Two-sided p-value, uncorrected.
        spread: Std of the per-seed differences (paired) or sqrt of the mean of the two variances (Welch): the
            spread the planning assumes.
        reason: Why there is no test ('n = 1: no test', ...); '' when there is one.
        a: The point's runs in the test (paired: in seed order, aligned with `b`).
        b: The baseline's runs in the test.
        unpaired: Runs left out of a paired test because the other side has no run of their seed.
    """
    test: str
    n: int
    n_base: int
    delta: float
    df: float = math.nan
    p: float = math.nan
    spread: float = math.nan
    reason: str = ''
    a: Tuple[float, ...] = ()
    b: Tuple[float, ...] = ()
    unpaired: int = 0

    @property
    def paired(self) -> bool:
        return self.test == 'paired t'

    @property
    def higher(self) -> Optional[int]:
        """Seeds on which the point is above the baseline (paired only)."""
        return int(sum(x > y for x, y in zip(self.a, self.b, strict=True))) if self.paired else None


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


def compare(values: Mapping[Hashable, float], base: Mapping[Hashable, float]) -> Comparison:
    """Test a point (`values`, keyed by seed) against its baseline (`base`, keyed by seed).

    Paired over the seeds both ran when there are at least two (the runs of other seeds are left out and counted in
    `unpaired`), Welch's otherwise. Keys that are not seeds (runs without a seed column) never coincide between
    points, so such runs are compared unpaired.
    """
    shared = sorted(set(values) & set(base), key=repr)
    if len(shared) >= 2:
        a = np.asarray([values[s] for s in shared], dtype=float)
        b = np.asarray([base[s] for s in shared], dtype=float)
        d = a - b
        delta, spread = float(d.mean()), float(d.std(ddof=1))
        unpaired = len(values) + len(base) - 2 * len(shared)
        common = dict(a=tuple(a), b=tuple(b), unpaired=unpaired, spread=spread, df=float(len(d) - 1))
        if spread == 0:  # every seed differs by exactly Δ: no sampling spread left to test against
            return Comparison('paired t', len(d), len(d), delta, p=0.0 if delta else 1.0, **common)
        return Comparison('paired t', len(d), len(d), delta, p=float(stats.ttest_rel(a, b).pvalue), **common)
    a, b = np.asarray(list(values.values()), dtype=float), np.asarray(list(base.values()), dtype=float)
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        reason = 'no run: no test' if not len(a) or not len(b) else 'n = 1: no test'
        return Comparison('', len(a), len(b), delta, reason=reason)
    spread = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if spread == 0:
        return Comparison('', len(a), len(b), delta, spread=0.0, reason='no spread in either point: no test')
    result = stats.ttest_ind(a, b, equal_var=False)
    return Comparison('Welch t', len(a), len(b), delta, float(result.df), float(result.pvalue), spread,
                      a=tuple(a), b=tuple(b))


def interval(c: Comparison, family: int, alpha: float = ALPHA) -> Tuple[float, float]:
    """The Bonferroni interval of Δ for a family of `family` tests: level 1 - alpha/family, from the test's own t
    distribution. It excludes 0 only where p < alpha/family, where Holm's procedure rejects too."""
    if not c.test:
        return math.nan, math.nan
    level = 1 - alpha / max(family, 1)
    if c.spread == 0:
        return c.delta, c.delta
    if c.paired:
        ci = stats.ttest_rel(c.a, c.b).confidence_interval(level)
    else:
        ci = stats.ttest_ind(c.a, c.b, equal_var=False).confidence_interval(level)
    return float(ci.low), float(ci.high)


def tost(c: Comparison, margin: float) -> float:
    """p-value of the two one-sided tests that |Δ| < margin (Schuirmann 1987): the larger of the two one-sided
    p-values, paired or Welch like the difference test (statsmodels' ttost_paired / ttost_ind)."""
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired
    if not c.test:
        return math.nan
    if c.spread == 0:
        return 0.0 if abs(c.delta) < margin else 1.0
    if c.paired:
        return float(ttost_paired(np.asarray(c.a), np.asarray(c.b), -margin, margin)[0])
    return float(ttost_ind(np.asarray(c.a), np.asarray(c.b), -margin, margin, usevar='unequal')[0])


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values of one family (NaN, for comparisons without a test, stays NaN and does not count)."""
    from statsmodels.stats.multitest import multipletests
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method='holm')[1]
    return out.tolist()


def verdict(c: Comparison, p_holm: float, p_tost_holm: float, margin: float, alpha: float = ALPHA) -> str:
    """Differs (the difference test rejects), equivalent within ±margin (TOST rejects), both (a real difference
    smaller than the margin), inconclusive (neither), or why there is no test."""
    if c.reason:
        return c.reason
    differs, equivalent = p_holm < alpha, p_tost_holm < alpha
    if differs and equivalent:
        return smaller_text(margin)
    return DIFFERS if differs else equivalent_text(margin) if equivalent else INCONCLUSIVE


def _power(c: Comparison, effect: float, n: int, n_base: int, alpha: float) -> float:
    """Power of the two-sided t-test at a standardised effect: the noncentral t (scipy.stats.nct), as statsmodels'
    TTestPower (paired: df n - 1, noncentrality effect * sqrt(n)) and TTestIndPower (df n + n_base - 2,
    effect * sqrt(n n_base / (n + n_base))) compute it, except that the wrong-sign tail, which scipy returns as NaN
    where it underflows (far below 1e-17), counts as 0 instead of turning the whole power into NaN."""
    df, nc = (n - 1, effect * math.sqrt(n)) if c.paired else (n + n_base - 2, effect * math.sqrt(n * n_base / (
        n + n_base)))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)))


def seeds_for(c: Comparison, margin: float, alpha: float, power: float = POWER) -> Optional[int]:
    """Seeds per point that detect a true Δ of `margin` with `power` at `alpha`, at the spread observed.

    Paired: the one-sample t power of the per-seed differences; Welch: the two-sample t power with equal seeds per
    point at the mean of the two variances (statsmodels has no Welch power; this is its usual stand-in). With that
    many seeds the interval is also narrow enough to show equivalence when the true Δ is 0. None without a spread
    to plan from, or beyond `MAX_SEEDS`. Pass alpha / (tests in the family) to plan for Holm's strictest step.
    """
    if not c.test or not c.spread or math.isnan(c.spread):
        return None
    effect = margin / c.spread
    if _power(c, effect, MAX_SEEDS, MAX_SEEDS, alpha) < power:
        return None
    low, high = 1, MAX_SEEDS  # power grows with n: bisect for the smallest n that reaches the target
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _power(c, effect, mid, mid, alpha) >= power else (mid, high)
    return max(high, 2)


def detectable(c: Comparison, alpha: float, power: float = POWER) -> float:
    """The smallest true |Δ| the current runs detect with `power` at `alpha`, at the spread observed (NaN without
    a test or a spread)."""
    from scipy.optimize import brentq
    if not c.test or not c.spread or math.isnan(c.spread):
        return math.nan
    high = 1.0
    while _power(c, high, c.n, c.n_base, alpha) < power:  # power grows with the effect: bracket, then solve
        high *= 2
    return float(brentq(lambda e: _power(c, e, c.n, c.n_base, alpha) - power, 0.0, high, xtol=1e-10)) * c.spread


def outliers(values: Sequence[float], z: float = OUTLIER_Z) -> List[bool]:
    """Runs whose modified z-score |x - median| / MAD (MAD scaled to the normal's sd) exceeds `z` (Iglewicz &
    Hoaglin 1993); none with fewer than three runs or a MAD of 0."""
    x = np.asarray(values, dtype=float)
    if len(x) < 3:
        return [False] * len(x)
    mad = stats.median_abs_deviation(x, scale='normal')
    if mad == 0:
        return [False] * len(x)
    return (np.abs(x - np.median(x)) / mad > z).tolist()
