"""`fat data bench`: how many training images per second one CPU core decodes and augments.

Each figure is a real `torch.utils.data.DataLoader` over a dataset's training split, as `fat train` builds it
(`fat.data.build_datasets` with `data_dir=DIR` and the config keys given: the formats it reads): the images decoded
by the config's `decoder` and put through the training transforms of `fat.data.build_transforms`
(the official recipe's by default: RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing,
normalisation), seeded per sample by `SeededSamples`, batched by 1..N worker processes. A round is one fresh
loader of `batches x workers` batches, timed from its creation to its last batch (worker start-up included, so
the figure errs low); img/s per core is the round's img/s over its workers.

Contention is detected, not averaged (`fat.contention`): the workers' CPU time (collected when they exit) over
workers x the round's wall time is the round's CPU share, and a calibration kernel runs in the main process before
and after it, while no worker is alive. A round below 90 % share or 10 % slow is re-timed, and a figure with a
round that stayed contended carries the reasons in ``contended``. More workers than free cores is contention too.

Results merge into ``<results-dir>/loader-<environment>.csv`` (`fat bench`'s naming; default ``runs/bench/``, so
that an ad-hoc run never replaces the committed figures, which `--results-dir results` writes).
"""
import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import PIL
import timm
import torch
import torchvision
from torch.utils.data import DataLoader

import fat
from fat.bench import write_results
from fat.contention import SLOW_HOST, Monitor, slower_host, summarize_checks
from fat.data.datasets import SeededSamples, build_datasets, build_transforms
from fat.data.decode import DECODERS
from fat.data.jpegs import MANIFEST, generate
from fat.environment import cpu_name, env_name
from fat.train.cli import parse_override
from fat.train.config import resolve_config

__all__ = ['FIELDS', 'bench', 'check_options', 'results_path', 'register']

FIELDS = (
    'dataset', 'decoder', 'workers', 'img_per_sec', 'img_per_sec_per_core', 'spread_pct', 'rounds',
    'round_img_per_sec', 'contended', 'retimed', 'round_cpu_share', 'round_calibration', 'round_load',
    'calibration_ms', 'images_per_round', 'batch_size', 'img_size', 'transforms', 'images', 'mean_kb',
    'cpu_count', 'device_name', 'torch', 'torchvision', 'timm', 'pillow', 'fat_harness')
_ROW_KEY = ('dataset', 'decoder', 'workers', 'batch_size', 'img_size', 'transforms')
_TRANSFORM_KEYS = ('scale', 'hflip', 'auto_augment', 'reprob', 'remode', 'interpolation')


