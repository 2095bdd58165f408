"""Ablation tables of any collected training grid, with no declaration needed.

Rows follow the grid's varied axes (the collected CSV's columns between `cell` and `status`, seed aside): one row
per point, with its mean, n, 95 % confidence interval and the share of its runs that failed or diverged, and per
comparison against a baseline the Δ with its interval at the family's Bonferroni level, the seeds on which the point
is higher, the test, Holm-adjusted p-values for a difference and for equivalence within ±min_effect, the verdict
(differs / equivalent / inconclusive, or a flag), the smallest Δ the runs detect and the seeds that would settle an
inconclusive comparison. The baseline of each axis is, first found: declared for the grid in `analysis/tables.yaml`,
declared in the grid file (`baseline:`, which collect writes into the CSV's `baseline` column), declared for the axis
name in `analysis/tables.yaml`, else the axis's first value; a point that differs from it on several axes is compared
along each of them, the other axes held at the point's own values. One family per varied axis (or the table, when
declared). Statistics come from `fat.report.stats` (docs/statistics.md); what the data cannot support (missing
columns, one seed, NaN metrics, runs at chance, failures at different rates, other environments, a baseline that
never ran) becomes a note, a count or a flag, never a verdict.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from fat.rundir import State

from . import stats
from .analysis import Analysis
from .measured import Measurements, read_curves
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


# ended without a usable result; with DONE runs that have no metric (NaN) or sit at chance, the point's losses
_LOST_STATES = (State.FAILED, State.DIVERGED, State.CORRUPT)
NAN, AT_CHANCE = 'NaN', 'at chance'
CHANCE_FACTOR = 2  # a DONE run below this multiple of the chance level learned (almost) nothing: counted as diverged
FAMILIES = ('axis', 'table')


@dataclass
class _Point:
    key: Tuple[str, ...]  # axis values as text, in axis order
    rows: pd.DataFrame  # every cell of the point, any state
    runs: Dict[Hashable, float] = field(default_factory=dict)  # seed (or a run id) -> metric, usable runs only
    summary: Optional[stats.PointStats] = None
    ended: int = 0  # cells that finished, usable or not (DONE, FAILED, DIVERGED, CORRUPT)
    lost: Dict[str, int] = field(default_factory=dict)  # why -> runs ended without a usable metric
    envs: frozenset = frozenset()  # environments of the usable runs
    outliers: Tuple[Hashable, ...] = ()  # keys of `runs` far from the point's median

    @property
    def n_lost(self) -> int:
        return sum(self.lost.values())


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


def _cells_text(point: _Point) -> str:
    """Cells by state, DONE counting only usable runs (a NaN metric or a run at chance is named apart)."""
    counts = point.rows['status'].value_counts() if 'status' in point.rows else pd.Series(dtype=int)
    parts = {State.DONE: len(point.runs)} if State.DONE in counts else {}
    parts.update({why: point.lost[why] for why in (NAN, AT_CHANCE) if point.lost.get(why)})
    parts.update({s: n for s, n in sorted(counts.items()) if s != State.DONE})
    return ', '.join(f'{n} {s}' for s, n in parts.items() if n)


def _env(text: Any) -> str:
    """torch version, device, processes: the git SHA and the host may differ between runs of one environment."""
    return str(text).split(', git ')[0].split(', host ')[0]


def _seed_list(seeds: Sequence[int], n: int) -> List[int]:
    """The grid's seeds extended with the next integers up to `n` seeds (the finished cells keep their seeds)."""
    out = sorted(seeds)
    nxt = (max(out) + 1) if out else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def _runs(point: _Point, metric: str, has_seed: bool, chance: Optional[float], problems: List[str],
          where: str) -> None:
    """Fill the point's usable runs (seed -> metric), its losses and environments. Runs without a seed column, or
    with a seed seen twice, get keys of their own, so that they are never paired."""
    envs = set()
    for index, row in point.rows.iterrows():
        status = row['status']
        if status in _LOST_STATES:
            point.lost[status] = point.lost.get(status, 0) + 1
        if status != State.DONE:
            point.ended += status in _LOST_STATES
            continue
        point.ended += 1
        value = float(row[metric])
        if not math.isfinite(value):
            point.lost[NAN] = point.lost.get(NAN, 0) + 1
            continue
        if chance is not None and value < CHANCE_FACTOR * chance:
            point.lost[AT_CHANCE] = point.lost.get(AT_CHANCE, 0) + 1
            continue
        seed = row['seed'] if has_seed else None
        key: Hashable = int(seed) if has_seed and pd.notna(seed) and float(seed).is_integer() else ('run', index)
        if key in point.runs:  # the point's seeds then differ from any other point's: unpaired
            problems.append(f'{where}: seed {key} appears twice; its runs are compared unpaired')
            key = ('run', index)
        point.runs[key] = value
        if 'environment' in row and pd.notna(row['environment']):
            envs.add(_env(row['environment']))
    point.envs = frozenset(envs)
    keys = list(point.runs)
    point.outliers = tuple(k for k, out in zip(keys, stats.outliers([point.runs[k] for k in keys]), strict=True)
                           if out)


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
        problems.append(f'{len(missing)} DONE cell(s) without a `{metric}` value (NaN), counted as diverged: '
                        f"{', '.join(str(c) for c in missing.get('cell', missing.index))}")
    not_done = frame[frame['status'] != State.DONE]
    if len(not_done):
        problems.append(f'{len(not_done)} cell(s) not DONE, left out (the cells column says which state)')
    if 'environment' in frame.columns:
        envs = sorted({_env(e) for e in frame['environment'].dropna()})
        if len(envs) > 1:
            problems.append(f"cells ran in {len(envs)} environments ({'; '.join(envs)}): points compared across "
                            'environments get no test (a difference could be the hardware\'s or the software\'s)')
    return frame


