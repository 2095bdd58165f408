"""`fat train`: config validation, the official recipe's values, data, and small complete runs."""
import gzip
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP, RandAugment, posterize
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from fat.cli import main as cli_main
from fat.data import FASHION_MNIST_DIR, build_datasets, build_transforms
from fat.distributed import Placement
from fat.train import DEFAULTS, PRESETS, Trainer, main, resolve_config
from fat.train import trainer as train_loop
from fat.train.cli import parse_override
from fat.train.config import config_resolver

REPO = Path(__file__).resolve().parents[1]

# a run small enough for the test suite: synthetic data, the proxy model, one thread, deterministic
TINY = dict(PRESETS['smoke'], checkpoint_minutes=0)


def test_defaults_are_the_official_recipe():
    # the official recipe (qhfan/FAT classification/: config.py, configs/*.yaml, data/build.py, main.py)
    official = dict(
        epochs=300, warmup_epochs=20, lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, lr_base_size=512, opt='adamw',
        opt_eps=1e-8, opt_betas=[0.9, 0.999], weight_decay=0.05, batch_size=128, clip_grad=5.0, amp=True,
        smoothing=0.1, mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode='batch', auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, reprob=0.25, remode='pixel',
        recount=1, interpolation='bicubic', img_size=224, crop_pct=0.875, ema=False, seed=0, drop_path=None)
    cfg = resolve_config({})
    assert {k: cfg[k] for k in official} == official
    assert cfg['model'] == 'fat_b0' and cfg['fasa'] == 'fasa'


def test_resolve_config_is_complete_deterministic_and_json():
    a = resolve_config({'lr': 1, 'opt_betas': (0.9, 0.99)}, base=PRESETS['proxy'])
    b = resolve_config(json.loads(json.dumps(a)))
    assert a == b and set(a) == set(DEFAULTS)
    assert a['lr'] == 1.0 and isinstance(a['lr'], float) and a['opt_betas'] == [0.9, 0.99]
    assert json.loads(json.dumps(a, sort_keys=True)) == a
    for key in ('model', 'fasa', 'seed', 'epochs', 'output_dir'):
        assert key in a


@pytest.mark.parametrize('overrides, message', [
    ({'learning_rate': 1e-3}, "unknown config key 'learning_rate'"),
    ({'epoch': 3}, "did you mean 'epochs'"),
    ({'epochs': 'ten'}, "config key 'epochs' expects int, got str"),
    ({'epochs': 2.5}, "config key 'epochs' expects int"),
    ({'amp': 1}, "config key 'amp' expects bool"),
    ({'lr': True}, "config key 'lr' expects float"),
    ({'model': None}, "config key 'model' may not be null"),
    ({'dataset': 'fashion'}, "did you mean 'fashion_mnist'"),
    ({'fasa': 'global_onyl'}, "did you mean 'global_only'"),
    ({'fasa': {'locl': 'static'}}, "unknown axis 'locl'"),
    ({'batch_size': 0}, "'batch_size' must be >= 1"),
    ({'batch_size': 7}, "'batch_size' must be even with mixup"),
    # each key's range: a value that would crash the run late or train it silently wrong
    ({'log_interval': 0}, "config key 'log_interval' must be >= 1, got 0"),
    ({'hflip': 5}, r"config key 'hflip' must be in \[0, 1\], got 5.0"),
    ({'crop_pct': 0}, r"config key 'crop_pct' must be in \(0, 1\], got 0.0"),
    ({'lr': -1e-3}, "config key 'lr' must be >= 0"),
    ({'opt_eps': 0}, "config key 'opt_eps' must be > 0"),
    ({'opt_betas': [0.9, 1]}, r"config key 'opt_betas' expects 2 numbers, each in \[0, 1\), got \[0.9, 1\]"),
    ({'scale': [0.5]}, "config key 'scale' expects 2 numbers"),
    ({'std': [0.2, 'x']}, "config key 'std' expects numbers, each > 0"),
])
def test_resolve_config_refuses_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message) as e:
        resolve_config(overrides)
    assert '\n' not in str(e.value)


