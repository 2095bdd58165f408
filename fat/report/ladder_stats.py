"""Statistics of fidelity ladders, and nothing else (numbers in, numbers out): which points a rung cannot yet
exclude (`select`, what `fat sweep promote` launches at the next rung) and how well two rungs agree on the ranking of
the points they share (`agreement`).

A point's runs are a mapping seed -> metric (usable runs only). `select` is one round of successive halving with a
statistical cut: the point with the highest mean is the rung's best; every other point is compared with it by
`fat.report.stats` (paired t over shared seeds, else Welch; Holm over the comparisons; TOST at ±min_effect) and is
dropped only where the verdict is `differs` with a lower mean: a point worse by less than min_effect, equivalent, or
inconclusive stays. The best point is chosen on the same data it is compared on, which favours it: the cut is, if
anything, generous to the others. `--top-k` replaces the cut by the k highest means.

`agreement` resamples each point's seeds with replacement, at each rung independently (scipy.stats.bootstrap over the
2 x points samples, percentile intervals), and recomputes from each resample Kendall's τ-b and Spearman's ρ between the
point means of the two rungs and whether the lower rung's best point is the upper rung's best.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as sps

from . import stats

__all__ = ['Decision', 'select', 'Agreement', 'agreement', 'N_RESAMPLES', 'LEVEL', 'MIN_POINTS']

Runs = Mapping[Hashable, float]
N_RESAMPLES = 2000  # bootstrap resamples of an agreement interval
LEVEL = 0.95
MIN_POINTS = 3  # rank correlations of fewer points say nothing


@dataclass(frozen=True)
class Decision:
    """Whether a point goes on to the next rung, and why (one line)."""
    point: str
    promote: bool
    mean: float
    n: int
    why: str


def _mean(runs: Runs) -> float:
    return float(np.mean(list(runs.values()))) if runs else math.nan


def select(points: Mapping[str, Runs], min_effect: float, top_k: Optional[int] = None,
           alpha: float = stats.ALPHA) -> List[Decision]:
    """One decision per point, best first (points without a usable run last, never promoted)."""
    ranked = sorted((p for p in points if points[p]), key=lambda p: -_mean(points[p]))
    out: List[Decision] = []
    if not ranked:
        return [Decision(p, False, math.nan, 0, 'no usable run') for p in points]
    best = ranked[0]
    if top_k is not None:
        for i, p in enumerate(ranked):
            out.append(Decision(p, i < top_k, _mean(points[p]), len(points[p]),
                                f'rank {i + 1} of {len(ranked)} by mean ({"within" if i < top_k else "outside"} '
                                f'the top {top_k})'))
    else:
        others = ranked[1:]
        comparisons = [stats.compare(points[p], points[best]) for p in others]
        p_holm = stats.holm([c.p for c in comparisons])
        p_tost = stats.holm([stats.tost(c, min_effect) for c in comparisons])
        out.append(Decision(best, True, _mean(points[best]), len(points[best]), 'the best mean at this rung'))
        for p, c, ph, pt in zip(others, comparisons, p_holm, p_tost, strict=True):
            verdict = stats.verdict(c, ph, pt, min_effect, alpha)
            worse = verdict == stats.DIFFERS and c.delta < 0
            detail = f'Δ {c.delta:+.2f} vs the best: {verdict}' + (f' ({c.test}, p {ph:.3g} Holm)' if c.test else '')
            out.append(Decision(p, not worse, _mean(points[p]), len(points[p]),
                                detail + ('' if worse else f'; not shown worse at ±{min_effect:g}')))
    out += [Decision(p, False, math.nan, 0, 'no usable run') for p in points if not points[p]]
    return out


@dataclass(frozen=True)
class Agreement:
    """Rank agreement of two rungs over the points they share (each with at least two runs at both)."""
    points: Tuple[str, ...]
    lower_means: Tuple[float, ...]
    upper_means: Tuple[float, ...]
    tau: float
    tau_low: float
    tau_high: float
    rho: float
    rho_low: float
    rho_high: float
    p_same_best: float  # share of resamples in which the lower rung's best point is the upper rung's best
    same_best: bool  # in the data as observed
    n_resamples: int
    reason: str = ''  # why no statistic ('' when there is one)

    @property
    def resolved(self) -> bool:
        """Whether the τ interval excludes 0 (the rungs agree more than chance says, or less)."""
        return not self.reason and not math.isnan(self.tau_low) and (self.tau_low > 0 or self.tau_high < 0)


def _rank_stats(lower: Sequence[float], upper: Sequence[float]) -> Tuple[float, float, float]:
    """(τ-b, ρ, lower's best == upper's best) of two vectors of point means; τ and ρ are NaN where one rung's means
    are all tied."""
    with warnings.catch_warnings():  # tied means: NaN, handled by the callers
        warnings.simplefilter('ignore', sps.ConstantInputWarning)
        tau = sps.kendalltau(lower, upper).statistic
        rho = sps.spearmanr(lower, upper).statistic
    return float(tau), float(rho), float(np.argmax(lower) == np.argmax(upper))


def agreement(lower: Mapping[str, Runs], upper: Mapping[str, Runs], n_resamples: int = N_RESAMPLES,
              seed: int = 0, level: float = LEVEL) -> Agreement:
    """τ and ρ between the point means of two rungs, their percentile intervals and P(same best) by resampling each
    point's seeds at each rung (`seed` makes it reproducible)."""
    shared = [p for p in lower if p in upper and len(lower[p]) >= 2 and len(upper[p]) >= 2]
    lo = tuple(_mean(lower[p]) for p in shared)
    up = tuple(_mean(upper[p]) for p in shared)
    nan = math.nan
    if len(shared) < MIN_POINTS:
        return Agreement(tuple(shared), lo, up, nan, nan, nan, nan, nan, nan, nan,
                         bool(shared) and int(np.argmax(lo)) == int(np.argmax(up)), 0,
                         f'{len(shared)} shared point(s) with two or more runs at both rungs (needs {MIN_POINTS})')
    tau, rho, same = _rank_stats(lo, up)
    if math.isnan(tau):
        return Agreement(tuple(shared), lo, up, nan, nan, nan, nan, nan, nan, nan, bool(same), 0,
                         "one rung's point means are all tied: no rank statistic")
    k = len(shared)
    samples = [np.asarray(list(lower[p].values()), dtype=float) for p in shared]
    samples += [np.asarray(list(upper[p].values()), dtype=float) for p in shared]

    def statistic(*resampled: np.ndarray) -> np.ndarray:
        means = [float(np.mean(x)) for x in resampled]
        t, r, s = _rank_stats(means[:k], means[k:])
        # a resample with tied means everywhere has no rank statistic: count it as no agreement
        return np.array([0.0 if math.isnan(t) else t, 0.0 if math.isnan(r) else r, s])

    res = sps.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=level, method='percentile',
                        vectorized=False, paired=False, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return Agreement(tuple(shared), lo, up, tau, float(low[0]), float(high[0]), rho, float(low[1]), float(high[1]),
                     float(np.mean(res.bootstrap_distribution[2])), bool(same), n_resamples)


def point_runs(rows: Sequence[Tuple[str, Hashable, float]]) -> Dict[str, Dict[Hashable, float]]:
    """(point, seed, metric) rows -> {point: {seed: metric}}, NaN metrics left out, points in first-seen order."""
    out: Dict[str, Dict[Hashable, float]] = {}
    for point, seed, value in rows:
        runs = out.setdefault(point, {})
        if value is not None and not math.isnan(float(value)):
            runs[seed] = float(value)
    return out