def _points(frame: pd.DataFrame, axes: Sequence[str], metric: str, has_seed: bool, chance: Optional[float],
            problems: List[str]) -> Tuple[pd.DataFrame, Dict[Tuple[str, ...], _Point]]:
    """The frame with each row's point (`_point`), and the points in the order the grid lists them."""
    keys = [tuple(_text(v) for v in values) for values in frame[list(axes)].itertuples(index=False, name=None)] \
        if axes else [()] * len(frame)
    frame = frame.assign(_point=keys)
    points: Dict[Tuple[str, ...], _Point] = {}
    for key in dict.fromkeys(keys):
        point = _Point(key, frame[frame['_point'] == key])
        _runs(point, metric, has_seed, chance, problems, _where(axes, key))
        point.summary = stats.describe(list(point.runs.values()))
        points[key] = point
    single = [p for p in points.values() if p.summary.n == 1]
    if single:
        problems.append(f'{len(single)} point(s) with one run: no interval and no test for them')
    at_chance = sum(p.lost.get(AT_CHANCE, 0) for p in points.values())
    if at_chance:
        problems.append(f'{at_chance} DONE run(s) below {CHANCE_FACTOR} x the chance level ({chance:g}), counted as '
                        'diverged')
    return frame, points


def _where(axes: Sequence[str], key: Tuple[str, ...]) -> str:
    return ', '.join(f'{ax}={v}' for ax, v in zip(axes, key, strict=True)) or 'the grid'


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


@dataclass
class _Row:
    """One row of the table: a point, and its comparison along one axis (none for the baseline point)."""
    point: _Point
    axis: str = ''  # the axis compared along; '' for the baseline point
    ref: Optional[_Point] = None
    reason: str = ''  # why there is no test
    c: Optional[stats.Comparison] = None
    family: str = ''
    p_holm: float = math.nan
    p_equiv: float = math.nan
    p_equiv_holm: float = math.nan
    ci: Tuple[float, float] = (math.nan, math.nan)
    detectable: float = math.nan
    seeds: Optional[int] = None
    flags: List[str] = field(default_factory=list)
    verdict: str = ''

    @property
    def tested(self) -> bool:
        return self.c is not None and bool(self.c.test)


