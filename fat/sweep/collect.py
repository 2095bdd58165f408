"""collect: one row per cell, finished or not, into `results/<grid>-<environment>.csv`.

Every cell gets a row: its axes and seed, its state (`status`: DONE, DIVERGED, FAILED, CORRUPT, RUNNING, ...),
parameters and MACs (convention `paper`: convolutions and linear layers, as the FAT paper counts; `fvcore`:
fvcore's count with attention matmuls), final and best top-1/top-5, epochs, training time and throughput, the
job's world size and hosts (`node1,node2` for a two-node cell), the environment the run (last) started in, and the cell
directory relative to the work directory (`demo/a7d8f3caa149`: no path of this machine in a file meant to be
shared).
A grid that declares a `baseline` gets a last column `baseline`, its JSON, the same in every row (`fat report`); one
that declares `min_effect` a column `min_effect`, likewise.
Cells without a usable result keep their row, with `error` saying why; a corrupt file never stops the collection.
Params and MACs are measured once per distinct model and cached in `<workdir>/.complexity-cache.json`. The CSVs
written of a grid's cells are listed in `<workdir>/<grid>/.collections.json`: a new one replaces the earlier ones.
A training grid's learning curves (per epoch: `val_top1`, `train_loss` from each cell's `log.jsonl`) go beside it
into `curves/<same name>.csv`, one row per cell and epoch, so that `fat report` needs only the results folder
(a clone has no run directories).
A grid with a `ladder` is collected one rung at a time (`fat sweep collect` does every rung): each rung's cells
into `<grid>.<rung>-<environment>.csv`, an ordinary collection with the rung as a one-valued axis, plus the columns
`ladder` (the rungs in order with their overrides, JSON) and `promoted_from` (the rung whose promotion submitted the
cell first; empty for cells launched directly), which the report's ladder tables read.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import pandas as pd

from fat.environment import common_env_name, run_env_name
from fat.io import atomic_path, write_json_atomic
from fat.rundir import CURVE_KEYS, State, curves_path, read_environment, read_log, read_result

from .cells import read_records
from .ladder import collection_record
from .launch import Sweep
from .state import CellState
from .tasks import model_kwargs
from .workdir import grid_files

__all__ = ['collect', 'Collection', 'COLUMNS', 'ComplexityCache']

COLUMNS = ('status', 'params', 'macs_paper', 'macs_fvcore', 'top1', 'top5', 'best_top1', 'best_top5', 'epochs',
           'train_time_s', 'train_images_per_s', 'eval_images_per_s', 'world_size', 'hosts', 'environment', 'error',
           'dir')
_RESULT_COLUMNS = {'top1': 'final_top1', 'top5': 'final_top5', 'best_top1': 'best_top1', 'best_top5': 'best_top5',
                   'epochs': 'epochs', 'train_time_s': 'train_time_s', 'train_images_per_s': 'train_images_per_s',
                   'eval_images_per_s': 'eval_images_per_s'}
MAC_CONVENTIONS = ('paper', 'fvcore')  # the CSV's macs_* columns


class ComplexityCache:
    """Params and MACs per distinct (model, img_size, model kwargs), measured with fat.complexity, kept on disk."""

    def __init__(self, path: Path):
        self.path = path
        self.errors: Dict[str, str] = {}  # key -> why it could not be measured (not cached: tried again next time)
        try:
            self.entries: Dict[str, Dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def get(self, cfg: Mapping[str, Any], result: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """The model as trained: classes and channels from result.json, or, before there is one, the config's."""
        known = {k: result[k] for k in ('num_classes', 'in_chans') if result and result.get(k) is not None}
        kwargs = model_kwargs({**cfg, **known})
        img_size = cfg.get('img_size', 224)
        key = json.dumps([cfg['model'], img_size, kwargs], sort_keys=True)
        if key not in self.entries and key not in self.errors:
            try:
                from fat import complexity
                rows = complexity.measure(cfg['model'], img_size=img_size, conventions=MAC_CONVENTIONS, **kwargs)
            except Exception as e:  # a model that cannot be counted must not stop the collection
                self.errors[key] = f'params/MACs of {key} not measured: {type(e).__name__}: {e}'
                return {}
            self.entries[key] = {'params': rows[0]['params'], **{f"macs_{r['convention']}": r['macs'] for r in rows}}
            self.dirty = True
        return self.entries.get(key, {})

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.entries)


