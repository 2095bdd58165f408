"""The report's ladder tables and figure: for each collected ladder grid (`fat sweep collect` wrote one CSV per rung,
`<grid>.<rung>-<environment>.csv`, each with a `ladder` column), how well every pair of rungs that share points
agrees on their ranking (`fat.report.ladder_stats.agreement`), what each rung cost, and what promotion bought.

Compute is cell-hours of training: the sum of `train_time_s` (result.json, the training loop's wall time; evaluation
and start-up are not in it) over a rung's DONE cells. The promotion path is the first rung's cells and the cells that
`fat sweep promote` submitted (`promoted_from`); cells launched at a rung with `--rung` (to measure what promotion
skipped) are not on it. The full grid's cost is every point at the top rung: measured where all ran there, else
estimated from the mean cell and said so.
"""
import json
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from fat.rundir import State

from . import ladder_stats, stats
from .analysis import Analysis
from .figures import _empty, _legend, _style, _tables
from .grids import grid_axes
from .measured import Measurements
from .tables import DASH, Table, _frames

__all__ = ['ladder_tables', 'ladder_agreement_figure', 'ladder_collections']

METRIC = 'top1'


def _rung_names(frame: pd.DataFrame) -> List[str]:
    rungs = json.loads(str(frame['ladder'].dropna().iloc[0]))
    return [r['name'] if isinstance(r, dict) else str(r) for r in rungs]


def ladder_collections(m: Measurements) -> Dict[Tuple[str, str], Dict[str, pd.DataFrame]]:
    """{(grid, environment): {rung: its collected rows}} for every collection with a `ladder` column."""
    out: Dict[Tuple[str, str], Dict[str, pd.DataFrame]] = {}
    for stem, frame in sorted(m.grids.items()):
        if 'ladder' not in frame.columns or 'rung' not in frame.columns or not len(frame):
            continue
        grid, rung = str(frame['grid'].iloc[0]), str(frame['rung'].iloc[0])
        prefix = f'{grid}.{rung}-'
        env = stem[len(prefix):] if stem.startswith(prefix) else stem
        out.setdefault((grid, env), {})[rung] = frame
    # a rung's file is named by where its cells ran ("unrun" before any did): one group per grid, the environment
    # of most rungs naming it
    merged: Dict[Tuple[str, str], Dict[str, pd.DataFrame]] = {}
    for grid in dict.fromkeys(g for g, _ in out):
        groups = {env: rungs for (g, env), rungs in out.items() if g == grid}
        env = max((e for e in groups if e != 'unrun'), key=lambda e: len(groups[e]), default='unrun')
        merged[(grid, env)] = {r: f for rungs in groups.values() for r, f in rungs.items()}
    return merged


def _point(row: Mapping[str, Any], axes: Sequence[str]) -> str:
    return ' '.join(f'{ax}={row[ax]}' for ax in axes) or 'all cells'


def _runs(frame: pd.DataFrame) -> Dict[str, Dict[Any, float]]:
    axes = [ax for ax in grid_axes(frame) if ax != 'rung']
    done = frame[frame['status'] == State.DONE]
    return ladder_stats.point_runs([(_point(r, axes), r.get('seed', r['cell']), float(r[METRIC]))
                              for r in done.to_dict('records') if pd.notna(r.get(METRIC))])


def _hours(frame: pd.DataFrame) -> float:
    done = frame[frame['status'] == State.DONE]
    return float(done['train_time_s'].fillna(0).sum()) / 3600 if 'train_time_s' in done else math.nan


def _promoted(frame: pd.DataFrame) -> pd.Series:
    return frame['promoted_from'].notna() if 'promoted_from' in frame.columns else pd.Series(False, frame.index)


