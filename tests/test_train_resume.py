"""Bit-exact resume: real `fat train` processes killed at random steps (SIGKILL, SIGTERM, SIGUSR2), a corrupt
checkpoint, and DDP with two CPU processes, each compared with an uninterrupted run of the same command, their
TensorBoard curves included (each step exactly once)."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest
import torch

from fat.train.curves import read_scalars

# the smoke preset with every source of randomness in play: Mixup/CutMix (numpy), RandAugment and erasing
# (per-sample seeds), drop path (torch), EMA; a checkpoint after every step so that kills land anywhere, and a
# curve point after every step too
RUN = ['--preset', 'smoke', 'train_subset=192', 'epochs=3', 'drop_path=0.1', 'ema=true', 'checkpoint_steps=1',
       'log_interval=1']
METRICS = ('status', 'epochs', 'steps', 'final_top1', 'final_top5', 'best_top1', 'best_top5', 'best_epoch',
           'final_ema_top1', 'final_ema_top5')
DDP_RUN = ['epochs=2']  # shorter: two processes share the two cores
LOGGED = ('epoch', 'step', 'lr', 'train_loss', 'val_top1', 'val_top5', 'val_loss', 'ema_top1', 'ema_top5')
TIMINGS = ('train/images_per_s', 'epoch/train_images_per_s', 'val/images_per_s')  # curves that differ run to run


def _start(out: Path, ranks: int = 1, ddp_run: Optional[bool] = None, extra: Sequence[str] = ()
           ) -> List[subprocess.Popen]:
    """`fat train` as `ranks` processes (a torchrun-style environment when more than one); `ddp_run`: with the
    shorter config of DDP runs (default: when more than one); `extra`: more key=value overrides."""
    ddp_run = ranks > 1 if ddp_run is None else ddp_run
    cmd = [sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(out), *RUN, *(DDP_RUN if ddp_run else []),
           *extra]
    log = open(out.parent / f'{out.name}.log', 'a')
    envs = [{}]
    if ranks > 1:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        envs = [dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(ranks), RANK=str(r),
                     LOCAL_RANK=str(r)) for r in range(ranks)]
    return [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **e)) for e in envs]


def _finish(out: Path, ranks: int = 1, extra: Sequence[str] = ()) -> List[int]:
    return _wait(out, _start(out, ranks, extra=extra))


def _wait(out: Path, procs: List[subprocess.Popen]) -> List[int]:
    ranks = len(procs)
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * ranks, (out.parent / f'{out.name}.log').read_text()[-3000:]
    return codes


def _metrics(out: Path) -> dict:
    result = json.loads((out / 'result.json').read_text())
    log = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    return dict(result={k: result.get(k) for k in METRICS}, log=[{k: r.get(k) for k in LOGGED} for r in log])


def _curves(out: Path) -> dict:
    """The run's TensorBoard scalars, but timings, after checking that each step is there exactly once."""
    scalars = read_scalars(out)
    for tag, points in scalars.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f'{tag}: steps repeated or out of order: {steps}'
    return {tag: points for tag, points in scalars.items() if tag not in TIMINGS}


def _assert_same_run(a: Path, b: Path):
    assert _metrics(a) == _metrics(b)
    curves = _curves(a)
    assert [s for s, _ in curves['train/loss']] == list(range(1, _metrics(b)['result']['steps'] + 1))
    assert curves == _curves(b)  # no point lost or repeated by the kills, every value as uninterrupted
    sa, sb = (torch.load(p / 'checkpoint-last.pt', weights_only=True) for p in (a, b))
    for key in ('model', 'ema'):
        for name, tensor in sa[key].items():
            assert torch.equal(tensor, sb[key][name]), f'{key}.{name}'
    assert sa['optimizer']['state'].keys() == sb['optimizer']['state'].keys()
    for i, state in sa['optimizer']['state'].items():
        assert all(torch.equal(v, sb['optimizer']['state'][i][k]) for k, v in state.items())


def _wait_for_progress(out: Path, procs: List[subprocess.Popen], since: float, name: str, timeout: float = 120.):
    """Until checkpoint `name` is newer than `since` (training is under way), or the processes end."""
    deadline = time.monotonic() + timeout
    ckpt = out / name
    while time.monotonic() < deadline:
        if ckpt.exists() and ckpt.stat().st_mtime > since or any(p.poll() is not None for p in procs):
            return
        time.sleep(0.02)
    raise TimeoutError(f'no progress in {out}')


def _interrupt(out: Path, sig: signal.Signals, rng: random.Random, ranks: int = 1,
               wait_for: str = 'checkpoint-last.pt', extra: Sequence[str] = ()) -> List[int]:
    """Start the run and send `sig` to its processes at a random moment of training; their exit codes."""
    since = time.time()
    procs = _start(out, ranks, extra=extra)
    _wait_for_progress(out, procs, since, wait_for)
    time.sleep(rng.uniform(0, 0.6))
    for p in procs:
        p.send_signal(sig)
    return [p.wait(timeout=120) for p in procs]


