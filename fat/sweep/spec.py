"""Grid files (`ablations/*.yaml`): safe loading and complete validation.

A grid file declares one ablation grid::

    name: fasa_variants          # optional, default: the file name; names the work and result files
    task: train                  # train | flops | bench
    preset: null                 # train only: a named base config (fat.train.PRESETS)
    base: {model: fat_b0, epochs: 2}          # config shared by every cell
    axes: {fasa: [fasa, global_only]}         # cartesian product
    zip: [{lr: [1.0e-3, 5.0e-4], batch_size: [64, 32]}]   # groups of keys varied together
    exclude: [{fasa: global_only, lr: 5.0e-4}]            # points dropped from the product
    include: [{fasa: local_only, lr: 1.0e-3}]             # extra points, added after `exclude`
    seeds: [0, 1]                # train only: every point once per seed
    slurm: {profile: local, cpus_per_task: 1, timeout_min: 30}   # profile (slurm/<name>.yaml) + resources
    workdir: runs                # where the cell directories go (`--workdir` wins)
    shared_workdir: false        # true: a team's shared work directory, which others may write (docs/sweeps.md)
    baseline: {fasa: fasa}       # the report's Δ baseline per varied key (default: its first value); no cell changes
    min_effect: 1.0              # the report's smallest effect of interest, in points of the metric; no cell changes
    ladder:                      # train only: ordered fidelities, cheapest first (docs/sweeps.md, "Fidelity ladders")
      - {name: screen, img_size: 32, epochs: 1, train_subset: 2000}   # a name plus config overrides
      - {name: full}                                                  # no overrides: the grid's own config

Every problem is reported, one line each naming the file, the key and the valid choices, before anything
else happens (`fat.checks.InputError`). YAML is read by `fat.yaml12` (YAML 1.2 scalars, no duplicate keys).
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from fat import yaml12
from fat.checks import InputError, Problems, close_hint

__all__ = ['Grid', 'Rung', 'parse_value', 'parse_overrides', 'load_grid', 'DEFAULT_WORKDIR']

GRID_KEYS = ('name', 'description', 'task', 'preset', 'base', 'axes', 'zip', 'include', 'exclude', 'seeds',
             'slurm', 'workdir', 'shared_workdir', 'baseline', 'min_effect', 'ladder')
TASKS = ('train', 'flops', 'bench')
DEFAULT_WORKDIR = 'runs'  # a grid's work directory when neither `--workdir` nor the grid's `workdir` names one
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def parse_value(text: str) -> Any:
    """A command-line value, read as one YAML scalar or flow collection (`1e-3`, `[0, 1]`, `{a: b}`)."""
    return yaml12.load(text, 'override')


@dataclass(frozen=True)
class Rung:
    """One fidelity of a ladder: its name and the config keys it sets over the grid's base (the points unchanged)."""
    name: str
    overrides: Dict[str, Any]


@dataclass
class Grid:
    """A validated grid file, before expansion into cells (see `fat.sweep.cells.expand`)."""
    name: str
    path: Path
    task: str = 'train'
    description: str = ''
    preset: Optional[str] = None
    base: Dict[str, Any] = field(default_factory=dict)
    axes: Dict[str, List[Any]] = field(default_factory=dict)
    zip: List[Dict[str, List[Any]]] = field(default_factory=list)
    include: List[Dict[str, Any]] = field(default_factory=list)
    exclude: List[Dict[str, Any]] = field(default_factory=list)
    seeds: Optional[List[int]] = None
    slurm: Dict[str, Any] = field(default_factory=dict)
    workdir: Optional[str] = None
    shared_workdir: bool = False  # others may write the work directory (fat.sweep.workdir)
    baseline: Dict[str, Any] = field(default_factory=dict)  # varied key -> value: the report's Δ reference, not a cell
    min_effect: Optional[float] = None  # the report's smallest effect of interest (metric points), not a cell
    ladder: List[Rung] = field(default_factory=list)  # fidelities, cheapest first; every point runs at each rung
    overrides: Dict[str, Any] = field(default_factory=dict)  # config keys set on the command line
    slurm_overrides: Set[str] = field(default_factory=set)  # resources set on the command line

    @property
    def config_base(self) -> Dict[str, Any]:
        """What every cell's config starts from: `base`, updated by the command line."""
        return {**self.base, **self.overrides}

    @property
    def varied_keys(self) -> List[str]:
        """The config keys that vary between cells, in declaration order (the CSV's axis columns)."""
        keys = list(self.axes)
        for group in self.zip:
            keys += [k for k in group if k not in keys]
        for point in self.include:
            keys += [k for k in point if k not in keys]
        if self.seeds is not None and 'seed' not in keys:
            keys.append('seed')
        return keys

    def values_of(self, key: str) -> List[Any]:
        """Every value the grid declares for a varied key (axes, zip groups, include points), in order."""
        values = list(self.axes.get(key, []))
        values += [v for group in self.zip for v in group.get(key, [])]
        return values + [point[key] for point in self.include if key in point]


