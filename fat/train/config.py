"""The config of a training run, without torch: the official recipe's keys and defaults, named presets, and
the validation of `resolve_config`. `fat.train.run` runs a config; this module only describes and checks one, so
that `fat sweep plan | status | collect | launch` validate a grid's train cells without importing torch.
"""
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from fat.checks import check_choice, check_type, close_hint
from fat.variants import resolve_fasa_stages

__all__ = ['DEFAULTS', 'ID_NEUTRAL', 'PRESETS', 'RUNTIME_KEYS', 'config_diff', 'config_resolver', 'resolve_config',
           'valid_values']

# Every recipe value of the run, with the official ImageNet values (qhfan/FAT `classification/config.py` and
# `configs/*.yaml`; docs/sources.md) as defaults. Learning rates are per 512 images of total batch (linear
# scaling, as the official code does).
# The type of each key is the type of its default unless `_TYPES` says otherwise.
DEFAULTS: Dict[str, Any] = {
    # model
    'model': 'fat_b0',
    'fasa': 'fasa',  # FASA variant name, dict of axes, or a list with one per stage
    'model_args': {},  # extra timm.create_model kwargs, e.g. {'window_sizes': [8, 4, 2, 1]}
    'drop_path': None,  # None: the model's own (official) rate
    # data
    'dataset': 'imagenet',  # imagenet (train/ and val/ class folders) | fashion_mnist | synthetic
    'data_dir': None,  # None: the dataset's standard place (fashion_mnist: the Debian package's)
    'train_subset': 0,  # use only this many training images (a fixed random subset); 0: all
    'val_subset': 0,
    'num_classes': None,  # None: from the dataset
    'in_chans': None,  # None: the dataset's own (1 for grayscale); 3 with grayscale data replicates it
    'img_size': 224,
    'scale': [0.08, 1.0],  # RandomResizedCrop area range
    'crop_pct': 0.875,  # eval Resize(img_size / crop_pct) + CenterCrop(img_size)
    'interpolation': 'bicubic',
    'decoder': 'pil',  # pil (timm's, the official) | draft (PIL's reduced-size DCT decoding; fat.data.decode)
    'mean': None,  # None: ImageNet's (the official), averaged over channels for one-channel input
    'std': None,
    'batch_size': 128,  # per process
    'workers': 8,
    # schedule and optimizer
    'epochs': 300,
    'warmup_epochs': 20.0,  # may be fractional
    'lr': 5e-4,
    'warmup_lr': 5e-7,
    'min_lr': 5e-6,
    'lr_base_size': 512,  # lr = lr * total batch / lr_base_size (also warmup_lr and min_lr)
    'opt': 'adamw',
    'opt_eps': 1e-8,  # eps and betas go to the optimizer unless null
    'opt_betas': [0.9, 0.999],
    'momentum': 0.9,
    'weight_decay': 0.05,  # not on 1-D parameters and biases
    'clip_grad': 5.0,  # None: no clipping
    'clip_mode': 'norm',
    'amp': True,  # automatic mixed precision on CUDA; a CPU run is always float32
    'amp_dtype': 'float16',
    # augmentation and loss
    'hflip': 0.5,
    'color_jitter': 0.4,  # timm ignores it when auto_augment is set, as in the official code
    'auto_augment': 'rand-m9-mstd0.5-inc1',
    'reprob': 0.25,
    'remode': 'pixel',
    'recount': 1,
    'mixup': 0.8,
    'cutmix': 1.0,
    'cutmix_minmax': None,
    'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5,
    'mixup_mode': 'batch',
    'smoothing': 0.1,
    'ema': False,  # the official code has no EMA
    'ema_decay': 0.9998,
    'ema_warmup': False,
    # run
    'seed': 0,
    'deterministic': False,
    'threads': 0,  # torch intra-op threads; 0: torch's default
    'channels_last': False,
    'compile': None,  # a torch.compile backend (e.g. inductor) for the training step; None: eager
    'device': 'auto',  # auto | cpu | cuda
    'sync_bn': True,  # under DDP on an accelerator (SyncBatchNorm has no CPU kernel)
    'eval_every': 1,  # epochs; the last epoch is always evaluated
    'checkpoint_steps': 0,  # also checkpoint every this many steps inside an epoch; 0: at epoch ends only
    'checkpoint_minutes': 10.0,  # ... and at least this often; 0: off
    'log_interval': 50,  # steps between plain log lines (when stderr is not a terminal) and training-curve points
    'output_dir': None,
    # curves (docs/watching.md): TensorBoard event files, and Weights & Biases on request (pip install '.[wandb]')
    'tensorboard': True,
    'tensorboard_dir': None,  # None: output_dir; a sweep gives each cell <workdir>/<grid>/tb/<varied axes>
    'wandb': False,
    'wandb_project': 'fat-harness',
}

