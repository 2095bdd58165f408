"""The ladder report on a fixed pair of rung collections (tests/data/ladder: 5 points x 3 seeds at `lo`, 4 of them
at `hi`): τ and ρ are scipy's, their intervals are scipy.stats.bootstrap's over each point's seeds and reproducible,
compute and the promotion summary are counted from the rows, and the tables and figure are written."""
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fat.report import ladder_stats
from fat.report.analysis import load_analysis
from fat.report.figures import write_figure
from fat.report.ladders import ladder_agreement_figure, ladder_tables
from fat.report.measured import load_measurements
from fat.report.tables import write_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / 'tests' / 'data' / 'ladder'
RESAMPLES = 200  # enough to test the wiring, fast


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    results = tmp_path_factory.mktemp('results')
    for path in DATA.glob('*.csv'):
        shutil.copy(path, results / path.name)
    a = load_analysis(REPO / 'analysis')
    spec = dict(a.tables['ladder'], resamples=RESAMPLES)
    m = load_measurements(results)
    tables = ladder_tables('ladder', spec, a, m)
    for table in tables:
        table.definition = 'ladder'  # what fat.report.tables.build_tables sets
    return a, spec, m, tables, results


def _runs(rung):
    frame = pd.read_csv(next(DATA.glob(f'toy.{rung}-*.csv')))
    done = frame[frame['status'] == 'DONE']
    return {p: dict(zip(g['seed'], g['top1'], strict=True)) for p, g in done.groupby('fasa', sort=False)}


def test_tau_and_rho_are_scipys_and_their_intervals_scipys_bootstrap(built):
    _, _, _, tables, _ = built
    row = tables[0].data.iloc[0]
    lo, hi = _runs('lo'), _runs('hi')
    shared = [p for p in lo if p in hi]
    assert row['points'] == len(shared) == 4
    x, y = [np.mean(list(lo[p].values())) for p in shared], [np.mean(list(hi[p].values())) for p in shared]
    assert row['tau'] == stats.kendalltau(x, y).statistic
    assert row['rho'] == stats.spearmanr(x, y).statistic
    # the interval: percentile bootstrap resampling each point's seeds at each rung, seed 0
    samples = [np.asarray(list(lo[p].values())) for p in shared] + [np.asarray(list(hi[p].values())) for p in shared]

    def tau(*s):
        return stats.kendalltau([v.mean() for v in s[:4]], [v.mean() for v in s[4:]]).statistic

    ref = stats.bootstrap(samples, tau, n_resamples=RESAMPLES, method='percentile', vectorized=False,
                          rng=np.random.default_rng(0)).confidence_interval
    assert (row['tau_low'], row['tau_high']) == pytest.approx((ref.low, ref.high))
    assert row['tau_low'] <= row['tau'] <= row['tau_high'] and row['rho_low'] <= row['rho'] <= row['rho_high']
    assert 0 <= row['p_same_best'] <= 1


def test_the_interval_is_reproducible_and_changes_with_the_seed():
    lo, hi = _runs('lo'), _runs('hi')
    a, b = ladder_stats.agreement(lo, hi, RESAMPLES, seed=0), ladder_stats.agreement(lo, hi, RESAMPLES, seed=0)
    c = ladder_stats.agreement(lo, hi, RESAMPLES, seed=1)
    assert a == b
    assert (a.tau_low, a.tau_high, a.p_same_best) != (c.tau_low, c.tau_high, c.p_same_best)
    few = ladder_stats.agreement({p: lo[p] for p in list(lo)[:2]}, hi, RESAMPLES)
    assert math.isnan(few.tau) and 'needs 3' in few.reason and not few.resolved


def test_compute_and_what_promotion_found(built):
    _, _, _, tables, _ = built
    rungs = tables[1].data.set_index('rung')
    assert rungs.loc['lo', 'cells'] == 15 and rungs.loc['lo', 'cell_hours'] == pytest.approx(15 * 5 / 3600)
    assert rungs.loc['hi', 'cells'] == 12 and rungs.loc['hi', 'path_cells'] == 9  # 3 points promoted, 1 launched
    notes = ' '.join(tables[0].notes)
    hi = _runs('hi')
    best = max(hi, key=lambda p: np.mean(list(hi[p].values())))
    assert f'ranks `fasa={best}` first by mean; promotion found it' in notes
    path = 15 * 5 + 9 * 30
    full_estimate = 12 * 30 / 12 * 15
    assert f'{100 * path / full_estimate:.0f} % of the full grid' in notes and 'estimated from the mean' in notes


def test_tables_and_figure_are_written(built, tmp_path):
    a, _, _, tables, _ = built
    written = [p for t in tables for p in write_table(t, a, tmp_path / 'tables')]
    assert {p.name for p in written} >= {'ladder-toy-pt2.14-cpu-test.md', 'ladder_rungs-toy-pt2.14-cpu-test.md'}
    md = (tmp_path / 'tables' / 'ladder-toy-pt2.14-cpu-test.md').read_text()
    assert 'Kendall τ [95 % CI]' in md and f'{RESAMPLES} bootstrap resamples' in md
    figures = ladder_agreement_figure('ladder_agreement', dict(load_analysis(REPO / 'analysis').figures[
        'ladder_agreement']), a, tables)
    assert [stem for stem, _, _ in figures] == ['ladder_agreement-toy-pt2.14-cpu-test']
    paths = write_figure(figures[0][0], figures[0][1], tmp_path / 'figures')
    assert all(p.stat().st_size > 1000 for p in paths)


def test_halving_replayed_where_every_point_ran_at_every_rung(tmp_path):
    a = load_analysis(REPO / 'analysis')
    lo = pd.read_csv(next(DATA.glob('toy.lo-*.csv')))
    hi = pd.read_csv(next(DATA.glob('toy.hi-*.csv')))
    missing = hi['status'] != 'DONE'  # the point not run at `hi`: run it, 1 point below the others
    hi.loc[missing, ['status', 'top1', 'train_time_s']] = ['DONE', 79.0, 30.0]
    lo.to_csv(tmp_path / 'toy.lo-pt2.14-cpu-test.csv', index=False)
    hi.to_csv(tmp_path / 'toy.hi-pt2.14-cpu-test.csv', index=False)
    tables = ladder_tables('ladder', dict(a.tables['ladder'], resamples=50), a, load_measurements(tmp_path))
    lo_means = lo.groupby('fasa', sort=False)['top1'].mean()
    kept = list(lo_means.sort_values(ascending=False, kind='stable').index[:3])  # 5 points -> the 3 best
    best = hi.groupby('fasa')['top1'].mean().idxmax()
    note = [n for n in tables[0].notes if n.startswith('Replayed')][0]
    assert 'half the points at each promotion: 5 → 3' in note
    assert ', '.join(f'`fasa={p}`' for p in kept) in note
    assert ('including' if best in kept else 'missing') + " the top rung's best" in note
    assert f'{100 * (15 * 5 + 9 * 30) / (15 * 30):.0f} % of the full grid' in note
