"""What this harness measured, read from files: collected grids (`fat sweep collect` ->
`results/<grid>-<environment>.csv`), benchmark CSVs (`fat speed`, `fat bench --results-dir results` ->
`results/bench-*.csv`), and params/MACs (`fat flops --pins` regression file and `fat flops --json` records saved as
`results/flops-*.jsonl`). Nothing is measured here. Readers tolerate missing files and columns (the tables say what
is absent); unreadable files are listed in `Measurements.problems`."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from fat.rundir import LOG, State

__all__ = ['Measurements', 'load_measurements', 'seed_stats', 'read_curves', 'grid_workdir', 'BENCH_KEYS']

# a benchmark environment: the rows of one file that share these make one column of the speed table
BENCH_KEYS = ('mode', 'setting', 'device_type', 'device', 'precision', 'tf32', 'layout', 'compiled', 'reparam',
              'native_kernels', 'malloc', 'batch_size', 'threads', 'rounds', 'torch')

# report name -> `fat bench` CSV column (fat/bench.py FIELDS)
_BENCH_COLUMNS = {
    'model': 'model', 'mode': 'mode', 'setting': 'setting', 'img_size': 'img_size', 'throughput': 'samples_per_sec',
    'throughput_mean': 'samples_per_sec_mean', 'spread_pct': 'spread_pct', 'rounds': 'rounds', 'tf32': 'tf32',
    'iters': 'num_iters', 'round_throughputs': 'round_samples_per_sec', 'contended': 'contended',
    'round_cpu_shares': 'round_cpu_share', 'round_calibrations': 'round_calibration', 'retimed': 'retimed',
    'batch_size': 'batch_size', 'model_kwargs': 'model_kwargs', 'device_type': 'device', 'device': 'device_name',
    'precision': 'precision', 'channels_last': 'channels_last', 'compiled': 'compile', 'reparam': 'reparam',
    'native_kernels': 'native_kernels', 'malloc': 'malloc', 'threads': 'num_threads', 'torch': 'torch',
}


@dataclass
class Measurements:
    """Everything read from a results directory (and the complexity pins), with the files it came from."""
    grids: Dict[str, pd.DataFrame] = field(default_factory=dict)  # collected CSV's stem -> its rows
    bench: pd.DataFrame = field(default_factory=lambda: _normalise_bench(pd.DataFrame(), ''))
    complexity: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=['model', 'fasa', 'img_size', 'params', 'convention', 'macs']))
    inputs: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    workdir: Optional[Path] = None  # where the collected grids' cell directories are (None: `grid_workdir`)

    def grid(self, name: str) -> Optional[pd.DataFrame]:
        """The rows of every collection of grid `name` (one per environment it ran in), or None."""
        frames = [f for f in self.grids.values() if 'grid' in f.columns and (f['grid'] == name).any()]
        return pd.concat(frames, ignore_index=True) if frames else None

    def macs(self, model: str, convention: str, img_size: int, fasa: str = 'fasa') -> Optional[float]:
        """Measured MACs of a model (as timm builds it by default, 1000 classes) or None."""
        row = self._complexity_row(model, convention, img_size, fasa)
        return None if row is None else float(row['macs'])

    def params(self, model: str, img_size: int, fasa: str = 'fasa') -> Optional[int]:
        row = self._complexity_row(model, None, img_size, fasa)
        return None if row is None else int(row['params'])

    def _complexity_row(self, model: str, convention: Optional[str], img_size: int, fasa: str) -> Optional[pd.Series]:
        c = self.complexity
        rows = c[(c['model'] == model) & (c['img_size'] == img_size) & (c['fasa'].isna() | (c['fasa'] == fasa))]
        if convention is not None:
            rows = rows[rows['convention'] == convention]
        return None if rows.empty else rows.iloc[0]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _read_csv(path: Path, m: Measurements, cwd: Path) -> Optional[pd.DataFrame]:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        m.problems.append(f'{_relative(path, cwd)}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})')
        return None
    m.inputs.append(_relative(path, cwd))
    return frame


def _plain_fasa(model_kwargs: Any) -> Optional[str]:
    """The FASA variant of a row built with no other non-default argument (None: not the model as published)."""
    try:
        kwargs = json.loads(model_kwargs) if isinstance(model_kwargs, str) and model_kwargs else {}
    except ValueError:
        return None
    fasa = kwargs.pop('fasa', 'fasa')
    return fasa if not kwargs and isinstance(fasa, str) else None


def _normalise_bench(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """`fat bench` rows under the report's names (a missing column stays empty), plus `fasa` (None for rows built
    with other model arguments) and `layout`."""
    out = pd.DataFrame({key: frame[col] if col in frame.columns else None for key, col in _BENCH_COLUMNS.items()},
                       index=frame.index)
    out['layout'] = out['channels_last'].map(lambda v: 'nhwc' if str(v).lower() in ('true', '1') else 'nchw')
    out['fasa'] = out['model_kwargs'].map(_plain_fasa)
    out.insert(0, 'file', name)
    return out.drop(columns=['channels_last', 'model_kwargs'])


def _read_pins(path: Path, m: Measurements, cwd: Path) -> List[Dict[str, Any]]:
    """Records of the regression file `fat flops --pins` writes: {models: {"model/preset": {params, conv: macs}}}."""
    try:
        data = json.loads(path.read_text())
        records = []
        for key, entry in data['models'].items():
            model, fasa = key.split('/', 1)
            for convention, macs in entry.items():
                if convention != 'params':
                    records.append(dict(model=model, fasa=fasa, img_size=int(data['img_size']),
                                        params=entry['params'], convention=convention, macs=macs))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        m.problems.append(f'{_relative(path, cwd)}: unreadable complexity pins ({type(e).__name__}: {e})')
        return []
    m.inputs.append(_relative(path, cwd))
    return records


def _read_flops_jsonl(path: Path, m: Measurements, cwd: Path) -> List[Dict[str, Any]]:
    """`fat flops MODEL... --json` output: one record per model and convention."""
    records = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            records.append(dict(model=r['model'], fasa=r.get('fasa'), img_size=int(r['img_size']),
                                params=r['params'], convention=r['convention'], macs=r['macs']))
        except (ValueError, KeyError, TypeError) as e:
            m.problems.append(f'{_relative(path, cwd)}:{i + 1}: unreadable record ({type(e).__name__}: {e})')
    m.inputs.append(_relative(path, cwd))
    return records


def load_measurements(results: Path, pins: Optional[Path] = None, workdir: Optional[Path] = None) -> Measurements:
    """Read every measured input under `results` (and the complexity `pins` file, if it exists).

    Collected grids are the CSV files directly under `results` that have a `status` column; benchmark rows come
    from `bench-*.csv` files and from the DONE cells of collected `bench` grids. `workdir`: where their cell
    directories are (None: each grid's own, `grid_workdir`).
    """
    m = Measurements(workdir=workdir)
    cwd = Path.cwd()
    results = Path(results)
    bench_frames = []
    for path in sorted(results.glob('*.csv')) if results.is_dir() else []:
        frame = _read_csv(path, m, cwd)
        if frame is None:
            continue
        if path.name.startswith('bench-'):
            bench_frames.append(_normalise_bench(frame, path.name))
        elif 'status' in frame.columns:
            m.grids[path.stem] = frame
            if 'samples_per_sec' in frame.columns:  # a grid of `bench` cells: its finished cells are bench rows
                bench_frames.append(_normalise_bench(frame[frame['status'] == State.DONE], path.name))
        else:
            m.inputs.pop()
            m.problems.append(f'{_relative(path, cwd)}: neither a collected grid (no `status` column) nor a '
                              'benchmark file (bench-*.csv): ignored')
    if bench_frames:
        m.bench = pd.concat(bench_frames, ignore_index=True)
    records = _read_pins(pins, m, cwd) if pins is not None and pins.is_file() else []
    for path in sorted(results.glob('flops-*.jsonl')) if results.is_dir() else []:
        records += _read_flops_jsonl(path, m, cwd)
    if records:
        m.complexity = pd.DataFrame(records, columns=m.complexity.columns)
    return m


def seed_stats(frame: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, sample std (ddof 1; NaN for one run) and n of `metric` over the DONE rows of each group."""
    if metric not in frame.columns:
        return pd.DataFrame(columns=['mean', 'std', 'n'])
    done = frame[(frame['status'] == State.DONE) & frame[metric].notna()]
    return done.groupby(list(by), sort=False)[metric].agg(['mean', 'std', 'count']).rename(columns={'count': 'n'})


CURVE_KEYS = ('val_top1', 'train_loss')  # fat.train's per-epoch log keys that the learning curves plot


def grid_workdir(grid_file: Path) -> Path:
    """Where `fat sweep` put a grid's cell directories: the grid file's `workdir`, else runs/ (both relative to the
    current directory, as for `fat sweep`)."""
    from fat.sweep.spec import DEFAULT_WORKDIR, load_grid
    try:
        grid, _ = load_grid(Path(grid_file))
    except (OSError, ValueError):  # no readable grid file here: the default
        return Path(DEFAULT_WORKDIR)
    return Path(grid.workdir or DEFAULT_WORKDIR)


def read_curves(cells: pd.DataFrame, workdir: Path) -> Tuple[pd.DataFrame, List[str]]:
    """Per-epoch `val_top1` and `train_loss` of each cell from `<workdir>/<dir>/log.jsonl` (`fat sweep collect` writes
    `dir` relative to the grid's work directory; an absolute one, from older collections, is taken as it is; one JSON
    line per epoch, after a resume the last line of an epoch wins), with the cell's point (`_point`) and seed; and
    notes on what was missing.
    """
    columns = ['_point', 'seed', 'epoch', *CURVE_KEYS]
    if 'dir' not in cells.columns:
        return pd.DataFrame(columns=columns), ['Learning curves: no `dir` column in the collected CSV.']
    records, missing = [], []
    for _, cell in cells.iterrows():
        path = Path(workdir) / str(cell['dir']) / LOG
        try:
            lines = path.read_text().splitlines()
        except OSError:
            missing.append(str(cell.get('cell', path.parent.name)))
            continue
        epochs: Dict[int, Dict[str, Any]] = {}
        for line in lines:
            try:
                record = json.loads(line)
                epochs[int(record['epoch'])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run
        for epoch, record in sorted(epochs.items()):
            records.append({'_point': cell['_point'], 'seed': cell.get('seed'), 'epoch': epoch,
                            **{k: record.get(k) for k in CURVE_KEYS}})
    notes = []
    if missing:
        listed = ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '')
        notes.append(f'Learning curves: no log.jsonl for {len(missing)} of {len(cells)} DONE cell(s) (their '
                     f'directories are not in {workdir}: {listed}; `fat report --workdir` names another).')
    return pd.DataFrame(records, columns=columns), notes
