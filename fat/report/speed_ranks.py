"""Rank statements of the speed table: each FAT model against the peers of its MAC class, in each measured column,
said only where the rounds resolve them.

Rule (one, for every pair): A is above B when every round of A was faster than every round of B (the ranges of
timm's statistic over the rounds do not overlap), below when every round was slower, else "not resolved". With 3
rounds each, non-overlap happens by chance with probability 1/10 when the two do not differ (2/C(6,3)); with 5 rounds,
2/C(10,5) < 0.01. A figure is ranked only if it was timed in at least two rounds, with the contention checks of
`fat.contention` recorded, none of its rounds stayed contended, and its rounds lie within `SPREAD_MAX` % of each other
(a wider spread that no check explains is noise this rule should not lean on); the others are listed as not ranked,
with why.
A rank is therefore a range where pairs are unresolved: best = 1 + peers resolved above it, worst = that + peers
not resolved.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from fat.contention import SPREAD_MAX

__all__ = ['Timed', 'order', 'ordinal', 'rank_row', 'RULE']

RULE = ('A above B: every round of A faster than every round of B (the ranges over the rounds do not overlap); '
        'otherwise not resolved. Ranked: figures timed in two or more rounds, with contention checks recorded, no '
        f'round left contended and rounds within {SPREAD_MAX:.0f} % of each other (fat/contention.py). Rank: 1 + the '
        'peers resolved above it, a range where pairs are not resolved.')


@dataclass
class Timed:
    """One model's figure in one measured column: timm's statistic, its per-round values, and why it cannot be ranked
    ('' when it can)."""
    model: str
    label: str
    value: float
    rounds: List[float]
    problem: str = ''

    def text(self) -> str:
        return f"{self.label} ({self.value:{'.2f' if self.value < 10 else '.1f'}})"


def order(a: Timed, b: Timed) -> str:
    """'above', 'below' or 'not resolved': where A stands against B by the rule of this module."""
    if min(a.rounds) > max(b.rounds):
        return 'above'
    if max(a.rounds) < min(b.rounds):
        return 'below'
    return 'not resolved'


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _list(items: Sequence[Timed]) -> str:
    texts = [t.text() for t in items]
    return ', '.join(texts[:-1]) + f' and {texts[-1]}' if len(texts) > 1 else ''.join(texts)


def rank_row(env: str, fat: Timed, peers: Sequence[Timed], within: float) -> Dict[str, Any]:
    """The rank of `fat` among `peers` (its MAC class, measured in column `env`), the peers above, below, not resolved
    and not ranked, and the sentence that states it (what the README may quote)."""
    lead = f'{fat.text()} in {env}'
    cls = f'the peers within {within:g}x of its MACs'
    unranked = [p for p in peers if p.problem]
    if fat.problem:
        return dict(env=env, model=fat.model, rank='not ranked', above='', below='', not_resolved='',
                    not_ranked=fat.problem, statement=f'{lead}: not ranked ({fat.problem}).')
    ranked = [p for p in peers if not p.problem]
    verdicts = {p.model: order(fat, p) for p in ranked}
    above = [p for p in ranked if verdicts[p.model] == 'above']
    below = [p for p in ranked if verdicts[p.model] == 'below']
    unresolved = [p for p in ranked if verdicts[p.model] == 'not resolved']
    best, worst = 1 + len(below), 1 + len(below) + len(unresolved)
    rank = ordinal(best) if best == worst else f'{ordinal(best)}-{ordinal(worst)}'
    parts = [f'{rank} of {len(ranked) + 1} among {cls}']
    parts += [f'above {_list(above)}'] if above else []
    parts += [f'below {_list(below)}'] if below else []
    parts += [f'not resolved against {_list(unresolved)}'] if unresolved else []
    parts += [f"not ranked: {', '.join(f'{p.label} ({p.problem})' for p in unranked)}"] if unranked else []
    return dict(env=env, model=fat.model, rank=f'{rank} of {len(ranked) + 1}', above=_list(above), below=_list(below),
                not_resolved=_list(unresolved), not_ranked='; '.join(f'{p.label}: {p.problem}' for p in unranked),
                statement=f"{lead}: {'; '.join(parts)}.")


def figure_problem(row: Optional[pd.Series]) -> str:
    """Why a bench row's figure cannot be ranked ('' when it can): one round, no contention record, contended, or
    unsteady (its rounds span more than `SPREAD_MAX` %, though none was found contended)."""
    def present(v: Any) -> bool:
        return v is not None and v == v and str(v) not in ('', 'nan', 'None')
    if row is None:
        return 'not measured'
    if present(row.get('contended')):
        return f"contended: {row['contended']}"
    if not present(row.get('round_cpu_shares')):
        return 'no contention record'
    if len(str(row.get('round_throughputs', '')).split(';')) < 2:
        return 'one round'
    if present(row.get('spread_pct')) and float(row['spread_pct']) > SPREAD_MAX:
        return f"unsteady: its rounds span {float(row['spread_pct']):.1f} % (> {SPREAD_MAX:.0f} %)"
    return ''
