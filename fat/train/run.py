"""`main(cfg)`: one run in its run directory: the config checked against the one there, a finished run's result
returned, otherwise a Trainer resumed and run, its environment recorded, its result written last."""
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
import torch.distributed as dist
from timm.utils import setup_default_logging

from fat.distributed import Placement
from fat.distributed import setup as setup_distributed
from fat.environment import record as environment_record
from fat.io import write_json_atomic
from fat.rundir import (
    CONFIG,
    LAST_CHECKPOINT,
    RANK_FAILURE,
    RESULT,
    UNREADABLE_CHECKPOINTS,
    Status,
    append_environment,
    read_result,
    write_result,
)

from .checkpoint import UnreadableCheckpoints
from .config import config_diff, resolve_config
from .trainer import Trainer

__all__ = ['main']

_logger = logging.getLogger(__name__)


def main(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Run, or resume, the training run `cfg` in `cfg['output_dir']`; returns the result written to result.json.

    A directory holding a finished run (status done or diverged) returns its result without training; a failed
    or interrupted one resumes from its last readable checkpoint. Exceptions are recorded as status `failed`; so is
    a directory whose checkpoints exist but none loads (with their names: `fat.rundir.set_aside_unreadable`).
    """
    cfg = resolve_config(cfg)
    if not cfg['output_dir']:
        raise ValueError("config key 'output_dir' is required")
    out_dir = Path(cfg['output_dir'])
    if (out_dir / CONFIG).exists():
        stored = json.loads((out_dir / CONFIG).read_text())
        changed = config_diff(stored, cfg)
        if changed:
            raise ValueError(
                f"{out_dir} holds a run with a different config ({', '.join(changed)}); use a new output_dir")
        if stored.get('compile') != cfg['compile'] and (out_dir / LAST_CHECKPOINT).exists():
            # inductor draws drop-path and dropout masks from its own random stream, not eager's
            raise ValueError(f"{out_dir} was trained with compile={stored.get('compile')!r}; resuming it with "
                             f"compile={cfg['compile']!r} would take another random stream from here on: resume with "
                             'the same setting, or use a new output_dir')
    result, _ = read_result(out_dir)
    if result is not None and result['status'] in (Status.DONE, Status.DIVERGED):
        return result
    if cfg['deterministic']:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # before CUDA starts
    place = setup_distributed(cfg['device'])
    if not logging.root.handlers:
        setup_default_logging(logging.INFO if place.primary else logging.WARNING)
    # the run sets these process-wide; give them back to an in-process caller (a sweep's debug executor, tests)
    settings = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        return _run(cfg, out_dir, place)
    finally:
        torch.set_num_threads(settings[0])
        torch.use_deterministic_algorithms(settings[1])
        torch.backends.cudnn.benchmark = settings[2]
        if dist.is_initialized():
            dist.destroy_process_group()


def _rank_failures(out_dir: Path) -> List[Dict[str, Any]]:
    """The failures each rank recorded (`RANK_FAILURE`), earliest first."""
    found = []
    for path in out_dir.glob(RANK_FAILURE.format('*')):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda f: f['time'])


def _run(cfg: Dict[str, Any], out_dir: Path, place: Placement) -> Dict[str, Any]:
    if place.primary:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RESULT).unlink(missing_ok=True)  # a failed run's: this attempt writes its own
        for stale in out_dir.glob(RANK_FAILURE.format('*')):
            stale.unlink()
        write_json_atomic(out_dir / CONFIG, cfg, durable=True, indent=2)
    if place.world_size > 1:
        dist.barrier()
    trainer = None
    try:
        trainer = Trainer(cfg, place)
        trainer.resume()
        if place.primary:
            start = environment_record(place.device, place.world_size)
            append_environment(out_dir, dict(start, resumed_from=trainer.resumed_from))
        result = trainer.run()
    except Exception as e:
        error = f'{type(e).__name__}: {e}'
        if not isinstance(e, (ValueError, FileNotFoundError)):  # a bad config or missing data: the error says it all
            _logger.exception(f'run {out_dir} failed')
        extra: Dict[str, Any] = {UNREADABLE_CHECKPOINTS: e.names} if isinstance(e, UnreadableCheckpoints) else {}
        if place.world_size > 1:
            # a rank that fails alone (a corrupt image in its shard, its GPU out of memory) leaves the others failing
            # on a closed connection, or waiting for a watchdog: each rank records its own error before it exits,
            # and rank 0 records the first one, with its rank
            write_json_atomic(out_dir / RANK_FAILURE.format(place.rank),
                              dict(rank=place.rank, time=time.time(), error=error))
            if place.primary:
                failures = _rank_failures(out_dir)
                first = failures[0] if failures else dict(rank=place.rank, error=error)
                error = f"rank {first['rank']}: {first['error']}"
                extra.update(failed_rank=first['rank'], rank_errors={f['rank']: f['error'] for f in failures})
        result = (trainer.result(Status.FAILED, error=error, **extra) if trainer
                  else dict(status=Status.FAILED, error=error, **extra))
    if place.primary:
        write_result(out_dir, result)
    return result
