"""Where a training process runs: its rank in the job, its device, its process group, its device's random state.

The process reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR / MASTER_PORT):
torchrun sets them per worker, and the sweep's job wrapper (`fat.sweep.job`) sets them in each task of a multi-task
submitit job from the task's own Slurm variables; this module knows nothing of submitit. Every
inconsistency between what the job was given and what this process can use is an error that names the fix, never a
quiet fallback: tasks that each train alone all write the same run directory, and a GPU job that falls back to the
CPU trains for days at a hundredth of the speed.
"""
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ['Placement', 'setup', 'init_groups', 'cuda_index', 'gpus_allocated', 'device_rng_state',
           'set_device_rng_state', 'wait_for_primary_exit']

_logger = logging.getLogger(__name__)

# how long ranks other than 0 wait for rank 0 to requeue the job and exit, after a preemption's checkpoint
PRIMARY_EXIT_TIMEOUT_S = 600


@dataclass
class Placement:
    """This process's place in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    local_world_size: int = 1
    # a gloo group for what the hosts agree on (the trainer's stop votes, every step) without the GPU, beside the
    # NCCL group; and a gloo collective fails as soon as a peer process is gone (NCCL waits for its timeout), which
    # is how the other ranks see rank 0 leave (`wait_for_primary_exit`). Made on CPU runs too: one code path
    control_group: Any = None

    @property
    def primary(self) -> bool:
        return self.rank == 0


def gpus_allocated() -> Optional[str]:
    """What says that this process was given GPUs (a Slurm GPU allocation, CUDA_VISIBLE_DEVICES, NVIDIA device
    files), as text for an error message; None when nothing does, or when CUDA_VISIBLE_DEVICES hides them on purpose
    (empty, -1, NoDevFiles)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None and visible.strip() in ('', '-1', 'NoDevFiles'):
        return None
    for key in ('SLURM_STEP_GPUS', 'SLURM_JOB_GPUS', 'SLURM_GPUS_ON_NODE'):
        value = os.environ.get(key, '').strip()
        if value and value != '0':
            return f'{key}={value}'
    if visible:
        return f'CUDA_VISIBLE_DEVICES={visible}'
    if Path('/dev/nvidia0').exists():
        return '/dev/nvidia0 exists'
    return None


def _cuda_problem() -> str:
    """Why CUDA is unusable, in torch's words (its first line)."""
    try:
        torch.cuda.init()
    except Exception as e:  # torch raises RuntimeError or AssertionError depending on the build
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return 'torch.cuda.is_available() is False'


def cuda_index(local_rank: int, local_world_size: int, device_count: int) -> int:
    """The GPU of a process: its local rank where it sees every GPU of the node (as many as there are processes),
    0 where a site binds one GPU to each task (CUDA_VISIBLE_DEVICES per task, `--gpu-bind`). More GPUs than processes
    is refused: one process trains on one GPU, so the others would sit idle for the whole run."""
    if device_count == local_world_size:
        return local_rank
    if device_count == 1:
        return 0
    if device_count > local_world_size:
        raise ValueError(
            f'{local_world_size} process(es) on this node see {device_count} GPUs: one process trains on one GPU, so '
            f'{device_count - local_world_size} would sit idle; start one process per GPU (torchrun --nproc-per-node '
            f'{device_count}, or tasks_per_node in the grid) or hide the others (CUDA_VISIBLE_DEVICES)')
    raise ValueError(
        f'local rank {local_rank} of {local_world_size} processes on this node sees {device_count} GPUs: expected '
        f'one GPU per process or all of them (check the job\'s --gpus-per-node and CUDA_VISIBLE_DEVICES)')


def _device(requested: str, local_rank: int, local_world_size: int) -> torch.device:
    if requested == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        if requested == 'cuda':
            raise ValueError(f"config key 'device' is 'cuda' but CUDA is unusable here: {_cuda_problem()}")
        allocated = gpus_allocated()
        if allocated:
            raise ValueError(
                f'this job was given GPUs ({allocated}) but CUDA is unusable: {_cuda_problem()}; fix the CUDA '
                f'install (torch {torch.__version__}, CUDA {torch.version.cuda}) or set device=cpu to train on the CPU')
        return torch.device('cpu')
    return torch.device('cuda', cuda_index(local_rank, local_world_size, torch.cuda.device_count()))