_CHOICES: Dict[str, tuple] = {
    'dataset': ('imagenet', 'fashion_mnist', 'synthetic'),
    'device': ('auto', 'cpu', 'cuda'),
    'clip_mode': ('norm', 'value', 'agc'),
    'amp_dtype': ('float16', 'bfloat16'),
    'remode': ('pixel', 'rand', 'const'),
    'mixup_mode': ('batch', 'pair', 'elem'),
    'interpolation': ('bicubic', 'bilinear', 'nearest', 'lanczos', 'random'),
    'decoder': ('pil', 'draft'),  # fat.data.decode.DECODERS
}

# keys whose type is not that of their default: (allowed types, may be None)
_TYPES: Dict[str, tuple] = {
    'fasa': ((str, dict, list), False),
    'drop_path': ((float,), True),
    'data_dir': ((str,), True),
    'num_classes': ((int,), True),
    'in_chans': ((int,), True),
    'mean': ((list,), True),
    'std': ((list,), True),
    'clip_grad': ((float,), True),
    'auto_augment': ((str,), True),
    'cutmix_minmax': ((list,), True),
    'output_dir': ((str,), True),
    'compile': ((str,), True),
    'tensorboard_dir': ((str,), True),
    'opt_eps': ((float,), True),
    'opt_betas': ((list,), True),
}

# the range of numeric keys, checked where a key is set (a value outside it would crash a run late, as log_interval 0
# or crop_pct 0 do, or train silently wrong, as hflip 5 or momentum 2 would). Intervals as a reader writes them
_BOUNDS: Dict[str, str] = {
    **dict.fromkeys(('batch_size', 'epochs', 'lr_base_size', 'eval_every', 'img_size', 'log_interval', 'num_classes',
                     'in_chans'), '>= 1'),
    **dict.fromkeys(('train_subset', 'val_subset', 'warmup_epochs', 'workers', 'threads', 'checkpoint_steps',
                     'checkpoint_minutes', 'lr', 'warmup_lr', 'min_lr', 'weight_decay', 'color_jitter', 'recount',
                     'mixup', 'cutmix', 'clip_grad'), '>= 0'),
    **dict.fromkeys(('hflip', 'reprob', 'mixup_prob', 'mixup_switch_prob', 'smoothing', 'drop_path', 'momentum',
                     'ema_decay'), '[0, 1]'),
    'crop_pct': '(0, 1]',
    'opt_eps': '> 0',
}
# list keys: (how many entries, None: any; the range of each entry)
_LIST_BOUNDS: Dict[str, Tuple[Optional[int], str]] = {
    'scale': (2, '(0, 1]'), 'cutmix_minmax': (2, '(0, 1]'), 'opt_betas': (2, '[0, 1)'),
    'mean': (None, '[0, 1]'), 'std': (None, '> 0'),
}


