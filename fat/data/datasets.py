"""Datasets and transforms for `fat train`: ImageNet-style folders, Fashion-MNIST and a synthetic set.

Small datasets (Fashion-MNIST, synthetic) are decoded once into uint8 tensors; their eval images are transformed
once and kept as a tensor. Augmentation randomness is drawn per sample from (seed, epoch, index) by
`SeededSamples`, so an epoch's batches are the same however many loader workers made them, whether the workers
persist across epochs, and wherever a resumed run re-enters the epoch.
"""
import gzip
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Tuple

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as _timm_auto_augment
from torch.utils.data import Dataset, DistributedSampler, Subset, TensorDataset
from torchvision.datasets import ImageFolder

from fat.data.decode import image_loader, pil_loader
from fat.data.formats import read_split
from fat.data.layout import data_format
from fat.preflight import FASHION_MNIST_DIR, FASHION_MNIST_FILES, fashion_mnist_missing

__all__ = ['FASHION_MNIST_DIR', 'EpochBatches', 'SeededSamples', 'build_datasets', 'build_transforms', 'eval_dataset']

_SYNTHETIC_SIZES = {'train': 512, 'val': 128}
_SUBSET_SEED = 0  # subsets are fixed, whatever the run's seed, so that seeds differ only in the training itself


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    # timm's RandAugment asks for 0 bits at magnitude 10 (reachable with mstd); recent Pillow (13 here) refuses 0,
    # which older Pillow answered with a black image. Give that answer rather than crash mid-epoch.
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return _timm_auto_augment.posterize(img, bits_to_keep, **kwargs)


_POSTERIZE_OPS = ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal')


def _safe_posterize(transform: T.Compose) -> T.Compose:
    """`transform` with its auto-augment posterize ops using `_posterize`: set on these ops only, so that timm's
    own table (and so any other user of timm in the process) is left as it is."""
    for t in transform.transforms:
        for op in getattr(t, 'ops', ()):  # RandAugment, AutoAugment, AugMix
            if getattr(op, 'name', None) in _POSTERIZE_OPS:
                op.aug_fn = _posterize
    return transform


class ImageTensorDataset(Dataset):
    """Decoded uint8 images (N, H, W) or (N, H, W, C) with integer targets, served as PIL images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return Image.fromarray(self.images[index].numpy()), int(self.targets[index])


class Transformed(Dataset):
    """(transform(image), target) of a dataset of (PIL image, target)."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img, target = self.dataset[index]
        return self.transform(img), target


class SeededSamples(Transformed):
    """Indexed by (epoch, index): seeds python's, numpy's and torch's CPU generators from (seed, epoch, index) before
    the sample. The epoch comes with each index (from `EpochBatches`), not from state set on the dataset, because
    persistent loader workers keep the copy of the dataset they were started with."""

    def __init__(self, dataset: Dataset, transform: Callable, seed: int):
        super().__init__(dataset, transform)
        self.seed = seed

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
        epoch, index = key
        # a tuple of ints hashes the same in every process and Python run
        sample_seed = hash((self.seed, epoch, index)) & 0xFFFF_FFFF
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.default_generator.manual_seed(sample_seed)
        return super().__getitem__(index)


