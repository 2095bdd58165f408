"""Where the running cells are, when they and the grid will finish, and which of them have stalled.

A training cell's trainer rewrites `progress.json` in its directory at most once a second (epoch, step, seconds
per step, images/s, the last validation top-1; `fat.train.Trainer.progress`). This module reads it for RUNNING and
REQUEUED cells only, one small file each, so `fat sweep status` stays fast and torch-free at 10,000 cells.

- ETA of a cell: its remaining steps times its seconds per step, plus its remaining evaluations times the last one's
  duration, less the time since the file was written.
- Expected finish of the grid: the running cells' ETAs, then the queued cells (PENDING; REQUEUED with their own
  remaining time) handed one by one to whichever running slot frees first, each taking the grid's observed time per
  cell (the median over its DONE cells, an even sample of at most DURATION_SAMPLE, from their last start to their
  result; before any is DONE, the running cells' elapsed + ETA). As many slots as cells run now (at least one);
  NOT_LAUNCHED cells are not counted.
- STALLED: a RUNNING cell whose progress file (or, before its job wrote one, the job's start) has not changed for
  max(`stalled_after`, STALL_STEPS x its seconds per step).
"""
import heapq
import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from fat.rundir import PROGRESS, RESULT, State

from .state import CellState, last_line

__all__ = ['STALLED_AFTER_S', 'STALL_STEPS', 'annotate', 'grid_estimate', 'cell_text', 'grid_text',
           'duration']

STALLED_AFTER_S = 300.  # default of `fat sweep status --stalled-after`
STALL_STEPS = 10  # ... or this many of the cell's own steps, if longer
DURATION_SAMPLE = 200  # DONE cells whose durations make the grid's time per cell