def _children_cpu() -> float:
    """CPU seconds of this process's exited (and reaped) children: the loader workers of finished rounds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _round(dataset: SeededSamples, workers: int, batch_size: int, batches: int, epoch: int) -> float:
    """Seconds one fresh loader takes to deliver `batches` batches (its workers exit before it returns)."""
    drawn = torch.randint(len(dataset), (batches * batch_size,), generator=torch.Generator().manual_seed(epoch))
    sampler = [(epoch, index) for index in drawn.tolist()]  # SeededSamples takes (epoch, index), as in training
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True)
    for _ in loader:  # exhausted: the workers are joined, so their CPU time is in RUSAGE_CHILDREN
        pass
    return time.perf_counter() - start


def check_options(max_workers: int, decoders: Sequence[str], overrides: Dict[str, Any], batch_size: int,
                  batches: int, rounds: int) -> Dict[str, Any]:
    """The resolved training config, once every option is valid (ValueError naming the first that is not)."""
    for name, value in (('--workers', max_workers), ('--batch-size', batch_size), ('--batches', batches),
                        ('--rounds', rounds)):
        if value < 1:
            raise ValueError(f'{name} must be >= 1, got {value}')
    for decoder in decoders:
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    return resolve_config(overrides)


def bench(path: Path, max_workers: int, decoders: Sequence[str], overrides: Dict[str, Any],
          batch_size: int = 32, batches: int = 10, rounds: int = 3, retries: int = 2,
          log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """One record per decoder and worker count (1..max_workers), their rounds timed round-robin."""
    cfg = check_options(max_workers, decoders, {'data_dir': str(path), **overrides}, batch_size, batches, rounds)
    torch.set_num_threads(1)  # as in the workers (DataLoader sets it there); the calibration kernel runs here
    sets = {}
    for decoder in decoders:  # the training split exactly as `fat train` builds it
        train, _, info = build_datasets(dict(cfg, decoder=decoder))
        train_tf, _ = build_transforms(cfg, cfg['in_chans'] or info['channels'], info['channels'])
        sets[decoder] = SeededSamples(train, train_tf, cfg['seed'])
    files = [p for p, _ in getattr(train, 'samples', ())]  # an image folder's files
    for p in files:  # into the page cache: the figure is decoding, not the disk
        Path(p).read_bytes()
    mean_kb = round(statistics.mean(os.path.getsize(p) for p in files) / 1e3, 1) if files else ''
    for ds in sets.values():  # first calls (lazy imports, caches) outside the timing
        for i in range(min(4, len(ds))):
            ds[(0, i)]
    contenders = [(d, w) for d in decoders for w in range(1, max_workers + 1)]
    times: Dict[tuple, List[float]] = {c: [] for c in contenders}
    checks: Dict[tuple, list] = {c: [] for c in contenders}
    monitor = Monitor(retries=retries)
    for r in range(rounds):
        for i in range(len(contenders)):
            decoder, workers = contender = contenders[(i + r) % len(contenders)]
            seconds, check = monitor.measure(
                functools.partial(_round, sets[decoder], workers, batch_size, batches * workers, r), _children_cpu,
                workers)
            times[contender].append(seconds)
            checks[contender].append(check)
            if log:
                rate = batch_size * batches * workers / seconds
                flag = f" CONTENDED: {', '.join(check.reasons)}" if check.contended else ''
                retimed = f', timed {check.attempts}x' if check.attempts > 1 else ''
                log(f'round {r + 1}/{rounds} {decoder} x{workers} workers: {rate:.1f} img/s ({rate / workers:.1f} '
                    f'per core); CPU share {check.cpu_share:.2f}, calibration {check.calibration:.2f}x, load '
                    f'{check.load1:.2f}{retimed}{flag}')
    transforms = ' '.join(f'{k}={cfg[k]}' for k in _TRANSFORM_KEYS)
    manifest = Path(path) / MANIFEST
    if manifest.is_file():  # named by what it is, not where it was written
        m = json.loads(manifest.read_text())
        dataset = f"generated {m['width']}x{m['height']} q{m['quality']}"
    else:
        dataset = str(Path(path).resolve())
    records = []
    for contender in contenders:
        decoder, workers = contender
        images = batch_size * batches * workers
        per_round = [images / s for s in times[contender]]
        median = statistics.median(per_round)
        spread = 100 * (max(per_round) - min(per_round)) / median if len(per_round) > 1 else ''
        records.append(dict(
            dataset=dataset, decoder=decoder, workers=workers, img_per_sec=round(median, 1),
            img_per_sec_per_core=round(median / workers, 1), spread_pct=spread if spread == '' else round(spread, 1),
            rounds=rounds, round_img_per_sec=';'.join(f'{x:.1f}' for x in per_round),
            **summarize_checks(checks[contender]), calibration_ms=round(1e3 * monitor.reference, 2),
            images_per_round=images, batch_size=batch_size, img_size=cfg['img_size'], transforms=transforms,
            images=len(train), mean_kb=mean_kb, cpu_count=len(os.sched_getaffinity(0)),
            device_name=cpu_name(), torch=torch.__version__, torchvision=torchvision.__version__,
            timm=timm.__version__, pillow=PIL.__version__, fat_harness=fat.__version__))
    return records


def results_path(results_dir: str = 'runs/bench') -> Path:
    """`<results_dir>/loader-<environment>.csv`, the environment in timm's convention (`pt2.14-cpu-amd_epyc`)."""
    return Path(results_dir) / f"loader-{env_name(torch.__version__, 'cpu', cpu_name())}.csv"