def _ci(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return DASH
    return f'{value:+.2f}' if math.isnan(low) else f'{value:+.2f} [{low:+.2f}, {high:+.2f}]'


def _overrides(frame: pd.DataFrame, rung: str) -> str:
    for r in json.loads(str(frame['ladder'].dropna().iloc[0])):
        if isinstance(r, dict) and r.get('name') == rung:
            return ', '.join(f'{k}={json.dumps(v)}' for k, v in r.items() if k != 'name') or '(the grid as declared)'
    return DASH


def _agreement_rows(rungs: List[str], runs: Dict[str, Dict[str, Dict[Any, float]]], n_resamples: int
                    ) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]], List[Any]]:
    rows, cells, pairs = [], [], []
    for i, lower in enumerate(rungs):
        for upper in rungs[i + 1:]:
            if lower not in runs or upper not in runs:
                continue
            ag = ladder_stats.agreement(runs[lower], runs[upper], n_resamples=n_resamples, seed=0)
            if not ag.points:
                continue
            pairs.append((lower, upper, ag))
            if ag.reason:
                reading = f'not resolved: {ag.reason}'
            elif ag.resolved:
                reading = 'τ > 0: the lower rung ranks the points like the upper' if ag.tau_low > 0 else \
                    'τ < 0: the lower rung ranks the points against the upper'
            else:
                reading = 'not resolved: the τ interval includes 0'
            rows.append(dict(lower=lower, upper=upper, points=len(ag.points), tau=ag.tau, tau_low=ag.tau_low,
                             tau_high=ag.tau_high, rho=ag.rho, rho_low=ag.rho_low, rho_high=ag.rho_high,
                             p_same_best=ag.p_same_best, same_best=ag.same_best, resamples=ag.n_resamples,
                             reading=reading))
            cells.append(dict(lower=lower, upper=upper, points=str(len(ag.points)), tau=_ci(ag.tau, ag.tau_low,
                              ag.tau_high), rho=_ci(ag.rho, ag.rho_low, ag.rho_high),
                              p_same_best=DASH if math.isnan(ag.p_same_best) else f'{ag.p_same_best:.2f}',
                              same_best='yes' if ag.same_best else 'no', reading=reading))
    return rows, cells, pairs


def _rung_rows(rungs: List[str], frames: Dict[str, pd.DataFrame], runs: Dict[str, Dict[str, Dict[Any, float]]]
               ) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    rows, cells = [], []
    for i, rung in enumerate(rungs):
        frame = frames.get(rung)
        if frame is None:
            continue
        done = frame['status'] == State.DONE
        on_path = done if i == 0 else done & _promoted(frame)
        best = max((p for p, r in runs[rung].items() if r), key=lambda p: _mean(runs[rung][p]), default=None)
        points_run = sum(1 for r in runs[rung].values() if r)
        rows.append(dict(rung=rung, overrides=_overrides(frame, rung), points=points_run, cells=int(done.sum()),
                         cell_hours=_hours(frame), path_cells=int(on_path.sum()), path_hours=_hours(frame[on_path]),
                         best=best))
        cells.append(dict(rung=rung, overrides=_overrides(frame, rung), points=str(points_run),
                          cells=str(int(done.sum())), cell_hours=f'{_hours(frame):.3f}',
                          path=f'{int(on_path.sum())} cells, {_hours(frame[on_path]):.3f} h',
                          best=best or DASH))
    return rows, cells


def _point_hours(frame: pd.DataFrame) -> Dict[str, float]:
    axes = [ax for ax in grid_axes(frame) if ax != 'rung']
    done = frame[frame['status'] == State.DONE]
    out: Dict[str, float] = {}
    for r in done.to_dict('records'):
        key = _point(r, axes)
        out[key] = out.get(key, 0.0) + (float(r['train_time_s']) if pd.notna(r.get('train_time_s')) else 0.0) / 3600
    return out


def _mean(runs: Mapping[Any, float]) -> float:
    return sum(runs.values()) / len(runs)


