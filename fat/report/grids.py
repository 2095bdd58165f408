"""Ablation tables of any collected training grid, with no declaration needed.

Rows follow the grid's varied axes (the collected CSV's columns between `cell` and `status`, seed aside): one row
per point, with its mean, n and 95 % confidence interval, and per comparison against a baseline the Δ, its
interval, the test, the p-value before and after Holm's correction, a verdict in words and the seeds that would
resolve it. The baseline of each axis is, first found: declared for the grid in `analysis/tables.yaml`, declared in
the grid file (`baseline:`, which collect writes into the CSV's `baseline` column), declared for the axis name in
`analysis/tables.yaml`, else the axis's first value; a point that differs from it on several axes is compared along
each of them, the other axes held at the point's own values. Statistics come from `fat.report.stats`; what the data
cannot support (missing columns, one seed, NaN metrics, several environments, a baseline that never ran) becomes a
note and a count, never a verdict.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from fat.rundir import State

from . import stats
from .analysis import Analysis
from .measured import Measurements, grid_workdir, read_curves
from .tables import DASH, Table, _frames, _not_found

__all__ = ['ablation', 'is_training_grid', 'grid_axes']

_TRAINING_COLUMNS = ('top1', 'top5', 'best_top1', 'best_top5', 'epochs', 'train_time_s')
_METRIC_LABELS = {'top1': 'Top-1 (%)', 'top5': 'Top-5 (%)', 'best_top1': 'best top-1 (%)',
                  'best_top5': 'best top-5 (%)'}


def is_training_grid(frame: pd.DataFrame) -> bool:
    """A collection of `train` cells (flops and bench grids hold their own measurements, not a metric to compare)."""
    return 'samples_per_sec' not in frame.columns and any(c in frame.columns for c in _TRAINING_COLUMNS)


def grid_axes(frame: pd.DataFrame) -> List[str]:
    """The varied axes: collect writes `grid, cell, <axes>, seed, status, ...`."""
    columns = list(frame.columns)
    start = columns.index('cell') + 1 if 'cell' in columns else 0
    stop = columns.index('status') if 'status' in columns else len(columns)
    return [c for c in columns[start:stop] if c not in ('grid', 'cell', 'seed')]


def _text(value: Any) -> str:
    """An axis value as the table shows it and as baselines are matched: 0.008, 5, fasa ({"a": 1} stays JSON)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f'{value:g}'
    return str(value)


@dataclass
class _Point:
    key: Tuple[str, ...]  # axis values as text, in axis order
    rows: pd.DataFrame  # every cell of the point, any state
    runs: Dict[Hashable, float] = field(default_factory=dict)  # seed (or a run id) -> metric, DONE cells only
    summary: Optional[stats.PointStats] = None


def _fmt(value: Any, spec: str) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return DASH
    return '<0.001' if value < 0.001 else f'{value:.3f}'


def _interval(mean: float, low: float, high: float, sign: str = '') -> str:
    if math.isnan(mean):
        return DASH
    if math.isnan(low):
        return format(mean, f'{sign}.2f')
    return f'{mean:{sign}.2f} [{low:{sign}.2f}, {high:{sign}.2f}]'


def _round(value: Any, digits: int = 4) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def _sig(value: Any, digits: int = 6) -> Any:
    """`digits` significant digits (p-values span many orders of magnitude)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(f'{value:.{digits}g}')


def _cells_text(group: pd.DataFrame) -> str:
    counts = group['status'].value_counts() if 'status' in group else pd.Series(dtype=int)
    return ', '.join(f'{n} {s}' for s, n in sorted(counts.items(), key=lambda kv: (kv[0] != State.DONE, kv[0])))


def _seed_list(seeds: Sequence[int], n: int) -> List[int]:
    """The grid's seeds extended with the next integers up to `n` seeds (the finished cells keep their seeds)."""
    out = sorted(seeds)
    nxt = (max(out) + 1) if out else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def _runs(point: pd.DataFrame, metric: str, has_seed: bool, problems: List[str], where: str) -> Dict[Hashable, float]:
    """seed -> metric of the DONE cells with a value. Runs without a seed column, or with a seed seen twice, get keys
    of their own, so that they are never paired."""
    runs: Dict[Hashable, float] = {}
    for index, row in point.iterrows():
        seed = row['seed'] if has_seed else None
        key: Hashable = int(seed) if has_seed and pd.notna(seed) and float(seed).is_integer() else ('run', index)
        if key in runs:  # the point's seeds then differ from any other point's: unpaired
            problems.append(f'{where}: seed {key} appears twice; its runs are compared unpaired')
            key = ('run', index)
        runs[key] = float(row[metric])
    return runs


