"""Figures of any collected grid, drawn from its ablation table (`fat.report.grids`), so that a figure shows exactly
the table's numbers: Δ against the baseline with 95 % intervals and verdicts; accuracy vs MACs, one panel per
convention, with the Pareto front marked; learning curves (val top-1 and train loss by epoch, a band over seeds).
"""
import textwrap
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .analysis import Analysis
from .figures import _DODGE, _dodge, _empty, _handle, _legend, _marker, _num, _plain, _style, _tables
from .tables import Table

__all__ = ['GRID_BUILDERS']

_MARKERS = ('o', 's', 'D', '^', 'v', 'P', 'X', 'h', '<', '>')
Drawn = Tuple[str, Figure, List[str]]


def _per_grid(name: str, spec: Mapping[str, Any], tables: Sequence[Table], draw: Callable[[Table], Drawn]
              ) -> List[Drawn]:
    """draw(table) for the table of each collected grid, or one placeholder figure where none is collected."""
    out = []
    for table in _tables(tables, spec['table']):
        if table.data.empty or 'collection' not in table.data.columns:
            out.append((name, _empty(spec['title'], 'No collected grid: nothing to plot.'), []))
        else:
            out.append(draw(table))
    return out


def _stem(name: str, table: Table) -> str:
    return f"{name}-{table.data['collection'].iloc[0]}"


def _title(spec: Mapping[str, Any], table: Table) -> str:
    return textwrap.fill(f"{table.title}, {spec['title']} — {_plain(table.subtitle)}", 90)


def _points(table: Table) -> pd.DataFrame:
    """One row per point (the table repeats a point compared along several axes)."""
    axes = table.meta['axes']
    return table.data.drop_duplicates(subset=axes or None, keep='first') if axes else table.data.iloc[:1]


def _label(table: Table, point: Mapping[str, Any]) -> str:
    axes, labels = table.meta['axes'], table.meta['labels']
    if len(axes) == 1:
        return labels[axes[0]].get(str(point[axes[0]]), str(point[axes[0]]))
    return ', '.join(f'{ax}={labels[ax].get(str(point[ax]), point[ax])}' for ax in axes) or 'all cells'


def _looks(a: Analysis, table: Table) -> Dict[str, Tuple[Any, str]]:
    """(colour, marker) per point label: FASA variants as models.yaml draws them, other points in palette order."""
    palette = sns.color_palette('colorblind')
    axes = table.meta['axes']
    looks = {}
    for i, (_, point) in enumerate(_points(table).iterrows()):
        preset = a.variants.get(str(point['fasa'])) if axes == ['fasa'] else None
        looks[_label(table, point)] = ((preset['colour'], preset['marker']) if preset else
                                       (palette[i % len(palette)], _MARKERS[i % len(_MARKERS)]))
    return looks


def _yerr(row: Mapping[str, Any], centre: str, low: str, high: str) -> List[List[float]]:
    lo, hi = _num(row[low]), _num(row[high])
    if lo is None or hi is None:
        return [[0.0], [0.0]]
    return [[row[centre] - lo], [hi - row[centre]]]


def _pv(p: Any) -> str:
    return '—' if p is None else '<0.001' if p < 0.001 else f'{p:.3f}'


