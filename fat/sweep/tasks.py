"""What a cell runs: `train` (fat.train), `flops` (fat.complexity) or `bench` (fat.bench).

Each task resolves a cell's overrides into a full, validated, JSON-serialisable config and runs that config in
the cell directory, which ends with `result.json` (written last and atomically: the cell's "done" marker).
Resolving imports neither torch nor timm unless a cell names a model that is not FAT's (a timm peer); running
does.
"""
import functools
import inspect
import json
import traceback
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from fat.checks import check_choice, check_type, close_hint
from fat.environment import record
from fat.preflight import check_model, check_model_args, check_sizes, check_train, is_fat
from fat.rundir import Status, write_result
from fat.train import config as train_config
from fat.variants import resolve_fasa_stages

__all__ = ['TASKS', 'Task', 'check_model', 'check_model_args', 'check_sizes', 'model_kwargs']

def _check_keys(overrides: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    for key in overrides:
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}{close_hint(key, list(defaults))}; valid: "
                             f"{', '.join(defaults)}")


def _check_type(key: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of `default` (any type where the default is None)."""
    if default is None:
        return value
    types = (list,) if isinstance(default, (list, tuple)) else (type(default),)
    return check_type(f'config key {key!r}', value, types, optional=True)


class Task:
    """A kind of cell. Subclasses define `defaults()`, `resolve()` and `run()`."""
    name = ''
    #: config keys that do not change a run's results, left out of the cell id
    runtime_keys: Tuple[str, ...] = ('output_dir',)
    #: keys left out of the cell id while they hold this value (added later: the older cells keep their ids)
    id_neutral: Dict[str, Any] = {}

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
        check_sizes(cfg)
        return json.loads(json.dumps(cfg))

    def resolver(self, common: Mapping[str, Any], preset: Optional[str] = None
                 ) -> Callable[[Mapping[str, Any]], Dict[str, Any]]:
        """`point -> self.resolve({**common, **point}, preset)`, for a grid's cells (a task may check what the
        points share once)."""
        return lambda point: self.resolve({**common, **point}, preset)

    def run(self, cfg: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError


class TrainTask(Task):
    """A training run: `fat.train.resolve_config` (from the torch-free `fat.train.config`) and `fat.train.main`,
    which resumes from `output_dir`."""
    name = 'train'

    @functools.cached_property
    def runtime_keys(self) -> Tuple[str, ...]:  # type: ignore[override]
        return tuple(train_config.RUNTIME_KEYS)

    @property
    def id_neutral(self) -> Dict[str, Any]:  # type: ignore[override]
        return train_config.ID_NEUTRAL

    def defaults(self) -> Dict[str, Any]:
        return dict(train_config.DEFAULTS)

    def presets(self) -> Tuple[str, ...]:
        return tuple(train_config.PRESETS)

    def resolve(self, overrides: Mapping[str, Any], preset: Optional[str] = None) -> Dict[str, Any]:
        return self.resolver(overrides, preset)({})

    def resolver(self, common: Mapping[str, Any], preset: Optional[str] = None
                 ) -> Callable[[Mapping[str, Any]], Dict[str, Any]]:
        presets = train_config.PRESETS
        if preset is not None:
            check_choice('train preset', preset, list(presets))
        resolve = train_config.config_resolver(common, presets[preset] if preset else None)

        def cell(point: Mapping[str, Any]) -> Dict[str, Any]:
            cfg = resolve(point)
            check_train(cfg)
            return cfg
        return cell

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
    runtime_keys = ('output_dir', 'retries')  # re-timing a contended round does not change what is measured

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
    try:
        result = {'status': Status.DONE, **measure(cfg)}
    except Exception as e:  # recorded, not raised: the cell's state says it
        traceback.print_exc()
        result = {'status': Status.FAILED, 'error': f'{type(e).__name__}: {e}'}
    result['environment'] = record('cuda' if torch.cuda.is_available() else 'cpu', 1)
    write_result(cfg['output_dir'], result)
    return result


def model_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The timm.create_model keyword arguments a cell's config implies (for counting its parameters and MACs)."""
    kwargs = dict(cfg.get('model_args') or {})
    if is_fat(cfg['model']):  # a timm peer takes no `fasa`
        kwargs['fasa'] = cfg.get('fasa', 'fasa')
    for key in ('num_classes', 'in_chans'):
        if cfg.get(key) is not None:
            kwargs[key] = cfg[key]
    return kwargs


TASKS: Dict[str, Task] = {t.name: t for t in (TrainTask(), FlopsTask(), BenchTask())}
