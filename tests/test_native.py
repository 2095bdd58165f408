"""The native FASA attention kernel (fat.models.native): the same function as the PyTorch path for every interaction,
head width and map size, used by the fused model exactly where it applies, and traced by torch.compile."""
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch

import fat  # noqa: F401  (registers the models)
from fat.models import FASA, FasaCfg, native
from fat.models.fuse import FusedFasa, fuse_model

CL = torch.channels_last


@pytest.fixture(scope='module', autouse=True)
def kernel():
    if shutil.which('c++') is None and shutil.which('g++') is None:
        pytest.skip('no C++ compiler on this machine: the native kernels cannot be built')
    assert native.load(), 'the native kernels failed to build (see the warning)'


def _fasa(interaction: str, local: str = 'self_modulated', **kwargs) -> FASA:
    torch.manual_seed(0)
    cfg = FasaCfg(local=local, interaction=interaction)
    return FASA(cfg=cfg, **kwargs).eval()


@pytest.mark.parametrize('local,interaction', [
    ('self_modulated', 'one_way'), ('self_modulated', 'bidirectional'), ('static', 'none'), ('none', 'none')])
@pytest.mark.parametrize('dim,heads,window,size', [
    (32, 2, 4, (13, 21)),  # 16-wide heads; 273 queries (a partial tile); a 4 x 6 K/V grid
    (48, 2, 2, (9, 9)),    # 24-wide heads: a partial vector of channels
    (64, 2, 1, (7, 5)),    # full attention, 32-wide heads
    (40, 5, 8, (30, 17)),  # 8-wide heads, a 4 x 3 K/V grid
])
def test_kernel_matches_the_pytorch_path(local, interaction, dim, heads, window, size):
    fasa = _fasa(interaction, local, dim=dim, kernel_size=3, num_heads=heads, window_size=window)
    fused = FusedFasa(fasa).to(memory_format=CL)
    assert fused.native
    x = torch.randn(3, dim, *size).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = fasa(x)
        with torch.profiler.profile() as prof:
            got = fused(x)
    assert 'fat::fasa_attention' in {e.key for e in prof.key_averages()}
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def _ops(model, x) -> set:
    with torch.profiler.profile() as prof:
        model(x)
    return {e.key for e in prof.key_averages()}


def test_kernel_runs_only_where_it_applies():
    torch.manual_seed(0)
    fused = fuse_model(timm.create_model('fat_proxy'))
    x = torch.randn(2, 1, 64, 64)  # every stage's map wider than 1 x 1, where both layouts coincide
    with torch.no_grad():
        assert 'fat::fasa_attention' not in _ops(fused, x)  # NCHW: the PyTorch path
        fused = fused.to(memory_format=CL)
        x = x.contiguous(memory_format=CL)
        assert 'fat::fasa_attention' in _ops(fused, x)
        assert 'fat::fasa_attention' not in _ops(fused.double(), x.double())
    assert 'fat::fasa_attention' not in _ops(fused.float(), x)  # autograd on: the kernel has no backward


def test_kernel_refuses_bad_input():
    q = torch.randn(1, 32, 4, 4).contiguous(memory_format=CL)
    kv = torch.randn(1, 64, 2, 2).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match='unknown interaction'):
        torch.ops.fat.fasa_attention(q, kv, 2, 0.25, q, 'sideways')
    with pytest.raises(RuntimeError, match='channels_last'):
        torch.ops.fat.fasa_attention(q.contiguous(), kv, 2, 0.25, None, 'none')
    with pytest.raises(RuntimeError, match='2C channels'):
        torch.ops.fat.fasa_attention(q, kv[:, :48].contiguous(memory_format=CL), 2, 0.25, None, 'none')


def test_fat_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv('FAT_NATIVE', '0')
    assert native.load.__wrapped__() is False


def test_kernel_benchmark_runs_and_checks_agreement(benchmark_script, capsys):
    args = ['--batch-size', '2', '--img-size', '64', '--rounds', '1', '--iters', '1']
    assert benchmark_script('fasa_attention').main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ['0', '1', '2', '3'] and all(r[-2].endswith('x') for r in rows), rows


def test_without_a_compiler_fasa_warns_once_and_runs_on_pytorch_ops(tmp_path):
    """A fresh process whose C++ compiler does not exist (and no cached build): one warning, the same outputs."""
    probe = (
        'import warnings, timm, torch, fat\n'
        'from fat.models.fuse import fuse_model\n'
        'torch.manual_seed(0)\n'
        "model = timm.create_model('fat_proxy').eval()\n"
        'x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)\n'
        'with warnings.catch_warnings(record=True) as caught:\n'
        "    warnings.simplefilter('always')\n"
        '    fused = fuse_model(model).to(memory_format=torch.channels_last)\n'
        'with torch.no_grad():\n'
        '    diff = (fused(x) - model(x)).abs().max().item()\n'
        "warned = sum('native CPU kernels unavailable' in str(w.message) for w in caught)\n"
        'print(warned, fat.models.native.load(), diff)\n')
    env = dict(os.environ, CXX=str(tmp_path / 'no-such-c++'), TORCH_EXTENSIONS_DIR=str(tmp_path / 'ext'))
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, env=env, check=True).stdout
    warned, loaded, diff = out.split()
    assert (warned, loaded) == ('1', 'False') and float(diff) < 1e-5, out
