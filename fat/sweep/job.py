"""The job a launch submits: a Checkpointable callable over cell directories (ConvNeXt/DeiT/DINOv2 pattern).

Everything a cell needs is on disk (`cell.json`), and resuming is the trainer's business, keyed on the cell
directory: so `checkpoint()` (preemption, time limit) only resubmits the same callable, and a plain
`scontrol requeue`, which skips `checkpoint()`, resumes just the same.
"""
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import submitit

import fat
from fat.rundir import Status, read_result

from .cells import append_record
from .cluster import hostname
from .tasks import TASKS

__all__ = ['CellJob', 'export_job_env']

_logger = logging.getLogger(__name__)
_RANK_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE')


def _job_environment() -> Optional[submitit.JobEnvironment]:
    """submitit's view of the job this process is a task of; None outside a submitit job."""
    if not os.environ.get('SUBMITIT_EXECUTOR'):
        return None
    try:
        return submitit.JobEnvironment()
    except RuntimeError:  # SUBMITIT_EXECUTOR names no executor of this submitit
        return None


def export_job_env() -> None:
    """In a multi-task submitit job, export what torchrun would: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from
    the task's own variables, and MASTER_ADDR / MASTER_PORT where the site has not set them.

    A site's `setup:` line runs once per job, before srun starts the tasks, so a rank variable it exported holds one
    value for every task: the task's own values replace it. MASTER_ADDR / MASTER_PORT from such a line are the site's
    choice (an interface, a free port range) and are kept. Under torchrun (TORCHELASTIC_RUN_ID) nothing is changed.
    """
    if os.environ.get('TORCHELASTIC_RUN_ID'):
        return
    job = _job_environment()
    if job is None or job.num_tasks <= 1:
        return
    task = submitit.helpers.TorchDistributedEnvironment()  # reads MASTER_PORT when set
    stale = {k: os.environ[k] for k in _RANK_VARS if k in os.environ}
    if stale:
        _logger.warning(f'replacing {stale} (set before the job started its tasks) with this task\'s own values')
    os.environ.update(
        RANK=str(task.rank), WORLD_SIZE=str(task.world_size), LOCAL_RANK=str(task.local_rank),
        LOCAL_WORLD_SIZE=str(task.local_world_size))
    os.environ.setdefault('MASTER_ADDR', task.master_addr)
    os.environ.setdefault('MASTER_PORT', str(task.master_port))


def _job_id() -> str:
    job = submitit.JobEnvironment()
    if job.array_job_id:
        return f'{job.array_job_id}_{job.array_task_id}'
    return job.job_id


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
        if result is not None and result['status'] != Status.FAILED:  # a failed run resumes from its checkpoint
            return result
        cell = json.loads((cell_dir / 'cell.json').read_text())
        if rank == 0:
            # `code`: where `fat` was imported from (a launch with --snapshot runs a copy); `hosts`, `world_size`:
            # the job's nodes and tasks (`fat sweep status` and collect show them); `gpus`: the GPUs it was given
            job = submitit.JobEnvironment()
            append_record(cell_dir, {'event': 'started', 'job_id': _job_id(), 'host': hostname(),
                                     'pid': os.getpid(), 'code': str(Path(fat.__file__).resolve().parents[1]),
                                     'hosts': list(job.hostnames), 'world_size': job.num_tasks,
                                     'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')})
        elif cell['task'] != 'train':  # counting and benchmarking are single-process
            return {}
        # a multi-task (one task per GPU) train cell: every rank runs it with torchrun's variables exported from
        # its task's own (fat.distributed sets up DDP from them); rank 0 writes the files
        export_job_env()
        return TASKS[cell['task']].run(cell['config'])

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same cells: the run resumes from the checkpoint in its cell directory."""
        return submitit.helpers.DelayedSubmission(type(self)(self.cell_dirs))
