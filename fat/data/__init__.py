"""Training data: the datasets and transforms `fat train` reads (`fat.data.datasets`)."""
from fat.data.datasets import (
    FASHION_MNIST_DIR,
    EpochBatches,
    SeededSamples,
    build_datasets,
    build_transforms,
    eval_dataset,
)

__all__ = ['FASHION_MNIST_DIR', 'EpochBatches', 'SeededSamples', 'build_datasets', 'build_transforms', 'eval_dataset']
