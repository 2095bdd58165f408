#!/usr/bin/env python3
"""FAT-B0 of this project against the official implementation (github.com/qhfan/FAT): same weights, same outputs,
throughput ratios measured side by side in one run.

The official code is imported from a clone beside the project (``--official``, else ``$FAT_OFFICIAL_DIR``, else
``<repo>/../official``); without it the script says so and exits 0. It is never copied into this repository.
Both models get identical weights (random, every norm and BatchNorm statistic perturbed away from its init so that
folding them is exercised); the outputs of every contender must agree with the official ones (eval logits; in
training mode logits and parameter gradients) before anything is timed.

Timing alternates the contenders round by round (A B C A B C ...) after a warm-up, so that drift in the machine's
load hits all of them alike; the ratio to the official model is taken per round and the median over rounds
reported with its range. Every timed block is checked for contention as `fat bench` checks its rounds
(`fat.contention`: the timing thread's CPU share, a calibration kernel before and after) and re-timed while
contended; a round where either contender stayed contended is left out of the ratios, and a target with no clean
round is "not resolved". Targets on a 2-core CPU, fp32:

* inference, batch 16, 224x224: ours as ``fat bench`` runs it by default (re-parameterized, channels_last, eager)
  / official as released >= 1.5x, / official converted to channels_last >= 1.2x; ours in its best mode
  (+ torch.compile) / official as released >= 2x;
* training step (forward, cross-entropy, backward, AdamW), 64x64, batch 128, as ``fat bench --mode train`` runs
  it (channels_last): >= 1.2x.

Also printed: the machine's fp32 matmul peak (2048x2048), the fraction of it each inference contender achieves
(fvcore MACs of FAT-B0 x 2 x images/s), and each contender's minor page faults per step. glibc's malloc hands large
freed blocks back to the OS, so a model that allocates many large temporaries pays page faults on every step, and
how many depends on the process's allocation history: the official model's throughput varies most from run to run
for this reason. ``--tuned-malloc`` keeps freed memory in the heap for every contender (as jemalloc or tcmalloc
would), which removes them. Where CUDA is present the same comparison runs with AMP (fp16) at batch 128.

    python benchmarks/vs_official.py [--official PATH] [--rounds N] [--no-compile] [--skip-train] [--tuned-malloc]
"""
import argparse
import copy
import importlib.util
import os
import statistics
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import fat  # noqa: F401  (registers the models)
from fat import bench
from fat.complexity import measure
from fat.contention import Check, Monitor
from fat.models import checkpoint_filter_fn

REPO = Path(__file__).resolve().parents[1]
# the official FAT-B0 (classification/configs/FAT_b0.yaml)
OFFICIAL_B0 = dict(
    in_chans=3, num_classes=1000, embed_dims=[32, 80, 160, 256], depths=[2, 2, 6, 2], kernel_sizes=[3, 5, 7, 9],
    num_heads=[2, 5, 10, 16], window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 5, 5], mlp_ratios=[4, 4, 4, 4],
    drop_path_rate=0.05)
TARGETS = {
    ('infer', 'ours', 'official'): 1.5,
    ('infer', 'ours', 'official_nhwc'): 1.2,
    ('infer', 'ours_compiled', 'official'): 2.0,
    ('train', 'ours', 'official'): 1.2,
}
# a model to time and whether it runs channels_last
Contender = Tuple[nn.Module, bool]


def load_official(path: Path) -> Optional[ModuleType]:
    """The official classification/models.py as a module, or None when the clone is absent."""
    source = path / 'classification' / 'models.py'
    if not source.is_file():
        return None
    spec = importlib.util.spec_from_file_location('fat_official_models', source)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # it imports DropPath from timm.models.layers
        spec.loader.exec_module(module)
    return module


@torch.no_grad()
def twin_models(official: ModuleType, seed: int = 0) -> Dict[str, nn.Module]:
    """The official FAT-B0 and this project's fat_b0 holding the same (perturbed random) weights."""
    torch.manual_seed(seed)
    ref = official.FAT(**OFFICIAL_B0)
    for m in ref.modules():
        if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.)
    ours = timm.create_model('fat_b0', drop_path_rate=OFFICIAL_B0['drop_path_rate'])
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    return dict(official=ref, ours=ours)


def _no_drop_path(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, 'drop_prob'):
            m.drop_prob = 0.
    return model


