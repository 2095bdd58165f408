"""What a cell runs: `train` (fat.train), `flops` (fat.complexity) or `bench` (fat.bench).

Each task resolves a cell's overrides into a full, validated, JSON-serialisable config and runs that config in
the cell directory, which ends with `result.json` (written last and atomically: the cell's "done" marker).
Resolving imports neither torch nor timm unless a cell names a model that is not FAT's (a timm peer); running
does.
"""
import difflib
import functools
import inspect
import json
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from fat import train_config
from fat.io import write_json_atomic
from fat.variants import MODEL_NAMES, resolve_fasa_stages

__all__ = ['TASKS', 'Task', 'check_model', 'model_kwargs']

FAT_MODELS = ('fat_b0', 'fat_b1', 'fat_b2', 'fat_b3')


def check_model(name: Any) -> None:
    """ValueError unless `name` is a model timm can build (the FAT models are registered by `import fat`).
    A FAT model is known without importing timm (seconds); any other name needs timm's registry."""
    if isinstance(name, str) and name.split('.', 1)[0] in MODEL_NAMES:  # `fat_b0` or `fat_b0.<pretrained tag>`
        return
    import timm
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ValueError(f"unknown model {name!r}{hint}; valid: {', '.join(FAT_MODELS)} or any timm model")


def _check_keys(overrides: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    for key in overrides:
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ValueError(f"unknown config key {key!r}{hint}; valid: {', '.join(defaults)}")


def _check_type(key: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of `default` (any type where the default is None); ints widen to float."""
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    kind = list if isinstance(default, tuple) else type(default)
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind) or isinstance(value, bool) != isinstance(default, bool):
        raise ValueError(f'config key {key!r} expects {kind.__name__}, got {type(value).__name__} {value!r}')
    return value


class Task:
    """A kind of cell. Subclasses define `defaults()`, `resolve()` and `run()`."""
    name = ''
    #: config keys that do not change a run's results, left out of the cell id
    runtime_keys: Tuple[str, ...] = ('output_dir',)

    def defaults(self) -> Dict[str, Any]:
        raise NotImplementedError

    def resolve(self, overrides: Mapping[str, Any], preset: Optional[str] = None) -> Dict[str, Any]:
        """The full validated config; ValueError naming the key otherwise."""
        defaults = self.defaults()
        _check_keys(overrides, defaults)
        cfg = dict(defaults)
        for key, value in overrides.items():
            cfg[key] = _check_type(key, value, defaults[key])
        check_model(cfg['model'])
        resolve_fasa_stages(cfg['fasa'], 4)
        return json.loads(json.dumps(cfg))

    def run(self, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError


class TrainTask(Task):
    """A training run: `fat.train.resolve_config` (from the torch-free `fat.train_config`) and `fat.train.main`,
    which resumes from `output_dir`."""
    name = 'train'

    @functools.cached_property
    def runtime_keys(self) -> Tuple[str, ...]:  # type: ignore[override]
        return tuple(train_config.RUNTIME_KEYS)

    def defaults(self) -> Dict[str, Any]:
        return dict(train_config.DEFAULTS)

    def presets(self) -> Tuple[str, ...]:
        return tuple(train_config.PRESETS)

    def resolve(self, overrides: Mapping[str, Any], preset: Optional[str] = None) -> Dict[str, Any]:
        presets = train_config.PRESETS
        if preset is not None and preset not in presets:
            close = difflib.get_close_matches(preset, presets, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ValueError(f"unknown train preset {preset!r}{hint}; valid: {', '.join(presets) or 'none'}")
        cfg = train_config.resolve_config(overrides, presets[preset] if preset else None)
        check_model(cfg['model'])
        return cfg

    def run(self, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        from fat import train  # torch: only where the cell runs
        return train.main(cfg)


class FlopsTask(Task):
    """Parameters and MACs under every named convention (`fat.complexity.measure`)."""
    name = 'flops'

    def defaults(self) -> Dict[str, Any]:
        return {'model': 'fat_b0', 'fasa': 'fasa', 'img_size': 224, 'num_classes': None, 'in_chans': None,
                'model_args': {}, 'output_dir': None}

    def run(self, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        return _recorded(cfg, self._measure)

    @staticmethod
    def _measure(cfg: Mapping[str, Any]) -> Dict[str, Any]:
        from fat import complexity
        rows = complexity.measure(cfg['model'], img_size=cfg['img_size'], **model_kwargs(cfg))
        return {'params': rows[0]['params'], **{f"macs_{row['convention']}": row['macs'] for row in rows}}


class BenchTask(Task):
    """Throughput and latency (`fat.bench.run`); its keyword arguments are this task's config keys."""
    name = 'bench'

    def _signature(self) -> inspect.Signature:
        try:
            from fat import bench
        except ImportError as e:
            raise ValueError(f"task 'bench' needs fat.bench: {e}") from None
        return inspect.signature(bench.run)

    def defaults(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {'model': 'fat_b0', 'fasa': 'fasa', 'output_dir': None}
        for name, param in list(self._signature().parameters.items())[1:]:  # the first is the model name
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                cfg[name] = None if param.default is param.empty else param.default
        return cfg

    def run(self, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        return _recorded(cfg, self._measure)

    @staticmethod
    def _measure(cfg: Mapping[str, Any]) -> Dict[str, Any]:
        from fat import bench
        return bench.run(cfg['model'], **{k: v for k, v in cfg.items() if k not in ('model', 'output_dir')})


def _recorded(cfg: Mapping[str, Any], measure: Callable[[Mapping[str, Any]], Dict[str, Any]]) -> Dict[str, Any]:
    """Run a flops/bench measurement and write its result.json, `failed` with the error if it raises (as the
    trainer does), so that a job running several cells goes on to the next."""
    import torch

    from fat.train import environment
    try:
        result = {'status': 'done', **measure(cfg)}
    except Exception as e:  # recorded, not raised: the cell's state says it
        traceback.print_exc()
        result = {'status': 'failed', 'error': f'{type(e).__name__}: {e}'}
    result['environment'] = environment(torch.device('cuda' if torch.cuda.is_available() else 'cpu'), 1)
    write_json_atomic(Path(cfg['output_dir']) / 'result.json', result)
    return result


def model_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The timm.create_model keyword arguments a cell's config implies (for counting its parameters and MACs)."""
    kwargs = dict(cfg.get('model_args') or {}, fasa=cfg.get('fasa', 'fasa'))
    for key in ('num_classes', 'in_chans'):
        if cfg.get(key) is not None:
            kwargs[key] = cfg[key]
    return kwargs


TASKS: Dict[str, Task] = {t.name: t for t in (TrainTask(), FlopsTask(), BenchTask())}
