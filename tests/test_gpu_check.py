"""benchmarks/gpu_check.py: its CPU dry run (the procedure: preemption, resume, comparison, `fat bench`) here; the
GPU run where a GPU is (its output goes in the session notes)."""
import json
import re

import pytest
import torch

CHEAP = ['amp_fp16_resume', 'cpu_to_gpu_resume', 'bench_eager', 'oom_backoff']


@pytest.fixture(scope='module')
def gpu_check(benchmark_script):
    return benchmark_script('gpu_check')


def test_dry_run_passes_what_the_cpu_can_run_and_skips_the_rest(gpu_check, tmp_path, capsys):
    assert gpu_check.main(['--device', 'cpu', '--workdir', str(tmp_path), '--parts', *CHEAP]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('gpu_check on CPU (dry run)') and lines[-1] == 'gpu_check: 2 passed, 0 failed, 2 skipped'
    outcomes = dict(re.match(r'(PASS|FAIL|SKIP) (\w+) \(', line).group(2, 1) for line in lines[1:-1])
    assert outcomes == dict(amp_fp16_resume='PASS', cpu_to_gpu_resume='SKIP', bench_eager='PASS', oom_backoff='SKIP')
    assert 'preempted at step' in lines[1] and 'resumed exactly' in lines[1]


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
    assert gpu_check.main(['--workdir', str(tmp_path)]) == 0
