"""Tables: each definition of `analysis/tables.yaml` built from the claims and the measurements, every measured
number beside the claim it checks, and written as Markdown, LaTeX and CSV.

A builder returns `Table`s: `data` holds the raw values (the CSV, and what the figures plot), `display` the
formatted cells under the definition's headers ("—" where nothing was claimed or measured), `notes` what a reader
needs to trust the numbers (conventions, environments, what is missing and why).
"""
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from fat.contention import SPREAD_MAX
from fat.io import atomic_path, write_text_atomic

from .analysis import Analysis, Claim
from .measured import BENCH_KEYS, Measurements, seed_stats

__all__ = ['Table', 'build_tables', 'write_table', 'DASH']

DASH = '—'  # a cell with no source: nothing claimed, nothing measured


@dataclass
class Table:
    """One table: raw data (the CSV, under the builder's column ids), display cells (under the definition's headers),
    notes and the sources its claims cite, numbered in order of first use."""
    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    subtitle: str = ''
    definition: str = ''  # the tables.yaml entry that built it
    meta: Dict[str, Any] = field(default_factory=dict)  # what figures need beyond `data` (environment labels)


# -- formatting

def _num(value: Any, fmt: str) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _claim(claim: Optional[Claim]) -> str:
    """A claimed number exactly as its source prints it (YAML keeps 25.0 and 29 apart)."""
    return DASH if claim is None else str(claim.value)


