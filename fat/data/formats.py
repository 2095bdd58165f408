"""Readers of the packed ImageNet-style formats (`fat.data.layout`): map-style datasets of (PIL RGB image, label)
whose sample i is the image folder's sample i when packed from it, decoded by the same loader as the folder's
(`fat.data.decode`, the config key `decoder`) from the same bytes, so that they give the folder reader's batches
and resume as exactly.

Tar shards are read through fat's own index (offset and size of each image in its tar, `fat data pack` writes it)
rather than wids: wids copies local shards into a cache directory (or, with an identity local name, writes lock
files beside them, which a read-only cluster file system refuses) and keeps a small LRU of open shards made for
its shard-local samplers, which a uniform shuffle over ImageNet's shards would thrash. One `pread` per sample
needs neither. The shards stay plain WebDataset tars with a wids shard list beside them for other readers.
"""
import io
import os
from pathlib import Path
from typing import BinaryIO, Callable, List, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fat.data.decode import pil_loader
from fat.data.layout import INDEX_DIR, hf_split_name, read_manifest

__all__ = ['ShardImages', 'HfImages', 'read_split']

Loader = Callable[[BinaryIO], Image.Image]


class ShardImages(Dataset):
    """One split of a packed WebDataset output, by index: each sample one read of its image's bytes."""

    def __init__(self, root: Path, split: str, loader: Loader = pil_loader):
        self.loader = loader
        manifest = read_manifest(root)
        self.classes: List[str] = manifest['classes']
        self.shards = [str(root / split / f'{Path(name).stem}.tar') for name in manifest['splits'][split]['index']]
        path = root / INDEX_DIR / f'{split}.npy'
        table = np.load(path)  # (shard, offset, size, label) per sample
        self.shard, self.offset, self.size, label = table.T
        self.targets = label.tolist()
        if len(self.targets) != manifest['splits'][split]['samples']:
            raise ValueError(f'{path}: {len(self.targets)} {split} samples indexed, the manifest says '
                             f'{manifest["splits"][split]["samples"]}; pack the image folder again')

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        fd = os.open(self.shards[self.shard[index]], os.O_RDONLY)
        try:
            data = os.pread(fd, int(self.size[index]), int(self.offset[index]))
        finally:
            os.close(fd)
        return self.loader(io.BytesIO(data)), self.targets[index]


class HfImages(Dataset):
    """One split of a Hugging Face dataset on disk (`load_from_disk`) with an image column and a ClassLabel column;
    images are decoded here by the folder's loader, rather than by `datasets` (which keeps the file's mode)."""

    def __init__(self, root: Path, split: str, loader: Loader = pil_loader):
        self.loader = loader
        import datasets  # a second or so to import; only runs that read this format pay it

        dataset_dict = datasets.load_from_disk(str(root))
        if not isinstance(dataset_dict, datasets.DatasetDict):
            raise ValueError(f'{root}: a single Hugging Face dataset; fat train needs a DatasetDict with train and '
                             f'val (or validation) splits')
        ds = dataset_dict[hf_split_name(dataset_dict, split, root)]
        image = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        label = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if image is None or label is None:
            raise ValueError(f'{root}: the {split} split needs an Image column and a ClassLabel column, it has '
                             f'{dict(ds.features)}')
        self.classes: List[str] = ds.features[label].names
        self.image, self.label = image, label
        self.ds = ds.cast_column(image, datasets.Image(decode=False)).select_columns([image, label])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        row = self.ds[int(index)]
        data = row[self.image]['bytes']
        if data is None:  # stored as a path (a dataset saved without embedding its files)
            data = Path(row[self.image]['path']).read_bytes()
        return self.loader(io.BytesIO(data)), int(row[self.label])


def read_split(root: Path, fmt: str, split: str, loader: Loader = pil_loader) -> Dataset:
    """Split `split` of the packed or Hugging Face data at `root` in format `fmt` ('wds' or 'hf'), images decoded by
    `loader` (`fat.data.decode.image_loader`); the dataset's `classes` are the class names in label order."""
    return (ShardImages if fmt == 'wds' else HfImages)(root, split, loader)
