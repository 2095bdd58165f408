"""Checkpoints of a run: written atomically with the previous one kept, read back with a fallback and without running
code, and the random states they carry.

Resuming reads a file from the run directory, which others may be able to write (a shared project space): it is
read by torch's weights-only unpickler, which builds tensors, plain containers and numbers and nothing else. A
checkpoint that needs anything more is refused before it is unpickled.
"""
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

__all__ = ['save_checkpoint', 'load_checkpoint', 'read_checkpoint', 'rng_state', 'set_rng_state',
           'UnreadableCheckpoints']

_logger = logging.getLogger(__name__)
_CKPT_KEYS = ('config', 'epoch', 'step_in_epoch', 'global_step', 'model', 'optimizer', 'scheduler', 'ranks', 'history')

# Checkpoints written before issue 30 (2026-12) hold NumPy's random state as an array (`np.random.get_state()`);
# reading them needs exactly these globals (the array-rebuilding function under its NumPy 2 and NumPy 1 names, the
# array and dtype types, the uint32 dtype of the state), which build arrays and nothing else. Newer ones need none.
_reconstruct = np.zeros(0).__reduce__()[0]
_OLD_NUMPY_STATE = [(_reconstruct, 'numpy._core.multiarray._reconstruct'),
                    (_reconstruct, 'numpy.core.multiarray._reconstruct'),
                    np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class UnreadableCheckpoints(ValueError):
    """The run directory has checkpoints and none of them loads: starting over would overwrite them."""

    def __init__(self, out_dir: Path, problems: Mapping[str, str]):
        self.names = list(problems)
        reasons = '; '.join(f'{name}: {why}' for name, why in problems.items())
        super().__init__(f'no checkpoint in {out_dir} loads ({reasons}); not starting over them: '
                         f'`fat train --restart-unreadable` (a sweep: `fat sweep launch --restart-unreadable`) sets '
                         f'them aside and starts from step 0')


def save_checkpoint(state: Dict[str, Any], out_dir: Path):
    """checkpoint-last.pt, written atomically; the one it replaces becomes -prev (a hard link first, so that at every
    moment both files exist and a kill can never leave the run without its newest complete checkpoint)."""
    last = out_dir / LAST_CHECKPOINT
    with atomic_path(last, durable=True) as tmp:
        torch.save(state, tmp)
        if last.exists():
            with atomic_path(out_dir / PREV_CHECKPOINT) as prev:
                os.link(last, prev)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """One checkpoint, read with torch's weights-only unpickler. ValueError (one line) for a file that needs any other
    type, naming it: such a file is not unpickled."""
    with torch.serialization.safe_globals(_OLD_NUMPY_STATE):
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads the pickle's opcodes, runs none
        if unsafe:
            raise ValueError(f"{path} needs {', '.join(sorted(unsafe))}, which no checkpoint of fat-harness holds: "
                             f"refused, not unpickled")
        state = torch.load(path, map_location='cpu', weights_only=True)
    missing = [k for k in _CKPT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f'{path}: missing {missing}')
    return state


def load_checkpoint(out_dir: Path) -> Optional[Dict[str, Any]]:
    """The newest checkpoint that loads (last, else prev, warning about one that does not); None if there is none.

    Raises UnreadableCheckpoints when there are checkpoints and none loads."""
    problems: Dict[str, str] = {}
    for name in (LAST_CHECKPOINT, PREV_CHECKPOINT):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            return read_checkpoint(path)
        except Exception as e:  # a truncated or corrupt file can fail in many ways
            problems[name] = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
            _logger.warning(f'checkpoint {path} is unreadable ({problems[name]}); trying the previous one')
    if problems:
        raise UnreadableCheckpoints(out_dir, problems)
    return None


def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every random state of the process, as tensors and numbers (the weights-only unpickler reads them back)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return dict(python=random.getstate(), torch=torch.get_rng_state(), cuda=device_rng_state(device),
                numpy=dict(key=torch.from_numpy(key.astype(np.int64)), pos=pos, has_gauss=has_gauss, gauss=gauss))


def set_rng_state(state: Mapping[str, Any], device: torch.device):
    random.setstate(state['python'])
    numpy = state['numpy']
    if isinstance(numpy, dict):
        numpy = ('MT19937', numpy['key'].numpy().astype(np.uint32), numpy['pos'], numpy['has_gauss'], numpy['gauss'])
    np.random.set_state(numpy)  # an older checkpoint's: the tuple of np.random.get_state()
    torch.set_rng_state(state['torch'])
    set_device_rng_state(state['cuda'], device)
