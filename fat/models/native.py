"""Native CPU kernels for inference, built on first use with the machine's C++ compiler.

One kernel so far, ``torch.ops.fat.fasa_attention`` (csrc/fasa_attention.cpp): FASA's global branch and its
interaction with the local branch in one pass, for float32 channels_last maps without autograd. `FusedFasa` uses it
when `load` succeeds and falls back to PyTorch ops otherwise, with identical results up to float32 round-off.

`torch.utils.cpp_extension` compiles it once per machine and source version (about 10 s; cached under
``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and needs a C++ compiler (the one
``torch.compile`` uses on CPU). ``FAT_NATIVE=0`` turns the kernels off: to time the PyTorch path, or to export a
fused model (ONNX, `torch.export`), whose consumers do not know the op. TorchScript always takes the PyTorch path.
"""
import functools
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

__all__ = ['load', 'fasa_attention_applies']

_SOURCE = Path(__file__).parent / 'csrc' / 'fasa_attention.cpp'
# the instruction set at::vec compiles for: the one torch's own CPU kernels were dispatched to on this machine, with
# inductor's flags for it. Not -march=native: a build cached in a home directory shared by a cluster's nodes must run
# on every node of that capability (the build is cached per capability).
_CAPABILITY_FLAGS = {
    'AVX512': ['-DCPU_CAPABILITY_AVX512', '-mavx512f', '-mavx512dq', '-mavx512vl', '-mavx512bw', '-mfma'],
    'AVX2': ['-DCPU_CAPABILITY_AVX2', '-mavx2', '-mfma'],
}


@functools.cache
def load() -> bool:
    """Build (first time) and load the kernels; False, with one warning, when they cannot be built here."""
    if os.environ.get('FAT_NATIVE', '1') == '0':
        return False
    from torch.utils import cpp_extension
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ['-O3', '-fopenmp', *_CAPABILITY_FLAGS.get(capability, [])]
    try:
        cpp_extension.load(f'fat_native_{capability.lower()}', [str(_SOURCE)], extra_cflags=flags,
                           extra_ldflags=['-fopenmp'], is_python_module=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch path computes the same
        # a build error carries the whole compiler log: its last line before ninja's own says what went wrong
        lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith('ninja:')]
        warnings.warn(f'fat: native CPU kernels unavailable ({lines[-1] if lines else type(e).__name__}); FASA runs '
                      f'on PyTorch ops (FAT_NATIVE=0 skips the build)', stacklevel=2)
        return False

    @torch.library.register_fake('fat::fasa_attention')
    def _(q_map, kv_map, num_heads, scale, local, interaction):
        return torch.empty_like(q_map, memory_format=torch.channels_last)

    return True


def fasa_attention_applies(q_map: torch.Tensor, kv_map: torch.Tensor, local: Optional[torch.Tensor]) -> bool:
    """Whether ``torch.ops.fat.fasa_attention`` takes these maps: float32 channels_last on CPU, no autograd."""
    return (not torch.is_grad_enabled() and q_map.device.type == 'cpu' and q_map.dtype == torch.float32
            and kv_map.dtype == torch.float32 and q_map.is_contiguous(memory_format=torch.channels_last)
            and kv_map.is_contiguous(memory_format=torch.channels_last)
            and (local is None or (local.dtype == torch.float32
                                   and local.is_contiguous(memory_format=torch.channels_last))))
