"""Status and collect from disk (no scheduler needed), the golden sbatch file, and arrays under MaxArraySize."""
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_helpers import LOCAL_PROFILE, REPO, wait_until

from fat.cli import main as cli_main
from fat.environment import run_env_name
from fat.io import write_json_atomic
from fat.sweep.cells import append_record
from fat.sweep.cluster import QueueEntry, local_job_alive, render_sbatch
from fat.sweep.collect import collect
from fat.sweep.launch import launch, prepare
from fat.sweep.state import Scheduler, cell_states, error_line


@pytest.fixture
def sweep(write_grid, tmp_path):
    path = write_grid('disk', preset='smoke', axes={'lr': [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]})
    sw = prepare(path, [], tmp_path / 'runs')
    for cell in sw.cells:
        cell.write(sw.grid)
    return sw


def _submitted(cell, job_id, cluster='local', **extra):
    append_record(cell.dir, {'event': 'submitted', 'job_id': job_id, 'cluster': cluster,
                             'log_dir': str(cell.dir.parent / '.submitit' / '%j'), **extra})


def _log(cell, job_id, text):
    log = cell.dir.parent / '.submitit' / job_id / f'{job_id}_0_log.err'
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return log


def test_states_from_disk_and_collect_never_drops_a_cell(sweep, tmp_path, capsys):
    done, diverged, failed, crashed, corrupt, fresh, queued, requeued = sweep.cells
    _submitted(done, '12_1', cluster='slurm')
    append_record(done.dir, {'event': 'started', 'job_id': '12_1', 'host': 'node7'})
    write_json_atomic(done.dir / 'result.json', {'status': 'done', 'final_top1': 91.5, 'final_top5': 99.0,
                                                 'best_top1': 92.0, 'best_top5': 99.5, 'epochs': 2, 'params': 123})
    write_json_atomic(diverged.dir / 'result.json', {'status': 'diverged', 'error': 'loss is nan at step 7'})
    _submitted(failed, '999999999')
    time.sleep(0.01)
    write_json_atomic(failed.dir / 'result.json', {'status': 'failed', 'error': 'RuntimeError: boom'})
    _submitted(crashed, '999999998')  # a dead process, a log ending in a traceback
    log = _log(crashed, '999999998', 'Traceback (most recent call last):\n  File "x.py", line 1\n'
                                     'ValueError: bad thing\nsubmitit ERROR (2026) - Submitted job triggered an '
                                     'exception\n')
    (corrupt.dir / 'result.json').write_text('{"status": "do')
    _submitted(queued, '12_3', cluster='slurm')
    _submitted(requeued, '12_4', cluster='slurm')
    sched = Scheduler({'12_3': QueueEntry('PENDING', 0, 'Priority'), '12_4': QueueEntry('PENDING', 1, 'BeginTime')})

    states = {st.cell.id: st for st in cell_states(sweep.cells, sched)}
    got = {c.id: states[c.id].state for c in sweep.cells}
    assert list(got.values()) == ['DONE', 'DIVERGED', 'FAILED', 'FAILED', 'FAILED', 'NOT_LAUNCHED', 'PENDING',
                                  'REQUEUED']
    assert states[failed.id].detail == 'RuntimeError: boom'
    # a finished cell names the job that ran it and that job's log (the job has left the queue)
    assert states[done.id].job_id == '12_1' and states[done.id].log.endswith('/12_1/12_1_0_log.err')
    assert states[done.id].hosts == ['node7'] and states[done.id].detail == 'top-1 91.50'
    assert states[crashed.id].detail == 'ValueError: bad thing' and states[crashed.id].log == str(log)
    assert 'result.json corrupt' in states[corrupt.id].detail
    assert states[requeued.id].detail == 'BeginTime' and states[requeued.id].job_id == '12_4'

    out = tmp_path / 'results' / 'disk.csv'
    frame, incomplete, *_ = collect(sweep, list(states.values()), out)
    table = pd.read_csv(out)
    assert len(table) == len(sweep.cells) and list(table['cell']) == [c.id for c in sweep.cells]
    assert list(table.columns[:4]) == ['grid', 'cell', 'lr', 'seed']
    assert list(table['status']) == ['DONE', 'DIVERGED', 'FAILED', 'FAILED', 'CORRUPT', 'NOT_LAUNCHED', 'PENDING',
                                     'REQUEUED']
    assert table.loc[0, 'top1'] == 91.5 and table.loc[0, 'best_top5'] == 99.5 and table.loc[0, 'params'] == 123
    assert table['macs_paper'].notna().all() and table['macs_fvcore'].notna().all()  # from the config alone
    assert str(log.relative_to(sweep.workdir)) in table.loc[3, 'error'] and 'ValueError: bad thing' in \
        table.loc[3, 'error']
    # no path of this machine: cell directories (and the logs named in errors) relative to the work directory
    assert [sweep.workdir / d for d in table['dir']] == [c.dir for c in sweep.cells]
    assert table.loc[0, 'dir'] == f'disk/{done.id}'
    fields = [str(v) for v in table.to_numpy().ravel()] + list(table.columns)
    assert [v for v in fields if re.search(r'(^|[\s(=:,])/[\w.]', v)] == [] and str(tmp_path) not in out.read_text()
    assert len(incomplete) == 7 and incomplete[3].startswith(f'{corrupt.id} CORRUPT: result.json corrupt')
    assert (sweep.workdir / '.complexity-cache.json').exists()