def _size(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return '×'.join(str(v) for v in value)
    return DASH if value is None or value != value else str(value)


def _mean_std(mean: Any, std: Any, fmt: str = '.2f') -> str:
    if mean is None or mean != mean:
        return DASH
    return format(mean, fmt) if std is None or std != std else f'{mean:{fmt}} ± {std:{fmt}}'


class _Citations:
    """Numbers the sources a table cites, in order of first use."""

    def __init__(self) -> None:
        self.keys: List[str] = []

    def cite(self, *claims: Optional[Claim]) -> List[str]:
        """The source keys of `claims`, numbered if new."""
        keys = list(dict.fromkeys(s for c in claims if c is not None for s in c.sources))
        for key in keys:
            self.number(key)
        return keys

    def number(self, key: str) -> int:
        if key not in self.keys:
            self.keys.append(key)
        return self.keys.index(key) + 1

    def numbers(self, keys: Sequence[str]) -> str:
        return ', '.join(str(self.number(k)) for k in keys) or DASH


def _frames(spec: Mapping[str, Any], rows: List[Dict[str, Any]], cells: List[Dict[str, str]]) -> Tuple[
        pd.DataFrame, pd.DataFrame]:
    """(data, display): the raw rows as they are (the CSV), the formatted cells under the definition's headers."""
    columns = dict(spec['columns'])
    data = pd.DataFrame(rows, columns=list(rows[0]) if rows else list(columns))
    display = pd.DataFrame([[c.get(k, DASH) for k in columns] for c in cells], columns=list(columns.values()))
    return data, display


def _not_found(spec: Mapping[str, Any], a: Analysis) -> List[str]:
    return [f'Not found, so not claimed here (docs/sources.md): {a.not_found[k]}.' for k in spec.get('not_found') or []]


def _convention_notes(a: Analysis, names: Sequence[str]) -> List[str]:
    return [f"MACs `{n}`: {a.conventions[n]['description']}" for n in dict.fromkeys(names) if n in a.conventions]


# -- benchmark environments

def _present(value: Any) -> bool:
    return value is not None and value == value and str(value) not in ('', 'nan', 'None')


def _true(value: Any) -> bool:
    return str(value).lower() in ('true', '1')


def _threads(value: Any) -> Optional[str]:
    if not _present(value):
        return None
    n = int(float(value))
    return f"{n} thread{'s' if n != 1 else ''}"


def _env_label(env: Mapping[str, Any]) -> str:
    """`setting as_built, AMD EPYC (cpu), fp32, nchw, batch 1, 1 thread, torch 2.14.1, timm's statistic (mean step),
    3 rounds of 20 steps`."""
    device = f"{env['device']} ({env['device_type']})" if _present(env.get('device_type')) else env.get('device')
    rounds = int(float(env['rounds'])) if _present(env.get('rounds')) else 1
    if _present(env.get('throughput_mean')):
        statistic = "timm's statistic (mean step)" + (
            f", {rounds} rounds of {int(float(env['iters']))} steps" if _present(env.get('iters')) else '')
    else:
        statistic = 'median step'
    parts = [f"setting {env['setting']}" if _present(env.get('setting')) else None,
             device, env.get('precision'), 'TF32' if _true(env.get('tf32')) else None, env.get('layout'),
             f"torch.compile {env['compiled']}" if _present(env.get('compiled')) else None,
             {'peers': 'peers reparameterized'}.get(str(env.get('reparam')),
                                                    'reparameterized' if _true(env.get('reparam')) else None),
             'native kernels' if _true(env.get('native_kernels')) else None,
             'tuned malloc' if env.get('malloc') == 'tuned' else None,
             f"batch {int(float(env['batch_size']))}" if _present(env.get('batch_size')) else None,
             _threads(env.get('threads')),
             f"torch {env['torch']}" if _present(env.get('torch')) else None, statistic]
    return ', '.join(str(p) for p in parts if _present(p))


def _bench_envs(m: Measurements, mode: str) -> List[Tuple[str, pd.DataFrame]]:
    """(label, rows) per benchmark environment of `mode`: per file and per value of `BENCH_KEYS`."""
    rows = m.bench[m.bench['mode'] == mode]
    keys = ['file', *BENCH_KEYS]
    return [(_env_label(group.iloc[0]), group)
            for _, group in rows.groupby([rows[k].astype(str) for k in keys], sort=True, dropna=False)]


def _bench_row(group: pd.DataFrame, model: str, img_size: int) -> Optional[pd.Series]:
    """The row of the model as published (official FASA, no other model argument) at `img_size`."""
    rows = group[(group['model'] == model) & (group['fasa'] == 'fasa')
                 & (pd.to_numeric(group['img_size'], errors='coerce') == img_size)]
    return None if rows.empty else rows.iloc[0]


def _bench_value(group: pd.DataFrame, model: str, img_size: int) -> Optional[float]:
    """Throughput of the model: timm's statistic (mean step) where the row has it, else the median step's."""
    row = _bench_row(group, model, img_size)
    if row is None:
        return None
    return float(row['throughput_mean'] if _present(row.get('throughput_mean')) else row['throughput'])


def _bench_range(group: pd.DataFrame, model: str, img_size: int) -> Optional[Tuple[float, float]]:
    """(lowest, highest) of timm's statistic over the rounds of a run, or None for one round."""
    rounds = _bench_rounds(group, model, img_size)
    return (min(rounds), max(rounds)) if len(rounds) > 1 else None


def _bench_cell(group: pd.DataFrame, model: str, img_size: int) -> str:
    """The throughput and, measured over several rounds, the range across them in % of their median; 'contended'
    where a round stayed contended (`fat.contention`)."""
    value = _bench_value(group, model, img_size)
    row = _bench_row(group, model, img_size)
    spread = row.get('spread_pct') if row is not None else None
    fmt = '.2f' if value is not None and value < 10 else '.1f'  # batch-1 CPU figures are a few img/s
    flag = ' contended' if row is not None and _present(row.get('contended')) else (
        ' unsteady' if _present(spread) and float(spread) > SPREAD_MAX else '')
    return _num(value, fmt) + (f' ({float(spread):.0f} %)' if _present(spread) else '') + flag


def _bench_rounds(group: pd.DataFrame, model: str, img_size: int) -> List[float]:
    """timm's statistic in each round of the model's row; its one figure for a row without per-round values."""
    row = _bench_row(group, model, img_size)
    if row is None:
        return []
    try:
        return [float(v) for v in str(row.get('round_throughputs')).split(';')]
    except ValueError:
        return [float(_bench_value(group, model, img_size))]


# -- builders

def _grid_stats(m: Measurements, grid: Optional[str], metric: str) -> Optional[pd.DataFrame]:
    """Seed statistics of the official FASA per model in a collected grid, or None without the grid."""
    frame = m.grid(grid) if grid else None
    if frame is None or 'model' not in frame.columns:
        return None
    if 'fasa' in frame.columns:
        frame = frame[frame['fasa'].fillna('fasa') == 'fasa']
    return seed_stats(frame, ['model'], metric)


def classification(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """FAT and peers: params, MACs (claimed and measured per convention), throughput, top-1 claimed vs measured."""
    task, grid, metric = spec['task'], spec.get('grid'), spec.get('metric', 'top1')
    stats = _grid_stats(m, grid, metric)
    envs = _bench_envs(m, spec.get('throughput_mode', 'infer'))
    models = [*spec['models'], *(spec.get('peers') or [])]
    env_label, env_rows = max(envs, key=lambda e: sum(
        _bench_value(e[1], x, a.models[x]['img_size']) is not None for x in models)) if envs else ('', None)
    cite = _Citations()
    rows, cells = [], []
    conventions = []
    for model in models:
        size = a.models[model]['img_size']
        params_c, macs_c, top1_c = (a.claimed(model, task, f, size) for f in ('params_m', 'macs_g', 'top1'))
        params = m.params(model, size)
        macs = {c: m.macs(model, c, size) for c in ('paper', 'fvcore')}
        thr = _bench_value(env_rows, model, size) if env_rows is not None else None
        top1 = stats.loc[model] if stats is not None and model in stats.index else None
        delta = top1['mean'] - top1_c.value if top1 is not None and top1_c is not None else None
        sources = cite.cite(params_c, macs_c, top1_c)
        if macs_c is not None:
            conventions.append(macs_c.convention)
        rows.append(dict(
            model=model, img_size=size,
            params_claimed=params_c and params_c.value, params_measured=params and params / 1e6,
            macs_claimed=macs_c and macs_c.value, macs_claimed_convention=macs_c and macs_c.convention,
            macs_paper=macs['paper'] and macs['paper'] / 1e9, macs_fvcore=macs['fvcore'] and macs['fvcore'] / 1e9,
            throughput=thr, throughput_env=env_label if thr is not None else None,
            top1_claimed=top1_c and top1_c.value,
            top1_measured=None if top1 is None else round(top1['mean'], 4),
            top1_std=None if top1 is None else round(top1['std'], 4), top1_n=None if top1 is None else int(top1['n']),
            top1_delta=None if delta is None else round(delta, 4), sources=' '.join(sources)))
        cells.append(dict(
            model=a.label(model), img_size=_size(size), params_claimed=_claim(params_c),
            params_measured=_num(params and params / 1e6, '.2f'),
            macs_claimed=DASH if macs_c is None else f'{_claim(macs_c)} ({macs_c.convention})',
            macs_paper=_num(macs['paper'] and macs['paper'] / 1e9, '.3f'),
            macs_fvcore=_num(macs['fvcore'] and macs['fvcore'] / 1e9, '.3f'),
            throughput=_num(thr, '.1f'), throughput_env=env_label if thr is not None else DASH,
            top1_claimed=_claim(top1_c),
            top1_measured=DASH if top1 is None else f"{_mean_std(top1['mean'], top1['std'])} (n={int(top1['n'])})",
            top1_delta=_num(delta, '+.2f'), sources=cite.numbers(sources)))
    data, display = _frames(spec, rows, cells)
    notes = []
    if stats is None:
        notes.append(f'Top-1 measured: no collected runs (no results/{grid}-<environment>.csv, or one without a '
                     f'`model` column; `fat sweep collect ablations/{grid}.yaml`).')
    else:
        notes.append(f'Top-1 measured: final {metric} of the DONE cells of results/{grid}-*.csv, mean ± sample std '
                     'over seeds (n runs); Δ = measured − claimed.')
    if m.complexity.empty:
        notes.append('Params and GMACs measured: no complexity records found (the `fat flops --pins` file, '
                     'results/flops-*.jsonl from `fat flops MODEL... --json`).')
    else:
        missing = [a.label(x) for x in models if m.params(x, a.models[x]['img_size']) is None]
        notes.append('Params and GMACs measured: `fat flops` (fat/complexity.py), one image at the Res. column'
                     + (f"; not counted for {', '.join(missing)}" if missing else '') + '.')
    notes.append(f'Throughput: inference, measured here on {env_label} (`fat bench`).' if env_rows is not None
                 else 'Throughput: no inference benchmark file in results/ (`fat speed` writes results/bench-*.csv).')
    notes += _convention_notes(a, ['paper', 'fvcore', *conventions])
    notes += _not_found(spec, a)
    return [Table(name, spec['title'], data, display, notes, cite.keys)]


def speed(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """Throughput per model and environment: measured here (bench files, M columns) and published (P columns)."""
    mode = spec.get('mode', 'infer')
    models = [*spec['models'], *(spec.get('peers') or [])]
    measured = [(f'M{i + 1}', label, group) for i, (label, group) in enumerate(_bench_envs(m, mode))]
    published = [(f'P{j + 1}', key) for j, key in enumerate(spec.get('sources') or [])]
    cite = _Citations()
    rows, cells = [], []
    ranges: Dict[str, Dict[str, Tuple[float, float]]] = {env: {} for env, _, _ in measured}
    for model in models:
        size = a.models[model]['img_size']
        row: Dict[str, Any] = dict(model=model, img_size=size)
        cell = dict(model=a.label(model), img_size=_size(size))
        for env, _, group in measured:
            row[env] = _bench_value(group, model, size)
            cell[env] = _bench_cell(group, model, size)
            spread = _bench_range(group, model, size)
            if spread is not None:
                ranges[env][model] = spread
        for env, key in published:
            claim = a.claimed(model, spec['task'], 'throughput', size, sources=[key])
            row[env], cell[env] = claim and claim.value, _claim(claim)
        rows.append(row)
        cells.append(cell)
    columns = {**spec['columns'], **{env: f'{env} img/s' for env, _, _ in measured},
               **{env: f'{env} img/s' for env, _ in published}}
    data, display = _frames({'columns': columns}, rows, cells)
    envs = {env: label for env, label, _ in measured}
    notes = [f"{env}: {label} (measured here, {', '.join(sorted(group['file'].unique()))})."
             for env, label, group in measured]
    if any(_present(v) for _, _, group in measured for v in group['spread_pct']):
        notes.append('(x %): the run-to-run spread of a figure measured in several rounds of one run (round-robin '
                     "over the column's models): the range of timm's statistic over the rounds, in % of their median.")
    if not measured:
        notes.append(f'Measured here: no {mode} benchmark file in results/ (`fat speed` writes results/bench-*.csv).')
    contended = {env: sorted(set(group.loc[group['contended'].map(_present), 'model'])) for env, _, group in measured}
    if any(contended.values()):
        notes.append('contended: a round of the figure got less than 90 % of a core or ran a calibration kernel more '
                     'than 10 % slow, and stayed so when re-timed (fat/contention.py; the reasons are in the CSV). '
                     'Shown, never ranked.')
    if any(_present(s) and float(s) > SPREAD_MAX for _, _, group in measured for s in group['spread_pct']):
        notes.append(f'unsteady: the rounds of the figure span more than {SPREAD_MAX:.0f} % though none was found '
                     'contended. Shown, never ranked.')
    unchecked = [env for env, _, group in measured if not group['round_cpu_shares'].map(_present).any()]
    if unchecked:
        notes.append(f"{', '.join(unchecked)}: measured before contention checks were recorded (no calibration "
                     'record): shown, not ranked.')
    for env, key in published:
        src = a.sources[key]
        claims = a.claims[(a.claims['source'] == key) & a.claims['model'].isin(models)]
        batches = ', '.join(str(b) for b in sorted(claims['batch_size'].dropna().unique()))
        details = [src.get('device'), src.get('precision'), src.get('layout'),
                   'torch.compile' if src.get('compiled') else None, src.get('software'),
                   f'batch {batches}' if batches else None]
        envs[env] = ', '.join(str(d) for d in details if d)
        notes.append(f'{env}: {envs[env]} (published [{cite.number(key)}]; other hardware than the M columns: '
                     'compare within a column, not across).')
    notes += _not_found(spec, a)
    meta = {'envs': envs, 'ranges': ranges, 'contended': contended}
    tables = [Table(name, spec['title'], data, display, notes, cite.keys, meta=meta)]
    if spec.get('ranks'):
        tables.append(_speed_ranks(f'{name}_ranks', spec, a, m, measured))
    return tables


def _speed_ranks(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements,
                 measured: Sequence[Tuple[str, str, pd.DataFrame]]) -> Table:
    """Each FAT model against the peers of its MAC class in each measured column (`fat.report.speed_ranks`)."""
    from .speed_ranks import RULE, Timed, figure_problem, rank_row
    within, convention = float(spec['ranks']['within_macs']), spec['ranks']['convention']

    def macs(model: str) -> Optional[float]:
        return m.macs(model, convention, a.models[model]['img_size'])

    rows, cells, skipped = [], [], []
    for env, _, group in measured:
        timed = {}
        for model in [*spec['models'], *(spec.get('peers') or [])]:
            size = a.models[model]['img_size']
            value = _bench_value(group, model, size)
            if value is not None:
                timed[model] = Timed(model, a.label(model), value, _bench_rounds(group, model, size),
                                     figure_problem(_bench_row(group, model, size)))
        for model in spec['models']:
            own = macs(model)
            if model not in timed or own is None:
                continue
            peers = [t for p, t in timed.items() if p in (spec.get('peers') or [])
                     and macs(p) is not None and own / within <= macs(p) <= own * within]
            if not peers:
                skipped.append(f'{a.label(model)} in {env}')
                continue
            row = rank_row(env, timed[model], peers, within)
            rows.append(dict(row, macs_g=round(own / 1e9, 2)))
            cells.append(dict(env=env, model=a.label(model), macs_g=f'{own / 1e9:.2f}', **{
                k: row[k] or DASH for k in ('rank', 'above', 'below', 'not_resolved', 'not_ranked')}))
    columns = {'env': 'Column', 'model': 'Model', 'macs_g': f'GMACs ({convention})', 'rank': 'rank',
               'above': 'above', 'below': 'below', 'not_resolved': 'not resolved', 'not_ranked': 'not ranked'}
    data, display = _frames({'columns': {**columns, 'statement': 'statement'}}, rows, cells)
    display = display.drop(columns=['statement'])
    notes = [f"Peers: the speed table's peers within {within:g}x of the FAT model's MACs (`{convention}` convention, "
             'counted here), measured in the same column (one machine, one run, round-robin); img/s in brackets.',
             RULE]
    notes += [f'Column {env}: {label}.' for env, label, _ in measured
              if any(r['env'] == env for r in rows)]
    if skipped:
        notes.append(f"No peer of its MAC class measured: {', '.join(skipped)}.")
    notes += [r['statement'] for r in rows]
    return Table(name, f"{spec['title']}: ranks within the MAC class", data, display, notes)


def claims_table(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """Claimed rows only (e.g. ADE20K, which this harness does not run), one per claim of the listed tasks."""
    tasks: Dict[str, str] = dict(spec['tasks'])
    cite = _Citations()
    rows, cells = [], []
    for _, c in a.claims[a.claims['task'].isin(list(tasks))].iterrows():
        claims = {f: Claim(c[f], (c['source'],), c['macs_convention'] if f == 'macs_g' else None)
                  if pd.notna(c[f]) else None for f in ('params_m', 'macs_g', 'miou', 'ms_miou')}
        sources = cite.cite(*claims.values())
        rows.append(dict(model=c['model'], task=c['task'], img_size=_size(c['img_size']),
                         **{f: cl and cl.value for f, cl in claims.items()},
                         macs_convention=c['macs_convention'], sources=' '.join(sources)))
        cells.append(dict(model=a.label(c['model']), task=tasks[c['task']], img_size=_size(c['img_size']),
                          **{f: _claim(cl) for f, cl in claims.items()}, sources=cite.numbers(sources)))
    data, display = _frames(spec, rows, cells)
    notes = list(spec.get('notes') or [])
    notes += _convention_notes(a, sorted({c for c in data.get('macs_convention', []) if isinstance(c, str)}))
    notes += _not_found(spec, a)
    return [Table(name, spec['title'], data, display, notes, cite.keys)]


def grid_ablation(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """One table per collected training grid: `fat.report.grids` (which builds on this module's `Table`)."""
    from .grids import ablation
    return ablation(name, spec, a, m)


def ladder_tables(name: str, spec: Mapping[str, Any], a: Analysis, m: Measurements) -> List[Table]:
    """Rank agreement and compute of each collected ladder grid: `fat.report.ladders`."""
    from .ladders import ladder_tables as build
    return build(name, spec, a, m)


BUILDERS: Dict[str, Callable[[str, Mapping[str, Any], Analysis, Measurements], List[Table]]] = {
    'classification': classification, 'speed': speed, 'ablation': grid_ablation, 'claims': claims_table,
    'ladder': ladder_tables}


def build_tables(a: Analysis, m: Measurements) -> List[Table]:
    """Every table of `analysis/tables.yaml`, in definition order."""
    tables = []
    for name, spec in a.tables.items():
        kind = spec.get('kind')
        if kind not in BUILDERS:
            raise ValueError(f"tables.yaml: {name}.kind: {kind!r} is not one of {', '.join(BUILDERS)}")
        for table in BUILDERS[kind](name, spec, a, m):
            table.definition = name
            tables.append(table)
    return tables


# -- writers

_NUMERIC = re.compile(r'^[-+−]?[0-9]')


def _align(display: pd.DataFrame) -> List[str]:
    """Numbers right (a column whose every cell starts with one, or is "—"), text left."""
    return ['right' if all(c == DASH or _NUMERIC.match(c) for c in display[col]) else 'left'
            for col in display.columns]


def _source_lines(table: Table, a: Analysis, number: str) -> List[str]:
    """One line per cited source, numbered with `number` (a format string of n)."""
    return [number.format(n=i + 1) + a.sources[key]['cite'] + (f" — {a.sources[key]['url']}" if a.sources[key].get(
        'url') else '') for i, key in enumerate(table.sources)]


def to_markdown(table: Table, a: Analysis) -> str:
    head = [f'## {table.title}', '']
    if table.subtitle:
        head += [table.subtitle[0].upper() + table.subtitle[1:], '']
    if table.display.empty:
        body = ['*(no rows: see the notes)*']
    else:
        body = [table.display.to_markdown(index=False, disable_numparse=True, colalign=_align(table.display))]
    lines = head + body + ['']
    lines += [f'- {n}' for n in table.notes]
    if table.sources:
        lines += ['', 'Claims from:', ''] + _source_lines(table, a, '{n}. ')
    return '\n'.join(lines) + '\n'


_LATEX = {'\\': r'\textbackslash{}', '&': r'\&', '%': r'\%', '$': r'\$', '#': r'\#', '_': r'\_', '{': r'\{',
          '}': r'\}', '~': r'\textasciitilde{}', '^': r'\textasciicircum{}', '—': '---', '−': '$-$', '±': r'$\pm$',
          'Δ': r'$\Delta$', 'α': r'$\alpha$', '–': '--', '×': r'$\times$', '·': r'$\cdot$', '²': r'$^2$', '<': '$<$',
          '>': '$>$', '`': ''}


def _tex(text: Any) -> str:
    return ''.join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table, a: Analysis) -> str:
    display = table.display.map(_tex)
    display.columns = [_tex(c) for c in display.columns]
    spec = ''.join('l' if al == 'left' else 'r' for al in _align(table.display))
    title = table.title + (f' — {table.subtitle}' if table.subtitle else '')
    lines = ['% generated by `fat report`; do not edit. Needs \\usepackage{booktabs,adjustbox}.', r'\begin{table}[t]',
             r'\centering', rf'\caption{{{_tex(title)}}}', rf'\label{{tab:{table.name}}}', r'\small']
    if table.display.empty:
        lines.append(r'\emph{(no rows: see the notes)}')
    else:
        tabular = display.to_latex(index=False, escape=False, column_format=spec).rstrip()
        lines += [r'\begin{adjustbox}{max width=\linewidth}', tabular, r'\end{adjustbox}']
    foot = [*table.notes, *_source_lines(table, a, '[{n}] ')]
    if foot:
        lines += [r'\par\smallskip\footnotesize', ' \\\\\n'.join(_tex(n) for n in foot)]
    lines.append(r'\end{table}')
    return '\n'.join(lines) + '\n'


def write_table(table: Table, a: Analysis, out_dir: Path) -> List[Path]:
    """results/tables/<name>.{md,tex,csv}; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f'{table.name}.{ext}' for ext in ('md', 'tex', 'csv')]
    write_text_atomic(paths[0], to_markdown(table, a))
    write_text_atomic(paths[1], to_latex(table, a))
    with atomic_path(paths[2]) as tmp:
        table.data.to_csv(tmp, index=False, lineterminator='\n')
    return paths
