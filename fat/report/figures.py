"""Figures: each definition of `analysis/figures.yaml` drawn from the tables' data (so a figure shows exactly the
numbers of its table), with the appearance of `analysis/models.yaml`. Claimed (published) points are hollow,
points measured here are filled; the MAC convention is in the axis label; legends sit outside the data.

Output is reproducible: no timestamps or software versions in the files' metadata, so the same inputs and the same
matplotlib give byte-identical PNG and PDF files.
"""
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from fat.io import atomic_path

from .analysis import Analysis
from .tables import Table

__all__ = ['build_figures', 'write_figure']

_METADATA = {'png': {'Software': None}, 'pdf': {'Creator': None, 'Producer': None, 'CreationDate': None}}
_HOLLOW, _FILLED = 'hollow: published claim', 'filled: measured here'
_DODGE = 0.006  # relative x offset between points that share an x value
_LEGEND_ROWS = 16  # a longer legend goes below the axes, in columns


def _style() -> Dict[str, Any]:
    rc = {**sns.axes_style('whitegrid'), **sns.plotting_context('paper', font_scale=1.35)}
    rc.update({'pdf.fonttype': 42, 'legend.frameon': False,  # 42: TrueType fonts, text stays editable in the PDF
               'axes.titleweight': 'bold', 'figure.dpi': 100, 'savefig.dpi': 200, 'lines.markersize': 7})
    return rc


def _log_x(ax: Axes, values: Sequence[float], min_ratio: float = 4.0) -> None:
    """Log x axis with plain-number ticks (0.5, 1, 2 rather than 10^-0.3), spanning at least `min_ratio` so that
    a few close points still get readable ticks."""
    ax.set_xscale('log')
    lo, hi = min(values) / 1.25, max(values) * 1.25
    if hi / lo < min_ratio:
        centre = math.sqrt(lo * hi)
        lo, hi = centre / math.sqrt(min_ratio), centre * math.sqrt(min_ratio)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _dodge(ax: Axes, xs: Sequence[float], spread: float) -> List[float]:
    """Points that share an x value, spread `spread` (relative) apart around it, in order: equal MACs (FASA variants
    that differ only in parameter-free gating) would otherwise hide each other. A dotted line marks the true x."""
    out = list(xs)
    for x in sorted(set(xs)):
        same = [i for i, v in enumerate(xs) if v == x]
        if len(same) > 1:
            ax.axvline(x, color='0.6', linestyle=':', linewidth=1, zorder=1)
            for j, i in enumerate(same):
                out[i] = x * (1 + spread * (j - (len(same) - 1) / 2))
    return out


def _marker(ax: Axes, x: float, y: float, colour: Any, marker: str, filled: bool, size: float = 8, **kw: Any) -> None:
    ax.plot([x], [y], linestyle='none', marker=marker, markersize=size, markeredgewidth=1.6, color=colour,
            markerfacecolor=colour if filled else 'white', zorder=3, **kw)


def _handle(label: str, colour: Any, marker: str, filled: bool, line: str = 'none') -> Line2D:
    return Line2D([], [], color=colour, marker=marker, linestyle=line, markersize=7, markeredgewidth=1.6,
                  markerfacecolor=colour if filled else 'white', label=label)


def _legend(fig: Figure, handles: Sequence[Line2D], title: str) -> None:
    """One legend for the whole figure, outside the axes: on the right, or below them in columns when it is
    longer than the figure is tall."""
    kw: Dict[str, Any] = dict(loc='center left', bbox_to_anchor=(1.0, 0.5))
    if len(handles) > _LEGEND_ROWS:
        kw = dict(loc='upper center', bbox_to_anchor=(0.5, 0.0), ncols=math.ceil(len(handles) / _LEGEND_ROWS))
    fig.legend(handles=list(handles), title=title, alignment='left', fontsize='small', title_fontsize='small',
               handlelength=2.2, borderaxespad=0.3, **kw)


