"""Ablation tables and figures of any collected grid (fat/report/grids.py, grid_figures.py): rows per point of the
varied axes, statistics pinned by hand from the t distribution (closed forms in tests/test_report_stats.py), bad
input as notes and counts, and `fat report` on a user grid with cell logs writing its table and four figures."""
import json
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from fat.cli import main
from fat.report import build_report, load_analysis, load_measurements
from fat.report.tables import DASH, Table, build_tables

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / 'analysis'
PINS = REPO / 'results' / 'complexity-pins.json'
ENV = 'torch 2.14.1, cpu (Test CPU), 1 process, git abc1234, host h'


def _collected(path: Path, rows: List[tuple], columns: Sequence[str] = ('fasa', 'seed', 'status', 'top1'),
               env: object = ENV) -> pd.DataFrame:
    """A collected grid in `fat sweep collect`'s column order: grid, cell, <axes>, seed, status, params, MACs, ..."""
    frame = pd.DataFrame(rows, columns=list(columns))
    frame.insert(0, 'cell', [f'c{i:02d}' for i in range(len(frame))])
    frame.insert(0, 'grid', path.stem.split('-')[0])
    frame['params'], frame['macs_paper'], frame['macs_fvcore'] = 435946, 3758864, 3911984
    frame['epochs'] = 2
    frame['environment'] = env
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope='module')
def grid_analysis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """analysis/ with only the per-grid table and figures, so that a test renders only what it checks."""
    copy = tmp_path_factory.mktemp('analysis') / 'analysis'
    shutil.copytree(ANALYSIS, copy)
    for name in ('tables', 'figures'):
        spec = yaml.safe_load((copy / f'{name}.yaml').read_text())
        keep = {k: v for k, v in spec.items() if k == 'ablation' or v.get('table') == 'ablation'}
        (copy / f'{name}.yaml').write_text(yaml.safe_dump(keep, allow_unicode=True, sort_keys=False))
    return copy


def _tables(results: Path) -> Dict[str, Table]:
    return {t.name: t for t in build_tables(load_analysis(ANALYSIS), load_measurements(results, PINS))}


def _runs(point: str, values: Sequence[float], seeds: Sequence[int] = (0, 1, 2)) -> List[tuple]:
    return [(point, s, 'DONE', v) for s, v in zip(seeds, values, strict=True)]


