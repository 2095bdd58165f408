"""Params and MACs under the named conventions of fat/complexity.py: FAT's published and official figures, the
regression pins, an analytic count of FASA's parts, the op cost table, fused vs explicit attention, peers against
timm's published GMACs, the generated variant table and the `fat flops` command."""
import functools
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis

import fat.complexity as complexity
from fat.cli import main
from fat.complexity import CONVENTIONS, count, measure, pins, variant_table
from fat.models import FASA_VARIANTS

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / 'results' / 'complexity-pins.json'
VARIANTS = REPO / 'docs' / 'variants.md'

# FAT's published GMACs (`paper`; the 2.039 / 4.426 for B2 / B3 add up conv and linear after rounding each,
# the exact sums being 2.038 / 4.425) and fvcore's on the official code (`fvcore`)
PUBLISHED = {
    'fat_b0': (0.701, 0.765), 'fat_b1': (1.173, 1.258), 'fat_b2': (2.039, 2.150), 'fat_b3': (4.426, 4.672),
}
# measured on the official code (qhfan/FAT @ 729ec45, eval, 1x3x224x224, fvcore 0.1.5): (conv + linear, fvcore total)
OFFICIAL_MACS = {
    'fat_b0': (701_258_624, 764_643_456), 'fat_b1': (1_173_415_776, 1_257_683_232),
    'fat_b2': (2_038_015_104, 2_150_371_712), 'fat_b3': (4_425_257_472, 4_672_123_392),
}
OFFICIAL_PARAMS = {'fat_b0': 4_494_488, 'fat_b1': 7_819_720, 'fat_b2': 13_466_728, 'fat_b3': 29_196_264}


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """Batch-1 traces outside `count` too (which does this itself): threads only add spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _measure(name: str, fasa: str) -> Dict[str, Dict[str, Any]]:
    """convention -> record of `measure` at 224, computed once per test session."""
    return {r['convention']: r for r in measure(name, fasa=fasa)}


def _records(name: str, fasa: str) -> List[Dict[str, Any]]:
    return list(_measure(name, fasa).values())


def _cached_measure(name: str, img_size: int = 224, conventions=CONVENTIONS, fasa: str = 'fasa') -> List[Dict]:
    """Stands in for `measure` in the command tests, which check the command, not the counting again."""
    assert img_size == 224 and tuple(conventions) == CONVENTIONS
    return _records(name, fasa)


@pytest.mark.parametrize('name', list(OFFICIAL_MACS))
def test_official_figures(name):
    r = _measure(name, 'fasa')
    assert r['paper']['params'] == OFFICIAL_PARAMS[name]
    assert (r['paper']['macs'], r['fvcore']['macs']) == OFFICIAL_MACS[name]
    for convention, published in zip(('paper', 'fvcore'), PUBLISHED[name], strict=True):
        assert r[convention]['macs'] / 1e9 == pytest.approx(published, rel=1e-3)


def test_pins_cover_every_model_and_preset():
    pinned = json.loads(PINS.read_text())
    assert pinned['img_size'] == 224
    assert set(pinned['models']) == {f'{m}/{p}' for m in timm.list_models('fat_*') for p in FASA_VARIANTS}
    assert all(set(v) == {'params', *CONVENTIONS} for v in pinned['models'].values())


@pytest.mark.parametrize('name, fasa', [('fat_b0', p) for p in FASA_VARIANTS] + [
    (m, 'fasa') for m in ('fat_b1', 'fat_b2', 'fat_b3')])
def test_pins(name, fasa):
    pinned = json.loads(PINS.read_text())['models']
    key = f'{name}/{fasa}'
    assert pins(_records(name, fasa))['models'][key] == pinned[key]


@pytest.mark.slow
def test_pins_regenerate(tmp_path):
    """The documented regeneration command reproduces the committed file (all models x presets)."""
    out = tmp_path / 'pins.json'
    assert main(['flops', '--pins', str(out)]) == 0
    assert json.loads(out.read_text())['models'] == json.loads(PINS.read_text())['models']


def _fasa_block(fasa: str, c: int, m: int, k: int, r: int, h: int) -> Dict[str, Dict[str, int]]:
    """One FASA block from its layer shapes: paper and fvcore MACs, full FLOPs (a bias adds 1 per output)."""
    cfg = FASA_VARIANTS[fasa][0]
    local, glob = cfg.local != 'none', cfg.global_ == 'attention'
    n, kv_n = h * h, math.ceil(h / r) ** 2
    block = {conv: dict.fromkeys(('q', 'local', 'downsample', 'kv', 'attention', 'gating', 'mixer'), 0)
             for conv in CONVENTIONS}

    def add(part: str, macs: int, full_flops: int, fvcore_extra: int = 0):
        block['paper'][part] += macs
        block['fvcore'][part] += macs + fvcore_extra
        block['full'][part] += full_flops

    add('q', c * c * n, 2 * c * c * n + c * n)
    add('mixer', c * c * n, 2 * c * c * n + c * n)
    if local:
        add('local', c * k * k * n, 2 * c * k * k * n + c * n)
    if glob:
        add('kv', 2 * c * c * kv_n, 4 * c * c * kv_n + 2 * c * kv_n)
        # fvcore: QK^T + AV; full: those as FLOPs, q scaling, 5 per softmax score
        add('attention', 0, 4 * c * n * kv_n + c * n + 5 * m * n * kv_n, fvcore_extra=2 * c * n * kv_n)
        if cfg.downsample == 'avgpool':
            add('downsample', 0, r * r * c * kv_n if r > 1 else 0)  # r x r window per output; r = 1: Identity
        else:
            steps = int(math.log2(r))
            for step in range(steps):
                s2 = (h // 2 ** (step + 1)) ** 2
                # DWConv5x5 s2 (bias), then BN (fvcore: 2 per element in eval; full: scale and shift)
                add('downsample', 25 * c * s2, 51 * c * s2 + 2 * c * s2, fvcore_extra=2 * c * s2)
                if step < steps - 1:
                    add('downsample', c * c * s2, 2 * c * c * s2 + c * s2)
    gating = 4 if cfg.local == 'self_modulated' else 0  # SiLU(L)
    gating += {'one_way': 5, 'bidirectional': 9, 'none': 1 if local and glob else 0}[cfg.interaction]
    add('gating', 0, gating * c * n)
    return block


def _fasa_parts_analytic(fasa: str) -> Dict[str, Dict[str, float]]:
    """MACs of FASA's parts in fat_b0 at 224x224, summed over all blocks."""
    parts = {conv: Counter() for conv in CONVENTIONS}
    # (C, heads, local kernel, window, side, blocks) per stage
    for *shape, depth in zip((32, 80, 160, 256), (2, 5, 10, 16), (3, 5, 7, 9), (8, 4, 2, 1), (56, 28, 14, 7),
                             (2, 2, 6, 2), strict=True):
        for conv, block in _fasa_block(fasa, *shape).items():
            for part, v in block.items():
                parts[conv][part] += depth * v * (0.5 if conv == 'full' else 1)
    return {conv: dict(p) for conv, p in parts.items()}


