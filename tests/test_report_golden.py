"""Golden end-to-end test of the report (DomainBed's pattern): real cell directories -> `fat sweep collect` ->
`fat report` -> the ablation table, named by grid and by the environment the cells ran in, compared byte for byte
with the committed expected files; a second
`fat report` must leave every file it wrote (tables, figures, report.md) byte-identical.

The inputs are committed under tests/data/report_golden/: `grid.yaml` (three FASA presets x two seeds of the CPU
proxy on 5,000 real Fashion-MNIST images, one epoch) and `runs/report_golden/<cell>/`, the cell directories of one
real run of that grid, checkpoints left out. To regenerate them (only when the cell ids change, i.e. when the
training config or the cell hashing changes; ~3 minutes on 2 cores):

    rm -rf /tmp/golden && .venv/bin/fat sweep launch tests/data/report_golden/grid.yaml --workdir /tmp/golden \\
        --cluster debug
    rm -rf tests/data/report_golden/runs
    for d in /tmp/golden/report_golden/*/; do out=tests/data/report_golden/runs/report_golden/$(basename $d)
        mkdir -p $out && cp $d/{cell,config,environment,result}.json $d/{jobs,log}.jsonl $out/
    done

To regenerate the expected tables (whenever the report's format, the table definitions or the inputs change on
purpose; read the diff before committing it):

    rm -rf /tmp/golden-out && cp -r tests/data/report_golden/runs /tmp/golden-out
    .venv/bin/fat sweep collect tests/data/report_golden/grid.yaml --workdir /tmp/golden-out \\
        --out /tmp/golden-out/results
    .venv/bin/fat report --results /tmp/golden-out/results
    cp /tmp/golden-out/results/tables/fasa_ablation-report_golden-* tests/data/report_golden/expected/
"""
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fat.cli import main

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / 'tests' / 'data' / 'report_golden'
COLLECTED = 'report_golden-pt2.14-cpu-amd_epyc'  # <grid>-<environment of the committed cells' environment.json>
EXPECTED = tuple(f'fasa_ablation-{COLLECTED}.{ext}' for ext in ('md', 'tex', 'csv'))


@pytest.fixture(scope='module')
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Collect the committed cells and report them once; returns the results directory."""
    work = tmp_path_factory.mktemp('golden')
    shutil.copytree(GOLDEN / 'runs', work / 'runs')  # collect writes a complexity cache into the work directory
    results = work / 'results'
    assert main(['sweep', 'collect', str(GOLDEN / 'grid.yaml'), '--workdir', str(work / 'runs'),
                 '--out', str(results)]) == 0
    assert main(['report', '--results', str(results), '--analysis', str(REPO / 'analysis'),
                 '--pins', str(REPO / 'tests' / 'data' / 'complexity_pins.json')]) == 0
    return results


def test_collect_sees_every_cell(report: Path):
    frame = pd.read_csv(report / f'{COLLECTED}.csv')
    assert len(frame) == 6 and set(frame['status']) == {'DONE'}
    assert sorted(frame['fasa'].unique()) == ['fasa', 'global_only', 'no_interaction']


@pytest.mark.parametrize('name', EXPECTED)
def test_ablation_table_matches_golden(report: Path, name: str):
    got = (report / 'tables' / name).read_text()
    assert got == (GOLDEN / 'expected' / name).read_text(), f'{name} differs from the golden file (see docstring)'


def test_figures_of_the_grid_are_written(report: Path):
    for stem in (f'fasa_ablation_delta-{COLLECTED}', f'fasa_ablation_accuracy_vs_macs-{COLLECTED}'):
        assert (report / 'figures' / f'{stem}.png').read_bytes().startswith(b'\x89PNG')
        assert (report / 'figures' / f'{stem}.pdf').read_bytes().startswith(b'%PDF')
    index = (report / 'report.md').read_text()
    assert f'figures/fasa_ablation_delta-{COLLECTED}.png' in index and '### FASA ablation' in index


def test_report_is_deterministic(report: Path):
    """A second run over the same inputs rewrites every file byte for byte (figures included)."""
    files = sorted(p for p in report.rglob('*') if p.is_file() and p.name != f'{COLLECTED}.csv')
    before = {p: p.read_bytes() for p in files}
    assert main(['report', '--results', str(report), '--analysis', str(REPO / 'analysis'),
                 '--pins', str(REPO / 'tests' / 'data' / 'complexity_pins.json')]) == 0
    assert sorted(p for p in report.rglob('*') if p.is_file() and p.name != f'{COLLECTED}.csv') == files
    changed = [str(p.relative_to(report)) for p in files if p.read_bytes() != before[p]]
    assert not changed, f'not reproducible: {changed}'
