"""The validation kit every command uses: one-line problems, close-match hints and typed values.

A problem with user input is one line naming the source and the key, with the valid choices and, where one is
close, a "did you mean" hint. Commands that can find several problems at once (a grid, a profile) collect them in
`Problems` and raise them together; the others raise the first as a `ValueError`. Torch-free.
"""
import argparse
import difflib
from typing import Any, List, NoReturn, Optional, Sequence, Tuple

__all__ = ['InputError', 'IntermixedParser', 'Problems', 'OneLineParser', 'close_hint', 'check_choice', 'check_type',
           'type_names']


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line too (the usage is one `--help` away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


class IntermixedParser(OneLineParser):
    """Parses options and `key=value` overrides in any order (`GRID --cluster local epochs=1 --dry-run`), which
    plain argparse refuses once an option separates two positionals."""
    _inner = False

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
                         ) -> Tuple[argparse.Namespace, List[str]]:
        if self._inner:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


class InputError(ValueError):
    """Invalid user input; `problems` holds one line per problem (printed one per line, exit status 2)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(dict.fromkeys(problems))  # de-duplicated, in order
        super().__init__('\n'.join(self.problems))


class Problems:
    """Collects the problems of one source (a file, the command line) so that all of them are reported at once."""

    def __init__(self, source: str):
        self.source = source
        self.lines: List[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f'{self.source}: {key}: {message}' if key else f'{self.source}: {message}')

    def raise_if_any(self) -> None:
        if self.lines:
            raise InputError(self.lines)


def close_hint(value: Any, choices: Sequence[Any], n: int = 1) -> str:
    """" (did you mean 'x'?)" for the closest choices (up to `n`), or ''."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=n)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ''


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value` if it is one of `choices`; else ValueError "unknown <what> 'v' (did you mean ...?); valid: ..."."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}{close_hint(value, choices)}; valid: "
                         f"{', '.join(str(c) for c in choices) or 'none'}")
    return value


def type_names(types: Tuple[type, ...], optional: bool = False) -> str:
    names = ' or '.join(t.__name__ for t in types)
    return f'{names} or null' if optional else names


def check_type(what: str, value: Any, types: Tuple[type, ...], optional: bool = False) -> Any:
    """`value` as one of `types` (YAML/JSON types), else ValueError "<what> expects int, got str 'x'".

    An int is accepted (and widened) where a float is expected and a tuple is a list; a bool is never a number
    and a number never a bool, although Python's bool is an int.
    """
    if value is None:
        if optional:
            return None
        raise ValueError(f'{what} may not be null (expected {type_names(types)})')
    if isinstance(value, tuple):
        value = list(value)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f'{what} expects {type_names(types, optional)}, got {type(value).__name__} {value!r}')
    return value