@pytest.mark.parametrize('fasa', list(FASA_VARIANTS))
def test_fasa_parts_match_analytic_count(fasa):
    analytic = _fasa_parts_analytic(fasa)
    for convention, record in _measure('fat_b0', fasa).items():
        assert record['fasa_parts'] == analytic[convention], convention


@pytest.mark.parametrize('fasa', list(FASA_VARIANTS))
def test_breakdowns_add_up(fasa):
    for r in _measure('fat_b0', fasa).values():
        assert sum(r['by_op'].values()) == r['macs'] == sum(r['by_module'].values())
        assert list(r['by_module'])[:5] == ['stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3']
        assert r['by_module']['(root)'] == 0
        assert r['fasa'] == fasa
    assert _measure('fat_b0', fasa)['full']['uncounted'] == {}
    assert set(_measure('fat_b0', fasa)['paper']['by_op']) == {'conv', 'linear'}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


X = (2, 4, 6, 6)
N = math.prod(X)


@pytest.mark.parametrize('module, flops', [
    (_Fn(lambda x: x + x), N),
    (_Fn(lambda x: x * 2.), N),
    (_Fn(F.relu), N),
    (_Fn(F.relu6), 2 * N),
    (nn.ReLU6(), 2 * N),
    (_Fn(torch.sigmoid), 3 * N),
    (_Fn(F.silu), 4 * N),
    (_Fn(F.hardsigmoid), 4 * N),
    (_Fn(F.hardswish), 5 * N),
    (_Fn(F.gelu), 5 * N),
    (_Fn(lambda x: F.gelu(x, approximate='tanh')), 9 * N),
    (_Fn(lambda x: x.softmax(-1)), 5 * N),
    (_Fn(lambda x: x.mean((2, 3))), N),
    (nn.AdaptiveAvgPool2d(1), N),
    (nn.AvgPool2d(2), 4 * N // 4),
    (nn.MaxPool2d(3, 2, 1), 9 * 2 * 4 * 3 * 3),
    (nn.GroupNorm(1, 4), 8 * N),
    (nn.GroupNorm(1, 4, affine=False), 6 * N),
    (nn.LayerNorm(6), 8 * N),
    (nn.BatchNorm2d(4), 2 * N),
    (nn.Conv2d(4, 8, 3, padding=1), (2 * 4 * 9 + 1) * 2 * 8 * 36),
    (nn.Conv2d(4, 4, 3, groups=4, bias=False), 2 * 9 * 2 * 4 * 16),
    (nn.Linear(6, 5), (2 * 6 + 1) * 2 * 4 * 6 * 5),
    (_Fn(lambda x: x.reshape(2, -1).permute(1, 0).flatten()), 0),
])
def test_full_op_costs(module, flops):
    """Each row of the op cost table in the fat/complexity.py docstring."""
    counts, uncounted = count(module.eval(), torch.randn(X), ('full',))
    assert 2 * sum(counts['full'][''].values()) == flops
    assert not uncounted


@pytest.mark.parametrize('masked', [False, True])
def test_sdpa_costs_its_explicit_form(masked):
    q, k, v = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 5)
    mask = torch.randn(10, 7) if masked else None

    def explicit(q, k, v):
        scores = (q * 0.5) @ k.transpose(-1, -2)
        return (scores if mask is None else scores + mask).softmax(-1) @ v

    fused = _Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    rows, keys = 2 * 3 * 10, 7
    expected = {
        'paper': 0, 'fvcore': rows * keys * (4 + 5),
        'full': (2 * rows * keys * 9 + rows * 4 + (5 + masked) * rows * keys) / 2,
    }
    for module in (fused, _Fn(explicit)):
        counts, _ = count(module, (q, k, v))
        assert {c: sum(counts[c][''].values()) for c in CONVENTIONS} == expected


