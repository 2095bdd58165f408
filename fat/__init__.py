"""fat-harness: FAT (Fully Adaptive Transformer) and its FASA ablations as timm models, with the tools to
count, benchmark, train, sweep and report them. `import fat` registers the models with timm."""
# Why this module imports so little: `import fat` runs before every `fat` command, and torch + timm take seconds
# to import, which commands such as `fat sweep status` never need. The contract above still holds, without
# importing torch here: a post-import hook (wrapt) imports fat.models, which registers the models, the moment timm
# finishes importing, or at once if timm already has been. So `import fat; import timm`, `import timm; import fat`
# and `from fat.models import ...` all see the models; and whoever calls timm.create_model has imported timm. The
# FASA names below come from the torch-free fat.variants on first use (PEP 562).
import importlib
from typing import Any, List

import wrapt

__all__ = ['FASA_VARIANTS', 'FasaCfg', 'list_fasa_variants', 'resolve_fasa']
__version__ = '0.1.0'

_LAZY = {name: 'fat.variants' for name in __all__}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_models(_timm: Any) -> None:
    importlib.import_module('fat.models')


wrapt.register_post_import_hook(_register_models, 'timm')