def _num(value: Any) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _panels(n: int, width: float = 5.2, height: float = 4.4) -> Tuple[Figure, List[Axes]]:
    """`n` panels, two per row, sharing the y axis (top-1 is comparable across panels, x is not)."""
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout='constrained')
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _plain(text: str) -> str:
    """Markdown subtitle as figure text: no backticks, no final period."""
    return text.replace('`', '').rstrip('.')


def _tables(tables: Sequence[Table], definition: str) -> List[Table]:
    return [t for t in tables if t.definition == definition]


def _empty(fig_title: str, message: str) -> Figure:
    """A placeholder saying why there is nothing to plot (the figure's file still exists, so links hold)."""
    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(6.4, 2.0), layout='constrained')
        ax = fig.subplots()
        ax.axis('off')
        ax.text(0.5, 0.5, textwrap.fill(message, 70), ha='center', va='center', fontsize='medium')
        fig.suptitle(fig_title)
    return fig


# -- accuracy vs MACs (FAT family as a line, peers as points, measured ablation points)

def _macs(row: pd.Series, conv: str, claimed: bool) -> Optional[float]:
    """GMACs of a classification-table row under `conv`: the claimed figure for a claim made in that convention,
    else the count measured here."""
    if claimed and row['macs_claimed_convention'] == conv:
        return _num(row['macs_claimed'])
    return _num(row.get(f'macs_{conv}'))


def _accuracy_panel(ax: Axes, conv: str, data: pd.DataFrame, a: Analysis, handles: Dict[str, Line2D]) -> List[str]:
    """One convention's panel; returns notes on what could not be drawn."""
    fat = [mdl for mdl in data.index if a.models[mdl]['family'] == 'FAT']
    colour = a.models[fat[0]]['colour'] if fat else 'k'
    xs_all: List[float] = []
    for claimed, column in ((True, 'top1_claimed'), (False, 'top1_measured')):
        pts = [(_macs(data.loc[mdl], conv, claimed), _num(data.loc[mdl, column]), mdl) for mdl in fat]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        xs_all += [p[0] for p in pts]
        style = '--' if claimed else '-'
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, color=colour, zorder=2, linewidth=1.6)
        for x, y, mdl in pts:
            _marker(ax, x, y, colour, 'o', filled=not claimed)
            if claimed:  # B0..B3 under the claimed line, right of the point
                ax.annotate(a.label(mdl).replace('FAT-', ''), (x, y), textcoords='offset points', xytext=(7, -12),
                            ha='left', fontsize='small', color=colour)
        label = f"FAT ({'claimed' if claimed else 'trained here'})"
        handles[label] = _handle(label, colour, 'o', not claimed, style)
    missing = []
    for mdl in (m for m in data.index if m not in fat):
        x, y = _macs(data.loc[mdl], conv, False), _num(data.loc[mdl, 'top1_claimed'])
        if x is None or y is None:
            missing.append(a.label(mdl))
            continue
        look = a.models[mdl]
        xs_all.append(x)
        _marker(ax, x, y, look['colour'], look['marker'], filled=False)
        handles[look['label']] = _handle(look['label'], look['colour'], look['marker'], False)
    if xs_all:
        _log_x(ax, xs_all)
    ax.set_xlabel(textwrap.fill(f"GMACs per image (log scale), {a.conventions[conv]['label']}", 44))
    ax.set_ylabel('ImageNet-1K top-1 (%)')
    ax.set_title(f'{conv} convention')
    return [f"{conv} panel: no measured {conv} MACs for {', '.join(missing)} (not drawn)."] if missing else []


