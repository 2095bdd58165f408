"""Fidelity ladders: which cells a launch of a ladder grid covers, and `fat sweep promote` (successive halving).

A grid with a `ladder:` has every point at every rung (`fat.sweep.cells`), but a rung above the first runs only what
was promoted to it: `fat sweep launch GRID` submits the first rung and the unfinished cells of the higher rungs that
were started before (promoted, or launched with `--rung`), `--rung NAME` every point at that rung. `promote` takes the
highest rung started, refuses unless all its cells have ended and its collection (`fat sweep collect`) shows them as
they are now, chooses from that collection the points the statistics cannot yet exclude
(`fat.report.ladder_stats.select`, or the top k by mean) and submits them at the next rung, each submission recorded
with `promoted_from` (collect writes it into the CSV, so the report can count what the promotions cost). A second
promote finds the next rung started and not yet collected: it refuses, and submits nothing.
"""
import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fat.checks import InputError
from fat.rundir import ACTIVE, State

from .cells import Cell, describe
from .launch import Sweep
from .state import CellState

__all__ = ['scoped', 'rung_cells', 'point_of', 'collection_record', 'Promotion', 'plan_promotion', 'METRIC']

METRIC = 'top1'  # what promotion ranks by: collect's final top-1, as the ablation tables (best_top1 would select on
# the validation set)


def rung_cells(sweep: Sweep, rung: str) -> List[Cell]:
    names = [r.name for r in sweep.grid.ladder]
    if rung not in names:
        raise InputError([f'--rung: {rung!r} is not a rung of {sweep.grid.path}; valid: {", ".join(names)}'
                          if names else f'--rung: {sweep.grid.path} has no ladder'])
    return [c for c in sweep.cells if c.rung == rung]


def scoped(sweep: Sweep, rung: Optional[str] = None) -> Sweep:
    """The cells a launch covers: a grid without a ladder, all of them; `rung`, every point at that rung; else the
    first rung's cells and those of higher rungs that were started before (their cell.json exists)."""
    if rung is not None:
        return dataclasses.replace(sweep, cells=rung_cells(sweep, rung))
    if not sweep.grid.ladder:
        return sweep
    first = sweep.grid.ladder[0].name
    return dataclasses.replace(sweep, cells=[c for c in sweep.cells if c.rung == first
                                             or (c.dir / 'cell.json').is_file()])


def point_of(cell: Cell) -> str:
    """The cell's point: its axes without the rung and the seed (`fasa=fasa lr=0.008`)."""
    return describe({k: v for k, v in cell.axes.items() if k not in ('rung', 'seed')}) or 'all cells'


def collection_record(sweep: Sweep, rung: Optional[str]) -> Path:
    """The file listing the CSVs collected of the grid's cells (of one rung's, for a ladder)."""
    return sweep.root / (f'.collections.{rung}.json' if rung else '.collections.json')


def _latest_collection(sweep: Sweep, rung: str) -> Optional[Path]:
    try:
        paths = [Path(p) for p in json.loads(collection_record(sweep, rung).read_text())]
    except (OSError, ValueError, TypeError):
        return None
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


@dataclasses.dataclass
class Promotion:
    lower: str
    upper: str
    collection: Path  # the lower rung's CSV the decisions were made from
    decisions: list  # fat.report.ladder_stats.Decision, best first
    cells: List[Cell]  # the promoted points' cells at the upper rung
    top_k: Optional[int]
    min_effect: float


def _rung_states(sweep: Sweep, states: Sequence[CellState]) -> Dict[str, List[CellState]]:
    out: Dict[str, List[CellState]] = {r.name: [] for r in sweep.grid.ladder}
    for st in states:
        out[st.cell.rung].append(st)
    return out


def _collected_rows(sweep: Sweep, lower: str, states: Sequence[CellState]) -> Tuple[Path, Dict[str, dict]]:
    """The lower rung's latest collection and its rows by cell id; InputError unless it shows every started cell of
    the rung in the state it has now."""
    import pandas as pd
    grid, started = sweep.grid.path, [st for st in states if st.state != State.NOT_LAUNCHED]
    active = [st for st in started if st.state in ACTIVE]
    if active:
        raise InputError([f'{grid}: rung {lower!r} is not finished ({len(active)} of its cells queued or running): '
                          f'fat sweep wait {grid}, then fat sweep collect {grid}, then promote'])
    path = _latest_collection(sweep, lower)
    if path is None:
        raise InputError([f'{grid}: rung {lower!r} is not collected: fat sweep collect {grid}, then promote'])
    frame = pd.read_csv(path)
    rows = {str(r['cell']): r for r in frame.to_dict('records')}
    changed = [st.cell.id for st in started if rows.get(st.cell.id, {}).get('status') != st.state]
    if changed:
        raise InputError([f'{grid}: rung {lower!r} changed since it was collected into {path} ({len(changed)} '
                          f'cell(s), e.g. {changed[0]}): fat sweep collect {grid}, then promote'])
    return path, rows


def plan_promotion(sweep: Sweep, states: Sequence[CellState], top_k: Optional[int] = None) -> Optional[Promotion]:
    """What `fat sweep promote` submits; None when the highest rung started is the top of the ladder. InputError
    (nothing submitted) for a grid without a ladder, nothing started, or a lower rung not (freshly) collected."""
    from fat.report import ladder_stats, stats
    grid = sweep.grid
    if not grid.ladder:
        raise InputError([f'{grid.path}: no ladder: nothing to promote (a `ladder:` section declares the rungs)'])
    by_rung = _rung_states(sweep, states)
    started = [i for i, r in enumerate(grid.ladder) if any(st.state != State.NOT_LAUNCHED for st in by_rung[r.name])]
    if not started:
        raise InputError([f'{grid.path}: nothing launched yet: fat sweep launch {grid.path} (its first rung)'])
    i = max(started)
    if i == len(grid.ladder) - 1:
        return None
    lower, upper = grid.ladder[i].name, grid.ladder[i + 1].name
    path, rows = _collected_rows(sweep, lower, by_rung[lower])
    triples = []
    for st in by_rung[lower]:
        if st.state == State.NOT_LAUNCHED:  # a point not promoted to the lower rung is not a candidate
            continue
        row = rows.get(st.cell.id, {})
        value = row.get(METRIC) if row.get('status') == State.DONE else None
        triples.append((point_of(st.cell), st.cell.axes.get('seed', st.cell.id),
                        math.nan if value is None else float(value)))
    min_effect = grid.min_effect or stats.DEFAULT_MIN_EFFECT
    decisions = ladder_stats.select(ladder_stats.point_runs(triples), min_effect, top_k)
    chosen = {d.point for d in decisions if d.promote}
    cells = [st.cell for st in by_rung[upper] if point_of(st.cell) in chosen]
    return Promotion(lower, upper, path, decisions, cells, top_k, min_effect)
