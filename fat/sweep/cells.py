"""Cells: the points of a grid, each a fully resolved config with a content-addressed directory.

A cell's id is a short hash of its canonical resolved config (DomainBed's pattern): keys that do not change
results (the task's runtime keys, e.g. `output_dir`) are left out, and so is a key added later while it holds the
value that reproduces the older runs (the task's `id_neutral`); FASA specs are reduced to their axes, so
`fasa: no_interaction` and `fasa: {interaction: none}` are the same cell. A grid with a `ladder` has every point
at every rung: the rung's name is one more axis of the cell (`rung`, first) and enters its id, so the cells of each
rung are ordinary cells of the grid; a grid without a ladder hashes exactly as before. The directory
`<workdir>/<grid>/<id>/` holds `cell.json` (what the cell is), `jobs.jsonl` (submissions and starts, one JSON
line each), the run's own files, and `result.json`, written last and atomically: the cell's "done" marker.
"""
import functools
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from fat.checks import Problems
from fat.io import write_json_atomic
from fat.variants import resolve_fasa_stages

from .spec import Grid
from .tasks import Task

__all__ = ['Cell', 'cell_id', 'expand', 'describe', 'run_name', 'append_record', 'read_records']

ID_LENGTH = 12  # hex digits (48 bits): a collision stays improbable (< 1e-3) up to ~700,000 cells
TB_DIR = 'tb'  # <workdir>/<grid>/tb/<run name>/: the cells' TensorBoard event files (`tensorboard --logdir`)
_MAX_NAME = 200  # characters of a run name (file names stop at 255 bytes)


@dataclass
class Cell:
    """One run of a grid: its id, the values of the grid's varied keys, its config and its directory."""
    id: str
    axes: Dict[str, Any]
    config: Dict[str, Any]
    dir: Path
    origin: str = 'axes'  # the grid key that produced it (`axes` or `include[i]`), for error messages
    rung: Optional[str] = None  # the ladder rung it runs at (None: the grid has no ladder)

    def write(self, grid: Grid) -> None:
        """Create the cell directory and write `cell.json`, which the job reads. Only runtime keys (`data_dir`,
        `workers`, ...) can differ from an earlier launch's: the new values win."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / 'cell.json', {'id': self.id, 'grid': grid.name, 'task': grid.task,
                                                   'axes': self.axes, 'config': self.config})


@functools.cache
def _fasa_axes(spec_json: str) -> Tuple[Dict[str, str], ...]:
    # cached: a grid has few distinct FASA specs and many cells (a tuple: it is shared, JSON writes it as a list)
    return tuple(stage.as_dict() for stage in resolve_fasa_stages(json.loads(spec_json), 4))


def _canonical(task: Task, cfg: Mapping[str, Any]) -> Dict[str, Any]:
    runtime, neutral = frozenset(task.runtime_keys), task.id_neutral
    out = {k: v for k, v in cfg.items() if k not in runtime and not (k in neutral and neutral[k] == v)}
    if 'fasa' in out:
        out['fasa'] = _fasa_axes(json.dumps(out['fasa'], sort_keys=True))
    return out


def cell_id(task: Task, cfg: Mapping[str, Any], rung: Optional[str] = None) -> str:
    """Short hash of the task, the canonical config and the ladder rung (only where there is one: the ids of grids
    without a ladder stay what they were)."""
    doc: Dict[str, Any] = {'task': task.name, 'config': _canonical(task, cfg)}
    if rung is not None:
        doc['rung'] = rung
    text = json.dumps(doc, sort_keys=True, separators=(',', ':'))
    return hashlib.sha1(text.encode()).hexdigest()[:ID_LENGTH]


def _text(value: Any) -> str:
    """A value as JSON writes it compactly (strings bare); numbers without json.dumps, which 10,000 cells feel."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)  # what json.dumps writes for these
    return json.dumps(value, separators=(',', ':'))


def describe(point: Mapping[str, Any]) -> str:
    """`fasa=global_only lr=0.001 seed=0`: a point as one line."""
    return ' '.join(f'{k}={_text(v)}' for k, v in point.items())


def run_name(point: Mapping[str, Any], cid: str) -> str:
    """`fasa=global_only,seed=0`: a cell's readable name (its varied keys) as one directory name; the cell id
    where there are none or the name would be too long."""
    name = describe(point).replace(' ', ',').replace('/', '_')
    if not name:
        return cid
    return name if len(name) <= _MAX_NAME else f'{name[:_MAX_NAME - ID_LENGTH - 1]}-{cid}'


def _seeds(grid: Grid) -> List[Dict[str, Any]]:
    return [{'seed': s} for s in grid.seeds] if grid.seeds is not None else [{}]


def _product(grid: Grid) -> Iterator[Dict[str, Any]]:
    """The product of the axes, the zipped groups and the seeds."""
    factors: List[List[Dict[str, Any]]] = [[{k: v} for v in values] for k, values in grid.axes.items()]
    factors += [[dict(zip(group, values, strict=True)) for values in zip(*group.values(), strict=True)]
                for group in grid.zip]
    for combo in itertools.product(*factors, _seeds(grid)):
        yield {k: v for part in combo for k, v in part.items()}


