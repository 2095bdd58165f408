"""Throughput and latency of any timm model: inference and training step, on CPU and CUDA.

The method is timm's `benchmark.py`: build the model, put it in a *setting*, then run warm-up steps, then timed
steps, each closed by a device synchronisation. A setting is the same for every model, FAT or peer (`SETTINGS`):

* ``as_built``: eager, NCHW, the model as constructed;
* ``best``: `timm.utils.reparameterize_model` for the peers that have an inference form (FAT as built), channels_last,
  `torch.compile` (inductor; for inference with freezing, which folds every BatchNorm into its convolution);
* ``fused`` (the default of `fat bench`): `timm.utils.reparameterize_model` for every model, which includes FAT's own
  fusion and native CPU kernel (`fat.models.fuse`), channels_last, eager.

The low-level options (``channels_last``, ``reparam``, ``compile``) override a setting's; the record then says
``custom``. On CUDA, fp32 runs with TF32 matmuls and convolutions, as timm's scripts set them (``tf32=False`` turns
it off). A record gives the median step time (the latency of one batch), its spread (interquartile range, min, max),
``samples_per_sec`` = batch size / median step time and timm's statistic ``samples_per_sec_mean`` = samples / total
timed time (the mean step; timm's published CSVs use it, over 10 warm-up and 40 timed steps). `compare` times several
contenders in one process round-robin, so that every contender sees the same machine, and records the spread of
timm's statistic across the rounds. Every round is checked for contention (`fat.contention`: the timing thread's CPU
share, a calibration kernel before and after, the load average), re-timed while contended, and a figure with a round
that stayed contended carries the reasons in ``contended``. A training step is forward, cross-entropy on random
targets, backward and an optimizer step. On CUDA an out-of-memory error backs off the batch size (timm's
`decay_batch_step`) and retries; the record keeps the batch size asked for.

Result files are named by the environment they were measured in, in timm's convention (`fat bench` writes them
under ``runs/bench/`` unless told otherwise; `fat speed` under ``results/``, where `fat report` reads them):
``results/bench-{infer|train}-{precision}-{nchw|nhwc}-pt{X.Y}-{cpu-<cpu>|cu<ver>-<gpu>}[-dynamo].csv``, and each row
also carries the torch / timm versions, the device name, the thread count, whether FAT's native CPU kernels were
on (`fat.models.native`; ``FAT_NATIVE=0`` turns them off), the allocator setting (`tune_malloc`) and the minor page
faults per timed step, the usual cause of CPU timings that drift between runs. Writing merges: a row replaces an
earlier one of the same model, model arguments, image size, batch size, setting, re-parameterisation, native
kernels, allocator setting and thread count.
"""
import argparse
import csv
import ctypes
import json
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.utils import ParseKwargs, decay_batch_step
from tqdm import tqdm

import fat
from fat.checks import close_hint
from fat.contention import Check, Monitor, summarize_checks
from fat.environment import cpu_name, env_name
from fat.io import atomic_path
from fat.models.fuse import FusedFasa, fuse_model, reparameterize_peer

__all__ = ['MODES', 'PRECISIONS', 'SETTINGS', 'run', 'compare', 'prepare', 'make_step', 'time_steps', 'summarize',
           'results_path', 'write_results', 'save', 'minor_faults', 'tune_malloc', 'register']

