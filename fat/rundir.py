"""The run directory: the files a run writes, the states a run and a cell can be in, and reading and writing them.

One place for what the trainer writes and the sweep, `fat sweep collect` and `fat report` read, so that none of them
imports another to learn a file name or a state. Torch-free.

A run directory (`fat train --output-dir`, a sweep cell's directory) holds::

    config.json          the resolved config
    environment.json     one record per start of the run: code version, packages, hardware, command line
    log.jsonl            one line per epoch (the source of truth for curves and progress)
    progress.json        where a running run is (epoch, step, images/s), rewritten as it goes
    checkpoint-last.pt   and -prev (the one before), -best (the best top-1)
    result.json          written last and atomically: `status` done | diverged | failed, and the metrics

A run whose checkpoints exist but none loads ends failed with `unreadable_checkpoints` (their names) in its result,
rather than starting over them; `set_aside_unreadable` sets them aside so that the next start begins at step 0.
"""
import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from fat.io import write_json_atomic

__all__ = ['CONFIG', 'ENVIRONMENT', 'LOG', 'PROGRESS', 'RESULT', 'LAST_CHECKPOINT', 'PREV_CHECKPOINT',
           'BEST_CHECKPOINT', 'Status', 'State', 'ACTIVE', 'read_result', 'write_result', 'read_environment',
           'append_environment', 'UNREADABLE_CHECKPOINTS', 'set_aside_unreadable', 'read_log', 'CURVE_KEYS',
           'curves_path', 'RANK_FAILURE']

CONFIG, ENVIRONMENT, LOG, PROGRESS, RESULT = (
    'config.json', 'environment.json', 'log.jsonl', 'progress.json', 'result.json')
LAST_CHECKPOINT, PREV_CHECKPOINT, BEST_CHECKPOINT = 'checkpoint-last.pt', 'checkpoint-prev.pt', 'checkpoint-best.pt'

PathLike = Union[str, Path]

# the result key of a run that failed because none of its checkpoints loads: their file names
UNREADABLE_CHECKPOINTS = 'unreadable_checkpoints'


class _Named(str, Enum):
    """A state that is its own name in JSON, CSV and f-strings (`str(State.DONE) == 'DONE'`)."""

    def __str__(self) -> str:
        return self.value


class Status(_Named):
    """How a run ended: the `status` of its result.json."""
    DONE = 'done'
    DIVERGED = 'diverged'  # a non-finite loss stopped it (the result says at which step)
    FAILED = 'failed'  # an error stopped it (the result says which); running it again resumes


class State(_Named):
    """A cell's state, as `fat sweep status`, `collect` and the report show it (disk first, then the scheduler)."""
    DONE = 'DONE'
    DIVERGED = 'DIVERGED'
    FAILED = 'FAILED'  # ended without a result, or with `status: failed`
    RUNNING = 'RUNNING'
    STALLED = 'STALLED'  # RUNNING, but its log has not advanced for several of its own step times
    REQUEUED = 'REQUEUED'  # pending again after a requeue (preemption, time limit)
    PENDING = 'PENDING'
    NOT_LAUNCHED = 'NOT_LAUNCHED'
    CORRUPT = 'CORRUPT'  # collect only: a result.json that cannot be read

    @classmethod
    def of(cls, status: str) -> 'State':
        """The state of a cell whose result.json has this status."""
        return {Status.DONE: cls.DONE, Status.DIVERGED: cls.DIVERGED, Status.FAILED: cls.FAILED}[Status(status)]


# queued or running: `fat sweep wait` waits for these, `launch` leaves them alone
ACTIVE = (State.RUNNING, State.STALLED, State.REQUEUED, State.PENDING)


def read_result(run_dir: PathLike) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(result, problem): the parsed result.json, or None and why it is unreadable or corrupt (None: not written)."""
    path = Path(run_dir) / RESULT
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f'{RESULT} unreadable: {e}'
    try:
        result = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f'{RESULT} corrupt: {e}'
    if not isinstance(result, dict) or result.get('status') not in [s.value for s in Status]:
        return None, f"{RESULT} corrupt: no status {'|'.join(s.value for s in Status)}"
    return result, None


def write_result(run_dir: PathLike, result: Mapping[str, Any]) -> None:
    """result.json, durably and atomically: once it exists the run is over."""
    if result.get('status') not in [s.value for s in Status]:
        raise ValueError(f"a result needs a status of {', '.join(s.value for s in Status)}, "
                         f"got {result.get('status')!r}")
    write_json_atomic(Path(run_dir) / RESULT, dict(result), durable=True, indent=2)


RANK_FAILURE = 'failed-rank{}.json'  # a rank's own error, so that rank 0 records the first real one of a DDP run
CURVE_KEYS = ('val_top1', 'train_loss')  # the per-epoch log keys that collect keeps and the report plots


def curves_path(collection: PathLike) -> Path:
    """Where `fat sweep collect` puts the learning curves of the collection `results/<name>.csv`:
    `results/curves/<name>.csv` (one row per cell and epoch)."""
    return Path(collection).parent / 'curves' / Path(collection).name


def read_log(run_dir: PathLike) -> Optional[Dict[int, Dict[str, Any]]]:
    """The run's per-epoch records (`log.jsonl`, one JSON line per epoch) by epoch, the last line of an epoch winning
    (a resumed run writes an epoch again); None without a log. A torn last line of a killed run is skipped."""
    try:
        lines = (Path(run_dir) / LOG).read_text().splitlines()
    except OSError:
        return None
    epochs: Dict[int, Dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
            epochs[int(record['epoch'])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return dict(sorted(epochs.items()))


def read_environment(run_dir: PathLike) -> List[Dict[str, Any]]:
    """Every start's environment record, oldest first; [] when there is none or the file is unreadable."""
    try:
        starts = json.loads((Path(run_dir) / ENVIRONMENT).read_text())
    except (OSError, ValueError):
        return []
    return [s for s in starts if isinstance(s, dict)] if isinstance(starts, list) else []


def append_environment(run_dir: PathLike, record: Mapping[str, Any]) -> None:
    """Add one start's environment record (atomically: a kill leaves the previous list)."""
    write_json_atomic(Path(run_dir) / ENVIRONMENT, read_environment(run_dir) + [dict(record)], durable=True, indent=2)


def set_aside_unreadable(run_dir: PathLike) -> List[Path]:
    """Where the run failed because none of its checkpoints loads: rename them out of the way (kept, as
    `checkpoint-last.unreadable-<time>.pt`), so that the run starts again from step 0. Returns the new names."""
    result, _ = read_result(run_dir)
    if result is None or result['status'] != Status.FAILED:
        return []
    moved, stamp = [], time.strftime('%Y%m%d-%H%M%S')
    for name in result.get(UNREADABLE_CHECKPOINTS) or []:
        path = Path(run_dir) / Path(str(name)).name  # a file name, never a path elsewhere
        if path.name in (LAST_CHECKPOINT, PREV_CHECKPOINT) and path.exists():
            moved.append(path.with_name(f'{path.stem}.unreadable-{stamp}{path.suffix}'))
            os.replace(path, moved[-1])
    return moved