def read_progress(cell_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads((cell_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None  # not written yet (the run is starting), or not a training cell
    return doc if isinstance(doc, dict) else None


def _evals_left(p: Dict[str, Any]) -> int:
    """Evaluations still to come: at the end of every `eval_every`-th epoch and of the last one."""
    every = max(1, int(p.get('eval_every') or 1))
    return sum(1 for e in range(p['epoch'] + 1, p['epochs'] + 1) if e % every == 0 or e == p['epochs'])


def _remaining(p: Dict[str, Any]) -> Optional[float]:
    """Seconds of work left when the file was written; None before the first measured step."""
    if p.get('step_seconds') is None:
        return None
    return (p['steps'] - p['step']) * p['step_seconds'] + _evals_left(p) * (p.get('eval_seconds') or 0.)


def _cell_progress(st: CellState, now: float, stalled_after: float) -> Dict[str, Any]:
    p = read_progress(st.cell.dir)
    out: Dict[str, Any] = {'phase': 'starting'}
    # a file older than the job's start is an earlier job's (before a requeue or relaunch): the run has yet to resume
    current = p is not None and (st.started is None or p['time'] >= st.started)
    if p is not None:
        remaining = _remaining(p)
        out = {'phase': p.get('phase') if current else 'starting', 'epoch': min(p['epoch'] + 1, p['epochs']),
               'epochs': p['epochs'], 'step': p['step'], 'steps': p['steps'], 'val_top1': p.get('val_top1'),
               'step_in_epoch': p.get('step_in_epoch'), 'steps_per_epoch': p.get('steps_per_epoch'),
               'images_per_s': p.get('images_per_s'), 'seconds_per_step': p.get('step_seconds'),
               'updated_s_ago': max(0., now - p['time']), 'eta_s': remaining}
        if remaining is not None and current and st.state != State.REQUEUED:  # else its work is all ahead
            out['eta_s'] = max(0., remaining - (now - p['time']))
    if st.state == State.RUNNING and st.started is not None:
        out['elapsed_s'] = max(0., now - st.started)
        last = p['time'] if current else st.started
        threshold = max(stalled_after, STALL_STEPS * ((p or {}).get('step_seconds') or 0.))
        if now - last > threshold:
            out['stalled_s'] = now - last
            out['eta_s'] = None
    return out


def duration(st: CellState) -> Optional[float]:
    """Seconds from a DONE cell's last start to its result.json."""
    try:
        end = (st.cell.dir / RESULT).stat().st_mtime
    except OSError:
        return None
    return end - st.started if st.started is not None and end > st.started else None


def grid_estimate(states: Sequence[CellState], now: float) -> Dict[str, Any]:
    """Counts, the grid's observed seconds per cell and its expected finish (see the module docstring)."""
    count = {s: sum(st.state == s for st in states)
             for s in (State.RUNNING, State.STALLED, State.REQUEUED, State.PENDING, State.NOT_LAUNCHED)}
    finished = len(states) - sum(count.values())
    running = [st for st in states if st.state == State.RUNNING]
    queued = [st for st in states if st.state in (State.PENDING, State.REQUEUED)]
    per_cell, source = None, None
    if queued or running:
        done = [st for st in states if st.state == State.DONE]
        done = done[::max(1, len(done) // DURATION_SAMPLE)]  # an even sample: one stat per cell is the cost
        done = [d for d in map(duration, done) if d is not None]
        whole = [st.progress['elapsed_s'] + st.progress['eta_s'] for st in running
                 if st.progress.get('eta_s') is not None and 'elapsed_s' in st.progress]
        if done:
            per_cell, source = statistics.median(done), f'median of {len(done)} DONE'
        elif whole:
            per_cell, source = statistics.median(whole), f'median of {len(whole)} running (elapsed + ETA)'
    fraction = finished + sum(min(1., st.progress['step'] / st.progress['steps']) for st in running
                              if st.progress.get('steps'))
    out: Dict[str, Any] = {'cells': len(states), 'finished': finished, **{k.lower(): v for k, v in count.items()},
                           'fraction_done': fraction / len(states) if states else 1.,
                           'seconds_per_cell': per_cell, 'seconds_per_cell_from': source, 'eta_s': None,
                           'expected_finish': None}
    slots = [st.progress.get('eta_s') for st in running]
    slots = [s if s is not None else per_cell for s in slots]
    if count[State.STALLED] or None in slots or (queued and per_cell is None):
        return out  # a stalled cell, or nothing to go by: no honest estimate
    if not (running or queued):
        return out  # nothing left to wait for
    slots = slots or [0.]
    heapq.heapify(slots)
    for st in queued:
        own = (st.progress or {}).get('eta_s') if st.state == State.REQUEUED else None
        heapq.heappush(slots, heapq.heappop(slots) + (own if own is not None else per_cell))
    eta = max(slots)
    out.update(eta_s=eta, expected_finish=time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(now + eta)))
    return out


def annotate(states: List[CellState], stalled_after: float = STALLED_AFTER_S,
             now: Optional[float] = None) -> Dict[str, Any]:
    """Fill in the progress of RUNNING and REQUEUED cells, mark stalled ones STALLED (with their log's last line),
    and return the grid's estimate."""
    now = time.time() if now is None else now
    for st in states:
        if st.state not in (State.RUNNING, State.REQUEUED):
            continue
        st.progress = _cell_progress(st, now, stalled_after)
        if 'stalled_s' in st.progress:
            st.state = State.STALLED
            line = last_line(Path(st.log)) if st.log else None
            st.detail = f"no progress for {tqdm.format_interval(st.progress['stalled_s'])}" + (
                f' (log: {st.log}; last line: {line})' if st.log else '')
    return grid_estimate(states, now)


def _interval(seconds: Optional[float]) -> str:
    return tqdm.format_interval(seconds) if seconds is not None else '?'


def cell_text(p: Dict[str, Any]) -> str:
    """`epoch 2/5 step 156/390 top-1 75.31 690 img/s elapsed 01:02 ETA 01:30`: the step within the epoch, as
    `fat train` logs it (the progress bar and the ETA count the run's steps)."""
    if 'steps' not in p:
        return 'starting' + (f", elapsed {_interval(p['elapsed_s'])}" if 'elapsed_s' in p else '')
    step = (f"step {p['step_in_epoch']}/{p['steps_per_epoch']}" if p.get('steps_per_epoch')
            else f"step {p['step']}/{p['steps']}")  # a progress file written before it carried the epoch's steps
    parts = [f"epoch {p['epoch']}/{p['epochs']}", step]
    if p.get('phase') == 'eval':
        parts.append('evaluating')
    if p.get('val_top1') is not None:
        parts.append(f"top-1 {p['val_top1']:.2f}")
    if p.get('images_per_s') is not None:
        parts.append(f"{p['images_per_s']:.0f} img/s")
    if 'elapsed_s' in p:
        parts.append(f"elapsed {_interval(p['elapsed_s'])}")
    if 'stalled_s' not in p:
        parts.append(f"ETA {_interval(p.get('eta_s'))}")
    return ' '.join(parts)


def grid_text(g: Dict[str, Any]) -> str:
    """`grid: 12/20 finished, 2 running, 6 pending; expected finish in 13:00 (at 15:42); 04:00 per cell (...)`."""
    parts = [f"{g['finished']}/{g['cells']} finished"]
    parts += [f'{g[k]} {k.replace("_", " ")}' for k in ('running', 'stalled', 'requeued', 'pending') if g[k]]
    if g['not_launched']:
        parts.append(f"{g['not_launched']} not launched (not counted)")
    text = 'grid: ' + ', '.join(parts)
    if g['eta_s'] is not None:
        text += f"; expected finish in {_interval(g['eta_s'])} (at {g['expected_finish'][11:16]})"
    elif g['running'] + g['stalled'] + g['requeued'] + g['pending']:
        text += '; expected finish unknown' + (' (a cell is STALLED)' if g['stalled'] else ' (nothing to go by yet)')
    if g['seconds_per_cell'] is not None:
        text += f"; {_interval(g['seconds_per_cell'])} per cell ({g['seconds_per_cell_from']})"
    return text