MODES = ('infer', 'train')
# precision name -> autocast dtype (None: plain float32)
PRECISIONS: Dict[str, Optional[torch.dtype]] = {'fp32': None, 'amp_fp16': torch.float16, 'amp_bf16': torch.bfloat16}
# setting -> how the model runs; the same for every model (FAT or peer). reparam: True = timm's
# reparameterize_model (FAT's fusion included), 'peers' = the same for every model but FAT, False = none
SETTINGS: Dict[str, Dict[str, Any]] = {
    'as_built': dict(channels_last=False, reparam=False, compile=None),
    'best': dict(channels_last=True, reparam='peers', compile='inductor'),
    'fused': dict(channels_last=True, reparam=True, compile=None),
}
FIELDS = (
    'model', 'mode', 'setting', 'samples_per_sec', 'samples_per_sec_mean', 'spread_pct', 'rounds',
    'round_samples_per_sec', 'contended', 'retimed', 'round_cpu_share', 'round_calibration', 'calibration_ms',
    'round_load', 'round_clock_mhz', 'step_time_ms', 'step_time_iqr_ms', 'step_time_min_ms', 'step_time_max_ms',
    'batch_size', 'requested_batch_size', 'img_size', 'in_chans', 'param_count', 'model_kwargs', 'precision',
    'channels_last', 'compile', 'reparam', 'tf32', 'native_kernels', 'malloc', 'page_faults_per_step', 'opt',
    'num_warmup', 'num_iters', 'device', 'device_name', 'num_threads', 'torch', 'timm', 'fat_harness',
)
# rows with equal values here describe the same measurement (the file name fixes the rest)
_ROW_KEY = ('model', 'model_kwargs', 'img_size', 'requested_batch_size', 'setting', 'reparam', 'native_kernels',
            'malloc', 'num_threads', 'compile')
# the allocator setting of this process: 'default', or 'tuned' once `tune_malloc` succeeded
_malloc = 'default'


def _check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}{close_hint(value, choices)}")
    return value


