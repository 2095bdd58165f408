"""The packed formats against the image folder they were packed from (`fat data pack`, in process): the same samples,
the same first batch for the same seed, and real `fat train` processes killed and resumed on tar shards and on a
Hugging Face dataset ending bit-identical to an uninterrupted run on the folder (so every batch was the folder's and
resume is exact), single process and (slow) 2-rank DDP over gloo."""
import random
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from test_train import _imagenet_folder
from test_train_resume import _assert_same_run, _finish, _interrupt, _run_beside

from fat.cli import main
from fat.data.datasets import build_datasets
from fat.data.layout import data_format
from fat.data.pack import pack
from fat.distributed import Placement
from fat.train import Trainer, resolve_config

FORMATS = ('wds', 'hf')
PER_CLASS = 16  # 3 classes: 48 training images, 3 steps of 16 per epoch in the resume runs


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    """The folder and its packs, in uneven shards (5 samples) so that batches straddle shard ends."""
    root = tmp_path_factory.mktemp('data')
    dirs = {'folder': _imagenet_folder(root / 'folder', per_class=PER_CLASS)}
    for fmt in FORMATS:
        pack(dirs['folder'], root / fmt, fmt, shard_size=5)
        dirs[fmt] = root / fmt
    return dirs


def _extra(data_dir: Path) -> list:
    return ['dataset=imagenet', f'data_dir={data_dir}']


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('decoder', ['pil', 'draft'])
def test_a_pack_holds_the_folders_samples_in_its_order(data, fmt, decoder):
    assert data_format(data[fmt]) == fmt and data_format(data['folder']) == 'folder'
    # img_size 16: draft decoding keeps a shorter side of 19 pixels, so it halves these 40-56 pixel images
    cfg = resolve_config(dict(dataset='imagenet', data_dir=str(data['folder']), decoder=decoder, img_size=16))
    folder = build_datasets(cfg)
    packed = build_datasets(dict(cfg, data_dir=str(data[fmt])))
    assert packed[2] == folder[2] == dict(num_classes=3, channels=3)
    for a, b in zip(folder[:2], packed[:2], strict=True):
        assert a.classes == b.classes and len(a) == len(b) == 3 * PER_CLASS
        for i in range(len(a)):
            (img_a, label_a), (img_b, label_b) = a[i], b[i]
            assert label_a == label_b and img_b.mode == 'RGB' and np.array_equal(np.asarray(img_a), np.asarray(img_b))
            assert img_b.width == (56 if decoder == 'pil' else 28)  # the decoder reaches the packed reader


@pytest.mark.parametrize('fmt', FORMATS)
def test_each_format_gives_the_folders_first_batch_for_the_same_seed(data, fmt):
    def first_batch(data_dir: Path, seed: int, workers: int = 0):
        cfg = resolve_config(dict(data_dir=str(data_dir), model='fat_proxy', img_size=48, batch_size=8,
                                  workers=workers, seed=seed, output_dir='-'))
        return next(iter(Trainer(cfg, Placement())._train_loader()))

    x, y = first_batch(data['folder'], seed=3)
    x_packed, y_packed = first_batch(data[fmt], seed=3, workers=2)  # the reader goes to loader worker processes
    assert torch.equal(x, x_packed) and torch.equal(y, y_packed)
    assert not torch.equal(x, first_batch(data[fmt], seed=4)[0])  # the seed does reach the batch


@pytest.fixture(scope='module')
def folder_run(data, tmp_path_factory) -> Iterator[Callable[[], Path]]:
    """The uninterrupted run on the folder, started at once beside the interrupted ones; folder_run() waits for it."""
    yield from _run_beside(tmp_path_factory.mktemp('folder') / 'run', extra=_extra(data['folder']))


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_killed_run_on_a_pack_resumes_to_the_folders_uninterrupted_run(data, folder_run, tmp_path, fmt):
    out, rng = tmp_path / 'run', random.Random()
    extra = _extra(data[fmt])
    assert _interrupt(out, signal.SIGKILL, rng, wait_for='checkpoint-prev.pt', extra=extra) == [-signal.SIGKILL]
    _finish(out, extra=extra)
    _assert_same_run(out, folder_run())


# slow, as the folder's DDP resume tests of test_train_resume.py: two processes on the two cores
@pytest.mark.slow
def test_a_killed_ddp_run_on_each_pack_resumes_to_the_folders_uninterrupted_run(data, tmp_path):
    ddp = ['batch_size=8']  # 3 steps per epoch and rank, so that the kill lands inside the run
    ref = tmp_path / 'ref'
    _finish(ref, ranks=2, extra=_extra(data['folder']) + ddp)
    for fmt in FORMATS:
        out, extra = tmp_path / fmt, _extra(data[fmt]) + ddp
        assert _interrupt(out, signal.SIGKILL, random.Random(), ranks=2, extra=extra) == [-signal.SIGKILL] * 2
        _finish(out, ranks=2, extra=extra)
        _assert_same_run(out, ref)


def test_a_hugging_face_dataset_saved_by_datasets_itself_reads_as_the_folder(data, tmp_path):
    """Not from `fat data pack` (no manifest): a DatasetDict with the hub's split name 'validation'."""
    import datasets
    packed = datasets.load_from_disk(str(data['hf']))
    datasets.DatasetDict(train=packed['train'], validation=packed['val']).save_to_disk(str(tmp_path / 'hf'))
    cfg = resolve_config(dict(dataset='imagenet', data_dir=str(data['folder'])))
    folder, theirs = build_datasets(cfg), build_datasets(dict(cfg, data_dir=str(tmp_path / 'hf')))
    for a, b in zip(folder[:2], theirs[:2], strict=True):
        assert a.classes == b.classes and len(a) == len(b)
        assert all(np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0])) and a[i][1] == b[i][1]
                   for i in range(0, len(a), 7))


def test_tar_shards_without_an_index_are_refused_in_one_line_before_anything_is_written(data, tmp_path, capsys):
    streamed = tmp_path / 'shards'
    shutil.copytree(data['wds'] / 'train', streamed / 'train')  # WebDataset shards as another tool would leave them
    out = tmp_path / 'run'
    assert main(['train', '--preset', 'smoke', 'dataset=imagenet', f'data_dir={streamed}', f'output_dir={out}']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'cannot resume a run exactly' in err and '`fat data pack' in err
    assert not out.exists()
