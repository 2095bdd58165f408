#!/usr/bin/env python3
"""Does channels_last change training? The trainer's own step (`fat.train.Trainer.train_step`: the proxy recipe,
AdamW, per-step cosine schedule, grad clipping), run twice from the same seed on the same batches, NCHW and
channels_last, on CPU in fp32, deterministic, one thread; the per-step losses and the final weights compared.

The claim it checks (docs/speed.md): channels_last leaves training equal to float round-off, so GPU grids may use
it; the loss trajectories must agree within 1e-5 over a few hundred steps. The control: the NCHW run again with every
initial weight moved by one float32 ulp, which shows how far training itself carries a round-off difference.

    python benchmarks/channels_last_train.py [--steps 300] [--batch-size 32] [--model fat_proxy]
"""
import argparse
import sys
from typing import List, Optional, Tuple

import torch

import fat  # noqa: F401  (registers the models)
from fat.distributed import Placement
from fat.train import PRESETS, Trainer, resolve_config


def losses(channels_last: bool, steps: int, batch_size: int, model: str, ulp: bool = False) -> Tuple[
        List[float], torch.nn.Module]:
    cfg = resolve_config(dict(PRESETS['proxy'], model=model, dataset='synthetic', in_chans=1, num_classes=10,
                              train_subset=steps * batch_size, val_subset=batch_size, batch_size=batch_size,
                              epochs=1, channels_last=channels_last, output_dir='-'))
    trainer = Trainer(cfg, Placement())
    if ulp:
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, float('inf'))))
    losses = [trainer.train_step(x, y) for x, y in trainer._train_loader()]
    return trainer.read_losses(losses), trainer.model


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--model', default='fat_proxy')
    p.add_argument('--tolerance', type=float, default=1e-5)
    args = p.parse_args(argv)
    nchw, m1 = losses(False, args.steps, args.batch_size, args.model)
    nhwc, m2 = losses(True, args.steps, args.batch_size, args.model)
    ulp, _ = losses(False, args.steps, args.batch_size, args.model, ulp=True)
    diffs = [abs(a - b) for a, b in zip(nchw, nhwc, strict=True)]
    control = [abs(a - b) for a, b in zip(nchw, ulp, strict=True)]
    print(f'{args.model}, {len(nchw)} steps of batch {args.batch_size}, proxy recipe, CPU fp32, 1 thread')
    print('| step | loss NCHW | loss channels_last | difference | control: NCHW, weights +1 ulp | its difference |')
    print('|---:|---:|---:|---:|---:|---:|')
    for i in sorted({0, 9, *range(49, len(nchw), 50), len(nchw) - 1} & set(range(len(nchw)))):
        print(f'| {i + 1} | {nchw[i]:.6f} | {nhwc[i]:.6f} | {diffs[i]:.1e} | {ulp[i]:.6f} | {control[i]:.1e} |')
    weights = max((a - b).abs().max().item() for a, b in zip(m1.state_dict().values(), m2.state_dict().values(),
                                                             strict=True) if a.is_floating_point())
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    print(f'control: largest loss difference {max(control):.2e}')
    print(f'largest loss difference {diffs[worst]:.2e} (step {worst + 1}); largest final weight difference '
          f'{weights:.2e}; tolerance {args.tolerance:g}: {"met" if diffs[worst] <= args.tolerance else "NOT met"}')
    return 0 if diffs[worst] <= args.tolerance else 1


if __name__ == '__main__':
    sys.exit(main())
