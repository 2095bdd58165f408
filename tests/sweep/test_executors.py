"""Grids on a real single-node Slurm cluster (sbatch job arrays) and on submitit's `local` executor:
completion, relaunch (submits nothing), preemption and requeue mid-training (the same result.json metrics as an
uninterrupted run), and a cancelled / killed cell (FAILED, then resubmitted alone)."""
import os
import re
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import pandas as pd
import pytest
import sweep_helpers as h

from fat.rundir import read_result
from fat.sweep.cells import Cell, read_records
from fat.sweep.cluster import render_sbatch
from fat.sweep.collect import collect
from fat.sweep.launch import Sweep, launch, prepare


def _cancel_at_exit(sweep: Sweep) -> None:
    ids = sorted({r['job_id'] for c in sweep.cells for r in read_records(c.dir)
                  if r.get('event') == 'submitted' and r['cluster'] == 'slurm'})
    if ids:
        subprocess.run(['scancel', *ids], capture_output=True)


@pytest.fixture
def slurm_sweeps(slurm_cluster):
    """Sweeps registered here have their Slurm jobs cancelled when the test ends, passed or not."""
    sweeps = []
    yield sweeps.append
    for sweep in sweeps:
        _cancel_at_exit(sweep)


def _interrupt_mid_training(cells: List[Cell], epochs: int = h.TRAIN_EPOCHS) -> None:
    """Wait until every cell has finished its first epoch and none has finished."""
    h.wait_until(lambda: all(h.epochs_logged(c.dir) >= 1 for c in cells), 180, 'the first epoch of every cell')
    assert all(h.epochs_logged(c.dir) < epochs for c in cells), 'a cell finished before its interruption'


def _assert_resumed_identically(cells: List[Cell], reference) -> None:
    """Each cell restarted, resumed from its checkpoint, and ended with the metrics and weights of an uninterrupted
    run (the metrics alone, top-1 of a few images, can agree after a resume that lost the random state)."""
    expected = reference(cells)
    for cell in cells:
        assert len(h.starts(cell.dir)) >= 2, f'{cell.id} was not restarted: {read_records(cell.dir)}'
        assert any(h.resumed_from(cell.dir)), f'{cell.id} restarted from scratch, not from its checkpoint'
        assert h.metrics(cell.dir) == expected[cell.id], cell.id
        assert h.same_weights(cell.dir, reference.root / cell.id), cell.id


# ---------------------------------------------------------------------------------------------------------- Slurm

@pytest.mark.slurm
def test_slurm_grid_completes_through_arrays_and_relaunch_submits_nothing(write_grid, tmp_path, slurm_sweeps):
    path = write_grid('complete', preset='smoke', axes={'fasa': ['fasa', 'global_only', 'local_only']},
                      slurm={'profile': h.LOCAL_PROFILE, 'timeout_min': 10})
    sweep = prepare(path, [], tmp_path / 'runs')
    slurm_sweeps(sweep)
    report = launch(sweep, 'slurm', array_size_limit=2)  # 3 cells, arrays of at most 2: two sbatch arrays
    assert [a['size'] for a in report.arrays] == [2, 1] and len(report.submitted) == 3
    assert 'submitted 3 cells as 2 arrays to slurm' in report.text()
    ids = h.job_ids(sweep)
    first = report.arrays[0]['job_id']
    assert sorted(ids.values()) == sorted([f'{first}_0', f'{first}_1', report.arrays[1]['job_id']])  # 1: no array
    # the script sbatch received is the one render_sbatch (and the golden file) describes
    submitted = (sweep.root / '.submitit' / first / f'{first}_submission.sh').read_text()
    assert submitted == render_sbatch(sweep.resources, sweep.job_name, sweep.log_folder, 2,
                                      python=shlex.quote(sys.executable))

    h.wait_states(sweep, ['DONE'], timeout=240)
    again = launch(sweep, 'slurm')
    assert again.submitted == [] and again.arrays == [] and again.skipped == {'DONE': 3}
    assert h.job_ids(sweep) == ids and all(len(h.submissions(c.dir)) == 1 for c in sweep.cells)
    frame, incomplete, *_ = collect(sweep, list(h.states(sweep).values()), tmp_path / 'complete.csv')
    table = pd.read_csv(tmp_path / 'complete.csv')
    assert list(table['status']) == ['DONE'] * 3 and not incomplete and table['top1'].notna().all()
    assert table['environment'].str.contains('torch').all()


