"""Fixtures of the sweep tests: grid files written on the fly, and the real single-node Slurm cluster.

`slurm_cluster` starts `slurm/cluster.sh up` once per session where it can (root, apt: Debian/Ubuntu); elsewhere
the Slurm tests skip with the reason, except under CI=true, where they fail.
"""
import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import pytest
import torch
import yaml
from sweep_helpers import (
    CLUSTER_SCRIPT,
    LOCAL_PROFILE,
    OUR_CONFIG_MARKS,
    TWO_NODES_CONF,
    TWO_NODES_SCRIPT,
    cancel_unfinished,
    metrics,
    train_reference,
)

from fat.sweep.cells import Cell


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slurm: needs a real Slurm cluster (slurm/cluster.sh, slurm/two_nodes.sh)')
    config.addinivalue_line('markers', 'two_nodes: needs the two-node Slurm cluster (slurm/two_nodes.sh)')


def _skip_or_fail(problem: str) -> None:
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(f'Slurm tests must run under CI=true: {problem}')
    pytest.skip(problem)


def _cluster_problem() -> Optional[str]:
    """Bring the local cluster up; the reason it cannot be, or None."""
    conf = Path('/etc/slurm/slurm.conf')
    if conf.exists() and not conf.read_text().startswith(OUR_CONFIG_MARKS):
        return f'{conf} was not written by slurm/cluster.sh: not touching this machine\'s Slurm'
    if os.geteuid() != 0:
        return 'starting the local Slurm cluster needs root'
    if shutil.which('apt-get') is None or shutil.which('dpkg-query') is None:
        return 'starting the local Slurm cluster needs apt (Debian/Ubuntu)'
    env = dict(os.environ, SLURM_SMOKE='0')
    try:
        out = subprocess.run(['bash', str(CLUSTER_SCRIPT), 'up'], capture_output=True, text=True, timeout=900,
                             env=env)
    except subprocess.TimeoutExpired:
        return 'slurm/cluster.sh up took over 15 minutes'
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
        return f"slurm/cluster.sh up failed: {' | '.join(tail)}"
    return None


@pytest.fixture(scope='session')
def slurm_cluster() -> None:
    """The single-node Slurm cluster of slurm/cluster.sh, up (idempotent: ~1 s when it already is)."""
    problem = _cluster_problem()
    if problem:
        _skip_or_fail(problem)


def _two_nodes_problem() -> Optional[str]:
    """Bring the two-node cluster up; the reason it cannot be, or None."""
    if os.geteuid() != 0:
        return 'the two-node Slurm cluster needs root (network namespaces, a bridge, bind mounts)'
    if shutil.which('unshare') is None or shutil.which('nsenter') is None or shutil.which('ip') is None:
        return 'the two-node Slurm cluster needs unshare, nsenter (util-linux) and ip (iproute2)'
    probe = subprocess.run(['unshare', '--net', '--uts', '--mount', 'true'], capture_output=True, text=True)
    if probe.returncode != 0:
        return f'network/UTS/mount namespaces cannot be made here: {probe.stderr.strip()}'
    if shutil.which('apt-get') is None and shutil.which('slurmctld') is None:
        return 'the two-node Slurm cluster needs Slurm, or apt (Debian/Ubuntu) to install it'
    try:
        out = subprocess.run(['bash', str(TWO_NODES_SCRIPT), 'up'], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return 'slurm/two_nodes.sh up took over 15 minutes'
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
        return f"slurm/two_nodes.sh up failed: {' | '.join(tail)}"
    return None


@pytest.fixture(scope='session')
def slurm_two_nodes() -> Path:
    """The two-node cluster of slurm/two_nodes.sh, up (its config: the path returned). Left up, like the single-node
    one (`bash slurm/two_nodes.sh down` removes it)."""
    problem = _two_nodes_problem()
    if problem:
        _skip_or_fail(problem)
    return TWO_NODES_CONF


@pytest.fixture
def two_nodes(slurm_two_nodes: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], None]]:
    """Slurm's commands (ours and submitit's) talk to the two-node cluster for this test; sweeps registered through
    the returned function have the jobs of their unfinished cells cancelled when the test ends."""
    monkeypatch.setenv('SLURM_CONF', str(slurm_two_nodes))
    sweeps: list = []
    yield sweeps.append
    cancel_unfinished(sweeps)


@pytest.fixture(autouse=True)
def _torch_state() -> Iterator[None]:
    """Runs in this process (the debug executor) set process-wide torch state (threads, deterministic algorithms):
    leave it as it was for the tests that follow."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def write_grid(tmp_path: Path) -> Callable[..., Path]:
    """write_grid(stem, **grid keys) -> tmp_path/<stem>.yaml (its name: the stem; profile: slurm/local.yaml)."""
    def write(stem: str = 'g', **doc: Any) -> Path:
        doc.setdefault('slurm', {'profile': LOCAL_PROFILE})
        path = tmp_path / f'{stem}.yaml'
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
    return write


class _References:
    """reference(cells) -> {cell id: result metrics of an uninterrupted run}. Each cell runs once, in a pool of two
    fresh processes (the trainer sets process-wide torch state, and its signal handlers need a main thread);
    `start(cells)` begins them early, so that they use the cores while a test waits on its scheduler."""

    def __init__(self, pool: ProcessPoolExecutor, root: Path):
        self.pool, self.root, self.runs = pool, root, {}

    def start(self, cells: Sequence[Cell]) -> None:
        for cell in cells:
            if cell.id not in self.runs:  # not the cell's tensorboard_dir: the cell's own run writes there
                config = dict(cell.config, output_dir=str(self.root / cell.id), tensorboard_dir=None)
                self.runs[cell.id] = self.pool.submit(train_reference, config)

    def __call__(self, cells: Sequence[Cell]) -> Dict[str, Dict[str, Any]]:
        self.start(cells)
        for cell in cells:
            self.runs[cell.id].result()  # a run that raised raises here
        return {cell.id: metrics(self.root / cell.id) for cell in cells}


@pytest.fixture(scope='module')
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_References]:
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'))
    yield _References(pool, tmp_path_factory.mktemp('reference'))
    pool.shutdown(wait=False, cancel_futures=True)  # its processes exit (~2 s of torch's teardown) while tests go on