def test_fasa_grid_statistics(tmp_path: Path):
    _collected(tmp_path / 'toy.csv', [
        *_runs('fasa', [70, 72, 71]),
        *_runs('no_interaction', [71, 74, 72]),
        *_runs('global_only', [60, 62.5, 61]),
        ('local_only', 0, 'DONE', 65.0), ('local_only', 1, 'FAILED', None),
        ('static_conv', 0, 'FAILED', None), ('static_conv', 1, 'RUNNING', None),
        ('fasa_bidirectional', 0, 'DONE', None), ('fasa_bidirectional', 1, 'DONE', 70.5)])
    table = _tables(tmp_path)['ablation-toy']
    data = table.data.set_index('fasa')
    assert list(data.index) == ['fasa', 'no_interaction', 'global_only', 'local_only', 'static_conv',
                                'fasa_bidirectional']  # the grid's order
    # fasa: mean 71, sd 1, CI 71 +- 4.302653 / sqrt(3) = [68.515862, 73.484138]
    assert data.loc['fasa', 'verdict'] == 'baseline' and data.loc['fasa', 'n'] == 3
    assert (data.loc['fasa', 'ci_low'], data.loc['fasa', 'ci_high']) == (pytest.approx(68.5159, abs=1e-4),
                                                                         pytest.approx(73.4841, abs=1e-4))
    # no_interaction, per-seed d = 1, 2, 1: t = 4, df 2, p = 1 - 4/sqrt(18) = 0.057191
    # global_only, d = -10, -9.5, -10: mean -9.833333, SE = 0.288675/sqrt 3 = 1/6, t = -59, p = 1 - 59/sqrt(3483)
    # = 0.00028715; Holm over the 2 tests: 2 x 0.00028715 = 0.0005743, max(0.057191, 0.0005743) = 0.057191
    ni, go = data.loc['no_interaction'], data.loc['global_only']
    assert (ni['test'], ni['df'], ni['p'], ni['p_holm']) == ('paired t', 2, pytest.approx(0.057191, abs=1e-6),
                                                             pytest.approx(0.057191, abs=1e-6))
    # the interval at the Bonferroni level of the family (the fasa axis: 2 tests): 4/3 +- t(1 - 0.05/4, 2) / 3
    half = sps.t.ppf(1 - 0.05 / 4, 2) / 3
    assert (ni['delta_ci_low'], ni['delta_ci_high']) == (pytest.approx(4 / 3 - half, abs=1e-4),
                                                         pytest.approx(4 / 3 + half, abs=1e-4))
    assert ni['verdict'] == 'inconclusive' and ni['seeds_needed'] >= 4 and ni['family'] == 'fasa'
    assert (ni['higher'], ni['pairs'], ni['min_effect']) == (3, 3, 1.0)
    assert go['delta'] == pytest.approx(-9.8333, abs=1e-4)
    assert (go['p'], go['p_holm']) == (pytest.approx(0.00028715, abs=1e-7), pytest.approx(0.0005743, abs=1e-6))
    assert go['verdict'] == 'differs' and pd.isna(go['seeds_needed'])
    assert data.loc['local_only', 'verdict'] == 'n = 1: no test' and data.loc['local_only', 'cells'] == \
        '1 DONE, 1 FAILED'
    assert (data.loc['local_only', 'lost'], data.loc['local_only', 'ended']) == (1, 2)
    assert data.loc['static_conv', 'verdict'] == 'no run: no test' and data.loc['static_conv', 'n'] == 0
    assert data.loc['fasa_bidirectional', 'n'] == 1  # the NaN run is left out, counted as diverged, and said so
    assert data.loc['fasa_bidirectional', 'cells'] == '1 DONE, 1 NaN' and data.loc['fasa_bidirectional', 'lost'] == 1
    display = table.display.set_index('fasa')
    assert display.loc['FASA (official code) (`fasa`)', 'Top-1 (%) mean [95 % CI]'] == '71.00 [68.52, 73.48]'
    assert display.loc['no interaction (sum) (`no_interaction`)', 'Δ [family CI]'] == \
        f'+1.33 [{4 / 3 - half:+.2f}, {4 / 3 + half:+.2f}]'
    assert display.loc['no interaction (sum) (`no_interaction`)', 'seeds higher'] == '3 of 3'
    assert display.loc['local branch only (`local_only`)', 'failed or diverged'] == '1/2'
    assert display.loc['no interaction (sum) (`no_interaction`)', 'test'] == 'paired t, df 2'
    assert display.loc['global branch only (`global_only`)', 'p (Holm)'] == '<0.001'
    assert 'vs' not in table.display.columns  # one axis: every row has the same baseline
    notes = '\n'.join(table.notes)
    assert '1 DONE cell(s) without a `top1` value (NaN), counted as diverged: c13' in notes
    assert '3 cell(s) not DONE' in notes and '2 point(s) with one run' in notes
    assert table.meta['problems'] == 3
    needed = int(ni['seeds_needed'])
    seeds = ','.join(str(s) for s in range(needed))
    assert f'fasa=no_interaction vs fasa=fasa: {needed} seeds: `fat sweep launch ablations/toy.yaml seeds=[{seeds}]`' \
        in notes