def _same(a: Any, b: Any) -> bool:
    """Equal as cells compare values (numbers by value: 4e-3 == 0.004, 2 == 2.0), but true is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_baseline(p: Problems, grid: Grid, baseline: Any) -> None:
    """`baseline`: a varied key (seeds aside) -> one of its declared values. Only the report reads it."""
    if not isinstance(baseline, dict):
        p.add('baseline', f'expected a mapping of varied key -> one of its values, got {type(baseline).__name__} '
                          f'{baseline!r}')
        return
    varied = [k for k in grid.varied_keys if k != 'seed']  # seeds are replicates, never a baseline
    for key, value in baseline.items():
        if key not in varied:
            p.add(f'baseline.{key}', f'not a varied key of this grid{close_hint(key, varied)}; valid: '
                                     f"{', '.join(varied) or 'none'}")
        elif not any(_same(value, v) for v in grid.values_of(key)):
            values = list(dict.fromkeys(str(v) for v in grid.values_of(key)))
            p.add(f'baseline.{key}', f'{value!r} is not one of its values{close_hint(value, values)}; valid: '
                                     f"{', '.join(values)}")
        else:
            grid.baseline[str(key)] = value


def _check_ladder(p: Problems, grid: Grid, ladder: Any) -> None:
    """`ladder`: at least two rungs, each a mapping of `name` (unique) and config overrides that vary no axis.
    The override values are checked with the grid's other values (`fat.sweep.cells.expand`)."""
    if not isinstance(ladder, list) or len(ladder) < 2:
        p.add('ladder', f'expected a list of at least two rungs ({{name: ..., <config key>: <value>, ...}}), '
                        f'got {ladder!r}')
        return
    varied = set(grid.varied_keys)
    for i, rung in enumerate(ladder):
        where = f'ladder[{i}]'
        if not isinstance(rung, dict):
            p.add(where, f'expected a mapping {{name: ..., <config key>: <value>, ...}}, got {rung!r}')
            continue
        name = rung.get('name')
        if not isinstance(name, str) or not _NAME_RE.match(name):
            p.add(f'{where}.name', f'expected a name of letters, digits, _ . - (it names result files), got {name!r}')
            continue
        if any(r.name == name for r in grid.ladder):
            p.add(f'{where}.name', f'{name!r} names two rungs')
            continue
        overrides = {str(k): v for k, v in rung.items() if k != 'name'}
        bad = [k for k in overrides if k in varied or k == 'seed']
        for key in bad:
            p.add(f'{where}.{key}', 'a rung changes the fidelity, not the points: this key is varied by the grid')
        if not bad:
            grid.ladder.append(Rung(name, overrides))
    for i, (a, b) in enumerate(zip(grid.ladder, grid.ladder[1:], strict=False)):
        if a.overrides == b.overrides:
            p.add(f'ladder[{i + 1}]', f'{b.name!r} sets the same config as {a.name!r}')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_points(p: Problems, key: str, value: Any) -> List[Dict[str, Any]]:
    """`include` / `exclude`: a list of non-empty mappings."""
    if not isinstance(value, list) or not all(isinstance(v, dict) and v for v in value):
        p.add(key, f'expected a list of non-empty mappings (config key: value), got {value!r}')
        return []
    return value


