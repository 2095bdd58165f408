"""fat/report/stats.py against values worked by hand from the t distribution, not computed by the code under test.

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
    assert (c.ci_low, c.ci_high) == (pytest.approx(-0.100884, abs=1e-5), pytest.approx(2.767551, abs=1e-5))
    assert c.spread == pytest.approx(math.sqrt(1 / 3))


def test_welch_when_the_seeds_differ():
    point = {3: 72.0, 4: 74.0, 5: 73.0}  # mean 73, sd 1, other seeds than BASE
    c = stats.compare(point, BASE)
    # SE = sqrt(1/3 + 1/3) = 0.816497, t = 2/SE = 2.449490; Welch-Satterthwaite df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    # p = 1 - 1.5 s + 0.5 s^3 with s = sqrt(6/10) = 0.774597 -> 0.070484; CI = 2 +- 2.776445 * 0.816497
    assert c.test == 'Welch t' and c.df == pytest.approx(4.0)
    assert c.p == pytest.approx(0.070484, abs=1e-6)
    assert (c.ci_low, c.ci_high) == (pytest.approx(-0.266958, abs=1e-5), pytest.approx(4.266958, abs=1e-5))


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
    assert stats.verdict(paired, paired.p) == stats.NOT_RESOLVED


def test_no_test_without_two_runs_or_spread():
    one = stats.compare({0: 80.0}, BASE)
    assert one.test == '' and one.reason == 'n = 1: no test' and one.delta == pytest.approx(9.0)
    assert stats.verdict(one, math.nan) == 'n = 1: no test' and stats.seeds_to_resolve(one) is None
    none = stats.compare({}, BASE)
    assert none.reason == 'no run: no test' and math.isnan(none.delta)
    flat = stats.compare({0: 71.0, 1: 73.0, 2: 72.0}, BASE)  # every per-seed difference is exactly +1
    assert flat.reason.startswith('identical per-seed differences') and math.isnan(flat.p)


def test_holm():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(1 x 0.04, 0.06) = 0.06; NaN is not a test
    assert stats.holm([0.01, math.nan, 0.04, 0.03]) == pytest.approx([0.03, math.nan, 0.06, 0.06], nan_ok=True)
    assert stats.holm([]) == [] and stats.verdict(stats.compare(POINT, BASE), 0.049) == stats.RESOLVED


@pytest.mark.parametrize('kind', ['paired', 'welch'])
def test_seeds_to_resolve_is_the_smallest_n_with_80_percent_power(kind: str):
    """Checked against the noncentral t distribution directly (scipy.stats.nct), not the statsmodels solver."""
    if kind == 'paired':
        c = stats.compare(POINT, BASE)
        effect = c.delta / c.spread

        def power(n: int, alpha: float) -> float:
            crit = sps.t.ppf(1 - alpha / 2, n - 1)
            nc = effect * math.sqrt(n)
            return sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
    else:
        c = stats.compare({3: 72.0, 4: 74.0, 5: 73.0}, BASE)
        effect = c.delta / c.spread

        def power(n: int, alpha: float) -> float:
            df = 2 * n - 2
            crit = sps.t.ppf(1 - alpha / 2, df)
            nc = effect * math.sqrt(n / 2)
            return sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    for alpha in (0.05, 0.05 / 3):
        n = stats.seeds_to_resolve(c, alpha)
        assert n is not None and power(n, alpha) >= 0.8 > power(n - 1, alpha)
    tiny = stats.Comparison('paired t', 3, 3, 0.01, spread=5.0, p=0.9)
    assert stats.seeds_to_resolve(tiny) is None  # more than MAX_SEEDS