@pytest.mark.slurm
def test_slurm_preempted_and_requeued_cells_resume_identically_cancelled_cell_resubmitted_alone(
        write_grid, tmp_path, slurm_sweeps, reference):
    # twice the epochs: on a quiet machine a 5-epoch cell could end before Slurm preempts it (~4 s after the
    # preempting job is submitted, seen here), and the test would see no preemption at all. The cancelled cell is
    # never interrupted mid-training: one epoch (it trains only after its resubmission)
    epochs = 2 * h.TRAIN_EPOCHS
    sweep = prepare(write_grid('interrupt', preset='smoke', base=h.TRAIN_BASE,
                               zip=[{'fasa': ['fasa', 'global_only', 'local_only'], 'epochs': [epochs, epochs, 1]}],
                               slurm={'profile': h.LOCAL_PROFILE, 'timeout_min': 10}), [], tmp_path / 'runs')
    slurm_sweeps(sweep)
    launch(sweep, 'slurm')
    requeued, preempted, cancelled = sweep.cells  # array_parallelism 2: the third waits
    reference.start([requeued, preempted])  # on the cores Slurm leaves idle (a requeued job waits ~10 s to start)
    ids = h.job_ids(sweep)
    subprocess.run(['scancel', ids[cancelled.id]], check=True)
    _interrupt_mid_training([requeued, preempted], epochs=epochs)
    # a plain requeue: no checkpoint() call; the job starts again from scratch and resumes from the cell directory
    subprocess.run(['scontrol', 'requeue', ids[requeued.id]], check=True)
    # a job in `high` that needs both cores: Slurm preempts (REQUEUE) the running cell, which gets USR2 at once,
    # checkpoints and requeues itself through submitit
    subprocess.run(['sbatch', '--parsable', '--partition=high', '--cpus-per-task=2', '--mem=500M',
                    '--output=/dev/null', '--wrap', 'sleep 1'], check=True, capture_output=True)
    h.wait_until(lambda: h.states(sweep)[preempted.id].state == 'REQUEUED' or len(h.starts(preempted.dir)) > 1,
                 60, 'the preempted cell to be requeued')
    now = h.wait_states(sweep, ['DONE', 'FAILED'], timeout=300)
    assert [now[c.id].state for c in sweep.cells] == ['DONE', 'DONE', 'FAILED']
    assert now[cancelled.id].job_id == ids[cancelled.id] and now[cancelled.id].log.endswith('_0_log.err')
    _assert_resumed_identically([requeued, preempted], reference)

    again = launch(sweep, 'slurm')
    assert [c.id for c in again.submitted] == [cancelled.id] and again.skipped == {'DONE': 2}
    h.wait_states(sweep, ['DONE'], timeout=240)
    assert [len(h.submissions(c.dir)) for c in sweep.cells] == [1, 1, 2]


