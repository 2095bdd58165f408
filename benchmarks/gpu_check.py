"""Every GPU path of the harness exercised in one command, one PASS / FAIL / SKIP line per part.

    python benchmarks/gpu_check.py                 # on a GPU machine: every part, sized for 8 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu    # the dry run: the same parts on the CPU where they can run

Parts (each in fresh `fat` processes, as a cluster job runs them):
  amp_fp16_resume   fp16 AMP training stopped by a preemption (SIGUSR2) after a checkpoint, resumed, and compared
                    with an uninterrupted run: metrics and weights identical; the loss-scaler state is checkpointed
  amp_bf16_resume   the same with bf16 AMP (no loss scaler)
  cpu_to_gpu_resume a run checkpointed on the CPU (device auto, GPUs hidden) resumes on the GPU with fp16 AMP
  group_world1      the job's process groups as `fat train` makes them, in a world of one: NCCL initialised with
                    `device_id` (gloo on the CPU) and the gloo control group; barrier, gathers, teardown
  ddp_nccl_syncbn   two ranks, NCCL, SyncBatchNorm, a preemption and an exact resume (two GPUs: NCCL refuses two
                    ranks on one GPU; the dry run uses gloo)
  ddp_gloo_one_gpu  two ranks sharing one GPU over gloo (FAT_DIST_BACKEND=gloo) with CUDA tensors: DDP, the loss
                    all-reduce, distributed BatchNorm statistics, a preemption and an exact resume (CUDA only: on the
                    CPU it is ddp_nccl_syncbn's dry run)
  sigterm_in_eval   an image-folder run with 2 loader workers, SIGTERM to its whole process group (as slurmstepd
                    sends it) during evaluation: it finishes evaluating, checkpoints, exits 143, and resumes exactly
  ema_compile       EMA with the training step compiled by inductor and cudnn.benchmark on, preempted (SIGUSR2) and
                    resumed to the end
  bench_eager       `fat bench` on the device (AMP fp16 on CUDA), 2 rounds with their contention records (calibration
                    kernel on the device, SM clock where NVML answers)
  bench_compile     the same with torch.compile
  oom_backoff       `fat bench` at a batch no GPU holds: it backs off to one that fits (CUDA only)
  step_syncs        a training epoch (mixup, clipping) in fp16 AMP and in bf16 AMP under CUDA's sync debug mode: the
                    host waits for the GPU only where the trainer reads its losses (every log_interval steps), not at
                    every step (CUDA only)
  nvjpeg_decode     torchvision's nvJPEG decoding of generated ImageNet-sized JPEGs: its rate against PIL on one
                    core, and its pixels against PIL's (CUDA only)

On the CPU the AMP parts train in fp32 (autocast is CUDA-only in `fat train`): the dry run checks the procedure
(signals, checkpoints, resume, comparison), the GPU run checks the numerics. Exit code: 1 when a part failed, and on
a GPU also when a part did not run (SKIP: every part is essential there; `--allow-skip` accepts that, e.g. one GPU
cannot run ddp_nccl_syncbn).

The lent GPU machine has no network: carry what it lacks (`bash benchmarks/gpu_wheels.sh build` here, then there
`bash benchmarks/gpu_wheels.sh install && PYTHONPATH=.:/tmp/site python3 benchmarks/gpu_check.py`).
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

# the smoke preset (synthetic data, the proxy model): seconds per run, and deterministic, so a resumed run is exact
TRAIN = ['--preset', 'smoke', 'train_subset=96', 'epochs=2', 'checkpoint_steps=1']
RESULT_KEYS = ('status', 'epochs', 'steps', 'final_top1', 'final_top5', 'best_top1', 'best_top5', 'world_size',
               'amp', 'device')
PART_TIMEOUT_S = 240


class PartError(Exception):
    """A check that did not hold: the part FAILs with this message."""


class Skip(Exception):
    """The part cannot run here: SKIP with this reason."""


class Check:
    """The parts, on `device` ('cuda' or 'cpu'), with their run directories under `workdir`."""

    def __init__(self, device: str, workdir: Path):
        self.device, self.workdir = device, workdir
        self.cuda = device == 'cuda'

    # -- processes --------------------------------------------------------------------------------------------

    def _env(self, rank: Optional[Tuple[int, int, int]] = None, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (
            'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
        if rank is not None:
            r, world, port = rank
            env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        return dict(env, **extra)

    def _train(self, out: Path, args: List[str], ranks: int = 1, **env: str) -> List[subprocess.Popen]:
        cmd = [sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(out), *TRAIN, *args]
        log = open(out.parent / f'{out.name}.log', 'a')
        port = _free_port()
        return [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 env=self._env((r, ranks, port) if ranks > 1 else None, **env)) for r in range(ranks)]

    def finish(self, out: Path, args: List[str], ranks: int = 1, **env: str) -> Dict:
        codes = [p.wait(timeout=PART_TIMEOUT_S) for p in self._train(out, args, ranks, **env)]
        if codes != [0] * ranks:
            raise PartError(f'{out.name}: exit codes {codes}; {_tail(out)}')
        return json.loads((out / 'result.json').read_text())

    def preempt(self, out: Path, args: List[str], ranks: int = 1, **env: str) -> int:
        """Start the run, send SIGUSR2 to every process once training has checkpointed; the step it stopped at."""
        procs = self._train(out, args, ranks, **env)
        deadline = time.monotonic() + PART_TIMEOUT_S
        while not (out / 'checkpoint-last.pt').exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise PartError(f'{out.name}: training never checkpointed; {_tail(out)}')
            time.sleep(0.02)
        for p in procs:
            p.send_signal(signal.SIGUSR2)
        codes = [p.wait(timeout=PART_TIMEOUT_S) for p in procs]
        if codes != [128 + signal.SIGUSR2] * ranks:
            raise PartError(f'{out.name}: preempted processes exited {codes}, expected {128 + signal.SIGUSR2}')
        return torch.load(out / 'checkpoint-last.pt', map_location='cpu', weights_only=True)['global_step']

    def same_run(self, a: Path, b: Path) -> None:
        ra, rb = (json.loads((d / 'result.json').read_text()) for d in (a, b))
        diff = [k for k in RESULT_KEYS if ra.get(k) != rb.get(k)]
        if diff:
            raise PartError(f'resumed run differs from the uninterrupted one in {diff}: '
                            f'{[(ra.get(k), rb.get(k)) for k in diff]}')
        sa, sb = (torch.load(d / 'checkpoint-last.pt', map_location='cpu', weights_only=True) for d in (a, b))
        changed = [k for k, v in sa['model'].items() if not torch.equal(v, sb['model'][k])]
        if changed:
            raise PartError(f'resumed run ends with other weights: {changed[:3]}')

    # -- parts ------------------------------------------------------------------------------------------------

    def _amp_resume(self, dtype: str) -> str:
        args = [f'device={self.device}', 'amp=true', f'amp_dtype={dtype}']
        ref, run = self.workdir / f'{dtype}-ref', self.workdir / f'{dtype}-run'
        result = self.finish(ref, args)
        step = self.preempt(run, args)
        self.finish(run, args)
        self.same_run(run, ref)
        scaler = torch.load(run / 'checkpoint-last.pt', map_location='cpu', weights_only=True)['scaler']
        if result['amp'] != self.cuda or (scaler is not None) != (self.cuda and dtype == 'float16'):
            raise PartError(f"amp {result['amp']}, loss-scaler state {'saved' if scaler else 'absent'}")
        return (f"preempted at step {step} of {result['steps']}, resumed exactly on {result['device']}; "
                f"loss-scaler state {'saved' if scaler else 'absent (none needed)'}")

    def amp_fp16_resume(self) -> str:
        return self._amp_resume('float16')

    def amp_bf16_resume(self) -> str:
        return self._amp_resume('bfloat16')

    def cpu_to_gpu_resume(self) -> str:
        if not self.cuda:
            raise Skip('needs a GPU to resume on')
        run, args = self.workdir / 'cpu-to-gpu', ['device=auto', 'amp=true', 'amp_dtype=float16']
        step = self.preempt(run, args, CUDA_VISIBLE_DEVICES='')
        result = self.finish(run, args)
        if not (result['status'] == 'done' and result['device'].startswith('cuda') and result['amp']):
            raise PartError(f'resumed run: {result}')
        return f"checkpointed on the CPU at step {step}, finished on {result['device']} with fp16 AMP"

    def ddp_nccl_syncbn(self) -> str:
        if self.cuda and torch.cuda.device_count() < 2:
            raise Skip(f'{torch.cuda.device_count()} GPU: NCCL refuses two ranks on one GPU')
        args = [f'device={self.device}', 'sync_bn=true']
        ref, run = self.workdir / 'ddp-ref', self.workdir / 'ddp-run'
        result = self.finish(ref, args, ranks=2)
        step = self.preempt(run, args, ranks=2)
        self.finish(run, args, ranks=2)
        self.same_run(run, ref)
        backend = 'NCCL + SyncBatchNorm' if self.cuda else 'gloo'
        return f"2 ranks ({backend}) preempted at step {step}, resumed exactly; world_size {result['world_size']}"

    def group_world1(self) -> str:
        device = 'cuda:0' if self.cuda else 'cpu'
        out = subprocess.run([sys.executable, '-c', _GROUP_WORLD1, device], capture_output=True, text=True,
                             timeout=PART_TIMEOUT_S, env=self._env((0, 1, _free_port())))
        if out.returncode != 0:
            raise PartError(f'exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}')
        r = json.loads(out.stdout.strip().splitlines()[-1])
        expected = dict(backend='nccl' if self.cuda else 'gloo', gathered=[0., 1., 2., 3.], objects=[{'rank': 0}],
                        control=1., after_teardown=False)
        if r != expected:
            raise PartError(f'got {r}, expected {expected}')
        return (f"{r['backend']} group of one (device {device}) and the gloo control group: barrier, gathers, "
                'teardown')

    def ddp_gloo_one_gpu(self) -> str:
        if not self.cuda:
            raise Skip("on the CPU this is ddp_nccl_syncbn's dry run")
        args = ['device=cuda', 'sync_bn=false']  # SyncBatchNorm's gathers are NCCL's (ddp_nccl_syncbn)
        ref, run = self.workdir / 'gloo-one-gpu-ref', self.workdir / 'gloo-one-gpu-run'
        result = self.finish(ref, args, ranks=2, FAT_DIST_BACKEND='gloo')
        step = self.preempt(run, args, ranks=2, FAT_DIST_BACKEND='gloo')
        self.finish(run, args, ranks=2, FAT_DIST_BACKEND='gloo')
        self.same_run(run, ref)
        return (f"2 ranks on {result['device']} over gloo preempted at step {step}, resumed exactly; world_size "
                f"{result['world_size']}")

    def sigterm_in_eval(self) -> str:
        # the evaluation must outlast the signal's delivery: its noise JPEGs take the two workers seconds to decode
        classes, train, val, px, size, delay = (4, 16, 500, 256, 224, 0.05) if self.cuda else (2, 32, 768, 40, 40, 0.3)
        data = _image_folder(self.workdir / 'images', classes, train, val, px)
        args = ['--preset', 'smoke', f'device={self.device}', 'dataset=imagenet', f'data_dir={data}',
                f'img_size={size}', 'in_chans=3', 'train_subset=0', 'val_subset=0', 'epochs=2', 'workers=2',
                'log_interval=1']

        def start(out: Path, **kw: Any) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(out), *args],
                                    env=self._env(), text=True, **kw)

        stopped, log = start(self.workdir / 'eval-stopped', stderr=subprocess.PIPE, start_new_session=True), []
        for line in stopped.stderr:
            log.append(line)
            if re.match(r'epoch 1/2 step (\d+)/\1 ', line):  # the last training step of epoch 1: evaluation next
                time.sleep(delay)
                os.killpg(stopped.pid, signal.SIGTERM)
                break
        log += stopped.stderr.readlines()
        code = stopped.wait(timeout=PART_TIMEOUT_S)
        tail = ' | '.join(line.strip() for line in log[-3:])
        if code != 128 + signal.SIGTERM or 'exited unexpectedly' in ''.join(log):
            raise PartError(f'the stopped run exited {code}: {tail}')
        state = torch.load(self.workdir / 'eval-stopped' / 'checkpoint-last.pt', map_location='cpu',
                           weights_only=True)
        if (state['epoch'], state['step_in_epoch']) != (1, 0):
            raise PartError(f"the signal landed at epoch {state['epoch'] + 1} step {state['step_in_epoch']}, not "
                            'during the evaluation after epoch 1')
        with open(self.workdir / 'eval-resumed.log', 'w') as a, open(self.workdir / 'eval-whole.log', 'w') as b:
            procs = [start(self.workdir / 'eval-stopped', stdout=a, stderr=a),
                     start(self.workdir / 'eval-whole', stdout=b, stderr=b)]
            if [p.wait(timeout=PART_TIMEOUT_S) for p in procs] != [0, 0]:
                raise PartError(f'resumed or whole run failed: {_tail(self.workdir / "eval-resumed")}')
        self.same_run(self.workdir / 'eval-stopped', self.workdir / 'eval-whole')
        return (f'SIGTERM to the process group {delay} s into the evaluation ({classes * val} images, 2 workers): '
                'checkpointed after it, exit 143, resumed exactly')

    def ema_compile(self) -> str:
        args = [f'device={self.device}', 'ema=true', 'compile=inductor', 'deterministic=false', 'amp=true']
        run = self.workdir / 'ema-compile'
        step = self.preempt(run, args)
        result = self.finish(run, args)
        state = torch.load(run / 'checkpoint-last.pt', map_location='cpu', weights_only=True)
        if result['status'] != 'done' or result.get('final_ema_top1') is None or not state.get('ema'):
            raise PartError(f"status {result['status']}, EMA top-1 {result.get('final_ema_top1')}, EMA state "
                            f"{'saved' if state.get('ema') else 'absent'}")
        return (f"inductor-compiled training with EMA preempted at step {step}, resumed to the end on "
                f"{result['device']}: top-1 {result['final_top1']:.1f}, EMA top-1 {result['final_ema_top1']:.1f}")

    def _bench(self, *extra: str) -> Dict:
        model, precision, size = ('fat_b0', 'amp_fp16', []) if self.cuda else (
            'fat_proxy', 'fp32', ['--img-size', '32'])
        cmd = [sys.executable, '-m', 'fat.cli', 'bench', model, '--device', self.device, '--precision', precision,
               '--batch-size', '64' if self.cuda else '4', *size, '--warmup', '3', '--iters', '10', '--no-save',
               '--json', '--no-progress', *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PART_TIMEOUT_S)
        if out.returncode != 0:
            raise PartError(f'fat bench exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}')
        record = json.loads(out.stdout.strip().splitlines()[-1])
        if not record['samples_per_sec'] > 0:
            raise PartError(f'no throughput: {record}')
        if not (record['calibration_ms'] > 0 and record['round_calibration']):  # fat.contention on this device
            raise PartError(f'no contention record: {record}')
        return record

    def bench_eager(self) -> str:
        r = self._bench('--rounds', '2')
        clock = f", SM clock {r['round_clock_mhz']} MHz" if r['round_clock_mhz'] else ', SM clock not readable'
        return (f"{r['model']} {r['precision']} batch {r['batch_size']}: {r['samples_per_sec']:.0f} img/s; "
                f"calibration {r['calibration_ms']} ms, per round {r['round_calibration']}x{clock}"
                + (f"; CONTENDED: {r['contended']}" if r['contended'] else ''))

    def bench_compile(self) -> str:
        r = self._bench('--compile')
        return f"{r['model']} {r['precision']} batch {r['batch_size']} compiled: {r['samples_per_sec']:.0f} img/s"

    def oom_backoff(self) -> str:
        if not self.cuda:
            raise Skip('CUDA only (the CPU has no out-of-memory back-off)')
        # 2^18 images of 224 x 224 do not fit even as the fp32 input (158 GB)
        code = ("import json; from fat import bench; print(json.dumps(bench.run('fat_b0', batch_size=2 ** 18, "
                "device='cuda', precision='amp_fp16', num_warmup=1, num_iters=2)))")
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=PART_TIMEOUT_S)
        if out.returncode != 0:
            raise PartError(f'exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}')
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if not r['batch_size'] < r['requested_batch_size']:
            raise PartError(f"no back-off: batch {r['batch_size']}")
        return f"batch {r['requested_batch_size']} backed off to {r['batch_size']}: {r['samples_per_sec']:.0f} img/s"

    def step_syncs(self) -> str:
        if not self.cuda:
            raise Skip('CUDA only (the CPU has no host-device synchronisation to count)')
        lines = []
        for dtype in ('float16', 'bfloat16'):
            out = subprocess.run([sys.executable, '-c', _STEP_SYNCS, str(self.workdir / f'syncs-{dtype}'), dtype],
                                 capture_output=True, text=True, timeout=PART_TIMEOUT_S)
            if out.returncode != 0:
                raise PartError(f'{dtype}: exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}')
            r = json.loads(out.stdout.strip().splitlines()[-1])
            sites = ', '.join(dict.fromkeys(r['syncs'])) or 'none'
            line = (f"{dtype}: {len(r['syncs'])} host-device syncs in {r['steps']} steps, log_interval "
                    f"{r['log_interval']} (at {sites})")
            if len(r['syncs']) >= r['steps'] / 2:
                raise PartError(line)
            lines.append(line)
        return '; '.join(lines)

    def nvjpeg_decode(self) -> str:
        """torchvision's nvJPEG decoding (the GPU decoder of docs/loader.md) of generated ImageNet-sized JPEGs
        (500x375, quality 90), batched on the GPU: its rate against PIL on one core, and its pixels against
        PIL's (mean and max absolute difference, 0-255 levels; more than 2 levels on average fails)."""
        if not self.cuda:
            raise Skip('nvJPEG decodes on a GPU')
        import io

        import numpy as np
        import torchvision.io as tvio
        from PIL import Image

        from fat.data.jpegs import pink_image
        rng, blobs = np.random.default_rng(0), []
        for _ in range(64):
            buf = io.BytesIO()
            Image.fromarray(pink_image(rng, 375, 500)).save(buf, 'JPEG', quality=90)
            blobs.append(buf.getvalue())
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        tvio.decode_jpeg(data[:4], device='cuda', mode=tvio.ImageReadMode.RGB)  # warm-up: nvJPEG's handles
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            gpu = tvio.decode_jpeg(data, device='cuda', mode=tvio.ImageReadMode.RGB)
        torch.cuda.synchronize()
        gpu_rate = 5 * len(data) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        cpu = [np.asarray(Image.open(io.BytesIO(b)).convert('RGB')) for b in blobs]
        cpu_rate = len(blobs) / (time.perf_counter() - t0)
        diff = np.concatenate([np.abs(g.permute(1, 2, 0).cpu().numpy().astype(int) - c).ravel()
                               for g, c in zip(gpu, cpu, strict=True)])
        if diff.mean() > 2:
            raise PartError(f'nvJPEG pixels differ from PIL by {diff.mean():.2f} levels on average (max {diff.max()})')
        return (f'{gpu_rate:,.0f} img/s batched on the GPU vs {cpu_rate:,.0f} img/s with PIL on one core; pixels '
                f'vs PIL: mean {diff.mean():.3f}, max {diff.max()} levels')


