#!/usr/bin/env python3
"""The native FASA attention kernel (fat.models.native) against the PyTorch path it replaces (SDPA, then the
interaction), on FAT-B0's four stage shapes: the first fused FASA module of each stage (its convolutions included)
timed both ways on the input it sees in the model, alternating round by round.

    python benchmarks/fasa_attention.py [--batch-size 16] [--img-size 224] [--rounds 7] [--threads N]

Prints the median time per call of each path and the median of the per-round ratios with its range. Exits 1 where
the kernel cannot be built (see the warning), or when the two paths disagree by more than 1e-5.
"""
import argparse
import statistics
import sys
from functools import partial
from typing import List, Optional

import timm
import torch

import fat  # noqa: F401  (registers the models)
from fat.bench import time_steps
from fat.models import native
from fat.models.fuse import FusedFasa, fuse_model


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--iters', type=int, default=5, help='timed calls per path and round (default: 5)')
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not native.load():
        print('the native kernels could not be built here')
        return 1

    torch.manual_seed(0)
    model = fuse_model(timm.create_model('fat_b0')).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    inputs = {}  # the first block's FASA of each stage, with the input it sees in the model (a stage's first chunk)

    def keep(i: int, module: FusedFasa, args) -> None:
        inputs.setdefault(i, (module, args[0]))

    for i, stage in enumerate(model.stages):
        stage.blocks[0].attn.register_forward_pre_hook(partial(keep, i))
    with torch.inference_mode():
        model(x)

    print(f'FAT-B0 FASA, batch {args.batch_size}, {args.img_size}x{args.img_size}, {torch.get_num_threads()} threads, '
          f'{args.rounds} rounds x {args.iters} calls')
    print(f"  {'stage':<6} {'input':>16} {'heads':>5} {'PyTorch ms':>11} {'native ms':>10} {'speed-up':>9} "
          f"{'range':>11}")
    status = 0
    for i, (attn, inp) in sorted(inputs.items()):
        assert isinstance(attn, FusedFasa)
        times = {True: [], False: []}
        with torch.inference_mode():
            outputs = {}
            for use in (True, False):
                attn.native = use
                outputs[use] = attn(inp)
            diff = (outputs[True] - outputs[False]).abs().max().item()
            for _ in range(args.rounds):
                for use in (True, False):
                    attn.native = use
                    times[use].append(statistics.median(time_steps(partial(attn, inp), args.iters, num_warmup=1)))
        attn.native = True
        ratios = [a / b for a, b in zip(times[False], times[True], strict=True)]
        print(f"  {i:<6} {'x'.join(map(str, inp.shape)):>16} {attn.num_heads:>5} "
              f'{1e3 * statistics.median(times[False]):11.2f} {1e3 * statistics.median(times[True]):10.2f} '
              f'{statistics.median(ratios):8.2f}x {min(ratios):5.2f}-{max(ratios):.2f}')
        if diff > 1e-5:
            print(f'  stage {i}: the two paths differ by {diff:.2e}')
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