@pytest.mark.slurm
def test_slurm_cancelled_running_cell_stops_at_its_checkpoint_and_is_resubmitted(write_grid, tmp_path, slurm_sweeps):
    """scancel of a running cell: SIGTERM makes the trainer checkpoint and exit by itself (143) at once, not
    train on until Slurm's SIGKILL (submitit's own SIGTERM handler only logs it); FAILED; relaunched alone."""
    sweep = prepare(h.train_grid(write_grid, 'cancel', cells=1), [], tmp_path / 'runs')
    slurm_sweeps(sweep)
    launch(sweep, 'slurm')
    cell = sweep.cells[0]
    h.wait_until(lambda: h.epochs_logged(cell.dir) >= 1, 180, 'the first epoch')
    pid = h.starts(cell.dir)[-1]['pid']
    subprocess.run(['scancel', h.job_ids(sweep)[cell.id]], check=True)
    h.wait_until(lambda: not h.alive(pid), 10, f'the training process {pid} to exit')
    now = h.wait_states(sweep, ['FAILED'], timeout=30)[cell.id]
    log = Path(now.log).read_text()
    stops = re.findall(r'SIGTERM: checkpoint written at step (\d+); stopping', log)
    # one checkpoint at the signal and not a step after it; the process exited by itself (not Slurm's SIGKILL,
    # KillWait=5 s here, which would also end it within the 10 s above)
    assert len(stops) == 1 and h.checkpoint_step(cell.dir) == int(stops[0]), log
    assert 'Exited with exit code 143' in log and 'CANCELLED' in now.detail, (log, now.detail)
    assert h.epochs_logged(cell.dir) < h.TRAIN_EPOCHS

    again = launch(sweep, 'slurm')
    assert again.submitted == [cell] and len(h.submissions(cell.dir)) == 2


# ---------------------------------------------------------------------------------------------------------- local

# slow: by default the same flow (USR2: checkpoint, submitit requeues through checkpoint(), the cell resumes to the
# uninterrupted run's metrics; a failed cell resubmitted alone) runs on real Slurm in
# test_slurm_preempted_and_requeued_cells_resume_identically_cancelled_cell_resubmitted_alone, and a dead local job
# reads FAILED in test_state_collect.py::test_running_local_job_and_pending
@pytest.mark.slow
def test_local_preempted_cell_resumes_identically_killed_cell_resubmitted_alone(write_grid, tmp_path, reference):
    sweep = prepare(h.train_grid(write_grid, 'local'), [], tmp_path / 'runs')
    report = launch(sweep, 'local')  # array_parallelism 2: one job per cell
    assert [a['size'] for a in report.arrays] == [1, 1]
    preempted, killed = sweep.cells
    _interrupt_mid_training(sweep.cells)
    # what Slurm sends before preemption or the time limit: the job checkpoints and submitit requeues it
    os.kill(h.starts(preempted.dir)[-1]['pid'], signal.SIGUSR2)
    os.kill(int(h.job_ids(sweep)[killed.id]), signal.SIGKILL)  # the job (submitit's controller), then its task
    os.kill(h.starts(killed.dir)[-1]['pid'], signal.SIGKILL)
    now = h.wait_states(sweep, ['DONE', 'FAILED'], timeout=240)
    assert now[preempted.id].state == 'DONE' and now[killed.id].state == 'FAILED', now
    assert Path(now[killed.id].log).name.endswith('_0_log.err')

    again = launch(sweep, 'local')
    assert [c.id for c in again.submitted] == [killed.id] and again.skipped == {'DONE': 1}
    h.wait_states(sweep, ['DONE'], timeout=240)
    _assert_resumed_identically(sweep.cells, reference)
    assert launch(sweep, 'local').submitted == []


# slow: by default a Slurm cell of two tasks on one node trains with DDP (one start, world size 2) in
# test_two_nodes.py::test_two_node_cell_ends_as_two_tasks_on_one_node
@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_multi_task_cell_trains_with_ddp(write_grid, tmp_path, slurm_sweeps):
    """Two tasks (as two GPUs would get): srun starts both, the trainer joins them from TorchDistributedEnvironment
    (gloo on CPU) and rank 0 writes the result."""
    path = write_grid('ddp', preset='smoke', axes={'fasa': ['fasa']},
                      slurm={'profile': h.LOCAL_PROFILE, 'timeout_min': 10, 'tasks_per_node': 2})
    sweep = prepare(path, [], tmp_path / 'runs')
    slurm_sweeps(sweep)
    launch(sweep, 'slurm')
    h.wait_states(sweep, ['DONE'], timeout=240)
    result, _ = read_result(sweep.cells[0].dir)
    assert result['world_size'] == 2 and len(h.starts(sweep.cells[0].dir)) == 1


# ---------------------------------------------------------------------------------------------------------- debug

