"""The report's declarations (`analysis/`): claims with their sources, counting conventions, which models and FASA
variants appear and how they are drawn, and the table and figure definitions. Everything is validated on load, so that a
typo in a claims file fails with one line naming the file and the key rather than as a wrong table."""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import seaborn as sns

from fat import yaml12

__all__ = ['Analysis', 'Claim', 'load_analysis', 'CLAIM_FIELDS']

# claim fields holding numbers, and the keys that describe where and how a number was obtained
CLAIM_FIELDS = ('params_m', 'macs_g', 'top1', 'top5', 'miou', 'ms_miou', 'throughput')
_CLAIM_KEYS = ('model', 'task', 'source', 'tag', 'img_size', 'crop_pct', 'macs_convention', 'batch_size', 'device',
               'precision', 'layout', 'compiled', 'software') + CLAIM_FIELDS
_SOURCE_KEYS = ('cite', 'url', 'note')


@dataclass(frozen=True)
class Claim:
    """One claimed number as its source prints it (int or float), the sources that state it (in file order) and,
    for MACs, the convention."""
    value: Union[int, float]
    sources: Tuple[str, ...]
    convention: Optional[str] = None


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f'{where}: expected a mapping, got {type(value).__name__}')
    return dict(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Analysis:
    """Claims, conventions, model appearance and table/figure definitions read from an `analysis/` directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not (self.root / 'claims').is_dir():
            raise FileNotFoundError(
                f'no analysis definitions at {self.root} (expected {self.root / "claims"}/*.yaml); run from the '
                'repository root or pass --analysis')
        self.conventions = _mapping(yaml12.load_file(self.root / 'conventions.yaml'), 'conventions.yaml')
        appearance = _mapping(yaml12.load_file(self.root / 'models.yaml'), 'models.yaml')
        self.tables = _mapping(yaml12.load_file(self.root / 'tables.yaml'), 'tables.yaml')
        self.figures = _mapping(yaml12.load_file(self.root / 'figures.yaml'), 'figures.yaml')
        self.sources: Dict[str, Dict[str, Any]] = {}
        self.not_found: Dict[str, str] = {}
        rows: List[Dict[str, Any]] = []
        for path in sorted((self.root / 'claims').glob('*.yaml')):
            rows += self._load_claims(path)
        self.claims = pd.DataFrame(rows, columns=['file', *_CLAIM_KEYS], dtype=object)  # ints stay ints: 29, not 29.0
        self._load_appearance(appearance)
        self._check_consistent()
        self._check_references()

    # -- loading and validation

    def _load_claims(self, path: Path) -> List[Dict[str, Any]]:
        data = _mapping(yaml12.load_file(path), path.name)
        where = f'claims/{path.name}'
        for key in data:
            if key not in ('sources', 'claims', 'not_found'):
                raise ValueError(f'{where}: unknown key {key!r}; valid: sources, claims, not_found')
        for key, source in _mapping(data.get('sources') or {}, f'{where}: sources').items():
            source = _mapping(source, f'{where}: sources.{key}')
            if key in self.sources:
                raise ValueError(f'{where}: sources.{key}: already defined in another claims file')
            if not source.get('cite'):
                raise ValueError(f'{where}: sources.{key}: needs a `cite`')
            self.sources[key] = source
        for key, text in _mapping(data.get('not_found') or {}, f'{where}: not_found').items():
            self.not_found[key] = str(text)
        rows = []
        for i, claim in enumerate(data.get('claims') or []):
            claim = _mapping(claim, f'{where}: claims[{i}]')
            source = self.sources.get(claim.get('source'))
            if source is None:
                raise ValueError(f"{where}: claims[{i}]: source {claim.get('source')!r} is not defined; "
                                 f"valid: {', '.join(self.sources)}")
            row = {k: v for k, v in source.items() if k not in _SOURCE_KEYS}
            row.update(claim)
            for key in row:
                if key not in _CLAIM_KEYS:
                    raise ValueError(f"{where}: claims[{i}]: unknown key {key!r}; valid: {', '.join(_CLAIM_KEYS)}")
            for key in ('model', 'task'):
                if not isinstance(row.get(key), str):
                    raise ValueError(f'{where}: claims[{i}]: needs `{key}` (a string)')
            for key in CLAIM_FIELDS:
                if key in row and not _is_number(row[key]):
                    raise ValueError(f'{where}: claims[{i}]: {key} must be a number, got {row[key]!r}')
            if not any(key in row for key in CLAIM_FIELDS):
                raise ValueError(f"{where}: claims[{i}]: claims nothing; give one of {', '.join(CLAIM_FIELDS)}")
            if ('macs_g' in row) != ('macs_convention' in row):
                raise ValueError(f'{where}: claims[{i}]: macs_g and macs_convention go together')
            if 'macs_convention' in row and row['macs_convention'] not in self.conventions:
                raise ValueError(f"{where}: claims[{i}]: unknown macs_convention {row['macs_convention']!r}; "
                                 f"valid: {', '.join(self.conventions)}")
            if isinstance(row.get('img_size'), list):  # (height, width), kept hashable
                row['img_size'] = tuple(row['img_size'])
            rows.append({'file': where, **row})
        return rows

    def _load_appearance(self, data: Mapping[str, Any]) -> None:
        palette = sns.color_palette(data.get('palette', 'colorblind'))
        families = _mapping(data.get('families') or {}, 'models.yaml: families')

        def colour(index: Any, where: str) -> Tuple[float, float, float]:
            if not isinstance(index, int) or not 0 <= index < len(palette):
                raise ValueError(f'models.yaml: {where}: colour must be an index 0..{len(palette) - 1}')
            return tuple(palette[index])

        self.models: Dict[str, Dict[str, Any]] = {}
        for name, spec in _mapping(data.get('models') or {}, 'models.yaml: models').items():
            spec = _mapping(spec, f'models.yaml: models.{name}')
            family = spec.get('family')
            if family not in families:
                raise ValueError(f"models.yaml: models.{name}: family {family!r} is not one of {', '.join(families)}")
            self.models[name] = dict(label=spec.get('label', name), family=family, marker=spec.get('marker', 'o'),
                                     img_size=int(spec.get('img_size', 224)),
                                     colour=colour(families[family]['colour'], f'families.{family}'))
        self.variants: Dict[str, Dict[str, Any]] = {}
        for name, spec in _mapping(data.get('variants') or {}, 'models.yaml: variants').items():
            spec = _mapping(spec, f'models.yaml: variants.{name}')
            self.variants[name] = dict(label=spec.get('label', name), marker=spec.get('marker', 'o'),
                                      colour=colour(spec.get('colour', 0), f'variants.{name}'))

    def _check_consistent(self) -> None:
        """Two sources that claim the same number must agree: a table cell cites them both."""
        keys = ['model', 'task', 'img_size', 'macs_convention']
        claims = self.claims.astype({'img_size': object})
        for field in ('params_m', 'macs_g', 'top1', 'top5', 'miou', 'ms_miou'):
            rows = claims[claims[field].notna()]
            for _, group in rows.groupby([rows[k].map(repr) for k in keys], sort=False):
                if group[field].nunique() > 1:
                    values = ', '.join(f'{v} ({s})' for v, s in zip(group[field], group['source'], strict=True))
                    raise ValueError(f'claims disagree on {field} of {group.iloc[0]["model"]} '
                                     f'({group.iloc[0]["task"]}): {values}')

    def _check_references(self) -> None:
        for kind, definitions in (('tables.yaml', self.tables), ('figures.yaml', self.figures)):
            for name, spec in definitions.items():
                spec = _mapping(spec, f'{kind}: {name}')
                for key in ('models', 'peers'):
                    for model in spec.get(key) or []:
                        if model not in self.models:
                            raise ValueError(f'{kind}: {name}.{key}: {model!r} is not defined in models.yaml')
                for key in spec.get('not_found') or []:
                    if key not in self.not_found:
                        raise ValueError(f"{kind}: {name}.not_found: {key!r} is not a not_found key of the claims; "
                                         f"valid: {', '.join(self.not_found)}")
                for source in spec.get('sources') or []:
                    if source not in self.sources:
                        raise ValueError(f'{kind}: {name}.sources: {source!r} is not a claims source')
                convention = spec.get('convention')
                if convention is not None and convention not in self.conventions:
                    raise ValueError(f'{kind}: {name}.convention: {convention!r} is not in conventions.yaml')

    # -- queries

    def label(self, model: str) -> str:
        return self.models.get(model, {}).get('label', model)

    def claimed(
            self,
            model: str,
            task: str,
            field: str,
            img_size: Any = None,
            sources: Optional[Sequence[str]] = None,
    ) -> Optional[Claim]:
        """The claimed `field` of `model` on `task` (at `img_size` where the claim names one), or None.

        MACs come with their convention; where several conventions are claimed the first in file order wins.
        """
        c = self.claims
        rows = c[(c['model'] == model) & (c['task'] == task) & c[field].notna()]
        if img_size is not None:
            rows = rows[rows['img_size'].isna() | (rows['img_size'] == img_size)]
        if sources is not None:
            rows = rows[rows['source'].isin(sources)]
        if rows.empty:
            return None
        first = rows.iloc[0]
        if field == 'macs_g':
            rows = rows[rows['macs_convention'] == first['macs_convention']]
        return Claim(first[field], tuple(dict.fromkeys(rows['source'])),
                     first['macs_convention'] if field == 'macs_g' else None)

    def claim_rows(self, task: str, field: str, sources: Optional[Sequence[str]] = None) -> pd.DataFrame:
        """Every claim of `field` on `task` (from `sources`, if given), in file order."""
        c = self.claims
        rows = c[(c['task'] == task) & c[field].notna()]
        return rows[rows['source'].isin(sources)] if sources is not None else rows


def load_analysis(root: Path) -> Analysis:
    """Read and validate the definitions under `root` (normally `analysis/`)."""
    return Analysis(root)
