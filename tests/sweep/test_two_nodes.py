"""Multi-node cells on a real two-node Slurm cluster (slurm/two_nodes.sh: node1 and node2 in their own network, UTS
and mount namespaces; one task per node, gloo on the CPU): the same result and weights as two tasks on one node;
a requeued and a preempted cell resume exactly; a lost node fails or requeues the cell, which then resumes from its
last checkpoint; status and collect show where the cells ran."""
import json
import re
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pandas as pd
import pytest
import sweep_helpers as h
import torch
import yaml
from submitit.core.utils import JobPaths

from fat.cli import main as fat_main
from fat.sweep.cells import Cell
from fat.sweep.launch import Sweep, launch, prepare

pytestmark = [pytest.mark.slurm, pytest.mark.two_nodes]

# one FASA train cell, 2 ranks: the profile puts one task on each node
GRID = {'name': 'two', 'preset': 'smoke', 'base': h.TRAIN_BASE, 'axes': {'fasa': ['fasa']},
        'slurm': {'profile': h.TWO_NODES_PROFILE}}
ONE_NODE = ['slurm.nodes=1', 'slurm.tasks_per_node=2']  # the same cell as two tasks on one node
_STOP_RE = re.compile(r'(SIGTERM|SIGUSR2): checkpoint written at step (\d+); stopping')


def _weights(cell: Cell) -> Dict[str, torch.Tensor]:
    return torch.load(cell.dir / 'checkpoint-last.pt', map_location='cpu', weights_only=True)['model']