def _comparisons(axes: Sequence[str], points: Mapping[Tuple[str, ...], _Point], base: Mapping[str, str]) -> List[_Row]:
    """A row per point along every axis on which it differs from the baseline, the other axes held at the point's
    own values; the baseline point itself once. Points that ran in other environments are not tested."""
    out: List[_Row] = []
    for point in points.values():
        differing = [i for i, ax in enumerate(axes) if point.key[i] != base[ax]]
        if not differing:
            out.append(_Row(point, reason='baseline'))
        for i in differing:
            ref = points.get(tuple(base[axes[i]] if j == i else v for j, v in enumerate(point.key)))
            row = _Row(point, axes[i], ref)
            if ref is None:
                row.reason = 'no reference point: no test'
            elif len(point.envs | ref.envs) > 1:
                row.reason = 'other environment: no test'
            else:
                row.c = stats.compare(point.runs, ref.runs)
                row.reason = row.c.reason
            out.append(row)
    return out


def _rate(point: _Point) -> str:
    return f'{point.n_lost}/{point.ended}' if point.ended else DASH


def _flags(row: _Row) -> Tuple[List[str], bool]:
    """(flags, blocking): losses at different rates block the verdict (the survivors may be selected); outliers
    and runs left out of the pairing are shown beside it."""
    point, ref, flags = row.point, row.ref, []
    blocking = bool(point.ended and ref.ended and point.n_lost * ref.ended != ref.n_lost * point.ended)
    if blocking:
        flags.append(f'failure rates differ ({_rate(point)} vs {_rate(ref)})')
    for who, p in (('here', point), ('baseline', ref)):
        if p.outliers:
            seeds = ', '.join(str(k if not isinstance(k, tuple) else k[1]) for k in p.outliers)
            flags.append(f'outlier run {who}: seed {seeds}')
    if row.c.unpaired:
        flags.append(f'{row.c.unpaired} run(s) without a partner seed left out')
    return flags, blocking


def _test_families(rows: Sequence[_Row], family_mode: str, margin: float) -> Dict[str, int]:
    """Holm's correction (difference and equivalence), the Bonferroni interval and the planning, within each
    family; the verdict of every row. Returns the tested comparisons per family."""
    sizes: Dict[str, int] = {}
    for row in rows:
        if row.c is not None:
            row.family = row.axis if family_mode == 'axis' else 'table'
    for family in dict.fromkeys(r.family for r in rows if r.c is not None):
        members = [r for r in rows if r.c is not None and r.family == family]
        tested = [r for r in members if r.tested]
        m = sizes[family] = len(tested)
        for r in tested:
            r.p_equiv = stats.tost(r.c, margin)
        for r, p, q in zip(tested, stats.holm([r.c.p for r in tested]), stats.holm([r.p_equiv for r in tested]),
                           strict=True):
            r.p_holm, r.p_equiv_holm = p, q
            r.ci = stats.interval(r.c, m)
            r.detectable = stats.detectable(r.c, stats.ALPHA / m)
            r.flags, blocking = _flags(r)
            r.verdict = 'flagged: ' + r.flags[0] if blocking else stats.verdict(r.c, p, q, margin)
            if r.verdict == stats.INCONCLUSIVE:
                r.seeds = stats.seeds_for(r.c, margin, stats.ALPHA / m)
    for row in rows:
        row.verdict = row.verdict or row.reason
    return sizes


