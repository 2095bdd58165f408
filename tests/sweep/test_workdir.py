"""A grid's folders only its owner can write: what launch creates (payloads included), the refusal of a work
directory that others can already write, and the `shared_workdir` key; and a cell whose checkpoints do not load,
FAILED with the reason until `--restart-unreadable`."""
import os
import stat
from pathlib import Path

import pytest
import sweep_helpers as h

from fat.cli import main as cli_main
from fat.rundir import read_result
from fat.sweep.launch import launch, prepare

FLOPS = dict(task='flops', base={'model': 'fat_proxy', 'img_size': 32})
TINY_TRAIN = dict(preset='smoke', base={'epochs': 1, 'checkpoint_minutes': 0, 'model_args': {
    'embed_dims': [4, 4, 8, 8], 'depths': [1, 1, 1, 1], 'num_heads': [1, 1, 2, 2]}})


@pytest.fixture
def group_umask():
    """A cluster user's usual umask (002: new files group-writable), restored after the test."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def _writable_by_others(top: Path):
    """What under `top` others can write (a symlink's own mode means nothing: its target is checked)."""
    return sorted(str(p.relative_to(top)) for p in [top, *top.rglob('*')]
                  if not p.is_symlink() and p.stat().st_mode & 0o022)


def _launch_and_check(write_grid, tmp_path: Path, cluster: str):
    sweep = prepare(write_grid('own', **FLOPS), [], tmp_path / 'runs')
    launch(sweep, cluster)
    assert os.umask(0o002) == 0o002  # the process's own umask is given back
    h.wait_states(sweep, ['DONE'], timeout=120)
    payloads = list((sweep.root / '.submitit').rglob('*.pkl'))
    assert payloads and all(c.dir.is_dir() for c in sweep.cells)
    # the folders, the job payloads Slurm/submitit run, and what the jobs wrote (they inherit the umask)
    assert _writable_by_others(tmp_path / 'runs') == []
    assert (sweep.cells[0].dir / 'result.json').stat().st_mode & 0o777 == 0o644


def test_launch_creates_nothing_others_can_write(write_grid, tmp_path, group_umask):
    _launch_and_check(write_grid, tmp_path, 'local')
    # collect, before or after a launch, writes into the work directory the same way
    unrun = prepare(write_grid('unrun', **FLOPS), [], tmp_path / 'runs')
    assert cli_main(['sweep', 'collect', str(unrun.grid.path), '--workdir', str(tmp_path / 'runs'),
                     '--out', str(tmp_path / 'results')]) == 0
    assert (unrun.root / '.collections.json').is_file() and _writable_by_others(tmp_path / 'runs') == []


@pytest.mark.slurm
def test_slurm_jobs_get_the_launchs_umask(slurm_cluster, write_grid, tmp_path, group_umask):
    """sbatch passes the umask to the job (SLURM_UMASK): what the job writes is the owner's alone too."""
    _launch_and_check(write_grid, tmp_path, 'slurm')


def test_a_work_directory_others_can_write_is_refused_unless_the_grid_shares_it(write_grid, tmp_path, capsys):
    grid = write_grid('own', **FLOPS)
    shared = tmp_path / 'runs'
    shared.mkdir()
    shared.chmod(0o775)
    args = ['sweep', 'launch', str(grid), '--workdir', str(shared), '--cluster', 'debug']
    assert cli_main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'{grid}: work directory {shared}: others can write {shared} (mode '
                                               'drwxrwxr-x: group-writable)')
    assert 'shared_workdir: true' in err[0] and list(shared.iterdir()) == []  # nothing written or submitted
    assert cli_main(['sweep', 'plan', str(grid), '--workdir', str(shared)]) == 1  # the plan says so too
    assert capsys.readouterr().err.splitlines() == err
    # a folder above the work directory (not sticky, as /tmp is) lets others move ours away: refused too
    inner = shared / 'alice' / 'runs'
    inner.mkdir(parents=True, mode=0o755)
    assert cli_main(['sweep', 'launch', str(grid), '--workdir', str(inner), '--cluster', 'debug']) == 2
    assert f'others can write {shared} (' in capsys.readouterr().err
    # the grid's own folders: one left group-writable by an earlier launch
    private = tmp_path / 'private'
    sweep = prepare(grid, [], private)
    sweep.cells[0].dir.mkdir(parents=True)
    sweep.cells[0].dir.chmod(0o777)
    assert cli_main(['sweep', 'launch', str(grid), '--workdir', str(private), '--cluster', 'debug']) == 2
    assert f'others can write {sweep.cells[0].dir} (mode drwxrwxrwx: world-writable)' in capsys.readouterr().err
    assert not (sweep.root / '.submitit').exists()
    # a team's shared work directory, declared: launched
    team = write_grid('team', **FLOPS, shared_workdir=True)
    assert cli_main(['sweep', 'launch', str(team), '--workdir', str(shared), '--cluster', 'debug']) == 0
    assert [st.state for st in h.states(prepare(team, [], shared)).values()] == ['DONE']


def test_shared_workdir_must_be_true_or_false(write_grid, capsys):
    grid = write_grid('bad', **FLOPS, shared_workdir='yes')
    assert cli_main(['sweep', 'plan', str(grid)]) == 2
    assert capsys.readouterr().err.strip() == f"{grid}: shared_workdir: expected true or false, got 'yes'"


def test_a_cell_whose_checkpoints_do_not_load_fails_with_the_reason_until_restarted(write_grid, tmp_path, capsys):
    grid = write_grid('torn', **TINY_TRAIN)
    sweep = prepare(grid, [], tmp_path / 'runs')
    cell = sweep.cells[0]
    launch(sweep, 'debug')
    (cell.dir / 'result.json').unlink()  # killed before its end, say, and then both checkpoints torn
    for name in ('checkpoint-last.pt', 'checkpoint-prev.pt'):
        (cell.dir / name).unlink(missing_ok=True)
        (cell.dir / name).write_bytes(b'PK\x03\x04 torn')
    args = ['sweep', 'launch', str(grid), '--workdir', str(tmp_path / 'runs'), '--cluster', 'debug']
    assert cli_main(args) == 0
    result, _ = read_result(cell.dir)
    assert result['status'] == 'failed' and result['steps'] == 0
    assert result['unreadable_checkpoints'] == ['checkpoint-last.pt', 'checkpoint-prev.pt']
    capsys.readouterr()
    assert cli_main(['sweep', 'status', str(grid), '--workdir', str(tmp_path / 'runs')]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f'{cell.id}  FAILED') and f'no checkpoint in {cell.dir} loads (checkpoint-last.pt: ' in line
    # launched again, it is skipped (it would fail the same way), its files untouched
    assert cli_main(args) == 0
    assert 'skipped 1 cells (1 FAILED with unreadable checkpoints: --restart-unreadable)' in capsys.readouterr().out
    assert (cell.dir / 'checkpoint-last.pt').read_bytes() == b'PK\x03\x04 torn'
    assert cli_main([*args, '--restart-unreadable']) == 0
    assert read_result(cell.dir)[0]['status'] == 'done'
    assert len(list(cell.dir.glob('checkpoint-*.unreadable-*.pt'))) == 2
    assert not stat.S_IMODE((cell.dir / 'checkpoint-last.pt').stat().st_mode) & 0o022
