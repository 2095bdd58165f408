"""prepare (validate and expand a grid) and launch (submit what is left; dry, what `fat sweep plan` shows).

On Slurm, the grid's resources are first checked against the partition's limits and nodes (`fat.sweep.limits`):
what the cluster would refuse is reported (dry) or raised (InputError), before anything is written or submitted.
Launch submits only cells that are NOT_LAUNCHED or FAILED, under a lock per grid (a second launch waits,
then finds the first one's jobs and submits nothing), as job arrays of at most the cluster's MaxArraySize,
records each job id in its cell's `jobs.jsonl` as soon as its array is submitted, and returns. It writes nothing that
others can write, and refuses a work directory that they already can (`fat.sweep.workdir`). A cell that failed
because none of its checkpoints loads is submitted again only with `restart_unreadable`, which sets them aside.
"""
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from submitit.helpers import RsyncSnapshot

from fat.checks import InputError, Problems
from fat.rundir import RESULT, UNREADABLE_CHECKPOINTS, State, read_result, set_aside_unreadable

from .cells import Cell, append_record, expand
from .cluster import (
    CLUSTERS,
    DEFAULT_MAX_ARRAY_SIZE,
    Resources,
    default_cluster,
    hostname,
    local_gpu_lanes,
    make_executor,
    max_array_size,
    render_sbatch,
    resolve_resources,
)
from .job import CellJob
from .limits import ClusterLimits, check_resources
from .spec import DEFAULT_WORKDIR, Grid, load_grid, parse_overrides
from .state import CellState, Scheduler, cell_states
from .tasks import TASKS, Task
from .workdir import grid_files, refusal

__all__ = ['Sweep', 'prepare', 'launch', 'launch_lock', 'LaunchReport', 'SUBMIT_STATES', 'submits', 'cluster_refusals']

SUBMIT_STATES = (State.NOT_LAUNCHED, State.FAILED)
LOCK_TIMEOUT_S = 600.


@dataclass
class Sweep:
    """A grid validated and expanded: its cells and resources, and where its files go."""
    grid: Grid
    task: Task
    cells: List[Cell]
    resources: Resources
    workdir: Path

    @property
    def root(self) -> Path:
        return self.workdir / self.grid.name

    @property
    def log_folder(self) -> Path:
        return self.root / '.submitit' / '%j'

    @property
    def job_name(self) -> str:
        return f'fat-{self.grid.name}'

    def states(self, use_slurm: Optional[bool] = None) -> List[CellState]:
        """Every cell's state (one squeue call where Slurm is present)."""
        if use_slurm is None:
            use_slurm = default_cluster() == 'slurm'
        return cell_states(self.cells, Scheduler.snapshot(use_slurm))


def prepare(path: Path, overrides: Sequence[str] = (), workdir: Optional[Path] = None) -> Sweep:
    """Load, validate and expand a grid. Every problem (of the file, its profile, its values and cells, and
    the overrides) is collected and raised together as one InputError: nothing has been written or submitted."""
    command_line = Problems('command line')
    grid, p = load_grid(path, parse_overrides(overrides, command_line))
    p.lines[:0] = command_line.lines
    task = TASKS.get(grid.task)
    resources = resolve_resources(grid.slurm, grid.path, p, grid.slurm_overrides)
    root = Path(workdir or grid.workdir or DEFAULT_WORKDIR).absolute()
    cells = expand(grid, task, root, p) if task is not None else []
    p.raise_if_any()
    return Sweep(grid, task, cells, resources, root)


def _unreadable(st: CellState) -> bool:
    """Whether the cell failed because none of its checkpoints loads."""
    return st.state == State.FAILED and bool((st.result or {}).get(UNREADABLE_CHECKPOINTS))


def submits(st: CellState, restart_unreadable: bool = False) -> bool:
    """Whether a launch submits the cell: NOT_LAUNCHED or FAILED, but one whose checkpoints do not load only with
    `restart_unreadable` (submitted as it is, it would fail again at once)."""
    return st.state in SUBMIT_STATES and (restart_unreadable or not _unreadable(st))


def _arrays(cells: Sequence[Cell], size: int) -> List[List[Cell]]:
    return [list(cells[i:i + size]) for i in range(0, len(cells), size)]