def _run_beside(out: Path, extra: Sequence[str] = ()) -> Iterator[Callable[[], Path]]:
    """For a fixture: an uninterrupted run started at once, beside the interrupted ones; calling what it yields waits
    for the run to end and returns its directory."""
    procs = _start(out, extra=extra)

    def finished() -> Path:
        _wait(out, procs)
        return out
    yield finished
    for p in procs:  # a test that failed before waiting for it
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Iterator[Callable[[], Path]]:
    """The uninterrupted run, on the core that the interrupted runs leave idle."""
    yield from _run_beside(tmp_path_factory.mktemp('reference') / 'run')


def test_killed_runs_resume_bit_exactly(reference, tmp_path):
    out, rng = tmp_path / 'run', random.Random()
    # killed once there is a previous checkpoint to fall back to
    assert _interrupt(out, signal.SIGKILL, rng, wait_for='checkpoint-prev.pt') == [-signal.SIGKILL]
    ckpt = out / 'checkpoint-last.pt'
    # truncated, as by a full disk: a new file in its place (writing into it would also truncate -prev when the kill
    # landed inside a save, where -prev is still a hard link to the same file)
    torn = out / 'torn.pt'
    torn.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])
    torn.replace(ckpt)
    # SIGTERM / SIGUSR2: a checkpoint at the next step, then exit 128 + signal (0 if the run ended first)
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        assert _interrupt(out, sig, rng)[0] in (0, 128 + sig)
    _finish(out)
    log = (tmp_path / 'run.log').read_text()
    assert 'checkpoint-last.pt is unreadable' in log  # resumed from the previous checkpoint instead
    assert 'SIGTERM: checkpoint written at step' in log or 'SIGUSR2: checkpoint written at step' in log
    _assert_same_run(out, reference())
    env = json.loads((out / 'environment.json').read_text())
    assert env[0]['resumed_from'] is None and all(e['resumed_from'] for e in env[1:])


@pytest.mark.slow
def test_many_random_kills_resume_bit_exactly(reference, tmp_path):
    out, rng = tmp_path / 'run', random.Random()
    for _ in range(10):
        if (out / 'result.json').exists():
            break
        _interrupt(out, rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGUSR2]), rng)
    if not (out / 'result.json').exists():
        _finish(out)
    _assert_same_run(out, reference())


# slow: by default the same DDP resume (SIGTERM, then both ranks end with the uninterrupted run's metrics and
# weights) runs through real Slurm: test_two_nodes.py::test_requeued_and_preempted_two_node_cells_resume_exactly
@pytest.mark.slow
def test_ddp_two_processes_agree_and_resume_bit_exactly(tmp_path):
    ref = tmp_path / 'ref'
    _finish(ref, ranks=2)
    result = json.loads((ref / 'result.json').read_text())
    # the run checks that both ranks end with identical weights and buffers, else it fails
    assert result['status'] == 'done' and result['world_size'] == 2
    assert result['steps'] == 2 * (192 // 2 // 16)
    out = tmp_path / 'run'
    assert _interrupt(out, signal.SIGTERM, random.Random(), ranks=2)[0] in (0, 128 + signal.SIGTERM)
    _finish(out, ranks=2)
    _assert_same_run(out, ref)


@pytest.mark.slow
def test_ddp_sigkill_resumes_bit_exactly(tmp_path):
    ref, out, rng = tmp_path / 'ref', tmp_path / 'run', random.Random()
    _finish(ref, ranks=2)
    for sig in (signal.SIGKILL, signal.SIGUSR2, signal.SIGKILL):
        if not (out / 'result.json').exists():
            _interrupt(out, sig, rng, ranks=2)
    if not (out / 'result.json').exists():
        _finish(out, ranks=2)
    _assert_same_run(out, ref)


class _AtOnce(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_resuming_with_another_world_size_is_refused_in_one_line(tmp_path):
    """Defect: a resumed run with another process count restored the old schedule (its steps per epoch) with a new
    total batch, and trained on a schedule no uninterrupted run has."""
    out = tmp_path / 'run'
    assert _interrupt(out, signal.SIGTERM, _AtOnce(), ranks=2) == [128 + signal.SIGTERM] * 2
    before = (out / 'checkpoint-last.pt').stat().st_mtime_ns
    assert [p.wait(timeout=300) for p in _start(out, ranks=1, ddp_run=True)] == [1]
    result = json.loads((out / 'result.json').read_text())
    assert result['status'] == 'failed' and result['error'] == (
        f'ValueError: {out} was checkpointed by 2 processes and this run has 1: resume it with 2 (nodes x tasks per '
        f'node), or start over in a new output_dir')
    assert (out / 'checkpoint-last.pt').stat().st_mtime_ns == before  # the checkpoint is left as it was
