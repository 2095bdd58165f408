"""fat/report/stats.py against values worked by hand from the t distribution, or recomputed here independently with
scipy/statsmodels calls the module does not make (one-sided t-tests for TOST, the noncentral t for power), not
computed by the code under test.

Closed forms used below (two-sided p of a t statistic with nu degrees of freedom, from the regularised incomplete
beta I_{nu/(nu+t^2)}(nu/2, 1/2)):
    nu = 1: p = 1 - (2/pi) atan|t|
    nu = 2: p = 1 - |t| / sqrt(2 + t^2)
    nu = 4: p = 1 - 1.5 s + 0.5 s^3, s = sqrt(t^2 / (4 + t^2))
and the 0.975 quantiles of printed t tables: t(1) = 12.7062, t(2) = 4.302653, t(4) = 2.776445.
"""
import math

import pytest
from scipy import stats as sps

from fat.report import stats

BASE = {0: 70.0, 1: 72.0, 2: 71.0}  # mean 71, sd 1
POINT = {0: 71.0, 1: 74.0, 2: 72.0}  # mean 72.3333; per-seed differences from BASE: 1, 2, 1


def test_describe_is_the_t_interval():
    s = stats.describe(list(POINT.values()))
    # mean 217/3; sd: deviations -4/3, 5/3, -1/3 -> SS 42/9, var 7/3, sd 1.527525; SE = sd / sqrt(3) = 0.881917
    # CI = mean +- 4.302653 * 0.881917 = mean +- 3.794577
    assert (s.n, s.mean, s.std) == (3, pytest.approx(72.333333), pytest.approx(1.527525, abs=1e-6))
    assert (s.ci_low, s.ci_high) == (pytest.approx(68.538756, abs=1e-5), pytest.approx(76.127910, abs=1e-5))
    one = stats.describe([81.37])
    assert one.n == 1 and one.mean == 81.37 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert stats.describe([]).n == 0
    assert stats.describe([5.0, 5.0]) == stats.PointStats(2, 5.0, 0.0, 5.0, 5.0)


def test_paired_when_the_seeds_match():
    c = stats.compare(POINT, BASE)
    # d = 1, 2, 1: mean 4/3, sd sqrt(1/3), SE 1/3, t = 4, df 2 -> p = 1 - 4/sqrt(18) = 0.057191
    # CI = 4/3 +- 4.302653/3 = [-0.100884, 2.767551]
    assert c.test == 'paired t' and c.df == 2 and c.n == c.n_base == 3
    assert c.delta == pytest.approx(4 / 3)
    assert c.p == pytest.approx(0.057191, abs=1e-6)
    assert stats.interval(c, 1) == (pytest.approx(-0.100884, abs=1e-5), pytest.approx(2.767551, abs=1e-5))
    assert c.spread == pytest.approx(math.sqrt(1 / 3)) and c.higher == 3 and c.unpaired == 0


def test_welch_when_the_seeds_differ():
    point = {3: 72.0, 4: 74.0, 5: 73.0}  # mean 73, sd 1, other seeds than BASE
    c = stats.compare(point, BASE)
    # SE = sqrt(1/3 + 1/3) = 0.816497, t = 2/SE = 2.449490; Welch-Satterthwaite df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    # p = 1 - 1.5 s + 0.5 s^3 with s = sqrt(6/10) = 0.774597 -> 0.070484; CI = 2 +- 2.776445 * 0.816497
    assert c.test == 'Welch t' and c.df == pytest.approx(4.0)
    assert c.p == pytest.approx(0.070484, abs=1e-6)
    assert stats.interval(c, 1) == (pytest.approx(-0.266958, abs=1e-5), pytest.approx(4.266958, abs=1e-5))
    assert c.higher is None  # no seed pairs: 'k of n seeds higher' means nothing


def test_pairs_on_the_shared_seeds_when_a_cell_failed():
    """Issue 27: one failed cell used to throw all pairing away (Welch). Now the seeds both ran are paired."""
    point = {0: 71.0, 1: 74.0, 2: 72.0, 3: 73.0}  # seed 3 has no baseline run (its baseline cell failed)
    c = stats.compare(point, BASE)
    assert (c.test, c.n, c.unpaired) == ('paired t', 3, 1)
    assert c.p == pytest.approx(0.057191, abs=1e-6) and c.delta == pytest.approx(4 / 3)  # as the 3 shared seeds


