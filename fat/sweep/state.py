"""The state of every cell, from disk (result.json, jobs.jsonl, logs) and one look at the scheduler.

Disk is the source of truth: a cell is DONE / DIVERGED when its result.json says so, whatever the scheduler
thinks. Otherwise the cell's last submitted job decides: PENDING / REQUEUED / RUNNING while the scheduler (or,
for the `local` executor, the process table) knows it alive; FAILED once it ended without a result (cancelled,
killed, crashed), with the last error line of its log. Ended Slurm jobs need no accounting: squeue alone tells
live from ended, and `sacct`, where it works, only adds the final state to the error line.
"""
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from submitit.core.utils import JobPaths

from fat.rundir import ACTIVE, RESULT, State, Status, read_result

from .cells import Cell, read_records
from .cluster import QueueEntry, hostname, local_job_alive, sacct, squeue

__all__ = ['STATES', 'ACTIVE', 'CellState', 'Scheduler', 'cell_states', 'summary', 'error_line', 'last_line']

# STALLED: a RUNNING cell that `fat sweep status` finds making no progress (fat.sweep.progress); only it says so
STATES = tuple(s for s in State if s is not State.CORRUPT)  # CORRUPT: collect's, for a result it cannot read
_ALIVE = {
    'PENDING': State.PENDING, 'CONFIGURING': State.PENDING, 'REQUEUED': State.REQUEUED, 'REQUEUE_HOLD': State.REQUEUED,
    'REQUEUE_FED': State.REQUEUED, 'RUNNING': State.RUNNING, 'COMPLETING': State.RUNNING, 'SUSPENDED': State.RUNNING,
    'STOPPED': State.RUNNING, 'SIGNALING': State.RUNNING, 'STAGE_OUT': State.RUNNING, 'RESIZING': State.RUNNING,
}
_SLURM_VERDICT_RE = re.compile(r'\*\*\* JOB \S+ ON \S+ .*\*\*\*')
_EXCEPTION_RE = re.compile(r'^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b')
_ERROR_RE = re.compile(r'error|exception|killed|oom', re.I)
_TAIL_BYTES = 64 * 1024
_NO_RESULT = 'the job left the queue without a result or a log line (cancelled before it started?)'


@dataclass
class CellState:
    """A cell's state; `detail` is the error line (FAILED), the wait reason (PENDING) or the top-1 (DONE)."""
    cell: Cell
    state: str
    job_id: Optional[str] = None
    detail: str = ''
    log: Optional[str] = None
    result: Optional[Dict[str, Any]] = None
    cluster: Optional[str] = None
    hosts: List[str] = field(default_factory=list)  # the nodes of the job that last started the cell
    world_size: Optional[int] = None  # its processes (ranks)
    started: Optional[float] = None  # when it last started (time.time())
    progress: Optional[Dict[str, Any]] = None  # RUNNING, STALLED, REQUEUED: fat.sweep.progress fills it in

    def as_dict(self) -> Dict[str, Any]:
        doc = {'id': self.cell.id, 'state': self.state, 'axes': self.cell.axes, 'job_id': self.job_id,
               'detail': self.detail, 'log': self.log, 'dir': str(self.cell.dir), 'hosts': self.hosts,
               'world_size': self.world_size}
        return dict(doc, progress=self.progress) if self.progress is not None else doc

    @property
    def placement(self) -> str:
        """`node1,node2 (2 ranks)`, or '' before the cell started."""
        if not self.hosts:
            return ''
        n = self.world_size or 1
        return f"{','.join(self.hosts)} ({n} rank{'' if n == 1 else 's'})"


class Scheduler:
    """One snapshot of the queue, taken before any cell is read (so a job that ends meanwhile leaves a result)."""

    def __init__(self, queue: Optional[Dict[str, QueueEntry]], slurm: bool = True):
        self.queue = queue
        self.slurm = slurm
        self.taken = time.time()
        self.accounting: Optional[bool] = None  # None: not asked; False: sacct unavailable

    @classmethod
    def snapshot(cls, use_slurm: bool = True) -> 'Scheduler':
        """Ask squeue once (where `use_slurm`), before any cell is read."""
        return cls(squeue() if use_slurm else None, use_slurm)

    def final_states(self, job_ids: Sequence[str]) -> Dict[str, str]:
        """Final states of ended jobs from accounting (one sacct call); empty without accounting."""
        states = sacct(job_ids)
        self.accounting = states is not None
        return states or {}

    @property
    def source(self) -> str:
        if not self.slurm:
            return 'disk and process table (no Slurm here)'
        if self.queue is None:
            return 'Slurm not reachable (squeue failed): Slurm cells judged from disk alone'
        if self.accounting is False:
            return 'squeue; no accounting (sacct failed): ended jobs judged from disk and logs'
        return 'squeue' + (' + sacct' if self.accounting else '')


def _tail_lines(log: Path) -> Optional[List[str]]:
    """The non-empty lines of the last _TAIL_BYTES of a log; None without a log."""
    try:
        with open(log, 'rb') as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            return [ln.strip() for ln in f.read().decode(errors='replace').splitlines() if ln.strip()]
    except OSError:
        return None


def last_line(log: Path) -> Optional[str]:
    """The last non-empty line of a log; None without one."""
    lines = _tail_lines(log)
    return lines[-1] if lines else None