def resolve_device(device: Optional[str] = None) -> torch.device:
    """The device asked for (default: CUDA when present, else CPU); ValueError when it is not available."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f'bad device {device!r}: {e}') from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} asked for, but CUDA is not available here')
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f'device {device!r}: only cpu and cuda are supported')
    return dev


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return cpu_name()


def results_path(record: Dict[str, Any], results_dir: str = 'results') -> Path:
    """Where `write_results` puts a record: a file named by mode, precision, layout, torch version, device, compile."""
    env = env_name(record['torch'], record['device'], record['device_name'], torch.version.cuda)
    layout = 'nhwc' if record['channels_last'] else 'nchw'
    suffix = '-dynamo' if record['compile'] else ''
    name = f"bench-{record['mode']}-{record['precision']}-{layout}-{env}{suffix}.csv"
    return Path(results_dir) / name


def write_results(records: Sequence[Dict[str, Any]], path: Path, fields: Sequence[str] = FIELDS,
                  row_key: Sequence[str] = _ROW_KEY,
                  review: Optional[Callable[[List[Dict[str, str]]], List[Dict[str, str]]]] = None) -> Path:
    """Merge records into the CSV at ``path``: rows of the same measurement (equal ``row_key`` columns) are
    replaced, others kept. A file written before a key column existed is matched on the key columns it has.
    ``review`` gets the merged rows (as strings) and returns the rows to write."""
    rows: List[Dict[str, Any]] = []
    known = tuple(row_key)
    if path.exists():
        with path.open(newline='') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            known = tuple(k for k in row_key if k in (reader.fieldnames or ()))
    new = [{k: str(r.get(k, '')) for k in fields} for r in records]
    keys = {tuple(r[k] for k in known) for r in new}
    rows = [r for r in rows if tuple(r.get(k, '') for k in known) not in keys] + new
    if review is not None:
        rows = review(rows)
    with atomic_path(path) as tmp, tmp.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    return path


def minor_faults() -> int:
    """Minor page faults of this process so far (see `tune_malloc`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap for the rest of the process, as jemalloc or tcmalloc do by default.

    glibc hands large freed blocks back to the OS, so a model that allocates large temporaries on every step pays
    page faults on every step, and how many depends on the process's allocation history: CPU timings then drift
    between runs (FAT-B0's official code: 33 to 45 img/s here). With blocks up to 32 MiB (M_MMAP_THRESHOLD's maximum)
    taken from the heap and the heap trimmed only past 1 GiB free (M_TRIM_THRESHOLD), they stop. False where the C
    library is not glibc.
    """
    global _malloc
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    if libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        _malloc = 'tuned'
    return _malloc == 'tuned'


def prepare(
        model: nn.Module,
        mode: str,
        device: torch.device,
        channels_last: bool = True,
        reparam: Union[bool, str] = True,
        compile: Optional[str] = None,
        compile_mode: Optional[str] = None,
) -> nn.Module:
    """Put a model in the state a benchmark runs it in.

    Args:
        model: Any nn.Module (a timm model, or another implementation to compare with).
        mode: 'infer' or 'train'.
        device: Where to run.
        channels_last: Use the channels_last memory format.
        reparam: Re-parameterize for inference (never for training): True = `timm.utils.reparameterize_model` for any
            model, FAT's fusion included (`fuse_model`); 'peers' = the same for every model but FAT
            (`reparameterize_peer`); False = not at all.
        compile: A `torch.compile` backend (e.g. 'inductor'), or None for eager. Inductor compiles inference with
            freezing (the weights are constants: change them and the compiled model will not see it).
        compile_mode: The `torch.compile` mode.
    """
    model.train(mode == 'train')
    if reparam and mode == 'infer':
        model = reparameterize_peer(model.eval()) if reparam == 'peers' else fuse_model(model, inplace=True)
    model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile:
        model = torch.compile(model, backend=compile, mode=compile_mode)
        if compile == 'inductor' and mode == 'infer':
            model = Frozen(model)
    return model


class Frozen(nn.Module):
    """Calls a `torch.compile`d inference model with inductor's freezing on, whenever it (re)compiles.

    Freezing makes the weights constants: inductor folds them, pre-packs every convolution's weights for oneDNN
    once instead of on every call, and fuses convolutions with the additions after them (FAT-B0 here: about 10 %
    over compiling without it). `torch.compile(options={'freezing': True})` does not reach the freezing pass
    (torch 2.14: the convolutions stay unpacked), so the global config is patched around each call instead.
    """

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config  # imported by torch.compile already
        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def make_step(
        model: nn.Module,
        mode: str,
        inputs: torch.Tensor,
        precision: str = 'fp32',
        opt: str = 'adamw',
        num_classes: Optional[int] = None,
) -> Callable[[], None]:
    """One inference step (``torch.inference_mode``) or one training step (forward, loss, backward, optimizer).

    Args:
        model: The prepared model.
        mode: 'infer' or 'train'.
        inputs: The batch, already on the device in the memory format to use.
        precision: A key of `PRECISIONS`.
        opt: Optimizer name for `timm.optim.create_optimizer_v2` (training only).
        num_classes: Range of the random training targets (default: the model's ``num_classes``).
    """
    amp_dtype = PRECISIONS[_check_choice('precision', precision, tuple(PRECISIONS))]
    device_type = inputs.device.type

    def autocast():
        return torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    if mode == 'infer':
        def infer():
            with torch.inference_mode(), autocast():
                model(inputs)
        return infer

    optimizer = create_optimizer_v2(model, opt=opt, lr=1e-4)
    num_classes = num_classes or getattr(model, 'num_classes', 1000)
    targets = torch.randint(num_classes, (inputs.shape[0],), device=inputs.device)

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    return train


def time_steps(
        step: Callable[[], None],
        num_iters: int,
        num_warmup: int = 0,
        device: torch.device = torch.device('cpu'),
        desc: Optional[str] = None,
        progress: bool = False,
) -> List[float]:
    """Seconds per timed step, after ``num_warmup`` untimed steps; on CUDA each step ends synchronised."""
    def now() -> float:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times = []
    with tqdm(total=num_warmup + num_iters, desc=desc, disable=not progress, leave=False) as bar:
        for i in range(num_warmup + num_iters):
            start = now()
            step()
            end = now()
            if i >= num_warmup:
                times.append(end - start)
            bar.update()
    return times


def summarize(times: Sequence[float], batch_size: int, rounds: Sequence[Sequence[float]] = ()) -> Dict[str, Any]:
    """Throughput from the median step time and timm's (samples / total time), the spread of the step times (ms),
    and, given the step times of each round, timm's statistic per round and their range in % of their median."""
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median,) * 3
    per_round = [round(batch_size * len(r) / sum(r), 2) for r in rounds]
    spread = 100 * (max(per_round) - min(per_round)) / statistics.median(per_round) if len(per_round) > 1 else None
    return dict(
        samples_per_sec=round(batch_size / median, 2),
        samples_per_sec_mean=round(batch_size * len(times) / sum(times), 2),
        spread_pct='' if spread is None else round(spread, 1), rounds=len(per_round) or 1,
        round_samples_per_sec=';'.join(str(v) for v in per_round),
        step_time_ms=round(1e3 * median, 3), step_time_iqr_ms=round(1e3 * (q3 - q1), 3),
        step_time_min_ms=round(1e3 * min(times), 3), step_time_max_ms=round(1e3 * max(times), 3))


def _create(model_name: str, img_size: Optional[int], model_kwargs: Dict[str, Any]) -> nn.Module:
    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f'unknown model {model_name!r}{close_hint(model_name, timm.list_models())}')
    if img_size and cfg.fixed_input_size:
        model_kwargs = dict(model_kwargs, img_size=img_size)
    try:
        return timm.create_model(model_name, **model_kwargs)
    except TypeError as e:
        raise ValueError(f'{model_name}: bad model arguments {model_kwargs}: {e}') from None