def _halving(rungs: List[str], frames: Dict[str, pd.DataFrame], runs: Dict[str, Dict[str, Dict[Any, float]]]
             ) -> List[str]:
    """Where every point ran at every rung: what plain halving by mean (`--top-k`, half the points at each
    promotion) would have kept and cost, replayed on the measured cells."""
    points = [p for p, r in runs[rungs[0]].items() if r]
    if len(points) < 2 or not all(runs[r].get(p) for r in rungs for p in points):
        return []
    hours = {r: _point_hours(frames[r]) for r in rungs}
    alive, cost, sizes = points, 0.0, [len(points)]
    for i, rung in enumerate(rungs):
        cost += sum(hours[rung].get(p, 0.0) for p in alive)
        if i < len(rungs) - 1:
            alive = sorted(alive, key=lambda p: -_mean(runs[rung][p]))[:math.ceil(len(alive) / 2)]
            sizes.append(len(alive))
    top = rungs[-1]
    best = max(points, key=lambda p: _mean(runs[top][p]))
    full = sum(hours[top].get(p, 0.0) for p in points)
    return [f"Replayed on the cells measured at every rung: halving by mean (`--top-k`, half the points at each "
            f"promotion: {' → '.join(map(str, sizes))}) would have ended with {', '.join(f'`{p}`' for p in alive)}, "
            f"{'including' if best in alive else 'missing'} the top rung's best, for {cost:.3f} cell-hours "
            f'({100 * cost / full:.0f} % of the full grid at the top rung).']


def _summary(rungs: List[str], frames: Dict[str, pd.DataFrame], runs: Dict[str, Dict[str, Dict[Any, float]]],
             rung_rows: List[Dict[str, Any]], min_effect: float) -> List[str]:
    """What promotion found and what it cost, in words."""
    top = rungs[-1]
    if top not in frames or not runs.get(top) or not any(runs[top].values()):
        return [f'No DONE cell at the top rung {top!r}: what promotion found cannot be told yet.']
    frame = frames[top]
    promoted_points = {p for p, r in _runs(frame[_promoted(frame)]).items() if r}
    decisions = ladder_stats.select(runs[top], min_effect)
    best = decisions[0].point
    tied = [d.point for d in decisions[1:] if d.promote]
    ran_top = [p for p, r in runs[top].items() if r]
    all_points = frame.drop_duplicates(subset=[ax for ax in grid_axes(frame) if ax not in ('rung', 'seed')] or None)
    notes = []
    if len(ran_top) < len(all_points):
        notes.append(f'Only {len(ran_top)} of {len(all_points)} points ran at the top rung {top!r}: its best is the '
                     'best of those, not of the grid.')
    found = 'found it' if best in promoted_points else 'did not promote it'
    notes.append(f'The top rung {top!r} ranks `{best}` first by mean; promotion {found} (it promoted '
                 f'{len(promoted_points)} of {len(all_points)} points to the top rung). At ±{min_effect:g}, '
                 + (f"{len(tied)} other point(s) are not shown worse than it there, so the top rung's best itself is "
                    f'not resolved among {len(tied) + 1} points.' if tied else 'every other point is shown worse '
                    'than it there.'))
    path = sum(r['path_hours'] for r in rung_rows)
    top_row = next(r for r in rung_rows if r['rung'] == top)
    cells = len(frame)
    if top_row['cells'] == cells:
        full, how = top_row['cell_hours'], f'measured: all {cells} cells ran there'
    else:
        full = top_row['cell_hours'] / top_row['cells'] * cells if top_row['cells'] else math.nan
        how = f"estimated from the mean of its {top_row['cells']} DONE cells"
    notes.append(f'Compute: the promotion path (the first rung, then what was promoted) took {path:.3f} cell-hours, '
                 f'{100 * path / full:.0f} % of the full grid at the top rung ({full:.3f} cell-hours, {how}). '
                 'Cell-hours: training wall time from result.json, evaluation and start-up left out.')
    return notes + _halving(rungs, frames, runs)


