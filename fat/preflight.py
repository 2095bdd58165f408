"""What can be checked before anything runs: that a model name builds, its keywords, FASA only on FAT models, and
the data a training run would read. `fat train` runs these before its run directory exists, and `fat sweep plan`
for every cell, so that bad input is one line and nothing is written. Torch-free unless a model is a timm peer
(its registry and a build on the meta device); the data checks only list folders."""
import functools
import json
import os
from pathlib import Path
from typing import Any, Mapping

from fat.checks import close_hint
from fat.data.layout import MANIFEST, data_format, hf_split_name
from fat.variants import FAT_ARGS, FAT_STAGE_ARGS, MODEL_NAMES

__all__ = ['FAT_MODELS', 'FASHION_MNIST_DIR', 'FASHION_MNIST_FILES', 'is_fat', 'check_model', 'check_model_args',
           'check_sizes', 'check_fat_only', 'check_data', 'check_train', 'fashion_mnist_missing']

FAT_MODELS = ('fat_b0', 'fat_b1', 'fat_b2', 'fat_b3')
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist (make data)
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'val': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')  # torchvision's


def is_fat(name: str) -> bool:
    """Whether `name` (`fat_b0` or `fat_b0.<pretrained tag>`) is one of this project's FAT models."""
    return name.split('.', 1)[0] in MODEL_NAMES


def check_model(name: Any) -> None:
    """ValueError unless `name` is a model timm can build (the FAT models are registered by `import fat`).
    A FAT model is known without importing timm (seconds); any other name needs timm's registry."""
    if isinstance(name, str) and name.split('.', 1)[0] in MODEL_NAMES:  # `fat_b0` or `fat_b0.<pretrained tag>`
        return
    import timm
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}{close_hint(name, timm.list_models())}; valid: "
                         f"{', '.join(FAT_MODELS)} or any timm model")


def check_model_args(name: str, args: Mapping[str, Any]) -> None:
    """ValueError naming a keyword the model does not take, or a FAT per-stage value of the wrong size, found
    without building the model: FAT's keywords are known without torch (`fat.variants.FAT_ARGS`); a timm peer
    is built once on the meta device (no memory, no weights) per distinct (model, arguments)."""
    if not args:
        return
    if name.split('.', 1)[0] in MODEL_NAMES:
        for key, value in args.items():
            if key not in FAT_ARGS:
                raise ValueError(f"model_args: {name} takes no argument {key!r}{close_hint(key, FAT_ARGS)}; "
                                 f"valid: {', '.join(FAT_ARGS)}")
            if key in FAT_STAGE_ARGS and not (
                    isinstance(value, list) and len(value) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
                raise ValueError(f'model_args: {key} expects one positive number per stage (4), got {value!r}')
        return
    _check_peer_args(name, json.dumps(dict(args), sort_keys=True))


@functools.cache
def _check_peer_args(name: str, args_json: str) -> None:
    import timm
    import torch
    try:
        with torch.device('meta'):
            timm.create_model(name, **json.loads(args_json))
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f'model_args: {name} refuses {args_json}: {e}') from None




def check_sizes(cfg: Mapping[str, Any]) -> None:
    """A cell's image size and its model's arguments, before any cell is written (see `check_model_args`)."""
    if cfg.get('img_size') is not None and cfg['img_size'] < 1:
        raise ValueError(f"config key 'img_size' must be >= 1, got {cfg['img_size']}")
    check_model_args(cfg['model'], cfg.get('model_args') or {})




def check_fat_only(cfg: Mapping[str, Any], default_fasa: Any = 'fasa') -> None:
    """ValueError when a timm peer is given a FASA variant: `fasa` ablates FAT's attention and means nothing to
    another model (it is left at its default for peers, and not passed to them)."""
    if not is_fat(cfg['model']) and cfg.get('fasa', default_fasa) != default_fasa:
        raise ValueError(f"config key 'fasa' applies to FAT models only; {cfg['model']} is a timm peer (leave fasa "
                         f"at {default_fasa!r})")


def fashion_mnist_missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f'Fashion-MNIST not found: {path} is missing; install it with `apt-get install dataset-fashion-mnist` '
        f'(into {FASHION_MNIST_DIR}) or set data_dir to a folder holding the four *-ubyte.gz files')


def check_train(cfg: Mapping[str, Any]) -> None:
    """Everything a training config can be refused for before a run directory exists, but its data: the model, its
    keywords and image size, FASA only on FAT models (the config's own keys and values: `fat.train.config`)."""
    check_model(cfg['model'])
    check_sizes(cfg)
    check_fat_only(cfg)


def _first_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # stops at the first image: an ImageNet class holds 1,300
        return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)


def check_data(cfg: Mapping[str, Any]) -> None:
    """FileNotFoundError / ValueError naming the folder or file when a run's data cannot be read as configured:
    an ImageNet-style `data_dir` needs train/ and val/ with the same class folders, each holding an image, or a
    complete `fat data pack` output (its manifest), or a Hugging Face dataset dict with train and val splits; the
    Fashion-MNIST files must be there. Lists folders only (the first image of each class), so it takes a moment
    on ImageNet."""
    name = cfg['dataset']
    if name == 'fashion_mnist':
        root = Path(cfg['data_dir'] or FASHION_MNIST_DIR)
        for files in FASHION_MNIST_FILES.values():
            for file in files:
                if not (root / file).is_file():
                    raise fashion_mnist_missing(root / file)
    elif name == 'imagenet':
        if not cfg['data_dir']:
            raise ValueError("dataset 'imagenet' needs data_dir: a folder holding train/<class>/* and val/<class>/*")
        root = Path(cfg['data_dir'])
        fmt = data_format(root)  # refuses an unfinished pack and unindexed tar shards
        if fmt == 'hf' and not (root / MANIFEST).is_file():  # a dataset saved by datasets' save_to_disk
            try:
                splits = json.loads((root / 'dataset_dict.json').read_text()).get('splits', [])
            except ValueError as e:
                raise ValueError(f'{root / "dataset_dict.json"}: unreadable ({e})') from None
            for split in ('train', 'val'):
                hf_split_name(splits, split, root)
        if fmt != 'folder':
            return
        classes = {}
        for split in ('train', 'val'):
            folder = root / split
            if not folder.is_dir():
                raise FileNotFoundError(f'ImageNet-style data not found: {folder} is not a folder; set data_dir to a '
                                        'folder holding train/<class>/* and val/<class>/* images')
            classes[split] = sorted(d.name for d in folder.iterdir() if d.is_dir())
            if not classes[split]:
                raise ValueError(f'{folder}: no class folders (expected {folder}/<class>/<image>)')
            empty = next((c for c in classes[split] if not _first_image(folder / c)), None)
            if empty is not None:
                raise ValueError(f'{folder / empty}: no image ({", ".join(IMAGE_EXTENSIONS)})')
        if classes['train'] != classes['val']:
            raise ValueError(f'{root}: train/ and val/ hold different class folders')