def _setting(own: Mapping[str, Any], spec: Mapping[str, Any], key: str, check: Any, what: str) -> Any:
    """A per-grid (else table-wide) declaration of analysis/tables.yaml, validated: one line naming the key."""
    for where, d in (('grids.<grid>', own), ('', spec)):
        if d.get(key) is not None:
            value = d[key]
            if not check(value):
                raise ValueError(f"tables.yaml: ablation{'.' + where if where else ''}.{key}: expected {what}, got "
                                 f'{value!r}')
            return value
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _min_effect(own: Mapping[str, Any], spec: Mapping[str, Any], frame: pd.DataFrame, problems: List[str]) -> Tuple[
        float, str]:
    """(smallest effect of interest, where it came from): declared for the grid in analysis/tables.yaml, in the grid
    file (collect's `min_effect` column), for every grid in analysis/tables.yaml, else the default."""
    if own.get('min_effect') is not None:
        return float(_setting(own, {}, 'min_effect', _positive, 'a positive number')), \
            'declared for this grid in analysis/tables.yaml'
    if 'min_effect' in frame.columns:
        values = pd.to_numeric(frame['min_effect'], errors='coerce').dropna().unique()
        if len(values) == 1 and values[0] > 0:
            return float(values[0]), 'declared in the grid file'
        problems.append("the `min_effect` column is not one positive number: the grid file's min_effect is not used")
    if spec.get('min_effect') is not None:
        return float(_setting({}, spec, 'min_effect', _positive, 'a positive number')), \
            'declared in analysis/tables.yaml'
    return stats.DEFAULT_MIN_EFFECT, 'the default: 1 point'