def check_gloo_interface(world_size: int, local_world_size: int) -> None:
    """ValueError when a job spanning nodes would have gloo listen on loopback: without GLOO_SOCKET_IFNAME gloo
    takes the address this host's name resolves to, and many sites resolve it to 127.0.1.1 (/etc/hosts), which
    ranks on other nodes cannot reach: the group then fails, or hangs until its timeout (30 minutes)."""
    if world_size <= local_world_size or os.environ.get('GLOO_SOCKET_IFNAME'):
        return
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return  # gloo will say so itself
    if address.startswith('127.'):
        raise ValueError(f'this host\'s name ({host}) resolves to {address}, a loopback address: gloo would listen '
                         'there and ranks on the other nodes could not reach it; set GLOO_SOCKET_IFNAME (and '
                         'NCCL_SOCKET_IFNAME) to the cluster network\'s interface, e.g. in the profile\'s setup')


def setup(requested_device: str) -> Placement:
    """Rank, device and process group (NCCL on CUDA, gloo on CPU) of this process, from torchrun's variables."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    local_world_size = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
    device = _device(requested_device, local_rank, local_world_size)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    check_gloo_interface(world_size, local_world_size)
    control = init_groups(device) if world_size > 1 else None
    return Placement(rank, world_size, local_rank, device, local_world_size, control)


def init_groups(device: torch.device):
    """The job's process group (NCCL on CUDA, gloo on CPU; FAT_DIST_BACKEND=gloo runs ranks that share one GPU,
    which NCCL refuses, for checks) and the gloo control group, which it returns."""
    backend = os.environ.get('FAT_DIST_BACKEND') or ('nccl' if device.type == 'cuda' else 'gloo')
    if backend not in ('nccl', 'gloo') or (backend == 'nccl' and device.type != 'cuda'):
        raise ValueError(f'FAT_DIST_BACKEND={backend!r}: expected gloo, or nccl on CUDA')
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == 'nccl' else None)
    return dist.new_group(backend='gloo')  # torch's default timeout: `wait_for_primary_exit` sets its own


def wait_for_primary_exit(place: Placement) -> None:
    """On a rank other than 0, block until rank 0's process has ended (or PRIMARY_EXIT_TIMEOUT_S has passed).

    Rank 0 requeues a preempted job (`scontrol requeue`) and then exits; Slurm ends the other tasks itself. A rank
    that exits first, with a non-zero code under srun's KillOnBadExit=1, would have rank 0 killed before it
    requeued: the job would end, never to resume. So the others wait in a collective that rank 0 never joins, and
    which fails when rank 0's connections close.
    """
    if place.primary or place.world_size == 1:
        return
    try:
        work = dist.barrier(group=place.control_group, async_op=True)
        work.wait(timeout=timedelta(seconds=PRIMARY_EXIT_TIMEOUT_S))
    except Exception as e:  # rank 0 gone: gloo reports the closed connection (its type varies with the version)
        _logger.debug(f'rank 0 has left: {type(e).__name__}: {e}')


def device_rng_state(device: torch.device) -> Optional[torch.Tensor]:
    """The random state of this process's GPU only: with per-task binding each process sees one GPU, and without it
    the other GPUs belong to other ranks."""
    return torch.cuda.get_rng_state(device) if device.type == 'cuda' else None


def set_device_rng_state(state: Any, device: torch.device) -> None:
    """Restore `device_rng_state`. Checkpoints before it held every visible GPU's state (a list): its entry for
    this GPU is taken, as it was saved."""
    if device.type != 'cuda' or state is None:
        return
    if isinstance(state, (list, tuple)):
        if device.index is None or device.index >= len(state):
            return
        state = state[device.index]
    torch.cuda.set_rng_state(state, device)

