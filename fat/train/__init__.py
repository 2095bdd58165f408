"""Training: the official FAT recipe built from timm's parts, with bit-exact resume, DDP and honest results.

Interface: `resolve_config(overrides, base)` validates a run's config, `main(cfg)` runs or resumes it in
`cfg['output_dir']` and returns the result it writes there (`fat.rundir` names the files); `PRESETS` holds named
bases. One job per module:

    config.py      the config keys, their defaults (the official recipe), presets and validation; torch-free
    trainer.py     the Trainer: model, data, optimizer, the loop, stop signals, progress
    checkpoint.py  checkpoints written atomically, read back with a fallback and without running code; random states
    curves.py      TensorBoard event files and W&B, without duplicate points on resume
    run.py         `main`: a Trainer in its run directory (config check, resume, environment, result)
    cli.py         the `fat train` command

Importing this package, or its config, does not import torch: the sweep validates train cells with it.
"""
from typing import Any

from .config import DEFAULTS, PRESETS, RUNTIME_KEYS, config_diff, resolve_config

__all__ = ['DEFAULTS', 'PRESETS', 'RUNTIME_KEYS', 'Trainer', 'config_diff', 'main', 'resolve_config']


def __getattr__(name: str) -> Any:
    # the torch parts load on first use (PEP 562)
    if name == 'main':
        from .run import main
        return main
    if name == 'Trainer':
        from .trainer import Trainer
        return Trainer
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