def _checked(frame: pd.DataFrame, metric: str, problems: List[str]) -> pd.DataFrame:
    """The frame with `status` and `metric` columns guaranteed; what the data lacks goes to `problems`."""
    if 'status' not in frame.columns:
        frame = frame.assign(status=State.DONE)
        problems.append('no `status` column: every row is taken as a finished run')
    if 'seed' not in frame.columns:
        problems.append("no `seed` column: runs cannot be paired; every comparison uses Welch's test")
    done = frame[frame['status'] == State.DONE]
    if metric not in frame.columns:
        problems.append(f'no `{metric}` column: nothing to compare')
        frame = frame.assign(**{metric: math.nan})
    elif len(missing := done[done[metric].isna()]):
        problems.append(f'{len(missing)} DONE cell(s) without a `{metric}` value (NaN), left out: '
                        f"{', '.join(str(c) for c in missing.get('cell', missing.index))}")
    not_done = frame[frame['status'] != State.DONE]
    if len(not_done):
        problems.append(f'{len(not_done)} cell(s) not DONE, left out (the cells column says which state)')
    if 'environment' in frame.columns:
        # torch version, device, processes: the git SHA and the host may differ between runs of one environment
        envs = sorted({str(e).split(', git ')[0].split(', host ')[0] for e in frame['environment'].dropna()})
        if len(envs) > 1:
            problems.append(f"cells ran in {len(envs)} environments ({'; '.join(envs)}): differences between points "
                            'may be differences between environments')
    return frame


def _points(frame: pd.DataFrame, axes: Sequence[str], metric: str, has_seed: bool, problems: List[str]) -> Tuple[
        pd.DataFrame, Dict[Tuple[str, ...], _Point]]:
    """The frame with each row's point (`_point`), and the points in the order the grid lists them."""
    keys = [tuple(_text(v) for v in values) for values in frame[list(axes)].itertuples(index=False, name=None)] \
        if axes else [()] * len(frame)
    frame = frame.assign(_point=keys)
    points: Dict[Tuple[str, ...], _Point] = {}
    for key in dict.fromkeys(keys):
        rows = frame[frame['_point'] == key]
        where = ', '.join(f'{ax}={v}' for ax, v in zip(axes, key, strict=True)) or 'the grid'
        ok = rows[(rows['status'] == State.DONE) & rows[metric].notna()]
        point = _Point(key, rows, _runs(ok, metric, has_seed, problems, where))
        point.summary = stats.describe(list(point.runs.values()))
        points[key] = point
    single = [p for p in points.values() if p.summary.n == 1]
    if single:
        problems.append(f'{len(single)} point(s) with one run: no interval and no test for them')
    return frame, points


def _grid_file_baseline(frame: pd.DataFrame, problems: List[str]) -> Dict[str, Any]:
    """The grid file's `baseline:` as collect recorded it (the `baseline` column: JSON, the same in every row)."""
    if 'baseline' not in frame.columns:
        return {}
    texts = list(dict.fromkeys(str(t) for t in frame['baseline'].dropna()))
    try:
        declared = [json.loads(t) for t in texts]
    except ValueError:
        declared = []
    if len(declared) != 1 or not isinstance(declared[0], dict):
        if texts:
            problems.append(f"the `baseline` column is not one JSON mapping ({'; '.join(texts)}): the grid file's "
                            'baseline is not used')
        return {}
    return declared[0]


