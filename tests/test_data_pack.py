"""`fat data pack`: a folder round trip in each format (a rerun verifies it, a flipped byte is caught), each bad input
as one line and exit 2 with no output that passes as complete, and a pack killed by a real SIGKILL (blocked reading a
source image, a FIFO) finished by a rerun that keeps the verified shards."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import _imagenet_folder

from fat.cli import main
from fat.data.datasets import build_datasets
from fat.data.layout import MANIFEST, data_format
from fat.train import resolve_config

FORMATS = ('wds', 'hf')


def _pack(src: Path, dest: Path, fmt: str = 'wds', *more: str) -> int:
    return main(['data', 'pack', str(src), str(dest), '--format', fmt, '--shard-size', '2', *more])


def _same_samples(folder: Path, packed: Path) -> bool:
    cfg = resolve_config(dict(dataset='imagenet', data_dir=str(folder)))
    a, b = build_datasets(cfg)[:2], build_datasets(dict(cfg, data_dir=str(packed)))[:2]
    return all(len(x) == len(y) and all(
        x[i][1] == y[i][1] and np.array_equal(np.asarray(x[i][0]), np.asarray(y[i][0])) for i in range(len(x)))
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize('fmt', FORMATS)
def test_pack_round_trips_a_folder_and_a_rerun_verifies_every_byte(tmp_path, capsys, fmt):
    src, dest = _imagenet_folder(tmp_path / 'src', classes=2, per_class=3), tmp_path / 'dest'
    assert _pack(src, dest, fmt) == 0
    assert capsys.readouterr().out == f'{dest}: 6 train, 6 val images of 2 classes packed as {fmt}, verified\n'
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest['classes'] == ['n00000000', 'n00000001'] and manifest['splits']['val']['samples'] == 6
    if fmt == 'wds':  # plain WebDataset members, for any other reader
        with tarfile.open(dest / 'train' / 'train-000000.tar') as tar:
            assert sorted(tar.getnames()) == ['train_00000000.cls', 'train_00000000.jpeg', 'train_00000001.cls',
                                              'train_00000001.jpeg']
    else:  # datasets' own loader reads it
        import datasets
        assert datasets.load_from_disk(str(dest))['val'].features['label'].names == manifest['classes']
    assert _same_samples(src, dest)
    assert _pack(src, dest, fmt) == 0 and 'already complete' in capsys.readouterr().out
    # a source image changed since: the output no longer matches the folder
    source = src / 'train' / 'n00000001' / '1.JPEG'
    image = source.read_bytes()
    source.write_bytes((src / 'train' / 'n00000001' / '2.JPEG').read_bytes())
    assert _pack(src, dest, fmt) == 2 and 'differs from' in capsys.readouterr().err
    source.write_bytes(image)
    # one flipped byte inside a stored image: the rerun's verification names where
    stored = next(p for p in (dest / 'train').rglob('*') if p.is_file() and image in p.read_bytes())
    data = bytearray(stored.read_bytes())
    data[data.find(image) + len(image) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert _pack(src, dest, fmt) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(dest / 'train') in err and 'differs' in err


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


BAD = {  # what breaks the folder -> the path the error names, and what it says
    'unreadable image': (lambda s: _truncate(s / 'train/n00000001/1.JPEG'), 'train/n00000001/1.JPEG',
                         'unreadable image'),
    'empty class': (lambda s: [p.unlink() for p in (s / 'val/n00000001').iterdir()], 'val/n00000001',
                    'empty class folder'),
    'unknown extension': (lambda s: (s / 'train/n00000000/notes.txt').write_text('x'), 'train/n00000000/notes.txt',
                          'unknown extension'),
    'label map': (lambda s: (s / 'val/n00000001').rename(s / 'val/n00000009'), 'val', 'class folders differ'),
}


@pytest.mark.parametrize('case', BAD)
def test_bad_input_is_one_line_naming_the_file_and_nothing_passes_as_complete(tmp_path, capsys, case):
    src, dest = _imagenet_folder(tmp_path / 'src', classes=2, per_class=3), tmp_path / 'dest'
    breaks, path, message = BAD[case]
    breaks(src)
    assert _pack(src, dest) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'{src / path}:' in err and message in err, err
    if dest.exists():  # the unreadable image is found while packing: the shards before it stay, for a rerun
        assert not (dest / MANIFEST).exists()
        with pytest.raises(ValueError, match='unfinished `fat data pack` output'):
            data_format(dest)
        assert main(['train', '--preset', 'smoke', 'dataset=imagenet', f'data_dir={dest}', 'in_chans=3',
                     f'output_dir={tmp_path / "run"}']) == 2
        assert 'unfinished' in capsys.readouterr().err and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_killed_pack_is_finished_by_a_rerun_that_keeps_its_verified_shards(tmp_path, capsys, fmt):
    src, dest = _imagenet_folder(tmp_path / 'src', classes=2, per_class=4), tmp_path / 'dest'
    # train sample 5 (shard 2 of 2 samples) a FIFO: the pack blocks there, after shards 0 and 1, and is killed
    victim = src / 'train' / 'n00000001' / '1.JPEG'
    image = victim.read_bytes()
    victim.unlink()
    os.mkfifo(victim)
    proc = subprocess.Popen([sys.executable, '-m', 'fat.cli', 'data', 'pack', str(src), str(dest), '--format', fmt,
                             '--shard-size', '2'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (dest / 'index' / 'train-000001.json').exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, 'no shard written'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (dest / MANIFEST).exists()
    with pytest.raises(ValueError, match='unfinished'):
        data_format(dest)
    # the partial output keeps its label map: another folder's is refused
    other = _imagenet_folder(tmp_path / 'other', classes=3, per_class=1)
    assert _pack(other, dest, fmt) == 2
    assert 'pack-plan.json: DEST was packed with another label map' in capsys.readouterr().err
    victim.unlink()
    victim.write_bytes(image)
    assert _pack(src, dest, fmt) == 0
    assert '(2 of 8 shards were complete already, verified and kept)' in capsys.readouterr().out
    assert not list(dest.rglob('.*.tmp')) and not (dest / 'chunks').exists()
    assert _same_samples(src, dest)