class EpochBatches:
    """The training loader's batch sampler: the batches of (epoch, index) from step `step` of epoch `epoch` (set by
    `start`), this rank's indices coming from `sampler` (a DistributedSampler). It lives in the main process, so one
    loader with persistent workers serves every epoch and every resume point."""

    def __init__(self, sampler: DistributedSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size
        self.steps = len(sampler) // batch_size  # whole batches only: every step of every rank has the same size
        self.epoch = self.step = 0

    def start(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def __len__(self) -> int:
        return self.steps - self.step

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        self.sampler.set_epoch(self.epoch)
        indices, bs = list(self.sampler), self.batch_size
        for i in range(self.step, self.steps):
            yield [(self.epoch, index) for index in indices[i * bs:(i + 1) * bs]]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzip-compressed."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(root: Path, split: str) -> ImageTensorDataset:
    images, labels = (root / name for name in FASHION_MNIST_FILES[split])
    for path in (images, labels):
        if not path.is_file():
            raise fashion_mnist_missing(path)
    return ImageTensorDataset(
        torch.from_numpy(_read_idx(images).copy()), torch.from_numpy(_read_idx(labels).astype(np.int64)))


def _synthetic(split: str, size: int, num_classes: int, img_size: int, channels: int) -> ImageTensorDataset:
    """Noise with a class-dependent bright band: learnable in a few steps, for smoke tests only."""
    g = torch.Generator().manual_seed(1 if split == 'train' else 2)
    images = torch.randint(0, 128, (size, img_size, img_size, channels), generator=g, dtype=torch.uint8)
    targets = torch.arange(size) % num_classes
    band = max(1, img_size // num_classes)
    for c in range(num_classes):
        images[targets == c, c * band % img_size:c * band % img_size + band] += 127
    return ImageTensorDataset(images.squeeze(-1) if channels == 1 else images, targets)


def _image_folder(root: Path, split: str, loader: Callable[[str], Image.Image] = pil_loader) -> ImageFolder:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f'ImageNet-style data not found: {folder} is not a folder; set data_dir to a folder holding '
            f'train/<class>/* and val/<class>/* images')
    return ImageFolder(str(folder), loader=loader)


def _subset(dataset: Dataset, size: int) -> Dataset:
    if not size or size >= len(dataset):
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(_SUBSET_SEED))[:size]
    if isinstance(dataset, ImageTensorDataset):
        return ImageTensorDataset(dataset.images[indices], dataset.targets[indices])
    return Subset(dataset, indices.tolist())


def build_datasets(cfg: Mapping[str, Any]) -> Tuple[Dataset, Dataset, Dict[str, int]]:
    """(train, val, info) without transforms; info holds `num_classes` and the data's `channels`."""
    name = cfg['dataset']
    if name == 'fashion_mnist':
        root = Path(cfg['data_dir'] or FASHION_MNIST_DIR)
        train, val = _fashion_mnist(root, 'train'), _fashion_mnist(root, 'val')
        num_classes, channels = 10, 1
    elif name == 'synthetic':
        num_classes, channels = cfg['num_classes'] or 10, cfg['in_chans'] or 3
        train, val = (
            _synthetic(split, cfg[f'{split}_subset'] or _SYNTHETIC_SIZES[split], num_classes, cfg['img_size'],
                       channels)
            for split in ('train', 'val'))
    else:
        if not cfg['data_dir']:
            raise ValueError("dataset 'imagenet' needs data_dir: a folder holding train/<class>/* and val/<class>/*")
        root = Path(cfg['data_dir'])
        loader = image_loader(cfg['decoder'], cfg['img_size'], cfg['crop_pct'])
        fmt = data_format(root)  # an image folder, or tar shards / a Hugging Face dataset (fat data pack)
        if fmt == 'folder':
            train, val = _image_folder(root, 'train', loader), _image_folder(root, 'val', loader)
        else:
            train, val = (read_split(root, fmt, split, loader) for split in ('train', 'val'))
        if train.classes != val.classes:
            raise ValueError(f'{root}: train/ and val/ hold different class folders')
        num_classes, channels = len(train.classes), 3
    if cfg['num_classes'] is not None and cfg['num_classes'] != num_classes:
        raise ValueError(f"config key 'num_classes' is {cfg['num_classes']} but the {name} data has {num_classes}")
    return _subset(train, cfg['train_subset']), _subset(val, cfg['val_subset']), dict(
        num_classes=num_classes, channels=channels)


def build_transforms(cfg: Mapping[str, Any], in_chans: int, data_channels: int) -> Tuple[Callable, Callable]:
    """(train, eval) transforms, PIL image in, normalised tensor out, from timm's `create_transform`.

    As in the official code, inputs of 32 pixels or less are trained with RandomCrop(padding=4) instead of
    RandomResizedCrop and evaluated without resizing (smaller images are centred and zero-padded).
    """
    mean = tuple(cfg['mean'] or IMAGENET_DEFAULT_MEAN)
    std = tuple(cfg['std'] or IMAGENET_DEFAULT_STD)
    if in_chans == 1 and len(mean) == 3:
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"config keys 'mean'/'std' need {in_chans} values, got {len(mean)}/{len(std)}")
    size = cfg['img_size']
    train = create_transform(
        size, is_training=True, scale=tuple(cfg['scale']), hflip=cfg['hflip'], color_jitter=cfg['color_jitter'],
        auto_augment=cfg['auto_augment'], interpolation=cfg['interpolation'], mean=mean, std=std,
        re_prob=cfg['reprob'], re_mode=cfg['remode'], re_count=cfg['recount'])
    train = _safe_posterize(train)
    if size <= 32:
        train.transforms[0] = T.RandomCrop(size, padding=4)
        evaluate = T.Compose([T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    else:
        evaluate = create_transform(
            size, interpolation=cfg['interpolation'], mean=mean, std=std, crop_pct=cfg['crop_pct'])
    if data_channels != in_chans:
        # grayscale data into an RGB model (replicated channels), or RGB data into a one-channel model
        train, evaluate = (T.Compose([T.Grayscale(in_chans), t]) for t in (train, evaluate))
    return train, evaluate


def eval_dataset(dataset: Dataset, transform: Callable) -> Dataset:
    """The eval set; a decoded (small) one is transformed once and kept as tensors (the transform is fixed)."""
    if not isinstance(dataset, ImageTensorDataset):
        return Transformed(dataset, transform)
    images, targets = zip(*Transformed(dataset, transform), strict=True)
    return TensorDataset(torch.stack(images), torch.tensor(targets))
