#!/usr/bin/env python3
"""`fat bench` against timm's own benchmark.py: the same models and settings on one machine, the ratio of their
figures printed, pair by pair.

timm's benchmark.py is not part of the timm package; give a checkout of github.com/huggingface/pytorch-image-models
(``--timm-scripts``, else ``$TIMM_SCRIPTS_DIR``); without it the script says so and exits 0. It runs unchanged through
`fat timm` (the FAT models registered). Both sides run as their own process with the same settings: inference,
fp32, NCHW, eager, no re-parameterisation (`fat bench --setting as_built`, benchmark.py without flags), batch 1,
``OMP_NUM_THREADS`` threads (default 1; `fat bench --threads`), timm's 10 warm-up and 40 timed steps. The two
alternate, the first side swapped every pair (A B, B A, ...), so that drift in the machine's load hits both alike.

The statistics differ slightly, and this compares them as each tool reports them:

* benchmark.py: ``samples_per_sec`` = samples / the wall time of the whole timed loop (one run of 40 steps, the loop's
  own bookkeeping included);
* `fat bench`: ``samples_per_sec_mean`` = samples / the sum of the timed steps' times (the same mean step, without the
  loop's bookkeeping), after a contention check of its round (`fat.contention`), re-timed while contended.

Each child's CPU share (its CPU time over its wall time, from ``getrusage(RUSAGE_CHILDREN)``; the start-up included)
is printed as well, and a pair where either side got less than 90 % of a core, or `fat bench` flagged its round, is
left out of the ratio. The agreement target: the median ratio within ``--tolerance`` (default 5 %) of 1 for every
model.

    python benchmarks/vs_timm.py [--timm-scripts DIR] [--models fat_b0 ...] [--pairs 3] [--tolerance 0.05]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MODELS = ['fat_b0', 'deit_tiny_patch16_224', 'mobilenetv3_large_100', 'pvt_v2_b0', 'efficientvit_b1']
CPU_SHARE_MIN = 0.9


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: List[str], env: Dict[str, str]) -> Tuple[str, float]:
    """The command's stdout and its CPU share (CPU time / wall time); RuntimeError with its stderr if it fails."""
    cpu, wall = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    cpu, wall = _children_cpu() - cpu, time.perf_counter() - wall
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-2000:]}")
    return done.stdout, cpu / wall


def timm_side(script: Path, model: str, threads: int, env: Dict[str, str]) -> Tuple[float, float, str]:
    """(samples/s, CPU share, '') of timm's benchmark.py."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'timm.csv'
        _, share = _run([sys.executable, '-m', 'fat.cli', 'timm', str(script), '--model', model, '--bench',
                         'inference', '--device', 'cpu', '-b', '1', '--num-warm-iter', '10', '--num-bench-iter', '40',
                         '--results-file', str(out)], env)
        line = out.read_text().splitlines()
        row = dict(zip(line[0].split(','), line[1].split(','), strict=True))
    return float(row['infer_samples_per_sec']), share, ''


def fat_side(model: str, threads: int, env: Dict[str, str]) -> Tuple[float, float, str]:
    """(samples/s, CPU share, contention flag) of `fat bench`."""
    out, share = _run([sys.executable, '-m', 'fat.cli', 'bench', model, '--setting', 'as_built', '--device', 'cpu',
                       '--batch-size', '1', '--threads', str(threads), '--warmup', '10', '--iters', '40', '--json',
                       '--no-save', '--no-progress'], env)
    record = json.loads(out.splitlines()[-1])
    return float(record['samples_per_sec_mean']), share, record['contended']


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--timm-scripts', type=Path, default=None,
                        help='folder holding timm\'s benchmark.py (default: $TIMM_SCRIPTS_DIR)')
    parser.add_argument('--models', nargs='+', default=MODELS)
    parser.add_argument('--pairs', type=int, default=3, help='alternating pairs per model (default: 3)')
    parser.add_argument('--threads', type=int, default=1, help='OMP_NUM_THREADS for both (default: 1)')
    parser.add_argument('--tolerance', type=float, default=0.05, help='agreement target |ratio - 1| (default: 0.05)')
    args = parser.parse_args(argv)
    folder = args.timm_scripts or (Path(os.environ['TIMM_SCRIPTS_DIR']) if os.environ.get('TIMM_SCRIPTS_DIR') else None)
    if folder is None or not (folder / 'benchmark.py').is_file():
        print(f"timm's benchmark.py not found (in {folder}; give --timm-scripts or TIMM_SCRIPTS_DIR, a checkout of "
              'github.com/huggingface/pytorch-image-models); skipping the comparison')
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f'batch 1, fp32, NCHW, eager, {args.threads} thread(s), 10 warm-up + 40 timed steps; load average '
          f'{os.getloadavg()[0]:.2f}')
    print(f"{'model':<24} {'pair':>4} {'timm img/s':>10} {'CPU':>5} {'fat img/s':>10} {'CPU':>5} {'fat/timm':>8}  note")
    failed = []
    for model in args.models:
        ratios = []
        for pair in range(args.pairs):
            sides = [('timm', lambda m=model: timm_side(folder / 'benchmark.py', m, args.threads, env)),
                     ('fat', lambda m=model: fat_side(m, args.threads, env))]
            got = dict((name, run()) for name, run in (sides if pair % 2 == 0 else sides[::-1]))
            (t, t_share, _), (f, f_share, flag) = got['timm'], got['fat']
            note = '; '.join([*(['fat bench: ' + flag] if flag else []),
                              *([f'timm CPU share {t_share:.2f} < {CPU_SHARE_MIN}'] if t_share < CPU_SHARE_MIN else []),
                              *([f'fat CPU share {f_share:.2f} < {CPU_SHARE_MIN}'] if f_share < CPU_SHARE_MIN else [])])
            if not note:
                ratios.append(f / t)
            print(f'{model:<24} {pair + 1:>4} {t:10.2f} {t_share:5.2f} {f:10.2f} {f_share:5.2f} {f / t:8.3f}  '
                  f"{note or 'ok'}", flush=True)
        if not ratios:
            print(f'{model:<24} not resolved: every pair contended')
            failed.append(model)
            continue
        median = statistics.median(ratios)
        within = abs(median - 1) <= args.tolerance
        print(f'{model:<24} fat/timm median {median:.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} of '
              f"{args.pairs} pairs): {'within' if within else 'OUTSIDE'} ±{args.tolerance:.0%}")
        if not within:
            failed.append(model)
    print(f'load average at the end: {os.getloadavg()[0]:.2f}')
    print('agreement: ' + ('every model within the tolerance' if not failed else f"not met for {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
