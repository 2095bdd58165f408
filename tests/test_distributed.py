"""Multi-process and GPU paths of training, as a GPU cluster meets them: submitit Slurm tasks whose site set
MASTER_* variables, a GPU job whose CUDA is unusable, per-task GPU binding, and the order in which ranks leave a
preempted job. Real processes and gloo where they can run here; Slurm's and CUDA's environment variables are
simulated (there is no GPU on these machines), and torch.cuda's random-state calls are faked where noted."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from fat import distributed
from fat.distributed import cuda_index, gpus_allocated
from fat.sweep.job import export_job_env

SMOKE = ['--preset', 'smoke', 'train_subset=96', 'epochs=2', 'checkpoint_minutes=0']
_DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT',
              'TORCHELASTIC_RUN_ID', 'SUBMITIT_EXECUTOR', 'CUDA_VISIBLE_DEVICES')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS and not k.startswith('SLURM_')}
    return dict(env, **extra)


def _slurm_task(rank: int, tasks: int, **extra: str) -> Dict[str, str]:
    """The variables srun gives task `rank` of a one-node job started by submitit (simulated)."""
    return dict(SUBMITIT_EXECUTOR='slurm', SLURM_JOB_ID='4242', SLURM_NTASKS=str(tasks), SLURM_JOB_NUM_NODES='1',
                SLURM_NODEID='0', SLURM_JOB_NODELIST='localhost', SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                **extra)


@pytest.fixture
def no_dist_env(monkeypatch):
    """No launcher variables; what the code under test exports is removed afterwards (monkeypatch restores only
    the variables it touched, so each is set before it is deleted)."""
    for key in {*_DIST_VARS, *(k for k in os.environ if k.startswith('SLURM_'))}:
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    return monkeypatch


# -- the job's ranks --------------------------------------------------------------------------------------------

def test_submitit_task_exports_its_own_ranks(no_dist_env):
    for key, value in dict(_slurm_task(3, 4), SLURM_JOB_NUM_NODES='2', SLURM_NODEID='1',
                           SLURM_JOB_NODELIST='node[3-4]', SLURM_LOCALID='1').items():
        no_dist_env.setenv(key, value)
    export_job_env()
    assert [os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE')] == ['3', '4', '1', '2']
    assert os.environ['MASTER_ADDR'] == 'node3' and int(os.environ['MASTER_PORT']) > 0


def test_site_master_variables_are_kept_and_a_stale_local_rank_replaced(no_dist_env):
    # a site `setup:` line ran once for the whole job, before srun started the tasks
    for key, value in dict(_slurm_task(1, 2), MASTER_ADDR='10.0.0.7', MASTER_PORT='29123', LOCAL_RANK='0').items():
        no_dist_env.setenv(key, value)
    export_job_env()
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('10.0.0.7', '29123')
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == ('1', '2', '1')


def test_torchrun_variables_are_left_alone(no_dist_env):
    for key, value in dict(_slurm_task(0, 1), TORCHELASTIC_RUN_ID='x', RANK='5', WORLD_SIZE='8').items():
        no_dist_env.setenv(key, value)
    export_job_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE']) == ('5', '8') and 'MASTER_ADDR' not in os.environ


def test_two_submitit_tasks_train_as_one_ddp_run_with_the_site_master_port(tmp_path):
    """Defect: the site's MASTER_PORT made submitit's export raise, which was swallowed: each task trained alone.
    Each task does what the sweep's job wrapper does: export its ranks, then train."""
    out = tmp_path / 'run'
    site = dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()))
    task = ('import sys; from fat.sweep.job import export_job_env; from fat.cli import main; export_job_env(); '
            'sys.exit(main(sys.argv[1:]))')
    cmd = [sys.executable, '-c', task, 'train', '--output-dir', str(out), *SMOKE]
    with open(tmp_path / 'log', 'w') as log:
        procs = [subprocess.Popen(cmd, env=_clean_env(**_slurm_task(r, 2, **site)), stdout=log,
                                  stderr=subprocess.STDOUT) for r in range(2)]
        codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], (tmp_path / 'log').read_text()[-3000:]
    result = json.loads((out / 'result.json').read_text())
    assert result['status'] == 'done' and result['world_size'] == 2
    assert result['steps'] == 2 * (96 // 2 // 16)  # each rank took half of every epoch


# -- the device ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine where CUDA is unusable')
def test_a_gpu_job_whose_cuda_is_unusable_fails_in_one_line(tmp_path):
    """Defect: device auto trained on the CPU when the job had GPUs and CUDA could not use them."""
    cmd = [sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(tmp_path / 'run'), *SMOKE]
    out = subprocess.run(cmd, env=_clean_env(SLURM_GPUS_ON_NODE='1', CUDA_VISIBLE_DEVICES='0'), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        'fat train: error: this job was given GPUs (SLURM_GPUS_ON_NODE=1) but CUDA is unusable: ')
    assert 'set device=cpu' in out.stderr and not (tmp_path / 'run').exists()  # nothing written


def test_gpus_allocated_reads_slurm_and_cuda_variables(no_dist_env):
    no_dist_env.setattr(distributed, 'Path', lambda _: Path('/nonexistent'))
    assert gpus_allocated() is None
    for value in ('', '-1', 'NoDevFiles'):
        no_dist_env.setenv('CUDA_VISIBLE_DEVICES', value)
        assert gpus_allocated() is None
    no_dist_env.setenv('CUDA_VISIBLE_DEVICES', '2,3')
    assert gpus_allocated() == 'CUDA_VISIBLE_DEVICES=2,3'
    no_dist_env.setenv('SLURM_JOB_GPUS', '2,3')
    assert gpus_allocated() == 'SLURM_JOB_GPUS=2,3'
    no_dist_env.setenv('CUDA_VISIBLE_DEVICES', '')  # the GPUs hidden on purpose: the CPU is the choice
    assert gpus_allocated() is None


@pytest.mark.parametrize('local_rank, local_world, count, index', [
    (3, 8, 8, 3),  # every GPU of the node visible: the local rank's
    (3, 8, 1, 0),  # one GPU bound to each task (CUDA_VISIBLE_DEVICES per task, --gpu-bind)
    (0, 1, 1, 0),
])
def test_cuda_index_follows_the_binding(local_rank, local_world, count, index):
    assert cuda_index(local_rank, local_world, count) == index


def test_cuda_index_refuses_an_ambiguous_binding():
    with pytest.raises(ValueError, match='local rank 5 of 8 processes on this node sees 2 GPUs'):
        cuda_index(5, 8, 2)


@pytest.mark.parametrize('local_rank, local_world, count', [(0, 1, 4), (1, 2, 8)])
def test_cuda_index_refuses_gpus_no_process_would_use(local_rank, local_world, count):
    """One process on a node with 4 visible GPUs trained on GPU 0 and left 3 idle for days (issue 29 item 1)."""
    with pytest.raises(ValueError, match=f'{local_world} process\\(es\\) on this node see {count} GPUs'):
        cuda_index(local_rank, local_world, count)


@pytest.mark.parametrize('backend,device', [('mpi', 'cpu'), ('nccl', 'cpu')])
def test_an_unusable_backend_override_is_refused_before_any_group(monkeypatch, backend, device):
    monkeypatch.setenv('FAT_DIST_BACKEND', backend)
    with pytest.raises(ValueError, match=f"FAT_DIST_BACKEND='{backend}': expected gloo, or nccl on CUDA"):
        distributed.init_groups(torch.device(device))
    assert not torch.distributed.is_initialized()

def test_each_rank_saves_and_restores_its_own_gpu_random_state(monkeypatch):
    """torch.cuda's calls are faked (no GPU here): what matters is which device each is asked about."""
    calls: List[tuple] = []
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device: calls.append(('get', device)) or torch.ones(2))
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device: calls.append(('set', device, state)))
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: pytest.fail('every GPU\'s state saved'))
    device = torch.device('cuda', 0)  # per-task binding: every rank's GPU is cuda:0
    state = distributed.device_rng_state(device)
    distributed.set_device_rng_state(state, device)
    distributed.set_device_rng_state([torch.zeros(2), torch.full((2,), 7.)], torch.device('cuda', 1))  # old format
    distributed.set_device_rng_state(None, device)  # a CPU run's checkpoint
    assert [c[:2] for c in calls] == [('get', device), ('set', device), ('set', torch.device('cuda', 1))]
    assert torch.equal(calls[2][2], torch.full((2,), 7.))