def test_a_second_axis_is_not_averaged_as_seeds(tmp_path: Path):
    """fasa x lr: each (fasa, lr) is its own point, compared along each axis with the other held fixed."""
    columns = ('fasa', 'lr', 'seed', 'status', 'top1')
    rows = [(p, lr, s, 'DONE', v) for p, lr, values in [
        ('fasa', 0.008, [70, 72, 71]), ('fasa', 0.004, [66, 69, 67]),
        ('global_only', 0.008, [71, 74, 72]), ('global_only', 0.004, [60, 62, 61])] for s, v in enumerate(values)]
    _collected(tmp_path / 'two.csv', rows, columns)
    table = _tables(tmp_path)['ablation-two']
    got = [(r.fasa, r.lr, r.vs if isinstance(r.vs, str) else None, r.n, round(r.mean, 4))
           for r in table.data.itertuples()]
    assert got == [('fasa', '0.008', None, 3, 71.0), ('fasa', '0.004', 'lr=0.008', 3, 67.3333),
                   ('global_only', '0.008', 'fasa=fasa', 3, 72.3333), ('global_only', '0.004', 'fasa=fasa', 3, 61.0),
                   ('global_only', '0.004', 'lr=0.008', 3, 61.0)]
    # (global_only, 0.008) vs (fasa, 0.008): d = 1, 2, 1 -> p = 0.057191 (not the lr-averaged fasa point)
    row = table.data.iloc[2]
    assert row['p'] == pytest.approx(0.057191, abs=1e-6) and row['delta'] == pytest.approx(4 / 3, abs=1e-4)
    assert table.data['p_holm'].notna().sum() == 4 and 'vs' in table.display.columns
    assert any('compared along each of them' in n for n in table.notes)


def test_welch_when_points_ran_other_seeds(tmp_path: Path):
    _collected(tmp_path / 'w.csv', [*_runs('fasa', [70, 72, 71]), *_runs('global_only', [72, 74, 73], (3, 4, 5))])
    row = _tables(tmp_path)['ablation-w'].data.iloc[1]
    # SE = sqrt(2/3), t = 2.449490, Welch df = 4 -> p = 1 - 1.5 s + 0.5 s^3, s = sqrt(0.6): 0.070484
    assert (row['test'], row['df'], row['p']) == ('Welch t', 4.0, pytest.approx(0.070484, abs=1e-6))


def test_bad_input_is_a_note_and_a_count(tmp_path: Path, grid_analysis: Path):
    results = tmp_path / 'results'
    # no seed column: unpaired; no top1 column: nothing to compare; environments mixed; the declared baseline absent
    results.mkdir()
    pd.DataFrame(dict(grid='noseed', cell=['a', 'b', 'c', 'd'], fasa=['fasa', 'fasa', 'global_only', 'global_only'],
                      status='DONE', top1=[70., 72., 60., 61.], epochs=2)).to_csv(results / 'noseed.csv', index=False)
    pd.DataFrame(dict(grid='nometric', cell=['a', 'b'], fasa=['fasa', 'global_only'], seed=0, status='DONE',
                      epochs=2)).to_csv(results / 'nometric.csv', index=False)
    _collected(results / 'mixed.csv', [*_runs('fasa', [70, 72, 71]), *_runs('global_only', [60, 62, 61])],
               env=[ENV] * 3 + [ENV.replace('torch 2.14.1', 'torch 2.9.1')] * 3)
    _collected(results / 'nobase.csv', [*_runs('global_only', [60, 62, 61]), *_runs('local_only', [65, 66, 64])])
    _collected(results / 'undeclared.csv', [(dp, s, 'DONE', v) for dp, values in [(0.1, [70, 71, 73]),
                                                                                 (0.0, [69, 70, 71])]
                                            for s, v in enumerate(values)], ('drop_path', 'seed', 'status', 'top1'))
    tables = _tables(results)
    noseed = tables['ablation-noseed']
    assert noseed.data.iloc[1]['test'] == 'Welch t' and any('no `seed` column' in n for n in noseed.notes)
    nometric = tables['ablation-nometric']
    assert list(nometric.data['verdict']) == ['baseline', 'no run: no test']
    assert any('no `top1` column' in n for n in nometric.notes)
    mixed = tables['ablation-mixed']
    assert any('cells ran in 2 environments' in n for n in mixed.notes)
    nobase = tables['ablation-nobase']
    assert set(nobase.data['verdict']) == {'no reference point: no test'}  # no verdict the data cannot support
    assert any('the baseline fasa=fasa never ran' in n for n in nobase.notes)
    undeclared = tables['ablation-undeclared']  # no declaration: the axis's first value is the baseline
    assert list(undeclared.data['verdict'])[0] == 'baseline' and undeclared.data['drop_path'].iloc[0] == '0.1'
    assert any('`drop_path=0.1` (the first value of the axis)' in n for n in undeclared.notes)
    assert {k: t.meta['problems'] for k, t in tables.items() if 'problems' in t.meta} == {
        'ablation-mixed': 1, 'ablation-nobase': 1, 'ablation-nometric': 2, 'ablation-noseed': 1,
        'ablation-undeclared': 0}
    # the whole report over the two grids with nothing to test: figures drawn, counts in the summary
    for path in results.glob('*.csv'):
        if path.stem not in ('nobase', 'nometric'):
            path.unlink()
    written, _, problems = build_report(results, grid_analysis, PINS)
    assert problems == {'ablation-nobase': 1, 'ablation-nometric': 2}
    assert '- `ablation-nobase`: 1 data problem(s) (see its notes)' in (results / 'report.md').read_text()
    assert {p.name for p in written} >= {f'ablation_{k}-{g}.png' for k in ('delta', 'seeds', 'macs', 'curves')
                                         for g in ('nobase', 'nometric')}


