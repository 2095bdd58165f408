"""`fat speed`: the speed comparison of a grid file (`ablations/speed.yaml`): every contender of one profile timed
in one process, round-robin (`fat.bench.compare`), and written to results/bench-*.csv, named by the environment.

A grid file has a ``name``, named model lists (``models: [fat_b0, ...]``) and ``profiles``; a profile sets the
device, precision, threads, batch sizes, warm-up and timed steps per round, rounds, and ``run``: a list of
``{mode, setting, models}`` (``models`` is a list or the name of one), each model of it one contender.
"""
import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from fat import yaml12
from fat.checks import close_hint
from fat.preflight import check_model

__all__ = ['load', 'contenders', 'register']

# profile key -> fat.bench.compare keyword
_PROFILE_KEYS = {'device': 'device', 'precision': 'precision', 'threads': 'num_threads', 'batch_size': 'batch_size',
                 'train_batch_size': 'train_batch_size', 'img_size': 'img_size', 'warmup': 'num_warmup',
                 'iters': 'num_iters', 'rounds': 'rounds', 'retries': 'retries', 'tf32': 'tf32'}
_RUN_KEYS = ('mode', 'setting', 'models')


def _unknown(where: str, key: str, valid: Any) -> ValueError:
    return ValueError(f"{where}: unknown key {key!r}; valid: {', '.join(valid)}{close_hint(key, list(valid))}")


def load(path: Path, profile: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """(contenders, fat.bench.compare keywords) of a grid file's profile; ValueError naming the key if malformed."""
    path = Path(path)
    grid = yaml12.load_file(path)
    if not isinstance(grid, dict) or not isinstance(grid.get('profiles'), dict):
        raise ValueError(f'{path}: needs a `profiles` mapping')
    lists = {k: v for k, v in grid.items() if k not in ('name', 'profiles')}
    for key, value in lists.items():
        if not (isinstance(value, list) and all(isinstance(m, str) for m in value)):
            raise ValueError(f'{path}: {key}: a model list must be a list of names')
    if profile not in grid['profiles']:
        raise _unknown(f'{path}: profiles', profile, grid['profiles'])
    spec = grid['profiles'][profile]
    where = f'{path}: profiles.{profile}'
    if not isinstance(spec, dict) or not isinstance(spec.get('run'), list) or not spec['run']:
        raise ValueError(f'{where}: needs a non-empty `run` list')
    options = {}
    for key, value in spec.items():
        if key == 'run':
            continue
        if key not in _PROFILE_KEYS:
            raise _unknown(where, key, [*_PROFILE_KEYS, 'run'])
        options[_PROFILE_KEYS[key]] = value
    return contenders(spec['run'], lists, where), options


def contenders(run: List[Mapping[str, Any]], lists: Mapping[str, List[str]], where: str) -> List[Dict[str, Any]]:
    """One contender per model of each ``run`` entry (duplicates dropped), mode and setting checked."""
    from fat.bench import MODES, SETTINGS, _check_choice
    out: List[Dict[str, Any]] = []
    for i, entry in enumerate(run):
        at = f'{where}.run[{i}]'
        if not isinstance(entry, dict):
            raise ValueError(f'{at}: must be a mapping with {", ".join(_RUN_KEYS)}')
        for key in entry:
            if key not in _RUN_KEYS:
                raise _unknown(at, key, _RUN_KEYS)
        try:
            mode = _check_choice('mode', entry.get('mode', 'infer'), MODES)
            setting = _check_choice('setting', entry.get('setting', 'as_built'), tuple(SETTINGS))
        except ValueError as e:
            raise ValueError(f'{at}: {e}') from None
        models = entry.get('models')
        if isinstance(models, str):
            if models not in lists:
                raise _unknown(f'{at}.models', models, lists)
            models = lists[models]
        if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
            raise ValueError(f'{at}.models: a non-empty list of model names, or the name of one')
        for model in models:
            try:
                check_model(model)  # before minutes of building and compiling the others
            except ValueError as e:
                raise ValueError(f'{at}.models: {e}') from None
            c = dict(model=model, mode=mode, setting=setting)
            if c not in out:
                out.append(c)
    return out


def _speed(args: argparse.Namespace) -> int:
    run, options = load(Path(args.grid), args.profile)
    for c in run:
        print(f"{c['model']:<30} {c['mode']:<5} {c['setting']}")
    print(f'{len(run)} contenders, {options}', flush=True)
    if args.dry_run:
        return 0
    load1, cores = os.getloadavg()[0], os.cpu_count() or 1
    # the 1-minute average lags and counts what ran before this command: each round's own checks decide
    print(f'load average {load1:.2f} on {cores} cores; a round that does not get its core is re-timed, or flagged '
          'and never ranked', flush=True)
    from fat import bench
    records = bench.compare(run, log=lambda line: print(line, flush=True), keep_going=True, **options)
    for r in records:
        spread = f"range {r['spread_pct']} % over {r['rounds']} rounds" if r['rounds'] > 1 else 'one round'
        flag = f"  CONTENDED, not ranked ({r['contended']})" if r['contended'] else ''
        print(f"{r['model']:<30} {r['mode']:<5} {r['setting']:<8} {r['samples_per_sec_mean']:>9.2f} samples/s "
              f"(timm's mean step; {spread}); median step {r['samples_per_sec']:.2f}{flag}", flush=True)
    for path in bench.save(records, args.results_dir):
        print(f'wrote {path}')
    return 0


def register(subparsers: Any) -> None:
    """Add `fat speed` to the `fat` command."""
    p = subparsers.add_parser('speed', description=__doc__.split('\n\n')[0])
    p.add_argument('grid', help='the grid file, e.g. ablations/speed.yaml')
    p.add_argument('--profile', required=True, help='the profile of the grid file to run (e.g. cpu, gpu)')
    p.add_argument('--results-dir', default='results', help='where the CSVs go (default: results)')
    p.add_argument('--dry-run', action='store_true', help='list the contenders and options, time nothing')
    p.set_defaults(func=_speed)
