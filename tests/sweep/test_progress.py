"""Watching a sweep (`fat sweep status`, `--json`, `--watch`, `--stalled-after`): progress, ETAs and the grid's
expected finish from made-up cell directories with known numbers, and a real local cell followed while it trains,
stopped with SIGSTOP (STALLED), continued and watched to its end."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sweep_helpers as h

from fat.cli import main as cli_main
from fat.io import write_json_atomic
from fat.sweep.launch import launch, prepare
from fat.sweep.progress import annotate, read_progress
from fat.sweep.state import CellState, Scheduler, cell_states
from fat.sweep.watch import watch

FAT = [str(Path(sys.executable).with_name('fat'))] if Path(sys.executable).with_name('fat').exists() else [
    sys.executable, '-m', 'fat.cli']


@pytest.fixture
def sweep(write_grid, tmp_path):
    sw = prepare(write_grid('watch', preset='smoke', axes={'lr': [1e-3, 2e-3, 3e-3, 4e-3]}, seeds=[0]), [],
                 tmp_path / 'runs')
    for cell in sw.cells:
        cell.write(sw.grid)
    return sw


@pytest.fixture
def job():
    """A live process that the process table takes for a `local` job: its id."""
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', 'submitit-lookalike'])
    h.wait_until(lambda: b'submitit' in Path(f'/proc/{proc.pid}/cmdline').read_bytes(), 10, 'the process to exec')
    yield str(proc.pid)
    proc.kill()
    proc.wait()


def _record(cell, **record):
    with open(cell.dir / 'jobs.jsonl', 'a') as f:
        f.write(json.dumps(record) + '\n')


def _running(cell, job_id, started, **progress):
    """A cell of a live local job that started at `started`, with this progress file (epoch 1 of 2: 40 of 100
    steps at 0.5 s, 2 s per evaluation, written now)."""
    _record(cell, event='submitted', job_id=job_id, cluster='local', time=started - 1,
            log_dir=str(cell.dir.parent / '.submitit' / '%j'))
    _record(cell, event='started', job_id=job_id, time=started, host=os.uname().nodename)
    write_json_atomic(cell.dir / 'progress.json', dict(dict(
        time=time.time(), phase='train', epoch=0, epochs=2, step_in_epoch=40, steps_per_epoch=50, step=40,
        steps=100, step_seconds=0.5, images_per_s=32., eval_seconds=2., eval_every=1, val_top1=None), **progress))


def _done(cell, started, seconds):
    _record(cell, event='started', job_id='1', time=started, host='node1')
    write_json_atomic(cell.dir / 'result.json', {'status': 'done', 'final_top1': 50.})
    os.utime(cell.dir / 'result.json', (started + seconds, started + seconds))


def test_progress_eta_and_the_grids_expected_finish(sweep, job, capsys):
    running, queued, done, _ = sweep.cells
    now = time.time()
    _running(running, job, now - 30)
    _record(queued, event='submitted', job_id=job, cluster='local', time=now, log_dir='.')  # not started: PENDING
    _done(done, now - 1000, 100.)
    states = cell_states(sweep.cells, Scheduler(None, slurm=False))
    grid = annotate(states, now=now)
    assert [st.state for st in states] == ['RUNNING', 'PENDING', 'DONE', 'NOT_LAUNCHED']
    p = states[0].progress
    assert (p['epoch'], p['epochs'], p['step'], p['steps'], p['images_per_s']) == (1, 2, 40, 100, 32.)
    # 60 steps at 0.5 s and 2 evaluations at 2 s, less the time since the file was written
    assert p['eta_s'] == pytest.approx(34, abs=1) and p['elapsed_s'] == pytest.approx(30, abs=1)
    # the pending cell takes the DONE cell's 100 s once the running one ends; NOT_LAUNCHED is not counted
    assert grid['seconds_per_cell'] == pytest.approx(100) and grid['seconds_per_cell_from'] == 'median of 1 DONE'
    assert grid['eta_s'] == pytest.approx(134, abs=1)
    assert (grid['finished'], grid['running'], grid['pending'], grid['not_launched']) == (1, 1, 1, 1)

    grid_file, workdir = str(sweep.grid.path), str(sweep.workdir)
    assert cli_main(['sweep', 'status', grid_file, '--workdir', workdir, '--json']) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc['cells'][0]['progress']['step'] == 40 and doc['cells'][0]['progress']['eta_s'] < 35
    assert doc['grid']['eta_s'] == pytest.approx(134, abs=5) and doc['grid']['expected_finish']
    assert cli_main(['sweep', 'status', grid_file, '--workdir', workdir]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith(f'{running.id}  RUNNING') and 'epoch 1/2 step 40/50 32 img/s elapsed 00:3' in text[0]
    assert 'ETA 00:3' in text[0] and text[-2].startswith('grid: 1/4 finished, 1 running, 1 pending, 1 not launched')
    assert 'expected finish in 02:1' in text[-2] and text[-1].startswith('4 cells: 1 DONE, 1 RUNNING, 1 PENDING')


def _capture(grid_file: str, workdir: str, *extra: str) -> str:
    out = subprocess.run([*FAT, 'sweep', 'status', grid_file, '--workdir', workdir, *extra], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_cell_whose_progress_stopped_is_stalled_after_its_threshold(sweep, job):
    slow, stuck, restarted = sweep.cells[:3]
    now = time.time()
    _running(slow, job, now - 900, time=now - 400, step_seconds=50.)  # 400 s without news, but steps take 50 s
    _running(stuck, job, now - 900, time=now - 400)
    _running(restarted, job, now - 10, time=now - 400)  # the file is the job's before a requeue: resuming
    log = stuck.dir.parent / '.submitit' / job / f'{job}_0_log.err'
    log.parent.mkdir(parents=True)
    log.write_text('epoch 1/2 step 40/100 loss 2.3\nepoch 1/2 step 41/100 loss 2.2\n\n')
    states = cell_states(sweep.cells[:3], Scheduler(None, slurm=False))
    grid = annotate(states, 300., now=now)
    assert [st.state for st in states] == ['RUNNING', 'STALLED', 'RUNNING']  # thresholds: 10 x 50 s, and 300 s
    assert states[1].detail == f'no progress for 06:40 (log: {log}; last line: epoch 1/2 step 41/100 loss 2.2)'
    assert states[1].progress['eta_s'] is None and grid['eta_s'] is None and grid['stalled'] == 1
    assert states[2].progress['phase'] == 'starting' and states[2].progress['eta_s'] == pytest.approx(34)
    # --stalled-after raises the threshold
    states = cell_states(sweep.cells[:3], Scheduler(None, slurm=False))
    annotate(states, 600., now=now)
    assert [st.state for st in states] == ['RUNNING', 'RUNNING', 'RUNNING']


def test_each_cell_has_a_readable_tensorboard_run(sweep):
    assert [Path(c.config['tensorboard_dir']) for c in sweep.cells] == [
        sweep.root / 'tb' / f'lr={lr},seed=0' for lr in (0.001, 0.002, 0.003, 0.004)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_draws_bars_in_place_on_a_terminal_lines_elsewhere_and_exits_as_wait(sweep, job):
    cell = sweep.cells[0]
    _running(cell, job, time.time() - 30)
    for out, final, code in ((_Terminal(), 'DONE', 0), (io.StringIO(), 'FAILED', 1)):
        looks = iter([[CellState(cell, 'RUNNING', started=time.time() - 30)]] * 2 + [[CellState(cell, final)]])
        assert watch(looks.__next__, 0.01, 300., out=out) == code
        text = out.getvalue()
        assert f'1 cell: 1 {final}' in text.splitlines()[-1]
        if isinstance(out, _Terminal):  # two bars (the cell's, the grid's), redrawn over themselves
            assert text.count('\x1b[2F\x1b[J') == 2 and ' 40%|' in text and '| epoch 1/2 step 40/50' in text
        else:  # a line when something changed
            assert '\x1b[' not in text and text.count(f'] {cell.id}  RUNNING  lr=0.001 seed=0  epoch 1/2') >= 1


def test_a_local_cell_shows_its_epoch_and_eta_is_stalled_when_stopped_and_is_watched_to_its_end(write_grid, tmp_path):
    path = write_grid('live', preset='smoke', axes={'fasa': ['fasa']},
                      base={'train_subset': 960, 'epochs': 2, 'checkpoint_minutes': 0, 'log_interval': 5},
                      slurm={'profile': h.LOCAL_PROFILE, 'timeout_min': 10})
    workdir = tmp_path / 'runs'
    sweep = prepare(path, [], workdir)
    cell = sweep.cells[0]
    launch(sweep, 'local')
    args = (str(path), str(workdir))
    pid = None
    try:
        h.wait_until(lambda: (read_progress(cell.dir) or {}).get('step_seconds'), 180, 'the first steps')
        doc = json.loads(_capture(*args, '--json'))
        st, p = doc['cells'][0], doc['cells'][0]['progress']
        assert st['state'] == 'RUNNING' and p['epochs'] == 2 and p['steps'] == 120 and 1 <= p['step'] < 120
        assert p['epoch'] in (1, 2) and p['eta_s'] > 0 and p['elapsed_s'] > 0 and p['images_per_s'] > 0
        line = _capture(*args).splitlines()[0]
        assert ' RUNNING ' in line and 'epoch ' in line and '/2 step ' in line and ' ETA ' in line

        pid = h.starts(cell.dir)[-1]['pid']
        os.kill(pid, signal.SIGSTOP)
        stalled = h.wait_until(
            lambda: (d := json.loads(_capture(*args, '--json', '--stalled-after', '2'))['cells'][0])['state']
            == 'STALLED' and d, 60, 'STALLED')
        assert stalled['detail'].startswith('no progress for ') and f"(log: {stalled['log']}; last line: " in \
            stalled['detail']
        assert json.loads(_capture(*args, '--json'))['cells'][0]['state'] == 'RUNNING'  # under the default 300 s
        os.kill(pid, signal.SIGCONT)

        watched = subprocess.run([*FAT, 'sweep', 'status', *args[:1], '--workdir', args[1], '--watch', '--poll', '1'],
                                 capture_output=True, text=True, timeout=300)
        assert watched.returncode == 0, watched.stderr
        lines = watched.stdout.splitlines()
        assert lines[-1] == '1 cell: 1 DONE' and any(f'{cell.id}  RUNNING  fasa=fasa  epoch ' in ln for ln in lines)
        assert list((sweep.root / 'tb' / 'fasa=fasa').glob('events.out.tfevents.*'))
    finally:
        if pid is not None and h.alive(pid):
            os.kill(pid, signal.SIGCONT)
        if not (cell.dir / 'result.json').exists():  # the test failed: end the job and its task
            for target in (int(h.job_ids(sweep)[cell.id]), pid):
                if target is not None and h.alive(target):
                    os.kill(target, signal.SIGKILL)