def test_concurrent_launches_submit_each_cell_once(write_grid, tmp_path):
    """Two launches of one grid at once: the second waits for the first's lock, then finds its cells finished
    (the debug executor runs them in-process, inside the lock) and submits nothing."""
    path = write_grid('lock', preset='smoke', axes={'fasa': ['fasa', 'global_only']})
    sweeps = [prepare(path, [], tmp_path / 'runs') for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda sw: launch(sw, 'debug'), sweeps))
    assert sorted(len(r.submitted) for r in reports) == [0, 2]
    assert all(len(h.submissions(c.dir)) == 1 for c in sweeps[0].cells)
    assert [st.state for st in h.states(sweeps[0]).values()] == ['DONE', 'DONE']


def test_flops_grid_in_process_records_a_failed_cell_and_goes_on(write_grid, tmp_path):
    # 16 channels in 3 heads passes the plan (keyword and sizes are valid) but not the model's own check
    path = write_grid('flops', task='flops', base={'model': 'fat_proxy', 'img_size': 48},
                      axes={'model_args': [{'num_heads': [3, 2, 4, 8]}, {}]}, zip=[{'fasa': ['fasa', 'global_only']}])
    sweep = prepare(path, [], tmp_path / 'runs')
    assert len(launch(sweep, 'debug').submitted) == 4  # one job runs the 4 cells in turn
    now = h.states(sweep)
    assert [now[c.id].state for c in sweep.cells] == ['FAILED', 'FAILED', 'DONE', 'DONE']
    assert now[sweep.cells[0].id].detail == 'ValueError: FASA: dim 16 is not divisible by num_heads 3'
    frame, incomplete, *_ = collect(sweep, list(now.values()), tmp_path / 'flops.csv')
    table = pd.read_csv(tmp_path / 'flops.csv')
    assert list(table.columns[:5]) == ['grid', 'cell', 'model_args', 'fasa', 'status']
    assert table.loc[2:, 'params'].notna().all() and (table.loc[2:, 'macs_paper'] < table.loc[2:, 'macs_fvcore']).all()
    assert 'top1' not in table.columns and table['environment'].str.contains('torch').all()


# ---------------------------------------------------------------------------------------------------------- local GPUs

def test_local_jobs_get_disjoint_gpus(write_grid, tmp_path, monkeypatch):
    """Defect: every local job was given GPUs 0..gpus_per_node-1, so parallel jobs all ran on GPU 0. A machine with
    GPUs 4 and 7 is simulated through CUDA_VISIBLE_DEVICES (the flops task counts on the CPU whatever it is given)."""
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,7')
    path = write_grid('gpus', task='flops', base={'model': 'fat_proxy', 'img_size': 32},
                      axes={'fasa': ['fasa', 'global_only', 'local_only']},
                      slurm={'profile': h.LOCAL_PROFILE, 'gpus_per_node': 1, 'array_parallelism': 3})
    sweep = prepare(path, [], tmp_path / 'runs')
    assert [a['gpus'] for a in launch(sweep, 'local', dry_run=True).arrays] == [[4], [7]]  # 2 GPUs: 2 lanes
    report = launch(sweep, 'local')
    assert report.text().endswith('(GPUs 4 | 7)')
    h.wait_states(sweep, ['DONE'], timeout=240)
    started = {c.id: h.starts(c.dir)[-1]['gpus'] for c in sweep.cells}
    assert sorted(started.values()) == ['4', '4', '7']


def test_local_gpu_jobs_larger_than_the_machine_are_refused(write_grid, tmp_path, monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
    path = write_grid('big', task='flops', base={'model': 'fat_proxy'},
                      slurm={'profile': h.LOCAL_PROFILE, 'gpus_per_node': 4})
    sweep = prepare(path, [], tmp_path / 'runs')
    with pytest.raises(ValueError, match=r'^gpus_per_node is 4 but this machine has 2 GPUs for the local executor '
                                         r'\(0, 1\): lower it, or launch on Slurm$'):
        launch(sweep, 'local')
    assert not any(c.dir.exists() for c in sweep.cells)  # nothing written
