"""Slurm profiles, job resources, submitit executors, and what the scheduler says about recorded jobs.

A profile (`slurm/<name>.yaml`) describes a site: default resources plus what only a site may set (`setup`
lines, which the sbatch script runs as shell, and raw `additional_parameters`). A grid's `slurm:` section names
a profile and overrides resources; grid values reach sbatch only as `#SBATCH` flags, which submitit quotes.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from fat import yaml12
from fat.checks import Problems, close_hint

__all__ = [
    'RESOURCES', 'Resources', 'resolve_resources', 'default_cluster', 'make_executor', 'sbatch_parameters',
    'render_sbatch', 'max_array_size', 'local_gpu_ids', 'local_gpu_lanes', 'QueueEntry', 'squeue', 'sacct',
    'local_job_alive', 'hostname',
]

# resource -> allowed types; settable in a grid's `slurm:` section, on the command line and in profiles
RESOURCES: Dict[str, tuple] = {
    'partition': (str,), 'account': (str,), 'qos': (str,), 'constraint': (str,), 'gres': (str,),
    'exclude': (str,), 'comment': (str,),
    'nodes': (int,), 'gpus_per_node': (int,), 'tasks_per_node': (int,), 'cpus_per_task': (int,),
    'mem_gb': (int, float), 'timeout_min': (int,), 'array_parallelism': (int,), 'signal_delay_s': (int,),
    'max_num_timeout': (int,),
}
PROFILE_ONLY = ('description', 'setup', 'additional_parameters')
DEFAULTS: Dict[str, Any] = {'nodes': 1, 'gpus_per_node': 0, 'cpus_per_task': 1, 'timeout_min': 60, 'max_num_timeout': 3}
CLUSTERS = ('slurm', 'local', 'debug')
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


def parse_gres(text: str) -> Dict[str, int]:
    """`gpu:a100:8(S:0-1),nvme:1` -> {'gpu': 8, 'gpu:a100': 8, 'nvme': 1}: counts by name, and by name:type."""
    counts: Dict[str, int] = {}
    if text in ('(null)', 'N/A', 'NONE', ''):
        return counts
    for item in re.sub(r'\([^)]*\)', '', text).split(','):
        parts = item.strip().split(':')
        if not parts[0]:
            continue
        count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        names = parts[:-1] if len(parts) > 1 and parts[-1].isdigit() else parts
        for key in {names[0], ':'.join(names)}:
            counts[key] = counts.get(key, 0) + count
    return counts



@dataclass
class Resources:
    """Merged resources of a grid: profile, then the grid's `slurm:` section, then the command line."""
    values: Dict[str, Any]
    setup: List[str]
    additional_parameters: Dict[str, Any]
    profile: Optional[str] = None

    @property
    def gpus_per_node(self) -> int:
        """The GPUs a node of the job gets, however the grid asks for them: `gpus_per_node`, or a `gres` of GPUs
        (`gpu:8`, `gpu:a100:8`; sites often ask that way), or `gpus_per_task` (an sbatch option) x tasks."""
        gres = parse_gres(str(self.values.get('gres') or '')).get('gpu', 0)
        per_task = int(self.additional_parameters.get('gpus_per_task') or 0)
        explicit = self.values.get('tasks_per_node') or 1
        return self.values['gpus_per_node'] or gres or per_task * explicit

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU (DDP), else one task."""
        return self.values.get('tasks_per_node') or max(1, self.gpus_per_node)

    def idle_gpus(self) -> Optional[str]:
        """Why this layout would leave GPUs idle or shared (one process trains on one GPU), or None."""
        gpus, tasks = self.gpus_per_node, self.tasks_per_node
        per_task = int(self.additional_parameters.get('gpus_per_task') or 0)
        if per_task > 1:
            return (f'gpus_per_task {per_task}: a training process uses one GPU, so {per_task - 1} of each task\'s '
                    'would sit idle; ask for gpus_per_task: 1 (or gpus_per_node) and one task per GPU')
        if gpus and tasks != gpus:
            return (f'{tasks} task(s) per node for {gpus} GPUs per node: one process trains on one GPU, so '
                    + (f'{gpus - tasks} GPU(s) would sit idle' if tasks < gpus else 'processes would share GPUs')
                    + f' for the whole run; set tasks_per_node: {gpus}, or leave it out')
        return None

    @property
    def local_parallelism(self) -> int:
        """Cells at once on the `local` executor: `array_parallelism`, else as many as the cores allow."""
        return self.values.get('array_parallelism') or max(1, (os.cpu_count() or 1) // self.values['cpus_per_task'])


def _check_resource(p: Problems, label: str, key: str, value: Any) -> bool:
    """Whether `value` is valid for resource `key`; if not, a problem under `label`."""
    if key not in RESOURCES:
        p.add(label, f"unknown Slurm resource{close_hint(key, list(RESOURCES))}; valid: {', '.join(RESOURCES)}")
        return False
    types = RESOURCES[key]
    if types == (str,) and isinstance(value, int) and not isinstance(value, bool):
        return True  # a numeric name (account 12345): used as text
    if not isinstance(value, types) or isinstance(value, bool):
        names = ' or '.join(t.__name__ for t in types)
        p.add(label, f'expects {names}, got {type(value).__name__} {value!r}')
        return False
    minimum = 1 if key in ('nodes', 'array_parallelism') else 0
    if isinstance(value, (int, float)) and value < minimum:
        p.add(label, f'must be >= {minimum}, got {value}')
        return False
    return True


def _profile_dirs(grid_path: Path) -> List[Path]:
    # the nearest slurm/ above the grid file (ablations/ and slurm/ are siblings in the repository), then ./slurm
    return list(dict.fromkeys([d / 'slurm' for d in grid_path.absolute().parents] + [Path.cwd() / 'slurm']))


def _load_profile(name: str, grid_path: Path, p: Problems) -> Optional[Dict[str, Any]]:
    dirs = _profile_dirs(grid_path)
    candidates = [Path(name)] if name.endswith(('.yaml', '.yml')) else [d / f'{name}.yaml' for d in dirs]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob('*.yaml')})
        p.add('slurm.profile', f'unknown profile {name!r}{close_hint(name, known)}; valid: '
                               f"{', '.join(known) or 'none'} (slurm/<name>.yaml, or a path to a .yaml file)")
        return None
    doc = yaml12.load(path.read_text(), str(path))
    if not isinstance(doc, dict):
        p.add('slurm.profile', f'{path}: expected a mapping of resources, got {type(doc).__name__}')
        return None
    return {'path': path, **doc}


def resolve_resources(section: Mapping[str, Any], grid_path: Path, p: Problems,
                      from_command_line: Iterable[str] = ()) -> Resources:
    """Validate a grid's `slurm:` section (with the command line's resources, named in `from_command_line`,
    applied) and merge it onto its profile."""
    values = dict(DEFAULTS)
    setup: List[str] = []
    extra: Dict[str, Any] = {}
    name = section.get('profile')
    if name is not None and not isinstance(name, str):
        p.add('slurm.profile', f'expected a profile name, got {name!r}')
        name = None
    if name is not None:
        profile = _load_profile(name, grid_path, p)
        if profile is not None:
            sub = Problems(str(profile.pop('path')))
            for key, value in profile.items():
                if key == 'setup':
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        sub.add('setup', f'expected a list of shell lines, got {value!r}')
                    else:
                        setup = value
                elif key == 'additional_parameters':
                    if not isinstance(value, dict):
                        sub.add(key, f'expected a mapping of sbatch option -> value, got {value!r}')
                    else:
                        extra = value
                elif key != 'description' and _check_resource(sub, key, key, value):
                    values[key] = value
            p.lines += sub.lines
    cli = set(from_command_line)
    for key, value in section.items():
        label = f'slurm.{key}' + (' (command line)' if key in cli else '')
        if key in PROFILE_ONLY:
            p.add(label, 'may only be set in a profile (slurm/<name>.yaml), not in a grid')
        elif key != 'profile' and _check_resource(p, label, key, value):
            values[key] = value
    resources = Resources(values, setup, extra, name)
    if resources.idle_gpus():
        p.add('slurm', resources.idle_gpus())
    return resources


def default_cluster() -> str:
    """`slurm` where Slurm's commands are on PATH, else `local` (submitit's own choice)."""
    return submitit.AutoExecutor.which()


def _mem(mem_gb: float) -> str:
    return f'{int(mem_gb)}GB' if mem_gb == int(mem_gb) else f'{int(mem_gb * 1024)}MB'


def sbatch_parameters(res: Resources, job_name: str) -> Dict[str, Any]:
    """SlurmExecutor parameters (sbatch option names) for these resources."""
    v = res.values
    params: Dict[str, Any] = {
        'job_name': job_name, 'time': v['timeout_min'], 'nodes': v['nodes'], 'ntasks_per_node': res.tasks_per_node,
        'cpus_per_task': v['cpus_per_task'],
    }
    if v['gpus_per_node']:
        params['gpus_per_node'] = v['gpus_per_node']
    if 'mem_gb' in v:
        params['mem'] = _mem(v['mem_gb'])
    for key in ('partition', 'account', 'qos', 'constraint', 'gres', 'exclude', 'comment'):
        if key in v:
            params[key] = str(v[key])
    for key in ('signal_delay_s', 'array_parallelism'):
        if key in v:
            params[key] = v[key]
    if res.setup:
        params['setup'] = list(res.setup)
    if res.additional_parameters:
        params['additional_parameters'] = dict(res.additional_parameters)
    return params


def local_gpu_ids() -> List[int]:
    """The GPUs of this machine that the `local` executor may hand out: CUDA_VISIBLE_DEVICES where it is set, else
    the ones `nvidia-smi` lists (no torch: a launch must not need it)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None:
        ids = [v.strip() for v in visible.split(',') if v.strip()]
        if not all(v.isdigit() for v in ids):
            raise ValueError(f'CUDA_VISIBLE_DEVICES={visible}: the local executor needs GPU indices, not names')
        return [int(v) for v in ids]
    out = _run(['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'])
    return [int(v) for v in (out or '').split() if v.isdigit()]


