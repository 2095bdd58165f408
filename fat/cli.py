"""The `fat` command. Each capability adds one subcommand through a `register(subparsers)` function in its
own module (listed in `_COMMAND_MODULES`); a subcommand's handler returns an exit code. Bad input raises
`ValueError` (or `FileNotFoundError`/`PermissionError`), which becomes one line on stderr and exit code 2."""
import argparse
import importlib
import json
import sys
from typing import List, Optional

import timm

import fat
from fat.models import list_fasa_presets

# modules that each register one or more subcommands
_COMMAND_MODULES: List[str] = ['fat.train', 'fat.complexity', 'fat.sweep.cli', 'fat.report', 'fat.bench']


def presets_help() -> str:
    lines = [f'  {name:<20} {text}' for name, text in list_fasa_presets().items()]
    return 'FASA presets (the `fasa` model argument):\n' + '\n'.join(lines)


def _models(args: argparse.Namespace) -> int:
    """Build every registered fat_* model with the requested FASA variant and print its parameter count."""
    rows = []
    for name in timm.list_models(args.pattern):
        model = timm.create_model(name, fasa=args.fasa)
        rows.append(dict(model=name, fasa=model.fasa_variant, params=sum(p.numel() for p in model.parameters())))
    if not rows:
        raise ValueError(f'no registered model matches {args.pattern!r}; try fat_*')
    for row in rows:
        text = f"{row['model']:<10} fasa={row['fasa']:<20} {row['params']:>12,d} params"
        print(json.dumps(row) if args.json else text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='fat', description=fat.__doc__, epilog=presets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'fat-harness {fat.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser(
        'models', help='list the registered FAT models and their parameter counts', epilog=presets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--pattern', default='fat_*', help='timm model-name pattern (default: fat_*)')
    p.add_argument('--fasa', default='fasa', help='FASA preset to build them with (default: fasa, the official code)')
    p.add_argument('--json', action='store_true', help='one JSON record per model')
    p.set_defaults(func=_models)

    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f'fat {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