def error_line(log: Path) -> Optional[str]:
    """The line of a job log that says why the job ended; None without a log.

    In order of preference: Slurm's own verdict on the job (`*** JOB 12 ... CANCELLED ...`, time limit,
    preemption), the last Python exception line, the last line that mentions an error, the last line.
    """
    lines = _tail_lines(log)
    if lines is None:
        return None
    for pattern in (_SLURM_VERDICT_RE, _EXCEPTION_RE, _ERROR_RE):
        found = [ln for ln in lines if pattern.search(ln)]
        if found:
            return found[-1]
    return lines[-1] if lines else None


def _log_path(record: Dict[str, Any]) -> Path:
    return JobPaths(record['log_dir'], record['job_id'], 0).stderr


def _job_state(record: Dict[str, Any], started: bool, sched: Scheduler) -> Optional[str]:
    """State of a live job (PENDING / REQUEUED / RUNNING), None if it has ended, '' if it cannot be told."""
    cluster = record['cluster']
    if cluster == 'local':
        if record.get('host') not in (None, hostname()):
            return ''
        return (State.RUNNING if started else State.PENDING) if local_job_alive(record['job_id']) else None
    if cluster == 'debug':
        return None
    if sched.queue is None:
        return ''
    entry = sched.queue.get(record['job_id'])
    if entry is None:
        # submitted after the snapshot: too new to be listed
        return State.PENDING if record['time'] >= sched.taken else None
    state = _ALIVE.get(entry.state)
    if state == State.PENDING and entry.restarts > 0:
        return State.REQUEUED
    return state


def _placement(st: CellState, records: Sequence[Dict[str, Any]]) -> CellState:
    """Where the cell last started: the job's hosts and world size (its `started` record; result.json's world size
    when there is one, as the trainer saw it)."""
    started = [r for r in records if r.get('event') == 'started']
    if started:
        st.hosts = list(started[-1].get('hosts') or [started[-1].get('host')])
        st.world_size = started[-1].get('world_size')
        st.started = started[-1].get('time')
        if st.job_id is None:  # a finished cell: the job that ran it last, and its log
            st.job_id = started[-1].get('job_id')
            submitted = [r for r in records if r.get('event') == 'submitted' and r.get('job_id') == st.job_id]
            if submitted and st.log is None:
                st.log = str(_log_path(submitted[-1]))
    if st.result and isinstance(st.result.get('world_size'), int):
        st.world_size = st.result['world_size']
    return st


def cell_state(cell: Cell, sched: Scheduler) -> CellState:
    """The state of one cell (see the module docstring)."""
    return _placement(_cell_state(cell, sched), read_records(cell.dir))


def _cell_state(cell: Cell, sched: Scheduler) -> CellState:
    result, corrupt = read_result(cell.dir)
    if result is not None and result['status'] in (Status.DONE, Status.DIVERGED):
        state = State.DONE if result['status'] == Status.DONE else State.DIVERGED
        top1 = result.get('final_top1')
        detail = f'top-1 {top1:.2f}' if isinstance(top1, (int, float)) else result.get('error', '')
        return CellState(cell, state, detail=str(detail), result=result)
    records = read_records(cell.dir)
    submitted = [r for r in records if r.get('event') == 'submitted']
    if not submitted:
        if result is not None or corrupt:
            return CellState(cell, State.FAILED, detail=(result or {}).get('error') or corrupt or '', result=result)
        return CellState(cell, State.NOT_LAUNCHED)
    last = submitted[-1]
    job_id = last['job_id']
    started = any(r.get('event') == 'started' and r.get('job_id') == job_id for r in records)
    state = _job_state(last, started, sched)
    log = str(_log_path(last))
    # a failed result newer than the job's last record belongs to that job: its cell is over, even where the job
    # itself lives on (a `local` job runs several cells). A Slurm job holds one cell: while it is in the queue (still
    # ending, or requeued after a node failure to run again), relaunching the cell would run it twice
    result_is_current = result is not None and (cell.dir / RESULT).stat().st_mtime >= records[-1]['time']
    if state and (not result_is_current or last['cluster'] == 'slurm'):
        entry = sched.queue.get(job_id) if last['cluster'] == 'slurm' and sched.queue else None
        reason = entry.reason if entry and state in (State.PENDING, State.REQUEUED) and entry.reason != 'None' \
            else ''
        return CellState(cell, state, job_id, detail=reason, log=log)
    if state == '':
        return CellState(cell, State.RUNNING if started else State.PENDING, job_id, log=log,
                         detail=f'not checked: {last["cluster"]} job {job_id} cannot be looked up from here')
    detail = (result or {}).get('error') or corrupt or error_line(Path(log))
    return CellState(cell, State.FAILED, job_id, detail=detail or _NO_RESULT, log=log, result=result,
                     cluster=last['cluster'])


def cell_states(cells: Sequence[Cell], sched: Scheduler) -> List[CellState]:
    states = [cell_state(cell, sched) for cell in cells]
    silent = [st for st in states if st.detail == _NO_RESULT and st.cluster == 'slurm']
    if silent:  # accounting, where it exists, says how they ended
        final = sched.final_states([st.job_id for st in silent])
        for st in silent:
            if st.job_id in final:
                st.detail = f'the job ended {final[st.job_id]} without a result'
    return states


def summary(states: Sequence[CellState]) -> str:
    """`12 cells: 8 DONE, 2 RUNNING, 2 NOT_LAUNCHED`."""
    counts = {s: 0 for s in STATES}
    for st in states:
        counts[st.state] += 1
    parts = [f'{n} {s}' for s, n in counts.items() if n]
    return f"{len(states)} cell{'' if len(states) == 1 else 's'}: {', '.join(parts) or 'none'}"