def _environment(cell_dir: Path, result: Optional[Mapping[str, Any]]) -> Tuple[str, Optional[str]]:
    """Where the run last started: `torch 2.14.1, cpu (AMD EPYC 7B13), 1 process, git 1a2b3c4+, host vm` and its
    name for file names (`pt2.14-cpu-amd_epyc_7b13`), or ('', None) before it started."""
    starts = read_environment(cell_dir)
    env = starts[-1] if starts else (result or {}).get('environment')
    if not isinstance(env, dict):
        return '', None
    hw, versions, git = env.get('hardware', {}), env.get('versions', {}), env.get('git') or {}
    device = hw.get('device', '')
    chip = ', '.join(hw.get('gpus') or []) or hw.get('cpu', '')
    sha = (git.get('sha') or '')[:7] + ('+' if git.get('dirty') else '')
    parts = [f"torch {versions.get('torch', '?')}", f'{device} ({chip})' if chip else device,
             f"{env.get('world_size', 1)} process{'es' if env.get('world_size', 1) != 1 else ''}",
             f'git {sha}' if sha else '', f"host {hw.get('hostname', '?')}"]
    return ', '.join(p for p in parts if p), run_env_name(env)


def _value(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def _in_workdir(text: Optional[str], workdir: Path) -> Optional[str]:
    """Paths under the work directory (a cell's files, its job's log), written relative to it."""
    return text.replace(f'{workdir}{os.sep}', '') if text else text


def _row(sweep: Sweep, st: CellState, cache: ComplexityCache) -> Tuple[Dict[str, Any], Optional[str]]:
    cell = st.cell
    row: Dict[str, Any] = {'grid': sweep.grid.name, 'cell': cell.id}
    row.update({k: _value(v) for k, v in cell.axes.items()})
    if 'seed' in cell.config:
        row['seed'] = cell.config['seed']
    status, result, error = st.state, st.result, None
    if status in (State.FAILED, State.NOT_LAUNCHED, State.PENDING, State.RUNNING, State.REQUEUED):
        _, corrupt = read_result(cell.dir)
        if corrupt:
            status, error = State.CORRUPT, corrupt
        elif status == State.FAILED:
            error = st.detail + (f' (log: {st.log})' if st.log else '')
    if status == State.DIVERGED:
        error = st.detail
    row['status'] = status
    if sweep.task.name == 'train':  # flops and bench cells measure these themselves
        row.update(cache.get(cell.config, result))
    if result:
        for column, key in _RESULT_COLUMNS.items():
            if key in result:
                row[column] = result[key]
        for key, value in result.items():  # flops/bench results: their own measurements
            if key.startswith('macs_') or (sweep.task.name == 'bench' and key not in ('status', 'environment')):
                row[key] = _value(value)
        if result.get('params') is not None:
            row['params'] = result['params']
    row['world_size'], row['hosts'] = st.world_size, ','.join(st.hosts) or None  # where it (last) ran
    row['environment'], row['env_name'] = _environment(cell.dir, result)
    row['error'] = _in_workdir(error, sweep.workdir)
    row['dir'] = str(cell.dir.relative_to(sweep.workdir))
    return row, None if status == State.DONE else f'{cell.id} {status}: {error or st.detail or ""}'.rstrip(': ')


def _grid_file(path: Path) -> Optional[str]:
    """The grid file as the report's commands should name it, relative to the current directory
    (`mygrids/mine.yaml`); None for one outside it (no path of this machine goes into a shared CSV)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return None


def _write_curves(states: Sequence[CellState], out: Path) -> None:
    """Each cell's per-epoch `CURVE_KEYS` from its log, in long format (cell, epoch, ...), atomically."""
    rows = [{'cell': st.cell.id, 'epoch': epoch, **{k: record.get(k) for k in CURVE_KEYS}}
            for st in states for epoch, record in (read_log(st.cell.dir) or {}).items()]
    path = curves_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=['cell', 'epoch', *CURVE_KEYS]).to_csv(tmp, index=False)


class Collection(NamedTuple):
    frame: pd.DataFrame
    incomplete: List[str]  # one line per cell that is not DONE
    path: Path  # the CSV written
    replaced: List[Path]  # earlier collections of the same cells, removed


def _promoted_from(cell_dir: Path) -> Optional[str]:
    """The rung whose promotion first submitted the cell (its first `submitted` record says), else None."""
    submitted = [r for r in read_records(cell_dir) if r.get('event') == 'submitted']
    return submitted[0].get('promoted_from') if submitted else None


