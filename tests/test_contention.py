"""Contention is detected, re-timed and flagged (fat/contention.py), and no flagged figure reaches a rank statement
(fat/report/speed_ranks.py): a real CPU hog on the benchmark's core, the rank rule on fixed rounds, and the README's
speed ranks against the committed table."""
import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fat.contention import CALIBRATION_MAX, CPU_SHARE_MIN, Monitor, judge, summarize_checks
from fat.report import load_analysis, load_measurements
from fat.report.speed_ranks import Timed, order, rank_row
from fat.report.tables import build_tables

REPO = Path(__file__).resolve().parents[1]


def test_judge_names_each_bound_it_crosses():
    assert judge(0.95, 1.05) == []
    assert judge(CPU_SHARE_MIN - 0.01, 1.0) == [f'CPU share 0.89 < {CPU_SHARE_MIN:.2f}']
    assert judge(1.0, CALIBRATION_MAX + 0.01) == [f'calibration 1.11x > {CALIBRATION_MAX:.2f}x']
    assert len(judge(0.5, 2.0)) == 2
    assert judge(0.1, 1.0, judge_cpu=False) == []  # on CUDA the host thread waits for the GPU: not judged


def test_a_round_that_gets_no_cpu_is_retimed_then_kept_flagged():
    # a round that sleeps gets (almost) no CPU time: its thread's share is ~0 whatever else the machine does
    monitor = Monitor(retries=2, wait=0.01)
    calls = []
    result, check = monitor.measure(lambda: calls.append(time.sleep(0.05)) or 'timed')
    assert result == 'timed' and len(calls) == 3 and check.attempts == 3
    assert check.contended and check.cpu_share < 0.2 and check.reasons[0].startswith('CPU share')
    columns = summarize_checks([check, check])
    assert columns['retimed'] == 4 and columns['contended'].startswith('round 1: CPU share')
    assert 'round 2: CPU share' in columns['contended']


def _pinned_to(core: int):
    return lambda: os.sched_setaffinity(0, {core})


def test_a_cpu_hog_on_the_benchmarks_core_is_retimed_flagged_and_never_ranked(tmp_path):
    """fat bench on one core, two rounds; once both contenders finished round 1, a busy loop starts on the same
    core. Round 2 must be re-timed and, still contended, flagged; the report must not rank the figures."""
    core = min(os.sched_getaffinity(0))
    cmd = [sys.executable, '-m', 'fat.cli', 'bench', 'fat_b0', 'pvt_v2_b0', '--setting', 'as_built', '--batch-size',
           '1', '--threads', '1', '--rounds', '2', '--warmup', '1', '--iters', '2', '--retries', '1', '--no-progress',
           '--results-dir', str(tmp_path)]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_pinned_to(core), cwd=REPO)
    hog, log = None, []
    try:
        for line in bench.stderr:
            log.append(line)
            if hog is None and sum(seen.startswith('round 1/2') for seen in log) == 2:
                hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'], preexec_fn=_pinned_to(core))
        assert bench.wait(timeout=120) == 0, ''.join(log)
    finally:
        for p in (bench, hog):
            if p is not None and p.poll() is None:
                p.kill()
    assert hog is not None, ''.join(log)
    files = list(tmp_path.glob('bench-*.csv'))
    assert len(files) == 1
    rows = {r['model']: r for r in csv.DictReader(files[0].open())}
    for model in ('fat_b0', 'pvt_v2_b0'):
        row = rows[model]
        shares = [float(v) for v in row['round_cpu_share'].split(';')]
        assert len(shares) == 2 and shares[1] < CPU_SHARE_MIN, row
        assert int(row['retimed']) >= 1, row  # round 2 timed again
        assert 'round 2: CPU share' in row['contended'], row
        assert float(row['calibration_ms']) > 0 and len(row['round_load'].split(';')) == 2
    assert any('CONTENDED' in line for line in log)

    # the report: both figures are shown as contended, and no rank statement uses them
    shutil.copy(next((REPO / 'results').glob('flops-peers-224-*.jsonl')), tmp_path)
    tables = {t.name: t for t in build_tables(load_analysis(REPO / 'analysis'),
                                              load_measurements(tmp_path, REPO / 'results' / 'complexity-pins.json'))}
    speed = tables['speed'].display.set_index('Model')
    assert speed.loc['FAT-B0'].iloc[1].endswith('contended') and speed.loc['PVTv2-B0'].iloc[1].endswith('contended')
    ranks = tables['speed_ranks'].data
    (row,) = ranks[ranks['model'] == 'fat_b0'].to_dict('records')
    assert row['rank'] == 'not ranked' and 'contended' in row['statement']
    assert not any(row[k] for k in ('above', 'below', 'not_resolved'))