def parse_overrides(items: Sequence[str], problems: Problems) -> Dict[str, Any]:
    """`key=value` command-line items -> {key: value}, values read as YAML (`fat sweep launch GRID epochs=1`);
    malformed items are added to `problems`."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key or not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_.]*', key):
            problems.add(item, 'expected key=value (config key, `seeds`, or slurm.<resource>)')
            continue
        try:
            out[key] = parse_value(text)
        except InputError as e:
            problems.add(key, e.problems[0].split(': ', 1)[1])
    return out


def load_grid(path: Path, overrides: Optional[Mapping[str, Any]] = None) -> Tuple[Grid, Problems]:
    """Read a grid file and check its structure, with command-line overrides applied.

    Overrides: `seeds=[...]`, `slurm.<resource>=value`, and `key=value` for any other config key (it joins
    `base`, so it changes the cells and their ids). Returns the grid and the problems found so far: config
    values and resources are checked by `fat.sweep.launch.prepare`, which reports every problem at once.
    A file that is not YAML or not a mapping raises InputError at once.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'grid file not found: {path}')
    source = str(path)
    doc = yaml12.load(path.read_text(), source)
    p = Problems(source)
    if not isinstance(doc, dict):
        p.add('', f'expected a mapping of grid keys ({", ".join(GRID_KEYS)}), got {type(doc).__name__}')
        p.raise_if_any()
    for key in doc:
        if key not in GRID_KEYS:
            p.add(str(key), f'unknown grid key{close_hint(key, GRID_KEYS)}; valid: {", ".join(GRID_KEYS)}')

    name = doc.get('name', path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        p.add('name', f'expected a name of letters, digits, _ . - (it names directories and files), got {name!r}')
    task = doc.get('task', 'train')
    if task not in TASKS:
        p.add('task', f'unknown task {task!r}{close_hint(task, TASKS)}; valid: {", ".join(TASKS)}')
    grid = Grid(name=str(name), path=path, task=str(task))

    for key in ('description', 'preset', 'workdir'):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            p.add(key, f'expected a string, got {type(value).__name__} {value!r}')
    grid.description = doc.get('description') or ''
    grid.preset = doc.get('preset')
    grid.workdir = doc.get('workdir')
    shared = doc.get('shared_workdir', False)
    if not isinstance(shared, bool):
        p.add('shared_workdir', f'expected true or false, got {shared!r}')
    grid.shared_workdir = shared is True

    for key in ('base', 'slurm'):
        value = doc.get(key, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            p.add(key, f'expected a mapping, got {type(value).__name__} {value!r}')
            value = {}
        setattr(grid, key, dict(value))

    axes = doc.get('axes', {}) or {}
    if not isinstance(axes, dict):
        p.add('axes', f'expected a mapping of config key -> list of values, got {type(axes).__name__}')
        axes = {}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            p.add(f'axes.{key}', f'expected a non-empty list of values, got {values!r}')
        else:
            grid.axes[str(key)] = values

    groups = doc.get('zip', []) or []
    if not isinstance(groups, list):
        p.add('zip', f'expected a list of groups (mappings of config key -> list), got {type(groups).__name__}')
        groups = []
    for i, group in enumerate(groups):
        where = f'zip[{i}]'
        if not isinstance(group, dict) or not group:
            p.add(where, f'expected a non-empty mapping of config key -> list of values, got {group!r}')
            continue
        lengths = {k: len(v) for k, v in group.items() if isinstance(v, list)}
        bad = [k for k, v in group.items() if not isinstance(v, list) or not v]
        for k in bad:
            p.add(f'{where}.{k}', f'expected a non-empty list of values, got {group[k]!r}')
        if bad:
            continue
        if len(set(lengths.values())) > 1:
            p.add(where, f'the lists of a zipped group must have equal lengths, got {lengths}')
        else:
            grid.zip.append({str(k): v for k, v in group.items()})

    grid.include = _check_points(p, 'include', doc.get('include', []) or [])
    grid.exclude = _check_points(p, 'exclude', doc.get('exclude', []) or [])

    seeds = doc.get('seeds')
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            p.add('seeds', f'expected a non-empty list of integers, got {seeds!r}')
        else:
            grid.seeds = seeds

    for key, value in (overrides or {}).items():
        if key == 'seeds':
            if not isinstance(value, list) or not value or not all(_is_int(s) for s in value):
                p.add('seeds (command line)', f'expected a non-empty list of integers, got {value!r}')
            else:
                grid.seeds = value
        elif key.startswith('slurm.'):
            grid.slurm[key[len('slurm.'):]] = value
            grid.slurm_overrides.add(key[len('slurm.'):])
        elif '.' in key:
            p.add(f'{key} (command line)', 'only slurm.<resource> keys may be dotted')
        elif key in grid.axes or any(key in g for g in grid.zip):
            p.add(f'{key} (command line)', f'{key!r} is an axis of this grid; edit the grid file to change it')
        else:
            grid.overrides[key] = value

    # where one key is declared twice, the cells would silently take one of the values
    declared: Dict[str, str] = {}
    for where, keys in [('axes', grid.axes)] + [(f'zip[{i}]', g) for i, g in enumerate(grid.zip)]:
        for key in keys:
            if key in declared:
                p.add(f'{where}.{key}', f'also declared in {declared[key]}')
            declared.setdefault(key, where)
    if grid.seeds is not None and 'seed' in declared:
        p.add('seeds', f"'seed' is also varied in {declared['seed']}; use one of them")
    if doc.get('baseline') is not None:
        _check_baseline(p, grid, doc['baseline'])
    if doc.get('min_effect') is not None:
        value = doc['min_effect']
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float('inf'):
            p.add('min_effect', f'expected a positive number (points of the metric), got {value!r}')
        else:
            grid.min_effect = float(value)
    if doc.get('ladder') is not None:
        _check_ladder(p, grid, doc['ladder'])
        for key in grid.overrides:
            if any(key in rung.overrides for rung in grid.ladder):
                p.add(f'{key} (command line)', f"{key!r} is set by the ladder's rungs; edit the grid file to change it")
    if grid.task != 'train' and grid.task in TASKS:  # an unknown task is its own error: no follow-on ones
        for key in ('seeds', 'preset', 'ladder'):
            if doc.get(key) is not None:
                p.add(key, f'only a train grid takes {key!r} (task: {grid.task})')
    return grid, p
