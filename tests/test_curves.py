"""Curves beside log.jsonl: TensorBoard event files with the log's numbers, and Weights & Biases (offline) on request.
A killed and resumed run's event files: tests/test_train_resume.py."""
import json
import sys

import pytest

from fat.train import PRESETS, main
from fat.train.curves import read_scalars

TINY = dict(PRESETS['smoke'], checkpoint_minutes=0, epochs=1, log_interval=1)


def test_event_files_hold_the_logs_numbers_at_each_step(tmp_path):
    out, tb = tmp_path / 'run', tmp_path / 'tb' / 'fasa=fasa'
    result = main(dict(TINY, output_dir=str(out), tensorboard_dir=str(tb)))
    assert result['status'] == 'done' and not list(out.glob('events.out.tfevents.*'))
    scalars = read_scalars(tb)
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [step for step, _ in scalars['train/loss']] == [1, 2, 3, 4]
    assert scalars['val/top1'] == [(4, pytest.approx(log[0]['val_top1']))]
    assert scalars['epoch/train_loss'] == [(4, pytest.approx(log[0]['train_loss']))]
    assert scalars['train/lr'][-1] == (4, pytest.approx(log[0]['lr']))
    assert {'val/top5', 'val/loss', 'train/images_per_s', 'epoch/train_images_per_s'} <= set(scalars)


def test_without_tensorboard_no_event_file(tmp_path):
    assert main(dict(TINY, output_dir=str(tmp_path), tensorboard=False))['status'] == 'done'
    assert not list(tmp_path.rglob('events.out.tfevents.*'))


def test_wandb_without_the_package_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
    result = main(dict(TINY, output_dir=str(tmp_path), wandb=True))
    assert result['status'] == 'failed'
    assert result['error'] == "ValueError: wandb=true needs Weights & Biases: pip install -e '.[wandb]'"


def test_wandb_offline_records_the_curves(tmp_path, monkeypatch):
    pytest.importorskip('wandb', reason="the optional extra: pip install -e '.[wandb]'")
    monkeypatch.setenv('WANDB_MODE', 'offline')  # no network, no account
    monkeypatch.setenv('WANDB_SILENT', 'true')
    assert main(dict(TINY, output_dir=str(tmp_path), wandb=True))['status'] == 'done'
    runs = list((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert len(runs) == 1
    data = runs[0].read_bytes()  # W&B's own record format; the metric names are stored as text
    assert b'train/loss' in data and b'val/top1' in data


def test_a_start_cuts_back_only_its_own_runs_event_files(tmp_path):
    shared = str(tmp_path / 'tb')
    for name in ('a', 'b'):  # b's (re)start must leave a's points alone
        assert main(dict(TINY, output_dir=str(tmp_path / name), tensorboard_dir=shared))['status'] == 'done'
    assert sorted(step for step, _ in read_scalars(tmp_path / 'tb')['train/loss']) == [1, 1, 2, 2, 3, 3, 4, 4]