def _replaced(sweep: Sweep, out: Path, rung: Optional[str] = None) -> List[Path]:
    """Earlier collections of this grid's cells in `out`'s folder (another environment's name, or none), which the
    new file `out` supersedes; `out` is recorded as the latest. Collections of other work directories (another
    machine's, copied here) are kept."""
    record, out = collection_record(sweep, rung), out.resolve()
    try:
        written = {Path(p) for p in json.loads(record.read_text())}
    except (OSError, ValueError, TypeError):
        written = set()
    older = _older_collections(sweep, out) if rung is None else set()  # rungs were always recorded
    found = {p for p in written | older if p.parent == out.parent and p != out}
    write_json_atomic(record, sorted(str(p) for p in (written - found) | {out}))
    return sorted(p for p in found if p.is_file())


def _older_collections(sweep: Sweep, out: Path) -> Set[Path]:
    """Collections of this work directory written before they were recorded, when `dir` held absolute paths."""
    root, found = sweep.root.resolve(), set()
    for path in out.parent.glob(f'{sweep.grid.name}*.csv'):
        if path.stem != sweep.grid.name and not path.stem.startswith(f'{sweep.grid.name}-'):
            continue
        try:
            dirs = pd.read_csv(path, usecols=['dir'])['dir'].astype(str)
        except (OSError, ValueError):
            continue  # not a collection of ours: leave it alone
        if len(dirs) and all(Path(d).is_absolute() and Path(d).resolve().is_relative_to(root) for d in dirs):
            found.add(path.resolve())
    return found


def collect(sweep: Sweep, states: Sequence[CellState], out: Path, rung: Optional[str] = None) -> Collection:
    """Write the grid's table as CSV: to `out` if it names a .csv file, else into the folder `out` as
    `<grid>-<environment>.csv` (`fat.environment`: where the cells ran, `mixed` or `unrun`). With `rung`, `states`
    are that rung's cells and the name is `<grid>.<rung>-<environment>.csv`."""
    cache = ComplexityCache(sweep.workdir / '.complexity-cache.json')
    rows, incomplete, envs = [], [], []
    for st in states:
        row, note = _row(sweep, st, cache)
        envs.append(row.pop('env_name'))
        rows.append(row)
        if note:
            incomplete.append(note)
    with grid_files(sweep.grid.shared_workdir):  # in the work directory: a later launch finds it ours alone
        cache.save()
    incomplete += cache.errors.values()
    frame = pd.DataFrame(rows)
    axes = [k for k in dict.fromkeys(['rung', *sweep.grid.varied_keys, 'seed']) if k in frame.columns]
    tail = ['world_size', 'hosts', 'environment', 'error', 'dir']
    known = ['grid', 'cell', *axes, *COLUMNS]
    extra = [c for c in frame.columns if c not in known]  # flops/bench measurements
    frame = frame.reindex(columns=['grid', 'cell', *axes, *[c for c in COLUMNS if c not in tail], *extra, *tail])
    if sweep.task.name != 'train':  # training metrics mean nothing for flops/bench cells
        frame = frame.drop(columns=[c for c in COLUMNS if c not in ('status', *tail) and frame[c].isna().all()])
    if sweep.grid.baseline:  # the report's Δ reference travels with the data: the CSV alone makes the table
        frame['baseline'] = json.dumps({k: _value(v) for k, v in sweep.grid.baseline.items()})
    if sweep.grid.min_effect is not None:  # likewise the smallest effect of interest
        frame['min_effect'] = sweep.grid.min_effect
    if rung is not None:  # the ladder, and which cells promotions launched: the report's ladder tables
        frame['ladder'] = json.dumps([{'name': r.name, **r.overrides} for r in sweep.grid.ladder])
        frame['promoted_from'] = [_promoted_from(st.cell.dir) for st in states]
    grid_file = _grid_file(sweep.grid.path)
    if grid_file is not None:  # the report's commands name the grid where it is kept
        frame['grid_file'] = grid_file
    if out.suffix != '.csv':
        name = f'{sweep.grid.name}.{rung}' if rung is not None else sweep.grid.name
        out = out / f'{name}-{common_env_name(envs)}.csv'
    if sweep.task.name == 'train':
        _write_curves(states, out)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    with grid_files(sweep.grid.shared_workdir):
        replaced = _replaced(sweep, out, rung)
    for path in replaced:
        path.unlink()
        curves_path(path).unlink(missing_ok=True)
    return Collection(frame, incomplete, out, replaced)
