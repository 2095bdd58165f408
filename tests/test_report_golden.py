"""Golden end-to-end test of the report (DomainBed's pattern): real cell directories -> `fat sweep collect` ->
`fat report` -> the ablation tables, named by grid and by the environment the cells ran in, compared byte for byte
with the committed expected files; a second `fat report` must leave every file it wrote (tables, figures,
report.md) byte-identical.

Two grids, each committed under tests/data/<grid>/ as `grid.yaml` and `runs/<grid>/<cell>/` (the cell directories of
one real run, checkpoints left out):

* `report_golden`: three FASA variants x two seeds of the CPU proxy on 5,000 real Fashion-MNIST images, one epoch;
* `report_golden_windows`, not a FASA ablation: FASA's K/V window sizes x the learning rate x three seeds, likewise
  (two axes, so comparisons along each axis with the other held fixed).

To regenerate a grid's cells (only when the cell ids change, i.e. when the training config or the cell hashing
changes; ~3 minutes each on 2 cores), with GRID one of the two:

    rm -rf /tmp/golden && .venv/bin/fat sweep launch tests/data/GRID/grid.yaml --workdir /tmp/golden --cluster debug
    rm -rf tests/data/GRID/runs
    for d in /tmp/golden/GRID/*/; do out=tests/data/GRID/runs/GRID/$(basename $d)
        mkdir -p $out && cp $d/{cell,config,environment,result}.json $d/{jobs,log}.jsonl $out/
    done

To regenerate the expected tables (whenever the report's format, the table definitions or the inputs change on
purpose; read the diff before committing it):

    rm -rf /tmp/golden-out && mkdir /tmp/golden-out
    for g in report_golden report_golden_windows; do cp -r tests/data/$g/runs/$g /tmp/golden-out/
        .venv/bin/fat sweep collect tests/data/$g/grid.yaml --workdir /tmp/golden-out --out /tmp/golden-out/results
        cp /tmp/golden-out/results/tables/ablation-$g-* tests/data/$g/expected/ 2>/dev/null; done
    .venv/bin/fat report --results /tmp/golden-out/results
    for g in report_golden report_golden_windows; do cp /tmp/golden-out/results/tables/ablation-$g-pt* \
        tests/data/$g/expected/; done
"""
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fat.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = 'pt2.14-cpu-amd_epyc'  # the environment of the committed cells' environment.json
GRIDS = ('report_golden', 'report_golden_windows')
EXPECTED = [(g, f'ablation-{g}-{ENV}.{ext}') for g in GRIDS for ext in ('md', 'tex', 'csv')]


@pytest.fixture(scope='module')
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Collect the committed cells of both grids and report them once; returns the results directory."""
    work = tmp_path_factory.mktemp('golden')
    results = work / 'results'
    for grid in GRIDS:  # collect writes a complexity cache into the work directory: a copy
        shutil.copytree(REPO / 'tests' / 'data' / grid / 'runs' / grid, work / 'runs' / grid)
        assert main(['sweep', 'collect', str(REPO / 'tests' / 'data' / grid / 'grid.yaml'), '--workdir',
                     str(work / 'runs'), '--out', str(results)]) == 0
    assert main(['report', '--results', str(results), '--analysis', str(REPO / 'analysis'),
                 '--pins', str(REPO / 'results' / 'complexity-pins.json')]) == 0
    return results


def test_collect_sees_every_cell(report: Path):
    frame = pd.read_csv(report / f'report_golden-{ENV}.csv')
    assert len(frame) == 6 and set(frame['status']) == {'DONE'}
    assert sorted(frame['fasa'].unique()) == ['fasa', 'global_only', 'no_interaction']
    windows = pd.read_csv(report / f'report_golden_windows-{ENV}.csv')
    assert len(windows) == 12 and set(windows['status']) == {'DONE'}
    assert list(windows.columns[2:5]) == ['model_args', 'lr', 'seed']


@pytest.mark.parametrize('grid, name', EXPECTED)
def test_ablation_table_matches_golden(report: Path, grid: str, name: str):
    got = (report / 'tables' / name).read_text()
    assert got == (REPO / 'tests' / 'data' / grid / 'expected' / name).read_text(), \
        f'{name} differs from the golden file (see docstring)'


def test_figures_of_the_grids_are_written(report: Path):
    index = (report / 'report.md').read_text()
    for grid in GRIDS:
        for kind in ('delta', 'seeds', 'macs', 'curves'):
            stem = f'ablation_{kind}-{grid}-{ENV}'
            assert (report / 'figures' / f'{stem}.png').read_bytes().startswith(b'\x89PNG')
            assert (report / 'figures' / f'{stem}.pdf').read_bytes().startswith(b'%PDF')
            assert f'figures/{stem}.png' in index
    assert '### FASA ablation' in index and '### K/V window sizes x learning rate' in index
    assert 'Learning curves: no' not in index  # collect brought every cell's curve into results/curves/


def test_report_is_deterministic(report: Path):
    """A second run over the same inputs rewrites every file byte for byte (figures included)."""
    collected = {f'{g}-{ENV}.csv' for g in GRIDS}
    files = sorted(p for p in report.rglob('*') if p.is_file() and p.name not in collected)
    before = {p: p.read_bytes() for p in files}
    assert main(['report', '--results', str(report), '--analysis', str(REPO / 'analysis'),
                 '--pins', str(REPO / 'results' / 'complexity-pins.json')]) == 0
    assert sorted(p for p in report.rglob('*') if p.is_file() and p.name not in collected) == files
    changed = [str(p.relative_to(report)) for p in files if p.read_bytes() != before[p]]
    assert not changed, f'not reproducible: {changed}'
