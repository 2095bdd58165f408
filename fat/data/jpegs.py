"""Generated ImageNet-sized JPEGs for the loader benchmark (`fat data bench --generate N DIR`).

JPEG decoding costs more the more non-zero DCT coefficients an image has, so flat colour decodes too fast and
white noise far too slowly. A natural photograph's amplitude spectrum falls roughly as 1/f^alpha with alpha near 1;
each image here is such a field (alpha drawn from [0.9, 1.3], the three channels correlated as in photographs), of
500x375 pixels (ImageNet's most common size), saved at quality 90. They come out at about 80-130 KB, the range of
ImageNet's training JPEGs (about 110 KB on average). Written as an ImageNet-style folder, `DIR/train/<class>/*.jpg`
(and `DIR/val/<class>/`, one image per class, so that `fat train` reads it too), each image atomically, and
`DIR/generated.json` last: a folder with it is complete.
"""
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from fat.io import atomic_path, write_json_atomic

__all__ = ['MANIFEST', 'generate', 'pink_image']

MANIFEST = 'generated.json'
_CLASSES = 10


def pink_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB uint8 image with a 1/f^alpha amplitude spectrum, as natural images have."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    freq = np.hypot(fx, fy)
    freq[0, 0] = 1.0
    alpha = rng.uniform(0.9, 1.3)

    def noise() -> np.ndarray:
        return rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)
    shared = noise()
    channels = []
    for _ in range(3):
        spectrum = (0.8 * shared + 0.45 * noise()) / freq ** alpha
        spectrum[0, 0] = 0
        channels.append(np.fft.irfft2(spectrum, s=(height, width)))
    x = np.stack(channels, -1)
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 48 * x, 0, 255).astype(np.uint8)


def generate(root: Path, count: int, size: Tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0,
             progress: bool = True) -> Dict[str, Any]:
    """Write `count` images of `size` (width, height) under `root/train/<class>/`; the manifest's contents.

    A folder that already holds this very set (its manifest says so) is kept as it is; any other non-empty folder
    is refused, so that nothing of the user's is overwritten."""
    if count < 1:
        raise ValueError(f'--generate needs at least 1 image, got {count}')
    manifest = dict(count=count, width=size[0], height=size[1], quality=quality, seed=seed, classes=_CLASSES,
                    content='1/f^alpha noise, alpha in [0.9, 1.3]')
    root = Path(root)
    done = root / MANIFEST
    if done.is_file():
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in manifest} == manifest:
            return previous
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f'{root} is not empty and holds no generated set like this one: give a new folder')
    rng = np.random.default_rng(seed)
    total = 0
    for i in tqdm(range(count), desc='generating JPEGs', disable=not progress, leave=False):
        path = root / 'train' / f'class_{i % _CLASSES:02d}' / f'img_{i:06d}.jpg'
        with atomic_path(path) as tmp:
            Image.fromarray(pink_image(rng, size[1], size[0])).save(tmp, 'JPEG', quality=quality)
            total += tmp.stat().st_size
    for c in range(min(count, _CLASSES)):  # a val/ split, one image per class: fat train reads the folder too
        with atomic_path(root / 'val' / f'class_{c:02d}' / f'img_{c:06d}.jpg') as tmp:
            Image.fromarray(pink_image(rng, size[1], size[0])).save(tmp, 'JPEG', quality=quality)
    manifest['mean_kb'] = round(total / count / 1e3, 1)
    write_json_atomic(done, manifest)
    return manifest