def _timed(model, rounds, problem=''):
    return Timed(model, model.upper(), sum(rounds) / len(rounds), rounds, problem)


def test_ranks_only_where_the_rounds_do_not_overlap():
    fat = _timed('fat', [20.0, 20.5, 21.0])
    slower = _timed('slow', [18.0, 19.9, 19.0])  # every round below fat's slowest
    touching = _timed('touch', [21.0, 22.0, 23.0])  # one round equal to fat's fastest: not resolved
    faster = _timed('fast', [40.0, 41.0, 42.0])
    flagged = _timed('flag', [5.0, 5.0, 5.0], problem='contended: round 2: CPU share 0.50 < 0.90')
    assert (order(fat, slower), order(fat, touching), order(fat, faster)) == ('above', 'not resolved', 'below')
    row = rank_row('M1', fat, [slower, touching, faster, flagged], 1.5)
    assert row['rank'] == '2nd-3rd of 4'  # FAST above it; TOUCH unresolved; FLAG not ranked at all
    assert row['above'] == 'SLOW (19.0)' and row['below'] == 'FAST (41.0)' and row['not_resolved'] == 'TOUCH (22.0)'
    assert 'FLAG' in row['not_ranked'] and 'FLAG' not in row['statement'].split('not ranked')[0]
    assert row['statement'] == ('FAT (20.5) in M1: 2nd-3rd of 4 among the peers within 1.5x of its MACs; above SLOW '
                                '(19.0); below FAST (41.0); not resolved against TOUCH (22.0); not ranked: FLAG '
                                '(contended: round 2: CPU share 0.50 < 0.90).')
    assert rank_row('M1', flagged, [slower], 1.5)['rank'] == 'not ranked'


def test_an_unsteady_or_unchecked_figure_is_not_ranked():
    import pandas as pd

    from fat.report.speed_ranks import figure_problem
    row = dict(round_throughputs='20.0;21.0;22.5', round_cpu_shares='1.0;1.0;1.0', contended='', spread_pct=11.9)
    assert figure_problem(pd.Series(row)) == 'unsteady: its rounds span 11.9 % (> 10 %)'
    assert figure_problem(pd.Series(dict(row, spread_pct=9.5))) == ''
    assert figure_problem(pd.Series(dict(row, round_cpu_shares=''))) == 'no contention record'
    assert figure_problem(pd.Series(dict(row, contended='round 2: CPU share 0.50 < 0.90'))).startswith('contended')
    assert figure_problem(pd.Series(dict(row, round_throughputs='20.0'))) == 'one round'


@pytest.fixture(scope='module')
def committed_ranks():
    """The speed ranks built from the committed results/, and the committed table."""
    results = REPO / 'results'
    tables = build_tables(load_analysis(REPO / 'analysis'),
                          load_measurements(results, results / 'complexity-pins.json'))
    built = next(t for t in tables if t.name == 'speed_ranks')
    committed = list(csv.DictReader((results / 'tables' / 'speed_ranks.csv').open()))
    return built, committed


def test_the_committed_speed_ranks_are_what_the_committed_measurements_give(committed_ranks):
    built, committed = committed_ranks
    assert [r['statement'] for r in committed] == list(built.data['statement'])


def test_readmes_speed_ranks_are_the_committed_tables(committed_ranks):
    """Every rank sentence of the README's speed paragraph is a statement of the committed table, and every ranked
    statement of the as_built column is in the README: the two cannot disagree."""
    built, _ = committed_ranks
    readme = ' '.join((REPO / 'README.md').read_text().split())  # the paragraph's line breaks are not content
    statements = list(built.data['statement'])
    quoted = [s for s in statements if s in readme]
    as_built = built.data[built.data['env'] == built.data['env'].iloc[0]]
    assert set(as_built['statement']) <= set(quoted), 'README does not quote the first column\'s rank statements'
    for claim in re.finditer(r'FAT-B\d \([0-9.]+\) in M\d+:', readme):
        rest = readme[claim.start():]
        assert any(rest.startswith(s) for s in statements), f'README states what the table does not: {rest[:200]}'
