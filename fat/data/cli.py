"""`fat data SUBCOMMAND`: tools for a run's training data. `SUBCOMMANDS` lists them: the module that implements
each (its `register(subparsers, name, help)` adds the subcommand's parser and handler) and its help line."""
import importlib
from typing import Any, Dict, NamedTuple

__all__ = ['SUBCOMMANDS', 'register']


class Subcommand(NamedTuple):
    module: str
    help: str


SUBCOMMANDS: Dict[str, Subcommand] = {
    'pack': Subcommand('fat.data.pack', 'an image folder into tar shards with an index, or a Hugging Face dataset on '
                                        'disk: verified, resumable'),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser('data')
    sub = parser.add_subparsers(dest='data_command', required=True, metavar='SUBCOMMAND')
    for name, cmd in SUBCOMMANDS.items():
        importlib.import_module(cmd.module).register(sub, name, cmd.help)
