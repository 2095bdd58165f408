"""`fat timm SCRIPT`: timm's own scripts see the FAT models. timm's scripts are not part of its wheel, so the test
runs a script written here that builds a model by name the way they do (without importing fat); where a checkout of
timm's scripts is given (TIMM_SCRIPTS_DIR), timm's validate.py runs too."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAT = Path(sys.executable).parent / 'fat'
SCRIPT = '''import sys, timm
model = timm.create_model(sys.argv[1], num_classes=int(sys.argv[2]))
print(type(model).__name__, sys.argv[0].endswith('like_timm.py'))
sys.exit(int(sys.argv[3]))
'''


def test_a_script_that_builds_models_by_name_sees_fat(tmp_path):
    script = tmp_path / 'like_timm.py'
    script.write_text(SCRIPT)
    plain = subprocess.run([sys.executable, str(script), 'fat_b0', '10', '0'], capture_output=True, text=True)
    assert plain.returncode != 0 and 'Unknown model (fat_b0)' in plain.stderr  # what timm's scripts do alone
    ran = subprocess.run([str(FAT), 'timm', str(script), 'fat_b0', '10', '3'], capture_output=True, text=True)
    assert ran.stdout.split() == ['FAT', 'True'], ran.stderr  # built, run as the script itself
    assert ran.returncode == 3  # the script's exit status is kept


def test_missing_script_is_one_line(tmp_path):
    ran = subprocess.run([str(FAT), 'timm', str(tmp_path / 'validate.py')], capture_output=True, text=True)
    missing = tmp_path / 'validate.py'
    assert ran.returncode == 2 and ran.stderr.strip() == f'fat timm: error: timm script not found: {missing}'


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS_DIR'), reason='TIMM_SCRIPTS_DIR (a timm checkout) not set')
def test_timm_validate_runs_on_fat(tmp_path):
    import numpy as np
    import timm
    import torch
    from PIL import Image

    import fat  # noqa: F401
    for c in range(2):
        (tmp_path / 'val' / f'n{c:08d}').mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'val' / f'n{c:08d}' / '0.JPEG')
    torch.save(timm.create_model('fat_proxy', num_classes=2, in_chans=3).state_dict(), tmp_path / 'w.pth')
    ran = subprocess.run(
        [str(FAT), 'timm', str(Path(os.environ['TIMM_SCRIPTS_DIR']) / 'validate.py'), str(tmp_path), '--split', 'val',
         '--model', 'fat_proxy', '--num-classes', '2', '--in-chans', '3', '--checkpoint', str(tmp_path / 'w.pth'),
         '--device', 'cpu', '--img-size', '48', '--workers', '0', '--batch-size', '2'],
        capture_output=True, text=True)
    assert ran.returncode == 0 and '"top1"' in ran.stdout, ran.stderr[-2000:]