@dataclass
class LaunchReport:
    """What a launch did (or, dry, would do)."""
    cluster: str
    submitted: List[Cell] = field(default_factory=list)
    arrays: List[Dict[str, Any]] = field(default_factory=list)  # {'size', 'job_id' (None when dry), 'sbatch'}
    skipped: Dict[str, int] = field(default_factory=dict)  # state -> count
    max_array_size: Optional[int] = None
    dry_run: bool = False
    states: List[CellState] = field(default_factory=list)  # every cell's state before the launch
    source: str = ''  # where the states came from
    refused: List[str] = field(default_factory=list)  # what the cluster would refuse, one line each (dry run)

    def text(self) -> str:
        verb = 'would submit' if self.dry_run else 'submitted'
        jobs = ', '.join(str(a['job_id']) for a in self.arrays if a.get('job_id'))
        unit = ('array' if self.cluster == 'slurm' else 'job') + ('' if len(self.arrays) == 1 else 's')
        line = f'{verb} {len(self.submitted)} cells as {len(self.arrays)} {unit} to {self.cluster}'
        if self.cluster == 'slurm':
            line += f' (MaxArraySize {self.max_array_size})'
        if jobs:
            line += f': {jobs}'
        gpus = [','.join(map(str, a['gpus'])) for a in self.arrays if a.get('gpus')]
        if gpus:
            line += f" (GPUs {' | '.join(gpus)})"
        skipped = ', '.join(f'{n} {s}' for s, n in self.skipped.items())
        return line + (f'; skipped {sum(self.skipped.values())} cells ({skipped})' if skipped else '')