def check_agreement(twins: Dict[str, nn.Module], contenders: Dict[str, Contender], atol: float = 1e-4) -> List[str]:
    """Max abs differences to the official model: eval logits of every inference contender, and the training-mode
    logits and parameter gradients of this project's model. Returns the failures."""
    x = torch.randn(2, 3, 224, 224)
    failures = []
    with torch.inference_mode():
        expected = twins['official'].eval()(x)
        for name, (model, nhwc) in contenders.items():
            diff = (model(x.contiguous(memory_format=torch.channels_last) if nhwc else x) - expected).abs().max()
            print(f'  eval logits      {name:<16} max |diff| {diff.item():.2e}')
            if diff > atol:
                failures.append(f'{name}: eval logits differ by {diff.item():.2e}')
    ref, ours = (_no_drop_path(twins[k]).train() for k in ('official', 'ours'))
    x = torch.randn(4, 3, 64, 64)
    target = torch.randint(1000, (4,))
    outs = []
    for model in (ref, ours):
        out = model(x)
        F.cross_entropy(out, target).backward()
        outs.append(out)
    diffs = {'train logits': (outs[0] - outs[1]).abs().max().item()}
    grads = dict(ours.named_parameters())
    mapped = checkpoint_filter_fn({k: p.grad for k, p in ref.named_parameters()}, ours)
    diffs['train gradients'] = max((grads[k].grad - g).abs().max().item() for k, g in mapped.items())
    for what, diff in diffs.items():
        print(f'  {what:<16} {"ours":<16} max |diff| {diff:.2e}')
        if diff > atol:
            failures.append(f'{what} differ by {diff:.2e}')
    return failures


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, iters: int = 10) -> float:
    """The device's GFLOP/s on an n x n matmul: the fastest of ``iters`` (a peak; other work only slows it)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = bench.time_steps(lambda: a @ b, iters, num_warmup=2, device=device)
    return 2 * n ** 3 / min(times) / 1e9


def alternate(
        steps: Dict[str, Callable[[], None]],
        batch_size: int,
        rounds: int,
        iters: int,
        device: torch.device,
        monitor: Monitor,
) -> Tuple[Dict[str, List[float]], Dict[str, float], Dict[str, List[Check]]]:
    """Images/s of each contender per round (median step of the round), the contenders taking turns, each timed
    block re-timed while contended; each contender's minor page faults per step (memory the allocator handed back
    to the OS and takes again); and each round's contention check."""
    throughput: Dict[str, List[float]] = {name: [] for name in steps}
    checks: Dict[str, List[Check]] = {name: [] for name in steps}
    faults = dict.fromkeys(steps, 0.)
    for _ in range(rounds):
        for name, step in steps.items():
            before = bench.minor_faults()
            times, check = monitor.measure(lambda step=step: bench.time_steps(step, iters, device=device))
            throughput[name].append(batch_size / statistics.median(times))
            checks[name].append(check)
            faults[name] += (bench.minor_faults() - before) / (rounds * iters * check.attempts)
    return throughput, faults, checks


def median_ratio(throughput: Dict[str, List[float]], name: str, base: str,
                 checks: Dict[str, List[Check]]) -> Optional[Tuple[float, float, float, int]]:
    """Median, min and max of the per-round throughput ratio name / base over the rounds where neither stayed
    contended, and how many rounds that is; None when there is none."""
    per_round = [a / b for a, b, ca, cb in zip(throughput[name], throughput[base], checks[name], checks[base],
                                                 strict=True) if not (ca.contended or cb.contended)]
    if not per_round:
        return None
    return statistics.median(per_round), min(per_round), max(per_round), len(per_round)


def contenders_for(twins: Dict[str, nn.Module], mode: str, device: torch.device, compile: bool) -> Dict[str, Contender]:
    """Inference: official as released, official in channels_last, ours as `fat bench` runs it by default, ours
    compiled. Training: official as released, ours as `fat bench --mode train` runs it."""
    official = copy.deepcopy(twins['official']).to(device).train(mode == 'train')
    contenders = dict(official=(official, False))
    if mode == 'infer':
        contenders['official_nhwc'] = (copy.deepcopy(official).to(memory_format=torch.channels_last), True)
    contenders['ours'] = (bench.prepare(copy.deepcopy(twins['ours']), mode, device), True)
    if compile and mode == 'infer':
        contenders['ours_compiled'] = (
            bench.prepare(copy.deepcopy(twins['ours']), mode, device, compile='inductor'), True)
    return contenders