def _set_fused_attn(model: nn.Module, enable: bool) -> nn.Module:
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = enable
    return model


@pytest.mark.parametrize('name, kwargs', [('fat_b0', {}), ('vit_tiny_patch16_224', dict(depth=2, img_size=64))])
def test_fused_attention_counts_as_the_explicit_path(name, kwargs):
    """The SDPA handle makes every convention and every module's count independent of timm's fused_attn; and
    `fvcore` is exactly what plain fvcore reports with fused attention disabled."""
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    fused, _ = count(_set_fused_attn(model, True), x)
    explicit, _ = count(_set_fused_attn(model, False), x)
    for convention in CONVENTIONS:
        totals = [{m: sum(ops.values()) for m, ops in c[convention].items()} for c in (fused, explicit)]
        assert totals[0] == totals[1], convention
    plain = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert plain.total() == sum(fused['fvcore'][''].values())
    assert 'scaled_dot_product_attention' in fused['fvcore']['']


# timm's published GMACs (huggingface/pytorch-image-models results/benchmark-infer-amp-nchw-pt291-cu130-5090.csv,
# commit aa4b5850c154, infer_gmacs, 2 decimals): fvcore with attention, re-parameterized models re-parameterized
PEERS = [
    ('deit_tiny_patch16_224', 224, 1.26, 5_717_416),
    ('resnet18', 224, 1.82, 11_689_512),
    ('fastvit_t8', 256, 0.69, 3_996_040),  # 0.705 GMACs / 4,026,232 params before re-parameterization
    ('mobilevit_xs', 256, 1.05, 2_317_848),
]


@pytest.mark.parametrize('name, img_size, gmacs, params', PEERS)
def test_peers_match_timm_published(name, img_size, gmacs, params):
    r = {r['convention']: r for r in measure(name, img_size)}
    assert abs(r['fvcore']['macs'] / 1e9 - gmacs) <= 0.005
    assert r['fvcore']['params'] == params
    assert r['full']['uncounted'] == {}
    assert r['paper']['macs'] < r['fvcore']['macs']


