"""Shared fixtures. The official parity fixture (an official FAT-B0 state_dict and its outputs) is found through
FAT_REFERENCE_DIR (default: `shared/reference` beside the repository, where the project's CI keeps it); where it
is absent its tests skip, except under CI=true."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get('FAT_REFERENCE_DIR', REPO.parent / 'shared' / 'reference'))


def _require(path: Path) -> Path:
    if not path.exists():
        reason = f'official reference data not found at {path} (set FAT_REFERENCE_DIR)'
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope='session')
def official_fixture() -> dict:
    """The official FAT-B0 state_dict and its outputs (see the reference README)."""
    return torch.load(_require(REFERENCE_DIR / 'fat_b0_official.pt'), map_location='cpu')


@pytest.fixture(scope='session')
def official_manifest() -> dict:
    import json
    return json.loads(_require(REFERENCE_DIR / 'official_manifest.json').read_text())


@pytest.fixture(scope='session')
def benchmark_script():
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f'benchmark_{name}', REPO / 'benchmarks' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