def _baseline_text(value: Any) -> str:
    """A declared value as collect writes it (mappings and lists as sorted JSON), then as the table shows it."""
    return _text(json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value)


def _baseline(axes: Sequence[str], points: Mapping[Tuple[str, ...], _Point],
              declared: Sequence[Tuple[str, Mapping[str, Any]]], problems: List[str]) -> Tuple[
        Dict[str, str], Dict[str, str]]:
    """(baseline value, where it came from) per axis: the first of the declarations (source, {axis: value}) that
    names the axis, else the axis's first value."""
    base: Dict[str, str] = {}
    source: Dict[str, str] = {}
    for i, ax in enumerate(axes):
        values = list(dict.fromkeys(k[i] for k in points))
        found = next(((where, d[ax]) for where, d in declared if ax in d), None)
        if found is not None:
            source[ax], base[ax] = found[0], _baseline_text(found[1])
            if base[ax] not in values:
                problems.append(f'the baseline {ax}={base[ax]} never ran (no cell of the grid has it): no Δ along '
                                f'{ax}')
        else:
            base[ax], source[ax] = values[0], 'the first value of the axis'
    base_key = tuple(base[ax] for ax in axes)
    if base_key in points and points[base_key].summary.n == 0:
        problems.append('the baseline point has no finished run: no Δ against it')
    return base, source


def _comparisons(axes: Sequence[str], points: Mapping[Tuple[str, ...], _Point], base: Mapping[str, str]) -> List[
        Tuple[_Point, str, Optional[stats.Comparison], str]]:
    """(point, `axis=baseline value`, test result, why there is none) along every axis on which a point differs from
    the baseline, the other axes held at the point's own values; the baseline point itself once, as 'baseline'."""
    out: List[Tuple[_Point, str, Optional[stats.Comparison], str]] = []
    for point in points.values():
        differing = [i for i, ax in enumerate(axes) if point.key[i] != base[ax]]
        if not differing:
            out.append((point, '', None, 'baseline'))
        for i in differing:
            ref = points.get(tuple(base[axes[i]] if j == i else v for j, v in enumerate(point.key)))
            vs = f'{axes[i]}={base[axes[i]]}'
            out.append((point, vs, None, 'no reference point: no test') if ref is None else
                       (point, vs, stats.compare(point.runs, ref.runs), ''))
    return out