def test_bonferroni_interval_at_the_family_size():
    c = stats.compare(POINT, BASE)
    # level 1 - 0.05/3: t quantile 0.991667 at df 2, times SE 1/3
    half = sps.t.ppf(1 - 0.05 / 6, 2) / 3
    assert stats.interval(c, 3) == (pytest.approx(4 / 3 - half), pytest.approx(4 / 3 + half))


@pytest.mark.parametrize('margin', [0.5, 1.0, 3.0])
def test_tost_is_the_larger_one_sided_p(margin: float):
    """Two one-sided tests (Schuirmann): recomputed with scipy's one-sided t-tests on the shifted differences."""
    c = stats.compare(POINT, BASE)
    d = [POINT[s] - BASE[s] for s in BASE]
    lower = sps.ttest_1samp(d, -margin, alternative='greater').pvalue
    upper = sps.ttest_1samp(d, margin, alternative='less').pvalue
    assert stats.tost(c, margin) == pytest.approx(max(lower, upper), rel=1e-9)
    point = {3: 72.0, 4: 74.0, 5: 73.0}
    w = stats.compare(point, BASE)
    a, b = list(point.values()), list(BASE.values())
    lower = sps.ttest_ind([x + margin for x in a], b, equal_var=False, alternative='greater').pvalue
    upper = sps.ttest_ind([x - margin for x in a], b, equal_var=False, alternative='less').pvalue
    assert stats.tost(w, margin) == pytest.approx(max(lower, upper), rel=1e-9)


def test_three_verdicts():
    c = stats.compare(POINT, BASE)
    assert stats.verdict(c, 0.01, 0.5, 1.0) == stats.DIFFERS
    assert stats.verdict(c, 0.5, 0.01, 1.0) == 'equivalent within ±1'
    assert stats.verdict(c, 0.01, 0.01, 1.0) == 'differs, by less than ±1'
    assert stats.verdict(c, 0.5, 0.5, 1.0) == stats.INCONCLUSIVE


def test_the_issue_s_example_is_not_resolved():
    """The old demo's global_only vs fasa: "Δ exceeds noise: yes" under |Δ| > 2·SE, but Welch's p is 0.28 (the
    issue rounds it to 0.29)."""
    fasa, global_only = {0: 81.37, 1: 80.44}, {'a': 79.93, 'b': 79.94}  # keys differ: unpaired
    c = stats.compare(global_only, fasa)
    # t = -0.97 / sqrt(0.43245/2 + 0.00005/2) = -2.08590, df = 1.0002 ~ 1 -> p ~ 1 - (2/pi) atan(2.08590) = 0.2845
    assert c.test == 'Welch t' and c.df == pytest.approx(1.0, abs=1e-3)
    assert c.p == pytest.approx(1 - 2 / math.pi * math.atan(2.08590), abs=2e-4)
    # paired (same seeds): d = -1.44, -0.50, t = -0.97 / (0.664680 / sqrt 2) = -2.0638, df 1 -> p = 0.2873
    paired = stats.compare({0: 79.93, 1: 79.94}, fasa)
    assert paired.test == 'paired t' and paired.p == pytest.approx(1 - 2 / math.pi * math.atan(2.063808), abs=1e-5)
    assert stats.verdict(paired, paired.p, stats.tost(paired, 1.0), 1.0) == stats.INCONCLUSIVE


def test_no_test_without_two_runs_or_spread():
    one = stats.compare({0: 80.0}, BASE)
    assert one.test == '' and one.reason == 'n = 1: no test' and one.delta == pytest.approx(9.0)
    assert stats.verdict(one, math.nan, math.nan, 1.0) == 'n = 1: no test'
    assert stats.seeds_for(one, 1.0, 0.05) is None and math.isnan(stats.detectable(one, 0.05))
    none = stats.compare({}, BASE)
    assert none.reason == 'no run: no test' and math.isnan(none.delta)