def ablation_delta(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[Drawn]:
    def draw(table: Table) -> Drawn:
        data, looks = table.data, _looks(a, table)
        rows = data[data['verdict'] != 'baseline'].iloc[::-1]  # top to bottom in table order
        several = len(table.meta['axes']) > 1
        labels = table.meta['labels']

        def versus(vs: str) -> str:
            axis, _, value = vs.partition('=')
            return f' vs {axis}={labels.get(axis, {}).get(value, value)}' if several else ''

        with matplotlib.rc_context(_style()):
            # long point names (several axes) wrap onto a second line: rows get the height for it
            fig = Figure(figsize=(11.0, 1.6 + (0.75 if several else 0.5) * max(len(rows), 1)), layout='constrained')
            ax = fig.subplots()
            ticks = []
            for i, (_, r) in enumerate(rows.iterrows()):
                label = _label(table, r)
                colour, marker = looks[label]
                ticks.append(textwrap.fill(f"{label}{versus(str(r.vs))} (n={r['n']})", 44))
                if _num(r['delta']) is None:
                    ax.annotate(r['verdict'], (0, i), xytext=(6, 0), textcoords='offset points', va='center',
                                fontsize='small', color='0.4')
                    continue
                tested = _num(r['delta_ci_low']) is not None
                if tested:
                    ax.errorbar([r['delta']], [i], xerr=_yerr(r, 'delta', 'delta_ci_low', 'delta_ci_high'),
                                fmt='none', ecolor=colour, elinewidth=2, capsize=4, zorder=2)
                _marker(ax, r['delta'], i, colour, marker, filled=tested, size=9)
                p, q = _num(r['p_holm']), _num(r.get('p_equiv_holm'))
                text = r['verdict'] + (f' (Holm: p {_pv(p)}, equiv. p {_pv(q)})' if p is not None else '')
                if isinstance(r.get('flags'), str) and not r['verdict'].startswith('flagged'):
                    text += f"; {r['flags']}"
                if _num(r.get('higher')) is not None:
                    text += f"; {int(r['higher'])} of {int(r['pairs'])} seeds higher"
                ax.annotate(textwrap.fill(text, 60), (1.01, i), xycoords=('axes fraction', 'data'), va='center',
                            fontsize='small', annotation_clip=False)
            ax.axvline(0, color='0.2', linewidth=1, zorder=1)
            margin = table.meta['min_effect']
            ax.axvspan(-margin, margin, color='0.85', alpha=0.5, zorder=0, linewidth=0)
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(ticks)
            ax.set_ylim(-0.6, len(rows) - 0.4)
            base = ', '.join(f'{k}={labels.get(k, {}).get(v, v)}' for k, v in table.meta['baseline'].items())
            ax.set_xlabel(f"Δ {table.meta['metric_label']} vs baseline ({base}), family-adjusted CI; shaded: "
                          f"±{margin:g}, the smallest effect of interest")
            ax.grid(axis='y', visible=False)
            fig.suptitle(_title(spec, table), fontsize='medium')
        return _stem(name, table), fig, [
            "Bars: the interval of Δ at the Bonferroni level of its family (paired t over the seeds both points ran, "
            "else Welch's); shaded: ±min_effect, the smallest effect of interest; right: the verdict (Holm's "
            "correction within the family; equivalence by two one-sided tests), flags and the seeds on which the "
            "point is higher. A hollow marker has no interval (n = 1)."]
    return _per_grid(name, spec, tables, draw)


def ablation_seeds(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[Drawn]:
    """Every run: one column per point, a line joining each seed across the points, flagged runs ringed."""
    def draw(table: Table) -> Drawn:
        runs, looks = table.meta['seeds'], _looks(a, table)
        points = _points(table)
        labels = [_label(table, p) for _, p in points.iterrows()]
        keys = [tuple(str(p[ax]) for ax in table.meta['axes']) for _, p in points.iterrows()]
        position = {k: i for i, k in enumerate(keys)}
        with matplotlib.rc_context(_style()):
            fig = Figure(figsize=(max(6.4, 1.6 * len(keys) + 3.0), 4.6), layout='constrained')
            ax = fig.subplots()
            runs = runs.assign(_x=runs['_point'].map(lambda k: position.get(tuple(k))))
            for seed, group in runs.groupby(runs['seed'].astype(str), sort=True):
                group = group.sort_values('_x')
                ax.plot(group['_x'], group['value'], color='0.6', linewidth=1, zorder=1)
                ax.annotate(f'seed {seed}', (group['_x'].iloc[-1], group['value'].iloc[-1]), xytext=(6, 0),
                            textcoords='offset points', va='center', fontsize='x-small', color='0.4')
            for _, r in runs.iterrows():
                colour, marker = looks[labels[int(r['_x'])]]
                _marker(ax, r['_x'], r['value'], colour, marker, filled=not r['flag'], size=7)
                if r['flag']:
                    ax.plot([r['_x']], [r['value']], linestyle='none', marker='o', markersize=15,
                            markerfacecolor='none', markeredgecolor='crimson', markeredgewidth=1.4, zorder=4)
                    ax.annotate(r['flag'], (r['_x'], r['value']), xytext=(0, -14), textcoords='offset points',
                                ha='center', fontsize='x-small', color='crimson')
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([textwrap.fill(label, 18) for label in labels])
            ax.set_xlim(-0.5, len(keys) - 0.2)
            ax.set_ylabel(f"{table.meta['metric_label']}, every run")
            ax.grid(axis='x', visible=False)
            fig.suptitle(_title(spec, table), fontsize='medium')
        return _stem(name, table), fig, [
            'Every DONE run with a value: a grey line joins the runs of one seed across the points, so that a paired '
            'difference is the slope of a line; ringed: an outlier (kept in the test) or a run at chance (counted '
            'as diverged, left out), hollow with it.']
    return _per_grid(name, spec, tables, draw)


def _pareto(points: pd.DataFrame, x: str) -> List[int]:
    """Indices of the points no other point beats on both axes (fewer or equal MACs, higher or equal mean, one of
    them strictly), in order of MACs."""
    front = []
    for i, r in points.iterrows():
        dominated = ((points[x] <= r[x]) & (points['mean'] >= r['mean'])
                     & ((points[x] < r[x]) | (points['mean'] > r['mean']))).any()
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points.loc[i, x], -points.loc[i, 'mean']))


