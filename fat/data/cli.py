"""`fat data SUBCOMMAND`: tools for training data. `SUBCOMMANDS` lists each subcommand's module (which has its own
`register(subparsers)`) and its help line. Options and KEY=VALUE arguments mix in any order."""
import argparse
import importlib
from typing import Any, Dict, NamedTuple

from fat.checks import IntermixedParser

__all__ = ['SUBCOMMANDS', 'register']


class Subcommand(NamedTuple):
    module: str
    help: str


SUBCOMMANDS: Dict[str, Subcommand] = {
    'pack': Subcommand('fat.data.pack', 'an image folder into tar shards with an index, or a Hugging Face dataset on '
                                        'disk: verified, resumable'),
    'bench': Subcommand('fat.data.bench', 'img/s per core of decoding + the training transforms, 1..N loader workers'),
}


def register(subparsers: Any) -> None:
    """Add `fat data` and its subcommands."""
    p = subparsers.add_parser('data')
    sub = p.add_subparsers(dest='data_command', required=True, metavar='SUBCOMMAND', parser_class=IntermixedParser)
    for cmd in SUBCOMMANDS.values():
        importlib.import_module(cmd.module).register(_Named(sub, cmd.help))


class _Named:
    """Gives a subcommand's parser its help line from `SUBCOMMANDS`."""

    def __init__(self, subparsers: Any, help: str):
        self._subparsers, self._help = subparsers, help

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs['help'] = self._help
        return self._subparsers.add_parser(name, **kwargs)
