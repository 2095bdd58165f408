"""Checkpoints of a run: written atomically with the previous one kept, read back with a fallback, and the random
states they carry."""
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from fat.distributed import device_rng_state, set_device_rng_state
from fat.io import atomic_path
from fat.rundir import LAST_CHECKPOINT, PREV_CHECKPOINT

__all__ = ['save_checkpoint', 'load_checkpoint', 'rng_state', 'set_rng_state']

_logger = logging.getLogger(__name__)
_CKPT_KEYS = ('config', 'epoch', 'step_in_epoch', 'global_step', 'model', 'optimizer', 'scheduler', 'ranks', 'history')


def save_checkpoint(state: Dict[str, Any], out_dir: Path):
    """checkpoint-last.pt, written atomically; the one it replaces becomes -prev (a hard link first, so that at every
    moment both files exist and a kill can never leave the run without its newest complete checkpoint)."""
    last = out_dir / LAST_CHECKPOINT
    with atomic_path(last, durable=True) as tmp:
        torch.save(state, tmp)
        if last.exists():
            with atomic_path(out_dir / PREV_CHECKPOINT) as prev:
                os.link(last, prev)


def load_checkpoint(out_dir: Path) -> Optional[Dict[str, Any]]:
    """The newest readable checkpoint (last, else prev), warning about each unreadable one; None if there is none."""
    for name in (LAST_CHECKPOINT, PREV_CHECKPOINT):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location='cpu', weights_only=False)
            missing = [k for k in _CKPT_KEYS if k not in state]
            if missing:
                raise ValueError(f'missing {missing}')
            return state
        except Exception as e:  # a truncated or corrupt file can fail in many ways
            _logger.warning(f'checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying the previous one')
    if (out_dir / LAST_CHECKPOINT).exists() or (out_dir / PREV_CHECKPOINT).exists():
        _logger.warning(f'no readable checkpoint in {out_dir}: starting the run from the beginning')
    return None


def rng_state(device: torch.device) -> Dict[str, Any]:
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=device_rng_state(device))


def set_rng_state(state: Mapping[str, Any], device: torch.device):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    set_device_rng_state(state['cuda'], device)
