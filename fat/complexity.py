"""Parameters and MACs of any timm model under named counting conventions.

FLOP counts disagree between papers mostly because their tools count different things. Every count here names
its convention:

* ``paper``: convolutions and linear layers only (what module-hook counters such as thop report). FAT's own
  published figures (0.7 / 1.2 / 2.0 / 4.4 G for B0..B3) are this convention.
* ``fvcore``: fvcore's own defaults (convolutions, linear layers, matmul/einsum, norms, adaptive average
  pooling; one multiply-add = one "flop"), plus a handle that costs fused attention
  (``F.scaled_dot_product_attention``, which fvcore counts as 0) as the two matmuls fvcore counts on the explicit
  path. This is fvcore's number with fused attention disabled, without having to disable it.
* ``full``: every operation costed in FLOPs by the table below; MACs are FLOPs / 2. Ops that no handle costs are
  listed in the record's ``uncounted`` (none for any FAT model).

All counts are MACs (``macs``; ``flops`` = 2 x ``macs``) for one image, the model in eval mode, built by
`measure` as timm builds it by default except that a head larger than ImageNet-1k's (TinyViT's 21841 classes) is
replaced by a 1000-class one, re-parameterizable peers are re-parameterized (`timm.utils.reparameterize_model`;
FAT is counted as built, BatchNorms included) and fixed-size models are built for the requested size. Counting is
fvcore's `FlopCountAnalysis` with one set of op handles per convention, all evaluated on a single trace.

Cost of each op in the ``full`` convention, in FLOPs (N = elements of the output unless said otherwise; attention
with L queries, S keys, head widths E for q, k and E_v for v costs QK^T, the scaling of q, softmax and AV):

| op (aten) | FLOPs |
|---|---|
| convolution | 2 x (C_in / groups) x k_h x k_w per output element, + 1 with a bias |
| linear, addmm | 2 x C_in per output element, + 1 with a bias |
| matmul, mm, bmm, einsum | 2 per multiply-add |
| scaled_dot_product_attention | its explicit form, per batch x head: 2 L S (E + E_v) + L E + 5 L S (+ L S if masked) |
| softmax, log_softmax | 5 N (max, subtract, exp, sum, divide) |
| group_norm, layer_norm, instance_norm | 8 N with an affine, 6 N without (mean 1, variance 3, normalise 2, affine 2) |
| batch_norm (eval) | 2 N (per-channel scale and shift) |
| add, sub, mul, div, neg, exp, log, sqrt, rsqrt, pow, reciprocal, sin, cos, tanh, relu | 1 N |
| maximum, minimum, clamp_min, clamp_max, cumsum | 1 N |
| clamp, hardtanh, relu6 | 2 N (min and max) |
| sigmoid | 3 N (exp, add, reciprocal) |
| silu | 4 N (sigmoid, multiply) |
| hardsigmoid, hardswish | 4 N, 5 N |
| gelu | 5 N (erf form), 9 N (tanh approximation) |
| mean, sum, adaptive_avg_pool2d, adaptive_max_pool2d | 1 per input element |
| linalg_vector_norm | 2 per input element (square, sum) |
| avg_pool2d, max_pool2d | k_h x k_w N |
| upsample_bilinear2d, grid_sampler | 7 N (4 weights, 3 adds) |
| upsample_nearest2d, pad, expand_as, view, reshape, permute, cat, index, compare, dropout (eval) ... | 0 |
| any op on 0-dim tensors (traced shape arithmetic such as H x W) | 0 |

Breakdowns: ``by_op`` (operator -> MACs), ``by_module`` (the model's top-level children, containers such as
``stages`` expanded one level, plus ``(root)`` for ops in the model's own forward; the rows sum to the total) and,
for FAT models, ``fasa_parts``: every FASA module's cost split into q, local (the depthwise conv), downsample,
kv, attention (SDPA), gating (the element-wise self-modulation and interaction) and mixer (W_o), summed over all
blocks.

The regression file `results/complexity-pins.json` pins params and MACs of every registered ``fat_*`` model and
FASA variant at 224x224 under all three conventions (regenerate: ``fat flops --pins results/complexity-pins.json``);
``docs/variants.md`` is the generated FASA variant table (``fat flops --variant-table docs/variants.md``).
"""
import argparse
import json
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import fvcore
import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from tqdm import tqdm