def test_a_grids_resolver_gives_resolve_configs_configs_and_errors():
    # a grid's cells are resolved by config_resolver (the shared part checked once): the same configs, the same
    # errors, and no two cells sharing a list or a mapping (one cell's config edited leaves the others alone)
    common = {'model_args': {'window_sizes': (8, 4, 2, 1)}, 'lr': 2, 'batch_size': 8}
    resolve = config_resolver(common, PRESETS['proxy'])
    points = [{}, {'fasa': 'global_only', 'seed': 3}, {'fasa': ['fasa', 'fasa', 'fasa', 'global_only']},
              {'scale': (0.3, 1), 'opt_betas': [0.8, 0.9]}, {'lr': 1}, {'model_args': {'depths': [1, 1, 1, 1]}},
              {'batch_size': 7, 'mixup': 0.8}, {'epochs': 0}, {'fasa': 'global_onyl'}, {'epoch': 1}]
    for point in points:
        try:
            expected = resolve_config({**common, **point}, PRESETS['proxy'])
        except ValueError as e:
            with pytest.raises(ValueError) as got:
                resolve(point)
            assert str(got.value) == str(e)
            continue
        cfg = resolve(point)
        assert cfg == expected and json.dumps(cfg, sort_keys=True) == json.dumps(expected, sort_keys=True)
    a, b = resolve({}), resolve({})
    a['model_args']['window_sizes'].append(9)
    a['scale'][0] = 0.9
    assert b == resolve_config(common, PRESETS['proxy'])


def test_train_help_lists_each_keys_default_and_what_it_accepts(capsys):
    with pytest.raises(SystemExit):
        cli_main(['train', '--help'])
    text = capsys.readouterr().out
    for line in ('  hflip = 0.5  (in [0, 1])', '  opt_betas = [0.9, 0.999]  (2 numbers, each in [0, 1))',
                 '  dataset = "imagenet"  (imagenet | fashion_mnist | synthetic)', '  model = "fat_b0"\n'):
        assert line in text
    # each preset with what it sets (it was only named)
    assert '  smoke: model="fat_proxy", dataset="synthetic", img_size=48' in text
    assert '  proxy: model="fat_proxy", dataset="fashion_mnist"' in text


def test_cli_values_are_typed_by_key():
    assert parse_override('lr=1e-3') == ('lr', 1e-3)
    assert parse_override('auto_augment=rand-m9-mstd0.5') == ('auto_augment', 'rand-m9-mstd0.5')
    assert parse_override('auto_augment=null') == ('auto_augment', None)
    assert parse_override('scale=[0.5, 1]') == ('scale', [0.5, 1])
    assert parse_override('fasa={local: static}') == ('fasa', {'local': 'static'})
    assert parse_override('model=fat_b1') == ('model', 'fat_b1')
    with pytest.raises(ValueError, match="unknown config key 'lrate'"):
        parse_override('lrate=1')
    with pytest.raises(ValueError, match='expected key=value'):
        parse_override('lr')