def test_identical_per_seed_differences_are_a_result():
    """Issue 27: every seed differing by exactly +1 used to get 'no test'; it is a difference with no spread."""
    flat = stats.compare({0: 71.0, 1: 73.0, 2: 72.0}, BASE)
    assert (flat.test, flat.p, flat.reason) == ('paired t', 0.0, '') and stats.interval(flat, 3) == (1.0, 1.0)
    assert stats.tost(flat, 0.5) == 1.0 and stats.tost(flat, 2.0) == 0.0
    same = stats.compare(dict(BASE), BASE)
    assert same.p == 1.0 and stats.verdict(same, 1.0, stats.tost(same, 1.0), 1.0) == 'equivalent within ±1'


def test_holm():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(1 x 0.04, 0.06) = 0.06; NaN is not a test
    assert stats.holm([0.01, math.nan, 0.04, 0.03]) == pytest.approx([0.03, math.nan, 0.06, 0.06], nan_ok=True)
    assert stats.holm([]) == []


@pytest.mark.parametrize('kind', ['paired', 'welch'])
def test_seeds_for_min_effect_is_the_smallest_n_with_80_percent_power(kind: str):
    """Planned at the declared effect, not the observed Δ (observed power restates p); checked against the
    noncentral t distribution directly (scipy.stats.nct), and against statsmodels' solver rounded up."""
    from statsmodels.stats.power import TTestIndPower, TTestPower
    c = stats.compare(POINT, BASE) if kind == 'paired' else stats.compare({3: 72.0, 4: 74.0, 5: 73.0}, BASE)
    margin = 0.75
    effect = margin / c.spread

    def power(n: int, alpha: float) -> float:
        df, nc = (n - 1, effect * math.sqrt(n)) if kind == 'paired' else (2 * n - 2, effect * math.sqrt(n / 2))
        crit = sps.t.ppf(1 - alpha / 2, df)
        return sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    for alpha in (0.05, 0.05 / 3):
        n = stats.seeds_for(c, margin, alpha)
        assert n is not None and power(n, alpha) >= 0.8 > power(n - 1, alpha)
        solver = TTestPower().solve_power(effect, nobs=None, alpha=alpha, power=0.8) if kind == 'paired' else \
            TTestIndPower().solve_power(effect, nobs1=None, alpha=alpha, power=0.8)
        assert n == math.ceil(float(solver))
    assert stats.seeds_for(c, margin / 100, 0.05) is None  # more than MAX_SEEDS
    # the observed Δ plays no part: the same spread with another Δ plans the same seeds
    shifted = stats.compare({k: v + 5 for k, v in POINT.items()}, BASE)
    assert stats.seeds_for(shifted, margin, 0.05) == stats.seeds_for(stats.compare(POINT, BASE), margin, 0.05)


def test_detectable_is_the_effect_with_80_percent_power_at_the_current_n():
    from statsmodels.stats.power import TTestPower
    c = stats.compare(POINT, BASE)  # n = 3 pairs
    d = stats.detectable(c, 0.05 / 3)
    crit = sps.t.ppf(1 - 0.05 / 6, 2)
    assert sps.nct.sf(crit, 2, d / c.spread * math.sqrt(3)) == pytest.approx(0.8, abs=1e-6)
    five = stats.compare({s: v + 0.1 * s for s, v in {**POINT, 3: 73.0, 4: 70.0}.items()},
                         {**BASE, 3: 72.5, 4: 70.2})
    effect = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05 / 3, power=0.8)
    assert stats.detectable(five, 0.05 / 3) == pytest.approx(effect * five.spread, rel=1e-6)


def test_outliers_by_the_modified_z_score():
    # median 0.6, |x - median| = 0, 0.1, 0.1, 0, 3.6: MAD 0.1, scaled 0.1 / 0.67449 = 0.148260 -> z(−3) = 24.3
    assert stats.outliers([0.6, 0.5, 0.7, 0.6, -3.0]) == [False, False, False, False, True]
    assert stats.outliers([0.6, 0.5, 0.7, 0.55, 0.65]) == [False] * 5
    assert stats.outliers([1.0, 9.0]) == [False, False]  # two runs: no median to be far from
