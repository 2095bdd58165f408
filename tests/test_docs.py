"""Documents that mirror code are checked against it, and every link between the documents resolves."""
import json
import math
import re
from pathlib import Path

import pytest
import timm

import fat  # noqa: F401 (registers the models)
from fat.variants import AXES

REPO = Path(__file__).resolve().parents[1]


def _table(text: str, header: str) -> list:
    """The rows (lists of cells) of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


def _numbers(cell: str) -> list:
    return [int(x) for x in re.findall(r'\d+', cell.replace(',', ''))]


def test_models_table_is_the_registered_models():
    rows = _table((REPO / 'docs' / 'models.md').read_text(), '| model | embed dims')
    assert [r[0] for r in rows] == [f'`fat_b{i}`' for i in range(4)]
    for name, dims, depths, heads, params in rows:
        model = timm.create_model(name.strip('`'))
        assert _numbers(dims) == [f['num_chs'] for f in model.feature_info], name
        assert _numbers(depths) == [len(s.blocks) for s in model.stages], name
        assert _numbers(heads) == [s.blocks[0].attn.num_heads for s in model.stages], name
        assert _numbers(params) == [sum(p.numel() for p in model.parameters())], name


def test_axes_table_is_the_variant_space():
    rows = _table((REPO / 'docs' / 'models.md').read_text(), '| axis | values')
    assert {r[0]: re.findall(r'`(\w+)`', r[1]) for r in rows} == {k: list(v) for k, v in AXES.items()}


@pytest.mark.parametrize('doc', ['README.md'] + [f'docs/{p.name}' for p in sorted((REPO / 'docs').glob('*.md'))])
def test_relative_links_resolve(doc):
    path = REPO / doc
    missing = [target for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', path.read_text())
               if not target.startswith(('http://', 'https://', 'mailto:')) and not (path.parent / target).exists()]
    assert missing == []


def test_readme_demo_table_is_the_generated_one():
    # the README shows `make demo`'s table unedited: it must be the committed results file's
    readme = (REPO / 'README.md').read_text()
    header = '| fasa '
    shown = '\n'.join(line for line in readme.splitlines() if line.startswith('|') and
                      readme.index(header) <= readme.index(line) < readme.index('![FASA ablation'))
    generated = next((REPO / 'results' / 'tables').glob('ablation-demo-*.md')).read_text()
    assert shown and shown in generated


def _paragraph(text: str, start: str) -> str:
    i = text.index(start)
    return ' '.join(text[i:text.index('\n\n', i)].split())


def test_readmes_cores_per_gpu_are_the_committed_loader_figure():
    """The README's cores per GPU: the assumed FAT-B0 rate (scaled to B1-B3 by fvcore MACs) over the loader figure
    that `fat sweep plan` reads from results/, rounded up; a new loader run must bring the README along."""
    from fat.sweep.ceiling import loader_figure
    text = _paragraph((REPO / 'README.md').read_text(), '**Cores per GPU**')
    per_core = loader_figure(REPO / 'results', 'pil', 224).value
    assert f'{per_core:g} img/s per Xeon core' in text
    low, high = (int(x.replace(',', '')) for x in re.search(r'FAT-B0 ([\d,]+)-([\d,]+) img/s', text).groups())
    macs = json.loads((REPO / 'results' / 'complexity-pins.json').read_text())['models']
    needs = []
    for b in range(4):
        scale = macs['fat_b0/fasa']['fvcore'] / macs[f'fat_b{b}/fasa']['fvcore']
        needs.append(f"{'FAT-' if b == 0 else ''}B{b} {'needs ' if b == 0 else ''}"
                     f'{math.ceil(low * scale / per_core)}-{math.ceil(high * scale / per_core)}')
    assert ', '.join(needs) in text


def test_readmes_ladder_paragraph_is_the_committed_ladder_table():
    """The README's reading of the worked ladder quotes results/tables/ladder-ladder-*.md: a rerun that changes the
    table must change the README."""
    text = _paragraph((REPO / 'README.md').read_text(), '**A fidelity ladder**')
    table = next((REPO / 'results' / 'tables').glob('ladder-ladder-*.md')).read_text()
    rows = {(r[0], r[1]): r for r in _table(table, '| lower rung')}
    screen_full = rows[('screen', 'full')]
    assert f'Kendall τ {screen_full[3]}' in text
    assert f'in {round(100 * float(screen_full[5]))} % of resamples' in text
    path_cost, halving_cost = (int(x) for x in re.findall(r'(\d+) % of the full grid', table))
    assert f'({path_cost} % of the full grid' in text and f'for {halving_cost} % of the full grid' in text