def ablation_macs(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[Drawn]:
    conventions = list(spec.get('conventions') or ['paper', 'fvcore'])

    def draw(table: Table) -> Drawn:
        looks = _looks(a, table)
        points = _points(table)
        with matplotlib.rc_context(_style()):
            fig = Figure(figsize=(5.2 * len(conventions) + 2.6, 4.6), layout='constrained')
            axes = fig.subplots(1, len(conventions), squeeze=False, sharey=True)[0]
            handles: Dict[str, Any] = {}
            for ax, conv in zip(axes, conventions, strict=True):
                column = f'macs_{conv}'
                rows = points[points[column].notna() & points['mean'].notna()] if column in points else points[:0]
                if rows.empty:
                    ax.text(0.5, 0.5, f'no {conv} MACs or no finished run', ha='center', va='center',
                            transform=ax.transAxes)
                    ax.set_title(f'{conv} convention')
                    continue
                rows = rows.assign(_x=rows[column].astype(float) / 1e6)
                # points with equal MACs are spread by a small share of the MAC range, so that the spread never
                # rivals the differences between the points' true MACs
                span = (rows['_x'].max() - rows['_x'].min()) / rows['_x'].mean()
                xs = _dodge(ax, list(rows['_x']), min(_DODGE, 0.04 * span) if span else _DODGE)
                for x, (_, r) in zip(xs, rows.iterrows(), strict=True):
                    label = _label(table, r)
                    colour, marker = looks[label]
                    ax.errorbar([x], [r['mean']], yerr=_yerr(r, 'mean', 'ci_low', 'ci_high'), fmt='none',
                                ecolor=colour, elinewidth=1.5, capsize=3, zorder=2)
                    _marker(ax, x, r['mean'], colour, marker, filled=True, size=9)
                    handles[label] = _handle(f"{label} (n={r['n']})", colour, marker, True)
                front = _pareto(rows, '_x')
                fx = [xs[list(rows.index).index(i)] for i in front]
                fy = [rows.loc[i, 'mean'] for i in front]
                ax.plot(fx, fy, drawstyle='steps-post', color='0.35', linestyle='--', linewidth=1.2, zorder=1)
                ax.plot(fx, fy, linestyle='none', marker='o', markersize=16, markerfacecolor='none',
                        markeredgecolor='0.35', markeredgewidth=1.0, zorder=1)
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
                ax.margins(x=0.15, y=0.15)
                ax.set_xlabel(textwrap.fill(f"MMACs per image, {a.conventions[conv]['label']}", 48))
                ax.set_title(f'{conv} convention')
                ax.yaxis.set_tick_params(labelleft=True)
            axes[0].set_ylabel(f"{table.meta['metric_label']}, mean and 95 % CI")
            handles['front'] = _handle('Pareto front (on the means)', '0.35', 'o', False, '--')
            _legend(fig, list(handles.values()), f"grid {table.meta['grid']}, all measured here")
            fig.suptitle(_title(spec, table), fontsize='medium')
        return _stem(name, table), fig, [
            'Pareto front: the points no other point beats on both MACs and mean accuracy (ringed, dashed steps). '
            'It is drawn on the means: where intervals overlap, the order along it is not resolved (the table '
            'gives the tests). Points with equal MACs are spread apart by a fraction of a percent around a dotted '
            'line at their MACs.']
    return _per_grid(name, spec, tables, draw)


def ablation_curves(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[Drawn]:
    panels = (('val_top1', 'val top-1 (%)'), ('train_loss', 'train loss'))

    def draw(table: Table) -> Drawn:
        curves, notes = table.meta['curves'], list(table.meta['curve_notes'])
        if curves.empty:
            return _stem(name, table), _empty(_title(spec, table), ' '.join(notes) or 'No per-epoch log lines.'), \
                notes
        looks = _looks(a, table)
        axes_names = table.meta['axes']
        with matplotlib.rc_context(_style()):
            fig = Figure(figsize=(5.2 * len(panels) + 2.6, 4.4), layout='constrained')
            axes = fig.subplots(1, len(panels), squeeze=False)[0]
            handles: Dict[str, Any] = {}
            for _, point in _points(table).iterrows():
                key = tuple(str(point[ax]) for ax in axes_names)
                runs = curves[curves['_point'].map(tuple) == key]
                if runs.empty:
                    continue
                label = _label(table, point)
                colour, marker = looks[label]
                for ax, (column, _) in zip(axes, panels, strict=True):
                    by = runs.groupby('epoch')[column].agg(['mean', 'min', 'max', 'count']).dropna(subset=['mean'])
                    ax.plot(by.index, by['mean'], color=colour, marker=marker, markersize=5, linewidth=1.6)
                    if (by['count'] > 1).any():
                        ax.fill_between(by.index, by['min'], by['max'], color=colour, alpha=0.18, linewidth=0)
                seeds = runs['seed'].nunique(dropna=False)
                handles[label] = _handle(f'{label} ({seeds} seed{"s" if seeds != 1 else ""})', colour, marker,
                                         True, '-')
            for ax, (_, ylabel) in zip(axes, panels, strict=True):
                ax.set_xlabel('epoch')
                ax.set_ylabel(ylabel)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _legend(fig, list(handles.values()), 'line: mean over seeds\nband: min to max over seeds')
            fig.suptitle(_title(spec, table), fontsize='medium')
        return _stem(name, table), fig, [
            "Learning curves from each DONE cell's log.jsonl: the line is the mean over seeds, the band spans the "
            'lowest to the highest seed at each epoch (a description of the runs, not a confidence band).', *notes]
    return _per_grid(name, spec, tables, draw)


def ladder_agreement(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[Drawn]:
    from .ladders import ladder_agreement_figure  # fat.report.ladders builds on this module's neighbours
    return ladder_agreement_figure(name, spec, a, tables)


GRID_BUILDERS: Dict[str, Callable[..., List[Drawn]]] = {
    'ablation_delta': ablation_delta, 'ablation_seeds': ablation_seeds, 'ablation_macs': ablation_macs,
    'ablation_curves': ablation_curves, 'ladder_agreement': ladder_agreement}

