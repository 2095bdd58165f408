"""The `fat train` command: a config from the defaults, a preset, a YAML file and key=value arguments, then `main`."""
import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Tuple

from fat import yaml12
from fat.preflight import check_data, check_train
from fat.rundir import Status, set_aside_unreadable

from .config import _TYPES, DEFAULTS, PRESETS, resolve_config, valid_values

__all__ = ['register']


def parse_override(text: str) -> Tuple[str, Any]:
    """'key=value', the value read as YAML 1.2 except where the key expects a string (so 'auto_augment=rand-m9')."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise ValueError(f'expected key=value, got {text!r}')
    if key not in DEFAULTS:
        resolve_config({key: None})  # raises the unknown-key error with its suggestions
    parsed = yaml12.load(value, f'{key}=') if value else None
    types, _ = _TYPES.get(key, ((type(DEFAULTS[key]),), False))
    return key, value if types == (str,) and parsed is not None else parsed


def _train_command(args: argparse.Namespace) -> int:
    base = dict(PRESETS[args.preset]) if args.preset else {}
    if args.config:
        loaded = yaml12.load_file(args.config) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f'{args.config}: expected a mapping of config keys')
        base.update(loaded)
    overrides = dict(parse_override(text) for text in args.overrides)
    if args.output_dir:
        overrides['output_dir'] = args.output_dir
    cfg = resolve_config(overrides, base)
    if not cfg['output_dir']:
        # the same command line maps to the same directory, so running it again resumes
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
        cfg['output_dir'] = str(Path('runs') / f"{cfg['model']}-{cfg['dataset']}-{digest}")
    # the model, its keywords and the data, before the run directory exists: bad input leaves nothing behind
    check_train(cfg)
    check_data(cfg)
    if args.restart_unreadable:
        for path in set_aside_unreadable(cfg['output_dir']):
            print(f'set aside {path} (it does not load): the run starts again from step 0', file=sys.stderr)
    from .run import main  # torch: only once the command line is valid
    result = main(cfg)
    if result['status'] == Status.FAILED:
        print(f"fat train: error: {result['error']}", file=sys.stderr)
    else:
        print(json.dumps(result, sort_keys=True))
    return 0 if result['status'] == Status.DONE else 1


def register(subparsers: argparse._SubParsersAction):
    """Add `fat train` to the `fat` command."""
    keys = '\n'.join(f'  {k} = {json.dumps(v)}' + (f'  ({valid_values(k)})' if valid_values(k) else '')
                     for k, v in DEFAULTS.items())
    presets = '\n'.join(f"  {name}: {', '.join(f'{k}={json.dumps(v)}' for k, v in preset.items())}"
                        for name, preset in PRESETS.items())
    p = subparsers.add_parser(
        'train',
        description='Train, or resume, one run in --output-dir. Its config: the defaults below (the official\n'
                    'ImageNet recipe), updated by --preset, then --config, then key=value arguments.',
        epilog=f'presets (the keys each sets over the defaults):\n{presets}\n\nconfig keys and defaults:\n{keys}',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', metavar='FILE', help='YAML file of config keys')
    p.add_argument('--preset', choices=list(PRESETS), help='a named base config')
    p.add_argument('--output-dir', metavar='DIR', help='run directory (default: runs/<model>-<dataset>-<hash>)')
    p.add_argument('--restart-unreadable', action='store_true',
                   help='a run that failed because none of its checkpoints loads: set them aside (renamed '
                        '*.unreadable-<time>.pt) and start it again from step 0; without this such a run fails again')
    p.add_argument('overrides', nargs='*', metavar='key=value', help='config overrides (values in YAML)')
    p.set_defaults(func=_train_command)