def ablation(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """One table per collected training grid (see the module docstring)."""
    grids = {c: f for c, f in m.grids.items() if is_training_grid(f)}
    if not grids:
        data, display = _frames({'columns': {k: v for k, v in spec['columns'].items() if k != 'axes'}}, [], [])
        note = ('No collected training grid in results/ (a `fat sweep collect` CSV of `train` cells); run a grid, '
                'then `fat sweep collect ablations/GRID.yaml`.')
        return [Table(name, spec['title'], data, display, [note, *_not_found(spec, a)])]
    return [_grid_table(name, spec, collection, frame, a, m.curves.get(collection))
            for collection, frame in sorted(grids.items())]


def _grid_table(name: str, spec: Mapping[str, Any], collection: str, frame: pd.DataFrame, a: Analysis,
                curves: Optional[pd.DataFrame] = None) -> Table:
    grid = str(frame['grid'].dropna().iloc[0]) if 'grid' in frame.columns and frame['grid'].notna().any() else \
        collection
    own = dict((spec.get('grids') or {}).get(grid) or {})
    metric = own.get('metric', spec.get('metric', 'top1'))
    metric_label = own.get('metric_label', _METRIC_LABELS.get(metric, metric))
    recorded = frame['grid_file'].dropna() if 'grid_file' in frame.columns else pd.Series(dtype=str)
    # the grid file collect recorded, else the one declared for it in analysis/tables.yaml, else ablations/<grid>.yaml
    grid_file = own.get('grid_file') or (str(recorded.iloc[0]) if len(recorded) else f'ablations/{grid}.yaml')
    family_mode = _setting(own, spec, 'family', lambda v: v in FAMILIES, f"one of {', '.join(FAMILIES)}") or 'axis'
    chance = _setting(own, spec, 'chance', lambda v: _positive(v) and v < 100, 'a level in (0, 100)')
    eval_size = _setting(own, spec, 'eval_size', lambda v: isinstance(v, int) and _positive(v), 'a positive integer')
    problems: List[str] = []
    # an axis declared with one value (`model: [fat_proxy]`) varies nothing: a constant, not a row key
    declared_axes = grid_axes(frame)
    axes = [ax for ax in declared_axes if frame[ax].map(_text).nunique() > 1]
    constants = [f'{ax}={_text(frame[ax].iloc[0])}' for ax in declared_axes if ax not in axes and len(frame)]
    has_seed = 'seed' in frame.columns
    frame = _checked(frame, metric, problems)
    margin, margin_source = _min_effect(own, spec, frame, problems)

    frame, points = _points(frame, axes, metric, has_seed, chance, problems)

    declared = [('declared for this grid in analysis/tables.yaml', dict(own.get('baseline') or {})),
                ('declared in the grid file', _grid_file_baseline(frame, problems)),
                ('declared in analysis/tables.yaml', dict(spec.get('baseline') or {}))]
    base, base_source = _baseline(axes, points, declared, problems)

    comparisons = _comparisons(axes, points, base)
    sizes = _test_families(comparisons, family_mode, margin)
    seeds = sorted({int(s) for s in frame['seed'].dropna() if float(s).is_integer()}) if has_seed else []

    rows, cells, commands = [], [], []
    for r in comparisons:
        point, c, s = r.point, r.c, r.point.summary
        vs = f'{r.axis}={base[r.axis]}' if r.axis else ''
        vs_text = f'{r.axis}={_declared(own, r.axis, base[r.axis])}' if r.axis else DASH
        if r.verdict == stats.INCONCLUSIVE:
            commands.append(_command(r, _where_declared(own, axes, point.key) + f' vs {vs_text}', margin, has_seed,
                                     grid_file, seeds))
        first = point.rows.iloc[0]
        params = first.get('params')
        macs = {cv: first.get(f'macs_{cv}') for cv in ('paper', 'fvcore')}
        delta = c.delta if c is not None else math.nan
        higher = c.higher if r.tested else None
        rows.append(dict(
            grid=grid, collection=collection, **dict(zip(axes, point.key, strict=True)), vs=vs or None,
            family=r.family or None, params=params, macs_paper=macs['paper'], macs_fvcore=macs['fvcore'], n=s.n,
            mean=_round(s.mean), std=_round(s.std), ci_low=_round(s.ci_low), ci_high=_round(s.ci_high),
            lost=point.n_lost, ended=point.ended, outliers=len(point.outliers), delta=_round(delta),
            delta_ci_low=_round(r.ci[0]), delta_ci_high=_round(r.ci[1]),
            ci_level=_round(1 - stats.ALPHA / sizes[r.family], 6) if r.tested else None,
            pairs=c.n if r.tested and c.paired else None, higher=higher,
            test=(c.test or None) if c else None, df=_round(c.df if c else math.nan, 3),
            p=_sig(c.p if c else math.nan), p_holm=_sig(r.p_holm), p_equiv=_sig(r.p_equiv),
            p_equiv_holm=_sig(r.p_equiv_holm), min_effect=margin, verdict=r.verdict, flags='; '.join(r.flags) or None,
            detectable=_round(r.detectable), seeds_needed=r.seeds, cells=_cells_text(point)))
        cell = {ax: _axis_label(a, own, ax, v) for ax, v in zip(axes, point.key, strict=True)}
        cell.update(
            vs=vs_text, params=_fmt(params and params / 1e6, '.3f'),
            macs_paper=_fmt(macs['paper'] and macs['paper'] / 1e6, '.1f'),
            macs_fvcore=_fmt(macs['fvcore'] and macs['fvcore'] / 1e6, '.1f'), n=str(s.n),
            mean=_interval(s.mean, s.ci_low, s.ci_high), failed=_rate(point),
            delta=_interval(delta, *r.ci, '+') if c is not None else DASH,
            higher=f'{higher} of {c.n}' if higher is not None else DASH,
            test=f'{c.test}, df {c.df:.3g}' if r.tested else DASH,
            p=_p(c.p) if c else DASH, p_holm=_p(r.p_holm), p_equiv=_p(r.p_equiv_holm), verdict=r.verdict,
            detectable=_fmt(r.detectable, '.2f'), flags='; '.join(r.flags) or DASH,
            seeds=(str(r.seeds) if r.seeds is not None else f'> {stats.MAX_SEEDS}')
            if r.verdict == stats.INCONCLUSIVE else DASH, cells=_cells_text(point))
        cells.append(cell)

    headers: Dict[str, str] = {}
    for key, header in spec['columns'].items():
        if key == 'axes':
            headers.update({ax: (own.get('axis_labels') or {}).get(ax, ax) for ax in axes})
        elif key != 'vs' or len(axes) > 1:  # with one axis every row is compared with the same baseline
            headers[key] = str(header).format(metric=metric_label, min_effect=f'{margin:g}')
    data, display = _frames({'columns': headers}, rows, cells)

    notes = _notes(collection, metric, metric_label, axes, base, base_source, margin, margin_source, family_mode,
                   sizes, chance, eval_size, points)
    if commands:
        notes.append('Seeds that would settle each inconclusive comparison, and the command that adds them (only the '
                     'new cells run, the finished ones are reused; then '
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
    curves, curve_notes = read_curves(frame[frame['status'] == State.DONE], curves)
    meta = dict(axes=axes, baseline=base, problems=len(problems), metric_label=metric_label, grid=grid,
                curves=curves, curve_notes=curve_notes, min_effect=margin, seeds=_seed_runs(metric, points),
                labels={ax: {v: _axis_label(a, own, ax, v, short=True) for v in dict.fromkeys(p[i] for p in points)}
                        for i, ax in enumerate(axes)})
    return Table(f'{name}-{collection}', own.get('title', spec['title']), data, display, notes, subtitle=subtitle,
                 meta=meta)


def _where_declared(own: Mapping[str, Any], axes: Sequence[str], key: Tuple[str, ...]) -> str:
    return ', '.join(f'{ax}={_declared(own, ax, v)}' for ax, v in zip(axes, key, strict=True))


def _command(r: _Row, what: str, margin: float, has_seed: bool, grid_file: str, seeds: Sequence[int]) -> str:
    """The seeds that would settle an inconclusive comparison at ±margin, and the command that adds them."""
    if r.seeds is None:
        return f'{what}: more than {stats.MAX_SEEDS} seeds per point at the spread observed.'
    if r.seeds <= r.c.n:
        return (f'{what}: {r.seeds} seeds give 80 % power at ±{margin:g} and it has {r.c.n}: Δ lies near ±{margin:g}, '
                'where neither test settles it without many more seeds.')
    if not has_seed:
        return f'{what}: {r.seeds} runs per point (no seed column: no command to add them).'
    return (f"{what}: {r.seeds} seeds: `fat sweep launch {grid_file} "
            f"seeds=[{','.join(str(x) for x in _seed_list(seeds, r.seeds))}]`.")


def _seed_runs(metric: str, points: Mapping[Tuple[str, ...], _Point]) -> pd.DataFrame:
    """Every DONE run with a value, for the per-seed figure: point, seed, value and its flag ('' when it counts as
    is, 'outlier', or 'at chance': counted as diverged)."""
    records = []
    for key, point in points.items():
        for index, row in point.rows.iterrows():
            value = pd.to_numeric(row.get(metric), errors='coerce')
            if row['status'] != State.DONE or not math.isfinite(value):
                continue
            seed = row.get('seed')
            used = [k for k in (int(seed) if pd.notna(seed) and float(seed).is_integer() else None, ('run', index))
                    if k in point.runs and point.runs[k] == value]
            flag = AT_CHANCE if not used else 'outlier' if used[0] in point.outliers else ''
            records.append(dict(_point=key, seed=seed, value=float(value), flag=flag))
    return pd.DataFrame(records, columns=['_point', 'seed', 'value', 'flag'])


def _notes(collection: str, metric: str, metric_label: str, axes: Sequence[str], base: Mapping[str, str],
           base_source: Mapping[str, str], margin: float, margin_source: str, family_mode: str,
           sizes: Mapping[str, int], chance: Optional[float], eval_size: Optional[int],
           points: Mapping[Tuple[str, ...], _Point]) -> List[str]:
    """What a reader needs to read the table: the data, the tests, the families, the verdicts, what is left out."""
    base_text = ', '.join(f'`{ax}={base[ax]}` ({base_source[ax]})' for ax in axes) or 'none (the grid varies nothing)'
    selected = ("the final epoch's value (`best_*` would pick the best epoch on the evaluation set itself, a "
                'selection that flatters every point)') if not metric.startswith('best_') else \
        "the best epoch's value, selected on the evaluation set itself: it flatters every point, the noisier the more"
    families = '; '.join(f'`{f}`: {m} tested, Δ interval at {100 * (1 - stats.ALPHA / m):.4g} %'
                         for f, m in sizes.items() if m) or 'no tested comparison'
    notes = [
        f'{metric_label}: `{metric}` of each usable run of results/{collection}.csv, {selected}; per point the mean, '
        'n (runs) and the 95 % confidence interval from the t distribution with n − 1 degrees of freedom.',
        f'Baseline: {base_text}.' + (' A point that differs from it on several axes is compared along each of them, '
                                     'the other axes held at its own values (the vs column).' if len(axes) > 1 else ''),
        'Δ = mean(point) − mean(baseline): a paired t-test on the per-seed differences over the seeds both points '
        'ran (at least two; a seed fixes the data order, and the initialisation where both build the same modules), '
        "Welch's t-test (Welch–Satterthwaite degrees of freedom) otherwise; two-sided. Points that ran in other "
        'environments are not tested. Seeds higher: the seeds on which the point beats the baseline (paired).',
        f"Families: Holm's correction within {'each varied axis' if family_mode == 'axis' else 'the whole table'} "
        f"({families}); the Δ interval is Bonferroni's at the family's size, so an interval excluding 0 always "
        'comes with a Holm rejection.',
        f'Smallest effect of interest: ±{margin:g} {"point" if margin == 1 else "points"} of the metric '
        f'({margin_source}). Verdict: "differs" when p (Holm) < '
        f'0.05; "equivalent within ±{margin:g}" when the equivalence test (two one-sided t-tests, same pairing and '
        'correction) gives p (Holm) < 0.05; both: a real difference smaller than that; neither: "inconclusive". '
        "Δ detectable: the smallest true Δ the current runs detect with 80 % power at α = 0.05/m (Holm's "
        f'strictest step); seeds: those that detect ±{margin:g} with 80 % power, at the spread observed (an '
        'estimate from few runs).',
        'Failed or diverged: runs that ended FAILED, DIVERGED or CORRUPT, or DONE without a metric (NaN)'
        + (f' or below {CHANCE_FACTOR} x chance ({chance:g})' if chance is not None else '')
        + ', over the cells that ended; a comparison whose two points lose runs at different rates is flagged, not '
        "judged (the survivors may be a selection). Outlier: a run whose modified z-score from its point's median "
        f'exceeds {stats.OUTLIER_Z:g} (median absolute deviation); shown, and kept in the test.'
        + ('' if chance is not None else ' No chance level declared (`chance:` in analysis/tables.yaml): runs at '
           'chance are not detected.'),
    ]
    base_point = points.get(tuple(base[ax] for ax in axes))
    mean = base_point.summary.mean if base_point is not None else math.nan
    if eval_size and math.isfinite(mean):
        sd = 100 * math.sqrt(mean / 100 * (1 - mean / 100) / eval_size)
        notes.append(f"Not in these intervals: the evaluation set's own sampling error. At {mean:.1f} % on "
                     f'{eval_size} images it is binomial, sd {sd:.2f} points; every point is scored on the same '
                     "images, so the seeds' spread does not contain it: the tests compare the models on this "
                     'evaluation set, not on the distribution it is drawn from.')
    else:
        notes.append("Not in these intervals: the evaluation set's own sampling error (binomial, sd "
                     '100·sqrt(p(1 − p)/N) points at accuracy p on N images; `eval_size:` in analysis/tables.yaml '
                     'prints it): every point is scored on the same images, so the tests compare the models on this '
                     'evaluation set.')
    return notes


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
