"""Atomic file writes, shared by every writer of results, checkpoints and cell state.

A file is written beside its destination under a temporary name, then renamed over it (`os.replace`, atomic on
POSIX): a reader, a killed process or a preempted job sees the old file or the new one, never half of one.
"""
import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ['atomic_path', 'write_text_atomic', 'write_json_atomic']

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    `durable` fsyncs the data before the rename, for files whose loss after a crash would cost compute
    (checkpoints, results); cell bookkeeping written thousands of times per launch skips it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        yield tmp
        if durable:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str, durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: PathLike, data: Any, durable: bool = False, indent: int = 1) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=True) + '\n', durable)
