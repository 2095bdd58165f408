"""`fat speed`: the speed comparison's grid file (ablations/speed.yaml) and its refusals. The timing itself is
`fat.bench.compare` (tests/test_bench.py)."""
from pathlib import Path

import pytest
import yaml

from fat import speed
from fat.cli import main

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / 'ablations' / 'speed.yaml'
FAT = ['fat_b0', 'fat_b1', 'fat_b2', 'fat_b3']


@pytest.mark.parametrize('profile', ['cpu', 'gpu'])
def test_every_profile_times_fat_and_the_report_peers_in_one_setting(profile):
    contenders, options = speed.load(GRID, profile)
    peers = yaml.safe_load((REPO / 'analysis' / 'tables.yaml').read_text())['speed']['peers']
    as_built = [c['model'] for c in contenders if (c['mode'], c['setting']) == ('infer', 'as_built')]
    assert as_built == FAT + peers  # FAT-B0..B3 and all 13 peers in the same column
    assert {c['model'] for c in contenders if c['setting'] == 'fused'} == set(FAT)  # FAT's own row, named
    assert options['rounds'] >= 3 and options['num_iters'] >= 20


def test_dry_run_lists_the_contenders(capsys):
    assert main(['speed', str(GRID), '--profile', 'cpu', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'fat_b0' in out and 'swin_tiny_patch4_window7_224' in out and 'contenders' in out


@pytest.mark.parametrize('edit, message', [
    (lambda g: g['profiles'].pop('cpu'), "profiles: unknown key 'cpu'"),
    (lambda g: g['profiles']['cpu'].update(iterz=3), "unknown key 'iterz'; valid: device"),
    (lambda g: g['profiles']['cpu']['run'][0].update(setting='fast'), "unknown setting 'fast'"),
    (lambda g: g['profiles']['cpu']['run'][0].update(models='nope'), "unknown key 'nope'"),
    (lambda g: g['profiles']['cpu']['run'][0].update(models=[]), 'a non-empty list of model names'),
    (lambda g: g.update(models='fat_b0'), 'a model list must be a list of names'),
])
def test_a_malformed_grid_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    grid = yaml.safe_load(GRID.read_text())
    edit(grid)
    path = tmp_path / 'speed.yaml'
    path.write_text(yaml.safe_dump(grid))
    assert main(['speed', str(path), '--profile', 'cpu', '--dry-run']) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
