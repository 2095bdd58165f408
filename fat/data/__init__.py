"""Training data: the datasets and transforms `fat train` reads (`fat.data.datasets`), the packed formats
(`fat.data.layout` torch-free, `fat.data.formats` their readers) and `fat data pack` (`fat.data.pack`).

The names below are imported from `fat.data.datasets` on first use, so that the torch-free `fat.data.layout`
(used by `fat sweep plan`'s data checks) can be imported without torch."""
import importlib
from typing import Any

__all__ = ['FASHION_MNIST_DIR', 'EpochBatches', 'SeededSamples', 'build_datasets', 'build_transforms', 'eval_dataset']


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module('fat.data.datasets'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
