"""Bad input to `fat train` and `fat sweep` is one line, exit 2, nothing written (fat/preflight.py): an unknown model,
a FASA variant given to a timm peer, data that is not there; and a timm peer trains as a baseline with FAT's recipe.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fat.cli import main


def _bad_train(tmp_path: Path, capsys, *overrides: str) -> str:
    out = tmp_path / 'run'
    assert main(['train', '--output-dir', str(out), '--preset', 'smoke', *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('fat train: error: '), err
    assert not out.exists(), 'a refused run left its directory behind'
    return err


def _folder(root: Path, layout: dict) -> Path:
    for split, classes in layout.items():
        (root / split).mkdir(parents=True)
        for name, images in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(images):
                (root / split / name / f'{i}.jpg').write_bytes(b'')
    return root


def test_fat_train_refuses_an_unknown_model_before_writing_anything(tmp_path, capsys):
    assert "unknown model 'fat_b9' (did you mean 'fat_b3'?)" in _bad_train(tmp_path, capsys, 'model=fat_b9')


def test_fat_train_refuses_a_fasa_variant_for_a_timm_peer(tmp_path, capsys):
    assert "'fasa' applies to FAT models only; resnet10t" in _bad_train(tmp_path, capsys, 'model=resnet10t',
                                                                        'fasa=global_only')


@pytest.mark.parametrize('layout, message', [
    ({}, 'train is not a folder'),
    ({'train': {}, 'val': {}}, 'no class folders'),
    ({'train': {'a': 1, 'b': 0}, 'val': {'a': 1, 'b': 1}}, 'train/b: no image'),
    ({'train': {'a': 1}, 'val': {'b': 1}}, 'different class folders'),
])
def test_fat_train_refuses_data_it_cannot_read(tmp_path, capsys, layout, message):
    data = _folder(tmp_path / 'data', layout)
    data.mkdir(exist_ok=True)
    assert message in _bad_train(tmp_path, capsys, 'dataset=imagenet', f'data_dir={data}')


def test_a_timm_peer_trains_on_the_proxy_as_a_baseline(tmp_path):
    out = tmp_path / 'peer'
    done = subprocess.run([sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(out), '--preset', 'proxy',
                           'model=resnet10t', 'train_subset=256', 'val_subset=256', 'epochs=1'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / 'result.json').read_text())
    assert result['status'] == 'done' and result['model'] == 'resnet10t' and result['fasa'] is None
    assert result['in_chans'] == 1 and result['num_classes'] == 10 and result['final_top1'] is not None


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'grid.yaml'
    path.write_text(text)
    return path


def test_plan_refuses_fasa_for_a_peer_in_one_line(tmp_path, capsys):
    grid = _grid(tmp_path, 'name: g\npreset: smoke\naxes: {model: [fat_proxy, resnet10t], fasa: [fasa, global_only]}\n')
    assert main(['sweep', 'plan', str(grid), '--cluster', 'debug', '--workdir', str(tmp_path / 'w')]) == 2
    err = capsys.readouterr().err
    assert "'fasa' applies to FAT models only; resnet10t" in err
    assert not (tmp_path / 'w').exists()


def test_launch_refuses_a_grid_whose_data_is_not_there_and_plan_warns(tmp_path, capsys):
    grid = _grid(tmp_path, f'name: g\npreset: smoke\nbase: {{dataset: imagenet, data_dir: {tmp_path / "none"}}}\n'
                           'axes: {model: [fat_proxy, resnet10t]}\n')
    args = [str(grid), '--cluster', 'local', '--workdir', str(tmp_path / 'w')]
    assert main(['sweep', 'plan', *args]) == 0
    assert 'warning: data: ImageNet-style data not found' in capsys.readouterr().err
    assert main(['sweep', 'launch', *args]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'data: ImageNet-style data not found' in err
    assert not (tmp_path / 'w').exists()
