"""Whether a grid's data loaders can feed its GPUs (`fat sweep plan`). Torch-free.

The loader ceiling of one GPU is the measured img/s per core of decoding + training transforms (`fat data bench`,
``results/loader-*.csv``) times the cores its training process's workers get: min(`workers`, the profile's cores
per GPU = cpus_per_task x tasks per node / GPUs per node). The GPU's rate is a measured training step of the model
(`fat bench --mode train` on a GPU, ``results/bench-train-<precision>-*-cu*.csv``, at the cell's image size and
precision). Only uncontended figures count; where several loader files (other machines) or datasets qualify, the
slowest per core is used and named. Where a figure is missing the line says so and guesses nothing.
"""
import csv
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

__all__ = ['Figure', 'loader_figure', 'gpu_rate', 'loader_lines']


class Figure(NamedTuple):
    value: float  # img/s (per core for a loader figure, per GPU for a training rate)
    source: str  # the file and row it came from


def _rows(results_dir: Path, pattern: str) -> Iterable[Tuple[Path, Dict[str, str]]]:
    for path in sorted(Path(results_dir).glob(pattern)):
        with path.open(newline='') as f:
            for row in csv.DictReader(f):
                yield path, row


def loader_figure(results_dir: Path, decoder: str, img_size: int) -> Optional[Figure]:
    """img/s per core of the uncontended figure with the most workers of each loader file (`fat data bench`) and
    dataset in it, for this decoder and image size; the slowest of them."""
    best: Dict[Tuple[Path, str], Dict[str, str]] = {}
    for path, row in _rows(results_dir, 'loader-*.csv'):
        if row.get('decoder') == decoder and row.get('img_size') == str(img_size) and not row.get('contended'):
            key = (path, row.get('dataset', ''))
            if key not in best or int(row['workers']) > int(best[key]['workers']):
                best[key] = row
    if not best:
        return None
    (path, _), row = min(best.items(), key=lambda item: float(item[1]['img_per_sec_per_core']))
    return Figure(float(row['img_per_sec_per_core']),
                  f"{path} ({row['workers']} workers, {row['dataset']}, {row['device_name']})")


def _precision(cfg: Mapping[str, Any]) -> str:
    """The `fat bench` precision a training config runs at on a GPU."""
    return {'float16': 'amp_fp16', 'bfloat16': 'amp_bf16'}[cfg['amp_dtype']] if cfg['amp'] else 'fp32'


def gpu_rate(results_dir: Path, model: str, img_size: int, precision: str) -> Optional[Figure]:
    """The fastest uncontended GPU training step of `model` at this image size and precision (`fat bench --mode
    train` on CUDA: the file names a `cu<version>` environment)."""
    found = [(float(row['samples_per_sec']), path, row)
             for path, row in _rows(results_dir, f'bench-train-{precision}-*-cu*.csv')
             if row.get('model') == model and row.get('mode') == 'train' and not row.get('contended')
             and row.get('img_size') in (str(img_size), '')]
    if not found:
        return None
    rate, path, row = max(found, key=lambda f: f[0])
    return Figure(rate, f"{path} (batch {row.get('batch_size')}, {row.get('device_name')})")


def loader_lines(configs: Iterable[Mapping[str, Any]], gpus_per_node: int, tasks_per_node: int,
                 cpus_per_task: int, results_dir: Path) -> List[Tuple[bool, str]]:
    """(is a warning, text) per distinct model, image size, decoder and worker count of the training configs;
    nothing for a CPU-only profile."""
    if not gpus_per_node:
        return []
    cores_per_gpu = cpus_per_task * tasks_per_node / gpus_per_node
    lines = []
    seen = set()
    for cfg in configs:
        key = (cfg['model'], cfg['img_size'], cfg['decoder'], cfg['workers'], _precision(cfg))
        if key in seen:
            continue
        seen.add(key)
        model, img_size, decoder, workers, precision = key
        what = f'{model} at {img_size} px, decoder {decoder}'
        loader = loader_figure(results_dir, decoder, img_size)
        if loader is None:
            lines.append((False, f'loader: {what}: no uncontended loader figure in {results_dir}/loader-*.csv, so '
                                 f'its ceiling is unknown (measure it: fat data bench DIR img_size={img_size} '
                                 f'decoder={decoder} --results-dir {results_dir})'))
            continue
        cores = min(max(workers, 1), cores_per_gpu)  # workers 0: the training process loads, on its one core
        ceiling = loader.value * cores
        head = (f'loader: {what}: ceiling {ceiling:,.0f} img/s per GPU ({loader.value:,.1f} img/s per core x '
                f'{cores:g} cores: workers {workers}, {cores_per_gpu:g} cores per GPU; {loader.source})')
        rate = gpu_rate(results_dir, model, img_size, precision)
        if rate is None:
            lines.append((False, f'{head}; no {precision} GPU training rate for {model} in '
                                 f'{results_dir}/bench-train-{precision}-*-cu*.csv, so whether it starves the GPUs '
                                 f'is unknown'))
        elif ceiling < rate.value:
            needed = math.ceil(rate.value / loader.value)
            lines.append((True, f'{head} is below the GPU rate of {rate.value:,.0f} img/s ({rate.source}): the GPUs '
                                f'will wait for data; it needs {needed} cores and workers per GPU'))
        else:
            lines.append((False, f'{head} covers the GPU rate of {rate.value:,.0f} img/s ({rate.source})'))
    return lines
