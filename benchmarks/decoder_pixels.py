"""How far `decoder=draft` (PIL's reduced-size DCT decoding, fat/data/decode.py) moves the training crops from PIL's.

    python benchmarks/decoder_pixels.py [--images 12] [--size 1024x768]

Generated JPEGs (`fat.data.jpegs`, quality 90) of the given size are decoded both ways; each gets the same boxes,
drawn by timm's RandomResizedCrop (the recipe's scale and ratio) on the full-size image and mapped to the reduced
one in proportion, and is resized to 224 (bicubic), as the recipe's first transform does. Prints the mean, 99th
percentile and max absolute difference in 0-255 levels, for the whole image and for the random boxes, and the
decode time of each (one core, median of 5 passes). Figures in docs/loader.md.
"""
import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from fat.data.decode import image_loader
from fat.data.jpegs import pink_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=12)
    p.add_argument('--size', default='1024x768', help='WIDTHxHEIGHT of the generated JPEGs')
    p.add_argument('--boxes', type=int, default=5, help='random boxes per image')
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    rng = np.random.default_rng(0)
    random.seed(0)  # RandomResizedCrop draws from python's generator
    rrc = RandomResizedCropAndInterpolation(224, scale=(0.08, 1.0), interpolation='bicubic')
    pil, draft = image_loader('pil', 224, 0.875), image_loader('draft', 224, 0.875)
    diffs = {'whole image': [], 'random boxes': []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f'{i}.jpg'
            Image.fromarray(pink_image(rng, height, width)).save(path, 'JPEG', quality=90)
            paths.append(str(path))
        for path in paths:
            full, reduced = pil(path), draft(path)
            fx, fy = reduced.width / full.width, reduced.height / full.height
            boxes = [('whole image', (0, 0, full.height, full.width))]
            boxes += [('random boxes', rrc.get_params(full, rrc.scale, rrc.ratio)) for _ in range(args.boxes)]
            for kind, (top, left, h, w) in boxes:
                a = full.resize((224, 224), Image.BICUBIC, box=(left, top, left + w, top + h))
                b = reduced.resize((224, 224), Image.BICUBIC,
                                   box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
                diffs[kind].append(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).ravel())
        print(f'{args.images} generated {width}x{height} JPEGs (q90); draft decodes them at '
              f'{reduced.width}x{reduced.height}')
        for kind, values in diffs.items():
            v = np.concatenate(values)
            print(f'{kind:>13}: mean {v.mean():.2f}, p99 {np.percentile(v, 99):.0f}, max {v.max()} levels '
                  f'({len(values)} crops of 224x224)')
        for name, load in (('pil', pil), ('draft', draft)):
            passes = []
            for _ in range(5):
                t0 = time.perf_counter()
                for path in paths:
                    load(path)
                passes.append((time.perf_counter() - t0) / len(paths))
            print(f'decode {name:>5}: {1e3 * statistics.median(passes):.2f} ms per image (median of 5 passes)')


if __name__ == '__main__':
    main()