# one epoch warms up (cuDNN's autotuning, first allocations), the next is counted; every synchronizing CUDA call
# raises a warning in sync debug mode
_STEP_SYNCS = '''
import json, sys, warnings
import torch
from fat.distributed import Placement
from fat.train import PRESETS, Trainer, resolve_config
from fat.train.curves import Curves
cfg = resolve_config(dict(PRESETS['smoke'], train_subset=320, deterministic=False, device='cuda', amp=True,
                          amp_dtype=sys.argv[2], log_interval=10, checkpoint_minutes=0, output_dir=sys.argv[1]))
trainer = Trainer(cfg, Placement(device=torch.device('cuda', 0)))
trainer.curves = Curves(cfg, primary=False, start_step=0)
trainer.train_epoch()
trainer.epoch, trainer.step_in_epoch = 1, 0
torch.cuda.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    torch.cuda.set_sync_debug_mode('warn')
    trainer.train_epoch()
    torch.cuda.set_sync_debug_mode('default')
syncs = [f'{w.filename.rsplit("/", 1)[-1]}:{w.lineno}' for w in caught if 'synchroniz' in str(w.message)]
print(json.dumps(dict(steps=trainer.steps_per_epoch, log_interval=cfg['log_interval'], syncs=syncs)))
'''


# `fat.distributed.init_groups` in a world of one (RANK/WORLD_SIZE/MASTER_* set by the caller)
_GROUP_WORLD1 = '''
import json, sys
import torch, torch.distributed as dist
from fat.distributed import init_groups
device = torch.device(sys.argv[1])
if device.type == 'cuda':
    torch.cuda.set_device(device)
control = init_groups(device)
backend = dist.get_backend()
dist.barrier(device_ids=[device.index]) if device.type == 'cuda' else dist.barrier()
gathered = torch.empty(4, device=device)
dist.all_gather_into_tensor(gathered, torch.arange(4., device=device))
objects = [None]
dist.all_gather_object(objects, dict(rank=dist.get_rank()))
votes = torch.ones(1, dtype=torch.float64)
dist.all_reduce(votes, group=control)
dist.destroy_process_group()
print(json.dumps(dict(backend=backend, gathered=gathered.tolist(), objects=objects, control=votes.item(),
                      after_teardown=dist.is_initialized())))
'''

