"""The environment a run or a measurement ran in: its record (`record`, what `environment.json` holds) and its name
for result file names in timm's benchmark-file convention (`pt2.14-cpu-amd_epyc`, `pt2.14-cu128-h100_80gb_hbm3`).
Torch-free at import, so that `fat sweep collect` stays light."""
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

__all__ = ['cpu_name', 'slug', 'env_name', 'run_env_name', 'common_env_name', 'record']


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(name: str) -> str:
    """`AMD EPYC 7B13 64-Core Processor` -> `amd_epyc_7b13_64_core`; vendor noise words dropped."""
    name = re.sub(r'\(r\)|\(tm\)|@.*$|\bcpu\b|\bprocessor\b|\bnvidia\b|\bgeforce\b|\brtx\b', ' ', name.lower())
    return '_'.join(re.findall(r'[a-z0-9]+', name)) or 'unknown'


def env_name(torch_version: str, device: str, device_name: str, cuda: Optional[str] = None) -> str:
    """`pt<major.minor>-cpu-<cpu>` or `pt<major.minor>-cu<cuda>-<gpu>`."""
    pt = '.'.join(torch_version.split('+')[0].split('.')[:2])
    kind = f"cu{(cuda or '').replace('.', '')}" if device.startswith('cuda') else 'cpu'
    return f'pt{pt}-{kind}-{slug(device_name)}'


def run_env_name(record: Mapping[str, Any]) -> Optional[str]:
    """The name of a training run's environment record (`environment.json` of `fat train`); None if unusable."""
    try:
        hw, versions = record['hardware'], record['versions']
        device = str(hw['device'])
        chip = (hw.get('gpus') or [''])[0] if device.startswith('cuda') else hw['cpu']
        return env_name(versions['torch'], device, chip, versions.get('cuda'))
    except (KeyError, TypeError, AttributeError, IndexError):
        return None


def common_env_name(names: Iterable[Optional[str]]) -> str:
    """One name for many runs: theirs when they agree, `mixed` when not, `unrun` when none has started."""
    known = {n for n in names if n}
    return known.pop() if len(known) == 1 else ('mixed' if known else 'unrun')


def _git_state() -> Dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(
            # no optional locks: a status must not rewrite the index under a concurrent git command
            ['git', '-C', str(repo), '--no-optional-locks', 'status', '--porcelain', '--untracked-files=no'],
            capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return dict(sha=None, dirty=None)
    return dict(sha=sha, dirty=dirty)


def record(device: Any, world_size: int) -> Dict[str, Any]:
    """Where and with what a run (re)started: code version, packages, hardware, command line (`environment.json`;
    `device`: a torch.device or its name). Imports torch: only a process that runs something calls it."""
    import numpy as np
    import timm
    import torch
    import torchvision

    import fat
    return dict(
        time=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        git=_git_state(),
        versions=dict(
            python=platform.python_version(), fat=fat.__version__, torch=torch.__version__,
            torchvision=torchvision.__version__, timm=timm.__version__, numpy=np.__version__,
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None),
        hardware=dict(
            hostname=socket.gethostname(), platform=platform.platform(), cpu=cpu_name(), cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(), device=str(device),
            gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]),
        world_size=world_size,
        command=[sys.executable] + sys.argv,
        slurm_job_id=os.environ.get('SLURM_JOB_ID'),
    )
