"""The committed grids that regenerate the paper's tables (README "Paper grids"): each passes `fat sweep plan`,
and its cells (ids and axes) are pinned, so a change to a recipe default or to the cell hashing shows up here.

After an intended change, regenerate the pins with
    FAT_REGEN_PLANS=1 .venv/bin/python -m pytest tests/sweep/test_paper_grids.py
"""
import json
import os
from pathlib import Path

import pytest

from fat.cli import main

REPO = Path(__file__).resolve().parents[2]
PINS = REPO / 'tests' / 'data' / 'plans'
GRIDS = ['demo', 'imagenet_fat', 'imagenet_fasa_ablation']  # speed.yaml: a `fat speed` grid (tests/test_speed.py)


@pytest.mark.parametrize('name', GRIDS)
def test_paper_grid_plan_is_pinned(name, tmp_path, capsys):
    # the debug executor: the cells do not depend on a cluster (a `local` plan of an 8-GPU grid is refused where the
    # machine has fewer GPUs, a `slurm` one is checked against the partitions of the Slurm that is reachable)
    code = main(['sweep', 'plan', str(REPO / 'ablations' / f'{name}.yaml'), '--json', '--cluster', 'debug',
                 '--workdir', str(tmp_path)])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    cells = [{'id': c['id'], 'axes': c['axes'], 'action': c['action']} for c in plan['cells']]
    assert cells and all(c['action'] == 'submit' for c in cells)
    assert not any(tmp_path.iterdir()), 'plan wrote into the work directory'
    pin = PINS / f'{name}.json'
    if os.environ.get('FAT_REGEN_PLANS') == '1':
        pin.write_text(json.dumps(cells, indent=1) + '\n')
    assert cells == json.loads(pin.read_text())
