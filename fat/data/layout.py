"""What an ImageNet-style `data_dir` holds, torch-free: an image folder (train/ and val/ with class folders), the
output of `fat data pack` (tar shards in WebDataset layout with their index, or a Hugging Face dataset), or a
Hugging Face dataset saved by `save_to_disk`. `fat train` and `fat sweep plan` ask `data_format` before anything
runs; packed outputs are complete only once their manifest is written, last, so a partial one is refused here.

A packed output `DEST`:
  fat-pack.json             the manifest (format, classes, sample counts); written last, it marks DEST complete
  pack-plan.json            what is being packed (source, format, classes, shard size); written first
  index/<split>-NNNNNN.json per shard (wds) or chunk (hf): each sample's key, label, source file and sha256, and for
                            a tar shard the offset and size of its image in the tar; written after the shard, so
                            its presence marks the shard complete
  wds: <split>/<split>-NNNNNN.tar (WebDataset: <key>.<ext> image, <key>.cls label), index/<split>.npy (shard,
       offset, size, label of every sample: what fat's reader loads) and <split>.json (a wids shard list, for
       readers other than fat's)
  hf:  dataset_dict.json, <split>/ (`datasets.load_from_disk(DEST)`: columns image, label)
"""
import json
from pathlib import Path
from typing import Any, Dict

__all__ = ['FORMATS', 'MANIFEST', 'PLAN', 'INDEX_DIR', 'SPLITS', 'data_format', 'read_manifest', 'hf_split_name']

FORMATS = ('folder', 'wds', 'hf')
MANIFEST = 'fat-pack.json'
PLAN = 'pack-plan.json'
INDEX_DIR = 'index'
SPLITS = ('train', 'val')
VERSION = 1
_HF_VAL_NAMES = ('val', 'validation')  # the hub's ImageNet-1k calls its val split 'validation'


def read_manifest(root: Path) -> Dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}: unreadable ({e}); pack the image folder again with `fat data pack`') from None
    if manifest.get('version') != VERSION or manifest.get('format') not in FORMATS[1:]:
        raise ValueError(f'{path}: not a fat data pack manifest of version {VERSION}; pack the image folder again '
                         f'with `fat data pack`')
    return manifest


def hf_split_name(splits: Any, split: str, root: Path) -> str:
    """The name under which the Hugging Face dataset dict at `root` holds `split` ('val' may be 'validation')."""
    for name in (_HF_VAL_NAMES if split == 'val' else (split,)):
        if name in splits:
            return name
    raise ValueError(f'{root}: the Hugging Face dataset has no {split!r} split (it has {", ".join(splits)})')


def data_format(root: Path) -> str:
    """'folder', 'wds' or 'hf': what `root` holds. ValueError in one line for a partial pack output, and for tar
    shards without fat's index (streaming them cannot resume a run exactly)."""
    if (root / MANIFEST).is_file():
        return read_manifest(root)['format']
    if (root / PLAN).is_file():
        raise ValueError(f'{root} is an unfinished `fat data pack` output (no {MANIFEST}): run the same '
                         f'`fat data pack` again to finish it')
    if (root / 'dataset_dict.json').is_file():
        return 'hf'
    if any(next(d.glob('*.tar'), None) for d in (root, root / 'train') if d.is_dir()):
        raise ValueError(f'{root} holds tar shards without an index: streamed, they cannot resume a run exactly; '
                         f'pack the image folder with `fat data pack SRC DEST --format wds` and set data_dir to DEST')
    return 'folder'