PARTS = ('amp_fp16_resume', 'amp_bf16_resume', 'cpu_to_gpu_resume', 'group_world1', 'ddp_nccl_syncbn',
         'ddp_gloo_one_gpu', 'sigterm_in_eval', 'ema_compile', 'bench_eager', 'bench_compile', 'oom_backoff',
         'step_syncs', 'nvjpeg_decode')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _tail(out: Path) -> str:
    log = out.parent / f'{out.name}.log'
    lines = log.read_text().strip().splitlines() if log.exists() else []
    return ' | '.join(lines[-3:])


def _image_folder(root: Path, classes: int, train: int, val: int, px: int) -> Path:
    """An ImageNet-style folder of noise JPEGs (noise: the slowest content to decode)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (('train', train), ('val', val)):
        for c in range(classes):
            folder = root / split / f'n{c:08d}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8)).save(folder / f'{i}.JPEG')
    return root

def run_parts(check: Check, parts: List[str], report: Callable[[str], None] = print) -> Dict[str, str]:
    """Run each part; {part: PASS | FAIL | SKIP}, each also reported as one line."""
    outcomes = {}
    for name in parts:
        t0 = time.monotonic()
        try:
            outcome, detail = 'PASS', getattr(check, name)()
        except Skip as e:
            outcome, detail = 'SKIP', str(e)
        except PartError as e:
            outcome, detail = 'FAIL', str(e)
        except Exception as e:  # the check goes on to the next part; the failure is reported, not lost
            outcome, detail = 'FAIL', f'{type(e).__name__}: {e}'
        outcomes[name] = outcome
        report(f'{outcome} {name} ({time.monotonic() - t0:.1f} s): {detail}')
    return outcomes


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', choices=('cuda', 'cpu'), default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='cuda (default where usable) or cpu (the dry run)')
    p.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS), metavar='PART',
                   help=f"a subset of: {', '.join(PARTS)}")
    p.add_argument('--workdir', type=Path, help='where the runs go (default: a temporary directory)')
    p.add_argument('--allow-skip', action='store_true',
                   help='on a GPU, exit 0 although parts did not run (say, ddp_nccl_syncbn on one GPU)')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: error: --device cuda, but CUDA is not usable here', file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU (dry run)'
    print(f'gpu_check on {name}: torch {torch.__version__}, CUDA {torch.version.cuda}, '
          f'{torch.cuda.device_count()} GPU(s)', flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='gpu_check-') as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        outcomes = run_parts(Check(args.device, workdir), args.parts, lambda line: print(line, flush=True))
    lines, code = summary(outcomes, args.device, args.allow_skip)
    print('\n'.join(lines).replace(' skipped', f' skipped ({time.monotonic() - t0:.0f} s)', 1))
    return code


def summary(outcomes: Dict[str, str], device: str, allow_skip: bool) -> Tuple[List[str], int]:
    """The closing lines and the exit code: 1 when a part failed, or, on a GPU, when a part did not run (every part is
    essential there) unless `allow_skip`; the dry run skips what only a GPU can run."""
    counts = {o: list(outcomes.values()).count(o) for o in ('PASS', 'FAIL', 'SKIP')}
    lines = [f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"]
    skipped = [name for name, outcome in outcomes.items() if outcome == 'SKIP'] if device == 'cuda' else []
    if skipped:
        lines.append(f"gpu_check: {len(skipped)} essential part(s) did not run on the GPU: {', '.join(skipped)}"
                     + (' (accepted: --allow-skip)' if allow_skip else '; unproven, so exit 1 (--allow-skip accepts)'))
    return lines, 1 if counts['FAIL'] or (skipped and not allow_skip) else 0

if __name__ == '__main__':
    sys.exit(main())
