"""`fat models`: build every registered FAT model with a FASA variant and print its parameter count."""
import argparse
import json
from typing import Any

import timm

from fat.variants import variants_help

__all__ = ['register']


def _models(args: argparse.Namespace) -> int:
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


def register(subparsers: Any) -> None:
    """Add `fat models` to the `fat` command."""
    p = subparsers.add_parser('models', epilog=variants_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--pattern', default='fat_*', help='timm model-name pattern (default: fat_*)')
    p.add_argument('--fasa', default='fasa', help='FASA variant to build them with (default: fasa, the official code)')
    p.add_argument('--json', action='store_true', help='one JSON record per model')
    p.set_defaults(func=_models)