def test_cli_bad_value_is_one_line_exit_2(capsys):
    assert cli_main(['train', 'epochs=ten']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "config key 'epochs' expects int, got str" in err


def test_cli_config_file_is_validated_like_overrides(tmp_path, capsys):
    (tmp_path / 'cfg.yaml').write_text('epochs: 3\nwarmup: 1\n')
    assert cli_main(['train', '--config', str(tmp_path / 'cfg.yaml')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown config key 'warmup' (did you mean 'warmup_lr'" in err


def test_cli_config_file_reads_yaml_1_2_as_grids_do(tmp_path, capsys):
    # `lr: 1e-3` is a float (YAML 1.1 made it a string), `no` is not a boolean, duplicate keys are refused
    (tmp_path / 'cfg.yaml').write_text('lr: 1e-3\namp: no\n')
    assert cli_main(['train', '--config', str(tmp_path / 'cfg.yaml')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "config key 'amp' expects bool, got str 'no'" in err  # lr passed its check
    (tmp_path / 'dup.yaml').write_text('lr: 1e-3\nlr: 2e-3\n')
    assert cli_main(['train', '--config', str(tmp_path / 'dup.yaml')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "line 2, column 1: invalid YAML: duplicate key 'lr'" in err


def test_fat_has_one_yaml_reader():
    # every input goes through fat.yaml12 (YAML 1.2, strict); no module reads YAML its own way
    readers = [str(p.relative_to(REPO)) for p in (REPO / 'fat').rglob('*.py')
               if p.name != 'yaml12.py' and re.search(r'yaml\.(safe_)?load\b|yaml\.load_all|yaml\.(Safe)?Loader',
                                                      p.read_text())]
    assert readers == []


def _imagenet_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(classes):
            (root / split / f'n{c:08d}').mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 255, (40 + 8 * c, 56, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / f'n{c:08d}' / f'{i}.JPEG')
    return root


def test_trainer_builds_the_official_recipe(tmp_path):
    cfg = resolve_config(dict(data_dir=str(_imagenet_folder(tmp_path)), batch_size=4, workers=0, output_dir='-'))
    trainer = Trainer(cfg, Placement())
    scale = 4 / 512  # linear scaling by the total batch
    # AdamW; no weight decay on 1-D parameters and biases (the official optimizer.py)
    opt = trainer.optimizer
    assert type(opt).__name__ == 'AdamW' and opt.defaults['eps'] == 1e-8 and opt.defaults['betas'] == (0.9, 0.999)
    decayed = {id(p) for g in opt.param_groups if g['weight_decay'] == 0.05 for p in g['params']}
    for name, p in trainer.model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1 and not name.endswith('.bias')), name
    # per-step cosine: warm-up from 5e-7 over 20 epochs to 5e-4, down to 5e-6 (all scaled)
    sched, steps = trainer.scheduler, trainer.steps_per_epoch
    assert steps == 3 and sched.t_in_epochs is False and sched.warmup_t == 20 * steps
    assert sched.t_initial == 300 * steps and sched.cycle_limit == 1
    assert math.isclose(opt.param_groups[0]['lr'], 5e-7 * scale)
    assert math.isclose(sched.base_values[0], 5e-4 * scale) and math.isclose(sched.lr_min, 5e-6 * scale)
    # as the official code (no warmup_prefix), the cosine runs over all 300 epochs, warm-up included
    cosine = 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * 20 / 300))
    assert math.isclose(sched._get_lr(20 * steps)[0], cosine * scale)
    assert trainer.mixup_fn.mixup_alpha == 0.8 and trainer.mixup_fn.cutmix_alpha == 1.0
    assert trainer.mixup_fn.label_smoothing == 0.1 and type(trainer.criterion).__name__ == 'SoftTargetCrossEntropy'
    assert isinstance(trainer.model.stages[0].blocks[0].drop_path1, torch.nn.Identity)  # fat_b0: linear 0..0.05
    assert math.isclose(trainer.model.stages[3].blocks[-1].drop_path2.drop_prob, 0.05, rel_tol=1e-6)
    # the transforms: RandomResizedCrop 224 bicubic, RandAugment, erasing 0.25 pixel; eval Resize 256 + crop 224
    train_tf = trainer.train_set.transform.transforms
    assert str(train_tf[0].interpolation) == 'InterpolationMode.BICUBIC' and train_tf[0].size == (224, 224)
    ra = next(t for t in train_tf if isinstance(t, RandAugment))
    assert len(ra.ops) == 15 and ra.num_layers == 2 and ra.ops[0].magnitude == 9 and ra.ops[0].magnitude_std == 0.5
    erase = next(t for t in train_tf if isinstance(t, RandomErasing))
    assert erase.probability == 0.25 and erase.mode == 'pixel'
    eval_tf = trainer.val_loader.dataset.dataset.transform.transforms
    assert isinstance(eval_tf[0], T.Resize) and eval_tf[0].size == 256 and eval_tf[1].size == (224, 224)
    assert trainer.num_classes == 3 and trainer.in_chans == 3


@pytest.mark.parametrize('in_chans', [3, 1])
def test_imagenet_style_folders_train_end_to_end(tmp_path, in_chans):
    cfg = dict(TINY, dataset='imagenet', data_dir=str(_imagenet_folder(tmp_path)), in_chans=in_chans,
               batch_size=4, epochs=1, output_dir=str(tmp_path / 'run'))
    result = main(cfg)
    assert result['status'] == 'done' and result['steps'] == 3
    assert (result['num_classes'], result['in_chans']) == (3, in_chans)


def test_grayscale_data_one_channel_or_replicated():
    cfg = resolve_config(dict(dataset='synthetic', in_chans=1, img_size=48))
    train, _, info = build_datasets(cfg)
    assert info['channels'] == 1
    img, _ = train[0]
    one, _ = build_transforms(dict(cfg, auto_augment=None, reprob=0.), 1, 1)
    three, _ = build_transforms(dict(cfg, auto_augment=None, reprob=0.), 3, 1)
    assert one(img).shape == (1, 48, 48)
    x = three(img)
    assert x.shape == (3, 48, 48)
    # the same grey value in every channel, normalised by each channel's ImageNet statistics
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    raw = x * std[:, None, None] + mean[:, None, None]
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


def test_randaugment_posterize_to_zero_bits_gives_a_black_image():
    # magnitude 10 (m9 plus its noise) asks for 0 bits, which current Pillow refuses: our transform's op answers
    # with a black image, and timm's own table is left unpatched for other users of timm
    train, _ = build_transforms(resolve_config({}), 3, 3)
    rand = next(t for t in train.transforms if isinstance(t, RandAugment))
    op = next(op for op in rand.ops if op.name == 'PosterizeIncreasing')
    op.prob, op.magnitude = 1., 10
    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    out = op(img)
    assert out.size == img.size and np.asarray(out).max() == 0
    assert NAME_TO_OP['PosterizeIncreasing'] is posterize


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason=f'Fashion-MNIST not installed at {FASHION_MNIST_DIR}')
def test_fashion_mnist_is_read_from_the_debian_package():
    train, val, info = build_datasets(resolve_config(dict(dataset='fashion_mnist', train_subset=100)))
    assert (len(train), len(val), info) == (100, 10000, dict(num_classes=10, channels=1))
    assert train.images.shape == (100, 28, 28) and train.images.dtype == torch.uint8
    assert sorted(set(val.targets.tolist())) == list(range(10))


def test_fashion_mnist_from_data_dir(tmp_path):
    def idx(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b''.join(d.to_bytes(4, 'big') for d in arr.shape)
        with gzip.open(path, 'wb') as f:
            f.write(header + arr.tobytes())
    rng = np.random.default_rng(0)
    for prefix, n in (('train', 6), ('t10k', 4)):
        idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n, dtype=np.uint8) % 10)
    train, val, _ = build_datasets(resolve_config(dict(dataset='fashion_mnist', data_dir=str(tmp_path))))
    assert len(train) == 6 and len(val) == 4 and train.targets.tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_dataset_is_one_line_naming_path_and_remedy(tmp_path, capsys):
    out = tmp_path / 'run'
    code = cli_main(['train', '--output-dir', str(out), 'dataset=fashion_mnist', f'data_dir={tmp_path / "none"}'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1
    assert str(tmp_path / 'none' / 'train-images-idx3-ubyte.gz') in err
    assert 'apt-get install dataset-fashion-mnist' in err
    assert not out.exists()  # refused before the run directory exists (fat/preflight.py)


def test_run_directory_and_idempotent_rerun(tmp_path):
    out = tmp_path / 'run'
    result = main(dict(TINY, output_dir=str(out)))
    assert result['status'] == 'done' and result['epochs'] == 2 and result['steps'] == 8
    assert json.loads((out / 'result.json').read_text()) == result
    for key in ('final_top1', 'final_top5', 'best_top1', 'best_top5', 'train_time_s', 'params',
                'train_images_per_s', 'eval_images_per_s'):
        assert result[key] is not None, key
    assert result['params'] == 435_946  # fat_proxy with 1 channel and 10 classes
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg == resolve_config(dict(TINY, output_dir=str(out)))
    starts = json.loads((out / 'environment.json').read_text())
    assert len(starts) == 1 and {'git', 'versions', 'hardware', 'command'} <= set(starts[0])
    assert set(starts[0]['git']) == {'sha', 'dirty'} and starts[0]['versions']['torch'] == torch.__version__
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in log] == [1, 2]
    assert {'lr', 'train_loss', 'val_top1', 'val_top5', 'train_images_per_s', 'train_seconds'} <= set(log[0])
    assert log[-1]['val_top1'] == result['final_top1']
    assert (out / 'checkpoint-last.pt').exists() and (out / 'checkpoint-best.pt').exists()
    # a finished run is not trained again
    mtime = (out / 'checkpoint-last.pt').stat().st_mtime_ns
    assert main(dict(TINY, output_dir=str(out))) == result
    assert (out / 'checkpoint-last.pt').stat().st_mtime_ns == mtime


def test_changed_config_in_a_run_directory_is_refused(tmp_path):
    out = str(tmp_path / 'run')
    main(dict(TINY, epochs=1, output_dir=out))
    with pytest.raises(ValueError, match=r'different config \(epochs, lr\)'):
        main(dict(TINY, epochs=3, lr=1e-3, output_dir=out))
    # runtime keys may change: the finished run's result comes back
    assert main(dict(TINY, epochs=1, workers=1, log_interval=1, output_dir=out))['status'] == 'done'


def test_nan_loss_is_recorded_as_diverged(tmp_path):
    result = main(dict(TINY, lr=1e30, warmup_epochs=0, clip_grad=None, output_dir=str(tmp_path / 'run')))
    assert result['status'] == 'diverged'
    assert result['diverged_step'] >= 1 and f"at step {result['diverged_step']}" in result['error']
    assert json.loads((tmp_path / 'run' / 'result.json').read_text())['status'] == 'diverged'


def test_divergence_read_in_a_window_names_its_own_step_and_checkpoints_nothing_after_it(tmp_path, monkeypatch):
    # the loss is read every log_interval steps (not every step): a step that diverges between two reads is still
    # the step the result names, and no checkpoint is written once it has diverged
    real_step, calls = Trainer.train_step, []

    def step(self, x, y):
        calls.append(self.global_step)
        return real_step(self, torch.full_like(x, float('nan')) if self.global_step == 5 else x, y)
    monkeypatch.setattr(Trainer, 'train_step', step)
    out = tmp_path / 'run'
    # 4 steps per epoch: epoch 2's steps 4, 5, 6 are read after step 6, where a checkpoint is also due
    result = main(dict(TINY, clip_grad=None, log_interval=3, checkpoint_steps=3, output_dir=str(out)))
    assert result['status'] == 'diverged' and result['diverged_step'] == 5 and result['steps'] == 5
    assert 'loss is nan at step 5 (epoch 2)' in result['error'] and calls == list(range(7))
    assert torch.load(out / 'checkpoint-last.pt', weights_only=True)['global_step'] == 4  # epoch 1's


def test_the_training_loop_reads_tensors_on_the_host_once_per_log_interval(tmp_path, monkeypatch):
    """A tensor read on the host (`.item()`, `.tolist()`) makes the host wait for the device. The loop read each
    step's loss (two waits per step under DDP): now the losses of `log_interval` steps are read at once, and an
    evaluation's counts once at its end. Counted on the CPU: the reads the trainer's own code makes."""
    reads = []
    for name in ('item', 'tolist', '__float__', '__bool__'):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if caller == train_loop.__file__:
                reads.append(_name)
            return _real(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, spy)
    cfg = resolve_config(dict(TINY, train_subset=128, log_interval=4, output_dir=str(tmp_path / 'run')))
    trainer = Trainer(cfg, Placement())
    trainer.curves = train_loop.Curves(cfg, primary=False, start_step=0)
    assert trainer.steps_per_epoch == 8
    trainer.train_epoch()
    assert reads == ['tolist', 'tolist']  # steps 4 and 8 (the end of the epoch)
    reads.clear()
    metrics = trainer.evaluate(trainer.model)
    assert reads == ['tolist'] and len(trainer.val_loader) == 2 and 0 <= metrics['top1'] <= 100
    assert trainer.meters['loss_steps'] == 8 and math.isfinite(trainer.meters['loss_sum'])


def test_exception_is_recorded_as_failed(tmp_path):
    result = main(dict(TINY, model_args={'no_such_arg': 1}, output_dir=str(tmp_path / 'run')))
    assert result['status'] == 'failed' and 'no_such_arg' in result['error']
    assert json.loads((tmp_path / 'run' / 'result.json').read_text()) == result


def test_loader_workers_do_not_change_the_run(tmp_path):
    # augmentation randomness is seeded per sample, so workers (a runtime key) leave every number unchanged
    runs = [main(dict(TINY, workers=w, output_dir=str(tmp_path / f'w{w}'))) for w in (0, 2)]
    keys = ('final_top1', 'final_top5', 'best_top1', 'steps')
    assert [r['status'] for r in runs] == ['done', 'done'] and all(runs[0][k] == runs[1][k] for k in keys)
    logs = [[json.loads(line)['train_loss'] for line in (tmp_path / f'w{w}' / 'log.jsonl').read_text().splitlines()]
            for w in (0, 2)]
    assert logs[0] == logs[1]



def test_loader_workers_start_once_per_run(tmp_path, monkeypatch):
    """Defect (issue 29 item 7): the training loader was rebuilt every epoch and evaluation's workers were started at
    every evaluation, twice with EMA: 12 worker starts for this run, seconds of idle GPU each. Now both loaders keep
    their workers, and the run's numbers are those of workers=0 (its epoch reaches the workers with each index)."""
    starts = tmp_path / 'starts'
    starts.mkdir()

    def counted(worker_id: int):  # loader workers are forked: they call this function object
        (starts / f'{os.getpid()}').touch()
        ignore(worker_id)

    ignore = train_loop._ignore_stop_signals
    monkeypatch.setattr(train_loop, '_ignore_stop_signals', counted)
    data = _imagenet_folder(tmp_path / 'data')
    run = dict(TINY, dataset='imagenet', data_dir=str(data), img_size=40, in_chans=3, train_subset=0, val_subset=0,
               batch_size=4, epochs=2, ema=True)
    results = [main(dict(run, workers=w, output_dir=str(tmp_path / f'w{w}'))) for w in (0, 2)]
    assert len(list(starts.iterdir())) == 2 + 2  # training's two workers and evaluation's two, once each
    keys = ('status', 'steps', 'final_top1', 'final_ema_top1', 'best_top1')
    assert [{k: r[k] for k in keys} for r in results][0] == {k: results[1][k] for k in keys}
    logs = [(tmp_path / f'w{w}' / 'log.jsonl').read_text().splitlines() for w in (0, 2)]
    assert [json.loads(line)['train_loss'] for line in logs[0]] == [json.loads(line)['train_loss'] for line in logs[1]]


def _fp16_loss_scaling(monkeypatch):
    """The trainer as fp16 AMP on CUDA builds it, its loss scaler and fused optimizer, on the CPU (no GPU here: only
    the autocast is left out)."""
    monkeypatch.setattr(train_loop, 'loss_scaling', lambda amp, dtype: True)


def test_a_checkpoint_without_loss_scaler_state_resumes_with_one(tmp_path, monkeypatch):
    """Defect: a CPU run's checkpoint (no GradScaler state) failed to resume on a GPU with fp16 AMP, every time."""
    cfg = dict(TINY, epochs=1, output_dir=str(tmp_path / 'run'))
    main(cfg)
    assert torch.load(tmp_path / 'run' / 'checkpoint-last.pt', weights_only=True)['scaler'] is None
    _fp16_loss_scaling(monkeypatch)
    trainer = Trainer(resolve_config(cfg), Placement())
    assert trainer.resume() and trainer.epoch == 1
    assert trainer.scaler.state_dict()['scale'] == 2. ** 16  # the scale starts from GradScaler's default


def _scaled_trainer(tmp_path: Path, monkeypatch) -> Trainer:
    _fp16_loss_scaling(monkeypatch)
    return Trainer(resolve_config(dict(TINY, output_dir=str(tmp_path / 'run'))), Placement())


def test_an_fp16_step_reads_nothing_on_the_host(tmp_path, monkeypatch):
    """Defect (issue 29 item 5): with fp16 AMP, GradScaler.step read its found-inf flag on the host (`.item()`) at
    every step, so the host waited for each step before queuing the next. With a fused optimizer the skip is decided
    on the device: no host read in a step, and a skipped step still leaves the weights as they were."""
    trainer = _scaled_trainer(tmp_path, monkeypatch)
    assert trainer.optimizer.defaults['fused'] is True and trainer.cfg['clip_grad']  # unscaled for clipping first
    x, y = next(iter(trainer._train_loader()))
    reads = []
    for name in ('item', 'tolist', '__bool__', '__float__'):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _real=real, _name=name: reads.append(_name) or _real(t, *a))
    params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    losses = [trainer.train_step(x, y) for _ in range(3)]
    assert reads == []
    assert any(not torch.equal(v, params[k]) for k, v in trainer.model.named_parameters())  # it trained
    params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    losses.append(trainer.train_step(torch.full_like(x, float('nan')), y))
    assert reads == []
    assert all(torch.equal(v, params[k]) for k, v in trainer.model.named_parameters())  # the NaN step skipped
    monkeypatch.undo()
    read = trainer.read_losses(losses)  # the losses and the skip, read once for the window
    assert all(map(math.isfinite, read[:3])) and math.isnan(read[3]) and trainer.totals['skipped_steps'] == 1


def test_the_loss_scaler_skips_a_non_finite_step_and_training_goes_on(tmp_path, monkeypatch):
    """Defect: one non-finite loss ended the run as diverged, where the official recipe (apex O1, as torch's
    GradScaler) skips the overflowing step and trains on."""
    trainer = _scaled_trainer(tmp_path, monkeypatch)
    x, y = next(iter(trainer._train_loader()))
    params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    loss, = trainer.read_losses([trainer.train_step(torch.full_like(x, float('nan')), y)])
    assert math.isnan(loss) and trainer.totals['skipped_steps'] == 1 and trainer.global_step == 1
    assert all(torch.equal(v, params[k]) for k, v in trainer.model.named_parameters())  # the step was skipped
    assert trainer.scaler.state_dict()['scale'] == 2. ** 15  # and the scale lowered
    loss, = trainer.read_losses([trainer.train_step(x, y)])
    assert math.isfinite(loss) and trainer.totals['overflow_streak'] == 0
    assert any(not torch.equal(v, params[k]) for k, v in trainer.model.named_parameters())  # trained on


def test_steps_skipped_for_overflowing_gradients_are_counted_and_a_run_of_them_is_divergence(tmp_path, monkeypatch):
    """Defect: GradScaler also skips a step whose loss is finite but whose gradients overflow; those skips went
    uncounted, so a run whose gradients always overflowed never changed its weights and still ended `done`."""
    monkeypatch.setattr(train_loop, 'MAX_SKIPPED_IN_A_ROW', 2)
    trainer = _scaled_trainer(tmp_path, monkeypatch)
    x, y = next(iter(trainer._train_loader()))
    params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    weight = next(trainer.model.parameters())
    hook = weight.register_hook(lambda g: torch.full_like(g, float('inf')))  # every gradient overflows
    loss, = trainer.read_losses([trainer.train_step(x, y)])
    assert math.isfinite(loss) and trainer.totals['skipped_steps'] == 1 and trainer.totals['overflow_streak'] == 1
    assert all(torch.equal(v, params[k]) for k, v in trainer.model.named_parameters())  # the step was skipped
    losses = [trainer.train_step(x, y) for _ in range(3)]
    with pytest.raises(train_loop._Diverged, match=r'gradients overflowed at step 2 \(epoch 1\), 3 steps in a row'):
        trainer.read_losses(losses)
    hook.remove()


def test_a_loss_scale_that_never_recovers_is_divergence(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, 'MAX_SKIPPED_IN_A_ROW', 2)
    trainer = _scaled_trainer(tmp_path, monkeypatch)
    x, y = next(iter(trainer._train_loader()))
    nan = torch.full_like(x, float('nan'))
    losses = [trainer.train_step(nan, y) for _ in range(4)]  # read in one window, as the loop reads them
    with pytest.raises(train_loop._Diverged, match=r'at step 2 \(epoch 1\), 3 steps in a row'):
        trainer.read_losses(losses)
    assert trainer.global_step == 2  # the result names the step that diverged


def test_compile_runs_the_training_step_compiled_and_refuses_an_unknown_backend(tmp_path, monkeypatch):
    """`compile=BACKEND` wraps the training step in torch.compile (a runtime key: same cell, same checkpoints); the
    'eager' backend traces without code generation, so the run's numbers are the eager run's."""
    compiled = []
    real = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: compiled.append(kw) or real(model, **kw))
    try:
        runs = [main(dict(TINY, epochs=1, compile=c, output_dir=str(tmp_path / str(c)))) for c in (None, 'eager')]
    finally:
        torch._dynamo.reset()  # no compiled FAT code left for later tests (an inductor compile of fused FAT then fails)
    assert compiled == [{'backend': 'eager'}]
    assert [r['status'] for r in runs] == ['done', 'done'] and runs[0]['final_top1'] == runs[1]['final_top1']
    result = main(dict(TINY, epochs=1, compile='nope_backend', output_dir=str(tmp_path / 'bad')))
    assert result['status'] == 'failed' and "unknown torch.compile backend 'nope_backend'" in result['error']
