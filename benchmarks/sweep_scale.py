#!/usr/bin/env python3
"""Scale of `fat sweep`: plan, status and collect over a synthetic 10,000-cell work directory, and a dry-run
launch of 5,000 cells split into arrays under MaxArraySize=1001. Targets (2-core CPU): each <= 5 s, >= 5 arrays.

The work directory is made up on disk, no training: 10 FASA variants x 10 learning rates x 10 weight decays x 10
seeds of the `smoke` preset (with model keywords, which plan checks), the cells in every state a real grid shows
(done with metrics and the trainer's environment.json, failed with a log, diverged, corrupt result.json, launched
with their job gone, running with the trainer's progress.json, pending, not launched). The running and pending
cells belong to a live stand-in for a `local` job (a sleeping process), so status reads their progress and
estimates the grid's finish.
Each verb is timed twice: in-process (the verb's own work, `fat` already imported) and as the command a user
types (`fat sweep ...` in a new process, wall clock from start to exit: Python start-up and every import
included; the median of --repeat runs); the target applies to the command. collect is timed with its params/MACs
cache warm (measuring a model is a one-time cost per distinct model, reported separately as "cold"). The start-up
of `fat --help` and `python -c "import fat"` is timed too. Exit status 1 if a command misses its target.

    python benchmarks/sweep_scale.py [--workdir DIR] [--keep] [--repeat N]
"""
import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import yaml

from fat.io import write_json_atomic
from fat.sweep.cells import append_record
from fat.sweep.cluster import hostname
from fat.sweep.collect import collect
from fat.sweep.launch import launch, prepare
from fat.sweep.progress import annotate, grid_text
from fat.sweep.state import Scheduler, cell_states, summary

FASA = ['fasa', 'fasa_bidirectional', 'no_interaction', 'avgpool_downsample', 'static_conv', 'global_only',
        'local_only', ['fasa', 'fasa', 'fasa', 'global_only'], ['fasa', 'fasa', 'global_only', 'global_only'],
        {'local': 'static', 'interaction': 'none'}]
TARGET_S = 5.0


def grid_file(root: Path, name: str, seeds: int) -> Path:
    path = root / f'{name}.yaml'
    path.write_text(yaml.safe_dump({
        'name': name, 'preset': 'smoke',
        'base': {'model_args': {'window_sizes': [8, 4, 2, 1]}},  # every cell's model keywords checked at plan
        'axes': {'fasa': FASA, 'lr': [round(1e-3 * (i + 1), 4) for i in range(10)],
                 'weight_decay': [round(0.01 * (i + 1), 3) for i in range(10)]},
        'seeds': list(range(seeds)), 'slurm': {'profile': str(Path(__file__).parents[1] / 'slurm' / 'local.yaml')},
    }, sort_keys=False))
    return path