def test_tiny_vit_gets_an_imagenet_1k_head():
    r = measure('tiny_vit_5m_224', conventions=('fvcore',))[0]
    assert r['params'] == 5_387_836
    # timm's figures (12.08 M params, 1.27 GMACs) are for its default 21841-class head: 320 -> 21841 instead of 1000
    assert round((r['params'] + 321 * (21841 - 1000)) / 1e6, 2) == 12.08
    assert abs((r['macs'] + 320 * (21841 - 1000)) / 1e9 - 1.27) <= 0.005


def test_fixed_size_model_is_built_for_the_requested_size():
    r = {r['convention']: r for r in measure('deit_tiny_patch16_224', 256, ('fvcore',), depth=2)}
    tokens, heads, head_dim, depth = 16 * 16 + 1, 3, 64, 2
    assert r['fvcore']['by_op']['scaled_dot_product_attention'] == depth * heads * tokens ** 2 * 2 * head_dim


def test_bad_input():
    with pytest.raises(ValueError, match="unknown convention 'thop'"):
        measure('fat_b0', conventions=('thop',))
    with pytest.raises(ValueError, match="unknown model 'fat_b9'"):
        measure('fat_b9')
    with pytest.raises(ValueError, match="fasa= applies to fat_\\* models only, not 'resnet18'"):
        measure('resnet18', fasa='fasa')
    with pytest.raises(ValueError, match='must be positive'):
        measure('fat_b0', 0)


def test_variant_table_is_current():
    records = [r for p in FASA_VARIANTS for r in _records('fat_b0', p)]
    assert variant_table(records) == VARIANTS.read_text()


def test_variant_table_command(tmp_path, monkeypatch):
    monkeypatch.setattr(complexity, 'measure', _cached_measure)
    out = tmp_path / 'variants.md'
    assert main(['flops', '--variant-table', str(out)]) == 0
    assert out.read_text() == VARIANTS.read_text()


def _op_table(text: str) -> List[str]:
    lines = text.splitlines()
    start = lines.index('| op (aten) | FLOPs |')
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith('|'))
    return lines[start:end]


def test_op_table_is_the_same_in_the_docs():
    assert _op_table(complexity.__doc__) == _op_table((REPO / 'docs' / 'counting.md').read_text())


def test_docs_show_the_command_output(capsys, monkeypatch):
    monkeypatch.setattr(complexity, 'measure', _cached_measure)
    models = ['fat_b0', 'fat_b1', 'fat_b2', 'fat_b3']
    assert main(['flops', *models]) == 0
    shown = f"$ fat flops {' '.join(models)}\n{capsys.readouterr().out}```"
    assert shown in (REPO / 'docs' / 'counting.md').read_text()


def test_cli_json(capsys, monkeypatch):
    monkeypatch.setattr(complexity, 'measure', _cached_measure)
    assert main(['flops', 'fat_b0', '--json']) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = _measure('fat_b0', 'fasa')
    assert [(r['convention'], r['macs']) for r in records] == [(c, expected[c]['macs']) for c in CONVENTIONS]
    assert all({'model', 'img_size', 'params', 'fasa', 'flops'} <= set(r) for r in records)
    assert main(['flops', 'fat_b0', '--json', '--unit', 'flop', '--by', 'op']) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for r in records:
        assert r['flops'] == 2 * r['macs'] and r['unit'] == 'flop'
        assert r['by_op'] == {k: 2 * v for k, v in expected[r['convention']]['by_op'].items()}


def test_cli_text(capsys, monkeypatch):
    monkeypatch.setattr(complexity, 'measure', _cached_measure)
    assert main(['flops', 'fat_b0', '--by', 'module', '--fasa', 'global_only']) == 0
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if line.startswith('| fat_b0')]
    assert re.split(r'\s*\|\s*', summary[0])[1:-1] == ['fat_b0', 'global_only', '224', '4,399,704', '0.685', '0.748',
                                                      '0.760']
    assert '| stages.3 ' in out and '| attention ' in out and '| local ' not in out


@pytest.mark.parametrize('argv, message', [
    (['fat_b9'], "unknown model 'fat_b9'"),
    (['resnet18', '--fasa', 'fasa'], 'fat_* models only'),
    (['fat_b0', '--fasa', 'nope'], "unknown variant 'nope'"),
    ([], 'give at least one MODEL'),
    (['zz*'], "no registered model matches 'zz*'"),
    (['fat_b0', '--img-size', '0'], 'must be positive'),
    (['fat_b0', '--pins', 'x.json'], 'take no MODEL'),
])
def test_cli_errors(capsys, argv, message):
    assert main(['flops', *argv]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err