def _interval(text: str) -> Callable[[float], bool]:
    """'>= 1', '> 0', '[0, 1]', '(0, 1]', '[0, 1)' -> whether a number lies in it."""
    if text.startswith('>'):
        low = float(text.lstrip('>= '))
        return (lambda v: v >= low) if text.startswith('>=') else (lambda v: v > low)
    low, high = (float(x) for x in text[1:-1].split(','))
    above = (lambda v: v > low) if text[0] == '(' else (lambda v: v >= low)
    below = (lambda v: v < high) if text[-1] == ')' else (lambda v: v <= high)
    return lambda v: above(v) and below(v)


_WITHIN = {text: _interval(text) for text in {*_BOUNDS.values(), *(t for _, t in _LIST_BOUNDS.values())}}

# keys that may change between a run's invocations without changing its results, and that leave a grid cell's id
# alone (`compile` changes the random stream of drop path and dropout, so a run is not resumed across a change of
# it: fat.train.run refuses that; a cell keeps its id)
RUNTIME_KEYS = ('output_dir', 'data_dir', 'workers', 'checkpoint_steps', 'checkpoint_minutes', 'log_interval',
                'tensorboard', 'tensorboard_dir', 'wandb', 'wandb_project', 'compile')

# keys added after grids had run, with the value that reproduces the runs from before: a cell whose config holds
# that value leaves the key out of its id, so that its id (and its run directory) stays what it was
ID_NEUTRAL: Dict[str, Any] = {'decoder': 'pil'}

# named bases: `resolve_config(overrides, PRESETS[name])`, `fat train --preset NAME`
PRESETS: Dict[str, Dict[str, Any]] = {
    # CPU ablation screening (docs/training.md, "The CPU proxy"): ~40k Fashion-MNIST images seen in ~1 minute on
    # one thread.
    # A short run learns little under the official regularisation (Mixup/CutMix, RandAugment, erasing:
    # 73.0 % vs 79.6 % top-1 at this budget and lr 4e-3), so the proxy keeps label smoothing, flips and mild crops.
    'proxy': dict(
        model='fat_proxy', dataset='fashion_mnist', img_size=48, train_subset=20000, epochs=2, warmup_epochs=0.25,
        lr=8e-3, warmup_lr=8e-6, min_lr=8e-5, mixup=0., cutmix=0., auto_augment=None, reprob=0., scale=[0.5, 1.],
        workers=0, threads=1, deterministic=True, channels_last=True, log_interval=10),
    # seconds-long runs on synthetic data, for tests
    'smoke': dict(
        model='fat_proxy', dataset='synthetic', img_size=48, in_chans=1, train_subset=64, val_subset=32,
        batch_size=16, epochs=2, warmup_epochs=1., workers=0, threads=1, deterministic=True, channels_last=True),
}


def _check_value(key: str, value: Any) -> Any:
    """The value, with ints widened to float and tuples to lists; ValueError naming the key otherwise."""
    types, optional = _TYPES.get(key, ((type(DEFAULTS[key]),), False))
    value = check_type(f'config key {key!r}', value, types, optional)
    if key in _CHOICES:
        check_choice(f'{key!r}', value, _CHOICES[key])
    if value is None:
        return value
    if key in _BOUNDS and not _WITHIN[_BOUNDS[key]](value):
        raise ValueError(f'config key {key!r} must be {valid_values(key)}, got {value}')
    if key in _LIST_BOUNDS:
        entries, interval = _LIST_BOUNDS[key]
        if (entries is not None and len(value) != entries) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and _WITHIN[interval](v) for v in value):
            raise ValueError(f'config key {key!r} expects {valid_values(key)}, got {value!r}')
    return value


def _interval_text(interval: str) -> str:
    return interval if interval.startswith('>') else f'in {interval}'