def ladder_tables(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """Two tables per collected ladder grid: rank agreement between its rungs, and each rung's compute."""
    out = []
    n_resamples = int(spec.get('resamples', ladder_stats.N_RESAMPLES))
    for (grid, env), frames in ladder_collections(m).items():
        any_frame = next(iter(frames.values()))
        rungs = [r for r in _rung_names(any_frame) if r in frames]
        min_effect = float(any_frame['min_effect'].iloc[0]) if 'min_effect' in any_frame.columns and \
            pd.notna(any_frame['min_effect'].iloc[0]) else stats.DEFAULT_MIN_EFFECT
        runs = {r: _runs(frames[r]) for r in rungs}
        rows, cells, pairs = _agreement_rows(rungs, runs, n_resamples)
        data, display = _frames(spec, rows, cells)
        notes = [f"Kendall's τ-b and Spearman's ρ between the point means ({METRIC}) of two rungs, over the points "
                 'with two or more DONE runs at both; [95 % percentile interval] from '
                 f'{n_resamples} bootstrap resamples of each point\'s seeds at each rung (scipy.stats.bootstrap, '
                 'seed 0). P(same best): the share of those resamples in which the lower rung\'s best point is the '
                 "upper rung's best; 'same best': in the data as observed. With few points and seeds the intervals "
                 'are wide: an interval that includes 0 is not resolved.']
        rung_rows, rung_cells = _rung_rows(rungs, frames, runs)
        summary = _summary(rungs, frames, runs, rung_rows, min_effect)
        subtitle = f'grid `{grid}` ({env}), rungs {" < ".join(rungs)}'
        out.append(Table(f'{name}-{grid}-{env}', f"{spec['title']}: rank agreement between rungs", data, display,
                         notes + summary, subtitle=subtitle,
                         meta=dict(grid=grid, env=env, pairs=pairs, runs=runs, rungs=rungs)))
        data, display = _frames({'columns': spec['rung_columns']}, rung_rows, rung_cells)
        out.append(Table(f'{name}_rungs-{grid}-{env}', f"{spec['title']}: compute per rung", data, display,
                         summary, subtitle=subtitle, meta=dict(grid=grid, env=env)))
    return out


def ladder_agreement_figure(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]
                            ) -> List[Tuple[str, Figure, List[str]]]:
    """Per ladder grid: upper-rung against lower-rung mean per point with 95 % t intervals, one panel per pair of
    rungs that share points."""
    out = []
    for table in _tables(tables, spec['table']):
        meta = table.meta
        if 'pairs' not in meta:  # the compute table of the same definition
            continue
        stem = f"{name}-{meta['grid']}-{meta['env']}"
        pairs = meta['pairs']
        if not pairs:
            out.append((stem, _empty(spec['title'], 'No two rungs share points: nothing to plot.'), []))
            continue
        runs = meta['runs']
        points = list(dict.fromkeys(p for _, _, ag in pairs for p in ag.points))
        palette = sns.color_palette('colorblind', len(points))
        markers = ('o', 's', 'D', '^', 'v', 'P', 'X', 'h', '<', '>')
        with matplotlib.rc_context(_style()):
            fig = Figure(figsize=(4.2 * len(pairs) + 1.0, 4.4), layout='constrained')
            axes = fig.subplots(1, len(pairs), squeeze=False)[0]
            handles = {}
            for ax, (lower, upper, ag) in zip(axes, pairs, strict=True):
                for p in ag.points:
                    k = points.index(p)
                    lo = stats.describe(list(runs[lower][p].values()))
                    up = stats.describe(list(runs[upper][p].values()))
                    h = ax.errorbar([lo.mean], [up.mean], xerr=[[lo.mean - lo.ci_low], [lo.ci_high - lo.mean]],
                                    yerr=[[up.mean - up.ci_low], [up.ci_high - up.mean]], fmt=markers[k % len(markers)],
                                    color=palette[k], capsize=3, markersize=6, label=p)
                    handles[p] = h
                tau = _ci(ag.tau, ag.tau_low, ag.tau_high)
                ax.set_title(f'{upper} vs {lower}: τ {tau}', fontsize='small')
                ax.set_xlabel(f'{lower}: top-1 (%)')
                ax.set_ylabel(f'{upper}: top-1 (%)')
            _legend(fig, list(handles.values()), 'point (mean, 95 % t interval over seeds)')
            fig.suptitle(f"{spec['title']} — {table.subtitle}", fontsize='medium')
        out.append((stem, fig, [
            'Each marker is one point of the grid: its mean top-1 at the lower rung (x) and the upper rung (y), with '
            "95 % t intervals over its seeds; τ is Kendall's τ-b between the two rungs with its bootstrap interval "
            '(the table beside it).']))
    return out