def _same_weights(a: Cell, b: Cell) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope='module')
def straight(slurm_two_nodes: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Sweep, Sweep]:
    """The grid file and the cell run uninterrupted, as 2 nodes x 1 task and as 1 node x 2 tasks (both at once)."""
    root = tmp_path_factory.mktemp('two_nodes')
    path = root / 'two.yaml'
    path.write_text(yaml.safe_dump(GRID, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('SLURM_CONF', str(slurm_two_nodes))
        sweeps = (prepare(path, [], root / 'two_nodes'), prepare(path, ONE_NODE, root / 'one_node'))
        try:
            for sweep in sweeps:
                launch(sweep, 'slurm')
            for sweep in sweeps:
                h.wait_states(sweep, ['DONE', 'FAILED', 'DIVERGED'], timeout=300)
        finally:
            h.cancel_unfinished(list(sweeps))
    return path, *sweeps


def test_two_node_cell_ends_as_two_tasks_on_one_node(straight, two_nodes):
    _, two, one = straight
    now = {name: h.states(sw)[sw.cells[0].id] for name, sw in (('two', two), ('one', one))}
    assert [st.state for st in now.values()] == ['DONE', 'DONE'], {k: (st.state, st.detail) for k, st in now.items()}
    a, b = two.cells[0], one.cells[0]
    assert h.metrics(a.dir) == h.metrics(b.dir)
    assert _same_weights(a, b)
    assert now['two'].hosts == ['node1', 'node2'] and now['two'].world_size == 2
    assert len(now['one'].hosts) == 1 and now['one'].world_size == 2
    # rank 0 ran on node1 and rank 1 on node2, each in its own namespace (the trainer records rank 0's host)
    env = json.loads((a.dir / 'environment.json').read_text())[-1]
    assert env['world_size'] == 2 and env['hardware']['hostname'] == 'node1'
    job = h.job_ids(two)[a.id]
    assert JobPaths(two.log_folder, job, 1).stderr.exists()


def _first_stop(sweep: Sweep, job_id: str) -> Tuple[str, int]:
    """(signal, step) of the first stop that rank 0 logged in job `job_id`."""
    log = JobPaths(sweep.log_folder, job_id, 0).stderr.read_text()
    found = _STOP_RE.search(log)
    assert found, f'rank 0 never logged a checkpoint at a stop signal:\n{log[-3000:]}'
    return found.group(1), int(found.group(2))


def test_requeued_and_preempted_two_node_cells_resume_exactly(straight, two_nodes, tmp_path):
    """`scontrol requeue` (SIGTERM to every task, no checkpoint() call) and a USR2 preemption notice to every task:
    each time rank 0 writes its checkpoint before any rank exits (Slurm kills the step when one task exits with
    an error, KillOnBadExit=1), the job restarts, resumes from that checkpoint and ends as the uninterrupted run."""
    path, reference, _ = straight
    requeued, preempted = (prepare(path, [], tmp_path / name) for name in ('requeued', 'preempted'))
    for sweep in (requeued, preempted):
        two_nodes(sweep)
        launch(sweep, 'slurm')
    cells = [requeued.cells[0], preempted.cells[0]]
    h.wait_until(lambda: all(h.epochs_logged(c.dir) >= 1 for c in cells), 180, 'the first epoch of both cells')
    assert all(h.epochs_logged(c.dir) < h.TRAIN_EPOCHS for c in cells), 'a cell finished before its interruption'
    running = h.states(requeued)[cells[0].id]
    assert running.state == 'RUNNING' and running.hosts == ['node1', 'node2'] and running.world_size == 2
    ids = [h.job_ids(sw)[c.id] for c, sw in zip(cells, (requeued, preempted), strict=True)]  # (one cell id, twice)
    subprocess.run(['scontrol', 'requeue', ids[0]], check=True)
    subprocess.run(['scancel', '--signal=USR2', ids[1]], check=True)  # what Slurm sends before preempting
    for sweep in (requeued, preempted):
        h.wait_states(sweep, ['DONE'], timeout=300)

    expected = h.metrics(reference.cells[0].dir)
    for cell, sweep, job, signame in zip(cells, (requeued, preempted), ids, ('SIGTERM', 'SIGUSR2'), strict=True):
        got_signal, step = _first_stop(sweep, job)
        assert got_signal == signame
        assert len(h.starts(cell.dir)) == 2 and all(s['job_id'] == job for s in h.starts(cell.dir))
        resumed = h.resumed_from(cell.dir)
        assert resumed[0] is None and resumed[1]['global_step'] == step, (signame, resumed, step)
        assert h.metrics(cell.dir) == expected, signame
        assert _same_weights(cell, reference.cells[0]), signame


def test_lost_node_fails_or_requeues_the_cell_and_relaunch_resumes_from_its_last_checkpoint(straight, two_nodes,
                                                                                            tmp_path):
    path, reference, _ = straight
    sweep = prepare(path, [], tmp_path / 'lost')
    two_nodes(sweep)
    launch(sweep, 'slurm')
    cell = sweep.cells[0]
    h.wait_until(lambda: h.epochs_logged(cell.dir) >= 1, 180, 'the first epoch')
    assert h.epochs_logged(cell.dir) < h.TRAIN_EPOCHS, 'the cell finished before the node was lost'
    try:
        subprocess.run(['bash', str(h.TWO_NODES_SCRIPT), 'kill-node', '2'], check=True, capture_output=True)
        # Slurm declares node2 DOWN within SlurmdTimeout (10 s): the job ends, or Slurm requeues it (--requeue),
        # to wait for two nodes
        lost = h.wait_until(lambda: (st := h.states(sweep)[cell.id]).state in ('FAILED', 'REQUEUED') and st, 90,
                            'the cell to fail or be requeued')
        step = h.checkpoint_step(cell.dir)  # nothing runs now: its last checkpoint
    finally:
        subprocess.run(['bash', str(h.TWO_NODES_SCRIPT), 'start-node', '2'], check=True, capture_output=True)
    again = launch(sweep, 'slurm')
    assert again.submitted == ([cell] if lost.state == 'FAILED' else []), lost
    h.wait_states(sweep, ['DONE'], timeout=300)
    assert h.resumed_from(cell.dir)[-1]['global_step'] == step
    assert h.metrics(cell.dir) == h.metrics(reference.cells[0].dir)
    assert _same_weights(cell, reference.cells[0])


def test_status_and_collect_show_hosts_and_world_size(straight, two_nodes, tmp_path, capsys):
    path, two, one = straight
    for sweep, hosts in ((two, ['node1', 'node2']), (one, None)):
        argv = [str(path), '--workdir', str(sweep.workdir)] + ([] if hosts else ONE_NODE)
        assert fat_main(['sweep', 'status', *argv, '--json']) == 0
        cell, = json.loads(capsys.readouterr().out)['cells']
        assert cell['state'] == 'DONE' and cell['world_size'] == 2
        assert cell['hosts'] == hosts if hosts else len(cell['hosts']) == 1
        assert fat_main(['sweep', 'status', *argv]) == 0
        assert f"on {','.join(cell['hosts'])} (2 ranks)" in capsys.readouterr().out
        out = tmp_path / f'{len(cell["hosts"])}.csv'
        assert fat_main(['sweep', 'collect', *argv, '--out', str(out)]) == 0
        capsys.readouterr()
        row = pd.read_csv(out).iloc[0]
        assert row['status'] == 'DONE' and row['world_size'] == 2 and row['hosts'] == ','.join(cell['hosts'])