def _cell_dirs(work: Path, frame: pd.DataFrame, collection: Path) -> None:
    """Cell directories with the per-epoch log of fat.train (one JSON line per epoch, a resumed epoch repeated), and
    the curves file `fat sweep collect` makes of them beside the collection (read with `fat.rundir.read_log`)."""
    from fat.rundir import CURVE_KEYS, curves_path, read_log
    for i, row in frame.iterrows():
        d = work / row['cell']
        d.mkdir(parents=True)
        lines = [dict(epoch=e, train_loss=2.0 / e + 0.01 * i, val_top1=row['top1'] - 5 / e) for e in (1, 2, 3)]
        lines.insert(1, dict(epoch=2, train_loss=9.0, val_top1=0.0))  # replaced by the later line of epoch 2
        (d / 'log.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines) + '{"epoch": 4, "tor')  # torn
    curves = [{'cell': c, 'epoch': e, **{k: r.get(k) for k in CURVE_KEYS}}
              for c in frame['cell'] for e, r in read_log(work / c).items()]
    curves_path(collection).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curves).to_csv(curves_path(collection), index=False)


def test_fat_report_on_a_user_grid_writes_its_table_and_four_figures(tmp_path: Path, grid_analysis: Path,
                                                                        capsys: pytest.CaptureFixture):
    results, work = tmp_path / 'results', tmp_path / 'runs'
    rows = [(str(k), lr, s, 'DONE', v) for k, lr, values in [
        ('[3,5,7,9]', 0.004, [80.1, 81.0, 80.4]), ('[5,5,7,9]', 0.004, [80.6, 81.9, 80.8]),
        ('[3,5,7,9]', 0.002, [79.0, 79.8, 79.1])] for s, v in enumerate(values)]
    frame = _collected(results / 'kernels-pt2.14-cpu-test.csv', rows, ('kernel_sizes', 'lr', 'seed', 'status', 'top1'))
    frame['dir'] = [f'kernels/{c}' for c in frame['cell']]  # as collect writes it: relative to the work directory
    frame.to_csv(results / 'kernels-pt2.14-cpu-test.csv', index=False)
    _cell_dirs(work, frame, results / 'kernels-pt2.14-cpu-test.csv')
    shutil.rmtree(work)  # the report reads results/ alone: a clone has no run directories
    assert main(['report', '--results', str(results), '--analysis', str(grid_analysis), '--pins', str(PINS)]) == 0
    out = capsys.readouterr().out
    assert 'ablation-kernels-pt2.14-cpu-test: 0 data problems' in out
    stem = 'kernels-pt2.14-cpu-test'
    for ext in ('md', 'tex', 'csv'):
        assert (results / 'tables' / f'ablation-{stem}.{ext}').is_file()
    for kind in ('delta', 'seeds', 'macs', 'curves'):
        assert (results / 'figures' / f'ablation_{kind}-{stem}.png').read_bytes().startswith(b'\x89PNG')
        assert (results / 'figures' / f'ablation_{kind}-{stem}.pdf').read_bytes().startswith(b'%PDF')
    header = (results / 'tables' / f'ablation-{stem}.md').read_text().split('\n')[4]
    assert [h.strip() for h in header.strip('|').split('|')][:3] == ['kernel_sizes', 'lr', 'vs']
    index = (results / 'report.md').read_text()
    assert 'Learning curves: no' not in index and 'band spans the lowest to the highest seed' in index
    curves = _tables(results)[f'ablation-{stem}'].meta['curves']
    assert len(curves) == 9 * 3 and not (curves['val_top1'] == 0.0).any()  # 9 cells x 3 epochs, the last line wins
    # without the curves file the curves figure says why instead of failing
    (results / 'curves' / f'{stem}.csv').unlink()
    assert main(['report', '--results', str(results), '--analysis', str(grid_analysis), '--pins', str(PINS)]) == 0
    assert 'Learning curves: no curves file beside the collected CSV' in (results / 'report.md').read_text()


def _collect_grid(tmp_path: Path, name: str, grid: str, top1: Dict[tuple, Sequence[float]]) -> Path:
    """`fat sweep collect` of a grid whose cells finished with the given top-1 per (fasa, lr) point; then the cell
    directories are removed, as in a fresh clone that has only results/."""
    from fat.io import write_json_atomic
    from fat.sweep.collect import collect
    from fat.sweep.launch import prepare
    from fat.sweep.state import Scheduler, cell_states
    path = tmp_path / f'{name}.yaml'
    path.write_text(f"{grid}\nslurm: {{profile: {REPO / 'slurm' / 'local.yaml'}}}\n")
    sweep = prepare(path, [], tmp_path / 'runs')
    for cell in sweep.cells:
        cell.write(sweep.grid)
        value = top1[(cell.axes['fasa'], cell.axes['lr'])][cell.axes['seed']]
        write_json_atomic(cell.dir / 'result.json', {'status': 'done', 'final_top1': value, 'epochs': 1})
    out = collect(sweep, cell_states(sweep.cells, Scheduler(None, slurm=False)), tmp_path / 'results' / f'{name}.csv')
    shutil.rmtree(tmp_path / 'runs')
    return out.path


def test_a_baseline_declared_in_the_grid_file_and_its_precedence(tmp_path: Path, grid_analysis: Path):
    top1 = {('fasa', 0.008): [70, 72, 71], ('fasa', 0.004): [66, 69, 67], ('global_only', 0.008): [71, 74, 72],
            ('global_only', 0.004): [60, 62, 61]}
    # neither value is its axis's first; `fasa: fasa` in analysis/tables.yaml (per axis) is overridden by the file
    csv = _collect_grid(tmp_path, 'based', 'preset: smoke\naxes: {fasa: [fasa, global_only], lr: [8.0e-3, 4.0e-3]}\n'
                        'seeds: [0, 1, 2]\nbaseline: {fasa: global_only, lr: 4.0e-3}\nmin_effect: 0.5', top1)
    assert set(pd.read_csv(csv)['baseline']) == {'{"fasa": "global_only", "lr": 0.004}'}
    assert set(pd.read_csv(csv)['min_effect']) == {0.5}  # the grid file's min_effect travels likewise

    def rows(analysis: Path) -> tuple:
        table = {t.name: t for t in build_tables(load_analysis(analysis), load_measurements(csv.parent, PINS))}[
            'ablation-based']
        got = [(r.fasa, r.lr, r.vs if isinstance(r.vs, str) else None, round(r.delta, 4) if r.delta == r.delta
                else None) for r in table.data.itertuples()]
        return got, next(n for n in table.notes if n.startswith('Baseline: '))

    table = {t.name: t for t in build_tables(load_analysis(grid_analysis), load_measurements(csv.parent, PINS))}[
        'ablation-based']
    assert set(table.data['min_effect']) == {0.5} and any('(declared in the grid file)' in n for n in table.notes)
    got, note = rows(grid_analysis)  # per-seed differences 1, 2, 1 and the like: exact means
    assert got == [('fasa', '0.008', 'fasa=global_only', -1.3333), ('fasa', '0.008', 'lr=0.004', 3.6667),
                   ('fasa', '0.004', 'fasa=global_only', 6.3333), ('global_only', '0.008', 'lr=0.004', 11.3333),
                   ('global_only', '0.004', None, None)]
    assert note.startswith('Baseline: `fasa=global_only` (declared in the grid file), `lr=0.004` (declared in the grid '
                           'file).')
    # a per-grid declaration in analysis/ wins over the grid file, axis by axis
    analysis = tmp_path / 'analysis'
    shutil.copytree(grid_analysis, analysis)
    spec = yaml.safe_load((analysis / 'tables.yaml').read_text())
    spec['ablation']['grids']['based'] = {'baseline': {'lr': 0.008}}
    (analysis / 'tables.yaml').write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    got, note = rows(analysis)
    assert got == [('fasa', '0.008', 'fasa=global_only', -1.3333), ('fasa', '0.004', 'fasa=global_only', 6.3333),
                   ('fasa', '0.004', 'lr=0.008', -3.6667), ('global_only', '0.008', None, None),
                   ('global_only', '0.004', 'lr=0.008', -11.3333)]
    assert note.startswith('Baseline: `fasa=global_only` (declared in the grid file), `lr=0.008` (declared for this '
                           'grid in analysis/tables.yaml).')
    # without the grid file's declaration: analysis/'s per-axis `fasa: fasa`, and lr's first value
    pd.read_csv(csv).drop(columns='baseline').to_csv(csv, index=False)
    got, note = rows(grid_analysis)
    assert got[0] == ('fasa', '0.008', None, None)
    assert note.startswith('Baseline: `fasa=fasa` (declared in analysis/tables.yaml), `lr=0.008` (the first value of '
                           'the axis).')


def test_empty_results_give_the_placeholder(tmp_path: Path):
    tables = _tables(tmp_path)
    assert tables['ablation'].display.empty and 'No collected training grid' in tables['ablation'].notes[0]
    assert all(c == DASH for c in tables['imagenet'].display['Top-1 (%) measured'])


def test_the_commands_the_report_suggests_name_the_grid_file_where_it_is_kept(tmp_path: Path, grid_analysis: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    """A grid kept in mygrids/ got `fat sweep launch ablations/mine.yaml ...`: collect records the grid file
    (relative to the current directory) and the report's commands use it (issue 28 item 5)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'mygrids').mkdir()
    top1 = {('fasa', 0.008): [70.0, 72.5, 71.0], ('global_only', 0.008): [70.5, 71.0, 72.5]}  # inconclusive
    csv = _collect_grid(tmp_path / 'mygrids', 'mine', 'preset: smoke\naxes: {fasa: [fasa, global_only], lr: [8.0e-3]}'
                        '\nseeds: [0, 1, 2]', top1)
    assert set(pd.read_csv(csv)['grid_file']) == {'mygrids/mine.yaml'}
    table = {t.name: t for t in build_tables(load_analysis(grid_analysis), load_measurements(csv.parent, PINS))}[
        'ablation-mine']
    commands = [n for n in table.notes if 'fat sweep launch' in n]
    assert commands and all('fat sweep launch mygrids/mine.yaml' in n for n in commands), table.notes