def _points(grid: Grid) -> Iterator[Tuple[Dict[str, Any], str]]:
    """(point, origin) for every cell: the product minus `exclude`, plus `include` (times the seeds unless the
    entry sets its own seed)."""
    for point in _product(grid):
        if not any(_matches(point, ex) for ex in grid.exclude):
            yield point, 'axes'
    seeds = _seeds(grid)
    for i, extra in enumerate(grid.include):
        for seed in ([{}] if 'seed' in extra else seeds):
            yield {**extra, **seed}, f'include[{i}]'


def _matches(point: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    return all(k in point and point[k] == v for k, v in pattern.items())


def _check_values(grid: Grid, task: Task, p: Problems) -> bool:
    """Resolve the base and every declared value on its own, so that each bad value gets its own line."""
    for where, base in (('preset', {}), ('base', grid.base)):  # a bad preset first, then the base on top of it
        try:
            task.resolve(base, grid.preset)
        except ValueError as e:
            p.add(where, str(e))
            return False
    ok = True
    for i, rung in enumerate(grid.ladder):
        try:
            task.resolve({**grid.config_base, **rung.overrides}, grid.preset)
        except ValueError as e:
            p.add(f'ladder[{i}] ({rung.name})', str(e))
            ok = False
    for key, value in grid.overrides.items():
        try:
            task.resolve({**grid.base, key: value}, grid.preset)
        except ValueError as e:
            p.add(f'{key} (command line)', str(e))
            ok = False
    if not ok:
        return False
    base = grid.config_base
    declared = [(f'axes.{k}', k, values) for k, values in grid.axes.items()]
    declared += [(f'zip[{i}].{k}', k, values) for i, group in enumerate(grid.zip) for k, values in group.items()]
    declared += [('seeds', 'seed', grid.seeds or [])]
    for where, key, values in declared:
        for j, value in enumerate(values):
            try:
                task.resolve({**base, key: value}, grid.preset)
            except ValueError as e:
                p.add(f'{where}[{j}]', str(e))
                ok = False
    for i, extra in enumerate(grid.include):
        try:
            task.resolve({**base, **extra}, grid.preset)
        except ValueError as e:
            p.add(f'include[{i}]', str(e))
            ok = False
    varied = grid.varied_keys
    for i, pattern in enumerate(grid.exclude):
        for key in pattern:
            if key not in varied:
                p.add(f'exclude[{i}].{key}', f"not a varied key of this grid; valid: {', '.join(varied) or 'none'}")
                ok = False
    return ok


def expand(grid: Grid, task: Task, workdir: Path, p: Problems) -> List[Cell]:
    """The grid's cells, in declaration order. Problems (bad values, duplicate cells, excludes that match
    nothing) are added to `p`; the caller raises them all at once."""
    if not _check_values(grid, task, p):
        return []
    root = Path(workdir).absolute() / grid.name
    cells: List[Cell] = []
    by_id: Dict[str, Cell] = {}
    rungs = grid.ladder or [None]
    for rung in rungs:
        resolve = task.resolver({**grid.config_base, **(rung.overrides if rung else {})}, grid.preset)
        for point, origin in _points(grid):
            if rung is not None:
                point = {'rung': rung.name, **point}
            _add_cell(task, resolve, point, origin, rung and rung.name, root, by_id, cells, p)
    for i, pattern in enumerate(grid.exclude):
        if not any(_matches(point, pattern) for point in _product(grid)):
            p.add(f'exclude[{i}]', f'matches no point of the grid: {describe(pattern)}')
    if not cells and not p.lines:
        p.add('axes', 'the grid has no cells')
    return cells


def _add_cell(task: Task, resolve: Any, point: Dict[str, Any], origin: str, rung: Optional[str], root: Path,
              by_id: Dict[str, Cell], cells: List[Cell], p: Problems) -> None:
    """Resolve one point into a cell and append it, or add the problem (an invalid combination, a duplicate)."""
    try:
        cfg = resolve({k: v for k, v in point.items() if k != 'rung'})
    except ValueError as e:  # a combination of valid values can still be invalid (e.g. odd batch + mixup)
        p.add(origin, f'{describe(point)}: {e}')
        return
    cid = cell_id(task, cfg, rung)
    if cid in by_id:
        other = by_id[cid]
        keys = [k for k in point if other.axes.get(k) != point[k]] or list(point)
        where = origin if origin != 'axes' else ', '.join(f'axes.{k}' for k in keys)
        p.add(where, f'duplicate cell {cid}: {describe(point)} resolves to the same config as '
                     f'{describe(other.axes)}')
        return
    cell_dir = root / cid
    cfg['output_dir'] = str(cell_dir)
    if 'tensorboard_dir' in cfg:  # one run per cell, named by its varied keys, under one --logdir
        cfg['tensorboard_dir'] = str(root / TB_DIR / run_name(point, cid))
    cell = Cell(cid, point, cfg, cell_dir, origin, rung)
    by_id[cid] = cell
    cells.append(cell)


def append_record(cell_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the cell's `jobs.jsonl` (one short write: lines from concurrent writers stay whole)."""
    line = json.dumps({'time': round(time.time(), 3), **record}, sort_keys=True) + '\n'
    with open(cell_dir / 'jobs.jsonl', 'a') as f:
        f.write(line)


def read_records(cell_dir: Path) -> List[Dict[str, Any]]:
    """The cell's job records, oldest first; unreadable lines (a torn write) are skipped."""
    try:
        text = (cell_dir / 'jobs.jsonl').read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