def compare(
        contenders: Dict[str, Contender],
        mode: str,
        device: torch.device,
        batch_size: int,
        img_size: int,
        precision: str,
        rounds: int,
        iters: int,
        macs: Optional[float] = None,
        peak: Optional[float] = None,
) -> Tuple[Dict[str, List[float]], Dict[str, List[Check]]]:
    """Time the contenders of one mode side by side, print images/s and ratios; returns the per-round images/s and
    contention checks."""
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    steps = {}
    for name, (model, nhwc) in contenders.items():
        inputs = x.contiguous(memory_format=torch.channels_last) if nhwc else x
        steps[name] = bench.make_step(model, mode, inputs, precision, num_classes=1000)
        bench.time_steps(steps[name], 0, num_warmup=3, device=device, desc=f'warm-up {name}', progress=True)
    throughput, faults, checks = alternate(steps, batch_size, rounds, iters, device, Monitor(device))

    print(f"\n{mode}, {precision}, batch {batch_size}, {img_size}x{img_size}, {device_label(device)}, "
          f"{rounds} rounds x {iters} steps, load average {os.getloadavg()[0]:.2f}")
    with_peak = bool(macs and peak)
    header = (f"  {'contender':<16} {'img/s':>8} {'/ official':>11} {'range':>12} {'faults/step':>12} "
              f"{'contended':>10} {'CPU share':>10} {'calib.':>7}")
    print(header + ('  of fp32 peak' if with_peak else ''))
    for name, values in throughput.items():
        ratio = median_ratio(throughput, name, 'official', checks)
        shown = f'{ratio[0]:10.2f}x {ratio[1]:6.2f}-{ratio[2]:.2f}' if ratio else f"{'not resolved':>23}"
        contended = sum(c.contended for c in checks[name])
        line = (f'  {name:<16} {statistics.median(values):8.1f} {shown} {faults[name]:12,.0f} '
                f'{contended:>4} of {rounds:<3} {min(c.cpu_share for c in checks[name]):10.2f} '
                f'{max(c.calibration for c in checks[name]):6.2f}x')
        if with_peak:
            line += f'  {statistics.median(values) * 2 * macs / 1e9 / peak:13.0%}'
        print(line)
    print('  (ratios over the rounds where neither contender stayed contended; CPU share: the lowest of the rounds, '
          'calib.: the highest calibration ratio)')
    return throughput, checks


def device_label(device: torch.device) -> str:
    if device.type == 'cuda':
        return bench.device_name(device)
    return f'{bench.device_name(device)}, {torch.get_num_threads()} threads'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--official', type=Path, default=None,
                        help='clone of github.com/qhfan/FAT (default: $FAT_OFFICIAL_DIR, else <repo>/../official)')
    parser.add_argument('--rounds', type=int, default=7, help='alternation rounds (default: 7)')
    parser.add_argument('--iters', type=int, default=3, help='timed steps per contender and round (default: 3)')
    parser.add_argument('--no-compile', action='store_true', help='skip the torch.compile contender')
    parser.add_argument('--skip-train', action='store_true', help='skip the training-step comparison')
    parser.add_argument('--tuned-malloc', action='store_true',
                        help="keep freed memory in glibc's heap for every contender (no page faults from large "
                             "re-allocations, as with jemalloc/tcmalloc)")
    args = parser.parse_args(argv)

    path = args.official or Path(os.environ.get('FAT_OFFICIAL_DIR') or REPO.parent / 'official')
    official = load_official(path)
    if official is None:
        print(f'official FAT code not found at {path} (clone github.com/qhfan/FAT there, or set FAT_OFFICIAL_DIR / '
              f'--official); skipping the comparison')
        return 0
    print(f'official code: {path}; torch {torch.__version__}, timm {timm.__version__}, '
          f'load average {os.getloadavg()[0]:.2f}')
    if args.tuned_malloc:
        tuned = 'yes' if bench.tune_malloc() else 'no (not glibc)'
        print(f'malloc tuned for every contender (mmap threshold 32 MiB, trim threshold 1 GiB): {tuned}')
    twins = twin_models(official)
    cpu = torch.device('cpu')
    infer = contenders_for(twins, 'infer', cpu, compile=not args.no_compile)

    print('\noutputs (identical weights):')
    failures = check_agreement(twins, infer)
    if failures:
        print('outputs disagree with the official model: ' + '; '.join(failures))
        return 1

    macs = next(r['macs'] for r in measure('fat_b0', 224, conventions=('fvcore',)))
    peak = matmul_peak(cpu)
    print(f'\nfp32 matmul peak (2048x2048): {peak:.0f} GFLOP/s; FAT-B0 {macs / 1e9:.3f} GMACs (fvcore) at 224')
    timed = {'infer': compare(infer, 'infer', cpu, 16, 224, 'fp32', args.rounds, args.iters, macs, peak)}
    if not args.skip_train:
        train = contenders_for(twins, 'train', cpu, compile=False)
        timed['train'] = compare(train, 'train', cpu, 128, 64, 'fp32', args.rounds, args.iters)

    print('\ntargets (median over the uncontended rounds of the per-round ratio):')
    for (mode, name, base), target in TARGETS.items():
        if mode in timed and name in timed[mode][0]:
            ratio = median_ratio(*timed[mode][:1], name, base, timed[mode][1])
            if ratio is None:
                print(f'  {mode:<5} {name} / {base}: not resolved (every round contended; target >= {target}x)')
                continue
            value, low, high, n = ratio
            print(f"  {mode:<5} {name} / {base}: {value:.2f}x (range {low:.2f}-{high:.2f} over {n} of {args.rounds} "
                  f"rounds; target >= {target}x) {'met' if value >= target else 'MISSED'}")

    if torch.cuda.is_available():
        gpu = torch.device('cuda')
        for mode in ('infer',) if args.skip_train else ('infer', 'train'):
            contenders = contenders_for(twins, mode, gpu, compile=not args.no_compile)
            compare(contenders, mode, gpu, 128, 224, 'amp_fp16', args.rounds, args.iters)
    print(f'\nload average at the end: {os.getloadavg()[0]:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
