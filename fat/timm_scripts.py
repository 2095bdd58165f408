"""`fat timm SCRIPT [ARGS]`: run one of timm's own scripts (train.py, validate.py, benchmark.py, inference.py from
a checkout of github.com/huggingface/pytorch-image-models) with the FAT models registered.

timm's scripts build models by name (`timm.create_model(args.model)`), and a model is known to timm only once the
module that registers it is imported. Only timm's train.py can import one for you (`--device-modules fat`); the
others fail with "Unknown model (fat_b0)". This runs the script as `python SCRIPT ARGS` would (as `__main__`, its
folder first on sys.path, its exit status kept), after `import fat`.
"""
import argparse
import runpy
import sys
from pathlib import Path

__all__ = ['run_script', 'register']


def run_script(script: Path, args: list) -> int:
    """Run `script` with `args` as its command line, the FAT models registered; its exit status."""
    if not script.is_file():
        raise FileNotFoundError(f'timm script not found: {script}')
    import fat.models  # noqa: F401 (registers fat_b0..b3 and fat_proxy with timm)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name='__main__')
    except SystemExit as e:  # the script's own exit status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'timm', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage='fat timm SCRIPT [ARGS ...]   e.g. fat timm ~/pytorch-image-models/validate.py --model fat_b0 ...')
    p.add_argument('script', type=Path, metavar='SCRIPT', help="one of timm's scripts (validate.py, benchmark.py, ...)")
    p.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='its arguments, passed unchanged')
    p.set_defaults(func=lambda a: run_script(a.script, a.args))