def test_a_gpu_runs_stop_votes_are_summed_on_the_hosts_over_the_gloo_group(monkeypatch):
    """Every step the ranks agree on their stop votes (SIGTERM/SIGUSR2, a checkpoint due). Over NCCL the votes went
    to the GPU and back, and each copy waited for the step queued before it. Now they are summed on the hosts over
    the gloo control group. No GPU here: a GPU placement is described and dist.all_reduce is faked; the CPU DDP tests
    (tests/test_train_resume.py, the Slurm multi-task and two-node tests) run the same call over a real gloo group."""
    from types import SimpleNamespace

    from fat.train.trainer import Trainer
    calls = []

    def all_reduce(tensor, group=None):
        calls.append((tensor.device, group))
        tensor.mul_(2)  # two ranks voting alike
    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    place = distributed.Placement(rank=1, world_size=2, local_rank=1, device=torch.device('cuda', 1),
                                  local_world_size=2, control_group='the gloo group')
    trainer = SimpleNamespace(place=place, device=place.device)
    assert Trainer._agree(trainer, 1., 0., 1.) == [2., 0., 2.]
    assert calls == [(torch.device('cpu'), 'the gloo group')]


# -- leaving a preempted job --------------------------------------------------------------------------------------

_PREEMPTED = '''
import json, os, signal, sys, time
from pathlib import Path
out, rank = Path(sys.argv[1]), int(os.environ['RANK'])

def requeue(signum, frame):  # submitit's handler on rank 0: scontrol requeue (slow on a busy controller), then exit
    time.sleep(2)
    (out.parent / 'requeued').write_text(repr(time.time()))
    sys.exit(-1)

def bypass(signum, frame):  # submitit's handler on the other ranks: nothing, the requeue is rank 0's
    pass

def record():
    ckpt = (out / 'checkpoint-last.pt').exists()
    (out.parent / f'exit-{rank}').write_text(json.dumps(dict(time=time.time(), ckpt=ckpt)))

signal.signal(signal.SIGUSR2, requeue if rank == 0 else bypass)
import atexit
atexit.register(record)
from fat.cli import main
sys.exit(main(['train', '--output-dir', str(out), *sys.argv[2:]]))
'''