with warnings.catch_warnings():
    # fvcore 0.1.5 scripts a helper at import, which torch >= 2.10 deprecates
    warnings.filterwarnings('ignore', message='`torch.jit.script', category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS  # fvcore's own default handles, the `fvcore` convention
    from fvcore.nn.jit_handles import (
        Handle,
        addmm_flop_jit,
        bmm_flop_jit,
        conv_flop_jit,
        einsum_flop_jit,
        elementwise_flop_counter,
        get_shape,
        linear_flop_jit,
        matmul_flop_jit,
    )

from fat.checks import close_hint
from fat.io import write_text_atomic
from fat.models import FASA, FASA_VARIANTS
from fat.models.fuse import reparameterize_peer

__all__ = ['CONVENTIONS', 'count', 'measure', 'pins', 'variant_table', 'register']

CONVENTIONS: Tuple[str, ...] = ('paper', 'fvcore', 'full')
_FASA_PARTS = {'q': 'q', 'local_mixer': 'local', 'pool': 'downsample', 'kv': 'kv', 'mixer': 'mixer'}
_BREAKDOWNS = {'by_op': 'op', 'by_module': 'module', 'fasa_parts': 'FASA part (all blocks)'}


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return int(torch.Size(shape).numel()) if shape is not None else 0


def _sdpa_dims(inputs: List[Any]) -> Tuple[int, int, int, int, bool]:
    """(queries x batch x heads, keys, E, E_v, has mask) of an aten::scaled_dot_product_attention node."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    return int(torch.Size(q[:-1]).numel()), k[-2], q[-1], v[-1], get_shape(inputs[3]) is not None


def _sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """What fvcore's matmul handle counts on the explicit path: QK^T and AV."""
    rows, keys, e, e_v, _ = _sdpa_dims(inputs)
    return rows * keys * (e + e_v)


def _sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """The explicit path op by op: (q * scale) @ k^T [+ mask], softmax, @ v."""
    rows, keys, e, e_v, masked = _sdpa_dims(inputs)
    return 2 * rows * keys * (e + e_v) + rows * e + (5 + masked) * rows * keys


def _with_bias(macs: Callable[[List[Any], List[Any]], Any], bias_index: int) -> Handle:
    """2 FLOPs per multiply-add, + 1 per output element when the op adds a bias."""
    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        n = macs(inputs, outputs)
        n = sum(n.values()) if isinstance(n, Counter) else n
        return 2 * int(n) + (_numel(outputs[0]) if get_shape(inputs[bias_index]) is not None else 0)
    return handle


def _per_element(flops: int) -> Handle:
    # 0-dim results are traced shape arithmetic (H * W), not model compute
    return lambda inputs, outputs: flops * _numel(outputs[0]) if get_shape(outputs[0]) else 0


def _times(macs: Handle, factor: int) -> Handle:
    return lambda inputs, outputs: factor * int(macs(inputs, outputs))


def _norm(affine_index: int) -> Handle:
    return lambda inputs, outputs: _numel(inputs[0]) * (8 if get_shape(inputs[affine_index]) is not None else 6)


def _window(inputs: List[Any], outputs: List[Any]) -> int:
    kernel = inputs[1].toIValue() or [v.toIValue() for v in inputs[1].node().inputs()]  # a constant or a list node
    return _numel(outputs[0]) * (kernel[0] * kernel[-1])


def _gelu(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(outputs[0]) * (9 if inputs[1].toIValue() == 'tanh' else 5)


def _full_handles() -> Dict[str, Handle]:
    per_element = {
        **{op: (1, True) for op in (
            'add', 'sub', 'mul', 'div', 'neg', 'exp', 'log', 'sqrt', 'rsqrt', 'pow', 'reciprocal', 'tanh', 'relu')},
        'rsub': (1, False), 'maximum': (1, False), 'minimum': (1, False), 'clamp_min': (1, True),
        'clamp_max': (1, True), 'sin': (1, True), 'cos': (1, True), 'cumsum': (1, True),
        'clamp': (2, True), 'hardtanh': (2, True), 'relu6': (2, True), 'sigmoid': (3, True), 'silu': (4, True),
        'hardsigmoid': (4, True), 'hardswish': (5, True), 'softmax': (5, False), 'log_softmax': (5, False),
        'batch_norm': (2, False), 'upsample_bilinear2d': (7, False), 'grid_sampler': (7, False),
        'upsample_nearest2d': (0, False), 'pad': (0, False), 'expand_as': (0, False),
    }
    handles: Dict[str, Handle] = {}
    for op, (flops, inplace) in per_element.items():
        handles[f'aten::{op}'] = _per_element(flops)
        if inplace:
            handles[f'aten::{op}_'] = handles[f'aten::{op}']
    for op in ('mean', 'sum', 'adaptive_avg_pool2d', 'adaptive_max_pool2d'):
        handles[f'aten::{op}'] = elementwise_flop_counter(1, 0)
    handles['aten::linalg_vector_norm'] = elementwise_flop_counter(2, 0)
    handles.update({
        'aten::_convolution': _with_bias(conv_flop_jit, 2),
        'aten::linear': _with_bias(linear_flop_jit, 2),
        'aten::addmm': _with_bias(addmm_flop_jit, 0),
        'aten::matmul': _times(matmul_flop_jit, 2),
        'aten::mm': _times(matmul_flop_jit, 2),
        'aten::bmm': _times(bmm_flop_jit, 2),
        'aten::einsum': _times(einsum_flop_jit, 2),
        'aten::scaled_dot_product_attention': _sdpa_flops,
        'aten::group_norm': _norm(2),
        'aten::layer_norm': _norm(2),
        'aten::instance_norm': _norm(1),
        'aten::avg_pool2d': _window,
        'aten::max_pool2d': _window,
        'aten::gelu': _gelu,
        'aten::gelu_': _gelu,
    })
    return handles


# convention -> (aten op -> handle, MACs per unit the handles return)
_HANDLES: Dict[str, Tuple[Dict[str, Handle], float]] = {
    'paper': ({'aten::_convolution': conv_flop_jit, 'aten::linear': linear_flop_jit, 'aten::addmm': addmm_flop_jit}, 1),
    'fvcore': ({**_DEFAULT_SUPPORTED_OPS, 'aten::scaled_dot_product_attention': _sdpa_macs}, 1),
    'full': (_full_handles(), 0.5),
}


def _op_name(kind: str) -> str:
    name = kind.split('::')[-1]
    return 'conv' if name == '_convolution' else name.rstrip('_')


def _merged_handle(op: str, handles: Dict[str, Handle]) -> Handle:
    """One fvcore handle costing an op under several conventions at once, keyed (convention, op)."""
    def handle(inputs: List[Any], outputs: List[Any]) -> Counter:
        counts = Counter()
        for convention, h in handles.items():
            n = h(inputs, outputs)
            counts[(convention, op)] = int(sum(n.values()) if isinstance(n, Counter) else n)
        return counts
    return handle


def _check_conventions(conventions: Sequence[str]) -> Tuple[str, ...]:
    for c in conventions:
        if c not in CONVENTIONS:
            raise ValueError(f"unknown convention {c!r}; valid: {', '.join(CONVENTIONS)}")
    return tuple(conventions)


def count(
        model: nn.Module,
        inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
        conventions: Sequence[str] = CONVENTIONS,
) -> Tuple[Dict[str, Dict[str, Counter]], Counter]:
    """Count a model's MACs under each convention from a single fvcore trace.

    Args:
        model: The model, in eval mode.
        inputs: Its input batch (a tuple for several arguments).
        conventions: Any of `CONVENTIONS`.

    Returns:
        convention -> module name ('' = the whole model) -> Counter(op -> MACs), and the ops (aten kind -> calls)
        that no requested convention costs (with ``full`` requested: the ops left uncounted).
    """
    conventions = _check_conventions(conventions)
    per_op: Dict[str, Dict[str, Handle]] = {}
    for convention in conventions:
        for kind, handle in _HANDLES[convention][0].items():
            per_op.setdefault(kind, {})[convention] = handle
    analysis = FlopCountAnalysis(model, inputs).clear_op_handles()
    analysis.set_op_handle(**{kind: _merged_handle(_op_name(kind), h) for kind, h in per_op.items()})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    threads = torch.get_num_threads()
    # a batch-1 trace gains nothing from threads, and on a busy machine their spin-waits cost 10x
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='`torch.jit.trace', category=FutureWarning)
            per_module = analysis.by_module_and_operator()
    finally:
        torch.set_num_threads(threads)
    counts: Dict[str, Dict[str, Counter]] = {c: {} for c in conventions}
    for module, ops in per_module.items():
        for c in conventions:
            counts[c][module] = Counter()
        for (c, op), n in ops.items():
            counts[c][module][op] = n * _HANDLES[c][1]
    return counts, analysis.unsupported_ops()


def _module_rows(model: nn.Module, per_module: Dict[str, Counter]) -> Dict[str, float]:
    """Top-level children (containers expanded one level) and the model's own ops; the rows sum to the total."""
    names = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            names.extend(f'{name}.{sub}' for sub, _ in child.named_children())
        else:
            names.append(name)
    rows = {name: sum(per_module[name].values()) for name in names}
    rows['(root)'] = sum(per_module[''].values()) - sum(rows.values())
    return rows


def _fasa_parts(model: nn.Module, per_module: Dict[str, Counter]) -> Dict[str, float]:
    """Every FASA module split into its parts, summed over all of them."""
    parts = Counter({part: 0 for part in ('q', 'local', 'downsample', 'kv', 'attention', 'gating', 'mixer')})
    for name, module in model.named_modules():
        if not isinstance(module, FASA):
            continue
        own = Counter(per_module[name])
        for child, _ in module.named_children():
            ops = per_module[f'{name}.{child}']
            parts[_FASA_PARTS[child]] += sum(ops.values())
            own.subtract(ops)
        parts['attention'] += own.pop('scaled_dot_product_attention', 0)  # `_build` makes FASA take its SDPA path
        parts['gating'] += sum(own.values())
    return dict(parts)


def _build(model_name: str, img_size: int, **model_kwargs: Any) -> Tuple[nn.Module, torch.Tensor]:
    if img_size <= 0:
        raise ValueError(f'image size must be positive, got {img_size}')
    if not timm.is_model(model_name):
        raise ValueError(f'unknown model {model_name!r}{close_hint(model_name, timm.list_models())}')
    try:
        cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    except RuntimeError as e:  # an unknown pretrained tag
        raise ValueError(f'{model_name}: {e}') from e
    if 'fasa' in model_kwargs and not model_name.startswith('fat_'):
        raise ValueError(f'fasa= applies to fat_* models only, not {model_name!r}')
    if cfg.num_classes > 1000:
        model_kwargs.setdefault('num_classes', 1000)  # ImageNet-21k/22k default heads (TinyViT): count as 1k
    if cfg.fixed_input_size and img_size != cfg.input_size[-1]:
        model_kwargs.setdefault('img_size', img_size)
    model = reparameterize_peer(timm.create_model(model_name, **model_kwargs).eval())  # FAT counted as built
    for module in model.modules():
        if isinstance(module, FASA):
            module.fused_attn = True  # one SDPA node, so that `fasa_parts` can tell attention from gating
    in_chans = model_kwargs.get('in_chans', cfg.input_size[0])
    return model, torch.randn(1, in_chans, img_size, img_size)


def measure(
        model_name: str,
        img_size: int = 224,
        conventions: Sequence[str] = CONVENTIONS,
        **model_kwargs: Any,
) -> List[Dict[str, Any]]:
    """Params and MACs of a timm model, one record per convention.

    Args:
        model_name: A registered timm model name.
        img_size: Side of the square input image.
        conventions: Any of `CONVENTIONS`.
        **model_kwargs: Passed to `timm.create_model` (e.g. ``fasa='global_only'``).

    Returns:
        Records with model, img_size, params, convention, macs, flops, by_op, by_module; FAT models add fasa
        (the variant) and fasa_parts; ``full`` records add uncounted (aten op -> calls that no handle costs).
    """
    model, inputs = _build(model_name, img_size, **model_kwargs)
    with torch.no_grad():
        counts, uncounted = count(model, inputs, conventions)
    params = sum(p.numel() for p in model.parameters())
    records = []
    for convention, per_module in counts.items():
        macs = sum(per_module[''].values())
        record = dict(model=model_name, img_size=img_size, params=params, convention=convention, macs=macs,
                      flops=2 * macs, by_op=dict(per_module['']), by_module=_module_rows(model, per_module))
        if hasattr(model, 'fasa_variant'):
            record.update(fasa=model.fasa_variant, fasa_parts=_fasa_parts(model, per_module))
        if convention == 'full':
            record['uncounted'] = dict(uncounted)
        records.append(record)
    return records


def pins(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The regression file's content for records of `measure` (one key per model and FASA variant)."""
    models: Dict[str, Dict[str, Any]] = {}
    for r in records:
        models.setdefault(f"{r['model']}/{r['fasa']}", dict(params=r['params']))[r['convention']] = r['macs']
    return dict(
        about='params and MACs (batch 1, eval) of every fat_* model x FASA variant under each counting convention of '
              'fat/complexity.py; regenerate with `fat flops --pins results/complexity-pins.json`',
        img_size=records[0]['img_size'],
        environment=dict(torch=torch.__version__, timm=timm.__version__, fvcore=fvcore.__version__),
        models=models,
    )


def _pin_records(img_size: int = 224) -> List[Dict[str, Any]]:
    cells = [(name, preset) for name in timm.list_models('fat_*') for preset in FASA_VARIANTS]
    return [r for name, preset in tqdm(cells, desc='counting') for r in measure(name, img_size, fasa=preset)]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    """A Markdown pipe table with aligned columns (readable as plain text too)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    columns = list(zip(widths, right, strict=True))

    def line(row: Sequence[str]) -> str:
        return '| ' + ' | '.join(c.rjust(w) if r else c.ljust(w) for c, (w, r) in zip(row, columns, strict=True)) + ' |'
    rule = '|' + '|'.join('-' * (w + 1) + ':' if r else '-' * (w + 2) for w, r in columns) + '|'
    return '\n'.join([line(cells[0]), rule, *[line(row) for row in cells[1:]]])


def variant_table(records: Sequence[Dict[str, Any]]) -> str:
    """docs/variants.md: every FASA variant of one model, from `measure` records of each preset."""
    by_preset: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in records:
        by_preset.setdefault(r['fasa'], {})[r['convention']] = r
    model, img_size = records[0]['model'], records[0]['img_size']
    base = by_preset['fasa']['paper']['params']
    rows = []
    for preset, (_, ablates, equation) in FASA_VARIANTS.items():
        r = by_preset[preset]
        params = r['paper']['params']
        rows.append([f'`{preset}`', ablates, f'`{equation}`', f'{params:,}', f'{params - base:+,}',
                     *[f"{r[c]['macs'] / 1e6:.2f}" for c in CONVENTIONS]])
    header = ['variant', 'ablates', 'equation', 'params', 'vs fasa', *[f'{c} MMACs' for c in CONVENTIONS]]
    return '\n'.join([
        f'# FASA variants of `{model}` at {img_size}x{img_size}',
        '',
        '<!-- generated by `fat flops --variant-table docs/variants.md`; do not edit: '
        'tests/test_complexity.py fails when this file drifts from the models -->',
        '',
        'Each preset of `fat.models.fasa.FASA_VARIANTS` (the same variant in every stage): what it ablates, its '
        'equation (L = DWConv(W_q x), G = attention of W_q x over W_kv D(x), s = sigmoid), its parameters and its '
        'MACs (batch 1) under the counting conventions of `fat/complexity.py` ([counting.md](counting.md)).',
        '',
        _md_table(header, rows, [False, False, False] + [True] * 5),
        '',
    ])


def _write(path: str, text: str) -> None:
    write_text_atomic(path, text)
    print(f'wrote {path}')


def _breakdown(records: Sequence[Dict[str, Any]], key: str, scale: float, unit: str) -> str:
    """One model's breakdown (`by_op`, `by_module` or `fasa_parts`), a column per convention."""
    names = list(dict.fromkeys(name for r in records for name, n in r[key].items() if n))
    rows = [[name, *[f'{r[key].get(name, 0) * scale / 1e6:.2f}' for r in records]] for name in names]
    rows.append(['total', *[f'{sum(r[key].values()) * scale / 1e6:.2f}' for r in records]])
    header = [_BREAKDOWNS[key], *[f"{r['convention']} M{unit}" for r in records]]
    return _md_table(header, rows, [False] + [True] * len(records))


def _model_names(patterns: Sequence[str]) -> List[str]:
    if not patterns:
        raise ValueError('give at least one MODEL (a timm model name or pattern, e.g. fat_b0 or "fat_*")')
    names = []
    for pattern in patterns:
        matches = timm.list_models(pattern) if '*' in pattern else [pattern]
        if not matches:
            raise ValueError(f'no registered model matches {pattern!r}')
        names.extend(matches)
    return names


def _flops(args: argparse.Namespace) -> int:
    """`fat flops`: params and MACs (or FLOPs) of each model under each convention."""
    if args.pins or args.variant_table:
        if args.models:
            raise ValueError('--pins and --variant-table take no MODEL')
        if args.pins:
            _write(args.pins, json.dumps(pins(_pin_records()), indent=1) + '\n')
        if args.variant_table:
            _write(args.variant_table, variant_table([r for p in FASA_VARIANTS for r in measure('fat_b0', fasa=p)]))
        return 0
    names = _model_names(args.models)
    conventions = tuple(dict.fromkeys(args.convention))
    kwargs = {} if args.fasa is None else dict(fasa=args.fasa)
    scale, unit = (2, 'FLOPs') if args.unit == 'flop' else (1, 'MACs')
    keys = {'op': ('by_op',), 'module': ('by_module', 'fasa_parts'), None: ()}[args.by]
    per_model = [measure(name, args.img_size, conventions, **kwargs) for name in names]
    if args.json:
        for r in (r for records in per_model for r in records):
            out = {k: v for k, v in r.items() if k not in ('by_op', 'by_module', 'fasa_parts')}
            out.update({k: {n: v * scale for n, v in r[k].items()} for k in keys if k in r})
            print(json.dumps(dict(out, unit=args.unit) if keys else out))
        return 0
    header = ['model', 'fasa', 'img', 'params', *[f'{c} G{unit}' for c in conventions]]
    print(_md_table(header, [
        [r['model'], r.get('fasa', '-'), r['img_size'], f"{r['params']:,}",
         *[f"{c['macs'] * scale / 1e9:.3f}" for c in records]]
        for records in per_model for r in records[:1]
    ], [False, False, True, True] + [True] * len(conventions)))
    for records in per_model:
        first = records[0]
        for key in (k for k in keys if k in first):
            print(f"\n{first['model']} (fasa={first.get('fasa', '-')}), {args.img_size}x{args.img_size}:")
            print(_breakdown(records, key, scale, unit))
        uncounted = next((r['uncounted'] for r in records if r.get('uncounted')), None)
        if uncounted:
            ops = ', '.join(f'{k} x{v}' for k, v in uncounted.items())
            print(f"{first['model']}: the full convention leaves these ops uncounted: {ops}")
    return 0


def register(subparsers: Any) -> None:
    """Add `fat flops` to the `fat` command."""
    p = subparsers.add_parser(
        'flops',
        description=__doc__.split('\n\n')[0] + ' Conventions: paper (conv + linear only), fvcore (fvcore defaults, '
        'attention matmuls and norms included), full (every op costed; table in fat/complexity.py).')
    p.add_argument('models', nargs='*', metavar='MODEL', help='timm model names or patterns (e.g. "fat_*")')
    p.add_argument('--img-size', type=int, default=224, help='input image side (default: 224)')
    p.add_argument('--convention', nargs='+', choices=CONVENTIONS, default=list(CONVENTIONS),
                   help='counting conventions (default: all three)')
    p.add_argument('--unit', choices=('mac', 'flop'), default='mac', help='MACs (default) or FLOPs = 2 x MACs')
    p.add_argument('--by', choices=('op', 'module'), help='also print a breakdown by operator or by module')
    p.add_argument('--json', action='store_true', help='one JSON record per model and convention')
    p.add_argument('--fasa', help='FASA variant for fat_* models (default: fasa, the official code)')
    p.add_argument('--pins', metavar='PATH',
                   help='write the regression file (every fat_* model x FASA variant at 224) to PATH')
    p.add_argument('--variant-table', metavar='PATH', help='write the FASA variant table of fat_b0 (Markdown) to PATH')
    p.set_defaults(func=_flops)