def resolve_setting(setting: str, **overrides: Any) -> Dict[str, Any]:
    """A setting's channels_last / reparam / compile, each overridden where not None; 'custom' once one differs."""
    options = dict(SETTINGS[_check_choice('setting', setting, tuple(SETTINGS))])
    for key, value in overrides.items():
        if value is not None and value != options[key]:
            options[key] = value
            setting = 'custom'
    return dict(options, setting=setting)


class _Contender:
    """One model in one mode and setting, built, prepared and warmed up (compiled), ready to be timed."""

    def __init__(self, model_name: str, mode: str, batch_size: int, img_size: Optional[int], device: torch.device,
                 options: Dict[str, Any], model_kwargs: Dict[str, Any]):
        model = _create(model_name, img_size, model_kwargs)
        self.param_count = sum(p.numel() for p in model.parameters())
        self.in_chans, height, width = resolve_model_data_config(model)['input_size']
        self.img_size = img_size or height
        num_classes = model.num_classes
        model = prepare(model, mode, device, options['channels_last'], options['reparam'], options['compile'],
                        options['compile_mode'])
        inputs = torch.randn(batch_size, self.in_chans, self.img_size, img_size or width, device=device)
        if options['channels_last']:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        self.step = make_step(model, mode, inputs, options['precision'], options['opt'], num_classes)
        # whether FAT's fused FASA may run the native CPU kernel (fat.models.native): built here, and not turned off
        self.native_kernels = device.type == 'cpu' and any(
            isinstance(m, FusedFasa) and m.native for m in model.modules())
        self.model, self.device, self.batch_size = model, device, batch_size
        self.desc = f'{model_name} {mode} {options["setting"]} b{batch_size}'
        self.rounds: List[List[float]] = []
        self.checks: List[Check] = []
        self.faults = self.steps = 0
        time_steps(self.step, 0, 1, device, desc=f'{self.desc} compile/first step', progress=options['progress'])

    def time(self, num_warmup: int, num_iters: int, progress: bool, monitor: Monitor) -> Check:
        """One round: warm-up steps, then timed steps, re-timed while contended (`fat.contention`); the kept
        attempt's step times and its check are recorded, the page faults of every attempt counted. The calibration
        kernel runs before the warm-up (and after the timed steps), so that the warm-up, not it, leaves the caches
        to the timed steps."""
        faults = minor_faults()

        def attempt() -> List[float]:
            time_steps(self.step, 0, num_warmup, self.device, desc=f'{self.desc} warm-up', progress=progress)
            return time_steps(self.step, num_iters, 0, self.device, desc=self.desc, progress=progress)
        times, check = monitor.measure(attempt)
        self.faults += minor_faults() - faults
        self.steps += num_iters * check.attempts
        self.rounds.append(times)
        self.checks.append(check)
        return check

    def result(self) -> Dict[str, Any]:
        times = [t for r in self.rounds for t in r]
        return dict(summarize(times, self.batch_size, self.rounds if len(self.rounds) > 1 else ()),
                    **summarize_checks(self.checks), img_size=self.img_size, in_chans=self.in_chans,
                    param_count=self.param_count, native_kernels=self.native_kernels,
                    page_faults_per_step=round(self.faults / max(1, self.steps)))