def test_no_rank_leaves_a_preempted_job_before_rank_0_has_checkpointed_and_requeued(tmp_path):
    """Defect: ranks other than 0 exited right after the stop vote; under srun's KillOnBadExit=1 their exit killed
    rank 0 before its checkpoint and requeue, and the job never came back."""
    script, out = tmp_path / 'preempted.py', tmp_path / 'run'
    script.write_text(_PREEMPTED)
    port = _free_port()
    cmd = [sys.executable, str(script), str(out), *SMOKE, 'epochs=3', 'checkpoint_steps=1']
    with open(tmp_path / 'log', 'w') as log:
        procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(
            MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE='2', LOCAL_RANK=str(r)))
            for r in range(2)]
        deadline = time.monotonic() + 120
        while not (out / 'checkpoint-last.pt').exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), 'training never started'
            time.sleep(0.02)
        for p in procs:  # Slurm signals every task of the job
            p.send_signal(signal.SIGUSR2)
        codes = [p.wait(timeout=120) for p in procs]
    assert codes == [255, 128 + signal.SIGUSR2], (tmp_path / 'log').read_text()[-3000:]
    requeued = float((tmp_path / 'requeued').read_text())
    exits = [json.loads((tmp_path / f'exit-{r}').read_text()) for r in range(2)]
    assert exits[1]['ckpt'] and exits[1]['time'] >= requeued, (exits, requeued)
    assert not (out / 'result.json').exists()  # stopped, not ended


def test_a_multi_node_job_whose_host_name_resolves_to_loopback_names_gloo_socket_ifname(monkeypatch):
    """A simulation (one machine): the host name is made to resolve to 127.0.1.1, as /etc/hosts does on many sites,
    for a job of 2 nodes x 2 processes. gloo would listen there and hang until its 30-minute timeout (issue 29 item 4).
    """
    import socket

    from fat.distributed import check_gloo_interface
    monkeypatch.delenv('GLOO_SOCKET_IFNAME', raising=False)
    monkeypatch.setattr(socket, 'gethostbyname', lambda name: '127.0.1.1')
    with pytest.raises(ValueError, match=r'resolves to 127\.0\.1\.1, a loopback address.*set GLOO_SOCKET_IFNAME'):
        check_gloo_interface(world_size=4, local_world_size=2)
    check_gloo_interface(world_size=2, local_world_size=2)  # one node: loopback is where its ranks meet
    monkeypatch.setenv('GLOO_SOCKET_IFNAME', 'eth0')
    check_gloo_interface(world_size=4, local_world_size=2)  # the interface is named: gloo uses it
