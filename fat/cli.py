"""The `fat` command. `COMMANDS` lists its subcommands: the module that implements each and the one line that
`fat --help` shows. Only the chosen command's module is imported, and its `register(subparsers)` adds that
command's parser (made with the table's help line), so `fat --help` and the light commands (`fat sweep status`)
start without importing torch. A subcommand's handler returns an exit code. Bad input raises `ValueError` (or
`FileNotFoundError`/`PermissionError`), which becomes one line on stderr and exit code 2; Ctrl-C one line and 130."""
import argparse
import importlib
import sys
from typing import Any, Dict, List, NamedTuple, Optional

import fat
from fat.checks import OneLineParser
from fat.variants import variants_help


class Command(NamedTuple):
    module: str  # has register(subparsers)
    help: str  # the line `fat --help` shows; also the parser's description unless the module gives one


COMMANDS: Dict[str, Command] = {
    'models': Command('fat.models.cli', 'list the registered FAT models and their parameter counts'),
    'train': Command('fat.train.cli', 'train a model: the official FAT recipe, resumable, DDP under torchrun or Slurm'),
    'flops': Command('fat.complexity', 'params and MACs/FLOPs under named counting conventions'),
    'sweep': Command('fat.sweep.cli', 'ablation grids (ablations/*.yaml) on Slurm: plan, launch, status, collect'),
    'report': Command('fat.report', 'regenerate the tables and figures (claims beside measurements) under results/'),
    'bench': Command('fat.bench', 'inference / training-step throughput and latency of timm models (CPU, CUDA)'),
    'speed': Command('fat.speed', 'the speed comparison of a grid file: FAT and peers timed round-robin in one run'),
    'data': Command('fat.data.cli', 'training data: pack a folder into tar shards or a Hugging Face dataset; the '
                                    'loader benchmark (img/s per core)'),
    'timm': Command('fat.timm_scripts', "run timm's own scripts (validate.py, benchmark.py, ...) on the FAT models"),
}


class _Registrar:
    """The `subparsers` a command module's `register` receives: it may add only its own command, whose help line
    comes from `COMMANDS` (one place for it, whatever the module passes)."""

    def __init__(self, subparsers: Any, name: str):
        self._subparsers, self._name = subparsers, name

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name != self._name:
            raise RuntimeError(f'{COMMANDS[self._name].module} registers {name!r}, but COMMANDS lists it for '
                               f'{self._name!r}')
        kwargs['help'] = COMMANDS[name].help
        kwargs.setdefault('description', COMMANDS[name].help)
        return self._subparsers.add_parser(name, **kwargs)


def chosen_command(argv: List[str]) -> Optional[str]:
    """The subcommand `argv` names (the first argument that is not an option: `fat` has no option taking a
    value), or None."""
    return next((arg for arg in argv if not arg.startswith('-')), None)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The `fat` parser, with `command`'s module imported and registered; every other command is listed only."""
    parser = OneLineParser(
        prog='fat', description=fat.__doc__, epilog=variants_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'fat-harness {fat.__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, cmd in COMMANDS.items():
        if name == command:
            importlib.import_module(cmd.module).register(_Registrar(sub, name))
        else:
            sub.add_parser(name, help=cmd.help)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f'fat {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (`fat train` checkpoints on the first one itself)
        print(f'fat {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