def local_gpu_lanes(res: Resources, lanes: int) -> List[Optional[List[int]]]:
    """The GPUs of each of `lanes` parallel local jobs: disjoint sets of `gpus_per_node` (fewer lanes when the
    machine has fewer GPUs), or [None] * lanes for CPU jobs. submitit alone would give every job GPUs 0..n-1."""
    per_job = res.values['gpus_per_node']
    if not per_job:
        return [None] * lanes
    ids = local_gpu_ids()
    if len(ids) < per_job:
        raise ValueError(f'gpus_per_node is {per_job} but this machine has {len(ids)} GPUs for the local executor '
                         f"({', '.join(map(str, ids)) or 'none'}): lower it, or launch on Slurm")
    return [ids[i * per_job:(i + 1) * per_job] for i in range(min(lanes, len(ids) // per_job))]


def make_executor(cluster: str, folder: Path, res: Resources, job_name: str,
                  gpus: Optional[List[int]] = None) -> submitit.Executor:
    """The submitit executor for `cluster` with these resources; logs go to `folder` (a `%j` pattern); `gpus`: the
    GPUs of a `local` job (`local_gpu_lanes`)."""
    if cluster == 'slurm':
        executor = submitit.SlurmExecutor(folder, max_num_timeout=res.values['max_num_timeout'])
        executor.update_parameters(**sbatch_parameters(res, job_name))
    elif cluster == 'local':
        executor = submitit.LocalExecutor(folder, max_num_timeout=res.values['max_num_timeout'])
        executor.update_parameters(timeout_min=res.values['timeout_min'], tasks_per_node=res.tasks_per_node,
                                   gpus_per_node=res.values['gpus_per_node'], visible_gpus=tuple(gpus or ()))
    else:
        executor = submitit.DebugExecutor(folder)
    return executor


def render_sbatch(res: Resources, job_name: str, folder: Path, array_size: int,
                  python: Optional[str] = None) -> str:
    """The sbatch script SlurmExecutor submits for an array of `array_size` cells (the same function it uses)."""
    python = python or shlex.quote(sys.executable)
    command = ' '.join([python, '-u -m submitit.core._submit', shlex.quote(str(folder))])
    params = sbatch_parameters(res, job_name)
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size if array_size > 1 else None,
                               **params)


def _run(cmd: List[str], timeout: float = 60) -> Optional[str]:
    """stdout of a Slurm command, or None when it is missing or fails (no daemon, no accounting)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def max_array_size() -> Optional[int]:
    """The cluster's MaxArraySize (`scontrol show config`); None without a reachable Slurm."""
    out = _run(['scontrol', 'show', 'config'])
    match = re.search(r'^MaxArraySize\s*=\s*(\d+)', out or '', re.M)
    return int(match.group(1)) if match else None


@dataclass
class QueueEntry:
    """What squeue says about one job (array task): its state, how often it was requeued, and why it waits."""
    state: str
    restarts: int
    reason: str


def squeue() -> Optional[Dict[str, QueueEntry]]:
    """The user's jobs known to slurmctld (pending, running, and recently ended), one per array task."""
    out = _run(['squeue', '--me', '--noheader', '--array', '--states=all',
                '--Format=JobArrayID:64,State:32,RestartCnt:12,Reason:200'])
    if out is None:
        return None
    jobs = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3:
            jobs[parts[0]] = QueueEntry(parts[1], int(parts[2]) if parts[2].isdigit() else 0,
                                        parts[3].strip() if len(parts) > 3 else '')
    return jobs


def sacct(job_ids: Iterable[str]) -> Optional[Dict[str, str]]:
    """Final states from accounting ({job id: 'CANCELLED by 0', ...}); None without accounting."""
    arrays = sorted({j.split('_')[0] for j in job_ids})
    if not arrays:
        return {}
    out = _run(['sacct', '--noheader', '--parsable2', '--allocations', '--format=JobID,State,ExitCode',
                '--jobs', ','.join(arrays)])
    if out is None:
        return None
    states = {}
    for line in out.splitlines():
        job_id, state, code = (line.split('|') + ['', ''])[:3]
        states[job_id] = f'{state} (exit code {code})' if code and code != '0:0' else state
    return states


def local_job_alive(job_id: str) -> bool:
    """Whether a `local` executor job (its id is the pid of submitit's controller process) is still running."""
    try:
        return b'submitit' in Path(f'/proc/{int(job_id)}/cmdline').read_bytes()
    except (OSError, ValueError):
        return False


def hostname() -> str:
    return os.uname().nodename