def test_running_local_job_and_pending(sweep):
    running, waiting = sweep.cells[:2]
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'submitit-lookalike'])
    try:
        wait_until(lambda: local_job_alive(str(proc.pid)), 10, 'the process to exec')
        for cell in (running, waiting):
            _submitted(cell, str(proc.pid))
        append_record(running.dir, {'event': 'started', 'job_id': str(proc.pid)})
        states = cell_states([running, waiting], Scheduler(None, slurm=False))
        assert [st.state for st in states] == ['RUNNING', 'PENDING']
    finally:
        proc.kill()
        proc.wait()
    assert [st.state for st in cell_states([running], Scheduler(None, slurm=False))] == ['FAILED']


def test_status_and_collect_commands(sweep, capsys):
    grid, workdir = str(sweep.grid.path), str(sweep.workdir)
    # a grid never launched: status, --watch and wait all exit 1 with the same hint (status exited 0 before)
    assert cli_main(['sweep', 'status', grid, '--workdir', workdir, '--json']) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc['summary'] == '8 cells: 8 NOT_LAUNCHED' and len(doc['cells']) == 8
    assert captured.err == f'nothing launched: fat sweep launch {grid}\n'
    assert cli_main(['sweep', 'status', grid, '--workdir', workdir]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == '8 cells: 8 NOT_LAUNCHED (state source: disk and process table (no cell launched on Slurm))'
    assert out[0].split()[:3] == [sweep.cells[0].id, 'NOT_LAUNCHED', 'lr=0.001']
    for verb in (['status', '--watch'], ['wait']):
        assert cli_main(['sweep', verb[0], grid, *verb[1:], '--workdir', workdir]) == 1
        assert capsys.readouterr().err == f'nothing launched: fat sweep launch {grid}\n'


def _started(cell, torch='2.14.1+cu130', device='cpu', cpu='AMD EPYC 7B13', gpus=()):
    """The environment record `fat train` writes when a run starts."""
    write_json_atomic(cell.dir / 'environment.json', [{'versions': {'torch': torch, 'cuda': '12.8'}, 'hardware': {
        'device': device, 'cpu': cpu, 'gpus': list(gpus), 'hostname': 'node1'}, 'world_size': 1}])


def test_collect_names_its_file_by_the_environment_and_replaces_only_its_own(sweep, tmp_path, capsys):
    grid, workdir, results = str(sweep.grid.path), str(sweep.workdir), tmp_path / 'results'
    args = ['sweep', 'collect', grid, '--workdir', workdir, '--out', str(results)]
    assert cli_main(args) == 0
    assert [p.name for p in results.glob('*.csv')] == ['disk-unrun.csv']  # nothing has started yet
    assert [p.name for p in (results / 'curves').iterdir()] == ['disk-unrun.csv']  # its learning curves (none yet)
    other = results / 'disk-pt2.14-cu128-a100_sxm4_40gb.csv'  # the same grid collected on another machine
    # its cell directories are relative, like ours: what tells it apart is that no collect of ours wrote it
    pd.DataFrame({'grid': ['disk'], 'status': ['DONE'], 'dir': [f'disk/{sweep.cells[0].id}']}).to_csv(other)
    legacy = results / 'disk-pt2.14-cpu-old.csv'  # ours, collected before `dir` was relative: replaced too
    pd.DataFrame({'grid': ['disk'], 'status': ['DONE'], 'dir': [str(sweep.cells[0].dir)]}).to_csv(legacy)
    for cell in sweep.cells:
        _started(cell)
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert f'removed {results / "disk-unrun.csv"}' in out and f'removed {legacy}' in out
    assert sorted(p.name for p in results.glob('*.csv')) == ['disk-pt2.14-cpu-amd_epyc_7b13.csv', other.name]
    assert [p.name for p in (results / 'curves').iterdir()] == ['disk-pt2.14-cpu-amd_epyc_7b13.csv']  # replaced too
    _started(sweep.cells[0], device='cuda:0', gpus=['NVIDIA H100 80GB HBM3'])
    assert cli_main(args) == 0
    assert sorted(p.name for p in results.glob('*.csv')) == ['disk-mixed.csv', other.name]
    table = pd.read_csv(results / 'disk-mixed.csv')
    assert 'cuda:0 (NVIDIA H100 80GB HBM3)' in table.loc[0, 'environment']
    record = json.loads((sweep.cells[0].dir / 'environment.json').read_text())[-1]
    assert run_env_name(record) == 'pt2.14-cu128-h100_80gb_hbm3'  # the name it would have had on its own


def test_error_line_prefers_the_exception(tmp_path):
    log = tmp_path / 'x.err'
    log.write_text('slurmstepd: error: *** JOB 5 ON localhost CANCELLED AT 2026-01-01T00:00:00 ***\n')
    assert 'CANCELLED' in error_line(log)
    assert error_line(tmp_path / 'missing.err') is None


def test_sbatch_matches_the_golden_file():
    sweep = prepare(REPO / 'ablations' / 'smoke.yaml', [], Path('/WORKDIR'))
    text = render_sbatch(sweep.resources, sweep.job_name, sweep.log_folder, len(sweep.cells), python='PYTHON')
    assert text == (REPO / 'slurm' / 'golden' / 'smoke.sbatch').read_text()


def test_dry_run_splits_arrays_at_max_array_size(write_grid, tmp_path):
    path = write_grid('wide', preset='smoke', axes={'lr': [i / 1e4 for i in range(1, 101)], 'seed': list(range(25))})
    sweep = prepare(path, [], tmp_path / 'runs')
    report = launch(sweep, 'slurm', dry_run=True, array_size_limit=1001)
    assert report.max_array_size <= 1001 and len(sweep.cells) == 2500
    assert [a['size'] for a in report.arrays] == [1001, 1001, 498]
    assert '#SBATCH --array=0-1000%2' in report.arrays[0]['sbatch']
    assert '#SBATCH --array=0-497%2' in report.arrays[2]['sbatch']
    assert not (tmp_path / 'runs').exists()


def test_multi_gpu_profile_one_task_per_gpu_and_site_lines():
    sweep = prepare(REPO / 'ablations' / 'imagenet_fasa_ablation.yaml', [], Path('/WORKDIR'))
    text = render_sbatch(sweep.resources, sweep.job_name, sweep.log_folder, len(sweep.cells), python='PYTHON')
    for line in ('#SBATCH --gpus-per-node=8', '#SBATCH --ntasks-per-node=8', '#SBATCH --account=my_project',
                 '#SBATCH --qos=normal', '#SBATCH --constraint=a100', '#SBATCH --partition=gpu',
                 '#SBATCH --hint=nomultithread', '#SBATCH --array=0-6%7', 'module load cuda/12.4'):
        assert line in text.splitlines(), line
    two_nodes = prepare(REPO / 'ablations' / 'imagenet_fasa_ablation.yaml', ['slurm.nodes=2', 'slurm.gpus_per_node=4'],
                        Path('/WORKDIR'))
    text = render_sbatch(two_nodes.resources, two_nodes.job_name, two_nodes.log_folder, 1, python='PYTHON')
    assert '#SBATCH --nodes=2' in text and '#SBATCH --ntasks-per-node=4' in text and '--array' not in text


def test_grid_values_reach_the_sbatch_script_quoted(write_grid, tmp_path):
    evil = tmp_path / 'runs $(touch pwned)'
    path = write_grid('quoted', preset='smoke', axes={'fasa': ['fasa', 'global_only']}, workdir=str(evil),
                      slurm={'profile': LOCAL_PROFILE, 'partition': 'debug; touch pwned', 'comment': "it's `id`"})
    sweep = prepare(path, [])
    text = render_sbatch(sweep.resources, sweep.job_name, sweep.log_folder, 2, python='PYTHON')
    lines = text.splitlines()
    assert "#SBATCH --partition='debug; touch pwned'" in lines
    assert '#SBATCH --comment=\'it\'"\'"\'s `id`\'' in lines
    command = shlex.split(lines[-1])
    assert command[-1] == f'{evil}/quoted/.submitit/%j' and command[0] == 'srun'
