"""The job a launch submits: a Checkpointable callable over cell directories (ConvNeXt/DeiT/DINOv2 pattern).

Everything a cell needs is on disk (`cell.json`), and resuming is the trainer's business, keyed on the cell
directory: so `checkpoint()` (preemption, time limit) only resubmits the same callable, and a plain
`scontrol requeue`, which skips `checkpoint()`, resumes just the same.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import submitit

import fat

from .cells import append_record, read_result
from .cluster import hostname
from .tasks import TASKS

__all__ = ['CellJob']


def _job_id() -> str:
    env = submitit.JobEnvironment()
    if env.array_job_id:
        return f'{env.array_job_id}_{env.array_task_id}'
    return env.job_id


class CellJob(submitit.helpers.Checkpointable):
    """Run the cells in `cell_dirs` one after another, skipping finished ones.

    On Slurm a job holds one cell (arrays give the parallelism); the `local` executor has no queue, so a launch
    there gives each of `array_parallelism` jobs a share of the cells.
    """

    def __init__(self, cell_dirs: Sequence[str]):
        self.cell_dirs = [str(d) for d in cell_dirs]

    def __call__(self) -> List[Dict[str, Any]]:
        return [self._run_cell(Path(d), submitit.JobEnvironment().global_rank) for d in self.cell_dirs]

    @staticmethod
    def _run_cell(cell_dir: Path, rank: int) -> Dict[str, Any]:
        result, _ = read_result(cell_dir)
        if result is not None and result['status'] != 'failed':  # a failed run resumes from its checkpoint
            return result
        cell = json.loads((cell_dir / 'cell.json').read_text())
        if rank == 0:
            # `code`: where `fat` was imported from (a launch with --snapshot runs a copy); `hosts`, `world_size`:
            # the job's nodes and tasks (`fat sweep status` and collect show them); `gpus`: the GPUs it was given
            env = submitit.JobEnvironment()
            append_record(cell_dir, {'event': 'started', 'job_id': _job_id(), 'host': hostname(),
                                     'pid': os.getpid(), 'code': str(Path(fat.__file__).resolve().parents[1]),
                                     'hosts': list(env.hostnames), 'world_size': env.num_tasks,
                                     'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')})
        elif cell['task'] != 'train':  # counting and benchmarking are single-process
            return {}
        # a multi-task (one task per GPU) train cell: fat.distributed sets up DDP from the task's Slurm variables;
        # every rank runs it, rank 0 writes the files
        return TASKS[cell['task']].run(cell['config'])

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same cells: the run resumes from the checkpoint in its cell directory."""
        return submitit.helpers.DelayedSubmission(type(self)(self.cell_dirs))