def populate(path: Path, workdir: Path, local_job: str) -> Dict[str, int]:
    """Write every cell directory of the grid, in a realistic mix of states (`local_job`: the pid of a live
    stand-in for a local job, which runs the running cells and holds the pending ones)."""
    sweep = prepare(path, [], workdir)
    rng = random.Random(0)
    env = [{'versions': {'torch': '2.14.1'}, 'hardware': {'device': 'cpu', 'cpu': 'AMD EPYC', 'hostname': 'node1'},
            'git': {'sha': '0123456789abcdef', 'dirty': False}, 'world_size': 1, 'resumed_from': None}]
    log_dir = sweep.root / '.submitit' / '%j'
    kinds: Dict[str, int] = {}
    for i, cell in enumerate(sweep.cells):
        kind = rng.choices(['done', 'failed', 'diverged', 'corrupt', 'gone', 'running', 'pending', 'fresh'],
                           [70, 5, 5, 5, 5, 3, 2, 5])[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == 'fresh':
            continue
        cell.write(sweep.grid)
        job_id = f'{1000 + i // 1000}_{i % 1000}'
        local = kind in ('running', 'pending')
        append_record(cell.dir, {'event': 'submitted', 'job_id': local_job if local else job_id,
                                 'cluster': 'local' if local else 'slurm', 'host': hostname(),
                                 'log_dir': str(log_dir)})
        if kind == 'pending':
            continue
        append_record(cell.dir, {'event': 'started', 'job_id': local_job if local else job_id, 'host': hostname(),
                                 'pid': 1})
        if kind == 'done':
            top1 = rng.uniform(10, 90)
            write_json_atomic(cell.dir / 'result.json', {
                'status': 'done', 'final_top1': top1, 'final_top5': top1 + 5, 'best_top1': top1 + 1,
                'best_top5': top1 + 6, 'epochs': 2, 'steps': 8, 'params': 435946, 'train_time_s': 1.0,
                'train_images_per_s': 140.0, 'eval_images_per_s': 800.0})
            (cell.dir / 'environment.json').write_text(json.dumps(env))
        elif kind == 'failed':
            log = log_dir.parent / job_id / f'{job_id}_0_log.err'
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text('Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n')
        elif kind == 'diverged':
            write_json_atomic(cell.dir / 'result.json', {'status': 'diverged', 'error': 'loss is nan'})
        elif kind == 'corrupt':
            (cell.dir / 'result.json').write_text('{"status": "do')
        elif kind == 'running':
            step = rng.randrange(1, 8)
            write_json_atomic(cell.dir / 'progress.json', {
                'time': time.time(), 'phase': 'train', 'epoch': step // 4, 'epochs': 2, 'step_in_epoch': step % 4,
                'steps_per_epoch': 4, 'step': step, 'steps': 8, 'step_seconds': 0.05, 'images_per_s': 320.,
                'eval_seconds': 0.1, 'eval_every': 1, 'val_top1': rng.uniform(10, 90) if step >= 4 else None})
    return kinds


def timed(fn: Callable[[], object]) -> Tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# the `fat` command as installed beside this Python (a venv's bin/), else the same through `python -m fat.cli`
_FAT = Path(sys.executable).with_name('fat')
FAT = [str(_FAT)] if _FAT.exists() else [sys.executable, '-m', 'fat.cli']
REPEAT = 3


def command(argv: List[str]) -> float:
    """Wall-clock seconds of a new process running `argv` to its end: the median of REPEAT runs."""
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli(args: List[str]) -> float:
    return command([*FAT, *args])


def main() -> int:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', type=Path, help='where to build the synthetic work directory (default: temp)')
    parser.add_argument('--keep', action='store_true', help='keep the synthetic work directory')
    parser.add_argument('--repeat', type=int, default=REPEAT, help=f'runs of each command (median; default {REPEAT})')
    args = parser.parse_args()
    REPEAT = max(1, args.repeat)
    root = args.workdir or Path(tempfile.mkdtemp(prefix='sweep-scale-'))
    root.mkdir(parents=True, exist_ok=True)
    big, half = grid_file(root, 'scale10k', 10), grid_file(root, 'scale5k', 5)
    workdir = root / 'runs'
    rows = []
    # what the process table shows for a `local` job: a live process with `submitit` on its command line
    job = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)', 'submitit-stand-in'])
    try:
        t, kinds = timed(lambda: populate(big, workdir, str(job.pid)))
        print(f'synthetic work directory: {sum(kinds.values())} cells {kinds} written in {t:.1f} s')

        t_prep, sweep = timed(lambda: prepare(big, [], workdir))
        rows.append(('expand + validate 10,000 cells (part of every verb)', t_prep, None))
        t, states = timed(lambda: cell_states(sweep.cells, Scheduler.snapshot()))
        t_progress, grid = timed(lambda: annotate(states))
        t += t_progress
        print(f'status: {summary(states)}\n{grid_text(grid)} (progress and estimate: {t_progress:.2f} s)')
        rows.append(('status 10,000 cells', t_prep + t, cli(['sweep', 'status', str(big), '--workdir', str(workdir)])))
        t, report = timed(lambda: launch(sweep, 'slurm', dry_run=True, array_size_limit=1001))
        rows.append(('plan 10,000 cells', t_prep + t, cli(['sweep', 'plan', str(big), '--workdir', str(workdir),
                                                           '--cluster', 'slurm', '--max-array-size', '1001'])))
        out = root / 'scale10k.csv'
        t_cold, _ = timed(lambda: collect(sweep, states, out))
        t, (frame, incomplete, *_) = timed(lambda: collect(sweep, states, out))
        print(f'collect: {len(frame)} rows, {len(incomplete)} incomplete listed; first collect (params/MACs of '
              f'{len(FASA)} models measured, then cached): {t_prep + t_cold:.2f} s')
        rows.append(('collect 10,000 cells', t_prep + t, cli(['sweep', 'collect', str(big), '--workdir',
                                                              str(workdir), '--out', str(out)])))

        t, sweep5 = timed(lambda: prepare(half, [], root / 'runs5k'))
        t_launch, dry = timed(lambda: launch(sweep5, 'slurm', dry_run=True, array_size_limit=1001))
        sizes = [a['size'] for a in dry.arrays]
        print(f'dry-run launch of {len(sweep5.cells)} cells: {len(sizes)} arrays {sizes} '
              f'(MaxArraySize {dry.max_array_size}), sbatch scripts rendered')
        rows.append((f'dry-run launch 5,000 cells -> {len(sizes)} arrays', t + t_launch,
                     cli(['sweep', 'launch', str(half), '--workdir', str(root / 'runs5k'), '--dry-run',
                          '--cluster', 'slurm', '--max-array-size', '1001'])))
        assert len(sizes) >= 5, sizes
    finally:
        job.kill()
        job.wait()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    rows.append(('`fat --help`', None, cli(['--help'])))
    rows.append(('`python -c "import fat"`', None, command([sys.executable, '-c', 'import fat'])))
    print(f"\ncommands: {' '.join(FAT)} ... (median of {REPEAT} runs); target: the command in <= {TARGET_S:.0f} s")
    print(f"\n| {'verb':<52} | in-process (s) | command (s) | target |")
    print(f"|{'-' * 54}|----------------|-------------|--------|")
    failed = False
    for what, t_in, t_cli in rows:
        inner = f'{t_in:14.2f}' if t_in is not None else f"{'-':>14}"
        cmd = f'{t_cli:11.2f}' if t_cli is not None else f"{'-':>11}"
        verdict = ''
        if t_cli is not None and what.startswith(('status', 'plan', 'collect', 'dry-run')):
            verdict = 'pass' if t_cli <= TARGET_S else 'FAIL'
            failed |= verdict == 'FAIL'
        print(f'| {what:<52} | {inner} | {cmd} | {verdict:>6} |')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
