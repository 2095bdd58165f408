"""How training images are decoded: the config key `decoder`.

* ``pil`` (the default, timm's and the official code's): `PIL.Image.open(...).convert('RGB')`, full size.
* ``draft``: PIL's reduced-size DCT decoding (`Image.draft`: libjpeg-turbo decodes at 1/2, 1/4 or 1/8 scale, which
  skips most of the inverse DCT and colour conversion), at the largest reduction that keeps the image's shorter side
  at least ``img_size / crop_pct`` pixels (256 for the recipe's 224 and 0.875). So a crop of the whole image, and
  the evaluation resize, still only shrink; a smaller RandomResizedCrop box is enlarged more than from the full
  image, and its pixels differ (docs/loader.md gives the measured difference). JPEGs only; other formats and JPEGs
  too small to reduce (ImageNet's typical 500x375 at 224) decode exactly as with ``pil``.

The decoder changes a run's pixels, so it is part of a cell's id (at its default ``pil`` it is left out of the id,
so that cells from before the key existed keep theirs).
"""
import contextlib
import math
import os
from typing import BinaryIO, Callable, ContextManager, Union

from PIL import Image

__all__ = ['DECODERS', 'image_loader', 'pil_loader', 'draft_min_side']

DECODERS = ('pil', 'draft')


def draft_min_side(img_size: int, crop_pct: float) -> int:
    """The shorter side `draft` decoding keeps at least: the evaluation resize's (`img_size / crop_pct`)."""
    return math.ceil(img_size / crop_pct)


PathOrFile = Union[str, os.PathLike, BinaryIO]  # a file, or its bytes in a binary stream (tar shards, datasets)


def _opened(path: PathOrFile) -> ContextManager[BinaryIO]:
    return open(path, 'rb') if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)


class _DraftLoader:
    """A file -> RGB image at the largest DCT reduction keeping the shorter side >= `min_side` (picklable, for
    loader workers)."""

    def __init__(self, min_side: int):
        self.min_side = min_side

    def __call__(self, path: PathOrFile) -> Image.Image:
        with _opened(path) as f:
            img = Image.open(f)
            w, h = img.size
            short = min(w, h)
            if short >= 2 * self.min_side:
                # draft picks the largest scale whose size is >= the size asked for, in both sides
                img.draft('RGB', (math.ceil(w * self.min_side / short), math.ceil(h * self.min_side / short)))
            return img.convert('RGB')


def pil_loader(path: PathOrFile) -> Image.Image:
    with _opened(path) as f:  # as torchvision's default loader (the file is closed once decoded)
        return Image.open(f).convert('RGB')


def image_loader(decoder: str, img_size: int, crop_pct: float) -> Callable[[PathOrFile], Image.Image]:
    """The function that reads one image file for `decoder` (a value of `DECODERS`)."""
    if decoder == 'pil':
        return pil_loader
    if decoder == 'draft':
        return _DraftLoader(draft_min_side(img_size, crop_pct))
    raise ValueError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