def _ablation_zoom(ax: Axes, main: Axes, conv: str, points: pd.DataFrame, data: pd.DataFrame, a: Analysis,
                   handles: Dict[str, Line2D]) -> None:
    """The ablation cells, whose MACs differ by a few percent at most, on their own linear axes under the main
    panel (FAT models within their MAC range drawn again for reference); a frame on the main panel marks the
    region."""
    xs = _dodge(ax, [float(v) / 1e9 for v in points[f'macs_{conv}']], _DODGE)
    for x, (_, r) in zip(xs, points.iterrows(), strict=True):
        preset = str(r.get('fasa', ''))
        look = a.variants.get(preset, {'marker': 'o', 'label': preset})
        low, high = _num(r['ci_low']), _num(r['ci_high'])
        yerr = [[r['mean'] - low], [high - r['mean']]] if low is not None and high is not None else [[0], [0]]
        ax.errorbar([x], [r['mean']], yerr=yerr, fmt='none', ecolor='0.3', elinewidth=1, capsize=2, zorder=2)
        _marker(ax, x, r['mean'], '0.25', look['marker'], filled=True)
        label = f"ablation: {look['label']} (trained here)"
        handles[label] = _handle(label, '0.25', look['marker'], True)
    lo, hi = min(xs) / 1.02, max(xs) * 1.02
    for mdl in (m for m in data.index if a.models[m]['family'] == 'FAT'):
        for claimed, column in ((True, 'top1_claimed'), (False, 'top1_measured')):
            x, y = _macs(data.loc[mdl], conv, claimed), _num(data.loc[mdl, column])
            if x is not None and y is not None and lo <= x <= hi:
                _marker(ax, x, y, a.models[mdl]['colour'], 'o', filled=not claimed)
    ax.margins(x=0.15, y=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.set_xlabel(f'GMACs per image, {conv} convention')
    ax.set_ylabel('top-1 (%), mean, 95 % CI')
    ax.set_title(f'ablation cells, zoomed ({conv})', fontsize='medium')
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    main.indicate_inset((x0, y0, x1 - x0, y1 - y0), edgecolor='0.4')


def accuracy_vs_macs(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[
        Tuple[str, Figure, List[str]]]:
    """FAT as lines (claimed dashed/hollow, trained here solid/filled), peers as hollow points, one panel per MAC
    convention; ablation cells of the ImageNet grids as filled points in a zoomed panel under each."""
    data = _tables(tables, spec['table'])[0].data.set_index('model')
    ablations = [t.data for t in _tables(tables, spec.get('ablation_table', '')) if not t.data.empty
                 and 'fasa' in t.data and t.data['grid'].iloc[0] in (spec.get('ablation_grids') or [])]
    conventions = list(spec['conventions'])
    # one row per point (a point compared along several axes has several rows), FASA variants only
    points = (pd.concat(ablations)[lambda f: f['mean'].notna()].drop_duplicates(['grid', 'fasa'])
              if ablations else pd.DataFrame())
    rows = 1 if points.empty else 2
    notes: List[str] = []
    handles: Dict[str, Line2D] = {}
    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(5.2 * len(conventions), 4.4 + 3.2 * (rows - 1)), layout='constrained')
        axes = fig.subplots(rows, len(conventions), squeeze=False, sharey='row', height_ratios=[1.0, 0.75][:rows])
        for j, conv in enumerate(conventions):
            notes += _accuracy_panel(axes[0][j], conv, data, a, handles)
            if rows == 2:
                _ablation_zoom(axes[1][j], axes[0][j], conv, points[points[f'macs_{conv}'].notna()], data, a,
                               handles)
        for ax in axes.ravel():
            ax.yaxis.set_tick_params(labelleft=True)
        _legend(fig, list(handles.values()), f'{_HOLLOW}\n{_FILLED}')
        fig.suptitle(spec['title'])
    notes.append("FAT claims are drawn at the claimed MACs where the claim uses the panel's convention, else at the "
                 'MACs measured here; peers at MACs measured here; in the zoomed ablation panels, variants with equal '
                 'MACs are spread apart by a fraction of a percent around a dotted line at their MACs.')
    return [(name, fig, notes)]


# -- throughput vs accuracy (the speed plot)

def throughput_vs_accuracy(name: str, spec: Mapping[str, Any], a: Analysis, tables: Sequence[Table]) -> List[
        Tuple[str, Figure, List[str]]]:
    speed = _tables(tables, spec['table'])[0]
    top1 = _tables(tables, spec['accuracy_table'])[0].data.set_index('model')['top1_claimed']
    envs = [c for c in speed.data.columns if c[:1] in 'MP' and c[1:].isdigit()]
    envs = [e for e in envs if speed.data[e].notna().any()]
    if not envs:
        return [(name, _empty(spec['title'], 'No throughput measured or claimed for these models.'), [])]
    with matplotlib.rc_context(_style()):
        fig, axes = _panels(len(envs))
        handles = {'published': _handle('throughput published', '0.45', 'o', False),
                   'measured': _handle('throughput measured here', '0.45', 'o', True)}
        for ax, env in zip(axes, envs, strict=True):
            measured = env.startswith('M')
            xs = []
            for _, r in speed.data.iterrows():
                x, y = _num(r[env]), _num(top1.get(r['model']))
                if x is None or y is None:
                    continue
                look = a.models[r['model']]
                xs.append(x)
                low, high = speed.meta.get('ranges', {}).get(env, {}).get(r['model'], (x, x))
                if high > low:  # the range over the rounds of the run
                    ax.plot([low, high], [y, y], color=look['colour'], linewidth=1.2, alpha=0.6, zorder=2)
                    xs += [low, high]
                _marker(ax, x, y, look['colour'], look['marker'], filled=measured)
                if r['model'] in speed.meta.get('contended', {}).get(env, ()):  # shown, never ranked
                    ax.plot([x], [y], marker='x', color='black', markersize=9, linestyle='none', zorder=4)
                    handles.setdefault('contended', _handle('contended (not ranked)', 'black', 'x', True))
                handles.setdefault(look['label'], _handle(look['label'], look['colour'], look['marker'], False))
            if xs:
                _log_x(ax, xs)
            ax.set_xlabel('throughput (images/s, log scale)')
            ax.set_ylabel('ImageNet-1K top-1 (%), published')
            ax.yaxis.set_tick_params(labelleft=True)
            where = 'measured here' if measured else 'published'
            ax.set_title(textwrap.fill(f"{env} ({where}): {speed.meta['envs'][env]}", 52), fontsize='small',
                         fontweight='normal')
        _legend(fig, list(handles.values()), 'one panel per environment')
        fig.suptitle(spec['title'])
    return [(name, fig, ['Top-1: the published figure of each model. Throughput: one environment per panel, '
                         'filled where measured here, hollow where published; a horizontal bar through a measured '
                         "point is the range of timm's statistic over the rounds of its run; a black cross marks a "
                         'contended figure (fat/contention.py), which no rank statement uses.'])]


BUILDERS: Dict[str, Callable[..., List[Tuple[str, Figure, List[str]]]]] = {
    'accuracy_vs_macs': accuracy_vs_macs, 'throughput_vs_accuracy': throughput_vs_accuracy}


def build_figures(a: Analysis, tables: Sequence[Table]) -> List[Tuple[str, Figure, List[str]]]:
    """(file stem, figure, notes) for every definition of `analysis/figures.yaml`."""
    from .grid_figures import GRID_BUILDERS  # the per-grid figures build on this module's helpers
    builders = {**BUILDERS, **GRID_BUILDERS}
    out = []
    for name, spec in a.figures.items():
        kind = spec.get('kind')
        if kind not in builders:
            raise ValueError(f"figures.yaml: {name}.kind: {kind!r} is not one of {', '.join(builders)}")
        out += builders[kind](name, spec, a, tables)
    return out


def write_figure(stem: str, fig: Figure, out_dir: Path) -> List[Path]:
    """results/figures/<stem>.{png,pdf} with reproducible metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ('png', 'pdf'):
        path = out_dir / f'{stem}.{ext}'
        with matplotlib.rc_context(_style()), atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=_METADATA[ext], bbox_inches='tight', pad_inches=0.1)
        paths.append(path)
    return paths
