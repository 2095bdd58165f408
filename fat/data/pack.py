"""`fat data pack SRC DEST --format wds|hf`: an image folder (train/ and val/ with class folders) packed into tar
shards with fat's index, or into a Hugging Face dataset on disk (`fat.data.layout` describes DEST), in the image
folder's sample order, so that `fat train` reads the same batches from either.

Verified and resumable: samples go in fixed-size shards (chunks for hf), each written under a temporary name and
renamed, then read back and checked against its sources (count, labels, a sha256 per image) before its index record
is written; a rerun skips the shards whose record is there and whose data still matches it. The manifest is written
last, after the whole output is checked, and readers refuse DEST without it. Bad input (an unreadable image, an empty
class folder, a file of unknown extension, class folders that differ between train/ and val/ or from DEST's plan) is
one line naming the file.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from fat.data.decode import pil_loader
from fat.data.layout import INDEX_DIR, MANIFEST, PLAN, SPLITS, VERSION, read_manifest
from fat.io import atomic_path, write_json_atomic

__all__ = ['register', 'pack', 'plan_folder']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')  # ImageFolder's
DEFAULT_SHARD_SIZE = 1000  # samples: ~110 MB tars for ImageNet


class Sample(NamedTuple):
    key: str  # unique in DEST, no dot (WebDataset splits member names at the first dot)
    source: str  # relative to SRC
    label: int


def plan_folder(src: Path) -> Tuple[List[str], Dict[str, List[Sample]]]:
    """(classes, samples per split) of the image folder, in torchvision ImageFolder's order (sorted class folders,
    sorted files in each); ValueError naming the folder or file that ImageFolder would skip or refuse."""
    classes: Dict[str, List[str]] = {}
    for split in SPLITS:
        folder = src / split
        if not folder.is_dir():
            raise FileNotFoundError(f'{folder} is not a folder: SRC must hold train/<class>/* and val/<class>/*')
        classes[split] = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        if not classes[split]:
            raise ValueError(f'{folder}: no class folders (expected {folder}/<class>/<image>)')
    if classes['train'] != classes['val']:
        extra = sorted(set(classes['val']) ^ set(classes['train']))
        raise ValueError(f'{src / "val"}: its class folders differ from {src / "train"}\'s ({", ".join(extra[:5])})')
    samples: Dict[str, List[Sample]] = {}
    for split in SPLITS:
        samples[split] = []
        for label, name in enumerate(classes['train']):
            files = []
            for dirpath, dirnames, filenames in os.walk(src / split / name, followlinks=True):
                dirnames.sort()  # ImageFolder's order: sorted walk, sorted files
                for fname in sorted(filenames):
                    path = Path(dirpath) / fname
                    if not fname.lower().endswith(IMAGE_EXTENSIONS):
                        raise ValueError(f'{path}: unknown extension (images: {", ".join(IMAGE_EXTENSIONS)})')
                    files.append(path.relative_to(src).as_posix())
            if not files:
                raise ValueError(f'{src / split / name}: empty class folder')
            samples[split].extend(Sample('', f, label) for f in files)
        samples[split] = [s._replace(key=f'{split}_{i:08d}') for i, s in enumerate(samples[split])]
    return classes['train'], samples


def _read_source(src: Path, sample: Sample) -> bytes:
    path = src / sample.source
    try:
        data = path.read_bytes()
        pil_loader(io.BytesIO(data))  # decoded as training will: a corrupt file fails here, not mid-run
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f'{path}: unreadable image ({e})') from None
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the two output formats: write one shard, and read one back as [(key, label, sha256, extra)] ------------------

def _write_tar(path: Path, samples: List[Sample], images: List[bytes]) -> None:
    import webdataset

    with atomic_path(path, durable=True) as tmp, webdataset.TarWriter(str(tmp), encoder=False, mtime=0) as writer:
        for s, data in zip(samples, images, strict=True):
            ext = Path(s.source).suffix.lower().lstrip('.')
            writer.write({'__key__': s.key, ext: data, 'cls': str(s.label).encode()})


def _read_tar(path: Path) -> List[Dict[str, Any]]:
    """Each sample of a shard with the offset and size of its image in the file (fat's index)."""
    rows: Dict[str, Dict[str, Any]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split('.', 1)
            row = rows.setdefault(key, dict(key=key))
            data = tar.extractfile(member).read()
            if ext == 'cls':
                row['label'] = int(data)
            else:
                row.update(sha256=_sha256(data), offset=member.offset_data, size=member.size)
    return list(rows.values())


def _datasets() -> Any:
    """The `datasets` module, quiet: pack shows its own progress bar, not one per chunk saved."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


def _write_hf_chunk(path: Path, samples: List[Sample], images: List[bytes], classes: List[str]) -> None:
    datasets = _datasets()
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=classes))
    ds = datasets.Dataset.from_dict(
        dict(image=[dict(bytes=b, path=s.source) for s, b in zip(samples, images, strict=True)],
             label=[s.label for s in samples]), features=features)
    tmp = path.with_name(f'.{path.name}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _read_hf(path: Path) -> List[Dict[str, Any]]:
    datasets = _datasets()
    ds = datasets.load_from_disk(str(path)).cast_column('image', datasets.Image(decode=False))
    return [dict(label=row['label'], sha256=_sha256(row['image']['bytes'])) for row in ds]


def _mismatch(samples: List[Sample], rows: List[Dict[str, Any]], expected: List[str]) -> Optional[str]:
    """What is wrong with data read back (`_read_tar`, `_read_hf`), against its samples and their expected sha256;
    None: nothing."""
    if len(rows) != len(samples):
        return f'{len(rows)} samples, {len(samples)} expected'
    for s, row, sha in zip(samples, rows, expected, strict=True):
        if row.get('key', s.key) != s.key or row.get('label') != s.label or row.get('sha256') != sha:
            return f'sample {s.key} ({s.source}) differs from its source'
    return None


# --- packing ---------------------------------------------------------------------------------------------------

class _Packer:
    def __init__(self, src: Path, dest: Path, fmt: str, shard_size: int):
        self.src, self.dest, self.fmt, self.shard_size = src, dest, fmt, shard_size
        self.classes, self.samples = plan_folder(src)

    def shards(self, split: str) -> Iterator[Tuple[str, List[Sample]]]:
        samples = self.samples[split]
        for i, start in enumerate(range(0, len(samples), self.shard_size)):
            yield f'{split}-{i:06d}', samples[start:start + self.shard_size]

    def data_path(self, split: str, name: str) -> Path:
        return self.dest / split / f'{name}.tar' if self.fmt == 'wds' else self.dest / 'chunks' / name

    def read_back(self, path: Path) -> List[Dict[str, Any]]:
        return _read_tar(path) if self.fmt == 'wds' else _read_hf(path)

    def check_plan(self) -> bool:
        """Writes DEST's plan, or checks the one there; whether DEST is already complete."""
        plan = dict(version=VERSION, format=self.fmt, shard_size=self.shard_size, classes=self.classes,
                    source=str(self.src.resolve()))
        plan_path = self.dest / PLAN
        if plan_path.is_file():
            try:
                old = json.loads(plan_path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f'{plan_path}: unreadable ({e}); remove {self.dest} and pack again') from None
            if old.get('classes') != plan['classes']:
                raise ValueError(f'{plan_path}: DEST was packed with another label map (class folders) than '
                                 f'{self.src} has now; pack into a new DEST, or remove {self.dest}')
            for key, option in (('format', '--format'), ('shard_size', '--shard-size')):
                if old.get(key) != plan[key]:
                    raise ValueError(f'{plan_path}: DEST is packed with {option} {old.get(key)}, not {plan[key]}; '
                                     f'rerun with {option} {old.get(key)}, or pack into a new DEST')
            return (self.dest / MANIFEST).is_file()
        if self.dest.exists() and any(self.dest.iterdir()):
            raise ValueError(f'{self.dest}: exists and is not a fat data pack output; choose a new or empty DEST')
        write_json_atomic(plan_path, plan, durable=True)
        return False

    def record(self, name: str) -> Optional[Dict[str, Any]]:
        path = self.dest / INDEX_DIR / f'{name}.json'
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def recorded(self, name: str, samples: List[Sample]) -> Optional[List[str]]:
        """The sha256 of each image that shard `name`'s record holds, if it records these samples (keys, files,
        labels) and the files still have these bytes (hashed again); None otherwise."""
        record = self.record(name)
        if record is None:
            return None
        planned = [dict(key=s.key, source=s.source, label=s.label) for s in samples]
        if [{k: r[k] for k in ('key', 'source', 'label')} for r in record['samples']] != planned:
            return None
        hashes = [r['sha256'] for r in record['samples']]
        for s, sha in zip(samples, hashes, strict=True):
            try:
                if _sha256((self.src / s.source).read_bytes()) != sha:
                    return None
            except OSError as e:
                raise ValueError(f'{self.src / s.source}: unreadable ({e})') from None
        return hashes

    def complete_shard(self, split: str, name: str, samples: List[Sample]) -> bool:
        """Whether shard `name` was packed by an earlier run and still matches its record and the folder."""
        path = self.data_path(split, name)
        hashes = self.recorded(name, samples) if path.exists() else None
        return hashes is not None and _mismatch(samples, self.read_back(path), hashes) is None

    def write_shard(self, split: str, name: str, samples: List[Sample]) -> None:
        images = [_read_source(self.src, s) for s in samples]
        path = self.data_path(split, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == 'wds':
            _write_tar(path, samples, images)
        else:
            _write_hf_chunk(path, samples, images, self.classes)
        rows = self.read_back(path)
        problem = _mismatch(samples, rows, [_sha256(b) for b in images])
        if problem:
            raise ValueError(f'{path}: read back wrong ({problem}); check the disk, then rerun')
        entries = [dict(key=s.key, source=s.source, label=s.label, sha256=row['sha256'],
                        **{k: row[k] for k in ('offset', 'size') if k in row})
                   for s, row in zip(samples, rows, strict=True)]
        record = dict(path=path.relative_to(self.dest).as_posix(), samples=entries)
        write_json_atomic(self.dest / INDEX_DIR / f'{name}.json', record, durable=True, indent=None)

    def finish_hf(self, names: Dict[str, List[str]]) -> None:
        """The chunks of each split as one dataset, `load_from_disk(DEST)`-able, checked against the records."""
        datasets = _datasets()

        for split in SPLITS:
            chunks = [datasets.load_from_disk(str(self.dest / 'chunks' / n)) for n in names[split]]
            final, tmp = self.dest / split, self.dest / f'.{split}.tmp'
            shutil.rmtree(tmp, ignore_errors=True)
            datasets.concatenate_datasets(chunks).save_to_disk(str(tmp))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            rows = _read_hf(final)
            expected = [r for n in names[split] for r in self.record(n)['samples']]
            samples = self.samples[split]
            problem = _mismatch(samples, rows, [r['sha256'] for r in expected])
            if problem:
                raise ValueError(f'{final}: read back wrong ({problem}); check the disk, then rerun')
        write_json_atomic(self.dest / 'dataset_dict.json', dict(splits=list(SPLITS)))

    def finish_wds(self, names: Dict[str, List[str]]) -> None:
        for split in SPLITS:
            # fat's reader loads this table (32 bytes a sample), not the records (~200 bytes of JSON a sample)
            table = np.array([(i, r['offset'], r['size'], r['label']) for i, n in enumerate(names[split])
                              for r in self.record(n)['samples']], dtype=np.int64)
            with atomic_path(self.dest / INDEX_DIR / f'{split}.npy', durable=True) as tmp, open(tmp, 'wb') as f:
                np.save(f, table)
            # a wids shard list, for readers other than fat's
            shardlist = [dict(url=f'{split}/{n}.tar', nsamples=len(self.record(n)['samples']),
                              filesize=(self.dest / split / f'{n}.tar').stat().st_size) for n in names[split]]
            write_json_atomic(self.dest / f'{split}.json', dict(
                __kind__='wids-shard-index-v1', wids_version=1, name=f'{self.dest.name}-{split}', shardlist=shardlist))

    def remove_stale(self) -> None:
        """What a killed run left under temporary names (`fat.io.atomic_path`'s, and hf's chunk directories)."""
        for tmp in (*self.dest.glob('.*.tmp'), *self.dest.glob('*/.*.tmp')):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def run(self) -> str:
        if self.check_plan():
            self.check_complete()
            return f'{self.dest}: already complete, {self.counts()} verified'
        self.remove_stale()
        names = {split: [n for n, _ in self.shards(split)] for split in SPLITS}
        total = sum(len(v) for v in self.samples.values())
        skipped = 0
        with tqdm(total=total, unit='img', desc=f'packing {self.fmt}', disable=None) as bar:
            for split in SPLITS:
                for name, samples in self.shards(split):
                    if self.complete_shard(split, name, samples):
                        skipped += 1
                    else:
                        self.write_shard(split, name, samples)
                    bar.update(len(samples))
        (self.finish_wds if self.fmt == 'wds' else self.finish_hf)(names)
        manifest = dict(version=VERSION, format=self.fmt, classes=self.classes, source=str(self.src.resolve()),
                        splits={split: dict(samples=len(self.samples[split]),
                                            index=[f'{n}.json' for n in names[split]]) for split in SPLITS})
        write_json_atomic(self.dest / MANIFEST, manifest, durable=True)  # last: DEST is complete
        shutil.rmtree(self.dest / 'chunks', ignore_errors=True)
        shards = sum(len(v) for v in names.values())
        resumed = f' ({skipped} of {shards} shards were complete already, verified and kept)' if skipped else ''
        return f'{self.dest}: {self.counts()} packed as {self.fmt}, verified{resumed}'

    def counts(self) -> str:
        return ', '.join(f'{len(self.samples[s])} {s}' for s in SPLITS) + f' images of {len(self.classes)} classes'

    def check_complete(self) -> None:
        """A complete DEST, read back whole against its records and the source folder."""
        manifest = read_manifest(self.dest)
        for split in SPLITS:
            names = [n for n, _ in self.shards(split)]
            if manifest['splits'][split]['index'] != [f'{n}.json' for n in names]:
                raise ValueError(f'{self.dest / MANIFEST}: its {split} shards differ from the source folder\'s now')
            if self.fmt == 'wds':
                for name, samples in self.shards(split):
                    if not self.complete_shard(split, name, samples):
                        raise ValueError(f'{self.data_path(split, name)}: differs from its index record or the '
                                         f'source folder')
                continue
            hashes = []
            for name, samples in self.shards(split):
                recorded = self.recorded(name, samples)
                if recorded is None:
                    raise ValueError(f'{self.dest / INDEX_DIR / name}.json: differs from the source folder')
                hashes += recorded
            problem = _mismatch(self.samples[split], _read_hf(self.dest / split), hashes)
            if problem:
                raise ValueError(f'{self.dest / split}: {problem}')


def pack(src: Path, dest: Path, fmt: str, shard_size: int = DEFAULT_SHARD_SIZE) -> str:
    """Pack (or finish packing, or verify) `src` into `dest`; the one-line summary."""
    if shard_size < 1:
        raise ValueError(f'--shard-size must be >= 1, got {shard_size}')
    if (dest / MANIFEST).is_file() and not (dest / PLAN).is_file():
        raise ValueError(f'{dest}: has a manifest but no {PLAN}; not a fat data pack output')
    return _Packer(src, dest, fmt, shard_size).run()


def _main(args: argparse.Namespace) -> int:
    print(pack(Path(args.src), Path(args.dest), args.format, args.shard_size))
    return 0


def register(subparsers: Any) -> None:
    """Add `pack` to `fat data`."""
    parser = subparsers.add_parser('pack', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='SRC', help='image folder holding train/<class>/* and val/<class>/*')
    parser.add_argument('dest', metavar='DEST', help='output folder (new, or an unfinished pack to finish)')
    parser.add_argument('--format', choices=('wds', 'hf'), required=True,
                        help='wds: tar shards (WebDataset layout) with an index; hf: a Hugging Face dataset')
    parser.add_argument('--shard-size', type=int, default=DEFAULT_SHARD_SIZE,
                        help=f'samples per shard (default {DEFAULT_SHARD_SIZE})')
    parser.set_defaults(func=_main)