@contextlib.contextmanager
def launch_lock(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock per grid (flock on `<workdir>/<grid>/.launch.lock`), held for the whole launch."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / '.launch.lock', 'a+') as f:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    print(f'waiting for another launch of {root.name} to finish...', file=sys.stderr)
                    waiting = True
                if time.monotonic() > deadline:
                    raise ValueError(f'another launch of {root.name} holds {f.name} (waited {timeout:.0f} s)') from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _snapshot(sweep: Sweep) -> contextlib.AbstractContextManager:
    """submitit's RsyncSnapshot of the code (tracked and untracked, not ignored, files): queued jobs import it."""
    import fat
    repo = Path(fat.__file__).resolve().parents[1]
    try:
        untracked = subprocess.run(['git', 'ls-files', '--others', '--exclude-standard'], cwd=repo,
                                   capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise ValueError(f'--snapshot needs the code in a git repository ({repo}): {e}') from None
    if not RsyncSnapshot.available():
        raise ValueError('--snapshot needs rsync (apt-get install rsync)')
    target = sweep.root / '.snapshots' / time.strftime('%Y%m%d-%H%M%S')
    return RsyncSnapshot(target, root_dir=repo, include=untracked)


def _set_aside(cell: Cell) -> None:
    """A corrupt result.json would stop the rerun from starting: keep it, under another name."""
    path = cell.dir / RESULT
    _, corrupt = read_result(cell.dir)
    if corrupt and path.exists():
        os.replace(path, cell.dir / f'result.corrupt-{time.strftime("%Y%m%d-%H%M%S")}.json')


def launch(sweep: Sweep, cluster: Optional[str] = None, dry_run: bool = False, snapshot: bool = False,
           array_size_limit: Optional[int] = None, restart_unreadable: bool = False,
           record: Optional[Mapping[str, Any]] = None) -> LaunchReport:
    """Submit every cell that is neither finished nor queued; see the module docstring.

    Args:
        cluster: slurm | local | debug (default: slurm where Slurm is installed, else local).
        dry_run: plan the arrays (and render their sbatch scripts) without writing or submitting anything.
        snapshot: run the jobs from a snapshot of the code (later edits do not change queued jobs).
        array_size_limit: cap the array size below the cluster's MaxArraySize.
        restart_unreadable: cells that failed because none of their checkpoints loads: set those aside and start
            the cells again from step 0 (without it they are skipped).
        record: more keys for each cell's `submitted` record (`promoted_from`: fat sweep promote).
    """
    cluster = cluster or default_cluster()
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}; valid: {', '.join(CLUSTERS)}")
    if cluster == 'slurm' and default_cluster() != 'slurm' and not dry_run:
        raise ValueError("--cluster slurm: Slurm's commands (srun, sbatch) are not on PATH here")
    report = LaunchReport(cluster, dry_run=dry_run)
    shared = sweep.grid.shared_workdir
    unsafe = None if shared else refusal(str(sweep.grid.path), sweep.workdir, sweep.root)
    report.refused = ([unsafe] if unsafe else []) + (cluster_refusals(sweep) if cluster == 'slurm' else [])
    if report.refused and not dry_run:
        raise InputError(report.refused)
    files = contextlib.nullcontext() if dry_run else grid_files(shared)  # the lock file's folder included
    lock = contextlib.nullcontext() if dry_run else launch_lock(sweep.root)
    with files, lock:
        sched = Scheduler.snapshot(use_slurm=cluster == 'slurm' or default_cluster() == 'slurm')
        if cluster == 'slurm' and sched.queue is None and not dry_run:
            raise ValueError('squeue failed, so queued cells cannot be told from ended ones: nothing submitted')
        todo = []
        report.states = cell_states(sweep.cells, sched)
        report.source = sched.source
        for st in report.states:
            if submits(st, restart_unreadable):
                todo.append(st.cell)
            else:
                state = f'{st.state} with unreadable checkpoints: --restart-unreadable' if _unreadable(st) else st.state
                report.skipped[state] = report.skipped.get(state, 0) + 1
        report.submitted = todo
        if cluster == 'slurm':
            limit = max_array_size() or DEFAULT_MAX_ARRAY_SIZE
            report.max_array_size = min(limit, array_size_limit or limit)
            groups = _arrays(todo, report.max_array_size)
            gpu_lanes: List[Optional[List[int]]] = [None] * len(groups)
        else:  # no queue: the local executor starts every job at once, so give each of `parallelism` jobs a share
            lanes = 1 if cluster == 'debug' else max(1, min(len(todo), sweep.resources.local_parallelism))
            gpu_lanes = local_gpu_lanes(sweep.resources, lanes) if cluster == 'local' and todo else [None] * lanes
            lanes = len(gpu_lanes)
            groups = [todo[i::lanes] for i in range(lanes)] if todo else []
        if dry_run:
            for group, gpus in zip(groups, gpu_lanes, strict=False):
                sbatch = (render_sbatch(sweep.resources, sweep.job_name, sweep.log_folder, len(group))
                          if cluster == 'slurm' else None)
                report.arrays.append({'size': len(group), 'job_id': None, 'sbatch': sbatch, 'gpus': gpus})
            return report
        if not todo:
            return report
        for cell in todo:
            cell.write(sweep.grid)
            _set_aside(cell)
            if restart_unreadable:
                set_aside_unreadable(cell.dir)
        with _snapshot(sweep) if snapshot else contextlib.nullcontext():
            for group, gpus in zip(groups, gpu_lanes, strict=False):
                executor = make_executor(cluster, sweep.log_folder, sweep.resources, sweep.job_name, gpus)
                report.arrays.append(dict(_submit(executor, cluster, sweep, group, record or {}), gpus=gpus))
        if cluster == 'debug':  # the debug executor runs a job when its result is asked for: here, in-process
            for entry in report.arrays:
                entry['job'].results()
    return report


def cluster_refusals(sweep: Sweep) -> List[str]:
    """What the reachable Slurm cluster would refuse about the grid's resources, one line each (none without one)."""
    limits = ClusterLimits.query()
    if limits is None:
        return []
    return [f'{sweep.grid.path}: slurm.{line}' for line in check_resources(sweep.resources, limits)]


@contextlib.contextmanager
def _detached_streams() -> Iterator[None]:
    """stdout and stderr on /dev/null while the local executor starts its job controller, which inherits them: a
    caller that captures the launch's output (`fat sweep launch ... | cat`, a subprocess) would otherwise wait until
    every cell has finished. The jobs' own output goes to their logs in the grid's .submitit folder."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _submit(executor: Any, cluster: str, sweep: Sweep, group: List[Cell], extra: Mapping[str, Any]
            ) -> Dict[str, Any]:
    """Submit one array (Slurm: one cell per task; local/debug: one job running its cells in turn)."""
    if cluster == 'slurm':
        jobs = executor.submit_array([CellJob([str(cell.dir)]) for cell in group])
        pairs = list(zip(jobs, [[cell] for cell in group], strict=True))
    else:
        with _detached_streams() if cluster == 'local' else contextlib.nullcontext():
            jobs = [executor.submit(CellJob([str(cell.dir) for cell in group]))]
        pairs = [(jobs[0], group)]
    record: Mapping[str, Any] = {**extra, 'event': 'submitted', 'cluster': cluster, 'host': hostname(),
                                 'log_dir': str(sweep.log_folder)}
    for job, cells in pairs:
        for cell in cells:
            append_record(cell.dir, {**record, 'job_id': str(job.job_id)})
    return {'size': len(group), 'job_id': str(jobs[0].job_id).split('_')[0], 'job': jobs[0]}