def ablation(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """One table per collected training grid (see the module docstring)."""
    grids = {c: f for c, f in m.grids.items() if is_training_grid(f)}
    if not grids:
        data, display = _frames({'columns': {k: v for k, v in spec['columns'].items() if k != 'axes'}}, [], [])
        note = ('No collected training grid in results/ (a `fat sweep collect` CSV of `train` cells); run a grid, '
                'then `fat sweep collect ablations/GRID.yaml`.')
        return [Table(name, spec['title'], data, display, [note, *_not_found(spec, a)])]
    return [_grid_table(name, spec, collection, frame, a, m.workdir) for collection, frame in sorted(grids.items())]


def _grid_table(name: str, spec: Mapping[str, Any], collection: str, frame: pd.DataFrame, a: Analysis,
                workdir: Optional[Path]) -> Table:
    grid = str(frame['grid'].dropna().iloc[0]) if 'grid' in frame.columns and frame['grid'].notna().any() else \
        collection
    own = dict((spec.get('grids') or {}).get(grid) or {})
    metric = own.get('metric', spec.get('metric', 'top1'))
    metric_label = own.get('metric_label', _METRIC_LABELS.get(metric, metric))
    grid_file = own.get('grid_file', f'ablations/{grid}.yaml')
    problems: List[str] = []
    # an axis declared with one value (`model: [fat_proxy]`) varies nothing: a constant, not a row key
    declared_axes = grid_axes(frame)
    axes = [ax for ax in declared_axes if frame[ax].map(_text).nunique() > 1]
    constants = [f'{ax}={_text(frame[ax].iloc[0])}' for ax in declared_axes if ax not in axes and len(frame)]
    has_seed = 'seed' in frame.columns
    frame = _checked(frame, metric, problems)

    frame, points = _points(frame, axes, metric, has_seed, problems)

    declared = [('declared for this grid in analysis/tables.yaml', dict(own.get('baseline') or {})),
                ('declared in the grid file', _grid_file_baseline(frame, problems)),
                ('declared in analysis/tables.yaml', dict(spec.get('baseline') or {}))]
    base, base_source = _baseline(axes, points, declared, problems)

    comparisons = _comparisons(axes, points, base)
    tested = [c for _, _, c, _ in comparisons if c is not None]
    k = sum(reason != 'baseline' for _, _, _, reason in comparisons)
    adjusted = iter(stats.holm([c.p for c in tested]))
    seeds = sorted({int(s) for s in frame['seed'].dropna() if float(s).is_integer()}) if has_seed else []

    rows, cells, commands = [], [], []
    for point, vs, c, reason in comparisons:
        s = point.summary
        p_holm = next(adjusted) if c is not None else math.nan
        vs_axis, _, vs_value = vs.partition('=')
        vs_text = f'{vs_axis}={_declared(own, vs_axis, vs_value)}' if vs else DASH
        verdict = reason or stats.verdict(c, p_holm)
        needed = stats.seeds_to_resolve(c, stats.ALPHA / max(k, 1)) if c is not None and \
            verdict == stats.NOT_RESOLVED else None
        if verdict == stats.NOT_RESOLVED:
            what = ', '.join(f'{ax}={_declared(own, ax, v)}' for ax, v in zip(axes, point.key, strict=True)) + \
                f' vs {vs_text}'
            if needed is None:
                commands.append(f'{what}: more than {stats.MAX_SEEDS} seeds would be needed at the observed Δ and '
                                'spread: seeds will not settle it.')
            elif has_seed:
                commands.append(f"{what}: {needed} seeds: `fat sweep launch {grid_file} "
                                f"seeds=[{','.join(str(x) for x in _seed_list(seeds, needed))}]`.")
            else:
                commands.append(f'{what}: {needed} runs per point (no seed column: no command to add them).')
        first = point.rows.iloc[0]
        params = first.get('params')
        macs = {cv: first.get(f'macs_{cv}') for cv in ('paper', 'fvcore')}
        delta = c.delta if c is not None else math.nan
        rows.append(dict(
            grid=grid, collection=collection, **dict(zip(axes, point.key, strict=True)), vs=vs or None,
            params=params, macs_paper=macs['paper'], macs_fvcore=macs['fvcore'], n=s.n, mean=_round(s.mean),
            std=_round(s.std), ci_low=_round(s.ci_low), ci_high=_round(s.ci_high), delta=_round(delta),
            delta_ci_low=_round(c.ci_low if c else math.nan), delta_ci_high=_round(c.ci_high if c else math.nan),
            test=(c.test or None) if c else None, df=_round(c.df if c else math.nan, 3),
            p=_sig(c.p if c else math.nan), p_holm=_sig(p_holm), verdict=verdict, seeds_needed=needed,
            cells=_cells_text(point.rows)))
        cell = {ax: _axis_label(a, own, ax, v) for ax, v in zip(axes, point.key, strict=True)}
        cell.update(
            vs=vs_text, params=_fmt(params and params / 1e6, '.3f'),
            macs_paper=_fmt(macs['paper'] and macs['paper'] / 1e6, '.1f'),
            macs_fvcore=_fmt(macs['fvcore'] and macs['fvcore'] / 1e6, '.1f'), n=str(s.n),
            mean=_interval(s.mean, s.ci_low, s.ci_high),
            delta=_interval(delta, c.ci_low, c.ci_high, '+') if c is not None else DASH,
            test=f'{c.test}, df {c.df:.3g}' if c is not None and c.test and not c.reason else DASH,
            p=_p(c.p) if c else DASH, p_holm=_p(p_holm), verdict=verdict,
            seeds=(str(needed) if needed is not None else f'> {stats.MAX_SEEDS}') if verdict == stats.NOT_RESOLVED
            else DASH, cells=_cells_text(point.rows))
        cells.append(cell)

    headers: Dict[str, str] = {}
    for key, header in spec['columns'].items():
        if key == 'axes':
            headers.update({ax: (own.get('axis_labels') or {}).get(ax, ax) for ax in axes})
        elif key != 'vs' or len(axes) > 1:  # with one axis every row is compared with the same baseline
            headers[key] = str(header).format(metric=metric_label)
    data, display = _frames({'columns': headers}, rows, cells)

    base_text = ', '.join(f'`{ax}={base[ax]}` ({base_source[ax]})' for ax in axes) or 'none (the grid varies nothing)'
    notes = [
        f'{metric_label}: final `{metric}` of each DONE cell of results/{collection}.csv; per point the mean, n (runs) '
        'and the 95 % confidence interval from the t distribution with n − 1 degrees of freedom. Cells in any other '
        'state are left out and counted in the last column.',
        f'Baseline: {base_text}.' + (' A point that differs from it on several axes is compared along each of them, '
                                     'the other axes held at its own values (the vs column).' if len(axes) > 1 else ''),
        'Δ = mean(point) − mean(baseline), with its 95 % interval: a paired t-test on the per-seed differences where '
        'both points ran the same seeds (a seed fixes data order and initialisation, so seeds move together), '
        "Welch's t-test (Welch–Satterthwaite degrees of freedom) otherwise; two-sided. p (Holm): Holm's correction "
        f"over the {len(tested)} tested comparison(s) of this table; verdict 'resolved at 5 %' when p (Holm) < 0.05.",
    ]
    if commands:
        notes.append(f'Seeds for 80 % power: seeds per point at which the observed Δ, at the observed spread, would '
                     f"be resolved with 80 % power at α = 0.05/{max(k, 1)} (Holm's strictest step); an estimate "
                     'from few runs, not a promise. Per unresolved comparison, the seeds and the command that adds '
                     'them (only the new cells run, the finished ones are reused; then '
                     f'`fat sweep collect {grid_file} seeds=[...]` with the same list, and `fat report`):')
        notes += commands
    if constants:
        notes.append(f"Axes with a single value (the same in every row): {', '.join(constants)}.")
    notes.append("MMACs: M multiply-adds per image at the grid's input size (`paper` and `fvcore` conventions).")
    notes += [f'Data problem: {p}.' for p in problems]
    if 'environment' in frame.columns:
        notes += [f'Run environment: {e}.' for e in sorted(frame['environment'].dropna().unique())]
    notes += _not_found(spec, a)
    env = collection[len(grid) + 1:] if collection.startswith(f'{grid}-') else ''
    described = own.get('describe')
    subtitle = f'Grid `{grid}`' + (f' in `{env}`' if env else '') + (f': {described}' if described else '') + '.'
    curves, curve_notes = read_curves(frame[frame['status'] == State.DONE], workdir or grid_workdir(grid_file))
    meta = dict(axes=axes, baseline=base, problems=len(problems), metric_label=metric_label, grid=grid,
                curves=curves, curve_notes=curve_notes, labels={ax: {v: _axis_label(a, own, ax, v, short=True)
                                                                     for v in dict.fromkeys(p[i] for p in points)}
                                                                for i, ax in enumerate(axes)})
    return Table(f'{name}-{collection}', own.get('title', spec['title']), data, display, notes, subtitle=subtitle,
                 meta=meta)


def _declared(own: Mapping[str, Any], axis: str, value: str) -> str:
    """A value's label declared for its grid (analysis/tables.yaml), else the value as the grid file writes it."""
    return ((own.get('labels') or {}).get(axis) or {}).get(value, value)


def _axis_label(a: Analysis, own: Mapping[str, Any], axis: str, value: str, short: bool = False) -> str:
    """A value as the table shows it: declared labels (analysis/tables.yaml), FASA variants by models.yaml."""
    label = ((own.get('labels') or {}).get(axis) or {}).get(value)
    if label is None and axis == 'fasa' and value in a.variants:
        label = a.variants[value]['label']
    if label is None:
        return value
    return label if short else f'{label} (`{value}`)'