def valid_values(key: str) -> str:
    """What a config key accepts beyond its type, for help texts: its choices or its range ('' when nothing more)."""
    if key in _CHOICES:
        return ' | '.join(_CHOICES[key])
    if key in _BOUNDS:
        return _interval_text(_BOUNDS[key])
    if key in _LIST_BOUNDS:
        entries, interval = _LIST_BOUNDS[key]
        return f"{f'{entries} numbers' if entries else 'numbers'}, each {_interval_text(interval)}"
    return ''


def resolve_config(overrides: Mapping[str, Any], base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The full, validated config of a run: DEFAULTS, updated by `base`, then by `overrides`.

    Deterministic and JSON-serialisable (tuples become lists), so it can be hashed. Unknown keys, values of the
    wrong type and invalid choices (including FASA specs) raise a one-line ValueError naming the key.
    """
    return _checked_whole(_json_copy(_applied(_applied(dict(DEFAULTS), base or {}), overrides)))


def config_resolver(common: Mapping[str, Any], base: Optional[Mapping[str, Any]] = None
                    ) -> Callable[[Mapping[str, Any]], Dict[str, Any]]:
    """`resolve_config({**common, **point}, base)` for many points (a grid's cells), the same configs and errors,
    with what the points share checked and copied once: a point's own keys are checked, then the whole config."""
    start = _json_copy(_applied(_applied(dict(DEFAULTS), base or {}), common))
    nested = [k for k, v in start.items() if isinstance(v, (list, dict))]  # copied per point: no config shares them

    def resolve(point: Mapping[str, Any]) -> Dict[str, Any]:
        cfg = dict(start)
        for key in nested:
            cfg[key] = _json_copy(cfg[key])
        return _checked_whole(_applied(cfg, _json_copy(dict(point))))
    return resolve


def _json_copy(value: Any) -> Any:
    """`json.loads(json.dumps(value))` (a deep copy with JSON types throughout), without the text for the plain
    values a config holds: 10,000 cells are resolved in every `fat sweep` command."""
    kind = type(value)
    if kind in (str, int, float, bool) or value is None:
        return value
    if kind in (list, tuple):
        return [_json_copy(v) for v in value]
    if kind is dict and all(type(k) is str for k in value):
        return {k: _json_copy(v) for k, v in value.items()}
    return json.loads(json.dumps(value))  # anything else exactly as JSON has it (or its TypeError)


def _applied(cfg: Dict[str, Any], source: Mapping[str, Any]) -> Dict[str, Any]:
    """`cfg` updated by `source`, each key known and each value of its type (ValueError naming the key)."""
    for key, value in source.items():
        if key not in DEFAULTS:
            raise ValueError(f'unknown config key {key!r}{close_hint(key, list(DEFAULTS), n=3)}')
        cfg[key] = _check_value(key, value)
    return cfg


def _checked_whole(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The checks that look at a config's values together, and the FASA spec's (each key's own range is checked
    where it is set: `_check_value`)."""
    resolve_fasa_stages(cfg['fasa'], 4)  # refuses an unknown FASA variant or axis with its own one-line error
    if cfg['mixup'] > 0 or cfg['cutmix'] > 0 or cfg['cutmix_minmax'] is not None:
        if cfg['batch_size'] % 2:
            raise ValueError(f"config key 'batch_size' must be even with mixup/cutmix, got {cfg['batch_size']}")
    if cfg['decoder'] != 'pil' and cfg['dataset'] != 'imagenet':  # a cell that would differ from pil's in name only
        raise ValueError(f"config key 'decoder' {cfg['decoder']!r} decodes image files, but dataset "
                         f"{cfg['dataset']!r} is held decoded: leave decoder at pil")
    return cfg


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Sequence[str] = RUNTIME_KEYS) -> List[str]:
    """Keys whose values differ between two resolved configs, except `ignore` (a config from before an `ID_NEUTRAL`
    key existed holds that key's neutral value)."""
    return sorted(k for k in set(a) | set(b)
                  if k not in ignore and a.get(k, ID_NEUTRAL.get(k)) != b.get(k, ID_NEUTRAL.get(k)))