def _build(model_name: str, mode: str, batch_size: int, img_size: Optional[int], device: torch.device,
           options: Dict[str, Any], model_kwargs: Dict[str, Any], retry: bool) -> _Contender:
    """A contender at `batch_size`, or at the largest smaller batch (timm's steps) that fits the GPU's memory."""
    bs = batch_size
    while True:
        try:
            return _Contender(model_name, mode, bs, img_size, device, options, model_kwargs)
        except torch.cuda.OutOfMemoryError:
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            bs = decay_batch_step(bs)
            if not retry or not bs:
                raise


def _check_counts(batch_size: Optional[int], img_size: Optional[int], num_iters: int, num_warmup: int,
                  num_threads: Optional[int], rounds: int = 1) -> None:
    for what, value, low in (('batch size', batch_size, 1), ('image size', img_size, 1), ('num_iters', num_iters, 1),
                             ('num_warmup', num_warmup, 0), ('num_threads', num_threads, 1), ('rounds', rounds, 1)):
        if value is not None and value < low:
            raise ValueError(f'{what} must be >= {low}, got {value}')


def _setup_device(dev: torch.device, precision: str, tf32: Optional[bool], num_threads: Optional[int]) -> bool:
    """Thread count, cuDNN autotuning and TF32 (on CUDA in fp32 unless ``tf32=False``, as timm sets it); returns
    whether TF32 is on."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    on = dev.type == 'cuda' and precision == 'fp32' and tf32 is not False
    if dev.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return on


def _record(name: str, mode: str, contender: _Contender, requested: int, options: Dict[str, Any],
            model_kwargs: Dict[str, Any], tf32: bool, calibration_ms: float) -> Dict[str, Any]:
    result = contender.result()
    dev = contender.device
    return dict(
        model=name, mode=mode, setting=options['setting'],
        **{k: result[k] for k in ('samples_per_sec', 'samples_per_sec_mean', 'spread_pct', 'rounds',
                                  'round_samples_per_sec', 'contended', 'retimed', 'round_cpu_share',
                                  'round_calibration')},
        calibration_ms=round(1e3 * calibration_ms, 3),
        **{k: result[k] for k in ('round_load', 'round_clock_mhz', 'step_time_ms', 'step_time_iqr_ms',
                                  'step_time_min_ms', 'step_time_max_ms')},
        batch_size=contender.batch_size, requested_batch_size=requested, img_size=result['img_size'],
        in_chans=result['in_chans'], param_count=result['param_count'],
        model_kwargs=json.dumps(model_kwargs, sort_keys=True, default=str), precision=options['precision'],
        channels_last=options['channels_last'], compile=options['compile'] or '',
        reparam=options['reparam'] if mode == 'infer' else False, tf32=tf32,
        native_kernels=result['native_kernels'], malloc=_malloc, page_faults_per_step=result['page_faults_per_step'],
        opt=options['opt'] if mode == 'train' else '', num_warmup=options['num_warmup'],
        num_iters=options['num_iters'], device=dev.type, device_name=device_name(dev),
        num_threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
        fat_harness=fat.__version__,
    )


def run(
        model_name: str,
        mode: str = 'infer',
        *,
        setting: str = 'fused',
        batch_size: Optional[int] = None,
        img_size: Optional[int] = None,
        device: Optional[str] = None,
        precision: str = 'fp32',
        channels_last: Optional[bool] = None,
        compile: Optional[str] = None,
        compile_mode: Optional[str] = None,
        reparam: Optional[Union[bool, str]] = None,
        tf32: Optional[bool] = None,
        num_warmup: int = 5,
        num_iters: int = 20,
        num_threads: Optional[int] = None,
        opt: str = 'adamw',
        retry: bool = True,
        retries: int = 2,
        progress: bool = False,
        **model_kwargs: Any,
) -> Dict[str, Any]:
    """Benchmark one timm model and return one result record (a row of the results CSV).

    Args:
        model_name: A registered timm model name.
        mode: 'infer' (forward under inference_mode) or 'train' (forward, backward, optimizer step).
        setting: A key of `SETTINGS` ('as_built', 'best', 'fused'), the same for every model.
        batch_size: Samples per step (default: 256 on CUDA, 16 on CPU). On CUDA, halved stepwise on out-of-memory.
        img_size: Square input side (default: the model's default input size).
        device: 'cpu', 'cuda', 'cuda:N' (default: CUDA when present, else CPU).
        precision: 'fp32', 'amp_fp16' or 'amp_bf16' (autocast).
        channels_last: Model and input in the channels_last memory format (default: the setting's).
        compile: A `torch.compile` backend ('inductor'), or None for the setting's.
        compile_mode: The `torch.compile` mode (e.g. 'max-autotune').
        reparam: Re-parameterize for inference (True, 'peers' or False; default: the setting's; see `prepare`).
        tf32: TF32 on CUDA in fp32 (default: on, as timm).
        num_warmup: Untimed steps first (the first step, which compiles, comes before them).
        num_iters: Timed steps.
        num_threads: CPU threads for torch (default: torch's current setting).
        opt: Optimizer of the training step (a `timm.optim` name).
        retry: Back off the batch size on CUDA out-of-memory.
        retries: Re-time a contended round (`fat.contention`) up to this many times before flagging it.
        progress: Show a tqdm progress bar.
        **model_kwargs: Passed to `timm.create_model` (e.g. ``fasa='global_only'``, ``num_classes=10``).

    Returns:
        The record: model, mode, setting, samples_per_sec (median), samples_per_sec_mean (timm's), step_time_ms
        (median latency of one batch), its spread, batch size, image size, parameter count, the options, device,
        device name, thread count and torch / timm versions.
    """
    records = compare([dict(model=model_name, mode=mode, setting=setting, model_kwargs=model_kwargs)], rounds=1,
                      batch_size=batch_size, img_size=img_size, device=device, precision=precision,
                      channels_last=channels_last, compile=compile, compile_mode=compile_mode, reparam=reparam,
                      tf32=tf32, num_warmup=num_warmup, num_iters=num_iters, num_threads=num_threads, opt=opt,
                      retry=retry, retries=retries, progress=progress)
    return records[0]


def compare(
        contenders: Sequence[Dict[str, Any]],
        rounds: int = 3,
        *,
        batch_size: Optional[int] = None,
        train_batch_size: Optional[int] = None,
        img_size: Optional[int] = None,
        device: Optional[str] = None,
        precision: str = 'fp32',
        channels_last: Optional[bool] = None,
        compile: Optional[str] = None,
        compile_mode: Optional[str] = None,
        reparam: Optional[Union[bool, str]] = None,
        tf32: Optional[bool] = None,
        num_warmup: int = 5,
        num_iters: int = 20,
        num_threads: Optional[int] = None,
        opt: str = 'adamw',
        retry: bool = True,
        retries: int = 2,
        progress: bool = False,
        log: Optional[Callable[[str], None]] = None,
        keep_going: bool = False,
) -> List[Dict[str, Any]]:
    """Time several contenders in one process, round-robin: every contender is built, prepared and warmed up
    (compiled) first, then each round times each of them (``num_warmup`` + ``num_iters`` steps), starting one
    contender later than the round before, so that all of them see the same machine. A round that did not get the
    machine (`fat.contention`) is re-timed in its place, up to ``retries`` times, and flagged if it stays contended.
    One record per contender, in the order given, with timm's statistic per round, its spread and each round's
    contention check.

    Args:
        contenders: Dicts with ``model`` and optional ``mode`` ('infer'), ``setting`` ('fused') and ``model_kwargs``.
        rounds: Rounds of timing.
        batch_size: Inference batch (default: 256 on CUDA, 16 on CPU); ``train_batch_size`` the training one
            (default: the same).
        log: Called with a line per contender built and per round timed (e.g. ``print``).
        keep_going: A contender that fails to build (other than for bad input) is logged and left out instead of
            raising (needs ``log``).
        The others: as `run`.
    """
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = 256 if dev.type == 'cuda' else 16
    _check_counts(batch_size, img_size, num_iters, num_warmup, num_threads, rounds)
    _check_counts(train_batch_size, None, 1, 0, None)
    _check_choice('precision', precision, tuple(PRECISIONS))
    for c in contenders:
        _check_choice('mode', c.get('mode', 'infer'), MODES)
    tf32_on = _setup_device(dev, precision, tf32, num_threads)
    monitor = Monitor(dev, retries)
    built = []
    # every compiled contender keeps its own graph: static shapes (no dynamic batch or width dimension traced after
    # a first model of the same class), and room for one entry per contender in dynamo's per-function cache
    import torch._dynamo
    torch._dynamo.reset()
    limit = max(8, 2 * len(contenders))
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=limit,
                                    accumulated_recompile_limit=max(256, 4 * limit)):
        for c in contenders:
            mode = c.get('mode', 'infer')
            options = dict(resolve_setting(c.get('setting', 'fused'), channels_last=channels_last, reparam=reparam,
                                           compile=compile), compile_mode=compile_mode, precision=precision, opt=opt,
                           num_warmup=num_warmup, num_iters=num_iters, progress=progress)
            bs = (train_batch_size or batch_size) if mode == 'train' else batch_size
            kwargs = dict(c.get('model_kwargs') or {})
            start = time.perf_counter()
            try:
                contender = _build(c['model'], mode, bs, img_size, dev, options, kwargs, retry)
            except Exception as e:  # noqa: BLE001 -- with a log, one contender that fails leaves the others' run
                if log is None or not keep_going or isinstance(e, ValueError):
                    raise
                log(f"FAILED to build {c['model']} {mode} {options['setting']}: {type(e).__name__}: {e}")
                continue
            built.append((c['model'], mode, bs, options, kwargs, contender))
            if log:
                log(f'built {contender.desc} in {time.perf_counter() - start:.1f} s')
        for r in range(rounds):
            for i in range(len(built)):
                contender = built[(i + r) % len(built)][-1]
                check = contender.time(num_warmup, num_iters, progress, monitor)
                if log:
                    last = contender.rounds[-1]
                    retimed = f', timed {check.attempts}x' if check.attempts > 1 else ''
                    flag = f" CONTENDED: {', '.join(check.reasons)}" if check.contended else ''
                    log(f'round {r + 1}/{rounds} {contender.desc}: {contender.batch_size * len(last) / sum(last):.2f} '
                        f'samples/s (mean step); CPU share {check.cpu_share:.2f}, calibration '
                        f'{check.calibration:.2f}x, load {check.load1:.2f}{retimed}{flag}')
    return [_record(name, mode, contender, bs, options, kwargs, tf32_on, monitor.reference)
            for name, mode, bs, options, kwargs, contender in built]


def _model_names(patterns: Sequence[str]) -> List[str]:
    names = []
    for pattern in patterns:
        matches = timm.list_models(pattern) if any(c in pattern for c in '*?[') else [pattern]
        if not matches:
            raise ValueError(f'no registered model matches {pattern!r}')
        names.extend(matches)
    return names


def _bench(args: argparse.Namespace) -> int:
    """`fat bench`: one record per model, mode and batch size; written to results/ and printed."""
    modes = MODES if args.mode == 'both' else (_check_choice('mode', args.mode, MODES + ('both',)),)
    model_kwargs = dict(args.model_kwargs or {})
    if args.fasa is not None:
        model_kwargs['fasa'] = args.fasa
    if args.tuned_malloc and not tune_malloc():
        raise ValueError('--tuned-malloc needs glibc')
    contenders = [dict(model=name, mode=mode, setting=setting, model_kwargs=model_kwargs)
                  for name in _model_names(args.models) for mode in modes for setting in args.setting]
    records = []
    for batch_size in args.batch_size or [None]:
        for record in compare(
                contenders, args.rounds, batch_size=batch_size, img_size=args.img_size, device=args.device,
                precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                compile_mode=args.compile_mode, reparam=args.reparam, tf32=args.tf32, num_warmup=args.warmup,
                num_iters=args.iters, num_threads=args.threads, opt=args.opt, retries=args.retries,
                progress=not args.no_progress, log=lambda line: print(line, file=sys.stderr, flush=True)):
            records.append(record)
            if args.json:
                print(json.dumps(record))
            else:
                spread = f", range {record['spread_pct']} % over {record['rounds']} rounds" if record['rounds'] > 1 \
                    else ''
                print(f"{record['model']:<24} {record['mode']:<5} {record['setting']:<8} b{record['batch_size']:<4} "
                      f"{record['img_size']}px {record['samples_per_sec']:>9.2f} samples/s (median; mean "
                      f"{record['samples_per_sec_mean']:.2f}{spread})  {record['step_time_ms']:>9.2f} ms/step "
                      f"(IQR {record['step_time_iqr_ms']:.2f})"
                      + (f"  CONTENDED ({record['contended']})" if record['contended'] else ''), flush=True)
    if not args.no_save:
        for path in save(records, args.results_dir):
            print(f'wrote {path}')
    return 0


def save(records: Sequence[Dict[str, Any]], results_dir: str = 'results') -> List[Path]:
    """Merge records into the result files their environments name (`results_path`)."""
    paths: Dict[Path, List[Dict[str, Any]]] = {}
    for record in records:
        paths.setdefault(results_path(record, results_dir), []).append(record)
    return [write_results(rows, path) for path, rows in paths.items()]


def register(subparsers: Any) -> None:
    """Add `fat bench` to the `fat` command."""
    p = subparsers.add_parser(
        'bench', description=__doc__.split('\n\n')[0] + ' Results go to runs/bench/bench-*.csv, named by the '
        'environment; the committed comparison in results/ is written by `fat speed` (or --results-dir results).')
    p.add_argument('models', nargs='+', metavar='MODEL', help='timm model names or patterns (e.g. "fat_b*")')
    p.add_argument('--mode', default='infer', help='infer (default), train or both')
    p.add_argument('--batch-size', type=int, nargs='+', metavar='N',
                   help='one or more batch sizes (default: 256 on CUDA, 16 on CPU)')
    p.add_argument('--img-size', type=int, metavar='N', help='square input side (default: the model default)')
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda when present)')
    p.add_argument('--precision', default='fp32', help=f"{', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument('--setting', nargs='+', default=['fused'], metavar='NAME',
                   help=f"{', '.join(SETTINGS)}: the same for every model (default: fused; several: each model in "
                        "each; the module docstring says what each does)")
    p.add_argument('--retries', type=int, default=2, metavar='N',
                   help='re-time a round that did not get the machine (its thread ran < 90 %% of the wall time, or a '
                        'calibration kernel ran > 10 %% slow) up to N times, then flag its figure (default: 2)')
    p.add_argument('--rounds', type=int, default=1, metavar='N',
                   help='time every contender N times, round-robin in one process, and record the spread (default: 1)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: the setting's)")
    p.add_argument('--compile', nargs='?', const='inductor', metavar='BACKEND',
                   help='torch.compile the model (backend default: inductor)')
    p.add_argument('--compile-mode', help='torch.compile mode, e.g. max-autotune')
    p.add_argument('--no-reparam', dest='reparam', action='store_false', default=None,
                   help='do not re-parameterize for inference (timm.utils.reparameterize_model, FAT fusion included)')
    p.add_argument('--tf32', action=argparse.BooleanOptionalAction, default=None,
                   help='TF32 matmuls and convolutions on CUDA in fp32 (default: on, as timm)')
    p.add_argument('--warmup', type=int, default=5, metavar='N', help='untimed warm-up steps (default: 5)')
    p.add_argument('--iters', type=int, default=20, metavar='N', help='timed steps (default: 20)')
    p.add_argument('--threads', type=int, metavar='N', help="CPU threads (default: torch's setting)")
    p.add_argument('--opt', default='adamw', help='optimizer of the training step (default: adamw)')
    p.add_argument('--tuned-malloc', action='store_true',
                   help="keep freed memory in glibc's heap: no page faults from large re-allocations (steadier CPU "
                        "timings, as with jemalloc or tcmalloc)")
    p.add_argument('--fasa', help='FASA variant for fat_* models')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='more timm.create_model arguments')
    p.add_argument('--results-dir', default='runs/bench',
                   help='where the CSV goes (default: runs/bench, so that an ad-hoc run never replaces a row of the '
                        "committed comparison in results/, which `fat speed` writes; give results to add to it)")
    p.add_argument('--no-save', action='store_true', help='print only, write no CSV')
    p.add_argument('--json', action='store_true', help='print one JSON record per line')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.set_defaults(func=_bench)