def _review(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """The file's rows, this run's and earlier runs', compared across runs (`slower_host`); each slow one said."""
    rows = slower_host(rows)
    for row in rows:
        if SLOW_HOST in row['contended']:
            print(f"warning: {row['decoder']} x{row['workers']} workers ({row['dataset']}): {row['contended']}",
                  file=sys.stderr)
    return rows


def _run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(text) for text in args.overrides)
    workers = len(os.sched_getaffinity(0)) if args.workers is None else args.workers
    decoders = args.decoder or [resolve_config(overrides)['decoder']]
    check_options(workers, decoders, overrides, args.batch_size, args.batches, args.rounds)  # before writing
    if args.generate is not None:
        width, sep, height = args.generate_size.partition('x')
        if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise ValueError(f'--generate-size expects WIDTHxHEIGHT (e.g. 500x375), got {args.generate_size!r}')
        manifest = generate(Path(args.folder), args.generate, (int(width), int(height)),
                            progress=not args.no_progress)
        print(f"{args.folder}: {manifest['count']} generated {manifest['width']}x{manifest['height']} JPEGs, "
              f"quality {manifest['quality']}, {manifest['mean_kb']} KB on average", file=sys.stderr)
    records = bench(Path(args.folder), workers, decoders, overrides, args.batch_size, args.batches, args.rounds,
                    args.retries, log=lambda line: print(line, file=sys.stderr, flush=True))
    for r in records:
        spread = f" (range {r['spread_pct']} % over {r['rounds']} rounds)" if r['rounds'] > 1 else ''
        print(f"{r['decoder']:<6} {r['workers']:>2} workers {r['img_per_sec']:>8.1f} img/s "
              f"{r['img_per_sec_per_core']:>7.1f} per core{spread}"
              + (f"  CONTENDED ({r['contended']})" if r['contended'] else ''))
    if not args.no_save:
        path = write_results(records, results_path(args.results_dir), FIELDS, _ROW_KEY, review=_review)
        print(f'wrote {path}')
    return 0


def register(subparsers: Any) -> None:
    """Add `bench` to `fat data`."""
    p = subparsers.add_parser('bench', description=__doc__.split('\n\n')[0] + ' Writes '
                              'runs/bench/loader-<environment>.csv (--results-dir results: the committed figures).')
    p.add_argument('folder', metavar='DIR',
                   help="the dataset's data_dir, as fat train reads it (an image folder: DIR/train/<class>/* and "
                        'DIR/val/<class>/*); its training split is timed')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                   help='training config keys (fat train --help), e.g. dataset=... decoder=draft img_size=256')
    p.add_argument('--generate', type=int, metavar='N',
                   help='first write N generated ImageNet-sized JPEGs (500x375, quality 90, natural-image '
                        'spectrum) into DIR, a new folder (kept and reused by the next run with the same N)')
    p.add_argument('--generate-size', default='500x375', metavar='WxH',
                   help="the generated images' size (default: 500x375, ImageNet's most common)")
    p.add_argument('--workers', type=int, metavar='N',
                   help='time 1..N loader workers (default: the cores this process may use)')
    p.add_argument('--decoder', nargs='+', metavar='NAME',
                   help=f"{', '.join(DECODERS)}: several are timed side by side (default: the config's, pil)")
    p.add_argument('--batch-size', type=int, default=32, metavar='N', help='images per batch (default: 32)')
    p.add_argument('--batches', type=int, default=10, metavar='N',
                   help='batches per worker in a round (default: 10)')
    p.add_argument('--rounds', type=int, default=3, metavar='N', help='rounds per figure, round-robin (default: 3)')
    p.add_argument('--retries', type=int, default=2, metavar='N',
                   help='re-time a contended round up to N times, then flag its figure (default: 2)')
    p.add_argument('--results-dir', default='runs/bench',
                   help='where the CSV goes (default: runs/bench; give results for the committed figures)')
    p.add_argument('--no-save', action='store_true', help='print only, write no CSV')
    p.add_argument('--no-progress', action='store_true', help='no progress bar while generating')
    p.set_defaults(func=_run)
