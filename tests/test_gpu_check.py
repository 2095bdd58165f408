"""benchmarks/gpu_check.py: its CPU dry run (the procedure: preemption, resume, comparison, `fat bench`) here; the
GPU run where a GPU is (its output goes in the session notes)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

CHEAP = ['amp_fp16_resume', 'cpu_to_gpu_resume', 'group_world1', 'bench_eager', 'oom_backoff']


@pytest.fixture(scope='module')
def gpu_check(benchmark_script):
    return benchmark_script('gpu_check')


def test_dry_run_passes_what_the_cpu_can_run_and_skips_the_rest(gpu_check, tmp_path, capsys):
    assert gpu_check.main(['--device', 'cpu', '--workdir', str(tmp_path), '--parts', *CHEAP]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('gpu_check on CPU (dry run)')
    assert re.fullmatch(r'gpu_check: 3 passed, 0 failed, 2 skipped \(\d+ s\)', lines[-1])
    outcomes = dict(re.match(r'(PASS|FAIL|SKIP) (\w+) \(', line).group(2, 1) for line in lines[1:-1])
    assert outcomes == dict(amp_fp16_resume='PASS', cpu_to_gpu_resume='SKIP', group_world1='PASS', bench_eager='PASS',
                    oom_backoff='SKIP')
    assert 'preempted at step' in lines[1] and 'resumed exactly' in lines[1]



def test_a_gpu_run_that_skips_a_part_fails_unless_allowed(gpu_check):
    """Defect (issue 29 item 9): on one GPU ddp_nccl_syncbn skipped and the check still exited 0, as if proven."""
    outcomes = dict(amp_fp16_resume='PASS', ddp_nccl_syncbn='SKIP', step_syncs='PASS')
    lines, code = gpu_check.summary(outcomes, 'cuda', allow_skip=False)
    assert code == 1 and lines == [
        'gpu_check: 2 passed, 0 failed, 1 skipped',
        'gpu_check: 1 essential part(s) did not run on the GPU: ddp_nccl_syncbn; unproven, so exit 1 (--allow-skip '
        'accepts)']
    assert gpu_check.summary(outcomes, 'cuda', allow_skip=True)[1] == 0
    assert gpu_check.summary(outcomes, 'cpu', allow_skip=False) == (lines[:1], 0)  # the dry run skips GPU-only parts
    assert gpu_check.summary(dict(outcomes, step_syncs='FAIL'), 'cuda', allow_skip=True)[1] == 1


def test_the_gpu_machines_missing_packages_install_offline(tmp_path):
    """The lent GPU machine has no network: gpu_wheels.sh builds here what its python lacks, and installs it there
    with pip --no-index; each carried package then imports from the target, ahead of any installed copy."""
    wheels, target = tmp_path / 'wheels', tmp_path / 'site'
    env = dict(os.environ, PYTHON=sys.executable)
    script = str(REPO / 'benchmarks' / 'gpu_wheels.sh')
    subprocess.run(['bash', script, 'build', str(wheels)], check=True, env=env, cwd=REPO, timeout=300)
    subprocess.run(['bash', script, 'install', str(wheels), str(target)], check=True, env=dict(
        env, PIP_INDEX_URL='http://127.0.0.1:9/simple', PIP_FIND_LINKS=''), cwd=REPO, timeout=300)
    code = ('import importlib, json; print(json.dumps({m: importlib.import_module(m).__file__ for m in '
            '("fvcore.nn", "iopath", "yacs", "termcolor", "tabulate", "submitit", "cloudpickle")}))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    files = json.loads(out.stdout)
    assert all(Path(f).is_relative_to(target) for f in files.values()), files

@pytest.mark.slow
def test_dry_run_every_part(gpu_check, tmp_path):
    assert gpu_check.main(['--device', 'cpu', '--workdir', str(tmp_path)]) == 0


def test_a_resume_that_differs_fails_its_part(gpu_check, tmp_path):
    check = gpu_check.Check('cpu', tmp_path)
    for name, top1 in (('a', 50.), ('b', 51.)):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'result.json').write_text(json.dumps(dict(status='done', final_top1=top1)))
    check.amp_fp16_resume = lambda: check.same_run(tmp_path / 'a', tmp_path / 'b')
    lines = []
    assert gpu_check.run_parts(check, ['amp_fp16_resume'], lines.append) == {'amp_fp16_resume': 'FAIL'}
    assert "differs from the uninterrupted one in ['final_top1']: [(50.0, 51.0)]" in lines[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU here: run `python benchmarks/gpu_check.py` on one')
def test_gpu_check_on_the_gpu(gpu_check, tmp_path):
    one_gpu = ['--allow-skip'] if torch.cuda.device_count() < 2 else []  # ddp_nccl_syncbn needs two
    assert gpu_check.main(['--workdir', str(tmp_path), *one_gpu]) == 0
