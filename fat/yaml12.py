"""The one way `fat` reads YAML: grids, Slurm profiles, train configs, analysis files and key=value overrides.

Safe (no Python objects), strict (a duplicate key or a mapping used as a key is an error) and YAML 1.2 for
scalars, as a user who writes `lr: 1e-3` expects: `1e-3` is a float (PyYAML's YAML 1.1 makes it a string) and
only true/false are booleans (YAML 1.1 also turns yes/no/on/off into booleans). Errors are one line naming the
source and position (`fat.checks.InputError`). Writing YAML needs none of this: `yaml.safe_dump` is used as is.
"""
import re
from pathlib import Path
from typing import Any, Dict, Union

import yaml

from fat.checks import InputError

__all__ = ['load', 'load_file']


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and booleans that refuses duplicate and non-scalar mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, 'a mapping key must be a plain value, not a list or mapping', key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key {key!r}', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'))
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers[:] = [(tag, regexp) for tag, regexp in _resolvers if tag != 'tag:yaml.org,2002:bool']
_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:bool', re.compile(r'^(?:true|True|TRUE|false|False|FALSE)$'), list('tTfF'))
_Loader.add_constructor('tag:yaml.org,2002:map', _Loader.construct_mapping)


def load(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error raises a one-line InputError naming `source` and the position."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise InputError([f'{source}: {where}invalid YAML: {problem}']) from None


def load_file(path: Union[str, Path]) -> Any:
    """Parse a YAML file (see `load`); a missing file is a one-line InputError too."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError([f'{path}: cannot read: {e.strerror or e}']) from None
    return load(text, str(path))
